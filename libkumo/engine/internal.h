/* Engine internals shared by loop.c, server.c, queue.c, log.c, policy.c and engine.c:
 * the per-thread loop with its fixed connection table, listeners, and the engine that
 * owns the loops. Nothing here is exported. */
#ifndef KUMO_ENGINE_INTERNAL_H
#define KUMO_ENGINE_INTERNAL_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "kumo/kumo.h"
#include "engine/envelope.h"
#include "engine/queue.h"
#include "engine/delivery.h"
#include "engine/nodelimit.h"
#include "engine/spool.h"
#include "proto/smtp_server.h"
#include "util/id.h"
#include "util/json.h"

/* user_data of every SQE: {op:8, gen:24, slot:32}. A completion whose gen differs from
 * its slot's current gen belongs to a closed connection and is dropped. */
enum kumo_op {
	KUMO_OP_ACCEPT = 1, /* slot = listener index */
	KUMO_OP_RECV,
	KUMO_OP_SEND,
	KUMO_OP_TICK,       /* the once-a-second timer */
	KUMO_OP_WAKE,       /* eventfd read: stop request or injected messages */
	KUMO_OP_SPOOL_WRITE,
	KUMO_OP_SPOOL_SYNC,
	KUMO_OP_LOG_WRITE,
	KUMO_OP_CANCEL,     /* completions of cancel requests: ignored */
	KUMO_OP_OCONNECT,   /* outbound connection ops: slot = oconn index */
	KUMO_OP_ORECV,
	KUMO_OP_OSEND,
	KUMO_OP_OREAD,      /* reading a message record from the spool */
	KUMO_OP_DNS,        /* c-ares socket polls: the low 56 bits are the resolver's */
	KUMO_OP_STIMER,     /* a site's shaping timer: slot = site index */
	KUMO_OP_THROTTLE,   /* Redis connection polls: the low 56 bits are the throttle's */
};

static inline uint64_t kumo_ud(enum kumo_op op, uint32_t gen, uint32_t slot)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffff) << 32 | slot;
}
static inline enum kumo_op kumo_ud_op(uint64_t ud)
{
	return (enum kumo_op)(ud >> 56);
}
static inline uint32_t kumo_ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32) & 0xffffff;
}
static inline uint32_t kumo_ud_slot(uint64_t ud)
{
	return (uint32_t)ud;
}

struct kumo_cidr {
	int family;       /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned bits;
};
int kumo_cidr_parse(const char *s, struct kumo_cidr *out);
bool kumo_cidr_match(const struct kumo_cidr *c, const struct sockaddr *sa);

struct kumo_listener {
	char *address;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char *hostname;
	struct kumo_cidr *relay;
	size_t nrelay;
	char **local_domains;
	size_t nlocal;
	struct kumo_smtp_server_cfg smtp;
};

/* Policy settings gathered during one transaction (struct kumo_txn of the API). */
struct kumo_txn {
	struct kumo_conn *conn;          /* NULL for injected messages */
	const struct kumo_smtp_txn *smtp; /* the machine's view, or NULL */
	char *queue, *tenant, *campaign;
	struct kumo_env_meta *meta;
	size_t nmeta, capmeta;
	const uint8_t *data;             /* set during on_data */
	size_t data_len;
};
void kumo_txn_clear(struct kumo_txn *t);

#define KUMO_RBUF_SIZE 16384

struct kumo_conn {
	uint32_t gen;          /* bumped on close; stale completions are dropped */
	int fd;
	bool in_use;
	bool recv_busy;        /* a recv is in flight */
	bool send_busy;        /* a send is in flight */
	bool closing;          /* close once output is written and nothing is in flight */
	bool wait_spool;       /* a message is being made durable; machine paused */
	bool eof;
	bool dead;             /* closed; the slot is reused once inflight drops to 0 */
	uint32_t inflight;     /* SQEs posted for this slot and not yet completed */
	uint32_t next_free;
	struct kumo_listener *lst;
	struct kumo_smtp_server *sm;
	char peer[48];         /* numeric peer address */
	struct sockaddr_storage peer_sa;
	char helo[256];
	bool esmtp;            /* EHLO rather than HELO */
	uint8_t *rbuf;         /* bytes received, not yet pushed into the machine */
	size_t rpos, rlen;
	struct kumo_buf sbuf;  /* replies being sent */
	size_t sent;           /* of sbuf, acknowledged by completed sends */
	struct kumo_txn txn;
	struct kumo_envelope env; /* the message being spooled (strings borrowed from sm) */
	struct kumo_env_rcpt *env_rcpts;
	size_t env_rcpts_cap;
	struct kumo_put *puts;    /* its records, one per queue */
	size_t nputs, capputs, puts_pending;
	int put_status;
	uint64_t msg_size;
};

/* A message record being made durable for a connection or an injection: one per
 * scheduled queue of the recipients (a message to several domains is stored once per
 * domain, so that each has one queue, one due time and one attempt count). */
struct kumo_put {
	struct kumo_id id;
	struct kumo_spool_loc loc;
	uint32_t queue;
};

/* Groups env's recipients by queue, appends one message record per group to the spool
 * (all in the same batch, so they succeed or fail together) and records them in *puts
 * (grown as needed). Returns the number of records or -errno. */
int kumo_loop_spool_split(struct kumo_loop *l, const struct kumo_envelope *env,
			  const struct iovec *iov, int niov, void *cookie, struct kumo_put **puts,
			  size_t *cap);

/* An injected message travelling to a loop. */
struct kumo_inject {
	struct kumo_inject *next;
	struct kumo_envelope env;
	uint8_t *data;
	size_t data_len;
	struct kumo_put *puts;
	size_t nputs, capputs, puts_pending;
	int put_status;
	kumo_inject_done_fn done;
	void *arg;
	char *strings;         /* one block holding the envelope's strings */
};

struct kumo_engine;

struct kumo_loop {
	struct kumo_engine *e;
	unsigned index;
	pthread_t thread;
	struct io_uring ring;
	int wake_fd;           /* eventfd: stop requests and injected messages */
	uint64_t wake_val;
	_Atomic bool stop_requested;
	bool stopping;
	uint64_t stop_deadline_ms;
	pthread_mutex_t inject_lock;
	struct kumo_inject *inject_head, *inject_tail;
	/* node-wide limit slots freed by other loops while this one waited (inject_lock) */
	struct kumo_node_slot **kicks;
	size_t nkicks, capkicks;
	int *listen_fds;       /* one per engine listener, SO_REUSEPORT */
	bool *accept_armed;
	struct kumo_conn *conns;
	uint32_t nconns, free_head, live_conns;
	struct kumo_spool *spool;
	struct kumo_id_gen ids;
	struct kumo_queues queues;
	struct kumo_delivery *dlv; /* delivery.c */
	struct kumo_dynconf *conf; /* the snapshot this loop uses */
	uint64_t now_ms;       /* wall clock, refreshed once per completion batch */
	struct kumo_buf scratch; /* envelope encoding, log record formatting */
	char date[40];         /* RFC 5322 date of date_sec, for Received headers */
	uint64_t date_sec;
	/* log records: appended to pending, written with one write per batch */
	int log_fd;
	struct kumo_buf log_pending, log_inflight;
	bool log_busy;
	uint64_t log_bytes;
	unsigned log_seq;
	/* log segments (log.c): the open one rotates by size and age; closed ones go to the
	 * engine's compressor. One log op (write, open or close) is in flight at a time. */
	uint8_t log_op;            /* the op in flight while log_busy */
	int log_old_fd;            /* the closed segment whose close is in flight, or -1 */
	char *log_seg_path;        /* the open segment */
	char *log_next_path;       /* the segment being opened, then the one being closed */
	char log_stamp[16];        /* YYYYmmdd-HHMMSS of the latest segment name claimed */
	uint64_t log_seg_bytes;    /* written to the open segment */
	uint64_t log_seg_first_ms; /* when its first write went out; 0 while empty */
	bool log_split;            /* a short write left it ending inside a record */
	uint64_t log_retry_ms;     /* a failed rotation is tried again after this */
	uint64_t log_dropped;      /* records dropped (pending cap, write errors) since start */
	uint64_t log_dropped_told; /* of which a warning has been given */
	uint64_t log_warn_ms;      /* when the last drop warning went out */
	int log_last_err;          /* latest write error, for that warning */
	bool log_registered;       /* this loop is a user of the engine's compressor */
	/* counters (read by other threads without locks: approximate) */
	_Atomic uint64_t n_connections, n_received, n_rejected, n_batches;
	int sq_pending;        /* SQEs queued since the last submit */
};

struct kumo_route {
	char *domain;
	char *host_port;
};

struct kumo_source {
	char *name;
	char *ehlo_name;
	struct sockaddr_storage addr; /* ss_family 0: the system's choice */
	struct sockaddr_storage socks5, socks5_source, ha, ha_source; /* family 0: unused */
	char *socks5_user, *socks5_pass;
};

struct kumo_pool {
	char *name;
	uint32_t *sources;      /* indexes into kumo_engine.sources */
	unsigned *weights;
	size_t n;
};

struct kumo_tenant_pool {
	char *tenant;           /* the campaign, tenant or domain; NULL: the default pool */
	int match;              /* enum kumo_pool_match */
	uint32_t pool;
};

struct kumo_shaping;
struct kumo_shaping_ref;

struct kumo_susp {
	int kind;               /* enum kumo_suspend_kind */
	const char *name;
	uint64_t expires_ms;
};

struct kumo_bnc {
	const char *domain, *tenant, *campaign; /* NULL: any */
	const char *reason;
	uint64_t expires_ms;
};

/* A list of entries and their strings in one allocation, shared by the snapshots that
 * have the same list (dynconf.c). */
struct kumo_conf_list;

/* An immutable snapshot of the runtime configuration (dynconf.c). */
struct kumo_dynconf {
	unsigned refs;          /* under kumo_engine.conf_lock */
	uint64_t gen;
	struct kumo_shaping_ref *shaping;
	struct kumo_conf_list *susp_list, *bnc_list; /* own the arrays below */
	const struct kumo_susp *susp;
	size_t nsusp;
	const struct kumo_bnc *bounces;
	size_t nbounces;
};

int kumo_conf_init(struct kumo_engine *e, const char *const *files, size_t nfiles, char *err,
		   size_t errcap);
void kumo_conf_fini(struct kumo_engine *e);
struct kumo_dynconf *kumo_conf_get(struct kumo_engine *e);
void kumo_conf_put(struct kumo_engine *e, struct kumo_dynconf *c);
const struct kumo_shaping *kumo_conf_shaping(const struct kumo_dynconf *c);
/* The expiry of a matching active suspension, or 0. */
uint64_t kumo_conf_suspended(const struct kumo_dynconf *c, enum kumo_suspend_kind kind,
			     const char *name, size_t name_len, uint64_t now_ms);
/* The bounce of c matching the queue with these parts that expires last (active or not:
 * the caller compares expires_ms with its clock), as an index into c->bounces, or -1. */
int32_t kumo_conf_bounce(const struct kumo_dynconf *c, const struct kumo_queue_parts *p);

struct kumo_engine {
	struct kumo_engine_cfg cfg;
	char *spool_path, *log_path, *hostname, *nodeid, *campaign_header, *tenant_header;
	char *smart_host, *dns_servers, *ehlo_name, *redis_url;
	struct kumo_listener *listeners;
	size_t nlisteners;
	struct kumo_policy policy;
	void *policy_arg;
	struct kumo_route *routes;
	size_t nroutes;
	struct kumo_source *sources;
	size_t nsources;
	struct kumo_pool *pools;
	size_t npools;
	struct kumo_tenant_pool *tenant_pools;
	size_t ntenant_pools;
	struct kumo_node_limits node_limits; /* shaped connection limits across loops */
	bool node_limits_ready;
	char **shaping_files;
	size_t nshaping_files;
	pthread_mutex_t conf_lock;
	struct kumo_dynconf *conf;    /* the current snapshot */
	uint64_t conf_gen_next;       /* under conf_lock */
	_Atomic uint64_t conf_gen;    /* the current snapshot's gen, read by loops */
	struct kumo_loop *loops;
	unsigned nloops;
	bool started;
	uint64_t recovered;
	_Atomic unsigned inject_rr;
	/* closed log segments are compressed here (logcompress.c); NULL if disabled */
	struct kumo_logcompress *logz;
};

/* Diagnostics through the embedder's callback. */
void kumo_elog(const struct kumo_engine *e, enum kumo_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* loop.c */
struct io_uring_sqe *kumo_loop_sqe(struct kumo_loop *l);
/* From any thread: slot s has a free connection the loop waited for; the loop kicks its
 * site or provider on its next wake-up. */
void kumo_loop_kick(struct kumo_loop *l, struct kumo_node_slot *s);
uint64_t kumo_now_ms(void);
int kumo_loop_init(struct kumo_loop *l, struct kumo_engine *e, unsigned index);
void kumo_loop_fini(struct kumo_loop *l);
/* Opens this loop's SO_REUSEPORT socket for every engine listener. */
int kumo_loop_listen(struct kumo_loop *l);
void *kumo_loop_main(void *arg);
void kumo_loop_spool_done(void *cookie, int status, void *arg);

/* server.c: SMTP connections on a loop */
void kumo_server_accepted(struct kumo_loop *l, unsigned listener, int fd);
/* A RECV or SEND completion for user_data ud (stale ones are absorbed here). */
void kumo_server_io_done(struct kumo_loop *l, uint64_t ud, int res);
/* The message of connection c (if its gen still matches) is durable or failed. */
void kumo_server_spool_done(struct kumo_loop *l, struct kumo_conn *c, uint32_t gen,
			    int status);
/* Spool cookie for connection c's message. */
void *kumo_server_cookie(const struct kumo_loop *l, const struct kumo_conn *c);
void kumo_server_tick(struct kumo_loop *l);
void kumo_server_shutdown(struct kumo_loop *l, bool force);

/* Spooling a message built from an envelope and data iovecs; cookie as for the spool. */
int kumo_loop_spool_message(struct kumo_loop *l, const struct kumo_envelope *env,
			    const struct iovec *iov, int niov, void *cookie,
			    struct kumo_spool_loc *loc);

/* log.c: JSON log records */
int kumo_log_open(struct kumo_loop *l);
void kumo_log_close(struct kumo_loop *l);
/* Appends a record produced by the writer; hands it to the record callback too. */
void kumo_log_commit(struct kumo_loop *l, struct kumo_buf *rec);
void kumo_log_flush(struct kumo_loop *l);
void kumo_log_write_done(struct kumo_loop *l, int res);

/* logcompress.c: closed log segments become gzip files on one background thread per
 * engine. A segment is compressed in chunks, each a separate gzip member (concatenated
 * members are one valid gzip stream), so memory stays bounded whatever the segment size. */
#define KUMO_LOGCOMPRESS_CHUNK (4u << 20)
struct kumo_logcompress;
/* Starts the thread. Diagnostics go through e's log callback. */
int kumo_logcompress_new(struct kumo_engine *e, struct kumo_logcompress **out);
/* Queues every "*.jsonl" in dir (sorted, so oldest first) and removes "*.gz.tmp" left by
 * an interrupted compression. Call before any loop opens a segment in dir. Blocking. */
int kumo_logcompress_leftovers(struct kumo_logcompress *z, const char *dir);
/* Queues a closed segment (the path is copied). Never blocks on compression. */
int kumo_logcompress_push(struct kumo_logcompress *z, const char *path);
/* Compresses what is queued, then joins the thread and frees z. */
void kumo_logcompress_free(struct kumo_logcompress *z);
/* src -> dst as gzip members of at most chunk input bytes each, dst fsynced. An empty src
 * gives one empty member. Blocking: for the background thread and tests. 0 or -errno. */
int kumo_logcompress_file(const char *src, const char *dst, size_t chunk);
/* "X.jsonl" -> "X.jsonl.gz" through "X.jsonl.gz.tmp" (fsync, rename, directory fsync),
 * then "X.jsonl" is removed. An existing "X.jsonl.gz" is never replaced: if it holds the
 * same bytes (a crash after the rename) the segment is removed, else -EEXIST and the
 * segment stays. Blocking. 0 or -errno. */
int kumo_logcompress_segment(const char *path, size_t chunk);

struct kumo_log_fields {
	const char *type;       /* "Reception", "Rejection" */
	const struct kumo_id *id;
	const char *sender;
	const char *recipient;
	const char *queue;
	uint64_t size;
	int code;
	const char *enhanced;   /* "2.0.0" or NULL */
	const char *content;
	const char *command;    /* for rejections: the command refused, or NULL */
	const char *peer_addr;
	const char *peer_name;  /* HELO name */
	uint64_t created_ms;
	const struct kumo_env_meta *meta;
	size_t nmeta;
	const char *protocol;   /* "ESMTP", "SMTP", "Inject" */
	/* delivery records */
	const char *site;
	unsigned num_attempts;
	bool delivery;          /* egress fields and delivery_protocol are filled */
	const char *egress_source, *egress_pool; /* NULL: "unspecified" */
	const char *source_address; /* local address of the connection, or NULL */
};
void kumo_log_record(struct kumo_loop *l, const struct kumo_log_fields *f);

#endif
