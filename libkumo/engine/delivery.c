/* Delivery on a loop: due messages move from the timer wheel to their queue's site (MX
 * set, smart host or route), each site's ready queue feeds outbound SMTP connections,
 * and every recipient's outcome is logged and made durable: delete when all are done,
 * an updated envelope with the attempt count and next due time otherwise. */
#include "engine/internal.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "engine/dns.h"
#include "engine/shaping.h"
#include "engine/throttle.h"
#include "proto/dsn.h"
#include "engine/provider.h"
#include "proto/egress_proxy.h"
#include "proto/smtp_client.h"

#define SITE_TTL_MS (5 * 60 * 1000)
#define LEASE_TTL_MS 60000 /* a Redis connection lease; renewed every third of it */
#define SOURCE_RETRY_MS 5000       /* a failed egress source is tried again after this, */
#define SOURCE_MAX_RETRY_MS 300000 /* doubling up to this */
/* A connection holding part of a spent provider budget hands it over to a waiting site of
 * the provider after this many transactions (at once when it has nothing to send). */
#define PROVIDER_HANDOVER_AFTER 10

/* The Redis key part of a site's shared connection limit. */
static void lease_name(const struct kumo_site *s, char *buf, size_t cap)
{
	snprintf(buf, cap, "connection_limit:%s", s->name);
}

enum oc_state {
	OC_CONNECTING = 0, /* TCP connect in flight */
	OC_SESSION,        /* greeting/EHLO, or a transaction running */
	OC_LOADING,        /* reading the next message from the spool */
	OC_IDLE,           /* on its site's idle list */
	OC_QUITTING,
	OC_PROXY,          /* SOCKS5 handshake with the egress proxy */
};

/* One outbound connection. */
struct kumo_oconn {
	uint32_t gen;
	int fd;
	bool in_use, dead, established;
	bool recv_busy, send_busy, read_busy, eof;
	enum oc_state state;
	uint32_t inflight;       /* SQEs posted for this slot and not completed */
	uint32_t next_free, idle_next;
	uint32_t site;
	uint32_t provider;       /* the provider budget it counts against, or KUMO_NONE */
	struct kumo_node_slot *site_slot, *prov_slot; /* node-wide counts it holds, or NULL */
	unsigned host, addr;     /* the address being tried or used */
	uint64_t since_ms;       /* connect start or idle start */
	struct kumo_smtp_client *sm;
	uint8_t *rbuf;
	size_t rpos, rlen;
	struct kumo_buf sbuf;
	size_t sent;
	unsigned deliveries;
	/* the message in flight */
	uint32_t msg;
	uint8_t *mbuf;
	size_t mcap;
	struct kumo_envelope env;
	bool env_valid;
	const uint8_t *data;
	size_t data_len;
	size_t next_rcpt;        /* first recipient not yet tried in this attempt */
	size_t *batch;           /* recipient indexes of the running transaction */
	struct kumo_smtp_client_rcpt *crcpts;
	size_t nbatch, capbatch;
	bool any_temp;           /* some recipient got a temporary failure this attempt */
	bool txn_open;           /* sent, and its TXN_DONE not seen yet */
	char peer_name[256];
	char peer_addr[48];
	char local_addr[48];
	struct kumo_socks5c *sx;  /* SOCKS5 handshake in progress */
	char lease[80];           /* its Redis connection lease, or "" */
	char prov_lease[80];      /* its provider's Redis connection lease, or "" */
	uint64_t lease_renewed_ms;
};

/* Whether an egress source (its bind address or its proxy) works, as this loop saw it. */
struct source_health {
	uint64_t retry_ms;       /* 0: healthy; else the current back-off */
	uint64_t next_try_ms;    /* an unhealthy source is probed again from then */
};

struct kumo_delivery {
	struct kumo_loop *l;
	struct kumo_dns *dns;
	struct kumo_oconn *oc;
	uint32_t noc, free_head, live;
	struct kumo_smtp_client_cfg ccfg;
	uint32_t smart_site;
	uint32_t *route_sites;   /* per engine route */
	int64_t **wrr;           /* per pool: smooth weighted round robin state */
	struct source_health *health; /* per egress source */
	struct kumo_providers providers; /* provider budgets */
	struct kumo_throttle *throttle; /* shared limits in Redis, or NULL */
	struct kumo_buf dsn;
	uint64_t dsn_seq;
	bool stopping;
	bool started;            /* start() ran: routes exist, due messages may move */
	uint64_t swept_gen;      /* the conf generation whose new bounces were swept */
	uint32_t bouncing;       /* messages taken from their lists by a sweep, to fail */
	/* settings with defaults applied */
	uint64_t retry_ms, max_retry_ms, max_age_ms;
	unsigned conn_limit, max_deliveries, max_batch;
	uint32_t idle_ms, connect_ms;
	uint16_t mx_port;
};

static void oc_pump(struct kumo_delivery *d, struct kumo_oconn *oc);
static void site_kick(struct kumo_delivery *d, uint32_t site);
static void oc_take(struct kumo_delivery *d, struct kumo_oconn *oc);
static bool shared_token(struct kumo_delivery *d, uint32_t si);
static void make_due(struct kumo_delivery *d, uint32_t m);
static void site_remove_idle(struct kumo_delivery *d, struct kumo_oconn *oc);
static bool provider_lease_in_hand(struct kumo_delivery *d, uint32_t pi);
static bool provider_token(struct kumo_delivery *d, uint32_t si);

static uint64_t or_default(uint64_t v, uint64_t def)
{
	return v ? v : def;
}

/* ---- sites ---------------------------------------------------------------------- */

static int addr_to_host(const char *host_port, uint16_t default_port,
			struct kumo_site_host *h)
{
	char host[64];
	const char *colon = strrchr(host_port, ':');
	size_t hl = colon ? (size_t)(colon - host_port) : strlen(host_port);
	const char *p = host_port;
	if (*p == '[' && hl >= 2)
		p++, hl -= 2;
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, p, hl);
	host[hl] = 0;
	uint16_t port = colon ? (uint16_t)atoi(colon + 1) : default_port;
	struct sockaddr_storage *ss = calloc(1, sizeof(*ss));
	if (!ss || !(h->name = strdup(host))) {
		free(ss);
		return -ENOMEM;
	}
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
	} else {
		free(ss);
		free(h->name);
		return -EINVAL;
	}
	h->addrs = ss;
	h->naddrs = 1;
	return 0;
}

/* A site for a fixed host ("ip:port"): the smart host or a domain route. */
static uint32_t fixed_site(struct kumo_delivery *d, const char *host_port)
{
	char name[300];
	snprintf(name, sizeof(name), "smarthost:%s", host_port);
	uint32_t s = kumo_site_intern(&d->l->queues, name);
	if (s == KUMO_NONE)
		return s;
	struct kumo_site_host *h = calloc(1, sizeof(*h));
	if (!h || addr_to_host(host_port, 25, h) < 0) {
		free(h);
		return KUMO_NONE;
	}
	kumo_site_set_hosts(&d->l->queues.sites[s], h, 1);
	return s;
}

static int hosts_from_mx(const struct kumo_mx_result *r, uint16_t port,
			 struct kumo_site_host **out)
{
	struct kumo_site_host *hosts = calloc(r->nhosts ? r->nhosts : 1, sizeof(*hosts));
	if (!hosts)
		return -ENOMEM;
	for (size_t i = 0; i < r->nhosts; i++) {
		const struct kumo_mx_host *mh = &r->hosts[i];
		hosts[i].name = strdup(mh->name);
		hosts[i].addrs = calloc(mh->naddrs ? mh->naddrs : 1, sizeof(*hosts[i].addrs));
		if (!hosts[i].name || !hosts[i].addrs) {
			hosts[i].naddrs = 0;
			continue;
		}
		for (size_t k = 0; k < mh->naddrs; k++) {
			struct sockaddr_storage *ss = &hosts[i].addrs[k];
			if (mh->addrs[k].family == AF_INET) {
				struct sockaddr_in *in = (struct sockaddr_in *)ss;
				in->sin_family = AF_INET;
				in->sin_port = htons(port);
				memcpy(&in->sin_addr, mh->addrs[k].addr, 4);
			} else {
				struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
				in6->sin6_family = AF_INET6;
				in6->sin6_port = htons(port);
				memcpy(&in6->sin6_addr, mh->addrs[k].addr, 16);
			}
		}
		hosts[i].naddrs = mh->naddrs;
	}
	*out = hosts;
	return 0;
}

/* ---- shaping and egress ---------------------------------------------------------- */

/* A GCRA for rate r shared by nloops loops: emission interval and burst tolerance. */
static void gcra_setup(const struct kumo_shaping_rate *r, unsigned nloops, double *T,
		       double *tau)
{
	if (!r->count || !r->period_ms) {
		*T = *tau = 0;
		return;
	}
	double per_loop = (double)r->count / nloops;
	*T = (double)r->period_ms / per_loop;
	uint64_t burst = r->burst ? r->burst : r->count; /* KumoMTA: the burst is the count */
	double b = (double)burst / nloops;
	*tau = b > 1 ? *T * (b - 1) : 0;
}

/* 0 when an event may happen now, else the milliseconds to wait. */
static uint64_t gcra_wait(double T, double tau, double tat, double now)
{
	if (T == 0 || now >= tat - tau)
		return 0;
	return (uint64_t)(tat - tau - now) + 1;
}

static void gcra_take(double T, double *tat, double now)
{
	if (T != 0)
		*tat = (*tat > now ? *tat : now) + T;
}

/* GCRA over the node-wide state of slot, or over the local *tat without one. */
static uint64_t rate_wait(struct kumo_delivery *d, struct kumo_node_slot *slot,
			  enum kumo_rate_kind kind, double T, double tau, double tat, double now)
{
	return slot ? kumo_node_gcra_wait(&d->l->e->node_limits, slot, kind, T, tau, now)
		    : gcra_wait(T, tau, tat, now);
}

static void rate_take(struct kumo_delivery *d, struct kumo_node_slot *slot,
		      enum kumo_rate_kind kind, double T, double *tat, double now)
{
	if (slot)
		kumo_node_gcra_take(&d->l->e->node_limits, slot, kind, T, now);
	else
		gcra_take(T, tat, now);
}

/* The budget of the first matching provider that sets provider_connection_limit or
 * provider_max_message_rate, for the site's egress source; KUMO_NONE without one. */
static uint32_t provider_budget(struct kumo_delivery *d, const struct kumo_shaping_params *p,
				uint32_t source, unsigned nloops)
{
	const struct kumo_shaping_provider *sp = NULL;
	for (size_t i = 0; i < p->nproviders && !sp; i++)
		if (p->providers[i].connection_limit.limit || p->providers[i].max_message_rate.count)
			sp = &p->providers[i];
	if (!sp)
		return KUMO_NONE;
	uint32_t i = kumo_provider_intern(&d->providers, sp->name, source);
	if (i == KUMO_NONE)
		return i;
	struct kumo_provider_budget *b = &d->providers.v[i];
	b->conn_limit = (unsigned)sp->connection_limit.limit;
	b->node_slot = NULL;
	b->shared_conn_limit = b->shared_count = 0;
	struct kumo_shaping_rate rate = sp->max_message_rate;
	if (d->throttle && rate.count && !rate.local) {
		/* one rate for every node: Redis keeps it, the local GCRA stays off */
		b->shared_count = rate.count;
		b->shared_period_ms = rate.period_ms;
		b->shared_burst = rate.burst;
		rate.count = 0;
	}
	char key[300];
	snprintf(key, sizeof(key), "%s\x1f%u", sp->name, source);
	struct kumo_node_limits *nl = &d->l->e->node_limits;
	if (d->throttle && b->conn_limit && !sp->connection_limit.local)
		b->shared_conn_limit = b->conn_limit; /* one lease per connection, all nodes */
	else if (b->conn_limit)
		b->node_slot = kumo_node_slot_get(nl, key, KUMO_SLOT_PROVIDER, d->l->index, i);
	b->rate_slot =
		rate.count ? kumo_node_slot_get(nl, key, KUMO_SLOT_PROVIDER, d->l->index, i) : NULL;
	gcra_setup(&rate, b->rate_slot ? 1 : nloops, &b->T, &b->tau);
	return i;
}

/* Computes a site's limits from the shaping files (or the engine's settings). */
static void shape_site(struct kumo_delivery *d, uint32_t si, const char *domain)
{
	struct kumo_loop *l = d->l;
	struct kumo_site *s = &l->queues.sites[si];
	unsigned nloops = l->e->nloops ? l->e->nloops : 1;
	s->shaped = true;
	s->conn_limit = d->conn_limit;
	s->provider = KUMO_NONE;
	s->node_slot = s->rate_slot = NULL;
	s->max_ready = 0;
	s->max_deliveries = d->max_deliveries;
	s->idle_ms = d->idle_ms;
	s->msg_T = s->msg_tau = s->conn_T = s->conn_tau = 0;
	const struct kumo_shaping *sh = kumo_conf_shaping(l->conf);
	s->domain_hint[0] = 0;
	if (domain)
		snprintf(s->domain_hint, sizeof(s->domain_hint), "%s", domain);
	if (!sh || !domain || !*domain)
		return;
	const char *hosts[32];
	size_t n = 0;
	for (size_t i = 0; i < s->nhosts && n < 32; i++)
		hosts[n++] = s->hosts[i].name;
	const char *src = s->source != KUMO_NONE ? l->e->sources[s->source].name : NULL;
	struct kumo_shaping_params p;
	if (kumo_shaping_effective(sh, domain, hosts, n, src, &p) < 0)
		return;
	if (p.set & (1u << KUMO_SHAPING_F_CONNECTION_LIMIT)) {
		/* the node's limit: every loop's connections count against it */
		s->conn_limit = (unsigned)p.connection_limit.limit;
		s->node_slot = kumo_node_slot_get(&l->e->node_limits, s->name, KUMO_SLOT_SITE,
						  l->index, si);
	}
	s->provider = provider_budget(d, &p, s->source, nloops);
	if (s->conn_limit == 0)
		s->conn_limit = 1;
	s->shared_conn_limit = 0;
	if (d->throttle && (p.set & (1u << KUMO_SHAPING_F_CONNECTION_LIMIT)) &&
	    !p.connection_limit.local) {
		/* one limit for every node: each connection holds a lease in Redis */
		s->shared_conn_limit = p.connection_limit.limit ? p.connection_limit.limit : 1;
		s->conn_limit = (unsigned)s->shared_conn_limit;
		s->node_slot = NULL; /* the leases count for every loop and node */
	}
	s->max_ready = 0;
	if (p.set & (1u << KUMO_SHAPING_F_MAX_READY))
		s->max_ready = (p.max_ready + nloops - 1) / nloops;
	if (p.set & (1u << KUMO_SHAPING_F_MAX_DELIVERIES_PER_CONNECTION))
		s->max_deliveries = (unsigned)p.max_deliveries_per_connection;
	if (p.set & (1u << KUMO_SHAPING_F_IDLE_TIMEOUT))
		s->idle_ms = p.idle_timeout_ms;
	struct kumo_shaping_rate mr = p.max_message_rate;
	s->shared_count = 0;
	if (d->throttle && mr.count && !mr.local) {
		/* one limit for every node: Redis keeps it, the local GCRA stays off */
		s->shared_count = mr.count;
		s->shared_period_ms = mr.period_ms;
		s->shared_burst = mr.burst;
		mr.count = 0;
	}
	/* one GCRA state for all loops (each its own share only if that could not be had) */
	s->rate_slot = mr.count || p.max_connection_rate.count
			       ? kumo_node_slot_get(&l->e->node_limits, s->name, KUMO_SLOT_SITE,
						    l->index, si)
			       : NULL;
	unsigned share = s->rate_slot ? 1 : nloops;
	gcra_setup(&mr, share, &s->msg_T, &s->msg_tau);
	gcra_setup(&p.max_connection_rate, share, &s->conn_T, &s->conn_tau);
}

/* The pool of the first rule of kind match naming [name, name + len), or -1. */
static int rule_pool(const struct kumo_engine *e, int match, const char *name, size_t len)
{
	for (size_t i = 0; len && i < e->ntenant_pools; i++) {
		const struct kumo_tenant_pool *r = &e->tenant_pools[i];
		if (!r->tenant || r->match != match || strlen(r->tenant) != len)
			continue;
		if (match == KUMO_POOL_DOMAIN ? strncasecmp(r->tenant, name, len) == 0
					      : strncmp(r->tenant, name, len) == 0)
			return (int)r->pool;
	}
	return -1;
}

/* The pool the embedder's egress_pool callback names for the queue, or -1. */
static int policy_pool(const struct kumo_delivery *d, const struct kumo_queue *q,
		       const struct kumo_queue_parts *qp)
{
	const struct kumo_engine *e = d->l->e;
	if (!e->policy.egress_pool)
		return -1;
	char campaign[256], tenant[256], domain[256];
	snprintf(campaign, sizeof(campaign), "%.*s", (int)qp->campaign_len, qp->campaign);
	snprintf(tenant, sizeof(tenant), "%.*s", (int)qp->tenant_len, qp->tenant);
	snprintf(domain, sizeof(domain), "%.*s", (int)qp->domain_len, qp->domain);
	const char *name = e->policy.egress_pool(e->policy_arg, q->name, campaign, tenant,
						 domain);
	if (!name)
		return -1;
	for (size_t i = 0; i < e->npools; i++)
		if (strcmp(e->pools[i].name, name) == 0)
			return (int)i;
	kumo_elog(e, KUMO_LOG_WARN, "policy chose egress pool '%s' for queue %s: no such pool; "
				    "the configured rules apply", name, q->name);
	return -1;
}

/* The egress pool of a queue: the policy's choice, else the rule for its campaign,
 * tenant or domain, else the default pool (the first pool when none is set); -1 without
 * pools. */
static int choose_pool(const struct kumo_delivery *d, const struct kumo_queue *q)
{
	const struct kumo_engine *e = d->l->e;
	struct kumo_queue_parts qp;
	kumo_queue_parts(q->name, &qp);
	int p;
	if ((p = policy_pool(d, q, &qp)) >= 0 ||
	    (p = rule_pool(e, KUMO_POOL_CAMPAIGN, qp.campaign, qp.campaign_len)) >= 0 ||
	    (p = rule_pool(e, KUMO_POOL_TENANT, qp.tenant, qp.tenant_len)) >= 0 ||
	    (p = rule_pool(e, KUMO_POOL_DOMAIN, qp.domain, qp.domain_len)) >= 0)
		return p;
	for (size_t i = 0; i < e->ntenant_pools; i++)
		if (!e->tenant_pools[i].tenant)
			return (int)e->tenant_pools[i].pool;
	return e->npools ? 0 : -1;
}

static int queue_pool(const struct kumo_delivery *d, struct kumo_queue *q)
{
	if (!q->pool_known) {
		q->pool = choose_pool(d, q);
		q->pool_known = true;
	}
	return q->pool;
}

static bool source_unhealthy(const struct kumo_delivery *d, uint32_t src)
{
	return src != KUMO_NONE && d->health[src].retry_ms != 0;
}

/* Smooth weighted round robin over the pool's healthy sources (over all of them when
 * none is healthy). */
static uint32_t pick_source(struct kumo_delivery *d, int pool)
{
	const struct kumo_pool *p = &d->l->e->pools[pool];
	int64_t *cur = d->wrr[pool], total = 0;
	bool any_healthy = false;
	for (size_t i = 0; i < p->n; i++)
		any_healthy |= !source_unhealthy(d, p->sources[i]);
	size_t best = p->n;
	for (size_t i = 0; i < p->n; i++) {
		if (any_healthy && source_unhealthy(d, p->sources[i]))
			continue;
		cur[i] += p->weights[i];
		total += p->weights[i];
		if (best == p->n || cur[i] > cur[best])
			best = i;
	}
	cur[best] -= total;
	return p->sources[best];
}

static int copy_hosts(const struct kumo_site *from, struct kumo_site_host **out)
{
	struct kumo_site_host *h = calloc(from->nhosts ? from->nhosts : 1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	for (size_t i = 0; i < from->nhosts; i++) {
		h[i].name = strdup(from->hosts[i].name ? from->hosts[i].name : "");
		h[i].addrs = malloc((from->hosts[i].naddrs ? from->hosts[i].naddrs : 1) *
				    sizeof(*h[i].addrs));
		if (h[i].addrs)
			memcpy(h[i].addrs, from->hosts[i].addrs,
			       from->hosts[i].naddrs * sizeof(*h[i].addrs));
		h[i].naddrs = h[i].name && h[i].addrs ? from->hosts[i].naddrs : 0;
	}
	*out = h;
	return 0;
}

/* The ready queue for messages of queue q going to base site b: "source->site" when the
 * queue has an egress pool, else b itself. KUMO_NONE on ENOMEM. */
static uint32_t ready_site(struct kumo_delivery *d, uint32_t b, struct kumo_queue *q)
{
	struct kumo_queues *qs = &d->l->queues;
	int pool = queue_pool(d, q);
	if (pool < 0) {
		if (!qs->sites[b].shaped)
			shape_site(d, b, q->domain);
		return b;
	}
	uint32_t src = pick_source(d, pool);
	char name[600];
	snprintf(name, sizeof(name), "%s->%s", d->l->e->sources[src].name, qs->sites[b].name);
	uint32_t si = kumo_site_intern(qs, name);
	if (si == KUMO_NONE)
		return si;
	struct kumo_site *s = &qs->sites[si];
	if (!s->shaped) {
		struct kumo_site_host *h;
		if (copy_hosts(&qs->sites[b], &h) < 0)
			return KUMO_NONE;
		kumo_site_set_hosts(s, h, qs->sites[b].nhosts);
		s->source = src;
		s->base = b;
		shape_site(d, si, q->domain);
	}
	return si;
}

/* New hosts for base site b reach the source sites built on it. */
static void refresh_source_sites(struct kumo_delivery *d, uint32_t b)
{
	struct kumo_queues *qs = &d->l->queues;
	for (uint32_t i = 0; i < qs->nsites; i++) {
		struct kumo_site_host *h;
		if (i != b && qs->sites[i].base == b && copy_hosts(&qs->sites[b], &h) == 0)
			kumo_site_set_hosts(&qs->sites[i], h, qs->sites[b].nhosts);
	}
}

static void site_timer(struct kumo_delivery *d, uint32_t si, uint64_t wait_ms)
{
	struct kumo_site *s = &d->l->queues.sites[si];
	if (s->timer_armed)
		return;
	s->timer_armed = true;
	struct __kernel_timespec ts = {.tv_sec = (long long)(wait_ms / 1000),
				       .tv_nsec = (long long)(wait_ms % 1000) * 1000000};
	struct io_uring_sqe *sqe = kumo_loop_sqe(d->l);
	io_uring_prep_timeout(sqe, &ts, 0, 0);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_STIMER, 0, si));
	io_uring_submit(&d->l->ring); /* the timespec lives on this stack */
}

void kumo_delivery_timer_done(struct kumo_loop *l, uint64_t ud)
{
	struct kumo_delivery *d = l->dlv;
	uint32_t si = kumo_ud_slot(ud);
	if (!d || si >= l->queues.nsites)
		return;
	l->queues.sites[si].timer_armed = false;
	site_kick(d, si);
}

/* The site a queue's messages go to without DNS (smart host or route), or KUMO_NONE. */
static uint32_t fixed_route(struct kumo_delivery *d, const struct kumo_queue *q)
{
	const struct kumo_engine *e = d->l->e;
	for (size_t i = 0; d->route_sites && i < e->nroutes; i++)
		if (strcasecmp(e->routes[i].domain, q->domain) == 0)
			return d->route_sites[i];
	return d->smart_site;
}

/* ---- logging and outcomes -------------------------------------------------------- */

struct outcome {
	const char *type;       /* the log record type; NULL: from the code */
	int code;
	const char *enhanced;
	const char *text;
	const char *command;
};

static const char *record_type(const struct outcome *o)
{
	int code = o->code;
	return o->type                      ? o->type
	       : code >= 200 && code < 300 ? "Delivery"
	       : code >= 500               ? "Bounce"
					   : "TransientFailure";
}

static void log_outcome(struct kumo_delivery *d, uint32_t m, const struct kumo_envelope *env,
			const char *rcpt, const char *type, const struct outcome *o,
			const struct kumo_oconn *oc, size_t size)
{
	struct kumo_loop *l = d->l;
	const struct kumo_qmsg *msg = &l->queues.msgs[m];
	struct kumo_queue *q = &l->queues.queues[msg->queue];
	const char *site = q->site != KUMO_NONE ? l->queues.sites[q->site].name : "";
	const char *source = NULL, *pool_name = NULL;
	if (oc) {
		const struct kumo_site *os = &l->queues.sites[oc->site];
		site = l->queues.sites[os->base].name;
		source = os->source != KUMO_NONE ? l->e->sources[os->source].name : NULL;
	}
	int pool = queue_pool(d, q);
	if (pool >= 0)
		pool_name = l->e->pools[pool].name;
	struct kumo_log_fields f = {
		.type = type, .id = &msg->id, .sender = env ? env->sender : NULL,
		.recipient = rcpt, .queue = q->name, .size = size, .code = o->code,
		.enhanced = o->enhanced && *o->enhanced ? o->enhanced : NULL,
		.content = o->text, .command = o->command,
		.peer_addr = oc ? oc->peer_addr : "", .peer_name = oc ? oc->peer_name : "",
		.created_ms = kumo_id_ms(&msg->id), .meta = env ? env->meta : NULL,
		.nmeta = env ? env->nmeta : 0, .site = site, .num_attempts = msg->attempts + 1u,
		.delivery = true, .egress_source = source, .egress_pool = pool_name,
		.source_address = oc ? oc->local_addr : NULL};
	kumo_log_record(l, &f);
}

/* Builds a DSN for the recipients in idx (all with the same outcome o) and queues it. */
static void send_dsn(struct kumo_delivery *d, const struct kumo_envelope *env,
		     const size_t *idx, size_t n, const struct outcome *o, const char *status,
		     const char *remote, const uint8_t *data, size_t data_len)
{
	struct kumo_loop *l = d->l;
	if (!kumo_dsn_sender_ok(env->sender) || n == 0)
		return;
	struct kumo_dsn_rcpt *r = calloc(n, sizeof(*r));
	char (*finals)[300] = calloc(n, sizeof(*finals));
	char diag[600], remote_mta[300], token[64];
	if (!r || !finals)
		goto out;
	snprintf(diag, sizeof(diag), "smtp; %d %s%s%s", o->code, o->enhanced ? o->enhanced : "",
		 o->enhanced && *o->enhanced ? " " : "", o->text ? o->text : "");
	snprintf(remote_mta, sizeof(remote_mta), "dns; %s", remote ? remote : "");
	for (size_t i = 0; i < n; i++) {
		const struct kumo_env_rcpt *er = &env->rcpts[idx[i]];
		snprintf(finals[i], sizeof(finals[i]), "rfc822;%s", er->addr);
		r[i] = (struct kumo_dsn_rcpt){.final_rcpt = finals[i], .orcpt = er->orcpt,
					      .action = KUMO_DSN_ACTION_FAILED,
					      .status = status,
					      .remote_mta = remote && *remote ? remote_mta : NULL,
					      .diagnostic = diag,
					      .last_attempt_ms = (int64_t)l->now_ms};
	}
	char from[300];
	snprintf(from, sizeof(from), "MAILER-DAEMON@%s", l->e->hostname);
	snprintf(token, sizeof(token), "dsn.%llx.%u.%llu", (unsigned long long)l->now_ms,
		 l->index, (unsigned long long)++d->dsn_seq);
	struct kumo_dsn_report rep = {.hostname = l->e->hostname, .from = from,
				      .to = env->sender, .message_id = token,
				      .now_ms = (int64_t)l->now_ms, .envid = env->envid,
				      .arrival_ms = (int64_t)env->created_ms, .rcpts = r,
				      .nrcpt = n, .msg = data, .msg_len = data_len,
				      .ret = (enum kumo_dsn_ret)env->ret};
	d->dsn.len = 0;
	unsigned flags = 0;
	if (kumo_dsn_build(&rep, &d->dsn, &flags) < 0)
		goto out;
	struct kumo_env_rcpt to = {.addr = env->sender};
	struct kumo_envelope de = {.sender = "", .nrcpt = 1, .rcpts = &to,
				   .created_ms = l->now_ms, .due_ms = l->now_ms,
				   .smtputf8 = (flags & KUMO_DSN_OUT_SMTPUTF8) != 0,
				   .body = (flags & KUMO_DSN_OUT_8BITMIME) ? 2 : 0};
	kumo_id_next(&l->ids, l->now_ms, &de.id);
	struct iovec iov = {.iov_base = d->dsn.data, .iov_len = d->dsn.len};
	char qname[512];
	kumo_envelope_queue_name(&de, to.addr, qname, sizeof(qname));
	/* queued once durable (see the cookie kinds in loop.c) */
	struct kumo_put *p = aligned_alloc(16, (sizeof(*p) + 15) & ~(size_t)15);
	if (!p)
		goto out;
	p->id = de.id;
	p->queue = kumo_queue_intern(&l->queues, qname);
	if (p->queue == KUMO_NONE ||
	    kumo_loop_spool_message(l, &de, &iov, 1, (void *)((uintptr_t)p | 3), &p->loc) < 0)
		free(p);
out:
	free(r);
	free(finals);
}

static uint64_t backoff_ms(const struct kumo_delivery *d, unsigned attempts)
{
	uint64_t v = d->retry_ms;
	for (unsigned i = 1; i < attempts && v < d->max_retry_ms; i++)
		v *= 2;
	return v < d->max_retry_ms ? v : d->max_retry_ms;
}

static bool expired(const struct kumo_delivery *d, uint32_t m)
{
	return d->l->now_ms >= kumo_id_ms(&d->l->queues.msgs[m].id) + d->max_age_ms;
}

static size_t pending_count(const struct kumo_envelope *env, size_t **idx)
{
	size_t n = 0;
	*idx = malloc((env->nrcpt ? env->nrcpt : 1) * sizeof(**idx));
	for (size_t i = 0; *idx && i < env->nrcpt; i++)
		if (env->rcpts[i].state == KUMO_RCPT_PENDING)
			(*idx)[n++] = i;
	return n;
}

/* Applies o, an outcome without a session, to every pending recipient: each gets its log
 * record; a permanent failure (5xx) also ends them, and those whose NOTIFY asks for it
 * are reported to the sender in one DSN with the given status. */
static void apply_pending(struct kumo_delivery *d, uint32_t m, struct kumo_envelope *env,
			  const struct outcome *o, const char *status, const uint8_t *data,
			  size_t data_len)
{
	size_t *idx;
	size_t n = pending_count(env, &idx), k = 0;
	for (size_t i = 0; i < n; i++) {
		struct kumo_env_rcpt *r = &env->rcpts[idx[i]];
		log_outcome(d, m, env, r->addr, record_type(o), o, NULL, data_len);
		if (o->code >= 500) {
			r->state = KUMO_RCPT_DONE;
			if (kumo_dsn_should_notify(r->notify, KUMO_DSN_ACTION_FAILED))
				idx[k++] = idx[i];
		}
	}
	if (o->code >= 500)
		send_dsn(d, env, idx, k, o, status, NULL, data, data_len);
	free(idx);
}

/* Expiration: every pending recipient gets a record and a DSN; the message goes. */
static void expire_now(struct kumo_delivery *d, uint32_t m, struct kumo_envelope *env,
		       const uint8_t *data, size_t data_len)
{
	struct outcome o = {.type = "Expiration", .code = 551, .enhanced = "5.4.7",
			    .text = "Delivery time expired: message was queued too long"};
	apply_pending(d, m, env, &o, KUMO_DSN_STATUS_EXPIRED, data, data_len);
}

/* The active bounce of queue qi, or NULL. The match is computed once per snapshot. */
static const struct kumo_bnc *queue_bounce(struct kumo_delivery *d, uint32_t qi)
{
	struct kumo_loop *l = d->l;
	struct kumo_queue *q = &l->queues.queues[qi];
	if (!l->conf || !l->conf->nbounces)
		return NULL;
	if (q->bounce_gen != l->conf->gen) {
		struct kumo_queue_parts p;
		kumo_queue_parts(q->name, &p);
		q->bounce = kumo_conf_bounce(l->conf, &p);
		q->bounce_gen = l->conf->gen;
	}
	const struct kumo_bnc *b = q->bounce >= 0 ? &l->conf->bounces[q->bounce] : NULL;
	return b && b->expires_ms > l->now_ms ? b : NULL;
}

/* The outcome of bounce b; text (cap bytes) holds its response. */
static struct outcome bounce_outcome(const struct kumo_bnc *b, char *text, size_t cap)
{
	snprintf(text, cap, "bounced by rule: %s", b->reason ? b->reason : "");
	return (struct outcome){.type = "AdminBounce", .code = 550, .enhanced = "5.7.1",
				.text = text};
}

/* The end of an attempt: delete, expire, or persist the new state and reschedule. */
static void finish_message(struct kumo_delivery *d, uint32_t m, struct kumo_envelope *env,
			   const uint8_t *data, size_t data_len, bool attempted)
{
	struct kumo_loop *l = d->l;
	struct kumo_qmsg *msg = &l->queues.msgs[m];
	size_t *idx;
	size_t pending = pending_count(env, &idx);
	free(idx);
	const struct kumo_bnc *b;
	if (pending && (expired(d, m) || d->max_age_ms == 0)) {
		expire_now(d, m, env, data, data_len);
		pending = 0;
	} else if (pending && (b = queue_bounce(d, msg->queue))) {
		char text[1024];
		struct outcome o = bounce_outcome(b, text, sizeof(text));
		apply_pending(d, m, env, &o, o.enhanced, data, data_len);
		pending = 0;
	}
	if (!pending) {
		kumo_spool_delete(l->spool, &msg->id, &msg->loc, NULL);
		kumo_qmsg_release(&l->queues, m);
		return;
	}
	if (attempted && msg->attempts < 65535)
		msg->attempts++;
	uint64_t due = l->now_ms + backoff_ms(d, msg->attempts ? msg->attempts : 1);
	uint64_t deadline = kumo_id_ms(&msg->id) + d->max_age_ms;
	if (due > deadline)
		due = deadline; /* one last look at the expiry time */
	env->attempts = msg->attempts;
	env->due_ms = due;
	msg->due_s = (uint32_t)((due + 999) / 1000);
	size_t need = kumo_envelope_encode(env, (uint8_t *)l->scratch.data, l->scratch.cap);
	if (need > l->scratch.cap) {
		l->scratch.len = 0;
		if (kumo_buf_reserve(&l->scratch, need) == 0)
			kumo_envelope_encode(env, (uint8_t *)l->scratch.data, l->scratch.cap);
	}
	/* the message is written again with its new envelope (recipient states, attempts,
	 * due time): reads at its location then see them, and its old segment can go */
	struct iovec iov = {.iov_base = (void *)data, .iov_len = data_len};
	struct kumo_spool_loc loc;
	if (need <= l->scratch.cap &&
	    kumo_spool_relocate(l->spool, &msg->id, &msg->loc, (uint8_t *)l->scratch.data, need,
				&iov, 1, NULL, &loc) == 0)
		msg->loc = loc;
	kumo_wheel_insert(&l->queues, m);
}

/* Reads a message synchronously (failure paths without a connection) and applies o to
 * every pending recipient: a 5xx bounces them, a 4xx counts an attempt. */
static void fail_offline(struct kumo_delivery *d, uint32_t m, const struct outcome *o)
{
	struct kumo_loop *l = d->l;
	struct kumo_qmsg *msg = &l->queues.msgs[m];
	uint8_t *buf = malloc(msg->loc.length);
	const uint8_t *envb, *data;
	size_t env_len, data_len;
	struct kumo_envelope env;
	if (!buf || kumo_spool_read(l->spool, &msg->loc, buf, &envb, &env_len, &data,
				    &data_len) < 0 ||
	    kumo_envelope_decode(envb, env_len, &env) < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "queued message unreadable from the spool; "
						"dropped from the queue until restart");
		free(buf);
		kumo_qmsg_release(&l->queues, m);
		return;
	}
	apply_pending(d, m, &env, o, o->enhanced, data, data_len);
	finish_message(d, m, &env, data, data_len, true);
	kumo_envelope_release(&env);
	free(buf);
}

/* A temporary failure without a session (site unreachable, DNS trouble): each
 * recipient gets its TransientFailure record and the attempt count is persisted, which
 * needs the envelope: it is read back from the spool (a positional read, usually from
 * the page cache). */
static void defer_cheap(struct kumo_delivery *d, uint32_t m, const struct outcome *o)
{
	fail_offline(d, m, o);
}

/* ---- scheduling ------------------------------------------------------------------ */

int kumo_delivery_enqueue(struct kumo_loop *l, const struct kumo_put *p, uint64_t due_ms,
			  unsigned attempts)
{
	uint32_t m = kumo_qmsg_new(&l->queues, &p->id, &p->loc, p->queue, due_ms, attempts);
	if (m == KUMO_NONE)
		return -ENOMEM;
	struct kumo_delivery *d = l->dlv;
	if (!d || l->e->cfg.no_delivery) {
		l->queues.msgs[m].state = KUMO_Q_SCHEDULED;
		return 0;
	}
	/* a message of a bounced queue goes at once, whatever its due time */
	bool now = due_ms <= l->now_ms || queue_bounce(d, p->queue);
	if (now && !d->stopping && d->started)
		make_due(d, m);
	else
		kumo_wheel_insert(&l->queues, m);
	return 0;
}

static void ready_push(struct kumo_delivery *d, uint32_t site, uint32_t m)
{
	struct kumo_site *s = &d->l->queues.sites[site];
	d->l->queues.msgs[m].state = KUMO_Q_READY;
	kumo_list_push(&d->l->queues, &s->ready_head, &s->ready_tail, m);
	s->nready++;
}

static void perm_dns_failure(struct kumo_delivery *d, uint32_t m, const struct kumo_mx_result *r)
{
	struct outcome o = {.code = 550, .enhanced = "5.1.2", .text = r->error};
	if (r->status == KUMO_DNS_PERM_NULL_MX)
		o = (struct outcome){.code = 556, .enhanced = "5.1.10",
				     .text = "Recipient domain has a null MX (RFC 7505)"};
	fail_offline(d, m, &o);
}

/* Domain names equal but for case and a trailing dot. */
static bool same_domain(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	la -= la && a[la - 1] == '.';
	lb -= lb && b[lb - 1] == '.';
	return la == lb && strncasecmp(a, b, la) == 0;
}

static void mx_resolved(const struct kumo_mx_result *r, void *arg)
{
	struct kumo_loop *l = arg;
	struct kumo_delivery *d = l->dlv;
	uint32_t qi = kumo_queue_find(&l->queues, r->domain);
	/* every queue of this domain (several tenants/campaigns) was parked on it */
	for (uint32_t i = 0; i < l->queues.nqueues; i++) {
		struct kumo_queue *q = &l->queues.queues[i];
		if (!q->resolving || !same_domain(q->domain, r->domain))
			continue;
		q->resolving = false;
		uint32_t site = KUMO_NONE;
		struct kumo_site_host *hosts;
		if (r->status == KUMO_DNS_OK && hosts_from_mx(r, d->mx_port, &hosts) == 0) {
			site = kumo_site_intern(&l->queues, r->site);
			if (site != KUMO_NONE) {
				kumo_site_set_hosts(&l->queues.sites[site], hosts, r->nhosts);
				refresh_source_sites(d, site);
			}
			q = &l->queues.queues[i];
			q->site = site;
			q->site_expires_ms = l->now_ms + SITE_TTL_MS;
		}
		struct outcome temp = {.code = 451, .enhanced = "4.4.3", .text = r->error};
		uint32_t m, kick[8];
		size_t nkick = 0;
		while ((m = kumo_list_pop(&l->queues, &l->queues.queues[i].parked_head,
					  &l->queues.queues[i].parked_tail)) != KUMO_NONE) {
			uint32_t rs = site != KUMO_NONE ? ready_site(d, site, &l->queues.queues[i])
							 : KUMO_NONE;
			if (rs != KUMO_NONE) {
				ready_push(d, rs, m);
				bool seen = false;
				for (size_t k = 0; k < nkick; k++)
					seen |= kick[k] == rs;
				if (!seen && nkick < 8)
					kick[nkick++] = rs;
				else if (!seen)
					site_kick(d, rs);
			} else if (site != KUMO_NONE)
				defer_cheap(d, m, &temp);
			else if (r->status == KUMO_DNS_TEMP || r->status == KUMO_DNS_OK)
				defer_cheap(d, m, &temp);
			else
				perm_dns_failure(d, m, r);
		}
		for (size_t k = 0; k < nkick; k++)
			site_kick(d, kick[k]);
	}
	(void)qi;
}

/* The end of an active suspension of the queue's tenant, campaign or domain, or 0. */
static uint64_t queue_suspended(const struct kumo_delivery *d, const struct kumo_queue *q)
{
	const struct kumo_loop *l = d->l;
	struct kumo_queue_parts p;
	kumo_queue_parts(q->name, &p);
	uint64_t u = kumo_conf_suspended(l->conf, KUMO_SUSPEND_DOMAIN, p.domain, p.domain_len,
					 l->now_ms);
	if (!u && p.tenant_len)
		u = kumo_conf_suspended(l->conf, KUMO_SUSPEND_TENANT, p.tenant, p.tenant_len,
					l->now_ms);
	if (!u && p.campaign_len)
		u = kumo_conf_suspended(l->conf, KUMO_SUSPEND_CAMPAIGN, p.campaign,
					p.campaign_len, l->now_ms);
	return u;
}

/* Fails message m of a bounced queue without trying it (see kumo_engine_set_bounces). */
static void bounce_message(struct kumo_delivery *d, uint32_t m)
{
	char text[1024];
	const struct kumo_bnc *b = queue_bounce(d, d->l->queues.msgs[m].queue);
	struct outcome o = bounce_outcome(b, text, sizeof(text));
	fail_offline(d, m, &o);
}

static void make_due(struct kumo_delivery *d, uint32_t m)
{
	struct kumo_loop *l = d->l;
	struct kumo_qmsg *msg = &l->queues.msgs[m];
	if (queue_bounce(d, msg->queue)) {
		bounce_message(d, m);
		return;
	}
	struct kumo_queue *q = &l->queues.queues[msg->queue];
	uint64_t until = queue_suspended(d, q);
	if (until) {
		msg->due_s = (uint32_t)((until + 999) / 1000);
		kumo_wheel_insert(&l->queues, m);
		return;
	}
	uint32_t site = fixed_route(d, q);
	if (site == KUMO_NONE && q->site != KUMO_NONE && l->now_ms < q->site_expires_ms)
		site = q->site;
	if (site != KUMO_NONE)
		site = ready_site(d, site, q);
	if (site != KUMO_NONE && l->queues.sites[site].max_ready &&
	    l->queues.sites[site].nready >= l->queues.sites[site].max_ready) {
		/* the ready queue is full (max_ready): wait in the scheduled queue a while,
		 * without counting an attempt */
		msg->due_s = (uint32_t)(l->now_ms / 1000) + 10 + (uint32_t)(m % 20);
		kumo_wheel_insert(&l->queues, m);
		return;
	}
	if (site != KUMO_NONE) {
		ready_push(d, site, m);
		site_kick(d, site);
		return;
	}
	msg->state = KUMO_Q_PARKED;
	kumo_list_push(&l->queues, &q->parked_head, &q->parked_tail, m);
	if (q->resolving)
		return;
	q->resolving = true;
	char domain[256];
	snprintf(domain, sizeof(domain), "%s", q->domain);
	int err = kumo_dns_resolve_mx(d->dns, domain, l->now_ms, mx_resolved, l);
	if (err < 0) {
		/* no lookup started: answer the parked messages as DNS would have */
		struct kumo_mx_result r = {
			.domain = domain,
			.status = err == -EINVAL ? KUMO_DNS_PERM_NXDOMAIN : KUMO_DNS_TEMP,
			.error = err == -EINVAL ? "Invalid recipient domain" : "Out of memory"};
		mx_resolved(&r, l);
	}
}

/* ---- provider budgets -------------------------------------------------------------- */

/* A provider's Redis key part: "<what>:<provider>:<egress source>". */
static void provider_key(const struct kumo_delivery *d, const struct kumo_provider_budget *b,
			 const char *what, char *buf, size_t cap)
{
	const char *src = b->source != KUMO_NONE ? d->l->e->sources[b->source].name : "";
	snprintf(buf, cap, "%s:%s:%s", what, b->name, src);
}


/* How long the site's next transaction must wait for its own and its provider's rate. */
static uint64_t message_wait(struct kumo_delivery *d, const struct kumo_site *s,
			     double now)
{
	uint64_t wait = rate_wait(d, s->rate_slot, KUMO_RATE_MESSAGES, s->msg_T, s->msg_tau,
				  s->msg_tat, now);
	if (s->provider != KUMO_NONE) {
		const struct kumo_provider_budget *b = &d->providers.v[s->provider];
		uint64_t w =
			rate_wait(d, b->rate_slot, KUMO_RATE_MESSAGES, b->T, b->tau, b->tat, now);
		wait = w > wait ? w : wait;
	}
	return wait;
}

/* True when oc holds a connection that another site of its provider, or another loop,
 * waits for: it should hand it over rather than keep or idle on it. */
static bool provider_wanted(const struct kumo_delivery *d, const struct kumo_oconn *oc)
{
	unsigned me = d->l->index;
	if ((oc->site_slot && kumo_node_slot_contended(oc->site_slot, me)) ||
	    (oc->prov_slot && kumo_node_slot_contended(oc->prov_slot, me)))
		return true;
	if (oc->provider == KUMO_NONE)
		return false;
	const struct kumo_provider_budget *b = &d->providers.v[oc->provider];
	return kumo_provider_full(b) && kumo_site_fifo_has_other(&b->waiting, oc->site);
}

/* Site si found its provider's connections all taken: it waits for the next one freed,
 * and an idle connection of another site of the provider is closed to free one. */
static void provider_wait(struct kumo_delivery *d, uint32_t si)
{
	uint32_t pi = d->l->queues.sites[si].provider;
	if (!kumo_site_fifo_push(&d->providers.v[pi].waiting, si))
		return; /* it was waiting already */
	for (uint32_t i = 0; i < d->noc; i++) {
		struct kumo_oconn *oc = &d->oc[i];
		if (oc->in_use && !oc->dead && oc->state == OC_IDLE && oc->provider == pi &&
		    oc->site != si) {
			site_remove_idle(d, oc);
			oc->state = OC_QUITTING;
			kumo_smtp_client_quit(oc->sm);
			oc_pump(d, oc);
			return;
		}
	}
}

/* The sites waiting for a connection of provider budget pi get their turn, oldest first,
 * while it has room (each refused one queues again). */
static void provider_kick_waiters(struct kumo_delivery *d, uint32_t pi)
{
	size_t n = d->providers.v[pi].waiting.n;
	uint32_t si;
	while (n-- && !kumo_provider_full(&d->providers.v[pi]) &&
	       (si = kumo_site_fifo_pop(&d->providers.v[pi].waiting)) != KUMO_NONE)
		site_kick(d, si);
}

/* A connection of provider budget pi closed. */
static void provider_released(struct kumo_delivery *d, uint32_t pi)
{
	struct kumo_provider_budget *b = &d->providers.v[pi];
	if (b->nconns)
		b->nconns--;
	provider_kick_waiters(d, pi);
}

/* Takes the node-wide counts a new connection of site si needs (its own shaped limit and
 * its provider's); false, holding none, when one is spent: the site then waits. */
static bool take_node_slots(struct kumo_delivery *d, uint32_t si)
{
	struct kumo_engine *e = d->l->e;
	const struct kumo_site *s = &d->l->queues.sites[si];
	struct kumo_provider_budget *b =
		s->provider != KUMO_NONE ? &d->providers.v[s->provider] : NULL;
	if (b && kumo_provider_full(b)) {
		provider_wait(d, si);
		return false;
	}
	if (s->node_slot &&
	    !kumo_node_slot_take(&e->node_limits, s->node_slot, s->conn_limit, d->l->index))
		return false;
	if (b && ((b->node_slot && !kumo_node_slot_take(&e->node_limits, b->node_slot,
							  b->conn_limit, d->l->index)) ||
		  !provider_lease_in_hand(d, s->provider))) {
		/* the node slot, or the cluster's lease (asked for now), is not there */
		provider_wait(d, si);
		if (s->node_slot)
			kumo_node_slot_release(e, s->node_slot);
		return false;
	}
	return true;
}

void kumo_delivery_slot_freed(struct kumo_loop *l, struct kumo_node_slot *slot)
{
	struct kumo_delivery *d = l->dlv;
	uint32_t local = slot->local[l->index];
	if (!d || local == KUMO_NONE)
		return;
	if (slot->kind == KUMO_SLOT_SITE && local < l->queues.nsites)
		site_kick(d, local);
	else if (slot->kind == KUMO_SLOT_PROVIDER && local < d->providers.n)
		provider_kick_waiters(d, local);
}

/* ---- egress source health ------------------------------------------------------- */

/* Kicks every ready queue sending through source src (or, with src KUMO_NONE, every one
 * built on base site b whose source is healthy) that has messages. */
static void kick_source_sites(struct kumo_delivery *d, uint32_t src, uint32_t b)
{
	struct kumo_queues *qs = &d->l->queues;
	for (uint32_t i = 0; i < qs->nsites; i++) {
		const struct kumo_site *s = &qs->sites[i];
		bool match = src != KUMO_NONE ? s->source == src
					      : s->base == b && s->source != KUMO_NONE &&
							!source_unhealthy(d, s->source);
		if (match && s->nready)
			site_kick(d, i);
	}
}

/* The source's bind address or proxy failed: new messages go to the pool's other
 * sources, the ready ones move there, and the source is probed again after a back-off
 * (5 s, doubling up to 5 min). Nothing is deferred or bounced for it. */
static void source_failed(struct kumo_delivery *d, uint32_t src, const char *why)
{
	struct source_health *h = &d->health[src];
	uint64_t now = d->l->now_ms;
	if (h->retry_ms && now < h->next_try_ms)
		return; /* already known */
	bool was_healthy = !h->retry_ms;
	h->retry_ms = h->retry_ms ? h->retry_ms * 2 : SOURCE_RETRY_MS;
	if (h->retry_ms > SOURCE_MAX_RETRY_MS)
		h->retry_ms = SOURCE_MAX_RETRY_MS;
	h->next_try_ms = now + h->retry_ms;
	kumo_elog(d->l->e, was_healthy ? KUMO_LOG_WARN : KUMO_LOG_INFO,
		  "egress source '%s' is unhealthy: %s; its messages go to other sources of "
		  "their pool or wait; next try in %llu s",
		  d->l->e->sources[src].name, why, (unsigned long long)(h->retry_ms / 1000));
	kick_source_sites(d, src, KUMO_NONE);
}

static void source_ok(struct kumo_delivery *d, uint32_t src)
{
	if (src == KUMO_NONE || !d->health[src].retry_ms)
		return;
	d->health[src] = (struct source_health){0};
	kumo_elog(d->l->e, KUMO_LOG_INFO, "egress source '%s' is healthy again",
		  d->l->e->sources[src].name);
	kick_source_sites(d, src, KUMO_NONE);
}

/* Moves the ready messages of site si (whose source is unhealthy) to a healthy source of
 * their queue's pool; those without one stay. A message past its age limit expires. */
static void reroute_ready(struct kumo_delivery *d, uint32_t si)
{
	struct kumo_queues *qs = &d->l->queues;
	uint64_t n = qs->sites[si].nready;
	bool moved = false;
	char why[300];
	snprintf(why, sizeof(why), "Egress source %s is unhealthy",
		 d->l->e->sources[qs->sites[si].source].name);
	struct outcome o = {.code = 451, .enhanced = "4.4.1", .text = why, .command = "connect"};
	for (; n; n--) {
		struct kumo_site *s = &qs->sites[si];
		uint32_t m = kumo_list_pop(qs, &s->ready_head, &s->ready_tail);
		if (m == KUMO_NONE)
			break;
		s->nready--;
		if (expired(d, m)) {
			defer_cheap(d, m, &o); /* records the attempt, then expires it */
			continue;
		}
		uint32_t to = ready_site(d, qs->sites[si].base, &qs->queues[qs->msgs[m].queue]);
		if (to == KUMO_NONE || source_unhealthy(d, qs->sites[to].source))
			to = si;
		moved |= to != si;
		ready_push(d, to, m);
	}
	if (moved)
		kick_source_sites(d, KUMO_NONE, qs->sites[si].base);
}

/* For a site whose source is unhealthy: true when one connection may probe the source
 * now; otherwise its messages moved or wait for the next try (a timer is set). */
static bool probe_source(struct kumo_delivery *d, uint32_t si)
{
	reroute_ready(d, si);
	struct kumo_site *s = &d->l->queues.sites[si];
	const struct source_health *h = &d->health[s->source];
	if (!s->nready)
		return false;
	if (d->l->now_ms < h->next_try_ms) {
		site_timer(d, si, h->next_try_ms - d->l->now_ms);
		return false;
	}
	return s->nconns == 0;
}

/* ---- outbound connections -------------------------------------------------------- */

static uint64_t oc_ud(const struct kumo_delivery *d, const struct kumo_oconn *oc,
		      enum kumo_op op)
{
	return kumo_ud(op, oc->gen, (uint32_t)(oc - d->oc));
}

static struct kumo_oconn *oc_alloc(struct kumo_delivery *d)
{
	if (d->free_head == KUMO_NONE) {
		uint32_t n = d->noc ? d->noc * 2 : 64;
		struct kumo_oconn *a = realloc(d->oc, n * sizeof(*a));
		if (!a)
			return NULL;
		memset(a + d->noc, 0, (n - d->noc) * sizeof(*a));
		for (uint32_t i = d->noc; i < n; i++) {
			a[i].next_free = i + 1 < n ? i + 1 : KUMO_NONE;
			a[i].fd = -1;
		}
		d->oc = a;
		d->free_head = d->noc;
		d->noc = n;
	}
	struct kumo_oconn *oc = &d->oc[d->free_head];
	d->free_head = oc->next_free;
	oc->in_use = true;
	oc->dead = oc->established = oc->eof = false;
	oc->recv_busy = oc->send_busy = oc->read_busy = false;
	oc->msg = KUMO_NONE;
	oc->provider = KUMO_NONE;
	oc->site_slot = oc->prov_slot = NULL;
	oc->deliveries = 0;
	oc->rpos = oc->rlen = oc->sent = 0;
	oc->sbuf.len = 0;
	oc->host = oc->addr = 0;
	oc->peer_name[0] = oc->peer_addr[0] = 0;
	d->live++;
	return oc;
}

static void oc_maybe_release(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	if (!oc->dead || oc->inflight)
		return;
	kumo_smtp_client_free(oc->sm);
	oc->sm = NULL;
	if (oc->env_valid)
		kumo_envelope_release(&oc->env);
	oc->env_valid = false;
	oc->in_use = false;
	oc->dead = false;
	oc->next_free = d->free_head;
	d->free_head = (uint32_t)(oc - d->oc);
}

static void site_remove_idle(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_site *s = &d->l->queues.sites[oc->site];
	uint32_t me = (uint32_t)(oc - d->oc), *p = &s->idle_head;
	while (*p != KUMO_NONE && *p != me)
		p = &d->oc[*p].idle_next;
	if (*p == me)
		*p = oc->idle_next;
}

static void oc_close(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	if (oc->dead)
		return;
	struct kumo_site *s = &d->l->queues.sites[oc->site];
	if (oc->state == OC_IDLE)
		site_remove_idle(d, oc);
	if (!oc->established)
		s->nconnecting--;
	s->nconns--;
	if (oc->lease[0] && d->throttle) {
		char name[600];
		lease_name(s, name, sizeof(name));
		kumo_throttle_lease_release(d->throttle, name, oc->lease);
		oc->lease[0] = 0;
	}
	oc->dead = true;
	oc->gen++;
	if (oc->fd >= 0) {
		shutdown(oc->fd, SHUT_RDWR);
		close(oc->fd);
	}
	oc->fd = -1;
	d->live--;
	uint32_t site = oc->site, provider = oc->provider;
	if (oc->prov_lease[0] && d->throttle && provider != KUMO_NONE) {
		char name[600];
		provider_key(d, &d->providers.v[provider], "provider_connection_limit", name,
			     sizeof(name));
		kumo_throttle_lease_release(d->throttle, name, oc->prov_lease);
	}
	oc->prov_lease[0] = 0;
	oc->provider = KUMO_NONE;
	if (oc->site_slot)
		kumo_node_slot_release(d->l->e, oc->site_slot);
	if (oc->prov_slot)
		kumo_node_slot_release(d->l->e, oc->prov_slot);
	oc->site_slot = oc->prov_slot = NULL;
	oc_maybe_release(d, oc);
	if (provider != KUMO_NONE)
		provider_released(d, provider);
	site_kick(d, site);
}

static void peer_strings(struct kumo_oconn *oc, const struct kumo_site_host *h,
			 const struct sockaddr_storage *ss)
{
	snprintf(oc->peer_name, sizeof(oc->peer_name), "%s", h->name ? h->name : "");
	const void *a = ss->ss_family == AF_INET
				? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
				: (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
	inet_ntop(ss->ss_family, a, oc->peer_addr, sizeof(oc->peer_addr));
}

/* The next address to try from (host, addr) on, or false when none is left. */
static bool next_address(const struct kumo_site *s, unsigned *host, unsigned *addr)
{
	while (*host < s->nhosts) {
		if (*addr < s->hosts[*host].naddrs)
			return true;
		(*host)++;
		*addr = 0;
	}
	return false;
}

static int oc_connect(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_site *s = &d->l->queues.sites[oc->site];
	if (!next_address(s, &oc->host, &oc->addr))
		return -EHOSTUNREACH;
	const struct sockaddr_storage *ss = &s->hosts[oc->host].addrs[oc->addr];
	peer_strings(oc, &s->hosts[oc->host], ss);
	const struct kumo_source *px =
		s->source != KUMO_NONE ? &d->l->e->sources[s->source] : NULL;
	if (px && px->socks5.ss_family)
		ss = &px->socks5; /* the proxy connects to the host for us */
	else if (px && px->ha.ss_family)
		ss = &px->ha;
	else
		px = NULL;
	oc->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (oc->fd < 0)
		return -errno;
	int one = 1; /* commands and data leave in whole writes: no Nagle delay */
	setsockopt(oc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (s->source != KUMO_NONE && !px) {
		const struct kumo_source *src = &d->l->e->sources[s->source];
		socklen_t len = src->addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
								: sizeof(struct sockaddr_in);
		if (src->addr.ss_family && src->addr.ss_family == ss->ss_family &&
		    bind(oc->fd, (const struct sockaddr *)&src->addr, len) < 0) {
			int err = -errno;
			close(oc->fd);
			oc->fd = -1;
			return err;
		}
	}
	oc->since_ms = d->l->now_ms;
	oc->state = OC_CONNECTING;
	struct io_uring_sqe *sqe = kumo_loop_sqe(d->l);
	io_uring_prep_connect(sqe, oc->fd, (const struct sockaddr *)ss,
			      ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
						       : sizeof(struct sockaddr_in6));
	io_uring_sqe_set_data64(sqe, oc_ud(d, oc, KUMO_OP_OCONNECT));
	oc->inflight++;
	return 0;
}

/* Every address of the site failed before a session was up: the site is unreachable,
 * so its ready messages are deferred rather than tried one by one. */
static void site_unreachable(struct kumo_delivery *d, uint32_t site, const struct outcome *o)
{
	struct kumo_site *s = &d->l->queues.sites[site];
	if (s->nconns - s->nconnecting > 0)
		return; /* another connection works: keep feeding it */
	uint32_t m;
	while ((m = kumo_list_pop(&d->l->queues, &s->ready_head, &s->ready_tail)) != KUMO_NONE) {
		s->nready--;
		defer_cheap(d, m, o);
	}
}

static void oc_open(struct kumo_delivery *d, uint32_t site)
{
	struct kumo_oconn *oc = oc_alloc(d);
	if (!oc)
		return;
	struct kumo_site *s = &d->l->queues.sites[site];
	oc->site = site;
	oc->state = OC_CONNECTING;
	snprintf(oc->lease, sizeof(oc->lease), "%s", s->lease_ready);
	s->lease_ready[0] = 0;
	oc->provider = s->provider;
	oc->site_slot = s->node_slot;
	oc->prov_slot = NULL;
	oc->prov_lease[0] = 0;
	if (oc->provider != KUMO_NONE) {
		struct kumo_provider_budget *b = &d->providers.v[oc->provider];
		b->nconns++;
		oc->prov_slot = b->node_slot;
		snprintf(oc->prov_lease, sizeof(oc->prov_lease), "%s", b->lease_ready);
		b->lease_ready[0] = 0;
	}
	oc->lease_renewed_ms = d->l->now_ms;
	s->nconns++;
	s->nconnecting++;
	int err = oc_connect(d, oc);
	if (err == -EADDRNOTAVAIL || err == -EADDRINUSE) {
		char why[160]; /* its bind address is gone */
		snprintf(why, sizeof(why), "bind: %s", strerror(-err));
		source_failed(d, s->source, why);
		oc_close(d, oc);
	} else if (err < 0) {
		struct outcome o = {.code = 451, .enhanced = "4.4.1",
				    .text = "No address to connect to", .command = "connect"};
		oc->sm = NULL;
		site_unreachable(d, site, &o);
		oc_close(d, oc);
	}
}

/* The argument of a Redis answer: this loop and the site or provider it is for. */
static void **answer_arg(struct kumo_delivery *d, uint32_t index)
{
	void **arg = malloc(2 * sizeof(void *));
	if (arg) {
		arg[0] = d->l;
		arg[1] = (void *)(uintptr_t)index;
	}
	return arg;
}

/* Frees an answer_arg: the loop's delivery (NULL when it has none) and the index. */
static struct kumo_delivery *answer_take(void *arg, uint32_t *index)
{
	struct kumo_loop *l = ((void **)arg)[0];
	*index = (uint32_t)(uintptr_t)((void **)arg)[1];
	free(arg);
	return l->dlv;
}

/* Asks Redis for a connection lease of name (limit at once); false when the request went
 * out (cb answers), true when none could be made: the caller goes on (local fallback). */
static bool ask_lease(struct kumo_delivery *d, const char *name, uint64_t limit,
		      kumo_throttle_lease_fn cb, uint32_t index, bool *pending)
{
	void **arg = answer_arg(d, index);
	if (!arg)
		return true;
	*pending = true;
	if (kumo_throttle_lease_acquire(d->throttle, name, limit, LEASE_TTL_MS, d->l->now_ms,
					cb, arg) < 0) {
		*pending = false;
		free(arg);
		return true;
	}
	return false;
}

/* Asks Redis for a GCRA token of name, as ask_lease does for a lease. */
static bool ask_token(struct kumo_delivery *d, const char *name, uint64_t count,
		      uint64_t period_ms, uint64_t burst, kumo_throttle_gcra_fn cb,
		      uint32_t index, bool *pending)
{
	void **arg = answer_arg(d, index);
	if (!arg)
		return true;
	*pending = true;
	if (kumo_throttle_gcra(d->throttle, name, count, period_ms, burst, d->l->now_ms, cb,
			       arg) < 0) {
		*pending = false;
		free(arg);
		return true;
	}
	return false;
}

static void lease_answer(void *arg, bool granted, const char *lease_id)
{
	uint32_t si;
	struct kumo_delivery *d = answer_take(arg, &si);
	if (!d || si >= d->l->queues.nsites)
		return;
	struct kumo_site *s = &d->l->queues.sites[si];
	s->lease_pending = false;
	if (granted && lease_id) {
		snprintf(s->lease_ready, sizeof(s->lease_ready), "%s", lease_id);
		site_kick(d, si);
	} else if (s->nready) {
		site_timer(d, si, 1000); /* every lease taken: look again in a second */
	}
}

/* For a site whose connection limit is shared through Redis: true when a lease is in
 * hand for the next connection; otherwise one is asked for and the caller waits. */
static bool lease_in_hand(struct kumo_delivery *d, uint32_t si)
{
	struct kumo_site *s = &d->l->queues.sites[si];
	if (!s->shared_conn_limit || s->lease_ready[0])
		return true;
	if (s->lease_pending)
		return false;
	char name[600];
	lease_name(s, name, sizeof(name));
	return ask_lease(d, name, s->shared_conn_limit, lease_answer, si, &s->lease_pending);
}

static void provider_lease_answer(void *arg, bool granted, const char *lease_id)
{
	uint32_t pi;
	struct kumo_delivery *d = answer_take(arg, &pi);
	if (!d || pi >= d->providers.n)
		return;
	struct kumo_provider_budget *b = &d->providers.v[pi];
	b->lease_pending = false;
	if (granted && lease_id) {
		snprintf(b->lease_ready, sizeof(b->lease_ready), "%s", lease_id);
		provider_kick_waiters(d, pi);
		return;
	}
	uint32_t si = kumo_site_fifo_pop(&b->waiting); /* every lease taken: again in a second */
	if (si != KUMO_NONE)
		site_timer(d, si, 1000);
}

/* For a provider whose connection limit is shared through Redis: true when a lease is in
 * hand for the next connection; otherwise one is asked for and the caller waits. */
static bool provider_lease_in_hand(struct kumo_delivery *d, uint32_t pi)
{
	struct kumo_provider_budget *b = &d->providers.v[pi];
	if (!b->shared_conn_limit || b->lease_ready[0])
		return true;
	if (b->lease_pending)
		return false;
	char name[600];
	provider_key(d, b, "provider_connection_limit", name, sizeof(name));
	return ask_lease(d, name, b->shared_conn_limit, provider_lease_answer, pi,
			 &b->lease_pending);
}

static void site_kick(struct kumo_delivery *d, uint32_t site)
{
	struct kumo_site *s = &d->l->queues.sites[site];
	double now = (double)d->l->now_ms;
	uint64_t until = kumo_conf_suspended(d->l->conf, KUMO_SUSPEND_SITE, s->name,
					     strlen(s->name), d->l->now_ms);
	if (until) {
		if (s->nready)
			site_timer(d, site, until - d->l->now_ms);
		return;
	}
	unsigned limit = s->conn_limit;
	if (source_unhealthy(d, s->source)) {
		if (!probe_source(d, site))
			return;
		limit = 1; /* one connection finds out whether the source works again */
		s = &d->l->queues.sites[site];
	}
	while (s->nready && !d->stopping) {
		uint64_t wait = message_wait(d, s, now);
		if (wait) {
			site_timer(d, site, wait);
			break;
		}
		if (s->idle_head != KUMO_NONE && (!shared_token(d, site) || !provider_token(d, site)))
			break; /* the token's answer kicks the site again */
		s = &d->l->queues.sites[site];
		if (s->idle_head != KUMO_NONE) {
			struct kumo_oconn *oc = &d->oc[s->idle_head];
			s->idle_head = oc->idle_next;
			oc->state = OC_SESSION;
			oc_take(d, oc);
			s = &d->l->queues.sites[site];
			continue;
		}
		if (s->nconns >= limit || s->nconnecting >= s->nready)
			break;
		if ((wait = rate_wait(d, s->rate_slot, KUMO_RATE_CONNECTIONS, s->conn_T, s->conn_tau,
				      s->conn_tat, now))) {
			site_timer(d, site, wait);
			break;
		}
		if (!lease_in_hand(d, site))
			break; /* the lease's answer kicks the site again */
		if (!take_node_slots(d, site))
			break; /* a connection closing, here or on another loop, kicks the site */
		s = &d->l->queues.sites[site];
		rate_take(d, s->rate_slot, KUMO_RATE_CONNECTIONS, s->conn_T, &s->conn_tat, now);
		oc_open(d, site);
		s = &d->l->queues.sites[site];
		if (source_unhealthy(d, s->source))
			break; /* it failed at once: the source's timer kicks the site */
	}
}

static void post_recv(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	if (!oc->rbuf && !(oc->rbuf = malloc(KUMO_RBUF_SIZE)))
		return;
	struct io_uring_sqe *sqe = kumo_loop_sqe(d->l);
	io_uring_prep_recv(sqe, oc->fd, oc->rbuf, KUMO_RBUF_SIZE, 0);
	io_uring_sqe_set_data64(sqe, oc_ud(d, oc, KUMO_OP_ORECV));
	oc->recv_busy = true;
	oc->inflight++;
}

static void post_send(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(d->l);
	io_uring_prep_send(sqe, oc->fd, oc->sbuf.data + oc->sent, oc->sbuf.len - oc->sent,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, oc_ud(d, oc, KUMO_OP_OSEND));
	oc->send_busy = true;
	oc->inflight++;
}

static void token_answer(void *arg, bool allowed, uint64_t wait_ms)
{
	uint32_t si;
	struct kumo_delivery *d = answer_take(arg, &si);
	if (!d || si >= d->l->queues.nsites)
		return;
	struct kumo_site *s = &d->l->queues.sites[si];
	s->token_pending = false;
	if (allowed) {
		s->token_ready = true;
		site_kick(d, si);
	} else {
		site_timer(d, si, wait_ms);
	}
}

/* For a site whose rate is shared through Redis: true when a message may go now (a
 * token was granted); otherwise a token is asked for and the caller waits. */
static bool shared_token(struct kumo_delivery *d, uint32_t si)
{
	struct kumo_site *s = &d->l->queues.sites[si];
	if (!s->shared_count)
		return true;
	if (s->token_ready)
		return true;
	if (s->token_pending)
		return false;
	char name[600];
	snprintf(name, sizeof(name), "max_message_rate:%s", s->name);
	return ask_token(d, name, s->shared_count, s->shared_period_ms, s->shared_burst,
			 token_answer, si, &s->token_pending);
}

static void provider_token_answer(void *arg, bool allowed, uint64_t wait_ms)
{
	uint32_t pi;
	struct kumo_delivery *d = answer_take(arg, &pi);
	if (!d || pi >= d->providers.n)
		return;
	struct kumo_provider_budget *b = &d->providers.v[pi];
	b->token_pending = false;
	b->token_ready = allowed;
	/* every site that waited looks again: the first takes the token, the next asks anew */
	for (size_t n = b->token_waiting.n; n; n--) {
		uint32_t si = kumo_site_fifo_pop(&d->providers.v[pi].token_waiting);
		if (si == KUMO_NONE || si >= d->l->queues.nsites)
			continue;
		if (allowed)
			site_kick(d, si);
		else
			site_timer(d, si, wait_ms);
	}
}

/* For a site whose provider's rate is shared through Redis: true when a message may go
 * now; otherwise a token is asked for and the site waits for the answer. */
static bool provider_token(struct kumo_delivery *d, uint32_t si)
{
	uint32_t pi = d->l->queues.sites[si].provider;
	struct kumo_provider_budget *b = pi != KUMO_NONE ? &d->providers.v[pi] : NULL;
	if (!b || !b->shared_count || b->token_ready)
		return true;
	kumo_site_fifo_push(&b->token_waiting, si);
	if (b->token_pending)
		return false;
	char name[600];
	provider_key(d, b, "provider_max_message_rate", name, sizeof(name));
	return ask_token(d, name, b->shared_count, b->shared_period_ms, b->shared_burst,
			 provider_token_answer, pi, &b->token_pending);
}

/* Takes the next ready message of the site and reads it; idles when there is none. */
static void oc_take(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_loop *l = d->l;
	struct kumo_site *s = &l->queues.sites[oc->site];
	double now = (double)l->now_ms;
	uint64_t wait = message_wait(d, s, now);
	uint64_t until = kumo_conf_suspended(l->conf, KUMO_SUSPEND_SITE, s->name,
					     strlen(s->name), l->now_ms);
	if (until)
		wait = until - l->now_ms;
	bool token = !wait && s->nready && !d->stopping && shared_token(d, oc->site) &&
		     provider_token(d, oc->site);
	s = &l->queues.sites[oc->site];
	if (!wait && s->nready && !token)
		wait = UINT64_MAX; /* a token is on its way: idle until it comes */
	if (wait && wait != UINT64_MAX && s->nready)
		site_timer(d, oc->site, wait);
	uint32_t m = d->stopping || wait ? KUMO_NONE
					 : kumo_list_pop(&l->queues, &s->ready_head, &s->ready_tail);
	if (m != KUMO_NONE) {
		rate_take(d, s->rate_slot, KUMO_RATE_MESSAGES, s->msg_T, &s->msg_tat, now);
		if (s->provider != KUMO_NONE) {
			struct kumo_provider_budget *b = &d->providers.v[s->provider];
			rate_take(d, b->rate_slot, KUMO_RATE_MESSAGES, b->T, &b->tat, now);
			b->token_ready = false;
		}
		s->token_ready = false;
	}
	if (m == KUMO_NONE && !s->nready && oc->sm &&
	    (oc->lease[0] || oc->prov_lease[0] || provider_wanted(d, oc))) {
		/* nothing to send: give the cluster-wide lease, or the provider connection
		 * another site waits for, back rather than idle on it */
		oc->state = OC_QUITTING;
		kumo_smtp_client_quit(oc->sm);
		return;
	}
	if (m == KUMO_NONE) {
		oc->state = OC_IDLE;
		oc->since_ms = l->now_ms;
		oc->idle_next = s->idle_head;
		s->idle_head = (uint32_t)(oc - d->oc);
		return;
	}
	s->nready--;
	struct kumo_qmsg *msg = &l->queues.msgs[m];
	msg->state = KUMO_Q_INFLIGHT;
	oc->msg = m;
	if (msg->loc.length > oc->mcap) {
		uint8_t *b = realloc(oc->mbuf, msg->loc.length);
		if (!b)
			goto out_defer;
		oc->mbuf = b;
		oc->mcap = msg->loc.length;
	}
	int fd = kumo_spool_fd(l->spool, msg->loc.segment);
	if (fd < 0)
		goto out_defer;
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_read(sqe, fd, oc->mbuf, msg->loc.length, msg->loc.offset);
	io_uring_sqe_set_data64(sqe, oc_ud(d, oc, KUMO_OP_OREAD));
	oc->read_busy = true;
	oc->inflight++;
	oc->state = OC_LOADING;
	return;
out_defer:;
	struct outcome o = {.code = 451, .enhanced = "4.3.0", .text = "Local read error"};
	oc->msg = KUMO_NONE;
	defer_cheap(d, m, &o);
	oc_take(d, oc);
}

static int grow_batch(struct kumo_oconn *oc, size_t n)
{
	if (n <= oc->capbatch)
		return 0;
	size_t *b = realloc(oc->batch, n * sizeof(*b));
	if (b)
		oc->batch = b;
	struct kumo_smtp_client_rcpt *r = realloc(oc->crcpts, n * sizeof(*r));
	if (r)
		oc->crcpts = r;
	if (!b || !r)
		return -ENOMEM;
	oc->capbatch = n;
	return 0;
}

/* Sends the next batch of pending recipients of the loaded message; false when none. */
static bool send_batch(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	const struct kumo_envelope *env = &oc->env;
	if (grow_batch(oc, d->max_batch) < 0)
		return false;
	oc->nbatch = 0;
	while (oc->next_rcpt < env->nrcpt && oc->nbatch < d->max_batch) {
		size_t i = oc->next_rcpt++;
		if (env->rcpts[i].state != KUMO_RCPT_PENDING)
			continue;
		oc->batch[oc->nbatch] = i;
		oc->crcpts[oc->nbatch++] = (struct kumo_smtp_client_rcpt){
			.addr = env->rcpts[i].addr, .notify = env->rcpts[i].notify,
			.orcpt = env->rcpts[i].orcpt};
	}
	if (!oc->nbatch)
		return false;
	struct kumo_smtp_client_txn t = {
		.sender = env->sender, .rcpts = oc->crcpts, .nrcpt = oc->nbatch,
		.ret = (enum kumo_dsn_ret)env->ret, .envid = env->envid,
		.body_8bit = env->body == KUMO_SMTP_BODY_8BITMIME, .smtputf8 = env->smtputf8,
		.data = oc->data, .data_len = oc->data_len};
	oc->txn_open = kumo_smtp_client_send(oc->sm, &t) == 0;
	return oc->txn_open;
}

static void message_loaded(struct kumo_delivery *d, struct kumo_oconn *oc, int res)
{
	struct kumo_loop *l = d->l;
	uint32_t m = oc->msg;
	struct kumo_qmsg *msg = &l->queues.msgs[m];
	const uint8_t *envb;
	size_t env_len;
	oc->state = OC_SESSION;
	if (oc->env_valid)
		kumo_envelope_release(&oc->env);
	oc->env_valid = false;
	if (res != (int)msg->loc.length ||
	    kumo_spool_parse(&msg->loc, oc->mbuf, &envb, &env_len, &oc->data, &oc->data_len) <
		    0 ||
	    kumo_envelope_decode(envb, env_len, &oc->env) < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "queued message unreadable from the spool; "
						"dropped from the queue until restart");
		kumo_qmsg_release(&l->queues, m);
		oc->msg = KUMO_NONE;
		oc_take(d, oc);
		return;
	}
	oc->env.id = msg->id;
	oc->env_valid = true;
	oc->next_rcpt = 0;
	oc->any_temp = false;
	if (expired(d, m) || queue_bounce(d, msg->queue) || !send_batch(d, oc)) {
		finish_message(d, m, &oc->env, oc->data, oc->data_len, false);
		oc->msg = KUMO_NONE;
		oc_take(d, oc);
		return;
	}
	oc_pump(d, oc);
}

static const char *command_name(enum kumo_smtp_client_cmd c)
{
	static const char *const names[] = {"", "greeting", "EHLO", "HELO", "RSET", "MAIL",
					    "RCPT", "DATA", "DATA", "BDAT", "QUIT"};
	return (unsigned)c < sizeof(names) / sizeof(names[0]) ? names[c] : "";
}

static struct outcome reply_outcome(const struct kumo_smtp_client_reply *r)
{
	return (struct outcome){.code = r->code, .enhanced = r->enhanced, .text = r->text,
				.command = command_name(r->command)};
}

/* Applies a transaction's per-recipient replies: logs, states, bounces with a DSN. */
static void txn_done(struct kumo_delivery *d, struct kumo_oconn *oc,
		     const struct kumo_smtp_client_result *res)
{
	struct kumo_envelope *env = &oc->env;
	size_t *bounced = malloc((oc->nbatch ? oc->nbatch : 1) * sizeof(*bounced)), nb = 0;
	oc->txn_open = false;
	const struct kumo_smtp_client_reply *first_bounce = NULL;
	for (size_t i = 0; i < oc->nbatch && i < res->nrcpt; i++) {
		const struct kumo_smtp_client_reply *r = &res->rcpt[i];
		struct kumo_env_rcpt *er = &env->rcpts[oc->batch[i]];
		struct outcome o = reply_outcome(r);
		log_outcome(d, oc->msg, env, er->addr, record_type(&o), &o, oc,
			    oc->data_len);
		if (r->code >= 200 && r->code < 300) {
			er->state = KUMO_RCPT_DONE;
		} else if (r->code >= 500) {
			er->state = KUMO_RCPT_DONE;
			if (bounced && kumo_dsn_should_notify(er->notify, KUMO_DSN_ACTION_FAILED))
				bounced[nb++] = oc->batch[i];
			first_bounce = first_bounce ? first_bounce : r;
		} else {
			oc->any_temp = true;
		}
	}
	if (first_bounce && nb) {
		struct outcome o = reply_outcome(first_bounce);
		const char *status = *first_bounce->enhanced ? first_bounce->enhanced : "5.0.0";
		send_dsn(d, env, bounced, nb, &o, status, oc->peer_name, oc->data, oc->data_len);
	}
	free(bounced);
	oc->deliveries++;
}

/* After a transaction: the next batch of the same message, or finish it. */
static void after_txn(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	if (oc->msg == KUMO_NONE)
		return;
	if (send_batch(d, oc))
		return;
	finish_message(d, oc->msg, &oc->env, oc->data, oc->data_len, true);
	oc->msg = KUMO_NONE;
}

/* The session ended badly: the message in flight (if any) gets the failure for the
 * recipients of the running transaction, and others stay pending. */
static void session_failed(struct kumo_delivery *d, struct kumo_oconn *oc,
			   const struct kumo_smtp_client_reply *r)
{
	struct outcome o = reply_outcome(r);
	if (!oc->established) {
		/* greeting or EHLO refused, or connection lost before: next host */
		struct kumo_site *s = &d->l->queues.sites[oc->site];
		kumo_smtp_client_free(oc->sm);
		oc->sm = NULL;
		shutdown(oc->fd, SHUT_RDWR);
		close(oc->fd);
		oc->fd = -1;
		oc->gen++;
		oc->rpos = oc->rlen = oc->sent = 0;
		oc->sbuf.len = 0;
		oc->eof = false;
		oc->host++;
		oc->addr = 0;
		if (oc->host < s->nhosts && oc_connect(d, oc) == 0)
			return;
		site_unreachable(d, oc->site, &o);
		oc_close(d, oc);
		return;
	}
	if (oc->msg != KUMO_NONE && oc->state == OC_SESSION) {
		for (size_t i = 0; oc->txn_open && i < oc->nbatch; i++) {
			struct kumo_env_rcpt *er = &oc->env.rcpts[oc->batch[i]];
			if (er->state == KUMO_RCPT_PENDING)
				log_outcome(d, oc->msg, &oc->env, er->addr, "TransientFailure", &o,
					    oc, oc->data_len);
		}
		finish_message(d, oc->msg, &oc->env, oc->data, oc->data_len, true);
		oc->msg = KUMO_NONE;
	}
	oc_close(d, oc);
}

static void on_ready(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_site *s = &d->l->queues.sites[oc->site];
	if (!oc->established) {
		oc->established = true;
		s->nconnecting--;
	}
	if (oc->msg != KUMO_NONE) {
		after_txn(d, oc);
		if (oc->msg != KUMO_NONE)
			return;
	}
	if (oc->deliveries >= s->max_deliveries || d->stopping ||
	    (oc->deliveries >= PROVIDER_HANDOVER_AFTER && provider_wanted(d, oc))) {
		oc->state = OC_QUITTING;
		kumo_smtp_client_quit(oc->sm);
		return;
	}
	oc_take(d, oc);
}

static void oc_events(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_smtp_client_ev ev;
	while (!oc->dead && oc->sm && oc->state != OC_LOADING && oc->state != OC_IDLE &&
	       oc->state != OC_CONNECTING) {
		if (oc->rpos < oc->rlen) {
			size_t space;
			void *dst = kumo_smtp_client_input_space(oc->sm, &space);
			if (dst && space) {
				size_t n = oc->rlen - oc->rpos < space ? oc->rlen - oc->rpos : space;
				memcpy(dst, oc->rbuf + oc->rpos, n);
				kumo_smtp_client_input_commit(oc->sm, n);
				oc->rpos += n;
			}
		}
		if (oc->eof && oc->rpos == oc->rlen) {
			kumo_smtp_client_input_eof(oc->sm);
			oc->eof = false;
		}
		if (kumo_smtp_client_next(oc->sm, d->l->now_ms, &ev) < 0) {
			oc_close(d, oc);
			return;
		}
		switch (ev.type) {
		case KUMO_SMTP_CLIENT_EV_NONE:
			return;
		case KUMO_SMTP_CLIENT_EV_READY:
			on_ready(d, oc);
			break;
		case KUMO_SMTP_CLIENT_EV_TXN_DONE:
			txn_done(d, oc, ev.result);
			break;
		case KUMO_SMTP_CLIENT_EV_FAILED:
			session_failed(d, oc, ev.reply);
			return;
		case KUMO_SMTP_CLIENT_EV_CLOSED:
			oc_close(d, oc);
			return;
		}
	}
}

static void oc_pump(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	if (oc->dead)
		return;
	if (oc->state == OC_SESSION || oc->state == OC_QUITTING)
		oc_events(d, oc);
	if (oc->dead || !oc->sm)
		return;
	size_t olen;
	const char *out = kumo_smtp_client_output(oc->sm, &olen);
	if (olen) {
		kumo_buf_append(&oc->sbuf, out, olen);
		kumo_smtp_client_output_consumed(oc->sm, olen);
	}
	if (oc->sbuf.len > oc->sent && !oc->send_busy)
		post_send(d, oc);
	if (!oc->recv_busy && oc->rpos == oc->rlen && !oc->eof)
		post_recv(d, oc);
}

static void addr_string(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
	buf[0] = 0;
	if (ss->ss_family == AF_INET || ss->ss_family == AF_INET6)
		inet_ntop(ss->ss_family,
			  ss->ss_family == AF_INET
				  ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
				  : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr,
			  buf, cap);
}

static void start_session(struct kumo_delivery *d, struct kumo_oconn *oc);
static void proxy_pump(struct kumo_delivery *d, struct kumo_oconn *oc);

/* The target host of the connection (the proxy connects there for us). */
static const struct sockaddr_storage *oc_target(const struct kumo_delivery *d,
						 const struct kumo_oconn *oc)
{
	const struct kumo_site *s = &d->l->queues.sites[oc->site];
	return &s->hosts[oc->host].addrs[oc->addr];
}

/* After the TCP connect to an egress proxy: queue the PROXY v2 header (HAProxy, then the
 * session starts at once) or start the SOCKS5 handshake. False without a proxy. */
static bool proxy_begin(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	const struct kumo_site *s = &d->l->queues.sites[oc->site];
	const struct kumo_source *px =
		s->source != KUMO_NONE ? &d->l->e->sources[s->source] : NULL;
	if (!px || (!px->socks5.ss_family && !px->ha.ss_family))
		return false;
	const struct sockaddr_storage *target = oc_target(d, oc);
	if (px->ha.ss_family) {
		uint8_t hdr[64];
		size_t n = kumo_proxy_v2_header((const struct sockaddr *)&px->ha_source,
						(const struct sockaddr *)target, hdr, sizeof(hdr));
		kumo_buf_append(&oc->sbuf, hdr, n);
		addr_string(&px->ha_source, oc->local_addr, sizeof(oc->local_addr));
		start_session(d, oc);
		return true;
	}
	if (!oc->sx && !(oc->sx = malloc(sizeof(*oc->sx))))
		return false;
	kumo_socks5c_init(oc->sx, px->socks5_user, px->socks5_pass,
			  px->socks5_source.ss_family ? (const struct sockaddr *)&px->socks5_source
						      : NULL,
			  (const struct sockaddr *)target);
	oc->state = OC_PROXY;
	proxy_pump(d, oc);
	return true;
}

/* SOCKS5 replies blaming the target, not the proxy: network or host unreachable,
 * connection refused, TTL expired (RFC 1928 6). */
static bool target_unreachable(int reply)
{
	return reply >= 3 && reply <= 6;
}

/* Moves handshake bytes both ways; starts the session once the proxy connected. */
static void proxy_pump(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	size_t used = 0, n;
	int r = 0;
	if (oc->rpos < oc->rlen) {
		r = kumo_socks5c_push(oc->sx, oc->rbuf + oc->rpos, oc->rlen - oc->rpos, &used);
		oc->rpos += used;
	}
	const uint8_t *out = kumo_socks5c_output(oc->sx, &n);
	kumo_buf_append(&oc->sbuf, out, n);
	kumo_socks5c_sent(oc->sx, n);
	if (r < 0 || (oc->eof && r == 0)) {
		char text[200];
		snprintf(text, sizeof(text), "Egress proxy: %s (reply %d)",
			 r < 0 ? oc->sx->error : "connection closed", oc->sx->reply);
		if (target_unreachable(oc->sx->reply)) {
			struct outcome o = {.code = 451, .enhanced = "4.4.1", .text = text,
					    .command = "connect"};
			site_unreachable(d, oc->site, &o);
		} else {
			source_failed(d, d->l->queues.sites[oc->site].source, text);
		}
		oc_close(d, oc);
		return;
	}
	if (r == 1) {
		addr_string(&oc->sx->local, oc->local_addr, sizeof(oc->local_addr));
		start_session(d, oc); /* leftover bytes in rbuf are the greeting */
		return;
	}
	if (oc->sbuf.len > oc->sent && !oc->send_busy)
		post_send(d, oc);
	if (!oc->recv_busy && oc->rpos == oc->rlen && !oc->eof)
		post_recv(d, oc);
}

static void connect_done(struct kumo_delivery *d, struct kumo_oconn *oc, int res)
{
	const struct kumo_site *s = &d->l->queues.sites[oc->site];
	const struct kumo_source *px =
		s->source != KUMO_NONE ? &d->l->e->sources[s->source] : NULL;
	if (res < 0 && px && (px->socks5.ss_family || px->ha.ss_family)) {
		char why[200]; /* the proxy itself is unreachable */
		snprintf(why, sizeof(why), "proxy connect: %s", strerror(-res));
		source_failed(d, s->source, why);
		oc_close(d, oc);
		return;
	}
	if (res < 0) {
		close(oc->fd);
		oc->fd = -1;
		oc->addr++;
		if (oc_connect(d, oc) == 0)
			return;
		char text[160];
		snprintf(text, sizeof(text), "Connection failed: %s", strerror(-res));
		struct outcome o = {.code = 451, .enhanced = "4.4.1", .text = text,
				    .command = "connect"};
		site_unreachable(d, oc->site, &o);
		oc_close(d, oc);
		return;
	}
	struct sockaddr_storage local;
	socklen_t ll = sizeof(local);
	oc->local_addr[0] = 0;
	if (getsockname(oc->fd, (struct sockaddr *)&local, &ll) == 0)
		addr_string(&local, oc->local_addr, sizeof(oc->local_addr));
	if (proxy_begin(d, oc))
		return;
	start_session(d, oc);
}

/* The SMTP session starts: over the TCP connection, or after the proxy handshake. */
static void start_session(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	struct kumo_smtp_client_cfg cc = d->ccfg;
	const struct kumo_site *s = &d->l->queues.sites[oc->site];
	source_ok(d, s->source);
	s = &d->l->queues.sites[oc->site];
	if (s->source != KUMO_NONE && d->l->e->sources[s->source].ehlo_name)
		cc.ehlo_name = d->l->e->sources[s->source].ehlo_name;
	if (kumo_smtp_client_new(&cc, d->l->now_ms, &oc->sm) < 0) {
		oc_close(d, oc);
		return;
	}
	oc->state = OC_SESSION;
	oc_pump(d, oc);
}

void kumo_delivery_io_done(struct kumo_loop *l, uint64_t ud, int res)
{
	struct kumo_delivery *d = l->dlv;
	uint32_t slot = kumo_ud_slot(ud);
	if (!d || slot >= d->noc)
		return;
	struct kumo_oconn *oc = &d->oc[slot];
	enum kumo_op op = kumo_ud_op(ud);
	oc->inflight--;
	if (op == KUMO_OP_ORECV)
		oc->recv_busy = false;
	else if (op == KUMO_OP_OSEND)
		oc->send_busy = false;
	else if (op == KUMO_OP_OREAD)
		oc->read_busy = false;
	if (oc->dead || (oc->gen & 0xffffff) != kumo_ud_gen(ud)) {
		oc_maybe_release(d, oc);
		return;
	}
	switch (op) {
	case KUMO_OP_OCONNECT:
		connect_done(d, oc, res);
		break;
	case KUMO_OP_OREAD:
		message_loaded(d, oc, res);
		break;
	case KUMO_OP_ORECV:
		if (res <= 0)
			oc->eof = true;
		else
			oc->rpos = 0, oc->rlen = (size_t)res;
		if (oc->eof && oc->state == OC_IDLE) {
			oc_close(d, oc); /* the peer closed an idle connection */
			break;
		}
		if (oc->state == OC_PROXY)
			proxy_pump(d, oc);
		else
			oc_pump(d, oc);
		break;
	case KUMO_OP_OSEND:
		if (res <= 0) {
			oc->eof = true;
			oc->sent = oc->sbuf.len = 0;
		} else if ((oc->sent += (size_t)res) == oc->sbuf.len) {
			oc->sent = oc->sbuf.len = 0;
		}
		if (oc->state == OC_PROXY)
			proxy_pump(d, oc);
		else
			oc_pump(d, oc);
		break;
	default:
		break;
	}
}

void kumo_delivery_throttle_done(struct kumo_loop *l, uint64_t ud, int res)
{
	if (l->dlv && l->dlv->throttle)
		kumo_throttle_complete(l->dlv->throttle, ud, res);
}

void kumo_delivery_dns_done(struct kumo_loop *l, uint64_t ud, int res)
{
	if (l->dlv && l->dlv->dns)
		kumo_dns_complete(l->dlv->dns, ud, res);
}

static void oc_tick(struct kumo_delivery *d, struct kumo_oconn *oc)
{
	uint64_t now = d->l->now_ms;
	if ((oc->lease[0] || oc->prov_lease[0]) && d->throttle &&
	    now - oc->lease_renewed_ms >= LEASE_TTL_MS / 3) {
		char name[600];
		lease_name(&d->l->queues.sites[oc->site], name, sizeof(name));
		if (oc->lease[0])
			kumo_throttle_lease_renew(d->throttle, name, oc->lease, LEASE_TTL_MS, now,
						  NULL, NULL);
		if (oc->prov_lease[0] && oc->provider != KUMO_NONE) {
			provider_key(d, &d->providers.v[oc->provider], "provider_connection_limit",
				     name, sizeof(name));
			kumo_throttle_lease_renew(d->throttle, name, oc->prov_lease, LEASE_TTL_MS,
						  now, NULL, NULL);
		}
		oc->lease_renewed_ms = now;
	}
	if ((oc->state == OC_CONNECTING || oc->state == OC_PROXY) &&
	    now - oc->since_ms >= d->connect_ms) {
		shutdown(oc->fd, SHUT_RDWR); /* the connect completes with an error */
		return;
	}
	uint64_t idle_ms = d->l->queues.sites[oc->site].idle_ms;
	/* idle past its timeout, or idle on a limit another loop waits for */
	if (oc->state == OC_IDLE &&
	    (now - oc->since_ms >= idle_ms || d->stopping || provider_wanted(d, oc))) {
		site_remove_idle(d, oc);
		oc->state = OC_QUITTING;
		kumo_smtp_client_quit(oc->sm);
		oc_pump(d, oc);
		return;
	}
	if (oc->sm && kumo_smtp_client_deadline(oc->sm) <= now) {
		kumo_smtp_client_tick(oc->sm, now);
		oc_pump(d, oc);
	}
}

/* A new configuration snapshot: every site's limits are computed again. */
static void refresh_conf(struct kumo_delivery *d)
{
	struct kumo_loop *l = d->l;
	if (atomic_load(&l->e->conf_gen) == (l->conf ? l->conf->gen : 0))
		return;
	struct kumo_dynconf *c = kumo_conf_get(l->e);
	kumo_conf_put(l->e, l->conf);
	l->conf = c;
	for (uint32_t i = 0; i < l->queues.nsites; i++) {
		struct kumo_site *s = &l->queues.sites[i];
		if (!s->shaped)
			continue;
		char domain[256];
		snprintf(domain, sizeof(domain), "%s", s->domain_hint);
		shape_site(d, i, domain);
		site_kick(d, i);
	}
}

/* ---- bounces of messages already queued ------------------------------------------ */

/* Moves the messages of bounced queues from the list at *head (linked through next; *tail
 * kept when tail is not NULL) to the front of the list at *out; returns how many. */
static uint64_t take_bounced(struct kumo_delivery *d, uint32_t *head, uint32_t *tail,
			     uint32_t *out)
{
	struct kumo_queues *qs = &d->l->queues;
	uint32_t keep = KUMO_NONE, keep_tail = KUMO_NONE, m = *head;
	uint64_t n = 0;
	while (m != KUMO_NONE) {
		uint32_t next = qs->msgs[m].next;
		if (queue_bounce(d, qs->msgs[m].queue)) {
			qs->msgs[m].next = *out;
			*out = m;
			n++;
		} else {
			kumo_list_push(qs, &keep, &keep_tail, m);
		}
		m = next;
	}
	*head = keep;
	if (tail)
		*tail = keep_tail;
	return n;
}

/* Whether site si takes messages of a queue routed to one of the n base sites. */
static bool site_on(const struct kumo_queues *qs, uint32_t si, const uint32_t *bases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (qs->sites[si].base == bases[i])
			return true;
	return false;
}

/* The queues whose bounce began since the last sweep: their parked messages go to *out,
 * their base sites to bases (at most cap). Returns how many such queues hold messages. */
static size_t bounce_onsets(struct kumo_delivery *d, uint32_t *out, uint32_t *bases,
			    size_t cap, size_t *nbases)
{
	struct kumo_queues *qs = &d->l->queues;
	size_t busy = 0;
	for (uint32_t qi = 0; qi < qs->nqueues; qi++) {
		const struct kumo_bnc *b = queue_bounce(d, qi);
		struct kumo_queue *q = &qs->queues[qi];
		bool onset = b && q->bounce_swept_until <= d->l->now_ms;
		q->bounce_swept_until = b ? b->expires_ms : 0;
		if (!onset || !q->count)
			continue;
		busy++;
		take_bounced(d, &q->parked_head, &q->parked_tail, out);
		uint32_t base = fixed_route(d, q);
		base = base != KUMO_NONE ? base : q->site;
		if (base != KUMO_NONE && *nbases < cap && !site_on(qs, base, bases, *nbases))
			bases[(*nbases)++] = base;
		else if (base != KUMO_NONE && *nbases == cap)
			bases[0] = KUMO_NONE; /* too many: every ready queue is looked at */
	}
	return busy;
}

/* Messages of bounced queues that a connection holds (they are failed when it is done). */
static uint64_t bounced_in_flight(struct kumo_delivery *d)
{
	uint64_t n = 0;
	const struct kumo_queues *qs = &d->l->queues;
	for (uint32_t i = 0; i < d->noc; i++) {
		const struct kumo_oconn *oc = &d->oc[i];
		if (oc->in_use && !oc->dead && oc->msg != KUMO_NONE &&
		    qs->msgs[oc->msg].state == KUMO_Q_INFLIGHT &&
		    queue_bounce(d, qs->msgs[oc->msg].queue))
			n++;
	}
	return n;
}

/* After a change of the bounces: the messages already queued for a queue whose bounce
 * just began are failed now rather than at their next attempt. Only the lists that can
 * hold them are walked: the queue's parked list, the ready queues of its site, and the
 * timer wheel until every message the bounced queues still count has been found. */
static void sweep_bounces(struct kumo_delivery *d)
{
	struct kumo_queues *qs = &d->l->queues;
	uint32_t out = d->bouncing, bases[64];
	size_t nbases = 0;
	if (!bounce_onsets(d, &out, bases, 64, &nbases))
		return;
	bool all_sites = nbases && bases[0] == KUMO_NONE;
	for (uint32_t si = 0; si < qs->nsites; si++) {
		struct kumo_site *s = &qs->sites[si];
		if (s->nready && (all_sites || site_on(qs, si, bases, nbases)))
			s->nready -= take_bounced(d, &s->ready_head, &s->ready_tail, &out);
	}
	uint64_t left = 0, held = bounced_in_flight(d), found = 0;
	for (uint32_t qi = 0; qi < qs->nqueues; qi++)
		if (queue_bounce(d, qi))
			left += qs->queues[qi].count;
	for (uint32_t m = out; m != KUMO_NONE; m = qs->msgs[m].next)
		held++;
	left = left > held ? left - held : 0;
	for (uint32_t i = 0; i < qs->wheel_slots && found < left; i++)
		found += take_bounced(d, &qs->wheel[i], NULL, &out);
	d->bouncing = out;
}

/* Fails the messages a sweep took, for up to 100 ms a tick so that a large queue does
 * not stall the loop (each is read back from the spool for its log records and DSN). */
static void drain_bouncing(struct kumo_delivery *d)
{
	uint64_t until = kumo_now_ms() + 100;
	for (unsigned n = 0; d->bouncing != KUMO_NONE; n++) {
		if ((n & 63) == 63 && kumo_now_ms() >= until)
			break;
		uint32_t m = d->bouncing;
		d->bouncing = d->l->queues.msgs[m].next;
		if (queue_bounce(d, d->l->queues.msgs[m].queue))
			bounce_message(d, m);
		else
			kumo_wheel_insert(&d->l->queues, m); /* the bounce ended meanwhile */
	}
}

void kumo_delivery_tick(struct kumo_loop *l)
{
	struct kumo_delivery *d = l->dlv;
	if (!d)
		return;
	refresh_conf(d);
	kumo_dns_tick(d->dns, l->now_ms);
	if (d->throttle)
		kumo_throttle_tick(d->throttle, l->now_ms);
	for (uint32_t i = 0; i < d->noc; i++)
		if (d->oc[i].in_use && !d->oc[i].dead)
			oc_tick(d, &d->oc[i]);
	if (d->stopping || l->e->cfg.no_delivery)
		return;
	if (l->conf && l->conf->gen != d->swept_gen) {
		d->swept_gen = l->conf->gen;
		sweep_bounces(d);
	}
	drain_bouncing(d);
	uint32_t m = kumo_wheel_advance(&l->queues, l->now_ms);
	while (m != KUMO_NONE) {
		uint32_t next = l->queues.msgs[m].next;
		make_due(d, m);
		m = next;
	}
}

void kumo_delivery_shutdown(struct kumo_loop *l, bool force)
{
	struct kumo_delivery *d = l->dlv;
	if (!d)
		return;
	d->stopping = true;
	for (uint32_t i = 0; i < d->noc; i++) {
		struct kumo_oconn *oc = &d->oc[i];
		if (!oc->in_use || oc->dead)
			continue;
		if (force || oc->state == OC_CONNECTING)
			oc_close(d, oc);
		else if (oc->state == OC_IDLE)
			oc_tick(d, oc);
	}
}

bool kumo_delivery_idle(const struct kumo_loop *l)
{
	const struct kumo_delivery *d = l->dlv;
	if (!d)
		return true;
	for (uint32_t i = 0; i < d->noc; i++)
		if (d->oc[i].in_use)
			return false;
	return true;
}

/* ---- set-up ---------------------------------------------------------------------- */

static void apply_defaults(struct kumo_delivery *d, const struct kumo_engine_cfg *c)
{
	d->retry_ms = or_default(c->retry_interval_ms, 20 * 60 * 1000);
	d->max_retry_ms = or_default(c->max_retry_interval_ms, 8 * 3600 * 1000);
	if (d->max_retry_ms < d->retry_ms)
		d->max_retry_ms = d->retry_ms;
	d->max_age_ms = or_default(c->max_age_ms, 7ULL * 86400 * 1000);
	d->conn_limit = (unsigned)or_default(c->connection_limit, 32);
	d->max_deliveries = (unsigned)or_default(c->max_deliveries_per_connection, 1024);
	d->max_batch = (unsigned)or_default(c->max_recipients_per_batch, 100);
	d->idle_ms = (uint32_t)or_default(c->idle_timeout_ms, 60000);
	d->connect_ms = (uint32_t)or_default(c->connect_timeout_ms, 60000);
	d->mx_port = (uint16_t)or_default(c->mx_port, 25);
	d->ccfg.ehlo_name = c->ehlo_name ? c->ehlo_name : d->l->e->hostname;
}

static int fixed_sites(struct kumo_delivery *d)
{
	const struct kumo_engine *e = d->l->e;
	d->smart_site = KUMO_NONE;
	if (e->cfg.smart_host && (d->smart_site = fixed_site(d, e->cfg.smart_host)) == KUMO_NONE)
		return -EINVAL;
	d->route_sites = calloc(e->nroutes ? e->nroutes : 1, sizeof(uint32_t));
	d->wrr = calloc(e->npools ? e->npools : 1, sizeof(*d->wrr));
	d->health = calloc(e->nsources ? e->nsources : 1, sizeof(*d->health));
	if (!d->route_sites || !d->wrr || !d->health)
		return -ENOMEM;
	for (size_t i = 0; i < e->npools; i++)
		if (!(d->wrr[i] = calloc(e->pools[i].n, sizeof(int64_t))))
			return -ENOMEM;
	for (size_t i = 0; i < e->nroutes; i++)
		if ((d->route_sites[i] = fixed_site(d, e->routes[i].host_port)) == KUMO_NONE)
			return -EINVAL;
	return 0;
}

int kumo_delivery_start(struct kumo_loop *l)
{
	int err = fixed_sites(l->dlv);
	l->dlv->started = err == 0;
	return err;
}

int kumo_delivery_init(struct kumo_loop *l)
{
	struct kumo_delivery *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->l = l;
	d->free_head = KUMO_NONE;
	d->smart_site = KUMO_NONE;
	d->bouncing = KUMO_NONE;
	l->dlv = d;
	apply_defaults(d, &l->e->cfg);
	int err;
	struct kumo_dns_cfg dc = {.servers = l->e->cfg.dns_servers,
				  .timeout_ms = l->e->cfg.dns_timeout_ms};
	err = kumo_dns_new(&dc, &l->ring, kumo_ud(KUMO_OP_DNS, 0, 0), &d->dns);
	if (err < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "DNS resolver: %s", strerror(-err));
		return err;
	}
	if (l->e->cfg.redis_url && *l->e->cfg.redis_url) {
		char node[96];
		snprintf(node, sizeof(node), "%s/loop%u", l->e->nodeid, l->index);
		struct kumo_throttle_cfg tc = {.redis_url = l->e->cfg.redis_url, .node_id = node,
					       .log_fn = l->e->cfg.log_fn,
					       .log_arg = l->e->cfg.log_arg};
		err = kumo_throttle_new(&tc, &l->ring, kumo_ud(KUMO_OP_THROTTLE, 0, 0),
					&d->throttle);
		if (err < 0)
			kumo_elog(l->e, KUMO_LOG_ERROR, "redis %s: %s", l->e->cfg.redis_url,
				  strerror(-err));
	}
	return err;
}

void kumo_delivery_fini(struct kumo_loop *l)
{
	struct kumo_delivery *d = l->dlv;
	if (!d)
		return;
	for (uint32_t i = 0; i < d->noc; i++) {
		struct kumo_oconn *oc = &d->oc[i];
		if (oc->fd >= 0)
			close(oc->fd);
		kumo_smtp_client_free(oc->sm);
		if (oc->env_valid)
			kumo_envelope_release(&oc->env);
		free(oc->rbuf);
		free(oc->mbuf);
		free(oc->batch);
		free(oc->crcpts);
		free(oc->sx);
		kumo_buf_free(&oc->sbuf);
	}
	free(d->oc);
	free(d->route_sites);
	for (size_t i = 0; d->wrr && i < l->e->npools; i++)
		free(d->wrr[i]);
	free(d->wrr);
	free(d->health);
	kumo_providers_free(&d->providers);
	kumo_buf_free(&d->dsn);
	if (d->dns)
		kumo_dns_free(d->dns);
	if (d->throttle)
		kumo_throttle_free(d->throttle);
	free(d);
	l->dlv = NULL;
}
