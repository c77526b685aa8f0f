/* Unit test for the embedder's egress_pool policy callback: an engine delivering to a
 * small SMTP sink in this test sends each queue through the pool the callback names
 * (seen in the Delivery records), and falls back to the rules for NULL or unknown names. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "kumo/kumo.h"

struct seen {
	pthread_mutex_t lock;
	int deliveries, calls;
	char records[8][1024];
};

/* Answers one SMTP session with 250s (354 for DATA) until QUIT or EOF. */
static void *sink_session(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[8192];
	bool in_data = false;
	(void)!write(fd, "220 sink\r\n", 10);
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf) - 1)) > 0) {
		buf[n] = 0;
		for (char *line = buf, *eol; (eol = strstr(line, "\r\n")); line = eol + 2) {
			*eol = 0;
			const char *reply = NULL;
			if (in_data)
				in_data = strcmp(line, ".") != 0, reply = in_data ? NULL : "250 ok\r\n";
			else if (strncasecmp(line, "DATA", 4) == 0)
				in_data = true, reply = "354 go\r\n";
			else if (strncasecmp(line, "QUIT", 4) == 0)
				reply = "221 bye\r\n";
			else if (*line)
				reply = "250 ok\r\n";
			if (reply)
				(void)!write(fd, reply, strlen(reply));
		}
	}
	close(fd);
	return NULL;
}

static void *sink_accept(void *arg)
{
	int lfd = (int)(intptr_t)arg, fd;
	while ((fd = accept(lfd, NULL, NULL)) >= 0) {
		pthread_t t;
		pthread_create(&t, NULL, sink_session, (void *)(intptr_t)fd);
		pthread_detach(t);
	}
	return NULL;
}

static int sink_start(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	pthread_t t;
	pthread_create(&t, NULL, sink_accept, (void *)(intptr_t)fd);
	pthread_detach(t);
	return fd;
}

static void record(void *arg, const char *json, size_t len)
{
	struct seen *s = arg;
	if (!memmem(json, len, "\"type\":\"Delivery\"", 17))
		return;
	pthread_mutex_lock(&s->lock);
	if (s->deliveries < 8)
		snprintf(s->records[s->deliveries], sizeof(s->records[0]), "%.*s", (int)len, json);
	s->deliveries++;
	pthread_mutex_unlock(&s->lock);
}

/* tenant "blue" -> pool "pb", tenant "ghost" -> a pool that does not exist, else NULL. */
static const char *choose(void *arg, const char *queue, const char *campaign,
			  const char *tenant, const char *domain)
{
	struct seen *s = arg;
	pthread_mutex_lock(&s->lock);
	s->calls++;
	pthread_mutex_unlock(&s->lock);
	assert_string_equal(domain, "pool.test");
	assert_string_equal(campaign, strcmp(tenant, "blue") == 0 ? "c1" : "");
	return strcmp(tenant, "blue") == 0 ? "pb" : strcmp(tenant, "ghost") == 0 ? "nope" : NULL;
}

static void quiet(void *arg, enum kumo_log_level level, const char *line)
{
}

static const char *record_for(struct seen *s, const char *rcpt)
{
	char needle[64];
	snprintf(needle, sizeof(needle), "\"recipient\":\"%s\"", rcpt);
	for (int i = 0; i < s->deliveries && i < 8; i++)
		if (strstr(s->records[i], needle))
			return s->records[i];
	return "";
}

static void inject_one(struct kumo_engine *e, const char *rcpt, const char *tenant,
		       const char *campaign)
{
	static const char body[] = "Subject: t\r\n\r\nhello\r\n";
	const char *rcpts[] = {rcpt};
	struct kumo_inject_spec spec = {.sender = "s@example.com", .recipients = rcpts,
					.nrecipients = 1, .data = (const uint8_t *)body,
					.data_len = sizeof(body) - 1, .tenant = tenant,
					.campaign = campaign};
	assert_int_equal(kumo_engine_inject(e, &spec, NULL, NULL), 0);
}

static void test_policy_chooses_the_pool(void **state)
{
	char dir[] = "/tmp/kumo-test-pool-XXXXXX", smart[32];
	assert_non_null(mkdtemp(dir));
	uint16_t port;
	int lfd = sink_start(&port);
	snprintf(smart, sizeof(smart), "127.0.0.1:%u", port);
	struct seen s = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct kumo_engine_cfg cfg = {.threads = 1, .spool_path = dir, .log_fn = quiet,
				      .smart_host = smart, .record_fn = record, .record_arg = &s};
	struct kumo_engine *e;
	assert_int_equal(kumo_engine_new(&cfg, &e), 0);
	struct kumo_source_cfg a = {.name = "a", .source_address = "127.0.0.2"};
	struct kumo_source_cfg b = {.name = "b", .source_address = "127.0.0.3"};
	assert_int_equal(kumo_engine_add_source(e, &a), 0);
	assert_int_equal(kumo_engine_add_source(e, &b), 0);
	struct kumo_pool_entry pa = {.source = "a"}, pb = {.source = "b"};
	assert_int_equal(kumo_engine_add_pool(e, "pa", &pa, 1), 0);
	assert_int_equal(kumo_engine_add_pool(e, "pb", &pb, 1), 0);
	assert_int_equal(kumo_engine_set_tenant_pool(e, NULL, "pa"), 0);
	assert_int_equal(kumo_engine_set_queue_pool(e, KUMO_POOL_DOMAIN, "x", "nope"), -ENOENT);
	struct kumo_policy p = {.egress_pool = choose};
	assert_int_equal(kumo_engine_set_policy(e, &p, &s), 0);
	assert_int_equal(kumo_engine_start(e), 0);
	inject_one(e, "one@pool.test", "blue", "c1");
	inject_one(e, "two@pool.test", "red", NULL);
	inject_one(e, "three@pool.test", "ghost", NULL);
	for (int i = 0; i < 200; i++) {
		pthread_mutex_lock(&s.lock);
		int n = s.deliveries;
		pthread_mutex_unlock(&s.lock);
		if (n >= 3)
			break;
		usleep(50000);
	}
	kumo_engine_stop(e);
	assert_int_equal(kumo_engine_wait(e), 0);
	kumo_engine_free(e);
	close(lfd);
	assert_int_equal(s.deliveries, 3);
	assert_non_null(strstr(record_for(&s, "one@pool.test"), "\"egress_pool\":\"pb\""));
	assert_non_null(strstr(record_for(&s, "one@pool.test"), "127.0.0.3"));
	assert_non_null(strstr(record_for(&s, "two@pool.test"), "\"egress_pool\":\"pa\""));
	assert_non_null(strstr(record_for(&s, "two@pool.test"), "127.0.0.2"));
	assert_non_null(strstr(record_for(&s, "three@pool.test"), "\"egress_pool\":\"pa\""));
	assert_int_equal(s.calls, 3); /* once per queue, not per record */
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_policy_chooses_the_pool),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
