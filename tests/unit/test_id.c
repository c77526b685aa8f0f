/* Unit tests for message ids (util/id): time order, uniqueness, hex round trip. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>

#include "util/id.h"

static void test_order_and_round_trip(void **state)
{
	struct kumo_id_gen g;
	kumo_id_gen_init(&g, 3, 0xfffffffffffffff0ULL);
	struct kumo_id prev, id;
	kumo_id_next(&g, 1000, &prev);
	assert_int_equal(kumo_id_ms(&prev), 1000);
	for (int i = 0; i < 100; i++) {
		/* the clock going back never reorders ids of one generator */
		kumo_id_next(&g, i % 2 ? 999 : 1001 + (uint64_t)i, &id);
		assert_true(kumo_id_cmp(&prev, &id) < 0 || kumo_id_ms(&id) > kumo_id_ms(&prev));
		assert_true(kumo_id_cmp(&prev, &id) != 0);
		char hex[KUMO_ID_HEX_LEN + 1];
		kumo_id_hex(&id, hex);
		assert_int_equal(strlen(hex), 32);
		struct kumo_id back;
		assert_int_equal(kumo_id_parse(hex, &back), 0);
		assert_int_equal(kumo_id_cmp(&back, &id), 0);
		prev = id;
	}
}

static void test_shards_differ(void **state)
{
	struct kumo_id_gen a, b;
	kumo_id_gen_init(&a, 0, 7);
	kumo_id_gen_init(&b, 1, 7);
	struct kumo_id x, y;
	kumo_id_next(&a, 5, &x);
	kumo_id_next(&b, 5, &y);
	assert_int_not_equal(kumo_id_cmp(&x, &y), 0);
	assert_int_not_equal(kumo_id_hash(&x), kumo_id_hash(&y));
}

static void test_parse_rejects(void **state)
{
	struct kumo_id id;
	assert_int_equal(kumo_id_parse("0123", &id), -EINVAL);
	assert_int_equal(kumo_id_parse("0123456789abcdef0123456789abcdeg", &id), -EINVAL);
	assert_int_equal(kumo_id_parse("0123456789abcdef0123456789abcdef0", &id), -EINVAL);
	assert_int_equal(kumo_id_parse("0123456789ABCDEF0123456789abcdef", &id), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_and_round_trip),
		cmocka_unit_test(test_shards_differ),
		cmocka_unit_test(test_parse_rejects),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
