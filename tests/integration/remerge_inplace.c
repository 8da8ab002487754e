/* SPDX-License-Identifier: MIT */
/*
 * Merging again in place: merged memory that keeps being rewritten costs no
 * VMAs (issue: "Merged memory that keeps changing").
 *
 * A process P holds two identical copies of N pages, merged (one pool
 * page per page, both copies mapping it). Then, round after round, every
 * other page of both copies is rewritten with the same new content, and
 * the test waits until the copies share their frames again. Each rewritten
 * page's pool page is then read by nobody, so the new content goes there
 * and P drops its private copies (MADV_DONTNEED shows the pool page again):
 * no mmap, no VMA split. Kernel KSM needs no VMA either; before this, each
 * round cost a VMA per rewritten page (32,768 for 2 x 64 MiB).
 *
 * Meanwhile a writer thread in P keeps writing random words into random
 * pages of a third, unmerged-then-merged region, and every byte of all
 * three is compared with shadow copies in MAP_SHARED memory (never merged)
 * at the end of each round. Asserted: each round merges again (frames back
 * to N + slack), P's VMA count grows by a handful at most over all rounds,
 * and not one byte differs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "region.h"
#include "samepage.h"
#include "testutil.h"

#define N 4096u        /* 16 MiB per copy */
#define ROUNDS 6
#define VMA_GROWTH 16  /* what all rounds together may add */

struct shared {
	uintptr_t a, b;       /* the two copies in P */
	int round;            /* rewritten up to this round */
	uint64_t bad;         /* pages wrong at the last check */
};

static int count_vmas(pid_t pid)
{
	char path[64], line[512];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n++;
	fclose(f);
	return n;
}

/* P: two copies and their shadows; rewrite on request, check on request. */
static int p_main(int rd, int wr, void *arg)
{
	struct shared *sh = arg;
	unsigned char *a = tu_map((size_t)N * PAGE), *b = tu_map((size_t)N * PAGE);
	unsigned char *shadow = mmap(NULL, (size_t)N * PAGE, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct tu_region w;
	char cmd;

	TU_CHECK(shadow != MAP_FAILED, "mmap");
	tu_fill(a, (size_t)N * PAGE, 1);
	memcpy(b, a, (size_t)N * PAGE);
	memcpy(shadow, a, (size_t)N * PAGE);
	TU_CHECK(madvise(a, (size_t)N * PAGE, MADV_MERGEABLE) == 0 &&
		 madvise(b, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise");
	/* A region under constant writes beside them (its own shadow). */
	tu_region_init(&w, 1024, 99);
	TU_CHECK(madvise(w.mem, 1024 * PAGE, MADV_MERGEABLE) == 0, "madvise w");
	tu_region_write(&w, 2, 400);
	sh->a = (uintptr_t)a;
	sh->b = (uintptr_t)b;
	tu_send(wr, &cmd, 1);
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == 'r') { /* rewrite every other page of both copies, alike */
			sh->round++;
			for (size_t pg = (size_t)sh->round % 2; pg < N; pg += 2) {
				/* Never the content of another page of another round. */
				uint64_t seed = (uint64_t)sh->round << 32 | pg;
				tu_fill(shadow + pg * PAGE, PAGE, seed);
				memcpy(a + pg * PAGE, shadow + pg * PAGE, PAGE);
				memcpy(b + pg * PAGE, shadow + pg * PAGE, PAGE);
			}
		} else if (cmd == 'v') {
			uint64_t bad = 0;
			for (size_t pg = 0; pg < N; pg++)
				bad += memcmp(a + pg * PAGE, shadow + pg * PAGE, PAGE) != 0 ||
				       memcmp(b + pg * PAGE, shadow + pg * PAGE, PAGE) != 0;
			bad += tu_region_check(&w, NULL);
			sh->bad = bad;
		} else if (cmd == 'q') {
			tu_region_stop(&w);
			return 0;
		}
		tu_send(wr, &cmd, 1);
	}
	return 3;
}

static struct shared *sh;
static pid_t p_pid;

static size_t frames(void)
{
	pid_t pids[2] = { p_pid, p_pid };
	uintptr_t addrs[2] = { sh->a, sh->b };

	return tu_frames(pids, addrs, 2, N);
}

static int merged(void *arg)
{
	(void)arg;
	return frames() <= N + N / 64;
}

int main(void)
{
	struct tu_child p;
	char c;
	int v0, v;

	tu_require_merging();
	tu_private_daemon();
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(sh != MAP_FAILED, "mmap");
	tu_spawn(&p, p_main, sh);
	p_pid = p.pid;
	TU_CHECK(tu_recv(p.rd, &c, 1) == 0, "P start");
	TU_CHECK(tu_wait(merged, NULL, 30), "the two copies did not merge: %zu frames", frames());
	v0 = count_vmas(p_pid);
	printf("merged: %zu frames for 2 x %u pages, %d VMAs in P\n", frames(), N, v0);
	for (int r = 1; r <= ROUNDS; r++) {
		double t;
		c = 'r';
		TU_CHECK(tu_send(p.wr, &c, 1) == 0 && tu_recv(p.rd, &c, 1) == 0, "rewrite");
		t = tu_now();
		if (!tu_wait(merged, NULL, 30)) {
			TU_FAIL("round %d: not merged again after 30 s: %zu frames", r, frames());
		}
		t = tu_now() - t;
		v = count_vmas(p_pid);
		c = 'v';
		TU_CHECK(tu_send(p.wr, &c, 1) == 0 && tu_recv(p.rd, &c, 1) == 0, "check");
		printf("round %d: %u pages rewritten in both copies, merged again in %.2f s, "
		       "%d VMAs (%+d), %llu pages wrong\n", r, N / 2, t, v, v - v0,
		       (unsigned long long)sh->bad);
		TU_CHECK(sh->bad == 0, "round %d: %llu pages differ from the shadow", r,
			 (unsigned long long)sh->bad);
		TU_CHECK(v - v0 <= VMA_GROWTH, "round %d: P has %d VMAs more than after the first "
			 "merge (in place, it should have a handful at most)", r, v - v0);
	}
	/* The daemon says so too: most rewritten pages went back in place. */
	long long inplace = tu_status("pages_inplace");
	printf("pages_inplace: %lld of %u rewritten\n", inplace, ROUNDS * N / 2);
	TU_CHECK(inplace >= ROUNDS * N / 2 * 9 / 10, "pages_inplace %lld: merged again by mapping, "
		 "not in place", inplace);
	c = 'q';
	tu_send(p.wr, &c, 1);
	TU_CHECK(tu_reap(&p) == 0, "P exit");
	return 0;
}
