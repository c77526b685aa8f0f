/* tsa-daemon: the automation engine; see engine.h. Actions in force live in an array
 * indexed by a map from (kind, rule hash, target); threshold counters are rings of the
 * last N match times (N = the threshold count) or, for large N, 128 time buckets. */
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "map.h"

#define MAX_HOSTS 32
#define RING_MAX 4096	  /* thresholds up to this count are counted exactly */
#define NBUCKETS 128	  /* above it, in this many buckets over the period */
#define PERSIST_STEP 1000 /* an extension shorter than this (ms) is not saved again */
#define REASON_RESPONSE_MAX 200

struct window {
	char *key;	       /* rule hash, source and site: owned */
	int64_t period_ms;     /* of the threshold */
	uint64_t limit;	       /* matches within the period that trigger the rule */
	int64_t newest;	       /* time of the newest match counted (ms) */
	bool buckets;	       /* counted in buckets rather than exactly */
	uint32_t cap, n, head; /* exact: a ring of the last cap match times, oldest at head */
	int64_t *ts;	       /* exact: match times; buckets: the bucket id of each slot */
	uint64_t *counts;      /* buckets: matches per slot */
	int64_t width;	       /* buckets: ms per bucket */
};

struct tsa_engine {
	struct tsa_rules *rules;
	struct tsa_engine_cfg cfg;
	struct tsa_action *acts; /* in force (some possibly expired until the next expire()) */
	size_t nacts, capacts;
	struct tsa_map act_index; /* action key -> index in acts */
	struct window *wins;
	size_t nwins, capwins;
	struct tsa_map win_index; /* window key -> index in wins */
	struct tsa_map bound;	  /* "domain\x1fsite" pairs already offered to bind_site */
	const struct kumo_shaping_rule **rulebuf;
	size_t rulecap;
	struct kumo_buf key, line, reason, tmp; /* scratch */
	struct tsa_engine_stats st;
};

/* ---- small helpers ------------------------------------------------------------------ */

static const char *jstr(const struct kumo_json_value *obj, const char *key)
{
	return kumo_json_string(kumo_json_get(obj, key), NULL);
}

static char *buf_str(struct kumo_buf *b)
{
	kumo_buf_putc(b, 0);
	return b->oom ? NULL : b->data;
}

/* Appends s with control characters as spaces and at most max bytes (cut at a UTF-8
 * character boundary, then "..."). */
static void put_clean(struct kumo_buf *b, const char *s, size_t max)
{
	size_t n = strlen(s), i;
	bool cut = n > max;
	if (cut) {
		n = max;
		while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		kumo_buf_putc(b, c < 0x20 || c == 0x7f ? ' ' : (char)c);
	}
	if (cut)
		kumo_buf_puts(b, "...");
}

/* Two 64-bit FNV-1a lanes with different bases: a 128-bit rule identity that stays the
 * same across restarts as long as the rule text does. */
struct hash {
	uint64_t a, b;
};

static void hash_bytes(struct hash *h, const void *p, size_t n)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++) {
		h->a = (h->a ^ c[i]) * 0x100000001b3ull;
		h->b = (h->b ^ c[i]) * 0x100000001b3ull;
		h->b ^= h->b >> 29;
	}
}

static void hash_str(struct hash *h, const char *s)
{
	hash_bytes(h, s ? s : "", (s ? strlen(s) : 0) + 1);
}

static void hash_u64(struct hash *h, uint64_t v)
{
	hash_bytes(h, &v, sizeof(v));
}

static void rule_hash(const struct kumo_shaping_rule *r, struct hash *h)
{
	h->a = 0xcbf29ce484222325ull;
	h->b = 0x84222325cbf29ce4ull;
	hash_u64(h, r->scope);
	hash_str(h, r->entry);
	for (size_t i = 0; i < r->nregex; i++)
		hash_str(h, r->regex[i]);
	for (size_t i = 0; i < r->nactions; i++) {
		hash_u64(h, r->actions[i].kind);
		hash_str(h, r->actions[i].name);
		hash_str(h, r->actions[i].value);
	}
	hash_u64(h, r->immediate);
	hash_u64(h, r->threshold.count);
	hash_u64(h, r->threshold.period_ms);
	hash_u64(h, r->duration_ms);
	hash_u64(h, r->match_internal);
}

static void hash_hex(const struct hash *h, char out[33])
{
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)h->a, (unsigned long long)h->b);
}

/* ---- construction ---------------------------------------------------------------------- */

int tsa_engine_new(struct tsa_rules *rules, const struct tsa_engine_cfg *cfg,
		   struct tsa_engine **out)
{
	struct tsa_engine *e = calloc(1, sizeof(*e));
	*out = NULL;
	if (!e)
		return -ENOMEM;
	e->rules = rules;
	if (cfg)
		e->cfg = *cfg;
	if (!e->cfg.max_windows)
		e->cfg.max_windows = 100000;
	e->rulecap = 64;
	if (!(e->rulebuf = calloc(e->rulecap, sizeof(*e->rulebuf)))) {
		free(e);
		return -ENOMEM;
	}
	*out = e;
	return 0;
}

static void window_free(struct window *w)
{
	free(w->key);
	free(w->ts);
	free(w->counts);
}

void tsa_engine_free(struct tsa_engine *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->nacts; i++)
		tsa_action_clear(&e->acts[i]);
	free(e->acts);
	for (size_t i = 0; i < e->nwins; i++)
		window_free(&e->wins[i]);
	free(e->wins);
	tsa_map_free(&e->act_index);
	tsa_map_free(&e->win_index);
	tsa_map_free(&e->bound);
	free(e->rulebuf);
	kumo_buf_free(&e->key);
	kumo_buf_free(&e->line);
	kumo_buf_free(&e->reason);
	kumo_buf_free(&e->tmp);
	free(e);
}

void tsa_engine_set_persist(struct tsa_engine *e,
			    void (*persist)(void *arg, const struct tsa_action *a), void *arg)
{
	e->cfg.persist = persist;
	e->cfg.persist_arg = arg;
}

void tsa_engine_stats(const struct tsa_engine *e, struct tsa_engine_stats *st)
{
	*st = e->st;
}

/* ---- record checks ----------------------------------------------------------------------- */

static int bad(char *err, size_t cap, const char *fmt, const char *field)
{
	if (cap)
		snprintf(err, cap, fmt, field);
	return -EINVAL;
}

static bool is_type(const struct kumo_json_value *v, enum kumo_json_type t)
{
	return v && kumo_json_type(v) == t;
}

static bool evaluated_type(const char *type)
{
	return strcmp(type, "TransientFailure") == 0 || strcmp(type, "Bounce") == 0;
}

int tsa_engine_check_record(const struct kumo_json_value *rec, char *err, size_t errcap)
{
	if (!is_type(rec, KUMO_JSON_OBJECT))
		return bad(err, errcap, "a log record must be a JSON object%s", "");
	const char *type = jstr(rec, "type");
	if (!type)
		return bad(err, errcap, "field \"%s\": a string is required", "type");
	if (!evaluated_type(type))
		return 0;
	const struct kumo_json_value *r = kumo_json_get(rec, "recipient");
	bool ok = is_type(r, KUMO_JSON_STRING);
	if (is_type(r, KUMO_JSON_ARRAY) && kumo_json_count(r)) {
		ok = true;
		for (size_t i = 0; i < kumo_json_count(r); i++)
			ok &= is_type(kumo_json_at(r, i), KUMO_JSON_STRING);
	}
	if (!ok)
		return bad(err, errcap, "field \"%s\": a string or an array of strings is required",
			   "recipient");
	const struct kumo_json_value *resp = kumo_json_get(rec, "response");
	int64_t code;
	if (!is_type(resp, KUMO_JSON_OBJECT))
		return bad(err, errcap, "field \"%s\": an object is required", "response");
	if (kumo_json_integer(kumo_json_get(resp, "code"), &code) < 0 || code < 0 || code > 999)
		return bad(err, errcap, "field \"%s\": an integer from 0 to 999 is required",
			   "response.code");
	if (!is_type(kumo_json_get(resp, "content"), KUMO_JSON_STRING))
		return bad(err, errcap, "field \"%s\": a string is required", "response.content");
	const struct kumo_json_value *enh = kumo_json_get(resp, "enhanced_code");
	if (enh && !kumo_json_is_null(enh) && !is_type(enh, KUMO_JSON_STRING)) {
		int64_t v;
		static const char *const parts[] = {"class", "subject", "detail"};
		if (!is_type(enh, KUMO_JSON_OBJECT))
			return bad(err, errcap, "field \"%s\": an object, a string or null",
				   "response.enhanced_code");
		for (int i = 0; i < 3; i++)
			if (kumo_json_integer(kumo_json_get(enh, parts[i]), &v) < 0 || v < 0 ||
			    v > 999)
				return bad(err, errcap,
					   "field \"response.enhanced_code.%s\": an "
					   "integer from 0 to 999 is required",
					   parts[i]);
	}
	static const char *const strings[] = {"site", "queue", "egress_source"};
	for (int i = 0; i < 3; i++) {
		const struct kumo_json_value *v = kumo_json_get(rec, strings[i]);
		if (v && !kumo_json_is_null(v) && !is_type(v, KUMO_JSON_STRING))
			return bad(err, errcap, "field \"%s\": a string or null", strings[i]);
	}
	const struct kumo_json_value *ts = kumo_json_get(rec, "timestamp");
	double d;
	if (ts && !kumo_json_is_null(ts) && (kumo_json_number(ts, &d) < 0 || !(d >= 0 && d < 1e11)))
		return bad(err, errcap, "field \"%s\": Unix seconds are required", "timestamp");
	const struct kumo_json_value *peer = kumo_json_get(rec, "peer_address");
	if (peer && !kumo_json_is_null(peer) && !is_type(peer, KUMO_JSON_OBJECT))
		return bad(err, errcap, "field \"%s\": an object or null", "peer_address");
	return 0;
}

/* ---- response lines, domains, queue names ------------------------------------------------ */

void tsa_engine_response_line(const struct kumo_json_value *resp, struct kumo_buf *out)
{
	int64_t code = 0, c, s, d;
	kumo_json_integer(kumo_json_get(resp, "code"), &code);
	kumo_buf_printf(out, "%lld ", (long long)code);
	const struct kumo_json_value *enh = kumo_json_get(resp, "enhanced_code");
	const char *es = kumo_json_string(enh, NULL);
	if (es && *es)
		kumo_buf_printf(out, "%s ", es);
	else if (kumo_json_integer(kumo_json_get(enh, "class"), &c) == 0 &&
		 kumo_json_integer(kumo_json_get(enh, "subject"), &s) == 0 &&
		 kumo_json_integer(kumo_json_get(enh, "detail"), &d) == 0)
		kumo_buf_printf(out, "%lld.%lld.%lld ", (long long)c, (long long)s, (long long)d);
	size_t n;
	const char *content = kumo_json_string(kumo_json_get(resp, "content"), &n);
	for (size_t i = 0; content && i < n; i++) {
		if (content[i] == '\r' && i + 1 < n && content[i + 1] == '\n')
			i++;
		kumo_buf_putc(out, content[i] == '\r' || content[i] == '\n' ? ' ' : content[i]);
	}
}

/* The domain of a recipient address, lowercase, without a trailing dot; false when it has
 * none. */
static bool recipient_domain(const char *rcpt, struct kumo_buf *out)
{
	size_t n = strlen(rcpt);
	while (n && (rcpt[n - 1] == ' ' || rcpt[n - 1] == '>'))
		n--;
	const char *at = NULL;
	for (size_t i = 0; i < n; i++)
		if (rcpt[i] == '@')
			at = rcpt + i;
	if (!at)
		return false;
	const char *d = at + 1;
	size_t dl = (size_t)(rcpt + n - d);
	while (dl && d[dl - 1] == '.')
		dl--;
	if (!dl)
		return false;
	out->len = 0;
	for (size_t i = 0; i < dl; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c <= 0x20 || c == 0x7f || c == '"' || c == '\\')
			return false;
		kumo_buf_putc(out, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
	}
	return buf_str(out) != NULL;
}

/* campaign:tenant@domain (each part optional, with a possible "!routing" suffix). The parts
 * are written NUL-separated into out; absent ones are NULL. */
struct queue_parts {
	const char *campaign, *tenant, *domain;
};

static bool parse_queue(const char *q, struct kumo_buf *out, struct queue_parts *p)
{
	memset(p, 0, sizeof(*p));
	if (!q || !*q)
		return false;
	out->len = 0;
	kumo_buf_append(out, q, strlen(q) + 1);
	if (out->oom)
		return false;
	char *s = out->data, *at = strrchr(s, '@');
	char *dom = at ? at + 1 : s;
	char *bang = strchr(dom, '!');
	if (bang)
		*bang = 0;
	for (char *c = dom; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c += 32;
	p->domain = *dom ? dom : NULL;
	if (at) {
		*at = 0;
		char *colon = strchr(s, ':');
		if (colon) {
			*colon = 0;
			p->campaign = *s ? s : NULL;
			p->tenant = colon[1] ? colon + 1 : NULL;
		} else {
			p->tenant = *s ? s : NULL;
		}
	}
	return true;
}

/* ---- threshold windows ----------------------------------------------------------------- */

static void window_drop(struct tsa_engine *e, size_t i)
{
	struct window *w = &e->wins[i];
	tsa_map_del(&e->win_index, w->key, strlen(w->key));
	window_free(w);
	if (i != e->nwins - 1) {
		e->wins[i] = e->wins[e->nwins - 1];
		size_t *v = tsa_map_get(&e->win_index, e->wins[i].key, strlen(e->wins[i].key));
		if (v)
			*v = i;
	}
	e->nwins--;
}

/* Drops windows whose newest match is older than their period. */
static void windows_expire(struct tsa_engine *e, int64_t now_ms)
{
	for (size_t i = 0; i < e->nwins;) {
		if (e->wins[i].newest <= now_ms - e->wins[i].period_ms)
			window_drop(e, i);
		else
			i++;
	}
}

/* The window of key, created when absent; NULL when full or out of memory. */
static struct window *window_get(struct tsa_engine *e, const char *key,
				 const struct kumo_shaping_rate *t, int64_t now_ms)
{
	size_t *v = tsa_map_get(&e->win_index, key, strlen(key));
	if (v)
		return &e->wins[*v];
	if (e->nwins >= e->cfg.max_windows) {
		windows_expire(e, now_ms);
		if (e->nwins >= e->cfg.max_windows)
			return NULL;
	}
	if (e->nwins == e->capwins) {
		size_t cap = e->capwins ? e->capwins * 2 : 64;
		struct window *nw = realloc(e->wins, cap * sizeof(*nw));
		if (!nw)
			return NULL;
		e->wins = nw;
		e->capwins = cap;
	}
	struct window w = {.period_ms = (int64_t)t->period_ms, .limit = t->count};
	w.buckets = t->count > RING_MAX;
	w.cap = w.buckets ? NBUCKETS : (uint32_t)t->count;
	w.width = w.buckets ? (w.period_ms + NBUCKETS - 1) / NBUCKETS : 0;
	if (w.width < 1)
		w.width = 1;
	w.key = strdup(key);
	w.ts = calloc(w.cap, sizeof(*w.ts));
	if (w.buckets)
		w.counts = calloc(w.cap, sizeof(*w.counts));
	if (!w.key || !w.ts || (w.buckets && !w.counts) ||
	    tsa_map_put(&e->win_index, key, strlen(key), e->nwins) < 0) {
		window_free(&w);
		return NULL;
	}
	e->wins[e->nwins] = w;
	return &e->wins[e->nwins++];
}

/* Counts a match at t; returns the matches in the window (t - period, t]. */
static uint64_t window_add(struct window *w, int64_t t)
{
	if (t < w->newest)
		t = w->newest; /* keep the ring in time order */
	w->newest = t;
	int64_t floor = t - w->period_ms;
	if (!w->buckets) {
		if (w->n < w->cap) {
			w->ts[(w->head + w->n) % w->cap] = t;
			w->n++;
		} else {
			w->ts[w->head] = t;
			w->head = (w->head + 1) % w->cap;
		}
		while (w->n && w->ts[w->head] <= floor) {
			w->head = (w->head + 1) % w->cap;
			w->n--;
		}
		return w->n;
	}
	int64_t id = t / w->width + 1; /* + 1: slot ids are never 0, the "empty" mark */
	uint32_t slot = (uint32_t)(id % NBUCKETS);
	if (w->ts[slot] != id) {
		w->ts[slot] = id;
		w->counts[slot] = 0;
	}
	w->counts[slot]++;
	uint64_t sum = 0;
	for (uint32_t i = 0; i < NBUCKETS; i++)
		if (w->ts[i] > id - NBUCKETS)
			sum += w->counts[i];
	return sum;
}

/* ---- actions --------------------------------------------------------------------------- */

static const char *action_key(struct tsa_engine *e, const struct tsa_action *a)
{
	char target[16];
	size_t n = tsa_action_target(a, target, sizeof(target));
	e->key.len = 0;
	kumo_buf_printf(&e->key, "%s\x1f%s\x1f", tsa_kind_name(a->kind), a->rule_hash);
	if (kumo_buf_reserve(&e->key, n + 1) < 0)
		return NULL;
	tsa_action_target(a, e->key.data + e->key.len, n + 1);
	e->key.len += n;
	return buf_str(&e->key);
}

static bool live(const struct tsa_action *a, int64_t now_ms)
{
	return a->expires_ms > now_ms;
}

/* Inserts a copy of a, or extends the action with the same key. persist: call the save
 * callback for a new action or a longer extension. */
static int upsert(struct tsa_engine *e, const struct tsa_action *a, bool persist)
{
	const char *key = action_key(e, a);
	if (!key)
		return -ENOMEM;
	size_t klen = e->key.len - 1;
	size_t *v = tsa_map_get(&e->act_index, key, klen);
	if (v) {
		struct tsa_action *old = &e->acts[*v];
		if (a->expires_ms <= old->expires_ms)
			return 0;
		int64_t step = a->expires_ms - old->expires_ms;
		char *reason = a->reason ? strdup(a->reason) : NULL;
		if (a->reason && !reason)
			return -ENOMEM;
		free(old->reason);
		old->reason = reason;
		old->expires_ms = a->expires_ms;
		e->st.fired++;
		if (persist && step >= PERSIST_STEP && e->cfg.persist)
			e->cfg.persist(e->cfg.persist_arg, old);
		return 0;
	}
	if (e->nacts == e->capacts) {
		size_t cap = e->capacts ? e->capacts * 2 : 64;
		struct tsa_action *na = realloc(e->acts, cap * sizeof(*na));
		if (!na)
			return -ENOMEM;
		e->acts = na;
		e->capacts = cap;
	}
	if (tsa_action_copy(&e->acts[e->nacts], a) < 0)
		return -ENOMEM;
	if (tsa_map_put(&e->act_index, key, klen, e->nacts) < 0) {
		tsa_action_clear(&e->acts[e->nacts]);
		return -ENOMEM;
	}
	e->nacts++;
	if (persist) {
		e->st.fired++;
		if (e->cfg.persist)
			e->cfg.persist(e->cfg.persist_arg, &e->acts[e->nacts - 1]);
	}
	return 0;
}

int tsa_engine_restore(struct tsa_engine *e, const struct tsa_action *a, int64_t now_ms)
{
	if (!live(a, now_ms) || (unsigned)a->kind >= TSA_NKINDS)
		return 0;
	return upsert(e, a, false);
}

size_t tsa_engine_expire(struct tsa_engine *e, int64_t now_ms)
{
	size_t removed = 0;
	for (size_t i = 0; i < e->nacts;) {
		if (live(&e->acts[i], now_ms)) {
			i++;
			continue;
		}
		const char *key = action_key(e, &e->acts[i]);
		if (key)
			tsa_map_del(&e->act_index, key, e->key.len - 1);
		tsa_action_clear(&e->acts[i]);
		if (i != e->nacts - 1) {
			e->acts[i] = e->acts[e->nacts - 1];
			if ((key = action_key(e, &e->acts[i]))) {
				size_t *v = tsa_map_get(&e->act_index, key, e->key.len - 1);
				if (v)
					*v = i;
			}
		}
		e->nacts--;
		removed++;
	}
	e->st.expired += removed;
	windows_expire(e, now_ms);
	return removed;
}

size_t tsa_engine_count(const struct tsa_engine *e, int kind, int64_t now_ms)
{
	size_t n = 0;
	for (size_t i = 0; i < e->nacts; i++)
		if (live(&e->acts[i], now_ms) &&
		    (kind == TSA_NKINDS || (int)e->acts[i].kind == kind))
			n++;
	return n;
}

/* ---- evaluation -------------------------------------------------------------------------- */

/* What one record gives every rule evaluation. */
struct record {
	const char *domain;   /* recipient domain */
	const char *site;     /* MX host names joined by ',' ("" when unknown) */
	const char *source;   /* egress source, "unspecified" when none */
	struct queue_parts q; /* from the queue name */
	const char *line;     /* response line */
	size_t line_len;
	bool internal; /* a KumoMTA-internal response */
	int64_t ts_ms; /* when it happened (at most now) */
	const char *const *hosts;
	size_t nhosts;
};

static void scope_text(struct kumo_buf *b, const struct kumo_shaping_rule *r)
{
	switch (r->scope) {
	case KUMO_SHAPING_SCOPE_DEFAULT:
		kumo_buf_puts(b, "[\"default\"]");
		break;
	case KUMO_SHAPING_SCOPE_PROVIDER:
		kumo_buf_printf(b, "[provider.\"%s\"]", r->entry);
		break;
	default:
		kumo_buf_printf(b, "[\"%s\"]", r->entry);
		break;
	}
}

/* Fills e->reason: the rule's origin and regex, the response, and for queue actions the
 * domain, tenant and campaign. */
static const char *make_reason(struct tsa_engine *e, const struct kumo_shaping_rule *r,
			       const char *regex, const struct record *rec,
			       const struct tsa_action *a)
{
	struct kumo_buf *b = &e->reason;
	b->len = 0;
	kumo_buf_printf(b, "automation rule %s:%d ", r->file, r->line);
	scope_text(b, r);
	kumo_buf_puts(b, " regex ");
	put_clean(b, regex, 200);
	kumo_buf_puts(b, " matched: ");
	put_clean(b, rec->line, REASON_RESPONSE_MAX);
	if (!tsa_kind_is_config(a->kind) && a->kind != TSA_SUSPEND) {
		kumo_buf_printf(b, "; domain=%s", a->domain ? a->domain : "");
		if (a->tenant)
			kumo_buf_printf(b, " tenant=%s", a->tenant);
		if (a->campaign)
			kumo_buf_printf(b, " campaign=%s", a->campaign);
	}
	return buf_str(b);
}

static int fire(struct tsa_engine *e, const struct kumo_shaping_rule *r,
		const struct tsa_rule_info *info, const struct hash *rh, int matched,
		const struct record *rec, int64_t expires_ms, int64_t now_ms)
{
	for (size_t i = 0; i < r->nactions; i++) {
		const struct kumo_shaping_action *act = &r->actions[i];
		struct tsa_action a = {.source = (char *)rec->source,
				       .site = (char *)rec->site,
				       .created_ms = now_ms,
				       .expires_ms = expires_ms};
		struct hash h = *rh;
		hash_u64(&h, i);
		hash_hex(&h, a.rule_hash);
		bool needs_tenant = false;
		const char *qdomain = rec->q.domain ? rec->q.domain : rec->domain;
		switch (act->kind) {
		case KUMO_SHAPING_ACT_SUSPEND:
			a.kind = TSA_SUSPEND;
			a.domain = (char *)rec->domain;
			if (!*rec->site)
				a.site = (char *)rec->domain; /* per-domain ready queue */
			break;
		case KUMO_SHAPING_ACT_SET_CONFIG:
		case KUMO_SHAPING_ACT_SET_DOMAIN_CONFIG:
			a.kind = act->kind == KUMO_SHAPING_ACT_SET_CONFIG ? TSA_SET_CONFIG
									  : TSA_SET_DOMAIN_CONFIG;
			a.domain = (char *)rec->domain;
			a.name = (char *)act->name;
			a.value = (char *)act->value;
			a.value_is_string = i < info->nactions && info->value_is_string[i];
			/* KumoMTA: default and site rules override the site (mx_rollup), provider
			 * and domain rules the domain; SetDomainConfig always the domain. */
			a.mx_rollup =
			    a.kind == TSA_SET_CONFIG && (r->scope == KUMO_SHAPING_SCOPE_DEFAULT ||
							 r->scope == KUMO_SHAPING_SCOPE_SITE);
			break;
		case KUMO_SHAPING_ACT_SUSPEND_TENANT:
		case KUMO_SHAPING_ACT_SUSPEND_CAMPAIGN:
			a.kind = act->kind == KUMO_SHAPING_ACT_SUSPEND_TENANT
				     ? TSA_SUSPEND_TENANT
				     : TSA_SUSPEND_CAMPAIGN;
			needs_tenant = true;
			break;
		case KUMO_SHAPING_ACT_BOUNCE:
			a.kind = TSA_BOUNCE;
			break;
		case KUMO_SHAPING_ACT_BOUNCE_TENANT:
		case KUMO_SHAPING_ACT_BOUNCE_CAMPAIGN:
			a.kind = act->kind == KUMO_SHAPING_ACT_BOUNCE_TENANT ? TSA_BOUNCE_TENANT
									     : TSA_BOUNCE_CAMPAIGN;
			needs_tenant = true;
			break;
		default:
			continue;
		}
		if (!tsa_kind_is_config(a.kind) && a.kind != TSA_SUSPEND) {
			/* Scheduled queue actions: the queue's domain, tenant and campaign. */
			a.site = NULL;
			a.source = NULL;
			a.domain = (char *)qdomain;
			a.tenant = (char *)rec->q.tenant;
			if (a.kind == TSA_SUSPEND_CAMPAIGN || a.kind == TSA_BOUNCE_CAMPAIGN)
				a.campaign = (char *)rec->q.campaign;
			if (needs_tenant && !a.tenant) {
				e->st.skipped++;
				continue;
			}
		}
		const char *regex =
		    matched >= 0 && (size_t)matched < r->nregex ? r->regex[matched] : "";
		if (!(a.reason = (char *)make_reason(e, r, regex, rec, &a)))
			return -ENOMEM;
		int rc = upsert(e, &a, true);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int evaluate_rule(struct tsa_engine *e, const struct kumo_shaping_rule *r,
			 const struct record *rec, int64_t now_ms)
{
	if (rec->internal && !r->match_internal)
		return 0;
	const struct tsa_rule_info *info = tsa_rules_info(e->rules, r);
	if (!info)
		return 0;
	int m = tsa_rules_match(e->rules, info, rec->line, rec->line_len);
	if (m < 0)
		return 0;
	e->st.matches++;
	int64_t expires = rec->ts_ms + (int64_t)r->duration_ms;
	if (expires <= now_ms)
		return 0; /* a late record: its action would already be over */
	struct hash rh;
	rule_hash(r, &rh);
	if (!r->immediate && r->threshold.count) {
		char hex[33];
		hash_hex(&rh, hex);
		e->tmp.len = 0;
		kumo_buf_printf(&e->tmp, "%s\x1f%s->%s", hex, rec->source,
				*rec->site ? rec->site : rec->domain);
		const char *key = buf_str(&e->tmp);
		if (!key)
			return -ENOMEM;
		struct window *w = window_get(e, key, &r->threshold, now_ms);
		if (!w) {
			e->st.windows_full++;
			return 0;
		}
		if (window_add(w, rec->ts_ms) < r->threshold.count)
			return 0;
	}
	return fire(e, r, info, &rh, m, rec, expires, now_ms);
}

/* Binds the domain's site entry (if it has one) to the MX set of the record's site, once
 * per (domain, site): site rules and overrides then follow the site as in KumoMTA. */
static void learn_site(struct tsa_engine *e, const struct record *rec)
{
	if (!rec->nhosts || strchr(rec->site, ':') || strchr(rec->site, '['))
		return; /* no MX set, or a smart host / address literal */
	e->tmp.len = 0;
	kumo_buf_printf(&e->tmp, "%s\x1f%s", rec->domain, rec->site);
	const char *key = buf_str(&e->tmp);
	if (!key || tsa_map_get(&e->bound, key, e->tmp.len - 1))
		return;
	if (e->bound.n >= e->cfg.max_windows)
		tsa_map_free(&e->bound); /* forget; binding again is harmless */
	tsa_map_put(&e->bound, key, e->tmp.len - 1, 1);
	if (kumo_shaping_bind_site(tsa_rules_shaping(e->rules), rec->domain, rec->hosts,
				   rec->nhosts) == 0)
		e->st.sites_bound++;
}

static int evaluate(struct tsa_engine *e, struct record *rec, int64_t now_ms)
{
	struct kumo_shaping *sh = tsa_rules_shaping(e->rules);
	learn_site(e, rec);
	size_t n =
	    kumo_shaping_rules(sh, rec->domain, rec->hosts, rec->nhosts, e->rulebuf, e->rulecap);
	if (n > e->rulecap) {
		const struct kumo_shaping_rule **nb = realloc(e->rulebuf, n * sizeof(*nb));
		if (!nb)
			return -ENOMEM;
		e->rulebuf = nb;
		e->rulecap = n;
		n = kumo_shaping_rules(sh, rec->domain, rec->hosts, rec->nhosts, e->rulebuf,
				       e->rulecap);
	}
	for (size_t i = 0; i < n && i < e->rulecap; i++) {
		int rc = evaluate_rule(e, e->rulebuf[i], rec, now_ms);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int tsa_engine_publish(struct tsa_engine *e, const struct kumo_json_value *js, int64_t now_ms)
{
	e->st.records++;
	const char *type = jstr(js, "type");
	if (!type || !evaluated_type(type)) {
		e->st.ignored++;
		return 0;
	}
	struct record rec = {.source = jstr(js, "egress_source")};
	struct kumo_buf sitebuf = {0}, qbuf = {0}, dom = {0};
	const char *hosts[MAX_HOSTS];
	int rc = 0;

	/* The site: MX names joined by ','; KumoMTA may prefix it with "source->". */
	const char *site = jstr(js, "site"), *arrow = NULL;
	site = site ? site : "";
	for (const char *p = strstr(site, "->"); p; p = strstr(p + 2, "->"))
		arrow = p;
	size_t site_off = 0;
	if (arrow) {
		kumo_buf_append(&sitebuf, site, (size_t)(arrow - site));
		kumo_buf_putc(&sitebuf, 0);
		site_off = sitebuf.len;
		site = arrow + 2;
	}
	kumo_buf_puts(&sitebuf, site);
	kumo_buf_putc(&sitebuf, 0);
	if (sitebuf.oom) {
		rc = -ENOMEM;
		goto out;
	}
	rec.site = sitebuf.data + site_off;
	if (!rec.source && arrow)
		rec.source = sitebuf.data;
	if (!rec.source || !*rec.source)
		rec.source = "unspecified";
	/* Split a private copy of the site into host names. */
	size_t sl = strlen(rec.site);
	char *split = malloc(sl + 1);
	if (!split) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(split, rec.site, sl + 1);
	for (char *tok = split, *next; tok && rec.nhosts < MAX_HOSTS; tok = next) {
		next = strchr(tok, ',');
		if (next)
			*next++ = 0;
		if (*tok)
			hosts[rec.nhosts++] = tok;
	}
	rec.hosts = hosts;
	parse_queue(jstr(js, "queue"), &qbuf, &rec.q);

	const struct kumo_json_value *resp = kumo_json_get(js, "response");
	e->line.len = 0;
	tsa_engine_response_line(resp, &e->line);
	if (!(rec.line = buf_str(&e->line))) {
		rc = -ENOMEM;
		goto out_split;
	}
	rec.line_len = e->line.len - 1;
	const char *content = jstr(resp, "content");
	rec.internal = content && strncmp(content, "KumoMTA internal", 16) == 0;
	double ts;
	rec.ts_ms = now_ms;
	if (kumo_json_number(kumo_json_get(js, "timestamp"), &ts) == 0 && ts >= 0 &&
	    ts * 1000.0 < (double)now_ms)
		rec.ts_ms = (int64_t)(ts * 1000.0);

	const struct kumo_json_value *rv = kumo_json_get(js, "recipient");
	size_t nr = kumo_json_type(rv) == KUMO_JSON_ARRAY ? kumo_json_count(rv) : 1;
	for (size_t i = 0; i < nr && rc == 0; i++) {
		const char *r = kumo_json_string(
		    kumo_json_type(rv) == KUMO_JSON_ARRAY ? kumo_json_at(rv, i) : rv, NULL);
		if (!r || !recipient_domain(r, &dom)) {
			e->st.ignored++;
			continue;
		}
		rec.domain = dom.data;
		e->st.evaluated++;
		rc = evaluate(e, &rec, now_ms);
	}
out_split:
	free(split);
out:
	kumo_buf_free(&sitebuf);
	kumo_buf_free(&qbuf);
	kumo_buf_free(&dom);
	return rc;
}

/* ---- outputs ------------------------------------------------------------------------------ */

/* Active actions matching pred, sorted by cmp; NULL when there are none (or no memory). */
static const struct tsa_action **collect(const struct tsa_engine *e, int64_t now_ms,
					 bool (*pred)(enum tsa_kind),
					 int (*cmp)(const void *, const void *), size_t *n)
{
	const struct tsa_action **v = malloc((e->nacts ? e->nacts : 1) * sizeof(*v));
	*n = 0;
	if (!v)
		return NULL;
	for (size_t i = 0; i < e->nacts; i++)
		if (live(&e->acts[i], now_ms) && pred(e->acts[i].kind))
			v[(*n)++] = &e->acts[i];
	qsort(v, *n, sizeof(*v), cmp);
	return v;
}

static int strcmp0(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "");
}

static int cmp_i64(int64_t a, int64_t b)
{
	return (a > b) - (a < b);
}

/* Overrides: by domain, entry-level (source "unspecified") first, then source, setting
 * name, and the latest expiry first (it wins: one key per table). */
static int cmp_config(const void *x, const void *y)
{
	const struct tsa_action *a = *(const struct tsa_action *const *)x;
	const struct tsa_action *b = *(const struct tsa_action *const *)y;
	int c = strcmp0(a->domain, b->domain);
	if (c)
		return c;
	bool ua = strcmp0(a->source, "unspecified") == 0,
	     ub = strcmp0(b->source, "unspecified") == 0;
	if (ua != ub)
		return ua ? -1 : 1;
	if ((c = strcmp0(a->source, b->source)) || (c = strcmp0(a->name, b->name)))
		return c;
	if ((c = cmp_i64(b->expires_ms, a->expires_ms)))
		return c;
	return strcmp(a->rule_hash, b->rule_hash);
}

static int cmp_expiry(const void *x, const void *y)
{
	const struct tsa_action *a = *(const struct tsa_action *const *)x;
	const struct tsa_action *b = *(const struct tsa_action *const *)y;
	int c = cmp_i64(a->expires_ms, b->expires_ms);
	if (c || (c = strcmp0(a->source, b->source)) || (c = strcmp0(a->site, b->site)) ||
	    (c = strcmp0(a->tenant, b->tenant)) || (c = strcmp0(a->domain, b->domain)) ||
	    (c = strcmp0(a->campaign, b->campaign)))
		return c;
	return strcmp(a->rule_hash, b->rule_hash);
}

/* A TOML basic string. */
static void toml_quote(struct kumo_buf *b, const char *s)
{
	kumo_buf_putc(b, '"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			kumo_buf_putc(b, '\\');
			kumo_buf_putc(b, (char)c);
		} else if (c == '\n') {
			kumo_buf_puts(b, "\\n");
		} else if (c == '\t') {
			kumo_buf_puts(b, "\\t");
		} else if (c < 0x20 || c == 0x7f) {
			kumo_buf_printf(b, "\\u%04X", c);
		} else {
			kumo_buf_putc(b, (char)c);
		}
	}
	kumo_buf_putc(b, '"');
}

static void toml_key(struct kumo_buf *b, const char *s)
{
	bool bare = *s != 0;
	for (const char *p = s; *p && bare; p++)
		bare = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		       (*p >= '0' && *p <= '9') || *p == '_' || *p == '-';
	if (bare)
		kumo_buf_puts(b, s);
	else
		toml_quote(b, s);
}

static void toml_setting(struct kumo_buf *b, const struct tsa_action *a)
{
	char when[40];
	tsa_format_time(a->expires_ms, when, sizeof(when));
	kumo_buf_puts(b, "# reason: ");
	put_clean(b, a->reason ? a->reason : "", 1000);
	kumo_buf_printf(b, "\n# rule: %s (%s)\n# expires: %s\n", a->rule_hash,
			tsa_kind_name(a->kind), when);
	toml_key(b, a->name);
	kumo_buf_puts(b, " = ");
	if (a->value_is_string)
		toml_quote(b, a->value ? a->value : "");
	else
		kumo_buf_puts(b, a->value ? a->value : "\"\"");
	kumo_buf_putc(b, '\n');
}

void tsa_engine_shaping_toml(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out)
{
	size_t n, entries = 0;
	const struct tsa_action **v = collect(e, now_ms, tsa_kind_is_config, cmp_config, &n);
	if (!v) {
		out->oom = true;
		return;
	}
	/* Count the settings written: one per (domain, source, name). */
	for (size_t i = 0; i < n; i++)
		if (i == 0 || strcmp0(v[i]->domain, v[i - 1]->domain) ||
		    strcmp0(v[i]->source, v[i - 1]->source) || strcmp0(v[i]->name, v[i - 1]->name))
			entries++;
	kumo_buf_printf(out, "# Generated by tsa-daemon\n# Number of entries: %zu\n", entries);
	for (size_t i = 0; i < n;) {
		/* One domain: [domain] with mx_rollup, settings without a source, then one table
		 * per source. The entry is per domain (mx_rollup = false) when any override
		 * for it is. */
		size_t end = i;
		bool rollup = true;
		while (end < n && strcmp0(v[end]->domain, v[i]->domain) == 0)
			rollup &= v[end++]->mx_rollup;
		kumo_buf_puts(out, "\n[");
		toml_quote(out, v[i]->domain);
		kumo_buf_printf(out, "]\nmx_rollup = %s\n", rollup ? "true" : "false");
		const char *source = "unspecified";
		for (size_t k = i; k < end; k++) {
			const struct tsa_action *a = v[k];
			if (strcmp0(a->source, source) != 0) {
				source = a->source;
				kumo_buf_puts(out, "\n[");
				toml_quote(out, a->domain);
				kumo_buf_puts(out, ".sources.");
				toml_quote(out, a->source);
				kumo_buf_puts(out, "]\n");
			}
			if (k > i && strcmp0(a->source, v[k - 1]->source) == 0 &&
			    strcmp0(a->name, v[k - 1]->name) == 0)
				continue; /* an earlier-expiring override of the same setting */
			toml_setting(out, a);
		}
		i = end;
	}
	free(v);
}

static bool kind_ready_q(enum tsa_kind k)
{
	return k == TSA_SUSPEND;
}

static bool kind_sched_q(enum tsa_kind k)
{
	return k == TSA_SUSPEND_TENANT || k == TSA_SUSPEND_CAMPAIGN;
}

static void json_time(struct kumo_json *j, const char *key, int64_t ms)
{
	char when[40];
	tsa_format_time(ms, when, sizeof(when));
	kumo_json_key(j, key);
	kumo_json_str(j, when);
}

static void json_ready_q(struct kumo_json *j, const struct tsa_action *a)
{
	char queue[1024];
	snprintf(queue, sizeof(queue), "%s->%s", a->source, a->site);
	kumo_json_obj_open(j);
	kumo_json_key(j, "rule_hash");
	kumo_json_str(j, a->rule_hash);
	kumo_json_key(j, "site_name");
	kumo_json_str(j, queue);
	kumo_json_key(j, "site");
	kumo_json_str(j, a->site);
	kumo_json_key(j, "source");
	kumo_json_str(j, a->source);
	kumo_json_key(j, "domain");
	kumo_json_str_or_null(j, a->domain);
	kumo_json_key(j, "reason");
	kumo_json_str(j, a->reason ? a->reason : "");
	json_time(j, "expires", a->expires_ms);
	kumo_json_obj_close(j);
}

/* A scheduled-queue action (suspension or bounce); a missing tenant is "" or null. */
static void json_sched_q(struct kumo_json *j, const struct tsa_action *a, bool null_tenant)
{
	kumo_json_obj_open(j);
	kumo_json_key(j, "rule_hash");
	kumo_json_str(j, a->rule_hash);
	kumo_json_key(j, "domain");
	kumo_json_str(j, a->domain ? a->domain : "");
	kumo_json_key(j, "tenant");
	if (null_tenant)
		kumo_json_str_or_null(j, a->tenant);
	else
		kumo_json_str(j, a->tenant ? a->tenant : "");
	kumo_json_key(j, "campaign");
	kumo_json_str_or_null(j, a->campaign);
	kumo_json_key(j, "reason");
	kumo_json_str(j, a->reason ? a->reason : "");
	json_time(j, "expires", a->expires_ms);
	kumo_json_obj_close(j);
}

static void json_suspended(struct kumo_json *j, const struct tsa_action *a)
{
	json_sched_q(j, a, false);
}

static void json_bounced(struct kumo_json *j, const struct tsa_action *a)
{
	json_sched_q(j, a, true);
}

/* An array of the active actions that filter selects, soonest expiry first. */
static void json_actions(struct kumo_json *j, const struct tsa_engine *e, int64_t now_ms,
			 bool (*filter)(enum tsa_kind),
			 void (*write)(struct kumo_json *, const struct tsa_action *))
{
	size_t n;
	const struct tsa_action **v = collect(e, now_ms, filter, cmp_expiry, &n);
	kumo_json_arr_open(j);
	for (size_t i = 0; v && i < n; i++)
		write(j, v[i]);
	kumo_json_arr_close(j);
	free(v);
}

void tsa_engine_suspensions_json(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out)
{
	struct kumo_json j;
	kumo_json_init(&j, out);
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "ready_q");
	json_actions(&j, e, now_ms, kind_ready_q, json_ready_q);
	kumo_json_key(&j, "sched_q");
	json_actions(&j, e, now_ms, kind_sched_q, json_suspended);
	kumo_json_obj_close(&j);
	kumo_buf_putc(out, '\n');
}

void tsa_engine_bounces_json(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out)
{
	struct kumo_json j;
	kumo_json_init(&j, out);
	json_actions(&j, e, now_ms, tsa_kind_is_bounce, json_bounced);
	kumo_buf_putc(out, '\n');
}

void tsa_engine_metrics(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} counters[] = {
	    {"tsa_records_total", "log records published",
	     offsetof(struct tsa_engine_stats, records)},
	    {"tsa_recipients_evaluated_total",
	     "TransientFailure and Bounce recipients evaluated against the rules",
	     offsetof(struct tsa_engine_stats, evaluated)},
	    {"tsa_records_ignored_total", "records of other types or without a domain",
	     offsetof(struct tsa_engine_stats, ignored)},
	    {"tsa_rule_matches_total", "rule regex matches",
	     offsetof(struct tsa_engine_stats, matches)},
	    {"tsa_actions_fired_total", "actions created or extended",
	     offsetof(struct tsa_engine_stats, fired)},
	    {"tsa_actions_skipped_total", "tenant or campaign actions without a tenant",
	     offsetof(struct tsa_engine_stats, skipped)},
	    {"tsa_threshold_windows_full_total", "matches not counted: too many counters",
	     offsetof(struct tsa_engine_stats, windows_full)},
	    {"tsa_actions_expired_total", "actions removed at expiry",
	     offsetof(struct tsa_engine_stats, expired)},
	    {"tsa_sites_bound_total", "site entries bound to an MX set seen in a record",
	     offsetof(struct tsa_engine_stats, sites_bound)},
	};
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		kumo_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counters[i].name,
				counters[i].help, counters[i].name, counters[i].name,
				(unsigned long long)*(const uint64_t *)((const char *)&e->st +
									counters[i].off));
	kumo_buf_printf(out,
			"# HELP tsa_regex_errors_total regex runs that failed (limits)\n"
			"# TYPE tsa_regex_errors_total counter\ntsa_regex_errors_total %lu\n",
			tsa_rules_errors(e->rules));
	kumo_buf_puts(out, "# HELP tsa_actions actions in force\n# TYPE tsa_actions gauge\n");
	for (int k = 0; k < TSA_NKINDS; k++)
		kumo_buf_printf(out, "tsa_actions{kind=\"%s\"} %zu\n", tsa_kind_name(k),
				tsa_engine_count(e, k, now_ms));
	kumo_buf_printf(out,
			"# HELP tsa_threshold_windows threshold counters in use\n"
			"# TYPE tsa_threshold_windows gauge\ntsa_threshold_windows %zu\n",
			e->nwins);
	kumo_buf_printf(out,
			"# HELP tsa_rules automation rules loaded\n"
			"# TYPE tsa_rules gauge\ntsa_rules %zu\n",
			tsa_rules_count(e->rules));
}
