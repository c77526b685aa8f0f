/* Provider budgets: provider_connection_limit and provider_max_message_rate as one limit
 * per provider and egress source over every site the provider matches (per loop). Sites
 * refused a connection because the budget is spent wait in its FIFO and are offered the
 * next connection freed. */
#ifndef KUMO_ENGINE_PROVIDER_H
#define KUMO_ENGINE_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sites waiting for something of a budget, oldest first, each once (v owned). */
struct kumo_site_fifo {
	uint32_t *v;
	size_t n, cap;
};

struct kumo_provider_budget {
	char *name;               /* owned */
	uint32_t source;          /* egress source index, or KUMO_NONE */
	unsigned nconns;          /* connections open to the provider's sites */
	unsigned conn_limit;      /* 0: no connection budget; the whole node's */
	struct kumo_node_slot *node_slot; /* the count over all loops, or NULL */
	struct kumo_node_slot *rate_slot; /* the GCRA state of all loops, or NULL */
	double T, tau, tat;       /* GCRA over transactions; T 0: no rate */
	struct kumo_site_fifo waiting;  /* sites waiting for a connection */
	/* shared through Redis with other nodes (limits not marked "local:") */
	uint64_t shared_conn_limit;   /* 0: node-local; else one lease per connection */
	bool lease_pending;
	char lease_ready[80];         /* a granted lease waiting for its connection, or "" */
	uint64_t shared_count, shared_period_ms, shared_burst; /* shared_count 0: local rate */
	bool token_pending, token_ready;
	struct kumo_site_fifo token_waiting; /* sites waiting for the shared rate's token */
};

/* The budgets of one loop. Indexes stay valid until kumo_providers_free. */
struct kumo_providers {
	struct kumo_provider_budget *v;
	size_t n;
};

/* The budget of (name, source), created on first use; KUMO_NONE on ENOMEM. */
uint32_t kumo_provider_intern(struct kumo_providers *ps, const char *name, uint32_t source);
bool kumo_provider_full(const struct kumo_provider_budget *b);
/* Adds site at the end; false when it was there already (or on ENOMEM). */
bool kumo_site_fifo_push(struct kumo_site_fifo *f, uint32_t site);
/* The oldest site (removed), or KUMO_NONE. */
uint32_t kumo_site_fifo_pop(struct kumo_site_fifo *f);
/* Whether a site other than site is in f. */
bool kumo_site_fifo_has_other(const struct kumo_site_fifo *f, uint32_t site);
void kumo_providers_free(struct kumo_providers *ps);

#endif
