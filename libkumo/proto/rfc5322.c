/* RFC 5322 header field scanner; see rfc5322.h. A field is name ":" value with folded
 * continuation lines starting with a space or tab. */
#include "proto/rfc5322.h"

#include <string.h>
#include <strings.h>

/* ftext: printable ASCII except colon (RFC 5322 3.6.8). */
static int is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

/* End of the line starting at p: offset just past its LF, or len. */
static size_t line_end(const char *msg, size_t len, size_t p)
{
	const char *nl = memchr(msg + p, '\n', len - p);
	return nl ? (size_t)(nl - msg) + 1 : len;
}

int kumo_rfc5322_next_field(const char *msg, size_t len, size_t *pos,
			    struct kumo_hdr_field *f)
{
	size_t p = *pos, n = p;
	if (p >= len)
		return 0;
	while (n < len && is_ftext((unsigned char)msg[n]))
		n++;
	if (n == p || n >= len || msg[n] != ':')
		return 0; /* blank line, or not a field */
	f->start = p;
	f->name = msg + p;
	f->name_len = n - p;
	size_t v = n + 1;
	while (v < len && (msg[v] == ' ' || msg[v] == '\t'))
		v++;
	size_t e = line_end(msg, len, v);
	while (e < len && (msg[e] == ' ' || msg[e] == '\t'))
		e = line_end(msg, len, e);
	size_t vend = e;
	if (vend > v && msg[vend - 1] == '\n')
		vend--;
	if (vend > v && msg[vend - 1] == '\r')
		vend--;
	f->value = msg + v;
	f->value_len = vend >= v ? vend - v : 0;
	f->end = e;
	*pos = e;
	return 1;
}

size_t kumo_rfc5322_body_offset(const char *msg, size_t len)
{
	size_t pos = 0;
	struct kumo_hdr_field f;
	while (kumo_rfc5322_next_field(msg, len, &pos, &f))
		;
	if (pos + 2 <= len && msg[pos] == '\r' && msg[pos + 1] == '\n')
		return pos + 2;
	if (pos < len && msg[pos] == '\n')
		return pos + 1;
	return pos;
}

int kumo_rfc5322_name_is(const struct kumo_hdr_field *f, const char *name)
{
	return strlen(name) == f->name_len && strncasecmp(f->name, name, f->name_len) == 0;
}
