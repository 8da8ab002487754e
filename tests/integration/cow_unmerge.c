/* SPDX-License-Identifier: MIT */
/*
 * Copy-on-write and MADV_UNMERGEABLE, checked against page frames.
 *
 * Two processes hold the same 8 MiB and mark it mergeable with madvise()
 * (samepage's interposed one). Once merged (frames ≈ half):
 *  - a write in process 0 changes only its own copy: process 1 still reads
 *    its bytes, the written page has a frame of its own (a private page, no
 *    longer a file page), ksm_merging_pages drops by one once the scanner
 *    sees it, and the process's VMAs are not split for it (the written copy
 *    stays inside its pool mapping until the whole VMA is written);
 *  - madvise(MADV_UNMERGEABLE) over the whole range returns 0 and, when it
 *    returns, every page has a frame of its own again (2 × pages distinct
 *    frames over both processes), the content is unchanged and no VMA of the
 *    range maps the pool.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 2048u /* 8 MiB */
#define LEN ((size_t)NPAGES * PAGE)
#define WPAGE 777u   /* the page process 0 writes */
#define NPROC 2

struct reply { int32_t ok; int32_t err; int64_t v; char why[112]; };

static void answer(int wr, int ok, int err, int64_t v, const char *why)
{
	struct reply r = { .ok = ok, .err = err, .v = v };

	snprintf(r.why, sizeof(r.why), "%s", why ? why : "");
	tu_send(wr, &r, sizeof(r));
}

struct wait_drop { int64_t want; uintptr_t page, start, end; int vmas; };

static int dropped(void *arg)
{
	struct wait_drop *w = arg;
	struct samepage_stat st;

	if (samepage_stat(&st) || (int64_t)st.ksm_merging_pages != w->want)
		return 0;
	/* A private page, and no VMA split for it. */
	return !tu_is_file_page(getpid(), w->page) &&
	       tu_pool_vmas(getpid(), w->start, w->end) == w->vmas;
}

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	unsigned char *p = tu_map(LEN), *ref = malloc(LEN);
	uintptr_t a = (uintptr_t)p;
	int64_t before = -1;
	int vmas_before = -1;
	char cmd;

	if (!ref)
		return 1;
	tu_fill(p, LEN, 7);
	memcpy(ref, p, LEN);
	tu_send(wr, &a, sizeof(a));
	if (tu_recv(rd, &cmd, 1) || cmd != 'm') /* frames counted before merging */
		return 1;
	if (madvise(p, LEN, MADV_MERGEABLE) != 0) {
		fprintf(stderr, "child %d: madvise(MADV_MERGEABLE): %s\n", idx, strerror(errno));
		return 1;
	}
	while (tu_recv(rd, &cmd, 1) == 0) {
		struct samepage_stat st;
		switch (cmd) {
		case 'c': /* content is still what we wrote */
			answer(wr, !memcmp(p, ref, LEN), 0, 0, "content differs from the reference");
			break;
		case 's': /* our merged-page counter */
			if (samepage_stat(&st)) {
				answer(wr, 0, 0, 0, "samepage_stat failed");
				break;
			}
			answer(wr, 1, 0, (int64_t)st.ksm_merging_pages, "");
			break;
		case 'w': /* write one merged page */
			if (samepage_stat(&st)) {
				answer(wr, 0, 0, 0, "samepage_stat failed");
				break;
			}
			before = (int64_t)st.ksm_merging_pages;
			vmas_before = tu_pool_vmas(getpid(), a, a + LEN);
			p[(size_t)WPAGE * PAGE + 100] ^= 0xff;
			ref[(size_t)WPAGE * PAGE + 100] ^= 0xff;
			answer(wr, p[(size_t)WPAGE * PAGE + 100] == ref[(size_t)WPAGE * PAGE + 100] &&
				   !memcmp(p, ref, LEN), 0, before, "write not seen by the writer");
			break;
		case 'd': { /* wait for the scanner to account for the written page */
			struct wait_drop w = { before - 1, a + (uintptr_t)WPAGE * PAGE, a, a + LEN,
					       vmas_before };
			int ok = tu_wait(dropped, &w, 20);
			samepage_stat(&st);
			answer(wr, ok, 0, (int64_t)st.ksm_merging_pages,
			       "written page not accounted as unmerged within 20 s (or VMAs split)");
			break;
		}
		case 'u': { /* MADV_UNMERGEABLE through the interposed madvise() */
			int r = madvise(p, LEN, MADV_UNMERGEABLE);
			int e = r ? errno : 0;
			answer(wr, r == 0, e, r, "madvise(MADV_UNMERGEABLE) failed");
			break;
		}
		case 'q':
			free(ref);
			return 0;
		default:
			return 1;
		}
	}
	return 1;
}

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static uintptr_t addrs[NPROC];

static struct reply ask(int i, char cmd)
{
	struct reply r;

	TU_CHECK(tu_send(c[i].wr, &cmd, 1) == 0 && tu_recv(c[i].rd, &r, sizeof(r)) == 0,
		 "child %d died on command '%c'", i, cmd);
	return r;
}

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, NPROC, NPAGES) <= NPAGES + 4;
}

static void check_content(const char *when)
{
	for (int i = 0; i < NPROC; i++) {
		struct reply r = ask(i, 'c');
		TU_CHECK(r.ok, "%s: process %d: %s", when, i, r.why);
	}
}

int main(void)
{
	struct reply r;
	size_t fr;

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	TU_CHECK(tu_frames(pids, addrs, NPROC, NPAGES) == NPROC * NPAGES,
		 "pages shared before merging");
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "m", 1);
	TU_CHECK(tu_wait(merged, NULL, 30), "not merged after 30 s: %zu frames for %u pages",
		 tu_frames(pids, addrs, NPROC, NPAGES), NPAGES);
	check_content("after merging");
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(tu_pool_vmas(pids[i], addrs[i], addrs[i] + LEN) > 0,
			 "process %d merged but maps no pool VMA", i);
		TU_CHECK(tu_is_file_page(pids[i], addrs[i] + (uintptr_t)WPAGE * PAGE),
			 "process %d: merged page is not a pool (file) page", i);
	}

	/* ---- COW: a write is the writer's alone ---- */
	uint64_t f1_before = tu_pfn(pids[1], addrs[1] + (uintptr_t)WPAGE * PAGE);
	TU_CHECK(f1_before == tu_pfn(pids[0], addrs[0] + (uintptr_t)WPAGE * PAGE),
		 "page to be written is not shared");
	r = ask(0, 'w');
	TU_CHECK(r.ok, "process 0: %s", r.why);
	TU_CHECK(r.v == NPAGES, "process 0: ksm_merging_pages %lld before the write, want %u",
		 (long long)r.v, NPAGES);
	{
		uint64_t f0 = tu_pfn(pids[0], addrs[0] + (uintptr_t)WPAGE * PAGE);
		uint64_t f1 = tu_pfn(pids[1], addrs[1] + (uintptr_t)WPAGE * PAGE);
		TU_CHECK(f0 && f1 && f0 != f1, "written page shares a frame: %#llx %#llx",
			 (unsigned long long)f0, (unsigned long long)f1);
		TU_CHECK(f1 == f1_before, "the other process's frame changed on our write");
		TU_CHECK(!tu_is_file_page(pids[0], addrs[0] + (uintptr_t)WPAGE * PAGE),
			 "written page is still a file page");
		TU_CHECK(tu_is_file_page(pids[1], addrs[1] + (uintptr_t)WPAGE * PAGE),
			 "other process's page stopped being the pool page");
	}
	/* Neighbours stay merged. */
	for (uint32_t k = WPAGE - 1; k <= WPAGE + 1; k += 2)
		TU_CHECK(tu_pfn(pids[0], addrs[0] + (uintptr_t)k * PAGE) ==
			 tu_pfn(pids[1], addrs[1] + (uintptr_t)k * PAGE), "neighbour %u unmerged", k);
	check_content("after the write"); /* process 1 unchanged, process 0 has its write */

	/* The scanner sees the written page: no longer merging, no VMA split. */
	r = ask(0, 'd');
	TU_CHECK(r.ok, "process 0: %s (ksm_merging_pages %lld)", r.why, (long long)r.v);
	r = ask(1, 's');
	TU_CHECK(r.ok && r.v == NPAGES, "process 1: ksm_merging_pages %lld, want %u",
		 (long long)r.v, NPAGES);
	TU_CHECK(tu_frames(pids, addrs, NPROC, NPAGES) == NPAGES + 1,
		 "after the write: %zu frames, want %u", tu_frames(pids, addrs, NPROC, NPAGES),
		 NPAGES + 1);
	check_content("after the written page was accounted for");

	/* ---- MADV_UNMERGEABLE ---- */
	r = ask(0, 'u');
	TU_CHECK(r.ok, "process 0: %s: %s", r.why, strerror(r.err));
	/* Right when it returned: every page of process 0 has its own frame. */
	TU_CHECK(tu_present(pids[0], addrs[0], NPAGES) == NPAGES, "process 0: pages not present");
	fr = tu_frames(pids, addrs, NPROC, NPAGES);
	TU_CHECK(fr == 2 * NPAGES, "after process 0's MADV_UNMERGEABLE: %zu frames, want %u", fr,
		 2 * NPAGES);
	TU_CHECK(tu_pool_vmas(pids[0], addrs[0], addrs[0] + LEN) == 0,
		 "process 0 still maps the pool after MADV_UNMERGEABLE");
	for (uint32_t k = 0; k < NPAGES; k += 97)
		TU_CHECK(!tu_is_file_page(pids[0], addrs[0] + (uintptr_t)k * PAGE),
			 "process 0 page %u is still a file page", k);
	check_content("after process 0's MADV_UNMERGEABLE");
	r = ask(0, 's');
	TU_CHECK(r.ok && r.v == 0, "process 0: ksm_merging_pages %lld after MADV_UNMERGEABLE",
		 (long long)r.v);

	r = ask(1, 'u');
	TU_CHECK(r.ok, "process 1: %s: %s", r.why, strerror(r.err));
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(tu_present(pids[i], addrs[i], NPAGES) == NPAGES,
			 "process %d: pages not present", i);
		TU_CHECK(tu_pool_vmas(pids[i], addrs[i], addrs[i] + LEN) == 0,
			 "process %d still maps the pool after MADV_UNMERGEABLE", i);
	}
	fr = tu_frames(pids, addrs, NPROC, NPAGES);
	TU_CHECK(fr == 2 * NPAGES, "after both MADV_UNMERGEABLE: %zu frames, want %u", fr,
		 2 * NPAGES);
	check_content("after both MADV_UNMERGEABLE");
	/* Unmergeable now: nothing merges again. */
	sleep(1);
	fr = tu_frames(pids, addrs, NPROC, NPAGES);
	TU_CHECK(fr == 2 * NPAGES, "merged again after MADV_UNMERGEABLE: %zu frames", fr);

	for (int i = 0; i < NPROC; i++) {
		char q = 'q';
		tu_send(c[i].wr, &q, 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	printf("cow_unmerge: ok\n");
	return 0;
}
