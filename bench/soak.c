/* SPDX-License-Identifier: MIT */
/*
 * soak — one samepaged serving generation after generation of processes,
 * the way a long-lived host's daemon does (issue 10, item 5); kernel KSM on
 * the same generations afterwards. What is wanted: the last generation
 * within 10 % of the first on every figure, no pool page left once every
 * process has exited, and merged memory that costs at most 1 % of a core
 * while it sits idle.
 *
 * A generation (its plan drawn from --seed and its number, so that both
 * mergers get the same ones): 3-5 processes (--quick: 3-4) of 16-128 MiB
 * each (--quick: 16-48; --mib-min/--mib-max), each a private anonymous
 * region marked MADV_MERGEABLE (samepage: libsamepage's madvise(), which
 * this binary links; kernel: syscall(SYS_madvise)), laid out as
 *   [0, c_k)      common: page i holds the same bytes in every process
 *                 whose common part reaches i (c_k is 60-80 % of the
 *                 region, so the processes overlap unevenly);
 *   [c_k, n_k)    unique to the process.
 * Every generation has contents of its own. Generation 0 warms up: the
 * daemon starts empty and nothing came before it. Generation 1, every
 * REF_EVERY-th after it and the last have the reference shape (that of 0,
 * marked *): the first compared generation (1) and the last match.
 *
 * Each generation, while the previous one still lives, merged and idle
 * (a long-lived daemon never starts from empty):
 *  1. madvise; wait until the generation's regions use no more page frames
 *     than they have distinct contents (the ideal saving, from pagemap), at
 *     most --timeout s, or until 6 s and 3 full scans pass without one
 *     frame less (it then prints where it falls short): time to reach it,
 *     merger CPU until then.
 *  2. Every process checks every byte; the previous generation ends: some
 *     of its processes exit, at least one is SIGKILLed (and one exits).
 *     The pool must now hold exactly one page per merged content of the
 *     live generation: what it holds beyond that is "left" by the one that
 *     went (samepage: pool_pages; kernel: pages_shared).
 *  3. One process forks: the child writes 64 pages with contents the
 *     generation merged already and 32 pairs of equal pages of its own, and
 *     its pages are watched until they share frames (the child's merge
 *     time); it checks every byte and exits, or is SIGKILLed.
 *  4. Partial rewrites in every process, the same new bytes in all
 *     copies: every k-th common page (128 per process) and a contiguous
 *     block of 1/16 of the common part. Wait for the ideal again (re-merge
 *     time). Then VMAs per process, the daemon's RSS, the pool beyond what
 *     the live generation needs.
 *  5. Idle: both mergers at their default knobs (samepage pages_to_scan=
 *     16384 sleep_millisecs=20, kernel 100/20: what a host runs), 3 s after
 *     the re-merge (samepage's scanners back off to a pass every 2 s by
 *     then), --idle-s s of merger CPU (samepaged + the scanner threads |
 *     ksmd) in % of a core. Every process checks every byte again.
 * After the last generation: everything exits, and the pool must be empty
 * (pool_pages 0; kernel: pages_shared 0) within 10 s.
 *
 * Budget while merging: pages_to_scan=100000 sleep_millisecs=0 for both
 * (kernel smart_scan=0), as the other benchmarks. samepage: one private
 * daemon for the whole soak. Kernel KSM runs the first KERNEL_GENS (8)
 * generations of the same schedule, or --kernel-generations K, and is off
 * again at the end (also on errors and signals).
 *
 * Hard failures (exit 1): a byte differing from what a process wrote (either
 * merger), and for samepage: a phase short of the ideal saving (below
 * --min-share %, default 100), pool pages left once everything exited,
 * the daemon dying, a process or child ending otherwise than it was told.
 * Timing figures only print NO: the machine is shared. Kernel KSM is the
 * reference, and on a shared machine others switch it under our feet
 * (benchlib's WARNING): its shortfalls are reported, not failed.
 *
 *   build/bench/soak [--generations N] [--hours H] [--quick] [--no-kernel]
 *       [--kernel-generations K] [--seed S] [--mib-min M] [--mib-max M]
 *       [--timeout SEC] [--idle-s SEC] [--min-share PCT] [--quiet-wait SEC]
 *       [--only samepage|kernel] [--summary FILE]
 * --hours H: samepage runs generations until H hours have passed (then
 * one more, the last, of the reference shape).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchlib.h"

#define MAXP 5
#define REF_EVERY 10
#define GOLDEN 0x9E3779B97F4A7C15ull
/* Scattered rewrites per process: enough for VMAs to show any splitting
 * (two per page merged anew out of place), few enough to stay far below
 * the VMA budget even when a test lowers vm.max_map_count to 2000. */
#define SCATTER 128
#define CHILD_COPIES 64
#define CHILD_PAIRS 32
#define POLL_MS 50
/* samepage's scanners double their sleep from 10-20 ms up to 2 s while
 * nothing changes: 2.5 s after the last change they sleep the most. */
#define SETTLE_MS 3000
#define CHILD_WAIT_S 20
#define STUCK_S 6
#define STUCK_SCANS 3
#define POOL_WAIT_S 10
/* Kernel KSM's generations unless --kernel-generations: others' benchmarks
 * wait at most 2 min for a kernel KSM someone else switched on
 * (benchlib.c), so it stays on about 1.5 min. Switching it off in between
 * to let them in does not work: the wait-then-take protocol has no lock,
 * and one of them took it while we counted on it still. */
#define KERNEL_GENS 8
#define RUN_PTS 100000
#define RUN_SLEEP 0
/* The knobs a host runs by default (README's table; the kernel's). */
#define SP_IDLE_PTS 16384
#define SP_IDLE_SLEEP 20
#define K_IDLE_PTS 100
#define K_IDLE_SLEEP 20

struct opts {
	int gens, kgens, quick, no_kernel, only, quiet_s, timeout_s, idle_s, repeat;
	int mib_min, mib_max, pmin, pmax;
	double hours, min_share;
	uint64_t seed;
};

/* ---- the plan of a generation, and what each page holds ---- */

struct plan {
	int g, ref, last, nproc, forker, child_kill;
	unsigned killed; /* bit k: process k is SIGKILLed at the end */
	uint64_t seed;   /* contents */
	size_t npages[MAXP], common[MAXP];
	size_t stride, phase; /* scattered rewrite: common pages i % stride == phase */
	size_t blk0, blk_len; /* contiguous rewrite */
};

enum { K_COMMON = 1, K_UNIQUE, K_SCAT, K_BLOCK, K_PAIR };

/* splitmix64's finalizer: plans and page seeds from (seed, numbers). */
static uint64_t mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static size_t draw(uint64_t *s, size_t lo, size_t hi)
{
	*s += GOLDEN;
	return lo + (size_t)(mix64(*s) % (hi - lo + 1));
}

static uint64_t seed_of(const struct plan *p, int kind, int k, size_t i)
{
	return mix64(p->seed ^ mix64(((uint64_t)kind << 56) ^ ((uint64_t)k << 48) ^ i));
}

static void shape(const struct opts *o, struct plan *p, uint64_t s)
{
	size_t cmin = SIZE_MAX;
	int k;

	p->nproc = (int)draw(&s, (size_t)o->pmin, (size_t)o->pmax);
	for (k = 0; k < p->nproc; k++) {
		p->npages[k] = draw(&s, (size_t)o->mib_min, (size_t)o->mib_max) * 256;
		p->common[k] = p->npages[k] * draw(&s, 60, 80) / 100;
		cmin = p->common[k] < cmin ? p->common[k] : cmin;
	}
	p->stride = cmin / SCATTER > 2 ? cmin / SCATTER : 2;
	p->phase = draw(&s, 0, p->stride - 1);
	p->blk_len = cmin / 16;
	p->blk0 = draw(&s, 0, cmin - p->blk_len);
	p->forker = (int)draw(&s, 0, (size_t)p->nproc - 1);
	p->child_kill = (int)draw(&s, 0, 1);
	p->killed = (unsigned)draw(&s, 0, (1u << p->nproc) - 1);
	/* At least one SIGKILL and at least one ordinary exit. */
	if (p->killed == 0)
		p->killed = 1u << draw(&s, 0, (size_t)p->nproc - 1);
	if (p->killed == (1u << p->nproc) - 1)
		p->killed &= ~(1u << draw(&s, 0, (size_t)p->nproc - 1));
}

static void make_plan(const struct opts *o, struct plan *p, int g, int last)
{
	memset(p, 0, sizeof(*p));
	p->g = g;
	p->last = last;
	/* Generation 0 warms up (the daemon starts empty, nothing came
	 * before it) with the reference shape; 1 is the first compared. */
	p->ref = g % REF_EVERY == 1 || g == 0 || last;
	shape(o, p, mix64(o->seed + GOLDEN * (uint64_t)(p->ref ? 0 : g + 1)));
	p->seed = mix64(o->seed ^ mix64((uint64_t)g + 0x50a4));
}

static size_t total_pages(const struct plan *p)
{
	size_t n = 0;

	for (int k = 0; k < p->nproc; k++)
		n += p->npages[k];
	return n;
}

/* The longest and second longest common part: offsets below the first
 * hold one content each; below the second, one that two or more share. */
static void common_max2(const struct plan *p, size_t *c1, size_t *c2)
{
	*c1 = *c2 = 0;
	for (int k = 0; k < p->nproc; k++) {
		if (p->common[k] > *c1) {
			*c2 = *c1;
			*c1 = p->common[k];
		} else if (p->common[k] > *c2) {
			*c2 = p->common[k];
		}
	}
}

/* Frames once every content is on one frame. The rewrites keep it: the
 * rewritten pages hold new bytes, the same in every process. */
static size_t distinct_contents(const struct plan *p)
{
	size_t c1, c2, n = 0;

	common_max2(p, &c1, &c2);
	for (int k = 0; k < p->nproc; k++)
		n += p->npages[k] - p->common[k];
	return n + c1;
}

/* Pool pages (KSM pages) the merged generation needs: one per content
 * two or more processes hold. */
static size_t needed_pool(const struct plan *p)
{
	size_t c1, c2;

	common_max2(p, &c1, &c2);
	return c2;
}

static int in_block(const struct plan *p, size_t i)
{
	return i >= p->blk0 && i < p->blk0 + p->blk_len;
}

static uint64_t expect(const struct plan *p, int k, size_t i, int rewritten)
{
	if (i >= p->common[k])
		return seed_of(p, K_UNIQUE, k, i);
	if (rewritten && in_block(p, i))
		return seed_of(p, K_BLOCK, 0, i);
	if (rewritten && i % p->stride == p->phase)
		return seed_of(p, K_SCAT, 0, i);
	return seed_of(p, K_COMMON, 0, i);
}

/* The fork child (before the rewrites): its parent's pages, except, from
 * the start of the parent's unique part, copies of common pages 0..63
 * (already merged: they join pool pages that exist) and pairs of equal
 * pages nobody else has (new pool pages only the child holds). */
static uint64_t expect_child(const struct plan *p, size_t i)
{
	size_t u = p->common[p->forker];

	if (i >= u && i < u + CHILD_COPIES)
		return seed_of(p, K_COMMON, 0, i - u);
	if (i >= u + CHILD_COPIES && i < u + CHILD_COPIES + 2 * CHILD_PAIRS)
		return seed_of(p, K_PAIR, 0, (i - u - CHILD_COPIES) / 2);
	return expect(p, p->forker, i, 0);
}

/* ---- the workload process ---- */

enum { /* and benchlib's CMD_* */
	CMD_REWRITE = 'r', CMD_FORK = 'f', CMD_CHILD_VERIFY = 'c', CMD_CHILD_EXIT = 'e',
	CMD_CHILD_KILL = 'k'
};

/* Every command but CMD_QUIT answers one of these. Verify: v = pages
 * differing, aux = the first of them (-1: none); fork: v = the child's
 * pid; child's end: v = its status (128 + signal when killed); negative
 * v: -errno. */
struct reply { int64_t v, aux; };

struct wctx { enum mode mode; const struct plan *p; int k; };

struct wstate {
	enum mode mode;
	const struct plan *p;
	int k, rewritten;
	unsigned char *mem;
	size_t npages;
	pid_t child;
	int to_child, from_child;
};

static int64_t verify(const unsigned char *mem, const struct plan *p, int k, int rewritten,
		      int child, int64_t *first)
{
	unsigned char want[PAGE];
	int64_t bad = 0;

	*first = -1;
	for (size_t i = 0; i < p->npages[k]; i++) {
		tu_fill(want, PAGE, child ? expect_child(p, i) : expect(p, k, i, rewritten));
		if (memcmp(mem + i * PAGE, want, PAGE)) {
			if (!bad)
				*first = (int64_t)i;
			bad++;
		}
	}
	return bad;
}

static int madvise_region(const struct wstate *w)
{
	size_t len = w->npages * PAGE;
	int r = w->mode == M_KERNEL ? (int)syscall(SYS_madvise, w->mem, len, MADV_MERGEABLE)
				    : madvise(w->mem, len, MADV_MERGEABLE); /* libsamepage's */

	return r ? -errno : 0;
}

/* The same new bytes as every other process at the same offsets. */
static void rewrite(struct wstate *w)
{
	const struct plan *p = w->p;
	size_t c = p->common[w->k];

	for (size_t i = p->phase; i < c; i += p->stride)
		if (!in_block(p, i))
			tu_fill(w->mem + i * PAGE, PAGE, seed_of(p, K_SCAT, 0, i));
	for (size_t i = p->blk0; i < p->blk0 + p->blk_len && i < c; i++)
		tu_fill(w->mem + i * PAGE, PAGE, seed_of(p, K_BLOCK, 0, i));
	w->rewritten = 1;
}

/* The fork child: write its pages, say so, then verify on request and
 * exit when told (or be SIGKILLed). It exits through exit(), as a program
 * does; the benchmark's atexit handlers know they are not in their owner. */
static void child_main(const struct wstate *w, int rd, int wr)
{
	size_t u = w->p->common[w->k];
	char cmd = 'r';

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (size_t i = u; i < u + CHILD_COPIES + 2 * CHILD_PAIRS; i++)
		tu_fill(w->mem + i * PAGE, PAGE, expect_child(w->p, i));
	if (tu_send(wr, &cmd, 1))
		_exit(3);
	while (tu_recv(rd, &cmd, 1) == 0) {
		struct reply r = { 0, -1 };
		if (cmd == 'x')
			exit(0);
		r.v = verify(w->mem, w->p, w->k, 0, 1, &r.aux);
		if (tu_send(wr, &r, sizeof(r)))
			_exit(3);
	}
	_exit(3);
}

static int64_t fork_child(struct wstate *w, int rd, int wr)
{
	int down[2], up[2];
	char ok;
	pid_t pid;

	if (pipe2(down, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(up, O_CLOEXEC) < 0) {
		close(down[0]);
		close(down[1]);
		return -errno;
	}
	pid = fork(); /* libsamepage's wrapper under samepage: the case to exercise */
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		close(rd);
		close(wr);
		close(down[1]);
		close(up[0]);
		child_main(w, down[0], up[1]);
	}
	close(down[0]);
	close(up[1]);
	w->child = pid;
	w->to_child = down[1];
	w->from_child = up[0];
	return tu_recv(w->from_child, &ok, 1) ? -EPIPE : pid;
}

static int64_t child_verify(struct wstate *w, int64_t *first)
{
	struct reply r;
	char cmd = 'v';

	if (!w->child || tu_send(w->to_child, &cmd, 1) ||
	    tu_recv(w->from_child, &r, sizeof(r)))
		return -EPIPE;
	*first = r.aux;
	return r.v;
}

static int64_t end_child(struct wstate *w, int kill_it)
{
	char cmd = 'x';
	int st;

	if (!w->child)
		return -ECHILD;
	if (kill_it)
		kill(w->child, SIGKILL);
	else if (tu_send(w->to_child, &cmd, 1))
		return -EPIPE;
	while (waitpid(w->child, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	close(w->to_child);
	close(w->from_child);
	w->child = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int serve(struct wstate *w, char cmd, int rd, int wr, struct reply *r)
{
	switch (cmd) {
	case CMD_MADVISE:
		r->v = madvise_region(w);
		return 0;
	case CMD_REWRITE:
		rewrite(w);
		return 0;
	case CMD_VERIFY:
		r->v = verify(w->mem, w->p, w->k, w->rewritten, 0, &r->aux);
		return 0;
	case CMD_FORK:
		r->v = fork_child(w, rd, wr);
		return 0;
	case CMD_CHILD_VERIFY:
		r->v = child_verify(w, &r->aux);
		return 0;
	case CMD_CHILD_EXIT:
	case CMD_CHILD_KILL:
		r->v = end_child(w, cmd == CMD_CHILD_KILL);
		return 0;
	}
	return -EINVAL;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *c = arg;
	struct wstate w = { .mode = c->mode, .p = c->p, .k = c->k, .npages = c->p->npages[c->k] };
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	w.mem = bench_map_pages(w.npages);
	if (!w.mem)
		return 2;
	for (size_t i = 0; i < w.npages; i++)
		tu_fill(w.mem + i * PAGE, PAGE, expect(w.p, w.k, i, 0));
	a = (uintptr_t)w.mem;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		struct reply r = { 0, -1 };
		if (cmd == CMD_QUIT)
			return 0;
		if (serve(&w, cmd, rd, wr, &r) || tu_send(wr, &r, sizeof(r)))
			return 4;
	}
	return 4;
}

/* ---- the benchmark's side ---- */

/* One generation's figures: a table row, and the first and last compared. */
struct fig {
	double mib, share, t_merge, cpu_merge, reshare, t_remerge, t_child;
	double vmas_merged, vmas_rewritten, rss_mib, anon_mib, shm_mib, pool_extra, pool_left;
	double idle_cpu, idle_daemon, other, bad;
};

struct proc { struct tu_child c; uintptr_t addr; };

struct gen {
	struct plan p;
	struct proc pr[MAXP];
	struct fig f;
	double other_s, wall_s; /* others' CPU over the measured phases */
	int live;
};

/* Everything one merger's soak keeps: the context of every function here. */
struct soak {
	const struct opts *o;
	enum mode mode;
	pid_t ksmd, daemon;
	int ksm_on, max_map_count;
	double ngens_d;
	struct gen gen[2]; /* this generation and the one before it */
	uint64_t *pfn, *table;
	size_t cap;
	struct fig first, last;
	/* over the whole soak */
	double bad, unreached, pool_left_gens, hard, child_slow, pool_end, pool_end_s;
	double idle_cpu_max;
	long long end_segments, end_held, end_vma_limited;
	double rss_start_mib, rss_end_mib, anon_end_mib;
};

static struct reply ask(const struct proc *pr, char cmd)
{
	struct reply r;

	if (tu_send(pr->c.wr, &cmd, 1) || tu_recv(pr->c.rd, &r, sizeof(r)))
		TU_FAIL("worker pid %d gone (command '%c')", (int)pr->c.pid, cmd);
	return r;
}

/* The same command to every process at once, then every answer. */
static void ask_all(const struct gen *g, char cmd, struct reply *r)
{
	for (int k = 0; k < g->p.nproc; k++)
		if (tu_send(g->pr[k].c.wr, &cmd, 1))
			TU_FAIL("worker %d (pid %d) gone (command '%c')", k, (int)g->pr[k].c.pid,
				cmd);
	for (int k = 0; k < g->p.nproc; k++)
		if (tu_recv(g->pr[k].c.rd, &r[k], sizeof(r[k])))
			TU_FAIL("worker %d (pid %d) gone (command '%c')", k, (int)g->pr[k].c.pid,
				cmd);
}

static size_t gen_frames(struct soak *s, const struct gen *g)
{
	size_t n = 0;

	for (int k = 0; k < g->p.nproc; k++)
		tu_pfns(g->pr[k].c.pid, g->pr[k].addr, g->p.npages[k], s->pfn, &n);
	return count_distinct(s->pfn, n, s->table, s->cap);
}

static long long pool_now(const struct soak *s)
{
	return s->mode == M_KERNEL ? ksm_get("pages_shared") : tu_status("pool_pages");
}

static double mean_vmas(const struct gen *g)
{
	double sum = 0;

	for (int k = 0; k < g->p.nproc; k++)
		sum += (double)tu_vmas(g->pr[k].c.pid);
	return sum / g->p.nproc;
}

/* CPU so far: the merger's (ksmd | samepaged + the scanner threads of
 * every live process) and everything of ours (the workloads' threads, the
 * merger, this program), for the machine's other load. */
struct snap { double t, busy; uint64_t merger, daemon, ours; };

static void take_snap(const struct soak *s, struct snap *sn)
{
	uint64_t m = s->mode == M_KERNEL ? task_ns(s->ksmd, s->ksmd) : proc_ns(s->daemon, NULL, NULL);
	uint64_t all = 0, scan = 0;

	for (int j = 0; j < 2; j++)
		for (int k = 0; s->gen[j].live && k < s->gen[j].p.nproc; k++) {
			uint64_t other = 0;
			all += proc_ns(s->gen[j].pr[k].c.pid, &other, NULL);
			scan += other;
		}
	sn->merger = m + scan;
	sn->daemon = m;
	sn->ours = m + all + self_ns();
	sn->busy = machine_busy_s();
	sn->t = tu_now();
}

/* Merger CPU seconds between a and b; others' load added to g's tally. */
static double span(struct gen *g, const struct snap *a, const struct snap *b)
{
	double other = (b->busy - a->busy) - (double)(b->ours - a->ours) / 1e9;

	g->other_s += other > 0 ? other : 0;
	g->wall_s += b->t - a->t;
	return (double)(b->merger - a->merger) / 1e9;
}

static long long full_scans(const struct soak *s)
{
	return s->mode == M_KERNEL ? ksm_get("full_scans") : tu_status("full_scans");
}

/* Poll until g's regions use no more frames than they hold distinct
 * contents: 1 when reached. Gives up after --timeout s, or once STUCK_S
 * and STUCK_SCANS full scans passed without one frame less (kernel KSM
 * merges nothing before its second full scan, which can take seconds on a
 * busy machine; samepage's idle scanners pass every 2 s). *t: seconds from
 * t0 until reached (when it gave up, until the best share was reached);
 * *share: the best share of the ideal saving, %. */
static int wait_ideal(struct soak *s, const struct gen *g, double t0, double *t, double *share)
{
	double pages = (double)total_pages(&g->p);
	size_t want = distinct_contents(&g->p), least = SIZE_MAX;
	double ideal = pages - (double)want, poll = 0, t_least = t0, t_fs = 0;
	long long fs = full_scans(s), fs_least = fs;

	for (;;) {
		double p0;
		size_t fr;
		/* Every POLL_MS, or 3 times as long as a poll takes: polling must
		 * not take much of the machine from the merger. */
		tu_sleep_ms(poll * 3e3 > POLL_MS ? (int)(poll * 3e3) : POLL_MS);
		if (bench_interrupted())
			TU_FAIL("interrupted");
		ksm_check();
		p0 = tu_now();
		fr = gen_frames(s, g);
		poll = tu_now() - p0;
		/* samepage's counter costs a CLI run: once a second. */
		if (p0 - t_fs >= 1) {
			fs = full_scans(s);
			t_fs = p0;
		}
		if (fr < least) {
			least = fr;
			t_least = p0;
			fs_least = fs;
		}
		*share = 100 * (pages - (double)least) / ideal;
		*t = t_least - t0;
		if (fr <= want)
			return 1;
		if (p0 - t0 > s->o->timeout_s ||
		    (p0 - t_least > STUCK_S && fs - fs_least >= STUCK_SCANS))
			return 0;
	}
}

/* Where a saving falls short: the common offsets whose copies are not all
 * on one frame, by kind (plain, scattered rewrite, block rewrite), with
 * the first of each; for a bug report. */
static void shortfall(const struct soak *s, const struct gen *g)
{
	const struct plan *p = &g->p;
	const uint64_t mask = (1ull << 55) - 1;
	size_t c1, c2, n[3] = { 0, 0, 0 }, first[3] = { 0, 0, 0 }, file[3] = { 0, 0, 0 };
	uint64_t *pm[MAXP];
	static const char *const kind[3] = { "untouched", "scattered rewrite", "block rewrite" };

	common_max2(p, &c1, &c2);
	for (int k = 0; k < p->nproc; k++) {
		pm[k] = malloc(p->common[k] * sizeof(uint64_t));
		if (!pm[k])
			TU_FAIL("malloc");
		tu_pagemap(g->pr[k].c.pid, g->pr[k].addr, p->common[k], pm[k]);
	}
	for (size_t i = 0; i < c2; i++) {
		int ki = in_block(p, i) ? 2 : i % p->stride == p->phase ? 1 : 0, one = 1, ref = -1;
		for (int k = 0; k < p->nproc; k++) {
			if (i >= p->common[k])
				continue;
			if (ref < 0)
				ref = k;
			else if ((pm[k][i] & mask) != (pm[ref][i] & mask))
				one = 0;
		}
		if (one)
			continue;
		if (!n[ki]++)
			first[ki] = i;
		for (int k = 0; k < p->nproc; k++)
			file[ki] += i < p->common[k] && ((pm[k][i] >> 61) & 1);
	}
	for (int k = 0; k < p->nproc; k++)
		free(pm[k]);
	fprintf(stderr, "  %s, generation %d: common offsets not on one frame (of %zu; %zu "
			"scattered, %zu in the block [%zu, %zu)):\n", mode_name[s->mode], p->g, c2,
		(c2 - p->phase + p->stride - 1) / p->stride, p->blk_len, p->blk0,
		p->blk0 + p->blk_len);
	for (int j = 0; j < 3; j++)
		if (n[j])
			fprintf(stderr, "    %-18s %6zu offsets, the first %zu; %zu of their pages "
					"map a file (pool) page\n", kind[j], n[j], first[j], file[j]);
}

/* The ideal saving was not reached: below --min-share a hard failure for
 * samepage (a note for kernel KSM, the reference, which others may switch
 * under our feet), a note above it; where it falls short either way. */
static void short_of(struct soak *s, const struct gen *g, const char *after, double share,
		     double t)
{
	int missed = share < s->o->min_share;

	s->unreached += missed;
	if (missed && s->mode == M_SAMEPAGE)
		TU_REPORT("%s, generation %d: %.2f%% of the ideal saving %.1f s after %s",
			  mode_name[s->mode], g->p.g, share, t, after);
	else
		fprintf(stderr, "soak: NOTE: %s, generation %d: %.2f%% of the ideal saving %.1f s "
				"after %s%s\n", mode_name[s->mode], g->p.g, share, t, after,
			missed ? "" : " (at least --min-share: counted as reached)");
	shortfall(s, g);
}

static void spawn_gen(struct soak *s, struct gen *g)
{
	struct wctx w[MAXP];
	size_t before;

	fflush(NULL); /* a worker's child exit()s: no copy of our buffers */
	for (int k = 0; k < g->p.nproc; k++) {
		w[k] = (struct wctx){ .mode = s->mode, .p = &g->p, .k = k };
		tu_spawn(&g->pr[k].c, worker, &w[k]);
	}
	for (int k = 0; k < g->p.nproc; k++)
		if (tu_recv(g->pr[k].c.rd, &g->pr[k].addr, sizeof(g->pr[k].addr)))
			TU_FAIL("generation %d: worker %d failed to start", g->p.g, k);
	g->live = 1;
	before = gen_frames(s, g);
	if (before != total_pages(&g->p))
		fprintf(stderr, "soak: warning: generation %d holds %zu frames before merging, "
				"not %zu: the ideal is off\n", g->p.g, before, total_pages(&g->p));
}

static void verify_gen(struct soak *s, struct gen *g, const char *when)
{
	struct reply r[MAXP];

	ask_all(g, CMD_VERIFY, r);
	for (int k = 0; k < g->p.nproc; k++) {
		if (r[k].v == 0)
			continue;
		TU_REPORT("CONTENT MISMATCH: %s, generation %d, process %d (pid %d): %lld pages "
			  "differ from what it wrote, the first at page %lld of %zu",
			  mode_name[s->mode], g->p.g, k, (int)g->pr[k].c.pid, (long long)r[k].v,
			  (long long)r[k].aux, g->p.npages[k]);
		fprintf(stderr, "  (%s)\n", when);
		g->f.bad += r[k].v > 0 ? (double)r[k].v : 1;
	}
}

/* Some exit, at least one is SIGKILLed (plan.killed). */
static void end_gen(struct soak *s, struct gen *g)
{
	for (int k = 0; k < g->p.nproc; k++) {
		int killed = (g->p.killed >> k) & 1, st;
		char cmd = CMD_QUIT;
		if (killed)
			kill(g->pr[k].c.pid, SIGKILL);
		else if (tu_send(g->pr[k].c.wr, &cmd, 1))
			TU_REPORT("worker %d of generation %d gone before its exit", k, g->p.g);
		st = tu_reap(&g->pr[k].c);
		if (st != (killed ? 128 + SIGKILL : 0)) {
			TU_REPORT("%s, generation %d, worker %d: exit status %d, wanted %d",
				  mode_name[s->mode], g->p.g, k, st, killed ? 128 + SIGKILL : 0);
			s->hard++;
		}
	}
	g->live = 0;
}

/* Wait (at most POOL_WAIT_S) for the pool (kernel: pages_shared) to come
 * down to want: what is beyond it then (a pool below want, the live
 * generation not fully merged, left nothing). *t: how long it took. */
static double pool_settle(const struct soak *s, long long want, double *t)
{
	double t0 = tu_now();
	long long n;

	while ((n = pool_now(s)) > want && tu_now() - t0 < POOL_WAIT_S && !bench_interrupted())
		tu_sleep_ms(50);
	if (t)
		*t = tu_now() - t0;
	return n > want ? (double)(n - want) : 0;
}

static void row_head(const struct soak *s)
{
	printf("\n%s: one row per generation (* = the reference shape; 0 warms up, 1 is compared "
	       "with the last)\n", mode_name[s->mode]);
	printf("%5s %2s %5s | %7s %6s %6s | %7s %6s | %6s | %6s %6s | %6s %6s %6s | %6s %6s | %6s "
	       "%6s | %5s\n", "gen", "P", "MiB", "saved%", "t_s", "cpu_s", "again%", "t_s", "child",
	       "VMAs", "VMAs_w", "RSS", "anon", "shm", "pool+", "left", "idle%", "others", "bad");
	fflush(stdout);
}

static void fmt(char *b, size_t n, double v, const char *f, int have)
{
	if (have)
		snprintf(b, n, f, v);
	else
		snprintf(b, n, "-");
}

static void print_row(struct soak *s, struct gen *g)
{
	const struct fig *f = &g->f;
	char child[16], rss[16], anon[16], shm[16];

	fmt(child, sizeof(child), f->t_child, "%.2f", f->t_child >= 0);
	fmt(rss, sizeof(rss), f->rss_mib, "%.1f", s->mode == M_SAMEPAGE);
	fmt(anon, sizeof(anon), f->anon_mib, "%.1f", s->mode == M_SAMEPAGE);
	fmt(shm, sizeof(shm), f->shm_mib, "%.1f", s->mode == M_SAMEPAGE);
	printf("%4d%c %2d %5.0f | %7.2f %6.2f %6.2f | %7.2f %6.2f | %6s | %6.0f %6.0f | %6s %6s %6s "
	       "| %6.0f %6.0f | %6.2f %6.2f | %5.0f\n", g->p.g, g->p.ref ? '*' : ' ', g->p.nproc,
	       f->mib, f->share, f->t_merge, f->cpu_merge, f->reshare, f->t_remerge, child,
	       f->vmas_merged, f->vmas_rewritten, rss, anon, shm, f->pool_extra, f->pool_left,
	       f->idle_cpu, f->other, f->bad);
	fflush(stdout);
	if (g->p.g == 1)
		s->first = *f;
	if (g->p.last)
		s->last = *f;
	s->bad += f->bad;
	s->pool_left_gens += f->pool_left != 0;
	s->idle_cpu_max = f->idle_cpu > s->idle_cpu_max ? f->idle_cpu : s->idle_cpu_max;
	s->ngens_d++;
}

/* The previous generation goes while g lives: what the pool holds
 * beyond g's needs is what it left. */
static void retire(struct soak *s, struct gen *prev, long long want)
{
	end_gen(s, prev);
	prev->f.pool_left = pool_settle(s, want, NULL);
	prev->f.other = prev->wall_s > 0 ? prev->other_s / prev->wall_s : 0;
	print_row(s, prev);
}

/* 1. madvise, wait for the ideal saving. */
static void merge_phase(struct soak *s, struct gen *g)
{
	struct reply r[MAXP];
	struct snap a, b;
	int err;

	if (s->mode == M_KERNEL && !s->ksm_on) {
		if ((err = ksm_start()))
			TU_FAIL("cannot switch kernel KSM on: %s", strerror(-err));
		s->ksm_on = 1;
	}
	take_snap(s, &a);
	ask_all(g, CMD_MADVISE, r);
	for (int k = 0; k < g->p.nproc; k++)
		if (r[k].v)
			TU_FAIL("%s: madvise(MADV_MERGEABLE) in worker %d: %s", mode_name[s->mode], k,
				strerror((int)-r[k].v));
	if (!wait_ideal(s, g, a.t, &g->f.t_merge, &g->f.share))
		short_of(s, g, "merging", g->f.share, g->f.t_merge);
	take_snap(s, &b);
	g->f.cpu_merge = span(g, &a, &b);
	g->f.vmas_merged = mean_vmas(g);
}

/* Whether the child's copies share the frames of the common pages they
 * copy and its pairs share one frame each. The parent's pages are the
 * reference: a fork copies no page table entries of file mappings, so the
 * child's own merged pages are not present until it touches them. */
static int child_merged(pid_t child, pid_t parent, uintptr_t addr, size_t u)
{
	uint64_t c[CHILD_COPIES + 2 * CHILD_PAIRS], o[CHILD_COPIES];
	const uint64_t pfn = (1ull << 55) - 1;

	tu_pagemap(child, addr + u * PAGE, CHILD_COPIES + 2 * CHILD_PAIRS, c);
	tu_pagemap(parent, addr, CHILD_COPIES, o);
	for (int j = 0; j < CHILD_COPIES; j++)
		if (!(c[j] >> 63) || (c[j] & pfn) != (o[j] & pfn))
			return 0;
	for (int j = 0; j < CHILD_PAIRS; j++) {
		uint64_t x = c[CHILD_COPIES + 2 * j], y = c[CHILD_COPIES + 2 * j + 1];
		if (!(x >> 63) || (x & pfn) != (y & pfn))
			return 0;
	}
	return 1;
}

static void child_shortfall(const struct soak *s, const struct gen *g, pid_t child)
{
	uint64_t c[CHILD_COPIES + 2 * CHILD_PAIRS], o[CHILD_COPIES];
	const uint64_t pfn = (1ull << 55) - 1;
	uintptr_t addr = g->pr[g->p.forker].addr;
	int copies = 0, copies_file = 0, pairs = 0, pairs_file = 0;

	tu_pagemap(child, addr + g->p.common[g->p.forker] * PAGE, CHILD_COPIES + 2 * CHILD_PAIRS,
		   c);
	tu_pagemap(g->pr[g->p.forker].c.pid, addr, CHILD_COPIES, o);
	for (int j = 0; j < CHILD_COPIES; j++) {
		copies += (c[j] >> 63) && (c[j] & pfn) == (o[j] & pfn);
		copies_file += (c[j] >> 61) & 1;
	}
	for (int j = 0; j < CHILD_PAIRS; j++) {
		uint64_t x = c[CHILD_COPIES + 2 * j], y = c[CHILD_COPIES + 2 * j + 1];
		pairs += (x >> 63) && (x & pfn) == (y & pfn);
		pairs_file += ((x >> 61) & 1) + ((y >> 61) & 1);
	}
	fprintf(stderr, "soak: %s, generation %d: fork child (pid %d) of worker %d not merged in "
			"%d s: %d of %d copies of merged pages on their frame (%d file pages), %d "
			"of %d pairs on one frame (%d file pages)\n", mode_name[s->mode], g->p.g,
		(int)child, g->p.forker, CHILD_WAIT_S, copies, CHILD_COPIES, copies_file, pairs,
		CHILD_PAIRS, pairs_file);
}

/* 3. A fork child merges pages of its own, checks its bytes, goes. */
static void child_phase(struct soak *s, struct gen *g)
{
	const struct proc *pr = &g->pr[g->p.forker];
	size_t u = g->p.common[g->p.forker];
	int kill_it = g->p.child_kill, want = kill_it ? 128 + SIGKILL : 0;
	struct reply r = ask(pr, CMD_FORK);
	double t0 = tu_now();
	pid_t child = (pid_t)r.v;

	if (r.v <= 0)
		TU_FAIL("generation %d: fork in worker %d: %s", g->p.g, g->p.forker,
			strerror((int)-r.v));
	g->f.t_child = -1;
	while (tu_now() - t0 < CHILD_WAIT_S && !bench_interrupted()) {
		ksm_check();
		if (child_merged(child, pr->c.pid, pr->addr, u)) {
			g->f.t_child = tu_now() - t0;
			break;
		}
		tu_sleep_ms(100);
	}
	if (g->f.t_child < 0) {
		child_shortfall(s, g, child);
		s->child_slow++;
	}
	r = ask(pr, CMD_CHILD_VERIFY);
	if (r.v) {
		TU_REPORT("CONTENT MISMATCH: %s, generation %d, fork child of worker %d: %lld pages "
			  "differ, the first at page %lld", mode_name[s->mode], g->p.g, g->p.forker,
			  (long long)r.v, (long long)r.aux);
		g->f.bad += r.v > 0 ? (double)r.v : 1;
	}
	r = ask(pr, kill_it ? CMD_CHILD_KILL : CMD_CHILD_EXIT);
	if (r.v != want) {
		TU_REPORT("%s, generation %d: fork child ended with %lld, wanted %d",
			  mode_name[s->mode], g->p.g, (long long)r.v, want);
		s->hard++;
	}
}

/* 4. The rewrites, and the re-merge. */
static void rewrite_phase(struct soak *s, struct gen *g)
{
	struct reply r[MAXP];
	struct snap a, b;

	take_snap(s, &a);
	ask_all(g, CMD_REWRITE, r);
	if (!wait_ideal(s, g, a.t, &g->f.t_remerge, &g->f.reshare))
		short_of(s, g, "the rewrites", g->f.reshare, g->f.t_remerge);
	take_snap(s, &b);
	span(g, &a, &b);
}

static void set_knobs(const struct soak *s, int idle)
{
	int err = s->mode == M_KERNEL ?
			  set_budget(M_KERNEL, idle ? K_IDLE_PTS : RUN_PTS, idle ? K_IDLE_SLEEP : RUN_SLEEP) :
			  set_budget(M_SAMEPAGE, idle ? SP_IDLE_PTS : RUN_PTS,
				     idle ? SP_IDLE_SLEEP : RUN_SLEEP);

	if (err)
		TU_FAIL("cannot set the %s budget of %s: %s", idle ? "idle" : "run",
			mode_name[s->mode], strerror(-err));
}

/* 4-5. What the merged generation costs at rest. The counters first: a
 * status request is work for the daemon, not to fall into the window. */
static void idle_phase(struct soak *s, struct gen *g)
{
	double t_settled = tu_now() + SETTLE_MS / 1e3;
	struct snap a, b;

	set_knobs(s, 1);
	tu_sleep_ms(SETTLE_MS / 2);
	g->f.vmas_rewritten = mean_vmas(g);
	g->f.pool_extra = (double)(pool_now(s) - (long long)needed_pool(&g->p));
	if (s->mode == M_SAMEPAGE) {
		g->f.rss_mib = (double)tu_proc_kib(s->daemon, "VmRSS") / 1024;
		g->f.anon_mib = (double)tu_proc_kib(s->daemon, "RssAnon") / 1024;
		g->f.shm_mib = (double)tu_proc_kib(s->daemon, "RssShmem") / 1024;
	}
	while (tu_now() < t_settled)
		tu_sleep_ms(50);
	take_snap(s, &a);
	tu_sleep_ms(s->o->idle_s * 1000);
	take_snap(s, &b);
	g->f.idle_cpu = 100 * span(g, &a, &b) / (b.t - a.t);
	g->f.idle_daemon = 100 * (double)(b.daemon - a.daemon) / 1e9 / (b.t - a.t);
	set_knobs(s, 0);
	ksm_check();
}

static void check_daemon(struct soak *s)
{
	if (s->mode == M_SAMEPAGE && kill(s->daemon, 0) != 0)
		TU_FAIL("the daemon (pid %d) is gone: one daemon was to serve the whole soak",
			(int)s->daemon);
}

static int max_map_count(void)
{
	char buf[32];

	return tu_read_text("/proc/sys/vm/max_map_count", buf, sizeof(buf)) ? -1 : atoi(buf);
}

static void run_generation(struct soak *s, int gi, int last)
{
	struct gen *g = &s->gen[gi & 1], *prev = &s->gen[(gi + 1) & 1];
	int mmc;

	memset(g, 0, sizeof(*g));
	make_plan(s->o, &g->p, gi, last);
	g->f.mib = (double)total_pages(&g->p) / 256;
	spawn_gen(s, g);
	merge_phase(s, g);
	verify_gen(s, g, "after merging");
	if (prev->live)
		retire(s, prev, (long long)needed_pool(&g->p));
	child_phase(s, g);
	rewrite_phase(s, g);
	idle_phase(s, g);
	verify_gen(s, g, "after the rewrites, merged again and idle");
	check_daemon(s);
	mmc = max_map_count();
	if (mmc != s->max_map_count) {
		printf("NOTE: vm.max_map_count is %d (was %d before): someone else's test; "
		       "the VMA budget of generation %d may differ\n", mmc, s->max_map_count, gi);
		s->max_map_count = mmc;
	}
}

static void finish(struct soak *s, int gi)
{
	struct gen *g = &s->gen[gi & 1];

	end_gen(s, g);
	g->f.pool_left = pool_settle(s, 0, &s->pool_end_s);
	g->f.other = g->wall_s > 0 ? g->other_s / g->wall_s : 0;
	s->pool_end = g->f.pool_left;
	print_row(s, g);
	if (s->mode == M_SAMEPAGE) {
		char buf[8192];
		if (!tu_status_json(0, buf, sizeof(buf))) {
			s->end_segments = tu_json_get(buf, "pool_segments");
			s->end_held = tu_json_get(buf, "held_sets");
			s->end_vma_limited = tu_json_get(buf, "vma_limited");
		}
		s->rss_end_mib = (double)tu_proc_kib(s->daemon, "VmRSS") / 1024;
		s->anon_end_mib = (double)tu_proc_kib(s->daemon, "RssAnon") / 1024;
		printf("samepage, once every process exited: pool_pages %.0f after %.2f s, "
		       "pool_segments %lld, held_sets %lld, vma_limited %lld over the soak; daemon "
		       "VmRSS %.1f MiB (%.1f at the start), RssAnon %.1f MiB\n", s->pool_end,
		       s->pool_end_s, s->end_segments, s->end_held, s->end_vma_limited,
		       s->rss_end_mib, s->rss_start_mib, s->anon_end_mib);
		sp_teardown();
	} else {
		printf("kernel KSM, once every process exited: pages_shared %.0f after %.2f s\n",
		       s->pool_end, s->pool_end_s);
		ksm_off();
		s->ksm_on = 0;
		printf("kernel KSM switched off: run=%lld\n", ksm_get("run"));
	}
	/* Kernel KSM's pages_shared counts other processes' KSM pages too. */
	if (s->mode == M_SAMEPAGE && s->pool_end != 0) {
		TU_REPORT("%s: %.0f pool pages left %d s after every process exited",
			  mode_name[s->mode], s->pool_end, POOL_WAIT_S);
		s->hard++;
	}
}

static void frames_alloc(struct soak *s)
{
	size_t most = (size_t)MAXP * (size_t)s->o->mib_max * 256;

	for (s->cap = 1; s->cap < 2 * most; s->cap <<= 1)
		;
	s->pfn = malloc(most * sizeof(*s->pfn));
	s->table = malloc(s->cap * sizeof(*s->table));
	if (!s->pfn || !s->table)
		TU_FAIL("malloc");
}

/* One merger through all its generations; how many it ran. */
static int soak_run(struct soak *s, enum mode mode, const struct opts *o, int gens)
{
	double deadline = tu_now() + o->hours * 3600;
	int err, gi;

	memset(s, 0, sizeof(*s));
	s->o = o;
	s->mode = mode;
	s->max_map_count = max_map_count();
	if ((err = merger_setup(mode, RUN_PTS, RUN_SLEEP, NULL, &s->ksmd)))
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	if (mode == M_SAMEPAGE) {
		s->daemon = sp_daemon_pid();
		s->rss_start_mib = (double)tu_proc_kib(s->daemon, "VmRSS") / 1024;
	}
	frames_alloc(s);
	row_head(s);
	for (gi = 0;; gi++) {
		int last = o->hours > 0 && mode == M_SAMEPAGE ? gi >= 1 && tu_now() >= deadline
							   : gi == gens - 1;
		run_generation(s, gi, last);
		if (last)
			break;
	}
	finish(s, gi);
	free(s->pfn);
	free(s->table);
	return gi + 1;
}

/* ---- the comparison of the first and the last generation ---- */

/* Figures compared, with their slack beyond 10 %: a small absolute
 * margin where one-off noise of this shared 2-CPU machine is larger than
 * 10 % of a small value. */
struct target { const char *name, *key, *unit; size_t off; double slack; const char *wanted; };

#define FIG_OFF(f) offsetof(struct fig, f)
static const struct target targets[] = {
	{ "share of the ideal saving", "share", "%", FIG_OFF(share), 0, "100 in both" },
	{ "time to the ideal saving", "t_merge", "s", FIG_OFF(t_merge), 0.5, "within 10% + 0.5 s" },
	{ "  share again after the rewrites", "reshare", "%", FIG_OFF(reshare), 0, "100 in both" },
	{ "  time to it (re-merge)", "t_remerge", "s", FIG_OFF(t_remerge), 2.0,
	  "within 10% + 2 s (idle passes 2 s)" },
	{ "VMAs per process, merged", "vmas_merged", "count", FIG_OFF(vmas_merged), 2,
	  "within 10% + 2" },
	{ "  after the rewrites", "vmas_rewritten", "count", FIG_OFF(vmas_rewritten), 2,
	  "within 10% + 2" },
	{ "daemon VmRSS", "rss_mib", "MiB", FIG_OFF(rss_mib), 1, "within 10% + 1 MiB" },
	{ "  RssAnon: its own memory", "anon_mib", "MiB", FIG_OFF(anon_mib), 1,
	  "within 10% + 1 MiB" },
	{ "  RssShmem: pool pages it maps", "shm_mib", "MiB", FIG_OFF(shm_mib), 1,
	  "within 10% + 1 MiB" },
	{ "pool pages beyond the merged contents", "pool_extra", "pages", FIG_OFF(pool_extra), 0,
	  "0 in both" },
	{ "pool pages left after the generation exited", "pool_left", "pages", FIG_OFF(pool_left),
	  0, "0 in both" },
	{ "merger CPU while idle", "idle_cpu", "% core", FIG_OFF(idle_cpu), 0.3,
	  "within 10% + 0.3, and <= 1" },
	{ "  samepaged | ksmd alone", "idle_daemon", "% core", FIG_OFF(idle_daemon), -1, "info" },
};

static double get(const struct fig *f, size_t off)
{
	return *(const double *)((const char *)f + off);
}

/* Whether samepage's (or the kernel's) last generation meets target t. */
static int met(const struct target *t, const struct fig *first, const struct fig *last)
{
	double a = get(first, t->off), b = get(last, t->off);

	if (t->slack < 0) /* information only */
		return 1;
	if (t->off == FIG_OFF(share) || t->off == FIG_OFF(reshare))
		return a >= 100 && b >= 100;
	if (t->off == FIG_OFF(pool_left) || t->off == FIG_OFF(pool_extra))
		return a == 0 && b == 0;
	if (t->off == FIG_OFF(idle_cpu) && b > 1)
		return 0;
	return b <= a * 1.1 + t->slack && b >= a * 0.9 - t->slack;
}

static void cell(char *buf, size_t n, double v, int have)
{
	if (have)
		snprintf(buf, n, "%.2f", v);
	else
		snprintf(buf, n, "-");
}

static void summary_target(const struct target *t, const struct soak *s, const int *hv)
{
	char key[64];
	const struct fig *f[2] = { &s[M_SAMEPAGE].first, &s[M_KERNEL].first };
	const struct fig *l[2] = { &s[M_SAMEPAGE].last, &s[M_KERNEL].last };

	snprintf(key, sizeof(key), "soak.%s_first", t->key);
	summary(key, get(f[0], t->off), get(f[1], t->off), hv[0], hv[1]);
	snprintf(key, sizeof(key), "soak.%s_last", t->key);
	summary(key, get(l[0], t->off), get(l[1], t->off), hv[0], hv[1]);
	snprintf(key, sizeof(key), "soak.%s_met", t->key);
	summary(key, hv[0] && met(t, f[0], l[0]), hv[1] && met(t, f[1], l[1]), hv[0], hv[1]);
}

/* The table of first against last; how many targets samepage missed. */
static int compare(const struct soak *s, const int *have)
{
	int misses = 0;

	printf("\nfirst vs last generation (both of the reference shape); met: samepage's last "
	       "generation within 10 %% of its first (+ slack)\n");
	printf("%-40s %-6s | %9s %9s %6s | %-34s %3s | %9s %9s %6s\n", "figure", "unit",
	       "sp first", "sp last", "ratio", "wanted", "met", "kern 1st", "kern last", "ratio");
	printf("------------------------------------------------------------------------------"
	       "----------------------------------------------------------------------\n");
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		const struct target *t = &targets[i];
		/* The daemon's RSS has no kernel counterpart. */
		int daemon_fig = t->off == FIG_OFF(rss_mib) || t->off == FIG_OFF(anon_mib) ||
				 t->off == FIG_OFF(shm_mib);
		int hv[2] = { have[M_SAMEPAGE], have[M_KERNEL] && !daemon_fig };
		double v[4] = { get(&s[M_SAMEPAGE].first, t->off), get(&s[M_SAMEPAGE].last, t->off),
				get(&s[M_KERNEL].first, t->off), get(&s[M_KERNEL].last, t->off) };
		char c[6][16];
		int m = hv[0] && met(t, &s[M_SAMEPAGE].first, &s[M_SAMEPAGE].last);
		cell(c[0], 16, v[0], hv[0]);
		cell(c[1], 16, v[1], hv[0]);
		cell(c[2], 16, v[0] ? v[1] / v[0] : 0, hv[0] && v[0]);
		cell(c[3], 16, v[2], hv[1]);
		cell(c[4], 16, v[3], hv[1]);
		cell(c[5], 16, v[2] ? v[3] / v[2] : 0, hv[1] && v[2]);
		printf("%-40s %-6s | %9s %9s %6s | %-34s %3s | %9s %9s %6s\n", t->name, t->unit, c[0],
		       c[1], c[2], t->wanted, hv[0] && t->slack >= 0 ? (m ? "yes" : "NO") : "-", c[3],
		       c[4], c[5]);
		misses += hv[0] && !m;
		summary_target(t, s, hv);
	}
	return misses;
}

static void totals(const struct soak *s, const int *have)
{
	const struct soak *sp = &s[M_SAMEPAGE], *k = &s[M_KERNEL];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];

	printf("\nover the whole soak                          | %12s | %12s\n", "samepage",
	       "kernel KSM");
#define TOTAL(label, f)                                                                     \
	printf("%-44s | %12s | %12s\n", label, hs ? (snprintf(a, 24, "%.0f", sp->f), a) : "-", \
	       hk ? (snprintf(b, 24, "%.0f", k->f), b) : "-")
	{
		char a[24], b[24];
		TOTAL("generations", ngens_d);
		TOTAL("pages differing from what was written", bad);
		TOTAL("phases that missed the ideal saving", unreached);
		TOTAL("generations that left pool pages", pool_left_gens);
		TOTAL("pool pages once every process exited", pool_end);
		TOTAL("fork children not merged in 20 s", child_slow);
		TOTAL("other hard failures (exits, daemon)", hard);
	}
#undef TOTAL
	printf("%-44s | %12.2f | %12.2f\n", "highest merger CPU while idle, % core",
	       hs ? sp->idle_cpu_max : 0, hk ? k->idle_cpu_max : 0);
	summary("soak.generations", sp->ngens_d, k->ngens_d, hs, hk);
	summary("soak.bad", sp->bad, k->bad, hs, hk);
	summary("soak.unreached", sp->unreached, k->unreached, hs, hk);
	summary("soak.pool_left_gens", sp->pool_left_gens, k->pool_left_gens, hs, hk);
	summary("soak.pool_end", sp->pool_end, k->pool_end, hs, hk);
	summary("soak.child_slow", sp->child_slow, k->child_slow, hs, hk);
	summary("soak.hard", sp->hard, k->hard, hs, hk);
	summary("soak.idle_cpu_max", sp->idle_cpu_max, k->idle_cpu_max, hs, hk);
	report_disturbed("soak.disturbed");
}

/* ---- options ---- */

static void usage(void)
{
	fprintf(stderr, "usage: soak [--generations N] [--hours H] [--quick] [--no-kernel] "
			"[--kernel-generations K] [--seed S] [--mib-min M] [--mib-max M] "
			"[--timeout SEC] [--idle-s SEC] [--min-share PCT] [--quiet-wait SEC] "
			"[--only samepage|kernel] [--summary FILE]\n");
	exit(2);
}

/* --quick first, whatever its place: the other options override it. */
static void defaults(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .gens = 50, .only = -1, .quiet_s = 10, .timeout_s = 60, .idle_s = 4,
			    .repeat = 1, .mib_min = 16, .mib_max = 128, .pmin = 3, .pmax = 5,
			    .seed = 1, .min_share = 100 };
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--quick")) {
			o->quick = 1;
			o->gens = 10;
			o->mib_max = 48;
			o->pmax = 4;
			o->idle_s = 2;
			o->timeout_s = 30;
		}
}

static int parse_one(int argc, char **argv, int *i, struct opts *o)
{
	const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;

	if (!strcmp(a, "--quick"))
		return 1;
	if (!strcmp(a, "--no-kernel")) {
		o->no_kernel = 1;
		return 1;
	}
	if (!v)
		return 0;
	++*i;
	if (!strcmp(a, "--generations"))
		o->gens = atoi(v);
	else if (!strcmp(a, "--kernel-generations"))
		o->kgens = atoi(v);
	else if (!strcmp(a, "--hours"))
		o->hours = atof(v);
	else if (!strcmp(a, "--seed"))
		o->seed = strtoull(v, NULL, 0);
	else if (!strcmp(a, "--mib-min"))
		o->mib_min = atoi(v);
	else if (!strcmp(a, "--mib-max"))
		o->mib_max = atoi(v);
	else if (!strcmp(a, "--timeout"))
		o->timeout_s = atoi(v);
	else if (!strcmp(a, "--idle-s"))
		o->idle_s = atoi(v);
	else if (!strcmp(a, "--min-share"))
		o->min_share = atof(v);
	else {
		--*i;
		return 0;
	}
	return 1;
}

static void parse(int argc, char **argv, struct opts *o)
{
	defaults(argc, argv, o);
	for (int i = 1; i < argc; i++) {
		int c = bench_opt(argc, argv, &i, &o->repeat, &o->quiet_s, &o->only, NULL);
		if (c < 0)
			usage();
		if (!c && !parse_one(argc, argv, &i, o))
			usage();
	}
	/* 16 MiB at least: the child's pages must fit in the unique part. */
	if (o->gens < 2 || o->kgens == 1 || o->kgens < 0 || o->hours < 0 || o->mib_min < 16 ||
	    o->mib_max < o->mib_min || o->mib_max > 8192 || o->timeout_s < 1 || o->idle_s < 1 ||
	    o->min_share <= 0 || o->min_share > 100 ||
	    o->quiet_s < 0)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o;
	struct soak s[2];
	int have[2] = { 0, 0 }, gens, misses;
	double hard;

	parse(argc, argv, &o);
	bench_init(!o.no_kernel && o.only != M_SAMEPAGE);
	memset(s, 0, sizeof(s));
	gens = o.gens;
	printf("# soak: %d generations%s, %d-%d processes of %d-%d MiB, seed %llu; merging at "
	       "pages_to_scan=%d sleep_millisecs=%d (kernel smart_scan=0), idle at the defaults "
	       "(samepage %d/%d, kernel %d/%d); vm.max_map_count %d\n",
	       o.gens, o.hours > 0 ? " (or as many as the hours given take)" : "", o.pmin,
	       o.pmax, o.mib_min, o.mib_max, (unsigned long long)o.seed, RUN_PTS, RUN_SLEEP,
	       SP_IDLE_PTS, SP_IDLE_SLEEP, K_IDLE_PTS, K_IDLE_SLEEP, max_map_count());
	if (o.only != M_KERNEL) {
		wait_quiet(o.quiet_s);
		gens = soak_run(&s[M_SAMEPAGE], M_SAMEPAGE, &o, o.gens);
		have[M_SAMEPAGE] = 1;
	}
	if (!o.no_kernel && o.only != M_SAMEPAGE) {
		wait_quiet(o.quiet_s);
		soak_run(&s[M_KERNEL], M_KERNEL, &o,
			 o.kgens ? o.kgens : gens < KERNEL_GENS ? gens : KERNEL_GENS);
		have[M_KERNEL] = 1;
	}
	misses = compare(s, have);
	totals(s, have);
	hard = s[M_SAMEPAGE].bad + s[M_SAMEPAGE].unreached + s[M_SAMEPAGE].pool_end +
	       s[M_SAMEPAGE].hard + s[M_KERNEL].bad;
	if (s[M_KERNEL].unreached)
		printf("NOTE: kernel KSM missed the ideal saving in %.0f phases: see the WARNING "
		       "lines; someone else may have switched it\n", s[M_KERNEL].unreached);
	printf("\n%s: %d of samepage's figures missed their target%s\n",
	       hard ? "FAILURE" : "done", misses,
	       hard ? "; and a hard failure (wrong bytes, saving not reached, pool pages left, "
		      "a process or the daemon gone): see FAIL lines" : "");
	return hard ? 1 : 0;
}
