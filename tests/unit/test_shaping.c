/* Unit tests for engine/shaping: the two KumoMTA shaping files load and give the settings
 * they state for real destinations, files merge in order (replace_base, sources, providers,
 * bound sites), values with units parse, and malformed files name the file, line and key. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/shaping.h"

#define COMPAT_DIR KUMO_SOURCE_ROOT "/../shared/compat/kumomta/"
#define COMMUNITY COMPAT_DIR "community-shaping.toml"
#define POLICY_EXTRAS COMPAT_DIR "policy-extras-shaping.toml"

#define SEC 1000ull
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

#define F(x) (1u << KUMO_SHAPING_F_##x)

/* ---- helpers ------------------------------------------------------------------------- */

static struct kumo_shaping *load_paths(const char *const *paths, size_t n)
{
	struct kumo_shaping *sh = NULL;
	char err[512] = "";
	int rc = kumo_shaping_load(paths, n, &sh, err, sizeof(err));

	if (rc)
		print_message("load failed %d: %s\n", rc, err);
	assert_int_equal(rc, 0);
	assert_string_equal(err, "");
	assert_non_null(sh);
	return sh;
}

static struct kumo_shaping *load_compat(void)
{
	const char *paths[] = {POLICY_EXTRAS, COMMUNITY};
	return load_paths(paths, 2);
}

/* Loads documents from memory, named a.toml, b.toml, ... */
static struct kumo_shaping *load_strs(const char *const *docs, size_t n)
{
	static const char *const names[] = {"a.toml", "b.toml", "c.toml", "d.toml"};
	struct kumo_shaping_text t[4];
	struct kumo_shaping *sh = NULL;
	char err[512] = "";

	assert_true(n <= 4);
	for (size_t i = 0; i < n; i++)
		t[i] = (struct kumo_shaping_text){names[i], docs[i], strlen(docs[i])};
	int rc = kumo_shaping_load_texts(t, n, &sh, err, sizeof(err));
	if (rc)
		print_message("load failed %d: %s\n", rc, err);
	assert_int_equal(rc, 0);
	assert_non_null(sh);
	return sh;
}

static struct kumo_shaping *load_str(const char *doc)
{
	return load_strs(&doc, 1);
}

static size_t count_hosts(const char *const *mx, size_t cap)
{
	size_t n = 0;
	while (n < cap && mx[n])
		n++;
	return n;
}

static void effective(const struct kumo_shaping *sh, const char *domain, const char *const *mx,
		      size_t nmx, const char *source, struct kumo_shaping_params *p)
{
	memset(p, 0xa5, sizeof(*p));
	assert_int_equal(kumo_shaping_effective(sh, domain, mx, nmx, source, p), 0);
}

static const char *extra(const struct kumo_shaping_params *p, const char *key)
{
	for (size_t i = 0; i < p->nextra; i++)
		if (strcmp(p->extra[i].key, key) == 0)
			return p->extra[i].value;
	return NULL;
}

/* A private directory for files written by a test; removed by rm_tmpdir. */
static void make_tmpdir(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/test_shaping.XXXXXX");
	assert_non_null(mkdtemp(dir));
}

static void write_file(const char *dir, const char *name, const char *text, char *path, size_t cap)
{
	snprintf(path, cap, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void rm_file(const char *path)
{
	assert_int_equal(unlink(path), 0);
}

/* ---- the KumoMTA files ---------------------------------------------------------------- */

static void test_compat_files_load(void **state)
{
	const char *const sets[][2] = {{POLICY_EXTRAS, NULL},
				       {COMMUNITY, NULL},
				       {POLICY_EXTRAS, COMMUNITY},
				       {COMMUNITY, POLICY_EXTRAS}};

	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
		struct kumo_shaping *sh = load_paths(sets[i], sets[i][1] ? 2 : 1);
		kumo_shaping_free(sh);
	}
}

/* What the two files say (policy-extras first, community second, as KumoMTA's example
 * init policy loads them) for real destinations and their MX hosts. */
struct compat_case {
	const char *domain;
	const char *mx[4];
	const char *source;
	uint64_t conn;
	bool conn_local;
	uint64_t mdpc; /* max_deliveries_per_connection */
	uint64_t mmr_count, mmr_period;
	uint64_t mcr_count, mcr_period;
	enum kumo_shaping_tls tls;
	uint64_t idle_ms;
	uint64_t ccfbd; /* consecutive_connection_failures_before_delay */
	uint64_t max_ready;
	const char *provider;
	uint64_t provider_conn;
	bool rollup;
	size_t nrules;
};

#define OPP KUMO_SHAPING_TLS_OPPORTUNISTIC
#define REQ KUMO_SHAPING_TLS_REQUIRED
#define REQ_INSECURE KUMO_SHAPING_TLS_REQUIRED_INSECURE

/* One row per destination; kept on few lines for reading. */
/* clang-format off */
static const struct compat_case compat_cases[] = {
    /* ["default"] and [provider."google"]; the community's provider "gmail" has no match */
    {"gmail.com",
     {"gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com.",
      "alt2.gmail-smtp-in.l.google.com."},
     NULL, 10, false, 50, 100, SEC, 100, MIN, REQ, 60 * SEC, 5, 1024, "google", 5, true, 1},
    {"GMail.COM.", {"GMAIL-SMTP-IN.L.GOOGLE.COM"}, NULL, 10, false, 50, 100, SEC, 100, MIN,
     REQ, 60 * SEC, 5, 1024, "google", 5, true, 1},
    {"example-workspace.org", {"aspmx.l.google.com", "alt1.aspmx.l.google.com"}, NULL, 10,
     false, 50, 100, SEC, 100, MIN, REQ, 60 * SEC, 5, 1024, "google", 5, true, 1},
    /* provider yahoo: default rule + 1 + 8 community rules */
    {"yahoo.com",
     {"mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"},
     NULL, 10, false, 20, 100, SEC, 100, MIN, OPP, 60 * SEC, 100, 1024, "yahoo", 0, true, 10},
    /* outlook.com's real MX is in .olc.protection.outlook.com: provider outlook */
    {"outlook.com", {"outlook-com.olc.protection.outlook.com"}, NULL, 10, false, 50, 100, SEC,
     100, MIN, OPP, 60 * SEC, 100, 1024, "outlook", 5, true, 10},
    /* an Office 365 tenant: provider office365 */
    {"contoso.com", {"contoso-com.mail.protection.outlook.com"}, NULL, 10, false, 50, 100,
     SEC, 100, MIN, OPP, 60 * SEC, 100, 1024, "office365", 5, true, 1},
    {"icloud.com", {"mx01.mail.icloud.com", "mx02.mail.icloud.com"}, NULL, 10, false, 5, 100,
     SEC, 100, MIN, OPP, 60 * SEC, 100, 1024, "apple", 10, true, 5},
    {"orange.fr", {"smtp-in.orange.fr"}, NULL, 10, false, 100, 100, SEC, 100, MIN, REQ,
     60 * SEC, 100, 1024, "orange", 2, true, 5},
    {"customer.example", {"eu-smtp-inbound-1.mimecast.com", "eu-smtp-inbound-2.mimecast.com"},
     NULL, 10, false, 100, 100, SEC, 100, MIN, OPP, 60 * SEC, 100, 1024, "mimecast", 0, true,
     2},
    /* community providers */
    {"web.de", {"mx-ha02.web.de", "mx-ha03.web.de"}, NULL, 4, false, 20, 100, SEC, 100, MIN,
     REQ, 60 * SEC, 5, 1024, "gmx.net_web.de", 0, true, 5},
    {"qq.com", {"mx1.qq.com", "mx2.qq.com", "mx3.qq.com"}, NULL, 4, false, 8, 100, SEC, 100,
     MIN, REQ, 60 * SEC, 100, 1024, "qq.com", 0, true, 6},
    {"163.com", {"163mx01.mxmail.netease.com", "163mx02.mxmail.netease.com"}, NULL, 4, false,
     7, 100, SEC, 100, MIN, REQ_INSECURE, 60 * SEC, 100, 1024, "163.com", 0, true, 6},
    /* MXSuffix written with a trailing dot still matches */
    {"barracuda-customer.example", {"d123456a.ess.barracudanetworks.com"}, NULL, 10, false, 15,
     100, SEC, 100, MIN, REQ, 60 * SEC, 100, 1024, "barracuda", 10, true, 1},
    {"kpn.example", {"mx.kpnmail.nl"}, NULL, 10, false, 10, 100, SEC, 100, MIN, REQ, 60 * SEC,
     100, 1024, "kpn", 0, true, 1},
    /* domain entries */
    {"comcast.net", {"mx1a1.comcast.net", "mx2c1.comcast.net"}, NULL, 25, false, 1000, 100,
     SEC, 100, MIN, REQ, 30 * SEC, 24, 1024, NULL, 0, true, 3},
    {"yahoo.co.jp", {"mx1.mail.yahoo.co.jp"}, NULL, 2, false, 20, 10, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, true, 5},
    {"smtp.mailgun.com", {"smtp.mailgun.com"}, NULL, 7000, false, 3, 100, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, true, 1},
    {"example.com", {NULL}, NULL, 3, false, 100, 100, SEC, 100, MIN, OPP, 60 * SEC, 100, 1024,
     NULL, 0, false, 1},
    {"example.com", {NULL}, "my source name", 5, false, 100, 100, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, false, 1},
    {"example.com", {NULL}, "another source", 3, false, 100, 100, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, false, 1},
    {"generator.kumomta.internal", {NULL}, NULL, 10, false, 100, 100, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, false, 1},
    {"http://127.0.0.1:8008.tsa.kumomta", {NULL}, NULL, 5, true, 8192, 100, SEC, 100, MIN,
     OPP, 60 * SEC, 100, 10000, NULL, 0, false, 1},
    /* only ["default"] */
    {"unknown.example", {"mx.unknown.example"}, NULL, 10, false, 100, 100, SEC, 100, MIN, OPP,
     60 * SEC, 100, 1024, NULL, 0, true, 1},
    /* a vanity domain mixing Google and another MX is not the google provider */
    {"mixed.example", {"aspmx.l.google.com", "mx.mixed.example"}, NULL, 10, false, 100, 100,
     SEC, 100, MIN, OPP, 60 * SEC, 100, 1024, NULL, 0, true, 1},
};
/* clang-format on */

static void test_compat_effective(void **state)
{
	struct kumo_shaping *sh = load_compat();
	struct kumo_shaping_params p;
	const struct kumo_shaping_rule *rules[32];

	for (size_t i = 0; i < sizeof(compat_cases) / sizeof(compat_cases[0]); i++) {
		const struct compat_case *c = &compat_cases[i];
		size_t nmx = count_hosts(c->mx, 4);
		print_message("case %zu: %s source %s\n", i, c->domain,
			      c->source ? c->source : "-");
		effective(sh, c->domain, c->mx, nmx, c->source, &p);
		assert_int_equal(p.connection_limit.limit, c->conn);
		assert_int_equal(p.connection_limit.local, c->conn_local);
		assert_int_equal(p.max_deliveries_per_connection, c->mdpc);
		assert_int_equal(p.max_message_rate.count, c->mmr_count);
		assert_int_equal(p.max_message_rate.period_ms, c->mmr_period);
		assert_int_equal(p.max_message_rate.burst, 0);
		assert_int_equal(p.max_connection_rate.count, c->mcr_count);
		assert_int_equal(p.max_connection_rate.period_ms, c->mcr_period);
		assert_int_equal(p.enable_tls, c->tls);
		assert_int_equal(p.idle_timeout_ms, c->idle_ms);
		assert_int_equal(p.data_timeout_ms, 30 * SEC);
		assert_int_equal(p.data_dot_timeout_ms, 60 * SEC);
		assert_int_equal(p.connect_timeout_ms, 60 * SEC); /* built-in default */
		assert_int_equal(p.consecutive_connection_failures_before_delay, c->ccfbd);
		assert_int_equal(p.max_ready, c->max_ready);
		assert_int_equal(p.mx_rollup, c->rollup);
		assert_string_equal(extra(&p, "remember_broken_tls"), "3 days");
		if (c->provider) {
			assert_non_null(p.provider_name);
			assert_string_equal(p.provider_name, c->provider);
			assert_int_equal(p.nproviders, 1);
			assert_string_equal(p.providers[0].name, c->provider);
			assert_int_equal(p.providers[0].connection_limit.limit, c->provider_conn);
			assert_int_equal(p.providers[0].max_message_rate.count, 0);
			assert_true(p.set & F(PROVIDER_NAME));
		} else {
			assert_null(p.provider_name);
			assert_int_equal(p.nproviders, 0);
			assert_false(p.set & F(PROVIDER_NAME));
		}
		assert_false(p.providers_truncated);
		assert_false(p.extra_truncated);
		assert_int_equal(kumo_shaping_rules(sh, c->domain, c->mx, nmx, rules, 32),
				 c->nrules);
	}
	kumo_shaping_free(sh);
}

static void test_compat_set_bits_and_extras(void **state)
{
	struct kumo_shaping *sh = load_compat();
	struct kumo_shaping_params p;
	const uint32_t from_default =
	    F(CONNECTION_LIMIT) | F(MAX_CONNECTION_RATE) | F(MAX_DELIVERIES_PER_CONNECTION) |
	    F(MAX_MESSAGE_RATE) | F(IDLE_TIMEOUT) | F(DATA_TIMEOUT) | F(DATA_DOT_TIMEOUT) |
	    F(ENABLE_TLS) | F(CONSECUTIVE_CONNECTION_FAILURES_BEFORE_DELAY);

	effective(sh, "unknown.example", NULL, 0, NULL, &p);
	assert_int_equal(p.set, from_default);
	assert_int_equal(p.nextra, 1);
	assert_string_equal(p.extra[0].key, "remember_broken_tls");
	assert_string_equal(p.extra[0].value, "3 days");
	/* built-in defaults where no file says anything */
	assert_int_equal(p.banner_timeout_ms, 60 * SEC);
	assert_int_equal(p.ehlo_timeout_ms, 300 * SEC);
	assert_int_equal(p.mail_from_timeout_ms, 300 * SEC);
	assert_int_equal(p.rcpt_to_timeout_ms, 300 * SEC);
	assert_int_equal(p.rset_timeout_ms, 5 * SEC);
	assert_int_equal(p.starttls_timeout_ms, 5 * SEC);
	assert_int_equal(p.auth_timeout_ms, 60 * SEC);

	effective(sh, "http://127.0.0.1:8008.tsa.kumomta", NULL, 0, NULL, &p);
	assert_int_equal(p.set, from_default | F(MAX_READY));
	assert_int_equal(p.nextra, 2);
	assert_string_equal(extra(&p, "system_shutdown_timeout"), "30s");

	/* the community file alone has no ["default"]: built-in defaults everywhere */
	const char *community[] = {COMMUNITY};
	kumo_shaping_free(sh);
	sh = load_paths(community, 1);
	const char *g[] = {"gmail-smtp-in.l.google.com"};
	effective(sh, "gmail.com", g, 1, NULL, &p);
	assert_int_equal(p.set, 0);
	assert_int_equal(p.connection_limit.limit, 32);
	assert_int_equal(p.max_deliveries_per_connection, 1024);
	assert_int_equal(p.max_message_rate.count, 0);
	assert_int_equal(p.idle_timeout_ms, 5 * SEC);
	assert_null(p.provider_name);
	assert_int_equal(p.nextra, 0);
	assert_true(p.mx_rollup);
	kumo_shaping_free(sh);
}

static void test_compat_rules(void **state)
{
	struct kumo_shaping *sh = load_compat();
	const struct kumo_shaping_rule *r[16];
	const char *comcast[] = {"mx1a1.comcast.net"};
	const char *apple[] = {"mx01.mail.icloud.com"};

	/* ["default"] then ["comcast.net"] rules, in file order */
	assert_int_equal(kumo_shaping_rules(sh, "comcast.net", comcast, 1, r, 16), 3);

	assert_int_equal(r[0]->scope, KUMO_SHAPING_SCOPE_DEFAULT);
	assert_string_equal(r[0]->entry, "default");
	assert_string_equal(r[0]->file, POLICY_EXTRAS);
	assert_int_equal(r[0]->line, 72);
	assert_int_equal(r[0]->nregex, 5);
	assert_string_equal(r[0]->regex[0], "Messages from \\d+\\.\\d+\\.\\d+\\.\\d+ temporarily "
					    "deferred");
	assert_string_equal(r[0]->regex[4], "Server busy\\. Please try again later from");
	assert_int_equal(r[0]->nactions, 2);
	assert_int_equal(r[0]->actions[0].kind, KUMO_SHAPING_ACT_SET_CONFIG);
	assert_string_equal(r[0]->actions[0].name, "max_message_rate");
	assert_string_equal(r[0]->actions[0].value, "1/minute");
	assert_int_equal(r[0]->actions[1].kind, KUMO_SHAPING_ACT_SET_CONFIG);
	assert_string_equal(r[0]->actions[1].name, "connection_limit");
	assert_string_equal(r[0]->actions[1].value, "1");
	assert_true(r[0]->immediate);
	assert_int_equal(r[0]->threshold.count, 0);
	assert_int_equal(r[0]->duration_ms, 90 * MIN);
	assert_false(r[0]->match_internal);

	assert_int_equal(r[1]->scope, KUMO_SHAPING_SCOPE_SITE);
	assert_string_equal(r[1]->entry, "comcast.net");
	assert_int_equal(r[1]->line, 163);
	assert_int_equal(r[1]->nregex, 1);
	assert_string_equal(r[1]->regex[0], "RL0000");
	assert_int_equal(r[1]->actions[0].kind, KUMO_SHAPING_ACT_SET_CONFIG);
	assert_string_equal(r[1]->actions[0].name, "max_connection_rate");
	assert_string_equal(r[1]->actions[0].value, "10000/h");
	assert_false(r[1]->immediate);
	assert_int_equal(r[1]->threshold.count, 2);
	assert_int_equal(r[1]->threshold.period_ms, HOUR);
	assert_int_equal(r[1]->duration_ms, 2 * HOUR);

	assert_int_equal(r[2]->line, 174);
	assert_string_equal(r[2]->regex[0], "^(?!.*KumoMTA internal).*RL000010");
	assert_true(r[2]->immediate);
	assert_int_equal(r[2]->nactions, 1);
	assert_int_equal(r[2]->actions[0].kind, KUMO_SHAPING_ACT_SUSPEND_TENANT);
	assert_null(r[2]->actions[0].name);
	assert_null(r[2]->actions[0].value);
	assert_int_equal(r[2]->duration_ms, 5 * MIN);

	/* provider "apple": a ''' literal regex keeps its backslashes */
	assert_int_equal(kumo_shaping_rules(sh, "icloud.com", apple, 1, r, 16), 5);
	assert_int_equal(r[1]->scope, KUMO_SHAPING_SCOPE_PROVIDER);
	assert_string_equal(r[1]->entry, "apple");
	assert_string_equal(r[1]->file, COMMUNITY);
	assert_int_equal(r[3]->line, 250);
	assert_string_equal(r[3]->regex[0],
			    "\\\\[HCM1\\\\] Your mail from \\d+\\.\\d+\\.\\d+\\.\\d+ was deferred");
	assert_int_equal(r[3]->threshold.count, 3);
	assert_int_equal(r[3]->duration_ms, 15 * MIN);
	assert_int_equal(r[3]->actions[0].kind, KUMO_SHAPING_ACT_SUSPEND);

	/* cap smaller than the count: the first cap pointers, the full count */
	const struct kumo_shaping_rule *two[2] = {NULL, NULL};
	assert_int_equal(kumo_shaping_rules(sh, "icloud.com", apple, 1, two, 1), 5);
	assert_ptr_equal(two[0], r[0]);
	assert_null(two[1]);
	assert_int_equal(kumo_shaping_rules(sh, "icloud.com", apple, 1, NULL, 0), 5);

	/* SetConfig values of other types, as TOML writes them */
	const char *gmx[] = {"mx-ha02.web.de"};
	assert_int_equal(kumo_shaping_rules(sh, "web.de", gmx, 1, r, 16), 5);
	assert_string_equal(r[1]->actions[0].name, "connection_limit");
	assert_string_equal(r[1]->actions[0].value, "1");
	assert_int_equal(r[1]->duration_ms, 30 * MIN);
	kumo_shaping_free(sh);
}

/* ---- merging ------------------------------------------------------------------------- */

static void test_merge_order(void **state)
{
	char dir[64], a[128], b[128];
	struct kumo_shaping_params p;
	const struct kumo_shaping_rule *r[8];

	make_tmpdir(dir, sizeof(dir));
	write_file(dir, "base.toml",
		   "[\"default\"]\n"
		   "connection_limit = 10\n"
		   "max_message_rate = \"100/s\"\n"
		   "idle_timeout = \"60s\"\n"
		   "[\"x.example\"]\n"
		   "connection_limit = 4\n"
		   "max_deliveries_per_connection = 50\n"
		   "smtp_port = 2525\n"
		   "[[\"x.example\".automation]]\n"
		   "regex = \"first\"\n"
		   "action = \"Suspend\"\n"
		   "duration = \"1h\"\n"
		   "[\"x.example\".sources.s1]\n"
		   "connection_limit = 1\n"
		   "max_ready = 7\n",
		   a, sizeof(a));
	write_file(dir, "overlay.toml",
		   "[\"default\"]\n"
		   "max_message_rate = \"50/s\"\n"
		   "[\"x.example\"]\n"
		   "max_deliveries_per_connection = 60\n"
		   "smtp_port = 2526\n"
		   "[[\"x.example\".automation]]\n"
		   "regex = \"second\"\n"
		   "action = \"Bounce\"\n"
		   "duration = 60\n"
		   "[\"x.example\".sources.s1]\n"
		   "connection_limit = 2\n",
		   b, sizeof(b));
	const char *paths[] = {a, b};
	struct kumo_shaping *sh = load_paths(paths, 2);

	effective(sh, "other.example", NULL, 0, NULL, &p);
	assert_int_equal(p.connection_limit.limit, 10); /* base only */
	assert_int_equal(p.max_message_rate.count, 50); /* overlay wins */
	assert_int_equal(p.idle_timeout_ms, 60 * SEC);	/* base only */

	effective(sh, "x.example", NULL, 0, NULL, &p);
	assert_int_equal(p.connection_limit.limit, 4);	       /* domain over default */
	assert_int_equal(p.max_deliveries_per_connection, 60); /* overlay wins */
	assert_int_equal(p.max_message_rate.count, 50);
	assert_string_equal(extra(&p, "smtp_port"), "2526");
	assert_int_equal(p.nextra, 1);
	assert_int_equal(p.max_ready, 1024);

	effective(sh, "x.example", NULL, 0, "s1", &p);
	assert_int_equal(p.connection_limit.limit, 2); /* source merged key by key */
	assert_int_equal(p.max_ready, 7);	       /* from base's source table */

	/* rules append across files */
	assert_int_equal(kumo_shaping_rules(sh, "x.example", NULL, 0, r, 8), 2);
	assert_string_equal(r[0]->regex[0], "first");
	assert_string_equal(r[0]->file, a);
	assert_int_equal(r[0]->line, 9);
	assert_string_equal(r[1]->regex[0], "second");
	assert_string_equal(r[1]->file, b);
	assert_int_equal(r[1]->actions[0].kind, KUMO_SHAPING_ACT_BOUNCE);
	assert_int_equal(r[1]->duration_ms, 60 * SEC);
	kumo_shaping_free(sh);

	/* the other order: base's values win */
	const char *rev[] = {b, a};
	sh = load_paths(rev, 2);
	effective(sh, "x.example", NULL, 0, "s1", &p);
	assert_int_equal(p.max_message_rate.count, 100);
	assert_int_equal(p.max_deliveries_per_connection, 50);
	assert_int_equal(p.connection_limit.limit, 1);
	assert_int_equal(kumo_shaping_rules(sh, "x.example", NULL, 0, r, 8), 2);
	assert_string_equal(r[0]->regex[0], "second");
	kumo_shaping_free(sh);

	rm_file(a);
	rm_file(b);
	assert_int_equal(rmdir(dir), 0);
}

static void test_replace_base(void **state)
{
	const char *docs[] = {"[\"default\"]\n"
			      "max_message_rate = \"100/s\"\n"
			      "[\"x.example\"]\n"
			      "connection_limit = 4\n"
			      "max_deliveries_per_connection = 50\n"
			      "[[\"x.example\".automation]]\n"
			      "regex = \"old\"\n"
			      "action = \"Suspend\"\n"
			      "duration = \"1h\"\n"
			      "[\"x.example\".sources.s1]\n"
			      "connection_limit = 1\n"
			      "[provider.p]\n"
			      "match = [{DomainSuffix = \".p.example\"}]\n"
			      "provider_connection_limit = 3\n"
			      "max_ready = 9\n",
			      /* replaces both entries; the default is not touched */
			      "[\"x.example\"]\n"
			      "replace_base = true\n"
			      "max_deliveries_per_connection = 70\n"
			      "[provider.p]\n"
			      "replace_base = true\n"
			      "match = [{DomainSuffix = \".q.example\"}]\n"};
	struct kumo_shaping *sh = load_strs(docs, 2);
	struct kumo_shaping_params p;

	effective(sh, "x.example", NULL, 0, "s1", &p);
	assert_int_equal(p.connection_limit.limit, 32); /* the earlier 4 and 1 are gone */
	assert_false(p.set & F(CONNECTION_LIMIT));
	assert_int_equal(p.max_deliveries_per_connection, 70);
	assert_int_equal(p.max_message_rate.count, 100); /* ["default"] still applies */
	assert_int_equal(kumo_shaping_rules(sh, "x.example", NULL, 0, NULL, 0), 0);

	effective(sh, "a.p.example", NULL, 0, NULL, &p);
	assert_null(p.provider_name); /* old match list replaced */
	effective(sh, "a.q.example", NULL, 0, NULL, &p);
	assert_string_equal(p.provider_name, "p");
	assert_int_equal(p.providers[0].connection_limit.limit, 0);
	assert_int_equal(p.max_ready, 1024);
	kumo_shaping_free(sh);

	/* without replace_base the same files merge */
	const char *merged[] = {docs[0],
				"[\"x.example\"]\nmax_deliveries_per_connection = 70\n"
				"[provider.p]\nmatch = [{DomainSuffix = \".q.example\"}]\n"};
	sh = load_strs(merged, 2);
	effective(sh, "x.example", NULL, 0, "s1", &p);
	assert_int_equal(p.connection_limit.limit, 1);
	assert_int_equal(p.max_deliveries_per_connection, 70);
	assert_int_equal(kumo_shaping_rules(sh, "x.example", NULL, 0, NULL, 0), 1);
	effective(sh, "a.p.example", NULL, 0, NULL, &p); /* match lists append */
	assert_string_equal(p.provider_name, "p");
	assert_int_equal(p.providers[0].connection_limit.limit, 3);
	assert_int_equal(p.max_ready, 9);
	effective(sh, "a.q.example", NULL, 0, NULL, &p);
	assert_string_equal(p.provider_name, "p");
	kumo_shaping_free(sh);
}

/* Precedence: default < default sources < providers < provider sources < site entry
 * < domain entry < site entry sources < domain entry sources. */
static void test_precedence_and_sources(void **state)
{
	const char *text = "[\"default\"]\n"
			   "connection_limit = 1\n"
			   "max_ready = 1\n"
			   "max_deliveries_per_connection = 1\n"
			   "idle_timeout = 1\n"
			   "connect_timeout = 1\n"
			   "[\"default\".sources.s]\n"
			   "connection_limit = 8\n"
			   "connect_timeout = 9\n"
			   "[provider.p]\n"
			   "match = [{MXSuffix = \".mx.example\"}]\n"
			   "connection_limit = 2\n"
			   "max_ready = 2\n"
			   "max_deliveries_per_connection = 2\n"
			   "idle_timeout = 2\n"
			   "[provider.p.sources.s]\n"
			   "connection_limit = 3\n"
			   "max_ready = 3\n"
			   "max_deliveries_per_connection = 3\n"
			   "[\"site.example\"]\n"
			   "connection_limit = 4\n"
			   "max_ready = 4\n"
			   "[\"site.example\".sources.s]\n"
			   "connection_limit = 6\n"
			   "[\"dom.example\"]\n"
			   "mx_rollup = false\n"
			   "connection_limit = 5\n"
			   "[\"dom.example\".sources.s]\n"
			   "connection_limit = 7\n";
	struct kumo_shaping *sh = load_str(text);
	struct kumo_shaping_params p;
	const char *mx[] = {"a.mx.example", "b.mx.example"};
	struct {
		const char *domain, *source;
		uint64_t conn, ready, mdpc, idle, connect;
		bool rollup;
		size_t nmx;
	} cases[] = {
	    {"none.example", NULL, 1, 1, 1, 1, 1, true, 0}, /* default only */
	    {"none.example", "s", 8, 1, 1, 1, 9, true, 0},  /* default source */
	    {"none.example", NULL, 2, 2, 2, 2, 1, true, 2}, /* provider */
	    {"none.example", "s", 3, 3, 3, 2, 9, true, 2},  /* provider source */
	    {"site.example", NULL, 4, 4, 1, 1, 1, true, 0},
	    {"site.example", NULL, 4, 4, 2, 2, 1, true, 2},
	    {"site.example", "s", 6, 4, 3, 2, 9, true, 2},
	    {"site.example", "t", 4, 4, 2, 2, 1, true, 2},
	    {"dom.example", NULL, 5, 2, 2, 2, 1, false, 2},
	    {"dom.example", "s", 7, 3, 3, 2, 9, false, 2},
	    {"dom.example", "s", 7, 1, 1, 1, 9, false, 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		print_message("case %zu: %s %s\n", i, cases[i].domain,
			      cases[i].source ? cases[i].source : "-");
		effective(sh, cases[i].domain, mx, cases[i].nmx, cases[i].source, &p);
		assert_int_equal(p.connection_limit.limit, cases[i].conn);
		assert_int_equal(p.max_ready, cases[i].ready);
		assert_int_equal(p.max_deliveries_per_connection, cases[i].mdpc);
		assert_int_equal(p.idle_timeout_ms, cases[i].idle * SEC);
		assert_int_equal(p.connect_timeout_ms, cases[i].connect * SEC);
		assert_int_equal(p.mx_rollup, cases[i].rollup);
		if (cases[i].nmx)
			assert_string_equal(p.provider_name, "p");
		else
			assert_null(p.provider_name);
	}
	kumo_shaping_free(sh);
}

/* ---- providers ------------------------------------------------------------------------ */

static void test_provider_match(void **state)
{
	const char *text =
	    "[provider.mx]\n"
	    "match = [{MXSuffix = \".mx.example.net\"}, {MXSuffix = \".alt.example\"}]\n"
	    "provider_connection_limit = \"local:4\"\n"
	    "provider_max_message_rate = \"100/h,max_burst=10\"\n"
	    "max_ready = 11\n"
	    "[provider.dom]\n"
	    "match = [{DomainSuffix = \".corp.example\"}, {DomainSuffix = \"corp.test\"}]\n"
	    "max_ready = 22\n"
	    "[provider.host]\n"
	    "match = [{HostName = \"smtp.host.example.\"}, {MXSuffix = \".relay.example\"}]\n"
	    "provider_connection_limit = 7\n"
	    "max_ready = 33\n";
	struct kumo_shaping *sh = load_str(text);
	struct {
		const char *domain;
		const char *mx[3];
		const char *providers[3]; /* expected, in file order */
		uint64_t max_ready;
	} cases[] = {
	    {"a.test", {"one.mx.example.net", "two.mx.example.net"}, {"mx"}, 11},
	    {"a.test", {"ONE.MX.EXAMPLE.NET.", "x.alt.example"}, {"mx"}, 11},
	    /* every MX host must match */
	    {"a.test", {"one.mx.example.net", "mx.elsewhere.example"}, {NULL}, 1024},
	    /* a suffix is a plain string suffix: no label boundary is implied */
	    {"a.test", {"mx.example.net"}, {NULL}, 1024},
	    {"a.test", {NULL}, {NULL}, 1024},
	    {"x.corp.example", {NULL}, {"dom"}, 22},
	    {"X.Corp.Example.", {"whatever.example"}, {"dom"}, 22},
	    {"corp.test", {NULL}, {"dom"}, 22},
	    {"corp.example", {NULL}, {NULL}, 1024},
	    {"a.test", {"smtp.host.example"}, {"host"}, 33},
	    {"a.test", {"smtp.host.example.", "b.relay.example"}, {"host"}, 33},
	    {"a.test", {"xsmtp.host.example"}, {NULL}, 1024},
	    /* two providers: both listed in file order, the later one's settings win */
	    {"y.corp.example", {"one.mx.example.net"}, {"mx", "dom"}, 22},
	    {"y.corp.example", {"smtp.host.example"}, {"dom", "host"}, 33},
	    /* providers apply to domain names only */
	    {"http://127.0.0.1:8008.corp.example", {"one.mx.example.net"}, {NULL}, 1024},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumo_shaping_params p;
		size_t nmx = count_hosts(cases[i].mx, 3), n = count_hosts(cases[i].providers, 3);
		print_message("case %zu: %s\n", i, cases[i].domain);
		effective(sh, cases[i].domain, cases[i].mx, nmx, NULL, &p);
		assert_int_equal(p.nproviders, n);
		for (size_t k = 0; k < n; k++)
			assert_string_equal(p.providers[k].name, cases[i].providers[k]);
		if (n)
			assert_string_equal(p.provider_name, cases[i].providers[n - 1]);
		else
			assert_null(p.provider_name);
		assert_int_equal(p.max_ready, cases[i].max_ready);
	}

	/* provider limits as parsed */
	struct kumo_shaping_params p;
	const char *mx[] = {"one.mx.example.net"};
	effective(sh, "a.test", mx, 1, NULL, &p);
	assert_int_equal(p.providers[0].connection_limit.limit, 4);
	assert_true(p.providers[0].connection_limit.local);
	assert_int_equal(p.providers[0].max_message_rate.count, 100);
	assert_int_equal(p.providers[0].max_message_rate.period_ms, HOUR);
	assert_int_equal(p.providers[0].max_message_rate.burst, 10);
	kumo_shaping_free(sh);

	/* more matching providers than the params can list */
	char big[4096];
	size_t len = 0;
	for (int i = 0; i < KUMO_SHAPING_MAX_PROVIDERS + 2; i++)
		len += (size_t)snprintf(big + len, sizeof(big) - len,
					"[provider.p%d]\nmatch = [{DomainSuffix = \".t\"}]\n"
					"max_ready = %d\n",
					i, i + 1);
	sh = load_str(big);
	effective(sh, "a.t", NULL, 0, NULL, &p);
	assert_int_equal(p.nproviders, KUMO_SHAPING_MAX_PROVIDERS);
	assert_true(p.providers_truncated);
	assert_int_equal(p.max_ready, KUMO_SHAPING_MAX_PROVIDERS + 2); /* all still merged */
	assert_string_equal(p.provider_name, "p9");
	kumo_shaping_free(sh);
}

/* ---- rules order and MX rollup ---------------------------------------------------------- */

static void test_rules_order(void **state)
{
	const char *docs[] = {
	    "[[\"default\".automation]]\nregex = \"d\"\naction = \"Suspend\"\n"
	    "duration = \"1m\"\n"
	    "[\"dom.example\"]\nmx_rollup = false\n"
	    "[[\"dom.example\".automation]]\nregex = \"dom\"\naction = \"Suspend\"\n"
	    "duration = \"1m\"\n"
	    "[[provider.p.automation]]\nregex = \"p\"\naction = \"Suspend\"\n"
	    "duration = \"1m\"\nmatch_internal = true\n"
	    "[provider.p]\nmatch = [{MXSuffix = \".mx.example\"}]\n",
	    /* the same domain with mx_rollup: a separate (site) entry */
	    "[[\"dom.example\".automation]]\nregex = \"site\"\n"
	    "action = \"Suspend\"\nduration = \"1m\"\n"};
	struct kumo_shaping *sh = load_strs(docs, 2);
	const struct kumo_shaping_rule *r[8];
	const char *mx[] = {"a.mx.example"};
	static const char *const want[] = {"d", "p", "site", "dom"};
	static const enum kumo_shaping_scope scopes[] = {
	    KUMO_SHAPING_SCOPE_DEFAULT, KUMO_SHAPING_SCOPE_PROVIDER, KUMO_SHAPING_SCOPE_SITE,
	    KUMO_SHAPING_SCOPE_DOMAIN};
	static const char *const entries[] = {"default", "p", "dom.example", "dom.example"};

	size_t n = kumo_shaping_rules(sh, "dom.example", mx, 1, r, 8);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(r[i]->regex[0], want[i]);
		assert_int_equal(r[i]->scope, scopes[i]);
		assert_string_equal(r[i]->entry, entries[i]);
	}
	assert_true(r[1]->match_internal);
	assert_string_equal(r[3]->file, "a.toml");
	assert_string_equal(r[2]->file, "b.toml");
	/* without the provider's MX, and for another domain */
	assert_int_equal(kumo_shaping_rules(sh, "dom.example", NULL, 0, r, 8), 3);
	assert_int_equal(kumo_shaping_rules(sh, "other.example", mx, 1, r, 8), 2);
	assert_int_equal(kumo_shaping_rules(sh, "other.example", NULL, 0, r, 8), 1);

	/* both entries' settings apply, the mx_rollup = false one last */
	const char *both[] = {"[\"dom.example\"]\nmx_rollup = false\nmax_ready = 1\n",
			      "[\"dom.example\"]\nmax_ready = 2\nconnection_limit = 3\n"};
	kumo_shaping_free(sh);
	sh = load_strs(both, 2);
	struct kumo_shaping_params p;
	effective(sh, "dom.example", NULL, 0, NULL, &p);
	assert_int_equal(p.max_ready, 1);
	assert_int_equal(p.connection_limit.limit, 3);
	assert_false(p.mx_rollup);
	kumo_shaping_free(sh);
}

static void test_site_binding(void **state)
{
	const char *text = "[\"gmail.com\"]\n"
			   "connection_limit = 3\n"
			   "[\"gmail.com\".sources.s]\n"
			   "max_ready = 5\n"
			   "[[\"gmail.com\".automation]]\n"
			   "regex = \"g\"\naction = \"Suspend\"\nduration = \"1m\"\n"
			   "[\"later.example\"]\n"
			   "max_deliveries_per_connection = 9\n"
			   "[\"first.example\"]\n"
			   "max_deliveries_per_connection = 8\n"
			   "[\"solo.example\"]\n"
			   "mx_rollup = false\n"
			   "connection_limit = 1\n";
	struct kumo_shaping *sh = load_str(text);
	struct kumo_shaping_params p;
	const char *g[] = {"alt1.gmail-smtp-in.l.google.com.", "gmail-smtp-in.l.google.com",
			   "GMAIL-SMTP-IN.L.GOOGLE.COM"};
	const char *g2[] = {"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"};
	const char *o[] = {"mx.other.example"};

	assert_int_equal(kumo_shaping_site_entry_count(sh), 3);
	assert_string_equal(kumo_shaping_site_entry(sh, 0), "gmail.com");
	assert_string_equal(kumo_shaping_site_entry(sh, 1), "later.example");
	assert_string_equal(kumo_shaping_site_entry(sh, 2), "first.example");
	assert_null(kumo_shaping_site_entry(sh, 3));

	/* unbound: the entry applies to its own name only */
	effective(sh, "googlemail.com", g2, 2, "s", &p);
	assert_int_equal(p.connection_limit.limit, 32);
	effective(sh, "gmail.com", o, 1, NULL, &p);
	assert_int_equal(p.connection_limit.limit, 3);

	assert_int_equal(kumo_shaping_bind_site(sh, "GMAIL.com.", g, 3), 0);
	effective(sh, "googlemail.com", g2, 2, "s", &p);
	assert_int_equal(p.connection_limit.limit, 3);
	assert_int_equal(p.max_ready, 5);
	assert_true(p.mx_rollup);
	assert_int_equal(kumo_shaping_rules(sh, "googlemail.com", g2, 2, NULL, 0), 1);
	effective(sh, "googlemail.com", o, 1, NULL, &p);
	assert_int_equal(p.connection_limit.limit, 32);

	/* two entries on one site merge in entry order, wherever the queried name sits */
	assert_int_equal(kumo_shaping_bind_site(sh, "first.example", o, 1), 0);
	assert_int_equal(kumo_shaping_bind_site(sh, "later.example", o, 1), 0);
	effective(sh, "x.example", o, 1, NULL, &p);
	assert_int_equal(p.max_deliveries_per_connection, 8);
	effective(sh, "later.example", o, 1, NULL, &p);
	assert_int_equal(p.max_deliveries_per_connection, 8);
	effective(sh, "first.example", o, 1, NULL, &p);
	assert_int_equal(p.max_deliveries_per_connection, 8);
	/* rebinding moves the entry */
	assert_int_equal(kumo_shaping_bind_site(sh, "first.example", g, 3), 0);
	effective(sh, "x.example", o, 1, NULL, &p);
	assert_int_equal(p.max_deliveries_per_connection, 9);
	effective(sh, "googlemail.com", g2, 2, NULL, &p);
	assert_int_equal(p.max_deliveries_per_connection, 8);
	assert_int_equal(p.connection_limit.limit, 3);
	assert_int_equal(kumo_shaping_bind_site(sh, "first.example", g, 3), 0);

	/* only site entries bind */
	assert_int_equal(kumo_shaping_bind_site(sh, "solo.example", o, 1), -ENOENT);
	assert_int_equal(kumo_shaping_bind_site(sh, "nothing.example", o, 1), -ENOENT);
	assert_int_equal(kumo_shaping_bind_site(sh, "gmail.com", o, 0), -EINVAL);
	kumo_shaping_free(sh);
}

/* ---- values with units ---------------------------------------------------------------- */

static void test_parse_rate(void **state)
{
	struct {
		const char *s;
		int rc;
		uint64_t count, period, burst;
		bool local;
	} cases[] = {
	    {"100/s", 0, 100, SEC, 0, false},
	    {"100/sec", 0, 100, SEC, 0, false},
	    {"100/second", 0, 100, SEC, 0, false},
	    {"100/min", 0, 100, MIN, 0, false},
	    {"10/minute", 0, 10, MIN, 0, false},
	    {"50/m", 0, 50, MIN, 0, false},
	    {"1000/hr", 0, 1000, HOUR, 0, false},
	    {"1000/h", 0, 1000, HOUR, 0, false},
	    {"1000/hour", 0, 1000, HOUR, 0, false},
	    {"10000/d", 0, 10000, DAY, 0, false},
	    {"10,000/day", 0, 10000, DAY, 0, false},
	    {"1_000/hours", 0, 1000, HOUR, 0, false},
	    {"100/h,max_burst=10", 0, 100, HOUR, 10, false},
	    {"100/h, max_burst = 10", 0, 100, HOUR, 10, false},
	    {"local:5/s", 0, 5, SEC, 0, true},
	    {"local:1,000/5min,max_burst=2,000", 0, 1000, 5 * MIN, 2000, true},
	    {"10/30s", 0, 10, 30 * SEC, 0, false},
	    {"0/s", -EINVAL, 0, 0, 0, false},
	    {"100", -EINVAL, 0, 0, 0, false},
	    {"100/", -EINVAL, 0, 0, 0, false},
	    {"100/our", -EINVAL, 0, 0, 0, false},
	    {"100/ms", -EINVAL, 0, 0, 0, false},
	    {"100/0s", -EINVAL, 0, 0, 0, false},
	    {"/s", -EINVAL, 0, 0, 0, false},
	    {"-1/s", -EINVAL, 0, 0, 0, false},
	    {"1,/s", -EINVAL, 0, 0, 0, false},
	    {"100/h,max_burst=0", -EINVAL, 0, 0, 0, false},
	    {"100/h,burst=3", -EINVAL, 0, 0, 0, false},
	    {"100/h ", -EINVAL, 0, 0, 0, false},
	    {"remote:1/s", -EINVAL, 0, 0, 0, false},
	    {"99999999999999999999/s", -EINVAL, 0, 0, 0, false},
	    {"", -EINVAL, 0, 0, 0, false},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumo_shaping_rate r = {0};
		print_message("rate \"%s\"\n", cases[i].s);
		assert_int_equal(kumo_shaping_parse_rate(cases[i].s, &r), cases[i].rc);
		if (cases[i].rc)
			continue;
		assert_int_equal(r.count, cases[i].count);
		assert_int_equal(r.period_ms, cases[i].period);
		assert_int_equal(r.burst, cases[i].burst);
		assert_int_equal(r.local, cases[i].local);
	}
	assert_int_equal(kumo_shaping_parse_rate(NULL, &(struct kumo_shaping_rate){0}), -EINVAL);
}

static void test_parse_limit_count_duration(void **state)
{
	struct {
		const char *s;
		int rc;
		uint64_t n;
		bool local;
	} limits[] = {
	    {"5", 0, 5, false},		 {"local:5", 0, 5, true},
	    {"1,000", 0, 1000, false},	 {"local:10_000", 0, 10000, true},
	    {"0", 0, 0, false},		 {"local:", -EINVAL, 0, false},
	    {"five", -EINVAL, 0, false}, {"5 ", -EINVAL, 0, false},
	    {"-5", -EINVAL, 0, false},	 {"1,000,", -EINVAL, 0, false},
	    {",1", -EINVAL, 0, false},	 {"", -EINVAL, 0, false},
	};
	for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
		struct kumo_shaping_limit l = {0};
		print_message("limit \"%s\"\n", limits[i].s);
		assert_int_equal(kumo_shaping_parse_limit(limits[i].s, &l), limits[i].rc);
		if (!limits[i].rc) {
			assert_int_equal(l.limit, limits[i].n);
			assert_int_equal(l.local, limits[i].local);
		}
	}

	struct {
		const char *s;
		int rc;
		uint64_t n;
	} counts[] = {
	    {"100", 0, 100},
	    {"1,000", 0, 1000},
	    {"1_000_000", 0, 1000000},
	    {"18446744073709551615", 0, UINT64_MAX},
	    {"18446744073709551616", -EINVAL, 0},
	    {"local:5", -EINVAL, 0},
	    {"1.5", -EINVAL, 0},
	    {"", -EINVAL, 0},
	};
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		uint64_t n = 0;
		print_message("count \"%s\"\n", counts[i].s);
		assert_int_equal(kumo_shaping_parse_count(counts[i].s, &n), counts[i].rc);
		if (!counts[i].rc)
			assert_int_equal(n, counts[i].n);
	}

	struct {
		const char *s;
		int rc;
		uint64_t ms;
	} durations[] = {
	    {"90m", 0, 90 * MIN},      {"3 days", 0, 3 * DAY},
	    {"1h", 0, HOUR},	       {"30s", 0, 30 * SEC},
	    {"5 minutes", 0, 5 * MIN}, {"1 hours", 0, HOUR},
	    {"2 hour", 0, 2 * HOUR},   {"15 minutes", 0, 15 * MIN},
	    {"1 hour", 0, HOUR},       {"60", 0, 60 * SEC},
	    {"1h 30m", 0, 90 * MIN},   {"1h30m15s", 0, 90 * MIN + 15 * SEC},
	    {"250ms", 0, 250},	       {"2w", 0, 14 * DAY},
	    {"1 week", 0, 7 * DAY},    {" 10 sec ", 0, 10 * SEC},
	    {"1,000s", 0, 1000 * SEC}, {"", -EINVAL, 0},
	    {"   ", -EINVAL, 0},       {"m", -EINVAL, 0},
	    {"5 parsecs", -EINVAL, 0}, {"1h 30", -EINVAL, 0},
	    {"1.5h", -EINVAL, 0},      {"-5s", -EINVAL, 0},
	    {"5M", -EINVAL, 0},	       {"99999999999999999 days", -EINVAL, 0},
	};
	for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
		uint64_t ms = 0;
		print_message("duration \"%s\"\n", durations[i].s);
		assert_int_equal(kumo_shaping_parse_duration(durations[i].s, &ms), durations[i].rc);
		if (!durations[i].rc)
			assert_int_equal(ms, durations[i].ms);
	}
}

/* The same units inside a file, including integers for counts and durations. */
static void test_units_in_file(void **state)
{
	const char *text =
	    "[\"default\"]\n"
	    "connection_limit = \"local:5\"\n"
	    "max_connection_rate = \"1,000/hr\"\n"
	    "max_message_rate = \"100/h,max_burst=10\"\n"
	    "max_deliveries_per_connection = \"1,000\"\n"
	    "max_ready = 2048\n"
	    "idle_timeout = \"90m\"\n"
	    "connect_timeout = 45\n"
	    "rset_timeout = \"3 days\"\n"
	    "enable_tls = \"Disabled\"\n"
	    "provider_name = \"mine\"\n"
	    "prohibited_hosts = [\"127.0.0.0/8\", \"::1\"]\n"
	    "skip_hosts = []\n"
	    "enable_dane = true\n"
	    "weight = 1.5\n"
	    "smtp_auth_plain_password = {key_data = \"s\\\"x\"}\n"
	    "additional_connection_limits = {\"shared one\" = 10, two = \"local:3\"}\n"
	    "additional_message_rate_throttles = {global = \"4000/s\"}\n";
	struct kumo_shaping *sh = load_str(text);
	struct kumo_shaping_params p;

	effective(sh, "any.example", NULL, 0, NULL, &p);
	assert_int_equal(p.connection_limit.limit, 5);
	assert_true(p.connection_limit.local);
	assert_int_equal(p.max_connection_rate.count, 1000);
	assert_int_equal(p.max_connection_rate.period_ms, HOUR);
	assert_int_equal(p.max_message_rate.count, 100);
	assert_int_equal(p.max_message_rate.period_ms, HOUR);
	assert_int_equal(p.max_message_rate.burst, 10);
	assert_int_equal(p.max_deliveries_per_connection, 1000);
	assert_int_equal(p.max_ready, 2048);
	assert_int_equal(p.idle_timeout_ms, 90 * MIN);
	assert_int_equal(p.connect_timeout_ms, 45 * SEC);
	assert_int_equal(p.rset_timeout_ms, 3 * DAY);
	assert_int_equal(p.enable_tls, KUMO_SHAPING_TLS_DISABLED);
	assert_string_equal(p.provider_name, "mine");
	assert_int_equal(p.nproviders, 0);

	struct {
		const char *key, *value;
	} extras[] = {
	    {"prohibited_hosts", "[\"127.0.0.0/8\", \"::1\"]"},
	    {"skip_hosts", "[]"},
	    {"enable_dane", "true"},
	    {"weight", "1.5"},
	    {"smtp_auth_plain_password", "{key_data = \"s\\\"x\"}"},
	    {"additional_connection_limits.shared one", "10"},
	    {"additional_connection_limits.two", "local:3"},
	    {"additional_message_rate_throttles.global", "4000/s"},
	};
	assert_int_equal(p.nextra, sizeof(extras) / sizeof(extras[0]));
	for (size_t i = 0; i < p.nextra; i++) {
		assert_string_equal(p.extra[i].key, extras[i].key);
		assert_string_equal(p.extra[i].value, extras[i].value);
	}
	kumo_shaping_free(sh);

	/* secrets as tables are fine in single-label entries and providers */
	const char *secrets = "[localhost]\nsmtp_auth_plain_password = {key_data = \"a\"}\n"
			      "max_ready = 4\n"
			      "[provider.relay]\nmatch = [{HostName = \"localhost\"}]\n"
			      "tls_private_key = {vault_path = \"k\"}\n";
	sh = load_str(secrets);
	const char *lh[] = {"localhost"};
	effective(sh, "LOCALHOST", lh, 1, NULL, &p);
	assert_int_equal(p.max_ready, 4);
	assert_string_equal(p.provider_name, "relay");
	assert_string_equal(extra(&p, "smtp_auth_plain_password"), "{key_data = \"a\"}");
	assert_string_equal(extra(&p, "tls_private_key"), "{vault_path = \"k\"}");
	kumo_shaping_free(sh);

	/* additional_* tables merge key by key across levels, as in KumoMTA */
	const char *docs[] = {"[\"default\"]\nadditional_connection_limits = {a = 1, b = 2}\n",
			      "[\"x.example\"]\nadditional_connection_limits = {b = 3, c = 4}\n"};
	sh = load_strs(docs, 2);
	effective(sh, "x.example", NULL, 0, NULL, &p);
	assert_int_equal(p.nextra, 3);
	assert_string_equal(extra(&p, "additional_connection_limits.a"), "1");
	assert_string_equal(extra(&p, "additional_connection_limits.b"), "3");
	assert_string_equal(extra(&p, "additional_connection_limits.c"), "4");
	kumo_shaping_free(sh);

	/* more extras than the params hold */
	char big[8192];
	size_t len = (size_t)snprintf(big, sizeof(big), "[\"default\"]\n");
	for (int i = 0; i < KUMO_SHAPING_MAX_EXTRA + 3; i++)
		len += (size_t)snprintf(big + len, sizeof(big) - len, "k%d = %d\n", i, i);
	sh = load_str(big);
	effective(sh, "x.example", NULL, 0, NULL, &p);
	assert_int_equal(p.nextra, KUMO_SHAPING_MAX_EXTRA);
	assert_true(p.extra_truncated);
	assert_string_equal(p.extra[KUMO_SHAPING_MAX_EXTRA - 1].value, "63");
	kumo_shaping_free(sh);
}

/* ---- malformed files ------------------------------------------------------------------ */

static void test_malformed(void **state)
{
	struct {
		const char *text;
		int rc;
		const char *err;
	} cases[] = {
	    /* TOML syntax: the reader's own message */
	    {"[\"default\"]\nconnection_limit = \n", -EINVAL,
	     "bad.toml:2: key 'default.connection_limit': expected a value"},
	    /* structure */
	    {"connection_limit = 5\n", -EINVAL,
	     "bad.toml:1: key 'connection_limit': expected a table (settings go under "
	     "[\"default\"] or a [\"domain\"] entry), got integer"},
	    {"provider = 5\n", -EINVAL,
	     "bad.toml:1: key 'provider': expected a table of providers ([provider.\"name\"]), "
	     "got integer"},
	    {"[gmail.com]\nconnection_limit = 5\n", -EINVAL,
	     "bad.toml:1: key 'gmail.com': a table inside entry 'gmail': quote domain names in "
	     "headers, as [\"gmail.com\"]"},
	    {"[\"x.example\"]\nmx_rollup = \"no\"\n", -EINVAL,
	     "bad.toml:2: key '\"x.example\".mx_rollup': expected true or false, got string"},
	    {"[\"x.example\"]\nreplace_base = 1\n", -EINVAL,
	     "bad.toml:2: key '\"x.example\".replace_base': expected true or false, got integer"},
	    {"[\"x.example\"]\nprovider_connection_limit = 5\n", -EINVAL,
	     "bad.toml:2: key '\"x.example\".provider_connection_limit': only valid in a "
	     "[provider.\"name\"] entry"},
	    {"[\".\"]\nconnection_limit = 5\n", -EINVAL,
	     "bad.toml:1: key '\".\"': empty domain name"},
	    {"\n[\"a..\"]\nconnection_limit = 5\n", -EINVAL,
	     "bad.toml:2: key '\"a..\"': invalid domain name: it ends with \"..\""},
	    {"[provider.qq.com]\nconnection_limit = 4\n", -EINVAL,
	     "bad.toml:1: key 'provider.qq.com': a table inside provider 'qq': quote names with "
	     "dots in headers, as [provider.\"qq.com\"]"},
	    /* enforced settings */
	    {"[\"default\"]\nconnection_limit = \"ten\"\n", -EINVAL,
	     "bad.toml:2: key 'default.connection_limit': \"ten\": expected a limit such as 10, "
	     "\"1,000\" or \"local:5\""},
	    {"[\"default\"]\nconnection_limit = -1\n", -EINVAL,
	     "bad.toml:2: key 'default.connection_limit': must not be negative"},
	    {"[\"default\"]\n\n\nmax_message_rate = \"100/our\"\n", -EINVAL,
	     "bad.toml:4: key 'default.max_message_rate': \"100/our\": unknown period: use s, "
	     "sec, m, min, h, hr, hour, d or day"},
	    {"[\"default\"]\nmax_message_rate = 100\n", -EINVAL,
	     "bad.toml:2: key 'default.max_message_rate': expected a rate such as \"100/min\", "
	     "got integer"},
	    {"[\"default\"]\nmax_connection_rate = \"0/s\"\n", -EINVAL,
	     "bad.toml:2: key 'default.max_connection_rate': \"0/s\": the count of a rate must "
	     "be greater than 0"},
	    {"[\"a.b\"]\nmax_deliveries_per_connection = true\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".max_deliveries_per_connection': expected an integer or a "
	     "string, got boolean"},
	    {"[\"a.b\"]\nmax_ready = \"lots\"\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".max_ready': \"lots\": expected a number such as 100 or "
	     "\"1,000\""},
	    {"[\"a.b\"]\nidle_timeout = \"5 parsecs\"\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".idle_timeout': \"5 parsecs\": unknown unit: use ms, s, "
	     "sec, m, min, h, hr, hour, d, day or week"},
	    {"[\"a.b\"]\nidle_timeout = 1.5\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".idle_timeout': expected an integer or a string, got "
	     "float"},
	    {"[\"a.b\"]\nenable_tls = \"Sometimes\"\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".enable_tls': \"Sometimes\": expected Opportunistic, "
	     "OpportunisticInsecure, Required, RequiredInsecure or Disabled"},
	    {"[\"a.b\".sources.\"my src\"]\nconnection_limit = \"x\"\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".sources.\"my src\".connection_limit': \"x\": expected a "
	     "limit such as 10, \"1,000\" or \"local:5\""},
	    {"[\"a.b\".sources.s]\nmx_rollup = false\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".sources.s.mx_rollup': not valid in a source entry: only "
	     "settings are"},
	    {"[\"a.b\"]\nsources = 5\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".sources': expected a table of egress sources "
	     "([\"domain\".sources.\"name\"]), got integer"},
	    {"[\"a.b\"]\nadditional_connection_limits = {x = \"many\"}\n", -EINVAL,
	     "bad.toml:2: key '\"a.b\".additional_connection_limits.x': \"many\": expected a "
	     "limit such as 10, \"1,000\" or \"local:5\""},
	    /* providers */
	    {"[provider.p]\nmatch = [{MXSuffx = \".x\"}]\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.match.MXSuffx': unknown match: expected MXSuffix, "
	     "DomainSuffix or HostName"},
	    {"[provider.p]\nmatch = {MXSuffix = \".x\"}\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.match': expected an array such as [{MXSuffix = "
	     "\".example.net\"}], got table"},
	    {"[provider.p]\nmatch = [{MXSuffix = \".x\", HostName = \"y\"}]\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.match': each match is a table with one key: "
	     "{MXSuffix = \"...\"}, {DomainSuffix = \"...\"} or {HostName = \"...\"}"},
	    {"[provider.p]\nmatch = [{HostName = \"\"}]\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.match.HostName': empty name"},
	    {"[provider.p]\nmx_rollup = false\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.mx_rollup': only valid in a domain entry: providers "
	     "match by MX host"},
	    {"[provider.\"q.r\"]\nprovider_connection_limit = 0\n", -EINVAL,
	     "bad.toml:2: key 'provider.\"q.r\".provider_connection_limit': must be at least 1"},
	    {"[provider.p]\nprovider_max_message_rate = \"fast\"\n", -EINVAL,
	     "bad.toml:2: key 'provider.p.provider_max_message_rate': \"fast\": expected a rate "
	     "such as \"100/min\""},
	    /* automation */
	    {"[[\"x.com\".automation]]\nregex = \"a\"\naction = \"Suspend\"\n", -EINVAL,
	     "bad.toml:1: key '\"x.com\".automation.duration': missing: every automation rule "
	     "needs a duration, such as duration = \"90m\""},
	    {"\n[[\"x.com\".automation]]\naction = \"Suspend\"\nduration = \"1h\"\n", -EINVAL,
	     "bad.toml:2: key '\"x.com\".automation.regex': missing"},
	    {"[[\"x.com\".automation]]\nregex = \"a\"\nduration = \"1h\"\n", -EINVAL,
	     "bad.toml:1: key '\"x.com\".automation.action': missing"},
	    {"[[provider.p.automation]]\nregex = \"a\"\naction = \"Explode\"\nduration = \"1h\"\n",
	     -EINVAL,
	     "bad.toml:3: key 'provider.p.automation.action': unknown action \"Explode\": "
	     "expected Suspend, SuspendTenant, SuspendCampaign, Bounce, BounceTenant, "
	     "BounceCampaign, {SetConfig = {...}} or {SetDomainConfig = {...}}"},
	    {"[[default.automation]]\nregex = \"a\"\naction = \"SetConfig\"\nduration = \"1h\"\n",
	     -EINVAL,
	     "bad.toml:3: key 'default.automation.action': SetConfig needs a setting: "
	     "{SetConfig = {name = \"...\", value = ...}}"},
	    {"[[default.automation]]\nregex = \"a\"\n"
	     "action = {SetConfig = {name = \"connection_limit\"}}\nduration = \"1h\"\n",
	     -EINVAL, "bad.toml:3: key 'default.automation.action.SetConfig.value': missing"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\n"
	     "action = [\"Suspend\", {SetConfig = {name = \"connection_limit\", value = "
	     "\"lots\"}}]\n",
	     -EINVAL,
	     "bad.toml:4: key 'default.automation.action.SetConfig.value': \"lots\": expected a "
	     "limit such as 10, \"1,000\" or \"local:5\""},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\n"
	     "action = {SetConfig = {name = \"mx_rollup\", value = false}}\n",
	     -EINVAL,
	     "bad.toml:4: key 'default.automation.action.SetConfig.name': 'mx_rollup' is not a "
	     "setting an action can change"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\n"
	     "action = {SetConfig = {name = \"x\", value = 1, extra = 2}}\n",
	     -EINVAL,
	     "bad.toml:4: key 'default.automation.action.SetConfig.extra': unknown key: expected "
	     "only name and value"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = {Suspend = {}}\n",
	     -EINVAL,
	     "bad.toml:4: key 'default.automation.action.Suspend': Suspend takes no arguments: "
	     "write action = \"Suspend\""},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = []\n", -EINVAL,
	     "bad.toml:4: key 'default.automation.action': empty list: a rule needs at least "
	     "one action"},
	    {"[[default.automation]]\nregex = []\nduration = \"1h\"\naction = \"Suspend\"\n",
	     -EINVAL,
	     "bad.toml:2: key 'default.automation.regex': empty list: a rule needs at least one "
	     "regex"},
	    {"[[default.automation]]\nregex = [\"a\", 5]\nduration = \"1h\"\naction = "
	     "\"Suspend\"\n",
	     -EINVAL,
	     "bad.toml:2: key 'default.automation.regex': expected a regular expression (a "
	     "string or a list of strings), got integer"},
	    {"[[default.automation]]\nregex = \"\"\nduration = \"1h\"\naction = \"Suspend\"\n",
	     -EINVAL,
	     "bad.toml:2: key 'default.automation.regex': empty regex: it would match "
	     "everything"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"soon\"\naction = \"Suspend\"\n",
	     -EINVAL,
	     "bad.toml:3: key 'default.automation.duration': \"soon\": expected a duration such "
	     "as \"90m\", \"30s\" or \"3 days\""},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = \"Suspend\"\n"
	     "trigger = \"Sometimes\"\n",
	     -EINVAL,
	     "bad.toml:5: key 'default.automation.trigger': \"Sometimes\": expected "
	     "\"Immediate\" or {Threshold = \"5/hr\"}"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = \"Suspend\"\n"
	     "trigger = {Threshold = \"5/fortnight\"}\n",
	     -EINVAL,
	     "bad.toml:5: key 'default.automation.trigger.Threshold': \"5/fortnight\": unknown "
	     "period: use s, sec, m, min, h, hr, hour, d or day"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = \"Suspend\"\n"
	     "tigger = \"Immediate\"\n",
	     -EINVAL,
	     "bad.toml:5: key 'default.automation.tigger': unknown key in an automation rule: "
	     "expected regex, action, trigger, duration or match_internal"},
	    {"[[default.automation]]\nregex = \"a\"\nduration = \"1h\"\naction = \"Suspend\"\n"
	     "match_internal = \"yes\"\n",
	     -EINVAL,
	     "bad.toml:5: key 'default.automation.match_internal': expected true or false, got "
	     "string"},
	    {"[\"x.com\"]\nautomation = {regex = \"a\"}\n", -EINVAL,
	     "bad.toml:2: key '\"x.com\".automation': expected an array of rules "
	     "([[\"domain\".automation]]), got table"},
	    /* the second rule of three is the bad one: its own header line */
	    {"[[\"x.com\".automation]]\nregex = \"a\"\naction = \"Suspend\"\nduration = \"1h\"\n"
	     "[[\"x.com\".automation]]\nregex = \"b\"\naction = \"Suspend\"\n"
	     "[[\"x.com\".automation]]\nregex = \"c\"\naction = \"Suspend\"\nduration = \"1h\"\n",
	     -EINVAL,
	     "bad.toml:5: key '\"x.com\".automation.duration': missing: every automation rule "
	     "needs a duration, such as duration = \"90m\""},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kumo_shaping_text t = {"bad.toml", cases[i].text, strlen(cases[i].text)};
		struct kumo_shaping *sh = (void *)1;
		char err[512];
		print_message("case %zu: %s\n", i, cases[i].err);
		assert_int_equal(kumo_shaping_load_texts(&t, 1, &sh, err, sizeof(err)),
				 cases[i].rc);
		assert_null(sh);
		assert_string_equal(err, cases[i].err);
	}
}

/* Errors name the file, among several, and its path. */
static void test_malformed_files(void **state)
{
	char dir[64], good[128], bad[128], missing[160], want[512], err[512];
	struct kumo_shaping *sh = (void *)1;

	make_tmpdir(dir, sizeof(dir));
	write_file(dir, "good.toml", "[\"default\"]\nconnection_limit = 5\n", good, sizeof(good));
	write_file(dir, "bad.toml",
		   "# overrides\n"
		   "[\"default\"]\n"
		   "connection_limit = 5\n"
		   "\n"
		   "[\"gmail.com\"]\n"
		   "max_message_rate = \"10/fortnight\"\n",
		   bad, sizeof(bad));
	snprintf(missing, sizeof(missing), "%s/missing.toml", dir);

	const char *paths[] = {good, bad};
	assert_int_equal(kumo_shaping_load(paths, 2, &sh, err, sizeof(err)), -EINVAL);
	assert_null(sh);
	snprintf(want, sizeof(want),
		 "%s:6: key '\"gmail.com\".max_message_rate': \"10/fortnight\": unknown period: "
		 "use s, sec, m, min, h, hr, hour, d or day",
		 bad);
	assert_string_equal(err, want);

	const char *paths2[] = {good, missing};
	sh = (void *)1;
	assert_int_equal(kumo_shaping_load(paths2, 2, &sh, err, sizeof(err)), -ENOENT);
	assert_null(sh);
	assert_int_equal(strncmp(err, missing, strlen(missing)), 0);
	assert_non_null(strstr(err, "No such file"));

	/* a short buffer is cut but terminated; a zero-size one is not touched */
	char small[16];
	memset(small, 'x', sizeof(small));
	assert_int_equal(kumo_shaping_load(paths, 2, &sh, small, sizeof(small)), -EINVAL);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_int_equal(kumo_shaping_load(paths, 2, &sh, NULL, 0), -EINVAL);

	/* no files: an empty set, every destination gets the built-in defaults */
	assert_int_equal(kumo_shaping_load(NULL, 0, &sh, err, sizeof(err)), 0);
	struct kumo_shaping_params p;
	effective(sh, "x.example", NULL, 0, NULL, &p);
	assert_int_equal(p.set, 0);
	assert_int_equal(p.connection_limit.limit, 32);
	assert_int_equal(kumo_shaping_rules(sh, "x.example", NULL, 0, NULL, 0), 0);
	assert_int_equal(kumo_shaping_site_entry_count(sh), 0);
	kumo_shaping_free(sh);

	rm_file(good);
	rm_file(bad);
	assert_int_equal(rmdir(dir), 0);
}

static void test_bad_arguments(void **state)
{
	struct kumo_shaping *sh = load_str("[\"default\"]\nmax_ready = 3\n");
	struct kumo_shaping_params p;
	const char *mx[] = {"mx.example"};

	assert_int_equal(kumo_shaping_effective(sh, NULL, mx, 1, NULL, &p), -EINVAL);
	assert_int_equal(kumo_shaping_effective(sh, "", mx, 1, NULL, &p), -EINVAL);
	assert_int_equal(kumo_shaping_effective(sh, ".", mx, 1, NULL, &p), -EINVAL);
	assert_int_equal(kumo_shaping_effective(sh, "x.example", NULL, 1, NULL, &p), -EINVAL);
	assert_int_equal(kumo_shaping_effective(NULL, "x.example", mx, 1, NULL, &p), -EINVAL);
	assert_int_equal(kumo_shaping_rules(sh, NULL, mx, 1, NULL, 0), 0);
	assert_int_equal(kumo_shaping_load_texts(NULL, 1, &sh, NULL, 0), -EINVAL);
	assert_int_equal(kumo_shaping_site_entry_count(NULL), 0);
	assert_null(kumo_shaping_site_entry(NULL, 0));
	/* an MX list with empty names is still an MX set that no provider claims */
	const char *odd[] = {"", "."};
	assert_int_equal(kumo_shaping_effective(sh, "x.example", odd, 2, NULL, &p), 0);
	assert_int_equal(p.max_ready, 3);
	kumo_shaping_free(sh);
	kumo_shaping_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_compat_files_load),
	    cmocka_unit_test(test_compat_effective),
	    cmocka_unit_test(test_compat_set_bits_and_extras),
	    cmocka_unit_test(test_compat_rules),
	    cmocka_unit_test(test_merge_order),
	    cmocka_unit_test(test_replace_base),
	    cmocka_unit_test(test_precedence_and_sources),
	    cmocka_unit_test(test_provider_match),
	    cmocka_unit_test(test_rules_order),
	    cmocka_unit_test(test_site_binding),
	    cmocka_unit_test(test_parse_rate),
	    cmocka_unit_test(test_parse_limit_count_duration),
	    cmocka_unit_test(test_units_in_file),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_malformed_files),
	    cmocka_unit_test(test_bad_arguments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
