/* libFuzzer target for the SMTP server machine: leading bytes pick the configuration, the
 * embedder's decisions and the input splits; the rest is the client's bytes. Fed whole, in
 * random pieces and byte by byte, outputs and events must match or the target aborts. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/smtp_server.h"

#define HEADER 4
#define NOW 1000

/* With flag 0x10 the client first opens a transaction, so that short inputs reach
 * RCPT, DATA and BDAT states. */
static const char prefix[] = "EHLO fuzz.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n";

struct sbuf {
	uint8_t *p;
	size_t n, cap;
};

static void sb_put(struct sbuf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s) + 1);
}

struct run {
	struct kumo_smtp_server *s;
	struct sbuf out, ev;
	uint8_t dec_seed;
	unsigned ndec; /* decisions made: the index picks the next one */
	uint32_t rng;  /* split and API-path choices, differ per run */
};

static uint32_t rnd(struct run *r)
{
	r->rng ^= r->rng << 13;
	r->rng ^= r->rng >> 17;
	r->rng ^= r->rng << 5;
	return r->rng;
}

/* The decision for the i-th decision event depends only on i and the seed, so every way
 * of feeding the input gets the same answers. */
static void decide(struct run *r)
{
	unsigned pick = (r->dec_seed * 7u + r->ndec * 13u + (r->ndec >> 3)) % 11;
	int rc;

	r->ndec++;
	switch (pick) {
	case 0:
		rc = kumo_smtp_server_reply(r->s, 550, "5.7.1", "Refused by policy");
		break;
	case 1:
		rc = kumo_smtp_server_reply(r->s, 451, NULL, "Try\nagain\r\tlater\n");
		break;
	case 2:
		rc = kumo_smtp_server_reply(r->s, 250, "2.6.0", "Fine\nreally");
		break;
	case 3:
		if (r->dec_seed & 0x80) {
			rc = kumo_smtp_server_reply(r->s, 421, "4.3.2", "Going down");
			break;
		}
		/* fall through */
	case 4:
		/* Invalid replies are refused and leave the decision pending. */
		if (kumo_smtp_server_reply(r->s, 354, NULL, "x") != -EINVAL ||
		    kumo_smtp_server_reply(r->s, 550, "4.0.0", "x") != -EINVAL)
			abort();
		/* fall through */
	default:
		rc = kumo_smtp_server_accept(r->s);
		break;
	}
	if (rc)
		abort();
	if (kumo_smtp_server_accept(r->s) != -EINVAL)
		abort();
}

/* Takes all output, or (when all is false) sometimes only part of it, as a partial write
 * would: the rest stays in the machine while more replies are appended. */
static void take_output(struct run *r, bool all)
{
	for (;;) {
		size_t n, k;
		const char *o = kumo_smtp_server_output(r->s, &n);

		if (!n)
			return;
		k = (rnd(r) & 3) == 0 && n > 1 ? n / 2 : n;
		sb_put(&r->out, o, k);
		kumo_smtp_server_output_consumed(r->s, k);
		if (!all && k < n)
			return;
	}
}

static void log_event(struct run *r, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(r->s);
	uint8_t t = (uint8_t)ev->type;
	char num[64];

	sb_put(&r->ev, &t, 1);
	switch (ev->type) {
	case KUMO_SMTP_EV_HELO:
		sb_str(&r->ev, ev->helo.name);
		sb_put(&r->ev, &ev->helo.esmtp, 1);
		break;
	case KUMO_SMTP_EV_MAIL:
		sb_str(&r->ev, txn->sender);
		snprintf(num, sizeof(num), "%d %d %d %zu %d", txn->body, txn->smtputf8, txn->ret,
			 txn->declared_size, txn->nrcpt == 0);
		sb_str(&r->ev, num);
		sb_str(&r->ev, txn->envid ? txn->envid : "-");
		break;
	case KUMO_SMTP_EV_RCPT:
		sb_str(&r->ev, ev->rcpt->addr);
		sb_str(&r->ev, ev->rcpt->orcpt ? ev->rcpt->orcpt : "-");
		sb_put(&r->ev, &ev->rcpt->notify, sizeof(ev->rcpt->notify));
		break;
	case KUMO_SMTP_EV_MESSAGE:
		if (!txn->sender || !txn->nrcpt)
			abort();
		for (size_t i = 0; i < txn->nrcpt; i++)
			sb_str(&r->ev, txn->rcpts[i].addr);
		sb_put(&r->ev, &txn->via_bdat, 1);
		sb_put(&r->ev, &txn->data_len, sizeof(txn->data_len));
		if (txn->data_len)
			sb_put(&r->ev, txn->data, txn->data_len);
		/* The machine promises CRLF line ends only. */
		for (size_t i = 0; i < txn->data_len; i++) {
			if (txn->data[i] == '\n' && (i == 0 || txn->data[i - 1] != '\r'))
				abort();
			if (txn->data[i] == '\r' &&
			    (i + 1 == txn->data_len || txn->data[i + 1] != '\n'))
				abort();
		}
		break;
	default:
		break;
	}
}

static bool drain(struct run *r)
{
	struct kumo_smtp_ev ev;
	bool closed = false;

	for (;;) {
		if (kumo_smtp_server_next(r->s, NOW, &ev) != 0)
			abort();
		take_output(r, ev.type == KUMO_SMTP_EV_NONE);
		if (ev.type == KUMO_SMTP_EV_NONE)
			break;
		log_event(r, &ev);
		if (ev.type == KUMO_SMTP_EV_CLOSE)
			closed = true;
		if (ev.type == KUMO_SMTP_EV_MAIL || ev.type == KUMO_SMTP_EV_RCPT ||
		    ev.type == KUMO_SMTP_EV_MESSAGE)
			decide(r);
		take_output(r, false);
	}
	/* Harmless calls between events: a tick before the deadline and a look at it. */
	kumo_smtp_server_tick(r->s, NOW);
	if (kumo_smtp_server_deadline(r->s) < NOW)
		abort();
	return closed;
}

/* Feeds n bytes by push() or through input_space/commit, draining when full. */
static void feed(struct run *r, const uint8_t *p, size_t n)
{
	while (n) {
		size_t space, k;
		uint8_t *dst;

		if (rnd(r) & 1) {
			int rc = kumo_smtp_server_push(r->s, p, n);

			if (rc == 0)
				break;
			if (rc == -EPIPE) /* closed */
				return;
			if (rc != -ENOBUFS)
				abort();
		}
		dst = kumo_smtp_server_input_space(r->s, &space);
		if (!dst) {
			drain(r);
			dst = kumo_smtp_server_input_space(r->s, &space);
			if (!dst)
				return; /* closed: the rest is not wanted */
		}
		k = n < space ? n : space;
		memcpy(dst, p, k);
		kumo_smtp_server_input_commit(r->s, k);
		p += k;
		n -= k;
	}
	drain(r);
}

enum mode { WHOLE, PIECES, BYTES };

static void run(struct run *r, const struct kumo_smtp_server_cfg *cfg, uint8_t flags,
		const uint8_t *in, size_t len, enum mode mode)
{
	if (kumo_smtp_server_new(cfg, NOW, &r->s))
		abort();
	if (flags & 0x40)
		kumo_smtp_server_refuse(r->s, 554, "5.7.1", "No\nthanks");
	else
		kumo_smtp_server_greet(r->s);
	drain(r);
	if (flags & 0x10)
		feed(r, (const uint8_t *)prefix, sizeof(prefix) - 1);
	switch (mode) {
	case WHOLE:
		feed(r, in, len);
		break;
	case PIECES:
		while (len) {
			size_t k = 1 + rnd(r) % 97;

			if (k > len)
				k = len;
			feed(r, in, k);
			in += k;
			len -= k;
		}
		break;
	case BYTES:
		for (size_t i = 0; i < len; i++)
			feed(r, in + i, 1);
		break;
	}
	if (flags & 0x20) {
		kumo_smtp_server_input_eof(r->s);
		drain(r);
	}
	/* Past any deadline: a timeout unless closed. */
	kumo_smtp_server_tick(r->s, UINT64_MAX / 2);
	drain(r);
	kumo_smtp_server_free(r->s);
	r->s = NULL;
}

static void compare(const struct run *a, const struct run *b)
{
	if (a->out.n != b->out.n || memcmp(a->out.p, b->out.p, a->out.n))
		abort();
	if (a->ev.n != b->ev.n || memcmp(a->ev.p, b->ev.p, a->ev.n))
		abort();
	if (a->ndec != b->ndec)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kumo_smtp_server_cfg cfg = {.hostname = "mx.fuzz"};
	struct run runs[3];
	uint8_t flags;
	size_t nruns;

	if (size < HEADER)
		return 0;
	flags = data[0];
	cfg.bare_eol = flags & 1 ? KUMO_SMTP_BARE_EOL_NORMALIZE : KUMO_SMTP_BARE_EOL_REJECT;
	if (flags & 2) {
		cfg.limits.max_line = 16 + data[3] % 64;
		cfg.limits.max_recipients = 1 + data[3] % 3;
		cfg.limits.max_message_size = 1 + data[3] % 200;
		cfg.limits.max_messages = 1 + data[3] % 3;
		cfg.limits.max_errors = 1 + data[3] % 5;
	} else if (flags & 4) {
		cfg.limits.max_message_size = 4096;
		cfg.limits.max_errors = 1000;
	}
	memset(runs, 0, sizeof(runs));
	for (int i = 0; i < 3; i++) {
		runs[i].dec_seed = data[2];
		runs[i].rng = 0x9e3779b9u ^ ((uint32_t)data[1] << (8 * i)) ^ (uint32_t)i;
	}
	data += HEADER;
	size -= HEADER;
	nruns = size <= 4096 ? 3 : 2;
	run(&runs[0], &cfg, flags, data, size, WHOLE);
	run(&runs[1], &cfg, flags, data, size, PIECES);
	compare(&runs[0], &runs[1]);
	if (nruns == 3) {
		run(&runs[2], &cfg, flags, data, size, BYTES);
		compare(&runs[0], &runs[2]);
	}
	for (int i = 0; i < 3; i++) {
		free(runs[i].out.p);
		free(runs[i].ev.p);
	}
	return 0;
}
