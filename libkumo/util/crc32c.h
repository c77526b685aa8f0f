/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI and ext4.
 * A portable slicing-by-8 implementation and, on x86, the SSE4.2 crc32 instruction,
 * chosen at run time; both give identical results. */
#ifndef KUMO_UTIL_CRC32C_H
#define KUMO_UTIL_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes of buf and returns the new value, so
 * kumo_crc32c(kumo_crc32c(0, a, n), b, m) is the CRC of a followed by b. Uses the fastest
 * implementation the CPU supports. */
uint32_t kumo_crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable implementation (slicing-by-8). */
uint32_t kumo_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* The SSE4.2 implementation; only call it when kumo_crc32c_hw_supported() is true.
 * On CPUs other than x86 it is the portable one. */
uint32_t kumo_crc32c_hw(uint32_t crc, const void *buf, size_t len);
bool kumo_crc32c_hw_supported(void);

#endif
