/* SOCKS5 server machine: parsers for the method offer, the RFC 1929 credentials and the
 * request over buffered input, the session states between them, and the reply writer.
 * See socks5.h and docs/kumoproxy.md. */
#include "proto/socks5.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define VER 0x05	/* SOCKS protocol version */
#define AUTH_VER 0x01	/* RFC 1929 subnegotiation version */
#define M_NONE 0x00	/* method: no authentication */
#define M_USERPASS 0x02 /* method: username/password */
#define M_REFUSED 0xff	/* no acceptable method */
#define OUT_MAX 128	/* method, auth, BIND and CONNECT replies: 48 bytes at most */

enum st {
	ST_METHODS,	 /* waiting for the version/method offer */
	ST_AUTH,	 /* waiting for the RFC 1929 credentials */
	ST_AUTH_WAIT,	 /* AUTH event out, decision pending */
	ST_REQUEST,	 /* waiting for a request */
	ST_BIND_WAIT,	 /* BIND event out, decision pending */
	ST_CONNECT_WAIT, /* CONNECT event out, decision pending */
	ST_DONE,	 /* RELAY or CLOSE queued: nothing more is parsed */
};

struct kumo_socks5 {
	/* Configuration */
	bool auth_required; /* method 0x02 only */
	uint32_t timeout;   /* ms per handshake message */

	/* Session */
	enum st state;
	bool eof;			  /* the client closed its side */
	bool bound;			  /* a BIND succeeded: source holds its address */
	bool authed;			  /* user holds the accepted name */
	struct kumo_socks5_request req;	  /* the last request parsed */
	bool have_req;			  /* req is meaningful */
	struct sockaddr_storage source;	  /* from bind_done() */
	enum kumo_socks5_ev_type pending; /* RELAY or CLOSE to hand out, NONE once handed */
	enum kumo_socks5_rep close_rep;	  /* for the CLOSE event */
	const char *close_reason;	  /* for the CLOSE event */
	char user[256], pass[256];	  /* credentials, NUL-terminated */
	size_t user_len, pass_len;

	/* Time */
	uint64_t now;	    /* latest time seen */
	uint64_t last;	    /* start of the current wait for a client message */
	bool clock_restart; /* a message or decision completed: last = now at next() */

	/* Input: unparsed bytes are in[in_off, in_len) */
	uint8_t in[KUMO_SOCKS5_INPUT_MAX];
	size_t in_off, in_len;

	/* Output: unwritten bytes are out[out_off, out_len) */
	uint8_t out[OUT_MAX];
	size_t out_off, out_len;
};

int kumo_socks5_new(const struct kumo_socks5_cfg *cfg, uint64_t now_ms, struct kumo_socks5 **out)
{
	struct kumo_socks5 *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	if (cfg) {
		m->auth_required = cfg->auth_required;
		m->timeout = cfg->timeout_ms;
	}
	if (!m->timeout)
		m->timeout = KUMO_SOCKS5_DEFAULT_TIMEOUT_MS;
	m->state = ST_METHODS;
	m->now = m->last = now_ms;
	m->close_rep = KUMO_SOCKS5_REP_NONE;
	*out = m;
	return 0;
}

void kumo_socks5_free(struct kumo_socks5 *m)
{
	if (!m)
		return;
	/* credentials do not outlive the session in freed memory */
	memset(m->pass, 0, sizeof(m->pass));
	free(m);
}

/* ---- Input ---- */

static bool finished(const struct kumo_socks5 *m)
{
	return m->state == ST_DONE;
}

static void in_compact(struct kumo_socks5 *m)
{
	if (m->in_off == 0)
		return;
	memmove(m->in, m->in + m->in_off, m->in_len - m->in_off);
	m->in_len -= m->in_off;
	m->in_off = 0;
}

int kumo_socks5_push(struct kumo_socks5 *m, const void *buf, size_t len)
{
	if (finished(m))
		return -EPIPE;
	if (len > sizeof(m->in) - (m->in_len - m->in_off))
		return -ENOBUFS;
	if (len > sizeof(m->in) - m->in_len)
		in_compact(m);
	memcpy(m->in + m->in_len, buf, len);
	m->in_len += len;
	return 0;
}

void *kumo_socks5_input_space(struct kumo_socks5 *m, size_t *len)
{
	*len = 0;
	if (finished(m))
		return NULL;
	if (m->in_len == sizeof(m->in))
		in_compact(m);
	if (m->in_len == sizeof(m->in))
		return NULL;
	*len = sizeof(m->in) - m->in_len;
	return m->in + m->in_len;
}

void kumo_socks5_input_commit(struct kumo_socks5 *m, size_t n)
{
	if (n > sizeof(m->in) - m->in_len)
		n = sizeof(m->in) - m->in_len;
	m->in_len += n;
}

void kumo_socks5_input_eof(struct kumo_socks5 *m)
{
	m->eof = true;
}

/* ---- Output ---- */

static void out_put(struct kumo_socks5 *m, const void *p, size_t n)
{
	if (m->out_off == m->out_len)
		m->out_off = m->out_len = 0;
	if (n > sizeof(m->out) - m->out_len) {
		memmove(m->out, m->out + m->out_off, m->out_len - m->out_off);
		m->out_len -= m->out_off;
		m->out_off = 0;
	}
	/* the states bound the output to 48 bytes, so this always fits */
	if (n <= sizeof(m->out) - m->out_len) {
		memcpy(m->out + m->out_len, p, n);
		m->out_len += n;
	}
}

/* VER REP RSV ATYP BND.ADDR BND.PORT, with 0.0.0.0:0 when addr is NULL or not IP. */
static void put_reply(struct kumo_socks5 *m, enum kumo_socks5_rep rep, const struct sockaddr *addr)
{
	uint8_t r[22] = {VER, (uint8_t)rep, 0x00, KUMO_SOCKS5_ATYP_IPV4};
	size_t n = 10;
	if (addr && addr->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
		memcpy(r + 4, &a->sin_addr, 4);
		memcpy(r + 8, &a->sin_port, 2);
	} else if (addr && addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
		r[3] = KUMO_SOCKS5_ATYP_IPV6;
		memcpy(r + 4, &a->sin6_addr, 16);
		memcpy(r + 20, &a->sin6_port, 2);
		n = 22;
	}
	out_put(m, r, n);
}

const uint8_t *kumo_socks5_output(const struct kumo_socks5 *m, size_t *len)
{
	*len = m->out_len - m->out_off;
	return m->out + m->out_off;
}

void kumo_socks5_output_consumed(struct kumo_socks5 *m, size_t n)
{
	if (n > m->out_len - m->out_off)
		n = m->out_len - m->out_off;
	m->out_off += n;
	if (m->out_off == m->out_len)
		m->out_off = m->out_len = 0;
}

/* ---- Session ---- */

/* Ends the session: rep (or REP_NONE) is already in the output. */
static void finish(struct kumo_socks5 *m, enum kumo_socks5_rep rep, const char *reason)
{
	m->state = ST_DONE;
	m->pending = KUMO_SOCKS5_EV_CLOSE;
	m->close_rep = rep;
	m->close_reason = reason;
}

static void refuse(struct kumo_socks5 *m, enum kumo_socks5_rep rep, const char *reason)
{
	put_reply(m, rep, NULL);
	finish(m, rep, reason);
}

static size_t avail(const struct kumo_socks5 *m)
{
	return m->in_len - m->in_off;
}

/* The version/method offer: VER NMETHODS METHODS. Returns false when incomplete. */
static bool parse_methods(struct kumo_socks5 *m)
{
	const uint8_t *p = m->in + m->in_off;
	if (avail(m) < 1)
		return false;
	if (p[0] != VER) {
		finish(m, KUMO_SOCKS5_REP_NONE, "not SOCKS version 5");
		return true;
	}
	if (avail(m) < 2 || avail(m) < 2 + (size_t)p[1])
		return false;
	uint8_t want = m->auth_required ? M_USERPASS : M_NONE, chosen = M_REFUSED;
	for (size_t i = 0; i < p[1]; i++)
		if (p[2 + i] == want)
			chosen = want;
	m->in_off += 2 + (size_t)p[1];
	uint8_t r[2] = {VER, chosen};
	out_put(m, r, 2);
	m->clock_restart = true;
	if (chosen == M_REFUSED)
		finish(m, KUMO_SOCKS5_REP_NONE,
		       m->auth_required ? "no acceptable method: authentication required"
					: "no acceptable method: no-authentication not offered");
	else
		m->state = chosen == M_USERPASS ? ST_AUTH : ST_REQUEST;
	return true;
}

/* RFC 1929: VER ULEN UNAME PLEN PASSWD. */
static bool parse_auth(struct kumo_socks5 *m, struct kumo_socks5_ev *ev)
{
	const uint8_t *p = m->in + m->in_off;
	if (avail(m) < 1)
		return false;
	if (p[0] != AUTH_VER) {
		uint8_t r[2] = {AUTH_VER, 0x01};
		out_put(m, r, 2);
		finish(m, KUMO_SOCKS5_REP_NONE, "bad authentication subnegotiation version");
		return true;
	}
	if (avail(m) < 2)
		return false;
	size_t ulen = p[1];
	if (avail(m) < 3 + ulen)
		return false;
	size_t plen = p[2 + ulen];
	if (avail(m) < 3 + ulen + plen)
		return false;
	memcpy(m->user, p + 2, ulen);
	m->user[ulen] = '\0';
	m->user_len = ulen;
	memcpy(m->pass, p + 3 + ulen, plen);
	m->pass[plen] = '\0';
	m->pass_len = plen;
	m->in_off += 3 + ulen + plen;
	m->state = ST_AUTH_WAIT;
	ev->type = KUMO_SOCKS5_EV_AUTH;
	ev->user = m->user;
	ev->user_len = ulen;
	ev->pass = m->pass;
	ev->pass_len = plen;
	return true;
}

/* VER CMD RSV ATYP DST.ADDR DST.PORT. RSV is not checked: some clients send junk there. */
static bool parse_request(struct kumo_socks5 *m, struct kumo_socks5_ev *ev)
{
	const uint8_t *p = m->in + m->in_off;
	if (avail(m) < 1)
		return false;
	if (p[0] != VER) {
		refuse(m, KUMO_SOCKS5_REP_GENERAL_FAILURE, "request is not SOCKS version 5");
		return true;
	}
	if (avail(m) < 4)
		return false;
	size_t alen;
	switch (p[3]) {
	case KUMO_SOCKS5_ATYP_IPV4:
		alen = 4;
		break;
	case KUMO_SOCKS5_ATYP_IPV6:
		alen = 16;
		break;
	case KUMO_SOCKS5_ATYP_DOMAIN:
		if (avail(m) < 5)
			return false;
		alen = 1 + (size_t)p[4];
		break;
	default:
		refuse(m, KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED, "unknown address type");
		return true;
	}
	if (avail(m) < 4 + alen + 2)
		return false;

	struct kumo_socks5_request *r = &m->req;
	memset(r, 0, sizeof(*r));
	r->cmd = p[1];
	r->atyp = p[3];
	memcpy(&r->port, p + 4 + alen, 2);
	if (r->atyp == KUMO_SOCKS5_ATYP_IPV4) {
		struct sockaddr_in *a = (struct sockaddr_in *)&r->addr;
		a->sin_family = AF_INET;
		memcpy(&a->sin_addr, p + 4, 4);
		a->sin_port = r->port;
	} else if (r->atyp == KUMO_SOCKS5_ATYP_IPV6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&r->addr;
		a->sin6_family = AF_INET6;
		memcpy(&a->sin6_addr, p + 4, 16);
		a->sin6_port = r->port;
	} else {
		r->host_len = alen - 1;
		memcpy(r->host, p + 5, r->host_len);
		r->host[r->host_len] = '\0';
	}
	r->port = ntohs(r->port);
	m->have_req = true;
	m->in_off += 4 + alen + 2;
	m->clock_restart = true;

	if (r->cmd != KUMO_SOCKS5_CMD_CONNECT && r->cmd != KUMO_SOCKS5_CMD_BIND) {
		refuse(m, KUMO_SOCKS5_REP_CMD_NOT_SUPPORTED, "command not supported");
		return true;
	}
	if (r->atyp == KUMO_SOCKS5_ATYP_DOMAIN) {
		refuse(m, KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED,
		       "domain name targets are not supported");
		return true;
	}
	if (r->cmd == KUMO_SOCKS5_CMD_BIND) {
		if (m->bound) {
			refuse(m, KUMO_SOCKS5_REP_GENERAL_FAILURE, "second BIND");
			return true;
		}
		m->state = ST_BIND_WAIT;
		ev->type = KUMO_SOCKS5_EV_BIND;
		ev->req = r;
		return true;
	}
	m->state = ST_CONNECT_WAIT;
	ev->type = KUMO_SOCKS5_EV_CONNECT;
	ev->req = r;
	ev->source = m->bound ? &m->source : NULL;
	return true;
}

static const char *waiting_for(const struct kumo_socks5 *m)
{
	switch (m->state) {
	case ST_METHODS:
		return "timeout waiting for the method offer";
	case ST_AUTH:
		return "timeout waiting for credentials";
	default:
		return "timeout waiting for a request";
	}
}

static bool awaiting_input(const struct kumo_socks5 *m)
{
	return m->state == ST_METHODS || m->state == ST_AUTH || m->state == ST_REQUEST;
}

void kumo_socks5_next(struct kumo_socks5 *m, uint64_t now_ms, struct kumo_socks5_ev *ev)
{
	memset(ev, 0, sizeof(*ev));
	if (now_ms > m->now)
		m->now = now_ms;
	for (;;) {
		if (m->clock_restart) {
			m->last = m->now;
			m->clock_restart = false;
		}
		if (m->pending != KUMO_SOCKS5_EV_NONE) {
			ev->type = m->pending;
			m->pending = KUMO_SOCKS5_EV_NONE;
			if (ev->type == KUMO_SOCKS5_EV_CLOSE) {
				ev->rep = m->close_rep;
				ev->reason = m->close_reason;
				ev->req = m->have_req ? &m->req : NULL;
			}
			return;
		}
		bool progress;
		switch (m->state) {
		case ST_METHODS:
			progress = parse_methods(m);
			break;
		case ST_AUTH:
			progress = parse_auth(m, ev);
			break;
		case ST_REQUEST:
			progress = parse_request(m, ev);
			break;
		default:
			return; /* a decision is pending, or the handshake is over */
		}
		if (ev->type != KUMO_SOCKS5_EV_NONE)
			return;
		if (!progress) {
			if (m->eof) {
				finish(m, KUMO_SOCKS5_REP_NONE,
				       "client closed during the handshake");
				continue;
			}
			if (m->now >= m->last + m->timeout) {
				finish(m, KUMO_SOCKS5_REP_NONE, waiting_for(m));
				continue;
			}
			return;
		}
	}
}

/* ---- Decisions ---- */

int kumo_socks5_auth_done(struct kumo_socks5 *m, bool ok)
{
	if (m->state != ST_AUTH_WAIT)
		return -EBUSY;
	uint8_t r[2] = {AUTH_VER, ok ? 0x00 : 0x01};
	out_put(m, r, 2);
	memset(m->pass, 0, sizeof(m->pass));
	m->pass_len = 0;
	m->clock_restart = true;
	if (!ok) {
		finish(m, KUMO_SOCKS5_REP_NONE, "authentication failed");
		return 0;
	}
	m->authed = true;
	m->state = ST_REQUEST;
	return 0;
}

static void copy_addr(struct sockaddr_storage *dst, const struct sockaddr *src)
{
	memset(dst, 0, sizeof(*dst));
	if (src && src->sa_family == AF_INET)
		memcpy(dst, src, sizeof(struct sockaddr_in));
	else if (src && src->sa_family == AF_INET6)
		memcpy(dst, src, sizeof(struct sockaddr_in6));
}

int kumo_socks5_bind_done(struct kumo_socks5 *m, enum kumo_socks5_rep rep,
			  const struct sockaddr *bound)
{
	if (m->state != ST_BIND_WAIT)
		return -EBUSY;
	m->clock_restart = true;
	if (rep != KUMO_SOCKS5_REP_SUCCEEDED) {
		refuse(m, rep, "BIND refused");
		return 0;
	}
	copy_addr(&m->source, bound ? bound : (const struct sockaddr *)&m->req.addr);
	put_reply(m, rep, (const struct sockaddr *)&m->source);
	m->bound = true;
	m->state = ST_REQUEST;
	return 0;
}

int kumo_socks5_connect_done(struct kumo_socks5 *m, enum kumo_socks5_rep rep,
			     const struct sockaddr *local)
{
	if (m->state != ST_CONNECT_WAIT)
		return -EBUSY;
	if (rep != KUMO_SOCKS5_REP_SUCCEEDED) {
		refuse(m, rep, "CONNECT failed");
		return 0;
	}
	put_reply(m, rep, local);
	m->state = ST_DONE;
	m->pending = KUMO_SOCKS5_EV_RELAY;
	return 0;
}

/* ---- Accessors ---- */

const uint8_t *kumo_socks5_leftover(const struct kumo_socks5 *m, size_t *len)
{
	*len = 0;
	if (m->state != ST_DONE || m->close_reason)
		return NULL;
	*len = m->in_len - m->in_off;
	return m->in + m->in_off;
}

const char *kumo_socks5_user(const struct kumo_socks5 *m)
{
	return m->authed ? m->user : NULL;
}

uint64_t kumo_socks5_deadline(const struct kumo_socks5 *m)
{
	if (!awaiting_input(m) || m->clock_restart)
		return UINT64_MAX;
	return m->last + m->timeout;
}

void kumo_socks5_tick(struct kumo_socks5 *m, uint64_t now_ms)
{
	if (now_ms > m->now)
		m->now = now_ms;
	if (m->clock_restart) {
		m->last = m->now;
		m->clock_restart = false;
	}
	if (awaiting_input(m) && m->now >= m->last + m->timeout)
		finish(m, KUMO_SOCKS5_REP_NONE, waiting_for(m));
}

enum kumo_socks5_rep kumo_socks5_rep_from_errno(int err)
{
	switch (err < 0 ? -err : err) {
	case 0:
		return KUMO_SOCKS5_REP_SUCCEEDED;
	case ENETUNREACH:
	case ENETDOWN:
		return KUMO_SOCKS5_REP_NET_UNREACHABLE;
	case EHOSTUNREACH:
	case EHOSTDOWN:
		return KUMO_SOCKS5_REP_HOST_UNREACHABLE;
	case ECONNREFUSED:
		return KUMO_SOCKS5_REP_CONN_REFUSED;
	case ETIMEDOUT:
	case ETIME:
		return KUMO_SOCKS5_REP_TTL_EXPIRED;
	case EACCES:
	case EPERM:
		return KUMO_SOCKS5_REP_NOT_ALLOWED;
	case EAFNOSUPPORT:
		return KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED;
	default:
		return KUMO_SOCKS5_REP_GENERAL_FAILURE;
	}
}

const char *kumo_socks5_rep_text(unsigned rep)
{
	static const char *const text[] = {
	    "succeeded",
	    "general SOCKS server failure",
	    "connection not allowed by ruleset",
	    "network unreachable",
	    "host unreachable",
	    "connection refused",
	    "TTL expired",
	    "command not supported",
	    "address type not supported",
	};
	return rep < sizeof(text) / sizeof(text[0]) ? text[rep] : "unassigned";
}
