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
 *  - `samepage unmerge --pid PID` unmerges that process only; an unknown
 *    pid fails cleanly;
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
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 512u /* 2 MiB */
#define LEN ((size_t)NPAGES * PAGE)
#define NPROC 2

static char outf[64], errf[64];

struct res { int status; char out[4096]; char err[4096]; };

static void slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, len - 1, f) : 0;

	buf[n] = 0;
	if (f)
		fclose(f);
}

/* Run `samepage ARGS`, capturing stdout and stderr; status 128+ on a signal. */
static struct res cli(const char *args)
{
	char cmd[PATH_MAX + 512];
	struct res r;
	int st;

	snprintf(cmd, sizeof(cmd), "%s %s >%s 2>%s", tu_bin("samepage"), args, outf, errf);
	st = system(cmd);
	r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	slurp(outf, r.out, sizeof(r.out));
	slurp(errf, r.err, sizeof(r.err));
	return r;
}

enum { K_RUN, K_PAGES, K_SLEEP, K_ZERO, K_MAXS, NK };
static const char *const kname[NK] = {
	"run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing",
};

/* The knobs from `samepage status --json`. */
static void knobs(long long k[NK])
{
	struct res r = cli("status --json");

	TU_CHECK(r.status == 0, "status --json: exit %d: %s", r.status, r.err);
	for (int i = 0; i < NK; i++) {
		char pat[64];
		const char *p;
		snprintf(pat, sizeof(pat), "\"%s\":", kname[i]);
		p = strstr(r.out, pat);
		TU_CHECK(p && sscanf(p + strlen(pat), " %lld", &k[i]) == 1,
			 "status --json has no %s: %s", kname[i], r.out);
	}
}

static void expect_refused(const char *args)
{
	long long before[NK], after[NK];
	struct res r;

	knobs(before);
	r = cli(args);
	TU_CHECK(r.status != 0 && r.status < 128, "`samepage %s`: exit %d, want a clean failure",
		 args, r.status);
	TU_CHECK(strlen(r.err) > 0, "`samepage %s` failed without a message on stderr", args);
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

int main(void)
{
	long long k[NK];
	struct res r;
	char dir[] = "/tmp/sp-cli-XXXXXX";

	tu_require_merging();
	tu_private_daemon();
	TU_CHECK(mkdtemp(dir), "mkdtemp");
	snprintf(outf, sizeof(outf), "%s/out", dir);
	snprintf(errf, sizeof(errf), "%s/err", dir);

	/* status needs a daemon; `samepage daemon` starts the user's one. */
	r = cli("daemon");
	TU_CHECK(r.status == 0, "samepage daemon: exit %d: %s", r.status, r.err);
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

	/* ---- valid ---- */
	r = cli("set pages_to_scan=500 sleep_millisecs=5");
	TU_CHECK(r.status == 0, "set pages_to_scan=500 sleep_millisecs=5: exit %d: %s", r.status,
		 r.err);
	knobs(k);
	TU_CHECK(k[K_PAGES] == 500 && k[K_SLEEP] == 5,
		 "after set: pages_to_scan %lld sleep_millisecs %lld", k[K_PAGES], k[K_SLEEP]);

	/* ---- run=0: no merging ---- */
	r = cli("set run=0");
	TU_CHECK(r.status == 0, "set run=0: exit %d: %s", r.status, r.err);
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, NULL);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	stays_unmerged(3, "run=0");

	/* ---- run=1: merging resumes ---- */
	r = cli("set run=1");
	TU_CHECK(r.status == 0, "set run=1: exit %d: %s", r.status, r.err);
	TU_CHECK(tu_wait(merged, NULL, 30), "run=1: not merged after 30 s (%zu frames)",
		 tu_frames(pids, addrs, NPROC, NPAGES));
	contents_ok("after merging");

	/* ---- run=2: unmerged when it returns, and stays so ---- */
	r = cli("set run=2");
	TU_CHECK(r.status == 0, "set run=2: exit %d: %s", r.status, r.err);
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
	TU_CHECK(r.status == 0, "set run=1: exit %d", r.status);
	TU_CHECK(tu_wait(merged, NULL, 30), "run=1 after run=2: not merged after 30 s");
	contents_ok("after merging again");

	/* ---- unmerge one process (merging paused, so it stays visible) ---- */
	r = cli("set run=0");
	TU_CHECK(r.status == 0, "set run=0: exit %d", r.status);
	{
		char cmd[64];
		snprintf(cmd, sizeof(cmd), "unmerge --pid %d", (int)pids[0]);
		r = cli(cmd);
		TU_CHECK(r.status == 0, "%s: exit %d: %s", cmd, r.status, r.err);
	}
	TU_CHECK(tu_wait(unmerged0, NULL, 10), "unmerge --pid: process 0 still maps the pool");
	TU_CHECK(tu_pool_vmas(pids[1], 0, UINTPTR_MAX) > 0, "unmerge --pid of process 0 unmerged process 1 too");
	contents_ok("after unmerge --pid");
	r = cli("unmerge --pid 999999");
	TU_CHECK(r.status != 0 && strlen(r.err) > 0, "unmerge --pid 999999: exit %d", r.status);
	r = cli("set run=1");
	TU_CHECK(r.status == 0, "set run=1: exit %d", r.status);

	/* ---- status of a process that is not there ---- */
	r = cli("status --pid 999999");
	TU_CHECK(r.status != 0 && r.status < 128, "status --pid 999999: exit %d", r.status);
	TU_CHECK(strlen(r.err) > 0, "status --pid 999999 failed without a message");
	TU_CHECK(strlen(r.out) == 0, "status --pid 999999 printed on stdout: %s", r.out);
	r = cli("status --pid 999999 --json");
	TU_CHECK(r.status != 0 && r.status < 128 && strlen(r.out) == 0,
		 "status --pid 999999 --json: exit %d, stdout '%s'", r.status, r.out);

	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	unlink(outf);
	unlink(errf);
	rmdir(dir);
	printf("cli: ok\n");
	return 0;
}
