/* SPDX-License-Identifier: MIT */
/*
 * The application's own userfaultfd on merged memory (the kernel's KSM
 * selftest unmerge_uffd_wp, and more): QEMU's background snapshot and
 * postcopy, CRIU's lazy pages register guest or process memory that may
 * be merged.
 *
 * Two copies A and B of N distinct pages, merged. The test then makes a
 * userfaultfd of its own, registers A for write-protection (must succeed:
 * never EBUSY because the scanner happens to be freezing A), protects all
 * of A, and calls MADV_UNMERGEABLE on it. Asserted:
 *  - MADV_UNMERGEABLE returns 0 and A no longer shares any frame (no page
 *    of A maps the pool), its bytes intact;
 *  - the write-protection is the application's and stays: pagemap shows
 *    every present page of A uffd-wp protected (bit 57), and a thread's
 *    write into A arrives on the test's userfaultfd as a write-protect
 *    fault (nobody else answers it); the test resolves it and the write
 *    lands;
 *  - while A is registered, scan passes leave it alone (still no pool
 *    page in A);
 *  - a third copy C, registered for missing faults (postcopy) without
 *    MADV_UNMERGEABLE, is unmerged at registration, left alone while
 *    registered, and merges again after UFFDIO_UNREGISTER (still
 *    MADV_MERGEABLE), with no fault delivered that nobody caused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "samepage.h"
#include "merging.h"
#include "testutil.h"

#define N 256u         /* 1 MiB per copy */
#define WPAGE 17u      /* the page of A the writer thread writes */
#define PM_UFFD_WP (1ull << 57)

static unsigned char *a, *b, *c;

static int merged(void *arg)
{
	size_t want = *(size_t *)arg;

	samepage_scan_now();
	return tu_file_pages(getpid(), (uintptr_t)a, N) >= want &&
	       tu_file_pages(getpid(), (uintptr_t)b, N) == N;
}

static int merged_c(void *arg)
{
	samepage_scan_now();
	return tu_file_pages(getpid(), (uintptr_t)c, N) >= *(size_t *)arg;
}

static void *writer(void *arg)
{
	(void)arg;
	a[(size_t)WPAGE * PAGE + 5] = 0x42; /* blocks until the test resolves the fault */
	return NULL;
}

/* The test's own userfaultfd with write-protect faults, or -1 (skip). */
static int app_uffd(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return -1;
	if (ioctl(fd, UFFDIO_API, &api) < 0 || !(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		close(fd);
		return -1;
	}
	return fd;
}

int main(void)
{
	size_t len = (size_t)N * PAGE, all = N;
	uint64_t pm[N], fa[N], fb[N];
	unsigned char *ref;
	struct uffd_msg msg;
	pthread_t t;
	int uffd;

	tu_require_merging();
	tu_private_daemon();
	a = tu_map(len);
	b = tu_map(len);
	c = tu_map(len);
	tu_fill(a, len, 23);
	memcpy(b, a, len);
	memcpy(c, a, len);
	ref = malloc(len);
	TU_CHECK(ref, "malloc");
	memcpy(ref, a, len);
	TU_CHECK(madvise(a, len, MADV_MERGEABLE) == 0 && madvise(b, len, MADV_MERGEABLE) == 0 &&
			 madvise(c, len, MADV_MERGEABLE) == 0,
		 "madvise: %s", strerror(errno));
	TU_CHECK(tu_wait(merged, &all, 30), "the two copies did not merge within 30 s");

	uffd = app_uffd();
	if (uffd < 0)
		tu_skip("no userfaultfd with write-protect faults for the test itself");
	struct uffdio_register reg = { .range = { (uintptr_t)a, len },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	/* The scanner keeps passing meanwhile: a freeze of its own must never
	 * make this fail with EBUSY. */
	TU_CHECK(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER of merged memory: %s",
		 strerror(errno));
	struct uffdio_writeprotect wp = { .range = { (uintptr_t)a, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	TU_CHECK(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0, "UFFDIO_WRITEPROTECT: %s",
		 strerror(errno));
	TU_CHECK(madvise(a, len, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE: %s", strerror(errno));

	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)a, N) == 0,
		 "%zu pages of A still map the pool after MADV_UNMERGEABLE",
		 tu_file_pages(getpid(), (uintptr_t)a, N));
	for (uint32_t i = 0; i < N; i++) {
		fa[i] = tu_pfn(getpid(), (uintptr_t)a + (size_t)i * PAGE);
		fb[i] = tu_pfn(getpid(), (uintptr_t)b + (size_t)i * PAGE);
		TU_CHECK(!fa[i] || fa[i] != fb[i], "page %u of A still shares B's frame", i);
	}
	TU_CHECK(!memcmp(a, ref, len), "A's bytes changed by unmerging");
	tu_pagemap(getpid(), (uintptr_t)a, N, pm);
	for (uint32_t i = 0; i < N; i++)
		TU_CHECK(!(pm[i] & (1ull << 63)) || (pm[i] & PM_UFFD_WP),
			 "page %u of A lost the application's write-protection", i);

	/* Passes while A is registered leave it alone. */
	tu_scan_passes(5);
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)a, N) == 0,
		 "A, registered with the application's userfaultfd, was merged again");

	/* A write arrives on our userfaultfd, as a write-protect fault. */
	TU_CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "pthread_create");
	struct pollfd pfd = { .fd = uffd, .events = POLLIN };
	TU_CHECK(poll(&pfd, 1, 10000) == 1, "no fault reached the application's userfaultfd");
	TU_CHECK(read(uffd, &msg, sizeof(msg)) == sizeof(msg), "read uffd: %s", strerror(errno));
	TU_CHECK(msg.event == UFFD_EVENT_PAGEFAULT &&
		 (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) &&
		 (msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1)) ==
			 (uintptr_t)a + (size_t)WPAGE * PAGE,
		 "unexpected userfaultfd message: event %u flags %llx address %llx", msg.event,
		 (unsigned long long)msg.arg.pagefault.flags,
		 (unsigned long long)msg.arg.pagefault.address);
	wp = (struct uffdio_writeprotect){ .range = { (uintptr_t)a + (size_t)WPAGE * PAGE, PAGE },
					   .mode = 0 };
	TU_CHECK(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0, "unprotect: %s", strerror(errno));
	pthread_join(t, NULL);
	ref[(size_t)WPAGE * PAGE + 5] = 0x42;
	TU_CHECK(!memcmp(a, ref, len), "A's bytes after the resolved write");

	/* C, a third copy, merged, registered for missing faults (postcopy's
	 * mode) without MADV_UNMERGEABLE: unmerged at registration, left alone
	 * while registered, merged again once unregistered (still
	 * MADV_MERGEABLE, as kernel KSM goes on merging it). */
	size_t all_c = N;
	TU_CHECK(tu_wait(merged_c, &all_c, 30), "C did not merge within 30 s");
	reg = (struct uffdio_register){ .range = { (uintptr_t)c, len },
					.mode = UFFDIO_REGISTER_MODE_MISSING };
	TU_CHECK(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER (missing) of C: %s",
		 strerror(errno));
	tu_scan_passes(5);
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)c, N) == 0,
		 "%zu pages of C map the pool while it is registered",
		 tu_file_pages(getpid(), (uintptr_t)c, N));
	TU_CHECK(!memcmp(c, b, len), "C's bytes while registered");
	struct uffdio_range r = { (uintptr_t)c, len };
	TU_CHECK(ioctl(uffd, UFFDIO_UNREGISTER, &r) == 0, "UFFDIO_UNREGISTER: %s", strerror(errno));
	TU_CHECK(tu_wait(merged_c, &all_c, 30), "C did not merge again after UFFDIO_UNREGISTER "
		 "(%zu of %u pages map the pool)", tu_file_pages(getpid(), (uintptr_t)c, N), N);
	TU_CHECK(!memcmp(c, b, len), "C's bytes after merging again");
	TU_CHECK(poll(&pfd, 1, 0) == 0, "a fault nobody caused reached the application's "
		 "userfaultfd");
	close(uffd);
	printf("app_uffd: merged memory registered with the application's userfaultfd: unmerged "
	       "with its write-protection kept, its fault delivered to it; merged again after "
	       "UFFDIO_UNREGISTER\n");
	return 0;
}
