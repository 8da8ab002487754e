/* SPDX-License-Identifier: MIT */
/*
 * With merging stopped (run=0) the scanner waits for budget that never
 * comes; the application's own calls into samepage's wrappers (madvise,
 * munmap, mmap) must still return at once, however often the scanner is
 * kicked. A hang here once held the library's lock forever. When run=1
 * comes back, the memory merges.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 1024u

static int merged(void *arg)
{
	unsigned char **p = arg;
	pid_t me = getpid();
	pid_t pids[2] = { me, me };
	uintptr_t a[2] = { (uintptr_t)p[0], (uintptr_t)p[1] };

	return tu_frames(pids, a, 2, NPAGES) <= NPAGES + 4;
}

int main(void)
{
	unsigned char *p[2];
	double t0;

	tu_require_merging();
	tu_private_daemon();
	TU_CHECK(tu_cli("set run=0") == 0, "samepage set run=0");
	alarm(60); /* a hang fails the test instead of blocking the suite */
	for (int i = 0; i < 2; i++) {
		p[i] = tu_map(NPAGES * PAGE);
		tu_fill(p[i], NPAGES * PAGE, 5);
	}
	t0 = tu_now();
	TU_CHECK(madvise(p[0], NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise A");
	usleep(300 * 1000);
	TU_CHECK(madvise(p[1], NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise B");
	for (int i = 0; i < 20; i++) {
		void *q = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		TU_CHECK(q != MAP_FAILED, "mmap");
		TU_CHECK(madvise(q, 4 * PAGE, MADV_MERGEABLE) == 0, "madvise C");
		TU_CHECK(mmap(q, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == q,
			 "mmap MAP_FIXED");
		TU_CHECK(munmap(q, 4 * PAGE) == 0, "munmap");
	}
	TU_CHECK(tu_now() - t0 < 5, "wrappers took %.1f s with merging stopped", tu_now() - t0);
	sleep(1);
	TU_CHECK(!merged(p), "merged while run=0");
	TU_CHECK(tu_cli("set run=1") == 0, "samepage set run=1");
	TU_CHECK(tu_wait(merged, p, 30), "not merged within 30 s of run=1");
	return 0;
}
