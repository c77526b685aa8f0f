/* tsa-daemon: traffic shaping automation. Reads its config, loads the automation rules,
 * restores the actions in force from SQLite, and serves the HTTP API until SIGINT/SIGTERM. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "engine.h"
#include "rules.h"
#include "server.h"
#include "store.h"

static void diag(void *arg, const char *line)
{
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s tsa-daemon %s %s\n", stamp, arg ? (const char *)arg : "INFO", line);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f)
{
	fputs("usage: tsa-daemon --config FILE\n"
	      "       tsa-daemon --check-config FILE\n"
	      "  --config FILE        TOML configuration (see docs/reference/tsa-config.md)\n"
	      "  --check-config FILE  validate FILE, its shaping files and their regexes, and "
	      "exit\n",
	      f);
}

static int restore(void *arg, const struct tsa_action *a)
{
	return tsa_engine_restore(arg, a, now_ms());
}

static int run(const struct tsa_config *c)
{
	struct tsa_rules *rules = NULL;
	struct tsa_store *store = NULL;
	struct tsa_engine *engine = NULL;
	struct tsa_server *server = NULL;
	char err[600], line[700];
	int rc = 1;

	if (tsa_rules_load((const char *const *)c->shaping_files, c->nshaping_files, &rules, err,
			   sizeof(err)) < 0) {
		diag("ERROR", err);
		goto out;
	}
	if (tsa_store_open(c->state, now_ms(), &store, err, sizeof(err)) < 0) {
		diag("ERROR", err);
		goto out;
	}
	struct tsa_engine_cfg ecfg = {.max_windows = c->max_windows};
	if (tsa_engine_new(rules, &ecfg, &engine) < 0) {
		diag("ERROR", "out of memory");
		goto out;
	}
	int lrc = tsa_store_load(store, now_ms(), restore, engine);
	if (lrc < 0) {
		snprintf(line, sizeof(line), "%s: cannot read the saved actions: %s", c->state,
			 strerror(-lrc));
		diag("ERROR", line);
		goto out;
	}
	struct tsa_server_cfg scfg = {.addr = (const struct sockaddr *)&c->addr,
				      .addrlen = c->addrlen,
				      .max_connections = c->max_connections,
				      .max_body = c->max_body,
				      .idle_timeout_ms = c->idle_timeout_ms,
				      .log = diag};
	/* The server blocks SIGINT and SIGTERM before the store's thread starts. */
	if (tsa_server_new(&scfg, engine, store, &server, err, sizeof(err)) < 0) {
		snprintf(line, sizeof(line), "%s: %s", c->listen, err);
		diag("ERROR", line);
		goto out;
	}
	if ((lrc = tsa_store_start(store, tsa_server_notify_fd(server))) < 0) {
		snprintf(line, sizeof(line), "cannot start the store writer: %s", strerror(-lrc));
		diag("ERROR", line);
		goto out;
	}
	snprintf(line, sizeof(line),
		 "%zu automation rules from %zu shaping files; %zu actions in force from %s",
		 tsa_rules_count(rules), c->nshaping_files,
		 tsa_engine_count(engine, TSA_NKINDS, now_ms()), c->state);
	diag(NULL, line);
	snprintf(line, sizeof(line), "listening on %s (port %d)", c->listen,
		 tsa_server_port(server));
	diag(NULL, line);
	rc = tsa_server_run(server) < 0;
	diag(NULL, "stopped");
out:
	tsa_store_close(store); /* writes what is queued first */
	tsa_server_free(server);
	tsa_engine_free(engine);
	tsa_rules_free(rules);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"check-config", required_argument, NULL, 'C'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *config = NULL, *check = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			config = optarg;
			break;
		case 'C':
			check = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || (!config && !check)) {
		usage(stderr);
		return 2;
	}
	struct tsa_config c;
	char err[600];
	if (tsa_config_load(check ? check : config, &c, err, sizeof(err)) < 0) {
		fprintf(stderr, "tsa-daemon: %s\n", err);
		return 1;
	}
	if (check) {
		struct tsa_rules *rules;
		int rc = tsa_rules_load((const char *const *)c.shaping_files, c.nshaping_files,
					&rules, err, sizeof(err));
		if (rc < 0)
			fprintf(stderr, "tsa-daemon: %s\n", err);
		else
			printf("%s: OK (%zu automation rules)\n", check, tsa_rules_count(rules));
		tsa_rules_free(rules);
		tsa_config_free(&c);
		return rc < 0;
	}
	int rc = run(&c);
	tsa_config_free(&c);
	return rc;
}
