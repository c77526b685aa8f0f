/* Per-loop queue state: a fixed record per queued message, scheduled queues named
 * campaign:tenant@domain, sites (one per MX set, holding the ready queue), and a hashed
 * timer wheel of one-second slots for messages waiting for their next attempt. */
#ifndef KUMO_ENGINE_QUEUE_H
#define KUMO_ENGINE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "engine/spool.h"
#include "util/id.h"

#define KUMO_NONE UINT32_MAX

enum kumo_qstate {
	KUMO_Q_FREE = 0,
	KUMO_Q_SCHEDULED,  /* in the timer wheel */
	KUMO_Q_PARKED,     /* due, waiting for its queue's MX lookup */
	KUMO_Q_READY,      /* in its site's ready queue */
	KUMO_Q_INFLIGHT,   /* taken by a connection */
};

/* The fixed RAM cost of one queued message (48 bytes). Its envelope and body stay in
 * the spool; the creation time is the id's timestamp. */
struct kumo_qmsg {
	struct kumo_id id;
	struct kumo_spool_loc loc;
	uint32_t due_s;     /* next attempt, Unix seconds */
	uint32_t queue;     /* index into queues */
	uint32_t next;      /* link in the wheel slot, parked list or ready queue */
	uint16_t attempts;
	uint8_t state;      /* enum kumo_qstate */
	uint8_t flags;
};

struct kumo_node_slot;

struct kumo_site_host {
	char *name;
	size_t naddrs;
	struct sockaddr_storage *addrs;
};

/* A destination: the MX set shared by one or more domains (or a smart host), with its
 * ready queue and connection count. */
struct kumo_site {
	char *name;
	struct kumo_site_host *hosts;
	size_t nhosts;
	uint32_t ready_head, ready_tail;
	uint64_t nready;
	unsigned nconns;        /* connections open or opening */
	unsigned nconnecting;   /* of which not yet ready for a transaction */
	uint32_t idle_head;     /* idle outbound connections (oconn indexes) */
	uint32_t hnext;
	unsigned next_host;     /* rotates the first host tried by new connections */
	uint32_t source;        /* egress source (engine index), KUMO_NONE: the system's */
	uint32_t base;          /* the MX or smart-host site these hosts come from */
	/* shaping, for this loop's share of the limits */
	bool shaped;
	bool timer_armed;
	char domain_hint[256];  /* the domain its limits were computed for */
	unsigned conn_limit;
	unsigned max_deliveries;
	uint64_t max_ready;     /* 0: no bound on the ready queue */
	uint32_t provider;      /* its provider budget (delivery's table), or KUMO_NONE */
	struct kumo_node_slot *node_slot; /* conn_limit counted over all loops, or NULL */
	struct kumo_node_slot *rate_slot; /* keeps the GCRA state for all loops, or NULL */
	uint64_t idle_ms;
	double msg_T, msg_tau, msg_tat;    /* GCRA for messages: interval, tolerance, TAT (ms) */
	double conn_T, conn_tau, conn_tat; /* GCRA for new connections */
	/* max_message_rate shared through Redis: the whole rate, one request at a time */
	uint64_t shared_count, shared_period_ms, shared_burst;
	bool token_pending, token_ready;
	/* connection_limit shared through Redis: one lease per connection */
	uint64_t shared_conn_limit;
	bool lease_pending;
	char lease_ready[80];   /* a granted lease waiting for its connection, or "" */
};

struct kumo_queue {
	char *name;
	const char *domain;     /* points into name */
	uint32_t site;          /* KUMO_NONE until resolved */
	int32_t pool;           /* its egress pool, -1: none; valid once pool_known */
	bool pool_known;
	uint64_t site_expires_ms;
	uint32_t parked_head, parked_tail;
	bool resolving;
	uint64_t count;         /* messages of this queue in any state */
	uint32_t hnext;
	/* its bounce (delivery.c): the matching entry of conf generation bounce_gen, and
	 * the expiry of the bounce whose messages were last swept out (0: none) */
	uint64_t bounce_gen;
	int32_t bounce;         /* index into that snapshot's bounces, or -1 */
	uint64_t bounce_swept_until;
};

/* The parts of a queue name "campaign:tenant@domain" (views into the name; length 0
 * when a part is absent; the domain is the whole name when there is neither). */
struct kumo_queue_parts {
	const char *campaign, *tenant, *domain;
	size_t campaign_len, tenant_len, domain_len;
};
void kumo_queue_parts(const char *name, struct kumo_queue_parts *out);

struct kumo_queues {
	struct kumo_qmsg *msgs;
	uint32_t nmsgs, capmsgs, free_head;
	uint64_t live;
	struct kumo_queue *queues;
	uint32_t nqueues, capqueues;
	uint32_t *qbuckets;
	uint32_t nqbuckets;
	struct kumo_site *sites;
	uint32_t nsites, capsites;
	uint32_t *sbuckets;
	uint32_t nsbuckets;
	uint32_t *wheel;        /* heads of one-second slots */
	uint32_t wheel_slots;
	uint32_t wheel_s;       /* the last second processed */
};

int kumo_queues_init(struct kumo_queues *q, uint64_t now_ms);
void kumo_queues_free(struct kumo_queues *q);

/* Interns a queue name; returns its index or KUMO_NONE (out of memory). */
uint32_t kumo_queue_intern(struct kumo_queues *q, const char *name);
uint32_t kumo_queue_find(const struct kumo_queues *q, const char *name);
/* Interns a site by name; the caller fills its hosts. */
uint32_t kumo_site_intern(struct kumo_queues *q, const char *name);
void kumo_site_set_hosts(struct kumo_site *s, struct kumo_site_host *hosts, size_t n);

/* A new message record (state FREE, to be placed by the caller); KUMO_NONE on ENOMEM. */
uint32_t kumo_qmsg_new(struct kumo_queues *q, const struct kumo_id *id,
		       const struct kumo_spool_loc *loc, uint32_t queue, uint64_t due_ms,
		       unsigned attempts);
void kumo_qmsg_release(struct kumo_queues *q, uint32_t m);

/* The timer wheel: insert, and collect every message due at or before now into a
 * list (linked through next) returned by head. */
void kumo_wheel_insert(struct kumo_queues *q, uint32_t m);
uint32_t kumo_wheel_advance(struct kumo_queues *q, uint64_t now_ms);

/* FIFO lists linked through kumo_qmsg.next. */
void kumo_list_push(struct kumo_queues *q, uint32_t *head, uint32_t *tail, uint32_t m);
uint32_t kumo_list_pop(struct kumo_queues *q, uint32_t *head, uint32_t *tail);

#endif
