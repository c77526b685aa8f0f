/* Unit tests for engine/spool with a real io_uring: group commit and callbacks,
 * recovery of envelopes and data, deletes, updates, rotation and oldest-first unlink,
 * torn tails at every offset, damaged records, failed batches, relocation, and a
 * 100,000-record recovery (timed, not asserted). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <liburing.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/envelope.h"
#include "engine/spool.h"

#define UD_WRITE 0x1111u
#define UD_SYNC 0x2222u
#define NOT_DONE 12345

struct msg {
	struct kumo_id id;
	uint8_t *env; /* latest envelope: what recovery returns */
	size_t env_len;
	uint8_t *env0; /* envelope in the message record: what a read returns */
	size_t env0_len;
	uint8_t *data;
	size_t data_len;
	struct kumo_spool_loc loc;
	bool live;
};

struct fix {
	char dir[128];
	struct io_uring ring;
	struct kumo_spool *sp;
	struct msg *msgs;
	size_t nmsgs;
	int *status; /* per cookie */
	size_t ncookies;
	size_t done_calls;
	int logs;
};

/* ---- fixture ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/kumo-spool-test-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	if (io_uring_queue_init(64, &f->ring, 0) < 0) {
		free(f);
		return -1;
	}
	f->ncookies = 1 << 20;
	f->status = malloc(f->ncookies * sizeof(int));
	if (f->status == NULL)
		return -1;
	for (size_t i = 0; i < f->ncookies; i++)
		f->status[i] = NOT_DONE;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	kumo_spool_close(f->sp);
	io_uring_queue_exit(&f->ring);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	for (size_t i = 0; i < f->nmsgs; i++) {
		free(f->msgs[i].env);
		free(f->msgs[i].env0);
		free(f->msgs[i].data);
	}
	free(f->msgs);
	free(f->status);
	free(f);
	return 0;
}

static void on_log(void *arg, const char *msg)
{
	struct fix *f = arg;
	f->logs++;
	(void)msg;
}

static void open_spool(struct fix *f, size_t segment_bytes)
{
	struct kumo_spool_cfg cfg = {.path = f->dir,
				     .shard = 3,
				     .segment_bytes = segment_bytes,
				     .batch_bytes = 4096,
				     .log = on_log,
				     .log_arg = f};
	kumo_spool_close(f->sp);
	f->sp = NULL;
	assert_int_equal(kumo_spool_open(&cfg, &f->sp), 0);
}

static void on_done(void *cookie, int status, void *arg)
{
	struct fix *f = arg;
	size_t i = (uintptr_t)cookie;
	f->done_calls++;
	if (cookie == NULL)
		return; /* records nobody tracks */
	assert_true(i < f->ncookies);
	assert_int_equal(f->status[i], NOT_DONE);
	f->status[i] = status;
}

/* Waits for the two completions of a submitted batch and hands them to the spool,
 * replacing their results when asked (to simulate failures). */
static void reap(struct fix *f, bool fake, int write_res, int sync_res)
{
	for (int k = 0; k < 2; k++) {
		struct io_uring_cqe *cqe;
		assert_int_equal(io_uring_wait_cqe(&f->ring, &cqe), 0);
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&f->ring, cqe);
		assert_true(ud == UD_WRITE || ud == UD_SYNC);
		int which = ud == UD_WRITE ? 0 : 1;
		if (fake)
			res = which == 0 ? write_res : sync_res;
		kumo_spool_complete(f->sp, which, res, on_done, f);
	}
}

static void submit_one(struct fix *f)
{
	assert_int_equal(kumo_spool_submit(f->sp, &f->ring, UD_WRITE, UD_SYNC), 1);
	assert_int_equal(io_uring_submit(&f->ring), 2);
}

static void flush(struct fix *f)
{
	while (kumo_spool_busy(f->sp) > 0) {
		submit_one(f);
		reap(f, false, 0, 0);
	}
}

/* ---- messages ---- */

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint8_t *make_env(const struct kumo_id *id, unsigned n, unsigned version, size_t *len)
{
	char sender[64], rcpt[64], ver[16];
	struct kumo_env_rcpt r = {.addr = rcpt};
	struct kumo_env_meta m = {.key = "version", .value = ver};
	struct kumo_envelope e = {.id = *id,
				  .sender = sender,
				  .nrcpt = 1,
				  .rcpts = &r,
				  .nmeta = 1,
				  .meta = &m,
				  .attempts = version};
	snprintf(sender, sizeof(sender), "sender%u@example.com", n);
	snprintf(rcpt, sizeof(rcpt), "rcpt%u@d%u.example", n, n % 13);
	snprintf(ver, sizeof(ver), "%u", version);
	*len = kumo_envelope_encode(&e, NULL, 0);
	uint8_t *b = malloc(*len);
	assert_non_null(b);
	kumo_envelope_encode(&e, b, *len);
	return b;
}

static struct msg *add_msg(struct fix *f, size_t data_len)
{
	static uint64_t seed = 0x2545f4914f6cdd1dull;
	f->msgs = realloc(f->msgs, (f->nmsgs + 1) * sizeof(*f->msgs));
	assert_non_null(f->msgs);
	struct msg *m = &f->msgs[f->nmsgs];
	memset(m, 0, sizeof(*m));
	/* index in the last 8 bytes, so recovery can map an id back to its message */
	uint64_t idx = f->nmsgs;
	m->id.b[0] = 0x01;
	for (int i = 0; i < 8; i++)
		m->id.b[15 - i] = (uint8_t)(idx >> (8 * i));
	m->env = make_env(&m->id, (unsigned)idx, 0, &m->env_len);
	m->env0 = malloc(m->env_len);
	assert_non_null(m->env0);
	memcpy(m->env0, m->env, m->env_len);
	m->env0_len = m->env_len;
	m->data_len = data_len;
	m->data = malloc(data_len ? data_len : 1);
	assert_non_null(m->data);
	for (size_t i = 0; i < data_len; i++)
		m->data[i] = (uint8_t)rng(&seed);
	f->nmsgs++;
	return m;
}

static size_t msg_index(const struct kumo_id *id)
{
	uint64_t v = 0;
	for (int i = 8; i < 16; i++)
		v = v << 8 | id->b[i];
	return (size_t)v;
}

/* Puts a message with its data split in two iovecs; cookie = message index + 1. */
static void put_msg(struct fix *f, size_t idx)
{
	struct msg *m = &f->msgs[idx];
	size_t half = m->data_len / 3;
	struct iovec iov[2] = {{m->data, half}, {m->data + half, m->data_len - half}};
	assert_int_equal(kumo_spool_put(f->sp, &m->id, m->env, m->env_len, iov, 2,
					(void *)(uintptr_t)(idx + 1), &m->loc),
			 0);
	m->live = true;
}

static size_t new_msgs(struct fix *f, size_t n, size_t min_len, size_t spread)
{
	size_t first = f->nmsgs;
	for (size_t i = 0; i < n; i++) {
		add_msg(f, min_len + (spread ? (i * 7919) % spread : 0));
		put_msg(f, first + i);
	}
	return first;
}

static void check_read(struct fix *f, const struct msg *m)
{
	uint8_t *buf = malloc(m->loc.length);
	const uint8_t *env, *data;
	size_t env_len, data_len;
	assert_non_null(buf);
	assert_int_equal(kumo_spool_read(f->sp, &m->loc, buf, &env, &env_len, &data, &data_len), 0);
	assert_int_equal(env_len, m->env0_len);
	assert_memory_equal(env, m->env0, env_len);
	assert_int_equal(data_len, m->data_len);
	if (data_len)
		assert_memory_equal(data, m->data, data_len);
	free(buf);
}

/* Recovery into a seen[] array; every recovered message must be a live one of the
 * model, with the model's envelope and location. */
struct seen {
	struct fix *f;
	unsigned char *hit;
	long n;
};

static void on_recover(const struct kumo_id *id, const uint8_t *env, size_t env_len,
		       const struct kumo_spool_loc *loc, void *arg)
{
	struct seen *s = arg;
	size_t i = msg_index(id);
	assert_true(i < s->f->nmsgs);
	struct msg *m = &s->f->msgs[i];
	assert_true(m->live);
	assert_int_equal(s->hit[i], 0);
	s->hit[i] = 1;
	s->n++;
	assert_int_equal(env_len, m->env_len);
	assert_memory_equal(env, m->env, env_len);
	assert_int_equal(loc->segment, m->loc.segment);
	assert_true(loc->offset == m->loc.offset);
	assert_int_equal(loc->length, m->loc.length);
	/* the envelope decodes and names this message */
	struct kumo_envelope e;
	assert_int_equal(kumo_envelope_decode(env, env_len, &e), 0);
	assert_memory_equal(e.id.b, id->b, 16);
	kumo_envelope_release(&e);
}

/* Reopens, recovers, checks the result equals the model's live set exactly and that
 * every live message reads back. */
static void reopen_and_check(struct fix *f, size_t segment_bytes)
{
	open_spool(f, segment_bytes);
	struct seen s = {.f = f, .hit = calloc(f->nmsgs + 1, 1)};
	assert_non_null(s.hit);
	long n = kumo_spool_recover(f->sp, on_recover, &s);
	assert_true(n >= 0);
	assert_int_equal(n, s.n);
	long want = 0;
	for (size_t i = 0; i < f->nmsgs; i++) {
		if (!f->msgs[i].live)
			continue;
		want++;
		assert_int_equal(s.hit[i], 1);
		check_read(f, &f->msgs[i]);
	}
	assert_int_equal(n, want);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_true(st.live_messages == (uint64_t)want);
	free(s.hit);
}

/* Status of the puts of messages first..first+n-1. */
static void all_status(struct fix *f, size_t first, size_t n, int want)
{
	for (size_t i = first; i < first + n; i++)
		assert_int_equal(f->status[i + 1], want);
}

#define COOKIE_BASE 500000 /* cookies of deletes and updates */

/* ---- segment files ---- */

static int count_segments(struct fix *f)
{
	char path[256];
	int n = 0;
	for (uint32_t seq = 1; seq < 1000; seq++) {
		struct stat st;
		snprintf(path, sizeof(path), "%s/3/%010u.seg", f->dir, seq);
		if (stat(path, &st) == 0)
			n++;
	}
	return n;
}

static bool seg_exists(struct fix *f, uint32_t seq)
{
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/3/%010u.seg", f->dir, seq);
	return stat(path, &st) == 0;
}

static uint8_t *read_seg(struct fix *f, uint32_t seq, size_t *len)
{
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/3/%010u.seg", f->dir, seq);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *b = malloc((size_t)st.st_size + 1);
	assert_non_null(b);
	assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return b;
}

static void write_seg(struct fix *f, uint32_t seq, const uint8_t *b, size_t len)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/3/%010u.seg", f->dir, seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, b, len), (ssize_t)len);
	close(fd);
}

static size_t seg_size(struct fix *f, uint32_t seq)
{
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/3/%010u.seg", f->dir, seq);
	assert_int_equal(stat(path, &st), 0);
	return (size_t)st.st_size;
}

/* ---- tests ---- */

static void test_put_recover(void **state)
{
	struct fix *f = *state;
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	/* several batches, data sizes 0..4999 */
	for (int b = 0; b < 10; b++) {
		size_t first = new_msgs(f, 50, 0, 5000);
		assert_int_equal(kumo_spool_busy(f->sp), 50);
		assert_true(kumo_spool_pending_bytes(f->sp) > 0);
		flush(f);
		all_status(f, first, 50, 0);
	}
	assert_int_equal(f->done_calls, 500);
	for (size_t i = 0; i < f->nmsgs; i++)
		check_read(f, &f->msgs[i]);

	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.live_messages, 500);
	assert_int_equal(st.batches, 10);
	assert_int_equal(st.records, 500);
	assert_int_equal(st.segments, 1);
	assert_true(st.bytes_written > 500 * 32);
	/* nothing to submit now */
	assert_int_equal(kumo_spool_submit(f->sp, &f->ring, UD_WRITE, UD_SYNC), 0);

	reopen_and_check(f, 0);
	/* recovery appends to a new segment, never to an old one */
	new_msgs(f, 3, 10, 0);
	flush(f);
	assert_int_equal(f->msgs[f->nmsgs - 1].loc.segment, 2);
	assert_int_equal(count_segments(f), 2);
	reopen_and_check(f, 0);
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.torn_tails + st.corrupt_records + st.corrupt_segments, 0);
}

/* Many records in one batch, and records queued while a batch is in flight. */
static void test_double_buffering(void **state)
{
	struct fix *f = *state;
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t a = new_msgs(f, 300, 100, 20000); /* grows the 4 KiB buffer a lot */
	submit_one(f);
	/* in flight: a second submit does nothing, new records go to the other buffer */
	assert_int_equal(kumo_spool_submit(f->sp, &f->ring, UD_WRITE, UD_SYNC), 0);
	size_t b = new_msgs(f, 100, 0, 300);
	assert_int_equal(kumo_spool_busy(f->sp), 400);
	all_status(f, a, 300, NOT_DONE);
	reap(f, false, 0, 0);
	all_status(f, a, 300, 0);
	all_status(f, b, 100, NOT_DONE);
	assert_int_equal(kumo_spool_busy(f->sp), 100);
	flush(f);
	all_status(f, b, 100, 0);
	/* locations are contiguous across the two batches */
	assert_true(f->msgs[b].loc.offset > f->msgs[a + 299].loc.offset);
	reopen_and_check(f, 0);
}

static void test_delete_update(void **state)
{
	struct fix *f = *state;
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t first = new_msgs(f, 100, 50, 500);
	flush(f);
	size_t cookie = COOKIE_BASE;
	for (size_t i = first; i < first + 100; i++) {
		struct msg *m = &f->msgs[i];
		if (i % 2 == 0) {
			assert_int_equal(
			    kumo_spool_delete(f->sp, &m->id, &m->loc, (void *)(uintptr_t)cookie++),
			    0);
			m->live = false;
			continue;
		}
		for (unsigned v = 1; v <= 2; v++) {
			size_t len;
			uint8_t *env = make_env(&m->id, (unsigned)i, v, &len);
			assert_int_equal(kumo_spool_update(f->sp, &m->id, &m->loc, env, len,
							   (void *)(uintptr_t)cookie++),
					 0);
			free(m->env);
			m->env = env;
			m->env_len = len;
		}
		if (i % 4 == 1)
			flush(f); /* some updates in later batches */
	}
	flush(f);
	for (size_t c = COOKIE_BASE; c < cookie; c++)
		assert_int_equal(f->status[c], 0);

	/* put, update and delete inside one batch */
	struct msg *m = add_msg(f, 10);
	size_t idx = f->nmsgs - 1;
	put_msg(f, idx);
	assert_int_equal(kumo_spool_update(f->sp, &m->id, &m->loc, m->env, m->env_len, NULL), 0);
	assert_int_equal(kumo_spool_delete(f->sp, &m->id, &m->loc, NULL), 0);
	m->live = false;
	flush(f);

	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.live_messages, 50);
	reopen_and_check(f, 0);

	/* deletes after recovery, then recover again */
	for (size_t i = first + 1; i < first + 100; i += 4) {
		struct msg *mm = &f->msgs[i];
		assert_int_equal(kumo_spool_delete(f->sp, &mm->id, &mm->loc, NULL), 0);
		mm->live = false;
	}
	flush(f);
	reopen_and_check(f, 0);
}

static void test_rotation_unlink(void **state)
{
	struct fix *f = *state;
	open_spool(f, 4096);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	/* 8 batches of 4 messages of ~1 KiB: a new segment every batch once 4 KiB full */
	for (int b = 0; b < 8; b++) {
		new_msgs(f, 4, 1000, 200);
		flush(f);
	}
	int nseg = count_segments(f);
	assert_true(nseg >= 4);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.segments, (uint64_t)nseg);

	/* no batch spans two segments, and segments follow each other */
	uint32_t first_seg = f->msgs[0].loc.segment;
	uint32_t last_seg = f->msgs[f->nmsgs - 1].loc.segment;
	assert_int_equal(first_seg, 1);
	assert_int_equal(last_seg - first_seg + 1, (uint32_t)nseg);
	for (size_t b = 0; b < 8; b++)
		for (size_t i = 1; i < 4; i++)
			assert_int_equal(f->msgs[b * 4 + i].loc.segment,
					 f->msgs[b * 4].loc.segment);

	struct kumo_spool_seginfo info;
	assert_int_equal(kumo_spool_oldest(f->sp, &info), 0);
	assert_int_equal(info.segment, 1);

	/* kill everything in segment 2 and all but one message of segment 1 */
	struct msg *keep = NULL;
	for (size_t i = 0; i < f->nmsgs; i++) {
		struct msg *m = &f->msgs[i];
		if (m->loc.segment > 2)
			continue;
		if (m->loc.segment == 1 && keep == NULL) {
			keep = m;
			continue;
		}
		assert_int_equal(kumo_spool_delete(f->sp, &m->id, &m->loc, NULL), 0);
		m->live = false;
	}
	flush(f);
	/* segment 2 is all dead but segment 1 is older and still has a live message */
	assert_true(seg_exists(f, 1));
	assert_true(seg_exists(f, 2));
	assert_int_equal(kumo_spool_oldest(f->sp, &info), 0);
	assert_int_equal(info.segment, 1);
	assert_int_equal(info.live, 1);
	assert_true(info.total >= 1);

	assert_int_equal(kumo_spool_delete(f->sp, &keep->id, &keep->loc, NULL), 0);
	keep->live = false;
	flush(f);
	assert_false(seg_exists(f, 1));
	assert_false(seg_exists(f, 2));
	assert_true(seg_exists(f, 3));
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.unlinked_segments, 2);
	assert_int_equal(st.segments, (uint64_t)count_segments(f));
	reopen_and_check(f, 4096);

	/* delete all: after recovery every old segment goes; new records go to a new one */
	for (size_t i = 0; i < f->nmsgs; i++) {
		struct msg *m = &f->msgs[i];
		if (!m->live)
			continue;
		assert_int_equal(kumo_spool_delete(f->sp, &m->id, &m->loc, NULL), 0);
		m->live = false;
	}
	flush(f);
	int before = count_segments(f);
	assert_true(before >= 1); /* the current segment holding the tombstones */
	reopen_and_check(f, 4096);
	assert_int_equal(count_segments(f), 0);
	new_msgs(f, 1, 10, 0);
	flush(f);
	assert_int_equal(count_segments(f), 1);
	assert_true(f->msgs[f->nmsgs - 1].loc.segment > last_seg);
	reopen_and_check(f, 4096);
}

/* Writes 20 messages in one batch, closes, and returns the segment image. */
static uint8_t *twenty(struct fix *f, size_t *len)
{
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	new_msgs(f, 20, 20, 300);
	flush(f);
	kumo_spool_close(f->sp);
	f->sp = NULL;
	return read_seg(f, 1, len);
}

static void test_torn_tail(void **state)
{
	struct fix *f = *state;
	size_t len;
	uint8_t *img = twenty(f, &len);
	struct msg *last = &f->msgs[19];
	size_t start = (size_t)last->loc.offset;
	size_t rec_end = start + last->loc.length;
	assert_true(len >= rec_end && len - rec_end < 8);

	for (size_t cut = start; cut < len; cut++) {
		write_seg(f, 1, img, cut);
		last->live = cut >= rec_end; /* only the padding missing: record intact */
		reopen_and_check(f, 0);
		struct kumo_spool_stats st;
		kumo_spool_stats(f->sp, &st);
		assert_int_equal(st.corrupt_records + st.corrupt_segments, 0);
		if (cut > start && cut < rec_end) {
			assert_int_equal(st.torn_tails, 1);
			assert_int_equal(seg_size(f, 1), start);
		} else {
			assert_int_equal(st.torn_tails, 0);
			assert_int_equal(seg_size(f, 1), cut);
		}
		assert_int_equal(count_segments(f), 1);
	}

	/* after a torn-tail recovery the next open finds a clean segment */
	write_seg(f, 1, img, start + 40);
	last->live = false;
	reopen_and_check(f, 0);
	reopen_and_check(f, 0);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.torn_tails + st.corrupt_segments + st.corrupt_records, 0);
	free(img);
}

static void test_garbage_tail(void **state)
{
	struct fix *f = *state;
	size_t len;
	uint8_t *img = twenty(f, &len);
	uint8_t *g = malloc(len + 4096);
	uint64_t s = 99;
	assert_non_null(g);

	for (size_t extra = 1; extra < 600; extra += 7) {
		memcpy(g, img, len);
		for (size_t i = 0; i < extra; i++)
			g[len + i] = (uint8_t)rng(&s);
		if (extra > 40) {
			/* a plausible record header in the garbage */
			memcpy(g + len, img + f->msgs[3].loc.offset, 16);
		}
		write_seg(f, 1, g, len + extra);
		reopen_and_check(f, 0);
		assert_int_equal(seg_size(f, 1), len);
	}
	/* zeros, as a crash leaves after extending a file */
	memcpy(g, img, len);
	memset(g + len, 0, 4096);
	write_seg(f, 1, g, len + 4096);
	reopen_and_check(f, 0);
	assert_int_equal(seg_size(f, 1), len);
	free(g);
	free(img);
}

static void test_flipped_byte(void **state)
{
	struct fix *f = *state;
	size_t len;
	uint8_t *img = twenty(f, &len);
	uint8_t *g = malloc(len);
	assert_non_null(g);

	/* a byte inside each record's payload: that record alone is dropped */
	for (size_t k = 0; k < 20; k++) {
		struct msg *m = &f->msgs[k];
		memcpy(g, img, len);
		g[m->loc.offset + m->loc.length - 1] ^= 0x01;
		write_seg(f, 1, g, len);
		for (size_t i = 0; i < 20; i++)
			f->msgs[i].live = i != k;
		f->logs = 0;
		reopen_and_check(f, 0);
		struct kumo_spool_stats st;
		kumo_spool_stats(f->sp, &st);
		if (k < 19) {
			assert_int_equal(st.corrupt_records, 1);
			assert_int_equal(seg_size(f, 1), len); /* kept as is */
			assert_true(f->logs >= 1);
		} else {
			/* the last record: indistinguishable from a torn write */
			assert_int_equal(st.torn_tails, 1);
		}
		/* reading the damaged record directly fails its checksum */
		if (k < 19) {
			uint8_t *buf = malloc(m->loc.length);
			const uint8_t *e, *d;
			size_t el, dl;
			assert_int_equal(kumo_spool_read(f->sp, &m->loc, buf, &e, &el, &d, &dl),
					 -EBADMSG);
			free(buf);
		}
	}

	/* the length field of record 5: framing lost, the rest of the segment skipped */
	memcpy(g, img, len);
	g[f->msgs[5].loc.offset + 13] ^= 0x40;
	write_seg(f, 1, g, len);
	for (size_t i = 0; i < 20; i++)
		f->msgs[i].live = i < 5;
	reopen_and_check(f, 0);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_segments, 1);
	assert_int_equal(seg_size(f, 1), len);

	/* the segment header: nothing from that segment */
	memcpy(g, img, len);
	g[9] ^= 0x01;
	write_seg(f, 1, g, len);
	for (size_t i = 0; i < 20; i++)
		f->msgs[i].live = false;
	reopen_and_check(f, 0);
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_segments, 1);
	/* nothing live in it: reclaimed, but moved aside rather than unlinked */
	assert_false(seg_exists(f, 1));
	char path[256];
	struct stat sst;
	snprintf(path, sizeof(path), "%s/3/%010u.seg.corrupt", f->dir, 1u);
	assert_int_equal(stat(path, &sst), 0);
	assert_int_equal((size_t)sst.st_size, len);
	free(g);
	free(img);
}

/* Damage in a segment that is not the last: the next segments still count. */
static void test_corrupt_middle_segment(void **state)
{
	struct fix *f = *state;
	open_spool(f, 1024);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	for (int b = 0; b < 3; b++) {
		new_msgs(f, 3, 400, 0);
		flush(f);
	}
	assert_int_equal(f->msgs[0].loc.segment, 1);
	assert_int_equal(f->msgs[3].loc.segment, 2);
	assert_int_equal(f->msgs[6].loc.segment, 3);
	kumo_spool_close(f->sp);
	f->sp = NULL;

	/* break record 4's length field (second record of segment 2) */
	size_t len;
	uint8_t *img = read_seg(f, 2, &len);
	img[f->msgs[4].loc.offset + 12] ^= 0xff;
	write_seg(f, 2, img, len);
	f->msgs[4].live = false;
	f->msgs[5].live = false;
	reopen_and_check(f, 1024);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_segments, 1);
	assert_int_equal(seg_size(f, 2), len);
	free(img);
}

static void test_failed_batch(void **state)
{
	struct fix *f = *state;
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t ok1 = new_msgs(f, 5, 100, 100);
	flush(f);
	size_t end_ok1 = seg_size(f, 1);

	/* the write "fails" with ENOSPC (it really happened: the spool must remove it) */
	size_t bad = new_msgs(f, 10, 1000, 1000);
	submit_one(f);
	reap(f, true, -ENOSPC, -ECANCELED);
	all_status(f, bad, 10, -ENOSPC);
	for (size_t i = bad; i < bad + 10; i++)
		f->msgs[i].live = false;
	assert_int_equal(seg_size(f, 1), end_ok1);
	assert_int_equal(kumo_spool_busy(f->sp), 0);

	/* short write */
	size_t shrt = new_msgs(f, 3, 100, 0);
	submit_one(f);
	reap(f, true, 50, -ECANCELED);
	all_status(f, shrt, 3, -ENOSPC);
	for (size_t i = shrt; i < shrt + 3; i++)
		f->msgs[i].live = false;

	/* the write worked, the sync failed */
	size_t eio = new_msgs(f, 3, 100, 0);
	submit_one(f);
	struct io_uring_cqe *cqe;
	for (int k = 0; k < 2; k++) {
		assert_int_equal(io_uring_wait_cqe(&f->ring, &cqe), 0);
		int which = io_uring_cqe_get_data64(cqe) == UD_WRITE ? 0 : 1;
		int res = which == 0 ? cqe->res : -EIO;
		io_uring_cqe_seen(&f->ring, cqe);
		kumo_spool_complete(f->sp, which, res, on_done, f);
	}
	all_status(f, eio, 3, -EIO);
	for (size_t i = eio; i < eio + 3; i++)
		f->msgs[i].live = false;
	assert_int_equal(seg_size(f, 1), end_ok1);

	/* the spool goes on: the next batch lands where the failed ones were */
	size_t ok2 = new_msgs(f, 5, 100, 100);
	assert_true(f->msgs[ok2].loc.offset == end_ok1);
	flush(f);
	all_status(f, ok1, 5, 0);
	all_status(f, ok2, 5, 0);

	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.failed_batches, 3);
	assert_int_equal(st.live_messages, 10);
	reopen_and_check(f, 0);
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.torn_tails + st.corrupt_records + st.corrupt_segments, 0);
}

/* A batch fails while the next one, already placed behind it, is pending. */
static void test_failed_batch_with_pending(void **state)
{
	struct fix *f = *state;
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t a = new_msgs(f, 5, 500, 500);
	submit_one(f);
	size_t b = new_msgs(f, 5, 500, 500);
	assert_true(f->msgs[b].loc.offset > f->msgs[a + 4].loc.offset);
	reap(f, true, -ENOSPC, -ECANCELED);
	all_status(f, a, 5, -ENOSPC);
	all_status(f, b, 5, NOT_DONE);
	for (size_t i = a; i < a + 5; i++)
		f->msgs[i].live = false;
	flush(f);
	all_status(f, b, 5, 0);
	for (size_t i = b; i < b + 5; i++)
		check_read(f, &f->msgs[i]);
	/* and a delete of one of them, so a later batch follows the gap too */
	assert_int_equal(kumo_spool_delete(f->sp, &f->msgs[b].id, &f->msgs[b].loc, NULL), 0);
	f->msgs[b].live = false;
	flush(f);

	reopen_and_check(f, 0);
	struct kumo_spool_stats st;
	kumo_spool_stats(f->sp, &st);
	assert_int_equal(st.torn_tails + st.corrupt_records + st.corrupt_segments, 0);
}

/* A batch fails while the next one already went to a new segment. */
static void test_failed_batch_rotated(void **state)
{
	struct fix *f = *state;
	open_spool(f, 1024);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t a = new_msgs(f, 3, 600, 0); /* segment 1, past 1024 bytes */
	submit_one(f);
	size_t b = new_msgs(f, 2, 100, 0); /* starts segment 2 */
	assert_int_equal(f->msgs[a].loc.segment, 1);
	assert_int_equal(f->msgs[b].loc.segment, 2);
	reap(f, true, -EIO, -ECANCELED);
	all_status(f, a, 3, -EIO);
	for (size_t i = a; i < a + 3; i++)
		f->msgs[i].live = false;
	assert_int_equal(seg_size(f, 1), 32); /* back to its header */
	flush(f);
	all_status(f, b, 2, 0);
	/* segment 1 is empty, old and not current: reclaimed after the next batch */
	assert_false(seg_exists(f, 1));
	reopen_and_check(f, 1024);
}

static void test_submit_sq_full(void **state)
{
	struct fix *f = *state;
	struct io_uring small;
	assert_int_equal(io_uring_queue_init(2, &small, 0), 0);
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	new_msgs(f, 1, 10, 0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&small);
	assert_non_null(sqe);
	io_uring_prep_nop(sqe);
	assert_int_equal(kumo_spool_submit(f->sp, &small, UD_WRITE, UD_SYNC), -EBUSY);
	assert_int_equal(kumo_spool_busy(f->sp), 1);
	io_uring_queue_exit(&small);
	flush(f);
	reopen_and_check(f, 0);
}

/* Compaction by relocation: the old copy stops counting, its segment goes. */
static void test_relocate(void **state)
{
	struct fix *f = *state;
	open_spool(f, 2048);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);

	size_t a = new_msgs(f, 4, 500, 0); /* segment 1 */
	flush(f);
	new_msgs(f, 4, 500, 0); /* segment 2 */
	flush(f);
	assert_int_equal(f->msgs[a].loc.segment, 1);
	assert_true(f->msgs[a + 4].loc.segment == 2);

	/* delete three of segment 1, move the fourth forward with a new envelope */
	for (size_t i = a + 1; i < a + 4; i++) {
		assert_int_equal(kumo_spool_delete(f->sp, &f->msgs[i].id, &f->msgs[i].loc, NULL),
				 0);
		f->msgs[i].live = false;
	}
	flush(f);
	assert_true(seg_exists(f, 1));
	struct kumo_spool_seginfo info;
	assert_int_equal(kumo_spool_oldest(f->sp, &info), 0);
	assert_int_equal(info.segment, 1);
	assert_int_equal(info.live, 1);
	assert_int_equal(info.total, 4);

	struct msg *m = &f->msgs[a];
	struct kumo_spool_loc old = m->loc;
	size_t elen;
	uint8_t *env = make_env(&m->id, (unsigned)a, 7, &elen);
	struct iovec iov = {m->data, m->data_len};
	assert_int_equal(kumo_spool_relocate(f->sp, &m->id, &old, env, elen, &iov, 1,
					     (void *)(uintptr_t)(COOKIE_BASE + 777), &m->loc),
			 0);
	free(m->env);
	m->env = env;
	m->env_len = elen;
	free(m->env0);
	m->env0 = malloc(elen);
	assert_non_null(m->env0);
	memcpy(m->env0, env, elen);
	m->env0_len = elen;
	assert_true(m->loc.segment > 1);
	flush(f);
	assert_int_equal(f->status[COOKIE_BASE + 777], 0);
	assert_false(seg_exists(f, 1));
	check_read(f, m);
	reopen_and_check(f, 2048);
}

static void test_lock_and_misuse(void **state)
{
	struct fix *f = *state;
	struct kumo_spool *other;
	struct kumo_spool_cfg cfg = {.path = f->dir, .shard = 3};
	open_spool(f, 0);
	assert_int_equal(kumo_spool_open(&cfg, &other), -EBUSY);
	cfg.shard = 4; /* another shard is independent */
	assert_int_equal(kumo_spool_open(&cfg, &other), 0);
	kumo_spool_close(other);
	cfg.path = NULL;
	assert_int_equal(kumo_spool_open(&cfg, &other), -EINVAL);

	/* recovery is for before the first record only, and only once */
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), -EINVAL);
	open_spool(f, 0);
	new_msgs(f, 1, 1, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), -EINVAL);
	flush(f);

	/* reading a location that does not exist */
	struct kumo_spool_loc bad = {.segment = 99, .offset = 32, .length = 100};
	uint8_t buf[100];
	const uint8_t *e, *d;
	size_t el, dl;
	assert_int_equal(kumo_spool_read(f->sp, &bad, buf, &e, &el, &d, &dl), -ENOENT);
	bad.segment = f->msgs[0].loc.segment;
	bad.offset = 1 << 20;
	assert_int_equal(kumo_spool_read(f->sp, &bad, buf, &e, &el, &d, &dl), -EIO);
	bad.offset = 0; /* the segment header is no record */
	assert_int_equal(kumo_spool_read(f->sp, &bad, buf, &e, &el, &d, &dl), -EBADMSG);
	assert_true(kumo_spool_fd(f->sp, f->msgs[0].loc.segment) >= 0);
	assert_int_equal(kumo_spool_fd(f->sp, 99), -ENOENT);
}

/* Without recovery, segments found at open are never unlinked. */
static void test_unrecovered_pinned(void **state)
{
	struct fix *f = *state;
	open_spool(f, 1024);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	new_msgs(f, 2, 600, 0);
	flush(f);
	open_spool(f, 1024); /* no recover */
	for (size_t i = 0; i < 2; i++)
		assert_int_equal(kumo_spool_delete(f->sp, &f->msgs[i].id, &f->msgs[i].loc, NULL),
				 0);
	flush(f);
	new_msgs(f, 2, 600, 0);
	flush(f);
	assert_true(seg_exists(f, 1));
	f->msgs[0].live = f->msgs[1].live = false;
	reopen_and_check(f, 1024);
	assert_false(seg_exists(f, 1));
}

/* Done callbacks that queue and submit more work. */
struct reentry {
	struct fix *f;
	int calls;
};

static void on_done_reenter(void *cookie, int status, void *arg)
{
	struct reentry *r = arg;
	struct fix *f = r->f;
	assert_int_equal(status, 0);
	if (r->calls++ < 3) {
		struct msg *m = add_msg(f, 0);
		assert_int_equal(
		    kumo_spool_put(f->sp, &m->id, m->env, m->env_len, NULL, 0, NULL, &m->loc), 0);
		m->live = true;
		int rc = kumo_spool_submit(f->sp, &f->ring, UD_WRITE, UD_SYNC);
		assert_true(rc == 0 || rc == 1);
		if (rc == 1)
			io_uring_submit(&f->ring);
	}
}

static void test_reentrant_callbacks(void **state)
{
	struct fix *f = *state;
	struct reentry r = {.f = f};
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	struct msg *m = add_msg(f, 0);
	assert_int_equal(kumo_spool_put(f->sp, &m->id, m->env, m->env_len, NULL, 0, NULL, &m->loc),
			 0);
	m->live = true;
	submit_one(f);
	int guard = 0;
	while ((kumo_spool_busy(f->sp) > 0 || r.calls < 4) && guard++ < 100) {
		struct io_uring_cqe *cqe;
		if (kumo_spool_submit(f->sp, &f->ring, UD_WRITE, UD_SYNC) == 1)
			io_uring_submit(&f->ring);
		if (kumo_spool_busy(f->sp) == 0)
			break;
		assert_int_equal(io_uring_wait_cqe(&f->ring, &cqe), 0);
		int which = io_uring_cqe_get_data64(cqe) == UD_WRITE ? 0 : 1;
		int res = cqe->res;
		io_uring_cqe_seen(&f->ring, cqe);
		kumo_spool_complete(f->sp, which, res, on_done_reenter, &r);
	}
	assert_int_equal(kumo_spool_busy(f->sp), 0);
	assert_int_equal(r.calls, 4);
	reopen_and_check(f, 0);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct counter {
	long n;
	size_t env_bytes;
};

static void on_count(const struct kumo_id *id, const uint8_t *env, size_t env_len,
		     const struct kumo_spool_loc *loc, void *arg)
{
	struct counter *c = arg;
	c->n++;
	c->env_bytes += env_len;
}

static void test_many_small(void **state)
{
	enum { N = 100000 };
	struct fix *f = *state;
	uint8_t data[100], env[64];
	open_spool(f, 0);
	assert_int_equal(kumo_spool_recover(f->sp, NULL, NULL), 0);
	memset(data, 'd', sizeof(data));
	memset(env, 'e', sizeof(env));

	double t0 = now_s();
	for (uint32_t i = 0; i < N; i++) {
		struct kumo_id id = {{0}};
		struct kumo_spool_loc loc;
		struct iovec iov = {data, sizeof(data)};
		memcpy(id.b + 12, &i, 4);
		assert_int_equal(kumo_spool_put(f->sp, &id, env, sizeof(env), &iov, 1, NULL, &loc),
				 0);
		if (i % 2000 == 1999)
			flush(f);
	}
	flush(f);
	double t1 = now_s();
	open_spool(f, 0);
	struct counter c = {0};
	long n = kumo_spool_recover(f->sp, on_count, &c);
	double t2 = now_s();
	assert_int_equal(n, N);
	assert_int_equal(c.n, N);
	assert_int_equal(c.env_bytes, (size_t)N * sizeof(env));
	print_message("spool: %d records written in %.3f s, recovered in %.3f s\n", N, t1 - t0,
		      t2 - t1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_put_recover, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_double_buffering, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_delete_update, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotation_unlink, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_garbage_tail, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_flipped_byte, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_middle_segment, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_failed_batch, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_failed_batch_with_pending, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_failed_batch_rotated, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_submit_sq_full, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_relocate, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lock_and_misuse, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unrecovered_pinned, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reentrant_callbacks, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_small, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
