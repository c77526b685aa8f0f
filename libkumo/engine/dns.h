/* Asynchronous MX resolution for one loop: c-ares sockets polled through the loop's
 * io_uring, an in-process cache of MX sets and host addresses honouring TTLs (with
 * negative caching), and one query for many concurrent lookups of the same name. */
#ifndef KUMO_ENGINE_DNS_H
#define KUMO_ENGINE_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct io_uring;
struct kumo_dns;

struct kumo_dns_cfg {
	/* Comma-separated "ip", "ip:port" or "[ipv6]:port" entries, tried in order, e.g.
	 * "127.0.0.1:5353,[::1]:53". NULL: the nameservers of /etc/resolv.conf, read once
	 * by kumo_dns_new (a blocking file read: call it before the loop runs). */
	const char *servers;
	uint32_t timeout_ms;	 /* first try of a query; later rounds double it. 0: 2000 */
	unsigned tries;		 /* rounds over the server list before a query fails. 0: 3 */
	size_t cache_max;	 /* cached names (domains and MX hosts together). 0: 10000 */
	uint32_t negative_ttl_s; /* NXDOMAIN / no data without an SOA to say. 0: 300 */
	uint32_t temp_ttl_s;	 /* SERVFAIL, timeouts, refusals... 0: 30 */
	uint32_t max_ttl_s;	 /* cap on any TTL. 0: 86400 */
};

/* Status of a result; anything but KUMO_DNS_OK comes with nhosts = 0 and site = NULL.
 * The PERM ones mean the domain cannot receive mail (bounce); TEMP means try later. */
enum kumo_dns_status {
	KUMO_DNS_OK = 0,
	KUMO_DNS_PERM_NXDOMAIN = 1,	/* the domain does not exist */
	KUMO_DNS_PERM_NULL_MX = 2,	/* RFC 7505: one MX, preference 0, target "." */
	KUMO_DNS_PERM_NO_ADDRESSES = 3, /* no MX and no A/AAAA, or no MX host has one */
	KUMO_DNS_TEMP = 4,		/* SERVFAIL, REFUSED, timeout, malformed answer... */
};

struct kumo_mx_addr {
	int family;		/* AF_INET or AF_INET6 */
	unsigned char addr[16]; /* network byte order; 4 bytes used for AF_INET */
};

struct kumo_mx_host {
	const char *name; /* lowercase, without the trailing dot */
	uint16_t pref;
	size_t naddrs; /* 0: its lookups failed or found nothing; skip this host */
	const struct kumo_mx_addr *addrs; /* A records first, then AAAA, as received */
};

/* Everything in a result, strings included, is valid only during the callback: copy
 * what you keep. */
struct kumo_mx_result {
	const char *domain; /* as looked up: lowercase, without the trailing dot */
	int status;	    /* enum kumo_dns_status */
	const char *error;  /* one human-readable line saying why; "" when KUMO_DNS_OK */
	bool implicit;	    /* no MX records: the domain itself is the host (RFC 5321 5.1) */
	size_t nhosts;
	/* Delivery order: ascending preference, a fresh random order among equal
	 * preferences for every callback. With KUMO_DNS_OK at least one host has an
	 * address; hosts whose lookups failed are kept with naddrs = 0. */
	const struct kumo_mx_host *hosts;
	/* The MX set as one name, so that domains served by the same hosts share a site
	 * (and a ready queue): the distinct host names, lowercase, sorted bytewise and
	 * joined by ","; e.g. "mx1.example.net,mx2.example.net". Preferences are not part
	 * of it. For an implicit MX, the domain itself. */
	const char *site;
};

typedef void (*kumo_dns_mx_fn)(const struct kumo_mx_result *res, void *arg);

/* Creates a resolver for the loop that owns ring. Its completions carry user_data
 * ud_tag | x, where the top 8 bits of ud_tag are the loop's op for DNS and x keeps to
 * the low 56 bits; hand every such completion to kumo_dns_complete. Returns 0 or
 * -EINVAL (bad cfg or servers string), -ENOMEM, -EIO (c-ares failed to start). */
int kumo_dns_new(const struct kumo_dns_cfg *cfg, struct io_uring *ring, uint64_t ud_tag,
		 struct kumo_dns **out);
/* Frees the resolver once its loop has stopped: closes the sockets and drops the
 * lookups in flight without calling their callbacks. Polls still in the ring are left
 * to the ring's teardown; do not pass their completions to kumo_dns_complete. Never
 * call it from a callback. NULL is fine. */
void kumo_dns_free(struct kumo_dns *dns);

/* Looks up the MX set of domain (A-labels or UTF-8 bytes, passed through; any case;
 * a trailing dot is fine) and the addresses of its hosts, then calls fn exactly once
 * with the result. fn runs before this returns when everything needed was in the cache
 * (or c-ares failed at once); otherwise from kumo_dns_complete or kumo_dns_tick.
 * Concurrent lookups of a domain share one query; their callbacks run in the order of
 * the calls. fn may start new lookups or cancel others. now_ms is the caller's
 * monotonic clock: it dates the cache (see kumo_dns_tick). Returns 0, or -EINVAL (not
 * a domain name: empty, over 253 bytes, an empty or 64+ byte label, spaces, control
 * bytes or backslashes) or -ENOMEM, and then fn is never called. */
int kumo_dns_resolve_mx(struct kumo_dns *dns, const char *domain, uint64_t now_ms,
			kumo_dns_mx_fn fn, void *arg);
/* Drops the pending callbacks registered with this fn and arg (all domains), e.g. when
 * the object they point at goes away; the lookups themselves go on and fill the cache.
 * Returns how many were dropped. */
size_t kumo_dns_cancel(struct kumo_dns *dns, kumo_dns_mx_fn fn, void *arg);

/* Feeds one completion of the resolver's polls (user_data with the tag's op in its top
 * 8 bits, res its result). Completions of closed sockets are recognised and ignored.
 * New SQEs are queued on the ring, not submitted: the caller submits. */
void kumo_dns_complete(struct kumo_dns *dns, uint64_t user_data, int res);
/* Call at least once a second and when kumo_dns_next_timeout_ms has passed: handles
 * c-ares timeouts and retries, and re-arms polls that lacked an SQE. now_ms (never
 * decreasing) is the clock the cache's expiry times are kept in. */
void kumo_dns_tick(struct kumo_dns *dns, uint64_t now_ms);
/* Milliseconds until c-ares next needs kumo_dns_tick; UINT64_MAX when no query is in
 * flight. */
uint64_t kumo_dns_next_timeout_ms(struct kumo_dns *dns);

struct kumo_dns_stats {
	uint64_t queries;      /* sent through c-ares (MX, A and AAAA) */
	uint64_t mx_hits;      /* MX sets answered from the cache */
	uint64_t host_hits;    /* host addresses answered from the cache */
	uint64_t coalesced;    /* lookups that joined one already in flight */
	uint64_t evictions;    /* cache entries dropped for room */
	uint64_t sqe_failures; /* polls that found no free SQE (retried on tick) */
	size_t cached;	       /* entries in the cache now */
	size_t sockets;	       /* sockets c-ares has open now */
};
void kumo_dns_get_stats(const struct kumo_dns *dns, struct kumo_dns_stats *st);

/* Internal, for the resolver and its tests and fuzzer: reads the TTLs of a DNS answer.
 * *answer_ttl = the smallest TTL in the answer section (UINT32_MAX if it is empty);
 * *negative_ttl = min(TTL, MINIMUM) of the first SOA in the authority section
 * (UINT32_MAX if none), per RFC 2308. TTLs with the top bit set count as 0. Returns 0
 * or -EBADMSG if the message is truncated or malformed. */
int kumo_dns_msg_ttls(const unsigned char *msg, size_t len, uint32_t *answer_ttl,
		      uint32_t *negative_ttl);

#endif
