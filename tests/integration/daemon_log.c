/* SPDX-License-Identifier: MIT */
/*
 * The daemon says what it does (issue 13, "Logging"): with SAMEPAGE_LOG
 * naming a file, a daemon started on demand writes there its start, a
 * process joining and leaving, each knob changed and by whom, unmerge
 * asked, a malformed message (connection closed), and its stop on
 * SIGTERM, one line each with time, pid and level. SAMEPAGE_LOG_LEVEL=
 * warning keeps the info lines out and the warnings in.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto.h"
#include "samepage.h"
#include "testutil.h"

#define NP 256u

static char logpath[256];

static void read_log(char *buf, size_t len)
{
	FILE *f = fopen(logpath, "r");
	size_t n = f ? fread(buf, 1, len - 1, f) : 0;

	buf[n] = 0;
	if (f)
		fclose(f);
}

static void expect(const char *log, const char *what)
{
	TU_CHECK(strstr(log, what), "the log does not say \"%s\":\n%s", what, log);
}

/* A process that merges NP pages, then waits to be told to go. */
static int merger(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)NP * 2 * PAGE);
	char c;

	(void)arg;
	tu_fill(p, (size_t)NP * PAGE, 7);
	memcpy(p + (size_t)NP * PAGE, p, (size_t)NP * PAGE);
	TU_CHECK_RETURN(madvise(p, (size_t)NP * 2 * PAGE, MADV_MERGEABLE) == 0, "madvise");
	/* Connected before the test asks the daemon about us: the scanner
	 * thread connects on its own time, late on a busy machine. */
	TU_CHECK_RETURN(samepage_scan_now() == 0, "samepage_scan_now");
	tu_send(wr, "r", 1);
	tu_recv(rd, &c, 1);
	return 0;
}

/* Connect and send a message no daemon takes: an unknown type. */
static void send_garbage(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct sp_hdr h = { .type = 77, .len = 0 };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	char c;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", getenv("SAMEPAGE_SOCKET"));
	TU_CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect");
	TU_CHECK(send(fd, &h, sizeof(h), 0) == sizeof(h), "send");
	TU_CHECK(recv(fd, &c, 1, 0) <= 0, "the daemon answered garbage");
	close(fd);
}

static void stop_daemon(void)
{
	pid_t d = tu_daemon_pid();

	TU_CHECK(d > 0 && kill(d, SIGTERM) == 0, "SIGTERM the daemon");
	for (int i = 0; i < 100 && kill(d, 0) == 0; i++)
		tu_sleep_ms(20);
}

int main(void)
{
	static char log[65536];
	struct tu_child m;
	char c, args[64];

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	snprintf(logpath, sizeof(logpath), "%s.log", getenv("SAMEPAGE_SOCKET"));
	setenv("SAMEPAGE_LOG", logpath, 1);

	tu_spawn(&m, merger, NULL);
	TU_CHECK(tu_recv(m.rd, &c, 1) == 0, "merger did not start");
	TU_CHECK(tu_cli("set pages_to_scan=1234 >/dev/null") == 0, "set pages_to_scan");
	TU_CHECK(tu_cli("set run=2 >/dev/null") == 0 && tu_cli("set run=1 >/dev/null") == 0,
		 "set run");
	snprintf(args, sizeof(args), "unmerge --pid %d >/dev/null", (int)m.pid);
	TU_CHECK(tu_cli(args) == 0, "unmerge");
	send_garbage();
	tu_send(m.wr, "q", 1);
	TU_CHECK(tu_reap(&m) == 0, "merger exit");
	tu_sleep_ms(200);
	stop_daemon();
	read_log(log, sizeof(log));
	printf("%s", log);
	expect(log, "info: started: serving uid");
	snprintf(args, sizeof(args), "process %d joined", (int)m.pid);
	expect(log, args);
	expect(log, " -> 1234 (set by process");
	expect(log, "pages_to_scan: ");
	expect(log, "run: 1 -> 2 (set by process");
	expect(log, "run: 2 -> 1 (set by process");
	snprintf(args, sizeof(args), "unmerge of process %d asked", (int)m.pid);
	expect(log, args);
	expect(log, "warning: process");
	expect(log, "malformed message (message type 77): connection closed");
	snprintf(args, sizeof(args), "process %d left", (int)m.pid);
	expect(log, args);
	expect(log, "info: stopped: SIGTERM or SIGINT");

	/* At level warning: the warning, not the info lines. */
	unlink(logpath);
	setenv("SAMEPAGE_LOG_LEVEL", "warning", 1);
	TU_CHECK(tu_cli("daemon >/dev/null") == 0, "a new daemon");
	send_garbage();
	stop_daemon();
	read_log(log, sizeof(log));
	expect(log, "malformed message");
	TU_CHECK(!strstr(log, "info:"), "info lines at level warning:\n%s", log);
	printf("level warning: %s", log);
	return 0;
}
