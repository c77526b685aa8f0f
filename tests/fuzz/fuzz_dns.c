/* libFuzzer target for the resolver's own DNS parsing: the walk that reads the TTLs of
 * an answer and the SOA minimum of a negative one (c-ares parses the records). A TTL
 * it returns is either "none" (UINT32_MAX) or below 2^31. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t ans, neg;

	if (kumo_dns_msg_ttls(data, size, &ans, &neg) == 0) {
		if ((ans != UINT32_MAX && ans >= 0x80000000u) ||
		    (neg != UINT32_MAX && neg >= 0x80000000u))
			abort();
	} else if (ans != UINT32_MAX || neg != UINT32_MAX) {
		abort();
	}
	return 0;
}
