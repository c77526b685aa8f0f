/* kumo-bench inject: an SMTP load generator. C connections are spread over T threads, each
 * an epoll loop over non-blocking sockets; every connection sends messages back to back,
 * pipelining MAIL/RCPT/DATA when the server offers PIPELINING. */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE 8192	    /* reply bytes buffered per connection */
#define REPLY_MAX 1024	    /* reply text kept for the accepted log */
#define LOCAL_MAX 24	    /* "user<k>" local parts */
#define MAX_EVENTS 256	    /* epoll events per wait */
#define TICK_NS 20000000ULL /* timer scan period */
#define RECONNECT_NS 100000000ULL
#define ERRORS_SHOWN 5 /* connection errors printed per thread */
#define BODY_LINE 76

struct inject_opts {
	const char *host;
	int port;
	uint64_t messages; /* 0: no limit (only with --duration) */
	uint64_t size;
	int conns;
	int threads;
	char **domains;
	size_t ndomains;
	size_t domain_max; /* length of the longest domain */
	const char *from;
	int rcpts;
	const char *accepted_log;
	const char *helo;
	bool no_pipelining;
	bool json;
	double duration;
	uint64_t timeout_ms;
	uint64_t max_reconnects;
};

/* State shared by all worker threads; written only before they start, or atomically. */
struct run {
	const struct inject_opts *o;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	const char *body;	       /* wire form: dot-stuffed lines, then ".\r\n" */
	size_t body_wire;	       /* bytes of body on the wire */
	size_t body_bytes;	       /* bytes the body adds to the message (unstuffed) */
	char nonce[17];		       /* hex, unique per run, in every Message-ID */
	atomic_uint_fast64_t next_seq; /* next message sequence number to claim */
	atomic_bool stop;	       /* SIGINT/SIGTERM: abandon the run now */
	atomic_bool used_pipelining;
	uint64_t start_ns;
	uint64_t end_ns;     /* --duration: start no message after this; 0 for none */
	int log_fd;	     /* --accepted-log, -1 if none */
	atomic_int finished; /* worker threads that have ended */
};

enum cstate {
	C_WAIT,	      /* waiting to (re)connect */
	C_CONNECTING, /* non-blocking connect in progress */
	C_OPEN,	      /* connected; the replies expected are queued in xq */
	C_DONE,	      /* finished, normally or given up */
};

/* What the next reply answers. */
enum expect { X_GREETING, X_EHLO, X_HELO, X_RSET, X_MAIL, X_RCPT, X_DATA, X_FINAL, X_QUIT };

enum outcome { O_ACCEPTED, O_TEMP, O_PERM };

struct worker;

struct conn {
	struct worker *w;
	int fd;
	enum cstate st;
	uint64_t reconnects;
	uint64_t deadline_ns; /* reply timeout, or reconnect time in C_WAIT */
	bool pipelining;      /* used on this connection */
	bool srv_pipelining;  /* advertised in the EHLO reply */
	bool srv_size;	      /* SIZE advertised */
	bool need_rset;	      /* the last transaction failed part way */

	uint8_t *xq; /* ring of enum expect */
	int xhead, xlen, xcap;

	char rbuf[RBUF_SIZE];
	size_t rlen;
	char reply[REPLY_MAX]; /* text of the reply being read, lines joined by spaces */
	size_t replylen;

	struct iovec out[2]; /* pending output segments */
	int nout, outi;

	char *cmd; /* SMTP commands for one message (or QUIT/EHLO) */
	size_t cmdcap, cmdlen;
	char *hdr; /* header section of the current message */
	size_t hdrcap, hdrlen;
	char *rcpt; /* recipients of the current message, rslot bytes each */
	size_t rslot;

	/* the message in flight */
	bool in_msg;
	uint64_t seq;
	uint64_t t0;
	int nrcpt_sent;
	int rcpt_ok, rcpt_temp, rcpt_perm;
	int mail_code;
	bool void_data; /* DATA got 354 though no recipient was accepted */
	char msgid[80];
	size_t msgidlen;
};

struct worker {
	struct run *run;
	int id;
	pthread_t tid;
	int epfd;
	struct conn *conns;
	int nconns;
	int live; /* connections not C_DONE */
	struct bench_rng rng;
	uint32_t *lat; /* latencies in microseconds */
	size_t nlat, latcap;
	uint64_t attempted, accepted, tempfail, permfail, unanswered, conn_errors, gave_up;
	uint64_t accepted_bytes;
	int errors_shown;
	struct bench_log alog;
	char date[48];
	time_t date_sec;
	uint64_t end_ns;
};

static const char usage_text[] =
    "usage: kumo-bench inject [options]\n"
    "  --host HOST            server address (default 127.0.0.1)\n"
    "  --port PORT            server port (default 25)\n"
    "  -n, --messages N       messages to send (default 10000; with --duration and no\n"
    "                         -n: no limit)\n"
    "  -s, --size BYTES       message size including headers (default 10240)\n"
    "  -c, --connections C    concurrent SMTP connections (default 10)\n"
    "  --threads T            worker threads (default: min(2, CPUs))\n"
    "  --domains LIST         comma-separated recipient domains (default example.com)\n"
    "  --domains-file FILE    recipient domains, one a line ('#' starts a comment)\n"
    "  --from ADDR            envelope and header sender (default bench@example.org)\n"
    "  --rcpts-per-msg K      recipients per message (default 1)\n"
    "  --helo NAME            EHLO name (default kumo-bench.invalid)\n"
    "  --accepted-log FILE    append \"<message-id> <final reply>\" for each message the\n"
    "                         server accepted (2xx after the data)\n"
    "  --no-pipelining        one command per round trip even if PIPELINING is offered\n"
    "  --duration SECONDS     start no new message after this long\n"
    "  --timeout-ms MS        give up on a connection waiting longer for a reply\n"
    "                         (default 30000)\n"
    "  --max-reconnects R     reconnect a failed connection up to R times, 100 ms apart\n"
    "                         (default 0: a failed connection ends)\n"
    "  --json                 print the report as one JSON object\n"
    "exit status: 0 if every message got an answer; 1 if a connection failed with\n"
    "messages left, a message went unanswered, or the run was interrupted; 2 on bad\n"
    "usage.\n";

void bench_inject_usage(FILE *f)
{
	fputs(usage_text, f);
}

/* ---- message building ---- */

/* Filler text for bodies: printable ASCII that reads like prose. */
static const char filler[] =
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute "
    "irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla "
    "pariatur; excepteur sint occaecat cupidatat non proident (sunt in culpa) qui "
    "officia deserunt mollit anim id est laborum! 0123456789 #$%&*+-/=?@[]^_{|}~ ";

/*
 * Build the body once: `lines` lines of BODY_LINE printable characters, dot-stuffed, then
 * the ".\r\n" that ends DATA. Sets the wire length and the unstuffed length.
 */
static char *make_body(size_t lines, size_t *wire, size_t *bytes)
{
	size_t flen = sizeof(filler) - 1;
	char *b = malloc(lines * (BODY_LINE + 3) + 4), *p = b;

	if (b == NULL)
		return NULL;
	*bytes = lines * (BODY_LINE + 2);
	for (size_t i = 0; i < lines; i++) {
		size_t off = (i * 37) % flen;
		if (filler[off] == '.')
			*p++ = '.';
		for (size_t j = 0; j < BODY_LINE; j++)
			*p++ = filler[(off + j) % flen];
		*p++ = '\r';
		*p++ = '\n';
	}
	memcpy(p, ".\r\n", 3);
	p += 3;
	*wire = (size_t)(p - b);
	return b;
}

static void update_date(struct worker *w)
{
	time_t now = time(NULL);
	struct tm tm;

	if (now == w->date_sec)
		return;
	w->date_sec = now;
	gmtime_r(&now, &tm);
	strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* Append formatted text to a buffer known to be large enough (sizes are computed up front). */
static size_t put(char *buf, size_t cap, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static size_t put(char *buf, size_t cap, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + len, cap - len, fmt, ap);
	va_end(ap);
	if (n < 0)
		return len;
	return len + (size_t)n < cap ? len + (size_t)n : cap - 1;
}

/* Choose the recipients and write the header section of message seq into c->hdr. */
static void build_message(struct conn *c, uint64_t seq)
{
	struct worker *w = c->w;
	const struct inject_opts *o = w->run->o;
	size_t len = 0;

	update_date(w);
	for (int j = 0; j < o->rcpts; j++) {
		const char *dom = o->domains[bench_rng_next(&w->rng) % o->ndomains];
		unsigned long long k = (seq * (uint64_t)o->rcpts + (uint64_t)j) % 100000;
		snprintf(c->rcpt + (size_t)j * c->rslot, c->rslot, "user%llu@%s", k, dom);
	}
	c->msgidlen = (size_t)snprintf(c->msgid, sizeof(c->msgid), "<%s.%llu@kumo-bench.invalid>",
				       w->run->nonce, (unsigned long long)seq);
	len = put(c->hdr, c->hdrcap, len, "From: kumo-bench <%s>\r\nTo: ", o->from);
	for (int j = 0; j < o->rcpts; j++)
		len = put(c->hdr, c->hdrcap, len, "%s%s", j ? ",\r\n " : "",
			  c->rcpt + (size_t)j * c->rslot);
	len = put(c->hdr, c->hdrcap, len,
		  "\r\nSubject: kumo-bench message %llu\r\n"
		  "Date: %s\r\n"
		  "Message-ID: %s\r\n"
		  "MIME-Version: 1.0\r\n"
		  "Content-Type: text/plain; charset=us-ascii\r\n"
		  "Content-Transfer-Encoding: 7bit\r\n"
		  "\r\n",
		  (unsigned long long)seq, w->date, c->msgid);
	c->hdrlen = len;
}

/* ---- connection plumbing ---- */

static void xpush(struct conn *c, enum expect x)
{
	c->xq[(c->xhead + c->xlen) % c->xcap] = (uint8_t)x;
	c->xlen++;
}

static enum expect xpop(struct conn *c)
{
	enum expect x = (enum expect)c->xq[c->xhead];

	c->xhead = (c->xhead + 1) % c->xcap;
	c->xlen--;
	return x;
}

static void conn_error_msg(struct conn *c, const char *what, int err)
{
	struct worker *w = c->w;

	if (atomic_load_explicit(&w->run->stop, memory_order_relaxed))
		return;
	if (w->errors_shown++ < ERRORS_SHOWN)
		fprintf(stderr, "kumo-bench inject: thread %d connection %d: %s%s%s\n", w->id,
			(int)(c - w->conns), what, err ? ": " : "", err ? strerror(err) : "");
}

/* Is there work left for a reconnected connection? */
static bool work_left(struct run *r)
{
	const struct inject_opts *o = r->o;

	if (atomic_load(&r->stop))
		return false;
	if (r->end_ns != 0 && bench_now_ns() >= r->end_ns)
		return false;
	return o->messages == 0 || atomic_load(&r->next_seq) < o->messages;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->rlen = 0;
	c->replylen = 0;
	c->xhead = c->xlen = 0;
	c->nout = c->outi = 0;
	c->need_rset = false;
}

static void conn_finish(struct conn *c)
{
	conn_close(c);
	c->st = C_DONE;
	c->w->live--;
}

/* A connection failed: count it, lose its message in flight, reconnect or end. Returns -1. */
static int conn_fail(struct conn *c, const char *what, int err)
{
	struct worker *w = c->w;

	conn_error_msg(c, what, err);
	w->conn_errors++;
	if (c->in_msg) {
		w->unanswered++;
		c->in_msg = false;
	}
	conn_close(c);
	if (!work_left(w->run)) {
		c->st = C_DONE;
		w->live--;
	} else if (c->reconnects < w->run->o->max_reconnects) {
		c->reconnects++;
		c->st = C_WAIT;
		c->deadline_ns = bench_now_ns() + RECONNECT_NS;
	} else {
		c->st = C_DONE;
		w->live--;
		w->gave_up++;
	}
	return -1;
}

/* Write pending output. Returns 0 (done or waiting for EPOLLOUT) or -1 if the conn failed. */
static int conn_flush(struct conn *c)
{
	while (c->outi < c->nout) {
		struct msghdr mh = {0};
		ssize_t n;

		mh.msg_iov = c->out + c->outi;
		mh.msg_iovlen = (size_t)(c->nout - c->outi);
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return conn_fail(c, "write", errno);
		}
		while (n > 0 && c->outi < c->nout) {
			struct iovec *v = &c->out[c->outi];
			if ((size_t)n >= v->iov_len) {
				n -= (ssize_t)v->iov_len;
				c->outi++;
			} else {
				v->iov_base = (char *)v->iov_base + n;
				v->iov_len -= (size_t)n;
				n = 0;
			}
		}
	}
	c->nout = c->outi = 0;
	return 0;
}

/* Queue up to two segments and try to write them. */
static int conn_send(struct conn *c, const void *a, size_t alen, const void *b, size_t blen)
{
	if (c->outi < c->nout)
		return conn_fail(c, "protocol: reply before our command was written", 0);
	c->nout = c->outi = 0;
	c->out[c->nout++] = (struct iovec){(void *)a, alen};
	if (blen > 0)
		c->out[c->nout++] = (struct iovec){(void *)b, blen};
	c->deadline_ns = bench_now_ns() + c->w->run->o->timeout_ms * 1000000ULL;
	return conn_flush(c);
}

static int conn_send_cmd(struct conn *c, const char *line, enum expect x)
{
	c->cmdlen = (size_t)snprintf(c->cmd, c->cmdcap, "%s\r\n", line);
	xpush(c, x);
	return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
}

static void put_mail(struct conn *c)
{
	const struct inject_opts *o = c->w->run->o;

	c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, "MAIL FROM:<%s>", o->from);
	if (c->srv_size)
		c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, " SIZE=%zu",
				c->hdrlen + c->w->run->body_bytes);
	c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, "\r\n");
	xpush(c, X_MAIL);
}

static void put_rcpt(struct conn *c)
{
	c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, "RCPT TO:<%s>\r\n",
			c->rcpt + (size_t)c->nrcpt_sent * c->rslot);
	c->nrcpt_sent++;
	xpush(c, X_RCPT);
}

/* Start the next message, or QUIT when there is none left. */
static int start_message(struct conn *c)
{
	struct worker *w = c->w;
	struct run *r = w->run;
	uint64_t seq;

	if (r->end_ns != 0 && bench_now_ns() >= r->end_ns)
		return conn_send_cmd(c, "QUIT", X_QUIT);
	seq = atomic_fetch_add_explicit(&r->next_seq, 1, memory_order_relaxed);
	if (r->o->messages != 0 && seq >= r->o->messages)
		return conn_send_cmd(c, "QUIT", X_QUIT);

	build_message(c, seq);
	c->in_msg = true;
	c->seq = seq;
	c->nrcpt_sent = 0;
	c->rcpt_ok = c->rcpt_temp = c->rcpt_perm = 0;
	c->mail_code = 0;
	c->void_data = false;
	w->attempted++;

	c->cmdlen = 0;
	if (c->need_rset) {
		c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, "RSET\r\n");
		xpush(c, X_RSET);
		c->need_rset = false;
		if (!c->pipelining) {
			/* Without pipelining, RSET is its own round trip; MAIL follows its reply.
			 */
			c->t0 = bench_now_ns();
			return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
		}
	}
	put_mail(c);
	if (c->pipelining) {
		while (c->nrcpt_sent < r->o->rcpts)
			put_rcpt(c);
		c->cmdlen = put(c->cmd, c->cmdcap, c->cmdlen, "DATA\r\n");
		xpush(c, X_DATA);
	}
	c->t0 = bench_now_ns();
	return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
}

static void record_latency(struct worker *w, uint64_t ns)
{
	uint64_t us = ns / 1000;

	if (w->nlat == w->latcap) {
		size_t cap = w->latcap ? w->latcap * 2 : 65536;
		uint32_t *p = realloc(w->lat, cap * sizeof(*p));
		if (p == NULL)
			return;
		w->lat = p;
		w->latcap = cap;
	}
	w->lat[w->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* The message in flight got its answer: count it and start the next one. */
static int finish_message(struct conn *c, enum outcome out)
{
	struct worker *w = c->w;

	record_latency(w, bench_now_ns() - c->t0);
	c->in_msg = false;
	switch (out) {
	case O_ACCEPTED:
		w->accepted++;
		w->accepted_bytes += c->hdrlen + w->run->body_bytes;
		break;
	case O_TEMP:
		w->tempfail++;
		c->need_rset = true;
		break;
	case O_PERM:
		w->permfail++;
		c->need_rset = true;
		break;
	}
	return start_message(c);
}

static enum outcome class_of(int code)
{
	if (code >= 200 && code < 300)
		return O_ACCEPTED;
	return code >= 500 ? O_PERM : O_TEMP;
}

/* The outcome of a transaction that never reached the data. */
static enum outcome early_failure(struct conn *c, int code)
{
	if (c->mail_code < 200 || c->mail_code >= 300)
		return class_of(c->mail_code) == O_PERM ? O_PERM : O_TEMP;
	if (c->rcpt_ok == 0)
		return c->rcpt_temp > 0 ? O_TEMP : O_PERM;
	return class_of(code) == O_PERM ? O_PERM : O_TEMP;
}

/*
 * A 421 reply: the server is closing the connection (RFC 5321 3.8), whatever else was
 * pipelined behind the command it answered. The message in flight was answered, with a
 * temporary failure; the connection ends like any other closed one (reconnect or give up)
 * without waiting for the end of stream or for replies that will not come.
 */
static int server_closing(struct conn *c)
{
	struct worker *w = c->w;
	char what[128];

	if (c->in_msg) {
		record_latency(w, bench_now_ns() - c->t0);
		w->tempfail++;
		c->in_msg = false;
	}
	snprintf(what, sizeof(what), "server closing the connection: %.*s",
		 (int)(c->replylen < 96 ? c->replylen : 96), c->reply);
	return conn_fail(c, what, 0);
}

/* One complete reply arrived for what x expected. Returns -1 if the conn failed or ended. */
static int on_reply(struct conn *c, enum expect x, int code)
{
	struct worker *w = c->w;
	const struct inject_opts *o = w->run->o;
	bool ok = code >= 200 && code < 300;

	if (code == 421 && x != X_QUIT)
		return server_closing(c);
	switch (x) {
	case X_GREETING:
		if (!ok)
			return conn_fail(c, "greeting refused", 0);
		c->srv_pipelining = c->srv_size = false;
		c->cmdlen = (size_t)snprintf(c->cmd, c->cmdcap, "EHLO %s\r\n", o->helo);
		xpush(c, X_EHLO);
		return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
	case X_EHLO:
		if (!ok) {
			c->cmdlen = (size_t)snprintf(c->cmd, c->cmdcap, "HELO %s\r\n", o->helo);
			xpush(c, X_HELO);
			return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
		}
		c->pipelining = c->srv_pipelining && !o->no_pipelining;
		if (c->pipelining)
			atomic_store_explicit(&w->run->used_pipelining, true, memory_order_relaxed);
		return start_message(c);
	case X_HELO:
		if (!ok)
			return conn_fail(c, "HELO refused", 0);
		c->pipelining = false;
		c->srv_size = false;
		return start_message(c);
	case X_RSET:
		if (!c->pipelining) {
			c->cmdlen = 0;
			put_mail(c);
			return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
		}
		return 0;
	case X_MAIL:
		c->mail_code = code;
		if (c->pipelining)
			return 0;
		if (!ok)
			return finish_message(c, early_failure(c, code));
		c->cmdlen = 0;
		put_rcpt(c);
		return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
	case X_RCPT:
		if (ok)
			c->rcpt_ok++;
		else if (code >= 500)
			c->rcpt_perm++;
		else
			c->rcpt_temp++;
		if (c->pipelining)
			return 0;
		c->cmdlen = 0;
		if (c->nrcpt_sent < o->rcpts) {
			put_rcpt(c);
			return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
		}
		if (c->rcpt_ok == 0)
			return finish_message(c, early_failure(c, code));
		c->cmdlen = put(c->cmd, c->cmdcap, 0, "DATA\r\n");
		xpush(c, X_DATA);
		return conn_send(c, c->cmd, c->cmdlen, NULL, 0);
	case X_DATA:
		if (code != 354)
			return finish_message(c, early_failure(c, code));
		xpush(c, X_FINAL);
		if (c->mail_code < 200 || c->mail_code >= 300 || c->rcpt_ok == 0) {
			/* RFC 2920: DATA was accepted after every recipient failed; end it empty.
			 */
			c->void_data = true;
			return conn_send(c, ".\r\n", 3, NULL, 0);
		}
		return conn_send(c, c->hdr, c->hdrlen, w->run->body, w->run->body_wire);
	case X_FINAL:
		if (c->void_data)
			return finish_message(c, early_failure(c, code));
		if (ok)
			bench_log_line(&w->alog, c->msgid, c->msgidlen, c->reply, c->replylen);
		return finish_message(c, class_of(code));
	case X_QUIT:
		conn_finish(c);
		return -1;
	}
	return 0;
}

/* Check an EHLO reply line (text after the code) for the extensions we use. */
static void ehlo_line(struct conn *c, const char *t, size_t len)
{
	if (bench_has_prefix(t, len, "PIPELINING") && (len == 10 || t[10] == ' '))
		c->srv_pipelining = true;
	else if (bench_has_prefix(t, len, "SIZE") && (len == 4 || t[4] == ' '))
		c->srv_size = true;
}

/* Split buffered input into reply lines and complete replies. */
static int conn_parse(struct conn *c)
{
	char *p = c->rbuf, *end = c->rbuf + c->rlen;

	for (;;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len;
		bool more;
		int code;

		if (nl == NULL)
			break;
		len = (size_t)(nl - p);
		if (len > 0 && p[len - 1] == '\r')
			len--;
		if (len < 3 || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]) ||
		    !isdigit((unsigned char)p[2]) || (len > 3 && p[3] != ' ' && p[3] != '-'))
			return conn_fail(c, "protocol: malformed reply line", 0);
		if (c->xlen == 0)
			return conn_fail(c, "protocol: unexpected reply", 0);
		more = len > 3 && p[3] == '-';
		code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
		if (c->xq[c->xhead] == X_EHLO && len > 4)
			ehlo_line(c, p + 4, len - 4);
		if (c->replylen > 0 && c->replylen < REPLY_MAX)
			c->reply[c->replylen++] = ' ';
		if (c->replylen + len > REPLY_MAX)
			len = REPLY_MAX - c->replylen;
		memcpy(c->reply + c->replylen, p, len);
		c->replylen += len;
		p = nl + 1;
		if (!more) {
			int rc = on_reply(c, xpop(c), code);
			if (rc < 0)
				return -1;
			c->replylen = 0;
		}
	}
	c->rlen = (size_t)(end - p);
	if (c->rlen > 0 && p != c->rbuf)
		memmove(c->rbuf, p, c->rlen);
	if (c->rlen == RBUF_SIZE)
		return conn_fail(c, "protocol: reply line too long", 0);
	return 0;
}

/*
 * Read and parse until the socket is drained. A short read means drained, and
 * edge-triggered epoll reports whatever arrives later, except when the event already said
 * the peer hung up: the end of stream came with this edge and is seen only by reading on
 * to it, so then read until recv returns 0 or EAGAIN.
 */
static int conn_read(struct conn *c, bool hup)
{
	for (;;) {
		size_t room = RBUF_SIZE - c->rlen;
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, room, 0);

		if (n > 0) {
			c->rlen += (size_t)n;
			c->deadline_ns = bench_now_ns() + c->w->run->o->timeout_ms * 1000000ULL;
			if (conn_parse(c) < 0)
				return -1;
			if ((size_t)n < room && !hup)
				return 0;
			continue;
		}
		if (n == 0) {
			if (c->xlen > 0 && c->xq[c->xhead] == X_QUIT && !c->in_msg) {
				conn_finish(c);
				return -1;
			}
			return conn_fail(c, "connection closed by server", 0);
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return 0;
		return conn_fail(c, "read", errno);
	}
}

static int conn_connect(struct conn *c)
{
	struct worker *w = c->w;
	struct run *r = w->run;
	struct epoll_event ev = {0};
	int one = 1;

	c->fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return conn_fail(c, "socket", errno);
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (struct sockaddr *)&r->addr, r->addrlen) < 0 && errno != EINPROGRESS)
		return conn_fail(c, "connect", errno);
	c->st = C_CONNECTING;
	c->deadline_ns = bench_now_ns() + r->o->timeout_ms * 1000000ULL;
	xpush(c, X_GREETING);
	ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return conn_fail(c, "epoll_ctl", errno);
	return 0;
}

static void conn_event(struct conn *c, uint32_t events)
{
	if (c->st == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0) {
			conn_fail(c, "connect", err);
			return;
		}
		c->st = C_OPEN;
	}
	if (c->st != C_OPEN)
		return;
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
		if (conn_read(c, (events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) < 0)
			return;
	}
	if ((events & EPOLLOUT) && c->outi < c->nout)
		conn_flush(c);
}

/* Reconnect waiting connections and time out stalled ones. */
static void scan_timers(struct worker *w, uint64_t now)
{
	for (int i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		if (c->st == C_WAIT && now >= c->deadline_ns) {
			if (work_left(w->run))
				conn_connect(c);
			else
				conn_finish(c);
		} else if ((c->st == C_CONNECTING || c->st == C_OPEN) && now >= c->deadline_ns) {
			conn_fail(c, "timed out waiting for the server", 0);
		}
	}
}

static void abandon_all(struct worker *w)
{
	for (int i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];

		if (c->in_msg) {
			w->unanswered++;
			c->in_msg = false;
		}
		if (c->st != C_DONE)
			conn_finish(c);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct run *r = w->run;
	struct epoll_event evs[MAX_EVENTS];
	uint64_t next_tick = bench_now_ns() + TICK_NS;

	for (int i = 0; i < w->nconns; i++)
		conn_connect(&w->conns[i]);
	while (w->live > 0) {
		int n = epoll_wait(w->epfd, evs, MAX_EVENTS, 20);
		uint64_t now;

		if (atomic_load_explicit(&r->stop, memory_order_relaxed)) {
			abandon_all(w);
			break;
		}
		for (int i = 0; i < n; i++)
			conn_event(evs[i].data.ptr, evs[i].events);
		now = bench_now_ns();
		if (now >= next_tick) {
			scan_timers(w, now);
			if (w->alog.len > 0 && now - w->alog.last_ns >= 1000000000ULL)
				bench_log_flush(&w->alog);
			next_tick = now + TICK_NS;
		}
	}
	w->end_ns = bench_now_ns();
	bench_log_fini(&w->alog);
	atomic_fetch_add(&r->finished, 1);
	return NULL;
}

/* ---- setup and report ---- */

static int add_domains(struct inject_opts *o, const char *list, char sep)
{
	const char *p = list;

	while (*p != '\0') {
		const char *e = strchr(p, sep);
		size_t len = e ? (size_t)(e - p) : strlen(p);
		const char *s = p, *t = p + len;
		char **d;

		p = e ? e + 1 : p + len;
		while (s < t && isspace((unsigned char)*s))
			s++;
		while (t > s && isspace((unsigned char)t[-1]))
			t--;
		if (s == t || *s == '#')
			continue;
		d = realloc(o->domains, (o->ndomains + 1) * sizeof(*d));
		if (d == NULL)
			return -1;
		o->domains = d;
		o->domains[o->ndomains] = strndup(s, (size_t)(t - s));
		if (o->domains[o->ndomains] == NULL)
			return -1;
		if ((size_t)(t - s) > o->domain_max)
			o->domain_max = (size_t)(t - s);
		o->ndomains++;
	}
	return 0;
}

static int read_domains_file(struct inject_opts *o, const char *path)
{
	FILE *f = fopen(path, "r");
	char *text = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;

	if (f == NULL) {
		fprintf(stderr, "kumo-bench inject: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	while ((n = getline(&text, &cap, f)) >= 0 && rc == 0)
		rc = add_domains(o, text, '\n');
	free(text);
	fclose(f);
	return rc;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted latencies, in milliseconds. */
static double pct_ms(const uint32_t *v, size_t n, double p)
{
	size_t rank;

	if (n == 0)
		return 0;
	rank = (size_t)ceil(p * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1] / 1000.0;
}

struct totals {
	uint64_t attempted, accepted, tempfail, permfail, unanswered, conn_errors, gave_up, bytes;
	double elapsed, p50, p99, p999, max;
};

static void report(const struct inject_opts *o, const struct run *r, const struct totals *t,
		   bool interrupted)
{
	double mps = t->elapsed > 0 ? (double)t->accepted / t->elapsed : 0;
	double mbps = t->elapsed > 0 ? (double)t->bytes / t->elapsed / 1e6 : 0;
	bool pipe = atomic_load(&r->used_pipelining);

	if (o->json) {
		printf("{\"host\":");
		bench_json_str(stdout, o->host);
		printf(",\"port\":%d,\"connections\":%d,\"threads\":%d,\"size\":%llu,"
		       "\"message_bytes\":%zu,\"rcpts_per_msg\":%d,\"pipelining\":%s,"
		       "\"attempted\":%llu,\"accepted\":%llu,\"temp_failed\":%llu,"
		       "\"perm_failed\":%llu,\"unanswered\":%llu,\"conn_errors\":%llu,"
		       "\"conns_gave_up\":%llu,\"interrupted\":%s,\"elapsed_s\":%.3f,"
		       "\"msg_per_s\":%.1f,\"msg_per_hour\":%.0f,\"mb_per_s\":%.2f,"
		       "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
		       "\"start_mono\":%.6f,\"end_mono\":%.6f}\n",
		       o->port, o->conns, o->threads, (unsigned long long)o->size,
		       (size_t)(t->accepted ? t->bytes / t->accepted : 0), o->rcpts,
		       pipe ? "true" : "false", (unsigned long long)t->attempted,
		       (unsigned long long)t->accepted, (unsigned long long)t->tempfail,
		       (unsigned long long)t->permfail, (unsigned long long)t->unanswered,
		       (unsigned long long)t->conn_errors, (unsigned long long)t->gave_up,
		       interrupted ? "true" : "false", t->elapsed, mps, mps * 3600, mbps, t->p50,
		       t->p99, t->p999, t->max, (double)r->start_ns / 1e9,
		       (double)r->start_ns / 1e9 + t->elapsed);
		return;
	}
	printf("kumo-bench inject: %s:%d, %d connections, %d threads, %llu-byte messages, %s%s\n",
	       o->host, o->port, o->conns, o->threads, (unsigned long long)o->size,
	       pipe ? "pipelining" : "no pipelining", interrupted ? ", interrupted" : "");
	printf("  messages:    %llu attempted, %llu accepted, %llu temp-failed, %llu perm-failed,"
	       " %llu unanswered\n",
	       (unsigned long long)t->attempted, (unsigned long long)t->accepted,
	       (unsigned long long)t->tempfail, (unsigned long long)t->permfail,
	       (unsigned long long)t->unanswered);
	printf("  connections: %llu errors, %llu gave up\n", (unsigned long long)t->conn_errors,
	       (unsigned long long)t->gave_up);
	printf("  elapsed:     %.3f s\n", t->elapsed);
	printf("  throughput:  %.1f msg/s, %.0f msg/hour, %.2f MB/s\n", mps, mps * 3600, mbps);
	printf("  latency:     p50 %.3f ms, p99 %.3f ms, p999 %.3f ms, max %.3f ms\n", t->p50,
	       t->p99, t->p999, t->max);
}

enum {
	OPT_HOST = 256,
	OPT_PORT,
	OPT_THREADS,
	OPT_DOMAINS,
	OPT_DOMAINS_FILE,
	OPT_FROM,
	OPT_RCPTS,
	OPT_ACCEPTED_LOG,
	OPT_NO_PIPELINING,
	OPT_JSON,
	OPT_DURATION,
	OPT_TIMEOUT,
	OPT_MAX_RECONNECTS,
	OPT_HELO,
};

static const struct option long_opts[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"messages", required_argument, NULL, 'n'},
    {"size", required_argument, NULL, 's'},
    {"connections", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"domains", required_argument, NULL, OPT_DOMAINS},
    {"domains-file", required_argument, NULL, OPT_DOMAINS_FILE},
    {"from", required_argument, NULL, OPT_FROM},
    {"rcpts-per-msg", required_argument, NULL, OPT_RCPTS},
    {"accepted-log", required_argument, NULL, OPT_ACCEPTED_LOG},
    {"no-pipelining", no_argument, NULL, OPT_NO_PIPELINING},
    {"json", no_argument, NULL, OPT_JSON},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"max-reconnects", required_argument, NULL, OPT_MAX_RECONNECTS},
    {"helo", required_argument, NULL, OPT_HELO},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int bad(const char *opt, const char *val)
{
	fprintf(stderr, "kumo-bench inject: bad value for %s: '%s'\n", opt, val);
	return BENCH_EXIT_USAGE;
}

static int parse_opts(struct inject_opts *o, int argc, char **argv)
{
	bool have_n = false, have_domains = false;
	uint64_t v;
	int ch;

	*o = (struct inject_opts){
	    .host = "127.0.0.1",
	    .port = 25,
	    .messages = 10000,
	    .size = 10240,
	    .conns = 10,
	    .threads = 0,
	    .from = "bench@example.org",
	    .rcpts = 1,
	    .helo = "kumo-bench.invalid",
	    .timeout_ms = 30000,
	};
	while ((ch = getopt_long(argc, argv, "n:s:c:h", long_opts, NULL)) != -1) {
		switch (ch) {
		case OPT_HOST:
			o->host = optarg;
			break;
		case OPT_PORT:
			if (bench_parse_u64(optarg, 1, 65535, &v) < 0)
				return bad("--port", optarg);
			o->port = (int)v;
			break;
		case 'n':
			if (bench_parse_u64(optarg, 0, UINT64_MAX / 2, &o->messages) < 0)
				return bad("-n", optarg);
			have_n = true;
			break;
		case 's':
			if (bench_parse_u64(optarg, 1, 1ULL << 32, &o->size) < 0)
				return bad("-s", optarg);
			break;
		case 'c':
			if (bench_parse_u64(optarg, 1, 100000, &v) < 0)
				return bad("-c", optarg);
			o->conns = (int)v;
			break;
		case OPT_THREADS:
			if (bench_parse_u64(optarg, 1, 1024, &v) < 0)
				return bad("--threads", optarg);
			o->threads = (int)v;
			break;
		case OPT_DOMAINS:
			if (add_domains(o, optarg, ',') < 0)
				return bad("--domains", optarg);
			have_domains = true;
			break;
		case OPT_DOMAINS_FILE:
			if (read_domains_file(o, optarg) < 0)
				return BENCH_EXIT_USAGE;
			have_domains = true;
			break;
		case OPT_FROM:
			o->from = optarg;
			break;
		case OPT_RCPTS:
			if (bench_parse_u64(optarg, 1, 10000, &v) < 0)
				return bad("--rcpts-per-msg", optarg);
			o->rcpts = (int)v;
			break;
		case OPT_ACCEPTED_LOG:
			o->accepted_log = optarg;
			break;
		case OPT_NO_PIPELINING:
			o->no_pipelining = true;
			break;
		case OPT_JSON:
			o->json = true;
			break;
		case OPT_DURATION:
			if (bench_parse_double(optarg, 0.001, 1e9, &o->duration) < 0)
				return bad("--duration", optarg);
			break;
		case OPT_TIMEOUT:
			if (bench_parse_u64(optarg, 1, 86400000, &o->timeout_ms) < 0)
				return bad("--timeout-ms", optarg);
			break;
		case OPT_MAX_RECONNECTS:
			if (bench_parse_u64(optarg, 0, UINT32_MAX, &o->max_reconnects) < 0)
				return bad("--max-reconnects", optarg);
			break;
		case OPT_HELO:
			o->helo = optarg;
			break;
		case 'h':
			bench_inject_usage(stdout);
			exit(0);
		default:
			bench_inject_usage(stderr);
			return BENCH_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kumo-bench inject: unexpected argument '%s'\n", argv[optind]);
		return BENCH_EXIT_USAGE;
	}
	if (!have_domains && add_domains(o, "example.com", ',') < 0)
		return BENCH_EXIT_USAGE;
	if (o->ndomains == 0) {
		fprintf(stderr, "kumo-bench inject: no recipient domains given\n");
		return BENCH_EXIT_USAGE;
	}
	if (strpbrk(o->from, "<>\r\n ") != NULL || strlen(o->from) > 256)
		return bad("--from", o->from);
	if (strpbrk(o->helo, "\r\n ") != NULL || strlen(o->helo) > 256)
		return bad("--helo", o->helo);
	if (o->duration > 0 && !have_n)
		o->messages = 0;
	if (o->messages == 0 && o->duration <= 0) {
		fprintf(stderr, "kumo-bench inject: -n 0 needs --duration\n");
		return BENCH_EXIT_USAGE;
	}
	if (o->threads == 0)
		o->threads = bench_default_threads(2);
	if (o->threads > o->conns)
		o->threads = o->conns;
	return 0;
}

static int conn_init(struct conn *c, struct worker *w, const struct inject_opts *o)
{
	memset(c, 0, sizeof(*c));
	c->w = w;
	c->fd = -1;
	c->st = C_WAIT;
	c->xcap = o->rcpts + 8;
	c->xq = malloc((size_t)c->xcap);
	c->rslot = LOCAL_MAX + o->domain_max + 2;
	c->rcpt = malloc((size_t)o->rcpts * c->rslot);
	c->cmdcap = 64 + strlen(o->from) + strlen(o->helo) + (size_t)o->rcpts * (c->rslot + 16);
	c->cmd = malloc(c->cmdcap);
	c->hdrcap = 512 + strlen(o->from) + (size_t)o->rcpts * (c->rslot + 4);
	c->hdr = malloc(c->hdrcap);
	return c->xq && c->rcpt && c->cmd && c->hdr ? 0 : -1;
}

int bench_inject_main(int argc, char **argv)
{
	struct inject_opts o;
	struct run r = {0};
	struct worker *ws;
	struct totals t = {0};
	uint32_t *lat;
	size_t nlat = 0, hdr_est, lines;
	char *body;
	sigset_t sigs;
	bool interrupted = false;
	uint64_t end = 0;
	int rc;

	rc = parse_opts(&o, argc, argv);
	if (rc != 0)
		return rc;
	r.o = &o;
	r.log_fd = -1;
	if (bench_resolve(o.host, o.port, &r.addr, &r.addrlen) < 0)
		return 1;
	snprintf(r.nonce, sizeof(r.nonce), "%016llx", (unsigned long long)bench_random_seed());

	/* Size the body so that headers plus body come to -s bytes, to within a line. */
	{
		struct worker probe = {.run = &r};
		struct conn pc;

		if (conn_init(&pc, &probe, &o) < 0)
			return 1;
		build_message(&pc, 1000000);
		hdr_est = pc.hdrlen;
		free(pc.xq);
		free(pc.rcpt);
		free(pc.cmd);
		free(pc.hdr);
	}
	lines = o.size > hdr_est ? (o.size - hdr_est + (BODY_LINE + 2) / 2) / (BODY_LINE + 2) : 0;
	if (lines == 0)
		lines = 1;
	body = make_body(lines, &r.body_wire, &r.body_bytes);
	if (body == NULL)
		return 1;
	r.body = body;

	if (o.accepted_log != NULL) {
		r.log_fd = bench_log_open_fd(o.accepted_log);
		if (r.log_fd < 0)
			return 1;
	}

	bench_block_signals(&sigs);
	ws = calloc((size_t)o.threads, sizeof(*ws));
	if (ws == NULL)
		return 1;
	r.start_ns = bench_now_ns();
	if (o.duration > 0)
		r.end_ns = r.start_ns + (uint64_t)(o.duration * 1e9);
	for (int i = 0; i < o.threads; i++) {
		struct worker *w = &ws[i];

		w->run = &r;
		w->id = i;
		w->nconns = o.conns / o.threads + (i < o.conns % o.threads);
		w->live = w->nconns;
		w->conns = calloc((size_t)w->nconns, sizeof(*w->conns));
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		bench_rng_seed(&w->rng, bench_random_seed() + (uint64_t)i);
		if (w->conns == NULL || w->epfd < 0 ||
		    bench_log_init(&w->alog, r.log_fd, 256 * 1024) < 0) {
			fprintf(stderr, "kumo-bench inject: out of memory\n");
			return 1;
		}
		for (int j = 0; j < w->nconns; j++)
			if (conn_init(&w->conns[j], w, &o) < 0) {
				fprintf(stderr, "kumo-bench inject: out of memory\n");
				return 1;
			}
		if (o.messages != 0) {
			w->latcap = (size_t)(o.messages / (uint64_t)o.threads) + 1024;
			w->lat = malloc(w->latcap * sizeof(*w->lat));
			if (w->lat == NULL)
				w->latcap = 0;
		}
	}
	for (int i = 0; i < o.threads; i++) {
		if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, "kumo-bench inject: cannot start threads\n");
			return 1;
		}
	}

	/* Wait for the workers, or a signal that ends the run early. */
	while (atomic_load(&r.finished) < o.threads) {
		if (bench_wait_signal(&sigs, 50) != 0 && !interrupted) {
			interrupted = true;
			atomic_store(&r.stop, true);
		}
	}
	for (int i = 0; i < o.threads; i++)
		pthread_join(ws[i].tid, NULL);

	for (int i = 0; i < o.threads; i++) {
		struct worker *w = &ws[i];

		t.attempted += w->attempted;
		t.accepted += w->accepted;
		t.tempfail += w->tempfail;
		t.permfail += w->permfail;
		t.unanswered += w->unanswered;
		t.conn_errors += w->conn_errors;
		t.gave_up += w->gave_up;
		t.bytes += w->accepted_bytes;
		nlat += w->nlat;
		if (w->end_ns > end)
			end = w->end_ns;
		if (w->alog.err != 0 && rc == 0) {
			fprintf(stderr, "kumo-bench inject: writing %s: %s\n", o.accepted_log,
				strerror(w->alog.err));
			rc = 1;
		}
	}
	t.elapsed = (double)(end - r.start_ns) / 1e9;
	lat = malloc((nlat ? nlat : 1) * sizeof(*lat));
	if (lat != NULL) {
		size_t k = 0;

		for (int i = 0; i < o.threads; i++) {
			memcpy(lat + k, ws[i].lat, ws[i].nlat * sizeof(*lat));
			k += ws[i].nlat;
		}
		qsort(lat, nlat, sizeof(*lat), cmp_u32);
		t.p50 = pct_ms(lat, nlat, 0.50);
		t.p99 = pct_ms(lat, nlat, 0.99);
		t.p999 = pct_ms(lat, nlat, 0.999);
		t.max = nlat ? lat[nlat - 1] / 1000.0 : 0;
	}
	report(&o, &r, &t, interrupted);
	fflush(stdout);
	if (r.log_fd >= 0 && close(r.log_fd) < 0 && rc == 0)
		rc = 1;
	if (interrupted || t.gave_up > 0 || t.unanswered > 0)
		rc = 1;
	return rc;
}
