/* SPDX-License-Identifier: MIT */
/*
 * Written merged pages, to the end: once every page of a merged VMA has
 * been written, the scanner turns the whole VMA back into anonymous memory
 * (no pool mapping left in the range, content intact) and drops its
 * references; once both processes have written everything, the pool is
 * empty. Before that, written pages neither count as merging nor split
 * VMAs, and pages written back to their old content merge again.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 256u
#define LEN ((size_t)NPAGES * PAGE)

struct range { uintptr_t s, e; };

static int restored(void *arg)
{
	struct range *r = arg;

	samepage_scan_now();
	return tu_pool_vmas(getpid(), r->s, r->e) == 0;
}

static int remerged(void *arg)
{
	struct samepage_stat st;
	(void)arg;

	samepage_scan_now();
	return samepage_stat(&st) == 0 && st.ksm_merging_pages == NPAGES;
}

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN), *ref = malloc(LEN);
	struct range r = { (uintptr_t)p, (uintptr_t)p + LEN };
	struct samepage_stat st;
	/* Each process writes its own values, or the written pages would be
	 * identical again and merge anew. */
	unsigned char x = (unsigned char)(0x11 + (intptr_t)arg);
	char cmd;
	int ok;

	tu_fill(p, LEN, 99);
	memcpy(ref, p, LEN);
	TU_CHECK(madvise(p, LEN, MADV_MERGEABLE) == 0, "madvise");
	tu_send(wr, &r.s, sizeof(r.s));
	tu_recv(rd, &cmd, 1); /* merged */
	TU_CHECK(tu_pool_vmas(getpid(), r.s, r.e) >= 1, "merged but no pool VMA");
	int before = tu_pool_vmas(getpid(), r.s, r.e);
	/* Every other page first: no VMA split, merging count drops. */
	for (uint32_t i = 0; i < NPAGES; i += 2)
		p[(size_t)i * PAGE] = ref[(size_t)i * PAGE] ^= x;
	samepage_scan_now();
	TU_CHECK(samepage_stat(&st) == 0 && st.ksm_merging_pages == NPAGES / 2,
		 "ksm_merging_pages %llu after writing half, want %u",
		 (unsigned long long)st.ksm_merging_pages, NPAGES / 2);
	TU_CHECK(tu_pool_vmas(getpid(), r.s, r.e) == before, "writes split the pool VMAs: %d, were %d",
		 tu_pool_vmas(getpid(), r.s, r.e), before);
	/* Written back to what they were: they merge again, as on kernel KSM. */
	for (uint32_t i = 0; i < NPAGES; i += 2)
		p[(size_t)i * PAGE] = ref[(size_t)i * PAGE] ^= x;
	ok = tu_wait(remerged, NULL, 20);
	TU_CHECK(ok, "pages written back did not merge again: ksm_merging_pages %llu",
		 (samepage_stat(&st), (unsigned long long)st.ksm_merging_pages));
	TU_CHECK(!memcmp(p, ref, LEN), "content after merging again");
	for (uint32_t i = 0; i < NPAGES; i += 2)
		p[(size_t)i * PAGE] = ref[(size_t)i * PAGE] ^= x;
	/* Then the rest: the whole VMA goes back to anonymous memory. */
	for (uint32_t i = 1; i < NPAGES; i += 2)
		p[(size_t)i * PAGE] = ref[(size_t)i * PAGE] ^= x;
	ok = tu_wait(restored, &r, 20);
	TU_CHECK(ok, "fully written VMA still maps the pool (%d VMAs)", tu_pool_vmas(getpid(), r.s, r.e));
	TU_CHECK(!memcmp(p, ref, LEN), "content after the restore");
	TU_CHECK(samepage_stat(&st) == 0 && st.ksm_merging_pages == 0,
		 "ksm_merging_pages %llu after writing everything",
		 (unsigned long long)st.ksm_merging_pages);
	tu_send(wr, "d", 1);
	tu_recv(rd, &cmd, 1);
	TU_CHECK(!memcmp(p, ref, LEN), "content at the end");
	return 0;
}

struct pair {
	struct tu_child c[2];
	uintptr_t a[2];
};

static int merged(void *arg)
{
	struct pair *pr = arg;
	pid_t pids[2] = { pr->c[0].pid, pr->c[1].pid };

	return tu_frames(pids, pr->a, 2, NPAGES) == NPAGES;
}

int main(void)
{
	struct pair pr;
	struct tu_child *c = pr.c;
	char d;

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < 2; i++)
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
	for (int i = 0; i < 2; i++)
		TU_CHECK(tu_recv(c[i].rd, &pr.a[i], sizeof(pr.a[i])) == 0, "child %d died", i);
	TU_CHECK(tu_wait(merged, &pr, 30), "not merged within 30 s");
	TU_CHECK(tu_status("pool_pages") == NPAGES, "pool_pages %lld, want %u",
		 tu_status("pool_pages"), NPAGES);
	/* One after the other: the pool keeps its pages while one process
	 * still maps them, and empties once both wrote everything. */
	for (int i = 0; i < 2; i++) {
		tu_send(c[i].wr, "m", 1);
		TU_CHECK(tu_recv(c[i].rd, &d, 1) == 0, "child %d failed", i);
		if (i == 0)
			TU_CHECK(tu_status("pool_pages") == NPAGES,
				 "pool_pages %lld while the other process maps them all",
				 tu_status("pool_pages"));
	}
	TU_CHECK(tu_wait(tu_pool_empty, NULL, 20), "pool_pages %lld after everything was written",
		 tu_status("pool_pages"));
	for (int i = 0; i < 2; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	return 0;
}
