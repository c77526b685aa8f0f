/* Configuration that changes while the engine runs: the shaping rules (files plus an
 * overlay, e.g. from tsa-daemon), the suspensions and the bounces. Each version is an
 * immutable, reference-counted snapshot; loops pick up a new one on their tick, so no
 * lock is held while a loop reads it. */
#include "engine/internal.h"
#include "engine/shaping.h"
#include "util/file.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct kumo_shaping_ref {
	unsigned refs;
	struct kumo_shaping *sh;
};

struct kumo_conf_list {
	unsigned refs;          /* under kumo_engine.conf_lock */
	size_t n;
	char *next_str;         /* where the next string goes while it is built */
	_Alignas(max_align_t) unsigned char entries[]; /* n entries, then their strings */
};

/* The two callers below hold kumo_engine.conf_lock. */
static void shaping_put(struct kumo_shaping_ref *r)
{
	if (r && --r->refs == 0) {
		kumo_shaping_free(r->sh);
		free(r);
	}
}

static void list_put(struct kumo_conf_list *l)
{
	if (l && --l->refs == 0)
		free(l);
}

/* A list of n entries of esize bytes with room for str_bytes of strings; refs 1. */
static struct kumo_conf_list *list_new(size_t n, size_t esize, size_t str_bytes)
{
	struct kumo_conf_list *l = malloc(sizeof(*l) + n * esize + str_bytes);
	if (l)
		*l = (struct kumo_conf_list){.refs = 1, .n = n,
					     .next_str = (char *)l->entries + n * esize};
	return l;
}

/* A copy of s in the list's string space; NULL and "" give NULL. */
static const char *list_str(struct kumo_conf_list *l, const char *s)
{
	if (!s || !*s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *at = memcpy(l->next_str, s, n);
	l->next_str += n;
	return at;
}

static bool named(const char *s)
{
	return s && *s;
}

static size_t str_bytes(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

/* The snapshot's views of its lists. */
static void list_views(struct kumo_dynconf *c)
{
	c->susp = c->susp_list ? (const void *)c->susp_list->entries : NULL;
	c->nsusp = c->susp_list ? c->susp_list->n : 0;
	c->bounces = c->bnc_list ? (const void *)c->bnc_list->entries : NULL;
	c->nbounces = c->bnc_list ? c->bnc_list->n : 0;
}

struct kumo_dynconf *kumo_conf_get(struct kumo_engine *e)
{
	pthread_mutex_lock(&e->conf_lock);
	struct kumo_dynconf *c = e->conf;
	if (c)
		c->refs++;
	pthread_mutex_unlock(&e->conf_lock);
	return c;
}

void kumo_conf_put(struct kumo_engine *e, struct kumo_dynconf *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&e->conf_lock);
	bool last = --c->refs == 0;
	if (last) {
		shaping_put(c->shaping);
		list_put(c->susp_list);
		list_put(c->bnc_list);
	}
	pthread_mutex_unlock(&e->conf_lock);
	if (last)
		free(c);
}

/* Makes c the current snapshot (the engine holds one reference to it). */
static void publish(struct kumo_engine *e, struct kumo_dynconf *c)
{
	pthread_mutex_lock(&e->conf_lock);
	struct kumo_dynconf *old = e->conf;
	c->refs = 1;
	c->gen = ++e->conf_gen_next;
	e->conf = c;
	atomic_store(&e->conf_gen, c->gen);
	pthread_mutex_unlock(&e->conf_lock);
	kumo_conf_put(e, old);
}

/* A new snapshot (refs 1) sharing everything of the current one. */
static struct kumo_dynconf *derive(struct kumo_engine *e)
{
	struct kumo_dynconf *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->refs = 1;
	pthread_mutex_lock(&e->conf_lock);
	struct kumo_dynconf *cur = e->conf;
	if (cur) {
		n->shaping = cur->shaping;
		n->susp_list = cur->susp_list;
		n->bnc_list = cur->bnc_list;
	}
	if (n->shaping)
		n->shaping->refs++;
	if (n->susp_list)
		n->susp_list->refs++;
	if (n->bnc_list)
		n->bnc_list->refs++;
	pthread_mutex_unlock(&e->conf_lock);
	list_views(n);
	return n;
}

/* Publishes a snapshot like the current one but with list l (taken over) in *slot's
 * place: slot is &c->susp_list or &c->bnc_list of a derived snapshot c. */
static int publish_list(struct kumo_engine *e, size_t slot_off, struct kumo_conf_list *l)
{
	struct kumo_dynconf *c = l ? derive(e) : NULL;
	if (!c) {
		free(l);
		return -ENOMEM;
	}
	struct kumo_conf_list **slot = (struct kumo_conf_list **)((char *)c + slot_off);
	pthread_mutex_lock(&e->conf_lock);
	list_put(*slot);
	*slot = l;
	pthread_mutex_unlock(&e->conf_lock);
	list_views(c);
	publish(e, c);
	return 0;
}

int kumo_conf_init(struct kumo_engine *e, const char *const *files, size_t nfiles, char *err,
		   size_t errcap)
{
	pthread_mutex_init(&e->conf_lock, NULL);
	struct kumo_dynconf *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	e->shaping_files = calloc(nfiles ? nfiles : 1, sizeof(char *));
	if (!e->shaping_files) {
		free(c);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nfiles; i++)
		if (!(e->shaping_files[e->nshaping_files++] = strdup(files[i])))
			return -ENOMEM;
	if (nfiles) {
		c->shaping = calloc(1, sizeof(*c->shaping));
		int rc = c->shaping ? kumo_shaping_load(files, nfiles, &c->shaping->sh, err, errcap)
				    : -ENOMEM;
		if (rc < 0) {
			free(c->shaping);
			free(c);
			return rc;
		}
		c->shaping->refs = 1;
	}
	publish(e, c);
	return 0;
}

void kumo_conf_fini(struct kumo_engine *e)
{
	kumo_conf_put(e, e->conf);
	e->conf = NULL;
	for (size_t i = 0; i < e->nshaping_files; i++)
		free(e->shaping_files[i]);
	free(e->shaping_files);
	pthread_mutex_destroy(&e->conf_lock);
}

/* Reads every configured file and the overlay, in that order. */
static int load_with_overlay(struct kumo_engine *e, const char *toml, size_t len,
			     struct kumo_shaping **out, char *err, size_t errcap)
{
	size_t n = e->nshaping_files + (toml ? 1 : 0);
	struct kumo_shaping_text *t = calloc(n ? n : 1, sizeof(*t));
	char **bufs = calloc(n ? n : 1, sizeof(char *));
	int rc = t && bufs ? 0 : -ENOMEM;
	for (size_t i = 0; !rc && i < e->nshaping_files; i++) {
		size_t got = 0;
		if ((rc = kumo_read_file(e->shaping_files[i], &bufs[i], &got)) < 0) {
			snprintf(err, errcap, "%s: %s", e->shaping_files[i], strerror(-rc));
			break;
		}
		t[i] = (struct kumo_shaping_text){.name = e->shaping_files[i], .data = bufs[i],
						  .len = got};
	}
	if (!rc && toml)
		t[n - 1] = (struct kumo_shaping_text){.name = "<overlay>", .data = toml, .len = len};
	if (!rc)
		rc = kumo_shaping_load_texts(t, n, out, err, errcap);
	for (size_t i = 0; bufs && i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(t);
	return rc;
}

int kumo_engine_set_shaping_overlay(struct kumo_engine *e, const char *toml, size_t len,
				    char *err, size_t errcap)
{
	struct kumo_shaping *sh = NULL;
	char dummy[8];
	if (!err || !errcap)
		err = dummy, errcap = sizeof(dummy);
	int rc = (toml || e->nshaping_files) ? load_with_overlay(e, toml, len, &sh, err, errcap)
					     : 0;
	if (rc < 0)
		return rc;
	struct kumo_dynconf *c = derive(e);
	struct kumo_shaping_ref *r = sh ? calloc(1, sizeof(*r)) : NULL;
	if (!c || (sh && !r)) {
		kumo_shaping_free(sh);
		free(r);
		kumo_conf_put(e, c);
		return -ENOMEM;
	}
	pthread_mutex_lock(&e->conf_lock);
	shaping_put(c->shaping); /* derive() took one for c; c gets the new rules instead */
	pthread_mutex_unlock(&e->conf_lock);
	if (r) {
		r->refs = 1;
		r->sh = sh;
	}
	c->shaping = r;
	publish(e, c);
	return 0;
}

int kumo_engine_set_suspensions(struct kumo_engine *e, const struct kumo_suspension *s, size_t n)
{
	size_t bytes = 0;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned)s[i].kind > KUMO_SUSPEND_DOMAIN || !s[i].name || !*s[i].name)
			return -EINVAL;
		bytes += str_bytes(s[i].name);
	}
	struct kumo_conf_list *l = list_new(n, sizeof(struct kumo_susp), bytes);
	for (size_t i = 0; l && i < n; i++)
		((struct kumo_susp *)l->entries)[i] = (struct kumo_susp){
			.kind = s[i].kind, .name = list_str(l, s[i].name),
			.expires_ms = s[i].expires_ms};
	return publish_list(e, offsetof(struct kumo_dynconf, susp_list), l);
}

int kumo_engine_set_bounces(struct kumo_engine *e, const struct kumo_bounce *b, size_t n)
{
	size_t bytes = 0;
	for (size_t i = 0; i < n; i++) {
		if (!named(b[i].domain) && !named(b[i].tenant) && !named(b[i].campaign))
			return -EINVAL; /* it would bounce every queue */
		bytes += str_bytes(b[i].domain) + str_bytes(b[i].tenant) +
			 str_bytes(b[i].campaign) + str_bytes(b[i].reason);
	}
	struct kumo_conf_list *l = list_new(n, sizeof(struct kumo_bnc), bytes);
	for (size_t i = 0; l && i < n; i++)
		((struct kumo_bnc *)l->entries)[i] = (struct kumo_bnc){
			.domain = list_str(l, b[i].domain), .tenant = list_str(l, b[i].tenant),
			.campaign = list_str(l, b[i].campaign), .reason = list_str(l, b[i].reason),
			.expires_ms = b[i].expires_ms};
	return publish_list(e, offsetof(struct kumo_dynconf, bnc_list), l);
}

/* name (NUL-terminated) equals the len bytes at s, but for case. */
static bool name_eq(const char *name, const char *s, size_t len)
{
	return strlen(name) == len && strncasecmp(name, s, len) == 0;
}

uint64_t kumo_conf_suspended(const struct kumo_dynconf *c, enum kumo_suspend_kind kind,
			     const char *name, size_t name_len, uint64_t now_ms)
{
	for (size_t i = 0; c && i < c->nsusp; i++) {
		const struct kumo_susp *s = &c->susp[i];
		if (s->kind == (int)kind && s->expires_ms > now_ms && name_eq(s->name, name, name_len))
			return s->expires_ms;
	}
	return 0;
}

int32_t kumo_conf_bounce(const struct kumo_dynconf *c, const struct kumo_queue_parts *p)
{
	int32_t best = -1;
	for (size_t i = 0; c && i < c->nbounces && i < INT32_MAX; i++) {
		const struct kumo_bnc *b = &c->bounces[i];
		if ((b->domain && !name_eq(b->domain, p->domain, p->domain_len)) ||
		    (b->tenant && !name_eq(b->tenant, p->tenant, p->tenant_len)) ||
		    (b->campaign && !name_eq(b->campaign, p->campaign, p->campaign_len)))
			continue;
		if (best < 0 || b->expires_ms > c->bounces[best].expires_ms)
			best = (int32_t)i;
	}
	return best;
}

const struct kumo_shaping *kumo_conf_shaping(const struct kumo_dynconf *c)
{
	return c && c->shaping ? c->shaping->sh : NULL;
}
