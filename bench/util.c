/* kumo-bench: shared helpers (see bench.h): clocks, parsing, PRNG seeding, line logs,
 * signals and JSON strings. */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int bench_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || !isdigit((unsigned char)s[0]))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int bench_parse_double(const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	if (s == NULL || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int bench_parse_hostport(const char *s, char **host, int *port)
{
	const char *colon, *h = s;
	size_t hlen;
	uint64_t p;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || close[1] != ':')
			return -1;
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return -1;
		hlen = (size_t)(colon - s);
	}
	if (hlen == 0 || bench_parse_u64(colon + 1, 0, 65535, &p) < 0)
		return -1;
	*host = strndup(h, hlen);
	if (*host == NULL)
		return -1;
	*port = (int)p;
	return 0;
}

int bench_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = {0}, *res;
	char serv[16];
	int rc;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(serv, sizeof(serv), "%d", port);
	rc = getaddrinfo(host, serv, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "kumo-bench: cannot resolve %s: %s\n", host, gai_strerror(rc));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

int bench_default_threads(int cap)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	return n < cap ? (int)n : cap;
}

void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
	/* splitmix64 spreads similar seeds apart; the state must not be zero. */
	uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	z ^= z >> 31;
	r->s = z ? z : 1;
}

uint64_t bench_random_seed(void)
{
	uint64_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
		return v;
	return bench_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
}

int bench_log_open_fd(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

	if (fd < 0)
		fprintf(stderr, "kumo-bench: cannot open %s: %s\n", path, strerror(errno));
	return fd;
}

int bench_log_init(struct bench_log *l, int fd, size_t cap)
{
	memset(l, 0, sizeof(*l));
	l->fd = fd;
	l->last_ns = bench_now_ns();
	if (fd < 0)
		return 0;
	l->buf = malloc(cap);
	if (l->buf == NULL)
		return -1;
	l->cap = cap;
	return 0;
}

int bench_log_flush(struct bench_log *l)
{
	size_t off = 0;

	l->last_ns = bench_now_ns();
	while (off < l->len) {
		ssize_t n = write(l->fd, l->buf + off, l->len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (l->err == 0)
				l->err = errno;
			l->len = 0;
			return -1;
		}
		off += (size_t)n;
	}
	l->len = 0;
	return 0;
}

void bench_log_line(struct bench_log *l, const char *a, size_t alen, const char *b, size_t blen)
{
	size_t need = alen + 1 + blen + 1;

	if (l->fd < 0)
		return;
	if (l->len + need > l->cap)
		bench_log_flush(l);
	if (need > l->cap) {
		/* A line longer than the buffer: clip it rather than split it. */
		blen = l->cap > alen + 2 ? l->cap - alen - 2 : 0;
		alen = alen < l->cap - 2 ? alen : l->cap - 2;
	}
	memcpy(l->buf + l->len, a, alen);
	l->len += alen;
	l->buf[l->len++] = ' ';
	memcpy(l->buf + l->len, b, blen);
	l->len += blen;
	l->buf[l->len++] = '\n';
}

void bench_log_fini(struct bench_log *l)
{
	if (l->fd >= 0 && l->len > 0)
		bench_log_flush(l);
	free(l->buf);
	l->buf = NULL;
	l->cap = 0;
}

void bench_block_signals(sigset_t *set)
{
	sigset_t all;

	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	all = *set;
	sigaddset(&all, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
}

int bench_wait_signal(const sigset_t *set, int timeout_ms)
{
	struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
	int sig = sigtimedwait(set, NULL, &ts);

	return sig > 0 ? sig : 0;
}

void bench_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

bool bench_has_prefix(const char *line, size_t len, const char *word)
{
	size_t wl = strlen(word);

	return len >= wl && strncasecmp(line, word, wl) == 0;
}
