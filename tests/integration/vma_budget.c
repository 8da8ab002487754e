/* SPDX-License-Identifier: MIT */
/*
 * Invariant 7: the VMA budget.
 *
 * vm.max_map_count is lowered to 2000 for the duration of the test (the
 * original value is put back on every way out: normal exit, failure,
 * signals, and by the parent process once the test child is gone). Then A
 * and B hold the same 4096 distinct pages, scattered: A's page i is B's
 * page (i * 7919) % 4096, so the pool pages one of them maps cannot form
 * runs and each merge costs that process a VMA of its own. While merging
 * goes on, the test samples both processes' VMA counts (lines of
 * /proc/PID/maps): neither may exceed 75% of the limit. Merging stops for
 * that reason and says so (vma_limited > 0), every byte stays correct, and
 * the application can still create VMAs of its own afterwards, which
 * samepage then leaves to it.
 *
 * At the budget, merging backs off instead of spinning: over 4 s neither
 * process spends more than 1% of a core (CPU from /proc/PID/stat), and
 * `samepage status` says why (merge_limited for each, processes_limited).
 * When the application unmaps VMAs it had before merging reached the
 * budget (PRE_VMAS of them, made at start), there is room: merging resumes
 * (frames fall further) and stops again at the budget. Defragmentation,
 * which would give VMAs back on its own, is kept out (SAMEPAGE_DEFRAG_VMAS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define LIMIT 2000
#define N 4096u
#define STRIDE 7919u
#define APP_VMAS 400 /* VMAs the application makes itself afterwards (of 500 left) */
#define PRE_VMAS 300 /* VMAs the application holds from the start, freed at the end */

static const char *const sysctl = "/proc/sys/vm/max_map_count";
static char original[32];
static pid_t guardian, tester;

static int write_sysctl(const char *v)
{
	int fd = open(sysctl, O_WRONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? write(fd, v, strlen(v)) : -1;

	if (fd >= 0)
		close(fd);
	return n == (ssize_t)strlen(v) ? 0 : -1;
}

static void restore(void)
{
	if (original[0] && getpid() == guardian)
		write_sysctl(original);
}

static void on_signal(int sig)
{
	restore();
	if (tester > 0)
		kill(-tester, SIGKILL); /* the test and its processes */
	signal(sig, SIG_DFL);
	raise(sig);
}

/* ---- A and B ---- */

static void fill_page(unsigned char *p, size_t content)
{
	tu_fill(p, PAGE, 1000 + content);
}

struct reply { uintptr_t addr; int ok; int app_vmas; };
static unsigned char *app_q; /* the application's own VMAs ('m'), in a holder */
static unsigned char *pre_q; /* ... and those it held from the start ('p' frees them) */

/* n VMAs of the application's own: every other page of a PROT_NONE
 * reserve made writable (two VMAs per mprotect). */
static unsigned char *own_vmas(int n, int *made)
{
	unsigned char *q = mmap(NULL, (size_t)(n + 2) * PAGE, PROT_NONE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	*made = 0;
	if (q == MAP_FAILED)
		return NULL;
	for (int i = 0; i < n / 2; i++)
		*made += 2 * (mprotect(q + (2 * i + 1) * PAGE, PAGE, PROT_READ | PROT_WRITE) == 0);
	return q;
}

static int holder(int rd, int wr, void *arg)
{
	int scattered = (int)(intptr_t)arg;
	unsigned char *p = tu_map((size_t)N * PAGE), *ref = malloc((size_t)N * PAGE);
	struct reply r = { .addr = (uintptr_t)p, .ok = 1 };
	char cmd;

	for (size_t i = 0; i < N; i++)
		fill_page(p + (scattered ? (i * STRIDE) % N : i) * PAGE, i);
	memcpy(ref, p, (size_t)N * PAGE);
	pre_q = own_vmas(PRE_VMAS, &r.app_vmas);
	TU_CHECK(pre_q && r.app_vmas == PRE_VMAS, "the application's first VMAs");
	TU_CHECK(madvise(p, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &r, sizeof(r));
	while (tu_recv(rd, &cmd, 1) == 0) {
		r.ok = !memcmp(p, ref, (size_t)N * PAGE);
		if (cmd == 'm') {
			/* The application maps memory of its own: APP_VMAS
			 * VMAs, then more. */
			unsigned char *q = own_vmas(APP_VMAS, &r.app_vmas);
			app_q = q;
			void *x = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			r.ok = r.ok && q && x != MAP_FAILED &&
			       munmap(x, 1 << 20) == 0;
			if (r.ok)
				memset(q + PAGE, 1, PAGE);
		} else if (cmd == 'u') { /* the application's VMAs go again */
			void *q = mmap(NULL, 1, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			munmap(q, 1);
			r.ok = r.ok && app_q && munmap(app_q, (APP_VMAS + 2) * PAGE) == 0;
		} else if (cmd == 'p') { /* ... and those it had from the start */
			r.ok = r.ok && munmap(pre_q, (PRE_VMAS + 2) * PAGE) == 0;
		} else if (cmd == 'q') {
			return 0;
		}
		tu_send(wr, &r, sizeof(r));
	}
	return 3;
}

/* ---- the test, in a child of the guardian ---- */

static struct tu_child A, B;
static uintptr_t aa, ba;

static int vmas(pid_t pid)
{
	char path[64], buf[65536];
	int fd, n = 0;
	ssize_t r;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	TU_CHECK(fd >= 0, "open %s", path);
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < r; i++)
			n += buf[i] == '\n';
	close(fd);
	return n;
}


static size_t frames(void)
{
	pid_t p[2] = { A.pid, B.pid };
	uintptr_t a[2] = { aa, ba };

	return tu_frames(p, a, 2, N);
}

static long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	TU_CHECK(f && fgets(buf, sizeof(buf), f), "read %s", path);
	fclose(f);
	p = strrchr(buf, ')');
	TU_CHECK(p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
			     &st) == 2, "parse %s", path);
	return (long)(ut + st);
}

/* At the budget: both processes nearly idle, and the status says why. */
static void idle_at_budget(void)
{
	long a0 = cpu_ticks(A.pid), b0 = cpu_ticks(B.pid), hz = sysconf(_SC_CLK_TCK);
	char cmd[256], out[4096];
	FILE *f;
	size_t n;

	sleep(4);
	long a = cpu_ticks(A.pid) - a0, b = cpu_ticks(B.pid) - b0;
	printf("at the budget, over 4 s: A %.2f s, B %.2f s of CPU; pages_moved %lld\n",
	       (double)a / hz, (double)b / hz, tu_status("pages_moved"));
	/* 1% of a core over 4 s, and a tick of rounding; 2% under a
	 * sanitizer, whose runtime makes each idle pass several times dearer
	 * (TSan measured 0.02-0.06 s here, with filling gaps or without). */
	long most = hz * 4 * (getenv("SAMEPAGE_SAN") && *getenv("SAMEPAGE_SAN") ? 2 : 1) / 100 + 1;
	TU_CHECK(a <= most && b <= most,
		 "spinning at the VMA budget: A %.2f s, B %.2f s of CPU in 4 s", (double)a / hz,
		 (double)b / hz);
	TU_CHECK(tu_status("processes_limited") >= 1, "status: processes_limited %lld "
		 "(pages_moved %lld)", tu_status("processes_limited"), tu_status("pages_moved"));
	/* Whichever reached the budget says so (the other may wait for its
	 * partner's pages, unlimited itself). */
	snprintf(cmd, sizeof(cmd), "%s status --json --pid %d; %s status --json --pid %d",
		 tu_bin("samepage"), (int)A.pid, tu_bin("samepage"), (int)B.pid);
	f = popen(cmd, "r");
	TU_CHECK(f, "popen");
	n = fread(out, 1, sizeof(out) - 1, f);
	pclose(f);
	out[n] = 0;
	TU_CHECK(strstr(out, "\"merge_limited\": 1"), "status --pid of A and B does not say "
		 "either is limited: %s", out);
}

static struct reply ask(struct tu_child *c, char cmd, const char *who)
{
	struct reply r;

	TU_CHECK(tu_send(c->wr, &cmd, 1) == 0 && tu_recv(c->rd, &r, sizeof(r)) == 0,
		 "%s died", who);
	return r;
}

static int test(void)
{
	const int cap = LIMIT * 3 / 4;
	int maxa = 0, maxb = 0, va, vb, base_a, base_b;
	size_t f = 2 * N, last_f = 2 * N;
	double t0, last_change;
	long long limited;
	struct reply ra, rb;

	tu_spawn(&A, holder, (void *)0);
	tu_spawn(&B, holder, (void *)1);
	TU_CHECK(tu_recv(A.rd, &ra, sizeof(ra)) == 0 && tu_recv(B.rd, &rb, sizeof(rb)) == 0,
		 "A or B died");
	aa = ra.addr;
	ba = rb.addr;
	base_a = vmas(A.pid);
	base_b = vmas(B.pid);
	printf("max_map_count %d, budget 75%% = %d; VMAs before merging: A %d, B %d\n", LIMIT,
	       cap, base_a, base_b);

	/* Sample VMA counts while merging runs, until it has stopped for 3 s. */
	t0 = last_change = tu_now();
	while (tu_now() < t0 + 45 && tu_now() < last_change + 3) {
		va = vmas(A.pid);
		vb = vmas(B.pid);
		maxa = va > maxa ? va : maxa;
		maxb = vb > maxb ? vb : maxb;
		TU_CHECK(va <= cap && vb <= cap,
			 "VMAs above 75%% of max_map_count (%d): A %d, B %d, %.2f s into merging",
			 LIMIT, va, vb, tu_now() - t0);
		f = frames();
		if (f != last_f) {
			last_f = f;
			last_change = tu_now();
		}
		usleep(2000);
	}
	limited = tu_status("vma_limited");
	printf("merging stopped after %.1f s: %zu frames for %u pages x 2 (%zu merged); "
	       "most VMAs: A %d, B %d; vma_limited %lld; merge_vmas %lld\n",
	       last_change - t0, f, N, 2 * N - f, maxa, maxb, limited, tu_status("merge_vmas"));
	TU_CHECK(2 * N - f >= (size_t)cap / 4, "only %zu pages merged before merging stopped",
		 2 * N - f);
	TU_CHECK(f > N + 8, "all pages merged: no budget needed (runs formed?), test inconclusive");
	TU_CHECK(limited > 0, "merging stopped short (%zu of %u pages unmerged) but vma_limited is "
		 "%lld", f - N, N, limited);
	TU_CHECK(ask(&A, 'v', "A").ok, "A's memory is wrong");
	TU_CHECK(ask(&B, 'v', "B").ok, "B's memory is wrong");
	idle_at_budget();

	/* The application still has room for VMAs of its own. */
	ra = ask(&A, 'm', "A");
	rb = ask(&B, 'm', "B");
	TU_CHECK(ra.app_vmas == APP_VMAS && rb.app_vmas == APP_VMAS,
		 "the application could create only %d (A) and %d (B) of %d VMAs", ra.app_vmas,
		 rb.app_vmas, APP_VMAS);
	TU_CHECK(ra.ok && rb.ok, "mmap failed or memory wrong after the application's mappings");
	va = vmas(A.pid);
	vb = vmas(B.pid);
	printf("the application mapped %d VMAs more: A %d, B %d\n", APP_VMAS, va, vb);
	/* ... and samepage does not take that room back. */
	t0 = tu_now();
	while (tu_now() < t0 + 2) {
		int a2 = vmas(A.pid), b2 = vmas(B.pid);
		TU_CHECK(a2 <= va + 8 && b2 <= vb + 8, "samepage took more VMAs after the "
			 "application's: A %d -> %d, B %d -> %d", va, a2, vb, b2);
		usleep(20000);
	}
	/* The application gives those VMAs back: nothing to resume, since
	 * merging stopped at the budget before they came. */
	ra = ask(&A, 'u', "A");
	rb = ask(&B, 'u', "B");
	TU_CHECK(ra.ok && rb.ok, "munmap of the application's VMAs");
	/* It frees VMAs it had before the budget was reached: merging resumes. */
	size_t before = frames();
	ra = ask(&A, 'p', "A");
	rb = ask(&B, 'p', "B");
	TU_CHECK(ra.ok && rb.ok, "munmap of the application's first VMAs");
	t0 = tu_now();
	while (frames() >= before && tu_now() < t0 + 20)
		usleep(100000);
	printf("room again: %zu frames -> %zu in %.1f s\n", before, frames(), tu_now() - t0);
	TU_CHECK(frames() < before, "merging did not resume after the application freed %d VMAs",
		 PRE_VMAS);
	TU_CHECK(ask(&A, 'v', "A").ok && ask(&B, 'v', "B").ok, "memory wrong at the end");
	tu_send(A.wr, "q", 1);
	tu_send(B.wr, "q", 1);
	TU_CHECK(tu_reap(&A) == 0 && tu_reap(&B) == 0, "exit");
	return 0;
}

int main(void)
{
	char now[32], limit[16];
	int fd, st;
	ssize_t n;
	pid_t t;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	/* vm.max_map_count is the whole machine's: a lowered limit fails the
	 * tests beside it (a fork child's mmap, seen) and stops the QEMU of
	 * the examples, so test.sh runs this with nothing beside it
	 * (tests/run.sh's ALONE). */
	tu_require_merging();
	tu_private_daemon();
	/* The budget alone: defragmentation (past 1/8 of the limit, 250 here)
	 * would gather A's and B's scattered pages, give VMAs back and so end
	 * the limit it is here to show (thousands of pages moved; once,
	 * beside other tests, `processes_limited` read 0 at the check).
	 * tests/integration/defrag.c tests it. */
	setenv("SAMEPAGE_DEFRAG_VMAS", "100000000", 1);
	fd = open(sysctl, O_RDONLY | O_CLOEXEC);
	n = fd >= 0 ? read(fd, original, sizeof(original) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		tu_skip("cannot read /proc/sys/vm/max_map_count");
	original[n] = 0;
	guardian = getpid();
	atexit(restore);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGQUIT, on_signal);
	signal(SIGALRM, on_signal);
	alarm(120);
	snprintf(limit, sizeof(limit), "%d", LIMIT);
	if (write_sysctl(limit))
		tu_skip("cannot write /proc/sys/vm/max_map_count");

	/* The processes of the test read the limit when they start merging. */
	fflush(stdout);
	t = fork();
	TU_CHECK(t >= 0, "fork: %m");
	if (t == 0) {
		setpgid(0, 0);
		int rc = test();
		fflush(stdout);
		_exit(rc);
	}
	setpgid(t, t);
	tester = t;
	while (waitpid(t, &st, 0) < 0 && errno == EINTR)
		;
	/* A and B, if a failure left them behind, go before the daemon does
	 * (at exit): their scanners would start a new one. */
	kill(-t, SIGKILL);
	for (int i = 0; i < 100 && kill(-t, 0) == 0; i++)
		usleep(20000);
	restore();
	fd = open(sysctl, O_RDONLY | O_CLOEXEC);
	n = fd >= 0 ? read(fd, now, sizeof(now) - 1) : -1;
	if (fd >= 0)
		close(fd);
	now[n > 0 ? n : 0] = 0;
	TU_CHECK(!strcmp(now, original), "max_map_count is %s, was %s", now, original);
	if (!WIFEXITED(st))
		TU_FAIL("the test died of signal %d", WTERMSIG(st));
	return WEXITSTATUS(st);
}
