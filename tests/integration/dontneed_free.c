/* SPDX-License-Identifier: MIT */
/*
 * MADV_DONTNEED and MADV_FREE on merged pages keep anonymous-memory
 * semantics (DESIGN.md invariant 3).
 *
 * A merged page is a page of a private mapping of the pool file underneath.
 * Plain MADV_DONTNEED there would drop our page and the next read would
 * fault the pool page in again (its old content, not zeros), and MADV_FREE
 * would fail with EINVAL. Through samepage's madvise():
 *  - MADV_DONTNEED (len not a page multiple: rounded up, as the kernel does)
 *    returns 0 and the range reads back zeros;
 *  - MADV_FREE returns 0 and the range reads back zeros (the kernel lets
 *    MADV_FREE'd anonymous memory read either; samepage's design says zeros);
 *  - a range mixing still-merged and already-copied pages reads zeros;
 *  - an unaligned address fails with EINVAL and changes nothing;
 *  - MADV_REMOVE fails with EINVAL as on anonymous memory;
 *  - the other process's copy is unaffected, and the discarded pages no
 *    longer share its frames;
 *  - the daemon's counters show the references were dropped: pages_sharing
 *    falls at once for the pages one process discarded, pool_pages once both
 *    processes discarded a page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 2048u /* 8 MiB */
#define LEN ((size_t)NPAGES * PAGE)
#define NPROC 2

/* Child 0 discards [0,256) with DONTNEED, [256,512) with FREE, [576,640)
 * with DONTNEED after writing page 600; child 1 discards [0,512). */
#define D0_S 0u
#define D0_E 256u
#define F0_S 256u
#define F0_E 512u
#define M0_S 576u
#define M0_E 640u
#define M0_W 600u
#define D1_E 512u

#ifndef MADV_FREE
#define MADV_FREE 8
#endif

struct reply { int32_t ok; int32_t err; int64_t a, b, c; char why[160]; };

static void answer(int wr, int ok, int err, const char *why)
{
	struct reply r = { .ok = ok, .err = err };

	snprintf(r.why, sizeof(r.why), "%s", why ? why : "");
	tu_send(wr, &r, sizeof(r));
}

static int zeros(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

#define PG(p, i) ((p) + (size_t)(i) * PAGE)

/* Make discarded pages unique once checked: zeros merge like any content
 * (into one pool page on kernels without a zero page) and would blur the
 * counters this test reads. */
static void scribble(unsigned char *p, unsigned char *ref, uint32_t s, uint32_t e)
{
	for (uint32_t i = s; i < e; i++) {
		uint64_t tag[2] = { (uint64_t)getpid(), i + 1 };
		memcpy(PG(p, i), tag, sizeof(tag));
		memcpy(PG(ref, i), tag, sizeof(tag));
	}
}

static int child(int rd, int wr, void *arg)
{
	(void)arg;
	unsigned char *p = tu_map(LEN), *ref = malloc(LEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	if (!ref)
		return 1;
	tu_fill(p, LEN, 21);
	memcpy(ref, p, LEN);
	if (madvise(p, LEN, MADV_MERGEABLE) != 0)
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		struct samepage_stat st;
		struct reply r = { 0 };
		int res, e;

		switch (cmd) {
		case 'c':
			answer(wr, !memcmp(p, ref, LEN), 0, "content differs from the reference");
			break;
		case 'D': /* DONTNEED, len rounded up to whole pages */
			res = madvise(PG(p, D0_S), (size_t)(D0_E - D0_S) * PAGE - 100, MADV_DONTNEED);
			e = errno;
			if (res) {
				answer(wr, 0, e, "madvise(MADV_DONTNEED) failed");
				break;
			}
			memset(PG(ref, D0_S), 0, (size_t)(D0_E - D0_S) * PAGE);
			res = zeros(PG(p, D0_S), (size_t)(D0_E - D0_S) * PAGE) && !memcmp(p, ref, LEN);
			scribble(p, ref, D0_S, D0_E);
			answer(wr, res, 0, "MADV_DONTNEED'd merged pages do not read back zeros "
					   "(or other pages changed)");
			break;
		case 'F':
			res = madvise(PG(p, F0_S), (size_t)(F0_E - F0_S) * PAGE, MADV_FREE);
			e = errno;
			if (res) {
				answer(wr, 0, e, "madvise(MADV_FREE) on merged pages failed");
				break;
			}
			memset(PG(ref, F0_S), 0, (size_t)(F0_E - F0_S) * PAGE);
			res = zeros(PG(p, F0_S), (size_t)(F0_E - F0_S) * PAGE) && !memcmp(p, ref, LEN);
			scribble(p, ref, F0_S, F0_E);
			answer(wr, res, 0,
			       "MADV_FREE'd merged pages do not read back zeros (or other pages changed)");
			break;
		case 'M': /* a range of merged pages with one COW'd page in it */
			PG(p, M0_W)[10] = 0x77;
			res = madvise(PG(p, M0_S), (size_t)(M0_E - M0_S) * PAGE, MADV_DONTNEED);
			e = errno;
			if (res) {
				answer(wr, 0, e, "madvise(MADV_DONTNEED) on a mixed range failed");
				break;
			}
			memset(PG(ref, M0_S), 0, (size_t)(M0_E - M0_S) * PAGE);
			res = zeros(PG(p, M0_S), (size_t)(M0_E - M0_S) * PAGE) && !memcmp(p, ref, LEN);
			scribble(p, ref, M0_S, M0_E);
			answer(wr, res, 0, "mixed range does not read back zeros (or other pages changed)");
			break;
		case 'E': /* errors as on anonymous memory, nothing changed */
			errno = 0;
			res = madvise(PG(p, 1000) + 8, PAGE, MADV_DONTNEED);
			if (res != -1 || errno != EINVAL) {
				answer(wr, 0, errno, "unaligned MADV_DONTNEED: want -1/EINVAL");
				break;
			}
			errno = 0;
			res = madvise(PG(p, 1000), 4 * PAGE, MADV_REMOVE);
			if (res != -1 || errno != EINVAL) {
				answer(wr, 0, errno, "MADV_REMOVE on merged (anonymous) memory: want "
						     "-1/EINVAL as the kernel gives for private anonymous memory");
				break;
			}
			answer(wr, !memcmp(p, ref, LEN), 0, "content changed by a failed madvise");
			break;
		case 'X': /* child 1: discard [0, D1_E) */
			res = madvise(p, (size_t)D1_E * PAGE, MADV_DONTNEED);
			e = errno;
			if (res) {
				answer(wr, 0, e, "madvise(MADV_DONTNEED) failed");
				break;
			}
			memset(ref, 0, (size_t)D1_E * PAGE);
			res = zeros(p, (size_t)D1_E * PAGE) && !memcmp(p, ref, LEN);
			scribble(p, ref, 0, D1_E);
			answer(wr, res, 0, "MADV_DONTNEED'd merged pages do not read back zeros");
			break;
		case 's':
			if (samepage_stat(&st)) {
				answer(wr, 0, 0, "samepage_stat");
				break;
			}
			r.ok = 1;
			r.a = (int64_t)st.pool_pages;
			r.b = (int64_t)st.pages_shared;
			r.c = (int64_t)st.pages_sharing;
			tu_send(wr, &r, sizeof(r));
			break;
		case 'q':
			return 0;
		default:
			return 1;
		}
	}
	return 1;
}

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static uintptr_t addrs[NPROC];

static struct reply ask(int i, char cmd)
{
	struct reply r;

	TU_CHECK(tu_send(c[i].wr, &cmd, 1) == 0 && tu_recv(c[i].rd, &r, sizeof(r)) == 0,
		 "child %d died on command '%c'", i, cmd);
	return r;
}

static void expect(int i, char cmd)
{
	struct reply r = ask(i, cmd);

	TU_CHECK(r.ok, "process %d, step '%c': %s%s%s", i, cmd, r.why, r.err ? ": " : "",
		 r.err ? strerror(r.err) : "");
}

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, NPROC, NPAGES) <= NPAGES + 4;
}

struct counts { int64_t pool, shared, sharing; };

static int counts_are(void *arg)
{
	struct counts *w = arg;
	struct reply r = ask(1, 's');

	return r.ok && r.a == w->pool && r.b == w->shared && r.c == w->sharing;
}

/* Pages [s, e) of process 0 no longer share process 1's frames. */
static void unshared(uint32_t s, uint32_t e, const char *what)
{
	for (uint32_t i = s; i < e; i++) {
		uint64_t f0 = tu_pfn(pids[0], addrs[0] + (uintptr_t)i * PAGE);
		uint64_t f1 = tu_pfn(pids[1], addrs[1] + (uintptr_t)i * PAGE);
		TU_CHECK(f1, "process 1 page %u not present", i);
		/* It may be a file page again: zeros merge like any content
		 * (into one pool page where the kernel has no zero page). */
		TU_CHECK(f0 != f1, "%s: page %u still maps process 1's frame", what, i);
	}
}

int main(void)
{
	struct counts w;
	struct reply r;

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	TU_CHECK(tu_wait(merged, NULL, 30), "not merged after 30 s: %zu frames for %u pages",
		 tu_frames(pids, addrs, NPROC, NPAGES), NPAGES);
	w = (struct counts){ NPAGES, NPAGES, NPAGES };
	TU_CHECK(tu_wait(counts_are, &w, 10), "counters after merging: pool_pages %lld "
		 "pages_shared %lld pages_sharing %lld, want %u each", (long long)ask(1, 's').a,
		 (long long)ask(1, 's').b, (long long)ask(1, 's').c, NPAGES);

	expect(0, 'D');
	unshared(D0_S, D0_E, "after MADV_DONTNEED");
	expect(0, 'F');
	unshared(F0_S, F0_E, "after MADV_FREE");
	expect(0, 'M');
	unshared(M0_S, M0_E, "after MADV_DONTNEED of a mixed range");
	expect(1, 'c');
	/* Pages nobody discarded are still merged. */
	for (uint32_t i = 700; i < NPAGES; i += 101)
		TU_CHECK(tu_pfn(pids[0], addrs[0] + (uintptr_t)i * PAGE) ==
			 tu_pfn(pids[1], addrs[1] + (uintptr_t)i * PAGE), "page %u unmerged", i);

	/* Process 0's references are gone; process 1 still holds every page. */
	w = (struct counts){ NPAGES, NPAGES, NPAGES - (F0_E - D0_S) - (M0_E - M0_S) };
	r = ask(1, 's');
	TU_CHECK(tu_wait(counts_are, &w, 10), "after process 0's discards: pool_pages %lld "
		 "pages_shared %lld pages_sharing %lld, want %lld %lld %lld", (long long)r.a,
		 (long long)r.b, (long long)r.c, (long long)w.pool, (long long)w.shared,
		 (long long)w.sharing);

	/* Once process 1 discards [0, 512) as well, those pool pages are free. */
	expect(1, 'X');
	expect(0, 'c');
	w = (struct counts){ NPAGES - D1_E, NPAGES - D1_E, NPAGES - (F0_E - D0_S) - (M0_E - M0_S) };
	TU_CHECK(tu_wait(counts_are, &w, 10), "after both discarded: pool_pages %lld "
		 "pages_shared %lld pages_sharing %lld, want %lld %lld %lld", (long long)ask(1, 's').a,
		 (long long)ask(1, 's').b, (long long)ask(1, 's').c, (long long)w.pool,
		 (long long)w.shared, (long long)w.sharing);
	expect(0, 'c');
	expect(1, 'c');
	/* Last, as it is a compatibility detail rather than data: failing
	 * madvise calls fail as on anonymous memory and change nothing. */
	expect(0, 'E');

	for (int i = 0; i < NPROC; i++) {
		char q = 'q';
		tu_send(c[i].wr, &q, 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	printf("dontneed_free: ok\n");
	return 0;
}
