/* SPDX-License-Identifier: MIT */
/*
 * fork_read — a fork child reading all of its parent's merged memory while
 * the parent writes (Redis's BGSAVE), samepage against kernel KSM in one
 * run.
 *
 * Workload: 2 processes, each S MiB (default 128) of the same random pages,
 * marked MADV_MERGEABLE as in ksm_compare (libsamepage's madvise() | the
 * raw syscall), merged at pages_to_scan=100000 sleep_millisecs=0 (kernel
 * smart_scan=0) until every page of process 0 shares its frame with
 * process 1's (pagemap), at most --timeout s. The merger keeps running.
 * Then process 0 forks; the child compares every page with what was written
 * and writes it to /dev/null (a dump), and exits; meanwhile the parent
 * stores into one page in 16, again and again (the same byte: each first
 * store breaks a merged page's sharing), until the child is gone.
 * Reported: the child's time from fork to exit, the parent's stores per
 * second meanwhile, the pages the child found wrong, and the pages of
 * both processes that differ from what was written afterwards.
 *
 * Needs root; kernel KSM only while measured and always off again.
 *
 *   build/bench/fork_read [--mib S] [--timeout SEC] [--repeat R]
 *       [--quiet-wait SEC] [--only samepage|kernel] [--summary FILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchlib.h"

#define NPROC 2
#define SEED 0xf0f4eadull
#define STORE_STRIDE 16 /* the parent stores into one page in this many */

enum { CMD_FORK_READ = 'f' }; /* and benchlib's CMD_* */

struct opts {
	size_t mib;
	int timeout_s, repeat, quiet_s, only;
};

/* ---- the workload process ---- */

struct wctx { enum mode mode; size_t npages; };
/* CMD_FORK_READ's answer. */
struct fork_r { double child_s, stores_per_s; uint64_t child_bad; int status; int pad; };

/* The child: every page checked and written out, as a dump would. */
static void dump_child(const unsigned char *p, size_t npages)
{
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	uint64_t bad = bench_pages_differ(p, npages, SEED);

	for (size_t i = 0; fd >= 0 && i < npages; i++)
		if (write(fd, p + i * PAGE, PAGE) != PAGE)
			_exit(2);
	_exit(bad ? 1 : 0);
}

static struct fork_r fork_read(unsigned char *p, size_t npages)
{
	struct fork_r r = { 0, 0, 0, -1, 0 };
	uint64_t stores = 0;
	double t0 = tu_now();
	pid_t child = fork();

	if (child < 0)
		return r;
	if (child == 0)
		dump_child(p, npages);
	/* The same byte back: a store all the same, which breaks sharing. */
	for (size_t i = 0; waitpid(child, &r.status, WNOHANG) == 0; i = (i + STORE_STRIDE) % npages) {
		volatile unsigned char *b = p + i * PAGE;
		*b = *b;
		stores++;
	}
	r.child_s = tu_now() - t0;
	r.stores_per_s = (double)stores / r.child_s;
	r.child_bad = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 1;
	return r;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
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
			int r = bench_mergeable(w->mode, p, w->npages * PAGE);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_FORK_READ) {
			struct fork_r r = fork_read(p, w->npages);
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

/* ---- one measurement ---- */

#define RESULT_FIELDS(X) \
	X(merge_s) X(merged_pct) X(child_s) X(stores_per_s) X(child_bad) X(bad) X(other_cpu)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
};
#undef DECLARE

struct run {
	size_t npages;
	struct tu_child c[NPROC];
	pid_t pids[NPROC];
	uintptr_t addr[NPROC];
	uint64_t *pm[2];
};

static void start(struct run *r, enum mode mode, struct wctx *w)
{
	for (int k = 0; k < NPROC; k++) {
		w[k] = (struct wctx){ .mode = mode, .npages = r->npages };
		tu_spawn(&r->c[k], worker, &w[k]);
		r->pids[k] = r->c[k].pid;
		r->pm[k] = malloc(r->npages * sizeof(uint64_t));
		if (!r->pm[k])
			TU_FAIL("out of memory");
	}
	for (int k = 0; k < NPROC; k++)
		if (tu_recv(r->c[k].rd, &r->addr[k], sizeof(r->addr[k])))
			TU_FAIL("worker %d failed to start", k);
}

static void merge(struct run *r, enum mode mode, const struct opts *o, struct result *res)
{
	double t0 = tu_now(), deadline = t0 + o->timeout_s;
	size_t merged = 0;

	bench_start_merging(r->c, NPROC, mode);
	while (!bench_interrupted() && tu_now() < deadline &&
	       (merged = same_frames(r->pids, r->addr, r->npages, r->pm)) < r->npages) {
		ksm_check();
		tu_sleep_ms(50);
	}
	if (bench_interrupted())
		TU_FAIL("interrupted");
	res->merge_s = tu_now() - t0;
	res->merged_pct = 100.0 * (double)merged / (double)r->npages;
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct run r = { .npages = o->mib * 256 };
	struct wctx w[NPROC];
	struct fork_r f;
	double busy0, self0;
	pid_t ksmd;
	int err;

	memset(res, 0, sizeof(*res));
	if ((err = merger_setup(mode, 100000, 0, NULL, &ksmd)))
		TU_FAIL("cannot get %s ready: %s", mode_name[mode], strerror(-err));
	start(&r, mode, w);
	merge(&r, mode, o, res);
	busy0 = machine_busy_s();
	self0 = (double)self_ns() / 1e9;
	bench_send(r.c, 0, CMD_FORK_READ);
	if (tu_recv(r.c[0].rd, &f, sizeof(f)))
		TU_FAIL("worker 0 died in the fork test");
	if (f.status < 0 || !WIFEXITED(f.status) || WEXITSTATUS(f.status) > 1)
		TU_FAIL("%s: the fork child failed (status %#x)", mode_name[mode], f.status);
	res->child_s = f.child_s;
	res->stores_per_s = f.stores_per_s;
	res->child_bad = (double)f.child_bad;
	/* The rest of the machine: all busy CPU but the workload's two
	 * (the parent storing, the child reading) and ours. */
	res->other_cpu = machine_busy_s() - busy0 - ((double)self_ns() / 1e9 - self0) -
			 2 * f.child_s;
	if (res->other_cpu < 0)
		res->other_cpu = 0;
	res->bad = (double)bench_verify_all(r.c, NPROC);
	bench_quit_all(r.c, NPROC);
	for (int k = 0; k < NPROC; k++)
		free(r.pm[k]);
	if (mode == M_KERNEL)
		ksm_off();
	else
		sp_teardown();
}

/* ---- the report ---- */

static void report(const struct opts *o, struct result runs[2][16], int n, const int *have)
{
	struct result med[2];
	const struct result *s = &med[0], *k = &med[1];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];

	for (int m = 0; m < 2; m++)
		if (have[m])
			bench_median_doubles(runs[m], n, sizeof(struct result), &med[m]);
#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nworkload: %d processes x %zu MiB, all identical, merged at "
	       "pages_to_scan=100000 sleep_millisecs=0; then process 0 forks a child that checks "
	       "and dumps all of it while the parent stores into 1 page in %d; %s%d run%s\n",
	       NPROC, o->mib, STORE_STRIDE, n > 1 ? "median of " : "", n, n > 1 ? "s" : "");
	table_head();
	ROW("time to merge", "s", s->merge_s, k->merge_s);
	ROW("  merged by then", "%", s->merged_pct, k->merged_pct);
	ROW("fork child: check and dump all", "s", s->child_s, k->child_s);
	ROW("parent's stores meanwhile", "1/s", s->stores_per_s, k->stores_per_s);
	ROW("child runs that found a page wrong", "runs", s->child_bad, k->child_bad);
	ROW("pages differing afterwards", "pages", s->bad, k->bad);
	ROW("other CPU use on the machine", "s", s->other_cpu, k->other_cpu);
#undef ROW
	summary("fork_read.child_s", s->child_s, k->child_s, hs, hk);
	summary("fork_read.stores_per_s", s->stores_per_s, k->stores_per_s, hs, hk);
	summary("fork_read.bad", s->bad + s->child_bad, k->bad + k->child_bad, hs, hk);
	report_disturbed("fork_read.disturbed");
}

static void usage(void)
{
	fprintf(stderr, "usage: fork_read [--mib S] [--timeout SEC] [--repeat R] "
			"[--quiet-wait SEC] [--only samepage|kernel] [--summary FILE]\n");
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
		if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o->timeout_s = atoi(argv[++i]);
		else
			usage();
	}
	if (o->mib < 1 || o->mib > (1u << 20) || o->timeout_s < 1 || o->repeat < 1 ||
	    o->repeat > 16 || o->quiet_s < 0)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 128, .timeout_s = 60, .repeat = 1, .quiet_s = 30, .only = -1 };
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
			fprintf(stderr, "run %d %-10s: merged %.0f%% in %.2f s; fork child %.2f s, "
					"parent %.0f stores/s, %.0f pages wrong\n", i + 1,
				mode_name[m], r->merged_pct, r->merge_s, r->child_s,
				r->stores_per_s, r->bad);
		}
	report(&o, runs, o.repeat, have);
	return 0;
}
