/* HTTP/1.1 request parsing (RFC 9112) and response writing for servers; see http1.h.
 * The head parser is stateless and re-run when a new line arrives; the chunked decoder is a
 * byte-level state machine, so any split of the input gives the same result. */
#include "proto/http1.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

enum reader_state { R_HEAD, R_LENGTH, R_CHUNKED, R_DONE, R_ERROR };

enum chunk_state {
	C_SIZE,	       /* chunk-size hex digits */
	C_EXT,	       /* after the size: extensions up to the line end */
	C_SIZE_LF,     /* CR seen at the end of the size line */
	C_DATA,	       /* chunk data */
	C_DATA_END,    /* the CRLF after chunk data */
	C_DATA_LF,     /* CR seen after chunk data */
	C_TRAILER,     /* at the start of a trailer line (or the final empty line) */
	C_TRAILER_TXT, /* inside a trailer line */
	C_TRAILER_LF,  /* CR seen inside a trailer line */
	C_END_LF,      /* CR of the final empty line */
	C_DONE,
};

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";
	if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return true;
	return c && strchr(extra, c) != NULL;
}

/* field-vchar, SP and HTAB; obs-text (0x80-0xff) is allowed, DEL and controls are not. */
static bool is_field_char(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

static bool ieq(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++)
		if (lower(a[i]) != lower(b[i]))
			return false;
	return true;
}

static enum kumo_http1_result fail(struct kumo_http1_error *err, int status, const char *reason)
{
	if (err) {
		err->status = status;
		err->reason = reason;
	}
	return KUMO_HTTP1_ERROR;
}

static void resolve_limits(const struct kumo_http1_limits *in, struct kumo_http1_limits *out)
{
	*out = in ? *in : (struct kumo_http1_limits){0};
	if (!out->max_head)
		out->max_head = KUMO_HTTP1_DEFAULT_MAX_HEAD;
	if (!out->max_headers)
		out->max_headers = KUMO_HTTP1_DEFAULT_MAX_HEADERS;
	if (out->max_headers > KUMO_HTTP1_MAX_HEADERS)
		out->max_headers = KUMO_HTTP1_MAX_HEADERS;
	if (!out->max_body)
		out->max_body = KUMO_HTTP1_DEFAULT_MAX_BODY;
}

bool kumo_http1_list_has(const char *value, size_t len, const char *token)
{
	size_t i = 0;
	while (i < len) {
		while (i < len && (is_ows(value[i]) || value[i] == ','))
			i++;
		size_t start = i;
		while (i < len && value[i] != ',')
			i++;
		size_t end = i;
		while (end > start && is_ows(value[end - 1]))
			end--;
		if (end > start && ieq(value + start, end - start, token))
			return true;
	}
	return false;
}

const struct kumo_http1_header *kumo_http1_find_header(const struct kumo_http1_request *req,
						       const char *name)
{
	for (size_t i = 0; i < req->nheaders; i++)
		if (ieq(req->headers[i].name, req->headers[i].name_len, name))
			return &req->headers[i];
	return NULL;
}

/* "GET /x HTTP/1.1" (line without its end). */
static enum kumo_http1_result request_line(const char *p, size_t n, struct kumo_http1_request *req,
					   struct kumo_http1_error *err)
{
	size_t i = 0;
	while (i < n && is_tchar((unsigned char)p[i]))
		i++;
	if (i == 0 || i == n || p[i] != ' ')
		return fail(err, 400, "malformed request line: bad method");
	req->method = p;
	req->method_len = i;
	size_t t = ++i;
	while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
		i++;
	if (i == t || i == n || p[i] != ' ')
		return fail(err, 400, "malformed request line: bad request target");
	req->target = p + t;
	req->target_len = i - t;
	const char *v = p + i + 1;
	size_t vl = n - i - 1;
	if (vl != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
	    v[7] < '0' || v[7] > '9')
		return fail(err, 400, "malformed request line: bad HTTP version");
	if (v[5] != '1')
		return fail(err, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
	req->minor_version = v[7] == '0' ? 0 : 1;
	return KUMO_HTTP1_OK;
}

static enum kumo_http1_result header_line(const char *p, size_t n, struct kumo_http1_header *h,
					  struct kumo_http1_error *err)
{
	if (is_ows(p[0]))
		return fail(err, 400, "obsolete line folding in a header field");
	size_t i = 0;
	while (i < n && is_tchar((unsigned char)p[i]))
		i++;
	if (i == 0 || i == n || p[i] != ':')
		return fail(err, 400, "malformed header field name");
	h->name = p;
	h->name_len = i;
	i++;
	while (i < n && is_ows(p[i]))
		i++;
	size_t end = n;
	while (end > i && is_ows(p[end - 1]))
		end--;
	for (size_t k = i; k < end; k++)
		if (!is_field_char((unsigned char)p[k]))
			return fail(err, 400, "control character in a header field value");
	h->value = p + i;
	h->value_len = end - i;
	return KUMO_HTTP1_OK;
}

/* Content-Length: "5" or a list of equal values ("5, 5"). Stores UINT64_MAX for a value
 * too large to represent. */
static enum kumo_http1_result content_length(const struct kumo_http1_header *h, bool *seen,
					     uint64_t *out, struct kumo_http1_error *err)
{
	const char *p = h->value;
	size_t n = h->value_len, i = 0;
	do {
		while (i < n && (is_ows(p[i]) || p[i] == ','))
			i++;
		if (i == n)
			break;
		uint64_t v = 0;
		size_t digits = 0;
		while (i < n && p[i] >= '0' && p[i] <= '9') {
			unsigned d = (unsigned)(p[i++] - '0');
			v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
			digits++;
		}
		while (i < n && is_ows(p[i]))
			i++;
		if (!digits || (i < n && p[i] != ','))
			return fail(err, 400, "malformed Content-Length");
		if (*seen && v != *out)
			return fail(err, 400, "conflicting Content-Length values");
		*seen = true;
		*out = v;
	} while (i < n);
	if (!*seen)
		return fail(err, 400, "malformed Content-Length");
	return KUMO_HTTP1_OK;
}

/* Transfer-Encoding: only "chunked", once, last. */
static enum kumo_http1_result transfer_encoding(const struct kumo_http1_header *h, bool *chunked,
						bool *any, struct kumo_http1_error *err)
{
	const char *p = h->value;
	size_t n = h->value_len, i = 0;
	bool elements = false;
	while (i < n) {
		while (i < n && (is_ows(p[i]) || p[i] == ','))
			i++;
		size_t start = i;
		while (i < n && p[i] != ',')
			i++;
		size_t end = i;
		while (end > start && is_ows(p[end - 1]))
			end--;
		if (end == start)
			continue;
		elements = true;
		if (*chunked)
			return fail(err, 400, "a transfer coding follows chunked");
		if (!ieq(p + start, end - start, "chunked"))
			return fail(err, 501, "transfer coding not implemented");
		*chunked = true;
	}
	if (!elements)
		return fail(err, 400, "empty Transfer-Encoding");
	*any = true;
	return KUMO_HTTP1_OK;
}

/* Header fields that frame the message or set connection behaviour. */
static enum kumo_http1_result semantics(struct kumo_http1_request *req,
					const struct kumo_http1_limits *lim,
					struct kumo_http1_error *err)
{
	bool cl_seen = false, chunked = false, te = false, conn_close = false, conn_ka = false;
	uint64_t cl = 0;
	unsigned hosts = 0;
	enum kumo_http1_result rc;

	for (size_t i = 0; i < req->nheaders; i++) {
		const struct kumo_http1_header *h = &req->headers[i];
		if (ieq(h->name, h->name_len, "content-length")) {
			if ((rc = content_length(h, &cl_seen, &cl, err)) != KUMO_HTTP1_OK)
				return rc;
		} else if (ieq(h->name, h->name_len, "transfer-encoding")) {
			if ((rc = transfer_encoding(h, &chunked, &te, err)) != KUMO_HTTP1_OK)
				return rc;
		} else if (ieq(h->name, h->name_len, "host")) {
			hosts++;
		} else if (ieq(h->name, h->name_len, "connection")) {
			conn_close |= kumo_http1_list_has(h->value, h->value_len, "close");
			conn_ka |= kumo_http1_list_has(h->value, h->value_len, "keep-alive");
		} else if (ieq(h->name, h->name_len, "expect")) {
			if (!ieq(h->value, h->value_len, "100-continue"))
				return fail(err, 417, "unsupported expectation");
			req->expect_continue = true;
		}
	}
	if (req->minor_version >= 1 && hosts != 1)
		return fail(err, 400,
			    hosts ? "several Host header fields" : "no Host header field");
	if (te && req->minor_version == 0)
		return fail(err, 400, "Transfer-Encoding in an HTTP/1.0 request");
	if (te && cl_seen)
		return fail(err, 400, "both Transfer-Encoding and Content-Length");
	if (te && !chunked)
		return fail(err, 501, "transfer coding not implemented");
	if (chunked) {
		req->body_kind = KUMO_HTTP1_BODY_CHUNKED;
	} else if (cl_seen && cl > 0) {
		if (cl > lim->max_body)
			return fail(err, 413, "request body too large");
		req->body_kind = KUMO_HTTP1_BODY_LENGTH;
		req->content_length = cl;
	}
	req->keep_alive = req->minor_version >= 1 ? !conn_close : conn_ka && !conn_close;
	return KUMO_HTTP1_OK;
}

enum kumo_http1_result kumo_http1_parse_head(const char *buf, size_t len,
					     const struct kumo_http1_limits *limits,
					     struct kumo_http1_header *headers, size_t hcap,
					     struct kumo_http1_request *req,
					     struct kumo_http1_error *err)
{
	struct kumo_http1_limits lim;
	enum kumo_http1_result rc;
	size_t pos = 0;
	bool first = true;

	resolve_limits(limits, &lim);
	if (hcap < lim.max_headers)
		lim.max_headers = hcap;
	memset(req, 0, sizeof(*req));
	req->headers = headers;
	/* Empty lines before the request line are ignored (RFC 9112 2.2). They count towards
	 * max_head: nothing past it may change the outcome, whatever the split. */
	while (pos < len && pos < lim.max_head && (buf[pos] == '\r' || buf[pos] == '\n')) {
		if (buf[pos] == '\n') {
			pos++;
			continue;
		}
		if (pos + 1 >= len || pos + 1 >= lim.max_head)
			break; /* the next byte is not there yet, or the limit decides */
		if (buf[pos + 1] != '\n')
			return fail(err, 400, "bare CR");
		pos += 2;
	}
	for (;;) {
		const char *lf = pos < len ? memchr(buf + pos, '\n', len - pos) : NULL;
		size_t end = lf ? (size_t)(lf - buf) : len; /* the line, without LF */
		size_t stop = end < lim.max_head ? end : lim.max_head;
		/* A bare CR is refused as soon as it is seen. */
		const char *cr = pos < stop ? memchr(buf + pos, '\r', stop - pos) : NULL;
		if (cr && (size_t)(cr - buf) + 1 < end && (size_t)(cr - buf) + 1 < lim.max_head)
			return fail(err, 400, "bare CR");
		if (!lf || end + 1 > lim.max_head) {
			if (end >= lim.max_head)
				return first ? fail(err, 414, "request line too long")
					     : fail(err, 431, "request header section too large");
			return KUMO_HTTP1_INCOMPLETE;
		}
		size_t n = end - pos;
		if (n && buf[end - 1] == '\r')
			n--;
		if (first) {
			if ((rc = request_line(buf + pos, n, req, err)) != KUMO_HTTP1_OK)
				return rc;
			first = false;
		} else if (n == 0) {
			req->head_len = end + 1;
			return semantics(req, &lim, err);
		} else {
			if (req->nheaders == lim.max_headers)
				return fail(err, 431, "too many header fields");
			rc = header_line(buf + pos, n, &headers[req->nheaders], err);
			if (rc != KUMO_HTTP1_OK)
				return rc;
			req->nheaders++;
		}
		pos = end + 1;
	}
}

/* ---- chunked bodies ----------------------------------------------------------------- */

void kumo_http1_chunked_init(struct kumo_http1_chunked *d, uint64_t max_body, size_t max_trailer)
{
	memset(d, 0, sizeof(*d));
	d->state = C_SIZE;
	d->max_body = max_body ? max_body : KUMO_HTTP1_DEFAULT_MAX_BODY;
	d->max_trailer = max_trailer ? max_trailer : KUMO_HTTP1_DEFAULT_MAX_HEAD;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)lower((char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The end of the size line: the next state is data, or the trailer after the last chunk. */
static void size_line_done(struct kumo_http1_chunked *d)
{
	d->line = 0;
	d->state = d->left ? C_DATA : C_TRAILER;
}

enum kumo_http1_result kumo_http1_chunked_decode(struct kumo_http1_chunked *d, char *dst,
						 const char *src, size_t len, size_t *ndst,
						 size_t *nsrc, struct kumo_http1_error *err)
{
	size_t i = 0, out = 0;
	enum kumo_http1_result rc = KUMO_HTTP1_INCOMPLETE;

	while (i < len && d->state != C_DONE) {
		unsigned char c = (unsigned char)src[i];
		if (d->state == C_DATA) {
			size_t n = len - i;
			if (n > d->left)
				n = (size_t)d->left;
			memmove(dst + out, src + i, n);
			out += n;
			i += n;
			d->left -= n;
			if (!d->left)
				d->state = C_DATA_END;
			continue;
		}
		i++;
		if (d->state == C_SIZE || d->state == C_EXT || d->state == C_SIZE_LF) {
			if (++d->line > KUMO_HTTP1_MAX_CHUNK_LINE) {
				rc = fail(err, 400, "chunk size line too long");
				goto out;
			}
		} else if (d->state >= C_TRAILER && d->state <= C_END_LF) {
			if (++d->line > d->max_trailer) {
				rc = fail(err, 431, "trailer section too large");
				goto out;
			}
		}
		switch (d->state) {
		case C_SIZE: {
			int h = hexval(c);
			if (h >= 0) {
				if (d->hexdigits == 16 || (d->left >> 60) != 0) {
					rc = fail(err, 400, "chunk size too large");
					goto out;
				}
				d->left = d->left << 4 | (unsigned)h;
				d->hexdigits++;
				break;
			}
			if (!d->hexdigits ||
			    (c != ';' && c != ' ' && c != '\t' && c != '\r' && c != '\n')) {
				rc = fail(err, 400, "malformed chunk size");
				goto out;
			}
			if (d->left > d->max_body - d->total) {
				rc = fail(err, 413, "request body too large");
				goto out;
			}
			d->total += d->left;
			d->hexdigits = 0;
			if (c == '\n')
				size_line_done(d);
			else
				d->state = c == '\r' ? C_SIZE_LF : C_EXT;
			break;
		}
		case C_EXT:
			if (c == '\n')
				size_line_done(d);
			else if (c == '\r')
				d->state = C_SIZE_LF;
			else if (!is_field_char(c)) {
				rc = fail(err, 400, "control character in a chunk extension");
				goto out;
			}
			break;
		case C_SIZE_LF:
			if (c != '\n') {
				rc = fail(err, 400, "bare CR in a chunk size line");
				goto out;
			}
			size_line_done(d);
			break;
		case C_DATA_END:
			if (c == '\n')
				d->state = C_SIZE;
			else if (c == '\r')
				d->state = C_DATA_LF;
			else {
				rc = fail(err, 400, "chunk data longer than its size");
				goto out;
			}
			break;
		case C_DATA_LF:
			if (c != '\n') {
				rc = fail(err, 400, "bare CR after chunk data");
				goto out;
			}
			d->state = C_SIZE;
			break;
		case C_TRAILER:
			if (c == '\n')
				d->state = C_DONE;
			else if (c == '\r')
				d->state = C_END_LF;
			else if (!is_tchar(c)) {
				rc = fail(err, 400, "malformed trailer field");
				goto out;
			} else
				d->state = C_TRAILER_TXT;
			break;
		case C_TRAILER_TXT:
			if (c == '\n')
				d->state = C_TRAILER;
			else if (c == '\r')
				d->state = C_TRAILER_LF;
			else if (!is_field_char(c)) {
				rc = fail(err, 400, "control character in a trailer field");
				goto out;
			}
			break;
		case C_TRAILER_LF:
		case C_END_LF:
			if (c != '\n') {
				rc = fail(err, 400, "bare CR in the trailer section");
				goto out;
			}
			d->state = d->state == C_END_LF ? C_DONE : C_TRAILER;
			break;
		}
	}
	if (d->state == C_DONE)
		rc = KUMO_HTTP1_OK;
out:
	*ndst = out;
	*nsrc = i;
	return rc;
}

/* ---- the per-connection reader ----------------------------------------------------- */

void kumo_http1_reader_init(struct kumo_http1_reader *r, const struct kumo_http1_limits *lim)
{
	memset(r, 0, sizeof(*r));
	resolve_limits(lim, &r->lim);
	r->state = R_HEAD;
}

static enum kumo_http1_result reader_fail(struct kumo_http1_reader *r)
{
	r->state = R_ERROR;
	return KUMO_HTTP1_ERROR;
}

/* Sets up the body once the head is parsed. */
static enum kumo_http1_result start_body(struct kumo_http1_reader *r)
{
	switch (r->req.body_kind) {
	case KUMO_HTTP1_BODY_NONE:
		r->state = R_DONE;
		break;
	case KUMO_HTTP1_BODY_LENGTH:
		r->state = R_LENGTH;
		break;
	case KUMO_HTTP1_BODY_CHUNKED:
		kumo_http1_chunked_init(&r->chunked, r->lim.max_body, r->lim.max_head);
		r->state = R_CHUNKED;
		break;
	}
	return KUMO_HTTP1_OK;
}

/* Points the views at buf: the head is parsed again when the buffer moved since. */
static void finish(struct kumo_http1_reader *r, char *buf)
{
	if (buf != r->base) {
		size_t body_len = r->body_len;
		kumo_http1_parse_head(buf, r->req.head_len, &r->lim, r->headers,
				      KUMO_HTTP1_MAX_HEADERS, &r->req, &r->error);
		r->body_len = body_len;
		r->base = buf;
	}
	r->req.body = r->body_len ? buf + r->req.head_len : NULL;
	r->req.body_len = r->body_len;
	r->state = R_DONE;
}

enum kumo_http1_result kumo_http1_reader_feed(struct kumo_http1_reader *r, char *buf, size_t *len)
{
	enum kumo_http1_result rc;

	switch (r->state) {
	case R_ERROR:
		return KUMO_HTTP1_ERROR;
	case R_DONE:
		finish(r, buf);
		return KUMO_HTTP1_OK;
	case R_HEAD: {
		/* Parse again only when a line was completed, a CR was seen (the byte after it,
		 * perhaps new, decides whether it is a bare CR), or the size limit is passed. */
		size_t from = r->scanned ? r->scanned - 1 : 0;
		r->scanned = *len;
		if (from >= *len ||
		    (!memchr(buf + from, '\n', *len - from) && *len < r->lim.max_head &&
		     !memchr(buf + from, '\r', *len - from)))
			return KUMO_HTTP1_INCOMPLETE;
		rc = kumo_http1_parse_head(buf, *len, &r->lim, r->headers, KUMO_HTTP1_MAX_HEADERS,
					   &r->req, &r->error);
		if (rc == KUMO_HTTP1_ERROR)
			return reader_fail(r);
		if (rc == KUMO_HTTP1_INCOMPLETE)
			return rc;
		r->base = buf;
		r->body_len = 0;
		start_body(r);
		break;
	}
	default:
		break;
	}
	size_t head = r->req.head_len;
	if (r->state == R_LENGTH) {
		if (*len - head < r->req.content_length)
			return KUMO_HTTP1_INCOMPLETE;
		r->body_len = (size_t)r->req.content_length;
	} else if (r->state == R_CHUNKED) {
		char *dst = buf + head + r->body_len;
		size_t avail = *len - head - r->body_len, nd, ns;
		rc = kumo_http1_chunked_decode(&r->chunked, dst, dst, avail, &nd, &ns, &r->error);
		if (rc == KUMO_HTTP1_ERROR)
			return reader_fail(r);
		/* Squeeze the framing out: what follows moves down to the end of the body. */
		memmove(dst + nd, dst + ns, avail - ns);
		*len -= ns - nd;
		r->body_len += nd;
		if (rc == KUMO_HTTP1_INCOMPLETE)
			return rc;
	}
	finish(r, buf);
	return KUMO_HTTP1_OK;
}

const struct kumo_http1_request *kumo_http1_reader_request(const struct kumo_http1_reader *r)
{
	return r->state == R_HEAD || r->state == R_ERROR ? NULL : &r->req;
}

size_t kumo_http1_reader_request_len(const struct kumo_http1_reader *r)
{
	return r->state == R_DONE ? r->req.head_len + r->body_len : 0;
}

void kumo_http1_reader_next(struct kumo_http1_reader *r)
{
	struct kumo_http1_limits lim = r->lim;
	r->state = R_HEAD;
	r->scanned = 0;
	r->body_len = 0;
	r->base = NULL;
	memset(&r->req, 0, sizeof(r->req));
	r->lim = lim;
}

const struct kumo_http1_error *kumo_http1_reader_error(const struct kumo_http1_reader *r)
{
	return &r->error;
}

/* ---- responses ----------------------------------------------------------------------- */

const char *kumo_http1_reason(int status)
{
	static const struct {
		int code;
		const char *text;
	} reasons[] = {
	    {100, "Continue"},
	    {200, "OK"},
	    {201, "Created"},
	    {202, "Accepted"},
	    {204, "No Content"},
	    {304, "Not Modified"},
	    {400, "Bad Request"},
	    {401, "Unauthorized"},
	    {403, "Forbidden"},
	    {404, "Not Found"},
	    {405, "Method Not Allowed"},
	    {408, "Request Timeout"},
	    {411, "Length Required"},
	    {413, "Content Too Large"},
	    {414, "URI Too Long"},
	    {415, "Unsupported Media Type"},
	    {417, "Expectation Failed"},
	    {422, "Unprocessable Content"},
	    {429, "Too Many Requests"},
	    {431, "Request Header Fields Too Large"},
	    {500, "Internal Server Error"},
	    {501, "Not Implemented"},
	    {503, "Service Unavailable"},
	    {505, "HTTP Version Not Supported"},
	};
	for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
		if (reasons[i].code == status)
			return reasons[i].text;
	return "Unknown";
}

void kumo_http1_write_status(struct kumo_buf *out, int status)
{
	kumo_buf_printf(out, "HTTP/1.1 %03d %s\r\n", status, kumo_http1_reason(status));
}

void kumo_http1_write_header(struct kumo_buf *out, const char *name, const char *value)
{
	kumo_buf_puts(out, name);
	kumo_buf_append(out, ": ", 2);
	size_t n = strlen(value);
	if (kumo_buf_reserve(out, n + 2) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)value[i];
		out->data[out->len++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
	}
	kumo_buf_append(out, "\r\n", 2);
}

void kumo_http1_write_body(struct kumo_buf *out, const char *content_type, const void *body,
			   size_t len, bool omit_body)
{
	if (content_type)
		kumo_http1_write_header(out, "Content-Type", content_type);
	kumo_buf_printf(out, "Content-Length: %zu\r\n\r\n", len);
	if (!omit_body)
		kumo_buf_append(out, body, len);
}

size_t kumo_http1_format_date(int64_t unix_s, char *out, size_t cap)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)unix_s;
	struct tm tm;
	if (!gmtime_r(&t, &tm))
		memset(&tm, 0, sizeof(tm));
	int n = snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
			 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
			 tm.tm_min, tm.tm_sec);
	return n < 0 ? 0 : (size_t)n;
}
