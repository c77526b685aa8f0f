/* tsa-daemon: HTTP/1.1 server on one io_uring loop; see server.h. Completions dispatch on the
 * op code in user_data {op, slot, generation}; a connection's input is only touched while no
 * receive is in flight, and its output is double-buffered so a send's bytes never move. */
#include "server.h"

#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "proto/http1.h"
#include "util/json_read.h"

#define RING_ENTRIES 512
#define RECV_CHUNK 65536
#define IN_INITIAL 16384
#define OUT_HIGH ((size_t)1 << 20) /* stop taking requests while this much waits to go out */
#define LINGER_MS 2000		   /* reading (and dropping) input after a final answer */
#define STOP_GRACE_MS 5000	   /* time given to connections in progress at shutdown */

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_TICK, OP_SIGNAL, OP_NOTIFY, OP_CANCEL };

enum conn_state {
	C_FREE,	   /* the slot is unused */
	C_OPEN,	   /* reading and answering requests */
	C_CLOSING, /* no more requests: send what is queued, then linger */
	C_LINGER,  /* write side shut: dropping input until EOF or LINGER_MS */
	C_DEAD,	   /* socket closed; waiting for operations in flight to complete */
};

struct conn {
	enum conn_state state;
	int fd;
	uint32_t gen; /* bumped when the slot is freed */
	bool recv_armed, send_armed;
	bool continue_sent; /* "100 Continue" went out for the current request */
	char *in;	    /* unconsumed input, starting with the current request */
	size_t in_len, in_cap;
	struct kumo_http1_reader rd;
	struct kumo_buf out;  /* being sent: never changed while send_armed */
	struct kumo_buf next; /* answers queued behind it */
	struct kumo_buf held; /* a publish answer waiting for its actions to be stored */
	uint64_t wait_seq;    /* > 0: held until the store has done this write */
	int64_t last_ms;      /* last activity, for timeouts */
	uint32_t next_free;
};

struct counters {
	uint64_t requests;
	uint64_t status[6]; /* by class: 1xx .. 5xx */
	uint64_t accepted, rejected;
};

struct tsa_server {
	struct tsa_server_cfg cfg;
	struct tsa_engine *engine;
	struct tsa_store *store;
	struct io_uring ring;
	bool ring_ready;
	int listen_fd, signal_fd, notify_fd, port;
	struct signalfd_siginfo siginfo;
	uint64_t notify_val;
	struct __kernel_timespec tick_ts;
	struct conn *conns;
	uint32_t free_head;
	unsigned nactive;
	bool accept_armed, accept_paused;
	bool stopping;
	int64_t stop_deadline;
	uint64_t last_seq;   /* newest store write submitted */
	bool persist_failed; /* a store write could not be queued (no memory) */
	size_t in_max;	     /* largest input buffer of a connection */
	struct kumo_http1_limits limits;
	struct kumo_buf scratch;
	struct counters n;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_(struct tsa_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(struct tsa_server *s, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (s->cfg.log)
		s->cfg.log(s->cfg.log_arg, line);
	else
		fprintf(stderr, "tsa-daemon: %s\n", line);
}

static uint64_t ud(enum op op, uint32_t slot, uint32_t gen)
{
	return (uint64_t)op | (uint64_t)slot << 8 | (uint64_t)gen << 32;
}

static struct io_uring_sqe *sqe_get(struct tsa_server *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	return sqe; /* not NULL: the submission queue was just emptied */
}

/* ---- persistence hook -------------------------------------------------------------------- */

static void persist(void *arg, const struct tsa_action *a)
{
	struct tsa_server *s = arg;
	uint64_t seq = tsa_store_put(s->store, a);
	if (seq)
		s->last_seq = seq;
	else
		s->persist_failed = true;
}

/* ---- connections ------------------------------------------------------------------------- */

static void release(struct tsa_server *s, struct conn *c)
{
	uint32_t slot = (uint32_t)(c - s->conns);
	free(c->in);
	kumo_buf_free(&c->out);
	kumo_buf_free(&c->next);
	kumo_buf_free(&c->held);
	uint32_t gen = c->gen + 1;
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->gen = gen;
	c->state = C_FREE;
	c->next_free = s->free_head;
	s->free_head = slot;
}

static void maybe_release(struct tsa_server *s, struct conn *c)
{
	if (c->state == C_DEAD && !c->recv_armed && !c->send_armed)
		release(s, c);
}

/* Closes the socket; the slot is freed once the operations in flight have completed
 * (shutdown makes them complete at once). */
static void conn_close(struct tsa_server *s, struct conn *c)
{
	if (c->state == C_DEAD || c->state == C_FREE)
		return;
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	c->state = C_DEAD;
	s->nactive--;
	maybe_release(s, c);
}

static void arm_recv(struct tsa_server *s, struct conn *c)
{
	if (c->in_cap - c->in_len < 4096 && c->in_cap < s->in_max) {
		size_t cap = c->in_cap * 2 < s->in_max ? c->in_cap * 2 : s->in_max;
		char *in = realloc(c->in, cap);
		if (!in) {
			conn_close(s, c);
			return;
		}
		c->in = in;
		c->in_cap = cap;
	}
	if (c->state == C_LINGER)
		c->in_len = 0; /* input after the final answer is dropped */
	size_t room = c->in_cap - c->in_len;
	if (room == 0) {
		conn_close(s, c); /* cannot happen: the reader refuses more before */
		return;
	}
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_recv(sqe, c->fd, c->in + c->in_len, room < RECV_CHUNK ? room : RECV_CHUNK, 0);
	io_uring_sqe_set_data64(sqe, ud(OP_RECV, (uint32_t)(c - s->conns), c->gen));
	c->recv_armed = true;
}

static void arm_send(struct tsa_server *s, struct conn *c)
{
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_send(sqe, c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud(OP_SEND, (uint32_t)(c - s->conns), c->gen));
	c->send_armed = true;
}

/* Starts what the connection needs next: a send of queued answers, the end of a closing
 * connection, or a receive. */
static void kick(struct tsa_server *s, struct conn *c)
{
	if (c->state == C_DEAD || c->state == C_FREE)
		return;
	if (!c->send_armed && c->out.len == 0 && c->next.len) {
		struct kumo_buf t = c->out;
		c->out = c->next;
		c->next = t;
		c->next.len = 0;
	}
	if (c->out.oom || c->next.oom) {
		conn_close(s, c);
		return;
	}
	if (!c->send_armed && c->out.len)
		arm_send(s, c);
	if (c->state == C_CLOSING && !c->send_armed && !c->out.len && !c->next.len &&
	    !c->wait_seq) {
		/* Everything is answered: shut the write side and drop further input for a
		 * while, so that unread input does not turn the close into a reset that could
		 * destroy the answer before the client reads it. */
		shutdown(c->fd, SHUT_WR);
		c->state = C_LINGER;
		c->last_ms = mono_ms();
	}
	if (c->recv_armed || c->wait_seq)
		return;
	if (c->state == C_LINGER || (c->state == C_OPEN && c->out.len + c->next.len < OUT_HIGH))
		arm_recv(s, c);
}

/* ---- responses ------------------------------------------------------------------------------ */

struct reply {
	int status;
	const char *ctype;
	const char *body;
	size_t len;
	const char *extra; /* header lines, each ending in CRLF, or NULL */
};

/* Writes a whole response to b. close: the connection closes after it. */
static void write_response(struct tsa_server *s, struct kumo_buf *b, const struct reply *r,
			   bool head_only, int minor, bool close)
{
	char date[40];
	kumo_http1_format_date(now_ms() / 1000, date, sizeof(date));
	kumo_http1_write_status(b, r->status);
	kumo_http1_write_header(b, "Date", date);
	kumo_http1_write_header(b, "Server", "tsa-daemon");
	if (close)
		kumo_http1_write_header(b, "Connection", "close");
	else if (minor == 0)
		kumo_http1_write_header(b, "Connection", "keep-alive");
	if (r->extra)
		kumo_buf_puts(b, r->extra);
	kumo_http1_write_body(b, r->ctype, r->body, r->len, head_only);
	s->n.status[r->status / 100 < 6 ? r->status / 100 : 5]++;
}

/* {"error": msg}. The connection closes after it unless it is still open: callers that
 * cannot trust what follows (framing errors) set C_CLOSING first. */
static void error_body(struct kumo_buf *b, const char *msg)
{
	struct kumo_json j;
	kumo_json_init(&j, b);
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "error");
	kumo_json_str(&j, msg);
	kumo_json_obj_close(&j);
	kumo_buf_putc(b, '\n');
}

static void send_error(struct tsa_server *s, struct conn *c, struct kumo_buf *to, int status,
		       const char *msg, const char *extra, bool head_only, int minor)
{
	struct kumo_buf body = {0};
	error_body(&body, msg);
	struct reply r = {status, "application/json", body.data, body.len, extra};
	write_response(s, to, &r, head_only, minor, c->state != C_OPEN);
	kumo_buf_free(&body);
}

/* ---- request handlers ----------------------------------------------------------------------- */

static bool view_is(const char *p, size_t n, const char *s)
{
	return n == strlen(s) && memcmp(p, s, n) == 0;
}

/* Whether Content-Type (when given) names JSON or JSON lines. */
static bool json_media_type(const struct kumo_http1_request *req)
{
	const struct kumo_http1_header *h = kumo_http1_find_header(req, "content-type");
	if (!h)
		return true;
	size_t n = 0;
	while (n < h->value_len && h->value[n] != ';' && h->value[n] != ' ' && h->value[n] != '\t')
		n++;
	static const char *const types[] = {"application/json",	 "application/x-ndjson",
					    "application/jsonl", "application/json-seq",
					    "text/plain",	 NULL};
	for (int i = 0; types[i]; i++)
		if (n == strlen(types[i]) && strncasecmp(h->value, types[i], n) == 0)
			return true;
	return false;
}

static void publish(struct tsa_server *s, struct conn *c, const struct kumo_http1_request *req)
{
	struct kumo_json_doc **docs = NULL;
	const struct kumo_json_value **recs = NULL;
	size_t ndocs = 0, nrecs = 0, capd = 0, capr = 0, off = 0;
	char msg[300];
	int status = 0;

	if (!json_media_type(req)) {
		status = 415;
		snprintf(msg, sizeof(msg), "expected Content-Type: application/json");
		goto answer;
	}
	if (!req->body_len) {
		status = 400;
		snprintf(msg, sizeof(msg), "empty body: expected one JSON log record or several");
		goto answer;
	}
	/* One record, an array of records, or records one after the other (JSON lines). */
	while (off < req->body_len) {
		struct kumo_json_doc *doc;
		struct kumo_json_error jerr;
		size_t end;
		int rc = kumo_json_parse(req->body + off, req->body_len - off, &end, &doc, &jerr);
		if (rc == -ENOMEM) {
			status = 500;
			snprintf(msg, sizeof(msg), "out of memory");
			goto answer;
		}
		if (rc < 0) {
			/* The position in the whole body, not in the value that failed. */
			size_t at = off + jerr.offset;
			int line = 1, col = 1;
			for (size_t i = 0; i < at; i++) {
				unsigned char ch = (unsigned char)req->body[i];
				if (ch == '\n') {
					line++;
					col = 1;
				} else if ((ch & 0xc0) != 0x80) {
					col++;
				}
			}
			status = 400;
			snprintf(msg, sizeof(msg), "invalid JSON at line %d, column %d: %s", line,
				 col, jerr.msg);
			goto answer;
		}
		off += end;
		if (ndocs == capd) {
			capd = capd ? capd * 2 : 8;
			struct kumo_json_doc **nd = realloc(docs, capd * sizeof(*nd));
			if (!nd) {
				kumo_json_doc_free(doc);
				status = 500;
				snprintf(msg, sizeof(msg), "out of memory");
				goto answer;
			}
			docs = nd;
		}
		docs[ndocs++] = doc;
		const struct kumo_json_value *root = kumo_json_doc_root(doc);
		bool array = kumo_json_type(root) == KUMO_JSON_ARRAY;
		size_t k = array ? kumo_json_count(root) : 1;
		for (size_t i = 0; i < k; i++) {
			if (nrecs == capr) {
				capr = capr ? capr * 2 : 16;
				const struct kumo_json_value **nr =
				    realloc(recs, capr * sizeof(*nr));
				if (!nr) {
					status = 500;
					snprintf(msg, sizeof(msg), "out of memory");
					goto answer;
				}
				recs = nr;
			}
			recs[nrecs++] = array ? kumo_json_at(root, i) : root;
		}
	}
	/* Check every record before acting on any. */
	for (size_t i = 0; i < nrecs; i++) {
		char why[200];
		if (tsa_engine_check_record(recs[i], why, sizeof(why)) < 0) {
			status = 422;
			if (nrecs > 1)
				snprintf(msg, sizeof(msg), "record %zu: %s", i + 1, why);
			else
				snprintf(msg, sizeof(msg), "%s", why);
			goto answer;
		}
	}
	struct tsa_engine_stats before, after;
	tsa_engine_stats(s->engine, &before);
	uint64_t seq0 = s->last_seq;
	int64_t now = now_ms();
	s->persist_failed = false;
	for (size_t i = 0; i < nrecs && !status; i++)
		if (tsa_engine_publish(s->engine, recs[i], now) < 0) {
			status = 500;
			snprintf(msg, sizeof(msg), "out of memory");
		}
	if (!status && s->persist_failed) {
		status = 500;
		snprintf(msg, sizeof(msg), "out of memory: actions could not be saved");
	}
	if (!status) {
		tsa_engine_stats(s->engine, &after);
		struct kumo_buf body = {0};
		kumo_buf_printf(&body, "{\"records\":%zu,\"matches\":%llu,\"actions\":%llu}\n",
				nrecs, (unsigned long long)(after.matches - before.matches),
				(unsigned long long)(after.fired - before.fired));
		struct reply r = {200, "application/json", body.data, body.len, NULL};
		bool close = !req->keep_alive || s->stopping;
		if (close)
			c->state = C_CLOSING;
		if (s->last_seq > seq0) {
			/* Answer once the actions are on disk. */
			c->wait_seq = s->last_seq;
			write_response(s, &c->held, &r, false, req->minor_version, close);
		} else {
			write_response(s, &c->next, &r, false, req->minor_version, close);
		}
		kumo_buf_free(&body);
	}
answer:
	if (status)
		send_error(s, c, &c->next, status, msg, NULL, false, req->minor_version);
	for (size_t i = 0; i < ndocs; i++)
		kumo_json_doc_free(docs[i]);
	free(docs);
	free(recs);
}

static void server_metrics(struct tsa_server *s, struct kumo_buf *b)
{
	uint64_t batches, writes, failures;
	tsa_store_stats(s->store, &batches, &writes, &failures);
	kumo_buf_printf(b,
			"# HELP tsa_http_requests_total HTTP requests parsed\n"
			"# TYPE tsa_http_requests_total counter\ntsa_http_requests_total %llu\n"
			"# HELP tsa_http_responses_total HTTP responses by status class\n"
			"# TYPE tsa_http_responses_total counter\n",
			(unsigned long long)s->n.requests);
	for (int k = 1; k <= 5; k++)
		kumo_buf_printf(b, "tsa_http_responses_total{code=\"%dxx\"} %llu\n", k,
				(unsigned long long)s->n.status[k]);
	kumo_buf_printf(b,
			"# HELP tsa_connections open HTTP connections\n"
			"# TYPE tsa_connections gauge\ntsa_connections %u\n"
			"# HELP tsa_connections_accepted_total connections accepted\n"
			"# TYPE tsa_connections_accepted_total counter\n"
			"tsa_connections_accepted_total %llu\n"
			"# HELP tsa_connections_rejected_total connections refused: table full\n"
			"# TYPE tsa_connections_rejected_total counter\n"
			"tsa_connections_rejected_total %llu\n"
			"# HELP tsa_store_batches_total state store transactions\n"
			"# TYPE tsa_store_batches_total counter\ntsa_store_batches_total %llu\n"
			"# HELP tsa_store_writes_total state store row writes\n"
			"# TYPE tsa_store_writes_total counter\ntsa_store_writes_total %llu\n"
			"# HELP tsa_store_failures_total state store transactions that failed\n"
			"# TYPE tsa_store_failures_total counter\ntsa_store_failures_total %llu\n",
			s->nactive, (unsigned long long)s->n.accepted,
			(unsigned long long)s->n.rejected, (unsigned long long)batches,
			(unsigned long long)writes, (unsigned long long)failures);
}

enum route { R_PUBLISH, R_CONFIG, R_SUSPENSIONS, R_BOUNCES, R_METRICS, R_NONE };

static void handle(struct tsa_server *s, struct conn *c, const struct kumo_http1_request *req)
{
	static const struct {
		const char *path;
		enum route route;
	} routes[] = {
	    {"/publish_log_v1", R_PUBLISH},
	    {"/get_config_v1/shaping.toml", R_CONFIG},
	    {"/get_suspension_v1/suspended.json", R_SUSPENSIONS},
	    {"/get_bounce_v1/bounced.json", R_BOUNCES},
	    {"/metrics", R_METRICS},
	};
	const char *m = req->method, *p = req->target;
	size_t ml = req->method_len, pl = req->target_len;
	bool get = view_is(m, ml, "GET"), head = view_is(m, ml, "HEAD"),
	     post = view_is(m, ml, "POST");
	int minor = req->minor_version;

	s->n.requests++;
	if (!req->keep_alive || s->stopping)
		c->state = C_CLOSING;
	/* absolute-form: http://host/path */
	if ((pl > 7 && strncasecmp(p, "http://", 7) == 0) ||
	    (pl > 8 && strncasecmp(p, "https://", 8) == 0)) {
		const char *slash = memchr(p + 8, '/', pl - 8);
		pl = slash ? pl - (size_t)(slash - p) : 1;
		p = slash ? slash : "/";
	}
	const char *q = memchr(p, '?', pl);
	if (q)
		pl = (size_t)(q - p);
	enum route route = R_NONE;
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (view_is(p, pl, routes[i].path))
			route = routes[i].route;
	if (!get && !head && !post) {
		send_error(s, c, &c->next, 501, "method not implemented: use GET, HEAD or POST",
			   NULL, false, minor);
		return;
	}
	if (route == R_NONE) {
		send_error(s, c, &c->next, 404, "not found", NULL, head, minor);
		return;
	}
	if ((route == R_PUBLISH) != post) {
		send_error(s, c, &c->next, 405, "method not allowed",
			   route == R_PUBLISH ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n", head,
			   minor);
		return;
	}
	if (route == R_PUBLISH) {
		publish(s, c, req);
		return;
	}
	int64_t now = now_ms();
	const char *ctype = "application/json";
	s->scratch.len = 0;
	s->scratch.oom = false;
	switch (route) {
	case R_CONFIG:
		tsa_engine_shaping_toml(s->engine, now, &s->scratch);
		ctype = "application/toml";
		break;
	case R_SUSPENSIONS:
		tsa_engine_suspensions_json(s->engine, now, &s->scratch);
		break;
	case R_BOUNCES:
		tsa_engine_bounces_json(s->engine, now, &s->scratch);
		break;
	default:
		tsa_engine_metrics(s->engine, now, &s->scratch);
		server_metrics(s, &s->scratch);
		ctype = "text/plain; version=0.0.4";
		break;
	}
	if (s->scratch.oom) {
		send_error(s, c, &c->next, 500, "out of memory", NULL, head, minor);
		return;
	}
	struct reply r = {200, ctype, s->scratch.data, s->scratch.len, NULL};
	write_response(s, &c->next, &r, head, minor, c->state != C_OPEN);
}

/* Parses and answers the requests in the input, in order, until one needs more input,
 * waits for the store, or the output backs up. */
static void process(struct tsa_server *s, struct conn *c)
{
	while (c->state == C_OPEN && !c->wait_seq && c->out.len + c->next.len < OUT_HIGH) {
		enum kumo_http1_result rc = kumo_http1_reader_feed(&c->rd, c->in, &c->in_len);
		if (rc == KUMO_HTTP1_ERROR) {
			const struct kumo_http1_error *err = kumo_http1_reader_error(&c->rd);
			s->n.requests++;
			c->state = C_CLOSING;
			send_error(s, c, &c->next, err->status, err->reason, NULL, false, 1);
			break;
		}
		const struct kumo_http1_request *req = kumo_http1_reader_request(&c->rd);
		if (rc == KUMO_HTTP1_INCOMPLETE) {
			if (req && req->expect_continue && !c->continue_sent &&
			    req->minor_version >= 1) {
				kumo_buf_puts(&c->next, "HTTP/1.1 100 Continue\r\n\r\n");
				c->continue_sent = true;
			}
			break;
		}
		handle(s, c, req);
		size_t used = kumo_http1_reader_request_len(&c->rd);
		memmove(c->in, c->in + used, c->in_len - used);
		c->in_len -= used;
		kumo_http1_reader_next(&c->rd);
		c->continue_sent = false;
	}
	kick(s, c);
}

/* ---- completions ----------------------------------------------------------------------------- */

static void arm_accept(struct tsa_server *s)
{
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud(OP_ACCEPT, 0, 0));
	s->accept_armed = true;
}

static void on_accept(struct tsa_server *s, int res)
{
	s->accept_armed = false;
	if (res < 0) {
		if (res != -ECANCELED && !s->stopping) {
			if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
				logf_(s, "accept: %s; pausing for a second", strerror(-res));
				s->accept_paused = true;
			} else {
				arm_accept(s);
			}
		}
		return;
	}
	if (s->stopping) {
		close(res);
		return;
	}
	arm_accept(s);
	if (s->free_head == UINT32_MAX) {
		/* The table is full: a short answer without waiting for the request. */
		static const char full[] =
		    "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
		    "Content-Type: application/json\r\nContent-Length: 33\r\n"
		    "\r\n{\"error\":\"too many connections\"}\n";
		ssize_t w = send(res, full, sizeof(full) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)w;
		close(res);
		s->n.rejected++;
		return;
	}
	uint32_t slot = s->free_head;
	struct conn *c = &s->conns[slot];
	s->free_head = c->next_free;
	c->state = C_OPEN;
	c->fd = res;
	c->last_ms = mono_ms();
	c->in_cap = IN_INITIAL;
	if (!(c->in = malloc(c->in_cap))) {
		close(res);
		c->fd = -1;
		c->state = C_DEAD;
		release(s, c);
		return;
	}
	int one = 1;
	setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	kumo_http1_reader_init(&c->rd, &s->limits);
	s->nactive++;
	s->n.accepted++;
	arm_recv(s, c);
}

static void on_recv(struct tsa_server *s, struct conn *c, int res)
{
	c->recv_armed = false;
	if (c->state == C_DEAD) {
		maybe_release(s, c);
		return;
	}
	if (res <= 0) {
		if (res == 0 && c->state == C_OPEN && (c->wait_seq || c->out.len || c->next.len)) {
			c->state = C_CLOSING; /* the client is done sending: finish answering */
			kick(s, c);
		} else {
			conn_close(s, c);
		}
		return;
	}
	c->last_ms = mono_ms();
	if (c->state == C_LINGER) {
		arm_recv(s, c);
		return;
	}
	c->in_len += (size_t)res;
	process(s, c);
}

static void on_send(struct tsa_server *s, struct conn *c, int res)
{
	c->send_armed = false;
	if (c->state == C_DEAD) {
		maybe_release(s, c);
		return;
	}
	if (res <= 0) {
		conn_close(s, c);
		return;
	}
	c->last_ms = mono_ms();
	kumo_buf_consume(&c->out, (size_t)res);
	if (c->state == C_OPEN && !c->recv_armed && !c->wait_seq)
		process(s, c); /* requests may have waited for the output to drain */
	else
		kick(s, c);
}

/* The store finished batches: answer the publishes that waited for them. */
static void on_notify(struct tsa_server *s)
{
	uint64_t done = tsa_store_done(s->store);
	char why[256];
	bool failed = tsa_store_take_failure(s->store, why, sizeof(why));
	if (failed)
		logf_(s, "state store: %s", why);
	for (unsigned i = 0; i < s->cfg.max_connections; i++) {
		struct conn *c = &s->conns[i];
		if (c->state == C_FREE || c->state == C_DEAD || !c->wait_seq || c->wait_seq > done)
			continue;
		c->wait_seq = 0;
		if (failed) {
			c->held.len = 0;
			send_error(s, c, &c->next, 500, "the actions could not be saved", NULL,
				   false, 1);
		} else {
			kumo_buf_append(&c->next, c->held.data, c->held.len);
			c->held.len = 0;
		}
		if (c->state == C_OPEN && !c->recv_armed)
			process(s, c);
		else
			kick(s, c);
	}
}

static void begin_stop(struct tsa_server *s)
{
	s->stopping = true;
	s->stop_deadline = mono_ms() + STOP_GRACE_MS;
	if (s->accept_armed) {
		struct io_uring_sqe *sqe = sqe_get(s);
		io_uring_prep_cancel64(sqe, ud(OP_ACCEPT, 0, 0), 0);
		io_uring_sqe_set_data64(sqe, ud(OP_CANCEL, 0, 0));
	}
	for (unsigned i = 0; i < s->cfg.max_connections; i++) {
		struct conn *c = &s->conns[i];
		if (c->state == C_OPEN && c->recv_armed && !c->in_len && !c->out.len &&
		    !c->next.len && !c->wait_seq)
			conn_close(s, c); /* idle between requests */
		else if (c->state == C_OPEN)
			c->state = C_CLOSING;
	}
}

static void on_tick(struct tsa_server *s)
{
	int64_t now = now_ms(), mono = mono_ms();
	if (tsa_engine_expire(s->engine, now) > 0)
		tsa_store_prune(s->store, now);
	if (s->accept_paused && !s->stopping) {
		s->accept_paused = false;
		arm_accept(s);
	}
	int64_t idle = (int64_t)s->cfg.idle_timeout_ms;
	for (unsigned i = 0; i < s->cfg.max_connections; i++) {
		struct conn *c = &s->conns[i];
		if (c->state == C_FREE || c->state == C_DEAD || c->wait_seq)
			continue;
		int64_t quiet = mono - c->last_ms;
		if (c->state == C_LINGER && quiet >= LINGER_MS)
			conn_close(s, c);
		else if (c->send_armed && quiet >= 2 * idle)
			conn_close(s, c); /* the client does not read its answers */
		else if (c->state == C_OPEN && c->recv_armed && quiet >= idle) {
			if (c->in_len || kumo_http1_reader_request(&c->rd)) {
				c->state = C_CLOSING;
				send_error(s, c, &c->next, 408, "request timeout", NULL, false, 1);
				kick(s, c);
			} else {
				conn_close(s, c);
			}
		}
	}
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_timeout(sqe, &s->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud(OP_TICK, 0, 0));
}

static void arm_signal(struct tsa_server *s)
{
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_read(sqe, s->signal_fd, &s->siginfo, sizeof(s->siginfo), 0);
	io_uring_sqe_set_data64(sqe, ud(OP_SIGNAL, 0, 0));
}

static void arm_notify(struct tsa_server *s)
{
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_read(sqe, s->notify_fd, &s->notify_val, sizeof(s->notify_val), 0);
	io_uring_sqe_set_data64(sqe, ud(OP_NOTIFY, 0, 0));
}

/* Returns true to stop the loop now. */
static bool dispatch(struct tsa_server *s, struct io_uring_cqe *cqe)
{
	uint64_t u = io_uring_cqe_get_data64(cqe);
	enum op op = (enum op)(u & 0xff);
	uint32_t slot = (uint32_t)(u >> 8) & 0xffffff, gen = (uint32_t)(u >> 32);
	struct conn *c = NULL;
	if (op == OP_RECV || op == OP_SEND) {
		if (slot >= s->cfg.max_connections || s->conns[slot].gen != gen ||
		    s->conns[slot].state == C_FREE)
			return false; /* a completion for a slot freed meanwhile */
		c = &s->conns[slot];
	}
	switch (op) {
	case OP_ACCEPT:
		on_accept(s, cqe->res);
		break;
	case OP_RECV:
		on_recv(s, c, cqe->res);
		break;
	case OP_SEND:
		on_send(s, c, cqe->res);
		break;
	case OP_TICK:
		on_tick(s);
		break;
	case OP_SIGNAL:
		if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -EAGAIN)
			return true;
		if (s->stopping)
			return true; /* a second signal: stop at once */
		logf_(s, "stopping: answering the requests in progress");
		begin_stop(s);
		arm_signal(s);
		break;
	case OP_NOTIFY:
		on_notify(s);
		arm_notify(s);
		break;
	case OP_CANCEL:
		break;
	}
	return false;
}

int tsa_server_run(struct tsa_server *s)
{
	arm_accept(s);
	arm_signal(s);
	arm_notify(s);
	struct io_uring_sqe *sqe = sqe_get(s);
	io_uring_prep_timeout(sqe, &s->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud(OP_TICK, 0, 0));
	for (;;) {
		int rc = io_uring_submit_and_wait(&s->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			logf_(s, "io_uring: %s", strerror(-rc));
			return rc;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		bool stop = false;
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			seen++;
			if (dispatch(s, cqe))
				stop = true;
		}
		io_uring_cq_advance(&s->ring, seen);
		if (stop)
			break;
		if (s->stopping && (s->nactive == 0 || mono_ms() >= s->stop_deadline))
			break;
	}
	/* Final answers already went out or are abandoned: close everything. */
	for (unsigned i = 0; i < s->cfg.max_connections; i++)
		conn_close(s, &s->conns[i]);
	return 0;
}

/* ---- setup ------------------------------------------------------------------------------------
 */

int tsa_server_new(const struct tsa_server_cfg *cfg, struct tsa_engine *engine,
		   struct tsa_store *store, struct tsa_server **out, char *err, size_t errcap)
{
	struct tsa_server *s = calloc(1, sizeof(*s));
	int rc = -ENOMEM;
	*out = NULL;
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->engine = engine;
	s->store = store;
	s->listen_fd = s->signal_fd = s->notify_fd = -1;
	s->tick_ts.tv_sec = 1;
	s->limits.max_body = cfg->max_body;
	s->in_max = KUMO_HTTP1_DEFAULT_MAX_HEAD + (size_t)cfg->max_body + RECV_CHUNK;
	if (!(s->conns = calloc(cfg->max_connections, sizeof(*s->conns)))) {
		snprintf(err, errcap, "out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < cfg->max_connections; i++) {
		s->conns[i].fd = -1;
		s->conns[i].next_free = i + 1 < cfg->max_connections ? i + 1 : UINT32_MAX;
	}
	s->free_head = 0;

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((s->signal_fd = signalfd(-1, &set, SFD_CLOEXEC)) < 0 ||
	    (s->notify_fd = eventfd(0, EFD_CLOEXEC)) < 0) {
		rc = -errno;
		snprintf(err, errcap, "signalfd/eventfd: %s", strerror(errno));
		goto fail;
	}
	s->listen_fd = socket(cfg->addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (s->listen_fd < 0 ||
	    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (cfg->addr->sa_family == AF_INET6 &&
	     setsockopt(s->listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(s->listen_fd, cfg->addr, cfg->addrlen) < 0 || listen(s->listen_fd, 1024) < 0) {
		rc = -errno;
		snprintf(err, errcap, "cannot listen: %s", strerror(errno));
		goto fail;
	}
	struct sockaddr_storage bound;
	socklen_t bl = sizeof(bound);
	if (getsockname(s->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
		s->port =
		    ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						      : ((struct sockaddr_in *)&bound)->sin_port);
	if ((rc = io_uring_queue_init(RING_ENTRIES, &s->ring, 0)) < 0) {
		snprintf(err, errcap, "io_uring: %s", strerror(-rc));
		goto fail;
	}
	s->ring_ready = true;
	tsa_engine_set_persist(engine, persist, s);
	*out = s;
	return 0;
fail:
	tsa_server_free(s);
	return rc;
}

int tsa_server_notify_fd(const struct tsa_server *s)
{
	return s->notify_fd;
}

int tsa_server_port(const struct tsa_server *s)
{
	return s->port;
}

void tsa_server_free(struct tsa_server *s)
{
	if (!s)
		return;
	if (s->conns) {
		for (unsigned i = 0; i < s->cfg.max_connections; i++) {
			struct conn *c = &s->conns[i];
			if (c->fd >= 0)
				close(c->fd);
			free(c->in);
			kumo_buf_free(&c->out);
			kumo_buf_free(&c->next);
			kumo_buf_free(&c->held);
		}
		free(s->conns);
	}
	if (s->ring_ready)
		io_uring_queue_exit(&s->ring);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->signal_fd >= 0)
		close(s->signal_fd);
	if (s->notify_fd >= 0)
		close(s->notify_fd);
	kumo_buf_free(&s->scratch);
	free(s);
}
