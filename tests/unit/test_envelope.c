/* Unit tests for engine/envelope: round trip with every field, clean failure at every
 * truncation point and on damaged input, buffer sizing, and queue names. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/envelope.h"

static struct kumo_env_rcpt full_rcpts[] = {
    {.addr = "alice@Example.COM",
     .notify = 6,
     .orcpt = "rfc822;alice@example.com",
     .state = KUMO_RCPT_PENDING},
    {.addr = "bob@example.org", .notify = 0, .orcpt = NULL, .state = KUMO_RCPT_DONE},
    {.addr = "", .notify = 0xffffffffu, .orcpt = "", .state = 7},
};
static struct kumo_env_meta full_meta[] = {
    {.key = "x-campaign-id", .value = "1234"},
    {.key = "empty", .value = ""},
    {.key = "utf8", .value = "h\xc3\xa9llo"},
};

static void full_env(struct kumo_envelope *e)
{
	memset(e, 0, sizeof(*e));
	for (int i = 0; i < 16; i++)
		e->id.b[i] = (uint8_t)(0xa0 + i);
	e->sender = "bounce+xyz@sender.example";
	e->envid = "ENV+2B1";
	e->ret = 2;
	e->body = 2;
	e->smtputf8 = true;
	e->tenant = "tenant1";
	e->campaign = "spring";
	e->queue = "custom-queue";
	e->created_ms = 1700000000123ull;
	e->due_ms = UINT64_MAX;
	e->attempts = 4000000000u;
	e->nrcpt = 3;
	e->rcpts = full_rcpts;
	e->nmeta = 3;
	e->meta = full_meta;
}

static void assert_str_eq_or_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_env_equal(const struct kumo_envelope *a, const struct kumo_envelope *b)
{
	assert_memory_equal(a->id.b, b->id.b, 16);
	assert_string_equal(a->sender, b->sender);
	assert_str_eq_or_null(a->envid, b->envid);
	assert_int_equal(a->ret, b->ret);
	assert_int_equal(a->body, b->body);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_str_eq_or_null(a->tenant, b->tenant);
	assert_str_eq_or_null(a->campaign, b->campaign);
	assert_str_eq_or_null(a->queue, b->queue);
	assert_true(a->created_ms == b->created_ms);
	assert_true(a->due_ms == b->due_ms);
	assert_int_equal(a->attempts, b->attempts);
	assert_int_equal(a->nrcpt, b->nrcpt);
	for (size_t i = 0; i < a->nrcpt; i++) {
		assert_string_equal(a->rcpts[i].addr, b->rcpts[i].addr);
		assert_int_equal(a->rcpts[i].notify, b->rcpts[i].notify);
		assert_str_eq_or_null(a->rcpts[i].orcpt, b->rcpts[i].orcpt);
		assert_int_equal(a->rcpts[i].state, b->rcpts[i].state);
	}
	assert_int_equal(a->nmeta, b->nmeta);
	for (size_t i = 0; i < a->nmeta; i++) {
		assert_string_equal(a->meta[i].key, b->meta[i].key);
		assert_string_equal(a->meta[i].value, b->meta[i].value);
	}
}

static uint8_t *encode_alloc(const struct kumo_envelope *e, size_t *len)
{
	size_t n = kumo_envelope_encode(e, NULL, 0);
	uint8_t *buf = malloc(n);
	assert_non_null(buf);
	assert_int_equal(kumo_envelope_encode(e, buf, n), n);
	*len = n;
	return buf;
}

static void test_roundtrip_full(void **state)
{
	struct kumo_envelope e, d;
	size_t n;

	full_env(&e);
	uint8_t *buf = encode_alloc(&e, &n);
	assert_int_equal(kumo_envelope_decode(buf, n, &d), 0);
	assert_non_null(d.block_);
	assert_env_equal(&e, &d);
	kumo_envelope_release(&d);
	assert_null(d.block_);
	assert_null(d.sender);
	free(buf);
}

static void test_roundtrip_minimal(void **state)
{
	struct kumo_envelope e = {0}, d;
	size_t n;

	e.sender = "";
	uint8_t *buf = encode_alloc(&e, &n);
	assert_true(n < 32);
	assert_int_equal(kumo_envelope_decode(buf, n, &d), 0);
	assert_string_equal(d.sender, "");
	assert_null(d.envid);
	assert_null(d.tenant);
	assert_null(d.campaign);
	assert_null(d.queue);
	assert_int_equal(d.nrcpt, 0);
	assert_null(d.rcpts);
	assert_int_equal(d.nmeta, 0);
	assert_null(d.meta);
	assert_false(d.smtputf8);
	kumo_envelope_release(&d);
	free(buf);
}

/* Strings of every size class of the varint length, and many recipients. */
static void test_roundtrip_large(void **state)
{
	enum { NR = 1000 };
	struct kumo_envelope e = {0}, d;
	struct kumo_env_rcpt *r = calloc(NR, sizeof(*r));
	char *big = malloc(70000);
	size_t n;

	assert_non_null(r);
	assert_non_null(big);
	memset(big, 'x', 69999);
	big[69999] = 0;
	e.sender = big;
	e.tenant = big + 69999 - 127;
	e.campaign = big + 69999 - 128;
	e.nrcpt = NR;
	e.rcpts = r;
	char(*addrs)[32] = malloc(NR * 32);
	assert_non_null(addrs);
	for (int i = 0; i < NR; i++) {
		snprintf(addrs[i], 32, "user%d@d%d.example", i, i % 7);
		r[i].addr = addrs[i];
		r[i].notify = (uint32_t)i;
		r[i].state = (uint8_t)(i & 1);
	}
	uint8_t *buf = encode_alloc(&e, &n);
	assert_int_equal(kumo_envelope_decode(buf, n, &d), 0);
	assert_env_equal(&e, &d);
	kumo_envelope_release(&d);
	free(buf);
	free(addrs);
	free(big);
	free(r);
}

/* encode with too small a buffer says how much it needs and writes nothing past cap. */
static void test_encode_sizing(void **state)
{
	struct kumo_envelope e;
	full_env(&e);
	size_t need = kumo_envelope_encode(&e, NULL, 0);
	uint8_t *buf = malloc(need + 16);
	assert_non_null(buf);
	for (size_t cap = 0; cap < need; cap++) {
		memset(buf, 0xee, need + 16);
		assert_int_equal(kumo_envelope_encode(&e, buf, cap), need);
		for (size_t i = cap; i < need + 16; i++)
			assert_int_equal(buf[i], 0xee);
	}
	assert_int_equal(kumo_envelope_encode(&e, buf, need + 16), need);
	free(buf);
}

/* Every proper prefix fails with -EINVAL; decoded from an exact-size heap copy so a
 * read past the end shows up under a sanitizer. */
static void test_truncation(void **state)
{
	struct kumo_envelope e, d;
	size_t n;

	full_env(&e);
	uint8_t *buf = encode_alloc(&e, &n);
	for (size_t cut = 0; cut < n; cut++) {
		uint8_t *p = malloc(cut ? cut : 1);
		assert_non_null(p);
		memcpy(p, buf, cut);
		assert_int_equal(kumo_envelope_decode(p, cut, &d), -EINVAL);
		assert_null(d.block_);
		free(p);
	}
	free(buf);
}

static void test_bad_input(void **state)
{
	struct kumo_envelope e, d;
	size_t n;

	full_env(&e);
	uint8_t *buf = encode_alloc(&e, &n);
	uint8_t *big = malloc(n + 1);
	assert_non_null(big);

	/* trailing garbage */
	memcpy(big, buf, n);
	big[n] = 0;
	assert_int_equal(kumo_envelope_decode(big, n + 1, &d), -EINVAL);
	/* unknown version */
	memcpy(big, buf, n);
	big[0] = 2;
	assert_int_equal(kumo_envelope_decode(big, n, &d), -EINVAL);
	/* unknown flag bit (flags follow version and id) */
	memcpy(big, buf, n);
	big[17] |= 0x80;
	assert_int_equal(kumo_envelope_decode(big, n, &d), -EINVAL);
	/* a NUL inside a string: sender starts after version, id, 3 bytes and the three
	 * varints; find it by its text */
	memcpy(big, buf, n);
	uint8_t *s = memmem(big, n, "bounce", 6);
	assert_non_null(s);
	s[2] = 0;
	assert_int_equal(kumo_envelope_decode(big, n, &d), -EINVAL);
	/* an impossible recipient count */
	struct kumo_envelope m = {0};
	m.sender = "";
	size_t mn = kumo_envelope_encode(&m, big, n);
	assert_true(mn + 3 <= n);
	big[mn - 2] = 0xff; /* nrcpt varint continues into the nmeta byte */
	big[mn - 1] = 0xff;
	big[mn] = 0x7f;
	assert_int_equal(kumo_envelope_decode(big, mn + 1, &d), -EINVAL);
	assert_int_equal(kumo_envelope_decode(NULL, 0, &d), -EINVAL);
	free(big);
	free(buf);
}

/* Every single-byte change either decodes or fails cleanly. */
static void test_mutations(void **state)
{
	struct kumo_envelope e, d;
	size_t n;

	full_env(&e);
	uint8_t *buf = encode_alloc(&e, &n);
	uint8_t *p = malloc(n);
	assert_non_null(p);
	for (size_t i = 0; i < n; i++) {
		static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
		for (size_t k = 0; k < sizeof(vals); k++) {
			memcpy(p, buf, n);
			p[i] = vals[k];
			int rc = kumo_envelope_decode(p, n, &d);
			assert_true(rc == 0 || rc == -EINVAL);
			if (rc == 0)
				kumo_envelope_release(&d);
		}
	}
	free(p);
	free(buf);
}

static void check_name(const struct kumo_envelope *e, const char *rcpt, const char *want)
{
	char buf[128];
	size_t n = kumo_envelope_queue_name(e, rcpt, buf, sizeof(buf));
	assert_int_equal(n, strlen(want));
	assert_string_equal(buf, want);
}

static void test_queue_name(void **state)
{
	struct kumo_envelope e = {0};

	e.sender = "";
	check_name(&e, "User@Example.COM", "example.com");
	e.tenant = "acme";
	check_name(&e, "User@Example.COM", "acme@example.com");
	e.campaign = "Spring";
	check_name(&e, "User@Example.COM", "Spring:acme@example.com");
	e.tenant = NULL;
	check_name(&e, "User@Example.COM", "Spring:example.com");
	/* the domain is after the last '@' */
	check_name(&e, "\"a@b\"@Last.Example", "Spring:last.example");
	e.campaign = "";
	e.tenant = "";
	check_name(&e, "x@y.example", "y.example");
	/* no '@' at all: empty domain */
	e.tenant = "t";
	check_name(&e, "postmaster", "t@");
	/* an explicit queue wins and is kept as set */
	e.queue = "Special-Queue";
	check_name(&e, "x@y.example", "Special-Queue");
}

static void test_queue_name_truncation(void **state)
{
	struct kumo_envelope e = {0};
	char buf[16];

	e.campaign = "campaign";
	e.tenant = "tenant";
	const char *want = "campaign:tenant@example.com";
	size_t full = strlen(want);
	for (size_t cap = 0; cap < sizeof(buf); cap++) {
		memset(buf, 'Z', sizeof(buf));
		size_t n = kumo_envelope_queue_name(&e, "u@EXAMPLE.com", buf, cap);
		assert_int_equal(n, full);
		if (cap > 0) {
			assert_int_equal(strlen(buf), cap - 1);
			assert_memory_equal(buf, want, cap - 1);
		}
		for (size_t i = cap; i < sizeof(buf); i++)
			assert_int_equal(buf[i], 'Z');
	}
	assert_int_equal(kumo_envelope_queue_name(&e, "u@EXAMPLE.com", NULL, 0), full);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_full),
	    cmocka_unit_test(test_roundtrip_minimal),
	    cmocka_unit_test(test_roundtrip_large),
	    cmocka_unit_test(test_encode_sizing),
	    cmocka_unit_test(test_truncation),
	    cmocka_unit_test(test_bad_input),
	    cmocka_unit_test(test_mutations),
	    cmocka_unit_test(test_queue_name),
	    cmocka_unit_test(test_queue_name_truncation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
