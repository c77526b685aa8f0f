/* Unit tests for the strict JSON reader (util/json_read): values and accessors, numbers at
 * the int64 edges, string escapes and UTF-8 checks, what RFC 8259 refuses (with the error
 * position), nesting depth, sequences of values, and inputs ending against a guard page. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/json_read.h"

/* Parses a copy of s that ends just before an inaccessible page. */
static int parse_guarded(const char *s, size_t n, size_t *end, struct kumo_json_doc **doc,
			 struct kumo_json_error *err)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t pages = (n + page - 1) / page + 1;
	char *map =
	    mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + (pages - 1) * page, page, PROT_NONE), 0);
	char *p = map + (pages - 1) * page - n;
	memcpy(p, s, n);
	int rc = kumo_json_parse(p, n, end, doc, err);
	munmap(map, pages * page);
	return rc;
}

static struct kumo_json_doc *parse_ok(const char *s)
{
	struct kumo_json_doc *doc;
	struct kumo_json_error err;
	int rc = parse_guarded(s, strlen(s), NULL, &doc, &err);
	if (rc)
		fail_msg("%s: %d at %d:%d: %s", s, rc, err.line, err.col, err.msg);
	return doc;
}

static const char record[] =
    "{\"type\":\"TransientFailure\",\"id\":\"01a2\",\"sender\":\"me@example.com\","
    "\"recipient\":\"you@example.net\",\"queue\":\"camp:t1@example.net\","
    "\"site\":\"mx1.example.net,mx2.example.net\",\"size\":153,"
    "\"response\":{\"code\":421,\"enhanced_code\":{\"class\":4,\"subject\":7,\"detail\":0},"
    "\"content\":\"[TSS04] try later\",\"command\":\".\\r\\n\"},"
    "\"peer_address\":{\"name\":\"mx1\",\"addr\":\"10.0.0.1\"},\"timestamp\":1795610821,"
    "\"egress_pool\":null,\"egress_source\":\"s1\",\"meta\":{},\"headers\":{}}";

static void test_log_record(void **state)
{
	struct kumo_json_doc *doc = parse_ok(record);
	const struct kumo_json_value *r = kumo_json_doc_root(doc);
	assert_int_equal(kumo_json_type(r), KUMO_JSON_OBJECT);
	assert_int_equal(kumo_json_count(r), 14);
	assert_string_equal(kumo_json_string(kumo_json_get(r, "type"), NULL), "TransientFailure");
	const struct kumo_json_value *resp = kumo_json_get(r, "response");
	int64_t code;
	assert_int_equal(kumo_json_integer(kumo_json_get(resp, "code"), &code), 0);
	assert_int_equal(code, 421);
	assert_string_equal(kumo_json_string(kumo_json_get(resp, "command"), NULL), ".\r\n");
	assert_int_equal(kumo_json_integer(
			     kumo_json_get(kumo_json_get(resp, "enhanced_code"), "subject"), &code),
			 0);
	assert_int_equal(code, 7);
	assert_true(kumo_json_is_null(kumo_json_get(r, "egress_pool")));
	assert_false(kumo_json_is_null(kumo_json_get(r, "nope")));
	assert_null(kumo_json_get(r, "nope"));
	assert_int_equal(kumo_json_integer(kumo_json_get(r, "nope"), &code), -ENOENT);
	assert_int_equal(kumo_json_integer(kumo_json_get(r, "type"), &code), -EINVAL);
	assert_int_equal(kumo_json_count(kumo_json_get(r, "meta")), 0);
	assert_null(kumo_json_get(kumo_json_get(r, "type"), "x"));
	/* Document order is kept for iteration. */
	size_t kl;
	assert_string_equal(kumo_json_key_at(r, 0, &kl), "type");
	assert_int_equal(kl, 4);
	assert_string_equal(kumo_json_key_at(r, 13, NULL), "headers");
	assert_null(kumo_json_key_at(r, 14, NULL));
	assert_ptr_equal(kumo_json_at(r, 1), kumo_json_get(r, "id"));
	assert_null(kumo_json_at(r, 14));
	kumo_json_doc_free(doc);
}

static void test_scalars_and_arrays(void **state)
{
	struct kumo_json_doc *doc = parse_ok(" [true, false, null, \"\", [], {}, [[1]], -0, 0.5] ");
	const struct kumo_json_value *a = kumo_json_doc_root(doc);
	assert_int_equal(kumo_json_type(a), KUMO_JSON_ARRAY);
	assert_int_equal(kumo_json_count(a), 9);
	bool b;
	assert_int_equal(kumo_json_boolean(kumo_json_at(a, 0), &b), 0);
	assert_true(b);
	assert_int_equal(kumo_json_boolean(kumo_json_at(a, 1), &b), 0);
	assert_false(b);
	assert_int_equal(kumo_json_boolean(kumo_json_at(a, 2), &b), -EINVAL);
	assert_true(kumo_json_is_null(kumo_json_at(a, 2)));
	size_t len = 9;
	assert_string_equal(kumo_json_string(kumo_json_at(a, 3), &len), "");
	assert_int_equal(len, 0);
	assert_int_equal(kumo_json_type(kumo_json_at(a, 4)), KUMO_JSON_ARRAY);
	assert_int_equal(kumo_json_type(kumo_json_at(a, 5)), KUMO_JSON_OBJECT);
	assert_int_equal(kumo_json_count(kumo_json_at(kumo_json_at(a, 6), 0)), 1);
	int64_t i;
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 7), &i), 0);
	assert_int_equal(i, 0);
	double d;
	assert_int_equal(kumo_json_number(kumo_json_at(a, 8), &d), 0);
	assert_true(d == 0.5);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 8), &i), -ERANGE);
	assert_null(kumo_json_key_at(a, 0, NULL));
	assert_string_equal(kumo_json_type_name(KUMO_JSON_OBJECT), "object");
	kumo_json_doc_free(doc);
}

static void test_numbers(void **state)
{
	struct kumo_json_doc *doc =
	    parse_ok("[9223372036854775807, -9223372036854775808, 9223372036854775808,"
		     " 1e2, 1.0, 1E+2, 2.5e-1, -12, 1e400, 123456789012345678901234567890]");
	const struct kumo_json_value *a = kumo_json_doc_root(doc);
	int64_t i;
	double d;
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 0), &i), 0);
	assert_true(i == INT64_MAX);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 1), &i), 0);
	assert_true(i == INT64_MIN);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 2), &i), -ERANGE);
	assert_int_equal(kumo_json_number(kumo_json_at(a, 2), &d), 0);
	assert_true(d == 9223372036854775808.0);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 3), &i), 0);
	assert_int_equal(i, 100);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 4), &i), 0);
	assert_int_equal(i, 1);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 5), &i), 0);
	assert_int_equal(i, 100);
	assert_int_equal(kumo_json_number(kumo_json_at(a, 6), &d), 0);
	assert_true(d == 0.25);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 7), &i), 0);
	assert_int_equal(i, -12);
	assert_int_equal(kumo_json_number(kumo_json_at(a, 8), &d), 0);
	assert_true(d > 1e308);
	assert_int_equal(kumo_json_integer(kumo_json_at(a, 8), &i), -ERANGE);
	assert_int_equal(kumo_json_number(kumo_json_at(a, 9), &d), 0);
	assert_true(d > 1.2e29 && d < 1.3e29);
	kumo_json_doc_free(doc);
}

static void test_strings(void **state)
{
	struct kumo_json_doc *doc =
	    parse_ok("[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\", \"\\u00e9\\u20AC\\ud83d\\ude00\", "
		     "\"x\\u0000y\", \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"]");
	const struct kumo_json_value *a = kumo_json_doc_root(doc);
	size_t len;
	assert_string_equal(kumo_json_string(kumo_json_at(a, 0), NULL), "a\"b\\c/d\b\f\n\r\t");
	assert_string_equal(kumo_json_string(kumo_json_at(a, 1), NULL),
			    "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	const char *s = kumo_json_string(kumo_json_at(a, 2), &len);
	assert_int_equal(len, 3);
	assert_memory_equal(s, "x\0y", 4);
	assert_string_equal(kumo_json_string(kumo_json_at(a, 3), NULL),
			    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	assert_null(kumo_json_string(a, NULL));
	kumo_json_doc_free(doc);
	/* Keys with escapes and NUL bytes are found by their decoded bytes. */
	doc = parse_ok("{\"a\\u0000b\": 1, \"\\u0041\": 2, \"ab\": 3}");
	const struct kumo_json_value *o = kumo_json_doc_root(doc);
	int64_t i;
	assert_int_equal(kumo_json_integer(kumo_json_getn(o, "a\0b", 3), &i), 0);
	assert_int_equal(i, 1);
	assert_int_equal(kumo_json_integer(kumo_json_get(o, "A"), &i), 0);
	assert_int_equal(i, 2);
	assert_int_equal(kumo_json_integer(kumo_json_get(o, "ab"), &i), 0);
	assert_int_equal(i, 3);
	assert_null(kumo_json_get(o, "a"));
	kumo_json_doc_free(doc);
}

static const struct {
	const char *in;
	size_t len; /* 0: strlen */
	size_t offset;
	const char *msg; /* a part of the message */
} bad[] = {
    {"", 0, 0, "value expected"},
    {"   ", 0, 3, "value expected"},
    {"[1,]", 0, 3, "trailing comma"},
    {"{\"a\":1,}", 0, 7, "trailing comma"},
    {"[1 2]", 0, 3, "',' or ']'"},
    {"{\"a\" 1}", 0, 5, "':' expected"},
    {"{a:1}", 0, 1, "string key"},
    {"{'a':1}", 0, 1, "string key"},
    {"['a']", 0, 1, "value expected"},
    {"01", 0, 0, "leading zero"},
    {"-01", 0, 0, "leading zero"},
    {"1.", 0, 2, "decimal point"},
    {".5", 0, 0, "value expected"},
    {"+1", 0, 0, "value expected"},
    {"-", 0, 0, "invalid number"},
    {"1e", 0, 2, "exponent"},
    {"1e+", 0, 3, "exponent"},
    {"NaN", 0, 0, "value expected"},
    {"nul", 0, 0, "unknown literal"},
    {"truex", 0, 4, "after the value"},
    {"[] []", 0, 3, "after the value"},
    {"// c\n1", 0, 0, "value expected"},
    {"\xef\xbb\xbf{}", 0, 0, "value expected"},
    {"\"abc", 0, 0, "unterminated string"},
    {"\"a\\", 0, 0, "unterminated string"},
    {"\"a\tb\"", 0, 2, "control character"},
    {"\"a\\x\"", 0, 2, "invalid escape"},
    {"\"\\u12g4\"", 0, 1, "invalid escape"},
    {"\"\\u123\"", 0, 1, "invalid escape"},
    {"\"\\ud800\"", 0, 1, "unpaired surrogate"},
    {"\"\\ud800\\u0041\"", 0, 1, "unpaired surrogate"},
    {"\"\\udc00\"", 0, 1, "unpaired surrogate"},
    {"\"\xc0\x80\"", 0, 1, "invalid UTF-8"},
    {"\"\xed\xa0\x80\"", 0, 1, "invalid UTF-8"},
    {"\"\xf4\x90\x80\x80\"", 0, 1, "invalid UTF-8"},
    {"\"\xe2\x82\"", 0, 1, "invalid UTF-8"},
    {"\"\x80\"", 0, 1, "invalid UTF-8"},
    {"\"\xff\"", 0, 1, "invalid UTF-8"},
    {"{\"a\":1,\"b\":2,\"a\":3}", 0, 13, "duplicate key \"a\""},
    {"[1,\n {\"x\": [}]", 0, 12, "value expected"},
    {"[\"a\0b\"]", 7, 3, "control character"},
    {"[1", 0, 2, "unterminated array"},
    {"{\"a\":1", 0, 6, "unterminated object"},
};

static void test_errors(void **state)
{
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kumo_json_doc *doc = (struct kumo_json_doc *)1;
		struct kumo_json_error err;
		size_t n = bad[i].len ? bad[i].len : strlen(bad[i].in);
		int rc = parse_guarded(bad[i].in, n, NULL, &doc, &err);
		if (rc != -EINVAL || doc != NULL || err.offset != bad[i].offset ||
		    !strstr(err.msg, bad[i].msg))
			fail_msg("case %zu (%s): rc %d offset %zu msg %s", i, bad[i].in, rc,
				 err.offset, err.msg);
		assert_true(err.line >= 1 && err.col >= 1);
	}
}

static void test_error_position(void **state)
{
	struct kumo_json_doc *doc;
	struct kumo_json_error err;
	const char *s = "{\n  \"caf\xc3\xa9\": \"\xc3\xa9\xc3\xa9\",\n  \"x\": tru }";
	assert_int_equal(parse_guarded(s, strlen(s), NULL, &doc, &err), -EINVAL);
	assert_int_equal(err.line, 3);
	assert_int_equal(err.col, 8);
	s = "{\"\xc3\xa9\": \"\xc3\xa9\", \"\xc3\xa9\": 1}";
	assert_int_equal(parse_guarded(s, strlen(s), NULL, &doc, &err), -EINVAL);
	assert_int_equal(err.line, 1);
	assert_int_equal(err.col, 12);
}

static void test_depth(void **state)
{
	char buf[2 * (KUMO_JSON_MAX_DEPTH + 1) + 1];
	struct kumo_json_doc *doc;
	struct kumo_json_error err;
	for (int d = KUMO_JSON_MAX_DEPTH; d <= KUMO_JSON_MAX_DEPTH + 1; d++) {
		memset(buf, '[', (size_t)d);
		memset(buf + d, ']', (size_t)d);
		int rc = parse_guarded(buf, 2 * (size_t)d, NULL, &doc, &err);
		if (d <= KUMO_JSON_MAX_DEPTH) {
			assert_int_equal(rc, 0);
			kumo_json_doc_free(doc);
		} else {
			assert_int_equal(rc, -EINVAL);
			assert_non_null(strstr(err.msg, "too deep"));
			assert_int_equal(err.offset, KUMO_JSON_MAX_DEPTH);
		}
	}
}

static void test_sequence(void **state)
{
	const char *s = "{\"n\":1}\n{\"n\":2}\r\n  [3]\n\n";
	size_t off = 0, n = strlen(s), end, count = 0;
	while (off < n) {
		struct kumo_json_doc *doc;
		struct kumo_json_error err;
		assert_int_equal(parse_guarded(s + off, n - off, &end, &doc, &err), 0);
		assert_true(end > 0);
		off += end;
		count++;
		kumo_json_doc_free(doc);
	}
	assert_int_equal(count, 3);
	assert_int_equal(off, n);
	/* Without end, a second value is an error. */
	struct kumo_json_doc *doc;
	struct kumo_json_error err;
	assert_int_equal(parse_guarded(s, n, NULL, &doc, &err), -EINVAL);
	assert_int_equal(err.offset, 8);
	assert_int_equal(err.line, 2);
}

/* Every prefix of a record ends in an error (or is a shorter valid document) without
 * reading past its end; the whole parses. */
static void test_every_truncation(void **state)
{
	size_t n = strlen(record);
	for (size_t cut = 0; cut < n; cut++) {
		struct kumo_json_doc *doc;
		struct kumo_json_error err;
		int rc = parse_guarded(record, cut, NULL, &doc, &err);
		if (rc != -EINVAL)
			fail_msg("cut %zu: %d", cut, rc);
		assert_true(err.offset <= cut);
	}
	kumo_json_doc_free(parse_ok(record));
}

/* Big objects are looked up through their sorted index. */
static void test_big_object(void **state)
{
	size_t cap = 2000 * 24 + 8, o = 0;
	char *s = malloc(cap);
	s[o++] = '{';
	for (int i = 0; i < 2000; i++)
		o += (size_t)snprintf(s + o, cap - o, "%s\"k%d\":%d", i ? "," : "",
				      (i * 7919) % 2000, i);
	s[o++] = '}';
	s[o] = 0;
	struct kumo_json_doc *doc = parse_ok(s);
	const struct kumo_json_value *r = kumo_json_doc_root(doc);
	assert_int_equal(kumo_json_count(r), 2000);
	for (int i = 0; i < 2000; i++) {
		char key[16];
		int64_t v;
		snprintf(key, sizeof(key), "k%d", (i * 7919) % 2000);
		assert_int_equal(kumo_json_integer(kumo_json_get(r, key), &v), 0);
		assert_int_equal(v, i);
	}
	kumo_json_doc_free(doc);
	/* The same with a duplicate at the very end. */
	o--;
	o += (size_t)snprintf(s + o, cap - o, ",\"k5\":0}");
	struct kumo_json_error err;
	assert_int_equal(parse_guarded(s, o, NULL, &doc, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "duplicate key \"k5\""));
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_log_record),
	    cmocka_unit_test(test_scalars_and_arrays),
	    cmocka_unit_test(test_numbers),
	    cmocka_unit_test(test_strings),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_error_position),
	    cmocka_unit_test(test_depth),
	    cmocka_unit_test(test_sequence),
	    cmocka_unit_test(test_every_truncation),
	    cmocka_unit_test(test_big_object),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
