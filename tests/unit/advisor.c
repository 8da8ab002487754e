/* SPDX-License-Identifier: MIT */
/*
 * Unit test of daemon/advisor.c, the scan-time advisor. Proves:
 *  - advisor_next() is the kernel's scan_time_advisor() arithmetic (worked
 *    by hand below): pages_to_scan scaled by scan time / target time and by
 *    the running average of the change (which starts at 0, so the first
 *    scans move little), then bounded by advisor_max_cpu (from the CPU per
 *    page the scan measured), at least 10 % of a CPU (which wins over a
 *    lower advisor_max_cpu), at most advisor_max_pages_to_scan, and by
 *    samepage's own range 1 .. 2^24;
 *  - the accounting: CPU is summed over every connection's reports (each
 *    connection's first report is its baseline), a full scan is timed from
 *    the first chunk asked for in it, and pages_to_scan changes at its end;
 *    a scan begun before the advisor was switched on, or across run=0, is
 *    not used; with the advisor off nothing changes;
 *  - knob_store(): the kernel's stores (as in daemon_proto over the wire).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "../lib/testutil.h"
#include "daemon.h"

static struct sp_knobs knobs(uint32_t pts, uint32_t target_s, uint32_t max_cpu,
			     uint32_t max_pages)
{
	struct sp_knobs k;

	samepaged_default_knobs(&k);
	k.v[KNOB_ADVISOR_MODE] = ADVISOR_SCAN_TIME;
	k.v[KNOB_PAGES_TO_SCAN] = pts;
	k.v[KNOB_ADVISOR_TARGET_SCAN_TIME] = target_s;
	k.v[KNOB_ADVISOR_MAX_CPU] = max_cpu;
	k.v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] = max_pages;
	return k;
}

#define MS 1000000ull
#define S 1000000000ull

static void test_next(void)
{
	struct sp_knobs k = knobs(500, 1, 70, 30000);
	uint64_t change = 0;
	uint32_t p;

	/* First scan, 3 s against 1 s, 10 % CPU: change = 0.3 x 100 = 30;
	 * 500 x 100 / 33 = 1515, x 30 % = 454; 10 % of a CPU is 500 / 10 x 10
	 * = 500 pages: 500. */
	p = advisor_next(&k, 3 * S, 300 * MS, 0, &change);
	TU_CHECK(p == 500 && change == 30, "first scan: %u (change %llu), want 500 (30)", p,
		 (unsigned long long)change);
	/* Settled (change 100): 1515, inside 500 .. 3500. */
	change = 100;
	p = advisor_next(&k, 3 * S, 300 * MS, 3000, &change);
	TU_CHECK(p == 1515 && change == 100, "settled: %u, want 1515", p);
	/* A scan twice as long as the last: change 70 + 60 = 130. */
	change = 100;
	p = advisor_next(&k, 6 * S, 600 * MS, 3000, &change);
	TU_CHECK(change == 130, "change after a doubled scan: %llu, want 130",
		 (unsigned long long)change);

	/* CPU cap: 10000 pages at 50 % over 10 s, target 1 s: 100000 wanted,
	 * 200 pages per percent x 70 = 14000. */
	k = knobs(10000, 1, 70, 30000);
	change = 100;
	p = advisor_next(&k, 10 * S, 5 * S, 10000, &change);
	TU_CHECK(p == 14000, "CPU cap: %u, want 14000", p);
	/* No CPU cap to speak of: advisor_max_pages_to_scan. */
	k = knobs(10000, 1, 1000, 30000);
	change = 100;
	p = advisor_next(&k, 10 * S, 5 * S, 10000, &change);
	TU_CHECK(p == 30000, "max pages: %u, want 30000", p);
	/* advisor_max_cpu below 10: the 10 % floor wins, as in the kernel. */
	k = knobs(10000, 1, 5, 30000);
	change = 100;
	p = advisor_next(&k, 10 * S, 5 * S, 10000, &change);
	TU_CHECK(p == 2000, "max_cpu 5: %u, want 2000 (10 %%)", p);
	/* Far faster than the target: down to 10 % of a CPU, not to 0. */
	k = knobs(10000, 200, 70, 30000);
	change = 100;
	p = advisor_next(&k, 100 * MS, 50 * MS, 100, &change);
	TU_CHECK(p == 2000, "fast scan: %u, want 2000", p);
	/* Tiny numbers stay inside samepage's range. */
	k = knobs(1, 200, 0, 1);
	change = 0;
	p = advisor_next(&k, 1, 0, 0, &change);
	TU_CHECK(p == 1, "tiny: %u, want 1", p);
	k = knobs(1u << 24, 1, UINT32_MAX, 1u << 24);
	change = 100000;
	p = advisor_next(&k, 100 * S, 1, 1, &change);
	TU_CHECK(p == 1u << 24, "huge: %u, want 2^24", p);
}

static struct sp_budget req(uint32_t want, uint64_t cpu_ns)
{
	return (struct sp_budget){ .want = want, .cpu_ns = cpu_ns };
}

static void test_account(void)
{
	static struct samepaged d;
	struct conn a = { 0 }, b = { 0 }, z = { 0 };
	struct sp_budget r;

	samepaged_default_knobs(&d.knobs);
	/* Off: a scan's end changes nothing. */
	r = req(512, 1 * S);
	advisor_account(&d, &z, &r);
	advisor_scan_done(&d);
	TU_CHECK(d.knobs.v[KNOB_PAGES_TO_SCAN] == 16384, "advisor off changed pages_to_scan");

	d.knobs.v[KNOB_ADVISOR_TARGET_SCAN_TIME] = 1;
	TU_CHECK(knob_store(&d, KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME) == 0, "switch on");
	TU_CHECK(d.knobs.v[KNOB_PAGES_TO_SCAN] == 500, "on: pages_to_scan %u",
		 d.knobs.v[KNOB_PAGES_TO_SCAN]);
	/* Two scanners: 0.2 s and 0.1 s of CPU since their last reports (a
	 * reports before its baseline: that is not counted). */
	r = req(512, 5 * S);
	advisor_account(&d, &a, &r);
	TU_CHECK(d.adv.start_ns != 0, "the first chunk did not start the scan");
	r = req(512, 2 * S);
	advisor_account(&d, &b, &r);
	r = req(0, 5 * S + 200 * MS);
	advisor_account(&d, &a, &r);
	r = req(0, 2 * S + 100 * MS);
	advisor_account(&d, &b, &r);
	TU_CHECK(d.adv.cpu_ns == 300 * MS, "CPU summed %llu ns, want 0.3 s",
		 (unsigned long long)d.adv.cpu_ns);
	/* Pretend it took 3 s: 10 % of a CPU, the first scan's numbers above. */
	d.adv.start_ns = now_ns() - 3 * S;
	d.adv.daemon_cpu0 = 0; /* whatever the daemon used: it counts too */
	advisor_scan_done(&d);
	TU_CHECK(d.knobs.v[KNOB_PAGES_TO_SCAN] >= 500 && d.knobs.v[KNOB_PAGES_TO_SCAN] < 16384,
		 "after a 3 s scan: pages_to_scan %u", d.knobs.v[KNOB_PAGES_TO_SCAN]);
	TU_CHECK(d.adv.start_ns == 0 && d.adv.cpu_ns == 0 && d.adv.scan_ms >= 3000,
		 "the next scan does not start afresh");

	/* Switched on again mid-scan (none, then scan-time): that scan is
	 * partial, and leaves pages_to_scan alone. */
	r = req(512, 6 * S);
	advisor_account(&d, &a, &r);
	TU_CHECK(knob_store(&d, KNOB_ADVISOR_MODE, ADVISOR_NONE) == 0 &&
		 knob_store(&d, KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME) == 0, "switch off and on");
	d.knobs.v[KNOB_PAGES_TO_SCAN] = 4321;
	advisor_account(&d, &a, &r);
	d.adv.start_ns = now_ns() - 30 * S;
	advisor_scan_done(&d);
	TU_CHECK(d.knobs.v[KNOB_PAGES_TO_SCAN] == 4321, "a partial scan moved pages_to_scan to %u",
		 d.knobs.v[KNOB_PAGES_TO_SCAN]);
	/* A pause (run=0) inside a scan: not used either. */
	advisor_account(&d, &a, &r);
	d.knobs.v[KNOB_RUN] = 0;
	advisor_account(&d, &a, &r);
	d.knobs.v[KNOB_RUN] = 1;
	d.adv.start_ns = now_ns() - 30 * S;
	advisor_scan_done(&d);
	TU_CHECK(d.knobs.v[KNOB_PAGES_TO_SCAN] == 4321, "a paused scan moved pages_to_scan to %u",
		 d.knobs.v[KNOB_PAGES_TO_SCAN]);
}

static void test_store(void)
{
	static struct samepaged d;

	samepaged_default_knobs(&d.knobs);
	TU_CHECK(knob_store(&d, KNOB_PAGES_TO_SCAN, 100) == 0 &&
		 d.knobs.v[KNOB_PAGES_TO_SCAN] == 100, "pages_to_scan with the advisor off");
	TU_CHECK(knob_store(&d, KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 0) == -EINVAL &&
		 knob_store(&d, KNOB_ADVISOR_MODE, 2) == -EINVAL &&
		 knob_store(&d, KNOB_COUNT, 1) == -EINVAL && knob_store(&d, -1, 1) == -EINVAL,
		 "out of range taken");
	TU_CHECK(knob_store(&d, KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 2000) == 0 &&
		 knob_store(&d, KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME) == 0 &&
		 d.knobs.v[KNOB_PAGES_TO_SCAN] == 2000, "on: starts at advisor_min_pages_to_scan");
	TU_CHECK(knob_store(&d, KNOB_PAGES_TO_SCAN, 100) == -EINVAL &&
		 d.knobs.v[KNOB_PAGES_TO_SCAN] == 2000, "pages_to_scan taken with the advisor on");
	TU_CHECK(knob_store(&d, KNOB_ADVISOR_MODE, ADVISOR_NONE) == 0 &&
		 d.knobs.v[KNOB_PAGES_TO_SCAN] == 16384, "off: the default pages_to_scan");
}

int main(void)
{
	test_next();
	test_account();
	test_store();
	printf("advisor: ok\n");
	return 0;
}
