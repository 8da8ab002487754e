/* SPDX-License-Identifier: MIT */
/*
 * One daemon, the same workload three times (issue: "Merged memory that
 * keeps changing, on a daemon that runs for weeks"): a daemon that has
 * served a workload serves the next one as it served the first.
 *
 * Each generation: A and B hold the same N pages at the same offsets and
 * merge them; both then rewrite every third page (scattered) and a block
 * of BLOCK pages (contiguous) with the same new content, and merge again;
 * A forks a child that checks what it inherited; then A exits and B is
 * SIGKILLed. Before the change that brought pool extents, the pool handed
 * the second generation the first one's freed pages one at a time, in the
 * order they were freed: scattered ids, a VMA per page, the budget reached
 * at about 80 % merged.
 *
 * Asserted for every generation: full merge and full re-merge (frames back
 * to N), A's and B's VMAs at most a handful above what they had before
 * merging, no merge refused at the VMA budget, every byte as written
 * (checked in A, B and the fork child), and the pool empty once the
 * generation has gone. The times are printed, not asserted (bench/soak
 * measures them); a generation that stalls fails on the 30 s limit.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define N 8192u       /* 32 MiB each */
#define BLOCK 512u    /* contiguous rewrite */
#define GENERATIONS 3
#define VMA_SLACK 16  /* what merging may add to a process */
#define MERGE_S 30

/* Version of page i after rewrite round r (0: as first written). */
static uint64_t version(size_t i, int r)
{
	if (r >= 1 && i % 3 == 0)
		return 1;
	if (r >= 1 && i >= N / 2 && i < N / 2 + BLOCK)
		return 2;
	return 0;
}

static void fill(unsigned char *p, size_t i, uint64_t v)
{
	tu_fill(p, PAGE, (v << 32) | i);
}

/* Pages of p[0..N) that differ from round r's content. */
static size_t wrong(const unsigned char *p, int r)
{
	static unsigned char want[PAGE];
	size_t bad = 0;

	for (size_t i = 0; i < N; i++) {
		fill(want, i, version(i, r));
		bad += memcmp(p + i * PAGE, want, PAGE) != 0;
	}
	return bad;
}

struct reply {
	uintptr_t addr;
	size_t bad;
};

/* Commands: 'w' rewrite (round 1), 'v' verify, 'f' fork a child that
 * verifies what it inherited, 'q' quit. */
static int holder(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)N * PAGE);
	struct reply r = { .addr = (uintptr_t)p };
	int round = 0;
	char cmd;

	(void)arg;
	for (size_t i = 0; i < N; i++)
		fill(p + i * PAGE, i, 0);
	TU_CHECK_RETURN(madvise(p, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &r, sizeof(r));
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == 'q')
			return 0;
		if (cmd == 'w') {
			round = 1;
			for (size_t i = 0; i < N; i++)
				if (version(i, 1))
					fill(p + i * PAGE, i, version(i, 1));
		} else if (cmd == 'f') {
			pid_t kid = fork();
			int st;
			if (kid == 0)
				_exit(wrong(p, round) != 0);
			r.bad = kid < 0 || waitpid(kid, &st, 0) != kid || !WIFEXITED(st) ||
				WEXITSTATUS(st) != 0;
			tu_send(wr, &r, sizeof(r));
			continue;
		}
		r.bad = wrong(p, round);
		tu_send(wr, &r, sizeof(r));
	}
	return 3;
}

static struct tu_child A, B;
static uintptr_t addr[2];

static size_t ask(struct tu_child *c, char cmd, const char *who)
{
	struct reply r;

	TU_CHECK(tu_send(c->wr, &cmd, 1) == 0 && tu_recv(c->rd, &r, sizeof(r)) == 0,
		 "%s died", who);
	return r.bad;
}

static size_t frames(void)
{
	pid_t pids[2] = { A.pid, B.pid };

	return tu_frames(pids, addr, 2, N);
}

/* Seconds until A and B share every frame again; fails after MERGE_S. */
static double merged(int gen, const char *what)
{
	double t0 = tu_now();
	size_t f;

	while ((f = frames()) > N && tu_now() < t0 + MERGE_S)
		tu_sleep_ms(20);
	TU_CHECK(f <= N, "generation %d: %s stopped at %zu frames for %u pages x 2 "
		 "(vma_limited %lld, merge_vmas %lld)", gen, what, f, N,
		 tu_status("vma_limited"), tu_status("merge_vmas"));
	return tu_now() - t0;
}

static void check_vmas(int gen, const char *when, long base_a, long base_b)
{
	long va = tu_vmas(A.pid), vb = tu_vmas(B.pid);

	TU_CHECK(va <= base_a + VMA_SLACK && vb <= base_b + VMA_SLACK,
		 "generation %d, %s: VMAs A %ld (was %ld), B %ld (was %ld)", gen, when, va,
		 base_a, vb, base_b);
}

static void generation(int gen)
{
	long base_a, base_b;
	struct reply r;
	double t1, t2;

	tu_spawn(&A, holder, NULL);
	tu_spawn(&B, holder, NULL);
	TU_CHECK(tu_recv(A.rd, &r, sizeof(r)) == 0, "A did not start");
	addr[0] = r.addr;
	TU_CHECK(tu_recv(B.rd, &r, sizeof(r)) == 0, "B did not start");
	addr[1] = r.addr;
	base_a = tu_vmas(A.pid);
	base_b = tu_vmas(B.pid);

	t1 = merged(gen, "merging");
	check_vmas(gen, "merged", base_a, base_b);
	TU_CHECK(ask(&A, 'w', "A") == 0 && ask(&B, 'w', "B") == 0,
		 "generation %d: memory wrong after the rewrite", gen);
	t2 = merged(gen, "merging again");
	check_vmas(gen, "merged again", base_a, base_b);
	TU_CHECK(ask(&A, 'v', "A") == 0 && ask(&B, 'v', "B") == 0,
		 "generation %d: memory wrong after merging again", gen);
	TU_CHECK(ask(&A, 'f', "A") == 0, "generation %d: the fork child read wrong bytes", gen);
	printf("generation %d: merged in %.2f s, again in %.2f s; VMAs A %ld -> %ld, "
	       "B %ld -> %ld; pool %lld pages\n", gen, t1, t2, base_a, tu_vmas(A.pid), base_b,
	       tu_vmas(B.pid), tu_status("pool_pages"));

	tu_send(A.wr, "q", 1);
	TU_CHECK(tu_reap(&A) == 0, "A exited badly");
	kill(B.pid, SIGKILL);
	TU_CHECK(tu_reap(&B) == 128 + SIGKILL, "B was not killed");
	double t0 = tu_now();
	while (tu_status("pool_pages") != 0 && tu_now() < t0 + 10)
		tu_sleep_ms(50);
	TU_CHECK(tu_status("pool_pages") == 0, "generation %d gone, the pool still holds %lld "
		 "pages", gen, tu_status("pool_pages"));
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	for (int gen = 1; gen <= GENERATIONS; gen++)
		generation(gen);
	TU_CHECK(tu_status("vma_limited") == 0, "merges refused at the VMA budget: %lld",
		 tu_status("vma_limited"));
	printf("%d generations on one daemon: each merged fully, VMAs within %d, pool empty "
	       "after each\n", GENERATIONS, VMA_SLACK);
	return 0;
}
