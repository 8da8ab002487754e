/* SPDX-License-Identifier: MIT */
/*
 * Three processes hold the same 16 MiB (plus a private page each) and mark
 * it MADV_MERGEABLE through samepage_madvise(). Merged means: the shared
 * pages of all three are backed by one frame each (pagemap PFNs), every
 * byte is still what each process wrote, a write is its writer's alone
 * (COW), and core dumps would include the merged pages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 4096u
#define NPROC 3

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	unsigned char *p = tu_map((NPAGES + 1) * PAGE), *ref = malloc(NPAGES * PAGE);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	tu_fill(p, NPAGES * PAGE, 42);
	tu_fill(p + NPAGES * PAGE, PAGE, 1000 + idx); /* one page of its own */
	memcpy(ref, p, NPAGES * PAGE);
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1); /* parent counted the frames before merging */
	TU_CHECK(samepage_madvise(p, (NPAGES + 1) * PAGE, MADV_MERGEABLE) == 0, "madvise");
	tu_recv(rd, &cmd, 1); /* parent saw it merged */
	TU_CHECK(!memcmp(p, ref, NPAGES * PAGE), "content changed by merging");
	/* Invariant 3: core dumps keep merged pages (private file mappings). */
	{
		FILE *f = fopen("/proc/self/coredump_filter", "r");
		unsigned long filter = 0;
		TU_CHECK(f && fscanf(f, "%lx", &filter) == 1, "coredump_filter");
		fclose(f);
		TU_CHECK(filter & 0x4, "coredump_filter %#lx lacks bit 2 (private file mappings)",
			 filter);
	}
	/* COW: a write to a merged page is ours alone. Each writes its own
	 * value: the same bytes in all three would merge again (as on kernel
	 * KSM), and at once, the page now being offered as soon as written. */
	p[0] = (unsigned char)(0xe0 + idx);
	TU_CHECK(p[0] == 0xe0 + idx && !memcmp(p + 1, ref + 1, NPAGES * PAGE - 1), "COW write");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	return 0;
}

struct state { pid_t pids[NPROC]; uintptr_t addrs[NPROC]; };

static int merged(void *arg)
{
	struct state *s = arg;

	return tu_frames(s->pids, s->addrs, NPROC, NPAGES) <= NPAGES + 8;
}

int main(void)
{
	struct tu_child c[NPROC];
	struct state s;
	double t0;

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		s.pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	TU_CHECK(tu_frames(s.pids, s.addrs, NPROC, NPAGES) == NPROC * NPAGES,
		 "pages shared before merging");
	t0 = tu_now();
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "m", 1);
	TU_CHECK(tu_wait(merged, &s, 60), "not merged after 60 s: %zu frames for %u pages",
		 tu_frames(s.pids, s.addrs, NPROC, NPAGES), NPAGES);
	printf("merged %u pages x %d processes in %.2f s\n", NPAGES, NPROC, tu_now() - t0);
	/* Each process's private page stays its own. */
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_pfn(s.pids[i], s.addrs[i] + NPAGES * PAGE) != 0, "private page gone");
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "c", 1);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d failed", i);
	TU_CHECK(tu_pfn(s.pids[0], s.addrs[0]) != tu_pfn(s.pids[1], s.addrs[1]),
		 "written page still shared");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	return 0;
}
