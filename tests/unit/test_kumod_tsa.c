/* Unit tests for kumod's tsa-daemon client: bounced.json as tsa-daemon writes it becomes
 * the engine's bounces (Bounce, BounceTenant, BounceCampaign), expired and unusable
 * entries are left out, and limits of the caller's arrays hold. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tsa.h"

/* 2030-01-01T00:00:00Z and an hour later, in Unix ms */
#define T2030 1893456000000ull
#define NOW (T2030 - 60000)

static const char three[] =
	"[{\"rule_hash\":\"a1\",\"domain\":\"gone.test\",\"tenant\":null,\"campaign\":null,"
	"\"reason\":\"automation rule s.toml:3 regex 5\\\\.1\\\\.1 matched: 550 5.1.1 no\","
	"\"expires\":\"2030-01-01T00:00:00Z\"},"
	"{\"rule_hash\":\"b2\",\"domain\":\"bad.test\",\"tenant\":\"acme\",\"campaign\":null,"
	"\"reason\":\"t\",\"expires\":\"2030-01-01T01:00:00.250Z\"},"
	"{\"rule_hash\":\"c3\",\"domain\":\"bad.test\",\"tenant\":\"acme\","
	"\"campaign\":\"spring\",\"reason\":\"c\",\"expires\":\"2030-01-01T00:00:00Z\"}]\n";

static void test_kinds(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	long n = kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 8, storage,
					 sizeof(storage));
	assert_int_equal(n, 3);
	assert_string_equal(b[0].domain, "gone.test");
	assert_null(b[0].tenant);
	assert_null(b[0].campaign);
	assert_string_equal(b[0].reason, "automation rule s.toml:3 regex 5\\.1\\.1 matched: "
					 "550 5.1.1 no");
	assert_int_equal(b[0].expires_ms, T2030);
	assert_string_equal(b[1].domain, "bad.test");
	assert_string_equal(b[1].tenant, "acme");
	assert_null(b[1].campaign);
	assert_int_equal(b[1].expires_ms, T2030 + 3600000); /* whole seconds are enough */
	assert_string_equal(b[2].campaign, "spring");
	assert_string_equal(b[2].tenant, "acme");
	/* strings live in storage, not in the JSON text */
	assert_true(b[2].campaign >= storage && b[2].campaign < storage + sizeof(storage));
}

static void test_expired_and_empty(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	/* at the first expiry only the second entry is still active */
	assert_int_equal(kumod_tsa_parse_bounces(three, sizeof(three) - 1, T2030, b, 8,
						 storage, sizeof(storage)), 1);
	assert_string_equal(b[0].tenant, "acme");
	assert_null(b[0].campaign);
	static const char none[] = "[]";
	assert_int_equal(kumod_tsa_parse_bounces(none, 2, NOW, b, 8, storage, sizeof(storage)),
			 0);
	/* no domain, tenant or campaign: it would bounce every queue, so it is left out */
	static const char all[] = "[{\"domain\":\"\",\"tenant\":null,\"campaign\":null,"
				  "\"reason\":\"r\",\"expires\":\"2030-01-01T00:00:00Z\"},"
				  "{\"domain\":\"x.test\",\"reason\":\"r\",\"expires\":\"junk\"},"
				  "{\"domain\":\"y.test\",\"expires\":\"2030-01-01T00:00:00Z\"}]";
	assert_int_equal(kumod_tsa_parse_bounces(all, sizeof(all) - 1, NOW, b, 8, storage,
						 sizeof(storage)), 1);
	assert_string_equal(b[0].domain, "y.test");
	assert_null(b[0].reason);
}

static void test_limits_and_errors(void **state)
{
	struct kumo_bounce b[8];
	char storage[4096];
	assert_int_equal(kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 2, storage,
						 sizeof(storage)), 2);
	/* room for the first entry's strings only: the others are left out, not cut */
	char small[80];
	assert_int_equal(kumod_tsa_parse_bounces(three, sizeof(three) - 1, NOW, b, 8, small,
						 sizeof(small)), 1);
	assert_string_equal(b[0].domain, "gone.test");
	static const char bad[] = "[{\"domain\":";
	assert_int_equal(kumod_tsa_parse_bounces(bad, sizeof(bad) - 1, NOW, b, 8, storage,
						 sizeof(storage)), -EINVAL);
	/* not an array (suspended.json by mistake): nothing */
	static const char obj[] = "{\"ready_q\":[],\"sched_q\":[]}";
	assert_int_equal(kumod_tsa_parse_bounces(obj, sizeof(obj) - 1, NOW, b, 8, storage,
						 sizeof(storage)), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kinds),
		cmocka_unit_test(test_expired_and_empty),
		cmocka_unit_test(test_limits_and_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
