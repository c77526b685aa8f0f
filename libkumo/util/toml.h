/* A strict TOML 1.0 reader for kumod.toml and KumoMTA shaping files: parses a document
 * held in memory into a read-only tree whose nodes, keys and strings all belong to one
 * kumo_toml_doc, and reports the first error with its line, column and dotted key; writes
 * a value of such a tree back as TOML text. */
#ifndef KUMO_UTIL_TOML_H
#define KUMO_UTIL_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of tables and arrays below the root, whether made by [headers], dotted
 * keys, [[arrays of tables]], inline tables or arrays; deeper documents are rejected so
 * that parsing recursion stays bounded. A key has at most this many dotted parts. */
#define KUMO_TOML_MAX_DEPTH 64

enum kumo_toml_type {
	KUMO_TOML_STRING,
	KUMO_TOML_INTEGER,
	KUMO_TOML_FLOAT,
	KUMO_TOML_BOOL,
	KUMO_TOML_DATETIME, /* offset or local date-time, local date or local time: source text */
	KUMO_TOML_ARRAY,
	KUMO_TOML_TABLE,
};

/* A parsed document. It owns every node and string reachable from kumo_toml_root(); all of
 * them stay valid, unchanged, until kumo_toml_free(). It keeps no pointer into the input.
 * A document is never modified after parsing, so several threads may read it at once. */
struct kumo_toml_doc;

/* One node of the tree: a scalar, an array or a table. Opaque; read with the accessors. */
struct kumo_toml_value;

/* The first error of a failed parse. */
struct kumo_toml_error {
	int line;      /* 1-based line of the error; 0 when no position applies (I/O, memory) */
	int col;       /* 1-based column in characters (UTF-8 code points); 0 when line is 0 */
	char key[256]; /* dotted key being defined, e.g. provider.yahoo.automation.regex; parts
			* that are not bare keys are quoted: "gmail.com".automation; "" when no
			* key was being defined; cut short if longer */
	char msg[256]; /* what is wrong, without position or key: "duplicate key" */
};

/* Parses len bytes at text (need not be NUL-terminated; may contain NUL bytes, which
 * TOML rejects outside \u0000 escapes). A leading UTF-8 byte order mark is skipped.
 * On success returns 0 and stores a new document in *out, to be released with
 * kumo_toml_free(); text may be freed right away. On failure *out is NULL and returns
 * -EINVAL for a document that is not valid TOML (or deeper than KUMO_TOML_MAX_DEPTH),
 * -EFBIG for an input longer than INT_MAX bytes, -ENOMEM; err (may be NULL) then
 * describes the failure. */
int kumo_toml_parse(const char *text, size_t len, struct kumo_toml_doc **out,
		    struct kumo_toml_error *err);

/* Reads the whole file at path and parses it as kumo_toml_parse() does. Returns its codes,
 * or -errno when the file cannot be opened or read (err then has line 0 and the reason). */
int kumo_toml_parse_file(const char *path, struct kumo_toml_doc **out, struct kumo_toml_error *err);

/* Releases the document and every node and string it owns. NULL is a no-op. */
void kumo_toml_free(struct kumo_toml_doc *doc);

/* The top-level table. Valid until kumo_toml_free(doc). */
const struct kumo_toml_value *kumo_toml_root(const struct kumo_toml_doc *doc);

/* The type of v, which must not be NULL. */
enum kumo_toml_type kumo_toml_type(const struct kumo_toml_value *v);

/* A static name for a type: "string", "integer", "float", "boolean", "datetime", "array",
 * "table"; "?" for a value outside the enum. For messages like "expected integer, got string". */
const char *kumo_toml_type_name(enum kumo_toml_type type);

/* The 1-based line where v was defined: the line of its value for a key/value pair, of its
 * [header] for a table (for a table only implied by a longer header or a dotted key, where
 * it first appeared), of its first [[header]] for an array of tables. 0 for NULL. */
int kumo_toml_line(const struct kumo_toml_value *v);

/* The value stored under key in table; NULL when the key is absent or table is NULL or not
 * a table. Hashed for tables of more than a few keys. getn takes a length, so it also finds
 * keys that contain NUL bytes. */
const struct kumo_toml_value *kumo_toml_get(const struct kumo_toml_value *table, const char *key);
const struct kumo_toml_value *kumo_toml_getn(const struct kumo_toml_value *table, const char *key,
					     size_t keylen);

/* Number of keys of a table or elements of an array; 0 for scalars and NULL. */
size_t kumo_toml_count(const struct kumo_toml_value *table_or_array);

/* The i-th key of a table, in the order the keys were first defined in the document
 * (a table reached by a dotted key or a longer header takes its place at that point).
 * NUL-terminated; keyn also stores the length, which counts any NUL bytes inside.
 * NULL when table is not a table or i >= kumo_toml_count(table). */
const char *kumo_toml_key_at(const struct kumo_toml_value *table, size_t i);
const char *kumo_toml_keyn_at(const struct kumo_toml_value *table, size_t i, size_t *len);

/* The i-th element of an array, or the value of the i-th key of a table (same order as
 * kumo_toml_key_at). NULL when out of range or v is a scalar or NULL. */
const struct kumo_toml_value *kumo_toml_at(const struct kumo_toml_value *table_or_array, size_t i);

/* The text of a STRING (escapes decoded, CRLF in multi-line strings read as LF) or the
 * source text of a DATETIME such as "1979-05-27T07:32:00Z". NUL-terminated; it may
 * also contain NUL bytes from \u0000, so use *len (may be NULL) when that matters.
 * NULL for other types and NULL v. */
const char *kumo_toml_string(const struct kumo_toml_value *v, size_t *len);

/* Scalar readers: return 0 and store the value, -ENOENT when v is NULL (a missing key),
 * -EINVAL when v has another type. kumo_toml_float also accepts an INTEGER (converted,
 * possibly rounded). */
int kumo_toml_int(const struct kumo_toml_value *v, int64_t *out);
int kumo_toml_float(const struct kumo_toml_value *v, double *out);
int kumo_toml_bool(const struct kumo_toml_value *v, bool *out);

/* Formats err as "FILE:LINE: key 'a.b': message" (without the key part when err->key is
 * empty, without LINE when err->line is 0) into buf, always NUL-terminated when cap > 0.
 * filename NULL reads as "<input>". Returns the length the full text needs, like
 * snprintf, so a result >= cap means it was cut short. */
size_t kumo_toml_format_error(const struct kumo_toml_error *err, const char *filename, char *buf,
			      size_t cap);

/* ---- writing values back ----
 * Both writers append to a kumo_buf (util/json.h): out keeps ownership of its bytes, and a
 * failed allocation sets out->oom, as with every kumo_buf writer. Neither depends on the
 * process locale. */
struct kumo_buf;

/* Appends v in TOML inline syntax, text that kumo_toml_parse() reads back as a value of
 * the same type and the same value: a string as a basic string ("..." with \" \\ and
 * \u00XX for control characters, tab included; other bytes as they are), an integer in
 * decimal, a float always with a '.' or an exponent (2.0, 0.10000000000000001,
 * 1.0000000000000001e+300, inf, -inf, nan; every finite double exactly, the sign of a NaN
 * is not kept), true or false, a date-time as its source text, an array as [a, b] and a
 * table as an inline table {key = value, ...}, keys written as kumo_toml_render_key()
 * does. v belongs to a parsed document and is only read; NULL appends nothing. */
void kumo_toml_render_value(struct kumo_buf *out, const struct kumo_toml_value *v);

/* Appends one key (one part of a dotted key or [header]) such that it reads back as the
 * same len bytes: bare when it is only A-Z a-z 0-9 _ -, else quoted like a string. */
void kumo_toml_render_key(struct kumo_buf *out, const char *key, size_t len);

#endif
