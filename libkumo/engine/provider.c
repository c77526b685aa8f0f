/* Provider budgets (provider.h): the table of per-loop provider limits and the FIFOs of
 * sites waiting for one of a provider's connections or for its shared rate. */
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

bool kumo_site_fifo_push(struct kumo_site_fifo *f, uint32_t site)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->v[i] == site)
			return false;
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 8;
		uint32_t *v = realloc(f->v, cap * sizeof(*v));
		if (!v)
			return false;
		f->v = v;
		f->cap = cap;
	}
	f->v[f->n++] = site;
	return true;
}

uint32_t kumo_site_fifo_pop(struct kumo_site_fifo *f)
{
	if (!f->n)
		return KUMO_NONE;
	uint32_t site = f->v[0];
	memmove(f->v, f->v + 1, --f->n * sizeof(*f->v));
	return site;
}

bool kumo_site_fifo_has_other(const struct kumo_site_fifo *f, uint32_t site)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->v[i] != site)
			return true;
	return false;
}

void kumo_providers_free(struct kumo_providers *ps)
{
	for (size_t i = 0; i < ps->n; i++) {
		free(ps->v[i].name);
		free(ps->v[i].waiting.v);
		free(ps->v[i].token_waiting.v);
	}
	free(ps->v);
	ps->v = NULL;
	ps->n = 0;
}
