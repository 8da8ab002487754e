/* SPDX-License-Identifier: MIT */
/*
 * common — what every comparison with kernel KSM in bench/ needs: kernel
 * KSM switched on only while measured and always off again, a private
 * samepaged per run, CPU time from schedstat, the machine's own load, and
 * the summary lines bench/run.sh turns into its table.
 *
 * Header-only (static inline): the Makefile builds each bench/NAME.c as a
 * program of its own, linked with libsamepage and tests/lib/testutil.c
 * only. A program includes this once.
 *
 * Kernel KSM discipline: ksm_setup() refuses a kernel KSM that is already
 * on and saves the knobs it changes; from ksm_start() on, every exit of the
 * owner process (also die(), SIGINT/SIGTERM/SIGHUP through the polling
 * loops) goes through ksm_off(): run=2, wait for pages_shared=0, run=0,
 * knobs restored.
 */
#ifndef SAMEPAGE_BENCH_COMMON_H
#define SAMEPAGE_BENCH_COMMON_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define KSM "/sys/kernel/mm/ksm/"

enum mode { M_SAMEPAGE, M_KERNEL };
static const char *const mode_name[] = { "samepage", "kernel KSM" };

static pid_t owner;
static volatile sig_atomic_t interrupted;
static char build_dir[PATH_MAX];
static char sp_dir[64];
static pid_t sp_daemon;
static const char *summary_path;

/* Threads of a workload whose names start with this are the benchmark's
 * own (a stall probe, a rewriter): their CPU is the workload's, never
 * counted as samepage's scanner. */
#define BENCH_THREAD "bench-"

/* ---- small helpers ---- */

static inline void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", program_invocation_short_name);
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static inline int read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

static inline int write_text(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -errno;
}

static inline long long ksm_get(const char *knob)
{
	char path[128], buf[64];

	snprintf(path, sizeof(path), KSM "%s", knob);
	if (read_text(path, buf, sizeof(buf)))
		return -1;
	return atoll(buf);
}

static inline int ksm_set(const char *knob, long long v)
{
	char path[128], buf[32];

	snprintf(path, sizeof(path), KSM "%s", knob);
	snprintf(buf, sizeof(buf), "%lld", v);
	return write_text(path, buf);
}

/* The options every benchmark takes. 1: argv[*i] was one (its value
 * consumed), 0: not one of them, -1: a bad value. */
static inline int common_opt(int argc, char **argv, int *i, int *repeat, int *quiet_s, int *only)
{
	const char *o = argv[*i];

	if (*i + 1 >= argc)
		return 0;
	if (!strcmp(o, "--repeat"))
		*repeat = atoi(argv[++*i]);
	else if (!strcmp(o, "--quiet-wait"))
		*quiet_s = atoi(argv[++*i]);
	else if (!strcmp(o, "--summary"))
		summary_path = argv[++*i];
	else if (!strcmp(o, "--only")) {
		++*i;
		*only = !strcmp(argv[*i], "samepage") ? M_SAMEPAGE :
			!strcmp(argv[*i], "kernel") ? M_KERNEL : -2;
		return *only == -2 ? -1 : 1;
	} else
		return 0;
	return 1;
}

static inline void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* A page of xorshift bytes determined by seed (never all zero). */
static inline void fill_seeded(void *pg, uint64_t seed)
{
	uint64_t x = seed | 1, *q = pg;

	for (size_t k = 0; k < PAGE / 8; k++)
		q[k] = tu_xorshift(&x);
}

/* ---- CPU time from schedstat (ns, per task) ---- */

static inline uint64_t task_ns(pid_t pid, pid_t tid)
{
	char path[96], buf[128];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int)pid, (int)tid);
	return read_text(path, buf, sizeof(buf)) ? 0 : strtoull(buf, NULL, 10);
}

static inline int is_bench_thread(pid_t pid, pid_t tid)
{
	char path[96], buf[32];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", (int)pid, (int)tid);
	return !read_text(path, buf, sizeof(buf)) && !strncmp(buf, BENCH_THREAD,
							      strlen(BENCH_THREAD));
}

/* Every live thread of pid; *other: all but the main thread and the
 * benchmark's own threads (samepage's scanner); *bench: those. */
static inline uint64_t proc_ns(pid_t pid, uint64_t *other, uint64_t *bench)
{
	char path[64];
	uint64_t all = 0, oth = 0, bn = 0;
	struct dirent *de;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		pid_t tid = atoi(de->d_name);
		if (tid <= 0)
			continue;
		uint64_t ns = task_ns(pid, tid);
		all += ns;
		if (tid == pid)
			continue;
		if (is_bench_thread(pid, tid))
			bn += ns;
		else
			oth += ns;
	}
	closedir(d);
	if (other)
		*other = oth;
	if (bench)
		*bench = bn;
	return all;
}

static inline int count_threads(pid_t pid)
{
	char path[64];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d)))
		n += atoi(de->d_name) > 0;
	closedir(d);
	return n;
}

static inline pid_t find_ksmd(void)
{
	struct dirent *de;
	DIR *d = opendir("/proc");
	pid_t found = 0;

	if (!d)
		return 0;
	while (!found && (de = readdir(d))) {
		char path[64], buf[64];
		pid_t pid = atoi(de->d_name);
		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
		if (!read_text(path, buf, sizeof(buf)) && !strcmp(buf, "ksmd\n"))
			found = pid;
	}
	closedir(d);
	return found;
}

/* The process holding path open: the daemon holds its lock file. */
static inline pid_t holder_of(const char *path)
{
	struct dirent *de;
	DIR *d = opendir("/proc");
	pid_t found = 0;

	if (!d)
		return 0;
	while (!found && (de = readdir(d))) {
		pid_t pid = atoi(de->d_name);
		char fdir[64];
		DIR *f;
		struct dirent *fe;
		if (pid <= 0)
			continue;
		snprintf(fdir, sizeof(fdir), "/proc/%d/fd", (int)pid);
		f = opendir(fdir);
		if (!f)
			continue;
		while (!found && (fe = readdir(f))) {
			char link[64 + sizeof(fe->d_name)], target[PATH_MAX];
			ssize_t n;
			if (fe->d_name[0] == '.')
				continue;
			snprintf(link, sizeof(link), "%s/%s", fdir, fe->d_name);
			n = readlink(link, target, sizeof(target) - 1);
			if (n > 0) {
				target[n] = 0;
				if (!strcmp(target, path))
					found = pid;
			}
		}
		closedir(f);
	}
	closedir(d);
	return found;
}

static inline long count_vmas(pid_t pid)
{
	char path[64], line[512];
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += strchr(line, '\n') != NULL;
	fclose(f);
	return n;
}

/* Rss (KiB) of libsamepage's own memory in pid: the mapping named
 * [anon:samepage] where the kernel names mappings, else its arena, the one
 * MAP_NORESERVE reservation of at least 1 GiB (VmFlags "nr"; see
 * src/arena.c). glibc's thread heaps are NORESERVE too, but 64 MiB. */
static inline uint64_t lib_rss_kib(pid_t pid)
{
	char path[64], line[512];
	uint64_t sum = 0, rss = 0;
	unsigned long s = 0, e = 0;
	int named = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long kb;
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && line[0] != ' ') {
			s = a;
			e = b;
			named = strstr(line, "[anon:samepage") != NULL;
			rss = 0;
		} else if (sscanf(line, "Rss: %llu kB", &kb) == 1) {
			rss = kb;
		} else if (!strncmp(line, "VmFlags:", 8)) {
			/* The last line of a mapping's block. */
			if (named || (strstr(line, " nr") && e - s >= (1ul << 30)))
				sum += rss;
		}
	}
	fclose(f);
	return sum;
}

static inline uint64_t status_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t len = strlen(field);
	uint64_t v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, len) && line[len] == ':')
			v = strtoull(line + len + 1, NULL, 10);
	fclose(f);
	return v;
}

static inline uint64_t ksm_stat_field(pid_t pid, const char *field)
{
	char path[64], buf[1024], *p;

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	if (read_text(path, buf, sizeof(buf)) || !(p = strstr(buf, field)))
		return 0;
	return strtoull(p + strlen(field), NULL, 10);
}

/* Object size of a kernel slab cache (bytes), or fallback where sysfs
 * does not show it. */
static inline long slab_object_size(const char *cache, long fallback)
{
	char path[128], buf[32];

	snprintf(path, sizeof(path), "/sys/kernel/slab/%s/object_size", cache);
	return read_text(path, buf, sizeof(buf)) ? fallback : atol(buf);
}

/* ---- page frames ---- */

/* Frames of the present pages among npages at addr in pid, appended to
 * out[*n]. */
static inline void pfns_of(pid_t pid, uintptr_t addr, size_t npages, uint64_t *out, size_t *n)
{
	static uint64_t buf[8192]; /* the owner process only */
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	for (size_t i = 0; i < npages; i += 8192) {
		size_t k = npages - i < 8192 ? npages - i : 8192;
		if (pread(fd, buf, k * 8, (off_t)((addr / PAGE + i) * 8)) != (ssize_t)(k * 8))
			die("pagemap of %d: %s", (int)pid, strerror(errno));
		for (size_t j = 0; j < k; j++)
			if (buf[j] >> 63)
				out[(*n)++] = buf[j] & ((1ull << 55) - 1);
	}
	close(fd);
}

static inline int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Distinct frames among the n frames (sorted in place); *ksm: how many of
 * them are KSM pages (KPF_KSM in /proc/kpageflags), when ksm is given. */
static inline size_t distinct_frames(uint64_t *pfn, size_t n, size_t *ksm)
{
	size_t d = 0, k = 0;
	int fd = ksm ? open("/proc/kpageflags", O_RDONLY | O_CLOEXEC) : -1;

	qsort(pfn, n, sizeof(*pfn), cmp_u64);
	for (size_t i = 0; i < n; i++) {
		uint64_t fl;
		if (i && pfn[i] == pfn[i - 1])
			continue;
		d++;
		if (fd >= 0 && pread(fd, &fl, 8, (off_t)(pfn[i] * 8)) == 8)
			k += (fl >> 21) & 1; /* KPF_KSM */
	}
	if (fd >= 0)
		close(fd);
	if (ksm)
		*ksm = k;
	return d;
}

/* Distinct values among v[n] without sorting (a poll every few hundred ms
 * over a million frames: sorting them took a good part of a CPU): open
 * addressing in table[cap], cap a power of two >= 2n, zeroed here. */
static inline size_t count_distinct(const uint64_t *v, size_t n, uint64_t *table, size_t cap)
{
	size_t d = 0;

	memset(table, 0, cap * sizeof(*table));
	for (size_t i = 0; i < n; i++) {
		uint64_t key = v[i] + 1; /* 0 marks an empty slot */
		size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
		while (table[h] && table[h] != key)
			h = (h + 1) & (cap - 1);
		if (!table[h]) {
			table[h] = key;
			d++;
		}
	}
	return d;
}

/* rmap_items kernel KSM holds for processes other than ours[n]: memory of
 * other mergeable processes (QEMU guests, anything under prctl
 * PR_SET_MEMORY_MERGE) that ksmd scans too while it is on. Its global
 * counters and its CPU then include them. */
static inline uint64_t ksm_other_rmap_items(const pid_t *ours, int n)
{
	struct dirent *de;
	DIR *d = opendir("/proc");
	uint64_t sum = 0;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		pid_t pid = atoi(de->d_name);
		int mine = 0;
		if (pid <= 0)
			continue;
		for (int i = 0; i < n; i++)
			mine |= ours[i] == pid;
		if (!mine)
			sum += ksm_stat_field(pid, "ksm_rmap_items ");
	}
	closedir(d);
	return sum;
}

/* ---- samepage: a private daemon and its CLI ---- */

static inline int sp_cli(const char *args, char *out, size_t outlen)
{
	char cmd[PATH_MAX + 512];
	size_t n = 0;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "%s/bin/samepage %s", build_dir, args);
	f = popen(cmd, "r");
	if (!f)
		return -errno;
	if (out) {
		n = fread(out, 1, outlen - 1, f);
		out[n] = 0;
	} else {
		char sink[512];
		while (fread(sink, 1, sizeof(sink), f) > 0)
			;
	}
	int st = pclose(f);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

static inline long long json_get(const char *json, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(json, pat);
	return p ? atoll(p + strlen(pat)) : -1;
}

static inline long long sp_status(const char *key)
{
	char out[4096];

	if (sp_cli("status --json 2>/dev/null", out, sizeof(out)))
		return -1;
	return json_get(out, key);
}

/* A field of `samepage status --pid PID --json`, -1 when missing. */
static inline long long sp_status_pid(pid_t pid, const char *key)
{
	char out[4096], args[96];

	snprintf(args, sizeof(args), "status --json --pid %d 2>/dev/null", (int)pid);
	if (sp_cli(args, out, sizeof(out)))
		return -1;
	return json_get(out, key);
}

/* Stop our daemon and remove its directory. */
static inline void sp_teardown(void)
{
	char p[128];

	if (sp_daemon > 0) {
		kill(sp_daemon, SIGTERM);
		for (int i = 0; i < 100 && kill(sp_daemon, 0) == 0; i++)
			sleep_ms(10);
		sp_daemon = 0;
	}
	if (sp_dir[0]) {
		snprintf(p, sizeof(p), "%s/sock", sp_dir);
		unlink(p);
		snprintf(p, sizeof(p), "%s/sock.lock", sp_dir);
		unlink(p);
		rmdir(sp_dir);
		sp_dir[0] = 0;
	}
}

/* A daemon of our own (SAMEPAGE_SOCKET in a fresh directory), started by
 * `samepage set KNOBS`. */
static inline void sp_setup(const char *knobs)
{
	char sock[128], lock[160], daemon[PATH_MAX + 32], args[256];

	snprintf(sp_dir, sizeof(sp_dir), "/tmp/sp-bench-XXXXXX");
	if (!mkdtemp(sp_dir))
		die("mkdtemp: %s", strerror(errno));
	snprintf(sock, sizeof(sock), "%s/sock", sp_dir);
	snprintf(daemon, sizeof(daemon), "%s/bin/samepaged", build_dir);
	setenv("SAMEPAGE_SOCKET", sock, 1);
	setenv("SAMEPAGE_DAEMON", daemon, 1);
	snprintf(args, sizeof(args), "set %s", knobs);
	if (sp_cli(args, NULL, 0))
		die("cannot start or configure samepaged (%s)", knobs);
	snprintf(lock, sizeof(lock), "%s.lock", sock);
	sp_daemon = holder_of(lock);
	if (sp_daemon <= 0)
		die("cannot find samepaged holding %s", lock);
}

/* ---- kernel KSM: switched on only while measured ---- */

static const char *const saved_knobs[] = { "pages_to_scan", "sleep_millisecs", "smart_scan" };
static long long saved[3];
static int ksm_touched, ksm_on;

static inline void ksm_off(void)
{
	if (ksm_on) {
		ksm_set("run", 2); /* unmerge everything, then stop */
		for (int i = 0; i < 6000 && ksm_get("pages_shared") > 0; i++)
			sleep_ms(10);
		if (ksm_get("pages_shared") > 0)
			fprintf(stderr, "%s: warning: pages_shared still %lld\n",
				program_invocation_short_name, ksm_get("pages_shared"));
		ksm_set("run", 0);
		ksm_on = 0;
	}
	if (ksm_touched) {
		for (size_t i = 0; i < 3; i++)
			if (saved[i] >= 0)
				ksm_set(saved_knobs[i], saved[i]);
		ksm_touched = 0;
	}
}

/* What we set, to notice someone else changing it while we measure. */
static long long ksm_want_pts, ksm_want_sleep;
static int ksm_disturbed;

/* Save the knobs and set the budget; kernel KSM stays off (run=0). Someone
 * else's kernel KSM (on when we start) is waited for, at most 2 minutes,
 * and never touched. */
static inline void ksm_setup(long long pages_to_scan, long long sleep_millisecs)
{
	const long long want[] = { pages_to_scan, sleep_millisecs, 0 };

	for (int i = 0; ksm_get("run") != 0 && !interrupted; i++) {
		if (i == 0)
			fprintf(stderr, "%s: kernel KSM is on (run=%lld), someone else's: waiting "
					"for it to be off\n", program_invocation_short_name,
				ksm_get("run"));
		if (i == 1200)
			die("kernel KSM is on (run=%lld): not touching someone else's KSM",
			    ksm_get("run"));
		sleep_ms(100);
	}
	if (interrupted)
		die("interrupted");
	for (size_t i = 0; i < 3; i++)
		saved[i] = ksm_get(saved_knobs[i]);
	ksm_touched = 1;
	for (size_t i = 0; i < 3; i++)
		if (saved[i] >= 0 && ksm_set(saved_knobs[i], want[i]))
			die("cannot set %s", saved_knobs[i]);
	ksm_want_pts = pages_to_scan;
	ksm_want_sleep = sleep_millisecs;
}

static inline void ksm_start(void)
{
	ksm_on = 1; /* from here on, cleanup switches it off */
	if (ksm_set("run", 1))
		die("cannot switch kernel KSM on");
}

/* Called while kernel KSM is measured: did anyone else switch it or change
 * its budget? Then the kernel's numbers of this run are not valid. */
static inline void ksm_check(void)
{
	if (!ksm_on || ksm_disturbed)
		return;
	if (ksm_get("run") != 1 || ksm_get("pages_to_scan") != ksm_want_pts ||
	    ksm_get("sleep_millisecs") != ksm_want_sleep || ksm_get("smart_scan") > 0) {
		ksm_disturbed = 1;
		fprintf(stderr, "%s: WARNING: someone else changed kernel KSM while it was "
				"measured (run=%lld pages_to_scan=%lld sleep_millisecs=%lld): the "
				"kernel's numbers of this run are not valid\n",
			program_invocation_short_name, ksm_get("run"), ksm_get("pages_to_scan"),
			ksm_get("sleep_millisecs"));
	}
}

/* The same budget for whichever merger runs now. */
static inline void set_budget(enum mode mode, long long pages_to_scan, long long sleep_millisecs)
{
	char arg[96];

	snprintf(arg, sizeof(arg), "set pages_to_scan=%lld sleep_millisecs=%lld", pages_to_scan,
		 sleep_millisecs);
	if (mode == M_KERNEL ? ksm_set("pages_to_scan", pages_to_scan) ||
				       ksm_set("sleep_millisecs", sleep_millisecs) :
			       sp_cli(arg, NULL, 0))
		die("cannot set the budget of %s", mode_name[mode]);
	if (mode == M_KERNEL) {
		ksm_want_pts = pages_to_scan;
		ksm_want_sleep = sleep_millisecs;
	}
}

static inline void cleanup(void)
{
	if (getpid() != owner)
		return; /* a worker exiting through exit(): not our job */
	ksm_off();
	sp_teardown();
}

static inline void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* Root, kernel KSM, build_dir (build/bench/PROG -> build), cleanup at exit
 * and on signals. */
static inline void bench_init(int need_ksm)
{
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: reads fail */
	ssize_t n;

	if (geteuid() != 0)
		tu_skip("needs root (page frames in pagemap, ksmd, /sys/kernel/mm/ksm)");
	if (need_ksm && access(KSM "run", W_OK))
		tu_skip("kernel KSM not available (" KSM "run)");
	n = readlink("/proc/self/exe", build_dir, sizeof(build_dir) - 1);
	if (n <= 0)
		die("readlink /proc/self/exe");
	build_dir[n] = 0;
	*strrchr(build_dir, '/') = 0;
	*strrchr(build_dir, '/') = 0;
	owner = getpid();
	atexit(cleanup);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* ---- the machine ---- */

/* Busy CPU seconds of the whole machine so far (/proc/stat). */
static inline double machine_busy_s(void)
{
	unsigned long long v[8] = { 0 };
	char buf[512];

	if (read_text("/proc/stat", buf, sizeof(buf)) ||
	    sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		   &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		return 0;
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* Other users of this machine distort every number: wait (at most max_s)
 * for a half second in which the machine is busy less than 20% of a CPU. */
static inline void wait_quiet(int max_s)
{
	double end = tu_now() + max_s;

	while (!interrupted) {
		double b0 = machine_busy_s(), t0 = tu_now(), busy;
		sleep_ms(500);
		busy = (machine_busy_s() - b0) / (tu_now() - t0);
		if (busy < 0.2)
			return;
		if (tu_now() > end) {
			fprintf(stderr, "%s: the machine stays busy (%.0f%% of a CPU); "
					"measuring anyway\n", program_invocation_short_name,
				busy * 100);
			return;
		}
	}
}

/* ---- statistics and report ---- */

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static inline double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static inline int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of n sorted values, nearest rank. */
static inline uint32_t quantile_u32(const uint32_t *sorted, size_t n, double q)
{
	size_t i;

	if (!n)
		return 0;
	i = (size_t)(q * (double)n);
	return sorted[i < n ? i : n - 1];
}

/* One row of a samepage / kernel table; NAN-free: have_* say what exists. */
static inline void row(const char *name, const char *unit, double sp, double k, int have_sp,
		       int have_k)
{
	char a[32] = "-", b[32] = "-", c[32] = "-";

	if (have_sp)
		snprintf(a, sizeof(a), "%.3f", sp);
	if (have_k)
		snprintf(b, sizeof(b), "%.3f", k);
	if (have_sp && have_k && k != 0)
		snprintf(c, sizeof(c), "%.2f", sp / k);
	printf("%-36s %-5s | %12s | %12s | %8s\n", name, unit, a, b, c);
}

static inline void table_head(void)
{
	printf("%-36s %-5s | %12s | %12s | %8s\n", "metric", "unit", "samepage", "kernel KSM",
	       "sp/kernel");
	printf("-------------------------------------------+--------------+--------------+---------\n");
}

/* A line for bench/run.sh's summary (--summary FILE): key, samepage's
 * value, the kernel's; "-" for a value not measured. */
static inline void summary(const char *key, double sp, double k, int have_sp, int have_k)
{
	FILE *f;

	if (!summary_path)
		return;
	f = fopen(summary_path, "a");
	if (!f)
		die("cannot append to %s: %s", summary_path, strerror(errno));
	if (have_sp)
		fprintf(f, "%s %.6g", key, sp);
	else
		fprintf(f, "%s -", key);
	if (have_k)
		fprintf(f, " %.6g\n", k);
	else
		fprintf(f, " -\n");
	fclose(f);
}

/* At the end of a report: say whether kernel KSM was disturbed (see
 * ksm_check()), also in the summary under key. */
static inline void report_disturbed(const char *key)
{
	if (ksm_disturbed)
		printf("NOTE: someone else changed kernel KSM (run or budget) while it was "
		       "measured: the kernel's numbers are not valid\n");
	summary(key, 0, ksm_disturbed, 1, 1);
}

#endif
