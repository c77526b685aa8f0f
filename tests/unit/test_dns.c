/* Unit tests for engine/dns with a real io_uring against real DNS servers on loopback:
 * dnsmasq (package dnsmasq-base) for MX sets, implicit and null MX and NXDOMAIN, and a
 * small UDP responder in this file for SERVFAIL, REFUSED, silence, SOA minimums, TTLs. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/dns.h"

#define TAG (UINT64_C(0x5a) << 56)
#define T_A 1
#define T_SOA 6
#define T_MX 15
#define T_TXT 16
#define T_AAAA 28

/* ---- The DNS servers. ---- */

/* Queries the responder saw, in memory shared with it; it is the only writer. */
struct counter {
	char name[256];
	_Atomic uint16_t type; /* published after name */
	atomic_uint n;
};

static struct {
	pid_t dnsmasq; /* its watchdog */
	int dm_pipe;   /* closing it stops dnsmasq */
	int dm_port;
	char pidfile[64];
	pid_t responder;
	int resp_port;
	struct counter *counts; /* NCOUNTERS, shared */
} W;

#define NCOUNTERS 64

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A port free for UDP and TCP on 127.0.0.1. */
static int free_port(int from)
{
	for (int p = from; p < from + 2000; p++) {
		bool ok = true;
		for (int t = 0; t < 2 && ok; t++) {
			int fd = socket(AF_INET, t ? SOCK_STREAM : SOCK_DGRAM, 0);
			struct sockaddr_in sa = {.sin_family = AF_INET,
						 .sin_port = htons((uint16_t)p)};
			sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
			close(fd);
		}
		if (ok)
			return p;
	}
	return -1;
}

static size_t put_name(unsigned char *p, const char *name)
{
	size_t o = 0;
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);
		p[o++] = (unsigned char)l;
		memcpy(p + o, name, l);
		o += l;
		name += l + (dot ? 1 : 0);
	}
	p[o++] = 0;
	return o;
}

/* Sends one query for name/type to 127.0.0.1:port; true if any answer came back. */
static bool probe(int port, const char *name, uint16_t type)
{
	unsigned char q[300] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
	size_t n = 12 + put_name(q + 12, name);
	q[n++] = 0;
	q[n++] = (unsigned char)type;
	q[n++] = 0;
	q[n++] = 1;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = {.tv_usec = 200000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	sendto(fd, q, n, 0, (struct sockaddr *)&sa, sizeof(sa));
	unsigned char buf[512];
	bool ok = recv(fd, buf, sizeof(buf), 0) > 0;
	close(fd);
	return ok;
}

static const char *const dnsmasq_records[] = {
    "--mx-host=multi.test,mx1.multi.test,10",
    "--mx-host=multi.test,mx2.multi.test,10",
    "--mx-host=multi.test,mx3.multi.test,20",
    "--host-record=mx1.multi.test,127.0.0.11",
    "--host-record=mx2.multi.test,127.0.0.12,::12",
    "--host-record=mx3.multi.test,127.0.0.13",
    /* the same hosts, other preferences and case: the same site */
    "--mx-host=other.test,MX3.multi.test,1",
    "--mx-host=other.test,mx2.multi.test,2",
    "--mx-host=other.test,Mx1.Multi.Test,3",
    "--host-record=implicit.test,127.0.0.20",
    "--txt-record=noaddr.test,nothing here",
    "--mx-host=deadmx.test,gone.deadmx.test,10",
    "--mx-host=partial.test,gone.partial.test,10",
    "--mx-host=partial.test,mx1.multi.test,20",
    "--mx-host=nullmx.test,.,0",
};

static int start_dnsmasq(void)
{
	char port[32];
	snprintf(W.pidfile, sizeof(W.pidfile), "/tmp/kumo-test-dns-%d.pid", (int)getpid());
	snprintf(port, sizeof(port), "--port=%d", W.dm_port);
	char pidarg[96];
	snprintf(pidarg, sizeof(pidarg), "--pid-file=%s", W.pidfile);
	const char *argv[64] = {"dnsmasq",
				"--no-resolv",
				"--no-hosts",
				"--keep-in-foreground",
				"--conf-file=/dev/null",
				pidarg,
				"--listen-address=127.0.0.1",
				"--bind-interfaces",
				port,
				"--local=/test/",
				"--local-ttl=60"};
	size_t n = 11;
	for (size_t i = 0; i < sizeof(dnsmasq_records) / sizeof(dnsmasq_records[0]); i++)
		argv[n++] = dnsmasq_records[i];
	argv[n] = NULL;
	/* dnsmasq runs under a watchdog that stops it once this process closes the pipe or
	 * ends, however it ends (dnsmasq drops privileges, which clears a parent-death
	 * signal). The watchdog exits with dnsmasq's status (127: dnsmasq not found). */
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close(pfd[1]);
		if (W.dm_pipe >= 0)
			close(W.dm_pipe);
		pid_t d = fork();
		if (d == 0) {
			int null = open("/dev/null", O_RDWR);
			dup2(null, 1);
			dup2(null, 2);
			execvp("dnsmasq", (char *const *)argv);
			execv("/usr/sbin/dnsmasq", (char *const *)argv);
			_exit(127);
		}
		for (;;) {
			int st;
			if (d < 0 || waitpid(d, &st, WNOHANG) == d)
				_exit(d > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : 1);
			struct pollfd p = {.fd = pfd[0], .events = POLLIN};
			if (poll(&p, 1, 100) > 0) {
				kill(d, SIGTERM);
				waitpid(d, NULL, 0);
				_exit(0);
			}
		}
	}
	close(pfd[0]);
	W.dm_pipe = pfd[1];
	W.dnsmasq = pid;
	for (int i = 0; i < 50; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			/* not installed, or the port was taken in the meantime */
			W.dnsmasq = 0;
			close(W.dm_pipe);
			W.dm_pipe = -1;
			return WIFEXITED(st) && WEXITSTATUS(st) == 127 ? -ENOENT : -EADDRINUSE;
		}
		if (probe(W.dm_port, "multi.test", T_MX)) {
			/* the answer may have come from someone else's server on that port */
			usleep(50000);
			if (waitpid(pid, &st, WNOHANG) == pid) {
				W.dnsmasq = 0;
				close(W.dm_pipe);
				W.dm_pipe = -1;
				return -EADDRINUSE;
			}
			return 0;
		}
		usleep(100000);
	}
	return -ETIMEDOUT;
}

static void stop_dnsmasq(void)
{
	if (W.dnsmasq > 0) {
		close(W.dm_pipe); /* the watchdog stops dnsmasq and exits */
		W.dm_pipe = -1;
		waitpid(W.dnsmasq, NULL, 0);
		W.dnsmasq = 0;
	}
	unlink(W.pidfile);
}

/* The responder's zone. Names present with other types answer NODATA with an SOA whose
 * minimum is 7; absent names NXDOMAIN with an SOA whose minimum is 9. */
struct rrec {
	const char *name;
	uint16_t type;
	uint32_t ttl;
	uint16_t pref;
	const char *data; /* MX target ("" = root) or address */
};

static const struct rrec zone[] = {
    {"ttl.test", T_MX, 100, 10, "mx.ttl.test"},
    {"mx.ttl.test", T_A, 20, 0, "127.0.0.30"},
    {"coal.test", T_MX, 300, 10, "mx.coal.test"},
    {"mx.coal.test", T_A, 300, 0, "127.0.0.31"},
    {"share1.test", T_MX, 300, 10, "mx.share.test"},
    {"share2.test", T_MX, 300, 20, "MX.Share.Test"},
    {"mx.share.test", T_A, 300, 0, "127.0.0.32"},
    {"mx.share.test", T_AAAA, 300, 0, "::32"},
    {"mixnull.test", T_MX, 300, 0, ""},
    {"mixnull.test", T_MX, 300, 10, "mx.mixnull.test"},
    {"mx.mixnull.test", T_A, 300, 0, "127.0.0.40"},
    {"big.test", T_MX, 4000000, 10, "mx.big.test"},
    {"mx.big.test", T_A, 4000000, 0, "127.0.0.41"},
    {"mx.big.test", T_AAAA, 4000000, 0, "::41"},
    {"tc.test", T_MX, 300, 10, "mx.coal.test"},
};

static unsigned count_of(const char *name, uint16_t type)
{
	for (size_t i = 0; i < NCOUNTERS; i++) {
		uint16_t t = atomic_load_explicit(&W.counts[i].type, memory_order_acquire);
		if (t == 0)
			break;
		if (t == type && strcmp(W.counts[i].name, name) == 0)
			return atomic_load(&W.counts[i].n);
	}
	return 0;
}

/* The count once the responder has seen at least want queries (or after 2 s). */
static unsigned wait_count(const char *name, uint16_t type, unsigned want)
{
	uint64_t start = mono_ms();
	while (count_of(name, type) < want && mono_ms() - start < 2000)
		usleep(1000);
	return count_of(name, type);
}

static void count_query(const char *name, uint16_t type)
{
	size_t i;
	for (i = 0; i < NCOUNTERS; i++) {
		struct counter *c = &W.counts[i];
		uint16_t t = atomic_load_explicit(&c->type, memory_order_relaxed);
		if (t == 0) {
			snprintf(c->name, sizeof(c->name), "%s", name);
			atomic_store_explicit(&c->type, type, memory_order_release);
		} else if (t != type || strcmp(c->name, name) != 0) {
			continue;
		}
		atomic_fetch_add(&c->n, 1);
		return;
	}
}

static size_t put_rr_head(unsigned char *p, uint16_t type, uint32_t ttl, uint16_t rdlen)
{
	unsigned char h[12] = {0xc0,	 12,	     type >> 8,	 type & 0xff,
			       0,	 1,	     ttl >> 24,	 ttl >> 16,
			       ttl >> 8, ttl & 0xff, rdlen >> 8, rdlen & 0xff};
	memcpy(p, h, 12);
	return 12;
}

static size_t put_soa(unsigned char *p, uint32_t minimum)
{
	unsigned char rd[100];
	size_t n = put_name(rd, "ns.test");
	n += put_name(rd + n, "hostmaster.test");
	uint32_t v[5] = {1, 3600, 600, 86400, minimum};
	for (int i = 0; i < 5; i++) {
		rd[n++] = (unsigned char)(v[i] >> 24);
		rd[n++] = (unsigned char)(v[i] >> 16);
		rd[n++] = (unsigned char)(v[i] >> 8);
		rd[n++] = (unsigned char)v[i];
	}
	size_t o = put_rr_head(p, T_SOA, 3600, (uint16_t)n);
	memcpy(p + o, rd, n);
	return o + n;
}

/* Builds the reply to query q (n bytes) into r; returns its length, 0 for none.
 * tc.test is truncated over UDP, so that the client retries over TCP. */
static size_t respond(const unsigned char *q, size_t n, unsigned char *r, bool tcp)
{
	char name[256];
	size_t o = 12, l = 0;
	if (n < 17)
		return 0;
	while (o < n && q[o]) {
		size_t ll = q[o];
		if (o + 1 + ll >= n || l + ll + 1 >= sizeof(name))
			return 0;
		if (l)
			name[l++] = '.';
		for (size_t i = 0; i < ll; i++) {
			char c = (char)q[o + 1 + i];
			name[l++] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
		}
		o += 1 + ll;
	}
	name[l] = '\0';
	if (o + 5 > n)
		return 0;
	uint16_t type = (uint16_t)(q[o + 1] << 8 | q[o + 2]);
	size_t qend = o + 5;
	count_query(name, type);
	if (strcmp(name, "drop.test") == 0)
		return 0;
	memcpy(r, q, qend);
	r[2] = 0x84 | (q[2] & 1); /* QR, AA, RD copied */
	r[3] = 0x80;		  /* RA */
	memset(r + 6, 0, 6);	  /* an, ns, ar */
	if (strcmp(name, "servfail.test") == 0) {
		r[3] |= 2;
		return qend;
	}
	if (strcmp(name, "refused.test") == 0) {
		r[3] |= 5;
		return qend;
	}
	if (strcmp(name, "tc.test") == 0 && !tcp) {
		r[2] |= 2;
		return qend;
	}
	size_t out = qend;
	unsigned an = 0;
	bool exists = false;
	for (size_t i = 0; i < sizeof(zone) / sizeof(zone[0]); i++) {
		const struct rrec *z = &zone[i];
		if (strcmp(z->name, name) != 0)
			continue;
		exists = true;
		if (z->type != type)
			continue;
		an++;
		if (type == T_MX) {
			unsigned char rd[260] = {z->pref >> 8, z->pref & 0xff};
			size_t rl = 2 + put_name(rd + 2, z->data);
			out += put_rr_head(r + out, T_MX, z->ttl, (uint16_t)rl);
			memcpy(r + out, rd, rl);
			out += rl;
		} else if (type == T_A) {
			out += put_rr_head(r + out, T_A, z->ttl, 4);
			inet_pton(AF_INET, z->data, r + out);
			out += 4;
		} else {
			out += put_rr_head(r + out, T_AAAA, z->ttl, 16);
			inet_pton(AF_INET6, z->data, r + out);
			out += 16;
		}
	}
	r[7] = (unsigned char)an;
	if (an == 0) {
		if (!exists)
			r[3] |= 3; /* NXDOMAIN */
		out += put_soa(r + out, exists ? 7 : 9);
		r[9] = 1;
	}
	return out;
}

static bool read_full(int fd, unsigned char *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

/* The responder: a child process answering on UDP and TCP (one query per connection)
 * until killed. */
static void responder(int ufd, int tfd)
{
	unsigned char q[1500], r[1500];
	for (;;) {
		struct pollfd p[2] = {{.fd = ufd, .events = POLLIN}, {.fd = tfd, .events = POLLIN}};
		if (poll(p, 2, -1) <= 0)
			continue;
		if (p[0].revents) {
			struct sockaddr_storage from;
			socklen_t fl = sizeof(from);
			ssize_t n = recvfrom(ufd, q, sizeof(q), 0, (struct sockaddr *)&from, &fl);
			size_t rl = n > 0 ? respond(q, (size_t)n, r, false) : 0;
			if (rl)
				sendto(ufd, r, rl, 0, (struct sockaddr *)&from, fl);
		}
		if (p[1].revents) {
			int c = accept(tfd, NULL, NULL);
			if (c < 0)
				continue;
			struct timeval tv = {.tv_sec = 1};
			setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			unsigned char len[2];
			if (read_full(c, len, 2) &&
			    read_full(c, q, (size_t)(len[0] << 8 | len[1]))) {
				size_t rl = respond(q, (size_t)(len[0] << 8 | len[1]), r + 2, true);
				r[0] = (unsigned char)(rl >> 8);
				r[1] = (unsigned char)rl;
				if (rl && write(c, r, rl + 2) < 0)
					rl = 0;
			}
			close(c);
		}
	}
}

static int group_setup(void **state)
{
	W.dm_pipe = -1;
	W.counts = mmap(NULL, NCOUNTERS * sizeof(*W.counts), PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (W.counts == MAP_FAILED)
		return -1;
	int rc = -EADDRINUSE;
	for (int i = 0; i < 20 && rc == -EADDRINUSE; i++) {
		W.dm_port = free_port(15353 + (int)((getpid() + 37 * i) % 1000));
		if (W.dm_port < 0)
			return -1;
		rc = start_dnsmasq();
	}
	if (rc == -ENOENT) {
		fprintf(stderr, "dnsmasq not found (package dnsmasq-base): skipping\n");
		exit(77);
	}
	if (rc < 0)
		return -1;
	int ufd = -1, tfd = -1;
	for (int i = 0; i < 20; i++) {
		W.resp_port = free_port(W.dm_port + 1 + 53 * i);
		ufd = socket(AF_INET, SOCK_DGRAM, 0);
		tfd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons((uint16_t)W.resp_port)};
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		setsockopt(tfd, SOL_SOCKET, SO_REUSEADDR, &(int){1}, sizeof(int));
		if (W.resp_port > 0 && bind(ufd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    bind(tfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(tfd, 16) == 0)
			break;
		close(ufd);
		close(tfd);
		ufd = tfd = -1;
	}
	if (ufd < 0)
		return -1;
	W.responder = fork();
	if (W.responder < 0)
		return -1;
	if (W.responder == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(W.dm_pipe);
		responder(ufd, tfd);
	}
	close(ufd);
	close(tfd);
	return 0;
}

static int group_teardown(void **state)
{
	stop_dnsmasq();
	if (W.responder > 0) {
		kill(W.responder, SIGTERM);
		waitpid(W.responder, NULL, 0);
	}
	return 0;
}

/* ---- A resolver on a real ring, and what its callbacks saw. ---- */

struct harness {
	struct io_uring ring;
	struct kumo_dns *dns;
	uint64_t now; /* the cache's clock, moved by the tests */
	unsigned cancelled, removes;
};

static void h_init(struct harness *h, const char *servers, struct kumo_dns_cfg cfg)
{
	memset(h, 0, sizeof(*h));
	h->now = 1000000;
	assert_int_equal(io_uring_queue_init(64, &h->ring, 0), 0);
	cfg.servers = servers;
	assert_int_equal(kumo_dns_new(&cfg, &h->ring, TAG, &h->dns), 0);
}

static void h_fini(struct harness *h)
{
	kumo_dns_free(h->dns);
	io_uring_queue_exit(&h->ring);
}

static char *dm_servers(char *buf)
{
	sprintf(buf, "127.0.0.1:%d", W.dm_port);
	return buf;
}

static char *resp_servers(char *buf)
{
	sprintf(buf, "127.0.0.1:%d", W.resp_port);
	return buf;
}

/* One turn of a loop: submit, wait a little, feed completions, tick. */
static void pump(struct harness *h, unsigned wait_ms)
{
	struct io_uring_cqe *cqe;
	uint64_t t = kumo_dns_next_timeout_ms(h->dns);
	if (t < wait_ms)
		wait_ms = (unsigned)t;
	io_uring_submit(&h->ring);
	struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = (long long)wait_ms * 1000000};
	io_uring_wait_cqe_timeout(&h->ring, &cqe, &ts);
	unsigned head, n = 0;
	io_uring_for_each_cqe(&h->ring, head, cqe)
	{
		assert_true((cqe->user_data >> 56) == (TAG >> 56));
		if (cqe->res == -ECANCELED)
			h->cancelled++;
		if ((uint32_t)cqe->user_data == 0xffffffffu)
			h->removes++;
		kumo_dns_complete(h->dns, cqe->user_data, cqe->res);
		n++;
	}
	io_uring_cq_advance(&h->ring, n);
	kumo_dns_tick(h->dns, h->now);
}

static void drive(struct harness *h, const int *calls, int want)
{
	uint64_t start = mono_ms();
	while (*calls < want) {
		assert_true(mono_ms() - start < 10000);
		pump(h, 20);
	}
}

struct got_host {
	char name[256];
	uint16_t pref;
	size_t naddrs;
	char addrs[8][INET6_ADDRSTRLEN];
};

struct got {
	int calls;
	int seq; /* order among callbacks */
	int status;
	bool implicit;
	char domain[256];
	char error[400];
	char site[600];
	bool site_null;
	size_t nhosts;
	struct got_host hosts[8];
};

static int callback_seq;

static void record(const struct kumo_mx_result *r, void *arg)
{
	struct got *g = arg;
	g->calls++;
	g->seq = ++callback_seq;
	g->status = r->status;
	g->implicit = r->implicit;
	snprintf(g->domain, sizeof(g->domain), "%s", r->domain);
	snprintf(g->error, sizeof(g->error), "%s", r->error);
	g->site_null = r->site == NULL;
	snprintf(g->site, sizeof(g->site), "%s", r->site ? r->site : "");
	g->nhosts = r->nhosts;
	assert_true(r->nhosts <= 8);
	for (size_t i = 0; i < r->nhosts; i++) {
		struct got_host *o = &g->hosts[i];
		snprintf(o->name, sizeof(o->name), "%s", r->hosts[i].name);
		o->pref = r->hosts[i].pref;
		o->naddrs = r->hosts[i].naddrs;
		assert_true(o->naddrs <= 8);
		for (size_t a = 0; a < o->naddrs; a++) {
			const struct kumo_mx_addr *x = &r->hosts[i].addrs[a];
			assert_true(x->family == AF_INET || x->family == AF_INET6);
			inet_ntop(x->family, x->addr, o->addrs[a], sizeof(o->addrs[a]));
		}
	}
}

/* Resolves and waits for the callback; returns whether it ran before resolve returned. */
static bool resolve(struct harness *h, const char *domain, struct got *g)
{
	int before = g->calls;
	assert_int_equal(kumo_dns_resolve_mx(h->dns, domain, h->now, record, g), 0);
	bool sync = g->calls == before + 1;
	drive(h, &g->calls, before + 1);
	return sync;
}

static struct kumo_dns_stats stats(struct harness *h)
{
	struct kumo_dns_stats st;
	kumo_dns_get_stats(h->dns, &st);
	return st;
}

/* ---- Tests against dnsmasq. ---- */

static void test_mx_order_and_addresses(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});

	assert_false(resolve(&h, "multi.test", &g));
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_string_equal(g.error, "");
	assert_string_equal(g.domain, "multi.test");
	assert_false(g.implicit);
	assert_int_equal(g.nhosts, 3);
	assert_int_equal(g.hosts[0].pref, 10);
	assert_int_equal(g.hosts[1].pref, 10);
	assert_int_equal(g.hosts[2].pref, 20);
	assert_string_equal(g.hosts[2].name, "mx3.multi.test");
	assert_int_equal(g.hosts[2].naddrs, 1);
	assert_string_equal(g.hosts[2].addrs[0], "127.0.0.13");
	for (int i = 0; i < 2; i++) {
		if (strcmp(g.hosts[i].name, "mx1.multi.test") == 0) {
			assert_int_equal(g.hosts[i].naddrs, 1);
			assert_string_equal(g.hosts[i].addrs[0], "127.0.0.11");
		} else {
			assert_string_equal(g.hosts[i].name, "mx2.multi.test");
			assert_int_equal(g.hosts[i].naddrs, 2); /* A first, then AAAA */
			assert_string_equal(g.hosts[i].addrs[0], "127.0.0.12");
			assert_string_equal(g.hosts[i].addrs[1], "::12");
		}
	}
	assert_string_equal(g.site, "mx1.multi.test,mx2.multi.test,mx3.multi.test");
	struct kumo_dns_stats st = stats(&h);
	assert_int_equal(st.queries, 1 + 3 * 2);
	assert_int_equal(st.mx_hits, 0);
	assert_int_equal(st.cached, 4);

	/* case and a trailing dot do not matter: the same entry, from the cache */
	struct got g2 = {0};
	assert_true(resolve(&h, "MULTI.Test.", &g2));
	assert_string_equal(g2.domain, "multi.test");
	assert_string_equal(g2.site, g.site);
	assert_int_equal(stats(&h).queries, st.queries);
	assert_int_equal(stats(&h).mx_hits, 1);
	assert_int_equal(stats(&h).host_hits, 3);
	h_fini(&h);
}

static void test_equal_preferences_shuffled(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "multi.test", &g);
	int first_mx1 = 0, first_mx2 = 0;
	for (int i = 0; i < 200; i++) {
		assert_true(resolve(&h, "multi.test", &g));
		assert_int_equal(g.nhosts, 3);
		assert_string_equal(g.hosts[2].name, "mx3.multi.test");
		if (strcmp(g.hosts[0].name, "mx1.multi.test") == 0) {
			first_mx1++;
			assert_string_equal(g.hosts[1].name, "mx2.multi.test");
		} else {
			first_mx2++;
			assert_string_equal(g.hosts[1].name, "mx1.multi.test");
		}
	}
	assert_true(first_mx1 > 20);
	assert_true(first_mx2 > 20);
	h_fini(&h);
}

static void test_site_shared(void **state)
{
	struct harness h;
	char s[64];
	struct got a = {0}, b = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "multi.test", &a);
	resolve(&h, "other.test", &b);
	assert_int_equal(b.status, KUMO_DNS_OK);
	assert_string_equal(a.site, b.site);
	/* other.test's order follows its own preferences; hosts came from the cache */
	assert_string_equal(b.hosts[0].name, "mx3.multi.test");
	assert_string_equal(b.hosts[1].name, "mx2.multi.test");
	assert_string_equal(b.hosts[2].name, "mx1.multi.test");
	assert_int_equal(b.hosts[2].pref, 3);
	assert_int_equal(stats(&h).host_hits, 3);
	h_fini(&h);
}

static void test_implicit_mx(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "implicit.test", &g);
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_true(g.implicit);
	assert_int_equal(g.nhosts, 1);
	assert_string_equal(g.hosts[0].name, "implicit.test");
	assert_int_equal(g.hosts[0].pref, 0);
	assert_int_equal(g.hosts[0].naddrs, 1);
	assert_string_equal(g.hosts[0].addrs[0], "127.0.0.20");
	assert_string_equal(g.site, "implicit.test");
	h_fini(&h);
}

static void test_no_addresses(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});

	resolve(&h, "noaddr.test", &g); /* no MX, no A/AAAA (a TXT only) */
	assert_int_equal(g.status, KUMO_DNS_PERM_NO_ADDRESSES);
	assert_true(g.implicit);
	assert_int_equal(g.nhosts, 0);
	assert_true(g.site_null);
	assert_non_null(strstr(g.error, "noaddr.test: no MX records and no A or AAAA"));

	resolve(&h, "deadmx.test", &g); /* its only MX host does not exist */
	assert_int_equal(g.status, KUMO_DNS_PERM_NO_ADDRESSES);
	assert_false(g.implicit);
	assert_non_null(strstr(g.error, "none of its MX hosts"));

	resolve(&h, "partial.test", &g); /* one of two hosts does not exist */
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_int_equal(g.nhosts, 2);
	assert_string_equal(g.hosts[0].name, "gone.partial.test");
	assert_int_equal(g.hosts[0].naddrs, 0);
	assert_string_equal(g.hosts[1].name, "mx1.multi.test");
	assert_int_equal(g.hosts[1].naddrs, 1);
	h_fini(&h);
}

static void test_nxdomain(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "nosuchdomain.test", &g);
	assert_int_equal(g.status, KUMO_DNS_PERM_NXDOMAIN);
	assert_int_equal(g.nhosts, 0);
	assert_true(g.site_null);
	assert_string_equal(g.error, "nosuchdomain.test: no such domain (NXDOMAIN)");
	assert_int_equal(stats(&h).queries, 1);
	/* dnsmasq sends no SOA: cached for the default negative TTL (300 s) */
	h.now += 299 * 1000;
	assert_true(resolve(&h, "nosuchdomain.test", &g));
	h.now += 2000;
	assert_false(resolve(&h, "nosuchdomain.test", &g));
	assert_int_equal(stats(&h).queries, 2);
	h_fini(&h);
}

static void test_null_mx(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "nullmx.test", &g);
	assert_int_equal(g.status, KUMO_DNS_PERM_NULL_MX);
	assert_int_equal(g.nhosts, 0);
	assert_true(g.site_null);
	assert_non_null(strstr(g.error, "null MX"));
	assert_int_equal(stats(&h).queries, 1); /* no address lookups */
	h_fini(&h);

	/* a root target next to a real host is dropped */
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	resolve(&h, "mixnull.test", &g);
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_int_equal(g.nhosts, 1);
	assert_string_equal(g.hosts[0].name, "mx.mixnull.test");
	assert_string_equal(g.site, "mx.mixnull.test");
	h_fini(&h);
}

static void test_cache_survives_server_stop(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, dm_servers(s), (struct kumo_dns_cfg){.timeout_ms = 200, .tries = 1});
	resolve(&h, "multi.test", &g);
	resolve(&h, "implicit.test", &g);
	uint64_t q = stats(&h).queries;
	stop_dnsmasq();
	assert_true(resolve(&h, "multi.test", &g));
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_int_equal(g.nhosts, 3);
	assert_true(resolve(&h, "implicit.test", &g));
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_string_equal(g.hosts[0].addrs[0], "127.0.0.20");
	assert_int_equal(stats(&h).queries, q);
	/* past the TTL (dnsmasq --local-ttl=60) the server is asked, and is gone */
	h.now += 61 * 1000;
	assert_false(resolve(&h, "multi.test", &g));
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_non_null(strstr(g.error, "multi.test: MX lookup failed: "));
	int rc = start_dnsmasq(); /* the same port, for the tests that may follow */
	for (int i = 0; i < 20 && rc == -EADDRINUSE; i++) {
		usleep(100000);
		rc = start_dnsmasq();
	}
	assert_int_equal(rc, 0);
	h_fini(&h);
}

/* ---- Tests against the responder. ---- */

static void test_servfail_refused_temp(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){.temp_ttl_s = 5, .tries = 2});
	unsigned before = count_of("servfail.test", T_MX);
	assert_false(resolve(&h, "servfail.test", &g));
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_non_null(strstr(g.error, "servfail.test: MX lookup failed"));
	assert_true(count_of("servfail.test", T_MX) > before);
	/* temporary failures are cached for temp_ttl_s */
	unsigned asked = count_of("servfail.test", T_MX);
	h.now += 4000;
	assert_true(resolve(&h, "servfail.test", &g));
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_int_equal(wait_count("servfail.test", T_MX, asked), asked);
	h.now += 2000;
	assert_false(resolve(&h, "servfail.test", &g));
	assert_true(count_of("servfail.test", T_MX) > asked);

	resolve(&h, "refused.test", &g);
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_int_equal(g.nhosts, 0);
	h_fini(&h);
}

static void test_timeout_temp(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){.timeout_ms = 150, .tries = 2});
	assert_int_equal(kumo_dns_next_timeout_ms(h.dns), UINT64_MAX);
	uint64_t t0 = mono_ms();
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "drop.test", h.now, record, &g), 0);
	assert_int_equal(g.calls, 0);
	assert_true(kumo_dns_next_timeout_ms(h.dns) <= 150);
	assert_int_equal(stats(&h).sockets, 1);
	drive(&h, &g.calls, 1);
	uint64_t took = mono_ms() - t0;
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_non_null(strstr(g.error, "drop.test: MX lookup failed: "));
	assert_true(took >= 150 * 3 - 20); /* 150 ms, then 300 ms */
	assert_true(took < 3000);
	assert_int_equal(wait_count("drop.test", T_MX, 2), 2);
	/* c-ares closed the socket while its poll was armed: the poll was removed */
	assert_int_equal(stats(&h).sockets, 0);
	for (int i = 0; i < 10 && (h.cancelled == 0 || h.removes == 0); i++)
		pump(&h, 20);
	assert_true(h.cancelled >= 1);
	assert_true(h.removes >= 1);
	assert_int_equal(kumo_dns_next_timeout_ms(h.dns), UINT64_MAX);
	h_fini(&h);
}

static void test_connection_refused_temp(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	int port = free_port(20000 + (int)(getpid() % 5000));
	sprintf(s, "127.0.0.1:%d", port); /* nothing listens: ICMP port unreachable */
	h_init(&h, s, (struct kumo_dns_cfg){.timeout_ms = 200, .tries = 2});
	resolve(&h, "multi.test", &g);
	assert_int_equal(g.status, KUMO_DNS_TEMP);
	assert_int_equal(g.nhosts, 0);
	h_fini(&h);
}

/* A truncated UDP answer: c-ares retries over TCP, whose socket wants write events
 * while it connects (the poll is replaced by one with POLLOUT, then back). */
static void test_truncated_answer_over_tcp(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	unsigned mx0 = count_of("tc.test", T_MX);
	assert_false(resolve(&h, "tc.test", &g));
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_int_equal(g.nhosts, 1);
	assert_string_equal(g.hosts[0].name, "mx.coal.test");
	assert_string_equal(g.hosts[0].addrs[0], "127.0.0.31");
	assert_int_equal(wait_count("tc.test", T_MX, mx0 + 2), mx0 + 2); /* UDP, then TCP */
	for (int i = 0; i < 5; i++)
		pump(&h, 10);
	assert_int_equal(stats(&h).sockets, 0);
	h_fini(&h);
}

static void test_ttls(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	unsigned mx0 = count_of("ttl.test", T_MX), a0 = count_of("mx.ttl.test", T_A);
	unsigned aaaa0 = count_of("mx.ttl.test", T_AAAA);
	assert_false(resolve(&h, "ttl.test", &g));
	assert_int_equal(g.status, KUMO_DNS_OK);
	assert_string_equal(g.hosts[0].addrs[0], "127.0.0.30");
	assert_int_equal(wait_count("ttl.test", T_MX, mx0 + 1), mx0 + 1);
	assert_int_equal(wait_count("mx.ttl.test", T_A, a0 + 1), a0 + 1);
	assert_int_equal(wait_count("mx.ttl.test", T_AAAA, aaaa0 + 1), aaaa0 + 1);
	/* the host expires with its shortest answer: AAAA NODATA, SOA minimum 7 s */
	h.now += 6000;
	assert_true(resolve(&h, "ttl.test", &g));
	h.now += 2000;
	assert_false(resolve(&h, "ttl.test", &g));
	assert_int_equal(wait_count("ttl.test", T_MX, mx0 + 1), mx0 + 1); /* MX TTL is 100 s */
	assert_int_equal(wait_count("mx.ttl.test", T_A, a0 + 2), a0 + 2);
	assert_int_equal(wait_count("mx.ttl.test", T_AAAA, aaaa0 + 2), aaaa0 + 2);
	h.now += 93 * 1000; /* 101 s after the first answer */
	assert_false(resolve(&h, "ttl.test", &g));
	assert_int_equal(wait_count("ttl.test", T_MX, mx0 + 2), mx0 + 2);
	assert_int_equal(g.status, KUMO_DNS_OK);

	/* NXDOMAIN with an SOA: cached for its minimum, 9 s */
	unsigned nx0 = count_of("nx.ttl.test", T_MX);
	resolve(&h, "nx.ttl.test", &g);
	assert_int_equal(g.status, KUMO_DNS_PERM_NXDOMAIN);
	h.now += 8000;
	assert_true(resolve(&h, "nx.ttl.test", &g));
	assert_int_equal(wait_count("nx.ttl.test", T_MX, nx0 + 1), nx0 + 1);
	h.now += 2000;
	assert_false(resolve(&h, "nx.ttl.test", &g));
	assert_int_equal(wait_count("nx.ttl.test", T_MX, nx0 + 2), nx0 + 2);
	h_fini(&h);

	/* max_ttl_s caps a TTL of 4,000,000 s */
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){.max_ttl_s = 50});
	resolve(&h, "big.test", &g);
	assert_int_equal(g.status, KUMO_DNS_OK);
	h.now += 49 * 1000;
	assert_true(resolve(&h, "big.test", &g));
	h.now += 2000;
	assert_false(resolve(&h, "big.test", &g));
	h_fini(&h);
}

static void test_coalescing(void **state)
{
	struct harness h;
	char s[64];
	struct got g[5] = {{0}};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	unsigned mx0 = count_of("coal.test", T_MX), a0 = count_of("mx.coal.test", T_A);
	for (int i = 0; i < 5; i++)
		assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, record, &g[i]), 0);
	drive(&h, &g[4].calls, 1);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(g[i].calls, 1);
		assert_int_equal(g[i].status, KUMO_DNS_OK);
		assert_string_equal(g[i].hosts[0].addrs[0], "127.0.0.31");
		if (i)
			assert_true(g[i].seq == g[i - 1].seq + 1); /* in the order of the calls */
	}
	assert_int_equal(wait_count("coal.test", T_MX, mx0 + 1), mx0 + 1);
	assert_int_equal(wait_count("mx.coal.test", T_A, a0 + 1), a0 + 1);
	assert_int_equal(stats(&h).coalesced, 4);
	assert_int_equal(stats(&h).queries, 3);

	/* two domains sharing a host in flight at once: one address lookup */
	struct got x = {0}, y = {0};
	unsigned sa0 = count_of("mx.share.test", T_A);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "share1.test", h.now, record, &x), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "share2.test", h.now, record, &y), 0);
	drive(&h, &x.calls, 1);
	drive(&h, &y.calls, 1);
	assert_int_equal(wait_count("mx.share.test", T_A, sa0 + 1), sa0 + 1);
	assert_string_equal(x.site, "mx.share.test");
	assert_string_equal(y.site, "mx.share.test");
	assert_int_equal(y.hosts[0].naddrs, 2);
	assert_string_equal(y.hosts[0].addrs[1], "::32");
	h_fini(&h);
}

static void test_cancel(void **state)
{
	struct harness h;
	char s[64];
	struct got a = {0}, b = {0}, c = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "share1.test", h.now, record, &a), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "share1.test", h.now, record, &b), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, record, &a), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, record, &c), 0);
	assert_int_equal(kumo_dns_cancel(h.dns, record, &a), 2);
	assert_int_equal(kumo_dns_cancel(h.dns, record, &a), 0);
	drive(&h, &b.calls, 1);
	drive(&h, &c.calls, 1);
	for (int i = 0; i < 5; i++)
		pump(&h, 10);
	assert_int_equal(a.calls, 0);
	assert_int_equal(b.status, KUMO_DNS_OK);
	/* the lookup went on and filled the cache */
	assert_true(resolve(&h, "share1.test", &a));
	h_fini(&h);
}

/* Callbacks that start lookups and cancel others while results are delivered. */
struct nest {
	struct harness *h;
	struct got inner, victim, first;
};

static void nest_first(const struct kumo_mx_result *r, void *arg)
{
	struct nest *n = arg;
	record(r, &n->first);
	/* the same domain again: answered at once from the cache */
	assert_int_equal(kumo_dns_resolve_mx(n->h->dns, r->domain, n->h->now, record, &n->inner),
			 0);
	assert_int_equal(n->inner.calls, 1);
	assert_int_equal(n->inner.status, KUMO_DNS_OK);
	/* a waiter of this very batch, not yet called */
	assert_int_equal(kumo_dns_cancel(n->h->dns, record, &n->victim), 1);
}

static void test_reentrant_callbacks(void **state)
{
	struct harness h;
	char s[64];
	struct nest n = {.h = &h};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){0});
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, nest_first, &n), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, record, &n.victim), 0);
	drive(&h, &n.first.calls, 1);
	for (int i = 0; i < 3; i++)
		pump(&h, 10);
	assert_int_equal(n.first.calls, 1);
	assert_int_equal(n.inner.calls, 1);
	assert_int_equal(n.victim.calls, 0);
	h_fini(&h);
}

static void test_eviction(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){.cache_max = 3});
	resolve(&h, "coal.test", &g);	/* domain + host */
	resolve(&h, "share1.test", &g); /* domain + host: 4 entries, over */
	assert_true(stats(&h).cached <= 3);
	assert_true(stats(&h).evictions >= 1);
	uint64_t q = stats(&h).queries;
	/* the oldest (coal.test) went first: asked again */
	assert_false(resolve(&h, "coal.test", &g));
	assert_true(stats(&h).queries > q);
	assert_int_equal(g.status, KUMO_DNS_OK);
	h_fini(&h);
}

/* ---- Without a server. ---- */

static void test_bad_arguments(void **state)
{
	struct io_uring ring;
	struct kumo_dns *dns;
	struct got g = {0};
	assert_int_equal(io_uring_queue_init(8, &ring, 0), 0);
	struct kumo_dns_cfg cfg = {.servers = "not an address"};
	assert_int_equal(kumo_dns_new(&cfg, &ring, TAG, &dns), -EINVAL);
	cfg.servers = "";
	assert_int_equal(kumo_dns_new(&cfg, &ring, TAG, &dns), -EINVAL);
	assert_int_equal(kumo_dns_new(NULL, &ring, TAG, &dns), -EINVAL);
	/* no servers given: /etc/resolv.conf's (read, never asked here) */
	assert_int_equal(kumo_dns_new(&(struct kumo_dns_cfg){0}, &ring, TAG, &dns), 0);
	kumo_dns_free(dns);
	cfg.servers = "127.0.0.1:1,[::1]:2,127.0.0.2";
	assert_int_equal(kumo_dns_new(&cfg, &ring, TAG, &dns), 0);

	char label64[80], long254[300];
	memset(label64, 'a', 64);
	strcpy(label64 + 64, ".test");
	for (int i = 0; i < 254; i++)
		long254[i] = i % 2 ? '.' : 'a';
	long254[254] = 'a';
	long254[255] = '\0';
	const char *bad[] = {"", ".", "a..b", ".a", "a b", "a\\b", "a\tb", label64, long254};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kumo_dns_resolve_mx(dns, bad[i], 0, record, &g), -EINVAL);
	assert_int_equal(kumo_dns_resolve_mx(dns, "ok.test", 0, NULL, &g), -EINVAL);
	assert_int_equal(g.calls, 0);
	assert_int_equal(stats(&(struct harness){.dns = dns}).queries, 0);

	/* completions that are not (or no longer) ours are ignored */
	kumo_dns_complete(dns, TAG | 5, 1);
	kumo_dns_complete(dns, TAG | UINT64_C(0x123456) << 32 | 0, POLLIN);
	kumo_dns_complete(dns, TAG | 0xffffffffu, 0);
	kumo_dns_complete(dns, UINT64_C(0x11) << 56, POLLIN);
	kumo_dns_tick(dns, 1);
	kumo_dns_free(dns);
	kumo_dns_free(NULL);
	io_uring_queue_exit(&ring);
}

/* Lookups in flight when the resolver is freed are dropped without callbacks. */
static void test_free_with_lookups_in_flight(void **state)
{
	struct harness h;
	char s[64];
	struct got g = {0};
	h_init(&h, resp_servers(s), (struct kumo_dns_cfg){});
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "drop.test", h.now, record, &g), 0);
	assert_int_equal(kumo_dns_resolve_mx(h.dns, "coal.test", h.now, record, &g), 0);
	io_uring_submit(&h.ring);
	h_fini(&h);
	assert_int_equal(g.calls, 0);
}

static size_t msg_header(unsigned char *m, unsigned qd, unsigned an, unsigned ns)
{
	unsigned char h[12] = {
	    0, 1, 0x81, 0x80, 0, (unsigned char)qd, 0, (unsigned char)an, 0, (unsigned char)ns,
	    0, 0};
	memcpy(m, h, 12);
	return 12;
}

static void test_msg_ttls(void **state)
{
	unsigned char m[512] = {0};
	uint32_t ans, neg;

	/* question, two answers (300, 100), an SOA (TTL 3600, minimum 70) */
	size_t n = msg_header(m, 1, 2, 1);
	n += put_name(m + n, "example.test");
	memcpy(m + n, "\0\x0f\0\x01", 4);
	n += 4;
	n += put_rr_head(m + n, T_MX, 300, 4);
	memcpy(m + n, "\0\x0a\xc0\x0c", 4);
	n += 4;
	n += put_rr_head(m + n, T_MX, 100, 4);
	memcpy(m + n, "\0\x14\xc0\x0c", 4);
	n += 4;
	n += put_soa(m + n, 70);
	assert_int_equal(kumo_dns_msg_ttls(m, n, &ans, &neg), 0);
	assert_int_equal(ans, 100);
	assert_int_equal(neg, 70);
	/* every truncation fails cleanly */
	for (size_t l = 0; l < n; l++)
		assert_int_equal(kumo_dns_msg_ttls(m, l, &ans, &neg), -EBADMSG);

	/* SOA TTL below its minimum; a TTL with the top bit set counts as 0 */
	n = msg_header(m, 0, 1, 1);
	n += put_rr_head(m + n, T_A, 0x80000001u, 4);
	n += 4;
	size_t soa = n;
	n += put_soa(m + n, 70);
	m[soa + 6] = 0, m[soa + 7] = 0, m[soa + 8] = 0, m[soa + 9] = 20; /* TTL 20 */
	assert_int_equal(kumo_dns_msg_ttls(m, n, &ans, &neg), 0);
	assert_int_equal(ans, 0);
	assert_int_equal(neg, 20);

	/* empty sections */
	n = msg_header(m, 0, 0, 0);
	assert_int_equal(kumo_dns_msg_ttls(m, n, &ans, &neg), 0);
	assert_int_equal(ans, UINT32_MAX);
	assert_int_equal(neg, UINT32_MAX);
	/* a bad label type, and a pointer cut in half */
	n = msg_header(m, 1, 0, 0);
	m[n++] = 0x80;
	assert_int_equal(kumo_dns_msg_ttls(m, n + 4, &ans, &neg), -EBADMSG);
	n = msg_header(m, 1, 0, 0);
	m[n++] = 0xc0;
	assert_int_equal(kumo_dns_msg_ttls(m, n, &ans, &neg), -EBADMSG);
	assert_int_equal(kumo_dns_msg_ttls(NULL, 0, &ans, &neg), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_msg_ttls),
	    cmocka_unit_test(test_bad_arguments),
	    cmocka_unit_test(test_mx_order_and_addresses),
	    cmocka_unit_test(test_equal_preferences_shuffled),
	    cmocka_unit_test(test_site_shared),
	    cmocka_unit_test(test_implicit_mx),
	    cmocka_unit_test(test_no_addresses),
	    cmocka_unit_test(test_nxdomain),
	    cmocka_unit_test(test_null_mx),
	    cmocka_unit_test(test_servfail_refused_temp),
	    cmocka_unit_test(test_timeout_temp),
	    cmocka_unit_test(test_connection_refused_temp),
	    cmocka_unit_test(test_truncated_answer_over_tcp),
	    cmocka_unit_test(test_ttls),
	    cmocka_unit_test(test_coalescing),
	    cmocka_unit_test(test_cancel),
	    cmocka_unit_test(test_reentrant_callbacks),
	    cmocka_unit_test(test_eviction),
	    cmocka_unit_test(test_free_with_lookups_in_flight),
	    cmocka_unit_test(test_cache_survives_server_stop),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
