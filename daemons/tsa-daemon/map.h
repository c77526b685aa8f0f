/* tsa-daemon: a string-keyed hash map of indices (open addressing, linear probing,
 * backward-shift deletion), for the engine's actions and threshold counters. */
#ifndef TSA_MAP_H
#define TSA_MAP_H

#include <stddef.h>
#include <stdint.h>

struct tsa_map_slot {
	char *key; /* owned; NULL: empty slot */
	size_t klen;
	uint64_t hash;
	size_t val;
};

struct tsa_map {
	struct tsa_map_slot *slots;
	size_t cap; /* a power of two, or 0 */
	size_t n;
};

/* The value stored under key, or NULL. Valid until the next put or del. */
size_t *tsa_map_get(const struct tsa_map *m, const char *key, size_t klen);
/* Stores val under key (a copy of the key is kept); replaces an existing value. 0 or
 * -ENOMEM. */
int tsa_map_put(struct tsa_map *m, const char *key, size_t klen, size_t val);
/* Removes key; nothing when absent. */
void tsa_map_del(struct tsa_map *m, const char *key, size_t klen);
void tsa_map_free(struct tsa_map *m);

#endif
