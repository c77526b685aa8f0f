/* Message ids: 128 bits, time-ordered (48-bit milliseconds, 16-bit shard, 64-bit
 * sequence seeded at random), printed as 32 lowercase hex digits. */
#ifndef KUMO_UTIL_ID_H
#define KUMO_UTIL_ID_H

#include <stdint.h>
#include <stdbool.h>

struct kumo_id {
	uint8_t b[16];
};

struct kumo_id_gen {
	uint16_t shard;   /* loop index, so two loops never mint the same id */
	uint64_t seq;     /* next sequence number */
	uint64_t last_ms; /* clock never goes back within one generator */
};

#define KUMO_ID_HEX_LEN 32

void kumo_id_gen_init(struct kumo_id_gen *g, uint16_t shard, uint64_t seed);
void kumo_id_next(struct kumo_id_gen *g, uint64_t now_ms, struct kumo_id *out);
/* Writes 32 hex digits and a NUL into out (33 bytes). */
void kumo_id_hex(const struct kumo_id *id, char out[KUMO_ID_HEX_LEN + 1]);
/* Parses 32 hex digits; returns 0 or -EINVAL. */
int kumo_id_parse(const char *hex, struct kumo_id *out);
uint64_t kumo_id_ms(const struct kumo_id *id);
int kumo_id_cmp(const struct kumo_id *a, const struct kumo_id *b);
uint64_t kumo_id_hash(const struct kumo_id *id);

#endif
