/* SPDX-License-Identifier: MIT */
/*
 * mixed — a mixed load merged by samepage and by kernel KSM, in one run,
 * with ratios: how much each saves, and how soon.
 *
 * Workload: 4 processes, each S MiB (default 256) of private anonymous
 * memory marked MADV_MERGEABLE (samepage: libsamepage's madvise(); kernel:
 * syscall(SYS_madvise), as in ksm_compare), laid out per process as
 *   [0, 50%)    common: page i holds the same random bytes in every process;
 *   [50%, 60%)  zero (written with zeros before anything is timed);
 *   [60%, 70%)  volatile: a thread of the process ("bench-rewrite") rewrites
 *               each of these pages with fresh random bytes once every
 *               --period-ms (default 200), in batches of 64 pages spread
 *               evenly over the period; when it falls behind it does not
 *               catch up, so the rate is bounded (at the defaults, 25.6 MiB
 *               per 200 ms: 128 MiB/s per process);
 *   [70%, 100%) unique to the process.
 * Everything is written once before the clock starts.
 *
 * Budget: pages_to_scan=100000 sleep_millisecs=0 for both (kernel:
 * smart_scan=0, use_zero_pages left as it is). Measured from the outside:
 *   - the saving over time: distinct page frames of the 4 processes'
 *     regions (pagemap) before merging minus now, every 200 ms (or 3 times
 *     as long as counting takes, if longer);
 *   - the run ends once the saving has not grown by 0.2% of the ideal
 *     saving for --settle seconds (default 5) during which the merger
 *     completed at least 2 full scans (full_scans), or after --max-s
 *     (default 60);
 *   - the final saving: the median over that last settle window; the time
 *     until the saving first reached 99% of it (t99), and the merger's CPU
 *     (ksmd | samepaged + scanner threads; the rewriters are not counted)
 *     until then and until the end;
 *   - that every page still holds what the process wrote (volatile pages:
 *     their last rewrite, checked after the rewriters stopped).
 * Each merger runs once (--repeat R: medians of R), samepage first.
 *
 * Needs root (pagemap frames, ksmd, /sys/kernel/mm/ksm); kernel KSM is
 * switched on only while measured and off again (run=2, pages_shared=0,
 * run=0, knobs restored), also on errors and signals.
 *
 *   build/bench/mixed [--mib S] [--period-ms P] [--settle SEC] [--max-s SEC]
 *       [--repeat R] [--quiet-wait SEC] [--only samepage|kernel] [--series]
 *       [--summary FILE] [--csv FILE]
 *
 * --csv FILE: every sample of the last run of each, one line each:
 * merger,t_s,saved_mib,cpu_s (bench/plot.sh draws them).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "benchlib.h"

#define NPROC 4
#define SEED_COMMON 0xc0117011ull
#define SEED_UNIQUE 0x0417e000ull
#define SEED_VOLATILE 0xf01a7111ull
#define GOLDEN 0x9E3779B97F4A7C15ull
#define BATCH 64
#define POLL_MS 200
#define MAX_SAMPLES 4096

struct opts {
	size_t mib;
	int period_ms, settle_s, max_s, repeat, quiet_s, only, series;
	const char *csv;
};

/* ---- the layout of a process's region ---- */

struct layout { size_t npages, common, zero_end, vol_end; };

static struct layout layout_of(size_t mib)
{
	size_t n = mib * 256;

	return (struct layout){ .npages = n, .common = n / 2, .zero_end = n / 2 + n / 10,
				.vol_end = n / 2 + 2 * (n / 10) };
}

static void fill_common(void *pg, size_t i)
{
	tu_fill(pg, PAGE, SEED_COMMON ^ (i * GOLDEN));
}

static void fill_unique(void *pg, int idx, size_t i)
{
	tu_fill(pg, PAGE, (SEED_UNIQUE ^ ((uint64_t)(idx + 1) << 40)) + i * GOLDEN);
}

static void fill_volatile(void *pg, int idx, size_t j, uint32_t gen)
{
	tu_fill(pg, PAGE,
		(SEED_VOLATILE ^ ((uint64_t)(idx + 1) << 56) ^ ((uint64_t)gen << 24)) + j * GOLDEN);
}

/* ---- the workload process ---- */

enum { CMD_STOP = 's' }; /* and benchlib's CMD_* */

struct wctx { enum mode mode; struct layout l; int idx, period_ms; };

struct rewriter {
	unsigned char *vol; /* the first volatile page */
	size_t n;
	uint32_t *gen;      /* per page: the rewrite it holds */
	int idx, period_ms;
	atomic_int stop;
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every volatile page once per period, BATCH pages at evenly spaced
 * instants; behind schedule, the schedule restarts from now instead of
 * bursting. The generation is recorded before the page is written and the
 * stop flag read only between batches: after the join, page j holds
 * exactly fill_volatile(gen[j]). */
static void *rewrite(void *arg)
{
	struct rewriter *rw = arg;
	size_t nb = (rw->n + BATCH - 1) / BATCH;
	uint64_t step = (uint64_t)rw->period_ms * 1000000ull / (nb ? nb : 1), next = mono_ns();

	prctl(PR_SET_NAME, BENCH_THREAD "rewrite"); /* not counted as a scanner */
	for (uint32_t gen = 1; !atomic_load(&rw->stop); gen++)
		for (size_t b = 0; b < nb && !atomic_load(&rw->stop); b++) {
			for (size_t j = b * BATCH; j < rw->n && j < (b + 1) * BATCH; j++) {
				rw->gen[j] = gen;
				fill_volatile(rw->vol + j * PAGE, rw->idx, j, gen);
			}
			next += step;
			uint64_t now = mono_ns();
			if (next > now) {
				struct timespec ts = { (time_t)(next / 1000000000ull),
						       (long)(next % 1000000000ull) };
				clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			} else if (now - next > (uint64_t)rw->period_ms * 1000000ull) {
				next = now;
			}
		}
	return NULL;
}

static uint64_t verify(const unsigned char *p, const struct wctx *w, const uint32_t *gen)
{
	unsigned char want[PAGE];
	uint64_t bad = 0;

	for (size_t i = 0; i < w->l.npages; i++) {
		if (i < w->l.common)
			fill_common(want, i);
		else if (i < w->l.zero_end)
			memset(want, 0, PAGE);
		else if (i < w->l.vol_end)
			fill_volatile(want, w->idx, i - w->l.zero_end, gen[i - w->l.zero_end]);
		else
			fill_unique(want, w->idx, i);
		bad += memcmp(p + i * PAGE, want, PAGE) != 0;
	}
	return bad;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->l.npages * PAGE;
	struct rewriter rw = { .n = w->l.vol_end - w->l.zero_end, .idx = w->idx,
			       .period_ms = w->period_ms };
	pthread_t th;
	int running = 0;
	unsigned char *p;
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	p = bench_map_pages(w->l.npages);
	rw.gen = calloc(rw.n ? rw.n : 1, sizeof(*rw.gen));
	if (!p || !rw.gen)
		return 2;
	rw.vol = p + w->l.zero_end * PAGE;
	for (size_t i = 0; i < w->l.npages; i++) { /* the first touch, before any timing */
		if (i < w->l.common)
			fill_common(p + i * PAGE, i);
		else if (i < w->l.zero_end)
			memset(p + i * PAGE, 0, PAGE);
		else if (i < w->l.vol_end)
			fill_volatile(p + i * PAGE, w->idx, i - w->l.zero_end, 0);
		else
			fill_unique(p + i * PAGE, w->idx, i);
	}
	/* The rewriter runs from before the merger's first look: volatile
	 * pages are volatile from the start. */
	if (rw.n) {
		if (pthread_create(&th, NULL, rewrite, &rw))
			return 6;
		running = 1;
	}
	a = (uintptr_t)p;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			int r = bench_mergeable(w->mode, p, len);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_STOP) {
			if (running) {
				atomic_store(&rw.stop, 1);
				pthread_join(th, NULL);
				running = 0;
			}
			tu_send(wr, &cmd, 1);
		} else if (cmd == CMD_VERIFY) {
			uint64_t bad = running ? UINT64_MAX : verify(p, w, rw.gen);
			tu_send(wr, &bad, sizeof(bad));
		} else if (cmd == CMD_QUIT) {
			return 0;
		}
	}
	return 4;
}

/* ---- one measurement ---- */

struct sample { double t, saved, cpu; };

#define RESULT_FIELDS(X)                                                        \
	X(before) X(final) X(t99) X(end_s) X(cpu_t99) X(cpu_end) X(cpu_merger)  \
	X(cpu_scanner) X(cpu_rewriter) X(other_cpu) X(full_scans) X(bad)        \
	X(ksm_other_pages) X(zero_pages) X(timed_out)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
	struct sample s[MAX_SAMPLES];
	int ns;
};
#undef DECLARE

struct run {
	enum mode mode;
	struct layout l;
	struct tu_child c[NPROC];
	pid_t pids[NPROC];
	uintptr_t addr[NPROC];
	pid_t ksmd;
	uint64_t *pfn, *table; /* frames(): allocated once, polled often */
	size_t cap;
};

static void frames_alloc(struct run *r)
{
	for (r->cap = 1; r->cap < 2 * NPROC * r->l.npages; r->cap <<= 1)
		;
	r->pfn = malloc(NPROC * r->l.npages * sizeof(*r->pfn));
	r->table = malloc(r->cap * sizeof(*r->table));
	if (!r->pfn || !r->table)
		TU_FAIL("malloc");
}

/* Distinct frames of the present pages of the 4 regions. */
static size_t frames(const struct run *r)
{
	size_t n = 0;

	for (int k = 0; k < NPROC; k++)
		tu_pfns(r->pids[k], r->addr[k], r->l.npages, r->pfn, &n);
	return count_distinct(r->pfn, n, r->table, r->cap);
}

/* Merger CPU (ns): ksmd, or samepaged plus the scanner threads; the
 * rewriters (bench- threads) apart. */
static uint64_t cpu_ns(const struct run *r, uint64_t *merger, uint64_t *scan, uint64_t *bench)
{
	uint64_t s = 0, b = 0;

	for (int k = 0; k < NPROC; k++) {
		uint64_t other, bn;
		proc_ns(r->pids[k], &other, &bn);
		s += other;
		b += bn;
	}
	*merger = r->mode == M_KERNEL ? task_ns(r->ksmd, r->ksmd)
				      : proc_ns(sp_daemon_pid(), NULL, NULL);
	*scan = s;
	*bench = b;
	return *merger + s;
}

static long long full_scans(enum mode mode)
{
	return mode == M_KERNEL ? ksm_get("full_scans") : tu_status("full_scans");
}

static double ideal_pages(const struct layout *l)
{
	/* The common pages once instead of NPROC times; the zero pages for
	 * (almost) nothing. */
	return (double)(NPROC - 1) * (double)l->common + (double)NPROC * (double)(l->zero_end - l->common);
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct run r = { .mode = mode, .l = layout_of(o->mib) };
	struct wctx w[NPROC];
	uint64_t m0, s0, b0, m1, s1, b1, self0 = self_ns();
	double t0, busy0, mark = 0, t_mark = 0, ideal = ideal_pages(&r.l), last_fs_t = -1;
	long long fs0, fs_mark = 0, fs = 0;
	int err;

	memset(res, 0, sizeof(*res));
	if ((err = merger_setup(mode, 100000, 0, NULL, &r.ksmd)))
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	frames_alloc(&r);
	for (int k = 0; k < NPROC; k++) {
		w[k] = (struct wctx){ .mode = mode, .l = r.l, .idx = k, .period_ms = o->period_ms };
		tu_spawn(&r.c[k], worker, &w[k]);
		r.pids[k] = r.c[k].pid;
	}
	for (int k = 0; k < NPROC; k++)
		if (tu_recv(r.c[k].rd, &r.addr[k], sizeof(r.addr[k])))
			TU_FAIL("worker %d failed to start", k);
	res->before = (double)frames(&r);
	busy0 = machine_busy_s();
	cpu_ns(&r, &m0, &s0, &b0);
	t0 = tu_now();
	fs0 = full_scans(mode); /* none while kernel KSM is off */
	bench_start_merging(r.c, NPROC, mode);
	for (double poll_s = 0;;) {
		struct sample *sm = &res->s[res->ns < MAX_SAMPLES ? res->ns++ : MAX_SAMPLES - 1];
		uint64_t m, s, b;
		double p0;
		/* POLL_MS, or 3 times as long as a poll takes: polling must not
		 * take much of this machine's CPU from the mergers. */
		tu_sleep_ms(poll_s * 3e3 > POLL_MS ? (int)(poll_s * 3e3) : POLL_MS);
		if (bench_interrupted())
			TU_FAIL("interrupted");
		ksm_check();
		p0 = tu_now();
		sm->t = p0 - t0;
		sm->saved = res->before - (double)frames(&r);
		poll_s = tu_now() - p0;
		cpu_ns(&r, &m, &s, &b);
		sm->cpu = (double)(m - m0 + s - s0) / 1e9;
		/* full_scans costs a CLI call for samepage: once a second. */
		if (sm->t - last_fs_t >= 1) {
			fs = full_scans(mode) - fs0;
			last_fs_t = sm->t;
		}
		if (sm->saved > mark + 0.002 * ideal) {
			mark = sm->saved;
			t_mark = sm->t;
			fs_mark = fs;
		}
		if (sm->t - t_mark >= o->settle_s && fs - fs_mark >= 2 && mark > 0)
			break;
		if (sm->t >= o->max_s) {
			res->timed_out = 1;
			break;
		}
	}
	res->end_s = tu_now() - t0;
	cpu_ns(&r, &m1, &s1, &b1);
	res->cpu_merger = (double)(m1 - m0) / 1e9;
	res->cpu_scanner = (double)(s1 - s0) / 1e9;
	res->cpu_rewriter = (double)(b1 - b0) / 1e9;
	res->cpu_end = res->cpu_merger + res->cpu_scanner;
	res->full_scans = (double)fs;
	res->other_cpu = machine_busy_s() - busy0 - res->cpu_end - res->cpu_rewriter -
			 (double)(self_ns() - self0) / 1e9;
	if (res->other_cpu < 0)
		res->other_cpu = 0;
	if (mode == M_KERNEL) {
		res->ksm_other_pages = (double)ksm_other_rmap_items(r.pids, NPROC);
		for (int k = 0; k < NPROC; k++)
			res->zero_pages += (double)ksm_stat_field(r.pids[k], "ksm_zero_pages ");
	} else {
		res->zero_pages = (double)tu_status("ksm_zero_pages");
	}

	/* The final saving: the median of the settle window (or of the last
	 * settle_s seconds when the run timed out). */
	{
		double v[MAX_SAMPLES], tail = res->s[res->ns - 1].t - o->settle_s;
		int n = 0;
		for (int i = 0; i < res->ns; i++)
			if (res->s[i].t >= tail)
				v[n++] = res->s[i].saved;
		res->final = n ? median(v, n) : 0;
	}
	res->t99 = res->end_s;
	res->cpu_t99 = res->cpu_end;
	for (int i = 0; i < res->ns; i++)
		if (res->final > 0 && res->s[i].saved >= 0.99 * res->final) {
			res->t99 = res->s[i].t;
			res->cpu_t99 = res->s[i].cpu;
			break;
		}

	for (int k = 0; k < NPROC; k++) {
		char ack;
		bench_send(r.c, k, CMD_STOP);
		if (tu_recv(r.c[k].rd, &ack, 1))
			TU_FAIL("worker %d died stopping its rewriter", k);
	}
	res->bad = (double)bench_verify_all(r.c, NPROC);
	bench_quit_all(r.c, NPROC);
	if (mode == M_KERNEL)
		ksm_off();
	else
		sp_teardown();
	free(r.pfn);
	free(r.table);
}

/* ---- report ---- */

/* The saving (MiB) at time t: the last sample at or before t. */
static int saved_at(const struct result *r, double t, double *mib)
{
	int found = 0;

	for (int i = 0; i < r->ns && r->s[i].t <= t + 1e-9; i++) {
		*mib = r->s[i].saved / 256;
		found = 1;
	}
	return found && t <= r->end_s + 1e-9;
}

static void series(const struct opts *o, const struct result *s, const struct result *k,
		   const int *have)
{
	static const double marks[] = { 0.4, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120 };
	double end = 0;

	for (int m = 0; m < 2; m++)
		if (have[m])
			end = (m ? k : s)->end_s > end ? (m ? k : s)->end_s : end;
	printf("\nsaving over time (MiB; distinct frames before - now)%s:\n",
	       o->repeat > 1 ? ", the last run" : "");
	printf("%8s | %12s | %12s\n", "t (s)", "samepage", "kernel KSM");
	if (o->series) {
		/* Every sample of both, merged by time. */
		int i = 0, j = 0;
		while ((have[0] && i < s->ns) || (have[1] && j < k->ns)) {
			int take_s = have[0] && i < s->ns &&
				     (!have[1] || j >= k->ns || s->s[i].t <= k->s[j].t);
			if (take_s) {
				printf("%8.2f | %12.1f | %12s\n", s->s[i].t, s->s[i].saved / 256, "");
				i++;
			} else {
				printf("%8.2f | %12s | %12.1f\n", k->s[j].t, "", k->s[j].saved / 256);
				j++;
			}
		}
		return;
	}
	for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]) && marks[i] <= end + 1e-9; i++) {
		char a[32] = "-", b[32] = "-";
		double v;
		if (have[0] && saved_at(s, marks[i], &v))
			snprintf(a, sizeof(a), "%.1f", v);
		if (have[1] && saved_at(k, marks[i], &v))
			snprintf(b, sizeof(b), "%.1f", v);
		printf("%8.1f | %12s | %12s\n", marks[i], a, b);
	}
}

/* The samples of the last run of each merger, for plotting. */
static void write_csv(const struct opts *o, const struct result *s, const struct result *k,
		      const int *have)
{
	FILE *f = fopen(o->csv, "w");

	if (!f) {
		fprintf(stderr, "mixed: %s: %s\n", o->csv, strerror(errno));
		return;
	}
	fprintf(f, "merger,t_s,saved_mib,cpu_s\n");
	for (int m = 0; m < 2; m++) {
		const struct result *r = m ? k : s;
		for (int i = 0; have[m] && i < r->ns; i++)
			fprintf(f, "%s,%.3f,%.2f,%.4f\n", m ? "kernel" : "samepage", r->s[i].t,
				r->s[i].saved / 256, r->s[i].cpu);
	}
	fclose(f);
}

static void report(const struct opts *o, struct result *runs[2], int n, const int *have)
{
	struct result med[2];
	const struct result *s = &med[0], *k = &med[1];
	struct layout l = layout_of(o->mib);
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];
	double ideal = ideal_pages(&l) / 256;

	for (int m = 0; m < 2; m++) {
		double v[64];
		if (!have[m])
			continue;
#define MEDIAN(f)                                 \
	for (int i = 0; i < n; i++)               \
		v[i] = runs[m][i].f;              \
	med[m].f = median(v, n);
		RESULT_FIELDS(MEDIAN)
#undef MEDIAN
	}
	series(o, &runs[0][n - 1], &runs[1][n - 1], have);
	if (o->csv)
		write_csv(o, &runs[0][n - 1], &runs[1][n - 1], have);
#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nworkload: %d processes x %zu MiB: 50%% common to all, 10%% zero, 10%% rewritten "
	       "every %d ms, 30%% unique; %s%d run%s\n", NPROC, o->mib, o->period_ms,
	       n > 1 ? "median of " : "", n, n > 1 ? "s" : "");
	printf("budget: pages_to_scan=100000 sleep_millisecs=0 for both; kernel smart_scan=0, "
	       "use_zero_pages=%lld\n", ksm_get("use_zero_pages"));
	table_head();
	ROW("distinct frames before", "MiB", s->before / 256, k->before / 256);
	ROW("final saving", "MiB", s->final / 256, k->final / 256);
	ROW("  of the ideal saving", "%", 100 * s->final / 256 / ideal,
	    100 * k->final / 256 / ideal);
	ROW("time to 99% of the final saving", "s", s->t99, k->t99);
	ROW("merger CPU until then", "s", s->cpu_t99, k->cpu_t99);
	ROW("  per GiB saved", "s/GiB", s->final ? s->cpu_t99 / (s->final / 262144) : 0,
	    k->final ? k->cpu_t99 / (k->final / 262144) : 0);
	ROW("run length (settled or --max-s)", "s", s->end_s, k->end_s);
	ROW("merger CPU over the run", "s", s->cpu_end, k->cpu_end);
	ROW("  samepaged | ksmd", "s", s->cpu_merger, k->cpu_merger);
	ROW("  scanner threads in the workloads", "s", s->cpu_scanner, k->cpu_scanner);
	ROW("rewriter threads (the workload)", "s", s->cpu_rewriter, k->cpu_rewriter);
	ROW("other CPU use on the machine", "s", s->other_cpu, k->other_cpu);
	ROW("full scans in the run", "count", s->full_scans, k->full_scans);
	ROW("zero pages (ksm_zero_pages)", "count", s->zero_pages, k->zero_pages);
	ROW("pages differing from expected", "pages", s->bad, k->bad);
#undef ROW
	printf("ideal saving %.1f MiB: the common pages kept once, the zero pages for "
	       "nothing\n", ideal);
	printf("saving sampled every %.0f ms (samepage) / %.0f ms (kernel) on average: the time "
	       "resolution of t99\n", hs && runs[0][n - 1].ns ? 1e3 * runs[0][n - 1].end_s /
	       runs[0][n - 1].ns : 0, hk && runs[1][n - 1].ns ? 1e3 * runs[1][n - 1].end_s /
	       runs[1][n - 1].ns : 0);
	printf("the run ends when the saving has not grown by 0.2%% of the ideal for %d s "
	       "with >= 2 full scans meanwhile, or at %d s\n", o->settle_s, o->max_s);
	if ((hs && s->timed_out) || (hk && k->timed_out))
		printf("NOTE: some run did not settle within %d s\n", o->max_s);
	if (hk && k->ksm_other_pages > 0)
		printf("NOTE: kernel KSM also had %.0f MiB of other processes' mergeable memory to "
		       "scan: ksmd's CPU and time include it\n", k->ksm_other_pages / 256);
	summary("mixed.final_mib", s->final / 256, k->final / 256, hs, hk);
	summary("mixed.ideal_mib", ideal, ideal, hs, hk);
	summary("mixed.t99_s", s->t99, k->t99, hs, hk);
	summary("mixed.cpu_t99_s", s->cpu_t99, k->cpu_t99, hs, hk);
	summary("mixed.cpu_per_gib", s->final ? s->cpu_t99 / (s->final / 262144) : 0,
		k->final ? k->cpu_t99 / (k->final / 262144) : 0, hs, hk);
	summary("mixed.bad", s->bad, k->bad, hs, hk);
	summary("mixed.timed_out", s->timed_out, k->timed_out, hs, hk);
	summary("mixed.other_cpu_s", s->other_cpu, k->other_cpu, hs, hk);
	report_disturbed("mixed.disturbed");
}

static void usage(void)
{
	fprintf(stderr, "usage: mixed [--mib S] [--period-ms P] [--settle SEC] [--max-s SEC] "
			"[--repeat R] [--quiet-wait SEC] [--only samepage|kernel] [--series] "
			"[--summary FILE]\n");
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
		if (!strcmp(argv[i], "--period-ms") && i + 1 < argc)
			o->period_ms = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--settle") && i + 1 < argc)
			o->settle_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--max-s") && i + 1 < argc)
			o->max_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--series"))
			o->series = 1;
		else if (!strcmp(argv[i], "--csv") && i + 1 < argc)
			o->csv = argv[++i];
		else
			usage();
	}
	if (o->mib < 1 || o->mib > (1u << 20) || o->period_ms < 1 || o->settle_s < 1 ||
	    o->max_s < 1 || o->max_s * 1000 / POLL_MS >= MAX_SAMPLES || o->repeat < 1 ||
	    o->repeat > 16 || o->quiet_s < 0)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .period_ms = 200, .settle_s = 5, .max_s = 60, .repeat = 1,
			  .quiet_s = 30, .only = -1 };
	static struct result runs[2][16];
	struct result *rp[2] = { runs[0], runs[1] };
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
			fprintf(stderr, "run %d %-10s: saved %6.1f MiB, 99%% of it after %6.2f s, "
					"merger CPU %6.2f s, other load %5.2f s%s\n", i + 1,
				mode_name[m], r->final / 256, r->t99, r->cpu_t99, r->other_cpu,
				r->timed_out ? " (did not settle)" : "");
		}
	report(&o, rp, o.repeat, have);
	return 0;
}
