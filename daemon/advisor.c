/* SPDX-License-Identifier: MIT */
/*
 * advisor — kernel KSM's scan-time advisor (mm/ksm.c, scan_time_advisor()),
 * for all the user's scanners at once.
 *
 * With advisor_mode=scan-time, pages_to_scan is the advisor's: at the end
 * of every full scan (a generation, budget.c) it is scaled so that the next
 * full scan takes advisor_target_scan_time seconds, with the kernel's
 * damping (an average of the last changes) and bounds: at most what would
 * use advisor_max_cpu percent of one CPU, at least what uses 10 percent,
 * at most advisor_max_pages_to_scan. Switching the advisor on starts
 * pages_to_scan at advisor_min_pages_to_scan; switching it off puts back
 * the default; pages_to_scan written meanwhile is refused (-EINVAL), as the
 * kernel's store refuses it.
 *
 * The CPU is every scanner thread's of the user, summed, and the daemon's
 * own: ksmd's work here is split between them, and a cap per thread would
 * let N processes use N times the cap (DESIGN.md, "The scan-time
 * advisor"). Each scanner reports its thread's CPU time with its budget
 * requests; the daemon adds the differences.
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <time.h>

/* The kernel's: the weight of the newest change in the average (percent),
 * and the least CPU the advisor aims at (percent of one CPU). */
#define EWMA_WEIGHT 30
#define ADVISOR_MIN_CPU 10

static uint64_t ewma(uint64_t prev, uint64_t cur)
{
	return ((100 - EWMA_WEIGHT) * prev + EWMA_WEIGHT * cur) / 100;
}

static uint64_t at_least_1(uint64_t v)
{
	return v ? v : 1;
}

/* The kernel's arithmetic, in milliseconds and nanoseconds where it has
 * whole seconds: a target of a second or two is then still meaningful. */
uint32_t advisor_next(const struct sp_knobs *k, uint64_t scan_ns, uint64_t cpu_ns,
		      uint64_t prev_scan_ms, uint64_t *change)
{
	uint64_t pts = k->v[KNOB_PAGES_TO_SCAN];
	uint64_t scan_ms = at_least_1(scan_ns / 1000000);
	uint64_t last_ms = prev_scan_ms ? prev_scan_ms : scan_ms;
	uint64_t target_ms = (uint64_t)k->v[KNOB_ADVISOR_TARGET_SCAN_TIME] * 1000;
	uint64_t cpu_pct = at_least_1(cpu_ns * 100 / at_least_1(scan_ns));
	/* The scan's length as a percentage of the target, and of the last
	 * scan's, averaged over the last scans so one odd scan does not
	 * swing pages_to_scan. */
	uint64_t factor = at_least_1(target_ms * 100 / scan_ms);
	uint64_t pages, per_pct;

	*change = ewma(*change, at_least_1(scan_ms * 100 / last_ms));
	pages = pts * 100 / factor * *change / 100;
	/* pages_to_scan the scanners get through per percent of a CPU. */
	per_pct = at_least_1(pts / cpu_pct);
	if (pages > per_pct * k->v[KNOB_ADVISOR_MAX_CPU])
		pages = per_pct * k->v[KNOB_ADVISOR_MAX_CPU];
	if (pages < per_pct * ADVISOR_MIN_CPU)
		pages = per_pct * ADVISOR_MIN_CPU;
	if (pages > k->v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN])
		pages = k->v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN];
	/* The kernel's may reach 0 (advisor_max_pages_to_scan=0), and ksmd
	 * then scans nothing for good; pages_to_scan's range here is 1 to 2^24. */
	if (pages < 1)
		pages = 1;
	if (pages > 1u << 24)
		pages = 1u << 24;
	return (uint32_t)pages;
}

static uint64_t daemon_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The kernel's set_advisor_defaults(): a fresh start (no past scans, no
 * average), from advisor_min_pages_to_scan; or the default pages_to_scan. */
static void advisor_switch(struct samepaged *d, uint32_t mode)
{
	struct sp_knobs def;
	struct advisor *a = &d->adv;

	samepaged_default_knobs(&def);
	d->knobs.v[KNOB_ADVISOR_MODE] = mode;
	/* A full scan under way began before the switch: not timed whole. */
	*a = (struct advisor){ .partial = a->partial || a->start_ns != 0 };
	d->knobs.v[KNOB_PAGES_TO_SCAN] = mode == ADVISOR_SCAN_TIME ?
		d->knobs.v[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] : def.v[KNOB_PAGES_TO_SCAN];
}

int knob_store(struct samepaged *d, int knob, uint32_t value)
{
	int err = sp_knob_check(knob, value);

	if (err)
		return err;
	if (knob == KNOB_PAGES_TO_SCAN && d->knobs.v[KNOB_ADVISOR_MODE] != ADVISOR_NONE)
		return -EINVAL;
	if (knob == KNOB_ADVISOR_MODE) {
		/* Writing the mode it is in changes nothing, as the kernel's. */
		if (d->knobs.v[knob] != value)
			advisor_switch(d, value);
		return 0;
	}
	d->knobs.v[knob] = value;
	return 0;
}

void advisor_account(struct samepaged *d, struct conn *c, const struct sp_budget *b)
{
	struct advisor *a = &d->adv;

	/* Scanner CPU since the connection's last report (a thread's CPU time
	 * only grows; its first report is where it starts counting). */
	if (c->cpu_seen && b->cpu_ns > c->cpu_ns)
		a->cpu_ns += b->cpu_ns - c->cpu_ns;
	c->cpu_ns = b->cpu_ns;
	c->cpu_seen = 1;
	if (d->knobs.v[KNOB_RUN] != 1) {
		a->partial = 1; /* a pause is no scanning time */
		return;
	}
	/* A full scan starts with the first chunk asked for in it: the
	 * scanners' rest after a quiet pass (up to 2 s) is no scanning time. */
	if (!a->start_ns && b->want) {
		a->start_ns = now_ns();
		a->daemon_cpu0 = daemon_cpu_ns();
	}
}

void advisor_scan_done(struct samepaged *d)
{
	struct advisor *a = &d->adv;
	uint64_t now = now_ns(), scan_ns, cpu_ns;
	uint32_t before = d->knobs.v[KNOB_PAGES_TO_SCAN], after;

	if (d->knobs.v[KNOB_ADVISOR_MODE] != ADVISOR_SCAN_TIME || a->partial || !a->start_ns)
		goto next;
	scan_ns = now - a->start_ns;
	cpu_ns = a->cpu_ns + (daemon_cpu_ns() - a->daemon_cpu0);
	after = advisor_next(&d->knobs, scan_ns, cpu_ns, a->scan_ms, &a->change);
	a->scan_ms = at_least_1(scan_ns / 1000000);
	d->knobs.v[KNOB_PAGES_TO_SCAN] = after;
	sp_logl(SP_LOG_DEBUG, "advisor: full scan %llu ms, CPU %llu %% of one: pages_to_scan "
		"%u -> %u", (unsigned long long)a->scan_ms,
		(unsigned long long)(cpu_ns * 100 / at_least_1(scan_ns)), before, after);
next:
	a->start_ns = 0;
	a->cpu_ns = 0;
	a->partial = 0;
}
