/* SPDX-License-Identifier: MIT */
/* arena — see arena.h. */
#define _GNU_SOURCE
#include "arena.h"

#include <string.h>
#include <sys/mman.h>

#include "os.h"

static unsigned class_of(size_t len, size_t *rounded)
{
	size_t sz = 4096;
	unsigned c = 0;

	while (sz < len) {
		sz <<= 1;
		c++;
	}
	*rounded = sz;
	return c;
}

void *arena_create(size_t first, size_t arena_offset)
{
	/* Address space, not memory: untouched pages cost nothing. Smaller
	 * tries for strict overcommit, which charges NORESERVE mappings too. */
	static const size_t tries[] = { (size_t)64 << 30, (size_t)8 << 30, (size_t)1 << 30 };
	size_t head, len = 0;
	void *m = MAP_FAILED;

	for (unsigned i = 0; i < sizeof(tries) / sizeof(tries[0]) && m == MAP_FAILED; i++) {
		len = tries[i];
		m = os_mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	}
	if (m == MAP_FAILED)
		return NULL;
	os_name_mapping(m, len); /* a courtesy where the kernel supports names */
	class_of(first, &head);
	struct arena *a = (struct arena *)((char *)m + arena_offset);
	a->base = (uintptr_t)m;
	a->end = a->base + len;
	a->top = a->base + head;
	return m;
}

void *arena_alloc(struct arena *a, size_t len)
{
	size_t sz;
	unsigned c = class_of(len, &sz);
	void *p;

	if (c >= ARENA_CLASSES)
		return NULL;
	if (a->free[c].n) {
		p = (void *)a->free[c].blk[--a->free[c].n];
		return p; /* zero: MADV_DONTNEED'd when freed */
	}
	if (a->top + sz > a->end || a->top + sz < a->top)
		return NULL;
	p = (void *)a->top;
	a->top += sz;
	return p;
}

void arena_free(struct arena *a, void *p, size_t len)
{
	size_t sz;
	unsigned c = class_of(len, &sz);

	if (!p)
		return;
	/* Memory back to the kernel; the next user reads zeros. */
	os_madvise(p, sz, MADV_DONTNEED);
	if (c < ARENA_CLASSES && a->free[c].n < ARENA_FREE_SLOTS)
		a->free[c].blk[a->free[c].n++] = (uintptr_t)p;
	/* else: the address space is forgotten; the reservation is large */
}

int arena_overlaps(const struct arena *a, uintptr_t s, uintptr_t e)
{
	return s < a->end && e > a->base;
}
