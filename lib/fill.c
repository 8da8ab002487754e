/* SPDX-License-Identifier: MIT */
/*
 * fill — unique pages between runs of merged pages, joined with them in
 * one VMA (DESIGN.md, "Filling gaps"). Duplicates scattered among unique
 * pages (a guest's kernel and page cache between its own data) cost two
 * VMAs per run of merged pages: the pool mapping and the anonymous piece
 * it split off. Where the pool offsets of two runs follow their addresses
 * (the daemon leaves ids free for the pages between: alloc_for()), the
 * daemon hands us those ids as holes (C_FILL: no memory), and the whole
 * stretch becomes one private mapping of the pool whose unique pages are
 * anonymous pages of ours above it, as written merged pages already are
 * (E_COWED). After a quiet pass, a bounded amount at a time.
 */
#define _GNU_SOURCE
#include "fault.h"
#include "lib.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Stretches filled per pass at most: background work. */
#define FILL_PER_PASS 32u
/* After a pass whose fills all failed (a page written or swapped out
 * while checked, ids taken), wait 1, 2, 4 ... up to this many passes. */
#define FILL_BACKOFF_MAX 64

int fill_init(struct lib *l)
{
	const char *v = sp_env("SAMEPAGE_FILL");

	l->fill_mode = !v		     ? FILL_ALL :
		       !strcmp(v, "zeros") ? FILL_ZEROS :
		       !strcmp(v, "0")     ? FILL_OFF :
					     FILL_ALL;
	return 0;
}

/* The segment slot whose pool VMA v is, or -1; *last: the one found
 * before (a process's pool VMAs are mostly of one segment). */
static int seg_of(const struct lib *l, const struct vma *v, int *last)
{
	if (v->kind != VMA_POOL || !v->private_)
		return -1;
	if (*last >= 0 && l->segs[*last].fd >= 0 && l->segs[*last].ino == v->ino)
		return *last;
	for (int i = 0; i < (int)SP_MAX_SEGS; i++)
		if (l->segs[i].fd >= 0 && l->segs[i].ino == v->ino)
			return *last = i;
	return -1;
}

/* May g, between two pool VMAs of area a, be filled: anonymous, ours
 * (inside a), short, its pages unique pages the scanner knows or zero
 * pages on the kernel's zero page (not merged, not from the zero
 * segment)? Filled, a zero page maps the zero page still, over its hole,
 * and counts as a written merged page, no longer in ksm_zero_pages. */
static int gap_ok(struct lib *l, const struct area *a, const struct vma *g)
{
	if (g->kind != VMA_ANON || !g->private_ || g->start < a->start || g->end > a->end ||
	    (g->end - g->start) / SP_PAGE > SP_MAX_FILL)
		return 0;
	for (uintptr_t p = g->start; p < g->end; p += SP_PAGE) {
		uint32_t st = a->e[(p - a->start) / SP_PAGE].state;
		if (st != E_NEW && st != E_HASHED && !(st == E_ZERO && l->zero_page_ok))
			return 0;
		if (l->fill_mode == FILL_ZEROS && st != E_ZERO)
			return 0;
	}
	return 1;
}

/* Does pool VMA w continue the offsets of v (same segment, w's offset what
 * its distance from v implies)? */
static int follows(const struct vma *v, const struct vma *w, uint8_t prot)
{
	return w->kind == VMA_POOL && w->private_ && w->ino == v->ino && w->prot == prot &&
	       w->pgoff == v->pgoff + (w->start - v->start) / SP_PAGE;
}

/* Hold the ids of gap g (stretch starting at v in segment seg) as holes:
 * the first id in *first. 0 or -errno (-EBUSY: some are taken). */
static int hold_gap(struct lib *l, const struct vma *v, const struct vma *g, int seg,
		    uint32_t *first)
{
	struct sp_fill f = { .first = (uint32_t)seg * SP_SEG_PAGES + (uint32_t)v->pgoff +
				      (uint32_t)((g->start - v->start) / SP_PAGE),
			     .n = (uint32_t)((g->end - g->start) / SP_PAGE) };
	struct sp_msg m;
	int err = client_call(l, C_FILL, &f, sizeof(f), D_ACK, &m);

	if (err)
		return err;
	*first = f.first;
	for (uint32_t i = 0; i < f.n; i++)
		client_seg_ref(l, f.first + i, +1);
	return 0;
}

/* Give back the holes of the gaps among v[0..nv) (every other VMA). */
static void drop_holes(struct lib *l, const struct vma *v, uint32_t nv, const uint32_t *first)
{
	uint32_t ids[SP_MAX_FILL];

	for (uint32_t k = 1; k < nv; k += 2) {
		uint32_t n = (uint32_t)((v[k].end - v[k].start) / SP_PAGE);
		for (uint32_t i = 0; i < n; i++)
			ids[i] = (first[k / 2] + i) | SP_UNREF_COWED;
		client_unref(l, ids, n);
	}
}

/* The gaps' pages are written pages of the pool VMA now, each over its
 * hole (E_COWED), and the snapshot says so until the next refresh. */
static void note_filled(struct lib *l, struct area *a, struct vma *v, uint32_t nv,
			const uint32_t *first)
{
	for (uint32_t k = 1; k < nv; k += 2) {
		for (uintptr_t p = v[k].start; p < v[k].end; p += SP_PAGE) {
			struct entry *e = entry_of(a, p);
			e->pool = first[k / 2] + (uint32_t)((p - v[k].start) / SP_PAGE);
			entry_set(l, e, E_COWED);
		}
	}
	for (uint32_t k = 1; k < nv; k++) {
		v[k].kind = VMA_POOL;
		v[k].ino = v[0].ino;
		v[k].pgoff = v[0].pgoff + (v[k].start - v[0].start) / SP_PAGE;
	}
	l->vmas.total = l->vmas.total > nv - 1 ? l->vmas.total - (nv - 1) : 0;
}

/* The stretch starting at snapshot VMA i: pool VMA, gap, pool VMA, ...,
 * ending on a pool VMA; its holes held. How many VMAs (0: none to fill;
 * *refused: because the daemon refused the first gap's ids). */
static uint32_t stretch(struct lib *l, struct area *a, size_t i, int seg, uint32_t *first,
			int *refused)
{
	struct vma *v = &l->vmas.v[i];
	uint32_t nv = 1;

	while (i + nv + 1 < l->vmas.n && nv / 2 < FILL_PER_PASS) {
		const struct vma *g = &v[nv], *w = &v[nv + 1];
		if (g->start != v[nv - 1].end || w->start != g->end || !follows(v, w, v->prot) ||
		    w->end > a->end ||
		    g->prot != v->prot || w->end - v->start > FILL_MAX_PAGES * SP_PAGE ||
		    !gap_ok(l, a, g))
			break;
		if (hold_gap(l, v, g, seg, &first[nv / 2])) {
			*refused = nv == 1;
			break;
		}
		nv += 2;
	}
	return nv > 1 ? nv : 0;
}

int fill_pass(struct lib *l, struct pass *ps)
{
	uint32_t first[FILL_PER_PASS], done = 0, failed = 0;
	int last = -1;

	/* SAMEPAGE_FAULT=fill: none, to tell its effects from others'. */
	if (l->uffd < 0 || l->fill_mode == FILL_OFF || l->pass_seq < l->fill_after ||
	    fault_inject_inherited("fill"))
		return 0;
	for (size_t i = 0; i + 2 < l->vmas.n && done < FILL_PER_PASS && !l->stop; i++) {
		struct vma *v = &l->vmas.v[i];
		int seg = seg_of(l, v, &last);
		struct area *a = seg < 0 ? NULL : track_area_at(l, v->start);
		if (!a || v->end > a->end)
			continue;
		int refused = 0;
		uint32_t nv = stretch(l, a, i, seg, first, &refused);
		/* Asked for nothing: a round trip all the same, counted so that
		 * ids taken for good are not asked for at every pass. */
		if (refused) {
			done++;
			failed++;
		}
		if (!nv)
			continue;
		done++;
		int fd = client_pool_fd(l, first[0]);
		int err = fd < 0 ? fd : merge_fill(l, a, v, nv, fd, l->fill_mode == FILL_ALL);
		if (l->debug)
			sp_log("samepage[%d]: fill %#lx-%#lx %u VMAs: %d\n", (int)getpid(),
			       (unsigned long)v->start, (unsigned long)v[nv - 1].end, nv, err);
		if (err) {
			drop_holes(l, v, nv, first);
			failed++;
			continue;
		}
		note_filled(l, a, v, nv, first);
		ps->filled += nv / 2;
		i += nv - 1;
	}
	/* Every stretch tried failed (its pages were copied for nothing, and
	 * are likely to fail again for a while), or there was none: the VMAs
	 * are walked again after 1, 2, 4 ... quiet passes, at once after a
	 * pass that merged (scan.c), not at every pass of a process that sits
	 * merged (at the VMA budget, with thousands of VMAs). */
	pass_backoff(&l->fill_backoff, &l->fill_after, l->pass_seq, done && failed < done,
		     FILL_BACKOFF_MAX);
	return 0;
}
