/* SPDX-License-Identifier: MIT */
/*
 * Memory given back: when the last process that merged leaves, the daemon
 * gives back what the pool and its bookkeeping took, at once, as kernel
 * KSM frees its pages when a process exits (it used to keep one 256 MiB
 * segment "as a warm spare" and a busy unstable index until its idle exit,
 * 132-266 MB resident with no process left).
 *
 * Two processes merge the same 64 MiB; the daemon's resident memory grows
 * by about that much (the pool is its shared memory). Both exit: within a
 * few seconds pool_pages is 0 and the daemon's resident memory (anonymous
 * and shared, from /proc/PID/status; shared only in sanitizer builds,
 * whose shadow memory is anonymous too) is back under 16 MiB. Then it is done
 * twice more on the same daemon: every time everything goes back.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "region.h"
#include "samepage.h"
#include "testutil.h"

#define N 16384u /* 64 MiB */
#define IDLE_KIB (16 * 1024)

/* The sanitizers' shadow memory is the daemon's anonymous memory too, and
 * hundreds of MiB of it: there, only the pool (shared memory) counts. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif
static long rss_kib(pid_t d)
{
	return (SANITIZED ? 0 : (long)tu_proc_kib(d, "RssAnon")) + (long)tu_proc_kib(d, "RssShmem");
}

struct proc { struct tu_child c; struct tu_region_reply r; };
static struct proc p[2];

static int merged(void *arg)
{
	pid_t pids[2] = { p[0].c.pid, p[1].c.pid };
	uintptr_t addrs[2] = { p[0].r.addr, p[1].r.addr };

	(void)arg;
	return tu_frames(pids, addrs, 2, N) <= N + N / 16;
}

static pid_t daemon_pid;
static int given_back(void *arg)
{
	(void)arg;
	return tu_status("pool_pages") == 0 && rss_kib(daemon_pid) < IDLE_KIB;
}

int main(void)
{
	struct tu_region_spec spec = { .pages = N, .madvise = 1 };

	tu_require_merging();
	tu_private_daemon();
	for (int round = 1; round <= 3; round++) {
		long busy;
		spec.seed = (uint64_t)round;
		for (int i = 0; i < 2; i++) {
			tu_spawn(&p[i].c, tu_region_child, &spec);
			TU_CHECK(tu_recv(p[i].c.rd, &p[i].r, sizeof(p[i].r)) == 0, "child start");
		}
		TU_CHECK(tu_wait(merged, NULL, 60), "round %d: not merged", round);
		daemon_pid = tu_daemon_pid();
		TU_CHECK(daemon_pid > 0, "no daemon");
		busy = rss_kib(daemon_pid);
		TU_CHECK(busy > 48 * 1024, "round %d: the daemon holds only %ld KiB for 64 MiB merged",
			 round, busy);
		for (int i = 0; i < 2; i++) {
			tu_region_cmd(p[i].c.wr, p[i].c.rd, TU_RC_QUIT, 0, NULL, 0);
			TU_CHECK(tu_reap(&p[i].c) == 0, "child exit");
		}
		double t = tu_now();
		TU_CHECK(tu_wait(given_back, NULL, 10),
			 "round %d: 10 s after every process left: pool_pages %lld, daemon resident "
			 "%ld KiB (anon %ld, shmem %ld)", round, tu_status("pool_pages"),
			 rss_kib(daemon_pid), (long)tu_proc_kib(daemon_pid, "RssAnon"),
			 (long)tu_proc_kib(daemon_pid, "RssShmem"));
		printf("round %d: daemon resident %ld KiB while merged, %ld KiB %.1f s after the "
		       "last process left\n", round, busy, rss_kib(daemon_pid), tu_now() - t);
	}
	return 0;
}
