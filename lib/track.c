/* SPDX-License-Identifier: MIT */
/*
 * track — which pages the scanner tracks: the areas (track_eligible VMAs inside
 * the madvised ranges, or all of them under merge-any, refreshed from
 * /proc/self/smaps at each pass), one 8-byte entry per page of an area
 * (kernel KSM's rmap_item), and the references waiting to be dropped until
 * no VMA maps their page (invariant 2). The counters of /proc/PID/ksm_stat
 * come from the entries.
 */
#define _GNU_SOURCE
#include "lib.h"
#include "page.h"
#include "sort.h"

#include <errno.h>
#include <link.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define VMA_SLOTS 262144 /* > vm.max_map_count's default 65530 */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
static int note_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct lib *l = arg;

	(void)size;
	/* The program itself ("") is the application's: its .bss merges. */
	if (!info->dlpi_name || !info->dlpi_name[0])
		return 0;
	for (int k = 0; k < info->dlpi_phnum && l->nown < LIB_OWN_OBJECTS; k++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[k];
		if (ph->p_type != PT_LOAD || ph->p_memsz <= ph->p_filesz)
			continue;
		uintptr_t s = info->dlpi_addr + ph->p_vaddr + ph->p_filesz;
		uintptr_t e = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
		/* The anonymous pages: those past the file's last page. */
		s = (s + SP_PAGE - 1) & ~(uintptr_t)(SP_PAGE - 1);
		e = (e + SP_PAGE - 1) & ~(uintptr_t)(SP_PAGE - 1);
		if (e > s)
			l->own_bss[l->nown++] = (struct range){ s, e };
	}
	return 0;
}
#endif

int track_init(struct lib *l)
{
	struct arena *ar = &l->arena;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	dl_iterate_phdr(note_object, l);
#endif
	/* Sorted, as add_area_outside_own() walks them. */
	for (uint32_t k = 1; k < l->nown; k++)
		for (uint32_t m = k; m > 0 && l->own_bss[m].start < l->own_bss[m - 1].start; m--) {
			struct range t = l->own_bss[m];
			l->own_bss[m] = l->own_bss[m - 1];
			l->own_bss[m - 1] = t;
		}
	l->text = arena_alloc(ar, TEXT_BYTES);
	l->old_areas = arena_alloc(ar, LIB_MAX_AREAS * sizeof(struct area));
	l->vmas.v = arena_alloc(ar, VMA_SLOTS * sizeof(struct vma));
	l->vmas.cap = VMA_SLOTS;
	l->vmas.fixed = 1;
	return l->text && l->old_areas && l->vmas.v ? 0 : -ENOMEM;
}

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

static int track_eligible(const struct lib *l, const struct vma *v)
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

/* Said once per process (a fork child says it again). */
static void warn_no_room(struct lib *l, size_t bytes)
{
	pid_t me = getpid();

	if (l->said_no_room == me)
		return;
	l->said_no_room = me;
	sp_log("samepage: process %d: no address space left for %zu KiB of page tracking: "
	       "the address space limit (ulimit -v) is reached; merging limited to the "
	       "memory tracked so far\n", (int)me, bytes >> 10);
}

static struct entry *entries_alloc(struct lib *l, size_t npages)
{
	struct entry *e = arena_alloc(&l->arena, npages * sizeof(struct entry));

	if (!e)
		warn_no_room(l, npages * sizeof(struct entry));
	return e;
}

static void entries_free(struct lib *l, struct area *a)
{
	arena_free(&l->arena, a->e, (a->end - a->start) / SP_PAGE * sizeof(struct entry));
	a->e = NULL;
}

void track_pend(struct lib *l, uint32_t id)
{
	/* Full list: keep the reference for good. Leaking a pool page is
	 * safe; dropping one a VMA may still map is not (invariant 2). */
	if (l->npending < LIB_MAX_PENDING)
		l->pending[l->npending++] = id;
}

/* The reference an entry holds, as C_UNREF names it. */
uint32_t track_entry_ref(const struct entry *e)
{
	return e->pool | (e->state == E_COWED ? SP_UNREF_COWED : 0);
}

/* Entries of [s, e) leave tracking: merged ones wait in the pending list. */
static int forget_entries(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	for (uintptr_t p = s; p < e; p += SP_PAGE) {
		struct entry *en = entry_of(a, p);
		if ((en->state == E_MERGED || en->state == E_COWED) && en->pool != SP_POOL_NONE)
			track_pend(l, track_entry_ref(en));
		entry_set(l, en, E_NEW);
	}
	return 0;
}

/* The daemon that held our references died (client.c): every merged page
 * is ordinary memory now, mapped from a pool nothing will write again. */
void track_refs_lost(struct lib *l)
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

int track_each(struct lib *l, uintptr_t s, uintptr_t e,
	       int (*fn)(struct lib *l, struct area *a, uintptr_t s, uintptr_t e))
{
	int err = 0;

	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		uintptr_t from = s > a->start ? s : a->start, to = e < a->end ? e : a->end;
		if (from < to) {
			int r = fn(l, a, from, to);
			err = err ? err : r;
		}
	}
	return err;
}

void track_forget(struct lib *l, uintptr_t s, uintptr_t e)
{
	track_each(l, s, e, forget_entries);
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

	while (*i < vl->n && !track_eligible(l, &vl->v[*i]))
		(*i)++;
	if (*i == vl->n)
		return 0;
	*s = vl->v[*i].start;
	*e = vl->v[*i].end;
	*flags = vl->v[*i].flags & CARRIED_FLAGS;
	*prot = vl->v[*i].prot;
	/* A run ends where the attributes to carry over change (an mlock'ed
	 * VMA beside a plain one): each area has one set. */
	for ((*i)++; *i < vl->n && track_eligible(l, &vl->v[*i]) && vl->v[*i].start == *e &&
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

/* add_area() for what of [s, e) lies outside the .bss of the shared
 * objects loaded before us (l->own_bss; sanitizer builds only): the
 * scanner's instrumented code reads the runtime's .bss at every function
 * entry, and would wait on itself when a span holding it is frozen with
 * its missing faults held. A plain build reads no .bss under a freeze
 * (DESIGN.md, "Pages a device may write"). New memory the kernel appends
 * to such a VMA still merges. */
static void add_area_outside_own(struct lib *l, struct area *old, uint32_t nold, uint32_t *j,
				 uintptr_t s, uintptr_t e, uint32_t flags, uint8_t prot)
{
	for (uint32_t k = 0; k < l->nown && s < e; k++) {
		const struct range *b = &l->own_bss[k];
		if (b->end <= s || b->start >= e)
			continue;
		if (b->start > s)
			add_area(l, old, nold, j, s, b->start, flags, prot);
		s = b->end;
	}
	if (s < e)
		add_area(l, old, nold, j, s, e, flags, prot);
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
			add_area_outside_own(l, old, nold, &j, s, e, flags, prot);
			continue;
		}
		/* The madvised ranges inside this run; one may span several runs. */
		while (ri < l->nranges && l->ranges[ri].end <= s)
			ri++;
		for (uint32_t k = ri; k < l->nranges && l->ranges[k].start < e; k++) {
			uintptr_t rs = l->ranges[k].start > s ? l->ranges[k].start : s;
			uintptr_t re = l->ranges[k].end < e ? l->ranges[k].end : e;
			add_area_outside_own(l, old, nold, &j, rs, re, flags, prot);
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
	uint64_t ino = l->segs[id / SP_SEG_PAGES].ino, idx = id % SP_SEG_PAGES;

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

int track_refresh(struct lib *l)
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

/* The area holding p, or NULL (areas are sorted and disjoint). */
struct area *track_area_at(struct lib *l, uintptr_t p)
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
	st->limited = (uint32_t)l->st.limited;
	st->pages_pinned = l->st.pinned > UINT32_MAX ? UINT32_MAX : (uint32_t)l->st.pinned;
	st->merge_any = (uint32_t)l->merge_any;
	st->mergeable = l->merge_any || l->nranges;
}

void track_zero_settle(struct lib *l)
{
	if (!l->zero_page_ok || l->st.zero <= 0)
		return;
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		uintptr_t p = a->start, s[64], e[64];
		while (p < a->end) {
			long n = os_written_anon(l->pmfd, p, a->end, s, e, 64, &p);
			if (n <= 0)
				break;
			for (long k = 0; k < n; k++)
				for (uintptr_t q = s[k]; q < e[k]; q += SP_PAGE)
					if (entry_of(a, q)->state == E_ZERO)
						entry_set(l, entry_of(a, q), E_NEW);
		}
	}
}

/* Counters from the entries themselves (a fork child's first pass). */
void track_recount(struct lib *l)
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
