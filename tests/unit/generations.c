/* SPDX-License-Identifier: MIT */
/*
 * Unit test of the generations in daemon/budget.c (maybe_end_generation).
 * Proves, with one scanning connection:
 *  - at run=1 a generation (a full scan) ends once its pass is reported;
 *  - at run 0 or 2 none ends, as ksmd counts no full scan while stopped;
 *  - when run is back to 1, a pass reported while stopped does not count:
 *    a new generation begins, counting nothing, so the two full scans a
 *    program waits for after `echo 1 > run` are two passes over memory it
 *    may have madvised while merging was stopped (the kernel's selftest
 *    test_unmerge_zero_pages failed now and then without it).
 */
#define _GNU_SOURCE
#include <stdio.h>

#include "../lib/testutil.h"
#include "daemon.h"

int main(void)
{
	static struct samepaged d;
	struct conn c = { 0 };

	samepaged_default_knobs(&d.knobs);
	map_init(&d.ix.unstable);
	c.hello = 1;
	c.st.mergeable = 1;
	c.last_seen_ns = now_ns();
	d.conns = &c;

	maybe_end_generation(&d);
	TU_CHECK(d.full_scans == 0 && d.gen == 0, "a generation ended with no pass reported");
	c.pass_done = 1;
	maybe_end_generation(&d);
	TU_CHECK(d.full_scans == 1 && d.gen == 1 && !c.pass_done,
		 "run=1, pass reported: full_scans %llu gen %llu, want 1 1",
		 (unsigned long long)d.full_scans, (unsigned long long)d.gen);

	for (uint32_t run = 0; run <= 2; run += 2) {
		uint64_t scans = d.full_scans, gen = d.gen;
		d.knobs.v[KNOB_RUN] = run;
		c.pass_done = 1;
		maybe_end_generation(&d);
		maybe_end_generation(&d);
		TU_CHECK(d.full_scans == scans && d.gen == gen,
			 "run=%u: full_scans %llu -> %llu while stopped", run,
			 (unsigned long long)scans, (unsigned long long)d.full_scans);
		/* Merging resumes: the pass reported meanwhile does not count. */
		d.knobs.v[KNOB_RUN] = 1;
		maybe_end_generation(&d);
		TU_CHECK(d.full_scans == scans && d.gen == gen + 1 && !c.pass_done,
			 "run %u -> 1: full_scans %llu -> %llu, gen %llu -> %llu; want a new "
			 "generation and no full scan", run, (unsigned long long)scans,
			 (unsigned long long)d.full_scans, (unsigned long long)gen,
			 (unsigned long long)d.gen);
		c.pass_done = 1;
		maybe_end_generation(&d);
		TU_CHECK(d.full_scans == scans + 1, "the first pass after run=1 did not count");
	}
	map_fini(&d.ix.unstable);
	printf("generations: ok\n");
	return 0;
}
