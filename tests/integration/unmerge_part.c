/* SPDX-License-Identifier: MIT */
/*
 * MADV_UNMERGEABLE on part of a mergeable range: that part gets frames of
 * its own and stays unmerged over later scans, the rest stays merged, as
 * kernel KSM splits the VMA's VM_MERGEABLE. One process, two identical
 * copies (merging within a process).
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 384u /* each copy */

static unsigned char *p;

/* Pages i of both copies share a frame. */
static int shared(uint32_t i)
{
	uint64_t a = tu_pfn(getpid(), (uintptr_t)p + (uintptr_t)i * PAGE);
	uint64_t b = tu_pfn(getpid(), (uintptr_t)p + (uintptr_t)(NPAGES + i) * PAGE);

	return a && a == b;
}

static int all_merged(void *arg)
{
	(void)arg;
	for (uint32_t i = 0; i < NPAGES; i++)
		if (!shared(i))
			return 0;
	return 1;
}

int main(void)
{
	unsigned char *ref = malloc(2 * NPAGES * PAGE);
	const uint32_t s = NPAGES / 3, e = 2 * NPAGES / 3;

	tu_require_merging();
	tu_private_daemon();
	p = tu_map(2 * NPAGES * PAGE);
	tu_fill(p, NPAGES * PAGE, 3);
	memcpy(p + NPAGES * PAGE, p, NPAGES * PAGE);
	memcpy(ref, p, 2 * NPAGES * PAGE);
	TU_CHECK(madvise(p, 2 * NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise");
	TU_CHECK(tu_wait(all_merged, NULL, 30), "not merged within 30 s");
	/* The middle third of the first copy only. */
	TU_CHECK(madvise(p + (size_t)s * PAGE, (size_t)(e - s) * PAGE, MADV_UNMERGEABLE) == 0,
		 "MADV_UNMERGEABLE");
	for (uint32_t i = 0; i < NPAGES; i++)
		TU_CHECK(shared(i) == (i < s || i >= e), "page %u: shared %d right after", i, shared(i));
	for (int k = 0; k < 3; k++)
		TU_CHECK(samepage_scan_now() == 0, "scan");
	for (uint32_t i = 0; i < NPAGES; i++)
		TU_CHECK(shared(i) == (i < s || i >= e), "page %u: shared %d after scans", i, shared(i));
	TU_CHECK(!memcmp(p, ref, 2 * NPAGES * PAGE), "content");
	/* Mergeable again: merges again. */
	TU_CHECK(madvise(p + (size_t)s * PAGE, (size_t)(e - s) * PAGE, MADV_MERGEABLE) == 0,
		 "MADV_MERGEABLE again");
	TU_CHECK(tu_wait(all_merged, NULL, 30), "not merged again within 30 s");
	TU_CHECK(!memcmp(p, ref, 2 * NPAGES * PAGE), "content at the end");
	return 0;
}
