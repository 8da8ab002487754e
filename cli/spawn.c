/* SPDX-License-Identifier: MIT */
/*
 * spawn — finding samepaged and starting it when no daemon answers
 * (cli_connect() with start set, `samepage run`, `samepage daemon`).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "env.h"

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
int cli_check_daemon_bin(const char *bin, const char *from)
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
	err = cli_check_daemon_bin(bin, from);
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
