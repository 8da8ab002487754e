/* SPDX-License-Identifier: MIT */
/*
 * refs — the set of pool references one connection holds (invariant 2),
 * with a count per pool page.
 *
 * A process's references cluster: it maps runs of consecutive pool pages,
 * and most pages it maps once. So the set is a bitmap per pool segment the
 * process holds anything in (one bit per page: 8 KiB per 256 MiB segment),
 * plus a map of the rare extra references beyond the first (one process
 * mapping the same content at several addresses). 2 processes x 512 MiB of
 * merged memory: 16 KiB, where a hash map of id → count took 8 MiB.
 *
 * Not thread-safe: owned by the daemon's event loop.
 */
#ifndef SAMEPAGE_REFS_H
#define SAMEPAGE_REFS_H

#include <stddef.h>
#include <stdint.h>

#include "map.h"

struct refs {
	struct map segs;   /* segment → struct refs_seg * */
	struct map extra;  /* pool id → references beyond the first */
	uint64_t total;    /* references, counting extras */
};

void refs_init(struct refs *r);
void refs_fini(struct refs *r);
/* One more reference to id. 0 or -ENOMEM. */
int refs_add(struct refs *r, uint32_t id);
/* n more references to id. 0 or -ENOMEM. */
int refs_add_n(struct refs *r, uint32_t id, uint32_t n);
/* One reference less; -ENOENT when none is held. */
int refs_drop(struct refs *r, uint32_t id);
/* References held to id. */
uint32_t refs_count(const struct refs *r, uint32_t id);
/* Is any page of pool segment seg held? */
int refs_holds_seg(const struct refs *r, uint32_t seg);
/* Iterate pool pages held: start with *pos = 0; 0 at the end. */
int refs_next(const struct refs *r, uint64_t *pos, uint32_t *id, uint32_t *count);
size_t refs_bytes(const struct refs *r);

#endif
