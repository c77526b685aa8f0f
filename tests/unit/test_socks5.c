/* Unit tests for the SOCKS5 server machine: client transcripts (bytes in, decisions, expected
 * reply bytes, events and leftover) each fed whole, split at every offset and one byte at a
 * time, which must all agree; every reply code; timeouts, errno mapping and API edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/socks5.h"

#define NOW 1000

/* ---- Client messages ---- */
#define HELLO_NOAUTH "\x05\x01\x00"
#define HELLO_AUTH "\x05\x01\x02"
#define HELLO_BOTH "\x05\x02\x00\x02"
#define CREDS_UP "\x01\x01u\x01p" /* user "u", password "p" */
#define CREDS_ALICE                                                                                \
	"\x01\x05"                                                                                 \
	"alice\x06"                                                                                \
	"secret" /* alice / secret */
/* CONNECT 10.0.0.1:25 */
#define CONNECT_V4 "\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x19"
/* CONNECT [2001:db8::1]:587 */
#define CONNECT_V6                                                                                 \
	"\x05\x01\x00\x04\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x4b"
/* BIND 127.0.0.2:0 and BIND [::1]:0 */
#define BIND_V4 "\x05\x02\x00\x01\x7f\x00\x00\x02\x00\x00"
#define BIND_V6                                                                                    \
	"\x05\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00"
/* CONNECT example.com:25 */
#define CONNECT_NAME                                                                               \
	"\x05\x01\x00\x03\x0b"                                                                     \
	"example.com\x00\x19"

/* ---- Server replies ---- */
#define M_NOAUTH "\x05\x00"
#define M_AUTH "\x05\x02"
#define M_REFUSED "\x05\xff"
#define AUTH_OK "\x01\x00"
#define AUTH_BAD "\x01\x01"
/* a failure reply: code, 0.0.0.0:0 */
#define FAIL(c) "\x05" c "\x00\x01\x00\x00\x00\x00\x00\x00"
/* success carrying 192.0.2.2:40000 (0x9c40) */
#define OK_LOCAL "\x05\x00\x00\x01\xc0\x00\x02\x02\x9c\x40"
/* success carrying 127.0.0.2:0 and 127.0.0.2:41234 (0xa112) */
#define OK_BIND "\x05\x00\x00\x01\x7f\x00\x00\x02\x00\x00"
#define OK_BOUND "\x05\x00\x00\x01\x7f\x00\x00\x02\xa1\x12"
/* success carrying [::1]:0 and [::1]:443 */
#define OK_BIND6                                                                                   \
	"\x05\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00"
#define OK_LOCAL6                                                                                  \
	"\x05\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01\xbb"

/* ---- Transcripts ---- */

/* What the embedder answers. Addresses are "ip:port" or "[ip6]:port"; NULL: the default. */
struct policy {
	const char *user, *pass; /* credentials accepted (NULL: any) */
	int bind_rep;		 /* reply to BIND */
	const char *bound;	 /* address reported for BIND (NULL: requested) */
	int connect_rep;	 /* reply to CONNECT */
	const char *local;	 /* address reported for CONNECT */
};

struct transcript {
	const char *name;
	bool auth;	/* cfg.auth_required */
	const char *in; /* every byte the client sends */
	size_t in_len;
	bool eof; /* the client closes after sending everything */
	struct policy pol;
	const char *out; /* every byte the machine writes */
	size_t out_len;
	const char *events;   /* events, each followed by ";" */
	const char *leftover; /* input after the CONNECT request (NULL: none) */
	size_t leftover_len;
};

#define BYTES(field, s) .field = (s), .field##_len = sizeof(s) - 1
#define IN(s) BYTES(in, s)
#define OUT(s) BYTES(out, s)
#define LEFT(s) BYTES(leftover, s)

static const struct transcript transcripts[] = {
    {"connect ipv4",
     false,
     IN(HELLO_NOAUTH CONNECT_V4),
     false,
     {.local = "192.0.2.2:40000"},
     OUT(M_NOAUTH OK_LOCAL),
     "CONNECT 10.0.0.1:25;RELAY;"},
    {"connect ipv6",
     false,
     IN(HELLO_NOAUTH CONNECT_V6),
     false,
     {.local = "[::1]:443"},
     OUT(M_NOAUTH OK_LOCAL6),
     "CONNECT [2001:db8::1]:587;RELAY;"},
    {"offer of both without auth",
     false,
     IN(HELLO_BOTH CONNECT_V4),
     false,
     {.local = "192.0.2.2:40000"},
     OUT(M_NOAUTH OK_LOCAL),
     "CONNECT 10.0.0.1:25;RELAY;"},
    {"auth accepted",
     true,
     IN(HELLO_BOTH CREDS_ALICE CONNECT_V4),
     false,
     {.user = "alice", .pass = "secret", .local = "192.0.2.2:40000"},
     OUT(M_AUTH AUTH_OK OK_LOCAL),
     "AUTH alice/secret;CONNECT 10.0.0.1:25;RELAY;"},
    {"auth refused",
     true,
     IN(HELLO_AUTH CREDS_UP CONNECT_V4),
     false,
     {.user = "alice", .pass = "secret"},
     OUT(M_AUTH AUTH_BAD),
     "AUTH u/p;CLOSE - authentication failed;"},
    {"empty credentials",
     true,
     IN(HELLO_AUTH "\x01\x00\x00"),
     false,
     {.user = "alice", .pass = "secret"},
     OUT(M_AUTH AUTH_BAD),
     "AUTH /;CLOSE - authentication failed;"},
    {"credentials with NUL",
     true,
     IN(HELLO_AUTH "\x01\x03"
		   "a\x00"
		   "b\x01z" CONNECT_V4),
     false,
     {.local = "192.0.2.2:40000"},
     OUT(M_AUTH AUTH_OK OK_LOCAL),
     "AUTH a?b/z;CONNECT 10.0.0.1:25;RELAY;"},
    {"bad auth version",
     true,
     IN(HELLO_AUTH "\x05\x01u\x01p"),
     false,
     {},
     OUT(M_AUTH AUTH_BAD),
     "CLOSE - bad authentication subnegotiation version;"},
    {"auth required, not offered",
     true,
     IN(HELLO_NOAUTH CONNECT_V4),
     false,
     {},
     OUT(M_REFUSED),
     "CLOSE - no acceptable method: authentication required;"},
    {"no auth, only userpass offered",
     false,
     IN(HELLO_AUTH CREDS_UP),
     false,
     {},
     OUT(M_REFUSED),
     "CLOSE - no acceptable method: no-authentication not offered;"},
    {"no methods",
     false,
     IN("\x05\x00"),
     false,
     {},
     OUT(M_REFUSED),
     "CLOSE - no acceptable method: no-authentication not offered;"},
    {"socks4",
     false,
     IN("\x04\x01\x00\x19\x0a\x00\x00\x01"
	"user\x00"),
     false,
     {},
     OUT(""),
     "CLOSE - not SOCKS version 5;"},
    {"request version",
     false,
     IN(HELLO_NOAUTH "\x04\x01\x00\x01\x0a\x00\x00\x01\x00\x19"),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x01")),
     "CLOSE 01 request is not SOCKS version 5;"},
    {"domain target",
     false,
     IN(HELLO_NOAUTH CONNECT_NAME),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x08")),
     "CLOSE 08 domain name targets are not supported req=example.com:25;"},
    {"domain bind",
     false,
     IN(HELLO_NOAUTH "\x05\x02\x00\x03\x01x\x00\x00"),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x08")),
     "CLOSE 08 domain name targets are not supported req=x:0;"},
    {"udp associate",
     false,
     IN(HELLO_NOAUTH "\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x07")),
     "CLOSE 07 command not supported req=0.0.0.0:0;"},
    {"unknown command",
     false,
     IN(HELLO_NOAUTH "\x05\x09\x00\x03\x01x\x00\x50"),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x07")),
     "CLOSE 07 command not supported req=x:80;"},
    {"unknown address type",
     false,
     IN(HELLO_NOAUTH "\x05\x01\x00\x02\x00\x00"),
     false,
     {},
     OUT(M_NOAUTH FAIL("\x08")),
     "CLOSE 08 unknown address type;"},
    {"reserved byte ignored",
     false,
     IN(HELLO_NOAUTH "\x05\x01\x7f\x01\x0a\x00\x00\x01\x00\x19"),
     false,
     {.local = "192.0.2.2:40000"},
     OUT(M_NOAUTH OK_LOCAL),
     "CONNECT 10.0.0.1:25;RELAY;"},
    {"bind then connect",
     false,
     IN(HELLO_NOAUTH BIND_V4 CONNECT_V4),
     false,
     {.local = "127.0.0.2:41234"},
     OUT(M_NOAUTH OK_BIND OK_BOUND),
     "BIND 127.0.0.2:0;CONNECT 10.0.0.1:25 from 127.0.0.2:0;RELAY;"},
    {"bind reports its address",
     false,
     IN(HELLO_NOAUTH BIND_V4 CONNECT_V4),
     false,
     {.bound = "127.0.0.2:41234", .local = "127.0.0.2:41234"},
     OUT(M_NOAUTH OK_BOUND OK_BOUND),
     "BIND 127.0.0.2:0;CONNECT 10.0.0.1:25 from 127.0.0.2:41234;RELAY;"},
    {"bind ipv6 then connect",
     false,
     IN(HELLO_NOAUTH BIND_V6 CONNECT_V6),
     false,
     {.local = "[::1]:443"},
     OUT(M_NOAUTH OK_BIND6 OK_LOCAL6),
     "BIND [::1]:0;CONNECT [2001:db8::1]:587 from [::1]:0;RELAY;"},
    {"bind with auth",
     true,
     IN(HELLO_AUTH CREDS_UP BIND_V4 CONNECT_V4),
     false,
     {.local = "127.0.0.2:41234"},
     OUT(M_AUTH AUTH_OK OK_BIND OK_BOUND),
     "AUTH u/p;BIND 127.0.0.2:0;CONNECT 10.0.0.1:25 from 127.0.0.2:0;RELAY;"},
    {"bind not allowed",
     false,
     IN(HELLO_NOAUTH BIND_V4 CONNECT_V4),
     false,
     {.bind_rep = 2},
     OUT(M_NOAUTH FAIL("\x02")),
     "BIND 127.0.0.2:0;CLOSE 02 BIND refused req=127.0.0.2:0;"},
    {"bind address unavailable",
     false,
     IN(HELLO_NOAUTH BIND_V4),
     false,
     {.bind_rep = 1},
     OUT(M_NOAUTH FAIL("\x01")),
     "BIND 127.0.0.2:0;CLOSE 01 BIND refused req=127.0.0.2:0;"},
    {"second bind",
     false,
     IN(HELLO_NOAUTH BIND_V4 BIND_V4 CONNECT_V4),
     false,
     {},
     OUT(M_NOAUTH OK_BIND FAIL("\x01")),
     "BIND 127.0.0.2:0;CLOSE 01 second BIND req=127.0.0.2:0;"},
    {"bind then eof",
     false,
     IN(HELLO_NOAUTH BIND_V4),
     true,
     {},
     OUT(M_NOAUTH OK_BIND),
     "BIND 127.0.0.2:0;CLOSE - client closed during the handshake req=127.0.0.2:0;"},
    {"leftover after connect",
     false,
     IN(HELLO_NOAUTH CONNECT_V4 "EHLO x\r\n"),
     false,
     {.local = "192.0.2.2:40000"},
     OUT(M_NOAUTH OK_LOCAL),
     "CONNECT 10.0.0.1:25;RELAY;",
     LEFT("EHLO x\r\n")},
    {"leftover with eof",
     false,
     IN(HELLO_NOAUTH BIND_V4 CONNECT_V4 "QUIT\r\n"),
     true,
     {.local = "127.0.0.2:41234"},
     OUT(M_NOAUTH OK_BIND OK_BOUND),
     "BIND 127.0.0.2:0;CONNECT 10.0.0.1:25 from 127.0.0.2:0;RELAY;",
     LEFT("QUIT\r\n")},
    {"eof before anything",
     false,
     IN(""),
     true,
     {},
     OUT(""),
     "CLOSE - client closed during the handshake;"},
    {"eof in the method offer",
     false,
     IN("\x05\x02\x00"),
     true,
     {},
     OUT(""),
     "CLOSE - client closed during the handshake;"},
    {"eof in the request",
     false,
     IN(HELLO_NOAUTH "\x05\x01\x00\x01\x0a"),
     true,
     {},
     OUT(M_NOAUTH),
     "CLOSE - client closed during the handshake;"},
    {"eof in credentials",
     true,
     IN(HELLO_AUTH "\x01\x05"
		   "ali"),
     true,
     {},
     OUT(M_AUTH),
     "CLOSE - client closed during the handshake;"},
    {"incomplete is quiet",
     false,
     IN(HELLO_NOAUTH "\x05\x01\x00\x04\x20\x01"),
     false,
     {},
     OUT(M_NOAUTH),
     ""},
};

/* ---- Harness ---- */

struct sbuf {
	char *p;
	size_t n, cap;
};

static void sb_put(struct sbuf *b, const void *p, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void sb_addr(struct sbuf *b, const struct sockaddr_storage *ss)
{
	char ip[INET6_ADDRSTRLEN], s[INET6_ADDRSTRLEN + 16];
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(s, sizeof(s), "%s:%u", ip, ntohs(a->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(s, sizeof(s), "[%s]:%u", ip, ntohs(a->sin6_port));
	} else {
		snprintf(s, sizeof(s), "?");
	}
	sb_str(b, s);
}

/* Parses "ip:port" or "[ip6]:port". */
static void parse_addr(const char *s, struct sockaddr_storage *ss)
{
	char ip[64];
	memset(ss, 0, sizeof(*ss));
	const char *colon = strrchr(s, ':');
	assert_non_null(colon);
	unsigned port = (unsigned)atoi(colon + 1);
	if (s[0] == '[') {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		snprintf(ip, sizeof(ip), "%.*s", (int)(colon - s - 2), s + 1);
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		snprintf(ip, sizeof(ip), "%.*s", (int)(colon - s), s);
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
	}
}

struct run {
	const struct transcript *t;
	struct kumo_socks5 *m;
	struct sbuf out, ev;
	struct sbuf rest; /* bytes the machine no longer takes: the relay's */
	bool closed;
};

static void log_bytes(struct sbuf *b, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sb_put(b, p[i] ? &p[i] : "?", 1);
}

static void handle(struct run *r, const struct kumo_socks5_ev *ev)
{
	const struct policy *pol = &r->t->pol;
	struct sockaddr_storage a;
	char num[8];

	switch (ev->type) {
	case KUMO_SOCKS5_EV_AUTH: {
		sb_str(&r->ev, "AUTH ");
		log_bytes(&r->ev, ev->user, ev->user_len);
		sb_str(&r->ev, "/");
		log_bytes(&r->ev, ev->pass, ev->pass_len);
		assert_int_equal(strlen(ev->user) <= ev->user_len, 1);
		bool ok = (!pol->user || (strlen(pol->user) == ev->user_len &&
					  !memcmp(pol->user, ev->user, ev->user_len))) &&
			  (!pol->pass || (strlen(pol->pass) == ev->pass_len &&
					  !memcmp(pol->pass, ev->pass, ev->pass_len)));
		assert_int_equal(kumo_socks5_auth_done(r->m, ok), 0);
		if (ok)
			assert_string_equal(kumo_socks5_user(r->m), ev->user);
		break;
	}
	case KUMO_SOCKS5_EV_BIND:
		sb_str(&r->ev, "BIND ");
		sb_addr(&r->ev, &ev->req->addr);
		assert_int_equal(ev->req->cmd, KUMO_SOCKS5_CMD_BIND);
		if (pol->bound)
			parse_addr(pol->bound, &a);
		assert_int_equal(kumo_socks5_bind_done(r->m, (enum kumo_socks5_rep)pol->bind_rep,
						       pol->bound ? (struct sockaddr *)&a : NULL),
				 0);
		break;
	case KUMO_SOCKS5_EV_CONNECT:
		sb_str(&r->ev, "CONNECT ");
		sb_addr(&r->ev, &ev->req->addr);
		assert_int_equal(ev->req->cmd, KUMO_SOCKS5_CMD_CONNECT);
		if (ev->source) {
			sb_str(&r->ev, " from ");
			sb_addr(&r->ev, ev->source);
		}
		if (pol->local)
			parse_addr(pol->local, &a);
		assert_int_equal(
		    kumo_socks5_connect_done(r->m, (enum kumo_socks5_rep)pol->connect_rep,
					     pol->local ? (struct sockaddr *)&a : NULL),
		    0);
		break;
	case KUMO_SOCKS5_EV_RELAY:
		sb_str(&r->ev, "RELAY");
		break;
	case KUMO_SOCKS5_EV_CLOSE:
		r->closed = true;
		sb_str(&r->ev, "CLOSE ");
		if (ev->rep == KUMO_SOCKS5_REP_NONE)
			snprintf(num, sizeof(num), "-");
		else
			snprintf(num, sizeof(num), "%02x", ev->rep);
		sb_str(&r->ev, num);
		sb_str(&r->ev, " ");
		sb_str(&r->ev, ev->reason);
		if (ev->req && ev->req->atyp == KUMO_SOCKS5_ATYP_DOMAIN) {
			snprintf(num, sizeof(num), ":%u", ev->req->port);
			sb_str(&r->ev, " req=");
			sb_str(&r->ev, ev->req->host);
			sb_str(&r->ev, num);
		} else if (ev->req) {
			sb_str(&r->ev, " req=");
			sb_addr(&r->ev, &ev->req->addr);
		}
		break;
	default:
		fail();
	}
	sb_str(&r->ev, ";");
}

/* Takes the output; sometimes only part of it, to exercise partial consumption. */
static void take_output(struct run *r, bool all)
{
	size_t n;
	const uint8_t *o = kumo_socks5_output(r->m, &n);
	if (!all && n > 1)
		n = n / 2;
	sb_put(&r->out, o, n);
	kumo_socks5_output_consumed(r->m, n);
}

static void drain(struct run *r)
{
	struct kumo_socks5_ev ev;
	for (;;) {
		kumo_socks5_next(r->m, NOW, &ev);
		take_output(r, false);
		if (ev.type == KUMO_SOCKS5_EV_NONE)
			break;
		handle(r, &ev);
	}
	take_output(r, true);
}

/* Feeds the transcript in pieces ending at the given offsets (ascending, the last = len). */
static void run_split(const struct transcript *t, const size_t *cuts, size_t ncut, bool zero_copy)
{
	struct run r = {.t = t};
	struct kumo_socks5_cfg cfg = {.auth_required = t->auth};
	assert_int_equal(kumo_socks5_new(&cfg, NOW, &r.m), 0);
	size_t at = 0;
	for (size_t i = 0; i < ncut; i++) {
		size_t n = cuts[i] - at;
		const uint8_t *p = (const uint8_t *)t->in + at;
		while (n) {
			size_t k = n;
			if (zero_copy) {
				size_t space;
				uint8_t *dst = kumo_socks5_input_space(r.m, &space);
				if (!dst) {
					sb_put(&r.rest, p, n); /* finished: the relay's */
					break;
				}
				if (k > space)
					k = space;
				memcpy(dst, p, k);
				kumo_socks5_input_commit(r.m, k);
			} else {
				int rc = kumo_socks5_push(r.m, p, k);
				if (rc == -EPIPE) {
					sb_put(&r.rest, p, n);
					break;
				}
				assert_int_equal(rc, 0);
			}
			p += k;
			n -= k;
			drain(&r);
		}
		drain(&r);
		at = cuts[i];
	}
	if (t->eof) {
		kumo_socks5_input_eof(r.m);
		drain(&r);
	}
	if (r.out.n != t->out_len || memcmp(r.out.p ? r.out.p : "", t->out, t->out_len)) {
		fprintf(stderr, "%s: output differs (%zu bytes, want %zu)\n", t->name, r.out.n,
			t->out_len);
		fail();
	}
	if (strcmp(r.ev.p ? r.ev.p : "", t->events)) {
		fprintf(stderr, "%s: events\n  got  %s\n  want %s\n", t->name, r.ev.p ? r.ev.p : "",
			t->events);
		fail();
	}
	/* What the relay forwards: the leftover, then what was read after the RELAY. */
	size_t left_len;
	const uint8_t *left = kumo_socks5_leftover(r.m, &left_len);
	if (r.closed) {
		assert_int_equal(left_len, 0);
	} else {
		assert_int_equal(left_len + r.rest.n, t->leftover_len);
		if (left_len)
			assert_memory_equal(left, t->leftover, left_len);
		if (r.rest.n)
			assert_memory_equal(r.rest.p, t->leftover + left_len, r.rest.n);
	}
	kumo_socks5_free(r.m);
	free(r.out.p);
	free(r.ev.p);
	free(r.rest.p);
}

static void run_transcript(const struct transcript *t)
{
	size_t len = t->in_len;
	size_t whole[1] = {len};
	run_split(t, whole, 1, false);
	run_split(t, whole, 1, true);
	for (size_t i = 0; i <= len; i++) {
		size_t two[2] = {i, len};
		run_split(t, two, 2, i & 1);
	}
	size_t *each = malloc((len + 1) * sizeof(*each));
	assert_non_null(each);
	for (size_t i = 0; i < len; i++)
		each[i] = i + 1;
	if (len) {
		run_split(t, each, len, false);
		run_split(t, each, len, true);
	}
	free(each);
}

static void test_transcripts(void **state)
{
	for (size_t i = 0; i < sizeof(transcripts) / sizeof(transcripts[0]); i++)
		run_transcript(&transcripts[i]);
}

/* Every CONNECT failure code is sent as given, then CLOSE; likewise for BIND. */
static void test_every_reply_code(void **state)
{
	static const char *const names[] = {
	    "", "01", "02", "03", "04", "05", "06", "07", "08",
	};
	for (int rep = 1; rep <= 8; rep++) {
		char out[2 + 10 + 1], events[128];
		memcpy(out, M_NOAUTH, 2);
		memcpy(out + 2, FAIL("\x01"), 10);
		out[3] = (char)rep;
		struct transcript t = {"connect failure",
				       false,
				       IN(HELLO_NOAUTH CONNECT_V4),
				       false,
				       {.connect_rep = rep},
				       out,
				       12,
				       events};
		snprintf(events, sizeof(events),
			 "CONNECT 10.0.0.1:25;CLOSE %s CONNECT failed "
			 "req=10.0.0.1:25;",
			 names[rep]);
		run_transcript(&t);

		char out2[2 + 10 + 10];
		memcpy(out2, M_NOAUTH OK_BIND, 12);
		memcpy(out2 + 12, FAIL("\x01"), 10);
		out2[13] = (char)rep;
		struct transcript b = {"connect failure after bind",
				       false,
				       IN(HELLO_NOAUTH BIND_V4 CONNECT_V4),
				       false,
				       {.connect_rep = rep},
				       out2,
				       22,
				       events};
		snprintf(events, sizeof(events),
			 "BIND 127.0.0.2:0;CONNECT 10.0.0.1:25 from 127.0.0.2:0;CLOSE %s CONNECT "
			 "failed req=10.0.0.1:25;",
			 names[rep]);
		run_transcript(&b);

		memcpy(out, M_NOAUTH, 2);
		memcpy(out + 2, FAIL("\x01"), 10);
		out[3] = (char)rep;
		struct transcript c = {"bind failure",
				       false,
				       IN(HELLO_NOAUTH BIND_V4 CONNECT_V4),
				       false,
				       {.bind_rep = rep},
				       out,
				       12,
				       events};
		snprintf(events, sizeof(events),
			 "BIND 127.0.0.2:0;CLOSE %s BIND refused "
			 "req=127.0.0.2:0;",
			 names[rep]);
		run_transcript(&c);
	}
}

/* A name of 255 octets, the longest a request can carry. */
static void test_long_name(void **state)
{
	char in[3 + 5 + 255 + 2], events[400];
	memcpy(in, HELLO_NOAUTH "\x05\x01\x00\x03\xff", 8);
	memset(in + 8, 'a', 255);
	memcpy(in + 8 + 255, "\x01\xbb", 2);
	int n =
	    snprintf(events, sizeof(events), "CLOSE 08 domain name targets are not supported req=");
	memset(events + n, 'a', 255);
	snprintf(events + n + 255, sizeof(events) - (size_t)n - 255, ":443;");
	struct transcript t = {
	    "long name", false, in, sizeof(in), false, {}, OUT(M_NOAUTH FAIL("\x08")), events};
	run_transcript(&t);
}

static void test_rep_from_errno(void **state)
{
	assert_int_equal(kumo_socks5_rep_from_errno(0), KUMO_SOCKS5_REP_SUCCEEDED);
	assert_int_equal(kumo_socks5_rep_from_errno(-ENETUNREACH), KUMO_SOCKS5_REP_NET_UNREACHABLE);
	assert_int_equal(kumo_socks5_rep_from_errno(ENETDOWN), KUMO_SOCKS5_REP_NET_UNREACHABLE);
	assert_int_equal(kumo_socks5_rep_from_errno(-EHOSTUNREACH),
			 KUMO_SOCKS5_REP_HOST_UNREACHABLE);
	assert_int_equal(kumo_socks5_rep_from_errno(-EHOSTDOWN), KUMO_SOCKS5_REP_HOST_UNREACHABLE);
	assert_int_equal(kumo_socks5_rep_from_errno(-ECONNREFUSED), KUMO_SOCKS5_REP_CONN_REFUSED);
	assert_int_equal(kumo_socks5_rep_from_errno(-ETIMEDOUT), KUMO_SOCKS5_REP_TTL_EXPIRED);
	assert_int_equal(kumo_socks5_rep_from_errno(-ETIME), KUMO_SOCKS5_REP_TTL_EXPIRED);
	assert_int_equal(kumo_socks5_rep_from_errno(-EACCES), KUMO_SOCKS5_REP_NOT_ALLOWED);
	assert_int_equal(kumo_socks5_rep_from_errno(-EPERM), KUMO_SOCKS5_REP_NOT_ALLOWED);
	assert_int_equal(kumo_socks5_rep_from_errno(-EAFNOSUPPORT),
			 KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED);
	assert_int_equal(kumo_socks5_rep_from_errno(-EADDRNOTAVAIL),
			 KUMO_SOCKS5_REP_GENERAL_FAILURE);
	assert_int_equal(kumo_socks5_rep_from_errno(-EMFILE), KUMO_SOCKS5_REP_GENERAL_FAILURE);
	assert_string_equal(kumo_socks5_rep_text(0), "succeeded");
	assert_string_equal(kumo_socks5_rep_text(5), "connection refused");
	assert_string_equal(kumo_socks5_rep_text(8), "address type not supported");
	assert_string_equal(kumo_socks5_rep_text(9), "unassigned");
	assert_string_equal(kumo_socks5_rep_text(0xff), "unassigned");
}

static void expect_close(struct kumo_socks5 *m, uint64_t now, const char *reason)
{
	struct kumo_socks5_ev ev;
	kumo_socks5_next(m, now, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CLOSE);
	assert_int_equal(ev.rep, KUMO_SOCKS5_REP_NONE);
	assert_string_equal(ev.reason, reason);
	kumo_socks5_next(m, now, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
}

static void test_timeouts(void **state)
{
	struct kumo_socks5_cfg cfg = {.auth_required = true, .timeout_ms = 5000};
	struct kumo_socks5 *m;
	struct kumo_socks5_ev ev;

	/* Nothing arrives: the method offer times out, through tick() or next(). */
	assert_int_equal(kumo_socks5_new(&cfg, NOW, &m), 0);
	assert_int_equal(kumo_socks5_deadline(m), NOW + 5000);
	kumo_socks5_tick(m, NOW + 4999);
	kumo_socks5_next(m, NOW + 4999, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	kumo_socks5_tick(m, NOW + 5000);
	assert_int_equal(kumo_socks5_deadline(m), UINT64_MAX);
	expect_close(m, NOW + 5000, "timeout waiting for the method offer");
	kumo_socks5_free(m);

	assert_int_equal(kumo_socks5_new(&cfg, NOW, &m), 0);
	kumo_socks5_next(m, NOW + 6000, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CLOSE);
	kumo_socks5_free(m);

	/* A complete message restarts the wait; a partial one does not. */
	assert_int_equal(kumo_socks5_new(&cfg, NOW, &m), 0);
	assert_int_equal(kumo_socks5_push(m, HELLO_AUTH, 3), 0);
	kumo_socks5_next(m, NOW + 3000, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	assert_int_equal(kumo_socks5_deadline(m), NOW + 8000);
	assert_int_equal(kumo_socks5_push(m, "\x01\x01", 2), 0);
	kumo_socks5_next(m, NOW + 7000, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	assert_int_equal(kumo_socks5_deadline(m), NOW + 8000);
	kumo_socks5_tick(m, NOW + 8000);
	expect_close(m, NOW + 8000, "timeout waiting for credentials");
	kumo_socks5_free(m);

	/* No deadline while a decision is pending; the wait restarts after it. */
	assert_int_equal(kumo_socks5_new(&cfg, NOW, &m), 0);
	assert_int_equal(kumo_socks5_push(m, HELLO_AUTH CREDS_UP, 3 + 5), 0);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_AUTH);
	assert_int_equal(kumo_socks5_deadline(m), UINT64_MAX);
	kumo_socks5_tick(m, NOW + 100000);
	assert_int_equal(kumo_socks5_auth_done(m, true), 0);
	assert_int_equal(kumo_socks5_deadline(m), UINT64_MAX);
	kumo_socks5_next(m, NOW + 100000, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	assert_int_equal(kumo_socks5_deadline(m), NOW + 105000);
	kumo_socks5_tick(m, NOW + 105000);
	expect_close(m, NOW + 105000, "timeout waiting for a request");
	kumo_socks5_free(m);

	/* After BIND the CONNECT has its own wait; RELAY ends all deadlines. */
	cfg.auth_required = false;
	assert_int_equal(kumo_socks5_new(&cfg, NOW, &m), 0);
	assert_int_equal(kumo_socks5_push(m, HELLO_NOAUTH BIND_V4, 3 + 10), 0);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_BIND);
	assert_int_equal(kumo_socks5_bind_done(m, KUMO_SOCKS5_REP_SUCCEEDED, NULL), 0);
	kumo_socks5_next(m, NOW + 10, &ev);
	assert_int_equal(kumo_socks5_deadline(m), NOW + 5010);
	assert_int_equal(kumo_socks5_push(m, CONNECT_V4, 10), 0);
	kumo_socks5_next(m, NOW + 20, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CONNECT);
	assert_non_null(ev.source);
	assert_int_equal(kumo_socks5_connect_done(m, KUMO_SOCKS5_REP_SUCCEEDED, NULL), 0);
	kumo_socks5_next(m, NOW + 20, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_RELAY);
	kumo_socks5_tick(m, NOW + 1000000);
	kumo_socks5_next(m, NOW + 1000000, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	assert_int_equal(kumo_socks5_deadline(m), UINT64_MAX);
	/* 0.0.0.0:0 when no local address is given */
	size_t n;
	const uint8_t *o = kumo_socks5_output(m, &n);
	assert_int_equal(n, 2 + 10 + 10);
	assert_memory_equal(o, M_NOAUTH OK_BIND "\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00", n);
	kumo_socks5_free(m);
}

static void test_api_errors(void **state)
{
	struct kumo_socks5 *m;
	struct kumo_socks5_ev ev;
	uint8_t big[KUMO_SOCKS5_INPUT_MAX + 1] = {0};
	size_t n;

	assert_int_equal(kumo_socks5_new(NULL, NOW, &m), 0);
	assert_int_equal(kumo_socks5_auth_done(m, true), -EBUSY);
	assert_int_equal(kumo_socks5_bind_done(m, 0, NULL), -EBUSY);
	assert_int_equal(kumo_socks5_connect_done(m, 0, NULL), -EBUSY);
	assert_null(kumo_socks5_user(m));
	assert_null(kumo_socks5_leftover(m, &n));
	assert_int_equal(n, 0);
	assert_int_equal(kumo_socks5_push(m, big, sizeof(big)), -ENOBUFS);
	assert_int_equal(kumo_socks5_push(m, big, KUMO_SOCKS5_INPUT_MAX), -0);
	assert_null(kumo_socks5_input_space(m, &n));
	assert_int_equal(n, 0);
	assert_int_equal(kumo_socks5_push(m, big, 1), -ENOBUFS);
	kumo_socks5_next(m, NOW, &ev); /* "\x00": not version 5 */
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CLOSE);
	assert_int_equal(kumo_socks5_push(m, big, 1), -EPIPE);
	assert_null(kumo_socks5_input_space(m, &n));
	kumo_socks5_free(m);
	kumo_socks5_free(NULL);

	/* A decision pending: nothing parsed, other decisions refused; input still buffered. */
	assert_int_equal(kumo_socks5_new(NULL, NOW, &m), 0);
	assert_int_equal(kumo_socks5_push(m, HELLO_NOAUTH CONNECT_V4 CONNECT_V4, 23), 0);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CONNECT);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_NONE);
	assert_int_equal(kumo_socks5_auth_done(m, true), -EBUSY);
	assert_int_equal(kumo_socks5_bind_done(m, 0, NULL), -EBUSY);
	assert_int_equal(kumo_socks5_push(m, "x", 1), 0);
	uint8_t *sp = kumo_socks5_input_space(m, &n);
	assert_non_null(sp);
	assert_int_equal(n, KUMO_SOCKS5_INPUT_MAX - 24);
	memcpy(sp, "yz", 2);
	kumo_socks5_input_commit(m, 2);
	assert_int_equal(kumo_socks5_connect_done(m, 0, NULL), 0);
	assert_int_equal(kumo_socks5_connect_done(m, 0, NULL), -EBUSY);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_RELAY);
	const uint8_t *left = kumo_socks5_leftover(m, &n);
	assert_int_equal(n, 13);
	assert_memory_equal(left, CONNECT_V4 "xyz", 13);
	/* partial consumption of output, and over-consumption is clamped */
	const uint8_t *o = kumo_socks5_output(m, &n);
	assert_int_equal(n, 12);
	assert_int_equal(o[0], 5);
	kumo_socks5_output_consumed(m, 5);
	o = kumo_socks5_output(m, &n);
	assert_int_equal(n, 7);
	kumo_socks5_output_consumed(m, 100);
	kumo_socks5_output(m, &n);
	assert_int_equal(n, 0);
	kumo_socks5_free(m);

	/* Input compaction: the buffer is reused once parsed bytes are dropped. */
	assert_int_equal(kumo_socks5_new(NULL, NOW, &m), 0);
	uint8_t fill[KUMO_SOCKS5_INPUT_MAX];
	memset(fill, 0, sizeof(fill));
	memcpy(fill, "\x05\x01\x00\x05\x01\x00\x01", 7);
	assert_int_equal(kumo_socks5_push(m, fill, 3), 0);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(kumo_socks5_push(m, fill + 3, KUMO_SOCKS5_INPUT_MAX - 3), 0);
	assert_int_equal(kumo_socks5_push(m, "\x01\x02\x03", 3), 0); /* compacts */
	assert_int_equal(kumo_socks5_push(m, "\x04", 1), -ENOBUFS);
	kumo_socks5_next(m, NOW, &ev);
	assert_int_equal(ev.type, KUMO_SOCKS5_EV_CONNECT);
	assert_int_equal(kumo_socks5_connect_done(m, 0, NULL), 0);
	kumo_socks5_next(m, NOW, &ev);
	left = kumo_socks5_leftover(m, &n);
	assert_int_equal(n, KUMO_SOCKS5_INPUT_MAX - 3 - 10 + 3);
	assert_memory_equal(left + n - 3, "\x01\x02\x03", 3);
	kumo_socks5_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_transcripts),	   cmocka_unit_test(test_every_reply_code),
	    cmocka_unit_test(test_rep_from_errno), cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_api_errors),	   cmocka_unit_test(test_long_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
