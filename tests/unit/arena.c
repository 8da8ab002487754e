/* SPDX-License-Identifier: MIT */
/*
 * Unit test of lib/arena.h. Proves:
 *  - the first chunk is what was asked (not gigabytes), and holds the head;
 *  - the arena grows by chunks when a block does not fit, each guarded by
 *    PROT_NONE pages (no VMA of the program can fold into it), and
 *    arena_overlaps() covers every chunk and nothing beside them;
 *  - blocks come zeroed, freed ones are reused (more than the free slots
 *    of one size too: none is lost) and come back zeroed;
 *  - the last block carved goes back to its chunk for blocks of any size;
 *  - under RLIMIT_AS with no room left, arena_alloc returns NULL and the
 *    arena still works within what it has (plain build: sanitizer
 *    runtimes reserve terabytes, a limit means nothing there).
 * arena.c is compiled in here: unit tests link the daemon's sources.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "../lib/testutil.h"
#include "../../lib/arena.c"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SAN_BUILD 1
#else
#define SAN_BUILD 0
#endif

#define MIB ((size_t)1 << 20)
#define FIRST (8 * MIB)

struct head {
	char pad[100];
	struct arena arena;
};

static int all_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

/* PROT_* of the mapping at a, from /proc/self/maps; -1 when unmapped. */
static int prot_at(uintptr_t a)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512], perm[5];
	unsigned long s, e;
	int prot = -1;

	TU_CHECK(f, "maps");
	while (prot < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %4s", &s, &e, perm) == 3 && a >= s && a < e)
			prot = (perm[0] == 'r' ? PROT_READ : 0) | (perm[1] == 'w' ? PROT_WRITE : 0);
	fclose(f);
	return prot;
}

static void check_chunks(const struct arena *a)
{
	for (uint32_t i = 0; i < a->nchunks; i++) {
		const struct arena_chunk *ch = &a->chunk[i];
		TU_CHECK(arena_overlaps(a, ch->base, ch->base + 1) &&
			 arena_overlaps(a, ch->end - 1, ch->end), "chunk %u not covered", i);
		TU_CHECK(!arena_overlaps(a, ch->base - GUARD, ch->base) &&
			 !arena_overlaps(a, ch->end, ch->end + GUARD),
			 "the guards of chunk %u counted as arena", i);
		TU_CHECK(prot_at(ch->base - GUARD) == PROT_NONE && prot_at(ch->end) == PROT_NONE,
			 "chunk %u has no guard pages", i);
		TU_CHECK(prot_at(ch->base) == (PROT_READ | PROT_WRITE), "chunk %u not writable", i);
	}
}

static void test_grow(struct arena *a)
{
	unsigned char *big;

	TU_CHECK(a->nchunks == 1 && a->reserved == FIRST, "first chunk %zu bytes, %u chunks",
		 a->reserved, a->nchunks);
	big = arena_alloc(a, 3 * FIRST); /* 32 MiB block: cannot fit */
	TU_CHECK(big && a->nchunks == 2, "no growth: %p, %u chunks", (void *)big, a->nchunks);
	TU_CHECK(a->reserved <= FIRST + 32 * MIB + CHUNK_ROUND, "grew to %zu bytes", a->reserved);
	TU_CHECK(all_zero(big, 32 * MIB), "new block not zero");
	memset(big, 0xab, 32 * MIB);
	for (int i = 0; i < 8; i++)
		TU_CHECK(arena_alloc(a, 4 * MIB), "4 MiB block %d", i);
	TU_CHECK(a->nchunks >= 3, "only %u chunks", a->nchunks);
	check_chunks(a);
	arena_free(a, big, 3 * FIRST);
	TU_CHECK(arena_alloc(a, 20 * MIB) == big, "freed block not reused");
	TU_CHECK(all_zero(big, 32 * MIB), "reused block not zero");
}

static void test_reuse(struct arena *a)
{
	enum { N = ARENA_FREE_SLOTS * 3 };
	static unsigned char *blk[N];
	uint32_t chunks;

	for (int i = 0; i < N; i++) {
		blk[i] = arena_alloc(a, 8192);
		TU_CHECK(blk[i], "8 KiB block %d", i);
		memset(blk[i], 0x5a, 8192);
	}
	arena_alloc(a, 4096); /* none of blk[] is the last carved now */
	for (int i = 0; i < N; i++)
		arena_free(a, blk[i], 8192);
	chunks = a->nchunks;
	for (int i = 0; i < N; i++) {
		unsigned char *p = arena_alloc(a, 8192);
		int found = 0;
		for (int k = 0; k < N; k++)
			found |= p == blk[k];
		TU_CHECK(found, "block %d not one of the freed ones", i);
		TU_CHECK(all_zero(p, 8192), "reused 8 KiB block %d not zero", i);
	}
	TU_CHECK(a->nchunks == chunks, "reuse grew the arena");
}

static void test_uncarve(struct arena *a)
{
	unsigned char *p = arena_alloc(a, 4096), *q;

	arena_free(a, p, 4096);
	q = arena_alloc(a, 64 << 10); /* another size: from the chunk, where p was */
	TU_CHECK(q == p, "last block not returned to its chunk");
	arena_free(a, q, 64 << 10);
}

static void test_limit(struct arena *a)
{
	struct rlimit old, r;
	void *fill[64];
	int n = 0;

	if (SAN_BUILD) {
		printf("arena: RLIMIT_AS part skipped under a sanitizer\n");
		return;
	}
	TU_CHECK(getrlimit(RLIMIT_AS, &old) == 0, "getrlimit");
	r = old;
	r.rlim_cur = 0; /* below what is mapped: every new mapping fails */
	TU_CHECK(setrlimit(RLIMIT_AS, &r) == 0, "setrlimit: %s", strerror(errno));
	TU_CHECK(!arena_alloc(a, 1024 * MIB), "1 GiB block under RLIMIT_AS 0");
	/* What the chunks still hold is still handed out. */
	while (n < 64 && (fill[n] = arena_alloc(a, 64 << 10)))
		n++;
	TU_CHECK(n > 0, "nothing left in the chunks");
	TU_CHECK(setrlimit(RLIMIT_AS, &old) == 0, "setrlimit back");
	TU_CHECK(arena_alloc(a, 64 * MIB), "no growth once the limit is lifted");
}

int main(void)
{
	struct head *h = arena_create(sizeof(struct head), offsetof(struct head, arena), FIRST);
	struct arena *a;

	TU_CHECK(h, "arena_create: %s", strerror(errno));
	a = &h->arena;
	TU_CHECK(a->chunk[0].base == (uintptr_t)h && a->chunk[0].top == (uintptr_t)h + round_up(sizeof(*h), 4096),
		 "head not at the start");
	test_grow(a);
	test_reuse(a);
	test_uncarve(a);
	test_limit(a);
	check_chunks(a);
	printf("arena: %u chunks, %zu MiB reserved\n", a->nchunks, a->reserved / MIB);
	return 0;
}
