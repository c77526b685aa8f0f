/* The embedding surface (include/kumo/kumo.h): engine creation with spool recovery,
 * listeners, policy, threads (one loop each), graceful stop, injection from code. */
#include "engine/internal.h"
#include "engine/shaping.h"
#include "util/net.h"

#include <errno.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kumo_elog(const struct kumo_engine *e, enum kumo_log_level lvl, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (e->cfg.log_fn) {
		e->cfg.log_fn(e->cfg.log_arg, lvl, line);
		return;
	}
	static const char *const names[] = {"error", "warn", "info", "debug"};
	fprintf(stderr, "libkumo %s: %s\n", names[lvl & 3], line);
}

static char *dup_or(const char *s, const char *fallback)
{
	return strdup(s ? s : fallback);
}

static int copy_cfg(struct kumo_engine *e, const struct kumo_engine_cfg *cfg)
{
	char host[256] = "localhost";
	gethostname(host, sizeof(host) - 1);
	e->cfg = *cfg;
	e->spool_path = strdup(cfg->spool_path);
	e->log_path = cfg->log_path ? strdup(cfg->log_path) : NULL;
	e->hostname = dup_or(cfg->hostname, host);
	e->nodeid = dup_or(cfg->nodeid, e->hostname ? e->hostname : host);
	e->campaign_header = dup_or(cfg->campaign_header, "X-Kumo-Campaign");
	e->smart_host = cfg->smart_host ? strdup(cfg->smart_host) : NULL;
	e->dns_servers = cfg->dns_servers ? strdup(cfg->dns_servers) : NULL;
	e->ehlo_name = cfg->ehlo_name ? strdup(cfg->ehlo_name) : NULL;
	e->redis_url = cfg->redis_url ? strdup(cfg->redis_url) : NULL;
	e->cfg.redis_url = e->redis_url;
	e->cfg.smart_host = e->smart_host;
	e->cfg.dns_servers = e->dns_servers;
	e->cfg.ehlo_name = e->ehlo_name;
	if (cfg->smart_host && kumo_address_check(cfg->smart_host) < 0)
		return -EINVAL;
	e->tenant_header = dup_or(cfg->tenant_header, "X-Kumo-Tenant");
	if (!e->spool_path || (cfg->log_path && !e->log_path) || !e->hostname || !e->nodeid ||
	    !e->campaign_header || !e->tenant_header)
		return -ENOMEM;
	return 0;
}

struct recover_ctx {
	struct kumo_loop *l;
	long failed;
};

static void recovered_one(const struct kumo_id *id, const uint8_t *env, size_t env_len,
			  const struct kumo_spool_loc *loc, void *arg)
{
	struct recover_ctx *rc = arg;
	struct kumo_envelope e;
	if (kumo_envelope_decode(env, env_len, &e) < 0) {
		rc->failed++;
		return;
	}
	e.id = *id;
	char qname[512] = "";
	for (size_t i = 0; i < e.nrcpt && !qname[0]; i++)
		if (e.rcpts[i].state == KUMO_RCPT_PENDING)
			kumo_envelope_queue_name(&e, e.rcpts[i].addr, qname, sizeof(qname));
	if (!qname[0] && e.nrcpt) /* all done: delivery deletes it at once */
		kumo_envelope_queue_name(&e, e.rcpts[0].addr, qname, sizeof(qname));
	struct kumo_put p = {.id = *id, .loc = *loc,
			     .queue = kumo_queue_intern(&rc->l->queues, qname)};
	if (p.queue == KUMO_NONE || kumo_delivery_enqueue(rc->l, &p, e.due_ms, e.attempts) < 0)
		rc->failed++;
	kumo_envelope_release(&e);
}

static int open_spool(struct kumo_engine *e, struct kumo_loop *l)
{
	struct kumo_spool_cfg sc = {.path = e->spool_path, .shard = (uint16_t)l->index};
	int err = kumo_spool_open(&sc, &l->spool);
	if (err < 0) {
		kumo_elog(e, KUMO_LOG_ERROR, "spool %s shard %u: %s", e->spool_path, l->index,
			  strerror(-err));
		return err;
	}
	uint64_t t0 = kumo_now_ms();
	struct recover_ctx rc = {.l = l};
	long n = kumo_spool_recover(l->spool, recovered_one, &rc);
	if (n < 0) {
		kumo_elog(e, KUMO_LOG_ERROR, "spool recovery of shard %u: %s", l->index,
			  strerror((int)-n));
		return (int)n;
	}
	uint64_t ms = kumo_now_ms() - t0;
	kumo_elog(e, KUMO_LOG_INFO, "spool shard %u: recovered %ld messages in %llu ms (%.0f/s)%s",
		  l->index, n, (unsigned long long)ms, ms ? n * 1000.0 / (double)ms : (double)n,
		  rc.failed ? ", some envelopes unreadable" : "");
	e->recovered += (uint64_t)(n - rc.failed);
	return 0;
}

/* Shards left by a run with more threads than this one: refuse to start rather than
 * leave their messages unseen. */
static int check_orphan_shards(struct kumo_engine *e)
{
	DIR *d = opendir(e->spool_path);
	if (!d)
		return 0;
	struct dirent *de;
	int err = 0;
	while ((de = readdir(d))) {
		char *end;
		unsigned long shard = strtoul(de->d_name, &end, 10);
		if (end == de->d_name || *end || shard < e->nloops)
			continue;
		kumo_elog(e, KUMO_LOG_ERROR,
			  "spool %s has shard %lu but only %u threads are configured: run with "
			  "threads >= %lu so its messages are recovered",
			  e->spool_path, shard, e->nloops, shard + 1);
		err = -EEXIST;
	}
	closedir(d);
	return err;
}

int kumo_engine_new(const struct kumo_engine_cfg *cfg, struct kumo_engine **out)
{
	int err = -EINVAL;
	if (!cfg || !cfg->spool_path || !out)
		return -EINVAL;
	struct kumo_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	if ((err = copy_cfg(e, cfg)) < 0)
		goto out_free;
	char msg[512] = "";
	if ((err = kumo_conf_init(e, cfg->shaping_files, cfg->nshaping_files, msg,
				  sizeof(msg))) < 0) {
		kumo_elog(e, KUMO_LOG_ERROR, "shaping: %s", msg);
		goto out_free;
	}
	e->cfg.shaping_files = NULL;
	e->cfg.nshaping_files = 0;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	e->nloops = cfg->threads ? cfg->threads : (unsigned)(cores > 0 ? cores : 1);
	kumo_node_limits_init(&e->node_limits, e->nloops);
	e->node_limits_ready = true;
	if (mkdir(e->spool_path, 0750) < 0 && errno != EEXIST) {
		err = -errno;
		kumo_elog(e, KUMO_LOG_ERROR, "spool directory %s: %s", e->spool_path,
			  strerror(errno));
		goto out_free;
	}
	if ((err = check_orphan_shards(e)) < 0)
		goto out_free;
	e->loops = calloc(e->nloops, sizeof(*e->loops));
	if (!e->loops) {
		err = -ENOMEM;
		goto out_free;
	}
	for (unsigned i = 0; i < e->nloops; i++) {
		if ((err = kumo_loop_init(&e->loops[i], e, i)) < 0 ||
		    (err = open_spool(e, &e->loops[i])) < 0)
			goto out_free;
	}
	*out = e;
	return 0;
out_free:
	kumo_engine_free(e);
	return err;
}

int kumo_address_check(const char *address)
{
	struct sockaddr_storage ss;
	socklen_t len;
	return kumo_parse_address(address, &ss, &len);
}

int kumo_cidr_check(const char *cidr)
{
	struct kumo_cidr c;
	return kumo_cidr_parse(cidr, &c);
}

static int copy_relay(struct kumo_listener *lst, const struct kumo_listener_cfg *cfg)
{
	static const char *const loopback[] = {"127.0.0.0/8", "::1/128"};
	const char *const *list = cfg->relay_hosts ? cfg->relay_hosts : loopback;
	size_t n = cfg->relay_hosts ? cfg->nrelay_hosts : 2;
	lst->relay = calloc(n ? n : 1, sizeof(*lst->relay));
	if (!lst->relay)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (kumo_cidr_parse(list[i], &lst->relay[i]) < 0)
			return -EINVAL;
	lst->nrelay = n;
	return 0;
}

static int copy_domains(struct kumo_listener *lst, const struct kumo_listener_cfg *cfg)
{
	lst->local_domains = calloc(cfg->nlocal_domains ? cfg->nlocal_domains : 1,
				    sizeof(char *));
	if (!lst->local_domains)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->nlocal_domains; i++) {
		if (!(lst->local_domains[i] = strdup(cfg->local_domains[i])))
			return -ENOMEM;
		lst->nlocal = i + 1;
	}
	return 0;
}

static void free_listener(struct kumo_listener *lst)
{
	free(lst->address);
	free(lst->hostname);
	free(lst->relay);
	for (size_t i = 0; i < lst->nlocal; i++)
		free(lst->local_domains[i]);
	free(lst->local_domains);
}

int kumo_engine_add_listener(struct kumo_engine *e, const struct kumo_listener_cfg *cfg)
{
	if (e->started || !cfg || !cfg->address)
		return -EINVAL;
	struct kumo_listener *arr = realloc(e->listeners, (e->nlisteners + 1) * sizeof(*arr));
	if (!arr)
		return -ENOMEM;
	e->listeners = arr;
	struct kumo_listener *lst = &arr[e->nlisteners];
	memset(lst, 0, sizeof(*lst));
	int err = kumo_parse_address(cfg->address, &lst->addr, &lst->addrlen);
	if (err < 0)
		return err;
	lst->address = strdup(cfg->address);
	lst->hostname = strdup(cfg->hostname ? cfg->hostname : e->hostname);
	if (!lst->address || !lst->hostname)
		err = -ENOMEM;
	if (!err)
		err = copy_relay(lst, cfg);
	if (!err)
		err = copy_domains(lst, cfg);
	if (err < 0) {
		free_listener(lst);
		return err;
	}
	lst->smtp.hostname = lst->hostname;
	lst->smtp.limits = (struct kumo_smtp_limits){
		.max_line = cfg->max_line, .max_recipients = cfg->max_recipients,
		.max_message_size = cfg->max_message_size, .max_messages = cfg->max_messages,
		.command_timeout_ms = cfg->command_timeout_ms,
		.data_timeout_ms = cfg->data_timeout_ms};
	kumo_smtp_limits_defaults(&lst->smtp.limits);
	lst->smtp.bare_eol = cfg->bare_eol == KUMO_BARE_EOL_NORMALIZE
				     ? KUMO_SMTP_BARE_EOL_NORMALIZE
				     : KUMO_SMTP_BARE_EOL_REJECT;
	e->nlisteners++;
	return 0;
}

int kumo_engine_add_route(struct kumo_engine *e, const char *domain, const char *host_port)
{
	if (e->started || !domain || !*domain || !host_port || kumo_address_check(host_port) < 0)
		return -EINVAL;
	struct kumo_route *r = realloc(e->routes, (e->nroutes + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	e->routes = r;
	r[e->nroutes].domain = strdup(domain);
	r[e->nroutes].host_port = strdup(host_port);
	if (!r[e->nroutes].domain || !r[e->nroutes].host_port) {
		free(r[e->nroutes].domain);
		free(r[e->nroutes].host_port);
		return -ENOMEM;
	}
	e->nroutes++;
	return 0;
}

static int find_source(const struct kumo_engine *e, const char *name)
{
	for (size_t i = 0; i < e->nsources; i++)
		if (strcmp(e->sources[i].name, name) == 0)
			return (int)i;
	return -1;
}

static int find_pool(const struct kumo_engine *e, const char *name)
{
	for (size_t i = 0; i < e->npools; i++)
		if (strcmp(e->pools[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* "ip" (port 0) into ss; NULL leaves it unused. */
static int parse_ip(const char *ip, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (!ip)
		return 0;
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &in->sin_addr) == 1)
		in->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
		in6->sin6_family = AF_INET6;
	else
		return -EINVAL;
	return 0;
}

int kumo_engine_add_source(struct kumo_engine *e, const struct kumo_source_cfg *cfg)
{
	if (e->started || !cfg || !cfg->name || !*cfg->name || find_source(e, cfg->name) >= 0)
		return -EINVAL;
	struct kumo_source src = {0};
	socklen_t len;
	if (parse_ip(cfg->source_address, &src.addr) < 0 ||
	    parse_ip(cfg->socks5_proxy_source_address, &src.socks5_source) < 0 ||
	    parse_ip(cfg->ha_proxy_source_address, &src.ha_source) < 0 ||
	    (cfg->socks5_proxy_server && kumo_parse_address(cfg->socks5_proxy_server, &src.socks5,
						       &len) < 0) ||
	    (cfg->ha_proxy_server && kumo_parse_address(cfg->ha_proxy_server, &src.ha, &len) < 0) ||
	    (cfg->ha_proxy_server && !cfg->ha_proxy_source_address) ||
	    (cfg->ha_proxy_server && cfg->socks5_proxy_server) ||
	    (cfg->socks5_proxy_username && !cfg->socks5_proxy_password))
		return -EINVAL;
	if (cfg->socks5_proxy_username) {
		src.socks5_user = strdup(cfg->socks5_proxy_username);
		src.socks5_pass = strdup(cfg->socks5_proxy_password);
		if (!src.socks5_user || !src.socks5_pass) {
			free(src.socks5_user);
			free(src.socks5_pass);
			return -ENOMEM;
		}
	}
	struct kumo_source *a = realloc(e->sources, (e->nsources + 1) * sizeof(*a));
	if (!a)
		return -ENOMEM;
	e->sources = a;
	src.name = strdup(cfg->name);
	src.ehlo_name = cfg->ehlo_name ? strdup(cfg->ehlo_name) : NULL;
	if (!src.name || (cfg->ehlo_name && !src.ehlo_name)) {
		free(src.name);
		free(src.ehlo_name);
		return -ENOMEM;
	}
	a[e->nsources++] = src;
	return 0;
}

int kumo_engine_add_pool(struct kumo_engine *e, const char *name,
			 const struct kumo_pool_entry *entries, size_t n)
{
	if (e->started || !name || !n || find_pool(e, name) >= 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!entries[i].source || find_source(e, entries[i].source) < 0)
			return -ENOENT;
	struct kumo_pool *a = realloc(e->pools, (e->npools + 1) * sizeof(*a));
	if (!a)
		return -ENOMEM;
	e->pools = a;
	struct kumo_pool p = {.name = strdup(name), .sources = calloc(n, sizeof(uint32_t)),
			      .weights = calloc(n, sizeof(unsigned)), .n = n};
	if (!p.name || !p.sources || !p.weights) {
		free(p.name);
		free(p.sources);
		free(p.weights);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		p.sources[i] = (uint32_t)find_source(e, entries[i].source);
		p.weights[i] = entries[i].weight ? entries[i].weight : 1;
	}
	a[e->npools++] = p;
	return 0;
}

int kumo_engine_set_tenant_pool(struct kumo_engine *e, const char *tenant, const char *pool)
{
	return kumo_engine_set_queue_pool(e, KUMO_POOL_TENANT, tenant, pool);
}

int kumo_engine_set_queue_pool(struct kumo_engine *e, enum kumo_pool_match match,
			       const char *tenant, const char *pool)
{
	int pi = pool ? find_pool(e, pool) : -1;
	if (match > KUMO_POOL_DOMAIN)
		return -EINVAL;
	if (e->started || pi < 0)
		return -ENOENT;
	struct kumo_tenant_pool *a =
		realloc(e->tenant_pools, (e->ntenant_pools + 1) * sizeof(*a));
	if (!a)
		return -ENOMEM;
	e->tenant_pools = a;
	a[e->ntenant_pools].tenant = tenant ? strdup(tenant) : NULL;
	if (tenant && !a[e->ntenant_pools].tenant)
		return -ENOMEM;
	a[e->ntenant_pools].match = (int)match;
	a[e->ntenant_pools++].pool = (uint32_t)pi;
	return 0;
}

int kumo_engine_set_policy(struct kumo_engine *e, const struct kumo_policy *p, void *arg)
{
	if (e->started)
		return -EBUSY;
	e->policy = p ? *p : (struct kumo_policy){0};
	e->policy_arg = arg;
	return 0;
}

/* Every loop binds each listener with SO_REUSEPORT, which would also let it share the
 * port with another process: a probe bind without it refuses an address in use. */
static int probe_listeners(struct kumo_engine *e)
{
	for (size_t i = 0; i < e->nlisteners; i++) {
		const struct kumo_listener *lst = &e->listeners[i];
		int fd = socket(lst->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
		if (fd < 0)
			return -errno;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		int err = bind(fd, (const struct sockaddr *)&lst->addr, lst->addrlen) < 0 ? -errno : 0;
		close(fd);
		if (err < 0) {
			kumo_elog(e, KUMO_LOG_ERROR, "cannot listen on %s: %s", lst->address,
				  strerror(-err));
			return err;
		}
	}
	return 0;
}

int kumo_engine_start(struct kumo_engine *e)
{
	if (e->started)
		return -EBUSY;
	int perr = probe_listeners(e);
	if (perr < 0)
		return perr;
	for (unsigned i = 0; i < e->nloops; i++) {
		int err = kumo_loop_listen(&e->loops[i]);
		if (err < 0)
			return err;
	}
	for (unsigned i = 0; i < e->nloops; i++) {
		int err = kumo_delivery_start(&e->loops[i]);
		if (err < 0) {
			kumo_elog(e, KUMO_LOG_ERROR, "delivery routes: %s", strerror(-err));
			return err;
		}
	}
	e->started = true;
	for (unsigned i = 0; i < e->nloops; i++) {
		int err = pthread_create(&e->loops[i].thread, NULL, kumo_loop_main, &e->loops[i]);
		if (err) {
			for (unsigned k = 0; k < i; k++)
				atomic_store(&e->loops[k].stop_requested, true);
			kumo_engine_stop(e);
			for (unsigned k = 0; k < i; k++)
				pthread_join(e->loops[k].thread, NULL);
			e->started = false;
			return -err;
		}
	}
	return 0;
}

static void wake(struct kumo_loop *l)
{
	uint64_t one = 1;
	(void)!write(l->wake_fd, &one, sizeof(one));
}

int kumo_engine_stop(struct kumo_engine *e)
{
	for (unsigned i = 0; i < e->nloops; i++) {
		atomic_store(&e->loops[i].stop_requested, true);
		wake(&e->loops[i]);
	}
	return 0;
}

int kumo_engine_wait(struct kumo_engine *e)
{
	if (!e->started)
		return -EINVAL;
	for (unsigned i = 0; i < e->nloops; i++)
		pthread_join(e->loops[i].thread, NULL);
	e->started = false;
	return 0;
}

void kumo_engine_free(struct kumo_engine *e)
{
	if (!e)
		return;
	if (e->started) {
		kumo_engine_stop(e);
		kumo_engine_wait(e);
	}
	for (unsigned i = 0; e->loops && i < e->nloops; i++)
		if (e->loops[i].e)
			kumo_loop_fini(&e->loops[i]);
	free(e->loops);
	for (size_t i = 0; i < e->nlisteners; i++)
		free_listener(&e->listeners[i]);
	free(e->listeners);
	for (size_t i = 0; i < e->nroutes; i++) {
		free(e->routes[i].domain);
		free(e->routes[i].host_port);
	}
	free(e->routes);
	for (size_t i = 0; i < e->nsources; i++) {
		free(e->sources[i].name);
		free(e->sources[i].ehlo_name);
		free(e->sources[i].socks5_user);
		free(e->sources[i].socks5_pass);
	}
	free(e->sources);
	for (size_t i = 0; i < e->npools; i++) {
		free(e->pools[i].name);
		free(e->pools[i].sources);
		free(e->pools[i].weights);
	}
	free(e->pools);
	for (size_t i = 0; i < e->ntenant_pools; i++)
		free(e->tenant_pools[i].tenant);
	free(e->tenant_pools);
	kumo_conf_fini(e);
	if (e->node_limits_ready)
		kumo_node_limits_fini(&e->node_limits);
	free(e->spool_path);
	free(e->log_path);
	free(e->hostname);
	free(e->nodeid);
	free(e->campaign_header);
	free(e->tenant_header);
	free(e->smart_host);
	free(e->dns_servers);
	free(e->ehlo_name);
	free(e->redis_url);
	free(e);
}

uint64_t kumo_engine_recovered(const struct kumo_engine *e)
{
	return e->recovered;
}

/* Copies the spec's strings into one block owned by the inject record. */
static int inject_copy(struct kumo_inject *in, const struct kumo_inject_spec *s)
{
	const char *fields[] = {s->sender ? s->sender : "", s->queue, s->tenant, s->campaign};
	size_t total = 0;
	for (size_t i = 0; i < 4; i++)
		total += fields[i] ? strlen(fields[i]) + 1 : 0;
	for (size_t i = 0; i < s->nrecipients; i++)
		total += strlen(s->recipients[i]) + 1;
	in->strings = malloc(total ? total : 1);
	in->env.rcpts = calloc(s->nrecipients, sizeof(*in->env.rcpts));
	in->data = malloc(s->data_len ? s->data_len : 1);
	if (!in->strings || !in->env.rcpts || !in->data)
		return -ENOMEM;
	char *p = in->strings;
	char **dst[] = {&in->env.sender, &in->env.queue, &in->env.tenant, &in->env.campaign};
	for (size_t i = 0; i < 4; i++) {
		if (!fields[i])
			continue;
		*dst[i] = p;
		p = stpcpy(p, fields[i]) + 1;
	}
	for (size_t i = 0; i < s->nrecipients; i++) {
		in->env.rcpts[i].addr = p;
		p = stpcpy(p, s->recipients[i]) + 1;
	}
	in->env.nrcpt = s->nrecipients;
	memcpy(in->data, s->data, s->data_len);
	in->data_len = s->data_len;
	return 0;
}

int kumo_engine_inject(struct kumo_engine *e, const struct kumo_inject_spec *spec,
		       kumo_inject_done_fn done, void *arg)
{
	if (!spec || spec->nrecipients == 0 || !spec->recipients || (!spec->data && spec->data_len))
		return -EINVAL;
	struct kumo_inject *in = aligned_alloc(16, (sizeof(*in) + 15) & ~(size_t)15);
	if (!in)
		return -ENOMEM;
	memset(in, 0, sizeof(*in));
	if (inject_copy(in, spec) < 0) {
		free(in->strings);
		free(in->env.rcpts);
		free(in->data);
		free(in);
		return -ENOMEM;
	}
	in->done = done;
	in->arg = arg;
	unsigned i = atomic_fetch_add(&e->inject_rr, 1) % e->nloops;
	struct kumo_loop *l = &e->loops[i];
	pthread_mutex_lock(&l->inject_lock);
	if (l->inject_tail)
		l->inject_tail->next = in;
	else
		l->inject_head = in;
	l->inject_tail = in;
	pthread_mutex_unlock(&l->inject_lock);
	wake(l);
	return 0;
}

void kumo_engine_stats(const struct kumo_engine *e, struct kumo_engine_stats *st)
{
	memset(st, 0, sizeof(*st));
	for (unsigned i = 0; i < e->nloops; i++) {
		struct kumo_loop *l = &e->loops[i];
		st->connections += atomic_load(&l->n_connections);
		st->messages_received += atomic_load(&l->n_received);
		st->messages_rejected += atomic_load(&l->n_rejected);
		st->spool_batches += atomic_load(&l->n_batches);
		st->queued += l->queues.live;
	}
}

void kumo_engine_queues(const struct kumo_engine *e, kumo_queue_fn cb, void *arg)
{
	for (unsigned i = 0; i < e->nloops; i++) {
		const struct kumo_queues *q = &e->loops[i].queues;
		for (uint32_t k = 0; k < q->nqueues; k++)
			if (q->queues[k].count)
				cb(arg, q->queues[k].name, q->queues[k].count);
	}
}
