/* tsa-daemon: the automation rules of the shaping files ready to run: loaded with the shaping
 * loader, their regexes compiled with PCRE2 (JIT when available), SetConfig value types known,
 * and a response line matched against a rule. */
#ifndef TSA_RULES_H
#define TSA_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/shaping.h"

struct tsa_rules;

/* What the shaping loader cannot say about a rule: its compiled regexes and the type of
 * each action's value. */
struct tsa_rule_info {
	const char *file; /* as given to tsa_rules_load */
	int line;	  /* the rule's [[...automation]] line */
	size_t nregex;
	const char *const *regex;
	size_t nactions;
	const bool *value_is_string; /* per action: SetConfig value was a TOML string */
	size_t index;		     /* position among all rules, for tsa_rules_match */
};

/* Loads the shaping files at paths (in order, as kumod does) and compiles every regex of
 * every automation rule. Patterns are compiled with PCRE2's default options (add (*UTF)
 * at the start of a pattern for code point semantics); look-around and the rest of PCRE2's
 * syntax work. Returns 0 with *out, or -EINVAL (an invalid file or regex), -ENOMEM, -errno
 * (a file cannot be read), with err holding "FILE:LINE: ...". */
int tsa_rules_load(const char *const *paths, size_t n, struct tsa_rules **out, char *err,
		   size_t errcap);
void tsa_rules_free(struct tsa_rules *r);

/* The loaded shaping files (for kumo_shaping_rules and site binding). */
struct kumo_shaping *tsa_rules_shaping(struct tsa_rules *r);

/* The compiled form of a rule returned by kumo_shaping_rules(), or NULL (which does not
 * happen for rules of the files loaded). */
const struct tsa_rule_info *tsa_rules_info(const struct tsa_rules *r,
					   const struct kumo_shaping_rule *rule);

/* Runs the rule's regexes over subject[0..len) in order. Returns the index of the first
 * one that matches, -1 when none does, or -2 when a regex failed to run (match limit,
 * JIT stack: counted in tsa_rules_errors). */
int tsa_rules_match(struct tsa_rules *r, const struct tsa_rule_info *info, const char *subject,
		    size_t len);

/* Regex runs that failed since loading. */
unsigned long tsa_rules_errors(const struct tsa_rules *r);

/* Number of automation rules found in the files (including rules a later file replaced). */
size_t tsa_rules_count(const struct tsa_rules *r);

#endif
