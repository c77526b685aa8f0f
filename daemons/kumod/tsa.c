/* kumod's tsa-daemon client: a thread that posts batched log records (JSON lines) to
 * POST /publish_log_v1 and polls GET /get_config_v1/shaping.toml,
 * GET /get_suspension_v1/suspended.json and GET /get_bounce_v1/bounced.json, applying
 * what changed to the engine. */
#include "tsa.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/json.h"
#include "util/json_read.h"

struct kumod_tsa {
	struct kumod_tsa_cfg cfg;
	struct kumo_engine *e;
	struct sockaddr_in addr;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop, running;
	struct kumo_buf pending;   /* JSON lines waiting to be posted, under lock */
	uint64_t dropped;
	char *overlay;             /* the last overlay applied */
	char *suspensions;         /* the last suspended.json applied */
	char *bounces;             /* the last bounced.json applied */
};

void kumod_tsa_record(void *arg, const char *json, size_t len)
{
	struct kumod_tsa *t = arg;
	pthread_mutex_lock(&t->lock);
	if (t->pending.len + len + 1 > t->cfg.max_pending) {
		t->dropped++; /* bounded: a stalled tsa-daemon never grows kumod */
	} else {
		kumo_buf_append(&t->pending, json, len);
		kumo_buf_putc(&t->pending, '\n');
	}
	pthread_mutex_unlock(&t->lock);
}

/* One HTTP/1.1 request with Connection: close; the body of a 2xx reply goes to *resp. */
static int http(struct kumod_tsa *t, const char *method, const char *path, const char *body,
		size_t blen, struct kumo_buf *resp)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int err = 0;
	if (connect(fd, (struct sockaddr *)&t->addr, sizeof(t->addr)) < 0) {
		err = -errno;
		goto out;
	}
	char head[256];
	int hl = snprintf(head, sizeof(head),
			  "%s %s HTTP/1.1\r\nHost: tsa\r\nConnection: close\r\n"
			  "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
			  method, path, blen);
	if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl ||
	    (blen && send(fd, body, blen, MSG_NOSIGNAL) != (ssize_t)blen)) {
		err = -EIO;
		goto out;
	}
	struct kumo_buf in = {0};
	char chunk[16384];
	ssize_t n;
	while ((n = recv(fd, chunk, sizeof(chunk), 0)) > 0)
		kumo_buf_append(&in, chunk, (size_t)n);
	kumo_buf_putc(&in, 0);
	int status = 0;
	char *sep = in.data ? strstr(in.data, "\r\n\r\n") : NULL;
	if (!sep || sscanf(in.data, "HTTP/1.%*d %d", &status) != 1 || status / 100 != 2)
		err = -EPROTO;
	else if (resp)
		kumo_buf_append(resp, sep + 4, in.len - 1 - (size_t)(sep + 4 - in.data));
	kumo_buf_free(&in);
out:
	close(fd);
	return err;
}

static void publish(struct kumod_tsa *t)
{
	pthread_mutex_lock(&t->lock);
	struct kumo_buf batch = t->pending;
	memset(&t->pending, 0, sizeof(t->pending));
	pthread_mutex_unlock(&t->lock);
	if (batch.len && http(t, "POST", "/publish_log_v1", batch.data, batch.len, NULL) < 0) {
		/* put it back in front, within the bound, for the next try */
		pthread_mutex_lock(&t->lock);
		if (batch.len + t->pending.len <= t->cfg.max_pending) {
			kumo_buf_append(&batch, t->pending.data, t->pending.len);
			kumo_buf_free(&t->pending);
			t->pending = batch;
			batch = (struct kumo_buf){0};
		} else {
			t->dropped++;
		}
		pthread_mutex_unlock(&t->lock);
	}
	kumo_buf_free(&batch);
}

/* "2026-11-25T14:00:00Z" (or with fractional seconds) -> Unix ms; 0 when malformed. */
static uint64_t rfc3339_ms(const char *s)
{
	struct tm tm = {0};
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return 0;
	return (uint64_t)timegm(&tm) * 1000;
}

static size_t stash(char *storage, size_t cap, size_t *used, const char *s, size_t n)
{
	if (*used + n + 1 > cap)
		return (size_t)-1;
	memcpy(storage + *used, s, n);
	storage[*used + n] = 0;
	size_t at = *used;
	*used += n + 1;
	return at;
}

/* The "expires" of an entry in Unix ms when it is later than now_ms, else 0. */
static uint64_t active_until(const struct kumo_json_value *v, uint64_t now_ms)
{
	const char *exp = kumo_json_string(kumo_json_get(v, "expires"), NULL);
	uint64_t until = exp ? rfc3339_ms(exp) : 0;
	return until > now_ms ? until : 0;
}

long kumod_tsa_parse_suspensions(const char *json, size_t len, uint64_t now_ms,
				 struct kumo_suspension *out, size_t cap, char *storage,
				 size_t cap_storage)
{
	struct kumo_json_doc *doc;
	size_t end, used = 0, n = 0;
	if (kumo_json_parse(json, len, &end, &doc, NULL) < 0)
		return -EINVAL;
	const struct kumo_json_value *root = kumo_json_doc_root(doc);
	static const char *const lists[] = {"ready_q", "sched_q"};
	for (int l = 0; l < 2; l++) {
		const struct kumo_json_value *a = kumo_json_get(root, lists[l]);
		for (size_t i = 0; i < kumo_json_count(a) && n < cap; i++) {
			const struct kumo_json_value *v = kumo_json_at(a, i);
			uint64_t until = active_until(v, now_ms);
			if (!until)
				continue;
			size_t sl;
			const char *name = NULL;
			enum kumo_suspend_kind kind = KUMO_SUSPEND_SITE;
			if (l == 0) {
				const char *src = kumo_json_string(kumo_json_get(v, "source"), NULL);
				/* without an egress pool kumod's ready queue is the site itself */
				name = src && strcmp(src, "unspecified") == 0
					       ? kumo_json_string(kumo_json_get(v, "site"), &sl)
					       : kumo_json_string(kumo_json_get(v, "site_name"), &sl);
			} else if ((name = kumo_json_string(kumo_json_get(v, "campaign"), &sl))) {
				kind = KUMO_SUSPEND_CAMPAIGN;
			} else if ((name = kumo_json_string(kumo_json_get(v, "tenant"), &sl)) && sl) {
				kind = KUMO_SUSPEND_TENANT;
			} else {
				name = kumo_json_string(kumo_json_get(v, "domain"), &sl);
				kind = KUMO_SUSPEND_DOMAIN;
			}
			size_t at = name ? stash(storage, cap_storage, &used, name, sl) : (size_t)-1;
			if (at == (size_t)-1)
				continue;
			out[n++] = (struct kumo_suspension){.kind = kind, .name = storage + at,
							    .expires_ms = until};
		}
	}
	kumo_json_doc_free(doc);
	return (long)n;
}

/* A string member of v copied to storage; NULL when absent, null or "", or when storage
 * is full (then *full is set). */
static const char *stash_member(const struct kumo_json_value *v, const char *key,
				char *storage, size_t cap, size_t *used, bool *full)
{
	size_t n;
	const char *s = kumo_json_string(kumo_json_get(v, key), &n);
	if (!s || !n)
		return NULL;
	size_t at = stash(storage, cap, used, s, n);
	*full |= at == (size_t)-1;
	return at == (size_t)-1 ? NULL : storage + at;
}

long kumod_tsa_parse_bounces(const char *json, size_t len, uint64_t now_ms,
			     struct kumo_bounce *out, size_t cap, char *storage,
			     size_t cap_storage)
{
	struct kumo_json_doc *doc;
	size_t end, used = 0, n = 0;
	if (kumo_json_parse(json, len, &end, &doc, NULL) < 0)
		return -EINVAL;
	const struct kumo_json_value *a = kumo_json_doc_root(doc);
	for (size_t i = 0; i < kumo_json_count(a) && n < cap; i++) {
		const struct kumo_json_value *v = kumo_json_at(a, i);
		bool full = false;
		struct kumo_bounce b = {
			.expires_ms = active_until(v, now_ms),
			.domain = stash_member(v, "domain", storage, cap_storage, &used, &full),
			.tenant = stash_member(v, "tenant", storage, cap_storage, &used, &full),
			.campaign = stash_member(v, "campaign", storage, cap_storage, &used, &full),
			.reason = stash_member(v, "reason", storage, cap_storage, &used, &full)};
		/* an entry naming no queue would bounce them all: never from tsa-daemon */
		if (b.expires_ms && !full && (b.domain || b.tenant || b.campaign))
			out[n++] = b;
	}
	kumo_json_doc_free(doc);
	return (long)n;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Applies text if it differs from *last; returns true when it changed. */
static bool changed(char **last, const struct kumo_buf *b)
{
	if (*last && strlen(*last) == b->len && memcmp(*last, b->data, b->len) == 0)
		return false;
	free(*last);
	*last = strndup(b->data ? b->data : "", b->len);
	return true;
}

/* GETs path into b; true when it answered with something else than *last (kept). */
static bool fetch_changed(struct kumod_tsa *t, const char *path, char **last,
			  struct kumo_buf *b)
{
	b->len = 0;
	return http(t, "GET", path, NULL, 0, b) == 0 && changed(last, b);
}

#define TSA_MAX_ENTRIES 1024
#define TSA_STORAGE (1u << 20)

/* Parses suspended.json (bounces false) or bounced.json and gives the result to the
 * engine. 0, or -errno when it could not be applied. */
static int apply_list(struct kumod_tsa *t, const struct kumo_buf *b, bool bounces)
{
	union {
		struct kumo_suspension s[TSA_MAX_ENTRIES];
		struct kumo_bounce b[TSA_MAX_ENTRIES];
	} *v = malloc(sizeof(*v) + TSA_STORAGE);
	if (!v)
		return -ENOMEM;
	char *storage = (char *)(v + 1);
	long n = bounces ? kumod_tsa_parse_bounces(b->data, b->len, now_ms(), v->b,
						   TSA_MAX_ENTRIES, storage, TSA_STORAGE)
			 : kumod_tsa_parse_suspensions(b->data, b->len, now_ms(), v->s,
						       TSA_MAX_ENTRIES, storage, TSA_STORAGE);
	int rc = n < 0	   ? (int)n
		 : bounces ? kumo_engine_set_bounces(t->e, v->b, (size_t)n)
			   : kumo_engine_set_suspensions(t->e, v->s, (size_t)n);
	free(v);
	return rc;
}

static void poll_tsa(struct kumod_tsa *t)
{
	struct kumo_buf b = {0};
	char err[512];
	if (fetch_changed(t, "/get_config_v1/shaping.toml", &t->overlay, &b)) {
		int rc = kumo_engine_set_shaping_overlay(t->e, b.data ? b.data : "", b.len, err,
							 sizeof(err));
		if (rc < 0)
			fprintf(stderr, "kumod: tsa-daemon shaping overlay refused: %s\n", err);
	}
	static const struct {
		const char *path;
		size_t last; /* offset of the text last applied in struct kumod_tsa */
		bool bounces;
	} lists[] = {
		{"/get_suspension_v1/suspended.json", offsetof(struct kumod_tsa, suspensions), false},
		{"/get_bounce_v1/bounced.json", offsetof(struct kumod_tsa, bounces), true},
	};
	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		char **last = (char **)((char *)t + lists[i].last);
		int rc = fetch_changed(t, lists[i].path, last, &b) ? apply_list(t, &b, lists[i].bounces)
								   : 0;
		if (rc < 0) {
			fprintf(stderr, "kumod: tsa-daemon %s not applied: %s\n", lists[i].path,
				strerror(-rc));
			free(*last); /* tried again at the next poll */
			*last = NULL;
		}
	}
	kumo_buf_free(&b);
}

static void *run(void *arg)
{
	struct kumod_tsa *t = arg;
	uint64_t next_poll = 0;
	pthread_mutex_lock(&t->lock);
	while (!t->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&t->cond, &t->lock, &ts);
		pthread_mutex_unlock(&t->lock);
		publish(t);
		if (now_ms() >= next_poll) {
			poll_tsa(t);
			next_poll = now_ms() + t->cfg.poll_ms;
		}
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	publish(t);
	return NULL;
}

int kumod_tsa_new(const struct kumod_tsa_cfg *cfg, struct kumod_tsa **out)
{
	char host[64];
	unsigned port;
	if (!cfg->url || sscanf(cfg->url, "http://%63[0-9.]:%u", host, &port) != 2 || port > 65535)
		return -EINVAL;
	struct kumod_tsa *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->cfg = *cfg;
	t->cfg.poll_ms = cfg->poll_ms ? cfg->poll_ms : 5000;
	t->cfg.max_pending = cfg->max_pending ? cfg->max_pending : 16u << 20;
	t->addr.sin_family = AF_INET;
	t->addr.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &t->addr.sin_addr) != 1) {
		free(t);
		return -EINVAL;
	}
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	*out = t;
	return 0;
}

int kumod_tsa_start(struct kumod_tsa *t, struct kumo_engine *e)
{
	t->e = e;
	int err = pthread_create(&t->thread, NULL, run, t);
	if (err)
		return -err;
	t->running = true;
	return 0;
}

void kumod_tsa_stop(struct kumod_tsa *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	if (t->running)
		pthread_join(t->thread, NULL);
	if (t->dropped)
		fprintf(stderr, "kumod: %llu log batches for tsa-daemon were dropped\n",
			(unsigned long long)t->dropped);
	kumo_buf_free(&t->pending);
	free(t->overlay);
	free(t->suspensions);
	free(t->bounces);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t);
}
