/* SOCKS5 client handshake and PROXY v2 header; see egress_proxy.h. The handshake is a
 * small state machine over a fixed input buffer: every reply is parsed only once it is
 * complete, so bytes may arrive split anywhere. */
#include "proto/egress_proxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

static size_t put_addr(uint8_t *p, const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		p[0] = 1;
		memcpy(p + 1, &in->sin_addr, 4);
		memcpy(p + 5, &in->sin_port, 2);
		return 7;
	}
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
	p[0] = 4;
	memcpy(p + 1, &in6->sin6_addr, 16);
	memcpy(p + 17, &in6->sin6_port, 2);
	return 19;
}

static void queue(struct kumo_socks5c *c, const uint8_t *p, size_t n)
{
	memcpy(c->out + c->outlen, p, n);
	c->outlen += n;
}

static void request(struct kumo_socks5c *c, uint8_t cmd, const struct sockaddr_storage *a)
{
	uint8_t b[32] = {5, cmd, 0};
	size_t n = 3 + put_addr(b + 3, a);
	queue(c, b, n);
}

static int copy_sa(struct sockaddr_storage *to, const struct sockaddr *from)
{
	memset(to, 0, sizeof(*to));
	if (!from)
		return 0;
	if (from->sa_family == AF_INET)
		memcpy(to, from, sizeof(struct sockaddr_in));
	else if (from->sa_family == AF_INET6)
		memcpy(to, from, sizeof(struct sockaddr_in6));
	else
		return -EINVAL;
	return 0;
}

int kumo_socks5c_init(struct kumo_socks5c *c, const char *user, const char *pass,
		      const struct sockaddr *source, const struct sockaddr *target)
{
	memset(c, 0, sizeof(*c));
	if ((user && (strlen(user) > 255 || !pass || strlen(pass) > 255)) || !target ||
	    copy_sa(&c->source, source) < 0 || copy_sa(&c->target, target) < 0)
		return -EINVAL;
	if (user) {
		strcpy(c->user, user);
		strcpy(c->pass, pass);
		queue(c, (const uint8_t[]){5, 2, 0, 2}, 4);
	} else {
		queue(c, (const uint8_t[]){5, 1, 0}, 3);
	}
	return 0;
}

const uint8_t *kumo_socks5c_output(const struct kumo_socks5c *c, size_t *len)
{
	*len = c->outlen;
	return c->out;
}

void kumo_socks5c_sent(struct kumo_socks5c *c, size_t n)
{
	if (n >= c->outlen) {
		c->outlen = 0;
		return;
	}
	memmove(c->out, c->out + n, c->outlen - n);
	c->outlen -= n;
}

static int fail(struct kumo_socks5c *c, int reply, const char *why)
{
	c->state = KUMO_SOCKS5C_FAILED;
	c->reply = reply;
	c->error = why;
	return -1;
}

/* Length of a complete reply {VER REP RSV ATYP ADDR PORT} at the start of in, or 0. */
static size_t reply_len(const struct kumo_socks5c *c)
{
	if (c->inlen < 5)
		return 0;
	size_t need = c->in[3] == 1 ? 10 : c->in[3] == 4 ? 22 : 7 + (size_t)c->in[4];
	return c->inlen >= need ? need : 0;
}

static void read_local(struct kumo_socks5c *c)
{
	memset(&c->local, 0, sizeof(c->local));
	if (c->in[3] == 1) {
		struct sockaddr_in *in = (struct sockaddr_in *)&c->local;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, c->in + 4, 4);
		memcpy(&in->sin_port, c->in + 8, 2);
	} else if (c->in[3] == 4) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&c->local;
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, c->in + 4, 16);
		memcpy(&in6->sin6_port, c->in + 20, 2);
	}
}

static void after_auth(struct kumo_socks5c *c)
{
	if (c->source.ss_family) {
		request(c, 2, &c->source); /* BIND <source>:0 picks the source address */
		c->state = KUMO_SOCKS5C_BIND;
	} else {
		request(c, 1, &c->target);
		c->state = KUMO_SOCKS5C_CONNECT;
	}
}

/* Consumes one complete message from in; returns its length, 0 for "need more", or -1. */
static int step(struct kumo_socks5c *c, size_t *took)
{
	size_t n;
	switch (c->state) {
	case KUMO_SOCKS5C_GREETING:
		if (c->inlen < 2)
			return 0;
		if (c->in[0] != 5 || (c->in[1] != 0 && c->in[1] != 2) || (c->in[1] == 2 && !*c->user))
			return fail(c, c->in[1], "proxy refused every authentication method");
		*took = 2;
		if (c->in[1] == 2) {
			uint8_t b[520] = {1, (uint8_t)strlen(c->user)};
			size_t ul = strlen(c->user), pl = strlen(c->pass);
			memcpy(b + 2, c->user, ul);
			b[2 + ul] = (uint8_t)pl;
			memcpy(b + 3 + ul, c->pass, pl);
			queue(c, b, 3 + ul + pl);
			c->state = KUMO_SOCKS5C_AUTH;
		} else {
			after_auth(c);
		}
		return 1;
	case KUMO_SOCKS5C_AUTH:
		if (c->inlen < 2)
			return 0;
		if (c->in[1] != 0)
			return fail(c, c->in[1], "proxy refused the username or password");
		*took = 2;
		after_auth(c);
		return 1;
	case KUMO_SOCKS5C_BIND:
	case KUMO_SOCKS5C_CONNECT:
		if (!(n = reply_len(c)))
			return c->inlen >= 4 && c->in[3] != 1 && c->in[3] != 3 && c->in[3] != 4
				       ? fail(c, 1, "malformed proxy reply")
				       : 0;
		if (c->in[0] != 5 || c->in[1] != 0)
			return fail(c, c->in[1], c->state == KUMO_SOCKS5C_BIND
							 ? "proxy refused the source address"
							 : "proxy could not connect to the target");
		*took = n;
		if (c->state == KUMO_SOCKS5C_BIND) {
			request(c, 1, &c->target);
			c->state = KUMO_SOCKS5C_CONNECT;
		} else {
			read_local(c);
			c->state = KUMO_SOCKS5C_DONE;
		}
		return 1;
	default:
		return 0;
	}
}

int kumo_socks5c_push(struct kumo_socks5c *c, const uint8_t *p, size_t n, size_t *used)
{
	*used = 0;
	while (c->state != KUMO_SOCKS5C_DONE && c->state != KUMO_SOCKS5C_FAILED) {
		/* take one byte at a time until a message is complete: never eat target data */
		size_t took = 0;
		int r = step(c, &took);
		if (r < 0)
			return -1;
		if (r > 0) {
			memmove(c->in, c->in + took, c->inlen - took);
			c->inlen -= took;
			continue;
		}
		if (*used == n)
			return 0;
		if (c->inlen == sizeof(c->in))
			return fail(c, 1, "proxy reply too long");
		c->in[c->inlen++] = p[(*used)++];
	}
	return c->state == KUMO_SOCKS5C_DONE ? 1 : -1;
}

size_t kumo_proxy_v2_header(const struct sockaddr *src, const struct sockaddr *dst,
			    uint8_t *buf, size_t cap)
{
	static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
	if (src->sa_family != dst->sa_family)
		return 0;
	bool v4 = src->sa_family == AF_INET;
	if (!v4 && src->sa_family != AF_INET6)
		return 0;
	size_t alen = v4 ? 12 : 36, total = 16 + alen;
	if (cap < total)
		return 0;
	memcpy(buf, sig, 12);
	buf[12] = 0x21;                /* version 2, PROXY */
	buf[13] = v4 ? 0x11 : 0x21;    /* TCP over IPv4 / IPv6 */
	buf[14] = (uint8_t)(alen >> 8);
	buf[15] = (uint8_t)alen;
	uint8_t *p = buf + 16;
	if (v4) {
		const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
		memcpy(p, &s->sin_addr, 4);
		memcpy(p + 4, &d->sin_addr, 4);
		memcpy(p + 8, &s->sin_port, 2);
		memcpy(p + 10, &d->sin_port, 2);
	} else {
		const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
		memcpy(p, &s->sin6_addr, 16);
		memcpy(p + 16, &d->sin6_addr, 16);
		memcpy(p + 32, &s->sin6_port, 2);
		memcpy(p + 34, &d->sin6_port, 2);
	}
	return total;
}
