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
static void note(char *said, size_t len, const char *key, const char *what)
{
	size_t n = strlen(said);

	if (n < len)
		snprintf(said + n, len - n, "%s%s %s", n ? ", " : "", key, what);
}

static void note_knob(char *said, size_t len, int k, uint32_t from, uint32_t to)
{
	char a[32], b[32], what[80];

	sp_knob_format(k, from, a, sizeof(a));
	sp_knob_format(k, to, b, sizeof(b));
	snprintf(what, sizeof(what), "%s -> %s", a, b);
	note(said, len, sp_knob_name(k), what);
}

/* One knob of the file; each knob that moved is told (switching the
 * advisor moves pages_to_scan). With the advisor on, pages_to_scan is the
 * advisor's: the file's value is not applied, and no error either (it is
 * the value for a daemon with the advisor off). */
static void apply_knob(struct samepaged *d, int k, uint32_t v, char *said, size_t len)
{
	struct sp_knobs before = d->knobs;

	if (knob_store(d, k, v)) {
		note(said, len, sp_knob_name(k), "left to the scan-time advisor");
		return;
	}
	for (int j = 0; j < KNOB_COUNT; j++)
		if (before.v[j] != d->knobs.v[j])
			note_knob(said, len, j, before.v[j], d->knobs.v[j]);
}

/* The file's knobs, in the order the kernel's stores make sense in
 * (sp_knob_rank). */
static void apply_knobs(struct samepaged *d, const struct sp_conf *c, char *said, size_t len)
{
	for (int rank = 0; rank < SP_KNOB_RANKS; rank++)
		for (int k = 0; k < KNOB_COUNT; k++)
			if (sp_knob_rank(k) == rank && (c->has_knob & (1u << k)) &&
			    d->knobs.v[k] != c->knob[k])
				apply_knob(d, k, c->knob[k], said, len);
}

static void apply(struct samepaged *d, const struct sp_conf *c, int at_start, char *said,
		  size_t len)
{
	int idle = d->idle_exit_arg;

	apply_knobs(d, c, said, len);
	if (idle < 0 && c->idle_exit >= 0)
		idle = (int)c->idle_exit;
	else if (idle < 0)
		idle = at_start ? d->idle_exit_default : d->idle_exit_s;
	if (!at_start && idle != d->idle_exit_s) {
		char what[48];
		snprintf(what, sizeof(what), "%d -> %d", d->idle_exit_s, idle);
		note(said, len, "idle_exit", what);
	}
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
