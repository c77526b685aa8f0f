/* Delivery status notifications: builds RFC 3464 reports (multipart/report,
 * RFC 6522) for bounces, expirations and delay notices, decides from the NOTIFY
 * parameter whether one is due (RFC 3461), and encodes and decodes xtext. No I/O. */
#ifndef KUMO_PROTO_DSN_H
#define KUMO_PROTO_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/smtp_server.h" /* enum kumo_dsn_ret, enum kumo_dsn_notify */
#include "util/json.h"	       /* struct kumo_buf */

/* RET=FULL returns the message in full up to this many bytes (kumo_dsn_report.full_max
 * of 0); a larger message is returned as its headers only. */
#define KUMO_DSN_DEFAULT_FULL_MAX ((size_t)1024 * 1024)

/* Status for a message that stayed queued past its expiry: RFC 3463 X.4.7 "delivery
 * time expired" is defined as a persistent transient condition, so the class is 4,
 * with Action: failed. Callers that prefer a permanent class may pass "5.4.7". */
#define KUMO_DSN_STATUS_EXPIRED "4.4.7"

/* Action field values (RFC 3464 2.3.3). */
enum kumo_dsn_action {
	KUMO_DSN_ACTION_FAILED = 0, /* will not be delivered (bounce, expiration) */
	KUMO_DSN_ACTION_DELAYED,    /* not delivered yet; still being retried */
	KUMO_DSN_ACTION_DELIVERED,  /* delivered to the recipient's mailbox */
	KUMO_DSN_ACTION_RELAYED,    /* handed to a system that sends no DSNs */
	KUMO_DSN_ACTION_EXPANDED,   /* delivered and forwarded to several addresses */
};

/* Bits set in *flags by kumo_dsn_build: what the DSN needs from the next hop. */
enum kumo_dsn_out_flags {
	KUMO_DSN_OUT_8BITMIME = 1,     /* holds 8-bit octets: send with BODY=8BITMIME */
	KUMO_DSN_OUT_SMTPUTF8 = 2,     /* UTF-8 in header fields or addresses: SMTPUTF8 */
	KUMO_DSN_OUT_HEADERS_ONLY = 4, /* RET=FULL was asked, only headers were attached */
};

/* One recipient of the report. Strings are NUL-terminated and borrowed for the call.
 * A "type;value" field may be given without its type, which is then the default shown
 * in brackets; a value containing ";" is taken as typed. */
struct kumo_dsn_rcpt {
	const char *final_rcpt; /* required: "rfc822;user@example.com" [rfc822] */
	const char *orcpt;	/* ORCPT as received ("rfc822;a+2Bb@x", xtext) or NULL */
	enum kumo_dsn_action action;
	const char *status;	 /* required: "5.1.1"; class 2, 4 or 5 (RFC 3463) */
	const char *remote_mta;	 /* "dns; mx.example.net" [dns] or NULL */
	const char *diagnostic;	 /* "smtp; 550 5.1.1 user unknown" [smtp] or NULL; line
				  * breaks and controls become spaces, long text is folded */
	int64_t last_attempt_ms; /* ms since the epoch; 0 omits Last-Attempt-Date */
	int64_t retry_until_ms;	 /* delayed only: Will-Retry-Until; 0 omits it */
};

/* The report to build. Everything is borrowed for the duration of kumo_dsn_build and
 * nothing is kept. The builder does not filter recipients: the caller lists those for
 * which kumo_dsn_should_notify() is true (and at least one). */
struct kumo_dsn_report {
	const char *hostname;		   /* required: the reporting MTA, "mta.example.com" (a
					    * leading "dns;" is accepted); also the Message-ID domain */
	const char *from;		   /* required: From field, "MAILER-DAEMON@mta.example.com"
					    * or "Mail Delivery System <MAILER-DAEMON@...>" */
	const char *to;			   /* required: the original envelope sender; "" (the null
					    * sender) is refused with -EPERM */
	const char *message_id;		   /* required: a token unique to this DSN; written as
					    * <token@hostname>, or <token> when it holds an "@" */
	int64_t now_ms;			   /* Date of the DSN, ms since the epoch */
	const char *envid;		   /* ENVID as received (xtext) or NULL */
	int64_t arrival_ms;		   /* when the original arrived; 0 omits Arrival-Date */
	const char *received_from_mta;	   /* "dns; client.example" [dns] or NULL */
	const struct kumo_dsn_rcpt *rcpts; /* nrcpt entries, reported in this order */
	size_t nrcpt;
	const uint8_t *msg;    /* the original message, CRLF line ends; NULL/0 omits */
	size_t msg_len;	       /* the third part */
	enum kumo_dsn_ret ret; /* FULL: whole message; HDRS or UNSET: headers only */
	size_t full_max;       /* RET=FULL size cap; 0 = KUMO_DSN_DEFAULT_FULL_MAX */
};

/* Appends the DSN (header section and body, CRLF line ends, no line over 998 octets)
 * to out. A RET=FULL original over full_max, or one that cannot be attached unchanged
 * (a bare CR or LF, a NUL, a line over 998 octets), is returned as its headers.
 * *flags, when flags is not NULL, receives enum kumo_dsn_out_flags bits.
 * Returns 0; -EPERM when to is the null sender; -EINVAL for a missing or malformed
 * field (no recipient, a bad status or action, a control character in from, to,
 * hostname or final_rcpt, a message_id that is not dot-atom text); -EAGAIN if no
 * boundary absent from the content was found (try another message_id); -ENOMEM.
 * On error out->len is restored (out->oom stays set after -ENOMEM). */
int kumo_dsn_build(const struct kumo_dsn_report *r, struct kumo_buf *out, unsigned *flags);

/* RFC 3461 4.1: whether a recipient whose NOTIFY bits are notify_bits (enum
 * kumo_dsn_notify; 0 when NOTIFY was absent) gets a DSN for action. Absent NOTIFY means
 * FAILURE,DELAY; NEVER means none; delivered, relayed and expanded need SUCCESS. */
bool kumo_dsn_should_notify(unsigned notify_bits, enum kumo_dsn_action action);

/* False for the null reverse-path ("" or NULL): no notification is ever sent to it
 * (RFC 5321 4.5.5), which is what keeps bounces from looping. A DSN itself is sent with
 * the null reverse-path. */
bool kumo_dsn_sender_ok(const char *sender);

/* The Action field's keyword ("failed", ...), or NULL for an unknown value. */
const char *kumo_dsn_action_name(enum kumo_dsn_action action);

/* xtext (RFC 3461 4). decode appends the n bytes at s decoded ("+2B" -> "+"; lower-case
 * hex is accepted) to out; returns 0, -EINVAL for a "+" not followed by two hex digits
 * (out->len is then restored), or -ENOMEM. encode appends s with every octet outside
 * "!".."~" and every "+" and "=" written as "+XX"; returns 0 or -ENOMEM. Neither writes
 * a terminating NUL. */
int kumo_dsn_xtext_decode(const char *s, size_t n, struct kumo_buf *out);
int kumo_dsn_xtext_encode(const char *s, size_t n, struct kumo_buf *out);

#endif
