/* SPDX-License-Identifier: MIT */
/*
 * Pages a device may write are never replaced (invariant 10, DESIGN.md
 * "Pages a device may write"). Region A and its copy B are mergeable; 16
 * pages of A are io_uring registered buffers, pinned as a device's DMA
 * target is. Merging maps B and the rest of A from the pool, but the
 * pinned pages keep their frames, and a READ_FIXED from a file into them
 * (the kernel writing the frame behind the page tables) shows up in A byte
 * for byte; replaced, the read would have landed in a frame A no longer
 * maps. Once unregistered, those pages merge like the rest. Pinned pages
 * with no duplicate, between two merged runs, are a gap that filling
 * would take in: they keep their frames too. Pages merged first and
 * registered afterwards get private copies over their pool pages (pinning
 * for a write copies them), equal to them: those copies are not merged
 * again while the buffers are registered, and a read reaches them. Pages
 * left not our own by a
 * fork child that has exited merge, and so do transparent huge pages.
 * Without UFFDIO_MOVE (SAMEPAGE_FAULT=move, as before Linux 6.8) pages
 * still merge, unchecked, but a gap holding data is never filled.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 256u
#define PIN_AT 64u
#define NPIN 16u
#define HUGE (4u << 20)

struct ring {
	int fd;
	unsigned char *sq, *cq;
	struct io_uring_sqe *sqes;
	struct io_uring_params p;
};

static void ring_open(struct ring *r)
{
	memset(r, 0, sizeof(*r));
	r->fd = (int)syscall(SYS_io_uring_setup, 4, &r->p);
	if (r->fd < 0)
		tu_skip("io_uring unavailable");
	size_t sqsz = r->p.sq_off.array + r->p.sq_entries * sizeof(unsigned);
	size_t cqsz = r->p.cq_off.cqes + r->p.cq_entries * sizeof(struct io_uring_cqe);
	if (cqsz > sqsz)
		sqsz = cqsz;
	r->sq = mmap(NULL, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
		     IORING_OFF_SQ_RING);
	r->sqes = mmap(NULL, r->p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	TU_CHECK(r->sq != MAP_FAILED && r->sqes != MAP_FAILED, "io_uring mmap: %s", strerror(errno));
	TU_CHECK(r->p.features & IORING_FEAT_SINGLE_MMAP, "io_uring without a single ring mapping");
	r->cq = r->sq;
}

/* One READ_FIXED of len bytes of file fd into registered buffer 0 at buf. */
static int ring_read_fixed(struct ring *r, int fd, void *buf, unsigned len)
{
	unsigned *tail = (unsigned *)(r->sq + r->p.sq_off.tail);
	unsigned mask = *(unsigned *)(r->sq + r->p.sq_off.ring_mask);
	unsigned *array = (unsigned *)(r->sq + r->p.sq_off.array);
	unsigned t = *tail, idx = t & mask;
	struct io_uring_sqe *sqe = &r->sqes[idx];

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_READ_FIXED;
	sqe->fd = fd;
	sqe->addr = (uintptr_t)buf;
	sqe->len = len;
	sqe->buf_index = 0;
	array[idx] = idx;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	TU_CHECK(syscall(SYS_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) == 1,
		 "io_uring_enter: %s", strerror(errno));
	unsigned *chead = (unsigned *)(r->cq + r->p.cq_off.head);
	struct io_uring_cqe *cqes = (struct io_uring_cqe *)(r->cq + r->p.cq_off.cqes);
	struct io_uring_cqe *c = &cqes[*chead & *(unsigned *)(r->cq + r->p.cq_off.ring_mask)];
	int res = c->res;
	__atomic_store_n(chead, *chead + 1, __ATOMIC_RELEASE);
	return res;
}

/* The kernel writes NPIN pages of a file (bytes from seed) into the
 * registered buffer at pin, behind the page tables: pin must show them. */
static void read_into(struct ring *r, unsigned char *pin, uint64_t seed, const char *what)
{
	char path[] = "/tmp/samepage-pinned-XXXXXX";
	unsigned char *data = malloc(NPIN * PAGE);
	int fd = mkstemp(path);

	TU_CHECK(fd >= 0 && data, "mkstemp: %s", strerror(errno));
	unlink(path);
	tu_fill(data, NPIN * PAGE, seed);
	TU_CHECK(pwrite(fd, data, NPIN * PAGE, 0) == (ssize_t)(NPIN * PAGE), "pwrite");
	int got = ring_read_fixed(r, fd, pin, NPIN * PAGE);
	TU_CHECK(got == (int)(NPIN * PAGE), "READ_FIXED: %d", got);
	TU_CHECK(!memcmp(pin, data, NPIN * PAGE), "a read into %s did not reach them", what);
	close(fd);
	free(data);
}

struct region { uintptr_t a; size_t n; };

static int all_merged(void *arg)
{
	const struct region *r = arg;

	return tu_file_pages(getpid(), r->a, r->n) == r->n;
}

static void wait_merged(uintptr_t a, size_t n, const char *what)
{
	struct region r = { a, n };

	TU_CHECK(tu_wait(all_merged, &r, 60), "%s: %zu of %zu pages merged after 60 s", what,
		 tu_file_pages(getpid(), a, n), n);
}

/* A mergeable copy of ref that nothing else duplicates yet (seed). */
static unsigned char *copy_of(const unsigned char *ref, size_t len)
{
	unsigned char *p = tu_map(len);

	memcpy(p, ref, len);
	return p;
}

/* unique: B's pages facing the pinned ones differ, so that those are a gap
 * between two merged runs of A, which filling would take in (and must
 * not: fill_flush()). */
static void pinned_phase(int unique)
{
	unsigned char *ref = malloc(NPAGES * PAGE), *a, *b, *pin;
	uint64_t before[NPIN], after[NPIN];
	struct ring r;

	TU_CHECK(ref, "malloc");
	tu_fill(ref, NPAGES * PAGE, 4242 + (uint64_t)unique); /* pool pages of its own */
	a = copy_of(ref, NPAGES * PAGE);
	b = copy_of(ref, NPAGES * PAGE);
	if (unique)
		tu_fill(b + PIN_AT * PAGE, NPIN * PAGE, 4343);
	pin = a + PIN_AT * PAGE;
	ring_open(&r);
	struct iovec iov = { pin, NPIN * PAGE };
	if (syscall(SYS_io_uring_register, r.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
		tu_skip("io_uring buffers cannot be registered");
	for (unsigned i = 0; i < NPIN; i++)
		before[i] = tu_pfn(getpid(), (uintptr_t)pin + i * PAGE);
	TU_CHECK(samepage_madvise(a, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise A");
	TU_CHECK(samepage_madvise(b, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise B");
	wait_merged((uintptr_t)b, PIN_AT, "B");
	wait_merged((uintptr_t)b + (PIN_AT + NPIN) * PAGE, NPAGES - PIN_AT - NPIN, "B");
	wait_merged((uintptr_t)a, PIN_AT, "A before the pinned pages");
	wait_merged((uintptr_t)pin + NPIN * PAGE, NPAGES - PIN_AT - NPIN, "A after them");
	/* Passes go on offering the pinned pages: give them a few. */
	tu_sleep_ms(1000);
	for (unsigned i = 0; i < NPIN; i++) {
		after[i] = tu_pfn(getpid(), (uintptr_t)pin + i * PAGE);
		TU_CHECK(!tu_is_file_page(getpid(), (uintptr_t)pin + i * PAGE) && after[i] == before[i],
			 "pinned page %u was replaced (frame %#llx, was %#llx)", i,
			 (unsigned long long)after[i], (unsigned long long)before[i]);
	}
	TU_CHECK(!memcmp(a, ref, NPAGES * PAGE), "content changed by merging");
	/* `samepage status --pid` says why they are left. */
	char js[4096];
	TU_CHECK(tu_status_json(getpid(), js, sizeof(js)) == 0, "status --pid");
	TU_CHECK(tu_json_get(js, "pages_pinned") >= NPIN, "pages_pinned %lld, want >= %u: %s",
		 tu_json_get(js, "pages_pinned"), NPIN, js);

	/* The kernel writes the pinned frames: A must show it. */
	read_into(&r, pin, 777, "pinned pages");
	TU_CHECK(!memcmp(b, ref, PIN_AT * PAGE), "B changed by a read into A");

	/* Unpinned, with their old bytes again, they merge. */
	TU_CHECK(syscall(SYS_io_uring_register, r.fd, IORING_UNREGISTER_BUFFERS, NULL, 0) == 0,
		 "unregister: %s", strerror(errno));
	if (!unique) {
		memcpy(pin, ref + PIN_AT * PAGE, NPIN * PAGE);
		wait_merged((uintptr_t)pin, NPIN, "the pages once unpinned");
		TU_CHECK(!memcmp(a, ref, NPAGES * PAGE), "A's content wrong after merging");
	}
	close(r.fd);
	free(ref);
}

/* Pages merged first, then registered as io_uring buffers: pinning them
 * for writing gives each a private copy over its pool page, equal to it.
 * Such a copy must not be dropped to merge it again in place (its frame
 * is the device's target): a READ_FIXED into them must show in A. */
static void pinned_after_merge_phase(void)
{
	unsigned char *ref = malloc(NPAGES * PAGE), *a, *b, *pin;
	struct ring r;

	TU_CHECK(ref, "malloc");
	tu_fill(ref, NPAGES * PAGE, 8484);
	a = copy_of(ref, NPAGES * PAGE);
	b = copy_of(ref, NPAGES * PAGE);
	pin = a + PIN_AT * PAGE;
	TU_CHECK(samepage_madvise(a, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise A");
	TU_CHECK(samepage_madvise(b, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise B");
	wait_merged((uintptr_t)a, NPAGES, "A");
	ring_open(&r);
	struct iovec iov = { pin, NPIN * PAGE };
	if (syscall(SYS_io_uring_register, r.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
		tu_skip("io_uring buffers cannot be registered");
	tu_sleep_ms(1500); /* passes that could merge the copies again */
	read_into(&r, pin, 779, "pages pinned after merging");
	TU_CHECK(!memcmp(b, ref, NPAGES * PAGE), "B changed by a read into A");
	close(r.fd);
	free(ref);
}

/* Pages an exited fork child left behind are not ours alone until
 * written or pinned (the kernel will not move them, as if pinned): the
 * scanner's reads and evict_close() make them ours without a write, and
 * they merge. */
static void fork_phase(void)
{
	unsigned char *ref = malloc(NPAGES * PAGE), *left, *twin;

	TU_CHECK(ref, "malloc");
	tu_fill(ref, NPAGES * PAGE, 5151);
	left = copy_of(ref, NPAGES * PAGE);
	/* The system call, not fork(3): the library's fork handling must
	 * not touch these pages. */
	pid_t gone = (pid_t)syscall(SYS_fork);
	TU_CHECK(gone >= 0, "fork");
	if (!gone)
		_exit(0);
	TU_CHECK(waitpid(gone, NULL, 0) == gone, "waitpid");
	twin = copy_of(ref, NPAGES * PAGE);
	TU_CHECK(samepage_madvise(twin, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise twin");
	TU_CHECK(samepage_madvise(left, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise left");
	wait_merged((uintptr_t)left, NPAGES, "pages an exited fork child left");
	TU_CHECK(!memcmp(left, ref, NPAGES * PAGE) && !memcmp(twin, ref, NPAGES * PAGE),
		 "content changed by merging");
	free(ref);
}

static void huge_phase(void)
{
	unsigned char *ref = malloc(HUGE), *h, *twin;

	TU_CHECK(ref, "malloc");
	tu_fill(ref, HUGE, 999);
	/* 2 MiB aligned, huge pages asked for. */
	unsigned char *raw = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(raw != MAP_FAILED, "mmap");
	h = (unsigned char *)(((uintptr_t)raw + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
	madvise(h, HUGE, MADV_HUGEPAGE);
	memcpy(h, ref, HUGE);
	twin = copy_of(ref, HUGE);
	TU_CHECK(samepage_madvise(h, HUGE, MADV_MERGEABLE) == 0, "madvise huge");
	TU_CHECK(samepage_madvise(twin, HUGE, MADV_MERGEABLE) == 0, "madvise twin");
	wait_merged((uintptr_t)h, HUGE / PAGE, "transparent huge pages");
	TU_CHECK(!memcmp(h, ref, HUGE) && !memcmp(twin, ref, HUGE), "content changed by merging");
	free(ref);
}

/* SAMEPAGE_FAULT=move: nothing can be moved, so nothing is checked. A,
 * whose middle pages have no duplicate, merges around them; that gap
 * holds data the kernel cannot vouch for: filling leaves it. */
static void nomove_phase(void)
{
	unsigned char *ref = malloc(NPAGES * PAGE), *a, *b;
	uint64_t before[NPIN];

	TU_CHECK(ref, "malloc");
	tu_fill(ref, NPAGES * PAGE, 6161);
	a = copy_of(ref, NPAGES * PAGE);
	b = copy_of(ref, NPAGES * PAGE);
	tu_fill(b + PIN_AT * PAGE, NPIN * PAGE, 6262);
	for (unsigned i = 0; i < NPIN; i++)
		before[i] = tu_pfn(getpid(), (uintptr_t)a + (PIN_AT + i) * PAGE);
	TU_CHECK(samepage_madvise(a, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise A");
	TU_CHECK(samepage_madvise(b, NPAGES * PAGE, MADV_MERGEABLE) == 0, "madvise B");
	wait_merged((uintptr_t)a, PIN_AT, "A before the gap");
	wait_merged((uintptr_t)a + (PIN_AT + NPIN) * PAGE, NPAGES - PIN_AT - NPIN, "A after it");
	tu_sleep_ms(1500); /* quiet passes: filling tries */
	for (unsigned i = 0; i < NPIN; i++)
		TU_CHECK(tu_pfn(getpid(), (uintptr_t)a + (PIN_AT + i) * PAGE) == before[i],
			 "gap page %u changed frame without the kernel's check", i);
	TU_CHECK(!memcmp(a, ref, NPAGES * PAGE), "content changed by merging");
	free(ref);
}

int main(int argc, char **argv)
{
	tu_require_merging();
	if (argc > 1 && !strcmp(argv[1], "nomove")) {
		tu_private_daemon();
		nomove_phase();
		printf("without UFFDIO_MOVE: merged, a gap of data not filled\n");
		return 0;
	}
	tu_private_daemon();
	pinned_phase(0);
	printf("pinned pages kept their frames and took a read; merged once unpinned\n");
	pinned_phase(1);
	printf("pinned unique pages between runs kept their frames (not filled)\n");
	pinned_after_merge_phase();
	printf("pages pinned after merging kept their copies\n");
	fork_phase();
	printf("pages an exited fork child left merged\n");
	huge_phase();
	printf("transparent huge pages merged\n");
	/* The library reads SAMEPAGE_FAULT from its initial environment. */
	fflush(stdout);
	pid_t pid = fork();
	int st;
	TU_CHECK(pid >= 0, "fork");
	if (!pid) {
		setenv("SAMEPAGE_FAULT", "move", 1);
		execl("/proc/self/exe", "pinned_pages", "nomove", (char *)NULL);
		_exit(127);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
