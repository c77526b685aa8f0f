/* RFC 5322 header section scanning, in place and without allocation: walks the header
 * fields of a message (folded lines joined logically) and finds fields by name. */
#ifndef KUMO_PROTO_RFC5322_H
#define KUMO_PROTO_RFC5322_H

#include <stddef.h>

/* One header field: views into the caller's message buffer. */
struct kumo_hdr_field {
	size_t start;        /* offset of the field's first byte */
	size_t end;          /* offset just past its final CRLF (or LF) */
	const char *name;
	size_t name_len;
	const char *value;   /* after the colon and leading blanks, before the final line end */
	size_t value_len;    /* folded lines included as they are */
};

/* Reads the field at *pos. Returns 1 and advances *pos, 0 at the end of the header section
 * (an empty line, the end of data, or a line that is not a field: a body without a
 * separating blank line), never reading past len. */
int kumo_rfc5322_next_field(const char *msg, size_t len, size_t *pos,
			    struct kumo_hdr_field *f);

/* Offset of the body (after the blank line), or len when there is none. */
size_t kumo_rfc5322_body_offset(const char *msg, size_t len);

/* Case-insensitive field name comparison. */
int kumo_rfc5322_name_is(const struct kumo_hdr_field *f, const char *name);

#endif
