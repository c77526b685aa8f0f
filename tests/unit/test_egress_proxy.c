/* Unit tests for the egress proxy client (proto/egress_proxy): the SOCKS5 handshake with
 * authentication and BIND-then-CONNECT, fed whole and split at every byte, its failures,
 * and the PROXY v2 header's exact bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>

#include "proto/egress_proxy.h"

static struct sockaddr_in v4(const char *ip, uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

/* The proxy's side of a full handshake, then two bytes of the target's greeting. */
static const uint8_t proxy_says[] = {
	5, 2,                               /* choose username/password */
	1, 0,                               /* auth ok */
	5, 0, 0, 1, 127, 0, 0, 3, 0, 0,     /* BIND ok */
	5, 0, 0, 1, 127, 0, 0, 3, 0x9c, 0x40, /* CONNECT ok from 127.0.0.3:40000 */
	'2', '2'};

static void run_split(size_t chunk)
{
	struct sockaddr_in src = v4("127.0.0.3", 0), dst = v4("127.0.0.9", 25);
	struct kumo_socks5c c;
	assert_int_equal(kumo_socks5c_init(&c, "user", "pw", (struct sockaddr *)&src,
					   (struct sockaddr *)&dst), 0);
	uint8_t sent[256];
	size_t nsent = 0, off = 0, len;
	int r = 0;
	while (off < sizeof(proxy_says) && r == 0) {
		const uint8_t *o = kumo_socks5c_output(&c, &len);
		memcpy(sent + nsent, o, len);
		nsent += len;
		kumo_socks5c_sent(&c, len);
		size_t n = sizeof(proxy_says) - off < chunk ? sizeof(proxy_says) - off : chunk, used;
		r = kumo_socks5c_push(&c, proxy_says + off, n, &used);
		off += used;
	}
	const uint8_t *o = kumo_socks5c_output(&c, &len);
	memcpy(sent + nsent, o, len);
	nsent += len;
	assert_int_equal(r, 1);
	/* the target's bytes were not eaten */
	assert_int_equal(sizeof(proxy_says) - off, 2);
	static const uint8_t expect[] = {5, 2, 0, 2,                       /* methods */
					 1, 4, 'u', 's', 'e', 'r', 2, 'p', 'w', /* auth */
					 5, 2, 0, 1, 127, 0, 0, 3, 0, 0,    /* BIND */
					 5, 1, 0, 1, 127, 0, 0, 9, 0, 25};  /* CONNECT */
	assert_int_equal(nsent, sizeof(expect));
	assert_memory_equal(sent, expect, sizeof(expect));
	const struct sockaddr_in *local = (const struct sockaddr_in *)&c.local;
	assert_int_equal(local->sin_family, AF_INET);
	assert_int_equal(ntohs(local->sin_port), 40000);
	assert_int_equal(ntohl(local->sin_addr.s_addr), 0x7f000003);
}

static void test_handshake_any_split(void **state)
{
	for (size_t chunk = 1; chunk <= sizeof(proxy_says); chunk++)
		run_split(chunk);
}

static int feed(struct kumo_socks5c *c, const uint8_t *p, size_t n)
{
	size_t used;
	return kumo_socks5c_push(c, p, n, &used);
}

static void test_failures(void **state)
{
	struct sockaddr_in dst = v4("127.0.0.9", 25);
	struct kumo_socks5c c;
	/* no acceptable method */
	assert_int_equal(kumo_socks5c_init(&c, NULL, NULL, NULL, (struct sockaddr *)&dst), 0);
	assert_int_equal(feed(&c, (const uint8_t[]){5, 0xff}, 2), -1);
	assert_int_equal(c.reply, 0xff);
	/* username/password asked for but none configured */
	kumo_socks5c_init(&c, NULL, NULL, NULL, (struct sockaddr *)&dst);
	assert_int_equal(feed(&c, (const uint8_t[]){5, 2}, 2), -1);
	/* authentication refused */
	kumo_socks5c_init(&c, "u", "p", NULL, (struct sockaddr *)&dst);
	assert_int_equal(feed(&c, (const uint8_t[]){5, 2, 1, 1}, 4), -1);
	/* connection refused by the target: reply 5 */
	kumo_socks5c_init(&c, NULL, NULL, NULL, (struct sockaddr *)&dst);
	assert_int_equal(feed(&c, (const uint8_t[]){5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, 12), -1);
	assert_int_equal(c.reply, 5);
	assert_non_null(c.error);
	/* a malformed address type */
	kumo_socks5c_init(&c, NULL, NULL, NULL, (struct sockaddr *)&dst);
	assert_int_equal(feed(&c, (const uint8_t[]){5, 0, 5, 0, 0, 9}, 6), -1);
	/* too long a user name */
	char big[300];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	assert_int_equal(kumo_socks5c_init(&c, big, "p", NULL, (struct sockaddr *)&dst), -EINVAL);
}

static void test_proxy_v2_header(void **state)
{
	struct sockaddr_in src = v4("127.0.0.2", 0), dst = v4("10.1.2.3", 25);
	uint8_t buf[64];
	size_t n = kumo_proxy_v2_header((struct sockaddr *)&src, (struct sockaddr *)&dst, buf,
					sizeof(buf));
	static const uint8_t expect[] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
					 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c,
					 127, 0, 0, 2, 10, 1, 2, 3, 0, 0, 0, 25};
	assert_int_equal(n, sizeof(expect));
	assert_memory_equal(buf, expect, sizeof(expect));
	assert_int_equal(kumo_proxy_v2_header((struct sockaddr *)&src, (struct sockaddr *)&dst, buf,
					      10), 0);
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6}, d6 = {.sin6_family = AF_INET6};
	assert_int_equal(kumo_proxy_v2_header((struct sockaddr *)&s6, (struct sockaddr *)&d6, buf,
					      sizeof(buf)), 52);
	assert_int_equal(buf[13], 0x21);
	assert_int_equal(kumo_proxy_v2_header((struct sockaddr *)&src, (struct sockaddr *)&d6, buf,
					      sizeof(buf)), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_any_split),
		cmocka_unit_test(test_failures),
		cmocka_unit_test(test_proxy_v2_header),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
