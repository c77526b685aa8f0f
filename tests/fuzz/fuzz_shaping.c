/* libFuzzer target for shaping files: arbitrary bytes are loaded as one shaping file (or two,
 * split at a "\n#--\n" line, to exercise merging); a refused file must come with a
 * "fuzz-N.toml:..." message, and a loaded one is queried for several destinations. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/shaping.h"

static const char *const mx_sets[][3] = {
    {"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com", NULL},
    {"mta5.am0.yahoodns.net", NULL, NULL},
    {"a.mx.example", "b.MX.example.", NULL},
    {NULL, NULL, NULL},
};

static void check_params(const struct kumo_shaping_params *p)
{
	if (p->nproviders > KUMO_SHAPING_MAX_PROVIDERS || p->nextra > KUMO_SHAPING_MAX_EXTRA)
		abort();
	if (p->set >> KUMO_SHAPING_NFIELDS)
		abort();
	for (size_t i = 0; i < p->nproviders; i++)
		if (!p->providers[i].name)
			abort();
	for (size_t i = 0; i < p->nextra; i++)
		if (!p->extra[i].key || !p->extra[i].value)
			abort();
	if (p->nproviders && !p->provider_name)
		abort();
	if (p->max_message_rate.count && !p->max_message_rate.period_ms)
		abort();
	if (p->max_connection_rate.count && !p->max_connection_rate.period_ms)
		abort();
	if ((unsigned)p->enable_tls > KUMO_SHAPING_TLS_DISABLED)
		abort();
}

static void check_rules(const struct kumo_shaping *sh, const char *domain, const char *const *mx,
			size_t nmx)
{
	const struct kumo_shaping_rule *r[16];
	size_t n = kumo_shaping_rules(sh, domain, mx, nmx, NULL, 0);

	if (kumo_shaping_rules(sh, domain, mx, nmx, r, 16) != n)
		abort();
	for (size_t i = 0; i < n && i < 16; i++) {
		if (!r[i]->nregex || !r[i]->nactions || !r[i]->entry || !r[i]->file ||
		    r[i]->line < 1)
			abort();
		for (size_t k = 0; k < r[i]->nregex; k++)
			if (!r[i]->regex[k] || !r[i]->regex[k][0])
				abort();
		for (size_t k = 0; k < r[i]->nactions; k++) {
			const struct kumo_shaping_action *a = &r[i]->actions[k];
			bool set = a->kind == KUMO_SHAPING_ACT_SET_CONFIG ||
				   a->kind == KUMO_SHAPING_ACT_SET_DOMAIN_CONFIG;
			if (set != (a->name != NULL) || set != (a->value != NULL))
				abort();
		}
		if (r[i]->immediate == (r[i]->threshold.count != 0))
			abort();
	}
}

static void query(struct kumo_shaping *sh, const char *domain)
{
	struct kumo_shaping_params p;

	for (size_t m = 0; m < sizeof(mx_sets) / sizeof(mx_sets[0]); m++) {
		size_t nmx = 0;
		while (nmx < 3 && mx_sets[m][nmx])
			nmx++;
		for (int s = 0; s < 2; s++) {
			if (kumo_shaping_effective(sh, domain, mx_sets[m], nmx,
						   s ? "my source name" : NULL, &p))
				abort();
			check_params(&p);
		}
		check_rules(sh, domain, mx_sets[m], nmx);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kumo_shaping_text t[2] = {{"fuzz-1.toml", NULL, 0}, {"fuzz-2.toml", NULL, 0}};
	struct kumo_shaping *sh = NULL;
	size_t n = 1, cut = size;
	char err[512];
	char *copy;
	int rc;

	/* An exact-size copy, so that reading past the input trips the address sanitizer. */
	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	if (size)
		memcpy(copy, data, size);
	for (size_t i = 0; i + 5 <= size; i++) {
		if (memcmp(copy + i, "\n#--\n", 5) == 0) {
			cut = i + 1;
			n = 2;
			break;
		}
	}
	t[0].data = copy;
	t[0].len = cut;
	t[1].data = copy + cut;
	t[1].len = size - cut;

	rc = kumo_shaping_load_texts(t, n, &sh, err, sizeof(err));
	if (rc == 0) {
		if (!sh)
			abort();
		query(sh, "gmail.com");
		query(sh, "example.com");
		query(sh, "x.corp.example");
		query(sh, "http://127.0.0.1:8008.tsa.kumomta");
		size_t nsites = kumo_shaping_site_entry_count(sh);
		for (size_t i = 0; i < nsites && i < 8; i++) {
			const char *name = kumo_shaping_site_entry(sh, i);
			if (!name)
				abort();
			query(sh, name);
			if (kumo_shaping_bind_site(sh, name, mx_sets[i % 3], 1))
				abort();
			query(sh, "bound.example");
		}
		kumo_shaping_free(sh);
	} else if (rc == -EINVAL) {
		if (sh || strncmp(err, "fuzz-", 5) != 0 || !memchr(err, 0, sizeof(err)))
			abort();
	} else if (rc != -ENOMEM) {
		abort();
	}
	free(copy);
	return 0;
}
