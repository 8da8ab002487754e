/* SPDX-License-Identifier: MIT */
/*
 * arena — all of libsamepage's own memory, carved from a few reservations.
 *
 * The scanner writes this memory while application pages are frozen, so it
 * must never merge (freeze) any of it; under merge-any it would otherwise
 * look like any other anonymous memory. Naming mappings
 * (PR_SET_VMA_ANON_NAME) is not enough: kernels without
 * CONFIG_ANON_VMA_NAME refuse it. The arena's chunks are simply excluded
 * by address (arena_overlaps); a PROT_NONE guard page on either side keeps
 * the kernel from folding a chunk and the program's memory into one VMA.
 *
 * Address space is the application's too: under `ulimit -v` (RLIMIT_AS)
 * every byte reserved here is one the program cannot map, so the arena
 * starts with one chunk sized for the context and its fixed buffers, and
 * grows by MAP_NORESERVE chunks (page entries: 8 bytes per mergeable
 * page) of about a quarter of what it holds, or just what is asked when
 * that much is not to be had. The chunk table is fixed (no malloc: the
 * arena is used while application threads may hold malloc's locks).
 *
 * Blocks are powers of two of pages. A freed block's memory goes back with
 * MADV_DONTNEED; the block itself goes back to its chunk when it was the
 * last carved, else it is kept per size for reuse (none is lost: lost
 * address space would have to be reserved again). Not thread-safe:
 * callers hold lib.lock (or are creating the context).
 */
#ifndef SAMEPAGE_ARENA_H
#define SAMEPAGE_ARENA_H

#include <stddef.h>
#include <stdint.h>

#define ARENA_CLASSES 40
#define ARENA_FREE_SLOTS 32
/* Each chunk adds at least a quarter (unless the limit leaves only what is
 * asked): 64 are far beyond any need. */
#define ARENA_CHUNKS 64

struct arena_chunk {
	uintptr_t base, top, end; /* [base, top) handed out, [top, end) never yet */
};

struct arena {
	struct arena_chunk chunk[ARENA_CHUNKS];
	uint32_t nchunks;
	size_t reserved;           /* bytes of all chunks */
	struct {
		uintptr_t blk[ARENA_FREE_SLOTS];
		uint32_t n;
		/* More free blocks of this size: each holds the next one's
		 * address in its first word, so none is ever lost. */
		uintptr_t spill;
	} free[ARENA_CLASSES];
};

/* Reserve the first chunk, of at least `reserve` bytes, and place a
 * struct of `first` bytes at its start (the context that holds the struct
 * arena itself, at arena_offset in it). NULL on failure. */
void *arena_create(size_t first, size_t arena_offset, size_t reserve);
/* Zeroed memory of at least len bytes, or NULL (the address space limit,
 * or no chunk left). */
void *arena_alloc(struct arena *a, size_t len);
void arena_free(struct arena *a, void *p, size_t len);
/* Does [s, e) overlap any chunk of the arena? */
int arena_overlaps(const struct arena *a, uintptr_t s, uintptr_t e);

#endif
