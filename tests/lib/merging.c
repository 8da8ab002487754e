/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "merging.h"

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

void tu_scan_passes(int n)
{
	for (int i = 0; i < n; i++) {
		samepage_scan_now();
		tu_sleep_ms(50);
	}
}
