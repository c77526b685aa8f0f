/* Compression of closed log segments: "X.jsonl" becomes "X.jsonl.gz" (readable with zcat)
 * on one background thread per engine, fed by a queue of paths, so that loops never wait
 * for the disk or the compressor. Each chunk of a segment is its own gzip member. */
#include "engine/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* libdeflate's levels run 1..12; 6 is its default balance of speed and ratio. */
#define LOGCOMPRESS_LEVEL 6

struct job {
	struct job *next;
	char path[]; /* the closed segment */
};

struct kumo_logcompress {
	struct kumo_engine *e; /* for diagnostics */
	pthread_t thread;
	pthread_mutex_t lock; /* guards head, tail, stop */
	pthread_cond_t cond;  /* signalled on a new job and on stop */
	struct job *head, *tail;
	bool stop; /* set by free: finish the queue, then exit */
};

/* Reads up to n bytes, retrying short reads; returns the count (< n only at end of file)
 * or -errno. */
static ssize_t read_full(int fd, uint8_t *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int write_full(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int kumo_logcompress_file(const char *src, const char *dst, size_t chunk)
{
	int err = 0, in = -1, out = -1;
	uint8_t *ibuf = NULL, *obuf = NULL;
	struct libdeflate_compressor *c = NULL;
	if (chunk == 0)
		return -EINVAL;
	if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0) {
		err = -errno;
		goto out_close;
	}
	c = libdeflate_alloc_compressor(LOGCOMPRESS_LEVEL);
	size_t bound = c ? libdeflate_gzip_compress_bound(c, chunk) : 0;
	ibuf = malloc(chunk);
	obuf = malloc(bound ? bound : 1);
	if (!c || !ibuf || !obuf) {
		err = -ENOMEM;
		goto out_close;
	}
	bool first = true;
	for (;;) {
		ssize_t n = read_full(in, ibuf, chunk);
		if (n < 0) {
			err = (int)n;
			goto out_close;
		}
		if (n == 0 && !first)
			break;
		first = false;
		size_t z = libdeflate_gzip_compress(c, ibuf, (size_t)n, obuf, bound);
		if (z == 0) { /* cannot happen with a buffer of the bound's size */
			err = -EIO;
			goto out_close;
		}
		if ((err = write_full(out, obuf, z)) < 0)
			goto out_close;
		if ((size_t)n < chunk)
			break;
	}
	if (fsync(out) < 0)
		err = -errno;
out_close:
	libdeflate_free_compressor(c);
	free(ibuf);
	free(obuf);
	if (out >= 0 && close(out) < 0 && !err)
		err = -errno;
	close(in);
	return err;
}

/* 1 if the two files hold the same bytes, 0 if not, or -errno. */
static int same_bytes(const char *a, const char *b)
{
	enum { BLOCK = 65536 };
	int fa = -1, fb = -1, rc = 1;
	uint8_t *pa = malloc(BLOCK), *pb = malloc(BLOCK);
	if (!pa || !pb) {
		rc = -ENOMEM;
		goto out;
	}
	if ((fa = open(a, O_RDONLY | O_CLOEXEC)) < 0 || (fb = open(b, O_RDONLY | O_CLOEXEC)) < 0) {
		rc = -errno;
		goto out;
	}
	for (;;) {
		ssize_t na = read_full(fa, pa, BLOCK), nb = read_full(fb, pb, BLOCK);
		if (na < 0 || nb < 0) {
			rc = (int)(na < 0 ? na : nb);
			break;
		}
		if (na != nb || memcmp(pa, pb, (size_t)na) != 0) {
			rc = 0;
			break;
		}
		if (na < BLOCK)
			break;
	}
out:
	free(pa);
	free(pb);
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return rc;
}

/* Makes the entries of path's directory durable. */
static int sync_dir_of(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return err;
}

/* tmp -> dst, never replacing an existing dst. */
static int rename_noreplace(const char *tmp, const char *dst)
{
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dst, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* a file system without RENAME_NOREPLACE: link refuses an existing name too */
	if (link(tmp, dst) < 0)
		return -errno;
	unlink(tmp);
	return 0;
}

int kumo_logcompress_segment(const char *path, size_t chunk)
{
	char gz[4096], tmp[4096];
	if ((size_t)snprintf(gz, sizeof(gz), "%s.gz", path) >= sizeof(gz) ||
	    (size_t)snprintf(tmp, sizeof(tmp), "%s.gz.tmp", path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	int err = kumo_logcompress_file(path, tmp, chunk);
	if (err < 0) {
		unlink(tmp);
		return err;
	}
	err = rename_noreplace(tmp, gz);
	if (err == -EEXIST) {
		/* compression is deterministic: the same bytes mean a previous run got as far
		 * as the rename and stopped before removing the segment */
		int same = same_bytes(tmp, gz);
		unlink(tmp);
		if (same != 1)
			return same < 0 ? same : -EEXIST;
	} else if (err < 0) {
		unlink(tmp);
		return err;
	}
	if ((err = sync_dir_of(gz)) < 0)
		return err;
	return unlink(path) < 0 ? -errno : 0;
}

static void *compress_main(void *arg)
{
	struct kumo_logcompress *z = arg;
	pthread_mutex_lock(&z->lock);
	for (;;) {
		while (!z->head && !z->stop)
			pthread_cond_wait(&z->cond, &z->lock);
		struct job *j = z->head;
		if (!j)
			break; /* stop requested and nothing left */
		z->head = j->next;
		if (!z->head)
			z->tail = NULL;
		pthread_mutex_unlock(&z->lock);
		int err = kumo_logcompress_segment(j->path, KUMO_LOGCOMPRESS_CHUNK);
		if (err == -EEXIST)
			kumo_elog(z->e, KUMO_LOG_WARN,
				  "log segment %s: %s.gz exists with other content; the segment is "
				  "kept uncompressed",
				  j->path, j->path);
		else if (err < 0)
			kumo_elog(z->e, KUMO_LOG_ERROR, "log segment %s: compression failed: %s",
				  j->path, strerror(-err));
		free(j);
		pthread_mutex_lock(&z->lock);
	}
	pthread_mutex_unlock(&z->lock);
	return NULL;
}

int kumo_logcompress_new(struct kumo_engine *e, struct kumo_logcompress **out)
{
	struct kumo_logcompress *z = calloc(1, sizeof(*z));
	if (!z)
		return -ENOMEM;
	z->e = e;
	pthread_mutex_init(&z->lock, NULL);
	pthread_cond_init(&z->cond, NULL);
	int err = pthread_create(&z->thread, NULL, compress_main, z);
	if (err) {
		pthread_cond_destroy(&z->cond);
		pthread_mutex_destroy(&z->lock);
		free(z);
		return -err;
	}
	*out = z;
	return 0;
}

int kumo_logcompress_push(struct kumo_logcompress *z, const char *path)
{
	size_t n = strlen(path) + 1;
	struct job *j = malloc(sizeof(*j) + n);
	if (!j)
		return -ENOMEM;
	j->next = NULL;
	memcpy(j->path, path, n);
	pthread_mutex_lock(&z->lock);
	if (z->tail)
		z->tail->next = j;
	else
		z->head = j;
	z->tail = j;
	pthread_cond_signal(&z->cond);
	pthread_mutex_unlock(&z->lock);
	return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n > k && strcmp(s + n - k, suffix) == 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int kumo_logcompress_leftovers(struct kumo_logcompress *z, const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	char **names = NULL;
	size_t n = 0, cap = 0;
	int err = 0;
	struct dirent *de;
	while (!err && (de = readdir(d))) {
		char path[4096];
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= sizeof(path))
			continue;
		if (ends_with(de->d_name, ".jsonl.gz.tmp")) {
			unlink(path);
			continue;
		}
		if (!ends_with(de->d_name, ".jsonl"))
			continue;
		if (n == cap) {
			char **p = realloc(names, (cap ? cap * 2 : 16) * sizeof(*p));
			if (!p) {
				err = -ENOMEM;
				break;
			}
			names = p;
			cap = cap ? cap * 2 : 16;
		}
		if (!(names[n] = strdup(path)))
			err = -ENOMEM;
		else
			n++;
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), by_name);
	for (size_t i = 0; i < n; i++) {
		if (!err)
			err = kumo_logcompress_push(z, names[i]);
		free(names[i]);
	}
	free(names);
	return err;
}

void kumo_logcompress_free(struct kumo_logcompress *z)
{
	if (!z)
		return;
	pthread_mutex_lock(&z->lock);
	z->stop = true;
	pthread_cond_signal(&z->cond);
	pthread_mutex_unlock(&z->lock);
	pthread_join(z->thread, NULL);
	pthread_cond_destroy(&z->cond);
	pthread_mutex_destroy(&z->lock);
	free(z);
}
