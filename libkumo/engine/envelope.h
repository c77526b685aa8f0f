/* A message's envelope as the spool stores it: sender, recipients with their DSN
 * parameters and delivery state, queue naming, metadata, times and attempt count.
 * Encoded as a compact, versioned, length-checked binary record. */
#ifndef KUMO_ENGINE_ENVELOPE_H
#define KUMO_ENGINE_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/id.h"

enum kumo_rcpt_state { KUMO_RCPT_PENDING = 0, KUMO_RCPT_DONE = 1 };

struct kumo_env_rcpt {
	char *addr;	 /* forward-path without brackets */
	uint32_t notify; /* enum kumo_dsn_notify bits (proto/smtp_server.h) */
	char *orcpt;	 /* DSN ORCPT as received, or NULL */
	uint8_t state;	 /* enum kumo_rcpt_state */
};

struct kumo_env_meta {
	char *key;
	char *value;
};

/* All strings NUL-terminated. A decoded envelope owns its strings through one block
 * (see kumo_envelope_decode); an envelope built by the caller owns nothing. */
struct kumo_envelope {
	struct kumo_id id;
	char *sender; /* "" for the null sender */
	char *envid;  /* DSN ENVID or NULL */
	uint8_t ret;  /* enum kumo_dsn_ret */
	uint8_t body; /* enum kumo_smtp_body */
	bool smtputf8;
	char *tenant;	     /* or NULL */
	char *campaign;	     /* or NULL */
	char *queue;	     /* explicit queue name set by policy, or NULL: derived per rcpt */
	uint64_t created_ms; /* reception time */
	uint64_t due_ms;     /* next attempt time */
	uint32_t attempts;   /* delivery attempts made */
	size_t nrcpt;
	struct kumo_env_rcpt *rcpts;
	size_t nmeta;
	struct kumo_env_meta *meta;
	void *block_; /* decode's allocation; NULL for caller-built envelopes */
};

/* Encodes into buf (cap bytes). Returns the encoded length, which may exceed cap: then
 * nothing usable was written and the caller retries with a buffer that large. */
size_t kumo_envelope_encode(const struct kumo_envelope *env, uint8_t *buf, size_t cap);

/* Decodes; on success *out owns one allocation, freed by kumo_envelope_release().
 * Returns 0, -EINVAL (malformed, truncated, unknown version) or -ENOMEM. */
int kumo_envelope_decode(const uint8_t *buf, size_t len, struct kumo_envelope *out);
void kumo_envelope_release(struct kumo_envelope *env);

/* Queue name for one recipient: env->queue if set, else "campaign:tenant@domain" with
 * the "campaign:" and "tenant@" parts present only when set (KumoMTA's scheme).
 * Returns the length written (snprintf semantics). An empty string counts as unset;
 * the domain is what follows the last '@' of rcpt_addr, ASCII-lowercased (empty when
 * there is no '@'). */
size_t kumo_envelope_queue_name(const struct kumo_envelope *env, const char *rcpt_addr, char *buf,
				size_t cap);

#endif
