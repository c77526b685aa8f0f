/* Traffic shaping rules in KumoMTA's shaping.toml format: loads and merges several files,
 * validates the settings the engine enforces, and computes the effective settings and the
 * automation rules for a destination (domain, MX hosts, egress source). See docs/shaping.md. */
#ifndef KUMO_ENGINE_SHAPING_H
#define KUMO_ENGINE_SHAPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A loaded, merged set of shaping files. Opaque. Immutable once loaded, except through
 * kumo_shaping_bind_site(); all other functions only read it, so once the sites are bound
 * several threads may query it at once. */
struct kumo_shaping;

/* A throttle: at most count events per period_ms, with bursts of up to burst events.
 * count == 0 means "no throttle" (the setting is absent). */
struct kumo_shaping_rate {
	uint64_t count;	    /* events per period, >= 1 when set */
	uint64_t period_ms; /* "100/min" -> 60000; "10/5m" -> 300000 */
	uint64_t burst;	    /* ",max_burst=N"; 0 when not given (the burst is then count) */
	bool local;	    /* "local:" prefix: never shared with other nodes */
};

/* A concurrency limit, "10" or "local:10". */
struct kumo_shaping_limit {
	uint64_t limit;
	bool local; /* "local:" prefix: a node-local limit, never shared with other nodes */
};

enum kumo_shaping_tls {
	KUMO_SHAPING_TLS_OPPORTUNISTIC = 0, /* the default */
	KUMO_SHAPING_TLS_OPPORTUNISTIC_INSECURE,
	KUMO_SHAPING_TLS_REQUIRED,
	KUMO_SHAPING_TLS_REQUIRED_INSECURE,
	KUMO_SHAPING_TLS_DISABLED,
};

/* The settings with a typed field in struct kumo_shaping_params; (1u << field) is the
 * field's bit in kumo_shaping_params.set. */
enum kumo_shaping_field {
	KUMO_SHAPING_F_CONNECTION_LIMIT,
	KUMO_SHAPING_F_MAX_CONNECTION_RATE,
	KUMO_SHAPING_F_MAX_MESSAGE_RATE,
	KUMO_SHAPING_F_MAX_DELIVERIES_PER_CONNECTION,
	KUMO_SHAPING_F_MAX_READY,
	KUMO_SHAPING_F_CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY,
	KUMO_SHAPING_F_ENABLE_TLS,
	KUMO_SHAPING_F_CONNECT_TIMEOUT,
	KUMO_SHAPING_F_BANNER_TIMEOUT,
	KUMO_SHAPING_F_EHLO_TIMEOUT,
	KUMO_SHAPING_F_MAIL_FROM_TIMEOUT,
	KUMO_SHAPING_F_RCPT_TO_TIMEOUT,
	KUMO_SHAPING_F_DATA_TIMEOUT,
	KUMO_SHAPING_F_DATA_DOT_TIMEOUT,
	KUMO_SHAPING_F_RSET_TIMEOUT,
	KUMO_SHAPING_F_IDLE_TIMEOUT,
	KUMO_SHAPING_F_STARTTLS_TIMEOUT,
	KUMO_SHAPING_F_AUTH_TIMEOUT,
	KUMO_SHAPING_F_PROVIDER_NAME,
	KUMO_SHAPING_NFIELDS
};

/* Most providers whose limits one destination carries; further matches still merge their
 * settings but their limits are dropped and providers_truncated is set. */
#define KUMO_SHAPING_MAX_PROVIDERS 8
/* Most settings without a typed field that one destination carries; see extra. */
#define KUMO_SHAPING_MAX_EXTRA 64

/* A provider that matched the destination, with the limits it shares among every site it
 * matches (per egress source, as KumoMTA does). Strings belong to the kumo_shaping. */
struct kumo_shaping_provider {
	const char *name;
	struct kumo_shaping_limit connection_limit; /* provider_connection_limit; limit 0: none */
	struct kumo_shaping_rate max_message_rate;  /* provider_max_message_rate; count 0: none */
};

/* A setting without a typed field, e.g. remember_broken_tls = "3 days". Table values of
 * additional_connection_limits, additional_message_rate_throttles and
 * additional_source_selection_rates come one key at a time, as
 * "additional_connection_limits.<name>", because KumoMTA merges those tables per key. */
struct kumo_shaping_kv {
	const char *key;
	const char *value; /* a string as written; any other value in TOML inline syntax:
			    * 5, true, ["10.0.0.0/8", "::1"], {key_data = "x"} */
};

/* The effective settings of one destination. Every field holds KumoMTA's built-in default
 * unless a file set it (see set). Pointers are owned by the kumo_shaping and stay valid
 * until kumo_shaping_free(). */
struct kumo_shaping_params {
	uint32_t set;	/* bit (1u << enum kumo_shaping_field): a file gave this field */
	bool mx_rollup; /* false when a domain entry with mx_rollup = false applied: its ready
			 * queues are then per domain rather than per site (MX set) */
	struct kumo_shaping_limit connection_limit;	       /* default 32 */
	struct kumo_shaping_rate max_connection_rate;	       /* default none */
	struct kumo_shaping_rate max_message_rate;	       /* default none */
	uint64_t max_deliveries_per_connection;		       /* default 1024 */
	uint64_t max_ready;				       /* default 1024 */
	uint64_t consecutive_connection_failures_before_delay; /* default 100 */
	enum kumo_shaping_tls enable_tls;		       /* default opportunistic */
	uint64_t connect_timeout_ms;			       /* default 60 s */
	uint64_t banner_timeout_ms;			       /* default 60 s */
	uint64_t ehlo_timeout_ms;			       /* default 300 s */
	uint64_t mail_from_timeout_ms;			       /* default 300 s */
	uint64_t rcpt_to_timeout_ms;			       /* default 300 s */
	uint64_t data_timeout_ms;			       /* default 300 s */
	uint64_t data_dot_timeout_ms;			       /* default 300 s */
	uint64_t rset_timeout_ms;			       /* default 5 s */
	uint64_t idle_timeout_ms;			       /* default 5 s */
	uint64_t starttls_timeout_ms;			       /* default 5 s */
	uint64_t auth_timeout_ms;			       /* default 60 s */
	/* The last matching provider's name, or a provider_name setting that came after it;
	 * NULL when neither. */
	const char *provider_name;
	size_t nproviders; /* matching providers, in file order */
	struct kumo_shaping_provider providers[KUMO_SHAPING_MAX_PROVIDERS];
	bool providers_truncated;
	size_t nextra; /* other settings, in the order they were first set */
	struct kumo_shaping_kv extra[KUMO_SHAPING_MAX_EXTRA];
	bool extra_truncated;
};

/* Automation (for the later automation engine; loaded and validated, never run here). */

enum kumo_shaping_action_kind {
	KUMO_SHAPING_ACT_SUSPEND,
	KUMO_SHAPING_ACT_SET_CONFIG,
	KUMO_SHAPING_ACT_SUSPEND_TENANT,
	KUMO_SHAPING_ACT_SUSPEND_CAMPAIGN,
	KUMO_SHAPING_ACT_SET_DOMAIN_CONFIG,
	KUMO_SHAPING_ACT_BOUNCE,
	KUMO_SHAPING_ACT_BOUNCE_TENANT,
	KUMO_SHAPING_ACT_BOUNCE_CAMPAIGN,
};

struct kumo_shaping_action {
	enum kumo_shaping_action_kind kind;
	const char *name;  /* SetConfig/SetDomainConfig: the setting; NULL otherwise */
	const char *value; /* its value, as in kumo_shaping_kv.value; NULL otherwise */
};

/* Where a rule was declared: KumoMTA applies default and site rules to the whole site
 * ("rollup") and provider and domain rules to the matched domain. */
enum kumo_shaping_scope {
	KUMO_SHAPING_SCOPE_DEFAULT,
	KUMO_SHAPING_SCOPE_PROVIDER,
	KUMO_SHAPING_SCOPE_SITE,   /* a domain entry with mx_rollup (the default) */
	KUMO_SHAPING_SCOPE_DOMAIN, /* a domain entry with mx_rollup = false */
};

/* One [[...automation]] rule. Everything belongs to the kumo_shaping. */
struct kumo_shaping_rule {
	const char *const *regex; /* uncompiled patterns; the rule matches when any does */
	size_t nregex;		  /* >= 1 */
	const struct kumo_shaping_action *actions;
	size_t nactions;		    /* >= 1 */
	bool immediate;			    /* trigger = "Immediate" (the default) */
	struct kumo_shaping_rate threshold; /* trigger = {Threshold = "5/hr"}; count 0 when
					     * immediate */
	uint64_t duration_ms;		    /* required: a rule without one is refused */
	bool match_internal;		    /* also match KumoMTA-internal responses */
	enum kumo_shaping_scope scope;
	const char *entry; /* the domain or provider name; "default" */
	const char *file;  /* where it was declared */
	int line;
};

/* Loads the shaping files at paths, in order, and merges them: a later file overrides an
 * earlier one key by key, and an entry with replace_base = true replaces what earlier files
 * said for that entry (see docs/shaping.md). Overlays (such as automation overrides) are
 * simply later paths. On success returns 0 and stores a new object in *out, to be released
 * with kumo_shaping_free(); the paths need not outlive the call. On failure *out is NULL and
 * returns -EINVAL (a file is not valid TOML or not a valid shaping file), -ENOMEM, or -errno
 * from opening or reading a file; err (may be NULL when errcap is 0) then holds one line:
 * "FILE:LINE: key 'a.b': message" (without the key or line where none applies). */
int kumo_shaping_load(const char *const *paths, size_t n, struct kumo_shaping **out, char *err,
		      size_t errcap);

/* A shaping file held in memory: name is used in error messages and rule origins. */
struct kumo_shaping_text {
	const char *name;
	const char *data; /* need not be NUL-terminated */
	size_t len;
};

/* As kumo_shaping_load(), for documents in memory; the texts need not outlive the call. */
int kumo_shaping_load_texts(const struct kumo_shaping_text *texts, size_t n,
			    struct kumo_shaping **out, char *err, size_t errcap);

/* Releases everything the object owns, including every string handed out. NULL is fine. */
void kumo_shaping_free(struct kumo_shaping *sh);

/* Fills *out with the effective settings for delivering to domain through the MX hosts
 * mx_hosts[0..nmx) (nmx may be 0: no provider matches by MX then) from egress source (NULL:
 * no source overrides apply). Names compare without regard to ASCII case or a trailing dot.
 * Precedence, lowest first:
 *   built-in defaults < ["default"] < ["default"].sources.SOURCE
 *   < each matching [provider."x"] in file order < matching providers' sources
 *   < site entries (domain entries with mx_rollup, matched by name or by bound site)
 *   < the domain entry with mx_rollup = false < site entries' sources
 *   < that domain entry's sources.
 * A provider matches when one DomainSuffix is a suffix of domain, or else when every MX host
 * matches one of its MXSuffix (a suffix) or HostName (the whole name); providers only apply
 * when domain is a domain name (letters, digits, '-', '_' and dots). Strings stored in *out
 * belong to sh. Allocates a little while it runs. Returns 0, -EINVAL for a NULL or empty
 * domain, -ENOMEM. */
int kumo_shaping_effective(const struct kumo_shaping *sh, const char *domain,
			   const char *const *mx_hosts, size_t nmx, const char *source,
			   struct kumo_shaping_params *out);

/* The automation rules that apply to domain (with these MX hosts), in KumoMTA's order:
 * default, matching providers, site entries, the domain entry. Stores up to cap pointers in
 * out (valid until kumo_shaping_free) and returns how many rules apply, which may be more
 * than cap; 0 also for a NULL or empty domain and when memory runs out. out may be NULL when
 * cap is 0. */
size_t kumo_shaping_rules(const struct kumo_shaping *sh, const char *domain,
			  const char *const *mx_hosts, size_t nmx,
			  const struct kumo_shaping_rule **out, size_t cap);

/* MX rollup. KumoMTA resolves the MX of each domain entry that uses mx_rollup (a "site
 * entry") while loading, and applies the entry to every domain served by the same MX set
 * (the "site"). Loading here does no DNS, so an unbound site entry applies to its own domain
 * only. The embedder lists the site entries, resolves their MX hosts and binds each; the
 * entry then also applies to any domain whose MX set is the same (compared as distinct,
 * sorted, lowercase names without the trailing dot, as engine/dns.h builds site names).
 * Binding is the one change made after loading: do it before sharing sh between threads. */

/* Number of site entries, and the i-th one's domain name (lowercase, without trailing dot;
 * valid until kumo_shaping_free), in file order. NULL when i is out of range. */
size_t kumo_shaping_site_entry_count(const struct kumo_shaping *sh);
const char *kumo_shaping_site_entry(const struct kumo_shaping *sh, size_t i);

/* Binds the site entry of domain to the MX set mx_hosts[0..nmx); binding again replaces the
 * earlier binding. Returns 0, -ENOENT when domain has no site entry, -EINVAL for an empty MX
 * set, -ENOMEM. */
int kumo_shaping_bind_site(struct kumo_shaping *sh, const char *domain, const char *const *mx_hosts,
			   size_t nmx);

/* The value parsers used for the files, for the automation engine and tools. Each returns
 * 0 or -EINVAL. Numbers may use ',' or '_' between digits ("1,000").
 * Rate: "[local:]N/[M]unit[,max_burst=B]", unit s|sec|second, m|min|minute, h|hr|hour,
 *   d|day (or plurals); "100/h,max_burst=10", "10/5min".
 * Limit: "[local:]N"; "local:5".
 * Duration: one or more "N unit" parts, unit ms, s|sec|second, m|min|minute, h|hr|hour,
 *   d|day, w|week (or plurals), spaces optional: "90m", "3 days", "1h 30m"; a bare "N" is
 *   seconds.
 * Count: "N". */
int kumo_shaping_parse_rate(const char *s, struct kumo_shaping_rate *out);
int kumo_shaping_parse_limit(const char *s, struct kumo_shaping_limit *out);
int kumo_shaping_parse_duration(const char *s, uint64_t *ms);
int kumo_shaping_parse_count(const char *s, uint64_t *out);

#endif
