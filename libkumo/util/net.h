/* Socket helpers shared by the engine and the daemons: reading "ip:port" addresses and
 * opening SO_REUSEPORT listening sockets. */
#ifndef KUMO_UTIL_NET_H
#define KUMO_UTIL_NET_H

#include <sys/socket.h>

/* Parses "1.2.3.4:25", "[::1]:25" (or "::1:25") into *ss and its length *len; no host
 * names. Returns 0 or -EINVAL. */
int kumo_parse_address(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* A listening TCP socket bound to ss (SO_REUSEADDR, SO_REUSEPORT so that each loop can
 * have its own; IPv6 sockets are IPv6-only), close-on-exec, backlog 4096. Returns the
 * descriptor (the caller owns it) or -errno. */
int kumo_listen_socket(const struct sockaddr_storage *ss, socklen_t len);

#endif
