/* kumod's readers of what tsa-daemons serve besides overlays: suspended.json into the
 * engine's suspensions and bounced.json into its bounces, one daemon's answer or the union
 * of several. Strings are copied into storage the caller gives; nothing is allocated. */
#include "tsa.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/json_read.h"

/* "2026-11-25T14:00:00Z" (or with fractional seconds) -> Unix ms; 0 when malformed. */
static uint64_t rfc3339_ms(const char *s)
{
	struct tm tm = {0};
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return 0;
	return (uint64_t)timegm(&tm) * 1000;
}

static size_t stash(char *storage, size_t cap, size_t *used, const char *s, size_t n)
{
	if (*used + n + 1 > cap)
		return (size_t)-1;
	memcpy(storage + *used, s, n);
	storage[*used + n] = 0;
	size_t at = *used;
	*used += n + 1;
	return at;
}

/* The "expires" of an entry in Unix ms when it is later than now_ms, else 0. */
static uint64_t active_until(const struct kumo_json_value *v, uint64_t now_ms)
{
	const char *exp = kumo_json_string(kumo_json_get(v, "expires"), NULL);
	uint64_t until = exp ? rfc3339_ms(exp) : 0;
	return until > now_ms ? until : 0;
}

/* The queue an entry of suspended.json names; list 0 is ready_q, 1 sched_q. */
static const char *suspended_name(const struct kumo_json_value *v, int list, size_t *sl,
				  enum kumo_suspend_kind *kind)
{
	const char *name;
	*kind = KUMO_SUSPEND_SITE;
	if (list == 0) {
		const char *src = kumo_json_string(kumo_json_get(v, "source"), NULL);
		/* without an egress pool kumod's ready queue is the site itself */
		return src && strcmp(src, "unspecified") == 0
			   ? kumo_json_string(kumo_json_get(v, "site"), sl)
			   : kumo_json_string(kumo_json_get(v, "site_name"), sl);
	}
	*kind = KUMO_SUSPEND_CAMPAIGN;
	if ((name = kumo_json_string(kumo_json_get(v, "campaign"), sl)))
		return name;
	*kind = KUMO_SUSPEND_TENANT;
	if ((name = kumo_json_string(kumo_json_get(v, "tenant"), sl)) && *sl)
		return name;
	*kind = KUMO_SUSPEND_DOMAIN;
	return kumo_json_string(kumo_json_get(v, "domain"), sl);
}

/* kumod_tsa_parse_suspensions with storage already used up to *used. */
static long parse_suspensions(const char *json, size_t len, uint64_t now_ms,
			      struct kumo_suspension *out, size_t cap, char *storage,
			      size_t cap_storage, size_t *used)
{
	struct kumo_json_doc *doc;
	size_t end, n = 0;
	if (kumo_json_parse(json, len, &end, &doc, NULL) < 0)
		return -EINVAL;
	const struct kumo_json_value *root = kumo_json_doc_root(doc);
	static const char *const lists[] = {"ready_q", "sched_q"};
	for (int l = 0; l < 2; l++) {
		const struct kumo_json_value *a = kumo_json_get(root, lists[l]);
		for (size_t i = 0; i < kumo_json_count(a) && n < cap; i++) {
			const struct kumo_json_value *v = kumo_json_at(a, i);
			uint64_t until = active_until(v, now_ms);
			size_t sl;
			enum kumo_suspend_kind kind;
			const char *name = until ? suspended_name(v, l, &sl, &kind) : NULL;
			size_t at = name ? stash(storage, cap_storage, used, name, sl) : (size_t)-1;
			if (at == (size_t)-1)
				continue;
			out[n++] = (struct kumo_suspension){
			    .kind = kind, .name = storage + at, .expires_ms = until};
		}
	}
	kumo_json_doc_free(doc);
	return (long)n;
}

long kumod_tsa_parse_suspensions(const char *json, size_t len, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage)
{
	size_t used = 0;
	return parse_suspensions(json, len, now_ms, out, cap, storage, cap_storage, &used);
}

/* A string member of v copied to storage; NULL when absent, null or "", or when storage
 * is full (then *full is set). */
static const char *stash_member(const struct kumo_json_value *v, const char *key, char *storage,
				size_t cap, size_t *used, bool *full)
{
	size_t n;
	const char *s = kumo_json_string(kumo_json_get(v, key), &n);
	if (!s || !n)
		return NULL;
	size_t at = stash(storage, cap, used, s, n);
	*full |= at == (size_t)-1;
	return at == (size_t)-1 ? NULL : storage + at;
}

/* kumod_tsa_parse_bounces with storage already used up to *used. */
static long parse_bounces(const char *json, size_t len, uint64_t now_ms, struct kumo_bounce *out,
			  size_t cap, char *storage, size_t cap_storage, size_t *used)
{
	struct kumo_json_doc *doc;
	size_t end, n = 0;
	if (kumo_json_parse(json, len, &end, &doc, NULL) < 0)
		return -EINVAL;
	const struct kumo_json_value *a = kumo_json_doc_root(doc);
	for (size_t i = 0; i < kumo_json_count(a) && n < cap; i++) {
		const struct kumo_json_value *v = kumo_json_at(a, i);
		bool full = false;
		size_t mark = *used;
		struct kumo_bounce b = {
		    .expires_ms = active_until(v, now_ms),
		    .domain = stash_member(v, "domain", storage, cap_storage, used, &full),
		    .tenant = stash_member(v, "tenant", storage, cap_storage, used, &full),
		    .campaign = stash_member(v, "campaign", storage, cap_storage, used, &full),
		    .reason = stash_member(v, "reason", storage, cap_storage, used, &full)};
		/* an entry naming no queue would bounce them all: never from tsa-daemon */
		if (b.expires_ms && !full && (b.domain || b.tenant || b.campaign))
			out[n++] = b;
		else
			*used = mark; /* its strings are not kept */
	}
	kumo_json_doc_free(doc);
	return (long)n;
}

long kumod_tsa_parse_bounces(const char *json, size_t len, uint64_t now_ms, struct kumo_bounce *out,
			     size_t cap, char *storage, size_t cap_storage)
{
	size_t used = 0;
	return parse_bounces(json, len, now_ms, out, cap, storage, cap_storage, &used);
}

/* Parses each document after the entries already stored: suspensions into s, or bounces
 * into b. A document that does not parse adds nothing. Returns the count stored. */
static size_t union_of(const char *const *docs, size_t ndocs, uint64_t now_ms,
		       struct kumo_suspension *s, struct kumo_bounce *b, size_t cap, char *storage,
		       size_t cap_storage)
{
	size_t n = 0, used = 0;
	for (size_t i = 0; i < ndocs; i++) {
		if (!docs[i])
			continue;
		size_t len = strlen(docs[i]);
		long got = s ? parse_suspensions(docs[i], len, now_ms, s + n, cap - n, storage,
						 cap_storage, &used)
			     : parse_bounces(docs[i], len, now_ms, b + n, cap - n, storage,
					     cap_storage, &used);
		n += got > 0 ? (size_t)got : 0;
	}
	return n;
}

long kumod_tsa_union_suspensions(const char *const *docs, size_t ndocs, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage)
{
	size_t n = union_of(docs, ndocs, now_ms, out, NULL, cap, storage, cap_storage), kept = 0;
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;
		while (j < kept &&
		       (out[j].kind != out[i].kind || strcasecmp(out[j].name, out[i].name)))
			j++;
		if (j == kept)
			out[kept++] = out[i];
		else if (out[i].expires_ms > out[j].expires_ms)
			out[j].expires_ms = out[i].expires_ms;
	}
	return (long)kept;
}

long kumod_tsa_union_bounces(const char *const *docs, size_t ndocs, uint64_t now_ms,
			     struct kumo_bounce *out, size_t cap, char *storage, size_t cap_storage)
{
	return (long)union_of(docs, ndocs, now_ms, NULL, out, cap, storage, cap_storage);
}
