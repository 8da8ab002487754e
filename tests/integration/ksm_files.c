/* SPDX-License-Identifier: MIT */
/*
 * The files tools read and write to drive kernel KSM, under `samepage
 * run` (lib/ksmfile.c): real programs see samepage's knobs and counters,
 * and their writes drive samepage with the kernel's error codes, never
 * kernel KSM:
 *  - `cat /sys/kernel/mm/ksm/pages_sharing` and `pages_shared` print what
 *    `samepage status --json` says while two processes share pages;
 *    `cat /proc/PID/ksm_stat` of one of them its ksm_merging_pages from
 *    `samepage status --pid PID --json`; `samepage run --merge-any -- cat
 *    /proc/self/ksm_stat` says "ksm_merge_any: yes";
 *  - `sh -c 'echo 2 > /sys/kernel/mm/ksm/run'` returns with both processes
 *    unmerged (page frames), samepage's run at 2; `echo 1` merges again;
 *  - bash's echo (stdio, its redirection ended by dup2), coreutils' echo
 *    (stdio, in a program exec'd onto the file) and tee change
 *    pages_to_scan;
 *  - this program run again under `samepage run` (probe()) gets the
 *    kernel's errno: EINVAL for run=5, "abc", "-1"; ERANGE for
 *    max_page_sharing=99999999999; EACCES opening pages_shared for
 *    writing; ENOENT for a name the kernel does not have; EBADF writing a
 *    file opened read-only; a pread at offset 0 of a descriptor opened
 *    before a change shows the change; fopen/fprintf/fclose sets a knob
 *    and fclose reports EINVAL for a bad value;
 *  - the real /sys/kernel/mm/ksm/run reads the same before and after, and
 *    the kernel's pages_to_scan never takes the values written here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 256u
#define LEN ((size_t)NPAGES * PAGE)
#define KSM "/sys/kernel/mm/ksm/"

/* The kernel's own file, whatever this process has preloaded. */
static long real_value(const char *name)
{
	char path[128], buf[64] = { 0 };
	long fd, n;

	snprintf(path, sizeof(path), KSM "%s", name);
	fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = syscall(SYS_read, fd, buf, sizeof(buf) - 1);
	close((int)fd);
	return n > 0 ? atol(buf) : -1;
}

/* ---- the probe: this program again, under `samepage run` ---- */

static int probe_failures;

/* testutil's report-and-go-on check, counted for the probe's exit status. */
#define PROBE(cond, ...) TU_EXPECT(&probe_failures, cond, __VA_ARGS__)

static int open_errno(const char *path, int flags)
{
	int fd = open(path, flags);

	if (fd >= 0) {
		close(fd);
		return 0;
	}
	return errno;
}

static int write_errno(const char *name, const char *s)
{
	char path[128];
	int fd, err = 0;

	snprintf(path, sizeof(path), KSM "%s", name);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		err = errno;
	close(fd);
	return err;
}

static long pread_value(int fd)
{
	char buf[64] = { 0 };

	return pread(fd, buf, sizeof(buf) - 1, 0) > 0 ? atol(buf) : -1;
}

static void probe_stdio(void)
{
	FILE *f = fopen(KSM "sleep_millisecs", "w");
	unsigned long v = 0;
	int r;

	PROBE(f, "fopen sleep_millisecs for writing: %s", strerror(errno));
	if (!f)
		return;
	fprintf(f, "%d", 37);
	PROBE(fclose(f) == 0, "fclose after fprintf 37: %s", strerror(errno));
	f = fopen(KSM "sleep_millisecs", "r");
	PROBE(f && fscanf(f, "%lu", &v) == 1 && v == 37, "fscanf sleep_millisecs: %lu", v);
	if (f)
		fclose(f);
	f = fopen(KSM "sleep_millisecs", "w");
	if (!f)
		return;
	fprintf(f, "9x");
	r = fclose(f);
	PROBE(r == EOF && errno == EINVAL, "fclose after fprintf 9x: %d (%s)", r, strerror(errno));
}

static int probe(void)
{
	char buf[512] = { 0 };
	int fd, wfd;

	PROBE(write_errno("run", "5") == EINVAL, "run=5: %s", strerror(write_errno("run", "5")));
	PROBE(write_errno("run", "abc") == EINVAL, "run=abc");
	PROBE(write_errno("run", "-1") == EINVAL, "run=-1");
	PROBE(write_errno("max_page_sharing", "1") == EINVAL, "max_page_sharing=1");
	PROBE(write_errno("max_page_sharing", "99999999999") == ERANGE,
	      "max_page_sharing=99999999999: %d", write_errno("max_page_sharing", "99999999999"));
	PROBE(open_errno(KSM "pages_shared", O_WRONLY) == EACCES, "open pages_shared O_WRONLY");
	PROBE(open_errno(KSM "no_such_knob", O_RDONLY) == ENOENT, "open no_such_knob");
	PROBE(open_errno("/proc/self/ksm_stat", O_WRONLY) == EACCES, "open ksm_stat O_WRONLY");

	fd = open(KSM "pages_to_scan", O_RDONLY);
	PROBE(fd >= 0, "open pages_to_scan: %s", strerror(errno));
	PROBE(write(fd, "5", 1) < 0 && errno == EBADF, "write on a read-only descriptor");
	wfd = open(KSM "pages_to_scan", O_WRONLY);
	PROBE(wfd >= 0 && write(wfd, "4321\n", 5) == 5, "write 4321: %s", strerror(errno));
	/* As sysfs: a read from offset 0 shows the value now. */
	PROBE(pread_value(fd) == 4321, "pread after the change: %ld", pread_value(fd));
	PROBE(wfd >= 0 && write(wfd, "4322", 4) == 4 && pread_value(fd) == 4322,
	      "second write on the same descriptor");
	close(wfd);
	close(fd);

	fd = open("/proc/self/ksm_stat", O_RDONLY);
	PROBE(fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0 &&
	      !strncmp(buf, "ksm_rmap_items ", 15) && strstr(buf, "\nksm_mergeable: "),
	      "/proc/self/ksm_stat: '%s'", buf);
	if (fd >= 0)
		close(fd);
	probe_stdio();
	printf("probe: %d failures\n", probe_failures);
	return probe_failures ? 1 : 0;
}

/* ---- two processes that merge ---- */

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;
	(void)arg;

	tu_fill(p, LEN, 91);
	if (samepage_madvise(p, LEN, MADV_MERGEABLE))
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0 && cmd != 'q')
		;
	return 0;
}

static struct tu_child kids[2];
static pid_t pids[2];
static uintptr_t addrs[2];

static int merged(void *arg)
{
	(void)arg;
	return tu_frames(pids, addrs, 2, NPAGES) <= NPAGES + 4 && tu_status("pages_sharing") > 0;
}

/* `samepage run [--merge-any] -- sh -c CMD`, its stdout into out. */
static int run_sh(const char *opts, const char *cmd, char *out, size_t len)
{
	char line[PATH_MAX + 1024];
	size_t n = 0;
	FILE *f;
	int st;

	snprintf(line, sizeof(line), "%s run %s -- sh -c '%s'", tu_bin("samepage"), opts, cmd);
	f = popen(line, "r");
	TU_CHECK(f, "popen");
	while (n + 1 < len) {
		size_t r = fread(out + n, 1, len - 1 - n, f);
		if (!r)
			break;
		n += r;
	}
	out[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* `cat FILE` under samepage run agrees with `samepage status --json`: a
 * status read before and one after give the same value (not changing
 * meanwhile), and cat printed exactly it. */
static void cat_agrees(const char *file, const char *key)
{
	char cmd[256], out[256];

	snprintf(cmd, sizeof(cmd), "cat " KSM "%s", file);
	for (int tries = 0; tries < 50; tries++) {
		long long before = tu_status(key), v, after;
		TU_CHECK(run_sh("", cmd, out, sizeof(out)) == 0, "%s failed", cmd);
		after = tu_status(key);
		TU_CHECK(sscanf(out, "%lld", &v) == 1 && strchr(out, '\n') == out + strlen(out) - 1,
			 "%s printed '%s', not a number and a newline", cmd, out);
		if (before == after) {
			TU_CHECK(v == before, "%s says %lld, samepage status says %s %lld", cmd, v, key,
				 before);
			return;
		}
		tu_sleep_ms(100);
	}
	TU_FAIL("%s never held still", key);
}

static void check_proc_stat(pid_t pid)
{
	char cmd[128], out[1024], json[4096];
	const char *p;
	long long merging = -1;

	snprintf(cmd, sizeof(cmd), "cat /proc/%d/ksm_stat", (int)pid);
	TU_CHECK(run_sh("", cmd, out, sizeof(out)) == 0, "%s failed", cmd);
	TU_CHECK(tu_status_json(pid, json, sizeof(json)) == 0, "status --pid %d", (int)pid);
	p = strstr(out, "ksm_merging_pages ");
	TU_CHECK(p && sscanf(p + 18, "%lld", &merging) == 1, "%s: '%s'", cmd, out);
	TU_CHECK(merging == tu_json_get(json, "ksm_merging_pages") && merging >= NPAGES - 4,
		 "%s: ksm_merging_pages %lld, samepage status --pid says %lld", cmd, merging,
		 tu_json_get(json, "ksm_merging_pages"));
	TU_CHECK(strstr(out, "ksm_mergeable: yes\n") && strstr(out, "ksm_merge_any: no\n"),
		 "%s: '%s'", cmd, out);
}

static void check_self_stat(void)
{
	char out[1024];

	TU_CHECK(run_sh("--merge-any", "cat /proc/self/ksm_stat", out, sizeof(out)) == 0,
		 "cat /proc/self/ksm_stat failed");
	TU_CHECK(!strncmp(out, "ksm_rmap_items ", 15) && strstr(out, "\nksm_merge_any: yes\n") &&
		 strstr(out, "\nksm_mergeable: yes\n"),
		 "samepage run --merge-any -- cat /proc/self/ksm_stat: '%s'", out);
}

static void check_run_writes(void)
{
	char out[256];
	size_t f;

	TU_CHECK(run_sh("", "echo 2 > " KSM "run", out, sizeof(out)) == 0, "echo 2 > run failed");
	f = tu_frames(pids, addrs, 2, NPAGES);
	TU_CHECK(f == 2 * NPAGES, "echo 2 > run returned with %zu frames for 2 x %u pages", f,
		 NPAGES);
	TU_CHECK(tu_status("run") == 2, "samepage's run is %lld after echo 2", tu_status("run"));
	TU_CHECK(run_sh("", "cat " KSM "run", out, sizeof(out)) == 0 && !strcmp(out, "2\n"),
		 "cat run after echo 2: '%s'", out);
	TU_CHECK(run_sh("", "echo 5 > " KSM "run", out, sizeof(out)) != 0,
		 "echo 5 > run succeeded");
	TU_CHECK(tu_status("run") == 2, "echo 5 > run changed run to %lld", tu_status("run"));
	TU_CHECK(run_sh("", "echo 1 > " KSM "run", out, sizeof(out)) == 0, "echo 1 > run failed");
	TU_CHECK(tu_wait(merged, NULL, 30), "not merged again 30 s after echo 1 > run");
}

static void check_tools(void)
{
	char out[256];

	/* bash's echo: stdio, past write(); its redirection ends with dup2. */
	if (access("/bin/bash", X_OK) == 0) {
		snprintf(out, sizeof(out), "%s run -- /bin/bash -c 'echo 701 > " KSM
			 "pages_to_scan'", tu_bin("samepage"));
		TU_CHECK(system(out) == 0, "bash echo 701 failed");
		TU_CHECK(tu_status("pages_to_scan") == 701, "bash's echo 701: pages_to_scan %lld",
			 tu_status("pages_to_scan"));
	}
	/* coreutils' echo: stdio in a program exec'd onto the file. */
	TU_CHECK(run_sh("", "/bin/echo 702 > " KSM "pages_to_scan", out, sizeof(out)) == 0,
		 "/bin/echo 702 failed");
	TU_CHECK(tu_status("pages_to_scan") == 702, "/bin/echo 702: pages_to_scan %lld",
		 tu_status("pages_to_scan"));
	TU_CHECK(run_sh("", "/bin/echo 7x > " KSM "pages_to_scan", out, sizeof(out)) != 0,
		 "/bin/echo 7x succeeded");
	TU_CHECK(run_sh("", "echo 703 | tee " KSM "pages_to_scan >/dev/null", out, sizeof(out)) == 0,
		 "tee 703 failed");
	TU_CHECK(tu_status("pages_to_scan") == 703, "tee 703: pages_to_scan %lld",
		 tu_status("pages_to_scan"));
	TU_CHECK(run_sh("", "cd " KSM " && cat ./../ksm//pages_to_scan", out, sizeof(out)) == 0 &&
		 !strcmp(out, "703\n"), "a relative, unfolded path: '%s'", out);
}

static void check_probe(const char *self)
{
	char cmd[PATH_MAX + 256], out[8192];
	size_t n;
	FILE *f;
	int st;

	/* Its FAIL lines (stderr) in the message, with its summary. */
	snprintf(cmd, sizeof(cmd), "%s run -- %s probe 2>&1", tu_bin("samepage"), self);
	f = popen(cmd, "r");
	TU_CHECK(f, "popen");
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	st = pclose(f);
	TU_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the probe under samepage run: %s", out);
	TU_CHECK(strstr(out, "probe: 0 failures"), "probe: %s", out);
}

int main(int argc, char **argv)
{
	char self[PATH_MAX];
	long run_before, run_after;
	ssize_t n;

	if (argc > 1 && !strcmp(argv[1], "probe"))
		return probe();
#if defined(__SANITIZE_THREAD__)
	tu_skip("ThreadSanitizer's runtime cannot be preloaded into uninstrumented programs");
#endif
	tu_require_merging();
	tu_private_daemon();
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	TU_CHECK(n > 0, "readlink");
	self[n] = 0;
	run_before = real_value("run");

	for (int i = 0; i < 2; i++) {
		tu_spawn(&kids[i], child, NULL);
		pids[i] = kids[i].pid;
		TU_CHECK(tu_recv(kids[i].rd, &addrs[i], sizeof(addrs[i])) == 0, "child %d died", i);
	}
	TU_CHECK(tu_wait(merged, NULL, 30), "two processes not merged after 30 s");
	cat_agrees("pages_sharing", "pages_sharing");
	cat_agrees("pages_shared", "pages_shared");
	cat_agrees("pages_to_scan", "pages_to_scan");
	check_proc_stat(pids[0]);
	check_self_stat();
	printf("ksm_files: reads ok\n");
	fflush(stdout);

	check_run_writes();
	check_tools();
	check_probe(self);
	printf("ksm_files: writes ok\n");

	run_after = real_value("run");
	TU_CHECK(run_before == run_after, "the kernel's run went from %ld to %ld", run_before,
		 run_after);
	for (long v = 4321; v <= 4322; v++)
		TU_CHECK(real_value("pages_to_scan") != v, "the kernel's pages_to_scan is %ld", v);
	for (long v = 701; v <= 703; v++)
		TU_CHECK(real_value("pages_to_scan") != v, "the kernel's pages_to_scan is %ld", v);
	TU_CHECK(real_value("sleep_millisecs") != 37, "the kernel's sleep_millisecs is 37");
	for (int i = 0; i < 2; i++) {
		tu_send(kids[i].wr, "q", 1);
		TU_CHECK(tu_reap(&kids[i]) == 0, "child %d", i);
	}
	printf("ksm_files: ok\n");
	return 0;
}
