/* SPDX-License-Identifier: MIT */
/*
 * PROT_NONE memory merges, as on kernel KSM, and unmerges intact: the
 * kernel's selftest test_prot_none (ksm_functional_tests.c), here against
 * samepage.
 *
 * 2 MiB filled with 0x11, mprotect'ed PROT_NONE, MADV_MERGEABLE: the pages
 * come to share frames (a run of equal pages: an extent of at most 64 pool
 * pages, DESIGN.md "Runs of one content") though the
 * program can neither read nor write them. Then a distinct value is
 * written into each page of the first half through /proc/self/mem (as a
 * debugger would: FOLL_FORCE, which COWs the merged page), and the second
 * half is made MADV_UNMERGEABLE: no two pages may share a frame any more,
 * and, made readable, every byte is as written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define SIZE (2u << 20)
#define NP (SIZE / PAGE)

static unsigned char *map;

static size_t frames(void)
{
	pid_t self = getpid();
	uintptr_t a = (uintptr_t)map;

	return tu_frames(&self, &a, 1, NP);
}

/* Merged pages are mapped PROT_NONE from the pool, not faulted in: the
 * process's own counter says how many merged; reading each through
 * /proc/self/mem faults it in, so that the frames can be counted. */
static int merged(void *arg)
{
	struct samepage_stat st;

	(void)arg;
	samepage_scan_now();
	return samepage_stat(&st) == 0 && st.ksm_merging_pages == NP;
}

static void fault_in(void)
{
	int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	unsigned char b;

	TU_CHECK(mem >= 0, "open /proc/self/mem: %s", strerror(errno));
	for (unsigned i = 0; i < SIZE; i += PAGE)
		TU_CHECK(pread(mem, &b, 1, (off_t)(uintptr_t)(map + i)) == 1 && b == 0x11,
			 "read page %u through /proc/self/mem", i / PAGE);
	close(mem);
}

int main(void)
{
	int mem;

	tu_require_merging();
	tu_private_daemon();
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(map != MAP_FAILED, "mmap");
	memset(map, 0x11, SIZE);
	TU_CHECK(mprotect(map, SIZE, PROT_NONE) == 0, "mprotect PROT_NONE");
	TU_CHECK(madvise(map, SIZE, MADV_MERGEABLE) == 0, "madvise: %s", strerror(errno));
	TU_CHECK(tu_wait(merged, NULL, 30), "PROT_NONE pages not merged within 30 s");
	fault_in();
	printf("PROT_NONE: %u pages on %zu frames, %zu of them pool pages\n", NP, frames(),
	       tu_file_pages(getpid(), (uintptr_t)map, NP));
	TU_CHECK(frames() <= 64 && tu_file_pages(getpid(), (uintptr_t)map, NP) == NP,
		 "PROT_NONE pages not merged: %zu frames for %u pages", frames(), NP);

	mem = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
	TU_CHECK(mem >= 0, "open /proc/self/mem: %s", strerror(errno));
	for (unsigned i = 0; i < SIZE / 2; i += PAGE)
		TU_CHECK(pwrite(mem, &i, sizeof(i), (off_t)(uintptr_t)(map + i)) == sizeof(i),
			 "write through /proc/self/mem at %u: %s", i, strerror(errno));
	close(mem);
	TU_CHECK(madvise(map + SIZE / 2, SIZE / 2, MADV_UNMERGEABLE) == 0,
		 "MADV_UNMERGEABLE: %s", strerror(errno));
	size_t f = frames();
	printf("after writes and MADV_UNMERGEABLE: %zu frames for %u pages\n", f, NP);
	TU_CHECK(f == NP, "pages still share frames: %zu frames for %u pages", f, NP);

	TU_CHECK(mprotect(map, SIZE, PROT_READ) == 0, "mprotect PROT_READ");
	for (unsigned i = 0; i < SIZE; i += PAGE) {
		unsigned char want[PAGE];
		memset(want, 0x11, PAGE);
		if (i < SIZE / 2)
			memcpy(want, &i, sizeof(i));
		TU_CHECK(!memcmp(map + i, want, PAGE), "page %u: wrong bytes", i / PAGE);
	}
	printf("every byte as written\n");
	return 0;
}
