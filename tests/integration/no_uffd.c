/* SPDX-License-Identifier: MIT */
/*
 * Without userfaultfd (forced with SAMEPAGE_FAULT=uffd, as for a user who
 * has neither a readable /dev/userfaultfd nor vm.unprivileged_userfaultfd)
 * samepage says so clearly at start-up, on stderr of `samepage run` and of
 * the program, and the program still runs correctly, unmerged, with
 * madvise(MADV_MERGEABLE) returning 0 (plain_merge checks that and its data).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

int main(void)
{
	char cmd[8192], err[4096] = { 0 }, line[256] = { 0 };
	char tmp[] = "/tmp/sp-nouffd-XXXXXX";
	unsigned pid = 0, pages = 0;
	unsigned long addr = 0;
	FILE *f;
	int st, efd;

#if defined(__SANITIZE_THREAD__)
	tu_skip("ThreadSanitizer's runtime cannot be preloaded into uninstrumented programs");
#endif
	tu_require_merging();
	tu_private_daemon();
	efd = mkstemp(tmp);
	TU_CHECK(efd >= 0, "mkstemp");
	char sp[4096];
	snprintf(sp, sizeof(sp), "%s", tu_bin("samepage")); /* tu_bin's buffer is reused */
	snprintf(cmd, sizeof(cmd),
		 "(echo; sleep 1) | SAMEPAGE_FAULT=uffd %s run -- %s/../tests/progs/plain_merge "
		 "madvise 4 7 2>%s",
		 sp, tu_bin(""), tmp);
	f = popen(cmd, "r");
	TU_CHECK(f, "popen");
	TU_CHECK(fgets(line, sizeof(line), f), "plain_merge printed nothing");
	TU_CHECK(sscanf(line, "%u %lx %u", &pid, &addr, &pages) == 3, "output: %s", line);
	st = pclose(f);
	TU_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "plain_merge failed: status %#x", st);
	TU_CHECK(read(efd, err, sizeof(err) - 1) > 0, "nothing said on stderr");
	close(efd);
	unlink(tmp);
	TU_CHECK(strstr(err, "userfaultfd"), "stderr does not name userfaultfd: %s", err);
	TU_CHECK(strstr(err, "samepage: warning") && strstr(err, "cannot merge memory in process"),
		 "missing the warning of `samepage run` or of the library: %s", err);
	printf("%s", err);
	return 0;
}
