/* Unit tests for per-loop queue state (engine/queue): interning, message records and
 * their free list, FIFO lists, and the timer wheel's due times across turns. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "engine/queue.h"

static struct kumo_id id_n(uint64_t n)
{
	struct kumo_id id = {{0}};
	memcpy(id.b + 8, &n, sizeof(n));
	return id;
}

static void test_intern(void **state)
{
	struct kumo_queues q;
	assert_int_equal(kumo_queues_init(&q, 0), 0);
	uint32_t a = kumo_queue_intern(&q, "camp:tenant@example.com");
	uint32_t b = kumo_queue_intern(&q, "example.net");
	assert_int_not_equal(a, b);
	assert_int_equal(kumo_queue_intern(&q, "camp:tenant@example.com"), a);
	assert_string_equal(q.queues[a].domain, "example.com");
	assert_string_equal(q.queues[b].domain, "example.net");
	assert_string_equal(q.queues[kumo_queue_intern(&q, "c:x.org")].domain, "x.org");
	/* many names force rehashing; every one is still found */
	char name[64];
	for (int i = 0; i < 5000; i++) {
		snprintf(name, sizeof(name), "d%d.test", i);
		assert_int_not_equal(kumo_queue_intern(&q, name), KUMO_NONE);
	}
	for (int i = 0; i < 5000; i++) {
		snprintf(name, sizeof(name), "d%d.test", i);
		uint32_t k = kumo_queue_find(&q, name);
		assert_int_not_equal(k, KUMO_NONE);
		assert_string_equal(q.queues[k].name, name);
	}
	assert_int_equal(kumo_queue_find(&q, "absent.test"), KUMO_NONE);
	uint32_t s = kumo_site_intern(&q, "mx1.example.com,mx2.example.com");
	assert_int_equal(kumo_site_intern(&q, "mx1.example.com,mx2.example.com"), s);
	assert_int_equal(q.sites[s].ready_head, KUMO_NONE);
	kumo_queues_free(&q);
}

static void test_records_and_lists(void **state)
{
	struct kumo_queues q;
	assert_int_equal(kumo_queues_init(&q, 0), 0);
	uint32_t qi = kumo_queue_intern(&q, "example.com");
	struct kumo_spool_loc loc = {.segment = 1, .length = 100, .offset = 32};
	uint32_t m[10];
	for (int i = 0; i < 10; i++) {
		struct kumo_id id = id_n((uint64_t)i);
		m[i] = kumo_qmsg_new(&q, &id, &loc, qi, 5000, (unsigned)i);
		assert_int_equal(q.msgs[m[i]].attempts, i);
	}
	assert_int_equal(q.live, 10);
	assert_int_equal(q.queues[qi].count, 10);
	uint32_t head = KUMO_NONE, tail = KUMO_NONE;
	for (int i = 0; i < 10; i++)
		kumo_list_push(&q, &head, &tail, m[i]);
	for (int i = 0; i < 10; i++)
		assert_int_equal(kumo_list_pop(&q, &head, &tail), m[i]);
	assert_int_equal(kumo_list_pop(&q, &head, &tail), KUMO_NONE);
	kumo_qmsg_release(&q, m[3]);
	assert_int_equal(q.live, 9);
	struct kumo_id id = id_n(99);
	/* the freed record is reused before the array grows */
	assert_int_equal(kumo_qmsg_new(&q, &id, &loc, qi, 0, 0), m[3]);
	assert_int_equal(sizeof(struct kumo_qmsg), 48);
	kumo_queues_free(&q);
}

static void parts_are(const char *name, const char *campaign, const char *tenant,
		      const char *domain)
{
	struct kumo_queue_parts p;
	kumo_queue_parts(name, &p);
	assert_int_equal(p.campaign_len, strlen(campaign));
	assert_memory_equal(p.campaign, campaign, p.campaign_len);
	assert_int_equal(p.tenant_len, strlen(tenant));
	assert_memory_equal(p.tenant, tenant, p.tenant_len);
	assert_int_equal(p.domain_len, strlen(domain));
	assert_string_equal(p.domain, domain);
}

/* Queue names split into campaign, tenant and domain as KumoMTA writes them. */
static void test_queue_parts(void **state)
{
	parts_are("camp:acme@example.com", "camp", "acme", "example.com");
	parts_are("acme@example.com", "", "acme", "example.com");
	parts_are("camp:example.com", "camp", "", "example.com");
	parts_are("example.com", "", "", "example.com");
	parts_are("acme@[IPv6:::1]", "", "acme", "[IPv6:::1]");
	parts_are("c:t@[IPv6:::1]", "c", "t", "[IPv6:::1]");
}

/* Collects the due list into a bitmap of message indexes. */
static int count_due(struct kumo_queues *q, uint32_t head, uint8_t *seen)
{
	int n = 0;
	for (uint32_t m = head; m != KUMO_NONE; m = q->msgs[m].next, n++)
		seen[m] = 1;
	return n;
}

static void test_wheel(void **state)
{
	struct kumo_queues q;
	const uint64_t t0 = 1700000000000ULL;
	assert_int_equal(kumo_queues_init(&q, t0), 0);
	uint32_t qi = kumo_queue_intern(&q, "example.com");
	struct kumo_spool_loc loc = {0};
	/* due in 1 s, 10 s, one wheel turn + 5 s, and already overdue */
	uint64_t dues[] = {t0 + 1000, t0 + 10000, t0 + (4096 + 5) * 1000ULL, t0 - 50000};
	uint32_t m[4];
	for (int i = 0; i < 4; i++) {
		struct kumo_id id = id_n((uint64_t)i);
		m[i] = kumo_qmsg_new(&q, &id, &loc, qi, dues[i], 0);
		kumo_wheel_insert(&q, m[i]);
		assert_int_equal(q.msgs[m[i]].state, KUMO_Q_SCHEDULED);
	}
	uint8_t seen[4] = {0};
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + 1000), seen), 2);
	assert_true(seen[m[0]] && seen[m[3]]);
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + 9000), seen), 0);
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + 10000), seen), 1);
	assert_true(seen[m[1]]);
	/* the far one passes its slot once without firing, then fires a turn later */
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + 4096 * 1000ULL), seen), 0);
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + (4096 + 5) * 1000ULL), seen),
			 1);
	assert_true(seen[m[2]]);
	/* a long stall: everything inserted comes out on the next advance */
	struct kumo_id id = id_n(7);
	uint32_t late = kumo_qmsg_new(&q, &id, &loc, qi, t0 + 5000000, 0);
	kumo_wheel_insert(&q, late);
	uint8_t seen2[8] = {0};
	assert_int_equal(count_due(&q, kumo_wheel_advance(&q, t0 + 90000000ULL), seen2), 1);
	assert_true(seen2[late]);
	kumo_queues_free(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_intern),
		cmocka_unit_test(test_queue_parts),
		cmocka_unit_test(test_records_and_lists),
		cmocka_unit_test(test_wheel),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
