/* SPDX-License-Identifier: MIT */
/*
 * MADV_DONTNEED on merged pages that mremap moved reads zeros (invariant 3).
 *
 * One process holds two identical copies A and B of N pages, merged. It
 * moves A elsewhere with mremap and, in a second round, away and back:
 * the pool mappings move along, and the pages' entries are forgotten at
 * both addresses (they are tracked again at a later pass). A
 * MADV_DONTNEED on the moved pages must read back zeros, as it does on
 * anonymous memory; plain DONTNEED on the private pool mapping shows the
 * pool page again, with the old bytes. Found by tests/integration/chaos.c.
 * Asserted: zeros after each DONTNEED, and B unchanged.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "merging.h"
#include "testutil.h"

#define N 256u

static unsigned char *a, *b;

static void check_zero(const unsigned char *p, size_t len, const char *what)
{
	for (size_t i = 0; i < len; i++)
		TU_CHECK(!p[i], "%s: page %zu reads %02x at byte %zu, not zeros", what, i / PAGE,
			 p[i], i % PAGE);
}

int main(void)
{
	size_t len = (size_t)N * PAGE;
	unsigned char *ref, *away;

	tu_require_merging();
	tu_private_daemon();
	struct tu_copies ab;

	tu_merge_copies(&ab, N, 31);
	a = (unsigned char *)ab.a;
	b = (unsigned char *)ab.b;
	ref = malloc(len);
	TU_CHECK(ref, "malloc");
	tu_fill(ref, len, 31); /* what both copies hold */

	/* Round 1: moved elsewhere, half of it discarded there. */
	away = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(away != MAP_FAILED, "mmap");
	TU_CHECK(mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, away) == away, "mremap: %s",
		 strerror(errno));
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)away, N) == N,
		 "the moved pages no longer map the pool: the test shows nothing");
	TU_CHECK(madvise(away, len / 2, MADV_DONTNEED) == 0, "MADV_DONTNEED: %s", strerror(errno));
	check_zero(away, len / 2, "moved, then MADV_DONTNEED");
	TU_CHECK(!memcmp(away + len / 2, ref + len / 2, len / 2), "the moved pages not discarded");

	/* Round 2: away and back, the rest discarded at the old address. */
	TU_CHECK(mremap(away, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, a) == a, "mremap back: %s",
		 strerror(errno));
	TU_CHECK(madvise(a + len / 2, len / 2, MADV_DONTNEED) == 0, "MADV_DONTNEED: %s",
		 strerror(errno));
	check_zero(a, len, "moved away and back, then MADV_DONTNEED");
	TU_CHECK(!memcmp(b, ref, len), "B changed");
	printf("moved_dontneed: merged pages moved by mremap read zeros after MADV_DONTNEED, "
	       "at the new address and back at the old one\n");
	return 0;
}
