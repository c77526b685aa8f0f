/* SMTP client protocol machine: a reply parser over buffered input, the session states
 * (greeting, EHLO/HELO, idle, transaction, QUIT), the transaction plan with pipelining, and
 * the writer for commands and dot-stuffed data. See smtp_client.h and docs/smtp-client.md. */
#include "proto/smtp_client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define EVQ_LEN 4     /* one step queues at most two events */
#define ENH_MAX 12    /* "c.sss.ddd" and its NUL */
#define LOCAL_MAX 256 /* text of a synthesized reply */

enum cli_state {
	ST_GREETING, /* waiting for the 220 */
	ST_EHLO,     /* EHLO sent */
	ST_HELO,     /* HELO sent after EHLO was refused */
	ST_READY,    /* idle between transactions: input is held, not parsed */
	ST_TXN,	     /* a transaction is in flight */
	ST_QUIT,     /* QUIT sent */
	ST_CLOSED,   /* FAILED or CLOSED queued: nothing more happens */
};

enum mail_state { MAIL_PENDING = 0, MAIL_OK, MAIL_REFUSED };
enum rcpt_state { RCPT_PENDING = 0, RCPT_OK, RCPT_REFUSED };

/* A stored reply: the public view is built from it when a result is handed out, so the
 * array of recipient slots may move while it grows. */
struct slot {
	int code;		       /* 0: none */
	bool local;		       /* synthesized */
	enum kumo_smtp_client_cmd cmd; /* what it answered */
	char enh[ENH_MAX];	       /* "" or "c.sss.ddd" */
	char *text;		       /* owned; NULL is "" */
};

/* The reply being parsed, line by line. */
struct parse {
	int code;	   /* of the first line; 0 before it */
	char enh[ENH_MAX]; /* from the first line */
	char *text;	   /* joined lines, NUL-terminated */
	size_t len;
	size_t cap;
};

/* A growable byte buffer (commands of the transaction, output). */
struct buf {
	char *p;
	size_t len;
	size_t cap;
};

struct kumo_smtp_client {
	/* Configuration */
	char *ehlo_name;		     /* our EHLO/HELO argument */
	struct kumo_smtp_client_timeouts to; /* with defaults filled in */
	bool no_pipelining;		     /* never pipeline */
	bool no_chunking;		     /* never BDAT */

	/* Session */
	enum cli_state state;		   /* what the next reply answers */
	struct kumo_smtp_client_caps caps; /* from the EHLO reply */
	bool eof;			   /* the peer closed its side */
	bool oom;			   /* an allocation failed: next() fails */
	bool need_rset;			   /* the last transaction left the peer mid-way */
	struct slot fail;		   /* the reply in the FAILED event */
	struct kumo_smtp_client_reply fail_view;

	/* Input: unparsed bytes are in[in_off, in_len) */
	uint8_t in[KUMO_SMTP_CLIENT_INPUT_MAX];
	size_t in_off; /* first unparsed byte */
	size_t in_len; /* end of buffered bytes */
	size_t scan;   /* bytes after in_off known to hold no LF */
	struct parse cur;

	/* Transaction: the plan is [RSET] MAIL RCPT... (DATA "." | BDAT), one command each
	 * in cmds, which are written all at once (pipelining) or one per reply. */
	struct buf cmds; /* formatted commands */
	size_t *cmd_off; /* command i is cmds.p[cmd_off[i], cmd_off[i + 1]) */
	size_t ncmd;	 /* commands in the plan (the "." is not one) */
	size_t sent;	 /* commands written, the "." included */
	size_t got;	 /* replies received */
	bool rset;	 /* the plan starts with RSET */
	bool bdat;	 /* BDAT rather than DATA */
	bool pipelined;	 /* the whole plan was written at once */
	bool data_real;	 /* the "." follows the message (not a lone one) */
	bool ended;	 /* the peer closed the transaction (reply to "." or BDAT 2xx) */
	enum mail_state mail_st;
	size_t nrcpt;
	size_t accepted;		    /* RCPT 2xx so far */
	size_t rcpt_cap;		    /* allocated entries of rst, rslot, res */
	uint8_t *rst;			    /* enum rcpt_state per recipient */
	struct slot *rslot;		    /* RCPT refusals */
	struct kumo_smtp_client_reply *res; /* the result per recipient */
	struct slot mail;		    /* reply to MAIL */
	struct slot data;		    /* data reply */
	struct slot tfail;		    /* what recipients get when the session fails */
	const uint8_t *msg;		    /* the caller's message data */
	size_t msg_len;
	struct kumo_smtp_client_result result;
	struct kumo_smtp_client_reply mail_view;
	struct kumo_smtp_client_reply data_view;

	/* Events */
	struct kumo_smtp_client_ev evq[EVQ_LEN];
	unsigned ev_head;
	unsigned ev_n;

	/* Output: unsent bytes are out.p[out_off, out.len) */
	struct buf out;
	size_t out_off;
	uint64_t out_done; /* bytes consumed since the start */
	uint64_t data_end; /* out_done value once the message data is written */

	/* Time */
	uint64_t now;	    /* latest time seen */
	uint64_t last;	    /* base of the deadline: the last progress */
	bool clock_restart; /* input, output progress or a new command: restart the deadline */
};

void kumo_smtp_client_timeouts_defaults(struct kumo_smtp_client_timeouts *t)
{
	if (!t->greeting_ms)
		t->greeting_ms = KUMO_SMTP_CLIENT_DEFAULT_GREETING_TIMEOUT_MS;
	if (!t->ehlo_ms)
		t->ehlo_ms = KUMO_SMTP_CLIENT_DEFAULT_EHLO_TIMEOUT_MS;
	if (!t->mail_ms)
		t->mail_ms = KUMO_SMTP_CLIENT_DEFAULT_MAIL_TIMEOUT_MS;
	if (!t->rcpt_ms)
		t->rcpt_ms = KUMO_SMTP_CLIENT_DEFAULT_RCPT_TIMEOUT_MS;
	if (!t->data_ms)
		t->data_ms = KUMO_SMTP_CLIENT_DEFAULT_DATA_TIMEOUT_MS;
	if (!t->data_block_ms)
		t->data_block_ms = KUMO_SMTP_CLIENT_DEFAULT_DATA_BLOCK_TIMEOUT_MS;
	if (!t->data_end_ms)
		t->data_end_ms = KUMO_SMTP_CLIENT_DEFAULT_DATA_END_TIMEOUT_MS;
}

/* ---- Buffers ---- */

static bool buf_reserve(struct kumo_smtp_client *c, struct buf *b, size_t n)
{
	size_t cap;
	char *p;

	if (c->oom)
		return false;
	if (b->cap - b->len >= n)
		return true;
	cap = b->cap ? b->cap : 512;
	while (cap - b->len < n) {
		if (cap > SIZE_MAX / 2)
			goto fail;
		cap *= 2;
	}
	p = realloc(b->p, cap);
	if (!p)
		goto fail;
	b->p = p;
	b->cap = cap;
	return true;
fail:
	c->oom = true;
	return false;
}

static void buf_put(struct kumo_smtp_client *c, struct buf *b, const void *p, size_t n)
{
	if (!buf_reserve(c, b, n))
		return;
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void buf_str(struct kumo_smtp_client *c, struct buf *b, const char *s)
{
	buf_put(c, b, s, strlen(s));
}

/* Makes room for n more output bytes, first dropping what was consumed. */
static bool out_reserve(struct kumo_smtp_client *c, size_t n)
{
	if (c->out_off) {
		memmove(c->out.p, c->out.p + c->out_off, c->out.len - c->out_off);
		c->out.len -= c->out_off;
		c->out_off = 0;
	}
	return buf_reserve(c, &c->out, n);
}

static void out_put(struct kumo_smtp_client *c, const void *p, size_t n)
{
	if (out_reserve(c, n)) {
		memcpy(c->out.p + c->out.len, p, n);
		c->out.len += n;
	}
	c->clock_restart = true;
}

/* The out_done value once everything now in the output is consumed. */
static uint64_t out_end(const struct kumo_smtp_client *c)
{
	return c->out_done + (c->out.len - c->out_off);
}

/* ---- Replies ---- */

static void slot_clear(struct slot *s)
{
	free(s->text);
	memset(s, 0, sizeof(*s));
}

static void slot_set(struct kumo_smtp_client *c, struct slot *s, int code, const char *enh,
		     const char *text, enum kumo_smtp_client_cmd cmd, bool local)
{
	slot_clear(s);
	s->code = code;
	s->local = local;
	s->cmd = cmd;
	snprintf(s->enh, sizeof(s->enh), "%s", enh ? enh : "");
	if (text && *text) {
		s->text = strdup(text);
		if (!s->text)
			c->oom = true;
	}
}

/* Stores the reply just parsed. */
static void slot_peer(struct kumo_smtp_client *c, struct slot *s, enum kumo_smtp_client_cmd cmd)
{
	slot_set(c, s, c->cur.code, c->cur.enh, c->cur.text, cmd, false);
}

__attribute__((format(printf, 6, 7))) static void
slot_local(struct kumo_smtp_client *c, struct slot *s, int code, const char *enh,
	   enum kumo_smtp_client_cmd cmd, const char *fmt, ...)
{
	char text[LOCAL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	slot_set(c, s, code, enh, text, cmd, true);
}

static struct kumo_smtp_client_reply slot_view(const struct slot *s)
{
	struct kumo_smtp_client_reply r = {
	    .code = s->code,
	    .enhanced = s->enh,
	    .text = s->text ? s->text : "",
	    .command = s->cmd,
	    .local = s->local,
	};
	return r;
}

/* ---- Events ---- */

static void ev_push(struct kumo_smtp_client *c, enum kumo_smtp_client_ev_type type)
{
	struct kumo_smtp_client_ev *ev;

	if (c->ev_n == EVQ_LEN)
		return; /* cannot happen: a step queues at most two events */
	ev = &c->evq[(c->ev_head + c->ev_n++) % EVQ_LEN];
	memset(ev, 0, sizeof(*ev));
	ev->type = type;
	if (type == KUMO_SMTP_CLIENT_EV_TXN_DONE)
		ev->result = &c->result;
	else if (type == KUMO_SMTP_CLIENT_EV_FAILED)
		ev->reply = &c->fail_view;
}

static void go_ready(struct kumo_smtp_client *c)
{
	c->state = ST_READY;
	ev_push(c, KUMO_SMTP_CLIENT_EV_READY);
}

static void go_closed(struct kumo_smtp_client *c)
{
	c->state = ST_CLOSED;
	ev_push(c, KUMO_SMTP_CLIENT_EV_CLOSED);
}

/* ---- Transaction plan ---- */

/* The command whose reply is the i-th of the transaction. */
static enum kumo_smtp_client_cmd plan_cmd(const struct kumo_smtp_client *c, size_t i)
{
	if (c->rset) {
		if (i == 0)
			return KUMO_SMTP_CLIENT_CMD_RSET;
		i--;
	}
	if (i == 0)
		return KUMO_SMTP_CLIENT_CMD_MAIL;
	if (i <= c->nrcpt)
		return KUMO_SMTP_CLIENT_CMD_RCPT;
	if (i == c->nrcpt + 1)
		return c->bdat ? KUMO_SMTP_CLIENT_CMD_BDAT : KUMO_SMTP_CLIENT_CMD_DATA;
	return KUMO_SMTP_CLIENT_CMD_DATA_END;
}

/* The recipient index of the i-th reply, which must be a RCPT one. */
static size_t plan_rcpt(const struct kumo_smtp_client *c, size_t i)
{
	return i - 1 - (c->rset ? 1 : 0);
}

/* Writes the message raw (BDAT) and notes where it ends for the data block timeout. */
static void put_raw(struct kumo_smtp_client *c)
{
	if (c->msg_len)
		out_put(c, c->msg, c->msg_len);
	c->data_end = out_end(c);
}

/* Writes the message dot-stuffed, ending with CRLF "." CRLF. A "." after any LF is doubled,
 * so no line can end the data early even where the peer takes a bare LF as a line end. */
static void put_stuffed(struct kumo_smtp_client *c)
{
	const uint8_t *p, *end, *lf;
	size_t extra = 0, tail = 0, total;
	char *o;

	if (!c->msg_len) {
		out_put(c, ".\r\n", 3);
		c->data_end = out_end(c);
		return;
	}
	p = c->msg;
	end = p + c->msg_len;
	if (*p == '.')
		extra++;
	for (const uint8_t *q = p; (lf = memchr(q, '\n', (size_t)(end - q))); q = lf + 1)
		if (lf + 1 < end && lf[1] == '.')
			extra++;
	if (end[-1] == '\r')
		tail = 1; /* "\n" completes the line */
	else if (end[-1] != '\n' || c->msg_len < 2 || end[-2] != '\r')
		tail = 2; /* "\r\n" */
	if (c->msg_len > SIZE_MAX - extra - tail - 3) {
		c->oom = true;
		return;
	}
	total = c->msg_len + extra + tail + 3;
	if (!out_reserve(c, total))
		return;
	o = c->out.p + c->out.len;
	if (*p == '.')
		*o++ = '.';
	while ((lf = memchr(p, '\n', (size_t)(end - p)))) {
		size_t n = (size_t)(lf + 1 - p);

		memcpy(o, p, n);
		o += n;
		p = lf + 1;
		if (p < end && *p == '.')
			*o++ = '.';
	}
	memcpy(o, p, (size_t)(end - p));
	o += end - p;
	if (tail == 2)
		*o++ = '\r';
	if (tail)
		*o++ = '\n';
	memcpy(o, ".\r\n", 3);
	c->out.len += total;
	c->data_end = out_end(c);
	c->clock_restart = true;
}

/* Writes the next command of the plan (with the message after BDAT). */
static void put_cmd(struct kumo_smtp_client *c)
{
	size_t i = c->sent++;

	out_put(c, c->cmds.p + c->cmd_off[i], c->cmd_off[i + 1] - c->cmd_off[i]);
	if (plan_cmd(c, i) == KUMO_SMTP_CLIENT_CMD_BDAT)
		put_raw(c);
}

/* Hands out the result: TXN_DONE. With fail, the session failed: recipients without a
 * final answer get fail. The caller queues what comes next (READY or FAILED). */
static void txn_finish(struct kumo_smtp_client *c, const struct slot *fail)
{
	struct kumo_smtp_client_reply mail = slot_view(&c->mail);
	struct kumo_smtp_client_reply data = slot_view(&c->data);

	if (fail && !c->data.code)
		data = slot_view(fail);
	for (size_t i = 0; i < c->nrcpt; i++) {
		if (c->mail_st == MAIL_REFUSED)
			c->res[i] = mail;
		else if (c->rst[i] == RCPT_REFUSED)
			c->res[i] = slot_view(&c->rslot[i]);
		else if (fail)
			c->res[i] = slot_view(fail);
		else
			c->res[i] = data;
	}
	c->mail_view = mail;
	c->data_view = data;
	c->result.nrcpt = c->nrcpt;
	c->result.rcpt = c->res;
	c->result.mail = &c->mail_view;
	c->result.data = &c->data_view;
	c->result.accepted = c->accepted;
	if (!fail)
		c->need_rset = c->mail_st == MAIL_OK && !c->ended;
	c->msg = NULL;
	c->msg_len = 0;
	ev_push(c, KUMO_SMTP_CLIENT_EV_TXN_DONE);
}

/* ---- Session end ---- */

/* The session is over: the transaction in flight gets for_txn, FAILED carries c->fail.
 * quit: the peer is still in step (it refused the greeting or EHLO/HELO), say QUIT. */
static void session_fail(struct kumo_smtp_client *c, const struct slot *for_txn, bool quit)
{
	if (c->state == ST_CLOSED)
		return;
	if (c->state == ST_TXN)
		txn_finish(c, for_txn);
	if (quit)
		out_put(c, "QUIT\r\n", 6);
	c->fail_view = slot_view(&c->fail);
	c->state = ST_CLOSED;
	ev_push(c, KUMO_SMTP_CLIENT_EV_FAILED);
}

/* The reply just parsed ends the session. */
static void fail_peer(struct kumo_smtp_client *c, enum kumo_smtp_client_cmd cmd, bool quit)
{
	slot_peer(c, &c->fail, cmd);
	session_fail(c, &c->fail, quit);
}

/* The command whose reply is awaited. */
static enum kumo_smtp_client_cmd awaited(const struct kumo_smtp_client *c)
{
	switch (c->state) {
	case ST_GREETING:
		return KUMO_SMTP_CLIENT_CMD_GREETING;
	case ST_EHLO:
		return KUMO_SMTP_CLIENT_CMD_EHLO;
	case ST_HELO:
		return KUMO_SMTP_CLIENT_CMD_HELO;
	case ST_TXN:
		return plan_cmd(c, c->got);
	case ST_QUIT:
		return KUMO_SMTP_CLIENT_CMD_QUIT;
	case ST_READY:
	case ST_CLOSED:
		break;
	}
	return KUMO_SMTP_CLIENT_CMD_NONE;
}

/* A local failure of the session (timeout, EOF, protocol error). After QUIT there is
 * nothing left to lose: the session just closes. */
__attribute__((format(printf, 4, 5))) static void fail_local(struct kumo_smtp_client *c, int code,
							     const char *enh, const char *fmt, ...)
{
	char text[LOCAL_MAX];
	va_list ap;

	if (c->state == ST_QUIT) {
		go_closed(c);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	slot_set(c, &c->fail, code, enh, text, awaited(c), true);
	session_fail(c, &c->fail, false);
}

static void proto_error(struct kumo_smtp_client *c, const char *what)
{
	fail_local(c, 451, "4.5.0", "protocol error: %s", what);
}

/* ---- Reply handling per state ---- */

static void put_ehlo(struct kumo_smtp_client *c, const char *verb)
{
	out_put(c, verb, strlen(verb));
	out_put(c, c->ehlo_name, strlen(c->ehlo_name));
	out_put(c, "\r\n", 2);
}

static void on_greeting(struct kumo_smtp_client *c)
{
	int cls = c->cur.code / 100;

	if (cls == 2) {
		put_ehlo(c, "EHLO ");
		c->state = ST_EHLO;
	} else if (cls == 3) {
		proto_error(c, "unexpected reply to the greeting");
	} else {
		/* RFC 5321 3.1: after a 554 greeting the server waits for QUIT. */
		fail_peer(c, KUMO_SMTP_CLIENT_CMD_GREETING, c->cur.code != 421);
	}
}

/* The first word of an EHLO line matched case-insensitively. */
static bool keyword(const char *line, size_t n, const char *kw)
{
	return strlen(kw) == n && !strncasecmp(line, kw, n);
}

/* EHLO keywords (RFC 5321 4.1.1.1): every line after the first is "keyword [params]". */
static void parse_ehlo(struct kumo_smtp_client *c)
{
	const char *line = c->cur.text ? strchr(c->cur.text, '\n') : NULL;

	memset(&c->caps, 0, sizeof(c->caps));
	c->caps.esmtp = true;
	while (line) {
		size_t n;

		line++;
		n = strcspn(line, " \n");
		if (keyword(line, n, "PIPELINING")) {
			c->caps.pipelining = true;
		} else if (keyword(line, n, "SIZE")) {
			const char *p = line + n;
			size_t v = 0;

			c->caps.size = true;
			while (*p == ' ')
				p++;
			for (; *p >= '0' && *p <= '9'; p++)
				v = v > (SIZE_MAX - 9) / 10 ? SIZE_MAX
							    : v * 10 + (size_t)(*p - '0');
			c->caps.size_max = v;
		} else if (keyword(line, n, "8BITMIME")) {
			c->caps.eightbitmime = true;
		} else if (keyword(line, n, "SMTPUTF8")) {
			c->caps.smtputf8 = true;
		} else if (keyword(line, n, "CHUNKING")) {
			c->caps.chunking = true;
		} else if (keyword(line, n, "DSN")) {
			c->caps.dsn = true;
		} else if (keyword(line, n, "ENHANCEDSTATUSCODES")) {
			c->caps.enhancedstatuscodes = true;
		} else if (keyword(line, n, "STARTTLS")) {
			c->caps.starttls = true;
		}
		line = strchr(line, '\n');
	}
}

static void on_ehlo(struct kumo_smtp_client *c)
{
	int cls = c->cur.code / 100;

	if (cls == 2) {
		parse_ehlo(c);
		go_ready(c);
	} else if (cls == 5) {
		/* 500/502/504/550...: an old server, or one refusing EHLO; try HELO. */
		put_ehlo(c, "HELO ");
		c->state = ST_HELO;
	} else if (cls == 3) {
		proto_error(c, "unexpected reply to EHLO");
	} else {
		fail_peer(c, KUMO_SMTP_CLIENT_CMD_EHLO, c->cur.code != 421);
	}
}

static void on_helo(struct kumo_smtp_client *c)
{
	int cls = c->cur.code / 100;

	if (cls == 2) {
		memset(&c->caps, 0, sizeof(c->caps));
		go_ready(c);
	} else if (cls == 3) {
		proto_error(c, "unexpected reply to HELO");
	} else {
		fail_peer(c, KUMO_SMTP_CLIENT_CMD_HELO, c->cur.code != 421);
	}
}

/* After a reply in a transaction: wait for more, write the next command (one at a time
 * without pipelining), or finish. */
static void txn_continue(struct kumo_smtp_client *c)
{
	enum kumo_smtp_client_cmd next;

	if (c->got < c->sent)
		return;
	if (c->sent < c->ncmd) {
		next = plan_cmd(c, c->sent);
		if (next == KUMO_SMTP_CLIENT_CMD_MAIL ||
		    (next == KUMO_SMTP_CLIENT_CMD_RCPT && c->mail_st == MAIL_OK) ||
		    (c->mail_st == MAIL_OK && c->accepted)) {
			put_cmd(c);
			return;
		}
	}
	txn_finish(c, NULL);
	go_ready(c);
}

static void on_txn(struct kumo_smtp_client *c)
{
	size_t i = c->got++;
	enum kumo_smtp_client_cmd cmd = plan_cmd(c, i);
	int cls = c->cur.code / 100;
	bool deliver = c->mail_st == MAIL_OK && c->accepted;

	if (c->cur.code == 421) {
		fail_peer(c, cmd, false);
		return;
	}
	switch (cmd) {
	case KUMO_SMTP_CLIENT_CMD_RSET:
		if (cls == 3)
			goto unexpected;
		if (cls != 2) {
			slot_peer(c, &c->fail, cmd);
			slot_local(c, &c->tfail, 451, "4.5.0", cmd, "protocol error: RSET refused");
			session_fail(c, &c->tfail, false);
			return;
		}
		break;
	case KUMO_SMTP_CLIENT_CMD_MAIL:
		if (cls == 3)
			goto unexpected;
		slot_peer(c, &c->mail, cmd);
		c->mail_st = cls == 2 ? MAIL_OK : MAIL_REFUSED;
		break;
	case KUMO_SMTP_CLIENT_CMD_RCPT: {
		size_t r = plan_rcpt(c, i);

		if (cls == 3)
			goto unexpected;
		if (cls == 2) {
			c->rst[r] = RCPT_OK;
			if (c->mail_st == MAIL_OK)
				c->accepted++;
		} else {
			c->rst[r] = RCPT_REFUSED;
			slot_peer(c, &c->rslot[r], cmd);
		}
		break;
	}
	case KUMO_SMTP_CLIENT_CMD_DATA:
		if (cls == 2)
			goto unexpected;
		if (cls == 3) {
			/* RFC 2920 3.1: a 354 with no valid recipient gets a lone ".". */
			c->data_real = deliver;
			if (deliver)
				put_stuffed(c);
			else
				out_put(c, ".\r\n", 3);
			c->sent++;
		} else if (deliver) {
			slot_peer(c, &c->data, cmd);
		}
		break;
	case KUMO_SMTP_CLIENT_CMD_DATA_END:
		if (cls == 3)
			goto unexpected;
		c->ended = true;
		if (c->data_real)
			slot_peer(c, &c->data, cmd);
		break;
	case KUMO_SMTP_CLIENT_CMD_BDAT:
		if (cls == 3)
			goto unexpected;
		if (cls == 2)
			c->ended = true;
		if (deliver)
			slot_peer(c, &c->data, cmd);
		break;
	default:
		goto unexpected;
	}
	txn_continue(c);
	return;
unexpected:
	c->got--; /* the failure is about the command still awaited */
	proto_error(c, "unexpected reply code");
}

/* A complete reply. */
static void dispatch(struct kumo_smtp_client *c)
{
	switch (c->state) {
	case ST_GREETING:
		on_greeting(c);
		break;
	case ST_EHLO:
		on_ehlo(c);
		break;
	case ST_HELO:
		on_helo(c);
		break;
	case ST_TXN:
		on_txn(c);
		break;
	case ST_QUIT:
		go_closed(c);
		break;
	case ST_READY:
		/* Read only once the peer closed: a parting reply such as 421. */
		if (c->cur.code >= 400)
			fail_peer(c, KUMO_SMTP_CLIENT_CMD_NONE, false);
		else
			proto_error(c, "unsolicited reply");
		break;
	case ST_CLOSED:
		break;
	}
}

/* ---- Reply parser (RFC 5321 4.2) ---- */

static bool is_digit(int ch)
{
	return ch >= '0' && ch <= '9';
}

/* Length of an enhanced status code "c.sss.ddd" (RFC 3463) of class cls at p[0..n), when it
 * is followed by a space or the end; else 0. */
static size_t enh_len(const char *p, size_t n, int cls)
{
	size_t i = 2;

	if (n < 5 || p[0] != '0' + cls || p[1] != '.')
		return 0;
	for (int part = 0; part < 2; part++) {
		size_t start = i;

		while (i < n && is_digit(p[i]))
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i == n || p[i] != '.')
				return 0;
			i++;
		}
	}
	return (i == n || p[i] == ' ') ? i : 0;
}

static bool cur_append(struct kumo_smtp_client *c, const char *p, size_t n, bool newline)
{
	struct parse *r = &c->cur;
	size_t need = r->len + n + (newline ? 1 : 0) + 1;

	if (need > KUMO_SMTP_CLIENT_MAX_REPLY)
		return false;
	if (need > r->cap) {
		size_t cap = r->cap ? r->cap : 256;
		char *t;

		while (cap < need)
			cap *= 2;
		t = realloc(r->text, cap);
		if (!t) {
			c->oom = true;
			return true;
		}
		r->text = t;
		r->cap = cap;
	}
	if (newline)
		r->text[r->len++] = '\n';
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)p[i];

		r->text[r->len++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
	}
	r->text[r->len] = 0;
	return true;
}

/* One reply line without its line end. */
static void parse_line(struct kumo_smtp_client *c, const char *line, size_t n)
{
	struct parse *r = &c->cur;
	bool first = r->code == 0, last;
	const char *text;
	size_t tlen, e;
	int code;

	if (n < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2]) ||
	    (n > 3 && line[3] != ' ' && line[3] != '-')) {
		proto_error(c, "malformed reply");
		return;
	}
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (!first && code != r->code) {
		proto_error(c, "reply code changed within a multi-line reply");
		return;
	}
	last = n == 3 || line[3] == ' ';
	text = n > 3 ? line + 4 : line + 3;
	tlen = n > 3 ? n - 4 : 0;
	if (c->caps.enhancedstatuscodes) {
		e = enh_len(text, tlen, code / 100);
		if (first && e) {
			memcpy(r->enh, text, e);
			r->enh[e] = 0;
		}
		/* Later lines repeating the code lose it too. */
		if (e && !strncmp(text, r->enh, e) && r->enh[e] == 0) {
			text += e;
			tlen -= e;
			if (tlen) {
				text++;
				tlen--;
			}
		}
	}
	r->code = code;
	if (!cur_append(c, text, tlen, !first)) {
		proto_error(c, "reply too long");
		return;
	}
	if (!last)
		return;
	dispatch(c);
	r->code = 0;
	r->enh[0] = 0;
	r->len = 0;
	if (r->text)
		r->text[0] = 0;
}

/* Parses one line if a whole one is buffered; returns false when it made no progress. */
static bool step(struct kumo_smtp_client *c)
{
	uint8_t *p = c->in + c->in_off;
	size_t avail = c->in_len - c->in_off;
	uint8_t *lf = memchr(p + c->scan, '\n', avail - c->scan);
	size_t len;

	if (!lf) {
		/* Even if the LF came next, the line would exceed the limit. */
		if (avail >= KUMO_SMTP_CLIENT_MAX_LINE) {
			proto_error(c, "reply line too long");
			return true;
		}
		if (c->scan == avail)
			return false;
		c->scan = avail;
		return true;
	}
	len = (size_t)(lf - p) + 1;
	c->in_off += len;
	c->scan = 0;
	if (len > KUMO_SMTP_CLIENT_MAX_LINE) {
		proto_error(c, "reply line too long");
		return true;
	}
	len--;
	if (len && p[len - 1] == '\r')
		len--;
	parse_line(c, (const char *)p, len);
	return true;
}

/* ---- Public interface ---- */

static bool name_valid(const char *h)
{
	size_t n = strlen(h);

	if (!n || n > 255)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)h[i] <= ' ' || (unsigned char)h[i] >= 127)
			return false;
	return true;
}

int kumo_smtp_client_new(const struct kumo_smtp_client_cfg *cfg, uint64_t now_ms,
			 struct kumo_smtp_client **out)
{
	struct kumo_smtp_client *c;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!cfg || !cfg->ehlo_name || !name_valid(cfg->ehlo_name))
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->ehlo_name = strdup(cfg->ehlo_name);
	if (!c->ehlo_name)
		goto out_free;
	c->to = cfg->timeouts;
	kumo_smtp_client_timeouts_defaults(&c->to);
	c->no_pipelining = cfg->no_pipelining;
	c->no_chunking = cfg->no_chunking;
	c->state = ST_GREETING;
	c->now = now_ms;
	c->last = now_ms;
	*out = c;
	return 0;
out_free:
	free(c);
	return -ENOMEM;
}

static void rcpt_slots_clear(struct kumo_smtp_client *c)
{
	for (size_t i = 0; i < c->nrcpt; i++)
		slot_clear(&c->rslot[i]);
}

void kumo_smtp_client_free(struct kumo_smtp_client *c)
{
	if (!c)
		return;
	rcpt_slots_clear(c);
	slot_clear(&c->fail);
	slot_clear(&c->tfail);
	slot_clear(&c->mail);
	slot_clear(&c->data);
	free(c->rst);
	free(c->rslot);
	free(c->res);
	free(c->cmd_off);
	free(c->cmds.p);
	free(c->cur.text);
	free(c->out.p);
	free(c->ehlo_name);
	free(c);
}

static bool finished(const struct kumo_smtp_client *c)
{
	return c->state == ST_CLOSED;
}

/* Moves unparsed input to the front. */
static void in_compact(struct kumo_smtp_client *c)
{
	if (!c->in_off)
		return;
	memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
	c->in_len -= c->in_off;
	c->in_off = 0;
}

int kumo_smtp_client_push(struct kumo_smtp_client *c, const void *buf, size_t len)
{
	if (finished(c))
		return -EPIPE;
	if (!len)
		return 0;
	if (sizeof(c->in) - c->in_len < len)
		in_compact(c);
	if (sizeof(c->in) - c->in_len < len)
		return -ENOBUFS;
	memcpy(c->in + c->in_len, buf, len);
	c->in_len += len;
	c->clock_restart = true;
	return 0;
}

void *kumo_smtp_client_input_space(struct kumo_smtp_client *c, size_t *len)
{
	*len = 0;
	if (finished(c))
		return NULL;
	if (sizeof(c->in) - c->in_len < sizeof(c->in) / 4)
		in_compact(c);
	if (c->in_len == sizeof(c->in))
		return NULL;
	*len = sizeof(c->in) - c->in_len;
	return c->in + c->in_len;
}

void kumo_smtp_client_input_commit(struct kumo_smtp_client *c, size_t n)
{
	if (n > sizeof(c->in) - c->in_len)
		n = sizeof(c->in) - c->in_len;
	c->in_len += n;
	if (n)
		c->clock_restart = true;
}

void kumo_smtp_client_input_eof(struct kumo_smtp_client *c)
{
	c->eof = true;
}

static void clock_update(struct kumo_smtp_client *c, uint64_t now_ms)
{
	if (now_ms > c->now)
		c->now = now_ms;
	if (c->clock_restart) {
		c->last = c->now;
		c->clock_restart = false;
	}
}

static int next_event(struct kumo_smtp_client *c, struct kumo_smtp_client_ev *ev)
{
	for (;;) {
		if (c->oom)
			return -ENOMEM;
		if (c->ev_n) {
			*ev = c->evq[c->ev_head];
			c->ev_head = (c->ev_head + 1) % EVQ_LEN;
			c->ev_n--;
			return 0;
		}
		if (c->state == ST_CLOSED || (c->state == ST_READY && !c->eof))
			return 0;
		if (!step(c)) {
			if (!c->eof)
				return 0;
			fail_local(c, 451, "4.4.2", "connection closed");
		}
		if (c->in_off == c->in_len)
			c->in_off = c->in_len = c->scan = 0;
	}
}

int kumo_smtp_client_next(struct kumo_smtp_client *c, uint64_t now_ms,
			  struct kumo_smtp_client_ev *ev)
{
	int rc;

	memset(ev, 0, sizeof(*ev));
	clock_update(c, now_ms);
	rc = next_event(c, ev);
	/* Commands written during this call restart the clock at this call's time. */
	clock_update(c, now_ms);
	return rc;
}

static bool idle(const struct kumo_smtp_client *c)
{
	return c->state == ST_READY && !c->ev_n;
}

/* Characters allowed in an address we write between angle brackets. */
static bool addr_valid(const char *a, bool *nonascii)
{
	for (const unsigned char *p = (const unsigned char *)a; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return false;
		if (*p >= 0x80)
			*nonascii = true;
	}
	return true;
}

/* A parameter value written as given: printable ASCII or UTF-8, no spaces. */
static bool value_valid(const char *v)
{
	if (!*v)
		return false;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= 0x20 || *p == 0x7f)
			return false;
	return true;
}

static bool notify_valid(unsigned n)
{
	unsigned all = KUMO_DSN_NOTIFY_NEVER | KUMO_DSN_NOTIFY_SUCCESS | KUMO_DSN_NOTIFY_FAILURE |
		       KUMO_DSN_NOTIFY_DELAY;

	if (n & ~all)
		return false;
	return !(n & KUMO_DSN_NOTIFY_NEVER) || n == KUMO_DSN_NOTIFY_NEVER;
}

static int txn_check(const struct kumo_smtp_client_txn *t, bool *nonascii)
{
	*nonascii = false;
	if (!t || !t->sender || !t->rcpts || !t->nrcpt || (!t->data && t->data_len) ||
	    (unsigned)t->ret > KUMO_DSN_RET_HDRS || !addr_valid(t->sender, nonascii) ||
	    (t->envid && !value_valid(t->envid)))
		return -EINVAL;
	if (t->nrcpt > (SIZE_MAX / sizeof(struct kumo_smtp_client_reply)) - 4)
		return -EINVAL;
	for (size_t i = 0; i < t->nrcpt; i++) {
		const struct kumo_smtp_client_rcpt *r = &t->rcpts[i];

		if (!r->addr || !*r->addr || !addr_valid(r->addr, nonascii) ||
		    !notify_valid(r->notify) ||
		    (r->orcpt && (!value_valid(r->orcpt) || !strchr(r->orcpt, ';'))))
			return -EINVAL;
	}
	return 0;
}

/* Sizes the per-recipient arrays for n recipients, all reset. */
static int txn_alloc(struct kumo_smtp_client *c, size_t n)
{
	rcpt_slots_clear(c);
	c->nrcpt = 0;
	if (n > c->rcpt_cap) {
		uint8_t *rst = realloc(c->rst, n);
		struct slot *rslot;
		struct kumo_smtp_client_reply *res;
		size_t *off;

		if (!rst)
			return -ENOMEM;
		c->rst = rst;
		rslot = realloc(c->rslot, n * sizeof(*rslot));
		if (!rslot)
			return -ENOMEM;
		c->rslot = rslot;
		res = realloc(c->res, n * sizeof(*res));
		if (!res)
			return -ENOMEM;
		c->res = res;
		off = realloc(c->cmd_off, (n + 4) * sizeof(*off));
		if (!off)
			return -ENOMEM;
		c->cmd_off = off;
		c->rcpt_cap = n;
	}
	memset(c->rst, 0, n);
	memset(c->rslot, 0, n * sizeof(*c->rslot));
	c->nrcpt = n;
	return 0;
}

static void cmd_end(struct kumo_smtp_client *c)
{
	c->cmd_off[++c->ncmd] = c->cmds.len;
}

static void notify_put(struct kumo_smtp_client *c, unsigned n)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {
	    {KUMO_DSN_NOTIFY_NEVER, "NEVER"},
	    {KUMO_DSN_NOTIFY_SUCCESS, "SUCCESS"},
	    {KUMO_DSN_NOTIFY_FAILURE, "FAILURE"},
	    {KUMO_DSN_NOTIFY_DELAY, "DELAY"},
	};
	const char *sep = " NOTIFY=";

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(n & names[i].bit))
			continue;
		buf_str(c, &c->cmds, sep);
		buf_str(c, &c->cmds, names[i].name);
		sep = ",";
	}
}

/* Formats the plan: [RSET] MAIL, the RCPTs, DATA or BDAT. */
static void plan_build(struct kumo_smtp_client *c, const struct kumo_smtp_client_txn *t,
		       size_t size, bool utf8)
{
	bool dsn = c->caps.dsn;
	char num[32];

	c->cmds.len = 0;
	c->ncmd = 0;
	c->cmd_off[0] = 0;
	if (c->rset) {
		buf_str(c, &c->cmds, "RSET\r\n");
		cmd_end(c);
	}
	buf_str(c, &c->cmds, "MAIL FROM:<");
	buf_str(c, &c->cmds, t->sender);
	buf_str(c, &c->cmds, ">");
	if (c->caps.size) {
		snprintf(num, sizeof(num), " SIZE=%zu", size);
		buf_str(c, &c->cmds, num);
	}
	if (t->body_8bit && c->caps.eightbitmime)
		buf_str(c, &c->cmds, " BODY=8BITMIME");
	if (utf8)
		buf_str(c, &c->cmds, " SMTPUTF8");
	if (dsn && t->ret != KUMO_DSN_RET_UNSET)
		buf_str(c, &c->cmds, t->ret == KUMO_DSN_RET_FULL ? " RET=FULL" : " RET=HDRS");
	if (dsn && t->envid) {
		buf_str(c, &c->cmds, " ENVID=");
		buf_str(c, &c->cmds, t->envid);
	}
	buf_str(c, &c->cmds, "\r\n");
	cmd_end(c);
	for (size_t i = 0; i < t->nrcpt; i++) {
		buf_str(c, &c->cmds, "RCPT TO:<");
		buf_str(c, &c->cmds, t->rcpts[i].addr);
		buf_str(c, &c->cmds, ">");
		if (dsn)
			notify_put(c, t->rcpts[i].notify);
		if (dsn && t->rcpts[i].orcpt) {
			buf_str(c, &c->cmds, " ORCPT=");
			buf_str(c, &c->cmds, t->rcpts[i].orcpt);
		}
		buf_str(c, &c->cmds, "\r\n");
		cmd_end(c);
	}
	if (c->bdat) {
		snprintf(num, sizeof(num), "BDAT %zu LAST\r\n", t->data_len);
		buf_str(c, &c->cmds, num);
	} else {
		buf_str(c, &c->cmds, "DATA\r\n");
	}
	cmd_end(c);
}

int kumo_smtp_client_send(struct kumo_smtp_client *c, const struct kumo_smtp_client_txn *txn)
{
	bool nonascii, utf8;
	size_t size;
	int rc;

	if (finished(c))
		return -EPIPE;
	if (!idle(c))
		return -EBUSY;
	rc = txn_check(txn, &nonascii);
	if (rc)
		return rc;
	rc = txn_alloc(c, txn->nrcpt);
	if (rc)
		return rc;
	slot_clear(&c->mail);
	slot_clear(&c->data);
	slot_clear(&c->tfail);
	c->mail_st = MAIL_PENDING;
	c->accepted = 0;
	c->sent = c->got = 0;
	c->ended = false;
	c->data_real = false;
	c->msg = txn->data;
	c->msg_len = txn->data_len;
	size = txn->declared_size ? txn->declared_size : txn->data_len;
	utf8 = txn->smtputf8 || nonascii;

	/* Checks against the peer: nothing is written when they fail. */
	if (c->caps.size && c->caps.size_max && size > c->caps.size_max) {
		slot_local(c, &c->tfail, 552, "5.3.4", KUMO_SMTP_CLIENT_CMD_NONE,
			   "message size %zu exceeds the peer's limit of %zu", size,
			   c->caps.size_max);
	} else if (utf8 && !c->caps.smtputf8) {
		slot_local(c, &c->tfail, 553, "5.6.7", KUMO_SMTP_CLIENT_CMD_NONE,
			   "the peer does not support SMTPUTF8");
	}
	if (c->tfail.code) {
		txn_finish(c, &c->tfail);
		go_ready(c);
		return c->oom ? -ENOMEM : 0;
	}

	c->rset = c->need_rset;
	c->bdat = c->caps.chunking && !c->no_chunking;
	c->pipelined = c->caps.pipelining && !c->no_pipelining;
	plan_build(c, txn, size, utf8);
	if (c->oom)
		return -ENOMEM;
	c->need_rset = false;
	c->state = ST_TXN;
	if (c->pipelined) {
		while (c->sent < c->ncmd)
			put_cmd(c);
	} else {
		put_cmd(c);
	}
	return c->oom ? -ENOMEM : 0;
}

int kumo_smtp_client_quit(struct kumo_smtp_client *c)
{
	if (finished(c))
		return -EPIPE;
	if (!idle(c))
		return -EBUSY;
	c->state = ST_QUIT;
	out_put(c, "QUIT\r\n", 6);
	return c->oom ? -ENOMEM : 0;
}

const struct kumo_smtp_client_caps *kumo_smtp_client_caps(const struct kumo_smtp_client *c)
{
	return &c->caps;
}

const char *kumo_smtp_client_output(const struct kumo_smtp_client *c, size_t *len)
{
	*len = c->out.len - c->out_off;
	return c->out.p ? c->out.p + c->out_off : "";
}

void kumo_smtp_client_output_consumed(struct kumo_smtp_client *c, size_t n)
{
	if (n > c->out.len - c->out_off)
		n = c->out.len - c->out_off;
	c->out_off += n;
	c->out_done += n;
	if (c->out_off == c->out.len)
		c->out_off = c->out.len = 0;
	if (n)
		c->clock_restart = true;
}

static uint32_t timeout_for(const struct kumo_smtp_client *c, enum kumo_smtp_client_cmd cmd)
{
	switch (cmd) {
	case KUMO_SMTP_CLIENT_CMD_GREETING:
		return c->to.greeting_ms;
	case KUMO_SMTP_CLIENT_CMD_EHLO:
	case KUMO_SMTP_CLIENT_CMD_HELO:
		return c->to.ehlo_ms;
	case KUMO_SMTP_CLIENT_CMD_RCPT:
		return c->to.rcpt_ms;
	case KUMO_SMTP_CLIENT_CMD_DATA:
		return c->to.data_ms;
	case KUMO_SMTP_CLIENT_CMD_DATA_END:
	case KUMO_SMTP_CLIENT_CMD_BDAT:
		return c->to.data_end_ms;
	case KUMO_SMTP_CLIENT_CMD_RSET:
	case KUMO_SMTP_CLIENT_CMD_MAIL:
	case KUMO_SMTP_CLIENT_CMD_QUIT:
	case KUMO_SMTP_CLIENT_CMD_NONE:
		break;
	}
	return c->to.mail_ms;
}

static const char *stage_name(enum kumo_smtp_client_cmd cmd)
{
	switch (cmd) {
	case KUMO_SMTP_CLIENT_CMD_GREETING:
		return "greeting";
	case KUMO_SMTP_CLIENT_CMD_EHLO:
		return "EHLO response";
	case KUMO_SMTP_CLIENT_CMD_HELO:
		return "HELO response";
	case KUMO_SMTP_CLIENT_CMD_RSET:
		return "RSET response";
	case KUMO_SMTP_CLIENT_CMD_MAIL:
		return "MAIL response";
	case KUMO_SMTP_CLIENT_CMD_RCPT:
		return "RCPT response";
	case KUMO_SMTP_CLIENT_CMD_DATA:
		return "DATA response";
	case KUMO_SMTP_CLIENT_CMD_DATA_END:
		return "end of data response";
	case KUMO_SMTP_CLIENT_CMD_BDAT:
		return "BDAT response";
	case KUMO_SMTP_CLIENT_CMD_QUIT:
		return "QUIT response";
	case KUMO_SMTP_CLIENT_CMD_NONE:
		break;
	}
	return "response";
}

/* Message data still unwritten: the data block timeout applies. */
static bool data_pending(const struct kumo_smtp_client *c)
{
	return c->state == ST_TXN && c->out_done < c->data_end;
}

uint64_t kumo_smtp_client_deadline(const struct kumo_smtp_client *c)
{
	uint64_t base = c->clock_restart ? c->now : c->last;

	if (c->state == ST_READY || c->state == ST_CLOSED)
		return UINT64_MAX;
	if (data_pending(c))
		return base + c->to.data_block_ms;
	return base + timeout_for(c, awaited(c));
}

void kumo_smtp_client_tick(struct kumo_smtp_client *c, uint64_t now_ms)
{
	clock_update(c, now_ms);
	if (c->state == ST_READY || c->state == ST_CLOSED)
		return;
	if (c->now < kumo_smtp_client_deadline(c))
		return;
	if (data_pending(c))
		fail_local(c, 451, "4.4.2", "timeout waiting for data block to be written");
	else
		fail_local(c, 451, "4.4.2", "timeout waiting for %s", stage_name(awaited(c)));
}
