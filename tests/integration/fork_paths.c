/* SPDX-License-Identifier: MIT */
/*
 * Invariant 2 for every way a process forks, and fork never failing.
 *
 * P and Q merge the same 8 MiB. P then makes a child four ways:
 *   fork()     through the wrapper: the child gets a copy of P's set (C_FORK);
 *   _Fork()    the async-signal-safe fork, wrapped the same way;
 *   daemon(3)  libc forks inside and its parent exits at once: only the
 *              pthread_atfork handlers see that fork;
 *   detach     fork() while the hand-over cannot be sent (SAMEPAGE_FAULT=fork,
 *              as with a stalled daemon's full socket buffer): the child
 *              gives every pool page back before it runs, and its memory is
 *              then plain anonymous memory (pagemap: no file page).
 * Each child keeps checking its inherited memory against a copy made at
 * the fork. Then P unmerges everything (its references go), Q exits (so do
 * its), and R merges new content, which takes new pool pages: were any
 * child's pages freed, R's content would show through in it. Every child
 * must end with its memory intact, every fork must have succeeded, and
 * once all have exited the pool is empty.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "region.h"
#include "samepage.h"
#include "testutil.h"

#define N 2048u /* 8 MiB */
#define SEED 77

enum { HOW_FORK, HOW_UNDERSCORE, HOW_DAEMON, HOW_DETACH, NHOW };
static const char *const how_name[NHOW] = { "fork()", "_Fork()", "daemon(3)", "detach" };

pid_t _Fork(void);

/* In a child of P: check mem against expect until told to stop (the pipe
 * closes); report 'k' (intact) or 'X' plus its pid and file-page count. */
struct kid_report { char verdict; pid_t pid; uint32_t file_pages; };

static void kid_loop(const unsigned char *mem, const unsigned char *expect, int ctl, int rep)
{
	struct pollfd pf = { .fd = ctl, .events = POLLIN };
	struct kid_report r = { 'k', getpid(), 0 };

	/* Fork copies no page table entries of a file mapping: read first. */
	if (memcmp(mem, expect, (size_t)N * PAGE))
		r.verdict = 'X';
	for (size_t pg = 0; pg < N; pg++)
		r.file_pages += (uint32_t)tu_is_file_page(getpid(), (uintptr_t)mem + pg * PAGE);
	tu_send(rep, &r, sizeof(r));
	for (; r.verdict == 'k';) {
		int last = poll(&pf, 1, 200) != 0;
		if (memcmp(mem, expect, (size_t)N * PAGE)) {
			r.verdict = 'X';
			break;
		}
		if (last)
			break;
	}
	tu_send(rep, &r, sizeof(r));
	_exit(0);
}

/* Earlier children's pipe ends: a child must not hold them, or their
 * control pipes never reach end of file. */
static int others[4 * NHOW], nothers;

static void close_others(void)
{
	for (int i = 0; i < nothers; i++)
		close(others[i]);
}

static pid_t make_kid(int how, const unsigned char *mem, const unsigned char *expect, int ctl,
		      int rep)
{
	pid_t pid;

#if defined(__SANITIZE_THREAD__)
	/* Under TSan a plain fork stands in for daemon(3) (the library
	 * registers no pthread_atfork handlers there, see lib_create) and for
	 * _Fork (which TSan does not intercept: its child can deadlock on the
	 * runtime's locks). */
	if (how == HOW_DAEMON || how == HOW_UNDERSCORE)
		how = HOW_FORK;
#endif
	if (how == HOW_DETACH)
		setenv("SAMEPAGE_FAULT", "fork", 1);
	pid = how == HOW_UNDERSCORE ? _Fork() : how == HOW_DAEMON ? 0 : fork();
	if (how == HOW_DETACH)
		unsetenv("SAMEPAGE_FAULT");
	if (how == HOW_DAEMON) {
		/* daemon(3) forks inside libc; its parent exits: do it in a
		 * child of ours so that we stay. */
		pid = fork();
		TU_CHECK(pid >= 0, "fork for daemon(3): %s", strerror(errno));
		if (pid == 0) {
			close_others();
			if (daemon(1, 1) < 0)
				_exit(3);
			kid_loop(mem, expect, ctl, rep);
		}
		int st;
		waitpid(pid, &st, 0);
		TU_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "daemon(3) failed");
		return 0;
	}
	TU_CHECK(pid >= 0, "%s failed: %s", how_name[how], strerror(errno));
	if (pid == 0) {
		close_others();
		kid_loop(mem, expect, ctl, rep);
	}
	return pid;
}

/* P: merges with Q, forks the children, unmerges on request. */
static int p_main(int rd, int wr, void *arg)
{
	unsigned char *mem = tu_map((size_t)N * PAGE), *expect = malloc((size_t)N * PAGE);
	int ctl[NHOW][2], rep[NHOW][2];
	uintptr_t addr = (uintptr_t)mem;
	char cmd;

	(void)arg;
	TU_CHECK(expect, "malloc");
	tu_fill(mem, (size_t)N * PAGE, SEED);
	memcpy(expect, mem, (size_t)N * PAGE);
	TU_CHECK(madvise(mem, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise");
	tu_send(wr, &addr, sizeof(addr));
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == 'f') {
			struct kid_report r[NHOW];
			for (int h = 0; h < NHOW; h++) {
				TU_CHECK(pipe(ctl[h]) == 0 && pipe(rep[h]) == 0, "pipe");
				others[nothers++] = ctl[h][1];
				others[nothers++] = rep[h][0];
				make_kid(h, mem, expect, ctl[h][0], rep[h][1]);
				close(ctl[h][0]);
				close(rep[h][1]);
				TU_CHECK(tu_recv(rep[h][0], &r[h], sizeof(r[h])) == 0,
					 "%s child died at start", how_name[h]);
			}
			tu_send(wr, r, sizeof(r));
		} else if (cmd == 'u') {
			TU_CHECK(madvise(mem, (size_t)N * PAGE, MADV_UNMERGEABLE) == 0, "unmerge");
			tu_send(wr, &cmd, 1);
		} else if (cmd == 'e') { /* end: children check once more and report */
			struct kid_report r[NHOW];
			for (int h = 0; h < NHOW; h++)
				close(ctl[h][1]);
			for (int h = 0; h < NHOW; h++)
				if (tu_recv(rep[h][0], &r[h], sizeof(r[h])))
					r[h].verdict = 'D'; /* died */
			while (waitpid(-1, NULL, 0) > 0)
				;
			tu_send(wr, r, sizeof(r));
			return memcmp(mem, expect, (size_t)N * PAGE) ? 1 : 0;
		}
	}
	return 3;
}

static int q_main(int rd, int wr, void *arg)
{
	struct tu_region_spec *spec = arg;

	return tu_region_child(rd, wr, spec);
}

static struct tu_child p, q, r;
static uintptr_t p_addr;
static struct tu_region_reply q_rep, r_rep;

static int pq_merged(void *arg)
{
	pid_t pids[2] = { p.pid, q.pid };
	uintptr_t addrs[2] = { p_addr, q_rep.addr };

	(void)arg;
	return tu_frames(pids, addrs, 2, N) <= N + 16;
}

int main(void)
{
	struct tu_region_spec q_spec = { .pages = N, .seed = SEED, .madvise = 1 };
	struct tu_region_spec r_spec = { .pages = N, .seed = 4242, .madvise = 1 };
	struct kid_report kr[NHOW];
	char c;

	tu_require_merging();
	tu_private_daemon();
	tu_spawn(&p, p_main, NULL);
	TU_CHECK(tu_recv(p.rd, &p_addr, sizeof(p_addr)) == 0, "P start");
	tu_spawn(&q, q_main, &q_spec);
	TU_CHECK(tu_recv(q.rd, &q_rep, sizeof(q_rep)) == 0, "Q start");
	TU_CHECK(tu_wait(pq_merged, NULL, 30), "P and Q did not merge");

	c = 'f';
	TU_CHECK(tu_send(p.wr, &c, 1) == 0 && tu_recv(p.rd, kr, sizeof(kr)) == 0, "P's forks");
	for (int h = 0; h < NHOW; h++)
		printf("%-10s child %d: %u of %u pages merged at its start\n", how_name[h],
		       (int)kr[h].pid, kr[h].file_pages, N);
	TU_CHECK(kr[HOW_FORK].file_pages > N / 2, "the fork() child does not map P's merged pages");
	TU_CHECK(kr[HOW_DETACH].file_pages == 0,
		 "the detached child still maps %u pool pages", kr[HOW_DETACH].file_pages);

	/* P's and Q's references go; R's new content needs pool pages. */
	c = 'u';
	TU_CHECK(tu_send(p.wr, &c, 1) == 0 && tu_recv(p.rd, &c, 1) == 0, "P unmerge");
	tu_region_cmd(q.wr, q.rd, TU_RC_QUIT, 0, NULL, 0);
	TU_CHECK(tu_reap(&q) == 0, "Q exit");
	tu_spawn(&r, q_main, &r_spec);
	TU_CHECK(tu_recv(r.rd, &r_rep, sizeof(r_rep)) == 0, "R start");
	struct tu_child r2;
	tu_spawn(&r2, q_main, &r_spec);
	TU_CHECK(tu_recv(r2.rd, &r_rep, sizeof(r_rep)) == 0, "R2 start");
	/* R's region is 2N pages: two identical halves (seed of an N-page fill twice). */
	TU_CHECK(tu_wait(tu_counter_reached, &(struct tu_counter){ "pool_pages", N }, 30),
		 "R did not merge");
	usleep(500 * 1000);

	c = 'e';
	TU_CHECK(tu_send(p.wr, &c, 1) == 0 && tu_recv(p.rd, kr, sizeof(kr)) == 0, "P's end");
	for (int h = 0; h < NHOW; h++)
		TU_CHECK(kr[h].verdict == 'k', "the %s child %s", how_name[h],
			 kr[h].verdict == 'X' ? "read wrong bytes" : "died");
	TU_CHECK(tu_reap(&p) == 0, "P's own memory");
	tu_region_cmd(r.wr, r.rd, TU_RC_QUIT, 0, NULL, 0);
	tu_region_cmd(r2.wr, r2.rd, TU_RC_QUIT, 0, NULL, 0);
	TU_CHECK(tu_reap(&r) == 0 && tu_reap(&r2) == 0, "R exit");
	TU_CHECK(tu_wait(tu_pool_empty, NULL, 10), "pool_pages %lld after everyone left",
		 tu_status("pool_pages"));
	printf("PASS: fork(), _Fork(), daemon(3) and a detached child kept their memory\n");
	return 0;
}
