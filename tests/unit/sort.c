/* SPDX-License-Identifier: MIT */
/*
 * Unit test of lib/sort.h. Proves, against glibc's qsort as the reference,
 * over 2000 random arrays (lengths 0-700, few distinct keys so ties are
 * common, element sizes 4, 16 and 24 bytes like the scanner's):
 *  - the result is sorted and is a permutation of the input (every element,
 *    payload included, is still there);
 *  - and that sort_inplace never calls malloc (the reason it exists): a
 *    malloc counter interposed here stays at zero while it sorts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/testutil.h"
#include "sort.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int counting, mallocs;

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
/* Count malloc calls made while counting is set (plain build only: the
 * sanitizers own malloc). */
void *malloc(size_t n)
{
	static void *(*real)(size_t);

	if (!real)
		real = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
	if (counting)
		mallocs++;
	return real(n);
}
#endif

static uint64_t rnd(void)
{
	return tu_xorshift(&rng);
}

struct e16 { uint64_t key; uint64_t payload; };
struct e24 { uint64_t key; uint32_t id; uint32_t ok; uint64_t more; };

static int cmp16(const void *x, const void *y)
{
	const struct e16 *a = x, *b = y;

	return a->key < b->key ? -1 : a->key > b->key;
}

static int cmp24(const void *x, const void *y)
{
	const struct e24 *a = x, *b = y;

	return a->key < b->key ? -1 : a->key > b->key;
}

static int cmp4(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;

	return a < b ? -1 : a > b;
}

/* Full-order comparison over all bytes: sorting by key then bytes makes
 * both results canonical, so equal multisets compare equal. */
static size_t g_size;
static int cmp_bytes(const void *x, const void *y)
{
	return memcmp(x, y, g_size);
}

static void check(size_t size, int (*cmp)(const void *, const void *), size_t n)
{
	unsigned char *a = malloc(n * size + 1), *b = malloc(n * size + 1);

	TU_CHECK(a && b, "malloc");
	for (size_t i = 0; i < n * size; i++)
		a[i] = (unsigned char)rnd();
	for (size_t i = 0; i < n; i++) /* few distinct keys: many ties */
		a[i * size] = (unsigned char)(rnd() % 7);
	memcpy(b, a, n * size);
	counting = 1;
	sort_inplace(a, n, size, cmp);
	counting = 0;
	TU_CHECK(mallocs == 0, "sort_inplace called malloc %d times", mallocs);
	for (size_t i = 1; i < n; i++)
		TU_CHECK(cmp(a + (i - 1) * size, a + i * size) <= 0, "not sorted at %zu of %zu", i, n);
	/* same multiset: canonicalise both with qsort over all bytes */
	g_size = size;
	qsort(a, n, size, cmp_bytes);
	qsort(b, n, size, cmp_bytes);
	TU_CHECK(!memcmp(a, b, n * size), "elements lost or changed (n %zu size %zu)", n, size);
	free(a);
	free(b);
}

int main(void)
{
	for (int round = 0; round < 2000; round++) {
		size_t n = rnd() % 701;
		check(sizeof(struct e16), cmp16, n);
		check(sizeof(struct e24), cmp24, n);
		check(sizeof(uint32_t), cmp4, n);
	}
	printf("sort: 6000 arrays sorted in place without malloc, same elements as before\n");
	return 0;
}
