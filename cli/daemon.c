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

/* Directory holding our binary: bin/ of the build tree or the prefix. */
static void self_dir(char *out, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", out, len - 1);

	if (n <= 0) {
		snprintf(out, len, ".");
		return;
	}
	out[n] = 0;
	*strrchr(out, '/') = 0;
}

void cli_daemon_bin(char *out, size_t len, const char **from)
{
	const char *env = sp_env("SAMEPAGE_DAEMON");
	char dir[PATH_MAX - 32];

	if (env && *env) {
		snprintf(out, len, "%s", env);
		*from = "from SAMEPAGE_DAEMON";
		return;
	}
	self_dir(dir, sizeof(dir));
	snprintf(out, len, "%s/samepaged", dir);
	*from = "beside samepage; SAMEPAGE_DAEMON may name another";
}

/* The binary must be there and runnable: 0, or -errno told with the path. */
static int check_bin(const char *bin, const char *from)
{
	if (access(bin, X_OK) == 0)
		return 0;
	int err = -errno;
	fprintf(stderr, "samepage: cannot start the daemon: %s: %s (looked %s)\n", bin,
		strerror(-err), from);
	return err;
}

int cli_start_daemon(void)
{
	char bin[PATH_MAX];
	const char *from;
	pid_t pid;
	int st, err;

	cli_daemon_bin(bin, sizeof(bin), &from);
	err = check_bin(bin, from);
	if (err)
		return err;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		unsetenv("LD_PRELOAD");
		execl(bin, bin, "--daemonize", (char *)NULL);
		fprintf(stderr, "samepage: %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		/* samepaged said why on our stderr. */
		fprintf(stderr, "samepage: the daemon %s did not start\n", bin);
		return -ECHILD;
	}
	return 0;
}

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
	if (check_bin(bin, from))
		return 1;
	unsetenv("LD_PRELOAD");
	if (fg)
		execl(bin, bin, (char *)NULL);
	else
		execl(bin, bin, "--daemonize", (char *)NULL);
	fprintf(stderr, "samepage: %s: %s\n", bin, strerror(errno));
	return 1;
}
