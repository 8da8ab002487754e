/* SPDX-License-Identifier: MIT */
/*
 * A merged page rewritten with zeros stays zeros (use_zero_pages=1).
 *
 * One process holds two identical copies of N random pages, merged: both
 * map the same pool pages through private file mappings. Then every other
 * page of copy A is zeroed (and, in copy B, one word of every fourth page
 * changed), so the written pages are private copies inside pool VMAs that
 * stay whole. The scanner finds the zeroed ones all-zero: on a kernel
 * with a zero page such pages are dropped (MADV_DONTNEED) so that the next
 * read maps it — but in a pool VMA, dropping the private copy shows the
 * pool page again, with the old bytes. Found as two QEMU guests whose
 * second one hung at boot: the kernel it had loaded, merged with the first
 * guest's, came back where it had cleared memory.
 *
 * Asserted, after the scanner has had several passes: every byte of both
 * copies is what the process wrote (compared with a copy kept in memory
 * that is never merged), and the zeroed pages merge again (a handful of
 * frames for all of them), as other content rewritten in place does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "merging.h"
#include "testutil.h"

#define N 1024u /* 4 MiB per copy */

static unsigned char *a, *b;

/* Distinct frames among the zeroed pages of copy A that are present. */
static size_t zeroed_frames(void)
{
	static uint64_t f[N / 2];
	size_t n = 0;

	for (uint32_t i = 0; i < N; i += 2)
		tu_pfns(getpid(), (uintptr_t)a + (size_t)i * PAGE, 1, f, &n);
	return tu_distinct(f, n);
}

static int zeros_merged(void *arg)
{
	(void)arg;
	samepage_scan_now();
	return zeroed_frames() <= 4;
}

int main(void)
{
	size_t len = (size_t)N * PAGE;
	unsigned char *ref;

	tu_require_merging();
	tu_private_daemon();
	TU_CHECK(tu_cli("set use_zero_pages=1") == 0, "samepage set use_zero_pages=1");
	a = tu_map(len);
	b = tu_map(len);
	tu_fill(a, len, 7);
	memcpy(b, a, len);
	/* The reference copies live in shared memory, which is never merged. */
	ref = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(ref != MAP_FAILED, "mmap: %s", strerror(errno));
	memcpy(ref, a, len);
	memcpy(ref + len, b, len);
	TU_CHECK(madvise(a, len, MADV_MERGEABLE) == 0 && madvise(b, len, MADV_MERGEABLE) == 0,
		 "madvise: %s", strerror(errno));
	TU_CHECK(tu_wait(tu_copies_merged, &(struct tu_copies){ a, b, N }, 30),
		 "the two copies did not merge within 30 s");

	for (uint32_t i = 0; i < N; i += 2) {
		memset(a + (size_t)i * PAGE, 0, PAGE);
		memset(ref + (size_t)i * PAGE, 0, PAGE);
	}
	for (uint32_t i = 1; i < N; i += 4) {
		b[(size_t)i * PAGE + 100] ^= 0x5a;
		ref[len + (size_t)i * PAGE + 100] ^= 0x5a;
	}
	/* Passes enough to find the zeroed pages and act on them (the first
	 * one used to drop them), then on until they share frames again. */
	tu_scan_passes(5);
	int remerged = tu_wait(zeros_merged, NULL, 30);
	for (uint32_t i = 0; i < N; i++) {
		TU_CHECK(!memcmp(a + (size_t)i * PAGE, ref + (size_t)i * PAGE, PAGE),
			 "copy A page %u differs from what was written%s", i,
			 i % 2 == 0 ? " (zeroed: the old pool page shows again)" : "");
		TU_CHECK(!memcmp(b + (size_t)i * PAGE, ref + len + (size_t)i * PAGE, PAGE),
			 "copy B page %u differs from what was written", i);
	}
	TU_CHECK(remerged, "the zeroed pages still use %zu frames after 30 s", zeroed_frames());
	printf("zero_rewrite: %u zeroed pages of a merged copy read zeros and share %zu frame(s), "
	       "all %u pages of both copies intact\n", N / 2, zeroed_frames(), 2 * N);
	return 0;
}
