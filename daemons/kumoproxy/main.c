/* kumoproxy: the SOCKS5 egress proxy. Reads its options, starts one io_uring loop per
 * thread on a shared SO_REUSEPORT address and the metrics endpoint, prints the counters on
 * SIGUSR1, and stops on SIGINT/SIGTERM. See docs/kumoproxy.md. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy.h"
#include "util/net.h"

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void diag(const char *fmt, ...)
{
	char stamp[32], line[1024];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s kumoproxy %s\n", stamp, line);
}

static void usage(FILE *f)
{
	fputs("usage: kumoproxy [--listen ADDR:PORT] [--users FILE] [--threads N]\n"
	      "                 [--max-connections N] [--idle-timeout DURATION]\n"
	      "                 [--connect-timeout DURATION] [--handshake-timeout DURATION]\n"
	      "                 [--metrics ADDR:PORT] [--log FILE] [--allow-source CIDR]...\n"
	      "                 [--buffer-size BYTES] [--relay splice|copy]\n"
	      "  --listen ADDR:PORT         SOCKS5 listener (default 127.0.0.1:1080)\n"
	      "  --users FILE               \"user:password\" lines; clients must authenticate\n"
	      "  --threads N                io_uring loops (default: one per CPU)\n"
	      "  --max-connections N        open sessions; over it requests get 0x01 (4096)\n"
	      "  --idle-timeout DURATION    relay with no byte either way (300s; 0: none)\n"
	      "  --connect-timeout DURATION outbound connect, answered 0x06 (60s)\n"
	      "  --handshake-timeout DURATION  each SOCKS message from the client (60s)\n"
	      "  --metrics ADDR:PORT        HTTP GET of the counters (Prometheus text)\n"
	      "  --log FILE                 session records, one JSON line each (default stdout)\n"
	      "  --allow-source CIDR        BIND sources allowed (repeatable; default any)\n"
	      "  --buffer-size BYTES        relay buffer per direction (65536)\n"
	      "  --relay splice|copy        how bytes are moved (splice)\n"
	      "DURATION: 300s, 5m, 1h, 1500ms or a number of seconds\n",
	      f);
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *end || errno || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

struct opts {
	const char *users, *log;
	long cpus;
};

static int parse_args(int argc, char **argv, struct kproxy_cfg *cfg, struct opts *o)
{
	static const struct option lopts[] = {{"listen", required_argument, NULL, 'l'},
					      {"users", required_argument, NULL, 'u'},
					      {"threads", required_argument, NULL, 't'},
					      {"max-connections", required_argument, NULL, 'c'},
					      {"idle-timeout", required_argument, NULL, 'i'},
					      {"connect-timeout", required_argument, NULL, 'C'},
					      {"handshake-timeout", required_argument, NULL, 'H'},
					      {"metrics", required_argument, NULL, 'm'},
					      {"log", required_argument, NULL, 'L'},
					      {"allow-source", required_argument, NULL, 'a'},
					      {"buffer-size", required_argument, NULL, 'b'},
					      {"relay", required_argument, NULL, 'r'},
					      {"help", no_argument, NULL, 'h'},
					      {NULL, 0, NULL, 0}};
	unsigned long v;
	int c;
	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		const char *bad = NULL;
		switch (c) {
		case 'l':
			if (kumo_parse_address(optarg, &cfg->listen, &cfg->listen_len) < 0)
				bad = "--listen";
			break;
		case 'u':
			o->users = optarg;
			break;
		case 't':
			if (parse_uint(optarg, 1, 1024, &v) < 0)
				bad = "--threads";
			cfg->threads = (unsigned)v;
			break;
		case 'c':
			if (parse_uint(optarg, 1, 1u << 22, &v) < 0)
				bad = "--max-connections";
			cfg->max_connections = (unsigned)v;
			break;
		case 'i':
			if (kproxy_parse_duration(optarg, &cfg->idle_ms) < 0)
				bad = "--idle-timeout";
			break;
		case 'C':
			if (kproxy_parse_duration(optarg, &cfg->connect_ms) < 0 || !cfg->connect_ms)
				bad = "--connect-timeout";
			break;
		case 'H':
			if (kproxy_parse_duration(optarg, &cfg->handshake_ms) < 0 ||
			    !cfg->handshake_ms)
				bad = "--handshake-timeout";
			break;
		case 'm':
			if (kumo_parse_address(optarg, &cfg->metrics, &cfg->metrics_len) < 0)
				bad = "--metrics";
			break;
		case 'L':
			o->log = optarg;
			break;
		case 'a': {
			struct kproxy_cidr *a =
			    realloc(cfg->allow, (cfg->nallow + 1) * sizeof(*cfg->allow));
			if (!a)
				return -ENOMEM;
			cfg->allow = a;
			if (kproxy_parse_cidr(optarg, &cfg->allow[cfg->nallow]) < 0)
				bad = "--allow-source";
			else
				cfg->nallow++;
			break;
		}
		case 'b':
			/* at least the handshake input a client may send ahead of the relay */
			if (parse_uint(optarg, 4096, 16u << 20, &v) < 0)
				bad = "--buffer-size (4096 to 16777216)";
			cfg->buffer = v;
			break;
		case 'r':
			if (!strcmp(optarg, "copy"))
				cfg->relay = KPROXY_RELAY_COPY;
			else if (!strcmp(optarg, "splice"))
				cfg->relay = KPROXY_RELAY_SPLICE;
			else
				bad = "--relay";
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
		if (bad) {
			fprintf(stderr, "kumoproxy: invalid %s: %s\n", bad, optarg);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

static void print_counters(struct kproxy *px)
{
	char buf[8192];
	size_t n = kproxy_metrics_format(px, buf, sizeof(buf));
	fwrite(buf, 1, n, stderr);
	fflush(stderr);
}

int main(int argc, char **argv)
{
	struct kproxy px;
	struct opts o = {0};
	struct kproxy_metrics *metrics = NULL;
	char err[512];
	int rc = 1;

	memset(&px, 0, sizeof(px));
	struct kproxy_cfg *cfg = &px.cfg;
	kumo_parse_address("127.0.0.1:1080", &cfg->listen, &cfg->listen_len);
	cfg->max_connections = KPROXY_DEFAULT_MAX_CONNECTIONS;
	cfg->idle_ms = KPROXY_DEFAULT_IDLE_MS;
	cfg->connect_ms = KPROXY_DEFAULT_CONNECT_MS;
	cfg->handshake_ms = KPROXY_DEFAULT_HANDSHAKE_MS;
	cfg->buffer = KPROXY_DEFAULT_BUFFER;
	cfg->relay = KPROXY_RELAY_SPLICE;
	cfg->log_fd = STDOUT_FILENO;
	if (parse_args(argc, argv, cfg, &o) < 0)
		goto out_cfg;
	if (!cfg->threads) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->threads = n > 0 ? (unsigned)n : 1;
	}
	if (o.users && kproxy_users_load(o.users, &cfg->users, err, sizeof(err)) < 0) {
		fprintf(stderr, "kumoproxy: %s\n", err);
		goto out_cfg;
	}
	if (o.log && strcmp(o.log, "-")) {
		cfg->log_fd = open(o.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
		if (cfg->log_fd < 0) {
			fprintf(stderr, "kumoproxy: --log %s: %s\n", o.log, strerror(errno));
			goto out_cfg;
		}
	} else {
		/* records of all loops are appended whole, also when stdout is a file */
		int fl = fcntl(STDOUT_FILENO, F_GETFL);
		if (fl >= 0)
			fcntl(STDOUT_FILENO, F_SETFL, fl | O_APPEND);
	}

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* threads inherit the mask */
	signal(SIGPIPE, SIG_IGN);

	px.loops = calloc(cfg->threads, sizeof(*px.loops));
	if (!px.loops)
		goto out_log;
	for (unsigned i = 0; i < cfg->threads; i++) {
		int e = kproxy_loop_new(&px, i, &px.loops[i]);
		if (e < 0) {
			char a[80];
			kproxy_format_addr((const struct sockaddr *)&cfg->listen, a, sizeof(a));
			fprintf(stderr, "kumoproxy: listener %s: %s\n", a, strerror(-e));
			goto out_loops;
		}
		px.nloops++;
	}
	if (cfg->metrics.ss_family) {
		int e = kproxy_metrics_start(&px, &metrics);
		if (e < 0) {
			char a[80];
			kproxy_format_addr((const struct sockaddr *)&cfg->metrics, a, sizeof(a));
			fprintf(stderr, "kumoproxy: metrics %s: %s\n", a, strerror(-e));
			goto out_loops;
		}
	}
	unsigned started = 0;
	for (; started < px.nloops; started++) {
		int e = kproxy_loop_start(px.loops[started]);
		if (e < 0) {
			fprintf(stderr, "kumoproxy: cannot start loop %u: %s\n", started,
				strerror(-e));
			break;
		}
	}
	if (started == px.nloops) {
		char a[80];
		kproxy_format_addr((const struct sockaddr *)&cfg->listen, a, sizeof(a));
		diag("listening on %s with %u threads, %s, %s relay; ready", a, cfg->threads,
		     cfg->users.n ? "authentication required" : "no authentication",
		     cfg->relay == KPROXY_RELAY_SPLICE ? "splice" : "copy");
		int sig = 0;
		while (sigwait(&set, &sig) == 0 && sig == SIGUSR1)
			print_counters(&px);
		diag("stopping on signal %d: closing sessions", sig);
		rc = 0;
	}
	for (unsigned i = 0; i < started; i++)
		kproxy_loop_stop(px.loops[i]);
	for (unsigned i = 0; i < started; i++)
		kproxy_loop_join(px.loops[i]);
	kproxy_metrics_stop(metrics);
	if (rc == 0) {
		print_counters(&px);
		diag("stopped");
	}
out_loops:
	for (unsigned i = 0; i < px.nloops; i++)
		kproxy_loop_free(px.loops[i]);
	free(px.loops);
out_log:
	if (cfg->log_fd != STDOUT_FILENO)
		close(cfg->log_fd);
out_cfg:
	kproxy_users_free(&cfg->users);
	free(cfg->allow);
	return rc;
}
