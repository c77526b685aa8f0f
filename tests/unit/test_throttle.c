/* Unit tests for engine/throttle with real io_urings against a real redis-server on
 * loopback: GCRA limits and leases shared by several throttle objects ("nodes"), the
 * local fallback when Redis stops answering, is killed or restarted, and local mode. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "engine/throttle.h"

/* ---- redis-server, a child of this process. ---- */

static struct {
	pid_t pid;
	int port;
	char sock[64];	/* its unix socket */
	pid_t auth_pid; /* a second server, with a password */
	int auth_port;
} R;

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool in_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[4096], dir[4096];
	snprintf(buf, sizeof(buf), "%s:/usr/bin:/usr/sbin:/usr/local/bin", path ? path : "");
	for (char *s = buf, *tok; (tok = strtok(s, ":")); s = NULL) {
		snprintf(dir, sizeof(dir), "%s/%s", tok, prog);
		if (access(dir, X_OK) == 0)
			return true;
	}
	return false;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof(sa);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return ntohs(sa.sin_port);
}

/* A blocking connection for the test's own look at the data. */
static redisContext *raw(int port)
{
	struct timeval tv = {.tv_sec = 2};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	if (c && c->err) {
		redisFree(c);
		return NULL;
	}
	return c;
}

static long long raw_int(int port, const char *fmt, const char *arg)
{
	redisContext *c = raw(port);
	assert_non_null(c);
	redisReply *r = redisCommand(c, fmt, arg);
	assert_non_null(r);
	long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
	freeReplyObject(r);
	redisFree(c);
	return v;
}

/* A member's score (a lease's expiry, ms of Redis' clock); -1 if absent. */
static double raw_score(int port, const char *key, const char *member)
{
	redisContext *c = raw(port);
	assert_non_null(c);
	redisReply *r = redisCommand(c, "ZSCORE %s %s", key, member);
	assert_non_null(r);
	double v = r->type == REDIS_REPLY_STRING ? strtod(r->str, NULL) : -1;
	freeReplyObject(r);
	redisFree(c);
	return v;
}

static void raw_cmd(int port, const char *cmd)
{
	redisContext *c = raw(port);
	assert_non_null(c);
	redisReply *r = redisCommand(c, cmd);
	assert_non_null(r);
	freeReplyObject(r);
	redisFree(c);
}

static pid_t spawn_redis(int port, const char *pass, const char *sock)
{
	char portarg[16];
	snprintf(portarg, sizeof(portarg), "%d", port);
	const char *argv[20] = {"redis-server", "--port",      portarg, "--bind",
				"127.0.0.1",	"--save",      "",	"--appendonly",
				"no",		"--daemonize", "no"};
	int n = 11;
	if (pass) {
		argv[n++] = "--requirepass";
		argv[n++] = pass;
	}
	if (sock) {
		argv[n++] = "--unixsocket";
		argv[n++] = sock;
	}
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		execvp("redis-server", (char *const *)argv);
		_exit(127);
	}
	/* Ready once it answers PING. */
	for (int i = 0; i < 100 && pid > 0; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return -1;
		redisContext *c = raw(port);
		if (c) {
			redisReply *r = redisCommand(c, "PING");
			bool ok = r != NULL;
			freeReplyObject(r);
			redisFree(c);
			if (ok)
				return pid;
		}
		usleep(20000);
	}
	return -1;
}

static void stop_pid(pid_t *pid, int sig)
{
	if (*pid > 0) {
		kill(*pid, sig);
		waitpid(*pid, NULL, 0);
		*pid = 0;
	}
}

static void start_main_redis(void)
{
	R.pid = spawn_redis(R.port, NULL, R.sock);
	assert_true(R.pid > 0);
}

static int group_setup(void **state)
{
	signal(SIGPIPE, SIG_DFL); /* the library must cope on its own */
	R.port = free_port();
	snprintf(R.sock, sizeof(R.sock), "/tmp/kumo-test-redis-%d.sock", (int)getpid());
	R.pid = spawn_redis(R.port, NULL, R.sock);
	if (R.pid <= 0) {
		fprintf(stderr, "redis-server did not start\n");
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	stop_pid(&R.pid, SIGTERM);
	stop_pid(&R.auth_pid, SIGTERM);
	unlink(R.sock);
	return 0;
}

/* ---- A node: one ring and one throttle object. ---- */

struct node {
	struct io_uring ring;
	struct kumo_throttle *t;
	uint64_t tag;
	char log[8192];
	size_t loglen;
};

static void node_log(void *arg, enum kumo_log_level lvl, const char *line)
{
	struct node *n = arg;
	int w = snprintf(n->log + n->loglen, sizeof(n->log) - n->loglen, "%d %s\n", (int)lvl, line);
	if (w > 0 && n->loglen + (size_t)w < sizeof(n->log))
		n->loglen += (size_t)w;
}

static int log_count(const struct node *n, const char *what)
{
	int c = 0;
	for (const char *p = n->log; (p = strstr(p, what)); p++)
		c++;
	return c;
}

static int node_open_cfg(struct node *n, const struct kumo_throttle_cfg *base, uint8_t op)
{
	memset(n, 0, sizeof(*n));
	assert_int_equal(io_uring_queue_init(64, &n->ring, 0), 0);
	n->tag = (uint64_t)op << 56;
	struct kumo_throttle_cfg cfg = *base;
	cfg.log_fn = node_log;
	cfg.log_arg = n;
	int rc = kumo_throttle_new(&cfg, &n->ring, n->tag, &n->t);
	if (rc < 0)
		io_uring_queue_exit(&n->ring);
	return rc;
}

static char url_buf[128];

static const char *main_url(void)
{
	snprintf(url_buf, sizeof(url_buf), "redis://127.0.0.1:%d", R.port);
	return url_buf;
}

static void node_open(struct node *n, const char *url, const char *id, uint32_t timeout_ms,
		      uint8_t op)
{
	struct kumo_throttle_cfg cfg = {
	    .redis_url = url, .node_id = id, .timeout_ms = timeout_ms, .reconnect_max_ms = 1000};
	assert_int_equal(node_open_cfg(n, &cfg, op), 0);
}

/* One turn of the node's loop: submit, wait for a completion (at most wait_ms, and no
 * longer than the throttle's next timeout), feed completions, tick. */
static void pump(struct node *n, unsigned wait_ms)
{
	struct io_uring_cqe *cqe;
	uint64_t due = kumo_throttle_next_timeout_ms(n->t, mono_ms());
	if (due < wait_ms)
		wait_ms = (unsigned)due;
	io_uring_submit(&n->ring);
	struct __kernel_timespec ts = {.tv_sec = wait_ms / 1000,
				       .tv_nsec = (long long)(wait_ms % 1000) * 1000000};
	io_uring_wait_cqe_timeout(&n->ring, &cqe, &ts);
	unsigned head, k = 0;
	io_uring_for_each_cqe(&n->ring, head, cqe)
	{
		assert_true((cqe->user_data >> 56) == (n->tag >> 56));
		kumo_throttle_complete(n->t, cqe->user_data, cqe->res);
		k++;
	}
	io_uring_cq_advance(&n->ring, k);
	kumo_throttle_tick(n->t, mono_ms());
	io_uring_submit(&n->ring);
}

/* Runs the node's loop for ms milliseconds. */
static void run_for(struct node *n, uint64_t ms)
{
	uint64_t end = mono_ms() + ms;
	for (uint64_t now; (now = mono_ms()) < end;)
		pump(n, (unsigned)(end - now));
}

static void node_close(struct node *n)
{
	kumo_throttle_free(n->t);
	n->t = NULL;
	io_uring_submit(&n->ring);
	io_uring_queue_exit(&n->ring);
}

static struct kumo_throttle_stats stats(const struct node *n)
{
	struct kumo_throttle_stats st;
	kumo_throttle_get_stats(n->t, &st);
	return st;
}

static void wait_shared(struct node *n)
{
	uint64_t start = mono_ms();
	while (!stats(n).shared) {
		assert_true(mono_ms() - start < 10000);
		pump(n, 10);
	}
}

/* ---- Answers. ---- */

struct answer {
	int calls;
	bool yes;      /* allowed, granted or held */
	uint64_t wait; /* GCRA */
	char id[KUMO_THROTTLE_LEASE_ID_MAX];
};

static void on_gcra(void *arg, bool allowed, uint64_t wait_ms)
{
	struct answer *a = arg;
	a->calls++;
	a->yes = allowed;
	a->wait = wait_ms;
}

static void on_lease(void *arg, bool granted, const char *id)
{
	struct answer *a = arg;
	a->calls++;
	a->yes = granted;
	if (granted) {
		assert_non_null(id);
		assert_true(strlen(id) < sizeof(a->id));
		strcpy(a->id, id);
	} else {
		assert_null(id);
		a->id[0] = 0;
	}
}

static void on_renew(void *arg, bool held)
{
	struct answer *a = arg;
	a->calls++;
	a->yes = held;
}

static void drive(struct node *n, const struct answer *a)
{
	uint64_t start = mono_ms();
	while (a->calls == 0) {
		assert_true(mono_ms() - start < 10000);
		pump(n, 5);
	}
	assert_int_equal(a->calls, 1);
}

static struct answer gcra(struct node *n, const char *name, uint64_t count, uint64_t period,
			  uint64_t burst)
{
	struct answer a = {0};
	assert_int_equal(
	    kumo_throttle_gcra(n->t, name, count, period, burst, mono_ms(), on_gcra, &a), 0);
	drive(n, &a);
	return a;
}

static struct answer acquire(struct node *n, const char *name, uint64_t limit, uint64_t ttl)
{
	struct answer a = {0};
	assert_int_equal(
	    kumo_throttle_lease_acquire(n->t, name, limit, ttl, mono_ms(), on_lease, &a), 0);
	drive(n, &a);
	return a;
}

static bool renew(struct node *n, const char *name, const char *id, uint64_t ttl)
{
	struct answer a = {0};
	assert_int_equal(kumo_throttle_lease_renew(n->t, name, id, ttl, mono_ms(), on_renew, &a),
			 0);
	drive(n, &a);
	return a.yes;
}

/* ---- Local mode: deterministic clocks. ---- */

static void test_bad_arguments(void **state)
{
	struct node n;
	const char *bad_urls[] = {"http://127.0.0.1",
				  "redis://",
				  "redis://::1",
				  "redis://[::1]:6379",
				  "redis://mail.example.net:6379",
				  "redis://127.0.0.1:0",
				  "redis://127.0.0.1:65536",
				  "redis://127.0.0.1:x",
				  "redis://user@127.0.0.1",
				  "redis://127.0.0.1/db",
				  "unix://"};
	for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
		struct kumo_throttle_cfg cfg = {.redis_url = bad_urls[i]};
		assert_int_equal(node_open_cfg(&n, &cfg, 0x31), -EINVAL);
	}
	/* a ring is needed for Redis only */
	struct kumo_throttle *t = NULL;
	struct kumo_throttle_cfg rcfg = {.redis_url = "redis://127.0.0.1"};
	assert_int_equal(kumo_throttle_new(&rcfg, NULL, 0, &t), -EINVAL);
	rcfg.redis_url = NULL;
	assert_int_equal(kumo_throttle_new(&rcfg, NULL, 0, &t), 0);
	struct answer g = {0};
	assert_int_equal(kumo_throttle_gcra(t, "x", 1, 1000, 1, 0, on_gcra, &g), 0);
	assert_true(g.calls == 1 && g.yes);
	kumo_throttle_tick(t, 5);
	kumo_throttle_free(t);
	kumo_throttle_free(NULL);

	struct kumo_throttle_cfg cfg = {.node_id = "has space"};
	assert_int_equal(node_open_cfg(&n, &cfg, 0x31), -EINVAL);
	char longid[80];
	memset(longid, 'x', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = 0;
	cfg.node_id = longid;
	assert_int_equal(node_open_cfg(&n, &cfg, 0x31), -EINVAL);
	cfg.node_id = "";
	assert_int_equal(node_open_cfg(&n, &cfg, 0x31), -EINVAL);

	cfg.node_id = "n1";
	assert_int_equal(node_open_cfg(&n, &cfg, 0x31), 0);
	struct answer a = {0};
	char longname[KUMO_THROTTLE_NAME_MAX + 2];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(kumo_throttle_gcra(n.t, "", 1, 1000, 1, 0, on_gcra, &a), -EINVAL);
	assert_int_equal(kumo_throttle_gcra(n.t, longname, 1, 1000, 1, 0, on_gcra, &a), -EINVAL);
	assert_int_equal(kumo_throttle_gcra(n.t, "x", 0, 1000, 1, 0, on_gcra, &a), -EINVAL);
	assert_int_equal(kumo_throttle_gcra(n.t, "x", 1, 0, 1, 0, on_gcra, &a), -EINVAL);
	assert_int_equal(kumo_throttle_lease_acquire(n.t, "x", 1, 0, 0, on_lease, &a), -EINVAL);
	assert_int_equal(kumo_throttle_lease_renew(n.t, "x", "other:5", 100, 0, NULL, NULL),
			 -EINVAL);
	assert_int_equal(kumo_throttle_lease_renew(n.t, "x", "n1:", 100, 0, NULL, NULL), -EINVAL);
	assert_int_equal(kumo_throttle_lease_release(n.t, "x", "n1:12a"), -EINVAL);
	assert_int_equal(kumo_throttle_lease_release(n.t, "x", NULL), -EINVAL);
	assert_int_equal(a.calls, 0);
	/* the longest name is fine */
	longname[KUMO_THROTTLE_NAME_MAX] = 0;
	assert_int_equal(kumo_throttle_gcra(n.t, longname, 1, 1000, 1, 0, on_gcra, &a), 0);
	assert_int_equal(a.calls, 1);
	assert_true(a.yes);
	assert_false(stats(&n).shared);
	assert_false(stats(&n).degraded);
	assert_int_equal(n.loglen, 0);
	node_close(&n);
}

static void test_local_gcra(void **state)
{
	struct node n;
	struct kumo_throttle_cfg cfg = {0};
	assert_int_equal(node_open_cfg(&n, &cfg, 0x32), 0);
	struct answer a = {0};
	/* 10 per second, burst 3: three at once, then one every 100 ms */
	for (int i = 0; i < 3; i++) {
		a.calls = 0;
		assert_int_equal(kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 1000, on_gcra, &a), 0);
		assert_int_equal(a.calls, 1); /* answered before returning */
		assert_true(a.yes);
	}
	kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 1000, on_gcra, &a);
	assert_false(a.yes);
	assert_int_equal(a.wait, 100);
	kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 1060, on_gcra, &a);
	assert_false(a.yes);
	assert_int_equal(a.wait, 40);
	kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 1100, on_gcra, &a);
	assert_true(a.yes);
	kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 1100, on_gcra, &a);
	assert_false(a.yes);
	assert_int_equal(a.wait, 100);
	/* idle long enough, the full burst is back (and no more) */
	int ok = 0;
	for (int i = 0; i < 10; i++) {
		kumo_throttle_gcra(n.t, "r", 10, 1000, 3, 5000, on_gcra, &a);
		ok += a.yes;
	}
	assert_int_equal(ok, 3);
	/* burst 0 means burst = count; names are independent */
	ok = 0;
	for (int i = 0; i < 20; i++) {
		kumo_throttle_gcra(n.t, "other", 10, 1000, 0, 5000, on_gcra, &a);
		ok += a.yes;
	}
	assert_int_equal(ok, 10);
	/* a rate over a minute: 3 per 60 s, burst 1: a 20 s interval */
	kumo_throttle_gcra(n.t, "slow", 3, 60000, 1, 5000, on_gcra, &a);
	assert_true(a.yes);
	kumo_throttle_gcra(n.t, "slow", 3, 60000, 1, 5001, on_gcra, &a);
	assert_false(a.yes);
	assert_int_equal(a.wait, 19999);
	struct kumo_throttle_stats st = stats(&n);
	assert_int_equal(st.redis_answers, 0);
	assert_int_equal(st.local_answers, 39);
	assert_int_equal(st.names, 3);
	/* idle names are forgotten */
	kumo_throttle_tick(n.t, 100000);
	assert_int_equal(stats(&n).names, 0);
	node_close(&n);
}

static void test_local_leases(void **state)
{
	struct node n;
	struct kumo_throttle_cfg cfg = {.node_id = "mta1/loop0"};
	assert_int_equal(node_open_cfg(&n, &cfg, 0x33), 0);
	struct answer a[5] = {{0}};
	for (int i = 0; i < 3; i++) {
		assert_int_equal(
		    kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 0, on_lease, &a[i]), 0);
		assert_int_equal(a[i].calls, 1);
		assert_true(a[i].yes);
		assert_memory_equal(a[i].id, "mta1/loop0:", 11);
	}
	assert_string_not_equal(a[0].id, a[1].id);
	assert_string_not_equal(a[1].id, a[2].id);
	kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 10, on_lease, &a[3]);
	assert_false(a[3].yes);
	/* another name has its own limit */
	kumo_throttle_lease_acquire(n.t, "elsewhere", 1, 1000, 10, on_lease, &a[4]);
	assert_true(a[4].yes);
	/* a release frees a place at once */
	assert_int_equal(kumo_throttle_lease_release(n.t, "site", a[1].id), 0);
	kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 20, on_lease, &a[3]);
	assert_true(a[3].yes);
	/* renewed leases live on, the others expire */
	struct answer r = {0};
	kumo_throttle_lease_renew(n.t, "site", a[0].id, 1000, 900, on_renew, &r);
	assert_int_equal(r.calls, 1);
	assert_true(r.yes);
	kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 1500, on_lease, &a[1]);
	assert_true(a[1].yes);
	kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 1500, on_lease, &a[4]);
	assert_true(a[4].yes);
	kumo_throttle_lease_acquire(n.t, "site", 3, 1000, 1500, on_lease, &a[4]);
	assert_false(a[4].yes);
	kumo_throttle_lease_renew(n.t, "site", a[2].id, 1000, 1500, on_renew, &r);
	assert_int_equal(r.calls, 2);
	assert_false(r.yes); /* expired at 1000 */
	/* releasing an expired or released lease is harmless */
	assert_int_equal(kumo_throttle_lease_release(n.t, "site", a[2].id), 0);
	assert_int_equal(kumo_throttle_lease_release(n.t, "site", a[2].id), 0);
	/* limit 0 grants nothing */
	kumo_throttle_lease_acquire(n.t, "none", 0, 1000, 1500, on_lease, &a[4]);
	assert_false(a[4].yes);
	/* renew without a callback */
	assert_int_equal(kumo_throttle_lease_renew(n.t, "site", a[0].id, 1000, 1600, NULL, NULL),
			 0);
	node_close(&n);
}

/* ---- With Redis. ---- */

static void test_redis_gcra(void **state)
{
	struct node n;
	node_open(&n, main_url(), "g1", 2000, 0x41);
	wait_shared(&n);
	/* 10 per second, burst 5: five at once, the sixth waits about 100 ms */
	for (int i = 0; i < 5; i++)
		assert_true(gcra(&n, "burst", 10, 1000, 5).yes);
	struct answer a = gcra(&n, "burst", 10, 1000, 5);
	assert_false(a.yes);
	assert_true(a.wait >= 50 && a.wait <= 100);
	char tat[64] = "";
	redisContext *c = raw(R.port);
	redisReply *r = redisCommand(c, "GET kumo:throttle:burst");
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	snprintf(tat, sizeof(tat), "%s", r->str);
	freeReplyObject(r);
	r = redisCommand(c, "PTTL kumo:throttle:burst");
	assert_true(r->integer > 0 && r->integer <= 501); /* gone once idle */
	freeReplyObject(r);
	redisFree(c);
	assert_true(strtod(tat, NULL) > 1e15); /* microseconds of Redis' clock */

	/* 20 per second, burst 1, for 2 s, asking again as soon as allowed: at most 40 + 2;
	 * fewer when the machine is busy and wake-ups come late */
	uint64_t start = mono_ms();
	int allowed = 0, denied = 0;
	while (mono_ms() - start < 2000) {
		a = gcra(&n, "rate", 20, 1000, 1);
		if (a.yes) {
			allowed++;
		} else {
			denied++;
			assert_true(a.wait >= 1 && a.wait <= 50);
			run_for(&n, a.wait);
		}
	}
	assert_in_range(allowed, 30, 42);
	assert_true(denied >= allowed - 2);
	struct kumo_throttle_stats st = stats(&n);
	assert_int_equal(st.local_answers, 0);
	assert_int_equal(st.redis_answers, 6 + allowed + denied);
	assert_int_equal(st.timeouts, 0);
	assert_int_equal(st.pending, 0);
	assert_int_equal(n.loglen, 0);
	node_close(&n);
}

/* Two nodes asking in turns, each honouring its own waits, share one limit. */
static void test_two_nodes_share_one_limit(void **state)
{
	struct node nodes[2];
	node_open(&nodes[0], main_url(), "nodeA", 2000, 0x42);
	node_open(&nodes[1], main_url(), "nodeB", 2000, 0x43);
	wait_shared(&nodes[0]);
	wait_shared(&nodes[1]);
	struct answer a[2] = {{0}};
	bool outstanding[2] = {false, false};
	uint64_t next[2] = {0, 0};
	int allowed[2] = {0, 0};
	uint64_t start = mono_ms();
	for (uint64_t now; (now = mono_ms()) - start < 2000;) {
		for (int i = 0; i < 2; i++) {
			if (!outstanding[i] && now >= next[i]) {
				a[i] = (struct answer){0};
				assert_int_equal(kumo_throttle_gcra(nodes[i].t, "shared", 20, 1000,
								    1, now, on_gcra, &a[i]),
						 0);
				outstanding[i] = true;
			}
			pump(&nodes[i], 0);
			if (outstanding[i] && a[i].calls) {
				outstanding[i] = false;
				if (a[i].yes)
					allowed[i]++;
				else
					next[i] = mono_ms() + a[i].wait;
			}
		}
		usleep(200);
	}
	int total = allowed[0] + allowed[1];
	assert_in_range(total, 36, 42); /* one node alone would get the same */
	assert_true(allowed[0] >= 5 && allowed[1] >= 5);
	for (int i = 0; i < 2; i++) {
		while (outstanding[i] && !a[i].calls)
			pump(&nodes[i], 5);
		assert_int_equal(stats(&nodes[i]).local_answers, 0);
		node_close(&nodes[i]);
	}
}

static void test_leases_shared(void **state)
{
	struct node A, B, C;
	node_open(&A, main_url(), "leaseA", 2000, 0x44);
	node_open(&B, main_url(), "leaseB", 2000, 0x45);
	wait_shared(&A);
	wait_shared(&B);
	struct answer a1 = acquire(&A, "mx.example", 3, 10000);
	struct answer a2 = acquire(&A, "mx.example", 3, 10000);
	struct answer b1 = acquire(&B, "mx.example", 3, 10000);
	assert_true(a1.yes && a2.yes && b1.yes);
	assert_memory_equal(a1.id, "leaseA:", 7);
	assert_memory_equal(b1.id, "leaseB:", 7);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:mx.example"), 3);
	assert_true(raw_int(R.port, "ZRANK kumo:lease:mx.example %s", b1.id) >= 0);
	/* the fourth is refused, on either node */
	assert_false(acquire(&A, "mx.example", 3, 10000).yes);
	assert_false(acquire(&B, "mx.example", 3, 10000).yes);
	/* a release on one node frees a place for the other */
	assert_int_equal(kumo_throttle_lease_release(B.t, "mx.example", b1.id), 0);
	run_for(&B, 20); /* B's ZREM goes out */
	struct answer a3 = acquire(&A, "mx.example", 3, 10000);
	assert_true(a3.yes);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:mx.example"), 3);
	/* renewing: a held lease is extended, a released one is not held */
	double before = raw_score(R.port, "kumo:lease:mx.example", a1.id);
	assert_true(renew(&A, "mx.example", a1.id, 20000));
	double after = raw_score(R.port, "kumo:lease:mx.example", a1.id);
	assert_true(after - before > 9000 && after - before < 11000);
	assert_false(renew(&B, "mx.example", b1.id, 20000));
	assert_int_equal(raw_int(R.port, "PTTL %s", "kumo:lease:mx.example") > 15000, 1);

	/* a holder that crashes: its lease frees up once its ttl is over */
	node_open(&C, main_url(), "leaseC", 2000, 0x46);
	wait_shared(&C);
	assert_true(acquire(&C, "crash.example", 1, 800).yes);
	node_close(&C); /* no release */
	assert_false(acquire(&A, "crash.example", 1, 800).yes);
	run_for(&A, 900);
	assert_true(acquire(&A, "crash.example", 1, 800).yes);
	assert_int_equal(stats(&A).local_answers, 0);
	assert_int_equal(stats(&B).local_answers, 0);
	node_close(&A);
	node_close(&B);
}

/* SCRIPT FLUSH empties the script cache: EVALSHA gets NOSCRIPT and the request is sent
 * again with EVAL; AUTH, SELECT and a unix socket work. */
static void test_noscript_auth_unix(void **state)
{
	struct node n;
	node_open(&n, main_url(), "ns", 2000, 0x47);
	wait_shared(&n);
	assert_true(gcra(&n, "ns", 100, 1000, 100).yes); /* the SHA is known by now */
	raw_cmd(R.port, "SCRIPT FLUSH");
	assert_true(gcra(&n, "ns", 100, 1000, 100).yes);
	assert_true(acquire(&n, "ns", 5, 1000).yes);
	struct kumo_throttle_stats st = stats(&n);
	assert_true(st.noscript >= 1);
	assert_int_equal(st.local_answers, 0);
	assert_int_equal(st.errors, 0);
	assert_true(gcra(&n, "ns", 100, 1000, 100).yes);
	assert_int_equal(stats(&n).noscript, st.noscript); /* loaded again */
	node_close(&n);

	char url[160];
	snprintf(url, sizeof(url), "unix://%s", R.sock);
	node_open(&n, url, "unix", 2000, 0x48);
	wait_shared(&n);
	assert_true(acquire(&n, "via-unix", 1, 5000).yes);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:via-unix"), 1);
	node_close(&n);

	R.auth_port = free_port();
	R.auth_pid = spawn_redis(R.auth_port, "s3cret", NULL);
	assert_true(R.auth_pid > 0);
	snprintf(url, sizeof(url), "redis://:s3cret@127.0.0.1:%d/3", R.auth_port);
	node_open(&n, url, "auth", 2000, 0x49);
	wait_shared(&n);
	assert_true(acquire(&n, "authed", 1, 5000).yes);
	assert_int_equal(stats(&n).redis_answers, 1);
	node_close(&n);
	{
		redisContext *c = raw(R.auth_port);
		redisReply *r = redisCommand(c, "AUTH s3cret");
		freeReplyObject(r);
		r = redisCommand(c, "SELECT 3");
		freeReplyObject(r);
		r = redisCommand(c, "ZCARD kumo:lease:authed");
		assert_int_equal(r->integer, 1);
		freeReplyObject(r);
		redisFree(c);
	}
	/* a wrong password: logged, every answer local */
	snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d", R.auth_port);
	node_open(&n, url, "noauth", 2000, 0x4a);
	struct answer a = {0};
	kumo_throttle_gcra(n.t, "x", 1, 1000, 1, mono_ms(), on_gcra, &a);
	drive(&n, &a);
	assert_true(a.yes);
	run_for(&n, 50);
	assert_true(log_count(&n, "AUTH refused") >= 1);
	assert_int_equal(log_count(&n, "redis unreachable, using local limits"), 1);
	assert_false(stats(&n).shared);
	assert_int_equal(stats(&n).redis_answers, 0);
	node_close(&n);
	stop_pid(&R.auth_pid, SIGTERM);
}

/* Redis stops answering (SIGSTOP): requests time out, are answered locally, and the
 * connection is dropped; once it answers again the node goes back to it. */
static void test_timeout_falls_back(void **state)
{
	struct node n;
	node_open(&n, main_url(), "slow", 300, 0x4b);
	wait_shared(&n);
	assert_true(gcra(&n, "to", 2, 1000, 1).yes);
	struct answer l = acquire(&n, "to.example", 2, 60000);
	assert_true(l.yes);
	kill(R.pid, SIGSTOP);
	uint64_t t0 = mono_ms();
	struct answer a = gcra(&n, "to", 2, 1000, 1);
	uint64_t took = mono_ms() - t0;
	kill(R.pid, SIGCONT);
	assert_true(took >= 250 && took < 1500);
	assert_true(a.yes); /* the local limit has not seen the first one */
	struct kumo_throttle_stats st = stats(&n);
	assert_int_equal(st.timeouts, 1);
	assert_int_equal(st.local_answers, 1);
	assert_int_equal(log_count(&n, "redis unreachable, using local limits"), 1);
	/* local answers are immediate while degraded */
	t0 = mono_ms();
	a = gcra(&n, "to", 2, 1000, 1);
	assert_false(a.yes);
	assert_true(mono_ms() - t0 < 50);
	/* released while degraded: sent once Redis is back */
	assert_int_equal(kumo_throttle_lease_release(n.t, "to.example", l.id), 0);
	wait_shared(&n);
	assert_int_equal(log_count(&n, "redis reachable again, using shared limits"), 1);
	a = gcra(&n, "to", 100, 1000, 100);
	assert_true(a.yes);
	assert_int_equal(stats(&n).local_answers, st.local_answers + 1);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:to.example"), 0);
	node_close(&n);
}

/* Redis is killed: answers keep coming from the local limits, one log line says so,
 * reconnect attempts go on quietly; after a restart the nodes share Redis again and
 * register the leases they hold, which the fresh server had lost. */
static void test_redis_killed_and_restarted(void **state)
{
	struct node A, B;
	node_open(&A, main_url(), "killA", 5000, 0x4c);
	node_open(&B, main_url(), "killB", 5000, 0x4d);
	wait_shared(&A);
	wait_shared(&B);
	struct answer l1 = acquire(&A, "k.example", 3, 30000);
	struct answer l2 = acquire(&A, "k.example", 3, 30000);
	struct answer lb = acquire(&B, "k.example", 3, 30000);
	assert_true(l1.yes && l2.yes && lb.yes);
	assert_true(gcra(&A, "k", 20, 1000, 1).yes);

	/* killed with a request in flight: answered locally at once, not after 5 s */
	kill(R.pid, SIGSTOP);
	struct answer a = {0};
	kumo_throttle_gcra(A.t, "k", 20, 1000, 1, mono_ms(), on_gcra, &a);
	pump(&A, 20);
	assert_int_equal(a.calls, 0);
	stop_pid(&R.pid, SIGKILL);
	uint64_t t0 = mono_ms();
	drive(&A, &a);
	assert_true(mono_ms() - t0 < 1000);
	assert_true(a.yes); /* the local limit is fresh */
	assert_int_equal(log_count(&A, "redis unreachable, using local limits"), 1);
	assert_true(stats(&A).degraded);

	/* B finds out with its next request (written to a dead socket: no SIGPIPE death) */
	a = gcra(&B, "k", 20, 1000, 1);
	assert_true(a.yes);
	a = gcra(&B, "k", 20, 1000, 1);
	assert_false(a.yes);
	assert_true(a.wait >= 40 && a.wait <= 50);
	assert_int_equal(log_count(&B, "redis unreachable, using local limits"), 1);

	/* local leases count what A still holds: one more for A, then refused */
	struct answer l3 = acquire(&A, "k.example", 3, 30000);
	assert_true(l3.yes);
	assert_false(acquire(&A, "k.example", 3, 30000).yes);
	/* renewing while unreachable keeps the lease; a release is kept for later */
	assert_true(renew(&A, "k.example", l1.id, 30000));
	assert_int_equal(kumo_throttle_lease_release(B.t, "k.example", lb.id), 0);

	/* answers keep coming for 2.5 s; reconnect attempts fail without logging */
	uint64_t end = mono_ms() + 2500;
	int answers = 0;
	while (mono_ms() < end) {
		a = gcra(&A, "busy", 1000, 1000, 1000);
		answers += a.calls;
		pump(&B, 10);
		run_for(&A, 10);
	}
	assert_true(answers > 20);
	assert_true(stats(&A).failures >= 3);
	assert_int_equal(log_count(&A, "redis unreachable"), 1);
	assert_int_equal(log_count(&B, "redis unreachable"), 1);
	assert_int_equal(stats(&A).redis_answers, 3);

	/* restarted on the same port, empty */
	start_main_redis();
	assert_int_equal(raw_int(R.port, "EXISTS %s", "kumo:lease:k.example"), 0);
	wait_shared(&A);
	wait_shared(&B);
	assert_int_equal(log_count(&A, "redis reachable again, using shared limits"), 1);
	assert_int_equal(log_count(&B, "redis reachable again, using shared limits"), 1);
	/* a round trip on each connection, then A's three leases are back in Redis */
	assert_true(gcra(&A, "after", 100, 1000, 100).yes);
	assert_true(gcra(&B, "after", 100, 1000, 100).yes);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:k.example"), 3);
	assert_true(raw_int(R.port, "ZRANK kumo:lease:k.example %s", l3.id) >= 0);
	assert_false(acquire(&B, "k.example", 3, 30000).yes);
	assert_int_equal(kumo_throttle_lease_release(A.t, "k.example", l2.id), 0);
	run_for(&A, 20); /* A's ZREM goes out */
	struct answer lb2 = acquire(&B, "k.example", 3, 30000);
	assert_true(lb2.yes);
	assert_int_equal(raw_int(R.port, "ZCARD %s", "kumo:lease:k.example"), 3);

	/* shared again: both nodes together get one limit's worth */
	int total = 0;
	uint64_t start = mono_ms();
	for (int i = 0; mono_ms() - start < 500; i++) {
		struct node *n = (i & 1) ? &B : &A;
		total += gcra(n, "again", 20, 1000, 5).yes;
	}
	assert_in_range(total, 14, 17); /* 5 at once, then one per 50 ms */
	node_close(&A);
	node_close(&B);
}

/* Connecting to a port where nothing listens: local answers from the start, one log
 * line, retries with backoff; the object is freed with the connection in any state. */
static void test_unreachable_from_start(void **state)
{
	struct node n;
	char url[64];
	int port = free_port();
	snprintf(url, sizeof(url), "redis://localhost:%d", port);
	node_open(&n, url, NULL, 500, 0x4e);
	struct answer a = gcra(&n, "u", 1, 1000, 1);
	assert_true(a.yes);
	a = gcra(&n, "u", 1, 1000, 1);
	assert_false(a.yes);
	struct answer l = acquire(&n, "u", 1, 1000);
	assert_true(l.yes);
	assert_int_equal(strlen(l.id), 16 + 1 + strspn(l.id + 17, "0123456789"));
	run_for(&n, 1600);
	struct kumo_throttle_stats st = stats(&n);
	assert_true(st.degraded);
	assert_false(st.shared);
	assert_true(st.failures >= 2);
	assert_int_equal(st.redis_answers, 0);
	assert_int_equal(log_count(&n, "redis unreachable, using local limits"), 1);
	assert_true(kumo_throttle_next_timeout_ms(n.t, mono_ms()) <= 1000);
	node_close(&n);

	/* freed while requests are in flight: their callbacks never run */
	node_open(&n, main_url(), "inflight", 2000, 0x4f);
	wait_shared(&n);
	a = (struct answer){0};
	kumo_throttle_gcra(n.t, "f", 1, 1000, 1, mono_ms(), on_gcra, &a);
	assert_int_equal(stats(&n).pending, 1);
	io_uring_submit(&n.ring);
	node_close(&n);
	assert_int_equal(a.calls, 0);
}

int main(void)
{
	const struct CMUnitTest local[] = {
	    cmocka_unit_test(test_bad_arguments),
	    cmocka_unit_test(test_local_gcra),
	    cmocka_unit_test(test_local_leases),
	};
	const struct CMUnitTest redis[] = {
	    cmocka_unit_test(test_redis_gcra),
	    cmocka_unit_test(test_two_nodes_share_one_limit),
	    cmocka_unit_test(test_leases_shared),
	    cmocka_unit_test(test_noscript_auth_unix),
	    cmocka_unit_test(test_timeout_falls_back),
	    cmocka_unit_test(test_redis_killed_and_restarted),
	    cmocka_unit_test(test_unreachable_from_start),
	};
	int failed = cmocka_run_group_tests_name("throttle_local", local, NULL, NULL);
	if (!in_path("redis-server")) {
		fprintf(stderr, "redis-server not installed: skipping the Redis tests\n");
		return failed ? failed : 77;
	}
	return failed +
	       cmocka_run_group_tests_name("throttle_redis", redis, group_setup, group_teardown);
}
