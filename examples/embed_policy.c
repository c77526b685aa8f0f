/* An SMTP receiver built on libkumo with its own policy: recipients whose local part
 * starts with "reject" are refused with 550 5.1.1, senders from blocked.example are
 * refused at MAIL, and every message is put in tenant "example" with some metadata.
 * It only receives: accepted mail stays in the spool (no_delivery).
 * usage: embed_policy SPOOL_DIR LISTEN_ADDRESS   (runs until SIGINT/SIGTERM) */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "kumo/kumo.h"

static enum kumo_verdict on_mail_from(void *arg, struct kumo_txn *txn, const char *sender,
				      struct kumo_reply *reply)
{
	const char *at = strrchr(sender, '@');
	if (at && strcasecmp(at + 1, "blocked.example") == 0) {
		reply->code = 550;
		snprintf(reply->enhanced, sizeof(reply->enhanced), "5.7.1");
		snprintf(reply->text, sizeof(reply->text), "Sender %s is blocked here", sender);
		return KUMO_REJECT;
	}
	kumo_txn_set_tenant(txn, "example");
	return KUMO_ACCEPT;
}

static enum kumo_verdict on_rcpt_to(void *arg, struct kumo_txn *txn, const char *rcpt,
				    struct kumo_reply *reply)
{
	if (strncasecmp(rcpt, "reject", 6) == 0) {
		reply->code = 550;
		snprintf(reply->enhanced, sizeof(reply->enhanced), "5.1.1");
		snprintf(reply->text, sizeof(reply->text), "No such user here");
		return KUMO_REJECT;
	}
	return KUMO_ACCEPT;
}

static enum kumo_verdict on_data(void *arg, struct kumo_txn *txn, struct kumo_reply *reply)
{
	size_t len;
	kumo_txn_data(txn, &len);
	char size[32];
	snprintf(size, sizeof(size), "%zu", len);
	kumo_txn_set_meta(txn, "received_by", "embed_policy");
	kumo_txn_set_meta(txn, "original_size", size);
	return KUMO_ACCEPT;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s SPOOL_DIR LISTEN_ADDRESS\n", argv[0]);
		return 2;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	struct kumo_engine_cfg cfg = {.threads = 1, .spool_path = argv[1], .no_delivery = true,
				      .hostname = "embed.example"};
	struct kumo_listener_cfg lc = {.address = argv[2]};
	struct kumo_policy policy = {.on_mail_from = on_mail_from, .on_rcpt_to = on_rcpt_to,
				     .on_data = on_data};
	struct kumo_engine *e;
	int err = kumo_engine_new(&cfg, &e);
	if (err < 0) {
		fprintf(stderr, "engine: %s\n", strerror(-err));
		return 1;
	}
	if ((err = kumo_engine_add_listener(e, &lc)) < 0 ||
	    (err = kumo_engine_set_policy(e, &policy, NULL)) < 0 ||
	    (err = kumo_engine_start(e)) < 0) {
		fprintf(stderr, "start: %s\n", strerror(-err));
		kumo_engine_free(e);
		return 1;
	}
	printf("listening on %s\n", argv[2]);
	fflush(stdout);
	int sig;
	sigwait(&set, &sig);
	kumo_engine_stop(e);
	kumo_engine_wait(e);
	kumo_engine_free(e);
	return 0;
}
