/* Cluster-wide throttles: GCRA rate limits and connection leases kept in Redis by Lua
 * scripts, sent through a hiredis async context whose socket is polled by the loop's
 * io_uring, and the same limits kept per object whenever Redis cannot answer in time. */
#include "engine/throttle.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 1000
#define DEFAULT_RECONNECT_MAX_MS 5000
#define RECONNECT_MIN_MS 500
#define SWEEP_INTERVAL_MS 10000
#define MAX_PENDING_RELEASES 4096 /* releases kept for sending after a reconnect */
#define GCRA_PREFIX "kumo:throttle:"
#define LEASE_PREFIX "kumo:lease:"
#define KEY_MAX (sizeof(GCRA_PREFIX) + KUMO_THROTTLE_NAME_MAX)

/* user_data below the tag: {gen:55, kind:1}, gen being the connection's generation
 * (never 0). A zero low part marks our own POLL_REMOVE requests. */
#define UD_OP_MASK (UINT64_C(0xff) << 56)
#define UD_LOW_MASK (~UD_OP_MASK)
#define GEN_MASK (UD_LOW_MASK >> 1)

/* GCRA in microseconds on Redis' clock. KEYS[1] = the throttle's key; ARGV = count,
 * period (ms), burst. The stored value is the theoretical arrival time (TAT); an event
 * is allowed when now >= TAT - tau, and then TAT moves on by one interval. Returns
 * {1, 0} or {0, ms to wait}. The key expires once TAT is in the past. */
static const char gcra_lua[] = "local key = KEYS[1]\n"
			       "local count = tonumber(ARGV[1])\n"
			       "local period = tonumber(ARGV[2]) * 1000\n"
			       "local burst = tonumber(ARGV[3])\n"
			       "if redis.replicate_commands then redis.replicate_commands() end\n"
			       "local t = redis.call('TIME')\n"
			       "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
			       "local interval = period / count\n"
			       "local tau = interval * (burst - 1)\n"
			       "local tat = tonumber(redis.call('GET', key)) or now\n"
			       "if tat < now then tat = now end\n"
			       "if now < tat - tau then\n"
			       "  return {0, math.ceil((tat - tau - now) / 1000)}\n"
			       "end\n"
			       "tat = tat + interval\n"
			       "redis.call('SET', key, string.format('%.3f', tat), 'PX',\n"
			       "           math.ceil((tat - now) / 1000) + 1)\n"
			       "return {1, 0}\n";

/* Leases in milliseconds on Redis' clock. KEYS[1] = the lease set; ARGV = limit, ttl,
 * lease id. Expired members are dropped, then the lease is added if fewer than limit
 * remain. The set expires with its longest lease. Returns 1 (granted) or 0. */
static const char acquire_lua[] =
    "local key = KEYS[1]\n"
    "local limit = tonumber(ARGV[1])\n"
    "local ttl = tonumber(ARGV[2])\n"
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', key, '-inf', now)\n"
    "if redis.call('ZCARD', key) >= limit then return 0 end\n"
    "redis.call('ZADD', key, now + ttl, ARGV[3])\n"
    "if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end\n"
    "return 1\n";

/* KEYS[1] = the lease set; ARGV = ttl, lease id, force ("1": add it whatever its state,
 * used to register leases again after a reconnect). A live lease gets expiry now + ttl
 * and 1 is returned; an expired one is removed and 0 returned. */
static const char renew_lua[] =
    "local key = KEYS[1]\n"
    "local ttl = tonumber(ARGV[1])\n"
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local s = redis.call('ZSCORE', key, ARGV[2])\n"
    "if ARGV[3] == '1' or (s and tonumber(s) > now) then\n"
    "  redis.call('ZADD', key, now + ttl, ARGV[2])\n"
    "  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end\n"
    "  return 1\n"
    "end\n"
    "if s then redis.call('ZREM', key, ARGV[2]) end\n"
    "return 0\n";

enum { SC_GCRA, SC_ACQUIRE, SC_RENEW, SC_COUNT };

static const char *const scripts[SC_COUNT] = {gcra_lua, acquire_lua, renew_lua};

enum state {
	ST_LOCAL,      /* no Redis configured */
	ST_DOWN,       /* no connection; the next attempt is due at next_attempt */
	ST_CONNECTING, /* connect(2) in progress */
	ST_UP,	       /* connected: requests go to Redis */
};

enum { POLL_RD, POLL_WR };

enum req_kind { REQ_GCRA = SC_GCRA, REQ_ACQUIRE = SC_ACQUIRE, REQ_RENEW = SC_RENEW };

/* A lease this object holds, whoever granted it. Redis-granted ones are kept too, so
 * that local answers during an outage count them and a reconnect can register them. */
struct lease {
	uint64_t n;	 /* the counter part of its id */
	uint64_t expiry; /* on the caller's clock */
	bool remote;	 /* known to Redis (granted there or registered since) */
};

/* Local state of one name, for answers given in-process. */
struct entry {
	struct entry *next; /* hash chain */
	uint64_t hash;
	double tat; /* GCRA theoretical arrival time, ms on the caller's clock; 0: none */
	struct lease *leases;
	uint32_t nleases, cap;
	uint16_t len;
	char name[]; /* NUL-terminated */
};

/* A request sent to Redis. hiredis holds it (as privdata) until its reply callback,
 * which always runs: with the reply, or with NULL when the connection goes away. */
struct req {
	struct req *prev, *next; /* the pending list, oldest first */
	struct kumo_throttle *t;
	uint8_t kind;  /* enum req_kind */
	bool answered; /* its callback ran already (timed out and answered locally) */
	bool eval;     /* sent with the script's text */
	uint64_t deadline;
	uint64_t p1, p2, p3; /* gcra: count, period, burst; acquire: limit, ttl; renew: ttl */
	uint64_t lease_n;    /* acquire and renew: the lease */
	union {
		kumo_throttle_gcra_fn gcra;
		kumo_throttle_lease_fn lease;
		kumo_throttle_renew_fn renew;
	} cb;
	void *arg;
	uint16_t len;
	char name[];
};

/* A release made while Redis was unreachable, sent once it is back. */
struct release {
	struct release *next;
	uint64_t n;
	uint16_t len;
	char name[];
};

/* One of the two one-shot polls on the connection's socket. */
struct poller {
	bool want;  /* hiredis asked for this event */
	bool armed; /* a poll with the current gen is in the ring */
};

struct kumo_throttle {
	struct io_uring *ring;
	uint64_t tag; /* the loop's op, top 8 bits */
	enum state state;
	bool degraded;		   /* Redis is configured and was found unreachable; logged */
	bool closing;		   /* in kumo_throttle_free: callbacks are not called */
	bool dropping;		   /* redisAsyncFree was called, the context is not gone yet */
	bool error_logged;	   /* an unexpected reply was logged; reset when connected */
	redisAsyncContext *ac;	   /* NULL when there is no connection */
	uint64_t gen;		   /* generation of the connection's polls, never 0 */
	struct poller poll[2];	   /* POLL_RD, POLL_WR */
	uint64_t now;		   /* latest caller's clock seen */
	uint64_t connect_deadline; /* CONNECTING: give up then; 0: set on the next tick */
	uint64_t next_attempt;	   /* DOWN: connect again then */
	uint32_t backoff;	   /* the wait after the next failure */
	uint64_t next_sweep;
	char sha[SC_COUNT][41];	 /* SHA1 of the scripts loaded on this connection; "": EVAL */
	struct req *head, *tail; /* requests waiting for Redis */
	struct release *releases;
	size_t nreleases;

	/* From the URL. */
	bool unix_socket;
	char *host; /* IPv4 address or socket path */
	int port;
	char *user, *pass; /* AUTH; NULL: none */
	unsigned db;

	char *prefix; /* "<node_id>:", the start of every lease id */
	size_t prefix_len;
	uint64_t counter; /* last lease number */
	uint32_t timeout_ms, reconnect_max_ms;
	kumo_log_fn log_fn;
	void *log_arg;

	struct entry **buckets; /* power of two */
	size_t nbuckets, nentries;
	struct kumo_throttle_stats st;
};

static void log_line(struct kumo_throttle *t, enum kumo_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void log_line(struct kumo_throttle *t, enum kumo_log_level lvl, const char *fmt, ...)
{
	if (!t->log_fn || t->closing)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	t->log_fn(t->log_arg, lvl, line);
}

/* ---- Local state: a hash table of names. ---- */

static uint64_t hash_name(const char *s, size_t n)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * UINT64_C(0x100000001b3);
	return h;
}

static struct entry *entry_find(struct kumo_throttle *t, const char *name, size_t len)
{
	uint64_t h = hash_name(name, len);
	for (struct entry *e = t->buckets[h & (t->nbuckets - 1)]; e; e = e->next)
		if (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0)
			return e;
	return NULL;
}

static void grow_table(struct kumo_throttle *t)
{
	size_t nb = t->nbuckets * 2;
	struct entry **b = calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct entry *e = t->buckets[i];
		while (e) {
			struct entry *next = e->next;
			e->next = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
			e = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = nb;
}

static struct entry *entry_get(struct kumo_throttle *t, const char *name, size_t len)
{
	struct entry *e = entry_find(t, name, len);
	if (e)
		return e;
	e = calloc(1, sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	e->hash = hash_name(name, len);
	e->len = (uint16_t)len;
	memcpy(e->name, name, len);
	if (t->nentries >= t->nbuckets)
		grow_table(t);
	struct entry **b = &t->buckets[e->hash & (t->nbuckets - 1)];
	e->next = *b;
	*b = e;
	t->nentries++;
	return e;
}

static void purge_leases(struct entry *e, uint64_t now)
{
	uint32_t j = 0;
	for (uint32_t i = 0; i < e->nleases; i++)
		if (e->leases[i].expiry > now)
			e->leases[j++] = e->leases[i];
	e->nleases = j;
}

static struct lease *lease_find(struct entry *e, uint64_t n)
{
	for (uint32_t i = 0; e && i < e->nleases; i++)
		if (e->leases[i].n == n)
			return &e->leases[i];
	return NULL;
}

static void lease_remove(struct entry *e, uint64_t n)
{
	struct lease *l = lease_find(e, n);
	if (l)
		*l = e->leases[--e->nleases];
}

/* Records a lease as held until expiry (adds it or updates it). */
static bool lease_put(struct entry *e, uint64_t n, uint64_t expiry, bool remote)
{
	struct lease *l = lease_find(e, n);
	if (!l) {
		if (e->nleases == e->cap) {
			uint32_t cap = e->cap ? e->cap * 2 : 4;
			struct lease *nl = realloc(e->leases, cap * sizeof(*nl));
			if (!nl)
				return false;
			e->leases = nl;
			e->cap = cap;
		}
		l = &e->leases[e->nleases++];
		l->n = n;
	}
	l->expiry = expiry;
	l->remote = remote;
	return true;
}

/* Forgets names with nothing left to remember: no live lease, a TAT in the past. */
static void sweep(struct kumo_throttle *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct entry **pp = &t->buckets[i];
		while (*pp) {
			struct entry *e = *pp;
			purge_leases(e, t->now);
			if (e->nleases == 0 && e->tat <= (double)t->now) {
				*pp = e->next;
				free(e->leases);
				free(e);
				t->nentries--;
			} else {
				pp = &e->next;
			}
		}
	}
}

/* ---- Local answers: the same semantics as the scripts, on the caller's clock. ---- */

static void gcra_local(struct entry *e, uint64_t count, uint64_t period, uint64_t burst,
		       uint64_t now_ms, bool *allowed, uint64_t *wait)
{
	double interval = (double)period / (double)count;
	double tau = interval * (double)(burst - 1);
	double now = (double)now_ms;
	double tat = e->tat > now ? e->tat : now;
	if (now < tat - tau) {
		double w = tat - tau - now;
		uint64_t wi = (uint64_t)w;
		*allowed = false;
		*wait = wi + ((double)wi < w ? 1 : 0);
		if (*wait == 0)
			*wait = 1;
		return;
	}
	e->tat = tat + interval;
	*allowed = true;
	*wait = 0;
}

static void format_id(const struct kumo_throttle *t, uint64_t n, char *buf)
{
	snprintf(buf, KUMO_THROTTLE_LEASE_ID_MAX, "%s%llu", t->prefix, (unsigned long long)n);
}

static void answer_local(struct kumo_throttle *t, struct req *q)
{
	struct entry *e = entry_get(t, q->name, q->len);
	q->answered = true;
	t->st.local_answers++;
	switch (q->kind) {
	case REQ_GCRA: {
		bool allowed = true; /* out of memory: let it pass rather than stall */
		uint64_t wait = 0;
		if (e)
			gcra_local(e, q->p1, q->p2, q->p3, t->now, &allowed, &wait);
		q->cb.gcra(q->arg, allowed, wait);
		break;
	}
	case REQ_ACQUIRE: {
		char id[KUMO_THROTTLE_LEASE_ID_MAX];
		if (e)
			purge_leases(e, t->now);
		if (e && e->nleases < q->p1 && lease_put(e, q->lease_n, t->now + q->p2, false)) {
			format_id(t, q->lease_n, id);
			q->cb.lease(q->arg, true, id);
		} else {
			q->cb.lease(q->arg, false, NULL);
		}
		break;
	}
	case REQ_RENEW: {
		struct lease *l = lease_find(e, q->lease_n);
		bool held = l && l->expiry > t->now;
		if (held)
			l->expiry = t->now + q->p1;
		else if (l)
			lease_remove(e, q->lease_n);
		if (q->cb.renew)
			q->cb.renew(q->arg, held);
		break;
	}
	}
}

/* ---- The connection: hiredis' event hooks over one-shot io_uring polls. ---- */

static uint64_t poll_ud(const struct kumo_throttle *t, unsigned kind)
{
	return t->tag | (t->gen & GEN_MASK) << 1 | kind;
}

static void arm(struct kumo_throttle *t, unsigned kind)
{
	struct poller *p = &t->poll[kind];
	if (!t->ac || t->dropping || !p->want || p->armed)
		return;
	struct io_uring_sqe *sqe = io_uring_get_sqe(t->ring);
	if (!sqe) {
		t->st.sqe_failures++;
		return; /* kumo_throttle_tick tries again */
	}
	io_uring_prep_poll_add(sqe, t->ac->c.fd, kind == POLL_RD ? POLLIN : POLLOUT);
	io_uring_sqe_set_data64(sqe, poll_ud(t, kind));
	p->armed = true;
}

/* A poll left in the ring would keep the closed socket open inside it. */
static void disarm(struct kumo_throttle *t, unsigned kind)
{
	struct poller *p = &t->poll[kind];
	if (p->armed) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(t->ring);
		if (sqe) {
			io_uring_prep_poll_remove(sqe, poll_ud(t, kind));
			io_uring_sqe_set_data64(sqe, t->tag);
		}
	}
	p->armed = p->want = false;
}

static void ev_add_read(void *data)
{
	struct kumo_throttle *t = data;
	t->poll[POLL_RD].want = true;
	arm(t, POLL_RD);
}

/* An armed poll no longer wanted is left to fire; its completion is then ignored. */
static void ev_del_read(void *data)
{
	struct kumo_throttle *t = data;
	t->poll[POLL_RD].want = false;
}

static void ev_add_write(void *data)
{
	struct kumo_throttle *t = data;
	t->poll[POLL_WR].want = true;
	arm(t, POLL_WR);
}

static void ev_del_write(void *data)
{
	struct kumo_throttle *t = data;
	t->poll[POLL_WR].want = false;
}

static void conn_down(struct kumo_throttle *t, const char *why);

/* hiredis is about to free the context (it may say so twice). */
static void ev_cleanup(void *data)
{
	struct kumo_throttle *t = data;
	if (!t->ac)
		return;
	disarm(t, POLL_RD);
	disarm(t, POLL_WR);
	t->gen = (t->gen + 1) & GEN_MASK;
	if (!t->gen)
		t->gen = 1;
	t->ac = NULL;
	t->dropping = false;
	conn_down(t, "connection closed");
}

/* The connection is gone or going: answers are local until the next one is up. */
static void conn_down(struct kumo_throttle *t, const char *why)
{
	if (t->state != ST_UP && t->state != ST_CONNECTING)
		return;
	t->state = ST_DOWN;
	t->st.failures++;
	t->next_attempt = t->now + t->backoff;
	t->backoff = t->backoff * 2 > t->reconnect_max_ms ? t->reconnect_max_ms : t->backoff * 2;
	if (!t->degraded) {
		t->degraded = true;
		log_line(t, KUMO_LOG_WARN, "redis unreachable, using local limits: %s", why);
	}
}

/* Closes the connection; pending requests are answered locally by their callbacks. */
static void drop(struct kumo_throttle *t, const char *why)
{
	conn_down(t, why);
	if (t->ac && !t->dropping) {
		t->dropping = true;
		redisAsyncFree(t->ac); /* deferred by hiredis when called from its callback */
	}
}

static bool use_redis(const struct kumo_throttle *t)
{
	return t->ac && !t->dropping &&
	       (t->state == ST_UP || (t->state == ST_CONNECTING && !t->degraded));
}

static void load_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct kumo_throttle *t = ac->data;
	redisReply *reply = r;
	char *sha = priv;
	if (t->closing || !reply)
		return;
	if (reply->type == REDIS_REPLY_STRING && reply->len == 40) {
		memcpy(sha, reply->str, 40);
		sha[40] = 0;
	} else if (!t->error_logged) {
		t->error_logged = true;
		log_line(t, KUMO_LOG_ERROR, "redis SCRIPT LOAD failed: %s",
			 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
	}
}

static void load_script(struct kumo_throttle *t, unsigned sc)
{
	const char *argv[3] = {"SCRIPT", "LOAD", scripts[sc]};
	size_t lens[3] = {6, 4, strlen(scripts[sc])};
	t->sha[sc][0] = 0;
	redisAsyncCommandArgv(t->ac, load_cb, t->sha[sc], 3, argv, lens);
}

/* AUTH and SELECT: a refusal makes the connection useless. */
static void setup_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct kumo_throttle *t = ac->data;
	redisReply *reply = r;
	if (t->closing || !reply || reply->type != REDIS_REPLY_ERROR)
		return;
	char why[256];
	snprintf(why, sizeof(why), "%s refused: %s", (const char *)priv, reply->str);
	log_line(t, KUMO_LOG_ERROR, "redis %s", why);
	drop(t, why);
}

static void send_plain(struct kumo_throttle *t, redisCallbackFn *fn, void *priv, int argc,
		       const char **argv)
{
	size_t lens[8];
	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	redisAsyncCommandArgv(t->ac, fn, priv, argc, argv, lens);
}

static size_t make_key(char *key, const char *prefix, const char *name, size_t len)
{
	size_t pl = strlen(prefix);
	memcpy(key, prefix, pl);
	memcpy(key + pl, name, len);
	key[pl + len] = 0;
	return pl + len;
}

/* Sends a script: EVALSHA when its SHA is known on this connection, else EVAL. */
static int send_script(struct kumo_throttle *t, unsigned sc, bool eval, redisCallbackFn *fn,
		       void *priv, const char *key, size_t keylen, int nargs, const char **args)
{
	const char *argv[8];
	size_t lens[8];
	bool sha = !eval && t->sha[sc][0];
	argv[0] = sha ? "EVALSHA" : "EVAL";
	argv[1] = sha ? t->sha[sc] : scripts[sc];
	argv[2] = "1";
	argv[3] = key;
	lens[3] = keylen;
	for (int i = 0; i < nargs; i++)
		argv[4 + i] = args[i];
	for (int i = 0; i < 4 + nargs; i++)
		if (i != 3)
			lens[i] = strlen(argv[i]);
	return redisAsyncCommandArgv(t->ac, fn, priv, 4 + nargs, argv, lens) == REDIS_OK ? 0 : -EIO;
}

static void reply_cb(redisAsyncContext *ac, void *r, void *priv);

static int send_req(struct kumo_throttle *t, struct req *q)
{
	char key[KEY_MAX], a1[24], a2[24], a3[KUMO_THROTTLE_LEASE_ID_MAX];
	const char *args[3] = {a1, a2, a3};
	size_t kl =
	    make_key(key, q->kind == REQ_GCRA ? GCRA_PREFIX : LEASE_PREFIX, q->name, q->len);
	switch (q->kind) {
	case REQ_GCRA:
		snprintf(a1, sizeof(a1), "%llu", (unsigned long long)q->p1);
		snprintf(a2, sizeof(a2), "%llu", (unsigned long long)q->p2);
		snprintf(a3, sizeof(a3), "%llu", (unsigned long long)q->p3);
		break;
	case REQ_ACQUIRE:
		snprintf(a1, sizeof(a1), "%llu", (unsigned long long)q->p1);
		snprintf(a2, sizeof(a2), "%llu", (unsigned long long)q->p2);
		format_id(t, q->lease_n, a3);
		break;
	case REQ_RENEW:
		snprintf(a1, sizeof(a1), "%llu", (unsigned long long)q->p1);
		format_id(t, q->lease_n, a2);
		args[2] = "0";
		break;
	}
	return send_script(t, q->kind, q->eval, reply_cb, q, key, kl, 3, args);
}

static void unlink_req(struct kumo_throttle *t, struct req *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		t->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	else
		t->tail = q->prev;
	q->prev = q->next = NULL;
	t->st.pending--;
}

static void release_remote(struct kumo_throttle *t, const char *name, size_t len, uint64_t n)
{
	char key[KEY_MAX], id[KUMO_THROTTLE_LEASE_ID_MAX];
	make_key(key, LEASE_PREFIX, name, len);
	format_id(t, n, id);
	const char *argv[3] = {"ZREM", key, id};
	size_t lens[3] = {4, strlen(LEASE_PREFIX) + len, strlen(id)};
	redisAsyncCommandArgv(t->ac, NULL, NULL, 3, argv, lens);
}

/* A reply the request cannot use: counted, logged once, answered locally. */
static void bad_reply(struct kumo_throttle *t, struct req *q, const redisReply *reply)
{
	t->st.errors++;
	if (!t->error_logged) {
		t->error_logged = true;
		log_line(t, KUMO_LOG_ERROR, "redis throttle script failed, answering locally: %s",
			 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
	}
	answer_local(t, q);
}

static void answer_redis(struct kumo_throttle *t, struct req *q, const redisReply *reply)
{
	if (q->kind == REQ_GCRA) {
		if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
		    reply->element[0]->type != REDIS_REPLY_INTEGER ||
		    reply->element[1]->type != REDIS_REPLY_INTEGER) {
			bad_reply(t, q, reply);
			return;
		}
		bool allowed = reply->element[0]->integer == 1;
		long long w = reply->element[1]->integer;
		t->st.redis_answers++;
		q->answered = true;
		q->cb.gcra(q->arg, allowed, allowed ? 0 : (w < 1 ? 1 : (uint64_t)w));
		return;
	}
	if (reply->type != REDIS_REPLY_INTEGER) {
		bad_reply(t, q, reply);
		return;
	}
	bool yes = reply->integer == 1;
	struct entry *e = entry_get(t, q->name, q->len);
	t->st.redis_answers++;
	q->answered = true;
	if (q->kind == REQ_ACQUIRE) {
		char id[KUMO_THROTTLE_LEASE_ID_MAX];
		format_id(t, q->lease_n, id);
		if (yes && e)
			lease_put(e, q->lease_n, t->now + q->p2, true);
		q->cb.lease(q->arg, yes, yes ? id : NULL);
		return;
	}
	if (yes && e)
		lease_put(e, q->lease_n, t->now + q->p1, true);
	else if (e)
		lease_remove(e, q->lease_n);
	if (q->cb.renew)
		q->cb.renew(q->arg, yes);
}

static void reply_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct req *q = priv;
	struct kumo_throttle *t = q->t;
	redisReply *reply = r;

	if (t->closing) {
		unlink_req(t, q);
		free(q);
		return;
	}
	if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
	    !q->eval && !q->answered) {
		/* The script cache was flushed (or this is a new server): EVAL it and load
		 * it again for the requests after. */
		t->st.noscript++;
		q->eval = true;
		if (use_redis(t) && send_req(t, q) == 0) {
			load_script(t, q->kind);
			return;
		}
	}
	unlink_req(t, q);
	if (q->answered) {
		/* Answered locally already: a lease Redis granted since has no holder. */
		if (reply && q->kind == REQ_ACQUIRE && reply->type == REDIS_REPLY_INTEGER &&
		    reply->integer == 1 && use_redis(t))
			release_remote(t, q->name, q->len, q->lease_n);
	} else if (!reply) {
		conn_down(t, ac->c.errstr[0] ? ac->c.errstr : "connection lost");
		answer_local(t, q);
	} else {
		answer_redis(t, q, reply);
	}
	free(q);
}

/* Registers every live lease this object holds (Redis may have lost them, or never had
 * those granted locally) and sends the releases made while it was unreachable. */
static void resync(struct kumo_throttle *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		for (struct entry *e = t->buckets[i]; e; e = e->next) {
			purge_leases(e, t->now);
			for (uint32_t j = 0; j < e->nleases; j++) {
				char key[KEY_MAX], ttl[24], id[KUMO_THROTTLE_LEASE_ID_MAX];
				size_t kl = make_key(key, LEASE_PREFIX, e->name, e->len);
				snprintf(ttl, sizeof(ttl), "%llu",
					 (unsigned long long)(e->leases[j].expiry - t->now));
				format_id(t, e->leases[j].n, id);
				const char *args[3] = {ttl, id, "1"};
				if (send_script(t, SC_RENEW, false, NULL, NULL, key, kl, 3, args) ==
				    0)
					e->leases[j].remote = true;
			}
		}
	}
	while (t->releases) {
		struct release *rel = t->releases;
		t->releases = rel->next;
		release_remote(t, rel->name, rel->len, rel->n);
		free(rel);
	}
	t->nreleases = 0;
}

static void on_connect(const redisAsyncContext *cac, int status)
{
	struct kumo_throttle *t = cac->data;
	if (status != REDIS_OK) {
		conn_down(t, cac->c.errstr[0] ? cac->c.errstr : "connect failed");
		return; /* hiredis frees the context next */
	}
	if (t->state != ST_CONNECTING)
		return;
	t->state = ST_UP;
	t->st.connects++;
	t->backoff = RECONNECT_MIN_MS;
	t->error_logged = false;
	if (t->degraded) {
		t->degraded = false;
		log_line(t, KUMO_LOG_INFO, "redis reachable again, using shared limits");
	}
	resync(t);
}

static void start_connect(struct kumo_throttle *t)
{
	redisAsyncContext *ac =
	    t->unix_socket ? redisAsyncConnectUnix(t->host) : redisAsyncConnect(t->host, t->port);
	t->state = ST_CONNECTING;
	if (!ac || ac->err) {
		char why[256];
		snprintf(why, sizeof(why), "%s", ac ? ac->c.errstr : "out of memory");
		if (ac)
			redisAsyncFree(ac);
		conn_down(t, why);
		return;
	}
	t->ac = ac;
	t->dropping = false;
	t->poll[POLL_RD] = t->poll[POLL_WR] = (struct poller){0};
	t->connect_deadline = t->now ? t->now + t->timeout_ms : 0;
	ac->data = t;
	ac->ev.data = t;
	ac->ev.addRead = ev_add_read;
	ac->ev.delRead = ev_del_read;
	ac->ev.addWrite = ev_add_write;
	ac->ev.delWrite = ev_del_write;
	ac->ev.cleanup = ev_cleanup;
	redisAsyncSetConnectCallback(ac, on_connect); /* arms the write poll */
	/* Pipelined behind the connect: Redis runs them before any request. */
	if (t->pass) {
		const char *argv[3] = {"AUTH", t->user ? t->user : t->pass, t->pass};
		send_plain(t, setup_cb, (void *)"AUTH", t->user ? 3 : 2, argv);
	}
	if (t->db) {
		char db[16];
		snprintf(db, sizeof(db), "%u", t->db);
		const char *argv[2] = {"SELECT", db};
		send_plain(t, setup_cb, (void *)"SELECT", 2, argv);
	}
	for (unsigned sc = 0; sc < SC_COUNT; sc++)
		load_script(t, sc);
}

/* Writes may hit a socket the server reset; the embedder may not ignore SIGPIPE, and the
 * library installs no handler, so SIGPIPE is blocked around the write and a signal it
 * raised is consumed before the mask is restored. */
static void handle_write(struct kumo_throttle *t)
{
	struct sigaction sa;
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
		redisAsyncHandleWrite(t->ac);
		return;
	}
	sigset_t pipe_set, old, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	sigemptyset(&pending);
	sigpending(&pending);
	bool was_pending = sigismember(&pending, SIGPIPE);
	redisAsyncHandleWrite(t->ac);
	if (!was_pending) {
		struct timespec zero = {0, 0};
		int saved = errno;
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
		errno = saved;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void kumo_throttle_complete(struct kumo_throttle *t, uint64_t user_data, int res)
{
	if ((user_data & UD_OP_MASK) != t->tag)
		return;
	uint64_t low = user_data & UD_LOW_MASK;
	unsigned kind = (unsigned)(low & 1);
	uint64_t gen = low >> 1;
	if (!low || !t->ac || gen != t->gen)
		return; /* our POLL_REMOVE, or a poll of a closed connection */
	struct poller *p = &t->poll[kind];
	if (!p->armed)
		return;
	p->armed = false;
	if (res == -ECANCELED) {
		arm(t, kind);
		return;
	}
	if (res < 0) {
		drop(t, "poll failed");
		return;
	}
	if (p->want && !t->dropping) {
		if (kind == POLL_RD)
			redisAsyncHandleRead(t->ac);
		else
			handle_write(t);
	}
	if (t->ac && t->gen == gen) {
		arm(t, POLL_RD);
		arm(t, POLL_WR);
	}
}

/* ---- Requests. ---- */

static void set_now(struct kumo_throttle *t, uint64_t now_ms)
{
	if (now_ms > t->now)
		t->now = now_ms;
}

static bool name_ok(const char *name)
{
	size_t n = name ? strnlen(name, KUMO_THROTTLE_NAME_MAX + 1) : 0;
	return n >= 1 && n <= KUMO_THROTTLE_NAME_MAX;
}

/* A heap copy of tmpl for name. The name is copied after the fields: it may start
 * inside the struct's trailing padding, which an assignment of the struct overwrites. */
static struct req *new_req(const struct req *tmpl, const char *name)
{
	size_t len = strlen(name);
	struct req *q = malloc(sizeof(*q) + len + 1);
	if (!q)
		return NULL;
	memcpy(q, tmpl, offsetof(struct req, name));
	q->len = (uint16_t)len;
	memcpy(q->name, name, len + 1);
	return q;
}

/* Sends q to Redis when it can answer, else answers it here and now. */
static void submit(struct kumo_throttle *t, struct req *q)
{
	q->t = t;
	if (use_redis(t) && send_req(t, q) == 0) {
		q->deadline = t->now + t->timeout_ms;
		q->prev = t->tail;
		if (t->tail)
			t->tail->next = q;
		else
			t->head = q;
		t->tail = q;
		t->st.pending++;
		return;
	}
	answer_local(t, q);
	free(q);
}

/* Answers from a request on the stack when the heap has no room for one. */
static void answer_on_stack(struct kumo_throttle *t, const char *name, const struct req *tmpl)
{
	union {
		struct req q;
		char buf[sizeof(struct req) + KUMO_THROTTLE_NAME_MAX + 1];
	} u;
	memcpy(&u.q, tmpl, offsetof(struct req, name));
	u.q.len = (uint16_t)strlen(name);
	memcpy(u.q.name, name, u.q.len + 1u);
	u.q.t = t;
	answer_local(t, &u.q);
}

static void dispatch(struct kumo_throttle *t, const char *name, const struct req *tmpl)
{
	struct req *q = new_req(tmpl, name);
	if (!q) {
		answer_on_stack(t, name, tmpl);
		return;
	}
	submit(t, q);
}

int kumo_throttle_gcra(struct kumo_throttle *t, const char *name, uint64_t count,
		       uint64_t period_ms, uint64_t burst, uint64_t now_ms,
		       kumo_throttle_gcra_fn cb, void *arg)
{
	if (!name_ok(name) || !count || !period_ms || !cb)
		return -EINVAL;
	set_now(t, now_ms);
	struct req tmpl = {.kind = REQ_GCRA,
			   .p1 = count,
			   .p2 = period_ms,
			   .p3 = burst ? burst : count,
			   .cb.gcra = cb,
			   .arg = arg};
	dispatch(t, name, &tmpl);
	return 0;
}

int kumo_throttle_lease_acquire(struct kumo_throttle *t, const char *name, uint64_t limit,
				uint64_t ttl_ms, uint64_t now_ms, kumo_throttle_lease_fn cb,
				void *arg)
{
	if (!name_ok(name) || !ttl_ms || !cb)
		return -EINVAL;
	set_now(t, now_ms);
	struct req tmpl = {.kind = REQ_ACQUIRE,
			   .p1 = limit,
			   .p2 = ttl_ms,
			   .lease_n = ++t->counter,
			   .cb.lease = cb,
			   .arg = arg};
	dispatch(t, name, &tmpl);
	return 0;
}

/* The counter of a lease id this object issued; 0 if it is not one. */
static uint64_t parse_id(const struct kumo_throttle *t, const char *id)
{
	if (!id || strncmp(id, t->prefix, t->prefix_len) != 0)
		return 0;
	const char *s = id + t->prefix_len;
	uint64_t n = 0;
	if (!*s || strlen(s) > 19)
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		n = n * 10 + (uint64_t)(*s - '0');
	}
	return n;
}

int kumo_throttle_lease_renew(struct kumo_throttle *t, const char *name, const char *lease_id,
			      uint64_t ttl_ms, uint64_t now_ms, kumo_throttle_renew_fn cb,
			      void *arg)
{
	uint64_t n = parse_id(t, lease_id);
	if (!name_ok(name) || !ttl_ms || !n)
		return -EINVAL;
	set_now(t, now_ms);
	struct req tmpl = {
	    .kind = REQ_RENEW, .p1 = ttl_ms, .lease_n = n, .cb.renew = cb, .arg = arg};
	dispatch(t, name, &tmpl);
	return 0;
}

int kumo_throttle_lease_release(struct kumo_throttle *t, const char *name, const char *lease_id)
{
	uint64_t n = parse_id(t, lease_id);
	if (!name_ok(name) || !n)
		return -EINVAL;
	size_t len = strlen(name);
	struct entry *e = entry_find(t, name, len);
	struct lease *l = e ? lease_find(e, n) : NULL;
	bool remote = !l || l->remote; /* unknown: it may still be in Redis */
	if (l)
		lease_remove(e, n);
	if (t->state == ST_LOCAL || !remote)
		return 0;
	if (t->state == ST_UP && use_redis(t)) {
		release_remote(t, name, len, n);
		return 0;
	}
	if (t->nreleases >= MAX_PENDING_RELEASES)
		return 0; /* it expires in Redis by itself */
	struct release *rel = malloc(sizeof(*rel) + len + 1);
	if (!rel)
		return 0;
	rel->n = n;
	rel->len = (uint16_t)len;
	memcpy(rel->name, name, len + 1);
	rel->next = t->releases;
	t->releases = rel;
	t->nreleases++;
	return 0;
}

/* ---- Time. ---- */

void kumo_throttle_tick(struct kumo_throttle *t, uint64_t now_ms)
{
	set_now(t, now_ms);
	uint64_t now = t->now;

	if (t->head && t->head->deadline <= now) {
		for (struct req *q = t->head; q && q->deadline <= now; q = q->next)
			if (!q->answered)
				t->st.timeouts++;
		/* Redis is too slow or gone: its answers would come too late to be useful.
		 * Dropping the connection answers every request in flight locally. */
		drop(t, "request timed out");
		/* Still held by a context that could not be freed yet: answer them now. */
		for (struct req *q = t->head; q; q = q->next)
			if (!q->answered && q->deadline <= now)
				answer_local(t, q);
	}
	if (t->state == ST_CONNECTING && t->ac) {
		if (!t->connect_deadline)
			t->connect_deadline = now + t->timeout_ms;
		else if (now >= t->connect_deadline)
			drop(t, "connect timed out");
	}
	if (t->state == ST_DOWN && !t->ac && now >= t->next_attempt && !t->closing)
		start_connect(t);
	if (t->ac) {
		arm(t, POLL_RD);
		arm(t, POLL_WR);
	}
	if (now >= t->next_sweep) {
		sweep(t);
		t->next_sweep = now + SWEEP_INTERVAL_MS;
	}
}

uint64_t kumo_throttle_next_timeout_ms(const struct kumo_throttle *t, uint64_t now_ms)
{
	uint64_t due = UINT64_MAX;
	if (t->head)
		due = t->head->deadline;
	if (t->state == ST_CONNECTING && t->connect_deadline && t->connect_deadline < due)
		due = t->connect_deadline;
	if (t->state == ST_DOWN && t->next_attempt < due)
		due = t->next_attempt;
	if (due == UINT64_MAX)
		return UINT64_MAX;
	return due <= now_ms ? 0 : due - now_ms;
}

void kumo_throttle_get_stats(const struct kumo_throttle *t, struct kumo_throttle_stats *st)
{
	*st = t->st;
	st->shared = t->state == ST_UP;
	st->degraded = t->degraded;
	st->names = t->nentries;
}

/* ---- Set-up. ---- */

static char *strndup_(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

/* Digits only, at most max. */
static int parse_uint(const char *s, size_t n, unsigned long max, unsigned long *out)
{
	unsigned long v = 0;
	if (n == 0 || n > 10)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_url(struct kumo_throttle *t, const char *url)
{
	if (strncmp(url, "unix://", 7) == 0) {
		if (!url[7] || strlen(url + 7) >= 108)
			return -EINVAL;
		t->unix_socket = true;
		t->host = strdup(url + 7);
		return t->host ? 0 : -ENOMEM;
	}
	if (strncmp(url, "redis://", 8) != 0)
		return -EINVAL;
	const char *s = url + 8;
	const char *slash = strchr(s, '/');
	const char *end = slash ? slash : s + strlen(s);
	const char *at = NULL;
	for (const char *p = s; p < end; p++)
		if (*p == '@')
			at = p;
	if (at) {
		const char *colon = memchr(s, ':', (size_t)(at - s));
		if (!colon || colon + 1 == at)
			return -EINVAL;
		if (colon > s && !(t->user = strndup_(s, (size_t)(colon - s))))
			return -ENOMEM;
		if (!(t->pass = strndup_(colon + 1, (size_t)(at - colon - 1))))
			return -ENOMEM;
		s = at + 1;
	}
	const char *colon = memchr(s, ':', (size_t)(end - s));
	const char *hend = colon ? colon : end;
	char host[64];
	if (hend == s || (size_t)(hend - s) >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, (size_t)(hend - s));
	host[hend - s] = 0;
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) != 1)
		return -EINVAL;
	unsigned long v = 6379;
	if (colon && (parse_uint(colon + 1, (size_t)(end - colon - 1), 65535, &v) < 0 || !v))
		return -EINVAL;
	t->port = (int)v;
	v = 0;
	if (slash && slash[1] && parse_uint(slash + 1, strlen(slash + 1), 1u << 20, &v) < 0)
		return -EINVAL;
	t->db = (unsigned)v;
	t->host = strdup(host);
	return t->host ? 0 : -ENOMEM;
}

static uint64_t random_u64(void)
{
	uint64_t r;
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) == (ssize_t)sizeof(r))
		return r;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	r = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	return (r ^ (uint64_t)getpid() << 32) * UINT64_C(0x9e3779b97f4a7c15);
}

static void free_fields(struct kumo_throttle *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct entry *e = t->buckets[i];
		while (e) {
			struct entry *next = e->next;
			free(e->leases);
			free(e);
			e = next;
		}
	}
	while (t->releases) {
		struct release *rel = t->releases;
		t->releases = rel->next;
		free(rel);
	}
	free(t->buckets);
	free(t->host);
	free(t->user);
	free(t->pass);
	free(t->prefix);
	free(t);
}

int kumo_throttle_new(const struct kumo_throttle_cfg *cfg, struct io_uring *ring, uint64_t ud_tag,
		      struct kumo_throttle **out)
{
	int err = -ENOMEM;
	bool redis = cfg && cfg->redis_url && cfg->redis_url[0];
	if (!cfg || !out || (redis && !ring))
		return -EINVAL;
	struct kumo_throttle *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->ring = ring;
	t->tag = ud_tag & UD_OP_MASK;
	t->gen = 1;
	t->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	t->reconnect_max_ms =
	    cfg->reconnect_max_ms ? cfg->reconnect_max_ms : DEFAULT_RECONNECT_MAX_MS;
	if (t->reconnect_max_ms < RECONNECT_MIN_MS)
		t->reconnect_max_ms = RECONNECT_MIN_MS;
	t->backoff = RECONNECT_MIN_MS;
	t->log_fn = cfg->log_fn;
	t->log_arg = cfg->log_arg;
	t->counter = (random_u64() & 0xffffffffu) << 20; /* a restart does not reuse ids */
	t->nbuckets = 64;
	if (!(t->buckets = calloc(t->nbuckets, sizeof(*t->buckets))))
		goto out_free;

	char node[KUMO_THROTTLE_NODE_ID_MAX + 1];
	if (cfg->node_id) {
		size_t n = strnlen(cfg->node_id, KUMO_THROTTLE_NODE_ID_MAX + 1);
		err = -EINVAL;
		if (n == 0 || n > KUMO_THROTTLE_NODE_ID_MAX)
			goto out_free;
		for (size_t i = 0; i < n; i++)
			if (cfg->node_id[i] <= ' ' || cfg->node_id[i] > '~')
				goto out_free;
		memcpy(node, cfg->node_id, n + 1);
	} else {
		snprintf(node, sizeof(node), "%016llx", (unsigned long long)random_u64());
	}
	err = -ENOMEM;
	t->prefix_len = strlen(node) + 1;
	if (!(t->prefix = malloc(t->prefix_len + 1)))
		goto out_free;
	snprintf(t->prefix, t->prefix_len + 1, "%s:", node);

	t->state = ST_LOCAL;
	if (redis) {
		if ((err = parse_url(t, cfg->redis_url)) < 0)
			goto out_free;
		t->state = ST_DOWN;
		start_connect(t);
	}
	*out = t;
	return 0;

out_free:
	free_fields(t);
	return err;
}

void kumo_throttle_free(struct kumo_throttle *t)
{
	if (!t)
		return;
	t->closing = true;
	if (t->ac)
		redisAsyncFree(t->ac); /* reply callbacks free the requests */
	while (t->head) {
		struct req *q = t->head;
		unlink_req(t, q);
		free(q);
	}
	free_fields(t);
}
