/* SPDX-License-Identifier: MIT */
/*
 * merging — what integration tests ask of this process's own merging
 * through libsamepage (linked by them, not by the unit tests that share
 * testutil): scan passes now, and whether copies have merged.
 */
#ifndef SAMEPAGE_TEST_MERGING_H
#define SAMEPAGE_TEST_MERGING_H

#include <stddef.h>
#include <stdint.h>

/* Two copies of n pages in this process, at a and b. */
struct tu_copies {
	const void *a, *b;
	size_t n;
};

/* For tu_wait(): one scan pass of this process now, then 1 when every page
 * of both copies maps a pool page. */
int tu_copies_merged(void *copies);
/* Two fresh copies of n pages filled from seed (tu_fill), both
 * MADV_MERGEABLE, merged (fails the test after 30 s): *c describes them. */
void tu_merge_copies(struct tu_copies *c, size_t n, uint64_t seed);
/* n scan passes of this process, 50 ms apart. */
void tu_scan_passes(int n);

#endif
