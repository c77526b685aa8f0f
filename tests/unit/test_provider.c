/* Unit tests for provider budgets (engine/provider.c): one budget per provider name and
 * egress source, the connection budget test, and the FIFO of waiting sites. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/provider.h"
#include "engine/queue.h"

static void intern_keys_on_name_and_source(void **state)
{
	(void)state;
	struct kumo_providers ps = {0};
	uint32_t a = kumo_provider_intern(&ps, "outlook", KUMO_NONE);
	uint32_t b = kumo_provider_intern(&ps, "outlook", 1);
	uint32_t c = kumo_provider_intern(&ps, "yahoo", KUMO_NONE);
	assert_int_equal(a, 0);
	assert_int_equal(b, 1);
	assert_int_equal(c, 2);
	assert_int_equal(kumo_provider_intern(&ps, "outlook", 1), 1);
	assert_int_equal(kumo_provider_intern(&ps, "outlook", KUMO_NONE), 0);
	assert_int_equal(ps.n, 3);
	kumo_providers_free(&ps);
	assert_int_equal(ps.n, 0);
}

static void full_only_with_a_connection_budget(void **state)
{
	(void)state;
	struct kumo_provider_budget b = {0};
	b.nconns = 100;
	assert_false(kumo_provider_full(&b)); /* conn_limit 0: no budget */
	b.conn_limit = 2;
	b.nconns = 1;
	assert_false(kumo_provider_full(&b));
	b.nconns = 2;
	assert_true(kumo_provider_full(&b));
}

static void waiters_are_served_oldest_first_once_each(void **state)
{
	(void)state;
	struct kumo_providers ps = {0};
	uint32_t i = kumo_provider_intern(&ps, "p", KUMO_NONE);
	assert_int_equal(i, 0);
	struct kumo_provider_budget *b = &ps.v[i];
	for (uint32_t site = 0; site < 20; site++)
		assert_true(kumo_site_fifo_push(&b->waiting, site));
	assert_false(kumo_site_fifo_push(&b->waiting, 3)); /* already waiting */
	assert_int_equal(b->waiting.n, 20);
	assert_true(kumo_site_fifo_has_other(&b->waiting, 0));
	for (uint32_t site = 0; site < 20; site++)
		assert_int_equal(kumo_site_fifo_pop(&b->waiting), site);
	assert_int_equal(kumo_site_fifo_pop(&b->waiting), KUMO_NONE);
	assert_false(kumo_site_fifo_has_other(&b->waiting, 7));
	assert_true(kumo_site_fifo_push(&b->waiting, 7));
	assert_false(kumo_site_fifo_has_other(&b->waiting, 7)); /* only the asking site itself */
	assert_true(kumo_site_fifo_has_other(&b->waiting, 8));
	kumo_providers_free(&ps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(intern_keys_on_name_and_source),
		cmocka_unit_test(full_only_with_a_connection_budget),
		cmocka_unit_test(waiters_are_served_oldest_first_once_each),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
