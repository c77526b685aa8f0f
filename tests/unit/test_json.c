/* Unit tests for the JSON writer and growable buffer (util/json). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "util/json.h"

static void test_nested_object(void **state)
{
	struct kumo_buf b = {0};
	struct kumo_json j;
	kumo_json_init(&j, &b);
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "type");
	kumo_json_str(&j, "Reception");
	kumo_json_key(&j, "size");
	kumo_json_uint(&j, 10240);
	kumo_json_key(&j, "response");
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "code");
	kumo_json_int(&j, 250);
	kumo_json_key(&j, "list");
	kumo_json_arr_open(&j);
	kumo_json_int(&j, 1);
	kumo_json_bool(&j, true);
	kumo_json_null(&j);
	kumo_json_arr_close(&j);
	kumo_json_obj_close(&j);
	kumo_json_key(&j, "x");
	kumo_json_str_or_null(&j, NULL);
	kumo_json_obj_close(&j);
	kumo_buf_putc(&b, 0);
	assert_string_equal(b.data, "{\"type\":\"Reception\",\"size\":10240,\"response\":{\"code\":250,"
				    "\"list\":[1,true,null]},\"x\":null}");
	kumo_buf_free(&b);
}

static void test_escape(void **state)
{
	struct kumo_buf b = {0};
	const char in[] = "a\"b\\c\r\n\x01 \xc3\xa9 \xff \xed\xa0\x80";
	kumo_json_escape(&b, in, sizeof(in) - 1);
	kumo_buf_putc(&b, 0);
	assert_string_equal(b.data, "a\\\"b\\\\c\\r\\n\\u0001 \xc3\xa9 \\ufffd \\ufffd\\ufffd\\ufffd");
	kumo_buf_free(&b);
}

static void test_buf_consume_printf(void **state)
{
	struct kumo_buf b = {0};
	for (int i = 0; i < 1000; i++)
		kumo_buf_printf(&b, "%d,", i);
	assert_false(b.oom);
	kumo_buf_consume(&b, 4); /* "0,1," */
	assert_memory_equal(b.data, "2,3,", 4);
	kumo_buf_consume(&b, b.len + 5);
	assert_int_equal(b.len, 0);
	kumo_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nested_object),
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_buf_consume_printf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
