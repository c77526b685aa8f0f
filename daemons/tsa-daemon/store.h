/* tsa-daemon: the state store. Actions in force are rows of one SQLite table, written in
 * batches (one transaction and one sync each) by a writer thread that signals an eventfd,
 * so that the event loop never waits for the disk. */
#ifndef TSA_STORE_H
#define TSA_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "action.h"

struct tsa_store;

/* Opens (creating when needed) the database at path, creates the table, and deletes rows
 * that expired by now_ms. Returns 0, or -EIO / -ENOMEM with err saying why. */
int tsa_store_open(const char *path, int64_t now_ms, struct tsa_store **out, char *err,
		   size_t errcap);

/* Calls fn for every action that has not expired by now_ms (the action is valid during the
 * call). Stops at the first non-zero return of fn and returns it; -EIO on a read error. */
int tsa_store_load(struct tsa_store *s, int64_t now_ms,
		   int (*fn)(void *arg, const struct tsa_action *a), void *arg);

/* Starts the writer thread; notify_fd (an eventfd, or -1) gets a write after each batch.
 * Before this call, put() and prune() write synchronously. Returns 0 or -errno. */
int tsa_store_start(struct tsa_store *s, int notify_fd);

/* Queues an insert-or-replace of a (copied) / a deletion of the rows expired by now_ms.
 * Returns the write's sequence number (> 0), or 0 when out of memory. */
uint64_t tsa_store_put(struct tsa_store *s, const struct tsa_action *a);
uint64_t tsa_store_prune(struct tsa_store *s, int64_t now_ms);

/* The highest sequence number whose batch has finished (committed or failed). */
uint64_t tsa_store_done(const struct tsa_store *s);

/* Whether a batch has failed since the last call; msg gets SQLite's message. */
bool tsa_store_take_failure(struct tsa_store *s, char *msg, size_t cap);

/* Counters for /metrics. */
void tsa_store_stats(const struct tsa_store *s, uint64_t *batches, uint64_t *writes,
		     uint64_t *failures);

/* Writes what is queued, stops the thread and closes the database. NULL is a no-op. */
void tsa_store_close(struct tsa_store *s);

#endif
