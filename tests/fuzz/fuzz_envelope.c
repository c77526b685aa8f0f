/* libFuzzer target for engine/envelope: decodes arbitrary bytes; whatever decodes must
 * re-encode to the same bytes, and queue names must be computable for every recipient. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kumo_envelope env;
	char name[64];

	if (kumo_envelope_decode(data, size, &env) != 0)
		return 0;
	/* the encoding is canonical except for varints written longer than needed */
	size_t n = kumo_envelope_encode(&env, NULL, 0);
	uint8_t *buf = malloc(n);
	if (buf == NULL)
		abort();
	if (kumo_envelope_encode(&env, buf, n) != n || n > size)
		abort();
	struct kumo_envelope again;
	if (kumo_envelope_decode(buf, n, &again) != 0)
		abort();
	if (kumo_envelope_encode(&again, NULL, 0) != n)
		abort();
	for (size_t i = 0; i < env.nrcpt; i++) {
		size_t len = kumo_envelope_queue_name(&env, env.rcpts[i].addr, name, sizeof(name));
		if (len < sizeof(name) && strlen(name) != len)
			abort();
	}
	kumo_envelope_release(&again);
	kumo_envelope_release(&env);
	free(buf);
	return 0;
}
