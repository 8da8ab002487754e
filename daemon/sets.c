/* SPDX-License-Identifier: MIT */
/*
 * sets — who holds a reference to a pool page (invariant 2; DESIGN.md, "Who
 * holds a reference"). A set of references is a connection's while it is
 * open, then held for as long as anyone maps the set's marker; C_FORK's
 * copies for fork children are held sets too. Every reference a pool page
 * has is in exactly one set, and page_adjust() frees the page when the
 * last goes (and keeps pages_shared/pages_sharing exact: invariant 8).
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "log.h"
#include "os.h"

/* ---- references (invariant 2: a pool page lives while any VMA maps it) ---- */

/* Page id is freed: where C_MOVE copied it (move.c), the copy takes its
 * place in the stable index, so new sharers find the page the others use. */
static void index_moved(struct samepaged *d, uint32_t id)
{
	uint64_t *v = map_get(&d->moved, id);
	uint32_t to = v ? (uint32_t)*v : SP_POOL_NONE;
	struct pool_page *pg = to != SP_POOL_NONE ? pool_page(&d->pool, to) : NULL;

	if (!v)
		return;
	map_del(&d->moved, id);
	if (pg && pg->hash == pool_page(&d->pool, id)->hash &&
	    !memcmp(pool_data(&d->pool, to), pool_data(&d->pool, id), SP_PAGE))
		stable_insert(&d->ix, &d->pool, to); /* out of memory: unindexed, still valid */
}

/* A page's reference counts changed by drefs/dcowed: keep the counters that
 * follow them and free the page once nobody holds it. */
static void page_adjust(struct samepaged *d, uint32_t id, int64_t drefs, int64_t dcowed)
{
	struct pool_page *pg = pool_page(&d->pool, id);

	/* Invariant 2: counts of a live page, never below zero, written ones a
	 * part of all. */
	SP_ASSERT(pg && (int64_t)pg->refs + drefs >= 0 && (int64_t)pg->cowed + dcowed >= 0 &&
		  (int64_t)pg->cowed + dcowed <= (int64_t)pg->refs + drefs);
	uint32_t live0 = pg->refs - pg->cowed, refs0 = pg->refs, live1;

	if (!pg->cowed && dcowed > 0) /* the first writer: lookup.c's defer_inplace() */
		pg->cowed_ms = (uint32_t)(now_ns() / 1000000);
	pg->refs = (uint32_t)((int64_t)pg->refs + drefs);
	pg->cowed = (uint32_t)((int64_t)pg->cowed + dcowed);
	d->total_refs = (uint64_t)((int64_t)d->total_refs + drefs);
	live1 = pg->refs - pg->cowed;
	d->shared += (live1 > 0) - (live0 > 0);
	d->sharing += (uint64_t)(live1 > 1 ? live1 - 1 : 0) - (uint64_t)(live0 > 1 ? live0 - 1 : 0);
	/* A hole (a filled gap) costs no memory: not a page kept for copies. */
	if (pg->hash != POOL_HOLE)
		d->written += (pg->refs && !live1) - (refs0 && !live0);
	if (pg->refs)
		return;
	/* Invariant 2: nobody holds a reference, so no VMA maps it. */
	stable_remove(&d->ix, &d->pool, id);
	index_moved(d, id);
	/* Asks were for its old bytes: a reused id is asked for anew. */
	for (struct conn *x = d->conns; x; x = x->next)
		if (x->asked.count)
			map_del(&x->asked, id);
	pool_free(&d->pool, id);
}

/* Hints waiting for pool page id count among c's references to it: a
 * C_UNREF must not take those (hint_ids_add(), ref_drop()). */
void hint_ids_add(struct conn *c, uint32_t id, int delta)
{
	uint64_t *v = map_get(&c->hint_ids, id);

	if (v && (int64_t)*v + delta <= 0)
		map_del(&c->hint_ids, id);
	else if (v)
		*v += (uint64_t)delta;
	else if (delta > 0)
		map_put(&c->hint_ids, id, (uint64_t)delta);
}

static uint32_t hint_ids_of(const struct conn *c, uint32_t id)
{
	uint64_t *v = map_get(&c->hint_ids, id);

	return v ? (uint32_t)*v : 0;
}

int ref_take(struct samepaged *d, struct conn *c, uint32_t id)
{
	int err = refs_add(&c->refs, id);

	if (!err)
		page_adjust(d, id, +1, 0);
	return err;
}

/* One of c's references to id now belongs to a page its process wrote. */
void ref_cow(struct samepaged *d, struct conn *c, uint32_t id)
{
	if (refs_count(&c->refs, id) <= refs_count(&c->cowed, id) || refs_add(&c->cowed, id)) {
		d->unheld_drops++;
		return;
	}
	page_adjust(d, id, 0, +1);
}

/* Drop one of c's references to id, of the kind asked when c holds one,
 * else of the other: the library and the daemon may disagree about what
 * a fork copied, never about how many references there are. A reference
 * c does not hold is not dropped: ignoring it can only keep a page. */
void ref_drop(struct samepaged *d, struct conn *c, uint32_t id, int cowed)
{
	uint32_t all = refs_count(&c->refs, id), cw = refs_count(&c->cowed, id);

	/* Nor one a waiting hint stands on: c was never told of it. */
	if (all <= hint_ids_of(c, id)) {
		d->unheld_drops++;
		return;
	}
	if (cw && (cowed || all == cw)) {
		refs_drop(&c->cowed, id);
		refs_drop(&c->refs, id);
		page_adjust(d, id, -1, -1);
		return;
	}
	refs_drop(&c->refs, id);
	page_adjust(d, id, -1, 0);
}

void set_release(struct samepaged *d, struct conn *c)
{
	uint64_t pos = 0;
	uint32_t id, n;

	while (refs_next(&c->refs, &pos, &id, &n))
		page_adjust(d, id, -(int64_t)n, -(int64_t)refs_count(&c->cowed, id));
	refs_fini(&c->refs);
	refs_fini(&c->cowed);
	refs_init(&c->refs);
	refs_init(&c->cowed);
	c->nhints = 0;
	map_fini(&c->hint_at);
	map_init(&c->hint_at);
	map_fini(&c->hint_ids);
	map_init(&c->hint_ids);
}

int hints_reserve(struct conn *c)
{
	if (!c->hints)
		c->hints = malloc(HINTS_MAX_ * sizeof(*c->hints));
	return c->hints ? 0 : -ENOMEM;
}

/* A hint from another set: kept unless one for that address waits already
 * (its reference then goes with the rest of the set). */
static void hint_add(struct conn *c, const struct sp_hint *h)
{
	if (c->nhints >= HINTS_MAX_ || map_get(&c->hint_at, h->addr) || hints_reserve(c) ||
	    map_put(&c->hint_at, h->addr, c->nhints))
		return;
	c->hints[c->nhints++] = *h;
	hint_ids_add(c, h->id, +1);
}

/* dst gets src's references (and waiting hints): taken anew when copy,
 * else moved (page counts stay). -ENOMEM leaves dst with part of them,
 * which only keeps pages longer. */
int set_merge(struct samepaged *d, struct conn *dst, struct conn *src, int copy)
{
	uint64_t pos = 0;
	uint32_t id, n;

	while (refs_next(&src->refs, &pos, &id, &n)) {
		uint32_t cw = refs_count(&src->cowed, id);
		if (refs_add_n(&dst->refs, id, n) || refs_add_n(&dst->cowed, id, cw))
			return -ENOMEM;
		if (copy)
			page_adjust(d, id, n, cw);
	}
	for (uint32_t i = 0; i < src->nhints; i++)
		hint_add(dst, &src->hints[i]);
	if (!copy) {
		refs_fini(&src->refs);
		refs_fini(&src->cowed);
		refs_init(&src->refs);
		refs_init(&src->cowed);
		src->nhints = 0;
		map_fini(&src->hint_at);
		map_init(&src->hint_at);
		map_fini(&src->hint_ids);
		map_init(&src->hint_ids);
	}
	return 0;
}

/* Does anyone still map this marker? Adding F_SEAL_WRITE fails with EBUSY
 * while any process has it mapped shared and writable (fork children
 * included; exit and exec unmap it), and once it succeeds nobody ever can
 * again. Anything else (a marker we cannot judge) counts as mapped: a set
 * kept too long costs memory, one dropped too early corrupts it. */
static int marker_mapped(int fd)
{
	if (fd < 0)
		return 0;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == 0)
		return 0;
	return 1;
}

/* A marker as the library makes it: a one-page memfd, writable, no seals. */
int marker_take(struct conn *c, int fd)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || seals != 0 || st.st_size != SP_PAGE ||
	    (fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR)
		return -EPROTO;
	if (c->marker_fd >= 0)
		close(c->marker_fd);
	c->marker_fd = fd;
	c->marker_ino = st.st_ino;
	c->marker_dev = st.st_dev;
	return 0;
}

int same_marker(const struct conn *a, const struct conn *b)
{
	return a->marker_fd >= 0 && b->marker_fd >= 0 && a->marker_ino == b->marker_ino &&
	       a->marker_dev == b->marker_dev && a->domain == b->domain;
}

void set_free(struct conn *c)
{
	refs_fini(&c->refs);
	refs_fini(&c->cowed);
	if (c->marker_fd >= 0)
		close(c->marker_fd);
	free(c->pairs);
	free(c->look_addr);
	free(c->look_maps);
	free(c->look_run);
	free(c->hints);
	map_fini(&c->hint_at);
	map_fini(&c->hint_ids);
	free(c);
}

/* The held sets a connection's process holds: its own earlier
 * connection's (moved) and its parent's C_FORK copies (copied: siblings
 * sharing that marker may still come). Number of sets attached. */
uint32_t attach_held(struct samepaged *d, struct conn *c)
{
	uint32_t n = 0;

	for (struct conn **pp = &d->held; *pp;) {
		struct conn *h = *pp;
		if (!same_marker(h, c)) {
			pp = &h->next;
			continue;
		}
		n++;
		if (h->kind == SET_FORK) {
			set_merge(d, c, h, 1);
			pp = &h->next;
			continue;
		}
		set_merge(d, c, h, 0);
		*pp = h->next;
		set_release(d, h); /* what a failed move left */
		set_free(h);
	}
	return n;
}

struct conn *live_with_marker(struct samepaged *d, const struct conn *h)
{
	for (struct conn *c = d->conns; c; c = c->next)
		if (c->hello && !c->observer && same_marker(c, h))
			return c;
	return NULL;
}

/* A closed connection's references: kept while its marker is mapped
 * (invariant 2: the process may still map every page of the set, whatever
 * it last told us), dropped once nobody maps it (the process exited or
 * exec'd, and so did every child that shares the marker). */
void set_closed(struct samepaged *d, struct conn *c)
{
	struct conn *live;

	c->fd = -1;
	if (!c->refs.total || !marker_mapped(c->marker_fd)) {
		set_release(d, c);
		set_free(c);
		return;
	}
	c->kind = SET_OWN;
	/* Its process connected again before we saw this one close. */
	live = live_with_marker(d, c);
	if (live && !set_merge(d, live, c, 0)) {
		set_release(d, c);
		set_free(c);
		return;
	}
	c->next = d->held;
	d->held = c;
}

/* Held sets whose marker nobody maps any more go. */
void sweep_held(struct samepaged *d)
{
	for (struct conn **pp = &d->held; *pp;) {
		struct conn *h = *pp;
		if (marker_mapped(h->marker_fd)) {
			pp = &h->next;
			continue;
		}
		*pp = h->next;
		set_release(d, h);
		set_free(h);
	}
}
