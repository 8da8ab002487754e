/* SPDX-License-Identifier: MIT */
/* arena — see arena.h. */
#define _GNU_SOURCE
#include "arena.h"

#include <errno.h>
#include <sys/mman.h>

#include "os.h"
#include "sizes.h"

#define CHUNK_ROUND ((size_t)1 << 20)
#define CHUNK_MIN ((size_t)4 << 20)
#define GUARD ((size_t)SP_PAGE)

static size_t round_up(size_t n, size_t to)
{
	return (n + to - 1) & ~(to - 1);
}

/* The size class of len; ARENA_CLASSES when it has none. */
static unsigned class_of(size_t len, size_t *rounded)
{
	size_t sz = SP_PAGE;
	unsigned c = 0;

	while (sz < len && c < ARENA_CLASSES) {
		sz <<= 1;
		c++;
	}
	*rounded = sz;
	return c;
}

/* len bytes between two PROT_NONE guard pages. Address space, not memory:
 * untouched pages cost nothing. Without the guards the kernel folds a
 * chunk into a neighbouring mapping of the program with the same flags
 * (MAP_NORESERVE and read-write: a sparse table, a JIT heap) wherever
 * mappings cannot be told apart by name, and eligible() then excluded the
 * program's memory with ours (seen: 16 GiB marked, nothing merged). */
static void *map_chunk(size_t len)
{
	char *m = os_mmap(NULL, len + 2 * GUARD, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (m == MAP_FAILED)
		return MAP_FAILED;
	if (os_mprotect(m + GUARD, len, PROT_READ | PROT_WRITE) < 0) {
		os_munmap(m, len + 2 * GUARD);
		return MAP_FAILED;
	}
	os_name_mapping(m + GUARD, len); /* a courtesy where the kernel supports names */
	return m + GUARD;
}

static void add_chunk(struct arena *a, void *m, size_t len)
{
	struct arena_chunk *ch = &a->chunk[a->nchunks++];

	ch->base = ch->top = (uintptr_t)m;
	ch->end = ch->base + len;
	a->reserved += len;
}

void *arena_create(size_t first, size_t arena_offset, size_t reserve)
{
	/* The head is never freed: it needs no size class. */
	size_t head = round_up(first, SP_PAGE);
	size_t len = round_up(reserve > head ? reserve : head, CHUNK_ROUND);
	void *m = map_chunk(len);
	struct arena *a;

	if (m == MAP_FAILED)
		return NULL;
	a = (struct arena *)((char *)m + arena_offset);
	add_chunk(a, m, len);
	a->chunk[0].top += head;
	return m;
}

/* sz bytes from the first chunk with room for them, or NULL. */
static void *carve(struct arena *a, size_t sz)
{
	for (uint32_t i = 0; i < a->nchunks; i++) {
		struct arena_chunk *ch = &a->chunk[i];
		if (ch->end - ch->top >= sz) {
			ch->top += sz;
			return (void *)(ch->top - sz);
		}
	}
	return NULL;
}

/* A block at the top of its chunk goes back to it, for blocks of any size. */
static int uncarve(struct arena *a, uintptr_t p, size_t sz)
{
	for (uint32_t i = 0; i < a->nchunks; i++) {
		struct arena_chunk *ch = &a->chunk[i];
		if (p >= ch->base && p < ch->end) {
			if (p + sz != ch->top)
				return 0;
			ch->top = p;
			return 1;
		}
	}
	return 0;
}

/* A chunk with room for sz more bytes. Geometric, so that chunks stay few,
 * but modest: what is reserved and unused is address space the program
 * may need under `ulimit -v`; when the limit leaves no more, just sz. */
static int grow(struct arena *a, size_t sz)
{
	size_t want = a->reserved / 4, len;
	void *m;

	if (a->nchunks == ARENA_CHUNKS)
		return -ENOSPC;
	if (want < CHUNK_MIN)
		want = CHUNK_MIN;
	len = round_up(want > sz ? want : sz, CHUNK_ROUND);
	m = map_chunk(len);
	if (m == MAP_FAILED && len > sz) {
		len = sz;
		m = map_chunk(len);
	}
	if (m == MAP_FAILED)
		return -ENOMEM;
	add_chunk(a, m, len);
	return 0;
}

static void *unspill(struct arena *a, unsigned c)
{
	uintptr_t *p = (uintptr_t *)a->free[c].spill;

	a->free[c].spill = *p;
	*p = 0; /* the rest of the block was zeroed when it was freed */
	return p;
}

void *arena_alloc(struct arena *a, size_t len)
{
	size_t sz;
	unsigned c = class_of(len, &sz);
	void *p;

	if (c >= ARENA_CLASSES)
		return NULL;
	if (a->free[c].n)
		return (void *)a->free[c].blk[--a->free[c].n]; /* zero: MADV_DONTNEED'd when freed */
	if (a->free[c].spill)
		return unspill(a, c);
	p = carve(a, sz);
	if (!p && grow(a, sz) == 0)
		p = carve(a, sz);
	return p;
}

void arena_free(struct arena *a, void *p, size_t len)
{
	size_t sz;
	unsigned c = class_of(len, &sz);

	if (!p || c >= ARENA_CLASSES)
		return;
	/* Memory back to the kernel; the next user reads zeros. */
	os_madvise(p, sz, MADV_DONTNEED);
	if (uncarve(a, (uintptr_t)p, sz))
		return;
	if (a->free[c].n < ARENA_FREE_SLOTS) {
		a->free[c].blk[a->free[c].n++] = (uintptr_t)p;
		return;
	}
	/* Lost address space would have to be reserved anew: keep the block,
	 * at the cost of the one page its link is written to. */
	*(uintptr_t *)p = a->free[c].spill;
	a->free[c].spill = (uintptr_t)p;
}

int arena_overlaps(const struct arena *a, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < a->nchunks; i++)
		if (s < a->chunk[i].end && e > a->chunk[i].base)
			return 1;
	return 0;
}
