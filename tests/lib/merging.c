/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "merging.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

int tu_copies_merged(void *copies)
{
	const struct tu_copies *c = copies;

	samepage_scan_now();
	return tu_file_pages(getpid(), (uintptr_t)c->a, c->n) == c->n &&
	       tu_file_pages(getpid(), (uintptr_t)c->b, c->n) == c->n;
}

void tu_merge_copies(struct tu_copies *c, size_t n, uint64_t seed)
{
	size_t len = n * PAGE;
	unsigned char *a = tu_map(len), *b = tu_map(len);

	tu_fill(a, len, seed);
	memcpy(b, a, len);
	TU_CHECK(madvise(a, len, MADV_MERGEABLE) == 0 && madvise(b, len, MADV_MERGEABLE) == 0,
		 "madvise: %s", strerror(errno));
	*c = (struct tu_copies){ a, b, n };
	TU_CHECK(tu_wait(tu_copies_merged, c, 30), "the two copies did not merge within 30 s");
}

void tu_scan_passes(int n)
{
	for (int i = 0; i < n; i++) {
		samepage_scan_now();
		tu_sleep_ms(50);
	}
}
