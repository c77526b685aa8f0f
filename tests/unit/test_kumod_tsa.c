/* Unit tests for kumod's tsa-daemon client: bounced.json as tsa-daemon writes it becomes
 * the engine's bounces (Bounce, BounceTenant, BounceCampaign), expired and unusable
 * entries are left out, and limits of the caller's arrays hold; the [tsa] url/urls keys;
 * how the answers of several tsa-daemons combine (overlays merged, suspensions and
 * bounces united); the bounded buffer each tsa-daemon gets. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "engine/shaping.h"
#include "tsa.h"
#include "util/toml.h"

/* 2030-01-01T00:00:00Z and an hour later, in Unix ms */
#define T2030 1893456000000ull
#define NOW (T2030 - 60000)

static const char three[] =
    "[{\"rule_hash\":\"a1\",\"domain\":\"gone.test\",\"tenant\":null,\"campaign\":null,"
    "\"reason\":\"automation rule s.toml:3 regex 5\\\\.1\\\\.1 matched: 550 5.1.1 no\","
    "\"expires\":\"2030-01-01T00:00:00Z\"},"
    "{\"rule_hash\":\"b2\",\"domain\":\"bad.test\",\"tenant\":\"acme\",\"campaign\":null,"
    "\"reason\":\"t\",\"expires\":\"2030-01-01T01:00:00.250Z\"},"
    "{\"rule_hash\":\"c3\",\"domain\":\"bad.test\",\"tenant\":\"acme\","
    "\"campaign\":\"spring\",\"reason\":\"c\",\"expires\":\"2030-01-01T00:00:00Z\"}]\n";

static void test_kinds(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	long n =
	    kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 8, storage, sizeof(storage));
	assert_int_equal(n, 3);
	assert_string_equal(b[0].domain, "gone.test");
	assert_null(b[0].tenant);
	assert_null(b[0].campaign);
	assert_string_equal(b[0].reason, "automation rule s.toml:3 regex 5\\.1\\.1 matched: "
					 "550 5.1.1 no");
	assert_int_equal(b[0].expires_ms, T2030);
	assert_string_equal(b[1].domain, "bad.test");
	assert_string_equal(b[1].tenant, "acme");
	assert_null(b[1].campaign);
	assert_int_equal(b[1].expires_ms, T2030 + 3600000); /* whole seconds are enough */
	assert_string_equal(b[2].campaign, "spring");
	assert_string_equal(b[2].tenant, "acme");
	/* strings live in storage, not in the JSON text */
	assert_true(b[2].campaign >= storage && b[2].campaign < storage + sizeof(storage));
}

static void test_expired_and_empty(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	/* at the first expiry only the second entry is still active */
	assert_int_equal(kumod_tsa_parse_bounces(three, sizeof(three) - 1, T2030, b, 8, storage,
						 sizeof(storage)),
			 1);
	assert_string_equal(b[0].tenant, "acme");
	assert_null(b[0].campaign);
	static const char none[] = "[]";
	assert_int_equal(kumod_tsa_parse_bounces(none, 2, NOW, b, 8, storage, sizeof(storage)), 0);
	/* no domain, tenant or campaign: it would bounce every queue, so it is left out */
	static const char all[] = "[{\"domain\":\"\",\"tenant\":null,\"campaign\":null,"
				  "\"reason\":\"r\",\"expires\":\"2030-01-01T00:00:00Z\"},"
				  "{\"domain\":\"x.test\",\"reason\":\"r\",\"expires\":\"junk\"},"
				  "{\"domain\":\"y.test\",\"expires\":\"2030-01-01T00:00:00Z\"}]";
	assert_int_equal(
	    kumod_tsa_parse_bounces(all, sizeof(all) - 1, NOW, b, 8, storage, sizeof(storage)), 1);
	assert_string_equal(b[0].domain, "y.test");
	assert_null(b[0].reason);
}

static void test_limits_and_errors(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	assert_int_equal(
	    kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 2, storage, sizeof(storage)),
	    2);
	/* room for the first entry's strings only: the others are left out, not cut */
	char small[80];
	assert_int_equal(
	    kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 8, small, sizeof(small)), 1);
	assert_string_equal(b[0].domain, "gone.test");
	static const char bad[] = "[{\"domain\":";
	assert_int_equal(
	    kumod_tsa_parse_bounces(bad, sizeof(bad) - 1, NOW, b, 8, storage, sizeof(storage)),
	    -EINVAL);
	/* not an array (suspended.json by mistake): nothing */
	static const char obj[] = "{\"ready_q\":[],\"sched_q\":[]}";
	assert_int_equal(
	    kumod_tsa_parse_bounces(obj, sizeof(obj) - 1, NOW, b, 8, storage, sizeof(storage)), 0);
}

/* ---- [tsa] url / urls -------------------------------------------------------------- */

static int parse(const char *text, struct kumod_config *c, char *err)
{
	return kumod_config_parse(text, strlen(text), "k.toml", c, err, 512);
}

static void test_config_urls(void **state)
{
	struct kumod_config c;
	char err[512];
	assert_int_equal(parse("[tsa]\nurls = [\"http://127.0.0.1:8008\",\n"
			       "        \"http://10.0.0.2:8008/\"]\npoll_interval = \"2s\"\n"
			       "max_pending = \"1MB\"\n",
			       &c, err),
			 0);
	assert_int_equal(c.ntsa_urls, 2);
	assert_string_equal(c.tsa_urls[0], "http://127.0.0.1:8008");
	assert_string_equal(c.tsa_urls[1], "http://10.0.0.2:8008/");
	assert_int_equal(c.tsa_poll_ms, 2000);
	assert_int_equal(c.tsa_max_pending, 1 << 20);
	kumod_config_free(&c);
	/* url alone still works: one tsa-daemon */
	assert_int_equal(parse("[tsa]\nurl = \"http://127.0.0.1:8008\"\n", &c, err), 0);
	assert_int_equal(c.ntsa_urls, 1);
	assert_string_equal(c.tsa_urls[0], "http://127.0.0.1:8008");
	kumod_config_free(&c);
	assert_int_equal(parse("[tsa]\npoll_interval = \"2s\"\n", &c, err), 0);
	assert_int_equal(c.ntsa_urls, 0);
	kumod_config_free(&c);
}

static void test_config_url_errors(void **state)
{
	static const struct {
		const char *text, *err;
	} cases[] = {
	    {"[tsa]\nurl = \"http://127.0.0.1:1\"\nurls = [\"http://127.0.0.1:2\"]\n",
	     "k.toml:3: key 'tsa.urls': url and urls exclude each other"},
	    {"[tsa]\nurls = [\"http://127.0.0.1:8008\",\n\"http://127.0.0.1:8008/\"]\n",
	     "k.toml:3: key 'tsa.urls': \"http://127.0.0.1:8008/\" names a tsa-daemon listed"},
	    {"[tsa]\nurls = [\n\"http://127.0.0.1:8008\",\n\"http://tsa.example:8008\"]\n",
	     "k.toml:4: key 'tsa.urls': expected \"http://ip:port\", got "
	     "\"http://tsa.example:8008\""},
	    {"[tsa]\nurls = []\n", "k.toml:2: key 'tsa.urls': empty"},
	    {"[tsa]\nurls = \"http://127.0.0.1:8008\"\n",
	     "k.toml:2: key 'tsa.urls': expected an array of strings"},
	    {"[tsa]\nurl = \"http://127.0.0.1:80/x\"\n",
	     "k.toml:2: key 'tsa.url': expected \"http://ip:port\""},
	    {"[tsa]\nurl = \"http://127.0.0.1:0\"\n", "k.toml:2: key 'tsa.url': expected"},
	    {"[tsa]\nurl = \"http://127.0.0.1:65536\"\n", "k.toml:2: key 'tsa.url': expected"},
	    {"[tsa]\nurl = \"http://127.0.0.1: 80\"\n", "k.toml:2: key 'tsa.url': expected"},
	    {"[tsa]\nurl = \"http://127.0.0.1:8008\"\nmax_pending = 100\n",
	     "k.toml:3: key 'tsa.max_pending': at least 4096 bytes"},
	    {"[tsa]\nurl = \"http://127.0.0.1:8008\"\nurlz = 1\n",
	     "k.toml:3: key 'tsa.urlz': unknown key"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumod_config c;
		char err[512] = "";
		assert_int_equal(parse(cases[i].text, &c, err), -EINVAL);
		if (strncmp(err, cases[i].err, strlen(cases[i].err)) != 0)
			fail_msg("case %zu: %s", i, err);
	}
	/* 17 tsa-daemons are more than kumod takes */
	char text[2048] = "[tsa]\nurls = [";
	for (int i = 0; i < KUMOD_TSA_MAX_DAEMONS + 1; i++)
		snprintf(text + strlen(text), sizeof(text) - strlen(text),
			 "%s\"http://127.0.0.1:%d\"", i ? ", " : "", 8000 + i);
	strcat(text, "]\n");
	struct kumod_config c;
	char err[512];
	assert_int_equal(parse(text, &c, err), -EINVAL);
	assert_non_null(strstr(err, "k.toml:2: key 'tsa.urls': too many entries"));
}

/* ---- combining the answers of several tsa-daemons -------------------------------------- */

/* Overlays as tsa-daemon writes them: both have ["gmail.com"] and its ip-1 source. */
static const char overlay_a[] =
    "# Generated by tsa-daemon\n# Number of entries: 2\n\n"
    "[\"gmail.com\"]\nmx_rollup = true\n"
    "# reason: r\nmax_message_rate = \"100/h\"\n\n"
    "[\"gmail.com\".sources.\"ip-1\"]\nmax_connection_rate = \"10/h\"\n";
static const char overlay_b[] =
    "# Generated by tsa-daemon\n# Number of entries: 3\n\n"
    "[\"gmail.com\"]\nmx_rollup = true\nconnection_limit = 3\n\n"
    "[\"gmail.com\".sources.\"ip-1\"]\nmax_connection_rate = \"5/h\"\n\n"
    "[\"yahoo.com\"]\nmx_rollup = false\nmax_deliveries_per_connection = 7\n";

static void test_overlays_concatenated_are_refused(void **state)
{
	/* why kumod merges rather than concatenates: the strict TOML reader refuses a table
	 * defined twice */
	char both[1024];
	snprintf(both, sizeof(both), "%s%s", overlay_a, overlay_b);
	struct kumo_toml_doc *doc;
	struct kumo_toml_error te;
	assert_int_equal(kumo_toml_parse(both, strlen(both), &doc, &te), -EINVAL);
	assert_string_equal(te.msg, "table defined more than once");
}

static struct kumo_shaping *load_merged(const char *const *docs, size_t n, struct kumo_buf *b)
{
	char err[512] = "";
	assert_int_equal(kumod_tsa_merge_overlays(docs, n, b, err, sizeof(err)), 0);
	struct kumo_shaping_text t = {.name = "<merged>", .data = b->data, .len = b->len};
	struct kumo_shaping *sh = NULL;
	if (kumo_shaping_load_texts(&t, 1, &sh, err, sizeof(err)) < 0)
		fail_msg("merged overlay refused: %s\n%.*s", err, (int)b->len, b->data);
	return sh;
}

static void test_overlays_merge(void **state)
{
	const char *docs[] = {overlay_a, NULL, overlay_b}; /* the second has not answered */
	struct kumo_buf b = {0};
	struct kumo_shaping *sh = load_merged(docs, 3, &b);
	struct kumo_shaping_params p;
	/* settings of both daemons for gmail.com apply */
	assert_int_equal(kumo_shaping_effective(sh, "gmail.com", NULL, 0, "ip-1", &p), 0);
	assert_int_equal(p.max_message_rate.count, 100); /* from the first */
	assert_int_equal(p.max_message_rate.period_ms, 3600000);
	assert_int_equal(p.connection_limit.limit, 3); /* from the second */
	/* both set max_connection_rate for ip-1: the later daemon's value wins */
	assert_int_equal(p.max_connection_rate.count, 5);
	/* another source: no source override */
	assert_int_equal(kumo_shaping_effective(sh, "gmail.com", NULL, 0, "ip-2", &p), 0);
	assert_int_equal(p.max_connection_rate.count, 0);
	/* a domain only the second daemon names */
	assert_int_equal(kumo_shaping_effective(sh, "yahoo.com", NULL, 0, NULL, &p), 0);
	assert_int_equal(p.max_deliveries_per_connection, 7);
	assert_false(p.mx_rollup);
	kumo_shaping_free(sh);
	kumo_buf_free(&b);
}

static void test_overlays_merge_values(void **state)
{
	/* every TOML value type survives the merge; a key that is a table in one overlay and
	 * a value in a later one takes the later value */
	const char *docs[] = {
	    "x = {a = 1}\n[\"d.test\"]\nconnection_limit = 2\n"
	    "[[\"d.test\".automation]]\nregex = \"a\\\\d\\\"\"\naction = \"Suspend\"\n"
	    "duration = \"1h\"\n",
	    "x = 1.5\ny = [1, -2]\nz = 1979-05-27T07:32:00Z\nw = \"tab\\there\\u0001\"\n"
	    "[\"d.test\"]\nmx_rollup = false\n[\"e.test\".sources.\"ip-1\"]\nconnection_limit = "
	    "4\n"};
	struct kumo_buf b = {0};
	char err[512] = "";
	assert_int_equal(kumod_tsa_merge_overlays(docs, 2, &b, err, sizeof(err)), 0);
	kumo_buf_putc(&b, 0);
	struct kumo_toml_doc *doc;
	struct kumo_toml_error te;
	if (kumo_toml_parse(b.data, b.len - 1, &doc, &te) < 0)
		fail_msg("%s at %d: %s", te.msg, te.line, b.data);
	const struct kumo_toml_value *r = kumo_toml_root(doc), *d = kumo_toml_get(r, "d.test");
	double f;
	int64_t i;
	bool yes;
	assert_int_equal(kumo_toml_float(kumo_toml_get(r, "x"), &f), 0);
	assert_true(f == 1.5);
	assert_int_equal(kumo_toml_int(kumo_toml_at(kumo_toml_get(r, "y"), 1), &i), 0);
	assert_int_equal(i, -2);
	assert_string_equal(kumo_toml_string(kumo_toml_get(r, "z"), NULL), "1979-05-27T07:32:00Z");
	assert_string_equal(kumo_toml_string(kumo_toml_get(r, "w"), NULL), "tab\there\x01");
	assert_int_equal(kumo_toml_int(kumo_toml_get(d, "connection_limit"), &i), 0);
	assert_int_equal(i, 2);
	assert_int_equal(kumo_toml_bool(kumo_toml_get(d, "mx_rollup"), &yes), 0);
	assert_false(yes);
	const struct kumo_toml_value *rule = kumo_toml_at(kumo_toml_get(d, "automation"), 0);
	assert_string_equal(kumo_toml_string(kumo_toml_get(rule, "regex"), NULL), "a\\d\"");
	assert_int_equal(
	    kumo_toml_int(
		kumo_toml_get(
		    kumo_toml_get(kumo_toml_get(kumo_toml_get(r, "e.test"), "sources"), "ip-1"),
		    "connection_limit"),
		&i),
	    0);
	assert_int_equal(i, 4);
	kumo_toml_free(doc);
	/* a document that is not TOML is named in the error */
	docs[1] = "[\"d.test\"\n";
	b.len = 0;
	assert_int_equal(kumod_tsa_merge_overlays(docs, 2, &b, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "<overlay 2>:1:"));
	kumo_buf_free(&b);
}

static const char susp_a[] =
    "{\"ready_q\":[{\"rule_hash\":\"a\",\"site_name\":\"ip-1->mx.a.test\",\"site\":\"mx.a.test\","
    "\"source\":\"ip-1\",\"domain\":\"a.test\",\"reason\":\"r\","
    "\"expires\":\"2030-01-01T00:00:00Z\"}],"
    "\"sched_q\":[{\"rule_hash\":\"t\",\"domain\":\"a.test\",\"tenant\":\"acme\","
    "\"campaign\":null,\"reason\":\"r\",\"expires\":\"2029-12-31T23:59:30Z\"}]}";
static const char susp_b[] =
    "{\"ready_q\":[{\"rule_hash\":\"b\",\"site_name\":\"IP-1->MX.A.TEST\",\"site\":\"mx.a.test\","
    "\"source\":\"ip-1\",\"domain\":\"a.test\",\"reason\":\"r\","
    "\"expires\":\"2030-01-01T01:00:00Z\"},"
    "{\"rule_hash\":\"c\",\"site_name\":\"unspecified->mx.b.test\",\"site\":\"mx.b.test\","
    "\"source\":\"unspecified\",\"domain\":\"b.test\",\"reason\":\"r\","
    "\"expires\":\"2030-01-01T00:00:00Z\"}],\"sched_q\":[]}";

static void test_union_suspensions(void **state)
{
	const char *docs[] = {susp_a, NULL, "not json", susp_b};
	struct kumo_suspension s[8];
	char storage[4096];
	long n = kumod_tsa_union_suspensions(docs, 4, NOW, s, 8, storage, sizeof(storage));
	assert_int_equal(n, 3);
	/* the same ready queue from both daemons, once, with the later expiry */
	assert_int_equal(s[0].kind, KUMO_SUSPEND_SITE);
	assert_string_equal(s[0].name, "ip-1->mx.a.test");
	assert_int_equal(s[0].expires_ms, T2030 + 3600000);
	assert_int_equal(s[1].kind, KUMO_SUSPEND_TENANT);
	assert_string_equal(s[1].name, "acme");
	/* only the second daemon suspends b.test's site */
	assert_int_equal(s[2].kind, KUMO_SUSPEND_SITE);
	assert_string_equal(s[2].name, "mx.b.test");
	/* later, what the first daemon said has expired; the second daemon's still holds */
	n = kumod_tsa_union_suspensions(docs, 4, T2030, s, 8, storage, sizeof(storage));
	assert_int_equal(n, 1);
	assert_string_equal(s[0].name, "IP-1->MX.A.TEST");
	/* the caller's limits hold across documents */
	assert_int_equal(kumod_tsa_union_suspensions(docs, 4, NOW, s, 2, storage, sizeof(storage)),
			 2);
	assert_int_equal(kumod_tsa_union_suspensions(docs, 4, NOW, s, 8, storage, 20), 1);
}

static void test_union_bounces(void **state)
{
	static const char other[] =
	    "[{\"rule_hash\":\"d4\",\"domain\":\"only-b.test\",\"tenant\":null,"
	    "\"campaign\":null,\"reason\":\"b\",\"expires\":\"2030-01-01T00:00:00Z\"}]";
	const char *docs[] = {three, other};
	struct kumo_bounce b[8];
	char storage[4096];
	long n = kumod_tsa_union_bounces(docs, 2, NOW, b, 8, storage, sizeof(storage));
	assert_int_equal(n, 4);
	assert_string_equal(b[0].domain, "gone.test");
	assert_string_equal(b[3].domain, "only-b.test");
	assert_string_equal(b[3].reason, "b");
	/* strings of both documents live in storage, none overwritten */
	assert_string_equal(b[2].campaign, "spring");
	docs[0] = NULL;
	n = kumod_tsa_union_bounces(docs, 2, NOW, b, 8, storage, sizeof(storage));
	assert_int_equal(n, 1);
	assert_string_equal(b[0].domain, "only-b.test");
}

/* ---- one bounded buffer per tsa-daemon ---------------------------------------------------- */

static void test_pending_bounded_per_daemon(void **state)
{
	const char *urls[] = {"http://127.0.0.1:1", "http://127.0.0.1:2"};
	struct kumod_tsa_cfg cfg = {.urls = urls, .nurls = 2, .max_pending = 4096};
	struct kumod_tsa *t;
	assert_int_equal(kumod_tsa_new(&cfg, &t), 0);
	char rec[100];
	memset(rec, 'x', sizeof(rec));
	for (int i = 0; i < 1000; i++)
		kumod_tsa_record(t, rec, sizeof(rec));
	for (size_t i = 0; i < 2; i++) {
		struct kumod_tsa_stats st;
		assert_int_equal(kumod_tsa_stats(t, i, &st), 0);
		/* never more than the bound; what is held or dropped is whole records */
		assert_true(st.pending <= 4096);
		assert_int_equal(st.pending % 101, 0);
		assert_int_equal(st.dropped + st.pending / 101, 1000);
		assert_true(st.dropped > 900);
		assert_int_equal(st.posted, 0);
	}
	/* a record larger than a quarter of the bound is never held */
	char big[1100] = {0};
	kumod_tsa_record(t, big, sizeof(big));
	struct kumod_tsa_stats st;
	assert_int_equal(kumod_tsa_stats(t, 1, &st), 0);
	assert_int_equal(st.dropped + st.pending / 101, 1001);
	assert_int_equal(kumod_tsa_stats(t, 2, &st), -ENOENT);
	kumod_tsa_stop(t);
	/* the same daemon twice, or a bad URL, is refused */
	const char *dup[] = {"http://127.0.0.1:8008", "http://127.0.0.1:8008/"};
	cfg = (struct kumod_tsa_cfg){.urls = dup, .nurls = 2};
	assert_int_equal(kumod_tsa_new(&cfg, &t), -EINVAL);
	cfg.nurls = 0;
	assert_int_equal(kumod_tsa_new(&cfg, &t), -EINVAL);
	size_t at;
	assert_int_equal(kumod_tsa_check_urls(dup, 2, &at), -EEXIST);
	assert_int_equal(at, 1);
}

/* A stand-in tsa-daemon: answers each POST with the next status of its script (the last
 * one repeats) and records the body sizes; GETs get 404, so nothing reaches an engine. */
struct fake {
	int fd, port;
	int script[4];
	size_t nscript, posts;
	size_t body[64];
	pthread_mutex_t lock;
};

static size_t read_request(int c, char *buf, size_t cap, bool *post)
{
	size_t got = 0, clen = 0;
	char *end = NULL;
	ssize_t n;
	while (!end && got < cap - 1 && (n = recv(c, buf + got, cap - 1 - got, 0)) > 0) {
		buf[got += (size_t)n] = 0;
		end = strstr(buf, "\r\n\r\n");
	}
	if (!end)
		return 0;
	char *cl = strstr(buf, "Content-Length: ");
	clen = cl ? strtoul(cl + 16, NULL, 10) : 0;
	*post = strncmp(buf, "POST", 4) == 0;
	size_t have = got - (size_t)(end + 4 - buf);
	static char sink[65536];
	while (have < clen && (n = recv(c, sink, sizeof(sink), 0)) > 0)
		have += (size_t)n;
	return clen;
}

static void *fake_run(void *arg)
{
	struct fake *f = arg;
	int c;
	while ((c = accept(f->fd, NULL, NULL)) >= 0) {
		char buf[8192];
		bool post = false;
		size_t len = read_request(c, buf, sizeof(buf), &post);
		pthread_mutex_lock(&f->lock);
		int status = 404;
		if (post) {
			size_t i = f->posts < f->nscript ? f->posts : f->nscript - 1;
			status = f->script[i];
			if (f->posts < 64)
				f->body[f->posts] = len;
			f->posts++;
		}
		pthread_mutex_unlock(&f->lock);
		char reply[128];
		int rl = snprintf(reply, sizeof(reply),
				  "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
				  status);
		send(c, reply, (size_t)rl, MSG_NOSIGNAL);
		close(c);
	}
	return NULL;
}

static void fake_start(struct fake *f, pthread_t *th)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	f->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(f->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(f->fd, 16), 0);
	getsockname(f->fd, (struct sockaddr *)&a, &al);
	f->port = ntohs(a.sin_port);
	pthread_mutex_init(&f->lock, NULL);
	assert_int_equal(pthread_create(th, NULL, fake_run, f), 0);
}

static struct kumod_tsa_stats wait_stats(struct kumod_tsa *t, uint64_t posted, uint64_t dropped)
{
	struct kumod_tsa_stats st;
	for (int i = 0; i < 100; i++) {
		kumod_tsa_stats(t, 0, &st);
		if (st.posted >= posted && st.dropped >= dropped)
			break;
		usleep(100000);
	}
	return st;
}

static void test_publish_retry_split_refuse(void **state)
{
	struct fake f = {.script = {503, 200}, .nscript = 2};
	pthread_t th;
	fake_start(&f, &th);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", f.port);
	const char *urls[] = {url};
	struct kumod_tsa_cfg cfg = {
	    .urls = urls, .nurls = 1, .max_pending = 8u << 20, .poll_ms = 60000};
	struct kumod_tsa *t;
	assert_int_equal(kumod_tsa_new(&cfg, &t), 0);
	/* 2.5 MiB of records: more than one POST may carry */
	char rec[999];
	memset(rec, 'r', sizeof(rec));
	for (int i = 0; i < 2560; i++)
		kumod_tsa_record(t, rec, sizeof(rec));
	assert_int_equal(kumod_tsa_start(t, NULL), 0);
	/* the first POST fails (503): the records are kept and posted a second later */
	struct kumod_tsa_stats st = wait_stats(t, 2560, 0);
	assert_int_equal(st.posted, 2560);
	assert_int_equal(st.dropped, 0);
	assert_int_equal(st.pending, 0);
	pthread_mutex_lock(&f.lock);
	assert_true(f.posts >= 4); /* the refused one, then at least three of <= 1 MiB */
	size_t total = 0;
	for (size_t i = 1; i < f.posts; i++) {
		assert_true(f.body[i] <= 1u << 20);
		assert_int_equal(f.body[i] % 1000, 0); /* whole records */
		total += f.body[i];
	}
	assert_int_equal(total, 2560 * 1000);
	/* from now on tsa-daemon refuses what it gets (422): dropped, not sent again */
	f.script[0] = f.script[1] = 422;
	size_t posts = f.posts;
	pthread_mutex_unlock(&f.lock);
	for (int i = 0; i < 10; i++)
		kumod_tsa_record(t, rec, sizeof(rec));
	st = wait_stats(t, 0, 10);
	assert_int_equal(st.dropped, 10);
	assert_int_equal(st.posted, 2560);
	usleep(1500000);
	pthread_mutex_lock(&f.lock);
	assert_int_equal(f.posts, posts + 1);
	pthread_mutex_unlock(&f.lock);
	kumod_tsa_stop(t);
	shutdown(f.fd, SHUT_RDWR);
	close(f.fd);
	pthread_join(th, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_kinds),
	    cmocka_unit_test(test_expired_and_empty),
	    cmocka_unit_test(test_limits_and_errors),
	    cmocka_unit_test(test_config_urls),
	    cmocka_unit_test(test_config_url_errors),
	    cmocka_unit_test(test_overlays_concatenated_are_refused),
	    cmocka_unit_test(test_overlays_merge),
	    cmocka_unit_test(test_overlays_merge_values),
	    cmocka_unit_test(test_union_suspensions),
	    cmocka_unit_test(test_union_bounces),
	    cmocka_unit_test(test_pending_bounded_per_daemon),
	    cmocka_unit_test(test_publish_retry_split_refuse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
