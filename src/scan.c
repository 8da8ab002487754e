/* SPDX-License-Identifier: MIT */
/*
 * scan — the per-process scanner: kernel KSM's ksmd, for one process.
 *
 * A pass refreshes which memory is mergeable (areas: eligible VMAs inside
 * the madvised ranges, or all of them under merge-any), then walks it in
 * chunks, spending budget the daemon grants. Per page it keeps an 8-byte
 * entry. A present page is hashed; one whose hash did not change since the
 * previous pass is a candidate: all-zero candidates go to the kernel's zero
 * page, the others are offered to the daemon, which answers with a pool
 * page (stable hit), "send it" (unstable hit) or nothing. Merged pages are
 * watched through pagemap: once written (the kernel copied them: no longer a
 * file page) they are turned back into plain anonymous memory and their
 * pool reference dropped.
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

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define IDLE_MAX_MS 2000

void entry_set(struct lib *l, struct entry *e, uint32_t state)
{
	/* A fork child starts its counters at 0 (they may dip below until its
	 * first pass recounts; fill_stats clamps). */
	if (e->state != E_NEW)
		l->st.rmap_items--;
	if (e->state == E_MERGED)
		l->st.merging--;
	if (e->state == E_ZERO)
		l->st.zero--;
	if (e->state == E_COWED)
		l->st.cowed--;
	e->state = state;
	if (state != E_NEW)
		l->st.rmap_items++;
	if (state == E_MERGED)
		l->st.merging++;
	if (state == E_ZERO)
		l->st.zero++;
	if (state == E_COWED)
		l->st.cowed++;
}

/* ---- areas ---- */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
/* Sanitizer builds only: the runtime's shadow and allocator live in
 * MAP_NORESERVE mappings that it writes from every thread, the scanner's
 * included, so merge-any must not freeze them. */
#define MERGE_ANY_SKIP VF_NORESERVE
#else
#define MERGE_ANY_SKIP 0
#endif

static int eligible(const struct lib *l, const struct vma *v)
{
	/* Invariant 4: private anonymous memory only, as kernel KSM's
	 * vma_ksm_compatible(); plus the pool pages we mapped there. */
	uint32_t bad = VF_SHARED | VF_IO | VF_PFNMAP | VF_HUGETLB | VF_WIPEONFORK | VF_UFFD |
		       VF_MIXEDMAP | VF_DONTEXPAND | VF_GROWSDOWN;

	if (l->merge_any)
		bad |= MERGE_ANY_SKIP;
	if (!v->private_ || (v->flags & bad))
		return 0;
	/* Our own memory: the scanner writes it while pages are frozen. */
	if (arena_overlaps(&l->arena, v->start, v->end))
		return 0;
	return v->kind == VMA_ANON || v->kind == VMA_POOL;
}

/* Said once per process (a fork child says it again). lib.lock is held:
 * no stdio, no malloc. */
static void warn_no_room(size_t bytes)
{
	static pid_t said;
	pid_t me = getpid();
	char buf[320];
	int n;

	if (said == me)
		return;
	said = me;
	n = snprintf(buf, sizeof(buf),
		     "samepage: process %d: no address space left for %zu KiB of page tracking: "
		     "the address space limit (ulimit -v) is reached; merging limited to the "
		     "memory tracked so far\n",
		     (int)me, bytes >> 10);
	if (n > 0 && write(2, buf, (size_t)n) < 0) {
		/* nowhere to say it */
	}
}

static struct entry *entries_alloc(struct lib *l, size_t npages)
{
	struct entry *e = arena_alloc(&l->arena, npages * sizeof(struct entry));

	if (!e)
		warn_no_room(npages * sizeof(struct entry));
	return e;
}

static void entries_free(struct lib *l, struct area *a)
{
	arena_free(&l->arena, a->e, (a->end - a->start) / SP_PAGE * sizeof(struct entry));
	a->e = NULL;
}

static void pend_release(struct lib *l, uint32_t id)
{
	/* Full list: keep the reference for good. Leaking a pool page is
	 * safe; dropping one a VMA may still map is not (invariant 2). */
	if (l->npending < LIB_MAX_PENDING)
		l->pending[l->npending++] = id;
}

/* The reference an entry holds, as C_UNREF names it. */
static uint32_t entry_ref(const struct entry *e)
{
	return e->pool | (e->state == E_COWED ? SP_UNREF_COWED : 0);
}

/* Entries of [s, e) leave tracking: merged ones wait in the pending list. */
static void forget_entries(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	for (uintptr_t p = s; p < e; p += SP_PAGE) {
		struct entry *en = &a->e[(p - a->start) / SP_PAGE];
		if ((en->state == E_MERGED || en->state == E_COWED) && en->pool != SP_POOL_NONE)
			pend_release(l, entry_ref(en));
		entry_set(l, en, E_NEW);
	}
}

/* The daemon that held our references died (client.c): every merged page
 * is ordinary memory now, mapped from a pool nothing will write again. */
void scan_refs_lost(struct lib *l)
{
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		for (uintptr_t p = a->start; p < a->end; p += SP_PAGE) {
			struct entry *e = &a->e[(p - a->start) / SP_PAGE];
			if (e->state == E_MERGED || e->state == E_COWED)
				entry_set(l, e, E_NEW);
		}
	}
	l->npending = 0;
}

void scan_forget(struct lib *l, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		uintptr_t from = s > a->start ? s : a->start, to = e < a->end ? e : a->end;
		if (from < to)
			forget_entries(l, a, from, to);
	}
}

/* Build the new area [s, e), carrying over entries of old areas. */
static int make_area(struct lib *l, struct area *old, uint32_t nold, uint32_t *j,
		     struct area *out, uintptr_t s, uintptr_t e, uint32_t vmflags, uint8_t prot)
{
	while (*j < nold && old[*j].end <= s)
		(*j)++;
	if (*j < nold && old[*j].start == s && old[*j].end == e) {
		*out = old[*j];
		old[*j].e = NULL; /* moved */
	} else {
		out->start = s;
		out->end = e;
		out->e = entries_alloc(l, (e - s) / SP_PAGE);
		if (!out->e)
			return -ENOMEM;
		for (uint32_t k = *j; k < nold && old[k].start < e; k++) {
			uintptr_t from = s > old[k].start ? s : old[k].start;
			uintptr_t to = e < old[k].end ? e : old[k].end;
			if (from >= to || !old[k].e)
				continue;
			size_t n = (to - from) / SP_PAGE;
			memcpy(&out->e[(from - s) / SP_PAGE], &old[k].e[(from - old[k].start) / SP_PAGE],
			       n * sizeof(struct entry));
			memset(&old[k].e[(from - old[k].start) / SP_PAGE], 0, n * sizeof(struct entry));
		}
	}
	out->vmflags = vmflags;
	out->prot = prot;
	return 0;
}

#define CARRIED_FLAGS (VF_LOCKED | VF_DONTDUMP | VF_DONTCOPY | VF_HUGEPAGE | VF_NOHUGEPAGE)

/* Eligible VMAs that touch are one run: merging splits an anonymous VMA
 * into anonymous and pool parts, and that must not reset their entries. */
static int next_run(const struct lib *l, size_t *i, uintptr_t *s, uintptr_t *e,
		    uint32_t *flags, uint8_t *prot)
{
	const struct vma_list *vl = &l->vmas;

	while (*i < vl->n && !eligible(l, &vl->v[*i]))
		(*i)++;
	if (*i == vl->n)
		return 0;
	*s = vl->v[*i].start;
	*e = vl->v[*i].end;
	*flags = vl->v[*i].flags & CARRIED_FLAGS;
	*prot = vl->v[*i].prot;
	/* A run ends where the attributes to carry over change (an mlock'ed
	 * VMA beside a plain one): each area has one set. */
	for ((*i)++; *i < vl->n && eligible(l, &vl->v[*i]) && vl->v[*i].start == *e &&
		     (vl->v[*i].flags & CARRIED_FLAGS) == *flags;
	     (*i)++)
		*e = vl->v[*i].end;
	return 1;
}

/* An area whose entries find no room (the address space limit) is left
 * out, untracked, and the others go on: what fits still merges. */
static void add_area(struct lib *l, struct area *old, uint32_t nold, uint32_t *j,
		     uintptr_t s, uintptr_t e, uint32_t flags, uint8_t prot)
{
	if (l->nareas < LIB_MAX_AREAS &&
	    make_area(l, old, nold, j, &l->areas[l->nareas], s, e, flags, prot) == 0)
		l->nareas++;
}

static int reconcile(struct lib *l)
{
	struct area *old = l->old_areas;
	uint32_t nold = l->nareas, j = 0, ri = 0;
	size_t vi = 0;
	uintptr_t s, e;
	uint32_t flags;
	uint8_t prot;

	memcpy(old, l->areas, nold * sizeof(*old));
	l->nareas = 0;
	while (next_run(l, &vi, &s, &e, &flags, &prot)) {
		if (l->merge_any) {
			add_area(l, old, nold, &j, s, e, flags, prot);
			continue;
		}
		/* The madvised ranges inside this run; one may span several runs. */
		while (ri < l->nranges && l->ranges[ri].end <= s)
			ri++;
		for (uint32_t k = ri; k < l->nranges && l->ranges[k].start < e; k++) {
			uintptr_t rs = l->ranges[k].start > s ? l->ranges[k].start : s;
			uintptr_t re = l->ranges[k].end < e ? l->ranges[k].end : e;
			add_area(l, old, nold, &j, rs, re, flags, prot);
		}
	}
	for (uint32_t k = 0; k < nold; k++) {
		if (!old[k].e)
			continue;
		forget_entries(l, &old[k], old[k].start, old[k].end);
		entries_free(l, &old[k]);
	}
	return 0;
}

/* ---- pending references ---- */

static int pool_page_mapped(const struct lib *l, uint32_t id)
{
	id &= ~SP_UNREF_COWED;
	uint64_t ino = l->segs[id / SEG_PAGES].ino, idx = id % SEG_PAGES;

	for (size_t i = 0; i < l->vmas.n; i++) {
		const struct vma *v = &l->vmas.v[i];
		/* Private mappings only: our read-only shared views of the
		 * segments map every page and hold nothing. */
		if (v->kind == VMA_POOL && v->private_ && v->ino == ino && idx >= v->pgoff &&
		    idx < v->pgoff + (v->end - v->start) / SP_PAGE)
			return 1;
	}
	return 0;
}

static void release_pending(struct lib *l)
{
	uint32_t keep = 0, drop[256], nd = 0;

	for (uint32_t i = 0; i < l->npending; i++) {
		uint32_t id = l->pending[i];
		/* Invariant 2: dropped only once no VMA of ours maps the page
		 * (an mremap may have moved it anywhere). */
		if (pool_page_mapped(l, id)) {
			l->pending[keep++] = id;
			continue;
		}
		drop[nd++] = id;
		if (nd == 256) {
			client_unref(l, drop, nd);
			nd = 0;
		}
	}
	if (nd)
		client_unref(l, drop, nd);
	l->npending = keep;
}

int scan_refresh(struct lib *l)
{
	int err = os_read_vmas(&l->vmas, l->text, TEXT_BYTES);

	if (err)
		return err;
	l->st.merge_vmas = 0;
	for (size_t i = 0; i < l->vmas.n; i++)
		l->st.merge_vmas += l->vmas.v[i].kind == VMA_POOL;
	err = reconcile(l);
	release_pending(l);
	return err;
}

/* ---- one chunk ---- */

struct pass {
	uint64_t gen;
	int have_gen;
	uint64_t volatile_pages, unshared, merged, changed;
	struct vma fresh;  /* the kernel's VMA, asked when the snapshot is stale */
};

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

size_t scan_chunk_bytes(void)
{
	return sizeof(struct chunk);
}

static struct entry *entry_of(struct area *a, uintptr_t p)
{
	return &a->e[(p - a->start) / SP_PAGE];
}

/* Does v (the VMA at p) map pool page id at p? */
static int maps_pool_page(const struct lib *l, const struct vma *v, uintptr_t p, uint32_t id)
{
	return v && v->kind == VMA_POOL && v->ino == l->segs[id / SEG_PAGES].ino &&
	       v->pgoff + (p - v->start) / SP_PAGE == id % SEG_PAGES;
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
			else if (ps->fresh.ino && ps->fresh.ino == l->segs[e->pool / SEG_PAGES].ino)
				ps->fresh.kind = VMA_POOL;
		}
		if (p >= ps->fresh.start && p < ps->fresh.end)
			*vc = &ps->fresh;
	}
	if (e->state == E_MERGED || (e->state == E_COWED && e->pool != SP_POOL_NONE)) {
		/* Written since it was merged: the kernel gave it a private copy. */
		if (e->state == E_MERGED && PM_PRESENT(pm) && !PM_FILE(pm) && *vc &&
		    (*vc)->kind == VMA_POOL) {
			c->cow[c->ncow++] = p;
			return 0;
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
		pend_release(l, entry_ref(e));
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
	if (!PM_PRESENT(pm))
		return 0;
	/* An anonymous page mapped by another process too is one fork shares
	 * with its parent or child: merging it saves nothing until one of them
	 * writes it (kernel KSM finds such a page equal to itself and leaves
	 * it). Offered, it made a fork child (Redis's BGSAVE) pool the pages it
	 * shares with its parent, and the parent merge them back: the save ran
	 * 6 times slower. Once either side writes, the page is its own again. */
	if (!PM_FILE(pm) && !PM_EXCLUSIVE(pm))
		return 0;
	if (!*vc || !((*vc)->prot & PROT_READ))
		return 0; /* PROT_NONE stays mergeable but cannot be read */
	return 1;
}

/* Page p hashed to h (from a copy: see os_read_pages()). */
static void classify_hashed(struct lib *l, struct area *a, uintptr_t p, uint64_t h,
			    struct chunk *c, struct pass *ps)
{
	struct entry *e = entry_of(a, p);

	if (e->state == E_NEW) {
		/* First sight: offered at once. Kernel KSM searches its stable
		 * tree at first sight too, but keeps a page out of its unstable
		 * tree until a second scan finds it unchanged, because a page
		 * changing inside that tree corrupts its order; a hash index has
		 * no order to corrupt, and a page that changed fails the
		 * byte-for-byte check under the freeze. So two equal pages merge
		 * in the pass that first sees them, not two or three passes later. */
		e->csum = ENTRY_CSUM(h);
		entry_set(l, e, E_HASHED);
		ps->changed++;
		/* Fresh all-zero memory is usually about to be written: zero
		 * pages wait for a second look, as in the kernel. */
		if (h == l->zero_hash)
			return;
	} else if (e->csum != ENTRY_CSUM(h)) {
		/* Changed since the last pass: volatile, not offered. */
		e->csum = ENTRY_CSUM(h);
		ps->volatile_pages++;
		ps->changed++;
		return;
	}
	if (l->knobs.v[KNOB_USE_ZERO_PAGES] && h == l->zero_hash)
		c->zero[c->nzero++] = p;
	else
		c->look[c->nlook++] = (struct sp_lookup_ent){ .hash = h, .addr = p };
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
		} else if (id / SEG_PAGES < POOL_MAX_SEGS) {
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
		if (id / SEG_PAGES >= POOL_MAX_SEGS)
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

static void vma_budget_check(struct lib *l, struct chunk *c)
{
	/* Invariant 7: stay well inside vm.max_map_count. A merged page that
	 * is not part of a run costs up to two VMAs (it splits one). */
	size_t limit = l->max_map_count * 3 / 4;

	if (l->vmas.total + 2 * (size_t)c->nm <= limit)
		return;
	uint32_t ids[CHUNK_PAGES];
	for (uint32_t i = 0; i < c->nm; i++)
		ids[i] = c->m[i].id;
	client_unref(l, ids, c->nm);
	l->st.vma_limited += c->nm;
	c->nm = 0;
}

/* A written page (E_COWED) merged again: the reference to the pool page it
 * was a copy of goes, since that page is no longer mapped at this address. */
static void merged_again(struct entry *e, uint32_t *old, uint32_t *nold)
{
	if (e->state == E_COWED && e->pool != SP_POOL_NONE)
		old[(*nold)++] = entry_ref(e);
}

static void do_merge(struct lib *l, struct area *a, struct chunk *c, struct pass *ps)
{
	uint32_t bad[2 * CHUNK_PAGES], nbad = 0, runs = 0;

	vma_budget_check(l, c);
	if (!c->nm)
		return;
	sort_inplace(c->m, c->nm, sizeof(c->m[0]), by_addr);
	merge_pages(l, a, c->m, c->nm);
	for (uint32_t i = 0; i < c->nm; i++) {
		struct entry *e = entry_of(a, c->m[i].addr);
		if (!c->m[i].ok) {
			bad[nbad++] = c->m[i].id;
			continue;
		}
		/* One mmap, up to two new VMAs, per run of consecutive
		 * addresses and pool pages, as merge.c maps them. */
		if (!i || !c->m[i - 1].ok || c->m[i - 1].addr + SP_PAGE != c->m[i].addr ||
		    c->m[i - 1].id + 1 != c->m[i].id ||
		    c->m[i - 1].id / SEG_PAGES != c->m[i].id / SEG_PAGES)
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

/* The area holding p, or NULL (areas are sorted and disjoint). */
static struct area *area_at(struct lib *l, uintptr_t p)
{
	uint32_t lo = 0, hi = l->nareas;

	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (l->areas[mid].end <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < l->nareas && l->areas[lo].start <= p ? &l->areas[lo] : NULL;
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
static int take_hints(struct lib *l, struct pass *ps)
{
	struct chunk *c = l->chunk;
	struct sp_hints_req q = { .max = SP_MAX_HINTS };
	uint32_t drop[CHUNK_PAGES], ndrop = 0, n;
	struct sp_msg m;
	int err = client_call(l, C_HINTS, &q, sizeof(q), D_HINTS, &m);

	if (err)
		return err;
	const struct sp_hints *r = (const void *)m.p;
	n = r->n;
	memcpy(c->hint, r->e, n * sizeof(r->e[0]));
	sort_inplace(c->hint, n, sizeof(c->hint[0]), hint_by_addr);
	c->nm = 0;
	struct area *a = n ? area_at(l, (uintptr_t)c->hint[0].addr) : NULL, *next;
	for (uint32_t i = 0; i < n; i++, a = next) {
		const struct sp_hint *h = &c->hint[i];
		struct entry *e = a ? entry_of(a, (uintptr_t)h->addr) : NULL;

		if (h->id / SEG_PAGES >= POOL_MAX_SEGS)
			return -EPROTO;
		client_seg_ref(l, h->id, +1);
		if (!e || h->addr % SP_PAGE || e->state == E_MERGED || e->state == E_ZERO) {
			drop[ndrop++] = h->id;
		} else {
			c->m[c->nm++] = (struct merge_item){ .addr = h->addr, .id = h->id };
		}
		/* One area and one chunk's worth at a time. */
		next = i + 1 < n ? area_at(l, (uintptr_t)c->hint[i + 1].addr) : NULL;
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

	os_read_pages(c->tohash, sizeof(c->tohash[0]), k, l->vbuf, got);
	for (uint32_t j = 0; j < k; j++)
		if (got[j])
			classify_hashed(l, a, c->tohash[j],
					XXH3_64bits(l->vbuf + (size_t)j * SP_PAGE, SP_PAGE), c, ps);
}

static int scan_chunk(struct lib *l, struct area *a, uintptr_t s, uint32_t n, struct pass *ps)
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

/* ---- unmerge ---- */

static void unzero(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	if (!l->zero_page_ok)
		return; /* zero-segment pages were restored with the merged ones */
	for (uintptr_t p = s; p < e; p += SP_PAGE) {
		struct entry *en = entry_of(a, p);
		if (en->state != E_ZERO)
			continue;
		/* A write fault without a write: the page gets a frame of its own. */
		os_madvise((void *)p, SP_PAGE, MADV_POPULATE_WRITE);
		entry_set(l, en, E_NEW);
	}
}

int scan_unmerge(struct lib *l, uintptr_t s, uintptr_t e)
{
	int err = 0;

	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		uintptr_t from = s > a->start ? s : a->start, to = e < a->end ? e : a->end;
		if (from >= to)
			continue;
		int r = merge_restore(l, a, from, to);
		err = err ? err : r;
		unzero(l, a, from, to);
	}
	return err;
}

/* ---- the pass ---- */

static uint64_t clamp(int64_t v)
{
	return v < 0 ? 0 : (uint64_t)v;
}

void lib_fill_stats(struct lib *l, struct sp_proc_stats *st)
{
	st->rmap_items = clamp(l->st.rmap_items);
	st->zero_pages = clamp(l->st.zero);
	st->merging_pages = clamp(l->st.merging);
	st->cowed = clamp(l->st.cowed);
	st->unshared = l->st.unshared;
	st->volatile_pages = l->st.volatile_pages;
	st->merge_vmas = l->st.merge_vmas;
	st->vma_limited = l->st.vma_limited;
	st->merge_any = (uint32_t)l->merge_any;
	st->mergeable = l->merge_any || l->nranges;
}

/* Ask for budget; applies knobs and run=2. Grant, or -errno. */
static int64_t budget(struct lib *l, uint32_t want, int pass_done, struct pass *ps,
		      uint32_t *wait_ms)
{
	struct sp_budget b = { .want = want, .flags = pass_done ? BUDGET_PASS_DONE : 0,
			       .pass_gen = ps->gen, .scanned = l->scanned_since_report };
	struct sp_msg m;
	struct sp_budget_r r;
	int err;

	lib_fill_stats(l, &b.st);
	err = client_call(l, C_BUDGET, &b, sizeof(b), D_BUDGET, &m);
	if (err)
		return err;
	memcpy(&r, m.p, sizeof(r));
	l->scanned_since_report = 0;
	l->knobs = r.knobs;
	l->gen = r.gen;
	if (!ps->have_gen) {
		ps->gen = r.gen;
		ps->have_gen = 1;
	}
	if (r.unmerge)
		scan_unmerge(l, 0, UINTPTR_MAX);
	*wait_ms = r.wait_ms;
	l->hints_waiting = r.hints;
	return r.grant;
}

static struct area *area_from(struct lib *l, uintptr_t cursor)
{
	for (uint32_t i = 0; i < l->nareas; i++)
		if (l->areas[i].end > cursor)
			return &l->areas[i];
	return NULL;
}

/* Wait ms with l->lock released. A kick (madvise, prctl, scan_now) cuts
 * short only the rest between passes: waiting for budget ignores it, or a
 * stale kick would spin on budget requests holding the lock. */
static void sleep_ms(struct lib *l, uint32_t ms, int kickable)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (!(kickable && l->kick) && !l->stop &&
	       pthread_cond_timedwait(&l->wake, &l->lock, &ts) != ETIMEDOUT)
		;
}

/* Walk every area once. Called and returns with l->lock held. */
static int walk(struct lib *l, struct pass *ps)
{
	uintptr_t cursor = 0;
	struct area *a;

	while (!l->stop && (a = area_from(l, cursor))) {
		uintptr_t s = cursor > a->start ? cursor : a->start;
		uint32_t n, wait = 0;
		int64_t g;

		/* Untouched memory has nothing to merge; merged pages not faulted
		 * in (after fork) stay merged. Skipping them costs no budget. */
		s = os_next_present(l->pmfd, s, a->end);
		if (s >= a->end) {
			cursor = a->end;
			continue;
		}
		cursor = s;
		n = (uint32_t)((a->end - s) / SP_PAGE);
		if (n > CHUNK_PAGES)
			n = CHUNK_PAGES;
		g = budget(l, n, 0, ps, &wait);
		if (g < 0)
			return (int)g;
		if (l->hints_waiting) {
			int err = take_hints(l, ps);
			if (err)
				return err;
		}
		if (!g) {
			sleep_ms(l, wait ? wait : 1, 0);
			continue; /* areas may have changed while we slept */
		}
		a = area_from(l, cursor); /* budget() may have unmerged */
		if (!a)
			break;
		s = cursor > a->start ? cursor : a->start;
		if ((uint64_t)g < n)
			n = (uint32_t)g;
		if ((a->end - s) / SP_PAGE < n)
			n = (uint32_t)((a->end - s) / SP_PAGE);
		int err = scan_chunk(l, a, s, n, ps);
		if (err)
			return err;
		cursor = s + (uintptr_t)n * SP_PAGE;
		/* Let application threads waiting in our wrappers in. */
		pthread_mutex_unlock(&l->lock);
		pthread_mutex_lock(&l->lock);
	}
	return 0;
}

static int pass_locked(struct lib *l, struct pass *ps)
{
	uint32_t wait;
	int err;

	/* Also waits for D_HELLO, which may say our references died. */
	err = client_connect(l);
	if (err)
		return err;
	err = scan_refresh(l);
	if (err)
		return err;
	err = walk(l, ps);
	if (err)
		return err;
	l->st.volatile_pages = ps->volatile_pages;
	l->st.unshared = ps->unshared;
	int64_t g = budget(l, 0, 1, ps, &wait);
	return g < 0 ? (int)g : 0;
}

/* SAMEPAGE_DEBUG=1: one line per pass on stderr. No stdio: an application
 * thread may hold stderr's lock. */
static void debug_pass(struct lib *l, const struct pass *ps, int err)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf),
			 "samepage[%d]: pass %llu err %d areas %u merged %llu changed %llu "
			 "volatile %llu unshared %llu merging %llu zero %llu\n",
			 (int)getpid(), (unsigned long long)l->pass_seq, err, l->nareas,
			 (unsigned long long)ps->merged, (unsigned long long)ps->changed,
			 (unsigned long long)ps->volatile_pages, (unsigned long long)ps->unshared,
			 (unsigned long long)l->st.merging, (unsigned long long)l->st.zero);

	if (n > 0 && write(2, buf, (size_t)n) < 0) {
		/* nowhere to say it */
	}
}

/* Counters from the entries themselves (a fork child's first pass). */
static void recount(struct lib *l)
{
	l->st.rmap_items = l->st.merging = l->st.zero = l->st.cowed = 0;
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		for (size_t k = 0; k < (a->end - a->start) / SP_PAGE; k++) {
			l->st.rmap_items += a->e[k].state != E_NEW;
			l->st.merging += a->e[k].state == E_MERGED;
			l->st.zero += a->e[k].state == E_ZERO;
			l->st.cowed += a->e[k].state == E_COWED;
		}
	}
}

int scan_pass(struct lib *l)
{
	struct pass ps = { 0 };
	int err;

	pthread_mutex_lock(&l->lock);
	err = pass_locked(l, &ps);
	if (!err && l->recount_pending) {
		recount(l);
		l->recount_pending = 0;
	}
	if (l->debug)
		debug_pass(l, &ps, err);
	l->pass_seq++;
	if (!err) {
		int quiet = !ps.merged && !ps.changed;
		int base = (int)l->knobs.v[KNOB_SLEEP_MILLISECS];
		l->idle_ms = !quiet ? 0 : l->idle_ms ? l->idle_ms * 2 : (base > 10 ? base : 10);
		if (l->idle_ms > IDLE_MAX_MS)
			l->idle_ms = IDLE_MAX_MS;
	}
	pthread_cond_broadcast(&l->wake);
	pthread_mutex_unlock(&l->lock);
	return err;
}

void *scan_thread(void *arg)
{
	struct lib *l = arg;
	sigset_t all;

	/* Named, so that top -H and perf tell our time from the application's. */
	prctl(PR_SET_NAME, "samepage-scan", 0, 0, 0);
	/* Application signals go to application threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (l->first_pass_delay_ms) {
		pthread_mutex_lock(&l->lock);
		sleep_ms(l, (uint32_t)l->first_pass_delay_ms, 1);
		l->first_pass_delay_ms = 0;
		l->kick = 0;
		pthread_mutex_unlock(&l->lock);
	}
	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		int err = scan_pass(l);
		pthread_mutex_lock(&l->lock);
		/* A busy daemon (-EAGAIN) is asked again soon; none at all
		 * less often. */
		if (!l->kick)
			sleep_ms(l, err == -EAGAIN ? 200 : err ? 1000 : (uint32_t)l->idle_ms, 1);
		l->kick = 0;
		pthread_mutex_unlock(&l->lock);
	}
	return NULL;
}
