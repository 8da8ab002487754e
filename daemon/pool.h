/* SPDX-License-Identifier: MIT */
/*
 * pool — the daemon's pages that merged memory maps, copy-on-write.
 *
 * The pool is a set of segments, each a sealed memfd of SP_SEG_PAGES pages.
 * The daemon maps a writable shared window over a segment and then adds
 * F_SEAL_FUTURE_WRITE, so from then on only that window can change the file:
 * write(), pwrite() and new writable shared mappings fail for everyone,
 * while processes map pages MAP_PRIVATE and get the kernel's COW.
 *
 * Why segments and not one file (DESIGN.md had one): F_SEAL_FUTURE_WRITE
 * also makes fallocate(PUNCH_HOLE) and MADV_REMOVE fail with EPERM (checked
 * on Linux 6.18), so a sealed file can never give a page's memory back. A
 * freed page is reused for new content; a segment whose pages are all free
 * is closed and its memory returns once no process maps it (segment 0 too:
 * a daemon whose processes have all gone keeps no pool memory).
 *
 * A pool page is named by its id: segment * SP_SEG_PAGES + index.
 * Not thread-safe: owned by the daemon's single event loop.
 */
#ifndef SAMEPAGE_POOL_H
#define SAMEPAGE_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"


struct pool_page {
	uint64_t hash;  /* index key: XXH3 of the content (the daemon's own), domain mixed in */
	uint32_t refs;  /* VMA references, summed over every holder */
	uint32_t cowed; /* of those, mappings whose process wrote its copy (C_COW) */
	uint32_t next;  /* next page with the same hash (stable chain) */
	uint32_t cowed_ms; /* when cowed last rose from 0 (ms, wrapping) */
};

struct pool_seg {
	int fd;               /* -1: slot not in use */
	uint64_t domain;      /* merge domain whose pages it holds: a segment's fd
				 reads every page of it, so domains never share one */
	unsigned char *win;   /* the daemon's writable window */
	struct pool_page *pages;
	uint64_t *busy;       /* a bit per page: holds content or is reserved */
	uint64_t *live;       /* a bit per page: holds content */
	uint32_t used;        /* pages holding content */
	uint32_t reserved;    /* pages set aside for one connection's next pages */
	uint32_t touched;     /* pages [touched, SP_SEG_PAGES) never written: no memory yet */
};

/* pool_page.hash of a hole: a page allocated for a filled gap
 * (pool_alloc_hole()), never written, so no memory, and in no index. */
#define POOL_HOLE 0ull

struct pool {
	struct pool_seg segs[SP_MAX_SEGS];
	uint32_t nsegs;       /* slots [0, nsegs) may be in use */
	uint64_t pages_used;  /* holes included */
	uint64_t holes;
	uint32_t segs_live;
};

int pool_init(struct pool *p);
void pool_fini(struct pool *p);
/* Allocate a page in a segment of domain, copy data into it (NULL: the
 * caller writes it through pool_slot() before anyone can map it), record
 * hash. Id or -ENOMEM/-errno. */
int64_t pool_alloc_in(struct pool *p, uint64_t domain, const void *data, uint64_t hash);
/* pool_alloc_in() the default domain 0. */
int64_t pool_alloc(struct pool *p, const void *data, uint64_t hash);
/* Set aside up to n free consecutive ids for one creator (an extent), so
 * that the pages it creates one after the other get consecutive ids: a
 * process maps a run of consecutive pool pages with one mmap, in one VMA,
 * and two processes creating at the same time would otherwise interleave
 * their ids. Freed pages are taken first, as whole runs: a sealed segment
 * cannot give a page's memory back, so a freed page is only worth anything
 * once reused, and handing them out one by one in the order they were freed
 * gave the next workload scattered ids (a VMA a page). 0 (with *first and
 * *got) or -errno. */
int pool_reserve(struct pool *p, uint64_t domain, uint32_t n, uint32_t *first, uint32_t *got);
/* Allocate the reserved id, copy data into it. */
void pool_alloc_reserved(struct pool *p, uint32_t id, const void *data, uint64_t hash);
/* Allocate exactly id, copy data into it: 0, or -EBUSY when id holds
 * content, is reserved, or its segment is not domain's (a run's extent
 * grows by its next id only: DESIGN.md, "Runs of one content"). */
int pool_alloc_at(struct pool *p, uint64_t domain, uint32_t id, const void *data, uint64_t hash);
/* Allocate exactly id as a hole (POOL_HOLE): 0 or -EBUSY as
 * pool_alloc_at(). Its memory stays unwritten: a private mapping of it
 * reads zeros, and costs nothing until read. */
int pool_alloc_hole(struct pool *p, uint64_t domain, uint32_t id);
/* Give page id (holding content or a hole) new content's hash: the caller
 * wrote the content (a hole stops being one). */
void pool_set_hash(struct pool *p, uint32_t id, uint64_t hash);
/* Would pool_alloc_at() succeed? */
int pool_free_at(const struct pool *p, uint64_t domain, uint32_t id);
/* Give back reserved ids [first, first + n) never allocated. */
void pool_unreserve(struct pool *p, uint32_t first, uint32_t n);
/* Return a page whose refs reached 0 (invariant 2: only then) to its
 * segment; may close the segment. */
void pool_free(struct pool *p, uint32_t id);
/* NULL when id does not name a page holding content. */
struct pool_page *pool_page(struct pool *p, uint32_t id);
const void *pool_data(struct pool *p, uint32_t id);
/* The daemon's writable view of a page it just allocated (refs == 0). */
unsigned char *pool_slot(struct pool *p, uint32_t id);
/* fd of a live segment, or -ENOENT. */
int pool_seg_fd(struct pool *p, uint32_t seg);
/* Domain of a live segment (0 for none). */
uint64_t pool_seg_domain(const struct pool *p, uint32_t seg);

#endif
