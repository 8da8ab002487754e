/* SPDX-License-Identifier: MIT */
/* sort — see sort.h. */
#include "sort.h"

#include <string.h>

static void swap(unsigned char *a, unsigned char *b, size_t size)
{
	unsigned char t[64];

	memcpy(t, a, size);
	memcpy(a, b, size);
	memcpy(b, t, size);
}

static void sift_down(unsigned char *v, size_t root, size_t n, size_t size,
		      int (*cmp)(const void *, const void *))
{
	for (;;) {
		size_t child = 2 * root + 1;
		if (child >= n)
			return;
		if (child + 1 < n && cmp(v + child * size, v + (child + 1) * size) < 0)
			child++;
		if (cmp(v + root * size, v + child * size) >= 0)
			return;
		swap(v + root * size, v + child * size, size);
		root = child;
	}
}

void sort_inplace(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
	unsigned char *v = base;

	if (n < 2 || size > 64)
		return;
	for (size_t i = n / 2; i-- > 0;)
		sift_down(v, i, n, size, cmp);
	for (size_t end = n - 1; end > 0; end--) {
		swap(v, v + end * size, size);
		sift_down(v, 0, end, size, cmp);
	}
}
