/* Unit tests for the delivery status notification builder (proto/dsn): each DSN built is
 * parsed back (header section, multipart/report boundary, parts and their headers) and
 * checked field by field; also NOTIFY semantics, the null sender rule and xtext. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <cmocka.h>

#include "proto/dsn.h"

#define NOW_MS 1700000000000LL /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define NOW_DATE "Tue, 14 Nov 2023 22:13:20 +0000"
#define ARRIVAL_MS 1699999000000LL /* 16:40 earlier */
#define ARRIVAL_DATE "Tue, 14 Nov 2023 21:56:40 +0000"
#define RETRY_MS 1700086400000LL
#define RETRY_DATE "Wed, 15 Nov 2023 22:13:20 +0000"

static const char orig_msg[] = "From: Alice <alice@example.com>\r\n"
			       "To: user@example.net\r\n"
			       "Subject: hello\r\n"
			       "\tfolded subject\r\n"
			       "Message-ID: <m1@example.com>\r\n"
			       "\r\n"
			       "Secret body line 1\r\n"
			       "Secret body line 2\r\n";
static const char orig_hdrs[] = "From: Alice <alice@example.com>\r\n"
				"To: user@example.net\r\n"
				"Subject: hello\r\n"
				"\tfolded subject\r\n"
				"Message-ID: <m1@example.com>\r\n";

/* ---- Parsing the output back ---- */

struct part {
	const char *hdr; /* header section, final CRLF included */
	size_t hdr_len;
	const char *body;
	size_t body_len;
};

struct dsn {
	char *text; /* NUL-terminated copy of the output */
	size_t len;
	size_t hdr_len; /* top-level header section, final CRLF included */
	char boundary[128];
	struct part parts[8];
	size_t nparts;
};

static size_t count(const char *hay, size_t n, const char *needle)
{
	size_t c = 0, nl = strlen(needle);
	const char *p = hay, *end = hay + n;

	while ((size_t)(end - p) >= nl && (p = memmem(p, (size_t)(end - p), needle, nl))) {
		c++;
		p += 1;
	}
	return c;
}

static const char *find(const char *hay, size_t n, const char *needle)
{
	return memmem(hay, n, needle, strlen(needle));
}

/* Every line ends in CRLF, holds no bare CR or LF and is at most 998 octets. */
static void assert_lines_ok(const char *s, size_t n)
{
	size_t col = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\r') {
			assert_true(i + 1 < n && s[i + 1] == '\n');
			i++;
			col = 0;
			continue;
		}
		assert_true(s[i] != '\n');
		col++;
		assert_true(col <= 998);
	}
	assert_int_equal(col, 0);
}

/* The unfolded value of the only field called name in a header section, or NULL. */
static char *field(const char *h, size_t n, const char *name)
{
	size_t nl = strlen(name);
	char *found = NULL;

	for (size_t p = 0; p < n;) {
		const char *eol = find(h + p, n - p, "\r\n");
		size_t e = eol ? (size_t)(eol - h) : n;

		if (e - p > nl && h[p + nl] == ':' && strncasecmp(h + p, name, nl) == 0) {
			assert_null(found); /* the field occurs once */
			found = test_calloc(1, n + 1);
			size_t q = p + nl + 1, k = 0;

			while (q < n && (h[q] == ' ' || h[q] == '\t'))
				q++;
			/* Copy up to the CRLF not followed by whitespace, dropping fold CRLFs. */
			while (q < n) {
				if (h[q] == '\r' && q + 2 < n && h[q + 1] == '\n' &&
				    (h[q + 2] == ' ' || h[q + 2] == '\t')) {
					q += 2;
					continue;
				}
				if (h[q] == '\r')
					break;
				found[k++] = h[q++];
			}
		}
		p = e + 2;
	}
	return found;
}

static void assert_field(const char *h, size_t n, const char *name, const char *want)
{
	char *v = field(h, n, name);

	if (!v)
		fail_msg("no %s field", name);
	if (strcmp(v, want) != 0)
		fail_msg("%s: got \"%s\", want \"%s\"", name, v, want);
	test_free(v);
}

static void parse(struct dsn *d, const struct kumo_buf *out)
{
	memset(d, 0, sizeof(*d));
	d->text = test_malloc(out->len + 1);
	memcpy(d->text, out->data, out->len);
	d->text[out->len] = 0;
	d->len = out->len;
	assert_lines_ok(d->text, d->len);

	const char *sep = find(d->text, d->len, "\r\n\r\n");

	assert_non_null(sep);
	d->hdr_len = (size_t)(sep - d->text) + 2;
	char *ct = field(d->text, d->hdr_len, "Content-Type");

	assert_non_null(ct);
	const char *b = strstr(ct, "boundary=\"");

	assert_non_null(b);
	b += strlen("boundary=\"");
	const char *q = strchr(b, '"');

	assert_non_null(q);
	assert_true((size_t)(q - b) < sizeof(d->boundary) && q > b);
	memcpy(d->boundary, b, (size_t)(q - b));
	test_free(ct);

	char delim[160];

	snprintf(delim, sizeof(delim), "\r\n--%s", d->boundary);
	const char *body = sep + 4, *end = d->text + d->len;
	const char *p = find(body, (size_t)(end - body), delim);

	assert_non_null(p);
	for (;;) {
		p += strlen(delim);
		if (p[0] == '-' && p[1] == '-') {
			assert_int_equal(end - p, 4); /* "--" CRLF and nothing after */
			assert_memory_equal(p, "--\r\n", 4);
			break;
		}
		assert_memory_equal(p, "\r\n", 2);
		p += 2;
		const char *next = find(p, (size_t)(end - p), delim);

		assert_non_null(next);
		assert_true(d->nparts < 8);
		struct part *pt = &d->parts[d->nparts++];
		const char *hs = find(p, (size_t)(next - p), "\r\n\r\n");

		assert_non_null(hs);
		pt->hdr = p;
		pt->hdr_len = (size_t)(hs - p) + 2;
		pt->body = hs + 4;
		pt->body_len = (size_t)(next - pt->body);
		p = next;
	}
	/* The boundary occurs at the delimiters and in the Content-Type field only. */
	assert_int_equal(count(d->text, d->len, d->boundary), d->nparts + 2);
}

static void dsn_free(struct dsn *d)
{
	test_free(d->text);
}

static void part_field(const struct dsn *d, size_t i, const char *name, const char *want)
{
	assert_true(i < d->nparts);
	assert_field(d->parts[i].hdr, d->parts[i].hdr_len, name, want);
}

static bool part_has(const struct dsn *d, size_t i, const char *needle)
{
	return find(d->parts[i].body, d->parts[i].body_len, needle) != NULL;
}

/* ---- Fixtures ---- */

static struct kumo_dsn_rcpt one_failed = {
    .final_rcpt = "rfc822;user@example.net",
    .action = KUMO_DSN_ACTION_FAILED,
    .status = "5.1.1",
    .remote_mta = "dns; mx.example.net",
    .diagnostic = "smtp; 550 5.1.1 user unknown",
    .last_attempt_ms = NOW_MS,
};

static struct kumo_dsn_report base_report(const struct kumo_dsn_rcpt *rcpts, size_t n)
{
	struct kumo_dsn_report r = {
	    .hostname = "mta.example.com",
	    .from = "MAILER-DAEMON@mta.example.com",
	    .to = "alice@example.com",
	    .message_id = "dsn-0001",
	    .now_ms = NOW_MS,
	    .arrival_ms = ARRIVAL_MS,
	    .rcpts = rcpts,
	    .nrcpt = n,
	    .msg = (const uint8_t *)orig_msg,
	    .msg_len = sizeof(orig_msg) - 1,
	};
	return r;
}

static void build(const struct kumo_dsn_report *r, struct dsn *d, unsigned *flags)
{
	struct kumo_buf out = {0};
	unsigned fl = 0xdead;

	assert_int_equal(kumo_dsn_build(r, &out, &fl), 0);
	assert_int_not_equal(fl, 0xdead);
	if (flags)
		*flags = fl;
	parse(d, &out);
	kumo_buf_free(&out);
}

/* ---- Tests ---- */

static void test_failed_hdrs(void **state)
{
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d;
	unsigned flags;

	r.ret = KUMO_DSN_RET_HDRS;
	build(&r, &d, &flags);
	assert_int_equal(flags, 0);

	/* Top-level header section. */
	assert_field(d.text, d.hdr_len, "From", "MAILER-DAEMON@mta.example.com");
	assert_field(d.text, d.hdr_len, "To", "alice@example.com");
	assert_field(d.text, d.hdr_len, "Subject", "Undelivered Mail Returned to Sender");
	assert_field(d.text, d.hdr_len, "Date", NOW_DATE);
	assert_field(d.text, d.hdr_len, "Message-ID", "<dsn-0001@mta.example.com>");
	assert_field(d.text, d.hdr_len, "MIME-Version", "1.0");
	assert_field(d.text, d.hdr_len, "Auto-Submitted", "auto-replied");
	char ct[256];

	snprintf(ct, sizeof(ct), "multipart/report; report-type=delivery-status;\tboundary=\"%s\"",
		 d.boundary);
	assert_field(d.text, d.hdr_len, "Content-Type", ct);
	assert_true(strncmp(d.boundary, "=_", 2) == 0);

	/* The first delimiter follows the header section and the preamble. */
	char first[200];

	snprintf(first, sizeof(first),
		 "\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--%s\r\n", d.boundary);
	assert_ptr_equal(find(d.text, d.len, first), d.text + d.hdr_len - 2);
	assert_int_equal(d.nparts, 3);

	/* Part 1: the explanation. */
	part_field(&d, 0, "Content-Type", "text/plain; charset=us-ascii");
	part_field(&d, 0, "Content-Description", "Notification");
	assert_true(part_has(&d, 0, "This is the mail system at host mta.example.com.\r\n"));
	assert_true(part_has(&d, 0, "<user@example.net>: delivery failed\r\n"));
	assert_true(part_has(&d, 0, "    Status: 5.1.1\r\n"));
	assert_true(part_has(&d, 0, "    Remote server: mx.example.net\r\n"));
	assert_true(part_has(&d, 0, "    Reply: 550 5.1.1 user unknown\r\n"));
	assert_true(part_has(&d, 0, "    Last attempt: " NOW_DATE "\r\n"));
	assert_true(part_has(&d, 0, "The headers of your message are attached.\r\n"));

	/* Part 2: the machine-readable report, field by field. */
	part_field(&d, 1, "Content-Type", "message/delivery-status");
	static const char want_status[] = "Reporting-MTA: dns; mta.example.com\r\n"
					  "Arrival-Date: " ARRIVAL_DATE "\r\n"
					  "\r\n"
					  "Final-Recipient: rfc822; user@example.net\r\n"
					  "Action: failed\r\n"
					  "Status: 5.1.1\r\n"
					  "Remote-MTA: dns; mx.example.net\r\n"
					  "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
					  "Last-Attempt-Date: " NOW_DATE "\r\n";
	assert_int_equal(d.parts[1].body_len, sizeof(want_status) - 1);
	assert_memory_equal(d.parts[1].body, want_status, sizeof(want_status) - 1);

	/* Part 3: the header section only. */
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	part_field(&d, 2, "Content-Description", "Original message headers");
	assert_null(field(d.parts[2].hdr, d.parts[2].hdr_len, "Content-Transfer-Encoding"));
	assert_int_equal(d.parts[2].body_len, sizeof(orig_hdrs) - 1);
	assert_memory_equal(d.parts[2].body, orig_hdrs, sizeof(orig_hdrs) - 1);
	assert_null(find(d.text, d.len, "Secret body"));
	dsn_free(&d);

	/* RET absent means headers too. */
	r.ret = KUMO_DSN_RET_UNSET;
	build(&r, &d, NULL);
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	assert_null(find(d.text, d.len, "Secret body"));
	dsn_free(&d);
}

static void test_full_with_dot_lines(void **state)
{
	static const char msg[] = "From: a@example.com\r\n"
				  "Subject: dots\r\n"
				  "\r\n"
				  ".\r\n"
				  "..two dots\r\n"
				  ".leading\r\n"
				  "\r\n"
				  "last line without CRLF";
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d;
	unsigned flags;

	r.ret = KUMO_DSN_RET_FULL;
	r.msg = (const uint8_t *)msg;
	r.msg_len = sizeof(msg) - 1;
	build(&r, &d, &flags);
	assert_int_equal(flags, 0);
	assert_int_equal(d.nparts, 3);
	part_field(&d, 2, "Content-Type", "message/rfc822");
	part_field(&d, 2, "Content-Description", "Original message");
	assert_int_equal(d.parts[2].body_len, sizeof(msg) - 1);
	assert_memory_equal(d.parts[2].body, msg, sizeof(msg) - 1);
	assert_true(part_has(&d, 0, "Your message is attached.\r\n"));
	dsn_free(&d);

	/* An 8-bit body is attached as it is, marked 8bit. */
	static const char msg8[] = "Subject: x\r\n\r\ncaf\xc3\xa9\r\n";

	r.msg = (const uint8_t *)msg8;
	r.msg_len = sizeof(msg8) - 1;
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_8BITMIME);
	part_field(&d, 2, "Content-Type", "message/rfc822");
	part_field(&d, 2, "Content-Transfer-Encoding", "8bit");
	assert_memory_equal(d.parts[2].body, msg8, sizeof(msg8) - 1);
	dsn_free(&d);
}

static void test_full_over_cap(void **state)
{
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d;
	unsigned flags;

	r.ret = KUMO_DSN_RET_FULL;
	r.full_max = 100;
	assert_true(r.msg_len > 100);
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_HEADERS_ONLY);
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	assert_memory_equal(d.parts[2].body, orig_hdrs, sizeof(orig_hdrs) - 1);
	assert_int_equal(d.parts[2].body_len, sizeof(orig_hdrs) - 1);
	assert_null(find(d.text, d.len, "Secret body"));
	char say[200];

	snprintf(say, sizeof(say), "Your message is %zu bytes, more than the 100 bytes", r.msg_len);
	assert_true(part_has(&d, 0, say));
	assert_true(find(d.parts[0].body, d.parts[0].body_len, "headers are attached") != NULL);
	dsn_free(&d);

	/* Exactly at the cap: attached in full. */
	r.full_max = r.msg_len;
	build(&r, &d, &flags);
	assert_int_equal(flags, 0);
	part_field(&d, 2, "Content-Type", "message/rfc822");
	dsn_free(&d);

	/* The default cap is 1 MiB. */
	size_t big_len = KUMO_DSN_DEFAULT_FULL_MAX + 1;
	char *big = test_malloc(big_len);

	memcpy(big, orig_msg, sizeof(orig_msg) - 1);
	for (size_t i = sizeof(orig_msg) - 1; i < big_len; i++)
		big[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : 'x';
	r.full_max = 0;
	r.msg = (const uint8_t *)big;
	r.msg_len = big_len;
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_HEADERS_ONLY);
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	assert_memory_equal(d.parts[2].body, orig_hdrs, sizeof(orig_hdrs) - 1);
	assert_true(d.len < 4096);
	dsn_free(&d);
	r.msg_len = KUMO_DSN_DEFAULT_FULL_MAX; /* at the default cap: attached in full */
	build(&r, &d, &flags);
	part_field(&d, 2, "Content-Type", "message/rfc822");
	assert_int_equal(d.parts[2].body_len, r.msg_len);
	dsn_free(&d);
	test_free(big);
}

static void test_full_unsendable_falls_back(void **state)
{
	/* A bare LF or an over-long line cannot be attached unchanged. */
	static const char bare[] = "Subject: a\r\nX-B: b\n\r\nbody\nmore\r\n";
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d;
	unsigned flags;

	r.ret = KUMO_DSN_RET_FULL;
	r.msg = (const uint8_t *)bare;
	r.msg_len = sizeof(bare) - 1;
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_HEADERS_ONLY);
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	assert_int_equal(d.parts[2].body_len, strlen("Subject: a\r\nX-B: b\r\n"));
	assert_memory_equal(d.parts[2].body, "Subject: a\r\nX-B: b\r\n", d.parts[2].body_len);
	assert_true(part_has(&d, 0, "cannot be"));
	dsn_free(&d);

	char longl[1200];
	size_t n = (size_t)snprintf(longl, sizeof(longl), "Subject: a\r\n\r\n");

	memset(longl + n, 'y', 999);
	memcpy(longl + n + 999, "\r\n", 2);
	r.msg = (const uint8_t *)longl;
	r.msg_len = n + 1001;
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_HEADERS_ONLY);
	part_field(&d, 2, "Content-Type", "text/rfc822-headers");
	dsn_free(&d);
}

static void test_header_section_edges(void **state)
{
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d;

	/* No blank line: the whole message is the header section. */
	static const char nosep[] = "Subject: only headers\r\nX-A: 1\r\n";

	r.msg = (const uint8_t *)nosep;
	r.msg_len = sizeof(nosep) - 1;
	build(&r, &d, NULL);
	assert_int_equal(d.parts[2].body_len, sizeof(nosep) - 1);
	assert_memory_equal(d.parts[2].body, nosep, sizeof(nosep) - 1);
	dsn_free(&d);

	/* A final line without CRLF gets one. */
	r.msg_len = sizeof(nosep) - 3;
	build(&r, &d, NULL);
	assert_memory_equal(d.parts[2].body, nosep, sizeof(nosep) - 1);
	dsn_free(&d);

	/* An empty header section. */
	static const char empty[] = "\r\nbody only\r\n";

	r.msg = (const uint8_t *)empty;
	r.msg_len = sizeof(empty) - 1;
	build(&r, &d, NULL);
	assert_int_equal(d.parts[2].body_len, 0);
	assert_null(find(d.text, d.len, "body only"));
	dsn_free(&d);

	/* A header line over 998 octets is folded in the copy. */
	char longh[1500];
	size_t n = (size_t)snprintf(longh, sizeof(longh), "X-Long: ");

	memset(longh + n, 'z', 1200);
	memcpy(longh + n + 1200, "\r\n\r\nbody\r\n", 10);
	r.msg = (const uint8_t *)longh;
	r.msg_len = n + 1210;
	build(&r, &d, NULL); /* parse() checks every line length */
	assert_int_equal(d.parts[2].body_len, n + 1200 + 5);
	dsn_free(&d);

	/* No original message: two parts. */
	r.msg = NULL;
	r.msg_len = 0;
	build(&r, &d, NULL);
	assert_int_equal(d.nparts, 2);
	assert_null(find(d.parts[0].body, d.parts[0].body_len, "attached"));
	dsn_free(&d);
}

static void test_mixed_actions(void **state)
{
	struct kumo_dsn_rcpt rc[] = {
	    {.final_rcpt = "rfc822;gone@example.net",
	     .action = KUMO_DSN_ACTION_FAILED,
	     .status = "5.1.1",
	     .diagnostic = "smtp; 550 5.1.1 no such user"},
	    {.final_rcpt = "slow@example.org",
	     .action = KUMO_DSN_ACTION_DELAYED,
	     .status = "4.4.1",
	     .remote_mta = "mx.example.org",
	     .diagnostic = "421 4.4.1 try later",
	     .last_attempt_ms = NOW_MS,
	     .retry_until_ms = RETRY_MS},
	    {.final_rcpt = "rfc822;ok@example.com",
	     .action = KUMO_DSN_ACTION_DELIVERED,
	     .status = "2.0.0",
	     .retry_until_ms = RETRY_MS /* ignored: not delayed */},
	    {.final_rcpt = "rfc822;old@example.com",
	     .action = KUMO_DSN_ACTION_RELAYED,
	     .status = "2.0.0"},
	    {.final_rcpt = "rfc822;list@example.com",
	     .action = KUMO_DSN_ACTION_EXPANDED,
	     .status = "2.0.0"},
	};
	struct kumo_dsn_report r = base_report(rc, 5);
	struct dsn d;

	r.arrival_ms = 0;
	r.received_from_mta = "dns; client.example.com";
	build(&r, &d, NULL);
	assert_field(d.text, d.hdr_len, "Subject", "Undelivered Mail Returned to Sender");
	static const char want[] = "Reporting-MTA: dns; mta.example.com\r\n"
				   "Received-From-MTA: dns; client.example.com\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; gone@example.net\r\n"
				   "Action: failed\r\n"
				   "Status: 5.1.1\r\n"
				   "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; slow@example.org\r\n"
				   "Action: delayed\r\n"
				   "Status: 4.4.1\r\n"
				   "Remote-MTA: dns; mx.example.org\r\n"
				   "Diagnostic-Code: smtp; 421 4.4.1 try later\r\n"
				   "Last-Attempt-Date: " NOW_DATE "\r\n"
				   "Will-Retry-Until: " RETRY_DATE "\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; ok@example.com\r\n"
				   "Action: delivered\r\n"
				   "Status: 2.0.0\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; old@example.com\r\n"
				   "Action: relayed\r\n"
				   "Status: 2.0.0\r\n"
				   "\r\n"
				   "Final-Recipient: rfc822; list@example.com\r\n"
				   "Action: expanded\r\n"
				   "Status: 2.0.0\r\n";
	assert_int_equal(d.parts[1].body_len, sizeof(want) - 1);
	assert_memory_equal(d.parts[1].body, want, sizeof(want) - 1);
	assert_true(part_has(&d, 0, "<gone@example.net>: delivery failed\r\n"));
	assert_true(part_has(&d, 0, "<slow@example.org>: delivery delayed, still trying\r\n"));
	assert_true(part_has(&d, 0, "    Will retry until: " RETRY_DATE "\r\n"));
	assert_true(part_has(&d, 0, "<ok@example.com>: delivered\r\n"));
	assert_true(part_has(&d, 0, "<old@example.com>: relayed"));
	assert_true(part_has(&d, 0, "<list@example.com>: delivered and forwarded"));
	assert_true(part_has(&d, 0, "could not be delivered"));
	assert_true(part_has(&d, 0, "still queued"));
	dsn_free(&d);

	/* Only delayed: a delay notice. */
	r.rcpts = &rc[1];
	r.nrcpt = 1;
	build(&r, &d, NULL);
	assert_field(d.text, d.hdr_len, "Subject", "Delivery Status Notification (Delay)");
	assert_null(find(d.parts[0].body, d.parts[0].body_len, "could not be delivered"));
	dsn_free(&d);

	/* Only successes. */
	r.rcpts = &rc[2];
	r.nrcpt = 3;
	build(&r, &d, NULL);
	assert_field(d.text, d.hdr_len, "Subject", "Successful Mail Delivery Report");
	dsn_free(&d);
}

static void test_expired(void **state)
{
	struct kumo_dsn_rcpt rc = {.final_rcpt = "rfc822;x@example.net",
				   .action = KUMO_DSN_ACTION_FAILED,
				   .status = KUMO_DSN_STATUS_EXPIRED,
				   .diagnostic = "smtp; 451 4.7.1 greylisted"};
	struct kumo_dsn_report r = base_report(&rc, 1);
	struct dsn d;

	build(&r, &d, NULL);
	assert_true(part_has(&d, 1, "Action: failed\r\nStatus: 4.4.7\r\n"));
	assert_true(part_has(&d, 0, "Status: 4.4.7 (the message stayed queued past its"));
	assert_field(d.text, d.hdr_len, "Subject", "Undelivered Mail Returned to Sender");
	dsn_free(&d);
}

static void test_xtext(void **state)
{
	struct kumo_buf b = {0};

	assert_int_equal(kumo_dsn_xtext_decode("a+2Bb", 5, &b), 0);
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.data, "a+b", 3);
	b.len = 0;
	assert_int_equal(kumo_dsn_xtext_decode("x+3d+20y+2b", 11, &b), 0);
	assert_int_equal(b.len, 5);
	assert_memory_equal(b.data, "x= y+", 5);

	const char *bad[] = {"+", "+2", "a+G0", "+2G", "ab+"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		b.len = 1;
		assert_int_equal(kumo_dsn_xtext_decode(bad[i], strlen(bad[i]), &b), -EINVAL);
		assert_int_equal(b.len, 1);
	}
	b.len = 0;
	assert_int_equal(kumo_dsn_xtext_encode("a+b=c d\xff~!", 10, &b), 0);
	assert_int_equal(b.len, strlen("a+2Bb+3Dc+20d+FF~!"));
	assert_memory_equal(b.data, "a+2Bb+3Dc+20d+FF~!", b.len);

	/* Every octet survives encode then decode; encoded text is xtext. */
	char all[256];
	struct kumo_buf e = {0};

	for (int i = 0; i < 256; i++)
		all[i] = (char)i;
	b.len = 0;
	assert_int_equal(kumo_dsn_xtext_encode(all, 256, &e), 0);
	for (size_t i = 0; i < e.len; i++)
		assert_true(e.data[i] >= '!' && e.data[i] <= '~' && e.data[i] != '=');
	assert_int_equal(kumo_dsn_xtext_decode(e.data, e.len, &b), 0);
	assert_int_equal(b.len, 256);
	assert_memory_equal(b.data, all, 256);
	kumo_buf_free(&b);
	kumo_buf_free(&e);
}

static void test_envid_orcpt_decoded(void **state)
{
	struct kumo_dsn_rcpt rc[] = {
	    {.final_rcpt = "rfc822;a+b@example.org",
	     .orcpt = "rfc822;a+2Bb@example.org",
	     .action = KUMO_DSN_ACTION_FAILED,
	     .status = "5.1.1"},
	    {.final_rcpt = "rfc822;real@example.org",
	     .orcpt = "rfc822;alias+3Dx@example.org",
	     .action = KUMO_DSN_ACTION_FAILED,
	     .status = "5.1.1"},
	    /* Decodes to CR LF: kept as received rather than letting a field in. */
	    {.final_rcpt = "rfc822;c@example.org",
	     .orcpt = "rfc822;c@example.org+0D+0ABcc:+20evil@example.com",
	     .action = KUMO_DSN_ACTION_FAILED,
	     .status = "5.1.1"},
	};
	struct kumo_dsn_report r = base_report(rc, 3);
	struct dsn d;

	r.envid = "QQ+2B314+20x";
	build(&r, &d, NULL);
	static const char want[] = "Original-Envelope-Id: QQ+314 x\r\n"
				   "Reporting-MTA: dns; mta.example.com\r\n"
				   "Arrival-Date: " ARRIVAL_DATE "\r\n"
				   "\r\n"
				   "Original-Recipient: rfc822; a+b@example.org\r\n"
				   "Final-Recipient: rfc822; a+b@example.org\r\n"
				   "Action: failed\r\n"
				   "Status: 5.1.1\r\n"
				   "\r\n"
				   "Original-Recipient: rfc822; alias=x@example.org\r\n"
				   "Final-Recipient: rfc822; real@example.org\r\n"
				   "Action: failed\r\n"
				   "Status: 5.1.1\r\n"
				   "\r\n"
				   "Original-Recipient: rfc822; "
				   "c@example.org+0D+0ABcc:+20evil@example.com\r\n"
				   "Final-Recipient: rfc822; c@example.org\r\n"
				   "Action: failed\r\n"
				   "Status: 5.1.1\r\n";
	assert_int_equal(d.parts[1].body_len, sizeof(want) - 1);
	assert_memory_equal(d.parts[1].body, want, sizeof(want) - 1);
	assert_null(find(d.text, d.len, "\r\nBcc:"));
	/* The human part names the original address only when it differs. */
	assert_null(find(d.parts[0].body, d.parts[0].body_len, "Originally addressed to: a+b"));
	assert_true(part_has(&d, 0, "    Originally addressed to: alias=x@example.org\r\n"));
	dsn_free(&d);
}

/* Undoes header folding: drop each CRLF that is followed by a space or tab. */
static size_t unfold(char *s, size_t n, bool drop_space)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\r' && i + 2 < n && s[i + 1] == '\n' &&
		    (s[i + 2] == ' ' || s[i + 2] == '\t')) {
			i += drop_space ? 2 : 1;
			continue;
		}
		s[k++] = s[i];
	}
	return k;
}

static void test_long_diagnostic_folded(void **state)
{
	char text[3200], diag[3300];
	size_t n = 0;

	while (n < 3000)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "word%zu ", n);
	text[--n] = 0; /* no trailing space */
	snprintf(diag, sizeof(diag), "smtp; 550-5.7.1 %s", text);

	struct kumo_dsn_rcpt rc = one_failed;
	struct kumo_dsn_report r = base_report(&rc, 1);
	struct dsn d;

	rc.diagnostic = diag;
	build(&r, &d, NULL); /* parse() checks every line is CRLF-ended and <= 998 */
	const char *f = find(d.parts[1].body, d.parts[1].body_len, "Diagnostic-Code:");

	assert_non_null(f);
	const char *fe =
	    find(f, d.parts[1].body_len - (size_t)(f - d.parts[1].body), "\r\nLast-Attempt-Date:");
	assert_non_null(fe);
	size_t flen = (size_t)(fe - f);
	char *copy = test_malloc(flen + 1);

	memcpy(copy, f, flen);
	copy[flen] = 0;
	assert_true(count(copy, flen, "\r\n") > 30); /* folded, near 78 columns */
	for (const char *p = copy; (p = strstr(p, "\r\n")); p += 2)
		assert_true(p[2] == ' ' || p[2] == '\t');
	flen = unfold(copy, flen, false);
	copy[flen] = 0;
	assert_string_equal(copy + strlen("Diagnostic-Code: "), diag);
	test_free(copy);

	/* Lines in the human part are wrapped too, and the whole text is still there. */
	assert_true(count(d.parts[0].body, d.parts[0].body_len, "\r\n      word") > 30);
	dsn_free(&d);

	/* One 2500-octet word: split at 998 with a fold. Multi-line replies become one line. */
	char word[2600];

	memcpy(word, "smtp; 550-5.1.1 first\r\n550 5.1.1 ", 33);
	memset(word + 33, 'w', 2500);
	word[2533] = 0;
	rc.diagnostic = word;
	build(&r, &d, NULL);
	f = find(d.parts[1].body, d.parts[1].body_len, "Diagnostic-Code:");
	fe = find(f, d.parts[1].body_len - (size_t)(f - d.parts[1].body), "\r\nLast-Attempt-Date:");
	flen = (size_t)(fe - f);
	copy = test_malloc(flen + 1);
	memcpy(copy, f, flen);
	flen = unfold(copy, flen, false);
	copy[flen] = 0;
	/* Unfolding leaves the two spaces that the cuts at 998 octets brought in. */
	assert_true(strncmp(copy, "Diagnostic-Code: smtp; 550-5.1.1 first 550 5.1.1 www", 52) == 0);
	assert_int_equal(flen, 49 + 2500 + 2);
	size_t w = 0;

	for (size_t i = 49; i < flen; i++)
		w += copy[i] == 'w';
	assert_int_equal(w, 2500);
	test_free(copy);
	dsn_free(&d);
}

static void test_boundary_collision(void **state)
{
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct dsn d1, d2;
	char msg[512];

	build(&r, &d1, NULL);
	/* The same token gives the same first candidate. */
	build(&r, &d2, NULL);
	assert_string_equal(d1.boundary, d2.boundary);
	dsn_free(&d2);

	/* The original contains that boundary as a delimiter line, in full and in headers. */
	int n = snprintf(msg, sizeof(msg),
			 "Subject: x\r\nX-Trap: %s\r\n\r\n--%s\r\nContent-Type: text/plain\r\n\r\n"
			 "--%s--\r\n",
			 d1.boundary, d1.boundary, d1.boundary);
	r.msg = (const uint8_t *)msg;
	r.msg_len = (size_t)n;
	r.ret = KUMO_DSN_RET_FULL;
	build(&r, &d2, NULL);
	assert_string_not_equal(d1.boundary, d2.boundary);
	assert_null(strstr(msg, d2.boundary));
	assert_int_equal(d2.nparts, 3);
	assert_int_equal(d2.parts[2].body_len, (size_t)n);
	assert_memory_equal(d2.parts[2].body, msg, (size_t)n);
	dsn_free(&d2);

	r.ret = KUMO_DSN_RET_HDRS;
	build(&r, &d2, NULL);
	assert_string_not_equal(d1.boundary, d2.boundary);
	assert_int_equal(d2.nparts, 3);
	dsn_free(&d2);

	/* A diagnostic quoting the boundary also forces another one. */
	char diag[200];
	struct kumo_dsn_rcpt rc = one_failed;

	snprintf(diag, sizeof(diag), "smtp; 550 %s", d1.boundary);
	rc.diagnostic = diag;
	r.rcpts = &rc;
	r.msg = NULL;
	r.msg_len = 0;
	build(&r, &d2, NULL);
	assert_string_not_equal(d1.boundary, d2.boundary);
	assert_int_equal(d2.nparts, 2);
	dsn_free(&d2);
	dsn_free(&d1);
}

static void test_should_notify(void **state)
{
	const unsigned U = KUMO_DSN_NOTIFY_UNSET, N = KUMO_DSN_NOTIFY_NEVER,
		       S = KUMO_DSN_NOTIFY_SUCCESS, F = KUMO_DSN_NOTIFY_FAILURE,
		       D = KUMO_DSN_NOTIFY_DELAY;
	static const struct {
		unsigned bits;
		bool failed, delayed, delivered, relayed, expanded;
	} m[] = {
	    {U, true, true, false, false, false},	{N, false, false, false, false, false},
	    {S, false, false, true, true, true},	{F, true, false, false, false, false},
	    {D, false, true, false, false, false},	{F | D, true, true, false, false, false},
	    {S | F, true, false, true, true, true},	{S | F | D, true, true, true, true, true},
	    {N | F, false, false, false, false, false}, /* NEVER wins */
	};

	for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
		assert_int_equal(kumo_dsn_should_notify(m[i].bits, KUMO_DSN_ACTION_FAILED),
				 m[i].failed);
		assert_int_equal(kumo_dsn_should_notify(m[i].bits, KUMO_DSN_ACTION_DELAYED),
				 m[i].delayed);
		assert_int_equal(kumo_dsn_should_notify(m[i].bits, KUMO_DSN_ACTION_DELIVERED),
				 m[i].delivered);
		assert_int_equal(kumo_dsn_should_notify(m[i].bits, KUMO_DSN_ACTION_RELAYED),
				 m[i].relayed);
		assert_int_equal(kumo_dsn_should_notify(m[i].bits, KUMO_DSN_ACTION_EXPANDED),
				 m[i].expanded);
	}
	assert_string_equal(kumo_dsn_action_name(KUMO_DSN_ACTION_EXPANDED), "expanded");
	assert_null(kumo_dsn_action_name((enum kumo_dsn_action)42));
}

static void test_refusals(void **state)
{
	struct kumo_dsn_report r = base_report(&one_failed, 1);
	struct kumo_buf out = {0};

	kumo_buf_puts(&out, "keep");
	assert_false(kumo_dsn_sender_ok(""));
	assert_false(kumo_dsn_sender_ok(NULL));
	assert_false(kumo_dsn_sender_ok("<>"));
	assert_true(kumo_dsn_sender_ok("alice@example.com"));

	/* The null sender never gets a DSN; the buffer is left as it was. */
	r.to = "";
	assert_int_equal(kumo_dsn_build(&r, &out, NULL), -EPERM);
	assert_int_equal(out.len, 4);
	r.to = NULL;
	assert_int_equal(kumo_dsn_build(&r, &out, NULL), -EINVAL);
	r.to = "alice@example.com";

	struct kumo_dsn_report bad;
	struct kumo_dsn_rcpt rc;
	const char *bad_status[] = {"6.1.1", "5.1", "5.1.1.1", "5.1.1234", "5..1", "x", ""};

	for (size_t i = 0; i < sizeof(bad_status) / sizeof(bad_status[0]); i++) {
		rc = one_failed;
		rc.status = bad_status[i];
		bad = base_report(&rc, 1);
		assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	}
	rc = one_failed;
	rc.final_rcpt = "rfc822;a@b\r\nBcc: x@y";
	bad = base_report(&rc, 1);
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	rc = one_failed;
	rc.action = (enum kumo_dsn_action)9;
	bad = base_report(&rc, 1);
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);

	bad = base_report(&one_failed, 0);
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	bad = base_report(&one_failed, 1);
	bad.message_id = "has space";
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	bad.message_id = "two@at@x";
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	bad = base_report(&one_failed, 1);
	bad.from = "MAILER-DAEMON@x\r\nBcc: y";
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	bad = base_report(&one_failed, 1);
	bad.hostname = "bad host";
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	bad = base_report(&one_failed, 1);
	bad.msg = NULL;
	assert_int_equal(kumo_dsn_build(&bad, &out, NULL), -EINVAL);
	assert_int_equal(out.len, 4);

	/* A valid build appends after what is there; a "dns;" hostname and a full id. */
	r.hostname = "dns; mta.example.com";
	r.message_id = "abc.def@ids.example.com";
	assert_int_equal(kumo_dsn_build(&r, &out, NULL), 0);
	assert_memory_equal(out.data, "keepFrom: ", 10);
	struct dsn d;
	struct kumo_buf tail = {.data = out.data + 4, .len = out.len - 4};

	parse(&d, &tail);
	assert_field(d.text, d.hdr_len, "Message-ID", "<abc.def@ids.example.com>");
	assert_true(part_has(&d, 1, "Reporting-MTA: dns; mta.example.com\r\n"));
	dsn_free(&d);
	kumo_buf_free(&out);
}

static void test_utf8(void **state)
{
	struct kumo_dsn_rcpt rc = one_failed;
	struct kumo_dsn_report r = base_report(&rc, 1);
	struct dsn d;
	unsigned flags;

	/* A UTF-8 diagnostic in an ASCII report: octets replaced, report stays 7-bit. */
	rc.diagnostic = "smtp; 550 5.1.1 utilisateur inconnu \xc3\xa9";
	build(&r, &d, &flags);
	assert_int_equal(flags, 0);
	assert_true(part_has(&d, 1, "Diagnostic-Code: smtp; 550 5.1.1 utilisateur inconnu ??\r\n"));
	part_field(&d, 0, "Content-Type", "text/plain; charset=us-ascii");
	dsn_free(&d);

	/* A UTF-8 recipient: RFC 6533 global types, SMTPUTF8 needed. */
	rc.final_rcpt = "rfc822;j\xc3\xb6rg@example.de";
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_SMTPUTF8 | KUMO_DSN_OUT_8BITMIME);
	char *ct = field(d.text, d.hdr_len, "Content-Type");

	assert_non_null(strstr(ct, "multipart/report; report-type=global-delivery-status;"));
	test_free(ct);
	part_field(&d, 0, "Content-Type", "text/plain; charset=utf-8");
	part_field(&d, 0, "Content-Transfer-Encoding", "8bit");
	part_field(&d, 1, "Content-Type", "message/global-delivery-status");
	assert_true(part_has(&d, 1, "Final-Recipient: rfc822; j\xc3\xb6rg@example.de\r\n"));
	assert_true(part_has(&d, 1, "inconnu \xc3\xa9\r\n"));
	assert_true(part_has(&d, 0, "<j\xc3\xb6rg@example.de>: delivery failed"));
	dsn_free(&d);

	/* UTF-8 in the original's headers: message/global-headers. */
	static const char m8[] = "Subject: gr\xc3\xbc\xc3\x9f"
				 "e\r\n\r\nbody\r\n";

	rc = one_failed;
	r.msg = (const uint8_t *)m8;
	r.msg_len = sizeof(m8) - 1;
	build(&r, &d, &flags);
	assert_int_equal(flags, KUMO_DSN_OUT_SMTPUTF8 | KUMO_DSN_OUT_8BITMIME);
	part_field(&d, 2, "Content-Type", "message/global-headers");
	part_field(&d, 2, "Content-Transfer-Encoding", "8bit");
	part_field(&d, 1, "Content-Type", "message/delivery-status");
	dsn_free(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_failed_hdrs),
	    cmocka_unit_test(test_full_with_dot_lines),
	    cmocka_unit_test(test_full_over_cap),
	    cmocka_unit_test(test_full_unsendable_falls_back),
	    cmocka_unit_test(test_header_section_edges),
	    cmocka_unit_test(test_mixed_actions),
	    cmocka_unit_test(test_expired),
	    cmocka_unit_test(test_xtext),
	    cmocka_unit_test(test_envid_orcpt_decoded),
	    cmocka_unit_test(test_long_diagnostic_folded),
	    cmocka_unit_test(test_boundary_collision),
	    cmocka_unit_test(test_should_notify),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_utf8),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
