/* SPDX-License-Identifier: MIT */
/*
 * defrag — merged memory whose pool pages are scattered, gathered again
 * (DESIGN.md, "Defragmentation"). After a quiet pass, the scanner looks
 * for runs of adjacent pool VMAs of ours that each hold only a few pages
 * (merged from pages another process had pooled in another order, or by
 * hints in a random order), asks the daemon for the same bytes in
 * consecutive pool pages (C_MOVE, daemon/move.c) and maps those instead,
 * under the same freeze-and-verify rules as any merge (invariant 1): one
 * VMA where there were many. Every sharer with the same layout gets the
 * same new pages, so the saving stays; the old pages go with their last
 * reference.
 */
#define _GNU_SOURCE
#include "fault.h"
#include "lib.h"
#include "sort.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Worth it: at least this many VMAs, of fewer pages than DEFRAG_AVG each
 * on average. */
#define DEFRAG_MIN_VMAS 4
#define DEFRAG_AVG 32
/* Pages moved per pass at most: background work, a few chunks' worth. */
#define DEFRAG_PAGES_PER_PASS 4096
/* After a try that gained nothing (other sharers have not asked yet, or
 * never will: their layout differs), wait 1, 2, 4 ... up to this many
 * passes before the next. */
#define DEFRAG_BACKOFF_MAX 64

struct defrag_window {
	struct area *a;
	struct merge_item m[SP_MAX_MOVE];
	uint32_t old[SP_MAX_MOVE];
	uint32_t n;        /* pages: every page of nvmas whole VMAs */
	uint32_t nvmas;
};

int defrag_init(struct lib *l)
{
	const char *v = sp_env("SAMEPAGE_DEFRAG_VMAS");

	/* 0: from vm.max_map_count, at each pass (defrag_pass()). */
	l->defrag_vmas = v ? strtoul(v, NULL, 10) : 0;
	l->defrag = arena_alloc(&l->arena, sizeof(struct defrag_window));
	return l->defrag ? 0 : -ENOMEM;
}

/* Does VMA v map pool page id at p? */
static int maps_id(const struct lib *l, const struct vma *v, uintptr_t p, uint32_t id)
{
	return v->kind == VMA_POOL && v->private_ && id / SP_SEG_PAGES < SP_MAX_SEGS &&
	       l->segs[id / SP_SEG_PAGES].fd >= 0 && v->ino == l->segs[id / SP_SEG_PAGES].ino &&
	       v->pgoff + (p - v->start) / SP_PAGE == id % SP_SEG_PAGES;
}

/* Runs of consecutive ids among n ids of consecutive pages: the VMAs
 * they would take mapped anew. */
static uint32_t runs_of(const uint32_t *id, uint32_t n)
{
	uint32_t runs = 0;

	for (uint32_t i = 0; i < n; i++)
		runs += !i || id[i] != id[i - 1] + 1 || id[i] % SP_SEG_PAGES == 0;
	return runs;
}

/* Is every page of VMA v a merged, unwritten page of area a, mapping the
 * pool page its entry says? Only such VMAs are gathered: one holding a
 * written copy or anything else would be split by the new mapping. */
static int all_merged(struct lib *l, struct area *a, const struct vma *v)
{
	if (v->kind != VMA_POOL || !v->private_ || v->start < a->start || v->end > a->end)
		return 0;
	for (uintptr_t p = v->start; p < v->end; p += SP_PAGE) {
		const struct entry *e = entry_of(a, p);
		if (e->state != E_MERGED || !maps_id(l, v, p, e->pool))
			return 0;
	}
	return 1;
}

/* Collect into w the pages of the VMAs from v[i] on that follow one
 * another inside one area and hold merged, unwritten pages only, up to
 * SP_MAX_MOVE pages; returns the index of the first VMA not taken. */
static size_t collect(struct lib *l, struct defrag_window *w, size_t i)
{
	const struct vma *v = l->vmas.v;
	size_t j;

	w->n = w->nvmas = 0;
	w->a = track_area_at(l, v[i].start);
	for (j = i; j < l->vmas.n; j++) {
		if ((j > i && v[j].start != v[j - 1].end) || !w->a || !all_merged(l, w->a, &v[j]) ||
		    w->n + (v[j].end - v[j].start) / SP_PAGE > SP_MAX_MOVE)
			return j > i ? j : j + 1;
		for (uintptr_t p = v[j].start; p < v[j].end; p += SP_PAGE) {
			w->old[w->n] = entry_of(w->a, p)->pool;
			w->m[w->n++] = (struct merge_item){ .addr = p };
		}
		w->nvmas++;
	}
	return j;
}

static int cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;

	return a < b ? -1 : a > b;
}

/* Many small VMAs of distinct pool pages. One page mapped at many places
 * (2048 zero pages on one pool page) cannot form a run: never asked. */
static int fragmented(const struct defrag_window *w)
{
	uint32_t ids[SP_MAX_MOVE];

	if (w->nvmas < DEFRAG_MIN_VMAS || w->n >= w->nvmas * DEFRAG_AVG)
		return 0;
	memcpy(ids, w->old, w->n * sizeof(ids[0]));
	sort_inplace(ids, w->n, sizeof(ids[0]), cmp_u32);
	for (uint32_t i = 1; i < w->n; i++)
		if (ids[i] == ids[i - 1])
			return 0;
	return 1;
}

/* The daemon's new pages for w->old, each with a reference ours, into
 * w->m[].id (SP_POOL_NONE where it gave none). */
static int ask_move(struct lib *l, struct defrag_window *w)
{
	struct sp_ids *req = (struct sp_ids *)l->out;
	struct sp_msg m;
	int err;

	req->n = w->n;
	memcpy(req->id, w->old, w->n * sizeof(uint32_t));
	err = client_call(l, C_MOVE, req, sizeof(*req) + w->n * sizeof(uint32_t), D_MOVE, &m);
	if (err)
		return err;
	const struct sp_ids *r = (const void *)m.p;
	if (r->n != w->n)
		return -EPROTO;
	for (uint32_t i = 0; i < w->n; i++) {
		uint32_t id = r->id[i];
		if (id != SP_POOL_NONE && id / SP_SEG_PAGES >= SP_MAX_SEGS)
			return -EPROTO;
		if (id != SP_POOL_NONE)
			client_seg_ref(l, id, +1);
		w->m[i].id = id;
	}
	return 0;
}

/* Worth mapping: every page got a new one (mapping part of a VMA would
 * split it), in fewer runs than the VMAs there now. Else the new
 * references go back. */
static int worth_it(struct lib *l, struct defrag_window *w)
{
	uint32_t ids[SP_MAX_MOVE], back[SP_MAX_MOVE], nback = 0, all = 1;

	for (uint32_t i = 0; i < w->n; i++) {
		ids[i] = w->m[i].id;
		all &= ids[i] != SP_POOL_NONE;
		if (ids[i] != SP_POOL_NONE)
			back[nback++] = ids[i];
	}
	if (all && runs_of(ids, w->n) < w->nvmas)
		return 1;
	if (nback)
		client_unref(l, back, nback);
	w->n = 0;
	return 0;
}

/* Map the new pages where they verify equal (merge.c freezes and
 * compares); the old or the new reference goes, whichever is not mapped. */
static uint32_t remap(struct lib *l, struct defrag_window *w)
{
	uint32_t drop[SP_MAX_MOVE], ndrop = 0, moved = 0;

	merge_pages(l, w->a, w->m, w->n);
	for (uint32_t i = 0; i < w->n; i++) {
		struct entry *e = entry_of(w->a, w->m[i].addr);
		if (!w->m[i].ok) {
			drop[ndrop++] = w->m[i].id;
			continue;
		}
		/* Invariant 2: the old page is no longer mapped here. */
		drop[ndrop++] = w->old[i];
		e->pool = w->m[i].id;
		moved++;
	}
	if (ndrop)
		client_unref(l, drop, ndrop);
	return moved;
}

int defrag_pass(struct lib *l, struct pass *ps)
{
	struct defrag_window *w = l->defrag;
	uint32_t budget = DEFRAG_PAGES_PER_PASS;
	int err = 0;

	/* Moving trades pool pages for VMAs while sharers follow one another
	 * (each maps the copies at its own next quiet pass, and the old pages
	 * stay until the last has: bench/soak saw 1-2 % of the saving go that
	 * way for seconds): worth it only where VMAs are running short, past
	 * 1/8 of vm.max_map_count (SAMEPAGE_DEFRAG_VMAS sets another mark). */
	size_t mark = l->defrag_vmas ? l->defrag_vmas : l->max_map_count / 8;
	int asked = 0, gained = 0;

	/* SAMEPAGE_FAULT=defrag: none, to tell its effects from others'. Once
	 * it has asked, a process goes on below the mark until nothing is left
	 * to gather: a sharer that stopped halfway would keep the old pages
	 * while the others map the copies. */
	if (l->pass_seq < l->defrag_after || l->uffd < 0 || fault_inject_inherited("defrag") ||
	    (!l->defrag_active && l->vmas.total < mark))
		return 0;
	for (size_t i = 0; i < l->vmas.n && budget && !err && !l->stop;) {
		if (l->vmas.v[i].kind != VMA_POOL) {
			i++;
			continue;
		}
		i = collect(l, w, i);
		if (!w->n || !fragmented(w))
			continue;
		asked = l->defrag_active = 1;
		err = ask_move(l, w);
		if (err)
			break;
		budget = budget > w->n ? budget - w->n : 0;
		if (!worth_it(l, w))
			continue; /* the next window may be ready */
		gained = 1;
		ps->moved += remap(l, w);
	}
	if (!err && !asked)
		l->defrag_active = 0; /* nothing left to gather */
	if (asked || gained)
		pass_backoff(&l->defrag_backoff, &l->defrag_after, l->pass_seq, gained,
			     DEFRAG_BACKOFF_MAX);
	return err;
}
