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
#define WORDS (SP_SEG_PAGES / 64)
#define BITMAP_BYTES (WORDS * sizeof(uint64_t))
/* A reservation takes a shorter free run than asked rather than a new
 * segment, down to this: a run of 32 pages is still one VMA for 128 KiB. */
#define MIN_RUN 32u

static int bit(const uint64_t *b, uint32_t i)
{
	return (int)(b[i / 64] >> (i % 64) & 1);
}

static void set_bits(uint64_t *b, uint32_t from, uint32_t n, int on)
{
	for (uint32_t i = from; i < from + n; i++) {
		if (on)
			b[i / 64] |= 1ull << (i % 64);
		else
			b[i / 64] &= ~(1ull << (i % 64));
	}
}

/* The first run of at least n clear bits in [from, to), else the longest
 * one there: its start in *at, its length returned (0: none). */
static uint32_t free_run(const uint64_t *b, uint32_t from, uint32_t to, uint32_t n, uint32_t *at)
{
	uint32_t best = 0, run = 0, start = from;

	for (uint32_t i = from; i < to;) {
		uint64_t w = b[i / 64];
		if (i % 64 == 0 && i + 64 <= to && (w == 0 || w == ~0ull)) {
			if (w == 0) {
				run = run ? run + 64 : 64;
				start = run == 64 ? i : start;
			} else {
				run = 0;
			}
			i += 64;
		} else {
			if (!bit(b, i)) {
				start = run ? start : i;
				run++;
			} else {
				run = 0;
			}
			i++;
		}
		if (run > best) {
			best = run;
			*at = start;
		}
		if (best >= n)
			return best;
	}
	return best;
}

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
	os_munmap(s->busy, 2 * BITMAP_BYTES);
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
	s->busy = os_mmap(NULL, 2 * BITMAP_BYTES, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->busy == MAP_FAILED) {
		os_munmap(s->pages, SP_SEG_PAGES * sizeof(struct pool_page));
		goto fail_win;
	}
	s->live = s->busy + WORDS;
	s->used = 0;
	s->reserved = 0;
	s->touched = 0;
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

static int seg_usable(const struct pool_seg *s, uint64_t domain)
{
	return s->fd >= 0 && s->domain == domain && s->used + s->reserved < SP_SEG_PAGES;
}

/* A new segment for domain, in the lowest free slot. */
static int seg_new(struct pool *p, uint64_t domain, uint32_t *out)
{
	uint32_t hole = 0;
	int err;

	while (hole < p->nsegs && p->segs[hole].fd >= 0)
		hole++;
	if (hole == SP_MAX_SEGS)
		return -ENOSPC;
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

/* Where an extent of n pages of domain goes: the lowest segment (packing
 * pages low lets high segments empty out and close) with a free run of n
 * among its written pages (memory reused), else at the edge of what it
 * has written, else a shorter run of at least MIN_RUN (or min) anywhere,
 * else a new segment, else the longest run there is. Segment in *si, first
 * page in *idx, length returned (0: no room at all). */
static uint32_t place(struct pool *p, uint64_t domain, uint32_t n, uint32_t min, uint32_t *si,
		      uint32_t *idx, int *err)
{
	uint32_t best = 0, at = 0, got;

	for (int pass = 0; pass < 3; pass++)
		for (uint32_t i = 0; i < p->nsegs; i++) {
			struct pool_seg *s = &p->segs[i];
			uint32_t to = pass == 0 ? s->touched : SP_SEG_PAGES;
			if (!seg_usable(s, domain))
				continue;
			got = free_run(s->busy, 0, to, n, &at);
			if (got >= n || (pass == 2 && got >= min)) {
				*si = i;
				*idx = at;
				return got < n ? got : n;
			}
			if (pass == 2 && got > best) {
				best = got;
				*si = i;
				*idx = at;
			}
		}
	*err = seg_new(p, domain, &at);
	if (!*err) {
		*si = at;
		*idx = 0;
		return n;
	}
	return best < n ? best : n;
}

static void fill_page(struct pool *p, struct pool_seg *s, uint32_t idx, const void *data,
		      uint64_t hash)
{
	/* Invariant 2: idx had refs == 0, so no VMA maps it while we rewrite it. */
	if (data)
		memcpy(s->win + (size_t)idx * SP_PAGE, data, SP_PAGE);
	s->pages[idx] = (struct pool_page){ .hash = hash, .next = NO_PAGE };
	set_bits(s->busy, idx, 1, 1);
	set_bits(s->live, idx, 1, 1);
	if (hash == POOL_HOLE)
		p->holes++;
	else if (idx >= s->touched)
		s->touched = idx + 1;
	s->used++;
	p->pages_used++;
}

int pool_reserve(struct pool *p, uint64_t domain, uint32_t n, uint32_t *first, uint32_t *got)
{
	uint32_t si, idx;
	int err = -ENOSPC;

	*got = place(p, domain, n, MIN_RUN, &si, &idx, &err);
	if (!*got)
		return err;
	*first = si * SP_SEG_PAGES + idx;
	set_bits(p->segs[si].busy, idx, *got, 1);
	p->segs[si].reserved += *got;
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
	seg_close(s);
	p->segs_live--;
	while (p->nsegs && p->segs[p->nsegs - 1].fd < 0)
		p->nsegs--;
}

void pool_unreserve(struct pool *p, uint32_t first, uint32_t n)
{
	struct pool_seg *s = &p->segs[first / SP_SEG_PAGES];

	set_bits(s->busy, first % SP_SEG_PAGES, n, 0);
	s->reserved -= n;
	seg_maybe_close(p, first / SP_SEG_PAGES);
}

int64_t pool_alloc(struct pool *p, const void *data, uint64_t hash)
{
	return pool_alloc_in(p, 0, data, hash);
}

int64_t pool_alloc_in(struct pool *p, uint64_t domain, const void *data, uint64_t hash)
{
	uint32_t si, idx;
	int err = -ENOSPC;

	if (!place(p, domain, 1, 1, &si, &idx, &err))
		return err;
	fill_page(p, &p->segs[si], idx, data, hash);
	return (int64_t)si * SP_SEG_PAGES + idx;
}

int pool_free_at(const struct pool *p, uint64_t domain, uint32_t id)
{
	uint32_t si = id / SP_SEG_PAGES;

	return si < p->nsegs && seg_usable(&p->segs[si], domain) &&
	       !bit(p->segs[si].busy, id % SP_SEG_PAGES);
}

int pool_alloc_hole(struct pool *p, uint64_t domain, uint32_t id)
{
	return pool_alloc_at(p, domain, id, NULL, POOL_HOLE);
}

void pool_set_hash(struct pool *p, uint32_t id, uint64_t hash)
{
	struct pool_seg *s = &p->segs[id / SP_SEG_PAGES];
	uint32_t idx = id % SP_SEG_PAGES;

	if (s->pages[idx].hash == POOL_HOLE)
		p->holes--;
	if (idx >= s->touched)
		s->touched = idx + 1;
	s->pages[idx].hash = hash;
}

int pool_alloc_at(struct pool *p, uint64_t domain, uint32_t id, const void *data, uint64_t hash)
{
	if (!pool_free_at(p, domain, id))
		return -EBUSY;
	fill_page(p, &p->segs[id / SP_SEG_PAGES], id % SP_SEG_PAGES, data, hash);
	return 0;
}

void pool_free(struct pool *p, uint32_t id)
{
	struct pool_seg *s = &p->segs[id / SP_SEG_PAGES];
	uint32_t idx = id % SP_SEG_PAGES;

	if (s->pages[idx].hash == POOL_HOLE)
		p->holes--;
	s->pages[idx].hash = 0;
	set_bits(s->busy, idx, 1, 0);
	set_bits(s->live, idx, 1, 0);
	s->used--;
	p->pages_used--;
	seg_maybe_close(p, id / SP_SEG_PAGES);
}

struct pool_page *pool_page(struct pool *p, uint32_t id)
{
	uint32_t si = id / SP_SEG_PAGES, idx = id % SP_SEG_PAGES;

	if (si >= p->nsegs || p->segs[si].fd < 0 || !bit(p->segs[si].live, idx))
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
