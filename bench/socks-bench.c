/* socks-bench: a SOCKS5 load generator with its own loopback sink, for measuring a proxy's
 * relay. N connections each send messages of a given size, waiting for the sink's one-byte
 * acknowledgement after each (like SMTP's DATA), or stream a bulk of bytes; the same run
 * without --proxy connects straight to the sink. Links only libc and pthreads. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define SINK_BUF (256 * 1024)
#define ACK 'K'

struct opts {
	struct sockaddr_in proxy; /* sin_family 0: direct */
	struct in_addr source;	  /* BIND before CONNECT when set */
	bool bind;
	const char *user, *pass;
	unsigned conns;
	size_t size;	   /* message size */
	uint64_t messages; /* total, over all connections */
	uint64_t bulk;	   /* bytes per connection, streamed without acks; 0: messages */
	bool json;
};

/* ---- Sink ---- */

struct sink_conn {
	int fd;
	size_t in_msg; /* bytes of the current message received */
};

struct sink {
	const struct opts *o;
	int lfd, ep;
	struct sockaddr_in addr;
	atomic_bool stop;
	atomic_uint_fast64_t bytes;
	pthread_t thread;
};

static void *sink_main(void *arg)
{
	struct sink *k = arg;
	struct epoll_event evs[MAX_EVENTS];
	static uint8_t buf[SINK_BUF];
	while (!atomic_load(&k->stop)) {
		int n = epoll_wait(k->ep, evs, MAX_EVENTS, 100);
		for (int i = 0; i < n; i++) {
			struct sink_conn *c = evs[i].data.ptr;
			if (!c) {
				int fd;
				while ((fd = accept4(k->lfd, NULL, NULL,
						     SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					struct sink_conn *nc = calloc(1, sizeof(*nc));
					nc->fd = fd;
					int one = 1;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
					epoll_ctl(k->ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			for (;;) {
				ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
				if (r > 0) {
					atomic_fetch_add_explicit(&k->bytes, (uint64_t)r,
								  memory_order_relaxed);
					if (k->o->bulk)
						continue;
					c->in_msg += (size_t)r;
					while (c->in_msg >= k->o->size) {
						c->in_msg -= k->o->size;
						char a = ACK;
						if (send(c->fd, &a, 1, MSG_NOSIGNAL) != 1)
							break;
					}
					continue;
				}
				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					break;
				close(c->fd);
				free(c);
				break;
			}
		}
	}
	return NULL;
}

static int sink_start(struct sink *k, const struct opts *o)
{
	k->o = o;
	k->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	k->addr.sin_family = AF_INET;
	k->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof(k->addr);
	if (k->lfd < 0 || bind(k->lfd, (struct sockaddr *)&k->addr, len) < 0 ||
	    listen(k->lfd, 4096) < 0 || getsockname(k->lfd, (struct sockaddr *)&k->addr, &len) < 0)
		return -1;
	k->ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(k->ep, EPOLL_CTL_ADD, k->lfd, &ev);
	return pthread_create(&k->thread, NULL, sink_main, k) ? -1 : 0;
}

/* ---- Clients ---- */

enum phase { P_HS_WRITE, P_HS_READ, P_SEND, P_ACK, P_DRAIN, P_DONE };

struct conn {
	int fd;
	enum phase phase;
	uint8_t hs[1024]; /* handshake: what to write, then the replies expected */
	size_t hs_len, hs_off, reply_len;
	uint64_t sent; /* bytes of the current message (or of the bulk) sent */
};

struct run {
	const struct opts *o;
	int ep;
	const uint8_t *msg; /* message bytes, also the bulk pattern */
	uint64_t issued, done_msgs, bytes;
	unsigned open;
	unsigned failures;
};

static void fail(struct run *r, struct conn *c, const char *what)
{
	if (r->failures++ < 5)
		fprintf(stderr, "socks-bench: connection failed: %s%s%s\n", what, errno ? ": " : "",
			errno ? strerror(errno) : "");
	close(c->fd);
	c->phase = P_DONE;
	r->open--;
}

static void set_events(struct run *r, struct conn *c, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = c};
	epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Starts the next message, or ends the connection when all are issued. */
static void next_message(struct run *r, struct conn *c)
{
	if (!r->o->bulk && r->issued >= r->o->messages) {
		shutdown(c->fd, SHUT_WR);
		c->phase = P_DRAIN;
		set_events(r, c, EPOLLIN);
		return;
	}
	r->issued++;
	c->sent = 0;
	c->phase = P_SEND;
	set_events(r, c, EPOLLOUT);
}

static void build_handshake(const struct opts *o, struct conn *c, const struct sockaddr_in *dst)
{
	uint8_t *p = c->hs;
	size_t reply = 2;
	*p++ = 5;
	*p++ = 1;
	*p++ = o->user ? 2 : 0;
	if (o->user) {
		size_t ul = strlen(o->user), pl = strlen(o->pass);
		*p++ = 1;
		*p++ = (uint8_t)ul;
		memcpy(p, o->user, ul);
		p += ul;
		*p++ = (uint8_t)pl;
		memcpy(p, o->pass, pl);
		p += pl;
		reply += 2;
	}
	if (o->bind) {
		uint8_t b[10] = {5, 2, 0, 1};
		memcpy(b + 4, &o->source, 4);
		memcpy(p, b, 10);
		p += 10;
		reply += 10;
	}
	uint8_t q[10] = {5, 1, 0, 1};
	memcpy(q + 4, &dst->sin_addr, 4);
	memcpy(q + 8, &dst->sin_port, 2);
	memcpy(p, q, 10);
	p += 10;
	reply += 10;
	c->hs_len = (size_t)(p - c->hs);
	c->hs_off = 0;
	c->reply_len = reply;
}

/* The replies are all success: method 0x00/0x02, auth 0x00, BIND and CONNECT 0x00, IPv4. */
static bool replies_ok(const struct opts *o, const uint8_t *p)
{
	if (p[0] != 5 || p[1] != (o->user ? 2 : 0))
		return false;
	p += 2;
	if (o->user) {
		if (p[1] != 0)
			return false;
		p += 2;
	}
	for (int i = 0; i < (o->bind ? 2 : 1); i++, p += 10)
		if (p[0] != 5 || p[1] != 0 || p[3] != 1)
			return false;
	return true;
}

static void on_event(struct run *r, struct conn *c)
{
	const struct opts *o = r->o;
	for (;;) {
		ssize_t n;
		switch (c->phase) {
		case P_HS_WRITE:
			n = send(c->fd, c->hs + c->hs_off, c->hs_len - c->hs_off, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINPROGRESS || errno == ENOTCONN)
					return;
				return fail(r, c, "handshake write");
			}
			c->hs_off += (size_t)n;
			if (c->hs_off < c->hs_len)
				return;
			c->phase = P_HS_READ;
			c->hs_off = 0;
			set_events(r, c, EPOLLIN);
			break;
		case P_HS_READ:
			n = recv(c->fd, c->hs + c->hs_off, c->reply_len - c->hs_off, 0);
			if (n < 0 && errno == EAGAIN)
				return;
			if (n <= 0)
				return fail(r, c, "handshake read");
			c->hs_off += (size_t)n;
			if (c->hs_off < c->reply_len)
				return;
			if (!replies_ok(o, c->hs)) {
				errno = 0;
				return fail(r, c, "refused by the proxy");
			}
			next_message(r, c);
			break;
		case P_SEND: {
			uint64_t total = o->bulk ? o->bulk : o->size;
			uint64_t off = c->sent % o->size;
			size_t len = o->size - off;
			if (len > total - c->sent)
				len = total - c->sent;
			n = send(c->fd, r->msg + off, len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == ENOTCONN)
					return;
				return fail(r, c, "send");
			}
			c->sent += (uint64_t)n;
			r->bytes += (uint64_t)n;
			if (c->sent < total)
				break;
			if (o->bulk) {
				shutdown(c->fd, SHUT_WR);
				c->phase = P_DRAIN;
				set_events(r, c, EPOLLIN);
				return;
			}
			c->phase = P_ACK;
			set_events(r, c, EPOLLIN);
			return;
		}
		case P_ACK: {
			char a;
			n = recv(c->fd, &a, 1, 0);
			if (n < 0 && errno == EAGAIN)
				return;
			if (n <= 0 || a != ACK)
				return fail(r, c, "acknowledgement");
			r->done_msgs++;
			next_message(r, c);
			break;
		}
		case P_DRAIN: {
			char b[64];
			n = recv(c->fd, b, sizeof(b), 0);
			if (n < 0 && errno == EAGAIN)
				return;
			close(c->fd);
			c->phase = P_DONE;
			r->open--;
			return;
		}
		case P_DONE:
			return;
		}
	}
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_ipport(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static void usage(FILE *f)
{
	fputs("usage: socks-bench [--proxy IP:PORT] [-c CONNECTIONS] [-s MESSAGE_BYTES]\n"
	      "                   [-n MESSAGES | --bulk MB] [--source IP] [--user U:P] [--json]\n"
	      "  --proxy IP:PORT  the SOCKS5 proxy (IPv4); without it, straight to the sink\n"
	      "  -c N             concurrent connections (50)\n"
	      "  -s BYTES         message size (102400); the sink acknowledges each message\n"
	      "  -n N             messages over all connections (20000)\n"
	      "  --bulk MB        instead: stream MB megabytes per connection, no acks\n"
	      "  --source IP      BIND IP:0 before CONNECT (source selection)\n"
	      "  --user U:P       RFC 1929 credentials\n",
	      f);
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {{"proxy", required_argument, NULL, 'p'},
					      {"bulk", required_argument, NULL, 'B'},
					      {"source", required_argument, NULL, 'S'},
					      {"user", required_argument, NULL, 'u'},
					      {"json", no_argument, NULL, 'j'},
					      {"help", no_argument, NULL, 'h'},
					      {NULL, 0, NULL, 0}};
	struct opts o = {.conns = 50, .size = 102400, .messages = 20000};
	int ch;
	while ((ch = getopt_long(argc, argv, "c:s:n:h", lopts, NULL)) != -1) {
		switch (ch) {
		case 'p':
			if (parse_ipport(optarg, &o.proxy) < 0) {
				fprintf(stderr, "socks-bench: --proxy wants IPv4:PORT\n");
				return 2;
			}
			break;
		case 'c':
			o.conns = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 's':
			o.size = strtoull(optarg, NULL, 10);
			break;
		case 'n':
			o.messages = strtoull(optarg, NULL, 10);
			break;
		case 'B':
			o.bulk = strtoull(optarg, NULL, 10) * 1000000ULL;
			break;
		case 'S':
			if (inet_pton(AF_INET, optarg, &o.source) != 1) {
				fprintf(stderr, "socks-bench: --source wants an IPv4 address\n");
				return 2;
			}
			o.bind = true;
			break;
		case 'u': {
			char *colon = strchr(optarg, ':');
			if (!colon || colon == optarg || strlen(colon + 1) > 255 ||
			    (size_t)(colon - optarg) > 255) {
				fprintf(stderr, "socks-bench: --user wants USER:PASSWORD\n");
				return 2;
			}
			*colon = '\0';
			o.user = optarg;
			o.pass = colon + 1;
			break;
		}
		case 'j':
			o.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!o.conns || !o.size || (!o.bulk && !o.messages) || optind < argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);

	struct sink k = {0};
	if (sink_start(&k, &o) < 0) {
		perror("socks-bench: sink");
		return 1;
	}
	uint8_t *msg = malloc(o.size);
	for (size_t i = 0; i < o.size; i++)
		msg[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (uint8_t)('a' + i % 26);
	struct run r = {.o = &o, .msg = msg};
	r.ep = epoll_create1(EPOLL_CLOEXEC);
	struct conn *conns = calloc(o.conns, sizeof(*conns));
	bool direct = o.proxy.sin_family == 0;
	double t0 = now_s();
	for (unsigned i = 0; i < o.conns; i++) {
		struct conn *c = &conns[i];
		c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		const struct sockaddr_in *to = direct ? &k.addr : &o.proxy;
		if (direct && o.bind) {
			struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = o.source};
			bind(c->fd, (struct sockaddr *)&src, sizeof(src));
		}
		if (connect(c->fd, (const struct sockaddr *)to, sizeof(*to)) < 0 &&
		    errno != EINPROGRESS) {
			perror("socks-bench: connect");
			return 1;
		}
		r.open++;
		struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
		epoll_ctl(r.ep, EPOLL_CTL_ADD, c->fd, &ev);
		if (direct) {
			c->phase = P_SEND;
			next_message(&r, c);
		} else {
			build_handshake(&o, c, &k.addr);
			c->phase = P_HS_WRITE;
		}
	}
	struct epoll_event evs[MAX_EVENTS];
	while (r.open) {
		int n = epoll_wait(r.ep, evs, MAX_EVENTS, 10000);
		if (n == 0) {
			fprintf(stderr, "socks-bench: no progress for 10 s; %u connections open\n",
				r.open);
			break;
		}
		for (int i = 0; i < n; i++)
			on_event(&r, evs[i].data.ptr);
	}
	double el = now_s() - t0;
	/* wait for the sink to have read everything that was sent */
	for (int i = 0; i < 200 && atomic_load(&k.bytes) < r.bytes; i++)
		usleep(10000);
	atomic_store(&k.stop, true);
	pthread_join(k.thread, NULL);
	uint64_t got = atomic_load(&k.bytes);
	double mbs = (double)got / 1e6 / el;
	if (o.json)
		printf("{\"mode\":\"%s\",\"connections\":%u,\"message_size\":%zu,\"messages\":%llu,"
		       "\"bytes\":%llu,\"seconds\":%.3f,\"mb_per_s\":%.1f,\"msg_per_s\":%.0f,"
		       "\"failures\":%u}\n",
		       direct ? "direct" : "proxy", o.conns, o.size,
		       (unsigned long long)r.done_msgs, (unsigned long long)got, el, mbs,
		       (double)r.done_msgs / el, r.failures);
	else
		printf("%s: %u connections, %llu bytes in %.2f s: %.1f MB/s%s",
		       direct ? "direct" : "proxy", o.conns, (unsigned long long)got, el, mbs,
		       o.bulk ? "\n" : "");
	if (!o.json && !o.bulk)
		printf(", %llu messages of %zu bytes: %.0f msg/s\n",
		       (unsigned long long)r.done_msgs, o.size, (double)r.done_msgs / el);
	if (r.failures)
		fprintf(stderr, "socks-bench: %u connections failed\n", r.failures);
	free(conns);
	free(msg);
	return r.failures ? 1 : 0;
}
