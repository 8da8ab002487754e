/* SPDX-License-Identifier: MIT */
/*
 * The command line's manners, with no daemon running (none is needed, and
 * none may be started by a command that is refused):
 *  - `--help` (and -h, `samepage help [CMD]`) of samepage, of each
 *    subcommand and of samepaged: the usage on stdout, nothing on stderr,
 *    exit 0; `--version` / -V of both: "samepage VERSION" / "samepaged
 *    VERSION" on stdout, exit 0;
 *  - usage errors exit 2 with a message and a pointer to --help on stderr
 *    and nothing on stdout: no command, an unknown command or option, a
 *    missing option value, a stray argument, a number that is not one
 *    (`unmerge --pid abc`, `status --pid 0`, `set pages_to_scan=12x`,
 *    `samepaged --idle-exit abc` — atoi() once made that 0, never leave);
 *    and no daemon was started by any of them (no socket appeared);
 *  - a daemon binary that is not there: `samepage daemon`, and `samepage
 *    set` starting one on demand, exit 1 naming the path tried, from
 *    SAMEPAGE_DAEMON and from beside the samepage binary (a copy of it in
 *    a directory without samepaged).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char sock[PATH_MAX];

static void no_daemon(const char *after)
{
	TU_CHECK(access(sock, F_OK) < 0, "a daemon was started by `%s`", after);
}

static void help_ok(const char *cmdline)
{
	struct tu_output r;

	tu_sh_capture(cmdline, &r);
	TU_CHECK(r.status == 0, "`%s`: exit %d: %s", cmdline, r.status, r.err);
	TU_CHECK(!strncmp(r.out, "usage: ", 7) && strlen(r.out) > 100,
		 "`%s`: no usage on stdout: '%s'", cmdline, r.out);
	TU_CHECK(!r.err[0], "`%s` wrote on stderr: '%s'", cmdline, r.err);
	no_daemon(cmdline);
}

static void helps(void)
{
	static const char *const subs[] = { "run", "status", "set", "unmerge", "reload", "daemon",
					    "top" };
	char cmd[PATH_MAX + 64];
	const char *sp = strdup(tu_bin("samepage")), *spd = strdup(tu_bin("samepaged"));

	snprintf(cmd, sizeof(cmd), "%s --help", sp);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s -h", sp);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s help", sp);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s help --help", sp);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s help help", sp);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s --help", spd);
	help_ok(cmd);
	snprintf(cmd, sizeof(cmd), "%s -h", spd);
	help_ok(cmd);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
		char want[64];
		struct tu_output r;
		snprintf(cmd, sizeof(cmd), "%s %s --help", sp, subs[i]);
		help_ok(cmd);
		snprintf(cmd, sizeof(cmd), "%s %s -h", sp, subs[i]);
		help_ok(cmd);
		snprintf(cmd, sizeof(cmd), "%s help %s", sp, subs[i]);
		tu_sh_capture(cmd, &r);
		snprintf(want, sizeof(want), "usage: samepage %s", subs[i]);
		TU_CHECK(r.status == 0 && !strncmp(r.out, want, strlen(want)),
			 "`%s`: exit %d, '%.80s'", cmd, r.status, r.out);
	}
	/* --version: the program's name and its version, on stdout. */
	static const char *const vers[][2] = { { "--version", "samepage " },
					       { "-V", "samepage " } };
	for (size_t i = 0; i < 2; i++) {
		struct tu_output r;
		snprintf(cmd, sizeof(cmd), "%s %s", sp, vers[i][0]);
		tu_sh_capture(cmd, &r);
		TU_CHECK(r.status == 0 && !strncmp(r.out, vers[i][1], strlen(vers[i][1])) &&
			 strlen(r.out) > strlen(vers[i][1]) + 1 && !r.err[0],
			 "`%s`: exit %d, '%s' '%s'", cmd, r.status, r.out, r.err);
		snprintf(cmd, sizeof(cmd), "%s %s", spd, vers[i][0]);
		tu_sh_capture(cmd, &r);
		TU_CHECK(r.status == 0 && !strncmp(r.out, "samepaged ", 10) && !r.err[0],
			 "`%s`: exit %d, '%s' '%s'", cmd, r.status, r.out, r.err);
	}
	free((void *)sp);
	free((void *)spd);
}

static void refused(const char *prog, const char *args, const char *says)
{
	char cmd[PATH_MAX + 256];
	struct tu_output r;

	snprintf(cmd, sizeof(cmd), "%s %s", tu_bin(prog), args);
	tu_sh_capture(cmd, &r);
	TU_CHECK(r.status == 2, "`%s %s`: exit %d, want 2: '%s'", prog, args, r.status, r.err);
	TU_CHECK(strstr(r.err, says) && strstr(r.err, "--help"),
		 "`%s %s`: stderr '%s', want '%s' and a pointer to --help", prog, args, r.err,
		 says);
	TU_CHECK(!r.out[0], "`%s %s` printed '%s'", prog, args, r.out);
	no_daemon(args);
}

static void usage_errors(void)
{
	refused("samepage", "", "which command");
	refused("samepage", "bogus", "no command 'bogus'");
	refused("samepage", "--bogus", "unknown option '--bogus'");
	refused("samepage", "help bogus", "no command 'bogus'");
	refused("samepage", "status --bogus", "unknown option '--bogus'");
	refused("samepage", "status -x", "unknown option '-x'");
	refused("samepage", "status --pid", "'--pid' needs a value");
	refused("samepage", "status extra", "unexpected argument 'extra'");
	refused("samepage", "status --pid abc", "'abc' is not a process id");
	refused("samepage", "status --pid 0", "'0' is not a process id");
	refused("samepage", "status --pid -5", "not a process id");
	refused("samepage", "unmerge --pid abc", "'abc' is not a process id");
	refused("samepage", "unmerge --pid 12x", "'12x' is not a process id");
	refused("samepage", "unmerge --pid 4294967297", "not a process id");
	refused("samepage", "unmerge stray", "unexpected argument");
	refused("samepage", "set pages_to_scan=12x", "not a number");
	refused("samepage", "set pages_to_scan=0", "out of range");
	refused("samepage", "set bogus=1", "unknown knob 'bogus'");
	refused("samepage", "set", "which knobs");
	refused("samepage", "set --timeout abc run=2", "not a number of seconds");
	refused("samepage", "run", "which command");
	refused("samepage", "run --domain '' true", "merge domain");
	refused("samepage", "top -n abc", "not a number");
	refused("samepage", "reload extra", "unexpected argument");
	refused("samepage", "daemon --bogus", "unknown option");
	refused("samepaged", "--idle-exit abc", "'abc' is not a number of seconds");
	refused("samepaged", "--idle-exit -1", "not a number of seconds");
	refused("samepaged", "--idle-exit 5x", "not a number of seconds");
	refused("samepaged", "--bogus", "unknown option");
	refused("samepaged", "stray", "unexpected argument");
}

/* The daemon binary is not there: the path tried, and where it came from. */
static void missing_daemon(const char *dir)
{
	char cmd[PATH_MAX * 2 + 128], copy[PATH_MAX + 32], want[PATH_MAX + 96];
	struct tu_output r;

	snprintf(cmd, sizeof(cmd), "SAMEPAGE_DAEMON=%s/nowhere/samepaged %s daemon", dir,
		 tu_bin("samepage"));
	tu_sh_capture(cmd, &r);
	snprintf(want, sizeof(want), "%s/nowhere/samepaged: No such file or directory", dir);
	TU_CHECK(r.status == 1 && strstr(r.err, want) && strstr(r.err, "SAMEPAGE_DAEMON"),
		 "`samepage daemon` without its daemon: exit %d, '%s'", r.status, r.err);
	snprintf(cmd, sizeof(cmd), "SAMEPAGE_DAEMON=%s/nowhere/samepaged %s set run=1", dir,
		 tu_bin("samepage"));
	tu_sh_capture(cmd, &r);
	TU_CHECK(r.status == 1 && strstr(r.err, want),
		 "`samepage set` without its daemon: exit %d, '%s'", r.status, r.err);
	/* Beside the samepage binary, as installed. */
	snprintf(copy, sizeof(copy), "%s/bin", dir);
	TU_CHECK(mkdir(copy, 0700) == 0, "mkdir %s", copy);
	snprintf(cmd, sizeof(cmd), "cp %s %s/", tu_bin("samepage"), copy);
	TU_CHECK(system(cmd) == 0, "%s", cmd);
	snprintf(cmd, sizeof(cmd), "env -u SAMEPAGE_DAEMON %s/samepage daemon", copy);
	tu_sh_capture(cmd, &r);
	snprintf(want, sizeof(want), "%s/samepaged: No such file or directory", copy);
	TU_CHECK(r.status == 1 && strstr(r.err, want) && strstr(r.err, "beside samepage"),
		 "a samepage without samepaged beside it: exit %d, '%s'", r.status, r.err);
	no_daemon("missing daemon");
}

int main(void)
{
	tu_private_daemon();
	snprintf(sock, sizeof(sock), "%s/sock", tu_daemon_dir());
	helps();
	usage_errors();
	missing_daemon(tu_daemon_dir());
	printf("cli_usage: ok\n");
	return 0;
}
