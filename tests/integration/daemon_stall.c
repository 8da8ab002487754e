/* SPDX-License-Identifier: MIT */
/*
 * Invariants 2 and 5 under stalls: a daemon that stops answering for a
 * while (SIGSTOP, the cgroup freezer: a debugger, CPU throttling, a
 * suspended VM) is waited for, never declared dead, and no reference is
 * released while a process still maps its pool page.
 *
 * A1 and A2 merge the same 16 MiB and keep writing into it (two writer
 * threads each, 200 writes/s, every write also into a shadow copy in
 * MAP_SHARED memory, which is never merged). The daemon is then stalled
 * again and again, at random moments and for a while longer than the
 * library used to wait for a reply before giving the daemon up; after each
 * stall two new processes B1 and B2 merge other content, which needs new
 * pool pages. If A's references had been dropped, the daemon would hand
 * their pool pages to B, and A's untouched merged pages would read B's
 * bytes. While the daemon is stalled, A1 forks four children (which must
 * neither fail nor wait for the daemon) and then unmerges its memory, so
 * that only the children's copies of its references keep those pool pages;
 * the children check their inherited memory against what it was at the
 * fork until B has merged. Every byte of every process is compared with
 * its shadow after every stall; the same daemon serves throughout; and once
 * everyone has exited the pool is empty.
 *
 * Last, A1's connection is cut under it (shutdown, as a daemon that closed
 * it): A1 reconnects to the same daemon and keeps its references (the set
 * waited for it, held by its marker), its pages stay merged, and new
 * content merged afterwards by others does not land in its pool pages.
 *
 * One round kills the daemon instead (SIGKILL, at a random moment): the
 * processes reconnect to a successor started on demand, their old merged
 * pages stay valid (the mappings keep the dead daemon's segments alive),
 * and the successor's pool pages are its own.
 *
 * SAMEPAGE_STALLS overrides the rounds: "S:6 F:2 K:1" (S: SIGSTOP, F: cgroup
 * freezer, K: SIGKILL then wait; seconds), or "random:N" for N rounds of
 * 1-30 s, one in six a kill (bench/stall_soak.sh runs that for hours).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "region.h"
#include "samepage.h"
#include "testutil.h"

#define N 4096u /* 16 MiB per process */
#define MAX_STALLS 1024

struct stall { char how; int secs; };

static int parse_stalls(struct stall *st, uint64_t *rng)
{
	const char *env = getenv("SAMEPAGE_STALLS");
	int n = 0;

	if (!env || !*env)
		env = "S:6 F:2 K:1 S:1";
	if (!strncmp(env, "random:", 7)) {
		int want = atoi(env + 7);
		for (n = 0; n < want && n < MAX_STALLS; n++) {
			uint64_t r = tu_xorshift(rng) % 6;
			st[n] = (struct stall){ r == 0 ? 'K' : r & 1 ? 'S' : 'F',
						1 + (int)(tu_xorshift(rng) % 30) };
		}
		return n;
	}
	for (const char *p = env; *p && n < MAX_STALLS;) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		TU_CHECK((p[0] == 'S' || p[0] == 'F' || p[0] == 'K') && p[1] == ':',
			 "bad SAMEPAGE_STALLS: %s", env);
		st[n++] = (struct stall){ p[0], atoi(p + 2) };
		while (*p && *p != ' ')
			p++;
	}
	return n;
}

struct proc {
	struct tu_child c;
	struct tu_region_reply r;
};

static void start(struct proc *p, struct tu_region_spec *spec)
{
	tu_spawn(&p->c, tu_region_child, spec);
	TU_CHECK(tu_recv(p->c.rd, &p->r, sizeof(p->r)) == 0, "child %d did not start", (int)p->c.pid);
}

static struct proc *pair_of;
static int pair_merged(void *arg)
{
	pid_t pids[2] = { pair_of[0].c.pid, pair_of[1].c.pid };
	uintptr_t addrs[2] = { pair_of[0].r.addr, pair_of[1].r.addr };

	(void)arg;
	/* Writers keep a few pages private; the rest share a frame. */
	return tu_frames(pids, addrs, 2, N) <= N + N / 8;
}

/* What the daemon and the pair's processes say, when a pair did not merge. */
static void explain(struct proc *pair)
{
	char cmd[512];

	for (int i = 0; i < 2; i++) {
		pid_t pids[1] = { pair[i].c.pid };
		uintptr_t addrs[1] = { pair[i].r.addr };
		fprintf(stderr, "process %d: %zu frames for %u pages\n", (int)pair[i].c.pid,
			tu_frames(pids, addrs, 1, N), N);
		snprintf(cmd, sizeof(cmd), "%s status --json --pid %d >&2", tu_bin("samepage"),
			 (int)pair[i].c.pid);
		if (system(cmd)) {
		}
	}
	snprintf(cmd, sizeof(cmd), "%s status --json >&2", tu_bin("samepage"));
	if (system(cmd)) {
	}
}

static void check(struct proc *p, const char *name, const char *when)
{
	struct tu_region_reply r;

	TU_CHECK(tu_region_cmd(p->c.wr, p->c.rd, TU_RC_CHECK, 0, &r, 60) == 0,
		 "%s died or hung %s", name, when);
	TU_CHECK(r.bad == 0, "%s: %llu of %u pages differ from the shadow %s (first: page %llu)",
		 name, (unsigned long long)r.bad, N, when, (unsigned long long)r.first_bad);
}

/* While the daemon is stalled, A1 forks and gives its own references up. */
static const char *kind(char how);

static void during(struct proc *a, char how)
{
	struct tu_region_reply r;
	double t = tu_now();

	TU_CHECK(tu_region_cmd(a[0].c.wr, a[0].c.rd, TU_RC_FORK, 4, &r, 10) == 0,
		 "A1 could not fork 4 children within 10 s of a stalled daemon (%s, %.1f s)",
		 kind(how), tu_now() - t);
	TU_CHECK(tu_region_cmd(a[0].c.wr, a[0].c.rd, TU_RC_UNMERGE, 0, &r, 10) == 0,
		 "A1 could not unmerge within 10 s of a stalled daemon (%s, %.1f s)", kind(how),
		 tu_now() - t);
	TU_CHECK(tu_now() - t < 5, "forks and unmerge waited %.1f s for a stalled daemon",
		 tu_now() - t);
}

static const char *kind(char how)
{
	return how == 'S' ? "SIGSTOP" : how == 'F' ? "cgroup freezer" : "SIGKILL";
}

static pid_t stalled_d;
static int successor(void *arg)
{
	pid_t p = tu_daemon_pid();

	(void)arg;
	return p > 0 && p != stalled_d;
}

static void stall(pid_t d, const struct stall *s, struct proc *a)
{
	double until = tu_now() + s->secs;

	if (s->how == 'K') {
		TU_CHECK(kill(d, SIGKILL) == 0, "SIGKILL the daemon");
		during(a, s->how); /* forks and unmerge with no daemon at all */
		while (tu_now() < until)
			usleep(10000);
		stalled_d = d;
		TU_CHECK(tu_wait(successor, NULL, 30), "no successor daemon 30 s after a kill");
		return;
	}

	if (s->how == 'F' && tu_freeze(d, 1) == 0) {
		during(a, s->how);
		while (tu_now() < until)
			usleep(10000);
		TU_CHECK(tu_freeze(d, 0) == 0, "thaw the daemon");
		return;
	}
	TU_CHECK(kill(d, SIGSTOP) == 0, "SIGSTOP the daemon");
	during(a, s->how);
	while (tu_now() < until)
		usleep(10000);
	TU_CHECK(kill(d, SIGCONT) == 0, "SIGCONT the daemon");
}

static int a1_reconnected(void *arg)
{
	(void)arg;
	return tu_status("held_sets") == 0;
}

static void cut_and_reconnect(struct proc *a, struct proc *b, struct tu_region_spec *b_spec,
			      int round)
{
	struct tu_region_reply r;
	size_t files = 0;

	for (size_t pg = 0; pg < N; pg++)
		files += tu_is_file_page(a[1].c.pid, a[1].r.addr + pg * PAGE);
	TU_CHECK(tu_region_cmd(a[0].c.wr, a[0].c.rd, TU_RC_CUT, 0, &r, 10) == 0 && r.bad >= 1,
		 "A1's connection to the daemon not found to cut");
	/* The daemon sees the close at once and holds A1's set; A1's scanner
	 * reconnects at its next request and gets it back. */
	usleep(500000);
	TU_CHECK(tu_wait(a1_reconnected, NULL, 20), "A1's references still held apart after 20 s");
	b_spec->seed = 5000 + (uint64_t)round;
	start(&b[0], b_spec);
	start(&b[1], b_spec);
	pair_of = b;
	TU_CHECK(tu_wait(pair_merged, NULL, 60), "B1 and B2 did not merge after the cut");
	check(&a[0], "A1", "after its connection was cut");
	check(&a[1], "A2", "after A1's connection was cut");
	size_t now = 0;
	for (size_t pg = 0; pg < N; pg++)
		now += tu_is_file_page(a[1].c.pid, a[1].r.addr + pg * PAGE);
	/* A2 shares A1's pool pages; they are all still there. */
	TU_CHECK(now + N / 8 >= files, "A2 had %zu merged pages before A1's cut, %zu after", files,
		 now);
	for (int i = 0; i < 2; i++) {
		tu_region_cmd(b[i].c.wr, b[i].c.rd, TU_RC_QUIT, 0, NULL, 0);
		TU_CHECK(tu_reap(&b[i].c) == 0, "B%d exit", i + 1);
	}
	printf("connection cut: A1 reconnected with its references, A and B intact\n");
}

int main(void)
{
	static struct stall st[MAX_STALLS];
	struct tu_region_spec a_spec = { .pages = N, .seed = 1, .madvise = 1 };
	struct tu_region_spec b_spec = { .pages = N, .madvise = 1 };
	struct proc a[2], b[2];
	uint64_t rng = (uint64_t)getpid() * 2654435761u + 1;
	struct tu_region_reply r;
	pid_t d;
	int n;

	tu_require_merging();
	tu_private_daemon();
	n = parse_stalls(st, &rng);
	start(&a[0], &a_spec);
	start(&a[1], &a_spec);
	pair_of = a;
	TU_CHECK(tu_wait(pair_merged, NULL, 30), "A1 and A2 did not merge");
	d = tu_daemon_pid();
	TU_CHECK(d > 0, "no daemon");
	for (int i = 0; i < 2; i++)
		TU_CHECK(tu_region_cmd(a[i].c.wr, a[i].c.rd, TU_RC_WRITE, 200, &r, 10) == 0,
			 "start writers");
	for (int k = 0; k < n; k++) {
		char when[96];
		usleep((useconds_t)(tu_xorshift(&rng) % 500000));
		stall(d, &st[k], a);
		snprintf(when, sizeof(when), "after round %d (%s, %d s)", k + 1, kind(st[k].how),
			 st[k].secs);
		b_spec.seed = 1000 + (uint64_t)k;
		start(&b[0], &b_spec);
		start(&b[1], &b_spec);
		pair_of = b;
		if (!tu_wait(pair_merged, NULL, 60)) {
			explain(b);
			TU_FAIL("B1 and B2 did not merge %s", when);
		}
		check(&a[0], "A1", when);
		check(&a[1], "A2", when);
		check(&b[0], "B1", when);
		check(&b[1], "B2", when);
		TU_CHECK(tu_region_cmd(a[0].c.wr, a[0].c.rd, TU_RC_KIDS, 0, &r, 60) == 0,
			 "A1's children did not finish %s", when);
		TU_CHECK(r.bad == 0, "%llu of A1's 4 fork children read wrong bytes %s",
			 (unsigned long long)r.bad, when);
		for (int i = 0; i < 2; i++) {
			tu_region_cmd(b[i].c.wr, b[i].c.rd, TU_RC_QUIT, 0, NULL, 0);
			TU_CHECK(tu_reap(&b[i].c) == 0, "B%d exit", i + 1);
		}
		/* Nobody gave the stalled daemon up for dead and started another. */
		if (st[k].how == 'K')
			d = tu_daemon_pid();
		TU_CHECK(tu_daemon_pid() == d, "the daemon was replaced %s", when);
		printf("round %d: %s for %d s, A, B and A1's children intact\n", k + 1,
		       kind(st[k].how), st[k].secs);
		fflush(stdout);
	}
	cut_and_reconnect(a, b, &b_spec, n);
	for (int i = 0; i < 2; i++) {
		check(&a[i], i ? "A2" : "A1", "at the end");
		tu_region_cmd(a[i].c.wr, a[i].c.rd, TU_RC_QUIT, 0, NULL, 0);
		TU_CHECK(tu_reap(&a[i].c) == 0, "A%d exit", i + 1);
	}
	TU_CHECK(tu_wait(tu_pool_empty, NULL, 20), "pool not empty after every process left: %lld",
		 tu_status("pool_pages"));
	printf("PASS: %d stalls, no byte lost, one daemon, pool empty at the end\n", n);
	return 0;
}
