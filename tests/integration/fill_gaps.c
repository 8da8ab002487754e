/* SPDX-License-Identifier: MIT */
/*
 * Filling gaps (DESIGN.md, "Filling gaps"): two processes hold 8 MiB laid
 * out alike, in blocks of 24 pages they share and 8 of their own, which a
 * writer thread in each keeps rewriting. Merged, each block's shared run
 * is a pool VMA and its unique pages an anonymous piece: 128 VMAs over the
 * region (SAMEPAGE_FILL=0 shows it). Once filled, the region is a few VMAs
 * (8 here: a stretch is at most 2048 pages): the unique pages
 * anonymous pages of the pool mapping, still private (frames not shared),
 * no pool memory spent on them (pool_pages: the shared pages only), and
 * every byte, including every write the writers made while their pages
 * were copied, as a shadow copy says; a gap page dropped by a raw
 * MADV_DONTNEED (no wrapper) reads zeros, and so do a gap page that was
 * never present and one merged as a zero page. Unmerged, the same.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define BLOCK 32u
#define SHARED 24u
#define NBLOCKS 64u
#define NPAGES (BLOCK * NBLOCKS)
#define NSHARED (SHARED * NBLOCKS)
#define NPROC 2
/* A unique page never written again after it was dropped: not present,
 * it reads zeros; filled, it maps the zero page, not its hole. */
#define ABSENT ((5 * BLOCK + SHARED + 1) * (size_t)PAGE)
/* A unique page of zeros: merged as a zero page (use_zero_pages), then
 * filled. */
#define ZEROED ((6 * BLOCK + SHARED + 2) * (size_t)PAGE)

/* "zeros": SAMEPAGE_FILL=zeros, unique pages all zeros, no writer (every
 * gap reads zeros: filled without a page changing frame); "all": the
 * default SAMEPAGE_FILL (1), unique pages of data rewritten throughout,
 * each moved out of its mapping under the pin check (evict.c). */
static int zeros;

struct writer {
	unsigned char *p, *shadow;
	atomic_int stop;
	unsigned long rounds;
};

/* Rewrites a word of every unique page, over and over, and the same word
 * of the shadow: a write lost while a page was frozen and copied shows.
 * The rest of each page stays as filled: the pages stay unique (bytes
 * written alike everywhere would make them equal, and merge). */
static void *write_unique(void *arg)
{
	struct writer *w = arg;

	while (!atomic_load(&w->stop)) {
		for (uint32_t b = 0; b < NBLOCKS; b++)
			for (uint32_t i = SHARED; i < BLOCK; i++) {
				size_t off = (size_t)(b * BLOCK + i) * PAGE + (w->rounds % 64) * 8;
				if (off / PAGE * PAGE == ABSENT || off / PAGE * PAGE == ZEROED)
					continue;
				uint64_t v = w->rounds;
				memcpy(w->p + off, &v, 8);
				memcpy(w->shadow + off, &v, 8);
			}
		w->rounds++;
		usleep(1000);
	}
	return NULL;
}

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	unsigned char *p = tu_map(NPAGES * PAGE);
	struct writer w = { .p = p, .shadow = malloc(NPAGES * PAGE) };
	uintptr_t a = (uintptr_t)p;
	pthread_t t;
	char cmd;

	TU_CHECK_RETURN(w.shadow, "malloc");
	for (uint32_t b = 0; b < NBLOCKS; b++) {
		tu_fill(p + (size_t)b * BLOCK * PAGE, SHARED * PAGE, 500 + b);
		tu_fill(p + ((size_t)b * BLOCK + SHARED) * PAGE, (BLOCK - SHARED) * PAGE,
			9000 + 100 * (uint64_t)idx + b);
		if (zeros)
			memset(p + ((size_t)b * BLOCK + SHARED) * PAGE, 0, (BLOCK - SHARED) * PAGE);
	}
	if (zeros)
		atomic_store(&w.stop, 1); /* the writer does nothing */
	TU_CHECK_RETURN(madvise(p + ABSENT, PAGE, MADV_DONTNEED) == 0, "MADV_DONTNEED");
	memset(p + ZEROED, 0, PAGE);
	memcpy(w.shadow, p, NPAGES * PAGE);
	TU_CHECK_RETURN(pthread_create(&t, NULL, write_unique, &w) == 0, "pthread_create");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	TU_CHECK_RETURN(samepage_madvise(p, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise");
	tu_recv(rd, &cmd, 1); /* filled, or given up */
	atomic_store(&w.stop, 1);
	pthread_join(t, NULL);
	TU_CHECK_RETURN(!memcmp(p, w.shadow, NPAGES * PAGE),
			"content differs from the shadow after %lu rounds of writes", w.rounds);
	/* A DONTNEED that bypasses the wrappers (a raw system call) on a
	 * filled gap page reads its hole: zeros, as anonymous memory would,
	 * never another page's bytes. */
	unsigned char *gp = p + (size_t)(3 * BLOCK + SHARED) * PAGE;
	TU_CHECK_RETURN(syscall(SYS_madvise, gp, PAGE, MADV_DONTNEED) == 0, "raw MADV_DONTNEED");
	memset(w.shadow + (gp - p), 0, PAGE);
	TU_CHECK_RETURN(!memcmp(p, w.shadow, NPAGES * PAGE),
			"a gap page dropped behind the wrappers does not read zeros");
	TU_CHECK_RETURN(samepage_madvise(p, NPAGES * PAGE, MADV_UNMERGEABLE) == 0, "unmergeable");
	TU_CHECK_RETURN(!memcmp(p, w.shadow, NPAGES * PAGE), "content differs after unmerging");
	printf("child %d: %lu rounds of writes, every byte right\n", idx, w.rounds);
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	return 0;
}

struct state { pid_t pids[NPROC]; uintptr_t addrs[NPROC]; };

/* Both regions merged (every shared page a pool page) and in few VMAs. */
static int filled(void *arg)
{
	struct state *s = arg;

	for (int i = 0; i < NPROC; i++) {
		uintptr_t a = s->addrs[i];
		if (tu_file_pages(s->pids[i], a, NPAGES) < NSHARED ||
		    tu_vmas_over(s->pids[i], a, a + NPAGES * PAGE) > 12)
			return 0;
	}
	return 1;
}

/* Run this test again in mode m, SAMEPAGE_FILL=fill (NULL: unset, the
 * default): the library reads it from its process's initial environment. */
static int run_mode(const char *self, const char *m, const char *fill)
{
	pid_t pid = fork();
	int st;

	TU_CHECK(pid >= 0, "fork");
	if (!pid) {
		if (fill)
			setenv("SAMEPAGE_FILL", fill, 1);
		else
			unsetenv("SAMEPAGE_FILL");
		execl(self, self, m, (char *)NULL);
		_exit(127);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
	struct tu_child c[NPROC];
	struct state s;
	uintptr_t shared[NPROC];
	long long pool;
	int ok;

	if (argc < 2) {
		int r = run_mode("/proc/self/exe", "all", NULL);
		if (r)
			return r;
		return run_mode("/proc/self/exe", "zeros", "zeros");
	}
	zeros = !strcmp(argv[1], "zeros");
	printf("mode %s\n", argv[1]);
	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
		s.pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d died", i);
	/* Both at once: they create pool pages by turns, and the pool must
	 * still follow one layout (alloc_for() in daemon/lookup.c). */
	tu_send(c[0].wr, "m", 1);
	tu_send(c[1].wr, "m", 1);
	ok = tu_wait(filled, &s, 60);
	for (int i = 0; i < NPROC; i++)
		printf("process %d: %zu pool pages, %d VMAs over %u pages (%u runs of %u shared)\n", i,
		       tu_file_pages(s.pids[i], s.addrs[i], NPAGES),
		       tu_vmas_over(s.pids[i], s.addrs[i], s.addrs[i] + NPAGES * PAGE), NPAGES, NBLOCKS,
		       SHARED);
	TU_CHECK(ok, "not merged into a few VMAs within 60 s");
	/* The shared pages share frames; the unique ones stay each its own
	 * (zeros: the zero page, or not present). */
	for (int i = 0; i < NPROC; i++)
		shared[i] = s.addrs[i];
	TU_CHECK(tu_frames(s.pids, shared, NPROC, SHARED) == SHARED,
		 "the first run's pages do not share frames");
	for (int i = 0; i < NPROC; i++)
		shared[i] = s.addrs[i] + SHARED * PAGE;
	TU_CHECK(zeros || tu_frames(s.pids, shared, NPROC, BLOCK - SHARED) == NPROC * (BLOCK - SHARED),
		 "unique pages share frames");
	/* Holes cost no pool memory. */
	pool = tu_status("pool_pages");
	TU_CHECK(pool >= NSHARED && pool <= NSHARED + 64, "pool_pages %lld for %u shared pages",
		 pool, NSHARED);
	for (int i = 0; i < NPROC; i++)
		tu_send(c[i].wr, "c", 1);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &s.addrs[i], sizeof(uintptr_t)) == 0, "child %d failed", i);
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
	TU_CHECK(tu_wait(tu_pool_empty, NULL, 30), "pool not empty after both exited");
	return 0;
}
