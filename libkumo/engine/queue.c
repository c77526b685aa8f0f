/* Per-loop queue state: message records in one array with a free list, queue and site
 * tables hashed by name, FIFO lists through the records' next links, and a timer wheel
 * of one-second slots (messages due beyond one turn stay and are looked at again). */
#include "engine/queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WHEEL_SLOTS 4096

static uint32_t hash_name(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int grow(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	uint64_t n = *cap ? *cap : 256;
	while (n < need)
		n *= 2;
	if (n > UINT32_MAX - 1)
		return -ENOMEM;
	void *p = realloc(*arr, (size_t)n * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = (uint32_t)n;
	return 0;
}

static uint32_t *new_buckets(uint32_t n)
{
	uint32_t *b = malloc(n * sizeof(*b));
	if (b)
		memset(b, 0xff, n * sizeof(*b));
	return b;
}

int kumo_queues_init(struct kumo_queues *q, uint64_t now_ms)
{
	memset(q, 0, sizeof(*q));
	q->free_head = KUMO_NONE;
	q->nqbuckets = q->nsbuckets = 1024;
	q->wheel_slots = WHEEL_SLOTS;
	q->qbuckets = new_buckets(q->nqbuckets);
	q->sbuckets = new_buckets(q->nsbuckets);
	q->wheel = new_buckets(q->wheel_slots);
	q->wheel_s = (uint32_t)(now_ms / 1000);
	if (!q->qbuckets || !q->sbuckets || !q->wheel) {
		kumo_queues_free(q);
		return -ENOMEM;
	}
	return 0;
}

static void free_hosts(struct kumo_site *s)
{
	for (size_t i = 0; i < s->nhosts; i++) {
		free(s->hosts[i].name);
		free(s->hosts[i].addrs);
	}
	free(s->hosts);
	s->hosts = NULL;
	s->nhosts = 0;
}

void kumo_queues_free(struct kumo_queues *q)
{
	for (uint32_t i = 0; i < q->nqueues; i++)
		free(q->queues[i].name);
	for (uint32_t i = 0; i < q->nsites; i++) {
		free(q->sites[i].name);
		free_hosts(&q->sites[i]);
	}
	free(q->queues);
	free(q->sites);
	free(q->msgs);
	free(q->qbuckets);
	free(q->sbuckets);
	free(q->wheel);
	memset(q, 0, sizeof(*q));
}

uint32_t kumo_queue_find(const struct kumo_queues *q, const char *name)
{
	uint32_t i = q->qbuckets[hash_name(name) & (q->nqbuckets - 1)];
	while (i != KUMO_NONE && strcmp(q->queues[i].name, name) != 0)
		i = q->queues[i].hnext;
	return i;
}

/* Doubles a bucket array once it holds as many entries as buckets. */
static int rehash(uint32_t **buckets, uint32_t *nb, uint32_t count, void *items, size_t elem,
		  size_t name_off, size_t next_off)
{
	if (count < *nb)
		return 0;
	uint32_t n = *nb * 2;
	uint32_t *b = new_buckets(n);
	if (!b)
		return -ENOMEM;
	for (uint32_t i = 0; i < count; i++) {
		char *item = (char *)items + (size_t)i * elem;
		const char *name = *(char **)(item + name_off);
		uint32_t h = hash_name(name) & (n - 1);
		memcpy(item + next_off, &b[h], sizeof(uint32_t));
		b[h] = i;
	}
	free(*buckets);
	*buckets = b;
	*nb = n;
	return 0;
}

uint32_t kumo_queue_intern(struct kumo_queues *q, const char *name)
{
	uint32_t i = kumo_queue_find(q, name);
	if (i != KUMO_NONE)
		return i;
	if (grow((void **)&q->queues, &q->capqueues, q->nqueues + 1, sizeof(*q->queues)) ||
	    rehash(&q->qbuckets, &q->nqbuckets, q->nqueues, q->queues, sizeof(*q->queues),
		   offsetof(struct kumo_queue, name), offsetof(struct kumo_queue, hnext)))
		return KUMO_NONE;
	struct kumo_queue *qu = &q->queues[q->nqueues];
	memset(qu, 0, sizeof(*qu));
	if (!(qu->name = strdup(name)))
		return KUMO_NONE;
	struct kumo_queue_parts parts;
	kumo_queue_parts(qu->name, &parts);
	qu->domain = parts.domain;
	qu->site = KUMO_NONE;
	qu->bounce = -1;
	qu->parked_head = qu->parked_tail = KUMO_NONE;
	uint32_t h = hash_name(name) & (q->nqbuckets - 1);
	qu->hnext = q->qbuckets[h];
	q->qbuckets[h] = q->nqueues;
	return q->nqueues++;
}

void kumo_queue_parts(const char *name, struct kumo_queue_parts *out)
{
	const char *at = strrchr(name, '@'), *colon = strchr(name, ':');
	if (colon && at && colon > at)
		colon = NULL; /* a ':' in the domain part (an address literal) */
	const char *tenant = colon ? colon + 1 : name;
	*out = (struct kumo_queue_parts){
		.campaign = colon ? name : "", .campaign_len = colon ? (size_t)(colon - name) : 0,
		.tenant = at ? tenant : "", .tenant_len = at ? (size_t)(at - tenant) : 0,
		.domain = at ? at + 1 : tenant};
	out->domain_len = strlen(out->domain);
}

uint32_t kumo_site_intern(struct kumo_queues *q, const char *name)
{
	uint32_t i = q->sbuckets[hash_name(name) & (q->nsbuckets - 1)];
	while (i != KUMO_NONE && strcmp(q->sites[i].name, name) != 0)
		i = q->sites[i].hnext;
	if (i != KUMO_NONE)
		return i;
	if (grow((void **)&q->sites, &q->capsites, q->nsites + 1, sizeof(*q->sites)) ||
	    rehash(&q->sbuckets, &q->nsbuckets, q->nsites, q->sites, sizeof(*q->sites),
		   offsetof(struct kumo_site, name), offsetof(struct kumo_site, hnext)))
		return KUMO_NONE;
	struct kumo_site *s = &q->sites[q->nsites];
	memset(s, 0, sizeof(*s));
	if (!(s->name = strdup(name)))
		return KUMO_NONE;
	s->ready_head = s->ready_tail = s->idle_head = KUMO_NONE;
	s->source = KUMO_NONE;
	s->provider = KUMO_NONE;
	s->base = q->nsites;
	uint32_t h = hash_name(name) & (q->nsbuckets - 1);
	s->hnext = q->sbuckets[h];
	q->sbuckets[h] = q->nsites;
	return q->nsites++;
}

void kumo_site_set_hosts(struct kumo_site *s, struct kumo_site_host *hosts, size_t n)
{
	free_hosts(s);
	s->hosts = hosts;
	s->nhosts = n;
}

uint32_t kumo_qmsg_new(struct kumo_queues *q, const struct kumo_id *id,
		       const struct kumo_spool_loc *loc, uint32_t queue, uint64_t due_ms,
		       unsigned attempts)
{
	uint32_t m = q->free_head;
	if (m != KUMO_NONE) {
		q->free_head = q->msgs[m].next;
	} else {
		if (grow((void **)&q->msgs, &q->capmsgs, q->nmsgs + 1, sizeof(*q->msgs)))
			return KUMO_NONE;
		m = q->nmsgs++;
	}
	q->msgs[m] = (struct kumo_qmsg){.id = *id, .loc = *loc, .queue = queue,
					.due_s = (uint32_t)(due_ms / 1000), .next = KUMO_NONE,
					.attempts = (uint16_t)(attempts > 65535 ? 65535 : attempts),
					.state = KUMO_Q_FREE};
	q->queues[queue].count++;
	q->live++;
	return m;
}

void kumo_qmsg_release(struct kumo_queues *q, uint32_t m)
{
	struct kumo_qmsg *msg = &q->msgs[m];
	q->queues[msg->queue].count--;
	q->live--;
	msg->state = KUMO_Q_FREE;
	msg->next = q->free_head;
	q->free_head = m;
}

void kumo_list_push(struct kumo_queues *q, uint32_t *head, uint32_t *tail, uint32_t m)
{
	q->msgs[m].next = KUMO_NONE;
	if (*tail == KUMO_NONE)
		*head = m;
	else
		q->msgs[*tail].next = m;
	*tail = m;
}

uint32_t kumo_list_pop(struct kumo_queues *q, uint32_t *head, uint32_t *tail)
{
	uint32_t m = *head;
	if (m == KUMO_NONE)
		return m;
	*head = q->msgs[m].next;
	if (*head == KUMO_NONE)
		*tail = KUMO_NONE;
	q->msgs[m].next = KUMO_NONE;
	return m;
}

void kumo_wheel_insert(struct kumo_queues *q, uint32_t m)
{
	struct kumo_qmsg *msg = &q->msgs[m];
	/* a time already passed goes into the next slot to be processed */
	uint32_t s = msg->due_s > q->wheel_s ? msg->due_s : q->wheel_s + 1;
	uint32_t slot = s & (q->wheel_slots - 1);
	msg->state = KUMO_Q_SCHEDULED;
	msg->next = q->wheel[slot];
	q->wheel[slot] = m;
}

uint32_t kumo_wheel_advance(struct kumo_queues *q, uint64_t now_ms)
{
	uint32_t now_s = (uint32_t)(now_ms / 1000), due = KUMO_NONE;
	/* after a long stall, one full turn visits every slot */
	if (now_s - q->wheel_s > q->wheel_slots)
		q->wheel_s = now_s - q->wheel_slots;
	while (q->wheel_s < now_s) {
		q->wheel_s++;
		uint32_t slot = q->wheel_s & (q->wheel_slots - 1);
		uint32_t m = q->wheel[slot], keep = KUMO_NONE;
		while (m != KUMO_NONE) {
			uint32_t next = q->msgs[m].next;
			if (q->msgs[m].due_s <= now_s) {
				q->msgs[m].next = due;
				due = m;
			} else {
				q->msgs[m].next = keep;
				keep = m;
			}
			m = next;
		}
		q->wheel[slot] = keep;
	}
	return due;
}
