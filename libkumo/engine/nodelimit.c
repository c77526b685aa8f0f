/* Node-wide connection limits (nodelimit.h): a mutex-protected table of counters keyed
 * by site or provider, with the set of loops waiting for each; a release hands the
 * waiting loops a kick through their eventfd. */
#include "engine/nodelimit.h"
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

static uint64_t loop_bit(unsigned loop)
{
	return 1ULL << (loop % 64);
}

void kumo_node_limits_init(struct kumo_node_limits *n, unsigned nloops)
{
	memset(n, 0, sizeof(*n));
	pthread_mutex_init(&n->lock, NULL);
	n->nloops = nloops;
}

void kumo_node_limits_fini(struct kumo_node_limits *n)
{
	for (size_t b = 0; b < sizeof(n->buckets) / sizeof(n->buckets[0]); b++) {
		for (struct kumo_node_slot *s = n->buckets[b], *next; s; s = next) {
			next = s->next;
			free(s->key);
			free(s->local);
			free(s);
		}
	}
	pthread_mutex_destroy(&n->lock);
}

static size_t bucket_of(const char *key)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *key; key++)
		h = (h ^ (uint8_t)*key) * 1099511628211ULL;
	return (size_t)(h % 1024);
}

static struct kumo_node_slot *slot_new(struct kumo_node_limits *n, const char *key,
				       enum kumo_slot_kind kind)
{
	struct kumo_node_slot *s = calloc(1, sizeof(*s));
	if (!s || !(s->key = strdup(key)) || !(s->local = malloc(n->nloops * sizeof(uint32_t)))) {
		if (s)
			free(s->key);
		free(s);
		return NULL;
	}
	for (unsigned i = 0; i < n->nloops; i++)
		s->local[i] = KUMO_NONE;
	s->kind = kind;
	return s;
}

struct kumo_node_slot *kumo_node_slot_get(struct kumo_node_limits *n, const char *key,
					  enum kumo_slot_kind kind, unsigned loop,
					  uint32_t local)
{
	size_t b = bucket_of(key);
	pthread_mutex_lock(&n->lock);
	struct kumo_node_slot *s = n->buckets[b];
	while (s && (s->kind != kind || strcmp(s->key, key) != 0))
		s = s->next;
	if (!s && (s = slot_new(n, key, kind))) {
		s->next = n->buckets[b];
		n->buckets[b] = s;
	}
	if (s && loop < n->nloops)
		s->local[loop] = local;
	pthread_mutex_unlock(&n->lock);
	return s;
}

bool kumo_node_slot_take(struct kumo_node_limits *n, struct kumo_node_slot *s, unsigned limit,
			 unsigned loop)
{
	pthread_mutex_lock(&n->lock);
	bool ok = s->count < limit;
	if (ok)
		s->count++;
	else
		atomic_fetch_or(&s->waiting, loop_bit(loop));
	pthread_mutex_unlock(&n->lock);
	return ok;
}

void kumo_node_slot_release(struct kumo_engine *e, struct kumo_node_slot *s)
{
	struct kumo_node_limits *n = &e->node_limits;
	pthread_mutex_lock(&n->lock);
	if (s->count)
		s->count--;
	uint64_t waiting = atomic_exchange(&s->waiting, 0);
	pthread_mutex_unlock(&n->lock);
	for (unsigned i = 0; waiting && i < n->nloops; i++)
		if (waiting & loop_bit(i))
			kumo_loop_kick(&e->loops[i], s);
}

bool kumo_node_slot_contended(const struct kumo_node_slot *s, unsigned loop)
{
	return (atomic_load(&s->waiting) & ~loop_bit(loop)) != 0;
}

uint64_t kumo_node_gcra_wait(struct kumo_node_limits *n, struct kumo_node_slot *s,
			     enum kumo_rate_kind kind, double T, double tau, double now)
{
	pthread_mutex_lock(&n->lock);
	double tat = s->tat[kind];
	pthread_mutex_unlock(&n->lock);
	if (T == 0 || now >= tat - tau)
		return 0;
	return (uint64_t)(tat - tau - now) + 1;
}

void kumo_node_gcra_take(struct kumo_node_limits *n, struct kumo_node_slot *s,
			 enum kumo_rate_kind kind, double T, double now)
{
	if (T == 0)
		return;
	pthread_mutex_lock(&n->lock);
	s->tat[kind] = (s->tat[kind] > now ? s->tat[kind] : now) + T;
	pthread_mutex_unlock(&n->lock);
}
