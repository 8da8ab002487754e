/* SPDX-License-Identifier: MIT */
/*
 * Defragmentation (DESIGN.md, "Defragmentation"): merged pages whose pool
 * pages are scattered are moved to consecutive pool pages in the
 * background, and the sharers' VMAs coalesce.
 *
 * C and D hold N pages, C's and D's page i holding content (i * STRIDE) %
 * N: they merge first, so the pool holds the contents in that order. Then
 * A and B hold the same contents in order (page j holds content j): each
 * of their pages finds its pool page in the stable index, scattered, and
 * costs a VMA. While C and D live, nothing may move (their layout
 * differs: a copy would cost saving for good). Once C and D are gone, A
 * and B ask to move their pages, get the same consecutive pages, and their
 * VMAs fall from about N to a handful; the old pool pages are freed.
 *
 * Throughout, a writer thread in A and in B stores into random pages of a
 * few hot ones, with a shadow copy; every byte of A and B is checked
 * against the contents and the shadow at every step.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define N 2048u       /* 8 MiB each */
#define STRIDE 777u   /* odd: a permutation of 0..N-1 */
#define HOT 16u       /* pages the writers store into */
#define WAIT_S 60

static void content(unsigned char *p, size_t c)
{
	tu_fill(p, PAGE, 5000 + c);
}

/* ---- a holder: C/D (scattered) or A/B (in order, with a writer) ---- */

struct holder {
	unsigned char *mem, *shadow; /* shadow: the hot pages as written */
	pthread_mutex_t lock;
	uint64_t rng;
	int stop;
};

static void *writer(void *arg)
{
	struct holder *h = arg;

	while (!__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&h->lock);
		size_t pg = tu_xorshift(&h->rng) % HOT * (N / HOT);
		size_t off = tu_xorshift(&h->rng) % (PAGE / 8) * 8;
		uint64_t v = tu_xorshift(&h->rng);
		memcpy(h->mem + pg * PAGE + off, &v, 8);
		memcpy(h->shadow + (pg / (N / HOT)) * PAGE + off, &v, 8);
		pthread_mutex_unlock(&h->lock);
		usleep(5000);
	}
	return NULL;
}

/* Pages differing from what they must hold. */
static size_t wrong(struct holder *h, int scattered)
{
	static unsigned char want[PAGE];
	size_t bad = 0;

	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < N; i++) {
		const unsigned char *exp = want;
		if (!scattered && i % (N / HOT) == 0)
			exp = h->shadow + i / (N / HOT) * PAGE;
		else
			content(want, scattered ? (i * STRIDE) % N : i);
		bad += memcmp(h->mem + i * PAGE, exp, PAGE) != 0;
	}
	pthread_mutex_unlock(&h->lock);
	return bad;
}

struct reply { uintptr_t addr; size_t bad; };

static int holder_main(int rd, int wr, void *arg)
{
	int scattered = (int)(intptr_t)arg;
	struct holder h = { .rng = 99 + (uint64_t)getpid() };
	struct reply r;
	pthread_t th;
	char cmd;

	h.mem = tu_map((size_t)N * PAGE);
	h.shadow = malloc((size_t)HOT * PAGE);
	pthread_mutex_init(&h.lock, NULL);
	for (size_t i = 0; i < N; i++)
		content(h.mem + i * PAGE, scattered ? (i * STRIDE) % N : i);
	for (size_t k = 0; k < HOT; k++)
		memcpy(h.shadow + k * PAGE, h.mem + k * (N / HOT) * PAGE, PAGE);
	TU_CHECK_RETURN(madvise(h.mem, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	if (!scattered)
		pthread_create(&th, NULL, writer, &h);
	r = (struct reply){ .addr = (uintptr_t)h.mem };
	tu_send(wr, &r, sizeof(r));
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == 'q')
			break;
		r.bad = wrong(&h, scattered);
		tu_send(wr, &r, sizeof(r));
	}
	if (!scattered) {
		__atomic_store_n(&h.stop, 1, __ATOMIC_RELEASE);
		pthread_join(th, NULL);
	}
	return wrong(&h, scattered) != 0;
}

/* ---- the test ---- */

static struct tu_child A, B, C, D;
static uintptr_t addr[4];

static void start(struct tu_child *c, int scattered, uintptr_t *a)
{
	struct reply r;

	tu_spawn(c, holder_main, (void *)(intptr_t)scattered);
	TU_CHECK(tu_recv(c->rd, &r, sizeof(r)) == 0, "a holder did not start");
	*a = r.addr;
}

static void check(struct tu_child *c, const char *who, const char *when)
{
	struct reply r;

	TU_CHECK(tu_send(c->wr, "v", 1) == 0 && tu_recv(c->rd, &r, sizeof(r)) == 0,
		 "%s died %s", who, when);
	TU_CHECK(r.bad == 0, "%s: %zu pages wrong %s", who, r.bad, when);
}

/* Distinct frames of the given holders' N pages each. */
static size_t frames(struct tu_child *c0, uintptr_t a0, struct tu_child *c1, uintptr_t a1)
{
	pid_t pids[2] = { c0->pid, c1->pid };
	uintptr_t addrs[2] = { a0, a1 };

	return tu_frames(pids, addrs, 2, N);
}

static double wait_merged(struct tu_child *c0, uintptr_t a0, struct tu_child *c1, uintptr_t a1,
			  size_t slack, const char *who)
{
	double t0 = tu_now();
	size_t f;

	while ((f = frames(c0, a0, c1, a1)) > N + slack && tu_now() < t0 + WAIT_S)
		tu_sleep_ms(50);
	TU_CHECK(f <= N + slack, "%s did not merge: %zu frames for %u pages x 2", who, f, N);
	return tu_now() - t0;
}

int main(void)
{
	long va0, vb0, va, vb;
	double t0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	/* Past 256 VMAs, not 1/8 of vm.max_map_count (8191 here): the test's
	 * 2048 pages are enough to show it. */
	setenv("SAMEPAGE_DEFRAG_VMAS", "256", 1);

	start(&C, 1, &addr[2]);
	start(&D, 1, &addr[3]);
	wait_merged(&C, addr[2], &D, addr[3], 0, "C and D");
	start(&A, 0, &addr[0]);
	start(&B, 0, &addr[1]);
	/* The hot pages are written: up to 2 x HOT frames of their own. */
	wait_merged(&A, addr[0], &B, addr[1], 2 * HOT, "A and B");
	check(&A, "A", "after merging");
	check(&B, "B", "after merging");

	/* C and D share every page with A and B in another order: nothing
	 * moves while they live. */
	tu_sleep_ms(3000);
	va0 = tu_vmas(A.pid);
	vb0 = tu_vmas(B.pid);
	long long pool0 = tu_status("pool_pages"), moved0 = tu_status("pages_moved");
	printf("merged onto C's and D's pool pages: VMAs A %ld, B %ld; pool %lld pages, "
	       "%lld moved\n", va0, vb0, pool0, moved0);
	TU_CHECK(va0 > N / 2 && vb0 > N / 2, "A and B merged without scattering (VMAs %ld, %ld): "
		 "test inconclusive", va0, vb0);
	TU_CHECK(moved0 == 0 && pool0 <= N + 2 * HOT, "pages were copied while C and D shared "
		 "them in another layout: %lld moved, pool %lld pages", moved0, pool0);

	/* C exits, D is killed: A and B alone share the pages. */
	tu_send(C.wr, "q", 1);
	TU_CHECK(tu_reap(&C) == 0, "C: its memory was wrong at exit");
	kill(D.pid, SIGKILL);
	tu_reap(&D);

	t0 = tu_now();
	do {
		tu_sleep_ms(200);
		va = tu_vmas(A.pid);
		vb = tu_vmas(B.pid);
	} while ((va > va0 / 8 || vb > vb0 / 8) && tu_now() < t0 + WAIT_S);
	long long moved = tu_status("pages_moved");
	printf("defragmented in %.1f s: VMAs A %ld -> %ld, B %ld -> %ld; %lld pages moved\n",
	       tu_now() - t0, va0, va, vb0, vb, moved);
	TU_CHECK(va <= va0 / 8 && vb <= vb0 / 8, "VMAs did not fall: A %ld -> %ld, B %ld -> %ld "
		 "(%lld pages moved)", va0, va, vb0, vb, moved);
	check(&A, "A", "after defragmenting");
	check(&B, "B", "after defragmenting");
	wait_merged(&A, addr[0], &B, addr[1], 2 * HOT, "A and B after defragmenting");

	/* The old pages went with their last reference. */
	t0 = tu_now();
	while (tu_status("pool_pages") > N + 2 * HOT && tu_now() < t0 + 10)
		tu_sleep_ms(100);
	printf("pool: %lld pages for %u shared\n", tu_status("pool_pages"), N);
	TU_CHECK(tu_status("pool_pages") <= N + 2 * HOT, "the old pool pages stayed: %lld pages",
		 tu_status("pool_pages"));

	tu_send(A.wr, "q", 1);
	tu_send(B.wr, "q", 1);
	TU_CHECK(tu_reap(&A) == 0 && tu_reap(&B) == 0, "A or B: memory wrong at exit");
	return 0;
}
