/* SPDX-License-Identifier: MIT */
/*
 * demo — the program demo.sh runs, in two roles.
 *
 *   demo hold --mib M --private-kib K --id I
 *       An ordinary program, written as software for kernel KSM is: it
 *       builds M MiB of data that every instance builds identically (think
 *       of a model, a lookup table or a guest OS image loaded by each
 *       worker) plus K KiB of its own, marks them with
 *       madvise(MADV_MERGEABLE), prints "ready", and waits. On SIGUSR1 it
 *       checks every byte against what it wrote and exits 0 (all intact) or
 *       1. It knows nothing of samepage: run it under `samepage run` and
 *       the madvise is served by samepage instead of the kernel.
 *
 *   demo mem [--pss] [--daemon LOCKFILE] PID...
 *       Memory of those processes (and of the samepage daemon holding
 *       LOCKFILE): one line "KIB_PROCS KIB_TOTAL METHOD DAEMON_PID".
 *       METHOD "frames": distinct physical page frames over every mapping of
 *       the processes, from /proc/PID/pagemap (needs root; a frame that
 *       several processes map counts once, as memory does). METHOD "pss":
 *       the sum of Pss from /proc/PID/smaps_rollup (each shared page split
 *       among its mappers), which works without root (or asked for with
 *       --pss). KIB_TOTAL includes
 *       the daemon, whose pool holds the merged pages.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define DATA_SEED 0x5a4d5ea1u

/* ---- hold ---- */

/* Page i of a stream: xorshift seeded by (seed, i), so any page can be
 * checked on its own without keeping a second copy around. */
static void fill_page(unsigned char *pg, uint64_t seed, size_t i)
{
	uint64_t x = (seed * 0x9E3779B97F4A7C15ull) ^ ((i + 1) * 0xBF58476D1CE4E5B9ull);
	uint64_t *q = (uint64_t *)pg;

	x |= 1;
	for (size_t k = 0; k < PAGE / 8; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		q[k] = x;
	}
}

static size_t check(const unsigned char *p, size_t npages, uint64_t seed)
{
	unsigned char want[PAGE];
	size_t bad = 0;

	for (size_t i = 0; i < npages; i++) {
		fill_page(want, seed, i);
		bad += memcmp(p + i * PAGE, want, PAGE) != 0;
	}
	return bad;
}

static int hold(int argc, char **argv)
{
	size_t mib = 64, priv_kib = 1024, shared_pages, priv_pages, len, bad;
	unsigned char *p;
	uint64_t priv_seed;
	int id = 0, sig;
	sigset_t set;

	for (int i = 0; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mib"))
			mib = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--private-kib"))
			priv_kib = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--id"))
			id = atoi(argv[i + 1]);
	}
	shared_pages = mib * 256;
	priv_pages = (priv_kib + 3) / 4;
	priv_seed = DATA_SEED + 1 + (uint64_t)id;
	len = (shared_pages + priv_pages) * PAGE;

	/* SIGUSR1 is waited for, not handled: block it before anyone can send it. */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);

	/* The common data, then this process's own, in one mapping. */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "demo %d: mmap %zu MiB: %s\n", id, len >> 20, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < shared_pages; i++)
		fill_page(p + i * PAGE, DATA_SEED, i);
	for (size_t i = 0; i < priv_pages; i++)
		fill_page(p + (shared_pages + i) * PAGE, priv_seed, i);
	/* What a program written for kernel KSM does (QEMU's mem-merge, say). */
	if (madvise(p, len, MADV_MERGEABLE) != 0)
		fprintf(stderr, "demo %d: madvise(MADV_MERGEABLE): %s\n", id, strerror(errno));
	printf("ready %d\n", (int)getpid());
	fflush(stdout);

	if (sigwait(&set, &sig) || sig != SIGUSR1)
		return 2;
	bad = check(p, shared_pages, DATA_SEED) +
	      check(p + shared_pages * PAGE, priv_pages, priv_seed);
	printf("process %d (pid %d): %zu MiB common + %zu KiB own data: %s\n", id, (int)getpid(),
	       mib, priv_kib, bad ? "CORRUPTED" : "every byte intact");
	if (bad)
		printf("process %d: %zu pages differ from what it wrote\n", id, bad);
	return bad ? 1 : 0;
}

/* ---- mem ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct pfns {
	uint64_t *v;
	size_t n, cap;
	int hidden; /* present pages with PFN 0: not root, PFNs are hidden */
};

static int pfns_push(struct pfns *f, uint64_t pfn)
{
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 1 << 16;
		uint64_t *v = realloc(f->v, cap * sizeof(*v));
		if (!v)
			return -1;
		f->v = v;
		f->cap = cap;
	}
	f->v[f->n++] = pfn;
	return 0;
}

/* Present frames of every mapping of pid. */
static int collect(pid_t pid, struct pfns *f)
{
	char path[64], line[512];
	static uint64_t e[16384];
	FILE *maps;
	int pm;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	pm = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	maps = fopen(path, "r");
	if (pm < 0 || !maps) {
		if (pm >= 0)
			close(pm);
		if (maps)
			fclose(maps);
		return -1;
	}
	while (fgets(line, sizeof(line), maps)) {
		uintptr_t s, end;
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR, &s, &end) != 2 || strstr(line, "[vsyscall]"))
			continue;
		for (uintptr_t a = s; a < end;) {
			size_t n = (end - a) / PAGE < 16384 ? (end - a) / PAGE : 16384;
			ssize_t r = pread(pm, e, n * 8, (off_t)(a / PAGE * 8));
			if (r <= 0)
				break;
			n = (size_t)r / 8;
			for (size_t i = 0; i < n; i++) {
				if (!(e[i] >> 63))
					continue;
				uint64_t pfn = e[i] & ((1ull << 55) - 1);
				if (!pfn)
					f->hidden = 1;
				else if (pfns_push(f, pfn))
					return -1;
			}
			a += n * PAGE;
		}
	}
	fclose(maps);
	close(pm);
	return 0;
}

static size_t distinct(struct pfns *f)
{
	size_t d = 0;

	qsort(f->v, f->n, sizeof(*f->v), cmp_u64);
	for (size_t i = 0; i < f->n; i++)
		d += !i || f->v[i] != f->v[i - 1];
	return d;
}

static long long pss_kib(pid_t pid)
{
	char path[64], line[256];
	long long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %lld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* The process that holds path open: the daemon holds its lock file. */
static pid_t holder_of(const char *path)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	pid_t found = 0;

	while (d && !found && (de = readdir(d))) {
		char fdir[64];
		pid_t pid = atoi(de->d_name);
		DIR *fds;
		struct dirent *fe;
		if (pid <= 0)
			continue;
		snprintf(fdir, sizeof(fdir), "/proc/%d/fd", (int)pid);
		fds = opendir(fdir);
		while (fds && !found && (fe = readdir(fds))) {
			char link[64 + sizeof(fe->d_name)], target[PATH_MAX];
			ssize_t n;
			snprintf(link, sizeof(link), "%s/%s", fdir, fe->d_name);
			n = readlink(link, target, sizeof(target) - 1);
			if (n > 0) {
				target[n] = 0;
				found = strcmp(target, path) ? 0 : pid;
			}
		}
		if (fds)
			closedir(fds);
	}
	if (d)
		closedir(d);
	return found;
}

static int mem(int argc, char **argv)
{
	struct pfns f = { 0 };
	pid_t daemon = 0, pids[256];
	int n = 0, hidden, want_pss = 0;
	long long procs = 0, total;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--daemon") && i + 1 < argc)
			daemon = holder_of(argv[++i]);
		else if (!strcmp(argv[i], "--pss"))
			want_pss = 1;
		else if (n < 256)
			pids[n++] = atoi(argv[i]);
	}
	for (int i = 0; i < n && !want_pss; i++)
		if (collect(pids[i], &f))
			return 1;
	hidden = want_pss || f.hidden || (n && !f.n);
	if (!hidden) {
		procs = (long long)distinct(&f) * 4;
		if (daemon > 0 && collect(daemon, &f) == 0 && !f.hidden)
			total = (long long)distinct(&f) * 4;
		else
			total = procs;
		printf("%lld %lld frames %d\n", procs, total, (int)daemon);
	} else {
		for (int i = 0; i < n; i++)
			procs += pss_kib(pids[i]) > 0 ? pss_kib(pids[i]) : 0;
		total = procs + (daemon > 0 && pss_kib(daemon) > 0 ? pss_kib(daemon) : 0);
		printf("%lld %lld pss %d\n", procs, total, (int)daemon);
	}
	free(f.v);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "hold"))
		return hold(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "mem"))
		return mem(argc - 2, argv + 2);
	fprintf(stderr, "usage: demo hold [--mib M] [--private-kib K] [--id I]\n"
			"       demo mem [--pss] [--daemon LOCKFILE] PID...\n");
	return 2;
}
