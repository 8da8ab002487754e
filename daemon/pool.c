/* SPDX-License-Identifier: MIT */
/* pool — see pool.h. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"
#include <unistd.h>

#include "fault.h"

#define SEG_BYTES ((size_t)SP_SEG_PAGES * SP_PAGE)
#define NO_PAGE UINT32_MAX
#define RESERVED_PAGE (UINT32_MAX - 1) /* pool_page.next of a reserved slot */

int pool_init(struct pool *p)
{
	memset(p, 0, sizeof(*p));
	for (uint32_t i = 0; i < SP_MAX_SEGS; i++)
		p->segs[i].fd = -1;
	return 0;
}

static void seg_close(struct pool_seg *s)
{
	os_munmap(s->win, SEG_BYTES);
	os_munmap(s->pages, SP_SEG_PAGES * sizeof(struct pool_page));
	close(s->fd);
	s->fd = -1;
}

void pool_fini(struct pool *p)
{
	for (uint32_t i = 0; i < p->nsegs; i++)
		if (p->segs[i].fd >= 0)
			seg_close(&p->segs[i]);
}

static int seg_open(struct pool_seg *s)
{
	int err;

	if (fault_inject("memfd"))
		return -ENOMEM;
	s->fd = memfd_create("samepage-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (s->fd < 0)
		return -errno;
	if (ftruncate(s->fd, SEG_BYTES) < 0)
		goto fail_fd;
	s->win = os_mmap(NULL, SEG_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
		      s->fd, 0);
	if (s->win == MAP_FAILED)
		goto fail_fd;
	/* The window exists before the seal, so it alone may write from now on;
	 * SHRINK and GROW keep every page a process maps inside the file. */
	if (fcntl(s->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW |
		  F_SEAL_SEAL) < 0)
		goto fail_win;
	s->pages = os_mmap(NULL, SP_SEG_PAGES * sizeof(struct pool_page), PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->pages == MAP_FAILED)
		goto fail_win;
	s->used = 0;
	s->reserved = 0;
	s->bump = 0;
	s->free_head = NO_PAGE;
	return 0;
fail_win:
	err = -errno;
	os_munmap(s->win, SEG_BYTES);
	close(s->fd);
	s->fd = -1;
	return err;
fail_fd:
	err = -errno;
	close(s->fd);
	s->fd = -1;
	return err;
}

static int seg_has_room(const struct pool_seg *s, uint64_t domain)
{
	return s->fd >= 0 && s->domain == domain && (s->free_head != NO_PAGE || s->bump < SP_SEG_PAGES);
}

/* Lowest segment of the domain with room first: packing pages low lets
 * high segments empty out and be closed. */
static int pick_seg(struct pool *p, uint64_t domain, uint32_t *out)
{
	uint32_t hole = SP_MAX_SEGS;
	int err;

	for (uint32_t i = 0; i < p->nsegs; i++) {
		if (seg_has_room(&p->segs[i], domain)) {
			*out = i;
			return 0;
		}
		if (p->segs[i].fd < 0 && hole == SP_MAX_SEGS)
			hole = i;
	}
	if (hole == SP_MAX_SEGS) {
		if (p->nsegs == SP_MAX_SEGS)
			return -ENOSPC;
		hole = p->nsegs;
	}
	err = seg_open(&p->segs[hole]);
	if (err)
		return err;
	p->segs[hole].domain = domain;
	if (hole == p->nsegs)
		p->nsegs++;
	p->segs_live++;
	*out = hole;
	return 0;
}

static void fill_page(struct pool *p, struct pool_seg *s, uint32_t idx, const void *data,
		      uint64_t hash)
{
	/* Invariant 2: idx had refs == 0, so no VMA maps it while we rewrite it. */
	if (data)
		memcpy(s->win + (size_t)idx * SP_PAGE, data, SP_PAGE);
	s->pages[idx] = (struct pool_page){ .hash = hash, .next = NO_PAGE };
	s->used++;
	p->pages_used++;
}

int pool_reserve(struct pool *p, uint64_t domain, uint32_t n, uint32_t *first, uint32_t *got)
{
	uint32_t si = SP_MAX_SEGS;
	int err;

	/* The segment with the most never-used pages, so runs stay long. */
	for (uint32_t i = 0; i < p->nsegs; i++)
		if (p->segs[i].fd >= 0 && p->segs[i].domain == domain && p->segs[i].bump < SP_SEG_PAGES &&
		    (si == SP_MAX_SEGS || p->segs[i].bump < p->segs[si].bump))
			si = i;
	if (si == SP_MAX_SEGS || SP_SEG_PAGES - p->segs[si].bump < n) {
		uint32_t fresh;
		for (fresh = 0; fresh < p->nsegs && p->segs[fresh].fd >= 0; fresh++)
			;
		if (fresh == SP_MAX_SEGS && si == SP_MAX_SEGS)
			return -ENOSPC;
		if (fresh < SP_MAX_SEGS) {
			err = seg_open(&p->segs[fresh]);
			if (!err) {
				p->segs[fresh].domain = domain;
				if (fresh == p->nsegs)
					p->nsegs++;
				p->segs_live++;
				si = fresh;
			} else if (si == SP_MAX_SEGS) {
				return err;
			}
		}
	}
	struct pool_seg *s = &p->segs[si];
	*got = SP_SEG_PAGES - s->bump < n ? SP_SEG_PAGES - s->bump : n;
	*first = si * SP_SEG_PAGES + s->bump;
	for (uint32_t i = 0; i < *got; i++)
		s->pages[s->bump + i] = (struct pool_page){ .next = RESERVED_PAGE };
	s->bump += *got;
	s->reserved += *got;
	return 0;
}

void pool_alloc_reserved(struct pool *p, uint32_t id, const void *data, uint64_t hash)
{
	struct pool_seg *s = &p->segs[id / SP_SEG_PAGES];

	s->reserved--;
	fill_page(p, s, id % SP_SEG_PAGES, data, hash);
}

static void seg_maybe_close(struct pool *p, uint32_t si)
{
	struct pool_seg *s = &p->segs[si];

	/* Any empty segment goes, segment 0 included (it used to stay as a warm
	 * spare, and with it up to 256 MiB the daemon kept after every process
	 * had left); the kernel frees its memory when the last process mapping
	 * closes. Opening a segment costs a few system calls. */
	if (s->used || s->reserved)
		return;
	p->freed -= s->bump; /* every page it ever used was free */
	seg_close(s);
	p->segs_live--;
	while (p->nsegs && p->segs[p->nsegs - 1].fd < 0)
		p->nsegs--;
}

void pool_unreserve(struct pool *p, uint32_t first, uint32_t n)
{
	struct pool_seg *s = &p->segs[first / SP_SEG_PAGES];

	for (uint32_t i = 0; i < n; i++) {
		uint32_t idx = first % SP_SEG_PAGES + i;
		s->pages[idx] = (struct pool_page){ .next = s->free_head };
		s->free_head = idx;
	}
	s->reserved -= n;
	p->freed += n;
	seg_maybe_close(p, first / SP_SEG_PAGES);
}

int64_t pool_alloc(struct pool *p, const void *data, uint64_t hash)
{
	return pool_alloc_in(p, 0, data, hash);
}

int64_t pool_alloc_in(struct pool *p, uint64_t domain, const void *data, uint64_t hash)
{
	uint32_t si, idx;
	struct pool_seg *s;
	int err = pick_seg(p, domain, &si);

	if (err)
		return err;
	s = &p->segs[si];
	if (s->free_head != NO_PAGE) {
		idx = s->free_head;
		s->free_head = s->pages[idx].next;
		p->freed--;
	} else {
		idx = s->bump++;
	}
	fill_page(p, s, idx, data, hash);
	return (int64_t)si * SP_SEG_PAGES + idx;
}

void pool_free(struct pool *p, uint32_t id)
{
	struct pool_seg *s = &p->segs[id / SP_SEG_PAGES];
	uint32_t idx = id % SP_SEG_PAGES;

	s->pages[idx].next = s->free_head;
	s->pages[idx].hash = 0;
	s->free_head = idx;
	s->used--;
	p->pages_used--;
	p->freed++;
	seg_maybe_close(p, id / SP_SEG_PAGES);
}

static int page_live(const struct pool_seg *s, uint32_t idx)
{
	if (idx >= s->bump)
		return 0;
	/* Freed pages have hash 0 and sit on the free list; a live page's hash
	 * can also be 0, so walk the list only in that rare case. */
	if (s->pages[idx].hash)
		return 1;
	if (s->pages[idx].next == RESERVED_PAGE)
		return 0;
	for (uint32_t f = s->free_head; f != NO_PAGE; f = s->pages[f].next)
		if (f == idx)
			return 0;
	return 1;
}

struct pool_page *pool_page(struct pool *p, uint32_t id)
{
	uint32_t si = id / SP_SEG_PAGES, idx = id % SP_SEG_PAGES;

	if (si >= p->nsegs || p->segs[si].fd < 0 || !page_live(&p->segs[si], idx))
		return NULL;
	return &p->segs[si].pages[idx];
}

unsigned char *pool_slot(struct pool *p, uint32_t id)
{
	return p->segs[id / SP_SEG_PAGES].win + (size_t)(id % SP_SEG_PAGES) * SP_PAGE;
}

const void *pool_data(struct pool *p, uint32_t id)
{
	return p->segs[id / SP_SEG_PAGES].win + (size_t)(id % SP_SEG_PAGES) * SP_PAGE;
}

int pool_seg_fd(struct pool *p, uint32_t seg)
{
	if (seg >= p->nsegs || p->segs[seg].fd < 0)
		return -ENOENT;
	return p->segs[seg].fd;
}

uint64_t pool_seg_domain(const struct pool *p, uint32_t seg)
{
	return seg < p->nsegs && p->segs[seg].fd >= 0 ? p->segs[seg].domain : 0;
}
