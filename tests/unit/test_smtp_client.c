/* Unit tests for the SMTP client machine: server transcripts (peer bytes, transactions to
 * send, expected client bytes and events) each run fed whole, split at every offset and one
 * byte at a time, which must all give the same bytes and events; plus timeouts and API edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/smtp_client.h"

#define NOW 1000

/* ---- Peer replies ---- */
#define GREET "220 mx.test ESMTP ready\r\n"
#define EHLO_REPLY(lines) "250-mx.test hello client.test\r\n" lines "250 HELP\r\n"
#define X_PIPE "250-PIPELINING\r\n"
#define X_SIZE "250-SIZE 10000\r\n"
#define X_8BIT "250-8BITMIME\r\n"
#define X_UTF8 "250-SMTPUTF8\r\n"
#define X_ENH "250-ENHANCEDSTATUSCODES\r\n"
#define X_CHUNK "250-CHUNKING\r\n"
#define X_DSN "250-DSN\r\n"
#define EHLO_PIPE EHLO_REPLY(X_PIPE X_SIZE X_8BIT X_ENH)
#define EHLO_PLAIN EHLO_REPLY(X_SIZE X_ENH)
#define MAIL_OK "250 2.1.0 Sender OK\r\n"
#define RCPT_OK "250 2.1.5 Recipient OK\r\n"
#define GO "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
#define QUEUED "250 2.0.0 Queued as 1234\r\n"
#define BYE "221 2.0.0 Bye\r\n"

/* ---- Client commands ---- */
#define C_EHLO "EHLO client.test\r\n"
#define C_HELO "HELO client.test\r\n"
#define C_MAIL "MAIL FROM:<a@b.test> SIZE=39\r\n"
#define C_RCPT1 "RCPT TO:<c@d.test>\r\n"
#define C_RCPT2 "RCPT TO:<e@d.test>\r\n"
#define C_RCPT3 "RCPT TO:<f@d.test>\r\n"
#define C_DATA "DATA\r\n"
#define C_QUIT "QUIT\r\n"
#define C_RSET "RSET\r\n"

/* 39 octets; lines starting with "." and no final line end. */
#define MSG "Subject: hi\r\n\r\n.dot\r\nmid\r\n..two\r\n.\r\nend"
#define MSG_STUFFED "Subject: hi\r\n\r\n..dot\r\nmid\r\n...two\r\n..\r\nend\r\n.\r\n"
#define C_BDAT "BDAT 39 LAST\r\n" MSG

/* ---- Transactions ---- */

static const struct kumo_smtp_client_rcpt rcpts3[] = {
    {.addr = "c@d.test"},
    {.addr = "e@d.test"},
    {.addr = "f@d.test"},
};

#define TXN(n)                                                                                     \
	{                                                                                          \
		.sender = "a@b.test", .rcpts = rcpts3, .nrcpt = (n), .data = (const uint8_t *)MSG, \
		.data_len = sizeof(MSG) - 1                                                        \
	}

static const struct kumo_smtp_client_txn txn1 = TXN(1);
static const struct kumo_smtp_client_txn txn2 = TXN(2);
static const struct kumo_smtp_client_txn txn3 = TXN(3);

static const struct kumo_smtp_client_rcpt dsn_rcpts[] = {
    {.addr = "c@d.test",
     .notify = KUMO_DSN_NOTIFY_SUCCESS | KUMO_DSN_NOTIFY_FAILURE,
     .orcpt = "rfc822;c+40d.test"},
    {.addr = "e@d.test", .notify = KUMO_DSN_NOTIFY_NEVER},
};

static const struct kumo_smtp_client_txn txn_dsn = {
    .sender = "",
    .rcpts = dsn_rcpts,
    .nrcpt = 2,
    .ret = KUMO_DSN_RET_HDRS,
    .envid = "QQ+2Bid",
    .data = (const uint8_t *)"x\r\n",
    .data_len = 3,
};

static const struct kumo_smtp_client_rcpt utf8_rcpt[] = {{.addr = "j\xc3\xbcrgen@d.test"}};

static const struct kumo_smtp_client_txn txn_utf8 = {
    .sender = "a@b.test",
    .rcpts = utf8_rcpt,
    .nrcpt = 1,
    .data = (const uint8_t *)"x\r\n",
    .data_len = 3,
};

static const struct kumo_smtp_client_txn txn_8bit = {
    .sender = "a@b.test",
    .rcpts = rcpts3,
    .nrcpt = 1,
    .body_8bit = true,
    .data = (const uint8_t *)"caf\xc3\xa9\r\n",
    .data_len = 7,
};

static const struct kumo_smtp_client_txn txn_big = {
    .sender = "a@b.test",
    .rcpts = rcpts3,
    .nrcpt = 2,
    .data = (const uint8_t *)"x\r\n",
    .data_len = 3,
    .declared_size = 10001,
};

static const struct kumo_smtp_client_txn txn_empty = {
    .sender = "a@b.test",
    .rcpts = rcpts3,
    .nrcpt = 1,
};

#define LEAD_DOT ".start\n.bare lf\r\nends with cr\r"

static const struct kumo_smtp_client_txn txn_lead_dot = {
    .sender = "a@b.test",
    .rcpts = rcpts3,
    .nrcpt = 1,
    .data = (const uint8_t *)LEAD_DOT,
    .data_len = sizeof(LEAD_DOT) - 1,
};

typedef void (*hook_fn)(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev);

struct transcript {
	const char *name;
	bool no_pipelining;
	bool no_chunking;
	const struct kumo_smtp_client_txn *const *txns; /* sent at successive READY events */
	size_t ntxn;
	bool quit;	    /* quit() at the READY after the last transaction */
	const char *in;	    /* every byte the peer sends */
	bool eof;	    /* the peer closes after sending everything */
	const char *out;    /* every byte the client writes */
	const char *events; /* the events, space separated */
	hook_fn hook;	    /* called on each event */
};

#define TXNS(...)                                                                                  \
	.txns = (const struct kumo_smtp_client_txn *const[]){__VA_ARGS__},                         \
	.ntxn = sizeof((const struct kumo_smtp_client_txn *const[]){__VA_ARGS__}) /                \
		sizeof(const struct kumo_smtp_client_txn *)

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

/* "code[ enhanced][ text]" with lines joined by "/", " (local)" when synthesized. */
static void sb_reply(struct sbuf *b, const struct kumo_smtp_client_reply *r)
{
	char num[16];

	if (!r->code) {
		sb_str(b, "-");
		return;
	}
	snprintf(num, sizeof(num), "%d", r->code);
	sb_str(b, num);
	if (*r->enhanced) {
		sb_str(b, " ");
		sb_str(b, r->enhanced);
	}
	if (*r->text) {
		sb_str(b, " ");
		for (const char *p = r->text; *p; p++)
			sb_put(b, *p == '\n' ? "/" : p, 1);
	}
	if (r->local)
		sb_str(b, " (local)");
}

struct run {
	const struct transcript *t;
	struct kumo_smtp_client *c;
	struct sbuf out, ev;
	size_t txn_i;
	bool quit_sent;
};

static void collect_output(struct run *r)
{
	size_t n;
	const char *o = kumo_smtp_client_output(r->c, &n);

	sb_put(&r->out, o, n);
	kumo_smtp_client_output_consumed(r->c, n);
}

static void log_event(struct sbuf *b, const struct kumo_smtp_client_ev *ev)
{
	if (b->n)
		sb_str(b, " ");
	switch (ev->type) {
	case KUMO_SMTP_CLIENT_EV_READY:
		sb_str(b, "READY");
		break;
	case KUMO_SMTP_CLIENT_EV_TXN_DONE:
		sb_str(b, "DONE(");
		for (size_t i = 0; i < ev->result->nrcpt; i++) {
			if (i)
				sb_str(b, " | ");
			sb_reply(b, &ev->result->rcpt[i]);
		}
		sb_str(b, "; data ");
		sb_reply(b, ev->result->data);
		sb_str(b, ")");
		break;
	case KUMO_SMTP_CLIENT_EV_FAILED:
		sb_str(b, "FAILED(");
		sb_reply(b, ev->reply);
		sb_str(b, ")");
		break;
	case KUMO_SMTP_CLIENT_EV_CLOSED:
		sb_str(b, "CLOSED");
		break;
	case KUMO_SMTP_CLIENT_EV_NONE:
		fail();
	}
}

/* Pulls events until the machine needs input, sending the scripted transactions. */
static void drain(struct run *r)
{
	struct kumo_smtp_client_ev ev;

	for (;;) {
		assert_int_equal(kumo_smtp_client_next(r->c, NOW, &ev), 0);
		collect_output(r);
		if (ev.type == KUMO_SMTP_CLIENT_EV_NONE)
			return;
		log_event(&r->ev, &ev);
		if (r->t->hook)
			r->t->hook(r->c, &ev);
		if (ev.type != KUMO_SMTP_CLIENT_EV_READY)
			continue;
		if (r->txn_i < r->t->ntxn) {
			assert_int_equal(kumo_smtp_client_send(r->c, r->t->txns[r->txn_i++]), 0);
		} else if (r->t->quit && !r->quit_sent) {
			assert_int_equal(kumo_smtp_client_quit(r->c), 0);
			r->quit_sent = true;
		}
		collect_output(r);
	}
}

/* Feeds bytes through push() or the zero-copy pair, draining when input is full. */
static void feed(struct run *r, const uint8_t *p, size_t n, bool zero_copy)
{
	while (n) {
		size_t space, k;
		void *dst;

		if (!zero_copy) {
			int rc = kumo_smtp_client_push(r->c, p, n);

			if (rc == 0)
				break;
			if (rc == -EPIPE)
				return;
			assert_int_equal(rc, -ENOBUFS);
		}
		dst = kumo_smtp_client_input_space(r->c, &space);
		if (!dst) {
			drain(r);
			if (kumo_smtp_client_input_space(r->c, &space))
				continue;
			return; /* finished, or held while idle */
		}
		k = n < space ? n : space;
		memcpy(dst, p, k);
		kumo_smtp_client_input_commit(r->c, k);
		p += k;
		n -= k;
		drain(r);
	}
	drain(r);
}

enum feed_mode { FEED_WHOLE, FEED_SPLIT, FEED_BYTES };

static void run_once(const struct transcript *t, enum feed_mode mode, size_t split)
{
	struct kumo_smtp_client_cfg cfg = {
	    .ehlo_name = "client.test",
	    .no_pipelining = t->no_pipelining,
	    .no_chunking = t->no_chunking,
	};
	const uint8_t *in = (const uint8_t *)t->in;
	size_t len = strlen(t->in);
	struct run r = {.t = t};

	assert_int_equal(kumo_smtp_client_new(&cfg, NOW, &r.c), 0);
	drain(&r);
	switch (mode) {
	case FEED_WHOLE:
		feed(&r, in, len, false);
		break;
	case FEED_SPLIT:
		feed(&r, in, split, false);
		feed(&r, in + split, len - split, false);
		break;
	case FEED_BYTES:
		for (size_t i = 0; i < len; i++)
			feed(&r, in + i, 1, true);
		break;
	}
	if (t->eof) {
		kumo_smtp_client_input_eof(r.c);
		drain(&r);
	}
	if (strcmp(r.out.p ? r.out.p : "", t->out) || strcmp(r.ev.p ? r.ev.p : "", t->events))
		fail_msg("%s (mode %d, split %zu):\n--- output\n%s\n--- expected\n%s\n"
			 "--- events\n%s\n--- expected\n%s",
			 t->name, mode, split, r.out.p, t->out, r.ev.p, t->events);
	assert_int_equal(r.txn_i, t->ntxn);
	kumo_smtp_client_free(r.c);
	free(r.out.p);
	free(r.ev.p);
}

static void run_transcript(void **state)
{
	const struct transcript *t = *state;
	size_t len = strlen(t->in);

	run_once(t, FEED_WHOLE, 0);
	for (size_t k = 1; k < len; k++)
		run_once(t, FEED_SPLIT, k);
	run_once(t, FEED_BYTES, 0);
}

/* ---- Hooks ---- */

static void caps_full_hook(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev)
{
	const struct kumo_smtp_client_caps *caps = kumo_smtp_client_caps(c);

	if (ev->type != KUMO_SMTP_CLIENT_EV_READY)
		return;
	assert_true(caps->esmtp);
	assert_true(caps->pipelining);
	assert_true(caps->size);
	assert_int_equal(caps->size_max, 10000);
	assert_true(caps->eightbitmime);
	assert_true(caps->smtputf8);
	assert_true(caps->enhancedstatuscodes);
	assert_true(caps->chunking);
	assert_true(caps->dsn);
	assert_true(caps->starttls);
}

static void helo_hook(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev)
{
	const struct kumo_smtp_client_caps *caps = kumo_smtp_client_caps(c);

	if (ev->type == KUMO_SMTP_CLIENT_EV_READY) {
		assert_false(caps->esmtp);
		assert_false(caps->pipelining);
		assert_false(caps->size);
		assert_false(caps->enhancedstatuscodes);
	}
}

/* Which command each reply answered, and the MAIL reply. */
static void commands_hook(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev)
{
	const struct kumo_smtp_client_result *res = ev->result;

	if (ev->type != KUMO_SMTP_CLIENT_EV_TXN_DONE)
		return;
	assert_int_equal(res->nrcpt, 3);
	assert_int_equal(res->accepted, 1);
	assert_int_equal(res->mail->code, 250);
	assert_string_equal(res->mail->enhanced, "2.1.0");
	assert_string_equal(res->mail->text, "Sender OK");
	assert_int_equal(res->mail->command, KUMO_SMTP_CLIENT_CMD_MAIL);
	assert_int_equal(res->rcpt[0].command, KUMO_SMTP_CLIENT_CMD_DATA_END);
	assert_int_equal(res->rcpt[1].command, KUMO_SMTP_CLIENT_CMD_RCPT);
	assert_int_equal(res->rcpt[2].command, KUMO_SMTP_CLIENT_CMD_RCPT);
	assert_false(res->rcpt[1].local);
	assert_int_equal(res->data->command, KUMO_SMTP_CLIENT_CMD_DATA_END);
}

static void size_hook(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev)
{
	if (ev->type == KUMO_SMTP_CLIENT_EV_TXN_DONE && ev->result->rcpt[0].local) {
		assert_int_equal(ev->result->mail->code, 0);
		assert_int_equal(ev->result->accepted, 0);
		assert_int_equal(ev->result->rcpt[0].command, KUMO_SMTP_CLIENT_CMD_NONE);
	}
}

static void fail_cmd_hook(struct kumo_smtp_client *c, const struct kumo_smtp_client_ev *ev)
{
	if (ev->type == KUMO_SMTP_CLIENT_EV_FAILED)
		assert_int_equal(ev->reply->command, KUMO_SMTP_CLIENT_CMD_DATA_END);
}

/* ---- Transcripts ---- */

#define DONE_OK2                                                                                   \
	"DONE(250 2.0.0 Queued as 1234 | 250 2.0.0 Queued as 1234; data 250 2.0.0 "                \
	"Queued as 1234)"
#define DONE_OK1 "DONE(250 2.0.0 Queued as 1234; data 250 2.0.0 Queued as 1234)"

static const struct transcript transcripts[] = {
    {
	.name = "pipelined DATA, dot-stuffing, QUIT",
	TXNS(&txn2),
	.quit = true,
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK RCPT_OK GO QUEUED BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED C_QUIT,
	.events = "READY " DONE_OK2 " READY CLOSED",
    },
    {
	.name = "one command at a time without PIPELINING",
	TXNS(&txn2),
	.quit = true,
	.in = GREET EHLO_PLAIN MAIL_OK RCPT_OK RCPT_OK GO QUEUED BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED C_QUIT,
	.events = "READY " DONE_OK2 " READY CLOSED",
    },
    {
	.name = "pipelined BDAT when CHUNKING is offered",
	TXNS(&txn1),
	.quit = true,
	.in = GREET EHLO_REPLY(X_PIPE X_SIZE X_8BIT X_UTF8 X_ENH X_CHUNK X_DSN "250-STARTTLS\r\n")
	    MAIL_OK RCPT_OK QUEUED BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_BDAT C_QUIT,
	.events = "READY " DONE_OK1 " READY CLOSED",
	.hook = caps_full_hook,
    },
    {
	.name = "BDAT one command at a time",
	TXNS(&txn1),
	.quit = true,
	.in = GREET EHLO_REPLY(X_SIZE X_ENH X_CHUNK) MAIL_OK RCPT_OK QUEUED BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_BDAT C_QUIT,
	.events = "READY " DONE_OK1 " READY CLOSED",
    },
    {
	.name = "CHUNKING offered but disabled: DATA",
	.no_chunking = true,
	TXNS(&txn1),
	.in = GREET EHLO_REPLY(X_PIPE X_SIZE X_ENH X_CHUNK) MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY " DONE_OK1 " READY",
    },
    {
	.name = "PIPELINING offered but disabled",
	.no_pipelining = true,
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY " DONE_OK1 " READY",
    },
    {
	.name = "empty message, leading dot, bare LF and final CR",
	TXNS(&txn_empty, &txn_lead_dot),
	.in = GREET EHLO_REPLY(X_PIPE) MAIL_OK RCPT_OK GO "250 ok\r\n" MAIL_OK RCPT_OK GO
							  "250 ok\r\n",
	.out = C_EHLO "MAIL FROM:<a@b.test>\r\n" C_RCPT1 C_DATA ".\r\n"
		      "MAIL FROM:<a@b.test>\r\n" C_RCPT1 C_DATA
		      "..start\n..bare lf\r\nends with cr\r\n.\r\n",
	.events = "READY DONE(250 ok; data 250 ok) READY DONE(250 ok; data 250 ok) READY",
    },
    {
	.name = "multi-line replies, enhanced codes stripped from every line",
	TXNS(&txn3),
	.in = "220-mx.test ESMTP\r\n220-second line\r\n220 third\r\n" EHLO_PIPE
	      "250-2.1.0 Sender\r\n250 2.1.0 OK\r\n"
	      "250 2.1.5 OK\r\n"
	      "550-5.1.1 No such\r\n550-5.1.1 user here\r\n550 5.1.1 really\r\n"
	      "452-4.2.2 Mailbox\r\n452-keep this\r\n452 4.2.2 full\r\n" GO
	      "250-2.0.0 Queued\r\n250-\r\n250 2.0.0 as 99\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_RCPT3 C_DATA MSG_STUFFED,
	.events = "READY DONE(250 2.0.0 Queued//as 99 | 550 5.1.1 No such/user here/really | "
		  "452 4.2.2 Mailbox/keep this/full; data 250 2.0.0 Queued//as 99) READY",
    },
    {
	.name = "no ENHANCEDSTATUSCODES: codes stay in the text; lenient line ends",
	TXNS(&txn2),
	.in = GREET "250-mx.test\n250 PIPELINING\n250\n250 2.1.5 OK\r\n"
		    "550 5.1.1 unknown\x01user\r\n" GO "250 2.0.0 done\r\n",
	.out = C_EHLO "MAIL FROM:<a@b.test>\r\n" C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED,
	.events = "READY DONE(250 2.0.0 done | 550 5.1.1 unknown user; data 250 2.0.0 done)"
		  " READY",
    },
    {
	.name = "per-recipient 4xx/5xx mixed with success",
	TXNS(&txn3),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "450 4.2.0 Greylisted\r\n"
					      "550 5.1.1 Unknown user\r\n" GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_RCPT3 C_DATA MSG_STUFFED,
	.events = "READY DONE(250 2.0.0 Queued as 1234 | 450 4.2.0 Greylisted | "
		  "550 5.1.1 Unknown user; data 250 2.0.0 Queued as 1234) READY",
	.hook = commands_hook,
    },
    {
	.name = "all refused, pipelined DATA refused: no data, RSET before the next",
	TXNS(&txn2, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK "550 5.1.1 No\r\n"
				      "451 4.3.0 Later\r\n"
				      "554 5.5.1 No valid recipients\r\n"
				      "250 2.0.0 Reset\r\n" MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA C_RSET C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(550 5.1.1 No | 451 4.3.0 Later; data -) READY " DONE_OK1 " READY",
    },
    {
	.name = "all refused, DATA got 354: a lone dot (RFC 2920 3.1), no RSET after",
	TXNS(&txn1, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK "550 5.1.1 No\r\n" GO
				      "554 5.5.1 No valid recipients\r\n" MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA ".\r\n" C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(550 5.1.1 No; data -) READY " DONE_OK1 " READY",
    },
    {
	.name = "all refused without PIPELINING: DATA never sent, RSET before the next",
	TXNS(&txn2, &txn1),
	.quit = true,
	.in = GREET EHLO_PLAIN MAIL_OK "550 5.1.1 No\r\n"
				       "550 5.1.1 Nope\r\n"
				       "250 2.0.0 OK\r\n" MAIL_OK "550 5.1.1 No\r\n" BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_RSET C_MAIL C_RCPT1 C_QUIT,
	.events = "READY DONE(550 5.1.1 No | 550 5.1.1 Nope; data -) READY "
		  "DONE(550 5.1.1 No; data -) READY CLOSED",
    },
    {
	.name = "MAIL refused, pipelined: recipients get the MAIL reply, no RSET",
	TXNS(&txn2, &txn1),
	.in = GREET EHLO_PIPE "553 5.1.8 Bad sender\r\n"
			      "503 5.5.1 No MAIL\r\n"
			      "503 5.5.1 No MAIL\r\n"
			      "503 5.5.1 No MAIL\r\n" MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(553 5.1.8 Bad sender | 553 5.1.8 Bad sender; data -) READY " DONE_OK1
		  " READY",
    },
    {
	.name = "MAIL refused, one at a time: nothing more sent",
	TXNS(&txn2),
	.quit = true,
	.in = GREET EHLO_PLAIN "451 4.3.0 Try later\r\n" BYE,
	.out = C_EHLO C_MAIL C_QUIT,
	.events = "READY DONE(451 4.3.0 Try later | 451 4.3.0 Try later; data -) READY "
		  "CLOSED",
    },
    {
	.name = "end of data refused 552",
	TXNS(&txn2, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK RCPT_OK GO
	"552 5.3.4 Message too big\r\n" MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(552 5.3.4 Message too big | 552 5.3.4 Message too big; "
		  "data 552 5.3.4 Message too big) READY " DONE_OK1 " READY",
    },
    {
	.name = "DATA command refused: RSET before the next",
	TXNS(&txn1, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "451 4.3.0 Not now\r\n"
					      "250 2.0.0 OK\r\n" MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA C_RSET C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(451 4.3.0 Not now; data 451 4.3.0 Not now) READY " DONE_OK1 " READY",
    },
    {
	.name = "BDAT LAST refused: RSET before the next",
	TXNS(&txn1, &txn1),
	.in = GREET EHLO_REPLY(X_PIPE X_SIZE X_ENH X_CHUNK) MAIL_OK RCPT_OK
	"554 5.7.1 Spam\r\n"
	"250 2.0.0 OK\r\n" MAIL_OK RCPT_OK QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_BDAT C_RSET C_MAIL C_RCPT1 C_BDAT,
	.events = "READY DONE(554 5.7.1 Spam; data 554 5.7.1 Spam) READY " DONE_OK1 " READY",
    },
    {
	.name = "RSET refused ends the session",
	TXNS(&txn1, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "451 4.3.0 Not now\r\n"
					      "500 5.5.1 What\r\n" MAIL_OK RCPT_OK GO,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA C_RSET C_MAIL C_RCPT1 C_DATA,
	.events = "READY DONE(451 4.3.0 Not now; data 451 4.3.0 Not now) READY "
		  "DONE(451 4.5.0 protocol error: RSET refused (local); data 451 4.5.0 "
		  "protocol error: RSET refused (local)) FAILED(500 5.5.1 What)",
    },
    {
	.name = "421 mid-session: pending recipients get it, refusals stay",
	TXNS(&txn3),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "550 5.1.1 No\r\n"
					      "421 4.3.2 Shutting down\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_RCPT3 C_DATA,
	.events = "READY DONE(421 4.3.2 Shutting down | 550 5.1.1 No | 421 4.3.2 Shutting "
		  "down; data 421 4.3.2 Shutting down) FAILED(421 4.3.2 Shutting down)",
    },
    {
	.name = "421 instead of the end of data reply",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO "421 4.4.2 Timeout\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(421 4.4.2 Timeout; data 421 4.4.2 Timeout) "
		  "FAILED(421 4.4.2 Timeout)",
	.hook = fail_cmd_hook,
    },
    {
	.name = "421 while idle, then the peer closes",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO QUEUED "421 4.4.2 Idle timeout\r\n",
	.eof = true,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY " DONE_OK1 " READY FAILED(421 4.4.2 Idle timeout)",
    },
    {
	.name = "EHLO refused: HELO, no extensions",
	TXNS(&txn_dsn),
	.quit = true,
	.in = GREET "502 5.5.2 Command not recognized\r\n"
		    "250 mx.test\r\n" MAIL_OK RCPT_OK RCPT_OK GO QUEUED BYE,
	.out = C_EHLO C_HELO "MAIL FROM:<>\r\n" C_RCPT1 C_RCPT2 C_DATA "x\r\n.\r\n" C_QUIT,
	.events = "READY DONE(250 2.0.0 Queued as 1234 | 250 2.0.0 Queued as 1234; "
		  "data 250 2.0.0 Queued as 1234) READY CLOSED",
	.hook = helo_hook,
    },
    {
	.name = "EHLO and HELO refused",
	.in = GREET "500 no\r\n"
		    "550 go away\r\n",
	.out = C_EHLO C_HELO C_QUIT,
	.events = "FAILED(550 go away)",
    },
    {
	.name = "EHLO answered 421",
	.in = GREET "421 mx.test closing\r\n",
	.out = C_EHLO,
	.events = "FAILED(421 mx.test closing)",
    },
    {
	.name = "EHLO answered 4xx: QUIT",
	.in = GREET "451 busy\r\n",
	.out = C_EHLO C_QUIT,
	.events = "FAILED(451 busy)",
    },
    {
	.name = "greeting 554: QUIT (RFC 5321 3.1)",
	.in = "554-mx.test no service\r\n554 go away\r\n",
	.out = C_QUIT,
	.events = "FAILED(554 mx.test no service/go away)",
    },
    {
	.name = "greeting 421: no QUIT",
	.in = "421 mx.test busy\r\n",
	.out = "",
	.events = "FAILED(421 mx.test busy)",
    },
    {
	.name = "SIZE over the peer's limit fails locally, then a message fits",
	TXNS(&txn_big, &txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO QUEUED,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(552 5.3.4 message size 10001 exceeds the peer's limit of "
		  "10000 (local) | 552 5.3.4 message size 10001 exceeds the peer's limit "
		  "of 10000 (local); data 552 5.3.4 message size 10001 exceeds the "
		  "peer's limit of 10000 (local)) READY " DONE_OK1 " READY",
	.hook = size_hook,
    },
    {
	.name = "SMTPUTF8 needed but not offered",
	TXNS(&txn_utf8),
	.in = GREET EHLO_PIPE,
	.out = C_EHLO,
	.events = "READY DONE(553 5.6.7 the peer does not support SMTPUTF8 (local); data "
		  "553 5.6.7 the peer does not support SMTPUTF8 (local)) READY",
    },
    {
	.name = "SMTPUTF8 offered: parameter sent",
	TXNS(&txn_utf8),
	.in = GREET EHLO_REPLY(X_PIPE X_UTF8) MAIL_OK RCPT_OK GO "250 ok\r\n",
	.out = C_EHLO "MAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<j\xc3\xbcrgen@d.test>\r\n" C_DATA
		      "x\r\n.\r\n",
	.events = "READY DONE(250 ok; data 250 ok) READY",
    },
    {
	.name = "DSN parameters when DSN is offered",
	TXNS(&txn_dsn),
	.in = GREET EHLO_REPLY(X_PIPE X_DSN) MAIL_OK RCPT_OK RCPT_OK GO "250 ok\r\n",
	.out = C_EHLO "MAIL FROM:<> RET=HDRS ENVID=QQ+2Bid\r\n"
		      "RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40d.test\r\n"
		      "RCPT TO:<e@d.test> NOTIFY=NEVER\r\n" C_DATA "x\r\n.\r\n",
	.events = "READY DONE(250 ok | 250 ok; data 250 ok) READY",
    },
    {
	.name = "no DSN parameters without DSN",
	TXNS(&txn_dsn),
	.in = GREET EHLO_REPLY(X_PIPE) MAIL_OK RCPT_OK RCPT_OK GO "250 ok\r\n",
	.out = C_EHLO "MAIL FROM:<>\r\n" C_RCPT1 C_RCPT2 C_DATA "x\r\n.\r\n",
	.events = "READY DONE(250 ok | 250 ok; data 250 ok) READY",
    },
    {
	.name = "8-bit body: BODY=8BITMIME only when offered",
	TXNS(&txn_8bit, &txn_8bit),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO "250 ok\r\n" MAIL_OK RCPT_OK GO "250 ok\r\n",
	.out = C_EHLO
	"MAIL FROM:<a@b.test> SIZE=7 BODY=8BITMIME\r\n" C_RCPT1 C_DATA "caf\xc3\xa9\r\n.\r\n"
	"MAIL FROM:<a@b.test> SIZE=7 BODY=8BITMIME\r\n" C_RCPT1 C_DATA "caf\xc3\xa9\r\n.\r\n",
	.events = "READY DONE(250 ok; data 250 ok) READY DONE(250 ok; data 250 ok) READY",
    },
    {
	.name = "8-bit body sent anyway without 8BITMIME",
	TXNS(&txn_8bit),
	.in = GREET EHLO_REPLY(X_PIPE) MAIL_OK RCPT_OK GO "250 ok\r\n",
	.out = C_EHLO "MAIL FROM:<a@b.test>\r\n" C_RCPT1 C_DATA "caf\xc3\xa9\r\n.\r\n",
	.events = "READY DONE(250 ok; data 250 ok) READY",
    },
    {
	.name = "two transactions on one connection, no RSET between",
	TXNS(&txn1, &txn2),
	.quit = true,
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO QUEUED MAIL_OK RCPT_OK RCPT_OK GO QUEUED BYE,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED C_MAIL C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED
	    C_QUIT,
	.events = "READY " DONE_OK1 " READY " DONE_OK2 " READY CLOSED",
    },
    {
	.name = "EOF mid-DATA",
	TXNS(&txn2),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "550 5.1.1 No\r\n" GO "250 2.0",
	.eof = true,
	.out = C_EHLO C_MAIL C_RCPT1 C_RCPT2 C_DATA MSG_STUFFED,
	.events = "READY DONE(451 4.4.2 connection closed (local) | 550 5.1.1 No; data 451 "
		  "4.4.2 connection closed (local)) FAILED(451 4.4.2 connection closed "
		  "(local))",
	.hook = fail_cmd_hook,
    },
    {
	.name = "EOF before the greeting",
	.in = "220 mx",
	.eof = true,
	.out = "",
	.events = "FAILED(451 4.4.2 connection closed (local))",
    },
    {
	.name = "EOF after QUIT instead of 221",
	.quit = true,
	.in = GREET EHLO_PIPE,
	.eof = true,
	.out = C_EHLO C_QUIT,
	.events = "READY CLOSED",
    },
    {
	.name = "malformed reply",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK "hello\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA,
	.events = "READY DONE(451 4.5.0 protocol error: malformed reply (local); data 451 "
		  "4.5.0 protocol error: malformed reply (local)) FAILED(451 4.5.0 "
		  "protocol error: malformed reply (local))",
    },
    {
	.name = "reply code changing within a multi-line reply",
	.in = "220-a\r\n250 b\r\n",
	.out = "",
	.events = "FAILED(451 4.5.0 protocol error: reply code changed within a "
		  "multi-line reply (local))",
    },
    {
	.name = "bad separator",
	.in = "220_x\r\n",
	.out = "",
	.events = "FAILED(451 4.5.0 protocol error: malformed reply (local))",
    },
    {
	.name = "1xx code",
	.in = "120 wait\r\n",
	.out = "",
	.events = "FAILED(451 4.5.0 protocol error: malformed reply (local))",
    },
    {
	.name = "code too short",
	.in = "22\r\n",
	.out = "",
	.events = "FAILED(451 4.5.0 protocol error: malformed reply (local))",
    },
    {
	.name = "3xx to MAIL",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE "354 what\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA,
	.events = "READY DONE(451 4.5.0 protocol error: unexpected reply code (local); "
		  "data 451 4.5.0 protocol error: unexpected reply code (local)) "
		  "FAILED(451 4.5.0 protocol error: unexpected reply code (local))",
    },
    {
	.name = "3xx to the greeting",
	.in = "354 what\r\n",
	.out = "",
	.events = "FAILED(451 4.5.0 protocol error: unexpected reply to the greeting "
		  "(local))",
    },
    {
	.name = "3xx to EHLO",
	.in = GREET "354 what\r\n",
	.out = C_EHLO,
	.events = "FAILED(451 4.5.0 protocol error: unexpected reply to EHLO (local))",
    },
    {
	.name = "3xx to HELO",
	.in = GREET "500 what\r\n354 what\r\n",
	.out = C_EHLO C_HELO,
	.events = "FAILED(451 4.5.0 protocol error: unexpected reply to HELO (local))",
    },
    {
	.name = "3xx to RCPT, one at a time",
	TXNS(&txn1),
	.in = GREET EHLO_PLAIN MAIL_OK "354 what\r\n",
	.out = C_EHLO C_MAIL C_RCPT1,
	.events = "READY DONE(451 4.5.0 protocol error: unexpected reply code (local); "
		  "data 451 4.5.0 protocol error: unexpected reply code (local)) "
		  "FAILED(451 4.5.0 protocol error: unexpected reply code (local))",
    },
    {
	.name = "3xx to the end of data",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK GO GO,
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA MSG_STUFFED,
	.events = "READY DONE(451 4.5.0 protocol error: unexpected reply code (local); "
		  "data 451 4.5.0 protocol error: unexpected reply code (local)) "
		  "FAILED(451 4.5.0 protocol error: unexpected reply code (local))",
	.hook = fail_cmd_hook,
    },
    {
	.name = "3xx to BDAT",
	TXNS(&txn1),
	.in = GREET EHLO_REPLY(X_PIPE X_SIZE X_CHUNK) MAIL_OK RCPT_OK GO,
	.out = C_EHLO C_MAIL C_RCPT1 C_BDAT,
	.events = "READY DONE(451 4.5.0 protocol error: unexpected reply code (local); "
		  "data 451 4.5.0 protocol error: unexpected reply code (local)) "
		  "FAILED(451 4.5.0 protocol error: unexpected reply code (local))",
    },
    {
	.name = "3xx to RSET",
	TXNS(&txn1, &txn1),
	.in = GREET EHLO_PLAIN MAIL_OK "550 no\r\n" GO,
	.out = C_EHLO C_MAIL C_RCPT1 C_RSET,
	.events = "READY DONE(550 no; data -) READY DONE(451 4.5.0 protocol error: "
		  "unexpected reply code (local); data 451 4.5.0 protocol error: unexpected "
		  "reply code (local)) FAILED(451 4.5.0 protocol error: unexpected reply "
		  "code (local))",
    },
    {
	.name = "a 2xx while idle, then the peer closes",
	.in = GREET EHLO_PIPE "250 what\r\n",
	.eof = true,
	.out = C_EHLO,
	.events = "READY FAILED(451 4.5.0 protocol error: unsolicited reply (local))",
    },
    {
	.name = "2xx to DATA",
	TXNS(&txn1),
	.in = GREET EHLO_PIPE MAIL_OK RCPT_OK "250 what\r\n",
	.out = C_EHLO C_MAIL C_RCPT1 C_DATA,
	.events = "READY DONE(451 4.5.0 protocol error: unexpected reply code (local); "
		  "data 451 4.5.0 protocol error: unexpected reply code (local)) "
		  "FAILED(451 4.5.0 protocol error: unexpected reply code (local))",
    },
};

/* ---- Other tests ---- */

static struct kumo_smtp_client *make(const struct kumo_smtp_client_cfg *cfg, uint64_t now)
{
	struct kumo_smtp_client_cfg def = {.ehlo_name = "client.test"};
	struct kumo_smtp_client *c;

	assert_int_equal(kumo_smtp_client_new(cfg ? cfg : &def, now, &c), 0);
	return c;
}

/* Returns everything the machine has written, consuming it (static buffer). */
static const char *take_output(struct kumo_smtp_client *c)
{
	static char buf[16384];
	size_t n;
	const char *o = kumo_smtp_client_output(c, &n);

	assert_true(n < sizeof(buf));
	memcpy(buf, o, n);
	buf[n] = 0;
	kumo_smtp_client_output_consumed(c, n);
	return buf;
}

static void push_str(struct kumo_smtp_client *c, const char *s)
{
	assert_int_equal(kumo_smtp_client_push(c, s, strlen(s)), 0);
}

/* Logs every event up to NONE into a static string. */
static const char *events(struct kumo_smtp_client *c, uint64_t now)
{
	static struct sbuf b;
	struct kumo_smtp_client_ev ev;

	b.n = 0;
	sb_str(&b, "");
	for (;;) {
		assert_int_equal(kumo_smtp_client_next(c, now, &ev), 0);
		if (ev.type == KUMO_SMTP_CLIENT_EV_NONE)
			return b.p;
		log_event(&b, &ev);
	}
}

/* The greeting and EHLO done; returns at READY with the output consumed. */
static struct kumo_smtp_client *ready(const struct kumo_smtp_client_cfg *cfg, const char *ehlo,
				      uint64_t now)
{
	struct kumo_smtp_client *c = make(cfg, now);

	push_str(c, GREET);
	push_str(c, ehlo);
	assert_string_equal(events(c, now), "READY");
	assert_string_equal(take_output(c), C_EHLO);
	return c;
}

static void test_one_at_a_time(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_PLAIN, 0);

	assert_int_equal(kumo_smtp_client_send(c, &txn2), 0);
	assert_string_equal(take_output(c), C_MAIL);
	assert_string_equal(events(c, 0), "");
	push_str(c, MAIL_OK);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), C_RCPT1);
	push_str(c, RCPT_OK);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), C_RCPT2);
	push_str(c, "550 5.1.1 No\r\n");
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), C_DATA);
	push_str(c, GO);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), MSG_STUFFED);
	push_str(c, QUEUED);
	{
		struct kumo_smtp_client_ev ev;

		assert_int_equal(kumo_smtp_client_next(c, 0, &ev), 0);
		assert_int_equal(ev.type, KUMO_SMTP_CLIENT_EV_TXN_DONE);
		assert_int_equal(ev.result->accepted, 1);
		/* Not idle while READY is still queued. */
		assert_int_equal(kumo_smtp_client_send(c, &txn1), -EBUSY);
		assert_int_equal(kumo_smtp_client_quit(c), -EBUSY);
		assert_int_equal(kumo_smtp_client_next(c, 0, &ev), 0);
		assert_int_equal(ev.type, KUMO_SMTP_CLIENT_EV_READY);
	}
	assert_int_equal(kumo_smtp_client_quit(c), 0);
	assert_string_equal(take_output(c), C_QUIT);
	push_str(c, BYE);
	assert_string_equal(events(c, 0), "CLOSED");
	assert_int_equal(kumo_smtp_client_send(c, &txn1), -EPIPE);
	assert_int_equal(kumo_smtp_client_push(c, "x", 1), -EPIPE);
	kumo_smtp_client_free(c);
}

static void test_pipelined_at_once(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_PIPE, 0);

	assert_int_equal(kumo_smtp_client_send(c, &txn3), 0);
	/* The whole group in one output; data only after the 354. */
	assert_string_equal(take_output(c), C_MAIL C_RCPT1 C_RCPT2 C_RCPT3 C_DATA);
	push_str(c, MAIL_OK RCPT_OK RCPT_OK);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), "");
	push_str(c, RCPT_OK GO);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), MSG_STUFFED);
	kumo_smtp_client_free(c);
}

/* Timeouts: each stage with its own value so the right one is seen to apply. */
static const struct kumo_smtp_client_cfg timed = {
    .ehlo_name = "client.test",
    .timeouts =
	{
	    .greeting_ms = 1000,
	    .ehlo_ms = 2000,
	    .mail_ms = 3000,
	    .rcpt_ms = 4000,
	    .data_ms = 5000,
	    .data_block_ms = 6000,
	    .data_end_ms = 7000,
	},
};

/* Ticks at deadline - 1 (nothing) and at the deadline (the failure). */
static const char *expire(struct kumo_smtp_client *c, uint64_t deadline)
{
	assert_int_equal(kumo_smtp_client_deadline(c), deadline);
	kumo_smtp_client_tick(c, deadline - 1);
	assert_string_equal(events(c, deadline - 1), "");
	kumo_smtp_client_tick(c, deadline);
	return events(c, deadline);
}

static void test_timeout_greeting(void **state)
{
	struct kumo_smtp_client *c = make(&timed, 100);

	/* A partial line is progress: the clock restarts. */
	push_str(c, "220 ");
	assert_string_equal(events(c, 600), "");
	assert_string_equal(expire(c, 1600),
			    "FAILED(451 4.4.2 timeout waiting for greeting (local))");
	assert_int_equal(kumo_smtp_client_deadline(c), UINT64_MAX);
	assert_string_equal(take_output(c), "");
	kumo_smtp_client_free(c);
}

static void test_timeout_ehlo(void **state)
{
	struct kumo_smtp_client *c = make(&timed, 0);
	struct kumo_smtp_client_ev ev;

	push_str(c, GREET);
	assert_string_equal(events(c, 500), "");
	assert_string_equal(take_output(c), C_EHLO);
	assert_string_equal(events(c, 500), "");
	assert_string_equal(expire(c, 2500),
			    "FAILED(451 4.4.2 timeout waiting for EHLO response (local))");
	kumo_smtp_client_free(c);

	c = make(&timed, 0);
	push_str(c, GREET "502 no\r\n");
	assert_string_equal(events(c, 10), "");
	kumo_smtp_client_tick(c, 2010);
	assert_int_equal(kumo_smtp_client_next(c, 2010, &ev), 0);
	assert_int_equal(ev.type, KUMO_SMTP_CLIENT_EV_FAILED);
	assert_string_equal(ev.reply->text, "timeout waiting for HELO response");
	assert_int_equal(ev.reply->command, KUMO_SMTP_CLIENT_CMD_HELO);
	kumo_smtp_client_free(c);
}

static void test_timeout_stages(void **state)
{
	struct kumo_smtp_client *c;

	/* Idle: no deadline. */
	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_deadline(c), UINT64_MAX);
	kumo_smtp_client_tick(c, 1000000);
	assert_string_equal(events(c, 1000000), "");
	/* MAIL: the oldest awaited reply sets the timeout. */
	assert_int_equal(kumo_smtp_client_send(c, &txn2), 0);
	take_output(c);
	assert_string_equal(events(c, 1000000), "");
	assert_string_equal(expire(c, 1003000),
			    "DONE(451 4.4.2 timeout waiting for MAIL response (local) | 451 4.4.2 "
			    "timeout waiting for MAIL response (local); data 451 4.4.2 timeout "
			    "waiting for MAIL response (local)) FAILED(451 4.4.2 timeout waiting "
			    "for MAIL response (local))");
	kumo_smtp_client_free(c);

	/* RCPT */
	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn2), 0);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK);
	assert_string_equal(events(c, 100), "");
	assert_string_equal(expire(c, 4100),
			    "DONE(451 4.4.2 timeout waiting for RCPT response (local) | 451 4.4.2 "
			    "timeout waiting for RCPT response (local); data 451 4.4.2 timeout "
			    "waiting for RCPT response (local)) FAILED(451 4.4.2 timeout waiting "
			    "for RCPT response (local))");
	kumo_smtp_client_free(c);

	/* DATA (the 354) */
	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK);
	assert_string_equal(events(c, 100), "");
	assert_string_equal(expire(c, 5100),
			    "DONE(451 4.4.2 timeout waiting for DATA response (local); data 451 "
			    "4.4.2 timeout waiting for DATA response (local)) FAILED(451 4.4.2 "
			    "timeout waiting for DATA response (local))");
	kumo_smtp_client_free(c);

	/* Data block: the message sits unwritten; partial writes restart the clock. Then the
	 * end of data. */
	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK GO);
	assert_string_equal(events(c, 100), "");
	assert_int_equal(kumo_smtp_client_deadline(c), 6100);
	kumo_smtp_client_output_consumed(c, 5);
	kumo_smtp_client_tick(c, 6000);
	assert_string_equal(events(c, 6000), "");
	assert_int_equal(kumo_smtp_client_deadline(c), 12000);
	take_output(c);
	kumo_smtp_client_tick(c, 8000);
	assert_int_equal(kumo_smtp_client_deadline(c), 15000);
	assert_string_equal(
	    expire(c, 15000),
	    "DONE(451 4.4.2 timeout waiting for end of data response (local); data "
	    "451 4.4.2 timeout waiting for end of data response (local)) FAILED(451 "
	    "4.4.2 timeout waiting for end of data response (local))");
	kumo_smtp_client_free(c);

	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK GO);
	assert_string_equal(events(c, 100), "");
	assert_string_equal(expire(c, 6100),
			    "DONE(451 4.4.2 timeout waiting for data block to be written (local); "
			    "data 451 4.4.2 timeout waiting for data block to be written (local)) "
			    "FAILED(451 4.4.2 timeout waiting for data block to be written "
			    "(local))");
	kumo_smtp_client_free(c);

	/* BDAT: data block while unwritten, then the end of data timeout. */
	c = ready(&timed, EHLO_REPLY(X_PIPE X_CHUNK), 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	assert_int_equal(kumo_smtp_client_deadline(c), 6000);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK);
	assert_string_equal(events(c, 200), "");
	assert_string_equal(expire(c, 7200),
			    "DONE(451 4.4.2 timeout waiting for BDAT response (local); data 451 "
			    "4.4.2 timeout waiting for BDAT response (local)) FAILED(451 4.4.2 "
			    "timeout waiting for BDAT response (local))");
	kumo_smtp_client_free(c);

	/* RSET */
	c = ready(&timed, EHLO_PLAIN, 0);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	push_str(c, MAIL_OK "550 no\r\n");
	assert_string_equal(events(c, 0), "DONE(550 no; data -) READY");
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	assert_string_equal(take_output(c), C_MAIL C_RCPT1 C_RSET);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(expire(c, 3000),
			    "DONE(451 4.4.2 timeout waiting for RSET response (local); data 451 "
			    "4.4.2 timeout waiting for RSET response (local)) FAILED(451 4.4.2 "
			    "timeout waiting for RSET response (local))");
	kumo_smtp_client_free(c);

	/* QUIT: a timeout just closes. */
	c = ready(&timed, EHLO_PIPE, 0);
	assert_int_equal(kumo_smtp_client_quit(c), 0);
	assert_string_equal(take_output(c), C_QUIT);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(expire(c, 3000), "CLOSED");
	kumo_smtp_client_free(c);
}

static void test_long_lines(void **state)
{
	char line[KUMO_SMTP_CLIENT_MAX_LINE + 8];
	struct kumo_smtp_client *c;
	struct kumo_smtp_client_ev ev;

	/* 4096 octets with CRLF: accepted. */
	memset(line, 'x', sizeof(line));
	memcpy(line, "220 ", 4);
	memcpy(line + KUMO_SMTP_CLIENT_MAX_LINE - 2, "\r\n", 3);
	c = make(NULL, 0);
	push_str(c, line);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), C_EHLO);
	kumo_smtp_client_free(c);

	/* One more: refused, whether or not the LF has arrived. */
	memset(line, 'x', sizeof(line));
	memcpy(line, "220 ", 4);
	memcpy(line + KUMO_SMTP_CLIENT_MAX_LINE - 1, "\r\n", 3);
	c = make(NULL, 0);
	push_str(c, line);
	assert_int_equal(kumo_smtp_client_next(c, 0, &ev), 0);
	assert_int_equal(ev.type, KUMO_SMTP_CLIENT_EV_FAILED);
	assert_string_equal(ev.reply->text, "protocol error: reply line too long");
	assert_true(ev.reply->local);
	kumo_smtp_client_free(c);

	line[KUMO_SMTP_CLIENT_MAX_LINE] = 0;
	c = make(NULL, 0);
	push_str(c, line);
	assert_string_equal(events(c, 0),
			    "FAILED(451 4.5.0 protocol error: reply line too long (local))");
	kumo_smtp_client_free(c);
}

static void test_reply_too_long(void **state)
{
	struct kumo_smtp_client *c = make(NULL, 0);
	char line[1000];

	memset(line, 'y', sizeof(line));
	memcpy(line, "220-", 4);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	/* 66 lines of ~1000 octets exceed the bound on a whole reply. */
	for (int i = 0; i < 66; i++) {
		push_str(c, line);
		if (i < 64)
			assert_string_equal(events(c, 0), "");
	}
	assert_string_equal(events(c, 0),
			    "FAILED(451 4.5.0 protocol error: reply too long (local))");
	kumo_smtp_client_free(c);
}

static void test_input_held_while_idle(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_PIPE, 0);
	size_t space, total = 0;
	char *p;

	/* Replies arriving while idle are held for the next command. */
	push_str(c, MAIL_OK RCPT_OK);
	assert_string_equal(events(c, 0), "");
	while ((p = kumo_smtp_client_input_space(c, &space)) != NULL) {
		memset(p, ' ', space);
		kumo_smtp_client_input_commit(c, space);
		total += space;
	}
	assert_int_equal(space, 0);
	assert_true(total < KUMO_SMTP_CLIENT_INPUT_MAX);
	assert_int_equal(kumo_smtp_client_push(c, "x", 1), -ENOBUFS);
	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	take_output(c);
	/* MAIL and RCPT answered, then a line of spaces with no LF grows too long. */
	assert_string_equal(events(c, 0),
			    "DONE(451 4.5.0 protocol error: reply line too long (local); data 451 "
			    "4.5.0 protocol error: reply line too long (local)) FAILED(451 4.5.0 "
			    "protocol error: reply line too long (local))");
	kumo_smtp_client_free(c);
}

static void test_partial_output(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_PIPE, 0);
	const char *all = C_MAIL C_RCPT1 C_DATA MSG_STUFFED;
	const char *o;
	size_t n;

	assert_int_equal(kumo_smtp_client_send(c, &txn1), 0);
	o = kumo_smtp_client_output(c, &n);
	assert_int_equal(n, strlen(C_MAIL C_RCPT1 C_DATA));
	assert_memory_equal(o, C_MAIL, 10);
	kumo_smtp_client_output_consumed(c, 10);
	/* The data is appended after what is still unwritten. */
	push_str(c, MAIL_OK RCPT_OK GO);
	assert_string_equal(events(c, 0), "");
	assert_string_equal(take_output(c), all + 10);
	kumo_smtp_client_output_consumed(c, 100);
	assert_string_equal(take_output(c), "");
	kumo_smtp_client_free(c);
}

static void test_input_compaction(void **state)
{
	struct kumo_smtp_client *c = make(NULL, 0);
	size_t space, total = 0;
	char *p;

	/* The greeting is parsed, the partial line after it stays. */
	push_str(c, GREET "250-mx");
	assert_string_equal(events(c, 0), "");
	while ((p = kumo_smtp_client_input_space(c, &space)) != NULL) {
		memset(p, 'x', space);
		kumo_smtp_client_input_commit(c, space);
		total += space;
	}
	/* Space freed by the parsed greeting was reclaimed. */
	assert_int_equal(total, KUMO_SMTP_CLIENT_INPUT_MAX - 6);
	assert_string_equal(events(c, 0),
			    "FAILED(451 4.5.0 protocol error: reply line too long (local))");
	kumo_smtp_client_free(c);
}

static void test_large_message(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_REPLY(X_PIPE), 0);
	size_t n = 2000 * 1000, dots = 0, got = 0, len;
	uint8_t *msg = malloc(n);
	struct kumo_smtp_client_txn t = TXN(1);
	const char *o;

	assert_non_null(msg);
	/* Lines of 100 octets; every third starts with a dot. */
	for (size_t i = 0; i < n; i++) {
		size_t col = i % 100;

		msg[i] = col == 98 ? '\r' : col == 99 ? '\n' : 'a' + (uint8_t)(col % 26);
		if (col == 0 && (i / 100) % 3 == 0) {
			msg[i] = '.';
			dots++;
		}
	}
	t.data = msg;
	t.data_len = n;
	assert_int_equal(kumo_smtp_client_send(c, &t), 0);
	take_output(c);
	push_str(c, MAIL_OK RCPT_OK GO);
	assert_string_equal(events(c, 0), "");
	o = kumo_smtp_client_output(c, &len);
	assert_int_equal(len, n + dots + 3);
	/* Compare while consuming in uneven pieces. */
	for (size_t i = 0, j = 0; i < n; i++) {
		if (i % 100 == 0 && msg[i] == '.')
			assert_int_equal(o[j++], '.');
		assert_int_equal(o[j++], msg[i]);
	}
	assert_memory_equal(o + len - 5, "\r\n.\r\n", 5);
	while (got < len) {
		size_t k = len - got < 7777 ? len - got : 7777;

		kumo_smtp_client_output_consumed(c, k);
		got += k;
	}
	kumo_smtp_client_output(c, &len);
	assert_int_equal(len, 0);
	push_str(c, QUEUED);
	assert_string_equal(events(c, 0), DONE_OK1 " READY");
	kumo_smtp_client_free(c);
	free(msg);
}

static void test_api_errors(void **state)
{
	struct kumo_smtp_client_cfg cfg = {.ehlo_name = "client.test"};
	struct kumo_smtp_client_timeouts to = {.rcpt_ms = 1};
	struct kumo_smtp_client *c;
	struct kumo_smtp_client_txn t = TXN(1);
	struct kumo_smtp_client_rcpt bad = {.addr = "a@b.test"};

	assert_int_equal(kumo_smtp_client_new(NULL, 0, &c), -EINVAL);
	assert_int_equal(kumo_smtp_client_new(&cfg, 0, NULL), -EINVAL);
	cfg.ehlo_name = NULL;
	assert_int_equal(kumo_smtp_client_new(&cfg, 0, &c), -EINVAL);
	cfg.ehlo_name = "bad name";
	assert_int_equal(kumo_smtp_client_new(&cfg, 0, &c), -EINVAL);
	cfg.ehlo_name = "";
	assert_int_equal(kumo_smtp_client_new(&cfg, 0, &c), -EINVAL);

	kumo_smtp_client_timeouts_defaults(&to);
	assert_int_equal(to.greeting_ms, 300000);
	assert_int_equal(to.ehlo_ms, 300000);
	assert_int_equal(to.mail_ms, 300000);
	assert_int_equal(to.rcpt_ms, 1);
	assert_int_equal(to.data_ms, 120000);
	assert_int_equal(to.data_block_ms, 180000);
	assert_int_equal(to.data_end_ms, 600000);

	/* Not idle before the greeting. */
	c = make(NULL, 0);
	assert_int_equal(kumo_smtp_client_send(c, &t), -EBUSY);
	assert_int_equal(kumo_smtp_client_quit(c), -EBUSY);
	assert_int_equal(kumo_smtp_client_deadline(c), 300000);
	push_str(c, GREET EHLO_REPLY(X_DSN X_UTF8));
	assert_string_equal(events(c, 0), "READY");
	take_output(c);
	assert_int_equal(kumo_smtp_client_send(c, NULL), -EINVAL);
	t.nrcpt = 0;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.nrcpt = 1;
	t.sender = NULL;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.sender = "a\r\nRSET@b";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.sender = "a@b.test";
	t.rcpts = &bad;
	bad.addr = "";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.addr = "x@y\n";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.addr = "x@y";
	bad.notify = KUMO_DSN_NOTIFY_NEVER | KUMO_DSN_NOTIFY_DELAY;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.notify = 64;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.notify = 0;
	bad.orcpt = "no-semicolon";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.orcpt = "rfc822;a b";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	bad.orcpt = NULL;
	t.envid = "";
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.envid = NULL;
	t.ret = 9;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.ret = KUMO_DSN_RET_FULL;
	t.data = NULL;
	assert_int_equal(kumo_smtp_client_send(c, &t), -EINVAL);
	t.data = (const uint8_t *)MSG;
	assert_string_equal(take_output(c), "");
	/* Valid now; busy until it is done. */
	assert_int_equal(kumo_smtp_client_send(c, &t), 0);
	assert_string_equal(take_output(c), "MAIL FROM:<a@b.test> RET=FULL\r\n");
	assert_int_equal(kumo_smtp_client_send(c, &t), -EBUSY);
	assert_int_equal(kumo_smtp_client_quit(c), -EBUSY);
	kumo_smtp_client_input_eof(c);
	assert_string_equal(events(c, 0), "DONE(451 4.4.2 connection closed (local); data 451 "
					  "4.4.2 connection closed (local)) FAILED(451 4.4.2 "
					  "connection closed (local))");
	assert_int_equal(kumo_smtp_client_quit(c), -EPIPE);
	{
		size_t space = 1;

		assert_null(kumo_smtp_client_input_space(c, &space));
		assert_int_equal(space, 0);
	}
	kumo_smtp_client_free(c);
	kumo_smtp_client_free(NULL);
}

static void test_eof_while_idle(void **state)
{
	struct kumo_smtp_client *c = ready(NULL, EHLO_PIPE, 0);

	kumo_smtp_client_input_eof(c);
	assert_string_equal(events(c, 0), "FAILED(451 4.4.2 connection closed (local))");
	kumo_smtp_client_free(c);
}

int main(void)
{
	size_t nt = sizeof(transcripts) / sizeof(transcripts[0]);
	const struct CMUnitTest fixed[] = {
	    cmocka_unit_test(test_one_at_a_time),    cmocka_unit_test(test_pipelined_at_once),
	    cmocka_unit_test(test_timeout_greeting), cmocka_unit_test(test_timeout_ehlo),
	    cmocka_unit_test(test_timeout_stages),   cmocka_unit_test(test_long_lines),
	    cmocka_unit_test(test_reply_too_long),   cmocka_unit_test(test_input_held_while_idle),
	    cmocka_unit_test(test_partial_output),   cmocka_unit_test(test_input_compaction),
	    cmocka_unit_test(test_large_message),    cmocka_unit_test(test_api_errors),
	    cmocka_unit_test(test_eof_while_idle),
	};
	size_t nf = sizeof(fixed) / sizeof(fixed[0]);
	struct CMUnitTest *tests = calloc(nt + nf, sizeof(*tests));
	int rc;

	if (!tests)
		return 1;
	for (size_t i = 0; i < nt; i++) {
		tests[i].name = transcripts[i].name;
		tests[i].test_func = run_transcript;
		tests[i].initial_state = (void *)(uintptr_t)&transcripts[i];
	}
	memcpy(tests + nt, fixed, sizeof(fixed));
	rc = _cmocka_run_group_tests("smtp_client", tests, nt + nf, NULL, NULL);
	free(tests);
	return rc;
}
