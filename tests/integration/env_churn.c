/* SPDX-License-Identifier: MIT */
/*
 * A program that rewrites its environment while samepage merges its memory
 * (env.h): bash does it for every assignment it exports, Redis's
 * setproctitle does clearenv() + setenv(). setenv() may move `environ` to a
 * new array and free the old one, so the library's scanner thread must
 * never walk the live environment: it dials and starts the daemon, and
 * checks its fault points, from the copy made before its threads started.
 *
 * One process holds two identical 16 MiB copies and merges them while its
 * main thread adds and removes hundreds of variables, without a pause,
 * until the copies share their frames, then for 2 s more. Under
 * AddressSanitizer a read of a freed environment is a use-after-free and
 * kills the process; under ThreadSanitizer it is a reported race. It must
 * merge (half the frames), keep every byte, and see the environment the
 * program wrote.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testutil.h"

#define NPAGES 4096u /* 16 MiB a copy */
#define LEN ((size_t)NPAGES * PAGE)
#define NVARS 300

/* Enough new names that the environment's array is reallocated, then
 * removed again. */
static void churn_once(unsigned round)
{
	char name[32], value[32];

	for (int i = 0; i < NVARS; i++) {
		snprintf(name, sizeof(name), "SP_CHURN_%d", i);
		snprintf(value, sizeof(value), "%u", round);
		TU_CHECK(setenv(name, value, 1) == 0, "setenv: %m");
	}
	snprintf(value, sizeof(value), "%u", round);
	TU_CHECK(!strcmp(getenv("SP_CHURN_7"), value), "the environment lost a write");
	for (int i = 0; i < NVARS; i++) {
		snprintf(name, sizeof(name), "SP_CHURN_%d", i);
		TU_CHECK(unsetenv(name) == 0, "unsetenv: %m");
	}
	TU_CHECK(!getenv("SP_CHURN_7"), "unsetenv did not remove a variable");
}

static size_t frames(unsigned char *p)
{
	pid_t me = getpid();
	uintptr_t a[2] = { (uintptr_t)p, (uintptr_t)p + LEN };
	pid_t pids[2] = { me, me };

	return tu_frames(pids, a, 2, NPAGES);
}

int main(void)
{
	unsigned char *p, *ref;
	unsigned round = 0;
	double t0, merged_at = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon(); /* not started: the first scanner pass starts it */
	alarm(120);
	p = tu_map(2 * LEN);
	ref = malloc(LEN);
	TU_CHECK(ref, "malloc");
	tu_fill(p, LEN, 11);
	memcpy(p + LEN, p, LEN);
	memcpy(ref, p, LEN);
	TU_CHECK(madvise(p, 2 * LEN, MADV_MERGEABLE) == 0, "madvise: %m");
	t0 = tu_now();
	while (tu_now() - t0 < 60) {
		churn_once(round++);
		if (!merged_at && frames(p) == NPAGES)
			merged_at = tu_now();
		if (merged_at && tu_now() - merged_at > 2)
			break;
	}
	TU_CHECK(merged_at, "not merged after 60 s of environment churn: %zu frames (want %u)",
		 frames(p), NPAGES);
	TU_CHECK(!memcmp(p, ref, LEN) && !memcmp(p + LEN, ref, LEN), "memory changed");
	TU_CHECK(frames(p) == NPAGES, "unmerged again: %zu frames", frames(p));
	printf("PASS: merged in %.2f s while the environment was rewritten %u times "
	       "(%d variables each); every byte kept\n", merged_at - t0, round, NVARS);
	return 0;
}
