/* Unit tests for the SMTP server machine: transcripts (client bytes, embedder decisions,
 * expected replies and events) each run fed whole, split at every offset and one byte at
 * a time, which must all give the same bytes and events; plus timeouts and API edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/smtp_server.h"

#define HOST "mx.test"
#define NOW 1000

/* ---- Server replies ---- */
#define GREET "220 " HOST " ESMTP ready\r\n"
#define EHLO_SIZE(n)                                                                               \
	"250-" HOST "\r\n250-PIPELINING\r\n250-SIZE " n "\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"     \
	"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"
#define EHLO_OK EHLO_SIZE("52428800")
#define HELO_OK "250 " HOST "\r\n"
#define MAIL_OK "250 2.1.0 OK\r\n"
#define RCPT_OK "250 2.1.5 OK\r\n"
#define GO_AHEAD "354 End data with <CR><LF>.<CR><LF>\r\n"
#define MSG_OK "250 2.0.0 OK\r\n"
#define OK "250 2.0.0 OK\r\n"
#define BYE "221 2.0.0 " HOST " Bye\r\n"
#define TOO_BIG "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
#define BARE "550 5.6.0 Message contains bare CR or bare LF\r\n"
#define NEED_MAIL "503 5.5.1 Need MAIL command\r\n"
#define UNKNOWN "500 5.5.2 Command unrecognized\r\n"
#define LONG_LINE "500 5.5.2 Line too long\r\n"
#define BAD_PARAM "501 5.5.4 Invalid parameter value\r\n"
#define UNSUP_PARAM "555 5.5.4 Unsupported parameter\r\n"
#define BAD_FROM "501 5.1.7 Bad sender address syntax\r\n"
#define BAD_TO "501 5.1.3 Bad recipient address syntax\r\n"
#define NON_ASCII "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n"

/* ---- Client commands ---- */
#define C_EHLO "EHLO client.test\r\n"
#define C_HELO "HELO client.test\r\n"
#define C_MAIL "MAIL FROM:<a@b.test>\r\n"
#define C_RCPT "RCPT TO:<c@d.test>\r\n"
#define C_QUIT "QUIT\r\n"

struct decision {
	int code; /* 0: accept() */
	const char *enh;
	const char *text;
};

#define ACCEPT                                                                                     \
	{                                                                                          \
		0, NULL, NULL                                                                      \
	}
#define DECS(...)                                                                                  \
	.dec = (const struct decision[]){__VA_ARGS__},                                             \
	.ndec = sizeof((const struct decision[]){__VA_ARGS__}) / sizeof(struct decision)

typedef void (*hook_fn)(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev);

struct transcript {
	const char *name;
	struct kumo_smtp_limits limits;
	enum kumo_smtp_bare_eol bare_eol;
	const char *in;
	size_t in_len; /* 0: strlen(in) */
	const struct decision *dec;
	size_t ndec;
	bool eof;	    /* the client closes after sending everything */
	const char *refuse; /* refuse with this "code enh text" instead of greeting */
	const char *out;    /* every byte the server sends */
	const char *events; /* the events, space separated */
	hook_fn hook;	    /* called on each event */
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

static void sb_escaped(struct sbuf *b, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char tmp[8];

		if (p[i] == '\r')
			sb_str(b, "\\r");
		else if (p[i] == '\n')
			sb_str(b, "\\n");
		else if (p[i] < 0x20 || p[i] >= 0x7f)
			snprintf(tmp, sizeof(tmp), "\\x%02x", p[i]), sb_str(b, tmp);
		else
			sb_put(b, &p[i], 1);
	}
}

struct run {
	const struct transcript *t;
	struct kumo_smtp_server *s;
	struct sbuf out, ev;
	size_t dec_i;
};

static void collect_output(struct run *r)
{
	size_t n;
	const char *o = kumo_smtp_server_output(r->s, &n);

	sb_put(&r->out, o, n);
	kumo_smtp_server_output_consumed(r->s, n);
}

static void log_event(struct run *r, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(r->s);

	if (r->ev.n)
		sb_str(&r->ev, " ");
	switch (ev->type) {
	case KUMO_SMTP_EV_HELO:
		sb_str(&r->ev, ev->helo.esmtp ? "EHLO(" : "HELO(");
		sb_str(&r->ev, ev->helo.name);
		sb_str(&r->ev, ")");
		break;
	case KUMO_SMTP_EV_MAIL:
		sb_str(&r->ev, "MAIL(");
		sb_escaped(&r->ev, (const uint8_t *)txn->sender, strlen(txn->sender));
		sb_str(&r->ev, ")");
		break;
	case KUMO_SMTP_EV_RCPT:
		sb_str(&r->ev, "RCPT(");
		sb_escaped(&r->ev, (const uint8_t *)ev->rcpt->addr, strlen(ev->rcpt->addr));
		sb_str(&r->ev, ")");
		break;
	case KUMO_SMTP_EV_MESSAGE:
		sb_str(&r->ev, txn->via_bdat ? "BDAT-MESSAGE(" : "MESSAGE(");
		sb_escaped(&r->ev, txn->data, txn->data_len);
		sb_str(&r->ev, ")");
		break;
	case KUMO_SMTP_EV_RESET:
		sb_str(&r->ev, "RESET");
		break;
	case KUMO_SMTP_EV_CLOSE:
		sb_str(&r->ev, "CLOSE");
		break;
	case KUMO_SMTP_EV_NONE:
		fail();
	}
}

/* Pulls events until the machine needs input, answering decisions from the script. */
static void drain(struct run *r)
{
	struct kumo_smtp_ev ev;

	for (;;) {
		assert_int_equal(kumo_smtp_server_next(r->s, NOW, &ev), 0);
		collect_output(r);
		if (ev.type == KUMO_SMTP_EV_NONE)
			return;
		log_event(r, &ev);
		if (r->t->hook)
			r->t->hook(r->s, &ev);
		if (ev.type == KUMO_SMTP_EV_MAIL || ev.type == KUMO_SMTP_EV_RCPT ||
		    ev.type == KUMO_SMTP_EV_MESSAGE) {
			const struct decision *d;

			if (r->dec_i >= r->t->ndec)
				fail_msg("%s: no decision left for event %s", r->t->name, r->ev.p);
			d = &r->t->dec[r->dec_i++];
			if (d->code)
				assert_int_equal(
				    kumo_smtp_server_reply(r->s, d->code, d->enh, d->text), 0);
			else
				assert_int_equal(kumo_smtp_server_accept(r->s), 0);
			collect_output(r);
		}
	}
}

/* Feeds bytes through push() or the zero-copy pair, draining when input is full. */
static void feed(struct run *r, const uint8_t *p, size_t n, bool zero_copy)
{
	while (n) {
		size_t space, k;
		void *dst;

		if (!zero_copy) {
			int rc = kumo_smtp_server_push(r->s, p, n);

			if (rc == 0) {
				n = 0;
				break;
			}
			if (rc == -EPIPE)
				return;
			assert_int_equal(rc, -ENOBUFS);
		}
		dst = kumo_smtp_server_input_space(r->s, &space);
		if (!dst) {
			size_t before = r->out.n + r->ev.n;

			drain(r);
			if (kumo_smtp_server_input_space(r->s, &space))
				continue;
			/* Closed, or stuck: both end the feed (the check is the output). */
			assert_true(r->out.n + r->ev.n >= before);
			return;
		}
		k = n < space ? n : space;
		memcpy(dst, p, k);
		kumo_smtp_server_input_commit(r->s, k);
		p += k;
		n -= k;
		drain(r);
	}
	drain(r);
}

enum feed_mode { FEED_WHOLE, FEED_SPLIT, FEED_BYTES };

static void run_once(const struct transcript *t, enum feed_mode mode, size_t split)
{
	struct kumo_smtp_server_cfg cfg = {
	    .hostname = HOST, .limits = t->limits, .bare_eol = t->bare_eol};
	const uint8_t *in = (const uint8_t *)t->in;
	size_t len = t->in_len ? t->in_len : strlen(t->in);
	struct run r = {.t = t};

	assert_int_equal(kumo_smtp_server_new(&cfg, NOW, &r.s), 0);
	if (t->refuse)
		kumo_smtp_server_refuse(r.s, 554, "5.7.1", t->refuse);
	else
		kumo_smtp_server_greet(r.s);
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
		kumo_smtp_server_input_eof(r.s);
		drain(&r);
	}
	if (strcmp(r.out.p ? r.out.p : "", t->out) || strcmp(r.ev.p ? r.ev.p : "", t->events))
		fail_msg("%s (mode %d, split %zu):\n--- output\n%s\n--- expected\n%s\n"
			 "--- events\n%s\n--- expected\n%s",
			 t->name, mode, split, r.out.p, t->out, r.ev.p, t->events);
	assert_int_equal(r.dec_i, t->ndec);
	kumo_smtp_server_free(r.s);
	free(r.out.p);
	free(r.ev.p);
}

static void run_transcript(void **state)
{
	const struct transcript *t = *state;
	size_t len = t->in_len ? t->in_len : strlen(t->in);

	run_once(t, FEED_WHOLE, 0);
	for (size_t k = 1; k < len; k++)
		run_once(t, FEED_SPLIT, k);
	run_once(t, FEED_BYTES, 0);
}

/* ---- Hooks asserting transaction contents ---- */

static void dsn_hook(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(s);

	if (ev->type == KUMO_SMTP_EV_MAIL) {
		assert_string_equal(txn->sender, "a@b.test");
		assert_int_equal(txn->ret, KUMO_DSN_RET_HDRS);
		assert_string_equal(txn->envid, "QQ+2Bid");
		assert_int_equal(txn->declared_size, 1000);
		assert_int_equal(txn->body, KUMO_SMTP_BODY_8BITMIME);
		assert_false(txn->smtputf8);
		assert_int_equal(txn->nrcpt, 0);
	} else if (ev->type == KUMO_SMTP_EV_RCPT && !strcmp(ev->rcpt->addr, "x@y.test")) {
		assert_int_equal(ev->rcpt->notify, KUMO_DSN_NOTIFY_SUCCESS |
						       KUMO_DSN_NOTIFY_FAILURE |
						       KUMO_DSN_NOTIFY_DELAY);
		assert_string_equal(ev->rcpt->orcpt, "rfc822;x+40y.test");
	} else if (ev->type == KUMO_SMTP_EV_MESSAGE) {
		assert_int_equal(txn->nrcpt, 3);
		assert_string_equal(txn->rcpts[0].addr, "x@y.test");
		assert_int_equal(txn->rcpts[0].notify, KUMO_DSN_NOTIFY_SUCCESS |
							   KUMO_DSN_NOTIFY_FAILURE |
							   KUMO_DSN_NOTIFY_DELAY);
		assert_string_equal(txn->rcpts[0].orcpt, "rfc822;x+40y.test");
		assert_string_equal(txn->rcpts[1].addr, "z@y.test");
		assert_int_equal(txn->rcpts[1].notify, KUMO_DSN_NOTIFY_NEVER);
		assert_null(txn->rcpts[1].orcpt);
		assert_string_equal(txn->rcpts[2].addr, "plain@y.test");
		assert_int_equal(txn->rcpts[2].notify, KUMO_DSN_NOTIFY_UNSET);
		assert_false(txn->via_bdat);
		assert_int_equal(txn->ret, KUMO_DSN_RET_HDRS);
		assert_string_equal(txn->envid, "QQ+2Bid");
	}
}

static void plain_txn_hook(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(s);

	if (ev->type == KUMO_SMTP_EV_MAIL) {
		assert_int_equal(txn->ret, KUMO_DSN_RET_UNSET);
		assert_null(txn->envid);
		assert_int_equal(txn->declared_size, 0);
		assert_int_equal(txn->body, KUMO_SMTP_BODY_UNSET);
	}
	if (ev->type == KUMO_SMTP_EV_MESSAGE)
		assert_string_equal(txn->rcpts[0].addr, "c@d.test");
	/* After a decision or a reset the transaction is empty. */
	if (ev->type == KUMO_SMTP_EV_RESET || ev->type == KUMO_SMTP_EV_CLOSE)
		assert_null(txn->sender);
}

static void utf8_hook(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(s);

	/* Only the first sender is non-ASCII, and only it asked for SMTPUTF8. */
	if (ev->type == KUMO_SMTP_EV_MAIL)
		assert_int_equal(txn->smtputf8, strcmp(txn->sender, "a@b.test") != 0);
}

static void body_hook(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev)
{
	const struct kumo_smtp_txn *txn = kumo_smtp_server_txn(s);

	if (ev->type == KUMO_SMTP_EV_MAIL) {
		assert_int_equal(txn->body, KUMO_SMTP_BODY_7BIT);
		assert_int_equal(txn->ret, KUMO_DSN_RET_FULL);
		assert_true(txn->smtputf8);
	}
}

static void bdat_hook(struct kumo_smtp_server *s, const struct kumo_smtp_ev *ev)
{
	if (ev->type == KUMO_SMTP_EV_MESSAGE)
		assert_true(kumo_smtp_server_txn(s)->via_bdat);
}

/* ---- Transcripts ---- */

/* 510 octets: with CRLF exactly the default max_line. */
#define LINE_510                                                                                   \
	"NOOP 0123456789012345678901234567890123456789012345678901234567890123456789"              \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"0123456789012345678901234567890123456789012345678901234567890123456789"                   \
	"012345678901234"

static const struct transcript transcripts[] = {
    {
	.name = "happy path with EHLO",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "MESSAGE(Subject: hi\\r\\n\\r\\nbody\\r\\n) CLOSE",
	.hook = plain_txn_hook,
    },
    {
	.name = "happy path with HELO, two messages, lower-case verbs",
	.in = C_HELO "mail from:<a@b.test>\r\n"
		     "rcpt to:<c@d.test>\r\n"
		     "data\r\none\r\n.\r\n" C_MAIL "Rcpt To:<c@d.test>\r\nDaTa\r\ntwo\r\n.\r\n"
		     "quit\r\n",
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET HELO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "HELO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE(one\\r\\n) "
		  "MAIL(a@b.test) RCPT(c@d.test) MESSAGE(two\\r\\n) CLOSE",
	.hook = plain_txn_hook,
    },
    {
	.name = "HELO disables extensions",
	.in = C_HELO "MAIL FROM:<a@b.test> SIZE=10\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\n"
		     "BDAT 4 LAST\r\nQUIT" C_QUIT,
	.out = GREET HELO_OK "555 5.5.4 Parameters need EHLO\r\n"
			     "555 5.5.4 Parameters need EHLO\r\n"
			     "503 5.5.1 Send EHLO before BDAT\r\n" BYE,
	.events = "HELO(client.test) CLOSE",
    },
    {
	.name = "DSN and MAIL parameters stored in the transaction",
	.in = C_EHLO "MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ+2Bid SIZE=1000 BODY=8BITMIME\r\n"
		     "RCPT TO:<x@y.test> NOTIFY=success,FAILURE,Delay ORCPT=rfc822;x+40y.test\r\n"
		     "RCPT TO:<z@y.test> NOTIFY=NEVER\r\n"
		     "RCPT TO:<plain@y.test>\r\nDATA\r\nx\r\n.\r\n",
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK RCPT_OK RCPT_OK GO_AHEAD MSG_OK,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(x@y.test) RCPT(z@y.test) "
		  "RCPT(plain@y.test) MESSAGE(x\\r\\n)",
	.hook = dsn_hook,
    },
    {
	.name = "bad parameter values",
	.in = C_EHLO "MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n"
		     "MAIL FROM:<a@b.test> RET=ALL\r\n"
		     "MAIL FROM:<a@b.test> SIZE=12k\r\n"
		     "MAIL FROM:<a@b.test> ENVID=a=b\r\n"
		     "MAIL FROM:<a@b.test> ENVID=a+2x\r\n"
		     "MAIL FROM:<a@b.test> SMTPUTF8=yes\r\n"
		     "MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n"
		     "MAIL FROM:<a@b.test> SIZE=\r\n"
		     "MAIL FROM:<a@b.test> SIZE\r\n"
		     "MAIL FROM:<a@b.test>SIZE=1\r\n"
		     "MAIL FROM:<a@b.test> AUTH=<>\r\n" C_MAIL
		     "RCPT TO:<c@d.test> NOTIFY=NEVER,DELAY\r\n"
		     "RCPT TO:<c@d.test> NOTIFY=SOMETIMES\r\n"
		     "RCPT TO:<c@d.test> ORCPT=rfc822\r\n"
		     "RCPT TO:<c@d.test> ORCPT=rfc822;a b\r\n"
		     "RCPT TO:<c@d.test> XFOO\r\n" C_QUIT,
	.limits = {.max_errors = 100},
	DECS(ACCEPT),
	.out = GREET EHLO_OK BAD_PARAM BAD_PARAM BAD_PARAM
	"501 5.5.4 Syntax error in parameters\r\n" BAD_PARAM BAD_PARAM
	"501 5.5.4 Duplicate parameter\r\n"
	"501 5.5.4 Syntax error in parameters\r\n" BAD_PARAM
	"501 5.5.4 Syntax error in parameters\r\n" UNSUP_PARAM MAIL_OK BAD_PARAM BAD_PARAM BAD_PARAM
	    UNSUP_PARAM UNSUP_PARAM BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) CLOSE",
    },
    {
	.name = "addresses: null sender, postmaster, source route, quoted, literals",
	.in = C_EHLO "MAIL FROM:<>\r\n"
		     "RCPT TO:<postmaster>\r\n"
		     "RCPT TO:<PostMaster>\r\n"
		     "RCPT TO:<@relay.test,@r2.test:u@d.test>\r\n"
		     "RCPT TO:<\"john q\\\"x\"@d.test>\r\n"
		     "RCPT TO:<u@[192.0.2.1]>\r\n"
		     "RCPT TO:<u@[IPv6:2001:db8::1]>\r\n"
		     "RCPT TO:<a.b+c/d=e@sub-1.d.test> \r\n"
		     "RCPT TO: <spaced@d.test>\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK RCPT_OK RCPT_OK RCPT_OK RCPT_OK RCPT_OK RCPT_OK RCPT_OK
	    BYE,
	.events = "EHLO(client.test) MAIL() RCPT(postmaster) RCPT(PostMaster) RCPT(u@d.test) "
		  "RCPT(\"john q\\\"x\"@d.test) RCPT(u@[192.0.2.1]) RCPT(u@[IPv6:2001:db8::1]) "
		  "RCPT(a.b+c/d=e@sub-1.d.test) RCPT(spaced@d.test) CLOSE",
    },
    {
	.name = "address syntax errors",
	.in = C_EHLO "MAIL FROM:<a@>\r\n"
		     "MAIL FROM:a@b.test\r\n"
		     "MAIL FROM <a@b.test>\r\n"
		     "MAIL FROM:<a@b.test\r\n"
		     "MAIL FROM:<a@-b.test>\r\n"
		     "MAIL FROM:<@x:>\r\n" C_MAIL "RCPT TO:<>\r\n"
		     "RCPT TO:<a..b@d.test>\r\n"
		     "RCPT TO:<.a@d.test>\r\n"
		     "RCPT TO:<u@[192.0.2.256]>\r\n"
		     "RCPT TO:<u@[IPv6:zz::1]>\r\n"
		     "RCPT TO:<u@[foo:bar]>\r\n"
		     "RCPT TO:<postmaster@>\r\n"
		     "RCPT TO:<\"unterminated@d.test>\r\n"
		     "RCPT <c@d.test>\r\n" C_QUIT,
	.limits = {.max_errors = 100},
	DECS(ACCEPT),
	.out = GREET EHLO_OK BAD_FROM BAD_FROM
	"501 5.5.4 Syntax: MAIL FROM:<address>\r\n" BAD_FROM BAD_FROM BAD_FROM MAIL_OK BAD_TO BAD_TO
	    BAD_TO BAD_TO BAD_TO BAD_TO BAD_TO BAD_TO "501 5.5.4 Syntax: RCPT TO:<address>\r\n" BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) CLOSE",
    },
    {
	.name = "SMTPUTF8 addresses",
	.in = C_EHLO "MAIL FROM:<j\xc3\xbcrgen@b.test>\r\n"
		     "MAIL FROM:<j\xc3\xbcrgen@b.test> SMTPUTF8\r\n"
		     "RCPT TO:<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.test>\r\n"
		     "RCPT TO:<bad\xc3@b.test>\r\n"
		     "RSET\r\n" C_MAIL "RCPT TO:<\xc3\xbc@b.test>\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK NON_ASCII MAIL_OK RCPT_OK BAD_TO OK MAIL_OK NON_ASCII BYE,
	.events = "EHLO(client.test) MAIL(j\\xc3\\xbcrgen@b.test) "
		  "RCPT(\\xe7\\x94\\xa8\\xe6\\x88\\xb7@\\xe4\\xbe\\x8b\\xe5\\xad\\x90.test) RESET "
		  "MAIL(a@b.test) CLOSE",
	.hook = utf8_hook,
    },
    {
	.name = "BODY=7BIT, RET=FULL, 4-octet UTF-8, spaces around arguments",
	.in = "EHLO   spaced.test  \r\n"
	      "mail FROM:<\xf0\x9f\x98\x80@b.test> body=7bit ret=full smtputf8 \r\n"
	      "RCPT TO:<c@d.test> ORCPT=utf-8;\xf0\x9f\x98\x80@b.test\r\n"
	      "RCPT TO:<\xf0\x9f\x98@d.test>\r\n"
	      "RCPT TO:<\xed\xa0\x80@d.test>\r\n"
	      "RCPT TO:<\xc0\xaf@d.test>\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK BAD_TO BAD_TO BAD_TO BYE,
	.events = "EHLO(spaced.test) MAIL(\\xf0\\x9f\\x98\\x80@b.test) RCPT(c@d.test) CLOSE",
	.hook = body_hook,
    },
    {
	.name = "SIZE over the limit at MAIL",
	.limits = {.max_message_size = 100},
	.in = C_EHLO "MAIL FROM:<a@b.test> SIZE=101\r\n"
		     "MAIL FROM:<a@b.test> SIZE=99999999999999999999999\r\n"
		     "MAIL FROM:<a@b.test> SIZE=100\r\n" C_QUIT,
	DECS(ACCEPT),
	.out = GREET EHLO_SIZE("100") TOO_BIG TOO_BIG MAIL_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) CLOSE",
    },
    {
	.name = "message over the size limit in DATA",
	.limits = {.max_message_size = 20},
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\n0123456789\r\n0123456789\r\n.\r\n" C_MAIL C_RCPT
				   "DATA\r\n012345678901234567\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_SIZE("20")
	    MAIL_OK RCPT_OK GO_AHEAD TOO_BIG MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET MAIL(a@b.test) "
		  "RCPT(c@d.test) MESSAGE(012345678901234567\\r\\n) CLOSE",
    },
    {
	.name = "command line length limit",
	.in = C_EHLO LINE_510 "\r\n" LINE_510 "x\r\n" LINE_510 LINE_510 "\r\nNOOP\r\n",
	.eof = true,
	.out = GREET EHLO_OK OK LONG_LINE LONG_LINE OK,
	.events = "EHLO(client.test) CLOSE",
    },
    {
	.name = "recipient limit",
	.limits = {.max_recipients = 2},
	.in = C_EHLO C_MAIL "RCPT TO:<r1@d.test>\r\nRCPT TO:<r2@d.test>\r\n"
			    "RCPT TO:<r3@d.test>\r\nDATA\r\nm\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK RCPT_OK
	"452 4.5.3 Too many recipients\r\n" GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(r1@d.test) RCPT(r2@d.test) "
		  "MESSAGE(m\\r\\n) CLOSE",
    },
    {
	.name = "rejected recipients do not count against the limit",
	.limits = {.max_recipients = 1},
	.in = C_EHLO C_MAIL "RCPT TO:<r1@d.test>\r\nRCPT TO:<r2@d.test>\r\n"
			    "RCPT TO:<r3@d.test>\r\n" C_QUIT,
	DECS(ACCEPT, {550, "5.1.1", "No such user"}, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK "550 5.1.1 No such user\r\n" RCPT_OK
				     "452 4.5.3 Too many recipients\r\n" BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(r1@d.test) RCPT(r2@d.test) CLOSE",
    },
    {
	.name = "messages per connection",
	.limits = {.max_messages = 2},
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\n1\r\n.\r\n" C_MAIL C_RCPT "DATA\r\n2\r\n.\r\n"
				   "NOOP\r\n" C_MAIL "NOOP\r\n",
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, {451, "4.3.0", "Try later"}),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK MAIL_OK RCPT_OK GO_AHEAD
	"451 4.3.0 Try later\r\n" OK "421 4.7.0 " HOST " Too many messages on this connection\r\n",
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE(1\\r\\n) "
		  "MAIL(a@b.test) RCPT(c@d.test) MESSAGE(2\\r\\n) CLOSE",
    },
    {
	.name = "error limit closes the connection",
	.limits = {.max_errors = 3},
	.in = "FOO\r\n" C_EHLO "RCPT TO:<a@b.test>\r\nNOOP\r\nBAR\r\nNOOP\r\nQUIT\r\n",
	.out = GREET UNKNOWN EHLO_OK NEED_MAIL OK UNKNOWN
	"421 4.7.0 " HOST " Too many errors, closing connection\r\n",
	.events = "EHLO(client.test) CLOSE",
    },
    {
	.name = "every sequence and syntax error",
	.limits = {.max_errors = 100},
	.in = "\r\nXYZZY\r\nMAILFROM:<a@b.test>\r\n" C_MAIL "EHLO\r\nHELO a b\r\n" C_EHLO C_RCPT
	      "DATA\r\n" C_MAIL C_MAIL "DATA\r\nDATA x\r\nRSET x\r\nQUIT now\r\n"
	      "VRFY\r\nVRFY someone\r\nEXPN list\r\nHELP\r\nHELP me\r\nNOOP\r\nNOOP hi\r\n"
	      "RSET\r\n" C_QUIT,
	DECS(ACCEPT),
	.out = GREET UNKNOWN UNKNOWN UNKNOWN
	"503 5.5.1 Send HELO or EHLO first\r\n"
	"501 5.5.4 Syntax: EHLO hostname\r\n501 5.5.4 Syntax: EHLO hostname\r\n" EHLO_OK NEED_MAIL
	    NEED_MAIL MAIL_OK "503 5.5.1 Nested MAIL command\r\n"
	"554 5.5.1 No valid recipients\r\n"
	"501 5.5.4 Syntax error: no arguments allowed\r\n"
	"501 5.5.4 Syntax error: no arguments allowed\r\n"
	"501 5.5.4 Syntax error: no arguments allowed\r\n"
	"501 5.5.4 Syntax: VRFY address\r\n"
	"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
	"502 5.5.1 Command not implemented\r\n"
	"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n"
	"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n" OK OK OK
	    BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RESET CLOSE",
    },
    {
	.name = "pipelined MAIL RCPT RCPT DATA get replies in order",
	.in = C_EHLO "MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@d.test>\r\nRCPT TO:<no@d.test>\r\n"
		     "DATA\r\nbody\r\n.\r\nQUIT\r\n",
	DECS(ACCEPT, ACCEPT, {550, "5.1.1", "User unknown"}, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK "550 5.1.1 User unknown\r\n" GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(ok@d.test) RCPT(no@d.test) "
		  "MESSAGE(body\\r\\n) CLOSE",
    },
    {
	.name = "dot-unstuffing",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\n..leading\r\n.\r\n" C_MAIL C_RCPT
				   "DATA\r\n..\r\n...\r\na.b\r\n.x\r\n\r\n.\r\n",
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE(.leading\\r\\n) "
		  "MAIL(a@b.test) RCPT(c@d.test) MESSAGE(.\\r\\n..\\r\\na.b\\r\\nx\\r\\n\\r\\n)",
    },
    {
	.name = "empty message",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\n.\r\n",
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE()",
    },
    {
	.name = "bare LF and bare CR rejected",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\na\nb\r\n.\r\n" C_MAIL C_RCPT
				   "DATA\r\na\rb\r\n.\r\n" C_MAIL C_RCPT
				   "DATA\r\nend with CR\r\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD BARE MAIL_OK RCPT_OK GO_AHEAD BARE MAIL_OK
	    RCPT_OK GO_AHEAD BARE BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET MAIL(a@b.test) "
		  "RCPT(c@d.test) RESET MAIL(a@b.test) RCPT(c@d.test) RESET CLOSE",
    },
    {
	.name = "bare LF and bare CR normalized",
	.bare_eol = KUMO_SMTP_BARE_EOL_NORMALIZE,
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\na\nb\rc\r\r\nd\n\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "MESSAGE(a\\r\\nb\\r\\nc\\r\\n\\r\\nd\\r\\n\\r\\n) CLOSE",
    },
    {
	.name = "smuggling: LF.LF and variants do not end DATA (reject)",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\nhello\n.\nMAIL FROM:<evil@x.test>\r\n"
				   "x\r\n.\nRCPT TO:<e@x.test>\r\ny\n.\r\nz\r\n.\r\r\n"
				   "DATA\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD BARE BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET CLOSE",
    },
    {
	.name = "smuggling: LF.LF does not end DATA (normalize)",
	.bare_eol = KUMO_SMTP_BARE_EOL_NORMALIZE,
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\nhello\n.\nMAIL FROM:<evil@x.test>\r\n"
				   "x\r\n.\nQUIT\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "MESSAGE(hello\\r\\n.\\r\\nMAIL FROM:<evil@x.test>\\r\\nx\\r\\n\\r\\nQUIT\\r\\n) "
		  "CLOSE",
    },
    {
	.name = "bare LF in commands rejected",
	.in = C_EHLO "NOOP\nNOOP\r\nMAIL FROM:<a@b.test>\r\r\n" C_QUIT,
	.out = GREET EHLO_OK "500 5.5.2 Syntax error: bare LF in command\r\n" OK
			     "500 5.5.2 Syntax error: invalid character in command\r\n" BYE,
	.events = "EHLO(client.test) CLOSE",
    },
    {
	.name = "bare LF in commands accepted when normalizing",
	.bare_eol = KUMO_SMTP_BARE_EOL_NORMALIZE,
	.in = "EHLO client.test\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\nx\r\n.\r\n"
	      "QUIT\n",
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE(x\\r\\n) CLOSE",
    },
    {
	.name = "BDAT chunks and LAST",
	.in = C_EHLO C_MAIL C_RCPT "BDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n" C_MAIL C_RCPT
				   "BDAT 3\r\nabcBDAT 0 LAST\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out =
	    GREET EHLO_OK MAIL_OK RCPT_OK "250 2.0.0 5 octets received\r\n" MSG_OK MAIL_OK RCPT_OK
					  "250 2.0.0 3 octets received\r\n" MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "BDAT-MESSAGE(hello world\\r\\n) MAIL(a@b.test) RCPT(c@d.test) "
		  "BDAT-MESSAGE(abc) CLOSE",
	.hook = bdat_hook,
    },
    {
	.name = "BDAT content is not parsed: dots, commands and NUL kept",
	.in = C_EHLO C_MAIL C_RCPT "BDAT 17 LAST\r\n.\r\nQUIT\r\n\x00.\r\n..\r\n" C_QUIT,
	.in_len =
	    sizeof(C_EHLO C_MAIL C_RCPT "BDAT 17 LAST\r\n.\r\nQUIT\r\n\x00.\r\n..\r\n" C_QUIT) - 1,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "BDAT-MESSAGE(.\\r\\nQUIT\\r\\n\\x00.\\r\\n..\\r\\n) CLOSE",
    },
    {
	.name = "BDAT CR at a chunk end pairs with LF; bare LF rejected",
	.in = C_EHLO C_MAIL C_RCPT "BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd" C_MAIL C_RCPT
				   "BDAT 3 LAST\r\na\nb" C_MAIL C_RCPT "BDAT 2 LAST\r\na\r" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK
	"250 2.0.0 3 octets received\r\n" MSG_OK MAIL_OK RCPT_OK BARE MAIL_OK RCPT_OK BARE BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) BDAT-MESSAGE(ab\\r\\ncd) "
		  "MAIL(a@b.test) RCPT(c@d.test) RESET MAIL(a@b.test) RCPT(c@d.test) RESET "
		  "CLOSE",
    },
    {
	.name = "BDAT bare LF normalized",
	.bare_eol = KUMO_SMTP_BARE_EOL_NORMALIZE,
	.in = C_EHLO C_MAIL C_RCPT "BDAT 5 LAST\r\na\nb\rc" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) "
		  "BDAT-MESSAGE(a\\r\\nb\\r\\nc) CLOSE",
    },
    {
	.name = "BDAT without MAIL or recipients consumes the chunk",
	.in = C_EHLO "BDAT 6\r\nQUIT\r\n" C_MAIL "RCPT TO:<no@d.test>\r\n"
		     "BDAT 6 LAST\r\nQUIT\r\nRSET\r\n" C_QUIT,
	DECS(ACCEPT, {550, "5.1.1", "No"}),
	.out = GREET EHLO_OK NEED_MAIL MAIL_OK "550 5.1.1 No\r\n"
					       "503 5.5.1 No valid recipients\r\n" OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(no@d.test) RESET CLOSE",
    },
    {
	.name = "BDAT over the size limit",
	.limits = {.max_message_size = 10},
	.in = C_EHLO C_MAIL C_RCPT "BDAT 6\r\n123456BDAT 6\r\n789012BDAT 1 LAST\r\nx" C_MAIL C_RCPT
				   "BDAT 11 LAST\r\n01234567890" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_SIZE("10") MAIL_OK RCPT_OK
	"250 2.0.0 6 octets received\r\n" TOO_BIG NEED_MAIL MAIL_OK RCPT_OK TOO_BIG BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET MAIL(a@b.test) "
		  "RCPT(c@d.test) RESET CLOSE",
    },
    {
	.name = "BDAT chunk over the limit once normalized",
	.bare_eol = KUMO_SMTP_BARE_EOL_NORMALIZE,
	.limits = {.max_message_size = 10},
	.in = C_EHLO C_MAIL C_RCPT "BDAT 6 \r\n\n\n\n\n\n\nBDAT 1 LAST  \r\nx" C_QUIT,
	DECS(ACCEPT, ACCEPT),
	.out = GREET EHLO_SIZE("10") MAIL_OK RCPT_OK TOO_BIG NEED_MAIL BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET CLOSE",
    },
    {
	.name = "BDAT sequence errors: DATA after BDAT, RCPT after BDAT, bad size",
	.in = C_EHLO C_MAIL C_RCPT "BDAT 2\r\nabDATA\r\nRCPT TO:<x@d.test>\r\nBDAT x\r\n"
				   "BDAT 1 FIRST\r\nBDAT 99999999999999999999\r\nBDAT\r\n"
				   "BDAT 1 LAST\r\nc" C_QUIT,
	DECS(ACCEPT, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK
	"250 2.0.0 2 octets received\r\n"
	"503 5.5.1 DATA not allowed after BDAT\r\n"
	"503 5.5.1 RCPT not allowed after BDAT\r\n"
	"501 5.5.4 Syntax: BDAT size [LAST]\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n"
	"501 5.5.4 Syntax: BDAT size [LAST]\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n" MSG_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) BDAT-MESSAGE(abc) CLOSE",
    },
    {
	.name = "policy: MAIL refused, then RCPT needs MAIL",
	.in = C_EHLO C_MAIL C_RCPT C_MAIL C_RCPT C_QUIT,
	DECS({550, "5.7.1", "Sender blocked"}, ACCEPT, ACCEPT),
	.out = GREET EHLO_OK "550 5.7.1 Sender blocked\r\n" NEED_MAIL MAIL_OK RCPT_OK BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) MAIL(a@b.test) RCPT(c@d.test) CLOSE",
    },
    {
	.name = "policy: message refused with a multi-line 451, transaction reset",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\nx\r\n.\r\n" C_RCPT C_MAIL C_RCPT
				   "DATA\r\ny\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, ACCEPT, {451, "4.3.0", "Queue full\nTry again later\n"}, ACCEPT, ACCEPT,
	     {250, "2.0.0", "Queued as 42"}),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD
	"451-4.3.0 Queue full\r\n451 4.3.0 Try again later\r\n" NEED_MAIL MAIL_OK RCPT_OK GO_AHEAD
	"250 2.0.0 Queued as 42\r\n" BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) MESSAGE(x\\r\\n) "
		  "MAIL(a@b.test) RCPT(c@d.test) MESSAGE(y\\r\\n) CLOSE",
    },
    {
	.name = "policy: 2xx reply to RCPT adds it, default enhanced code, 421 closes",
	.in = C_EHLO C_MAIL C_RCPT "RCPT TO:<x@d.test>\r\nDATA\r\nx\r\n.\r\n" C_QUIT,
	DECS(ACCEPT, {251, NULL, "Will forward"}, {450, NULL, "Later"},
	     {421, "4.3.2", "Shutting down"}),
	.out = GREET EHLO_OK MAIL_OK "251 2.0.0 Will forward\r\n450 4.0.0 Later\r\n" GO_AHEAD
				     "421 4.3.2 Shutting down\r\n",
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RCPT(x@d.test) "
		  "MESSAGE(x\\r\\n) CLOSE",
    },
    {
	.name = "refuse at greeting",
	.refuse = "Go away",
	.in = C_EHLO C_QUIT,
	.out = "554 5.7.1 Go away\r\n",
	.events = "CLOSE",
    },
    {
	.name = "EHLO during a transaction resets it",
	.in = C_EHLO C_MAIL C_RCPT "EHLO again.test\r\n" C_RCPT C_QUIT,
	DECS(ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK EHLO_OK NEED_MAIL BYE,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) RESET EHLO(again.test) "
		  "CLOSE",
    },
    {
	.name = "input after QUIT is ignored",
	.in = C_EHLO C_QUIT "NOOP\r\n" C_MAIL,
	.out = GREET EHLO_OK BYE,
	.events = "EHLO(client.test) CLOSE",
    },
    {
	.name = "peer closes in the middle of DATA",
	.in = C_EHLO C_MAIL C_RCPT "DATA\r\npartial\r\n",
	.eof = true,
	DECS(ACCEPT, ACCEPT),
	.out = GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD,
	.events = "EHLO(client.test) MAIL(a@b.test) RCPT(c@d.test) CLOSE",
    },
    {
	.name = "peer closes after a partial command",
	.in = C_EHLO "NOOP\r\nNOO",
	.eof = true,
	.out = GREET EHLO_OK OK,
	.events = "EHLO(client.test) CLOSE",
    },
};

/* ---- Other tests ---- */

static struct kumo_smtp_server *make(const struct kumo_smtp_limits *lim, uint64_t now)
{
	struct kumo_smtp_server_cfg cfg = {.hostname = HOST};
	struct kumo_smtp_server *s;

	if (lim)
		cfg.limits = *lim;
	assert_int_equal(kumo_smtp_server_new(&cfg, now, &s), 0);
	kumo_smtp_server_greet(s);
	return s;
}

/* Returns everything the machine has written, consuming it (static buffer). */
static const char *take_output(struct kumo_smtp_server *s)
{
	static char buf[8192];
	size_t n;
	const char *o = kumo_smtp_server_output(s, &n);

	assert_true(n < sizeof(buf));
	memcpy(buf, o, n);
	buf[n] = 0;
	kumo_smtp_server_output_consumed(s, n);
	return buf;
}

static enum kumo_smtp_ev_type next_type(struct kumo_smtp_server *s, uint64_t now)
{
	struct kumo_smtp_ev ev;

	assert_int_equal(kumo_smtp_server_next(s, now, &ev), 0);
	return ev.type;
}

static void push_str(struct kumo_smtp_server *s, const char *str)
{
	assert_int_equal(kumo_smtp_server_push(s, str, strlen(str)), 0);
}

static void test_command_timeout(void **state)
{
	struct kumo_smtp_limits lim = {.command_timeout_ms = 5000};
	struct kumo_smtp_server *s = make(&lim, 1000);

	assert_string_equal(take_output(s), GREET);
	assert_int_equal(kumo_smtp_server_deadline(s), 6000);
	/* Input pushed but not yet parsed counts as activity for tick(). */
	push_str(s, "NO");
	kumo_smtp_server_tick(s, 5999);
	assert_int_equal(kumo_smtp_server_deadline(s), 10999);
	kumo_smtp_server_tick(s, 6000);
	assert_string_equal(take_output(s), "");
	push_str(s, "OP\r\n");
	assert_int_equal(next_type(s, 6000), KUMO_SMTP_EV_NONE);
	assert_string_equal(take_output(s), OK);
	push_str(s, C_EHLO);
	assert_int_equal(next_type(s, 7000), KUMO_SMTP_EV_HELO);
	assert_int_equal(next_type(s, 7000), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_deadline(s), 12000);
	kumo_smtp_server_tick(s, 11999);
	assert_int_equal(next_type(s, 11999), KUMO_SMTP_EV_NONE);
	assert_string_equal(take_output(s), EHLO_OK);
	kumo_smtp_server_tick(s, 12000);
	assert_string_equal(take_output(s), "421 4.4.2 " HOST " Timeout, closing connection\r\n");
	assert_int_equal(next_type(s, 12000), KUMO_SMTP_EV_CLOSE);
	assert_int_equal(next_type(s, 12000), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_deadline(s), UINT64_MAX);
	assert_int_equal(kumo_smtp_server_push(s, "NOOP\r\n", 6), -EPIPE);
	kumo_smtp_server_free(s);
}

static void test_data_timeout(void **state)
{
	struct kumo_smtp_limits lim = {.command_timeout_ms = 5000, .data_timeout_ms = 2000};
	struct kumo_smtp_server *s = make(&lim, 0);

	push_str(s, C_EHLO C_MAIL C_RCPT);
	assert_int_equal(next_type(s, 100), KUMO_SMTP_EV_HELO);
	assert_int_equal(next_type(s, 100), KUMO_SMTP_EV_MAIL);
	/* No deadline while a decision is pending. */
	assert_int_equal(kumo_smtp_server_deadline(s), UINT64_MAX);
	kumo_smtp_server_tick(s, 1000000);
	assert_int_equal(kumo_smtp_server_accept(s), 0);
	/* After the decision the clock restarts from the next call. */
	assert_int_equal(next_type(s, 1000000), KUMO_SMTP_EV_RCPT);
	assert_int_equal(kumo_smtp_server_accept(s), 0);
	assert_int_equal(next_type(s, 1000010), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_deadline(s), 1005010);
	push_str(s, "DATA\r\npart");
	assert_int_equal(next_type(s, 1001000), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_deadline(s), 1003000);
	push_str(s, "ial\r\n");
	assert_int_equal(next_type(s, 1002000), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_deadline(s), 1004000);
	kumo_smtp_server_tick(s, 1003999);
	kumo_smtp_server_tick(s, 1004000);
	assert_string_equal(take_output(s), GREET EHLO_OK MAIL_OK RCPT_OK GO_AHEAD
			    "421 4.4.2 " HOST " Timeout, closing connection\r\n");
	assert_int_equal(next_type(s, 1004000), KUMO_SMTP_EV_CLOSE);
	kumo_smtp_server_free(s);
}

static void test_bdat_timeout(void **state)
{
	struct kumo_smtp_limits lim = {.command_timeout_ms = 5000, .data_timeout_ms = 2000};
	struct kumo_smtp_server *s = make(&lim, 0);
	struct kumo_smtp_ev ev;

	push_str(s, C_EHLO C_MAIL C_RCPT "BDAT 3\r\nabc");
	while (kumo_smtp_server_next(s, 10, &ev) == 0 && ev.type != KUMO_SMTP_EV_NONE)
		if (ev.type != KUMO_SMTP_EV_HELO)
			assert_int_equal(kumo_smtp_server_accept(s), 0);
	/* Between BDAT chunks the data timeout runs. */
	assert_int_equal(kumo_smtp_server_deadline(s), 2010);
	kumo_smtp_server_tick(s, 2010);
	assert_int_equal(next_type(s, 2010), KUMO_SMTP_EV_CLOSE);
	kumo_smtp_server_free(s);
}

static void test_input_full_while_pending(void **state)
{
	struct kumo_smtp_server *s = make(NULL, 0);
	char noops[6 * 1000];
	size_t total = 0, space;
	void *p;

	for (size_t i = 0; i < sizeof(noops); i += 6)
		memcpy(noops + i, "NOOP\r\n", 6);
	push_str(s, C_EHLO C_MAIL);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_HELO);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_MAIL);
	/* Pipelined input is held, bounded, while the decision is pending. */
	while ((p = kumo_smtp_server_input_space(s, &space)) != NULL) {
		size_t k = space < sizeof(noops) ? space : sizeof(noops);

		memcpy(p, noops, k);
		kumo_smtp_server_input_commit(s, k);
		total += k;
		assert_true(total <= KUMO_SMTP_INPUT_MAX);
	}
	assert_int_equal(space, 0);
	assert_true(total > KUMO_SMTP_INPUT_MAX - 100);
	assert_int_equal(kumo_smtp_server_push(s, "x", 1), -ENOBUFS);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
	assert_int_equal(kumo_smtp_server_accept(s), 0);
	/* Parsing resumes; output is bounded until consumed. */
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
	{
		size_t n;

		kumo_smtp_server_output(s, &n);
		assert_true(n >= 65536 && n < 65536 + 64);
		kumo_smtp_server_output_consumed(s, n);
		assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
		kumo_smtp_server_output(s, &n);
		assert_true(n > 0);
	}
	assert_non_null(kumo_smtp_server_input_space(s, &space));
	assert_true(space > 0);
	kumo_smtp_server_free(s);
}

static void test_large_message(void **state)
{
	struct kumo_smtp_server *s = make(NULL, 0);
	size_t body = 3000 * 1000, sent = 0;
	char line[1001];
	struct kumo_smtp_ev ev;
	const struct kumo_smtp_txn *txn;

	memset(line, 'x', 998);
	memcpy(line + 998, "\r\n", 3);
	push_str(s, C_EHLO C_MAIL C_RCPT "DATA\r\n");
	while (kumo_smtp_server_next(s, 0, &ev) == 0 && ev.type != KUMO_SMTP_EV_NONE)
		if (ev.type != KUMO_SMTP_EV_HELO)
			assert_int_equal(kumo_smtp_server_accept(s), 0);
	/* Arbitrary read sizes: whatever space the machine offers, 7 KB at most. */
	while (sent < body) {
		size_t space, k;
		char *p = kumo_smtp_server_input_space(s, &space);

		assert_non_null(p);
		assert_true(space >= 4096);
		k = space < 7001 ? space : 7001;
		if (k > body - sent)
			k = body - sent;
		for (size_t i = 0; i < k; i++)
			p[i] = line[(sent + i) % 1000];
		kumo_smtp_server_input_commit(s, k);
		sent += k;
		assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
	}
	push_str(s, ".\r\n");
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_MESSAGE);
	txn = kumo_smtp_server_txn(s);
	assert_int_equal(txn->data_len, sent);
	assert_memory_equal(txn->data + sent - 1000, line, 1000);
	assert_int_equal(kumo_smtp_server_accept(s), 0);
	assert_null(kumo_smtp_server_txn(s)->data);
	assert_null(kumo_smtp_server_txn(s)->sender);
	kumo_smtp_server_free(s);
}

static void test_api_errors(void **state)
{
	struct kumo_smtp_server_cfg cfg = {.hostname = HOST};
	struct kumo_smtp_server *s;
	struct kumo_smtp_limits lim = {.max_line = 1000};

	assert_int_equal(kumo_smtp_server_new(NULL, 0, &s), -EINVAL);
	cfg.hostname = NULL;
	assert_int_equal(kumo_smtp_server_new(&cfg, 0, &s), -EINVAL);
	cfg.hostname = "bad host";
	assert_int_equal(kumo_smtp_server_new(&cfg, 0, &s), -EINVAL);
	cfg.hostname = "";
	assert_int_equal(kumo_smtp_server_new(&cfg, 0, &s), -EINVAL);
	cfg.hostname = HOST;
	cfg.bare_eol = 7;
	assert_int_equal(kumo_smtp_server_new(&cfg, 0, &s), -EINVAL);
	cfg.bare_eol = KUMO_SMTP_BARE_EOL_REJECT;

	kumo_smtp_limits_defaults(&lim);
	assert_int_equal(lim.max_line, 1000);
	assert_int_equal(lim.max_recipients, 100);
	assert_int_equal(lim.max_message_size, 50 * 1024 * 1024);
	assert_int_equal(lim.max_messages, 1000);
	assert_int_equal(lim.max_errors, 20);
	assert_int_equal(lim.command_timeout_ms, 300000);
	assert_int_equal(lim.data_timeout_ms, 180000);

	s = make(NULL, 0);
	assert_int_equal(kumo_smtp_server_accept(s), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 550, "5.0.0", "x"), -EINVAL);
	push_str(s, C_EHLO C_MAIL);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_HELO);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_MAIL);
	assert_int_equal(kumo_smtp_server_reply(s, 354, NULL, "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 199, NULL, "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 600, NULL, "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 550, "4.1.1", "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 550, "5.1", "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 550, "5.1.1000", "x"), -EINVAL);
	assert_int_equal(kumo_smtp_server_reply(s, 550, "5..1", "x"), -EINVAL);
	take_output(s);
	/* Control characters in the embedder's text cannot inject a reply line. */
	assert_int_equal(kumo_smtp_server_reply(s, 550, "5.7.1", "no\r250 ok\ttab"), 0);
	assert_string_equal(take_output(s), "550 5.7.1 no 250 ok tab\r\n");
	assert_int_equal(kumo_smtp_server_accept(s), -EINVAL);
	/* greet() and refuse() after the start do nothing. */
	kumo_smtp_server_greet(s);
	kumo_smtp_server_refuse(s, 554, NULL, "x");
	assert_string_equal(take_output(s), "");
	kumo_smtp_server_free(s);
	kumo_smtp_server_free(NULL);

	/* Nothing is parsed before the greeting. */
	assert_int_equal(kumo_smtp_server_new(&cfg, 0, &s), 0);
	push_str(s, "NOOP\r\n");
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
	assert_string_equal(take_output(s), "");
	kumo_smtp_server_refuse(s, 200, NULL, "Busy\nTry later");
	assert_string_equal(take_output(s), "554-Busy\r\n554 Try later\r\n");
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_CLOSE);
	assert_int_equal(next_type(s, 0), KUMO_SMTP_EV_NONE);
	assert_null(kumo_smtp_server_input_space(s, &(size_t){0}));
	kumo_smtp_server_free(s);
}

int main(void)
{
	size_t nt = sizeof(transcripts) / sizeof(transcripts[0]);
	const struct CMUnitTest fixed[] = {
	    cmocka_unit_test(test_command_timeout), cmocka_unit_test(test_data_timeout),
	    cmocka_unit_test(test_bdat_timeout),    cmocka_unit_test(test_input_full_while_pending),
	    cmocka_unit_test(test_large_message),   cmocka_unit_test(test_api_errors),
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
	rc = _cmocka_run_group_tests("smtp_server", tests, nt + nf, NULL, NULL);
	free(tests);
	return rc;
}
