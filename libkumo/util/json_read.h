/* A strict JSON reader (RFC 8259) for HTTP request bodies such as KumoMTA log records:
 * parses text held in memory into a read-only tree owned by one kumo_json_doc, and reports
 * the first error with its byte offset, line and column. The writer is util/json.h. */
#ifndef KUMO_UTIL_JSON_READ_H
#define KUMO_UTIL_JSON_READ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of arrays and objects; deeper documents are refused, so that parsing
 * recursion stays bounded. */
#define KUMO_JSON_MAX_DEPTH 64

enum kumo_json_type {
	KUMO_JSON_NULL,
	KUMO_JSON_BOOL,
	KUMO_JSON_NUMBER,
	KUMO_JSON_STRING,
	KUMO_JSON_ARRAY,
	KUMO_JSON_OBJECT,
};

/* A parsed value and everything below it. It owns every node and string reachable from
 * kumo_json_doc_root(), all valid and unchanged until kumo_json_doc_free(); it keeps no
 * pointer into the input text. Read-only after parsing: several threads may read it. */
struct kumo_json_doc;

/* A node: null, boolean, number, string, array or object. Opaque. */
struct kumo_json_value;

struct kumo_json_error {
	size_t offset; /* byte offset of the error in the input */
	int line;      /* 1-based */
	int col;       /* 1-based, in characters (UTF-8 code points) */
	char msg[128]; /* what is wrong: "duplicate key \"type\"" */
};

/* Parses one JSON value from text[0..len), after optional whitespace (space, tab, CR, LF).
 * What the reader refuses: anything RFC 8259 does not allow (comments, trailing commas,
 * single quotes, leading zeros, NaN, a byte order mark), invalid UTF-8 (overlong forms,
 * surrogates, code points above U+10FFFF), unescaped control characters in strings,
 * \u escapes of unpaired surrogates, duplicate keys in an object, and nesting deeper than
 * KUMO_JSON_MAX_DEPTH. \u0000 is allowed: string lengths count such NUL bytes.
 * With end NULL nothing but whitespace may follow the value. With end non-NULL, parsing
 * stops after the value and the whitespace after it, and *end receives that offset, so
 * that a sequence of values (JSON lines, or values separated by whitespace) is read by
 * calling again at text + *end until *end == len.
 * Returns 0 and a new document in *out (release with kumo_json_doc_free()); text may be
 * freed at once. On failure *out is NULL and returns -EINVAL (not valid JSON; err, which
 * may be NULL, says where and why; an input of only whitespace is an error too) or
 * -ENOMEM. */
int kumo_json_parse(const char *text, size_t len, size_t *end, struct kumo_json_doc **out,
		    struct kumo_json_error *err);

/* Releases the document and everything it owns. NULL is a no-op. */
void kumo_json_doc_free(struct kumo_json_doc *doc);

/* The top-level value. Valid until kumo_json_doc_free(doc). */
const struct kumo_json_value *kumo_json_doc_root(const struct kumo_json_doc *doc);

/* The type of v, which must not be NULL. */
enum kumo_json_type kumo_json_type(const struct kumo_json_value *v);

/* A static name: "null", "boolean", "number", "string", "array", "object"; "?" otherwise. */
const char *kumo_json_type_name(enum kumo_json_type type);

/* Elements of an array or members of an object; 0 for other values and NULL. */
size_t kumo_json_count(const struct kumo_json_value *v);

/* The i-th element of an array, or the value of the i-th member of an object, in document
 * order. NULL when out of range or v is not an array or object (or NULL). */
const struct kumo_json_value *kumo_json_at(const struct kumo_json_value *v, size_t i);

/* The key of an object's i-th member, NUL-terminated (it may also contain NUL bytes from
 * \u0000: *len, which may be NULL, counts them). NULL when out of range or not an object. */
const char *kumo_json_key_at(const struct kumo_json_value *obj, size_t i, size_t *len);

/* The value of the member named key (compared byte for byte), or NULL when obj is NULL, not
 * an object, or has no such member. O(log n). getn takes a length. */
const struct kumo_json_value *kumo_json_get(const struct kumo_json_value *obj, const char *key);
const struct kumo_json_value *kumo_json_getn(const struct kumo_json_value *obj, const char *key,
					     size_t keylen);

/* The text of a string, escapes decoded, NUL-terminated; *len (may be NULL) receives its
 * length, which counts NUL bytes from \u0000. NULL for other types and NULL v. */
const char *kumo_json_string(const struct kumo_json_value *v, size_t *len);

/* Scalar readers: return 0 and store the value, -ENOENT when v is NULL (a missing member),
 * -EINVAL when v has another type. kumo_json_integer also returns -ERANGE for a number that
 * is not an integer or does not fit in int64_t (1.0 and 1e2 are integers); kumo_json_number
 * gives the nearest double (+-HUGE_VAL for a magnitude beyond the double range). */
int kumo_json_number(const struct kumo_json_value *v, double *out);
int kumo_json_integer(const struct kumo_json_value *v, int64_t *out);
int kumo_json_boolean(const struct kumo_json_value *v, bool *out);

/* Whether v is JSON null (false for NULL v, a missing member). */
bool kumo_json_is_null(const struct kumo_json_value *v);

#endif
