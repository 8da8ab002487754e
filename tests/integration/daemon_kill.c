/* SPDX-License-Identifier: MIT */
/*
 * Invariant 5: the daemon dying loses nothing.
 *
 * Three processes merge the same 16 MiB (R1). With scanning slowed down,
 * they then mark a second identical 16 MiB (R2) mergeable, and the daemon
 * is killed with SIGKILL while R2 is half merged. The processes keep
 * running; every byte of R1 and R2 stays what they wrote, also after they
 * write to merged pages; R1 still maps the dead daemon's pool (the
 * mappings keep its memfds alive). Their scanners reconnect to a new
 * daemon, started on demand, and a third identical region (R3) merges
 * there (frames drop), while the old merged pages still read correctly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPROC 3
#define N1 4096u /* R1: 16 MiB */
#define N2 4096u /* R2: 16 MiB, being merged when the daemon dies */
#define N3 2048u /* R3: 8 MiB, merged by the new daemon */

struct addrs { uintptr_t r1, r2, r3; };

/* Child: holds R1 (+R2, R3 on request) and checks them against references. */
static int child(int rd, int wr, void *arg)
{
	unsigned char *r1 = tu_map((size_t)N1 * PAGE), *r2 = NULL, *r3 = NULL;
	unsigned char *ref1 = malloc((size_t)N1 * PAGE), *ref2 = malloc((size_t)N2 * PAGE);
	unsigned char *ref3 = malloc((size_t)N3 * PAGE);
	struct addrs a = { .r1 = (uintptr_t)r1 };
	char cmd;

	(void)arg;
	TU_CHECK(ref1 && ref2 && ref3, "malloc");
	tu_fill(r1, (size_t)N1 * PAGE, 42);
	memcpy(ref1, r1, (size_t)N1 * PAGE);
	TU_CHECK(madvise(r1, (size_t)N1 * PAGE, MADV_MERGEABLE) == 0, "madvise R1: %m");
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		int ok = 1;
		switch (cmd) {
		case '2':
			r2 = tu_map((size_t)N2 * PAGE);
			tu_fill(r2, (size_t)N2 * PAGE, 43);
			memcpy(ref2, r2, (size_t)N2 * PAGE);
			ok = madvise(r2, (size_t)N2 * PAGE, MADV_MERGEABLE) == 0;
			a.r2 = (uintptr_t)r2;
			break;
		case '3':
			r3 = tu_map((size_t)N3 * PAGE);
			tu_fill(r3, (size_t)N3 * PAGE, 44);
			memcpy(ref3, r3, (size_t)N3 * PAGE);
			ok = madvise(r3, (size_t)N3 * PAGE, MADV_MERGEABLE) == 0;
			a.r3 = (uintptr_t)r3;
			break;
		case 'w': /* write merged (and half-merged) pages */
			for (size_t pg = 5; pg < N1; pg += 16) {
				r1[pg * PAGE + 11] ^= 0xa5;
				ref1[pg * PAGE + 11] ^= 0xa5;
			}
			for (size_t pg = 9; pg < N2; pg += 16) {
				r2[pg * PAGE + 13] ^= 0x3c;
				ref2[pg * PAGE + 13] ^= 0x3c;
			}
			/* then check everything */
			/* fall through */
		case 'v':
			ok = !memcmp(r1, ref1, (size_t)N1 * PAGE) &&
			     (!r2 || !memcmp(r2, ref2, (size_t)N2 * PAGE)) &&
			     (!r3 || !memcmp(r3, ref3, (size_t)N3 * PAGE));
			break;
		case 'q':
			return 0;
		default:
			return 4;
		}
		if (!ok)
			a.r1 = 0; /* the verdict */
		tu_send(wr, &a, sizeof(a));
		a.r1 = (uintptr_t)r1;
	}
	return 3;
}

static struct tu_child c[NPROC];
static pid_t pids[NPROC];
static struct addrs ad[NPROC];

/* Read with a deadline: a process blocked for good fails the test. */
static int recv_to(int fd, void *p, size_t len, int secs)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };

	if (poll(&pf, 1, secs * 1000) != 1)
		return -1;
	return tu_recv(fd, p, len);
}

static void cmd_all(char cmd, const char *what, int secs)
{
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_send(c[i].wr, &cmd, 1) == 0, "process %d gone (%s)", i, what);
	for (int i = 0; i < NPROC; i++) {
		uintptr_t r1 = ad[i].r1;
		TU_CHECK(recv_to(c[i].rd, &ad[i], sizeof(ad[i]), secs) == 0,
			 "process %d died or hung for %d s (%s)", i, secs, what);
		TU_CHECK(ad[i].r1 == r1, "process %d: memory wrong after %s", i, what);
	}
}

static size_t frames(int region, size_t n)
{
	uintptr_t a[NPROC];

	for (int i = 0; i < NPROC; i++)
		a[i] = region == 1 ? ad[i].r1 : region == 2 ? ad[i].r2 : ad[i].r3;
	return tu_frames(pids, a, NPROC, n);
}

static int r1_merged(void *arg) { (void)arg; return frames(1, N1) <= N1 + 8; }
static int r3_merged(void *arg) { (void)arg; return frames(3, N3) <= N3 + 8; }
static pid_t old_daemon;
static int new_daemon(void *arg)
{
	pid_t p = tu_daemon_pid();

	(void)arg;
	return p > 0 && p != old_daemon;
}

static size_t file_pages(int i, uintptr_t a, size_t n)
{
	size_t k = 0;

	for (size_t pg = 0; pg < n; pg++)
		k += tu_is_file_page(pids[i], a + pg * PAGE);
	return k;
}

int main(void)
{
	size_t f1, f2, files1[NPROC];
	double t0;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(170);
	/* Slow scanning, so that R2 is caught half merged. */
	TU_CHECK(tu_cli("set pages_to_scan=256 sleep_millisecs=20") == 0, "samepage set");
	for (int i = 0; i < NPROC; i++) {
		tu_spawn(&c[i], child, NULL);
		pids[i] = c[i].pid;
	}
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(recv_to(c[i].rd, &ad[i], sizeof(ad[i]), 30) == 0, "process %d died", i);
	t0 = tu_now();
	TU_CHECK(tu_wait(r1_merged, NULL, 60), "R1 not merged after 60 s: %zu frames",
		 frames(1, N1));
	printf("R1 merged in %.2f s: %zu frames for %u pages x %d\n", tu_now() - t0,
	       frames(1, N1), N1, NPROC);

	/* R2; kill the daemon once R2 is partly merged. */
	cmd_all('2', "mapping R2", 30);
	t0 = tu_now();
	while ((f2 = frames(2, N2)) > NPROC * N2 - N2 / 4 && tu_now() < t0 + 60)
		usleep(2000);
	old_daemon = tu_daemon_pid();
	TU_CHECK(old_daemon > 0, "no daemon");
	TU_CHECK(kill(old_daemon, SIGKILL) == 0, "kill daemon: %m");
	f2 = frames(2, N2);
	printf("daemon %d killed %.2f s into merging R2: %zu frames for %u pages x %d\n",
	       (int)old_daemon, tu_now() - t0, f2, N2, NPROC);
	TU_CHECK(f2 < NPROC * N2, "R2 had not begun to merge");
	TU_CHECK(f2 > N2 + 64, "R2 was already merged when the daemon died: test inconclusive");

	/* Nothing changes for the processes: same frames, same bytes. */
	usleep(200000);
	f1 = frames(1, N1);
	TU_CHECK(f1 <= N1 + 8, "R1 lost its merge when the daemon died: %zu frames", f1);
	for (int i = 0; i < NPROC; i++) {
		TU_CHECK(kill(pids[i], 0) == 0, "process %d died with the daemon", i);
		files1[i] = file_pages(i, ad[i].r1, N1);
		TU_CHECK(files1[i] >= N1 - 8, "process %d: only %zu of R1's pages map the pool", i,
			 files1[i]);
	}
	cmd_all('v', "the daemon's death", 10);
	printf("content of R1 and R2 correct after the daemon's death\n");
	cmd_all('w', "writes to merged pages", 10);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(!tu_is_file_page(pids[i], ad[i].r1 + 5 * PAGE),
			 "process %d: written page still maps the pool", i);
	printf("content correct after writing merged pages\n");

	/* A new daemon, started on demand by the processes' scanners. */
	t0 = tu_now();
	TU_CHECK(tu_wait(new_daemon, NULL, 20), "no new daemon 20 s after the old one died");
	printf("new daemon %d after %.2f s\n", (int)tu_daemon_pid(), tu_now() - t0);
	cmd_all('3', "mapping R3", 30);
	t0 = tu_now();
	TU_CHECK(tu_wait(r3_merged, NULL, 30), "R3 not merged by the new daemon after 30 s: "
		 "%zu frames for %u pages x %d", frames(3, N3), N3, NPROC);
	printf("R3 merged by the new daemon in %.2f s: %zu frames\n", tu_now() - t0,
	       frames(3, N3));
	cmd_all('v', "merging under the new daemon", 10);
	printf("R1 (old merges), R2 and R3 all correct; R1: %zu frames, R2: %zu frames\n",
	       frames(1, N1), frames(2, N2));
	for (int i = 0; i < NPROC; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "process %d exit", i);
	}
	return 0;
}
