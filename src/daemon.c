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
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
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

/* ---- references (invariant 2: a pool page lives while any VMA maps it) ---- */

static int ref_take(struct samepaged *d, struct conn *c, uint32_t id)
{
	int err = refs_add(&c->refs, id);

	if (err)
		return err;
	pool_page(&d->pool, id)->refs++;
	d->total_refs++;
	return 0;
}

static void page_unref(struct samepaged *d, uint32_t id, uint32_t count)
{
	struct pool_page *pg = pool_page(&d->pool, id);

	pg->refs -= count;
	d->total_refs -= count;
	if (pg->refs)
		return;
	/* Invariant 2: no connection holds a reference, so no VMA maps it. */
	stable_remove(&d->ix, &d->pool, id);
	pool_free(&d->pool, id);
}

/* -EPROTO when the process drops a reference it does not hold. */
static int ref_drop(struct samepaged *d, struct conn *c, uint32_t id)
{
	if (refs_drop(&c->refs, id))
		return -EPROTO;
	page_unref(d, id, 1);
	return 0;
}

static void refs_release_all(struct samepaged *d, struct conn *c)
{
	uint64_t pos = 0;
	uint32_t id, n;

	while (refs_next(&c->refs, &pos, &id, &n))
		page_unref(d, id, n);
	refs_fini(&c->refs);
}

/* ---- generations and full scans ---- */

static int conn_scans(const struct conn *c)
{
	return c->hello && !c->observer && (c->st.mergeable || c->st.merge_any);
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

static void conn_close(struct samepaged *d, struct conn *c)
{
	struct conn **pp;

	for (pp = &d->conns; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	epoll_ctl(d->efd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	/* Invariant 2: a closed connection (exit, exec) drops its whole set. */
	refs_release_all(d, c);
	if (c->rsv_next != c->rsv_end)
		pool_unreserve(&d->pool, c->rsv_next, c->rsv_end - c->rsv_next);
	map_del(&d->live, c->id);
	if (c->pipe_fd >= 0)
		close(c->pipe_fd);
	free(c->pairs);
	free(c->look_addr);
	free(c->hints);
	map_fini(&c->hint_at);
	free(c);
	if (!d->conns)
		d->idle_since_ns = now_ns();
	maybe_end_generation(d);
}

static void accept_conn(struct samepaged *d)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c;

	if (fd < 0)
		return;
	/* Invariant 6: only the daemon's own user shares its pages. */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.uid != d->uid) {
		close(fd);
		return;
	}
	/* Every message then carries the sender's pid as the kernel sees it:
	 * a fork child's connection was opened by its parent (C_ADOPT), so
	 * SO_PEERCRED names the parent until the child speaks. */
	int on = 1;
	setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on));
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->fd = fd;
	c->pipe_fd = -1;
	c->id = ++d->next_id;
	c->pid = cr.pid;
	refs_init(&c->refs);
	map_init(&c->hint_at);
	if (getrandom(&c->token, sizeof(c->token), 0) != sizeof(c->token))
		c->token = now_ns() ^ ((uint64_t)c->id << 32) ^ (uint64_t)cr.pid;
	ev.data.ptr = c;
	if (map_put(&d->live, c->id, (uintptr_t)c) || epoll_ctl(d->efd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		map_del(&d->live, c->id);
		close(fd);
		free(c);
		return;
	}
	c->next = d->conns;
	d->conns = c;
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

static int on_hello(struct samepaged *d, struct conn *c, const struct sp_hello *h)
{
	struct sp_hello_r r = { .token = c->token, .seg_pages = SEG_PAGES, .knobs = d->knobs };

	if (c->hello || h->version != SP_PROTO_VERSION)
		return -EPROTO;
	c->hello = 1;
	c->observer = !!(h->flags & HELLO_OBSERVER);
	return reply(c, D_HELLO, &r, sizeof(r));
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
static uint32_t hint_claim(struct samepaged *d, struct conn *c, uint64_t addr, uint64_t hash)
{
	uint64_t *slot = c->nhints ? map_get(&c->hint_at, addr) : NULL;
	uint32_t i, id;

	if (!slot)
		return SP_POOL_NONE;
	i = (uint32_t)*slot;
	id = c->hints[i].id;
	if (pool_page(&d->pool, id)->hash != hash)
		return SP_POOL_NONE;
	map_del(&c->hint_at, addr);
	if (i != --c->nhints) {
		c->hints[i] = c->hints[c->nhints];
		*map_get(&c->hint_at, c->hints[i].addr) = i;
	}
	return id;
}

static int on_lookup(struct samepaged *d, struct conn *c, const struct sp_lookup *l)
{
	struct sp_ids *r = (struct sp_ids *)d->buf; /* l lives in d->in */
	uint32_t n = l->n, maxs = d->knobs.v[KNOB_MAX_PAGE_SHARING];
	uint32_t *ids = r->id;

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
		uint64_t hash = l->e[i].hash;
		uint32_t id = hint_claim(d, c, l->e[i].addr, hash);
		int err;

		if (id != SP_POOL_NONE) {
			ids[i] = id;
			continue;
		}
		id = stable_find(&d->ix, &d->pool, hash, maxs);

		if (id != SP_POOL_NONE) {
			/* The reference is the process's before it maps the page. */
			err = ref_take(d, c, id);
			ids[i] = err ? SP_POOL_NONE : id;
			continue;
		}
		if (stable_has(&d->ix, &d->pool, hash)) {
			ids[i] = SP_POOL_CREATE; /* chain full: start a dup */
			continue;
		}
		err = unstable_offer(&d->ix, hash, c->id, l->e[i].addr, conn_alive, d,
				     &c->pairs[i]);
		ids[i] = err == 1 ? SP_POOL_CREATE : SP_POOL_NONE;
	}
	r->n = n;
	return reply(c, D_LOOKUP, r, sizeof(*r) + n * sizeof(uint32_t));
}

#define RESERVE_RUN 512u /* a scan chunk: what one process creates in a row */
#define HINTS_MAX 65536u /* per process; beyond, its page merges on its next pass */

/* The next id of c's reservation (consecutive ids: one VMA per run in
 * every process that maps them), else any free page. */
static int64_t alloc_for(struct samepaged *d, struct conn *c, const void *data, uint64_t hash)
{
	/* Freed pages first: a sealed segment cannot give their memory back,
	 * so a page written once stays resident until reused (with never-used
	 * ids only, a workload that rewrites merged memory grew the pool's
	 * footprint by what it rewrote, every time). Runs from free lists are
	 * shorter: more VMAs, less memory. */
	if (d->pool.freed)
		return pool_alloc(&d->pool, data, hash);
	if (c->rsv_next == c->rsv_end) {
		uint32_t first, got;
		if (pool_reserve(&d->pool, RESERVE_RUN, &first, &got))
			return pool_alloc(&d->pool, data, hash);
		c->rsv_next = first;
		c->rsv_end = first + got;
	}
	pool_alloc_reserved(&d->pool, c->rsv_next, data, hash);
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
	if (!o || o->nhints >= HINTS_MAX || map_get(&o->hint_at, it->addr))
		return;
	if (!o->hints) {
		o->hints = malloc(HINTS_MAX * sizeof(*o->hints));
		if (!o->hints)
			return;
	}
	/* Invariant 2: the reference is o's before o maps the page. */
	if (ref_take(d, o, id))
		return;
	if (map_put(&o->hint_at, it->addr, o->nhints)) {
		ref_drop(d, o, id);
		return;
	}
	o->hints[o->nhints++] = (struct sp_hint){ .addr = it->addr, .id = id };
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
	uint32_t maxs = d->knobs.v[KNOB_MAX_PAGE_SHARING];

	for (uint32_t i = 0; i < cr->n; i++) {
		uint32_t look = cr->e[i].look;
		/* A hint that arrived after c's lookup, for the same page: its
		 * pool page is the answer (as in on_lookup). */
		uint32_t id = look < c->npairs ?
			      hint_claim(d, c, c->look_addr[look], cr->e[i].hash) : SP_POOL_NONE;
		if (id != SP_POOL_NONE) {
			dst[i] = (struct create_dst){ .id = id, .ok = 1, .hinted = 1 };
			iov[i] = (struct iovec){ d->scratch + (size_t)i * SP_PAGE, SP_PAGE };
			continue;
		}
		id = stable_find(&d->ix, &d->pool, cr->e[i].hash, maxs);
		int64_t nid = id == SP_POOL_NONE ? alloc_for(d, c, NULL, cr->e[i].hash) : -1;

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
	uint32_t maxs = d->knobs.v[KNOB_MAX_PAGE_SHARING], id;
	uint64_t hash = XXH3_64bits(iov->iov_base, SP_PAGE); /* never the process's word for it */

	if (!dst->ok)
		return SP_POOL_NONE;
	if (!dst->fresh) {
		id = dst->id;
		if (memcmp(pool_data(&d->pool, id), iov->iov_base, SP_PAGE)) {
			if (dst->hinted)
				ref_drop(d, c, id); /* the claimed hint's reference */
			return SP_POOL_NONE; /* a hash collision: leave it unmerged */
		}
		if (dst->hinted)
			return id;
		return ref_take(d, c, id) ? SP_POOL_NONE : id;
	}
	pool_page(&d->pool, dst->id)->hash = hash;
	/* An equal page created earlier in this batch, or a changed page. */
	id = hash == claimed ? stable_find(&d->ix, &d->pool, hash, maxs) : SP_POOL_NONE;
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

	if (c->pipe_fd < 0 || cr->n > c->pipe_pages)
		return -EPROTO;
	create_plan(d, c, cr, dst, iov);
	err = create_read(c, iov, cr->n);
	for (uint32_t i = 0; i < cr->n; i++) {
		if (err) { /* nothing of it was handed out */
			if (dst[i].fresh)
				pool_free(&d->pool, dst[i].id);
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
	r->n = n;
	c->nhints -= n;
	if (n)
		memcpy(r->e, c->hints + c->nhints, n * sizeof(r->e[0]));
	for (uint32_t i = 0; i < n; i++)
		map_del(&c->hint_at, r->e[i].addr);
	return reply(c, D_HINTS, r, sizeof(*r) + n * sizeof(r->e[0]));
}

static int on_unref(struct samepaged *d, struct conn *c, const struct sp_ids *u)
{
	for (uint32_t i = 0; i < u->n; i++) {
		int err = ref_drop(d, c, u->id[i]);
		if (err)
			return err;
	}
	return 0;
}

static int on_getseg(struct samepaged *d, struct conn *c, const struct sp_getseg *g)
{
	struct sp_seg_r r = { .seg = g->seg, .pages = SEG_PAGES };
	int fd = g->seg == SP_ZERO_SEG ? d->zero_fd : pool_seg_fd(&d->pool, g->seg);

	if (fd < 0)
		return ack(c, fd);
	return sp_send(c->fd, D_SEG, &r, sizeof(r), fd);
}

static int adopt_hints(struct conn *c, const struct conn *parent)
{
	c->hints = malloc(HINTS_MAX * sizeof(*c->hints));
	if (!c->hints)
		return -ENOMEM;
	memcpy(c->hints, parent->hints, parent->nhints * sizeof(*c->hints));
	c->nhints = parent->nhints;
	for (uint32_t i = 0; i < c->nhints; i++)
		if (map_put(&c->hint_at, c->hints[i].addr, i))
			return -ENOMEM;
	return 0;
}

/* Invariant 2 across fork: the child's connection, opened by the parent
 * before fork(), holds a copy of the parent's set before the child exists. */
static int on_adopt(struct samepaged *d, struct conn *c, const struct sp_adopt *a)
{
	struct conn *parent = NULL;
	uint64_t pos = 0;
	uint32_t id, n;

	for (struct conn *p = d->conns; p; p = p->next)
		if (p != c && p->hello && p->token == a->token)
			parent = p;
	if (!parent || c->refs.total)
		return ack(c, -ESRCH);
	while (refs_next(&parent->refs, &pos, &id, &n)) {
		for (uint32_t i = 0; i < n; i++)
			if (ref_take(d, c, id))
				return -ENOMEM;
	}
	/* The parent's waiting hints hold references the child now holds a
	 * copy of; its pages at those addresses are the parent's too, so it
	 * gets the hints as well, to merge or give back. */
	if (parent->nhints && adopt_hints(c, parent))
		return -ENOMEM;
	c->st.mergeable = parent->st.mergeable;
	c->st.merge_any = parent->st.merge_any;
	return ack(c, 0);
}

static void fill_global(struct samepaged *d, struct sp_global_stats *g)
{
	uint64_t rmap = 0, cowed = 0;

	memset(g, 0, sizeof(*g));
	g->pages_shared = d->pool.pages_used;
	g->pages_unshared = unstable_count(&d->ix);
	g->pages_scanned = d->pages_scanned;
	g->full_scans = d->full_scans;
	g->stable_node_chains = d->ix.chains;
	g->stable_node_dups = d->ix.dups;
	g->pool_pages = d->pool.pages_used;
	g->pool_segments = d->pool.segs_live;
	g->meta_bytes = index_bytes(&d->ix);
	for (struct conn *c = d->conns; c; c = c->next) {
		if (c->observer || !c->hello)
			continue;
		g->processes++;
		g->ksm_zero_pages += c->st.zero_pages;
		g->pages_volatile += c->st.volatile_pages;
		g->merge_vmas += c->st.merge_vmas;
		g->vma_limited += c->st.vma_limited;
		g->meta_bytes += refs_bytes(&c->refs);
		rmap += c->st.rmap_items;
		cowed += c->st.cowed;
	}
	/* A reference held by a page written since (E_COWED) shares nothing. */
	g->pages_sharing = d->total_refs - d->pool.pages_used;
	g->pages_sharing = g->pages_sharing > cowed ? g->pages_sharing - cowed : 0;
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
	case C_HELLO: return on_hello(d, c, (const void *)m->p);
	case C_BUDGET: return on_budget(d, c, (const void *)m->p);
	case C_LOOKUP: return on_lookup(d, c, (const void *)m->p);
	case C_CREATE: return on_create(d, c, (const void *)m->p);
	case C_UNREF: return on_unref(d, c, (const void *)m->p);
	case C_GETSEG: return on_getseg(d, c, (const void *)m->p);
	case C_ADOPT: return on_adopt(d, c, (const void *)m->p);
	case C_STAT: return on_stat(d, c, (const void *)m->p);
	case C_SET: return on_set(d, c, (const void *)m->p);
	case C_UNMERGE: return on_unmerge(d, c, (const void *)m->p);
	case C_PIPE: return on_pipe(d, c, (const void *)m->p, m);
	case C_HINTS: return on_hints(d, c, (const void *)m->p);
	default: return -EPROTO; /* a reply type sent to us */
	}
}

static void on_readable(struct samepaged *d, struct conn *c)
{
	struct sp_msg m;

	for (;;) {
		int err = sp_recv(c->fd, d->in, &m);
		if (err == -EAGAIN)
			return;
		if (!err && m.pid > 0 && m.uid == d->uid)
			c->pid = m.pid;
		/* Invariant 6: anything malformed closes this connection, nothing else. */
		err = err ? err : dispatch(d, c, &m);
		if (m.fd >= 0)
			close(m.fd); /* only C_PIPE's is kept */
		if (err < 0) {
			conn_close(d, c);
			return;
		}
	}
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
	if (bind(d->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(d->lfd, 128) < 0)
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
		int n = epoll_wait(d->efd, evs, 64, 1000);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == NULL)
				accept_conn(d);
			else
				on_readable(d, evs[i].data.ptr);
		}
		maybe_end_generation(d);
		if (d->idle_exit_s && !d->conns &&
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

int samepaged_run(const char *path, int idle_exit_s, int ready_fd)
{
	static struct samepaged d; /* the pool's segment table is large */
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int err;

	memset(&d, 0, sizeof(d));
	d.uid = geteuid();
	d.idle_exit_s = idle_exit_s;
	d.idle_since_ns = d.last_refill_ns = now_ns();
	samepaged_default_knobs(&d.knobs);
	pool_init(&d.pool);
	index_init(&d.ix);
	map_init(&d.live);
	d.zero_fd = zero_segment();
	if (d.zero_fd < 0)
		return d.zero_fd;
	d.buf = mmap(NULL, 2 * SP_MAX_MSG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	if (d.buf == MAP_FAILED)
		return -ENOMEM;
	d.in = d.buf + SP_MAX_MSG;
	d.scratch = mmap(NULL, (size_t)SP_MAX_CREATE * SP_PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d.scratch == MAP_FAILED)
		return -ENOMEM;
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
