/* Unit tests for tsa-daemon's core: PCRE2 rule matching, Immediate and Threshold triggers,
 * every action kind, the shaping overlay (loaded back by the shaping loader), expiry,
 * restoring, site binding learnt from records, record checks, and the SQLite store. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cmocka.h>

#include "engine.h"
#include "engine/shaping.h"
#include "rules.h"
#include "store.h"

static const char shaping[] =
    "[\"default\"]\n"
    "connection_limit = 10\n"
    "\n"
    "[[\"rate.test\".automation]]\n" /* line 4 */
    "regex = \"\\\\[TSS04\\\\]\"\n"
    "action = \"Suspend\"\n"
    "duration = \"3s\"\n"
    "\n"
    "[[\"rate.test\".automation]]\n" /* line 9 */
    "regex = \"(?<!no )limit\"\n"
    "action = [{SetConfig = {name = \"max_connection_rate\", value = \"10/h\"}},\n"
    "          {SetConfig = {name = \"connection_limit\", value = 2}},\n"
    "          {SetConfig = {name = \"odd \\\"name\\\"\", value = \"a\\\\b\\\"c\"}}]\n"
    "trigger = {Threshold = \"3/min\"}\n"
    "duration = \"1h\"\n"
    "\n"
    "[[\"rate.test\".automation]]\n"
    "regex = \"^4\\\\d\\\\d 4\\\\.2\\\\.1 \"\n"
    "action = [\"SuspendTenant\", \"SuspendCampaign\", \"Bounce\", \"BounceTenant\",\n"
    "          \"BounceCampaign\", {SetDomainConfig = {name = \"max_ready\", value = 5}}]\n"
    "duration = \"10m\"\n"
    "match_internal = true\n"
    "\n"
    "[[\"big.test\".automation]]\n"
    "regex = \"busy\"\n"
    "action = \"Suspend\"\n"
    "trigger = {Threshold = \"5000/h\"}\n"
    "duration = \"1h\"\n"
    "\n"
    "[\"gmail.test\"]\n"
    "[[\"gmail.test\".automation]]\n"
    "regex = \"gsite\"\n"
    "action = {SetConfig = {name = \"connection_limit\", value = \"3\"}}\n"
    "duration = \"1h\"\n";

struct fixture {
	char path[64];
	struct tsa_rules *rules;
	struct tsa_engine *engine;
	unsigned persisted;
	struct tsa_action last;
};

static void on_persist(void *arg, const struct tsa_action *a)
{
	struct fixture *f = arg;
	f->persisted++;
	tsa_action_clear(&f->last);
	assert_int_equal(tsa_action_copy(&f->last, a), 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[512];
	snprintf(f->path, sizeof(f->path), "/tmp/tsa-engine-XXXXXX");
	int fd = mkstemp(f->path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, shaping, sizeof(shaping) - 1), (ssize_t)sizeof(shaping) - 1);
	close(fd);
	const char *paths[] = {f->path};
	if (tsa_rules_load(paths, 1, &f->rules, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	struct tsa_engine_cfg cfg = {.persist = on_persist, .persist_arg = f};
	assert_int_equal(tsa_engine_new(f->rules, &cfg, &f->engine), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	tsa_engine_free(f->engine);
	tsa_rules_free(f->rules);
	tsa_action_clear(&f->last);
	unlink(f->path);
	free(f);
	return 0;
}

/* Publishes a record built from printf-style JSON. */
static void publish(struct fixture *f, int64_t now_ms, const char *fmt, ...)
{
	char text[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	struct kumo_json_doc *doc;
	struct kumo_json_error jerr;
	if (kumo_json_parse(text, strlen(text), NULL, &doc, &jerr) < 0)
		fail_msg("%s: %s", text, jerr.msg);
	char why[200];
	if (tsa_engine_check_record(kumo_json_doc_root(doc), why, sizeof(why)) < 0)
		fail_msg("%s: %s", text, why);
	assert_int_equal(tsa_engine_publish(f->engine, kumo_json_doc_root(doc), now_ms), 0);
	kumo_json_doc_free(doc);
}

#define T0 ((int64_t)1800000000000) /* ms */
#define REC(content)                                                                               \
	"{\"type\":\"TransientFailure\",\"recipient\":\"u@rate.test\",\"queue\":"                  \
	"\"camp:ten@rate.test\",\"site\":\"mx1.rate.test,mx2.rate.test\",\"egress_source\":"       \
	"\"s1\",\"response\":{\"code\":421,\"enhanced_code\":{\"class\":4,\"subject\":7,"          \
	"\"detail\":0},\"content\":\"" content "\",\"command\":null},\"timestamp\":%lld}"

static void test_immediate_suspend(void **state)
{
	struct fixture *f = *state;
	publish(f, T0, REC("[TSS04] deferred"), (long long)(T0 / 1000));
	assert_int_equal(tsa_engine_count(f->engine, TSA_SUSPEND, T0), 1);
	assert_int_equal(f->persisted, 1);
	assert_int_equal(f->last.kind, TSA_SUSPEND);
	assert_string_equal(f->last.site, "mx1.rate.test,mx2.rate.test");
	assert_string_equal(f->last.source, "s1");
	assert_int_equal(f->last.expires_ms, T0 + 3000);
	assert_non_null(strstr(f->last.reason, ":4 [\"rate.test\"] regex \\[TSS04\\] matched: "
					       "421 4.7.0 [TSS04] deferred"));
	/* Half a second later: extended, not saved again; 1.5 s later: saved. */
	publish(f, T0 + 500, REC("[TSS04] deferred"), (long long)(T0 / 1000));
	assert_int_equal(f->persisted, 1);
	publish(f, T0 + 1500, REC("[TSS04] again"), (long long)(T0 + 1500) / 1000);
	assert_int_equal(f->persisted, 2);
	assert_int_equal(f->last.expires_ms, T0 + 1000 + 3000);
	/* A record from the future counts from now; one older than the duration is late. */
	publish(f, T0 + 2600, REC("[TSS04] future"), (long long)(T0 / 1000 + 100));
	assert_int_equal(f->last.expires_ms, T0 + 2600 + 3000);
	unsigned before = f->persisted;
	publish(f, T0 + 2700, REC("[TSS04] late"), (long long)(T0 / 1000 - 10));
	assert_int_equal(f->persisted, before);
	/* Expiry. */
	assert_int_equal(tsa_engine_expire(f->engine, T0 + 5599), 0);
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0 + 5599), 1);
	assert_int_equal(tsa_engine_expire(f->engine, T0 + 5600), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0 + 5600), 0);
	struct tsa_engine_stats st;
	tsa_engine_stats(f->engine, &st);
	assert_int_equal(st.expired, 1);
}

static void test_threshold_window(void **state)
{
	struct fixture *f = *state;
	int64_t t = T0;
	/* 3/min: two matches, a minute's pause, two more: never 3 in a minute. */
	publish(f, t, REC("over limit"), (long long)(t / 1000));
	publish(f, t + 1000, REC("over limit"), (long long)(t / 1000 + 1));
	publish(f, t + 61000, REC("over limit"), (long long)(t / 1000 + 61));
	publish(f, t + 62000, REC("no limit"), (long long)(t / 1000 + 62)); /* look-behind */
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, t + 62000), 0);
	publish(f, t + 62000, REC("over limit"), (long long)(t / 1000 + 62));
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, t + 62000), 0);
	publish(f, t + 63000, REC("over limit"), (long long)(t / 1000 + 63));
	assert_int_equal(tsa_engine_count(f->engine, TSA_SET_CONFIG, t + 63000), 3);
	assert_int_equal(f->persisted, 3);
	/* The overlay: per source, reason and expiry comments, string values quoted. */
	struct kumo_buf out = {0};
	tsa_engine_shaping_toml(f->engine, t + 63000, &out);
	kumo_buf_putc(&out, 0);
	const char *o = out.data;
	assert_non_null(strstr(o, "# Number of entries: 3\n"));
	assert_non_null(strstr(o, "\n[\"rate.test\"]\nmx_rollup = true\n"));
	assert_non_null(strstr(o, "\n[\"rate.test\".sources.\"s1\"]\n"));
	assert_non_null(strstr(o, "\nmax_connection_rate = \"10/h\"\n"));
	assert_non_null(strstr(o, "\nconnection_limit = 2\n"));
	assert_non_null(strstr(o, "\n\"odd \\\"name\\\"\" = \"a\\\\b\\\"c\"\n"));
	assert_non_null(strstr(o, "# expires: 2027-01-15T09:01:03Z\n"));
	assert_non_null(strstr(o, "# reason: automation rule "));
	/* The shaping loader takes it after the file it overrides, and the override wins. */
	struct kumo_shaping_text texts[] = {{"base.toml", shaping, sizeof(shaping) - 1},
					    {"overlay.toml", out.data, out.len - 1}};
	struct kumo_shaping *sh;
	char err[512];
	if (kumo_shaping_load_texts(texts, 2, &sh, err, sizeof(err)) < 0)
		fail_msg("%s\n%s", err, o);
	struct kumo_shaping_params p;
	assert_int_equal(kumo_shaping_effective(sh, "rate.test", NULL, 0, "s1", &p), 0);
	assert_int_equal(p.connection_limit.limit, 2);
	assert_int_equal(p.max_connection_rate.count, 10);
	assert_int_equal(kumo_shaping_effective(sh, "rate.test", NULL, 0, "s2", &p), 0);
	assert_int_equal(p.connection_limit.limit, 10);
	kumo_shaping_free(sh);
	kumo_buf_free(&out);
	/* Every further match re-fires (and extends) while the window holds three. */
	publish(f, t + 64000, REC("over limit"), (long long)(t / 1000 + 64));
	assert_int_equal(f->persisted, 6);
}

static void test_bucketed_threshold(void **state)
{
	struct fixture *f = *state;
	const char *rec =
	    "{\"type\":\"Bounce\",\"recipient\":\"x@big.test\",\"site\":\"mx.big.test\","
	    "\"response\":{\"code\":550,\"content\":\"busy\"},\"timestamp\":%lld}";
	for (int i = 0; i < 4999; i++)
		publish(f, T0 + i, rec, (long long)(T0 / 1000));
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0 + 5000), 0);
	publish(f, T0 + 5000, rec, (long long)(T0 / 1000 + 5));
	assert_int_equal(tsa_engine_count(f->engine, TSA_SUSPEND, T0 + 5000), 1);
	assert_string_equal(f->last.site, "mx.big.test");
	assert_string_equal(f->last.source, "unspecified");
	/* An hour later the window is empty again and the counter is dropped. */
	tsa_engine_expire(f->engine, T0 + 3600 * 1000 + 6000);
	publish(f, T0 + 3600 * 1000 + 7000, rec, (long long)(T0 / 1000 + 3607));
	assert_int_equal(tsa_engine_count(f->engine, TSA_SUSPEND, T0 + 3600 * 1000 + 7000), 0);
}

static void test_queue_actions(void **state)
{
	struct fixture *f = *state;
	/* Also KumoMTA-internal responses: this rule has match_internal. */
	publish(f, T0,
		"{\"type\":\"TransientFailure\",\"recipient\":[\"a@rate.test\"],\"queue\":"
		"\"spring:acme@Rate.Test!smart\",\"site\":\"\",\"response\":{\"code\":452,"
		"\"enhanced_code\":\"4.2.1\",\"content\":\"KumoMTA internal: full\"}}");
	assert_int_equal(tsa_engine_count(f->engine, TSA_SUSPEND_TENANT, T0), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_SUSPEND_CAMPAIGN, T0), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_BOUNCE, T0), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_BOUNCE_TENANT, T0), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_BOUNCE_CAMPAIGN, T0), 1);
	assert_int_equal(tsa_engine_count(f->engine, TSA_SET_DOMAIN_CONFIG, T0), 1);
	struct kumo_buf out = {0};
	tsa_engine_suspensions_json(f->engine, T0, &out);
	kumo_buf_putc(&out, 0);
	assert_non_null(strstr(out.data, "\"ready_q\":[]"));
	assert_non_null(strstr(out.data, "\"domain\":\"rate.test\",\"tenant\":\"acme\","
					 "\"campaign\":null"));
	assert_non_null(strstr(out.data, "\"tenant\":\"acme\",\"campaign\":\"spring\""));
	assert_non_null(strstr(out.data, "\"expires\":\"2027-01-15T08:10:00Z\""));
	out.len = 0;
	tsa_engine_bounces_json(f->engine, T0, &out);
	kumo_buf_putc(&out, 0);
	assert_non_null(strstr(out.data, "\"tenant\":\"acme\",\"campaign\":null"));
	assert_non_null(strstr(out.data, "\"tenant\":\"acme\",\"campaign\":\"spring\""));
	out.len = 0;
	tsa_engine_shaping_toml(f->engine, T0, &out);
	kumo_buf_putc(&out, 0);
	/* No egress source: the setting goes in the domain entry itself. */
	assert_non_null(strstr(out.data, "[\"rate.test\"]\nmx_rollup = false\n# reason: "));
	assert_non_null(strstr(out.data, "\nmax_ready = 5\n"));
	assert_null(strstr(out.data, "sources"));
	kumo_buf_free(&out);
	/* Without a tenant, only the plain Bounce (and the setting) apply. */
	struct tsa_engine_stats st;
	tsa_engine_stats(f->engine, &st);
	uint64_t skipped = st.skipped, matches = st.matches;
	publish(f, T0 + 5000,
		"{\"type\":\"Bounce\",\"recipient\":\"b@other.rate.test\",\"queue\":\"rate.test\","
		"\"response\":{\"code\":452,\"enhanced_code\":null,\"content\":\"4.2.1 x\"}}");
	tsa_engine_stats(f->engine, &st);
	assert_int_equal(st.matches, matches); /* other.rate.test has no rules */
	publish(f, T0 + 5000,
		"{\"type\":\"Bounce\",\"recipient\":\"b@rate.test\",\"queue\":\"rate.test\","
		"\"response\":{\"code\":452,\"enhanced_code\":{\"class\":4,\"subject\":2,"
		"\"detail\":1},\"content\":\"x\"}}");
	tsa_engine_stats(f->engine, &st);
	assert_int_equal(st.skipped - skipped, 4);
	assert_int_equal(tsa_engine_count(f->engine, TSA_BOUNCE, T0 + 5000), 2);
}

static void test_internal_and_other_types(void **state)
{
	struct fixture *f = *state;
	publish(f, T0, REC("KumoMTA internal: [TSS04]"), (long long)(T0 / 1000));
	publish(f, T0,
		"{\"type\":\"Delivery\",\"recipient\":\"u@rate.test\",\"response\":{\"code\":250,"
		"\"content\":\"[TSS04]\"}}");
	publish(f, T0,
		"{\"type\":\"Bounce\",\"recipient\":\"postmaster\",\"response\":{\"code\":550,"
		"\"content\":\"[TSS04]\"}}");
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0), 0);
	struct tsa_engine_stats st;
	tsa_engine_stats(f->engine, &st);
	assert_int_equal(st.records, 3);
	assert_int_equal(st.evaluated, 1);
	assert_int_equal(st.ignored, 2);
}

/* A site entry's rules follow its MX set once a record showed that set for its domain. */
static void test_site_binding(void **state)
{
	struct fixture *f = *state;
	const char *rec = "{\"type\":\"TransientFailure\",\"recipient\":\"a@%s\",\"site\":"
			  "\"alt1.mx.gmail.test,mx.gmail.test\",\"response\":{\"code\":421,"
			  "\"content\":\"gsite\"}}";
	publish(f, T0, rec, "vanity.test");
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0), 0);
	publish(f, T0, rec, "gmail.test");
	assert_int_equal(tsa_engine_count(f->engine, TSA_SET_CONFIG, T0), 1);
	publish(f, T0, rec, "vanity.test");
	assert_int_equal(tsa_engine_count(f->engine, TSA_SET_CONFIG, T0), 2);
	assert_true(f->last.mx_rollup);
	assert_true(f->last.value_is_string); /* value = "3" was a string */
	struct tsa_engine_stats st;
	tsa_engine_stats(f->engine, &st);
	assert_int_equal(st.sites_bound, 1);
}

static void test_restore(void **state)
{
	struct fixture *f = *state;
	struct tsa_action a = {.kind = TSA_SUSPEND,
			       .rule_hash = "0123456789abcdef0123456789abcdef",
			       .site = "mx.x",
			       .source = "s",
			       .reason = "r",
			       .created_ms = T0,
			       .expires_ms = T0 + 10};
	assert_int_equal(tsa_engine_restore(f->engine, &a, T0), 0);
	assert_int_equal(tsa_engine_restore(f->engine, &a, T0), 0); /* same key: one action */
	a.expires_ms = T0;
	a.site = "mx.y";
	assert_int_equal(tsa_engine_restore(f->engine, &a, T0), 0); /* expired: dropped */
	assert_int_equal(tsa_engine_count(f->engine, TSA_NKINDS, T0), 1);
	assert_int_equal(f->persisted, 0);
	struct kumo_buf out = {0};
	tsa_engine_suspensions_json(f->engine, T0, &out);
	kumo_buf_putc(&out, 0);
	assert_non_null(strstr(out.data, "\"site_name\":\"s->mx.x\""));
	assert_non_null(strstr(out.data, "\"expires\":\"2027-01-15T08:00:00.010Z\""));
	kumo_buf_free(&out);
}

static void test_check_record(void **state)
{
	static const struct {
		const char *json, *msg;
	} cases[] = {
	    {"[]", "JSON object"},
	    {"{}", "\"type\""},
	    {"{\"type\":\"Bounce\"}", "\"recipient\""},
	    {"{\"type\":\"Bounce\",\"recipient\":[]}", "\"recipient\""},
	    {"{\"type\":\"Bounce\",\"recipient\":[\"a@b\",1]}", "\"recipient\""},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\"}", "\"response\""},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":\"5\"}}",
	     "response.code"},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":550}}",
	     "response.content"},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":550,\"content\":"
	     "\"\",\"enhanced_code\":{\"class\":5}}}",
	     "enhanced_code.subject"},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":550,\"content\":"
	     "\"\"},\"site\":5}",
	     "\"site\""},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":550,\"content\":"
	     "\"\"},\"timestamp\":\"now\"}",
	     "\"timestamp\""},
	    {"{\"type\":\"Reception\"}", NULL},
	    {"{\"type\":\"Bounce\",\"recipient\":\"a@b\",\"response\":{\"code\":550,\"content\":"
	     "\"\",\"enhanced_code\":null},\"site\":null,\"queue\":\"q\",\"timestamp\":1.5,"
	     "\"peer_address\":null}",
	     NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumo_json_doc *doc;
		struct kumo_json_error jerr;
		char why[200] = "";
		assert_int_equal(
		    kumo_json_parse(cases[i].json, strlen(cases[i].json), NULL, &doc, &jerr), 0);
		int rc = tsa_engine_check_record(kumo_json_doc_root(doc), why, sizeof(why));
		if (cases[i].msg ? rc != -EINVAL || !strstr(why, cases[i].msg) : rc != 0)
			fail_msg("case %zu: %d %s", i, rc, why);
		kumo_json_doc_free(doc);
	}
}

static void test_response_line(void **state)
{
	const char *json = "{\"code\":421,\"enhanced_code\":{\"class\":4,\"subject\":7,\"detail\":"
			   "0},\"content\":\"a\\r\\nb\\nc\\rd\"}";
	struct kumo_json_doc *doc;
	struct kumo_json_error jerr;
	assert_int_equal(kumo_json_parse(json, strlen(json), NULL, &doc, &jerr), 0);
	struct kumo_buf b = {0};
	tsa_engine_response_line(kumo_json_doc_root(doc), &b);
	kumo_buf_putc(&b, 0);
	assert_string_equal(b.data, "421 4.7.0 a b c d");
	kumo_buf_free(&b);
	kumo_json_doc_free(doc);
}

static void test_bad_regex(void **state)
{
	char path[] = "/tmp/tsa-bad-XXXXXX", err[512] = "";
	const char text[] = "[[\"x.test\".automation]]\nregex = [\"ok\", \"a(?<=b+)c\"]\n"
			    "action = \"Suspend\"\nduration = \"1m\"\n";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
	close(fd);
	const char *paths[] = {path};
	struct tsa_rules *r;
	assert_int_equal(tsa_rules_load(paths, 1, &r, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, ":1: automation rule of \"x.test\": regex \"a(?<=b+)c\""));
	unlink(path);
}

static int restore_cb(void *arg, const struct tsa_action *a)
{
	struct tsa_action *out = arg;
	tsa_action_clear(out);
	return tsa_action_copy(out, a);
}

static void test_store(void **state)
{
	char dir[] = "/tmp/tsa-store-XXXXXX", path[64], err[300];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/tsa.sqlite", dir);
	struct tsa_store *s;
	assert_int_equal(tsa_store_open(path, T0, &s, err, sizeof(err)), 0);
	struct tsa_action a = {.kind = TSA_SET_CONFIG,
			       .rule_hash = "0123456789abcdef0123456789abcdef",
			       .domain = "d.test",
			       .source = "s1",
			       .site = "mx.d.test",
			       .name = "connection_limit",
			       .value = "2",
			       .mx_rollup = true,
			       .reason = "because",
			       .created_ms = T0,
			       .expires_ms = T0 + 5000};
	assert_true(tsa_store_put(s, &a) > 0); /* synchronous before start */
	a.expires_ms = T0 + 9000;
	assert_true(tsa_store_put(s, &a) > 0); /* same row, later expiry */
	struct tsa_action got = {0};
	assert_int_equal(tsa_store_load(s, T0, restore_cb, &got), 0);
	assert_int_equal(got.kind, TSA_SET_CONFIG);
	assert_string_equal(got.value, "2");
	assert_true(got.mx_rollup);
	assert_null(got.tenant);
	assert_int_equal(got.expires_ms, T0 + 9000);
	/* With the thread: a batch, then the eventfd. */
	int efd = eventfd(0, 0);
	assert_int_equal(tsa_store_start(s, efd), 0);
	struct tsa_action b = a;
	b.kind = TSA_SUSPEND_TENANT;
	b.tenant = "t";
	b.expires_ms = T0 + 1000;
	uint64_t seq = tsa_store_put(s, &b);
	uint64_t seq2 = tsa_store_prune(s, T0 + 1000);
	assert_true(seq2 > seq);
	uint64_t v;
	while (tsa_store_done(s) < seq2)
		assert_int_equal(read(efd, &v, sizeof(v)), sizeof(v));
	assert_false(tsa_store_take_failure(s, err, sizeof(err)));
	tsa_store_close(s);
	close(efd);
	/* Reopened: the pruned row is gone, the other is there. */
	assert_int_equal(tsa_store_open(path, T0, &s, err, sizeof(err)), 0);
	tsa_action_clear(&got);
	memset(&got, 0, sizeof(got));
	assert_int_equal(tsa_store_load(s, T0, restore_cb, &got), 0);
	assert_int_equal(got.kind, TSA_SET_CONFIG);
	tsa_store_close(s);
	/* Opened after everything expired: nothing left. */
	assert_int_equal(tsa_store_open(path, T0 + 9000, &s, err, sizeof(err)), 0);
	tsa_action_clear(&got);
	memset(&got, 0, sizeof(got));
	assert_int_equal(tsa_store_load(s, 0, restore_cb, &got), 0);
	assert_int_equal(got.expires_ms, 0);
	tsa_store_close(s);
	tsa_action_clear(&got);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	/* A database that cannot be opened. */
	assert_int_equal(tsa_store_open("/nonexistent-dir/x.sqlite", T0, &s, err, sizeof(err)),
			 -EIO);
	assert_non_null(strstr(err, "/nonexistent-dir/x.sqlite"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_immediate_suspend, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_threshold_window, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bucketed_threshold, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_queue_actions, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_internal_and_other_types, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_site_binding, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
	    cmocka_unit_test(test_check_record),
	    cmocka_unit_test(test_response_line),
	    cmocka_unit_test(test_bad_regex),
	    cmocka_unit_test(test_store),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
