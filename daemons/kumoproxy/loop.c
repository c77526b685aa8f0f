/* kumoproxy's io_uring loop, one per thread: a SO_REUSEPORT listener with multishot accept,
 * the SOCKS5 handshake through libkumo's socks5 machine, the outbound connect with a linked
 * timeout, the relay both ways (recv/send through fixed per-connection buffers, or polls
 * and splice(2) through pipes), half-close, timeouts, session records and counters. */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <poll.h>
#include <netinet/tcp.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proto/socks5.h"
#include "util/json.h"
#include "util/net.h"

#define RING_ENTRIES 4096
#define LOG_BACKLOG_MAX (8u << 20) /* unwritten session records held per loop */
#define OUT_MAX 64		   /* handshake replies of one session: 48 bytes at most */
#define PIPE_SIZE (1u << 20)	   /* splice mode: pipe capacity asked for */

/* What a completion is for: the op code of user_data. */
enum op {
	OP_ACCEPT = 1, /* multishot accept on the listener */
	OP_STOP,       /* eventfd read: stop requested */
	OP_TICK,       /* the once-a-second timer */
	OP_LOG,	       /* write of session records */
	OP_IGNORED,    /* cancel requests: completions ignored */
	OP_HS_RECV,    /* handshake bytes from the client into the machine */
	OP_HS_SEND,    /* handshake replies to the client */
	OP_CONNECT,    /* outbound connect */
	OP_CONNECT_TO, /* its linked timeout */
	OP_LINGER,     /* after a failure reply: reading until the client closes */
	OP_RECV,       /* relay: recv from a direction's source (copy), or poll it (splice) */
	OP_SEND,       /* relay: send to a direction's sink (copy), or poll it (splice) */
};

/* user_data: op (8 bits) | direction (1 bit) | slot (23 bits) | generation (32 bits). */
static uint64_t mkud(enum op op, unsigned dir, uint32_t slot, uint32_t gen)
{
	return (uint64_t)op << 56 | (uint64_t)(dir & 1) << 55 | (uint64_t)(slot & 0x7fffff) << 32 |
	       gen;
}

enum sstate {
	S_FREE = 0,
	S_HANDSHAKE,  /* SOCKS messages being exchanged */
	S_CONNECTING, /* the outbound connect is in flight */
	S_REPLY,      /* writing the success reply; the relay starts after it */
	S_RELAY,      /* bytes both ways */
	S_LINGER,     /* failure reply written, waiting for the client to close */
	S_CLOSING,    /* cancelling what is in flight; freed when nothing is */
};

/* One direction of the relay: client -> target ("up") or target -> client ("down"). */
struct dir {
	uint8_t *buf;	/* copy mode: cfg.buffer bytes, fixed for the slot */
	uint32_t len;	/* copy: bytes in buf; splice: bytes in the pipe */
	uint32_t off;	/* copy: bytes of buf already sent */
	int pipe[2];	/* splice mode: read end, write end; -1 when unused */
	bool eof;	/* the source sent its FIN */
	bool shut;	/* the FIN was passed on: shutdown(sink, SHUT_WR) */
	uint64_t bytes; /* relayed so far */
};

struct sess {
	uint32_t gen;	       /* bumped when the slot is freed */
	uint8_t state;	       /* enum sstate */
	bool over_limit;       /* opened over --max-connections: requests get 0x01 */
	bool hs_recving;       /* OP_HS_RECV in flight */
	bool hs_sending;       /* OP_HS_SEND in flight */
	bool relayed;	       /* the CONNECT succeeded */
	bool auth_failed;      /* credentials refused */
	bool splice;	       /* the relay moves bytes through pipes (see start_relay) */
	int cfd, tfd;	       /* client and target sockets; -1 when none */
	unsigned inflight;     /* submitted ops not yet completed */
	struct kumo_socks5 *m; /* the handshake machine, until the slot is freed */
	const struct kumo_socks5_request *req; /* the last request (owned by m), or NULL */
	struct dir d[2];      /* [0] up: client -> target, [1] down: target -> client */
	uint8_t out[OUT_MAX]; /* handshake replies: out[out_off, out_len) unwritten */
	uint32_t out_len, out_off;
	uint64_t start_ms; /* monotonic */
	uint64_t last_ms;  /* monotonic: last relay progress, or start of lingering */
	struct timespec start_wall;
	struct sockaddr_storage client;
	struct sockaddr_storage bind;  /* ss_family 0: no BIND */
	struct sockaddr_storage local; /* outbound local address; ss_family 0: none */
	int rep;		       /* the request's reply code; -1 when none was sent */
	const char *reason;	       /* why it ended; the first one set stays */
	int err;		       /* errno behind reason, 0 when none */
};

struct kproxy_loop {
	struct kproxy *px;
	const struct kproxy_cfg *cfg;
	unsigned id;
	pthread_t thread;
	sem_t started; /* posted by the thread once set up; start_rc says how */
	int start_rc;

	struct io_uring ring;
	int listen_fd;	    /* SO_REUSEPORT listener of this loop */
	int stop_fd;	    /* eventfd written by kproxy_loop_stop() */
	uint64_t stop_val;  /* its read buffer */
	bool accept_armed;  /* the multishot accept is active */
	bool accept_paused; /* out of descriptors: re-armed at the next tick */
	bool stopping;	    /* closing everything, then returning */
	struct __kernel_timespec tick_ts, connect_ts;
	uint64_t now;		     /* monotonic ms, read once per batch of completions */
	struct kumo_socks5_cfg mcfg; /* for each handshake machine */

	struct sess *sess; /* fixed table, sized at start */
	uint32_t nsess;
	uint32_t *free_slots; /* stack of free slot numbers */
	uint32_t nfree;
	uint8_t *bufs; /* 2 * cfg.buffer bytes per slot, copy mode (mapped lazily) */
	size_t bufs_len;

	struct kumo_buf log;	 /* records not yet being written */
	struct kumo_buf log_out; /* the batch being written: log_out[log_off, len) */
	size_t log_off;
	size_t log_chunk; /* largest write: PIPE_BUF for pipes so lines of loops never mix */
	bool log_busy;	  /* OP_LOG in flight */

	struct kproxy_counters ctr;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* An SQE; when the ring is full, what is queued is submitted first. */
static struct io_uring_sqe *get_sqe(struct kproxy_loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	while (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

static uint32_t slot_of(const struct kproxy_loop *l, const struct sess *s)
{
	return (uint32_t)(s - l->sess);
}

static void finalize(struct kproxy_loop *l, struct sess *s);

/* ---- Session records ---- */

static void put_time(struct kumo_json *j, const char *key, const struct timespec *ts)
{
	char t[40];
	struct tm tm;
	gmtime_r(&ts->tv_sec, &tm);
	size_t n = strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(t + n, sizeof(t) - n, ".%03ldZ", ts->tv_nsec / 1000000);
	kumo_json_key(j, key);
	kumo_json_str(j, t);
}

static void put_addr_value(struct kumo_json *j, const struct sockaddr_storage *ss)
{
	char a[80];
	if (ss->ss_family == 0) {
		kumo_json_null(j);
		return;
	}
	kproxy_format_addr((const struct sockaddr *)ss, a, sizeof(a));
	kumo_json_str(j, a);
}

static void put_addr(struct kumo_json *j, const char *key, const struct sockaddr_storage *ss)
{
	kumo_json_key(j, key);
	put_addr_value(j, ss);
}

static const char *result_of(const struct sess *s)
{
	if (s->relayed)
		return "relayed";
	if (s->auth_failed)
		return "auth_failed";
	if (s->rep > 0)
		return "refused";
	return "closed";
}

static void log_session(struct kproxy_loop *l, struct sess *s)
{
	if (l->log.len > LOG_BACKLOG_MAX) {
		kproxy_ctr_add(&l->ctr.log_dropped, 1);
		return;
	}
	struct timespec end;
	clock_gettime(CLOCK_REALTIME, &end);
	struct kumo_json j;
	kumo_json_init(&j, &l->log);
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "type");
	kumo_json_str(&j, "proxy_session");
	put_time(&j, "start", &s->start_wall);
	put_time(&j, "end", &end);
	kumo_json_key(&j, "duration_ms");
	kumo_json_uint(&j, l->now - s->start_ms);
	put_addr(&j, "client", &s->client);
	kumo_json_key(&j, "user");
	kumo_json_str_or_null(&j, s->m ? kumo_socks5_user(s->m) : NULL);
	kumo_json_key(&j, "target");
	if (!s->req || s->req->cmd != KUMO_SOCKS5_CMD_CONNECT) {
		kumo_json_null(&j);
	} else if (s->req->atyp == KUMO_SOCKS5_ATYP_DOMAIN) {
		char port[8];
		snprintf(port, sizeof(port), ":%u", s->req->port);
		struct kumo_buf t = {0};
		kumo_buf_append(&t, s->req->host, s->req->host_len);
		kumo_buf_puts(&t, port);
		kumo_json_strn(&j, t.data ? t.data : "", t.len);
		kumo_buf_free(&t);
	} else {
		put_addr_value(&j, &s->req->addr);
	}
	put_addr(&j, "bind", &s->bind);
	put_addr(&j, "source", &s->local);
	kumo_json_key(&j, "bytes_up");
	kumo_json_uint(&j, s->d[0].bytes);
	kumo_json_key(&j, "bytes_down");
	kumo_json_uint(&j, s->d[1].bytes);
	kumo_json_key(&j, "reply");
	if (s->rep >= 0)
		kumo_json_int(&j, s->rep);
	else
		kumo_json_null(&j);
	kumo_json_key(&j, "result");
	kumo_json_str(&j, result_of(s));
	kumo_json_key(&j, "reason");
	if (s->err) {
		char r[256];
		snprintf(r, sizeof(r), "%s: %s", s->reason ? s->reason : "error", strerror(s->err));
		kumo_json_str(&j, r);
	} else {
		kumo_json_str(&j, s->reason ? s->reason : "closed");
	}
	kumo_json_obj_close(&j);
	kumo_buf_putc(&l->log, '\n');
	if (l->log.oom) {
		kumo_buf_free(&l->log);
		kproxy_ctr_add(&l->ctr.log_dropped, 1);
	}
}

/* Starts writing the oldest records when no write is in flight. */
static void log_flush(struct kproxy_loop *l)
{
	if (l->log_busy)
		return;
	if (l->log_off >= l->log_out.len) {
		if (l->log.len == 0)
			return;
		struct kumo_buf t = l->log_out;
		l->log_out = l->log;
		l->log = t;
		l->log.len = 0;
		l->log_off = 0;
	}
	size_t n = l->log_out.len - l->log_off;
	if (n > l->log_chunk) {
		/* whole lines only, so records of different loops never interleave */
		const char *p = l->log_out.data + l->log_off;
		size_t cut = l->log_chunk;
		while (cut > 0 && p[cut - 1] != '\n')
			cut--;
		n = cut ? cut : n;
	}
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_write(sqe, l->cfg->log_fd, l->log_out.data + l->log_off, (unsigned)n,
			    (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, mkud(OP_LOG, 0, 0, 0));
	l->log_busy = true;
}

static void on_log(struct kproxy_loop *l, int res)
{
	l->log_busy = false;
	if (res <= 0) {
		/* the batch is lost; count its records */
		for (size_t i = l->log_off; i < l->log_out.len; i++)
			if (l->log_out.data[i] == '\n')
				kproxy_ctr_add(&l->ctr.log_dropped, 1);
		l->log_off = l->log_out.len;
	} else {
		l->log_off += (size_t)res;
	}
	if (l->log_off >= l->log_out.len) {
		l->log_out.len = 0;
		l->log_off = 0;
	}
	log_flush(l);
}

/* At exit: whatever is left, written synchronously. */
static void log_drain_sync(struct kproxy_loop *l)
{
	struct kumo_buf *bufs[2] = {&l->log_out, &l->log};
	size_t offs[2] = {l->log_off, 0};
	for (int i = 0; i < 2; i++) {
		size_t off = offs[i];
		while (off < bufs[i]->len) {
			ssize_t w = write(l->cfg->log_fd, bufs[i]->data + off, bufs[i]->len - off);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		bufs[i]->len = 0;
	}
	l->log_off = 0;
}

/* ---- Closing ---- */

static void set_reason(struct sess *s, const char *reason, int err)
{
	if (!s->reason) {
		s->reason = reason;
		s->err = err;
	}
}

static void cancel_fd(struct kproxy_loop *l, int fd)
{
	if (fd < 0)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, mkud(OP_IGNORED, 0, 0, 0));
}

/* Ends the session: what is in flight is cancelled and the slot freed once it completed. */
static void close_session(struct kproxy_loop *l, struct sess *s, const char *reason, int err)
{
	if (s->state == S_CLOSING || s->state == S_FREE)
		return;
	set_reason(s, reason, err);
	s->state = S_CLOSING;
	if (s->inflight == 0) {
		finalize(l, s);
		return;
	}
	cancel_fd(l, s->cfd);
	cancel_fd(l, s->tfd);
	for (int i = 0; i < 2; i++) {
		cancel_fd(l, s->d[i].pipe[0]);
		cancel_fd(l, s->d[i].pipe[1]);
	}
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void finalize(struct kproxy_loop *l, struct sess *s)
{
	close_fd(&s->cfd);
	close_fd(&s->tfd);
	for (int i = 0; i < 2; i++) {
		close_fd(&s->d[i].pipe[0]);
		close_fd(&s->d[i].pipe[1]);
	}
	log_session(l, s);
	if (!s->relayed && s->rep < 0)
		kproxy_ctr_add(&l->ctr.handshake_closed, 1);
	kproxy_ctr_add(&l->ctr.sessions, 1);
	kumo_socks5_free(s->m);
	s->m = NULL;
	s->req = NULL;
	s->state = S_FREE;
	s->gen++;
	l->free_slots[l->nfree++] = slot_of(l, s);
	atomic_fetch_sub_explicit(&l->px->active, 1, memory_order_relaxed);
}

/* ---- Handshake ---- */

static void hs_recv(struct kproxy_loop *l, struct sess *s)
{
	size_t space;
	void *p = kumo_socks5_input_space(s->m, &space);
	if (!p || s->hs_recving)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_recv(sqe, s->cfd, p, space, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_HS_RECV, 0, slot_of(l, s), s->gen));
	s->hs_recving = true;
	s->inflight++;
}

static void hs_send(struct kproxy_loop *l, struct sess *s)
{
	if (s->hs_sending || s->out_off == s->out_len)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_send(sqe, s->cfd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, mkud(OP_HS_SEND, 0, slot_of(l, s), s->gen));
	s->hs_sending = true;
	s->inflight++;
}

/* Moves the machine's replies to the session's output (append-only: at most 48 bytes). */
static void take_output(struct sess *s)
{
	size_t n;
	const uint8_t *o = kumo_socks5_output(s->m, &n);
	if (n > sizeof(s->out) - s->out_len)
		n = sizeof(s->out) - s->out_len;
	memcpy(s->out + s->out_len, o, n);
	s->out_len += (uint32_t)n;
	kumo_socks5_output_consumed(s->m, n);
}

static socklen_t addr_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* BIND: a socket bound now to the wanted source; the CONNECT uses it. */
static void do_bind(struct kproxy_loop *l, struct sess *s, const struct kumo_socks5_request *req)
{
	const struct kproxy_cfg *cfg = l->cfg;
	const struct sockaddr *want = (const struct sockaddr *)&req->addr;
	struct sockaddr_storage bound = req->addr;
	enum kumo_socks5_rep rep = KUMO_SOCKS5_REP_SUCCEEDED;

	s->bind = req->addr;
	if (s->over_limit) {
		rep = KUMO_SOCKS5_REP_GENERAL_FAILURE;
		set_reason(s, "over the connection limit", 0);
		kproxy_ctr_add(&l->ctr.limited, 1);
		goto out;
	}
	bool allowed = cfg->nallow == 0;
	for (size_t i = 0; i < cfg->nallow && !allowed; i++)
		allowed = kproxy_cidr_match(&cfg->allow[i], want);
	if (!allowed) {
		rep = KUMO_SOCKS5_REP_NOT_ALLOWED;
		set_reason(s, "source address not allowed", 0);
		goto out;
	}
	int fd = socket(want->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rep = kumo_socks5_rep_from_errno(errno);
		set_reason(s, "socket", errno);
		goto out;
	}
	if (req->port == 0) {
		/* the port is picked at connect time, per destination: many sessions can share
		 * a source address without exhausting its ports */
		int one = 1;
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	}
	socklen_t len = addr_len(&req->addr);
	if (bind(fd, want, len) < 0) {
		int e = errno;
		close(fd);
		rep = kumo_socks5_rep_from_errno(e);
		set_reason(s, "bind", e);
		goto out;
	}
	len = sizeof(bound);
	getsockname(fd, (struct sockaddr *)&bound, &len);
	s->tfd = fd;
out:
	kumo_socks5_bind_done(s->m, rep, (const struct sockaddr *)&bound);
}

/* CONNECT: starts the outbound connect, or answers at once when it cannot start. */
static void do_connect(struct kproxy_loop *l, struct sess *s, const struct kumo_socks5_request *req,
		       const struct sockaddr_storage *source)
{
	enum kumo_socks5_rep rep;
	int family = req->addr.ss_family;

	if (s->over_limit) {
		rep = KUMO_SOCKS5_REP_GENERAL_FAILURE;
		set_reason(s, "over the connection limit", 0);
		kproxy_ctr_add(&l->ctr.limited, 1);
		goto fail;
	}
	if (source && source->ss_family != family) {
		rep = KUMO_SOCKS5_REP_ATYP_NOT_SUPPORTED;
		set_reason(s, "source and target address families differ", 0);
		goto fail;
	}
	if (s->tfd < 0) {
		s->tfd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s->tfd < 0) {
			rep = kumo_socks5_rep_from_errno(errno);
			set_reason(s, "socket", errno);
			goto fail;
		}
	}
	set_nodelay(s->tfd);
	if (io_uring_sq_space_left(&l->ring) < 2)
		io_uring_submit(&l->ring);
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_connect(sqe, s->tfd, (const struct sockaddr *)&req->addr,
			      addr_len(&req->addr));
	io_uring_sqe_set_data64(sqe, mkud(OP_CONNECT, 0, slot_of(l, s), s->gen));
	sqe->flags |= IOSQE_IO_LINK;
	sqe = get_sqe(l);
	io_uring_prep_link_timeout(sqe, &l->connect_ts, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_CONNECT_TO, 0, slot_of(l, s), s->gen));
	s->inflight += 2;
	s->state = S_CONNECTING;
	return;
fail:
	kumo_socks5_connect_done(s->m, rep, NULL);
}

static void start_relay(struct kproxy_loop *l, struct sess *s);
static void start_linger(struct kproxy_loop *l, struct sess *s);

/* Runs the machine until it waits: answers its decisions, queues its replies, reads more. */
static void pump(struct kproxy_loop *l, struct sess *s)
{
	struct kumo_socks5_ev ev;
	bool more = true;
	while (more && s->state == S_HANDSHAKE) {
		kumo_socks5_next(s->m, l->now, &ev);
		take_output(s);
		switch (ev.type) {
		case KUMO_SOCKS5_EV_NONE:
			more = false;
			break;
		case KUMO_SOCKS5_EV_AUTH: {
			bool ok = kproxy_users_check(&l->cfg->users, ev.user, ev.user_len, ev.pass,
						     ev.pass_len);
			if (!ok) {
				s->auth_failed = true;
				kproxy_ctr_add(&l->ctr.auth_failures, 1);
			}
			kumo_socks5_auth_done(s->m, ok);
			break;
		}
		case KUMO_SOCKS5_EV_BIND:
			s->req = ev.req;
			do_bind(l, s, ev.req);
			break;
		case KUMO_SOCKS5_EV_CONNECT:
			s->req = ev.req;
			do_connect(l, s, ev.req, ev.source);
			break;
		case KUMO_SOCKS5_EV_RELAY:
			s->rep = KUMO_SOCKS5_REP_SUCCEEDED;
			s->relayed = true;
			kproxy_ctr_add(&l->ctr.relayed, 1);
			kproxy_ctr_add(&l->ctr.replies[0], 1);
			s->state = S_REPLY;
			break;
		case KUMO_SOCKS5_EV_CLOSE:
			if (ev.req)
				s->req = ev.req;
			if (ev.rep != KUMO_SOCKS5_REP_NONE) {
				s->rep = ev.rep;
				if (ev.rep < 9)
					kproxy_ctr_add(&l->ctr.replies[ev.rep], 1);
			}
			set_reason(s, ev.reason, 0);
			if (s->out_off == s->out_len) {
				close_session(l, s, NULL, 0);
				return;
			}
			s->state = S_LINGER;
			break;
		}
	}
	if (s->state == S_CLOSING)
		return;
	hs_send(l, s);
	if (s->state == S_HANDSHAKE)
		hs_recv(l, s);
	else if (s->state == S_REPLY && !s->hs_sending)
		start_relay(l, s);
	else if (s->state == S_LINGER && !s->hs_sending && !s->hs_recving)
		start_linger(l, s);
}

static void on_hs_recv(struct kproxy_loop *l, struct sess *s, int res)
{
	s->hs_recving = false;
	if (s->state == S_LINGER) {
		/* a read that was in flight when the session failed: it counts as lingering */
		if (res <= 0)
			close_session(l, s, NULL, 0);
		else if (!s->hs_sending)
			start_linger(l, s);
		return;
	}
	if (s->state != S_HANDSHAKE)
		return;
	if (res < 0) {
		close_session(l, s, "client recv", -res);
		return;
	}
	if (res == 0)
		kumo_socks5_input_eof(s->m);
	else
		kumo_socks5_input_commit(s->m, (size_t)res);
	pump(l, s);
}

static void on_hs_send(struct kproxy_loop *l, struct sess *s, int res)
{
	s->hs_sending = false;
	if (res < 0) {
		close_session(l, s, "client send", -res);
		return;
	}
	s->out_off += (uint32_t)res;
	if (s->out_off < s->out_len) {
		hs_send(l, s);
		return;
	}
	if (s->state == S_REPLY)
		start_relay(l, s);
	else if (s->state == S_LINGER && !s->hs_recving)
		start_linger(l, s);
	else if (s->state == S_HANDSHAKE)
		pump(l, s);
}

static void on_connect(struct kproxy_loop *l, struct sess *s, int res)
{
	if (s->state != S_CONNECTING)
		return;
	s->state = S_HANDSHAKE;
	if (res == 0) {
		socklen_t len = sizeof(s->local);
		getsockname(s->tfd, (struct sockaddr *)&s->local, &len);
		kumo_socks5_connect_done(s->m, KUMO_SOCKS5_REP_SUCCEEDED,
					 (const struct sockaddr *)&s->local);
	} else {
		/* cancelled: the linked timeout fired (a close cancels only in S_CLOSING) */
		int err = res == -ECANCELED ? ETIMEDOUT : -res;
		set_reason(s, "connect", err);
		kumo_socks5_connect_done(s->m, kumo_socks5_rep_from_errno(err), NULL);
	}
	pump(l, s);
}

/* ---- Lingering after a failure reply ---- */

static void linger_recv(struct kproxy_loop *l, struct sess *s)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_recv(sqe, s->cfd, s->d[1].buf, l->cfg->buffer, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_LINGER, 0, slot_of(l, s), s->gen));
	s->inflight++;
}

/* The reply is out: our side is closed, the client's is read (and dropped) until it closes
 * or KPROXY_LINGER_MS pass, so that closing with unread input does not reset the connection
 * before the client has read the reply. */
static void start_linger(struct kproxy_loop *l, struct sess *s)
{
	s->state = S_LINGER;
	s->last_ms = l->now;
	shutdown(s->cfd, SHUT_WR);
	linger_recv(l, s);
}

static void on_linger(struct kproxy_loop *l, struct sess *s, int res)
{
	if (s->state != S_LINGER)
		return;
	if (res <= 0)
		close_session(l, s, NULL, 0);
	else
		linger_recv(l, s);
}

/* ---- Relay ---- */

static int src_fd(const struct sess *s, unsigned d)
{
	return d == 0 ? s->cfd : s->tfd;
}

static int dst_fd(const struct sess *s, unsigned d)
{
	return d == 0 ? s->tfd : s->cfd;
}

/* Copy mode: recv into the direction's buffer. Splice mode: wait until the source is
 * readable; splice_in() moves the bytes then. */
static void relay_recv(struct kproxy_loop *l, struct sess *s, unsigned d)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	if (s->splice)
		io_uring_prep_poll_add(sqe, src_fd(s, d), POLLIN);
	else
		io_uring_prep_recv(sqe, src_fd(s, d), s->d[d].buf, l->cfg->buffer, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_RECV, d, slot_of(l, s), s->gen));
	s->inflight++;
}

/* Copy mode: send the rest of the buffer. Splice mode: wait until the sink is writable. */
static void relay_send(struct kproxy_loop *l, struct sess *s, unsigned d)
{
	struct dir *x = &s->d[d];
	struct io_uring_sqe *sqe = get_sqe(l);
	if (s->splice)
		io_uring_prep_poll_add(sqe, dst_fd(s, d), POLLOUT);
	else
		io_uring_prep_send(sqe, dst_fd(s, d), x->buf + x->off, x->len - x->off,
				   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, mkud(OP_SEND, d, slot_of(l, s), s->gen));
	s->inflight++;
}

static void dir_eof(struct kproxy_loop *l, struct sess *s, unsigned d);

/* Splice mode: the pipe into the sink, called directly (io_uring would run each splice in
 * a worker thread: a wakeup and two context switches per call). Waits for POLLOUT while
 * the sink is full, and for the source once the pipe is empty. */
static void splice_out(struct kproxy_loop *l, struct sess *s, unsigned d)
{
	struct dir *x = &s->d[d];
	while (x->len) {
		ssize_t n = splice(x->pipe[0], NULL, dst_fd(s, d), NULL, x->len,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n < 0 && errno == EAGAIN) {
			relay_send(l, s, d);
			return;
		}
		if (n <= 0) {
			close_session(l, s, d == 0 ? "target send" : "client send",
				      n < 0 ? errno : EPIPE);
			return;
		}
		x->len -= (uint32_t)n;
		s->last_ms = l->now;
	}
	relay_recv(l, s, d);
}

/* Splice mode: the source is readable; what it holds goes into the (empty) pipe. */
static void splice_in(struct kproxy_loop *l, struct sess *s, unsigned d)
{
	struct dir *x = &s->d[d];
	ssize_t n = splice(src_fd(s, d), NULL, x->pipe[1], NULL, PIPE_SIZE,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (n < 0 && errno == EAGAIN) {
		relay_recv(l, s, d);
		return;
	}
	if (n < 0) {
		close_session(l, s, d == 0 ? "client recv" : "target recv", errno);
		return;
	}
	if (n == 0) {
		dir_eof(l, s, d);
		return;
	}
	s->last_ms = l->now;
	x->len = (uint32_t)n;
	x->bytes += (uint64_t)n;
	kproxy_ctr_add(d == 0 ? &l->ctr.bytes_up : &l->ctr.bytes_down, (uint64_t)n);
	splice_out(l, s, d);
}

/* Splice mode: a pipe per direction. Without descriptors for them (EMFILE, ENFILE) the
 * session relays through its buffers instead: it is not failed after its success reply. */
static bool open_pipes(struct sess *s)
{
	for (int i = 0; i < 2; i++) {
		if (pipe2(s->d[i].pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
			close_fd(&s->d[0].pipe[0]);
			close_fd(&s->d[0].pipe[1]);
			return false;
		}
		fcntl(s->d[i].pipe[1], F_SETPIPE_SZ, PIPE_SIZE);
	}
	return true;
}

/* The client's bytes that came with its handshake go first. */
static void send_leftover(struct kproxy_loop *l, struct sess *s, const uint8_t *left, size_t n)
{
	struct dir *x = &s->d[0];
	if (s->splice) {
		ssize_t w = write(x->pipe[1], left, n); /* n <= KUMO_SOCKS5_INPUT_MAX: fits */
		if (w != (ssize_t)n) {
			close_session(l, s, "pipe", w < 0 ? errno : EIO);
			return;
		}
	} else {
		memcpy(x->buf, left, n); /* n <= KUMO_SOCKS5_INPUT_MAX <= buffer */
		x->off = 0;
	}
	x->len = (uint32_t)n;
	x->bytes += n;
	kproxy_ctr_add(&l->ctr.bytes_up, n);
	if (s->splice)
		splice_out(l, s, 0);
	else
		relay_send(l, s, 0);
}

static void start_relay(struct kproxy_loop *l, struct sess *s)
{
	s->state = S_RELAY;
	s->last_ms = l->now;
	s->splice = l->cfg->relay == KPROXY_RELAY_SPLICE && open_pipes(s);
	size_t n;
	const uint8_t *left = kumo_socks5_leftover(s->m, &n);
	if (n)
		send_leftover(l, s, left, n);
	else
		relay_recv(l, s, 0);
	if (s->state == S_RELAY)
		relay_recv(l, s, 1);
}

static void dir_eof(struct kproxy_loop *l, struct sess *s, unsigned d)
{
	struct dir *x = &s->d[d];
	x->eof = true;
	shutdown(dst_fd(s, d), SHUT_WR);
	x->shut = true;
	if (s->d[0].shut && s->d[1].shut)
		close_session(l, s, "completed", 0);
}

static void on_relay_recv(struct kproxy_loop *l, struct sess *s, unsigned d, int res)
{
	if (s->state != S_RELAY)
		return;
	struct dir *x = &s->d[d];
	if (res < 0) {
		close_session(l, s, d == 0 ? "client recv" : "target recv", -res);
		return;
	}
	if (s->splice) {
		splice_in(l, s, d); /* res: the poll's events; errors show in the splice */
		return;
	}
	if (res == 0) {
		dir_eof(l, s, d);
		return;
	}
	s->last_ms = l->now;
	x->len = (uint32_t)res;
	x->off = 0;
	x->bytes += (uint64_t)res;
	kproxy_ctr_add(d == 0 ? &l->ctr.bytes_up : &l->ctr.bytes_down, (uint64_t)res);
	relay_send(l, s, d);
}

static void on_relay_send(struct kproxy_loop *l, struct sess *s, unsigned d, int res)
{
	if (s->state != S_RELAY)
		return;
	struct dir *x = &s->d[d];
	if (s->splice && res > 0) {
		splice_out(l, s, d); /* res: the poll's events; errors show in the splice */
		return;
	}
	if (res <= 0) {
		close_session(l, s, d == 0 ? "target send" : "client send", res < 0 ? -res : EPIPE);
		return;
	}
	s->last_ms = l->now;
	x->off += (uint32_t)res;
	if (x->off < x->len) {
		relay_send(l, s, d);
		return;
	}
	relay_recv(l, s, d);
}

/* ---- Accept, timers, dispatch ---- */

static void arm_accept(struct kproxy_loop *l)
{
	if (l->accept_armed || l->stopping || l->listen_fd < 0)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_multishot_accept(sqe, l->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	io_uring_sqe_set_data64(sqe, mkud(OP_ACCEPT, 0, 0, 0));
	l->accept_armed = true;
}

static void arm_tick(struct kproxy_loop *l)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_TICK, 0, 0, 0));
}

static void arm_stop(struct kproxy_loop *l)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_read(sqe, l->stop_fd, &l->stop_val, sizeof(l->stop_val), 0);
	io_uring_sqe_set_data64(sqe, mkud(OP_STOP, 0, 0, 0));
}

static void new_session(struct kproxy_loop *l, int fd)
{
	kproxy_ctr_add(&l->ctr.accepted, 1);
	if (l->nfree == 0) {
		kproxy_ctr_add(&l->ctr.dropped, 1);
		close(fd);
		return;
	}
	struct sess *s = &l->sess[l->free_slots[--l->nfree]];
	unsigned prev = atomic_fetch_add_explicit(&l->px->active, 1, memory_order_relaxed);
	uint32_t gen = s->gen;
	struct dir d0 = s->d[0], d1 = s->d[1];
	memset(s, 0, sizeof(*s));
	s->gen = gen;
	s->d[0].buf = d0.buf;
	s->d[1].buf = d1.buf;
	for (int i = 0; i < 2; i++)
		s->d[i].pipe[0] = s->d[i].pipe[1] = -1;
	s->state = S_HANDSHAKE;
	s->over_limit = prev >= l->cfg->max_connections;
	s->cfd = fd;
	s->tfd = -1;
	s->rep = -1;
	s->start_ms = s->last_ms = l->now;
	clock_gettime(CLOCK_REALTIME, &s->start_wall);
	socklen_t len = sizeof(s->client);
	getpeername(fd, (struct sockaddr *)&s->client, &len);
	set_nodelay(fd);
	if (kumo_socks5_new(&l->mcfg, l->now, &s->m) < 0) {
		close_session(l, s, "out of memory", ENOMEM);
		return;
	}
	pump(l, s);
}

static void on_accept(struct kproxy_loop *l, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE))
		l->accept_armed = false;
	if (res >= 0) {
		if (l->stopping)
			close(res);
		else
			new_session(l, res);
	} else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
		/* out of descriptors or memory: try again at the next tick */
		if (l->accept_armed) {
			struct io_uring_sqe *sqe = get_sqe(l);
			io_uring_prep_cancel64(sqe, mkud(OP_ACCEPT, 0, 0, 0), 0);
			io_uring_sqe_set_data64(sqe, mkud(OP_IGNORED, 0, 0, 0));
		}
		l->accept_paused = true;
		return;
	}
	if (!l->accept_paused)
		arm_accept(l);
}

static void on_tick(struct kproxy_loop *l)
{
	const struct kproxy_cfg *cfg = l->cfg;
	if (l->accept_paused && !l->accept_armed) {
		l->accept_paused = false;
		arm_accept(l);
	}
	for (uint32_t i = 0; i < l->nsess; i++) {
		struct sess *s = &l->sess[i];
		switch (s->state) {
		case S_HANDSHAKE:
			if (l->now >= kumo_socks5_deadline(s->m)) {
				kumo_socks5_tick(s->m, l->now);
				pump(l, s);
			}
			break;
		case S_RELAY:
			if (cfg->idle_ms && l->now - s->last_ms >= cfg->idle_ms) {
				kproxy_ctr_add(&l->ctr.idle_timeouts, 1);
				close_session(l, s, "idle timeout", 0);
			}
			break;
		case S_LINGER:
			if (l->now - s->last_ms >= KPROXY_LINGER_MS)
				close_session(l, s, NULL, 0);
			break;
		default:
			break;
		}
	}
	if (!l->stopping)
		arm_tick(l);
}

static void on_stop(struct kproxy_loop *l)
{
	l->stopping = true;
	if (l->listen_fd >= 0) {
		cancel_fd(l, l->listen_fd);
	}
	for (uint32_t i = 0; i < l->nsess; i++)
		if (l->sess[i].state != S_FREE)
			close_session(l, &l->sess[i], "shutdown", 0);
}

static void dispatch(struct kproxy_loop *l, const struct io_uring_cqe *cqe)
{
	uint64_t u = cqe->user_data;
	enum op op = (enum op)(u >> 56);
	unsigned d = (unsigned)(u >> 55) & 1;
	uint32_t slot = (uint32_t)(u >> 32) & 0x7fffff, gen = (uint32_t)u;
	int res = cqe->res;

	switch (op) {
	case OP_ACCEPT:
		on_accept(l, res, cqe->flags);
		return;
	case OP_STOP:
		on_stop(l);
		return;
	case OP_TICK:
		on_tick(l);
		return;
	case OP_LOG:
		on_log(l, res);
		return;
	case OP_IGNORED:
		return;
	default:
		break;
	}
	if (slot >= l->nsess)
		return;
	struct sess *s = &l->sess[slot];
	if (s->gen != gen || s->state == S_FREE)
		return; /* cannot happen: a slot is freed only when nothing is in flight */
	s->inflight--;
	if (s->state == S_CLOSING) {
		if (op == OP_HS_RECV)
			s->hs_recving = false;
		if (s->inflight == 0)
			finalize(l, s);
		return;
	}
	switch (op) {
	case OP_HS_RECV:
		on_hs_recv(l, s, res);
		break;
	case OP_HS_SEND:
		on_hs_send(l, s, res);
		break;
	case OP_CONNECT:
		on_connect(l, s, res);
		break;
	case OP_CONNECT_TO:
		break;
	case OP_LINGER:
		on_linger(l, s, res);
		break;
	case OP_RECV:
		on_relay_recv(l, s, d, res);
		break;
	case OP_SEND:
		on_relay_send(l, s, d, res);
		break;
	default:
		break;
	}
}

/* ---- Setup and thread ---- */

int kproxy_loop_new(struct kproxy *px, unsigned id, struct kproxy_loop **out)
{
	const struct kproxy_cfg *cfg = &px->cfg;
	struct kproxy_loop *l = calloc(1, sizeof(*l));
	int err = -ENOMEM;
	if (!l)
		return -ENOMEM;
	l->px = px;
	l->cfg = cfg;
	l->id = id;
	l->listen_fd = l->stop_fd = -1;
	l->mcfg.auth_required = cfg->users.n > 0;
	l->mcfg.timeout_ms = cfg->handshake_ms;
	l->tick_ts.tv_sec = 1;
	l->connect_ts.tv_sec = cfg->connect_ms / 1000;
	l->connect_ts.tv_nsec = (long long)(cfg->connect_ms % 1000) * 1000000;
	l->nsess = cfg->max_connections + KPROXY_SLOT_RESERVE;
	l->sess = calloc(l->nsess, sizeof(*l->sess));
	l->free_slots = calloc(l->nsess, sizeof(*l->free_slots));
	if (!l->sess || !l->free_slots)
		goto out_free;
	l->bufs_len = (size_t)l->nsess * 2 * cfg->buffer;
	l->bufs = mmap(NULL, l->bufs_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (l->bufs == MAP_FAILED) {
		l->bufs = NULL;
		goto out_free;
	}
	for (uint32_t i = 0; i < l->nsess; i++) {
		struct sess *s = &l->sess[i];
		s->d[0].buf = l->bufs + (size_t)i * 2 * cfg->buffer;
		s->d[1].buf = s->d[0].buf + cfg->buffer;
		s->cfd = s->tfd = -1;
		for (int k = 0; k < 2; k++)
			s->d[k].pipe[0] = s->d[k].pipe[1] = -1;
		/* lowest slots first: their buffers are the ones already touched */
		l->free_slots[l->nsess - 1 - i] = i;
	}
	l->nfree = l->nsess;
	struct stat st;
	l->log_chunk = SIZE_MAX;
	if (fstat(cfg->log_fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		l->log_chunk = PIPE_BUF;
	l->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (l->stop_fd < 0) {
		err = -errno;
		goto out_free;
	}
	l->listen_fd = kumo_listen_socket(&cfg->listen, cfg->listen_len);
	if (l->listen_fd < 0) {
		err = l->listen_fd;
		goto out_free;
	}
	if (sem_init(&l->started, 0, 0) < 0) {
		err = -errno;
		goto out_free;
	}
	*out = l;
	return 0;
out_free:
	kproxy_loop_free(l);
	return err;
}

static int ring_init(struct kproxy_loop *l)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	int err = io_uring_queue_init_params(RING_ENTRIES, &l->ring, &p);
	if (err == -EINVAL) {
		memset(&p, 0, sizeof(p));
		err = io_uring_queue_init_params(RING_ENTRIES, &l->ring, &p);
	}
	return err;
}

static void *loop_main(void *arg)
{
	struct kproxy_loop *l = arg;
	l->start_rc = ring_init(l);
	sem_post(&l->started);
	if (l->start_rc < 0)
		return NULL;
	l->now = mono_ms();
	arm_accept(l);
	arm_tick(l);
	arm_stop(l);
	for (;;) {
		uint32_t active = l->nsess - l->nfree;
		if (l->stopping && active == 0 && !l->log_busy)
			break;
		int rc = io_uring_submit_and_wait(&l->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			break;
		l->now = mono_ms();
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&l->ring, head, cqe)
		{
			dispatch(l, cqe);
			n++;
		}
		io_uring_cq_advance(&l->ring, n);
		log_flush(l);
	}
	log_drain_sync(l);
	io_uring_queue_exit(&l->ring);
	return NULL;
}

int kproxy_loop_start(struct kproxy_loop *l)
{
	int err = pthread_create(&l->thread, NULL, loop_main, l);
	if (err)
		return -err;
	while (sem_wait(&l->started) < 0 && errno == EINTR)
		;
	if (l->start_rc < 0) {
		pthread_join(l->thread, NULL);
		l->thread = 0;
		return l->start_rc;
	}
	return 0;
}

void kproxy_loop_stop(struct kproxy_loop *l)
{
	uint64_t one = 1;
	if (write(l->stop_fd, &one, sizeof(one)) < 0) {
		/* an eventfd write fails only on overflow: a stop is pending anyway */
	}
}

void kproxy_loop_join(struct kproxy_loop *l)
{
	if (l->thread) {
		pthread_join(l->thread, NULL);
		l->thread = 0;
	}
}

void kproxy_loop_free(struct kproxy_loop *l)
{
	if (!l)
		return;
	if (l->sess)
		for (uint32_t i = 0; i < l->nsess; i++)
			kumo_socks5_free(l->sess[i].m);
	free(l->sess);
	free(l->free_slots);
	if (l->bufs)
		munmap(l->bufs, l->bufs_len);
	if (l->listen_fd >= 0)
		close(l->listen_fd);
	if (l->stop_fd >= 0)
		close(l->stop_fd);
	kumo_buf_free(&l->log);
	kumo_buf_free(&l->log_out);
	sem_destroy(&l->started);
	free(l);
}

const struct kproxy_counters *kproxy_loop_counters(const struct kproxy_loop *l)
{
	return &l->ctr;
}
