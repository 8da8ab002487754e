/* SPDX-License-Identifier: MIT */
/*
 * scan — the per-process scanner: kernel KSM's ksmd, for one process.
 *
 * A pass refreshes which memory is mergeable (track.c), then walks it in
 * chunks (chunk.c), spending budget the daemon grants. A present page is
 * hashed; one whose hash did not change since the previous pass is a
 * candidate: all-zero candidates go to the kernel's zero page, the others
 * are offered to the daemon, which answers with a pool page (stable hit),
 * "send it" (unstable hit) or nothing. A quiet pass doubles the wait before
 * the next, up to 2 s. Unmerging (MADV_UNMERGEABLE, run=2) is here too.
 */
#define _GNU_SOURCE
#include "lib.h"
#include "page.h"
#include "sort.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#ifndef MADV_POPULATE_WRITE

#define MADV_POPULATE_WRITE 23

#endif

#define IDLE_MAX_MS 2000
#define IDLE_FLOOR_MS 20 /* the longest idle sleep at sleep_millisecs=0 */
#define SCAN_NICE 5 /* ksmd's */
#define LIMIT_MARGIN 64 /* VMAs below the budget before merging resumes */

/* ---- unmerge ---- */

static void unzero(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	if (!l->zero_page_ok)
		return; /* zero-segment pages were restored with the merged ones */
	for (uintptr_t p = s; p < e; p += SP_PAGE) {
		struct entry *en = entry_of(a, p);
		if (en->state != E_ZERO)
			continue;
		/* A write fault without a write: the page gets a frame of its own. */
		os_madvise((void *)p, SP_PAGE, MADV_POPULATE_WRITE);
		entry_set(l, en, E_NEW);
	}
}

static int unmerge_area(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	int err = merge_restore(l, a, s, e);

	unzero(l, a, s, e);
	return err;
}

int scan_unmerge(struct lib *l, uintptr_t s, uintptr_t e)
{
	return track_each(l, s, e, unmerge_area);
}

/* This thread's CPU time: only the scanner asks for budget, and the
 * daemon's scan-time advisor caps the sum over every scanner. */
static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Ask for budget; applies knobs and run=2. Grant, or -errno. */
static int64_t budget(struct lib *l, uint32_t want, int pass_done, struct pass *ps,
		      uint32_t *wait_ms)
{
	struct sp_budget b = { .want = want, .flags = pass_done ? BUDGET_PASS_DONE : 0,
			       .pass_gen = ps->gen, .scanned = l->scanned_since_report,
			       .skipped = l->skipped_since_report,
			       .cpu_ns = thread_cpu_ns() };
	struct sp_msg m;
	struct sp_budget_r r;
	int err;

	lib_fill_stats(l, &b.st);
	err = client_call(l, C_BUDGET, &b, sizeof(b), D_BUDGET, &m);
	if (err)
		return err;
	memcpy(&r, m.p, sizeof(r));
	l->scanned_since_report = 0;
	l->skipped_since_report = 0;
	l->knobs = r.knobs;
	l->gen = r.gen;
	if (!ps->have_gen) {
		ps->gen = r.gen;
		ps->have_gen = 1;
	}
	if (r.unmerge)
		scan_unmerge(l, 0, UINTPTR_MAX);
	*wait_ms = r.wait_ms;
	l->hints_waiting = r.hints;
	return r.grant;
}

static struct area *area_from(struct lib *l, uintptr_t cursor)
{
	for (uint32_t i = 0; i < l->nareas; i++)
		if (l->areas[i].end > cursor)
			return &l->areas[i];
	return NULL;
}

/* Wait ms with l->lock released. A kick (madvise, prctl, scan_now) cuts
 * short only the rest between passes: waiting for budget ignores it, or a
 * stale kick would spin on budget requests holding the lock. */
static void sleep_ms(struct lib *l, uint32_t ms, int kickable)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (!(kickable && l->kick) && !l->stop &&
	       pthread_cond_timedwait(&l->wake, &l->lock, &ts) != ETIMEDOUT)
		;
}

/* Let application threads waiting in our wrappers (lib_lock()) in. A
 * mutex is not fair: taken straight back, it could keep a madvise() or
 * munmap() waiting a whole pass on a loaded machine. Up to 5 ms for them
 * to get it (waiters drops once they have). */
static void let_waiters_in(struct lib *l)
{
	pthread_mutex_unlock(&l->lock);
	for (int i = 0; i < 50 && __atomic_load_n(&l->waiters, __ATOMIC_RELAXED); i++) {
		struct timespec ts = { 0, 100000 };
		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&l->lock);
}

/* Walk every area once. Called and returns with l->lock held. */
static int walk(struct lib *l, struct pass *ps)
{
	uintptr_t cursor = 0;
	struct area *a;

	while (!l->stop && (a = area_from(l, cursor))) {
		uintptr_t s = cursor > a->start ? cursor : a->start;
		uint32_t n, wait = 0;
		int64_t g;

		/* Untouched memory has nothing to merge; merged pages not faulted
		 * in (after fork) stay merged. Skipping them costs no budget. */
		s = os_next_present(l->pmfd, s, a->end);
		if (s >= a->end) {
			cursor = a->end;
			continue;
		}
		cursor = s;
		n = (uint32_t)((a->end - s) / SP_PAGE);
		if (n > CHUNK_PAGES)
			n = CHUNK_PAGES;
		g = budget(l, n, 0, ps, &wait);
		if (g < 0)
			return (int)g;
		if (l->hints_waiting) {
			int err = chunk_hints(l, ps);
			if (err)
				return err;
		}
		if (!g) {
			sleep_ms(l, wait ? wait : 1, 0);
			continue; /* areas may have changed while we slept */
		}
		a = area_from(l, cursor); /* budget() may have unmerged */
		if (!a)
			break;
		s = cursor > a->start ? cursor : a->start;
		if ((uint64_t)g < n)
			n = (uint32_t)g;
		if ((a->end - s) / SP_PAGE < n)
			n = (uint32_t)((a->end - s) / SP_PAGE);
		int err = chunk_scan(l, a, s, n, ps);
		if (err)
			return err;
		cursor = s + (uintptr_t)n * SP_PAGE;
		let_waiters_in(l);
	}
	return 0;
}

static int pass_locked(struct lib *l, struct pass *ps)
{
	uint32_t wait;
	int err;

	/* Also waits for D_HELLO, which may say our references died. */
	err = client_connect(l);
	if (err)
		return err;
	err = track_refresh(l);
	if (err)
		return err;
	/* The administrator may change vm.max_map_count at any time. */
	l->max_map_count = os_max_map_count();
	/* Merging paused at the VMA budget resumes once VMAs went (the
	 * application unmapped memory, merged VMAs were restored), with a
	 * margin: not to stop again at the first page. */
	if (l->st.limited && l->vmas.total + LIMIT_MARGIN <= l->max_map_count * 3 / 4)
		l->st.limited = 0;
	err = walk(l, ps);
	if (err)
		return err;
	/* Background work: only after a pass that merged nothing (pages the
	 * application keeps writing do not stop it). */
	if (!ps->merged) {
		err = defrag_pass(l, ps);
		if (!err)
			err = fill_pass(l, ps);
		if (err)
			return err;
	} else {
		/* New runs: gaps to fill perhaps, at the next quiet pass. */
		l->fill_after = 0;
		l->fill_backoff = 0;
	}
	l->st.volatile_pages = ps->volatile_pages;
	l->st.unshared = ps->unshared;
	/* A pass that found nothing present (every page zero-merged and
	 * dropped) asked no budget: it began in the generation we last heard
	 * of. Without it, such a process held full_scans still for good, and
	 * the kernel's ksm_tests -Z -z 1 waited for it forever. */
	if (!ps->have_gen) {
		ps->gen = l->gen;
		ps->have_gen = 1;
	}
	int64_t g = budget(l, 0, 1, ps, &wait);
	if (g < 0)
		return (int)g;
	/* Hints name pages with a reference already ours (another page
	 * matched them in the unstable index): the walk takes them after each
	 * budget, but a process whose areas all went (unmapped) walks nothing,
	 * and their references would stay with the daemon for good (run=2
	 * then never finished). Taken here, those of pages gone go back. */
	if (l->hints_waiting)
		return chunk_hints(l, ps);
	return 0;
}

/* SAMEPAGE_DEBUG=1: one line per pass on stderr. */
static void debug_pass(struct lib *l, const struct pass *ps, int err)
{
	sp_log("samepage[%d]: pass %llu err %d areas %u merged %llu changed %llu "
	       "volatile %llu unshared %llu skipped %llu merging %llu zero %llu moved %llu "
	       "pinned %llu\n",
	       (int)getpid(), (unsigned long long)l->pass_seq, err, l->nareas,
	       (unsigned long long)ps->merged, (unsigned long long)ps->changed,
	       (unsigned long long)ps->volatile_pages, (unsigned long long)ps->unshared,
	       (unsigned long long)ps->skipped,
	       (unsigned long long)l->st.merging, (unsigned long long)l->st.zero,
	       (unsigned long long)ps->moved, (unsigned long long)l->st.pinned);
}

int scan_pass(struct lib *l)
{
	struct pass ps = { 0 };
	int err;

	pthread_mutex_lock(&l->lock);
	err = pass_locked(l, &ps);
	if (!err && l->recount_pending) {
		track_recount(l);
		l->recount_pending = 0;
	}
	if (l->debug)
		debug_pass(l, &ps, err);
	l->pass_seq++;
	if (!err) {
		int quiet = !ps.merged && !ps.changed && !ps.moved;
		int base = (int)l->knobs.v[KNOB_SLEEP_MILLISECS];
		/* Quiet passes back off to 100 x sleep_millisecs, at most 2 s (the
		 * default 20 ms): sleep_millisecs=0 asks for scanning without
		 * pause, as ksmd does, and gets a look every 20 ms, so a rewrite
		 * is seen within tens of milliseconds, not seconds. */
		int max = base * 100 < IDLE_FLOOR_MS ? IDLE_FLOOR_MS :
			  base * 100 > IDLE_MAX_MS ? IDLE_MAX_MS : base * 100;
		l->idle_ms = !quiet ? 0 : l->idle_ms ? l->idle_ms * 2 : (base > 10 ? base : 10);
		if (l->idle_ms > max)
			l->idle_ms = max;
	}
	pthread_cond_broadcast(&l->wake);
	pthread_mutex_unlock(&l->lock);
	return err;
}

void *scan_thread(void *arg)
{
	struct lib *l = arg;
	sigset_t all;

	/* Named, so that top -H and perf tell our time from the application's. */
	syscall(SYS_prctl, PR_SET_NAME, "samepage-scan", 0, 0, 0); /* not our own wrapper */
	/* Below the application's own threads, as ksmd runs at nice 5: a busy
	 * application comes first (Redis served GETs at 59-76 % of the kernel
	 * case's rate while merging). Relative, so a nice 10 batch job's
	 * scanner runs at 15. Best effort: merging works at any priority. */
	os_thread_nicer(SCAN_NICE);
	/* Application signals go to application threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	if (l->first_pass_delay_ms) {
		pthread_mutex_lock(&l->lock);
		sleep_ms(l, (uint32_t)l->first_pass_delay_ms, 1);
		l->first_pass_delay_ms = 0;
		l->kick = 0;
		pthread_mutex_unlock(&l->lock);
	}
	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		int err = scan_pass(l);
		pthread_mutex_lock(&l->lock);
		/* A busy daemon (-EAGAIN) is asked again soon; none at all
		 * less often. */
		if (!l->kick)
			sleep_ms(l, err == -EAGAIN ? 200 : err ? 1000 : (uint32_t)l->idle_ms, 1);
		l->kick = 0;
		pthread_mutex_unlock(&l->lock);
	}
	return NULL;
}
