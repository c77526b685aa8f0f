/* SMTP reception on a loop: drives one smtp_server machine per connection with io_uring
 * recv/send, applies the built-in relay policy and the embedder's callbacks, and answers
 * 250 to a message only once the spool reports it durable. */
#include "engine/internal.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "proto/rfc5322.h"

#define MAX_SKIPPED_HEADERS 8

static void pump(struct kumo_loop *l, struct kumo_conn *c);

void *kumo_server_cookie(const struct kumo_loop *l, const struct kumo_conn *c)
{
	uint64_t slot = (uint64_t)(c - l->conns);
	return (void *)(uintptr_t)((slot << 34) | (uint64_t)(c->gen & 0xffffff) << 2 | 2);
}

static uint64_t conn_ud(const struct kumo_loop *l, const struct kumo_conn *c, enum kumo_op op)
{
	return kumo_ud(op, c->gen, (uint32_t)(c - l->conns));
}

/* Returns a slot to the free list once nothing refers to it any more. */
static void maybe_release(struct kumo_loop *l, struct kumo_conn *c)
{
	if (!c->dead || c->inflight || c->wait_spool)
		return;
	kumo_smtp_server_free(c->sm);
	c->sm = NULL;
	kumo_txn_clear(&c->txn);
	c->sbuf.len = 0;
	c->sent = 0;
	c->in_use = false;
	c->dead = false;
	c->next_free = l->free_head;
	l->free_head = (uint32_t)(c - l->conns);
}

static void close_conn(struct kumo_loop *l, struct kumo_conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	c->gen++;
	/* shutdown wakes any recv or send still in flight; their completions are absorbed */
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	l->live_conns--;
	maybe_release(l, c);
}

static void post_send(struct kumo_loop *l, struct kumo_conn *c)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_send(sqe, c->fd, c->sbuf.data + c->sent, c->sbuf.len - c->sent,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, conn_ud(l, c, KUMO_OP_SEND));
	c->send_busy = true;
	c->inflight++;
}

static void post_recv(struct kumo_loop *l, struct kumo_conn *c)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_recv(sqe, c->fd, c->rbuf, KUMO_RBUF_SIZE, 0);
	io_uring_sqe_set_data64(sqe, conn_ud(l, c, KUMO_OP_RECV));
	c->recv_busy = true;
	c->inflight++;
}

/* Appends a reply the machine did not produce (shutdown, overload) and closes after it. */
static void say_and_close(struct kumo_loop *l, struct kumo_conn *c, const char *line)
{
	kumo_buf_puts(&c->sbuf, line);
	c->closing = true;
	pump(l, c);
}

static const char *rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

static bool relay_allowed(const struct kumo_conn *c, const char *rcpt)
{
	const struct kumo_listener *lst = c->lst;
	for (size_t i = 0; i < lst->nrelay; i++)
		if (kumo_cidr_match(&lst->relay[i], (const struct sockaddr *)&c->peer_sa))
			return true;
	const char *dom = rcpt_domain(rcpt);
	if (!*dom)
		return true; /* <postmaster> */
	for (size_t i = 0; i < lst->nlocal; i++)
		if (strcasecmp(lst->local_domains[i], dom) == 0)
			return true;
	return false;
}

static void log_rejection(struct kumo_loop *l, struct kumo_conn *c, const char *command,
			  const char *rcpt, const struct kumo_reply *r)
{
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	struct kumo_log_fields f = {.type = "Rejection", .sender = t ? t->sender : NULL,
				    .recipient = rcpt, .code = r->code,
				    .enhanced = r->enhanced, .content = r->text,
				    .command = command, .peer_addr = c->peer,
				    .peer_name = c->helo, .protocol = "ESMTP"};
	atomic_fetch_add(&l->n_rejected, 1);
	kumo_log_record(l, &f);
}

static void refuse(struct kumo_loop *l, struct kumo_conn *c, const char *command,
		   const char *rcpt, const struct kumo_reply *r)
{
	log_rejection(l, c, command, rcpt, r);
	kumo_smtp_server_reply(c->sm, r->code, r->enhanced, r->text);
}

static void set_reply(struct kumo_reply *r, int code, const char *enh, const char *text)
{
	r->code = code;
	snprintf(r->enhanced, sizeof(r->enhanced), "%s", enh);
	snprintf(r->text, sizeof(r->text), "%s", text);
}

static void on_mail(struct kumo_loop *l, struct kumo_conn *c)
{
	struct kumo_engine *e = l->e;
	struct kumo_reply r = {0};
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	kumo_txn_clear(&c->txn);
	c->txn.smtp = t;
	if (e->policy.on_mail_from &&
	    e->policy.on_mail_from(e->policy_arg, &c->txn, t->sender, &r) != KUMO_ACCEPT) {
		refuse(l, c, "MAIL", NULL, &r);
		return;
	}
	kumo_smtp_server_accept(c->sm);
}

static void on_rcpt(struct kumo_loop *l, struct kumo_conn *c, const struct kumo_smtp_rcpt *rc)
{
	struct kumo_engine *e = l->e;
	struct kumo_reply r = {0};
	c->txn.smtp = kumo_smtp_server_txn(c->sm);
	if (!relay_allowed(c, rc->addr)) {
		set_reply(&r, 550, "5.7.1", "Relaying denied");
		refuse(l, c, "RCPT", rc->addr, &r);
		return;
	}
	if (e->policy.on_rcpt_to &&
	    e->policy.on_rcpt_to(e->policy_arg, &c->txn, rc->addr, &r) != KUMO_ACCEPT) {
		refuse(l, c, "RCPT", rc->addr, &r);
		return;
	}
	kumo_smtp_server_accept(c->sm);
}

/* RFC 5322 date of now, cached per second. */
static const char *rfc5322_date(struct kumo_loop *l)
{
	uint64_t sec = l->now_ms / 1000;
	if (sec != l->date_sec) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(l->date, sizeof(l->date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
		l->date_sec = sec;
	}
	return l->date;
}

static int received_header(struct kumo_loop *l, struct kumo_conn *c, char *buf, size_t cap)
{
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	char hex[KUMO_ID_HEX_LEN + 1];
	kumo_id_hex(&c->env.id, hex);
	const char *proto = t->smtputf8 ? "UTF8SMTP" : c->esmtp ? "ESMTP" : "SMTP";
	int n = snprintf(buf, cap,
			 "Received: from %s ([%s])\r\n\tby %s (kumod) with %s id %s%s%s%s;\r\n"
			 "\t%s\r\n",
			 c->helo[0] ? c->helo : "unknown", c->peer, c->lst->hostname, proto, hex,
			 t->nrcpt == 1 ? "\r\n\tfor <" : "", t->nrcpt == 1 ? t->rcpts[0].addr : "",
			 t->nrcpt == 1 ? ">" : "", rfc5322_date(l));
	return n > 0 && (size_t)n < cap ? n : 0;
}

/* Finds the campaign and tenant headers: their values go to the transaction and their
 * ranges are left out of the stored message. Returns the count of skipped ranges. */
static int take_kumo_headers(struct kumo_loop *l, struct kumo_conn *c, const uint8_t *data,
			     size_t len, size_t skip[][2])
{
	const char *ch = l->e->campaign_header, *th = l->e->tenant_header;
	struct kumo_hdr_field f;
	size_t pos = 0;
	int n = 0;
	while (n < MAX_SKIPPED_HEADERS &&
	       kumo_rfc5322_next_field((const char *)data, len, &pos, &f)) {
		bool is_c = *ch && kumo_rfc5322_name_is(&f, ch);
		bool is_t = *th && kumo_rfc5322_name_is(&f, th);
		if (!is_c && !is_t)
			continue;
		size_t vl = f.value_len;
		while (vl && (f.value[vl - 1] == ' ' || f.value[vl - 1] == '\t'))
			vl--;
		char *v = strndup(f.value, vl);
		/* the first occurrence wins */
		if (v && is_c && !c->txn.campaign)
			kumo_txn_set_campaign(&c->txn, v);
		if (v && is_t && !c->txn.tenant)
			kumo_txn_set_tenant(&c->txn, v);
		free(v);
		skip[n][0] = f.start;
		skip[n][1] = f.end;
		n++;
	}
	return n;
}

static int build_envelope(struct kumo_loop *l, struct kumo_conn *c)
{
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	if (t->nrcpt > c->env_rcpts_cap) {
		struct kumo_env_rcpt *r = realloc(c->env_rcpts, t->nrcpt * sizeof(*r));
		if (!r)
			return -ENOMEM;
		c->env_rcpts = r;
		c->env_rcpts_cap = t->nrcpt;
	}
	for (size_t i = 0; i < t->nrcpt; i++)
		c->env_rcpts[i] = (struct kumo_env_rcpt){.addr = (char *)t->rcpts[i].addr,
							 .notify = t->rcpts[i].notify,
							 .orcpt = (char *)t->rcpts[i].orcpt};
	struct kumo_envelope *env = &c->env;
	memset(env, 0, sizeof(*env));
	kumo_id_next(&l->ids, l->now_ms, &env->id);
	env->sender = (char *)t->sender;
	env->envid = (char *)t->envid;
	env->ret = (uint8_t)t->ret;
	env->body = (uint8_t)t->body;
	env->smtputf8 = t->smtputf8;
	env->tenant = c->txn.tenant;
	env->campaign = c->txn.campaign;
	env->queue = c->txn.queue;
	env->created_ms = env->due_ms = l->now_ms;
	env->nrcpt = t->nrcpt;
	env->rcpts = c->env_rcpts;
	env->nmeta = c->txn.nmeta;
	env->meta = c->txn.meta;
	return 0;
}

static void on_message(struct kumo_loop *l, struct kumo_conn *c)
{
	struct kumo_engine *e = l->e;
	struct kumo_reply r = {0};
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	size_t skip[MAX_SKIPPED_HEADERS][2];
	int nskip = take_kumo_headers(l, c, t->data, t->data_len, skip);
	c->txn.smtp = t;
	c->txn.data = t->data;
	c->txn.data_len = t->data_len;
	if (e->policy.on_data && e->policy.on_data(e->policy_arg, &c->txn, &r) != KUMO_ACCEPT) {
		refuse(l, c, "DATA", NULL, &r);
		kumo_txn_clear(&c->txn);
		return;
	}
	char received[1024];
	struct iovec iov[MAX_SKIPPED_HEADERS + 2];
	int niov = 0;
	if (build_envelope(l, c) < 0)
		goto out_fail;
	iov[niov].iov_base = received;
	iov[niov++].iov_len = (size_t)received_header(l, c, received, sizeof(received));
	size_t from = 0;
	for (int i = 0; i < nskip; i++) {
		iov[niov].iov_base = (void *)(t->data + from);
		iov[niov++].iov_len = skip[i][0] - from;
		from = skip[i][1];
	}
	iov[niov].iov_base = (void *)(t->data + from);
	iov[niov++].iov_len = t->data_len - from;
	c->msg_size = 0;
	for (int i = 0; i < niov; i++)
		c->msg_size += iov[i].iov_len;
	int n = kumo_loop_spool_split(l, &c->env, iov, niov, kumo_server_cookie(l, c), &c->puts,
				      &c->capputs);
	if (n < 0)
		goto out_fail;
	c->nputs = c->puts_pending = (size_t)n;
	c->put_status = 0;
	c->wait_spool = true;
	return;
out_fail:
	set_reply(&r, 452, "4.3.1", "Insufficient system storage");
	refuse(l, c, "DATA", NULL, &r);
	kumo_txn_clear(&c->txn);
}

static void log_receptions(struct kumo_loop *l, struct kumo_conn *c, const char *reply)
{
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	char q[512];
	for (size_t i = 0; i < c->env.nrcpt; i++) {
		kumo_envelope_queue_name(&c->env, c->env.rcpts[i].addr, q, sizeof(q));
		const struct kumo_id *id = &c->env.id;
		for (size_t k = 0; k < c->nputs; k++)
			if (!strcmp(l->queues.queues[c->puts[k].queue].name, q))
				id = &c->puts[k].id;
		struct kumo_log_fields f = {
			.type = "Reception", .id = id, .sender = c->env.sender,
			.recipient = c->env.rcpts[i].addr, .queue = q, .size = c->msg_size,
			.code = 250, .enhanced = "2.0.0", .content = reply,
			.peer_addr = c->peer, .peer_name = c->helo,
			.created_ms = c->env.created_ms, .meta = c->env.meta,
			.nmeta = c->env.nmeta, .protocol = t->smtputf8 ? "UTF8SMTP" : "ESMTP"};
		kumo_log_record(l, &f);
	}
}

/* "OK id=<id>" or, for a message stored once per destination queue, "OK ids=<id>,<id>". */
static void accepted_text(const struct kumo_conn *c, char *text, size_t cap)
{
	size_t len = (size_t)snprintf(text, cap, "OK id%s=", c->nputs > 1 ? "s" : "");
	for (size_t i = 0; i < c->nputs && len + KUMO_ID_HEX_LEN + 2 < cap; i++) {
		if (i)
			text[len++] = ',';
		kumo_id_hex(&c->puts[i].id, text + len);
		len += KUMO_ID_HEX_LEN;
	}
}

static void message_durable(struct kumo_loop *l, struct kumo_conn *c)
{
	char text[256];
	accepted_text(c, text, sizeof(text));
	atomic_fetch_add(&l->n_received, 1);
	for (size_t i = 0; i < c->nputs; i++)
		kumo_delivery_enqueue(l, &c->puts[i], l->now_ms, 0);
	log_receptions(l, c, text);
	if (!c->dead)
		kumo_smtp_server_reply(c->sm, 250, "2.0.0", text);
}

void kumo_server_spool_done(struct kumo_loop *l, struct kumo_conn *c, uint32_t gen,
			    int status)
{
	bool mine = (c->gen & 0xffffff) == gen || (c->dead && ((c->gen - 1) & 0xffffff) == gen);
	if (!c->in_use || !c->wait_spool || !mine)
		return;
	if (status < 0 && !c->put_status)
		c->put_status = status;
	if (--c->puts_pending > 0)
		return;
	c->wait_spool = false;
	if (c->put_status == 0) {
		message_durable(l, c);
	} else {
		struct kumo_reply r;
		set_reply(&r, 452, "4.3.1", "Insufficient system storage");
		kumo_elog(l->e, KUMO_LOG_ERROR, "spool write failed: %s", strerror(-c->put_status));
		log_rejection(l, c, "DATA", NULL, &r);
		if (!c->dead)
			kumo_smtp_server_reply(c->sm, r.code, r.enhanced, r.text);
	}
	kumo_txn_clear(&c->txn);
	if (c->dead)
		maybe_release(l, c);
	else
		pump(l, c);
}

static void handle(struct kumo_loop *l, struct kumo_conn *c, const struct kumo_smtp_ev *ev)
{
	switch (ev->type) {
	case KUMO_SMTP_EV_HELO:
		snprintf(c->helo, sizeof(c->helo), "%s", ev->helo.name);
		c->esmtp = ev->helo.esmtp;
		break;
	case KUMO_SMTP_EV_MAIL:
		on_mail(l, c);
		break;
	case KUMO_SMTP_EV_RCPT:
		on_rcpt(l, c, ev->rcpt);
		break;
	case KUMO_SMTP_EV_MESSAGE:
		on_message(l, c);
		break;
	case KUMO_SMTP_EV_RESET:
		kumo_txn_clear(&c->txn);
		break;
	case KUMO_SMTP_EV_CLOSE:
		c->closing = true;
		break;
	case KUMO_SMTP_EV_NONE:
		break;
	}
}

/* Moves received bytes into the machine and runs it until it needs input or waits for
 * the spool. Returns true if any byte or event was processed. */
static bool run_machine(struct kumo_loop *l, struct kumo_conn *c)
{
	bool progress = false;
	struct kumo_smtp_ev ev;
	while (!c->wait_spool && !c->closing) {
		if (c->rpos < c->rlen) {
			size_t space;
			void *dst = kumo_smtp_server_input_space(c->sm, &space);
			if (dst && space) {
				size_t n = c->rlen - c->rpos < space ? c->rlen - c->rpos : space;
				memcpy(dst, c->rbuf + c->rpos, n);
				kumo_smtp_server_input_commit(c->sm, n);
				c->rpos += n;
				progress = true;
			}
		}
		if (kumo_smtp_server_next(c->sm, l->now_ms, &ev) == KUMO_SMTP_EV_NONE &&
		    ev.type == KUMO_SMTP_EV_NONE) {
			if (c->rpos == c->rlen || c->wait_spool)
				break;
			size_t space;
			if (!kumo_smtp_server_input_space(c->sm, &space) || !space)
				break; /* machine full and idle: cannot happen unless it waits */
			continue;
		}
		progress = true;
		handle(l, c, &ev);
	}
	return progress;
}

/* In-transaction test for graceful shutdown: MAIL given, or a message being spooled. */
static bool in_transaction(struct kumo_conn *c)
{
	const struct kumo_smtp_txn *t = kumo_smtp_server_txn(c->sm);
	return c->wait_spool || (t && t->sender);
}

static void pump(struct kumo_loop *l, struct kumo_conn *c)
{
	if (c->dead)
		return;
	run_machine(l, c);
	size_t olen;
	const char *out = kumo_smtp_server_output(c->sm, &olen);
	if (olen) {
		kumo_buf_append(&c->sbuf, out, olen);
		kumo_smtp_server_output_consumed(c->sm, olen);
	}
	if (l->stopping && !c->closing && !in_transaction(c)) {
		kumo_buf_puts(&c->sbuf, "421 4.3.2 Service shutting down\r\n");
		c->closing = true;
	}
	if (c->sbuf.len > c->sent && !c->send_busy)
		post_send(l, c);
	if (c->closing) {
		if (!c->send_busy && !c->wait_spool)
			close_conn(l, c);
		return;
	}
	if (c->eof && c->rpos == c->rlen && !c->wait_spool) {
		kumo_smtp_server_input_eof(c->sm);
		c->eof = false;
		c->closing = true;
		pump(l, c);
		return;
	}
	if (!c->recv_busy && c->rpos == c->rlen && !c->eof)
		post_recv(l, c);
}

static void recv_done(struct kumo_loop *l, struct kumo_conn *c, int res)
{
	c->recv_busy = false;
	if (res < 0) {
		close_conn(l, c);
		return;
	}
	if (res == 0)
		c->eof = true;
	c->rpos = 0;
	c->rlen = (size_t)res;
	pump(l, c);
}

static void send_done(struct kumo_loop *l, struct kumo_conn *c, int res)
{
	c->send_busy = false;
	if (res <= 0) {
		close_conn(l, c);
		return;
	}
	c->sent += (size_t)res;
	if (c->sent == c->sbuf.len)
		c->sbuf.len = c->sent = 0;
	pump(l, c);
}

void kumo_server_io_done(struct kumo_loop *l, uint64_t ud, int res)
{
	uint32_t slot = kumo_ud_slot(ud);
	if (slot >= l->nconns)
		return;
	struct kumo_conn *c = &l->conns[slot];
	c->inflight--;
	if (c->dead || (c->gen & 0xffffff) != kumo_ud_gen(ud)) {
		if (kumo_ud_op(ud) == KUMO_OP_SEND)
			c->send_busy = false;
		else
			c->recv_busy = false;
		maybe_release(l, c);
		return;
	}
	if (kumo_ud_op(ud) == KUMO_OP_RECV)
		recv_done(l, c, res);
	else
		send_done(l, c, res);
}

static void peer_name(struct kumo_conn *c)
{
	socklen_t sl = sizeof(c->peer_sa);
	c->peer[0] = 0;
	if (getpeername(c->fd, (struct sockaddr *)&c->peer_sa, &sl) < 0)
		return;
	if (c->peer_sa.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&c->peer_sa)->sin_addr, c->peer,
			  sizeof(c->peer));
	else if (c->peer_sa.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->peer_sa)->sin6_addr, c->peer,
			  sizeof(c->peer));
}

static int conn_init(struct kumo_loop *l, struct kumo_conn *c, unsigned li, int fd)
{
	c->lst = &l->e->listeners[li];
	c->fd = fd;
	int one = 1; /* replies leave in whole writes: no Nagle delay */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (!c->rbuf && !(c->rbuf = malloc(KUMO_RBUF_SIZE)))
		return -ENOMEM;
	c->rpos = c->rlen = 0;
	c->sbuf.len = c->sent = 0;
	c->recv_busy = c->send_busy = c->closing = c->wait_spool = c->eof = c->dead = false;
	c->helo[0] = 0;
	c->esmtp = false;
	kumo_txn_clear(&c->txn);
	c->txn.conn = c;
	peer_name(c);
	return kumo_smtp_server_new(&c->lst->smtp, l->now_ms, &c->sm);
}

void kumo_server_accepted(struct kumo_loop *l, unsigned li, int fd)
{
	static const char busy[] = "421 4.3.2 Too many connections, try later\r\n";
	if (l->free_head == UINT32_MAX) {
		(void)!send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		close(fd);
		return;
	}
	struct kumo_conn *c = &l->conns[l->free_head];
	l->free_head = c->next_free;
	c->in_use = true;
	l->live_conns++;
	atomic_fetch_add(&l->n_connections, 1);
	if (conn_init(l, c, li, fd) < 0) {
		c->sm = NULL;
		close_conn(l, c);
		return;
	}
	struct kumo_engine *e = l->e;
	struct kumo_reply r = {0};
	if (e->policy.on_connect &&
	    e->policy.on_connect(e->policy_arg, &c->txn, &r) != KUMO_ACCEPT) {
		log_rejection(l, c, NULL, NULL, &r);
		kumo_smtp_server_refuse(c->sm, r.code, r.enhanced, r.text);
	} else {
		kumo_smtp_server_greet(c->sm);
	}
	pump(l, c);
}

void kumo_server_tick(struct kumo_loop *l)
{
	for (uint32_t i = 0; i < l->nconns; i++) {
		struct kumo_conn *c = &l->conns[i];
		if (!c->in_use || c->dead)
			continue;
		uint64_t d = kumo_smtp_server_deadline(c->sm);
		if (d && l->now_ms >= d) {
			kumo_smtp_server_tick(c->sm, l->now_ms);
			pump(l, c);
		}
	}
}

void kumo_server_shutdown(struct kumo_loop *l, bool force)
{
	for (uint32_t i = 0; i < l->nconns; i++) {
		struct kumo_conn *c = &l->conns[i];
		if (!c->in_use || c->dead)
			continue;
		if (force)
			say_and_close(l, c, "421 4.3.2 Service shutting down\r\n");
		else
			pump(l, c);
		if (force && !c->dead && !c->wait_spool)
			close_conn(l, c);
	}
}
