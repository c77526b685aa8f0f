/* Unit tests for util/crc32c: published check values, a bitwise reference, and
 * agreement of the portable and SSE4.2 paths over all lengths 0..1024 and alignments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/crc32c.h"

/* Bit-at-a-time definition of CRC-32C, the reference for both implementations. */
static uint32_t crc_ref(uint32_t crc, const uint8_t *p, size_t n)
{
	uint32_t c = ~crc;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
	}
	return ~c;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void test_known_vectors(void **state)
{
	uint8_t buf[32];

	assert_int_equal(kumo_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(kumo_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(kumo_crc32c(0, "", 0), 0);
	/* RFC 3720 appendix B.4 */
	memset(buf, 0, sizeof(buf));
	assert_int_equal(kumo_crc32c(0, buf, 32), 0x8a9136aau);
	assert_int_equal(kumo_crc32c_sw(0, buf, 32), 0x8a9136aau);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(kumo_crc32c(0, buf, 32), 0x62a8ab43u);
	assert_int_equal(kumo_crc32c_sw(0, buf, 32), 0x62a8ab43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(kumo_crc32c(0, buf, 32), 0x46dd794eu);
	assert_int_equal(kumo_crc32c_sw(0, buf, 32), 0x46dd794eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(kumo_crc32c(0, buf, 32), 0x113fdb5cu);
	assert_int_equal(kumo_crc32c_sw(0, buf, 32), 0x113fdb5cu);
}

/* Every single-byte message exercises every entry of the first table. */
static void test_single_bytes(void **state)
{
	for (int v = 0; v < 256; v++) {
		uint8_t b = (uint8_t)v;
		assert_int_equal(kumo_crc32c_sw(0, &b, 1), crc_ref(0, &b, 1));
		assert_int_equal(kumo_crc32c(0, &b, 1), crc_ref(0, &b, 1));
	}
}

static void test_paths_agree(void **state)
{
	enum { MAXLEN = 1024, ALIGNS = 16 };
	uint8_t *mem = malloc(MAXLEN + ALIGNS + 8);
	uint64_t s = 0x9e3779b97f4a7c15ull;
	bool hw = kumo_crc32c_hw_supported();

	assert_non_null(mem);
	for (size_t i = 0; i < MAXLEN + ALIGNS + 8; i++)
		mem[i] = (uint8_t)rng_next(&s);
	for (size_t len = 0; len <= MAXLEN; len++) {
		for (size_t al = 0; al < ALIGNS; al++) {
			const uint8_t *p = mem + al;
			uint32_t seed = (al & 1) ? (uint32_t)rng_next(&s) : 0;
			uint32_t want = crc_ref(seed, p, len);
			assert_int_equal(kumo_crc32c_sw(seed, p, len), want);
			assert_int_equal(kumo_crc32c(seed, p, len), want);
			if (hw)
				assert_int_equal(kumo_crc32c_hw(seed, p, len), want);
		}
	}
	free(mem);
}

/* Extending a CRC over a split buffer equals the CRC of the whole. */
static void test_incremental(void **state)
{
	uint8_t buf[300];
	uint64_t s = 12345;

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)rng_next(&s);
	uint32_t whole = kumo_crc32c(0, buf, sizeof(buf));
	for (size_t cut = 0; cut <= sizeof(buf); cut++) {
		uint32_t a = kumo_crc32c(0, buf, cut);
		assert_int_equal(kumo_crc32c(a, buf + cut, sizeof(buf) - cut), whole);
		a = kumo_crc32c_sw(0, buf, cut);
		assert_int_equal(kumo_crc32c_sw(a, buf + cut, sizeof(buf) - cut), whole);
	}
}

static void test_hw_reported(void **state)
{
	if (!kumo_crc32c_hw_supported()) {
		print_message("SSE4.2 not available: hardware path not compared\n");
		skip();
	}
	uint8_t big[65536 + 3];
	uint64_t s = 777;
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)rng_next(&s);
	assert_int_equal(kumo_crc32c_hw(0, big + 3, 65536), kumo_crc32c_sw(0, big + 3, 65536));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_known_vectors), cmocka_unit_test(test_single_bytes),
	    cmocka_unit_test(test_paths_agree),	  cmocka_unit_test(test_incremental),
	    cmocka_unit_test(test_hw_reported),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
