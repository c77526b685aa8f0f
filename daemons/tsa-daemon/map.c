/* tsa-daemon: a string-keyed hash map of indices with FNV-1a hashes, linear probing and a
 * load factor of at most 1/2; see map.h. */
#include "map.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *k, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)k[i]) * 0x100000001b3ull;
	return h;
}

static size_t find(const struct tsa_map *m, const char *key, size_t klen, uint64_t h)
{
	size_t mask = m->cap - 1, i = (size_t)h & mask;
	while (m->slots[i].key && !(m->slots[i].hash == h && m->slots[i].klen == klen &&
				    memcmp(m->slots[i].key, key, klen) == 0))
		i = (i + 1) & mask;
	return i;
}

size_t *tsa_map_get(const struct tsa_map *m, const char *key, size_t klen)
{
	if (!m->n)
		return NULL;
	size_t i = find(m, key, klen, hash(key, klen));
	return m->slots[i].key ? &m->slots[i].val : NULL;
}

static int grow(struct tsa_map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct tsa_map_slot *slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	struct tsa_map old = *m;
	m->slots = slots;
	m->cap = cap;
	for (size_t i = 0; i < old.cap; i++)
		if (old.slots[i].key)
			m->slots[find(m, old.slots[i].key, old.slots[i].klen, old.slots[i].hash)] =
			    old.slots[i];
	free(old.slots);
	return 0;
}

int tsa_map_put(struct tsa_map *m, const char *key, size_t klen, size_t val)
{
	if ((m->n + 1) * 2 > m->cap && grow(m) < 0)
		return -ENOMEM;
	uint64_t h = hash(key, klen);
	size_t i = find(m, key, klen, h);
	if (m->slots[i].key) {
		m->slots[i].val = val;
		return 0;
	}
	char *k = malloc(klen + 1);
	if (!k)
		return -ENOMEM;
	memcpy(k, key, klen);
	k[klen] = 0;
	m->slots[i] = (struct tsa_map_slot){k, klen, h, val};
	m->n++;
	return 0;
}

void tsa_map_del(struct tsa_map *m, const char *key, size_t klen)
{
	if (!m->n)
		return;
	size_t mask = m->cap - 1, i = find(m, key, klen, hash(key, klen));
	if (!m->slots[i].key)
		return;
	free(m->slots[i].key);
	m->slots[i].key = NULL;
	m->n--;
	/* Move later entries of the probe run back so that lookups still find them. */
	for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
		size_t home = (size_t)m->slots[j].hash & mask;
		int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!between) {
			m->slots[i] = m->slots[j];
			m->slots[j].key = NULL;
			i = j;
		}
	}
}

void tsa_map_free(struct tsa_map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].key);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}
