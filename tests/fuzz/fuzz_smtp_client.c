/* libFuzzer target for the SMTP client machine. The first bytes choose the configuration,
 * the transactions sent at each READY and how input is split; the rest is what the server
 * sends. The same input is fed whole, in random pieces and one byte at a time: outputs and
 * events must be identical, and every result well formed, or the target aborts. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/smtp_client.h"

#define HEADER 4
#define NOW 1000
#define MAX_TXN 3

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

static const char *const messages[] = {
    "Subject: x\r\n\r\n.dot\r\n..two\r\n.\r\nend",
    "",
    ".\r\n",
    "a\nb\n.\n\r\n.\r",
    "caf\xc3\xa9\r\n",
};

static const struct kumo_smtp_client_rcpt rcpts[] = {
    {.addr = "a@x.test",
     .notify = KUMO_DSN_NOTIFY_FAILURE | KUMO_DSN_NOTIFY_DELAY,
     .orcpt = "rfc822;a@x.test"},
    {.addr = "\xc3\xbc@x.test", .notify = KUMO_DSN_NOTIFY_NEVER},
    {.addr = "b@x.test"},
};

struct run {
	struct kumo_smtp_client *c;
	struct kumo_smtp_client_txn txns[MAX_TXN];
	unsigned ntxn;
	unsigned sent; /* transactions started */
	bool quit;     /* quit() after the last transaction */
	bool quitted;
	bool over; /* FAILED or CLOSED seen */
	struct sbuf out, ev;
	uint32_t rng; /* split and API-path choices, differ per run */
};

static uint32_t rnd(struct run *r)
{
	r->rng ^= r->rng << 13;
	r->rng ^= r->rng >> 17;
	r->rng ^= r->rng << 5;
	return r->rng;
}

static void take_output(struct run *r)
{
	for (;;) {
		size_t n, k;
		const char *o = kumo_smtp_client_output(r->c, &n);

		if (!n)
			return;
		/* Consume in pieces sometimes, as a partial write would. */
		k = (rnd(r) & 3) == 0 && n > 1 ? n / 2 : n;
		sb_put(&r->out, o, k);
		kumo_smtp_client_output_consumed(r->c, k);
	}
}

static void log_reply(struct run *r, const struct kumo_smtp_client_reply *rep)
{
	char num[48];

	if (!rep || !rep->enhanced || !rep->text)
		abort();
	if (rep->code && (rep->code < 200 || rep->code > 599))
		abort();
	if (strchr(rep->text, '\r'))
		abort();
	snprintf(num, sizeof(num), "%d %d %d", rep->code, rep->local, (int)rep->command);
	sb_str(&r->ev, num);
	sb_str(&r->ev, rep->enhanced);
	sb_str(&r->ev, rep->text);
}

static void on_event(struct run *r, const struct kumo_smtp_client_ev *ev)
{
	const struct kumo_smtp_client_result *res;
	uint8_t t = (uint8_t)ev->type;

	if (r->over)
		abort(); /* nothing comes after FAILED or CLOSED */
	sb_put(&r->ev, &t, 1);
	switch (ev->type) {
	case KUMO_SMTP_CLIENT_EV_READY:
		if (r->sent < r->ntxn) {
			if (kumo_smtp_client_send(r->c, &r->txns[r->sent++]) != 0)
				abort();
			if (kumo_smtp_client_send(r->c, &r->txns[0]) != -EBUSY)
				abort();
		} else if (r->quit && !r->quitted) {
			if (kumo_smtp_client_quit(r->c) != 0)
				abort();
			r->quitted = true;
		}
		break;
	case KUMO_SMTP_CLIENT_EV_TXN_DONE:
		res = ev->result;
		if (!r->sent || res->nrcpt != r->txns[r->sent - 1].nrcpt ||
		    res->accepted > res->nrcpt)
			abort();
		for (size_t i = 0; i < res->nrcpt; i++) {
			log_reply(r, &res->rcpt[i]);
			if (!res->rcpt[i].code)
				abort(); /* every recipient gets an answer */
		}
		log_reply(r, res->mail);
		log_reply(r, res->data);
		break;
	case KUMO_SMTP_CLIENT_EV_FAILED:
		log_reply(r, ev->reply);
		if (ev->reply->code < 400)
			abort();
		r->over = true;
		break;
	case KUMO_SMTP_CLIENT_EV_CLOSED:
		if (!r->quitted)
			abort();
		r->over = true;
		break;
	case KUMO_SMTP_CLIENT_EV_NONE:
		abort();
	}
}

static void drain(struct run *r)
{
	struct kumo_smtp_client_ev ev;

	for (;;) {
		if (kumo_smtp_client_next(r->c, NOW, &ev) != 0)
			abort();
		take_output(r);
		if (ev.type == KUMO_SMTP_CLIENT_EV_NONE)
			break;
		on_event(r, &ev);
		take_output(r);
	}
	/* Harmless calls between events: a tick before the deadline and a look at it. */
	kumo_smtp_client_tick(r->c, NOW);
	if (kumo_smtp_client_deadline(r->c) <= NOW)
		abort();
}

/* Feeds n bytes by push() or through input_space/commit, draining when full. */
static void feed(struct run *r, const uint8_t *p, size_t n)
{
	while (n) {
		size_t space, k;
		uint8_t *dst;

		if (rnd(r) & 1) {
			int rc = kumo_smtp_client_push(r->c, p, n);

			if (rc == 0)
				break;
			if (rc == -EPIPE)
				return;
			if (rc != -ENOBUFS)
				abort();
		}
		dst = kumo_smtp_client_input_space(r->c, &space);
		if (!dst) {
			drain(r);
			dst = kumo_smtp_client_input_space(r->c, &space);
			if (!dst)
				return; /* finished, or input held full while idle */
		}
		k = n < space ? n : space;
		memcpy(dst, p, k);
		kumo_smtp_client_input_commit(r->c, k);
		p += k;
		n -= k;
	}
	drain(r);
}

enum mode { WHOLE, PIECES, BYTES };

static void run(struct run *r, const struct kumo_smtp_client_cfg *cfg, bool eof, const uint8_t *in,
		size_t len, enum mode mode)
{
	if (kumo_smtp_client_new(cfg, NOW, &r->c))
		abort();
	drain(r);
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
	if (eof) {
		kumo_smtp_client_input_eof(r->c);
		drain(r);
	}
	/* Past any deadline: a timeout unless idle or over. */
	kumo_smtp_client_tick(r->c, UINT64_MAX / 2);
	drain(r);
	kumo_smtp_client_free(r->c);
	r->c = NULL;
}

static void compare(const struct run *a, const struct run *b)
{
	if (a->out.n != b->out.n || (a->out.n && memcmp(a->out.p, b->out.p, a->out.n)))
		abort();
	if (a->ev.n != b->ev.n || (a->ev.n && memcmp(a->ev.p, b->ev.p, a->ev.n)))
		abort();
}

/* Transactions from the header: recipients, DSN, 8-bit, SMTPUTF8, message, SIZE. */
static void make_txns(struct run *r, uint8_t sel, uint8_t more)
{
	r->ntxn = 1 + sel % MAX_TXN;
	for (unsigned i = 0; i < r->ntxn; i++) {
		struct kumo_smtp_client_txn *t = &r->txns[i];
		unsigned v = (unsigned)(sel >> 2) + i * 7u + more;
		const char *m = messages[v % (sizeof(messages) / sizeof(messages[0]))];

		memset(t, 0, sizeof(*t));
		t->sender = v & 8 ? "" : "s@y.test";
		t->rcpts = v & 16 ? rcpts : rcpts + 2;
		t->nrcpt = v & 16 ? 1 + (v >> 5) % 3 : 1;
		t->ret = (enum kumo_dsn_ret)(v % 3);
		t->envid = v & 32 ? "id+2B1" : NULL;
		t->body_8bit = v & 64;
		t->smtputf8 = (more & 1) != 0;
		t->data = (const uint8_t *)m;
		t->data_len = strlen(m);
		t->declared_size = more & 2 ? (size_t)more * 97 : 0;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kumo_smtp_client_cfg cfg = {.ehlo_name = "client.fuzz"};
	struct run runs[3];
	uint8_t flags;
	size_t nruns;

	if (size < HEADER)
		return 0;
	flags = data[0];
	cfg.no_pipelining = flags & 1;
	cfg.no_chunking = flags & 2;
	memset(runs, 0, sizeof(runs));
	for (int i = 0; i < 3; i++) {
		make_txns(&runs[i], data[2], data[3]);
		runs[i].quit = flags & 4;
		runs[i].rng = 0x9e3779b9u ^ ((uint32_t)data[1] << (8 * i)) ^ (uint32_t)i;
	}
	data += HEADER;
	size -= HEADER;
	nruns = size <= 4096 ? 3 : 2;
	run(&runs[0], &cfg, flags & 8, data, size, WHOLE);
	run(&runs[1], &cfg, flags & 8, data, size, PIECES);
	compare(&runs[0], &runs[1]);
	if (nruns == 3) {
		run(&runs[2], &cfg, flags & 8, data, size, BYTES);
		compare(&runs[0], &runs[2]);
	}
	for (int i = 0; i < 3; i++) {
		free(runs[i].out.p);
		free(runs[i].ev.p);
	}
	return 0;
}
