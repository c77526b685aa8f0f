/* JSON writer and growable buffer; see json.h. Output is compact (no spaces) and always
 * valid UTF-8. */
#include "util/json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kumo_buf_free(struct kumo_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->oom = false;
}

int kumo_buf_reserve(struct kumo_buf *b, size_t extra)
{
	if (b->oom)
		return -ENOMEM;
	if (b->len + extra <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p) {
		b->oom = true;
		return -ENOMEM;
	}
	b->data = p;
	b->cap = cap;
	return 0;
}

void kumo_buf_append(struct kumo_buf *b, const void *p, size_t n)
{
	if (n == 0 || kumo_buf_reserve(b, n) < 0)
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void kumo_buf_puts(struct kumo_buf *b, const char *s)
{
	kumo_buf_append(b, s, strlen(s));
}

void kumo_buf_putc(struct kumo_buf *b, char c)
{
	if (kumo_buf_reserve(b, 1) < 0)
		return;
	b->data[b->len++] = c;
}

void kumo_buf_printf(struct kumo_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || kumo_buf_reserve(b, (size_t)n + 1) < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void kumo_buf_consume(struct kumo_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
}

void kumo_json_init(struct kumo_json *j, struct kumo_buf *out)
{
	j->out = out;
	j->depth = 0;
	j->need_comma = 0;
}

/* Before a value or key: a comma if this level already has an element. */
static void separate(struct kumo_json *j)
{
	uint64_t bit = 1ULL << (j->depth & 63);
	if (j->need_comma & bit)
		kumo_buf_putc(j->out, ',');
	j->need_comma |= bit;
}

static void open_level(struct kumo_json *j, char c)
{
	separate(j);
	kumo_buf_putc(j->out, c);
	j->depth++;
	j->need_comma &= ~(1ULL << (j->depth & 63));
}

static void close_level(struct kumo_json *j, char c)
{
	j->depth--;
	kumo_buf_putc(j->out, c);
}

void kumo_json_obj_open(struct kumo_json *j)
{
	open_level(j, '{');
}

void kumo_json_obj_close(struct kumo_json *j)
{
	close_level(j, '}');
}

void kumo_json_arr_open(struct kumo_json *j)
{
	open_level(j, '[');
}

void kumo_json_arr_close(struct kumo_json *j)
{
	close_level(j, ']');
}

void kumo_json_key(struct kumo_json *j, const char *key)
{
	separate(j);
	kumo_buf_putc(j->out, '"');
	kumo_json_escape(j->out, key, strlen(key));
	kumo_buf_append(j->out, "\":", 2);
	/* the value that follows adds no comma; writing it marks the level non-empty again */
	j->need_comma &= ~(1ULL << (j->depth & 63));
}

void kumo_json_strn(struct kumo_json *j, const char *s, size_t n)
{
	separate(j);
	kumo_buf_putc(j->out, '"');
	kumo_json_escape(j->out, s, n);
	kumo_buf_putc(j->out, '"');
}

void kumo_json_str(struct kumo_json *j, const char *s)
{
	kumo_json_strn(j, s, strlen(s));
}

void kumo_json_str_or_null(struct kumo_json *j, const char *s)
{
	if (s)
		kumo_json_str(j, s);
	else
		kumo_json_null(j);
}

void kumo_json_int(struct kumo_json *j, int64_t v)
{
	separate(j);
	kumo_buf_printf(j->out, "%lld", (long long)v);
}

void kumo_json_uint(struct kumo_json *j, uint64_t v)
{
	separate(j);
	kumo_buf_printf(j->out, "%llu", (unsigned long long)v);
}

void kumo_json_double(struct kumo_json *j, double v)
{
	separate(j);
	if (v != v || v > 1e308 || v < -1e308)
		kumo_buf_puts(j->out, "null");
	else
		kumo_buf_printf(j->out, "%.17g", v);
}

void kumo_json_bool(struct kumo_json *j, bool v)
{
	separate(j);
	kumo_buf_puts(j->out, v ? "true" : "false");
}

void kumo_json_null(struct kumo_json *j)
{
	separate(j);
	kumo_buf_puts(j->out, "null");
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len;
	unsigned min;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, min = 0x10000;
	else
		return 0;
	if (len > n)
		return 0;
	unsigned cp = c & (0xff >> (len + 1));
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

void kumo_json_escape(struct kumo_buf *b, const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < n) {
		size_t run = i;
		while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' &&
		       s[run] != '\\')
			run++;
		kumo_buf_append(b, s + i, run - i);
		i = run;
		if (i >= n)
			break;
		unsigned c = s[i];
		if (c >= 0x80) {
			size_t l = utf8_len(s + i, n - i);
			if (l)
				kumo_buf_append(b, s + i, l);
			else
				kumo_buf_puts(b, "\\ufffd");
			i += l ? l : 1;
			continue;
		}
		switch (c) {
		case '"': kumo_buf_puts(b, "\\\""); break;
		case '\\': kumo_buf_puts(b, "\\\\"); break;
		case '\n': kumo_buf_puts(b, "\\n"); break;
		case '\r': kumo_buf_puts(b, "\\r"); break;
		case '\t': kumo_buf_puts(b, "\\t"); break;
		default: kumo_buf_printf(b, "\\u%04x", c); break;
		}
		i++;
	}
}
