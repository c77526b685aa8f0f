/* Node-wide limits: a shaped connection_limit or provider_connection_limit counts the
 * connections of every loop together, so a limit of 1 is one connection per kumod
 * whatever its thread count; a loop refused a slot is recorded as waiting and is woken
 * (through its kick list and eventfd) when another loop frees one. Shaped rates keep one
 * GCRA state per site or provider for all loops. */
#ifndef KUMO_ENGINE_NODELIMIT_H
#define KUMO_ENGINE_NODELIMIT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct kumo_engine;
struct kumo_loop;

enum kumo_slot_kind { KUMO_SLOT_SITE = 0, KUMO_SLOT_PROVIDER };
/* The rates a slot keeps: messages (transactions) and new connections. */
enum kumo_rate_kind { KUMO_RATE_MESSAGES = 0, KUMO_RATE_CONNECTIONS, KUMO_RATE_KINDS };

/* One limited thing (a site or a provider budget). Lives until the engine is freed, so
 * loops keep plain pointers to it. */
struct kumo_node_slot {
	struct kumo_node_slot *next;   /* hash chain */
	char *key;
	enum kumo_slot_kind kind;
	unsigned count;                /* connections held, all loops (under the lock) */
	_Atomic uint64_t waiting;      /* loops refused a slot: bit = loop index % 64 */
	uint32_t *local;               /* per loop: its site or provider index, or KUMO_NONE */
	double tat[KUMO_RATE_KINDS];   /* GCRA theoretical arrival times, ms (under the lock) */
};

struct kumo_node_limits {
	pthread_mutex_t lock;
	struct kumo_node_slot *buckets[1024];
	unsigned nloops;
};

void kumo_node_limits_init(struct kumo_node_limits *n, unsigned nloops);
void kumo_node_limits_fini(struct kumo_node_limits *n);
/* The slot of key (created on first use); NULL on ENOMEM. Records that loop knows it as
 * its local object index. */
struct kumo_node_slot *kumo_node_slot_get(struct kumo_node_limits *n, const char *key,
					  enum kumo_slot_kind kind, unsigned loop,
					  uint32_t local);
/* Takes one of limit connections; false (and loop recorded as waiting) when all are held. */
bool kumo_node_slot_take(struct kumo_node_limits *n, struct kumo_node_slot *s, unsigned limit,
			 unsigned loop);
/* Gives one back; the waiting loops are woken through kumo_loop_kick. */
void kumo_node_slot_release(struct kumo_engine *e, struct kumo_node_slot *s);
/* True when a loop other than loop waits for the slot. */
bool kumo_node_slot_contended(const struct kumo_node_slot *s, unsigned loop);
/* GCRA with emission interval T and tolerance tau (ms) over the slot's rate kind: the
 * wait before the next event may happen (0: now), and taking one event. */
uint64_t kumo_node_gcra_wait(struct kumo_node_limits *n, struct kumo_node_slot *s,
			     enum kumo_rate_kind kind, double T, double tau, double now);
void kumo_node_gcra_take(struct kumo_node_limits *n, struct kumo_node_slot *s,
			 enum kumo_rate_kind kind, double T, double now);

#endif
