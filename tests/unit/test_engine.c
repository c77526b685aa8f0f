/* Unit tests for the embedding API (engine): injection from code is durable and comes
 * back after a restart with its envelope; CIDR matching for relay_hosts; bad config. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <cmocka.h>

#include "engine/internal.h"

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done, failed;
	char ids[64][KUMO_ID_HEX_LEN + 1];
};

static void injected(void *arg, int status, const char *id)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->lock);
	if (status == 0)
		snprintf(w->ids[w->done % 64], sizeof(w->ids[0]), "%s", id);
	else
		w->failed++;
	w->done++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void quiet(void *arg, enum kumo_log_level level, const char *line)
{
}

/* An engine that delivers nothing, with its spool in dir (a mkdtemp template). */
static struct kumo_engine *idle_engine(char *dir, unsigned threads)
{
	assert_non_null(mkdtemp(dir));
	struct kumo_engine_cfg cfg = {.threads = threads, .spool_path = dir, .log_fn = quiet,
				      .no_delivery = true};
	struct kumo_engine *e;
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	return e;
}

static void remove_dir(const char *dir)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void count_spooled(void *arg, const char *json, size_t len)
{
	(*(int *)arg)++;
	assert_non_null(memmem(json, len, "\"tenant\":\"t1\"", 13));
	assert_non_null(memmem(json, len, "\"queue\":\"c1:t1@example.net\"", 26));
}

static void test_inject_durable_and_recovered(void **state)
{
	char dir[] = "/tmp/kumo-test-engine-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct kumo_engine_cfg cfg = {.threads = 2, .spool_path = dir, .log_fn = quiet,
				      .no_delivery = true};
	struct kumo_engine *e;
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	assert_int_equal(kumo_engine_recovered(e), 0);
	assert_int_equal(kumo_engine_start(e), 0);
	struct waiter w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	const char *rcpts[] = {"a@example.net", "b@example.net"};
	static const char body[] = "Subject: injected\r\n\r\nhello\r\n";
	struct kumo_inject_spec spec = {.sender = "s@example.com", .recipients = rcpts,
					.nrecipients = 2, .data = (const uint8_t *)body,
					.data_len = sizeof(body) - 1, .tenant = "t1",
					.campaign = "c1"};
	for (int i = 0; i < 20; i++)
		assert_int_equal(kumo_engine_inject(e, &spec, injected, &w), 0);
	pthread_mutex_lock(&w.lock);
	while (w.done < 20)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	assert_int_equal(w.failed, 0);
	struct kumo_id id;
	assert_int_equal(kumo_id_parse(w.ids[0], &id), 0);
	kumo_engine_stop(e);
	assert_int_equal(kumo_engine_wait(e), 0);
	struct kumo_engine_stats st;
	kumo_engine_stats(e, &st);
	assert_int_equal(st.messages_received, 20);
	assert_int_equal(st.queued, 20);
	kumo_engine_free(e);

	int listed = 0;
	assert_int_equal(kumo_spool_list(dir, count_spooled, &listed), 20);
	assert_int_equal(listed, 20);
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	assert_int_equal(kumo_engine_recovered(e), 20);
	kumo_engine_free(e);
	/* fewer threads than shards on disk: refused, not silently ignored */
	cfg.threads = 1;
	assert_int_equal(kumo_engine_new(&cfg, &e), -EEXIST);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void test_inject_rejects_bad_spec(void **state)
{
	char dir[] = "/tmp/kumo-test-engine-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct kumo_engine_cfg cfg = {.threads = 1, .spool_path = dir, .log_fn = quiet,
				      .no_delivery = true};
	struct kumo_engine *e;
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	struct kumo_inject_spec none = {.sender = "s@example.com"};
	assert_int_equal(kumo_engine_inject(e, &none, injected, NULL), -EINVAL);
	struct kumo_listener_cfg bad = {.address = "localhost:25"};
	assert_int_equal(kumo_engine_add_listener(e, &bad), -EINVAL);
	const char *relay[] = {"10.0.0.0/33"};
	struct kumo_listener_cfg badrelay = {.address = "127.0.0.1:0", .relay_hosts = relay,
					     .nrelay_hosts = 1};
	assert_int_equal(kumo_engine_add_listener(e, &badrelay), -EINVAL);
	kumo_engine_free(e);
	remove_dir(dir);
}

static void test_runtime_config_updates(void **state)
{
	char dir[] = "/tmp/kumo-test-engine-XXXXXX";
	struct kumo_engine *e = idle_engine(dir, 1);
	uint64_t gen = atomic_load(&e->conf_gen);
	char err[256] = "";
	static const char bad[] = "[\"example.com\"]\nmax_message_rate = \"fast\"\n";
	assert_int_equal(kumo_engine_set_shaping_overlay(e, bad, sizeof(bad) - 1, err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "<overlay>:2:"));
	assert_int_equal(atomic_load(&e->conf_gen), gen);
	static const char good[] = "[\"example.com\"]\nmax_message_rate = \"10/s\"\n";
	assert_int_equal(kumo_engine_set_shaping_overlay(e, good, sizeof(good) - 1, err,
							  sizeof(err)), 0);
	assert_true(atomic_load(&e->conf_gen) > gen);
	assert_non_null(kumo_conf_shaping(e->conf));
	struct kumo_suspension s[] = {{KUMO_SUSPEND_TENANT, "acme", 5000},
				      {KUMO_SUSPEND_SITE, "mx.example.com", 9000}};
	assert_int_equal(kumo_engine_set_suspensions(e, s, 2), 0);
	/* the rules survive a change of suspensions */
	assert_non_null(kumo_conf_shaping(e->conf));
	assert_int_equal(kumo_conf_suspended(e->conf, KUMO_SUSPEND_TENANT, "ACME", 4, 4000), 5000);
	assert_int_equal(kumo_conf_suspended(e->conf, KUMO_SUSPEND_TENANT, "acme", 4, 5000), 0);
	assert_int_equal(kumo_conf_suspended(e->conf, KUMO_SUSPEND_SITE, "mx.example.com", 14, 1),
			 9000);
	assert_int_equal(kumo_conf_suspended(e->conf, KUMO_SUSPEND_CAMPAIGN, "acme", 4, 1), 0);
	struct kumo_suspension badk = {.kind = (enum kumo_suspend_kind)9, .name = "x"};
	assert_int_equal(kumo_engine_set_suspensions(e, &badk, 1), -EINVAL);
	kumo_engine_free(e);
	remove_dir(dir);
}

/* The bounce of conf c matching queue name, or -1. */
static int32_t bounce_for(const struct kumo_dynconf *c, const char *name)
{
	struct kumo_queue_parts p;
	kumo_queue_parts(name, &p);
	return kumo_conf_bounce(c, &p);
}

/* Bounces: every part an entry names must equal the queue's; the set replaces the last;
 * suspensions and rules survive; an entry naming nothing is refused. */
static void test_bounce_set_and_match(void **state)
{
	char dir[] = "/tmp/kumo-test-engine-XXXXXX";
	struct kumo_engine *e = idle_engine(dir, 1);
	struct kumo_suspension s = {KUMO_SUSPEND_DOMAIN, "held.test", 7000};
	assert_int_equal(kumo_engine_set_suspensions(e, &s, 1), 0);
	struct kumo_bounce b[] = {
		{.domain = "gone.test", .reason = "domain", .expires_ms = 5000},
		{.domain = "bad.test", .tenant = "acme", .reason = "tenant", .expires_ms = 6000},
		{.domain = "bad.test", .tenant = "acme", .campaign = "spring", .expires_ms = 9000},
		{.tenant = "spammer", .campaign = "", .reason = "", .expires_ms = 4000},
	};
	char reason[] = "copied";
	b[0].reason = reason;
	assert_int_equal(kumo_engine_set_bounces(e, b, 4), 0);
	reason[0] = 'X';
	const struct kumo_dynconf *c = e->conf;
	assert_int_equal(c->nbounces, 4);
	assert_string_equal(c->bounces[0].reason, "copied");
	assert_null(c->bounces[3].campaign); /* "" names nothing */
	assert_null(c->bounces[2].reason);
	assert_int_equal(bounce_for(c, "gone.test"), 0);
	assert_int_equal(bounce_for(c, "camp:t@GONE.test"), 0);
	assert_int_equal(bounce_for(c, "other.test"), -1);
	assert_int_equal(bounce_for(c, "bad.test"), -1);      /* no tenant: not acme's */
	assert_int_equal(bounce_for(c, "bob@bad.test"), -1);
	assert_int_equal(bounce_for(c, "acme@bad.test"), 1);
	assert_int_equal(bounce_for(c, "fall:acme@bad.test"), 1);
	assert_int_equal(bounce_for(c, "spring:acme@bad.test"), 2); /* the later expiry */
	assert_int_equal(bounce_for(c, "x:spammer@any.test"), 3);
	assert_int_equal(bounce_for(c, "spring:other@bad.test"), -1);
	/* suspensions were kept */
	assert_int_equal(kumo_conf_suspended(c, KUMO_SUSPEND_DOMAIN, "held.test", 9, 1), 7000);
	/* an entry naming no queue refuses the whole set; the last set stays */
	uint64_t gen = atomic_load(&e->conf_gen);
	struct kumo_bounce all[] = {{.domain = "x.test", .expires_ms = 1},
				    {.domain = "", .reason = "everything", .expires_ms = 1}};
	assert_int_equal(kumo_engine_set_bounces(e, all, 2), -EINVAL);
	assert_int_equal(atomic_load(&e->conf_gen), gen);
	assert_int_equal(e->conf->nbounces, 4);
	/* a new set of suspensions keeps the bounces; an empty set of bounces clears them */
	assert_int_equal(kumo_engine_set_suspensions(e, NULL, 0), 0);
	assert_int_equal(e->conf->nbounces, 4);
	assert_int_equal(e->conf->nsusp, 0);
	assert_int_equal(kumo_engine_set_bounces(e, NULL, 0), 0);
	assert_int_equal(e->conf->nbounces, 0);
	assert_int_equal(bounce_for(e->conf, "gone.test"), -1);
	kumo_engine_free(e);
	remove_dir(dir);
}

static struct sockaddr_storage addr(const char *ip)
{
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, ip, &in->sin_addr) == 1)
		in->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
		in6->sin6_family = AF_INET6;
	return ss;
}

static bool match(const char *cidr, const char *ip)
{
	struct kumo_cidr c;
	assert_int_equal(kumo_cidr_parse(cidr, &c), 0);
	struct sockaddr_storage ss = addr(ip);
	return kumo_cidr_match(&c, (struct sockaddr *)&ss);
}

static void test_cidr(void **state)
{
	assert_true(match("127.0.0.0/8", "127.1.2.3"));
	assert_false(match("127.0.0.0/8", "128.0.0.1"));
	assert_true(match("10.1.2.3", "10.1.2.3"));
	assert_false(match("10.1.2.3", "10.1.2.4"));
	assert_true(match("192.168.0.0/23", "192.168.1.255"));
	assert_false(match("192.168.0.0/23", "192.168.2.0"));
	assert_true(match("0.0.0.0/0", "8.8.8.8"));
	assert_true(match("::1", "::1"));
	assert_false(match("::1", "::2"));
	assert_true(match("2001:db8::/32", "2001:db8:ffff::1"));
	assert_true(match("127.0.0.0/8", "::ffff:127.0.0.1"));
	assert_false(match("2001:db8::/32", "10.0.0.1"));
	struct kumo_cidr c;
	assert_int_equal(kumo_cidr_parse("10.0.0.0/33", &c), -EINVAL);
	assert_int_equal(kumo_cidr_parse("nothing", &c), -EINVAL);
	assert_int_equal(kumo_cidr_parse("10.0.0.0/", &c), -EINVAL);
	assert_int_equal(kumo_cidr_parse("::/129", &c), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inject_durable_and_recovered),
		cmocka_unit_test(test_inject_rejects_bad_spec),
		cmocka_unit_test(test_cidr),
		cmocka_unit_test(test_runtime_config_updates),
		cmocka_unit_test(test_bounce_set_and_match),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
