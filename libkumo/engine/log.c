/* JSON log records, one object a line, with KumoMTA's field names. Each loop formats
 * records into its own buffer and writes them to its own segment file with one io_uring
 * op at a time; segments rotate by size and age and closed ones are compressed off the
 * loop (logcompress.c), so logging never blocks a loop. Records also go to a callback. */
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
#define LOG_SEGMENT_BYTES (1ull << 30)
#define LOG_SEGMENT_AGE_MS (5u * 60 * 1000)
/* A rotation whose open failed is tried again this much later; meanwhile the open
 * segment keeps growing. */
#define LOG_RETRY_MS 10000
/* Further segments of one loop within one second are numbered _0001 to _9999. */
#define LOG_MAX_SEQ 9999
#define LOG_PATH_MAX 4096

/* The log op in flight (l->log_op); its completion is KUMO_OP_LOG_WRITE whatever it is. */
enum log_op { LOG_OP_WRITE = 0, LOG_OP_OPEN, LOG_OP_CLOSE };

static void stamp_of(uint64_t ms, char out[16])
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	if (strftime(out, 16, "%Y%m%d-%H%M%S", &tm) == 0)
		out[0] = 0;
}

/* Claims the next segment name at time ms: the first of a second has sequence 0. */
static void claim_name(struct kumo_loop *l, uint64_t ms)
{
	char st[16];
	stamp_of(ms, st);
	if (strcmp(st, l->log_stamp) == 0) {
		l->log_seq++;
	} else {
		memcpy(l->log_stamp, st, sizeof(st));
		l->log_seq = 0;
	}
}

/* "<dir>/<stamp>-<loop>.jsonl", then "<dir>/<stamp>-<loop>_0001.jsonl" and so on: one
 * loop's segment names sort by time ('.' sorts before '_'). */
static int segment_name(const struct kumo_loop *l, char *out)
{
	int n;
	if (l->log_seq > LOG_MAX_SEQ)
		return -EEXIST;
	if (l->log_seq == 0)
		n = snprintf(out, LOG_PATH_MAX, "%s/%s-%u.jsonl", l->e->log_path, l->log_stamp,
			     l->index);
	else
		n = snprintf(out, LOG_PATH_MAX, "%s/%s-%u_%04u.jsonl", l->e->log_path, l->log_stamp,
			     l->index, l->log_seq);
	return n > 0 && n < LOG_PATH_MAX ? 0 : -ENAMETOOLONG;
}

static bool compressor_in_use(const struct kumo_engine *e)
{
	for (unsigned i = 0; e->loops && i < e->nloops; i++)
		if (e->loops[i].log_registered)
			return true;
	return false;
}

/* The first loop to open its log starts the engine's compressor and hands it the closed
 * segments of earlier runs, before any segment of this run exists. Loops are opened one
 * after the other by kumo_engine_new, so this needs no lock. */
static int start_compressor(struct kumo_loop *l)
{
	struct kumo_engine *e = l->e;
	l->log_registered = true;
	if (e->cfg.log_no_compress || e->logz)
		return 0;
	int err = kumo_logcompress_new(e, &e->logz);
	if (err < 0) {
		kumo_elog(e, KUMO_LOG_ERROR, "log compression thread: %s", strerror(-err));
		return err;
	}
	err = kumo_logcompress_leftovers(e->logz, e->log_path);
	if (err < 0)
		kumo_elog(e, KUMO_LOG_WARN, "log directory %s: closed segments not queued: %s",
			  e->log_path, strerror(-err));
	return 0;
}

/* Opens the first segment of this run (blocking: the loop is not running yet), skipping
 * names already used by a file or its compressed form. */
static int open_first_segment(struct kumo_loop *l)
{
	uint64_t now = kumo_now_ms();
	for (claim_name(l, now);; claim_name(l, now)) {
		char gz[LOG_PATH_MAX + 3];
		struct stat st;
		int err = segment_name(l, l->log_seg_path);
		if (err < 0)
			return err;
		snprintf(gz, sizeof(gz), "%s.gz", l->log_seg_path);
		if (stat(gz, &st) == 0)
			continue;
		l->log_fd =
		    open(l->log_seg_path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
		if (l->log_fd >= 0)
			return 0;
		if (errno != EEXIST)
			return -errno;
	}
}

int kumo_log_open(struct kumo_loop *l)
{
	struct kumo_engine *e = l->e;
	const char *dir = e->log_path;
	int err;
	l->log_old_fd = -1;
	if (!dir)
		return 0;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		err = -errno;
		kumo_elog(e, KUMO_LOG_ERROR, "log directory %s: %s", dir, strerror(-err));
		return err;
	}
	if ((err = start_compressor(l)) < 0)
		return err;
	l->log_seg_path = malloc(LOG_PATH_MAX);
	l->log_next_path = malloc(LOG_PATH_MAX);
	if (!l->log_seg_path || !l->log_next_path)
		return -ENOMEM;
	if ((err = open_first_segment(l)) < 0) {
		kumo_elog(e, KUMO_LOG_ERROR, "log file in %s: %s", dir, strerror(-err));
		return err;
	}
	return 0;
}

static void warn_dropped(struct kumo_loop *l);

void kumo_log_close(struct kumo_loop *l)
{
	l->log_warn_ms = 0; /* drops of the last second are reported too */
	warn_dropped(l);
	/* at close the loop has stopped: write what is left synchronously */
	if (l->log_fd >= 0 && l->log_pending.len) {
		ssize_t w = write(l->log_fd, l->log_pending.data, l->log_pending.len);
		l->log_seg_bytes += w > 0 ? (uint64_t)w : 0;
	}
	if (l->log_fd >= 0) {
		close(l->log_fd);
		/* the open segment stays .jsonl (the next start compresses it), unless empty */
		if (l->log_seg_bytes == 0 && !l->log_busy && l->log_seg_path)
			unlink(l->log_seg_path);
	}
	/* log_old_fd >= 0 only while its close is in flight: that op owns it */
	l->log_fd = l->log_old_fd = -1;
	free(l->log_seg_path);
	free(l->log_next_path);
	l->log_seg_path = l->log_next_path = NULL;
	kumo_buf_free(&l->log_pending);
	kumo_buf_free(&l->log_inflight);
	if (l->log_registered) {
		l->log_registered = false;
		if (!compressor_in_use(l->e)) {
			kumo_logcompress_free(l->e->logz); /* finishes the queued segments */
			l->e->logz = NULL;
		}
	}
}

void kumo_log_commit(struct kumo_loop *l, struct kumo_buf *rec)
{
	if (l->e->cfg.record_fn)
		l->e->cfg.record_fn(l->e->cfg.record_arg, rec->data, rec->len);
	if (l->log_fd < 0)
		return;
	/* a record goes in whole or not at all */
	if (l->log_pending.len + rec->len + 1 > LOG_MAX_PENDING ||
	    kumo_buf_reserve(&l->log_pending, rec->len + 1) < 0) {
		l->log_pending.oom = false;
		l->log_dropped++;
		return;
	}
	kumo_buf_append(&l->log_pending, rec->data, rec->len);
	kumo_buf_putc(&l->log_pending, '\n');
}

/* At most one warning a second while records are being dropped. */
static void warn_dropped(struct kumo_loop *l)
{
	if (l->log_dropped == l->log_dropped_told || l->now_ms < l->log_warn_ms + 1000)
		return;
	uint64_t n = l->log_dropped - l->log_dropped_told;
	if (l->log_last_err)
		kumo_elog(l->e, KUMO_LOG_WARN,
			  "log loop %u: %llu records dropped (%llu since start; last write "
			  "error: %s)",
			  l->index, (unsigned long long)n, (unsigned long long)l->log_dropped,
			  strerror(l->log_last_err));
	else
		kumo_elog(l->e, KUMO_LOG_WARN,
			  "log loop %u: %llu records dropped (%llu since start): the disk is "
			  "not keeping up",
			  l->index, (unsigned long long)n, (unsigned long long)l->log_dropped);
	l->log_dropped_told = l->log_dropped;
	l->log_warn_ms = l->now_ms;
	l->log_last_err = 0;
}

static bool rotation_due(const struct kumo_loop *l)
{
	const struct kumo_engine_cfg *c = &l->e->cfg;
	uint64_t max_bytes =
	    c->log_max_segment_bytes ? c->log_max_segment_bytes : LOG_SEGMENT_BYTES;
	uint64_t max_age =
	    c->log_max_segment_age_ms ? c->log_max_segment_age_ms : LOG_SEGMENT_AGE_MS;
	if (l->log_seg_bytes == 0 || l->log_split || l->now_ms < l->log_retry_ms)
		return false;
	return l->log_seg_bytes >= max_bytes || l->now_ms - l->log_seg_first_ms >= max_age;
}

/* Opens the segment named by log_stamp/log_seq through the ring. */
static void submit_open(struct kumo_loop *l)
{
	int err = segment_name(l, l->log_next_path);
	if (err < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "log loop %u: no segment name: %s", l->index,
			  strerror(-err));
		l->log_retry_ms = l->now_ms + LOG_RETRY_MS;
		return;
	}
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_openat(sqe, AT_FDCWD, l->log_next_path,
			     O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_LOG_WRITE, 0, 0));
	l->log_op = LOG_OP_OPEN;
	l->log_busy = true;
}

void kumo_log_flush(struct kumo_loop *l)
{
	if (l->log_fd < 0)
		return;
	warn_dropped(l);
	if (l->log_busy)
		return;
	if (rotation_due(l)) {
		claim_name(l, l->now_ms);
		submit_open(l);
		if (l->log_busy)
			return; /* records wait in pending for the new segment */
	}
	if (l->log_pending.len == 0)
		return;
	struct kumo_buf t = l->log_inflight;
	l->log_inflight = l->log_pending;
	l->log_pending = t;
	l->log_pending.len = 0;
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_write(sqe, l->log_fd, l->log_inflight.data, (unsigned)l->log_inflight.len,
			    (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_LOG_WRITE, 0, 0));
	l->log_op = LOG_OP_WRITE;
	l->log_busy = true;
	if (!l->log_seg_first_ms)
		l->log_seg_first_ms = l->now_ms;
}

static size_t count_lines(const char *p, size_t n)
{
	size_t k = 0;
	for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))); p++)
		k++;
	return k;
}

static void write_done(struct kumo_loop *l, int res)
{
	if (res < 0) {
		/* the batch is lost: counted and reported with the drop warning */
		l->log_dropped += count_lines(l->log_inflight.data, l->log_inflight.len);
		l->log_last_err = -res;
	} else if ((size_t)res < l->log_inflight.len) {
		/* short write: put the rest in front of what is pending */
		struct kumo_buf rest = {0};
		kumo_buf_append(&rest, l->log_inflight.data + res, l->log_inflight.len - res);
		kumo_buf_append(&rest, l->log_pending.data, l->log_pending.len);
		kumo_buf_free(&l->log_pending);
		l->log_pending = rest;
	}
	if (res > 0) {
		l->log_bytes += (uint64_t)res;
		l->log_seg_bytes += (uint64_t)res;
		l->log_split = l->log_inflight.data[res - 1] != '\n';
	}
	l->log_inflight.len = 0;
}

/* The next segment is open (or not): switch to it and close the old one. */
static void open_done(struct kumo_loop *l, int res)
{
	if (res == -EEXIST) {
		l->log_seq++;
		submit_open(l);
		return;
	}
	if (res < 0) {
		kumo_elog(l->e, KUMO_LOG_ERROR, "log segment %s: %s; still writing to %s",
			  l->log_next_path, strerror(-res), l->log_seg_path);
		l->log_retry_ms = l->now_ms + LOG_RETRY_MS;
		return;
	}
	char *closed = l->log_seg_path;
	l->log_seg_path = l->log_next_path;
	l->log_next_path = closed;
	l->log_old_fd = l->log_fd;
	l->log_fd = res;
	l->log_seg_bytes = 0;
	l->log_seg_first_ms = 0;
	l->log_split = false;
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_close(sqe, l->log_old_fd);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_LOG_WRITE, 0, 0));
	l->log_op = LOG_OP_CLOSE;
	l->log_busy = true;
}

/* The old segment (named by log_next_path) is closed: queue it for compression. */
static void close_done(struct kumo_loop *l, int res)
{
	l->log_old_fd = -1;
	if (res < 0)
		kumo_elog(l->e, KUMO_LOG_WARN, "log segment %s: close: %s", l->log_next_path,
			  strerror(-res));
	if (l->e->logz && kumo_logcompress_push(l->e->logz, l->log_next_path) < 0)
		kumo_elog(l->e, KUMO_LOG_WARN,
			  "log segment %s: out of memory, left for the next start to compress",
			  l->log_next_path);
}

void kumo_log_write_done(struct kumo_loop *l, int res)
{
	l->log_busy = false;
	switch ((enum log_op)l->log_op) {
	case LOG_OP_OPEN:
		open_done(l, res);
		break;
	case LOG_OP_CLOSE:
		close_done(l, res);
		break;
	case LOG_OP_WRITE:
		write_done(l, res);
		break;
	}
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
		kumo_json_str(&j, f->egress_pool ? f->egress_pool : "unspecified");
	else
		kumo_json_null(&j);
	kumo_json_key(&j, "egress_source");
	if (f->delivery)
		kumo_json_str(&j, f->egress_source ? f->egress_source : "unspecified");
	else
		kumo_json_null(&j);
	if (f->source_address && *f->source_address) {
		kumo_json_key(&j, "source_address");
		kumo_json_str(&j, f->source_address);
	}
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
