/* SPDX-License-Identifier: MIT */
/* page — see page.h. */
#define _GNU_SOURCE
#include "page.h"

#include <stdint.h>

/* Whole pages are read: ASan's redzones and freed chunks included. */
#if defined(__SANITIZE_THREAD__)
#define NO_SAN __attribute__((no_sanitize_thread))
#elif defined(__SANITIZE_ADDRESS__)
#define NO_SAN __attribute__((no_sanitize_address))
#else
#define NO_SAN
#endif
/* Keep the loops loops: gcc would turn them into (intercepted) libc calls. */
#define PLAIN NO_SAN __attribute__((optimize("no-tree-loop-distribute-patterns")))

PLAIN int page_equal(const void *a, const void *b, size_t n)
{
	const uint64_t *x = a, *y = b;
	uint64_t diff = 0;

	for (size_t i = 0; i < n / 8; i += 8) {
		for (size_t k = 0; k < 8; k++)
			diff |= x[i + k] ^ y[i + k];
		if (diff)
			return 0;
	}
	return 1;
}

PLAIN int page_is_zero(const void *p, size_t n)
{
	const uint64_t *x = p;
	uint64_t any = 0;

	for (size_t i = 0; i < n / 8; i += 8) {
		for (size_t k = 0; k < 8; k++)
			any |= x[i + k];
		if (any)
			return 0;
	}
	return 1;
}
