/* Unit tests for the RFC 5322 header scanner (proto/rfc5322). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/rfc5322.h"

static const char msg[] = "From: a@example.com\r\n"
			  "Subject: folded\r\n\tsecond line\r\n"
			  "X-Kumo-Tenant:acme\r\n"
			  "\r\n"
			  "Body: not a header\r\n";

static void test_fields_in_order(void **state)
{
	struct kumo_hdr_field f;
	size_t pos = 0, len = sizeof(msg) - 1;
	assert_int_equal(kumo_rfc5322_next_field(msg, len, &pos, &f), 1);
	assert_true(kumo_rfc5322_name_is(&f, "from"));
	assert_int_equal(f.value_len, strlen("a@example.com"));
	assert_memory_equal(f.value, "a@example.com", f.value_len);
	assert_int_equal(kumo_rfc5322_next_field(msg, len, &pos, &f), 1);
	assert_true(kumo_rfc5322_name_is(&f, "Subject"));
	assert_memory_equal(f.value, "folded\r\n\tsecond line", f.value_len);
	assert_int_equal(f.end - f.start, strlen("Subject: folded\r\n\tsecond line\r\n"));
	assert_int_equal(kumo_rfc5322_next_field(msg, len, &pos, &f), 1);
	assert_true(kumo_rfc5322_name_is(&f, "x-kumo-tenant"));
	assert_memory_equal(f.value, "acme", 4);
	assert_int_equal(kumo_rfc5322_next_field(msg, len, &pos, &f), 0);
	assert_int_equal(kumo_rfc5322_body_offset(msg, len), strstr(msg, "Body:") - msg);
}

static void test_truncations_stay_in_bounds(void **state)
{
	for (size_t len = 0; len <= sizeof(msg) - 1; len++) {
		char *copy = test_malloc(len ? len : 1);
		memcpy(copy, msg, len);
		struct kumo_hdr_field f;
		size_t pos = 0;
		int n = 0;
		while (kumo_rfc5322_next_field(copy, len, &pos, &f)) {
			assert_true(f.end <= len && f.start < f.end);
			assert_true(f.value + f.value_len <= copy + len);
			n++;
		}
		assert_true(n <= 3);
		assert_true(kumo_rfc5322_body_offset(copy, len) <= len);
		test_free(copy);
	}
}

static void test_no_header_section(void **state)
{
	const char body[] = "just text without a colon\r\n";
	struct kumo_hdr_field f;
	size_t pos = 0;
	assert_int_equal(kumo_rfc5322_next_field(body, sizeof(body) - 1, &pos, &f), 0);
	assert_int_equal(pos, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fields_in_order),
		cmocka_unit_test(test_truncations_stay_in_bounds),
		cmocka_unit_test(test_no_header_section),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
