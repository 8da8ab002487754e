/* SPDX-License-Identifier: MIT */
/*
 * The `samepage` command line, as an operator uses it (kernel sysfs
 * semantics for the knobs):
 *  - `samepage set` refuses an unknown knob, a missing '=', a negative,
 *    non-numeric, empty or overflowing value, run=3, max_page_sharing=1 (and
 *    a valid knob next to an invalid one): non-zero exit, a message on
 *    stderr, every knob unchanged (`samepage status --json`);
 *  - `samepage set pages_to_scan=500 sleep_millisecs=5` takes effect;
 *  - run=0 stops merging (two new identical processes do not merge), run=1
 *    resumes it, run=2 returns only once everything is unmerged (frames
 *    back to 2 × pages the moment it returns) and merging stays stopped;
 *  - `samepage set` says what changed: "KNOB = NEW (was OLD)", or
 *    "(unchanged)";
 *  - a process id that is not a number (`unmerge --pid abc`, 0, -1, 12x,
 *    an overflow) is refused with a message and exit 2, and nothing is
 *    unmerged: both merged processes still map the pool seconds later
 *    (atoi() once made "abc" pid 0, every process);
 *  - `samepage unmerge --pid PID` unmerges that process only, and says so
 *    and what merging does next; an unknown pid fails cleanly;
 *  - run=2 with a stopped process holding merged pages: `set run=2
 *    --timeout 2` gives up after about 2 s, exit 1, naming that process as
 *    stopped; once it is continued, `set run=2` returns with everything
 *    unmerged and says so;
 *  - `samepage status --pid 999999` fails cleanly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 512u /* 2 MiB */
#define LEN ((size_t)NPAGES * PAGE)
#define NPROC 2

/* Run `samepage ARGS`, capturing stdout and stderr; status 128+ on a signal. */
static struct tu_output *cli(const char *args)
{
	static struct tu_output r;

	tu_cli_capture(args, &r);
	return &r;
}

enum { K_RUN, K_PAGES, K_SLEEP, K_ZERO, K_MAXS, NK };
static const char *const kname[NK] = {
	"run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing",
};

/* The knobs from `samepage status --json`. */
static void knobs(long long k[NK])
{
	struct tu_output *r = cli("status --json");

	TU_CHECK(r->status == 0, "status --json: exit %d: %s", r->status, r->err);
	for (int i = 0; i < NK; i++) {
		char pat[64];
		const char *p;
		snprintf(pat, sizeof(pat), "\"%s\":", kname[i]);
		p = strstr(r->out, pat);
		TU_CHECK(p && sscanf(p + strlen(pat), " %lld", &k[i]) == 1,
			 "status --json has no %s: %s", kname[i], r->out);
	}
}

static void expect_refused(const char *args)
{
	long long before[NK], after[NK];
	struct tu_output *r;

	knobs(before);
	r = cli(args);
	TU_CHECK(r->status != 0 && r->status < 128, "`samepage %s`: exit %d, want a clean failure",
		 args, r->status);
	TU_CHECK(strlen(r->err) > 0, "`samepage %s` failed without a message on stderr", args);
	knobs(after);
	for (int i = 0; i < NK; i++)
		TU_CHECK(before[i] == after[i], "`samepage %s` failed but changed %s from %lld to %lld",
			 args, kname[i], before[i], after[i]);
}

/* ---- two processes with the same memory ---- */

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN), *ref = malloc(LEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;
	(void)arg;

	tu_fill(p, LEN, 55);
	memcpy(ref, p, LEN);
	if (samepage_madvise(p, LEN, MADV_MERGEABLE))
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		char ok = !memcmp(p, ref, LEN);
		if (cmd == 'q')
			return ok ? 0 : 1;
		tu_send(wr, &ok, 1);
	}
	return 1;
}

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static uintptr_t addrs[NPROC];

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, NPROC, NPAGES) <= NPAGES + 4;
}

static int unmerged0(void *arg)
{
	(void)arg;
	return tu_pool_vmas(pids[0], 0, UINTPTR_MAX) == 0;
}

static void contents_ok(const char *when)
{
	for (int i = 0; i < NPROC; i++) {
		char ok = 0, cmd = 'c';
		TU_CHECK(tu_send(c[i].wr, &cmd, 1) == 0 && tu_recv(c[i].rd, &ok, 1) == 0,
			 "child %d died", i);
		TU_CHECK(ok, "%s: child %d's content changed", when, i);
	}
}

/* Frames stay 2 × pages for secs seconds. */
static void stays_unmerged(double secs, const char *when)
{
	double end = tu_now() + secs;

	while (tu_now() < end) {
		size_t f = tu_frames(pids, addrs, NPROC, NPAGES);
		TU_CHECK(f == NPROC * NPAGES, "%s: merged anyway (%zu frames for %u pages)", when, f,
			 NPAGES);
		usleep(100 * 1000);
	}
}

/* Both processes keep mapping the pool for secs seconds: nothing unmerged them. */
static void stays_merged(double secs, const char *when)
{
	double end = tu_now() + secs;

	while (tu_now() < end) {
		for (int i = 0; i < NPROC; i++)
			TU_CHECK(tu_pool_vmas(pids[i], 0, UINTPTR_MAX) > 0,
				 "%s: process %d (pid %d) was unmerged", when, i, (int)pids[i]);
		usleep(100 * 1000);
	}
}

/* A typo for a process id is refused, and nothing happens. */
static void bad_pids(void)
{
	static const char *const bad[] = { "abc", "0", "-1", "12x", "''", "99999999999", "' 5'" };
	char args[64];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(args, sizeof(args), "unmerge --pid %s", bad[i]);
		struct tu_output *r = cli(args);
		TU_CHECK(r->status == 2, "`samepage %s`: exit %d, want 2 (usage)", args, r->status);
		TU_CHECK(strstr(r->err, "--pid") && strstr(r->err, "not a process id"),
			 "`samepage %s` did not say why: '%s'", args, r->err);
		TU_CHECK(!r->out[0], "`samepage %s` printed '%s'", args, r->out);
		snprintf(args, sizeof(args), "status --pid %s", bad[i]);
		r = cli(args);
		TU_CHECK(r->status == 2 && strstr(r->err, "not a process id") && !r->out[0],
			 "`samepage %s`: exit %d, stderr '%s', stdout '%s'", args, r->status, r->err,
			 r->out);
	}
	/* An idle scanner asks for budget every 2 s at most: long enough to see
	 * an unmerge that should not have been. */
	stays_merged(4, "after `unmerge --pid abc` and the like");
}

/* `set` tells each knob's change. */
static void set_says(const char *args, const char *want1, const char *want2)
{
	struct tu_output *r = cli(args);

	TU_CHECK(r->status == 0, "`samepage %s`: exit %d: %s", args, r->status, r->err);
	TU_CHECK(strstr(r->out, want1) && (!want2 || strstr(r->out, want2)),
		 "`samepage %s` printed '%s', want '%s' and '%s'", args, r->out, want1,
		 want2 ? want2 : "");
}

/* A stopped process holds its merged pages: run=2 waits for it, and says
 * which one when it gives up. */
static void run2_stopped(void)
{
	char pidstr[32];
	struct tu_output *r;
	double t0;

	TU_CHECK(kill(pids[1], SIGSTOP) == 0, "SIGSTOP");
	t0 = tu_now();
	r = cli("set --timeout 2 run=2");
	TU_CHECK(r->status == 1, "set run=2 with a stopped process: exit %d, want 1 (gave up): %s",
		 r->status, r->err);
	TU_CHECK(tu_now() - t0 < 8, "set --timeout 2 run=2 took %.1f s", tu_now() - t0);
	snprintf(pidstr, sizeof(pidstr), "pid %d ", (int)pids[1]);
	TU_CHECK(strstr(r->err, pidstr) && strstr(r->err, "stopped"),
		 "set run=2 gave up without naming the stopped process %d: '%s'", (int)pids[1],
		 r->err);
	TU_CHECK(strstr(r->out, "run = 2 (was 1)"), "set run=2 did not say so: '%s'", r->out);
	TU_CHECK(kill(pids[1], SIGCONT) == 0, "SIGCONT");
}

int main(void)
{
	long long k[NK];
	struct tu_output *r;

	tu_require_merging();
	tu_private_daemon();

	/* status needs a daemon; `samepage daemon` starts the user's one. */
	r = cli("daemon");
	TU_CHECK(r->status == 0, "samepage daemon: exit %d: %s", r->status, r->err);
	knobs(k);
	TU_CHECK(k[K_RUN] == 1, "run is %lld at start", k[K_RUN]);

	/* ---- refused, changing nothing ---- */
	expect_refused("set bogus_knob=1");
	expect_refused("set run");
	expect_refused("set pages_to_scan=-5");
	expect_refused("set sleep_millisecs=abc");
	expect_refused("set pages_to_scan=12x");
	expect_refused("set pages_to_scan=");
	expect_refused("set pages_to_scan=99999999999999999999999");
	expect_refused("set run=3");
	expect_refused("set max_page_sharing=1");
	expect_refused("set max_page_sharing=0");
	expect_refused("set use_zero_pages=2");
	expect_refused("set =5");
	expect_refused("set pages_to_scan=500 run=3");   /* all or nothing */
	expect_refused("set sleep_millisecs=7 bogus=1");
	expect_refused("set");

	/* ---- valid, and told ---- */
	set_says("set pages_to_scan=500 sleep_millisecs=5", "pages_to_scan = 500 (was 16384)",
		 "sleep_millisecs = 5 (was 20)");
	knobs(k);
	TU_CHECK(k[K_PAGES] == 500 && k[K_SLEEP] == 5,
		 "after set: pages_to_scan %lld sleep_millisecs %lld", k[K_PAGES], k[K_SLEEP]);
	set_says("set pages_to_scan=500", "pages_to_scan = 500 (unchanged)", NULL);

	/* ---- run=0: no merging ---- */
	set_says("set run=0", "run = 0 (was 1)", NULL);
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, NULL);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	stays_unmerged(3, "run=0");

	/* ---- run=1: merging resumes ---- */
	set_says("set run=1", "run = 1 (was 0)", NULL);
	TU_CHECK(tu_wait(merged, NULL, 30), "run=1: not merged after 30 s (%zu frames)",
		 tu_frames(pids, addrs, NPROC, NPAGES));
	contents_ok("after merging");

	/* ---- run=2 waits for a stopped process, and says who ---- */
	run2_stopped();

	/* ---- run=2: unmerged when it returns, and stays so ---- */
	r = cli("set run=2");
	TU_CHECK(r->status == 0, "set run=2: exit %d: %s", r->status, r->err);
	TU_CHECK(strstr(r->out, "everything is unmerged"), "set run=2 did not say it was done: '%s'",
		 r->out);
	{
		size_t f = tu_frames(pids, addrs, NPROC, NPAGES);
		TU_CHECK(f == NPROC * NPAGES, "set run=2 returned with %zu frames for %u pages", f,
			 NPAGES);
		for (int i = 0; i < NPROC; i++) {
			TU_CHECK(tu_present(pids[i], addrs[i], NPAGES) == NPAGES,
				 "child %d: pages missing after run=2", i);
			TU_CHECK(tu_pool_vmas(pids[i], 0, UINTPTR_MAX) == 0, "child %d still maps the pool after run=2", i);
		}
	}
	contents_ok("after run=2");
	knobs(k);
	TU_CHECK(k[K_RUN] == 2, "run is %lld after set run=2", k[K_RUN]);
	stays_unmerged(2, "run=2");

	/* ---- and run=1 merges them again ---- */
	r = cli("set run=1");
	TU_CHECK(r->status == 0, "set run=1: exit %d", r->status);
	TU_CHECK(tu_wait(merged, NULL, 30), "run=1 after run=2: not merged after 30 s");
	contents_ok("after merging again");

	/* ---- with merging paused, what is merged stays merged: a bad pid
	 * must unmerge nothing, a good one that process only ---- */
	r = cli("set run=0");
	TU_CHECK(r->status == 0, "set run=0: exit %d", r->status);
	bad_pids();
	{
		char cmd[64], want[64];
		snprintf(cmd, sizeof(cmd), "unmerge --pid %d", (int)pids[0]);
		r = cli(cmd);
		TU_CHECK(r->status == 0, "%s: exit %d: %s", cmd, r->status, r->err);
		snprintf(want, sizeof(want), "process %d (", (int)pids[0]);
		TU_CHECK(strstr(r->out, want) && strstr(r->out, "run=0") &&
			 strstr(r->out, "stay unmerged"),
			 "%s did not say what it did and what comes next: '%s'", cmd, r->out);
	}
	TU_CHECK(tu_wait(unmerged0, NULL, 10), "unmerge --pid: process 0 still maps the pool");
	TU_CHECK(tu_pool_vmas(pids[1], 0, UINTPTR_MAX) > 0, "unmerge --pid of process 0 unmerged process 1 too");
	contents_ok("after unmerge --pid");
	r = cli("unmerge --pid 999999");
	TU_CHECK(r->status != 0 && strlen(r->err) > 0, "unmerge --pid 999999: exit %d", r->status);
	r = cli("set run=1");
	TU_CHECK(r->status == 0, "set run=1: exit %d", r->status);
	r = cli("unmerge");
	TU_CHECK(r->status == 0 && strstr(r->out, "2 processes") && strstr(r->out, "run=1") &&
		 strstr(r->out, "merge again"),
		 "unmerge: exit %d, said '%s' (want 2 processes, merging stays on)", r->status, r->out);

	/* ---- status of a process that is not there ---- */
	r = cli("status --pid 999999");
	TU_CHECK(r->status != 0 && r->status < 128, "status --pid 999999: exit %d", r->status);
	TU_CHECK(strlen(r->err) > 0, "status --pid 999999 failed without a message");
	TU_CHECK(strlen(r->out) == 0, "status --pid 999999 printed on stdout: %s", r->out);
	r = cli("status --pid 999999 --json");
	TU_CHECK(r->status != 0 && r->status < 128 && strlen(r->out) == 0,
		 "status --pid 999999 --json: exit %d, stdout '%s'", r->status, r->out);

	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	printf("cli: ok\n");
	return 0;
}
