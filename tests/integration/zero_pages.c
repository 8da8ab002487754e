/* SPDX-License-Identifier: MIT */
/*
 * use_zero_pages, checked against page frames.
 *
 * Phase 1 (use_zero_pages=1, the default): 8 MiB of zeros and 8 MiB of
 * random bytes, MADV_MERGEABLE. The zero pages end up mapping the kernel's
 * zero page — all of them one frame, the frame a fresh anonymous page shows
 * after a read — and are counted in ksm_zero_pages (global and the
 * process's), with no pool page for them. Writing one gives it a private
 * frame, and the counter drops on the next scan. MADV_UNMERGEABLE gives every
 * page a frame of its own (none is the zero page) and ksm_zero_pages
 * returns to 0.
 *
 * Phase 2 (use_zero_pages=0, max_page_sharing large): the zero pages merge
 * into the pool instead, as one run of equal pages: an extent of 64 pool
 * pages mapped over and over (DESIGN.md, "Runs of one content"; the
 * kernel would use one page, at a VMA a page here). Phase 3
 * (use_zero_pages=0, max_page_sharing 16): they fill two such extents,
 * 2048/16 = 128 pool pages, none mapped more than 16 times (kernel
 * semantics: stable_node_chains 1, stable_node_dups 128).
 *
 * Each phase runs in a fresh child process, one after the other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define ZPAGES 2048u            /* 8 MiB of zeros */
#define RPAGES 2048u            /* 8 MiB of random bytes */
#define NPAGES (ZPAGES + RPAGES)
#define LEN ((size_t)NPAGES * PAGE)
#define WPAGE 5u                /* the zero page phase 1 writes */
#define RUN_EXTENT 64u          /* pool pages a long run of equal pages maps (lookup.c) */

/* Pagemap frames of n pages at a (0 when not present). */
static void pfns(uintptr_t a, size_t n, uint64_t *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = tu_pfn(getpid(), a + i * PAGE);
}

/* Distinct nonzero values; *maxrep: the largest number of repeats of one. */
static size_t distinct(const uint64_t *v, size_t n, size_t *maxrep)
{
	uint64_t *s = malloc(n * 8);
	size_t d = 0, run = 0;

	memcpy(s, v, n * 8);
	qsort(s, n, 8, tu_cmp_u64);
	*maxrep = 0;
	for (size_t i = 0; i < n; i++) {
		if (!s[i])
			continue;
		if (i == 0 || s[i] != s[i - 1]) {
			d++;
			run = 0;
		}
		if (++run > *maxrep)
			*maxrep = run;
	}
	free(s);
	return d;
}

/* The frame of the kernel's zero page, as fresh read-only-touched anonymous
 * pages show it; 0 when this kernel gives such reads pages of their own
 * (seen on VMs booted with pvm_no_zero_page=1). */
static uint64_t zero_pfn(void)
{
	volatile unsigned char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	volatile unsigned char *q = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t f, g, h;

	if (p == MAP_FAILED || q == MAP_FAILED)
		TU_FAIL("mmap");
	(void)p[0];
	(void)p[PAGE];
	(void)q[0];
	f = tu_pfn(getpid(), (uintptr_t)p);
	g = tu_pfn(getpid(), (uintptr_t)p + PAGE);
	h = tu_pfn(getpid(), (uintptr_t)q);
	munmap((void *)p, 2 * PAGE);
	munmap((void *)q, PAGE);
	return f && f == g && f == h ? f : 0;
}

struct want { uint64_t zero_proc, zero_global, merging; };

static int reached(void *arg)
{
	struct want *w = arg;
	struct samepage_stat st;

	samepage_scan_now();
	if (samepage_stat(&st))
		return 0;
	return st.ksm_zero_pages_process == w->zero_proc && st.ksm_zero_pages == w->zero_global &&
	       st.ksm_merging_pages == w->merging;
}

static int pool_empty(void *arg)
{
	struct samepage_stat st;

	(void)arg;
	return samepage_stat(&st) == 0 && st.pool_pages == 0 && st.pages_shared == 0 &&
	       st.ksm_zero_pages == 0;
}

static unsigned char *setup(unsigned char **ref, uint64_t seed)
{
	unsigned char *p = tu_map(LEN);

	memset(p, 0, (size_t)ZPAGES * PAGE); /* present anonymous pages, all zero */
	tu_fill(p + (size_t)ZPAGES * PAGE, (size_t)RPAGES * PAGE, seed);
	*ref = malloc(LEN);
	if (!*ref)
		TU_FAIL("malloc");
	memcpy(*ref, p, LEN);
	return p;
}

/* Phase 1: use_zero_pages=1. */
static int zero_on(int rd, int wr, void *arg)
{
	unsigned char *ref, *p;
	uint64_t *f = malloc(NPAGES * 8), zp, fw;
	struct samepage_stat st;
	size_t rep;
	int *no_zero_page = arg;
	(void)rd, (void)wr;

	TU_CHECK_RETURN(tu_wait(pool_empty, NULL, 10), "daemon not idle at the start");
	p = setup(&ref, 11);
	zp = zero_pfn();
	*no_zero_page = !zp;
	pfns((uintptr_t)p, ZPAGES, f);
	for (uint32_t i = 0; i < ZPAGES; i++)
		TU_CHECK_RETURN(f[i] && f[i] != zp, "page %u not a private page before merging", i);
	TU_CHECK_RETURN(madvise(p, LEN, MADV_MERGEABLE) == 0, "madvise: %s", strerror(errno));

	struct want w = { ZPAGES, ZPAGES, 0 };
	TU_CHECK_RETURN(tu_wait(reached, &w, 30), "zero pages not merged within 30 s");
	pfns((uintptr_t)p, NPAGES, f);
	if (zp) {
		/* Not read yet: each zero page has no frame, or the zero page's. */
		for (uint32_t i = 0; i < ZPAGES; i++)
			TU_CHECK_RETURN(!f[i] || f[i] == zp,
					"zero page %u has a frame of its own (%#llx) after merging",
					i, (unsigned long long)f[i]);
	} else {
		/* No zero page here: zero pages map samepage's zero segment, whose
		 * runs share frames (at most one scan chunk, 512, in all). */
		for (uint32_t i = 0; i < ZPAGES; i++)
			TU_CHECK_RETURN(tu_is_file_page(getpid(),
							(uintptr_t)p + (uintptr_t)i * PAGE),
					"zero page %u is not mapped from the zero segment", i);
		TU_CHECK_RETURN(distinct(f, ZPAGES, &rep) <= 512, "zero pages use %zu frames",
				distinct(f, ZPAGES, &rep));
	}
	for (uint32_t i = ZPAGES; i < NPAGES; i++)
		TU_CHECK_RETURN(f[i] && f[i] != zp,
				"random page %u maps the zero page (or is missing)", i);
	TU_CHECK_RETURN(distinct(f + ZPAGES, RPAGES, &rep) == RPAGES, "random pages share frames");
	TU_CHECK_RETURN(!memcmp(p + (size_t)ZPAGES * PAGE, ref + (size_t)ZPAGES * PAGE,
				(size_t)RPAGES * PAGE),
			"random content changed");
	TU_CHECK_RETURN(samepage_stat(&st) == 0, "samepage_stat");
	TU_CHECK_RETURN(st.ksm_zero_pages == ZPAGES && st.ksm_zero_pages_process == ZPAGES,
			"ksm_zero_pages %llu, process %llu, want %u",
			(unsigned long long)st.ksm_zero_pages,
			(unsigned long long)st.ksm_zero_pages_process, ZPAGES);
	TU_CHECK_RETURN(st.pool_pages == 0 && st.pages_shared == 0 && st.pages_sharing == 0,
			"zero pages use the pool: pool_pages %llu pages_shared %llu "
			"pages_sharing %llu", (unsigned long long)st.pool_pages,
			(unsigned long long)st.pages_shared, (unsigned long long)st.pages_sharing);
	TU_CHECK_RETURN(st.ksm_merging_pages == 0, "ksm_merging_pages %llu",
			(unsigned long long)st.ksm_merging_pages);

	/* A write gives the page a private frame; the counter follows. */
	p[(size_t)WPAGE * PAGE + 7] = 1;
	ref[(size_t)WPAGE * PAGE + 7] = 1;
	fw = tu_pfn(getpid(), (uintptr_t)p + (uintptr_t)WPAGE * PAGE);
	TU_CHECK_RETURN(fw && fw != zp, "written zero page has no frame of its own");
	/* As the kernel counts it off at the write fault: at once, not at the
	 * scanner's next pass (the kernel's test_unmerge_zero_pages). */
	TU_CHECK_RETURN(!zp || (samepage_stat(&st) == 0 &&
				st.ksm_zero_pages_process == ZPAGES - 1),
			"ksm_zero_pages_process %llu right after the write, want %u",
			(unsigned long long)st.ksm_zero_pages_process, ZPAGES - 1);
	w = (struct want){ ZPAGES - 1, ZPAGES - 1, 0 };
	TU_CHECK_RETURN(tu_wait(reached, &w, 20), "ksm_zero_pages did not drop to %u after a write",
			ZPAGES - 1);

	if (zp) {
		/* Reads map the kernel's zero page: one frame for all of them. */
		TU_CHECK_RETURN(!memcmp(p, ref, LEN), "content after merging");
		pfns((uintptr_t)p, ZPAGES, f);
		for (uint32_t i = 0; i < ZPAGES; i++)
			TU_CHECK_RETURN(i == WPAGE ? f[i] != zp : f[i] == zp,
					"zero page %u: frame %#llx, the zero page is %#llx", i,
					(unsigned long long)f[i], (unsigned long long)zp);
		/* Reading is not writing: the counter stays. */
		TU_CHECK_RETURN(tu_wait(reached, &w, 5), "ksm_zero_pages changed by reads");
	} else {
		TU_CHECK_RETURN(!memcmp(p, ref, LEN), "content after merging");
	}

	/* MADV_UNMERGEABLE: frames of our own, none the zero page. */
	TU_CHECK_RETURN(madvise(p, LEN, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE: %s",
			strerror(errno));
	pfns((uintptr_t)p, NPAGES, f);
	for (uint32_t i = 0; i < NPAGES; i++)
		TU_CHECK_RETURN(f[i] && f[i] != zp,
				"page %u after MADV_UNMERGEABLE: frame %#llx (zero page %#llx)", i,
				(unsigned long long)f[i], (unsigned long long)zp);
	TU_CHECK_RETURN(distinct(f, NPAGES, &rep) == NPAGES,
			"pages share frames after MADV_UNMERGEABLE");
	TU_CHECK_RETURN(!memcmp(p, ref, LEN), "content after MADV_UNMERGEABLE");
	TU_CHECK_RETURN(samepage_stat(&st) == 0 && st.ksm_zero_pages_process == 0,
			"ksm_zero_pages of the process %llu after MADV_UNMERGEABLE",
			(unsigned long long)st.ksm_zero_pages_process);
	w = (struct want){ 0, 0, 0 };
	TU_CHECK_RETURN(tu_wait(reached, &w, 10), "global ksm_zero_pages not back to 0");
	/* And they stay unmerged. */
	samepage_scan_now();
	samepage_scan_now();
	pfns((uintptr_t)p, ZPAGES, f);
	for (uint32_t i = 0; i < ZPAGES; i++)
		TU_CHECK_RETURN(f[i] && f[i] != zp, "page %u merged again after MADV_UNMERGEABLE",
				i);
	return 0;
}

/* Phases 2 and 3: use_zero_pages=0; arg is max_page_sharing. */
static int zero_off(int rd, int wr, void *arg)
{
	uint32_t maxs = (uint32_t)(uintptr_t)arg, want_pool = (ZPAGES + maxs - 1) / maxs;

	if (want_pool < RUN_EXTENT)
		want_pool = RUN_EXTENT;
	unsigned char *ref, *p;
	uint64_t *f = malloc(NPAGES * 8), zp;
	struct samepage_stat st;
	size_t rep, d;
	(void)rd, (void)wr;

	TU_CHECK_RETURN(tu_wait(pool_empty, NULL, 10), "daemon not idle at the start");
	p = setup(&ref, 12);
	zp = zero_pfn();
	TU_CHECK_RETURN(madvise(p, LEN, MADV_MERGEABLE) == 0, "madvise: %s", strerror(errno));

	struct want w = { 0, 0, ZPAGES };
	TU_CHECK_RETURN(tu_wait(reached, &w, 30),
			"zero pages not merged into the pool within 30 s");
	TU_CHECK_RETURN(!memcmp(p, ref, LEN), "content changed by merging");
	pfns((uintptr_t)p, NPAGES, f);
	for (uint32_t i = 0; i < ZPAGES; i++)
		TU_CHECK_RETURN(f[i] && f[i] != zp,
				"zero page %u: frame %#llx with use_zero_pages=0", i,
				(unsigned long long)f[i]);
	d = distinct(f, ZPAGES, &rep);
	/* At least what max_page_sharing forces; an extent that fills up
	 * mid-run is followed by one sized for the rest of the run. */
	TU_CHECK_RETURN(d >= want_pool && d <= 2 * want_pool,
			"zero pages on %zu frames, want %u-%u (max_page_sharing %u)", d, want_pool,
			2 * want_pool, maxs);
	TU_CHECK_RETURN(rep <= maxs, "one frame mapped %zu times, max_page_sharing %u", rep, maxs);
	TU_CHECK_RETURN(distinct(f + ZPAGES, RPAGES, &rep) == RPAGES, "random pages share frames");
	for (uint32_t i = 0; i < ZPAGES; i += 64)
		TU_CHECK_RETURN(tu_is_file_page(getpid(), (uintptr_t)p + (uintptr_t)i * PAGE),
				"zero page %u is not a pool page", i);
	TU_CHECK_RETURN(samepage_stat(&st) == 0, "samepage_stat");
	TU_CHECK_RETURN(st.pool_pages == d && st.pages_shared == d,
			"pool_pages %llu pages_shared %llu, want %zu (the frames)",
			(unsigned long long)st.pool_pages, (unsigned long long)st.pages_shared, d);
	TU_CHECK_RETURN(st.pages_sharing == ZPAGES - d, "pages_sharing %llu, want %zu",
			(unsigned long long)st.pages_sharing, ZPAGES - d);
	TU_CHECK_RETURN(st.ksm_zero_pages == 0 && st.ksm_zero_pages_process == 0,
			"ksm_zero_pages %llu with use_zero_pages=0",
			(unsigned long long)st.ksm_zero_pages);
	TU_CHECK_RETURN(st.stable_node_chains == 1 && st.stable_node_dups == d,
			"stable_node_chains %llu stable_node_dups %llu, want 1 and %zu",
			(unsigned long long)st.stable_node_chains,
			(unsigned long long)st.stable_node_dups, d);
	/* COW on the shared zero-content pool page. */
	p[(size_t)WPAGE * PAGE] = 9;
	ref[(size_t)WPAGE * PAGE] = 9;
	TU_CHECK_RETURN(!memcmp(p, ref, LEN), "content after a write to a merged zero page");
	TU_CHECK_RETURN(tu_pfn(getpid(), (uintptr_t)p + (uintptr_t)WPAGE * PAGE) !=
				tu_pfn(getpid(), (uintptr_t)p + (uintptr_t)(WPAGE + 1) * PAGE),
			"written page still shares the pool page");
	return 0;
}

static void run_phase(int (*fn)(int, int, void *), void *arg, int n)
{
	struct tu_child c;
	int st;

	tu_spawn(&c, fn, arg);
	st = tu_reap(&c);
	TU_CHECK(st == 0, "phase %d failed (exit %d)", n, st);
	printf("zero_pages: phase %d ok\n", n);
}

int main(void)
{
	int *no_zero_page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	tu_require_merging();
	tu_private_daemon();
	TU_CHECK(no_zero_page != MAP_FAILED, "mmap");
	run_phase(zero_on, no_zero_page, 1);
	TU_CHECK(tu_cli("set use_zero_pages=0 max_page_sharing=4096") == 0, "samepage set");
	run_phase(zero_off, (void *)(uintptr_t)4096, 2);
	TU_CHECK(tu_cli("set max_page_sharing=16") == 0, "samepage set");
	run_phase(zero_off, (void *)(uintptr_t)16, 3);
	if (*no_zero_page)
		printf("zero_pages: this kernel maps no zero page on read faults (pvm_no_zero_page=1 "
		       "here): checked the zero-segment fallback, not the kernel zero page\n");
	return 0;
}
