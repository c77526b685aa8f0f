/* tsa-daemon: the HTTP/1.1 server: one io_uring loop serving a fixed table of keep-alive
 * connections, routing requests to the engine, and answering a publish only once the
 * actions it caused are on disk. */
#ifndef TSA_SERVER_H
#define TSA_SERVER_H

#include <stdint.h>
#include <sys/socket.h>

#include "engine.h"
#include "store.h"

struct tsa_server_cfg {
	const struct sockaddr *addr;
	socklen_t addrlen;
	unsigned max_connections;
	uint64_t max_body;
	uint64_t idle_timeout_ms;
	/* Diagnostics: one line without a newline. NULL: stderr. */
	void (*log)(void *arg, const char *line);
	void *log_arg;
};

struct tsa_server;

/* Binds and listens, sets up the ring, and blocks SIGINT and SIGTERM in the calling thread
 * (call it before starting other threads, so that they inherit the mask). The engine and
 * the store are borrowed; the server sets the engine's persist callback to the store.
 * Returns 0 or -errno with err saying why. */
int tsa_server_new(const struct tsa_server_cfg *cfg, struct tsa_engine *engine,
		   struct tsa_store *store, struct tsa_server **out, char *err, size_t errcap);

/* The eventfd the store must signal after each batch (for tsa_store_start). */
int tsa_server_notify_fd(const struct tsa_server *s);

/* The port actually bound (when the configured port is 0). */
int tsa_server_port(const struct tsa_server *s);

/* Runs until SIGINT or SIGTERM. Returns 0, or -errno when the ring fails. */
int tsa_server_run(struct tsa_server *s);

void tsa_server_free(struct tsa_server *s);

#endif
