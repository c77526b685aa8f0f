/* A small JSON writer over a growable byte buffer: objects, arrays, escaped strings,
 * numbers. Used for log records and HTTP bodies; one buffer per loop, reused. */
#ifndef KUMO_UTIL_JSON_H
#define KUMO_UTIL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable buffer. data is owned by the buffer; views into it last until the next
 * append (which may move it) or kumo_buf_free. A failed allocation sets oom and makes
 * later appends no-ops, so writers check once at the end. */
struct kumo_buf {
	char *data;
	size_t len;
	size_t cap;
	bool oom;
};

void kumo_buf_free(struct kumo_buf *b);
int kumo_buf_reserve(struct kumo_buf *b, size_t extra);
void kumo_buf_append(struct kumo_buf *b, const void *p, size_t n);
void kumo_buf_puts(struct kumo_buf *b, const char *s);
void kumo_buf_putc(struct kumo_buf *b, char c);
void kumo_buf_printf(struct kumo_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void kumo_buf_consume(struct kumo_buf *b, size_t n);

/* A JSON writer: tracks whether a comma is needed at each nesting level. */
struct kumo_json {
	struct kumo_buf *out;
	int depth;
	uint64_t need_comma; /* bit per depth, 64 levels */
};

void kumo_json_init(struct kumo_json *j, struct kumo_buf *out);
void kumo_json_obj_open(struct kumo_json *j);
void kumo_json_obj_close(struct kumo_json *j);
void kumo_json_arr_open(struct kumo_json *j);
void kumo_json_arr_close(struct kumo_json *j);
/* A key inside an object; the next value call writes its value. */
void kumo_json_key(struct kumo_json *j, const char *key);
void kumo_json_str(struct kumo_json *j, const char *s);
void kumo_json_strn(struct kumo_json *j, const char *s, size_t n);
void kumo_json_int(struct kumo_json *j, int64_t v);
void kumo_json_uint(struct kumo_json *j, uint64_t v);
void kumo_json_double(struct kumo_json *j, double v);
void kumo_json_bool(struct kumo_json *j, bool v);
void kumo_json_null(struct kumo_json *j);
/* Writes s (or NULL as null). */
void kumo_json_str_or_null(struct kumo_json *j, const char *s);

/* Appends s escaped for a JSON string body (no quotes). Invalid UTF-8 bytes become
 * U+FFFD so the output is always valid JSON. */
void kumo_json_escape(struct kumo_buf *b, const char *s, size_t n);

#endif
