/* JSON log records, one object a line, with KumoMTA's field names. Each loop formats
 * records into its own buffer and writes them to its own file with one io_uring write per
 * batch, so logging never blocks a loop; records also go to the embedder's callback. */
#include "engine/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Pending log bytes beyond this are dropped (and counted) rather than growing without
 * bound when the disk stalls. */
#define LOG_MAX_PENDING (64u << 20)

int kumo_log_open(struct kumo_loop *l)
{
	const char *dir = l->e->log_path;
	if (!dir)
		return 0;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "log directory %s: %s", dir, strerror(errno));
		return -errno;
	}
	char stamp[32], path[4096];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
	snprintf(path, sizeof(path), "%s/%s-%u.jsonl", dir, stamp, l->index);
	l->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (l->log_fd < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "log file %s: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

void kumo_log_close(struct kumo_loop *l)
{
	/* at close the loop has stopped: write what is left synchronously */
	if (l->log_fd >= 0 && l->log_pending.len)
		(void)!write(l->log_fd, l->log_pending.data, l->log_pending.len);
	if (l->log_fd >= 0)
		close(l->log_fd);
	l->log_fd = -1;
	kumo_buf_free(&l->log_pending);
	kumo_buf_free(&l->log_inflight);
}

void kumo_log_commit(struct kumo_loop *l, struct kumo_buf *rec)
{
	if (l->e->cfg.record_fn)
		l->e->cfg.record_fn(l->e->cfg.record_arg, rec->data, rec->len);
	if (l->log_fd < 0 || l->log_pending.len + rec->len > LOG_MAX_PENDING)
		return;
	kumo_buf_append(&l->log_pending, rec->data, rec->len);
	kumo_buf_putc(&l->log_pending, '\n');
}

void kumo_log_flush(struct kumo_loop *l)
{
	if (l->log_busy || l->log_pending.len == 0 || l->log_fd < 0)
		return;
	struct kumo_buf t = l->log_inflight;
	l->log_inflight = l->log_pending;
	l->log_pending = t;
	l->log_pending.len = 0;
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_write(sqe, l->log_fd, l->log_inflight.data, (unsigned)l->log_inflight.len,
			    (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_LOG_WRITE, 0, 0));
	l->log_busy = true;
}

void kumo_log_write_done(struct kumo_loop *l, int res)
{
	l->log_busy = false;
	if (res < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "log write: %s", strerror(-res));
	} else if ((size_t)res < l->log_inflight.len) {
		/* short write: put the rest in front of what is pending */
		struct kumo_buf rest = {0};
		kumo_buf_append(&rest, l->log_inflight.data + res, l->log_inflight.len - res);
		kumo_buf_append(&rest, l->log_pending.data, l->log_pending.len);
		kumo_buf_free(&l->log_pending);
		l->log_pending = rest;
	}
	l->log_bytes += res > 0 ? (uint64_t)res : 0;
	l->log_inflight.len = 0;
}

/* "4.3.1" -> {"class":4,"subject":3,"detail":1}, or null. */
static void enhanced_code(struct kumo_json *j, const char *enh)
{
	unsigned c, s, d;
	if (!enh || sscanf(enh, "%u.%u.%u", &c, &s, &d) != 3) {
		kumo_json_null(j);
		return;
	}
	kumo_json_obj_open(j);
	kumo_json_key(j, "class");
	kumo_json_uint(j, c);
	kumo_json_key(j, "subject");
	kumo_json_uint(j, s);
	kumo_json_key(j, "detail");
	kumo_json_uint(j, d);
	kumo_json_obj_close(j);
}

static void response(struct kumo_json *j, const struct kumo_log_fields *f)
{
	kumo_json_key(j, "response");
	kumo_json_obj_open(j);
	kumo_json_key(j, "code");
	kumo_json_int(j, f->code);
	kumo_json_key(j, "enhanced_code");
	enhanced_code(j, f->enhanced);
	kumo_json_key(j, "content");
	kumo_json_str(j, f->content ? f->content : "");
	kumo_json_key(j, "command");
	kumo_json_str_or_null(j, f->command);
	kumo_json_obj_close(j);
}

static void message_fields(struct kumo_json *j, const struct kumo_log_fields *f)
{
	char hex[KUMO_ID_HEX_LEN + 1] = "";
	if (f->id)
		kumo_id_hex(f->id, hex);
	kumo_json_key(j, "type");
	kumo_json_str(j, f->type);
	kumo_json_key(j, "id");
	kumo_json_str(j, hex);
	kumo_json_key(j, "sender");
	kumo_json_str(j, f->sender ? f->sender : "");
	kumo_json_key(j, "recipient");
	kumo_json_str(j, f->recipient ? f->recipient : "");
	kumo_json_key(j, "queue");
	kumo_json_str(j, f->queue ? f->queue : "");
	kumo_json_key(j, "site");
	kumo_json_str(j, f->site ? f->site : "");
	kumo_json_key(j, "size");
	kumo_json_uint(j, f->size);
}

static void meta(struct kumo_json *j, const struct kumo_log_fields *f)
{
	kumo_json_key(j, "meta");
	kumo_json_obj_open(j);
	for (size_t i = 0; i < f->nmeta; i++) {
		kumo_json_key(j, f->meta[i].key);
		kumo_json_str(j, f->meta[i].value);
	}
	kumo_json_obj_close(j);
}

void kumo_log_record(struct kumo_loop *l, const struct kumo_log_fields *f)
{
	struct kumo_buf *b = &l->scratch;
	b->len = 0;
	struct kumo_json j;
	kumo_json_init(&j, b);
	kumo_json_obj_open(&j);
	message_fields(&j, f);
	response(&j, f);
	kumo_json_key(&j, "peer_address");
	kumo_json_obj_open(&j);
	kumo_json_key(&j, "name");
	kumo_json_str(&j, f->peer_name ? f->peer_name : "");
	kumo_json_key(&j, "addr");
	kumo_json_str(&j, f->peer_addr ? f->peer_addr : "");
	kumo_json_obj_close(&j);
	kumo_json_key(&j, "timestamp");
	kumo_json_uint(&j, l->now_ms / 1000);
	kumo_json_key(&j, "created");
	kumo_json_uint(&j, (f->created_ms ? f->created_ms : l->now_ms) / 1000);
	kumo_json_key(&j, "num_attempts");
	kumo_json_uint(&j, f->num_attempts);
	kumo_json_key(&j, "bounce_classification");
	kumo_json_str(&j, "Uncategorized");
	kumo_json_key(&j, "egress_pool");
	if (f->delivery)
		kumo_json_str(&j, "unspecified");
	else
		kumo_json_null(&j);
	kumo_json_key(&j, "egress_source");
	if (f->delivery)
		kumo_json_str(&j, "unspecified");
	else
		kumo_json_null(&j);
	kumo_json_key(&j, "feedback_report");
	kumo_json_null(&j);
	meta(&j, f);
	kumo_json_key(&j, "headers");
	kumo_json_obj_open(&j);
	kumo_json_obj_close(&j);
	kumo_json_key(&j, "delivery_protocol");
	if (f->delivery)
		kumo_json_str(&j, "ESMTP");
	else
		kumo_json_null(&j);
	kumo_json_key(&j, "reception_protocol");
	if (f->delivery)
		kumo_json_null(&j);
	else
		kumo_json_str(&j, f->protocol ? f->protocol : "ESMTP");
	kumo_json_key(&j, "nodeid");
	kumo_json_str(&j, l->e->nodeid);
	kumo_json_obj_close(&j);
	if (!b->oom)
		kumo_log_commit(l, b);
	b->len = 0;
}
