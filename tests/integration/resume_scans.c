/* SPDX-License-Identifier: MIT */
/*
 * Two full scans after `run=1` are two passes over everything.
 *
 * Kernel KSM counts no full scan while ksmd is stopped (run 0 or 2), so a
 * program that madvises memory, writes 1 to run and waits for full_scans
 * to grow by two has had every page looked at twice: enough to merge. The
 * kernel's selftest ksm_functional_tests does exactly that, then expects
 * every zero page merged (test_unmerge_zero_pages). samepage's daemon used
 * to end generations while stopped too: a pass that began before the
 * madvise, reported while `run` was 2, counted as the first full scan
 * after `run=1`, and the selftest failed about one run in fifteen.
 *
 * Asserted, ROUNDS times, in the selftest's order: `run=2`, 2 MiB of zeros
 * mapped and madvised, full_scans read, `run=1`, wait for two more, then
 * every page of it is a KSM zero page (ksm_zero_pages of this process).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "samepage.h"
#include "merging.h"
#include "testutil.h"

#define PAGES 512u
#define ROUNDS 12

int main(void)
{
	size_t len = (size_t)PAGES * PAGE;
	struct samepage_stat st;

	tu_require_merging();
	tu_private_daemon();
	TU_CHECK(tu_cli("set use_zero_pages=1 >/dev/null") == 0, "set use_zero_pages=1");
	for (int round = 0; round < ROUNDS; round++) {
		TU_CHECK(tu_cli("set --timeout 10 run=2 >/dev/null 2>&1") == 0, "round %d: run=2",
			 round);
		unsigned char *m = tu_map(len);
		memset(m, 0, len); /* present, written: zero pages to merge */
		TU_CHECK(madvise(m, len, MADV_MERGEABLE) == 0, "MADV_MERGEABLE: %s",
			 strerror(errno));
		struct tu_counter scans = { "full_scans", tu_status("full_scans") + 2 };
		TU_CHECK(tu_cli("set run=1 >/dev/null") == 0, "round %d: run=1", round);
		TU_CHECK(tu_wait(tu_counter_reached, &scans, 30), "round %d: no two full scans in 30 s",
			 round);
		TU_CHECK(samepage_stat(&st) == 0, "samepage_stat");
		TU_CHECK(st.ksm_zero_pages_process == PAGES,
			 "round %d: %llu of %u zero pages merged after two full scans from run=1",
			 round, (unsigned long long)st.ksm_zero_pages_process, PAGES);
		TU_CHECK(munmap(m, len) == 0, "munmap");
	}

	printf("resume_scans: %d rounds, every zero page merged two full scans after run=1\n",
	       ROUNDS);
	return 0;
}
