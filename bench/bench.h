/* kumo-bench: helpers shared by the injector (inject.c) and the sink (sink.c): clocks,
 * option parsing, a small PRNG, append-only line logs, signal handling and JSON output.
 * kumo-bench is standalone: it measures other MTAs too, so it never links libkumo. */
#ifndef KUMO_BENCH_H
#define KUMO_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* Exit status for a bad command line. */
#define BENCH_EXIT_USAGE 2

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/* Parse a whole decimal string into [min, max]. Returns 0 or -1 on a bad value. */
int bench_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Parse a non-negative decimal number (fractions allowed) into [min, max]. Returns 0 or -1. */
int bench_parse_double(const char *s, double min, double max, double *out);

/* Split "host:port" (or "[v6]:port") into a malloc'd host and a port. Returns 0 or -1. */
int bench_parse_hostport(const char *s, char **host, int *port);

/* Resolve a numeric or named host and a port into a socket address. Returns 0 or -1. */
int bench_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);

/* Default thread count: the number of online CPUs, capped at cap. */
int bench_default_threads(int cap);

/* xorshift64*: a fast PRNG; each thread owns one. */
struct bench_rng {
	uint64_t s; /* state, never zero */
};

void bench_rng_seed(struct bench_rng *r, uint64_t seed);

static inline uint64_t bench_rng_next(struct bench_rng *r)
{
	uint64_t x = r->s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* A uniform double in [0, 100), for percentage draws. */
static inline double bench_rng_pct(struct bench_rng *r)
{
	return (double)(bench_rng_next(r) >> 11) * (100.0 / 9007199254740992.0);
}

/* 64 random bits from the kernel (falls back to clock and pid). */
uint64_t bench_random_seed(void);

/*
 * An append-only line log. Several logs may share one fd opened with O_APPEND (one per
 * thread); each flush is a single write of whole lines, so lines from different threads
 * never interleave within a line.
 */
struct bench_log {
	int fd;		  /* shared O_APPEND descriptor, -1 when logging is off */
	char *buf;	  /* pending bytes, always whole lines */
	size_t len;	  /* bytes pending in buf */
	size_t cap;	  /* size of buf */
	uint64_t last_ns; /* time of the last flush */
	int err;	  /* first write error (errno), 0 if none */
};

/* Open path for appending (creating it). Returns the fd or -1 with a message printed. */
int bench_log_open_fd(const char *path);

/* Give a log a buffer of cap bytes over fd (fd -1: the log drops everything). */
int bench_log_init(struct bench_log *l, int fd, size_t cap);

/* Append one line built from two parts joined by a space, plus a newline. */
void bench_log_line(struct bench_log *l, const char *a, size_t alen, const char *b, size_t blen);

/* Write out pending lines. Returns 0 or -1 (errno kept in l->err). */
int bench_log_flush(struct bench_log *l);

/* Flush and free the buffer; the shared fd stays open. */
void bench_log_fini(struct bench_log *l);

/* Block SIGINT, SIGTERM and SIGPIPE in the calling thread (and threads it creates later);
 * fills set with SIGINT and SIGTERM for bench_wait_signal(). */
void bench_block_signals(sigset_t *set);

/* Wait up to timeout_ms for a signal in set. Returns its number or 0 on timeout. */
int bench_wait_signal(const sigset_t *set, int timeout_ms);

/* Print s as a JSON string literal. */
void bench_json_str(FILE *f, const char *s);

/* Case-insensitive test that line (of len bytes) starts with the NUL-terminated word. */
bool bench_has_prefix(const char *line, size_t len, const char *word);

/* The subcommands. */
int bench_inject_main(int argc, char **argv);
int bench_sink_main(int argc, char **argv);
void bench_inject_usage(FILE *f);
void bench_sink_usage(FILE *f);

#endif
