/* kumo-bench sink: a fast SMTP server for benchmarks and tests. The main thread accepts and
 * hands connections round-robin to worker threads, each an epoll loop over non-blocking
 * sockets; it accepts everything, or fails, delays or drops a configured share. */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define RBUF_SIZE 65536	      /* input buffer; also the longest command line */
#define WBUF_HIGH 65536	      /* stop reading commands while this much output is pending */
#define HDR_MAX 16384	      /* header bytes kept to find the Message-ID (with --record) */
#define MAX_EVENTS 256	      /* epoll events per wait */
#define MAX_SIZE 157286400ULL /* advertised SIZE limit */
#define SEC_NS 1000000000ULL

struct sink_opts {
	char *host;
	int port;
	int threads;
	double temp_pct;
	double perm_pct;
	double drop_pct;
	uint64_t latency_ms;
	double stats_interval; /* seconds; 0: no periodic stats */
	bool json;
	uint64_t max_messages; /* 0: no limit */
	const char *record;
	const char *name; /* host name in the greeting */
};

/* Counters of one worker: written only by it, read by the main thread for stats. */
struct counters {
	atomic_uint_fast64_t messages;
	atomic_uint_fast64_t rcpts;
	atomic_uint_fast64_t bytes;
	atomic_uint_fast64_t rcpt_temp;
	atomic_uint_fast64_t rcpt_perm;
	atomic_uint_fast64_t dropped;
	atomic_uint_fast64_t conns;
	atomic_uint_fast64_t first_ns; /* first MAIL seen, 0 if none yet */
	atomic_uint_fast64_t last_ns;  /* last message accepted */
};

struct sink {
	const struct sink_opts *o;
	atomic_bool stop;	    /* signal, or --max-messages reached */
	atomic_uint_fast64_t total; /* messages accepted by all workers (--max-messages) */
	int record_fd;		    /* --record, -1 if none */
	uint64_t start_ns;
};

enum sstate {
	S_CMD,	   /* reading command lines */
	S_DATA,	   /* reading DATA content up to CRLF.CRLF */
	S_BDAT,	   /* reading a BDAT chunk of known size */
	S_WAIT,	   /* holding the final reply for --latency-ms */
	S_CLOSING, /* QUIT answered; close once output is written */
};

struct sworker;

struct sconn {
	struct sworker *w;
	int fd;
	enum sstate st;
	bool drained;	/* the last read emptied the socket */
	bool hup;	/* epoll reported the peer's end of stream: read on until recv says 0 */
	bool skip_line; /* discarding the rest of an overlong line */

	char *rbuf;
	size_t rpos, rlen;
	char *wbuf;
	size_t wpos, wlen, wcap;

	/* the transaction */
	bool mail;
	bool bdat;	/* the message is arriving by BDAT chunks */
	bool bdat_last; /* the current chunk is the LAST one */
	int bdat_err;	/* reply code owed after a refused chunk, 0 if none */
	uint64_t bdat_left;
	int nrcpt; /* accepted recipients */
	bool drop; /* close the connection when the content starts */
	int dfa;   /* bytes of "\r\n.\r\n" matched at the end of what was scanned */
	uint64_t msgbytes;
	char *rcpts; /* accepted recipients, NUL-separated (with --record) */
	size_t rcptlen, rcptcap;
	char *hdr; /* start of the content (with --record) */
	size_t hdrlen;
	bool hdr_done;

	uint64_t wait_until;
	struct sconn *wnext; /* FIFO of connections in S_WAIT */
};

struct sworker {
	struct sink *s;
	int id;
	pthread_t tid;
	int epfd;
	int pipefd[2]; /* new connections (an int fd each) and -1 to stop */
	struct bench_rng rng;
	struct bench_log rec;
	struct counters c;
	struct sconn *whead, *wtail;
	uint64_t qid;
	int nconns;
};

static const char usage_text[] =
    "usage: kumo-bench sink [options]\n"
    "  --listen HOST:PORT     address to listen on (default 127.0.0.1:2626; port 0\n"
    "                         picks a free port, printed on stderr)\n"
    "  --threads T            worker threads (default: min(2, CPUs))\n"
    "  --tempfail-pct P       answer this share of recipients 451 4.3.0\n"
    "  --permfail-pct P       answer this share of recipients 550 5.1.1\n"
    "  --latency-ms MS        wait this long before the final reply to a message\n"
    "  --drop-pct P           close the connection as this share of messages' content\n"
    "                         starts to arrive, without a reply\n"
    "  --stats-interval S     print a stats line on stderr every S seconds (default 1\n"
    "                         when stderr is a terminal, else 0: none)\n"
    "  --max-messages N       stop after accepting N messages\n"
    "  --record FILE          append \"<Message-ID> <recipient>\" for each accepted\n"
    "                         recipient (flushed every second and on exit)\n"
    "  --name NAME            host name in the greeting (default kumo-bench)\n"
    "  --json                 print the final summary as one JSON object\n"
    "Stops on SIGINT or SIGTERM, printing a summary on stdout.\n";

void bench_sink_usage(FILE *f)
{
	fputs(usage_text, f);
}

static inline void add(atomic_uint_fast64_t *a, uint64_t d)
{
	/* Only the owning thread writes, so a plain load and store suffice. */
	atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + d,
			      memory_order_relaxed);
}

/* ---- output ---- */

static int reserve(struct sconn *c, size_t n)
{
	if (c->wpos > 0 && c->wpos == c->wlen)
		c->wpos = c->wlen = 0;
	if (c->wlen + n > c->wcap) {
		size_t cap = c->wcap ? c->wcap : 4096;
		char *p;

		while (cap < c->wlen + n)
			cap *= 2;
		p = realloc(c->wbuf, cap);
		if (p == NULL)
			return -1;
		c->wbuf = p;
		c->wcap = cap;
	}
	return 0;
}

static void reply(struct sconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct sconn *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (reserve(c, 512) < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(c->wbuf + c->wlen, c->wcap - c->wlen - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > c->wcap - c->wlen - 3)
		n = (int)(c->wcap - c->wlen - 3);
	c->wlen += (size_t)n;
	c->wbuf[c->wlen++] = '\r';
	c->wbuf[c->wlen++] = '\n';
}

static void reply_raw(struct sconn *c, const char *s, size_t len)
{
	if (reserve(c, len) < 0)
		return;
	memcpy(c->wbuf + c->wlen, s, len);
	c->wlen += len;
}

#define REPLY_LIT(c, s) reply_raw((c), s "\r\n", sizeof(s "\r\n") - 1)

/* ---- connection lifetime ---- */

static void conn_free(struct sconn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->w->nconns--;
	free(c->rbuf);
	free(c->wbuf);
	free(c->rcpts);
	free(c->hdr);
	free(c);
}

static void txn_reset(struct sconn *c)
{
	c->mail = false;
	c->bdat = false;
	c->bdat_last = false;
	c->bdat_err = 0;
	c->nrcpt = 0;
	c->drop = false;
	c->msgbytes = 0;
	c->rcptlen = 0;
	c->hdrlen = 0;
	c->hdr_done = false;
}

/* Write pending output. Returns 0, or -1 if the connection was closed. */
static int conn_flush(struct sconn *c)
{
	while (c->wpos < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			conn_free(c);
			return -1;
		}
		c->wpos += (size_t)n;
	}
	c->wpos = c->wlen = 0;
	if (c->st == S_CLOSING) {
		conn_free(c);
		return -1;
	}
	return 0;
}

/* ---- the message ---- */

/* Find the CRLF.CRLF ending DATA in p[0..n), given *dfa bytes of it matched before p.
 * Returns the offset just past it, or -1 with *dfa updated for the next call. */
static long find_end(int *dfa, const char *p, size_t n)
{
	static const char pat[] = "\r\n.\r\n";
	size_t head = n < 4 ? n : 4;
	int s = *dfa;
	const char *m;

	/* A match that started before p ends within its first four bytes. */
	for (size_t i = 0; i < head; i++) {
		char ch = p[i];

		if (ch == pat[s])
			s++;
		else
			s = ch == '\r' ? 1 : 0;
		if (s == 5)
			return (long)(i + 1);
	}
	m = memmem(p, n, pat, 5);
	if (m != NULL)
		return (long)(m - p) + 5;
	if (n >= 4) {
		/* The state at the end depends only on the last four bytes. */
		s = 0;
		for (size_t i = n - 4; i < n; i++) {
			if (p[i] == pat[s])
				s++;
			else
				s = p[i] == '\r' ? 1 : 0;
		}
	}
	*dfa = s;
	return -1;
}

/* Keep the start of the content (with --record) until the header section has ended. */
static void capture(struct sconn *c, const char *p, size_t n)
{
	size_t from = c->hdrlen > 3 ? c->hdrlen - 3 : 0;

	if (c->hdr_done || c->w->s->record_fd < 0)
		return;
	if (n > HDR_MAX - c->hdrlen)
		n = HDR_MAX - c->hdrlen;
	memcpy(c->hdr + c->hdrlen, p, n);
	c->hdrlen += n;
	if (c->hdrlen == HDR_MAX || memmem(c->hdr + from, c->hdrlen - from, "\r\n\r\n", 4))
		c->hdr_done = true;
}

/* The Message-ID header's value from the captured header section, or "-". */
static const char *message_id(struct sconn *c, size_t *len)
{
	const char *p = c->hdr, *end = c->hdr + c->hdrlen;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		size_t ll = (size_t)(le - p);

		if (ll > 0 && p[ll - 1] == '\r')
			ll--;
		if (ll == 0)
			break;
		if (bench_has_prefix(p, ll, "Message-ID:")) {
			const char *v = p + 11, *ve = p + ll;

			/* An empty value continues on the next (folded) line. */
			if (v == ve && nl != NULL && nl + 1 < end &&
			    (nl[1] == ' ' || nl[1] == '\t')) {
				const char *nl2 = memchr(nl + 1, '\n', (size_t)(end - nl - 1));
				v = nl + 1;
				ve = nl2 ? nl2 : end;
				if (ve > v && ve[-1] == '\r')
					ve--;
			}
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			if (ve > v) {
				*len = (size_t)(ve - v);
				return v;
			}
		}
		p = le + 1;
	}
	*len = 1;
	return "-";
}

/* Give the final answer to a complete message and count it. */
static void final_reply(struct sconn *c)
{
	struct sworker *w = c->w;
	struct sink *s = w->s;
	uint64_t n = atomic_fetch_add(&s->total, 1) + 1;

	if (s->o->max_messages != 0 && n > s->o->max_messages) {
		REPLY_LIT(c, "451 4.3.2 Sink has received its --max-messages; try later");
		txn_reset(c);
		c->st = S_CMD;
		return;
	}
	w->qid++;
	if (c->bdat)
		reply(c, "250 2.0.0 Ok: %llu octets, queued as %02x%014llx",
		      (unsigned long long)c->msgbytes, w->id, (unsigned long long)w->qid);
	else
		reply(c, "250 2.0.0 Ok: queued as %02x%014llx", w->id, (unsigned long long)w->qid);
	add(&w->c.messages, 1);
	add(&w->c.rcpts, (uint64_t)c->nrcpt);
	add(&w->c.bytes, c->msgbytes);
	atomic_store_explicit(&w->c.last_ns, bench_now_ns(), memory_order_relaxed);
	if (s->record_fd >= 0) {
		size_t idlen;
		const char *id = message_id(c, &idlen);

		for (size_t off = 0; off < c->rcptlen;) {
			size_t rl = strlen(c->rcpts + off);
			bench_log_line(&w->rec, id, idlen, c->rcpts + off, rl);
			off += rl + 1;
		}
	}
	if (s->o->max_messages != 0 && n >= s->o->max_messages)
		atomic_store(&s->stop, true);
	txn_reset(c);
	c->st = S_CMD;
}

/* The whole message is in: answer now, or hold the answer for --latency-ms. */
static void message_done(struct sconn *c)
{
	struct sworker *w = c->w;

	if (w->s->o->latency_ms == 0) {
		final_reply(c);
		return;
	}
	c->st = S_WAIT;
	c->wait_until = bench_now_ns() + w->s->o->latency_ms * 1000000ULL;
	c->wnext = NULL;
	if (w->wtail != NULL)
		w->wtail->wnext = c;
	else
		w->whead = c;
	w->wtail = c;
}

/* Content bytes are arriving: consume DATA content. Returns -1 if the conn was dropped. */
static int on_data(struct sconn *c)
{
	char *p = c->rbuf + c->rpos;
	size_t n = c->rlen - c->rpos;
	long e;

	if (c->drop) {
		add(&c->w->c.dropped, 1);
		conn_free(c);
		return -1;
	}
	e = find_end(&c->dfa, p, n);
	capture(c, p, e >= 0 ? (size_t)e : n);
	if (e < 0) {
		c->msgbytes += n;
		c->rpos = c->rlen;
		return 0;
	}
	c->msgbytes += (uint64_t)e - 3;
	c->rpos += (size_t)e;
	message_done(c);
	return 0;
}

/* Consume (part of) a BDAT chunk. Returns -1 if the conn was dropped. */
static int on_bdat(struct sconn *c)
{
	size_t n = c->rlen - c->rpos;

	if (c->drop && c->bdat_left > 0) {
		add(&c->w->c.dropped, 1);
		conn_free(c);
		return -1;
	}
	if (n > c->bdat_left)
		n = (size_t)c->bdat_left;
	if (c->bdat_err == 0) {
		capture(c, c->rbuf + c->rpos, n);
		c->msgbytes += n;
	}
	c->rpos += n;
	c->bdat_left -= n;
	if (c->bdat_left > 0)
		return 0;
	c->st = S_CMD;
	if (c->bdat_err == 503) {
		REPLY_LIT(c, "503 5.5.1 MAIL first");
	} else if (c->bdat_err == 554) {
		REPLY_LIT(c, "554 5.5.1 No valid recipients");
		txn_reset(c);
	} else if (c->bdat_last) {
		message_done(c);
	} else {
		reply(c, "250 2.0.0 %llu octets received", (unsigned long long)c->msgbytes);
	}
	c->bdat_err = 0;
	return 0;
}

/* ---- commands ---- */

/* The address inside <...> after "FROM:"/"TO:" (or the first word), or NULL. */
static const char *path_arg(const char *a, size_t len, size_t *plen, const char **rest)
{
	const char *end = a + len, *e;

	while (a < end && *a == ' ')
		a++;
	if (a < end && *a == '<') {
		e = memchr(a, '>', (size_t)(end - a));
		if (e == NULL)
			return NULL;
		*plen = (size_t)(e - a - 1);
		*rest = e + 1;
		return a + 1;
	}
	e = memchr(a, ' ', (size_t)(end - a));
	e = e ? e : end;
	if (e == a)
		return NULL;
	*plen = (size_t)(e - a);
	*rest = e;
	return a;
}

static void cmd_ehlo(struct sconn *c, const char *arg, size_t alen, bool ehlo)
{
	const char *name = c->w->s->o->name;

	txn_reset(c);
	if (!ehlo) {
		reply(c, "250 %s", name);
		return;
	}
	reply(c, "250-%s greets %.*s", name, (int)(alen > 200 ? 200 : alen), arg);
	reply(c,
	      "250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
	      "250-ENHANCEDSTATUSCODES\r\n250 CHUNKING",
	      MAX_SIZE);
}

static void cmd_mail(struct sconn *c, const char *arg, size_t alen)
{
	const char *path, *rest, *sz;
	size_t plen;

	if (c->mail) {
		REPLY_LIT(c, "503 5.5.1 Sender already given");
		return;
	}
	if (!bench_has_prefix(arg, alen, "FROM:") ||
	    (path = path_arg(arg + 5, alen - 5, &plen, &rest)) == NULL) {
		REPLY_LIT(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
		return;
	}
	(void)path;
	for (sz = rest; sz + 6 <= arg + alen; sz++) {
		if (bench_has_prefix(sz, (size_t)(arg + alen - sz), " SIZE=")) {
			if (strtoull(sz + 6, NULL, 10) > MAX_SIZE) {
				REPLY_LIT(c, "552 5.3.4 Message too big");
				return;
			}
			break;
		}
	}
	txn_reset(c);
	c->mail = true;
	if (atomic_load_explicit(&c->w->c.first_ns, memory_order_relaxed) == 0)
		atomic_store_explicit(&c->w->c.first_ns, bench_now_ns(), memory_order_relaxed);
	REPLY_LIT(c, "250 2.1.0 Sender OK");
}

static void cmd_rcpt(struct sconn *c, const char *arg, size_t alen)
{
	const struct sink_opts *o = c->w->s->o;
	const char *path, *rest;
	size_t plen;
	double r;

	if (!c->mail) {
		REPLY_LIT(c, "503 5.5.1 MAIL first");
		return;
	}
	if (!bench_has_prefix(arg, alen, "TO:") ||
	    (path = path_arg(arg + 3, alen - 3, &plen, &rest)) == NULL || plen == 0) {
		REPLY_LIT(c, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	}
	r = o->temp_pct + o->perm_pct > 0 ? bench_rng_pct(&c->w->rng) : 100.0;
	if (r < o->temp_pct) {
		add(&c->w->c.rcpt_temp, 1);
		REPLY_LIT(c, "451 4.3.0 Temporary failure (kumo-bench sink)");
		return;
	}
	if (r < o->temp_pct + o->perm_pct) {
		add(&c->w->c.rcpt_perm, 1);
		REPLY_LIT(c, "550 5.1.1 No such user (kumo-bench sink)");
		return;
	}
	if (c->w->s->record_fd >= 0) {
		if (c->rcptlen + plen + 1 > c->rcptcap) {
			size_t cap = (c->rcptlen + plen + 1) * 2;
			char *p = realloc(c->rcpts, cap);
			if (p == NULL) {
				REPLY_LIT(c, "452 4.3.1 Out of memory");
				return;
			}
			c->rcpts = p;
			c->rcptcap = cap;
		}
		memcpy(c->rcpts + c->rcptlen, path, plen);
		c->rcptlen += plen;
		c->rcpts[c->rcptlen++] = '\0';
	}
	c->nrcpt++;
	REPLY_LIT(c, "250 2.1.5 Recipient OK");
}

/* Prepare to receive content (DATA or the first BDAT chunk). */
static int content_start(struct sconn *c)
{
	struct sworker *w = c->w;

	if (w->s->record_fd >= 0 && c->hdr == NULL) {
		c->hdr = malloc(HDR_MAX);
		if (c->hdr == NULL)
			return -1;
	}
	c->hdrlen = 0;
	c->hdr_done = false;
	c->msgbytes = 0;
	c->drop = w->s->o->drop_pct > 0 && bench_rng_pct(&w->rng) < w->s->o->drop_pct;
	return 0;
}

static void cmd_data(struct sconn *c)
{
	if (!c->mail) {
		REPLY_LIT(c, "503 5.5.1 MAIL first");
		return;
	}
	if (c->bdat) {
		REPLY_LIT(c, "503 5.5.1 DATA after BDAT");
		return;
	}
	if (c->nrcpt == 0) {
		REPLY_LIT(c, "554 5.5.1 No valid recipients");
		txn_reset(c);
		return;
	}
	if (content_start(c) < 0) {
		REPLY_LIT(c, "452 4.3.1 Out of memory");
		return;
	}
	REPLY_LIT(c, "354 End data with <CR><LF>.<CR><LF>");
	c->st = S_DATA;
	c->dfa = 2; /* the DATA line's CRLF counts towards CRLF.CRLF */
}

/* BDAT <size> [LAST]. Returns -1 if the conn was closed. */
static int cmd_bdat(struct sconn *c, const char *arg, size_t alen)
{
	char num[24];
	size_t i = 0;
	char *end;
	unsigned long long n;
	const char *p = arg, *e = arg + alen;

	while (p < e && i < sizeof(num) - 1 && isdigit((unsigned char)*p))
		num[i++] = *p++;
	num[i] = '\0';
	while (p < e && *p == ' ')
		p++;
	errno = 0;
	n = strtoull(num, &end, 10);
	if (i == 0 || i == sizeof(num) - 1 || errno != 0 ||
	    (p < e && !(e - p == 4 && strncasecmp(p, "LAST", 4) == 0))) {
		/* The chunk's length is unknown, so the stream cannot be followed. */
		REPLY_LIT(c, "501 5.5.4 Syntax: BDAT <size> [LAST]; closing");
		c->st = S_CLOSING;
		return 0;
	}
	c->bdat_left = n;
	c->bdat_last = p < e;
	c->bdat_err = 0;
	c->st = S_BDAT;
	if (!c->mail || c->nrcpt == 0) {
		c->bdat_err = c->mail ? 554 : 503;
		return n == 0 ? on_bdat(c) : 0;
	}
	if (!c->bdat) {
		if (content_start(c) < 0) {
			conn_free(c);
			return -1;
		}
		c->bdat = true;
	}
	if (n == 0)
		return on_bdat(c); /* an empty chunk is complete at once */
	return 0;
}

/* One command line (without its CRLF). Returns -1 if the conn was closed. */
static int on_line(struct sconn *c, const char *line, size_t len)
{
	size_t vlen = 0;
	const char *arg;
	size_t alen;

	while (vlen < len && line[vlen] != ' ')
		vlen++;
	arg = line + vlen + (vlen < len);
	alen = len - (size_t)(arg - line);

#define VERB(v) (vlen == sizeof(v) - 1 && strncasecmp(line, v, vlen) == 0)
	if (VERB("MAIL"))
		cmd_mail(c, arg, alen);
	else if (VERB("RCPT"))
		cmd_rcpt(c, arg, alen);
	else if (VERB("DATA"))
		cmd_data(c);
	else if (VERB("BDAT"))
		return cmd_bdat(c, arg, alen);
	else if (VERB("EHLO"))
		cmd_ehlo(c, arg, alen, true);
	else if (VERB("HELO"))
		cmd_ehlo(c, arg, alen, false);
	else if (VERB("RSET")) {
		txn_reset(c);
		REPLY_LIT(c, "250 2.0.0 OK");
	} else if (VERB("NOOP"))
		REPLY_LIT(c, "250 2.0.0 OK");
	else if (VERB("QUIT")) {
		REPLY_LIT(c, "221 2.0.0 Bye");
		c->st = S_CLOSING;
	} else if (VERB("VRFY"))
		REPLY_LIT(c, "252 2.1.5 Cannot VRFY; send mail to try");
	else if (VERB("HELP"))
		REPLY_LIT(c, "214 2.0.0 kumo-bench sink");
	else
		REPLY_LIT(c, "500 5.5.2 Command not recognized");
#undef VERB
	return 0;
}

/* Consume buffered input as far as the state allows. Returns -1 if the conn was closed. */
static int conn_process(struct sconn *c)
{
	while (c->rpos < c->rlen && c->wlen - c->wpos < WBUF_HIGH) {
		char *p = c->rbuf + c->rpos, *nl;
		size_t n = c->rlen - c->rpos, len;

		switch (c->st) {
		case S_DATA:
			if (on_data(c) < 0)
				return -1;
			continue;
		case S_BDAT:
			if (on_bdat(c) < 0)
				return -1;
			continue;
		case S_WAIT:
		case S_CLOSING:
			break;
		case S_CMD:
			nl = memchr(p, '\n', n);
			if (nl == NULL) {
				if (c->rpos == 0 && c->rlen == RBUF_SIZE) {
					if (!c->skip_line)
						REPLY_LIT(c, "500 5.5.2 Line too long");
					c->skip_line = true;
					c->rpos = c->rlen = 0;
				}
				break;
			}
			c->rpos += (size_t)(nl - p) + 1;
			if (c->skip_line) {
				c->skip_line = false;
				continue;
			}
			len = (size_t)(nl - p);
			if (len > 0 && p[len - 1] == '\r')
				len--;
			if (on_line(c, p, len) < 0)
				return -1;
			continue;
		}
		break;
	}
	if (c->rpos == c->rlen) {
		c->rpos = c->rlen = 0;
	} else if (c->rpos > 0 && c->st == S_CMD) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
	}
	return 0;
}

/* Process, answer and read until the socket is drained or the conn has to wait. */
static void conn_run(struct sconn *c)
{
	for (;;) {
		size_t room;
		ssize_t n;

		if (conn_process(c) < 0 || conn_flush(c) < 0)
			return;
		if (c->st == S_WAIT || c->st == S_CLOSING || c->wlen > c->wpos || c->drained)
			return;
		if (c->rpos > 0 && c->rpos == c->rlen)
			c->rpos = c->rlen = 0;
		if (c->rlen == RBUF_SIZE && c->rpos > 0) {
			memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
			c->rlen -= c->rpos;
			c->rpos = 0;
		}
		room = RBUF_SIZE - c->rlen;
		if (room == 0)
			return;
		n = recv(c->fd, c->rbuf + c->rlen, room, 0);
		if (n > 0) {
			c->rlen += (size_t)n;
			/* A short read drains the socket, but an end of stream that came with
			 * the same edge is seen only by reading on to it. */
			c->drained = (size_t)n < room && !c->hup;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			c->drained = true;
			return;
		}
		conn_free(c);
		return;
	}
}

static void conn_new(struct sworker *w, int fd)
{
	struct sconn *c = calloc(1, sizeof(*c));
	struct epoll_event ev = {0};
	int one = 1;

	if (c == NULL || (c->rbuf = malloc(RBUF_SIZE)) == NULL) {
		free(c);
		close(fd);
		return;
	}
	c->w = w;
	c->fd = fd;
	c->st = S_CMD;
	c->drained = true;
	w->nconns++;
	add(&w->c.conns, 1);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		conn_free(c);
		return;
	}
	reply(c, "220 %s ESMTP sink ready", w->s->o->name);
	conn_flush(c);
}

/* Read handed-over connections from the pipe. Returns false when told to stop. */
static bool take_conns(struct sworker *w)
{
	int fds[64];
	ssize_t n;

	while ((n = read(w->pipefd[0], fds, sizeof(fds))) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof(int); i++) {
			if (fds[i] < 0)
				return false;
			conn_new(w, fds[i]);
		}
	}
	return true;
}

/* Send the replies held for --latency-ms whose time has come. */
static void release_waiting(struct sworker *w, uint64_t now)
{
	while (w->whead != NULL && w->whead->wait_until <= now) {
		struct sconn *c = w->whead;

		w->whead = c->wnext;
		if (w->whead == NULL)
			w->wtail = NULL;
		final_reply(c);
		conn_run(c);
	}
}

static void *sworker_main(void *arg)
{
	struct sworker *w = arg;
	struct epoll_event evs[MAX_EVENTS];
	bool running = true;

	while (running) {
		uint64_t now = bench_now_ns();
		int timeout = 200, n;

		if (w->whead != NULL) {
			uint64_t d = w->whead->wait_until > now ? w->whead->wait_until - now : 0;
			int ms = (int)((d + 999999) / 1000000);
			if (ms < timeout)
				timeout = ms;
		}
		n = epoll_wait(w->epfd, evs, MAX_EVENTS, timeout);
		for (int i = 0; i < n; i++) {
			struct sconn *c = evs[i].data.ptr;

			if (c == NULL) {
				running = take_conns(w);
				continue;
			}
			if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				c->drained = false;
			if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				c->hup = true;
			if (c->st == S_WAIT)
				continue; /* the socket is read again once the reply is sent */
			conn_run(c);
		}
		now = bench_now_ns();
		release_waiting(w, now);
		if (w->rec.len > 0 && now - w->rec.last_ns >= SEC_NS)
			bench_log_flush(&w->rec);
	}
	/* Stopping: answer no more; replies held for --latency-ms are not sent. */
	bench_log_fini(&w->rec);
	return NULL;
}

/* ---- main thread ---- */

struct totals {
	uint64_t messages, rcpts, bytes, rcpt_temp, rcpt_perm, dropped, conns, first, last;
};

static void sum(struct sworker *ws, int nw, struct totals *t)
{
	memset(t, 0, sizeof(*t));
	for (int i = 0; i < nw; i++) {
		struct counters *c = &ws[i].c;
		uint64_t f = atomic_load_explicit(&c->first_ns, memory_order_relaxed);
		uint64_t l = atomic_load_explicit(&c->last_ns, memory_order_relaxed);

		t->messages += atomic_load_explicit(&c->messages, memory_order_relaxed);
		t->rcpts += atomic_load_explicit(&c->rcpts, memory_order_relaxed);
		t->bytes += atomic_load_explicit(&c->bytes, memory_order_relaxed);
		t->rcpt_temp += atomic_load_explicit(&c->rcpt_temp, memory_order_relaxed);
		t->rcpt_perm += atomic_load_explicit(&c->rcpt_perm, memory_order_relaxed);
		t->dropped += atomic_load_explicit(&c->dropped, memory_order_relaxed);
		t->conns += atomic_load_explicit(&c->conns, memory_order_relaxed);
		if (f != 0 && (t->first == 0 || f < t->first))
			t->first = f;
		if (l > t->last)
			t->last = l;
	}
}

static void summary(const struct sink_opts *o, const struct totals *t, double uptime)
{
	double active = t->last > t->first && t->first ? (double)(t->last - t->first) / 1e9 : 0;
	double mps = active > 0 ? (double)t->messages / active : 0;
	double mbps = active > 0 ? (double)t->bytes / active / 1e6 : 0;

	if (o->json) {
		printf("{\"messages\":%llu,\"recipients\":%llu,\"bytes\":%llu,"
		       "\"rcpt_temp_failed\":%llu,\"rcpt_perm_failed\":%llu,\"dropped\":%llu,"
		       "\"connections\":%llu,\"active_s\":%.3f,\"uptime_s\":%.3f,"
		       "\"msg_per_s\":%.1f,\"mb_per_s\":%.2f,\"first_mail_mono\":%.6f,"
		       "\"last_accept_mono\":%.6f}\n",
		       (unsigned long long)t->messages, (unsigned long long)t->rcpts,
		       (unsigned long long)t->bytes, (unsigned long long)t->rcpt_temp,
		       (unsigned long long)t->rcpt_perm, (unsigned long long)t->dropped,
		       (unsigned long long)t->conns, active, uptime, mps, mbps,
		       (double)t->first / 1e9, (double)t->last / 1e9);
		return;
	}
	printf("kumo-bench sink: %llu messages, %llu recipients, %llu bytes\n",
	       (unsigned long long)t->messages, (unsigned long long)t->rcpts,
	       (unsigned long long)t->bytes);
	printf("  refused recipients: %llu temp-failed, %llu perm-failed; %llu messages dropped;"
	       " %llu connections\n",
	       (unsigned long long)t->rcpt_temp, (unsigned long long)t->rcpt_perm,
	       (unsigned long long)t->dropped, (unsigned long long)t->conns);
	printf("  %.3f s from first MAIL to last message (up %.3f s): %.1f msg/s, %.2f MB/s\n",
	       active, uptime, mps, mbps);
}

enum {
	OPT_LISTEN = 256,
	OPT_THREADS,
	OPT_TEMP,
	OPT_PERM,
	OPT_LATENCY,
	OPT_DROP,
	OPT_STATS,
	OPT_JSON,
	OPT_MAX,
	OPT_RECORD,
	OPT_NAME,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"tempfail-pct", required_argument, NULL, OPT_TEMP},
    {"permfail-pct", required_argument, NULL, OPT_PERM},
    {"latency-ms", required_argument, NULL, OPT_LATENCY},
    {"drop-pct", required_argument, NULL, OPT_DROP},
    {"stats-interval", required_argument, NULL, OPT_STATS},
    {"json", no_argument, NULL, OPT_JSON},
    {"max-messages", required_argument, NULL, OPT_MAX},
    {"record", required_argument, NULL, OPT_RECORD},
    {"name", required_argument, NULL, OPT_NAME},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int bad(const char *opt, const char *val)
{
	fprintf(stderr, "kumo-bench sink: bad value for %s: '%s'\n", opt, val);
	return BENCH_EXIT_USAGE;
}

static int parse_opts(struct sink_opts *o, int argc, char **argv)
{
	const char *listen = "127.0.0.1:2626";
	bool stats_set = false;
	uint64_t v;
	int ch;

	*o = (struct sink_opts){.name = "kumo-bench"};
	while ((ch = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		switch (ch) {
		case OPT_LISTEN:
			listen = optarg;
			break;
		case OPT_THREADS:
			if (bench_parse_u64(optarg, 1, 1024, &v) < 0)
				return bad("--threads", optarg);
			o->threads = (int)v;
			break;
		case OPT_TEMP:
			if (bench_parse_double(optarg, 0, 100, &o->temp_pct) < 0)
				return bad("--tempfail-pct", optarg);
			break;
		case OPT_PERM:
			if (bench_parse_double(optarg, 0, 100, &o->perm_pct) < 0)
				return bad("--permfail-pct", optarg);
			break;
		case OPT_LATENCY:
			if (bench_parse_u64(optarg, 0, 3600000, &o->latency_ms) < 0)
				return bad("--latency-ms", optarg);
			break;
		case OPT_DROP:
			if (bench_parse_double(optarg, 0, 100, &o->drop_pct) < 0)
				return bad("--drop-pct", optarg);
			break;
		case OPT_STATS:
			if (bench_parse_double(optarg, 0, 86400, &o->stats_interval) < 0)
				return bad("--stats-interval", optarg);
			stats_set = true;
			break;
		case OPT_JSON:
			o->json = true;
			break;
		case OPT_MAX:
			if (bench_parse_u64(optarg, 1, UINT64_MAX / 2, &o->max_messages) < 0)
				return bad("--max-messages", optarg);
			break;
		case OPT_RECORD:
			o->record = optarg;
			break;
		case OPT_NAME:
			if (strpbrk(optarg, "\r\n") != NULL || strlen(optarg) > 200)
				return bad("--name", optarg);
			o->name = optarg;
			break;
		case 'h':
			bench_sink_usage(stdout);
			exit(0);
		default:
			bench_sink_usage(stderr);
			return BENCH_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kumo-bench sink: unexpected argument '%s'\n", argv[optind]);
		return BENCH_EXIT_USAGE;
	}
	if (o->temp_pct + o->perm_pct > 100) {
		fprintf(stderr,
			"kumo-bench sink: --tempfail-pct plus --permfail-pct exceeds 100\n");
		return BENCH_EXIT_USAGE;
	}
	if (bench_parse_hostport(listen, &o->host, &o->port) < 0)
		return bad("--listen", listen);
	if (!stats_set)
		o->stats_interval = isatty(STDERR_FILENO) ? 1.0 : 0.0;
	if (o->threads == 0)
		o->threads = bench_default_threads(2);
	return 0;
}

static int open_listener(const struct sink_opts *o, int *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1, fd;

	if (bench_resolve(o->host, o->port, &ss, &len) < 0)
		return -1;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("kumo-bench sink: socket");
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
		fprintf(stderr, "kumo-bench sink: cannot listen on %s:%d: %s\n", o->host, o->port,
			strerror(errno));
		close(fd);
		return -1;
	}
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					       : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

static void print_stats(struct sworker *ws, int nw, struct totals *prev, uint64_t *prev_ns,
			uint64_t start)
{
	struct totals t;
	uint64_t now = bench_now_ns();
	double dt = (double)(now - *prev_ns) / 1e9;

	sum(ws, nw, &t);
	fprintf(stderr,
		"sink %.1fs: %llu messages (%.0f msg/s), %llu recipients, %.1f MB (%.2f MB/s), "
		"%llu temp, %llu perm, %llu dropped\n",
		(double)(now - start) / 1e9, (unsigned long long)t.messages,
		dt > 0 ? (double)(t.messages - prev->messages) / dt : 0,
		(unsigned long long)t.rcpts, (double)t.bytes / 1e6,
		dt > 0 ? (double)(t.bytes - prev->bytes) / dt / 1e6 : 0,
		(unsigned long long)t.rcpt_temp, (unsigned long long)t.rcpt_perm,
		(unsigned long long)t.dropped);
	*prev = t;
	*prev_ns = now;
}

int bench_sink_main(int argc, char **argv)
{
	struct sink_opts o;
	struct sink s = {0};
	struct sworker *ws;
	struct totals t, prev = {0};
	sigset_t sigs;
	struct pollfd pfd[2];
	uint64_t next_stats = 0, prev_ns, stats_ns;
	int lfd, sfd, port, rr = 0, rc, stop_msg = -1;

	rc = parse_opts(&o, argc, argv);
	if (rc != 0)
		return rc;
	s.o = &o;
	s.record_fd = -1;
	if (o.record != NULL && (s.record_fd = bench_log_open_fd(o.record)) < 0)
		return 1;
	lfd = open_listener(&o, &port);
	if (lfd < 0)
		return 1;
	bench_block_signals(&sigs);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	ws = calloc((size_t)o.threads, sizeof(*ws));
	if (sfd < 0 || ws == NULL) {
		perror("kumo-bench sink: setup");
		return 1;
	}
	s.start_ns = bench_now_ns();
	for (int i = 0; i < o.threads; i++) {
		struct sworker *w = &ws[i];
		struct epoll_event ev = {.events = EPOLLIN};

		w->s = &s;
		w->id = i;
		bench_rng_seed(&w->rng, bench_random_seed() + (uint64_t)i);
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (w->epfd < 0 || pipe2(w->pipefd, O_CLOEXEC | O_NONBLOCK) < 0 ||
		    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->pipefd[0], &ev) < 0 ||
		    bench_log_init(&w->rec, s.record_fd, 256 * 1024) < 0) {
			perror("kumo-bench sink: setup");
			return 1;
		}
		if (pthread_create(&w->tid, NULL, sworker_main, w) != 0) {
			fprintf(stderr, "kumo-bench sink: cannot start threads\n");
			return 1;
		}
	}
	fprintf(stderr, "kumo-bench sink: listening on %s:%d (%d threads)\n", o.host, port,
		o.threads);

	stats_ns = (uint64_t)(o.stats_interval * 1e9);
	prev_ns = bench_now_ns();
	if (stats_ns > 0)
		next_stats = prev_ns + stats_ns;
	pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
	pfd[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
	while (!atomic_load(&s.stop)) {
		uint64_t now = bench_now_ns();
		int timeout = 100;

		if (next_stats != 0) {
			if (now >= next_stats) {
				print_stats(ws, o.threads, &prev, &prev_ns, s.start_ns);
				next_stats += stats_ns;
				if (next_stats <= now)
					next_stats = now + stats_ns;
			}
			if ((next_stats - now) / 1000000 < (uint64_t)timeout)
				timeout = (int)((next_stats - now) / 1000000) + 1;
		}
		if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				break;
		}
		if (pfd[0].revents & POLLIN) {
			for (int k = 0; k < 1024; k++) {
				int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

				if (fd < 0)
					break;
				if (write(ws[rr].pipefd[1], &fd, sizeof(fd)) != (ssize_t)sizeof(fd))
					close(fd);
				rr = (rr + 1) % o.threads;
			}
		}
	}
	close(lfd);
	atomic_store(&s.stop, true);
	for (int i = 0; i < o.threads; i++) {
		if (write(ws[i].pipefd[1], &stop_msg, sizeof(stop_msg)) !=
		    (ssize_t)sizeof(stop_msg))
			fprintf(stderr, "kumo-bench sink: cannot stop thread %d\n", i);
	}
	for (int i = 0; i < o.threads; i++)
		pthread_join(ws[i].tid, NULL);
	sum(ws, o.threads, &t);
	summary(&o, &t, (double)(bench_now_ns() - s.start_ns) / 1e9);
	fflush(stdout);
	for (int i = 0; i < o.threads; i++) {
		if (ws[i].rec.err != 0 && rc == 0) {
			fprintf(stderr, "kumo-bench sink: writing %s: %s\n", o.record,
				strerror(ws[i].rec.err));
			rc = 1;
		}
	}
	if (s.record_fd >= 0 && close(s.record_fd) < 0)
		rc = 1;
	return rc;
}
