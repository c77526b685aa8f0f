/* Configuration that changes while the engine runs: the shaping rules (files plus an
 * overlay, e.g. from tsa-daemon) and the active suspensions. Each version is an
 * immutable, reference-counted snapshot; loops pick up a new one on their tick, so no
 * lock is held while a loop reads it. */
#include "engine/internal.h"
#include "engine/shaping.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct kumo_shaping_ref {
	unsigned refs;
	struct kumo_shaping *sh;
};

static void shaping_put(struct kumo_shaping_ref *r)
{
	if (r && --r->refs == 0) {
		kumo_shaping_free(r->sh);
		free(r);
	}
}

static void conf_free(struct kumo_dynconf *c)
{
	shaping_put(c->shaping);
	for (size_t i = 0; i < c->nsusp; i++)
		free(c->susp[i].name);
	free(c->susp);
	free(c);
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
	if (last)
		shaping_put(c->shaping), c->shaping = NULL;
	pthread_mutex_unlock(&e->conf_lock);
	if (last)
		conf_free(c);
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

/* A new snapshot sharing the current one's shaping (and, if keep_susp, suspensions). */
static struct kumo_dynconf *derive(struct kumo_engine *e, bool keep_susp)
{
	struct kumo_dynconf *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	pthread_mutex_lock(&e->conf_lock);
	struct kumo_dynconf *cur = e->conf;
	n->shaping = cur ? cur->shaping : NULL;
	if (n->shaping)
		n->shaping->refs++;
	pthread_mutex_unlock(&e->conf_lock);
	if (keep_susp && cur && cur->nsusp) {
		n->susp = calloc(cur->nsusp, sizeof(*n->susp));
		for (size_t i = 0; n->susp && i < cur->nsusp; i++) {
			n->susp[i] = cur->susp[i];
			n->susp[i].name = strdup(cur->susp[i].name);
			n->nsusp = i + 1;
		}
	}
	return n;
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
		FILE *f = fopen(e->shaping_files[i], "rb");
		size_t cap = 0, got = 0, r;
		if (!f) {
			snprintf(err, errcap, "%s: %s", e->shaping_files[i], strerror(errno));
			rc = -errno;
			break;
		}
		do {
			if (got == cap) {
				char *nb = realloc(bufs[i], cap = cap ? cap * 2 : 65536);
				if (!nb) {
					rc = -ENOMEM;
					break;
				}
				bufs[i] = nb;
			}
			r = fread(bufs[i] + got, 1, cap - got, f);
			got += r;
		} while (r > 0);
		fclose(f);
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
	struct kumo_dynconf *c = derive(e, true);
	struct kumo_shaping_ref *r = sh ? calloc(1, sizeof(*r)) : NULL;
	if (!c || (sh && !r)) {
		kumo_shaping_free(sh);
		free(r);
		if (c) {
			c->refs = 1;
			kumo_conf_put(e, c);
		}
		return -ENOMEM;
	}
	pthread_mutex_lock(&e->conf_lock);
	struct kumo_shaping_ref *old = c->shaping;
	if (old)
		old->refs--; /* derive() took one for c; c gets the new rules instead */
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
	struct kumo_dynconf *c = derive(e, false);
	if (!c)
		return -ENOMEM;
	c->susp = calloc(n ? n : 1, sizeof(*c->susp));
	for (size_t i = 0; c->susp && i < n; i++) {
		if ((unsigned)s[i].kind > KUMO_SUSPEND_DOMAIN || !s[i].name) {
			c->refs = 1;
			kumo_conf_put(e, c);
			return -EINVAL;
		}
		c->susp[i] = (struct kumo_susp){.kind = s[i].kind, .name = strdup(s[i].name),
						.expires_ms = s[i].expires_ms};
		c->nsusp = i + 1;
		if (!c->susp[i].name)
			break;
	}
	if (!c->susp || c->nsusp != n) {
		c->refs = 1;
		kumo_conf_put(e, c);
		return -ENOMEM;
	}
	publish(e, c);
	return 0;
}

uint64_t kumo_conf_suspended(const struct kumo_dynconf *c, enum kumo_suspend_kind kind,
			     const char *name, size_t name_len, uint64_t now_ms)
{
	for (size_t i = 0; c && i < c->nsusp; i++) {
		const struct kumo_susp *s = &c->susp[i];
		if (s->kind == (int)kind && s->expires_ms > now_ms && strlen(s->name) == name_len &&
		    strncasecmp(s->name, name, name_len) == 0)
			return s->expires_ms;
	}
	return 0;
}

const struct kumo_shaping *kumo_conf_shaping(const struct kumo_dynconf *c)
{
	return c && c->shaping ? c->shaping->sh : NULL;
}
