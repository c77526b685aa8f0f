/* KumoMTA-compatible shaping files: reads each TOML document into entries (default, domains,
 * providers) with validated settings, sources and automation rules, merges the files in
 * order, and answers effective-settings and rule queries for a destination. */
#include "engine/shaping.h"

#include "util/json.h"
#include "util/toml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers --------------------------------------------------------------------- */

static char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Length of a host or domain name without its trailing dot. */
static size_t name_len(const char *s)
{
	size_t n = strlen(s);
	return (n > 0 && s[n - 1] == '.') ? n - 1 : n;
}

static bool ieq_n(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower(a[i]) != lower(b[i]))
			return false;
	return true;
}

/* Does name (len bytes) end with suffix (lowercase)? A suffix equal to the whole name
 * matches too, as in KumoMTA. */
static bool suffix_match(const char *name, size_t len, const char *suffix, size_t slen)
{
	return slen <= len && ieq_n(name + len - slen, suffix, slen);
}

/* ---- arena: every string and array handed out lives here until kumo_shaping_free ------- */

struct chunk {
	struct chunk *next;
	size_t used, cap;
};

#define CHUNK_HDR ((sizeof(struct chunk) + 15) & ~(size_t)15)
#define CHUNK_MIN 16384

struct arena {
	struct chunk *head;
};

static void *arena_alloc(struct arena *a, size_t n)
{
	struct chunk *c = a->head;

	n = (n + 15) & ~(size_t)15;
	if (!n)
		n = 16;
	if (!c || c->cap - c->used < n) {
		size_t cap = n > CHUNK_MIN ? n : CHUNK_MIN;
		c = malloc(CHUNK_HDR + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = a->head;
		a->head = c;
	}
	void *p = (char *)c + CHUNK_HDR + c->used;
	c->used += n;
	return p;
}

static char *arena_strndup(struct arena *a, const char *s, size_t n)
{
	char *p = arena_alloc(a, n + 1);
	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

static void arena_free(struct arena *a)
{
	while (a->head) {
		struct chunk *next = a->head->next;
		free(a->head);
		a->head = next;
	}
}

/* ---- string builder (for computed keys and site names) ------------------------------- */

struct sb {
	char *p;
	size_t n, cap;
	bool oom;
};

static void sb_putn(struct sb *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->cap - b->n < n + 1) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap - b->n < n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void sb_puts(struct sb *b, const char *s)
{
	sb_putn(b, s, strlen(s));
}

static void sb_putc(struct sb *b, char c)
{
	sb_putn(b, &c, 1);
}

/* ---- value parsers: NULL on success, else a static message ----------------------------- */

/* Digits, optionally separated by ',' or '_' ("1,000", "10_000"). */
static const char *parse_num(const char **sp, uint64_t *out)
{
	const char *s = *sp;
	uint64_t n = 0;

	if (!is_digit(*s))
		return "expected a number";
	for (;;) {
		if (is_digit(*s)) {
			unsigned d = (unsigned)(*s - '0');
			if (n > (UINT64_MAX - d) / 10)
				return "number too large";
			n = n * 10 + d;
			s++;
		} else if ((*s == ',' || *s == '_') && is_digit(s[1])) {
			s++;
		} else {
			break;
		}
	}
	*sp = s;
	*out = n;
	return NULL;
}

static bool word_is(const char *w, size_t n, const char *const *names)
{
	for (; *names; names++)
		if (strlen(*names) == n && memcmp(w, *names, n) == 0)
			return true;
	return false;
}

/* Milliseconds in a duration or period unit; 0 for an unknown unit. */
static uint64_t unit_ms(const char *w, size_t n, bool allow_ms_weeks)
{
	static const char *const ms[] = {"ms",		"msec",		"msecs",
					 "millisecond", "milliseconds", NULL};
	static const char *const sec[] = {"s", "sec", "secs", "second", "seconds", NULL};
	static const char *const min[] = {"m", "min", "mins", "minute", "minutes", NULL};
	static const char *const hour[] = {"h", "hr", "hrs", "hour", "hours", NULL};
	static const char *const day[] = {"d", "day", "days", NULL};
	static const char *const week[] = {"w", "week", "weeks", NULL};

	if (word_is(w, n, sec))
		return 1000;
	if (word_is(w, n, min))
		return 60 * 1000;
	if (word_is(w, n, hour))
		return 3600 * 1000;
	if (word_is(w, n, day))
		return 86400 * 1000;
	if (allow_ms_weeks && word_is(w, n, ms))
		return 1;
	if (allow_ms_weeks && word_is(w, n, week))
		return 7 * 86400 * 1000ull;
	return 0;
}

static const char *rate_parse(const char *s, struct kumo_shaping_rate *out)
{
	struct kumo_shaping_rate r = {0};
	uint64_t mult = 1, u;
	const char *e;

	if (strncmp(s, "local:", 6) == 0) {
		r.local = true;
		s += 6;
	}
	if ((e = parse_num(&s, &r.count)))
		return "expected a rate such as \"100/min\"";
	if (r.count == 0)
		return "the count of a rate must be greater than 0";
	if (*s++ != '/')
		return "expected '/' after the count, as in \"100/min\"";
	if (is_digit(*s)) {
		if ((e = parse_num(&s, &mult)))
			return e;
		if (mult == 0)
			return "the period of a rate must be greater than 0";
	}
	const char *w = s;
	while (is_alpha(*s))
		s++;
	if (!(u = unit_ms(w, (size_t)(s - w), false)))
		return "unknown period: use s, sec, m, min, h, hr, hour, d or day";
	if (mult > UINT64_MAX / u)
		return "period too long";
	r.period_ms = mult * u;
	if (*s == ',') {
		s++;
		while (*s == ' ')
			s++;
		if (strncmp(s, "max_burst", 9) != 0)
			return "expected \",max_burst=N\" after the period";
		s += 9;
		while (*s == ' ')
			s++;
		if (*s++ != '=')
			return "expected \",max_burst=N\" after the period";
		while (*s == ' ')
			s++;
		if ((e = parse_num(&s, &r.burst)))
			return "expected a number after max_burst=";
		if (r.burst == 0)
			return "max_burst must be greater than 0";
	}
	if (*s)
		return "unexpected text after the rate";
	*out = r;
	return NULL;
}

static const char *limit_parse(const char *s, struct kumo_shaping_limit *out)
{
	struct kumo_shaping_limit l = {0};

	if (strncmp(s, "local:", 6) == 0) {
		l.local = true;
		s += 6;
	}
	if (parse_num(&s, &l.limit) || *s)
		return "expected a limit such as 10, \"1,000\" or \"local:5\"";
	*out = l;
	return NULL;
}

static const char *count_parse(const char *s, uint64_t *out)
{
	uint64_t n;

	if (parse_num(&s, &n) || *s)
		return "expected a number such as 100 or \"1,000\"";
	*out = n;
	return NULL;
}

static const char *duration_parse(const char *s, uint64_t *ms)
{
	uint64_t total = 0;
	bool any = false;

	for (;;) {
		uint64_t n, u;
		while (*s == ' ')
			s++;
		if (!*s)
			break;
		if (parse_num(&s, &n))
			return "expected a duration such as \"90m\", \"30s\" or \"3 days\"";
		while (*s == ' ')
			s++;
		const char *w = s;
		while (is_alpha(*s))
			s++;
		if (s == w) {
			/* A bare number means seconds, alone only. */
			if (any || *s)
				return "expected a unit after the number";
			u = 1000;
		} else if (!(u = unit_ms(w, (size_t)(s - w), true))) {
			return "unknown unit: use ms, s, sec, m, min, h, hr, hour, d, day or week";
		}
		if (n > UINT64_MAX / u || total > UINT64_MAX - n * u)
			return "duration too long";
		total += n * u;
		any = true;
	}
	if (!any)
		return "expected a duration such as \"90m\", \"30s\" or \"3 days\"";
	*ms = total;
	return NULL;
}

int kumo_shaping_parse_rate(const char *s, struct kumo_shaping_rate *out)
{
	return s && !rate_parse(s, out) ? 0 : -EINVAL;
}

int kumo_shaping_parse_limit(const char *s, struct kumo_shaping_limit *out)
{
	return s && !limit_parse(s, out) ? 0 : -EINVAL;
}

int kumo_shaping_parse_duration(const char *s, uint64_t *ms)
{
	return s && !duration_parse(s, ms) ? 0 : -EINVAL;
}

int kumo_shaping_parse_count(const char *s, uint64_t *out)
{
	return s && !count_parse(s, out) ? 0 : -EINVAL;
}

/* ---- settings -------------------------------------------------------------------------- */

enum vtype { V_RAW, V_LIMIT, V_RATE, V_COUNT, V_DURATION, V_TLS, V_STRING };

struct known {
	const char *name;
	enum vtype type;
	int field; /* enum kumo_shaping_field, or -1: validated but kept as an extra */
};

static const struct known known_keys[] = {
    {"connection_limit", V_LIMIT, KUMO_SHAPING_F_CONNECTION_LIMIT},
    {"max_connection_rate", V_RATE, KUMO_SHAPING_F_MAX_CONNECTION_RATE},
    {"max_message_rate", V_RATE, KUMO_SHAPING_F_MAX_MESSAGE_RATE},
    {"max_deliveries_per_connection", V_COUNT, KUMO_SHAPING_F_MAX_DELIVERIES_PER_CONNECTION},
    {"max_ready", V_COUNT, KUMO_SHAPING_F_MAX_READY},
    {"consecutive_connection_failures_before_delay", V_COUNT,
     KUMO_SHAPING_F_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY},
    {"enable_tls", V_TLS, KUMO_SHAPING_F_ENABLE_TLS},
    {"connect_timeout", V_DURATION, KUMO_SHAPING_F_CONNECT_TIMEOUT},
    {"banner_timeout", V_DURATION, KUMO_SHAPING_F_BANNER_TIMEOUT},
    {"ehlo_timeout", V_DURATION, KUMO_SHAPING_F_EHLO_TIMEOUT},
    {"mail_from_timeout", V_DURATION, KUMO_SHAPING_F_MAIL_FROM_TIMEOUT},
    {"rcpt_to_timeout", V_DURATION, KUMO_SHAPING_F_RCPT_TO_TIMEOUT},
    {"data_timeout", V_DURATION, KUMO_SHAPING_F_DATA_TIMEOUT},
    {"data_dot_timeout", V_DURATION, KUMO_SHAPING_F_DATA_DOT_TIMEOUT},
    {"rset_timeout", V_DURATION, KUMO_SHAPING_F_RSET_TIMEOUT},
    {"idle_timeout", V_DURATION, KUMO_SHAPING_F_IDLE_TIMEOUT},
    {"starttls_timeout", V_DURATION, KUMO_SHAPING_F_STARTTLS_TIMEOUT},
    {"auth_timeout", V_DURATION, KUMO_SHAPING_F_AUTH_TIMEOUT},
    {"provider_name", V_STRING, KUMO_SHAPING_F_PROVIDER_NAME},
    {"remember_broken_tls", V_DURATION, -1},
    {"refresh_interval", V_DURATION, -1},
    {"system_shutdown_timeout", V_DURATION, -1},
    {"source_selection_rate", V_RATE, -1},
};

/* Table-valued settings that KumoMTA merges key by key; kept flattened as "table.key". */
static const struct known merged_tables[] = {
    {"additional_connection_limits", V_LIMIT, -1},
    {"additional_message_rate_throttles", V_RATE, -1},
    {"additional_source_selection_rates", V_RATE, -1},
};

static const char *const tls_names[] = {
    [KUMO_SHAPING_TLS_OPPORTUNISTIC] = "Opportunistic",
    [KUMO_SHAPING_TLS_OPPORTUNISTIC_INSECURE] = "OpportunisticInsecure",
    [KUMO_SHAPING_TLS_REQUIRED] = "Required",
    [KUMO_SHAPING_TLS_REQUIRED_INSECURE] = "RequiredInsecure",
    [KUMO_SHAPING_TLS_DISABLED] = "Disabled",
};

static const struct known *find_known(const struct known *tab, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(tab[i].name, key) == 0)
			return &tab[i];
	return NULL;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

union val {
	struct kumo_shaping_limit limit;
	struct kumo_shaping_rate rate;
	uint64_t n; /* a count, or a duration in ms */
	enum kumo_shaping_tls tls;
	const char *str;
};

struct setting {
	const char *key;
	int field;	 /* enum kumo_shaping_field or -1 (an extra) */
	const char *raw; /* as in kumo_shaping_kv.value */
	union val v;
};

struct table {
	struct setting *v;
	size_t n, cap;
};

static int table_set(struct table *t, const struct setting *s)
{
	for (size_t i = 0; i < t->n; i++) {
		if (strcmp(t->v[i].key, s->key) == 0) {
			t->v[i] = *s;
			return 0;
		}
	}
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 8;
		struct setting *v = realloc(t->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n++] = *s;
	return 0;
}

/* ---- entries --------------------------------------------------------------------------- */

enum ekind { E_DEFAULT, E_SITE, E_DOMAIN, E_PROVIDER };

enum mkind { M_MX_SUFFIX, M_DOMAIN_SUFFIX, M_HOST_NAME };

struct match {
	enum mkind kind;
	const char *s; /* lowercase, without trailing dot */
	size_t len;
};

struct source {
	const char *name;
	struct table t;
};

struct entry {
	enum ekind kind;
	size_t index; /* order of first appearance */
	const char *name;
	struct table params;
	struct source *src;
	size_t nsrc, capsrc;
	struct kumo_shaping_rule *rules;
	size_t nrules, caprules;
	struct match *m; /* providers */
	size_t nm, capm;
	struct kumo_shaping_limit pconn; /* providers: limit 0 = none */
	struct kumo_shaping_rate prate;	 /* providers: count 0 = none */
	const char *site;		 /* site entries: the bound site, or NULL */
};

static void entry_clear(struct entry *e)
{
	for (size_t i = 0; i < e->nsrc; i++)
		free(e->src[i].t.v);
	free(e->src);
	free(e->params.v);
	free(e->rules);
	free(e->m);
	e->src = NULL;
	e->nsrc = e->capsrc = 0;
	e->params = (struct table){0};
	e->rules = NULL;
	e->nrules = e->caprules = 0;
	e->m = NULL;
	e->nm = e->capm = 0;
	e->pconn = (struct kumo_shaping_limit){0};
	e->prate = (struct kumo_shaping_rate){0};
}

static struct table *entry_source(struct entry *e, const char *name, struct arena *a)
{
	for (size_t i = 0; i < e->nsrc; i++)
		if (strcmp(e->src[i].name, name) == 0)
			return &e->src[i].t;
	if (e->nsrc == e->capsrc) {
		size_t cap = e->capsrc ? e->capsrc * 2 : 4;
		struct source *v = realloc(e->src, cap * sizeof(*v));
		if (!v)
			return NULL;
		e->src = v;
		e->capsrc = cap;
	}
	const char *copy = arena_strndup(a, name, strlen(name));
	if (!copy)
		return NULL;
	e->src[e->nsrc] = (struct source){.name = copy};
	return &e->src[e->nsrc++].t;
}

static const struct table *entry_find_source(const struct entry *e, const char *name)
{
	for (size_t i = 0; name && i < e->nsrc; i++)
		if (strcmp(e->src[i].name, name) == 0)
			return &e->src[i].t;
	return NULL;
}

/* ---- string map (open addressing) ------------------------------------------------------ */

struct slot {
	const char *key; /* NULL: empty */
	uint64_t hash;
	void *val;
};

struct smap {
	struct slot *s;
	size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static void *smap_get(const struct smap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	uint64_t h = hash_str(key);
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->s[i].key)
			return NULL;
		if (m->s[i].hash == h && strcmp(m->s[i].key, key) == 0)
			return m->s[i].val;
	}
}

/* key must outlive the map; a key already present is not replaced. */
static int smap_put(struct smap *m, const char *key, void *val)
{
	if ((m->n + 1) * 2 > m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 16;
		struct slot *s = calloc(cap, sizeof(*s));
		if (!s)
			return -ENOMEM;
		for (size_t i = 0; i < m->cap; i++) {
			if (!m->s[i].key)
				continue;
			size_t j = m->s[i].hash & (cap - 1);
			while (s[j].key)
				j = (j + 1) & (cap - 1);
			s[j] = m->s[i];
		}
		free(m->s);
		m->s = s;
		m->cap = cap;
	}
	uint64_t h = hash_str(key);
	size_t i = h & (m->cap - 1);
	while (m->s[i].key) {
		if (m->s[i].hash == h && strcmp(m->s[i].key, key) == 0)
			return 0;
		i = (i + 1) & (m->cap - 1);
	}
	m->s[i] = (struct slot){key, h, val};
	m->n++;
	return 0;
}

/* Site entries bound to one site, in entry order. */
struct group {
	const char *site; /* in the arena; the key of the map */
	struct entry **v;
	size_t n, cap;
};

struct kumo_shaping {
	struct arena a;
	struct entry **e; /* all entries, in order of first appearance */
	size_t ne, cap;
	struct entry *deflt;
	struct smap by_site_name;   /* E_SITE entries by domain */
	struct smap by_domain_name; /* E_DOMAIN entries by domain */
	struct smap by_provider;    /* E_PROVIDER entries by name */
	struct smap sites;	    /* bound site -> struct group */
	struct entry **site_list;   /* E_SITE entries in order */
	size_t nsite, capsite;
	struct entry **prov_list; /* E_PROVIDER entries in order */
	size_t nprov, capprov;
};

void kumo_shaping_free(struct kumo_shaping *sh)
{
	if (!sh)
		return;
	for (size_t i = 0; i < sh->ne; i++) {
		entry_clear(sh->e[i]);
		free(sh->e[i]);
	}
	free(sh->e);
	for (size_t i = 0; i < sh->sites.cap; i++)
		if (sh->sites.s[i].key) {
			struct group *g = sh->sites.s[i].val;
			free(g->v);
			free(g);
		}
	free(sh->sites.s);
	free(sh->by_site_name.s);
	free(sh->by_domain_name.s);
	free(sh->by_provider.s);
	free(sh->site_list);
	free(sh->prov_list);
	arena_free(&sh->a);
	free(sh);
}

static struct smap *map_for(struct kumo_shaping *sh, enum ekind kind)
{
	return kind == E_SITE	  ? &sh->by_site_name
	       : kind == E_DOMAIN ? &sh->by_domain_name
				  : &sh->by_provider;
}

/* Room for one more pointer in a list of n with capacity *cap. */
static int list_reserve(struct entry ***v, size_t n, size_t *cap)
{
	if (n < *cap)
		return 0;
	size_t c = *cap ? *cap * 2 : 16;
	struct entry **nv = realloc(*v, c * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = c;
	return 0;
}

/* The entry of this kind and name, created when new. name must live in the arena. */
static int get_entry(struct kumo_shaping *sh, enum ekind kind, const char *name, bool *created,
		     struct entry **out)
{
	struct entry *e;
	int rc;

	*created = false;
	if (kind == E_DEFAULT)
		e = sh->deflt;
	else
		e = smap_get(map_for(sh, kind), name);
	if (e) {
		*out = e;
		return 0;
	}
	if (sh->ne == sh->cap) {
		size_t cap = sh->cap ? sh->cap * 2 : 32;
		struct entry **v = realloc(sh->e, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		sh->e = v;
		sh->cap = cap;
	}
	if (kind == E_SITE && (rc = list_reserve(&sh->site_list, sh->nsite, &sh->capsite)))
		return rc;
	if (kind == E_PROVIDER && (rc = list_reserve(&sh->prov_list, sh->nprov, &sh->capprov)))
		return rc;
	if (!(e = calloc(1, sizeof(*e))))
		return -ENOMEM;
	e->kind = kind;
	e->name = name;
	e->index = sh->ne;
	if (kind == E_DEFAULT) {
		sh->deflt = e;
	} else if ((rc = smap_put(map_for(sh, kind), name, e))) {
		free(e);
		return rc;
	}
	sh->e[sh->ne++] = e;
	if (kind == E_SITE)
		sh->site_list[sh->nsite++] = e;
	if (kind == E_PROVIDER)
		sh->prov_list[sh->nprov++] = e;
	*created = true;
	*out = e;
	return 0;
}

/* ---- loading --------------------------------------------------------------------------- */

struct loader {
	struct kumo_shaping *sh;
	const char *file; /* in the arena */
	char *err;
	size_t errcap;
	char key[512]; /* dotted path of the key being read, as the TOML reader writes it */
	size_t keylen;
};

static size_t key_push(struct loader *L, const char *part, size_t n)
{
	size_t old = L->keylen;
	struct kumo_buf b = {0};

	if (old)
		kumo_buf_putc(&b, '.');
	kumo_toml_render_key(&b, part, n);
	if (!b.oom && old + b.len < sizeof(L->key)) {
		memcpy(L->key + old, b.data, b.len);
		L->keylen = old + b.len;
	}
	L->key[L->keylen] = 0;
	kumo_buf_free(&b);
	return old;
}

static size_t key_push_s(struct loader *L, const char *part)
{
	return key_push(L, part, strlen(part));
}

static void key_pop(struct loader *L, size_t old)
{
	L->keylen = old;
	L->key[old] = 0;
}

static int fail(struct loader *L, int line, const char *fmt, ...)
{
	char msg[320];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (L->err && L->errcap) {
		if (line > 0 && L->keylen)
			snprintf(L->err, L->errcap, "%s:%d: key '%s': %s", L->file, line, L->key,
				 msg);
		else if (line > 0)
			snprintf(L->err, L->errcap, "%s:%d: %s", L->file, line, msg);
		else
			snprintf(L->err, L->errcap, "%s: %s", L->file, msg);
	}
	return -EINVAL;
}

static int oom(struct loader *L)
{
	if (L->err && L->errcap)
		snprintf(L->err, L->errcap, "%s: out of memory", L->file);
	return -ENOMEM;
}

/* A key or string without NUL bytes, or a failure. */
static int get_key(struct loader *L, const struct kumo_toml_value *t, size_t i, const char **out)
{
	size_t len;
	const char *k = kumo_toml_keyn_at(t, i, &len);

	*out = k;
	if (strlen(k) != len) {
		key_push(L, k, len);
		return fail(L, kumo_toml_line(kumo_toml_at(t, i)), "NUL byte in key");
	}
	return 0;
}

static int get_str(struct loader *L, const struct kumo_toml_value *v, const char *what,
		   const char **out)
{
	size_t len;

	if (kumo_toml_type(v) != KUMO_TOML_STRING)
		return fail(L, kumo_toml_line(v), "expected %s, got %s", what,
			    kumo_toml_type_name(kumo_toml_type(v)));
	*out = kumo_toml_string(v, &len);
	if (strlen(*out) != len)
		return fail(L, kumo_toml_line(v), "NUL byte in string");
	return 0;
}

static int get_bool(struct loader *L, const struct kumo_toml_value *v, bool *out)
{
	if (kumo_toml_bool(v, out))
		return fail(L, kumo_toml_line(v), "expected true or false, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	return 0;
}

static int need_table(struct loader *L, const struct kumo_toml_value *v, const char *what)
{
	if (kumo_toml_type(v) != KUMO_TOML_TABLE)
		return fail(L, kumo_toml_line(v), "expected %s, got %s", what,
			    kumo_toml_type_name(kumo_toml_type(v)));
	return 0;
}

/* v as kumo_shaping_kv.value holds it: a string (or a date-time) as its bare text, any
 * other value in TOML inline syntax. In the arena; NULL when memory ran out. */
static const char *render_dup(struct loader *L, const struct kumo_toml_value *v)
{
	struct kumo_buf b = {0};
	size_t len;
	const char *s = kumo_toml_string(v, &len);

	if (s)
		return arena_strndup(&L->sh->a, s, len);
	kumo_toml_render_value(&b, v);
	s = b.oom ? NULL : arena_strndup(&L->sh->a, b.data ? b.data : "", b.len);
	kumo_buf_free(&b);
	return s;
}

/* A non-negative TOML integer into *n (and true), or a string without NUL into *s. */
static int int_or_string(struct loader *L, const struct kumo_toml_value *v, bool *is_int,
			 uint64_t *n, const char **s)
{
	int64_t i;

	*is_int = kumo_toml_type(v) == KUMO_TOML_INTEGER;
	if (!*is_int)
		return get_str(L, v, "an integer or a string", s);
	kumo_toml_int(v, &i);
	if (i < 0)
		return fail(L, kumo_toml_line(v), "must not be negative");
	*n = (uint64_t)i;
	return 0;
}

/* Validates v as a value of type and stores it in *out. */
static int parse_typed(struct loader *L, const struct kumo_toml_value *v, enum vtype type,
		       union val *out)
{
	const char *s = NULL, *msg = NULL;
	bool is_int;
	uint64_t n;
	int rc;

	switch (type) {
	case V_LIMIT:
		if ((rc = int_or_string(L, v, &is_int, &n, &s)))
			return rc;
		if (is_int)
			out->limit = (struct kumo_shaping_limit){.limit = n};
		else
			msg = limit_parse(s, &out->limit);
		break;
	case V_COUNT:
		if ((rc = int_or_string(L, v, &is_int, &out->n, &s)))
			return rc;
		if (!is_int)
			msg = count_parse(s, &out->n);
		break;
	case V_DURATION:
		if ((rc = int_or_string(L, v, &is_int, &n, &s)))
			return rc;
		if (is_int && n > UINT64_MAX / 1000)
			return fail(L, kumo_toml_line(v), "duration too long");
		if (is_int)
			out->n = n * 1000;
		else
			msg = duration_parse(s, &out->n);
		break;
	case V_RATE:
		if ((rc = get_str(L, v, "a rate such as \"100/min\"", &s)))
			return rc;
		msg = rate_parse(s, &out->rate);
		break;
	case V_TLS:
		if ((rc = get_str(L, v, "a string", &s)))
			return rc;
		for (size_t i = 0; i < NELEM(tls_names); i++) {
			if (strcmp(s, tls_names[i]) == 0) {
				out->tls = (enum kumo_shaping_tls)i;
				return 0;
			}
		}
		msg = "expected Opportunistic, OpportunisticInsecure, Required, RequiredInsecure "
		      "or Disabled";
		break;
	case V_STRING:
		if ((rc = get_str(L, v, "a string", &s)))
			return rc;
		if (!(out->str = arena_strndup(&L->sh->a, s, strlen(s))))
			return oom(L);
		break;
	case V_RAW:
		break;
	}
	if (msg)
		return fail(L, kumo_toml_line(v), "\"%s\": %s", s, msg);
	return 0;
}

/* Settings that only a provider entry may carry. */
static bool provider_only(const char *key)
{
	return strcmp(key, "provider_connection_limit") == 0 ||
	       strcmp(key, "provider_max_message_rate") == 0;
}

/* Table-valued settings of KumoMTA besides the merged ones: secrets given as a KeySource
 * ({key_data = "..."}, {vault_path = "..."}). */
static bool keysource_key(const char *key)
{
	return strcmp(key, "smtp_auth_plain_password") == 0 ||
	       strcmp(key, "tls_certificate") == 0 || strcmp(key, "tls_private_key") == 0;
}

/* Where a setting is read, for the hint about unquoted dotted names in headers. */
enum place { P_DOTTED, P_LABEL, P_PROVIDER };

/* Checks a setting named key with value v (also for SetConfig actions). When dst is not
 * NULL, stores it there. In a single-label domain entry or a provider (where), a table value
 * is most likely an unquoted dotted name in a header, and is refused unless it is a known
 * table-valued setting; entry_name is then the entry's name. */
static int parse_setting(struct loader *L, const char *key, const struct kumo_toml_value *v,
			 enum place where, const char *entry_name, struct table *dst)
{
	const struct known *k = find_known(known_keys, NELEM(known_keys), key);
	const struct known *mt = find_known(merged_tables, NELEM(merged_tables), key);
	struct setting s = {.key = key, .field = -1};
	union val scratch;
	int rc;

	if (mt) {
		if ((rc = need_table(L, v, "a table of name = value")))
			return rc;
		for (size_t i = 0; i < kumo_toml_count(v); i++) {
			const char *inner;
			const struct kumo_toml_value *iv = kumo_toml_at(v, i);
			if ((rc = get_key(L, v, i, &inner)))
				return rc;
			size_t old = key_push_s(L, inner);
			rc = parse_typed(L, iv, mt->type, &scratch);
			key_pop(L, old);
			if (rc)
				return rc;
			if (!dst)
				continue;
			struct sb b = {0};
			sb_puts(&b, key);
			sb_putc(&b, '.');
			sb_puts(&b, inner);
			struct setting f = {.field = -1};
			f.key = b.oom ? NULL : arena_strndup(&L->sh->a, b.p, b.n);
			free(b.p);
			if (!f.key || !(f.raw = render_dup(L, iv)) || table_set(dst, &f))
				return oom(L);
		}
		return 0;
	}
	if (k) {
		if ((rc = parse_typed(L, v, k->type, &s.v)))
			return rc;
		s.field = k->field;
	} else if (kumo_toml_type(v) == KUMO_TOML_TABLE && where != P_DOTTED &&
		   !keysource_key(key)) {
		/* [gmail.com] without quotes makes table "gmail" holding table "com". */
		if (where == P_PROVIDER)
			return fail(L, kumo_toml_line(v),
				    "a table inside provider '%s': quote names with dots in "
				    "headers, as [provider.\"%s.%s\"]",
				    entry_name, entry_name, key);
		return fail(L, kumo_toml_line(v),
			    "a table inside entry '%s': quote domain names in headers, as "
			    "[\"%s.%s\"]",
			    entry_name, entry_name, key);
	}
	if (!dst)
		return 0;
	if (!(s.key = arena_strndup(&L->sh->a, key, strlen(key))) || !(s.raw = render_dup(L, v)))
		return oom(L);
	if (table_set(dst, &s))
		return oom(L);
	return 0;
}

/* ---- automation rules ------------------------------------------------------------------ */

static const struct {
	const char *name;
	enum kumo_shaping_action_kind kind;
	bool set_config; /* takes {name = ..., value = ...} */
} action_names[] = {
    {"Suspend", KUMO_SHAPING_ACT_SUSPEND, false},
    {"SetConfig", KUMO_SHAPING_ACT_SET_CONFIG, true},
    {"SuspendTenant", KUMO_SHAPING_ACT_SUSPEND_TENANT, false},
    {"SuspendCampaign", KUMO_SHAPING_ACT_SUSPEND_CAMPAIGN, false},
    {"SetDomainConfig", KUMO_SHAPING_ACT_SET_DOMAIN_CONFIG, true},
    {"Bounce", KUMO_SHAPING_ACT_BOUNCE, false},
    {"BounceTenant", KUMO_SHAPING_ACT_BOUNCE_TENANT, false},
    {"BounceCampaign", KUMO_SHAPING_ACT_BOUNCE_CAMPAIGN, false},
};

static int find_action(const char *name)
{
	for (size_t i = 0; i < NELEM(action_names); i++)
		if (strcmp(action_names[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* Names a SetConfig action may not set: they shape the file, not an egress path. */
static bool structural(const char *key)
{
	static const char *const names[] = {"mx_rollup", "replace_base", "automation",
					    "sources",	 "match",	 NULL};
	for (const char *const *n = names; *n; n++)
		if (strcmp(*n, key) == 0)
			return true;
	return provider_only(key);
}

static int parse_set_config(struct loader *L, const struct kumo_toml_value *p,
			    struct kumo_shaping_action *a)
{
	const struct kumo_toml_value *name = kumo_toml_get(p, "name"), *value;
	const char *k, *s;
	int rc;

	if ((rc = need_table(L, p, "a table {name = \"setting\", value = ...}")))
		return rc;
	for (size_t i = 0; i < kumo_toml_count(p); i++) {
		if ((rc = get_key(L, p, i, &k)))
			return rc;
		if (strcmp(k, "name") != 0 && strcmp(k, "value") != 0) {
			size_t old = key_push_s(L, k);
			rc = fail(L, kumo_toml_line(kumo_toml_at(p, i)),
				  "unknown key: expected only name and value");
			key_pop(L, old);
			return rc;
		}
	}
	value = kumo_toml_get(p, "value");
	if (!name || !value) {
		size_t old = key_push_s(L, name ? "value" : "name");
		rc = fail(L, kumo_toml_line(p), "missing");
		key_pop(L, old);
		return rc;
	}
	size_t old = key_push_s(L, "name");
	rc = get_str(L, name, "a setting name", &s);
	if (!rc && !*s)
		rc = fail(L, kumo_toml_line(name), "empty setting name");
	if (!rc && structural(s))
		rc = fail(L, kumo_toml_line(name), "'%s' is not a setting an action can change", s);
	key_pop(L, old);
	if (rc)
		return rc;
	old = key_push_s(L, "value");
	rc = parse_setting(L, s, value, P_DOTTED, NULL, NULL);
	key_pop(L, old);
	if (rc)
		return rc;
	if (!(a->name = arena_strndup(&L->sh->a, s, strlen(s))) ||
	    !(a->value = render_dup(L, value)))
		return oom(L);
	return 0;
}

static int parse_action(struct loader *L, const struct kumo_toml_value *v,
			struct kumo_shaping_action *a)
{
	const char *s;
	int rc, i;

	*a = (struct kumo_shaping_action){0};
	if (kumo_toml_type(v) == KUMO_TOML_STRING) {
		if ((rc = get_str(L, v, "an action", &s)))
			return rc;
		if ((i = find_action(s)) < 0)
			return fail(L, kumo_toml_line(v),
				    "unknown action \"%s\": expected Suspend, SuspendTenant, "
				    "SuspendCampaign, Bounce, BounceTenant, BounceCampaign, "
				    "{SetConfig = {...}} or {SetDomainConfig = {...}}",
				    s);
		if (action_names[i].set_config)
			return fail(L, kumo_toml_line(v),
				    "%s needs a setting: {%s = {name = \"...\", value = ...}}", s,
				    s);
		a->kind = action_names[i].kind;
		return 0;
	}
	if (kumo_toml_type(v) != KUMO_TOML_TABLE)
		return fail(L, kumo_toml_line(v), "expected an action, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	if (kumo_toml_count(v) != 1)
		return fail(L, kumo_toml_line(v),
			    "an action table has exactly one key, such as {SetConfig = {...}}");
	if ((rc = get_key(L, v, 0, &s)))
		return rc;
	size_t old = key_push_s(L, s);
	if ((i = find_action(s)) < 0)
		rc = fail(L, kumo_toml_line(kumo_toml_at(v, 0)), "unknown action \"%s\"", s);
	else if (!action_names[i].set_config)
		rc = fail(L, kumo_toml_line(kumo_toml_at(v, 0)),
			  "%s takes no arguments: write action = \"%s\"", s, s);
	else
		rc = parse_set_config(L, kumo_toml_at(v, 0), a);
	key_pop(L, old);
	if (!rc)
		a->kind = action_names[i].kind;
	return rc;
}

static int parse_rule(struct loader *L, const struct kumo_toml_value *t, struct entry *e,
		      enum kumo_shaping_scope scope)
{
	static const char *const keys[] = {"regex",    "action",	 "trigger",
					   "duration", "match_internal", NULL};
	static const char *const required[] = {"regex", "action", "duration", NULL};
	struct kumo_shaping_rule r = {.immediate = true,
				      .scope = scope,
				      .entry = e->name,
				      .file = L->file,
				      .line = kumo_toml_line(t)};
	const struct kumo_toml_value *v;
	const char *k, *s;
	size_t old;
	int rc = 0;

	if ((rc = need_table(L, t, "an automation rule table")))
		return rc;
	for (size_t i = 0; i < kumo_toml_count(t); i++) {
		bool ok = false;
		if ((rc = get_key(L, t, i, &k)))
			return rc;
		for (const char *const *n = keys; *n; n++)
			ok |= strcmp(*n, k) == 0;
		if (!ok) {
			old = key_push_s(L, k);
			rc = fail(L, kumo_toml_line(kumo_toml_at(t, i)),
				  "unknown key in an automation rule: expected regex, action, "
				  "trigger, duration or match_internal");
			key_pop(L, old);
			return rc;
		}
	}
	for (const char *const *n = required; *n; n++) {
		if (kumo_toml_get(t, *n))
			continue;
		old = key_push_s(L, *n);
		rc = fail(L, r.line,
			  strcmp(*n, "duration") == 0 ? "missing: every automation rule needs a "
							"duration, such as duration = \"90m\""
						      : "missing");
		key_pop(L, old);
		return rc;
	}

	/* regex: a string or an array of strings */
	v = kumo_toml_get(t, "regex");
	old = key_push_s(L, "regex");
	size_t nre = kumo_toml_type(v) == KUMO_TOML_ARRAY ? kumo_toml_count(v) : 1;
	const char **re = arena_alloc(&L->sh->a, nre * sizeof(*re));
	if (!re)
		return oom(L);
	if (kumo_toml_type(v) == KUMO_TOML_ARRAY && nre == 0)
		rc = fail(L, kumo_toml_line(v), "empty list: a rule needs at least one regex");
	for (size_t i = 0; !rc && i < nre; i++) {
		const struct kumo_toml_value *x =
		    kumo_toml_type(v) == KUMO_TOML_ARRAY ? kumo_toml_at(v, i) : v;
		rc = get_str(L, x, "a regular expression (a string or a list of strings)", &s);
		if (!rc && !*s)
			rc = fail(L, kumo_toml_line(x), "empty regex: it would match everything");
		if (!rc && !(re[i] = arena_strndup(&L->sh->a, s, strlen(s))))
			rc = oom(L);
	}
	key_pop(L, old);
	if (rc)
		return rc;
	r.regex = re;
	r.nregex = nre;

	/* action: one action or an array of them */
	v = kumo_toml_get(t, "action");
	old = key_push_s(L, "action");
	size_t nact = kumo_toml_type(v) == KUMO_TOML_ARRAY ? kumo_toml_count(v) : 1;
	struct kumo_shaping_action *act = arena_alloc(&L->sh->a, nact * sizeof(*act));
	if (!act)
		return oom(L);
	if (kumo_toml_type(v) == KUMO_TOML_ARRAY && nact == 0)
		rc = fail(L, kumo_toml_line(v), "empty list: a rule needs at least one action");
	for (size_t i = 0; !rc && i < nact; i++)
		rc = parse_action(L, kumo_toml_type(v) == KUMO_TOML_ARRAY ? kumo_toml_at(v, i) : v,
				  &act[i]);
	key_pop(L, old);
	if (rc)
		return rc;
	r.actions = act;
	r.nactions = nact;

	/* trigger: "Immediate" (the default) or {Threshold = "N/period"} */
	if ((v = kumo_toml_get(t, "trigger"))) {
		old = key_push_s(L, "trigger");
		if (kumo_toml_type(v) == KUMO_TOML_STRING) {
			rc = get_str(L, v, "a trigger", &s);
			if (!rc && strcmp(s, "Immediate") != 0)
				rc = fail(
				    L, kumo_toml_line(v),
				    "\"%s\": expected \"Immediate\" or {Threshold = \"5/hr\"}", s);
		} else if (kumo_toml_type(v) == KUMO_TOML_TABLE && kumo_toml_count(v) == 1 &&
			   kumo_toml_get(v, "Threshold")) {
			size_t o2 = key_push_s(L, "Threshold");
			union val u;
			rc = parse_typed(L, kumo_toml_get(v, "Threshold"), V_RATE, &u);
			key_pop(L, o2);
			r.immediate = false;
			r.threshold = u.rate;
		} else {
			rc = fail(L, kumo_toml_line(v),
				  "expected \"Immediate\" or {Threshold = \"5/hr\"}");
		}
		key_pop(L, old);
		if (rc)
			return rc;
	}

	old = key_push_s(L, "duration");
	union val d;
	rc = parse_typed(L, kumo_toml_get(t, "duration"), V_DURATION, &d);
	key_pop(L, old);
	if (rc)
		return rc;
	r.duration_ms = d.n;

	if ((v = kumo_toml_get(t, "match_internal"))) {
		old = key_push_s(L, "match_internal");
		rc = get_bool(L, v, &r.match_internal);
		key_pop(L, old);
		if (rc)
			return rc;
	}

	if (e->nrules == e->caprules) {
		size_t cap = e->caprules ? e->caprules * 2 : 4;
		struct kumo_shaping_rule *nv = realloc(e->rules, cap * sizeof(*nv));
		if (!nv)
			return oom(L);
		e->rules = nv;
		e->caprules = cap;
	}
	e->rules[e->nrules++] = r;
	return 0;
}

static int parse_automation(struct loader *L, const struct kumo_toml_value *v, struct entry *e,
			    enum kumo_shaping_scope scope)
{
	int rc;

	if (kumo_toml_type(v) != KUMO_TOML_ARRAY)
		return fail(L, kumo_toml_line(v),
			    "expected an array of rules ([[\"domain\".automation]]), got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	for (size_t i = 0; i < kumo_toml_count(v); i++)
		if ((rc = parse_rule(L, kumo_toml_at(v, i), e, scope)))
			return rc;
	return 0;
}

static int parse_sources(struct loader *L, const struct kumo_toml_value *v, struct entry *e)
{
	const char *name, *k;
	int rc;

	if ((rc = need_table(L, v, "a table of egress sources ([\"domain\".sources.\"name\"])")))
		return rc;
	for (size_t i = 0; i < kumo_toml_count(v); i++) {
		const struct kumo_toml_value *st = kumo_toml_at(v, i);
		if ((rc = get_key(L, v, i, &name)))
			return rc;
		size_t old = key_push_s(L, name);
		rc = need_table(L, st, "a table of settings for this egress source");
		struct table *t = rc ? NULL : entry_source(e, name, &L->sh->a);
		if (!rc && !t)
			rc = oom(L);
		for (size_t j = 0; !rc && j < kumo_toml_count(st); j++) {
			if ((rc = get_key(L, st, j, &k)))
				break;
			size_t o2 = key_push_s(L, k);
			const struct kumo_toml_value *sv = kumo_toml_at(st, j);
			if (structural(k))
				rc = fail(L, kumo_toml_line(sv),
					  "not valid in a source entry: only settings are");
			else
				rc = parse_setting(L, k, sv, P_DOTTED, NULL, t);
			key_pop(L, o2);
		}
		key_pop(L, old);
		if (rc)
			return rc;
	}
	return 0;
}

/* Lowercase copy without the trailing dot, in the arena. */
static const char *norm_name(struct loader *L, const char *s)
{
	size_t n = name_len(s);
	char *p = arena_strndup(&L->sh->a, s, n);
	if (p)
		for (size_t i = 0; i < n; i++)
			p[i] = lower(p[i]);
	return p;
}

/* ["default"] or ["domain"]: settings, mx_rollup, replace_base, automation, sources. */
static int load_entry(struct loader *L, const char *key, const struct kumo_toml_value *t)
{
	bool is_default = strcmp(key, "default") == 0, rollup = true, replace = false, created;
	const struct kumo_toml_value *v;
	struct entry *e;
	const char *name, *k;
	int rc;

	if ((rc = need_table(L, t,
			     "a table (settings go under [\"default\"] or a [\"domain\"] entry)")))
		return rc;
	if ((v = kumo_toml_get(t, "mx_rollup"))) {
		size_t old = key_push_s(L, "mx_rollup");
		rc = get_bool(L, v, &rollup);
		key_pop(L, old);
		if (rc)
			return rc;
	}
	if ((v = kumo_toml_get(t, "replace_base"))) {
		size_t old = key_push_s(L, "replace_base");
		rc = get_bool(L, v, &replace);
		key_pop(L, old);
		if (rc)
			return rc;
	}
	if (is_default) {
		name = "default";
	} else {
		size_t n = name_len(key);
		if (!n)
			return fail(L, kumo_toml_line(t), "empty domain name");
		if (key[n - 1] == '.')
			return fail(L, kumo_toml_line(t),
				    "invalid domain name: it ends with \"..\"");
		if (!(name = norm_name(L, key)))
			return oom(L);
	}
	if ((rc = get_entry(L->sh,
			    is_default ? E_DEFAULT
			    : rollup   ? E_SITE
				       : E_DOMAIN,
			    name, &created, &e)))
		return oom(L);
	if (replace && !created)
		entry_clear(e);
	enum kumo_shaping_scope scope = is_default ? KUMO_SHAPING_SCOPE_DEFAULT
					: rollup   ? KUMO_SHAPING_SCOPE_SITE
						   : KUMO_SHAPING_SCOPE_DOMAIN;

	for (size_t i = 0; i < kumo_toml_count(t); i++) {
		v = kumo_toml_at(t, i);
		if ((rc = get_key(L, t, i, &k)))
			return rc;
		size_t old = key_push_s(L, k);
		if (strcmp(k, "mx_rollup") == 0 || strcmp(k, "replace_base") == 0)
			rc = 0;
		else if (strcmp(k, "automation") == 0)
			rc = parse_automation(L, v, e, scope);
		else if (strcmp(k, "sources") == 0)
			rc = parse_sources(L, v, e);
		else if (provider_only(k))
			rc =
			    fail(L, kumo_toml_line(v), "only valid in a [provider.\"name\"] entry");
		else
			rc = parse_setting(L, k, v,
					   is_default || strchr(key, '.') ? P_DOTTED : P_LABEL, key,
					   &e->params);
		key_pop(L, old);
		if (rc)
			return rc;
	}
	return 0;
}

static int parse_match(struct loader *L, const struct kumo_toml_value *v, struct entry *e)
{
	static const char *const kinds[] = {[M_MX_SUFFIX] = "MXSuffix",
					    [M_DOMAIN_SUFFIX] = "DomainSuffix",
					    [M_HOST_NAME] = "HostName"};
	const char *k, *s;
	int rc;

	if (kumo_toml_type(v) != KUMO_TOML_ARRAY)
		return fail(L, kumo_toml_line(v),
			    "expected an array such as [{MXSuffix = \".example.net\"}], got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	for (size_t i = 0; i < kumo_toml_count(v); i++) {
		const struct kumo_toml_value *m = kumo_toml_at(v, i);
		int kind = -1;
		if (kumo_toml_type(m) != KUMO_TOML_TABLE || kumo_toml_count(m) != 1)
			return fail(L, kumo_toml_line(m),
				    "each match is a table with one key: {MXSuffix = \"...\"}, "
				    "{DomainSuffix = \"...\"} or {HostName = \"...\"}");
		if ((rc = get_key(L, m, 0, &k)))
			return rc;
		size_t old = key_push_s(L, k);
		for (size_t j = 0; j < NELEM(kinds); j++)
			if (strcmp(kinds[j], k) == 0)
				kind = (int)j;
		if (kind < 0)
			rc = fail(L, kumo_toml_line(kumo_toml_at(m, 0)),
				  "unknown match: expected MXSuffix, DomainSuffix or HostName");
		else
			rc = get_str(L, kumo_toml_at(m, 0), "a name", &s);
		if (!rc && !name_len(s))
			rc = fail(L, kumo_toml_line(kumo_toml_at(m, 0)), "empty name");
		key_pop(L, old);
		if (rc)
			return rc;
		if (e->nm == e->capm) {
			size_t cap = e->capm ? e->capm * 2 : 4;
			struct match *nv = realloc(e->m, cap * sizeof(*nv));
			if (!nv)
				return oom(L);
			e->m = nv;
			e->capm = cap;
		}
		const char *n = norm_name(L, s);
		if (!n)
			return oom(L);
		e->m[e->nm++] = (struct match){(enum mkind)kind, n, strlen(n)};
	}
	return 0;
}

/* [provider."name"]: match, provider_* limits, settings, automation, sources. */
static int load_provider(struct loader *L, const char *key, const struct kumo_toml_value *t)
{
	const struct kumo_toml_value *v;
	bool replace = false, created;
	struct entry *e;
	const char *name, *k;
	union val u;
	int rc;

	if ((rc = need_table(L, t, "a table ([provider.\"name\"])")))
		return rc;
	if (!*key)
		return fail(L, kumo_toml_line(t), "empty provider name");
	if ((v = kumo_toml_get(t, "replace_base"))) {
		size_t old = key_push_s(L, "replace_base");
		rc = get_bool(L, v, &replace);
		key_pop(L, old);
		if (rc)
			return rc;
	}
	if (!(name = arena_strndup(&L->sh->a, key, strlen(key))))
		return oom(L);
	if ((rc = get_entry(L->sh, E_PROVIDER, name, &created, &e)))
		return oom(L);
	if (replace && !created)
		entry_clear(e);
	for (size_t i = 0; i < kumo_toml_count(t); i++) {
		v = kumo_toml_at(t, i);
		if ((rc = get_key(L, t, i, &k)))
			return rc;
		size_t old = key_push_s(L, k);
		if (strcmp(k, "replace_base") == 0) {
			rc = 0;
		} else if (strcmp(k, "match") == 0) {
			rc = parse_match(L, v, e);
		} else if (strcmp(k, "automation") == 0) {
			rc = parse_automation(L, v, e, KUMO_SHAPING_SCOPE_PROVIDER);
		} else if (strcmp(k, "sources") == 0) {
			rc = parse_sources(L, v, e);
		} else if (strcmp(k, "mx_rollup") == 0) {
			rc = fail(L, kumo_toml_line(v),
				  "only valid in a domain entry: providers match by MX host");
		} else if (strcmp(k, "provider_connection_limit") == 0) {
			if (!(rc = parse_typed(L, v, V_LIMIT, &u)))
				e->pconn = u.limit;
			if (!rc && !u.limit.limit)
				rc = fail(L, kumo_toml_line(v), "must be at least 1");
		} else if (strcmp(k, "provider_max_message_rate") == 0) {
			if (!(rc = parse_typed(L, v, V_RATE, &u)))
				e->prate = u.rate;
		} else {
			rc = parse_setting(L, k, v, P_PROVIDER, key, &e->params);
		}
		key_pop(L, old);
		if (rc)
			return rc;
	}
	return 0;
}

static int load_doc(struct loader *L, const struct kumo_toml_doc *doc)
{
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	const char *k, *pk;
	int rc;

	for (size_t i = 0; i < kumo_toml_count(root); i++) {
		const struct kumo_toml_value *v = kumo_toml_at(root, i);
		if ((rc = get_key(L, root, i, &k)))
			return rc;
		size_t old = key_push_s(L, k);
		if (strcmp(k, "provider") == 0) {
			rc = need_table(L, v, "a table of providers ([provider.\"name\"])");
			for (size_t j = 0; !rc && j < kumo_toml_count(v); j++) {
				if ((rc = get_key(L, v, j, &pk)))
					break;
				size_t o2 = key_push_s(L, pk);
				rc = load_provider(L, pk, kumo_toml_at(v, j));
				key_pop(L, o2);
			}
		} else {
			rc = load_entry(L, k, v);
		}
		key_pop(L, old);
		if (rc)
			return rc;
	}
	return 0;
}

static int load_common(const struct kumo_shaping_text *texts, const char *const *paths, size_t n,
		       struct kumo_shaping **out, char *err, size_t errcap)
{
	struct kumo_shaping *sh;
	int rc = 0;

	*out = NULL;
	if (err && errcap)
		err[0] = 0;
	if (!(sh = calloc(1, sizeof(*sh)))) {
		if (err && errcap)
			snprintf(err, errcap, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		const char *name = texts ? texts[i].name : paths[i];
		struct loader L = {.sh = sh, .err = err, .errcap = errcap};
		struct kumo_toml_doc *doc = NULL;
		struct kumo_toml_error terr;

		if (!name)
			name = "<input>";
		if (!(L.file = arena_strndup(&sh->a, name, strlen(name)))) {
			if (err && errcap)
				snprintf(err, errcap, "out of memory");
			rc = -ENOMEM;
			goto out_free;
		}
		if (texts)
			rc = kumo_toml_parse(texts[i].data, texts[i].len, &doc, &terr);
		else
			rc = kumo_toml_parse_file(name, &doc, &terr);
		if (rc) {
			if (err && errcap)
				kumo_toml_format_error(&terr, name, err, errcap);
			goto out_free;
		}
		rc = load_doc(&L, doc);
		kumo_toml_free(doc);
		if (rc)
			goto out_free;
	}
	*out = sh;
	return 0;
out_free:
	kumo_shaping_free(sh);
	return rc;
}

int kumo_shaping_load(const char *const *paths, size_t n, struct kumo_shaping **out, char *err,
		      size_t errcap)
{
	if (!out || (n && !paths))
		return -EINVAL;
	return load_common(NULL, paths, n, out, err, errcap);
}

int kumo_shaping_load_texts(const struct kumo_shaping_text *texts, size_t n,
			    struct kumo_shaping **out, char *err, size_t errcap)
{
	if (!out || (n && !texts))
		return -EINVAL;
	return load_common(texts, NULL, n, out, err, errcap);
}

/* ---- queries --------------------------------------------------------------------------- */

/* Lowercase copy without trailing dot; NULL on allocation failure. */
static char *norm_dup(const char *s)
{
	size_t n = name_len(s);
	char *p = malloc(n + 1);
	if (!p)
		return NULL;
	for (size_t i = 0; i < n; i++)
		p[i] = lower(s[i]);
	p[n] = 0;
	return p;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The site name of an MX set: distinct normalised host names, sorted, joined by ",". */
static char *site_of(const char *const *hosts, size_t n)
{
	char **v = calloc(n ? n : 1, sizeof(*v));
	struct sb b = {0};
	size_t k = 0;

	if (!v)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (!hosts[i] || !name_len(hosts[i]))
			continue;
		if (!(v[k] = norm_dup(hosts[i]))) {
			b.oom = true;
			break;
		}
		k++;
	}
	if (!b.oom) {
		qsort(v, k, sizeof(*v), cmp_str);
		for (size_t i = 0; i < k; i++) {
			if (i && strcmp(v[i], v[i - 1]) == 0)
				continue;
			if (b.n)
				sb_putc(&b, ',');
			sb_puts(&b, v[i]);
		}
		if (!b.p)
			sb_putn(&b, "", 0);
	}
	for (size_t i = 0; i < k; i++)
		free(v[i]);
	free(v);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* Provider rules apply to domain names only, not to names like a TSA URL. */
static bool is_domain_name(const char *d)
{
	if (!*d || *d == '.')
		return false;
	for (const char *p = d; *p; p++) {
		if (!is_alpha(*p) && !is_digit(*p) && *p != '-' && *p != '_' && *p != '.')
			return false;
		if (*p == '.' && p[1] == '.')
			return false;
	}
	return true;
}

/* KumoMTA's rule: a DomainSuffix match on the domain suffices; otherwise every MX host must
 * match some MXSuffix or HostName. */
static bool provider_matches(const struct entry *p, const char *domain, const char *const *hosts,
			     size_t nmx)
{
	bool need_mx = false;
	size_t dlen = strlen(domain);

	for (size_t i = 0; i < p->nm; i++) {
		if (p->m[i].kind == M_DOMAIN_SUFFIX) {
			if (suffix_match(domain, dlen, p->m[i].s, p->m[i].len))
				return true;
		} else {
			need_mx = true;
		}
	}
	if (!need_mx || !nmx)
		return false;
	for (size_t h = 0; h < nmx; h++) {
		bool ok = false;
		if (!hosts[h])
			return false;
		size_t hl = name_len(hosts[h]);
		for (size_t i = 0; i < p->nm && !ok; i++) {
			const struct match *m = &p->m[i];
			if (m->kind == M_MX_SUFFIX)
				ok = suffix_match(hosts[h], hl, m->s, m->len);
			else if (m->kind == M_HOST_NAME)
				ok = hl == m->len && ieq_n(hosts[h], m->s, hl);
		}
		if (!ok)
			return false;
	}
	return true;
}

/* Entries matching one destination, each list in entry order. */
struct matched {
	char *domain; /* normalised */
	struct entry **prov;
	size_t nprov;
	struct entry **site;
	size_t nsite;
	struct entry *dom;
};

static void matched_free(struct matched *m)
{
	free(m->domain);
	free(m->prov);
	free(m->site);
}

static int match_all(const struct kumo_shaping *sh, const char *domain, const char *const *hosts,
		     size_t nmx, struct matched *m)
{
	*m = (struct matched){0};
	if (!domain || !name_len(domain) || (nmx && !hosts))
		return -EINVAL;
	if (!(m->domain = norm_dup(domain)))
		return -ENOMEM;
	m->dom = smap_get(&sh->by_domain_name, m->domain);

	if (is_domain_name(m->domain)) {
		for (size_t i = 0; i < sh->nprov; i++) {
			struct entry *e = sh->prov_list[i];
			if (!provider_matches(e, m->domain, hosts, nmx))
				continue;
			if (!m->prov && !(m->prov = calloc(sh->nprov, sizeof(*m->prov))))
				goto out_nomem;
			m->prov[m->nprov++] = e;
		}
	}

	/* Site entries: by name, and those bound to this MX set, merged in entry order. */
	struct entry *byname = smap_get(&sh->by_site_name, m->domain);
	const struct group *g = NULL;
	if (nmx && sh->sites.n) {
		char *site = site_of(hosts, nmx);
		if (!site)
			goto out_nomem;
		g = smap_get(&sh->sites, site);
		free(site);
	}
	size_t gn = g ? g->n : 0;
	if (!(m->site = calloc(gn + 1, sizeof(*m->site))))
		goto out_nomem;
	for (size_t i = 0; i < gn; i++) {
		if (byname && byname->index < g->v[i]->index) {
			m->site[m->nsite++] = byname;
			byname = NULL;
		}
		if (g->v[i] == byname)
			byname = NULL;
		m->site[m->nsite++] = g->v[i];
	}
	if (byname)
		m->site[m->nsite++] = byname;
	return 0;
out_nomem:
	matched_free(m);
	return -ENOMEM;
}

static void put_extra(struct kumo_shaping_params *p, const struct setting *s)
{
	for (size_t i = 0; i < p->nextra; i++) {
		if (strcmp(p->extra[i].key, s->key) == 0) {
			p->extra[i].value = s->raw;
			return;
		}
	}
	if (p->nextra == KUMO_SHAPING_MAX_EXTRA) {
		p->extra_truncated = true;
		return;
	}
	p->extra[p->nextra++] = (struct kumo_shaping_kv){s->key, s->raw};
}

static void apply_setting(struct kumo_shaping_params *p, const struct setting *s)
{
	if (s->field < 0) {
		put_extra(p, s);
		return;
	}
	p->set |= 1u << s->field;
	switch ((enum kumo_shaping_field)s->field) {
	case KUMO_SHAPING_F_CONNECTION_LIMIT:
		p->connection_limit = s->v.limit;
		break;
	case KUMO_SHAPING_F_MAX_CONNECTION_RATE:
		p->max_connection_rate = s->v.rate;
		break;
	case KUMO_SHAPING_F_MAX_MESSAGE_RATE:
		p->max_message_rate = s->v.rate;
		break;
	case KUMO_SHAPING_F_MAX_DELIVERIES_PER_CONNECTION:
		p->max_deliveries_per_connection = s->v.n;
		break;
	case KUMO_SHAPING_F_MAX_READY:
		p->max_ready = s->v.n;
		break;
	case KUMO_SHAPING_F_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY:
		p->consecutive_connection_failures_before_delay = s->v.n;
		break;
	case KUMO_SHAPING_F_ENABLE_TLS:
		p->enable_tls = s->v.tls;
		break;
	case KUMO_SHAPING_F_CONNECT_TIMEOUT:
		p->connect_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_BANNER_TIMEOUT:
		p->banner_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_EHLO_TIMEOUT:
		p->ehlo_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_MAIL_FROM_TIMEOUT:
		p->mail_from_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_RCPT_TO_TIMEOUT:
		p->rcpt_to_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_DATA_TIMEOUT:
		p->data_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_DATA_DOT_TIMEOUT:
		p->data_dot_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_RSET_TIMEOUT:
		p->rset_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_IDLE_TIMEOUT:
		p->idle_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_STARTTLS_TIMEOUT:
		p->starttls_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_AUTH_TIMEOUT:
		p->auth_timeout_ms = s->v.n;
		break;
	case KUMO_SHAPING_F_PROVIDER_NAME:
		p->provider_name = s->v.str;
		break;
	case KUMO_SHAPING_NFIELDS:
		break;
	}
}

static void apply_table(struct kumo_shaping_params *p, const struct table *t)
{
	for (size_t i = 0; t && i < t->n; i++)
		apply_setting(p, &t->v[i]);
}

/* KumoMTA's implied provider settings: its name, and its shared limits. */
static void apply_provider(struct kumo_shaping_params *p, const struct entry *e)
{
	p->provider_name = e->name;
	p->set |= 1u << KUMO_SHAPING_F_PROVIDER_NAME;
	for (size_t i = 0; i < p->nproviders; i++)
		if (p->providers[i].name == e->name)
			return;
	if (p->nproviders == KUMO_SHAPING_MAX_PROVIDERS) {
		p->providers_truncated = true;
		return;
	}
	p->providers[p->nproviders++] = (struct kumo_shaping_provider){e->name, e->pconn, e->prate};
}

static void defaults(struct kumo_shaping_params *p)
{
	*p = (struct kumo_shaping_params){0};
	p->mx_rollup = true;
	p->connection_limit.limit = 32;
	p->max_deliveries_per_connection = 1024;
	p->max_ready = 1024;
	p->consecutive_connection_failures_before_delay = 100;
	p->enable_tls = KUMO_SHAPING_TLS_OPPORTUNISTIC;
	p->connect_timeout_ms = 60000;
	p->banner_timeout_ms = 60000;
	p->ehlo_timeout_ms = 300000;
	p->mail_from_timeout_ms = 300000;
	p->rcpt_to_timeout_ms = 300000;
	p->data_timeout_ms = 300000;
	p->data_dot_timeout_ms = 300000;
	p->rset_timeout_ms = 5000;
	p->idle_timeout_ms = 5000;
	p->starttls_timeout_ms = 5000;
	p->auth_timeout_ms = 60000;
}

int kumo_shaping_effective(const struct kumo_shaping *sh, const char *domain,
			   const char *const *mx_hosts, size_t nmx, const char *source,
			   struct kumo_shaping_params *out)
{
	struct matched m;
	int rc;

	if (!sh || !out)
		return -EINVAL;
	if ((rc = match_all(sh, domain, mx_hosts, nmx, &m)))
		return rc;
	defaults(out);
	if (sh->deflt) {
		apply_table(out, &sh->deflt->params);
		apply_table(out, entry_find_source(sh->deflt, source));
	}
	for (size_t i = 0; i < m.nprov; i++) {
		apply_table(out, &m.prov[i]->params);
		apply_provider(out, m.prov[i]);
	}
	for (size_t i = 0; i < m.nprov; i++) {
		const struct table *t = entry_find_source(m.prov[i], source);
		if (t) {
			apply_table(out, t);
			apply_provider(out, m.prov[i]);
		}
	}
	for (size_t i = 0; i < m.nsite; i++)
		apply_table(out, &m.site[i]->params);
	if (m.dom) {
		apply_table(out, &m.dom->params);
		out->mx_rollup = false;
	}
	for (size_t i = 0; i < m.nsite; i++)
		apply_table(out, entry_find_source(m.site[i], source));
	if (m.dom)
		apply_table(out, entry_find_source(m.dom, source));
	matched_free(&m);
	return 0;
}

size_t kumo_shaping_rules(const struct kumo_shaping *sh, const char *domain,
			  const char *const *mx_hosts, size_t nmx,
			  const struct kumo_shaping_rule **out, size_t cap)
{
	struct matched m;
	size_t n = 0;

	if (!sh || match_all(sh, domain, mx_hosts, nmx, &m))
		return 0;
#define ADD_RULES(e)                                                                               \
	for (size_t r = 0; r < (e)->nrules; r++, n++)                                              \
		if (n < cap && out)                                                                \
			out[n] = &(e)->rules[r];
	if (sh->deflt)
		ADD_RULES(sh->deflt);
	for (size_t i = 0; i < m.nprov; i++)
		ADD_RULES(m.prov[i]);
	for (size_t i = 0; i < m.nsite; i++)
		ADD_RULES(m.site[i]);
	if (m.dom)
		ADD_RULES(m.dom);
#undef ADD_RULES
	matched_free(&m);
	return n;
}

size_t kumo_shaping_site_entry_count(const struct kumo_shaping *sh)
{
	return sh ? sh->nsite : 0;
}

const char *kumo_shaping_site_entry(const struct kumo_shaping *sh, size_t i)
{
	return sh && i < sh->nsite ? sh->site_list[i]->name : NULL;
}

static void group_remove(struct group *g, const struct entry *e)
{
	for (size_t i = 0; i < g->n; i++) {
		if (g->v[i] == e) {
			memmove(&g->v[i], &g->v[i + 1], (g->n - i - 1) * sizeof(*g->v));
			g->n--;
			return;
		}
	}
}

int kumo_shaping_bind_site(struct kumo_shaping *sh, const char *domain, const char *const *mx_hosts,
			   size_t nmx)
{
	struct entry *e;
	struct group *g;
	char *name, *site;
	int rc = 0;

	if (!sh || !domain || !nmx || !mx_hosts)
		return -EINVAL;
	if (!(name = norm_dup(domain)))
		return -ENOMEM;
	e = smap_get(&sh->by_site_name, name);
	free(name);
	if (!e)
		return -ENOENT;
	if (!(site = site_of(mx_hosts, nmx)))
		return -ENOMEM;
	if (!*site) {
		rc = -EINVAL;
		goto out_site;
	}
	if (e->site && strcmp(e->site, site) == 0)
		goto out_site;
	if (!(g = smap_get(&sh->sites, site))) {
		char *key = arena_strndup(&sh->a, site, strlen(site));
		if (!key || !(g = calloc(1, sizeof(*g)))) {
			rc = -ENOMEM;
			goto out_site;
		}
		g->site = key;
		if ((rc = smap_put(&sh->sites, key, g))) {
			free(g);
			goto out_site;
		}
	}
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 4;
		struct entry **v = realloc(g->v, cap * sizeof(*v));
		if (!v) {
			rc = -ENOMEM;
			goto out_site;
		}
		g->v = v;
		g->cap = cap;
	}
	if (e->site)
		group_remove(smap_get(&sh->sites, e->site), e);
	size_t at = g->n;
	while (at > 0 && g->v[at - 1]->index > e->index)
		at--;
	memmove(&g->v[at + 1], &g->v[at], (g->n - at) * sizeof(*g->v));
	g->v[at] = e;
	g->n++;
	e->site = g->site;
out_site:
	free(site);
	return rc;
}
