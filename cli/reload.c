/* SPDX-License-Identifier: MIT */
/*
 * reload — samepage.conf, checked here where the person who edited it
 * sees the errors, then read again by the daemon (SIGHUP, as
 * `systemctl reload` sends it), and the changes it made told.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "conf.h"

static const char help_text[] =
	"usage: samepage reload\n"
	"\n"
	"Check samepage.conf (" SP_CONF_SYSTEM ", then\n"
	"$XDG_CONFIG_HOME/samepage/samepage.conf over it) and have the daemon read it\n"
	"again, as SIGHUP does; tell each knob it sets. A file with an error is not\n"
	"applied at all.\n"
	"\n"
	"  -h, --help  this text\n";

/* With the scan-time advisor on, pages_to_scan is its own: the daemon
 * leaves the file's value for when it is off (daemon/config.c). */
static int advisors(const struct sp_stat_r *r, int k)
{
	return k == KNOB_PAGES_TO_SCAN && r->knobs.v[KNOB_ADVISOR_MODE] != ADVISOR_NONE;
}

static int applied(const struct sp_conf *conf, const struct sp_stat_r *r)
{
	for (int k = 0; k < KNOB_COUNT; k++)
		if ((conf->has_knob & (1u << k)) && r->knobs.v[k] != conf->knob[k] &&
		    !advisors(r, k))
			return 0;
	return 1;
}

/* The pid D_PROCS gave must be a samepaged: never signal anything else. */
static int is_daemon(pid_t pid)
{
	char path[64], comm[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	f = fopen(path, "re");
	if (f && !fgets(comm, sizeof(comm), f))
		comm[0] = 0;
	if (f)
		fclose(f);
	return !strcmp(comm, "samepaged\n");
}

static int signal_daemon(struct cli *c)
{
	struct procs p = { 0 };
	int err = procs_fetch(c, &p);

	procs_free(&p);
	if (err)
		return err;
	if (c->daemon_pid <= 0 || !is_daemon(c->daemon_pid)) {
		fprintf(stderr, "samepage reload: the daemon's pid (%d) is not a samepaged seen "
				"from here (another pid namespace?); send it SIGHUP yourself\n",
			(int)c->daemon_pid);
		c->told = 1;
		return -ESRCH;
	}
	return kill(c->daemon_pid, SIGHUP) < 0 ? -errno : 0;
}

int cmd_reload(struct cli *c, int argc, char **argv)
{
	static const struct option longs[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct timespec tick = { 0, 50 * 1000 * 1000 };
	struct sp_stat_r before, after;
	struct sp_conf conf;
	int opt, err;

	while ((opt = cli_getopt(c, argc, argv, ":h", longs)) != -1)
		return opt == 'h' ? cli_help(help_text) : EXIT_USAGE;
	if (optind < argc) {
		cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	sp_conf_init(&conf);
	if (sp_conf_load(&conf, stderr, "samepage reload")) {
		fputs("samepage reload: nothing reloaded: the daemon keeps its settings\n", stderr);
		return 1;
	}
	err = cli_connect(c, 0);
	if (!err)
		err = cli_stat(c, 0, &before);
	if (!err)
		err = signal_daemon(c);
	/* The daemon reloads as soon as the signal wakes it. */
	for (int i = 0; !err && i < 60; i++) {
		err = cli_stat(c, 0, &after);
		if (err || applied(&conf, &after))
			break;
		nanosleep(&tick, NULL);
	}
	if (err)
		return cli_fail(c, "reload", err);
	if (!applied(&conf, &after)) {
		fputs("samepage reload: the daemon has not applied samepage.conf after 3 s (its "
		      "log says why)\n", stderr);
		return 1;
	}
	for (int k = 0; k < KNOB_COUNT; k++) {
		if (!(conf.has_knob & (1u << k)))
			continue;
		if (advisors(&after, k) && after.knobs.v[k] != conf.knob[k])
			printf("%s = %u (the scan-time advisor's; samepage.conf's %u is for "
			       "advisor_mode=none)\n", sp_knob_name(k), after.knobs.v[k], conf.knob[k]);
		else
			knob_print_change(k, before.knobs.v[k], after.knobs.v[k]);
	}
	if (!conf.has_knob)
		printf("reloaded; samepage.conf sets no knob\n");
	return 0;
}
