/* SPDX-License-Identifier: MIT */
/*
 * Without userfaultfd (forced with SAMEPAGE_FAULT=uffd, as for a user who
 * has neither read-write access to /dev/userfaultfd nor
 * vm.unprivileged_userfaultfd) samepage says so clearly at start-up, once,
 * and the programs still run correctly, unmerged, with
 * madvise(MADV_MERGEABLE) returning 0 (plain_merge checks that and its
 * data):
 *  - `samepage run -- sh -c 'plain_merge & plain_merge'`: one warning from
 *    `samepage run`, naming userfaultfd, saying read-write (never
 *    "readable": read access is not enough), with the exact commands
 *    (groupadd, usermod -aG samepage USER) and the re-login; and not one
 *    line from the library in either process (SAMEPAGE_UFFD_WARNED);
 *  - a program with the library preloaded by hand (no `samepage run` to
 *    give the advice): the library's own warning, once, saying read-write.
 */
#define _GNU_SOURCE
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static int count(const char *s, const char *what)
{
	int n = 0;

	for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
		n++;
	return n;
}

static void under_run(const char *sp, const char *prog)
{
	struct passwd *pw = getpwuid(geteuid());
	char cmd[3 * 4096 + 256], usermod[128];
	struct tu_output r;

	snprintf(cmd, sizeof(cmd),
		 "SAMEPAGE_FAULT=uffd %s run -- sh -c 'echo | %s madvise 4 7 & a=$!; "
		 "echo | %s madvise 4 8; b=$?; wait $a && [ $b = 0 ]'", sp, prog, prog);
	tu_sh_capture(cmd, &r);
	TU_CHECK(r.status == 0, "plain_merge under samepage run failed: exit %d: %s", r.status,
		 r.err);
	TU_CHECK(count(r.out, " ") >= 4, "two plain_merge lines expected: '%s'", r.out);
	TU_CHECK(count(r.err, "samepage: warning: userfaultfd is not available") == 1,
		 "`samepage run` did not warn exactly once: '%s'", r.err);
	TU_CHECK(count(r.err, "cannot merge memory in process") == 0,
		 "the processes under `samepage run` repeated the warning: '%s'", r.err);
	snprintf(usermod, sizeof(usermod), "sudo usermod -aG samepage %s", pw ? pw->pw_name : "");
	TU_CHECK(strstr(r.err, "read-write") && !strstr(r.err, "readable") &&
		 strstr(r.err, "sudo groupadd -f samepage") && strstr(r.err, usermod),
		 "the advice lacks read-write or the exact commands ('%s'): '%s'", usermod, r.err);
	printf("%s", r.err);
}

static void preloaded(const char *prog)
{
	char cmd[2 * 4096 + 256];
	struct tu_output r;

	snprintf(cmd, sizeof(cmd), "echo | SAMEPAGE_FAULT=uffd LD_PRELOAD=%s/../lib/libsamepage.so "
		 "%s madvise 4 7", tu_bin(""), prog);
	tu_sh_capture(cmd, &r);
	TU_CHECK(r.status == 0, "plain_merge preloaded failed: exit %d: %s", r.status, r.err);
	TU_CHECK(count(r.err, "cannot merge memory in process") == 1 &&
		 count(r.err, "userfaultfd") >= 1 && strstr(r.err, "read-write") &&
		 !strstr(r.err, "readable"),
		 "the library's own warning: '%s'", r.err);
}

int main(void)
{
	char sp[4096], prog[4096];

#if defined(__SANITIZE_THREAD__)
	tu_skip("ThreadSanitizer's runtime cannot be preloaded into uninstrumented programs");
#endif
	tu_require_merging();
	tu_private_daemon();
	snprintf(sp, sizeof(sp), "%s", tu_bin("samepage")); /* tu_bin's buffer is reused */
	snprintf(prog, sizeof(prog), "%s/../tests/progs/plain_merge", tu_bin(""));
	under_run(sp, prog);
	preloaded(prog);
	return 0;
}
