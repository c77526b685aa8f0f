/* tsa-daemon: an action in force (a suspension, a bounce or a configuration override) as
 * the engine keeps it, the state store persists it and the HTTP endpoints publish it, with
 * helpers to name, key, copy and release one. */
#ifndef TSA_ACTION_H
#define TSA_ACTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tsa_kind {
	TSA_SUSPEND,	       /* the site's ready queue (source->site) */
	TSA_SUSPEND_TENANT,    /* the tenant's scheduled queues for the domain */
	TSA_SUSPEND_CAMPAIGN,  /* the tenant's campaign's scheduled queues for the domain */
	TSA_SET_CONFIG,	       /* a shaping setting for the site (mx_rollup) or domain */
	TSA_SET_DOMAIN_CONFIG, /* a shaping setting for the domain only (mx_rollup = false) */
	TSA_BOUNCE,	       /* bounce what is queued for the domain */
	TSA_BOUNCE_TENANT,     /* ... for the tenant and domain */
	TSA_BOUNCE_CAMPAIGN,   /* ... for the tenant's campaign and domain */
	TSA_NKINDS
};

/* Strings are owned by the action (NULL when they do not apply). */
struct tsa_action {
	enum tsa_kind kind;
	char rule_hash[33]; /* 32 hex digits naming the rule and this action of it */
	char *site;	    /* the record's site: MX host names joined by ',' */
	char *source;	    /* the egress source; "unspecified" when the record had none */
	char *domain;	    /* the recipient domain (config), or the queue's domain */
	char *tenant;	    /* tenant and campaign from the queue name campaign:tenant@domain */
	char *campaign;
	char *name;	      /* SetConfig/SetDomainConfig: the setting */
	char *value;	      /* its value: TOML inline syntax, or the text of a string */
	bool value_is_string; /* value is a TOML string (quote it when writing TOML) */
	bool mx_rollup;	      /* SetConfig from a default or site rule: applies to the site */
	char *reason;	      /* which rule and response caused it */
	int64_t created_ms;   /* Unix time in ms */
	int64_t expires_ms;   /* Unix time in ms */
};

/* KumoMTA's name of a kind ("SuspendTenant"), and back (-1 when unknown). */
const char *tsa_kind_name(enum tsa_kind kind);
int tsa_kind_parse(const char *name);

/* Whether the kind is a ready queue or scheduled queue suspension, a bounce, a setting. */
bool tsa_kind_is_suspension(enum tsa_kind kind);
bool tsa_kind_is_bounce(enum tsa_kind kind);
bool tsa_kind_is_config(enum tsa_kind kind);

/* What the action applies to, unique per kind and rule: "source->site" for Suspend;
 * domain, tenant, campaign for scheduled queue actions; domain, rollup, source and setting
 * for overrides (fields joined by 0x1f). Written to out (always NUL-terminated); returns
 * the length needed, like snprintf. */
size_t tsa_action_target(const struct tsa_action *a, char *out, size_t cap);

/* A deep copy into *out; 0 or -ENOMEM (then *out holds nothing to free). */
int tsa_action_copy(struct tsa_action *out, const struct tsa_action *a);

/* Releases the strings of a (not a itself). */
void tsa_action_clear(struct tsa_action *a);

/* RFC 3339 UTC time with milliseconds when they are not zero: "2025-06-01T12:00:03Z",
 * "2025-06-01T12:00:03.250Z". cap should be at least 32. */
void tsa_format_time(int64_t ms, char *out, size_t cap);

#endif
