/* Unit tests for log segments: chunked gzip compression (checked with libdeflate and
 * zcat), the segment rename rules, the pending cap, and an engine whose logs rotate by size
 * and age without losing or splitting a record. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/stat.h>
#include <libdeflate.h>
#include <cmocka.h>

#include "engine/internal.h"

static void quiet(void *arg, enum kumo_log_level level, const char *line)
{
}

static char *tmpdir(void)
{
	char *d = strdup("/tmp/kumo-test-log-XXXXXX");
	assert_non_null(d);
	assert_non_null(mkdtemp(d));
	return d;
}

static void rmdir_rf(char *dir)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(dir);
}

static void write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

static uint8_t *read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	struct kumo_buf b = {0};
	char tmp[65536];
	size_t k;
	while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0)
		kumo_buf_append(&b, tmp, k);
	fclose(f);
	assert_false(b.oom);
	*n = b.len;
	return b.data ? (uint8_t *)b.data : calloc(1, 1);
}

/* Output of a shell command (zcat), with its exit status. */
static uint8_t *run(const char *cmd, size_t *n, int *status)
{
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	struct kumo_buf b = {0};
	char tmp[65536];
	size_t k;
	while ((k = fread(tmp, 1, sizeof(tmp), p)) > 0)
		kumo_buf_append(&b, tmp, k);
	*status = pclose(p);
	*n = b.len;
	return b.data ? (uint8_t *)b.data : calloc(1, 1);
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Decompresses concatenated gzip members with libdeflate; returns the member count. */
static size_t gunzip_members(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *out_len)
{
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	assert_non_null(d);
	size_t members = 0, pos = 0, olen = 0;
	while (pos < n) {
		size_t used = 0, got = 0;
		assert_int_equal(libdeflate_gzip_decompress_ex(d, in + pos, n - pos, out + olen,
							       cap - olen, &used, &got),
				 LIBDEFLATE_SUCCESS);
		pos += used;
		olen += got;
		members++;
	}
	libdeflate_free_decompressor(d);
	*out_len = olen;
	return members;
}

/* Log-like lines with some randomness, so the data does not compress to nothing. */
static uint8_t *sample(size_t n)
{
	uint8_t *p = malloc(n);
	assert_non_null(p);
	uint32_t x = 12345;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] =
		    i % 97 == 96 ? '\n' : (uint8_t)("{}\":,abcdefghij0123456789"[(x >> 16) % 25]);
	}
	return p;
}

static void check_compressed(const char *dir, size_t n, size_t chunk)
{
	char src[512], dst[512], cmd[600];
	snprintf(src, sizeof(src), "%s/in.jsonl", dir);
	snprintf(dst, sizeof(dst), "%s/out.gz", dir);
	uint8_t *data = sample(n);
	write_file(src, data, n);
	assert_int_equal(kumo_logcompress_file(src, dst, chunk), 0);

	size_t zn, plain_len;
	uint8_t *z = read_file(dst, &zn);
	uint8_t *plain = malloc(n + 1);
	size_t members = gunzip_members(z, zn, plain, n + 1, &plain_len);
	assert_int_equal(members, n ? (n + chunk - 1) / chunk : 1);
	assert_int_equal(plain_len, n);
	assert_memory_equal(plain, data, n);

	int status;
	size_t zc_len;
	snprintf(cmd, sizeof(cmd), "zcat '%s'", dst);
	uint8_t *zc = run(cmd, &zc_len, &status);
	assert_int_equal(status, 0);
	assert_int_equal(zc_len, n);
	assert_memory_equal(zc, data, n);
	free(zc);
	free(plain);
	free(z);
	free(data);
}

static void test_compress_in_chunks(void **state)
{
	char *dir = tmpdir();
	check_compressed(dir, 100000, 4096); /* many members, last one partial */
	check_compressed(dir, 8192, 4096);   /* exact multiple: no empty trailing member */
	check_compressed(dir, 0, 4096);	     /* empty: one empty member, zcat is happy */
	check_compressed(dir, 9u << 20, KUMO_LOGCOMPRESS_CHUNK); /* the real chunk size */
	assert_int_equal(kumo_logcompress_file("/nonexistent/x.jsonl", "/tmp/x.gz", 4096), -ENOENT);
	rmdir_rf(dir);
}

static void test_segment_rename_rules(void **state)
{
	char *dir = tmpdir();
	char seg[512], gz[520], tmp[520];
	snprintf(seg, sizeof(seg), "%s/20240101-000000-0.jsonl", dir);
	snprintf(gz, sizeof(gz), "%s.gz", seg);
	snprintf(tmp, sizeof(tmp), "%s.gz.tmp", seg);
	static const char one[] = "{\"a\":1}\n{\"b\":2}\n";
	write_file(seg, one, sizeof(one) - 1);
	assert_int_equal(kumo_logcompress_segment(seg, 4), 0);
	assert_false(exists(seg));
	assert_false(exists(tmp));
	assert_true(exists(gz));
	size_t n0;
	uint8_t *gz0 = read_file(gz, &n0);

	/* a crash between the rename and the unlink: same bytes, the segment goes */
	write_file(seg, one, sizeof(one) - 1);
	assert_int_equal(kumo_logcompress_segment(seg, 4), 0);
	assert_false(exists(seg));
	assert_false(exists(tmp));

	/* another segment of the same name: the .gz is not replaced, the segment stays */
	static const char two[] = "{\"c\":3}\n";
	write_file(seg, two, sizeof(two) - 1);
	assert_int_equal(kumo_logcompress_segment(seg, 4), -EEXIST);
	assert_true(exists(seg));
	assert_false(exists(tmp));
	size_t n1;
	uint8_t *gz1 = read_file(gz, &n1);
	assert_int_equal(n0, n1);
	assert_memory_equal(gz0, gz1, n0);
	free(gz0);
	free(gz1);
	rmdir_rf(dir);
}

struct warnings {
	int n;
	char last[256];
};

static void count_warnings(void *arg, enum kumo_log_level level, const char *line)
{
	struct warnings *w = arg;
	if (level == KUMO_LOG_WARN) {
		w->n++;
		snprintf(w->last, sizeof(w->last), "%s", line);
	}
}

/* A loop that is not running: records past the pending cap are dropped whole and
 * counted, and the warning comes at most once a second. */
static void test_pending_cap(void **state)
{
	struct warnings w = {0};
	struct kumo_engine e = {.cfg = {.log_fn = count_warnings, .log_arg = &w}};
	struct kumo_loop l = {
	    .e = &e, .log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC), .log_old_fd = -1};
	assert_true(l.log_fd >= 0);
	char line[1000];
	memset(line, 'x', sizeof(line));
	struct kumo_buf rec = {0};
	kumo_buf_append(&rec, line, sizeof(line));
	size_t fit = (64u << 20) / (sizeof(line) + 1);
	for (size_t i = 0; i < fit + 10; i++)
		kumo_log_commit(&l, &rec);
	assert_int_equal(l.log_pending.len, fit * (sizeof(line) + 1));
	assert_int_equal(l.log_pending.data[l.log_pending.len - 1], '\n');
	assert_int_equal(l.log_dropped, 10);

	l.log_busy = true; /* a write in flight: flush only reports */
	l.now_ms = 100000;
	kumo_log_flush(&l);
	assert_int_equal(w.n, 1);
	assert_non_null(strstr(w.last, "10 records dropped"));
	kumo_log_commit(&l, &rec);
	l.now_ms += 500;
	kumo_log_flush(&l);
	assert_int_equal(w.n, 1); /* not twice within a second */
	l.now_ms += 500;
	kumo_log_flush(&l);
	assert_int_equal(w.n, 2);
	assert_non_null(strstr(w.last, "1 records dropped (11 since start)"));
	l.now_ms += 5000;
	kumo_log_flush(&l);
	assert_int_equal(w.n, 2); /* nothing new dropped: quiet */
	kumo_log_commit(&l, &rec);
	l.now_ms += 10;
	kumo_log_close(&l); /* drops of the last second are not lost from view */
	assert_int_equal(w.n, 3);
	assert_non_null(strstr(w.last, "1 records dropped (12 since start)"));
	assert_int_equal(l.log_fd, -1);
	assert_null(l.log_pending.data);
	kumo_buf_free(&rec);
}

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done, failed;
};

static void injected(void *arg, int status, const char *id)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->lock);
	w->failed += status != 0;
	w->done++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* Injects messages first..first+n-1, each to recipients r<i>-0 and r<i>-1, and waits. */
static void inject(struct kumo_engine *e, int first, int n)
{
	struct waiter w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	static const char body[] = "Subject: log test\r\n\r\nhello\r\n";
	for (int i = first; i < first + n; i++) {
		char r0[64], r1[64];
		snprintf(r0, sizeof(r0), "r%d-0@example.net", i);
		snprintf(r1, sizeof(r1), "r%d-1@example.net", i);
		const char *rcpts[] = {r0, r1};
		struct kumo_inject_spec spec = {.sender = "s@example.com",
						.recipients = rcpts,
						.nrecipients = 2,
						.data = (const uint8_t *)body,
						.data_len = sizeof(body) - 1};
		assert_int_equal(kumo_engine_inject(e, &spec, injected, &w), 0);
	}
	pthread_mutex_lock(&w.lock);
	while (w.done < n)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	assert_int_equal(w.failed, 0);
}

/* A JSON value made of objects, arrays, strings and scalars, checked for structure only:
 * strings closed, brackets balanced, nothing after the top-level object. */
static bool json_object_line(const char *p, size_t n)
{
	int depth = 0;
	bool in_str = false;
	if (n == 0 || p[0] != '{')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
			else if ((unsigned char)c < 0x20)
				return false;
			continue;
		}
		if (c == '"')
			in_str = true;
		else if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		if (depth == 0 && i != n - 1)
			return false;
		if (depth < 0)
			return false;
	}
	return depth == 0 && !in_str;
}

struct seen {
	int nmsgs;
	uint8_t *count; /* per recipient: msg*2 + k */
	int lines, receptions;
};

/* Checks each line of a segment's content and counts its Reception records. Returns the
 * loop's last timestamp so far through *ts (records of one loop are in time order). */
static void scan_lines(struct seen *s, const uint8_t *data, size_t n, uint64_t *ts)
{
	const char *p = (const char *)data, *end = p + n;
	assert_true(n == 0 || end[-1] == '\n'); /* a segment ends with a whole record */
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		assert_non_null(nl);
		assert_true(json_object_line(p, (size_t)(nl - p)));
		s->lines++;
		const char *t = memmem(p, (size_t)(nl - p), "\"timestamp\":", 12);
		assert_non_null(t);
		uint64_t v = strtoull(t + 12, NULL, 10);
		assert_true(v >= *ts);
		*ts = v;
		if (memmem(p, (size_t)(nl - p), "\"type\":\"Reception\"", 18)) {
			s->receptions++;
			const char *r = memmem(p, (size_t)(nl - p), "\"recipient\":\"r", 14);
			assert_non_null(r);
			int msg, k;
			assert_int_equal(sscanf(r + 14, "%d-%d@", &msg, &k), 2);
			assert_true(msg >= 0 && msg < s->nmsgs && (k == 0 || k == 1));
			s->count[msg * 2 + k]++;
		}
		p = nl + 1;
	}
}

struct listing {
	char **names;
	size_t n;
	size_t gz, jsonl, other;
};

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_dir(const char *dir, struct listing *ls)
{
	memset(ls, 0, sizeof(*ls));
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		ls->names = realloc(ls->names, (ls->n + 1) * sizeof(char *));
		ls->names[ls->n++] = strdup(de->d_name);
		size_t k = strlen(de->d_name);
		if (k > 9 && !strcmp(de->d_name + k - 9, ".jsonl.gz"))
			ls->gz++;
		else if (k > 6 && !strcmp(de->d_name + k - 6, ".jsonl"))
			ls->jsonl++;
		else
			ls->other++;
	}
	closedir(d);
	qsort(ls->names, ls->n, sizeof(char *), by_name);
}

static void free_listing(struct listing *ls)
{
	for (size_t i = 0; i < ls->n; i++)
		free(ls->names[i]);
	free(ls->names);
}

/* Loop index of a segment name "YYYYmmdd-HHMMSS-<loop>[_seq].jsonl[.gz]". */
static unsigned loop_of(const char *name)
{
	return (unsigned)strtoul(name + 16, NULL, 10);
}

/* Reads every segment in name order, checks each line, counts receptions per recipient,
 * and checks that each closed segment passed max_bytes before it was closed. */
static void check_segments(const char *dir, struct seen *s, uint64_t max_bytes, struct listing *ls)
{
	list_dir(dir, ls);
	uint64_t ts[8] = {0};
	for (size_t i = 0; i < ls->n; i++) {
		char path[600], cmd[700];
		snprintf(path, sizeof(path), "%s/%s", dir, ls->names[i]);
		size_t n;
		uint8_t *data;
		bool gz = strstr(ls->names[i], ".gz") != NULL;
		if (gz) {
			int status;
			snprintf(cmd, sizeof(cmd), "zcat '%s'", path);
			data = run(cmd, &n, &status);
			assert_int_equal(status, 0);
			if (max_bytes)
				assert_true(n >= max_bytes);
		} else {
			data = read_file(path, &n);
		}
		unsigned loop = loop_of(ls->names[i]);
		assert_true(loop < 8);
		scan_lines(s, data, n, &ts[loop]);
		free(data);
	}
}

static struct kumo_engine *engine(const char *spool, const char *logdir, uint64_t max_bytes,
				  uint32_t max_age_ms, bool no_compress)
{
	struct kumo_engine_cfg cfg = {.threads = 2,
				      .spool_path = spool,
				      .log_path = logdir,
				      .log_fn = quiet,
				      .no_delivery = true,
				      .log_max_segment_bytes = max_bytes,
				      .log_max_segment_age_ms = max_age_ms,
				      .log_no_compress = no_compress};
	struct kumo_engine *e;
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	return e;
}

static void test_engine_rotates_by_size(void **state)
{
	char *dir = tmpdir();
	char spool[512], logdir[512];
	snprintf(spool, sizeof(spool), "%s/spool", dir);
	snprintf(logdir, sizeof(logdir), "%s/log", dir);
	enum { MSGS = 300 };
	struct kumo_engine *e = engine(spool, logdir, 4096, 0, false);
	assert_int_equal(kumo_engine_start(e), 0);
	for (int i = 0; i < MSGS; i += 10)
		inject(e, i, 10);
	kumo_engine_stop(e);
	assert_int_equal(kumo_engine_wait(e), 0);
	kumo_engine_free(e); /* joins the compressor once the queue is done */

	struct seen s = {.nmsgs = MSGS, .count = calloc(MSGS * 2, 1)};
	struct listing ls;
	check_segments(logdir, &s, 4096, &ls);
	assert_true(ls.gz >= 20);      /* 600 records of ~700 bytes, batches of ~7 KiB */
	assert_true(ls.jsonl <= 2);    /* the open segment of each loop, unless it was empty */
	assert_int_equal(ls.other, 0); /* no .tmp left behind */
	assert_int_equal(s.receptions, MSGS * 2);
	assert_int_equal(s.lines, MSGS * 2);
	for (int i = 0; i < MSGS * 2; i++)
		assert_int_equal(s.count[i], 1);
	free_listing(&ls);

	/* the next start compresses the segments left open, and removes its own empty ones
	 * and a .tmp of an interrupted compression */
	char stale[600];
	snprintf(stale, sizeof(stale), "%s/20000101-000000-0.jsonl.gz.tmp", logdir);
	write_file(stale, "junk", 4);
	e = engine(spool, logdir, 4096, 0, false);
	kumo_engine_free(e);
	memset(s.count, 0, MSGS * 2);
	s.lines = s.receptions = 0;
	check_segments(logdir, &s, 0, &ls);
	assert_int_equal(ls.jsonl, 0);
	assert_int_equal(ls.other, 0);
	assert_int_equal(s.receptions, MSGS * 2);
	for (int i = 0; i < MSGS * 2; i++)
		assert_int_equal(s.count[i], 1);
	free_listing(&ls);
	free(s.count);
	rmdir_rf(dir);
}

static void test_engine_rotates_by_age(void **state)
{
	char *dir = tmpdir();
	char spool[512], logdir[512];
	snprintf(spool, sizeof(spool), "%s/spool", dir);
	snprintf(logdir, sizeof(logdir), "%s/log", dir);
	struct kumo_engine *e = engine(spool, logdir, 0, 1000, false);
	assert_int_equal(kumo_engine_start(e), 0);
	inject(e, 0, 4);
	usleep(2600 * 1000); /* past the age, and a tick or two after it */
	inject(e, 4, 4);
	kumo_engine_stop(e);
	assert_int_equal(kumo_engine_wait(e), 0);
	kumo_engine_free(e);

	struct seen s = {.nmsgs = 8, .count = calloc(16, 1)};
	struct listing ls;
	check_segments(logdir, &s, 0, &ls);
	assert_true(ls.gz >= 1);    /* the first records' segments were closed by age */
	assert_true(ls.jsonl >= 1); /* the later records are in the open ones */
	assert_int_equal(ls.other, 0);
	assert_int_equal(s.receptions, 16);
	for (int i = 0; i < 16; i++)
		assert_int_equal(s.count[i], 1);
	free_listing(&ls);
	free(s.count);
	rmdir_rf(dir);
}

static void test_engine_no_compress(void **state)
{
	char *dir = tmpdir();
	char spool[512], logdir[512];
	snprintf(spool, sizeof(spool), "%s/spool", dir);
	snprintf(logdir, sizeof(logdir), "%s/log", dir);
	struct kumo_engine *e = engine(spool, logdir, 4096, 0, true);
	assert_int_equal(kumo_engine_start(e), 0);
	for (int i = 0; i < 60; i += 10)
		inject(e, i, 10);
	kumo_engine_stop(e);
	assert_int_equal(kumo_engine_wait(e), 0);
	kumo_engine_free(e);

	struct seen s = {.nmsgs = 60, .count = calloc(120, 1)};
	struct listing ls;
	check_segments(logdir, &s, 0, &ls);
	assert_int_equal(ls.gz, 0);
	assert_true(ls.jsonl >= 4);
	assert_int_equal(s.receptions, 120);
	for (int i = 0; i < 120; i++)
		assert_int_equal(s.count[i], 1);
	free_listing(&ls);
	free(s.count);
	rmdir_rf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_compress_in_chunks),
	    cmocka_unit_test(test_segment_rename_rules),
	    cmocka_unit_test(test_pending_cap),
	    cmocka_unit_test(test_engine_rotates_by_size),
	    cmocka_unit_test(test_engine_rotates_by_age),
	    cmocka_unit_test(test_engine_no_compress),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
