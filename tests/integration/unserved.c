/* SPDX-License-Identifier: MIT */
/*
 * Programs samepage cannot serve say so (issue 11, item 5): a statically
 * linked program has no dynamic loader to preload libsamepage, and the
 * loader ignores LD_PRELOAD for a set-user-ID program of another user. Both
 * run, unmerged, and `samepage run` prints why, once, at start; under
 * --merge-any, a shell exec'ing such a program has the library say it.
 * A dynamically linked program gets no such message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

/* A sanitizer-built libsamepage cannot be preloaded into sh: the cases
 * that need the library inside a plain program are left to the plain build. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PRELOAD_OK 0
#else
#define PRELOAD_OK 1
#endif

static char progs[PATH_MAX];

/* stdout and stderr of `samepage run ARGS` into out. Exit status. */
static int run(const char *args, char *out, size_t len)
{
	char cmd[2 * PATH_MAX];
	FILE *f;
	size_t n;

	snprintf(cmd, sizeof(cmd), "%s run %s 2>&1", tu_bin("samepage"), args);
	f = popen(cmd, "r");
	TU_CHECK(f, "popen");
	n = fread(out, 1, len - 1, f);
	out[n] = 0;
	return pclose(f);
}

int main(void)
{
	char out[8192], args[3 * PATH_MAX], copy[] = "/tmp/sp-unserved-XXXXXX";
	ssize_t n = readlink("/proc/self/exe", progs, sizeof(progs) - 32);

	tu_private_daemon();
	TU_CHECK(n > 0, "readlink");
	progs[n] = 0;
	*strrchr(progs, '/') = 0;
	*strrchr(progs, '/') = 0;
	strcat(progs, "/progs");

	/* A static program: it runs, and we are told it is not merged. */
	snprintf(args, sizeof(args), "-- %s/static_hello", progs);
	TU_CHECK(run(args, out, sizeof(out)) == 0, "static program failed: %s", out);
	TU_CHECK(strstr(out, "hello from a static program"), "static program did not run: %s", out);
	TU_CHECK(strstr(out, "statically linked") && strstr(out, "runs unmerged"),
		 "no word that a static program runs unmerged: %s", out);
	printf("static: %s", strstr(out, "samepage:"));

	if (PRELOAD_OK) {
		/* Exec'ed by a shell under --merge-any: the library says it. */
		snprintf(args, sizeof(args), "--merge-any -- sh -c '%s/static_hello; true'", progs);
		TU_CHECK(run(args, out, sizeof(out)) == 0, "sh failed: %s", out);
		TU_CHECK(strstr(out, "statically linked") && strstr(out, "hello from"),
			 "no word from the exec wrapper: %s", out);
		/* A dynamically linked program: no message. */
		snprintf(args, sizeof(args), "-- sh -c 'echo dynamic'");
		TU_CHECK(run(args, out, sizeof(out)) == 0 && !strstr(out, "samepage:"),
			 "a dynamic program got a message: %s", out);
	}

	/* Set-user-ID to another user (nobody): the loader ignores
	 * LD_PRELOAD, and we say so. Only root can make one for nobody. */
	if (geteuid() == 0) {
		char path[PATH_MAX + 32];
		TU_CHECK(mkdtemp(copy), "mkdtemp");
		chmod(copy, 0755);
		snprintf(path, sizeof(path), "%s/true", copy);
		snprintf(args, sizeof(args), "cp /bin/true %s", path);
		TU_CHECK(system(args) == 0, "cp");
		TU_CHECK(chown(path, 65534, 65534) == 0 && chmod(path, 04755) == 0, "chown/chmod: %s",
			 strerror(errno));
		snprintf(args, sizeof(args), "-- %s", path);
		int st = run(args, out, sizeof(out));
		unlink(path);
		rmdir(copy);
		TU_CHECK(st == 0, "set-user-ID program failed: %s", out);
		TU_CHECK(strstr(out, "set-user-ID"), "no word that a set-user-ID program runs "
			 "unmerged: %s", out);
		printf("set-user-ID: %s", strstr(out, "samepage:"));
	}
	return 0;
}
