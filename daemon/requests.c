/* SPDX-License-Identifier: MIT */
/*
 * requests — every message a process may send, checked (sp_validate) and
 * dispatched in one place; C_HELLO, C_FORK and C_MARKER (markers: sets.c),
 * the page pipe, references dropped or written, segments, counters, knobs.
 * A handler returns 0, or < 0 to close the connection (invariant 6).
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

/* ---- request handlers: 0, or <0 to close the connection ---- */

int hello_reply(struct samepaged *d, struct conn *c, uint32_t attached)
{
	struct sp_hello_r r = { .instance = d->instance, .seg_pages = SP_SEG_PAGES,
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
	if (!c->observer)
		sp_logl(SP_LOG_INFO, "process %d joined%s%s", (int)c->pid,
			c->domain ? " in a merge domain of its own" : "",
			attached ? ", its references kept" : "");
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

/* May id be one of c's holes: free, or a hole already (another process
 * laid out alike filled the same gap: each has its own pages above it)? */
static int hole_ok(struct samepaged *d, struct conn *c, uint32_t id)
{
	struct pool_page *pg = pool_page(&d->pool, id);

	return pg ? pg->hash == POOL_HOLE : pool_free_at(&d->pool, c->domain, id);
}

/* C_FILL: holes for c's gap (DESIGN.md, "Filling gaps"), all or none.
 * Only in a segment of c's domain that c holds a page of, as for its fd:
 * a hole is zeros, but the ids are the pool's to hand out. */
static int on_fill(struct samepaged *d, struct conn *c, const struct sp_fill *f)
{
	uint32_t seg = f->first / SP_SEG_PAGES, i;

	if (c->observer || !f->n || f->n > SP_MAX_FILL || f->first / SP_SEG_PAGES >= SP_MAX_SEGS ||
	    (f->first + f->n - 1) / SP_SEG_PAGES != seg)
		return -EPROTO;
	if (pool_seg_domain(&d->pool, seg) != c->domain || !refs_holds_seg(&c->refs, seg))
		return ack(c, -EACCES);
	for (i = 0; i < f->n; i++)
		if (!hole_ok(d, c, f->first + i))
			return ack(c, -EBUSY);
	for (i = 0; i < f->n; i++) {
		uint32_t id = f->first + i;
		int fresh = !pool_page(&d->pool, id);
		/* Invariant 2: c's reference before c maps it; a written one
		 * (invariant 8): c's own copy is what its page shows. */
		if (fresh && pool_alloc_hole(&d->pool, c->domain, id))
			break;
		if (ref_take(d, c, id)) {
			if (fresh)
				pool_free(&d->pool, id);
			break;
		}
		ref_cow(d, c, id);
	}
	if (i == f->n)
		return ack(c, 0);
	while (i--)
		ref_drop(d, c, f->first + i, 1);
	return ack(c, -ENOMEM);
}

static int on_getseg(struct samepaged *d, struct conn *c, const struct sp_getseg *g)
{
	struct sp_seg_r r = { .seg = g->seg, .pages = SP_SEG_PAGES };
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
	g->pages_skipped = d->pages_skipped;
	g->full_scans = d->full_scans;
	g->stable_node_chains = d->ix.chains;
	g->stable_node_dups = d->ix.dups;
	g->pool_pages = d->pool.pages_used - d->pool.holes; /* holes cost no memory */
	g->pool_segments = d->pool.segs_live;
	g->pool_written = d->written;
	g->pages_inplace = d->inplace;
	g->pages_moved = d->moved_pages;
	/* Unique pages of live processes, as their last passes counted them
	 * (offered without a match, or skipped as quiet: smart_scan). Not the
	 * unstable index's size: it is emptied whenever a generation ends, so
	 * it read 0 between the passes of an idle host, however many unique
	 * pages wait. A process that left takes its own with it. */
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
		g->pages_unshared += c->st.unshared;
		g->merge_vmas += c->st.merge_vmas;
		g->vma_limited += c->st.vma_limited;
		g->processes_limited += c->st.limited != 0;
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

/* (pid, id) order: a listing split over several replies resumes where
 * the previous one ended, whatever connections came and went between. */
static int proc_cmp(const void *a, const void *b)
{
	const struct conn *x = *(const struct conn *const *)a, *y = *(const struct conn *const *)b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int after_cursor(const struct conn *c, const struct sp_procs_req *q)
{
	return c->pid > q->after_pid || (c->pid == q->after_pid && c->id > q->after_id);
}

static void proc_entry(const struct conn *c, uint64_t now, struct sp_proc_ent *e)
{
	uint64_t silent = c->last_seen_ns ? (now - c->last_seen_ns) / 1000000 : UINT32_MAX;

	memset(e, 0, sizeof(*e));
	e->pid = c->pid;
	e->id = c->id;
	e->flags = (c->unmerge_pending ? PROC_UNMERGING : 0) | (c->parked ? PROC_PARKED : 0);
	e->silent_ms = silent > UINT32_MAX ? UINT32_MAX : (uint32_t)silent;
	e->st = c->st;
	e->refs = c->refs.total;
	e->cowed = c->cowed.total;
}

static int on_procs(struct samepaged *d, struct conn *c, const struct sp_procs_req *q)
{
	struct sp_procs *r = (struct sp_procs *)d->buf;
	struct conn **v;
	uint32_t n = 0, max = 0;
	uint64_t now = now_ns();

	for (struct conn *p = d->conns; p; p = p->next)
		max++;
	v = malloc((max ? max : 1) * sizeof(*v));
	if (!v)
		return ack(c, -ENOMEM);
	for (struct conn *p = d->conns; p; p = p->next)
		if (!p->observer && p->hello && after_cursor(p, q))
			v[n++] = p;
	qsort(v, n, sizeof(*v), proc_cmp);
	memset(r, 0, sizeof(*r));
	r->n = n < SP_MAX_PROCS ? n : SP_MAX_PROCS;
	r->more = n > SP_MAX_PROCS;
	r->daemon_pid = (int32_t)getpid();
	for (uint32_t i = 0; i < r->n; i++)
		proc_entry(v[i], now, &r->e[i]);
	free(v);
	return reply(c, D_PROCS, r, (uint32_t)(sizeof(*r) + r->n * sizeof(r->e[0])));
}

/* Each knob that changed, for the log ("advisor_mode: none -> scan-time";
 * switching the advisor moves pages_to_scan too). */
static void log_knobs(const struct sp_knobs *before, const struct sp_knobs *after, pid_t by)
{
	char from[32], to[32];

	for (int k = 0; k < KNOB_COUNT; k++) {
		if (before->v[k] == after->v[k])
			continue;
		sp_knob_format(k, before->v[k], from, sizeof(from));
		sp_knob_format(k, after->v[k], to, sizeof(to));
		sp_logl(SP_LOG_INFO, "%s: %s -> %s (set by process %d)", sp_knob_name(k), from, to,
			(int)by);
	}
}

static int on_set(struct samepaged *d, struct conn *c, const struct sp_set *s)
{
	struct sp_knobs before = d->knobs;
	int err = s->value > UINT32_MAX ? -EINVAL : knob_store(d, (int)s->knob, (uint32_t)s->value);

	if (err)
		sp_logl(SP_LOG_DEBUG, "process %d: knob %u = %llu refused: %s", (int)c->pid, s->knob,
			(unsigned long long)s->value, strerror(-err));
	log_knobs(&before, &d->knobs, c->pid);
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
	if (u->pid)
		sp_logl(found ? SP_LOG_INFO : SP_LOG_DEBUG, "unmerge of process %d asked by process "
			"%d%s", (int)u->pid, (int)c->pid, found ? "" : ": no such process here");
	else
		sp_logl(SP_LOG_INFO, "unmerge of every process asked by process %d", (int)c->pid);
	return ack(c, found || !u->pid ? 0 : -ESRCH);
}

int dispatch(struct samepaged *d, struct conn *c, struct sp_msg *m)
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
	case C_MOVE: return on_move(d, c, (const void *)m->p);
	case C_PROCS: return on_procs(d, c, (const void *)m->p);
	case C_FILL: return on_fill(d, c, (const void *)m->p);
	default: return -EPROTO; /* a reply type sent to us */
	}
}
