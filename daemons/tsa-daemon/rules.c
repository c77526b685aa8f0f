/* tsa-daemon: automation rules with compiled regexes; see rules.h. Each rule of the TOML
 * files is found again from the loader's rule by its file, line and regex list. */
#include "rules.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/toml.h"

/* A backtracking bound per match, so that a pathological pattern cannot stall the loop. */
#define MATCH_LIMIT 1000000
#define DEPTH_LIMIT 10000

struct rule {
	struct tsa_rule_info info;
	char **regex;
	pcre2_code **code;
	bool *value_is_string;
};

struct tsa_rules {
	struct kumo_shaping *sh;
	char **files;
	size_t nfiles;
	struct rule *rules; /* sorted by (file, line) */
	size_t n, cap;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	unsigned long errors;
};

struct walk {
	struct tsa_rules *r;
	const char *file;
	char *err;
	size_t errcap;
};

static int add_regex(struct walk *w, struct rule *ru, const char *pattern, size_t len,
		     const char *entry)
{
	int errcode;
	PCRE2_SIZE off;
	size_t i = ru->info.nregex;
	if (!(ru->regex[i] = strndup(pattern, len)))
		return -ENOMEM;
	ru->code[i] = pcre2_compile((PCRE2_SPTR)pattern, len, 0, &errcode, &off, NULL);
	if (!ru->code[i]) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(errcode, msg, sizeof(msg));
		if (w->errcap)
			snprintf(w->err, w->errcap,
				 "%s:%d: automation rule of \"%s\": regex \"%s\": %s at offset %zu",
				 w->file, ru->info.line, entry, ru->regex[i], (const char *)msg,
				 (size_t)off);
		free(ru->regex[i]);
		return -EINVAL;
	}
	pcre2_jit_compile(ru->code[i], PCRE2_JIT_COMPLETE); /* the interpreter when it fails */
	ru->info.nregex++;
	return 0;
}

static void free_rule(struct rule *ru)
{
	for (size_t i = 0; i < ru->info.nregex; i++) {
		free(ru->regex[i]);
		pcre2_code_free(ru->code[i]);
	}
	free(ru->regex);
	free(ru->code);
	free(ru->value_is_string);
}

/* Whether an action (a string such as "Suspend", or {SetConfig = {name, value}}) has a
 * string value. */
static bool action_value_is_string(const struct kumo_toml_value *a)
{
	if (kumo_toml_type(a) != KUMO_TOML_TABLE || kumo_toml_count(a) != 1)
		return false;
	const struct kumo_toml_value *v = kumo_toml_get(kumo_toml_at(a, 0), "value");
	return v && kumo_toml_type(v) == KUMO_TOML_STRING;
}

static int add_rule(struct walk *w, const struct kumo_toml_value *t, const char *entry)
{
	struct tsa_rules *r = w->r;
	const struct kumo_toml_value *re = kumo_toml_get(t, "regex");
	const struct kumo_toml_value *act = kumo_toml_get(t, "action");
	if (!re || !act)
		return 0; /* not a rule the loader accepted; it said so already */
	size_t nre = kumo_toml_type(re) == KUMO_TOML_ARRAY ? kumo_toml_count(re) : 1;
	size_t nact = kumo_toml_type(act) == KUMO_TOML_ARRAY ? kumo_toml_count(act) : 1;
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct rule *nr = realloc(r->rules, cap * sizeof(*nr));
		if (!nr)
			return -ENOMEM;
		r->rules = nr;
		r->cap = cap;
	}
	struct rule *ru = &r->rules[r->n];
	memset(ru, 0, sizeof(*ru));
	ru->info.file = w->file;
	ru->info.line = kumo_toml_line(t);
	ru->regex = calloc(nre ? nre : 1, sizeof(*ru->regex));
	ru->code = calloc(nre ? nre : 1, sizeof(*ru->code));
	ru->value_is_string = calloc(nact ? nact : 1, sizeof(*ru->value_is_string));
	if (!ru->regex || !ru->code || !ru->value_is_string) {
		free_rule(ru);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nre; i++) {
		const struct kumo_toml_value *p =
		    kumo_toml_type(re) == KUMO_TOML_ARRAY ? kumo_toml_at(re, i) : re;
		size_t len;
		const char *s = kumo_toml_string(p, &len);
		if (kumo_toml_type(p) != KUMO_TOML_STRING)
			continue;
		int rc = add_regex(w, ru, s, len, entry);
		if (rc < 0) {
			free_rule(ru);
			return rc;
		}
	}
	for (size_t i = 0; i < nact; i++)
		ru->value_is_string[i] = action_value_is_string(
		    kumo_toml_type(act) == KUMO_TOML_ARRAY ? kumo_toml_at(act, i) : act);
	ru->info.regex = (const char *const *)ru->regex;
	ru->info.nactions = nact;
	ru->info.value_is_string = ru->value_is_string;
	r->n++;
	return 0;
}

static int visit_entry(struct walk *w, const struct kumo_toml_value *entry, const char *name)
{
	const struct kumo_toml_value *a = kumo_toml_get(entry, "automation");
	int rc = 0;
	if (!a || kumo_toml_type(a) != KUMO_TOML_ARRAY)
		return 0;
	for (size_t i = 0; i < kumo_toml_count(a) && rc == 0; i++)
		if (kumo_toml_type(kumo_toml_at(a, i)) == KUMO_TOML_TABLE)
			rc = add_rule(w, kumo_toml_at(a, i), name);
	return rc;
}

static int visit_file(struct walk *w)
{
	struct kumo_toml_doc *doc;
	struct kumo_toml_error terr;
	int rc = kumo_toml_parse_file(w->file, &doc, &terr);
	if (rc < 0) {
		if (w->errcap)
			kumo_toml_format_error(&terr, w->file, w->err, w->errcap);
		return rc;
	}
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	for (size_t i = 0; i < kumo_toml_count(root) && rc == 0; i++) {
		const char *k = kumo_toml_key_at(root, i);
		const struct kumo_toml_value *v = kumo_toml_at(root, i);
		if (kumo_toml_type(v) != KUMO_TOML_TABLE)
			continue;
		if (strcmp(k, "provider") != 0) {
			rc = visit_entry(w, v, k);
			continue;
		}
		for (size_t j = 0; j < kumo_toml_count(v) && rc == 0; j++)
			if (kumo_toml_type(kumo_toml_at(v, j)) == KUMO_TOML_TABLE)
				rc = visit_entry(w, kumo_toml_at(v, j), kumo_toml_key_at(v, j));
	}
	kumo_toml_free(doc);
	return rc;
}

static int rule_cmp(const void *a, const void *b)
{
	const struct rule *x = a, *y = b;
	int c = strcmp(x->info.file, y->info.file);
	if (c)
		return c;
	return (x->info.line > y->info.line) - (x->info.line < y->info.line);
}

int tsa_rules_load(const char *const *paths, size_t n, struct tsa_rules **out, char *err,
		   size_t errcap)
{
	struct tsa_rules *r = calloc(1, sizeof(*r));
	int rc = -ENOMEM;
	*out = NULL;
	if (!r || !(r->files = calloc(n ? n : 1, sizeof(*r->files))))
		goto fail;
	if ((rc = kumo_shaping_load(paths, n, &r->sh, err, errcap)) < 0)
		goto fail;
	rc = -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (!(r->files[i] = strdup(paths[i])))
			goto fail;
		r->nfiles++;
	}
	for (size_t i = 0; i < n; i++) {
		struct walk w = {.r = r, .file = r->files[i], .err = err, .errcap = errcap};
		if ((rc = visit_file(&w)) < 0)
			goto fail;
	}
	qsort(r->rules, r->n, sizeof(*r->rules), rule_cmp);
	for (size_t i = 0; i < r->n; i++)
		r->rules[i].info.index = i;
	rc = -ENOMEM;
	if (!(r->md = pcre2_match_data_create(1, NULL)) ||
	    !(r->mctx = pcre2_match_context_create(NULL)))
		goto fail;
	pcre2_set_match_limit(r->mctx, MATCH_LIMIT);
	pcre2_set_depth_limit(r->mctx, DEPTH_LIMIT);
	*out = r;
	return 0;
fail:
	if (rc == -ENOMEM && errcap)
		snprintf(err, errcap, "out of memory loading the shaping files");
	tsa_rules_free(r);
	return rc;
}

void tsa_rules_free(struct tsa_rules *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		free_rule(&r->rules[i]);
	free(r->rules);
	for (size_t i = 0; i < r->nfiles; i++)
		free(r->files[i]);
	free(r->files);
	pcre2_match_data_free(r->md);
	pcre2_match_context_free(r->mctx);
	kumo_shaping_free(r->sh);
	free(r);
}

struct kumo_shaping *tsa_rules_shaping(struct tsa_rules *r)
{
	return r->sh;
}

const struct tsa_rule_info *tsa_rules_info(const struct tsa_rules *r,
					   const struct kumo_shaping_rule *rule)
{
	/* The first rule at or after (file, line), then the ones on the same line. */
	size_t lo = 0, hi = r->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct tsa_rule_info *m = &r->rules[mid].info;
		int c = strcmp(m->file, rule->file);
		if (c < 0 || (c == 0 && m->line < rule->line))
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < r->n; i++) {
		const struct tsa_rule_info *m = &r->rules[i].info;
		if (strcmp(m->file, rule->file) != 0 || m->line != rule->line)
			break;
		if (m->nregex != rule->nregex || m->nactions != rule->nactions)
			continue;
		size_t k = 0;
		while (k < m->nregex && strcmp(m->regex[k], rule->regex[k]) == 0)
			k++;
		if (k == m->nregex)
			return m;
	}
	return NULL;
}

int tsa_rules_match(struct tsa_rules *r, const struct tsa_rule_info *info, const char *subject,
		    size_t len)
{
	const struct rule *ru = &r->rules[info->index];
	int result = -1;
	for (size_t i = 0; i < info->nregex; i++) {
		int rc = pcre2_match(ru->code[i], (PCRE2_SPTR)subject, len, 0, 0, r->md, r->mctx);
		if (rc >= 0)
			return (int)i;
		if (rc != PCRE2_ERROR_NOMATCH) {
			r->errors++;
			result = -2;
		}
	}
	return result;
}

unsigned long tsa_rules_errors(const struct tsa_rules *r)
{
	return r->errors;
}

size_t tsa_rules_count(const struct tsa_rules *r)
{
	return r->n;
}
