/* libFuzzer target for the HTTP/1.1 reader: the input is fed as a connection's byte stream,
 * whole and then in pieces whose sizes come from the input itself, and both runs must give
 * the same requests and the same final error; every view must lie inside the buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http1.h"

/* A digest of everything a request exposes, to compare runs. */
static uint64_t mix(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static void check_view(const char *buf, size_t len, const char *p, size_t n)
{
	if (n && (p < buf || p + n > buf + len))
		abort();
}

static uint64_t digest(const struct kumo_http1_request *r, const char *buf, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	check_view(buf, len, r->method, r->method_len);
	check_view(buf, len, r->target, r->target_len);
	check_view(buf, len, r->body, r->body_len);
	if (!r->method_len || !r->target_len || r->head_len > len || r->nheaders > 64)
		abort();
	h = mix(h, r->method, r->method_len);
	h = mix(h, r->target, r->target_len);
	for (size_t i = 0; i < r->nheaders; i++) {
		check_view(buf, len, r->headers[i].name, r->headers[i].name_len);
		check_view(buf, len, r->headers[i].value, r->headers[i].value_len);
		h = mix(h, r->headers[i].name, r->headers[i].name_len);
		h = mix(h, r->headers[i].value, r->headers[i].value_len);
	}
	h = mix(h, r->body ? r->body : "", r->body_len);
	unsigned char flags[3] = {(unsigned char)r->minor_version, r->keep_alive,
				  r->expect_continue};
	return mix(h, flags, sizeof(flags));
}

struct run {
	uint64_t h;	/* digest of all requests, in order */
	unsigned count; /* requests */
	int status;	/* final error status, 0 when none */
};

/* Feeds data in pieces of step(i) bytes. */
static void run(const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps,
		struct run *out)
{
	struct kumo_http1_limits lim = {.max_head = 512, .max_headers = 8, .max_body = 1024};
	struct kumo_http1_reader r;
	char *buf = malloc(size + 1);
	size_t have = 0, fed = 0, k = 0;
	memset(out, 0, sizeof(*out));
	out->h = 1;
	kumo_http1_reader_init(&r, &lim);
	while (fed < size) {
		size_t piece = nsteps ? (size_t)steps[k++ % nsteps] % 17 + 1 : size;
		if (piece > size - fed)
			piece = size - fed;
		memcpy(buf + have, data + fed, piece);
		have += piece;
		fed += piece;
		for (;;) {
			enum kumo_http1_result rc = kumo_http1_reader_feed(&r, buf, &have);
			if (rc == KUMO_HTTP1_ERROR) {
				out->status = kumo_http1_reader_error(&r)->status;
				if (out->status < 400 || out->status > 505)
					abort();
				free(buf);
				return;
			}
			if (rc == KUMO_HTTP1_INCOMPLETE)
				break;
			const struct kumo_http1_request *req = kumo_http1_reader_request(&r);
			size_t used = kumo_http1_reader_request_len(&r);
			if (used > have || used != req->head_len + req->body_len)
				abort();
			out->h = out->h * 31 + digest(req, buf, have);
			out->count++;
			memmove(buf, buf + used, have - used);
			have -= used;
			kumo_http1_reader_next(&r);
		}
	}
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct run whole, pieces;
	run(data, size, NULL, 0, &whole);
	run(data, size, data, size < 64 ? size : 64, &pieces);
	if (whole.status != pieces.status || whole.count != pieces.count || whole.h != pieces.h)
		abort();

	/* The head parser alone, on an exact-size copy. */
	struct kumo_http1_header h[KUMO_HTTP1_MAX_HEADERS];
	struct kumo_http1_request req;
	struct kumo_http1_error err;
	char *copy = malloc(size ? size : 1);
	if (size)
		memcpy(copy, data, size);
	if (kumo_http1_parse_head(copy, size, NULL, h, KUMO_HTTP1_MAX_HEADERS, &req, &err) ==
	    KUMO_HTTP1_OK) {
		if (req.head_len > size)
			abort();
		digest(&req, copy, size);
	}
	/* The chunked decoder alone. */
	struct kumo_http1_chunked d;
	size_t nd, ns;
	kumo_http1_chunked_init(&d, 0, 0);
	enum kumo_http1_result rc = kumo_http1_chunked_decode(&d, copy, copy, size, &nd, &ns, &err);
	if (nd > ns || ns > size || (rc == KUMO_HTTP1_INCOMPLETE && ns != size))
		abort();
	free(copy);
	return 0;
}
