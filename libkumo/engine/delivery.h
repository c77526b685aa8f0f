/* Delivery on a loop: scheduled queues into ready queues (per site: MX set or smart
 * host), outbound SMTP connections, per-recipient outcomes, retries with backoff,
 * bounces and expirations with DSNs, and the spool updates that make them durable. */
#ifndef KUMO_ENGINE_DELIVERY_H
#define KUMO_ENGINE_DELIVERY_H

#include <stdbool.h>
#include <stdint.h>

struct kumo_loop;
struct kumo_put;

int kumo_delivery_init(struct kumo_loop *l);
void kumo_delivery_fini(struct kumo_loop *l);
/* At engine start: smart host and route sites; due messages start moving. */
int kumo_delivery_start(struct kumo_loop *l);

/* A message record is durable: give it a queue record, due at due_ms. */
int kumo_delivery_enqueue(struct kumo_loop *l, const struct kumo_put *p, uint64_t due_ms,
			  unsigned attempts);

/* Once a second: due messages, timeouts, idle connections, DNS timeouts. */
void kumo_delivery_tick(struct kumo_loop *l);
/* Completions of outbound connection SQEs and DNS polls. */
void kumo_delivery_io_done(struct kumo_loop *l, uint64_t ud, int res);
void kumo_delivery_dns_done(struct kumo_loop *l, uint64_t ud, int res);
/* A site's shaping timer fired: its ready queue may move again. */
void kumo_delivery_timer_done(struct kumo_loop *l, uint64_t ud);
/* Completions of the Redis connection's polls. */
void kumo_delivery_throttle_done(struct kumo_loop *l, uint64_t ud, int res);
/* Another loop freed a connection of node-wide slot s (nodelimit.h) this loop waited for. */
struct kumo_node_slot;
void kumo_delivery_slot_freed(struct kumo_loop *l, struct kumo_node_slot *s);
/* Stop taking messages; force closes every connection. */
void kumo_delivery_shutdown(struct kumo_loop *l, bool force);
/* True when no outbound connection is open. */
bool kumo_delivery_idle(const struct kumo_loop *l);

#endif
