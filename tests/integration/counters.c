/* SPDX-License-Identifier: MIT */
/*
 * Every counter against page frames.
 *
 * Kernel KSM's meanings (Documentation/admin-guide/mm/ksm.rst):
 * pages_shared is how many shared pages are in use, pages_sharing how many
 * more sites share them (the saving), pages_unshared how many pages are
 * unique but repeatedly checked for merging, /proc/PID/ksm_merging_pages
 * how many of a process's pages are merged. A merged page is a pool page,
 * which pagemap shows as a file page, and /proc/PID/maps tells which pool
 * page (segment inode, offset) a pool VMA puts at each address, so the
 * truth is read from the processes' page tables:
 *
 *   pages_shared       distinct frames of pool pages that some process maps
 *   pages_sharing      the sum over those frames of (mappers - 1)
 *   ksm_merging_pages  the process's pages that map a pool page
 *   pool_written       pool pages still referenced (a pool VMA covers the
 *                      address) that nobody reads: every mapper wrote its
 *                      own copy there (checked where `samepage status`
 *                      prints it; pool_pages below covers it either way)
 *   pool_pages         pages_shared + pool_written: nothing else holds one
 *   processes          the processes running
 *   pages_unshared     above 0 while unique pages wait, never more than
 *                      the pages of live processes that map no pool page
 *                      (only those can be in the unstable index)
 *
 * Each step changes the memory, has the processes run scan passes
 * (samepage_scan_now(), so the daemon has been told), waits until the
 * counters and the frames have stayed the same for a second (at most
 * 30 s), then checks every counter but pages_unshared exactly, with no
 * tolerance: nothing is in flight once all is quiet, and the step's
 * frames are checked exactly against what it meant to make too.
 * pages_unshared cannot be exact: the unstable index is emptied whenever a
 * generation ends, and refills as each process's next pass offers its
 * pages, so it is checked for bounds, and sampled right after a pass.
 * A and B hold N pages each:
 *
 *  1. the same content in both: merged, N frames, pages_shared N,
 *     pages_sharing N, pool_pages N, pool_written 0, ksm_merging_pages N
 *     each, pages_unshared 0;
 *  2. both write every other page, each with content of its own: N/2 frames
 *     still shared by both, so pages_shared N/2 and pages_sharing N/2 (the
 *     old counters read 4096 and 0 here), ksm_merging_pages N/2 each; the
 *     N/2 pool pages whose mappers all wrote them are still referenced
 *     from inside the pool VMAs (a VMA goes back to anonymous memory only
 *     once all of it is written): pool_written N/2, pool_pages N;
 *  3. both write the original content back: the written pages merge again,
 *     into the very frames they were copies of, which those references
 *     kept: pages_sharing N, pool_written 0, pool_pages N (no new pool
 *     page); then nothing of theirs is left in the unstable index:
 *     pages_unshared reaches 0;
 *  4. C joins with N pages, the first half equal to A's and B's, the second
 *     unique: N/2 frames with 3 mappers and N/2 with 2 (pages_shared N,
 *     pages_sharing 3N/2), ksm_merging_pages N/2 for C; pages_unshared
 *     in (0, N/2] while C's unique half waits in the unstable index, 0
 *     within 5 s of C's exit, and the rest back to step 3's values;
 *  5. A and B write pages of their own again (step 2's values again), and
 *     exit right after a pass put one's unique pages in the unstable
 *     index: pages_shared, pages_sharing, pages_unshared, pool_pages and
 *     pool_written all reach 0 within 5 s (the old daemon showed the last
 *     process's unstable entries for good).
 *
 * Counter mismatches are reported and the test goes on to the end (so one
 * run shows every counter that is wrong), then fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define N 4096u
#define LEN ((size_t)N * PAGE)
#define SEED_X 1  /* A's and B's content, C's first half */
#define SEED_W 2  /* + process: step 2's private rewrite */
#define SEED_U 9  /* C's unique half */
#define SEED_W5 5 /* + process: step 5's private rewrite */
#define AB (1u << A | 1u << B)

enum { A, B, C, NPROC };
static const char *const name[NPROC] = { "A", "B", "C" };

/* Page i of seed: every (seed, page) pair has content of its own. */
static void fill_page(unsigned char *p, uint32_t i, uint64_t seed)
{
	tu_fill(p + (size_t)i * PAGE, PAGE, seed << 24 | i);
}

/* ---- the processes ---- */

struct cmd {
	char op;              /* 'f' fill, 'm' madvise, 's' scan passes, 'q' quit */
	uint32_t from, step, count;
	uint64_t seed;
};
struct reply {
	int64_t err;
	uintptr_t addr;
};

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN);
	struct reply r = { .addr = (uintptr_t)p };
	struct cmd c;

	(void)arg;
	tu_send(wr, &r, sizeof(r));
	while (tu_recv(rd, &c, sizeof(c)) == 0) {
		r.err = 0;
		switch (c.op) {
		case 'f':
			for (uint32_t k = 0; k < c.count; k++)
				fill_page(p, c.from + k * c.step, c.seed);
			break;
		case 'm':
			/* The kernel's interface, served by samepage. */
			if (madvise(p, LEN, MADV_MERGEABLE))
				r.err = -errno;
			break;
		case 's':
			for (uint32_t k = 0; k < c.count && !r.err; k++)
				r.err = samepage_scan_now();
			break;
		case 'q':
			return 0;
		}
		tu_send(wr, &r, sizeof(r));
	}
	return 1;
}

static struct {
	struct tu_child c;
	uintptr_t addr;
	int live;
} pr[NPROC];

/* Send cmd to each process of mask, then wait for every answer (they work
 * at the same time). Each process's seed is seed + i when own: content of
 * its own, which nothing else holds. */
static void ask(unsigned mask, char op, uint32_t from, uint32_t step, uint32_t count,
		uint64_t seed, int own)
{
	for (int i = 0; i < NPROC; i++) {
		struct cmd c;
		memset(&c, 0, sizeof(c)); /* no stray padding bytes down the pipe */
		c.op = op;
		c.from = from;
		c.step = step;
		c.count = count;
		c.seed = seed + (own ? (uint64_t)i : 0);
		if ((mask >> i) & 1)
			TU_CHECK(tu_send(pr[i].c.wr, &c, sizeof(c)) == 0, "%s died", name[i]);
	}
	for (int i = 0; i < NPROC; i++) {
		struct reply r;
		if (!((mask >> i) & 1))
			continue;
		TU_CHECK(tu_recv(pr[i].c.rd, &r, sizeof(r)) == 0, "%s died", name[i]);
		TU_CHECK(!r.err, "%s: '%c' failed: %s", name[i], op, strerror((int)-r.err));
	}
}

static void start(int i)
{
	struct reply r;

	tu_spawn(&pr[i].c, child, NULL);
	TU_CHECK(tu_recv(pr[i].c.rd, &r, sizeof(r)) == 0, "%s died", name[i]);
	pr[i].addr = r.addr;
	pr[i].live = 1;
}

static void quit(int i)
{
	struct cmd c;

	memset(&c, 0, sizeof(c));
	c.op = 'q';
	TU_CHECK(tu_send(pr[i].c.wr, &c, sizeof(c)) == 0, "%s died", name[i]);
	TU_CHECK(tu_reap(&pr[i].c) == 0, "%s exited badly", name[i]);
	pr[i].live = 0;
}

/* ---- the truth, from frames ---- */

struct truth {
	uint64_t frames;   /* distinct present frames over every region */
	uint64_t shared;   /* distinct pool frames some process maps */
	uint64_t sharing;  /* sum over them of mappers - 1 */
	uint64_t written;  /* pool pages referenced from pool VMAs, read by nobody */
	uint64_t unmerged; /* present pages mapping no pool page */
	uint64_t absent;   /* pages not present (there should be none) */
	uint64_t merging[NPROC];
};

struct key {
	uint64_t ino, off; /* a pool page: segment inode, page offset in it */
};

static int cmp_key(const void *a, const void *b)
{
	const struct key *x = a, *y = b;

	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off;
}

static size_t distinct(void *v, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
	size_t d = 0;

	qsort(v, n, size, cmp);
	for (size_t i = 0; i < n; i++)
		if (!i || cmp((char *)v + i * size, (char *)v + (i - 1) * size))
			memmove((char *)v + d++ * size, (char *)v + i * size, size);
	return d;
}

/* Pool VMAs of pid over its region: keys[] per page, ino 0 where none. */
static void pool_keys(pid_t pid, uintptr_t s, struct key *keys)
{
	char path[64], line[512];
	uintptr_t e = s + LEN;
	FILE *f;

	memset(keys, 0, N * sizeof(*keys));
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	TU_CHECK(f, "open %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long vs, ve, off, ino;
		/* "/memfd:samepage-pool (deleted)"; "-zero" is the zero segment,
		 * which holds no references (none is used here: no page is 0). */
		const char *nm = strstr(line, "/memfd:samepage-pool");
		if (!nm || nm[20] != ' ' ||
		    sscanf(line, "%lx-%lx %*s %lx %*s %lu", &vs, &ve, &off, &ino) != 4 || ve <= s ||
		    vs >= e)
			continue;
		for (uintptr_t a = vs < s ? s : vs; a < ve && a < e; a += PAGE)
			keys[(a - s) / PAGE] = (struct key){ ino, off / PAGE + (a - vs) / PAGE };
	}
	fclose(f);
}

static void measure(struct truth *t)
{
	static uint64_t pm[N], all[NPROC * N], pool[NPROC * N];
	static struct key keys[N], read[NPROC * N], wrote[NPROC * N];
	size_t nall = 0, npool = 0, nread = 0, nwrote = 0, w;

	memset(t, 0, sizeof(*t));
	for (int i = 0; i < NPROC; i++) {
		if (!pr[i].live)
			continue;
		/* maps first: a page merged in between shows as a file page in
		 * an anonymous VMA for a moment, never the other way round. */
		pool_keys(pr[i].c.pid, pr[i].addr, keys);
		tu_pagemap(pr[i].c.pid, pr[i].addr, N, pm);
		for (uint32_t k = 0; k < N; k++) {
			uint64_t pfn = pm[k] & ((1ull << 55) - 1);
			int present = (pm[k] >> 63) & 1, file = (pm[k] >> 61) & 1;
			if (!present) {
				t->absent++;
				continue;
			}
			all[nall++] = pfn;
			if (file) {
				pool[npool++] = pfn;
				t->merging[i]++;
				if (keys[k].ino)
					read[nread++] = keys[k];
			} else {
				t->unmerged++;
				if (keys[k].ino) /* a written copy inside a pool VMA */
					wrote[nwrote++] = keys[k];
			}
		}
	}
	t->frames = distinct(all, nall, 8, tu_cmp_u64);
	t->shared = distinct(pool, npool, 8, tu_cmp_u64);
	t->sharing = npool - t->shared;
	nread = distinct(read, nread, sizeof(struct key), cmp_key);
	nwrote = distinct(wrote, nwrote, sizeof(struct key), cmp_key);
	for (w = 0; w < nwrote; w++)
		t->written += !bsearch(&wrote[w], read, nread, sizeof(struct key), cmp_key);
}

/* ---- the counters ---- */

struct counters {
	long long shared, sharing, unshared, pool, written, processes;
	long long merging[NPROC];
};

/* Does this samepage CLI print pool_written? (The daemon has counted it
 * since the counters were fixed; a CLI without the field leaves it to
 * pool_pages == pages_shared + pool_written, checked from frames.) */
static int have_written = -1;

static void read_counters(struct counters *k)
{
	char buf[8192];

	tu_status_json(0, buf, sizeof(buf)); /* "" when it failed: every key -1 */
	k->shared = tu_json_get(buf, "pages_shared");
	k->sharing = tu_json_get(buf, "pages_sharing");
	k->unshared = tu_json_get(buf, "pages_unshared");
	k->pool = tu_json_get(buf, "pool_pages");
	k->written = tu_json_get(buf, "pool_written");
	k->processes = tu_json_get(buf, "processes");
	if (have_written < 0 && k->shared >= 0) {
		have_written = k->written >= 0;
		if (!have_written)
			printf("samepage status prints no pool_written: checked through "
			       "pool_pages only\n");
	}
	for (int i = 0; i < NPROC; i++) {
		k->merging[i] = -1;
		if (pr[i].live && !tu_status_json(pr[i].c.pid, buf, sizeof(buf)))
			k->merging[i] = tu_json_get(buf, "ksm_merging_pages");
	}
}

static int failures;

static int matches(const struct counters *k, const struct truth *t)
{
	int ok = k->shared == (long long)t->shared && k->sharing == (long long)t->sharing &&
		 (have_written != 1 || k->written == (long long)t->written) &&
		 k->pool == (long long)(t->shared + t->written);

	for (int i = 0; i < NPROC; i++)
		ok &= !pr[i].live || k->merging[i] == (long long)t->merging[i];
	return ok;
}

static int same(const struct counters *a, const struct truth *ta, const struct counters *b,
		const struct truth *tb)
{
	struct counters x = *a, y = *b;

	x.unshared = y.unshared = 0; /* moves with every generation: not a sign of change */
	return !memcmp(&x, &y, sizeof(x)) && !memcmp(ta, tb, sizeof(*ta));
}

/* Wait until counters and frames have stayed the same for 1 s while they
 * agree (or for 3 s while they do not: a counter that is wrong and stays
 * wrong), at most 30 s; the highest pages_unshared seen meanwhile in *max. */
static void settle(const char *step, struct counters *k, struct truth *t, long long *max_unshared)
{
	double t0 = tu_now(), since = t0;
	struct counters k1;
	struct truth t1;

	read_counters(k);
	measure(t);
	*max_unshared = k->unshared;
	for (;;) {
		double now;
		usleep(100 * 1000);
		read_counters(&k1);
		measure(&t1);
		now = tu_now();
		if (k1.unshared > *max_unshared)
			*max_unshared = k1.unshared;
		if (!same(k, t, &k1, &t1))
			since = now;
		*k = k1;
		*t = t1;
		if (now - since >= (matches(k, t) ? 1.0 : 3.0))
			break;
		if (now - t0 > 30) {
			TU_SOFT_FAIL(&failures, "%s: counters or frames still changing after 30 s",
				     step);
			break;
		}
	}
	printf("%s (%.1f s to settle):\n"
	       "  frames:   pages_shared %" PRIu64 ", pages_sharing %" PRIu64
	       ", pool_written %" PRIu64 ", unmerged %" PRIu64 ", merging A %" PRIu64
	       " B %" PRIu64 " C %" PRIu64 ", %" PRIu64 " frames, %" PRIu64 " absent\n"
	       "  counters: pages_shared %lld, pages_sharing %lld, pool_written %lld, "
	       "pool_pages %lld, pages_unshared %lld (max %lld), merging A %lld B %lld C %lld, "
	       "processes %lld\n",
	       step, tu_now() - t0, t->shared, t->sharing, t->written, t->unmerged,
	       t->merging[A], t->merging[B], t->merging[C], t->frames, t->absent, k->shared,
	       k->sharing, k->written, k->pool, k->unshared, *max_unshared, k->merging[A],
	       k->merging[B], k->merging[C], k->processes);
}

/* The counters against the frames, and the frames against what the step
 * meant to make (want_*): both exactly. */
static void check(const char *step, uint64_t want_shared, uint64_t want_sharing,
		  uint64_t want_written, const uint64_t want_merging[NPROC])
{
	struct counters k;
	struct truth t;
	long long max_unshared;

	settle(step, &k, &t, &max_unshared);
	TU_EXPECT(&failures, t.absent == 0, "%s: %" PRIu64 " pages not present", step, t.absent);
	TU_EXPECT(&failures,
		  t.shared == want_shared && t.sharing == want_sharing && t.written == want_written,
		  "%s: frames show %" PRIu64 " shared, %" PRIu64 " sharing, %" PRIu64
		  " written; the step meant %" PRIu64 ", %" PRIu64 ", %" PRIu64,
		  step, t.shared, t.sharing, t.written, want_shared, want_sharing, want_written);
	TU_EXPECT(&failures, k.shared == (long long)t.shared,
		  "%s: pages_shared %lld, frames say %" PRIu64, step, k.shared, t.shared);
	TU_EXPECT(&failures, k.sharing == (long long)t.sharing,
		  "%s: pages_sharing %lld, frames say %" PRIu64, step, k.sharing, t.sharing);
	for (int i = 0; i < NPROC; i++) {
		if (!pr[i].live)
			continue;
		TU_EXPECT(&failures, t.merging[i] == want_merging[i],
			  "%s: %s maps %" PRIu64 " pool pages; the step meant %" PRIu64, step,
			  name[i], t.merging[i], want_merging[i]);
		TU_EXPECT(&failures, k.merging[i] == (long long)t.merging[i],
			  "%s: %s's ksm_merging_pages %lld, its frames say %" PRIu64, step, name[i],
			  k.merging[i], t.merging[i]);
	}
	TU_EXPECT(&failures, have_written != 1 || k.written == (long long)t.written,
		  "%s: pool_written %lld, frames and maps say %" PRIu64, step, k.written,
		  t.written);
	TU_EXPECT(&failures, k.pool >= k.shared && k.pool == (long long)(t.shared + t.written),
		  "%s: pool_pages %lld, want pages_shared + pool_written = %" PRIu64, step, k.pool,
		  t.shared + t.written);
	{
		long long live = 0;
		for (int i = 0; i < NPROC; i++)
			live += pr[i].live;
		TU_EXPECT(&failures, k.processes == live, "%s: processes %lld, %lld are running",
			  step, k.processes, live);
	}
	/* Only pages that map no pool page can wait in the unstable index. */
	TU_EXPECT(&failures, max_unshared >= 0 && max_unshared <= (long long)t.unmerged,
		  "%s: pages_unshared reached %lld, but live processes have only %" PRIu64
		  " unmerged pages", step, max_unshared, t.unmerged);
}

/* ---- waits ---- */

static uint64_t want_merging_[NPROC];

static int merged_as_wanted(void *arg)
{
	struct truth t;

	(void)arg;
	measure(&t);
	for (int i = 0; i < NPROC; i++)
		if (pr[i].live && t.merging[i] != want_merging_[i])
			return 0;
	return 1;
}

static void wait_merged(const char *step, uint64_t a, uint64_t b, uint64_t c, int secs)
{
	struct truth t;

	want_merging_[A] = a;
	want_merging_[B] = b;
	want_merging_[C] = c;
	if (tu_wait(merged_as_wanted, NULL, secs))
		return;
	measure(&t);
	TU_FAIL("%s: not merged after %d s: A %" PRIu64 " B %" PRIu64 " C %" PRIu64
		" pages map pool pages, want %" PRIu64 " %" PRIu64 " %" PRIu64,
		step, secs, t.merging[A], t.merging[B], t.merging[C], a, b, c);
}

static const char *zero_key;

static int counter_zero(void *arg)
{
	(void)arg;
	return tu_status(zero_key) == 0;
}

static int all_zero(void *arg)
{
	struct counters k;

	(void)arg;
	read_counters(&k);
	return !k.shared && !k.sharing && !k.unshared && !k.pool && (!k.written || !have_written);
}

/* pages_unshared right after a scan pass of one of mask's processes (in
 * turn): that pass has just offered the process's unique pages, and they
 * stay in the unstable index until the generation ends, which is when the
 * last of the other processes completes its next pass. Only a pass that
 * completes a generation itself empties the index at once, and then the
 * next one (of another process) does not. Up to 20 tries; the first value
 * above 0, or the last, and in *who whose pass it followed. */
static long long see_unshared(const char *step, unsigned mask, int *who)
{
	long long v = -1;
	int i = -1, tries = 0;

	while (tries < 20 && v <= 0) {
		do
			i = (i + 1) % NPROC;
		while (!((mask >> i) & 1));
		ask(1u << i, 's', 0, 0, 1, 0, 0);
		v = tu_status("pages_unshared");
		tries++;
	}
	printf("%s: pages_unshared %lld after a pass of %s (try %d)\n", step, v, name[i], tries);
	*who = i;
	return v;
}

int main(void)
{
	static uint64_t pfn1[N];
	uint64_t odd_back = 0;
	struct counters k;
	long long v;
	double t0;
	int who;

	tu_require_merging();
	tu_private_daemon();
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* 1. A and B: the same N pages, merged. */
	start(A);
	start(B);
	ask(AB, 'f', 0, 1, N, SEED_X, 0);
	ask(AB, 'm', 0, 0, 0, 0, 0);
	t0 = tu_now();
	wait_merged("1", N, N, 0, 30);
	printf("1: merged %u pages x 2 in %.2f s\n", N, tu_now() - t0);
	ask(AB, 's', 0, 0, 1, 0, 0);
	check("1 (A and B merged)", N, N, 0, (uint64_t[NPROC]){ N, N, 0 });
	tu_pagemap(pr[A].c.pid, pr[A].addr, N, pfn1);

	/* 2. Every other page written, by each with content of its own. Two
	 * passes: the first sees the copies (C_COW), the second hashes them. */
	ask(AB, 'f', 1, 2, N / 2, SEED_W, 1);
	ask(AB, 's', 0, 0, 2, 0, 0);
	check("2 (A and B wrote every other page)", N / 2, N / 2, N / 2,
	      (uint64_t[NPROC]){ N / 2, N / 2, 0 });

	/* 3. The original content back: passes that see the change (volatile),
	 * offer the page (a stable hit: the page it was a copy of), merge. */
	ask(AB, 'f', 1, 2, N / 2, SEED_X, 0);
	ask(AB, 's', 0, 0, 3, 0, 0);
	wait_merged("3", N, N, 0, 20);
	check("3 (A and B wrote the original back)", N, N, 0, (uint64_t[NPROC]){ N, N, 0 });
	{
		static uint64_t pm[N];
		tu_pagemap(pr[A].c.pid, pr[A].addr, N, pm);
		for (uint32_t i = 1; i < N; i += 2)
			odd_back += (pm[i] & ((1ull << 55) - 1)) == (pfn1[i] & ((1ull << 55) - 1));
		printf("3: %" PRIu64 " of %u rewritten pages map their step-1 frame again\n",
		       odd_back, N / 2);
		TU_EXPECT(&failures, odd_back == N / 2,
			  "3: only %" PRIu64 " of %u pages merged back into the pool page they "
			  "were copies of (it was still referenced: pool_written)", odd_back,
			  N / 2);
	}
	/* Their step-2 contents wait in the unstable index until the
	 * generation ends; then nothing of A or B is left there. */
	zero_key = "pages_unshared";
	TU_EXPECT(&failures, tu_wait(counter_zero, NULL, 10),
		  "3: pages_unshared %lld 10 s after every page of A and B merged, want 0",
		  tu_status("pages_unshared"));

	/* 4. C: its first half is A's and B's, its second half unique. */
	start(C);
	ask(1u << C, 'f', 0, 1, N / 2, SEED_X, 0);
	ask(1u << C, 'f', N / 2, 1, N / 2, SEED_U, 0);
	ask(1u << C, 'm', 0, 0, 0, 0, 0);
	wait_merged("4", N, N, N / 2, 20);
	ask(1u << C, 's', 0, 0, 2, 0, 0);
	check("4 (C joined)", N, 3 * N / 2, 0, (uint64_t[NPROC]){ N, N, N / 2 });
	v = see_unshared("4", 1u << C, &who);
	TU_EXPECT(&failures, v > 0,
		  "4: pages_unshared %lld after C's passes, while C's %u unique pages wait "
		  "in the unstable index", v, N / 2);
	TU_EXPECT(&failures, v <= (long long)N / 2,
		  "4: pages_unshared %lld, but only C's %u pages are unmerged", v, N / 2);
	quit(C);
	t0 = tu_now();
	TU_EXPECT(&failures, tu_wait(counter_zero, NULL, 5),
		  "4: pages_unshared %lld 5 s after C exited, want 0", tu_status("pages_unshared"));
	printf("4: pages_unshared 0 %.2f s after C exited\n", tu_now() - t0);
	check("4 (C exited)", N, N, 0, (uint64_t[NPROC]){ N, N, 0 });

	/* 5. A and B write pages of their own again (as in 2), so that they
	 * too have pages waiting in the unstable index when they exit. */
	ask(AB, 'f', 1, 2, N / 2, SEED_W5, 1);
	ask(AB, 's', 0, 0, 3, 0, 0);
	check("5 (A and B wrote every other page again)", N / 2, N / 2, N / 2,
	      (uint64_t[NPROC]){ N / 2, N / 2, 0 });
	v = see_unshared("5", AB, &who);
	TU_EXPECT(&failures, v > 0,
		  "5: pages_unshared %lld after A's and B's passes, while their %u unique "
		  "pages wait in the unstable index", v, N);
	TU_EXPECT(&failures, v <= (long long)N,
		  "5: pages_unshared %lld, but A and B have only %u unmerged pages", v, N);
	/* The process whose pages wait there exits first, then the other at
	 * once, before its next pass could end the generation: nobody is
	 * left, and what waits in the index belongs to nobody (the old
	 * counter showed it for good). */
	quit(who);
	quit(who == A ? B : A);
	t0 = tu_now();
	TU_EXPECT(&failures, tu_wait(all_zero, NULL, 5),
		  "5: counters not all 0 5 s after every process exited");
	read_counters(&k);
	printf("5: %.2f s after the last exit: pages_shared %lld, pages_sharing %lld, "
	       "pages_unshared %lld, pool_pages %lld, pool_written %lld, processes %lld\n",
	       tu_now() - t0, k.shared, k.sharing, k.unshared, k.pool, k.written, k.processes);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	return 0;
}
