/* Provider budgets: provider_connection_limit and provider_max_message_rate as one limit
 * per provider and egress source over every site the provider matches (per loop). Sites
 * refused a connection because the budget is spent wait in its FIFO and are offered the
 * next connection freed. */
#ifndef KUMO_ENGINE_PROVIDER_H
#define KUMO_ENGINE_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kumo_provider_budget {
	char *name;               /* owned */
	uint32_t source;          /* egress source index, or KUMO_NONE */
	unsigned nconns;          /* connections open to the provider's sites */
	unsigned conn_limit;      /* 0: no connection budget; the whole node's */
	struct kumo_node_slot *node_slot; /* the count over all loops, or NULL */
	double T, tau, tat;       /* GCRA over transactions; T 0: no rate */
	uint32_t *waiting;        /* sites waiting for a connection, oldest first (owned) */
	size_t nwaiting, capwaiting;
};

/* The budgets of one loop. Indexes stay valid until kumo_providers_free. */
struct kumo_providers {
	struct kumo_provider_budget *v;
	size_t n;
};

/* The budget of (name, source), created on first use; KUMO_NONE on ENOMEM. */
uint32_t kumo_provider_intern(struct kumo_providers *ps, const char *name, uint32_t source);
bool kumo_provider_full(const struct kumo_provider_budget *b);
/* Queues site for the next free connection; false when it was already waiting. */
bool kumo_provider_wait(struct kumo_provider_budget *b, uint32_t site);
/* The oldest waiting site (removed), or KUMO_NONE. */
uint32_t kumo_provider_next_waiter(struct kumo_provider_budget *b);
/* Whether a site other than site is waiting. */
bool kumo_provider_others_wait(const struct kumo_provider_budget *b, uint32_t site);
void kumo_providers_free(struct kumo_providers *ps);

#endif
