/* SPDX-License-Identifier: MIT */
/*
 * daemon — see daemon.h.
 *
 * A process's scanner asks for budget (C_BUDGET), hashes its pages, and
 * offers those whose hash did not change since its previous pass
 * (C_LOOKUP). Like ksmd, the daemon searches the stable index first: a hit
 * hands the process a pool page, with a reference already taken for it so
 * that the page cannot be recycled before the process has mapped it. A miss
 * goes to the unstable index; a hit there asks the process for the page's
 * bytes (C_CREATE, through the connection's pipe), which become a new pool
 * page. The page it matched in the unstable index gets a merge hint: its
 * process learns with its next budget reply that a pool page with a
 * reference of its own waits for that address (C_HINTS), so it merges
 * without waiting for its next pass (kernel KSM merges both pages of an
 * unstable match at once; this is the same, done by each process itself).
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
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

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void samepaged_default_knobs(struct sp_knobs *k)
{
	k->v[KNOB_RUN] = 1;
	k->v[KNOB_PAGES_TO_SCAN] = 16384;
	k->v[KNOB_SLEEP_MILLISECS] = 20;
	k->v[KNOB_USE_ZERO_PAGES] = 1;
	k->v[KNOB_MAX_PAGE_SHARING] = 256;
}

#define HINTS_MAX_ 65536u /* per process; beyond, its page merges on its next pass */

/* ---- references (invariant 2: a pool page lives while any VMA maps it) ---- */

/* A page's reference counts changed by drefs/dcowed: keep the counters that
 * follow them and free the page once nobody holds it. */
static void page_adjust(struct samepaged *d, uint32_t id, int64_t drefs, int64_t dcowed)
{
	struct pool_page *pg = pool_page(&d->pool, id);
	uint32_t live0 = pg->refs - pg->cowed, refs0 = pg->refs, live1;

	pg->refs = (uint32_t)((int64_t)pg->refs + drefs);
	pg->cowed = (uint32_t)((int64_t)pg->cowed + dcowed);
	d->total_refs = (uint64_t)((int64_t)d->total_refs + drefs);
	live1 = pg->refs - pg->cowed;
	d->shared += (live1 > 0) - (live0 > 0);
	d->sharing += (uint64_t)(live1 > 1 ? live1 - 1 : 0) - (uint64_t)(live0 > 1 ? live0 - 1 : 0);
	d->written += (pg->refs && !live1) - (refs0 && !live0);
	if (pg->refs)
		return;
	/* Invariant 2: nobody holds a reference, so no VMA maps it. */
	stable_remove(&d->ix, &d->pool, id);
	pool_free(&d->pool, id);
}

/* Hints waiting for pool page id count among c's references to it: a
 * C_UNREF must not take those (hint_ids_add(), ref_drop()). */
static void hint_ids_add(struct conn *c, uint32_t id, int delta)
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

static int ref_take(struct samepaged *d, struct conn *c, uint32_t id)
{
	int err = refs_add(&c->refs, id);

	if (!err)
		page_adjust(d, id, +1, 0);
	return err;
}

/* One of c's references to id now belongs to a page its process wrote. */
static void ref_cow(struct samepaged *d, struct conn *c, uint32_t id)
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
static void ref_drop(struct samepaged *d, struct conn *c, uint32_t id, int cowed)
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

static void set_release(struct samepaged *d, struct conn *c)
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

static int hints_reserve(struct conn *c)
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
static int set_merge(struct samepaged *d, struct conn *dst, struct conn *src, int copy)
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
static int marker_take(struct conn *c, int fd)
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

static int same_marker(const struct conn *a, const struct conn *b)
{
	return a->marker_fd >= 0 && b->marker_fd >= 0 && a->marker_ino == b->marker_ino &&
	       a->marker_dev == b->marker_dev && a->domain == b->domain;
}

static void set_free(struct conn *c)
{
	refs_fini(&c->refs);
	refs_fini(&c->cowed);
	if (c->marker_fd >= 0)
		close(c->marker_fd);
	free(c->pairs);
	free(c->look_addr);
	free(c->hints);
	map_fini(&c->hint_at);
	map_fini(&c->hint_ids);
	free(c);
}

/* The held sets a connection's process holds: its own earlier
 * connection's (moved) and its parent's C_FORK copies (copied: siblings
 * sharing that marker may still come). Number of sets attached. */
static uint32_t attach_held(struct samepaged *d, struct conn *c)
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

static struct conn *live_with_marker(struct samepaged *d, const struct conn *h)
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
static void set_closed(struct samepaged *d, struct conn *c)
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
static void sweep_held(struct samepaged *d)
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

/* ---- generations and full scans ---- */

static int conn_scans(const struct conn *c)
{
	return c->hello && !c->observer && !c->parked && (c->st.mergeable || c->st.merge_any);
}

/* A process silent this long (stopped, or its scanner stuck) is not
 * waited for: the unstable index must not grow stale forever. */
#define SILENT_NS (5ull * 1000000000ull)

static void maybe_end_generation(struct samepaged *d)
{
	uint64_t now = now_ns();
	int any = 0;

	for (struct conn *c = d->conns; c; c = c->next) {
		if (!conn_scans(c) || now - c->last_seen_ns > SILENT_NS)
			continue;
		if (!c->pass_done)
			return;
		any = 1;
	}
	if (!any)
		return;
	d->gen++;
	d->full_scans++;
	unstable_reset(&d->ix);
	for (struct conn *c = d->conns; c; c = c->next)
		c->pass_done = 0;
}

/* ---- connections ---- */

static int conn_alive(void *ctx, uint32_t id)
{
	struct samepaged *d = ctx;

	return map_get(&d->live, id) != NULL;
}

static struct conn *conn_by_id(struct samepaged *d, uint32_t id)
{
	uint64_t *v = map_get(&d->live, id);

	return v ? (struct conn *)(uintptr_t)*v : NULL;
}

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

/* The daemon keeps nothing for nobody: with no process and no held set
 * left, the unstable index and scratch memory go back too. */
static void maybe_idle(struct samepaged *d)
{
	if (d->conns || d->held)
		return;
	d->idle_since_ns = now_ns();
	unstable_reset(&d->ix);
	unstable_reset(&d->ix); /* twice: a mostly empty table is freed */
	os_madvise(d->scratch, (size_t)SP_MAX_CREATE * SP_PAGE, MADV_DONTNEED);
	malloc_trim(0);
}

static void conn_close(struct samepaged *d, struct conn *c)
{
	struct conn **pp;

	for (pp = &d->conns; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	epoll_ctl(d->efd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->parked)
		d->nparked--;
	c->parked = 0;
	if (c->rsv_next != c->rsv_end)
		pool_unreserve(&d->pool, c->rsv_next, c->rsv_end - c->rsv_next);
	map_del(&d->live, c->id);
	if (c->pipe_fd >= 0)
		close(c->pipe_fd);
	free(c->pairs);
	free(c->look_addr);
	c->pairs = NULL;
	c->look_addr = NULL;
	/* Invariant 2: the set outlives the connection while anyone maps its marker. */
	set_closed(d, c);
	maybe_idle(d);
	maybe_end_generation(d);
}

struct conn *samepaged_attach(struct samepaged *d, int fd, pid_t pid)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->pipe_fd = -1;
	c->marker_fd = -1;
	c->id = ++d->next_id;
	c->pid = pid;
	refs_init(&c->refs);
	refs_init(&c->cowed);
	map_init(&c->hint_at);
	map_init(&c->hint_ids);
	ev.data.ptr = c;
	if (map_put(&d->live, c->id, (uintptr_t)c) ||
	    (d->efd >= 0 && epoll_ctl(d->efd, EPOLL_CTL_ADD, fd, &ev) < 0)) {
		map_del(&d->live, c->id);
		set_free(c);
		return NULL;
	}
	c->next = d->conns;
	d->conns = c;
	return c;
}

/* 1: a connection was taken (or refused), 0: none waits. */
static int accept_conn(struct samepaged *d)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0 && (errno == EMFILE || errno == ENFILE) && d->spare_fd >= 0) {
		/* Out of descriptors: take the connection with the spare one and
		 * close it (its process sees the end and retries later), or the
		 * listening socket stays readable and the loop spins. */
		close(d->spare_fd);
		fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		return fd >= 0;
	}
	if (fd < 0)
		return errno == ECONNABORTED || errno == EINTR;
	/* Invariant 6: only the daemon's own user shares its pages. */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.uid != d->uid ||
	    !samepaged_attach(d, fd, cr.pid))
		close(fd);
	return 1;
}

static int reply(struct conn *c, uint16_t type, const void *p, uint32_t len)
{
	return sp_send(c->fd, type, p, len, -1);
}

static int ack(struct conn *c, int err)
{
	struct sp_ack a = { .err = err };

	return reply(c, D_ACK, &a, sizeof(a));
}

/* ---- request handlers: 0, or <0 to close the connection ---- */

static int hello_reply(struct samepaged *d, struct conn *c, uint32_t attached)
{
	struct sp_hello_r r = { .instance = d->instance, .seg_pages = SEG_PAGES,
				.attached = attached, .knobs = d->knobs };

	return reply(c, D_HELLO, &r, sizeof(r));
}

static int on_hello(struct samepaged *d, struct conn *c, const struct sp_hello *h,
		    struct sp_msg *m)
{
	uint32_t attached = 0;
	struct epoll_event ev = { .events = 0, .data.ptr = c };

	if (c->hello || h->version != SP_PROTO_VERSION)
		return -EPROTO;
	c->hello = 1;
	c->observer = !!(h->flags & HELLO_OBSERVER);
	c->domain = h->domain;
	c->key_mix = XXH3_64bits_withSeed(&c->domain, sizeof(c->domain), d->salt);
	if (m->fd >= 0 && !c->observer) {
		if (marker_take(c, m->fd))
			return -EPROTO;
		m->fd = -1;
		attached = attach_held(d, c);
	}
	/* A fork child: its parent sent C_FORK before fork(), on its own
	 * connection; until that is read, this one is not (its requests may
	 * drop references the copy brings). samepaged_tick() reads everyone
	 * else's messages, then answers. */
	if (!attached && (h->flags & HELLO_FORKED) && c->marker_fd >= 0 &&
	    h->expect_instance == d->instance) {
		c->parked = 1;
		d->nparked++;
		if (d->efd >= 0)
			epoll_ctl(d->efd, EPOLL_CTL_MOD, c->fd, &ev);
		return 0;
	}
	return hello_reply(d, c, attached);
}

/* C_FORK: the child about to be forked will map the marker that comes
 * with it; it gets a copy of c's set now, before it exists (invariant 2). */
static int on_fork(struct samepaged *d, struct conn *c, struct sp_msg *m)
{
	struct conn *f, *live;

	if (c->observer || m->fd < 0)
		return -EPROTO;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->fd = -1;
	f->kind = SET_FORK;
	f->marker_fd = -1;
	f->domain = c->domain;
	f->key_mix = c->key_mix;
	f->id = ++d->next_id;
	refs_init(&f->refs);
	refs_init(&f->cowed);
	map_init(&f->hint_at);
	map_init(&f->hint_ids);
	if (marker_take(f, m->fd)) {
		set_free(f);
		return -EPROTO;
	}
	m->fd = -1;
	/* The children's marker, never the sender's own (its copy would come
	 * back to it). */
	if (same_marker(f, c)) {
		set_free(f);
		return -EPROTO;
	}
	if (set_merge(d, f, c, 1)) {
		set_release(d, f);
		set_free(f);
		return -ENOMEM;
	}
	/* A child that connected first (it was parked, or the marker was
	 * reused) gets its copy now. */
	live = live_with_marker(d, f);
	if (live && live != c && !live->parked)
		set_merge(d, live, f, 1);
	f->next = d->held;
	d->held = f;
	return 0;
}

static int on_marker(struct samepaged *d, struct conn *c, struct sp_msg *m)
{
	(void)d;
	if (c->observer || m->fd < 0 || marker_take(c, m->fd))
		return -EPROTO;
	m->fd = -1;
	return 0;
}

static void refill(struct samepaged *d)
{
	uint64_t t = now_ns();
	double cap = d->knobs.v[KNOB_PAGES_TO_SCAN];
	double ms = (t - d->last_refill_ns) / 1e6;

	d->last_refill_ns = t;
	if (!d->knobs.v[KNOB_SLEEP_MILLISECS]) {
		d->tokens = cap;
		return;
	}
	d->tokens += ms * cap / d->knobs.v[KNOB_SLEEP_MILLISECS];
	if (d->tokens > cap)
		d->tokens = cap;
}

static int on_budget(struct samepaged *d, struct conn *c, const struct sp_budget *b)
{
	struct sp_budget_r r = { .gen = d->gen, .knobs = d->knobs };
	uint32_t run = d->knobs.v[KNOB_RUN];

	c->st = b->st;
	c->last_seen_ns = now_ns();
	d->pages_scanned += b->scanned;
	if ((b->flags & BUDGET_PASS_DONE) && b->pass_gen >= d->gen)
		c->pass_done = 1;
	maybe_end_generation(d);
	r.gen = d->gen;
	r.unmerge = run == 2 || c->unmerge_pending;
	c->unmerge_pending = 0;
	r.hints = c->nhints;
	if (run != 1) {
		r.wait_ms = 200;
		return reply(c, D_BUDGET, &r, sizeof(r));
	}
	refill(d);
	r.grant = b->want < d->tokens ? b->want : (uint32_t)d->tokens;
	d->tokens -= r.grant;
	if (!r.grant) {
		uint32_t want = b->want < d->knobs.v[KNOB_PAGES_TO_SCAN] ?
				b->want : d->knobs.v[KNOB_PAGES_TO_SCAN];
		r.wait_ms = 1 + (uint32_t)((uint64_t)want * d->knobs.v[KNOB_SLEEP_MILLISECS] /
					   d->knobs.v[KNOB_PAGES_TO_SCAN]);
	}
	return reply(c, D_BUDGET, &r, sizeof(r));
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

	if (id != SP_POOL_NONE && pool_seg_domain(&d->pool, id / SEG_PAGES) != c->domain)
		return SP_POOL_NONE;
	return id;
}

/* Has c's domain a pool page of this content, full or not? */
static int stable_has_in(struct samepaged *d, struct conn *c, uint64_t key)
{
	uint32_t id = stable_find(&d->ix, &d->pool, key, UINT32_MAX);

	return id != SP_POOL_NONE && pool_seg_domain(&d->pool, id / SEG_PAGES) == c->domain;
}

static int on_lookup(struct samepaged *d, struct conn *c, const struct sp_lookup *l)
{
	struct sp_ids *r = (struct sp_ids *)d->buf; /* l lives in d->in */
	struct partner me = { d, c->domain };
	uint32_t n = l->n;
	uint32_t *ids = r->id;

	if (c->observer)
		return -EPROTO;
	if (!c->pairs) {
		c->pairs = malloc(SP_MAX_LOOKUP * sizeof(*c->pairs));
		c->look_addr = malloc(SP_MAX_LOOKUP * sizeof(*c->look_addr));
		if (!c->pairs || !c->look_addr)
			return -ENOMEM;
	}
	c->npairs = n;
	for (uint32_t i = 0; i < n; i++) {
		c->pairs[i].conn = 0;
		c->look_addr[i] = l->e[i].addr;
		uint64_t key = key_of(c, l->e[i].hash);
		uint32_t id = hint_claim(d, c, l->e[i].addr, key);
		int err;

		if (id != SP_POOL_NONE) {
			ids[i] = id;
			continue;
		}
		id = stable_for(d, c, key);
		if (id != SP_POOL_NONE) {
			/* The reference is the process's before it maps the page. */
			err = ref_take(d, c, id);
			ids[i] = err ? SP_POOL_NONE : id;
			continue;
		}
		if (stable_has_in(d, c, key)) {
			ids[i] = SP_POOL_CREATE; /* chain full: start a dup */
			continue;
		}
		err = unstable_offer(&d->ix, key, c->id, l->e[i].addr, partner_ok, &me,
				     &c->pairs[i]);
		ids[i] = err == 1 ? SP_POOL_CREATE : SP_POOL_NONE;
	}
	r->n = n;
	return reply(c, D_LOOKUP, r, sizeof(*r) + n * sizeof(uint32_t));
}

#define RESERVE_RUN 512u /* a scan chunk: what one process creates in a row */

/* The next id of c's reservation (consecutive ids: one VMA per run in
 * every process that maps them), else any free page. */
static int64_t alloc_for(struct samepaged *d, struct conn *c, const void *data, uint64_t key)
{
	/* Freed pages first: a sealed segment cannot give their memory back,
	 * so a page written once stays resident until reused (with never-used
	 * ids only, a workload that rewrites merged memory grew the pool's
	 * footprint by what it rewrote, every time). Runs from free lists are
	 * shorter: more VMAs, less memory. */
	if (d->pool.freed)
		return pool_alloc_in(&d->pool, c->domain, data, key);
	if (c->rsv_next == c->rsv_end) {
		uint32_t first, got;
		if (pool_reserve(&d->pool, c->domain, RESERVE_RUN, &first, &got))
			return pool_alloc_in(&d->pool, c->domain, data, key);
		c->rsv_next = first;
		c->rsv_end = first + got;
	}
	pool_alloc_reserved(&d->pool, c->rsv_next, data, key);
	return c->rsv_next++;
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
	if (!o || o->nhints >= HINTS_MAX_ || map_get(&o->hint_at, it->addr) || hints_reserve(o))
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
		id = stable_for(d, c, key);
		int64_t nid = id == SP_POOL_NONE ? alloc_for(d, c, NULL, key) : -1;

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
			      const struct iovec *iov, uint64_t claimed)
{
	uint64_t hash = XXH3_64bits(iov->iov_base, SP_PAGE); /* never the process's word for it */
	uint64_t key = key_of(c, hash);
	uint32_t id;

	if (!dst->ok)
		return SP_POOL_NONE;
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
	/* An equal page created earlier in this batch, or a changed page. */
	id = hash == claimed ? stable_for(d, c, key) : SP_POOL_NONE;
	if (hash != claimed ||
	    (id != SP_POOL_NONE && !memcmp(pool_data(&d->pool, id), iov->iov_base, SP_PAGE))) {
		pool_free(&d->pool, dst->id);
		if (hash != claimed)
			return SP_POOL_NONE;
		return ref_take(d, c, id) ? SP_POOL_NONE : id;
	}
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

static int on_create(struct samepaged *d, struct conn *c, const struct sp_create *cr)
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
		r.id[i] = create_settle(d, c, &dst[i], &iov[i], cr->e[i].hash);
		if (r.id[i] != SP_POOL_NONE)
			hint(d, c, cr->e[i].look, r.id[i]);
	}
	if (err)
		return err;
	return reply(c, D_CREATE, &r, sizeof(uint32_t) * (1 + cr->n));
}

/* The process's page pipe: a pipe (nothing else can be read without
 * blocking the loop), read without blocking, as large as it claims. */
static int on_pipe(struct samepaged *d, struct conn *c, const struct sp_pipe *p,
		   struct sp_msg *m)
{
	struct stat st;
	int fd = m->fd, sz;

	(void)d;
	m->fd = -1;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode) || !p->pages ||
	    p->pages > SP_MAX_CREATE || (sz = fcntl(fd, F_GETPIPE_SZ)) < 0 ||
	    (uint64_t)sz < (uint64_t)p->pages * SP_PAGE ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		if (fd >= 0)
			close(fd);
		return -EPROTO;
	}
	if (c->pipe_fd >= 0)
		close(c->pipe_fd);
	c->pipe_fd = fd;
	c->pipe_pages = p->pages;
	return ack(c, 0);
}

static int on_hints(struct samepaged *d, struct conn *c, const struct sp_hints_req *q)
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

static int on_unref(struct samepaged *d, struct conn *c, const struct sp_ids *u)
{
	for (uint32_t i = 0; i < u->n; i++)
		ref_drop(d, c, u->id[i] & ~SP_UNREF_COWED, !!(u->id[i] & SP_UNREF_COWED));
	return 0;
}

static int on_cow(struct samepaged *d, struct conn *c, const struct sp_ids *u)
{
	for (uint32_t i = 0; i < u->n; i++)
		ref_cow(d, c, u->id[i]);
	return 0;
}

static int on_getseg(struct samepaged *d, struct conn *c, const struct sp_getseg *g)
{
	struct sp_seg_r r = { .seg = g->seg, .pages = SEG_PAGES };
	int fd = g->seg == SP_ZERO_SEG ? d->zero_fd : pool_seg_fd(&d->pool, g->seg);

	/* A segment's fd reads every page in it: only to a process that holds
	 * a page of it (it proved it had that content), of its own domain. */
	if (fd >= 0 && g->seg != SP_ZERO_SEG &&
	    (pool_seg_domain(&d->pool, g->seg) != c->domain || !refs_holds_seg(&c->refs, g->seg)))
		fd = -EACCES;
	if (fd < 0)
		return ack(c, fd);
	return sp_send(c->fd, D_SEG, &r, sizeof(r), fd);
}

static void fill_global(struct samepaged *d, struct sp_global_stats *g)
{
	uint64_t rmap = 0;

	memset(g, 0, sizeof(*g));
	g->pages_shared = d->shared;
	g->pages_sharing = d->sharing;
	g->pages_scanned = d->pages_scanned;
	g->full_scans = d->full_scans;
	g->stable_node_chains = d->ix.chains;
	g->stable_node_dups = d->ix.dups;
	g->pool_pages = d->pool.pages_used;
	g->pool_segments = d->pool.segs_live;
	g->pool_written = d->written;
	/* As the kernel's: pages of live processes waiting in the unstable
	 * index; a process that left takes its own with it. */
	g->pages_unshared = unstable_count_live(&d->ix, conn_alive, d);
	g->meta_bytes = index_bytes(&d->ix);
	for (struct conn *h = d->held; h; h = h->next) {
		g->held_sets++;
		g->meta_bytes += refs_bytes(&h->refs) + refs_bytes(&h->cowed);
	}
	for (struct conn *c = d->conns; c; c = c->next) {
		if (c->observer || !c->hello)
			continue;
		g->processes++;
		g->ksm_zero_pages += c->st.zero_pages;
		g->pages_volatile += c->st.volatile_pages;
		g->merge_vmas += c->st.merge_vmas;
		g->vma_limited += c->st.vma_limited;
		g->meta_bytes += refs_bytes(&c->refs) + refs_bytes(&c->cowed);
		rmap += c->st.rmap_items;
	}
	g->general_profit = (int64_t)((g->pages_sharing + g->ksm_zero_pages) * SP_PAGE -
				      (rmap * SP_ENTRY_BYTES + g->meta_bytes));
}

static int on_stat(struct samepaged *d, struct conn *c, const struct sp_statreq *s)
{
	struct sp_stat_r r = { .knobs = d->knobs };

	fill_global(d, &r.g);
	if (s->pid) {
		for (struct conn *p = d->conns; p; p = p->next)
			if (p->pid == s->pid && !p->observer && p->hello) {
				r.has_proc = 1;
				r.pid = p->pid;
				r.p = p->st;
				break;
			}
		if (!r.has_proc)
			return ack(c, -ESRCH);
	}
	return reply(c, D_STAT, &r, sizeof(r));
}

static int on_set(struct samepaged *d, struct conn *c, const struct sp_set *s)
{
	int err = sp_knob_check((int)s->knob, s->value);

	if (!err)
		d->knobs.v[s->knob] = (uint32_t)s->value;
	return ack(c, err);
}

static int on_unmerge(struct samepaged *d, struct conn *c, const struct sp_unmerge *u)
{
	int found = 0;

	for (struct conn *p = d->conns; p; p = p->next)
		if (!p->observer && (!u->pid || p->pid == u->pid)) {
			p->unmerge_pending = 1;
			found = 1;
		}
	return ack(c, found || !u->pid ? 0 : -ESRCH);
}

static int dispatch(struct samepaged *d, struct conn *c, struct sp_msg *m)
{
	if (sp_validate(m) < 0 || (!c->hello && m->h.type != C_HELLO))
		return -EPROTO;
	switch (m->h.type) {
	case C_HELLO: return on_hello(d, c, (const void *)m->p, m);
	case C_BUDGET: return on_budget(d, c, (const void *)m->p);
	case C_LOOKUP: return on_lookup(d, c, (const void *)m->p);
	case C_CREATE: return on_create(d, c, (const void *)m->p);
	case C_UNREF: return on_unref(d, c, (const void *)m->p);
	case C_COW: return on_cow(d, c, (const void *)m->p);
	case C_GETSEG: return on_getseg(d, c, (const void *)m->p);
	case C_FORK: return on_fork(d, c, m);
	case C_MARKER: return on_marker(d, c, m);
	case C_STAT: return on_stat(d, c, (const void *)m->p);
	case C_SET: return on_set(d, c, (const void *)m->p);
	case C_UNMERGE: return on_unmerge(d, c, (const void *)m->p);
	case C_PIPE: return on_pipe(d, c, (const void *)m->p, m);
	case C_HINTS: return on_hints(d, c, (const void *)m->p);
	default: return -EPROTO; /* a reply type sent to us */
	}
}

int samepaged_serve(struct samepaged *d, struct conn *c)
{
	struct sp_msg m;

	while (!c->parked) {
		int err = sp_recv(c->fd, d->in, &m);
		if (err == -EAGAIN)
			return 0;
		/* Invariant 6: anything malformed closes this connection, nothing else. */
		err = err ? err : dispatch(d, c, &m);
		if (m.fd >= 0)
			close(m.fd); /* kept only by handlers that take it */
		if (err < 0) {
			conn_close(d, c);
			return -1;
		}
	}
	return 0;
}

/* Parked fork children: read every other connection's messages first (the
 * parent's C_FORK left before the child existed, so it is among them: on
 * a connection accepted before the child's, since connections queue in
 * order), then attach and answer. */
static void resolve_parked(struct samepaged *d)
{
	uint32_t ids[1024], n = 0;
	struct epoll_event ev = { .events = EPOLLIN };

	for (int i = 0; d->lfd >= 0 && i < 4096 && accept_conn(d); i++)
		;
	for (struct conn *c = d->conns; c && n < 1024; c = c->next)
		ids[n++] = c->id;
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = conn_by_id(d, ids[i]);
		if (c && !c->parked)
			samepaged_serve(d, c);
	}
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = conn_by_id(d, ids[i]);
		if (!c || !c->parked)
			continue;
		c->parked = 0;
		d->nparked--;
		ev.data.ptr = c;
		if (d->efd >= 0)
			epoll_ctl(d->efd, EPOLL_CTL_MOD, c->fd, &ev);
		if (hello_reply(d, c, attach_held(d, c)) < 0)
			conn_close(d, c);
	}
}

#define SWEEP_NS (250ull * 1000000ull)

void samepaged_tick(struct samepaged *d)
{
	uint64_t now = now_ns();

	if (d->nparked)
		resolve_parked(d);
	if (d->held && now - d->last_sweep_ns >= SWEEP_NS) {
		d->last_sweep_ns = now;
		sweep_held(d);
		maybe_idle(d);
	}
	maybe_end_generation(d);
}

static int listen_on(struct samepaged *d, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char lock[sizeof(sa.sun_path) + 8];
	int lk;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	/* One daemon per socket: whoever holds the lock owns the path, so a
	 * stale socket of a killed daemon is replaced, a live one never is. */
	snprintf(lock, sizeof(lock), "%s.lock", path);
	lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lk < 0)
		return -errno;
	if (flock(lk, LOCK_EX | LOCK_NB) < 0) {
		close(lk);
		return -EADDRINUSE;
	}
	strcpy(sa.sun_path, path);
	unlink(path);
	d->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (d->lfd < 0)
		return -errno;
	if (bind(d->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(d->lfd, 4096) < 0)
		return -errno;
	chmod(path, 0600);
	struct stat st;
	if (stat(path, &st) == 0) {
		d->sock_ino = st.st_ino;
		d->sock_dev = st.st_dev;
	}
	return 0; /* lk stays open (and locked) for the daemon's life */
}

/* SIGTERM/SIGINT end the loop, so the socket is removed on the way out.
 * The one piece of state outside struct samepaged: a signal handler has
 * nowhere else to put it. */
static volatile sig_atomic_t terminated;

static void on_term(int sig)
{
	(void)sig;
	terminated = 1;
}

static int loop(struct samepaged *d)
{
	struct epoll_event evs[64];

	while (!d->stop && !terminated) {
		/* Held sets are checked a few times a second while there are any. */
		int n = epoll_wait(d->efd, evs, 64, d->held || d->nparked ? 250 : 1000);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == NULL)
				accept_conn(d);
			else
				samepaged_serve(d, evs[i].data.ptr);
		}
		samepaged_tick(d);
		if (d->idle_exit_s && !d->conns && !d->held &&
		    now_ns() - d->idle_since_ns > (uint64_t)d->idle_exit_s * 1000000000ull)
			d->stop = 1;
	}
	return 0;
}

/* Where reading dropped memory gets no shared zero page (kernels booted
 * with pvm_no_zero_page=1), processes map zero pages from this file
 * instead: a run of n zero pages maps offsets [0, n), so every process's
 * zero runs share the same few frames. Never written, so sealed whole. */
static int zero_segment(void)
{
	int fd = memfd_create("samepage-pool-zero", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)SEG_PAGES * SP_PAGE) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Remove the socket only if it is still ours: a daemon that exits late
 * (SIGTERM) after its directory was recreated would otherwise unlink its
 * successor's socket, and every process forking then fails to hand its
 * references over (fork: ENOMEM), found with Redis's BGSAVE. */
static void unlink_own(const char *path, const struct samepaged *d)
{
	struct stat st;

	if (stat(path, &st) == 0 && st.st_ino == d->sock_ino && st.st_dev == d->sock_dev)
		unlink(path);
}

/* Every process of the user may hold a connection, a marker and a pipe
 * here: the soft limit on descriptors (1024) would stop the daemon at a
 * few hundred processes. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int samepaged_init(struct samepaged *d)
{
	memset(d, 0, sizeof(*d));
	d->lfd = d->efd = -1;
	d->uid = geteuid();
	d->idle_since_ns = d->last_refill_ns = now_ns();
	if (getrandom(&d->instance, sizeof(d->instance), 0) != sizeof(d->instance))
		d->instance = now_ns() ^ ((uint64_t)getpid() << 32);
	d->instance |= 1; /* never 0: "no daemon" to the library */
	if (getrandom(&d->salt, sizeof(d->salt), 0) != sizeof(d->salt))
		d->salt = now_ns() * 0x9e3779b97f4a7c15ull ^ d->instance;
	samepaged_default_knobs(&d->knobs);
	pool_init(&d->pool);
	index_init(&d->ix);
	map_init(&d->live);
	d->zero_fd = zero_segment();
	if (d->zero_fd < 0)
		return d->zero_fd;
	d->buf = mmap(NULL, 2 * SP_MAX_MSG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (d->buf == MAP_FAILED)
		return -ENOMEM;
	d->in = d->buf + SP_MAX_MSG;
	d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	d->scratch = mmap(NULL, (size_t)SP_MAX_CREATE * SP_PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d->scratch == MAP_FAILED)
		return -ENOMEM;
	return 0;
}

void samepaged_fini(struct samepaged *d)
{
	while (d->conns)
		conn_close(d, d->conns);
	while (d->held) {
		struct conn *h = d->held;
		d->held = h->next;
		set_release(d, h);
		set_free(h);
	}
	pool_fini(&d->pool);
	index_fini(&d->ix);
	map_fini(&d->live);
	if (d->zero_fd >= 0)
		close(d->zero_fd);
	if (d->spare_fd >= 0)
		close(d->spare_fd);
	munmap(d->buf, 2 * SP_MAX_MSG);
	munmap(d->scratch, (size_t)SP_MAX_CREATE * SP_PAGE);
}

int samepaged_check(struct samepaged *d)
{
	uint64_t refs = 0;

	for (int pass = 0; pass < 2; pass++)
		for (struct conn *c = pass ? d->held : d->conns; c; c = c->next) {
			uint64_t pos = 0;
			uint32_t id, n;
			while (refs_next(&c->refs, &pos, &id, &n)) {
				if (!pool_page(&d->pool, id) || refs_count(&c->cowed, id) > n)
					return -EUCLEAN;
				refs += n;
			}
		}
	return refs == d->total_refs ? index_check(&d->ix, &d->pool) : -EUCLEAN;
}

int samepaged_run(const char *path, int idle_exit_s, int ready_fd)
{
	static struct samepaged d; /* the pool's segment table is large */
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int err = samepaged_init(&d);

	d.idle_exit_s = idle_exit_s;
	raise_nofile();
	if (!err)
		err = listen_on(&d, path);
	if (!err) {
		d.efd = epoll_create1(EPOLL_CLOEXEC);
		if (d.efd < 0 || epoll_ctl(d.efd, EPOLL_CTL_ADD, d.lfd, &ev) < 0)
			err = -errno;
	}
	if (ready_fd >= 0) {
		unsigned char st = (unsigned char)-err;
		if (write(ready_fd, &st, 1) != 1) {
			/* the starter went away; serve anyway */
		}
		close(ready_fd);
	}
	if (err)
		return err;
	struct sigaction sa = { .sa_handler = on_term }; /* no SA_RESTART: wake epoll_wait */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	err = loop(&d);
	unlink_own(path, &d);
	return err;
}
