/* Envelope encoding: a versioned binary record with LEB128 varint lengths, decoded in
 * two passes (validate and size, then fill) into a single allocation; and the KumoMTA
 * queue name ("campaign:tenant@domain") of a recipient. */
#include "engine/envelope.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Layout of version 1, in order:
 *   u8 version, id[16], u8 flags (ENV_F_*), u8 ret, u8 body,
 *   varint created_ms, varint due_ms, varint attempts,
 *   str sender, then str envid, tenant, campaign, queue when their flag is set,
 *   varint nrcpt, nrcpt x { str addr, varint notify, u8 state, u8 has_orcpt, [str orcpt] },
 *   varint nmeta, nmeta x { str key, str value }.
 * A str is a varint byte count and that many bytes, no NUL (NUL bytes are refused). */
#define ENV_VERSION 1
#define ENV_F_SMTPUTF8 0x01
#define ENV_F_ENVID 0x02
#define ENV_F_TENANT 0x04
#define ENV_F_CAMPAIGN 0x08
#define ENV_F_QUEUE 0x10
#define ENV_F_ALL 0x1f

/* Smallest encodings, to bound counts before anything is allocated. */
#define ENV_MIN_RCPT 4 /* empty addr, notify, state, has_orcpt */
#define ENV_MIN_META 2 /* empty key, empty value */

struct writer {
	uint8_t *buf;
	size_t cap;
	size_t pos; /* may run past cap: then only the length is being computed */
};

static void put_bytes(struct writer *w, const void *p, size_t n)
{
	if (w->pos <= w->cap && n <= w->cap - w->pos && n > 0)
		memcpy(w->buf + w->pos, p, n);
	w->pos += n;
}

static void put_u8(struct writer *w, uint8_t v)
{
	put_bytes(w, &v, 1);
}

static void put_varint(struct writer *w, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	while (v >= 0x80) {
		tmp[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	tmp[n++] = (uint8_t)v;
	put_bytes(w, tmp, n);
}

static void put_str(struct writer *w, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	put_varint(w, n);
	put_bytes(w, s, n);
}

size_t kumo_envelope_encode(const struct kumo_envelope *env, uint8_t *buf, size_t cap)
{
	struct writer w = {.buf = buf, .cap = buf ? cap : 0, .pos = 0};
	uint8_t flags = 0;

	if (env->smtputf8)
		flags |= ENV_F_SMTPUTF8;
	if (env->envid)
		flags |= ENV_F_ENVID;
	if (env->tenant)
		flags |= ENV_F_TENANT;
	if (env->campaign)
		flags |= ENV_F_CAMPAIGN;
	if (env->queue)
		flags |= ENV_F_QUEUE;

	put_u8(&w, ENV_VERSION);
	put_bytes(&w, env->id.b, sizeof(env->id.b));
	put_u8(&w, flags);
	put_u8(&w, env->ret);
	put_u8(&w, env->body);
	put_varint(&w, env->created_ms);
	put_varint(&w, env->due_ms);
	put_varint(&w, env->attempts);
	put_str(&w, env->sender);
	if (env->envid)
		put_str(&w, env->envid);
	if (env->tenant)
		put_str(&w, env->tenant);
	if (env->campaign)
		put_str(&w, env->campaign);
	if (env->queue)
		put_str(&w, env->queue);
	put_varint(&w, env->nrcpt);
	for (size_t i = 0; i < env->nrcpt; i++) {
		const struct kumo_env_rcpt *r = &env->rcpts[i];
		put_str(&w, r->addr);
		put_varint(&w, r->notify);
		put_u8(&w, r->state);
		put_u8(&w, r->orcpt != NULL);
		if (r->orcpt)
			put_str(&w, r->orcpt);
	}
	put_varint(&w, env->nmeta);
	for (size_t i = 0; i < env->nmeta; i++) {
		put_str(&w, env->meta[i].key);
		put_str(&w, env->meta[i].value);
	}
	return w.pos;
}

/* Decoder state. In the sizing pass (fill == false) strings are only validated and
 * counted; in the fill pass they are copied to str, NUL-terminated. */
struct reader {
	const uint8_t *p;
	const uint8_t *end;
	bool fill;
	size_t str_bytes; /* sizing pass: bytes the strings need, NULs included */
	char *str;	  /* fill pass: where the next string goes */
};

static int get_u8(struct reader *r, uint8_t *v)
{
	if (r->p >= r->end)
		return -EINVAL;
	*v = *r->p++;
	return 0;
}

static int get_varint(struct reader *r, uint64_t max, uint64_t *v)
{
	uint64_t x = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (r->p >= r->end)
			return -EINVAL;
		uint8_t b = *r->p++;
		uint64_t bits = b & 0x7f;
		if (shift == 63 && bits > 1)
			return -EINVAL; /* overflows 64 bits */
		x |= bits << shift;
		if ((b & 0x80) == 0) {
			if (x > max)
				return -EINVAL;
			*v = x;
			return 0;
		}
	}
	return -EINVAL;
}

static int get_str(struct reader *r, char **out)
{
	uint64_t n;
	int rc = get_varint(r, SIZE_MAX, &n);
	if (rc < 0)
		return rc;
	if (n > (uint64_t)(r->end - r->p))
		return -EINVAL;
	if (memchr(r->p, 0, (size_t)n) != NULL)
		return -EINVAL;
	if (r->fill) {
		memcpy(r->str, r->p, (size_t)n);
		r->str[n] = 0;
		*out = r->str;
		r->str += n + 1;
	} else {
		r->str_bytes += (size_t)n + 1;
	}
	r->p += n;
	return 0;
}

/* One pass over the encoding. In the fill pass env->rcpts and env->meta already point at
 * arrays of the sizes found by the sizing pass. */
static int parse(struct reader *r, struct kumo_envelope *env)
{
	uint8_t version, flags, u8;
	uint64_t v;
	int rc;

	if ((rc = get_u8(r, &version)) < 0)
		return rc;
	if (version != ENV_VERSION)
		return -EINVAL;
	if ((size_t)(r->end - r->p) < sizeof(env->id.b))
		return -EINVAL;
	memcpy(env->id.b, r->p, sizeof(env->id.b));
	r->p += sizeof(env->id.b);
	if ((rc = get_u8(r, &flags)) < 0)
		return rc;
	if (flags & ~ENV_F_ALL)
		return -EINVAL;
	env->smtputf8 = (flags & ENV_F_SMTPUTF8) != 0;
	if ((rc = get_u8(r, &env->ret)) < 0 || (rc = get_u8(r, &env->body)) < 0)
		return rc;
	if ((rc = get_varint(r, UINT64_MAX, &env->created_ms)) < 0 ||
	    (rc = get_varint(r, UINT64_MAX, &env->due_ms)) < 0)
		return rc;
	if ((rc = get_varint(r, UINT32_MAX, &v)) < 0)
		return rc;
	env->attempts = (uint32_t)v;
	if ((rc = get_str(r, &env->sender)) < 0)
		return rc;
	if ((flags & ENV_F_ENVID) && (rc = get_str(r, &env->envid)) < 0)
		return rc;
	if ((flags & ENV_F_TENANT) && (rc = get_str(r, &env->tenant)) < 0)
		return rc;
	if ((flags & ENV_F_CAMPAIGN) && (rc = get_str(r, &env->campaign)) < 0)
		return rc;
	if ((flags & ENV_F_QUEUE) && (rc = get_str(r, &env->queue)) < 0)
		return rc;

	if ((rc = get_varint(r, (uint64_t)(r->end - r->p) / ENV_MIN_RCPT, &v)) < 0)
		return rc;
	if (r->fill && v != env->nrcpt)
		return -EINVAL;
	env->nrcpt = (size_t)v;
	for (size_t i = 0; i < env->nrcpt; i++) {
		struct kumo_env_rcpt tmp = {0};
		struct kumo_env_rcpt *rc_out = r->fill ? &env->rcpts[i] : &tmp;
		if ((rc = get_str(r, &rc_out->addr)) < 0)
			return rc;
		if ((rc = get_varint(r, UINT32_MAX, &v)) < 0)
			return rc;
		rc_out->notify = (uint32_t)v;
		if ((rc = get_u8(r, &rc_out->state)) < 0 || (rc = get_u8(r, &u8)) < 0)
			return rc;
		if (u8 > 1)
			return -EINVAL;
		rc_out->orcpt = NULL;
		if (u8 && (rc = get_str(r, &rc_out->orcpt)) < 0)
			return rc;
	}

	if ((rc = get_varint(r, (uint64_t)(r->end - r->p) / ENV_MIN_META, &v)) < 0)
		return rc;
	if (r->fill && v != env->nmeta)
		return -EINVAL;
	env->nmeta = (size_t)v;
	for (size_t i = 0; i < env->nmeta; i++) {
		struct kumo_env_meta tmp = {0};
		struct kumo_env_meta *m = r->fill ? &env->meta[i] : &tmp;
		if ((rc = get_str(r, &m->key)) < 0 || (rc = get_str(r, &m->value)) < 0)
			return rc;
	}
	return r->p == r->end ? 0 : -EINVAL;
}

int kumo_envelope_decode(const uint8_t *buf, size_t len, struct kumo_envelope *out)
{
	struct reader r = {.p = buf, .end = buf + len};
	struct kumo_envelope env = {0};
	int rc;

	memset(out, 0, sizeof(*out));
	if (buf == NULL)
		return -EINVAL;
	rc = parse(&r, &env);
	if (rc < 0)
		return rc;

	/* All counts are bounded by len (see ENV_MIN_*), so these sums cannot overflow;
	 * str_bytes is at least 1 (the sender is always there). */
	size_t nrcpt = env.nrcpt, nmeta = env.nmeta;
	size_t rcpt_bytes = nrcpt * sizeof(struct kumo_env_rcpt);
	size_t meta_bytes = nmeta * sizeof(struct kumo_env_meta);
	uint8_t *block = malloc(rcpt_bytes + meta_bytes + r.str_bytes);
	if (block == NULL)
		return -ENOMEM;

	memset(&env, 0, sizeof(env));
	env.nrcpt = nrcpt;
	env.nmeta = nmeta;
	env.rcpts = nrcpt ? (struct kumo_env_rcpt *)block : NULL;
	env.meta = nmeta ? (struct kumo_env_meta *)(block + rcpt_bytes) : NULL;
	r = (struct reader){.p = buf, .end = buf + len, .fill = true};
	r.str = (char *)(block + rcpt_bytes + meta_bytes);
	rc = parse(&r, &env);
	if (rc < 0)
		goto out_free;
	env.block_ = block;
	*out = env;
	return 0;

out_free:
	free(block);
	return rc;
}

void kumo_envelope_release(struct kumo_envelope *env)
{
	free(env->block_);
	memset(env, 0, sizeof(*env));
}

struct namebuf {
	char *buf;
	size_t cap;
	size_t len;
};

static void name_put(struct namebuf *nb, const char *s, size_t n, bool lower)
{
	for (size_t i = 0; i < n; i++, nb->len++) {
		char c = s[i];
		if (lower && c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (nb->len + 1 < nb->cap)
			nb->buf[nb->len] = c;
	}
}

size_t kumo_envelope_queue_name(const struct kumo_envelope *env, const char *rcpt_addr, char *buf,
				size_t cap)
{
	struct namebuf nb = {.buf = buf, .cap = buf ? cap : 0, .len = 0};

	if (env->queue && env->queue[0]) {
		name_put(&nb, env->queue, strlen(env->queue), false);
	} else {
		const char *at = rcpt_addr ? strrchr(rcpt_addr, '@') : NULL;
		const char *domain = at ? at + 1 : "";
		if (env->campaign && env->campaign[0]) {
			name_put(&nb, env->campaign, strlen(env->campaign), false);
			name_put(&nb, ":", 1, false);
		}
		if (env->tenant && env->tenant[0]) {
			name_put(&nb, env->tenant, strlen(env->tenant), false);
			name_put(&nb, "@", 1, false);
		}
		name_put(&nb, domain, strlen(domain), true);
	}
	if (nb.cap > 0)
		nb.buf[nb.len < nb.cap ? nb.len : nb.cap - 1] = 0;
	return nb.len;
}
