/* SPDX-License-Identifier: MIT */
/*
 * lookup — the merge decisions: C_LOOKUP, C_CREATE, C_HINTS.
 *
 * A process's scanner hashes its pages and offers those whose hash did not
 * change since its previous pass (C_LOOKUP). Like ksmd, the daemon
 * searches the stable index first: a hit hands the process a pool page,
 * with a reference already taken for it so that the page cannot be
 * recycled before the process has mapped it. A miss goes to the unstable
 * index; a hit there asks the process for the page's bytes (C_CREATE,
 * through the connection's pipe), which become a new pool page. The page it
 * matched in the unstable index gets a merge hint: its process learns with
 * its next budget reply that a pool page with a reference of its own waits
 * for that address (C_HINTS), so it merges without waiting for its next
 * pass (kernel KSM merges both pages of an unstable match at once; this is
 * the same, done by each process itself). Index keys are content hashes
 * with the process's merge domain mixed in (key_of()).
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

#include "os.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* The index key of content hash h for c: its domain mixed in with a
 * secret of the daemon's, so that pages of two domains never meet in either
 * index and no process can compute another domain's keys (with a known
 * mix, a forged hash probed whether another domain held some content). */
static uint64_t key_of(const struct conn *c, uint64_t h)
{
	return h ^ c->key_mix;
}

/* An unstable entry is a partner only while its connection is open and of
 * the same domain (a key collision across domains is not a match). */
struct partner { struct samepaged *d; uint64_t domain; };

static int partner_ok(void *ctx, uint32_t id)
{
	const struct partner *p = ctx;
	struct conn *o = conn_by_id(p->d, id);

	return o && o->domain == p->domain;
}

/* c looks up its page at addr while a hint for it waits: the hinted pool
 * page is the answer when it still holds that content (the reference is
 * already c's). Without this, a process that offers the page again before
 * it fetched its hints would find the hinted page full (max_page_sharing
 * counts the hint's reference) and make a second pool page of it. */
static uint32_t hint_claim(struct samepaged *d, struct conn *c, uint64_t addr, uint64_t key)
{
	uint64_t *slot = c->nhints ? map_get(&c->hint_at, addr) : NULL;
	uint32_t i, id;

	if (!slot)
		return SP_POOL_NONE;
	i = (uint32_t)*slot;
	id = c->hints[i].id;
	/* The hint's reference is c's, unless c dropped it since (a process
	 * may send anything): then the page may be gone, or someone else's. */
	if (!refs_count(&c->refs, id) || !pool_page(&d->pool, id) ||
	    pool_page(&d->pool, id)->hash != key)
		return SP_POOL_NONE;
	map_del(&c->hint_at, addr);
	hint_ids_add(c, id, -1);
	if (i != --c->nhints) {
		c->hints[i] = c->hints[c->nhints];
		*map_get(&c->hint_at, c->hints[i].addr) = i;
	}
	return id;
}

/* A stable page for c: of its domain (a hash collision across domains
 * must not hand out another domain's page). */
static uint32_t stable_for(struct samepaged *d, struct conn *c, uint64_t key)
{
	uint32_t id = stable_find(&d->ix, &d->pool, key, d->knobs.v[KNOB_MAX_PAGE_SHARING]);

	if (id != SP_POOL_NONE && pool_seg_domain(&d->pool, id / SP_SEG_PAGES) != c->domain)
		return SP_POOL_NONE;
	return id;
}

/* Has c's domain a pool page of this content, full or not? */
static int stable_has_in(struct samepaged *d, struct conn *c, uint64_t key)
{
	uint32_t id = stable_find(&d->ix, &d->pool, key, UINT32_MAX);

	return id != SP_POOL_NONE && pool_seg_domain(&d->pool, id / SP_SEG_PAGES) == c->domain;
}

/* Pool page id, which c's VMA maps where its page is and which c wrote:
 * may new content go there (DESIGN.md, "Merging again in place")? Only
 * while no mapping anywhere still reads it (every reference to it is a
 * written one) and c holds a written one. Then the page merges again with
 * no new mapping: no VMA split. */
static int reusable(struct samepaged *d, struct conn *c, uint32_t id)
{
	struct pool_page *pg = id == SP_POOL_NONE ? NULL : pool_page(&d->pool, id);

	return pg && pg->refs == pg->cowed && refs_count(&c->cowed, id) &&
	       pool_seg_domain(&d->pool, id / SP_SEG_PAGES) == c->domain;
}

static uint32_t maps_of(const struct sp_lookup_ent *e)
{
	return e->flags & LOOKUP_MAPS ? e->maps : SP_POOL_NONE;
}

/* Invariant 2 holds: nobody reads page id (reusable()): every mapping of
 * it is its process's own copy, which new bytes under it do not change. */
static void rewrite_in_place(struct samepaged *d, uint32_t id, const void *bytes, uint64_t key)
{
	struct pool_page *pg = pool_page(&d->pool, id);

	stable_remove(&d->ix, &d->pool, id);
	memcpy(pool_slot(&d->pool, id), bytes, SP_PAGE);
	/* A filled gap's hole holds content from now on: counted as a pool
	 * page kept for written copies until its rewriter drops its copy. */
	if (pg->hash == POOL_HOLE)
		d->written++;
	pool_set_hash(&d->pool, id, key);
	/* Out of memory, it stays out of the index: still a valid page. */
	stable_insert(&d->ix, &d->pool, id);
	d->inplace++;
}

/* How long a rewritten page waits for the other sharers of its pool page
 * to rewrite it too: idle scanners look every 2 s at most. Not counted in
 * generations: right after merging they pass every few milliseconds. */
#define DEFER_MS 4000u

/* c rewrote its page at a place its VMA maps pool page e->maps, which
 * other mappings still read. When they rewrite it too (guests, workers
 * and copies rewritten alike), the new content can go into that page in
 * place, with no new mapping anywhere (reusable()); merging now into a
 * new page would split every sharer's VMA, a VMA per rewritten page (the
 * soak: ~285 per process against the kernel's 36). So c's page is not
 * offered yet, for a few seconds since the first of them wrote it;
 * after that it merges as any page. Changes when, never whether data is
 * safe: the page stays c's own copy meanwhile. */
static int defer_inplace(struct samepaged *d, struct conn *c, const struct sp_lookup_ent *e)
{
	uint32_t id = maps_of(e);
	struct pool_page *pg = id == SP_POOL_NONE ? NULL : pool_page(&d->pool, id);

	return pg && pg->cowed && pg->refs > pg->cowed && refs_count(&c->cowed, id) &&
	       pool_seg_domain(&d->pool, id / SP_SEG_PAGES) == c->domain &&
	       (uint32_t)(now_ns() / 1000000) - pg->cowed_ms < DEFER_MS;
}

#define RESERVE_RUN 512u /* a scan chunk: what one process creates in a row */
/* Unique pages between two created ones for which ids are left free
 * (DESIGN.md, "Filling gaps"): as many as one C_FILL may ask for. */
#define GAP_MAX SP_MAX_FILL

/* How many ids c's reservation skips to place a page at addr after the
 * one it placed last (the pages between: a gap the process may fill
 * later); SKIP_NONE when it cannot go on from there. */
#define SKIP_NONE UINT64_MAX
static uint64_t rsv_skip(const struct conn *c, uint64_t addr)
{
	uint64_t skip;

	if (!c->rsv_addr || addr <= c->rsv_addr || c->rsv_next == c->rsv_end)
		return SKIP_NONE;
	skip = (addr - c->rsv_addr) / SP_PAGE - 1;
	return skip <= GAP_MAX && skip < c->rsv_end - c->rsv_next ? skip : SKIP_NONE;
}

/* Is id the next of c's reservation? */
static int rsv_is_next(const struct conn *c, uint32_t id)
{
	return id == c->rsv_next && c->rsv_next != c->rsv_end;
}

/* The next id of o's reservation, for o's page at addr (0: placed by
 * content, not by address), after skip ids given back free. */
static uint32_t rsv_take(struct samepaged *d, struct conn *o, uint64_t addr, uint64_t skip,
			 const void *data, uint64_t key)
{
	if (skip) {
		pool_unreserve(&d->pool, o->rsv_next, (uint32_t)skip);
		o->rsv_next += (uint32_t)skip;
	}
	o->rsv_addr = addr;
	pool_alloc_reserved(&d->pool, o->rsv_next, data, key);
	return o->rsv_next++;
}

/* Runs of one content (DESIGN.md, "Runs of one content"): n adjacent
 * pages that are all equal (a guest kernel's freed init memory, 0xcc by
 * the page) all map one pool page in the kernel, but here that is a VMA
 * per page, since a VMA maps consecutive file offsets. So a run of at
 * least RUN_MIN pages maps an extent instead: len consecutive pool pages
 * of that content, mapped over and over (ids x, x+1, ..., x+len-1, x, ...),
 * len = n/8 up to RUN_EXTENT_MAX: at most about 8 VMAs a run, for len - 1
 * pages of saving less than the kernel's, once per content and domain
 * (every run of every process maps the same extent). Shorter runs map one
 * page as before, and count as the kernel counts them (its selftests
 * merge 10 equal pages and expect pages_shared 1). */
#define RUN_MIN 32u
#define RUN_EXTENT_MAX 64u

struct run {
	uint32_t len;   /* extent pages this run wants; 0: not a run */
	uint32_t first; /* the extent's first id, SP_POOL_NONE until found */
	uint32_t last;  /* the id answered for the run's previous page */
	uint32_t made;  /* pages answered SP_POOL_CREATE: the extent being made */
};

/* Is entry i the page right after entry i - 1, with the same content? */
static int run_continues(const struct sp_lookup *l, uint32_t i)
{
	return i && i < l->n && l->e[i].addr == l->e[i - 1].addr + SP_PAGE &&
	       l->e[i].hash == l->e[i - 1].hash;
}

static struct run run_start(const struct sp_lookup *l, uint32_t i)
{
	uint32_t n = 1, len;

	while (run_continues(l, i + n))
		n++;
	len = (n + 7) / 8;
	if (n < RUN_MIN)
		len = 0;
	return (struct run){ .len = len < RUN_EXTENT_MAX ? len : RUN_EXTENT_MAX,
			     .first = SP_POOL_NONE, .last = SP_POOL_NONE };
}

/* Does pool page id hold content key? */
static int holds(struct samepaged *d, uint32_t id, uint64_t key)
{
	struct pool_page *pg = pool_page(&d->pool, id);

	return pg && pg->hash == key;
}

static int has_room(struct samepaged *d, uint32_t id)
{
	return pool_page(&d->pool, id)->refs < d->knobs.v[KNOB_MAX_PAGE_SHARING];
}

/* The extent pool page s belongs to: its first id, its length in *len. */
static uint32_t extent_of(struct samepaged *d, uint32_t s, uint64_t key, uint32_t *len)
{
	uint32_t x = s, n = 1;

	while (x % SP_SEG_PAGES && s - x < RUN_EXTENT_MAX && holds(d, x - 1, key))
		x--;
	while ((x + n) % SP_SEG_PAGES && n < RUN_EXTENT_MAX && holds(d, x + n, key))
		n++;
	*len = n;
	return x;
}

/* Can pool page id be allocated for c, right after its extent? Free, or
 * the next id of c's own reservation (an extent made from it is followed
 * by the rest of it). */
static int can_grow(struct samepaged *d, struct conn *c, uint32_t id)
{
	if (!(id % SP_SEG_PAGES))
		return 0;
	return rsv_is_next(c, id) || pool_free_at(&d->pool, c->domain, id);
}

/* Make pool page id a copy of pool page src (content key), in the stable
 * index: 0 or -errno. The content is the pool's own; invariant 1 is the
 * process's check, as for any page it is handed. */
static int grow(struct samepaged *d, struct conn *c, uint32_t id, uint32_t src, uint64_t key)
{
	/* From c's reservation: alloc_for() goes on from here, not by address. */
	if (rsv_is_next(c, id))
		rsv_take(d, c, 0, 0, pool_data(&d->pool, src), key);
	else if (pool_alloc_at(&d->pool, c->domain, id, pool_data(&d->pool, src), key))
		return -EBUSY;
	if (!stable_insert(&d->ix, &d->pool, id))
		return 0;
	pool_free(&d->pool, id);
	return -ENOMEM;
}

/* Chain pages looked at for an extent: content in many domains or at
 * max_page_sharing makes long chains, and this runs once per run. */
#define RUN_CHAIN_MAX 512u

/* The longest extent of content key in c's domain whose first page has
 * room: long enough for r, or able to grow to it; else SP_POOL_NONE, and
 * the run makes a new one (a short extent that cannot grow would cost the
 * run a VMA per wrap, and taking a fresh one at every pass would cost the
 * whole run's saving). */
static uint32_t run_extent(struct samepaged *d, struct conn *c, uint64_t key, const struct run *r)
{
	uint32_t best = SP_POOL_NONE, best_len = 0, seen = 0, x = 0, len = 0;

	for (uint32_t id = stable_first(&d->ix, &d->pool, key);
	     id != SP_POOL_NONE && seen < RUN_CHAIN_MAX; id = pool_page(&d->pool, id)->next, seen++) {
		if (pool_page(&d->pool, id)->hash != key ||
		    pool_seg_domain(&d->pool, id / SP_SEG_PAGES) != c->domain ||
		    (len && id >= x && id < x + len))
			continue;
		x = extent_of(d, id, key, &len);
		if (has_room(d, x) && (len >= r->len || can_grow(d, c, x + len)) && len > best_len) {
			best = x;
			best_len = len;
		}
	}
	return best;
}

/* The extent's page after r->last: the next one when it holds the content
 * (or can be made to, up to r->len pages), else back to the first. */
static uint32_t run_next(struct samepaged *d, struct conn *c, uint64_t key, struct run *r)
{
	uint32_t q = r->last + 1;

	if (r->last == SP_POOL_NONE)
		return has_room(d, r->first) ? r->first : stable_for(d, c, key);
	if (q % SP_SEG_PAGES && holds(d, q, key) && has_room(d, q))
		return q;
	/* Grow: a copy of the extent's page, at the id that follows it. */
	if (q - r->first < r->len && can_grow(d, c, q) && !grow(d, c, q, r->last, key))
		return q;
	return has_room(d, r->first) ? r->first : stable_for(d, c, key);
}

/* The answer for a page of run r: a page of its extent (reference taken),
 * SP_POOL_CREATE while the extent is being made from the run's first
 * pages (create_settle() keeps them apart), SP_POOL_NONE for the rest of
 * the run meanwhile (they map the extent on the next pass). */
static uint32_t run_pick(struct samepaged *d, struct conn *c, const struct sp_lookup_ent *e,
			 uint64_t key, struct run *r)
{
	uint32_t id;

	if (r->first == SP_POOL_NONE && !r->made)
		r->first = run_extent(d, c, key, r);
	if (r->first == SP_POOL_NONE) {
		if (r->made < r->len && !defer_inplace(d, c, e)) {
			r->made++;
			return SP_POOL_CREATE;
		}
		return SP_POOL_NONE;
	}
	id = run_next(d, c, key, r);
	if (id == SP_POOL_NONE || ref_take(d, c, id)) {
		r->last = SP_POOL_NONE;
		return SP_POOL_NONE;
	}
	r->last = id;
	return id;
}

int on_lookup(struct samepaged *d, struct conn *c, const struct sp_lookup *l)
{
	struct sp_ids *r = (struct sp_ids *)d->buf; /* l lives in d->in */
	struct partner me = { d, c->domain };
	struct run run = { 0 };
	uint32_t n = l->n;
	uint32_t *ids = r->id;

	if (c->observer)
		return -EPROTO;
	if (!c->pairs) {
		c->pairs = malloc(SP_MAX_LOOKUP * sizeof(*c->pairs));
		c->look_addr = malloc(SP_MAX_LOOKUP * sizeof(*c->look_addr));
		c->look_maps = malloc(SP_MAX_LOOKUP * sizeof(*c->look_maps));
		c->look_run = malloc(SP_MAX_LOOKUP * sizeof(*c->look_run));
		if (!c->pairs || !c->look_addr || !c->look_maps || !c->look_run)
			return -ENOMEM;
	}
	c->npairs = n;
	for (uint32_t i = 0; i < n; i++) {
		c->pairs[i].conn = 0;
		c->look_addr[i] = l->e[i].addr;
		c->look_maps[i] = maps_of(&l->e[i]);
		c->look_run[i] = 0;
		uint64_t key = key_of(c, l->e[i].hash);
		uint32_t id = hint_claim(d, c, l->e[i].addr, key);
		int err;

		if (!run_continues(l, i))
			run = run_start(l, i);
		if (id != SP_POOL_NONE) {
			ids[i] = id;
			run.last = SP_POOL_NONE;
			continue;
		}
		if (run.len) {
			ids[i] = run_pick(d, c, &l->e[i], key, &run);
			c->look_run[i] = ids[i] == SP_POOL_CREATE;
			continue;
		}
		id = stable_for(d, c, key);
		if (id != SP_POOL_NONE) {
			/* The content has a pool page already: that one, even
			 * where the VMA maps a page nobody reads. Writing the
			 * content there too would keep two pool pages of it for
			 * good (a third sharer rewriting after two others had
			 * merged anew: 95 % of the saving in bench/soak); the
			 * VMA split it costs, defragmentation undoes. */
			err = ref_take(d, c, id);
			ids[i] = err ? SP_POOL_NONE : id;
			continue;
		}
		if (stable_has_in(d, c, key)) {
			ids[i] = SP_POOL_CREATE; /* chain full: start a dup */
			continue;
		}
		if (defer_inplace(d, c, &l->e[i])) {
			ids[i] = SP_POOL_NONE;
			continue;
		}
		err = unstable_offer(&d->ix, key, c->id, l->e[i].addr, partner_ok, &me,
				     &c->pairs[i]);
		ids[i] = err == 1 ? SP_POOL_CREATE : SP_POOL_NONE;
	}
	r->n = n;
	return reply(c, D_LOOKUP, r, sizeof(*r) + n * sizeof(uint32_t));
}

/* The id for c's new page at addr, which matched o's page at oaddr (o:
 * NULL for none). Consecutive pages get consecutive ids (one VMA per run
 * in every process that maps them; extents reuse freed pages first,
 * whole: pool.h). The pool follows the memory: a page created a few
 * pages after the last one skips as many ids, given back free, so that
 * the process can later fill the gap and map both runs with one VMA
 * (DESIGN.md, "Filling gaps"); and where o placed the page before its
 * partner's last (two processes scanning alike create by turns), the page
 * continues o's reservation, so that the pool follows one layout, not
 * both interleaved. */
static int64_t alloc_for(struct samepaged *d, struct conn *c, const void *data, uint64_t key,
			 uint64_t addr, struct conn *o, uint64_t oaddr)
{
	uint64_t mine = rsv_skip(c, addr), theirs = o ? rsv_skip(o, oaddr) : SKIP_NONE;

	uint64_t skip = 0;

	if (theirs < mine)
		return rsv_take(d, o, oaddr, theirs, data, key);
	if (mine != SKIP_NONE)
		return rsv_take(d, c, addr, mine, data, key);
	/* Past the reservation's end: the next one usually follows it in the
	 * pool, and the gap then goes on across the two. */
	if (c->rsv_addr && addr > c->rsv_addr && (addr - c->rsv_addr) / SP_PAGE - 1 <= GAP_MAX) {
		skip = (addr - c->rsv_addr) / SP_PAGE - 1;
		if (c->rsv_next != c->rsv_end) {
			skip -= c->rsv_end - c->rsv_next;
			pool_unreserve(&d->pool, c->rsv_next, c->rsv_end - c->rsv_next);
			c->rsv_next = c->rsv_end;
		}
	}
	if (c->rsv_next == c->rsv_end) {
		uint32_t first, got, end = c->rsv_end;
		if (pool_reserve(&d->pool, c->domain, RESERVE_RUN, &first, &got)) {
			c->rsv_addr = 0;
			return pool_alloc_in(&d->pool, c->domain, data, key);
		}
		c->rsv_next = first;
		c->rsv_end = first + got;
		if (first != end || skip >= got)
			skip = 0;
	}
	return rsv_take(d, c, addr, skip, data, key);
}

/* Tell the page that c's page matched in the unstable index: pool page id
 * now holds that content, with a reference taken for its process. */
static void hint(struct samepaged *d, struct conn *c, uint32_t look, uint32_t id)
{
	struct unstable_item *it;
	struct conn *o;

	if (look >= c->npairs || !c->pairs[look].conn)
		return;
	it = &c->pairs[look];
	o = conn_by_id(d, it->conn);
	it->conn = 0;
	/* Not to a process at its VMA budget: it could only give it back. */
	if (!o || o->st.limited || o->nhints >= HINTS_MAX_ || map_get(&o->hint_at, it->addr) ||
	    hints_reserve(o))
		return;
	/* max_page_sharing: id may be a page found pooled already (someone
	 * pooled the content between c's lookup and its C_CREATE), which c's
	 * reference filled; o then finds the content as any page does. */
	if (pool_page(&d->pool, id)->refs >= d->knobs.v[KNOB_MAX_PAGE_SHARING])
		return;
	/* Invariant 2: the reference is o's before o maps the page. */
	if (ref_take(d, o, id))
		return;
	if (map_put(&o->hint_at, it->addr, o->nhints)) {
		ref_drop(d, o, id, 0);
		return;
	}
	o->hints[o->nhints++] = (struct sp_hint){ .addr = it->addr, .id = id };
	hint_ids_add(o, id, +1);
}

/* Where page i of a C_CREATE lands: straight into a new pool page, or, when
 * a pool page with the claimed hash exists, into scratch to be compared. */
struct create_dst {
	uint32_t id;    /* new page, or the existing one to compare with */
	uint8_t fresh;  /* id was allocated for it */
	uint8_t ok;     /* id allocated or found */
	uint8_t hinted; /* id is a waiting hint's page: the reference is already c's */
	uint8_t inplace; /* id is the page c's VMA maps there, nobody reads: rewritten */
};

/* Allocate the new pool pages of a batch before the copy, one call per run
 * of adjacent pages: a page fault per page, taken inside the copy, costs
 * several times more (measured here: 9 vs 41 us a page in this VM). */
static void populate_fresh(const struct iovec *iov, const struct create_dst *dst, uint32_t n)
{
	for (uint32_t i = 0; i < n;) {
		uint32_t j = i + 1;
		if (!dst[i].fresh) { /* scratch: populated since its first use */
			i++;
			continue;
		}
		while (j < n && dst[j].fresh &&
		       (char *)iov[j].iov_base == (char *)iov[j - 1].iov_base + SP_PAGE)
			j++;
		os_madvise(iov[i].iov_base, (size_t)(j - i) * SP_PAGE, MADV_POPULATE_WRITE);
		i = j;
	}
}

static void create_plan(struct samepaged *d, struct conn *c, const struct sp_create *cr,
			struct create_dst *dst, struct iovec *iov)
{
	for (uint32_t i = 0; i < cr->n; i++) {
		uint32_t look = cr->e[i].look;
		uint64_t key = key_of(c, cr->e[i].hash);
		/* A hint that arrived after c's lookup, for the same page: its
		 * pool page is the answer (as in on_lookup). */
		uint32_t id = look < c->npairs ? hint_claim(d, c, c->look_addr[look], key) :
						 SP_POOL_NONE;
		if (id != SP_POOL_NONE) {
			dst[i] = (struct create_dst){ .id = id, .ok = 1, .hinted = 1 };
			iov[i] = (struct iovec){ d->scratch + (size_t)i * SP_PAGE, SP_PAGE };
			continue;
		}
		/* Where its VMA maps a page nobody reads: the bytes go there. */
		if (look < c->npairs && reusable(d, c, c->look_maps[look])) {
			dst[i] = (struct create_dst){ .id = c->look_maps[look], .ok = 1, .inplace = 1 };
			iov[i] = (struct iovec){ d->scratch + (size_t)i * SP_PAGE, SP_PAGE };
			continue;
		}
		/* A run's new extent (run_pick()): fresh pages, even where the
		 * content is pooled already, in a short extent. */
		id = look < c->npairs && c->look_run[look] ? SP_POOL_NONE : stable_for(d, c, key);
		struct conn *o = look < c->npairs && c->pairs[look].conn ?
				 conn_by_id(d, c->pairs[look].conn) : NULL;
		int64_t nid = id == SP_POOL_NONE ?
			alloc_for(d, c, NULL, key, look < c->npairs ? c->look_addr[look] : 0, o,
				  o ? c->pairs[look].addr : 0) : -1;

		dst[i] = (struct create_dst){ .id = id, .ok = id != SP_POOL_NONE };
		if (nid >= 0)
			dst[i] = (struct create_dst){ .id = (uint32_t)nid, .fresh = 1, .ok = 1 };
		iov[i].iov_base = dst[i].fresh ? pool_slot(&d->pool, dst[i].id) :
				  d->scratch + (size_t)i * SP_PAGE;
		iov[i].iov_len = SP_PAGE;
	}
	populate_fresh(iov, dst, cr->n);
}

/* Read exactly n pages from the pipe; the process put them there before
 * sending C_CREATE, so anything short is a protocol error. */
static int create_read(struct conn *c, struct iovec *iov, uint32_t n)
{
	uint32_t i = 0;

	while (i < n) {
		uint32_t k = n - i < IOV_MAX ? n - i : IOV_MAX;
		ssize_t got = readv(c->pipe_fd, iov + i, (int)k);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0 || got % SP_PAGE)
			return -EPROTO; /* pages are spliced whole */
		i += (uint32_t)(got / SP_PAGE);
	}
	return 0;
}

/* Page i is read: keep it, or find it already pooled. The pool page id,
 * with a reference for c, or SP_POOL_NONE. */
static uint32_t create_settle(struct samepaged *d, struct conn *c, const struct create_dst *dst,
			      const struct iovec *iov, uint64_t claimed, int run)
{
	uint64_t hash = XXH3_64bits(iov->iov_base, SP_PAGE); /* never the process's word for it */
	uint64_t key = key_of(c, hash);
	uint32_t id;

	if (!dst->ok)
		return SP_POOL_NONE;
	if (dst->inplace) {
		/* Still nobody's (this batch may have taken it already). */
		if (hash != claimed || !reusable(d, c, dst->id))
			return SP_POOL_NONE;
		/* Created earlier in this batch: that page, not a second one. */
		id = stable_for(d, c, key);
		if (id != SP_POOL_NONE && !memcmp(pool_data(&d->pool, id), iov->iov_base, SP_PAGE))
			return ref_take(d, c, id) ? SP_POOL_NONE : id;
		rewrite_in_place(d, dst->id, iov->iov_base, key);
		return ref_take(d, c, dst->id) ? SP_POOL_NONE : dst->id;
	}
	if (!dst->fresh) {
		id = dst->id;
		if (memcmp(pool_data(&d->pool, id), iov->iov_base, SP_PAGE)) {
			if (dst->hinted)
				ref_drop(d, c, id, 0); /* the claimed hint's reference */
			return SP_POOL_NONE; /* a hash collision: leave it unmerged */
		}
		if (dst->hinted)
			return id;
		return ref_take(d, c, id) ? SP_POOL_NONE : id;
	}
	pool_page(&d->pool, dst->id)->hash = key;
	/* A page of a run's new extent: kept apart from equal pages, the
	 * one before it in the pool as in memory. */
	if (hash == claimed && run)
		goto keep;
	/* An equal page created earlier in this batch, or a changed page. */
	id = hash == claimed ? stable_for(d, c, key) : SP_POOL_NONE;
	if (hash != claimed ||
	    (id != SP_POOL_NONE && !memcmp(pool_data(&d->pool, id), iov->iov_base, SP_PAGE))) {
		pool_free(&d->pool, dst->id);
		if (hash != claimed)
			return SP_POOL_NONE;
		return ref_take(d, c, id) ? SP_POOL_NONE : id;
	}
keep:
	id = dst->id;
	if (stable_insert(&d->ix, &d->pool, id)) {
		pool_free(&d->pool, id);
		return SP_POOL_NONE;
	}
	if (ref_take(d, c, id)) {
		stable_remove(&d->ix, &d->pool, id);
		pool_free(&d->pool, id);
		return SP_POOL_NONE;
	}
	return id;
}

int on_create(struct samepaged *d, struct conn *c, const struct sp_create *cr)
{
	struct { uint32_t n; uint32_t id[SP_MAX_CREATE]; } r = { .n = cr->n };
	struct create_dst dst[SP_MAX_CREATE];
	struct iovec iov[SP_MAX_CREATE];
	int err;

	if (c->observer || c->pipe_fd < 0 || cr->n > c->pipe_pages)
		return -EPROTO;
	create_plan(d, c, cr, dst, iov);
	err = create_read(c, iov, cr->n);
	for (uint32_t i = 0; i < cr->n; i++) {
		if (err) { /* nothing of it was handed out */
			if (dst[i].fresh)
				pool_free(&d->pool, dst[i].id);
			else if (dst[i].hinted)
				ref_drop(d, c, dst[i].id, 0);
			continue;
		}
		r.id[i] = create_settle(d, c, &dst[i], &iov[i], cr->e[i].hash,
					cr->e[i].look < c->npairs && c->look_run[cr->e[i].look]);
		if (r.id[i] != SP_POOL_NONE)
			hint(d, c, cr->e[i].look, r.id[i]);
	}
	if (err)
		return err;
	return reply(c, D_CREATE, &r, sizeof(uint32_t) * (1 + cr->n));
}

int on_hints(struct samepaged *d, struct conn *c, const struct sp_hints_req *q)
{
	struct sp_hints *r = (struct sp_hints *)d->buf;
	uint32_t n = c->nhints < q->max ? c->nhints : q->max;

	if (n > SP_MAX_HINTS)
		n = SP_MAX_HINTS;
	c->nhints -= n;
	r->n = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct sp_hint *h = &c->hints[c->nhints + i];
		map_del(&c->hint_at, h->addr);
		hint_ids_add(c, h->id, -1);
		/* Only hints whose reference c still holds (see hint_claim()). */
		if (refs_count(&c->refs, h->id) && pool_page(&d->pool, h->id))
			r->e[r->n++] = *h;
	}
	return reply(c, D_HINTS, r, sizeof(*r) + r->n * sizeof(r->e[0]));
}
