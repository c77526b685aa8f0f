/* Delivery status notification builder and the RFC 3461 helpers; see dsn.h. The three
 * parts of the report are written into scratch buffers first, then a boundary that
 * occurs in none of them is chosen and the whole message is written out. */
#include "proto/dsn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define HARD_MAX 998	/* octets on a line, CRLF excluded (RFC 5322 2.1.1) */
#define FOLD_AT 78	/* preferred header line length (RFC 5322 2.1.1) */
#define WRAP_AT 76	/* width of the human-readable text */
#define DATE_MAX 64	/* "Thu, 01 Jan 1970 00:00:00 +0000" and room to spare */
#define BOUNDARY_MAX 64 /* "=_kumo_" 16 hex digits "_" counter */
#define BOUNDARY_TRIES 100

/* What the third part holds. */
enum attach {
	ATT_NONE,      /* no original message was given */
	ATT_HEADERS,   /* RET=HDRS or no RET: the header section */
	ATT_FULL,      /* RET=FULL: the whole message */
	ATT_TOO_BIG,   /* RET=FULL but over full_max: the header section */
	ATT_UNCHANGED, /* RET=FULL but not sendable unchanged (bare CR/LF, NUL, long line) */
};

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_alnum(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* atext (RFC 5322 3.2.3), ASCII only. */
static bool is_atext(char c)
{
	return is_alnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static bool has_8bit(const void *p, size_t n)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++)
		if (s[i] >= 0x80)
			return true;
	return false;
}

/* A control character other than HTAB, which would end or corrupt a header line. */
static bool has_ctl(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return true;
	}
	return false;
}

static bool field_ok(const char *s)
{
	return s && *s && !has_ctl(s, strlen(s));
}

static bool contains(const void *hay, size_t n, const char *needle)
{
	size_t nl = strlen(needle);

	return n >= nl && memmem(hay, n, needle, nl) != NULL;
}

/* RFC 3463 status-code: class "." subject "." detail, 1-3 digits each, class 2, 4 or 5. */
static bool status_ok(const char *s)
{
	if (!s || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	s += 2;
	for (int part = 0; part < 2; part++) {
		int d = 0;

		while (*s >= '0' && *s <= '9' && d < 4) {
			s++;
			d++;
		}
		if (d < 1 || d > 3)
			return false;
		if (part == 0 && *s++ != '.')
			return false;
	}
	return *s == '\0';
}

/* X.4.7: delivery time expired. */
static bool status_expired(const char *s)
{
	return strcmp(s + 1, ".4.7") == 0;
}

/* dot-atom text, with at most one "@" between two non-empty halves. */
static bool msgid_token_ok(const char *s)
{
	const char *at = strchr(s, '@');

	if (!*s || (at && (at == s || !at[1] || strchr(at + 1, '@'))))
		return false;
	for (; *s; s++)
		if (!is_atext(*s) && *s != '.' && *s != '@')
			return false;
	return true;
}

/* "type;value" split: the type is the text before the first ";" when it is one word of
 * letters, digits, "-", "_" or "."; otherwise the whole string is the value. */
struct typed {
	const char *type;
	size_t tlen;
	const char *val;
	size_t vlen;
};

static void split_typed(const char *s, const char *deftype, struct typed *t)
{
	const char *semi = strchr(s, ';');

	t->type = deftype;
	t->tlen = strlen(deftype);
	t->val = s;
	if (semi) {
		const char *a = s, *e = semi;
		bool word;

		while (a < e && is_wsp(*a))
			a++;
		while (e > a && is_wsp(e[-1]))
			e--;
		word = a < e;
		for (const char *p = a; p < e; p++)
			if (!is_alnum(*p) && *p != '-' && *p != '_' && *p != '.')
				word = false;
		if (word) {
			t->type = a;
			t->tlen = (size_t)(e - a);
			t->val = semi + 1;
		}
	}
	while (is_wsp(*t->val))
		t->val++;
	t->vlen = strlen(t->val);
	while (t->vlen && is_wsp(t->val[t->vlen - 1]))
		t->vlen--;
}

/* Appends text made safe for one header line or one paragraph: controls (CR, LF, HTAB
 * included) become spaces, runs of spaces collapse, the ends are trimmed, and octets
 * over 0x7f become "?" unless utf8. */
static void put_clean(struct kumo_buf *b, const char *s, size_t n, bool utf8)
{
	bool space = false, any = false;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c <= 0x20 || c == 0x7f) {
			space = true;
			continue;
		}
		if (c >= 0x80 && !utf8)
			c = '?';
		if (space && any)
			kumo_buf_putc(b, ' ');
		space = false;
		any = true;
		kumo_buf_putc(b, (char)c);
	}
}

/* Appends the xtext value decoded, or as received when it is malformed or decodes to
 * a control character: RFC 3461 4.2 and 4.4 require printable text before encoding, and
 * a decoded CR or LF must never reach a header. */
static void put_xtext_value(struct kumo_buf *b, const char *s, size_t n)
{
	size_t mark = b->len;

	if (kumo_dsn_xtext_decode(s, n, b) == 0 && !has_ctl(b->data + mark, b->len - mark))
		return;
	if (!b->oom)
		b->len = mark;
	put_clean(b, s, n, true);
}

/* Number of octets of p[0..n) that fit in room without splitting a UTF-8 sequence
 * (falls back to a plain cut when the text is not UTF-8). */
static size_t fit(const char *p, size_t n, size_t room)
{
	size_t k = n < room ? n : room;

	if (k < n)
		while (k > 0 && ((unsigned char)p[k] & 0xC0) == 0x80)
			k--;
	return k ? k : (n < room ? n : room);
}

/* Appends p[0..n) to a header line at *col, folding (CRLF SP) where the line reaches
 * HARD_MAX octets. Only a word longer than a line is split this way. */
static void put_hard(struct kumo_buf *b, size_t *col, const char *p, size_t n)
{
	while (n) {
		if (*col >= HARD_MAX) {
			kumo_buf_puts(b, "\r\n ");
			*col = 1;
		}
		size_t k = fit(p, n, HARD_MAX - *col);

		kumo_buf_append(b, p, k);
		*col += k;
		p += k;
		n -= k;
	}
}

/* Writes "Name: value" CRLF, folding before whitespace so that lines stay within
 * FOLD_AT where the words allow and within HARD_MAX always. Unfolding gives the value
 * back, leading and trailing whitespace trimmed. */
static void put_field(struct kumo_buf *b, const char *name, const char *v, size_t n)
{
	size_t col = strlen(name) + 1, i = 0;
	bool words = false;

	kumo_buf_puts(b, name);
	kumo_buf_putc(b, ':');
	while (n && is_wsp(v[n - 1]))
		n--;
	while (i < n && is_wsp(v[i]))
		i++;
	while (i < n) {
		size_t ws = i, w;

		while (i < n && is_wsp(v[i]))
			i++;
		w = i;
		while (i < n && !is_wsp(v[i]))
			i++;
		const char *sp = words ? v + ws : " ";
		size_t sp_len = words ? w - ws : 1;

		if (words && col + sp_len + (i - w) > FOLD_AT) {
			kumo_buf_puts(b, "\r\n");
			col = 0;
		}
		put_hard(b, &col, sp, sp_len);
		put_hard(b, &col, v + w, i - w);
		words = true;
	}
	kumo_buf_puts(b, "\r\n");
}

static void put_field_str(struct kumo_buf *b, const char *name, const char *v)
{
	put_field(b, name, v, strlen(v));
}

/* Writes prefix then the words of text, wrapped at WRAP_AT with continuation lines
 * indented by indent spaces; a word longer than a line is cut at HARD_MAX. */
static void put_wrapped(struct kumo_buf *b, const char *prefix, size_t indent, const char *v,
			size_t n)
{
	size_t col = strlen(prefix), i = 0;
	bool words = false;

	kumo_buf_puts(b, prefix);
	while (i < n) {
		while (i < n && v[i] == ' ')
			i++;
		size_t w = i;

		while (i < n && v[i] != ' ')
			i++;
		if (i == w)
			break;
		const char *p = v + w;
		size_t wl = i - w;

		if (words && col + 1 + wl > WRAP_AT) {
			kumo_buf_puts(b, "\r\n");
			kumo_buf_printf(b, "%*s", (int)indent, "");
			col = indent;
		} else if (words) {
			kumo_buf_putc(b, ' ');
			col++;
		}
		while (col + wl > HARD_MAX) {
			size_t k = fit(p, wl, HARD_MAX - col);

			kumo_buf_append(b, p, k);
			kumo_buf_puts(b, "\r\n");
			kumo_buf_printf(b, "%*s", (int)indent, "");
			col = indent;
			p += k;
			wl -= k;
		}
		kumo_buf_append(b, p, wl);
		col += wl;
		words = true;
	}
	kumo_buf_puts(b, "\r\n");
}

static void put_wrapped_str(struct kumo_buf *b, const char *s)
{
	put_wrapped(b, "", 0, s, strlen(s));
}

/* RFC 5322 3.3 date-time in UTC. */
static void fmt_date(int64_t ms, char out[DATE_MAX])
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char mons[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)(ms / 1000 - (ms % 1000 < 0));
	struct tm tm;

	if (!gmtime_r(&t, &tm)) {
		t = 0;
		gmtime_r(&t, &tm);
	}
	snprintf(out, DATE_MAX, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
		 tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
}

static void put_date_field(struct kumo_buf *b, const char *name, int64_t ms)
{
	char d[DATE_MAX];

	fmt_date(ms, d);
	put_field_str(b, name, d);
}

/* Writes "Name: type; value" with the value cleaned. v is scratch. */
static void put_typed_field(struct kumo_buf *b, struct kumo_buf *v, const char *name, const char *s,
			    const char *deftype, bool utf8)
{
	struct typed t;

	split_typed(s, deftype, &t);
	v->len = 0;
	kumo_buf_append(v, t.type, t.tlen);
	kumo_buf_puts(v, "; ");
	put_clean(v, t.val, t.vlen, utf8);
	put_field(b, name, v->data, v->len);
}

/* Offset of the empty line that ends the header section, or n when there is none. */
static size_t header_len(const uint8_t *m, size_t n)
{
	size_t p = 0;

	while (p < n) {
		if (m[p] == '\n' || (m[p] == '\r' && p + 1 < n && m[p + 1] == '\n'))
			return p;
		const uint8_t *nl = memchr(m + p, '\n', n - p);

		if (!nl)
			return n;
		p = (size_t)(nl - m) + 1;
	}
	return n;
}

/* Copies a header section with every line end made CRLF, no empty line, NUL as a
 * space, and any line over HARD_MAX folded. */
static void copy_headers(struct kumo_buf *b, const uint8_t *m, size_t n)
{
	size_t col = 0;

	for (size_t i = 0; i < n; i++) {
		uint8_t c = m[i];

		if (c == '\r' || c == '\n') {
			if (c == '\r' && i + 1 < n && m[i + 1] == '\n')
				i++;
			if (col)
				kumo_buf_puts(b, "\r\n");
			col = 0;
			continue;
		}
		if (col >= HARD_MAX) {
			kumo_buf_puts(b, "\r\n ");
			col = 1;
		}
		kumo_buf_putc(b, c ? (char)c : ' ');
		col++;
	}
	if (col)
		kumo_buf_puts(b, "\r\n");
}

/* Whether a message can be attached as it is: CRLF line ends only, no NUL, no line over
 * HARD_MAX octets. */
static bool sendable_unchanged(const uint8_t *m, size_t n)
{
	size_t col = 0;

	for (size_t i = 0; i < n; i++) {
		if (m[i] == '\r') {
			if (i + 1 >= n || m[i + 1] != '\n')
				return false;
			i++;
			col = 0;
		} else if (m[i] == '\n' || m[i] == 0 || ++col > HARD_MAX) {
			return false;
		}
	}
	return true;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

const char *kumo_dsn_action_name(enum kumo_dsn_action action)
{
	switch (action) {
	case KUMO_DSN_ACTION_FAILED:
		return "failed";
	case KUMO_DSN_ACTION_DELAYED:
		return "delayed";
	case KUMO_DSN_ACTION_DELIVERED:
		return "delivered";
	case KUMO_DSN_ACTION_RELAYED:
		return "relayed";
	case KUMO_DSN_ACTION_EXPANDED:
		return "expanded";
	}
	return NULL;
}

bool kumo_dsn_should_notify(unsigned notify_bits, enum kumo_dsn_action action)
{
	if (notify_bits & KUMO_DSN_NOTIFY_NEVER)
		return false;
	if (notify_bits == KUMO_DSN_NOTIFY_UNSET)
		notify_bits = KUMO_DSN_NOTIFY_FAILURE | KUMO_DSN_NOTIFY_DELAY;
	switch (action) {
	case KUMO_DSN_ACTION_FAILED:
		return notify_bits & KUMO_DSN_NOTIFY_FAILURE;
	case KUMO_DSN_ACTION_DELAYED:
		return notify_bits & KUMO_DSN_NOTIFY_DELAY;
	case KUMO_DSN_ACTION_DELIVERED:
	case KUMO_DSN_ACTION_RELAYED:
	case KUMO_DSN_ACTION_EXPANDED:
		return notify_bits & KUMO_DSN_NOTIFY_SUCCESS;
	}
	return false;
}

bool kumo_dsn_sender_ok(const char *sender)
{
	return sender && *sender && strcmp(sender, "<>") != 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int kumo_dsn_xtext_decode(const char *s, size_t n, struct kumo_buf *out)
{
	size_t mark = out->len;

	if (kumo_buf_reserve(out, n) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int hi, lo;

		if (s[i] != '+') {
			kumo_buf_putc(out, s[i]);
			continue;
		}
		if (i + 2 >= n || (hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0) {
			out->len = mark;
			return -EINVAL;
		}
		kumo_buf_putc(out, (char)(hi << 4 | lo));
		i += 2;
	}
	return out->oom ? -ENOMEM : 0;
}

int kumo_dsn_xtext_encode(const char *s, size_t n, struct kumo_buf *out)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 33 || c > 126 || c == '+' || c == '=') {
			char e[3] = {'+', hex[c >> 4], hex[c & 15]};

			kumo_buf_append(out, e, 3);
		} else {
			kumo_buf_putc(out, (char)c);
		}
	}
	return out->oom ? -ENOMEM : 0;
}

static int validate(const struct kumo_dsn_report *r)
{
	if (!r->to)
		return -EINVAL;
	if (!kumo_dsn_sender_ok(r->to))
		return -EPERM;
	if (!field_ok(r->to) || !field_ok(r->from) || !field_ok(r->hostname) || !r->message_id ||
	    !msgid_token_ok(r->message_id) || !r->rcpts || !r->nrcpt || (r->msg_len && !r->msg))
		return -EINVAL;

	struct typed host;

	split_typed(r->hostname, "dns", &host);
	if (!host.vlen)
		return -EINVAL;
	for (size_t i = 0; i < host.vlen; i++)
		if (!is_atext(host.val[i]) && host.val[i] != '.' &&
		    (unsigned char)host.val[i] < 0x80)
			return -EINVAL;
	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct kumo_dsn_rcpt *rc = &r->rcpts[i];

		if (!field_ok(rc->final_rcpt) || !status_ok(rc->status) ||
		    !kumo_dsn_action_name(rc->action))
			return -EINVAL;
	}
	return 0;
}

/* Whether the delivery-status part needs RFC 6533 (UTF-8 addresses or identifiers). */
static bool report_is_global(const struct kumo_dsn_report *r, struct kumo_buf *v)
{
	if (has_8bit(r->to, strlen(r->to)) || has_8bit(r->from, strlen(r->from)) ||
	    has_8bit(r->hostname, strlen(r->hostname)))
		return true;
	if (r->envid) {
		v->len = 0;
		put_xtext_value(v, r->envid, strlen(r->envid));
		if (has_8bit(v->data, v->len))
			return true;
	}
	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct kumo_dsn_rcpt *rc = &r->rcpts[i];

		if (has_8bit(rc->final_rcpt, strlen(rc->final_rcpt)))
			return true;
		if (rc->orcpt) {
			v->len = 0;
			put_xtext_value(v, rc->orcpt, strlen(rc->orcpt));
			if (has_8bit(v->data, v->len))
				return true;
		}
	}
	return false;
}

/* The message/delivery-status part body (RFC 3464 2.1). */
static void build_status(struct kumo_buf *st, struct kumo_buf *v, const struct kumo_dsn_report *r,
			 bool utf8)
{
	if (r->envid) {
		v->len = 0;
		put_xtext_value(v, r->envid, strlen(r->envid));
		put_field(st, "Original-Envelope-Id", v->data, v->len);
	}
	put_typed_field(st, v, "Reporting-MTA", r->hostname, "dns", utf8);
	if (r->received_from_mta)
		put_typed_field(st, v, "Received-From-MTA", r->received_from_mta, "dns", utf8);
	if (r->arrival_ms)
		put_date_field(st, "Arrival-Date", r->arrival_ms);
	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct kumo_dsn_rcpt *rc = &r->rcpts[i];

		kumo_buf_puts(st, "\r\n");
		if (rc->orcpt) {
			struct typed t;

			split_typed(rc->orcpt, "rfc822", &t);
			v->len = 0;
			kumo_buf_append(v, t.type, t.tlen);
			kumo_buf_puts(v, "; ");
			put_xtext_value(v, t.val, t.vlen);
			put_field(st, "Original-Recipient", v->data, v->len);
		}
		put_typed_field(st, v, "Final-Recipient", rc->final_rcpt, "rfc822", utf8);
		put_field_str(st, "Action", kumo_dsn_action_name(rc->action));
		put_field_str(st, "Status", rc->status);
		if (rc->remote_mta)
			put_typed_field(st, v, "Remote-MTA", rc->remote_mta, "dns", utf8);
		if (rc->diagnostic)
			put_typed_field(st, v, "Diagnostic-Code", rc->diagnostic, "smtp", utf8);
		if (rc->last_attempt_ms)
			put_date_field(st, "Last-Attempt-Date", rc->last_attempt_ms);
		if (rc->action == KUMO_DSN_ACTION_DELAYED && rc->retry_until_ms)
			put_date_field(st, "Will-Retry-Until", rc->retry_until_ms);
	}
}

static const char *action_text(enum kumo_dsn_action a)
{
	switch (a) {
	case KUMO_DSN_ACTION_FAILED:
		return "delivery failed";
	case KUMO_DSN_ACTION_DELAYED:
		return "delivery delayed, still trying";
	case KUMO_DSN_ACTION_DELIVERED:
		return "delivered";
	case KUMO_DSN_ACTION_RELAYED:
		return "relayed to a system that sends no further notifications";
	case KUMO_DSN_ACTION_EXPANDED:
		return "delivered and forwarded to other addresses";
	}
	return "";
}

/* One paragraph of text, cleaned and wrapped. */
static void para(struct kumo_buf *h, const char *prefix, size_t indent, const char *s, size_t n,
		 bool utf8, struct kumo_buf *v)
{
	v->len = 0;
	put_clean(v, s, n, utf8);
	put_wrapped(h, prefix, indent, v->data, v->len);
}

/* The human-readable first part. */
static void build_text(struct kumo_buf *h, struct kumo_buf *v, struct kumo_buf *v2,
		       const struct kumo_dsn_report *r, enum attach att, size_t cap, bool utf8)
{
	bool failed = false, delayed = false, done = false;
	struct typed host;
	char d[DATE_MAX];

	for (size_t i = 0; i < r->nrcpt; i++) {
		enum kumo_dsn_action a = r->rcpts[i].action;

		failed |= a == KUMO_DSN_ACTION_FAILED;
		delayed |= a == KUMO_DSN_ACTION_DELAYED;
		done |= a != KUMO_DSN_ACTION_FAILED && a != KUMO_DSN_ACTION_DELAYED;
	}
	split_typed(r->hostname, "dns", &host);
	v2->len = 0;
	kumo_buf_puts(v2, "This is the mail system at host ");
	kumo_buf_append(v2, host.val, host.vlen);
	kumo_buf_puts(v2, ".");
	para(h, "", 0, v2->data, v2->len, utf8, v);
	kumo_buf_puts(h, "\r\n");
	if (failed) {
		put_wrapped_str(h, "Your message could not be delivered to one or more of its "
				   "recipients, and no further attempts will be made for them.");
		kumo_buf_puts(h, "\r\n");
	}
	if (delayed) {
		put_wrapped_str(h, "Your message has not yet been delivered to one or more of "
				   "its recipients. It is still queued and will be retried; you do "
				   "not need to send it again.");
		kumo_buf_puts(h, "\r\n");
	}
	if (done) {
		put_wrapped_str(h, "Your message was delivered, or handed to a system that sends "
				   "no further notifications, for one or more of its recipients.");
		kumo_buf_puts(h, "\r\n");
	}
	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct kumo_dsn_rcpt *rc = &r->rcpts[i];
		struct typed t;

		split_typed(rc->final_rcpt, "rfc822", &t);
		v2->len = 0;
		kumo_buf_putc(v2, '<');
		kumo_buf_append(v2, t.val, t.vlen);
		kumo_buf_puts(v2, ">: ");
		kumo_buf_puts(v2, action_text(rc->action));
		para(h, "", 4, v2->data, v2->len, utf8, v);
		if (rc->orcpt) {
			struct typed o;

			split_typed(rc->orcpt, "rfc822", &o);
			v2->len = 0;
			put_xtext_value(v2, o.val, o.vlen);
			if (v2->len != t.vlen || memcmp(v2->data, t.val, t.vlen) != 0)
				para(h, "    Originally addressed to: ", 6, v2->data, v2->len, utf8,
				     v);
		}
		v2->len = 0;
		kumo_buf_puts(v2, rc->status);
		if (status_expired(rc->status))
			kumo_buf_puts(v2, " (the message stayed queued past its expiry time)");
		para(h, "    Status: ", 6, v2->data, v2->len, utf8, v);
		if (rc->remote_mta) {
			split_typed(rc->remote_mta, "dns", &t);
			para(h, "    Remote server: ", 6, t.val, t.vlen, utf8, v);
		}
		if (rc->diagnostic) {
			split_typed(rc->diagnostic, "smtp", &t);
			para(h, "    Reply: ", 6, t.val, t.vlen, utf8, v);
		}
		if (rc->last_attempt_ms) {
			fmt_date(rc->last_attempt_ms, d);
			para(h, "    Last attempt: ", 6, d, strlen(d), false, v);
		}
		if (rc->action == KUMO_DSN_ACTION_DELAYED && rc->retry_until_ms) {
			fmt_date(rc->retry_until_ms, d);
			para(h, "    Will retry until: ", 6, d, strlen(d), false, v);
		}
		kumo_buf_puts(h, "\r\n");
	}
	v2->len = 0;
	switch (att) {
	case ATT_NONE:
		break;
	case ATT_HEADERS:
		kumo_buf_puts(v2, "The headers of your message are attached.");
		break;
	case ATT_FULL:
		kumo_buf_puts(v2, "Your message is attached.");
		break;
	case ATT_TOO_BIG:
		kumo_buf_printf(v2,
				"Your message is %zu bytes, more than the %zu bytes returned in "
				"full, so only its headers are attached.",
				r->msg_len, cap);
		break;
	case ATT_UNCHANGED:
		kumo_buf_puts(v2, "Your message has line endings or line lengths that cannot be "
				  "returned unchanged, so only its headers are attached.");
		break;
	}
	if (v2->len)
		put_wrapped(h, "", 0, v2->data, v2->len);
}

/* Picks a boundary that occurs in none of the parts: a hash of the DSN's unique token
 * and a counter, starting with "=_" so that it cannot occur in base64 or
 * quoted-printable text either. */
static int pick_boundary(const char *token, const struct kumo_buf *parts[], size_t nparts,
			 const void *extra, size_t extra_len, char out[BOUNDARY_MAX])
{
	for (unsigned n = 0; n < BOUNDARY_TRIES; n++) {
		unsigned char nb[4] = {(unsigned char)n, (unsigned char)(n >> 8),
				       (unsigned char)(n >> 16), (unsigned char)(n >> 24)};
		uint64_t h = fnv1a(0xcbf29ce484222325ULL, token, strlen(token));
		bool clash = false;

		h = fnv1a(h, nb, sizeof(nb));
		snprintf(out, BOUNDARY_MAX, "=_kumo_%016" PRIx64 "_%u", h, n);
		for (size_t i = 0; i < nparts && !clash; i++)
			clash = contains(parts[i]->data, parts[i]->len, out);
		if (!clash && !contains(extra, extra_len, out))
			return 0;
	}
	return -EAGAIN;
}

int kumo_dsn_build(const struct kumo_dsn_report *r, struct kumo_buf *out, unsigned *flags)
{
	struct kumo_buf human = {0}, status = {0}, hdrs = {0}, v = {0}, v2 = {0};
	const struct kumo_buf *parts[] = {&human, &status, &hdrs};
	size_t mark = out->len, cap = r->full_max ? r->full_max : KUMO_DSN_DEFAULT_FULL_MAX;
	size_t hlen = 0;
	enum attach att = ATT_NONE;
	bool global, att_hdr8, att8, human8, status8, any_failed = false, any_delayed = false;
	unsigned fl = 0;
	char bnd[BOUNDARY_MAX], d[DATE_MAX];
	int err = validate(r);

	if (err < 0)
		return err;
	global = report_is_global(r, &v);
	if (r->msg_len) {
		hlen = header_len(r->msg, r->msg_len);
		if (r->ret != KUMO_DSN_RET_FULL)
			att = ATT_HEADERS;
		else if (r->msg_len > cap)
			att = ATT_TOO_BIG;
		else if (!sendable_unchanged(r->msg, r->msg_len))
			att = ATT_UNCHANGED;
		else
			att = ATT_FULL;
		if (att != ATT_FULL)
			copy_headers(&hdrs, r->msg, hlen);
	}
	build_status(&status, &v, r, global);
	build_text(&human, &v, &v2, r, att, cap, global);
	if (human.oom || status.oom || hdrs.oom || v.oom || v2.oom) {
		err = -ENOMEM;
		goto out_free;
	}

	err = pick_boundary(r->message_id, parts, 3, att == ATT_FULL ? r->msg : NULL,
			    att == ATT_FULL ? r->msg_len : 0, bnd);
	if (err < 0)
		goto out_free;

	att_hdr8 = att != ATT_NONE && has_8bit(r->msg, hlen);
	att8 = att == ATT_FULL ? has_8bit(r->msg, r->msg_len) : att_hdr8;
	human8 = has_8bit(human.data, human.len);
	status8 = has_8bit(status.data, status.len);

	if (global || att_hdr8)
		fl |= KUMO_DSN_OUT_SMTPUTF8 | KUMO_DSN_OUT_8BITMIME;
	if (att8 || human8 || status8)
		fl |= KUMO_DSN_OUT_8BITMIME;
	if (att == ATT_TOO_BIG || att == ATT_UNCHANGED)
		fl |= KUMO_DSN_OUT_HEADERS_ONLY;

	for (size_t i = 0; i < r->nrcpt; i++) {
		any_failed |= r->rcpts[i].action == KUMO_DSN_ACTION_FAILED;
		any_delayed |= r->rcpts[i].action == KUMO_DSN_ACTION_DELAYED;
	}

	/* The header section. */
	put_field_str(out, "From", r->from);
	put_field_str(out, "To", r->to);
	put_field_str(out, "Subject",
		      any_failed    ? "Undelivered Mail Returned to Sender"
		      : any_delayed ? "Delivery Status Notification (Delay)"
				    : "Successful Mail Delivery Report");
	fmt_date(r->now_ms, d);
	put_field_str(out, "Date", d);
	v.len = 0;
	kumo_buf_putc(&v, '<');
	kumo_buf_puts(&v, r->message_id);
	if (!strchr(r->message_id, '@')) {
		struct typed host;

		split_typed(r->hostname, "dns", &host);
		kumo_buf_putc(&v, '@');
		kumo_buf_append(&v, host.val, host.vlen);
	}
	kumo_buf_putc(&v, '>');
	put_field(out, "Message-ID", v.data, v.len);
	put_field_str(out, "Auto-Submitted", "auto-replied");
	put_field_str(out, "MIME-Version", "1.0");
	kumo_buf_printf(out,
			"Content-Type: multipart/report; report-type=%s;\r\n\tboundary=\"%s\"\r\n",
			global ? "global-delivery-status" : "delivery-status", bnd);
	kumo_buf_puts(out, "\r\nThis is a MIME-encapsulated message.\r\n");

	/* Part 1: the explanation. */
	kumo_buf_printf(out, "\r\n--%s\r\n", bnd);
	kumo_buf_puts(out, "Content-Description: Notification\r\n");
	kumo_buf_printf(out, "Content-Type: text/plain; charset=%s\r\n",
			human8 ? "utf-8" : "us-ascii");
	if (human8)
		kumo_buf_puts(out, "Content-Transfer-Encoding: 8bit\r\n");
	kumo_buf_puts(out, "\r\n");
	kumo_buf_append(out, human.data, human.len);

	/* Part 2: the machine-readable report. */
	kumo_buf_printf(out, "\r\n--%s\r\n", bnd);
	kumo_buf_puts(out, "Content-Description: Delivery report\r\n");
	kumo_buf_printf(out, "Content-Type: message/%s\r\n",
			global ? "global-delivery-status" : "delivery-status");
	if (status8)
		kumo_buf_puts(out, "Content-Transfer-Encoding: 8bit\r\n");
	kumo_buf_puts(out, "\r\n");
	kumo_buf_append(out, status.data, status.len);

	/* Part 3: the original message or its header section. */
	if (att != ATT_NONE) {
		kumo_buf_printf(out, "\r\n--%s\r\n", bnd);
		if (att == ATT_FULL) {
			kumo_buf_puts(out, "Content-Description: Original message\r\n");
			kumo_buf_printf(out, "Content-Type: message/%s\r\n",
					att_hdr8 ? "global" : "rfc822");
		} else {
			kumo_buf_puts(out, "Content-Description: Original message headers\r\n");
			kumo_buf_puts(out, att_hdr8 ? "Content-Type: message/global-headers\r\n"
						    : "Content-Type: text/rfc822-headers\r\n");
		}
		if (att8)
			kumo_buf_puts(out, "Content-Transfer-Encoding: 8bit\r\n");
		kumo_buf_puts(out, "\r\n");
		if (att == ATT_FULL)
			kumo_buf_append(out, r->msg, r->msg_len);
		else
			kumo_buf_append(out, hdrs.data, hdrs.len);
	}
	kumo_buf_printf(out, "\r\n--%s--\r\n", bnd);

	if (out->oom || v.oom)
		err = -ENOMEM;
	else if (flags)
		*flags = fl;
out_free:
	kumo_buf_free(&human);
	kumo_buf_free(&status);
	kumo_buf_free(&hdrs);
	kumo_buf_free(&v);
	kumo_buf_free(&v2);
	if (err < 0)
		out->len = mark;
	return err;
}
