/* SMTP server protocol machine: a pull parser over buffered input (command lines, DATA
 * content, BDAT chunks), a command table {verb, check, proceed}, and the reply writer.
 * See smtp_server.h for the contract and docs/smtp.md for every reply it sends. */
#include "proto/smtp_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IN_INITIAL 16384     /* first input buffer; grows to in_max */
#define OUT_HIGH_WATER 65536 /* unconsumed output that pauses parsing */
#define DATA_INITIAL 16384   /* first message buffer */
#define EVQ_LEN 4	     /* one step queues at most two events */
#define ENVID_MAX 100	     /* RFC 3461 4.4 */
#define ORCPT_MAX 500	     /* RFC 3461 4.2 */
#define REPLY_MAX 1024	     /* a reply the machine formats itself */

enum srv_state {
	ST_INIT,     /* created: nothing is parsed before greet() */
	ST_CMD,	     /* reading command lines */
	ST_LONGLINE, /* discarding an over-long command line up to its LF */
	ST_DATA,     /* reading DATA content up to CRLF "." CRLF */
	ST_CHUNK,    /* reading the octets of a BDAT chunk */
	ST_CLOSED,   /* CLOSE queued: no more input is parsed */
};

enum srv_decision { DEC_NONE = 0, DEC_MAIL, DEC_RCPT, DEC_MESSAGE };

/* Position inside message data; BDAT uses only D_TEXT and D_CR. */
enum data_state {
	D_BOL,	  /* at the start of a line (after CRLF, or right after 354) */
	D_TEXT,	  /* inside a line */
	D_CR,	  /* after a CR: an LF makes it a line end, anything else a bare CR */
	D_DOT,	  /* after "." at the start of a line */
	D_DOT_CR, /* after "." CR at the start of a line: an LF ends the data */
};

/* A MAIL or RCPT command between check and proceed; pointers into the command line. */
struct parsed_cmd {
	const char *addr; /* mailbox without brackets or source route */
	size_t addr_len;
	size_t size; /* MAIL SIZE= */
	enum kumo_smtp_body body;
	bool smtputf8;
	enum kumo_dsn_ret ret;
	const char *envid; /* NUL-terminated in the line, or NULL */
	unsigned notify;
	const char *orcpt; /* NUL-terminated in the line, or NULL */
	uint64_t chunk;	   /* BDAT size */
	bool last;	   /* BDAT LAST */
};

struct kumo_smtp_server {
	/* Configuration */
	char *hostname;			  /* our name in replies */
	struct kumo_smtp_limits lim;	  /* with defaults filled in */
	enum kumo_smtp_bare_eol bare_eol; /* bare CR/LF policy */

	/* Session */
	enum srv_state state;	   /* what the next input bytes are */
	enum srv_decision pending; /* the decision the embedder owes, if any */
	bool helo;		   /* HELO or EHLO accepted */
	bool esmtp;		   /* ... and it was EHLO: extensions are on */
	char *helo_name;	   /* the client's HELO/EHLO argument */
	bool eof;		   /* the peer closed its side */
	bool oom;		   /* output could not be allocated: next() fails */
	unsigned errors;	   /* protocol errors so far */
	unsigned messages;	   /* transactions that reached the end of their data */

	/* Input: unparsed bytes are in[in_off, in_len) */
	uint8_t *in;
	size_t in_cap; /* allocated */
	size_t in_max; /* bound on in_cap */
	size_t in_off; /* first unparsed byte */
	size_t in_len; /* end of buffered bytes */
	size_t scan;   /* bytes after in_off known to hold no LF (command state) */

	/* Transaction */
	struct kumo_smtp_txn txn; /* the public view */
	bool txn_active;	  /* MAIL accepted */
	bool bdat;		  /* a BDAT chunk was accepted in this transaction */
	char *sender;		  /* owned strings behind txn */
	char *envid;
	struct kumo_smtp_rcpt *rcpts; /* accepted recipients, strings owned */
	size_t rcpt_cap;
	struct kumo_smtp_rcpt cand; /* recipient awaiting its decision, strings owned */
	struct parsed_cmd cmd;	    /* the command between check and proceed */

	/* Message data */
	enum data_state dstate;
	uint8_t *data;
	size_t data_len;
	size_t data_cap;
	bool too_big;	     /* more than max_message_size: the rest is discarded */
	bool bare_seen;	     /* a bare CR or LF under BARE_EOL_REJECT */
	bool data_nomem;     /* the message buffer could not grow */
	uint64_t chunk_left; /* BDAT octets still to read */
	bool chunk_last;     /* the chunk is the LAST one */
	bool chunk_discard;  /* the chunk is read and thrown away, then refused */
	int chunk_code;	     /* refusal sent after a discarded chunk */
	const char *chunk_enh;
	const char *chunk_text;
	bool chunk_counts; /* the refusal counts as a protocol error */

	/* Events */
	struct kumo_smtp_ev evq[EVQ_LEN];
	unsigned ev_head;
	unsigned ev_n;

	/* Output: unsent bytes are out[out_off, out_len) */
	char *out;
	size_t out_off;
	size_t out_len;
	size_t out_cap;

	/* Time */
	uint64_t now;	     /* latest time seen */
	uint64_t last_input; /* base of the deadline */
	bool clock_restart;  /* input arrived or a decision was made: restart the deadline */
};

/* The command table: a verb, its check and its proceed (OpenSMTPD's split). */
struct cmd {
	const char *verb;
	/* Checks order and syntax; on failure replies itself and returns false. */
	bool (*check)(struct kumo_smtp_server *s, char *args);
	/* Does the command; runs only after check() succeeded. */
	void (*proceed)(struct kumo_smtp_server *s, char *args);
};

void kumo_smtp_limits_defaults(struct kumo_smtp_limits *l)
{
	if (!l->max_line)
		l->max_line = KUMO_SMTP_DEFAULT_MAX_LINE;
	if (!l->max_recipients)
		l->max_recipients = KUMO_SMTP_DEFAULT_MAX_RECIPIENTS;
	if (!l->max_message_size)
		l->max_message_size = KUMO_SMTP_DEFAULT_MAX_MESSAGE_SIZE;
	if (!l->max_messages)
		l->max_messages = KUMO_SMTP_DEFAULT_MAX_MESSAGES;
	if (!l->max_errors)
		l->max_errors = KUMO_SMTP_DEFAULT_MAX_ERRORS;
	if (!l->command_timeout_ms)
		l->command_timeout_ms = KUMO_SMTP_DEFAULT_COMMAND_TIMEOUT_MS;
	if (!l->data_timeout_ms)
		l->data_timeout_ms = KUMO_SMTP_DEFAULT_DATA_TIMEOUT_MS;
}

static void free_const(const char *p)
{
	free((void *)(uintptr_t)p);
}

/* ---- Output ---- */

static bool out_reserve(struct kumo_smtp_server *s, size_t n)
{
	size_t cap;
	char *p;

	if (s->oom)
		return false;
	if (s->out_off) {
		memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
		s->out_len -= s->out_off;
		s->out_off = 0;
	}
	if (s->out_cap - s->out_len >= n)
		return true;
	cap = s->out_cap ? s->out_cap : 512;
	while (cap - s->out_len < n) {
		if (cap > SIZE_MAX / 2)
			goto fail;
		cap *= 2;
	}
	p = realloc(s->out, cap);
	if (!p)
		goto fail;
	s->out = p;
	s->out_cap = cap;
	return true;
fail:
	s->oom = true;
	return false;
}

static void out_put(struct kumo_smtp_server *s, const void *p, size_t n)
{
	if (!out_reserve(s, n))
		return;
	memcpy(s->out + s->out_len, p, n);
	s->out_len += n;
}

/* Writes one reply; text lines are separated by '\n' (a final '\n' adds no line) and
 * control characters in them become spaces. enh may be NULL or "" for none. */
static void put_reply(struct kumo_smtp_server *s, int code, const char *enh, const char *text)
{
	const char *line = text ? text : "";
	char head[16];

	for (;;) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line) : strlen(line);
		bool more = nl && nl[1];

		snprintf(head, sizeof(head), "%03d%c", code, more ? '-' : ' ');
		out_put(s, head, 4);
		if (enh && *enh) {
			out_put(s, enh, strlen(enh));
			if (n)
				out_put(s, " ", 1);
		}
		if (!out_reserve(s, n + 2))
			return;
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)line[i];
			s->out[s->out_len++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
		}
		/* A reply with nothing after the code keeps no trailing space. */
		if (!n && !(enh && *enh))
			s->out_len--;
		out_put(s, "\r\n", 2);
		if (!more)
			return;
		line = nl + 1;
	}
}

/* put_reply() with a formatted single- or multi-line text. */
static void reply(struct kumo_smtp_server *s, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void reply(struct kumo_smtp_server *s, int code, const char *enh, const char *fmt, ...)
{
	char text[REPLY_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	put_reply(s, code, enh, text);
}

/* ---- Events ---- */

static void ev_push(struct kumo_smtp_server *s, enum kumo_smtp_ev_type type)
{
	struct kumo_smtp_ev *ev;

	if (s->ev_n == EVQ_LEN)
		return; /* cannot happen: a step queues at most two events */
	ev = &s->evq[(s->ev_head + s->ev_n++) % EVQ_LEN];
	memset(ev, 0, sizeof(*ev));
	ev->type = type;
	if (type == KUMO_SMTP_EV_HELO) {
		ev->helo.name = s->helo_name;
		ev->helo.esmtp = s->esmtp;
	} else if (type == KUMO_SMTP_EV_RCPT) {
		ev->rcpt = &s->cand;
	}
}

/* Queues CLOSE; no input is parsed after this. */
static void queue_close(struct kumo_smtp_server *s)
{
	if (s->state == ST_CLOSED)
		return;
	s->state = ST_CLOSED;
	ev_push(s, KUMO_SMTP_EV_CLOSE);
}

/* A reply to a client mistake; max_errors of them end the session. */
static void proto_error(struct kumo_smtp_server *s, int code, const char *enh, const char *text)
{
	put_reply(s, code, enh, text);
	if (++s->errors >= s->lim.max_errors) {
		reply(s, 421, "4.7.0", "%s Too many errors, closing connection", s->hostname);
		queue_close(s);
	}
}

/* proto_error() for a check that fails. */
static bool cmd_fail(struct kumo_smtp_server *s, int code, const char *enh, const char *text)
{
	proto_error(s, code, enh, text);
	return false;
}

/* ---- Transaction ---- */

static void rcpt_release(struct kumo_smtp_rcpt *r)
{
	free_const(r->addr);
	free_const(r->orcpt);
	memset(r, 0, sizeof(*r));
}

static void data_release(struct kumo_smtp_server *s)
{
	free(s->data);
	s->data = NULL;
	s->data_len = 0;
	s->data_cap = 0;
	s->too_big = false;
	s->bare_seen = false;
	s->data_nomem = false;
	s->dstate = D_BOL;
}

/* Forgets the transaction (sender, recipients, data); keeps the recipient array. */
static void txn_clear(struct kumo_smtp_server *s)
{
	for (size_t i = 0; i < s->txn.nrcpt; i++)
		rcpt_release(&s->rcpts[i]);
	rcpt_release(&s->cand);
	free(s->sender);
	free(s->envid);
	s->sender = NULL;
	s->envid = NULL;
	data_release(s);
	memset(&s->txn, 0, sizeof(s->txn));
	s->txn.rcpts = s->rcpts;
	s->txn_active = false;
	s->bdat = false;
}

/* The machine drops a transaction whose data it refused; the embedder hears RESET. */
static void txn_fail(struct kumo_smtp_server *s)
{
	txn_clear(s);
	s->messages++;
	ev_push(s, KUMO_SMTP_EV_RESET);
}

/* ---- Syntax (RFC 5321 4.1.2, RFC 6531 3.3) ---- */

static bool is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(int c)
{
	return is_alpha(c) || is_digit(c);
}

static bool is_hexup(int c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F');
}

/* atext (RFC 5322 3.2.3), with UTF-8 octets allowed (checked later). */
static bool is_atext(unsigned char c)
{
	return is_alnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c)) || c >= 0x80;
}

static bool utf8_valid(const unsigned char *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = p[i];
		size_t len;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* Domain: sub-domains of letters, digits and inner hyphens (UTF-8 octets allowed for
 * U-labels). Returns the end, or NULL. */
static const char *scan_domain(const char *p)
{
	const char *start = p;

	for (;;) {
		const char *label = p;
		bool ascii = true;

		while (is_alnum(*p) || *p == '-' || (unsigned char)*p >= 0x80) {
			if ((unsigned char)*p >= 0x80)
				ascii = false;
			p++;
		}
		if (p == label || *label == '-' || p[-1] == '-')
			return NULL;
		if (ascii && p - label > 63)
			return NULL;
		if (*p != '.')
			break;
		p++;
	}
	return p - start > 255 ? NULL : p;
}

static const char *scan_ipv4(const char *p)
{
	for (int i = 0; i < 4; i++) {
		unsigned v = 0;
		int n = 0;

		if (i && *p++ != '.')
			return NULL;
		while (is_digit(*p) && n < 3) {
			v = v * 10 + (unsigned)(*p++ - '0');
			n++;
		}
		if (!n || v > 255 || is_digit(*p))
			return NULL;
	}
	return p;
}

/* "[" IPv4 "]" or "[IPv6:" address "]". Returns the end, or NULL. */
static const char *scan_literal(const char *p)
{
	if (*p++ != '[')
		return NULL;
	if (!strncasecmp(p, "IPv6:", 5)) {
		char buf[INET6_ADDRSTRLEN];
		unsigned char bin[16];
		size_t n = 0;

		p += 5;
		while (n < sizeof(buf) - 1 &&
		       (is_hexup(*p) || (*p >= 'a' && *p <= 'f') || *p == ':' || *p == '.'))
			buf[n++] = *p++;
		buf[n] = 0;
		if (inet_pton(AF_INET6, buf, bin) != 1)
			return NULL;
	} else {
		p = scan_ipv4(p);
		if (!p)
			return NULL;
	}
	return *p == ']' ? p + 1 : NULL;
}

/* Local part: Dot-string or Quoted-string. Returns the end, or NULL; *quoted says which. */
static const char *scan_local(const char *p, bool *quoted)
{
	*quoted = *p == '"';
	if (*quoted) {
		for (p++; *p != '"'; p++) {
			unsigned char c = (unsigned char)*p;

			if (c == '\\') {
				c = (unsigned char)*++p;
				if (c < 32 || c > 126)
					return NULL;
			} else if (c < 32 || c == 127 || c == '"') {
				return NULL;
			}
		}
		return p + 1;
	}
	for (;;) {
		const char *atom = p;

		while (is_atext((unsigned char)*p))
			p++;
		if (p == atom)
			return NULL;
		if (*p != '.')
			return p;
		p++;
	}
}

enum path_result { PATH_OK = 0, PATH_SYNTAX, PATH_NONASCII };

/* Path = "<" [ A-d-l ":" ] Mailbox ">" (RFC 5321 4.1.2). MAIL also takes "<>", RCPT also
 * takes "<postmaster>". The source route is skipped (RFC 5321 appendix C). Advances *pp
 * past ">" and sets cmd->addr to the mailbox. */
static enum path_result parse_path(struct kumo_smtp_server *s, const char **pp, bool rcpt)
{
	const char *start = *pp, *p = *pp, *mb, *end;
	bool quoted, nonascii = false;

	if (*p++ != '<')
		return PATH_SYNTAX;
	if (*p == '>' && !rcpt) {
		s->cmd.addr = p;
		s->cmd.addr_len = 0;
		*pp = p + 1;
		return PATH_OK;
	}
	if (*p == '@') {
		for (;;) {
			p = scan_domain(p + 1);
			if (!p)
				return PATH_SYNTAX;
			if (*p == ':')
				break;
			if (*p != ',' || p[1] != '@')
				return PATH_SYNTAX;
			p++;
		}
		p++;
	}
	mb = p;
	p = scan_local(p, &quoted);
	if (!p)
		return PATH_SYNTAX;
	if (rcpt && *p == '>' && !quoted && p - mb == 10 && !strncasecmp(mb, "postmaster", 10)) {
		end = p;
	} else {
		if (*p++ != '@')
			return PATH_SYNTAX;
		end = *p == '[' ? scan_literal(p) : scan_domain(p);
		if (!end)
			return PATH_SYNTAX;
	}
	if (*end != '>')
		return PATH_SYNTAX;
	for (const char *q = start; q < end; q++)
		if ((unsigned char)*q >= 0x80)
			nonascii = true;
	if (nonascii && !utf8_valid((const unsigned char *)start, (size_t)(end - start)))
		return PATH_SYNTAX;
	s->cmd.addr = mb;
	s->cmd.addr_len = (size_t)(end - mb);
	*pp = end + 1;
	return nonascii ? PATH_NONASCII : PATH_OK;
}

/* xtext (RFC 3461 4): "!".."~" except "+" and "=", or "+" and two upper-case hex digits.
 * UTF-8 octets are allowed when the transaction is SMTPUTF8 (RFC 6533). */
static bool xtext_valid(const char *p, bool utf8)
{
	for (; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '+') {
			if (!is_hexup(p[1]) || !is_hexup(p[2]))
				return false;
			p += 2;
		} else if (c >= 0x80) {
			if (!utf8)
				return false;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

static bool parse_notify(const char *v, unsigned *out)
{
	unsigned bits = 0;

	for (;;) {
		const char *comma = strchr(v, ',');
		size_t n = comma ? (size_t)(comma - v) : strlen(v);

		if (n == 5 && !strncasecmp(v, "NEVER", 5))
			bits |= KUMO_DSN_NOTIFY_NEVER;
		else if (n == 7 && !strncasecmp(v, "SUCCESS", 7))
			bits |= KUMO_DSN_NOTIFY_SUCCESS;
		else if (n == 7 && !strncasecmp(v, "FAILURE", 7))
			bits |= KUMO_DSN_NOTIFY_FAILURE;
		else if (n == 5 && !strncasecmp(v, "DELAY", 5))
			bits |= KUMO_DSN_NOTIFY_DELAY;
		else
			return false;
		if (!comma)
			break;
		v = comma + 1;
	}
	if ((bits & KUMO_DSN_NOTIFY_NEVER) && bits != KUMO_DSN_NOTIFY_NEVER)
		return false;
	*out = bits;
	return true;
}

/* ORCPT = addr-type ";" xtext (RFC 3461 4.2). */
static bool orcpt_valid(const char *v, bool utf8)
{
	const char *semi = strchr(v, ';');

	if (!semi || semi == v || !semi[1] || strlen(v) > ORCPT_MAX)
		return false;
	for (const char *p = v; p < semi; p++)
		if (!is_atext((unsigned char)*p) || (unsigned char)*p >= 0x80)
			return false;
	return xtext_valid(semi + 1, utf8);
}

enum param_kind { PK_MAIL, PK_RCPT };

/* Parses "SP keyword[=value]" parameters in place (RFC 5321 4.1.2) into s->cmd. Replies
 * and returns false on an error. */
static bool parse_params(struct kumo_smtp_server *s, char *p, enum param_kind kind)
{
	unsigned seen = 0;

	if (*p && *p != ' ')
		return cmd_fail(s, 501, "5.5.4", "Syntax error in parameters");
	while (*p == ' ')
		p++;
	while (*p) {
		char *kw = p, *val = NULL, *next;
		unsigned bit;

		if (!is_alnum(*p))
			return cmd_fail(s, 501, "5.5.4", "Syntax error in parameters");
		while (is_alnum(*p) || *p == '-')
			p++;
		if (*p == '=') {
			*p++ = 0;
			val = p;
			while (*p && *p != ' ') {
				unsigned char c = (unsigned char)*p++;

				if (c < 33 || c == '=' || c == 127)
					return cmd_fail(s, 501, "5.5.4",
							"Syntax error in parameters");
			}
			if (p == val)
				return cmd_fail(s, 501, "5.5.4", "Syntax error in parameters");
		} else if (*p && *p != ' ') {
			return cmd_fail(s, 501, "5.5.4", "Syntax error in parameters");
		}
		next = p;
		while (*next == ' ')
			next++;
		*p = 0;
		p = next;

		if (!s->esmtp)
			return cmd_fail(s, 555, "5.5.4", "Parameters need EHLO");
		if (val && !utf8_valid((const unsigned char *)val, strlen(val)))
			return cmd_fail(s, 501, "5.5.4", "Invalid UTF-8 in parameter");

		if (kind == PK_MAIL && !strcasecmp(kw, "SIZE")) {
			size_t v = 0;

			bit = 1;
			if (!val)
				goto bad_value;
			for (const char *q = val; *q; q++) {
				if (!is_digit(*q))
					goto bad_value;
				if (v > (SIZE_MAX - 9) / 10)
					v = SIZE_MAX; /* saturates: over any limit */
				else
					v = v * 10 + (size_t)(*q - '0');
			}
			s->cmd.size = v;
		} else if (kind == PK_MAIL && !strcasecmp(kw, "BODY")) {
			bit = 2;
			if (val && !strcasecmp(val, "7BIT"))
				s->cmd.body = KUMO_SMTP_BODY_7BIT;
			else if (val && !strcasecmp(val, "8BITMIME"))
				s->cmd.body = KUMO_SMTP_BODY_8BITMIME;
			else
				goto bad_value;
		} else if (kind == PK_MAIL && !strcasecmp(kw, "SMTPUTF8")) {
			bit = 4;
			if (val)
				goto bad_value;
			s->cmd.smtputf8 = true;
		} else if (kind == PK_MAIL && !strcasecmp(kw, "RET")) {
			bit = 8;
			if (val && !strcasecmp(val, "FULL"))
				s->cmd.ret = KUMO_DSN_RET_FULL;
			else if (val && !strcasecmp(val, "HDRS"))
				s->cmd.ret = KUMO_DSN_RET_HDRS;
			else
				goto bad_value;
		} else if (kind == PK_MAIL && !strcasecmp(kw, "ENVID")) {
			bit = 16;
			if (!val || strlen(val) > ENVID_MAX || !xtext_valid(val, false))
				goto bad_value;
			s->cmd.envid = val;
		} else if (kind == PK_RCPT && !strcasecmp(kw, "NOTIFY")) {
			bit = 32;
			if (!val || !parse_notify(val, &s->cmd.notify))
				goto bad_value;
		} else if (kind == PK_RCPT && !strcasecmp(kw, "ORCPT")) {
			bit = 64;
			if (!val || !orcpt_valid(val, s->txn.smtputf8))
				goto bad_value;
			s->cmd.orcpt = val;
		} else {
			return cmd_fail(s, 555, "5.5.4", "Unsupported parameter");
		}
		if (seen & bit)
			return cmd_fail(s, 501, "5.5.4", "Duplicate parameter");
		seen |= bit;
	}
	return true;
bad_value:
	proto_error(s, 501, "5.5.4", "Invalid parameter value");
	return false;
}

/* Trims trailing spaces; returns the argument with leading spaces skipped. */
static char *trim(char *args)
{
	size_t n = strlen(args);

	while (n && args[n - 1] == ' ')
		args[--n] = 0;
	while (*args == ' ')
		args++;
	return args;
}

/* ---- Commands ---- */

static bool check_noargs(struct kumo_smtp_server *s, char *args)
{
	if (*trim(args)) {
		proto_error(s, 501, "5.5.4", "Syntax error: no arguments allowed");
		return false;
	}
	return true;
}

static bool check_helo(struct kumo_smtp_server *s, char *args)
{
	args = trim(args);
	if (!*args) {
		proto_error(s, 501, "5.5.4", "Syntax: EHLO hostname");
		return false;
	}
	for (const char *p = args; *p; p++) {
		if ((unsigned char)*p <= ' ' || *p == 127) {
			proto_error(s, 501, "5.5.4", "Syntax: EHLO hostname");
			return false;
		}
	}
	return true;
}

static void do_helo(struct kumo_smtp_server *s, char *args, bool esmtp)
{
	char *name = strdup(trim(args));

	if (!name) {
		reply(s, 451, "4.3.0", "Local error, try again later");
		return;
	}
	if (s->txn_active) {
		txn_clear(s);
		ev_push(s, KUMO_SMTP_EV_RESET);
	}
	free(s->helo_name);
	s->helo_name = name;
	s->helo = true;
	s->esmtp = esmtp;
	if (esmtp) {
		reply(s, 250, NULL,
		      "%s\nPIPELINING\nSIZE %zu\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\n"
		      "CHUNKING\nDSN",
		      s->hostname, s->lim.max_message_size);
	} else {
		reply(s, 250, NULL, "%s", s->hostname);
	}
	ev_push(s, KUMO_SMTP_EV_HELO);
}

static void proceed_ehlo(struct kumo_smtp_server *s, char *args)
{
	do_helo(s, args, true);
}

static void proceed_helo(struct kumo_smtp_server *s, char *args)
{
	do_helo(s, args, false);
}

/* The "FROM:<path> params" of MAIL or "TO:<path> params" of RCPT into s->cmd; answers a
 * syntax error itself and returns false then. */
static bool path_and_params(struct kumo_smtp_server *s, char *args, bool rcpt,
			    enum path_result *pr)
{
	const char *kw = rcpt ? "TO:" : "FROM:";
	size_t kl = strlen(kw);
	if (strncasecmp(args, kw, kl))
		return cmd_fail(s, 501, "5.5.4",
				rcpt ? "Syntax: RCPT TO:<address>" : "Syntax: MAIL FROM:<address>");
	const char *p = args + kl;
	while (*p == ' ')
		p++;
	memset(&s->cmd, 0, sizeof(s->cmd));
	*pr = parse_path(s, &p, rcpt);
	if (*pr == PATH_SYNTAX)
		return rcpt ? cmd_fail(s, 501, "5.1.3", "Bad recipient address syntax")
			    : cmd_fail(s, 501, "5.1.7", "Bad sender address syntax");
	return parse_params(s, args + (p - args), rcpt ? PK_RCPT : PK_MAIL);
}

static bool check_mail(struct kumo_smtp_server *s, char *args)
{
	enum path_result pr;

	if (s->messages >= s->lim.max_messages) {
		reply(s, 421, "4.7.0", "%s Too many messages on this connection", s->hostname);
		queue_close(s);
		return false;
	}
	if (!s->helo)
		return cmd_fail(s, 503, "5.5.1", "Send HELO or EHLO first");
	if (s->txn_active)
		return cmd_fail(s, 503, "5.5.1", "Nested MAIL command");
	if (!path_and_params(s, args, false, &pr))
		return false;
	if (pr == PATH_NONASCII && !s->cmd.smtputf8)
		return cmd_fail(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
	if (s->cmd.size > s->lim.max_message_size) {
		reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		return false;
	}
	return true;
}

static void proceed_mail(struct kumo_smtp_server *s, char *args)
{
	s->sender = strndup(s->cmd.addr, s->cmd.addr_len);
	if (s->cmd.envid)
		s->envid = strdup(s->cmd.envid);
	if (!s->sender || (s->cmd.envid && !s->envid)) {
		txn_clear(s);
		reply(s, 451, "4.3.0", "Local error, try again later");
		return;
	}
	s->txn.sender = s->sender;
	s->txn.envid = s->envid;
	s->txn.body = s->cmd.body;
	s->txn.smtputf8 = s->cmd.smtputf8;
	s->txn.declared_size = s->cmd.size;
	s->txn.ret = s->cmd.ret;
	s->pending = DEC_MAIL;
	ev_push(s, KUMO_SMTP_EV_MAIL);
}

static bool check_rcpt(struct kumo_smtp_server *s, char *args)
{
	enum path_result pr;

	if (!s->txn_active)
		return cmd_fail(s, 503, "5.5.1", "Need MAIL command");
	if (s->bdat)
		return cmd_fail(s, 503, "5.5.1", "RCPT not allowed after BDAT");
	if (!path_and_params(s, args, true, &pr))
		return false;
	if (pr == PATH_NONASCII && !s->txn.smtputf8)
		return cmd_fail(s, 553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
	if (s->txn.nrcpt >= s->lim.max_recipients) {
		reply(s, 452, "4.5.3", "Too many recipients");
		return false;
	}
	return true;
}

static void proceed_rcpt(struct kumo_smtp_server *s, char *args)
{
	s->cand.addr = strndup(s->cmd.addr, s->cmd.addr_len);
	s->cand.notify = s->cmd.notify;
	if (s->cmd.orcpt)
		s->cand.orcpt = strdup(s->cmd.orcpt);
	if (!s->cand.addr || (s->cmd.orcpt && !s->cand.orcpt)) {
		rcpt_release(&s->cand);
		reply(s, 451, "4.3.0", "Local error, try again later");
		return;
	}
	s->pending = DEC_RCPT;
	ev_push(s, KUMO_SMTP_EV_RCPT);
}

static bool check_data(struct kumo_smtp_server *s, char *args)
{
	if (!check_noargs(s, args))
		return false;
	if (!s->txn_active)
		return cmd_fail(s, 503, "5.5.1", "Need MAIL command");
	if (s->bdat)
		return cmd_fail(s, 503, "5.5.1", "DATA not allowed after BDAT");
	if (!s->txn.nrcpt) {
		reply(s, 554, "5.5.1", "No valid recipients");
		return false;
	}
	return true;
}

static void proceed_data(struct kumo_smtp_server *s, char *args)
{
	data_release(s);
	reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
	s->state = ST_DATA;
	s->dstate = D_BOL;
}

/* "BDAT" SP size [SP "LAST"] (RFC 3030 3). Only an unreadable size is refused before the
 * chunk: every other refusal is sent after the chunk's octets were read and discarded. */
static bool check_bdat(struct kumo_smtp_server *s, char *args)
{
	const char *p = args;
	uint64_t n = 0;
	int digits = 0;

	while (is_digit(*p) && digits < 19) {
		n = n * 10 + (uint64_t)(*p++ - '0');
		digits++;
	}
	if (!digits || (*p && *p != ' ')) {
		proto_error(s, 501, "5.5.4", "Syntax: BDAT size [LAST]");
		return false;
	}
	while (*p == ' ')
		p++;
	s->cmd.last = false;
	if (!strncasecmp(p, "LAST", 4)) {
		s->cmd.last = true;
		p += 4;
		while (*p == ' ')
			p++;
	}
	if (*p) {
		proto_error(s, 501, "5.5.4", "Syntax: BDAT size [LAST]");
		return false;
	}
	s->cmd.chunk = n;
	return true;
}

static void chunk_refuse(struct kumo_smtp_server *s, int code, const char *enh, const char *text,
			 bool counts)
{
	s->chunk_discard = true;
	s->chunk_code = code;
	s->chunk_enh = enh;
	s->chunk_text = text;
	s->chunk_counts = counts;
}

static void proceed_bdat(struct kumo_smtp_server *s, char *args)
{
	s->chunk_left = s->cmd.chunk;
	s->chunk_last = s->cmd.last;
	s->chunk_discard = false;
	if (!s->esmtp)
		chunk_refuse(s, 503, "5.5.1", "Send EHLO before BDAT", true);
	else if (!s->txn_active)
		chunk_refuse(s, 503, "5.5.1", "Need MAIL command", true);
	else if (!s->txn.nrcpt)
		chunk_refuse(s, 503, "5.5.1", "No valid recipients", false);
	else if (s->cmd.chunk > s->lim.max_message_size - s->data_len)
		chunk_refuse(s, 552, "5.3.4", "Message size exceeds fixed maximum message size",
			     false);
	else if (!s->bdat) {
		data_release(s);
		s->dstate = D_TEXT;
		s->bdat = true;
	}
	s->state = ST_CHUNK;
}

static void proceed_rset(struct kumo_smtp_server *s, char *args)
{
	txn_clear(s);
	reply(s, 250, "2.0.0", "OK");
	ev_push(s, KUMO_SMTP_EV_RESET);
}

static void proceed_noop(struct kumo_smtp_server *s, char *args)
{
	reply(s, 250, "2.0.0", "OK");
}

static void proceed_quit(struct kumo_smtp_server *s, char *args)
{
	reply(s, 221, "2.0.0", "%s Bye", s->hostname);
	queue_close(s);
}

static bool check_vrfy(struct kumo_smtp_server *s, char *args)
{
	if (!*trim(args)) {
		proto_error(s, 501, "5.5.4", "Syntax: VRFY address");
		return false;
	}
	return true;
}

static void proceed_vrfy(struct kumo_smtp_server *s, char *args)
{
	reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void proceed_expn(struct kumo_smtp_server *s, char *args)
{
	proto_error(s, 502, "5.5.1", "Command not implemented");
}

static void proceed_help(struct kumo_smtp_server *s, char *args)
{
	reply(s, 214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP");
}

/* clang-format off */
static const struct cmd commands[] = {
	{ "EHLO", check_helo, proceed_ehlo },
	{ "HELO", check_helo, proceed_helo },
	{ "MAIL", check_mail, proceed_mail },
	{ "RCPT", check_rcpt, proceed_rcpt },
	{ "DATA", check_data, proceed_data },
	{ "BDAT", check_bdat, proceed_bdat },
	{ "RSET", check_noargs, proceed_rset },
	{ "NOOP", NULL, proceed_noop },
	{ "QUIT", check_noargs, proceed_quit },
	{ "VRFY", check_vrfy, proceed_vrfy },
	{ "EXPN", NULL, proceed_expn },
	{ "HELP", NULL, proceed_help },
};
/* clang-format on */

/* One complete command line, LF included, NUL-terminated in place of the LF. */
static void do_line(struct kumo_smtp_server *s, char *line, size_t len)
{
	size_t vlen;
	char *args;

	/* len counts the LF, now the NUL */
	len--;
	if (len && line[len - 1] == '\r') {
		line[--len] = 0;
	} else if (s->bare_eol == KUMO_SMTP_BARE_EOL_REJECT) {
		proto_error(s, 500, "5.5.2", "Syntax error: bare LF in command");
		return;
	}
	if (memchr(line, 0, len) || memchr(line, '\r', len)) {
		proto_error(s, 500, "5.5.2", "Syntax error: invalid character in command");
		return;
	}
	vlen = strcspn(line, " ");
	args = line + vlen;
	if (*args)
		*args++ = 0;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		const struct cmd *c = &commands[i];

		if (strcasecmp(line, c->verb))
			continue;
		if (c->check && !c->check(s, args))
			return;
		c->proceed(s, args);
		return;
	}
	proto_error(s, 500, "5.5.2", "Command unrecognized");
}

/* ---- Message data ---- */

static void data_store(struct kumo_smtp_server *s, const void *p, size_t n)
{
	size_t need, cap;
	uint8_t *d;

	if (!n || s->too_big || s->data_nomem || s->bare_seen)
		return;
	if (n > s->lim.max_message_size - s->data_len) {
		s->too_big = true;
		return;
	}
	need = s->data_len + n;
	if (need > s->data_cap) {
		cap = s->data_cap ? s->data_cap : DATA_INITIAL;
		while (cap < need && cap <= SIZE_MAX / 2)
			cap *= 2;
		if (cap < need || cap > s->lim.max_message_size)
			cap = s->lim.max_message_size;
		d = realloc(s->data, cap);
		if (!d) {
			s->data_nomem = true;
			return;
		}
		s->data = d;
		s->data_cap = cap;
	}
	memcpy(s->data + s->data_len, p, n);
	s->data_len += n;
}

static void bare_eol(struct kumo_smtp_server *s)
{
	if (s->bare_eol == KUMO_SMTP_BARE_EOL_NORMALIZE)
		data_store(s, "\r\n", 2);
	else
		s->bare_seen = true;
}

/* Stores bytes inside a line up to the next CR or LF; returns how many were taken. */
static size_t data_text(struct kumo_smtp_server *s, const uint8_t *p, const uint8_t *end)
{
	const uint8_t *q = p;

	while (q < end && *q != '\r' && *q != '\n')
		q++;
	data_store(s, p, (size_t)(q - p));
	return (size_t)(q - p);
}

/* The message is complete (DATA dot or BDAT LAST): refuse it or ask the embedder. */
static void data_end(struct kumo_smtp_server *s, bool bdat)
{
	if (s->too_big) {
		reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		txn_fail(s);
	} else if (s->data_nomem) {
		reply(s, 452, "4.3.1", "Insufficient system storage");
		txn_fail(s);
	} else if (s->bare_seen) {
		reply(s, 550, "5.6.0", "Message contains bare CR or bare LF");
		txn_fail(s);
	} else {
		s->txn.data = s->data;
		s->txn.data_len = s->data_len;
		s->txn.via_bdat = bdat;
		s->pending = DEC_MESSAGE;
		ev_push(s, KUMO_SMTP_EV_MESSAGE);
	}
}

/* DATA content: dot-unstuffing, end at CRLF "." CRLF only, bare CR/LF per policy. */
static void step_data(struct kumo_smtp_server *s)
{
	const uint8_t *p = s->in + s->in_off, *end = s->in + s->in_len;

	while (p < end) {
		switch (s->dstate) {
		case D_BOL:
			if (*p == '.') {
				s->dstate = D_DOT;
				p++;
			} else {
				s->dstate = D_TEXT;
			}
			break;
		case D_TEXT:
			p += data_text(s, p, end);
			if (p == end)
				break;
			if (*p == '\r')
				s->dstate = D_CR;
			else
				bare_eol(s);
			p++;
			break;
		case D_CR:
			if (*p == '\n') {
				data_store(s, "\r\n", 2);
				s->dstate = D_BOL;
				p++;
			} else {
				bare_eol(s);
				s->dstate = D_TEXT;
			}
			break;
		case D_DOT:
			/* A dot starting a line is removed unless it is the end line. */
			s->dstate = *p == '\r' ? D_DOT_CR : D_TEXT;
			if (*p == '\r')
				p++;
			break;
		case D_DOT_CR:
			if (*p == '\n') {
				s->in_off = (size_t)(p + 1 - s->in);
				s->state = ST_CMD;
				data_end(s, false);
				return;
			}
			s->dstate = D_CR;
			break;
		}
	}
	s->in_off = s->in_len;
}

/* BDAT chunk octets: stored raw except for the bare CR/LF policy. */
static void chunk_store(struct kumo_smtp_server *s, const uint8_t *p, size_t n)
{
	const uint8_t *end = p + n;

	while (p < end) {
		if (s->dstate == D_CR) {
			s->dstate = D_TEXT;
			if (*p == '\n') {
				data_store(s, "\r\n", 2);
				p++;
				continue;
			}
			bare_eol(s);
		}
		p += data_text(s, p, end);
		if (p == end)
			break;
		if (*p == '\r')
			s->dstate = D_CR;
		else
			bare_eol(s);
		p++;
	}
}

static void step_chunk(struct kumo_smtp_server *s)
{
	size_t avail = s->in_len - s->in_off;
	size_t n = s->chunk_left < avail ? (size_t)s->chunk_left : avail;

	if (!s->chunk_discard)
		chunk_store(s, s->in + s->in_off, n);
	s->in_off += n;
	s->chunk_left -= n;
	if (s->chunk_left)
		return;
	s->state = ST_CMD;
	if (s->chunk_discard) {
		bool drop = s->chunk_code == 552;

		if (s->chunk_counts)
			proto_error(s, s->chunk_code, s->chunk_enh, s->chunk_text);
		else
			put_reply(s, s->chunk_code, s->chunk_enh, s->chunk_text);
		if (drop)
			txn_fail(s);
		return;
	}
	if (s->chunk_last) {
		if (s->dstate == D_CR)
			bare_eol(s);
		data_end(s, true);
		return;
	}
	if (s->too_big || s->data_nomem) {
		data_end(s, true);
		return;
	}
	reply(s, 250, "2.0.0", "%llu octets received", (unsigned long long)s->cmd.chunk);
}

/* ---- Command lines ---- */

static void step_cmd(struct kumo_smtp_server *s)
{
	uint8_t *p = s->in + s->in_off;
	size_t avail = s->in_len - s->in_off;
	uint8_t *lf = memchr(p + s->scan, '\n', avail - s->scan);
	size_t len;

	if (!lf) {
		/* Even if the LF came next, the line would exceed max_line. */
		if (avail >= s->lim.max_line) {
			s->in_off = s->in_len;
			s->scan = 0;
			s->state = ST_LONGLINE;
		} else {
			s->scan = avail;
		}
		return;
	}
	len = (size_t)(lf - p) + 1;
	s->in_off += len;
	s->scan = 0;
	if (len > s->lim.max_line) {
		proto_error(s, 500, "5.5.2", "Line too long");
		return;
	}
	*lf = 0;
	do_line(s, (char *)p, len);
}

static void step_longline(struct kumo_smtp_server *s)
{
	uint8_t *p = s->in + s->in_off;
	uint8_t *lf = memchr(p, '\n', s->in_len - s->in_off);

	if (!lf) {
		s->in_off = s->in_len;
		return;
	}
	s->in_off += (size_t)(lf - p) + 1;
	s->state = ST_CMD;
	proto_error(s, 500, "5.5.2", "Line too long");
}

/* Runs the parser over buffered input once; returns false when it needs more input. */
static bool step(struct kumo_smtp_server *s)
{
	size_t off = s->in_off, scan = s->scan;
	enum srv_state st = s->state;

	switch (s->state) {
	case ST_CMD:
		step_cmd(s);
		break;
	case ST_LONGLINE:
		step_longline(s);
		break;
	case ST_DATA:
		step_data(s);
		break;
	case ST_CHUNK:
		step_chunk(s);
		break;
	case ST_INIT:
	case ST_CLOSED:
		return false;
	}
	return s->in_off != off || s->scan != scan || s->state != st || s->ev_n;
}

/* ---- Public interface ---- */

static bool hostname_valid(const char *h)
{
	size_t n = strlen(h);

	if (!n || n > 255)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)h[i] <= ' ' || h[i] == 127)
			return false;
	return true;
}

int kumo_smtp_server_new(const struct kumo_smtp_server_cfg *cfg, uint64_t now_ms,
			 struct kumo_smtp_server **out)
{
	struct kumo_smtp_server *s;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!cfg || !cfg->hostname || !hostname_valid(cfg->hostname) ||
	    (unsigned)cfg->bare_eol > KUMO_SMTP_BARE_EOL_NORMALIZE)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lim = cfg->limits;
	kumo_smtp_limits_defaults(&s->lim);
	s->bare_eol = cfg->bare_eol;
	s->hostname = strdup(cfg->hostname);
	if (!s->hostname)
		goto out_free;
	s->in_max = s->lim.max_line > KUMO_SMTP_INPUT_MAX ? s->lim.max_line : KUMO_SMTP_INPUT_MAX;
	s->in_cap = IN_INITIAL < s->in_max ? IN_INITIAL : s->in_max;
	s->in = malloc(s->in_cap);
	if (!s->in)
		goto out_free;
	s->state = ST_INIT;
	s->now = now_ms;
	s->last_input = now_ms;
	*out = s;
	return 0;
out_free:
	kumo_smtp_server_free(s);
	return -ENOMEM;
}

void kumo_smtp_server_free(struct kumo_smtp_server *s)
{
	if (!s)
		return;
	txn_clear(s);
	free(s->rcpts);
	free(s->helo_name);
	free(s->hostname);
	free(s->in);
	free(s->out);
	free(s);
}

void kumo_smtp_server_greet(struct kumo_smtp_server *s)
{
	if (s->state != ST_INIT)
		return;
	reply(s, 220, NULL, "%s ESMTP ready", s->hostname);
	s->state = ST_CMD;
}

void kumo_smtp_server_refuse(struct kumo_smtp_server *s, int code, const char *enhanced,
			     const char *text)
{
	if (s->state != ST_INIT)
		return;
	if (code < 400 || code > 599)
		code = 554;
	put_reply(s, code, enhanced, text);
	queue_close(s);
}

/* Moves unparsed input to the front and grows the buffer when it is full. */
static void in_make_room(struct kumo_smtp_server *s, size_t want)
{
	size_t unparsed = s->in_len - s->in_off;

	if (s->in_off) {
		memmove(s->in, s->in + s->in_off, unparsed);
		s->in_off = 0;
		s->in_len = unparsed;
	}
	if (s->in_cap - s->in_len < want && s->in_cap < s->in_max) {
		size_t cap = s->in_cap;
		uint8_t *p;

		while (cap - s->in_len < want && cap < s->in_max)
			cap = cap > s->in_max / 2 ? s->in_max : cap * 2;
		p = realloc(s->in, cap);
		if (!p) {
			s->oom = true;
			return;
		}
		s->in = p;
		s->in_cap = cap;
	}
}

int kumo_smtp_server_push(struct kumo_smtp_server *s, const void *buf, size_t len)
{
	if (s->state == ST_CLOSED)
		return -EPIPE;
	if (!len)
		return 0;
	if (s->in_cap - s->in_len < len)
		in_make_room(s, len);
	if (s->in_cap - s->in_len < len)
		return s->oom ? -ENOMEM : -ENOBUFS;
	memcpy(s->in + s->in_len, buf, len);
	s->in_len += len;
	s->clock_restart = true;
	return 0;
}

void *kumo_smtp_server_input_space(struct kumo_smtp_server *s, size_t *len)
{
	*len = 0;
	if (s->state == ST_CLOSED)
		return NULL;
	/* Offer at least a quarter of the buffer, growing it when that much is unparsed. */
	if (s->in_cap - s->in_len < s->in_cap / 4)
		in_make_room(s, s->in_cap / 4);
	if (s->in_len == s->in_cap)
		return NULL;
	*len = s->in_cap - s->in_len;
	return s->in + s->in_len;
}

void kumo_smtp_server_input_commit(struct kumo_smtp_server *s, size_t n)
{
	if (n > s->in_cap - s->in_len)
		n = s->in_cap - s->in_len;
	s->in_len += n;
	if (n)
		s->clock_restart = true;
}

void kumo_smtp_server_input_eof(struct kumo_smtp_server *s)
{
	s->eof = true;
}

int kumo_smtp_server_next(struct kumo_smtp_server *s, uint64_t now_ms, struct kumo_smtp_ev *ev)
{
	memset(ev, 0, sizeof(*ev));
	if (now_ms > s->now)
		s->now = now_ms;
	if (s->clock_restart) {
		s->last_input = s->now;
		s->clock_restart = false;
	}
	for (;;) {
		if (s->oom)
			return -ENOMEM;
		if (s->ev_n) {
			*ev = s->evq[s->ev_head];
			s->ev_head = (s->ev_head + 1) % EVQ_LEN;
			s->ev_n--;
			return 0;
		}
		if (s->state == ST_INIT && s->eof) {
			queue_close(s);
			continue;
		}
		if (s->state == ST_INIT || s->state == ST_CLOSED || s->pending)
			return 0;
		if (s->out_len - s->out_off >= OUT_HIGH_WATER)
			return 0;
		if (!step(s)) {
			if (!s->eof)
				return 0;
			queue_close(s);
		}
		if (s->in_off == s->in_len)
			s->in_off = s->in_len = 0;
	}
}

static void decided(struct kumo_smtp_server *s, bool ok)
{
	switch (s->pending) {
	case DEC_MAIL:
		if (ok)
			s->txn_active = true;
		else
			txn_clear(s);
		break;
	case DEC_RCPT:
		if (ok && s->txn.nrcpt == s->rcpt_cap) {
			size_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 8;
			struct kumo_smtp_rcpt *r = realloc(s->rcpts, cap * sizeof(*r));

			if (!r) {
				s->oom = true;
				ok = false;
			} else {
				s->rcpts = r;
				s->rcpt_cap = cap;
				s->txn.rcpts = r;
			}
		}
		if (ok) {
			s->rcpts[s->txn.nrcpt++] = s->cand;
			memset(&s->cand, 0, sizeof(s->cand));
		} else {
			rcpt_release(&s->cand);
		}
		break;
	case DEC_MESSAGE:
		txn_clear(s);
		s->messages++;
		break;
	case DEC_NONE:
		break;
	}
	s->pending = DEC_NONE;
	s->clock_restart = true;
}

int kumo_smtp_server_accept(struct kumo_smtp_server *s)
{
	switch (s->pending) {
	case DEC_MAIL:
		reply(s, 250, "2.1.0", "OK");
		break;
	case DEC_RCPT:
		reply(s, 250, "2.1.5", "OK");
		break;
	case DEC_MESSAGE:
		reply(s, 250, "2.0.0", "OK");
		break;
	case DEC_NONE:
		return -EINVAL;
	}
	decided(s, true);
	return 0;
}

/* "c.sss.ddd" (RFC 3463 2) whose class c matches the reply code's first digit. */
static bool enhanced_valid(const char *e, int code)
{
	int n;

	if (e[0] != '0' + code / 100 || e[1] != '.')
		return false;
	e += 2;
	for (int part = 0; part < 2; part++) {
		for (n = 0; is_digit(*e); e++)
			n++;
		if (n < 1 || n > 3 || *e != (part ? 0 : '.'))
			return false;
		if (!part)
			e++;
	}
	return true;
}

int kumo_smtp_server_reply(struct kumo_smtp_server *s, int code, const char *enhanced,
			   const char *text)
{
	char def[6];

	if (!s->pending || code < 200 || code > 599 || (code >= 300 && code < 400))
		return -EINVAL;
	if (enhanced && !enhanced_valid(enhanced, code))
		return -EINVAL;
	if (!enhanced) {
		snprintf(def, sizeof(def), "%d.0.0", code / 100);
		enhanced = def;
	}
	put_reply(s, code, enhanced, text);
	decided(s, code < 300);
	if (code == 421)
		queue_close(s);
	return 0;
}

const struct kumo_smtp_txn *kumo_smtp_server_txn(const struct kumo_smtp_server *s)
{
	return &s->txn;
}

const char *kumo_smtp_server_output(const struct kumo_smtp_server *s, size_t *len)
{
	*len = s->out_len - s->out_off;
	return s->out ? s->out + s->out_off : "";
}

void kumo_smtp_server_output_consumed(struct kumo_smtp_server *s, size_t n)
{
	if (n > s->out_len - s->out_off)
		n = s->out_len - s->out_off;
	s->out_off += n;
	if (s->out_off == s->out_len)
		s->out_off = s->out_len = 0;
}

static bool in_data(const struct kumo_smtp_server *s)
{
	return s->state == ST_DATA || s->state == ST_CHUNK || s->bdat;
}

uint64_t kumo_smtp_server_deadline(const struct kumo_smtp_server *s)
{
	uint64_t base = s->clock_restart ? s->now : s->last_input;

	if (s->pending || s->state == ST_CLOSED)
		return UINT64_MAX;
	return base + (in_data(s) ? s->lim.data_timeout_ms : s->lim.command_timeout_ms);
}

void kumo_smtp_server_tick(struct kumo_smtp_server *s, uint64_t now_ms)
{
	if (now_ms > s->now)
		s->now = now_ms;
	if (s->clock_restart) {
		s->last_input = s->now;
		s->clock_restart = false;
	}
	if (s->state == ST_CLOSED || s->pending)
		return;
	if (s->now < kumo_smtp_server_deadline(s))
		return;
	reply(s, 421, "4.4.2", "%s Timeout, closing connection", s->hostname);
	queue_close(s);
}
