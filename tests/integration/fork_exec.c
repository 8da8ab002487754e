/* SPDX-License-Identifier: MIT */
/*
 * Invariant 2 across fork, exec and exit.
 *
 * A and B merge the same 10 MiB (an 8 MiB part M that the fork child reads
 * at every step and a 2 MiB part U it first touches at the very end). A
 * forks C through the fork() wrapper, so C holds a copy of A's pool
 * references (C_FORK, made before C existed). Then, one step at a time, A writes some merged pages, A
 * unmerges its whole range (MADV_UNMERGEABLE), B exits, and A merges NEW
 * content (which needs new pool pages: if C's references had been lost,
 * the daemon would hand C's pool pages out again and C would read foreign
 * data). After each step C compares its memory byte for byte with a
 * reference. C's untouched pages have no page-table entries after fork,
 * which is what makes them the dangerous ones.
 *
 * Then references go away promptly: C exits (the pool shrinks to A's
 * pages), A forks D which execs /bin/sleep (D's copy of the references
 * goes at exec, when nobody maps its marker, while D keeps running), and A exits: pool_pages reaches 0. Last,
 * a process that exits leaves nothing behind in the daemon's unstable
 * index: a process started after it, holding the same unique pages, finds
 * no partner.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NM 2048u        /* pages C reads at every step */
#define NU 512u         /* pages C touches only at the end */
#define NT (NM + NU)
#define SEED_X 42
#define SEED_NEW 43

extern char **environ;

/* C's pipe ends, made by main before A exists. */
static int c_down[2], c_up[2];

static int first_diff(const unsigned char *a, const unsigned char *b, size_t n)
{
	for (size_t pg = 0; pg < n / PAGE; pg++)
		if (memcmp(a + pg * PAGE, b + pg * PAGE, PAGE))
			return (int)pg;
	return -1;
}

static int is_zero_page(const unsigned char *p)
{
	for (unsigned i = 0; i < PAGE; i++)
		if (p[i])
			return 0;
	return 1;
}

/* ---- C: A's fork child ---- */

static unsigned char *foreign; /* the NEW content, to name what C might read */

/* Compare [p, p + npages) with ref; 0 or a message. */
static int verify(const char *what, const unsigned char *p, const unsigned char *ref,
		  size_t npages, size_t first_page, char *msg, size_t msglen)
{
	int pg = first_diff(p, ref, npages * PAGE);

	if (pg < 0)
		return 0;
	size_t idx = first_page + (size_t)pg;
	const char *kind = is_zero_page(p + (size_t)pg * PAGE) ? "zeros" : "foreign data";

	for (size_t i = 0; i < NT; i++)
		if (!memcmp(p + (size_t)pg * PAGE, foreign + i * PAGE, PAGE))
			kind = "a page of A's NEW content (its pool page was handed out again)";
	size_t bad = 0;
	for (size_t i = 0; i < npages; i++)
		bad += memcmp(p + i * PAGE, ref + i * PAGE, PAGE) != 0;
	snprintf(msg, msglen, "%s: %zu of %zu pages wrong, first page %zu reads %s", what, bad,
		 npages, idx, kind);
	return -1;
}

static void c_main(unsigned char *p, unsigned char *ref)
{
	char cmd, msg[256];
	int rd = c_down[0], wr = c_up[1];

	for (;;) {
		if (tu_recv(rd, &cmd, 1))
			_exit(3);
		memset(msg, 0, sizeof(msg));
		switch (cmd) {
		case 'v': /* read M, every byte */
			verify("C's M", p, ref, NM, 0, msg, sizeof(msg));
			break;
		case 'w': /* C writes too: its own copies must stay its own */
			for (size_t pg = 3; pg < NM; pg += 64) {
				p[pg * PAGE + 100] ^= 0x5a;
				ref[pg * PAGE + 100] ^= 0x5a;
			}
			verify("C's M after C's writes", p, ref, NM, 0, msg, sizeof(msg));
			break;
		case 'u': /* first touch of U, then everything once more */
			if (!verify("C's U (untouched since fork)", p + (size_t)NM * PAGE,
				    ref + (size_t)NM * PAGE, NU, NM, msg, sizeof(msg)))
				verify("C's M", p, ref, NM, 0, msg, sizeof(msg));
			break;
		case 's': /* let C's scanner see everything up to now */
			if (samepage_scan_now())
				snprintf(msg, sizeof(msg), "C's samepage_scan_now failed");
			break;
		case 'q':
			_exit(0);
		default:
			_exit(4);
		}
		if (tu_send(wr, msg, sizeof(msg)))
			_exit(5);
	}
}

/* ---- A and B ---- */

struct info { uintptr_t range, fresh; pid_t c, d; };

static int b_main(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)NT * PAGE);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	(void)arg;
	close(c_down[0]);
	close(c_up[1]);
	tu_fill(p, (size_t)NM * PAGE, SEED_X);
	tu_fill(p + (size_t)NM * PAGE, (size_t)NU * PAGE, SEED_X + 1000);
	TU_CHECK(madvise(p, (size_t)NT * PAGE, MADV_MERGEABLE) == 0, "B madvise: %m");
	tu_send(wr, &a, sizeof(a));
	tu_recv(rd, &cmd, 1);
	return 0;
}

static int a_main(int rd, int wr, void *arg)
{
	size_t len = (size_t)NT * PAGE;
	unsigned char *p = tu_map(len), *ref = malloc(len), *fresh = NULL;
	int dpipe[2] = { -1, -1 };
	struct info in = { .range = (uintptr_t)p };
	char cmd;

	(void)arg;
	TU_CHECK(ref != NULL, "malloc");
	tu_fill(p, (size_t)NM * PAGE, SEED_X);
	tu_fill(p + (size_t)NM * PAGE, (size_t)NU * PAGE, SEED_X + 1000);
	memcpy(ref, p, len);
	TU_CHECK(madvise(p, len, MADV_MERGEABLE) == 0, "A madvise: %m");
	tu_send(wr, &in, sizeof(in));
	for (;;) {
		int ok = 0;
		if (tu_recv(rd, &cmd, 1))
			return 3;
		switch (cmd) {
		case 'f': /* fork C through the wrapper */
			in.c = fork();
			TU_CHECK(in.c >= 0, "fork C: %m");
			if (in.c == 0) {
				close(rd);
				close(wr);
				close(c_down[1]);
				close(c_up[0]);
				c_main(p, ref);
			}
			close(c_down[0]);
			close(c_up[1]);
			ok = 1;
			break;
		case 'w': /* write some merged pages */
			for (size_t pg = 0; pg < NT; pg += 8) {
				p[pg * PAGE + 7] ^= 0xff;
				ref[pg * PAGE + 7] ^= 0xff;
			}
			ok = samepage_scan_now() == 0 && !memcmp(p, ref, len);
			break;
		case 'u': /* unmerge everything */
			ok = madvise(p, len, MADV_UNMERGEABLE) == 0 && !memcmp(p, ref, len);
			for (size_t pg = 0; ok && pg < NT; pg++)
				ok = !tu_is_file_page(getpid(), (uintptr_t)p + pg * PAGE);
			break;
		case 'n': /* NEW content, twice, so it merges into new pool pages */
			fresh = tu_map(len);
			tu_fill(p, len, SEED_NEW);
			tu_fill(fresh, len, SEED_NEW);
			memcpy(ref, p, len);
			in.fresh = (uintptr_t)fresh;
			ok = madvise(p, len, MADV_MERGEABLE) == 0 &&
			     madvise(fresh, len, MADV_MERGEABLE) == 0;
			break;
		case 'r': { /* reap C */
			int st;
			ok = waitpid(in.c, &st, 0) == in.c && WIFEXITED(st) && !WEXITSTATUS(st);
			break;
		}
		case 'e': /* fork D, which waits before it execs */
			TU_CHECK(pipe(dpipe) == 0, "pipe");
			in.d = fork();
			TU_CHECK(in.d >= 0, "fork D: %m");
			if (in.d == 0) {
				char *argv[] = { "sleep", "30", NULL };
				close(dpipe[1]);
				if (tu_recv(dpipe[0], &cmd, 1))
					_exit(3);
				execve("/bin/sleep", argv, environ);
				_exit(127);
			}
			close(dpipe[0]);
			ok = 1;
			break;
		case 'x': /* let D exec */
			ok = tu_send(dpipe[1], "x", 1) == 0;
			break;
		case 'c': /* A's content, after everything */
			ok = !memcmp(p, ref, len) && (!fresh || !memcmp(fresh, ref, len));
			break;
		case 'q':
			return 0;
		default:
			return 4;
		}
		in.range = ok; /* reuse: first field carries the verdict */
		if (tu_send(wr, &in, sizeof(in)))
			return 5;
		in.range = (uintptr_t)p;
	}
}

/* ---- a process that exits leaves nothing behind ---- */

#define NX 64u

/* Unique content, offered to the daemon (passes run to the end), then: X
 * exits; Y reports how many of its pages map the pool; Z (other content)
 * waits. */
static int unique_holder(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)NX * PAGE);
	int n = 0;
	char cmd;

	tu_fill(p, (size_t)NX * PAGE, arg == (void *)2 ? 556 : 555);
	TU_CHECK(madvise(p, (size_t)NX * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	for (int i = 0; i < 3; i++)
		TU_CHECK(samepage_scan_now() == 0, "samepage_scan_now");
	for (size_t pg = 0; arg == (void *)1 && pg < NX; pg++)
		n += tu_is_file_page(getpid(), (uintptr_t)p + pg * PAGE);
	tu_send(wr, &n, sizeof(n));
	tu_recv(rd, &cmd, 1);
	return 0;
}

/* ---- main ---- */

static struct tu_child A, B;
static uintptr_t a_range, b_range, a_fresh;
static pid_t C, D;
static int failures;

static struct info a_cmd(char c)
{
	struct info r;

	TU_CHECK(tu_send(A.wr, &c, 1) == 0 && tu_recv(A.rd, &r, sizeof(r)) == 0,
		 "A died at '%c'", c);
	TU_CHECK(r.range == 1, "A: step '%c' failed", c);
	return r;
}

/* Send C a command; a non-empty reply is a content failure. */
static void c_cmd(char c, const char *step)
{
	char msg[256];

	TU_CHECK(tu_send(c_down[1], &c, 1) == 0 && tu_recv(c_up[0], msg, sizeof(msg)) == 0,
		 "C died at '%c' (%s)", c, step);
	msg[sizeof(msg) - 1] = 0;
	if (c == 's')
		TU_CHECK(!msg[0], "%s", msg);
	else if (msg[0])
		TU_FAIL("C's memory is wrong after %s: %s", step, msg);
	else
		printf("C's memory correct after: %s\n", step);
}

/* Pages of [start, start + npages) that pid maps from the pool, by its
 * VMAs: this sees pool pages that have no page-table entry (after fork). */
static size_t pool_mapped(pid_t pid, uintptr_t start, size_t npages, uint8_t *map)
{
	char path[64], line[512];
	uintptr_t end = start + npages * PAGE;
	size_t n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	TU_CHECK(f != NULL, "open %s", path);
	if (map)
		memset(map, 0, npages);
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) != 2 || !strstr(line, "samepage-pool"))
			continue;
		for (uintptr_t p = s > start ? s : start; p < e && p < end; p += PAGE) {
			n++;
			if (map)
				map[(p - start) / PAGE] = 1;
		}
	}
	fclose(f);
	return n;
}

/* C's pool-mapped pages must not go down because of what A does. */
static size_t c_pool_before;
static void check_c_kept(const char *step)
{
	uint8_t map[NT];
	size_t n, lost = 0, lost_a_wrote = 0;

	c_cmd('s', step); /* C's scanner has seen the step */
	n = pool_mapped(C, a_range, NT, map);
	for (size_t i = 0; i < NT; i++)
		if (!map[i]) {
			lost++;
			lost_a_wrote += i % 8 == 0;
		}
	printf("C maps %zu of %u pages from the pool after %s\n", n, NT, step);
	TU_EXPECT(&failures, n >= c_pool_before,
		  "C stopped mapping %zu pool pages after %s, a step only A took (%zu of "
		  "C's %zu unmapped pages are pages A wrote). C's scanner must act on C's own "
		  "address space; a likely cause: the /proc/self/pagemap and /proc/self/maps "
		  "descriptors that libsamepage opened before fork() still describe A",
		  c_pool_before - n, step, lost_a_wrote, lost);
	if (n < c_pool_before)
		c_pool_before = n;
}

static int ab_merged(void *arg)
{
	pid_t pids[2] = { A.pid, B.pid };
	uintptr_t addrs[2] = { a_range, b_range };

	(void)arg;
	return tu_frames(pids, addrs, 2, NT) <= NT + 8;
}

static int a_new_merged(void *arg)
{
	pid_t pids[2] = { A.pid, A.pid };
	uintptr_t addrs[2] = { a_range, a_fresh };

	(void)arg;
	return tu_frames(pids, addrs, 2, NT) <= NT + 8;
}

static long long want_le;
static const char *want_key;
static int stat_le(void *arg)
{
	long long v = tu_status(want_key);

	(void)arg;
	return v >= 0 && v <= want_le;
}

/* Frames C maps in its range that A also maps (range or fresh region). */
static size_t shared_with_a(void)
{
	uint64_t *af = malloc(2 * NT * sizeof(uint64_t));
	size_t n = 0;

	for (size_t i = 0; i < NT; i++) {
		af[2 * i] = tu_pfn(A.pid, a_range + i * PAGE);
		af[2 * i + 1] = tu_pfn(A.pid, a_fresh + i * PAGE);
	}
	qsort(af, 2 * NT, sizeof(uint64_t), tu_cmp_u64);
	for (size_t i = 0; i < NT; i++) {
		uint64_t f = tu_pfn(C, a_range + i * PAGE);
		n += f && bsearch(&f, af, 2 * NT, sizeof(uint64_t), tu_cmp_u64) != NULL;
	}
	free(af);
	return n;
}

static int d_execed(void)
{
	char path[64], exe[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/exe", (int)D);
	n = readlink(path, exe, sizeof(exe) - 1);
	if (n <= 0)
		return 0;
	exe[n] = 0;
	return strstr(exe, "sleep") != NULL;
}

int main(int argc, char **argv)
{
	struct info in;
	long long pool0, sharing0, sharing1;
	size_t n;
	double t0;

	(void)argc;
#if defined(__SANITIZE_THREAD__)
	/* A's fork child starts its scanner thread: ThreadSanitizer refuses
	 * threads after a multi-threaded fork unless told otherwise. */
	if (!getenv("TSAN_OPTIONS") || !strstr(getenv("TSAN_OPTIONS"), "die_after_fork=0")) {
		char opts[1024];
		snprintf(opts, sizeof(opts), "%s%sdie_after_fork=0",
			 getenv("TSAN_OPTIONS") ? getenv("TSAN_OPTIONS") : "",
			 getenv("TSAN_OPTIONS") ? ":" : "");
		setenv("TSAN_OPTIONS", opts, 1);
		execv("/proc/self/exe", argv);
		TU_FAIL("re-exec with TSAN_OPTIONS=%s: %m", opts);
	}
#else
	(void)argv;
#endif
	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(200);
	TU_CHECK(pipe(c_down) == 0 && pipe(c_up) == 0, "pipe");
	foreign = malloc((size_t)NT * PAGE);
	tu_fill(foreign, (size_t)NT * PAGE, SEED_NEW);

	tu_spawn(&A, a_main, NULL);
	tu_spawn(&B, b_main, NULL);
	close(c_down[0]);
	close(c_up[1]);
	TU_CHECK(tu_recv(A.rd, &in, sizeof(in)) == 0, "A died");
	a_range = in.range;
	TU_CHECK(tu_recv(B.rd, &b_range, sizeof(b_range)) == 0, "B died");
	t0 = tu_now();
	TU_CHECK(tu_wait(ab_merged, NULL, 30), "A and B not merged after 30 s");
	printf("A and B merged %u pages in %.2f s\n", NT, tu_now() - t0);

	/* Fork C. */
	C = a_cmd('f').c;
	n = tu_present(C, a_range + (size_t)NM * PAGE, NU);
	printf("C = %d; C's U pages present after fork: %zu of %u%s\n", (int)C, n, NU,
	       n ? "" : " (no page-table entries: the dangerous case)");
	c_pool_before = pool_mapped(C, a_range, NT, NULL);
	TU_CHECK(c_pool_before >= NT - 8, "C maps only %zu pool pages after fork",
		 c_pool_before);
	c_cmd('v', "fork");
	c_cmd('w', "C's own writes");
	c_cmd('s', "C's own writes");
	c_pool_before = pool_mapped(C, a_range, NT, NULL);
	TU_CHECK(c_pool_before >= NT - NM / 64 - 8, "C unmerged %zu pages after writing %u",
		 NT - c_pool_before, NM / 64);

	/* 1: A writes some merged pages. */
	a_cmd('w');
	c_cmd('v', "A wrote every 8th page");
	check_c_kept("A wrote every 8th page");

	/* 2: A unmerges its whole range. */
	a_cmd('u');
	{
		pid_t pids[2] = { A.pid, B.pid };
		uintptr_t addrs[2] = { a_range, b_range };
		TU_CHECK(tu_frames(pids, addrs, 2, NT) == 2 * NT,
			 "A still shares frames with B after MADV_UNMERGEABLE");
	}
	c_cmd('v', "A's MADV_UNMERGEABLE");
	check_c_kept("A's MADV_UNMERGEABLE");

	/* 3: B exits: C is now the only process mapping the old pool pages. */
	tu_send(B.wr, "q", 1);
	TU_CHECK(tu_reap(&B) == 0, "B failed");
	want_key = "processes";
	want_le = 2;
	TU_CHECK(tu_wait(stat_le, NULL, 10), "daemon still counts B after 10 s");
	c_cmd('v', "B's exit");

	/* 4: A merges NEW content: new pool pages are allocated. */
	in = a_cmd('n');
	a_fresh = in.fresh;
	t0 = tu_now();
	TU_CHECK(tu_wait(a_new_merged, NULL, 30), "A's new content not merged after 30 s");
	printf("A merged new content in %.2f s\n", tu_now() - t0);
	c_cmd('v', "A merged new content");
	c_cmd('u', "first touch of pages C never touched after fork");
	n = shared_with_a();
	TU_CHECK(n == 0, "C shares %zu frames with A's NEW content", n);
	check_c_kept("A merged new content");
	a_cmd('c');

	/* 5: C exits: its references go, the pool keeps A's new pages only. */
	pool0 = tu_status("pool_pages");
	printf("pool_pages with C alive: %lld (C maps %zu of them)\n", pool0, c_pool_before);
	TU_EXPECT(&failures, pool0 >= (long long)(NT + c_pool_before) - 16,
		  "pool_pages %lld: C's %zu pool pages not counted", pool0, c_pool_before);
	tu_send(c_down[1], "q", 1);
	a_cmd('r');
	t0 = tu_now();
	want_key = "pool_pages";
	want_le = NT + 8;
	TU_CHECK(tu_wait(stat_le, NULL, 5), "pool_pages %lld 5 s after C exited (want <= %u)",
		 tu_status("pool_pages"), NT + 8);
	printf("C's references released %.2f s after its exit\n", tu_now() - t0);

	/* 6: D, forked from A, holds a copy of A's references until it execs. */
	sharing0 = tu_status("pages_sharing");
	D = a_cmd('e').d;
	sharing1 = tu_status("pages_sharing");
	printf("pages_sharing before fork %lld, after fork %lld\n", sharing0, sharing1);
	TU_CHECK(sharing1 >= sharing0 + 2 * (long long)NT - 16,
		 "D's connection did not take over A's references");
	a_cmd('x');
	t0 = tu_now();
	while (!d_execed() && tu_now() < t0 + 5)
		usleep(10000);
	TU_CHECK(d_execed(), "D did not exec");
	want_key = "pages_sharing";
	want_le = sharing0;
	TU_CHECK(tu_wait(stat_le, NULL, 5), "pages_sharing %lld 5 s after D's exec (want %lld)",
		 tu_status("pages_sharing"), sharing0);
	TU_CHECK(kill(D, 0) == 0 && d_execed(), "D is gone: exec's release was not what we saw");
	printf("D's references released %.2f s after exec, D still running\n", tu_now() - t0);
	a_cmd('c');

	/* 7: A exits: nothing holds a pool page. */
	tu_send(A.wr, "q", 1);
	TU_CHECK(tu_reap(&A) == 0, "A failed");
	t0 = tu_now();
	want_key = "pool_pages";
	want_le = 0;
	TU_CHECK(tu_wait(stat_le, NULL, 5), "pool_pages %lld 5 s after every holder exited",
		 tu_status("pool_pages"));
	printf("pool_pages 0 %.2f s after A exited\n", tu_now() - t0);
	kill(D, SIGKILL);

	/* 8: X offers unique pages and exits; Y, with the same pages, starts
	 * after X is gone: there is no one to merge with (kernel KSM drops an
	 * exiting process's unstable tree entries), so no pool page. Z, another
	 * process that merges, is stopped meanwhile (a busy machine): it keeps
	 * the daemon's current generation, and so its unstable index, open. */
	{
		struct tu_child X, Y, Z;
		int n;
		tu_spawn(&Z, unique_holder, (void *)2);
		TU_CHECK(tu_recv(Z.rd, &n, sizeof(n)) == 0, "Z died");
		kill(Z.pid, SIGSTOP);
		tu_spawn(&X, unique_holder, NULL);
		TU_CHECK(tu_recv(X.rd, &n, sizeof(n)) == 0, "X died");
		tu_send(X.wr, "q", 1);
		TU_CHECK(tu_reap(&X) == 0, "X failed");
		want_key = "processes";
		want_le = 1;
		TU_CHECK(tu_wait(stat_le, NULL, 5), "daemon still counts X");
		tu_spawn(&Y, unique_holder, (void *)1);
		TU_CHECK(tu_recv(Y.rd, &n, sizeof(n)) == 0, "Y died");
		printf("Y: %d of %u pages merged, pool_pages %lld\n", n, NX, tu_status("pool_pages"));
		TU_EXPECT(&failures, n == 0,
			  "Y's %d pages, whose content no live process shares, were merged "
			  "into pool pages only Y maps: they matched unstable-index entries left "
			  "by X, which had exited (the daemon keeps a closed connection's unstable "
			  "entries until the generation ends)", n);
		tu_send(Y.wr, "q", 1);
		TU_CHECK(tu_reap(&Y) == 0, "Y failed");
		kill(Z.pid, SIGCONT);
		tu_send(Z.wr, "q", 1);
		TU_CHECK(tu_reap(&Z) == 0, "Z failed");
	}
	return failures ? 1 : 0;
}
