/* The client side of leaving through a proxy, free of I/O: a SOCKS5 handshake (RFC 1928,
 * RFC 1929 authentication, and KumoMTA's BIND-then-CONNECT choice of source address), and
 * the HAProxy PROXY protocol v2 header. */
#ifndef KUMO_PROTO_EGRESS_PROXY_H
#define KUMO_PROTO_EGRESS_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum kumo_socks5c_state {
	KUMO_SOCKS5C_GREETING = 0, /* waiting for the method choice */
	KUMO_SOCKS5C_AUTH,         /* waiting for the username/password verdict */
	KUMO_SOCKS5C_BIND,         /* waiting for the BIND reply (source selection) */
	KUMO_SOCKS5C_CONNECT,      /* waiting for the CONNECT reply */
	KUMO_SOCKS5C_DONE,         /* connected: what follows is the target's data */
	KUMO_SOCKS5C_FAILED,
};

/* One handshake; the caller owns the struct (no allocation). */
struct kumo_socks5c {
	enum kumo_socks5c_state state;
	char user[256], pass[256];
	struct sockaddr_storage source; /* ss_family 0: no source selection */
	struct sockaddr_storage target;
	uint8_t out[600];
	size_t outlen;
	uint8_t in[300];
	size_t inlen;
	int reply;                      /* the proxy's reply code on failure (RFC 1928 6) */
	const char *error;              /* what failed, for logs */
	struct sockaddr_storage local;  /* the address the proxy connected from */
};

/* Starts a handshake: user may be NULL (no authentication offered). Queues the greeting.
 * Returns 0 or -EINVAL (user or password over 255 bytes, unsupported address family). */
int kumo_socks5c_init(struct kumo_socks5c *c, const char *user, const char *pass,
		      const struct sockaddr *source, const struct sockaddr *target);

/* Bytes to send now (a view into c, valid until the next push); mark them sent. */
const uint8_t *kumo_socks5c_output(const struct kumo_socks5c *c, size_t *len);
void kumo_socks5c_sent(struct kumo_socks5c *c, size_t n);

/* Feeds bytes from the proxy. *used says how many belonged to the handshake (the rest is
 * the target's data). Returns 1 when connected, 0 when more input is needed, -1 on
 * failure (c->error, c->reply). */
int kumo_socks5c_push(struct kumo_socks5c *c, const uint8_t *p, size_t n, size_t *used);

/* Writes a PROXY v2 header (PROXY command, TCP over IPv4 or IPv6) saying the connection
 * comes from src and goes to dst. Returns its length, or 0 if cap is too small or the
 * families differ or are unsupported. */
size_t kumo_proxy_v2_header(const struct sockaddr *src, const struct sockaddr *dst,
			    uint8_t *buf, size_t cap);

#endif
