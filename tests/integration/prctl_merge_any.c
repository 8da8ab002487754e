/* SPDX-License-Identifier: MIT */
/*
 * prctl(PR_SET_MEMORY_MERGE) / PR_GET_MEMORY_MERGE with kernel semantics,
 * served by samepage's interposed prctl():
 *  - SET 1 returns 0 and GET then returns 1; nonzero unused arguments fail
 *    with EINVAL (and change nothing);
 *  - memory that appears after the prctl merges with another process's
 *    identical memory: an mmap, a large malloc, the contents of a thread's
 *    stack (page frames shared with the partner's);
 *  - merge-any does not break the kernel's VMA merging: 200 adjacent
 *    one-page anonymous mappings, which the kernel coalesces into one VMA,
 *    are still one VMA after merge-any passes over them (also when some of
 *    their pages are zero pages samepage drops), and the process's VMA count
 *    stays within a few of what it was without merge-any;
 *  - SET 0 returns 0, unmerges everything at once (frames of our own, no
 *    pool VMA left) and GET returns 0; nothing merges afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif

#define MMAP_PAGES 256u
#define MALLOC_PAGES 512u
#define STACK_PAGES 32u
enum { R_MMAP, R_MALLOC, R_STACK, NR };
static const uint32_t rpages[NR] = { MMAP_PAGES, MALLOC_PAGES, STACK_PAGES };
static const char *const rname[NR] = { "mmap", "malloc", "thread stack" };
#define SEED(r) (200u + (r))


static int fill_ok(const void *p, size_t len, uint64_t seed)
{
	unsigned char *exp = malloc(len);
	int ok;

	tu_fill(exp, len, seed);
	ok = !memcmp(p, exp, len);
	free(exp);
	return ok;
}

/* ---- the partner: plain MADV_MERGEABLE memory with the same content ---- */

static int partner(int rd, int wr, void *arg)
{
	uintptr_t a[NR];
	char cmd;
	(void)arg;

	for (int r = 0; r < NR; r++) {
		unsigned char *p = tu_map((size_t)rpages[r] * PAGE);
		tu_fill(p, (size_t)rpages[r] * PAGE, SEED(r));
		if (madvise(p, (size_t)rpages[r] * PAGE, MADV_MERGEABLE))
			return 1;
		a[r] = (uintptr_t)p;
	}
	tu_send(wr, a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		char ok = 1;
		for (int r = 0; r < NR; r++)
			ok &= fill_ok((void *)a[r], (size_t)rpages[r] * PAGE, SEED(r));
		if (cmd == 'q')
			return ok ? 0 : 1;
		tu_send(wr, &ok, 1);
	}
	return 1;
}

/* ---- the merge-any process ---- */

static int tpipe[2];
static uintptr_t stack_area;

static void *stack_thread(void *arg)
{
	unsigned char buf[(STACK_PAGES + 1) * PAGE];
	unsigned char *p = (unsigned char *)(((uintptr_t)buf + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
	char c;
	(void)arg;

	tu_fill(p, (size_t)STACK_PAGES * PAGE, SEED(R_STACK));
	__atomic_store_n(&stack_area, (uintptr_t)p, __ATOMIC_RELEASE);
	if (read(tpipe[0], &c, 1) != 1)
		return (void *)1;
	return (void *)(intptr_t)!fill_ok(p, (size_t)STACK_PAGES * PAGE, SEED(R_STACK));
}

static int einval(long r)
{
	return r == -1 && errno == EINVAL;
}

static int any_proc(int rd, int wr, void *arg)
{
	uintptr_t a[NR];
	pthread_t th;
	void *tret;
	char cmd;
	(void)arg;

	TU_CHECK_RETURN(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 0, "PR_GET before SET: want 0");
	/* Unused arguments must be 0 (kernel/sys.c); a failed call changes nothing. */
	errno = 0;
	TU_CHECK_RETURN(einval(prctl(PR_SET_MEMORY_MERGE, 1, 1, 0, 0)), "SET arg3!=0: want EINVAL");
	TU_CHECK_RETURN(einval(prctl(PR_SET_MEMORY_MERGE, 1, 0, 1, 0)), "SET arg4!=0: want EINVAL");
	TU_CHECK_RETURN(einval(prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 1)), "SET arg5!=0: want EINVAL");
	TU_CHECK_RETURN(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 0,
			"a failed SET turned merging on");
	TU_CHECK_RETURN(prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0, "PR_SET_MEMORY_MERGE 1: %s",
			strerror(errno));
	TU_CHECK_RETURN(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1, "PR_GET after SET 1: want 1");
	TU_CHECK_RETURN(einval(prctl(PR_GET_MEMORY_MERGE, 1, 0, 0, 0)), "GET arg2!=0: want EINVAL");
	TU_CHECK_RETURN(einval(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 1)), "GET arg5!=0: want EINVAL");
	TU_CHECK_RETURN(einval(prctl(PR_SET_MEMORY_MERGE, 0, 0, 1, 0)),
			"SET 0 arg4!=0: want EINVAL");
	TU_CHECK_RETURN(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1,
			"a failed SET 0 turned merging off");
	TU_CHECK_RETURN(samepage_get_merge_any() == 1,
			"samepage_get_merge_any disagrees with prctl");

	/* Memory that appears after the prctl. */
	{
		unsigned char *p = mmap(NULL, (size_t)MMAP_PAGES * PAGE, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		TU_CHECK_RETURN(p != MAP_FAILED, "mmap");
		madvise(p, (size_t)MMAP_PAGES * PAGE, MADV_NOHUGEPAGE);
		tu_fill(p, (size_t)MMAP_PAGES * PAGE, SEED(R_MMAP));
		a[R_MMAP] = (uintptr_t)p;
	}
	{
		unsigned char *m = malloc((size_t)(MALLOC_PAGES + 1) * PAGE);
		TU_CHECK_RETURN(m, "malloc");
		unsigned char *p = (unsigned char *)(((uintptr_t)m + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
		tu_fill(p, (size_t)MALLOC_PAGES * PAGE, SEED(R_MALLOC));
		a[R_MALLOC] = (uintptr_t)p;
	}
	TU_CHECK_RETURN(pipe(tpipe) == 0, "pipe");
	TU_CHECK_RETURN(pthread_create(&th, NULL, stack_thread, NULL) == 0, "pthread_create");
	while (!__atomic_load_n(&stack_area, __ATOMIC_ACQUIRE))
		usleep(1000);
	a[R_STACK] = stack_area;
	tu_send(wr, a, sizeof(a));

	while (tu_recv(rd, &cmd, 1) == 0) {
		char ok = 1;
		switch (cmd) {
		case 'c':
			for (int r = 0; r < NR; r++)
				ok &= fill_ok((void *)a[r], (size_t)rpages[r] * PAGE, SEED(r));
			tu_send(wr, &ok, 1);
			break;
		case 'u': /* merge-any off: everything unmerged when it returns */
			ok = prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0) == 0;
			if (!ok)
				fprintf(stderr, "PR_SET_MEMORY_MERGE 0: %s\n", strerror(errno));
			if (prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) != 0) {
				fprintf(stderr, "PR_GET after SET 0: want 0\n");
				ok = 0;
			}
			if (tu_pool_vmas(getpid(), 0, UINTPTR_MAX)) {
				fprintf(stderr, "%d pool VMAs left after SET 0\n", tu_pool_vmas(getpid(), 0, UINTPTR_MAX));
				ok = 0;
			}
			tu_send(wr, &ok, 1);
			break;
		case 'q':
			if (write(tpipe[1], "x", 1) != 1 || pthread_join(th, &tret) || tret)
				TU_FAIL_RETURN("thread stack content changed");
			for (int r = 0; r < NR; r++)
				if (r != R_STACK)
					TU_CHECK_RETURN(fill_ok((void *)a[r],
								(size_t)rpages[r] * PAGE, SEED(r)),
							"%s content changed", rname[r]);
			return 0;
		default:
			return 1;
		}
	}
	return 1;
}

/* ---- VMA merging under merge-any ---- */

static int maps_lines(void)
{
	char line[512];
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	while (f && fgets(line, sizeof(line), f))
		n++;
	if (f)
		fclose(f);
	return n;
}

/* Number of VMAs overlapping [s, e). */
static int vmas_over(uintptr_t s, uintptr_t e)
{
	char line[512];
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	while (f && fgets(line, sizeof(line), f)) {
		unsigned long vs, ve;
		if (sscanf(line, "%lx-%lx", &vs, &ve) == 2 && vs < e && ve > s)
			n++;
	}
	if (f)
		fclose(f);
	return n;
}

#define ADJ 200u

/* 200 one-page mappings side by side; every zero_every-th page all zeros
 * (0: none). The kernel coalesces them into one VMA. */
static unsigned char *adjacent(uint64_t seed, uint32_t zero_every)
{
	unsigned char *base = mmap(NULL, (size_t)ADJ * PAGE, PROT_NONE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (base == MAP_FAILED || munmap(base, (size_t)ADJ * PAGE))
		TU_FAIL("reserve");
	for (uint32_t i = 0; i < ADJ; i++) {
		void *p = mmap(base + (size_t)i * PAGE, PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (p != base + (size_t)i * PAGE)
			TU_FAIL("mmap page %u: %s", i, strerror(errno));
		if (zero_every && i % zero_every == 0)
			memset(p, 0, PAGE);
		else
			tu_fill(p, PAGE, seed * 1000 + i);
	}
	return base;
}

static int adjacent_ok(const unsigned char *base, uint64_t seed, uint32_t zero_every)
{
	unsigned char page[PAGE], z[PAGE] = { 0 };

	for (uint32_t i = 0; i < ADJ; i++) {
		if (zero_every && i % zero_every == 0) {
			if (memcmp(base + (size_t)i * PAGE, z, PAGE))
				return 0;
			continue;
		}
		tu_fill(page, PAGE, seed * 1000 + i);
		if (memcmp(base + (size_t)i * PAGE, page, PAGE))
			return 0;
	}
	return 1;
}

static int vma_proc(int rd, int wr, void *arg)
{
	struct samepage_stat st;
	unsigned char *u, *z;
	int before, after, n;
	(void)rd, (void)wr, (void)arg;

	/* The library's own context first, so that it is in both counts. */
	TU_CHECK_RETURN(samepage_stat(&st) == 0, "samepage_stat");
	u = adjacent(31, 0);
	z = adjacent(32, 8);
	n = vmas_over((uintptr_t)u, (uintptr_t)u + ADJ * PAGE);
	TU_CHECK_RETURN(n == 1, "kernel did not coalesce the unique mappings: %d VMAs", n);
	n = vmas_over((uintptr_t)z, (uintptr_t)z + ADJ * PAGE);
	TU_CHECK_RETURN(n == 1, "kernel did not coalesce the mappings with zero pages: %d VMAs", n);
	before = maps_lines();

	TU_CHECK_RETURN(prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0, "PR_SET_MEMORY_MERGE 1");
	for (int i = 0; i < 3; i++)
		TU_CHECK_RETURN(samepage_scan_now() == 0, "samepage_scan_now");
	TU_CHECK_RETURN(samepage_stat(&st) == 0, "samepage_stat");
	after = maps_lines();
	n = vmas_over((uintptr_t)u, (uintptr_t)u + ADJ * PAGE);
	TU_CHECK_RETURN(n == 1, "merge-any split the coalesced unique mappings into %d VMAs", n);
	n = vmas_over((uintptr_t)z, (uintptr_t)z + ADJ * PAGE);
	TU_CHECK_RETURN(n == 1,
			"merge-any left the mappings with zero pages in %d VMAs "
			"(ksm_zero_pages %llu)",
			n, (unsigned long long)st.ksm_zero_pages_process);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	/* (A sanitizer runtime's own memory does hold identical pages.) */
	TU_CHECK_RETURN(st.ksm_merging_pages == 0,
			"%llu pages merged with nothing identical around",
			(unsigned long long)st.ksm_merging_pages);
#endif
	fprintf(stderr, "VMAs: %d without merge-any, %d with it (%llu rmap items, %llu zero pages)\n",
	       before, after, (unsigned long long)st.ksm_rmap_items,
	       (unsigned long long)st.ksm_zero_pages_process);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	/* (Under a sanitizer its runtime's memory has runs to merge, at a VMA each.) */
	TU_CHECK_RETURN(after <= before + 4, "VMA count grew from %d to %d under merge-any", before,
			after);
#endif
	/* Now add 200 more adjacent mappings with merge-any on: still one VMA. */
	unsigned char *v = adjacent(33, 0);
	for (int i = 0; i < 2; i++)
		TU_CHECK_RETURN(samepage_scan_now() == 0, "samepage_scan_now");
	n = vmas_over((uintptr_t)v, (uintptr_t)v + ADJ * PAGE);
	TU_CHECK_RETURN(n == 1, "mappings made under merge-any: %d VMAs, want 1", n);
	TU_CHECK_RETURN(adjacent_ok(u, 31, 0) && adjacent_ok(z, 32, 8) && adjacent_ok(v, 33, 0),
			"content changed");
	TU_CHECK_RETURN(prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0) == 0, "PR_SET_MEMORY_MERGE 0");
	return 0;
}

/* ---- the test ---- */

static struct tu_child pa, pb;
static uintptr_t aa[NR], ba[NR];

static uint32_t shared(int r)
{
	uint32_t n = 0;

	for (uint32_t k = 0; k < rpages[r]; k++) {
		uint64_t f = tu_pfn(pa.pid, aa[r] + (uintptr_t)k * PAGE);
		n += f && f == tu_pfn(pb.pid, ba[r] + (uintptr_t)k * PAGE);
	}
	return n;
}

static int all_shared(void *arg)
{
	(void)arg;
	for (int r = 0; r < NR; r++)
		if (shared(r) != rpages[r])
			return 0;
	return 1;
}

static int none_shared(void)
{
	for (int r = 0; r < NR; r++)
		if (shared(r))
			return 0;
	return 1;
}

static char ask(struct tu_child *c, char cmd)
{
	char ok = 0;

	TU_CHECK(tu_send(c->wr, &cmd, 1) == 0 && tu_recv(c->rd, &ok, 1) == 0,
		 "child %d died on '%c'", (int)c->pid, cmd);
	return ok;
}

int main(void)
{
	struct tu_child vc;
	int st;

	tu_require_merging();
	tu_private_daemon();
	tu_spawn(&pb, partner, NULL);
	TU_CHECK(tu_recv(pb.rd, ba, sizeof(ba)) == 0, "partner died");
	tu_spawn(&pa, any_proc, NULL);
	TU_CHECK(tu_recv(pa.rd, aa, sizeof(aa)) == 0, "merge-any process failed");

	if (!tu_wait(all_shared, NULL, 30)) {
		for (int r = 0; r < NR; r++)
			fprintf(stderr, "%s: %u of %u pages merged\n", rname[r], shared(r), rpages[r]);
		TU_FAIL("memory mapped after PR_SET_MEMORY_MERGE not merged within 30 s");
	}
	TU_CHECK(ask(&pa, 'c') && ask(&pb, 'c'), "content changed by merging");

	/* PR_SET_MEMORY_MERGE 0: unmerged by the time it returns. */
	TU_CHECK(ask(&pa, 'u'), "PR_SET_MEMORY_MERGE 0 failed (see above)");
	if (!none_shared()) {
		for (int r = 0; r < NR; r++)
			fprintf(stderr, "%s: %u of %u pages still shared\n", rname[r], shared(r),
				rpages[r]);
		TU_FAIL("pages still merged right after PR_SET_MEMORY_MERGE 0");
	}
	TU_CHECK(ask(&pa, 'c') && ask(&pb, 'c'), "content changed by unmerging");
	sleep(1);
	TU_CHECK(none_shared(), "merged again after PR_SET_MEMORY_MERGE 0");
	tu_send(pa.wr, "q", 1);
	tu_send(pb.wr, "q", 1);
	TU_CHECK((st = tu_reap(&pa)) == 0, "merge-any process exit %d", st);
	TU_CHECK((st = tu_reap(&pb)) == 0, "partner exit %d", st);

	tu_spawn(&vc, vma_proc, NULL);
	TU_CHECK((st = tu_reap(&vc)) == 0, "VMA merging under merge-any (exit %d)", st);
	printf("prctl_merge_any: ok\n");
	return 0;
}
