/* kumod: the MTA daemon. Reads its TOML config (or the embedded default), builds a libkumo
 * engine with its SMTP listeners, runs until SIGINT/SIGTERM, then stops gracefully. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "tsa.h"
#include "engine/shaping.h"
#include "kumo/kumo.h"

static void diag(void *arg, enum kumo_log_level level, const char *line)
{
	static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s kumod %s %s\n", stamp, names[level & 3], line);
}

static void usage(FILE *f)
{
	fputs("usage: kumod [--config FILE] [--threads N]\n"
	      "       kumod --check-config FILE\n"
	      "       kumod [--config FILE] --list-spool\n"
	      "  --config FILE        TOML configuration (default: embedded, see docs)\n"
	      "  --check-config FILE  validate FILE and exit (non-zero naming file, line, key)\n"
	      "  --list-spool         print every message in the spool as a JSON line and exit\n"
	      "  --threads N          override engine.threads\n"
	      "  --print-default-config  print the embedded default configuration\n",
	      f);
}

static void print_spooled(void *arg, const char *json, size_t len)
{
	fwrite(json, 1, len, stdout);
	fputc('\n', stdout);
	(*(unsigned long *)arg)++;
}

static int add_listeners(struct kumo_engine *e, const struct kumod_config *c)
{
	for (size_t i = 0; i < c->nlisteners; i++) {
		int err = kumo_engine_add_listener(e, &c->listeners[i].cfg);
		if (err < 0) {
			fprintf(stderr, "kumod: listener %s: %s\n", c->listeners[i].cfg.address,
				strerror(-err));
			return err;
		}
	}
	return 0;
}

static int add_egress(struct kumo_engine *e, const struct kumod_config *c)
{
	int err = 0;
	for (size_t i = 0; i < c->nsources && !err; i++)
		err = kumo_engine_add_source(e, &c->sources[i]);
	for (size_t i = 0; i < c->npools && !err; i++)
		err = kumo_engine_add_pool(e, c->pools[i].name, c->pools[i].entries, c->pools[i].n);
	for (size_t i = 0; i < c->npool_rules && !err; i++)
		err = kumo_engine_set_queue_pool(e, c->pool_rules[i].match, c->pool_rules[i].name,
						 c->pool_rules[i].pool);
	if (err < 0)
		fprintf(stderr, "kumod: egress sources and pools: %s\n", strerror(-err));
	return err;
}

static int run(struct kumod_config *c)
{
	struct kumo_engine *e;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* loop threads inherit the mask */
	signal(SIGPIPE, SIG_IGN);
	c->engine.log_fn = diag;
	struct kumod_tsa *tsa = NULL;
	if (c->ntsa_urls) {
		struct kumod_tsa_cfg tc = {.urls = c->tsa_urls, .nurls = c->ntsa_urls,
					   .poll_ms = c->tsa_poll_ms,
					   .max_pending = c->tsa_max_pending};
		int terr = kumod_tsa_new(&tc, &tsa);
		if (terr < 0) {
			fprintf(stderr, "kumod: tsa: %s\n", strerror(-terr));
			return 1;
		}
		c->engine.record_fn = kumod_tsa_record;
		c->engine.record_arg = tsa;
	}
	int err = kumo_engine_new(&c->engine, &e);
	if (err < 0) {
		fprintf(stderr, "kumod: cannot start the engine: %s\n", strerror(-err));
		return 1;
	}
	if (c->http_listen)
		diag(NULL, KUMO_LOG_WARN, "[http] listen is accepted but this version serves no "
					  "HTTP API yet");
	for (size_t i = 0; i < c->nroutes && err == 0; i++)
		if ((err = kumo_engine_add_route(e, c->routes[i][0], c->routes[i][1])) < 0)
			fprintf(stderr, "kumod: route %s: %s\n", c->routes[i][0], strerror(-err));
	if (err == 0)
		err = add_egress(e, c);
	if (err < 0 || add_listeners(e, c) < 0 || (err = kumo_engine_start(e)) < 0 ||
	    (tsa && (err = kumod_tsa_start(tsa, e)) < 0)) {
		if (err < 0)
			fprintf(stderr, "kumod: cannot start: %s\n", strerror(-err));
		kumo_engine_free(e);
		kumod_tsa_stop(tsa);
		return 1;
	}
	for (size_t i = 0; i < c->nlisteners; i++)
		diag(NULL, KUMO_LOG_INFO, c->listeners[i].cfg.address);
	diag(NULL, KUMO_LOG_INFO, "ready");
	int sig;
	sigwait(&set, &sig);
	diag(NULL, KUMO_LOG_INFO, "stopping: finishing open transactions and the spool");
	kumo_engine_stop(e);
	kumo_engine_wait(e);
	kumod_tsa_stop(tsa); /* after the loops: their last records are posted too */
	struct kumo_engine_stats st;
	kumo_engine_stats(e, &st);
	char line[256];
	snprintf(line, sizeof(line),
		 "stopped: %llu connections, %llu messages received in %llu spool batches, "
		 "%llu rejections, %llu queued",
		 (unsigned long long)st.connections, (unsigned long long)st.messages_received,
		 (unsigned long long)st.spool_batches, (unsigned long long)st.messages_rejected,
		 (unsigned long long)st.queued);
	diag(NULL, KUMO_LOG_INFO, line);
	kumo_engine_free(e);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", required_argument, NULL, 'C'},
		{"list-spool", no_argument, NULL, 'l'},
		{"threads", required_argument, NULL, 't'},
		{"print-default-config", no_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}};
	const char *config = NULL, *check = NULL;
	bool list = false;
	long threads = -1;
	int o;
	while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case 'C': check = optarg; break;
		case 'l': list = true; break;
		case 't': threads = strtol(optarg, NULL, 10); break;
		case 'p': fputs(kumod_default_config, stdout); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	struct kumod_config c;
	char err[512];
	const char *file = check ? check : config;
	int rc = file ? kumod_config_load(file, &c, err, sizeof(err))
		      : kumod_config_parse(kumod_default_config, strlen(kumod_default_config),
					   "<default config>", &c, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kumod: %s\n", err);
		return 1;
	}
	if (check && c.engine.nshaping_files) {
		struct kumo_shaping *sh;
		if (kumo_shaping_load(c.engine.shaping_files, c.engine.nshaping_files, &sh, err,
				      sizeof(err)) < 0) {
			fprintf(stderr, "kumod: %s\n", err);
			kumod_config_free(&c);
			return 1;
		}
		kumo_shaping_free(sh);
	}
	if (check) {
		printf("%s: OK\n", check);
		kumod_config_free(&c);
		return 0;
	}
	if (threads >= 0)
		c.engine.threads = (unsigned)threads;
	if (list) {
		unsigned long n = 0;
		rc = kumo_spool_list(c.engine.spool_path, print_spooled, &n);
		if (rc < 0)
			fprintf(stderr, "kumod: spool %s: %s\n", c.engine.spool_path, strerror(-rc));
		else
			fprintf(stderr, "kumod: %lu messages in %s\n", n, c.engine.spool_path);
		kumod_config_free(&c);
		return rc < 0;
	}
	rc = run(&c);
	kumod_config_free(&c);
	return rc;
}
