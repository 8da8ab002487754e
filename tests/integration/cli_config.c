/* SPDX-License-Identifier: MIT */
/*
 * samepage.conf, against real daemons (the test's own XDG_CONFIG_HOME, so
 * the file is $XDG_CONFIG_HOME/samepage/samepage.conf):
 *  - `samepage set --save pages_to_scan=1234 sleep_millisecs=7` changes
 *    the running daemon, says where it saved, and writes both lines; a
 *    fresh daemon (the old one terminated) starts with them, and with the
 *    default for every other knob;
 *  - saving again keeps the file's comments and other keys, replaces a
 *    key's line in place (a repeated key once), appends a new key, and
 *    writes through a symbolic link, leaving the link;
 *  - a file with an unknown key and a bad value: `samepage reload` names
 *    file:line of both and exits 1, nothing applied; SIGHUP leaves the
 *    daemon alive with its knobs as they were, its log naming file:line;
 *    a daemon started with that file says file:line on the starter's
 *    stderr and runs on the defaults;
 *  - a good file and SIGHUP: the knobs it names change within 2 s, the log
 *    says what changed; a knob `samepage set` changed and the file does
 *    not name keeps its value (as sysctl -p); `samepage reload` says each
 *    knob's change;
 *  - idle_exit = 1 and SIGHUP: the daemon leaves about a second after
 *    its last client;
 *  - (by the way) `samepage top -b -n 1` with no process at all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char conf[PATH_MAX], logf[PATH_MAX];

static struct tu_output *cli(const char *args)
{
	static struct tu_output r;

	tu_cli_capture(args, &r);
	return &r;
}

static void write_conf(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	TU_CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "write %s: %s", path,
		 strerror(errno));
}

static void read_conf(const char *path, char *buf, size_t len)
{
	TU_CHECK(tu_read_text(path, buf, len) == 0, "read %s", path);
}

/* Terminate the daemon and wait until it is gone; the directory stays. */
static void daemon_end(void)
{
	pid_t pid = tu_daemon_pid();

	TU_CHECK(pid > 0, "no daemon to stop");
	kill(pid, SIGTERM);
	for (int i = 0; i < 300 && kill(pid, 0) == 0; i++)
		tu_sleep_ms(10);
	TU_CHECK(kill(pid, 0) < 0, "daemon %d did not leave on SIGTERM", (int)pid);
}

static void hup(void)
{
	pid_t pid = tu_daemon_pid();

	TU_CHECK(pid > 0 && kill(pid, SIGHUP) == 0, "SIGHUP to the daemon (%d)", (int)pid);
}

static int knob_is(const char *key, long long want, double secs)
{
	double end = tu_now() + secs;

	do {
		if (tu_status(key) == want)
			return 1;
		tu_sleep_ms(50);
	} while (tu_now() < end);
	return 0;
}

static void save_and_restart(void)
{
	struct tu_output *r = cli("set --save pages_to_scan=1234 sleep_millisecs=7");
	char text[4096], want[PATH_MAX + 16];

	TU_CHECK(r->status == 0, "set --save: exit %d: %s", r->status, r->err);
	snprintf(want, sizeof(want), "saved in %s", conf);
	TU_CHECK(strstr(r->out, want) && strstr(r->out, "pages_to_scan = 1234 (was 16384)"),
		 "set --save said '%s'", r->out);
	read_conf(conf, text, sizeof(text));
	TU_CHECK(strstr(text, "pages_to_scan = 1234\n") && strstr(text, "sleep_millisecs = 7\n"),
		 "saved file: '%s'", text);
	daemon_end();
	r = cli("daemon");
	TU_CHECK(r->status == 0 && !r->err[0], "daemon: exit %d: %s", r->status, r->err);
	TU_CHECK(tu_status("pages_to_scan") == 1234 && tu_status("sleep_millisecs") == 7 &&
		 tu_status("max_page_sharing") == 256 && tu_status("run") == 1,
		 "a fresh daemon did not apply samepage.conf: pages_to_scan %lld sleep_millisecs "
		 "%lld max_page_sharing %lld", tu_status("pages_to_scan"),
		 tu_status("sleep_millisecs"), tu_status("max_page_sharing"));
}

static void save_keeps(void)
{
	char text[4096], real[PATH_MAX + 8];
	struct stat st;
	struct tu_output *r;

	write_conf(conf, "# mine\npages_to_scan = 1234 # fast\nrun = 1\n\npages_to_scan = 9\n"
			 "use_zero_pages = 0");
	r = cli("set -s pages_to_scan=2000 max_page_sharing=64");
	TU_CHECK(r->status == 0, "set --save: exit %d: %s", r->status, r->err);
	read_conf(conf, text, sizeof(text));
	TU_CHECK(!strcmp(text, "# mine\npages_to_scan = 2000\nrun = 1\n\nuse_zero_pages = 0\n"
			       "max_page_sharing = 64\n"),
		 "set --save rewrote the file as '%s'", text);
	/* Through a symbolic link, as dotfile managers keep them. */
	snprintf(real, sizeof(real), "%s.real", conf);
	TU_CHECK(rename(conf, real) == 0 && symlink(real, conf) == 0, "symlink");
	r = cli("set --save sleep_millisecs=11");
	TU_CHECK(r->status == 0, "set --save via a link: exit %d: %s", r->status, r->err);
	TU_CHECK(lstat(conf, &st) == 0 && S_ISLNK(st.st_mode), "the link was replaced");
	read_conf(real, text, sizeof(text));
	TU_CHECK(strstr(text, "sleep_millisecs = 11\n") && strstr(text, "# mine"),
		 "the link's target: '%s'", text);
	TU_CHECK(unlink(conf) == 0 && rename(real, conf) == 0, "unlink");
	/* A line of the file's own that a daemon refuses: said at once. */
	read_conf(conf, text, sizeof(text));
	write_conf(conf, "bogus = 1\n");
	r = cli("set --save sleep_millisecs=11");
	TU_CHECK(r->status == 0 && strstr(r->err, "warning") && strstr(r->err, ":1: unknown key") &&
		 strstr(r->err, "applies none"), "set --save into a bad file: exit %d, '%s'",
		 r->status, r->err);
	write_conf(conf, text);
}

static void bad_file(void)
{
	char want2[PATH_MAX + 8], want3[PATH_MAX + 8], log[16384];
	struct tu_output *r;
	pid_t pid;

	write_conf(conf, "pages_to_scan = 3000\nbogus_key = 1\nsleep_millisecs = abc\n");
	snprintf(want2, sizeof(want2), "%s:2: ", conf);
	snprintf(want3, sizeof(want3), "%s:3: ", conf);
	r = cli("reload");
	TU_CHECK(r->status == 1 && strstr(r->err, want2) && strstr(r->err, "bogus_key") &&
		 strstr(r->err, want3) && strstr(r->err, "sleep_millisecs"),
		 "reload of a bad file: exit %d: '%s'", r->status, r->err);
	TU_CHECK(tu_status("pages_to_scan") == 2000, "reload applied part of a bad file");
	pid = tu_daemon_pid();
	hup();
	tu_sleep_ms(500);
	TU_CHECK(kill(pid, 0) == 0 && tu_daemon_pid() == pid, "the daemon died of a bad file");
	TU_CHECK(tu_status("pages_to_scan") == 2000 && tu_status("sleep_millisecs") == 11,
		 "SIGHUP applied part of a bad file: pages_to_scan %lld",
		 tu_status("pages_to_scan"));
	read_conf(logf, log, sizeof(log));
	TU_CHECK(strstr(log, want2) && strstr(log, want3) && strstr(log, "not applied"),
		 "the daemon's log does not name the bad lines: '%s'", log);
	/* A daemon starting with it: the starter hears, the daemon runs. */
	daemon_end();
	r = cli("daemon");
	TU_CHECK(r->status == 0 && strstr(r->err, want2) && strstr(r->err, want3),
		 "a daemon started with a bad file: exit %d, stderr '%s'", r->status, r->err);
	TU_CHECK(tu_status("pages_to_scan") == 16384 && tu_status("sleep_millisecs") == 20,
		 "a daemon started with a bad file did not keep the defaults");
}

static void good_file(void)
{
	char log[16384];
	struct tu_output *r;

	r = cli("set sleep_millisecs=9");
	TU_CHECK(r->status == 0, "set: %s", r->err);
	write_conf(conf, "pages_to_scan = 4321\nmax_page_sharing = 128\n");
	hup();
	TU_CHECK(knob_is("pages_to_scan", 4321, 2) && knob_is("max_page_sharing", 128, 1),
		 "SIGHUP: pages_to_scan %lld max_page_sharing %lld", tu_status("pages_to_scan"),
		 tu_status("max_page_sharing"));
	TU_CHECK(tu_status("sleep_millisecs") == 9, "SIGHUP reset a knob the file does not name");
	read_conf(logf, log, sizeof(log));
	TU_CHECK(strstr(log, "reloaded: pages_to_scan 16384 -> 4321, max_page_sharing 256 -> 128"),
		 "the log does not say what the reload changed: '%s'", log);
	write_conf(conf, "pages_to_scan = 555\nmax_page_sharing = 128\n");
	r = cli("reload");
	TU_CHECK(r->status == 0 && strstr(r->out, "pages_to_scan = 555 (was 4321)") &&
		 strstr(r->out, "max_page_sharing = 128 (unchanged)"),
		 "reload: exit %d, '%s' '%s'", r->status, r->out, r->err);
	TU_CHECK(tu_status("pages_to_scan") == 555, "reload did not apply");
}

static void idle_exit(void)
{
	pid_t pid = tu_daemon_pid();
	double t0;

	write_conf(conf, "idle_exit = 1\n");
	hup();
	t0 = tu_now();
	while (kill(pid, 0) == 0 && tu_now() - t0 < 10)
		tu_sleep_ms(50);
	TU_CHECK(kill(pid, 0) < 0, "idle_exit = 1: the daemon still runs after 10 s");
	TU_CHECK(tu_now() - t0 > 0.5, "idle_exit = 1: the daemon left at once");
}

int main(void)
{
	const char *dir;
	struct tu_output *r;

	tu_private_daemon();
	dir = tu_daemon_dir();
	snprintf(conf, sizeof(conf), "%s/config/samepage/samepage.conf", dir);
	snprintf(logf, sizeof(logf), "%s/log", dir);
	setenv("SAMEPAGE_LOG", logf, 1);
	r = cli("daemon");
	TU_CHECK(r->status == 0, "samepage daemon: exit %d: %s", r->status, r->err);
	TU_CHECK(tu_status("pages_to_scan") == 16384, "pages_to_scan %lld at start",
		 tu_status("pages_to_scan"));
	/* No process yet: top still draws its frame. */
	r = cli("top -b -n 1");
	TU_CHECK(r->status == 0 && strstr(r->out, "0 processes") && strstr(r->out, "PID COMMAND"),
		 "top with no process: exit %d, '%s' '%s'", r->status, r->out, r->err);

	save_and_restart();
	save_keeps();
	bad_file();
	good_file();
	idle_exit();
	printf("cli_config: ok\n");
	return 0;
}
