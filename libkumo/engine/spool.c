/* The durable spool: records encoded into double-buffered batches, each batch appended
 * with one write linked to one fdatasync in the caller's io_uring; per-segment live
 * counts for oldest-first reclamation; recovery by scanning mmapped segments.
 * The on-disk format is described in docs/spool.md. */
#include "engine/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/crc32c.h"

/* Segment file header, 32 bytes:
 *   0 u32 magic, 4 u16 version, 6 u16 shard, 8 u32 seq, 12..28 zero,
 *   28 u32 crc32c of bytes 0..28. */
#define SEG_MAGIC 0x4745534bu /* "KSEG" */
#define SEG_VERSION 1
#define SEG_HDR 32

/* Record, little-endian, starting at a multiple of 8 and zero-padded to one:
 *   0 u32 magic, 4 u32 crc32c of bytes 8..32+len (a pad: of bytes 8..32 only),
 *   8 u8 type, 9 u8 flags (0), 10 u16 reserved (0), 12 u32 payload length (len),
 *   16 id[16], 32 payload. */
#define REC_MAGIC 0x4345524bu /* "KREC" */
#define REC_HDR 32
#define REC_ALIGN 8
#define REC_MESSAGE 1 /* payload: u32 env_len, envelope, data */
#define REC_UPDATE 2  /* payload: envelope */
#define REC_DELETE 3  /* no payload */
#define REC_PAD 4     /* covers the bytes of a failed batch; payload unchecked */

#define DEFAULT_SEGMENT_BYTES (64u << 20)
#define DEFAULT_BATCH_BYTES (4u << 20)
#define BATCH_MAX ((size_t)1 << 30) /* a write this large is never short for size */
#define NBATCH 3

struct seg {
	uint32_t seq;
	int fd;		/* -1 until first needed */
	bool pinned;	/* found at open; live count unknown until recovery */
	bool sealed;	/* a failed clean-up left it unfit for more appends */
	bool corrupt;	/* recovery dropped data from it: renamed, not unlinked, when dead */
	uint64_t size;	/* append offset: header, records, pending batch */
	uint64_t live;	/* live message records */
	uint64_t total; /* message records counted in it */
};

enum batch_state { BATCH_FREE, BATCH_PENDING, BATCH_FLIGHT, BATCH_FINISHING };

/* What a record of a batch does to the accounting once durable, and whom to tell. */
struct brec {
	void *cookie;
	uint32_t seg;	  /* message: its segment; delete: the target's segment */
	uint32_t old_seg; /* relocation: the segment of the old copy */
	uint8_t type;
	bool relocate;
};

struct batch {
	enum batch_state state;
	uint32_t seq;  /* segment it is appended to */
	uint64_t base; /* file offset of buf[0] */
	uint8_t *buf;
	size_t len;
	size_t cap;
	struct brec *recs;
	size_t nrec;
	size_t caprec;
	int write_res;
	int sync_res;
	bool got_write;
	bool got_sync;
};

struct kumo_spool {
	char *dir; /* <path>/<shard> */
	uint16_t shard;
	size_t segment_bytes;
	size_t batch_bytes;
	void (*log)(void *log_arg, const char *msg);
	void *log_arg;
	int dirfd; /* holds the flock */

	struct seg *segs; /* ascending seq; the last is current when has_cur */
	size_t nsegs;
	size_t capsegs;
	bool has_cur;
	uint32_t next_seq;

	bool started;	/* a record was queued: too late to recover */
	bool recovered; /* recovery ran */

	struct batch b[NBATCH];
	int pend;   /* index of the pending batch, or -1 */
	int flight; /* index of the batch in flight, or -1 */

	struct kumo_spool_stats st;
};

/* ---- little-endian byte access ---- */

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t align8(uint64_t v)
{
	return (v + REC_ALIGN - 1) & ~(uint64_t)(REC_ALIGN - 1);
}

__attribute__((format(printf, 2, 3))) static void log_msg(struct kumo_spool *sp, const char *fmt,
							  ...)
{
	char line[512];
	va_list ap;

	if (sp->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	sp->log(sp->log_arg, line);
}

/* ---- file helpers ---- */

static void seg_name(uint32_t seq, char name[32])
{
	snprintf(name, 32, "%010u.seg", seq);
}

/* Parses "<10 digits>.seg"; returns false for anything else. */
static bool seg_parse_name(const char *name, uint32_t *seq)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 10; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	if (strcmp(name + 10, ".seg") != 0 || v == 0 || v > UINT32_MAX)
		return false;
	*seq = (uint32_t)v;
	return true;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENOSPC;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -EIO;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int fsync_dir(int fd)
{
	return fsync(fd) == 0 ? 0 : -errno;
}

/* mkdir -p, then fsync the parent of every directory it created. */
static int make_dirs(const char *path)
{
	size_t n = strlen(path);
	char *tmp = malloc(n + 1);
	int rc = 0;

	if (tmp == NULL)
		return -ENOMEM;
	memcpy(tmp, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (tmp[i] != '/' && tmp[i] != 0)
			continue;
		char save = tmp[i];
		tmp[i] = 0;
		if (mkdir(tmp, 0750) == 0) {
			char *slash = strrchr(tmp, '/');
			const char *parent = slash == NULL ? "." : slash == tmp ? "/" : tmp;
			if (slash != NULL && slash != tmp)
				*slash = 0;
			int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (slash != NULL && slash != tmp)
				*slash = '/';
			if (pfd >= 0) {
				fsync(pfd);
				close(pfd);
			}
		} else if (errno != EEXIST) {
			rc = -errno;
			goto out_free;
		}
		tmp[i] = save;
	}
out_free:
	free(tmp);
	return rc;
}

/* ---- segments ---- */

static struct seg *seg_find(struct kumo_spool *sp, uint32_t seq)
{
	size_t lo = 0, hi = sp->nsegs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->segs[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->nsegs && sp->segs[lo].seq == seq ? &sp->segs[lo] : NULL;
}

static struct seg *seg_cur(struct kumo_spool *sp)
{
	return sp->has_cur ? &sp->segs[sp->nsegs - 1] : NULL;
}

static int seg_reserve(struct kumo_spool *sp)
{
	if (sp->nsegs < sp->capsegs)
		return 0;
	size_t cap = sp->capsegs ? sp->capsegs * 2 : 16;
	struct seg *n = realloc(sp->segs, cap * sizeof(*n));
	if (n == NULL)
		return -ENOMEM;
	sp->segs = n;
	sp->capsegs = cap;
	return 0;
}

static void seg_header(uint8_t hdr[SEG_HDR], uint16_t shard, uint32_t seq)
{
	memset(hdr, 0, SEG_HDR);
	put_le32(hdr, SEG_MAGIC);
	put_le16(hdr + 4, SEG_VERSION);
	put_le16(hdr + 6, shard);
	put_le32(hdr + 8, seq);
	put_le32(hdr + 28, kumo_crc32c(0, hdr, 28));
}

static bool seg_header_ok(const uint8_t *hdr, uint16_t shard, uint32_t seq)
{
	return get_le32(hdr) == SEG_MAGIC && get_le16(hdr + 4) == SEG_VERSION &&
	       get_le16(hdr + 6) == shard && get_le32(hdr + 8) == seq &&
	       get_le32(hdr + 28) == kumo_crc32c(0, hdr, 28);
}

/* Creates the next segment and makes it current: file, header, directory fsync. */
static int seg_create(struct kumo_spool *sp)
{
	uint8_t hdr[SEG_HDR];
	char name[32];
	int rc, fd;

	if (sp->next_seq == 0)
		return -EOVERFLOW; /* 2^32 - 1 segments used up */
	rc = seg_reserve(sp);
	if (rc < 0)
		return rc;
	uint32_t seq = sp->next_seq;
	seg_name(seq, name);
	fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	seg_header(hdr, sp->shard, seq);
	rc = pwrite_full(fd, hdr, SEG_HDR, 0);
	if (rc < 0)
		goto out_unlink;
	rc = fsync_dir(sp->dirfd);
	if (rc < 0)
		goto out_unlink;

	sp->segs[sp->nsegs++] = (struct seg){.seq = seq, .fd = fd, .size = SEG_HDR};
	sp->has_cur = true;
	sp->next_seq = seq + 1;
	return 0;

out_unlink:
	close(fd);
	unlinkat(sp->dirfd, name, 0);
	return rc;
}

static int seg_open_fd(struct kumo_spool *sp, struct seg *s)
{
	char name[32];

	if (s->fd >= 0)
		return s->fd;
	seg_name(s->seq, name);
	s->fd = openat(sp->dirfd, name, O_RDWR | O_CLOEXEC);
	return s->fd >= 0 ? s->fd : -errno;
}

static bool seg_busy(const struct kumo_spool *sp, uint32_t seq)
{
	for (int i = 0; i < NBATCH; i++)
		if (sp->b[i].state != BATCH_FREE && sp->b[i].seq == seq)
			return true;
	return false;
}

/* Oldest-first reclamation: a tombstone in segment k only refers to messages in
 * segments <= k, so unlinking in order never resurrects a deleted message. Each unlink
 * is made durable before the next, for the same reason. A segment recovery found
 * damaged is renamed to <seq>.seg.corrupt instead, out of the spool but kept for
 * inspection. */
static void reclaim(struct kumo_spool *sp)
{
	char name[32], quarantine[48];

	while (sp->nsegs > (sp->has_cur ? 1u : 0u)) {
		struct seg *s = &sp->segs[0];
		int rc;
		if (s->pinned || s->live > 0 || seg_busy(sp, s->seq))
			break;
		seg_name(s->seq, name);
		if (s->corrupt) {
			snprintf(quarantine, sizeof(quarantine), "%s.corrupt", name);
			rc = renameat(sp->dirfd, name, sp->dirfd, quarantine);
		} else {
			rc = unlinkat(sp->dirfd, name, 0);
		}
		if (rc < 0 && errno != ENOENT) {
			log_msg(sp, "spool %s: cannot remove segment %s: %s", sp->dir, name,
				strerror(errno));
			break;
		}
		if (s->fd >= 0)
			close(s->fd);
		memmove(&sp->segs[0], &sp->segs[1], (sp->nsegs - 1) * sizeof(*s));
		sp->nsegs--;
		sp->st.unlinked_segments++;
		if (fsync_dir(sp->dirfd) < 0)
			log_msg(sp, "spool %s: directory fsync after unlink failed: %s", sp->dir,
				strerror(errno));
	}
}

/* ---- open / close ---- */

static int cmp_seg(const void *a, const void *b)
{
	const struct seg *x = a, *y = b;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int list_segments(struct kumo_spool *sp)
{
	int fd = dup(sp->dirfd);
	uint32_t max = 0, seq;
	struct dirent *de;
	DIR *d;
	int rc = 0;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (d == NULL) {
		rc = -errno;
		close(fd);
		return rc;
	}
	while ((de = readdir(d)) != NULL) {
		if (!seg_parse_name(de->d_name, &seq))
			continue;
		rc = seg_reserve(sp);
		if (rc < 0)
			goto out_close;
		sp->segs[sp->nsegs++] = (struct seg){.seq = seq, .fd = -1, .pinned = true};
		if (seq > max)
			max = seq;
	}
	if (sp->nsegs > 1)
		qsort(sp->segs, sp->nsegs, sizeof(*sp->segs), cmp_seg);
	sp->next_seq = max + 1; /* 0 after UINT32_MAX: seg_create refuses */
out_close:
	closedir(d);
	return rc;
}

int kumo_spool_open(const struct kumo_spool_cfg *cfg, struct kumo_spool **out)
{
	struct kumo_spool *sp;
	int rc;

	*out = NULL;
	if (cfg == NULL || cfg->path == NULL || cfg->path[0] == 0)
		return -EINVAL;
	sp = calloc(1, sizeof(*sp));
	if (sp == NULL)
		return -ENOMEM;
	sp->dirfd = -1;
	sp->pend = sp->flight = -1;
	sp->shard = cfg->shard;
	sp->segment_bytes = cfg->segment_bytes ? cfg->segment_bytes : DEFAULT_SEGMENT_BYTES;
	sp->batch_bytes = cfg->batch_bytes ? cfg->batch_bytes : DEFAULT_BATCH_BYTES;
	if (sp->batch_bytes > BATCH_MAX)
		sp->batch_bytes = BATCH_MAX;
	sp->log = cfg->log;
	sp->log_arg = cfg->log_arg;

	size_t n = strlen(cfg->path) + 8;
	sp->dir = malloc(n);
	if (sp->dir == NULL) {
		rc = -ENOMEM;
		goto out_free;
	}
	snprintf(sp->dir, n, "%s/%u", cfg->path, (unsigned)cfg->shard);
	rc = make_dirs(sp->dir);
	if (rc < 0)
		goto out_free;
	sp->dirfd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0) {
		rc = -errno;
		goto out_free;
	}
	if (flock(sp->dirfd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto out_free;
	}
	rc = list_segments(sp);
	if (rc < 0)
		goto out_free;
	sp->st.segments = sp->nsegs;
	*out = sp;
	return 0;

out_free:
	kumo_spool_close(sp);
	return rc;
}

void kumo_spool_close(struct kumo_spool *sp)
{
	if (sp == NULL)
		return;
	for (size_t i = 0; i < sp->nsegs; i++)
		if (sp->segs[i].fd >= 0)
			close(sp->segs[i].fd);
	for (int i = 0; i < NBATCH; i++) {
		free(sp->b[i].buf);
		free(sp->b[i].recs);
	}
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	free(sp->segs);
	free(sp->dir);
	free(sp);
}

/* ---- appending records ---- */

static int batch_free_slot(const struct kumo_spool *sp)
{
	for (int i = 0; i < NBATCH; i++)
		if (sp->b[i].state == BATCH_FREE)
			return i;
	return -1;
}

/* The pending batch, started if needed (rotating first when the current segment is
 * full or unusable), with room for one more record of rec_len bytes. */
static int batch_for(struct kumo_spool *sp, size_t rec_len, struct batch **out)
{
	struct batch *b;
	int rc;

	if (sp->pend < 0) {
		int i = batch_free_slot(sp);
		if (i < 0)
			return -EAGAIN; /* only while finishing two failed batches */
		struct seg *cur = seg_cur(sp);
		if (cur == NULL || cur->sealed || cur->size >= sp->segment_bytes) {
			rc = seg_create(sp);
			if (rc < 0)
				return rc;
			cur = seg_cur(sp);
		}
		b = &sp->b[i];
		b->state = BATCH_PENDING;
		b->seq = cur->seq;
		b->base = cur->size;
		b->len = 0;
		b->nrec = 0;
		sp->pend = i;
	}
	b = &sp->b[sp->pend];

	size_t need = (size_t)align8(rec_len);
	if (need > BATCH_MAX - b->len)
		return -ENOBUFS;
	if (b->len + need > b->cap) {
		size_t cap = b->cap ? b->cap : sp->batch_bytes;
		while (cap < b->len + need)
			cap *= 2;
		uint8_t *nb = realloc(b->buf, cap);
		if (nb == NULL)
			return -ENOMEM;
		b->buf = nb;
		b->cap = cap;
	}
	if (b->nrec == b->caprec) {
		size_t cap = b->caprec ? b->caprec * 2 : 256;
		struct brec *nr = realloc(b->recs, cap * sizeof(*nr));
		if (nr == NULL)
			return -ENOMEM;
		b->recs = nr;
		b->caprec = cap;
	}
	*out = b;
	return 0;
}

static void rec_header(uint8_t *r, uint8_t type, const struct kumo_id *id, uint32_t len)
{
	put_le32(r, REC_MAGIC);
	put_le32(r + 4, 0);
	r[8] = type;
	r[9] = 0;
	put_le16(r + 10, 0);
	put_le32(r + 12, len);
	if (id)
		memcpy(r + 16, id->b, 16);
	else
		memset(r + 16, 0, 16);
}

/* Seals the record at r (payload written): checksum and padding. Returns its
 * padded size. */
static size_t rec_seal(uint8_t *r, uint32_t len)
{
	size_t total = REC_HDR + (size_t)len;
	size_t padded = (size_t)align8(total);
	put_le32(r + 4, kumo_crc32c(0, r + 8, total - 8));
	memset(r + total, 0, padded - total);
	return padded;
}

/* Queues a record; the payload is {prefix (0 or 4 bytes), a, iov...}. */
static int append(struct kumo_spool *sp, uint8_t type, const struct kumo_id *id,
		  const uint8_t *prefix, size_t nprefix, const uint8_t *a, size_t na,
		  const struct iovec *iov, int niov, struct brec rec, struct kumo_spool_loc *loc)
{
	struct batch *b;
	uint64_t plen = nprefix + (uint64_t)na;
	int rc;

	if (niov < 0 || (niov > 0 && iov == NULL) || (na > 0 && a == NULL))
		return -EINVAL;
	for (int i = 0; i < niov; i++) {
		if (iov[i].iov_len > 0 && iov[i].iov_base == NULL)
			return -EINVAL;
		plen += iov[i].iov_len;
	}
	if (plen > UINT32_MAX - REC_HDR - REC_ALIGN)
		return -EMSGSIZE;
	rc = batch_for(sp, REC_HDR + (size_t)plen, &b);
	if (rc < 0)
		return rc;

	uint8_t *r = b->buf + b->len;
	uint8_t *p = r + REC_HDR;
	rec_header(r, type, id, (uint32_t)plen);
	if (nprefix > 0)
		memcpy(p, prefix, nprefix);
	p += nprefix;
	if (na > 0)
		memcpy(p, a, na);
	p += na;
	for (int i = 0; i < niov; i++) {
		if (iov[i].iov_len > 0)
			memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	if (loc) {
		loc->segment = b->seq;
		loc->offset = b->base + b->len;
		loc->length = (uint32_t)(REC_HDR + plen);
	}
	size_t padded = rec_seal(r, (uint32_t)plen);
	b->len += padded;
	struct seg *cur = seg_cur(sp); /* the pending batch is always in the current one */
	if (cur && cur->seq == b->seq)
		cur->size += padded;
	if (type == REC_MESSAGE)
		rec.seg = b->seq;
	rec.type = type;
	b->recs[b->nrec++] = rec;
	sp->started = true;
	return 0;
}

static int put_message(struct kumo_spool *sp, const struct kumo_id *id,
		       const struct kumo_spool_loc *old, const uint8_t *env, size_t env_len,
		       const struct iovec *data, int ndata, void *cookie,
		       struct kumo_spool_loc *loc)
{
	uint8_t prefix[4];
	struct brec rec = {.cookie = cookie};

	if (sp == NULL || id == NULL || loc == NULL || env_len > UINT32_MAX)
		return -EINVAL;
	if (old) {
		rec.relocate = true;
		rec.old_seg = old->segment;
	}
	put_le32(prefix, (uint32_t)env_len);
	return append(sp, REC_MESSAGE, id, prefix, 4, env, env_len, data, ndata, rec, loc);
}

int kumo_spool_put(struct kumo_spool *sp, const struct kumo_id *id, const uint8_t *env,
		   size_t env_len, const struct iovec *data, int ndata, void *cookie,
		   struct kumo_spool_loc *loc)
{
	return put_message(sp, id, NULL, env, env_len, data, ndata, cookie, loc);
}

int kumo_spool_relocate(struct kumo_spool *sp, const struct kumo_id *id,
			const struct kumo_spool_loc *old, const uint8_t *env, size_t env_len,
			const struct iovec *data, int ndata, void *cookie,
			struct kumo_spool_loc *loc)
{
	if (old == NULL)
		return -EINVAL;
	return put_message(sp, id, old, env, env_len, data, ndata, cookie, loc);
}

int kumo_spool_update(struct kumo_spool *sp, const struct kumo_id *id,
		      const struct kumo_spool_loc *loc, const uint8_t *env, size_t env_len,
		      void *cookie)
{
	struct brec rec = {.cookie = cookie};

	if (sp == NULL || id == NULL || loc == NULL || env_len > UINT32_MAX)
		return -EINVAL;
	rec.seg = loc->segment;
	return append(sp, REC_UPDATE, id, NULL, 0, env, env_len, NULL, 0, rec, NULL);
}

int kumo_spool_delete(struct kumo_spool *sp, const struct kumo_id *id,
		      const struct kumo_spool_loc *loc, void *cookie)
{
	struct brec rec = {.cookie = cookie};

	if (sp == NULL || id == NULL || loc == NULL)
		return -EINVAL;
	rec.seg = loc->segment;
	return append(sp, REC_DELETE, id, NULL, 0, NULL, 0, NULL, 0, rec, NULL);
}

/* ---- group commit ---- */

int kumo_spool_submit(struct kumo_spool *sp, struct io_uring *ring, uint64_t ud_write,
		      uint64_t ud_sync)
{
	struct io_uring_sqe *w, *s;

	if (sp->flight >= 0 || sp->pend < 0 || sp->b[sp->pend].nrec == 0)
		return 0;
	/* keep a free batch for the records queued while this one is out */
	int nfree = 0;
	for (int i = 0; i < NBATCH; i++)
		nfree += sp->b[i].state == BATCH_FREE;
	if (nfree == 0)
		return 0;
	if (io_uring_sq_space_left(ring) < 2)
		return -EBUSY;

	struct batch *b = &sp->b[sp->pend];
	struct seg *seg = seg_find(sp, b->seq);
	int fd = seg ? seg_open_fd(sp, seg) : -ENOENT;
	if (fd < 0)
		return fd;
	w = io_uring_get_sqe(ring);
	s = io_uring_get_sqe(ring);
	io_uring_prep_write(w, fd, b->buf, (unsigned)b->len, b->base);
	w->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(w, ud_write);
	io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(s, ud_sync);

	b->state = BATCH_FLIGHT;
	b->got_write = b->got_sync = false;
	b->write_res = b->sync_res = 0;
	sp->flight = sp->pend;
	sp->pend = -1;
	return 1;
}

static void batch_reset(struct kumo_spool *sp, struct batch *b)
{
	b->state = BATCH_FREE;
	b->len = 0;
	b->nrec = 0;
	/* give back what a burst grew, keep the usual size */
	if (b->cap > 4 * sp->batch_bytes) {
		free(b->buf);
		b->buf = NULL;
		b->cap = 0;
	}
	if (b->caprec > 65536) {
		free(b->recs);
		b->recs = NULL;
		b->caprec = 0;
	}
}

static void apply_durable(struct kumo_spool *sp, const struct batch *b)
{
	struct seg *home = seg_find(sp, b->seq);

	for (size_t i = 0; i < b->nrec; i++) {
		const struct brec *r = &b->recs[i];
		struct seg *t = NULL;
		if (r->type == REC_MESSAGE) {
			if (home) {
				home->live++;
				home->total++;
			}
			sp->st.live_messages++;
			if (!r->relocate)
				continue;
			t = seg_find(sp, r->old_seg);
		} else if (r->type == REC_DELETE) {
			t = seg_find(sp, r->seg);
		} else {
			continue;
		}
		/* unknown (pinned) or already zero: nothing reliable to subtract */
		if (t && !t->pinned && t->live > 0) {
			t->live--;
			if (sp->st.live_messages > 0)
				sp->st.live_messages--;
		}
	}
	sp->st.bytes_written += b->len;
	sp->st.batches++;
	sp->st.records += b->nrec;
}

/* Overwrites the start of a failed batch with a pad record spanning it, so recovery
 * skips the batch's bytes and finds whatever follows. */
static int write_pad(int fd, uint64_t off, size_t len)
{
	uint8_t r[REC_HDR];

	rec_header(r, REC_PAD, NULL, (uint32_t)(len - REC_HDR));
	put_le32(r + 4, kumo_crc32c(0, r + 8, REC_HDR - 8));
	return pwrite_full(fd, r, REC_HDR, off);
}

/* Removes a failed batch's bytes from its segment. Returns the index of the pending
 * batch if it had to be failed too (it sits behind the failed bytes and they could not
 * be covered), else -1. Blocking calls, on this rare path only. */
static int undo_failed(struct kumo_spool *sp, struct batch *b)
{
	struct seg *s = seg_find(sp, b->seq);
	struct batch *p = sp->pend >= 0 ? &sp->b[sp->pend] : NULL;
	int rc;

	if (s == NULL || s->fd < 0)
		return -1;
	if (p && p->seq != b->seq)
		p = NULL; /* the pending batch went to a newer segment: not affected */
	bool truncated = ftruncate(s->fd, (off_t)b->base) == 0;
	if (truncated && (p == NULL || p->nrec == 0)) {
		s->size = b->base;
		if (p) /* started but empty: just move it back */
			p->base = b->base;
		if (fdatasync(s->fd) < 0)
			log_msg(sp, "spool %s: fdatasync after truncating segment %u: %s", sp->dir,
				s->seq, strerror(errno));
		return -1;
	}
	/* Records queued behind the failed batch already have their offsets: cover the
	 * failed bytes with a pad record instead of moving them. Same when truncation
	 * failed, so no half-written record is ever read back. */
	rc = write_pad(s->fd, b->base, b->len);
	if (rc == 0 && fdatasync(s->fd) < 0)
		rc = -errno;
	if (rc == 0)
		return -1;
	log_msg(sp, "spool %s: cannot cover failed batch in segment %u at %llu: %s", sp->dir,
		s->seq, (unsigned long long)b->base, strerror(-rc));
	s->sealed = true; /* the next batch starts a new segment */
	if (p == NULL)
		return -1;
	int idx = sp->pend;
	sp->pend = -1;
	if (p->nrec == 0) {
		p->state = BATCH_FREE;
		return -1;
	}
	p->state = BATCH_FINISHING; /* its records sit behind bytes we could not cover */
	return idx;
}

static void finish_batch(struct kumo_spool *sp, int idx, kumo_spool_done_fn fn, void *arg)
{
	struct batch *b = &sp->b[idx];
	int status = 0;
	int dead = -1;

	if (b->write_res < 0)
		status = b->write_res;
	else if ((size_t)b->write_res != b->len)
		status = -ENOSPC;
	else if (b->sync_res < 0)
		status = b->sync_res == -ECANCELED ? -EIO : b->sync_res;

	sp->flight = -1;
	b->state = BATCH_FINISHING;
	if (status == 0) {
		apply_durable(sp, b);
	} else {
		sp->st.failed_batches++;
		dead = undo_failed(sp, b);
	}

	for (size_t i = 0; i < b->nrec; i++)
		if (fn)
			fn(b->recs[i].cookie, status, arg);
	if (dead >= 0) {
		struct batch *d = &sp->b[dead];
		for (size_t i = 0; i < d->nrec; i++)
			if (fn)
				fn(d->recs[i].cookie, status, arg);
		batch_reset(sp, d);
	}
	batch_reset(sp, b);
	if (status == 0)
		reclaim(sp);
}

void kumo_spool_complete(struct kumo_spool *sp, int which, int res, kumo_spool_done_fn fn,
			 void *arg)
{
	if (sp->flight < 0)
		return;
	struct batch *b = &sp->b[sp->flight];
	if (which == 0 && !b->got_write) {
		b->write_res = res;
		b->got_write = true;
	} else if (which == 1 && !b->got_sync) {
		b->sync_res = res;
		b->got_sync = true;
	} else {
		return;
	}
	if (b->got_write && b->got_sync)
		finish_batch(sp, sp->flight, fn, arg);
}

size_t kumo_spool_busy(const struct kumo_spool *sp)
{
	size_t n = 0;
	if (sp->pend >= 0)
		n += sp->b[sp->pend].nrec;
	if (sp->flight >= 0)
		n += sp->b[sp->flight].nrec;
	return n;
}

size_t kumo_spool_pending_bytes(const struct kumo_spool *sp)
{
	return sp->pend >= 0 ? sp->b[sp->pend].len : 0;
}

/* ---- reading ---- */

int kumo_spool_parse(const struct kumo_spool_loc *loc, const uint8_t *buf, const uint8_t **env,
		     size_t *env_len, const uint8_t **data, size_t *data_len)
{
	if (loc->length < REC_HDR + 4)
		return -EBADMSG;
	uint32_t len = get_le32(buf + 12);
	if (get_le32(buf) != REC_MAGIC || buf[8] != REC_MESSAGE || buf[9] != 0 ||
	    get_le16(buf + 10) != 0 || len != loc->length - REC_HDR)
		return -EBADMSG;
	if (get_le32(buf + 4) != kumo_crc32c(0, buf + 8, loc->length - 8))
		return -EBADMSG;
	uint32_t elen = get_le32(buf + REC_HDR);
	if (elen > len - 4)
		return -EBADMSG;
	*env = buf + REC_HDR + 4;
	*env_len = elen;
	*data = *env + elen;
	*data_len = len - 4 - elen;
	return 0;
}

int kumo_spool_fd(struct kumo_spool *sp, uint32_t segment)
{
	struct seg *s = seg_find(sp, segment);
	return s ? seg_open_fd(sp, s) : -ENOENT;
}

int kumo_spool_read(struct kumo_spool *sp, const struct kumo_spool_loc *loc, uint8_t *buf,
		    const uint8_t **env, size_t *env_len, const uint8_t **data, size_t *data_len)
{
	if (loc->length < REC_HDR + 4)
		return -EBADMSG;
	int fd = kumo_spool_fd(sp, loc->segment);
	if (fd < 0)
		return fd == -ENOENT ? -ENOENT : -EIO;
	int rc = pread_full(fd, buf, loc->length, loc->offset);
	if (rc < 0)
		return rc;
	return kumo_spool_parse(loc, buf, env, env_len, data, data_len);
}

int kumo_spool_oldest(const struct kumo_spool *sp, struct kumo_spool_seginfo *info)
{
	if (sp->nsegs == 0 || (sp->has_cur && sp->nsegs == 1))
		return -ENOENT;
	const struct seg *s = &sp->segs[0];
	*info = (struct kumo_spool_seginfo){
	    .segment = s->seq, .bytes = s->size, .live = s->live, .total = s->total};
	return 0;
}

void kumo_spool_stats(const struct kumo_spool *sp, struct kumo_spool_stats *st)
{
	*st = sp->st;
	st->segments = sp->nsegs;
}

/* ---- recovery ---- */

/* One message id found while scanning. */
struct rentry {
	struct kumo_id id;
	struct kumo_spool_loc loc; /* of its latest message record */
	const uint8_t *env;	   /* latest envelope, inside a mapping */
	uint32_t env_len;
	uint32_t segi; /* index of loc.segment in sp->segs */
	bool live;
};

/* Per segment scan result. */
struct rscan {
	const uint8_t *map;
	uint64_t size;
	uint64_t end; /* where a torn tail starts (truncate there) */
	bool torn;
	bool hdr_bad;
};

struct recovery {
	struct kumo_spool *sp;
	struct rentry *ents;
	size_t nents;
	size_t capents;
	uint32_t *slots; /* open addressing: entry index + 1, 0 = empty */
	size_t nslots;	 /* power of two */
};

static uint32_t *slot_for(struct recovery *rv, const struct kumo_id *id)
{
	size_t mask = rv->nslots - 1;
	size_t i = (size_t)kumo_id_hash(id) & mask;
	for (;;) {
		uint32_t e = rv->slots[i];
		if (e == 0 || memcmp(rv->ents[e - 1].id.b, id->b, 16) == 0)
			return &rv->slots[i];
		i = (i + 1) & mask;
	}
}

static struct rentry *lookup(struct recovery *rv, const struct kumo_id *id)
{
	uint32_t e = *slot_for(rv, id);
	return e ? &rv->ents[e - 1] : NULL;
}

static int grow_slots(struct recovery *rv)
{
	size_t n = rv->nslots ? rv->nslots * 2 : 1024;
	uint32_t *old = rv->slots;
	size_t oldn = rv->nslots;

	rv->slots = calloc(n, sizeof(*rv->slots));
	if (rv->slots == NULL) {
		rv->slots = old;
		return -ENOMEM;
	}
	rv->nslots = n;
	for (size_t i = 0; i < oldn; i++)
		if (old[i])
			*slot_for(rv, &rv->ents[old[i] - 1].id) = old[i];
	free(old);
	return 0;
}

static int insert(struct recovery *rv, const struct kumo_id *id, struct rentry **out)
{
	int rc;

	if ((rv->nents + 1) * 2 > rv->nslots && (rc = grow_slots(rv)) < 0)
		return rc;
	uint32_t *slot = slot_for(rv, id);
	if (*slot) {
		*out = &rv->ents[*slot - 1];
		return 0;
	}
	if (rv->nents >= UINT32_MAX - 1)
		return -EOVERFLOW;
	if (rv->nents == rv->capents) {
		size_t cap = rv->capents ? rv->capents * 2 : 1024;
		struct rentry *n = realloc(rv->ents, cap * sizeof(*n));
		if (n == NULL)
			return -ENOMEM;
		rv->ents = n;
		rv->capents = cap;
	}
	struct rentry *e = &rv->ents[rv->nents++];
	memset(e, 0, sizeof(*e));
	e->id = *id;
	*slot = (uint32_t)rv->nents;
	*out = e;
	return 0;
}

/* Whether a well-formed record with a good checksum starts at off; its payload
 * length goes to *plen. */
static bool rec_valid(const uint8_t *m, uint64_t size, uint64_t off, uint32_t *plen)
{
	if (size - off < REC_HDR)
		return false;
	const uint8_t *r = m + off;
	uint32_t len = get_le32(r + 12);
	uint8_t type = r[8];
	if (get_le32(r) != REC_MAGIC || r[9] != 0 || get_le16(r + 10) != 0)
		return false;
	if (type < REC_MESSAGE || type > REC_PAD || (uint64_t)len > size - off - REC_HDR)
		return false;
	if (type == REC_MESSAGE && (len < 4 || get_le32(r + REC_HDR) > len - 4))
		return false;
	if (type == REC_DELETE && len != 0)
		return false;
	size_t covered = type == REC_PAD ? REC_HDR - 8 : REC_HDR - 8 + (size_t)len;
	if (get_le32(r + 4) != kumo_crc32c(0, r + 8, covered))
		return false;
	*plen = len;
	return true;
}

/* After a bad record at off: is there any valid record later in the segment? */
static bool valid_after(const uint8_t *m, uint64_t size, uint64_t off)
{
	uint32_t len;
	for (uint64_t p = off + REC_ALIGN; p + REC_HDR <= size; p += REC_ALIGN)
		if (get_le32(m + p) == REC_MAGIC && rec_valid(m, size, p, &len))
			return true;
	return false;
}

static int apply_record(struct recovery *rv, size_t segi, const uint8_t *r, uint64_t off,
			uint32_t len)
{
	struct kumo_id id;
	struct rentry *e;
	int rc;

	memcpy(id.b, r + 16, 16);
	switch (r[8]) {
	case REC_MESSAGE:
		rc = insert(rv, &id, &e);
		if (rc < 0)
			return rc;
		e->live = true;
		e->loc.segment = rv->sp->segs[segi].seq;
		e->loc.offset = off;
		e->loc.length = REC_HDR + len;
		e->segi = (uint32_t)segi;
		e->env = r + REC_HDR + 4;
		e->env_len = get_le32(r + REC_HDR);
		rv->sp->segs[segi].total++;
		break;
	case REC_UPDATE:
		e = lookup(rv, &id);
		if (e && e->live) {
			e->env = r + REC_HDR;
			e->env_len = len;
		}
		break;
	case REC_DELETE:
		e = lookup(rv, &id);
		if (e)
			e->live = false;
		break;
	default: /* pad */
		break;
	}
	return 0;
}

static int scan_segment(struct recovery *rv, size_t segi, struct rscan *sc)
{
	struct kumo_spool *sp = rv->sp;
	struct seg *s = &sp->segs[segi];
	const uint8_t *m = sc->map;
	uint64_t off = SEG_HDR;
	uint32_t len;
	int rc;

	if (sc->size < SEG_HDR || !seg_header_ok(m, sp->shard, s->seq)) {
		sc->hdr_bad = true;
		return 0;
	}
	while (off < sc->size) {
		if (rec_valid(m, sc->size, off, &len)) {
			rc = apply_record(rv, segi, m + off, off, len);
			if (rc < 0)
				return rc;
			off += align8(REC_HDR + (uint64_t)len);
			continue;
		}
		/* A bad record whose framing still holds, followed by a good record: a
		 * damaged record, not a torn write. Drop it alone. */
		uint64_t next = 0;
		if (sc->size - off >= REC_HDR && get_le32(m + off) == REC_MAGIC &&
		    get_le32(m + off + 12) <= sc->size - off - REC_HDR)
			next = off + align8(REC_HDR + (uint64_t)get_le32(m + off + 12));
		if (next > off && next < sc->size && rec_valid(m, sc->size, next, &len)) {
			sp->st.corrupt_records++;
			s->corrupt = true;
			log_msg(sp, "spool %s: segment %u: bad record at %llu dropped", sp->dir,
				s->seq, (unsigned long long)off);
			/* (the segment is kept as .corrupt once reclaimed) */
			off = next;
			continue;
		}
		if (valid_after(m, sc->size, off)) {
			sp->st.corrupt_segments++;
			s->corrupt = true;
			log_msg(sp,
				"spool %s: segment %u: corrupt at %llu, rest of segment skipped "
				"(file kept as .corrupt once reclaimed)",
				sp->dir, s->seq, (unsigned long long)off);
		} else {
			sc->torn = true;
			sc->end = off;
		}
		break;
	}
	return 0;
}

static int map_segment(struct kumo_spool *sp, struct seg *s, struct rscan *sc)
{
	struct stat st;
	int fd = seg_open_fd(sp, s);

	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0)
		return -errno;
	sc->size = (uint64_t)st.st_size;
	s->size = sc->size;
	if (sc->size == 0)
		return 0;
	void *m = mmap(NULL, (size_t)sc->size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return -errno;
	madvise(m, (size_t)sc->size, MADV_SEQUENTIAL);
	madvise(m, (size_t)sc->size, MADV_WILLNEED);
	sc->map = m;
	return 0;
}

/* Torn tails are cut off and headerless stubs (a crash while creating a segment)
 * removed, once nothing points into the mappings any more. */
static void fix_tails(struct kumo_spool *sp, struct rscan *scans)
{
	char name[32];
	size_t w = 0;

	for (size_t i = 0; i < sp->nsegs; i++) {
		struct seg *s = &sp->segs[i];
		struct rscan *sc = &scans[i];
		if (sc->torn) {
			sp->st.torn_tails++;
			log_msg(sp,
				"spool %s: segment %u: torn tail at %llu truncated (%llu bytes)",
				sp->dir, s->seq, (unsigned long long)sc->end,
				(unsigned long long)(sc->size - sc->end));
			if (ftruncate(s->fd, (off_t)sc->end) < 0 || fdatasync(s->fd) < 0)
				log_msg(sp, "spool %s: segment %u: truncate failed: %s", sp->dir,
					s->seq, strerror(errno));
			else
				s->size = sc->end;
		}
		if (sc->hdr_bad && sc->size <= SEG_HDR && s->live == 0) {
			seg_name(s->seq, name);
			log_msg(sp, "spool %s: segment %u: incomplete header, removed", sp->dir,
				s->seq);
			if (unlinkat(sp->dirfd, name, 0) == 0 || errno == ENOENT) {
				close(s->fd);
				fsync_dir(sp->dirfd);
				continue;
			}
		} else if (sc->hdr_bad) {
			sp->st.corrupt_segments++;
			s->corrupt = true;
			log_msg(sp,
				"spool %s: segment %u: bad header, segment skipped (file kept as "
				".corrupt)",
				sp->dir, s->seq);
		}
		sp->segs[w++] = *s;
	}
	sp->nsegs = w;
}

long kumo_spool_recover(struct kumo_spool *sp, kumo_spool_recover_fn fn, void *arg)
{
	struct recovery rv = {.sp = sp};
	struct rscan *scans;
	long count = 0;
	int rc = 0;

	if (sp->started || sp->recovered)
		return -EINVAL;
	scans = calloc(sp->nsegs ? sp->nsegs : 1, sizeof(*scans));
	if (scans == NULL)
		return -ENOMEM;
	rc = grow_slots(&rv);
	if (rc < 0)
		goto out_unmap;

	for (size_t i = 0; i < sp->nsegs; i++) {
		sp->segs[i].live = sp->segs[i].total = 0;
		sp->segs[i].corrupt = false;
		rc = map_segment(sp, &sp->segs[i], &scans[i]);
		if (rc < 0)
			goto out_unmap;
		rc = scan_segment(&rv, i, &scans[i]);
		if (rc < 0)
			goto out_unmap;
	}
	for (size_t i = 0; i < rv.nents; i++)
		if (rv.ents[i].live)
			sp->segs[rv.ents[i].segi].live++;
	for (size_t i = 0; i < rv.nents; i++) {
		struct rentry *e = &rv.ents[i];
		if (!e->live)
			continue;
		count++;
		if (fn)
			fn(&e->id, e->env, e->env_len, &e->loc, arg);
	}

out_unmap:
	for (size_t i = 0; i < sp->nsegs; i++)
		if (scans[i].map)
			munmap((void *)scans[i].map, (size_t)scans[i].size);
	if (rc == 0) {
		fix_tails(sp, scans);
		for (size_t i = 0; i < sp->nsegs; i++)
			sp->segs[i].pinned = false;
		sp->recovered = true;
		sp->st.live_messages = (uint64_t)count;
		reclaim(sp);
	}
	free(scans);
	free(rv.slots);
	free(rv.ents);
	return rc < 0 ? rc : count;
}
