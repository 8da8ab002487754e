/* SPDX-License-Identifier: MIT */
/*
 * Memory that disappears behind samepage's wrappers does not kill the
 * process. glibc frees large malloc chunks with its internal munmap, which
 * no preload can interpose, so the scanner may be hashing, sending or
 * comparing a page at the very moment it is unmapped; it used to read the
 * page directly and died of SIGSEGV (found with Python freeing its data at
 * exit). Runs tests/progs/free_churn under `samepage run --merge-any` three
 * times for a few seconds each, with merging at full speed, and requires it
 * to exit 0 every time (no signal, its bytes intact), and that merging did
 * happen meanwhile (pages_scanned and full_scans grew; pool pages were made).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

int main(void)
{
	char prog[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", prog, sizeof(prog) - 32);
	long long scans0;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	printf("SKIP: a sanitizer-built library cannot be preloaded into plain programs\n");
	return 77;
#endif
	tu_require_merging();
	TU_CHECK(n > 0, "readlink");
	prog[n] = 0;
	*strrchr(prog, '/') = 0;
	*strrchr(prog, '/') = 0;
	strcat(prog, "/progs/free_churn");
	TU_CHECK(access(prog, X_OK) == 0, "%s: %s", prog, strerror(errno));
	tu_private_daemon();
	TU_CHECK(tu_cli("set pages_to_scan=100000 sleep_millisecs=0") == 0, "samepage set");
	scans0 = tu_status("full_scans");
	for (int round = 0; round < 3; round++) {
		pid_t pid = fork();
		int st;
		TU_CHECK(pid >= 0, "fork");
		if (pid == 0) {
			execl(tu_bin("samepage"), "samepage", "run", "--merge-any", "--", prog, "6",
			      (char *)NULL);
			_exit(127);
		}
		TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
		TU_CHECK(!WIFSIGNALED(st), "free_churn killed by signal %d (round %d)", WTERMSIG(st),
			 round);
		TU_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "free_churn exited %d (round %d)",
			 WEXITSTATUS(st), round);
	}
	TU_CHECK(tu_status("full_scans") > scans0, "no full scan while it ran");
	printf("unwrapped_munmap: 3 x 6 s of malloc/free churn under merge-any, no crash\n");
	return 0;
}
