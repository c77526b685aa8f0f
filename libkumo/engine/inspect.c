/* Offline spool inspection: enumerates every shard of a spool directory and describes
 * each live message as a JSON object (for kumod --list-spool, admin tools and tests). */
#include "engine/internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct list_ctx {
	struct kumo_spool *sp;
	kumo_spool_list_fn cb;
	void *arg;
	struct kumo_buf out;
	long count;
};

static void rcpt_json(struct kumo_json *j, const struct kumo_envelope *env,
		      const struct kumo_env_rcpt *r)
{
	char q[512];
	kumo_envelope_queue_name(env, r->addr, q, sizeof(q));
	kumo_json_obj_open(j);
	kumo_json_key(j, "addr");
	kumo_json_str(j, r->addr);
	kumo_json_key(j, "queue");
	kumo_json_str(j, q);
	kumo_json_key(j, "notify");
	kumo_json_uint(j, r->notify);
	kumo_json_key(j, "orcpt");
	kumo_json_str_or_null(j, r->orcpt);
	kumo_json_key(j, "done");
	kumo_json_bool(j, r->state == KUMO_RCPT_DONE);
	kumo_json_obj_close(j);
}

static void envelope_json(struct kumo_json *j, const struct kumo_envelope *env, long size)
{
	char hex[KUMO_ID_HEX_LEN + 1];
	kumo_id_hex(&env->id, hex);
	kumo_json_obj_open(j);
	kumo_json_key(j, "id");
	kumo_json_str(j, hex);
	kumo_json_key(j, "sender");
	kumo_json_str(j, env->sender ? env->sender : "");
	kumo_json_key(j, "recipients");
	kumo_json_arr_open(j);
	for (size_t i = 0; i < env->nrcpt; i++)
		rcpt_json(j, env, &env->rcpts[i]);
	kumo_json_arr_close(j);
	kumo_json_key(j, "envid");
	kumo_json_str_or_null(j, env->envid);
	kumo_json_key(j, "ret");
	kumo_json_str_or_null(j, env->ret == 1 ? "FULL" : env->ret == 2 ? "HDRS" : NULL);
	kumo_json_key(j, "tenant");
	kumo_json_str_or_null(j, env->tenant);
	kumo_json_key(j, "campaign");
	kumo_json_str_or_null(j, env->campaign);
	kumo_json_key(j, "queue");
	kumo_json_str_or_null(j, env->queue);
	kumo_json_key(j, "created");
	kumo_json_uint(j, env->created_ms);
	kumo_json_key(j, "due");
	kumo_json_uint(j, env->due_ms);
	kumo_json_key(j, "num_attempts");
	kumo_json_uint(j, env->attempts);
	kumo_json_key(j, "size");
	kumo_json_int(j, size);
	kumo_json_key(j, "meta");
	kumo_json_obj_open(j);
	for (size_t i = 0; i < env->nmeta; i++) {
		kumo_json_key(j, env->meta[i].key);
		kumo_json_str(j, env->meta[i].value);
	}
	kumo_json_obj_close(j);
	kumo_json_obj_close(j);
}

/* Size of the message data, read back (which also proves it is readable), or -errno. */
static long data_size(struct kumo_spool *sp, const struct kumo_spool_loc *loc)
{
	uint8_t *buf = malloc(loc->length);
	const uint8_t *env, *data;
	size_t env_len, data_len;
	if (!buf)
		return -ENOMEM;
	int err = kumo_spool_read(sp, loc, buf, &env, &env_len, &data, &data_len);
	free(buf);
	return err < 0 ? err : (long)data_len;
}

static void one(const struct kumo_id *id, const uint8_t *env, size_t env_len,
		const struct kumo_spool_loc *loc, void *arg)
{
	struct list_ctx *x = arg;
	struct kumo_envelope e;
	if (kumo_envelope_decode(env, env_len, &e) < 0)
		return;
	e.id = *id;
	struct kumo_json j;
	x->out.len = 0;
	kumo_json_init(&j, &x->out);
	envelope_json(&j, &e, data_size(x->sp, loc));
	kumo_envelope_release(&e);
	if (!x->out.oom) {
		x->cb(x->arg, x->out.data, x->out.len);
		x->count++;
	}
}

long kumo_spool_list(const char *spool_path, kumo_spool_list_fn cb, void *arg)
{
	DIR *d = opendir(spool_path);
	if (!d)
		return -errno;
	struct list_ctx x = {.cb = cb, .arg = arg};
	struct dirent *de;
	long err = 0;
	while (!err && (de = readdir(d))) {
		char *end;
		unsigned long shard = strtoul(de->d_name, &end, 10);
		if (end == de->d_name || *end || shard > UINT16_MAX)
			continue;
		struct kumo_spool_cfg sc = {.path = spool_path, .shard = (uint16_t)shard};
		if ((err = kumo_spool_open(&sc, &x.sp)) < 0)
			break;
		long n = kumo_spool_recover(x.sp, one, &x);
		if (n < 0)
			err = n;
		kumo_spool_close(x.sp);
	}
	closedir(d);
	kumo_buf_free(&x.out);
	return err < 0 ? err : x.count;
}
