/* kumod's merge of several tsa-daemons' shaping overlays into one TOML document: tables
 * of the same name are merged key by key, recursively, and the later daemon's value wins
 * where two set the same key. Values are written back with kumo_toml_render_value. */
#include "tsa.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "util/toml.h"

/* The [header] of the table being written: its keys from the root. */
struct keypath {
	size_t n;
	const char *s[KUMO_TOML_MAX_DEPTH + 1];
	size_t len[KUMO_TOML_MAX_DEPTH + 1];
};

static bool is_table(const struct kumo_toml_value *v)
{
	return v && kumo_toml_type(v) == KUMO_TOML_TABLE;
}

static const struct kumo_toml_value *member(const struct kumo_toml_value *t, const char *k,
					    size_t kl)
{
	return t ? kumo_toml_getn(t, k, kl) : NULL;
}

/* Gathers what the documents' tables tabs[0..n) hold under key: in sub[], the tables
 * since the last document that gives key another type. Returns that other value when
 * the last document to have key gives it, else NULL. */
static const struct kumo_toml_value *gather(const struct kumo_toml_value *const *tabs, size_t n,
					    const char *k, size_t kl,
					    const struct kumo_toml_value **sub)
{
	const struct kumo_toml_value *leaf = NULL;
	for (size_t j = 0; j < n; j++) {
		const struct kumo_toml_value *v = member(tabs[j], k, kl);
		sub[j] = is_table(v) ? v : NULL;
		if (v && !is_table(v)) {
			leaf = v;
			memset(sub, 0, j * sizeof(*sub)); /* a later value replaces tables */
		} else if (v) {
			leaf = NULL;
		}
	}
	return leaf;
}

static void put_header(struct kumo_buf *b, const struct keypath *kp)
{
	kumo_buf_puts(b, "\n[");
	for (size_t i = 0; i < kp->n; i++) {
		if (i)
			kumo_buf_putc(b, '.');
		kumo_toml_render_key(b, kp->s[i], kp->len[i]);
	}
	kumo_buf_puts(b, "]\n");
}

static void merge_table(const struct kumo_toml_value *const *tabs, size_t n, struct keypath *kp,
			struct kumo_buf *out);

/* Writes key of tabs[i] unless an earlier document has it (it was written then): its
 * value in pass 0, or in pass 1 its [header] and the merge of its tables. */
static void merge_key(const struct kumo_toml_value *const *tabs, size_t n, size_t i,
		      const char *key, size_t kl, int pass, struct keypath *kp,
		      struct kumo_buf *out)
{
	const struct kumo_toml_value *sub[KUMOD_TSA_MAX_DAEMONS];
	for (size_t j = 0; j < i; j++)
		if (member(tabs[j], key, kl))
			return;
	const struct kumo_toml_value *leaf = gather(tabs, n, key, kl, sub);
	if (pass == 0 && leaf) {
		kumo_toml_render_key(out, key, kl);
		kumo_buf_puts(out, " = ");
		kumo_toml_render_value(out, leaf);
		kumo_buf_putc(out, '\n');
	} else if (pass == 1 && !leaf && kp->n < KUMO_TOML_MAX_DEPTH) {
		kp->s[kp->n] = key;
		kp->len[kp->n++] = kl;
		put_header(out, kp);
		merge_table(sub, n, kp, out);
		kp->n--;
	}
}

/* Writes the merge of tabs[0..n) (NULL: absent in that document): first the values of
 * the table at kp, then each sub-table under its [header], keys in the order of the first
 * document that has them. */
static void merge_table(const struct kumo_toml_value *const *tabs, size_t n, struct keypath *kp,
			struct kumo_buf *out)
{
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < n; i++)
			for (size_t k = 0; k < kumo_toml_count(tabs[i]); k++) {
				size_t kl;
				const char *key = kumo_toml_keyn_at(tabs[i], k, &kl);
				merge_key(tabs, n, i, key, kl, pass, kp, out);
			}
}

int kumod_tsa_merge_overlays(const char *const *docs, size_t ndocs, struct kumo_buf *out, char *err,
			     size_t errcap)
{
	struct kumo_toml_doc *parsed[KUMOD_TSA_MAX_DAEMONS] = {0};
	const struct kumo_toml_value *roots[KUMOD_TSA_MAX_DAEMONS] = {0};
	int rc = ndocs > KUMOD_TSA_MAX_DAEMONS ? -E2BIG : 0;
	for (size_t i = 0; !rc && i < ndocs; i++) {
		struct kumo_toml_error te;
		if (docs[i] && (rc = kumo_toml_parse(docs[i], strlen(docs[i]), &parsed[i], &te))) {
			char name[32];
			snprintf(name, sizeof(name), "<overlay %zu>", i + 1);
			kumo_toml_format_error(&te, name, err, errcap);
		}
		roots[i] = parsed[i] ? kumo_toml_root(parsed[i]) : NULL;
	}
	struct keypath kp = {0};
	if (!rc)
		merge_table(roots, ndocs, &kp, out);
	for (size_t i = 0; i < ndocs && i < KUMOD_TSA_MAX_DAEMONS; i++)
		kumo_toml_free(parsed[i]);
	return rc ? rc : out->oom ? -ENOMEM : 0;
}
