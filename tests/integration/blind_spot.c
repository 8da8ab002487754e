/* SPDX-License-Identifier: MIT */
/*
 * No blind spot: stable duplicates all merge even when half of each
 * process's memory is rewritten all the time.
 *
 * NPROC processes each map one mergeable region of 2 * N pages, stable and
 * volatile pages interleaved: page 2k is stable (the same content in every
 * process, distinct for every k), page 2k+1 is volatile (a writer thread of
 * each process rewrites every volatile page with fresh random bytes of its
 * own, a full sweep every SWEEP_MS or as fast as it can). The processes
 * start (writer thread, then madvise(MADV_MERGEABLE)) one after the other,
 * each at least STAGGER_MS and STAGGER_SCANS full scans after the one
 * before: their scanner passes are out of phase, and the earlier processes
 * have looked at their stable pages in several scans without a partner
 * when the next copy appears. Then, from page frames (pagemap): within
 * MERGE_S every stable page of every process maps the same frame as the
 * same page of process 0, and that frame is a pool page (pagemap "file"
 * bit: samepage merged it, not kernel KSM, which this test leaves off); it
 * stays so for HOLD_S more, and at least HOLD_SWEEPS more sweeps of every
 * writer; no volatile page ever maps a pool page; every byte of the stable
 * pages is intact in every process, and every volatile page holds exactly
 * what its writer last wrote there (merging freezes spans that cover both).
 * The premise is checked too: samepage's scanners saw the volatile pages
 * as volatile (pages_volatile).
 *
 * Why kernel KSM with smart_scan=1 (the default since 6.7) fails this:
 * mm/ksm.c's should_skip_rmap_item() ages every rmap_item that is not a KSM
 * page by one per full scan and, from age 3 on, skips it for 1, 2, 4 and
 * then 8 scans between looks (skip_age()); a skipped item is also removed
 * from the unstable tree, which is emptied every full scan. Two equal pages
 * therefore merge only if both are looked at, unchanged, in one full scan.
 * The age never resets while a page stays unmerged, so a copy that appears
 * some scans after its twin (which is being skipped by then) ends up in the
 * same 1-look-in-9-scans schedule with another phase, and the two never
 * meet: such pairs stay unmerged indefinitely, while the volatile half
 * keeps every scan busy and never merges either. samepage skips quiet
 * unique pages too (its smart_scan, on by default), but by the daemon's
 * generation, not by a page's own count: from its fourth offer on a page
 * is read only in generations divisible by 2, 4, then 8, the same
 * generations in every process; and a generation (the life of index.c's
 * unstable index) ends only once every scanning process completed a pass
 * that began inside it, so two quiet equal pages are always offered within
 * one generation (at the latest one divisible by 8).
 *
 * It can fail: a stable page left unmerged keeps distinct frames and the
 * MERGE_S wait fails with the count, the first unmerged pages' frames and
 * the daemon's counters. Tried by giving process 2 another content for 5
 * of its stable pages: "not merged 60 s after the last process started:
 * 4091 of 4096 stable pages share one pool frame in all 3 processes".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define N 4096u             /* stable pages per process, and as many volatile */
#define NPAGES (2 * N)      /* 32 MiB per process */
#define NPROC 3
#define STAGGER_MS 300      /* between the starts of consecutive processes, */
#define STAGGER_SCANS 4     /* and at least this many full scans in between */
#define SWEEP_MS 20         /* a full sweep of the volatile pages this often */
#define HOLD_S 2.0          /* stays merged this long, writers going... */
#define HOLD_SWEEPS 5       /* ...and while each writer sweeps this often */
#define STABLE_SEED 0xb11d5000ull

/* Time limits, generous: merging 4096 scattered pages costs a VMA each and
 * takes a process's scanner 1-8 s on a loaded 2-CPU machine. They only
 * bound how long a failure takes to show; tests/run.sh kills at 300 s. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MERGE_S 150.0       /* sanitizers: more time, same assertions */
#else
#define MERGE_S 60.0
#endif
#define STAGGER_MAX_S 30.0  /* for STAGGER_SCANS full scans */
#define HOLD_MAX_S 30.0     /* for HOLD_SWEEPS sweeps */

/* ---- the child processes ---- */

static unsigned char *mem;
static uint64_t *last_seed; /* per volatile page; the writer's until joined */
static int stop;            /* __atomic */
static uint64_t sweeps;     /* the writer's */
static uint64_t *shared_sweeps; /* MAP_SHARED, one per process: the test reads them */
static int my_idx;
static double max_gap;      /* longest time between two sweep starts; writer's */

static unsigned char *stable_page(size_t k)
{
	return mem + 2 * k * PAGE;
}

static unsigned char *volatile_page(size_t k)
{
	return mem + (2 * k + 1) * PAGE;
}

static void nap(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (time_t)s) * 1e9) };

	nanosleep(&ts, NULL);
}

struct writer_arg {
	uint64_t rng;
};

/* Every volatile page gets fresh random content once per sweep, a sweep
 * every SWEEP_MS (at once when behind: frozen pages may have held it up). */
static void *writer(void *arg)
{
	struct writer_arg *w = arg;
	double prev = 0, next = tu_now();

	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		double t = tu_now();
		if (prev && t - prev > max_gap)
			max_gap = t - prev;
		prev = t;
		for (size_t k = 0; k < N; k++) {
			uint64_t s = tu_xorshift(&w->rng);
			tu_fill(volatile_page(k), PAGE, s);
			last_seed[k] = s;
		}
		sweeps++;
		__atomic_store_n(&shared_sweeps[my_idx], sweeps, __ATOMIC_RELAXED);
		next += SWEEP_MS / 1000.0;
		t = tu_now();
		if (next > t)
			nap(next - t);
		else
			next = t;
	}
	return NULL;
}

struct report {
	uint64_t sweeps, bad_stable, first_bad_stable, bad_volatile, first_bad_volatile;
	double max_gap;
	int ok;
};

/* Stable pages that differ from their content: count, first in *first. */
static uint64_t check_stable(uint64_t *first)
{
	static unsigned char want[PAGE];
	uint64_t bad = 0;

	*first = UINT64_MAX;
	for (size_t k = 0; k < N; k++) {
		tu_fill(want, PAGE, STABLE_SEED + k);
		if (memcmp(stable_page(k), want, PAGE)) {
			if (!bad++)
				*first = k;
		}
	}
	return bad;
}

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	struct writer_arg w = { .rng = 0x9e3779b97f4a7c15ull * (uint64_t)(idx + 1) };
	struct report rep = { 0 };
	static unsigned char want[PAGE];
	pthread_t th;
	uintptr_t a;
	char cmd;

	my_idx = idx;
	mem = tu_map((size_t)NPAGES * PAGE);
	a = (uintptr_t)mem;
	last_seed = calloc(N, sizeof(*last_seed));
	TU_CHECK(last_seed, "calloc");
	for (size_t k = 0; k < N; k++) {
		tu_fill(stable_page(k), PAGE, STABLE_SEED + k);
		last_seed[k] = tu_xorshift(&w.rng);
		tu_fill(volatile_page(k), PAGE, last_seed[k]);
	}
	tu_send(wr, &a, sizeof(a));
	TU_CHECK(tu_recv(rd, &cmd, 1) == 0, "parent gone"); /* start */
	/* Volatile from the scanner's first look on. */
	TU_CHECK(pthread_create(&th, NULL, writer, &w) == 0, "pthread_create");
	TU_CHECK(madvise(mem, (size_t)NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, "m", 1);

	TU_CHECK(tu_recv(rd, &cmd, 1) == 0, "parent gone"); /* check, writer still on */
	rep.bad_stable = check_stable(&rep.first_bad_stable);
	rep.ok = 1;
	tu_send(wr, &rep, sizeof(rep));

	TU_CHECK(tu_recv(rd, &cmd, 1) == 0, "parent gone"); /* stop */
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	rep.sweeps = sweeps;
	rep.max_gap = max_gap;
	rep.first_bad_volatile = UINT64_MAX;
	for (size_t k = 0; k < N; k++) {
		tu_fill(want, PAGE, last_seed[k]);
		if (memcmp(volatile_page(k), want, PAGE) && !rep.bad_volatile++)
			rep.first_bad_volatile = k;
	}
	rep.bad_stable = check_stable(&rep.first_bad_stable);
	tu_send(wr, &rep, sizeof(rep));
	tu_recv(rd, &cmd, 1);
	return 0;
}

/* ---- the test process: page frames ---- */

static int pmfd[NPROC];
static uintptr_t addr[NPROC];
static uint64_t pm[NPROC][NPAGES];

#define PM_PFN(e) ((e) & ((1ull << 55) - 1))
#define PM_PRESENT(e) (((e) >> 63) & 1)
#define PM_FILE(e) (((e) >> 61) & 1)

static void read_pagemaps(void)
{
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(pread(pmfd[i], pm[i], sizeof(pm[i]), (off_t)(addr[i] / PAGE * 8)) ==
				 (ssize_t)sizeof(pm[i]),
			 "pread pagemap of process %d", i);
}

/* Stable page k merged: present in every process, one pool frame for all. */
static int stable_merged(size_t k)
{
	uint64_t e0 = pm[0][2 * k];

	if (!PM_PRESENT(e0) || !PM_FILE(e0))
		return 0;
	for (int i = 1; i < NPROC; i++) {
		uint64_t e = pm[i][2 * k];
		if (!PM_PRESENT(e) || !PM_FILE(e) || PM_PFN(e) != PM_PFN(e0))
			return 0;
	}
	return 1;
}

static size_t count_merged(size_t *first_unmerged)
{
	size_t n = 0;

	*first_unmerged = SIZE_MAX;
	for (size_t k = 0; k < N; k++) {
		if (stable_merged(k))
			n++;
		else if (*first_unmerged == SIZE_MAX)
			*first_unmerged = k;
	}
	return n;
}

/* Volatile pages that map a pool page (they never may: nothing equals them). */
static size_t volatile_pooled(void)
{
	size_t n = 0;

	for (int i = 0; i < NPROC; i++)
		for (size_t k = 0; k < N; k++)
			n += PM_PRESENT(pm[i][2 * k + 1]) && PM_FILE(pm[i][2 * k + 1]);
	return n;
}

/* What the frames say about the unmerged stable pages, for the failure. */
static void explain_unmerged(void)
{
	int shown = 0;

	fprintf(stderr, "unmerged stable pages (page: frame/pool-bit per process):\n");
	for (size_t k = 0; k < N && shown < 8; k++) {
		if (stable_merged(k))
			continue;
		fprintf(stderr, "  %zu:", k);
		for (int i = 0; i < NPROC; i++) {
			uint64_t e = pm[i][2 * k];
			fprintf(stderr, " %#llx/%d", PM_PRESENT(e) ? (unsigned long long)PM_PFN(e) : 0ull,
				(int)PM_FILE(e));
		}
		fprintf(stderr, "\n");
		shown++;
	}
	fprintf(stderr, "daemon: pages_shared %lld pages_sharing %lld pages_unshared %lld "
		"pages_volatile %lld full_scans %lld vma_limited %lld\n",
		tu_status("pages_shared"), tu_status("pages_sharing"), tu_status("pages_unshared"),
		tu_status("pages_volatile"), tu_status("full_scans"), tu_status("vma_limited"));
}

int main(void)
{
	struct tu_child c[NPROC];
	struct report rep[NPROC];
	double t_first, t_last, t, t_half = 0, t_all = 0, t_start[NPROC];
	long long scans0, scans1, vol, vol_max = 0;
	size_t merged = 0, first_unmerged, pooled;
	char path[64], cmd;
	int moved = 0, samples = 0;
	static uint64_t frame0[N];
	uint64_t sweeps0[NPROC], slowest;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(280); /* a backstop under run.sh's 300 s: every wait below is bounded */
	shared_sweeps = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(shared_sweeps != MAP_FAILED, "mmap: %m");
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		TU_CHECK(tu_recv(c[i].rd, &addr[i], sizeof(addr[i])) == 0, "process %d died", i);
		snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)c[i].pid);
		pmfd[i] = open(path, O_RDONLY | O_CLOEXEC);
		TU_CHECK(pmfd[i] >= 0, "open %s", path);
	}
	read_pagemaps();
	TU_CHECK(count_merged(&first_unmerged) == 0, "stable pages shared before merging");

	/* Start them out of phase, and each after the ones before it have
	 * looked at their stable pages in STAGGER_SCANS full scans without a
	 * partner (kernel KSM would be skipping them by then). */
	t_first = tu_now();
	for (int i = 0; i < NPROC; i++) {
		if (i) {
			double t_prev = tu_now();
			nap(STAGGER_MS / 1000.0);
			while (tu_status("full_scans") < scans0 + STAGGER_SCANS) {
				TU_CHECK(tu_now() < t_prev + STAGGER_MAX_S,
					 "full_scans stuck at %lld for %.0f s", tu_status("full_scans"),
					 STAGGER_MAX_S);
				usleep(20000);
			}
			printf("process %d starts %.2f s after process %d, %lld full scans later\n", i,
			       tu_now() - t_prev, i - 1, tu_status("full_scans") - scans0);
		}
		t_start[i] = tu_now();
		tu_send(c[i].wr, "g", 1);
		TU_CHECK(tu_recv(c[i].rd, &cmd, 1) == 0, "process %d died starting", i);
		/* The first scanner starts the daemon. */
		while ((scans0 = tu_status("full_scans")) < 0) {
			TU_CHECK(tu_now() < t_first + STAGGER_MAX_S, "no daemon %.0f s after process "
				 "0's madvise", STAGGER_MAX_S);
			usleep(20000);
		}
	}
	t_last = tu_now();

	/* Every stable page of every process merges, writers going. */
	while ((t = tu_now()) < t_last + MERGE_S) {
		read_pagemaps();
		merged = count_merged(&first_unmerged);
		if (!t_half && merged >= N / 2)
			t_half = t;
		if (merged == N) {
			t_all = t;
			break;
		}
		usleep(50000);
	}
	if (merged != N) {
		explain_unmerged();
		TU_FAIL("not merged %.0f s after the last process started: %zu of %u stable pages "
			"share one pool frame in all %d processes (first unmerged: page %zu)",
			MERGE_S, merged, N, NPROC, first_unmerged);
	}
	scans1 = tu_status("full_scans");
	pooled = volatile_pooled();
	TU_CHECK(pooled == 0, "%zu volatile pages map pool pages", pooled);
	printf("all %u stable pages x %d processes merged %.2f s after the last process started "
	       "(%.2f s after the first; half of them after %.2f s); %lld full scans meanwhile\n",
	       N, NPROC, t_all - t_last, t_all - t_first, t_half - t_last, scans1 - scans0);

	/* It stays so while the writers go on: HOLD_S and HOLD_SWEEPS sweeps
	 * of every writer, whichever takes longer. */
	for (size_t k = 0; k < N; k++)
		frame0[k] = PM_PFN(pm[0][2 * k]);
	for (int i = 0; i < NPROC; i++)
		sweeps0[i] = __atomic_load_n(&shared_sweeps[i], __ATOMIC_RELAXED);
	t = tu_now();
	for (;;) {
		usleep(50000);
		read_pagemaps();
		merged = count_merged(&first_unmerged);
		if (merged != N)
			explain_unmerged();
		TU_CHECK(merged == N, "%.2f s after all merged, only %zu of %u stable pages are "
			 "(first unmerged: page %zu)", tu_now() - t_all, merged, N, first_unmerged);
		pooled = volatile_pooled();
		TU_CHECK(pooled == 0, "%zu volatile pages map pool pages", pooled);
		for (size_t k = 0; k < N; k++)
			if (PM_PFN(pm[0][2 * k]) != frame0[k]) {
				frame0[k] = PM_PFN(pm[0][2 * k]);
				moved++;
			}
		if (samples++ % 5 == 0) { /* the CLI is slow under load */
			vol = tu_status("pages_volatile");
			if (vol > vol_max)
				vol_max = vol;
		}
		slowest = UINT64_MAX;
		for (int i = 0; i < NPROC; i++) {
			uint64_t d = __atomic_load_n(&shared_sweeps[i], __ATOMIC_RELAXED) - sweeps0[i];
			if (d < slowest)
				slowest = d;
		}
		if (tu_now() >= t + HOLD_S && slowest >= HOLD_SWEEPS)
			break;
		/* The premise, not samepage's merging: the writers kept writing. */
		TU_CHECK(tu_now() < t + HOLD_MAX_S, "a writer made only %llu sweeps in %.0f s",
			 (unsigned long long)slowest, HOLD_MAX_S);
	}
	printf("still merged after %.1f s more of writing, at least %llu sweeps by each writer "
	       "(%d samples; stable pages that moved to another pool frame: %d); pages_volatile up to %lld of %u volatile pages\n",
	       tu_now() - t, (unsigned long long)slowest, samples, moved, vol_max,
	       NPROC * N);
	/* The premise: samepage saw the volatile half as volatile. */
	TU_CHECK(vol_max >= N, "pages_volatile at most %lld: the volatile pages did not look "
		 "volatile", vol_max);

	/* Contents, writers still on, then once they stopped. */
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "c", 1);
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(tu_recv(c[i].rd, &rep[i], sizeof(rep[i])) == 0 && rep[i].ok,
			 "process %d died", i);
		TU_CHECK(rep[i].bad_stable == 0, "process %d: %llu stable pages changed, first %llu",
			 i, (unsigned long long)rep[i].bad_stable,
			 (unsigned long long)rep[i].first_bad_stable);
	}
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "x", 1);
	for (int i = 0; i < NPROC; i++) {
		double ran = tu_now() - t_start[i];
		TU_CHECK(tu_recv(c[i].rd, &rep[i], sizeof(rep[i])) == 0, "process %d died", i);
		printf("process %d: %llu sweeps of its %u volatile pages in %.1f s (one per %.0f ms "
		       "on average, %d ms asked), longest gap %.0f ms\n", i,
		       (unsigned long long)rep[i].sweeps, N, ran,
		       rep[i].sweeps ? ran * 1000 / rep[i].sweeps : 0, SWEEP_MS,
		       rep[i].max_gap * 1000);
		TU_CHECK(rep[i].bad_stable == 0, "process %d: %llu stable pages changed, first %llu",
			 i, (unsigned long long)rep[i].bad_stable,
			 (unsigned long long)rep[i].first_bad_stable);
		TU_CHECK(rep[i].bad_volatile == 0,
			 "process %d: LOST WRITES: %llu volatile pages differ from their last write, "
			 "first %llu", i, (unsigned long long)rep[i].bad_volatile,
			 (unsigned long long)rep[i].first_bad_volatile);
	}
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "process %d exit", i);
		close(pmfd[i]);
	}
	printf("stable pages intact in every process; every volatile page holds its last write\n");
	return 0;
}
