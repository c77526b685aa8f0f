/* Provider budgets (provider.h): the table of per-loop provider limits and the FIFO of
 * sites waiting for one of a provider's connections. */
#include "engine/provider.h"
#include "engine/queue.h"

#include <stdlib.h>
#include <string.h>

uint32_t kumo_provider_intern(struct kumo_providers *ps, const char *name, uint32_t source)
{
	for (size_t i = 0; i < ps->n; i++)
		if (ps->v[i].source == source && strcmp(ps->v[i].name, name) == 0)
			return (uint32_t)i;
	struct kumo_provider_budget *v = realloc(ps->v, (ps->n + 1) * sizeof(*v));
	if (!v)
		return KUMO_NONE;
	ps->v = v;
	struct kumo_provider_budget *b = &v[ps->n];
	memset(b, 0, sizeof(*b));
	b->source = source;
	if (!(b->name = strdup(name)))
		return KUMO_NONE;
	return (uint32_t)ps->n++;
}

bool kumo_provider_full(const struct kumo_provider_budget *b)
{
	return b->conn_limit && b->nconns >= b->conn_limit;
}

bool kumo_provider_wait(struct kumo_provider_budget *b, uint32_t site)
{
	for (size_t i = 0; i < b->nwaiting; i++)
		if (b->waiting[i] == site)
			return false;
	if (b->nwaiting == b->capwaiting) {
		size_t cap = b->capwaiting ? b->capwaiting * 2 : 8;
		uint32_t *w = realloc(b->waiting, cap * sizeof(*w));
		if (!w)
			return false;
		b->waiting = w;
		b->capwaiting = cap;
	}
	b->waiting[b->nwaiting++] = site;
	return true;
}

uint32_t kumo_provider_next_waiter(struct kumo_provider_budget *b)
{
	if (!b->nwaiting)
		return KUMO_NONE;
	uint32_t site = b->waiting[0];
	memmove(b->waiting, b->waiting + 1, --b->nwaiting * sizeof(*b->waiting));
	return site;
}

bool kumo_provider_others_wait(const struct kumo_provider_budget *b, uint32_t site)
{
	for (size_t i = 0; i < b->nwaiting; i++)
		if (b->waiting[i] != site)
			return true;
	return false;
}

void kumo_providers_free(struct kumo_providers *ps)
{
	for (size_t i = 0; i < ps->n; i++) {
		free(ps->v[i].name);
		free(ps->v[i].waiting);
	}
	free(ps->v);
	ps->v = NULL;
	ps->n = 0;
}
