/* SPDX-License-Identifier: MIT */
/*
 * steady — what scanning costs once nothing changes any more, samepage
 * against kernel KSM at the same budget, in one run.
 *
 * Workload: 2 processes, each S MiB (default 256): the first half the same
 * random pages in both (they merge), the second half random pages unique
 * to each (they never merge, and are never written again). Marked
 * MADV_MERGEABLE as in ksm_compare (libsamepage's madvise() | the raw
 * syscall).
 *
 * 1. Merge with the fast budget (pages_to_scan=100000 sleep_millisecs=0,
 *    kernel smart_scan=0) until every page of the first half of process 0
 *    shares its frame with process 1's (pagemap), at most --timeout s.
 * 2. Set both to the steady budget (--pages 10000 --sleep-ms 20: the same
 *    knobs for both) and let --settle s (default 3) pass.
 * 3. For --seconds s (default 6): the merger's CPU (ksmd | samepaged +
 *    the workloads' threads other than main, schedstat) and the pages it
 *    reports scanned (kernel: /sys/kernel/mm/ksm/pages_scanned; samepage:
 *    pages_scanned of `samepage status`), and full scans. Reported: pages
 *    scanned per second, CPU per second, CPU seconds per GiB scanned and
 *    its inverse (GB scanned per CPU second: the scan throughput of one
 *    core), and that the first half is still merged.
 * Note: "scanned" is each merger's own count. A merger may skip memory it
 * knows untouched and count it (or not); CPU per second at the same knobs
 * and the full scans per second are printed next to it for that reason.
 *
 * Needs root; kernel KSM only while measured and always off again.
 *
 *   build/bench/steady [--mib S] [--pages N] [--sleep-ms MS] [--settle SEC]
 *       [--seconds SEC] [--timeout SEC] [--repeat R] [--quiet-wait SEC]
 *       [--only samepage|kernel] [--summary FILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "benchlib.h"

#define NPROC 2
#define SEED_COMMON 0x57eadc0ull
#define SEED_UNIQUE 0x57ea0000ull
#define GOLDEN 0x9E3779B97F4A7C15ull

struct opts {
	size_t mib;
	int pages, sleep_ms, settle_s, seconds, timeout_s, repeat, quiet_s, only;
};

static void fill(void *pg, int idx, size_t i, size_t half)
{
	if (i < half)
		tu_fill(pg, PAGE, SEED_COMMON ^ (i * GOLDEN));
	else
		tu_fill(pg, PAGE, (SEED_UNIQUE ^ ((uint64_t)(idx + 1) << 40)) + i * GOLDEN);
}

/* ---- the workload process ---- */

struct wctx { enum mode mode; size_t npages; int idx; };

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->npages * PAGE;
	unsigned char *p, want[PAGE];
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	p = bench_map_pages(w->npages);
	if (!p)
		return 2;
	for (size_t i = 0; i < w->npages; i++)
		fill(p + i * PAGE, w->idx, i, w->npages / 2);
	a = (uintptr_t)p;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			int r = bench_mergeable(w->mode, p, len);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_VERIFY) {
			uint64_t bad = 0;
			for (size_t i = 0; i < w->npages; i++) {
				fill(want, w->idx, i, w->npages / 2);
				bad += memcmp(p + i * PAGE, want, PAGE) != 0;
			}
			tu_send(wr, &bad, sizeof(bad));
		} else if (cmd == CMD_QUIT) {
			return 0;
		}
	}
	return 4;
}

/* ---- one measurement ---- */

#define RESULT_FIELDS(X)                                                       \
	X(merge_s) X(merged_before_pct) X(window_s) X(scanned) X(full_scans) X(cpu_merger)          \
	X(cpu_scanner) X(merged_half_pct) X(bad) X(ksm_other_pages) X(other_cpu)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
};
#undef DECLARE

struct run {
	enum mode mode;
	size_t npages;
	struct tu_child c[NPROC];
	pid_t pids[NPROC];
	uintptr_t addr[NPROC];
	pid_t ksmd;
};

/* Pages of the first half of process 0 sharing a frame with process 1's. */
static size_t merged_half(const struct run *r)
{
	size_t half = r->npages / 2, merged;
	uint64_t *pm[NPROC] = { malloc(half * 8), malloc(half * 8) };

	if (!pm[0] || !pm[1])
		TU_FAIL("malloc");
	merged = same_frames(r->pids, r->addr, half, pm);
	free(pm[0]);
	free(pm[1]);
	return merged;
}

static uint64_t cpu_ns(const struct run *r, uint64_t *merger, uint64_t *scan)
{
	uint64_t s = 0;

	for (int k = 0; k < NPROC; k++) {
		uint64_t other;
		proc_ns(r->pids[k], &other, NULL);
		s += other;
	}
	*merger = r->mode == M_KERNEL ? task_ns(r->ksmd, r->ksmd)
				      : proc_ns(sp_daemon_pid(), NULL, NULL);
	*scan = s;
	return *merger + s;
}

static long long counter(enum mode mode, const char *name)
{
	return mode == M_KERNEL ? ksm_get(name) : tu_status(name);
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	struct wctx w[NPROC];
	uint64_t m0, s0, m1, s1, self0;
	long long sc0, sc1, fs0, fs1;
	double t0, busy0, deadline;
	size_t half = r.npages / 2;
	int err;

	memset(res, 0, sizeof(*res));
	if ((err = merger_setup(mode, 100000, 0, NULL, &r.ksmd)))
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	for (int k = 0; k < NPROC; k++) {
		w[k] = (struct wctx){ .mode = mode, .npages = r.npages, .idx = k };
		tu_spawn(&r.c[k], worker, &w[k]);
		r.pids[k] = r.c[k].pid;
	}
	for (int k = 0; k < NPROC; k++)
		if (tu_recv(r.c[k].rd, &r.addr[k], sizeof(r.addr[k])))
			TU_FAIL("worker %d failed to start", k);

	/* 1. merge the first half, fast. */
	t0 = tu_now();
	bench_start_merging(r.c, NPROC, mode);
	deadline = t0 + o->timeout_s;
	while (!bench_interrupted() && tu_now() < deadline && merged_half(&r) < half) {
		ksm_check();
		tu_sleep_ms(20);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	res->merge_s = tu_now() - t0;
	res->merged_before_pct = 100.0 * (double)merged_half(&r) / (double)half;

	/* 2. the steady budget, for both the same. */
	if ((err = set_budget(mode, o->pages, o->sleep_ms)))
		TU_FAIL("cannot set the budget of %s: %s", mode_name[mode], strerror(-err));
	tu_sleep_ms(o->settle_s * 1000);

	/* 3. the window. */
	busy0 = machine_busy_s();
	self0 = self_ns();
	sc0 = counter(mode, "pages_scanned");
	fs0 = counter(mode, "full_scans");
	cpu_ns(&r, &m0, &s0);
	t0 = tu_now();
	while (!bench_interrupted() && tu_now() < t0 + o->seconds) {
		ksm_check();
		tu_sleep_ms(100);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	cpu_ns(&r, &m1, &s1);
	res->window_s = tu_now() - t0;
	sc1 = counter(mode, "pages_scanned");
	fs1 = counter(mode, "full_scans");
	res->other_cpu = machine_busy_s() - busy0 - (double)(m1 - m0 + s1 - s0) / 1e9 -
			 (double)(self_ns() - self0) / 1e9;
	if (res->other_cpu < 0)
		res->other_cpu = 0;
	res->scanned = (double)(sc1 - sc0);
	res->full_scans = (double)(fs1 - fs0);
	res->cpu_merger = (double)(m1 - m0) / 1e9;
	res->cpu_scanner = (double)(s1 - s0) / 1e9;
	res->merged_half_pct = 100.0 * (double)merged_half(&r) / (double)half;
	if (mode == M_KERNEL)
		res->ksm_other_pages = (double)ksm_other_rmap_items(r.pids, NPROC);

	res->bad = (double)bench_verify_all(r.c, NPROC);
	bench_quit_all(r.c, NPROC);
	if (mode == M_KERNEL)
		ksm_off();
	else
		sp_teardown();
}

/* ---- report ---- */

static double gib_scanned(const struct result *r)
{
	return r->scanned * PAGE / (double)(1u << 30);
}

static double cpu_per_gib(const struct result *r)
{
	return r->scanned > 0 ? (r->cpu_merger + r->cpu_scanner) / gib_scanned(r) : 0;
}

static double gb_per_cpu_s(const struct result *r)
{
	double cpu = r->cpu_merger + r->cpu_scanner;

	return cpu > 0 ? r->scanned * PAGE / 1e9 / cpu : 0;
}

static void report(const struct opts *o, struct result runs[2][16], int n, const int *have)
{
	struct result med[2];
	const struct result *s = &med[0], *k = &med[1];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];

	for (int m = 0; m < 2; m++)
		if (have[m])
			bench_median_doubles(runs[m], n, sizeof(struct result), &med[m]);
#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nworkload: %d processes x %zu MiB, half identical (merged), half unique and "
	       "never written; %s%d run%s\n", NPROC, o->mib, n > 1 ? "median of " : "", n,
	       n > 1 ? "s" : "");
	printf("budget: merged at pages_to_scan=100000 sleep_millisecs=0, then measured at "
	       "pages_to_scan=%d sleep_millisecs=%d for both (kernel smart_scan=0), %d s after "
	       "the change, for %d s\n", o->pages, o->sleep_ms, o->settle_s, o->seconds);
	table_head();
	ROW("time to merge the identical half", "s", s->merge_s, k->merge_s);
	ROW("  merged by then", "%", s->merged_before_pct, k->merged_before_pct);
	ROW("pages scanned per second", "pg/s", s->scanned / s->window_s,
	    k->scanned / k->window_s);
	ROW("  budget: pages_to_scan/sleep", "pg/s", o->pages * 1000.0 / o->sleep_ms,
	    o->pages * 1000.0 / o->sleep_ms);
	ROW("full scans per second", "1/s", s->full_scans / s->window_s,
	    k->full_scans / k->window_s);
	ROW("merger CPU per second", "s/s", (s->cpu_merger + s->cpu_scanner) / s->window_s,
	    (k->cpu_merger + k->cpu_scanner) / k->window_s);
	ROW("  samepaged | ksmd", "s/s", s->cpu_merger / s->window_s,
	    k->cpu_merger / k->window_s);
	ROW("  scanner threads in the workloads", "s/s", s->cpu_scanner / s->window_s,
	    k->cpu_scanner / k->window_s);
	ROW("CPU per GiB scanned", "s/GiB", cpu_per_gib(s), cpu_per_gib(k));
	ROW("scan throughput per CPU second", "GB/s", gb_per_cpu_s(s), gb_per_cpu_s(k));
	ROW("other CPU use on the machine", "s", s->other_cpu, k->other_cpu);
	ROW("identical half still merged", "%", s->merged_half_pct, k->merged_half_pct);
	ROW("pages differing from expected", "pages", s->bad, k->bad);
#undef ROW
	printf("scanned: each merger's own pages_scanned counter; full scans: full_scans\n");
	if (hk && k->ksm_other_pages > 0)
		printf("NOTE: kernel KSM also had %.0f MiB of other processes' mergeable memory to "
		       "scan: its pages_scanned and CPU include it (per GiB stays comparable)\n",
		       k->ksm_other_pages / 256);
	summary("steady.cpu_per_gib", cpu_per_gib(s), cpu_per_gib(k), hs, hk);
	summary("steady.pages_per_s", s->scanned / s->window_s, k->scanned / k->window_s, hs, hk);
	summary("steady.cpu_per_s", (s->cpu_merger + s->cpu_scanner) / s->window_s,
		(k->cpu_merger + k->cpu_scanner) / k->window_s, hs, hk);
	summary("steady.gb_per_cpu_s", gb_per_cpu_s(s), gb_per_cpu_s(k), hs, hk);
	summary("steady.bad", s->bad, k->bad, hs, hk);
	summary("steady.other_cpu_s", s->other_cpu, k->other_cpu, hs, hk);
	report_disturbed("steady.disturbed");
}

static void usage(void)
{
	fprintf(stderr, "usage: steady [--mib S] [--pages N] [--sleep-ms MS] [--settle SEC] "
			"[--seconds SEC] [--timeout SEC] [--repeat R] [--quiet-wait SEC] "
			"[--only samepage|kernel] [--summary FILE]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i++) {
		int c = bench_opt(argc, argv, &i, &o->repeat, &o->quiet_s, &o->only, &o->mib);
		if (c < 0)
			usage();
		if (c)
			continue;
		if (!strcmp(argv[i], "--pages") && i + 1 < argc)
			o->pages = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--sleep-ms") && i + 1 < argc)
			o->sleep_ms = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--settle") && i + 1 < argc)
			o->settle_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			o->seconds = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o->timeout_s = atoi(argv[++i]);
		else
			usage();
	}
	if (o->mib < 2 || o->mib > (1u << 20) || o->pages < 1 || o->sleep_ms < 1 ||
	    o->settle_s < 0 || o->seconds < 1 || o->timeout_s < 1 || o->repeat < 1 ||
	    o->repeat > 16 || o->quiet_s < 0)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .pages = 10000, .sleep_ms = 20, .settle_s = 3, .seconds = 6,
			  .timeout_s = 60, .repeat = 1, .quiet_s = 30, .only = -1 };
	static struct result runs[2][16];
	int have[2] = { 0, 0 };

	parse(argc, argv, &o);
	bench_init(o.only != M_SAMEPAGE);
	for (int i = 0; i < o.repeat; i++)
		for (int m = 0; m < 2; m++) {
			struct result *r = &runs[m][i];
			if (o.only >= 0 && o.only != m)
				continue;
			wait_quiet(o.quiet_s);
			measure((enum mode)m, &o, r);
			have[m] = 1;
			fprintf(stderr, "run %d %-10s: %.0f pages/s scanned, CPU %.3f s/s, %.3f s "
					"per GiB scanned\n", i + 1, mode_name[m],
				r->scanned / r->window_s,
				(r->cpu_merger + r->cpu_scanner) / r->window_s, cpu_per_gib(r));
		}
	report(&o, runs, o.repeat, have);
	return 0;
}
