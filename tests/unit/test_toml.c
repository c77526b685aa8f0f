/* Unit tests for the TOML reader (libkumo/util/toml.c): every value type, every error
 * kind with the line it is reported on, the two KumoMTA shaping files read back, every
 * truncation of valid documents placed against a guard page, and values written back
 * with kumo_toml_render_value read again as the same type and value. */
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/json.h"
#include "util/toml.h"

#define COMPAT_DIR KUMO_SOURCE_ROOT "/../shared/compat/kumomta/"
#define COMMUNITY COMPAT_DIR "community-shaping.toml"
#define POLICY_EXTRAS COMPAT_DIR "policy-extras-shaping.toml"

static struct kumo_toml_doc *parse_ok_n(const char *text, size_t len)
{
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	int rc = kumo_toml_parse(text, len, &doc, &err);

	if (rc)
		print_message("unexpected error %d at %d:%d key '%s': %s\n", rc, err.line, err.col,
			      err.key, err.msg);
	assert_int_equal(rc, 0);
	assert_non_null(doc);
	return doc;
}

static struct kumo_toml_doc *parse_ok(const char *text)
{
	return parse_ok_n(text, strlen(text));
}

/* Follows a path like "provider/gmail/automation/0/regex": a part names a key of a table
 * or, in an array, an index. */
static const struct kumo_toml_value *at_path(const struct kumo_toml_value *v, const char *path)
{
	char part[256];

	while (v && *path) {
		size_t n = strcspn(path, "/");
		assert_true(n < sizeof(part));
		memcpy(part, path, n);
		part[n] = 0;
		path += n + (path[n] == '/');
		if (kumo_toml_type(v) == KUMO_TOML_ARRAY)
			v = kumo_toml_at(v, strtoul(part, NULL, 10));
		else
			v = kumo_toml_get(v, part);
	}
	return v;
}

static const char *str_at(const struct kumo_toml_value *root, const char *path)
{
	const struct kumo_toml_value *v = at_path(root, path);
	const char *s;

	if (!v)
		print_message("no value at %s\n", path);
	assert_non_null(v);
	assert_int_equal(kumo_toml_type(v), KUMO_TOML_STRING);
	s = kumo_toml_string(v, NULL);
	assert_non_null(s);
	return s;
}

static int64_t int_at(const struct kumo_toml_value *root, const char *path)
{
	int64_t i = 0;

	if (!at_path(root, path))
		print_message("no value at %s\n", path);
	assert_int_equal(kumo_toml_int(at_path(root, path), &i), 0);
	return i;
}

static double float_at(const struct kumo_toml_value *root, const char *path)
{
	const struct kumo_toml_value *v = at_path(root, path);
	double f = 0;

	assert_non_null(v);
	assert_int_equal(kumo_toml_type(v), KUMO_TOML_FLOAT);
	assert_int_equal(kumo_toml_float(v, &f), 0);
	return f;
}

static void expect_error_n(const char *text, size_t len, int line, const char *key, const char *msg)
{
	struct kumo_toml_doc *doc = (struct kumo_toml_doc *)1;
	struct kumo_toml_error err;
	int rc = kumo_toml_parse(text, len, &doc, &err);

	if (rc != -EINVAL || err.line != line || strcmp(err.key, key) || !strstr(err.msg, msg))
		print_message("input %.*s\n  expected line %d key '%s' msg '%s'\n  got rc %d "
			      "line %d key '%s' msg '%s'\n",
			      (int)len, text, line, key, msg, rc, err.line, err.key, err.msg);
	assert_int_equal(rc, -EINVAL);
	assert_null(doc);
	assert_int_equal(err.line, line);
	assert_true(err.col >= 1);
	assert_string_equal(err.key, key);
	assert_non_null(strstr(err.msg, msg));
}

static void expect_error(const char *text, int line, const char *key, const char *msg)
{
	expect_error_n(text, strlen(text), line, key, msg);
}

/* ---- values ----------------------------------------------------------------------------- */

static void test_basic_strings(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(
	    "s = \"I'm a string. \\\"You can quote me\\\". Name\\tJos\\u00E9\\nLocation\\tSF.\"\n"
	    "emoji = \"\\U0001F600 \\u20AC\"\n"
	    "esc = \"\\b\\t\\n\\f\\r\\\"\\\\\"\n"
	    "empty = \"\"\n"
	    "utf8 = \"grüße, 日本\"\n"
	    "tab = \"a\tb\"\n"
	    "nul = \"a\\u0000b\"\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	size_t len = 0;

	assert_string_equal(str_at(root, "s"),
			    "I'm a string. \"You can quote me\". Name\tJos\xC3\xA9\nLocation\tSF.");
	assert_string_equal(str_at(root, "emoji"), "\xF0\x9F\x98\x80 \xE2\x82\xAC");
	assert_string_equal(str_at(root, "esc"), "\b\t\n\f\r\"\\");
	assert_string_equal(str_at(root, "empty"), "");
	assert_string_equal(str_at(root, "utf8"), "grüße, 日本");
	assert_string_equal(str_at(root, "tab"), "a\tb");
	assert_memory_equal(kumo_toml_string(kumo_toml_get(root, "nul"), &len), "a\0b", 4);
	assert_int_equal(len, 3);
	kumo_toml_free(doc);
}

static void test_literal_and_multiline_strings(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(
	    "winpath = 'C:\\Users\\nodejs\\templates'\n"
	    "regex = '<\\i\\c*\\s*>'\n"
	    "quoted = 'Tom \"Dubs\" Preston-Werner'\n"
	    "ml = \"\"\"\nRoses are red\nViolets are blue\"\"\"\n"
	    "folded = \"\"\"\\\n       The quick brown \\\n\n\n       fox jumps over \\   \n"
	    "       the lazy dog.\\\n       \"\"\"\n"
	    "two = \"\"\"Here are two quotation marks: \"\". Simple enough.\"\"\"\n"
	    "edge = \"\"\"\"This,\" she said, \"is just a pointless statement.\"\"\"\"\n"
	    "five = \"\"\"a\"\"\"\"\"\n"
	    "raw = '''\nThe first newline is\ntrimmed in raw strings.\n   All other whitespace\n"
	    "   is preserved.\n'''\n"
	    "rawq = ''''That,' she said, 'is still pointless.''''\n"
	    "crlf = \"\"\"\r\none\r\ntwo\"\"\"\n"
	    "esc = \"\"\"tab\\there \\u00E9\"\"\"\n"
	    "re = '''I [dw]on't need \\d{2} apples'''\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);

	assert_string_equal(str_at(root, "winpath"), "C:\\Users\\nodejs\\templates");
	assert_string_equal(str_at(root, "regex"), "<\\i\\c*\\s*>");
	assert_string_equal(str_at(root, "quoted"), "Tom \"Dubs\" Preston-Werner");
	assert_string_equal(str_at(root, "ml"), "Roses are red\nViolets are blue");
	assert_string_equal(str_at(root, "folded"), "The quick brown fox jumps over the lazy dog.");
	assert_string_equal(str_at(root, "two"),
			    "Here are two quotation marks: \"\". Simple enough.");
	assert_string_equal(str_at(root, "edge"),
			    "\"This,\" she said, \"is just a pointless statement.\"");
	assert_string_equal(str_at(root, "five"), "a\"\"");
	assert_string_equal(str_at(root, "raw"), "The first newline is\ntrimmed in raw strings.\n"
						 "   All other whitespace\n   is preserved.\n");
	assert_string_equal(str_at(root, "rawq"), "'That,' she said, 'is still pointless.'");
	assert_string_equal(str_at(root, "crlf"), "one\ntwo");
	assert_string_equal(str_at(root, "esc"), "tab\there \xC3\xA9");
	assert_string_equal(str_at(root, "re"), "I [dw]on't need \\d{2} apples");
	kumo_toml_free(doc);
}

static void test_integers(void **state)
{
	struct kumo_toml_doc *doc =
	    parse_ok("a = +99\nb = 42\nc = 0\nd = -17\ne = 1_000\n"
		     "f = 5_349_221\ng = 0xDEADBEEF\nh = 0xdead_beef\n"
		     "i = 0o755\nj = 0b11010110\nk = 0x00ff\n"
		     "max = 9223372036854775807\nmin = -9223372036854775808\n"
		     "hexmax = 0x7FFF_FFFF_FFFF_FFFF\nnz = -0\npz = +0\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	double f;

	assert_int_equal(int_at(root, "a"), 99);
	assert_int_equal(int_at(root, "b"), 42);
	assert_int_equal(int_at(root, "c"), 0);
	assert_int_equal(int_at(root, "d"), -17);
	assert_int_equal(int_at(root, "e"), 1000);
	assert_int_equal(int_at(root, "f"), 5349221);
	assert_int_equal(int_at(root, "g"), 0xDEADBEEF);
	assert_int_equal(int_at(root, "h"), 0xDEADBEEF);
	assert_int_equal(int_at(root, "i"), 0755);
	assert_int_equal(int_at(root, "j"), 214);
	assert_int_equal(int_at(root, "k"), 255);
	assert_true(int_at(root, "max") == INT64_MAX);
	assert_true(int_at(root, "min") == INT64_MIN);
	assert_true(int_at(root, "hexmax") == INT64_MAX);
	assert_int_equal(int_at(root, "nz"), 0);
	assert_int_equal(int_at(root, "pz"), 0);
	/* kumo_toml_float reads integers too. */
	assert_int_equal(kumo_toml_float(kumo_toml_get(root, "b"), &f), 0);
	assert_true(f == 42.0);
	kumo_toml_free(doc);

	expect_error("x = 1\nbig = 9223372036854775808\n", 2, "big", "does not fit in 64 bits");
	expect_error("small = -9223372036854775809\n", 1, "small", "does not fit in 64 bits");
	expect_error("h = 0x8000000000000000\n", 1, "h", "does not fit in 64 bits");
	expect_error("n = 99999999999999999999999\n", 1, "n", "does not fit in 64 bits");
	expect_error("n = 012\n", 1, "n", "leading zeros");
	expect_error("n = 0_1\n", 1, "n", "leading zeros");
	expect_error("n = 1__0\n", 1, "n", "invalid value");
	expect_error("n = 1_\n", 1, "n", "invalid value");
	expect_error("n = _1\n", 1, "n", "strings need quotes");
	expect_error("n = +0x10\n", 1, "n", "invalid value");
	expect_error("n = 0x\n", 1, "n", "invalid value");
	expect_error("n = 0b102\n", 1, "n", "invalid integer");
	expect_error("n = 0o8\n", 1, "n", "invalid integer");
	expect_error("n = 0xG\n", 1, "n", "invalid integer");
	expect_error("n = 0X10\n", 1, "n", "invalid value");
}

static void test_floats(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(
	    "a = +1.0\nb = 3.1415\nc = -0.01\nd = 5e+22\ne = 1e06\nf = -2E-2\ng = 6.626e-34\n"
	    "h = 224_617.445_991_228\ni = inf\nj = +inf\nk = -inf\nl = nan\nm = +nan\nn = -nan\n"
	    "o = -0.0\np = 1e-400\nq = 0.1e1_0\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	int64_t i;

	assert_true(float_at(root, "a") == 1.0);
	assert_true(float_at(root, "b") == 3.1415);
	assert_true(float_at(root, "c") == -0.01);
	assert_true(float_at(root, "d") == 5e22);
	assert_true(float_at(root, "e") == 1e6);
	assert_true(float_at(root, "f") == -2e-2);
	assert_true(float_at(root, "g") == 6.626e-34);
	assert_true(float_at(root, "h") == 224617.445991228);
	assert_true(isinf(float_at(root, "i")) && float_at(root, "i") > 0);
	assert_true(isinf(float_at(root, "j")) && float_at(root, "j") > 0);
	assert_true(isinf(float_at(root, "k")) && float_at(root, "k") < 0);
	assert_true(isnan(float_at(root, "l")));
	assert_true(isnan(float_at(root, "m")));
	assert_true(isnan(float_at(root, "n")));
	assert_true(float_at(root, "o") == 0.0 && signbit(float_at(root, "o")));
	assert_true(float_at(root, "p") == 0.0);
	assert_true(float_at(root, "q") == 1e9);
	/* A float is not an integer. */
	assert_int_equal(kumo_toml_int(kumo_toml_get(root, "a"), &i), -EINVAL);
	kumo_toml_free(doc);

	expect_error("f = .7\n", 1, "f", "invalid value");
	expect_error("f = 7.\n", 1, "f", "digits must follow");
	expect_error("f = 3.e+20\n", 1, "f", "digits must follow");
	expect_error("f = 1e\n", 1, "f", "bad exponent");
	expect_error("f = 1e_5\n", 1, "f", "bad exponent");
	expect_error("f = 1_.5\n", 1, "f", "invalid value");
	expect_error("f = 01.5\n", 1, "f", "leading zeros");
	expect_error("f = 1.5.5\n", 1, "f", "invalid value");
	expect_error("\n\nf = 1e400\n", 3, "f", "out of range");
	expect_error("f = infinity\n", 1, "f", "invalid value");
	expect_error("f = NaN\n", 1, "f", "strings need quotes");
}

static void test_bools(void **state)
{
	struct kumo_toml_doc *doc = parse_ok("t = true\nf = false # comment\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	bool b = false;
	int64_t i;

	assert_int_equal(kumo_toml_bool(kumo_toml_get(root, "t"), &b), 0);
	assert_true(b);
	assert_int_equal(kumo_toml_bool(kumo_toml_get(root, "f"), &b), 0);
	assert_false(b);
	assert_int_equal(kumo_toml_type(kumo_toml_get(root, "t")), KUMO_TOML_BOOL);
	assert_int_equal(kumo_toml_int(kumo_toml_get(root, "t"), &i), -EINVAL);
	assert_int_equal(kumo_toml_bool(kumo_toml_get(root, "missing"), &b), -ENOENT);
	assert_null(kumo_toml_string(kumo_toml_get(root, "t"), NULL));
	kumo_toml_free(doc);

	expect_error("t = True\n", 1, "t", "strings need quotes");
	expect_error("t = truex\n", 1, "t", "strings need quotes");
}

static void test_datetimes(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(
	    "odt1 = 1979-05-27T07:32:00Z\nodt2 = 1979-05-27T00:32:00-07:00\n"
	    "odt3 = 1979-05-27T00:32:00.999999+05:30\nodt4 = 1979-05-27 07:32:00Z\n"
	    "odt5 = 1979-05-27t07:32:00z\nldt1 = 1979-05-27T07:32:00\n"
	    "ldt2 = 1979-05-27T00:32:00.999999\nld1 = 1979-05-27\nld2 = 2000-02-29 # leap\n"
	    "lt1 = 07:32:00\nlt2 = 00:32:00.999999\nleapsec = 1990-12-31T23:59:60Z\n"
	    "arr = [1979-05-27, 07:32:00, 1979-05-27 07:32:00]\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	size_t len;

	static const struct {
		const char *key, *text;
	} want[] = {
	    {"odt1", "1979-05-27T07:32:00Z"},
	    {"odt2", "1979-05-27T00:32:00-07:00"},
	    {"odt3", "1979-05-27T00:32:00.999999+05:30"},
	    {"odt4", "1979-05-27 07:32:00Z"},
	    {"odt5", "1979-05-27t07:32:00z"},
	    {"ldt1", "1979-05-27T07:32:00"},
	    {"ldt2", "1979-05-27T00:32:00.999999"},
	    {"ld1", "1979-05-27"},
	    {"ld2", "2000-02-29"},
	    {"lt1", "07:32:00"},
	    {"lt2", "00:32:00.999999"},
	    {"leapsec", "1990-12-31T23:59:60Z"},
	    {"arr/0", "1979-05-27"},
	    {"arr/1", "07:32:00"},
	    {"arr/2", "1979-05-27 07:32:00"},
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const struct kumo_toml_value *v = at_path(root, want[i].key);
		assert_non_null(v);
		assert_int_equal(kumo_toml_type(v), KUMO_TOML_DATETIME);
		assert_string_equal(kumo_toml_string(v, &len), want[i].text);
		assert_int_equal(len, strlen(want[i].text));
	}
	kumo_toml_free(doc);

	expect_error("d = 1979-13-01\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-02-30\n", 1, "d", "invalid date or time");
	expect_error("d = 1900-02-29\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27T24:00:00\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27T07:60:00\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27T07:32\n", 1, "d", "invalid date or time");
	expect_error("d = 07:32\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27T07:32:00+25:00\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27T07:32:00.\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-5-27\n", 1, "d", "invalid date or time");
	expect_error("d = 1979-05-27 07\n", 1, "d", "expected end of line after value");
	expect_error("d = 1979-05-27X07:32:00\n", 1, "d", "invalid date or time");
}

static void test_arrays(void **state)
{
	struct kumo_toml_doc *doc =
	    parse_ok("integers = [ 1, 2, 3 ]\ncolors = [\"red\", 'yellow', \"\"\"green\"\"\"]\n"
		     "nested = [ [ 1, 2 ], [3, 4, 5] ]\nmixed = [ 0.1, 2, \"x\", true, [], {} ]\n"
		     "contributors = [\n  \"Foo Bar <foo@example.com>\",\n"
		     "  { name = \"Baz Qux\", email = \"bazqux@example.com\" } # who\n]\n"
		     "spread = [ # comment\n  1, # one\n\n  2 # two\n  , 3, # trailing comma\n]\n"
		     "empty = []\nempty2 = [\n  # nothing\n]\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	const struct kumo_toml_value *mixed = kumo_toml_get(root, "mixed");

	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "integers")), 3);
	assert_int_equal(int_at(root, "integers/2"), 3);
	assert_string_equal(str_at(root, "colors/1"), "yellow");
	assert_string_equal(str_at(root, "colors/2"), "green");
	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "nested")), 2);
	assert_int_equal(int_at(root, "nested/1/2"), 5);
	assert_int_equal(kumo_toml_count(mixed), 6);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 0)), KUMO_TOML_FLOAT);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 1)), KUMO_TOML_INTEGER);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 2)), KUMO_TOML_STRING);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 3)), KUMO_TOML_BOOL);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 4)), KUMO_TOML_ARRAY);
	assert_int_equal(kumo_toml_type(kumo_toml_at(mixed, 5)), KUMO_TOML_TABLE);
	assert_null(kumo_toml_at(mixed, 6));
	assert_string_equal(str_at(root, "contributors/1/email"), "bazqux@example.com");
	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "spread")), 3);
	assert_int_equal(int_at(root, "spread/1"), 2);
	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "empty")), 0);
	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "empty2")), 0);
	/* Arrays are not tables. */
	assert_null(kumo_toml_get(kumo_toml_get(root, "integers"), "0"));
	assert_null(kumo_toml_key_at(kumo_toml_get(root, "integers"), 0));
	kumo_toml_free(doc);

	expect_error("a = [1,,2]\n", 1, "a", "expected a value");
	expect_error("a = [,]\n", 1, "a", "expected a value");
	expect_error("a = [1 2]\n", 1, "a", "expected ',' or ']'");
	expect_error("x = 1\na = [1,\n2,\n", 2, "a", "unterminated array");
	expect_error("a = [1]]\n", 1, "a", "expected end of line");
}

static void test_inline_tables(void **state)
{
	struct kumo_toml_doc *doc =
	    parse_ok("name = { first = \"Tom\", last = \"Preston-Werner\" }\n"
		     "point = {x=1,y=2}\nanimal = { type.name = \"pug\", type.size = 1 }\n"
		     "deep = { a = { b = { c = [ { d = 4 } ] } } }\nempty = {}\n"
		     "spread = { list = [\n 1,\n 2\n], s = \"\"\"x\ny\"\"\" }\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);

	assert_string_equal(str_at(root, "name/first"), "Tom");
	assert_string_equal(str_at(root, "name/last"), "Preston-Werner");
	assert_string_equal(kumo_toml_key_at(kumo_toml_get(root, "name"), 1), "last");
	assert_int_equal(int_at(root, "point/y"), 2);
	assert_string_equal(str_at(root, "animal/type/name"), "pug");
	assert_int_equal(int_at(root, "animal/type/size"), 1);
	assert_int_equal(int_at(root, "deep/a/b/c/0/d"), 4);
	assert_int_equal(kumo_toml_type(kumo_toml_get(root, "empty")), KUMO_TOML_TABLE);
	assert_int_equal(kumo_toml_count(kumo_toml_get(root, "empty")), 0);
	assert_int_equal(int_at(root, "spread/list/1"), 2);
	assert_string_equal(str_at(root, "spread/s"), "x\ny");
	kumo_toml_free(doc);

	expect_error("a = {\nb = 1}\n", 1, "a", "newline in inline table");
	expect_error("a = {b = 1\n}\n", 1, "a.b", "newline in inline table");
	expect_error("a = {b = 1,}\n", 1, "a.b", "trailing comma");
	expect_error("a = {b = 1 c = 2}\n", 1, "a.b", "expected ',' or '}'");
	expect_error("a = {b = 1, b = 2}\n", 1, "a.b", "duplicate key");
	expect_error("a = {b.c = 1, b = 2}\n", 1, "a.b", "duplicate key");
	expect_error("a = {b = {c = 1}, b.d = 2}\n", 1, "a.b.d", "cannot add keys to inline table");
	expect_error("a = {b = 1}\na.c = 2\n", 2, "a.c", "cannot add keys to inline table");
	expect_error("a = {b = 1}\n\n[a.c]\n", 3, "a.c", "already an inline table");
	expect_error("[x]\na = {}\n[x.a]\n", 3, "x.a", "already defined as an inline table");
	expect_error("a = {b = 1", 1, "a.b", "unterminated inline table");
}

/* ---- tables and keys -------------------------------------------------------------------- */

static void test_tables_and_keys(void **state)
{
	struct kumo_toml_doc *doc =
	    parse_ok("title = \"example\" # comment\n"
		     "bare_key = 1\nbare-key = 2\n1234 = 3\n\"127.0.0.1\" = 4\n"
		     "\"character encoding\" = 5\n\"ʎǝʞ\" = 6\n'key2' = 7\n'quoted \"value\"' = 8\n"
		     "\"\" = 9\nfruit . color = \"yellow\"\nfruit.\"flavor\" = \"banana\"\n"
		     "3.14159 = \"pi\"\n"
		     "\n[owner]\nname = \"Tom\"\n"
		     "[ dog . \"tater.man\" ]\ntype.name = \"pug\"\n"
		     "[a.b.c]\nz = 1\n[a]\ny = 2\n"
		     "[fruit2]\napple.color = \"red\"\napple.taste.sweet = true\n"
		     "[fruit2.apple.texture]\nsmooth = true\n"
		     "[\"\\u0000nul\"]\nk = 1\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	static const char *const order[] = {
	    "title",  "bare_key",  "bare-key",
	    "1234",   "127.0.0.1", "character encoding",
	    "ʎǝʞ",    "key2",	   "quoted \"value\"",
	    "",	      "fruit",	   "3",
	    "owner",  "dog",	   "a",
	    "fruit2",
	};
	size_t klen;

	assert_int_equal(kumo_toml_count(root), 17);
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		assert_string_equal(kumo_toml_key_at(root, i), order[i]);
	assert_memory_equal(kumo_toml_keyn_at(root, 16, &klen), "\0nul", 5);
	assert_int_equal(klen, 4);
	assert_int_equal(int_at(kumo_toml_getn(root, "\0nul", 4), "k"), 1);
	assert_null(kumo_toml_key_at(root, 17));
	assert_int_equal(int_at(root, "127.0.0.1"), 4);
	assert_int_equal(int_at(root, "ʎǝʞ"), 6);
	assert_int_equal(int_at(root, "quoted \"value\""), 8);
	assert_int_equal(int_at(kumo_toml_get(root, ""), ""), 9);
	assert_string_equal(str_at(root, "fruit/color"), "yellow");
	assert_string_equal(str_at(root, "fruit/flavor"), "banana");
	assert_string_equal(str_at(root, "3/14159"), "pi");
	assert_string_equal(str_at(root, "owner/name"), "Tom");
	assert_string_equal(str_at(root, "dog/tater.man/type/name"), "pug");
	assert_int_equal(int_at(root, "a/b/c/z"), 1);
	assert_int_equal(int_at(root, "a/y"), 2);
	/* [a.b.c] made a and b first; [a] then defined a, whose keys follow b. */
	assert_string_equal(kumo_toml_key_at(kumo_toml_get(root, "a"), 0), "b");
	assert_string_equal(kumo_toml_key_at(kumo_toml_get(root, "a"), 1), "y");
	assert_string_equal(str_at(root, "fruit2/apple/color"), "red");
	assert_true(kumo_toml_bool(at_path(root, "fruit2/apple/taste/sweet"), &(bool){0}) == 0);
	assert_int_equal(kumo_toml_type(at_path(root, "fruit2/apple/texture/smooth")),
			 KUMO_TOML_BOOL);
	/* Lookups on scalars and NULL are absent, not crashes. */
	assert_null(kumo_toml_get(kumo_toml_get(root, "title"), "x"));
	assert_null(kumo_toml_get(NULL, "x"));
	assert_int_equal(kumo_toml_count(NULL), 0);
	assert_null(kumo_toml_at(NULL, 0));
	kumo_toml_free(doc);

	/* An empty document and one of blanks and comments have an empty root. */
	doc = parse_ok("");
	assert_int_equal(kumo_toml_count(kumo_toml_root(doc)), 0);
	kumo_toml_free(doc);
	doc = parse_ok_n(NULL, 0);
	kumo_toml_free(doc);
	doc = parse_ok("\xEF\xBB\xBF# bom\n\n  \t\r\n# x\n");
	assert_int_equal(kumo_toml_count(kumo_toml_root(doc)), 0);
	kumo_toml_free(doc);
	doc = parse_ok("a = 1"); /* no final newline */
	assert_int_equal(int_at(kumo_toml_root(doc), "a"), 1);
	kumo_toml_free(doc);
}

static void test_arrays_of_tables(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(
	    "[[products]]\nname = \"Hammer\"\nsku = 738594937\n\n[[products]]  # empty\n\n"
	    "[[products]]\nname = \"Nail\"\ncolor = \"gray\"\n"
	    "[[fruits]]\nname = \"apple\"\n[fruits.physical]\ncolor = \"red\"\n"
	    "[[fruits.varieties]]\nname = \"red delicious\"\n[[fruits.varieties]]\n"
	    "name = \"granny smith\"\n[[fruits]]\nname = \"banana\"\n[[fruits.varieties]]\n"
	    "name = \"plantain\"\n[fruits.physical]\ncolor = \"yellow\"\n"
	    "[[ \"x.y\" . automation ]]\nregex = 1\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	const struct kumo_toml_value *products = kumo_toml_get(root, "products");

	assert_int_equal(kumo_toml_type(products), KUMO_TOML_ARRAY);
	assert_int_equal(kumo_toml_count(products), 3);
	assert_string_equal(str_at(root, "products/0/name"), "Hammer");
	assert_int_equal(int_at(root, "products/0/sku"), 738594937);
	assert_int_equal(kumo_toml_count(kumo_toml_at(products, 1)), 0);
	assert_string_equal(str_at(root, "products/2/color"), "gray");
	assert_int_equal(kumo_toml_line(products), 1);
	assert_int_equal(kumo_toml_line(kumo_toml_at(products, 1)), 5);
	assert_int_equal(kumo_toml_line(kumo_toml_at(products, 2)), 7);
	assert_string_equal(str_at(root, "fruits/0/physical/color"), "red");
	assert_string_equal(str_at(root, "fruits/0/varieties/1/name"), "granny smith");
	assert_string_equal(str_at(root, "fruits/1/varieties/0/name"), "plantain");
	assert_string_equal(str_at(root, "fruits/1/physical/color"), "yellow");
	assert_int_equal(int_at(root, "x.y/automation/0/regex"), 1);
	kumo_toml_free(doc);

	expect_error("a = []\n[[a]]\n", 2, "a", "not an array of tables");
	expect_error("[a]\n[[a]]\n", 2, "a", "not an array of tables");
	expect_error("[[a]]\n[a]\n", 2, "a", "already defined as an array of tables");
	expect_error("[[a]]\nb = 1\n[a.b]\n", 3, "a.b", "already defined as an integer");
	expect_error("a = [{b = 1}]\n[a.c]\n", 2, "a.c", "already an array");
	expect_error("[[fruit]]\n[fruit.physical]\n[fruit.physical]\n", 3, "fruit.physical",
		     "defined more than once");
}

static void test_line_numbers(void **state)
{
	struct kumo_toml_doc *doc = parse_ok("# header comment\n"	  /* 1 */
					     "a = 1\n"			  /* 2 */
					     "s = \"\"\"\nx\ny\n\"\"\"\n" /* 3-6 */
					     "arr = [\n1,\n\n2]\n"	  /* 7-10 */
					     "b = 2\r\n"		  /* 11 */
					     "[t.u]\n"			  /* 12 */
					     "c = { d = [\n1], e = 3 }\n" /* 13-14 */
					     "[t]\n"			  /* 15 */
					     "f.g = 1\n");		  /* 16 */
	const struct kumo_toml_value *root = kumo_toml_root(doc);

	assert_int_equal(kumo_toml_line(root), 1);
	assert_int_equal(kumo_toml_line(kumo_toml_get(root, "a")), 2);
	assert_int_equal(kumo_toml_line(kumo_toml_get(root, "s")), 3);
	assert_int_equal(kumo_toml_line(kumo_toml_get(root, "arr")), 7);
	assert_int_equal(kumo_toml_line(at_path(root, "arr/1")), 10);
	assert_int_equal(kumo_toml_line(kumo_toml_get(root, "b")), 11);
	assert_int_equal(kumo_toml_line(at_path(root, "t/u")), 12);
	assert_int_equal(kumo_toml_line(at_path(root, "t/u/c")), 13);
	assert_int_equal(kumo_toml_line(at_path(root, "t/u/c/e")), 14);
	/* t was implied by [t.u] on line 12, then defined by [t] on line 15. */
	assert_int_equal(kumo_toml_line(at_path(root, "t")), 15);
	assert_int_equal(kumo_toml_line(at_path(root, "t/f")), 16);
	assert_int_equal(kumo_toml_line(at_path(root, "t/f/g")), 16);
	assert_int_equal(kumo_toml_line(NULL), 0);
	kumo_toml_free(doc);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void test_error_kinds(void **state)
{
	static const struct {
		const char *text;
		int line;
		const char *key;
		const char *msg;
	} cases[] = {
	    /* duplicate keys */
	    {"a = 1\nb = 2\na = 3\n", 3, "a", "duplicate key"},
	    {"[s]\nx = 1\n\nx = 2\n", 4, "s.x", "duplicate key"},
	    {"a.b = 1\na.b = 2\n", 2, "a.b", "duplicate key"},
	    {"\"a\" = 1\na = 2\n", 2, "a", "duplicate key"},
	    {"'a b' = 1\n\"a b\" = 2\n", 2, "\"a b\"", "duplicate key"},
	    {"a = 1\na.b = 2\n", 2, "a.b", "it is already an integer"},
	    /* redefined tables */
	    {"[a]\nb = 1\n\n[a]\n", 4, "a", "table defined more than once"},
	    {"[a]\n[a.b]\n[a.b]\n", 3, "a.b", "table defined more than once"},
	    {"[a.b]\n[a]\n[a]\n", 3, "a", "table defined more than once"},
	    {"a = 1\n[a]\n", 2, "a", "already defined as an integer"},
	    {"a.b = 1\n[a]\n", 2, "a", "already defined by dotted keys"},
	    {"[fruit]\napple.color = 1\n[fruit.apple]\n", 3, "fruit.apple",
	     "already defined by dotted keys"},
	    {"[fruit]\napple.taste.sweet = true\n[fruit.apple.taste]\n", 3, "fruit.apple.taste",
	     "already defined by dotted keys"},
	    {"[a.b.c]\nz = 9\n[a]\nb.c.t = 1\n", 4, "a.b.c.t", "made by a [header]"},
	    {"[a.b.c.d]\n[a]\nb.c.d.k.t = 1\n", 3, "a.b.c.d.k.t", "made by a [header]"},
	    {"[a]\n[a.b]\n[a]\nb.c = 1\n", 3, "a", "table defined more than once"},
	    {"[a]\nb = 1\n[a.b.c]\n", 3, "a.b.c", "it is already an integer"},
	    {"[a]\n[a.b]\nx = 1\n[a]\n", 4, "a", "defined more than once"},
	    /* escapes */
	    {"s = \"a\\qb\"\n", 1, "s", "invalid escape sequence '\\q'"},
	    {"s = \"\\x41\"\n", 1, "s", "invalid escape sequence '\\x'"},
	    {"s = \"\\e\"\n", 1, "s", "invalid escape sequence '\\e'"},
	    {"s = \"\"\"\nline\n bad \\ x \n\"\"\"\n", 3, "s", "invalid escape sequence"},
	    {"s = \"\\uD800\"\n", 1, "s", "not a Unicode scalar value"},
	    {"s = \"\\U00110000\"\n", 1, "s", "not a Unicode scalar value"},
	    {"s = \"\\u12\"\n", 1, "s", "needs exactly 4 hex digits"},
	    {"s = \"\\U1234567\"\n", 1, "s", "needs exactly 8 hex digits"},
	    {"[t]\nk = \"x\\", 2, "t.k", "unterminated escape"},
	    {"s = 'a' \"b\"\n", 1, "s", "expected end of line"},
	    /* control characters */
	    {"a = 1\ns = \"a\x01"
	     "b\"\n",
	     2, "s", "control character U+0001"},
	    {"s = 'a\x7f'\n", 1, "s", "control character U+007F"},
	    {"s = \"\"\"a\x1b\"\"\"\n", 1, "s", "control character U+001B"},
	    {"s = '''\n\nx\x08'''\n", 3, "s", "control character U+0008"},
	    {"# ok\n# bad \x7f\n", 2, "", "control character U+007F in comment"},
	    {"[t]\na = 1 # \x0c\n", 2, "t.a", "control character U+000C in comment"},
	    {"a = 1\r\nb = 2\r", 2, "b", "carriage return not followed by line feed"},
	    {"a = 1\rb = 2\n", 1, "a", "carriage return not followed by line feed"},
	    {"s = \"\"\"a\rb\"\"\"\n", 1, "s", "carriage return not followed by line feed"},
	    /* bad UTF-8 */
	    {"a = 1\n\ns = \"\xc3\x28\"\n", 3, "s", "invalid UTF-8 in string"},
	    {"s = '\xc0\xaf'\n", 1, "s", "invalid UTF-8"},
	    {"s = \"\xed\xa0\x80\"\n", 1, "s", "invalid UTF-8"},
	    {"s = \"\xf4\x90\x80\x80\"\n", 1, "s", "invalid UTF-8"},
	    {"s = \"\xe0\x80\x80\"\n", 1, "s", "invalid UTF-8"},
	    {"s = \"\xff\"\n", 1, "s", "invalid UTF-8"},
	    {"s = \"\xe2\x82\"", 1, "s", "invalid UTF-8"},
	    {"x = 1\n# caf\xe9\n", 2, "", "invalid UTF-8 in comment"},
	    {"\xff = 1\n", 1, "", "invalid UTF-8"},
	    {"a = \xc3\xa9\n", 1, "a", "expected a value"},
	    /* integer overflow */
	    {"[limits]\nmax_ready = 9223372036854775808\n", 2, "limits.max_ready",
	     "does not fit in 64 bits"},
	    {"a = [1,\n 2,\n 0x1_0000_0000_0000_0000]\n", 3, "a", "does not fit in 64 bits"},
	    /* unterminated constructs: reported where they start */
	    {"a = 1\ns = \"abc\n", 2, "s", "unterminated string"},
	    {"a = 1\ns = 'abc", 2, "s", "unterminated string"},
	    {"s = \"\"\"abc\n\ndef\n", 1, "s", "unterminated multi-line string"},
	    {"\ns = '''abc\n\ndef''\n", 2, "s", "unterminated multi-line string"},
	    {"s = \"\"\"abc\\", 1, "s", "unterminated"},
	    {"s = \"\"\"abc\\  ", 1, "s", "unterminated multi-line string"},
	    {"x = 1\na = [1,\n2,\n", 2, "a", "unterminated array"},
	    {"a = [", 1, "a", "unterminated array"},
	    {"a = {b = 1", 1, "a.b", "unterminated inline table"},
	    {"a = {", 1, "a", "unterminated inline table"},
	    {"x = 1\n[a", 2, "a", "unterminated table header"},
	    {"[[a]", 1, "a", "unterminated table header"},
	    {"[a\nb = 1\n", 1, "a", "expected ']'"},
	    {"[[a]\n", 1, "a", "expected ']]'"},
	    {"[[a] ]\n", 1, "a", "expected ']]'"},
	    {"\"key = 1\n", 1, "", "unterminated string"},
	    /* syntax */
	    {"a 1\n", 1, "a", "expected '='"},
	    {"a =\n", 1, "a", "expected a value"},
	    {"a = # nothing\n", 1, "a", "expected a value"},
	    {"a = 1 2\n", 1, "a", "expected end of line after value"},
	    {"a = hello\n", 1, "a", "strings need quotes"},
	    {"a = 1\n= 2\n", 2, "", "expected a key before '='"},
	    {"a. = 1\n", 1, "a", "expected a key before '='"},
	    {".a = 1\n", 1, "", "expected a key before '.'"},
	    {"a b = 1\n", 1, "a", "expected '='"},
	    {"a\n", 1, "a", "expected '='"},
	    {"[]\n", 1, "", "expected a key before ']'"},
	    {"[a] b = 1\n", 1, "a", "expected end of line after table header"},
	    {"[a.]\n", 1, "a", "expected a key before ']'"},
	    {"\"\"\"k\"\"\" = 1\n", 1, "", "multi-line string cannot be a key"},
	    {"k\xc3\xa9 = 1\n", 1, "k", "expected '='"},
	    {"é = 1\n", 1, "", "invalid character in key"},
	    {"s = \"\"\"a\"\"\"\"\"\"\n", 1, "s", "too many quotes"},
	    {"s = '''a''''''\n", 1, "s", "too many quotes"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case %zu\n", i);
		expect_error(cases[i].text, cases[i].line, cases[i].key, cases[i].msg);
	}
	/* A NUL byte is a control character, not the end of the input. */
	expect_error_n("a = 1\ns = \"x\0y\"\n", 15, 2, "s", "control character U+0000");
	expect_error_n("a = 1\0\n", 7, 1, "a", "expected end of line after value");
}

static void test_error_columns_and_keys(void **state)
{
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	const char *t;

	assert_int_equal(kumo_toml_parse("a = 1\nbb = \"x\\q\"\n", 17, &doc, &err), -EINVAL);
	assert_int_equal(err.line, 2);
	assert_int_equal(err.col, 8); /* the backslash */
	/* Columns count characters, not bytes. */
	t = "s = \"ééé\\q\"\n";
	assert_int_equal(kumo_toml_parse(t, strlen(t), &doc, &err), -EINVAL);
	assert_int_equal(err.col, 9);
	/* Keys that are not bare are quoted in err.key, nested inline keys are included. */
	t = "[provider.\"gmail.com\"]\naction = {SetConfig={name=1, name=2}}\n";
	assert_int_equal(kumo_toml_parse(t, strlen(t), &doc, &err), -EINVAL);
	assert_string_equal(err.key, "provider.\"gmail.com\".action.SetConfig.name");
	assert_string_equal(err.msg, "duplicate key");
	assert_int_equal(err.line, 2);
	assert_int_equal(err.col, 30);
	t = "[\"a\\\"b\\u0001\"]\nx = 1\nx = 2\n";
	assert_int_equal(kumo_toml_parse(t, strlen(t), &doc, &err), -EINVAL);
	assert_string_equal(err.key, "\"a\\\"b\\u0001\".x");
	/* err may be NULL. */
	assert_int_equal(kumo_toml_parse("a = ", 4, &doc, NULL), -EINVAL);
	assert_null(doc);
}

/* Parses text, expecting -EINVAL on the given line with msg containing what. */
static void expect_line_error(const char *text, size_t len, int line, const char *what)
{
	struct kumo_toml_doc *doc = (struct kumo_toml_doc *)1;
	struct kumo_toml_error err;

	assert_int_equal(kumo_toml_parse(text, len, &doc, &err), -EINVAL);
	assert_null(doc);
	assert_int_equal(err.line, line);
	if (!strstr(err.msg, what))
		print_message("got '%s', expected '%s'\n", err.msg, what);
	assert_non_null(strstr(err.msg, what));
}

static void test_depth_limit(void **state)
{
	char buf[1024], key[256];
	size_t n, k;
	struct kumo_toml_doc *doc;

	/* a = [[...[1]...]]: the innermost array is at depth KUMO_TOML_MAX_DEPTH. */
	n = (size_t)snprintf(buf, sizeof(buf), "a = ");
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH; i++)
		buf[n++] = '[';
	buf[n++] = '1';
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH; i++)
		buf[n++] = ']';
	doc = parse_ok_n(buf, n);
	kumo_toml_free(doc);

	/* One more level fails where it opens, whatever follows. */
	n = (size_t)snprintf(buf, sizeof(buf), "\na = ");
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH + 1; i++)
		buf[n++] = '[';
	expect_error_n(buf, n, 2, "a", "nested more than 64 deep");

	/* Inline tables: a = {b={b=...}}, the key names every level. */
	n = (size_t)snprintf(buf, sizeof(buf), "a = ");
	k = (size_t)snprintf(key, sizeof(key), "a");
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH + 1; i++) {
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{b=");
		if (i < KUMO_TOML_MAX_DEPTH)
			k += (size_t)snprintf(key + k, sizeof(key) - k, ".b");
	}
	expect_error_n(buf, n, 1, key, "nested more than 64 deep");

	/* Dotted keys make tables too: after 63 tables the value is at depth 64. */
	n = 0;
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH - 1; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "k.");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "v = [[1]]\n");
	expect_line_error(buf, n, 1, "nested more than 64 deep");
	n -= strlen("[[1]]\n");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "[1]\n");
	doc = parse_ok_n(buf, n);
	kumo_toml_free(doc);

	/* Headers: [k.k...] with 64 parts is the deepest table. */
	n = 0;
	buf[n++] = '[';
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, i ? ".k" : "k");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]\nv = 1\n");
	doc = parse_ok_n(buf, n);
	kumo_toml_free(doc);
	/* ... and cannot hold a table or an array. */
	n -= strlen("1\n");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{}\n");
	expect_line_error(buf, n, 2, "nested more than 64 deep");

	/* An array of tables there cannot take an element. */
	n = 0;
	buf[n++] = '[';
	buf[n++] = '[';
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, i ? ".k" : "k");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]]\n");
	expect_line_error(buf, n, 1, "nested more than 64 deep");
}

static void test_key_parts_limit(void **state)
{
	char buf[1024];
	size_t n = 0;

	for (int i = 0; i < KUMO_TOML_MAX_DEPTH + 1; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, i ? ".k" : "k");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, " = 1\n");
	expect_line_error(buf, n, 1, "more than 64 dotted parts");
	n = (size_t)snprintf(buf, sizeof(buf), "[");
	for (int i = 0; i < KUMO_TOML_MAX_DEPTH + 1; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, i ? ".k" : "k");
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]\n");
	expect_line_error(buf, n, 1, "more than 64 dotted parts");
}

static void test_format_error(void **state)
{
	struct kumo_toml_error err = {
	    .line = 12, .col = 3, .key = "provider.yahoo.regex", .msg = "duplicate key"};
	char buf[256];
	size_t n;

	n = kumo_toml_format_error(&err, "shaping.toml", buf, sizeof(buf));
	assert_string_equal(buf, "shaping.toml:12: key 'provider.yahoo.regex': duplicate key");
	assert_int_equal(n, strlen(buf));

	err.key[0] = 0;
	kumo_toml_format_error(&err, "kumod.toml", buf, sizeof(buf));
	assert_string_equal(buf, "kumod.toml:12: duplicate key");

	err.line = 0;
	snprintf(err.msg, sizeof(err.msg), "cannot open: No such file or directory");
	kumo_toml_format_error(&err, NULL, buf, sizeof(buf));
	assert_string_equal(buf, "<input>: cannot open: No such file or directory");

	/* Cut short like snprintf: NUL-terminated, full length returned. */
	err.line = 7;
	snprintf(err.msg, sizeof(err.msg), "bad");
	n = kumo_toml_format_error(&err, "f", buf, 5);
	assert_int_equal(n, strlen("f:7: bad"));
	assert_string_equal(buf, "f:7:");
	assert_int_equal(kumo_toml_format_error(&err, "f", NULL, 0), n);

	/* From a real parse. */
	struct kumo_toml_doc *doc;
	const char *t = "[server]\nport = 1\nport = 2\n";
	assert_int_equal(kumo_toml_parse(t, strlen(t), &doc, &err), -EINVAL);
	kumo_toml_format_error(&err, "kumod.toml", buf, sizeof(buf));
	assert_string_equal(buf, "kumod.toml:3: key 'server.port': duplicate key");
}

static void test_type_names_and_accessors(void **state)
{
	struct kumo_toml_doc *doc = parse_ok("s = 'x'\ni = 1\nd = 1979-05-27\n");
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	int64_t i;
	double f;
	bool b;

	assert_string_equal(kumo_toml_type_name(KUMO_TOML_STRING), "string");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_INTEGER), "integer");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_FLOAT), "float");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_BOOL), "boolean");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_DATETIME), "datetime");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_ARRAY), "array");
	assert_string_equal(kumo_toml_type_name(KUMO_TOML_TABLE), "table");
	assert_int_equal(kumo_toml_int(kumo_toml_get(root, "s"), &i), -EINVAL);
	assert_int_equal(kumo_toml_float(kumo_toml_get(root, "s"), &f), -EINVAL);
	assert_int_equal(kumo_toml_bool(kumo_toml_get(root, "i"), &b), -EINVAL);
	assert_int_equal(kumo_toml_int(NULL, &i), -ENOENT);
	assert_int_equal(kumo_toml_float(NULL, &f), -ENOENT);
	assert_null(kumo_toml_string(root, NULL));
	assert_null(kumo_toml_string(NULL, NULL));
	assert_string_equal(kumo_toml_string(kumo_toml_get(root, "d"), NULL), "1979-05-27");
	assert_null(kumo_toml_root(NULL));
	kumo_toml_free(NULL);
	kumo_toml_free(doc);
}

static void test_large_table(void **state)
{
	enum { N = 2000 };
	size_t cap = N * 40, n = 0;
	char *buf = malloc(cap);
	char key[32];

	assert_non_null(buf);
	for (int i = 0; i < N; i++)
		n += (size_t)snprintf(buf + n, cap - n, "[\"d%d.example\"]\nlimit = %d\n", i, i);
	struct kumo_toml_doc *doc = parse_ok_n(buf, n);
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	assert_int_equal(kumo_toml_count(root), N);
	for (int i = 0; i < N; i++) {
		snprintf(key, sizeof(key), "d%d.example", i);
		assert_string_equal(kumo_toml_key_at(root, (size_t)i), key);
		assert_ptr_equal(kumo_toml_get(root, key), kumo_toml_at(root, (size_t)i));
		assert_int_equal(int_at(kumo_toml_get(root, key), "limit"), i);
		assert_int_equal(kumo_toml_line(kumo_toml_get(root, key)), 2 * i + 1);
	}
	assert_null(kumo_toml_get(root, "d2000.example"));
	assert_null(kumo_toml_get(root, "d1.exampl"));
	kumo_toml_free(doc);

	/* A duplicate among many keys is found through the index too. */
	n += (size_t)snprintf(buf + n, cap - n, "[\"d1234.example\"]\n");
	expect_error_n(buf, n, 2 * N + 1, "\"d1234.example\"", "table defined more than once");
	free(buf);
}

/* ---- the KumoMTA shaping files ---------------------------------------------------------- */

static void test_compat_community_shaping(void **state)
{
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	int rc = kumo_toml_parse_file(COMMUNITY, &doc, &err);

	if (rc)
		print_message("%s:%d: key '%s': %s\n", COMMUNITY, err.line, err.key, err.msg);
	assert_int_equal(rc, 0);
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	const struct kumo_toml_value *provider = kumo_toml_get(root, "provider");

	assert_string_equal(kumo_toml_key_at(root, 0), "provider");
	assert_string_equal(kumo_toml_key_at(root, 1), "yahoo.co.jp");
	assert_int_equal(kumo_toml_count(root), 2);
	assert_string_equal(kumo_toml_key_at(provider, 0), "gmail");
	assert_string_equal(kumo_toml_key_at(provider, 1), "yahoo");
	assert_string_equal(kumo_toml_key_at(provider, 2), "gmx.net_web.de");

	/* [[provider."gmail".automation]] twice, without a [provider."gmail"] table. */
	const struct kumo_toml_value *gmail = at_path(provider, "gmail/automation");
	assert_int_equal(kumo_toml_type(gmail), KUMO_TOML_ARRAY);
	assert_int_equal(kumo_toml_count(gmail), 2);
	assert_int_equal(kumo_toml_line(kumo_toml_at(gmail, 0)), 33);
	assert_string_equal(str_at(gmail, "0/regex"), "Our system has detected that this message");
	assert_string_equal(str_at(gmail, "0/trigger/Threshold"), "5/hr");
	assert_string_equal(str_at(gmail, "0/action"), "Suspend");
	assert_string_equal(str_at(gmail, "0/duration"), "1 hour");
	assert_string_equal(str_at(gmail, "1/action/SetConfig/name"), "max_message_rate");
	assert_string_equal(str_at(gmail, "1/action/SetConfig/value"), "10/minute");
	assert_string_equal(str_at(gmail, "1/duration"), "30m");

	/* Basic strings with escaped backslashes, and a ''' literal regex. */
	assert_string_equal(str_at(provider, "yahoo/automation/0/regex"), "\\[TS02\\]");
	assert_string_equal(str_at(provider, "yahoo/automation/2/regex"),
			    "421 4\\.7\\.0 \\[TSS04\\]");
	assert_string_equal(str_at(provider, "apple/automation/2/regex"),
			    "\\\\[HCM1\\\\] Your mail from \\d+\\.\\d+\\.\\d+\\.\\d+ was deferred");

	/* ["yahoo.co.jp"] and [["yahoo.co.jp".automation]]. */
	assert_int_equal(int_at(root, "yahoo.co.jp/connection_limit"), 2);
	assert_string_equal(str_at(root, "yahoo.co.jp/max_message_rate"), "10/s");
	assert_int_equal(kumo_toml_count(at_path(root, "yahoo.co.jp/automation")), 4);
	assert_string_equal(str_at(root, "yahoo.co.jp/automation/3/regex"),
			    "Timeout waiting for command");

	/* match = [ {MXSuffix=...}, ... ] over several lines, with a trailing comma. */
	const struct kumo_toml_value *match = at_path(provider, "gmx.net_web.de/match");
	assert_int_equal(kumo_toml_count(match), 2);
	assert_string_equal(str_at(match, "0/MXSuffix"), ".web.de");
	assert_string_equal(str_at(match, "1/MXSuffix"), ".gmx.net");
	assert_int_equal(
	    int_at(provider, "gmx.net_web.de/consecutive_connection_failures_before_delay"), 5);
	assert_int_equal(kumo_toml_count(at_path(provider, "gmx.net_web.de/automation")), 4);
	assert_int_equal(int_at(provider, "gmx.net_web.de/automation/0/action/SetConfig/value"), 1);

	assert_int_equal(kumo_toml_count(at_path(provider, "outlook/automation")), 9);
	assert_int_equal(int_at(provider, "barracuda/provider_connection_limit"), 10);
	assert_string_equal(str_at(provider, "barracuda/enable_tls"), "Required");
	assert_string_equal(str_at(provider, "barracuda/match/0/MXSuffix"),
			    ".barracudanetworks.com.");
	assert_string_equal(str_at(provider, "163.com/enable_tls"), "RequiredInsecure");
	assert_int_equal(kumo_toml_count(at_path(provider, "163.com/automation")), 5);
	assert_string_equal(str_at(provider, "qq.com/match/0/MXSuffix"), ".qq.com");
	kumo_toml_free(doc);
}

static void test_compat_policy_extras_shaping(void **state)
{
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	int rc = kumo_toml_parse_file(POLICY_EXTRAS, &doc, &err);

	if (rc)
		print_message("%s:%d: key '%s': %s\n", POLICY_EXTRAS, err.line, err.key, err.msg);
	assert_int_equal(rc, 0);
	const struct kumo_toml_value *root = kumo_toml_root(doc);

	assert_string_equal(kumo_toml_key_at(root, 0), "default");
	assert_string_equal(kumo_toml_key_at(root, 1), "generator.kumomta.internal");
	assert_string_equal(kumo_toml_key_at(root, 2), "deferred_smtp_inject.kumomta.internal");
	assert_string_equal(kumo_toml_key_at(root, 3), "provider");

	const struct kumo_toml_value *def = kumo_toml_get(root, "default");
	assert_int_equal(kumo_toml_line(def), 54);
	assert_int_equal(int_at(def, "connection_limit"), 10);
	assert_string_equal(str_at(def, "max_connection_rate"), "100/min");
	assert_int_equal(int_at(def, "max_deliveries_per_connection"), 100);
	assert_string_equal(str_at(def, "enable_tls"), "Opportunistic");
	assert_string_equal(str_at(def, "remember_broken_tls"), "3 days");
	/* The keys of ["default"] in order, then the automation array added by its
	 * [["default".automation]] section. */
	assert_string_equal(kumo_toml_key_at(def, 0), "connection_limit");
	assert_string_equal(kumo_toml_key_at(def, 9), "remember_broken_tls");
	assert_string_equal(kumo_toml_key_at(def, 10), "automation");

	/* regex = [ '''...''', ... ] and action = [ {SetConfig={...}}, ... ]. */
	const struct kumo_toml_value *auto0 = at_path(def, "automation/0");
	assert_int_equal(kumo_toml_count(kumo_toml_get(auto0, "regex")), 5);
	assert_string_equal(str_at(auto0, "regex/0"),
			    "Messages from \\d+\\.\\d+\\.\\d+\\.\\d+ temporarily deferred");
	assert_string_equal(str_at(auto0, "regex/3"),
			    "Unfortunately, messages from \\d+\\.\\d+\\.\\d+\\.\\d+ weren.t sent");
	assert_int_equal(kumo_toml_count(kumo_toml_get(auto0, "action")), 2);
	assert_string_equal(str_at(auto0, "action/0/SetConfig/value"), "1/minute");
	assert_string_equal(str_at(auto0, "action/1/SetConfig/name"), "connection_limit");
	assert_int_equal(int_at(auto0, "action/1/SetConfig/value"), 1);
	assert_string_equal(str_at(auto0, "duration"), "90m");

	bool b = true;
	assert_int_equal(kumo_toml_bool(at_path(root, "generator.kumomta.internal/mx_rollup"), &b),
			 0);
	assert_false(b);

	const struct kumo_toml_value *provider = kumo_toml_get(root, "provider");
	assert_string_equal(str_at(provider, "google/match/1/MXSuffix"), ".googlemail.com");
	assert_string_equal(str_at(provider, "google/enable_tls"), "Required");
	assert_int_equal(int_at(provider, "google/provider_connection_limit"), 5);
	assert_string_equal(str_at(provider, "yahoo/automation/0/regex"), "\\[TS?S04\\]");
	assert_string_equal(str_at(provider, "office365-dane/match/0/MXSuffix"), ".mx.microsoft");
	assert_int_equal(kumo_toml_count(at_path(provider, "mimecast/match")), 3);
	assert_string_equal(str_at(provider, "mimecast/match/2/MXSuffix"),
			    ".mimecast-offshore.com");

	assert_int_equal(int_at(root, "comcast.net/connection_limit"), 25);
	assert_int_equal(kumo_toml_count(at_path(root, "comcast.net/automation")), 2);
	assert_string_equal(str_at(root, "comcast.net/automation/0/action/SetConfig/value"),
			    "10000/h");
	assert_string_equal(str_at(root, "comcast.net/automation/1/regex"),
			    "^(?!.*KumoMTA internal).*RL000010");
	assert_string_equal(str_at(root, "comcast.net/automation/1/trigger"), "Immediate");

	assert_int_equal(int_at(root, "example.com/connection_limit"), 3);
	assert_int_equal(int_at(root, "example.com/sources/my source name/connection_limit"), 5);
	const struct kumo_toml_value *tsa =
	    kumo_toml_get(root, "http://127.0.0.1:8008.tsa.kumomta");
	assert_non_null(tsa);
	assert_int_equal(int_at(tsa, "max_ready"), 10000);
	assert_string_equal(str_at(tsa, "connection_limit"), "local:5");
	assert_string_equal(str_at(tsa, "system_shutdown_timeout"), "30s");
	kumo_toml_free(doc);
}

static void test_parse_file_errors(void **state)
{
	struct kumo_toml_doc *doc = (struct kumo_toml_doc *)1;
	struct kumo_toml_error err;
	char buf[512];
	char path[] = "/tmp/test_toml_XXXXXX";
	int fd;

	assert_int_equal(kumo_toml_parse_file("/nonexistent/kumod.toml", &doc, &err), -ENOENT);
	assert_null(doc);
	assert_int_equal(err.line, 0);
	kumo_toml_format_error(&err, "/nonexistent/kumod.toml", buf, sizeof(buf));
	assert_string_equal(buf, "/nonexistent/kumod.toml: cannot open: No such file or directory");
	assert_int_equal(kumo_toml_parse_file("/", &doc, &err), -EISDIR);

	/* A syntax error in a file is reported like one in memory. */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	static const char bad[] = "[listener]\nport = 25\nport = 2525\n";
	assert_int_equal(write(fd, bad, sizeof(bad) - 1), (ssize_t)(sizeof(bad) - 1));
	close(fd);
	assert_int_equal(kumo_toml_parse_file(path, &doc, &err), -EINVAL);
	assert_int_equal(err.line, 3);
	assert_string_equal(err.key, "listener.port");
	unlink(path);
}

/* ---- truncation ------------------------------------------------------------------------- */

/* A buffer whose last byte sits just before an inaccessible page, so that a parser that
 * reads one byte too far faults even without a sanitizer. */
struct guarded {
	unsigned char *map;
	size_t maplen;
	size_t page;
};

static char *guarded_copy(struct guarded *g, const char *text, size_t len)
{
	char *p = (char *)g->map + (g->maplen - g->page) - len;
	memcpy(p, text, len);
	return p;
}

static void guarded_init(struct guarded *g, size_t maxlen)
{
	g->page = (size_t)sysconf(_SC_PAGESIZE);
	g->maplen = (maxlen + g->page - 1) / g->page * g->page + g->page;
	g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(g->map != MAP_FAILED);
	assert_int_equal(mprotect(g->map + g->maplen - g->page, g->page, PROT_NONE), 0);
}

/* Parses every prefix of text; each either parses or fails with a position. */
static void check_truncations(const char *text, size_t len)
{
	struct guarded g;
	size_t ok = 0;

	guarded_init(&g, len);
	for (size_t i = 0; i <= len; i++) {
		struct kumo_toml_doc *doc = NULL;
		struct kumo_toml_error err;
		const char *p = guarded_copy(&g, text, i);
		int rc = kumo_toml_parse(p, i, &doc, &err);
		if (rc != 0 && rc != -EINVAL)
			print_message("prefix %zu: rc %d\n", i, rc);
		assert_true(rc == 0 || rc == -EINVAL);
		if (rc == 0) {
			assert_non_null(doc);
			ok++;
		} else {
			assert_null(doc);
			assert_true(err.line >= 1 && err.col >= 1 && err.msg[0]);
		}
		kumo_toml_free(doc);
	}
	/* The whole text parses, and so do many of its prefixes (those cut at a line end). */
	assert_true(ok > 1);
	munmap(g.map, g.maplen);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	*len = (size_t)ftell(f);
	rewind(f);
	buf = malloc(*len + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, *len, f), *len);
	fclose(f);
	return buf;
}

static const char rich_doc[] =
    "# every construct\n"
    "title = \"TOML \\u00E9\\U0001F600 \\\"x\\\"\"\n"
    "lit = 'C:\\path'\n"
    "ml = \"\"\"\nline one\\\n   joined \"\" quotes\"\"\"\n"
    "mll = '''\nraw ''\n'''\n"
    "int = [+1_000, -0, 0o17, 0b1010, 9223372036854775807]\n"
    "flt = [3.14, -1e-3, 6.02E+23, inf, -nan, 1_0.0_1]\n"
    "dt = [1979-05-27T07:32:00Z, 1979-05-27 07:32:00.5-07:00, 1979-05-27, 07:32:00]\n"
    "bool = [true, false]\n"
    "a.b.\"c d\" = 'dotted'\n"
    "inline = { x = 1, y = { z = [ 1, { w = 2 } ] }, p.q = 3 }\n"
    "\n"
    "[server]\r\n"
    "listen = [ \"0.0.0.0:25\", # comment\n"
    "  \"[::]:25\",\n"
    "]\n"
    "[[provider.\"gmail.com\".automation]]\n"
    "regex = '''\\d+'''\n"
    "[[provider.\"gmail.com\".automation]]\n"
    "trigger = {Threshold=\"5/hr\"}\n"
    "[provider.\"gmail.com\"]\n"
    "match=[{MXSuffix=\".google.com\"},]\n";

static void test_truncation_rich_doc(void **state)
{
	struct kumo_toml_doc *doc = parse_ok(rich_doc);
	kumo_toml_free(doc);
	check_truncations(rich_doc, sizeof(rich_doc) - 1);
}

static void test_truncation_compat_files(void **state)
{
	static const char *const files[] = {COMMUNITY, POLICY_EXTRAS};

	for (size_t i = 0; i < 2; i++) {
		size_t len;
		char *text = slurp(files[i], &len);
		check_truncations(text, len);
		free(text);
	}
}

/* The same document with LF and with CRLF line ends reads the same. */
static void test_crlf_document(void **state)
{
	size_t len = sizeof(rich_doc) - 1, n = 0;
	char *crlf = malloc(2 * len);
	assert_non_null(crlf);
	for (size_t i = 0; i < len; i++) {
		if (rich_doc[i] == '\n' && (i == 0 || rich_doc[i - 1] != '\r'))
			crlf[n++] = '\r';
		crlf[n++] = rich_doc[i];
	}
	struct kumo_toml_doc *a = parse_ok(rich_doc), *b = parse_ok_n(crlf, n);
	const struct kumo_toml_value *ra = kumo_toml_root(a), *rb = kumo_toml_root(b);
	assert_string_equal(str_at(ra, "ml"), "line onejoined \"\" quotes");
	assert_string_equal(str_at(rb, "ml"), str_at(ra, "ml"));
	assert_string_equal(str_at(rb, "mll"), "raw ''\n");
	assert_int_equal(kumo_toml_count(rb), kumo_toml_count(ra));
	assert_int_equal(kumo_toml_line(at_path(rb, "provider/gmail.com")),
			 kumo_toml_line(at_path(ra, "provider/gmail.com")));
	assert_int_equal(kumo_toml_line(at_path(ra, "provider/gmail.com")), 25);
	assert_string_equal(str_at(rb, "provider/gmail.com/automation/0/regex"), "\\d+");
	assert_string_equal(str_at(rb, "provider/gmail.com/match/0/MXSuffix"), ".google.com");
	assert_int_equal(int_at(rb, "inline/y/z/1/w"), 2);
	assert_int_equal(int_at(rb, "inline/p/q"), 3);
	assert_string_equal(str_at(rb, "a/b/c d"), "dotted");
	kumo_toml_free(a);
	kumo_toml_free(b);
	free(crlf);
}

/* ---- writing values back ---------------------------------------------------------------- */

static void assert_same_value(const struct kumo_toml_value *a, const struct kumo_toml_value *b);

/* The members (tables) or elements (arrays) of a and b, in order. */
static void assert_same_items(const struct kumo_toml_value *a, const struct kumo_toml_value *b)
{
	size_t la, lb;

	assert_int_equal(kumo_toml_count(a), kumo_toml_count(b));
	for (size_t i = 0; i < kumo_toml_count(a); i++) {
		if (kumo_toml_type(a) == KUMO_TOML_TABLE) {
			const char *ka = kumo_toml_keyn_at(a, i, &la),
				   *kb = kumo_toml_keyn_at(b, i, &lb);
			assert_int_equal(la, lb);
			assert_memory_equal(ka, kb, la);
		}
		assert_same_value(kumo_toml_at(a, i), kumo_toml_at(b, i));
	}
}

/* a and b have the same type and value; floats to the bit, but any NaN equals any NaN. */
static void assert_same_value(const struct kumo_toml_value *a, const struct kumo_toml_value *b)
{
	int64_t ia, ib;
	double fa, fb;
	bool ba, bb;
	size_t la, lb;
	const char *sa, *sb;

	assert_non_null(b);
	assert_int_equal(kumo_toml_type(a), kumo_toml_type(b));
	switch (kumo_toml_type(a)) {
	case KUMO_TOML_STRING:
	case KUMO_TOML_DATETIME:
		sa = kumo_toml_string(a, &la);
		sb = kumo_toml_string(b, &lb);
		assert_int_equal(la, lb);
		assert_memory_equal(sa, sb, la);
		break;
	case KUMO_TOML_INTEGER:
		kumo_toml_int(a, &ia);
		kumo_toml_int(b, &ib);
		assert_true(ia == ib);
		break;
	case KUMO_TOML_FLOAT:
		kumo_toml_float(a, &fa);
		kumo_toml_float(b, &fb);
		assert_true(isnan(fa) ? isnan(fb) : memcmp(&fa, &fb, sizeof(fa)) == 0);
		break;
	case KUMO_TOML_BOOL:
		kumo_toml_bool(a, &ba);
		kumo_toml_bool(b, &bb);
		assert_true(ba == bb);
		break;
	case KUMO_TOML_ARRAY:
	case KUMO_TOML_TABLE:
		assert_same_items(a, b);
		break;
	}
}

/* Parses "v = <value>", renders v, parses "v = <rendered>" and checks that both v are the
 * same; the rendered text is compared with expect unless that is NULL. */
static void round_trip(const char *value, const char *expect)
{
	char src[1024];
	struct kumo_buf out = {0};

	snprintf(src, sizeof(src), "v = %s\n", value);
	struct kumo_toml_doc *a = parse_ok(src);
	const struct kumo_toml_value *va = kumo_toml_get(kumo_toml_root(a), "v");
	kumo_buf_puts(&out, "v = ");
	kumo_toml_render_value(&out, va);
	assert_false(out.oom);
	struct kumo_toml_doc *b = parse_ok_n(out.data, out.len);
	if (expect && (out.len != 4 + strlen(expect) || memcmp(out.data + 4, expect, out.len - 4)))
		fail_msg("%s written as %.*s, not %s", value, (int)out.len - 4, out.data + 4,
			 expect);
	assert_same_value(va, kumo_toml_get(kumo_toml_root(b), "v"));
	kumo_toml_free(a);
	kumo_toml_free(b);
	kumo_buf_free(&out);
}

/* A value as written in a document, and as it is written back (NULL: not compared). */
struct render_case {
	const char *value, *expect;
};

/* Values as written in documents, and as they are written back. */
static const struct render_case render_cases[] = {
    /* Quotes, backslashes, control characters, UTF-8, literal and multi-line strings. */
    {"\"plain\"", "\"plain\""},
    {"\"q\\\"uote \\\\back\\\\slash\"", "\"q\\\"uote \\\\back\\\\slash\""},
    {"'C:\\path\\\"x'", "\"C:\\\\path\\\\\\\"x\""},
    {"\"\\u0000nul \\u0001 \\t\\n\\r\\b\\f \\u001F \\u007F\"",
     "\"\\u0000nul \\u0001 \\u0009\\u000A\\u000D\\u0008\\u000C \\u001F \\u007F\""},
    {"\"caf\\u00E9 \xE2\x82\xAC \\U0001F600\"", "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\""},
    {"\"\"\"\nmulti\n\"\"line\\\n   joined\"\"\"", "\"multi\\u000A\\\"\\\"linejoined\""},
    {"''", "\"\""},
    /* Integers, floats (which stay floats), booleans and a date-time. */
    {"0", "0"},
    {"-17", "-17"},
    {"+1_000", "1000"},
    {"0xDEAD_beef", "3735928559"},
    {"9223372036854775807", "9223372036854775807"},
    {"-9223372036854775808", "-9223372036854775808"},
    {"2.0", "2.0"}, /* not 2, which reads back as an integer */
    {"-2.0", "-2.0"},
    {"0.0", "0.0"},
    {"-0.0", "-0.0"},
    {"1e300", "1.0000000000000001e+300"},
    {"1e22", "1e+22"},
    {"1.5", "1.5"},
    {"0.1", NULL},
    {"-2E-2", NULL},
    {"6.626e-34", NULL},
    {"5e-324", NULL},		      /* the smallest subnormal */
    {"1.7976931348623157e308", NULL}, /* the largest finite double */
    {"inf", "inf"},
    {"+inf", "inf"},
    {"-inf", "-inf"},
    {"nan", "nan"},
    {"true", "true"},
    {"false", "false"},
    {"1979-05-27T07:32:00.5-07:00", "1979-05-27T07:32:00.5-07:00"},
    /* Arrays, and tables as inline tables, with keys that need quotes. */
    {"[]", "[]"},
    {"[1, 2.0, \"x\", true, [[]], {}]", "[1, 2.0, \"x\", true, [[]], {}]"},
    {"[\n 1, # comment\n 2,\n]", "[1, 2]"},
    {"{}", "{}"},
    {"{a = 1, b-c_D9 = \"s\", nested = {x = [1.0e0, {y = false}]}}",
     "{a = 1, b-c_D9 = \"s\", nested = {x = [1.0, {y = false}]}}"},
    {"{\"gmail.com\" = 1, \"\" = 2, \"q\\\"k\\\\\" = 3, \"t\\tab\" = 4, 'sp ace' = 5}",
     "{\"gmail.com\" = 1, \"\" = 2, \"q\\\"k\\\\\" = 3, \"t\\u0009ab\" = 4, "
     "\"sp ace\" = 5}"},
    {"{a.b.c = 1, a.d = 2.5}", "{a = {b = {c = 1}, d = 2.5}}"},
    {"{ SetConfig = { name = \"max_message_rate\", value = \"10/h\" } }",
     "{SetConfig = {name = \"max_message_rate\", value = \"10/h\"}}"},
};

static void test_render_round_trips(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(render_cases) / sizeof(render_cases[0]); i++)
		round_trip(render_cases[i].value, render_cases[i].expect);
}

/* Keys alone, and a NULL value, which writes nothing. */
static void test_render_keys(void **state)
{
	struct kumo_buf out = {0};

	(void)state;
	kumo_toml_render_key(&out, "bare-Key_9", 10);
	kumo_buf_putc(&out, ' ');
	kumo_toml_render_key(&out, "a.b", 3);
	kumo_buf_putc(&out, ' ');
	kumo_toml_render_key(&out, "", 0);
	kumo_buf_putc(&out, ' ');
	kumo_toml_render_key(&out, "n\0ul", 4);
	kumo_toml_render_value(&out, NULL);
	kumo_buf_putc(&out, 0);
	assert_string_equal(out.data, "bare-Key_9 \"a.b\" \"\" \"n\\u0000ul\"");
	kumo_buf_free(&out);
}

/* Under a locale whose decimal point is a comma (when one is installed), floats are still
 * written with '.'. */
static void test_render_locale(void **state)
{
	static const char *const names[] = {"de_DE.UTF-8", "de_DE.utf8",  "fr_FR.UTF-8",
					    "fr_FR.utf8",  "ru_RU.UTF-8", "nl_NL.UTF-8"};
	const char *set = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !set; i++)
		set = setlocale(LC_NUMERIC, names[i]);
	if (!set || strcmp(localeconv()->decimal_point, ".") == 0) {
		setlocale(LC_NUMERIC, "C");
		skip();
	}
	round_trip("2.5", "2.5");
	round_trip("2.0", "2.0");
	round_trip("-1.25e-300", NULL);
	setlocale(LC_NUMERIC, "C");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_basic_strings),
	    cmocka_unit_test(test_literal_and_multiline_strings),
	    cmocka_unit_test(test_integers),
	    cmocka_unit_test(test_floats),
	    cmocka_unit_test(test_bools),
	    cmocka_unit_test(test_datetimes),
	    cmocka_unit_test(test_arrays),
	    cmocka_unit_test(test_inline_tables),
	    cmocka_unit_test(test_tables_and_keys),
	    cmocka_unit_test(test_arrays_of_tables),
	    cmocka_unit_test(test_line_numbers),
	    cmocka_unit_test(test_error_kinds),
	    cmocka_unit_test(test_error_columns_and_keys),
	    cmocka_unit_test(test_depth_limit),
	    cmocka_unit_test(test_key_parts_limit),
	    cmocka_unit_test(test_format_error),
	    cmocka_unit_test(test_type_names_and_accessors),
	    cmocka_unit_test(test_large_table),
	    cmocka_unit_test(test_compat_community_shaping),
	    cmocka_unit_test(test_compat_policy_extras_shaping),
	    cmocka_unit_test(test_parse_file_errors),
	    cmocka_unit_test(test_truncation_rich_doc),
	    cmocka_unit_test(test_truncation_compat_files),
	    cmocka_unit_test(test_crlf_document),
	    cmocka_unit_test(test_render_round_trips),
	    cmocka_unit_test(test_render_keys),
	    cmocka_unit_test(test_render_locale),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
