/* SPDX-License-Identifier: MIT */
/*
 * remerge — merged memory rewritten in scattered pages and merged again:
 * how long it takes and how many VMAs it costs, samepage against kernel KSM
 * in one run (issue 10, items 1 and 4).
 *
 * Workload: two identical copies of S MiB (default 64) of random pages
 * (every page distinct from every other, page i of one copy equal to page
 * i of the other), held either by one process (layout "one": the issue's
 * case) or one copy each by two processes (layout "two"). They are marked
 * MADV_MERGEABLE (samepage: libsamepage's madvise, as under `samepage run`;
 * kernel: syscall(SYS_madvise)) and merged fully (timed). Then R rounds
 * (default 5): round r rewrites every other page (those with page % 2 ==
 * r % 2) of both copies with the same new content, different for each page
 * and round, and the benchmark times until every page of copy 0 shares its
 * page frame with the same page of copy 1 again (pagemap, polled every
 * 10 ms or 3 x as long as a poll takes). After each round: the VMAs of
 * every process holding a copy (lines of /proc/PID/maps), the distinct
 * frames of both copies (ideal: one copy), the mergers' CPU, and every
 * byte of both copies compared with what was last written (any difference
 * is a failure: exit 1). Before each rewrite the processes sit --settle s
 * (default 3) merged and untouched, as memory does between rewrites: long
 * enough for samepage's scanner to back off to its longest sleep.
 *
 * Both mergers at pages_to_scan=100000 sleep_millisecs=0 (kernel:
 * smart_scan=0), samepage with a daemon of its own per measurement, the two
 * measured alternately in the same run. Kernel KSM is on only while
 * measured, then run=2, pages_shared 0, run=0, knobs restored (benchlib).
 *
 * Per round: rewrite time (the COW faults), time until merged again, the
 * time until the first page merged again and until 90% (whether time goes
 * to noticing the writes or to merging them), VMAs, frames, merger CPU.
 * Reported: the median over rounds (and --repeat runs) of the re-merge
 * time, its ratio samepage / kernel, and the most VMAs re-merging added to
 * a process over its count after the first merge.
 *
 *   build/bench/remerge [--mib S] [--rounds R] [--settle SEC] [--timeout SEC]
 *       [--layout one|two|both] [--repeat N] [--quiet-wait SEC]
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

#define SEED 0x7e3e7a6eull
#define MAX_ROUNDS 64
#define MAX_REPEAT 16
#define PTS 100000
#define SLEEP_MS 0

enum layout { L_ONE, L_TWO };
static const char *const layout_name[2] = { "one", "two" };
static const char *const layout_text[2] = { "1 process holding both copies",
					    "2 processes, one copy each" };

struct opts {
	size_t mib;
	int rounds, settle_s, timeout_s, repeat, quiet_s;
	int only;       /* -1: both mergers */
	int layouts;    /* bit per layout */
};

/* ---- content: what page pg holds after round r (0: before any) ---- */

/* The round that last wrote page pg, as of round r: round k writes the
 * pages of parity k % 2. */
static int last_round(size_t pg, int r)
{
	if (r > 0 && (size_t)r % 2 != pg % 2)
		r--;
	return r > 0 ? r : 0;
}

/* Distinct for every (page, round): no page equals another page. */
static void fill_page(void *p, size_t pg, int r)
{
	tu_fill(p, PAGE, SEED ^ ((uint64_t)r << 40) ^ (pg * 0x9E3779B97F4A7C15ull));
}

/* ---- the workload process: ncopies copies of npages ---- */

enum { CMD_REWRITE = 'r' }; /* and benchlib's CMD_* */

struct wctx {
	enum mode mode;
	size_t npages;
	int ncopies;
};

/* Round r's new content into every copy, page by page as an application
 * updating both would; the seconds it took (the COW faults). */
static double rewrite(unsigned char *const *copy, int ncopies, size_t npages, int r)
{
	unsigned char page[PAGE];
	double t0 = tu_now();

	for (size_t pg = (size_t)r % 2; pg < npages; pg += 2) {
		fill_page(page, pg, r);
		for (int k = 0; k < ncopies; k++)
			memcpy(copy[k] + pg * PAGE, page, PAGE);
	}
	return tu_now() - t0;
}

/* Pages of all copies that differ from what round r left. */
static uint64_t verify(unsigned char *const *copy, int ncopies, size_t npages, int r)
{
	unsigned char want[PAGE];
	uint64_t bad = 0;

	for (size_t pg = 0; pg < npages; pg++) {
		fill_page(want, pg, last_round(pg, r));
		for (int k = 0; k < ncopies; k++)
			bad += memcmp(copy[k] + pg * PAGE, want, PAGE) != 0;
	}
	return bad;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->npages * PAGE;
	unsigned char *copy[2];
	uintptr_t addr[2] = { 0, 0 };
	char cmd;
	int r;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (int k = 0; k < w->ncopies; k++) {
		copy[k] = bench_map_pages(w->npages);
		if (!copy[k])
			return 2;
		for (size_t pg = 0; pg < w->npages; pg++) /* first touch, before any timing */
			fill_page(copy[k] + pg * PAGE, pg, 0);
		addr[k] = (uintptr_t)copy[k];
	}
	if (tu_send(wr, addr, sizeof(addr)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			int rc = 0;
			for (int k = 0; k < w->ncopies && !rc; k++)
				rc = bench_mergeable(w->mode, copy[k], len);
			tu_send(wr, &rc, sizeof(rc));
		} else if (cmd == CMD_REWRITE) {
			if (tu_recv(rd, &r, sizeof(r)))
				return 4;
			double s = rewrite(copy, w->ncopies, w->npages, r);
			tu_send(wr, &s, sizeof(s));
		} else if (cmd == CMD_VERIFY) {
			if (tu_recv(rd, &r, sizeof(r)))
				return 4;
			uint64_t bad = verify(copy, w->ncopies, w->npages, r);
			tu_send(wr, &bad, sizeof(bad));
		} else if (cmd == CMD_QUIT) {
			return 0;
		}
	}
	return 5;
}

/* ---- one measurement: a merger, a layout, all rounds ---- */

struct round {
	double rewrite_s;   /* slowest process's rewrite */
	double remerge_s;   /* from the end of the rewrite until all shared again */
	double first_s;     /* until the first rewritten page shared again */
	double t90_s;       /* until 90% of the rewritten pages shared again */
	double merged_pct;  /* pages of copy 0 sharing their frame at the end */
	double frames;      /* distinct frames of both copies at the end */
	long vmas[2];       /* of each process holding a copy */
	double merger_cpu_s; /* ksmd | samepaged + scanner threads, while re-merging */
	double idle_cpu;    /* the same, per second while settled before the rewrite */
	double idle_daemon; /* of which samepaged's */
	double bad;         /* pages differing from what was written */
	long long sp_full_scans, sp_pool_pages, sp_pool_written, sp_volatile; /* samepage */
};

struct run {
	enum mode mode;
	enum layout layout;
	size_t npages;
	int nproc;
	pid_t ksmd;
	struct tu_child c[2];
	pid_t pid[2];       /* the process holding copy k */
	uintptr_t addr[2];  /* copy k */
	uint64_t *pm[2];
	long vmas_before[2], vmas_merged[2];
	double merge_s, merge_pct, merge_frames, frames_before;
	struct round rd[MAX_ROUNDS];
	int nrounds;
	double other_rmap_pages;
};

static void start_workers(struct run *r, struct wctx *w)
{
	r->nproc = r->layout == L_ONE ? 1 : 2;
	for (int k = 0; k < r->nproc; k++) {
		w[k] = (struct wctx){ .mode = r->mode, .npages = r->npages,
				      .ncopies = r->layout == L_ONE ? 2 : 1 };
		tu_spawn(&r->c[k], worker, &w[k]);
	}
	for (int k = 0; k < r->nproc; k++) {
		uintptr_t a[2];
		if (tu_recv(r->c[k].rd, a, sizeof(a)))
			TU_FAIL("worker %d failed to start", k);
		if (r->layout == L_ONE) {
			r->pid[0] = r->pid[1] = r->c[0].pid;
			r->addr[0] = a[0];
			r->addr[1] = a[1];
		} else {
			r->pid[k] = r->c[k].pid;
			r->addr[k] = a[0];
		}
	}
	for (int k = 0; k < 2; k++)
		if (!(r->pm[k] = malloc(r->npages * 8)))
			TU_FAIL("malloc");
}

/* Pages of copy 0 on the same frame as copy 1's page at that offset. */
static size_t shared_pages(struct run *r)
{
	return same_frames(r->pid, r->addr, r->npages, r->pm);
}

static double frames(struct run *r)
{
	return (double)tu_frames(r->pid, r->addr, 2, r->npages);
}

/* ksmd's CPU, or samepaged's (*daemon) plus the workers' threads but
 * main (the scanners): ns. */
static uint64_t merger_ns(const struct run *r, uint64_t *daemon)
{
	uint64_t s = 0;

	*daemon = 0;
	if (r->mode == M_KERNEL)
		return task_ns(r->ksmd, r->ksmd);
	for (int k = 0; k < r->nproc; k++) {
		uint64_t other;
		proc_ns(r->c[k].pid, &other, NULL);
		s += other;
	}
	*daemon = proc_ns(sp_daemon_pid(), NULL, NULL);
	return s + *daemon;
}

static void vmas_now(const struct run *r, long *v)
{
	for (int k = 0; k < r->nproc; k++)
		v[k] = tu_vmas(r->c[k].pid);
	if (r->nproc == 1)
		v[1] = v[0];
}

/* 10 ms between polls, or 3 x a poll's own duration: polling must not take
 * the mergers' CPU on a 2-CPU machine. */
static void poll_pause(double poll_s)
{
	int ms = (int)(poll_s * 3e3);

	tu_sleep_ms(ms > 10 ? ms : 10);
}

struct progress {
	double first_s, t90_s, done_s;
	size_t shared;
};

/* Poll until every page of copy 0 shares its frame with copy 1's again
 * (or timeout): from shared0 pages shared at t0, when the first more were,
 * when 90% of the rest were, when all were. */
static void wait_merged(struct run *r, double t0, size_t shared0, int timeout_s,
			struct progress *p)
{
	size_t todo = r->npages - shared0;
	double deadline = t0 + timeout_s;

	*p = (struct progress){ -1, -1, -1, shared0 };
	while (!bench_interrupted() && tu_now() < deadline) {
		double p0 = tu_now(), t;
		p->shared = shared_pages(r);
		t = tu_now() - t0;
		if (p->first_s < 0 && p->shared > shared0)
			p->first_s = t;
		if (p->t90_s < 0 && p->shared >= shared0 && (p->shared - shared0) * 10 >= todo * 9)
			p->t90_s = t;
		if (p->shared == r->npages) {
			p->done_s = t;
			break;
		}
		ksm_check();
		poll_pause(tu_now() - p0);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	if (p->done_s < 0)
		p->done_s = tu_now() - t0; /* not merged: the time waited */
}

static void first_merge(struct run *r, const struct opts *o)
{
	struct progress p;
	double t0;

	r->frames_before = frames(r);
	vmas_now(r, r->vmas_before);
	t0 = tu_now();
	bench_start_merging(r->c, r->nproc, r->mode);
	wait_merged(r, t0, 0, o->timeout_s * 2, &p);
	r->merge_s = p.done_s;
	r->merge_pct = 100.0 * (double)p.shared / (double)r->npages;
	r->merge_frames = frames(r);
	vmas_now(r, r->vmas_merged);
}

/* A command with the round number to every worker. */
static void send_round(struct run *r, char cmd, int round)
{
	for (int k = 0; k < r->nproc; k++) {
		bench_send(r->c, k, cmd);
		if (tu_send(r->c[k].wr, &round, sizeof(round)))
			TU_FAIL("worker %d gone", k);
	}
}

/* Round n's rewrite in every worker at once; the slowest one's seconds. */
static double rewrite_all(struct run *r, int n)
{
	double worst = 0;

	send_round(r, CMD_REWRITE, n);
	for (int k = 0; k < r->nproc; k++) {
		double s;
		if (tu_recv(r->c[k].rd, &s, sizeof(s)))
			TU_FAIL("worker %d died rewriting", k);
		if (s > worst)
			worst = s;
	}
	return worst;
}

/* Pages of all copies that differ from what round n left. */
static double verify_all(struct run *r, int n)
{
	double bad = 0;

	send_round(r, CMD_VERIFY, n);
	for (int k = 0; k < r->nproc; k++) {
		uint64_t b;
		if (tu_recv(r->c[k].rd, &b, sizeof(b)))
			TU_FAIL("worker %d died verifying", k);
		bad += (double)b;
	}
	return bad;
}

static void sp_counters(struct round *rd)
{
	char buf[8192];

	if (tu_status_json(0, buf, sizeof(buf)))
		return;
	rd->sp_full_scans = tu_json_get(buf, "full_scans");
	rd->sp_pool_pages = tu_json_get(buf, "pool_pages");
	rd->sp_pool_written = tu_json_get(buf, "pool_written");
	rd->sp_volatile = tu_json_get(buf, "pages_volatile");
}

/* VMAs a round added to a process over its count after the first merge,
 * the more of the two. */
static long round_vmas_added(const struct run *r, const struct round *rd)
{
	long a = rd->vmas[0] - r->vmas_merged[0], b = rd->vmas[1] - r->vmas_merged[1];

	return a > b ? a : b;
}

static void one_round(struct run *r, const struct opts *o, int n)
{
	struct round *rd = &r->rd[n - 1];
	struct progress p;
	uint64_t d0, d1, c0 = merger_ns(r, &d0), c1;
	size_t shared0;
	double t0 = tu_now();

	/* Merged and untouched for a while, as between an application's
	 * updates: samepage's scanner backs off meanwhile, ksmd does not.
	 * What watching unchanged memory costs is the other side of that. */
	tu_sleep_ms(o->settle_s * 1000);
	c1 = merger_ns(r, &d1);
	rd->idle_cpu = (double)(c1 - c0) / 1e9 / (tu_now() - t0);
	rd->idle_daemon = (double)(d1 - d0) / 1e9 / (tu_now() - t0);
	rd->rewrite_s = rewrite_all(r, n);
	t0 = tu_now();
	c0 = merger_ns(r, &d0);
	shared0 = shared_pages(r);
	wait_merged(r, t0, shared0, o->timeout_s, &p);
	rd->merger_cpu_s = (double)(merger_ns(r, &d1) - c0) / 1e9;
	rd->remerge_s = p.done_s;
	rd->first_s = p.first_s;
	rd->t90_s = p.t90_s;
	rd->merged_pct = 100.0 * (double)p.shared / (double)r->npages;
	vmas_now(r, rd->vmas);
	rd->frames = frames(r);
	if (r->mode == M_SAMEPAGE)
		sp_counters(rd);
	rd->bad = verify_all(r, n);
	r->nrounds = n;
	fprintf(stderr, "  %-10s %s round %d: rewrite %.3f s, merged again %s%.3f s (first %.3f, "
			"90%% %.3f), %.0f frames, VMAs %ld/%ld (%+ld), merger CPU %.3f s, bad %.0f\n",
		mode_name[r->mode], layout_name[r->layout], n, rd->rewrite_s,
		rd->merged_pct < 100 ? "NOT (timeout) " : "", rd->remerge_s, rd->first_s, rd->t90_s,
		rd->frames, rd->vmas[0], rd->vmas[1], round_vmas_added(r, rd), rd->merger_cpu_s,
		rd->bad);
	/* Content is the one thing that must never be wrong. */
	if (rd->bad)
		TU_FAIL("%s, layout %s, round %d: %.0f pages differ from what was written",
			mode_name[r->mode], layout_name[r->layout], n, rd->bad);
}

static void finish(struct run *r)
{
	bench_quit_all(r->c, r->nproc);
	for (int k = 0; k < 2; k++)
		free(r->pm[k]);
	if (r->mode == M_KERNEL)
		ksm_off();
	else
		sp_teardown();
}

static void measure(struct run *r, const struct opts *o)
{
	struct wctx w[2];
	int err;

	wait_quiet(o->quiet_s);
	err = merger_setup(r->mode, PTS, SLEEP_MS, NULL, &r->ksmd);
	if (err)
		TU_FAIL("cannot get %s ready: %s", mode_name[r->mode], strerror(-err));
	start_workers(r, w);
	first_merge(r, o);
	fprintf(stderr, "  %-10s %s: merged 2 x %zu MiB in %.3f s (%.1f%%), VMAs %ld -> %ld\n",
		mode_name[r->mode], layout_name[r->layout], o->mib, r->merge_s, r->merge_pct,
		r->vmas_before[0], r->vmas_merged[0]);
	if (r->merge_pct < 100)
		TU_FAIL("%s did not merge the two copies within %d s", mode_name[r->mode],
			o->timeout_s * 2);
	if (r->mode == M_KERNEL)
		r->other_rmap_pages = (double)ksm_other_rmap_items(r->pid, 2);
	for (int n = 1; n <= o->rounds; n++)
		one_round(r, o, n);
	finish(r);
}

/* ---- report ---- */

/* VMAs re-merging added to a process, most over rounds and processes,
 * against its count after the first merge. */
static double vmas_added(const struct run *r)
{
	long most = 0;

	for (int n = 0; n < r->nrounds; n++)
		if (round_vmas_added(r, &r->rd[n]) > most)
			most = round_vmas_added(r, &r->rd[n]);
	return (double)most;
}

/* Median over every round of every run of one field. */
#define ROUND_MEDIAN(fn, field)                                             \
	static double fn(const struct run *runs, int nruns)                 \
	{                                                                   \
		double v[MAX_ROUNDS * MAX_REPEAT];                          \
		int n = 0;                                                  \
		for (int i = 0; i < nruns; i++)                             \
			for (int k = 0; k < runs[i].nrounds; k++)           \
				v[n++] = runs[i].rd[k].field;               \
		return n ? median(v, n) : 0;                                \
	}
ROUND_MEDIAN(med_remerge, remerge_s)
ROUND_MEDIAN(med_first, first_s)
ROUND_MEDIAN(med_t90, t90_s)
ROUND_MEDIAN(med_rewrite, rewrite_s)
ROUND_MEDIAN(med_cpu, merger_cpu_s)
ROUND_MEDIAN(med_frames, frames)
ROUND_MEDIAN(med_idle, idle_cpu)
ROUND_MEDIAN(med_idle_daemon, idle_daemon)

static double max_of(const struct run *runs, int nruns, double (*f)(const struct run *))
{
	double m = 0;

	for (int i = 0; i < nruns; i++)
		if (f(&runs[i]) > m)
			m = f(&runs[i]);
	return m;
}

static double max_round_s(const struct run *r)
{
	double m = 0;

	for (int n = 0; n < r->nrounds; n++)
		if (r->rd[n].remerge_s > m)
			m = r->rd[n].remerge_s;
	return m;
}

static double min_round_pct(const struct run *r)
{
	double m = 100;

	for (int n = 0; n < r->nrounds; n++)
		if (r->rd[n].merged_pct < m)
			m = r->rd[n].merged_pct;
	return m;
}

static double first_merge_s(const struct run *r)
{
	return r->merge_s;
}

/* The fewest pages merged at the end of any round (100: all). */
static double worst_pct(const struct run *runs, int nruns)
{
	double m = 100;

	for (int i = 0; i < nruns; i++)
		if (min_round_pct(&runs[i]) < m)
			m = min_round_pct(&runs[i]);
	return m;
}

static double vmas_first(const struct run *r)
{
	long a = r->vmas_merged[0] - r->vmas_before[0], b = r->vmas_merged[1] - r->vmas_before[1];

	return (double)(a > b ? a : b);
}

static void per_round_table(const struct run *r)
{
	printf("  %-10s round | rewrite s | re-merge s | first s | 90%% s | frames | VMAs p0 p1 "
	       "(+ vs merged) | merger CPU s | settled CPU s/s%s\n", mode_name[r->mode],
	       r->mode == M_SAMEPAGE ? " | full_scans pool_pages pool_written volatile" : "");
	for (int n = 0; n < r->nrounds; n++) {
		const struct round *rd = &r->rd[n];
		printf("  %-10s %5d | %9.3f | %10.3f%s | %7.3f | %6.3f | %6.0f | %5ld %5ld (%+ld %+ld) "
		       "| %12.3f | %15.3f", "", n + 1, rd->rewrite_s, rd->remerge_s,
		       rd->merged_pct < 100 ? "!" : " ", rd->first_s, rd->t90_s, rd->frames,
		       rd->vmas[0], rd->vmas[1], rd->vmas[0] - r->vmas_merged[0],
		       rd->vmas[1] - r->vmas_merged[1], rd->merger_cpu_s, rd->idle_cpu);
		if (r->mode == M_SAMEPAGE)
			printf(" | %lld %lld %lld %lld", rd->sp_full_scans, rd->sp_pool_pages,
			       rd->sp_pool_written, rd->sp_volatile);
		printf("\n");
	}
}

static void report(const struct opts *o, enum layout lay, struct run *const runs[2],
		   const int *have)
{
	const struct run *s = runs[M_SAMEPAGE], *k = runs[M_KERNEL];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL], n = o->repeat;
	char key[64];

	printf("\nlayout %s: %s; 2 copies x %zu MiB (%zu pages each) of random pages; %d rounds "
	       "of rewriting every other page of both copies alike; %d s settled before each; "
	       "%d run%s\n", layout_name[lay], layout_text[lay], o->mib, o->mib * 256, o->rounds,
	       o->settle_s, n, n > 1 ? "s" : "");
	for (int m = 0; m < 2; m++)
		for (int i = 0; have[m] && i < n; i++) {
			printf("  %s, run %d: first merge %.3f s, frames %.0f -> %.0f, VMAs %ld -> %ld "
			       "(process 0)\n", mode_name[m], i + 1, runs[m][i].merge_s,
			       runs[m][i].frames_before, runs[m][i].merge_frames,
			       runs[m][i].vmas_before[0], runs[m][i].vmas_merged[0]);
			per_round_table(&runs[m][i]);
		}
	table_head();
#define ROW(name, unit, fs, fk) row(name, unit, hs ? (fs) : 0, hk ? (fk) : 0, hs, hk)
	ROW("first merge: time", "s", max_of(s, n, first_merge_s), max_of(k, n, first_merge_s));
	ROW("first merge: VMAs added (most/proc)", "count", max_of(s, n, vmas_first),
	    max_of(k, n, vmas_first));
	ROW("rewrite of half the pages (median)", "s", med_rewrite(s, n), med_rewrite(k, n));
	ROW("re-merge: time (median over rounds)", "s", med_remerge(s, n), med_remerge(k, n));
	ROW("  slowest round", "s", max_of(s, n, max_round_s), max_of(k, n, max_round_s));
	ROW("  first page merged again (median)", "s", med_first(s, n), med_first(k, n));
	ROW("  90% merged again (median)", "s", med_t90(s, n), med_t90(k, n));
	ROW("  merger CPU per round (median)", "s", med_cpu(s, n), med_cpu(k, n));
	ROW("merger CPU while settled (median)", "s/s", med_idle(s, n), med_idle(k, n));
	row("  of it samepaged's", "s/s", hs ? med_idle_daemon(s, n) : 0, 0, hs, 0);
	ROW("  pages merged again, worst round", "%", worst_pct(s, n), worst_pct(k, n));
	ROW("  distinct frames after (median)", "pages", med_frames(s, n), med_frames(k, n));
	ROW("re-merge: VMAs added (most/proc)", "count", max_of(s, n, vmas_added),
	    max_of(k, n, vmas_added));
#undef ROW
	printf("ideal frames: %zu (one copy); time from the end of each rewrite; \"VMAs added\": "
	       "over the count after the first merge, most over rounds and processes\n",
	       o->mib * 256);
	if (hk && k->other_rmap_pages > 0)
		printf("NOTE: kernel KSM also scanned %.0f MiB of other processes' mergeable memory "
		       "(rmap_items): its times include them\n", k->other_rmap_pages / 256);
	if ((hs && max_of(s, n, max_round_s) >= o->timeout_s) ||
	    (hk && max_of(k, n, max_round_s) >= o->timeout_s))
		printf("NOTE: some round did not merge again within %d s (its time is the timeout)\n",
		       o->timeout_s);

#define SUM(name, fs, fk)                                                           \
	do {                                                                        \
		snprintf(key, sizeof(key), "remerge.%s.%s", layout_name[lay], name); \
		summary(key, hs ? (fs) : 0, hk ? (fk) : 0, hs, hk);                 \
	} while (0)
	SUM("time_s", med_remerge(s, n), med_remerge(k, n));
	SUM("max_s", max_of(s, n, max_round_s), max_of(k, n, max_round_s));
	SUM("first_s", med_first(s, n), med_first(k, n));
	SUM("vmas_added", max_of(s, n, vmas_added), max_of(k, n, vmas_added));
	SUM("merge_s", max_of(s, n, first_merge_s), max_of(k, n, first_merge_s));
	SUM("idle_cpu", med_idle(s, n), med_idle(k, n));
#undef SUM
}

static void usage(void)
{
	fprintf(stderr, "usage: remerge [--mib S] [--rounds R] [--settle SEC] [--timeout SEC] "
			"[--layout one|two|both] [--repeat N] [--quiet-wait SEC] "
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
		if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			o->rounds = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--settle") && i + 1 < argc)
			o->settle_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o->timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--layout") && i + 1 < argc) {
			i++;
			o->layouts = !strcmp(argv[i], "one") ? 1 : !strcmp(argv[i], "two") ? 2 :
				     !strcmp(argv[i], "both") ? 3 : 0;
		} else
			usage();
	}
	if (!o->mib || o->mib > (1u << 16) || o->rounds < 1 || o->rounds > MAX_ROUNDS ||
	    o->settle_s < 0 || o->timeout_s < 1 || o->repeat < 1 || o->repeat > MAX_REPEAT ||
	    o->quiet_s < 0 || !o->layouts)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 64, .rounds = 5, .settle_s = 3, .timeout_s = 60, .repeat = 1,
			  .quiet_s = 30, .only = -1, .layouts = 1 };
	static struct run runs[2][2][MAX_REPEAT]; /* layout, mode, repeat */
	double bad = 0;

	parse(argc, argv, &o);
	bench_init(o.only != M_SAMEPAGE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int lay = 0; lay < 2; lay++) {
		int have[2] = { 0, 0 };
		if (!(o.layouts & (1 << lay)))
			continue;
		/* Alternate the two, so that a change in the machine's load hits both. */
		for (int i = 0; i < o.repeat; i++)
			for (int m = 0; m < 2; m++) {
				struct run *r = &runs[lay][m][i];
				if (o.only >= 0 && o.only != m)
					continue;
				*r = (struct run){ .mode = (enum mode)m, .layout = (enum layout)lay,
						   .npages = o.mib * 256 };
				measure(r, &o);
				have[m] = 1;
			}
		struct run *const pr[2] = { runs[lay][0], runs[lay][1] };
		report(&o, (enum layout)lay, pr, have);
	}
	/* Content was checked after every round (a mismatch failed there). */
	summary("remerge.bad", bad, bad, 1, 1);
	report_disturbed("remerge.disturbed");
	return 0;
}
