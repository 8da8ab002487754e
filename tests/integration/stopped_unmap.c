/* SPDX-License-Identifier: MIT */
/*
 * Merged memory unmapped while merging is stopped is given back.
 *
 * Kernel KSM drops a KSM page's mapping at munmap, whatever `run` says, so
 * pages_sharing falls at once, and a later `run=2` (unmerge everything)
 * returns as soon as nothing is merged. samepage gives a pool page's
 * reference back once no VMA of the process maps it, at the scanner's next
 * look at its VMAs, which used to come only at the start of a pass: with
 * `run` 0 or 2 no pass ever ends, so the references of memory unmapped
 * meanwhile stayed, and the kernel's own selftest (ksm_functional_tests:
 * merge, MADV_DONTNEED, MADV_UNMERGEABLE, munmap, then `echo 2 > run`)
 * failed now and then after waiting a minute for an unmerge that could not
 * finish.
 *
 * Asserted: two merged copies unmapped at run=0 leave pages_shared and
 * pages_sharing at 0 within 5 s; the same, made by MADV_DONTNEED on half
 * and MADV_UNMERGEABLE before the munmap, with run=2 written afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "merging.h"
#include "testutil.h"

#define N 256u
#define ROUNDS 10

static int nothing_shared(void *arg)
{
	(void)arg;
	return tu_status("pages_shared") == 0 && tu_status("pages_sharing") == 0;
}

static void merged_then_stopped(struct tu_copies *c, uint64_t seed, const char *stop)
{
	char cmd[64];

	TU_CHECK(tu_cli("set run=1 >/dev/null") == 0, "set run=1");
	tu_merge_copies(c, N, seed);
	TU_CHECK(tu_status("pages_sharing") >= N, "pages_sharing %lld after merging %u pages",
		 tu_status("pages_sharing"), N);
	snprintf(cmd, sizeof(cmd), "set %s >/dev/null", stop);
	TU_CHECK(tu_cli(cmd) == 0, "%s", stop);
}

int main(void)
{
	/* 2 MiB of one byte: a run of equal pages, an extent of 64 pool pages
	 * mapped 8 times each (DESIGN.md, "Runs of one content"). */
	struct tu_counter all_sharing = { "pages_sharing", 2 * N - 64 };
	size_t len = (size_t)N * PAGE;
	struct tu_copies c;

	tu_require_merging();
	tu_private_daemon();

	/* run=0: the scanner waits for budget that never comes. */
	merged_then_stopped(&c, 41, "run=0");
	TU_CHECK(tu_status("pages_sharing") >= N, "run=0 unmerged (pages_sharing %lld)",
		 tu_status("pages_sharing"));
	TU_CHECK(munmap((void *)c.a, len) == 0 && munmap((void *)c.b, len) == 0, "munmap: %s",
		 strerror(errno));
	TU_CHECK(tu_wait(nothing_shared, NULL, 5),
		 "unmapped at run=0: pages_shared %lld, pages_sharing %lld after 5 s",
		 tu_status("pages_shared"), tu_status("pages_sharing"));

	/* The kernel selftest's order (test_unmerge_discarded, then the next
	 * test's run=2): 2 MiB of one byte (an extent of 64 pool pages),
	 * half discarded, all unmerged, unmapped. */
	for (int round = 0; round < ROUNDS; round++) {
		unsigned char *m = tu_map(2 * len);
		TU_CHECK(tu_cli("set run=1 >/dev/null") == 0, "set run=1");
		memset(m, 0xcf, 2 * len);
		TU_CHECK(madvise(m, 2 * len, MADV_MERGEABLE) == 0, "MADV_MERGEABLE: %s",
			 strerror(errno));
		TU_CHECK(tu_wait(tu_counter_reached, &all_sharing, 30),
			 "one byte over 2 MiB: pages_sharing %lld", tu_status("pages_sharing"));
		TU_CHECK(madvise(m, len, MADV_DONTNEED) == 0, "MADV_DONTNEED: %s", strerror(errno));
		TU_CHECK(madvise(m, 2 * len, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE: %s",
			 strerror(errno));
		TU_CHECK(munmap(m, 2 * len) == 0, "munmap: %s", strerror(errno));
		/* As the kernel's store, `set run=2` returns once all is unmerged. */
		TU_CHECK(tu_cli("set --timeout 5 run=2 >/dev/null 2>&1") == 0,
			 "round %d: `set run=2` did not finish unmerging within 5 s", round);
		TU_CHECK(tu_wait(nothing_shared, NULL, 5),
			 "round %d: unmapped, then run=2: pages_shared %lld, pages_sharing %lld "
			 "after 5 s", round, tu_status("pages_shared"), tu_status("pages_sharing"));
	}
	TU_CHECK(tu_cli("set run=1 >/dev/null") == 0, "set run=1");
	printf("stopped_unmap: merged memory unmapped at run=0 or before run=2 is given back\n");
	return 0;
}
