/* Built-in reception policy and the transaction handle given to the embedder's policy
 * callbacks: CIDR matching for relay_hosts, accessors and setters of struct kumo_txn. */
#include "engine/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int kumo_cidr_parse(const char *s, struct kumo_cidr *out)
{
	char host[64];
	const char *slash = strchr(s, '/');
	size_t hl = slash ? (size_t)(slash - s) : strlen(s);
	if (hl == 0 || hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = 0;
	memset(out, 0, sizeof(*out));
	unsigned max;
	if (inet_pton(AF_INET, host, out->addr) == 1)
		out->family = AF_INET, max = 32;
	else if (inet_pton(AF_INET6, host, out->addr) == 1)
		out->family = AF_INET6, max = 128;
	else
		return -EINVAL;
	out->bits = max;
	if (slash) {
		char *end;
		long b = strtol(slash + 1, &end, 10);
		if (end == slash + 1 || *end || b < 0 || b > (long)max)
			return -EINVAL;
		out->bits = (unsigned)b;
	}
	return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	if (memcmp(a, b, full) != 0)
		return false;
	if (!rest)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

bool kumo_cidr_match(const struct kumo_cidr *c, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET && c->family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return prefix_equal((const uint8_t *)&in->sin_addr, c->addr, c->bits);
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = (const uint8_t *)&in6->sin6_addr;
		if (c->family == AF_INET6)
			return prefix_equal(a, c->addr, c->bits);
		/* IPv4-mapped IPv6 peers match IPv4 ranges */
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		return memcmp(a, mapped, 12) == 0 && prefix_equal(a + 12, c->addr, c->bits);
	}
	return false;
}

void kumo_txn_clear(struct kumo_txn *t)
{
	free(t->queue);
	free(t->tenant);
	free(t->campaign);
	for (size_t i = 0; i < t->nmeta; i++) {
		free(t->meta[i].key);
		free(t->meta[i].value);
	}
	free(t->meta);
	struct kumo_conn *c = t->conn;
	memset(t, 0, sizeof(*t));
	t->conn = c;
}

const char *kumo_txn_peer_address(const struct kumo_txn *txn)
{
	return txn->conn ? txn->conn->peer : "";
}

const char *kumo_txn_helo(const struct kumo_txn *txn)
{
	return txn->conn ? txn->conn->helo : "";
}

const char *kumo_txn_sender(const struct kumo_txn *txn)
{
	return txn->smtp ? txn->smtp->sender : NULL;
}

size_t kumo_txn_rcpt_count(const struct kumo_txn *txn)
{
	return txn->smtp ? txn->smtp->nrcpt : 0;
}

const char *kumo_txn_rcpt(const struct kumo_txn *txn, size_t i)
{
	return txn->smtp && i < txn->smtp->nrcpt ? txn->smtp->rcpts[i].addr : NULL;
}

const uint8_t *kumo_txn_data(const struct kumo_txn *txn, size_t *len)
{
	*len = txn->data_len;
	return txn->data;
}

static int set_string(char **slot, const char *v)
{
	char *copy = v ? strdup(v) : NULL;
	if (v && !copy)
		return -ENOMEM;
	free(*slot);
	*slot = copy;
	return 0;
}

int kumo_txn_set_queue(struct kumo_txn *txn, const char *queue)
{
	return set_string(&txn->queue, queue);
}

int kumo_txn_set_tenant(struct kumo_txn *txn, const char *tenant)
{
	return set_string(&txn->tenant, tenant);
}

int kumo_txn_set_campaign(struct kumo_txn *txn, const char *campaign)
{
	return set_string(&txn->campaign, campaign);
}

int kumo_txn_set_meta(struct kumo_txn *txn, const char *key, const char *value)
{
	if (!key || !value)
		return -EINVAL;
	for (size_t i = 0; i < txn->nmeta; i++)
		if (strcmp(txn->meta[i].key, key) == 0)
			return set_string(&txn->meta[i].value, value);
	if (txn->nmeta == txn->capmeta) {
		size_t cap = txn->capmeta ? txn->capmeta * 2 : 4;
		struct kumo_env_meta *m = realloc(txn->meta, cap * sizeof(*m));
		if (!m)
			return -ENOMEM;
		txn->meta = m;
		txn->capmeta = cap;
	}
	struct kumo_env_meta *m = &txn->meta[txn->nmeta];
	m->key = strdup(key);
	m->value = strdup(value);
	if (!m->key || !m->value) {
		free(m->key);
		free(m->value);
		return -ENOMEM;
	}
	txn->nmeta++;
	return 0;
}
