/* SPDX-License-Identifier: MIT */
/*
 * knobs — the daemon's knobs as it starts: the kernel's defaults where
 * kernel KSM has one, samepage's own where it scans differently. The
 * configuration file (config.c) and `samepage set` change them later.
 */
#include "daemon.h"

void samepaged_default_knobs(struct sp_knobs *k)
{
	k->v[KNOB_RUN] = 1;
	k->v[KNOB_PAGES_TO_SCAN] = 16384;
	k->v[KNOB_SLEEP_MILLISECS] = 20;
	k->v[KNOB_USE_ZERO_PAGES] = 1;
	k->v[KNOB_MAX_PAGE_SHARING] = 256;
	k->v[KNOB_SMART_SCAN] = 1; /* the kernel's default */
	/* The kernel's defaults: the advisor off, and its bounds. */
	k->v[KNOB_ADVISOR_MODE] = ADVISOR_NONE;
	k->v[KNOB_ADVISOR_MAX_CPU] = 70;
	k->v[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] = 500;
	k->v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] = 30000;
	k->v[KNOB_ADVISOR_TARGET_SCAN_TIME] = 200;
}
