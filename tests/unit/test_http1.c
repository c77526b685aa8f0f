/* Unit tests for proto/http1: inputs end against a guard page, every truncation of a valid
 * request is incomplete, pipelined streams split anywhere give the same requests, and
 * malformed requests get 400, 413, 414, 417, 431, 501 or 505. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "proto/http1.h"

/* A copy of s whose last byte sits just before an inaccessible page, so that reading past
 * the input faults. Released with unguard(). */
struct guarded {
	char *map;
	size_t maplen;
	char *p;
};

static struct guarded guard(const char *s, size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t pages = (n + page - 1) / page + 1;
	struct guarded g;
	g.maplen = pages * page;
	g.map = mmap(NULL, g.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(g.map != MAP_FAILED);
	assert_int_equal(mprotect(g.map + (pages - 1) * page, page, PROT_NONE), 0);
	g.p = g.map + (pages - 1) * page - n;
	memcpy(g.p, s, n);
	return g;
}

static void unguard(struct guarded *g)
{
	munmap(g->map, g->maplen);
}

static enum kumo_http1_result parse(const char *s, size_t n, struct kumo_http1_request *req,
				    struct kumo_http1_header *h, struct kumo_http1_error *err)
{
	struct guarded g = guard(s, n);
	enum kumo_http1_result rc =
	    kumo_http1_parse_head(g.p, n, NULL, h, KUMO_HTTP1_MAX_HEADERS, req, err);
	/* The views point into the guarded copy: translate them back to s. */
	if (rc == KUMO_HTTP1_OK) {
		ptrdiff_t d = s - g.p;
		req->method += d;
		req->target += d;
		for (size_t i = 0; i < req->nheaders; i++) {
			h[i].name += d;
			h[i].value += d;
		}
	}
	unguard(&g);
	return rc;
}

static bool view_eq(const char *p, size_t n, const char *want)
{
	return n == strlen(want) && memcmp(p, want, n) == 0;
}

static void test_simple_get(void **state)
{
	const char *s = "GET /get_config_v1/shaping.toml?x=1 HTTP/1.1\r\nHost: tsa\r\n"
			"User-Agent:  curl/8  \r\nAccept: */*\r\n\r\n";
	struct kumo_http1_request req;
	struct kumo_http1_header h[KUMO_HTTP1_MAX_HEADERS];
	struct kumo_http1_error err;
	assert_int_equal(parse(s, strlen(s), &req, h, &err), KUMO_HTTP1_OK);
	assert_true(view_eq(req.method, req.method_len, "GET"));
	assert_true(view_eq(req.target, req.target_len, "/get_config_v1/shaping.toml?x=1"));
	assert_int_equal(req.minor_version, 1);
	assert_int_equal(req.nheaders, 3);
	assert_true(view_eq(h[1].name, h[1].name_len, "User-Agent"));
	assert_true(view_eq(h[1].value, h[1].value_len, "curl/8"));
	assert_int_equal(req.head_len, strlen(s));
	assert_int_equal(req.body_kind, KUMO_HTTP1_BODY_NONE);
	assert_true(req.keep_alive);
	assert_false(req.expect_continue);
	const struct kumo_http1_header *ua = kumo_http1_find_header(&req, "user-agent");
	assert_non_null(ua);
	assert_ptr_equal(ua, &h[1]);
	assert_null(kumo_http1_find_header(&req, "cookie"));
}

/* Valid requests: every proper prefix is incomplete, the whole parses, bare LF works too. */
static const char *const valid[] = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /publish_log_v1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
    "Content-Type: application/json\r\n\r\n",
    "POST /x HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n",
    "GET /x HTTP/1.0\r\n\r\n",
    "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
    "GET /x HTTP/1.9\r\nHost: a\r\n\r\n",
};

static void test_every_truncation(void **state)
{
	for (size_t k = 0; k < sizeof(valid) / sizeof(valid[0]); k++) {
		const char *s = valid[k];
		size_t n = strlen(s);
		struct kumo_http1_request req;
		struct kumo_http1_header h[KUMO_HTTP1_MAX_HEADERS];
		struct kumo_http1_error err;
		for (size_t cut = 0; cut < n; cut++) {
			enum kumo_http1_result rc = parse(s, cut, &req, h, &err);
			if (rc != KUMO_HTTP1_INCOMPLETE)
				fail_msg("request %zu cut at %zu: %d (%d %s)", k, cut, rc,
					 err.status, err.reason);
		}
		if (parse(s, n, &req, h, &err) != KUMO_HTTP1_OK)
			fail_msg("request %zu: %d %s", k, err.status, err.reason);
		assert_int_equal(req.head_len, n);
	}
}

static void test_keep_alive_rules(void **state)
{
	struct {
		const char *s;
		bool keep_alive;
		int minor;
	} cases[] = {
	    {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, 1},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, 1},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n", false, 1},
	    {"GET / HTTP/1.0\r\n\r\n", false, 0},
	    {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, 0},
	    {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, 0},
	    {"GET / HTTP/1.3\r\nHost: a\r\n\r\n", true, 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumo_http1_request req;
		struct kumo_http1_header h[8];
		struct kumo_http1_error err;
		assert_int_equal(parse(cases[i].s, strlen(cases[i].s), &req, h, &err),
				 KUMO_HTTP1_OK);
		assert_int_equal(req.keep_alive, cases[i].keep_alive);
		assert_int_equal(req.minor_version, cases[i].minor);
	}
}

static void test_framing_headers(void **state)
{
	struct kumo_http1_request req;
	struct kumo_http1_header h[8];
	struct kumo_http1_error err;
	const char *cl = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n"
			 "content-length: 5\r\n\r\n";
	assert_int_equal(parse(cl, strlen(cl), &req, h, &err), KUMO_HTTP1_OK);
	assert_int_equal(req.body_kind, KUMO_HTTP1_BODY_LENGTH);
	assert_int_equal(req.content_length, 5);
	const char *zero = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
	assert_int_equal(parse(zero, strlen(zero), &req, h, &err), KUMO_HTTP1_OK);
	assert_int_equal(req.body_kind, KUMO_HTTP1_BODY_NONE);
	const char *te = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n"
			 "Expect: 100-continue\r\n\r\n";
	assert_int_equal(parse(te, strlen(te), &req, h, &err), KUMO_HTTP1_OK);
	assert_int_equal(req.body_kind, KUMO_HTTP1_BODY_CHUNKED);
	assert_true(req.expect_continue);
}

/* Malformed requests and the status each must get. */
static const struct {
	const char *s;
	int status;
} malformed[] = {
    {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400},
    {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0}, /* control: valid */
    {"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400},
    {"GET / HTTP/11\r\nHost: a\r\n\r\n", 400},
    {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
    {"GET / HTTP/0.9\r\n\r\n", 505},
    {"GET /\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\n\r\n", 400},			     /* no Host */
    {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},   /* two Hosts */
    {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},	     /* space before ':' */
    {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400},   /* obs-fold */
    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400}, /* control in value */
    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400},  /* DEL in value */
    {"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400},	     /* bare CR */
    {"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400},   /* empty name */
    {"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2097152\r\n\r\n", 413},
    {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400},
    {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417},
};

static void test_malformed(void **state)
{
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		const char *s = malformed[i].s;
		size_t n = strlen(s);
		struct kumo_http1_request req;
		struct kumo_http1_header h[KUMO_HTTP1_MAX_HEADERS];
		struct kumo_http1_error err = {0};
		enum kumo_http1_result rc = parse(s, n, &req, h, &err);
		if (malformed[i].status == 0) {
			assert_int_equal(rc, KUMO_HTTP1_OK);
			continue;
		}
		if (rc != KUMO_HTTP1_ERROR || err.status != malformed[i].status)
			fail_msg("case %zu: result %d status %d, want %d", i, rc, err.status,
				 malformed[i].status);
		assert_non_null(err.reason);
		/* Any prefix is incomplete or the same error. */
		for (size_t cut = 0; cut < n; cut++) {
			struct kumo_http1_error e2 = {0};
			rc = parse(s, cut, &req, h, &e2);
			if (rc == KUMO_HTTP1_OK ||
			    (rc == KUMO_HTTP1_ERROR && e2.status != err.status))
				fail_msg("case %zu cut %zu: %d %d", i, cut, rc, e2.status);
		}
	}
}

static void test_limits(void **state)
{
	struct kumo_http1_limits lim = {.max_head = 64, .max_headers = 2, .max_body = 10};
	struct kumo_http1_request req;
	struct kumo_http1_header h[KUMO_HTTP1_MAX_HEADERS];
	struct kumo_http1_error err;
	char big[200];

	/* Exactly max_head bytes fit. */
	const char *base = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
	size_t bl = strlen(base);
	memset(big, 'v', sizeof(big));
	memcpy(big, base, bl);
	memcpy(big + 64 - 4, "\r\n\r\n", 4);
	assert_int_equal(kumo_http1_parse_head(big, 64, &lim, h, 8, &req, &err), KUMO_HTTP1_OK);
	assert_int_equal(req.head_len, 64);
	/* One more byte does not. */
	memset(big + bl, 'v', sizeof(big) - bl);
	memcpy(big + 65 - 4, "\r\n\r\n", 4);
	assert_int_equal(kumo_http1_parse_head(big, 65, &lim, h, 8, &req, &err), KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 431);
	/* Without a line end, passing the limit is enough to tell. */
	assert_int_equal(kumo_http1_parse_head(big, 64, &lim, h, 8, &req, &err), KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 431);
	assert_int_equal(kumo_http1_parse_head(big, 63, &lim, h, 8, &req, &err),
			 KUMO_HTTP1_INCOMPLETE);
	/* A request line alone over the limit: 414. */
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /", 5);
	assert_int_equal(kumo_http1_parse_head(big, 100, &lim, h, 8, &req, &err), KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 414);
	/* Header count. */
	const char *three = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
	assert_int_equal(kumo_http1_parse_head(three, strlen(three), &lim, h, 8, &req, &err),
			 KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 431);
	/* The caller's array bounds the count too. */
	const char *two = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n";
	assert_int_equal(kumo_http1_parse_head(two, strlen(two), &lim, h, 8, &req, &err),
			 KUMO_HTTP1_OK);
	assert_int_equal(kumo_http1_parse_head(two, strlen(two), &lim, h, 1, &req, &err),
			 KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 431);
	/* Content-Length over max_body. */
	const char *cl = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n";
	assert_int_equal(kumo_http1_parse_head(cl, strlen(cl), &lim, h, 8, &req, &err),
			 KUMO_HTTP1_ERROR);
	assert_int_equal(err.status, 413);
}

/* ---- chunked decoding ---------------------------------------------------------------- */

struct chunk_case {
	const char *in;
	const char *out; /* decoded body (for OK) */
	size_t rest;	 /* bytes left after the body */
	int status;	 /* 0: OK */
};

static const struct chunk_case chunk_cases[] = {
    {"5\r\nhello\r\n0\r\n\r\n", "hello", 0, 0},
    {"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET", "hello world", 3, 0},
    {"a;name=val\r\n0123456789\r\n0\r\nTrailer: x\r\nMore: y\r\n\r\n", "0123456789", 0, 0},
    {"A\n0123456789\n0\n\n", "0123456789", 0, 0},
    {"0000005\r\nhello\r\n000\r\n\r\n", "hello", 0, 0},
    {"5 ; ext\r\nhello\r\n0\r\n\r\n", "hello", 0, 0},
    {"0\r\n\r\n", "", 0, 0},
    {"\r\n", NULL, 0, 400},		       /* no size */
    {"g\r\n", NULL, 0, 400},		       /* not hex */
    {"5\r\nhelloX\r\n", NULL, 0, 400},	       /* data longer than size */
    {"5\r\nhello\rX", NULL, 0, 400},	       /* bare CR */
    {"5\rX", NULL, 0, 400},		       /* bare CR */
    {"5;\x01\r\n", NULL, 0, 400},	       /* control char in extension */
    {"11111111111111111\r\n", NULL, 0, 400},   /* 17 digits */
    {"11\r\n", NULL, 0, 413},		       /* over max_body (16) */
    {"9\r\nhello wor\r\n8\r\n", NULL, 0, 413}, /* over max_body in total */
    {"0\r\n bad\r\n\r\n", NULL, 0, 400},       /* trailer starts with a space */
    {"0\r\nX: a\x01\r\n\r\n", NULL, 0, 400},   /* control char in a trailer */
    {"0\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", NULL,
     0, 431},
};

static void decode_split(const struct chunk_case *c, size_t split, bool bytewise)
{
	struct kumo_http1_chunked d;
	struct kumo_http1_error err = {0};
	size_t n = strlen(c->in), pos = 0, outlen = 0;
	char out[256];
	enum kumo_http1_result rc = KUMO_HTTP1_INCOMPLETE;
	kumo_http1_chunked_init(&d, 16, 64);
	while (rc == KUMO_HTTP1_INCOMPLETE && pos < n) {
		size_t piece = bytewise ? 1 : pos < split ? split - pos : n - pos;
		struct guarded g = guard(c->in + pos, piece);
		size_t nd, ns;
		rc = kumo_http1_chunked_decode(&d, out + outlen, g.p, piece, &nd, &ns, &err);
		unguard(&g);
		if (rc == KUMO_HTTP1_INCOMPLETE)
			assert_int_equal(ns, piece);
		assert_true(nd <= ns);
		outlen += nd;
		pos += ns;
	}
	if (c->status) {
		if (rc != KUMO_HTTP1_ERROR || err.status != c->status)
			fail_msg("%s: split %zu: %d %d", c->in, split, rc, err.status);
		return;
	}
	if (rc != KUMO_HTTP1_OK)
		fail_msg("%s: split %zu bytewise %d: %d (%s)", c->in, split, bytewise, rc,
			 err.reason);
	assert_int_equal(outlen, strlen(c->out));
	assert_memory_equal(out, c->out, outlen);
	assert_int_equal(n - pos, c->rest);
}

static void test_chunked_split_anywhere(void **state)
{
	for (size_t i = 0; i < sizeof(chunk_cases) / sizeof(chunk_cases[0]); i++) {
		size_t n = strlen(chunk_cases[i].in);
		for (size_t split = 0; split <= n; split++)
			decode_split(&chunk_cases[i], split, false);
		decode_split(&chunk_cases[i], 0, true);
	}
}

static void test_chunked_in_place(void **state)
{
	char buf[] = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
	struct kumo_http1_chunked d;
	struct kumo_http1_error err;
	size_t nd, ns;
	kumo_http1_chunked_init(&d, 0, 0);
	assert_int_equal(kumo_http1_chunked_decode(&d, buf, buf, strlen(buf), &nd, &ns, &err),
			 KUMO_HTTP1_OK);
	assert_int_equal(nd, 5);
	assert_memory_equal(buf, "abcde", 5);
	assert_int_equal(ns, strlen("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
}

/* ---- the reader: pipelining, split anywhere ------------------------------------------ */

/* A canonical text for a request, to compare runs. */
static void describe(const struct kumo_http1_request *r, char *out, size_t cap)
{
	size_t o = 0;
	o += (size_t)snprintf(out + o, cap - o, "%.*s %.*s 1.%d ka=%d ec=%d [", (int)r->method_len,
			      r->method, (int)r->target_len, r->target, r->minor_version,
			      r->keep_alive, r->expect_continue);
	for (size_t i = 0; i < r->nheaders && o < cap; i++)
		o += (size_t)snprintf(out + o, cap - o, "%.*s=%.*s;", (int)r->headers[i].name_len,
				      r->headers[i].name, (int)r->headers[i].value_len,
				      r->headers[i].value);
	if (o < cap)
		o += (size_t)snprintf(out + o, cap - o, "] body(%zu)=%.*s", r->body_len,
				      (int)r->body_len, r->body ? r->body : "");
}

static const char pipeline[] =
    "POST /publish_log_v1 HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
    "GET /get_config_v1/shaping.toml HTTP/1.1\r\nHost: t\r\n\r\n"
    "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    "4\r\n[1,2\r\n3;x=y\r\n,3]\r\n0\r\nT: v\r\n\r\n"
    "\r\nGET /last HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    "GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

static const char *const pipeline_want[] = {
    "POST /publish_log_v1 1.1 ka=1 ec=0 [Host=t;Content-Length=7;] body(7)={\"a\":1}",
    "GET /get_config_v1/shaping.toml 1.1 ka=1 ec=0 [Host=t;] body(0)=",
    "POST /c 1.1 ka=1 ec=0 [Host=t;Transfer-Encoding=chunked;] body(7)=[1,2,3]",
    "GET /last 1.0 ka=1 ec=0 [Connection=keep-alive;] body(0)=",
    "GET /after 1.1 ka=0 ec=0 [Host=t;Connection=close;] body(0)=",
};

/* Feeds the stream in pieces given by cuts[] (ascending offsets), moving the buffer to a
 * fresh allocation before every call when move is set. Returns the requests seen. */
static size_t run_reader(const char *in, size_t n, const size_t *cuts, size_t ncuts, bool move,
			 char out[][512], size_t max)
{
	struct kumo_http1_reader r;
	size_t have = 0, fed = 0, got = 0, c = 0;
	char *buf = malloc(n + 1);
	kumo_http1_reader_init(&r, NULL);
	while (fed < n) {
		size_t upto = c < ncuts && cuts[c] < n ? cuts[c] : n;
		c++;
		memcpy(buf + have, in + fed, upto - fed);
		have += upto - fed;
		fed = upto;
		for (;;) {
			if (move) {
				char *nb = malloc(n + 1);
				memcpy(nb, buf, have);
				free(buf);
				buf = nb;
			}
			enum kumo_http1_result rc = kumo_http1_reader_feed(&r, buf, &have);
			assert_int_not_equal(rc, KUMO_HTTP1_ERROR);
			if (rc != KUMO_HTTP1_OK)
				break;
			assert_true(got < max);
			describe(kumo_http1_reader_request(&r), out[got++], 512);
			size_t used = kumo_http1_reader_request_len(&r);
			memmove(buf, buf + used, have - used);
			have -= used;
			kumo_http1_reader_next(&r);
		}
	}
	assert_int_equal(have, 0);
	free(buf);
	return got;
}

static void check_pipeline(char got[][512], size_t n)
{
	assert_int_equal(n, sizeof(pipeline_want) / sizeof(pipeline_want[0]));
	for (size_t i = 0; i < n; i++)
		assert_string_equal(got[i], pipeline_want[i]);
}

static void test_reader_pipeline_split_anywhere(void **state)
{
	size_t n = sizeof(pipeline) - 1;
	char got[8][512];
	check_pipeline(got, run_reader(pipeline, n, NULL, 0, false, got, 8));
	for (size_t split = 1; split < n; split++) {
		size_t cuts[1] = {split};
		check_pipeline(got, run_reader(pipeline, n, cuts, 1, split % 7 == 0, got, 8));
	}
	size_t *bytes = malloc(n * sizeof(*bytes));
	for (size_t i = 0; i < n; i++)
		bytes[i] = i + 1;
	check_pipeline(got, run_reader(pipeline, n, bytes, n, false, got, 8));
	check_pipeline(got, run_reader(pipeline, n, bytes, n, true, got, 8));
	free(bytes);
}

static void test_reader_expect_continue(void **state)
{
	char buf[256];
	const char *head = "POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
			   "Content-Length: 3\r\n\r\n";
	size_t len = strlen(head);
	memcpy(buf, head, len);
	struct kumo_http1_reader r;
	kumo_http1_reader_init(&r, NULL);
	assert_null(kumo_http1_reader_request(&r));
	assert_int_equal(kumo_http1_reader_feed(&r, buf, &len), KUMO_HTTP1_INCOMPLETE);
	const struct kumo_http1_request *req = kumo_http1_reader_request(&r);
	assert_non_null(req);
	assert_true(req->expect_continue);
	assert_null(req->body);
	memcpy(buf + len, "abc", 3);
	len += 3;
	assert_int_equal(kumo_http1_reader_feed(&r, buf, &len), KUMO_HTTP1_OK);
	assert_int_equal(kumo_http1_reader_request(&r)->body_len, 3);
	assert_memory_equal(kumo_http1_reader_request(&r)->body, "abc", 3);
	assert_int_equal(kumo_http1_reader_request_len(&r), len);
}

static void test_reader_errors(void **state)
{
	struct kumo_http1_limits lim = {.max_body = 4};
	struct {
		const char *s;
		int status;
	} cases[] = {
	    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello", 413},
	    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
	    {"BAD REQUEST LINE\r\n", 400},
	    {"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/3.0\r\n", 505},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[256];
		size_t len = strlen(cases[i].s), off = 0;
		memcpy(buf, cases[i].s, len);
		struct kumo_http1_reader r;
		kumo_http1_reader_init(&r, &lim);
		enum kumo_http1_result rc;
		while ((rc = kumo_http1_reader_feed(&r, buf + off, &len)) == KUMO_HTTP1_OK) {
			size_t used = kumo_http1_reader_request_len(&r);
			off += used;
			len -= used;
			kumo_http1_reader_next(&r);
		}
		assert_int_equal(rc, KUMO_HTTP1_ERROR);
		assert_int_equal(kumo_http1_reader_error(&r)->status, cases[i].status);
		assert_int_equal(kumo_http1_reader_feed(&r, buf + off, &len), KUMO_HTTP1_ERROR);
	}
}

/* A slow client sending a long head one byte at a time is parsed once per line. */
static void test_reader_head_bytewise(void **state)
{
	char buf[KUMO_HTTP1_DEFAULT_MAX_HEAD + 16];
	const char *start = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
	size_t n = strlen(start), len = 0;
	memcpy(buf, start, n);
	memset(buf + n, 'x', sizeof(buf) - n);
	struct kumo_http1_reader r;
	kumo_http1_reader_init(&r, NULL);
	enum kumo_http1_result rc = KUMO_HTTP1_INCOMPLETE;
	while (rc == KUMO_HTTP1_INCOMPLETE && len < sizeof(buf)) {
		len++;
		rc = kumo_http1_reader_feed(&r, buf, &len);
	}
	assert_int_equal(rc, KUMO_HTTP1_ERROR);
	assert_int_equal(kumo_http1_reader_error(&r)->status, 431);
	assert_int_equal(len, KUMO_HTTP1_DEFAULT_MAX_HEAD);
}

/* Inputs near the limits: fed whole, or in two pieces split anywhere, the reader gives the
 * same requests and the same final error. */
static int reader_outcome(const char *in, size_t n, size_t split, unsigned *count)
{
	struct kumo_http1_limits lim = {.max_head = 64, .max_headers = 4, .max_body = 16};
	struct kumo_http1_reader r;
	char buf[512];
	size_t have = 0, fed = 0;
	kumo_http1_reader_init(&r, &lim);
	*count = 0;
	while (fed < n) {
		size_t upto = fed < split && split < n ? split : n;
		memcpy(buf + have, in + fed, upto - fed);
		have += upto - fed;
		fed = upto;
		enum kumo_http1_result rc;
		while ((rc = kumo_http1_reader_feed(&r, buf, &have)) == KUMO_HTTP1_OK) {
			size_t used = kumo_http1_reader_request_len(&r);
			memmove(buf, buf + used, have - used);
			have -= used;
			kumo_http1_reader_next(&r);
			(*count)++;
		}
		if (rc == KUMO_HTTP1_ERROR)
			return kumo_http1_reader_error(&r)->status;
	}
	return 0;
}

static void test_reader_limits_split_anywhere(void **state)
{
	char in[6][200];
	size_t len[6];
	int want[6] = {414, 414, 400, 431, 400, 413};
	memset(in, '\n', sizeof(in));
	memcpy(in[0] + 70, "\rP", 2); /* empty lines past max_head, then a bare CR */
	len[0] = 72;
	memcpy(in[1] + 63, "\rP", 2); /* a CR at the last byte of max_head */
	len[1] = 65;
	len[2] = (size_t)snprintf(in[2], 200, "GET / HTTP/1.1\r\nHost: a\r\nX: %s\rY\r\n\r\n",
				  "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvv");
	len[3] = (size_t)snprintf(in[3], 200, "GET / HTTP/1.1\r\nHost: a\r\nX: %s\r\n\r\n",
				  "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv");
	len[4] = (size_t)snprintf(in[4], 200, "GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\r\n");
	len[5] = (size_t)snprintf(in[5], 200,
				  "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
				  "chunked\r\n\r\n8\r\n12345678\r\n9\r\n");
	for (int k = 0; k < 6; k++) {
		unsigned count, c2;
		int whole = reader_outcome(in[k], len[k], len[k], &count);
		if (whole != want[k])
			fail_msg("input %d: %d, want %d", k, whole, want[k]);
		for (size_t split = 1; split < len[k]; split++) {
			int got = reader_outcome(in[k], len[k], split, &c2);
			if (got != whole || c2 != count)
				fail_msg("input %d split %zu: %d (%u), whole %d (%u)", k, split,
					 got, c2, whole, count);
		}
	}
}

/* ---- responses ------------------------------------------------------------------------ */

static void test_response_writer(void **state)
{
	struct kumo_buf b = {0};
	kumo_http1_write_status(&b, 404);
	kumo_http1_write_header(&b, "Connection", "keep\r\nalive");
	kumo_http1_write_body(&b, "application/json", "{\"error\":\"x\"}", 13, false);
	kumo_buf_putc(&b, 0);
	assert_string_equal(b.data, "HTTP/1.1 404 Not Found\r\nConnection: keep  alive\r\n"
				    "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
				    "{\"error\":\"x\"}");
	b.len = 0;
	kumo_http1_write_status(&b, 299);
	kumo_http1_write_body(&b, NULL, "abc", 3, true);
	kumo_buf_putc(&b, 0);
	assert_string_equal(b.data, "HTTP/1.1 299 Unknown\r\nContent-Length: 3\r\n\r\n");
	kumo_buf_free(&b);
	assert_string_equal(kumo_http1_reason(431), "Request Header Fields Too Large");
	char date[40];
	assert_int_equal(kumo_http1_format_date(784111777, date, sizeof(date)), 29);
	assert_string_equal(date, "Sun, 06 Nov 1994 08:49:37 GMT");
}

static void test_list_has(void **state)
{
	assert_true(kumo_http1_list_has("a, b ,c", 7, "B"));
	assert_true(kumo_http1_list_has(",,close", 7, "close"));
	assert_false(kumo_http1_list_has("closed", 6, "close"));
	assert_false(kumo_http1_list_has("", 0, "close"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_simple_get),
	    cmocka_unit_test(test_every_truncation),
	    cmocka_unit_test(test_keep_alive_rules),
	    cmocka_unit_test(test_framing_headers),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_chunked_split_anywhere),
	    cmocka_unit_test(test_chunked_in_place),
	    cmocka_unit_test(test_reader_pipeline_split_anywhere),
	    cmocka_unit_test(test_reader_expect_continue),
	    cmocka_unit_test(test_reader_errors),
	    cmocka_unit_test(test_reader_head_bytewise),
	    cmocka_unit_test(test_reader_limits_split_anywhere),
	    cmocka_unit_test(test_response_writer),
	    cmocka_unit_test(test_list_has),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
