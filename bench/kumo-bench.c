/* kumo-bench: an SMTP load generator ("inject") and a fast SMTP sink ("sink") for
 * measuring MTAs, libkumo's kumod and others alike. This file dispatches subcommands. */
#include "bench.h"

#include <string.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: kumo-bench <command> [options]\n"
		   "\n"
		   "commands:\n"
		   "  inject   open SMTP connections to a server and send messages as fast as it\n"
		   "           accepts them; report throughput and latency\n"
		   "  sink     run a fast SMTP server that accepts (or fails, on request) what it\n"
		   "           is sent; report what arrived\n"
		   "  help     show this text and the options of both commands\n"
		   "\n"
		   "Run 'kumo-bench <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return BENCH_EXIT_USAGE;
	}
	if (strcmp(argv[1], "inject") == 0) {
		argv[1] = "kumo-bench inject"; /* getopt's messages name the command */
		return bench_inject_main(argc - 1, argv + 1);
	}
	if (strcmp(argv[1], "sink") == 0) {
		argv[1] = "kumo-bench sink";
		return bench_sink_main(argc - 1, argv + 1);
	}
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		fputc('\n', stdout);
		bench_inject_usage(stdout);
		fputc('\n', stdout);
		bench_sink_usage(stdout);
		return 0;
	}
	fprintf(stderr, "kumo-bench: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return BENCH_EXIT_USAGE;
}
