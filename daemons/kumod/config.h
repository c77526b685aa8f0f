/* kumod's configuration: the TOML file (or the embedded default) read into the engine's
 * config structs, with every error naming the file, line and key. */
#ifndef KUMOD_CONFIG_H
#define KUMOD_CONFIG_H

#include <stddef.h>

#include "kumo/kumo.h"
#include "tsa.h"

#define KUMOD_MAX_LISTENERS 32

struct kumod_listener {
	struct kumo_listener_cfg cfg;
	const char *relay[64];
	const char *domains[256];
};

struct kumod_config {
	struct kumo_engine_cfg engine;
	struct kumod_listener listeners[KUMOD_MAX_LISTENERS];
	size_t nlisteners;
	const char *http_listen;   /* validated; served from a later version on */
	const char *routes[256][2]; /* [routing.domains]: domain, "ip:port" */
	size_t nroutes;
	const char *shaping_files[32];
	struct kumo_source_cfg sources[256];
	size_t nsources;
	struct kumod_pool {
		const char *name;
		struct kumo_pool_entry entries[64];
		size_t n;
	} pools[64];
	size_t npools;
	struct kumod_pool_rule {
		enum kumo_pool_match match;
		const char *name;     /* campaign, tenant or domain; NULL: the default pool */
		const char *pool;
	} pool_rules[256];
	size_t npool_rules;
	const char *tsa_urls[KUMOD_TSA_MAX_DAEMONS]; /* [tsa] urls, or url as the only one */
	size_t ntsa_urls;
	uint32_t tsa_poll_ms;
	size_t tsa_max_pending;       /* per tsa-daemon; 0: the default */
	struct kumo_toml_doc *doc; /* owns every string above */
};

/* The configuration used when kumod runs without --config. */
extern const char kumod_default_config[];

/* Loads a config from text; name is the file name used in messages. On error returns
 * -EINVAL and writes "FILE:LINE: key 'k': message" into err. */
int kumod_config_parse(const char *text, size_t len, const char *name,
		       struct kumod_config *out, char *err, size_t errcap);
int kumod_config_load(const char *path, struct kumod_config *out, char *err, size_t errcap);
void kumod_config_free(struct kumod_config *c);

/* "90s", "5m", "2h", "1d" or a bare number of seconds -> milliseconds; -1 when invalid. */
long long kumod_parse_duration_ms(const char *s);
/* "50MB", "10k", "1GiB" (powers of 1024) or a bare number -> bytes; -1 when invalid. */
long long kumod_parse_size(const char *s);

#endif
