/* SMTP server protocol machine (RFC 5321 and extensions), free of I/O.
 * Fed bytes and the current time, it yields events and reply bytes; it checks syntax,
 * order and limits itself and leaves policy (accept a recipient? spool a message?) to
 * the embedder, who answers each decision event through the machine (check/proceed). */
#ifndef KUMO_PROTO_SMTP_SERVER_H
#define KUMO_PROTO_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults for the limits below, and the bound on buffered unparsed input. */
#define KUMO_SMTP_DEFAULT_MAX_LINE 512
#define KUMO_SMTP_DEFAULT_MAX_RECIPIENTS 100
#define KUMO_SMTP_DEFAULT_MAX_MESSAGE_SIZE ((size_t)50 * 1024 * 1024)
#define KUMO_SMTP_DEFAULT_MAX_MESSAGES 1000
#define KUMO_SMTP_DEFAULT_MAX_ERRORS 20
#define KUMO_SMTP_DEFAULT_COMMAND_TIMEOUT_MS 300000
#define KUMO_SMTP_DEFAULT_DATA_TIMEOUT_MS 180000
#define KUMO_SMTP_INPUT_MAX 65536 /* unparsed input held (at least max_line) */

/* Limits; zero in a field means "use the default" given after it. */
struct kumo_smtp_limits {
	size_t max_line;          /* command line, CRLF included: 512 (RFC 5321 4.5.3.1.4) */
	size_t max_recipients;    /* per transaction: 100 (RFC 5321 4.5.3.1.8) */
	size_t max_message_size;  /* bytes of message data, advertised in SIZE: 50 MiB */
	unsigned max_messages;    /* transactions per connection: 1000 */
	unsigned max_errors;      /* protocol errors before 421 and close: 20 */
	uint32_t command_timeout_ms; /* waiting for a command: 300000 (RFC 5321 4.5.3.2.7) */
	uint32_t data_timeout_ms;    /* between data blocks: 180000 (RFC 5321 4.5.3.2.6) */
};

/* What happens to a bare CR or bare LF inside message data. A bare LF never ends a line
 * and "\n.\n" never ends DATA: only CRLF "." CRLF does. */
enum kumo_smtp_bare_eol {
	KUMO_SMTP_BARE_EOL_REJECT = 0, /* message refused with 550 5.6.0 at end of data */
	KUMO_SMTP_BARE_EOL_NORMALIZE,  /* bare CR or LF stored as CRLF */
};
/* The same policy applies to BDAT chunks (a CR ending one chunk pairs with an LF starting
 * the next) and to command lines: REJECT answers a command line ending in a bare LF with
 * 500 5.5.2, NORMALIZE takes a bare LF as the end of a command line. */

struct kumo_smtp_server_cfg {
	const char *hostname;          /* in the greeting and EHLO reply; copied */
	struct kumo_smtp_limits limits;
	enum kumo_smtp_bare_eol bare_eol;
};

/* DSN (RFC 3461) parameters. */
enum kumo_dsn_ret { KUMO_DSN_RET_UNSET = 0, KUMO_DSN_RET_FULL, KUMO_DSN_RET_HDRS };
enum kumo_dsn_notify {
	KUMO_DSN_NOTIFY_UNSET = 0,
	KUMO_DSN_NOTIFY_NEVER = 1,
	KUMO_DSN_NOTIFY_SUCCESS = 2,
	KUMO_DSN_NOTIFY_FAILURE = 4,
	KUMO_DSN_NOTIFY_DELAY = 8,
};
enum kumo_smtp_body { KUMO_SMTP_BODY_UNSET = 0, KUMO_SMTP_BODY_7BIT, KUMO_SMTP_BODY_8BITMIME };

/* Strings are NUL-terminated, owned by the machine, and stay valid until the transaction
 * ends (RSET, HELO/EHLO, the decision on KUMO_SMTP_EV_MESSAGE) or the machine is freed. */
struct kumo_smtp_rcpt {
	const char *addr;   /* the forward-path without angle brackets */
	unsigned notify;    /* bit set of enum kumo_dsn_notify */
	const char *orcpt;  /* ORCPT value as received ("rfc822;x@y", xtext kept), or NULL */
};

/* Outside a transaction (before MAIL, after its refusal) sender is NULL and nrcpt 0. The
 * rcpts array may move when a recipient is added; re-read it through the txn. */
struct kumo_smtp_txn {
	const char *sender;       /* reverse-path without brackets; "" for the null sender */
	enum kumo_smtp_body body;
	bool smtputf8;
	size_t declared_size;     /* SIZE= from MAIL, 0 when absent */
	enum kumo_dsn_ret ret;
	const char *envid;        /* ENVID as received (xtext), or NULL */
	size_t nrcpt;             /* accepted recipients */
	const struct kumo_smtp_rcpt *rcpts;
	const uint8_t *data;      /* message bytes, dot-unstuffed, CRLF line ends; */
	size_t data_len;          /* set only for KUMO_SMTP_EV_MESSAGE */
	bool via_bdat;            /* the message came by BDAT rather than DATA */
};

enum kumo_smtp_ev_type {
	KUMO_SMTP_EV_NONE = 0, /* nothing to do until more input arrives or a decision is given */
	KUMO_SMTP_EV_HELO,     /* informational: ev.helo; the machine already replied */
	KUMO_SMTP_EV_MAIL,     /* decision: accept or reply; sender is in the txn */
	KUMO_SMTP_EV_RCPT,     /* decision: ev.rcpt is the candidate recipient */
	KUMO_SMTP_EV_MESSAGE,  /* decision: the whole txn including data (DATA end or BDAT LAST) */
	KUMO_SMTP_EV_RESET,    /* informational: the transaction was dropped (RSET, HELO/EHLO
				* during a transaction, message data refused by the machine) */
	KUMO_SMTP_EV_CLOSE,    /* the connection must close once the output is written */
};

struct kumo_smtp_ev {
	enum kumo_smtp_ev_type type;
	union {
		struct {
			const char *name; /* the client's EHLO/HELO argument, valid until next HELO */
			bool esmtp;       /* EHLO rather than HELO */
		} helo;
		const struct kumo_smtp_rcpt *rcpt; /* valid until the decision */
	};
};

struct kumo_smtp_server;

/* Creates a machine for one connection. The config is copied. Returns 0 or -ENOMEM/-EINVAL. */
int kumo_smtp_server_new(const struct kumo_smtp_server_cfg *cfg, uint64_t now_ms,
			 struct kumo_smtp_server **out);
void kumo_smtp_server_free(struct kumo_smtp_server *s);

/* Queues the greeting: 220 <hostname> ESMTP ready. Nothing is parsed before greet(). */
void kumo_smtp_server_greet(struct kumo_smtp_server *s);
/* Queues a refusal instead of the greeting (e.g. 554 5.7.1) and a CLOSE event. A code
 * outside 400-599 becomes 554; enhanced may be NULL; text may hold lines split by '\n'. */
void kumo_smtp_server_refuse(struct kumo_smtp_server *s, int code, const char *enhanced,
			     const char *text);

/* Input. push() copies bytes in. The zero-copy pair: input_space() returns where up to
 * *len bytes may be written (NULL with *len 0 when the machine holds as much unparsed
 * input as it will buffer: stop reading until next() has run), input_commit() says how
 * many were written there. The space stays valid until the next call into the machine
 * other than input_commit(). */
int kumo_smtp_server_push(struct kumo_smtp_server *s, const void *buf, size_t len);
/* push() returns 0, -ENOBUFS when len exceeds the free space (nothing is copied), -ENOMEM,
 * or -EPIPE once CLOSE is queued (input is no longer wanted). */
void *kumo_smtp_server_input_space(struct kumo_smtp_server *s, size_t *len);
void kumo_smtp_server_input_commit(struct kumo_smtp_server *s, size_t n);
/* The peer closed its side; pending input is still processed, then CLOSE. */
void kumo_smtp_server_input_eof(struct kumo_smtp_server *s);

/* Parses buffered input and returns the next event (KUMO_SMTP_EV_NONE when it needs more
 * input or waits for a decision). Replies accumulate in the output buffer; parsing also
 * pauses while 64 KiB of output are unconsumed. Returns 0, or -ENOMEM: the output may be
 * incomplete and the connection should be dropped. */
int kumo_smtp_server_next(struct kumo_smtp_server *s, uint64_t now_ms, struct kumo_smtp_ev *ev);

/* Decisions on MAIL, RCPT and MESSAGE. accept() sends the standard 250 reply;
 * reply() sends the given reply (code 2xx accepts, 4xx/5xx refuses); text may hold
 * several lines separated by '\n'. Calling either with no decision pending is -EINVAL.
 * reply(): code must be 200-299 or 400-599; enhanced is "c.sss.ddd" with c the code's
 * class, or NULL for "c.0.0"; control characters in text become spaces. A 421 also queues
 * CLOSE. Returns 0 or -EINVAL. */
int kumo_smtp_server_accept(struct kumo_smtp_server *s);
int kumo_smtp_server_reply(struct kumo_smtp_server *s, int code, const char *enhanced,
			   const char *text);

/* The transaction in progress (sender, accepted recipients, data on MESSAGE). */
const struct kumo_smtp_txn *kumo_smtp_server_txn(const struct kumo_smtp_server *s);

/* Output: bytes to send, a view valid until the next call into the machine. */
const char *kumo_smtp_server_output(const struct kumo_smtp_server *s, size_t *len);
void kumo_smtp_server_output_consumed(struct kumo_smtp_server *s, size_t n);

/* Timeouts: the absolute time (ms) by which input must arrive, and the check. tick()
 * queues 421 4.4.2 and a CLOSE event once the deadline passed. No deadline runs while a
 * decision is pending. */
uint64_t kumo_smtp_server_deadline(const struct kumo_smtp_server *s);
void kumo_smtp_server_tick(struct kumo_smtp_server *s, uint64_t now_ms);

/* Fills limits with the defaults for every zero field. */
void kumo_smtp_limits_defaults(struct kumo_smtp_limits *l);

#endif
