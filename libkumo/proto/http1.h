/* HTTP/1.1 server side, free of I/O: a request head parser returning views into the caller's
 * buffer (no allocation), Content-Length and chunked body decoding, a per-connection reader
 * for keep-alive and pipelining, and a response writer. Protocol errors are a status. */
#ifndef KUMO_PROTO_HTTP1_H
#define KUMO_PROTO_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/json.h" /* struct kumo_buf */

/* Most header fields a reader keeps (the cap on kumo_http1_limits.max_headers). */
#define KUMO_HTTP1_MAX_HEADERS 64
#define KUMO_HTTP1_DEFAULT_MAX_HEAD 16384
#define KUMO_HTTP1_DEFAULT_MAX_HEADERS 64
#define KUMO_HTTP1_DEFAULT_MAX_BODY ((uint64_t)1024 * 1024)
/* Longest chunk-size line (size, extensions, line end) of a chunked body. */
#define KUMO_HTTP1_MAX_CHUNK_LINE 4096

/* Limits; zero in a field means the default named after it. */
struct kumo_http1_limits {
	size_t max_head;    /* request line, header fields and the blank line; also the bound on
			     * a chunked body's trailer section: 16 KiB. Beyond: 431, or 414
			     * when the request line alone is longer */
	size_t max_headers; /* header fields: 64, at most KUMO_HTTP1_MAX_HEADERS; more: 431 */
	uint64_t max_body;  /* decoded body bytes: 1 MiB; more: 413 */
};

/* A header field as received: views into the caller's buffer, not NUL-terminated. The
 * value has no leading or trailing spaces or tabs. */
struct kumo_http1_header {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

enum kumo_http1_body_kind {
	KUMO_HTTP1_BODY_NONE = 0, /* no body (or Content-Length: 0) */
	KUMO_HTTP1_BODY_LENGTH,	  /* Content-Length bytes */
	KUMO_HTTP1_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
};

/* A parsed request. Every pointer is a view into the caller's buffer. */
struct kumo_http1_request {
	const char *method; /* a token, case-sensitive: "GET" */
	size_t method_len;
	const char *target; /* the request-target as sent: "/path?query" */
	size_t target_len;
	int minor_version; /* 0 for HTTP/1.0, 1 for HTTP/1.1 (and later 1.x) */
	struct kumo_http1_header *headers;
	size_t nheaders;
	size_t head_len; /* bytes from the first byte to the end of the blank line */
	enum kumo_http1_body_kind body_kind;
	uint64_t content_length; /* for KUMO_HTTP1_BODY_LENGTH */
	bool keep_alive;	 /* the connection may carry another request after this one:
				  * HTTP/1.1 without "Connection: close", or HTTP/1.0 with
				  * "Connection: keep-alive" */
	bool expect_continue;	 /* "Expect: 100-continue" */
	const char *body;	 /* set by the reader once the request is complete: the decoded */
	size_t body_len;	 /* body (NULL and 0 when there is none) */
};

enum kumo_http1_result {
	KUMO_HTTP1_OK = 0,     /* complete */
	KUMO_HTTP1_INCOMPLETE, /* more input is needed */
	KUMO_HTTP1_ERROR,      /* malformed or over a limit: answer error.status and close */
};

/* What to answer to a refused request. */
struct kumo_http1_error {
	int status;	    /* 400, 413, 414, 417, 431, 501 or 505 */
	const char *reason; /* static text saying what is wrong, for a log or an error body */
};

/* Parses the request head at buf[0..len). Empty lines before the request line are skipped
 * (RFC 9112 2.2); lines end with CRLF or a bare LF, and a bare CR anywhere is refused.
 * headers[0..hcap) receives the header fields. Returns OK with *req filled (views into
 * buf; body and body_len are left NULL and 0), INCOMPLETE when buf ends before the blank
 * line, or ERROR with *err. An error is reported as soon as the lines received show it, so
 * a prefix of a request gives INCOMPLETE or the same ERROR as the whole request. Checks:
 * the request line's shape and version (505 for other than HTTP/1.x), header syntax
 * (no obs-fold, no space before ':'), exactly one Host in HTTP/1.1, Content-Length (equal
 * values only; above max_body: 413), Transfer-Encoding (chunked only, last: 501 for other
 * codings; 400 with a Content-Length or in HTTP/1.0), Expect (100-continue only: 417). */
enum kumo_http1_result kumo_http1_parse_head(const char *buf, size_t len,
					     const struct kumo_http1_limits *lim,
					     struct kumo_http1_header *headers, size_t hcap,
					     struct kumo_http1_request *req,
					     struct kumo_http1_error *err);

/* A chunked body decoder (RFC 9112 7.1). Chunk extensions and trailer fields are checked
 * for stray control characters and then dropped. */
struct kumo_http1_chunked {
	int state;	    /* where in the chunk grammar the next byte falls */
	uint64_t left;	    /* bytes of the current chunk's data still to come */
	uint64_t total;	    /* decoded bytes so far */
	uint64_t max_body;  /* limit on total: 413 beyond */
	size_t line;	    /* bytes of the current size line, or of the trailer section */
	size_t max_trailer; /* limit on the trailer section: 431 beyond */
	unsigned hexdigits; /* digits of the chunk size read so far */
};

/* Prepares d for a new body. Zero limits take the defaults of kumo_http1_limits. */
void kumo_http1_chunked_init(struct kumo_http1_chunked *d, uint64_t max_body, size_t max_trailer);

/* Decodes src[0..len): the chunk data is written to dst, which may be src itself or point
 * before it in the same buffer (the bytes are moved with memmove), and must have room for
 * len bytes. Stores the bytes written in *ndst and the bytes consumed in *nsrc. Returns OK
 * once the last chunk and the trailer section are consumed (the bytes after *nsrc belong to
 * the next request), INCOMPLETE when all of src was consumed and more is needed, ERROR with
 * *err (400, 413 or 431; nothing more should be fed). Split the input anywhere: the
 * concatenated output is the same. */
enum kumo_http1_result kumo_http1_chunked_decode(struct kumo_http1_chunked *d, char *dst,
						 const char *src, size_t len, size_t *ndst,
						 size_t *nsrc, struct kumo_http1_error *err);

/* A connection's request reader: feed it the connection's unconsumed input, get whole
 * requests (head and decoded body) one after the other. Fixed size, no allocation. */
struct kumo_http1_reader {
	struct kumo_http1_limits lim; /* with defaults filled in */
	int state;		      /* head, body by length, chunked body, done, error */
	size_t scanned;		      /* head bytes already searched for a line end */
	size_t body_len;	      /* decoded body bytes, at buf + req.head_len */
	const char *base;	      /* the buffer the views in req point into */
	struct kumo_http1_request req;
	struct kumo_http1_chunked chunked;
	struct kumo_http1_error error;
	struct kumo_http1_header headers[KUMO_HTTP1_MAX_HEADERS];
};

/* Resets r for a new connection; lim may be NULL for the defaults. */
void kumo_http1_reader_init(struct kumo_http1_reader *r, const struct kumo_http1_limits *lim);

/* buf[0..*len) holds the connection's input from the first byte of the current request.
 * Between calls the caller appends bytes (the buffer may move, e.g. by realloc) and changes
 * nothing else. A chunked body is decoded in place: its framing is squeezed out of buf,
 * which shrinks *len, so the buffer never needs room for more than the head, the decoded
 * body and the bytes not yet decoded. Returns OK when a whole request is there: it is
 * kumo_http1_reader_request(r), and the next request's bytes (pipelining) follow it at
 * buf + kumo_http1_reader_request_len(r). INCOMPLETE: feed more. ERROR: answer
 * kumo_http1_reader_error(r)->status and close the connection; later calls give ERROR. */
enum kumo_http1_result kumo_http1_reader_feed(struct kumo_http1_reader *r, char *buf, size_t *len);

/* The request: complete after OK (views into the buf of that call, valid until the caller
 * changes or moves it); while the body is being read, its head (body NULL), so that
 * "Expect: 100-continue" can be answered; NULL before the head is complete. */
const struct kumo_http1_request *kumo_http1_reader_request(const struct kumo_http1_reader *r);

/* After OK: the bytes the request occupies at the front of buf. */
size_t kumo_http1_reader_request_len(const struct kumo_http1_reader *r);

/* After OK, once the request has been handled: drops nothing itself (the caller removes
 * kumo_http1_reader_request_len() bytes from the front of its buffer) and makes r ready
 * for the next request on the same connection. */
void kumo_http1_reader_next(struct kumo_http1_reader *r);

/* After ERROR: the status to answer and why. */
const struct kumo_http1_error *kumo_http1_reader_error(const struct kumo_http1_reader *r);

/* The first header field named name (ASCII case-insensitive), or NULL. */
const struct kumo_http1_header *kumo_http1_find_header(const struct kumo_http1_request *req,
						       const char *name);

/* Whether the comma-separated list in a header value holds token (ASCII case-insensitive),
 * as in "Connection: keep-alive, Upgrade". */
bool kumo_http1_list_has(const char *value, size_t len, const char *token);

/* Responses. A response is a status line, header lines, then the body:
 *   kumo_http1_write_status(out, 404);
 *   kumo_http1_write_header(out, "Connection", "close");
 *   kumo_http1_write_body(out, "application/json", "{...}", n, false);
 * Allocation failures set out->oom (see struct kumo_buf). */

/* The reason phrase for status ("Not Found"); "Unknown" for a code it does not know. */
const char *kumo_http1_reason(int status);

/* Appends "HTTP/1.1 <status> <reason>\r\n". */
void kumo_http1_write_status(struct kumo_buf *out, int status);

/* Appends "<name>: <value>\r\n"; control characters in value are written as spaces. */
void kumo_http1_write_header(struct kumo_buf *out, const char *name, const char *value);

/* Appends Content-Type (unless NULL), Content-Length: len, the blank line and, unless
 * omit_body (a response to HEAD), the body. */
void kumo_http1_write_body(struct kumo_buf *out, const char *content_type, const void *body,
			   size_t len, bool omit_body);

/* Formats unix_s as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") for a Date header.
 * cap should be at least 30; returns the length, like snprintf. */
size_t kumo_http1_format_date(int64_t unix_s, char *out, size_t cap);

#endif
