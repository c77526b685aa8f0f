/* tsa-daemon: reads the TOML configuration file strictly (unknown keys and wrong types are
 * errors naming file, line and key); see config.h and docs/reference/tsa-config.md. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/shaping.h"
#include "util/toml.h"
#include "util/net.h"
#include "util/file.h"

struct ctx {
	const char *name;
	char *err;
	size_t cap;
};

static int fail(struct ctx *x, const struct kumo_toml_value *v, const char *key, const char *fmt,
		...)
{
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	int line = kumo_toml_line(v);
	if (x->cap) {
		if (line)
			snprintf(x->err, x->cap, "%s:%d: key '%s': %s", x->name, line, key, msg);
		else
			snprintf(x->err, x->cap, "%s: key '%s': %s", x->name, key, msg);
	}
	return -EINVAL;
}

static int get_string(struct ctx *x, const struct kumo_toml_value *root, const char *key,
		      char **out)
{
	const struct kumo_toml_value *v = kumo_toml_get(root, key);
	size_t len;
	if (!v)
		return 0;
	const char *s = kumo_toml_type(v) == KUMO_TOML_STRING ? kumo_toml_string(v, &len) : NULL;
	if (!s)
		return fail(x, v, key, "expected a string, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	if (!*s || strlen(s) != len)
		return fail(x, v, key, "expected a non-empty string without NUL bytes");
	free(*out);
	if (!(*out = strdup(s)))
		return -ENOMEM;
	return 0;
}

static int get_count(struct ctx *x, const struct kumo_toml_value *root, const char *key,
		     uint64_t min, uint64_t max, uint64_t *out)
{
	const struct kumo_toml_value *v = kumo_toml_get(root, key);
	int64_t i;
	if (!v)
		return 0;
	if (kumo_toml_int(v, &i) < 0)
		return fail(x, v, key, "expected an integer, got %s",
			    kumo_toml_type_name(kumo_toml_type(v)));
	if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
		return fail(x, v, key, "%lld is out of range %llu..%llu", (long long)i,
			    (unsigned long long)min, (unsigned long long)max);
	*out = (uint64_t)i;
	return 0;
}

static int get_duration(struct ctx *x, const struct kumo_toml_value *root, const char *key,
			uint64_t *out)
{
	const struct kumo_toml_value *v = kumo_toml_get(root, key);
	int64_t i;
	if (!v)
		return 0;
	if (kumo_toml_int(v, &i) == 0) {
		if (i < 1 || i > 86400)
			return fail(x, v, key, "expected 1 to 86400 seconds");
		*out = (uint64_t)i * 1000;
		return 0;
	}
	const char *s = kumo_toml_string(v, NULL);
	if (kumo_toml_type(v) != KUMO_TOML_STRING || kumo_shaping_parse_duration(s, out) < 0 ||
	    *out < 1000)
		return fail(x, v, key, "expected a duration of at least a second, such as \"60s\"");
	return 0;
}

int tsa_config_parse(const char *text, size_t len, const char *name, struct tsa_config *c,
		     char *err, size_t errcap)
{
	static const char *const keys[] = {
	    "listen",	    "shaping_files",	     "state", "max_connections", "max_body_size",
	    "idle_timeout", "max_threshold_windows", NULL};
	struct ctx x = {.name = name ? name : "<config>", .err = err, .cap = errcap};
	struct kumo_toml_doc *doc;
	struct kumo_toml_error terr;
	uint64_t n;
	int rc;

	memset(c, 0, sizeof(*c));
	c->max_connections = TSA_DEFAULT_MAX_CONNECTIONS;
	c->max_body = TSA_DEFAULT_MAX_BODY;
	c->idle_timeout_ms = TSA_DEFAULT_IDLE_TIMEOUT_MS;
	c->max_windows = TSA_DEFAULT_MAX_WINDOWS;
	if ((rc = kumo_toml_parse(text, len, &doc, &terr)) < 0) {
		if (errcap)
			kumo_toml_format_error(&terr, x.name, err, errcap);
		return rc;
	}
	const struct kumo_toml_value *root = kumo_toml_root(doc);
	for (size_t i = 0; i < kumo_toml_count(root); i++) {
		const char *k = kumo_toml_key_at(root, i);
		size_t j = 0;
		while (keys[j] && strcmp(keys[j], k) != 0)
			j++;
		if (!keys[j]) {
			rc = fail(&x, kumo_toml_at(root, i), k,
				  "unknown key: expected listen, shaping_files, state, "
				  "max_connections, max_body_size, idle_timeout or "
				  "max_threshold_windows");
			goto out;
		}
	}
	if ((rc = get_string(&x, root, "listen", &c->listen)) ||
	    (rc = get_string(&x, root, "state", &c->state)))
		goto out;
	if (!c->listen && !(c->listen = strdup(TSA_DEFAULT_LISTEN))) {
		rc = -ENOMEM;
		goto out;
	}
	if (kumo_parse_address(c->listen, &c->addr, &c->addrlen) < 0) {
		rc = fail(&x, kumo_toml_get(root, "listen"), "listen",
			  "expected \"ip:port\" or \"[ipv6]:port\", got \"%s\"", c->listen);
		goto out;
	}
	if (!c->state) {
		rc = fail(&x, root, "state",
			  "missing: the SQLite file that keeps actions, such as "
			  "state = \"/var/lib/kumo/tsa.sqlite\"");
		goto out;
	}
	const struct kumo_toml_value *files = kumo_toml_get(root, "shaping_files");
	if (!files || kumo_toml_type(files) != KUMO_TOML_ARRAY || kumo_toml_count(files) == 0) {
		rc = fail(&x, files ? files : root, "shaping_files",
			  files ? "expected a non-empty array of file names"
				: "missing: the shaping files whose automation rules to evaluate");
		goto out;
	}
	if (kumo_toml_count(files) > TSA_MAX_SHAPING_FILES) {
		rc = fail(&x, files, "shaping_files", "at most %d files", TSA_MAX_SHAPING_FILES);
		goto out;
	}
	for (size_t i = 0; i < kumo_toml_count(files); i++) {
		const struct kumo_toml_value *f = kumo_toml_at(files, i);
		size_t fl;
		const char *s = kumo_toml_string(f, &fl);
		if (kumo_toml_type(f) != KUMO_TOML_STRING || !*s || strlen(s) != fl) {
			rc = fail(&x, f, "shaping_files", "expected non-empty strings");
			goto out;
		}
		if (!(c->shaping_files[c->nshaping_files++] = strdup(s))) {
			rc = -ENOMEM;
			goto out;
		}
	}
	n = c->max_connections;
	if ((rc = get_count(&x, root, "max_connections", 1, 65536, &n)))
		goto out;
	c->max_connections = (unsigned)n;
	if ((rc = get_count(&x, root, "max_body_size", 1024, (uint64_t)1 << 30, &c->max_body)) ||
	    (rc = get_duration(&x, root, "idle_timeout", &c->idle_timeout_ms)))
		goto out;
	n = c->max_windows;
	if ((rc = get_count(&x, root, "max_threshold_windows", 1, (uint64_t)1 << 26, &n)))
		goto out;
	c->max_windows = (size_t)n;
out:
	kumo_toml_free(doc);
	if (rc < 0) {
		if (rc == -ENOMEM && errcap)
			snprintf(err, errcap, "%s: out of memory", x.name);
		tsa_config_free(c);
	}
	return rc;
}

int tsa_config_load(const char *path, struct tsa_config *c, char *err, size_t errcap)
{
	char *text;
	size_t len;
	memset(c, 0, sizeof(*c));
	int rc = kumo_read_file(path, &text, &len);
	if (rc < 0) {
		if (errcap)
			snprintf(err, errcap, "%s: %s", path, strerror(-rc));
		return rc;
	}
	rc = tsa_config_parse(text, len, path, c, err, errcap);
	free(text);
	return rc;
}

void tsa_config_free(struct tsa_config *c)
{
	free(c->listen);
	free(c->state);
	for (size_t i = 0; i < c->nshaping_files; i++)
		free(c->shaping_files[i]);
	memset(c, 0, sizeof(*c));
}
