/* SPDX-License-Identifier: MIT */
/*
 * daemon — samepaged as the command line knows it: where the binary is
 * (as the library finds it: $SAMEPAGE_DAEMON, else beside us), starting it
 * on demand or with `samepage daemon`, and saying which path was tried
 * when it is not there.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "env.h"

static const char help_text[] =
	"usage: samepage daemon [--foreground]\n"
	"\n"
	"Start the user's daemon, samepaged (normally started on demand, and gone\n"
	"after a minute without processes; see samepage.conf's idle_exit).\n"
	"\n"
	"  -f, --foreground  stay in the foreground, messages on stderr, no idle exit\n"
	"  -h, --help        this text\n";

int cmd_daemon(struct cli *c, int argc, char **argv)
{
	static const struct option longs[] = {
		{ "foreground", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char bin[PATH_MAX];
	const char *from;
	int fg = 0, o;

	while ((o = cli_getopt(c, argc, argv, ":fh", longs)) != -1) {
		switch (o) {
		case 'f': fg = 1; break;
		case 'h': return cli_help(help_text);
		default: return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	/* Already there: nothing to start (samepaged would leave quietly). */
	if (cli_connect(c, 0) == 0) {
		printf("samepage: a daemon already serves %s\n", c->sock);
		cli_disconnect(c);
		return 0;
	}
	cli_daemon_bin(bin, sizeof(bin), &from);
	if (cli_check_daemon_bin(bin, from))
		return 1;
	unsetenv("LD_PRELOAD");
	if (fg)
		execl(bin, bin, (char *)NULL);
	else
		execl(bin, bin, "--daemonize", (char *)NULL);
	fprintf(stderr, "samepage: %s: %s\n", bin, strerror(errno));
	return 1;
}
