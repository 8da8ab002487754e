/* SPDX-License-Identifier: MIT */
/*
 * config — samepage.conf in the daemon (the format: common/conf.h). Read at
 * start over the default knobs, and again on SIGHUP over the knobs as they
 * are then: as `sysctl -p`, a key no file names any more keeps its value,
 * and so does a knob `samepage set` changed since. A file with an error
 * changes nothing; the daemon names the file and line on its stderr (the
 * terminal of whoever started it, later SAMEPAGE_LOG or the journal).
 * --idle-exit on the command line wins over idle_exit in a file.
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "conf.h"

/* SIGHUP seen, not yet acted on. The one piece of state outside struct
 * samepaged besides loop.c's `terminated`: a signal handler has nowhere
 * else to put it. */
static volatile sig_atomic_t hangup;

static void on_hangup(int sig)
{
	(void)sig;
	hangup = 1;
}

/* What changed, for the log: "pages_to_scan 16384 -> 500, ...". */
static void note_change(char *said, size_t len, const char *key, long long from, long long to)
{
	size_t n = strlen(said);

	if (n < len)
		snprintf(said + n, len - n, "%s%s %lld -> %lld", n ? ", " : "", key, from, to);
}

static void apply(struct samepaged *d, const struct sp_conf *c, int at_start, char *said,
		  size_t len)
{
	int idle = d->idle_exit_arg;

	for (int k = 0; k < KNOB_COUNT; k++) {
		if (!(c->has_knob & (1u << k)) || d->knobs.v[k] == c->knob[k])
			continue;
		note_change(said, len, sp_knob_name(k), d->knobs.v[k], c->knob[k]);
		d->knobs.v[k] = c->knob[k];
	}
	if (idle < 0 && c->idle_exit >= 0)
		idle = (int)c->idle_exit;
	else if (idle < 0)
		idle = at_start ? d->idle_exit_default : d->idle_exit_s;
	if (!at_start && idle != d->idle_exit_s)
		note_change(said, len, "idle_exit", d->idle_exit_s, idle);
	d->idle_exit_s = idle;
}

static int load(struct samepaged *d, int at_start)
{
	struct sp_conf c;
	char said[512] = "";
	int err;

	sp_conf_init(&c);
	err = sp_conf_load(&c, stderr, "samepaged");
	if (err) {
		fprintf(stderr, "samepaged: samepage.conf not applied: %s\n", at_start ?
			"starting with the default settings" : "the settings stay as they were");
		if (at_start)
			apply(d, &c, 1, said, sizeof(said)); /* the idle_exit default */
		return err;
	}
	apply(d, &c, at_start, said, sizeof(said));
	if (!at_start)
		fprintf(stderr, "samepaged: samepage.conf reloaded: %s\n",
			said[0] ? said : "no change");
	return 0;
}

int samepaged_config_check(void)
{
	struct sp_conf c;

	sp_conf_init(&c);
	return sp_conf_load(&c, stderr, "samepaged");
}

void samepaged_config_start(struct samepaged *d, int idle_exit_arg, int idle_exit_default)
{
	struct sigaction sa = { .sa_handler = on_hangup, .sa_flags = SA_RESTART };

	d->idle_exit_arg = idle_exit_arg;
	d->idle_exit_default = idle_exit_default;
	/* epoll_wait returns EINTR whatever SA_RESTART says: the loop wakes
	 * and samepaged_tick() reloads at once. */
	if (sigaction(SIGHUP, &sa, NULL) < 0)
		fprintf(stderr, "samepaged: SIGHUP will not reload samepage.conf: %s\n",
			strerror(errno));
	load(d, 1);
}

void samepaged_config_tick(struct samepaged *d)
{
	if (!hangup)
		return;
	hangup = 0;
	load(d, 0);
}
