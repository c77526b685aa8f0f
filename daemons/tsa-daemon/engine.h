/* tsa-daemon: the automation engine, free of I/O. Evaluates KumoMTA log records against the
 * shaping files' automation rules (regexes, Immediate and Threshold triggers), keeps the
 * actions in force until they expire, and renders them as overlay, lists and metrics. */
#ifndef TSA_ENGINE_H
#define TSA_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "action.h"
#include "rules.h"
#include "util/json.h"
#include "util/json_read.h"

struct tsa_engine_cfg {
	size_t max_windows; /* threshold counters kept at once (0: 100000) */
	/* Called with every action created, or extended by a second or more, so that it can
	 * be saved; the action is only valid during the call. NULL: nothing is saved. */
	void (*persist)(void *arg, const struct tsa_action *a);
	void *persist_arg;
};

struct tsa_engine_stats {
	uint64_t records;      /* records published */
	uint64_t evaluated;    /* TransientFailure and Bounce recipients evaluated */
	uint64_t ignored;      /* other record types; recipients without a domain */
	uint64_t matches;      /* rule regex matches */
	uint64_t fired;	       /* actions created or extended */
	uint64_t skipped;      /* actions that cannot apply (no tenant in the queue name) */
	uint64_t windows_full; /* matches not counted: max_windows reached */
	uint64_t expired;      /* actions removed at expiry */
	uint64_t sites_bound;  /* site entries bound to an MX set seen in a record */
};

struct tsa_engine;

/* rules is borrowed and must outlive the engine (its site entries get bound to the MX sets
 * that records show). Returns 0 or -ENOMEM. */
int tsa_engine_new(struct tsa_rules *rules, const struct tsa_engine_cfg *cfg,
		   struct tsa_engine **out);
void tsa_engine_free(struct tsa_engine *e);

/* Replaces the persist callback of the configuration. */
void tsa_engine_set_persist(struct tsa_engine *e,
			    void (*persist)(void *arg, const struct tsa_action *a), void *arg);

/* Checks that rec is a log record the engine can use: an object with a string "type"; for
 * TransientFailure and Bounce also "recipient" (a string or an array of strings),
 * "response" {code: integer, content: string, enhanced_code: {class, subject, detail},
 * a "c.s.d" string or null}, and, when present, "site", "queue" and "egress_source"
 * (strings or null), "timestamp" (Unix seconds) and "peer_address" (object or null).
 * Returns 0, or -EINVAL with err saying which field is wrong. */
int tsa_engine_check_record(const struct kumo_json_value *rec, char *err, size_t errcap);

/* Evaluates one record (checked with tsa_engine_check_record) at now_ms (Unix ms).
 * Returns 0 or -ENOMEM. */
int tsa_engine_publish(struct tsa_engine *e, const struct kumo_json_value *rec, int64_t now_ms);

/* Puts back an action read from the state store (copied; not saved again). Expired
 * actions are dropped. Returns 0 or -ENOMEM. */
int tsa_engine_restore(struct tsa_engine *e, const struct tsa_action *a, int64_t now_ms);

/* Removes the actions that expired by now_ms and the threshold counters with nothing in
 * their window. Returns the number of actions removed. */
size_t tsa_engine_expire(struct tsa_engine *e, int64_t now_ms);

/* Actions in force of a kind (TSA_NKINDS: all of them). */
size_t tsa_engine_count(const struct tsa_engine *e, int kind, int64_t now_ms);

void tsa_engine_stats(const struct tsa_engine *e, struct tsa_engine_stats *st);

/* The outputs, appended to out (out->oom tells of a failed allocation):
 * shaping_toml: a shaping file overlay with the SetConfig and SetDomainConfig overrides in
 *   force, each preceded by "# reason: ..." and "# expires: ..." comments; loadable by
 *   kumo_shaping_load after the files it overrides.
 * suspensions_json: {"ready_q": [{rule_hash, site_name, site, source, reason, expires}],
 *   "sched_q": [{rule_hash, domain, tenant, campaign, reason, expires}]}.
 * bounces_json: [{rule_hash, domain, tenant, campaign, reason, expires}].
 * metrics: Prometheus text format. */
void tsa_engine_shaping_toml(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out);
void tsa_engine_suspensions_json(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out);
void tsa_engine_bounces_json(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out);
void tsa_engine_metrics(const struct tsa_engine *e, int64_t now_ms, struct kumo_buf *out);

/* The line a rule's regexes are matched against, as KumoMTA builds it: "<code> <class>.
 * <subject>.<detail> <content>" ("<code> <content>" without an enhanced code), with each
 * CRLF, CR or LF of the content turned into a space. response is the record's "response"
 * object. Appended to out. */
void tsa_engine_response_line(const struct kumo_json_value *response, struct kumo_buf *out);

#endif
