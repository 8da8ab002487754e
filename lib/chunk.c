/* SPDX-License-Identifier: MIT */
/*
 * chunk — one chunk of an area, at most CHUNK_PAGES pages: each page is
 * classified from its entry and pagemap entry (merged and still mapped,
 * written since, zero, shared by a fork, or to hash), hashed from a copy,
 * offered to the daemon (C_LOOKUP), turned into pool pages where it
 * matched (C_CREATE), and merged (merge.c); merge hints are taken the same
 * way. The daemon's answers are in lookup.c of daemon/.
 */
#define _GNU_SOURCE
#include "lib.h"
#include "page.h"
#include "sort.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

struct chunk { /* one chunk's work lists; lives in lib, guarded by its lock */
	struct sp_lookup_ent look[CHUNK_PAGES];
	uint32_t nlook;
	uintptr_t zero[CHUNK_PAGES];
	uint32_t zok[CHUNK_PAGES];
	uint32_t nzero;
	uintptr_t cow[CHUNK_PAGES];
	uint32_t ncow;
	struct merge_item m[CHUNK_PAGES];
	uint32_t nm;
	struct sp_lookup_ent create[CHUNK_PAGES];
	uint32_t create_look[CHUNK_PAGES]; /* index in look[] */
	uint32_t ids[CHUNK_PAGES];
	uint32_t ncreate;
	struct sp_hint hint[SP_MAX_HINTS];
	uintptr_t tohash[SPAN_MAX_PAGES];
};

int chunk_init(struct lib *l)
{
	l->chunk = arena_alloc(&l->arena, sizeof(struct chunk));
	l->pm = arena_alloc(&l->arena, CHUNK_PAGES * sizeof(uint64_t));
	return l->chunk && l->pm ? 0 : -ENOMEM;
}

/* Does v (the VMA at p) map pool page id at p? */
static int maps_pool_page(const struct lib *l, const struct vma *v, uintptr_t p, uint32_t id)
{
	return v && v->kind == VMA_POOL && v->ino == l->segs[id / SP_SEG_PAGES].ino &&
	       v->pgoff + (p - v->start) / SP_PAGE == id % SP_SEG_PAGES;
}

/* smart_scan (the kernel's knob, without its blind spot): a unique page
 * offered SKIP_AFTER times unchanged and unmatched is offered again only in
 * generations its period divides (2, then 4, then 8). The period is a power
 * of two and the generation the daemon's, so every process skips the same
 * generations: two equal quiet pages are still offered in one generation
 * and meet (DESIGN.md, "Skipping quiet pages"). The age lives in the
 * entry's pool field, unused while E_HASHED. */
#define SKIP_AFTER 3u
#define SKIP_AGE_MAX 15u

static int skip_quiet(const struct lib *l, const struct entry *e, const struct pass *ps)
{
	uint32_t age = e->pool, period;

	if (e->state != E_HASHED || age < SKIP_AFTER || !l->knobs.v[KNOB_SMART_SCAN])
		return 0;
	period = age - SKIP_AFTER >= 2 ? 8 : 2u << (age - SKIP_AFTER);
	return ps->gen % period != 0;
}

/* What page p needs this pass, from its entry and pagemap entry: 1 when it
 * must be hashed (classify_hashed() goes on from there), else 0. */
static int classify(struct lib *l, struct area *a, uintptr_t p, uint64_t pm, struct chunk *c,
		    struct pass *ps, const struct vma **vc)
{
	struct entry *e = entry_of(a, p);

	if (!*vc || p >= (*vc)->end || p < (*vc)->start)
		*vc = os_vma_find(&l->vmas, p);
	if ((e->state == E_MERGED || (e->state == E_COWED && e->pool != SP_POOL_NONE)) &&
	    !maps_pool_page(l, *vc, p, e->pool)) {
		/* The snapshot is from the pass start: pages merged since (merge
		 * hints land anywhere) are in VMAs it does not know. Ask. */
		if (p < ps->fresh.start || p >= ps->fresh.end) {
			if (os_vma_query(l->mapsfd, p, &ps->fresh))
				ps->fresh.end = 0;
			else if (ps->fresh.ino && ps->fresh.ino == l->segs[e->pool / SP_SEG_PAGES].ino)
				ps->fresh.kind = VMA_POOL;
		}
		if (p >= ps->fresh.start && p < ps->fresh.end)
			*vc = &ps->fresh;
	}
	if (e->state == E_MERGED || (e->state == E_COWED && e->pool != SP_POOL_NONE)) {
		/* Written since it was merged: the kernel gave it a private copy.
		 * Hashed now: new content may merge again at once, in place. */
		if (e->state == E_MERGED && PM_PRESENT(pm) && !PM_FILE(pm) && *vc &&
		    (*vc)->kind == VMA_POOL) {
			c->cow[c->ncow++] = p;
			goto hash;
		}
		if (maps_pool_page(l, *vc, p, e->pool)) {
			/* Still mapped (a merged page perhaps not faulted in, after
			 * fork). A written one may now complete its VMA, and is
			 * hashed like any page: it may merge again. */
			if (e->state == E_MERGED)
				return 0;
			c->cow[c->ncow++] = p;
			goto hash;
		}
		/* Replaced behind our back (an unwrapped munmap or mmap). */
		track_pend(l, track_entry_ref(e));
		entry_set(l, e, E_NEW);
	}
	if ((e->state == E_ZERO && !l->zero_page_ok) ||
	    (e->state == E_COWED && e->pool == SP_POOL_NONE)) {
		/* From the zero segment: written since (COW) means restore. */
		if (e->state == E_ZERO && PM_PRESENT(pm) && !PM_FILE(pm) && *vc &&
		    (*vc)->kind == VMA_POOL) {
			c->cow[c->ncow++] = p;
			return 0;
		}
		if (*vc && (*vc)->kind == VMA_POOL) {
			if (e->state != E_COWED)
				return 0;
			c->cow[c->ncow++] = p;
			goto hash;
		}
		entry_set(l, e, E_NEW); /* replaced behind our back */
	} else if (e->state == E_ZERO) {
		if (!(PM_PRESENT(pm) && PM_EXCLUSIVE(pm) && !PM_FILE(pm)))
			return 0; /* still the zero page, or gone */
		entry_set(l, e, E_NEW);
	}
hash:
	/* At the VMA budget, nothing new can be merged (except in place, which
	 * the written pages above may still do once room comes back): no work
	 * is spent hashing and offering until then (invariant 7). */
	if (!PM_PRESENT(pm) || l->st.limited)
		return 0;
	/* An anonymous page mapped by another process too is one fork shares
	 * with its parent or child: merging it saves nothing until one of them
	 * writes it (kernel KSM finds such a page equal to itself and leaves
	 * it). Offered, it made a fork child (Redis's BGSAVE) pool the pages it
	 * shares with its parent, and the parent merge them back: the save ran
	 * 6 times slower. Once either side writes, the page is its own again. */
	if (!PM_FILE(pm) && !PM_EXCLUSIVE(pm))
		return 0;
	/* Unique and quiet: not read this generation; still unshared. */
	if (skip_quiet(l, e, ps)) {
		ps->unshared++;
		ps->skipped++;
		l->skipped_since_report++;
		return 0;
	}
	/* PROT_NONE memory merges too, as on kernel KSM: it is read through
	 * /proc/self/mem (os_read_pages()). */
	return *vc != NULL;
}

/* Page p hashed to h (from a copy: see os_read_pages()). */
static void classify_hashed(struct lib *l, struct area *a, uintptr_t p, uint64_t h,
			    struct chunk *c, struct pass *ps)
{
	struct entry *e = entry_of(a, p);

	if (e->state == E_MERGED) {
		/* Written since merged, seen for the first time: new content,
		 * offered at once like any page at first sight. */
		e->csum = ENTRY_CSUM(h);
		ps->changed++;
	} else if (e->state == E_NEW) {
		/* First sight: offered at once. Kernel KSM searches its stable
		 * tree at first sight too, but keeps a page out of its unstable
		 * tree until a second scan finds it unchanged, because a page
		 * changing inside that tree corrupts its order; a hash index has
		 * no order to corrupt, and a page that changed fails the
		 * byte-for-byte check under the freeze. So two equal pages merge
		 * in the pass that first sees them, not two or three passes later. */
		e->csum = ENTRY_CSUM(h);
		e->pool = 0; /* skip_quiet()'s age */
		entry_set(l, e, E_HASHED);
		ps->changed++;
		/* Fresh all-zero memory is usually about to be written: zero
		 * pages wait for a second look, as in the kernel. */
		if (h == l->zero_hash)
			return;
	} else if (e->csum != ENTRY_CSUM(h)) {
		/* Changed since the last pass: volatile, not offered. */
		e->csum = ENTRY_CSUM(h);
		if (e->state == E_HASHED)
			e->pool = 0; /* skip_quiet()'s age: not quiet */
		ps->volatile_pages++;
		ps->changed++;
		return;
	}
	/* Offered unchanged once more: skip_quiet()'s age. A page that stays
	 * unmerged while offered (unique, or pinned for a device: evict.c)
	 * is offered less often. */
	if (e->state == E_HASHED && e->pool < SKIP_AGE_MAX)
		e->pool++;
	/* A merged page rewritten with zeros is a copy inside a pool VMA:
	 * dropped, it would read the pool page (zero_span()). It merges like
	 * any content, in place where it can; anonymous again, it becomes a
	 * zero page. */
	if (l->knobs.v[KNOB_USE_ZERO_PAGES] && h == l->zero_hash &&
	    !(l->zero_page_ok && (e->state == E_MERGED || e->state == E_COWED))) {
		c->zero[c->nzero++] = p;
		return;
	}
	c->look[c->nlook] = (struct sp_lookup_ent){ .hash = h, .addr = p };
	/* Its VMA maps a pool page here, which it wrote: the daemon may put
	 * the new content there, and the page merges again in place. */
	if ((e->state == E_MERGED || e->state == E_COWED) && e->pool != SP_POOL_NONE)
		c->look[c->nlook] = (struct sp_lookup_ent){ .hash = h, .addr = p, .maps = e->pool,
							    .flags = LOOKUP_MAPS };
	c->nlook++;
}

/* Is every page of [s, e) a written copy (E_COWED)? */
static int all_cowed(const struct area *a, uintptr_t s, uintptr_t e)
{
	for (uintptr_t p = s; p < e; p += SP_PAGE)
		if (a->e[(p - a->start) / SP_PAGE].state != E_COWED)
			return 0;
	return 1;
}

/* Pages written since they were merged (c->cow: newly written ones, and
 * ones written earlier whose VMA may now be complete). Turning each back into anonymous
 * memory at once would split its pool VMA in three (an application that
 * writes every other page of a merged region would run out of
 * vm.max_map_count); so a written page keeps its reference inside the pool
 * mapping, and a VMA is restored whole, at no VMA cost, once every page of
 * it has been written. */
static void cow_settle(struct lib *l, struct area *a, struct chunk *c)
{
	uintptr_t done_end = 0;
	uint32_t cowed[CHUNK_PAGES], n = 0;

	for (uint32_t i = 0; i < c->ncow; i++) {
		struct entry *e = entry_of(a, c->cow[i]);
		if (e->state == E_COWED)
			continue; /* written in an earlier pass */
		if (e->state == E_ZERO)
			e->pool = SP_POOL_NONE; /* zero-segment page: no reference */
		else
			cowed[n++] = e->pool;
		entry_set(l, e, E_COWED);
	}
	/* Invariant 8: the daemon counts a written page's reference apart
	 * (pages_sharing counts mappings that still read the pool page). */
	if (n)
		client_cow(l, cowed, n);
	for (uint32_t i = 0; i < c->ncow; i++) {
		struct vma v;
		uintptr_t p = c->cow[i];
		if (p < done_end || os_vma_query(l->mapsfd, p, &v))
			continue;
		done_end = v.end;
		if (v.start < a->start || v.end > a->end || !all_cowed(a, v.start, v.end))
			continue;
		merge_restore(l, a, v.start, v.end);
	}
}

static int do_lookup(struct lib *l, struct chunk *c, struct pass *ps)
{
	struct sp_lookup *req = (struct sp_lookup *)l->out;
	struct sp_msg m;
	uint32_t n = c->nlook;
	int err;

	if (!n)
		return 0;
	req->n = n;
	memcpy(req->e, c->look, n * sizeof(c->look[0]));
	err = client_call(l, C_LOOKUP, req, sizeof(*req) + n * sizeof(c->look[0]), D_LOOKUP, &m);
	if (err)
		return err;
	const struct sp_ids *r = (const void *)m.p;
	if (r->n != n)
		return -EPROTO;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id = r->id[i];
		if (id == SP_POOL_CREATE) {
			c->create_look[c->ncreate] = i;
			c->create[c->ncreate++] = c->look[i];
		} else if (id == SP_POOL_NONE) {
			ps->unshared++;
		} else if (id / SP_SEG_PAGES < SP_MAX_SEGS) {
			client_seg_ref(l, id, +1);
			c->m[c->nm++] = (struct merge_item){ .addr = c->look[i].addr, .id = id };
		} else {
			return -EPROTO;
		}
	}
	return 0;
}

/* Pages that matched another in the unstable index become pool pages. A
 * page changed since it was hashed gets none (the daemon hashes what it
 * reads); the one it matched then merges on a later pass. */
static int do_create(struct lib *l, struct chunk *c)
{
	int err;

	if (!c->ncreate)
		return 0;
	err = client_create(l, c->create, c->create_look, c->ncreate, c->ids);
	if (err)
		return err;
	for (uint32_t j = 0; j < c->ncreate; j++) {
		uint32_t id = c->ids[j];
		if (id == SP_POOL_NONE || id == SP_POOL_CREATE)
			continue;
		if (id / SP_SEG_PAGES >= SP_MAX_SEGS)
			return -EPROTO;
		client_seg_ref(l, id, +1);
		c->m[c->nm++] = (struct merge_item){ .addr = c->create[j].addr, .id = id };
	}
	return 0;
}

static int by_addr(const void *x, const void *y)
{
	const struct merge_item *a = x, *b = y;

	return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* Merging in place (merge_item.inplace): the page's VMA maps that very
 * pool page, and the page there is its own written copy. */
static void mark_inplace(struct area *a, struct chunk *c)
{
	for (uint32_t i = 0; i < c->nm; i++) {
		const struct entry *e = entry_of(a, c->m[i].addr);
		c->m[i].inplace = e->state == E_COWED && e->pool == c->m[i].id;
	}
}

/* Does item i start a new run (one mmap, up to two VMAs, as merge.c maps
 * them)? Items are in address order. Counting this way bounds the VMAs
 * from above: merge.c may also join a run across equal protections only. */
static int starts_run(const struct merge_item *m, uint32_t i)
{
	return !i || m[i].addr != m[i - 1].addr + SP_PAGE || m[i].id != m[i - 1].id + 1 ||
	       m[i].id % SP_SEG_PAGES == 0;
}

static void vma_budget_check(struct lib *l, struct chunk *c)
{
	/* Invariant 7: stay well inside vm.max_map_count. A run of merged
	 * pages costs up to two VMAs (it splits one); a page merged in place
	 * costs none. Merge the runs that fit, in address order. */
	size_t limit = l->max_map_count * 3 / 4, need = 0;
	uint32_t ids[CHUNK_PAGES], n = 0, keep = 0;

	sort_inplace(c->m, c->nm, sizeof(c->m[0]), by_addr);
	for (uint32_t i = 0; i < c->nm; i++) {
		if (!c->m[i].inplace && starts_run(c->m, i))
			need += 2;
		if (c->m[i].inplace || l->vmas.total + need <= limit)
			c->m[keep++] = c->m[i];
		else
			ids[n++] = c->m[i].id;
	}
	c->nm = keep;
	if (!n)
		return;
	client_unref(l, ids, n);
	l->st.vma_limited += n;
	/* Back off: no hashing and offering until VMAs are freed (scan.c). */
	l->st.limited = 1;
}

/* A written page (E_COWED) merged again: the reference to the pool page it
 * was a copy of goes, since that page is no longer mapped at this address. */
static void merged_again(struct entry *e, uint32_t *old, uint32_t *nold)
{
	if (e->state == E_COWED && e->pool != SP_POOL_NONE)
		old[(*nold)++] = track_entry_ref(e);
}

static void do_merge(struct lib *l, struct area *a, struct chunk *c, struct pass *ps)
{
	uint32_t bad[2 * CHUNK_PAGES], nbad = 0, runs = 0;

	mark_inplace(a, c);
	vma_budget_check(l, c); /* sorts by address */
	if (!c->nm)
		return;
	merge_pages(l, a, c->m, c->nm);
	for (uint32_t i = 0; i < c->nm; i++) {
		struct entry *e = entry_of(a, c->m[i].addr);
		if (!c->m[i].ok) {
			bad[nbad++] = c->m[i].id;
			continue;
		}
		/* One mmap, up to two new VMAs, per run of consecutive
		 * addresses and pool pages, as merge.c maps them. */
		if (c->m[i].inplace)
			ps->inplace++;
		else if (!i || !c->m[i - 1].ok || c->m[i - 1].addr + SP_PAGE != c->m[i].addr ||
		    c->m[i - 1].id + 1 != c->m[i].id ||
		    c->m[i - 1].id / SP_SEG_PAGES != c->m[i].id / SP_SEG_PAGES)
			runs++;
		merged_again(e, bad, &nbad);
		e->pool = c->m[i].id;
		entry_set(l, e, E_MERGED);
		ps->merged++;
	}
	l->vmas.total += 2 * runs;
	if (nbad)
		client_unref(l, bad, nbad);
}

static int hint_by_addr(const void *x, const void *y)
{
	const struct sp_hint *a = x, *b = y;

	return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* Merge hints: pages of ours that another process's page matched in the
 * unstable index, now pool pages with a reference ours. Merged like any
 * page (frozen and verified equal: invariant 1); a page since merged,
 * zeroed, unmapped or changed gives its reference back. */
int chunk_hints(struct lib *l, struct pass *ps)
{
	struct chunk *c = l->chunk;
	struct sp_hints_req q = { .max = SP_MAX_HINTS };
	uint32_t drop[CHUNK_PAGES], ndrop = 0, n;
	struct sp_msg m;
	int err = client_call(l, C_HINTS, &q, sizeof(q), D_HINTS, &m);
	/* Merging stopped (run 0 or 2): as ksmd, nothing merges; hints from
	 * before the stop give their references back. */
	int stopped = l->knobs.v[KNOB_RUN] != 1;

	if (err)
		return err;
	const struct sp_hints *r = (const void *)m.p;
	n = r->n;
	memcpy(c->hint, r->e, n * sizeof(r->e[0]));
	sort_inplace(c->hint, n, sizeof(c->hint[0]), hint_by_addr);
	c->nm = 0;
	struct area *a = n ? track_area_at(l, (uintptr_t)c->hint[0].addr) : NULL, *next;
	for (uint32_t i = 0; i < n; i++, a = next) {
		const struct sp_hint *h = &c->hint[i];
		struct entry *e = a ? entry_of(a, (uintptr_t)h->addr) : NULL;

		if (h->id / SP_SEG_PAGES >= SP_MAX_SEGS)
			return -EPROTO;
		client_seg_ref(l, h->id, +1);
		if (stopped || !e || h->addr % SP_PAGE || e->state == E_MERGED ||
		    e->state == E_ZERO) {
			drop[ndrop++] = h->id;
		} else {
			c->m[c->nm++] = (struct merge_item){ .addr = h->addr, .id = h->id };
		}
		/* One area and one chunk's worth at a time. */
		next = i + 1 < n ? track_area_at(l, (uintptr_t)c->hint[i + 1].addr) : NULL;
		if (c->nm && (next != a || c->nm == CHUNK_PAGES)) {
			do_merge(l, a, c, ps);
			c->nm = 0;
		}
		if (ndrop == CHUNK_PAGES) {
			client_unref(l, drop, ndrop);
			ndrop = 0;
		}
	}
	if (ndrop)
		client_unref(l, drop, ndrop);
	return 0;
}

/* Without a kernel zero page, a zero page maps the zero segment and costs a
 * VMA like any merged page: only runs this long are worth it, so a
 * process's scattered zero pages do not splinter its VMAs. */
#define ZERO_RUN_MIN 8

static void keep_long_zero_runs(struct chunk *c)
{
	uint32_t out = 0;

	for (uint32_t i = 0; i < c->nzero;) {
		uint32_t j = i + 1;
		while (j < c->nzero && c->zero[j] == c->zero[j - 1] + SP_PAGE)
			j++;
		if (j - i >= ZERO_RUN_MIN)
			for (uint32_t k = i; k < j; k++)
				c->zero[out++] = c->zero[k];
		i = j;
	}
	c->nzero = out;
}

static void do_zero(struct lib *l, struct area *a, struct chunk *c, struct pass *ps)
{
	if (!l->zero_page_ok)
		keep_long_zero_runs(c);
	if (!c->nzero)
		return;
	uint32_t old[CHUNK_PAGES], nold = 0;

	merge_zero(l, a, c->zero, c->nzero, c->zok);
	for (uint32_t i = 0; i < c->nzero; i++)
		if (c->zok[i]) {
			struct entry *e = entry_of(a, c->zero[i]);
			merged_again(e, old, &nold);
			entry_set(l, e, E_ZERO);
			ps->merged++;
		}
	if (nold)
		client_unref(l, old, nold);
}

/* Hash the k pages in c->tohash from copies: the application may unmap
 * them behind our wrappers at any moment (glibc's internal munmap), and
 * reading one that is gone would kill it. Copies also spare us a fault
 * per page in this VM, where each page table change makes the hypervisor
 * re-fault every page the process touches next. */
static void hash_pages(struct lib *l, struct area *a, struct chunk *c, struct pass *ps, uint32_t k)
{
	uint8_t got[SPAN_MAX_PAGES];

	os_read_pages(l->mem_fd, c->tohash, sizeof(c->tohash[0]), k, l->vbuf, got);
	for (uint32_t j = 0; j < k; j++)
		if (got[j])
			classify_hashed(l, a, c->tohash[j],
					XXH3_64bits(l->vbuf + (size_t)j * SP_PAGE, SP_PAGE), c, ps);
}

int chunk_scan(struct lib *l, struct area *a, uintptr_t s, uint32_t n, struct pass *ps)
{
	struct chunk *c = l->chunk;
	const struct vma *vc = NULL;
	int err = os_pagemap(l->pmfd, s, n, l->pm);

	if (err)
		return err;
	c->nlook = c->nzero = c->ncow = c->nm = c->ncreate = 0;
	for (uint32_t i = 0, k = 0; i < n; i++) {
		uintptr_t p = s + (uintptr_t)i * SP_PAGE;
		if (classify(l, a, p, l->pm[i], c, ps, &vc))
			c->tohash[k++] = p;
		if (k && (k == SPAN_MAX_PAGES || i == n - 1)) {
			hash_pages(l, a, c, ps, k);
			k = 0;
		}
	}
	cow_settle(l, a, c);
	do_zero(l, a, c, ps);
	err = do_lookup(l, c, ps);
	if (!err)
		err = do_create(l, c);
	do_merge(l, a, c, ps);
	l->scanned_since_report += n;
	return err;
}
