/* kumod's tsa-daemon client: one thread per tsa-daemon posts batched log records (JSON
 * lines) to POST /publish_log_v1 and polls GET /get_config_v1/shaping.toml,
 * GET /get_suspension_v1/suspended.json and GET /get_bounce_v1/bounced.json; what the
 * daemons last answered is combined (overlays merged by tsa_merge.c, suspensions and
 * bounces read and united by tsa_parse.c) and given to the engine whenever one answer
 * changes. */
#include "tsa.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/shaping.h"
#include "util/crc32c.h"
#include "util/json_read.h"

/* The documents each tsa-daemon serves. */
enum { DOC_OVERLAY, DOC_SUSPENSIONS, DOC_BOUNCES, NDOCS };
static const char *const doc_paths[NDOCS] = {"/get_config_v1/shaping.toml",
					     "/get_suspension_v1/suspended.json",
					     "/get_bounce_v1/bounced.json"};

struct tsa_peer {
	struct kumod_tsa *t;
	char *url;
	struct sockaddr_in addr;
	pthread_t thread;
	bool running;
	bool away;		  /* the last request failed; peer thread only */
	struct kumo_buf pending;  /* JSON lines waiting to be posted, under t->lock */
	uint64_t dropped, posted; /* records, under t->lock */
	uint64_t dropped_logged;  /* dropped when last logged; peer thread only */
	uint32_t refused[NDOCS];  /* CRC of the last answer refused (logged once); peer only */
	char *docs[NDOCS];	  /* the last usable answers, under t->conf_lock */
};

struct kumod_tsa {
	struct kumod_tsa_cfg cfg; /* urls not kept: each peer has its copy */
	struct kumo_engine *e;
	pthread_mutex_t lock; /* pending buffers, record counters, stop */
	pthread_cond_t cond;
	bool stop;
	pthread_mutex_t conf_lock; /* peers' docs, and what is given to the engine */
	bool retry[NDOCS];	   /* giving it to the engine failed: try at the next poll */
	size_t npeers;
	struct tsa_peer peers[];
};

int kumod_tsa_parse_url(const char *url, struct sockaddr_in *out)
{
	char host[16];
	unsigned port;
	int end = 0;
	if (!url || sscanf(url, "http://%15[0-9.]:%5u%n", host, &port, &end) != 2 || !end ||
	    !isdigit((unsigned char)url[7 + strlen(host) + 1]))
		return -EINVAL;
	if ((url[end] && strcmp(url + end, "/") != 0) || port == 0 || port > 65535)
		return -EINVAL;
	*out = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -EINVAL;
}

int kumod_tsa_check_urls(const char *const *urls, size_t n, size_t *at)
{
	struct sockaddr_in a[KUMOD_TSA_MAX_DAEMONS];
	*at = 0;
	if (n > KUMOD_TSA_MAX_DAEMONS)
		return -E2BIG;
	for (size_t i = 0; i < n; i++) {
		*at = i;
		if (kumod_tsa_parse_url(urls[i], &a[i]) < 0)
			return -EINVAL;
		for (size_t j = 0; j < i; j++)
			if (a[j].sin_addr.s_addr == a[i].sin_addr.s_addr &&
			    a[j].sin_port == a[i].sin_port)
				return -EEXIST;
	}
	return 0;
}

/* ---- publishing ------------------------------------------------------------------------ */

static uint64_t count_lines(const char *s, size_t n)
{
	uint64_t lines = 0;
	for (const char *p = s, *end = s + n; n && (p = memchr(p, '\n', (size_t)(end - p))); p++)
		lines++;
	return lines;
}

/* Drops whole lines from the front of p's pending records (the oldest) until at most keep
 * bytes remain; counts them as dropped. Under t->lock. */
static void drop_oldest(struct tsa_peer *p, size_t keep)
{
	struct kumo_buf *b = &p->pending;
	if (b->len <= keep)
		return;
	size_t cut = b->len - keep;
	const char *nl = memchr(b->data + cut - 1, '\n', b->len - cut + 1);
	size_t drop = nl ? (size_t)(nl - b->data) + 1 : b->len;
	p->dropped += count_lines(b->data, drop);
	kumo_buf_consume(b, drop);
}

void kumod_tsa_record(void *arg, const char *json, size_t len)
{
	struct kumod_tsa *t = arg;
	size_t max = t->cfg.max_pending;
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->npeers; i++) {
		struct tsa_peer *p = &t->peers[i];
		if (len + 1 > max / 4) {
			p->dropped++; /* a record a quarter of the bound: never held */
			continue;
		}
		/* full: a quarter of the oldest goes at once, so a stalled daemon costs a
		 * memmove per quarter buffer rather than one per record */
		if (p->pending.len + len + 1 > max)
			drop_oldest(p, max - max / 4 - len - 1);
		kumo_buf_append(&p->pending, json, len);
		kumo_buf_putc(&p->pending, '\n');
	}
	pthread_mutex_unlock(&t->lock);
}

/* One HTTP/1.1 request with Connection: close; the body of a 2xx reply goes to *resp.
 * Returns 0, -EBADMSG for a 4xx answer (the request itself is refused), -EPROTO for
 * another answer, or -errno. */
static int http(const struct sockaddr_in *addr, const char *method, const char *path,
		const char *body, size_t blen, struct kumo_buf *resp)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* connect() too */
	int err = 0;
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
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
		err = status / 100 == 4 ? -EBADMSG : -EPROTO;
	else if (resp)
		kumo_buf_append(resp, sep + 4, in.len - 1 - (size_t)(sep + 4 - in.data));
	kumo_buf_free(&in);
out:
	close(fd);
	return err;
}

/* Logs when a tsa-daemon goes away or comes back, not at every failed request. */
static void note(struct tsa_peer *p, int rc, const char *path)
{
	bool away = rc < 0 && rc != -EBADMSG;
	if (away == p->away)
		return;
	p->away = away;
	if (away)
		fprintf(stderr,
			"kumod: tsa-daemon %s unreachable (%s: %s): its records are held "
			"(at most %zu bytes, oldest dropped) and its last answers stay "
			"in force\n",
			p->url, path, strerror(-rc), p->t->cfg.max_pending);
	else
		fprintf(stderr, "kumod: tsa-daemon %s reachable again\n", p->url);
}

/* Bytes per POST: well under tsa-daemon's max_body_size (8 MiB by default), so that a
 * backlog is posted in several requests rather than refused as one. */
#define TSA_MAX_POST (1u << 20)

/* The length of the first batch of whole lines of s[0..n): at most TSA_MAX_POST bytes, or
 * the first line when that is longer. */
static size_t batch_len(const char *s, size_t n)
{
	if (n <= TSA_MAX_POST)
		return n;
	const char *nl = memrchr(s, '\n', TSA_MAX_POST);
	if (!nl)
		nl = memchr(s, '\n', n);
	return nl ? (size_t)(nl - s) + 1 : n;
}

static void publish(struct tsa_peer *p)
{
	struct kumod_tsa *t = p->t;
	pthread_mutex_lock(&t->lock);
	struct kumo_buf batch = p->pending;
	p->pending = (struct kumo_buf){0};
	pthread_mutex_unlock(&t->lock);
	size_t off = 0;
	uint64_t posted = 0, refused = 0;
	int rc = 0;
	while (off < batch.len) {
		size_t n = batch_len(batch.data + off, batch.len - off);
		rc = http(&p->addr, "POST", "/publish_log_v1", batch.data + off, n, NULL);
		if (rc < 0 && rc != -EBADMSG)
			break;
		/* a batch refused as it is (4xx) is dropped: sending it again would not help */
		if (rc == 0)
			posted += count_lines(batch.data + off, n);
		else
			refused += count_lines(batch.data + off, n);
		off += n;
	}
	if (batch.len)
		note(p, rc, "/publish_log_v1");
	pthread_mutex_lock(&t->lock);
	p->posted += posted;
	p->dropped += refused;
	if (off < batch.len) {
		/* back in front of what came meanwhile, for the next try, within the bound */
		kumo_buf_consume(&batch, off);
		kumo_buf_append(&batch, p->pending.data, p->pending.len);
		kumo_buf_free(&p->pending);
		p->pending = batch;
		batch = (struct kumo_buf){0};
		drop_oldest(p, t->cfg.max_pending);
	}
	pthread_mutex_unlock(&t->lock);
	if (refused)
		fprintf(stderr, "kumod: tsa-daemon %s refused %" PRIu64 " records\n", p->url,
			refused);
	kumo_buf_free(&batch);
}

/* Logs the records dropped for p since the last call. */
static void log_drops(struct tsa_peer *p)
{
	pthread_mutex_lock(&p->t->lock);
	uint64_t dropped = p->dropped;
	pthread_mutex_unlock(&p->t->lock);
	if (dropped == p->dropped_logged)
		return;
	fprintf(stderr,
		"kumod: tsa-daemon %s: %" PRIu64 " log records dropped (%" PRIu64 " in all)\n",
		p->url, dropped - p->dropped_logged, dropped);
	p->dropped_logged = dropped;
}

int kumod_tsa_stats(struct kumod_tsa *t, size_t i, struct kumod_tsa_stats *out)
{
	if (i >= t->npeers)
		return -ENOENT;
	pthread_mutex_lock(&t->lock);
	*out = (struct kumod_tsa_stats){.pending = t->peers[i].pending.len,
					.dropped = t->peers[i].dropped,
					.posted = t->peers[i].posted};
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/* ---- polling and applying ---------------------------------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define TSA_MAX_ENTRIES 4096
#define TSA_STORAGE (2u << 20)

/* Gives the engine the union of every daemon's suspended.json (bounces false) or
 * bounced.json. 0, or -errno when it could not be applied. */
static int apply_list(struct kumod_tsa *t, const char *const *docs, bool bounces)
{
	union {
		struct kumo_suspension s[TSA_MAX_ENTRIES];
		struct kumo_bounce b[TSA_MAX_ENTRIES];
	} *v = malloc(sizeof(*v) + TSA_STORAGE);
	if (!v)
		return -ENOMEM;
	char *storage = (char *)(v + 1);
	uint64_t now = now_ms();
	int rc = bounces ? kumo_engine_set_bounces(t->e, v->b,
						   (size_t)kumod_tsa_union_bounces(
						       docs, t->npeers, now, v->b, TSA_MAX_ENTRIES,
						       storage, TSA_STORAGE))
			 : kumo_engine_set_suspensions(t->e, v->s,
						       (size_t)kumod_tsa_union_suspensions(
							   docs, t->npeers, now, v->s,
							   TSA_MAX_ENTRIES, storage, TSA_STORAGE));
	free(v);
	return rc;
}

/* Gives the engine the merge of every daemon's overlay. */
static int apply_overlay(struct kumod_tsa *t, const char *const *docs, char *err, size_t errcap)
{
	struct kumo_buf b = {0};
	int rc = kumod_tsa_merge_overlays(docs, t->npeers, &b, err, errcap);
	if (!rc)
		rc =
		    kumo_engine_set_shaping_overlay(t->e, b.data ? b.data : "", b.len, err, errcap);
	kumo_buf_free(&b);
	return rc;
}

/* Combines document d of every daemon and gives it to the engine. Under t->conf_lock. */
static void apply(struct kumod_tsa *t, int d)
{
	const char *docs[KUMOD_TSA_MAX_DAEMONS];
	char err[512] = "";
	for (size_t i = 0; i < t->npeers; i++)
		docs[i] = t->peers[i].docs[d];
	int rc = d == DOC_OVERLAY ? apply_overlay(t, docs, err, sizeof(err))
				  : apply_list(t, docs, d == DOC_BOUNCES);
	t->retry[d] = rc < 0 && rc != -EINVAL; /* a refusal stays one until an answer changes */
	if (rc < 0)
		fprintf(stderr, "kumod: tsa-daemons' %s not applied: %s\n", doc_paths[d],
			*err ? err : strerror(-rc));
}

/* Whether answer b of p for document d can be used on its own; says why not, once for
 * each refused answer. */
static bool usable(struct tsa_peer *p, int d, const struct kumo_buf *b)
{
	const char *text = b->data ? b->data : "";
	char err[512] = "not valid JSON";
	int rc;
	if (d == DOC_OVERLAY) {
		struct kumo_shaping_text st = {.name = p->url, .data = text, .len = b->len};
		struct kumo_shaping *sh = NULL;
		rc = kumo_shaping_load_texts(&st, 1, &sh, err, sizeof(err));
		kumo_shaping_free(sh);
	} else {
		struct kumo_json_doc *doc = NULL;
		rc = kumo_json_parse(text, b->len, NULL, &doc, NULL);
		kumo_json_doc_free(doc);
	}
	uint32_t crc = kumo_crc32c(0, text, b->len) | 1; /* 0: nothing refused yet */
	if (rc < 0 && crc != p->refused[d])
		fprintf(stderr, "kumod: tsa-daemon %s: %s refused, its previous answer stays: %s\n",
			p->url, doc_paths[d], err);
	p->refused[d] = rc < 0 ? crc : 0;
	return rc == 0;
}

static bool same(const char *last, const struct kumo_buf *b)
{
	return last && strlen(last) == b->len && memcmp(last, b->data, b->len) == 0;
}

/* *last = b's text; false when memory ran out (tried again at the next poll). */
static bool replace(char **last, const struct kumo_buf *b)
{
	char *copy = strndup(b->data ? b->data : "", b->len);
	if (!copy)
		return false;
	free(*last);
	*last = copy;
	return true;
}

static void poll_peer(struct tsa_peer *p)
{
	struct kumod_tsa *t = p->t;
	struct kumo_buf b = {0};
	for (int d = 0; d < NDOCS; d++) {
		b.len = 0;
		int rc = http(&p->addr, "GET", doc_paths[d], NULL, 0, &b);
		note(p, rc, doc_paths[d]);
		if (rc < 0 || b.oom)
			continue; /* unreachable: its last answer stays in force */
		/* p->docs are written by this thread only: read without the lock */
		bool changed = !same(p->docs[d], &b) && usable(p, d, &b);
		pthread_mutex_lock(&t->conf_lock);
		if ((changed && replace(&p->docs[d], &b)) || t->retry[d])
			apply(t, d);
		pthread_mutex_unlock(&t->conf_lock);
	}
	kumo_buf_free(&b);
}

static void *run(void *arg)
{
	struct tsa_peer *p = arg;
	struct kumod_tsa *t = p->t;
	uint64_t next_poll = 0;
	pthread_mutex_lock(&t->lock);
	while (!t->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&t->cond, &t->lock, &ts);
		if (t->stop)
			break;
		pthread_mutex_unlock(&t->lock);
		publish(p);
		if (now_ms() >= next_poll) {
			poll_peer(p);
			log_drops(p);
			next_poll = now_ms() + t->cfg.poll_ms;
		}
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	publish(p);
	log_drops(p);
	return NULL;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static void free_tsa(struct kumod_tsa *t)
{
	for (size_t i = 0; i < t->npeers; i++) {
		struct tsa_peer *p = &t->peers[i];
		kumo_buf_free(&p->pending);
		for (int d = 0; d < NDOCS; d++)
			free(p->docs[d]);
		free(p->url);
	}
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->conf_lock);
	pthread_cond_destroy(&t->cond);
	free(t);
}

int kumod_tsa_new(const struct kumod_tsa_cfg *cfg, struct kumod_tsa **out)
{
	size_t at;
	if (!cfg->nurls || kumod_tsa_check_urls(cfg->urls, cfg->nurls, &at) < 0)
		return -EINVAL;
	struct kumod_tsa *t = calloc(1, sizeof(*t) + cfg->nurls * sizeof(t->peers[0]));
	if (!t)
		return -ENOMEM;
	t->cfg = *cfg;
	t->cfg.urls = NULL;
	t->cfg.poll_ms = cfg->poll_ms ? cfg->poll_ms : 5000;
	t->cfg.max_pending = cfg->max_pending ? cfg->max_pending : 16u << 20;
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->conf_lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	for (; t->npeers < cfg->nurls; t->npeers++) {
		struct tsa_peer *p = &t->peers[t->npeers];
		p->t = t;
		kumod_tsa_parse_url(cfg->urls[t->npeers], &p->addr);
		if (!(p->url = strdup(cfg->urls[t->npeers]))) {
			free_tsa(t);
			return -ENOMEM;
		}
	}
	*out = t;
	return 0;
}

int kumod_tsa_start(struct kumod_tsa *t, struct kumo_engine *e)
{
	t->e = e;
	for (size_t i = 0; i < t->npeers; i++) {
		int err = pthread_create(&t->peers[i].thread, NULL, run, &t->peers[i]);
		if (err)
			return -err; /* kumod_tsa_stop() joins those that started */
		t->peers[i].running = true;
		fprintf(stderr,
			"kumod: tsa-daemon %s: publishing log records, polling every %u ms\n",
			t->peers[i].url, t->cfg.poll_ms);
	}
	return 0;
}

void kumod_tsa_stop(struct kumod_tsa *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	for (size_t i = 0; i < t->npeers; i++) {
		struct tsa_peer *p = &t->peers[i];
		if (p->running)
			pthread_join(p->thread, NULL);
		if (p->pending.len) /* the last post failed too */
			fprintf(stderr,
				"kumod: tsa-daemon %s: %" PRIu64 " log records never "
				"posted\n",
				p->url, count_lines(p->pending.data, p->pending.len));
	}
	free_tsa(t);
}
