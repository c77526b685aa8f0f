/* The durable spool: one set of append-only segment files per loop, records with
 * checksums, group commit (one write plus one fdatasync per batch, linked in io_uring),
 * oldest-first reclamation, and recovery that stops at a torn tail. */
#ifndef KUMO_ENGINE_SPOOL_H
#define KUMO_ENGINE_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/id.h"

struct io_uring;
struct kumo_spool;

struct kumo_spool_cfg {
	const char *path;     /* spool directory; created if missing; copied */
	uint16_t shard;	      /* this loop's index: files are <path>/<shard>/<seq>.seg */
	size_t segment_bytes; /* rotate after this many bytes: default 64 MiB */
	size_t batch_bytes;   /* a batch is submitted once this full: default 4 MiB */
	/* Optional: told about torn tails, corrupt records and failed clean-ups, one line
	 * each (msg valid during the call). NULL: silent (the counters still count). */
	void (*log)(void *log_arg, const char *msg);
	void *log_arg;
};

/* Rotation happens when a batch starts: a new batch goes to a fresh segment once the
 * current one holds segment_bytes or more, so a segment may exceed segment_bytes by the
 * one batch that started below it. A batch never spans two segments. batch_bytes is
 * the size each batch buffer starts with; while a batch is in flight the pending one
 * keeps growing past it (see kumo_spool_pending_bytes, for back-pressure). */

/* Where a message record lives; kept by the queue, passed back to read and delete. */
struct kumo_spool_loc {
	uint32_t segment; /* segment sequence number */
	uint32_t length;  /* bytes of the whole record */
	uint64_t offset;  /* of the record in the segment */
};

/* Completion of a put/delete/update: called once the batch holding it is durable
 * (status 0) or failed (-errno: -ENOSPC, -EIO...). A failed put left no readable
 * message behind. A short write is reported as -ENOSPC, its usual cause. The callback
 * may queue new records but must not close the spool. */
typedef void (*kumo_spool_done_fn)(void *cookie, int status, void *arg);

/* Creates the directories, takes an exclusive lock on the shard directory (-EBUSY if
 * another spool has it open) and lists the existing segments. Until kumo_spool_recover
 * runs, those segments count as fully live and are never unlinked. */
int kumo_spool_open(const struct kumo_spool_cfg *cfg, struct kumo_spool **out);
/* Frees the spool; callers flush first (pending records are dropped unannounced). */
void kumo_spool_close(struct kumo_spool *sp);

/* Recovery, at start before any put: scans every segment of this shard in order,
 * verifies checksums, ignores a torn tail (truncating it away), applies deletes and
 * updates, and calls fn once per live message with its envelope bytes (valid during the
 * call) and location. Blocking I/O: it runs before the loop does. Returns the count of
 * live messages or -errno (-EINVAL if records were queued or it already ran). Messages
 * come in the order their first record was written (segment order). Afterwards the
 * segments without live messages are unlinked (oldest first) and new records go to a
 * new segment. A corrupt record inside a segment is dropped; when that is not possible
 * the rest of that segment is skipped (see docs/spool.md). */
typedef void (*kumo_spool_recover_fn)(const struct kumo_id *id, const uint8_t *env, size_t env_len,
				      const struct kumo_spool_loc *loc, void *arg);
long kumo_spool_recover(struct kumo_spool *sp, kumo_spool_recover_fn fn, void *arg);

/* Appends a message record {envelope, data} to the pending batch, copying the bytes;
 * data is given as iovecs (e.g. a Received header and the body). *loc is filled at once.
 * The cookie comes back through the done callback. Returns 0 or -errno: -EINVAL,
 * -EMSGSIZE (record over 4 GiB), -ENOBUFS (the pending batch would pass 1 GiB: apply
 * back-pressure), -ENOMEM, or the error of creating a segment file (-ENOSPC...). */
int kumo_spool_put(struct kumo_spool *sp, const struct kumo_id *id, const uint8_t *env,
		   size_t env_len, const struct iovec *data, int ndata, void *cookie,
		   struct kumo_spool_loc *loc);
/* Appends an updated envelope for a live message (attempts, due time, recipient
 * states); recovery returns the latest one with the original data. Update and delete
 * only messages whose put completed with status 0; loc is the message's location. */
int kumo_spool_update(struct kumo_spool *sp, const struct kumo_id *id,
		      const struct kumo_spool_loc *loc, const uint8_t *env, size_t env_len,
		      void *cookie);
/* Appends a tombstone; the message's space is reclaimed once its segment is all dead. */
int kumo_spool_delete(struct kumo_spool *sp, const struct kumo_id *id,
		      const struct kumo_spool_loc *loc, void *cookie);

/* Copies a live message forward (compaction): a put of the same id with the given,
 * normally latest, envelope and the original data, and once it is durable the old copy
 * at *old no longer counts as live, so its segment can be reclaimed. *loc is the new
 * location, to be used from now on (also for later updates and the delete). Recovery
 * takes the latest message record of an id. */
int kumo_spool_relocate(struct kumo_spool *sp, const struct kumo_id *id,
			const struct kumo_spool_loc *old, const uint8_t *env, size_t env_len,
			const struct iovec *data, int ndata, void *cookie,
			struct kumo_spool_loc *loc);

/* The oldest segment, if it is not the one being appended to: the candidate for
 * compaction when few of its messages are live. Returns 0, or -ENOENT. */
struct kumo_spool_seginfo {
	uint32_t segment; /* sequence number */
	uint64_t bytes;	  /* file size */
	uint64_t live;	  /* live message records in it */
	uint64_t total;	  /* message records written to it (since recovery) */
};
int kumo_spool_oldest(const struct kumo_spool *sp, struct kumo_spool_seginfo *info);

/* Group commit through the caller's ring. When no batch is in flight and records are
 * pending, queues a write of the batch linked to an fdatasync, tagged with the two
 * user_data values, and returns 1; else 0. The caller submits the ring. Returns -EBUSY
 * when the submission queue lacks two free entries. */
int kumo_spool_submit(struct kumo_spool *sp, struct io_uring *ring, uint64_t ud_write,
		      uint64_t ud_sync);
/* The loop hands the completions of those two SQEs back (which = 0 write, 1 sync).
 * When the batch is finished, every record's done callback runs. */
void kumo_spool_complete(struct kumo_spool *sp, int which, int res, kumo_spool_done_fn fn,
			 void *arg);
/* Pending or in-flight records (for graceful shutdown: run the loop until 0). */
size_t kumo_spool_busy(const struct kumo_spool *sp);
/* Bytes queued but not yet submitted. */
size_t kumo_spool_pending_bytes(const struct kumo_spool *sp);

/* Reads a message record back (synchronous pread; used by recovery checks, tests and
 * until delivery reads through the ring). Fills env and data views into buf, which
 * must hold loc->length bytes. Returns 0, -EIO or -EBADMSG (checksum). */
int kumo_spool_read(struct kumo_spool *sp, const struct kumo_spool_loc *loc, uint8_t *buf,
		    const uint8_t **env, size_t *env_len, const uint8_t **data, size_t *data_len);
/* The same check on a record read by other means (e.g. a read through the ring from
 * kumo_spool_fd): buf holds the loc->length bytes at loc. Views point into buf. */
int kumo_spool_parse(const struct kumo_spool_loc *loc, const uint8_t *buf, const uint8_t **env,
		     size_t *env_len, const uint8_t **data, size_t *data_len);
/* A descriptor of the segment file for positional reads, owned by the spool and valid
 * until the segment is reclaimed (it has live messages while anyone reads it).
 * Opened on first use. Returns the fd, -ENOENT (no such segment) or -errno. */
int kumo_spool_fd(struct kumo_spool *sp, uint32_t segment);

/* Counters for logs and metrics. */
struct kumo_spool_stats {
	uint64_t live_messages;
	uint64_t segments;
	uint64_t bytes_written;
	uint64_t batches;
	uint64_t records;
	uint64_t failed_batches;    /* batches whose write or sync failed */
	uint64_t torn_tails;	    /* recovery: segments truncated at a torn tail */
	uint64_t corrupt_records;   /* recovery: bad records dropped inside a segment */
	uint64_t corrupt_segments;  /* recovery: segments whose rest had to be skipped */
	uint64_t unlinked_segments; /* segments reclaimed */
};
void kumo_spool_stats(const struct kumo_spool *sp, struct kumo_spool_stats *st);

#endif
