/* SPDX-License-Identifier: MIT */
/*
 * MADV_WIPEONFORK on merged memory, as on anonymous memory: accepted, and a
 * fork child finds the range zeroed while the parent keeps its bytes.
 *
 * The kernel takes MADV_WIPEONFORK on private anonymous memory only (EINVAL
 * on a file mapping, which a merged page is in samepage): two identical
 * copies A and B are merged, then A gets MADV_WIPEONFORK. Asserted: 0, a
 * fork child reads zeros in A and B's bytes in B, the parent reads its own
 * bytes in both, and A is not merged again (it is wiped on fork: a pool
 * mapping would not be).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "merging.h"
#include "testutil.h"

#define N 256u

static unsigned char *a, *b;

int main(void)
{
	size_t len = (size_t)N * PAGE;
	unsigned char *ref;
	pid_t pid;
	int st;

	tu_require_merging();
	tu_private_daemon();
	struct tu_copies ab;

	tu_merge_copies(&ab, N, 51);
	a = (unsigned char *)ab.a;
	b = (unsigned char *)ab.b;
	ref = malloc(len);
	TU_CHECK(ref, "malloc");
	tu_fill(ref, len, 51); /* what both copies hold */

	TU_CHECK(madvise(a, len, MADV_WIPEONFORK) == 0, "MADV_WIPEONFORK on merged memory: %s",
		 strerror(errno));
	TU_CHECK(!memcmp(a, ref, len) && !memcmp(b, ref, len), "bytes changed by the advice");
	pid = fork();
	TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		for (size_t i = 0; i < len; i++)
			if (a[i])
				_exit(2);
		_exit(memcmp(b, ref, len) ? 3 : 0);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "child");
	TU_CHECK(WEXITSTATUS(st) != 2, "the fork child did not find A wiped");
	TU_CHECK(WEXITSTATUS(st) == 0, "the fork child found B changed");
	tu_scan_passes(5);
	TU_CHECK(tu_file_pages(getpid(), (uintptr_t)a, N) == 0, "A, wiped on fork, merged again");
	TU_CHECK(!memcmp(a, ref, len) && !memcmp(b, ref, len), "the parent's bytes changed");
	printf("wipeonfork: MADV_WIPEONFORK on merged memory accepted; the fork child found it "
	       "zeroed, the parent its bytes\n");
	return 0;
}
