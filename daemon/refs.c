/* SPDX-License-Identifier: MIT */
/* refs — see refs.h. */
#define _GNU_SOURCE
#include "refs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define WORDS (SP_SEG_PAGES / 64)

struct refs_seg {
	uint64_t bits[WORDS];
	uint32_t n;        /* bits set */
};

void refs_init(struct refs *r)
{
	memset(r, 0, sizeof(*r));
	map_init(&r->segs);
	map_init(&r->extra);
}

void refs_fini(struct refs *r)
{
	uint64_t seg, p;
	size_t pos = 0;

	while (map_next(&r->segs, &pos, &seg, &p))
		free((void *)(uintptr_t)p);
	map_fini(&r->segs);
	map_fini(&r->extra);
	r->total = 0;
}

static struct refs_seg *seg_of(const struct refs *r, uint32_t id)
{
	uint64_t *p = map_get(&r->segs, id / SP_SEG_PAGES);

	return p ? (struct refs_seg *)(uintptr_t)*p : NULL;
}

static int has_bit(const struct refs_seg *s, uint32_t idx)
{
	return s && (s->bits[idx / 64] >> (idx % 64) & 1);
}

int refs_add(struct refs *r, uint32_t id)
{
	struct refs_seg *s = seg_of(r, id);
	uint32_t idx = id % SP_SEG_PAGES;

	if (has_bit(s, idx)) {
		uint64_t *x = map_get(&r->extra, id);
		if (x)
			(*x)++;
		else if (map_put(&r->extra, id, 1))
			return -ENOMEM;
		r->total++;
		return 0;
	}
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return -ENOMEM;
		if (map_put(&r->segs, id / SP_SEG_PAGES, (uintptr_t)s)) {
			free(s);
			return -ENOMEM;
		}
	}
	s->bits[idx / 64] |= 1ull << (idx % 64);
	s->n++;
	r->total++;
	return 0;
}

int refs_add_n(struct refs *r, uint32_t id, uint32_t n)
{
	if (!n)
		return 0;
	int err = refs_add(r, id);

	if (err || n == 1)
		return err;
	/* The first is the bit; the rest are extras. */
	uint64_t *x = map_get(&r->extra, id);
	if (x)
		*x += n - 1;
	else if (map_put(&r->extra, id, n - 1))
		return -ENOMEM;
	r->total += n - 1;
	return 0;
}

int refs_drop(struct refs *r, uint32_t id)
{
	struct refs_seg *s = seg_of(r, id);
	uint32_t idx = id % SP_SEG_PAGES;
	uint64_t *x;

	if (!has_bit(s, idx))
		return -ENOENT;
	r->total--;
	x = map_get(&r->extra, id);
	if (x) {
		if (--*x == 0)
			map_del(&r->extra, id);
		return 0;
	}
	s->bits[idx / 64] &= ~(1ull << (idx % 64));
	if (--s->n == 0) {
		map_del(&r->segs, id / SP_SEG_PAGES);
		free(s);
	}
	return 0;
}

uint32_t refs_count(const struct refs *r, uint32_t id)
{
	const struct refs_seg *s = seg_of(r, id);
	uint64_t *x;

	if (!has_bit(s, id % SP_SEG_PAGES))
		return 0;
	x = map_get(&r->extra, id);
	return 1 + (x ? (uint32_t)*x : 0);
}

int refs_holds_seg(const struct refs *r, uint32_t seg)
{
	return map_get(&r->segs, seg) != NULL;
}

/* *pos: segment-map position in the high 32 bits, next page in the low. */
int refs_next(const struct refs *r, uint64_t *pos, uint32_t *id, uint32_t *count)
{
	size_t mpos = (size_t)(*pos >> 32);
	uint32_t idx = (uint32_t)*pos;

	for (;;) {
		size_t at = mpos;
		uint64_t seg, p;
		if (!map_next(&r->segs, &at, &seg, &p))
			return 0;
		const struct refs_seg *s = (const struct refs_seg *)(uintptr_t)p;
		for (; idx < SP_SEG_PAGES; idx++) {
			uint64_t w = s->bits[idx / 64] >> (idx % 64);
			if (!w) {
				idx = (idx | 63); /* rest of this word is clear */
				continue;
			}
			idx += (uint32_t)__builtin_ctzll(w);
			*id = (uint32_t)seg * SP_SEG_PAGES + idx;
			*count = refs_count(r, *id);
			*pos = ((uint64_t)mpos << 32) | (idx + 1);
			return 1;
		}
		mpos = at; /* next segment */
		idx = 0;
	}
}

size_t refs_bytes(const struct refs *r)
{
	return map_bytes(&r->segs) + map_bytes(&r->extra) + r->segs.count * sizeof(struct refs_seg);
}
