/* libFuzzer target for the SOCKS5 server machine. The first bytes choose the configuration
 * and the embedder's answers (credentials accepted? BIND and CONNECT reply codes and the
 * addresses reported); the rest is what the client sends. The input is fed whole, in random
 * pieces and one byte at a time: outputs, events and relayed bytes must be identical, the
 * output well formed and bounded, or the target aborts. */
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/socks5.h"

#define HEADER 3
#define NOW 1000
#define OUT_BOUND 48 /* method, auth, BIND and CONNECT replies */

struct sbuf {
	uint8_t *p;
	size_t n, cap;
};

static void sb_put(struct sbuf *b, const void *p, size_t n)
{
	if (!n)
		return; /* nothing to copy: b->p may still be NULL */
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

struct run {
	struct kumo_socks5 *m;
	uint8_t flags, bind_rep, connect_rep;
	struct sbuf out, ev, relay;
	bool done;    /* RELAY or CLOSE seen */
	bool relayed; /* RELAY seen */
	uint64_t seed;
};

static uint32_t rnd(struct run *r)
{
	r->seed = r->seed * 6364136223846793005ULL + 1442695040888963407ULL;
	return (uint32_t)(r->seed >> 33);
}

static void local_addr(struct run *r, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (r->flags & 4) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr.s6_addr[15] = 1;
		a->sin6_port = htons(4242);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(0x7f000002);
		a->sin_port = htons(4242);
	}
}

static void take_output(struct run *r)
{
	size_t n;
	const uint8_t *o = kumo_socks5_output(r->m, &n);
	if (n > 1 && (rnd(r) & 1))
		n = 1 + rnd(r) % n;
	sb_put(&r->out, o, n);
	kumo_socks5_output_consumed(r->m, n);
	if (r->out.n > OUT_BOUND)
		abort();
}

static void log_event(struct run *r, const struct kumo_socks5_ev *ev)
{
	uint8_t t = (uint8_t)ev->type;
	sb_put(&r->ev, &t, 1);
	switch (ev->type) {
	case KUMO_SOCKS5_EV_AUTH:
		if (ev->user_len > 255 || ev->pass_len > 255 || strlen(ev->user) > ev->user_len)
			abort();
		sb_put(&r->ev, ev->user, ev->user_len + 1);
		sb_put(&r->ev, ev->pass, ev->pass_len + 1);
		break;
	case KUMO_SOCKS5_EV_BIND:
	case KUMO_SOCKS5_EV_CONNECT:
		if (!ev->req ||
		    (ev->req->addr.ss_family != AF_INET && ev->req->addr.ss_family != AF_INET6))
			abort();
		sb_put(&r->ev, &ev->req->addr, sizeof(ev->req->addr));
		sb_put(&r->ev, &ev->req->port, sizeof(ev->req->port));
		if (ev->source)
			sb_put(&r->ev, ev->source, sizeof(*ev->source));
		break;
	case KUMO_SOCKS5_EV_CLOSE:
		if (!ev->reason)
			abort();
		sb_put(&r->ev, &ev->rep, sizeof(ev->rep));
		sb_put(&r->ev, ev->reason, strlen(ev->reason) + 1);
		if (ev->req) {
			sb_put(&r->ev, &ev->req->cmd, 1);
			sb_put(&r->ev, ev->req->host, ev->req->host_len);
		}
		break;
	default:
		break;
	}
}

static void decide(struct run *r, const struct kumo_socks5_ev *ev)
{
	struct sockaddr_storage a;
	local_addr(r, &a);
	int rc = 0;
	switch (ev->type) {
	case KUMO_SOCKS5_EV_AUTH:
		rc = kumo_socks5_auth_done(r->m, r->flags & 2);
		break;
	case KUMO_SOCKS5_EV_BIND:
		rc = kumo_socks5_bind_done(r->m, r->bind_rep,
					   (r->flags & 8) ? (struct sockaddr *)&a : NULL);
		break;
	case KUMO_SOCKS5_EV_CONNECT:
		rc = kumo_socks5_connect_done(r->m, r->connect_rep,
					      (r->flags & 16) ? (struct sockaddr *)&a : NULL);
		break;
	default:
		break;
	}
	if (rc != 0)
		abort();
}

static void drain(struct run *r)
{
	struct kumo_socks5_ev ev;
	for (;;) {
		kumo_socks5_next(r->m, NOW, &ev);
		take_output(r);
		if (ev.type == KUMO_SOCKS5_EV_NONE)
			break;
		if (r->done)
			abort(); /* nothing after RELAY or CLOSE */
		log_event(r, &ev);
		if (ev.type == KUMO_SOCKS5_EV_RELAY || ev.type == KUMO_SOCKS5_EV_CLOSE)
			r->done = true;
		if (ev.type == KUMO_SOCKS5_EV_RELAY)
			r->relayed = true;
		decide(r, &ev);
	}
	size_t n;
	const uint8_t *o = kumo_socks5_output(r->m, &n);
	sb_put(&r->out, o, n);
	kumo_socks5_output_consumed(r->m, n);
	kumo_socks5_tick(r->m, NOW);
	if (kumo_socks5_deadline(r->m) <= NOW)
		abort();
}

static void feed(struct run *r, const uint8_t *p, size_t n)
{
	while (n) {
		size_t k = n;
		if (rnd(r) & 1) {
			int rc = kumo_socks5_push(r->m, p, k);
			if (rc == -EPIPE) {
				sb_put(&r->relay, p, n);
				return;
			}
			if (rc == -ENOBUFS) {
				k = 1; /* a byte fits whenever the machine can make progress */
				rc = kumo_socks5_push(r->m, p, k);
			}
			if (rc == -ENOBUFS) {
				/* full while a decision is pending cannot happen: decisions are
				 * made at once, so the buffer holds less than one message */
				abort();
			}
		} else {
			size_t space;
			uint8_t *dst = kumo_socks5_input_space(r->m, &space);
			if (!dst) {
				if (!r->done)
					abort();
				sb_put(&r->relay, p, n);
				return;
			}
			if (k > space)
				k = space;
			memcpy(dst, p, k);
			kumo_socks5_input_commit(r->m, k);
		}
		p += k;
		n -= k;
		drain(r);
	}
}

/* mode 0: whole; 1: random pieces; 2: byte at a time */
static void run_mode(struct run *r, const uint8_t *hdr, const uint8_t *in, size_t len, int mode)
{
	memset(r, 0, sizeof(*r));
	r->flags = hdr[0];
	r->bind_rep = hdr[1] % 9;
	r->connect_rep = hdr[2] % 9;
	r->seed = (uint64_t)mode * 0x9e3779b97f4a7c15ULL + len;
	struct kumo_socks5_cfg cfg = {.auth_required = r->flags & 1};
	if (kumo_socks5_new(&cfg, NOW, &r->m) != 0)
		abort();
	size_t at = 0;
	while (at < len) {
		size_t k = len - at;
		if (mode == 1)
			k = 1 + rnd(r) % k;
		else if (mode == 2)
			k = 1;
		feed(r, in + at, k);
		at += k;
	}
	if (r->flags & 32) {
		kumo_socks5_input_eof(r->m);
		drain(r);
	}
	size_t n;
	const uint8_t *left = kumo_socks5_leftover(r->m, &n);
	struct sbuf relay = {0};
	sb_put(&relay, left, n);
	sb_put(&relay, r->relay.p, r->relay.n);
	free(r->relay.p);
	r->relay = relay;
	kumo_socks5_free(r->m);
}

static bool same(const struct sbuf *a, const struct sbuf *b)
{
	return a->n == b->n && (a->n == 0 || memcmp(a->p, b->p, a->n) == 0);
}

static void check_output(const struct run *r)
{
	/* method reply first: 05 00, 05 02 or 05 FF */
	if (r->out.n == 0)
		return;
	if (r->out.n < 2 || r->out.p[0] != 5)
		abort();
	if (r->out.p[1] != 0 && r->out.p[1] != 2 && r->out.p[1] != 0xff)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < HEADER)
		return 0;
	struct run runs[3];
	for (int mode = 0; mode < 3; mode++)
		run_mode(&runs[mode], data, data + HEADER, size - HEADER, mode);
	for (int mode = 1; mode < 3; mode++) {
		if (!same(&runs[0].out, &runs[mode].out) || !same(&runs[0].ev, &runs[mode].ev))
			abort();
		/* after a CLOSE the unread bytes are dropped, so compare only relayed ones */
		if (runs[0].relayed != runs[mode].relayed)
			abort();
		if (runs[0].relayed && !same(&runs[0].relay, &runs[mode].relay))
			abort();
	}
	check_output(&runs[0]);
	for (int mode = 0; mode < 3; mode++) {
		free(runs[mode].out.p);
		free(runs[mode].ev.p);
		free(runs[mode].relay.p);
	}
	return 0;
}
