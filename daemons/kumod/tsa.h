/* kumod's link to tsa-daemon: publishes log records to it (batched, bounded memory, never
 * blocking a loop) and applies the shaping overrides, suspensions and bounces it serves. */
#ifndef KUMOD_TSA_H
#define KUMOD_TSA_H

#include <stddef.h>
#include <stdint.h>

#include "kumo/kumo.h"

struct kumod_tsa;

struct kumod_tsa_cfg {
	const char *url;          /* "http://127.0.0.1:8008" */
	uint32_t poll_ms;         /* overrides and suspensions fetched this often: 5000 */
	size_t max_pending;       /* log bytes held for publishing: 16 MiB, oldest dropped */
};

/* The record callback to give the engine (arg: the kumod_tsa). */
void kumod_tsa_record(void *arg, const char *json, size_t len);

/* Creates the client (no thread yet): its record callback may be given to the engine
 * before the engine exists. Returns 0 or -errno (-EINVAL: url is not http://ip:port). */
int kumod_tsa_new(const struct kumod_tsa_cfg *cfg, struct kumod_tsa **out);
/* Starts the publishing/polling thread for engine e. Returns 0 or -errno. */
int kumod_tsa_start(struct kumod_tsa *t, struct kumo_engine *e);
/* Stops the thread if it runs (what is pending is posted once more) and frees t. */
void kumod_tsa_stop(struct kumod_tsa *t);

/* Parses tsa-daemon's suspended.json into the engine's suspensions. Returns the count
 * stored in out (at most cap), or -EINVAL. Strings point into storage (cap_storage bytes). */
long kumod_tsa_parse_suspensions(const char *json, size_t len, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage);

/* Parses tsa-daemon's bounced.json ([{domain, tenant, campaign, reason, expires}]) into
 * the engine's bounces: entries that expired by now_ms, that name no domain, tenant or
 * campaign, or that do not fit in storage are left out. Returns the count stored in out
 * (at most cap), or -EINVAL. Strings point into storage (cap_storage bytes). */
long kumod_tsa_parse_bounces(const char *json, size_t len, uint64_t now_ms,
			     struct kumo_bounce *out, size_t cap, char *storage,
			     size_t cap_storage);

#endif
