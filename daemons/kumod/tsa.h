/* kumod's link to its tsa-daemons: publishes log records to each of them (batched, bounded
 * memory per daemon, never blocking a loop) and applies the union of what they serve:
 * shaping overrides, suspensions and bounces. */
#ifndef KUMOD_TSA_H
#define KUMOD_TSA_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "kumo/kumo.h"
#include "util/json.h"

/* Most tsa-daemons one kumod talks to. */
#define KUMOD_TSA_MAX_DAEMONS 16

struct kumod_tsa;

struct kumod_tsa_cfg {
	const char *const *urls; /* each "http://127.0.0.1:8008"; copied by kumod_tsa_new */
	size_t nurls;		 /* 1 .. KUMOD_TSA_MAX_DAEMONS, no address twice */
	uint32_t poll_ms;	 /* overrides and suspensions fetched this often: 5000 */
	size_t max_pending;	 /* log bytes held per tsa-daemon: 16 MiB, oldest dropped */
};

/* "http://ip:port" or "http://ip:port/" with an IPv4 address and a port 1-65535 into *out.
 * Returns 0 or -EINVAL. */
int kumod_tsa_parse_url(const char *url, struct sockaddr_in *out);

/* Checks a list of tsa-daemon URLs. Returns 0; -EINVAL when urls[*at] is not a URL as
 * above; -EEXIST when urls[*at] names the address of an earlier one; -E2BIG for more than
 * KUMOD_TSA_MAX_DAEMONS. */
int kumod_tsa_check_urls(const char *const *urls, size_t n, size_t *at);

/* The record callback to give the engine (arg: the kumod_tsa): the record is queued for
 * every tsa-daemon. */
void kumod_tsa_record(void *arg, const char *json, size_t len);

/* Creates the client (no thread yet): its record callback may be given to the engine
 * before the engine exists. Returns 0 or -errno (-EINVAL: a url is not http://ip:port,
 * none or too many are given, or two name the same address). */
int kumod_tsa_new(const struct kumod_tsa_cfg *cfg, struct kumod_tsa **out);
/* Starts one publishing/polling thread per tsa-daemon for engine e. Returns 0 or -errno. */
int kumod_tsa_start(struct kumod_tsa *t, struct kumo_engine *e);
/* Stops the threads if they run (what is pending is posted once more) and frees t. */
void kumod_tsa_stop(struct kumod_tsa *t);

/* What is held for the i-th tsa-daemon (cfg order) and what was dropped for it. */
struct kumod_tsa_stats {
	size_t pending;	  /* bytes of JSON lines waiting to be posted */
	uint64_t dropped; /* records dropped: the daemon was away and the buffer full */
	uint64_t posted;  /* records tsa-daemon answered 2xx for */
};
/* Returns 0, or -ENOENT when i is out of range. */
int kumod_tsa_stats(struct kumod_tsa *t, size_t i, struct kumod_tsa_stats *out);

/* Parses tsa-daemon's suspended.json into the engine's suspensions. Returns the count
 * stored in out (at most cap), or -EINVAL. Strings point into storage (cap_storage bytes). */
long kumod_tsa_parse_suspensions(const char *json, size_t len, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage);

/* Parses tsa-daemon's bounced.json ([{domain, tenant, campaign, reason, expires}]) into
 * the engine's bounces: entries that expired by now_ms, that name no domain, tenant or
 * campaign, or that do not fit in storage are left out. Returns the count stored in out
 * (at most cap), or -EINVAL. Strings point into storage (cap_storage bytes). */
long kumod_tsa_parse_bounces(const char *json, size_t len, uint64_t now_ms, struct kumo_bounce *out,
			     size_t cap, char *storage, size_t cap_storage);

/* The union of several tsa-daemons' suspended.json (docs[i] NUL-terminated; NULL: that
 * daemon has not answered yet; a document that does not parse is left out). The same
 * suspension from several daemons is stored once, with the latest expiry. Returns the
 * count stored in out (at most cap). Strings point into storage. */
long kumod_tsa_union_suspensions(const char *const *docs, size_t ndocs, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage);
/* The union of several tsa-daemons' bounced.json, as above (the engine applies the
 * matching bounce that expires last, so entries are not merged). */
long kumod_tsa_union_bounces(const char *const *docs, size_t ndocs, uint64_t now_ms,
			     struct kumo_bounce *out, size_t cap, char *storage,
			     size_t cap_storage);

/* Merges several shaping overlays (TOML in KumoMTA's shaping format, docs[i]
 * NUL-terminated, NULL skipped) into one document appended to out: tables of the same
 * name are merged key by key, recursively; where two documents set the same key, the
 * later document's value wins (as with later shaping files). Returns 0, -EINVAL when a
 * document is not valid TOML (err: "<overlay N>:LINE: ..."), -E2BIG for more than
 * KUMOD_TSA_MAX_DAEMONS documents, -ENOMEM. */
int kumod_tsa_merge_overlays(const char *const *docs, size_t ndocs, struct kumo_buf *out, char *err,
			     size_t errcap);

#endif
