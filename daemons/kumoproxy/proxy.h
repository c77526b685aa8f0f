/* kumoproxy's shared definitions: the configuration read from the command line, the user
 * table, the per-loop counters and the entry points of the io_uring loops (loop.c), the
 * metrics endpoint (metrics.c) and the configuration helpers (config.c). */
#ifndef KPROXY_PROXY_H
#define KPROXY_PROXY_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define KPROXY_DEFAULT_PORT 1080
#define KPROXY_DEFAULT_MAX_CONNECTIONS 4096
#define KPROXY_DEFAULT_IDLE_MS 300000
#define KPROXY_DEFAULT_CONNECT_MS 60000
#define KPROXY_DEFAULT_HANDSHAKE_MS 60000
#define KPROXY_DEFAULT_BUFFER 65536 /* bytes per direction per connection */
#define KPROXY_LINGER_MS 2000	    /* after a failure reply: wait for the client to close */
#define KPROXY_SLOT_RESERVE 64	    /* slots beyond the limit, to answer refusals */

/* How relayed bytes move: recv/send through a buffer per direction, or splice through a
 * pipe per direction (bytes stay in the kernel; the default, see docs/kumoproxy.md). */
enum kproxy_relay { KPROXY_RELAY_COPY = 0, KPROXY_RELAY_SPLICE };

/* One "user:password" line of the users file. */
struct kproxy_user {
	char *name, *pass;
	size_t name_len, pass_len;
};

struct kproxy_users {
	struct kproxy_user *v;
	size_t n;
};

/* An allowed source network for BIND. */
struct kproxy_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

struct kproxy_cfg {
	struct sockaddr_storage listen;
	socklen_t listen_len;
	struct sockaddr_storage metrics; /* ss_family 0: no metrics endpoint */
	socklen_t metrics_len;
	unsigned threads;
	unsigned max_connections; /* over it, requests are answered 0x01 */
	uint32_t idle_ms;	  /* relay without a byte either way */
	uint32_t connect_ms;	  /* outbound connect */
	uint32_t handshake_ms;	  /* each SOCKS message from the client */
	size_t buffer;		  /* bytes per direction per connection */
	enum kproxy_relay relay;
	struct kproxy_users users; /* empty: no authentication */
	struct kproxy_cidr *allow; /* BIND sources allowed; none: any local address */
	size_t nallow;
	int log_fd; /* session records, one JSON object a line */
};

/* Counters of one loop: written by that loop only, read by the metrics endpoint, hence
 * relaxed atomics. */
struct kproxy_counters {
	_Atomic uint64_t accepted;	   /* client connections accepted */
	_Atomic uint64_t dropped;	   /* closed at once: no free slot */
	_Atomic uint64_t limited;	   /* requests answered 0x01 over --max-connections */
	_Atomic uint64_t relayed;	   /* CONNECTs that succeeded */
	_Atomic uint64_t replies[9];	   /* request replies sent, by code */
	_Atomic uint64_t auth_failures;	   /* RFC 1929 credentials refused */
	_Atomic uint64_t handshake_closed; /* closed before a request was answered */
	_Atomic uint64_t idle_timeouts;	   /* relays ended by --idle-timeout */
	_Atomic uint64_t bytes_up;	   /* client -> target */
	_Atomic uint64_t bytes_down;	   /* target -> client */
	_Atomic uint64_t sessions;	   /* sessions ended (logged) */
	_Atomic uint64_t log_dropped;	   /* session records lost (log write failed or backlog) */
};

struct kproxy_loop;

/* The whole proxy: configuration and loops. */
struct kproxy {
	struct kproxy_cfg cfg;
	_Atomic unsigned active; /* sessions open, over all loops */
	struct kproxy_loop **loops;
	unsigned nloops;
};

/* Adds n to a counter owned by the calling loop. */
static inline void kproxy_ctr_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* Loops (loop.c). new() creates the ring and the listener (SO_REUSEPORT); start() runs it
 * on its own thread; stop() asks it to close every session and return; join() waits. */
int kproxy_loop_new(struct kproxy *px, unsigned id, struct kproxy_loop **out);
int kproxy_loop_start(struct kproxy_loop *l);
void kproxy_loop_stop(struct kproxy_loop *l);
void kproxy_loop_join(struct kproxy_loop *l);
void kproxy_loop_free(struct kproxy_loop *l);
const struct kproxy_counters *kproxy_loop_counters(const struct kproxy_loop *l);

/* Counters of all loops as plain text, one "name value" line each (Prometheus text format);
 * returns the length written (truncated to size). metrics.c */
size_t kproxy_metrics_format(struct kproxy *px, char *buf, size_t size);
/* The HTTP endpoint: a thread answering GET with the counters. */
struct kproxy_metrics;
int kproxy_metrics_start(struct kproxy *px, struct kproxy_metrics **out);
void kproxy_metrics_stop(struct kproxy_metrics *m);

/* Users file (config.c): lines "user:password"; blank lines and lines starting with '#'
 * are skipped; the password is everything after the first ':'. Returns 0 or -errno with a
 * message in err. */
int kproxy_users_load(const char *path, struct kproxy_users *u, char *err, size_t errlen);
bool kproxy_users_check(const struct kproxy_users *u, const char *name, size_t name_len,
			const char *pass, size_t pass_len);
void kproxy_users_free(struct kproxy_users *u);

/* "10.0.0.0/8", "2001:db8::/32", a bare address (a /32 or /128); 0 or -EINVAL. */
int kproxy_parse_cidr(const char *s, struct kproxy_cidr *c);
bool kproxy_cidr_match(const struct kproxy_cidr *c, const struct sockaddr *sa);
/* "300s", "5m", "1h", "1500ms", or a bare number of seconds, into ms; 0 or -EINVAL. */
int kproxy_parse_duration(const char *s, uint32_t *ms);
/* "ip:port" or "[ip6]:port" into buf (at least 64 bytes). */
void kproxy_format_addr(const struct sockaddr *sa, char *buf, size_t size);

#endif
