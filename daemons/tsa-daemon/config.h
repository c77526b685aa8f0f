/* tsa-daemon: its TOML configuration (listen address, the shaping files whose automation
 * rules it evaluates, the SQLite state file, connection and size limits), read strictly:
 * unknown keys and wrong types are refused with the file, line and key. */
#ifndef TSA_CONFIG_H
#define TSA_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TSA_DEFAULT_LISTEN "127.0.0.1:8008"
#define TSA_DEFAULT_MAX_CONNECTIONS 256
#define TSA_DEFAULT_MAX_BODY ((uint64_t)8 * 1024 * 1024)
#define TSA_DEFAULT_IDLE_TIMEOUT_MS 60000
#define TSA_DEFAULT_MAX_WINDOWS 100000
#define TSA_MAX_SHAPING_FILES 64

struct tsa_config {
	char *listen;		      /* "ip:port" or "[ipv6]:port" */
	struct sockaddr_storage addr; /* listen, parsed */
	socklen_t addrlen;
	char *shaping_files[TSA_MAX_SHAPING_FILES];
	size_t nshaping_files; /* at least 1 */
	char *state;	       /* the SQLite database */
	unsigned max_connections;
	uint64_t max_body;	  /* bytes of one request body */
	uint64_t idle_timeout_ms; /* an idle keep-alive connection is closed after this */
	size_t max_windows;	  /* threshold counters kept at once */
};

/* Reads the file at path (or text[0..len) named name) into *c. Returns 0, or -EINVAL /
 * -ENOMEM / -errno with err holding "FILE:LINE: key 'k': message"; *c then holds nothing
 * to free. */
int tsa_config_load(const char *path, struct tsa_config *c, char *err, size_t errcap);
int tsa_config_parse(const char *text, size_t len, const char *name, struct tsa_config *c,
		     char *err, size_t errcap);
void tsa_config_free(struct tsa_config *c);


#endif
