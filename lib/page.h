/* SPDX-License-Identifier: MIT */
/*
 * page — reading and copying the application's pages.
 *
 * The scanner reads pages other threads may be writing; what makes that
 * safe is the userfaultfd freeze (merge.c), which ThreadSanitizer cannot
 * see; and they read whole pages, AddressSanitizer's redzones and freed
 * chunks included. These helpers are therefore excluded from sanitizer
 * instrumentation and avoid the intercepted memcmp/memcpy, so a sanitizer
 * build reports the application's bugs, not reads that are ours by design.
 */
#ifndef SAMEPAGE_PAGE_H
#define SAMEPAGE_PAGE_H

#include <stddef.h>

/* 1 when the n bytes at a and b are equal. */
int page_equal(const void *a, const void *b, size_t n);
/* 1 when the n bytes at p are all zero. */
int page_is_zero(const void *p, size_t n);

#endif
