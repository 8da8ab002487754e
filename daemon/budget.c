/* SPDX-License-Identifier: MIT */
/*
 * budget — kernel KSM's pages_to_scan per sleep_millisecs, as a token
 * bucket the scanners draw from (C_BUDGET), and the generations of the
 * unstable index: a generation (a full scan) ends once every scanning
 * process has completed a pass begun in it.
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

/* ---- generations and full scans ---- */

static int conn_scans(const struct conn *c)
{
	return c->hello && !c->observer && !c->parked && (c->st.mergeable || c->st.merge_any);
}

/* A process silent this long (stopped, or its scanner stuck) is not
 * waited for: the unstable index must not grow stale forever. */
#define SILENT_NS (5ull * 1000000000ull)

/* Merging resumed (run back to 1): passes reported while it was stopped
 * saw the memory as it was then, and memory madvised meanwhile may be in
 * none of them. A new generation begins, counting no full scan, so two
 * full scans after `echo 1 > run` are two passes over everything (the
 * kernel's selftests wait for exactly that, then count merged pages). */
static void resume_generation(struct samepaged *d)
{
	d->stopped = 0;
	d->gen++;
	unstable_reset(&d->ix);
	for (struct conn *c = d->conns; c; c = c->next)
		c->pass_done = 0;
}

void maybe_end_generation(struct samepaged *d)
{
	uint64_t now = now_ns();
	int any = 0;

	/* As ksmd: no full scans while merging is stopped (run 0 or 2). */
	if (d->knobs.v[KNOB_RUN] != 1) {
		d->stopped = 1;
		return;
	}
	if (d->stopped) {
		resume_generation(d);
		return;
	}

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
	advisor_scan_done(d);
	unstable_reset(&d->ix);
	for (struct conn *c = d->conns; c; c = c->next)
		c->pass_done = 0;
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

/* A grant is a batch: what was asked, or pages_to_scan when that is less,
 * as ksmd scans pages_to_scan pages at each wake. Handing out whatever
 * trickled into the bucket gave scanners competing at a low pages_to_scan
 * grants of a few pages, each costing a whole budget request and chunk:
 * 27 us of CPU per page at 200 pages per 20 ms against 4 at 16384 (two
 * scanners reading 64 MiB each on every pass), so scanning's cost no
 * longer followed pages_to_scan, as the scan-time advisor's CPU cap
 * assumes it does (advisor.c). Until a batch is there: nothing, and how
 * long it takes to come. */
static void grant(struct samepaged *d, uint32_t want, struct sp_budget_r *r)
{
	uint32_t pts = d->knobs.v[KNOB_PAGES_TO_SCAN];
	uint32_t batch = want < pts ? want : pts;

	if (!want) /* a pass reported done: nothing to wait for */
		return;
	if (d->tokens >= batch) {
		r->grant = want < d->tokens ? want : (uint32_t)d->tokens;
		d->tokens -= r->grant;
		return;
	}
	r->wait_ms = 1 + (uint32_t)((batch - d->tokens) * d->knobs.v[KNOB_SLEEP_MILLISECS] / pts);
}

int on_budget(struct samepaged *d, struct conn *c, const struct sp_budget *b)
{
	struct sp_budget_r r = { .gen = d->gen, .knobs = d->knobs };
	uint32_t run = d->knobs.v[KNOB_RUN];

	/* Invariant 7's refusals, said once each way. */
	if (b->st.limited != c->st.limited)
		sp_logl(b->st.limited ? SP_LOG_WARN : SP_LOG_INFO, b->st.limited ?
			"process %d reached its VMA budget (3/4 of vm.max_map_count): merging "
			"paused" : "process %d has VMAs to spare again: merging resumed",
			(int)c->pid);
	c->st = b->st;
	c->last_seen_ns = now_ns();
	d->pages_scanned += b->scanned;
	d->pages_skipped += b->skipped;
	advisor_account(d, c, b);
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
	grant(d, b->want, &r);
	return reply(c, D_BUDGET, &r, sizeof(r));
}
