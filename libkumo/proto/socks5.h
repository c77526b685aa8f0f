/* SOCKS5 server protocol machine (RFC 1928 CONNECT, RFC 1929 username/password), free of
 * I/O, plus KumoMTA's source selection: BIND <ip>:0 then CONNECT on the same connection makes
 * the proxy connect from that address. One machine per client connection; see docs/kumoproxy.md. */
#ifndef KUMO_PROTO_SOCKS5_H
#define KUMO_PROTO_SOCKS5_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define KUMO_SOCKS5_DEFAULT_TIMEOUT_MS 60000 /* wait for each handshake message */
#define KUMO_SOCKS5_INPUT_MAX 1024	     /* unparsed input held (largest message: 513) */

/* Reply codes (RFC 1928 section 6). */
enum kumo_socks5_rep {
	KUMO_SOCKS5_REP_SUCCEEDED = 0x00,
	KUMO_SOCKS5_REP_GENERAL_FAILURE = 0x01,
	KUMO_SOCKS5_REP_NOT_ALLOWED = 0x02,
	KUMO_SOCKS5_REP_NET_UNREACHABLE = 0x03,
	KUMO_SOCKS5_REP_HOST_UNREACHABLE = 0x04,
	KUMO_SOCKS5_REP_CONN_REFUSED = 0x05,
	KUMO_SOCKS5_REP_TTL_EXPIRED = 0x06,
	KUMO_SOCKS5_REP_CMD_NOT_SUPPORTED = 0x07,
	KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED = 0x08,
	KUMO_SOCKS5_REP_NONE = 0xff, /* in a CLOSE event: the machine sent no reply */
};

/* Request commands and address types as they appear on the wire. */
enum kumo_socks5_cmd {
	KUMO_SOCKS5_CMD_CONNECT = 0x01,
	KUMO_SOCKS5_CMD_BIND = 0x02,
	KUMO_SOCKS5_CMD_UDP_ASSOCIATE = 0x03,
};
enum kumo_socks5_atyp {
	KUMO_SOCKS5_ATYP_IPV4 = 0x01,
	KUMO_SOCKS5_ATYP_DOMAIN = 0x03,
	KUMO_SOCKS5_ATYP_IPV6 = 0x04,
};

struct kumo_socks5_cfg {
	/* true: only method 0x02 (RFC 1929) is acceptable and every client authenticates;
	 * false: only method 0x00 (no authentication). Other offers get 0xFF and a close. */
	bool auth_required;
	/* Bound on the wait for each complete handshake message (method offer, credentials,
	 * request), in ms; 0 means KUMO_SOCKS5_DEFAULT_TIMEOUT_MS. */
	uint32_t timeout_ms;
};

/* A parsed request. addr is set (AF_INET or AF_INET6, port included, network order) for
 * address types 1 and 4; host holds the name for type 3. */
struct kumo_socks5_request {
	uint8_t cmd;  /* as received: enum kumo_socks5_cmd or anything else */
	uint8_t atyp; /* 1, 3 or 4; anything else is refused before a request is recorded */
	uint16_t port;
	struct sockaddr_storage addr;
	char host[256]; /* NUL-terminated; bytes as received (may hold non-printables) */
	size_t host_len;
};

enum kumo_socks5_ev_type {
	KUMO_SOCKS5_EV_NONE = 0, /* nothing to do until more input, a decision or time */
	KUMO_SOCKS5_EV_AUTH,	 /* decision: check ev.user/ev.pass, answer with auth_done() */
	KUMO_SOCKS5_EV_BIND,	 /* decision: ev.req->addr is the wanted source address; bind a
				  * socket to it and answer with bind_done() */
	KUMO_SOCKS5_EV_CONNECT,	 /* decision: connect to ev.req->addr, from ev.source when a
				  * BIND preceded; answer with connect_done() */
	KUMO_SOCKS5_EV_RELAY,	 /* the success reply is in the output: write it, forward
				  * leftover() to the target, then relay bytes both ways */
	KUMO_SOCKS5_EV_CLOSE,	 /* the session is over: write what output is left (a failure
				  * reply, ev.rep) and close. ev.reason says why. */
};

/* Views in an event live until the next call into the machine, except req and source,
 * which live until the machine is freed. */
struct kumo_socks5_ev {
	enum kumo_socks5_ev_type type;
	const char *user; /* AUTH: NUL-terminated; user_len bytes (may contain NUL) */
	size_t user_len;
	const char *pass; /* AUTH: same */
	size_t pass_len;
	const struct kumo_socks5_request *req; /* BIND, CONNECT; CLOSE when a request was
						* parsed, else NULL */
	const struct sockaddr_storage *source; /* CONNECT: the address BIND reported, or
						* NULL without a BIND */
	enum kumo_socks5_rep rep;	       /* CLOSE: the reply code sent, or REP_NONE */
	const char *reason;		       /* CLOSE: static text */
};

struct kumo_socks5;

/* Creates a machine for a connection just accepted; the first timeout runs from now_ms.
 * cfg may be NULL (no authentication, default timeout). Returns 0 or -ENOMEM. */
int kumo_socks5_new(const struct kumo_socks5_cfg *cfg, uint64_t now_ms, struct kumo_socks5 **out);
void kumo_socks5_free(struct kumo_socks5 *m);

/* Input. push() copies bytes in: 0, -ENOBUFS when len exceeds the free space (nothing is
 * copied), or -EPIPE once RELAY or CLOSE is queued (input then belongs to the relay). The
 * zero-copy pair: input_space() returns where up to *len bytes may be written (NULL with *len
 * 0 when full or finished), input_commit() says how many were written there. */
int kumo_socks5_push(struct kumo_socks5 *m, const void *buf, size_t len);
void *kumo_socks5_input_space(struct kumo_socks5 *m, size_t *len);
void kumo_socks5_input_commit(struct kumo_socks5 *m, size_t n);
/* The client closed its side; buffered messages are still processed first. */
void kumo_socks5_input_eof(struct kumo_socks5 *m);

/* Parses buffered input and returns the next event. While a decision is pending nothing is
 * parsed and NONE is returned. */
void kumo_socks5_next(struct kumo_socks5 *m, uint64_t now_ms, struct kumo_socks5_ev *ev);

/* Decisions; each returns 0, or -EBUSY when that decision is not pending. */
/* AUTH: ok queues "01 00" and goes on to the request; otherwise "01 01" and CLOSE. */
int kumo_socks5_auth_done(struct kumo_socks5 *m, bool ok);
/* BIND: rep SUCCEEDED queues a success reply carrying bound (the address the socket is bound
 * to; NULL: the requested address) and waits for the CONNECT; any other code is sent as
 * the reply and ends the session. */
int kumo_socks5_bind_done(struct kumo_socks5 *m, enum kumo_socks5_rep rep,
			  const struct sockaddr *bound);
/* CONNECT: rep SUCCEEDED queues a success reply carrying local (the outbound connection's
 * local address; NULL: 0.0.0.0:0) and RELAY; any other code is the reply, then CLOSE. */
int kumo_socks5_connect_done(struct kumo_socks5 *m, enum kumo_socks5_rep rep,
			     const struct sockaddr *local);

/* Output: bytes to write, a view valid until the next call into the machine. */
const uint8_t *kumo_socks5_output(const struct kumo_socks5 *m, size_t *len);
void kumo_socks5_output_consumed(struct kumo_socks5 *m, size_t n);

/* After RELAY: input received after the CONNECT request, to be sent to the target first.
 * Valid until the machine is freed. */
const uint8_t *kumo_socks5_leftover(const struct kumo_socks5 *m, size_t *len);

/* The user name accepted by auth_done(), NUL-terminated, or NULL. */
const char *kumo_socks5_user(const struct kumo_socks5 *m);

/* The absolute time (ms) by which the awaited client message must be complete; UINT64_MAX
 * while a decision is pending or the handshake is over. tick() ends the session (CLOSE, no
 * reply) once it passed. */
uint64_t kumo_socks5_deadline(const struct kumo_socks5 *m);
void kumo_socks5_tick(struct kumo_socks5 *m, uint64_t now_ms);

/* The reply code for a failed socket(), bind() or connect() (errno, either sign):
 * ENETUNREACH 0x03, EHOSTUNREACH 0x04, ECONNREFUSED 0x05, ETIMEDOUT 0x06, EACCES/EPERM 0x02,
 * EAFNOSUPPORT 0x08, anything else 0x01. */
enum kumo_socks5_rep kumo_socks5_rep_from_errno(int err);
/* RFC 1928's wording for a reply code; "unassigned" for others. */
const char *kumo_socks5_rep_text(unsigned rep);

#endif
