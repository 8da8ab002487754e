/* SPDX-License-Identifier: MIT */
/*
 * Unit test of daemon/pool.h. Proves:
 *  - pool_alloc copies the page and records its hash, refs 0; ids come from
 *    the lowest segment with room (segment 0 first, segment 1 only once 0
 *    is full, back to 0 as soon as it has a free page);
 *  - freed ids are reused, with the new content;
 *  - a segment whose pages are all freed is closed: its memfd descriptor is
 *    no longer open (fcntl F_GETFD gives EBADF) and pool_seg_fd returns
 *    -ENOENT, segment 0 too; a closed segment is opened anew when
 *    needed; pool_fini closes everything;
 *  - extents: a reservation is a run of consecutive free ids, freed pages
 *    first (reused as a whole run), else the edge of the written ones, else
 *    a shorter run of at least 32, else a new segment;
 *  - the segment memfd is sealed: write/pwrite fail with EPERM (also through
 *    a read-write reopen of /proc/self/fd/N), a new MAP_SHARED PROT_WRITE
 *    mapping fails with EPERM, fallocate(PUNCH_HOLE) and MADV_REMOVE fail,
 *    ftruncate fails, no seal can be added or removed;
 *  - a MAP_PRIVATE PROT_WRITE mapping of it works and COWs: writing through
 *    it leaves pool_data and a shared read-only view unchanged;
 *  - pool_page is NULL for a freed id (also when a live page has hash 0),
 *    a never-allocated id, an id in a
 *    segment never opened, and after the segment closed;
 *  - fault injection (SAMEPAGE_FAULT=memfd) makes pool_alloc fail cleanly.
 * pool_init zeroes a struct of ~160 KiB, so it lives on the heap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../lib/testutil.h"
#include "pool.h"

static unsigned char page[PAGE];

static const unsigned char *content(uint64_t seed)
{
	tu_fill(page, PAGE, seed);
	return page;
}

static int64_t alloc_seed(struct pool *p, uint64_t seed)
{
	/* hash: anything nonzero that identifies the seed */
	int64_t id = pool_alloc(p, content(seed), seed + 1);

	TU_CHECK(id >= 0, "pool_alloc: %lld", (long long)id);
	return id;
}

static void check_content(struct pool *p, uint32_t id, uint64_t seed)
{
	struct pool_page *pg = pool_page(p, id);

	TU_CHECK(pg, "pool_page(%u) NULL for a live page", id);
	TU_CHECK(pg->hash == seed + 1, "page %u hash %llu, want %llu", id,
		 (unsigned long long)pg->hash, (unsigned long long)seed + 1);
	TU_CHECK(!memcmp(pool_data(p, id), content(seed), PAGE), "page %u content differs", id);
}

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static struct pool *new_pool(void)
{
	struct pool *p = calloc(1, sizeof(*p));

	TU_CHECK(p, "calloc pool");
	TU_CHECK(pool_init(p) == 0, "pool_init");
	return p;
}

static void test_basic(void)
{
	struct pool *p = new_pool();
	int64_t a, b, c, d;

	TU_CHECK(pool_seg_fd(p, 0) == -ENOENT, "segment 0 open before any alloc");
	TU_CHECK(!pool_page(p, 0), "pool_page(0) before any alloc");
	TU_CHECK(p->pages_used == 0 && p->segs_live == 0, "fresh pool not empty");

	a = alloc_seed(p, 10);
	b = alloc_seed(p, 11);
	c = alloc_seed(p, 12);
	TU_CHECK(a == 0 && b == 1 && c == 2, "first ids %lld %lld %lld, want 0 1 2",
		 (long long)a, (long long)b, (long long)c);
	TU_CHECK(p->pages_used == 3 && p->segs_live == 1, "pages_used %llu segs_live %u",
		 (unsigned long long)p->pages_used, p->segs_live);
	check_content(p, 0, 10);
	check_content(p, 1, 11);
	check_content(p, 2, 12);
	TU_CHECK(pool_page(p, 1)->refs == 0, "new page has refs");
	TU_CHECK(pool_seg_fd(p, 0) >= 0, "segment 0 has no fd");

	/* never allocated: past the bump pointer, in an unopened segment, far out */
	TU_CHECK(!pool_page(p, 3), "pool_page(3) never allocated");
	TU_CHECK(!pool_page(p, SP_SEG_PAGES - 1), "pool_page(last of seg 0) never allocated");
	TU_CHECK(!pool_page(p, SP_SEG_PAGES), "pool_page in segment 1, never opened");
	TU_CHECK(!pool_page(p, 5 * SP_SEG_PAGES + 7), "pool_page in segment 5");
	TU_CHECK(!pool_page(p, UINT32_MAX), "pool_page(UINT32_MAX)");
	TU_CHECK(pool_seg_fd(p, 1) == -ENOENT && pool_seg_fd(p, UINT32_MAX) == -ENOENT,
		 "pool_seg_fd of unopened segments");

	/* free and reuse */
	pool_page(p, 1)->refs = 0;
	pool_free(p, 1);
	TU_CHECK(!pool_page(p, 1), "pool_page(1) after free");
	TU_CHECK(p->pages_used == 2, "pages_used %llu after free",
		 (unsigned long long)p->pages_used);
	check_content(p, 0, 10);
	check_content(p, 2, 12);
	d = alloc_seed(p, 20);
	TU_CHECK(d == 1, "freed id 1 not reused: got %lld", (long long)d);
	check_content(p, 1, 20);

	/* two freed: both are reused before the bump pointer moves on */
	pool_free(p, 0);
	pool_free(p, 2);
	TU_CHECK(!pool_page(p, 0) && !pool_page(p, 2), "freed pages still live");
	a = alloc_seed(p, 30);
	b = alloc_seed(p, 31);
	TU_CHECK((a == 0 && b == 2) || (a == 2 && b == 0), "reuse gave %lld %lld, want {0,2}",
		 (long long)a, (long long)b);
	c = alloc_seed(p, 32);
	TU_CHECK(c == 3, "after reuse, next id %lld, want 3", (long long)c);
	check_content(p, (uint32_t)a, 30);
	check_content(p, (uint32_t)b, 31);

	/* A live page whose hash is 0 is live; a freed neighbour is not. */
	d = pool_alloc(p, content(40), 0);
	TU_CHECK(d == 4, "alloc hash 0 gave %lld", (long long)d);
	TU_CHECK(pool_page(p, 4) && pool_page(p, 4)->hash == 0, "live hash-0 page not found");
	pool_free(p, 3);
	TU_CHECK(!pool_page(p, 3), "freed page 3 live while page 4 has hash 0");
	TU_CHECK(pool_page(p, 4), "hash-0 page 4 lost after freeing page 3");
	TU_CHECK(!memcmp(pool_data(p, 4), content(40), PAGE), "hash-0 page content");
	pool_free(p, 4);
	TU_CHECK(!pool_page(p, 4), "hash-0 page still live after its free");

	/* Segment 0 goes too once empty: a daemon nobody uses keeps no pool. */
	int fd0 = pool_seg_fd(p, 0);
	pool_free(p, (uint32_t)a);
	pool_free(p, (uint32_t)b);
	pool_free(p, 1);
	TU_CHECK(p->pages_used == 0, "pages_used %llu after freeing all",
		 (unsigned long long)p->pages_used);
	TU_CHECK(pool_seg_fd(p, 0) == -ENOENT && !fd_open(fd0), "empty segment 0 was kept");
	for (uint32_t i = 0; i < 8; i++)
		TU_CHECK(!pool_page(p, i), "page %u live after freeing all", i);
	a = alloc_seed(p, 50);
	TU_CHECK(a == 0, "alloc after emptying seg 0 gave %lld, not a fresh segment 0", (long long)a);
	check_content(p, (uint32_t)a, 50);
	fd0 = pool_seg_fd(p, 0);

	pool_fini(p);
	TU_CHECK(!fd_open(fd0) && errno == EBADF, "pool_fini left segment 0's fd open");
	free(p);
}

/* Two segments: lowest one with room first, closing an emptied segment. */
static void test_segments(void)
{
	struct pool *p = new_pool();
	int64_t id;
	int fd0, fd1, fd2;

	for (uint32_t i = 0; i < SP_SEG_PAGES; i++) {
		id = pool_alloc(p, content(i), i + 1);
		TU_CHECK(id == i, "filling seg 0: id %lld, want %u", (long long)id, i);
	}
	TU_CHECK(pool_seg_fd(p, 1) == -ENOENT, "segment 1 opened before 0 was full");
	id = alloc_seed(p, 100000);
	TU_CHECK(id == SP_SEG_PAGES, "first id past a full seg 0: %lld", (long long)id);
	fd0 = pool_seg_fd(p, 0);
	fd1 = pool_seg_fd(p, 1);
	TU_CHECK(fd1 >= 0 && fd1 != fd0, "segment 1 fd %d", fd1);
	TU_CHECK(p->segs_live == 2 && p->nsegs == 2, "segs_live %u nsegs %u", p->segs_live,
		 p->nsegs);
	check_content(p, SP_SEG_PAGES, 100000);
	id = alloc_seed(p, 100001);
	TU_CHECK(id == SP_SEG_PAGES + 1, "second id in seg 1: %lld", (long long)id);

	/* A free page in segment 0 is taken before segment 1's fresh ones. */
	pool_free(p, 77);
	id = alloc_seed(p, 100002);
	TU_CHECK(id == 77, "seg 0 had room at 77, alloc gave %lld", (long long)id);
	check_content(p, 77, 100002);
	check_content(p, 76, 76);
	check_content(p, SP_SEG_PAGES - 1, SP_SEG_PAGES - 1);

	/* Empty segment 1: it closes. */
	pool_free(p, SP_SEG_PAGES);
	TU_CHECK(pool_seg_fd(p, 1) == fd1 && fd_open(fd1), "segment 1 closed while in use");
	check_content(p, SP_SEG_PAGES + 1, 100001);
	pool_free(p, SP_SEG_PAGES + 1);
	errno = 0;
	TU_CHECK(fcntl(fd1, F_GETFD) < 0 && errno == EBADF,
		 "emptied segment 1's memfd %d still open (errno %d)", fd1, errno);
	TU_CHECK(pool_seg_fd(p, 1) == -ENOENT, "pool_seg_fd(1) = %d after close",
		 pool_seg_fd(p, 1));
	TU_CHECK(!pool_page(p, SP_SEG_PAGES) && !pool_page(p, SP_SEG_PAGES + 1),
		 "pages of a closed segment still live");
	TU_CHECK(p->segs_live == 1, "segs_live %u after closing seg 1", p->segs_live);
	TU_CHECK(pool_seg_fd(p, 0) == fd0, "segment 0 changed");

	/* Needed again: segment 1 comes back with a fresh memfd. */
	id = alloc_seed(p, 200000);
	TU_CHECK(id == SP_SEG_PAGES, "seg 1 reopened at %lld", (long long)id);
	fd1 = pool_seg_fd(p, 1);
	TU_CHECK(fd1 >= 0 && fd_open(fd1), "reopened segment 1 has no fd");
	check_content(p, SP_SEG_PAGES, 200000);
	TU_CHECK(!pool_page(p, SP_SEG_PAGES + 1), "reopened segment has a stale page");

	/* Fill seg 1 and start seg 2, then empty seg 1 in the middle: it closes
	 * while 2 lives on; allocation continues in the lowest live segment. */
	for (uint32_t i = 1; i < SP_SEG_PAGES; i++) {
		id = pool_alloc(p, content(300000 + i), 300001 + i);
		TU_CHECK(id == SP_SEG_PAGES + i, "filling seg 1: %lld", (long long)id);
	}
	id = alloc_seed(p, 400000);
	TU_CHECK(id == 2 * SP_SEG_PAGES, "first id of seg 2: %lld", (long long)id);
	fd2 = pool_seg_fd(p, 2);
	TU_CHECK(fd2 >= 0 && p->segs_live == 3, "seg 2 fd %d, segs_live %u", fd2, p->segs_live);
	for (uint32_t i = 0; i < SP_SEG_PAGES; i++)
		pool_free(p, SP_SEG_PAGES + i);
	TU_CHECK(pool_seg_fd(p, 1) == -ENOENT && !fd_open(fd1), "seg 1 not closed");
	TU_CHECK(pool_seg_fd(p, 2) == fd2, "seg 2 disturbed by seg 1 closing");
	check_content(p, 2 * SP_SEG_PAGES, 400000);
	check_content(p, 0, 0);
	TU_CHECK(p->segs_live == 2, "segs_live %u", p->segs_live);
	TU_CHECK(p->pages_used == SP_SEG_PAGES + 1, "pages_used %llu",
		 (unsigned long long)p->pages_used);
	/* seg 0 is full and seg 1 closed: a page goes to seg 1 or 2, never to a
	 * fourth segment. */
	id = alloc_seed(p, 450000);
	TU_CHECK(id >= SP_SEG_PAGES && id < 3 * SP_SEG_PAGES, "alloc beside a closed seg 1: %lld",
		 (long long)id);
	check_content(p, (uint32_t)id, 450000);
	TU_CHECK(pool_seg_fd(p, 3) == -ENOENT, "a fourth segment was opened");
	pool_free(p, (uint32_t)id);
	if (id < 2 * SP_SEG_PAGES)
		TU_CHECK(pool_seg_fd(p, 1) == -ENOENT, "reopened seg 1 not closed again");
	/* Emptying the highest segment closes it too. */
	pool_free(p, 2 * SP_SEG_PAGES);
	TU_CHECK(pool_seg_fd(p, 2) == -ENOENT && !fd_open(fd2), "seg 2 not closed");
	TU_CHECK(!pool_page(p, 2 * SP_SEG_PAGES), "page of closed seg 2 live");
	TU_CHECK(p->segs_live == 1, "segs_live %u", p->segs_live);
	/* seg 0 still full: the next page goes to a (re)opened segment */
	id = alloc_seed(p, 500000);
	TU_CHECK(id == SP_SEG_PAGES, "alloc with seg 0 full and 1, 2 closed gave %lld",
		 (long long)id);
	check_content(p, (uint32_t)id, 500000);

	pool_fini(p);
	TU_CHECK(!fd_open(fd0), "pool_fini left seg 0 open");
	free(p);
}

static void test_seals(void)
{
	struct pool *p = new_pool();
	int64_t a = alloc_seed(p, 7), b = alloc_seed(p, 8);
	int fd = pool_seg_fd(p, 0), fd2;
	unsigned char buf[PAGE], *sh, *pv;
	char path[64];
	int seals;

	TU_CHECK(a == 0 && b == 1 && fd >= 0, "setup");
	memset(buf, 0xee, sizeof(buf));

	seals = fcntl(fd, F_GET_SEALS);
	TU_CHECK(seals >= 0 && (seals & F_SEAL_FUTURE_WRITE), "seals %#x lack FUTURE_WRITE",
		 seals);

	errno = 0;
	TU_CHECK(pwrite(fd, buf, PAGE, 0) < 0 && errno == EPERM,
		 "pwrite to the sealed pool: errno %d, want EPERM", errno);
	errno = 0;
	TU_CHECK(write(fd, buf, PAGE) < 0 && errno == EPERM, "write: errno %d", errno);

	/* A read-write reopen through /proc does not get around the seal. */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	fd2 = open(path, O_RDWR | O_CLOEXEC);
	TU_CHECK(fd2 >= 0, "reopen %s O_RDWR", path);
	errno = 0;
	TU_CHECK(pwrite(fd2, buf, PAGE, 0) < 0 && errno == EPERM, "pwrite via reopen: errno %d",
		 errno);
	errno = 0;
	TU_CHECK(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0) == MAP_FAILED &&
		 errno == EPERM, "writable shared mmap via reopen: errno %d", errno);
	close(fd2);

	errno = 0;
	TU_CHECK(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED &&
		 errno == EPERM, "MAP_SHARED PROT_WRITE mmap: errno %d, want EPERM", errno);
	TU_CHECK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE) < 0,
		 "fallocate(PUNCH_HOLE) on the sealed pool succeeded");
	TU_CHECK(ftruncate(fd, 0) < 0, "ftruncate(0) of the sealed pool succeeded");
	TU_CHECK(ftruncate(fd, (off_t)SP_SEG_PAGES * PAGE * 2) < 0, "ftruncate grow succeeded");
	errno = 0;
	TU_CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) < 0 && errno == EPERM,
		 "F_ADD_SEALS after F_SEAL_SEAL: errno %d", errno);

	/* A shared read-only view works, sees the pool, and cannot be made
	 * writable or hole-punched. */
	sh = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	TU_CHECK(sh != MAP_FAILED, "MAP_SHARED PROT_READ mmap: %s", strerror(errno));
	TU_CHECK(!memcmp(sh + PAGE, content(8), PAGE), "shared view differs from the pool");
	TU_CHECK(mprotect(sh, PAGE, PROT_READ | PROT_WRITE) < 0,
		 "mprotect of a shared view to writable succeeded");
	TU_CHECK(madvise(sh, PAGE, MADV_REMOVE) < 0, "MADV_REMOVE on the pool succeeded");

	/* MAP_PRIVATE PROT_WRITE works, and a write COWs. */
	pv = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	TU_CHECK(pv != MAP_FAILED, "MAP_PRIVATE PROT_WRITE mmap: %s", strerror(errno));
	TU_CHECK(!memcmp(pv, content(7), PAGE), "private view differs from the pool");
	TU_CHECK(madvise(pv, PAGE, MADV_REMOVE) < 0, "MADV_REMOVE on a private view succeeded");
	memset(pv, 0xab, PAGE);
	TU_CHECK(pv[0] == 0xab && pv[PAGE - 1] == 0xab, "write through private view lost");
	TU_CHECK(!memcmp(pool_data(p, 0), content(7), PAGE),
		 "writing a MAP_PRIVATE view changed pool_data");
	TU_CHECK(!memcmp(sh, content(7), PAGE), "writing a MAP_PRIVATE view changed the file");
	TU_CHECK(!memcmp(pv + PAGE, content(8), PAGE), "untouched private page differs");
	/* The pool's own window still writes (a freed page reused). */
	pool_free(p, 1);
	TU_CHECK(alloc_seed(p, 9) == 1, "reuse of page 1");
	TU_CHECK(!memcmp(sh + PAGE, content(9), PAGE), "the daemon's window no longer writes");
	munmap(pv, 2 * PAGE);
	munmap(sh, 2 * PAGE);

	TU_CHECK(!memcmp(pool_data(p, 0), content(7), PAGE), "pool page 0 changed");
	pool_fini(p);
	free(p);
}

/* In a child, so that a fault_inject that reads the environment once per
 * process sees it from the start and leaves the parent alone. */
static void test_fault(void)
{
	pid_t pid = fork();
	int st;

	TU_CHECK(pid >= 0, "fork");
	if (pid == 0) {
		struct pool *p;
		int64_t id;

		setenv("SAMEPAGE_FAULT", "uffd,memfd", 1);
		p = new_pool();
		id = pool_alloc(p, content(1), 2);
		TU_CHECK(id == -ENOMEM, "pool_alloc under SAMEPAGE_FAULT=memfd: %lld",
			 (long long)id);
		TU_CHECK(p->segs_live == 0 && p->pages_used == 0 && pool_seg_fd(p, 0) == -ENOENT,
			 "failed alloc left state behind");
		TU_CHECK(!pool_page(p, 0), "page 0 live after failed alloc");
		pool_fini(p);
		free(p);
		_exit(0);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		 "fault injection child failed (status %#x)", st);
}

/* Reservations: consecutive ids for one creator, not live until used, and
 * an empty segment stays while ids in it are reserved. */
static void test_reserve(void)
{
	struct pool *p = new_pool();
	uint32_t first, got, first2, got2;
	int64_t a = alloc_seed(p, 1); /* segment 0: the spare */

	TU_CHECK(a == 0, "first id %lld", (long long)a);
	TU_CHECK(pool_reserve(p, 0, 512, &first, &got) == 0 && got == 512, "reserve 512");
	TU_CHECK(pool_reserve(p, 0, 512, &first2, &got2) == 0 && got2 == 512, "reserve again");
	TU_CHECK(first2 >= first + 512 || first2 + 512 <= first, "reservations overlap");
	TU_CHECK(!pool_page(p, first) && !pool_page(p, first + 511), "reserved slot is live");
	for (uint32_t i = 0; i < 3; i++) {
		pool_alloc_reserved(p, first + i, content(100 + i), 100 + i + 1);
		check_content(p, first + i, 100 + i);
	}
	TU_CHECK(p->pages_used == 4, "pages_used %llu", (unsigned long long)p->pages_used);
	/* interleaved creators still get their own consecutive ids */
	pool_alloc_reserved(p, first2, content(200), 201);
	pool_alloc_reserved(p, first + 3, content(103), 104);
	check_content(p, first + 3, 103);
	check_content(p, first2, 200);
	/* unused reserved ids go back to the free list and are reused */
	pool_unreserve(p, first + 4, 508);
	pool_unreserve(p, first2 + 1, 511);
	TU_CHECK(!pool_page(p, first + 4), "unreserved slot is live");
	/* a segment whose pages are all free but some reserved stays open */
	uint32_t s3first, s3got;
	pool_free(p, (uint32_t)a);
	for (uint32_t i = 0; i < 4; i++)
		pool_free(p, first + i);
	pool_free(p, first2);
	TU_CHECK(p->segs_live == 0, "%u segments open with no page in them", p->segs_live);
	TU_CHECK(pool_reserve(p, 0, SP_SEG_PAGES, &s3first, &s3got) == 0 && s3got == SP_SEG_PAGES,
		 "reserve a whole segment");
	uint32_t seg3 = s3first / SP_SEG_PAGES;
	pool_alloc_reserved(p, s3first, content(300), 301);
	pool_free(p, s3first);
	TU_CHECK(pool_seg_fd(p, seg3) >= 0, "segment closed while ids in it are reserved");
	pool_unreserve(p, s3first + 1, SP_SEG_PAGES - 1);
	TU_CHECK(pool_seg_fd(p, seg3) == -ENOENT, "empty, unreserved segment not closed");
	pool_fini(p);
	free(p);
}

int main(void)
{
	test_basic();
	test_reserve();
	test_segments();
	test_seals();
	test_fault();
	printf("pool: ok\n");
	return 0;
}
