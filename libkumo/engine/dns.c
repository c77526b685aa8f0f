/* MX resolution over c-ares driven by the loop's io_uring: the sockets c-ares opens are
 * watched with one-shot polls, answers are parsed by c-ares into a cache of domains (MX
 * sets) and hosts (addresses) kept in LRU order, and results are built per callback. */
#include "engine/dns.h"

#include <arpa/nameser.h>
#include <ares.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_TRIES 3
#define DEFAULT_CACHE_MAX 10000
#define DEFAULT_NEG_TTL 300
#define DEFAULT_TEMP_TTL 30
#define DEFAULT_MAX_TTL 86400
#define MAX_MX_HOSTS 32 /* lowest preferences kept */
#define MAX_ADDRS 32	/* per host and family */
#define EDNS_SIZE 1232	/* DNS Flag Day 2020: no IP fragmentation, rarely TCP */
#define NAME_MAX_LEN 253

/* user_data below the tag: {gen:24 at bit 32, slot:32}. SLOT_NONE marks our own
 * POLL_REMOVE requests, whose completions carry nothing to do. */
#define UD_OP_MASK (UINT64_C(0xff) << 56)
#define GEN_MASK 0xffffffu
#define SLOT_NONE 0xffffffffu

/* A socket c-ares asked us to watch. gen is bumped on every arm and on release, so a
 * completion is current only if it carries the slot's gen while a poll is armed. */
struct watch {
	int fd;		     /* -1: slot free */
	uint32_t gen;	     /* 24 bits */
	bool rd, wr;	     /* what c-ares wants */
	bool armed;	     /* a poll with gen is in the ring */
	bool removing;	     /* a POLL_REMOVE for that poll is queued */
	unsigned armed_mask; /* events of the armed poll */
};

struct waiter {
	struct waiter *next;
	kumo_dns_mx_fn fn;
	void *arg;
};

/* Callbacks being delivered; a stack, as a callback may finish another lookup. */
struct batch {
	struct batch *up;
	struct waiter *head;
};

enum { KIND_DOMAIN, KIND_HOST };

/* Common head of the two kinds of cache entries. */
struct entry {
	struct kumo_dns *dns;
	struct entry *hnext;	     /* hash chain */
	struct entry *older, *newer; /* LRU list */
	uint64_t hash;
	uint64_t expires_ms; /* of the answer held, when valid */
	char *name;	     /* lowercase, no trailing dot */
	uint8_t kind;
	bool valid;    /* holds an answer (perhaps expired) */
	bool pending;  /* queries in flight */
	unsigned busy; /* reasons not to evict: lookups in progress, domains using a host */
};

struct mx {
	char *name;
	uint16_t pref;
};

struct dom {
	struct entry e;
	/* The answer of the MX step. */
	int status;	 /* KUMO_DNS_OK: go on with the hosts */
	int ares_status; /* the c-ares error behind a TEMP */
	bool implicit;
	size_t nmx;
	struct mx *mx; /* by preference, then name */
	char *site;
	/* A resolution in progress (in_progress): waiters, and the hosts it uses. */
	bool in_progress;
	bool oom;
	struct waiter *waiters, **wtail;
	struct host **hosts; /* one per mx, pinned (busy) until the end */
	unsigned hosts_left; /* host lookups awaited */
	struct dom *prog_prev, *prog_next;
};

struct host {
	struct entry e;
	struct kumo_mx_addr *v4, *v6;
	size_t n4, n6;
	bool temp;	 /* a lookup failed for a while */
	int ares_status; /* its error */
	/* A lookup in flight. */
	unsigned left; /* answers (A, AAAA) awaited */
	uint64_t new_expires;
	struct dom **waiting; /* domains waiting for this host */
	size_t nwaiting, capwaiting;
};

struct kumo_dns {
	ares_channel ch;
	struct io_uring *ring;
	uint64_t tag;	 /* op bits only */
	uint64_t now_ms; /* latest time the caller gave */
	uint64_t rng;
	bool closing;
	uint32_t neg_ttl, temp_ttl, max_ttl;
	size_t cache_max;
	struct watch *w; /* sockets, by slot */
	size_t nw;
	struct entry **buckets;
	size_t nbuckets; /* power of two */
	size_t count;
	struct entry *oldest, *newest;
	struct dom *progress;  /* domains being resolved */
	struct batch *batches; /* callbacks being delivered, innermost first */
	struct kumo_dns_stats st;
};

/* ---- The TTLs of a message. ---- */

static uint16_t rd16(const unsigned char *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Steps over a (possibly compressed) name ending before len. */
static int skip_name(const unsigned char *m, size_t len, size_t *off)
{
	size_t o = *off;

	for (int i = 0; i < 128; i++) {
		if (o >= len)
			return -EBADMSG;
		unsigned c = m[o];
		if (c == 0) {
			*off = o + 1;
			return 0;
		}
		if ((c & 0xc0) == 0xc0) {
			if (len - o < 2)
				return -EBADMSG;
			*off = o + 2;
			return 0;
		}
		if (c & 0xc0)
			return -EBADMSG;
		o += 1 + (size_t)c;
	}
	return -EBADMSG;
}

int kumo_dns_msg_ttls(const unsigned char *msg, size_t len, uint32_t *answer_ttl,
		      uint32_t *negative_ttl)
{
	uint32_t ans = UINT32_MAX, neg = UINT32_MAX;

	*answer_ttl = *negative_ttl = UINT32_MAX;
	if (!msg || len < 12)
		return -EBADMSG;
	unsigned qd = rd16(msg + 4), an = rd16(msg + 6), ns = rd16(msg + 8);
	size_t off = 12;
	for (unsigned i = 0; i < qd; i++) {
		if (skip_name(msg, len, &off) < 0 || len - off < 4)
			return -EBADMSG;
		off += 4;
	}
	for (unsigned i = 0; i < an + ns; i++) {
		if (skip_name(msg, len, &off) < 0 || len - off < 10)
			return -EBADMSG;
		unsigned type = rd16(msg + off);
		uint32_t ttl = rd32(msg + off + 4);
		size_t rdlen = rd16(msg + off + 8);
		off += 10;
		if (len - off < rdlen)
			return -EBADMSG;
		if (ttl & 0x80000000u)
			ttl = 0;
		if (i < an) {
			if (ttl < ans)
				ans = ttl;
		} else if (type == ns_t_soa && neg == UINT32_MAX) {
			size_t p = off, end = off + rdlen;
			if (skip_name(msg, end, &p) < 0 || skip_name(msg, end, &p) < 0 ||
			    end - p < 20)
				return -EBADMSG;
			uint32_t min = rd32(msg + p + 16);
			if (min & 0x80000000u)
				min = 0;
			neg = min < ttl ? min : ttl;
		}
		off += rdlen;
	}
	*answer_ttl = ans;
	*negative_ttl = neg;
	return 0;
}

/* ---- Small helpers. ---- */

static uint64_t rnd(struct kumo_dns *dns)
{
	/* xorshift64* */
	uint64_t x = dns->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	dns->rng = x;
	return x * UINT64_C(2685821657736338717);
}

static void set_now(struct kumo_dns *dns, uint64_t now_ms)
{
	if (now_ms > dns->now_ms)
		dns->now_ms = now_ms;
}

static uint64_t expiry(struct kumo_dns *dns, uint32_t ttl_s)
{
	if (ttl_s > dns->max_ttl)
		ttl_s = dns->max_ttl;
	return dns->now_ms + (uint64_t)ttl_s * 1000;
}

/* TTL of a negative answer: the SOA's, else the configured default. */
static uint32_t neg_ttl(const struct kumo_dns *dns, uint32_t soa)
{
	return soa != UINT32_MAX ? soa : dns->neg_ttl;
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Lowercases and checks a domain into out[NAME_MAX_LEN + 1]; returns its length. */
static int normalize(const char *in, char *out)
{
	size_t n = strlen(in), label = 0;

	if (n > 0 && in[n - 1] == '.')
		n--;
	if (n == 0 || n > NAME_MAX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c <= 0x20 || c == 0x7f || c == '\\')
			return -EINVAL;
		if (c == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if (++label > 63) {
			return -EINVAL;
		}
		out[i] = lower((char)c);
	}
	out[n] = '\0';
	return (int)n;
}

/* A host name from an answer: lowercase, trailing dot dropped. NULL if out of memory. */
static char *host_name_dup(const char *in)
{
	size_t n = strlen(in);
	if (n > 0 && in[n - 1] == '.')
		n--;
	char *s = malloc(n + 1);
	if (!s)
		return NULL;
	for (size_t i = 0; i < n; i++)
		s[i] = lower(in[i]);
	s[n] = '\0';
	return s;
}

static uint64_t hash_name(uint8_t kind, const char *s)
{
	uint64_t h = UINT64_C(14695981039346656037) ^ kind;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= UINT64_C(1099511628211);
	}
	return h ^ (h >> 29);
}

static struct io_uring_sqe *get_sqe(struct kumo_dns *dns)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(dns->ring);
	if (!sqe) {
		io_uring_submit(dns->ring);
		sqe = io_uring_get_sqe(dns->ring);
	}
	if (!sqe)
		dns->st.sqe_failures++;
	return sqe;
}

/* ---- Sockets: c-ares' socket-state callback and one-shot polls. ---- */

static uint64_t watch_ud(const struct kumo_dns *dns, uint32_t gen, uint32_t slot)
{
	return dns->tag | (uint64_t)(gen & GEN_MASK) << 32 | slot;
}

static void queue_remove(struct kumo_dns *dns, struct watch *w, uint32_t slot)
{
	struct io_uring_sqe *sqe = get_sqe(dns);
	if (!sqe)
		return;
	io_uring_prep_poll_remove(sqe, watch_ud(dns, w->gen, slot));
	io_uring_sqe_set_data64(sqe, watch_ud(dns, 0, SLOT_NONE));
	w->removing = true;
}

static void sync_watch(struct kumo_dns *dns, uint32_t slot)
{
	struct watch *w = &dns->w[slot];
	unsigned mask = (w->rd ? POLLIN : 0) | (w->wr ? POLLOUT : 0);

	if (w->fd < 0 || !mask)
		return;
	if (w->armed) {
		/* A poll lacking an event now wanted is cancelled, then re-armed. */
		if ((mask & ~w->armed_mask) && !w->removing)
			queue_remove(dns, w, slot);
		return;
	}
	struct io_uring_sqe *sqe = get_sqe(dns);
	if (!sqe)
		return; /* kumo_dns_tick tries again */
	w->gen = (w->gen + 1) & GEN_MASK;
	io_uring_prep_poll_add(sqe, w->fd, mask);
	io_uring_sqe_set_data64(sqe, watch_ud(dns, w->gen, slot));
	w->armed = true;
	w->removing = false;
	w->armed_mask = mask;
}

static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct kumo_dns *dns = data;
	size_t slot = dns->nw, free_slot = dns->nw;

	if (dns->closing)
		return;
	for (size_t i = 0; i < dns->nw; i++) {
		if (dns->w[i].fd == fd) {
			slot = i;
			break;
		}
		if (dns->w[i].fd < 0 && free_slot == dns->nw)
			free_slot = i;
	}
	if (!readable && !writable) {
		/* c-ares closes fd right after this; a poll in flight would keep the
		 * socket alive inside the ring, so it is removed. */
		if (slot == dns->nw)
			return;
		struct watch *w = &dns->w[slot];
		if (w->armed && !w->removing)
			queue_remove(dns, w, (uint32_t)slot);
		w->fd = -1;
		w->armed = w->removing = false;
		w->gen = (w->gen + 1) & GEN_MASK;
		dns->st.sockets--;
		return;
	}
	if (slot == dns->nw) {
		if (free_slot == dns->nw) {
			struct watch *nw = realloc(dns->w, (dns->nw + 1) * sizeof(*nw));
			if (!nw)
				return; /* its queries time out: TEMP */
			dns->w = nw;
			dns->w[dns->nw] = (struct watch){.fd = -1};
			free_slot = dns->nw++;
		}
		slot = free_slot;
		dns->w[slot].fd = fd;
		dns->w[slot].armed = dns->w[slot].removing = false;
		dns->st.sockets++;
	}
	dns->w[slot].rd = readable != 0;
	dns->w[slot].wr = writable != 0;
	sync_watch(dns, (uint32_t)slot);
}

void kumo_dns_complete(struct kumo_dns *dns, uint64_t user_data, int res)
{
	uint32_t slot = (uint32_t)user_data;
	uint32_t gen = (uint32_t)(user_data >> 32) & GEN_MASK;

	if ((user_data & UD_OP_MASK) != dns->tag || slot == SLOT_NONE || slot >= dns->nw)
		return;
	struct watch *w = &dns->w[slot];
	if (w->fd < 0 || !w->armed || w->gen != gen)
		return; /* a poll of a closed socket, or one replaced since */
	w->armed = w->removing = false;
	int fd = w->fd;
	if (res != -ECANCELED) {
		bool err = res < 0;
		bool rd = err || (res & (POLLIN | POLLERR | POLLHUP));
		bool wr = w->wr && (err || (res & (POLLOUT | POLLERR | POLLHUP)));
		ares_process_fd(dns->ch, rd ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
		if (err)
			return; /* re-armed by the next tick: no busy loop on a failing poll */
	}
	w = &dns->w[slot];
	if (w->fd == fd && w->gen == gen && !w->armed)
		sync_watch(dns, slot);
}

/* ---- The cache: a hash table of entries in LRU order. ---- */

static struct entry *lookup(struct kumo_dns *dns, uint8_t kind, const char *name)
{
	uint64_t h = hash_name(kind, name);
	for (struct entry *e = dns->buckets[h & (dns->nbuckets - 1)]; e; e = e->hnext)
		if (e->hash == h && e->kind == kind && strcmp(e->name, name) == 0)
			return e;
	return NULL;
}

static void lru_unlink(struct kumo_dns *dns, struct entry *e)
{
	if (e->older)
		e->older->newer = e->newer;
	else
		dns->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		dns->newest = e->older;
	e->older = e->newer = NULL;
}

static void lru_push(struct kumo_dns *dns, struct entry *e)
{
	e->older = dns->newest;
	e->newer = NULL;
	if (dns->newest)
		dns->newest->newer = e;
	else
		dns->oldest = e;
	dns->newest = e;
}

static void touch(struct kumo_dns *dns, struct entry *e)
{
	if (dns->newest != e) {
		lru_unlink(dns, e);
		lru_push(dns, e);
	}
}

static void grow_buckets(struct kumo_dns *dns)
{
	size_t n = dns->nbuckets * 2;
	struct entry **b = calloc(n, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < dns->nbuckets; i++) {
		struct entry *e = dns->buckets[i], *next;
		for (; e; e = next) {
			next = e->hnext;
			e->hnext = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(dns->buckets);
	dns->buckets = b;
	dns->nbuckets = n;
}

static void insert(struct kumo_dns *dns, struct entry *e, uint8_t kind, char *name)
{
	e->dns = dns;
	e->kind = kind;
	e->name = name;
	e->hash = hash_name(kind, name);
	if (dns->count >= dns->nbuckets)
		grow_buckets(dns);
	struct entry **b = &dns->buckets[e->hash & (dns->nbuckets - 1)];
	e->hnext = *b;
	*b = e;
	lru_push(dns, e);
	dns->count++;
}

static void dom_clear(struct dom *d)
{
	for (size_t i = 0; i < d->nmx; i++)
		free(d->mx[i].name);
	free(d->mx);
	free(d->site);
	d->mx = NULL;
	d->site = NULL;
	d->nmx = 0;
	d->implicit = false;
	d->status = KUMO_DNS_OK;
	d->ares_status = ARES_SUCCESS;
}

static void host_clear(struct host *h)
{
	free(h->v4);
	free(h->v6);
	h->v4 = h->v6 = NULL;
	h->n4 = h->n6 = 0;
	h->temp = false;
	h->ares_status = ARES_SUCCESS;
}

static void entry_free(struct kumo_dns *dns, struct entry *e)
{
	struct entry **p = &dns->buckets[e->hash & (dns->nbuckets - 1)];
	while (*p != e)
		p = &(*p)->hnext;
	*p = e->hnext;
	lru_unlink(dns, e);
	dns->count--;
	if (e->kind == KIND_DOMAIN) {
		struct dom *d = (struct dom *)e;
		dom_clear(d);
		free(d->hosts);
		while (d->waiters) {
			struct waiter *w = d->waiters;
			d->waiters = w->next;
			free(w);
		}
	} else {
		struct host *h = (struct host *)e;
		host_clear(h);
		free(h->waiting);
	}
	free(e->name);
	free(e);
}

/* Drops least recently used entries that nothing is using until the cache fits. */
static void evict(struct kumo_dns *dns)
{
	struct entry *e = dns->oldest, *next;
	for (; e && dns->count > dns->cache_max; e = next) {
		next = e->newer;
		if (!e->busy && !e->pending) {
			entry_free(dns, e);
			dns->st.evictions++;
		}
	}
}

static struct dom *dom_get(struct kumo_dns *dns, const char *name)
{
	struct dom *d = (struct dom *)lookup(dns, KIND_DOMAIN, name);
	if (d)
		return d;
	d = calloc(1, sizeof(*d));
	char *s = strdup(name);
	if (!d || !s) {
		free(d);
		free(s);
		return NULL;
	}
	d->wtail = &d->waiters;
	insert(dns, &d->e, KIND_DOMAIN, s);
	return d;
}

static struct host *host_get(struct kumo_dns *dns, const char *name)
{
	struct host *h = (struct host *)lookup(dns, KIND_HOST, name);
	if (h)
		return h;
	h = calloc(1, sizeof(*h));
	char *s = strdup(name);
	if (!h || !s) {
		free(h);
		free(s);
		return NULL;
	}
	insert(dns, &h->e, KIND_HOST, s);
	return h;
}

/* ---- Results. ---- */

struct result {
	struct kumo_mx_result r;
	char error[384];
};

static bool host_usable(const struct host *h)
{
	return h && !h->e.pending && h->n4 + h->n6 > 0;
}

/* Builds the result of a finished resolution as one block that owns its strings. */
static struct result *build(struct dom *d)
{
	size_t nh = d->status == KUMO_DNS_OK && !d->oom ? d->nmx : 0;
	size_t naddr = 0, strs = strlen(d->e.name) + 1 + (nh && d->site ? strlen(d->site) + 1 : 0);

	for (size_t i = 0; i < nh; i++) {
		if (host_usable(d->hosts[i]))
			naddr += d->hosts[i]->n4 + d->hosts[i]->n6;
		strs += strlen(d->mx[i].name) + 1;
	}
	size_t size = sizeof(struct result) + nh * sizeof(struct kumo_mx_host) +
		      naddr * sizeof(struct kumo_mx_addr) + strs;
	struct result *res = malloc(size);
	if (!res)
		return NULL;
	struct kumo_mx_host *hosts = (struct kumo_mx_host *)(res + 1);
	struct kumo_mx_addr *addrs = (struct kumo_mx_addr *)(hosts + nh);
	char *str = (char *)(addrs + naddr);

	struct kumo_mx_result *r = &res->r;
	*r = (struct kumo_mx_result){.status = d->status, .implicit = d->implicit};
	res->error[0] = '\0';
	r->error = res->error;
	size_t n = strlen(d->e.name) + 1;
	r->domain = memcpy(str, d->e.name, n);
	str += n;

	bool any = false, temp = false;
	int temp_status = ARES_SUCCESS;
	for (size_t i = 0; i < nh; i++) {
		struct host *h = d->hosts[i];
		struct kumo_mx_host *o = &hosts[i];
		n = strlen(d->mx[i].name) + 1;
		o->name = memcpy(str, d->mx[i].name, n);
		str += n;
		o->pref = d->mx[i].pref;
		o->addrs = addrs;
		o->naddrs = 0;
		if (host_usable(h)) {
			if (h->n4)
				memcpy(addrs, h->v4, h->n4 * sizeof(*addrs));
			if (h->n6)
				memcpy(addrs + h->n4, h->v6, h->n6 * sizeof(*addrs));
			o->naddrs = h->n4 + h->n6;
			addrs += o->naddrs;
			any = true;
		} else if (!h || h->e.pending || h->temp) {
			temp = true;
			if (temp_status == ARES_SUCCESS)
				temp_status = h && h->temp ? h->ares_status : ARES_ENOMEM;
		}
	}

	const char *dn = d->e.name;
	if (d->oom) {
		r->status = KUMO_DNS_TEMP;
		snprintf(res->error, sizeof(res->error), "%s: out of memory while resolving", dn);
	} else if (d->status == KUMO_DNS_PERM_NXDOMAIN) {
		snprintf(res->error, sizeof(res->error), "%s: no such domain (NXDOMAIN)", dn);
	} else if (d->status == KUMO_DNS_PERM_NULL_MX) {
		snprintf(res->error, sizeof(res->error),
			 "%s: the domain accepts no mail (null MX, RFC 7505)", dn);
	} else if (d->status == KUMO_DNS_TEMP) {
		snprintf(res->error, sizeof(res->error), "%s: MX lookup failed: %s", dn,
			 ares_strerror(d->ares_status));
	} else if (!any && temp) {
		r->status = KUMO_DNS_TEMP;
		snprintf(res->error, sizeof(res->error), "%s: address lookup of %s failed: %s", dn,
			 d->implicit ? "the domain" : "its MX hosts", ares_strerror(temp_status));
	} else if (!any) {
		r->status = KUMO_DNS_PERM_NO_ADDRESSES;
		snprintf(res->error, sizeof(res->error), "%s: %s", dn,
			 d->implicit ? "no MX records and no A or AAAA records"
				     : "none of its MX hosts has an A or AAAA record");
	}
	if (r->status == KUMO_DNS_OK) {
		r->nhosts = nh;
		r->hosts = hosts;
		n = strlen(d->site) + 1;
		r->site = memcpy(str, d->site, n);
	}
	return res;
}

/* A fresh random order among hosts of equal preference. */
static void shuffle(struct kumo_dns *dns, struct kumo_mx_result *r)
{
	struct kumo_mx_host *h = (struct kumo_mx_host *)r->hosts;
	for (size_t a = 0, b; a < r->nhosts; a = b) {
		for (b = a + 1; b < r->nhosts && h[b].pref == h[a].pref; b++)
			;
		for (size_t i = b - 1; i > a; i--) {
			size_t j = a + (size_t)(rnd(dns) % (i - a + 1));
			struct kumo_mx_host t = h[i];
			h[i] = h[j];
			h[j] = t;
		}
	}
}

/* ---- Resolution: MX step, then the hosts, then the callbacks. ---- */

static void host_start(struct kumo_dns *dns, struct host *h);

static void progress_unlink(struct kumo_dns *dns, struct dom *d)
{
	if (d->prog_prev)
		d->prog_prev->prog_next = d->prog_next;
	else
		dns->progress = d->prog_next;
	if (d->prog_next)
		d->prog_next->prog_prev = d->prog_prev;
	d->prog_prev = d->prog_next = NULL;
}

static int add_waiting(struct host *h, struct dom *d)
{
	if (h->nwaiting == h->capwaiting) {
		size_t cap = h->capwaiting ? h->capwaiting * 2 : 4;
		struct dom **p = realloc(h->waiting, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		h->waiting = p;
		h->capwaiting = cap;
	}
	h->waiting[h->nwaiting++] = d;
	return 0;
}

static void dom_finish(struct kumo_dns *dns, struct dom *d)
{
	/* A host may have gone back to the wire since it answered (expired, then looked
	 * up for another domain): wait for it too. */
	if (d->hosts) {
		for (size_t i = 0; i < d->nmx; i++) {
			struct host *h = d->hosts[i];
			if (h && h->e.pending && add_waiting(h, d) == 0)
				d->hosts_left++;
		}
		if (d->hosts_left)
			return;
	}
	struct result *res = build(d);
	/* for the out-of-memory result: d may be evicted by a callback of the batch */
	char name[NAME_MAX_LEN + 1];
	snprintf(name, sizeof(name), "%s", d->e.name);
	if (d->hosts) {
		for (size_t i = 0; i < d->nmx; i++)
			if (d->hosts[i])
				d->hosts[i]->e.busy--;
		free(d->hosts);
		d->hosts = NULL;
	}
	d->in_progress = false;
	d->oom = false;
	d->e.busy--;
	progress_unlink(dns, d);

	struct batch b = {.up = dns->batches, .head = d->waiters};
	d->waiters = NULL;
	d->wtail = &d->waiters;
	dns->batches = &b;
	while (b.head) {
		struct waiter *w = b.head;
		b.head = w->next;
		if (res) {
			shuffle(dns, &res->r);
			w->fn(&res->r, w->arg);
		} else {
			struct kumo_mx_result oom = {.domain = name,
						     .status = KUMO_DNS_TEMP,
						     .error = "out of memory while resolving"};
			w->fn(&oom, w->arg);
		}
		free(w);
	}
	dns->batches = b.up;
	free(res);
}

/* The MX step is done (answered or from the cache): get the hosts' addresses. */
static void mx_ready(struct kumo_dns *dns, struct dom *d)
{
	if (d->status != KUMO_DNS_OK) {
		dom_finish(dns, d);
		return;
	}
	d->hosts = calloc(d->nmx, sizeof(*d->hosts));
	if (!d->hosts) {
		d->oom = true;
		dom_finish(dns, d);
		return;
	}
	d->hosts_left = 1; /* held while starting lookups that may answer at once */
	for (size_t i = 0; i < d->nmx; i++) {
		struct host *h = host_get(dns, d->mx[i].name);
		if (!h)
			continue; /* reported as a temporary failure of that host */
		h->e.busy++;
		d->hosts[i] = h;
		touch(dns, &h->e);
		if (h->e.pending) {
			if (add_waiting(h, d) == 0)
				d->hosts_left++;
		} else if (h->e.valid && h->e.expires_ms > dns->now_ms) {
			dns->st.host_hits++;
		} else if (add_waiting(h, d) == 0) {
			d->hosts_left++;
			host_start(dns, h);
		}
	}
	if (--d->hosts_left == 0)
		dom_finish(dns, d);
}

static void host_done(struct kumo_dns *dns, struct host *h)
{
	h->e.pending = false;
	h->e.valid = true;
	h->e.expires_ms = h->new_expires;
	h->e.busy--;
	struct dom **waiting = h->waiting;
	size_t n = h->nwaiting;
	h->waiting = NULL;
	h->nwaiting = h->capwaiting = 0;
	for (size_t i = 0; i < n; i++)
		if (--waiting[i]->hosts_left == 0)
			dom_finish(dns, waiting[i]);
	free(waiting);
}

static void host_answer(struct host *h, int family, int status, unsigned char *abuf, int alen)
{
	struct kumo_dns *dns = h->e.dns;
	uint32_t ans = UINT32_MAX, neg = UINT32_MAX, ttl;

	if (dns->closing)
		return;
	if (abuf && alen > 0)
		kumo_dns_msg_ttls(abuf, (size_t)alen, &ans, &neg);
	if (status == ARES_SUCCESS) {
		struct ares_addrttl t4[MAX_ADDRS];
		struct ares_addr6ttl t6[MAX_ADDRS];
		int n = MAX_ADDRS;
		if (family == AF_INET)
			status = ares_parse_a_reply(abuf, alen, NULL, t4, &n);
		else
			status = ares_parse_aaaa_reply(abuf, alen, NULL, t6, &n);
		if (status == ARES_SUCCESS && n > 0) {
			struct kumo_mx_addr *a = calloc((size_t)n, sizeof(*a));
			if (!a) {
				status = ARES_ENOMEM;
			} else {
				ttl = ans;
				for (int i = 0; i < n; i++) {
					int t = family == AF_INET ? t4[i].ttl : t6[i].ttl;
					if (t < 0)
						t = 0;
					if ((uint32_t)t < ttl)
						ttl = (uint32_t)t;
					a[i].family = family;
					if (family == AF_INET)
						memcpy(a[i].addr, &t4[i].ipaddr, 4);
					else
						memcpy(a[i].addr, &t6[i].ip6addr, 16);
				}
				if (family == AF_INET) {
					h->v4 = a;
					h->n4 = (size_t)n;
				} else {
					h->v6 = a;
					h->n6 = (size_t)n;
				}
			}
		} else if (status == ARES_SUCCESS) {
			status = ARES_ENODATA; /* e.g. a CNAME leading nowhere */
		}
	}
	if (status == ARES_SUCCESS) {
		/* ttl set above */
	} else if (status == ARES_ENODATA || status == ARES_ENOTFOUND) {
		ttl = neg_ttl(dns, neg != UINT32_MAX ? neg : ans);
	} else {
		h->temp = true;
		h->ares_status = status;
		ttl = dns->temp_ttl;
	}
	uint64_t exp = expiry(dns, ttl);
	if (exp < h->new_expires)
		h->new_expires = exp;
	if (--h->left == 0)
		host_done(dns, h);
}

static void a_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	host_answer(arg, AF_INET, status, abuf, alen);
}

static void aaaa_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	host_answer(arg, AF_INET6, status, abuf, alen);
}

static void host_start(struct kumo_dns *dns, struct host *h)
{
	host_clear(h);
	h->e.pending = true;
	h->e.valid = false;
	h->e.busy++;
	h->left = 2;
	h->new_expires = UINT64_MAX;
	dns->st.queries += 2;
	ares_query(dns->ch, h->e.name, ns_c_in, ns_t_a, a_cb, h);
	ares_query(dns->ch, h->e.name, ns_c_in, ns_t_aaaa, aaaa_cb, h);
}

static int mx_cmp(const void *a, const void *b)
{
	const struct mx *x = a, *y = b;
	if (x->pref != y->pref)
		return x->pref < y->pref ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The domain is its own host. */
static int set_implicit(struct dom *d)
{
	d->mx = calloc(1, sizeof(*d->mx));
	if (!d->mx)
		return -ENOMEM;
	d->mx[0].name = strdup(d->e.name);
	d->site = strdup(d->e.name);
	d->nmx = 1;
	if (!d->mx[0].name || !d->site)
		return -ENOMEM;
	d->implicit = true;
	return 0;
}

/* Root target: "" from c-ares, "." to be safe. */
static bool is_root(const char *s)
{
	return s[0] == '\0' || (s[0] == '.' && s[1] == '\0');
}

/* Fills d from an MX answer; returns its TTL, or -ENOMEM. */
static long parse_mx(struct kumo_dns *dns, struct dom *d, unsigned char *abuf, int alen,
		     uint32_t ans, uint32_t neg)
{
	struct ares_mx_reply *list = NULL;
	int rc = ares_parse_mx_reply(abuf, alen, &list);

	if (rc == ARES_ENODATA || (rc == ARES_SUCCESS && !list)) {
		/* An answer with no MX in it (a CNAME to a name without MX). */
		if (list)
			ares_free_data(list);
		if (set_implicit(d) < 0)
			return -ENOMEM;
		return neg_ttl(dns, neg != UINT32_MAX ? neg : ans);
	}
	if (rc != ARES_SUCCESS) {
		d->status = KUMO_DNS_TEMP;
		d->ares_status = rc;
		return dns->temp_ttl;
	}
	size_t n = 0, roots = 0;
	for (struct ares_mx_reply *m = list; m; m = m->next) {
		n++;
		if (is_root(m->host))
			roots++;
	}
	uint32_t ttl = ans != UINT32_MAX ? ans : dns->neg_ttl;
	if (roots == n) {
		/* RFC 7505 null MX; a root target mixed with real hosts is just dropped. */
		ares_free_data(list);
		d->status = KUMO_DNS_PERM_NULL_MX;
		return ttl;
	}
	d->mx = calloc(n - roots, sizeof(*d->mx));
	if (!d->mx) {
		ares_free_data(list);
		return -ENOMEM;
	}
	for (struct ares_mx_reply *m = list; m; m = m->next) {
		if (is_root(m->host))
			continue;
		char *name = host_name_dup(m->host);
		if (!name) {
			ares_free_data(list);
			return -ENOMEM;
		}
		size_t i;
		for (i = 0; i < d->nmx && strcmp(d->mx[i].name, name) != 0; i++)
			;
		if (i < d->nmx) { /* the same host twice: keep its best preference */
			if (m->priority < d->mx[i].pref)
				d->mx[i].pref = m->priority;
			free(name);
			continue;
		}
		d->mx[d->nmx].name = name;
		d->mx[d->nmx++].pref = m->priority;
	}
	ares_free_data(list);
	qsort(d->mx, d->nmx, sizeof(*d->mx), mx_cmp);
	while (d->nmx > MAX_MX_HOSTS)
		free(d->mx[--d->nmx].name);

	/* site: the names sorted and joined by "," */
	char **names = malloc(d->nmx * sizeof(*names));
	if (!names)
		return -ENOMEM;
	size_t len = 0;
	for (size_t i = 0; i < d->nmx; i++) {
		names[i] = d->mx[i].name;
		len += strlen(names[i]) + 1;
	}
	qsort(names, d->nmx, sizeof(*names), str_cmp);
	d->site = malloc(len);
	if (!d->site) {
		free(names);
		return -ENOMEM;
	}
	char *p = d->site;
	for (size_t i = 0; i < d->nmx; i++) {
		size_t l = strlen(names[i]);
		if (i)
			*p++ = ',';
		memcpy(p, names[i], l);
		p += l;
	}
	*p = '\0';
	free(names);
	return ttl;
}

static void mx_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dom *d = arg;
	struct kumo_dns *dns = d->e.dns;
	uint32_t ans = UINT32_MAX, neg = UINT32_MAX;
	long ttl;

	if (dns->closing)
		return;
	d->e.pending = false;
	dom_clear(d);
	if (abuf && alen > 0)
		kumo_dns_msg_ttls(abuf, (size_t)alen, &ans, &neg);
	switch (status) {
	case ARES_SUCCESS:
		ttl = parse_mx(dns, d, abuf, alen, ans, neg);
		break;
	case ARES_ENODATA:
		ttl = set_implicit(d) < 0 ? -ENOMEM : (long)neg_ttl(dns, neg);
		break;
	case ARES_ENOTFOUND:
		d->status = KUMO_DNS_PERM_NXDOMAIN;
		ttl = neg_ttl(dns, neg);
		break;
	default:
		d->status = KUMO_DNS_TEMP;
		d->ares_status = status;
		ttl = dns->temp_ttl;
		break;
	}
	if (ttl < 0) {
		dom_clear(d);
		d->status = KUMO_DNS_TEMP;
		d->ares_status = ARES_ENOMEM;
		ttl = 0;
	}
	d->e.valid = true;
	d->e.expires_ms = expiry(dns, (uint32_t)ttl);
	mx_ready(dns, d);
}

int kumo_dns_resolve_mx(struct kumo_dns *dns, const char *domain, uint64_t now_ms,
			kumo_dns_mx_fn fn, void *arg)
{
	char name[NAME_MAX_LEN + 1];

	if (!dns || !domain || !fn)
		return -EINVAL;
	int rc = normalize(domain, name);
	if (rc < 0)
		return rc;
	set_now(dns, now_ms);
	struct waiter *w = malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct waiter){.fn = fn, .arg = arg};
	evict(dns);
	struct dom *d = dom_get(dns, name);
	if (!d) {
		free(w);
		return -ENOMEM;
	}
	touch(dns, &d->e);
	*d->wtail = w;
	d->wtail = &w->next;
	if (d->in_progress) {
		dns->st.coalesced++;
		return 0;
	}
	d->in_progress = true;
	d->e.busy++;
	d->prog_prev = NULL;
	d->prog_next = dns->progress;
	if (dns->progress)
		dns->progress->prog_prev = d;
	dns->progress = d;
	if (d->e.valid && d->e.expires_ms > dns->now_ms) {
		dns->st.mx_hits++;
		mx_ready(dns, d);
	} else {
		d->e.pending = true;
		dns->st.queries++;
		ares_query(dns->ch, d->e.name, ns_c_in, ns_t_mx, mx_cb, d);
	}
	return 0;
}

static size_t drop_waiters(struct waiter **p, kumo_dns_mx_fn fn, void *arg)
{
	size_t n = 0;
	while (*p) {
		struct waiter *w = *p;
		if (w->fn == fn && w->arg == arg) {
			*p = w->next;
			free(w);
			n++;
		} else {
			p = &w->next;
		}
	}
	return n;
}

size_t kumo_dns_cancel(struct kumo_dns *dns, kumo_dns_mx_fn fn, void *arg)
{
	size_t n = 0;

	for (struct dom *d = dns->progress; d; d = d->prog_next) {
		n += drop_waiters(&d->waiters, fn, arg);
		d->wtail = &d->waiters;
		while (*d->wtail)
			d->wtail = &(*d->wtail)->next;
	}
	for (struct batch *b = dns->batches; b; b = b->up)
		n += drop_waiters(&b->head, fn, arg);
	return n;
}

/* ---- Life cycle and timers. ---- */

void kumo_dns_tick(struct kumo_dns *dns, uint64_t now_ms)
{
	set_now(dns, now_ms);
	ares_process_fd(dns->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	for (size_t i = 0; i < dns->nw; i++)
		if (dns->w[i].fd >= 0 && !dns->w[i].armed)
			sync_watch(dns, (uint32_t)i);
	evict(dns);
}

uint64_t kumo_dns_next_timeout_ms(struct kumo_dns *dns)
{
	struct timeval tv;
	struct timeval *t = ares_timeout(dns->ch, NULL, &tv);
	if (!t)
		return UINT64_MAX;
	return (uint64_t)t->tv_sec * 1000 + ((uint64_t)t->tv_usec + 999) / 1000;
}

void kumo_dns_get_stats(const struct kumo_dns *dns, struct kumo_dns_stats *st)
{
	*st = dns->st;
	st->cached = dns->count;
}

int kumo_dns_new(const struct kumo_dns_cfg *cfg, struct io_uring *ring, uint64_t ud_tag,
		 struct kumo_dns **out)
{
	if (!cfg || !ring || !out || (cfg->servers && !cfg->servers[0]) ||
	    cfg->timeout_ms > INT32_MAX || cfg->tries > 100)
		return -EINVAL;
	struct kumo_dns *dns = calloc(1, sizeof(*dns));
	if (!dns)
		return -ENOMEM;
	dns->ring = ring;
	dns->tag = ud_tag & UD_OP_MASK;
	dns->neg_ttl = cfg->negative_ttl_s ? cfg->negative_ttl_s : DEFAULT_NEG_TTL;
	dns->temp_ttl = cfg->temp_ttl_s ? cfg->temp_ttl_s : DEFAULT_TEMP_TTL;
	dns->max_ttl = cfg->max_ttl_s ? cfg->max_ttl_s : DEFAULT_MAX_TTL;
	dns->cache_max = cfg->cache_max ? cfg->cache_max : DEFAULT_CACHE_MAX;
	dns->nbuckets = 64;
	dns->buckets = calloc(dns->nbuckets, sizeof(*dns->buckets));
	if (!dns->buckets) {
		free(dns);
		return -ENOMEM;
	}
	if (getrandom(&dns->rng, sizeof(dns->rng), GRND_NONBLOCK) != sizeof(dns->rng)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		dns->rng = (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)dns;
	}
	dns->rng |= 1; /* xorshift needs a non-zero state */

	char lookups[] = "b";
	struct ares_options o = {
	    .flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES | ARES_FLAG_EDNS,
	    .timeout = (int)(cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS),
	    .tries = (int)(cfg->tries ? cfg->tries : DEFAULT_TRIES),
	    .ndots = 1,
	    .domains = NULL,
	    .ndomains = 0,
	    .lookups = lookups,
	    .sock_state_cb = sock_state,
	    .sock_state_cb_data = dns,
	    .ednspsz = EDNS_SIZE,
	};
	int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_NDOTS |
		   ARES_OPT_DOMAINS | ARES_OPT_LOOKUPS | ARES_OPT_SOCK_STATE_CB | ARES_OPT_EDNSPSZ |
		   ARES_OPT_NOROTATE;
	if (cfg->servers) {
		/* no servers for now (and no resolv.conf read): set from the string below */
		o.servers = NULL;
		o.nservers = 0;
		mask |= ARES_OPT_SERVERS;
	}
	int rc = ares_init_options(&dns->ch, &o, mask);
	if (rc != ARES_SUCCESS) {
		free(dns->buckets);
		free(dns);
		return rc == ARES_ENOMEM ? -ENOMEM : -EIO;
	}
	if (cfg->servers) {
		rc = ares_set_servers_ports_csv(dns->ch, cfg->servers);
		if (rc != ARES_SUCCESS) {
			kumo_dns_free(dns);
			return rc == ARES_ENOMEM ? -ENOMEM : -EINVAL;
		}
	}
	*out = dns;
	return 0;
}

void kumo_dns_free(struct kumo_dns *dns)
{
	if (!dns)
		return;
	dns->closing = true; /* c-ares' last callbacks (EDESTRUCTION) do nothing */
	ares_destroy(dns->ch);
	while (dns->oldest)
		entry_free(dns, dns->oldest);
	free(dns->buckets);
	free(dns->w);
	free(dns);
}
