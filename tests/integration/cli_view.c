/* SPDX-License-Identifier: MIT */
/*
 * Watching merging from the command line, against two real processes
 * whose 2 MiB of identical pages merge:
 *  - `samepage top -b -n 1` prints one frame: the totals (Saved, Pool,
 *    Pages, Scan, CPU), a sparkline of the saving, the column header, and a
 *    row for each merging process: its pid, its command (this test's
 *    /proc/PID/comm), its merging pages as the daemon counts them
 *    (`status --pid`), state "merging"; no escape sequence, stdout being
 *    no terminal; `top -n 1` without -b too (stdout is a file);
 *  - `top -b -n 3 -d 0.2 --sort pid` prints exactly 3 frames, rows in pid
 *    order, and `--sort pid --reverse` the other way; a stopped process
 *    shows as "stopped";
 *  - `top --sort bogus`, `-n 0`, `-d abc` are usage errors (exit 2);
 *  - on a terminal (a pty): the alternate screen, the sort column (SAVED)
 *    in reverse video and a row per process; '>' moves the sort to the
 *    next column (VOLATILE), 'q' quits with exit 0, the terminal given
 *    back (the alternate screen left, echo and line editing on again); so
 *    does Ctrl-C;
 *  - `status --watch 1`, killed after 3.5 s, printed its header and at
 *    least 3 samples (one line each, the processes counted);
 *  - `status --watch 0.3 --count 3 --json`: exactly 3 lines, each one JSON
 *    object with "time" and the counters; `--watch 0.3 --count 2 --long`
 *    two whole blocks; `--pid PID --watch 0.3 --count 2` two lines naming
 *    the process; `--count` without `--watch`, `--watch 0`, `--watch abc`:
 *    usage errors.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 512u
#define LEN ((size_t)NPAGES * PAGE)
#define NPROC 2

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static uintptr_t addrs[NPROC];

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;
	(void)arg;

	tu_fill(p, LEN, 77);
	if (samepage_madvise(p, LEN, MADV_MERGEABLE))
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0)
		if (cmd == 'q')
			return 0;
	return 1;
}

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, NPROC, NPAGES) <= NPAGES + 4;
}

static struct tu_output *cli(const char *args)
{
	static struct tu_output r;

	tu_cli_capture(args, &r);
	return &r;
}

static int count(const char *s, const char *what)
{
	int n = 0;

	for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
		n++;
	return n;
}

/* The row of pid in a frame: the line that starts with it. */
static const char *row_of(const char *frame, pid_t pid)
{
	char want[32];
	const char *p;

	snprintf(want, sizeof(want), "\n%7d ", (int)pid);
	p = strstr(frame, want);
	return p ? p + 1 : NULL;
}

static void frame_ok(const char *args)
{
	struct tu_output *r = cli(args);
	char comm[32] = "", json[8192];

	TU_CHECK(r->status == 0, "`samepage %s`: exit %d: %s", args, r->status, r->err);
	TU_CHECK(!strchr(r->out, '\033'), "`samepage %s` wrote escapes into a file: %s", args,
		 r->out);
	static const char *const parts[] = { "Saved: ", "Pool: ", "Pages: ", "Scan: ",
					     "CPU: scanners ", "daemon ", "Saved, last ",
					     "PID COMMAND" };
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		TU_CHECK(strstr(r->out, parts[i]), "`samepage %s` has no '%s':\n%s", args, parts[i],
			 r->out);
	TU_CHECK(count(r->out, "samepage top - ") == 1, "`samepage %s`: not one frame:\n%s", args,
		 r->out);
	TU_CHECK(tu_read_text("/proc/self/comm", comm, sizeof(comm)) == 0, "comm");
	comm[strcspn(comm, "\n")] = 0;
	for (int i = 0; i < NPROC; i++) {
		const char *row = row_of(r->out, pids[i]);
		long long merging = 0, want;
		char name[32] = "", state[32] = "";
		TU_CHECK(row, "`samepage %s`: no row for pid %d:\n%s", args, (int)pids[i], r->out);
		TU_CHECK(sscanf(row, "%*d %31s %lld %*s %*s %*s %*s %*s %31s", name, &merging,
				state) == 3, "row: %.100s", row);
		TU_CHECK(tu_status_json(pids[i], json, sizeof(json)) == 0, "status --pid %d",
			 (int)pids[i]);
		want = tu_json_get(json, "ksm_merging_pages");
		TU_CHECK(!strcmp(name, comm), "row of %d names '%s', want '%s'", (int)pids[i], name,
			 comm);
		TU_CHECK(merging >= NPAGES / 2 && merging == want,
			 "row of %d: MERGING %lld, the daemon says %lld (%u pages)", (int)pids[i],
			 merging, want, NPAGES);
		TU_CHECK(!strcmp(state, "merging"), "row of %d: state '%s'", (int)pids[i], state);
	}
}

static void top_tests(void)
{
	struct tu_output *r;
	const char *a, *b;

	frame_ok("top -b -n 1");
	frame_ok("top -n 1");
	r = cli("top -b -n 3 -d 0.2 --sort pid");
	TU_CHECK(r->status == 0 && count(r->out, "samepage top - ") == 3,
		 "top -n 3: exit %d, %d frames", r->status, count(r->out, "samepage top - "));
	a = row_of(r->out, pids[0] < pids[1] ? pids[0] : pids[1]);
	b = row_of(r->out, pids[0] < pids[1] ? pids[1] : pids[0]);
	TU_CHECK(a && b && a < b, "--sort pid: rows not in pid order:\n%s", r->out);
	r = cli("top -b -n 1 --sort pid --reverse");
	a = row_of(r->out, pids[0] < pids[1] ? pids[0] : pids[1]);
	b = row_of(r->out, pids[0] < pids[1] ? pids[1] : pids[0]);
	TU_CHECK(r->status == 0 && a && b && a > b, "--reverse: rows not reversed:\n%s", r->out);

	TU_CHECK(kill(pids[1], SIGSTOP) == 0, "SIGSTOP");
	r = cli("top -b -n 1");
	b = row_of(r->out, pids[1]);
	TU_CHECK(b && strstr(b, "stopped") && strstr(b, "stopped") < strchr(b, '\n'),
		 "a stopped process is not shown stopped:\n%s", r->out);
	TU_CHECK(kill(pids[1], SIGCONT) == 0, "SIGCONT");

	static const char *const bad[] = { "top --sort bogus", "top -n 0", "top -d abc",
					   "top -d 0", "top extra" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = cli(bad[i]);
		TU_CHECK(r->status == 2 && r->err[0] && !r->out[0], "`samepage %s`: exit %d, '%s'",
			 bad[i], r->status, r->err);
	}
}

/* Read the pty into buf until it holds want, up to secs. */
static int pty_until(int fd, char *buf, size_t len, size_t *n, const char *want, double secs)
{
	double end = tu_now() + secs;

	while (!strstr(buf, want) && tu_now() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t r = read(fd, buf + *n, len - 1 - *n);
		if (r <= 0)
			break;
		*n += (size_t)r;
		buf[*n] = 0;
		if (*n > len / 2) { /* keep the tail */
			memmove(buf, buf + *n - len / 4, len / 4);
			*n = len / 4;
			buf[*n] = 0;
		}
	}
	return strstr(buf, want) != NULL;
}

static void top_pty(const char *quit, const char *how)
{
	static char buf[1 << 16];
	struct termios tio;
	size_t n = 0;
	char row[32];
	int fd, st = 0;
	pid_t w, pid = forkpty(&fd, NULL, NULL, NULL);
	double t0;

	TU_CHECK(pid >= 0, "forkpty");
	if (pid == 0) {
		execl(tu_bin("samepage"), "samepage", "top", "-d", "0.3", (char *)NULL);
		_exit(127);
	}
	buf[0] = 0;
	TU_CHECK(pty_until(fd, buf, sizeof(buf), &n, "\033[7mSAVED\033[27m", 5),
		 "top on a terminal: no header with SAVED marked: '%s'", buf);
	TU_CHECK(strstr(buf, "\033[?1049h"), "top did not take the alternate screen");
	snprintf(row, sizeof(row), "\n%7d ", (int)pids[0]);
	TU_CHECK(pty_until(fd, buf, sizeof(buf), &n, row, 3), "no row for %d on the terminal",
		 (int)pids[0]);
	TU_CHECK(write(fd, ">", 1) == 1, "write");
	TU_CHECK(pty_until(fd, buf, sizeof(buf), &n, "\033[7mVOLATILE\033[27m", 3),
		 "'>' did not move the sort to VOLATILE");
	TU_CHECK(write(fd, quit, 1) == 1, "write");
	t0 = tu_now();
	TU_CHECK(pty_until(fd, buf, sizeof(buf), &n, "\033[?1049l", 3),
		 "%s: the alternate screen was not left", how);
	while ((w = waitpid(pid, &st, WNOHANG)) == 0 && tu_now() - t0 < 3)
		tu_sleep_ms(20);
	if (w != pid)
		kill(pid, SIGKILL);
	TU_CHECK(w == pid, "%s: top did not end", how);
	TU_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: top's status %#x", how, st);
	TU_CHECK(tcgetattr(fd, &tio) == 0 && (tio.c_lflag & (ICANON | ECHO)) == (ICANON | ECHO),
		 "%s: the terminal was left without echo or line editing", how);
	close(fd);
}

static void watch_tests(void)
{
	static struct tu_output w;
	struct tu_output *r = &w;
	char cmd[4096], want[32];
	int lines = 0;

	/* As a person at a terminal or a log would run it: until stopped. */
	snprintf(cmd, sizeof(cmd), "timeout -s INT 3.5 %s status --watch 1", tu_bin("samepage"));
	tu_sh_capture(cmd, r);
	TU_CHECK(strncmp(r->out, "time ", 5) == 0 && strstr(r->out, " sharing ") &&
		 strstr(r->out, " procs "), "status --watch 1: no header:\n%s", r->out);
	/* Each sample: time shared sharing unshared volatile zero saved pool
	 * scanned/s scans procs limited. */
	for (const char *p = strchr(r->out, '\n'); p && p[1]; p = strchr(p + 1, '\n')) {
		unsigned long long shared, sharing, procs;
		TU_CHECK(sscanf(p + 1, "%*s %llu %llu %*s %*s %*s %*s %*s %*s %*s %llu", &shared,
				&sharing, &procs) == 3, "status --watch 1: line '%.120s'", p + 1);
		TU_CHECK(procs == NPROC && sharing >= NPAGES / 2, "status --watch 1: %llu "
			 "processes, %llu pages sharing: '%.120s'", procs, sharing, p + 1);
		lines++;
	}
	TU_CHECK(lines >= 3, "status --watch 1 printed %d samples in 3.5 s:\n%s", lines, r->out);

	r = cli("status --watch 0.3 --count 3 --json");
	TU_CHECK(r->status == 0 && count(r->out, "\n") == 3 && count(r->out, "{\"time\": ") == 3 &&
		 count(r->out, "\"pages_sharing\": ") == 3 && count(r->out, "}\n") == 3,
		 "status --watch --count 3 --json: exit %d:\n%s", r->status, r->out);
	r = cli("status --watch 0.3 --count 2 --long");
	TU_CHECK(r->status == 0 && count(r->out, "pages_sharing ") == 2 &&
		 count(r->out, "\ntime ") + (strncmp(r->out, "time ", 5) == 0) == 2,
		 "status --watch --count 2 --long: exit %d:\n%s", r->status, r->out);
	snprintf(cmd, sizeof(cmd), "status --pid %d --watch 0.3 --count 2", (int)pids[0]);
	r = cli(cmd);
	snprintf(want, sizeof(want), " %d ", (int)pids[0]);
	TU_CHECK(r->status == 0 && count(r->out, want) == 2 && strstr(r->out, "merging"),
		 "%s: exit %d:\n%s", cmd, r->status, r->out);

	static const char *const bad[] = { "status --count 3", "status --watch 0",
					   "status --watch abc", "status --watch 1 --count 0",
					   "status --long" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = cli(bad[i]);
		TU_CHECK(r->status == 2 && r->err[0] && !r->out[0], "`samepage %s`: exit %d, '%s'",
			 bad[i], r->status, r->err);
	}
}

int main(void)
{
	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, NULL);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	TU_CHECK(tu_wait(merged, NULL, 30), "not merged after 30 s (%zu frames)",
		 tu_frames(pids, addrs, NPROC, NPAGES));
	top_tests();
	top_pty("q", "'q'");
	top_pty("\003", "Ctrl-C");
	watch_tests();
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	printf("cli_view: ok\n");
	return 0;
}
