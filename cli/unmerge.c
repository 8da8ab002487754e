/* SPDX-License-Identifier: MIT */
/*
 * unmerge — every process (or one) copies its merged pages back into
 * memory of its own, at its next scan; what merging does next is the run
 * knob's business, and the command says which.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char help_text[] =
	"usage: samepage unmerge [--pid PID]\n"
	"\n"
	"Unmerge the pages of every process, or of one: each copies its merged pages\n"
	"back into memory of its own at its next scan. The run knob stays as it is: with\n"
	"run=1 the pages merge again as they are scanned (`samepage set run=2` unmerges\n"
	"everything and stops merging).\n"
	"\n"
	"  -p, --pid PID  only this process\n"
	"  -h, --help     this text\n";

/* What happens to the pages next, by the run knob. */
static const char *afterwards(uint32_t run)
{
	switch (run) {
	case 0: return "merging is stopped (run=0), so they stay unmerged";
	case 1: return "merging stays on (run=1), so they merge again as they are scanned; "
		       "`samepage set run=2` unmerges and stops merging";
	default: return "merging is stopped (run=2), so they stay unmerged";
	}
}

static int tell(struct cli *c, pid_t pid)
{
	struct procs p = { 0 };
	struct sp_stat_r r;
	const char *comm = "?";
	int err = procs_fetch(c, &p);

	if (!err)
		err = cli_stat(c, 0, &r);
	if (err) {
		procs_free(&p);
		return err;
	}
	for (size_t i = 0; i < p.n; i++)
		if (p.v[i].e.pid == pid)
			comm = p.v[i].comm;
	if (pid)
		printf("process %d (%s) unmerges its pages at its next scan; %s\n", (int)pid, comm,
		       afterwards(r.knobs.v[KNOB_RUN]));
	else
		printf("%zu process%s unmerge%s their pages at their next scan; %s\n", p.n,
		       p.n == 1 ? "" : "es", p.n == 1 ? "s" : "", afterwards(r.knobs.v[KNOB_RUN]));
	procs_free(&p);
	return 0;
}

int cmd_unmerge(struct cli *c, int argc, char **argv)
{
	static const struct option longs[] = {
		{ "pid", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sp_unmerge u = { 0 };
	struct sp_msg m;
	int opt, err = 0;

	while (!err && (opt = cli_getopt(c, argc, argv, ":p:h", longs)) != -1) {
		switch (opt) {
		case 'p': err = cli_parse_pid(c, "--pid", optarg, &u.pid); break;
		case 'h': return cli_help(help_text);
		default: return EXIT_USAGE;
		}
	}
	if (!err && optind < argc)
		err = cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
	if (err)
		return EXIT_USAGE;
	err = cli_connect(c, 0);
	if (!err)
		err = cli_call(c, C_UNMERGE, &u, sizeof(u), D_ACK, &m);
	if (err == -ESRCH) {
		fprintf(stderr, "samepage unmerge: no process %d is connected to the daemon\n",
			u.pid);
		return 1;
	}
	if (!err)
		err = tell(c, u.pid);
	return err ? cli_fail(c, "unmerge", err) : 0;
}
