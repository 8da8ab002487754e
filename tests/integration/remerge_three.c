/* SPDX-License-Identifier: MIT */
/*
 * Merging again in place with three sharers (DESIGN.md, "Merging again in
 * place", step 6): three processes hold one copy each of the same N pages,
 * merged onto one pool page per content. Round after round each process
 * rewrites every other page of its copy with the same new bytes: two at
 * once, the third GAP_MS later (each kicks its scanner with a madvise, so
 * the first two see their writes, and each other's, while the third still
 * reads the old pool pages). The first
 * rewriters wait for the last (defer_inplace()), then the new content goes
 * into the old pool pages for all three: no mmap, no VMA split.
 *
 * Asserted per round: the copies share their frames again (N frames for
 * 3 x N pages), no process's VMA count grew by more than a handful over
 * all rounds, the daemon counted most rewritten pages as merged in place,
 * and every byte of every copy is what its process wrote.
 *
 * It can fail: with defer_inplace() off (DEFER_MS 1) the first two
 * rewriters merge into a new pool page and the third follows them there:
 * "round 1: a process has 1023 VMAs more than after the first merge" (a
 * VMA split per rewritten page; the soak's ~285 per process).
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testutil.h"

#define N 1024u
#define NPROC 3
#define ROUNDS 3
#define GAP_MS 1500 /* between the first two writers and the last */
#define VMA_GROWTH 16

static void content(unsigned char *pg, int round, size_t i)
{
	tu_fill(pg, PAGE, (uint64_t)round << 32 | i);
}

static int sharer(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)N * PAGE), *shadow = malloc((size_t)N * PAGE);
	char cmd;
	int round = 0;

	(void)arg;
	TU_CHECK_RETURN(shadow, "malloc");
	for (size_t i = 0; i < N; i++)
		content(p + i * PAGE, 0, i);
	memcpy(shadow, p, (size_t)N * PAGE);
	TU_CHECK_RETURN(madvise(p, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &p, sizeof(p));
	while (tu_recv(rd, &cmd, 1) == 0) {
		int bad = 0;
		if (cmd == 'r') {
			round++;
			for (size_t i = (size_t)round % 2; i < N; i += 2) {
				content(shadow + i * PAGE, round, i);
				memcpy(p + i * PAGE, shadow + i * PAGE, PAGE);
			}
			/* Our scanner looks now, not after its idle sleep: the
			 * others write later, as in a fleet that is not in step. */
			TU_CHECK_RETURN(madvise(p, (size_t)N * PAGE, MADV_MERGEABLE) == 0,
					"madvise: %m");
		} else if (cmd == 'v') {
			for (size_t i = 0; i < N; i++)
				bad += memcmp(p + i * PAGE, shadow + i * PAGE, PAGE) != 0;
		} else {
			return 0;
		}
		tu_send(wr, &bad, sizeof(bad));
	}
	return 3;
}

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static uintptr_t addrs[NPROC];

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, NPROC, N) == N;
}

static void ask(int i, char cmd, int *bad)
{
	TU_CHECK(tu_send(c[i].wr, &cmd, 1) == 0 && tu_recv(c[i].rd, bad, sizeof(*bad)) == 0,
		 "process %d died", i);
}

int main(void)
{
	long v0[NPROC];
	int bad;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	alarm(150);
	for (int i = 0; i < NPROC; i++) {
		unsigned char *p;
		tu_spawn(&c[i], sharer, NULL);
		TU_CHECK(tu_recv(c[i].rd, &p, sizeof(p)) == 0, "process %d did not start", i);
		pids[i] = c[i].pid;
		addrs[i] = (uintptr_t)p;
	}
	TU_CHECK(tu_wait(merged, NULL, 30), "not merged: %zu frames for %d x %u pages",
		 tu_frames(pids, addrs, NPROC, N), NPROC, N);
	for (int i = 0; i < NPROC; i++)
		v0[i] = tu_vmas(pids[i]);
	long long inplace0 = tu_status("pages_inplace");
	for (int r = 1; r <= ROUNDS; r++) {
		double t0 = tu_now(), t;
		for (int i = 0; i < NPROC; i++) {
			ask(i, 'r', &bad);
			if (i == NPROC - 2)
				tu_sleep_ms(GAP_MS);
		}
		TU_CHECK(tu_wait(merged, NULL, 40), "round %d: not merged again in 40 s: %zu frames",
			 r, tu_frames(pids, addrs, NPROC, N));
		t = tu_now() - t0;
		long most = 0;
		for (int i = 0; i < NPROC; i++) {
			long grew = tu_vmas(pids[i]) - v0[i];
			most = grew > most ? grew : most;
			ask(i, 'v', &bad);
			TU_CHECK(bad == 0, "round %d: process %d has %d pages wrong", r, i, bad);
		}
		printf("round %d: %u pages rewritten by %d processes (the last %d ms after the "
		       "others), merged again %.2f s after the first write; VMAs grew by %ld at "
		       "most\n", r, N / 2, NPROC, GAP_MS, t, most);
		TU_CHECK(most <= VMA_GROWTH, "round %d: a process has %ld VMAs more than after the "
			 "first merge (in place, a handful at most)", r, most);
	}
	long long inplace = tu_status("pages_inplace") - inplace0;
	printf("pages_inplace: %lld of %u rewritten contents\n", inplace, ROUNDS * N / 2);
	TU_CHECK(inplace >= ROUNDS * N / 2 * 9 / 10, "pages_inplace %lld: merged again by mapping, "
		 "not in place", inplace);
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "process %d exit", i);
	}
	printf("PASS\n");
	return 0;
}
