/* Cluster-wide throttles kept in Redis: GCRA rate limits and connection leases evaluated
 * atomically by Lua scripts, driven through the loop's io_uring by a hiredis async
 * context, with the same limits kept in-process whenever Redis cannot answer. */
#ifndef KUMO_ENGINE_THROTTLE_H
#define KUMO_ENGINE_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo/kumo.h"

struct io_uring;
struct kumo_throttle;

#define KUMO_THROTTLE_NAME_MAX 256    /* bytes in a throttle or lease name */
#define KUMO_THROTTLE_NODE_ID_MAX 64  /* bytes in a node id */
#define KUMO_THROTTLE_LEASE_ID_MAX 96 /* bytes in a lease id, with its NUL */

struct kumo_throttle_cfg {
	/* "redis://[[user]:password@]a.b.c.d[:port][/db]" (port 6379, db 0 by default;
	 * "localhost" stands for 127.0.0.1) or "unix:///path/to/redis.sock". The host must
	 * be an IPv4 address: hiredis would hand any other form to the blocking system
	 * resolver. No percent-decoding. NULL or "": local limits only, no Redis. */
	const char *redis_url;
	/* Names this object in lease ids ("<node_id>:<counter>"): unique per throttle
	 * object in the cluster, e.g. "mta1/loop0". At most 64 bytes of printable ASCII,
	 * no spaces. NULL: 16 random hex digits. */
	const char *node_id;
	uint32_t timeout_ms;	   /* a request unanswered this long is answered locally: 1000 */
	uint32_t reconnect_max_ms; /* reconnect backoff doubles from 500 ms up to this: 5000 */
	/* Connection state changes ("redis unreachable, using local limits", "redis
	 * reachable again, using shared limits") and unexpected replies, each logged once
	 * per change. NULL: silent (see kumo_throttle_get_stats). */
	kumo_log_fn log_fn;
	void *log_arg;
};

/* allowed: the event may happen now (it has been counted). Otherwise wait_ms (>= 1) says
 * when the next one would be allowed. */
typedef void (*kumo_throttle_gcra_fn)(void *arg, bool allowed, uint64_t wait_ms);
/* granted: lease_id (NUL-terminated, valid during the call only: copy it) names the
 * lease for renew and release. Refused: lease_id is NULL. */
typedef void (*kumo_throttle_lease_fn)(void *arg, bool granted, const char *lease_id);
/* held: the lease's expiry was pushed to now + ttl. Otherwise it had expired (or was
 * never granted) and the holder no longer counts against the limit. */
typedef void (*kumo_throttle_renew_fn)(void *arg, bool held);

/* Creates the throttles of the loop that owns ring; an object belongs to that loop's
 * thread and is not locked. Its completions carry user_data ud_tag | x, where the top 8
 * bits of ud_tag are the loop's op for throttles and x keeps to the low 56 bits; hand
 * every such completion to kumo_throttle_complete. With a redis_url the first
 * connection is started here (nothing blocks; SQEs are queued, not submitted); without
 * one, ring may be NULL. Returns 0 or -EINVAL (bad URL or node id, no ring), -ENOMEM. */
int kumo_throttle_new(const struct kumo_throttle_cfg *cfg, struct io_uring *ring, uint64_t ud_tag,
		      struct kumo_throttle **out);
/* Closes the connection and drops the requests in flight without calling their
 * callbacks; leases are not released (they expire in Redis after their ttl). Call it
 * while the ring still exists: armed polls are cancelled through it. Completions with
 * this object's tag that arrive later must not be passed on. Never call it from a
 * callback. NULL is fine. */
void kumo_throttle_free(struct kumo_throttle *t);

/* GCRA rate limit "name": count events per period_ms, of which up to burst may come at
 * once (0: burst = count); the emission interval is period_ms / count. One call counts
 * one event if it is allowed. With Redis the key is "kumo:throttle:<name>" and the
 * clock is Redis' TIME, so every node shares the limit; locally the clock is now_ms.
 * cb runs exactly once: before this returns when answered locally, otherwise from
 * kumo_throttle_complete or kumo_throttle_tick. now_ms is the caller's monotonic clock.
 * Returns 0, or -EINVAL (empty or too long name, count or period_ms 0), and then cb is
 * never called. */
int kumo_throttle_gcra(struct kumo_throttle *t, const char *name, uint64_t count,
		       uint64_t period_ms, uint64_t burst, uint64_t now_ms,
		       kumo_throttle_gcra_fn cb, void *arg);

/* Asks for one of limit leases of "name" (e.g. connections to a site), held for ttl_ms
 * unless renewed. With Redis the leases are members of the sorted set
 * "kumo:lease:<name>" scored by their expiry; expired ones are dropped before counting.
 * cb runs exactly once, as for kumo_throttle_gcra. Returns 0 or -EINVAL (bad name,
 * ttl_ms 0). */
int kumo_throttle_lease_acquire(struct kumo_throttle *t, const char *name, uint64_t limit,
				uint64_t ttl_ms, uint64_t now_ms, kumo_throttle_lease_fn cb,
				void *arg);
/* Pushes a held lease's expiry to now + ttl_ms; holders renew well within their ttl
 * (e.g. every ttl/3). While Redis is unreachable a lease this object still holds is
 * renewed locally. cb (may be NULL) runs exactly once, as for kumo_throttle_gcra.
 * Returns 0 or -EINVAL (bad name, ttl_ms 0, a lease id this object did not issue). */
int kumo_throttle_lease_renew(struct kumo_throttle *t, const char *name, const char *lease_id,
			      uint64_t ttl_ms, uint64_t now_ms, kumo_throttle_renew_fn cb,
			      void *arg);
/* Gives a lease back at once. Fire and forget: while Redis is unreachable the release
 * is sent after reconnecting (or the lease expires there by itself). Returns 0 or
 * -EINVAL (bad name, a lease id this object did not issue). */
int kumo_throttle_lease_release(struct kumo_throttle *t, const char *name, const char *lease_id);

/* Feeds one completion of the throttle's polls (user_data with the tag's op in its top 8
 * bits, res its result). Completions of replaced or closed connections are recognised
 * and ignored. Callbacks of answered requests run from here. New SQEs are queued on the
 * ring, not submitted: the caller submits. */
void kumo_throttle_complete(struct kumo_throttle *t, uint64_t user_data, int res);
/* Call at least once a second (more often for finer timeouts; see
 * kumo_throttle_next_timeout_ms): times out requests (they are answered locally and the
 * connection is dropped), reconnects with backoff, re-arms polls that lacked an SQE and
 * forgets idle local state. now_ms never decreases. */
void kumo_throttle_tick(struct kumo_throttle *t, uint64_t now_ms);
/* Milliseconds from now_ms until kumo_throttle_tick has something to do; UINT64_MAX
 * when nothing waits (local mode, or connected with no request in flight). */
uint64_t kumo_throttle_next_timeout_ms(const struct kumo_throttle *t, uint64_t now_ms);

struct kumo_throttle_stats {
	bool shared;		/* connected to Redis now: answers are cluster-wide */
	bool degraded;		/* Redis configured but unreachable: answers are local */
	uint64_t redis_answers; /* callbacks answered by Redis */
	uint64_t local_answers; /* callbacks answered in-process */
	uint64_t timeouts;	/* requests that outlived timeout_ms */
	uint64_t connects;	/* connections established */
	uint64_t failures;	/* connection attempts failed and connections lost */
	uint64_t noscript;	/* EVALSHA refused with NOSCRIPT, sent again with EVAL */
	uint64_t errors;	/* error or malformed replies (answered locally) */
	uint64_t sqe_failures;	/* polls that found no free SQE (retried on tick) */
	size_t pending;		/* requests waiting for Redis */
	size_t names;		/* names with local state */
};
void kumo_throttle_get_stats(const struct kumo_throttle *t, struct kumo_throttle_stats *st);

#endif
