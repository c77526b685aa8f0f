/* Unit tests for node-wide connection limits (engine/nodelimit.c): one counter per key
 * and kind for every loop, waiting loops recorded, and a release that wakes them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>

#include "engine/internal.h"

static void slots_are_shared_by_key_and_kind(void **state)
{
	(void)state;
	struct kumo_node_limits n;
	kumo_node_limits_init(&n, 3);
	struct kumo_node_slot *a0 = kumo_node_slot_get(&n, "mx.test", KUMO_SLOT_SITE, 0, 7);
	struct kumo_node_slot *a2 = kumo_node_slot_get(&n, "mx.test", KUMO_SLOT_SITE, 2, 9);
	struct kumo_node_slot *p = kumo_node_slot_get(&n, "mx.test", KUMO_SLOT_PROVIDER, 0, 1);
	assert_non_null(a0);
	assert_ptr_equal(a0, a2);
	assert_ptr_not_equal(a0, p);
	assert_int_equal(a0->local[0], 7);
	assert_int_equal(a0->local[1], KUMO_NONE);
	assert_int_equal(a0->local[2], 9);
	kumo_node_limits_fini(&n);
}

/* A release wakes the loops that waited: their kick lists name the slot and their
 * eventfds count one wake-up. */
static void release_wakes_the_waiting_loops(void **state)
{
	(void)state;
	struct kumo_loop loops[3] = {{0}};
	struct kumo_engine e = {.loops = loops, .nloops = 3};
	int rd[3];
	for (unsigned i = 0; i < 3; i++) { /* each loop's wake_fd: a pipe's write end */
		int fds[2];
		pthread_mutex_init(&loops[i].inject_lock, NULL);
		assert_int_equal(pipe(fds), 0);
		rd[i] = fds[0];
		loops[i].wake_fd = fds[1];
	}
	kumo_node_limits_init(&e.node_limits, 3);
	struct kumo_node_slot *s = kumo_node_slot_get(&e.node_limits, "x", KUMO_SLOT_SITE, 0, 0);
	assert_true(kumo_node_slot_take(&e.node_limits, s, 2, 0));
	assert_true(kumo_node_slot_take(&e.node_limits, s, 2, 0));
	assert_false(kumo_node_slot_take(&e.node_limits, s, 2, 1)); /* loop 1 waits */
	assert_false(kumo_node_slot_take(&e.node_limits, s, 2, 2)); /* loop 2 waits */
	assert_true(kumo_node_slot_contended(s, 0));
	assert_true(kumo_node_slot_contended(s, 1)); /* loop 2 still waits */
	kumo_node_slot_release(&e, s);
	assert_false(kumo_node_slot_contended(s, 0));
	assert_int_equal(loops[0].nkicks, 0);
	assert_int_equal(loops[1].nkicks, 1);
	assert_ptr_equal(loops[1].kicks[0], s);
	assert_int_equal(loops[2].nkicks, 1);
	uint64_t v;
	assert_int_equal(read(rd[1], &v, sizeof(v)), (ssize_t)sizeof(v));
	/* one slot is free again: exactly one more take succeeds */
	assert_true(kumo_node_slot_take(&e.node_limits, s, 2, 1));
	assert_false(kumo_node_slot_take(&e.node_limits, s, 2, 2));
	kumo_node_limits_fini(&e.node_limits);
	for (unsigned i = 0; i < 3; i++) {
		free(loops[i].kicks);
		close(rd[i]);
		close(loops[i].wake_fd);
		pthread_mutex_destroy(&loops[i].inject_lock);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(slots_are_shared_by_key_and_kind),
		cmocka_unit_test(release_wakes_the_waiting_loops),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
