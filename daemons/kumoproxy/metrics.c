/* kumoproxy's counters as plain text (Prometheus exposition format), served over HTTP by a
 * small thread of its own (blocking accept, one request per connection, no keep-alive) so
 * that no io_uring loop ever waits on a metrics client. */
#include "proxy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "proto/socks5.h"

#define REQ_MAX 4096
#define BODY_MAX 8192

struct kproxy_metrics {
	struct kproxy *px;
	int fd;
	pthread_t thread;
};

struct total {
	uint64_t accepted, dropped, limited, relayed, replies[9], auth_failures, handshake_closed,
	    idle_timeouts, bytes_up, bytes_down, sessions, log_dropped;
};

static uint64_t get(const _Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

static void sum(struct kproxy *px, struct total *t)
{
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < px->nloops; i++) {
		const struct kproxy_counters *c = kproxy_loop_counters(px->loops[i]);
		t->accepted += get(&c->accepted);
		t->dropped += get(&c->dropped);
		t->limited += get(&c->limited);
		t->relayed += get(&c->relayed);
		for (int k = 0; k < 9; k++)
			t->replies[k] += get(&c->replies[k]);
		t->auth_failures += get(&c->auth_failures);
		t->handshake_closed += get(&c->handshake_closed);
		t->idle_timeouts += get(&c->idle_timeouts);
		t->bytes_up += get(&c->bytes_up);
		t->bytes_down += get(&c->bytes_down);
		t->sessions += get(&c->sessions);
		t->log_dropped += get(&c->log_dropped);
	}
}

size_t kproxy_metrics_format(struct kproxy *px, char *buf, size_t size)
{
	struct total t;
	sum(px, &t);
	size_t n = 0;
#define PUT(...)                                                                                   \
	do {                                                                                       \
		int k_ = snprintf(buf + n, size - n, __VA_ARGS__);                                 \
		if (k_ > 0)                                                                        \
			n = n + (size_t)k_ < size ? n + (size_t)k_ : size - 1;                     \
	} while (0)
#define COUNTER(name, help, v)                                                                     \
	PUT("# HELP kumoproxy_" name " " help "\n# TYPE kumoproxy_" name " counter\n"              \
	    "kumoproxy_" name " %llu\n",                                                           \
	    (unsigned long long)(v))
	if (size == 0)
		return 0;
	buf[0] = '\0';
	COUNTER("connections_accepted_total", "Client connections accepted.", t.accepted);
	COUNTER("connections_dropped_total", "Connections closed at once: no free slot.",
		t.dropped);
	PUT("# HELP kumoproxy_connections_active Sessions open.\n"
	    "# TYPE kumoproxy_connections_active gauge\nkumoproxy_connections_active %u\n",
	    atomic_load_explicit(&px->active, memory_order_relaxed));
	COUNTER("limit_refusals_total", "Requests answered 0x01 over --max-connections.",
		t.limited);
	COUNTER("relays_total", "CONNECT requests that succeeded.", t.relayed);
	PUT("# HELP kumoproxy_replies_total Replies to requests, by SOCKS reply code.\n"
	    "# TYPE kumoproxy_replies_total counter\n");
	for (int k = 0; k < 9; k++)
		PUT("kumoproxy_replies_total{code=\"0x%02x\",text=\"%s\"} %llu\n", k,
		    kumo_socks5_rep_text((unsigned)k), (unsigned long long)t.replies[k]);
	COUNTER("auth_failures_total", "Credentials refused (RFC 1929).", t.auth_failures);
	COUNTER("handshake_closed_total", "Sessions that ended before a request was answered.",
		t.handshake_closed);
	COUNTER("idle_timeouts_total", "Relays ended by the idle timeout.", t.idle_timeouts);
	COUNTER("bytes_client_to_target_total", "Bytes relayed from clients to targets.",
		t.bytes_up);
	COUNTER("bytes_target_to_client_total", "Bytes relayed from targets to clients.",
		t.bytes_down);
	COUNTER("sessions_total", "Sessions ended.", t.sessions);
	COUNTER("log_records_dropped_total", "Session records that could not be written.",
		t.log_dropped);
#undef COUNTER
#undef PUT
	return n;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void serve(struct kproxy_metrics *m, int c)
{
	char req[REQ_MAX + 1], body[BODY_MAX], head[256];
	size_t got = 0;
	while (got < REQ_MAX) {
		ssize_t r = read(c, req + got, REQ_MAX - got);
		if (r <= 0)
			return;
		got += (size_t)r;
		req[got] = '\0';
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
	}
	bool get = got >= 4 && memcmp(req, "GET ", 4) == 0;
	bool head_only = got >= 5 && memcmp(req, "HEAD ", 5) == 0;
	size_t blen = 0;
	int hlen;
	if (get || head_only) {
		blen = kproxy_metrics_format(m->px, body, sizeof(body));
		hlen = snprintf(head, sizeof(head),
				"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
				"Content-Length: %zu\r\nConnection: close\r\n\r\n",
				blen);
	} else {
		static const char msg[] = "only GET is served\n";
		memcpy(body, msg, sizeof(msg) - 1);
		blen = sizeof(msg) - 1;
		hlen = snprintf(head, sizeof(head),
				"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
				"Content-Type: text/plain\r\nContent-Length: %zu\r\n"
				"Connection: close\r\n\r\n",
				blen);
	}
	write_all(c, head, (size_t)hlen);
	if (!head_only)
		write_all(c, body, blen);
}

static void *metrics_main(void *arg)
{
	struct kproxy_metrics *m = arg;
	for (;;) {
		int c = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE ||
			    errno == ENFILE) {
				if (errno == EMFILE || errno == ENFILE)
					usleep(100000);
				continue;
			}
			break; /* shut down by kproxy_metrics_stop() */
		}
		struct timeval tv = {.tv_sec = 2};
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		serve(m, c);
		close(c);
	}
	return NULL;
}

int kproxy_metrics_start(struct kproxy *px, struct kproxy_metrics **out)
{
	const struct kproxy_cfg *cfg = &px->cfg;
	struct kproxy_metrics *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->px = px;
	m->fd = socket(cfg->metrics.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int err;
	if (m->fd < 0) {
		err = -errno;
		goto out_free;
	}
	int one = 1;
	setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(m->fd, (const struct sockaddr *)&cfg->metrics, cfg->metrics_len) < 0 ||
	    listen(m->fd, 64) < 0) {
		err = -errno;
		goto out_close;
	}
	err = pthread_create(&m->thread, NULL, metrics_main, m);
	if (err) {
		err = -err;
		goto out_close;
	}
	*out = m;
	return 0;
out_close:
	close(m->fd);
out_free:
	free(m);
	return err;
}

void kproxy_metrics_stop(struct kproxy_metrics *m)
{
	if (!m)
		return;
	shutdown(m->fd, SHUT_RDWR); /* wakes accept() with an error */
	pthread_join(m->thread, NULL);
	close(m->fd);
	free(m);
}
