/* kumoproxy's configuration helpers: the users file ("user:password" lines) and its
 * constant-time check, and parsers for addresses, networks (CIDR) and durations. */
#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void kproxy_users_free(struct kproxy_users *u)
{
	for (size_t i = 0; i < u->n; i++) {
		memset(u->v[i].pass, 0, u->v[i].pass_len);
		free(u->v[i].name);
		free(u->v[i].pass);
	}
	free(u->v);
	u->v = NULL;
	u->n = 0;
}

static char *dup_n(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

int kproxy_users_load(const char *path, struct kproxy_users *u, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		int e = errno;
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	char *line = NULL;
	size_t cap = 0, lineno = 0, vcap = 0;
	ssize_t n;
	int rc = 0;
	u->v = NULL;
	u->n = 0;
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0 || line[0] == '#')
			continue;
		char *colon = memchr(line, ':', (size_t)n);
		size_t name_len = colon ? (size_t)(colon - line) : 0;
		size_t pass_len = colon ? (size_t)n - name_len - 1 : 0;
		if (!colon || name_len == 0 || name_len > 255 || pass_len > 255) {
			snprintf(err, errlen,
				 "%s:%zu: expected \"user:password\" (each 1-255 bytes)", path,
				 lineno);
			rc = -EINVAL;
			goto out;
		}
		if (u->n == vcap) {
			vcap = vcap ? vcap * 2 : 8;
			struct kproxy_user *v = realloc(u->v, vcap * sizeof(*v));
			if (!v) {
				rc = -ENOMEM;
				goto out_oom;
			}
			u->v = v;
		}
		struct kproxy_user *e = &u->v[u->n];
		e->name = dup_n(line, name_len);
		e->pass = dup_n(colon + 1, pass_len);
		e->name_len = name_len;
		e->pass_len = pass_len;
		if (!e->name || !e->pass) {
			free(e->name);
			free(e->pass);
			rc = -ENOMEM;
			goto out_oom;
		}
		u->n++;
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		rc = -EIO;
	} else if (u->n == 0) {
		snprintf(err, errlen, "%s: no users", path);
		rc = -EINVAL;
	}
	goto out;
out_oom:
	snprintf(err, errlen, "%s: out of memory", path);
out:
	if (line) {
		memset(line, 0, cap);
		free(line);
	}
	fclose(f);
	if (rc < 0)
		kproxy_users_free(u);
	return rc;
}

/* Equal lengths and bytes, in time that depends on the lengths only. */
static bool same_secret(const char *a, size_t alen, const char *b, size_t blen)
{
	unsigned char diff = alen != blen;
	size_t n = alen < blen ? alen : blen;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

bool kproxy_users_check(const struct kproxy_users *u, const char *name, size_t name_len,
			const char *pass, size_t pass_len)
{
	bool ok = false;
	for (size_t i = 0; i < u->n; i++) {
		const struct kproxy_user *e = &u->v[i];
		if (e->name_len == name_len && memcmp(e->name, name, name_len) == 0)
			ok |= same_secret(e->pass, e->pass_len, pass, pass_len);
	}
	return ok;
}

int kproxy_parse_cidr(const char *s, struct kproxy_cidr *c)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
	if (hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	memset(c, 0, sizeof(*c));
	unsigned max;
	if (inet_pton(AF_INET, host, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return -EINVAL;
	}
	c->prefix = max;
	if (slash) {
		char *endp;
		unsigned long p = strtoul(slash + 1, &endp, 10);
		if (!slash[1] || *endp || p > max)
			return -EINVAL;
		c->prefix = (unsigned)p;
	}
	return 0;
}

bool kproxy_cidr_match(const struct kproxy_cidr *c, const struct sockaddr *sa)
{
	const uint8_t *a;
	if (sa->sa_family != c->family)
		return false;
	if (sa->sa_family == AF_INET)
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	else
		a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
	unsigned full = c->prefix / 8, rest = c->prefix % 8;
	if (memcmp(a, c->addr, full) != 0)
		return false;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));
		if ((a[full] & mask) != (c->addr[full] & mask))
			return false;
	}
	return true;
}

int kproxy_parse_duration(const char *s, uint32_t *ms)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || errno || v < 0)
		return -EINVAL;
	double mult;
	if (!*end || !strcmp(end, "s"))
		mult = 1000;
	else if (!strcmp(end, "ms"))
		mult = 1;
	else if (!strcmp(end, "m"))
		mult = 60000;
	else if (!strcmp(end, "h"))
		mult = 3600000;
	else
		return -EINVAL;
	v *= mult;
	if (v > 4294967295.0)
		return -EINVAL;
	*ms = (uint32_t)v;
	return 0;
}

void kproxy_format_addr(const struct sockaddr *sa, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(a->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(a->sin6_port));
	} else {
		snprintf(buf, size, "?");
	}
}
