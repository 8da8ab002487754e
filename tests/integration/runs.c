/* SPDX-License-Identifier: MIT */
/*
 * Runs of one content (DESIGN.md, "Runs of one content"): two processes
 * each hold 256 adjacent pages that are all the same (0xcc, a guest
 * kernel's freed init memory), at different offsets, between pages of
 * their own, plus a short run of 10 equal pages. Merged, the long runs map
 * one small extent of the pool over and over: a handful of VMAs per run
 * where one pool page for all would cost a VMA per page (256), at most 64
 * frames for both runs; the short runs map one frame, as the kernel counts
 * them. Every byte stays what each process wrote, and a write to a page of
 * the run is its writer's alone.
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 1024u
#define RUN 256u
#define SHORT 10u
#define SHORT_AT 900u
#define NPROC 2

/* Where child idx's long run starts: the two layouts differ. */
static size_t run_at(int idx)
{
	return idx ? 300 : 40;
}

static void fill(unsigned char *p, int idx)
{
	tu_fill(p, NPAGES * PAGE, 7000 + (uint64_t)idx); /* pages of its own */
	memset(p + run_at(idx) * PAGE, 0xcc, RUN * PAGE);
	memset(p + SHORT_AT * PAGE, 0x77, SHORT * PAGE);
}

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	unsigned char *p = tu_map(NPAGES * PAGE), *ref = malloc(NPAGES * PAGE);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	TU_CHECK_RETURN(ref, "malloc");
	fill(p, idx);
	memcpy(ref, p, NPAGES * PAGE);
	TU_CHECK_RETURN(samepage_madvise(p, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1); /* merged */
	TU_CHECK_RETURN(!memcmp(p, ref, NPAGES * PAGE), "content changed by merging");
	if (cmd == 'w') {
		/* COW inside the extent: this page alone changes. */
		p[(run_at(idx) + 5) * PAGE] = 0x11;
		ref[(run_at(idx) + 5) * PAGE] = 0x11;
	}
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	TU_CHECK_RETURN(!memcmp(p, ref, NPAGES * PAGE), "content wrong after a write");
	return 0;
}

struct state { pid_t pids[NPROC]; uintptr_t addrs[NPROC]; };

/* Every page of both long runs and both short runs maps a pool page. */
static int runs_merged(void *arg)
{
	struct state *s = arg;

	for (int i = 0; i < NPROC; i++)
		if (tu_file_pages(s->pids[i], s->addrs[i] + run_at(i) * PAGE, RUN) != RUN ||
		    tu_file_pages(s->pids[i], s->addrs[i] + SHORT_AT * PAGE, SHORT) != SHORT)
			return 0;
	return 1;
}

int main(void)
{
	struct tu_child c[NPROC];
	struct state s;
	uintptr_t run[NPROC], shrt[NPROC];
	size_t frames;
	int vmas[NPROC];

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		s.pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
		run[i] = s.addrs[i] + run_at(i) * PAGE;
		shrt[i] = s.addrs[i] + SHORT_AT * PAGE;
	}
	TU_CHECK(tu_wait(runs_merged, &s, 60), "runs not merged after 60 s: %zu and %zu of %u pages",
		 tu_file_pages(s.pids[0], run[0], RUN), tu_file_pages(s.pids[1], run[1], RUN), RUN);
	/* Hints and the next pass may still be mapping the rest: settle. */
	tu_sleep_ms(500);
	frames = tu_frames(s.pids, run, NPROC, RUN);
	for (int i = 0; i < NPROC; i++)
		vmas[i] = tu_pool_vmas(s.pids[i], run[i], run[i] + RUN * PAGE);
	printf("2 runs of %u equal pages: %zu frames, %d and %d pool VMAs\n", RUN, frames, vmas[0],
	       vmas[1]);
	TU_CHECK(frames >= 2 && frames <= 64, "%zu frames for both runs (want an extent: 2-64)",
		 frames);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(vmas[i] >= 1 && vmas[i] <= 12,
			 "process %d maps its run with %d pool VMAs (want <= 12, not one a page)", i,
			 vmas[i]);
	frames = tu_frames(s.pids, shrt, NPROC, SHORT);
	TU_CHECK(frames == 1, "%zu frames for 2 x %u equal pages (a short run maps one)", frames,
		 SHORT);
	tu_send(c[0].wr, "w", 1);
	tu_send(c[1].wr, "r", 1);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d failed", i);
	TU_CHECK(tu_pfn(s.pids[0], run[0] + 5 * PAGE) && !tu_is_file_page(s.pids[0], run[0] + 5 * PAGE),
		 "the written page of the run is not its writer's own copy");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	TU_CHECK(tu_wait(tu_pool_empty, NULL, 30), "pool not empty after both exited");
	return 0;
}
