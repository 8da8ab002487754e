/* SPDX-License-Identifier: MIT */
/*
 * Under an address space limit (RLIMIT_AS, `ulimit -v`) the library takes
 * the address space it needs, in steps, never the program's:
 *  (a) two processes limited to their address space + 300 MB mark 64 MiB
 *      of identical content MADV_MERGEABLE: madvise() returns 0 and the
 *      pages merge (one frame per page between them);
 *  (b) each can then still map all of its limit but 48 MiB: the library
 *      took no more (a 1 GiB reservation once left it nothing);
 *  (c) the arena grows: two processes mark 16 GiB of MAP_NORESERVE address
 *      space mergeable (32 MiB of page entries, more than the arena's first
 *      chunk) under a limit of 16 GiB + 300 MB; the 32 MiB written of it
 *      merge, and the library's address space stays near what it needs;
 *  (d) where the arena cannot grow (the limit reached, 32 GiB more marked),
 *      each process says so once on stderr, naming the address space limit
 *      (ulimit -v), and what it tracks still merges: content written anew
 *      merges again;
 *  (e) with python3 installed: `samepage run --merge-any -- python3 -c
 *      'b=bytearray(700<<20)'` under a 1.1 GB limit succeeds, as it does
 *      without samepage.
 * Sanitizer runtimes reserve terabytes of shadow and map more as they go,
 * so a limit means nothing there: only (c) runs, unlimited.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

#define MIB ((size_t)1 << 20)
#define GIB ((size_t)1 << 30)
#define HEADROOM (300 * MIB)
#define LIB_ALLOWANCE (48 * MIB) /* (b): the library's whole address space */
#define NPROC 2

struct reply {
	uintptr_t addr;
	int64_t err;    /* 0 or -errno */
	uint64_t bytes; /* (c): address space the library took */
};

/* This process's address space (VmSize), in bytes. */
static size_t vm_size(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t kb = 0;

	TU_CHECK(f, "/proc/self/status: %s", strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
			break;
	fclose(f);
	TU_CHECK(kb, "no VmSize");
	return kb << 10;
}

static void limit_as(size_t bytes)
{
	struct rlimit r;

	TU_CHECK(getrlimit(RLIMIT_AS, &r) == 0, "getrlimit");
	r.rlim_cur = bytes;
	TU_CHECK(setrlimit(RLIMIT_AS, &r) == 0, "setrlimit(RLIMIT_AS): %s", strerror(errno));
}

static void *map_noreserve(size_t len)
{
	return mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
}

static void say(int wr, uintptr_t addr, int64_t err, uint64_t bytes)
{
	struct reply r = { addr, err, bytes };

	tu_send(wr, &r, sizeof(r));
}

static int madv(void *p, size_t len)
{
	int err = samepage_madvise(p, len, MADV_MERGEABLE);

	return err < 0 ? err : 0;
}

/* ---- (a), (b) ---- */

#define AB_PAGES 16384u /* 64 MiB */

static int child_ab(int rd, int wr, void *arg)
{
	size_t limit = vm_size() + HEADROOM, before;
	unsigned char *p;
	void *q;
	char cmd;

	(void)arg;
	limit_as(limit);
	p = tu_map(AB_PAGES * PAGE);
	tu_fill(p, AB_PAGES * PAGE, 42);
	before = vm_size(); /* the program's own, the library not there yet */
	say(wr, (uintptr_t)p, madv(p, AB_PAGES * PAGE), 0);
	tu_recv(rd, &cmd, 1); /* merged */
	q = mmap(NULL, limit - before - LIB_ALLOWANCE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	say(wr, 0, q == MAP_FAILED ? -errno : 0, vm_size() - before);
	tu_recv(rd, &cmd, 1);
	return 0;
}

struct state { pid_t pids[NPROC]; uintptr_t addrs[NPROC]; size_t pages; };

static int merged(void *arg)
{
	struct state *s = arg;

	return tu_frames(s->pids, s->addrs, NPROC, s->pages) <= s->pages + 8;
}

static void start(struct tu_child *c, struct state *s, size_t pages,
		  int (*fn)(int, int, void *), const char *what)
{
	struct reply r;

	s->pages = pages;
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], fn, (void *)(intptr_t)i);
		s->pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(tu_recv(c[i].rd, &r, sizeof(r)) == 0, "%s: child %d died", what, i);
		TU_CHECK(r.err == 0, "%s: madvise(MADV_MERGEABLE) under RLIMIT_AS: %s", what,
			 strerror((int)-r.err));
		s->addrs[i] = r.addr;
	}
}

static void wait_merged(struct state *s, const char *what)
{
	double t0 = tu_now();

	TU_CHECK(tu_wait(merged, s, 60), "%s: not merged after 60 s: %zu frames for %zu pages",
		 what, tu_frames(s->pids, s->addrs, NPROC, s->pages), s->pages);
	printf("%s: merged %zu pages x %d processes in %.2f s\n", what, s->pages, NPROC,
	       tu_now() - t0);
}

static void finish(struct tu_child *c)
{
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d exit", i);
	}
}

static void case_ab(void)
{
	struct tu_child c[NPROC];
	struct state s;
	struct reply r;

	start(c, &s, AB_PAGES, child_ab, "(a) limit + 300 MB");
	wait_merged(&s, "(a) limit + 300 MB");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "b", 1);
		TU_CHECK(tu_recv(c[i].rd, &r, sizeof(r)) == 0, "(b): child %d died", i);
		TU_CHECK(r.err == 0, "(b): mapping all of RLIMIT_AS but %zu MiB failed: %s",
			 LIB_ALLOWANCE / MIB, strerror((int)-r.err));
	}
	printf("(b) all of the limit but %zu MiB still mapped\n", LIB_ALLOWANCE / MIB);
	finish(c);
}

/* ---- (c) ---- */

#define C_SPAN (16 * GIB)
#define C_PAGES 8192u /* 32 MiB written */

static int child_c(int rd, int wr, void *arg)
{
	size_t before;
	unsigned char *p;
	char cmd;
	int err;

	(void)arg;
	if (!SANITIZED)
		limit_as(vm_size() + C_SPAN + HEADROOM);
	p = map_noreserve(C_SPAN);
	TU_CHECK(p != MAP_FAILED, "mmap 16 GiB: %s", strerror(errno));
	tu_fill(p, C_PAGES * PAGE, 42);
	before = vm_size();
	err = madv(p, C_SPAN);
	say(wr, (uintptr_t)p, err, 0);
	tu_recv(rd, &cmd, 1); /* merged: the scanner has the entries */
	say(wr, 0, 0, vm_size() - before);
	tu_recv(rd, &cmd, 1);
	return 0;
}

static void case_c(void)
{
	struct tu_child c[NPROC];
	struct state s;
	struct reply r;

	start(c, &s, C_PAGES, child_c, "(c) 16 GiB marked");
	wait_merged(&s, "(c) 16 GiB marked");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "v", 1);
		TU_CHECK(tu_recv(c[i].rd, &r, sizeof(r)) == 0, "(c): child %d died", i);
		printf("(c) child %d: the library took %llu MiB of address space\n", i,
		       (unsigned long long)(r.bytes / MIB));
		/* 32 MiB of entries, a first chunk, a modest step of growth */
		TU_CHECK(SANITIZED || r.bytes <= 112 * MIB,
			 "(c): the library took %llu MiB for 16 GiB marked",
			 (unsigned long long)(r.bytes / MIB));
	}
	finish(c);
}

/* ---- (d) ---- */

#define D_SPAN (32 * GIB) /* 64 MiB of entries: more than any room left */
#define D_PAGES 4096u     /* 16 MiB tracked */
#define D_SPARE (32 * MIB) /* left free: restoring written pages needs some */

static char errfile[NPROC][64];

/* Map everything RLIMIT_AS still allows, in PROT_NONE pieces. */
static void fill_address_space(void)
{
	for (size_t sz = GIB; sz >= 64 << 10;) {
		if (mmap(NULL, sz, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) ==
		    MAP_FAILED)
			sz >>= 1;
	}
}

static int child_d(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg, fd;
	unsigned char *t, *big;
	void *spare;
	char cmd;

	fd = open(errfile[idx], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	TU_CHECK(fd >= 0 && dup2(fd, 2) == 2, "stderr to %s", errfile[idx]);
	limit_as(vm_size() + D_SPAN + HEADROOM);
	t = tu_map(D_PAGES * PAGE);
	tu_fill(t, D_PAGES * PAGE, 42);
	big = map_noreserve(D_SPAN + PAGE);
	TU_CHECK(big != MAP_FAILED, "mmap 32 GiB: %s", strerror(errno));
	/* A hole: MADV_MERGEABLE ranges that touch t would fold into one. */
	munmap(big + D_SPAN, PAGE);
	say(wr, (uintptr_t)t, madv(t, D_PAGES * PAGE), 0);
	tu_recv(rd, &cmd, 1); /* merged */
	spare = mmap(NULL, D_SPARE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(spare != MAP_FAILED, "mmap spare");
	fill_address_space();
	munmap(spare, D_SPARE);
	say(wr, 0, madv(big, D_SPAN), 0);
	tu_recv(rd, &cmd, 1); /* the library said it: write anew */
	tu_fill(t, D_PAGES * PAGE, 43);
	say(wr, 0, 0, 0);
	tu_recv(rd, &cmd, 1);
	return 0;
}

/* Lines of the child's stderr naming the address space limit; the last
 * one in last when not NULL. */
static int said_line(int idx, char *last, size_t len)
{
	FILE *f = fopen(errfile[idx], "r");
	char line[512];
	int n = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (!strstr(line, "address space limit (ulimit -v)"))
			continue;
		n++;
		if (last)
			snprintf(last, len, "%s", line);
	}
	fclose(f);
	return n;
}

static int said(int idx)
{
	return said_line(idx, NULL, 0);
}

static int both_said(void *arg)
{
	(void)arg;
	return said(0) && said(1);
}

static void case_d(void)
{
	struct tu_child c[NPROC];
	struct state s;
	struct reply r;

	for (int i = 0; i < NPROC; i++)
		snprintf(errfile[i], sizeof(errfile[i]), "/tmp/sp-rlimit-%d-%d.err", (int)getpid(), i);
	start(c, &s, D_PAGES, child_d, "(d) limit reached");
	wait_merged(&s, "(d) before the limit is reached");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "f", 1);
		TU_CHECK(tu_recv(c[i].rd, &r, sizeof(r)) == 0, "(d): child %d died", i);
		TU_CHECK(r.err == 0, "(d): madvise of 32 GiB more: %s", strerror((int)-r.err));
	}
	TU_CHECK(tu_wait(both_said, NULL, 30),
		 "(d): no \"address space limit (ulimit -v)\" line on stderr after 30 s");
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "w", 1);
		TU_CHECK(tu_recv(c[i].rd, &r, sizeof(r)) == 0, "(d): child %d died", i);
	}
	wait_merged(&s, "(d) written anew, the limit reached");
	for (int i = 0; i < NPROC; i++) {
		char line[512] = "";
		int n = said_line(i, line, sizeof(line));
		TU_CHECK(n == 1, "(d): child %d said it %d times", i, n);
		printf("(d) child %d said once: %s", i, line);
	}
	finish(c);
	for (int i = 0; i < NPROC; i++)
		unlink(errfile[i]);
}

/* ---- (e) ---- */

#define E_LIMIT 1100000000ul

static const char *find_python(char *buf, size_t len)
{
	const char *path = getenv("PATH");

	if (access("/usr/bin/python3", X_OK) == 0)
		return "/usr/bin/python3";
	while (path && *path) {
		const char *end = strchrnul(path, ':');
		snprintf(buf, len, "%.*s/python3", (int)(end - path), path);
		if (access(buf, X_OK) == 0)
			return buf;
		path = *end ? end + 1 : end;
	}
	return NULL;
}

/* Exit status of argv run under RLIMIT_AS of E_LIMIT bytes. */
static int run_limited(char *const argv[])
{
	int st;
	pid_t pid = fork();

	TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct rlimit r;
		getrlimit(RLIMIT_AS, &r);
		r.rlim_cur = E_LIMIT;
		if (setrlimit(RLIMIT_AS, &r) < 0)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void case_e(void)
{
	char buf[PATH_MAX], cli[PATH_MAX], code[] = "b = bytearray(700 << 20)";
	const char *py = find_python(buf, sizeof(buf));
	int rc;

	if (!py) {
		printf("(e) skipped: no python3\n");
		return;
	}
	snprintf(cli, sizeof(cli), "%s", tu_bin("samepage"));
	char *plain[] = { (char *)py, "-c", code, NULL };
	if (run_limited(plain) != 0) {
		printf("(e) skipped: %s needs more than 1.1 GB for 700 MiB even alone\n", py);
		return;
	}
	char *run[] = { cli, "run", "--merge-any", "--", (char *)py, "-c", code, NULL };
	rc = run_limited(run);
	TU_CHECK(rc == 0, "(e): samepage run --merge-any -- %s -c '%s' under a 1.1 GB limit: exit %d",
		 py, code, rc);
	printf("(e) python3 allocated 700 MiB under a 1.1 GB limit with merge-any\n");
}

int main(void)
{
	tu_require_merging();
	tu_private_daemon();
	/* Start the daemon here, unlimited: a limited process would pass its
	 * limit on to the daemon it spawns. */
	TU_CHECK(tu_cli("set pages_to_scan=100000 sleep_millisecs=20") == 0, "samepage set");
	if (!SANITIZED) {
		case_ab();
		case_d();
	}
	case_c();
	if (!SANITIZED)
		case_e();
	else
		printf("sanitizer build: limits skipped, (c) ran unlimited\n");
	return 0;
}
