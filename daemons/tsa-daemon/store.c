/* tsa-daemon: SQLite state store with a batching writer thread; see store.h. The table
 * has one row per action in force, keyed by kind, rule hash and target. */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCHEMA                                                                                     \
	"CREATE TABLE IF NOT EXISTS tsa_actions ("                                                 \
	" kind TEXT NOT NULL, rule_hash TEXT NOT NULL, target TEXT NOT NULL,"                      \
	" site TEXT, source TEXT, domain TEXT, tenant TEXT, campaign TEXT,"                        \
	" name TEXT, value TEXT, value_is_string INTEGER NOT NULL DEFAULT 0,"                      \
	" mx_rollup INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',"                  \
	" created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"                               \
	" PRIMARY KEY (kind, rule_hash, target)) WITHOUT ROWID;"                                   \
	"CREATE INDEX IF NOT EXISTS tsa_actions_expires ON tsa_actions (expires_ms);"

#define UPSERT                                                                                     \
	"INSERT INTO tsa_actions (kind, rule_hash, target, site, source, domain, tenant,"          \
	" campaign, name, value, value_is_string, mx_rollup, reason, created_ms, expires_ms)"      \
	" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"               \
	" ON CONFLICT (kind, rule_hash, target) DO UPDATE SET reason = excluded.reason,"           \
	" value = excluded.value, expires_ms = max(expires_ms, excluded.expires_ms)"

struct op {
	struct op *next;
	uint64_t seq;
	bool prune;
	int64_t now_ms;	     /* prune: rows with expires_ms <= now_ms go */
	struct tsa_action a; /* put: an owned copy */
};

struct tsa_store {
	sqlite3 *db;
	sqlite3_stmt *upsert, *prune;
	pthread_t thread;
	bool started;
	int notify_fd;
	pthread_mutex_t lock; /* guards the fields below */
	pthread_cond_t wake;
	struct op *head, **tail;
	uint64_t next_seq;
	bool stop;
	bool failed;
	char failure[256];
	_Atomic uint64_t done;
	_Atomic uint64_t batches, writes, failures;
};

static int prepare(struct tsa_store *s, char *err, size_t cap)
{
	char *msg = NULL;
	if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" SCHEMA, NULL,
			 NULL, &msg) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, UPSERT, -1, &s->upsert, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "DELETE FROM tsa_actions WHERE expires_ms <= ?1", -1,
			       &s->prune, NULL) != SQLITE_OK) {
		if (cap)
			snprintf(err, cap, "%s", msg ? msg : sqlite3_errmsg(s->db));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

int tsa_store_open(const char *path, int64_t now_ms, struct tsa_store **out, char *err,
		   size_t errcap)
{
	struct tsa_store *s = calloc(1, sizeof(*s));
	char msg[300];
	*out = NULL;
	if (!s)
		return -ENOMEM;
	s->tail = &s->head;
	s->notify_fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		if (errcap)
			snprintf(err, errcap, "%s: %s", path,
				 s->db ? sqlite3_errmsg(s->db) : "cannot open");
		tsa_store_close(s);
		return -EIO;
	}
	sqlite3_busy_timeout(s->db, 5000);
	if (prepare(s, msg, sizeof(msg)) < 0) {
		if (errcap)
			snprintf(err, errcap, "%s: %s", path, msg);
		tsa_store_close(s);
		return -EIO;
	}
	sqlite3_bind_int64(s->prune, 1, now_ms);
	int rc = sqlite3_step(s->prune);
	sqlite3_reset(s->prune);
	if (rc != SQLITE_DONE) {
		if (errcap)
			snprintf(err, errcap, "%s: %s", path, sqlite3_errmsg(s->db));
		tsa_store_close(s);
		return -EIO;
	}
	*out = s;
	return 0;
}

static const char *col(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

int tsa_store_load(struct tsa_store *s, int64_t now_ms,
		   int (*fn)(void *arg, const struct tsa_action *a), void *arg)
{
	sqlite3_stmt *st;
	int rc = 0;
	if (sqlite3_prepare_v2(s->db,
			       "SELECT kind, rule_hash, site, source, domain, tenant, campaign,"
			       " name, value, value_is_string, mx_rollup, reason, created_ms,"
			       " expires_ms FROM tsa_actions WHERE expires_ms > ?1"
			       " ORDER BY expires_ms",
			       -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, now_ms);
	int step;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		int kind = tsa_kind_parse(col(st, 0) ? col(st, 0) : "");
		const char *hash = col(st, 1);
		if (kind < 0 || !hash || strlen(hash) != 32)
			continue; /* a row this version does not know */
		struct tsa_action a = {
		    .kind = (enum tsa_kind)kind,
		    .site = (char *)col(st, 2),
		    .source = (char *)col(st, 3),
		    .domain = (char *)col(st, 4),
		    .tenant = (char *)col(st, 5),
		    .campaign = (char *)col(st, 6),
		    .name = (char *)col(st, 7),
		    .value = (char *)col(st, 8),
		    .value_is_string = sqlite3_column_int(st, 9) != 0,
		    .mx_rollup = sqlite3_column_int(st, 10) != 0,
		    .reason = (char *)col(st, 11),
		    .created_ms = sqlite3_column_int64(st, 12),
		    .expires_ms = sqlite3_column_int64(st, 13),
		};
		memcpy(a.rule_hash, hash, 33);
		if ((rc = fn(arg, &a)) != 0)
			break;
	}
	if (rc == 0 && step != SQLITE_DONE)
		rc = -EIO;
	sqlite3_finalize(st);
	return rc;
}

static int text(sqlite3_stmt *st, int i, const char *v)
{
	return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

static int exec_op(struct tsa_store *s, struct op *o)
{
	sqlite3_stmt *st;
	char target[2048]; /* bound SQLITE_STATIC: must live until the step */
	if (o->prune) {
		st = s->prune;
		sqlite3_bind_int64(st, 1, o->now_ms);
	} else {
		const struct tsa_action *a = &o->a;
		size_t n = tsa_action_target(a, target, sizeof(target));
		st = s->upsert;
		sqlite3_bind_text(st, 1, tsa_kind_name(a->kind), -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, a->rule_hash, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, target, n < sizeof(target) ? (int)n : -1, SQLITE_STATIC);
		text(st, 4, a->site);
		text(st, 5, a->source);
		text(st, 6, a->domain);
		text(st, 7, a->tenant);
		text(st, 8, a->campaign);
		text(st, 9, a->name);
		text(st, 10, a->value);
		sqlite3_bind_int(st, 11, a->value_is_string);
		sqlite3_bind_int(st, 12, a->mx_rollup);
		sqlite3_bind_text(st, 13, a->reason ? a->reason : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 14, a->created_ms);
		sqlite3_bind_int64(st, 15, a->expires_ms);
	}
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static void free_ops(struct op *o)
{
	while (o) {
		struct op *next = o->next;
		tsa_action_clear(&o->a);
		free(o);
		o = next;
	}
}

/* One transaction for the batch; a failed batch is rolled back and reported. */
static void write_batch(struct tsa_store *s, struct op *batch)
{
	uint64_t last = 0, n = 0;
	bool ok = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
	for (struct op *o = batch; o; o = o->next) {
		if (ok && exec_op(s, o) < 0)
			ok = false;
		last = o->seq;
		n++;
	}
	if (ok)
		ok = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
	if (!ok) {
		pthread_mutex_lock(&s->lock);
		s->failed = true;
		snprintf(s->failure, sizeof(s->failure), "%s", sqlite3_errmsg(s->db));
		pthread_mutex_unlock(&s->lock);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		atomic_fetch_add(&s->failures, 1);
	}
	atomic_fetch_add(&s->batches, 1);
	atomic_fetch_add(&s->writes, n);
	atomic_store(&s->done, last);
	free_ops(batch);
}

static void *writer(void *arg)
{
	struct tsa_store *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->lock);
		while (!s->head && !s->stop)
			pthread_cond_wait(&s->wake, &s->lock);
		struct op *batch = s->head;
		s->head = NULL;
		s->tail = &s->head;
		bool stop = s->stop;
		pthread_mutex_unlock(&s->lock);
		if (batch) {
			write_batch(s, batch);
			if (s->notify_fd >= 0) {
				uint64_t one = 1;
				ssize_t w = write(s->notify_fd, &one, sizeof(one));
				(void)w;
			}
		}
		if (stop && !batch)
			return NULL;
	}
}

int tsa_store_start(struct tsa_store *s, int notify_fd)
{
	s->notify_fd = notify_fd;
	int rc = pthread_create(&s->thread, NULL, writer, s);
	if (rc)
		return -rc;
	s->started = true;
	return 0;
}

static uint64_t submit(struct tsa_store *s, struct op *o)
{
	pthread_mutex_lock(&s->lock);
	o->seq = ++s->next_seq;
	uint64_t seq = o->seq;
	if (!s->started) {
		pthread_mutex_unlock(&s->lock);
		write_batch(s, o);
		return seq;
	}
	*s->tail = o;
	s->tail = &o->next;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	return seq;
}

uint64_t tsa_store_put(struct tsa_store *s, const struct tsa_action *a)
{
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return 0;
	if (tsa_action_copy(&o->a, a) < 0) {
		free(o);
		return 0;
	}
	return submit(s, o);
}

uint64_t tsa_store_prune(struct tsa_store *s, int64_t now_ms)
{
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return 0;
	o->prune = true;
	o->now_ms = now_ms;
	return submit(s, o);
}

uint64_t tsa_store_done(const struct tsa_store *s)
{
	return atomic_load(&((struct tsa_store *)s)->done);
}

bool tsa_store_take_failure(struct tsa_store *s, char *msg, size_t cap)
{
	pthread_mutex_lock(&s->lock);
	bool failed = s->failed;
	if (failed && cap)
		snprintf(msg, cap, "%s", s->failure);
	s->failed = false;
	pthread_mutex_unlock(&s->lock);
	return failed;
}

void tsa_store_stats(const struct tsa_store *s, uint64_t *batches, uint64_t *writes,
		     uint64_t *failures)
{
	struct tsa_store *m = (struct tsa_store *)s;
	*batches = atomic_load(&m->batches);
	*writes = atomic_load(&m->writes);
	*failures = atomic_load(&m->failures);
}

void tsa_store_close(struct tsa_store *s)
{
	if (!s)
		return;
	if (s->started) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	free_ops(s->head);
	sqlite3_finalize(s->upsert);
	sqlite3_finalize(s->prune);
	if (s->db)
		sqlite3_close(s->db);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	free(s);
}
