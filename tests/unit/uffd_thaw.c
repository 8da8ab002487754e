/* SPDX-License-Identifier: MIT */
/*
 * Unit test of os_uffd_thaw() (common/os.c): a frozen range, missing
 * faults held too (os_uffd_hold_missing(), as evict.c does), into which a
 * file is mapped meanwhile (glibc unmaps and maps behind the wrappers).
 * The kernel refuses to unregister a range holding a VMA it could never
 * register, and leaves the rest registered: a missing fault there would
 * wait for good. After the thaw no VMA of the range is registered
 * (smaps' um/uw flags), and a page dropped there faults in at once.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../lib/testutil.h"
#include "os.h"
#include "sizes.h"

#define NP 16u

/* VMAs of [a, a+len) still registered with a userfaultfd. */
static int registered(uintptr_t a, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0, n = 0;

	TU_CHECK(f, "smaps");
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char c;
		if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3)
			in = s < a + len && e > a;
		else if (in && !strncmp(line, "VmFlags:", 8) &&
			 (strstr(line, " um") || strstr(line, " uw")))
			n++;
	}
	fclose(f);
	return n;
}

static void on_alarm(int sig)
{
	(void)sig;
	static const char m[] = "FAIL: a missing fault waited after the thaw\n";
	(void)!write(2, m, sizeof(m) - 1);
	_exit(1);
}

int main(void)
{
	int uffd = os_uffd_open();
	if (uffd < 0)
		tu_skip("userfaultfd unavailable");
	size_t len = NP * SP_PAGE;
	unsigned char *x = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
	TU_CHECK(x != MAP_FAILED, "mmap");
	memset(x, 0x5a, len);
	uintptr_t a = (uintptr_t)x;
	TU_CHECK(os_uffd_freeze(uffd, a, len) == 0, "freeze");
	TU_CHECK(os_uffd_hold_missing(uffd, a, len) == 0, "hold missing");
	TU_CHECK(registered(a, len) == 1, "the range is not registered");
	/* A file where the application's memory was: never registrable. */
	int fd = open("/proc/self/exe", O_RDONLY);
	TU_CHECK(fd >= 0, "open");
	TU_CHECK(mmap(x + 3 * SP_PAGE, SP_PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) != MAP_FAILED,
		 "mmap file");
	close(fd);
	os_uffd_thaw(uffd, a, len);
	TU_CHECK(registered(a, len) == 0, "%d VMAs left registered after the thaw",
		 registered(a, len));
	/* Dropped, a page reads zeros at once. */
	TU_CHECK(madvise(x + 9 * SP_PAGE, SP_PAGE, MADV_DONTNEED) == 0, "madvise");
	signal(SIGALRM, on_alarm);
	alarm(5);
	TU_CHECK(x[9 * SP_PAGE] == 0 && x[10 * SP_PAGE] == 0x5a, "content after the thaw");
	alarm(0);
	printf("uffd_thaw: ok\n");
	return 0;
}
