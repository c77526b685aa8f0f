/* Message ids: time-ordered 128-bit values; see id.h. Big-endian layout so that the
 * byte order of two ids is their time order. */
#include "util/id.h"

#include <errno.h>
#include <string.h>

void kumo_id_gen_init(struct kumo_id_gen *g, uint16_t shard, uint64_t seed)
{
	g->shard = shard;
	g->seq = seed >> 1; /* 63 bits: the sequence never wraps within a run */
	g->last_ms = 0;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

void kumo_id_next(struct kumo_id_gen *g, uint64_t now_ms, struct kumo_id *out)
{
	if (now_ms < g->last_ms)
		now_ms = g->last_ms;
	g->last_ms = now_ms;
	put_be(out->b, now_ms, 6);
	put_be(out->b + 6, g->shard, 2);
	put_be(out->b + 8, g->seq++, 8);
}

void kumo_id_hex(const struct kumo_id *id, char out[KUMO_ID_HEX_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = digits[id->b[i] >> 4];
		out[2 * i + 1] = digits[id->b[i] & 15];
	}
	out[KUMO_ID_HEX_LEN] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kumo_id_parse(const char *hex, struct kumo_id *out)
{
	for (int i = 0; i < 16; i++) {
		int hi = hexval(hex[2 * i]);
		int lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		out->b[i] = (uint8_t)(hi << 4 | lo);
	}
	return hex[KUMO_ID_HEX_LEN] == 0 ? 0 : -EINVAL;
}

uint64_t kumo_id_ms(const struct kumo_id *id)
{
	return get_be(id->b, 6);
}

int kumo_id_cmp(const struct kumo_id *a, const struct kumo_id *b)
{
	return memcmp(a->b, b->b, 16);
}

uint64_t kumo_id_hash(const struct kumo_id *id)
{
	/* splitmix64 over the two halves: ids are sequential, so mix them well */
	uint64_t x = get_be(id->b, 8) ^ (get_be(id->b + 8, 8) * 0x9e3779b97f4a7c15ULL);
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}
