/* SPDX-License-Identifier: MIT */
/*
 * index — the daemon's stable and unstable indexes (kernel KSM's two trees).
 *
 * Stable: content hash → pool pages holding that content. Pages with the
 * same hash are chained through pool_page.next; more than one page per hash
 * exists only when max_page_sharing filled the first (a "stable node chain"
 * of "dups" in the kernel's words) or two contents collide on the hash.
 *
 * Unstable: content hash → the first page (connection, address) seen with
 * that hash in the current generation. Only pages whose hash did not change
 * between two scans of their process are offered, so it holds pages that
 * are unique but quiet. Emptied whenever a generation ends: a generation
 * ends once every scanning process has completed a pass that started inside
 * it, so two equal quiet pages are always offered within one generation and
 * always meet (kernel KSM's smart_scan can keep them apart forever).
 *
 * Not thread-safe: owned by the daemon's event loop.
 */
#ifndef SAMEPAGE_INDEX_H
#define SAMEPAGE_INDEX_H

#include <stdint.h>

#include "map.h"
#include "pool.h"

struct unstable_item {
	uint64_t addr;
	uint32_t conn;
	uint32_t pad;
};

struct index {
	uint32_t *heads;       /* stable: first pool id of each hash's chain (index.c) */
	size_t cap, nheads;
	struct map unstable;   /* hash → the page (connection, address), packed */
	uint64_t chains, dups; /* stable_node_chains, stable_node_dups */
};

int index_init(struct index *ix);
void index_fini(struct index *ix);

/* A pool page with this content hash that has fewer than max_sharing refs,
 * or SP_POOL_NONE. */
uint32_t stable_find(struct index *ix, struct pool *p, uint64_t hash, uint32_t max_sharing);
/* The first pool page of this hash's chain (walk on through
 * pool_page.next, checking each page's hash), or SP_POOL_NONE. */
uint32_t stable_first(struct index *ix, struct pool *p, uint64_t hash);
/* Does any pool page have this content hash (full chains included)? */
int stable_has(struct index *ix, struct pool *p, uint64_t hash);
/* Add a freshly allocated page to its hash's chain. 0 or -ENOMEM. */
int stable_insert(struct index *ix, struct pool *p, uint32_t id);
/* Remove a page whose refs reached 0 from its chain. */
void stable_remove(struct index *ix, struct pool *p, uint32_t id);

/* Offer (conn, addr) with hash. 1: another page with that hash is there
 * (the entry is consumed and copied to *matched when not NULL: the caller
 * turns the offered page into a pool page and tells the other holder); 0: now
 * recorded; -ENOMEM. The same page offered again is not a match, nor is
 * the page of a connection that closed since (alive(ctx, conn) == 0): its
 * entry is replaced, so a process that exited makes nobody create pool
 * pages that only they map. */
int unstable_offer(struct index *ix, uint64_t hash, uint32_t conn, uint64_t addr,
		   int (*alive)(void *ctx, uint32_t conn), void *ctx,
		   struct unstable_item *matched);
/* Start a new generation: forget every entry. */
void unstable_reset(struct index *ix);
uint64_t unstable_count(const struct index *ix);

/* Debug check of chain bookkeeping; 0 or -EUCLEAN. */
int index_check(struct index *ix, struct pool *p);
uint64_t index_bytes(const struct index *ix);

#endif
