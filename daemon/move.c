/* SPDX-License-Identifier: MIT */
/*
 * move — defragmentation (DESIGN.md, "Defragmentation"): C_MOVE.
 *
 * A process whose merged pages map scattered pool pages pays a VMA for
 * each. It asks, for a run of its pages in address order, for pool pages
 * with the same bytes that are consecutive: the daemon copies each old page
 * into a fresh extent, takes a reference for the process (invariant 2, as
 * for any page it hands out) and remembers where each old page went
 * (samepaged.moved); the copy replaces the old page in the stable index
 * when the old one is freed. Every other sharer of the same pages asks the same and
 * gets the same new pages, so where the sharers' layouts agree they all end
 * up with one VMA for the run, and the old pages are freed when the last
 * of them lets go. A page is copied only once its mappers have all asked
 * (all_asked()): a sharer whose layout differs never asks, and
 * copying for the others would cost a page of saving each for good. The
 * process maps the new pages under the same
 * freeze-and-verify rules as any merge (invariant 1); nothing here touches
 * a page anyone maps: a page copied into is fresh, and the old ones stay
 * until their references go.
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <string.h>

/* May c ask to move pool page id: it is live, in c's domain, and c maps it
 * unwritten (a written copy reads nothing of it)? */
static int movable(struct samepaged *d, struct conn *c, uint32_t id)
{
	return id / SP_SEG_PAGES < SP_MAX_SEGS && pool_page(&d->pool, id) &&
	       pool_seg_domain(&d->pool, id / SP_SEG_PAGES) == c->domain &&
	       refs_count(&c->refs, id) > refs_count(&c->cowed, id);
}

/* Where an earlier C_MOVE put page id's bytes, if that page still holds
 * them; else SP_POOL_NONE (and the stale note goes). */
static uint32_t moved_to(struct samepaged *d, uint32_t id)
{
	uint64_t *v = map_get(&d->moved, id);
	struct pool_page *to, *from = pool_page(&d->pool, id);

	if (!v)
		return SP_POOL_NONE;
	to = pool_page(&d->pool, (uint32_t)*v);
	if (to && to->hash == from->hash &&
	    pool_seg_domain(&d->pool, (uint32_t)*v / SP_SEG_PAGES) ==
		    pool_seg_domain(&d->pool, id / SP_SEG_PAGES) &&
	    !memcmp(pool_data(&d->pool, (uint32_t)*v), pool_data(&d->pool, id), SP_PAGE))
		return (uint32_t)*v;
	map_del(&d->moved, id);
	return SP_POOL_NONE;
}

/* Have all mappers of page id asked to move it? c has now. Counted afresh
 * each time from the askers' own references (conn.asked: the pages each
 * asked for), so that a mapping that went since (written, unmapped, its
 * process gone) never counts: only unwritten mappings of askers, against
 * all unwritten mappings of the page. */
static int all_asked(struct samepaged *d, struct conn *c, uint32_t id)
{
	struct pool_page *pg = pool_page(&d->pool, id);
	uint64_t askers = 0;

	if (map_put(&c->asked, id, 1))
		return 0; /* out of memory: asked again later */
	for (struct conn *x = d->conns; x; x = x->next)
		if (x->asked.count && map_get(&x->asked, id))
			askers += refs_count(&x->refs, id) - refs_count(&x->cowed, id);
	return askers >= pg->refs - pg->cowed;
}

/* Copy page from into the reserved page to, index it in from's place and
 * give c a reference. to, or SP_POOL_NONE (to freed again). */
static uint32_t copy_to(struct samepaged *d, struct conn *c, uint32_t from, uint32_t to)
{
	pool_alloc_reserved(&d->pool, to, pool_data(&d->pool, from),
			    pool_page(&d->pool, from)->hash);
	/* Invariant 2: the reference is c's before c maps the page. */
	if (ref_take(d, c, to)) {
		pool_free(&d->pool, to);
		return SP_POOL_NONE;
	}
	/* The old page stays in the stable index until it is freed (then the
	 * copy takes its place, page_adjust()): an asker that finds the copy
	 * no better and gives it back leaves the index as it was. Out of
	 * memory for the note, later askers get copies of their own. */
	if (map_put(&d->moved, from, to) == 0)
		d->moved_pages++;
	return to;
}

int on_move(struct samepaged *d, struct conn *c, const struct sp_ids *q)
{
	struct sp_ids *r = (struct sp_ids *)d->buf; /* q lives in d->in */
	uint32_t n = q->n, fresh = 0, first = 0, got = 0, used = 0;

	if (c->observer)
		return -EPROTO;
	r->n = n;
	/* Pages moved before (by another sharer) go where they went. */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t old = q->id[i], to;
		r->id[i] = SP_POOL_NONE;
		if (!movable(d, c, old))
			continue;
		to = moved_to(d, old);
		if (to == SP_POOL_NONE) {
			if (!all_asked(d, c, old))
				continue;
			r->id[i] = SP_POOL_CREATE; /* needs a fresh page */
			fresh++;
		} else if (ref_take(d, c, to) == 0) {
			r->id[i] = to;
		}
	}
	/* The others get consecutive fresh pages, an extent at a time. */
	for (uint32_t i = 0; i < n && fresh; i++) {
		if (r->id[i] != SP_POOL_CREATE)
			continue;
		if (used == got) {
			used = got = 0;
			if (pool_reserve(&d->pool, c->domain, fresh, &first, &got))
				got = 0;
		}
		fresh--;
		r->id[i] = got ? copy_to(d, c, q->id[i], first + used++) : SP_POOL_NONE;
	}
	if (used < got)
		pool_unreserve(&d->pool, first + used, got - used);
	return reply(c, D_MOVE, r, sizeof(*r) + n * sizeof(uint32_t));
}
