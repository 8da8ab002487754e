/* SPDX-License-Identifier: MIT */
/*
 * capped — samepage against kernel KSM at equal CPU: both mergers held to
 * the same share of one core, time until 90% of the saving (issue 12).
 *
 * How most users run either merger: not flat out, but with a budget that
 * keeps it to a small share of a CPU. Knob values mean different work in
 * the two (a kernel "page scanned" and a samepage one cost differently,
 * and samepage's daemon works for the scanners), so equal knobs are not
 * equal CPU. Each merger's knob is therefore *calibrated by its measured
 * CPU*, on this very workload:
 *
 *   - sleep_millisecs is fixed (--sleep-ms, default 20, both mergers'
 *     default; --sleep-ms-samepage / --sleep-ms-kernel for one), and
 *     pages_to_scan searched for: a run at a guess, its CPU share measured
 *     (below), the next guess from the shares seen (see next_pages():
 *     ksmd's busy/sleeping ratio, samepage's share, taken as growing in
 *     proportion to pages_to_scan), until a run lands within --tolerance
 *     (default 10%, relative: 9-11% of a core for 10%), at most
 *     --calib-runs runs (default 6). That run and --repeat - 1 more at the
 *     same knobs are the measurement (their median); the others are
 *     printed as the calibration's path. When no run lands within the
 *     tolerance the nearest counts and a NOTE says so.
 *   - a run during which others used more than --max-other of a core
 *     (default 0.3; "others": the machine's busy time less the merger's,
 *     the workloads' and this program's) is *disturbed*: it steers the
 *     calibration like any other (one within the tolerance is repeated at
 *     the same knobs), but counts only when no undisturbed run landed
 *     within the tolerance (at most 4 runs more than the above are made
 *     to replace disturbed ones).
 *   - the CPU share of a run: merger CPU from the madvise until 90% of the
 *     saving, over that time. Merger CPU: ksmd's (schedstat of the kernel
 *     thread), or samepaged's (all its threads) plus the workloads'
 *     threads other than main (samepage's scanners, "samepage-scan";
 *     threads named bench-* excluded). The workloads' main threads idle
 *     meanwhile; their CPU is printed, not counted.
 *
 * Workload (as ksm_compare): 2 processes, each S MiB (--mib, default 256)
 * of the same random pages, written before anything is timed, THP off;
 * marked with madvise(MADV_MERGEABLE): libsamepage's (linked) for
 * samepage, the raw syscall for the kernel. The saving: pages of process
 * 0 sharing their frame with process 1's page at the same offset
 * (pagemap), polled every 100 ms (or 3 x a poll's own duration), until
 * every page is merged (at most --timeout s). The final saving is the
 * last poll's; the time to 90% (and 50%, and to the final) is
 * interpolated between the two polls around it, the CPU likewise.
 *
 * Shares: --shares 10,25 (percent of one core, each measured in turn; the
 * second starts from the first's calibration). samepage and kernel runs
 * alternate, so that a change in the machine's load hits both. Kernel:
 * smart_scan=0 (benchlib), advisor_mode must be "none" (the advisor would
 * set pages_to_scan itself). samepage: a daemon of its own per run, its
 * other knobs at their defaults.
 *
 * Needs root; kernel KSM only while measured and always off again (run=2,
 * pages_shared=0, run=0, knobs restored), also on errors and signals.
 *
 *   build/bench/capped [--mib S] [--shares P1,P2,...] [--sleep-ms MS]
 *       [--sleep-ms-samepage MS] [--sleep-ms-kernel MS]
 *       [--tolerance PCT] [--calib-runs N] [--start-samepage PAGES]
 *       [--start-kernel PAGES] [--max-other CORES] [--timeout SEC] [--repeat R]
 *       [--quiet-wait SEC] [--only samepage|kernel] [--trace] [--summary FILE]
 *
 * --trace prints every poll (time, share merged, CPU) on stderr.
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
#define SEED 0xca99edull
#define MAX_SHARES 8
#define MAX_RUNS 32
#define POLL_MS 100
/* Runs beyond --calib-runs + --repeat - 1 for those others disturbed. */
#define EXTRA_RUNS 4
/* pages_to_scan is kept within what both accept (samepage: 1 .. 2^24). */
#define PAGES_MAX (1ll << 24)

struct opts {
	size_t mib;
	int nshares;
	double share[MAX_SHARES]; /* fraction of one core */
	int sleep_ms[2];           /* per merger (enum mode) */
	int calib_runs, timeout_s, repeat, quiet_s, only;
	double tol;                /* relative */
	double max_other;          /* others' CPU, in cores, a run may see */
	int trace;                 /* print every poll on stderr */
	long long start[2];        /* first guess of pages_to_scan, 0: derived */
};

/* ---- the workload process ---- */

struct wctx { enum mode mode; size_t npages; };

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->npages * PAGE;
	unsigned char *p;
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	p = bench_map_pages(w->npages);
	if (!p)
		return 2;
	bench_fill_pages(p, w->npages, SEED);
	a = (uintptr_t)p;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			int r = bench_mergeable(w->mode, p, len);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_VERIFY) {
			uint64_t bad = bench_pages_differ(p, w->npages, SEED);
			tu_send(wr, &bad, sizeof(bad));
		} else if (cmd == CMD_QUIT) {
			return 0;
		}
	}
	return 4;
}

/* ---- one run ---- */

#define RESULT_FIELDS(X)                                                       \
	X(pages) X(merged_pct) X(t50_s) X(t90_s) X(tfinal_s) X(cpu90_s)        \
	X(merger90_s) X(scan90_s) X(main90_s) X(share_pct) X(share_final_pct)  \
	X(cpu_final_s) X(other_cpu_s) X(poll_ms) X(saved_mib) X(bad)           \
	X(ksm_other_pages) X(window_s)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
};
#undef DECLARE

/* One poll: time since the madvise, pages merged, CPU so far (s). */
struct sample { double t, merged, merger, scan, main; };

struct run {
	enum mode mode;
	size_t npages;
	struct tu_child c[NPROC];
	pid_t pids[NPROC];
	uintptr_t addr[NPROC];
	uint64_t *pm[NPROC];
	pid_t ksmd;
	struct sample *s;
	size_t ns, cap;
};

/* CPU (ns) of the merger (ksmd | samepaged), the workloads' other threads
 * (samepage's scanners) and their main threads. */
static void cpu_now(const struct run *r, uint64_t *merger, uint64_t *scan, uint64_t *main_ns)
{
	uint64_t s = 0, m = 0;

	for (int k = 0; k < NPROC; k++) {
		uint64_t other, all = proc_ns(r->pids[k], &other, NULL);
		s += other;
		m += all - other;
	}
	*merger = r->mode == M_KERNEL ? task_ns(r->ksmd, r->ksmd) :
					proc_ns(sp_daemon_pid(), NULL, NULL);
	*scan = s;
	*main_ns = m;
}

static void add_sample(struct run *r, double t, size_t merged, const uint64_t base[3])
{
	uint64_t m, s, w;

	cpu_now(r, &m, &s, &w);
	if (r->ns == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 1024;
		struct sample *n = realloc(r->s, cap * sizeof(*n));
		if (!n)
			TU_FAIL("realloc");
		r->s = n;
		r->cap = cap;
	}
	r->s[r->ns++] = (struct sample){ .t = t, .merged = (double)merged,
					 .merger = (double)(m - base[0]) / 1e9,
					 .scan = (double)(s - base[1]) / 1e9,
					 .main = (double)(w - base[2]) / 1e9 };
}

/* The sample at the first moment `level` pages were merged, interpolated
 * linearly between the polls before and after it. */
static struct sample at_level(const struct run *r, double level)
{
	const struct sample *s = r->s;
	size_t i = 0;

	while (i < r->ns && s[i].merged < level)
		i++;
	if (i == r->ns)
		return s[r->ns - 1];
	if (i == 0 || s[i].merged <= s[i - 1].merged)
		return s[i];
	double f = (level - s[i - 1].merged) / (s[i].merged - s[i - 1].merged);
#define LERP(x) (s[i - 1].x + f * (s[i].x - s[i - 1].x))
	return (struct sample){ .t = LERP(t), .merged = level, .merger = LERP(merger),
				.scan = LERP(scan), .main = LERP(main) };
#undef LERP
}

static int advisor_off(void)
{
	char buf[64];

	/* Absent (before 6.9): there is no advisor. */
	if (tu_read_text("/sys/kernel/mm/ksm/advisor_mode", buf, sizeof(buf)))
		return 1;
	return strstr(buf, "[none]") != NULL;
}

static void measure(enum mode mode, long long pages, const struct opts *o, struct result *res)
{
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	struct wctx w = { .mode = mode, .npages = r.npages };
	uint64_t base[3], self0;
	size_t merged = 0, frames_before;
	double t0, busy0, deadline, polled = 0;
	int err, polls = 0;

	memset(res, 0, sizeof(*res));
	res->pages = (double)pages;
	if ((err = merger_setup(mode, pages, o->sleep_ms[mode], NULL, &r.ksmd)))
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	/* With the advisor on, pages_to_scan is its, not ours; it is
	 * someone else's setting, not ours to change. */
	if (mode == M_KERNEL && !advisor_off())
		TU_FAIL("kernel KSM's advisor_mode is not none: it sets pages_to_scan itself, "
			"the calibration cannot (echo none > /sys/kernel/mm/ksm/advisor_mode)");
	for (int k = 0; k < NPROC; k++) {
		tu_spawn(&r.c[k], worker, &w);
		r.pids[k] = r.c[k].pid;
		r.pm[k] = malloc(r.npages * 8);
		if (!r.pm[k])
			TU_FAIL("malloc");
	}
	for (int k = 0; k < NPROC; k++)
		if (tu_recv(r.c[k].rd, &r.addr[k], sizeof(r.addr[k])))
			TU_FAIL("worker %d failed to start", k);
	frames_before = tu_frames(r.pids, r.addr, NPROC, r.npages);

	cpu_now(&r, &base[0], &base[1], &base[2]);
	busy0 = machine_busy_s();
	self0 = self_ns();
	t0 = tu_now();
	add_sample(&r, 0, 0, base);
	bench_start_merging(r.c, NPROC, mode);
	deadline = t0 + o->timeout_s;
	while (!bench_interrupted() && tu_now() < deadline) {
		double p0 = tu_now(), dt;
		/* CPU is read with the frames, so that both describe one moment. */
		merged = same_frames(r.pids, r.addr, r.npages, r.pm);
		add_sample(&r, p0 - t0, merged, base);
		dt = tu_now() - p0;
		polled += dt;
		polls++;
		if (merged == r.npages)
			break;
		ksm_check();
		/* 100 ms, or 3 x as long as a poll took: the polling must not
		 * take much of a CPU the capped merger could use. */
		tu_sleep_ms((int)(dt * 3e3) > POLL_MS ? (int)(dt * 3e3) : POLL_MS);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	ksm_check();
	res->window_s = tu_now() - t0;
	/* Whatever else ran meanwhile (other users of this machine): the
	 * machine's busy time less the merger's, the workloads' and this
	 * program's own. */
	res->other_cpu_s = machine_busy_s() - busy0 - (double)(self_ns() - self0) / 1e9;

	/* The curve itself: whether merging goes at the budget's pace or
	 * stalls somewhere is read from it. */
	for (size_t i = 0; o->trace && i < r.ns; i++)
		fprintf(stderr, "trace %s pages_to_scan=%lld t=%.3f merged=%.1f%% cpu=%.3f "
				"(merger %.3f scanners %.3f)\n", mode_name[mode], pages, r.s[i].t,
			100 * r.s[i].merged / (double)r.npages, r.s[i].merger + r.s[i].scan,
			r.s[i].merger, r.s[i].scan);

	struct sample last = r.s[r.ns - 1];
	double final = last.merged;
	if (final > 0) {
		struct sample h = at_level(&r, 0.5 * final), n = at_level(&r, 0.9 * final),
			      f = at_level(&r, final);
		res->t50_s = h.t;
		res->t90_s = n.t;
		res->tfinal_s = f.t;
		res->merger90_s = n.merger;
		res->scan90_s = n.scan;
		res->main90_s = n.main;
		res->cpu90_s = n.merger + n.scan;
		res->share_pct = n.t > 0 ? 100 * res->cpu90_s / n.t : 0;
		res->cpu_final_s = f.merger + f.scan;
		res->share_final_pct = f.t > 0 ? 100 * res->cpu_final_s / f.t : 0;
	}
	res->merged_pct = 100.0 * final / (double)r.npages;
	res->poll_ms = polls ? polled * 1e3 / polls : 0;
	res->other_cpu_s -= last.merger + last.scan + last.main;
	if (res->other_cpu_s < 0)
		res->other_cpu_s = 0;
	res->saved_mib = ((double)frames_before -
			  (double)tu_frames(r.pids, r.addr, NPROC, r.npages)) / 256;
	if (mode == M_KERNEL)
		res->ksm_other_pages = (double)ksm_other_rmap_items(r.pids, NPROC);

	res->bad = (double)bench_verify_all(r.c, NPROC);
	bench_quit_all(r.c, NPROC);
	for (int k = 0; k < NPROC; k++)
		free(r.pm[k]);
	free(r.s);
	if (mode == M_KERNEL)
		ksm_off();
	else
		sp_teardown();
}

/* ---- calibration ---- */

/* What grows in proportion to pages_to_scan, by each merger's way of
 * spending it. ksmd scans pages_to_scan pages, then sleeps
 * sleep_millisecs: its busy time over its sleeping time, share / (1 -
 * share), does. samepage's scanners draw pages from a token bucket the
 * daemon refills at pages_to_scan per sleep_millisecs however long the
 * scanning takes: the share itself does. */
static double load(enum mode mode, double share)
{
	if (mode == M_SAMEPAGE)
		return share;
	if (share > 0.95)
		share = 0.95;
	return share / (1 - share);
}

static long long clamp_pages(double p)
{
	return p < 1 ? 1 : p > (double)PAGES_MAX ? PAGES_MAX : (long long)(p + 0.5);
}

static double dabs(double x)
{
	return x < 0 ? -x : x;
}

/* sqrt(x) for x >= 1, without libm (the benchmarks link none). */
static double sqrt_approx(double x)
{
	double r = x > 1 ? x / 2 : 1;

	for (int i = 0; i < 60; i++)
		r = (r + x / r) / 2;
	return r;
}

/* A first guess, in pages per millisecond of sleep_millisecs per unit of
 * load(), from calibrated runs of 2 x 256 MiB on the development VM
 * (kernel: 463 pages / 20 ms used 10% of a core, 1438 25%; samepage: 186
 * used 9.7%). Elsewhere the search corrects it. */
static long long first_guess(enum mode mode, double share, int sleep_ms)
{
	double per_ms = mode == M_KERNEL ? 210 : 90;

	return clamp_pages(load(mode, share) * sleep_ms * per_ms);
}

/* The next pages_to_scan from the runs so far (pages, share). Once runs
 * on both sides of the target exist, the nearest below (lo) and above
 * (hi): along the line through them in load() (interpolation), or
 * halfway (geometrically) when that lands on or outside either. Before,
 * from the run nearest the target: load() proportional to pages_to_scan,
 * at most 4 x or 1/4 of its pages per step (a disturbed run must not send
 * the search far off), and at least 5% away from any value tried: a
 * repeat at the same knobs would teach the search little. */
static long long next_pages(enum mode mode, const double *pages, const double *share, int n,
			    double target)
{
	int near = -1, lo = -1, hi = -1;
	double xt = load(mode, target), p;

	for (int i = 0; i < n; i++) {
		if (near < 0 || dabs(share[i] - target) < dabs(share[near] - target))
			near = i;
		if (share[i] < target && (lo < 0 || pages[i] > pages[lo]))
			lo = i;
		if (share[i] >= target && (hi < 0 || pages[i] < pages[hi]))
			hi = i;
	}
	if (lo >= 0 && hi >= 0 && pages[lo] < pages[hi]) {
		double xl = load(mode, share[lo]), xh = load(mode, share[hi]);
		p = xh > xl ? pages[lo] + (xt - xl) * (pages[hi] - pages[lo]) / (xh - xl) : 0;
		if (p < pages[lo] + 1 || p > pages[hi] - 1)
			p = sqrt_approx(pages[lo] * pages[hi]);
		if (p < pages[lo] + 1 || p > pages[hi] - 1)
			return clamp_pages(pages[near]); /* nothing between them */
		return clamp_pages(p);
	}
	if (share[near] <= 0)
		return clamp_pages(pages[near] * 4); /* no CPU seen at all */
	p = pages[near] * xt / load(mode, share[near]);
	if (p < pages[near] / 4)
		p = pages[near] / 4;
	if (p > pages[near] * 4)
		p = pages[near] * 4;
	/* A bracket whose ends are out of order (noise) or one side only:
	 * step at least 5% away from anything tried. */
	for (int again = 1; again;) {
		again = 0;
		for (int i = 0; i < n; i++)
			if (dabs(p - pages[i]) < 0.05 * pages[i] + 0.5) {
				p = share[near] < target ? pages[i] * 1.05 + 1 : pages[i] * 0.95 - 1;
				again = p >= 1;
			}
	}
	return clamp_pages(p);
}

/* Every run of one merger at one share. */
struct series {
	struct result run[MAX_RUNS];
	int n;
	int counted[MAX_RUNS]; /* part of the measurement */
	int ncounted;
	int calibrated;        /* a run landed within the tolerance */
	int done;
	long long pages;       /* for the next run */
};

static int within(double share_pct, double target, double tol)
{
	return share_pct > 0 && dabs(share_pct / 100 / target - 1) <= tol;
}

/* Others used more than --max-other of a core meanwhile: the run's time
 * (and, through shared caches, its CPU) is theirs as much as the merger's. */
static int disturbed(const struct result *r, const struct opts *o)
{
	return r->window_s > 0 && r->other_cpu_s / r->window_s > o->max_other;
}

/* Without a calibrated run: the runs within the tolerance, however
 * disturbed (the least disturbed first, --repeat of them at most), or
 * else the one nearest the target, count; the report says so. */
static void fall_back(struct series *s, double target, const struct opts *o)
{
	int best = -1;

	while (s->ncounted < o->repeat) {
		int pick = -1;
		for (int i = 0; i < s->n; i++)
			if (!s->counted[i] && within(s->run[i].share_pct, target, o->tol) &&
			    (pick < 0 || s->run[i].other_cpu_s / s->run[i].window_s <
						 s->run[pick].other_cpu_s / s->run[pick].window_s))
				pick = i;
		if (pick < 0)
			break;
		s->counted[pick] = 1;
		s->ncounted++;
	}
	if (s->ncounted)
		return;
	for (int i = 0; i < s->n; i++)
		if (best < 0 || dabs(s->run[i].share_pct / 100 - target) <
				dabs(s->run[best].share_pct / 100 - target))
			best = i;
	if (best >= 0) {
		s->counted[best] = 1;
		s->ncounted = 1;
	}
}

static void median_of(const struct series *s, struct result *out)
{
	double v[MAX_RUNS];
	int n;

#define MEDIAN(f)                                      \
	n = 0;                                         \
	for (int i = 0; i < s->n; i++)                 \
		if (s->counted[i])                     \
			v[n++] = s->run[i].f;          \
	out->f = n ? median(v, n) : 0;
	RESULT_FIELDS(MEDIAN)
#undef MEDIAN
}

/* After run i of a series: count it, or calibrate from it. */
static void judge(struct series *s, const struct opts *o, double target, enum mode mode)
{
	const struct result *r = &s->run[s->n - 1];
	const int max_runs = o->calib_runs + o->repeat - 1 + EXTRA_RUNS;
	int dist = disturbed(r, o);

	if (!s->calibrated && !dist && within(r->share_pct, target, o->tol))
		s->calibrated = 1; /* these knobs, from now on */
	if (s->calibrated) {
		if (!dist) {
			s->counted[s->n - 1] = 1;
			s->ncounted++;
		}
		s->done = s->ncounted >= o->repeat;
	} else if (s->n >= o->calib_runs) {
		s->done = 1;
	} else if (within(r->share_pct, target, o->tol)) {
		/* Within the tolerance, but disturbed: the same knobs again,
		 * hoping for a quieter machine. */
	} else {
		/* From every run, disturbed ones too: their shares are noisier,
		 * but steering by the undisturbed ones alone repeated the same
		 * knobs for as long as others kept the machine busy. */
		double p[MAX_RUNS], sh[MAX_RUNS];
		for (int i = 0; i < s->n; i++) {
			p[i] = s->run[i].pages;
			sh[i] = s->run[i].share_pct / 100;
		}
		s->pages = next_pages(mode, p, sh, s->n, target);
	}
	if (s->n >= max_runs)
		s->done = 1;
	if (s->done && !s->ncounted)
		fall_back(s, target, o);
}

/* One share: both mergers calibrated and measured, alternating, so that
 * a change in the machine's load hits both. */
static void run_share(const struct opts *o, double target, struct series ser[2])
{
	for (int busy = 1; busy;) {
		busy = 0;
		for (int m = 0; m < 2; m++) {
			struct series *s = &ser[m];
			if ((o->only >= 0 && o->only != m) || s->done)
				continue;
			wait_quiet(o->quiet_s);
			struct result *r = &s->run[s->n];
			int was_calibrated = s->calibrated;
			measure((enum mode)m, s->pages, o, r);
			s->n++;
			judge(s, o, target, (enum mode)m);
			fprintf(stderr, "%4.0f%% %-10s run %d: pages_to_scan=%-7.0f CPU %5.1f%% of a "
					"core until 90%% (%.2f s), 90%% in %6.2f s, merged %5.1f%%, "
					"others %.2f cores%s\n", target * 100, mode_name[m], s->n,
				r->pages, r->share_pct, r->cpu90_s, r->t90_s, r->merged_pct,
				r->window_s > 0 ? r->other_cpu_s / r->window_s : 0,
				disturbed(r, o) ? "  (disturbed: not counted)" :
				!was_calibrated && s->calibrated ? "  <- within tolerance: counted" :
				s->counted[s->n - 1] ? "  counted" : "");
			busy |= !s->done;
		}
	}
}

/* ---- report ---- */

static void report(const struct opts *o, double target, struct series ser[2], const int *have)
{
	struct result med[2] = { { 0 } };
	const struct result *s = &med[M_SAMEPAGE], *k = &med[M_KERNEL];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];
	char key[64];
	int pct = (int)(target * 100 + 0.5);

	for (int m = 0; m < 2; m++)
		if (have[m])
			median_of(&ser[m], &med[m]);
#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nat %d%% of one core (accepted: %.1f-%.1f%%), sleep_millisecs=%d (samepage) "
	       "%d (kernel); median of the runs counted (samepage %d, kernel %d)\n", pct,
	       target * 100 * (1 - o->tol), target * 100 * (1 + o->tol), o->sleep_ms[M_SAMEPAGE],
	       o->sleep_ms[M_KERNEL], ser[M_SAMEPAGE].ncounted, ser[M_KERNEL].ncounted);
	table_head();
	ROW("pages_to_scan (calibrated)", "pages", s->pages, k->pages);
	ROW("runs, calibration included", "count", ser[M_SAMEPAGE].n, ser[M_KERNEL].n);
	ROW("  counted (the median's)", "count", ser[M_SAMEPAGE].ncounted, ser[M_KERNEL].ncounted);
	ROW("merger CPU until 90%, share", "%", s->share_pct, k->share_pct);
	ROW("time to 90% of the saving", "s", s->t90_s, k->t90_s);
	ROW("  to 50%", "s", s->t50_s, k->t50_s);
	ROW("  to the final saving", "s", s->tfinal_s, k->tfinal_s);
	ROW("merger CPU until 90%", "s", s->cpu90_s, k->cpu90_s);
	ROW("  samepaged | ksmd", "s", s->merger90_s, k->merger90_s);
	ROW("  scanner threads in the workloads", "s", s->scan90_s, k->scan90_s);
	ROW("  main threads (not counted)", "s", s->main90_s, k->main90_s);
	ROW("merger CPU share until the final", "%", s->share_final_pct, k->share_final_pct);
	ROW("final saving: pages merged", "%", s->merged_pct, k->merged_pct);
	ROW("memory saved (frames)", "MiB", s->saved_mib, k->saved_mib);
	ROW("other CPU use on the machine", "s", s->other_cpu_s, k->other_cpu_s);
	ROW("  in cores, over the run", "cores", s->window_s > 0 ? s->other_cpu_s / s->window_s : 0,
	    k->window_s > 0 ? k->other_cpu_s / k->window_s : 0);
	ROW("pagemap poll", "ms", s->poll_ms, k->poll_ms);
	ROW("pages differing from expected", "pages", s->bad, k->bad);
#undef ROW
	for (int m = 0; m < 2; m++) {
		if (!have[m])
			continue;
		if (!ser[m].calibrated)
			printf("NOTE: %s never came within %.0f%% of %d%% of a core undisturbed in %d "
			       "runs; reported: %s\n", mode_name[m], o->tol * 100, pct, ser[m].n,
			       within(med[m].share_pct, target, o->tol) ?
			       "runs within it, though others disturbed them" :
			       "the run nearest to it");
		else if (ser[m].ncounted < o->repeat)
			printf("NOTE: %s: only %d of %d runs at the calibrated knobs were undisturbed "
			       "(others used more than %.2f of a core)\n", mode_name[m],
			       ser[m].ncounted, o->repeat, o->max_other);
	}
	if ((hs && s->merged_pct < 100) || (hk && k->merged_pct < 100))
		printf("NOTE: not everything merged within %d s: the 90%% is of what was\n",
		       o->timeout_s);
	if (hk && k->ksm_other_pages > 0)
		printf("NOTE: kernel KSM also had %.0f MiB of other processes' mergeable memory "
		       "to scan: ksmd's CPU and time include it\n", k->ksm_other_pages / 256);

#define SUM(name, expr_s, expr_k)                                        \
	do {                                                             \
		snprintf(key, sizeof(key), "capped%d.%s", pct, name);    \
		summary(key, expr_s, expr_k, hs, hk);                    \
	} while (0)
	SUM("t90_s", s->t90_s, k->t90_s);
	SUM("t50_s", s->t50_s, k->t50_s);
	SUM("share_pct", s->share_pct, k->share_pct);
	SUM("cpu90_s", s->cpu90_s, k->cpu90_s);
	SUM("pages", s->pages, k->pages);
	SUM("calibrated", ser[M_SAMEPAGE].calibrated, ser[M_KERNEL].calibrated);
	SUM("merged_pct", s->merged_pct, k->merged_pct);
	SUM("other_cpu_s", s->other_cpu_s, k->other_cpu_s);
	SUM("bad", s->bad, k->bad);
#undef SUM
}

static void usage(void)
{
	fprintf(stderr, "usage: capped [--mib S] [--shares P1,P2,...] [--sleep-ms MS] "
			"[--sleep-ms-samepage MS] [--sleep-ms-kernel MS] [--tolerance PCT] "
			"[--calib-runs N] [--start-samepage PAGES] [--start-kernel PAGES] "
			"[--max-other CORES] [--timeout SEC] [--repeat R] [--quiet-wait SEC] "
			"[--only samepage|kernel] [--trace] [--summary FILE]\n");
	exit(2);
}

static int parse_shares(const char *arg, struct opts *o)
{
	char *end;

	o->nshares = 0;
	do {
		double v = strtod(arg, &end);
		if (end == arg || v <= 0 || v >= 100 || o->nshares == MAX_SHARES)
			return -EINVAL;
		o->share[o->nshares++] = v / 100;
		arg = end + (*end == ',');
	} while (*end == ',');
	return *end ? -EINVAL : 0;
}

static void parse(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i++) {
		int c = bench_opt(argc, argv, &i, &o->repeat, &o->quiet_s, &o->only, &o->mib);
		if (c < 0)
			usage();
		if (c)
			continue;
		if (!strcmp(argv[i], "--trace")) {
			o->trace = 1;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--shares")) {
			if (parse_shares(argv[++i], o))
				usage();
		} else if (!strcmp(argv[i], "--sleep-ms"))
			o->sleep_ms[M_SAMEPAGE] = o->sleep_ms[M_KERNEL] = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--sleep-ms-samepage"))
			o->sleep_ms[M_SAMEPAGE] = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--sleep-ms-kernel"))
			o->sleep_ms[M_KERNEL] = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--tolerance"))
			o->tol = atof(argv[++i]) / 100;
		else if (!strcmp(argv[i], "--calib-runs"))
			o->calib_runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--start-samepage"))
			o->start[M_SAMEPAGE] = atoll(argv[++i]);
		else if (!strcmp(argv[i], "--start-kernel"))
			o->start[M_KERNEL] = atoll(argv[++i]);
		else if (!strcmp(argv[i], "--timeout"))
			o->timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--max-other"))
			o->max_other = atof(argv[++i]);
		else
			usage();
	}
	if (!o->mib || o->mib > (1u << 20) || o->sleep_ms[0] < 1 || o->sleep_ms[0] > 10000 ||
	    o->sleep_ms[1] < 1 || o->sleep_ms[1] > 10000 ||
	    o->tol <= 0 || o->tol >= 1 || o->calib_runs < 1 || o->timeout_s < 1 ||
	    o->repeat < 1 || o->calib_runs + o->repeat - 1 + EXTRA_RUNS > MAX_RUNS ||
	    o->quiet_s < 0 || o->max_other <= 0 ||
	    o->start[0] < 0 || o->start[0] > PAGES_MAX || o->start[1] < 0 ||
	    o->start[1] > PAGES_MAX)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .nshares = 2, .share = { 0.10, 0.25 }, .sleep_ms = { 20, 20 },
			  .calib_runs = 6, .timeout_s = 300, .repeat = 1, .quiet_s = 30,
			  .only = -1, .tol = 0.10, .max_other = 0.3 };
	static struct series ser[MAX_SHARES][2];
	int have[2] = { 0, 0 };

	parse(argc, argv, &o);
	bench_init(o.only != M_SAMEPAGE);
	for (int m = 0; m < 2; m++)
		have[m] = o.only < 0 || o.only == m;
	for (int i = 0; i < o.nshares; i++) {
		for (int m = 0; m < 2; m++) {
			struct series *s = &ser[i][m], *prev = i ? &ser[i - 1][m] : NULL;
			int first = 0;
			while (prev && first < prev->n && !prev->counted[first])
				first++;
			if (prev && first < prev->n) {
				/* From the previous share's calibration: its knobs
				 * scaled as load() says. */
				const struct result *r = &prev->run[first];
				double was = r->share_pct > 0 ? r->share_pct / 100 : o.share[i - 1];
				s->pages = clamp_pages(r->pages * load((enum mode)m, o.share[i]) /
						       load((enum mode)m, was));
			} else {
				s->pages = o.start[m] ? o.start[m] :
					   first_guess((enum mode)m, o.share[i], o.sleep_ms[m]);
			}
		}
		run_share(&o, o.share[i], ser[i]);
	}
	printf("\nworkload: %d processes x %zu MiB of identical random pages (%zu pages each); "
	       "saving: pages of process 0 sharing their frame with process 1's (pagemap)\n",
	       NPROC, o.mib, o.mib * 256);
	printf("CPU share: merger CPU (ksmd | samepaged + scanner threads, schedstat) from the "
	       "madvise until 90%% of the final saving, over that time; pages_to_scan searched "
	       "for each merger until a run lands within %.0f%% of the share\n", o.tol * 100);
	for (int i = 0; i < o.nshares; i++)
		report(&o, o.share[i], ser[i], have);
	report_disturbed("capped.disturbed");
	return 0;
}
