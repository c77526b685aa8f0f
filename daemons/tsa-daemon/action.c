/* tsa-daemon: names, keys, copies and timestamps of the actions in force (suspensions,
 * bounces, configuration overrides); see action.h. */
#include "action.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[TSA_NKINDS] = {
    [TSA_SUSPEND] = "Suspend",
    [TSA_SUSPEND_TENANT] = "SuspendTenant",
    [TSA_SUSPEND_CAMPAIGN] = "SuspendCampaign",
    [TSA_SET_CONFIG] = "SetConfig",
    [TSA_SET_DOMAIN_CONFIG] = "SetDomainConfig",
    [TSA_BOUNCE] = "Bounce",
    [TSA_BOUNCE_TENANT] = "BounceTenant",
    [TSA_BOUNCE_CAMPAIGN] = "BounceCampaign",
};

const char *tsa_kind_name(enum tsa_kind kind)
{
	return (unsigned)kind < TSA_NKINDS ? kind_names[kind] : "?";
}

int tsa_kind_parse(const char *name)
{
	for (int i = 0; i < TSA_NKINDS; i++)
		if (strcmp(kind_names[i], name) == 0)
			return i;
	return -1;
}

bool tsa_kind_is_suspension(enum tsa_kind kind)
{
	return kind == TSA_SUSPEND || kind == TSA_SUSPEND_TENANT || kind == TSA_SUSPEND_CAMPAIGN;
}

bool tsa_kind_is_bounce(enum tsa_kind kind)
{
	return kind == TSA_BOUNCE || kind == TSA_BOUNCE_TENANT || kind == TSA_BOUNCE_CAMPAIGN;
}

bool tsa_kind_is_config(enum tsa_kind kind)
{
	return kind == TSA_SET_CONFIG || kind == TSA_SET_DOMAIN_CONFIG;
}

static const char *s(const char *p)
{
	return p ? p : "";
}

size_t tsa_action_target(const struct tsa_action *a, char *out, size_t cap)
{
	int n;
	if (a->kind == TSA_SUSPEND)
		n = snprintf(out, cap, "%s->%s", s(a->source), s(a->site));
	else if (tsa_kind_is_config(a->kind))
		n = snprintf(out, cap, "%s\x1f%d\x1f%s\x1f%s", s(a->domain), a->mx_rollup,
			     s(a->source), s(a->name));
	else
		n = snprintf(out, cap, "%s\x1f%s\x1f%s", s(a->domain), s(a->tenant),
			     s(a->campaign));
	return n < 0 ? 0 : (size_t)n;
}

static int dup(char **out, const char *in)
{
	*out = NULL;
	if (in && !(*out = strdup(in)))
		return -ENOMEM;
	return 0;
}

int tsa_action_copy(struct tsa_action *out, const struct tsa_action *a)
{
	*out = *a;
	out->site = out->source = out->domain = out->tenant = out->campaign = NULL;
	out->name = out->value = out->reason = NULL;
	if (dup(&out->site, a->site) || dup(&out->source, a->source) ||
	    dup(&out->domain, a->domain) || dup(&out->tenant, a->tenant) ||
	    dup(&out->campaign, a->campaign) || dup(&out->name, a->name) ||
	    dup(&out->value, a->value) || dup(&out->reason, a->reason)) {
		tsa_action_clear(out);
		return -ENOMEM;
	}
	return 0;
}

void tsa_action_clear(struct tsa_action *a)
{
	free(a->site);
	free(a->source);
	free(a->domain);
	free(a->tenant);
	free(a->campaign);
	free(a->name);
	free(a->value);
	free(a->reason);
	a->site = a->source = a->domain = a->tenant = a->campaign = NULL;
	a->name = a->value = a->reason = NULL;
}

void tsa_format_time(int64_t ms, char *out, size_t cap)
{
	time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
	int frac = (int)(ms - (int64_t)t * 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
	if (frac)
		snprintf(out + n, cap - n, ".%03dZ", frac);
	else
		snprintf(out + n, cap - n, "Z");
}
