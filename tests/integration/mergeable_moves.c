/* SPDX-License-Identifier: MIT */
/*
 * MADV_MERGEABLE belongs to the mapping, as the kernel's VM_MERGEABLE
 * belongs to the VMA: it moves with mremap, and goes with munmap or a
 * MAP_FIXED replacement.
 *
 * A and B, N pages each, the same content, both MADV_MERGEABLE, merged.
 *  1. A is moved with mremap (onto a reservation) and both are
 *     rewritten with new equal content: the moved A merges with B again.
 *  2. B is unmapped and a fresh mapping with A's content is made at its
 *     very address, never madvised: it must not merge (kernel KSM would
 *     not touch it), however many passes run.
 *  3. A is replaced in place with mmap(MAP_FIXED) and filled again: not
 *     madvised either, so it stays unmerged.
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

int main(void)
{
	size_t len = (size_t)N * PAGE;
	unsigned char *old_b, *c;

	tu_require_merging();
	tu_private_daemon();
	struct tu_copies ab;

	tu_merge_copies(&ab, N, 41);
	a = (unsigned char *)ab.a;
	b = (unsigned char *)ab.b;

	/* 1. Moved: still mergeable where it went. */
	unsigned char *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(to != MAP_FAILED, "mmap");
	a = mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	TU_CHECK(a == to, "mremap: %s", strerror(errno));
	tu_fill(a, len, 42);
	tu_fill(b, len, 42);
	TU_CHECK(tu_wait(tu_copies_merged, &(struct tu_copies){ a, b, N }, 30),
		 "A, moved with mremap, did not merge with B again "
		 "(%zu of %u pages map the pool): MADV_MERGEABLE did not move with it",
		 tu_file_pages(getpid(), (uintptr_t)a, N), N);

	/* 2. Unmapped and mapped anew at the same address: not madvised. */
	old_b = b;
	TU_CHECK(munmap(b, len) == 0, "munmap: %s", strerror(errno));
	c = mmap(old_b, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
		 -1, 0);
	if (c == MAP_FAILED)
		tu_skip("the address B had was taken meanwhile");
	tu_fill(c, len, 42);
	tu_scan_passes(8);
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)c, N) == 0,
		 "a mapping never madvised, made where B was unmapped, was merged (%zu pages)",
		 tu_file_pages(getpid(), (uintptr_t)c, N));

	/* 3. Replaced in place by MAP_FIXED: not madvised either. */
	TU_CHECK(mmap(a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
		      0) == a, "mmap: %s", strerror(errno));
	tu_fill(a, len, 42);
	tu_scan_passes(8);
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)a, N) == 0 &&
		 tu_file_pages(getpid(), (uintptr_t)c, N) == 0,
		 "mappings never madvised were merged (%zu and %zu pages)",
		 tu_file_pages(getpid(), (uintptr_t)a, N), tu_file_pages(getpid(), (uintptr_t)c, N));
	printf("mergeable_moves: MADV_MERGEABLE moved with mremap and went with munmap and "
	       "MAP_FIXED, as VM_MERGEABLE does\n");
	return 0;
}
