/* libFuzzer target for the TOML reader: any input either parses or fails with a position,
 * and a parsed tree is walked through every accessor, checking that each key of a table
 * is found again by lookup, that the error text formats, and that every scalar written
 * back by kumo_toml_render_value() reads back as the same value. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "util/toml.h"

static void check_error(const struct kumo_toml_error *err)
{
	char buf[600];
	size_t n;

	if (err->line < 1 || err->col < 1 || !err->msg[0])
		abort();
	if (!memchr(err->key, 0, sizeof(err->key)) || !memchr(err->msg, 0, sizeof(err->msg)))
		abort();
	n = kumo_toml_format_error(err, "fuzz.toml", buf, sizeof(buf));
	if (n >= sizeof(buf) || strlen(buf) != n)
		abort();
	if (kumo_toml_format_error(err, NULL, buf, 8) != n - strlen("fuzz.toml") + 7)
		abort();
}

/* Renders scalar v as "v = <value>", parses that, and checks type and value. */
static void check_round_trip(const struct kumo_toml_value *v)
{
	struct kumo_buf b = {0};
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	kumo_buf_append(&b, "v = ", 4);
	kumo_toml_render_value(&b, v);
	if (b.oom) {
		kumo_buf_free(&b);
		return;
	}
	int rc = kumo_toml_parse(b.data, b.len, &doc, &err);
	if (rc == -ENOMEM) {
		kumo_buf_free(&b);
		return;
	}
	const struct kumo_toml_value *w = rc == 0 ? kumo_toml_get(kumo_toml_root(doc), "v") : NULL;
	if (!w || kumo_toml_type(w) != kumo_toml_type(v))
		abort();
	size_t la, lb;
	const char *sa = kumo_toml_string(v, &la), *sb = kumo_toml_string(w, &lb);
	int64_t ia, ib;
	double fa, fb;
	if (sa && (la != lb || memcmp(sa, sb, la) != 0))
		abort();
	if (kumo_toml_type(v) == KUMO_TOML_INTEGER &&
	    (kumo_toml_int(v, &ia) || kumo_toml_int(w, &ib) || ia != ib))
		abort();
	if (kumo_toml_type(v) == KUMO_TOML_FLOAT && !kumo_toml_float(v, &fa) &&
	    !kumo_toml_float(w, &fb) && fa == fa && memcmp(&fa, &fb, sizeof(fa)) != 0)
		abort();
	kumo_toml_free(doc);
	kumo_buf_free(&b);
}

/* Recursion is bounded: the reader rejects nesting deeper than KUMO_TOML_MAX_DEPTH. */
static void walk(const struct kumo_toml_value *v, int depth)
{
	size_t n = kumo_toml_count(v), len;
	int64_t i;
	double f;
	bool b;

	/* Tables and arrays sit at most KUMO_TOML_MAX_DEPTH below the root, scalars one more. */
	if (depth > KUMO_TOML_MAX_DEPTH + 1 || kumo_toml_line(v) < 1)
		abort();
	if (depth > KUMO_TOML_MAX_DEPTH &&
	    (kumo_toml_type(v) == KUMO_TOML_ARRAY || kumo_toml_type(v) == KUMO_TOML_TABLE))
		abort();
	if (kumo_toml_type(v) != KUMO_TOML_ARRAY && kumo_toml_type(v) != KUMO_TOML_TABLE)
		check_round_trip(v);
	switch (kumo_toml_type(v)) {
	case KUMO_TOML_STRING:
	case KUMO_TOML_DATETIME: {
		const char *s = kumo_toml_string(v, &len);
		if (!s || s[len] != 0 || n)
			abort();
		break;
	}
	case KUMO_TOML_INTEGER:
		if (kumo_toml_int(v, &i) || kumo_toml_float(v, &f) || n)
			abort();
		break;
	case KUMO_TOML_FLOAT:
		if (kumo_toml_float(v, &f) || kumo_toml_int(v, &i) != -EINVAL || n)
			abort();
		break;
	case KUMO_TOML_BOOL:
		if (kumo_toml_bool(v, &b) || n)
			abort();
		break;
	case KUMO_TOML_ARRAY:
		for (size_t k = 0; k < n; k++)
			walk(kumo_toml_at(v, k), depth + 1);
		if (kumo_toml_at(v, n) || kumo_toml_key_at(v, 0))
			abort();
		break;
	case KUMO_TOML_TABLE:
		for (size_t k = 0; k < n; k++) {
			const char *key = kumo_toml_keyn_at(v, k, &len);
			if (!key || key[len] != 0 ||
			    kumo_toml_getn(v, key, len) != kumo_toml_at(v, k))
				abort();
			walk(kumo_toml_at(v, k), depth + 1);
		}
		if (kumo_toml_at(v, n) || kumo_toml_key_at(v, n))
			abort();
		break;
	default:
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kumo_toml_doc *doc = NULL;
	struct kumo_toml_error err;
	char *copy;
	int rc;

	/* An exact-size copy, so that reading past the input trips the address sanitizer. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	if (size)
		memcpy(copy, data, size);
	rc = kumo_toml_parse(copy, size, &doc, &err);
	if (rc == 0) {
		if (!doc)
			abort();
		walk(kumo_toml_root(doc), 0);
		kumo_toml_free(doc);
	} else if (rc == -EINVAL) {
		if (doc)
			abort();
		check_error(&err);
	} else if (rc != -ENOMEM) {
		abort();
	}
	free(copy);
	return 0;
}
