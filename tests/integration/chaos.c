/* SPDX-License-Identifier: MIT */
/*
 * Whatever an application does to merged memory, its bytes stay its own.
 *
 * Three processes, two threads each, each thread with 4 MiB of mergeable
 * memory of its own whose pages hold one of a few contents (zeros among
 * them), so that most pages are merged, with each other and across the
 * processes, all the time. Each thread then runs random
 * operations on random runs of pages, as applications do to their heaps,
 * with its scanner merging in between:
 *   write a content, write zeros, change one byte, MADV_DONTNEED,
 *   mprotect PROT_NONE and back, mmap anew over pages, mremap of the
 *   whole region elsewhere, a scratch region merged and later unmapped,
 *   MADV_UNMERGEABLE then MADV_MERGEABLE, mlock and munlock, MADV_FREE
 *   then a whole rewrite, MADV_PAGEOUT or MADV_COLD, posix_spawn of
 *   /bin/true, fork a child that checks every byte, writes its own copy
 *   and checks again
 * (never leaving a hole in the address space that another thread's mmap
 * could take: that would be the test's own race),
 * and after each operation it sleeps a few milliseconds, and every few
 * operations it compares every byte with a shadow copy in MAP_SHARED
 * memory (which is never merged). Any difference fails with the page, its
 * expected and actual first bytes and the last operations. Asserted too:
 * merging really happened meanwhile (merging pages seen), so the test
 * cannot pass by merging nothing.
 *
 * This is how the lost write of "a merged page rewritten with zeros" would
 * have been found (tests/integration/zero_rewrite.c). SAMEPAGE_CHAOS_SECONDS
 * runs it longer (default 12 s per process; bench/ for hours).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

extern char **environ;

#define NPAGES 1024u   /* 4 MiB per process */
#define NPROC 3
#define THREADS 2      /* per process, each on a region of its own */
#define NCONTENT 8     /* contents a page may hold; 0 is all zeros */
#define RUN_MAX 48u    /* pages per operation at most */
#define HISTORY 16

/* In a worker: report and _exit, never through the test's atexit handlers
 * (they stop the daemon the other workers use). */
#define CK(cond, ...)                                                       \
	do {                                                                \
		if (!(cond)) {                                              \
			TU_REPORT(__VA_ARGS__);                             \
			_exit(1);                                           \
		}                                                           \
	} while (0)

struct chaos {
	unsigned char *mem, *shadow, *scratch;
	uint32_t scratch_n, scratch_v;
	unsigned char content[NCONTENT][PAGE];
	uint64_t rng;
	char history[HISTORY][80];
	unsigned nops;
	uint64_t merging_seen;
};

static void note(struct chaos *c, const char *fmt, uint32_t p, uint32_t n)
{
	snprintf(c->history[c->nops % HISTORY], sizeof(c->history[0]), fmt, p, n);
	c->nops++;
}

static int verify(struct chaos *c, const char *who)
{
	for (uint32_t i = 0; i < NPAGES; i++) {
		const unsigned char *m = c->mem + (size_t)i * PAGE, *s = c->shadow + (size_t)i * PAGE;
		if (!memcmp(m, s, PAGE))
			continue;
		size_t k = 0;
		while (m[k] == s[k])
			k++;
		TU_REPORT("%s: page %u differs at byte %zu (%02x, want %02x) after %u operations; "
			  "the last ones, oldest first:", who, i, k, m[k], s[k], c->nops);
		for (unsigned j = c->nops > HISTORY ? c->nops - HISTORY : 0; j < c->nops; j++)
			fprintf(stderr, "    %s\n", c->history[j % HISTORY]);
		return 1;
	}
	return 0;
}

static __thread struct chaos *crashing;

/* A fault in a worker (or its fork child) names the page and the last
 * operations instead of dying silently. */
static void on_fault(int sig, siginfo_t *si, void *uc)
{
	struct chaos *c = crashing;
	uintptr_t a = (uintptr_t)si->si_addr, m = (uintptr_t)c->mem;
	(void)uc;

	TU_REPORT("signal %d at %#lx (page %ld of the merged memory, code %d) after %u "
		  "operations; the last ones, oldest first:", sig, (unsigned long)a,
		  a >= m ? (long)((a - m) / PAGE) : -1L, si->si_code, c->nops);
	for (unsigned j = c->nops > HISTORY ? c->nops - HISTORY : 0; j < c->nops; j++)
		fprintf(stderr, "    %s\n", c->history[j % HISTORY]);
	_exit(1);
}

static uint32_t rnd(struct chaos *c, uint32_t n)
{
	return (uint32_t)(tu_xorshift(&c->rng) % n);
}

static void fill(struct chaos *c, uint32_t p, uint32_t n, uint32_t content)
{
	for (uint32_t i = p; i < p + n; i++) {
		memcpy(c->mem + (size_t)i * PAGE, c->content[content], PAGE);
		memcpy(c->shadow + (size_t)i * PAGE, c->content[content], PAGE);
	}
}

/* A fork child: its copy is intact, stays so after writes of its own. */
static int child_checks(struct chaos *c, uint32_t p, uint32_t n)
{
	size_t len = (size_t)NPAGES * PAGE;
	unsigned char *own = malloc(len);

	if (verify(c, "fork child, at the fork") || !own)
		return 1;
	/* The shadow is shared with the parent: the child's writes go into a
	 * private copy of it. */
	memcpy(own, c->shadow, len);
	c->shadow = own;
	fill(c, p, n, rnd(c, NCONTENT));
	tu_sleep_ms(20);
	return verify(c, "fork child, after its writes");
}

static void op(struct chaos *c)
{
	uint32_t n = 1 + rnd(c, RUN_MAX), p = rnd(c, NPAGES - n + 1);
	unsigned char *a = c->mem + (size_t)p * PAGE, *s = c->shadow + (size_t)p * PAGE;
	size_t len = (size_t)n * PAGE;
	uint32_t k = rnd(c, 120);
	int st;

	if (k < 30) {
		uint32_t v = rnd(c, NCONTENT);
		note(c, "write content to pages %u +%u", p, n);
		fill(c, p, n, v);
	} else if (k < 45) {
		note(c, "zero pages %u +%u", p, n);
		fill(c, p, n, 0);
	} else if (k < 55) {
		uint32_t b = rnd(c, (uint32_t)len);
		note(c, "change one byte at page %u (+%u pages)", p + b / PAGE, n);
		a[b]++;
		s[b]++;
	} else if (k < 65) {
		note(c, "MADV_DONTNEED pages %u +%u", p, n);
		CK(madvise(a, len, MADV_DONTNEED) == 0, "MADV_DONTNEED: %s", strerror(errno));
		memset(s, 0, len);
	} else if (k < 72) {
		note(c, "mprotect PROT_NONE pages %u +%u, and back", p, n);
		CK(mprotect(a, len, PROT_NONE) == 0, "mprotect: %s", strerror(errno));
		tu_sleep_ms((int)rnd(c, 10));
		CK(mprotect(a, len, PROT_READ | PROT_WRITE) == 0, "mprotect: %s",
			 strerror(errno));
	} else if (k < 79) {
		/* Never a hole another thread's mmap could take (glibc's spawn
		 * stack, samepage's own buffers): replaced in one call. */
		note(c, "mmap MAP_FIXED anew over pages %u +%u", p, n);
		CK(mmap(a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			-1, 0) == a, "mmap: %s", strerror(errno));
		CK(madvise(a, len, MADV_MERGEABLE) == 0, "madvise: %s", strerror(errno));
		memset(s, 0, len);
	} else if (k < 83) {
		/* The whole region, wherever the kernel puts it. */
		size_t all = (size_t)NPAGES * PAGE;
		unsigned char *to = mremap(c->mem, all, all, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
		note(c, "mremap the region elsewhere (DONTUNMAP where it can) %u %u", 0, NPAGES);
		if (to == MAP_FAILED) /* MREMAP_DONTUNMAP: private anonymous only, 5.7+ */
			to = mremap(c->mem, all, all, MREMAP_MAYMOVE);
		CK(to != MAP_FAILED, "mremap: %s", strerror(errno));
		if (to != c->mem)
			munmap(c->mem, all); /* what DONTUNMAP left: empty, unmerged */
		c->mem = to;
	} else if (k < 86) {
		/* Merged memory of its own, unmapped whole a while later. */
		if (!c->scratch) {
			c->scratch_v = rnd(c, NCONTENT);
			note(c, "scratch region of %u pages, content %u", n, c->scratch_v);
			c->scratch_n = n;
			c->scratch = tu_map(len);
			for (uint32_t i = 0; i < n; i++)
				memcpy(c->scratch + (size_t)i * PAGE, c->content[c->scratch_v], PAGE);
			CK(madvise(c->scratch, len, MADV_MERGEABLE) == 0, "madvise: %s",
			   strerror(errno));
		} else {
			note(c, "scratch region of %u pages checked and unmapped (%u)", c->scratch_n,
			     c->scratch_v);
			for (uint32_t i = 0; i < c->scratch_n; i++)
				CK(!memcmp(c->scratch + (size_t)i * PAGE, c->content[c->scratch_v],
					   PAGE), "scratch page %u differs", i);
			CK(munmap(c->scratch, (size_t)c->scratch_n * PAGE) == 0, "munmap: %s",
			   strerror(errno));
			c->scratch = NULL;
		}
	} else if (k < 93) {
		note(c, "MADV_UNMERGEABLE, MADV_MERGEABLE pages %u +%u", p, n);
		CK(madvise(a, len, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE: %s",
			 strerror(errno));
		CK(madvise(a, len, MADV_MERGEABLE) == 0, "MADV_MERGEABLE: %s",
			 strerror(errno));
	} else if (k < 104) {
		note(c, "mlock pages %u +%u, and munlock", p, n);
		/* RLIMIT_MEMLOCK may refuse; what matters is the bytes. */
		if (mlock(a, len) == 0) {
			tu_sleep_ms((int)rnd(c, 10));
			CK(munlock(a, len) == 0, "munlock: %s", strerror(errno));
		}
	} else if (k < 108) {
		uint32_t v = rnd(c, NCONTENT);
		note(c, "MADV_FREE pages %u +%u, then rewrite them whole", p, n);
		CK(madvise(a, len, MADV_FREE) == 0, "MADV_FREE: %s", strerror(errno));
		fill(c, p, n, v);
	} else if (k < 112) {
		note(c, "MADV_PAGEOUT / MADV_COLD pages %u +%u", p, n);
		madvise(a, len, rnd(c, 2) ? MADV_PAGEOUT : MADV_COLD); /* hints */
	} else if (k < 118) {
		note(c, "posix_spawn /bin/true (exec wrappers) %u %u", p, n);
		pid_t pid;
		char *argv[] = { "true", NULL };
		CK(posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) == 0, "posix_spawn");
		CK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		   "/bin/true: status %#x", st);
	} else {
		note(c, "fork, the child writes pages %u +%u", p, n);
		pid_t pid = fork();
		CK(pid >= 0, "fork: %s", strerror(errno));
		if (pid == 0)
			_exit(child_checks(c, p, n));
		CK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
			 "the fork child found its copy wrong (status %#x)", st);
	}
}

struct run {
	struct chaos c;
	uint64_t seed;
	double end;
	int failed;
};

/* One thread's own region, its operations and checks: the threads of a
 * process work at once, as an application's do, each on its own memory. */
static void *thread_main(void *arg)
{
	struct run *r = arg;
	struct chaos *c = &r->c;
	size_t len = (size_t)NPAGES * PAGE;
	struct samepage_stat st;

	crashing = c;
	c->rng = 0x9e3779b97f4a7c15ull * r->seed + 1;
	for (uint32_t v = 1; v < NCONTENT; v++)
		tu_fill(c->content[v], PAGE, 1000 + v); /* the same in every process */
	c->mem = tu_map(len);
	c->shadow = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CK(c->shadow != MAP_FAILED, "mmap");
	for (uint32_t i = 0; i < NPAGES; i++)
		fill(c, i, 1, (i / 16) % NCONTENT);
	CK(madvise(c->mem, len, MADV_MERGEABLE) == 0, "madvise: %s", strerror(errno));
	while (tu_now() < r->end && !r->failed) {
		op(c);
		tu_sleep_ms((int)rnd(c, 8));
		if (c->nops % 8 == 0) {
			if (verify(c, "process"))
				r->failed = 1;
			if (samepage_stat(&st) == 0 && st.ksm_merging_pages > c->merging_seen)
				c->merging_seen = st.ksm_merging_pages;
		}
	}
	if (!r->failed && verify(c, "process at the end"))
		r->failed = 1;
	return NULL;
}

static int worker(int rd, int wr, void *arg)
{
	static struct run runs[THREADS];
	pthread_t t[THREADS];
	const char *env = getenv("SAMEPAGE_CHAOS_SECONDS");
	double end = tu_now() + (env ? atof(env) : 12);
	struct sigaction sa = { .sa_sigaction = on_fault, .sa_flags = SA_SIGINFO };
	uint64_t out[2] = { 0, 0 };
	int failed = 0;
	(void)rd;

	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	for (int i = 0; i < THREADS; i++) {
		runs[i].seed = (uint64_t)(uintptr_t)arg * THREADS + (uint64_t)i;
		runs[i].end = end;
		CK(pthread_create(&t[i], NULL, thread_main, &runs[i]) == 0, "pthread_create");
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		failed |= runs[i].failed;
		out[0] += runs[i].c.nops;
		if (runs[i].c.merging_seen > out[1])
			out[1] = runs[i].c.merging_seen;
	}
	if (failed)
		return 1;
	tu_send(wr, out, sizeof(out));
	return 0;
}

int main(void)
{
	struct tu_child w[NPROC];
	uint64_t ops = 0, merging = 0;
	int failed = 0;

	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++)
		tu_spawn(&w[i], worker, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < NPROC; i++) {
		uint64_t out[2] = { 0, 0 };
		int ok = tu_recv(w[i].rd, out, sizeof(out)) == 0;
		int status = tu_reap(&w[i]);
		if (!ok || status != 0) {
			TU_REPORT("process %d failed (exit status %d)", i + 1, status);
			failed = 1;
			continue;
		}
		ops += out[0];
		if (out[1] > merging)
			merging = out[1];
	}
	if (failed)
		return 1;
	TU_CHECK(merging >= NPAGES / 4, "merging never really happened (at most %llu merging pages "
		 "in a process): the operations were not checked against merged memory",
		 (unsigned long long)merging);
	printf("chaos: %d processes x %d threads, %llu random operations on merged memory "
	       "(up to %llu merging pages in a process), every byte as written\n", NPROC, THREADS,
	       (unsigned long long)ops, (unsigned long long)merging);
	return 0;
}
