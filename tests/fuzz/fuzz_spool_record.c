/* libFuzzer target for spool recovery: the input becomes the segment files of a shard
 * (optionally given a valid segment header, record checksums fixed up, and split into
 * two segments, so the fuzzer reaches record handling), then kumo_spool_recover runs.
 * Every recovered message must read back, and recovering again must find the same. */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/envelope.h"
#include "engine/spool.h"
#include "util/crc32c.h"

static char root[64];  /* spool path, made once per process */
static char shard[96]; /* root/0 */

static void cleanup(void)
{
	DIR *d = opendir(shard);
	struct dirent *de;
	char path[256];

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", shard, de->d_name);
		unlink(path);
	}
	closedir(d);
}

static void remove_all(void)
{
	cleanup();
	rmdir(shard);
	rmdir(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* tmpfs where there is one: recovery fsyncs after truncating and unlinking */
	snprintf(root, sizeof(root), "/dev/shm/kumo-fuzz-spool-XXXXXX");
	if (mkdtemp(root) == NULL) {
		snprintf(root, sizeof(root), "/tmp/kumo-fuzz-spool-XXXXXX");
		if (mkdtemp(root) == NULL)
			abort();
	}
	snprintf(shard, sizeof(shard), "%s/0", root);
	if (mkdir(shard, 0700) < 0)
		abort();
	atexit(remove_all);
	return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A valid segment header for shard 0 (layout in docs/spool.md). */
static void seg_header(uint8_t *h, uint32_t seq)
{
	memset(h, 0, 32);
	put32(h, 0x4745534bu);
	h[4] = 1;
	put32(h + 8, seq);
	put32(h + 28, kumo_crc32c(0, h, 28));
}

/* Walks the records from offset 32 and stores correct checksums where they fit. */
static void fix_crcs(uint8_t *m, size_t size)
{
	size_t off = 32;
	while (off + 32 <= size) {
		uint32_t len = get32(m + off + 12);
		if (len > size - off - 32)
			break;
		size_t covered = m[off + 8] == 4 ? 24 : 24 + (size_t)len;
		put32(m + off + 4, kumo_crc32c(0, m + off + 8, covered));
		off += (32 + (size_t)len + 7) & ~(size_t)7;
	}
}

static void write_file(uint32_t seq, const uint8_t *b, size_t len)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/%010u.seg", shard, seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	if (len > 0 && write(fd, b, len) != (ssize_t)len)
		abort();
	close(fd);
}

struct ctx {
	struct kumo_spool *sp;
	long n;
};

static void on_msg(const struct kumo_id *id, const uint8_t *env, size_t env_len,
		   const struct kumo_spool_loc *loc, void *arg)
{
	struct ctx *c = arg;
	struct kumo_envelope e;
	const uint8_t *renv, *data;
	size_t renv_len, data_len;

	c->n++;
	if (kumo_envelope_decode(env, env_len, &e) == 0)
		kumo_envelope_release(&e);
	uint8_t *buf = malloc(loc->length);
	if (buf == NULL)
		abort();
	if (kumo_spool_read(c->sp, loc, buf, &renv, &renv_len, &data, &data_len) != 0)
		abort(); /* recovery vouched for this record */
	if (memcmp(buf + 16, id->b, 16) != 0)
		abort();
	free(buf);
}

static long recover_once(void)
{
	struct kumo_spool_cfg cfg = {.path = root, .shard = 0};
	struct ctx c = {0};
	if (kumo_spool_open(&cfg, &c.sp) != 0)
		abort();
	long n = kumo_spool_recover(c.sp, on_msg, &c);
	if (n >= 0 && n != c.n)
		abort();
	kumo_spool_close(c.sp);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint8_t mode = data[0];
	size_t split = (size_t)data[1] << 8 | data[2];
	data += 3;
	size -= 3;

	cleanup();
	uint8_t *img = malloc(size + 64);
	if (img == NULL)
		abort();
	size_t hdr = (mode & 1) ? 32 : 0;
	/* mode bit 2: the input is two segments, split at a given offset */
	size_t first = (mode & 4) && split < size ? split : size;
	const uint8_t *parts[2] = {data, data + first};
	size_t lens[2] = {first, size - first};
	for (uint32_t k = 0; k < ((mode & 4) ? 2u : 1u); k++) {
		if (hdr)
			seg_header(img, k + 1);
		memcpy(img + hdr, parts[k], lens[k]);
		if (mode & 2)
			fix_crcs(img, hdr + lens[k]);
		write_file(k + 1, img, hdr + lens[k]);
	}
	free(img);

	long n1 = recover_once();
	long n2 = recover_once();
	if (n1 < 0 || n1 != n2)
		abort();
	return 0;
}
