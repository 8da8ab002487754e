/* SPDX-License-Identifier: MIT */
/*
 * merge — how a process changes its own pages (DESIGN.md, "The path of one
 * page"): freeze with userfaultfd write-protection, verify byte for
 * byte, replace with one mmap per run, wake. Also the reverse: restoring
 * plain anonymous pages (unmerge) and discarding merged pages
 * (MADV_DONTNEED). Every function here runs with lib.lock held.
 */
#define _GNU_SOURCE
#include "lib.h"
#include "page.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* Items closer than this are frozen as one span: fewer syscalls, at the
 * price of briefly blocking writers of the few pages in between. */
#define SPAN_GAP_PAGES 8

int merge_init(struct lib *l)
{
	l->vbuf = arena_alloc(&l->arena, SPAN_MAX_PAGES * SP_PAGE);
	l->abuf = arena_alloc(&l->arena, ABUF_PAGES * SP_PAGE);
	return l->vbuf && l->abuf ? 0 : -ENOMEM;
}

struct vma_cache {
	struct vma v;     /* the kernel's VMA at the last address asked */
	int ok;           /* v is replaceable */
	uintptr_t snap_s, snap_e; /* the snapshot VMA v was judged with */
};

/* Is the page at a still memory we may replace: private, and anonymous or
 * a pool page (of any protection: PROT_NONE pages are read through
 * /proc/self/mem)? Asked of the kernel after the freeze (once per
 * VMA, not per page: the freeze holds while we ask), so a mapping the
 * application replaced since the pass began is not touched. */
static int replaceable(struct lib *l, uintptr_t a, uint8_t *prot, struct vma_cache *vc)
{
	const struct vma *snap = os_vma_find(&l->vmas, a);
	int err;

	if (vc->v.end && a >= vc->v.start && a < vc->v.end &&
	    (snap ? snap->start : 0) == vc->snap_s && (snap ? snap->end : 0) == vc->snap_e)
		goto done;
	err = os_vma_query(l->mapsfd, a, &vc->v);
	if (err == -ENOTTY && snap) {
		vc->v = *snap;
		err = 0;
	}
	vc->snap_s = snap ? snap->start : 0;
	vc->snap_e = snap ? snap->end : 0;
	vc->ok = !err && vc->v.private_ &&
		 (vc->v.kind == VMA_ANON || (snap && snap->kind == VMA_POOL));
	if (err)
		vc->v.end = 0;
done:
	*prot = vc->v.prot;
	return vc->ok;
}

/* May the written copies among the n pages at addr (stride apart) be
 * dropped, as far as the pass-start snapshot tells where they are? Asked
 * before the freeze (it reads /proc); 1 when none is in a pool VMA. */
static int copies_droppable(struct lib *l, const uintptr_t *addr, size_t stride, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const struct vma *v = os_vma_find(
			&l->vmas, *(const uintptr_t *)((const char *)addr + (size_t)i * stride));
		if (v && v->kind == VMA_POOL)
			return !evict_copies_pinnable(l);
	}
	return 1;
}

/* Invariant 10 for a page verified replaceable (vc its VMA): in a pool VMA
 * it is a written copy, which nothing can vouch for but the absence of
 * anything that pins (copies_ok, copies_droppable()). */
static int copy_ok(struct lib *l, const struct vma_cache *vc, uintptr_t p, int copies_ok)
{
	uint64_t pm;

	if (vc->v.kind == VMA_ANON || copies_ok)
		return 1;
	/* Mapping its pool page (defragmentation moves such pages): no
	 * frame of its own to lose. */
	if (os_pagemap(l->pmfd, p, 1, &pm) == 0 && PM_PRESENT(pm) && PM_FILE(pm))
		return 1;
	l->st.pinned++;
	return 0;
}

static uint32_t span_end(const uintptr_t *addr, uint32_t i, uint32_t n, size_t stride)
{
	uint32_t j = i + 1;

#define ADDR(k) (*(const uintptr_t *)((const char *)addr + (size_t)(k) * stride))
	while (j < n && ADDR(j) - ADDR(j - 1) <= SPAN_GAP_PAGES * SP_PAGE &&
	       ADDR(j) - ADDR(i) < SPAN_MAX_PAGES * SP_PAGE)
		j++;
#undef ADDR
	return j;
}

/* Unprotect the parts of [s, e) that still belong to the frozen VMAs, i.e.
 * outside the runs we replaced (done[] marks replaced pages by offset). */
static void unprotect_rest(struct lib *l, uintptr_t s, uintptr_t e, const uint8_t *done)
{
	uintptr_t p = s;

	while (p < e) {
		if (done[(p - s) / SP_PAGE]) {
			p += SP_PAGE;
			continue;
		}
		uintptr_t q = p;
		while (q < e && !done[(q - s) / SP_PAGE])
			q += SP_PAGE;
		os_uffd_unprotect(l->uffd, p, q - p);
		p = q;
	}
}

/* Map [addr, addr+len) privately from fd at off, in place of what is there
 * (frozen and verified by the caller). */
static int map_file_run(struct area *a, uintptr_t addr, size_t len, uint8_t prot, int fd,
			off_t off)
{
	if (os_mmap((void *)addr, len, prot, MAP_PRIVATE | MAP_FIXED, fd, off) == MAP_FAILED)
		return -ENOMEM;
	/* Invariant 3: the replacement keeps the anonymous VMA's attributes. */
	os_apply_flags(addr, len, a->vmflags);
	/* Map the pages now, read-only, as kernel KSM leaves its page mapped:
	 * the application's next read costs no fault. */
	os_madvise((void *)addr, len, MADV_POPULATE_READ);
	return 0;
}

/* Does the VMA (vc, the kernel's, asked under the freeze) still map pool
 * page id at a? Only then may dropping our copy show that page. */
static int maps_here(const struct lib *l, const struct vma_cache *vc, uintptr_t a, uint32_t id)
{
	const struct vma *v = &vc->v;

	return v->end && a >= v->start && a < v->end && v->ino &&
	       v->ino == l->segs[id / SP_SEG_PAGES].ino &&
	       v->pgoff + (a - v->start) / SP_PAGE == id % SP_SEG_PAGES;
}

/* Merge a run in place: our copies go, the pool page under them shows
 * again (a private file mapping reads its file where it has no copy).
 * No mapping changes: no VMA split. */
static void drop_copies(uintptr_t addr, size_t len)
{
	os_madvise((void *)addr, len, MADV_DONTNEED);
	os_madvise((void *)addr, len, MADV_POPULATE_READ);
}

static int continues_run(const struct merge_item *prev, const struct merge_item *cur,
			 uint8_t pprot, uint8_t cprot)
{
	return cur->ok && prev->ok && cur->inplace == prev->inplace &&
	       cur->addr == prev->addr + SP_PAGE &&
	       cur->id == prev->id + 1 && cur->id / SP_SEG_PAGES == prev->id / SP_SEG_PAGES &&
	       pprot == cprot;
}

/* Read the pool pages of the span into l->vbuf, one pread per run of
 * adjacent ones, before anything is frozen: a pool page we hold a
 * reference to never changes (invariant 2), so writers need not wait for
 * this. got[i]: item i's bytes are in vbuf page i. */
static void read_pool_pages(struct lib *l, const struct merge_item *it, const int *fd,
			    uint32_t n, uint8_t *got)
{
	for (uint32_t i = 0; i < n;) {
		uint32_t j = i + 1;
		if (fd[i] < 0) {
			got[i++] = 0;
			continue;
		}
		while (j < n && fd[j] == fd[i] && it[j].id == it[j - 1].id + 1)
			j++;
		size_t len = (size_t)(j - i) * SP_PAGE;
		ssize_t k = raw_pread(fd[i], l->vbuf + (size_t)i * SP_PAGE, len,
				  (off_t)(it[i].id % SP_SEG_PAGES) * SP_PAGE);
		memset(got + i, k == (ssize_t)len, j - i);
		i = j;
	}
}

/* The end of the run of items from i: i + 1 for an item not ok; else
 * the items merged by one mmap (continues_run()). */
static uint32_t run_end(const struct merge_item *it, uint32_t i, uint32_t n, const uint8_t *prot)
{
	uint32_t j = i + 1;

	while (it[i].ok && j < n && continues_run(&it[j - 1], &it[j], prot[j - 1], prot[j]))
		j++;
	return j;
}

/* Take the runs to replace (not in place) out of the mapping (evict.c);
 * a page the kernel will not move is left as it was (ok = 0). */
static void evict_runs(struct lib *l, struct area *a, struct evict *ev, struct merge_item *it,
		       uint32_t n, const uint8_t *prot)
{
	for (uint32_t i = 0, j; i < n; i = j) {
		j = run_end(it, i, n, prot);
		if (!it[i].ok)
			continue;
		if (!it[i].inplace && evict_run(l, ev, a->vmflags, it[i].addr, j - i, prot[i]))
			for (uint32_t k = i; k < j; k++)
				it[k].ok = 0;
		for (uint32_t k = i; k < j; k++)
			if (!it[k].inplace &&
			    !evict_replaceable(ev, it[k].addr))
				it[k].ok = 0;
	}
}

static void merge_span(struct lib *l, struct area *a, struct merge_item *it, uint32_t n)
{
	uintptr_t s = it[0].addr, e = it[n - 1].addr + SP_PAGE;
	uint8_t done[SPAN_MAX_PAGES];
	uint8_t prot[SPAN_MAX_PAGES], got[SPAN_MAX_PAGES];
	int8_t st[SPAN_MAX_PAGES];
	int fd[SPAN_MAX_PAGES];
	struct evict ev;

	memset(done, 0, (e - s) / SP_PAGE);
	evict_init(&ev, s, e, st);
	/* Segments first: fetching one is a daemon round trip, not something
	 * to do while the application's writers are blocked; so is asking
	 * whether written copies may be dropped. */
	for (uint32_t i = 0; i < n; i++)
		fd[i] = client_pool_fd(l, it[i].id);
	int copies_ok = copies_droppable(l, &it[0].addr, sizeof(*it), n);
	read_pool_pages(l, it, fd, n, got);
	if (os_uffd_freeze(l->uffd, s, e - s))
		return;
	struct vma_cache vc = { 0 };
	for (uint32_t i = 0; i < n; i += ABUF_PAGES) {
		uint32_t k = n - i < ABUF_PAGES ? n - i : ABUF_PAGES;
		uint8_t mine[ABUF_PAGES];
		/* Our pages, read by the kernel: glibc may unmap them behind our
		 * wrappers even while they are frozen. */
		os_read_pages(l->mem_fd, &it[i].addr, sizeof(*it), k, l->abuf, mine);
		for (uint32_t j = 0; j < k; j++) {
			/* Invariant 1: frozen, and verified equal byte for byte. */
			it[i + j].ok = got[i + j] && mine[j] &&
				       replaceable(l, it[i + j].addr, &prot[i + j], &vc) &&
				       (!it[i + j].inplace ||
					maps_here(l, &vc, it[i + j].addr, it[i + j].id)) &&
				       page_equal(l->abuf + (size_t)j * SP_PAGE,
						  l->vbuf + (size_t)(i + j) * SP_PAGE, SP_PAGE);
			it[i + j].ok = it[i + j].ok && copy_ok(l, &vc, it[i + j].addr, copies_ok);
		}
	}
	/* Invariant 10: no frame a device may still write is dropped (and
	 * none is taken out unless readers of the hole would wait). */
	if (os_uffd_hold_missing(l->uffd, s, e - s))
		for (uint32_t i = 0; i < n; i++)
			it[i].ok = 0;
	evict_runs(l, a, &ev, it, n, prot);
	for (uint32_t i = 0, j; i < n; i = j) {
		j = run_end(it, i, n, prot);
		if (!it[i].ok)
			continue;
		if (it[i].inplace) {
			/* Not done: the VMA stays, registered; its protection
			 * goes with the rest below. */
			drop_copies(it[i].addr, (size_t)(j - i) * SP_PAGE);
			continue;
		}
		if (map_file_run(a, it[i].addr, (size_t)(j - i) * SP_PAGE, prot[i], fd[i],
				 (off_t)(it[i].id % SP_SEG_PAGES) * SP_PAGE) == 0) {
			memset(done + (it[i].addr - s) / SP_PAGE, 1, j - i);
		} else {
			evict_undo(l, &ev, it[i].addr, j - i);
			for (uint32_t k = i; k < j; k++)
				it[k].ok = 0;
		}
	}
	unprotect_rest(l, s, e, done);
	os_uffd_thaw(l->uffd, s, e - s);
	evict_close(l, &ev);
}

int merge_pages(struct lib *l, struct area *a, struct merge_item *it, uint32_t n)
{
	if (l->uffd < 0)
		return l->uffd;
	for (uint32_t i = 0; i < n;) {
		uint32_t j = span_end(&it[0].addr, i, n, sizeof(*it));
		merge_span(l, a, it + i, j - i);
		i = j;
	}
	return 0;
}

static int is_zero(const void *p)
{
	return page_is_zero(p, SP_PAGE);
}

/* The end of the run of zero pages from i: i + 1 for a page not ok; else
 * the adjacent ok pages of one protection. */
static uint32_t zero_run_end(const uintptr_t *addr, const uint32_t *ok, const uint8_t *prot,
			     uint32_t i, uint32_t n)
{
	uint32_t j = i + 1;

	while (ok[i] && j < n && ok[j] && addr[j] == addr[j - 1] + SP_PAGE && prot[j] == prot[i])
		j++;
	return j;
}

/* Map runs of verified zero pages of [s, e) from the zero segment: a run of
 * n pages maps offsets [0, n), shared by every run of every process. */
static void map_zero_runs(struct area *a, uintptr_t *addr, uint32_t *ok, const uint8_t *prot,
			  uint32_t n, int zfd, uintptr_t s, uint8_t *done)
{
	for (uint32_t i = 0, j; i < n; i = j) {
		j = zero_run_end(addr, ok, prot, i, n);
		if (!ok[i])
			continue;
		if (map_file_run(a, addr[i], (size_t)(j - i) * SP_PAGE, prot[i], zfd, 0))
			for (uint32_t k = i; k < j; k++)
				ok[k] = 0;
		else
			memset(done + (addr[i] - s) / SP_PAGE, 1, j - i);
	}
}

/* May the page whose VMA vc holds be dropped to read as the zero page?
 * Only in anonymous memory: in a pool VMA (a merged page written since,
 * a private copy over a file mapping), MADV_DONTNEED shows the pool page
 * again, with its old bytes, where the application wrote zeros. */
static int droppable(const struct vma_cache *vc)
{
	return vc->v.kind == VMA_ANON && !vc->v.ino;
}

/* Take the verified runs (ok[]) of [s, e) out of the mapping (evict.c);
 * ok[] falls to 0 where a page is left as it was. */
static void evict_zero_runs(struct lib *l, struct area *a, struct evict *ev, const uintptr_t *addr,
			    uint32_t *ok, const uint8_t *prot, uint32_t n)
{
	for (uint32_t i = 0, j; i < n; i = j) {
		j = zero_run_end(addr, ok, prot, i, n);
		if (!ok[i])
			continue;
		int err = evict_run(l, ev, a->vmflags, addr[i], j - i, prot[i]);
		for (uint32_t k = i; k < j; k++)
			ok[k] = !err && evict_replaceable(ev, addr[k]);
	}
}

static void zero_span(struct lib *l, struct area *a, uintptr_t *addr, uint32_t *ok, uint32_t n,
		      int zfd)
{
	uintptr_t s = addr[0], e = addr[n - 1] + SP_PAGE;
	uint8_t done[(SPAN_GAP_PAGES + 1) * CHUNK_PAGES];
	int8_t st[(SPAN_GAP_PAGES + 1) * CHUNK_PAGES];
	uint8_t prot[CHUNK_PAGES];
	struct evict ev;

	memset(done, 0, (e - s) / SP_PAGE);
	evict_init(&ev, s, e, st);
	int copies_ok = zfd >= 0 && copies_droppable(l, addr, sizeof(*addr), n);
	if (os_uffd_freeze(l->uffd, s, e - s)) {
		memset(ok, 0, n * sizeof(*ok));
		return;
	}
	/* Invariant 1: only frozen pages verified all-zero are replaced (read
	 * by the kernel: see merge_span()). */
	struct vma_cache vc = { 0 };
	for (uint32_t i = 0; i < n; i += ABUF_PAGES) {
		uint32_t k = n - i < ABUF_PAGES ? n - i : ABUF_PAGES;
		uint8_t mine[ABUF_PAGES];
		os_read_pages(l->mem_fd, &addr[i], sizeof(*addr), k, l->abuf, mine);
		for (uint32_t j = 0; j < k; j++)
			ok[i + j] = mine[j] && replaceable(l, addr[i + j], &prot[i + j], &vc) &&
				    (zfd >= 0 || droppable(&vc)) &&
				    is_zero(l->abuf + (size_t)j * SP_PAGE) &&
				    copy_ok(l, &vc, addr[i + j], copies_ok);
	}
	/* Invariant 10: no frame a device may still write is dropped (and
	 * none is taken out unless readers of the hole would wait). */
	if (os_uffd_hold_missing(l->uffd, s, e - s))
		memset(ok, 0, n * sizeof(*ok));
	evict_zero_runs(l, a, &ev, addr, ok, prot, n);
	if (zfd < 0) {
		/* The next read maps the kernel's zero page: a page moved out
		 * left nothing to drop. */
		for (uint32_t k = 0; k < n; k++)
			ok[k] = ok[k] && (*evict_state(&ev, addr[k]) == EV_MOVED ||
					  os_madvise((void *)addr[k], SP_PAGE, MADV_DONTNEED) == 0);
	} else {
		map_zero_runs(a, addr, ok, prot, n, zfd, s, done);
		/* A run that could not be mapped gets its pages back. */
		for (uint32_t k = 0; k < n; k++)
			if (!ok[k])
				evict_undo(l, &ev, addr[k], 1);
	}
	unprotect_rest(l, s, e, done);
	os_uffd_thaw(l->uffd, s, e - s);
	evict_close(l, &ev);
}

int merge_zero(struct lib *l, struct area *a, uintptr_t *addr, uint32_t n, uint32_t *ok)
{
	int zfd = -1;

	if (l->uffd < 0)
		return l->uffd;
	/* Fetched before freezing anything: it is a daemon round trip. */
	if (!l->zero_page_ok) {
		zfd = client_zero_fd(l);
		if (zfd < 0)
			return zfd;
	}
	for (uint32_t i = 0; i < n;) {
		uint32_t j = span_end(addr, i, n, sizeof(*addr));
		zero_span(l, a, addr + i, ok + i, j - i, zfd);
		i = j;
	}
	return 0;
}

/* Replace [s, e) by fresh anonymous memory holding copy ? its bytes : zeros,
 * with the same protection and attributes. A page that cannot be read
 * leaves everything as it was (-EFAULT): its bytes are not lost. */
static int to_anon(struct lib *l, uint32_t vmflags, uintptr_t s, uintptr_t e, uint8_t prot,
		   int copy)
{
	size_t len = e - s;
	void *tmp = os_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (tmp == MAP_FAILED)
		return -ENOMEM;
	if (copy) {
		/* Read by the kernel, a page at a time (see merge_span()). */
		uint8_t got[256];
		for (uintptr_t p = s; p < e; p += 256 * SP_PAGE) {
			uint32_t k = (uint32_t)((e - p) / SP_PAGE < 256 ? (e - p) / SP_PAGE : 256);
			uintptr_t addr[256];
			for (uint32_t j = 0; j < k; j++)
				addr[j] = p + (uintptr_t)j * SP_PAGE;
			os_read_pages(l->mem_fd, addr, sizeof(addr[0]), k,
				      (unsigned char *)tmp + (p - s), got);
			if (memchr(got, 0, k)) {
				os_munmap(tmp, len);
				return -EFAULT;
			}
		}
	}
	if ((prot != (PROT_READ | PROT_WRITE) && os_mprotect(tmp, len, prot) < 0) ||
	    os_apply_flags((uintptr_t)tmp, len, vmflags) < 0 ||
	    os_mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)s) == MAP_FAILED) {
		os_munmap(tmp, len);
		return -errno;
	}
	return 0;
}

/* Protection of the page at p now, or -1 when nothing maps it. */
static int page_prot(struct lib *l, uintptr_t p)
{
	struct vma v;
	const struct vma *snap;
	int err = os_vma_query(l->mapsfd, p, &v);

	if (!err)
		return v.prot;
	if (err != -ENOTTY)
		return -1;
	snap = os_vma_find(&l->vmas, p);
	return snap ? snap->prot : -1;
}

int entry_mapped(const struct lib *l, const struct entry *e)
{
	return e->state == E_MERGED || e->state == E_COWED ||
	       (e->state == E_ZERO && !l->zero_page_ok);
}

/* Runs of mapped entries (entry_mapped) in [s, e) with one protection, for fn. */
static int for_merged_runs(struct lib *l, struct area *a, uintptr_t s, uintptr_t e,
			   int (*fn)(struct lib *, struct area *, uintptr_t, uintptr_t, uint8_t))
{
	int err = 0;

	for (uintptr_t p = s; p < e;) {
		uintptr_t q = p + SP_PAGE;
		int prot = entry_mapped(l, &a->e[(p - a->start) / SP_PAGE]) ? page_prot(l, p) : -1;

		/* Unmapped behind our back: track_forget's pending list keeps it. */
		if (prot < 0) {
			p = q;
			continue;
		}
		/* Bounded runs: writers of a run stay blocked while it is copied. */
		while (q < e && q - p < CHUNK_PAGES * SP_PAGE &&
		       entry_mapped(l, &a->e[(q - a->start) / SP_PAGE]) && page_prot(l, q) == prot)
			q += SP_PAGE;
		int r = fn(l, a, p, q, (uint8_t)prot);
		err = err ? err : r;
		p = q;
	}
	return err;
}

static void drop_refs(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	uint32_t ids[CHUNK_PAGES];
	uint32_t n = 0;

	for (uintptr_t p = s; p < e; p += SP_PAGE) {
		struct entry *en = &a->e[(p - a->start) / SP_PAGE];
		/* Zero-segment pages hold no reference: that file is never reused. */
		if ((en->state == E_MERGED || en->state == E_COWED) && en->pool != SP_POOL_NONE)
			ids[n++] = en->pool | (en->state == E_COWED ? SP_UNREF_COWED : 0);
		entry_set(l, en, E_NEW);
		if (n == CHUNK_PAGES) {
			client_unref(l, ids, n);
			n = 0;
		}
	}
	if (n)
		client_unref(l, ids, n);
}

static int restore_run(struct lib *l, struct area *a, uintptr_t s, uintptr_t e, uint8_t prot)
{
	int err;

	err = os_uffd_freeze(l->uffd, s, e - s);
	if (err)
		return err;
	/* Invariant 1: frozen while copied, so no write lands in the old page
	 * after the copy was taken. */
	err = to_anon(l, a->vmflags, s, e, prot, 1);
	if (err)
		os_uffd_unprotect(l->uffd, s, e - s);
	os_uffd_thaw(l->uffd, s, e - s);
	if (err)
		return err;
	/* Invariant 2: no VMA maps these pool pages now; drop the references. */
	drop_refs(l, a, s, e);
	return 0;
}

int merge_restore(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	if (l->uffd < 0)
		return l->uffd;
	return for_merged_runs(l, a, s, e, restore_run);
}

static int discard_run(struct lib *l, struct area *a, uintptr_t s, uintptr_t e, uint8_t prot)
{
	/* Invariant 3: DONTNEED/FREE on a merged page must read back zeros;
	 * on the private file mapping it would read the pool page again. */
	int err = to_anon(l, a->vmflags, s, e, prot, 0);

	if (!err)
		drop_refs(l, a, s, e);
	return err;
}

int merge_discard(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	return for_merged_runs(l, a, s, e, discard_run);
}

int merge_discard_moved(struct lib *l, uintptr_t s, uintptr_t e)
{
	int err = 0, fresh = 0;

	/* The madvise wrapper's hot path (allocators purge with DONTNEED):
	 * no VMA queries in a process that never mapped a segment. */
	if (!l->had_segments)
		return 0;
	for (uintptr_t p = s; p < e;) {
		struct vma v;
		int r = os_vma_query_named(l->mapsfd, p, &v);
		if (r == -ENOTTY) {
			/* Before Linux 6.11: a fresh snapshot, once per call. */
			r = fresh ? 0 : os_read_vmas(&l->vmas, l->text, TEXT_BYTES);
			fresh = 1;
			const struct vma *f = r ? NULL : os_vma_find(&l->vmas, p);
			r = f ? 0 : -ENOENT;
			if (f)
				v = *f;
		}
		if (r) {
			p += SP_PAGE; /* unmapped: the kernel will say ENOMEM */
			continue;
		}
		uintptr_t q = v.end < e ? v.end : e;
		/* Invariant 3: whatever our entries say, a private mapping of
		 * our segments here would show the pool page again. */
		for (uintptr_t t = p; v.private_ && v.kind == VMA_POOL && t < q;) {
			uintptr_t u = q - t > CHUNK_PAGES * SP_PAGE ? t + CHUNK_PAGES * SP_PAGE : q;
			r = to_anon(l, v.flags & (VF_LOCKED | VF_DONTDUMP | VF_DONTCOPY | VF_HUGEPAGE |
						  VF_NOHUGEPAGE), t, u, v.prot, 0);
			err = err ? err : r;
			t = u;
		}
		p = q;
	}
	return err;
}

/* One private pool mapping becomes anonymous memory with its bytes. The
 * caller is a fork child alone in its address space (no other thread can
 * write or unmap), so it is read directly, made readable first if it was
 * not. */
static int detach_vma(const struct vma *v)
{
	size_t len = v->end - v->start;
	void *tmp = os_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (tmp == MAP_FAILED)
		return -ENOMEM;
	if (!(v->prot & PROT_READ) && os_mprotect((void *)v->start, len, PROT_READ) < 0)
		goto fail;
	memcpy(tmp, (void *)v->start, len);
	if ((v->prot != (PROT_READ | PROT_WRITE) && os_mprotect(tmp, len, v->prot) < 0) ||
	    os_apply_flags((uintptr_t)tmp, len, v->flags & (VF_LOCKED | VF_DONTDUMP | VF_DONTCOPY |
							    VF_HUGEPAGE | VF_NOHUGEPAGE)) < 0 ||
	    os_mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)v->start) == MAP_FAILED)
		goto fail;
	return 0;
fail:
	os_munmap(tmp, len);
	return -errno;
}

int merge_detach_all(struct lib *l)
{
	int err = os_read_vmas(&l->vmas, l->text, TEXT_BYTES);

	for (size_t i = 0; !err && i < l->vmas.n; i++) {
		const struct vma *v = &l->vmas.v[i];
		if (v->kind == VMA_POOL && v->private_)
			err = detach_vma(v);
	}
	return err;
}

/* ---- filling gaps (DESIGN.md, "Filling gaps") ---- */

/* A stretch being filled: its scratch copy at tmp, its pages taken out. */
struct fill_ctx {
	uintptr_t s, tmp;
	uint32_t vmflags;
	uint8_t prot;
	uint8_t *copied;  /* per page of the stretch: copied into tmp, to take out */
	struct evict ev;
};

/* Is the kernel's VMA at want->start still exactly the snapshot's want? */
static int same_vma(struct lib *l, const struct vma *want)
{
	struct vma v;

	return !os_vma_query(l->mapsfd, want->start, &v) && v.start == want->start &&
	       v.end == want->end && v.ino == want->ino && v.prot == want->prot &&
	       v.private_ == want->private_ && (!v.ino || v.pgoff == want->pgoff);
}

/* UFFDIO_COPY the k pages at addr[] (of the stretch at s) into tmp; they
 * are to leave the stretch (fill_evict()). */
static int fill_flush(struct lib *l, struct fill_ctx *fc, const uintptr_t *addr, uint32_t k)
{
	uint8_t got[ABUF_PAGES];

	os_read_pages(l->mem_fd, addr, sizeof(addr[0]), k, l->abuf, got);
	for (uint32_t j = 0; j < k; j++) {
		if (!got[j])
			return -EAGAIN;
		int err = os_uffd_copy(l->uffd, fc->tmp + (addr[j] - fc->s),
				       l->abuf + (size_t)j * SP_PAGE, SP_PAGE);
		if (err)
			return err;
		fc->copied[(addr[j] - fc->s) / SP_PAGE] = 1;
	}
	return 0;
}

/* Take the pages copied out of the stretch [s, s+len) (evict.c): a page
 * the kernel will not move may be pinned for a device, and filling gains
 * no memory to risk it for (invariant 10: -EBUSY, every page goes back).
 * After every read of the stretch: readers of the holes wait from here. */
static int fill_evict(struct lib *l, struct fill_ctx *fc, size_t len)
{
	uint32_t n = (uint32_t)(len / SP_PAGE);
	int err = os_uffd_hold_missing(l->uffd, fc->s, len);

	for (uint32_t i = 0; i < n && !err;) {
		uint32_t j = i + 1;
		if (!fc->copied[i]) {
			i++;
			continue;
		}
		while (j < n && fc->copied[j])
			j++;
		err = evict_run(l, &fc->ev, fc->vmflags, fc->s + (size_t)i * SP_PAGE, j - i, fc->prot);
		for (; !err && i < j; i++)
			if (fc->ev.st[i] != EV_MOVED)
				err = -EBUSY;
	}
	return err;
}

/* Map the pool pages [p, q) of the stretch at s in tmp now, as they are
 * mapped in the stretch: a page merged stays mapped throughout. */
static void fill_populate(uintptr_t s, uintptr_t tmp, uintptr_t p, uintptr_t q)
{
	if (q > p)
		os_madvise((void *)(tmp + (p - s)), q - p, MADV_POPULATE_READ);
}

/* Copy into tmp (the stretch's new mapping at s) every page of [s, e)
 * that is not the pool's page at its offset: the gaps' pages and written
 * copies; and map in tmp the pool pages the stretch has mapped. Under the
 * freeze: these are the bytes every writer waits on. A page swapped out,
 * or a gap page not ours alone (a fork shares it), stops it (-EAGAIN):
 * nothing is lost, the stretch stays as it was. */
static int fill_copy(struct lib *l, struct fill_ctx *fc, const struct vma *v, uint32_t nv,
		     int copy_ok)
{
	uintptr_t s = v[0].start, e = v[nv - 1].end, addr[ABUF_PAGES], mapped = 0, tmp = fc->tmp;
	uint32_t k = 0, vi = 0;
	int err = 0;

	for (uintptr_t w = s; w < e && !err; w += CHUNK_PAGES * SP_PAGE) {
		uint32_t n = (uint32_t)((e - w) / SP_PAGE < CHUNK_PAGES ? (e - w) / SP_PAGE : CHUNK_PAGES);
		err = os_pagemap(l->pmfd, w, n, l->pm);
		for (uint32_t i = 0; i < n && !err; i++) {
			uintptr_t p = w + (uintptr_t)i * SP_PAGE;
			uint64_t pm = l->pm[i];
			while (p >= v[vi].end)
				vi++;
			int gap = v[vi].kind != VMA_POOL;
			/* A gap page not present, or mapping the zero page, reads
			 * zeros: the zero page, as anonymous memory maps on a
			 * read, not the hole (which would take a page of the
			 * segment once read). */
			int zero = gap && !PM_SWAP(pm) &&
				   (!PM_PRESENT(pm) ||
				    (!PM_FILE(pm) && !PM_EXCLUSIVE(pm) && os_maps_zero_page(l->pmfd, p)));
			if (PM_SWAP(pm) ||
			    (gap && !zero && !(PM_PRESENT(pm) && !PM_FILE(pm) && PM_EXCLUSIVE(pm))))
				return -EAGAIN;
			if (zero) {
				err = os_uffd_zeropage(l->uffd, tmp + (p - s), SP_PAGE);
				fill_populate(s, tmp, mapped, p);
				mapped = 0;
				continue;
			}
			/* The pool's page at this offset, in both. */
			if (PM_PRESENT(pm) && PM_FILE(pm)) {
				mapped = mapped ? mapped : p;
				continue;
			}
			fill_populate(s, tmp, mapped, p);
			mapped = 0;
			if (!PM_PRESENT(pm))
				continue;
			/* A page holding data changes frame: only a gap page the
			 * kernel can vouch for (fill_flush()); a written copy
			 * lies in a pool VMA, which UFFDIO_MOVE cannot take from. */
			if (!copy_ok || !gap)
				return -EPERM;
			addr[k++] = p;
			if (k == ABUF_PAGES) {
				err = fill_flush(l, fc, addr, k);
				k = 0;
			}
		}
	}
	if (!err && k)
		err = fill_flush(l, fc, addr, k);
	if (!err)
		fill_populate(s, tmp, mapped, e);
	return err;
}

int merge_fill(struct lib *l, struct area *a, const struct vma *v, uint32_t nv, int fd,
	       int copy_ok)
{
	uintptr_t s = v[0].start, e = v[nv - 1].end;
	size_t len = e - s;
	int8_t st[FILL_MAX_PAGES];
	uint8_t copied[FILL_MAX_PAGES] = { 0 };
	struct fill_ctx fc = { .s = s, .vmflags = a->vmflags, .prot = v[0].prot, .copied = copied };
	void *tmp;
	int err;

	if (l->uffd < 0)
		return l->uffd;
	if (len > FILL_MAX_PAGES * SP_PAGE)
		return -E2BIG;
	evict_init(&fc.ev, s, e, st);
	/* The stretch's pool pages at their offsets; the rest comes below, as
	 * anonymous pages that the file never sees (no pool memory). */
	tmp = os_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
		      (off_t)v[0].pgoff * SP_PAGE);
	if (tmp == MAP_FAILED)
		return -ENOMEM;
	fc.tmp = (uintptr_t)tmp;
	err = os_uffd_register_missing(l->uffd, (uintptr_t)tmp, len);
	if (err)
		goto out;
	err = os_uffd_freeze(l->uffd, s, len);
	if (err)
		goto out;
	/* Invariant 1: frozen, the layout is still the one judged, and every
	 * byte not the pool's is copied while no writer can change it. */
	for (uint32_t i = 0; i < nv && !err; i++)
		err = same_vma(l, &v[i]) ? 0 : -ESTALE;
	if (!err)
		err = fill_copy(l, &fc, v, nv, copy_ok);
	if (!err)
		err = fill_evict(l, &fc, len);
	/* Invariant 3: the replacement keeps the memory's attributes. */
	if (!err && ((v[0].prot != (PROT_READ | PROT_WRITE) && os_mprotect(tmp, len, v[0].prot) < 0) ||
		     os_apply_flags((uintptr_t)tmp, len, a->vmflags) < 0 ||
		     os_mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)s) == MAP_FAILED))
		err = -errno;
	if (err) {
		/* Invariant 10: what was taken out goes back, frame and all. */
		evict_undo(l, &fc.ev, s, (uint32_t)(len / SP_PAGE));
		os_uffd_unprotect(l->uffd, s, len);
	}
	os_uffd_thaw(l->uffd, s, len);
	evict_close(l, &fc.ev);
	if (!err)
		return 0;
out:
	os_munmap(tmp, len);
	return err;
}
