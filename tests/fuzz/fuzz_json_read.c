/* libFuzzer target for the JSON reader: any input either parses or fails with a position
 * inside it; a parsed tree is walked through every accessor, checking that each member of
 * an object is found again by its key; sequences of values are read to the end. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/json_read.h"

static void walk(const struct kumo_json_value *v, int depth)
{
	size_t n = kumo_json_count(v), len;
	int64_t i;
	double d;
	bool b;
	if (depth > KUMO_JSON_MAX_DEPTH)
		abort();
	switch (kumo_json_type(v)) {
	case KUMO_JSON_NULL:
		if (!kumo_json_is_null(v) || n)
			abort();
		break;
	case KUMO_JSON_BOOL:
		if (kumo_json_boolean(v, &b) || n)
			abort();
		break;
	case KUMO_JSON_NUMBER:
		if (kumo_json_number(v, &d) || n)
			abort();
		if (kumo_json_integer(v, &i) == 0 && (double)i != d)
			abort();
		break;
	case KUMO_JSON_STRING: {
		const char *s = kumo_json_string(v, &len);
		if (!s || s[len] != 0 || n)
			abort();
		break;
	}
	case KUMO_JSON_ARRAY:
		for (size_t k = 0; k < n; k++)
			walk(kumo_json_at(v, k), depth + 1);
		if (kumo_json_at(v, n) || kumo_json_key_at(v, 0, NULL))
			abort();
		break;
	case KUMO_JSON_OBJECT:
		for (size_t k = 0; k < n; k++) {
			const char *key = kumo_json_key_at(v, k, &len);
			if (!key || key[len] != 0 ||
			    kumo_json_getn(v, key, len) != kumo_json_at(v, k))
				abort();
			walk(kumo_json_at(v, k), depth + 1);
		}
		if (kumo_json_at(v, n) || kumo_json_key_at(v, n, NULL))
			abort();
		break;
	default:
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so that reading past the input trips the address sanitizer. */
	char *copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	if (size)
		memcpy(copy, data, size);
	struct kumo_json_doc *doc = NULL;
	struct kumo_json_error err;
	int rc = kumo_json_parse(copy, size, NULL, &doc, &err);
	if (rc == 0) {
		walk(kumo_json_doc_root(doc), 0);
		kumo_json_doc_free(doc);
	} else if (rc == -EINVAL) {
		if (doc || err.offset > size || err.line < 1 || err.col < 1 || !err.msg[0])
			abort();
	} else if (rc != -ENOMEM) {
		abort();
	}
	/* The same bytes as a sequence of values. */
	size_t off = 0, end;
	while (off < size) {
		if (kumo_json_parse(copy + off, size - off, &end, &doc, &err) < 0)
			break;
		if (end == 0 || end > size - off)
			abort();
		kumo_json_doc_free(doc);
		off += end;
	}
	free(copy);
	return 0;
}
