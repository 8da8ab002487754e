/* SPDX-License-Identifier: MIT */
/*
 * arena — all of libsamepage's own memory, carved from one reservation.
 *
 * The scanner writes this memory while application pages are frozen, so it
 * must never merge (freeze) any of it; under merge-any it would otherwise
 * look like any other anonymous memory. Naming mappings
 * (PR_SET_VMA_ANON_NAME) is not enough: kernels without
 * CONFIG_ANON_VMA_NAME refuse it. One reservation is simply excluded by
 * address. Blocks are powers of two of pages; freed blocks are kept per
 * size for reuse and their memory is given back with MADV_DONTNEED.
 * Not thread-safe: callers hold lib.lock (or are creating the context).
 */
#ifndef SAMEPAGE_ARENA_H
#define SAMEPAGE_ARENA_H

#include <stddef.h>
#include <stdint.h>

#define ARENA_CLASSES 40
#define ARENA_FREE_SLOTS 32

struct arena {
	uintptr_t base, end, top;
	struct {
		uintptr_t blk[ARENA_FREE_SLOTS];
		uint32_t n;
	} free[ARENA_CLASSES];
};

/* Reserve the arena and place a struct of `first` bytes at its start
 * (the context that holds the struct arena itself). NULL on failure. */
void *arena_create(size_t first, size_t arena_offset);
/* Zeroed memory of at least len bytes, or NULL. */
void *arena_alloc(struct arena *a, size_t len);
void arena_free(struct arena *a, void *p, size_t len);
/* Does [s, e) overlap the arena? */
int arena_overlaps(const struct arena *a, uintptr_t s, uintptr_t e);

#endif
