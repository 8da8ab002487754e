/* SPDX-License-Identifier: MIT */
/*
 * ksm_compare — the same workload merged by samepage and by kernel KSM, in
 * one run, with ratios.
 *
 * Workload: 2 processes, each S MiB (default 256) of the same random pages
 * (every page distinct from the others, identical across the processes),
 * written once before anything is timed (the first touch of fresh memory is
 * slow in a VM). They mark the memory with madvise(MADV_MERGEABLE):
 *   samepage:   madvise() — libsamepage's, which this binary links, exactly
 *               what a program under `samepage run` gets;
 *   kernel KSM: syscall(SYS_madvise) — straight to the kernel; libsamepage
 *               never starts in that process.
 *
 * Both mergers get the same budget: samepage's knobs and the kernel's are
 * set to pages_to_scan=100000, sleep_millisecs=0 (kernel: smart_scan=0).
 * samepage gets a daemon of its own (SAMEPAGE_SOCKET in a fresh directory).
 *
 * Measured from the outside, never taken from either implementation's own
 * counters where a ground truth exists:
 *   - wall time from the madvise until every page of process 0 has the same
 *     page frame as process 1's page at that offset (pagemap, every 10 ms,
 *     or 3 times as long as a poll takes if longer);
 *   - CPU spent meanwhile (schedstat, ns): ksmd, or samepaged plus the
 *     workloads' threads other than main (samepage's scanners); the
 *     workloads' main threads for both; and the rest of the machine's busy
 *     time, which tells whether someone else disturbed the run; and that
 *     merger CPU (ksmd | samepaged + scanners) per GiB of memory saved;
 *   - distinct page frames before and after (the memory saved), the pool
 *     size, the VMA count of a workload;
 *   - bookkeeping per scanned page: samepage: the daemon's RssAnon growth
 *     since it started plus the Rss of libsamepage's own memory (its arena)
 *     in each workload; kernel: its objects counted and multiplied by their
 *     slab object sizes (rmap_items from /proc/PID/ksm_stat, one stable
 *     node per KSM page and chain, one mm_slot per process); also as each
 *     counts it itself ((pages_sharing + ksm_zero_pages) x 4096 -
 *     general_profit);
 *   - the first write to a merged page: one byte into each of W merged pages
 *     per process (default 10000), ns per write, once with the merger paused
 *     (run=0: the fault alone) and once with it running, each followed by
 *     the same writes again (the pages are private by then: the baseline);
 *   - that both processes still hold exactly their bytes afterwards;
 *   - in a second run with fresh processes (the stall run; --no-stall skips
 *     it): a thread in each workload stores, every --stall-us microseconds
 *     (default 200), the byte a random page of the merging memory already
 *     holds at a random offset, timing each store (CLOCK_MONOTONIC), from
 *     the madvise until 95% of the pages are merged (or twice the main run's
 *     merge time + 2 s, at most --stall-max-s, default 30). A store to a
 *     merged page breaks COW (both mergers), so this run's merge time is
 *     not the one reported: the main run has no such writer. Before each
 *     store the probe reads the page's pagemap entry (and /proc/kpageflags)
 *     to tell a page merged already (a file page: samepage's pool; a KSM
 *     page; the zero page) from one not merged yet: a store to the former
 *     is the first write to a merged page (its COW fault, measured above
 *     too), a store to the latter can only wait for merging in progress
 *     (samepage's freeze, ksmd holding the page). Reported: p50, p99, p99.9
 *     and maximum over the stores of both processes to pages not merged
 *     yet, and p50, p99, maximum over all stores.
 * Each number is the median of R runs (default 3), samepage and kernel
 * alternating; each run waits (up to --quiet-wait s) for an idle machine.
 *
 * Needs root: page frame numbers in /proc/PID/pagemap, ksmd's schedstat,
 * /sys/kernel/mm/ksm. Kernel KSM is switched on only while measured and
 * always switched off again (run=2, wait for pages_shared=0, run=0; the
 * knobs it changed are restored), also on errors and SIGINT/SIGTERM/SIGHUP.
 * It refuses to touch a kernel KSM that is already on.
 *
 *   build/bench/ksm_compare [--mib S] [--writes W] [--repeat R] [--timeout SEC]
 *       [--quiet-wait SEC] [--only samepage|kernel] [--samepage-default-knobs]
 *       [--no-stall] [--stall-us US] [--stall-max-s SEC] [--summary FILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

#define NPROC 2
#define SEED 0x5eedull
/* Stores timed per process in the stall run (at 200 us apart: 200 s). */
#define STALL_MAX (1u << 20)

struct opts {
	size_t mib, writes;
	int repeat, timeout_s, quiet_s;
	int only; /* -1: both */
	int sp_default_knobs, stall, stall_us, stall_max_s;
};

/* ---- the workload process (page i of every process is the same:
 * bench_fill_page()) ---- */

enum {
	CMD_WRITE = 'w', CMD_STALL_STOP = 's' /* and benchlib's CMD_* */
};

/* Stall samples, in memory shared with the parent (MAP_SHARED: never
 * merged by either, and read by the parent without copying): ns, with
 * STALL_MERGED set when the page was merged before the store. */
#define STALL_MERGED 0x80000000u
struct stall_buf {
	uint64_t total;        /* stores made (samples beyond STALL_MAX dropped) */
	uint32_t n;
	uint32_t ns[STALL_MAX];
};

struct wctx {
	enum mode mode;
	size_t npages;
	int idx;
	struct stall_buf *stall; /* the stall run: probe while merging */
	int stall_us;
};

/* The write test: pages first, first+stride, ... (n of them). */
struct write_q { size_t first, stride, n; };
struct write_r { double first_ns, again_ns; };

/* One byte into each page, then the same bytes back (the pages are private
 * by then: no fault, the baseline). Each process flips its own bit, so the
 * written pages of the two processes differ and cannot merge with each
 * other in between; the second loop restores the original bytes. */
static void write_test(unsigned char *p, int idx, const struct write_q *q, struct write_r *r)
{
	volatile unsigned char *v = p;
	unsigned char bit = (unsigned char)(1u << idx);
	double t0, t1, t2;

	t0 = tu_now();
	for (size_t k = 0; k < q->n; k++)
		v[(q->first + k * q->stride) * PAGE] ^= bit;
	t1 = tu_now();
	for (size_t k = 0; k < q->n; k++)
		v[(q->first + k * q->stride) * PAGE] ^= bit;
	t2 = tu_now();
	r->first_ns = (t1 - t0) * 1e9 / (double)q->n;
	r->again_ns = (t2 - t1) * 1e9 / (double)q->n;
}

struct probe {
	unsigned char *p;
	size_t npages;
	struct stall_buf *b;
	int interval_us, idx;
	int pmfd, kpfd; /* /proc/self/pagemap, /proc/kpageflags */
	atomic_int stop;
};

/* Is the page at v merged now: a file page (samepage's pool or zero
 * segment), a KSM page or the zero page? Root reads frame numbers. */
static int page_merged(const struct probe *pr, const volatile unsigned char *v)
{
	uint64_t pm, fl;

	if (pread(pr->pmfd, &pm, 8, (off_t)((uintptr_t)v / PAGE * 8)) != 8 || !(pm >> 63))
		return 0;
	if ((pm >> 61) & 1) /* PM_FILE */
		return 1;
	if (pread(pr->kpfd, &fl, 8, (off_t)((pm & ((1ull << 55) - 1)) * 8)) != 8)
		return 0;
	return ((fl >> 21) & 1) || ((fl >> 24) & 1); /* KPF_KSM, KPF_ZERO_PAGE */
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The writing application: a store of the byte already there (the content
 * stays what bench_pages_differ() expects) into a random page, timed; then a pause, so
 * that the probe costs little CPU and unmerges few pages. Whatever blocks
 * the store — a COW fault, a page frozen for merging, ksmd holding the
 * page — is in the sample. */
static void *stall_probe(void *arg)
{
	struct probe *pr = arg;
	struct timespec pause = { 0, (long)pr->interval_us * 1000 };
	uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(pr->idx + 1);

	prctl(PR_SET_NAME, BENCH_THREAD "stall"); /* not counted as a scanner */
	prctl(PR_SET_TIMERSLACK, 1000);          /* pauses of the stated length */
	while (!atomic_load_explicit(&pr->stop, memory_order_relaxed)) {
		tu_xorshift(&x);
		volatile unsigned char *v = pr->p + (x >> 12) % pr->npages * PAGE + (x & (PAGE - 1));
		/* Outside the timed store; a merge landing in between makes a
		 * COW count as "not merged yet" (rare, and against both). */
		uint32_t merged = page_merged(pr, v) ? STALL_MERGED : 0;
		uint64_t t0 = now_ns();
		*v = *v;
		uint64_t dt = now_ns() - t0;
		if (pr->b->n < STALL_MAX)
			pr->b->ns[pr->b->n++] = (dt >= STALL_MERGED ? STALL_MERGED - 1 : (uint32_t)dt) |
						merged;
		pr->b->total++;
		nanosleep(&pause, NULL);
	}
	return NULL;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->npages * PAGE;
	struct probe pr = { .npages = w->npages, .b = w->stall, .interval_us = w->stall_us,
			    .idx = w->idx };
	pthread_t probe_thread;
	int probing = 0;
	unsigned char *p;
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	p = bench_map_pages(w->npages);
	if (!p)
		return 2;
	pr.p = p;
	if (w->stall) {
		pr.pmfd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		pr.kpfd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
		if (pr.pmfd < 0 || pr.kpfd < 0)
			return 7;
	}
	bench_fill_pages(p, w->npages, SEED);
	a = (uintptr_t)p;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			/* The probe starts first: it sees merging from its start. */
			if (w->stall && !probing) {
				if (pthread_create(&probe_thread, NULL, stall_probe, &pr))
					return 6;
				probing = 1;
			}
			int r = bench_mergeable(w->mode, p, len);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_STALL_STOP) {
			uint64_t total = 0;
			if (probing) {
				atomic_store(&pr.stop, 1);
				pthread_join(probe_thread, NULL);
				probing = 0;
				total = w->stall->total;
			}
			tu_send(wr, &total, sizeof(total));
		} else if (cmd == CMD_WRITE) {
			struct write_q q;
			struct write_r r;
			if (tu_recv(rd, &q, sizeof(q)) || q.first + (q.n - 1) * q.stride >= w->npages)
				return 5;
			write_test(p, w->idx, &q, &r);
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

/* ---- ground truth from pagemap ---- */

struct run {
	enum mode mode;
	size_t npages;
	struct tu_child c[NPROC];
	pid_t pids[NPROC];
	uintptr_t addr[NPROC];
	uint64_t *pm[NPROC]; /* merged_pages(): allocated once, polled often */
};

/* Pages of process 0 that share a frame with process 1's at the same offset. */
static size_t merged_pages(struct run *r)
{
	return same_frames(r->pids, r->addr, r->npages, r->pm);
}

static size_t frames(struct run *r)
{
	return tu_frames(r->pids, r->addr, NPROC, r->npages);
}

/* ---- one measurement ---- */

/* Every number of one run; the report prints the median over the runs. */
#define RESULT_FIELDS(X)                                                       \
	X(merged_pct) X(merge_s) X(poll_ms) X(cpu_s) X(cpu_merger_s)           \
	X(cpu_scanner_s) X(cpu_work_s) X(other_cpu_s) X(frames_before)         \
	X(frames_after) X(book_kib) X(book_base_kib) X(book_self_kib)          \
	X(pool_pages) X(merge_vmas)                                            \
	X(vmas_before) X(vmas_merged) X(vmas_written) X(paused_first_ns)       \
	X(paused_again_ns) X(running_first_ns) X(running_again_ns)             \
	X(settle_cpu_s) X(pool_after_exit) X(bad)                              \
	X(stall_n) X(stall_s) X(stall_merged_pct) X(stall_p50_us)              \
	X(stall_p99_us) X(stall_p999_us) X(stall_max_us) X(stall_over50)       \
	X(stall_cow_n) X(stall_cow_p50_us) X(stall_all_p50_us)                 \
	X(stall_all_p99_us) X(stall_all_max_us) X(stall_bad) X(ksm_other_pages)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
};
#undef DECLARE

/* CPU (ns) of the merger and the workloads: ksmd, or samepaged; the
 * workloads' threads other than main (samepage's scanners); their mains. */
static uint64_t cpu_ns(const struct run *r, pid_t ksmd, uint64_t *merger, uint64_t *scan,
		       uint64_t *work)
{
	uint64_t s = 0, wk = 0;

	for (int k = 0; k < NPROC; k++) {
		uint64_t other, all = proc_ns(r->c[k].pid, &other, NULL);
		s += other;
		wk += all - other;
	}
	*merger = r->mode == M_KERNEL ? task_ns(ksmd, ksmd) : proc_ns(sp_daemon_pid(), NULL, NULL);
	*scan = s;
	*work = wk;
	return *merger + s + wk;
}

static void start_workers(struct run *r, struct wctx *w)
{
	for (int k = 0; k < NPROC; k++) {
		tu_spawn(&r->c[k], worker, &w[k]);
		r->pids[k] = r->c[k].pid;
		r->pm[k] = malloc(r->npages * 8);
		if (!r->pm[k])
			TU_FAIL("malloc");
	}
	for (int k = 0; k < NPROC; k++)
		if (tu_recv(r->c[k].rd, &r->addr[k], sizeof(r->addr[k])))
			TU_FAIL("worker %d failed to start", k);
}

/* 10 ms between polls, or 3 times as long as the poll took: a pagemap
 * poll of 2 x 512 MiB takes tens of ms, and polling without a pause would
 * take a good part of one of this machine's two CPUs from the mergers. */
static void poll_pause(double poll_s)
{
	int ms = (int)(poll_s * 3e3);

	tu_sleep_ms(ms > 10 ? ms : 10);
}

/* madvise in every worker, then poll page frames until all are shared. */
static void merge_phase(struct run *r, pid_t ksmd, const struct opts *o, struct result *res)
{
	uint64_t m0, s0, k0, m1, s1, k1, t0ns, t1ns, self0 = self_ns();
	double t0, deadline, polled = 0, busy0 = machine_busy_s();
	size_t merged = 0;
	int polls = 0;

	t0ns = cpu_ns(r, ksmd, &m0, &s0, &k0);
	t0 = tu_now();
	bench_start_merging(r->c, NPROC, r->mode);
	deadline = t0 + o->timeout_s;
	while (!bench_interrupted() && tu_now() < deadline) {
		double p0 = tu_now(), dt;
		merged = merged_pages(r);
		dt = tu_now() - p0;
		polled += dt;
		polls++;
		if (merged == r->npages)
			break;
		ksm_check();
		poll_pause(dt);
	}
	res->merge_s = tu_now() - t0;
	t1ns = cpu_ns(r, ksmd, &m1, &s1, &k1);
	if (bench_interrupted())
		TU_FAIL("interrupted");
	res->merged_pct = 100.0 * (double)merged / (double)r->npages;
	res->poll_ms = polls ? polled * 1e3 / polls : 0;
	res->cpu_s = (double)(t1ns - t0ns) / 1e9;
	res->cpu_merger_s = (double)(m1 - m0) / 1e9;
	res->cpu_scanner_s = (double)(s1 - s0) / 1e9;
	res->cpu_work_s = (double)(k1 - k0) / 1e9;
	/* Whatever else ran meanwhile (other users of this machine, and this
	 * program's own polling): a busy machine makes both numbers worse. */
	res->other_cpu_s = machine_busy_s() - busy0 - res->cpu_s -
			   (double)(self_ns() - self0) / 1e9;
	if (res->other_cpu_s < 0)
		res->other_cpu_s = 0;
}

static void record_merged(struct run *r, struct result *res)
{
	/* The check that madvise reached the merger we meant. */
	if (r->mode == M_KERNEL && ksm_stat_field(r->c[0].pid, "ksm_rmap_items ") == 0)
		fprintf(stderr, "ksm_compare: warning: kernel KSM has no rmap_items for worker 0\n");
	if (r->mode == M_SAMEPAGE && count_threads(r->c[0].pid) < 2)
		fprintf(stderr, "ksm_compare: warning: no samepage scanner thread in worker 0\n");
	res->frames_after = (double)frames(r);
	res->vmas_merged = (double)tu_vmas(r->c[0].pid);
	if (r->mode == M_KERNEL) {
		long rmap_sz = slab_object_size("ksm_rmap_item", 64);
		long node_sz = slab_object_size("ksm_stable_node", 64);
		long slot_sz = slab_object_size("ksm_mm_slot", 48);
		uint64_t rmap = 0, *pfn = malloc(r->npages * NPROC * sizeof(*pfn));
		size_t n = 0, ksm_pages;
		double self = 0;
		if (!pfn)
			TU_FAIL("malloc");
		for (int k = 0; k < NPROC; k++) {
			rmap += ksm_stat_field(r->pids[k], "ksm_rmap_items ");
			self += (double)(ksm_stat_field(r->pids[k], "ksm_merging_pages ") +
					 ksm_stat_field(r->pids[k], "ksm_zero_pages ")) * PAGE -
				(double)(int64_t)ksm_stat_field(r->pids[k], "ksm_process_profit ");
			tu_pfns(r->pids[k], r->addr[k], r->npages, pfn, &n);
		}
		ksm_pages = ksm_pages_among(pfn, tu_distinct(pfn, n));
		free(pfn);
		res->pool_pages = (double)ksm_pages;
		res->ksm_other_pages = (double)ksm_other_rmap_items(r->pids, NPROC);
		/* One rmap_item per scanned page, one stable node per KSM page
		 * (the workers' KSM frames, from kpageflags: the global
		 * pages_shared counts other processes' too) and per chain head,
		 * one mm_slot per process: counted, times the slab object
		 * sizes. Not counted: slab slack; the unstable tree's nodes live
		 * inside the rmap_items. */
		res->book_kib = ((double)rmap * (double)rmap_sz +
				 (double)(ksm_pages + (uint64_t)ksm_get("stable_node_chains")) *
					 (double)node_sz +
				 (double)NPROC * (double)slot_sz) / 1024.0;
		/* /proc/PID/ksm_stat: profit = saved - rmap_items x its size. */
		res->book_self_kib = self / 1024.0;
	} else {
		res->pool_pages = (double)tu_status("pool_pages");
		res->merge_vmas = (double)tu_status("merge_vmas");
		/* The daemon's own memory grown since it started idle (not the
		 * pool: that is shmem) and libsamepage's own memory in each
		 * workload. */
		res->book_kib = (double)tu_proc_kib(sp_daemon_pid(), "RssAnon") -
				res->book_base_kib;
		for (int k = 0; k < NPROC; k++)
			res->book_kib += (double)lib_rss_kib(r->c[k].pid);
		res->book_self_kib = ((double)(tu_status("pages_sharing") +
					       tu_status("ksm_zero_pages")) * PAGE -
				      (double)tu_status("general_profit")) / 1024.0;
	}
}

/* Each worker in turn (alone: first touches of fresh frames from two
 * vCPUs at once slow each other down in this VM) writes q's pages. */
static void write_each(struct run *r, const struct write_q *q, double *first, double *again)
{
	*first = *again = 0;
	for (int k = 0; k < NPROC; k++) {
		struct write_r wr;
		bench_send(r->c, k, CMD_WRITE);
		if (tu_send(r->c[k].wr, q, sizeof(*q)) || tu_recv(r->c[k].rd, &wr, sizeof(wr)))
			TU_FAIL("worker %d died in the write test", k);
		*first += wr.first_ns / NPROC;
		*again += wr.again_ns / NPROC;
	}
}

static void set_run(enum mode mode, int v)
{
	char arg[32];

	snprintf(arg, sizeof(arg), "set run=%d", v);
	if (mode == M_KERNEL ? ksm_set("run", v) : tu_cli(arg))
		TU_FAIL("cannot set run=%d for %s", v, mode_name[mode]);
}

static struct write_q write_plan(const struct opts *o, size_t npages)
{
	size_t n = o->writes < npages / 2 ? o->writes : npages / 2;

	return (struct write_q){ .first = 0, .stride = 2 * (npages / 2 / n), .n = n };
}

/* The first write to merged pages: even pages with the merger paused
 * (run=0: the fault alone), odd pages with it running (what a workload
 * sees), then a second for the merger to react. */
static void write_phase(struct run *r, pid_t ksmd, const struct opts *o, struct result *res)
{
	struct write_q q = write_plan(o, r->npages);
	uint64_t m0, m1, x;

	set_run(r->mode, 0);
	write_each(r, &q, &res->paused_first_ns, &res->paused_again_ns);
	set_run(r->mode, 1);
	q.first = 1;
	write_each(r, &q, &res->running_first_ns, &res->running_again_ns);
	cpu_ns(r, ksmd, &m0, &x, &x);
	tu_sleep_ms(1000);
	cpu_ns(r, ksmd, &m1, &x, &x);
	res->settle_cpu_s = (double)(m1 - m0) / 1e9;
	res->vmas_written = (double)tu_vmas(r->c[0].pid);
	ksm_check();
}

/* Verify, stop the workers, stop the merger; the number of bad pages. */
static double finish(struct run *r, double *pool_after_exit)
{
	double bad = (double)bench_verify_all(r->c, NPROC);

	bench_quit_all(r->c, NPROC);
	for (int k = 0; k < NPROC; k++)
		free(r->pm[k]);
	if (r->mode == M_KERNEL) {
		ksm_off();
		return bad;
	}
	/* Every reference died with its connection: the pool must empty. */
	double left = 0;
	for (int i = 0; i < 200 && (left = (double)tu_status("pool_pages")) > 0; i++)
		tu_sleep_ms(10);
	if (pool_after_exit)
		*pool_after_exit = left;
	sp_teardown();
	return bad;
}

static pid_t setup_merger(enum mode mode, const struct opts *o)
{
	pid_t ksmd;
	int err = merger_setup(mode, 100000, 0, o->sp_default_knobs ? "run=1" : NULL, &ksmd);

	if (err)
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	return ksmd;
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct wctx w[NPROC];
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	pid_t ksmd;

	for (int k = 0; k < NPROC; k++)
		w[k] = (struct wctx){ .mode = mode, .npages = r.npages, .idx = k };
	ksmd = setup_merger(mode, o);
	if (mode == M_SAMEPAGE)
		res->book_base_kib = (double)tu_proc_kib(sp_daemon_pid(), "RssAnon");
	start_workers(&r, w);
	res->frames_before = (double)frames(&r);
	res->vmas_before = (double)tu_vmas(r.c[0].pid);
	merge_phase(&r, ksmd, o, res);
	record_merged(&r, res);
	write_phase(&r, ksmd, o, res);
	res->bad = finish(&r, &res->pool_after_exit);
}

/* The stall run: fresh workers and merger, the probes writing while the
 * pages merge (see the header). */
static void measure_stall(enum mode mode, const struct opts *o, struct result *res)
{
	struct wctx w[NPROC];
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	struct stall_buf *b[NPROC];
	size_t merged = 0, n = 0, nu = 0, nc = 0;
	double t0, deadline;
	uint32_t *all, *unm, *cow;

	for (int k = 0; k < NPROC; k++) {
		b[k] = mmap(NULL, sizeof(struct stall_buf), PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (b[k] == MAP_FAILED)
			TU_FAIL("mmap: %s", strerror(errno));
		w[k] = (struct wctx){ .mode = mode, .npages = r.npages, .idx = k, .stall = b[k],
				      .stall_us = o->stall_us };
	}
	setup_merger(mode, o);
	start_workers(&r, w);
	t0 = tu_now();
	bench_start_merging(r.c, NPROC, r.mode);
	deadline = t0 + 2 * res->merge_s + 2;
	if (deadline > t0 + o->stall_max_s)
		deadline = t0 + o->stall_max_s;
	while (!bench_interrupted() && tu_now() < deadline) {
		double p0 = tu_now();
		merged = merged_pages(&r);
		if (merged * 100 >= r.npages * 95)
			break;
		ksm_check();
		poll_pause(tu_now() - p0);
	}
	res->stall_s = tu_now() - t0;
	res->stall_merged_pct = 100.0 * (double)merged / (double)r.npages;
	for (int k = 0; k < NPROC; k++) {
		uint64_t total;
		bench_send(r.c, k, CMD_STALL_STOP);
		if (tu_recv(r.c[k].rd, &total, sizeof(total)))
			TU_FAIL("worker %d died stopping its probe", k);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	all = malloc(sizeof(*all) * STALL_MAX * NPROC);
	unm = malloc(sizeof(*unm) * STALL_MAX * NPROC);
	cow = malloc(sizeof(*cow) * STALL_MAX * NPROC);
	if (!all || !unm || !cow)
		TU_FAIL("malloc");
	for (int k = 0; k < NPROC; k++)
		for (uint32_t i = 0; i < b[k]->n; i++) {
			uint32_t ns = b[k]->ns[i] & ~STALL_MERGED;
			all[n++] = ns;
			if (b[k]->ns[i] & STALL_MERGED)
				cow[nc++] = ns;
			else
				unm[nu++] = ns;
		}
	sort_u32(all, n);
	sort_u32(unm, nu);
	sort_u32(cow, nc);
	res->stall_n = (double)n;
	res->stall_cow_n = (double)nc;
	res->stall_p50_us = quantile_u32(unm, nu, 0.50) / 1e3;
	res->stall_p99_us = quantile_u32(unm, nu, 0.99) / 1e3;
	res->stall_p999_us = quantile_u32(unm, nu, 0.999) / 1e3;
	res->stall_max_us = nu ? unm[nu - 1] / 1e3 : 0;
	for (size_t i = 0; i < nu; i++)
		res->stall_over50 += unm[i] > 50000;
	res->stall_cow_p50_us = quantile_u32(cow, nc, 0.50) / 1e3;
	res->stall_all_p50_us = quantile_u32(all, n, 0.50) / 1e3;
	res->stall_all_p99_us = quantile_u32(all, n, 0.99) / 1e3;
	res->stall_all_max_us = n ? all[n - 1] / 1e3 : 0;
	free(all);
	free(unm);
	free(cow);
	res->stall_bad = finish(&r, NULL);
	for (int k = 0; k < NPROC; k++)
		munmap(b[k], sizeof(struct stall_buf));
}

/* ---- report ---- */

static void median_result(const struct result *runs, int n, struct result *out)
{
	bench_median_doubles(runs, n, sizeof(*runs), out);
}

/* Merger CPU (samepaged + scanners | ksmd) per GiB of memory saved. */
static double cpu_per_gib(const struct result *r)
{
	double gib = (r->frames_before - r->frames_after) / (256.0 * 1024);

	return gib > 0 ? (r->cpu_merger_s + r->cpu_scanner_s) / gib : 0;
}

static void report(const struct opts *o, const struct result *s, const struct result *k,
		   const int *have)
{
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];
	struct write_q q = write_plan(o, o->mib * 256);
	double pages = (double)NPROC * (double)o->mib * 256;
	char key[64];

#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nworkload: %d processes x %zu MiB of identical random pages (%zu pages each); "
	       "median of %d run%s\n", NPROC, o->mib, o->mib * 256, o->repeat,
	       o->repeat > 1 ? "s" : "");
	printf("budget: pages_to_scan=100000 sleep_millisecs=0 for both%s; kernel smart_scan=0\n",
	       o->sp_default_knobs ? " (samepage: its default knobs)" : "");
	table_head();
	ROW("pages merged (process 0)", "%", s->merged_pct, k->merged_pct);
	ROW("wall time until merged", "s", s->merge_s, k->merge_s);
	ROW("merge rate (both processes)", "MiB/s", s->merge_s ? 2.0 * o->mib / s->merge_s : 0,
	    k->merge_s ? 2.0 * o->mib / k->merge_s : 0);
	ROW("CPU until merged, total", "s", s->cpu_s, k->cpu_s);
	ROW("  samepaged | ksmd", "s", s->cpu_merger_s, k->cpu_merger_s);
	ROW("  scanner threads in the workloads", "s", s->cpu_scanner_s, k->cpu_scanner_s);
	ROW("  workloads' main threads", "s", s->cpu_work_s, k->cpu_work_s);
	ROW("merger CPU per GiB saved", "s/GiB", cpu_per_gib(s), cpu_per_gib(k));
	ROW("other CPU use on the machine", "s", s->other_cpu_s, k->other_cpu_s);
	ROW("distinct frames before", "MiB", s->frames_before / 256, k->frames_before / 256);
	ROW("distinct frames after", "MiB", s->frames_after / 256, k->frames_after / 256);
	ROW("memory saved", "MiB", (s->frames_before - s->frames_after) / 256,
	    (k->frames_before - k->frames_after) / 256);
	ROW("bookkeeping memory", "MiB", s->book_kib / 1024, k->book_kib / 1024);
	ROW("  per scanned page", "B", s->book_kib * 1024 / pages, k->book_kib * 1024 / pages);
	ROW("  per page, as each counts it", "B", s->book_self_kib * 1024 / pages,
	    k->book_self_kib * 1024 / pages);
	ROW("pool | KSM pages of the workloads", "MiB", s->pool_pages / 256, k->pool_pages / 256);
	ROW("VMAs of worker 0: before", "count", s->vmas_before, k->vmas_before);
	ROW("  merged", "count", s->vmas_merged, k->vmas_merged);
	ROW("  1 s after the write tests", "count", s->vmas_written, k->vmas_written);
	ROW("first write to a merged page, run=0", "ns", s->paused_first_ns, k->paused_first_ns);
	ROW("  same byte again (no fault)", "ns", s->paused_again_ns, k->paused_again_ns);
	ROW("first write to a merged page, run=1", "ns", s->running_first_ns,
	    k->running_first_ns);
	ROW("  same byte again", "ns", s->running_again_ns, k->running_again_ns);
	ROW("merger CPU in the 1 s after writes", "s", s->settle_cpu_s, k->settle_cpu_s);
	ROW("pages differing from expected", "pages", s->bad, k->bad);
	if (o->stall) {
		ROW("stall run: stores, page not merged", "count", s->stall_n - s->stall_cow_n,
		    k->stall_n - k->stall_cow_n);
		ROW("  p50", "us", s->stall_p50_us, k->stall_p50_us);
		ROW("  p99", "us", s->stall_p99_us, k->stall_p99_us);
		ROW("  p99.9", "us", s->stall_p999_us, k->stall_p999_us);
		ROW("  max", "us", s->stall_max_us, k->stall_max_us);
		ROW("  over 50 us", "count", s->stall_over50, k->stall_over50);
		ROW("stores to merged pages (COW)", "count", s->stall_cow_n, k->stall_cow_n);
		ROW("  p50", "us", s->stall_cow_p50_us, k->stall_cow_p50_us);
		ROW("all stores: p50", "us", s->stall_all_p50_us, k->stall_all_p50_us);
		ROW("  p99", "us", s->stall_all_p99_us, k->stall_all_p99_us);
		ROW("  max", "us", s->stall_all_max_us, k->stall_all_max_us);
		ROW("  window", "s", s->stall_s, k->stall_s);
		ROW("  pages merged at its end", "%", s->stall_merged_pct, k->stall_merged_pct);
		ROW("  pages differing from expected", "pages", s->stall_bad, k->stall_bad);
	}
#undef ROW
	if (hs)
		printf("samepage: merge_vmas %.0f over both workers; pool pages left after the "
		       "workloads exited: %.0f; daemon RssAnon when idle %.0f KiB (not counted)\n",
		       s->merge_vmas, s->pool_after_exit, s->book_base_kib);
	printf("bookkeeping: samepage: daemon RssAnon growth + libsamepage's arena Rss in each "
	       "workload; kernel: (rmap_items x %ld + (KSM pages + stable_node_chains) x %ld "
	       "+ processes x %ld) B, slab object sizes, slack not counted; \"as each counts it\": "
	       "(merging + zero pages) x 4096 - profit (samepage: general_profit, with the "
	       "daemon's meta; kernel: ksm_process_profit of the workloads)\n",
	       slab_object_size("ksm_rmap_item", 64), slab_object_size("ksm_stable_node", 64),
	       slab_object_size("ksm_mm_slot", 48));
	printf("write tests: %zu pages per process and test, every %zu-th page (run=0: even "
	       "pages, merger paused; run=1: odd pages, merger running), one process at a "
	       "time, mean of both\n", q.n, q.stride);
	if (o->stall)
		printf("stall run: separate processes and merger; each workload's probe thread "
		       "stores the byte already there into a random page every %d us (timed; the "
		       "page's state read from pagemap before) from the madvise until 95%% merged (at most 2 x the merge time + 2 s, and %d s); its "
		       "stores break COW, so its merge time is not the one above\n", o->stall_us,
		       o->stall_max_s);
	printf("merged-check: one pagemap poll of both processes took %.2f ms (samepage) / "
	       "%.2f ms (kernel), every 10 ms or 3 x that (the time resolution)\n",
	       hs ? s->poll_ms : 0, hk ? k->poll_ms : 0);
	if (hk && k->ksm_other_pages > 0)
		printf("NOTE: kernel KSM also had %.0f MiB of other processes' mergeable memory to "
		       "scan (rmap_items of other processes): ksmd's CPU and time include it\n",
		       k->ksm_other_pages / 256);
	if ((hs && s->merged_pct < 100) || (hk && k->merged_pct < 100))
		printf("NOTE: not everything merged within %d s in some run\n", o->timeout_s);

#define SUM(name, expr_s, expr_k)                                     \
	do {                                                          \
		snprintf(key, sizeof(key), "cmp%zu.%s", o->mib, name); \
		summary(key, expr_s, expr_k, hs, hk);                 \
	} while (0)
	SUM("merged_pct", s->merged_pct, k->merged_pct);
	SUM("merge_s", s->merge_s, k->merge_s);
	SUM("cpu_merger_s", s->cpu_merger_s + s->cpu_scanner_s, k->cpu_merger_s + k->cpu_scanner_s);
	SUM("cpu_per_gib", cpu_per_gib(s), cpu_per_gib(k));
	SUM("saved_mib", (s->frames_before - s->frames_after) / 256,
	    (k->frames_before - k->frames_after) / 256);
	SUM("book_bytes", s->book_kib * 1024, k->book_kib * 1024);
	SUM("book_per_page", s->book_kib * 1024 / pages, k->book_kib * 1024 / pages);
	SUM("pages", pages, pages);
	SUM("vmas_before", s->vmas_before, k->vmas_before);
	SUM("vmas_merged", s->vmas_merged, k->vmas_merged);
	SUM("first_write_paused_ns", s->paused_first_ns, k->paused_first_ns);
	SUM("first_write_running_ns", s->running_first_ns, k->running_first_ns);
	SUM("bad", s->bad + s->stall_bad, k->bad + k->stall_bad);
	SUM("other_cpu_s", s->other_cpu_s, k->other_cpu_s);
	if (o->stall) {
		SUM("stall_p50_us", s->stall_p50_us, k->stall_p50_us);
		SUM("stall_p99_us", s->stall_p99_us, k->stall_p99_us);
		SUM("stall_max_us", s->stall_max_us, k->stall_max_us);
		SUM("stall_all_p99_us", s->stall_all_p99_us, k->stall_all_p99_us);
		SUM("stall_all_max_us", s->stall_all_max_us, k->stall_all_max_us);
		SUM("stall_cow_p50_us", s->stall_cow_p50_us, k->stall_cow_p50_us);
		SUM("stall_cow_share", s->stall_n ? s->stall_cow_n / s->stall_n : 0,
		    k->stall_n ? k->stall_cow_n / k->stall_n : 0);
	}
#undef SUM
	snprintf(key, sizeof(key), "cmp%zu.disturbed", o->mib);
	report_disturbed(key);
}

static void usage(void)
{
	fprintf(stderr, "usage: ksm_compare [--mib S] [--writes W] [--repeat R] [--timeout SEC] "
			"[--quiet-wait SEC] [--only samepage|kernel] [--samepage-default-knobs] "
			"[--no-stall] [--stall-us US] [--stall-max-s SEC] [--summary FILE]\n");
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
		if (!strcmp(argv[i], "--writes") && i + 1 < argc)
			o->writes = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o->timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--samepage-default-knobs"))
			o->sp_default_knobs = 1;
		else if (!strcmp(argv[i], "--no-stall"))
			o->stall = 0;
		else if (!strcmp(argv[i], "--stall-us") && i + 1 < argc)
			o->stall_us = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--stall-max-s") && i + 1 < argc)
			o->stall_max_s = atoi(argv[++i]);
		else
			usage();
	}
	if (!o->mib || o->mib > (1u << 20) || !o->writes || o->timeout_s <= 0 ||
	    o->repeat < 1 || o->repeat > 64 || o->quiet_s < 0 || o->stall_us < 1 ||
	    o->stall_us >= 1000000 || o->stall_max_s < 1)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .writes = 10000, .repeat = 3, .timeout_s = 120,
			  .quiet_s = 30, .only = -1, .stall = 1, .stall_us = 200,
			  .stall_max_s = 30 };
	static struct result runs[2][64];
	struct result med[2];
	int have[2] = { 0, 0 };

	parse(argc, argv, &o);
	bench_init(o.only != M_SAMEPAGE);

	/* Alternate the two, so that a change in the machine's load hits both. */
	for (int i = 0; i < o.repeat; i++)
		for (int m = 0; m < 2; m++) {
			struct result *r = &runs[m][i];
			if (o.only >= 0 && o.only != m)
				continue;
			wait_quiet(o.quiet_s);
			measure((enum mode)m, &o, r);
			have[m] = 1;
			fprintf(stderr, "run %d %-10s: merged %5.1f%% in %6.3f s, CPU %6.3f s, other "
					"load %5.2f s, first write %8.0f ns\n", i + 1, mode_name[m],
				r->merged_pct, r->merge_s, r->cpu_s, r->other_cpu_s,
				r->paused_first_ns);
			if (!o.stall)
				continue;
			wait_quiet(o.quiet_s);
			measure_stall((enum mode)m, &o, r);
			fprintf(stderr, "run %d %-10s: stall run: %.0f stores (%.0f to merged pages) "
					"in %.2f s (%.1f%% merged); not merged: p50 %.1f us, p99 %.1f us, "
					"max %.0f us; all: p99 %.1f us\n", i + 1, mode_name[m], r->stall_n,
				r->stall_cow_n, r->stall_s, r->stall_merged_pct, r->stall_p50_us,
				r->stall_p99_us, r->stall_max_us, r->stall_all_p99_us);
		}
	for (int m = 0; m < 2; m++)
		if (have[m])
			median_result(runs[m], o.repeat, &med[m]);
	report(&o, &med[M_SAMEPAGE], &med[M_KERNEL], have);
	return 0;
}
