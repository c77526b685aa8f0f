/* One io_uring loop per thread: the ring, its listeners (SO_REUSEPORT, multishot
 * accept), a once-a-second timer, an eventfd for stop requests and injected messages,
 * and the completion dispatch (a single switch on the op code of user_data). */
#include "engine/internal.h"
#include "util/net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define RING_ENTRIES 4096

uint64_t kumo_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct io_uring_sqe *kumo_loop_sqe(struct kumo_loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		l->sq_pending = 0;
		sqe = io_uring_get_sqe(&l->ring);
	}
	l->sq_pending++;
	return sqe; /* never NULL after a submit: the SQ ring was just emptied */
}

static void arm_accept(struct kumo_loop *l, unsigned i)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_multishot_accept(sqe, l->listen_fds[i], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_ACCEPT, 0, i));
	l->accept_armed[i] = true;
}

static struct __kernel_timespec tick_ts = {.tv_sec = 1, .tv_nsec = 0};

static void arm_tick(struct kumo_loop *l)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_timeout(sqe, &tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_TICK, 0, 0));
}

static void arm_wake(struct kumo_loop *l)
{
	struct io_uring_sqe *sqe = kumo_loop_sqe(l);
	io_uring_prep_read(sqe, l->wake_fd, &l->wake_val, sizeof(l->wake_val), 0);
	io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_WAKE, 0, 0));
}

static int init_conns(struct kumo_loop *l, unsigned n)
{
	l->conns = calloc(n, sizeof(*l->conns));
	if (!l->conns)
		return -ENOMEM;
	l->nconns = n;
	for (uint32_t i = 0; i < n; i++) {
		l->conns[i].fd = -1;
		l->conns[i].next_free = i + 1 < n ? i + 1 : UINT32_MAX;
	}
	l->free_head = 0;
	return 0;
}

int kumo_loop_listen(struct kumo_loop *l)
{
	struct kumo_engine *e = l->e;
	l->listen_fds = calloc(e->nlisteners ? e->nlisteners : 1, sizeof(int));
	l->accept_armed = calloc(e->nlisteners ? e->nlisteners : 1, sizeof(bool));
	if (!l->listen_fds || !l->accept_armed)
		return -ENOMEM;
	for (size_t i = 0; i < e->nlisteners; i++)
		l->listen_fds[i] = -1;
	for (size_t i = 0; i < e->nlisteners; i++) {
		int fd = kumo_listen_socket(&e->listeners[i].addr, e->listeners[i].addrlen);
		if (fd < 0) {
			kumo_elog(e, KUMO_LOG_ERROR, "cannot listen on %s: %s",
				  e->listeners[i].address, strerror(-fd));
			return fd;
		}
		l->listen_fds[i] = fd;
	}
	return 0;
}

int kumo_loop_init(struct kumo_loop *l, struct kumo_engine *e, unsigned index)
{
	int err;
	l->e = e;
	l->index = index;
	l->log_fd = -1;
	l->wake_fd = -1;
	pthread_mutex_init(&l->inject_lock, NULL);
	kumo_id_gen_init(&l->ids, (uint16_t)index, ((uint64_t)getpid() << 32) ^ kumo_now_ms());
	err = io_uring_queue_init(RING_ENTRIES, &l->ring, 0);
	if (err < 0) {
		kumo_elog(e, KUMO_LOG_ERROR,
			  "io_uring is unavailable (%s): libkumo needs Linux 5.19 or later "
			  "with io_uring enabled",
			  strerror(-err));
		return err;
	}
	l->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (l->wake_fd < 0)
		return -errno;
	err = init_conns(l, e->cfg.max_connections ? e->cfg.max_connections : 4096);
	if (err < 0)
		return err;
	err = kumo_queues_init(&l->queues, kumo_now_ms());
	if (err < 0)
		return err;
	if ((err = kumo_log_open(l)) < 0)
		return err;
	l->conf = kumo_conf_get(e);
	return kumo_delivery_init(l);
}

void kumo_loop_fini(struct kumo_loop *l)
{
	if (l->listen_fds) {
		for (size_t i = 0; i < l->e->nlisteners; i++)
			if (l->listen_fds[i] >= 0)
				close(l->listen_fds[i]);
	}
	free(l->listen_fds);
	free(l->accept_armed);
	for (uint32_t i = 0; l->conns && i < l->nconns; i++) {
		struct kumo_conn *c = &l->conns[i];
		if (c->fd >= 0)
			close(c->fd);
		kumo_smtp_server_free(c->sm);
		free(c->rbuf);
		free(c->env_rcpts);
		free(c->puts);
		kumo_buf_free(&c->sbuf);
		kumo_txn_clear(&c->txn);
	}
	free(l->conns);
	kumo_delivery_fini(l);
	kumo_conf_put(l->e, l->conf);
	l->conf = NULL;
	kumo_log_close(l);
	if (l->spool)
		kumo_spool_close(l->spool);
	kumo_queues_free(&l->queues);
	kumo_buf_free(&l->scratch);
	if (l->wake_fd >= 0) {
		close(l->wake_fd);
		io_uring_queue_exit(&l->ring);
	}
	pthread_mutex_destroy(&l->inject_lock);
	free(l->kicks);
}

/* Encodes the envelope and appends {envelope, data} to the spool's pending batch. */
int kumo_loop_spool_message(struct kumo_loop *l, const struct kumo_envelope *env,
			    const struct iovec *iov, int niov, void *cookie,
			    struct kumo_spool_loc *loc)
{
	size_t need = kumo_envelope_encode(env, (uint8_t *)l->scratch.data, l->scratch.cap);
	if (need > l->scratch.cap) {
		l->scratch.len = 0;
		if (kumo_buf_reserve(&l->scratch, need) < 0)
			return -ENOMEM;
		kumo_envelope_encode(env, (uint8_t *)l->scratch.data, l->scratch.cap);
	}
	return kumo_spool_put(l->spool, &env->id, (const uint8_t *)l->scratch.data, need, iov,
			      niov, cookie, loc);
}

static int put_group(struct kumo_loop *l, const struct kumo_envelope *env, const char *qname,
		     const struct iovec *iov, int niov, void *cookie, struct kumo_put *p)
{
	uint32_t q = kumo_queue_intern(&l->queues, qname);
	if (q == KUMO_NONE)
		return -ENOMEM;
	p->queue = q;
	p->id = env->id;
	return kumo_loop_spool_message(l, env, iov, niov, cookie, &p->loc);
}

/* Recipients with the queue name of recipient i, not yet taken, moved into sub. */
static size_t take_group(const struct kumo_envelope *env, char (*names)[256], uint8_t *used,
			 size_t i, struct kumo_env_rcpt *sub)
{
	size_t k = 0;
	for (size_t j = i; j < env->nrcpt; j++) {
		if (used[j] || strcmp(names[i], names[j]) != 0)
			continue;
		sub[k++] = env->rcpts[j];
		used[j] = 1;
	}
	return k;
}

int kumo_loop_spool_split(struct kumo_loop *l, const struct kumo_envelope *env,
			  const struct iovec *iov, int niov, void *cookie, struct kumo_put **puts,
			  size_t *cap)
{
	size_t n = env->nrcpt;
	if (n == 0)
		return -EINVAL;
	if (n > *cap) {
		struct kumo_put *p = realloc(*puts, n * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*puts = p;
		*cap = n;
	}
	char (*names)[256] = malloc(n * sizeof(*names));
	uint8_t *used = calloc(n, 1);
	struct kumo_env_rcpt *sub = malloc(n * sizeof(*sub));
	int groups = 0, err = names && used && sub ? 0 : -ENOMEM;
	for (size_t i = 0; !err && i < n; i++)
		kumo_envelope_queue_name(env, env->rcpts[i].addr, names[i], sizeof(names[i]));
	for (size_t i = 0; !err && i < n; i++) {
		if (used[i])
			continue;
		struct kumo_envelope e = *env;
		e.rcpts = sub;
		e.nrcpt = take_group(env, names, used, i, sub);
		if (groups > 0)
			kumo_id_next(&l->ids, l->now_ms, &e.id);
		err = put_group(l, &e, names[i], iov, niov, cookie, &(*puts)[groups]);
		groups += err ? 0 : 1;
	}
	free(names);
	free(used);
	free(sub);
	return err ? err : groups;
}

/* Spool cookies: NULL for records nobody waits for; a connection is {slot, gen} shifted
 * left twice with bit 1 set; an injected message is its (16-byte aligned) pointer with
 * the low bit set; a message the engine made (a DSN) is a malloc'd struct kumo_put with
 * both low bits set, queued once durable. */
static void spool_done(void *cookie, int status, void *arg);

static void inject_finish(struct kumo_loop *l, struct kumo_inject *in, int status)
{
	char hex[KUMO_ID_HEX_LEN + 1];
	kumo_id_hex(&in->env.id, hex);
	for (size_t i = 0; status == 0 && i < in->nputs; i++)
		kumo_delivery_enqueue(l, &in->puts[i], l->now_ms, 0);
	for (size_t i = 0; status == 0 && i < in->env.nrcpt; i++) {
		char q[512];
		kumo_envelope_queue_name(&in->env, in->env.rcpts[i].addr, q, sizeof(q));
		struct kumo_log_fields f = {
			.type = "Reception", .id = &in->env.id, .sender = in->env.sender,
			.recipient = in->env.rcpts[i].addr, .queue = q, .size = in->data_len,
			.code = 250, .enhanced = "2.0.0", .content = "OK", .peer_addr = "",
			.created_ms = in->env.created_ms, .protocol = "Inject"};
		kumo_log_record(l, &f);
	}
	if (status == 0)
		atomic_fetch_add(&l->n_received, 1);
	if (in->done)
		in->done(in->arg, status, status == 0 ? hex : NULL);
	free(in->strings);
	free(in->env.rcpts);
	free(in->data);
	free(in->puts);
	free(in);
}

void kumo_loop_kick(struct kumo_loop *l, struct kumo_node_slot *s)
{
	pthread_mutex_lock(&l->inject_lock);
	bool known = false;
	for (size_t i = 0; i < l->nkicks; i++)
		known |= l->kicks[i] == s;
	if (!known && l->nkicks == l->capkicks) {
		size_t cap = l->capkicks ? l->capkicks * 2 : 16;
		struct kumo_node_slot **k = realloc(l->kicks, cap * sizeof(*k));
		if (k) {
			l->kicks = k;
			l->capkicks = cap;
		}
	}
	if (!known && l->nkicks < l->capkicks)
		l->kicks[l->nkicks++] = s;
	pthread_mutex_unlock(&l->inject_lock);
	uint64_t one = 1;
	(void)!write(l->wake_fd, &one, sizeof(one));
}

/* The node-wide slots freed for this loop since its last wake-up. */
static void take_kicks(struct kumo_loop *l)
{
	struct kumo_node_slot *s[64];
	size_t n;
	do {
		pthread_mutex_lock(&l->inject_lock);
		n = l->nkicks < 64 ? l->nkicks : 64;
		if (n)
			memcpy(s, l->kicks + l->nkicks - n, n * sizeof(*s));
		l->nkicks -= n;
		pthread_mutex_unlock(&l->inject_lock);
		for (size_t i = 0; i < n; i++)
			kumo_delivery_slot_freed(l, s[i]);
	} while (n == 64);
}

static void take_injected(struct kumo_loop *l)
{
	pthread_mutex_lock(&l->inject_lock);
	struct kumo_inject *in = l->inject_head;
	l->inject_head = l->inject_tail = NULL;
	pthread_mutex_unlock(&l->inject_lock);
	while (in) {
		struct kumo_inject *next = in->next;
		kumo_id_next(&l->ids, l->now_ms, &in->env.id);
		in->env.created_ms = in->env.due_ms = l->now_ms;
		struct iovec iov = {.iov_base = in->data, .iov_len = in->data_len};
		int n = kumo_loop_spool_split(l, &in->env, &iov, 1, (void *)((uintptr_t)in | 1),
					      &in->puts, &in->capputs);
		if (n < 0)
			inject_finish(l, in, n);
		else
			in->nputs = in->puts_pending = (size_t)n;
		in = next;
	}
}

static void spool_done(void *cookie, int status, void *arg)
{
	struct kumo_loop *l = arg;
	uintptr_t v = (uintptr_t)cookie;
	if (!cookie) {
		if (status < 0)
			kumo_elog(l->e, KUMO_LOG_ERROR, "spool update failed: %s", strerror(-status));
		return;
	}
	if ((v & 3) == 3) {
		struct kumo_put *p = (struct kumo_put *)(v & ~(uintptr_t)3);
		if (status == 0)
			kumo_delivery_enqueue(l, p, l->now_ms, 0);
		else
			kumo_elog(l->e, KUMO_LOG_ERROR, "spool write of a notification failed: %s",
				  strerror(-status));
		free(p);
		return;
	}
	if (v & 1) {
		struct kumo_inject *in = (struct kumo_inject *)(v & ~(uintptr_t)1);
		in->put_status = in->put_status ? in->put_status : status;
		if (--in->puts_pending == 0)
			inject_finish(l, in, in->put_status);
		return;
	}
	uint32_t slot = (uint32_t)(v >> 34), gen = (uint32_t)(v >> 2) & 0xffffff;
	if (slot < l->nconns)
		kumo_server_spool_done(l, &l->conns[slot], gen, status);
}

void kumo_loop_spool_done(void *cookie, int status, void *arg)
{
	spool_done(cookie, status, arg);
}

static void begin_stop(struct kumo_loop *l)
{
	if (l->stopping)
		return;
	l->stopping = true;
	uint32_t grace = l->e->cfg.shutdown_grace_ms ? l->e->cfg.shutdown_grace_ms : 10000;
	l->stop_deadline_ms = l->now_ms + grace;
	for (size_t i = 0; i < l->e->nlisteners; i++) {
		if (!l->accept_armed[i])
			continue;
		struct io_uring_sqe *sqe = kumo_loop_sqe(l);
		io_uring_prep_cancel64(sqe, kumo_ud(KUMO_OP_ACCEPT, 0, (uint32_t)i), 0);
		io_uring_sqe_set_data64(sqe, kumo_ud(KUMO_OP_CANCEL, 0, 0));
	}
	kumo_server_shutdown(l, false);
	kumo_delivery_shutdown(l, false);
}

static void on_accept(struct kumo_loop *l, struct io_uring_cqe *cqe)
{
	unsigned i = kumo_ud_slot(cqe->user_data);
	if (!(cqe->flags & IORING_CQE_F_MORE))
		l->accept_armed[i] = false;
	if (cqe->res >= 0) {
		if (l->stopping)
			close(cqe->res);
		else
			kumo_server_accepted(l, i, cqe->res);
	} else if (cqe->res != -ECANCELED && cqe->res != -EINTR) {
		kumo_elog(l->e, KUMO_LOG_WARN, "accept on %s: %s", l->e->listeners[i].address,
			  strerror(-cqe->res));
	}
	if (!l->accept_armed[i] && !l->stopping && cqe->res != -ECANCELED)
		arm_accept(l, i);
}

static void dispatch(struct kumo_loop *l, struct io_uring_cqe *cqe)
{
	switch (kumo_ud_op(cqe->user_data)) {
	case KUMO_OP_ACCEPT:
		on_accept(l, cqe);
		break;
	case KUMO_OP_RECV:
	case KUMO_OP_SEND:
		kumo_server_io_done(l, cqe->user_data, cqe->res);
		break;
	case KUMO_OP_TICK:
		kumo_server_tick(l);
		kumo_delivery_tick(l);
		if (l->stopping && l->now_ms >= l->stop_deadline_ms) {
			kumo_server_shutdown(l, true);
			kumo_delivery_shutdown(l, true);
		}
		arm_tick(l);
		break;
	case KUMO_OP_OCONNECT:
	case KUMO_OP_ORECV:
	case KUMO_OP_OSEND:
	case KUMO_OP_OREAD:
		kumo_delivery_io_done(l, cqe->user_data, cqe->res);
		break;
	case KUMO_OP_STIMER:
		kumo_delivery_timer_done(l, cqe->user_data);
		break;
	case KUMO_OP_THROTTLE:
		kumo_delivery_throttle_done(l, cqe->user_data, cqe->res);
		break;
	case KUMO_OP_DNS:
		kumo_delivery_dns_done(l, cqe->user_data, cqe->res);
		break;
	case KUMO_OP_WAKE:
		take_injected(l);
		take_kicks(l);
		if (atomic_load(&l->stop_requested))
			begin_stop(l);
		arm_wake(l);
		break;
	case KUMO_OP_SPOOL_WRITE:
	case KUMO_OP_SPOOL_SYNC:
		kumo_spool_complete(l->spool, kumo_ud_op(cqe->user_data) == KUMO_OP_SPOOL_SYNC,
				    cqe->res, spool_done, l);
		break;
	case KUMO_OP_LOG_WRITE:
		kumo_log_write_done(l, cqe->res);
		break;
	case KUMO_OP_CANCEL:
		break;
	}
}

/* After each batch of completions: start the next group commit and log write. */
static void after_batch(struct kumo_loop *l)
{
	if (kumo_spool_submit(l->spool, &l->ring, kumo_ud(KUMO_OP_SPOOL_WRITE, 0, 0),
			      kumo_ud(KUMO_OP_SPOOL_SYNC, 0, 0)) > 0) {
		atomic_fetch_add(&l->n_batches, 1);
		l->sq_pending += 2;
	}
	kumo_log_flush(l);
}

static bool finished(const struct kumo_loop *l)
{
	return l->stopping && l->live_conns == 0 && kumo_delivery_idle(l) &&
	       kumo_spool_busy(l->spool) == 0 &&
	       !l->log_busy && l->log_pending.len == 0 && l->inject_head == NULL;
}

void *kumo_loop_main(void *arg)
{
	struct kumo_loop *l = arg;
	l->now_ms = kumo_now_ms();
	for (size_t i = 0; i < l->e->nlisteners; i++)
		arm_accept(l, (unsigned)i);
	arm_tick(l);
	arm_wake(l);
	if (atomic_load(&l->stop_requested))
		begin_stop(l);
	while (!finished(l)) {
		int err = io_uring_submit_and_wait(&l->ring, 1);
		l->sq_pending = 0;
		if (err < 0 && err != -EINTR && err != -EBUSY && err != -EAGAIN) {
			kumo_elog(l->e, KUMO_LOG_ERROR, "io_uring_submit_and_wait: %s",
				  strerror(-err));
			break;
		}
		l->now_ms = kumo_now_ms();
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&l->ring, head, cqe)
		{
			dispatch(l, cqe);
			n++;
		}
		io_uring_cq_advance(&l->ring, n);
		after_batch(l);
	}
	return NULL;
}
