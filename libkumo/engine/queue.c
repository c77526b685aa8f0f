/* Scheduled queues: messages waiting, grouped by queue name (campaign:tenant@domain).
 * A message is one fixed record in an array; each queue it belongs to links it through
 * a small entry; queue names are interned once in a hash table. */
#include "engine/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NO_ENTRY UINT32_MAX

static uint64_t hash_name(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

int kumo_queues_init(struct kumo_queues *q)
{
	memset(q, 0, sizeof(*q));
	q->nbuckets = 1024;
	q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
	return q->buckets ? 0 : -ENOMEM;
}

void kumo_queues_free(struct kumo_queues *q)
{
	for (size_t i = 0; q->buckets && i < q->nbuckets; i++) {
		struct kumo_queue *n, *qu = q->buckets[i];
		for (; qu; qu = n) {
			n = qu->hnext;
			free(qu->name);
			free(qu);
		}
	}
	free(q->buckets);
	free(q->msgs);
	free(q->entries);
	memset(q, 0, sizeof(*q));
}

struct kumo_queue *kumo_queues_find(const struct kumo_queues *q, const char *name)
{
	struct kumo_queue *qu = q->buckets[hash_name(name) & (q->nbuckets - 1)];
	while (qu && strcmp(qu->name, name) != 0)
		qu = qu->hnext;
	return qu;
}

static int grow_buckets(struct kumo_queues *q)
{
	size_t n = q->nbuckets * 2;
	struct kumo_queue **b = calloc(n, sizeof(*b));
	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < q->nbuckets; i++) {
		struct kumo_queue *next, *qu = q->buckets[i];
		for (; qu; qu = next) {
			next = qu->hnext;
			size_t h = hash_name(qu->name) & (n - 1);
			qu->hnext = b[h];
			b[h] = qu;
		}
	}
	free(q->buckets);
	q->buckets = b;
	q->nbuckets = n;
	return 0;
}

static struct kumo_queue *intern(struct kumo_queues *q, const char *name)
{
	struct kumo_queue *qu = kumo_queues_find(q, name);
	if (qu)
		return qu;
	if (q->nqueues >= q->nbuckets && grow_buckets(q) < 0)
		return NULL;
	qu = calloc(1, sizeof(*qu));
	if (!qu || !(qu->name = strdup(name))) {
		free(qu);
		return NULL;
	}
	qu->head = qu->tail = NO_ENTRY;
	size_t h = hash_name(name) & (q->nbuckets - 1);
	qu->hnext = q->buckets[h];
	q->buckets[h] = qu;
	q->nqueues++;
	return qu;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap * 2 : 1024;
	while (n < need)
		n *= 2;
	void *p = realloc(*arr, n * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = n;
	return 0;
}

static int link_entry(struct kumo_queues *q, struct kumo_queue *qu, uint32_t msg)
{
	if (grow((void **)&q->entries, &q->capentries, q->nentries + 1, sizeof(*q->entries)))
		return -ENOMEM;
	uint32_t e = (uint32_t)q->nentries++;
	q->entries[e] = (struct kumo_qentry){.msg = msg, .next = NO_ENTRY};
	if (qu->tail == NO_ENTRY)
		qu->head = e;
	else
		q->entries[qu->tail].next = e;
	qu->tail = e;
	qu->count++;
	return 0;
}

/* True when an earlier pending recipient of env maps to the same queue name. */
static bool seen_before(const struct kumo_envelope *env, size_t i, const char *name)
{
	char other[512];
	for (size_t k = 0; k < i; k++) {
		if (env->rcpts[k].state != KUMO_RCPT_PENDING)
			continue;
		kumo_envelope_queue_name(env, env->rcpts[k].addr, other, sizeof(other));
		if (strcmp(other, name) == 0)
			return true;
	}
	return false;
}

int kumo_queues_add(struct kumo_queues *q, const struct kumo_envelope *env,
		    const struct kumo_spool_loc *loc)
{
	if (grow((void **)&q->msgs, &q->capmsgs, q->nmsgs + 1, sizeof(*q->msgs)))
		return -ENOMEM;
	uint32_t m = (uint32_t)q->nmsgs;
	q->msgs[m] = (struct kumo_qmsg){.id = env->id, .loc = *loc, .due_ms = env->due_ms,
					.attempts = env->attempts, .nrcpt = (uint32_t)env->nrcpt};
	q->nmsgs++;
	char name[512];
	for (size_t i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].state != KUMO_RCPT_PENDING)
			continue;
		kumo_envelope_queue_name(env, env->rcpts[i].addr, name, sizeof(name));
		if (env->nrcpt > 1 && seen_before(env, i, name))
			continue;
		struct kumo_queue *qu = intern(q, name);
		if (!qu || link_entry(q, qu, m) < 0)
			return -ENOMEM;
	}
	return 0;
}
