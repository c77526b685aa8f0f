/* SMTP client protocol machine (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
 * CHUNKING, DSN, ENHANCEDSTATUSCODES), free of I/O: one machine per outbound connection.
 * Fed the peer's bytes and the current time, it yields the bytes to write and events: ready
 * for a transaction, per-recipient results, end of the session. See docs/smtp-client.md. */
#ifndef KUMO_PROTO_SMTP_CLIENT_H
#define KUMO_PROTO_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/smtp_server.h" /* enum kumo_dsn_ret, enum kumo_dsn_notify */

/* Timeout defaults (RFC 5321 4.5.3.2) and input bounds. */
#define KUMO_SMTP_CLIENT_DEFAULT_GREETING_TIMEOUT_MS 300000   /* 4.5.3.2.1 */
#define KUMO_SMTP_CLIENT_DEFAULT_EHLO_TIMEOUT_MS 300000	      /* EHLO, HELO */
#define KUMO_SMTP_CLIENT_DEFAULT_MAIL_TIMEOUT_MS 300000	      /* 4.5.3.2.2; RSET, QUIT */
#define KUMO_SMTP_CLIENT_DEFAULT_RCPT_TIMEOUT_MS 300000	      /* 4.5.3.2.3 */
#define KUMO_SMTP_CLIENT_DEFAULT_DATA_TIMEOUT_MS 120000	      /* 4.5.3.2.4: DATA -> 354 */
#define KUMO_SMTP_CLIENT_DEFAULT_DATA_BLOCK_TIMEOUT_MS 180000 /* 4.5.3.2.5 */
#define KUMO_SMTP_CLIENT_DEFAULT_DATA_END_TIMEOUT_MS 600000   /* 4.5.3.2.6; BDAT LAST */
#define KUMO_SMTP_CLIENT_MAX_LINE 4096			      /* a reply line, CRLF included */
#define KUMO_SMTP_CLIENT_MAX_REPLY 65536		      /* text of one (multi-line) reply */
#define KUMO_SMTP_CLIENT_INPUT_MAX 8192			      /* unparsed input held */

/* Timeouts in milliseconds; zero in a field means "use the default" above. Each one bounds
 * the wait for a reply (or, for data_block_ms, for the engine to write message data) and
 * restarts whenever input arrives, output is consumed or a command is written. */
struct kumo_smtp_client_timeouts {
	uint32_t greeting_ms;	/* the 220 greeting */
	uint32_t ehlo_ms;	/* reply to EHLO or HELO */
	uint32_t mail_ms;	/* reply to MAIL, RSET or QUIT */
	uint32_t rcpt_ms;	/* reply to RCPT */
	uint32_t data_ms;	/* reply to DATA (the 354) */
	uint32_t data_block_ms; /* message data sitting unwritten in the output */
	uint32_t data_end_ms;	/* reply to the final "." or to BDAT LAST */
};

struct kumo_smtp_client_cfg {
	const char *ehlo_name; /* our name in EHLO/HELO (domain or address literal); copied */
	struct kumo_smtp_client_timeouts timeouts;
	bool no_pipelining; /* one command at a time even when PIPELINING is offered */
	bool no_chunking;   /* DATA even when CHUNKING is offered */
};

/* What the peer offered in its EHLO reply; all false after HELO. */
struct kumo_smtp_client_caps {
	bool esmtp;		  /* EHLO was accepted */
	bool pipelining;	  /* RFC 2920 */
	bool size;		  /* RFC 1870 */
	size_t size_max;	  /* SIZE argument; 0 when none or 0 (no fixed limit) */
	bool eightbitmime;	  /* RFC 6152 */
	bool smtputf8;		  /* RFC 6531 */
	bool chunking;		  /* RFC 3030 */
	bool dsn;		  /* RFC 3461 */
	bool enhancedstatuscodes; /* RFC 2034 */
	bool starttls;		  /* RFC 3207: recorded only; TLS is the engine's business */
};

/* The command a reply answers (or the stage a synthesized reply stands for). */
enum kumo_smtp_client_cmd {
	KUMO_SMTP_CLIENT_CMD_NONE = 0, /* no command: local checks on the transaction */
	KUMO_SMTP_CLIENT_CMD_GREETING,
	KUMO_SMTP_CLIENT_CMD_EHLO,
	KUMO_SMTP_CLIENT_CMD_HELO,
	KUMO_SMTP_CLIENT_CMD_RSET,
	KUMO_SMTP_CLIENT_CMD_MAIL,
	KUMO_SMTP_CLIENT_CMD_RCPT,
	KUMO_SMTP_CLIENT_CMD_DATA,     /* the DATA command itself (354 expected) */
	KUMO_SMTP_CLIENT_CMD_DATA_END, /* the "." ending the data */
	KUMO_SMTP_CLIENT_CMD_BDAT,     /* BDAT <n> LAST with its data */
	KUMO_SMTP_CLIENT_CMD_QUIT,
};

/* A reply from the peer or one the machine made up. Strings are NUL-terminated and owned by
 * the machine; the event that carries the reply says how long they live. */
struct kumo_smtp_client_reply {
	int code;	      /* 200-599; 0: there is no such reply */
	const char *enhanced; /* "c.sss.ddd" (RFC 3463) when the peer offered
			       * ENHANCEDSTATUSCODES and the first line had one, else "" */
	const char *text;     /* the lines after code (and enhanced code), joined with '\n';
			       * control characters are turned into spaces */
	enum kumo_smtp_client_cmd command;
	bool local; /* synthesized by the machine, not sent by the peer */
};

/* A recipient of an outbound transaction. */
struct kumo_smtp_client_rcpt {
	const char *addr;  /* forward-path without angle brackets */
	unsigned notify;   /* bit set of enum kumo_dsn_notify; NEVER only alone */
	const char *orcpt; /* "addr-type;xtext" sent as given (RFC 3461 4.2), or NULL */
};

/* An outbound transaction. send() copies the envelope; the message data must stay valid and
 * unchanged until the transaction's TXN_DONE event (or the machine is freed). */
struct kumo_smtp_client_txn {
	const char *sender; /* reverse-path without angle brackets; "" for the null sender */
	const struct kumo_smtp_client_rcpt *rcpts;
	size_t nrcpt; /* at least one */
	enum kumo_dsn_ret ret;
	const char *envid;   /* ENVID as xtext (RFC 3461 4.4), sent as given, or NULL */
	bool body_8bit;	     /* the body has octets above 127: BODY=8BITMIME when offered */
	bool smtputf8;	     /* needs SMTPUTF8 (also implied by a non-ASCII address) */
	const uint8_t *data; /* the message, CRLF line ends, not dot-stuffed */
	size_t data_len;
	size_t declared_size; /* SIZE= value; 0: data_len */
};

/* The outcome of a transaction, valid until the next send() or quit(), or free(). */
struct kumo_smtp_client_result {
	size_t nrcpt;
	/* Per recipient, in the order given to send(): the reply to MAIL if MAIL was refused,
	 * else the reply to RCPT if it was refused, else the data reply; a session failure
	 * gives its reply to recipients not yet refused. 2xx delivered, 4xx retry, 5xx bounce. */
	const struct kumo_smtp_client_reply *rcpt;
	const struct kumo_smtp_client_reply *mail; /* reply to MAIL; code 0 if not sent */
	/* Reply to the end of data (or to a refused DATA), or the failure that ended the
	 * transaction; code 0 when no data was sent because no recipient was accepted. */
	const struct kumo_smtp_client_reply *data;
	size_t accepted; /* recipients whose RCPT got a 2xx */
};

enum kumo_smtp_client_ev_type {
	KUMO_SMTP_CLIENT_EV_NONE = 0, /* nothing to do until more input, time or a call */
	KUMO_SMTP_CLIENT_EV_READY,    /* idle: send() or quit() may be called */
	KUMO_SMTP_CLIENT_EV_TXN_DONE, /* ev.result: the transaction is over */
	KUMO_SMTP_CLIENT_EV_FAILED,   /* ev.reply: the session is over; write what output is
				       * left (a QUIT after a refused greeting or EHLO/HELO),
				       * then close. The engine may try another host. */
	KUMO_SMTP_CLIENT_EV_CLOSED,   /* after quit(): the peer answered or closed; close */
};

struct kumo_smtp_client_ev {
	enum kumo_smtp_client_ev_type type;
	union {
		const struct kumo_smtp_client_result *result; /* TXN_DONE */
		const struct kumo_smtp_client_reply *reply;   /* FAILED, valid until free() */
	};
};

struct kumo_smtp_client;

/* Creates a machine for a connection just established; the greeting timeout runs from
 * now_ms. The config is copied. Returns 0, -EINVAL (no or invalid ehlo_name) or -ENOMEM. */
int kumo_smtp_client_new(const struct kumo_smtp_client_cfg *cfg, uint64_t now_ms,
			 struct kumo_smtp_client **out);
void kumo_smtp_client_free(struct kumo_smtp_client *c);

/* Input, as for the server machine. push() copies bytes in: 0, -ENOBUFS when len exceeds
 * the free space (nothing is copied), or -EPIPE once FAILED or CLOSED is queued. The
 * zero-copy pair: input_space() returns where up to *len bytes may be written (NULL with
 * *len 0 when full or finished), input_commit() says how many were written there. While
 * idle (after READY) input is held, not parsed, until the next send() or quit(), or until
 * input_eof(). */
int kumo_smtp_client_push(struct kumo_smtp_client *c, const void *buf, size_t len);
void *kumo_smtp_client_input_space(struct kumo_smtp_client *c, size_t *len);
void kumo_smtp_client_input_commit(struct kumo_smtp_client *c, size_t n);
/* The peer closed its side; buffered replies are still processed first. */
void kumo_smtp_client_input_eof(struct kumo_smtp_client *c);

/* Parses buffered replies and returns the next event (NONE when it needs input, time or a
 * call). Returns 0, or -ENOMEM: the output may be incomplete; drop the connection. */
int kumo_smtp_client_next(struct kumo_smtp_client *c, uint64_t now_ms,
			  struct kumo_smtp_client_ev *ev);

/* Starts a transaction; only once READY has been pulled and no event is queued. Checks the
 * message against the peer first: over its SIZE limit, or needing SMTPUTF8 it lacks, the
 * transaction fails locally (TXN_DONE with a 5xx local reply, nothing written). Returns 0,
 * -EBUSY (not idle), -EPIPE (session over), -EINVAL (empty or malformed envelope) or
 * -ENOMEM. */
int kumo_smtp_client_send(struct kumo_smtp_client *c, const struct kumo_smtp_client_txn *txn);
/* Ends an idle session: QUIT, then CLOSED once the peer answers or closes. Same returns. */
int kumo_smtp_client_quit(struct kumo_smtp_client *c);

/* The peer's extensions; meaningful from the first READY on. */
const struct kumo_smtp_client_caps *kumo_smtp_client_caps(const struct kumo_smtp_client *c);

/* Output: bytes to write, a view valid until the next call into the machine. */
const char *kumo_smtp_client_output(const struct kumo_smtp_client *c, size_t *len);
void kumo_smtp_client_output_consumed(struct kumo_smtp_client *c, size_t n);

/* Timeouts: the absolute time (ms) by which the awaited reply must arrive (or the message
 * data be written), UINT64_MAX while idle or finished; tick() fails the session with
 * "451 4.4.2 timeout waiting for <stage>" once it passed (CLOSED when waiting for QUIT). */
uint64_t kumo_smtp_client_deadline(const struct kumo_smtp_client *c);
void kumo_smtp_client_tick(struct kumo_smtp_client *c, uint64_t now_ms);

/* Fills every zero field of t with its default. */
void kumo_smtp_client_timeouts_defaults(struct kumo_smtp_client_timeouts *t);

#endif
