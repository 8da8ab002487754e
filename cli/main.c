/* SPDX-License-Identifier: MIT */
/* samepage — the command line; see cli/cli.h. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "version.h"

static const char help_text[] =
	"usage: samepage COMMAND [OPTIONS]\n"
	"\n"
	"Same-page merging (KSM) in user space, with the kernel's interface.\n"
	"\n"
	"  run [--merge-any] [--domain NAME] -- CMD [ARGS...]\n"
	"                         run CMD with merging available (madvise, prctl)\n"
	"  status [--pid PID] [--json] [--watch SECS]\n"
	"                         counters and knobs, under the kernel's names\n"
	"  top [--batch] [--iterations N] [--delay SECS] [--sort KEY]\n"
	"                         live view: totals, saving over time, processes\n"
	"  set [--save] KNOB=VALUE...\n"
	"                         run, pages_to_scan, sleep_millisecs, use_zero_pages,\n"
	"                         max_page_sharing, smart_scan, advisor_* (--save: in\n"
	"                         samepage.conf too)\n"
	"  unmerge [--pid PID]    unmerge every process's (or one's) pages\n"
	"  reload                 check samepage.conf and have the daemon read it again\n"
	"  daemon [--foreground]  start the user's daemon\n"
	"  metrics [--per-process] [--textfile PATH [--interval SECS]]\n"
	"                         the counters for Prometheus (node_exporter's names)\n"
	"  help [COMMAND]         this text, or a command's\n"
	"\n"
	"  -h, --help     this text\n"
	"  -V, --version  the version\n"
	"\n"
	"`samepage COMMAND --help` tells more of each.\n";

struct command {
	const char *name;
	int (*fn)(struct cli *c, int argc, char **argv);
};

static const struct command commands[] = {
	{ "run", cmd_run }, { "status", cmd_status }, { "top", cmd_top }, { "set", cmd_set },
	{ "unmerge", cmd_unmerge }, { "reload", cmd_reload }, { "daemon", cmd_daemon },
	{ "metrics", cmd_metrics },
};

static const struct command *find(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static int usage_error(const char *fmt, const char *arg)
{
	fputs("samepage: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs("\nTry 'samepage --help'.\n", stderr);
	return EXIT_USAGE;
}

/* argv[0] is the command's name: getopt's messages and ours say it. */
static int dispatch(struct cli *c, const struct command *cmd, int argc, char **argv)
{
	c->sub = cmd->name;
	optind = 1;
	return cmd->fn(c, argc, argv);
}

static int help(struct cli *c, int argc, char **argv)
{
	static char h[] = "--help";
	char *args[] = { argv[1], h, NULL };
	const struct command *cmd;

	/* `samepage help`, `help --help`, `help help`: the overview, as git does. */
	if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
	    !strcmp(argv[1], "help"))
		return cli_help(help_text);
	cmd = find(argv[1]);
	if (!cmd)
		return usage_error("no command '%s'", argv[1]);
	return dispatch(c, cmd, 2, args);
}

int main(int argc, char **argv)
{
	/* The context: the daemon connection and a reply's buffer (72 KiB). */
	static struct cli c = { .fd = -1, .sub = "" };
	const struct command *cmd;

	if (argc < 2)
		return usage_error("which command?%s", "");
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))
		return cli_help(help_text);
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		printf("samepage %s (protocol %d)\n", SAMEPAGE_RELEASE, SP_PROTO_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "help"))
		return help(&c, argc - 1, argv + 1);
	cmd = find(argv[1]);
	if (!cmd)
		return usage_error(argv[1][0] == '-' ? "unknown option '%s'" : "no command '%s'",
				   argv[1]);
	return dispatch(&c, cmd, argc - 1, argv + 1);
}
