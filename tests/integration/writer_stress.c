/* SPDX-License-Identifier: MIT */
/*
 * Invariant 1, "no lost write", under load.
 *
 * P holds 64 MiB: two identical 32 MiB halves; Q holds the same 64 MiB, so
 * nearly every page of P has partners to merge with. While samepage merges,
 * writer threads in P write random values to random words of random pages
 * (merged ones and ones about to be merged: the writers' window moves on to
 * pages that went quiet and merged), each into a set of pages it alone
 * owns, and keep an exact shadow copy. A rewriter thread keeps
 * putting whole pages back to the common content (taking the owner's lock,
 * shadow included), so pages keep merging again all through the run. The
 * test process watches P's pagemap and counts merges (a page turning into a
 * pool page, "file" bit set) and copy-on-write breaks (the other way) as
 * they happen. After at least 10 s of writing, every byte of P must equal
 * the shadow, and Q must still hold the common content.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define HALF 8192u            /* 32 MiB */
#define NPAGES (2 * HALF)     /* 64 MiB */
#define NW 2                  /* writer threads */
#define RUN_S 12.0
#define BATCH 48              /* writes per writer per millisecond */
#define REWRITE_PAGES 64      /* pages put back per 10 ms */
#define WINDOW_S 1.0          /* the writers' window moves by its size this often */
#define SEED 7

static unsigned char *mem, *shadow, *common; /* common: HALF pages */
static pthread_mutex_t owner_lock[NW];
static int stop; /* __atomic */
static uint64_t writes[NW], slow[NW], rewrites;

static void nap(long ns)
{
	struct timespec ts = { 0, ns };

	nanosleep(&ts, NULL);
}

static double t_start;

/* Writer k owns the pages whose index is k modulo NW. It writes into a
 * window of a quarter of them that moves on by its own size every
 * WINDOW_S seconds: pages ahead of it have been quiet long enough to be
 * merged (or to be in the middle of it) when the writes reach them, pages
 * behind it go quiet and merge again. */
static void *writer(void *arg)
{
	int k = (int)(intptr_t)arg;
	uint64_t s = 0x1234567ull * (k + 1), n = 0, nslow = 0;
	const size_t own = NPAGES / NW, win = own / 4;

	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		double t = tu_now();
		size_t base = (size_t)((t - t_start) / WINDOW_S * win) % own;
		pthread_mutex_lock(&owner_lock[k]);
		for (int i = 0; i < BATCH; i++) {
			uint64_t r = tu_xorshift(&s);
			size_t page = ((base + (size_t)(r % win)) % own) * NW + k;
			size_t word = (size_t)(r >> 32) % (PAGE / 8);
			uint64_t v = tu_xorshift(&s);
			((volatile uint64_t *)(mem + page * PAGE))[word] = v;
			((uint64_t *)(shadow + page * PAGE))[word] = v;
		}
		pthread_mutex_unlock(&owner_lock[k]);
		/* A batch this slow most likely waited on a frozen page. */
		nslow += tu_now() - t > 500e-6;
		n += BATCH;
		nap(1000000);
	}
	writes[k] = n;
	slow[k] = nslow;
	return NULL;
}

/* Put random pages back to the common content so they merge again. */
static void *rewriter(void *arg)
{
	uint64_t s = 0xabcdefull, n = 0;

	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		for (int i = 0; i < REWRITE_PAGES; i++) {
			size_t page = (size_t)(tu_xorshift(&s) % NPAGES);
			int k = (int)(page % NW);
			pthread_mutex_lock(&owner_lock[k]);
			memcpy(mem + page * PAGE, common + (page % HALF) * PAGE, PAGE);
			memcpy(shadow + page * PAGE, common + (page % HALF) * PAGE, PAGE);
			pthread_mutex_unlock(&owner_lock[k]);
		}
		n += REWRITE_PAGES;
		nap(10000000);
	}
	rewrites = n;
	return NULL;
}

struct result {
	uint64_t writes, slow, rewrites, bad_pages, first_bad, bad_words;
	int ok;
};

static unsigned char *map_common(void)
{
	unsigned char *p = tu_map((size_t)NPAGES * PAGE);

	tu_fill(p, (size_t)HALF * PAGE, SEED);
	memcpy(p + (size_t)HALF * PAGE, p, (size_t)HALF * PAGE);
	return p;
}

static int p_main(int rd, int wr, void *arg)
{
	pthread_t w[NW], rw;
	struct result res = { 0 };
	uintptr_t a;
	char cmd;

	(void)arg;
	mem = map_common();
	a = (uintptr_t)mem;
	common = malloc((size_t)HALF * PAGE);
	shadow = malloc((size_t)NPAGES * PAGE);
	TU_CHECK(common && shadow, "malloc");
	tu_fill(common, (size_t)HALF * PAGE, SEED);
	memcpy(shadow, mem, (size_t)NPAGES * PAGE);
	for (int k = 0; k < NW; k++)
		pthread_mutex_init(&owner_lock[k], NULL);
	TU_CHECK(madvise(mem, (size_t)NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1); /* start writing */
	t_start = tu_now();
	for (int k = 0; k < NW; k++)
		TU_CHECK(pthread_create(&w[k], NULL, writer, (void *)(intptr_t)k) == 0, "thread");
	TU_CHECK(pthread_create(&rw, NULL, rewriter, NULL) == 0, "thread");
	tu_recv(rd, &cmd, 1); /* stop */
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	for (int k = 0; k < NW; k++) {
		pthread_join(w[k], NULL);
		res.writes += writes[k];
		res.slow += slow[k];
	}
	pthread_join(rw, NULL);
	res.rewrites = rewrites;
	res.first_bad = UINT64_MAX;
	for (size_t pg = 0; pg < NPAGES; pg++) {
		const uint64_t *m = (const uint64_t *)(mem + pg * PAGE);
		const uint64_t *sh = (const uint64_t *)(shadow + pg * PAGE);
		if (!memcmp(m, sh, PAGE))
			continue;
		res.bad_pages++;
		if (res.first_bad == UINT64_MAX)
			res.first_bad = pg;
		for (unsigned w8 = 0; w8 < PAGE / 8; w8++)
			res.bad_words += m[w8] != sh[w8];
	}
	res.ok = 1;
	tu_send(wr, &res, sizeof(res));
	tu_recv(rd, &cmd, 1);
	return 0;
}

static int q_main(int rd, int wr, void *arg)
{
	unsigned char *p = map_common(), *ref = map_common();
	uintptr_t a = (uintptr_t)p;
	char cmd;
	int ok;

	(void)arg;
	TU_CHECK(madvise(p, (size_t)NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	ok = !memcmp(p, ref, (size_t)NPAGES * PAGE);
	tu_send(wr, &ok, sizeof(ok));
	tu_recv(rd, &cmd, 1);
	return 0;
}

/* P's pagemap "file" bits (pool page mapped), one byte per page. */
static void file_bits(int pmfd, uintptr_t a, uint8_t *out)
{
	static uint64_t e[NPAGES];

	TU_CHECK(pread(pmfd, e, sizeof(e), (off_t)(a / PAGE * 8)) == (ssize_t)sizeof(e),
		 "pread pagemap");
	for (size_t i = 0; i < NPAGES; i++)
		out[i] = ((e[i] >> 63) & 1) && ((e[i] >> 61) & 1);
}

int main(void)
{
	struct tu_child P, Q;
	uintptr_t pa, qa;
	static uint8_t prev[NPAGES], cur[NPAGES];
	uint64_t merges = 0, cows = 0, merges_per_s[64] = { 0 };
	struct result res;
	double t0, t;
	char path[64];
	int pmfd, qok, sec;
	size_t merged_now = 0, merged_max = 0;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(150);
	tu_spawn(&P, p_main, NULL);
	tu_spawn(&Q, q_main, NULL);
	TU_CHECK(tu_recv(P.rd, &pa, sizeof(pa)) == 0, "P died");
	TU_CHECK(tu_recv(Q.rd, &qa, sizeof(qa)) == 0, "Q died");
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)P.pid);
	pmfd = open(path, O_RDONLY | O_CLOEXEC);
	TU_CHECK(pmfd >= 0, "open %s", path);

	/* Writers start while the first merges are under way. */
	t0 = tu_now();
	do {
		file_bits(pmfd, pa, cur);
		merged_now = 0;
		for (size_t i = 0; i < NPAGES; i++)
			merged_now += cur[i];
		usleep(5000);
	} while (merged_now < NPAGES / 8 && tu_now() < t0 + 30);
	TU_CHECK(merged_now >= NPAGES / 8, "only %zu of %u pages merged after 30 s", merged_now,
		 NPAGES);
	printf("%zu pages of P merged %.2f s after MADV_MERGEABLE; writers start\n", merged_now,
	       tu_now() - t0);
	memcpy(prev, cur, sizeof(prev));
	tu_send(P.wr, "s", 1);
	t0 = tu_now();
	while ((t = tu_now()) < t0 + RUN_S) {
		usleep(50000);
		file_bits(pmfd, pa, cur);
		sec = (int)(t - t0);
		merged_now = 0;
		for (size_t i = 0; i < NPAGES; i++) {
			if (cur[i] && !prev[i]) {
				merges++;
				merges_per_s[sec]++;
			}
			cows += !cur[i] && prev[i];
			merged_now += cur[i];
		}
		if (merged_now > merged_max)
			merged_max = merged_now;
		memcpy(prev, cur, sizeof(prev));
	}
	tu_send(P.wr, "x", 1);
	TU_CHECK(tu_recv(P.rd, &res, sizeof(res)) == 0 && res.ok, "P died while writing");
	t = tu_now() - t0;
	printf("%.1f s of writing: %llu random writes (%llu batches of %d took over 0.5 ms: "
	       "waited on a frozen page or the rewriter), %llu pages put back to common content\n",
	       t, (unsigned long long)res.writes, (unsigned long long)res.slow, BATCH,
	       (unsigned long long)res.rewrites);
	printf("merges seen during the run: %llu (per second:", (unsigned long long)merges);
	for (int s = 0; s < (int)RUN_S; s++)
		printf(" %llu", (unsigned long long)merges_per_s[s]);
	printf("); copy-on-write breaks seen: %llu; pages merged at most at once: %zu of %u\n",
	       (unsigned long long)cows, merged_max, NPAGES);
	TU_CHECK(res.bad_pages == 0,
		 "LOST WRITES: %llu pages (%llu words) of P differ from the shadow copy, first page "
		 "%llu", (unsigned long long)res.bad_pages, (unsigned long long)res.bad_words,
		 (unsigned long long)res.first_bad);
	TU_CHECK(t >= 10.0, "wrote for %.1f s only", t);
	TU_CHECK(res.writes > 100000, "only %llu writes", (unsigned long long)res.writes);
	TU_CHECK(merges >= 1000, "only %llu merges during the run: nothing raced", (unsigned long long)merges);
	/* Merging went on through the run, not just at its start. */
	for (int third = 0; third < 3; third++) {
		uint64_t m = 0;
		for (int s = third * (int)RUN_S / 3; s < (third + 1) * (int)RUN_S / 3; s++)
			m += merges_per_s[s];
		TU_CHECK(m >= 20, "only %llu merges in part %d of 3 of the run",
			 (unsigned long long)m, third + 1);
	}
	TU_CHECK(cows >= 1000, "only %llu writes hit merged pages", (unsigned long long)cows);
	tu_send(Q.wr, "c", 1);
	TU_CHECK(tu_recv(Q.rd, &qok, sizeof(qok)) == 0 && qok, "Q's content changed");
	tu_send(P.wr, "q", 1);
	tu_send(Q.wr, "q", 1);
	TU_CHECK(tu_reap(&P) == 0, "P exit");
	TU_CHECK(tu_reap(&Q) == 0, "Q exit");
	printf("every byte of P equals its shadow; Q unchanged\n");
	return 0;
}
