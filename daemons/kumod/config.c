/* Reads kumod.toml into engine and listener configs. Strict: an unknown key, a value of
 * the wrong type or out of range is an error naming the file, line and key. The embedded
 * default config is parsed by the same code. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/toml.h"
#include "util/file.h"

const char kumod_default_config[] =
	"# kumod's embedded default configuration\n"
	"[[listener]]\n"
	"smtp = \"127.0.0.1:2525\"\n"
	"relay_hosts = [\"127.0.0.0/8\", \"::1\"]\n"
	"[spool]\n"
	"path = \"var/spool\"\n"
	"[log]\n"
	"path = \"var/log\"\n";

struct ctx {
	const char *file;
	char *err;
	size_t errcap;
};

static int fail(struct ctx *x, const struct kumo_toml_value *v, const char *key,
		const char *fmt, const char *arg)
{
	char msg[256];
	snprintf(msg, sizeof(msg), fmt, arg);
	snprintf(x->err, x->errcap, "%s:%d: key '%s': %s", x->file, kumo_toml_line(v), key, msg);
	return -EINVAL;
}

long long kumod_parse_duration_ms(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || v < 0)
		return -1;
	while (*end == ' ')
		end++;
	double mult = 1000;
	if (!*end || !strcmp(end, "s") || !strcmp(end, "sec") || !strcmp(end, "seconds"))
		mult = 1000;
	else if (!strcmp(end, "ms"))
		mult = 1;
	else if (!strcmp(end, "m") || !strcmp(end, "min") || !strcmp(end, "minutes"))
		mult = 60000;
	else if (!strcmp(end, "h") || !strcmp(end, "hours"))
		mult = 3600000;
	else if (!strcmp(end, "d") || !strcmp(end, "days"))
		mult = 86400000;
	else
		return -1;
	return (long long)(v * mult);
}

long long kumod_parse_size(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || errno || *s == '-')
		return -1;
	while (*end == ' ')
		end++;
	unsigned long long mult = 1;
	switch (toupper((unsigned char)*end)) {
	case 0: break;
	case 'K': mult = 1ULL << 10; end++; break;
	case 'M': mult = 1ULL << 20; end++; break;
	case 'G': mult = 1ULL << 30; end++; break;
	default: return -1;
	}
	if (mult > 1 && (*end == 'i' || *end == 'I'))
		end++;
	if (mult > 1 && (*end == 'B' || *end == 'b'))
		end++;
	if (*end || v > (1ULL << 40))
		return -1;
	return (long long)(v * mult);
}

/* Every key of table t must be in allowed (NULL-terminated). */
static int only_keys(struct ctx *x, const struct kumo_toml_value *t, const char *prefix,
		     const char *const *allowed)
{
	for (size_t i = 0; i < kumo_toml_count(t); i++) {
		const char *k = kumo_toml_key_at(t, i);
		bool ok = false;
		for (const char *const *a = allowed; *a && !ok; a++)
			ok = strcmp(*a, k) == 0;
		if (!ok) {
			char full[256];
			snprintf(full, sizeof(full), "%s%s", prefix, k);
			return fail(x, kumo_toml_at(t, i), full, "unknown key%s", "");
		}
	}
	return 0;
}

static int get_string(struct ctx *x, const struct kumo_toml_value *t, const char *key,
		      const char *name, const char **out)
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	if (!v)
		return 0;
	if (kumo_toml_type(v) != KUMO_TOML_STRING)
		return fail(x, v, name, "expected a string, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	*out = kumo_toml_string(v, NULL);
	return 0;
}

static int get_uint(struct ctx *x, const struct kumo_toml_value *t, const char *key,
		    const char *name, long long max, long long *out)
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	int64_t n;
	if (!v)
		return 0;
	if (kumo_toml_int(v, &n) < 0)
		return fail(x, v, name, "expected an integer, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	if (n < 0 || n > max)
		return fail(x, v, name, "out of range%s", "");
	*out = n;
	return 0;
}

/* A duration: a string with a unit ("5m") or an integer number of seconds. */
static int get_duration(struct ctx *x, const struct kumo_toml_value *t, const char *key,
			const char *name, uint32_t *out_ms)
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	int64_t n;
	long long ms;
	if (!v)
		return 0;
	if (kumo_toml_int(v, &n) == 0)
		ms = n >= 0 ? n * 1000 : -1;
	else if (kumo_toml_type(v) == KUMO_TOML_STRING)
		ms = kumod_parse_duration_ms(kumo_toml_string(v, NULL));
	else
		ms = -1;
	if (ms <= 0 || ms > 86400000LL * 30)
		return fail(x, v, name, "expected a duration such as \"30s\", \"5m\"%s", "");
	*out_ms = (uint32_t)ms;
	return 0;
}

/* A size: an integer of bytes or a string with a unit ("50MB"). */
static int get_size(struct ctx *x, const struct kumo_toml_value *t, const char *key,
		    const char *name, size_t *out)
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	int64_t n;
	long long b;
	if (!v)
		return 0;
	if (kumo_toml_int(v, &n) == 0)
		b = n;
	else if (kumo_toml_type(v) == KUMO_TOML_STRING)
		b = kumod_parse_size(kumo_toml_string(v, NULL));
	else
		b = -1;
	if (b <= 0 || b > (1LL << 32))
		return fail(x, v, name, "expected a size such as 10240 or \"50MB\"%s", "");
	*out = (size_t)b;
	return 0;
}

static int get_string_array(struct ctx *x, const struct kumo_toml_value *t, const char *key,
			    const char *name, const char **out, size_t cap, size_t *n,
			    int (*check)(const char *))
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	if (!v)
		return 0;
	if (kumo_toml_type(v) != KUMO_TOML_ARRAY)
		return fail(x, v, name, "expected an array of strings%s", "");
	if (kumo_toml_count(v) > cap)
		return fail(x, v, name, "too many entries%s", "");
	for (size_t i = 0; i < kumo_toml_count(v); i++) {
		const char *s = kumo_toml_string(kumo_toml_at(v, i), NULL);
		if (!s || kumo_toml_type(kumo_toml_at(v, i)) != KUMO_TOML_STRING)
			return fail(x, v, name, "expected an array of strings%s", "");
		if (check && check(s) < 0)
			return fail(x, v, name, "invalid entry \"%s\"", s);
		out[i] = s;
	}
	*n = kumo_toml_count(v);
	return 0;
}

static int domain_check(const char *s)
{
	return *s && !strchr(s, '@') && !strchr(s, ' ') ? 0 : -EINVAL;
}

static const char *const listener_keys[] = {
	"smtp", "hostname", "relay_hosts", "local_domains", "max_line_length",
	"max_recipients_per_message", "max_message_size", "max_messages_per_connection",
	"command_timeout", "data_timeout", "bare_line_ending", NULL};

static int listener_limits(struct ctx *x, const struct kumo_toml_value *t,
			   struct kumo_listener_cfg *c)
{
	long long v = 0;
	int err;
	if ((err = get_uint(x, t, "max_line_length", "listener.max_line_length", 65536, &v)))
		return err;
	if (v && v < 512)
		return fail(x, kumo_toml_get(t, "max_line_length"), "listener.max_line_length",
			    "must be at least 512 (RFC 5321 4.5.3.1.4)%s", "");
	c->max_line = (size_t)v;
	v = 0;
	if ((err = get_uint(x, t, "max_recipients_per_message",
			    "listener.max_recipients_per_message", 100000, &v)))
		return err;
	c->max_recipients = (size_t)v;
	v = 0;
	if ((err = get_uint(x, t, "max_messages_per_connection",
			    "listener.max_messages_per_connection", 4000000000LL, &v)))
		return err;
	c->max_messages = (unsigned)v;
	if ((err = get_size(x, t, "max_message_size", "listener.max_message_size",
			    &c->max_message_size)) ||
	    (err = get_duration(x, t, "command_timeout", "listener.command_timeout",
				&c->command_timeout_ms)) ||
	    (err = get_duration(x, t, "data_timeout", "listener.data_timeout",
				&c->data_timeout_ms)))
		return err;
	const char *bare = NULL;
	if ((err = get_string(x, t, "bare_line_ending", "listener.bare_line_ending", &bare)))
		return err;
	if (bare && strcmp(bare, "reject") && strcmp(bare, "normalize"))
		return fail(x, kumo_toml_get(t, "bare_line_ending"), "listener.bare_line_ending",
			    "expected \"reject\" or \"normalize\", got \"%s\"", bare);
	c->bare_eol = bare && !strcmp(bare, "normalize") ? KUMO_BARE_EOL_NORMALIZE
							 : KUMO_BARE_EOL_REJECT;
	return 0;
}

static int one_listener(struct ctx *x, const struct kumo_toml_value *t, struct kumod_listener *l)
{
	int err;
	struct kumo_listener_cfg *c = &l->cfg;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "listener", "expected [[listener]] tables%s", "");
	if ((err = only_keys(x, t, "listener.", listener_keys)))
		return err;
	if ((err = get_string(x, t, "smtp", "listener.smtp", &c->address)))
		return err;
	if (!c->address)
		return fail(x, t, "listener.smtp", "missing: each [[listener]] needs smtp = "
			    "\"ip:port\"%s", "");
	if (kumo_address_check(c->address) < 0)
		return fail(x, kumo_toml_get(t, "smtp"), "listener.smtp",
			    "expected \"ip:port\" or \"[ipv6]:port\", got \"%s\"", c->address);
	if ((err = get_string(x, t, "hostname", "listener.hostname", &c->hostname)))
		return err;
	size_t n = 0;
	if ((err = get_string_array(x, t, "relay_hosts", "listener.relay_hosts", l->relay, 64, &n,
				    kumo_cidr_check)))
		return err;
	if (kumo_toml_get(t, "relay_hosts")) {
		c->relay_hosts = l->relay;
		c->nrelay_hosts = n;
	}
	if ((err = get_string_array(x, t, "local_domains", "listener.local_domains", l->domains,
				    256, &c->nlocal_domains, domain_check)))
		return err;
	c->local_domains = l->domains;
	return listener_limits(x, t, c);
}

static int listeners(struct ctx *x, const struct kumo_toml_value *root, struct kumod_config *c)
{
	const struct kumo_toml_value *arr = kumo_toml_get(root, "listener");
	if (!arr)
		return 0;
	if (kumo_toml_type(arr) != KUMO_TOML_ARRAY)
		return fail(x, arr, "listener", "expected [[listener]] tables%s", "");
	if (kumo_toml_count(arr) > KUMOD_MAX_LISTENERS)
		return fail(x, arr, "listener", "too many listeners%s", "");
	for (size_t i = 0; i < kumo_toml_count(arr); i++) {
		int err = one_listener(x, kumo_toml_at(arr, i), &c->listeners[i]);
		if (err)
			return err;
		c->nlisteners = i + 1;
	}
	return 0;
}

/* A [section] with string keys only: each named key is stored through its pointer. */
static int string_section(struct ctx *x, const struct kumo_toml_value *root, const char *name,
			  const char *const *keys, const char **outs[])
{
	const struct kumo_toml_value *t = kumo_toml_get(root, name);
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, name, "expected a table%s", "");
	char prefix[64];
	snprintf(prefix, sizeof(prefix), "%s.", name);
	int err = only_keys(x, t, prefix, keys);
	for (size_t i = 0; !err && keys[i]; i++) {
		char full[128];
		snprintf(full, sizeof(full), "%s.%s", name, keys[i]);
		err = get_string(x, t, keys[i], full, outs[i]);
	}
	return err;
}

static int engine_section(struct ctx *x, const struct kumo_toml_value *root,
			  struct kumo_engine_cfg *e)
{
	static const char *const keys[] = {"threads", "hostname", "nodeid", "max_connections",
					   "shutdown_grace", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "engine");
	long long v = 0;
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "engine", "expected a table%s", "");
	if ((err = only_keys(x, t, "engine.", keys)) ||
	    (err = get_uint(x, t, "threads", "engine.threads", 256, &v)))
		return err;
	e->threads = (unsigned)v;
	v = 0;
	if ((err = get_uint(x, t, "max_connections", "engine.max_connections", 1000000, &v)))
		return err;
	e->max_connections = (unsigned)v;
	if ((err = get_string(x, t, "hostname", "engine.hostname", &e->hostname)) ||
	    (err = get_string(x, t, "nodeid", "engine.nodeid", &e->nodeid)))
		return err;
	return get_duration(x, t, "shutdown_grace", "engine.shutdown_grace", &e->shutdown_grace_ms);
}

static int get_bool(struct ctx *x, const struct kumo_toml_value *t, const char *key,
		    const char *name, bool *out)
{
	const struct kumo_toml_value *v = kumo_toml_get(t, key);
	if (v && kumo_toml_bool(v, out) < 0)
		return fail(x, v, name, "expected true or false%s", "");
	return 0;
}

static int delivery_section(struct ctx *x, const struct kumo_toml_value *root,
			    struct kumo_engine_cfg *e)
{
	static const char *const keys[] = {
		"enabled", "retry_interval", "max_retry_interval", "max_age", "connection_limit",
		"max_deliveries_per_connection", "max_recipients_per_batch", "idle_timeout",
		"connect_timeout", "mx_port", "ehlo_name", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "delivery");
	long long v;
	bool enabled = true;
	uint32_t age_ms = 0;
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "delivery", "expected a table%s", "");
	if ((err = only_keys(x, t, "delivery.", keys)) ||
	    (err = get_bool(x, t, "enabled", "delivery.enabled", &enabled)) ||
	    (err = get_duration(x, t, "retry_interval", "delivery.retry_interval",
				&e->retry_interval_ms)) ||
	    (err = get_duration(x, t, "max_retry_interval", "delivery.max_retry_interval",
				&e->max_retry_interval_ms)) ||
	    (err = get_duration(x, t, "max_age", "delivery.max_age", &age_ms)) ||
	    (err = get_duration(x, t, "idle_timeout", "delivery.idle_timeout",
				&e->idle_timeout_ms)) ||
	    (err = get_duration(x, t, "connect_timeout", "delivery.connect_timeout",
				&e->connect_timeout_ms)) ||
	    (err = get_string(x, t, "ehlo_name", "delivery.ehlo_name", &e->ehlo_name)))
		return err;
	e->no_delivery = !enabled;
	e->max_age_ms = age_ms;
	struct { const char *key; long long max; unsigned *out; } ints[] = {
		{"connection_limit", 100000, &e->connection_limit},
		{"max_deliveries_per_connection", 100000000, &e->max_deliveries_per_connection},
		{"max_recipients_per_batch", 100000, &e->max_recipients_per_batch}};
	for (size_t i = 0; i < 3; i++) {
		char name[96];
		snprintf(name, sizeof(name), "delivery.%s", ints[i].key);
		v = 0;
		if ((err = get_uint(x, t, ints[i].key, name, ints[i].max, &v)))
			return err;
		*ints[i].out = (unsigned)v;
	}
	v = 0;
	if ((err = get_uint(x, t, "mx_port", "delivery.mx_port", 65535, &v)))
		return err;
	e->mx_port = (uint16_t)v;
	return 0;
}

static int log_section(struct ctx *x, const struct kumo_toml_value *root,
		       struct kumo_engine_cfg *e)
{
	static const char *const keys[] = {"path", "max_segment_size", "max_segment_age",
					   "compress", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "log");
	size_t size = 0;
	bool compress = true;
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "log", "expected a table%s", "");
	if ((err = only_keys(x, t, "log.", keys)) ||
	    (err = get_string(x, t, "path", "log.path", &e->log_path)) ||
	    (err = get_size(x, t, "max_segment_size", "log.max_segment_size", &size)) ||
	    (err = get_duration(x, t, "max_segment_age", "log.max_segment_age",
				&e->log_max_segment_age_ms)) ||
	    (err = get_bool(x, t, "compress", "log.compress", &compress)))
		return err;
	e->log_max_segment_bytes = size;
	e->log_no_compress = !compress;
	return 0;
}

static int dns_section(struct ctx *x, const struct kumo_toml_value *root,
		       struct kumo_engine_cfg *e)
{
	static const char *const keys[] = {"servers", "timeout", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "dns");
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "dns", "expected a table%s", "");
	if ((err = only_keys(x, t, "dns.", keys)) ||
	    (err = get_string(x, t, "servers", "dns.servers", &e->dns_servers)) ||
	    (err = get_duration(x, t, "timeout", "dns.timeout", &e->dns_timeout_ms)))
		return err;
	return 0;
}

static int routing_section(struct ctx *x, const struct kumo_toml_value *root,
			   struct kumod_config *c)
{
	static const char *const keys[] = {"smart_host", "domains", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "routing"), *v;
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "routing", "expected a table%s", "");
	if ((err = only_keys(x, t, "routing.", keys)) ||
	    (err = get_string(x, t, "smart_host", "routing.smart_host", &c->engine.smart_host)))
		return err;
	if (c->engine.smart_host && kumo_address_check(c->engine.smart_host) < 0)
		return fail(x, kumo_toml_get(t, "smart_host"), "routing.smart_host",
			    "expected \"ip:port\", got \"%s\"", c->engine.smart_host);
	const struct kumo_toml_value *doms = kumo_toml_get(t, "domains");
	if (doms && kumo_toml_type(doms) != KUMO_TOML_TABLE)
		return fail(x, doms, "routing.domains", "expected a table of \"domain\" = "
			    "\"ip:port\"%s", "");
	for (size_t i = 0; doms && i < kumo_toml_count(doms) && i < 256; i++) {
		char name[300];
		const char *dom = kumo_toml_key_at(doms, i);
		snprintf(name, sizeof(name), "routing.domains.%s", dom);
		v = kumo_toml_at(doms, i);
		const char *hp = kumo_toml_string(v, NULL);
		if (!hp || kumo_toml_type(v) != KUMO_TOML_STRING || kumo_address_check(hp) < 0)
			return fail(x, v, name, "expected \"ip:port\"%s", "");
		c->routes[c->nroutes][0] = dom;
		c->routes[c->nroutes][1] = hp;
		c->nroutes++;
	}
	return 0;
}

static int shaping_section(struct ctx *x, const struct kumo_toml_value *root,
			   struct kumod_config *c)
{
	static const char *const keys[] = {"files", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "shaping");
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "shaping", "expected a table%s", "");
	if ((err = only_keys(x, t, "shaping.", keys)) ||
	    (err = get_string_array(x, t, "files", "shaping.files", c->shaping_files, 32,
				    &c->engine.nshaping_files, NULL)))
		return err;
	c->engine.shaping_files = c->shaping_files;
	return 0;
}

static int one_source(struct ctx *x, const struct kumo_toml_value *t, struct kumo_source_cfg *s)
{
	static const char *const keys[] = {
		"name", "source_address", "ehlo_name", "socks5_proxy_server",
		"socks5_proxy_source_address", "socks5_proxy_username", "socks5_proxy_password",
		"ha_proxy_server", "ha_proxy_source_address", NULL};
	static const char *const addr_keys[] = {"socks5_proxy_server", "ha_proxy_server"};
	static const char *const ip_keys[] = {"socks5_proxy_source_address",
					      "ha_proxy_source_address"};
	const char **addr_out[] = {&s->socks5_proxy_server, &s->ha_proxy_server};
	const char **ip_out[] = {&s->socks5_proxy_source_address, &s->ha_proxy_source_address};
	int err;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "egress_source", "expected [[egress_source]] tables%s", "");
	if ((err = only_keys(x, t, "egress_source.", keys)))
		return err;
	for (int i = 0; i < 2; i++) {
		char name[96];
		snprintf(name, sizeof(name), "egress_source.%s", addr_keys[i]);
		if ((err = get_string(x, t, addr_keys[i], name, addr_out[i])))
			return err;
		if (*addr_out[i] && kumo_address_check(*addr_out[i]) < 0)
			return fail(x, kumo_toml_get(t, addr_keys[i]), name,
				    "expected \"ip:port\", got \"%s\"", *addr_out[i]);
		snprintf(name, sizeof(name), "egress_source.%s", ip_keys[i]);
		if ((err = get_string(x, t, ip_keys[i], name, ip_out[i])))
			return err;
		if (*ip_out[i] && kumo_cidr_check(*ip_out[i]) < 0)
			return fail(x, kumo_toml_get(t, ip_keys[i]), name,
				    "expected an IP address, got \"%s\"", *ip_out[i]);
	}
	if (s->ha_proxy_server && !s->ha_proxy_source_address)
		return fail(x, t, "egress_source.ha_proxy_source_address",
			    "required with ha_proxy_server%s", "");
	if (s->ha_proxy_server && s->socks5_proxy_server)
		return fail(x, t, "egress_source", "socks5_proxy_server and ha_proxy_server "
			    "exclude each other%s", "");
	if ((err = get_string(x, t, "socks5_proxy_username", "egress_source.socks5_proxy_username",
			      &s->socks5_proxy_username)) ||
	    (err = get_string(x, t, "socks5_proxy_password", "egress_source.socks5_proxy_password",
			      &s->socks5_proxy_password)))
		return err;
	if (s->socks5_proxy_username && !s->socks5_proxy_password)
		return fail(x, t, "egress_source.socks5_proxy_password",
			    "required with socks5_proxy_username%s", "");
	if ((err = get_string(x, t, "name", "egress_source.name", &s->name)) ||
	    (err = get_string(x, t, "source_address", "egress_source.source_address",
			      &s->source_address)) ||
	    (err = get_string(x, t, "ehlo_name", "egress_source.ehlo_name", &s->ehlo_name)))
		return err;
	if (!s->name)
		return fail(x, t, "egress_source.name", "missing%s", "");
	if (s->source_address && kumo_cidr_check(s->source_address) < 0)
		return fail(x, kumo_toml_get(t, "source_address"), "egress_source.source_address",
			    "expected an IP address, got \"%s\"", s->source_address);
	return 0;
}

static int one_pool(struct ctx *x, const struct kumo_toml_value *t, struct kumod_pool *p,
		    const struct kumod_config *c)
{
	static const char *const keys[] = {"name", "entries", NULL};
	int err;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "egress_pool", "expected [[egress_pool]] tables%s", "");
	if ((err = only_keys(x, t, "egress_pool.", keys)) ||
	    (err = get_string(x, t, "name", "egress_pool.name", &p->name)))
		return err;
	const struct kumo_toml_value *en = kumo_toml_get(t, "entries");
	if (!p->name || !en || kumo_toml_type(en) != KUMO_TOML_ARRAY || !kumo_toml_count(en) ||
	    kumo_toml_count(en) > 64)
		return fail(x, en ? en : t, "egress_pool.entries",
			    "expected name and entries = [{name = \"source\", weight = 1}, ...]%s",
			    "");
	for (size_t i = 0; i < kumo_toml_count(en); i++) {
		const struct kumo_toml_value *e = kumo_toml_at(en, i);
		const char *name = kumo_toml_string(kumo_toml_get(e, "name"), NULL);
		long long w = 1;
		if ((err = get_uint(x, e, "weight", "egress_pool.entries.weight", 1000000, &w)))
			return err;
		bool known = false;
		for (size_t k = 0; name && k < c->nsources; k++)
			known |= strcmp(c->sources[k].name, name) == 0;
		if (!known)
			return fail(x, e, "egress_pool.entries.name",
				    "not the name of an [[egress_source]]: \"%s\"", name ? name : "");
		p->entries[i] = (struct kumo_pool_entry){.source = name, .weight = (unsigned)w};
	}
	p->n = kumo_toml_count(en);
	return 0;
}

/* [egress] campaign_pools / tenant_pools / domain_pools: tables "name" = "pool". */
static int pool_rules(struct ctx *x, struct kumod_config *c, const struct kumo_toml_value *t,
		      const char *key, enum kumo_pool_match match)
{
	char full[48];
	snprintf(full, sizeof(full), "egress.%s", key);
	const struct kumo_toml_value *tp = kumo_toml_get(t, key);
	for (size_t i = 0; tp && i < kumo_toml_count(tp); i++) {
		const char *pool = kumo_toml_string(kumo_toml_at(tp, i), NULL);
		if (!pool)
			return fail(x, kumo_toml_at(tp, i), full, "expected \"name\" = \"pool\"%s", "");
		if (c->npool_rules == sizeof(c->pool_rules) / sizeof(c->pool_rules[0]))
			return fail(x, kumo_toml_at(tp, i), full, "more than 256 pool rules%s", "");
		c->pool_rules[c->npool_rules++] = (struct kumod_pool_rule){
			.match = match, .name = kumo_toml_key_at(tp, i), .pool = pool};
	}
	return 0;
}

static int egress_sections(struct ctx *x, const struct kumo_toml_value *root,
			   struct kumod_config *c)
{
	const struct kumo_toml_value *a = kumo_toml_get(root, "egress_source");
	int err;
	for (size_t i = 0; a && i < kumo_toml_count(a) && i < 256; i++) {
		if ((err = one_source(x, kumo_toml_at(a, i), &c->sources[i])))
			return err;
		c->nsources = i + 1;
	}
	a = kumo_toml_get(root, "egress_pool");
	for (size_t i = 0; a && i < kumo_toml_count(a) && i < 64; i++) {
		if ((err = one_pool(x, kumo_toml_at(a, i), &c->pools[i], c)))
			return err;
		c->npools = i + 1;
	}
	const struct kumo_toml_value *t = kumo_toml_get(root, "egress");
	static const char *const keys[] = {"default_pool", "tenant_pools", "campaign_pools",
					   "domain_pools", NULL};
	if (!t)
		return 0;
	if ((err = only_keys(x, t, "egress.", keys)))
		return err;
	const char *def = NULL;
	if ((err = get_string(x, t, "default_pool", "egress.default_pool", &def)))
		return err;
	if (def)
		c->pool_rules[c->npool_rules++] = (struct kumod_pool_rule){.pool = def};
	if ((err = pool_rules(x, c, t, "campaign_pools", KUMO_POOL_CAMPAIGN)) ||
	    (err = pool_rules(x, c, t, "tenant_pools", KUMO_POOL_TENANT)) ||
	    (err = pool_rules(x, c, t, "domain_pools", KUMO_POOL_DOMAIN)))
		return err;
	for (size_t i = 0; i < c->npool_rules; i++) {
		bool known = false;
		for (size_t k = 0; k < c->npools; k++)
			known |= strcmp(c->pools[k].name, c->pool_rules[i].pool) == 0;
		if (!known)
			return fail(x, t, "egress", "no [[egress_pool]] named \"%s\"",
				    c->pool_rules[i].pool);
	}
	return 0;
}

/* [tsa] url or urls: each a tsa-daemon, none twice. */
static int tsa_urls(struct ctx *x, const struct kumo_toml_value *t, struct kumod_config *c)
{
	const struct kumo_toml_value *url = kumo_toml_get(t, "url"), *urls = kumo_toml_get(t, "urls");
	int err;
	if (url && urls)
		return fail(x, urls, "tsa.urls", "url and urls exclude each other: list every "
			    "tsa-daemon in urls%s", "");
	if ((err = get_string(x, t, "url", "tsa.url", &c->tsa_urls[0])) ||
	    (err = get_string_array(x, t, "urls", "tsa.urls", c->tsa_urls, KUMOD_TSA_MAX_DAEMONS,
				    &c->ntsa_urls, NULL)))
		return err;
	if (urls && !c->ntsa_urls)
		return fail(x, urls, "tsa.urls", "empty: list at least one tsa-daemon%s", "");
	if (url)
		c->ntsa_urls = 1;
	size_t at;
	int rc = kumod_tsa_check_urls(c->tsa_urls, c->ntsa_urls, &at);
	const struct kumo_toml_value *v = url ? url : kumo_toml_at(urls, at);
	const char *key = url ? "tsa.url" : "tsa.urls";
	if (rc == -EINVAL)
		return fail(x, v, key, "expected \"http://ip:port\", got \"%s\"", c->tsa_urls[at]);
	if (rc == -EEXIST)
		return fail(x, v, key, "\"%s\" names a tsa-daemon listed before", c->tsa_urls[at]);
	return 0;
}

static int tsa_section(struct ctx *x, const struct kumo_toml_value *root, struct kumod_config *c)
{
	static const char *const keys[] = {"url", "urls", "poll_interval", "max_pending", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "tsa");
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "tsa", "expected a table%s", "");
	if ((err = only_keys(x, t, "tsa.", keys)) || (err = tsa_urls(x, t, c)) ||
	    (err = get_duration(x, t, "poll_interval", "tsa.poll_interval", &c->tsa_poll_ms)) ||
	    (err = get_size(x, t, "max_pending", "tsa.max_pending", &c->tsa_max_pending)))
		return err;
	if (c->tsa_max_pending && c->tsa_max_pending < 4096)
		return fail(x, kumo_toml_get(t, "max_pending"), "tsa.max_pending",
			    "at least 4096 bytes (a record of more than a quarter is never held)%s",
			    "");
	return 0;
}

static int redis_section(struct ctx *x, const struct kumo_toml_value *root,
			 struct kumo_engine_cfg *e)
{
	static const char *const keys[] = {"url", NULL};
	const struct kumo_toml_value *t = kumo_toml_get(root, "redis");
	int err;
	if (!t)
		return 0;
	if (kumo_toml_type(t) != KUMO_TOML_TABLE)
		return fail(x, t, "redis", "expected a table%s", "");
	if ((err = only_keys(x, t, "redis.", keys)) ||
	    (err = get_string(x, t, "url", "redis.url", &e->redis_url)))
		return err;
	if (e->redis_url && strncmp(e->redis_url, "redis://", 8) != 0 &&
	    strncmp(e->redis_url, "unix://", 7) != 0)
		return fail(x, kumo_toml_get(t, "url"), "redis.url",
			    "expected \"redis://ip:port\" or \"unix:///path\", got \"%s\"",
			    e->redis_url);
	return 0;
}

static int sections(struct ctx *x, const struct kumo_toml_value *root, struct kumod_config *c)
{
	static const char *const top[] = {"listener", "http", "spool", "log", "routing",
					  "engine", "headers", "delivery", "dns", "shaping",
					  "egress_source", "egress_pool", "egress", "tsa", "redis",
					  NULL};
	static const char *const path_key[] = {"path", NULL};
	static const char *const http_keys[] = {"listen", NULL};
	static const char *const header_keys[] = {"campaign", "tenant", NULL};
	int err;
	if ((err = only_keys(x, root, "", top)) || (err = listeners(x, root, c)) ||
	    (err = engine_section(x, root, &c->engine)) ||
	    (err = string_section(x, root, "spool", path_key,
				  (const char **[]){&c->engine.spool_path})) ||
	    (err = log_section(x, root, &c->engine)) || (err = shaping_section(x, root, c)) ||
	    (err = egress_sections(x, root, c)) || (err = tsa_section(x, root, c)) ||
	    (err = redis_section(x, root, &c->engine)) ||
	    (err = string_section(x, root, "http", http_keys, (const char **[]){&c->http_listen})) ||
	    (err = routing_section(x, root, c)) || (err = delivery_section(x, root, &c->engine)) ||
	    (err = dns_section(x, root, &c->engine)) ||
	    (err = string_section(x, root, "headers", header_keys,
				  (const char **[]){&c->engine.campaign_header,
						    &c->engine.tenant_header})))
		return err;
	if (c->http_listen && kumo_address_check(c->http_listen) < 0)
		return fail(x, kumo_toml_get(kumo_toml_get(root, "http"), "listen"), "http.listen",
			    "expected \"ip:port\", got \"%s\"", c->http_listen);
	return 0;
}

int kumod_config_parse(const char *text, size_t len, const char *name,
		       struct kumod_config *out, char *err, size_t errcap)
{
	struct kumo_toml_error te;
	struct ctx x = {.file = name, .err = err, .errcap = errcap};
	memset(out, 0, sizeof(*out));
	int rc = kumo_toml_parse(text, len, &out->doc, &te);
	if (rc < 0) {
		kumo_toml_format_error(&te, name, err, errcap);
		return rc;
	}
	out->engine.spool_path = "var/spool";
	rc = sections(&x, kumo_toml_root(out->doc), out);
	if (rc < 0) {
		kumod_config_free(out);
		return rc;
	}
	return 0;
}

int kumod_config_load(const char *path, struct kumod_config *out, char *err, size_t errcap)
{
	char *text;
	size_t len;
	int rc = kumo_read_file(path, &text, &len);
	if (rc < 0) {
		snprintf(err, errcap, "%s: %s", path, strerror(-rc));
		return rc;
	}
	rc = kumod_config_parse(text, len, path, out, err, errcap);
	free(text);
	return rc;
}

void kumod_config_free(struct kumod_config *c)
{
	kumo_toml_free(c->doc);
	c->doc = NULL;
}
