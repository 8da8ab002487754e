/* SPDX-License-Identifier: MIT */
/*
 * sort — in-place sorting that never allocates. glibc's qsort() calls
 * malloc() for arrays over a few hundred bytes; the scanner sorts while it
 * holds lib.lock and may have frozen pages that a thread holding malloc's
 * lock is about to write, so it must not wait for that lock.
 */
#ifndef SAMEPAGE_SORT_H
#define SAMEPAGE_SORT_H

#include <stddef.h>

/* Heapsort: O(n log n), no recursion, no memory. size <= 64 bytes. */
void sort_inplace(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *));

#endif
