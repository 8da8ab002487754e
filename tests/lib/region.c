/* SPDX-License-Identifier: MIT */
/* region — see region.h. */
#define _GNU_SOURCE
#include "region.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include <stdlib.h>

void tu_region_init(struct tu_region *r, size_t pages, uint64_t seed)
{
	memset(r, 0, sizeof(*r));
	r->pages = pages;
	r->mem = tu_map(pages * PAGE);
	r->shadow = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			 -1, 0);
	TU_CHECK(r->shadow != MAP_FAILED, "mmap shadow: %s", strerror(errno));
	tu_fill(r->mem, pages * PAGE, seed);
	memcpy(r->shadow, r->mem, pages * PAGE);
	for (int k = 0; k < TU_REGION_WRITERS; k++)
		pthread_mutex_init(&r->lock[k], NULL);
}

struct writer_arg { struct tu_region *r; int k; };
#define MAX_KIDS 64

/* The process's one piece of region state: its writers' arguments and the
 * fork children it has not reaped yet. */
static struct region_ctx {
	struct writer_arg wargs[TU_REGION_WRITERS];
	pid_t kids[MAX_KIDS];
	int kid_pipe[MAX_KIDS], nkids;
} rg;

/* Writer k owns pages k, k + n, k + 2n, ...: a write and its shadow copy
 * are one step under its lock, so a check that holds every lock sees both
 * equal. */
static void *writer(void *p)
{
	struct writer_arg *a = p;
	struct tu_region *r = a->r;
	uint64_t s = 0x9e3779b9ull * (uint64_t)(a->k + 1);
	size_t own = (r->pages + (size_t)r->nwriters - 1 - (size_t)a->k) / (size_t)r->nwriters;
	long ns = (long)(1e9 * r->nwriters / r->rate);
	struct timespec ts = { ns / 1000000000, ns % 1000000000 };

	while (own && !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		size_t page = (size_t)(tu_xorshift(&s) % own) * (size_t)r->nwriters + (size_t)a->k;
		size_t word = (size_t)(tu_xorshift(&s) % (PAGE / 8));
		uint64_t v = tu_xorshift(&s);
		pthread_mutex_lock(&r->lock[a->k]);
		((volatile uint64_t *)(r->mem + page * PAGE))[word] = v;
		((uint64_t *)(r->shadow + page * PAGE))[word] = v;
		pthread_mutex_unlock(&r->lock[a->k]);
		__atomic_add_fetch(&r->writes, 1, __ATOMIC_RELAXED);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

void tu_region_write(struct tu_region *r, int n, double rate)
{
	if (r->nwriters || n <= 0)
		return;
	r->nwriters = n > TU_REGION_WRITERS ? TU_REGION_WRITERS : n;
	r->rate = rate > 0 ? rate : 1;
	for (int k = 0; k < r->nwriters; k++) {
		rg.wargs[k] = (struct writer_arg){ r, k };
		TU_CHECK(pthread_create(&r->th[k], NULL, writer, &rg.wargs[k]) == 0, "pthread_create");
	}
}

void tu_region_stop(struct tu_region *r)
{
	__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
	for (int k = 0; k < r->nwriters; k++)
		pthread_join(r->th[k], NULL);
	r->nwriters = 0;
	r->stop = 0;
}

size_t tu_region_check(struct tu_region *r, size_t *first)
{
	size_t bad = 0;

	for (int k = 0; k < TU_REGION_WRITERS; k++)
		pthread_mutex_lock(&r->lock[k]);
	for (size_t pg = 0; pg < r->pages; pg++)
		if (memcmp(r->mem + pg * PAGE, r->shadow + pg * PAGE, PAGE)) {
			if (!bad && first)
				*first = pg;
			bad++;
		}
	for (int k = 0; k < TU_REGION_WRITERS; k++)
		pthread_mutex_unlock(&r->lock[k]);
	return bad;
}

void tu_region_fini(struct tu_region *r)
{
	tu_region_stop(r);
	munmap(r->mem, r->pages * PAGE);
	munmap(r->shadow, r->pages * PAGE);
}


/* A fork child: the region as it was at the fork is its truth. */
static int kid(struct tu_region *r, int rd, int ready)
{
	unsigned char *expect = mmap(NULL, r->pages * PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct pollfd pf = { .fd = rd, .events = POLLIN };
	int bad = 0;

	if (expect == MAP_FAILED) {
		/* e.g. vm.max_map_count lowered by another test (vma_budget) */
		fprintf(stderr, "fork child: mmap: %s (vm.max_map_count %zu)\n", strerror(errno),
			tu_max_map_count());
		_exit(3);
	}
	memcpy(expect, r->shadow, r->pages * PAGE);
	if (write(ready, "r", 1) != 1)
		_exit(4);
	close(ready);
	for (;;) {
		int last = poll(&pf, 1, 500) != 0;
		bad |= memcmp(r->mem, expect, r->pages * PAGE) != 0;
		if (last || bad)
			break;
	}
	_exit(bad);
}

/* Fork n children while every writer is held: what they inherit equals
 * the shadow, which each copies before the writers go on. */
static void fork_kids(struct tu_region *r, int n)
{
	for (int i = 0; i < n && rg.nkids < MAX_KIDS; i++) {
		int p[2], ready[2];
		char c;
		TU_CHECK(pipe(p) == 0 && pipe(ready) == 0, "pipe");
		for (int k = 0; k < TU_REGION_WRITERS; k++)
			pthread_mutex_lock(&r->lock[k]);
		pid_t pid = fork();
		TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
		if (pid == 0) {
			close(p[1]);
			close(ready[0]);
			kid(r, p[0], ready[1]);
		}
		close(p[0]);
		close(ready[1]);
		if (read(ready[0], &c, 1) != 1) {
			int st = 0;
			waitpid(pid, &st, 0);
			TU_FAIL("fork child died at start: %s %d", WIFSIGNALED(st) ? "signal" :
				"exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		}
		close(ready[0]);
		for (int k = 0; k < TU_REGION_WRITERS; k++)
			pthread_mutex_unlock(&r->lock[k]);
		rg.kids[rg.nkids] = pid;
		rg.kid_pipe[rg.nkids++] = p[1];
	}
}

static uint64_t reap_kids(void)
{
	uint64_t bad = 0;

	for (int i = 0; i < rg.nkids; i++)
		close(rg.kid_pipe[i]);
	for (int i = 0; i < rg.nkids; i++) {
		int st;
		while (waitpid(rg.kids[i], &st, 0) < 0 && errno == EINTR)
			;
		bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	}
	rg.nkids = 0;
	return bad;
}

int tu_cut_daemon_conns(void)
{
	const char *sock = getenv("SAMEPAGE_SOCKET");
	int n = 0;

	for (int fd = 3; sock && fd < 1024; fd++) {
		struct sockaddr_un sa;
		socklen_t len = sizeof(sa);
		int type;
		socklen_t tl = sizeof(type);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_SEQPACKET ||
		    getpeername(fd, (struct sockaddr *)&sa, &len) || sa.sun_family != AF_UNIX ||
		    strcmp(sa.sun_path, sock))
			continue;
		n += shutdown(fd, SHUT_RDWR) == 0;
	}
	return n;
}

int tu_region_child(int rd, int wr, void *arg)
{
	const struct tu_region_spec *spec = arg;
	struct tu_region r;
	struct tu_region_reply rep = { 0 };
	char cmd;
	double rate;

	tu_region_init(&r, spec->pages, spec->seed);
	if (spec->madvise && madvise(r.mem, r.pages * PAGE, MADV_MERGEABLE))
		return 2;
	rep.addr = (uintptr_t)r.mem;
	tu_send(wr, &rep, sizeof(rep));
	while (tu_recv(rd, &cmd, 1) == 0 && tu_recv(rd, &rate, sizeof(rate)) == 0) {
		size_t first = 0;
		switch (cmd) {
		case TU_RC_WRITE:
			tu_region_write(&r, 2, rate);
			break;
		case TU_RC_CHECK:
			rep.bad = tu_region_check(&r, &first);
			rep.first_bad = first;
			break;
		case TU_RC_FORK:
			fork_kids(&r, (int)rate);
			break;
		case TU_RC_KIDS:
			rep.bad = reap_kids();
			break;
		case TU_RC_CUT:
			rep.bad = (uint64_t)tu_cut_daemon_conns();
			break;
		case TU_RC_UNMERGE:
			if (madvise(r.mem, r.pages * PAGE, MADV_UNMERGEABLE)) {
				fprintf(stderr, "region: MADV_UNMERGEABLE: %s\n", strerror(errno));
				return 5;
			}
			if (madvise(r.mem, r.pages * PAGE, MADV_MERGEABLE)) {
				fprintf(stderr, "region: MADV_MERGEABLE: %s\n", strerror(errno));
				return 5;
			}
			break;
		case TU_RC_QUIT:
			tu_region_stop(&r);
			reap_kids();
			return rep.bad ? 1 : 0;
		default:
			return 4;
		}
		rep.writes = __atomic_load_n(&r.writes, __ATOMIC_RELAXED);
		tu_send(wr, &rep, sizeof(rep));
	}
	return 3;
}

int tu_region_cmd(int wr, int rd, char cmd, double rate, struct tu_region_reply *out, int secs)
{
	struct pollfd pf = { .fd = rd, .events = POLLIN };

	if (tu_send(wr, &cmd, 1) || tu_send(wr, &rate, sizeof(rate)))
		return -1;
	if (cmd == TU_RC_QUIT)
		return 0;
	if (poll(&pf, 1, secs * 1000) != 1)
		return -1;
	return tu_recv(rd, out, sizeof(*out));
}
