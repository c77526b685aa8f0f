/* libkumo public API: create an engine, add SMTP listeners, register policy callbacks,
 * inject messages from code, run and stop. All objects are opaque; strings passed in are
 * copied unless a comment says otherwise; functions return 0 or -errno. */
#ifndef KUMO_KUMO_H
#define KUMO_KUMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KUMO_VERSION_STRING "0.1.0"

struct kumo_engine;
struct kumo_txn;

/* Diagnostic log levels for kumo_log_fn. */
enum kumo_log_level { KUMO_LOG_ERROR = 0, KUMO_LOG_WARN, KUMO_LOG_INFO, KUMO_LOG_DEBUG };

/* Diagnostic messages (one line, no newline). Called from any engine thread; the string
 * is valid during the call only. */
typedef void (*kumo_log_fn)(void *arg, enum kumo_log_level level, const char *line);

/* Log records (Reception, Rejection, ...): one JSON object, no newline, valid during the
 * call only. Called from loop threads; must not block. */
typedef void (*kumo_record_fn)(void *arg, const char *json, size_t len);

struct kumo_engine_cfg {
	unsigned threads;          /* loops; 0 = number of online cores */
	const char *spool_path;    /* required; created if missing */
	const char *log_path;      /* directory for JSON log record files, or NULL for none */
	const char *hostname;      /* default for listeners; NULL = gethostname() */
	const char *nodeid;        /* in log records; NULL = derived from hostname */
	unsigned max_connections;  /* per loop; 0 = 4096 */
	uint32_t shutdown_grace_ms; /* graceful stop: time given to open transactions: 10000 */
	kumo_log_fn log_fn;        /* NULL: diagnostics go to stderr */
	void *log_arg;
	kumo_record_fn record_fn;  /* optional: every log record, besides the log files */
	void *record_arg;
	const char *campaign_header; /* header naming the campaign: "X-Kumo-Campaign"; "" none */
	const char *tenant_header;   /* header naming the tenant: "X-Kumo-Tenant"; "" none */

	/* Delivery. Zero/NULL fields take the default after them. */
	bool no_delivery;            /* keep accepted mail queued, deliver nothing */
	const char *smart_host;      /* "ip:port": all mail goes there, no MX lookup; NULL */
	const char *dns_servers;     /* "127.0.0.1:53,[::1]:53"; NULL = /etc/resolv.conf */
	uint32_t dns_timeout_ms;     /* per query try: 5000 */
	uint16_t mx_port;            /* port used for MX hosts: 25 */
	uint32_t retry_interval_ms;  /* first retry after a temporary failure: 20 min */
	uint32_t max_retry_interval_ms; /* the doubling interval stops here: 8 h */
	uint64_t max_age_ms;         /* then Expiration: 7 days */
	unsigned connection_limit;   /* connections per site and loop: 32 */
	unsigned max_deliveries_per_connection; /* then the connection closes: 1024 */
	unsigned max_recipients_per_batch; /* recipients per transaction: 100 */
	uint32_t idle_timeout_ms;    /* an idle outbound connection closes: 60 s */
	uint32_t connect_timeout_ms; /* TCP connect to one address: 60 s */
	const char *ehlo_name;       /* EHLO name for delivery; NULL = hostname */
	/* Shared throttles: with a Redis URL ("redis://127.0.0.1:6379"), max_message_rate is
	 * one limit for every node using that Redis (GCRA in a Lua script); unreachable
	 * Redis falls back to local limits. NULL: local limits. */
	const char *redis_url;
	/* Traffic shaping: KumoMTA shaping.toml files, merged in order (overlays last). */
	const char *const *shaping_files;
	size_t nshaping_files;

	/* Log segments (with log_path). Zero fields take the default after them. */
	uint64_t log_max_segment_bytes; /* rotate after: 1 GiB */
	uint32_t log_max_segment_age_ms; /* rotate after: 5 min */
	bool log_no_compress;        /* keep closed segments as .jsonl instead of .jsonl.gz */
};

/* What happens to a bare CR or LF in DATA: see docs/smtp.md. */
enum kumo_bare_eol { KUMO_BARE_EOL_REJECT = 0, KUMO_BARE_EOL_NORMALIZE };

struct kumo_listener_cfg {
	const char *address;       /* "127.0.0.1:2525", "[::1]:2525" */
	const char *hostname;      /* greeting/EHLO name; NULL = engine's */
	const char *const *relay_hosts; /* CIDRs allowed to relay anywhere; NULL = loopback */
	size_t nrelay_hosts;
	const char *const *local_domains; /* domains anyone may send to (inbound) */
	size_t nlocal_domains;
	size_t max_line;           /* 0 = 512 */
	size_t max_recipients;     /* per message; 0 = 100 */
	size_t max_message_size;   /* bytes; 0 = 50 MiB */
	unsigned max_messages;     /* per connection; 0 = 1000 */
	uint32_t command_timeout_ms; /* 0 = 300000 */
	uint32_t data_timeout_ms;    /* 0 = 180000 */
	enum kumo_bare_eol bare_eol;
};

/* Validation for config readers: 0 or -EINVAL. Addresses are "ip:port" or "[ipv6]:port";
 * CIDRs "ip" or "ip/bits". */
int kumo_address_check(const char *address);
int kumo_cidr_check(const char *cidr);

/* A reply chosen by policy. text may hold several lines separated by '\n'. */
struct kumo_reply {
	int code;               /* e.g. 550 */
	char enhanced[16];      /* e.g. "5.7.1" */
	char text[256];
};

enum kumo_verdict { KUMO_ACCEPT = 0, KUMO_REJECT = 1 };

/* Policy callbacks, all optional. They run on loop threads (concurrently across loops)
 * and must not block. Return KUMO_ACCEPT, or KUMO_REJECT after filling *reply (a 4xx or
 * 5xx). The txn handle is valid during the call only. */
struct kumo_policy {
	enum kumo_verdict (*on_connect)(void *arg, struct kumo_txn *txn, struct kumo_reply *reply);
	enum kumo_verdict (*on_mail_from)(void *arg, struct kumo_txn *txn, const char *sender,
					  struct kumo_reply *reply);
	enum kumo_verdict (*on_rcpt_to)(void *arg, struct kumo_txn *txn, const char *rcpt,
					struct kumo_reply *reply);
	/* End of data, before the message is spooled: may set queue, tenant, campaign, meta. */
	enum kumo_verdict (*on_data)(void *arg, struct kumo_txn *txn, struct kumo_reply *reply);
	/* Chooses the egress pool of a scheduled queue ("campaign:tenant@domain"): a pool
	 * name, or NULL to use the configured rules (kumo_engine_set_queue_pool). Called
	 * once per queue and loop thread, when its first message becomes due; the answer is
	 * kept. campaign and tenant are "" when the queue has none; the strings are valid
	 * during the call only. An unknown pool name is logged and the rules apply. */
	const char *(*egress_pool)(void *arg, const char *queue, const char *campaign,
				   const char *tenant, const char *domain);
};

/* Transaction accessors for policy callbacks. Returned strings live as long as txn. */
const char *kumo_txn_peer_address(const struct kumo_txn *txn); /* "127.0.0.1"; "" injected */
const char *kumo_txn_helo(const struct kumo_txn *txn);         /* or "" */
const char *kumo_txn_sender(const struct kumo_txn *txn);       /* NULL before MAIL */
size_t kumo_txn_rcpt_count(const struct kumo_txn *txn);        /* accepted so far */
const char *kumo_txn_rcpt(const struct kumo_txn *txn, size_t i);
/* Message bytes at end of data (on_data only), else NULL. */
const uint8_t *kumo_txn_data(const struct kumo_txn *txn, size_t *len);
/* Setters (on_mail_from, on_rcpt_to, on_data): values are copied. */
int kumo_txn_set_queue(struct kumo_txn *txn, const char *queue);
int kumo_txn_set_tenant(struct kumo_txn *txn, const char *tenant);
int kumo_txn_set_campaign(struct kumo_txn *txn, const char *campaign);
int kumo_txn_set_meta(struct kumo_txn *txn, const char *key, const char *value);

/* Routes a recipient domain to a fixed host ("ip:port") instead of its MX hosts. Call
 * before start(). */
int kumo_engine_add_route(struct kumo_engine *e, const char *domain, const char *host_port);

/* Egress sources and pools. A source is a local address to send from and its EHLO name;
 * a pool is a weighted list of sources, chosen by smooth weighted round robin. Messages
 * of a tenant go through the tenant's pool, others through the default pool; without any
 * pool, connections use the system's choice of address. Ready queues are per source and
 * site ("source->site"). Call before start(). */
struct kumo_source_cfg {
	const char *name;
	const char *source_address;  /* "127.0.0.2" or "::1"; NULL = the system's choice */
	const char *ehlo_name;       /* NULL = the engine's EHLO name */
	/* Leaving through a SOCKS5 proxy (e.g. kumoproxy): connections go to the proxy, which
	 * connects from socks5_proxy_source_address (KumoMTA's BIND-then-CONNECT). */
	const char *socks5_proxy_server;          /* "ip:port" or NULL */
	const char *socks5_proxy_source_address;  /* "ip" or NULL: the proxy's choice */
	const char *socks5_proxy_username;        /* NULL: no authentication */
	const char *socks5_proxy_password;
	/* Leaving through HAProxy: a PROXY v2 header names the source address to use. */
	const char *ha_proxy_server;              /* "ip:port" or NULL */
	const char *ha_proxy_source_address;      /* "ip" */
};
struct kumo_pool_entry {
	const char *source;
	unsigned weight;             /* 0 counts as 1 */
};
int kumo_engine_add_source(struct kumo_engine *e, const struct kumo_source_cfg *cfg);
int kumo_engine_add_pool(struct kumo_engine *e, const char *name,
			 const struct kumo_pool_entry *entries, size_t n);
/* Pool rules: messages of a queue whose campaign, tenant or domain (case-insensitive) is
 * name go through pool. The policy's egress_pool callback comes first, then campaign
 * rules, tenant rules, domain rules, and last the default pool. Returns -ENOENT for an
 * unknown pool or after start(). */
enum kumo_pool_match { KUMO_POOL_TENANT = 0, KUMO_POOL_CAMPAIGN, KUMO_POOL_DOMAIN };
int kumo_engine_set_queue_pool(struct kumo_engine *e, enum kumo_pool_match match,
			       const char *name, const char *pool);
/* A tenant rule; tenant NULL sets the default pool. */
int kumo_engine_set_tenant_pool(struct kumo_engine *e, const char *tenant, const char *pool);

/* Runtime changes, from any thread; loops apply them within a second.
 * The shaping overlay is TOML in KumoMTA's shaping format (e.g. tsa-daemon's
 * /get_config_v1/shaping.toml) merged after the configured shaping files; NULL removes
 * it. Returns 0, or -EINVAL with a "FILE:LINE: key 'k': message" line in err. */
int kumo_engine_set_shaping_overlay(struct kumo_engine *e, const char *toml, size_t len,
				    char *err, size_t errcap);

/* Suspensions stop delivery without failing anything: a suspended site's ready queue
 * ("source->site" or the site name) opens no connection and starts no transaction; a
 * suspended tenant, campaign or domain keeps its scheduled messages until the suspension
 * expires. The set given replaces the previous one; strings are copied. */
enum kumo_suspend_kind {
	KUMO_SUSPEND_SITE = 0,
	KUMO_SUSPEND_TENANT,
	KUMO_SUSPEND_CAMPAIGN,
	KUMO_SUSPEND_DOMAIN,
};
struct kumo_suspension {
	enum kumo_suspend_kind kind;
	const char *name;
	uint64_t expires_ms;         /* Unix time in ms */
};
int kumo_engine_set_suspensions(struct kumo_engine *e, const struct kumo_suspension *s,
				size_t n);

/* Bounces fail messages permanently (tsa-daemon's Bounce, BounceTenant and BounceCampaign,
 * KumoMTA's administrative bounces). A bounce matches a scheduled queue
 * "campaign:tenant@domain" when every part it names equals the queue's (case-insensitive;
 * NULL matches anything, a named part does not match a queue without that part). While
 * it is active (now < expires_ms) every message of a matching queue is failed when it
 * would next be attempted, and the loops also fail, within about a second of the change,
 * the messages already queued there: scheduled for a later retry, waiting for DNS or in a
 * ready queue (a transaction already running finishes first). Each pending recipient
 * gets an "AdminBounce" log record with the response
 * "550 5.7.1 bounced by rule: <reason>", the sender gets a DSN as for other permanent
 * failures (when the recipient's NOTIFY asks for it), and the message leaves the spool.
 * Messages of other queues are not touched. The set given replaces the previous one
 * (n 0 clears it); strings are copied. An entry naming none of domain, tenant and
 * campaign would bounce everything and is refused: -EINVAL, nothing changes. */
struct kumo_bounce {
	const char *domain;          /* NULL: any domain */
	const char *tenant;          /* NULL: any tenant */
	const char *campaign;        /* NULL: any campaign */
	const char *reason;          /* NULL: "" */
	uint64_t expires_ms;         /* Unix time in ms */
};
int kumo_engine_set_bounces(struct kumo_engine *e, const struct kumo_bounce *b, size_t n);

/* Engine life cycle. new() opens the spool and recovers it (blocking; logs count and
 * rate). start() spawns the loop threads; stop() asks them to finish gracefully and may be
 * called from any thread or a signal-safe context (it only writes to an eventfd); wait()
 * joins them; free() releases everything. */
int kumo_engine_new(const struct kumo_engine_cfg *cfg, struct kumo_engine **out);
int kumo_engine_add_listener(struct kumo_engine *e, const struct kumo_listener_cfg *cfg);
/* The policy struct is copied; arg is kept and passed to every callback. */
int kumo_engine_set_policy(struct kumo_engine *e, const struct kumo_policy *p, void *arg);
int kumo_engine_start(struct kumo_engine *e);
int kumo_engine_stop(struct kumo_engine *e);
int kumo_engine_wait(struct kumo_engine *e);
void kumo_engine_free(struct kumo_engine *e);

/* Messages recovered from the spool when the engine was created. */
uint64_t kumo_engine_recovered(const struct kumo_engine *e);

/* Injection from code. The spec and everything it points to is copied before the call
 * returns. done runs on a loop thread once the message is durable (status 0, id holds
 * the 32-hex-digit id) or refused (-errno); it must not block. */
struct kumo_inject_spec {
	const char *sender;              /* "" for the null sender */
	const char *const *recipients;
	size_t nrecipients;
	const uint8_t *data;             /* RFC 5322 message, CRLF line ends */
	size_t data_len;
	const char *queue;               /* optional explicit queue */
	const char *tenant;              /* optional */
	const char *campaign;            /* optional */
};
typedef void (*kumo_inject_done_fn)(void *arg, int status, const char *id);
int kumo_engine_inject(struct kumo_engine *e, const struct kumo_inject_spec *spec,
		       kumo_inject_done_fn done, void *arg);

/* Counters summed over loops (approximate while running). */
struct kumo_engine_stats {
	uint64_t connections;      /* accepted since start */
	uint64_t messages_received; /* spooled (SMTP and injected) */
	uint64_t messages_rejected;
	uint64_t spool_batches;
	uint64_t queued;           /* messages held in scheduled queues */
};
void kumo_engine_stats(const struct kumo_engine *e, struct kumo_engine_stats *st);

/* One line per queue into cb: name and message count (for admin tools and tests).
 * Call after wait() or before start() only. */
typedef void (*kumo_queue_fn)(void *arg, const char *queue, uint64_t count);
void kumo_engine_queues(const struct kumo_engine *e, kumo_queue_fn cb, void *arg);

/* Reads a spool directory that no running engine uses and calls cb once per live message
 * with one JSON object (id, sender, recipients with DSN fields and queue names, tenant,
 * campaign, created, due, attempts, size, meta). The JSON is valid during the call only.
 * Returns the count of messages or -errno. */
typedef void (*kumo_spool_list_fn)(void *arg, const char *json, size_t len);
long kumo_spool_list(const char *spool_path, kumo_spool_list_fn cb, void *arg);

#ifdef __cplusplus
}
#endif
#endif
