/* SPDX-License-Identifier: MIT */
/*
 * ksm_compare — the same workload merged by samepage and by kernel KSM, in
 * one run, with ratios.
 *
 * Workload: 2 processes, each S MiB (default 256) of the same random pages
 * (every page distinct from the others, identical across the processes),
 * written once before anything is timed (the first touch of fresh memory is
 * slow in a VM). They mark the memory with madvise(MADV_MERGEABLE):
 *   samepage:   madvise() — libsamepage's, which this binary links, exactly
 *               what a program under `samepage run` gets;
 *   kernel KSM: syscall(SYS_madvise) — straight to the kernel; libsamepage
 *               never starts in that process.
 *
 * Both mergers get the same budget: samepage's knobs and the kernel's are
 * set to pages_to_scan=100000, sleep_millisecs=0 (kernel: smart_scan=0).
 * samepage gets a daemon of its own (SAMEPAGE_SOCKET in a fresh directory).
 *
 * Measured from the outside, never taken from either implementation's own
 * counters where a ground truth exists:
 *   - wall time from the madvise until every page of process 0 has the same
 *     page frame as process 1's page at that offset (pagemap, every 10 ms);
 *   - CPU spent meanwhile (schedstat, ns): ksmd, or samepaged plus the
 *     workloads' threads other than main (samepage's scanners); the
 *     workloads' main threads for both; and the rest of the machine's busy
 *     time, which tells whether someone else disturbed the run;
 *   - distinct page frames before and after (the memory saved), the pool
 *     size, the VMA count of a workload, bookkeeping memory;
 *   - the first write to a merged page: one byte into each of W merged pages
 *     per process (default 10000), ns per write, once with the merger paused
 *     (run=0: the fault alone) and once with it running, each followed by
 *     the same writes again (the pages are private by then: the baseline);
 *   - that both processes still hold exactly their bytes afterwards.
 * Each number is the median of R runs (default 3), samepage and kernel
 * alternating; each run waits (up to --quiet-wait s) for an idle machine.
 *
 * Needs root: page frame numbers in /proc/PID/pagemap, ksmd's schedstat,
 * /sys/kernel/mm/ksm. Kernel KSM is switched on only while measured and
 * always switched off again (run=2, wait for pages_shared=0, run=0; the
 * knobs it changed are restored), also on errors and SIGINT/SIGTERM/SIGHUP.
 * It refuses to touch a kernel KSM that is already on.
 *
 *   build/bench/ksm_compare [--mib S] [--writes W] [--repeat R] [--timeout SEC]
 *       [--quiet-wait SEC] [--only samepage|kernel] [--samepage-default-knobs]
 */
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

#define NPROC 2
#define KSM "/sys/kernel/mm/ksm/"
#define SEED 0x5eedull

enum mode { M_SAMEPAGE, M_KERNEL };
static const char *const mode_name[] = { "samepage", "kernel KSM" };

struct opts {
	size_t mib, writes;
	int repeat, timeout_s, quiet_s;
	int only; /* -1: both */
	int sp_default_knobs;
};

static pid_t owner;
static volatile sig_atomic_t interrupted;
static char build_dir[PATH_MAX];
static char sp_dir[64];
static pid_t sp_daemon;

/* ---- small helpers ---- */

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "ksm_compare: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static int read_text(const char *path, char *buf, size_t len)
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

static int write_text(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -errno;
}

static long long ksm_get(const char *knob)
{
	char path[128], buf[64];

	snprintf(path, sizeof(path), KSM "%s", knob);
	if (read_text(path, buf, sizeof(buf)))
		return -1;
	return atoll(buf);
}

static int ksm_set(const char *knob, long long v)
{
	char path[128], buf[32];

	snprintf(path, sizeof(path), KSM "%s", knob);
	snprintf(buf, sizeof(buf), "%lld", v);
	return write_text(path, buf);
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- per-page content: page i of every process is the same ---- */

static void fill_page(void *pg, size_t i)
{
	uint64_t x = (SEED ^ (i * 0x9E3779B97F4A7C15ull)) | 1, *q = pg;

	for (size_t k = 0; k < PAGE / 8; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		q[k] = x;
	}
}

/* ---- CPU time from schedstat (ns, per task) ---- */

static uint64_t task_ns(pid_t pid, pid_t tid)
{
	char path[96], buf[128];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int)pid, (int)tid);
	return read_text(path, buf, sizeof(buf)) ? 0 : strtoull(buf, NULL, 10);
}

/* Every live thread of pid; *other: all but the main thread. */
static uint64_t proc_ns(pid_t pid, uint64_t *other)
{
	char path[64];
	uint64_t all = 0, oth = 0;
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
		if (tid != pid)
			oth += ns;
	}
	closedir(d);
	if (other)
		*other = oth;
	return all;
}

static int count_threads(pid_t pid)
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

static pid_t find_ksmd(void)
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
static pid_t holder_of(const char *path)
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

static long count_vmas(pid_t pid)
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

/* Sum of "Rss:" of the mappings whose maps line contains name. */
static uint64_t named_rss_kib(pid_t pid, const char *name)
{
	char path[64], line[512];
	uint64_t sum = 0;
	int in = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long kb;
		if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') &&
		    line[0] != ' ' && !strchr(line, ':'))
			in = strstr(line, name) != NULL;
		else if (in && sscanf(line, "Rss: %llu kB", &kb) == 1)
			sum += kb;
	}
	fclose(f);
	return sum;
}

static uint64_t status_kib(pid_t pid, const char *field)
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

static uint64_t ksm_stat_field(pid_t pid, const char *field)
{
	char path[64], buf[1024], *p;

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	if (read_text(path, buf, sizeof(buf)) || !(p = strstr(buf, field)))
		return 0;
	return strtoull(p + strlen(field), NULL, 10);
}

/* ---- samepage: a private daemon and its CLI ---- */

static int sp_cli(const char *args, char *out, size_t outlen)
{
	char cmd[PATH_MAX + 256];
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

static long long json_get(const char *json, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(json, pat);
	return p ? atoll(p + strlen(pat)) : -1;
}

static long long sp_status(const char *key)
{
	char out[4096];

	if (sp_cli("status --json 2>/dev/null", out, sizeof(out)))
		return -1;
	return json_get(out, key);
}

/* Stop our daemon and remove its directory. */
static void sp_teardown(void)
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

static void sp_setup(const struct opts *o)
{
	char sock[128], lock[160], daemon[PATH_MAX + 32];

	snprintf(sp_dir, sizeof(sp_dir), "/tmp/sp-bench-XXXXXX");
	if (!mkdtemp(sp_dir))
		die("mkdtemp: %s", strerror(errno));
	snprintf(sock, sizeof(sock), "%s/sock", sp_dir);
	snprintf(daemon, sizeof(daemon), "%s/bin/samepaged", build_dir);
	setenv("SAMEPAGE_SOCKET", sock, 1);
	setenv("SAMEPAGE_DAEMON", daemon, 1);
	/* Starts the daemon too. */
	if (sp_cli(o->sp_default_knobs ? "set run=1" :
					 "set pages_to_scan=100000 sleep_millisecs=0", NULL, 0))
		die("cannot start or configure samepaged");
	snprintf(lock, sizeof(lock), "%s.lock", sock);
	sp_daemon = holder_of(lock);
	if (sp_daemon <= 0)
		die("cannot find samepaged holding %s", lock);
}

/* ---- kernel KSM: switched on only while measured ---- */

static const char *const saved_knobs[] = { "pages_to_scan", "sleep_millisecs", "smart_scan" };
static long long saved[3];
static int ksm_touched, ksm_on;

static void ksm_off(void)
{
	if (ksm_on) {
		ksm_set("run", 2); /* unmerge everything, then stop */
		for (int i = 0; i < 6000 && ksm_get("pages_shared") > 0; i++)
			sleep_ms(10);
		if (ksm_get("pages_shared") > 0)
			fprintf(stderr, "ksm_compare: warning: pages_shared still %lld\n",
				ksm_get("pages_shared"));
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

static void ksm_setup(void)
{
	static const long long want[] = { 100000, 0, 0 };

	if (ksm_get("run") != 0)
		die("kernel KSM is on (run=%lld): not touching someone else's KSM", ksm_get("run"));
	for (size_t i = 0; i < 3; i++)
		saved[i] = ksm_get(saved_knobs[i]);
	ksm_touched = 1;
	for (size_t i = 0; i < 3; i++)
		if (saved[i] >= 0 && ksm_set(saved_knobs[i], want[i]))
			die("cannot set %s", saved_knobs[i]);
}

static void cleanup(void)
{
	if (getpid() != owner)
		return; /* a worker exiting through exit(): not our job */
	ksm_off();
	sp_teardown();
}

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* ---- the workload process ---- */

enum { CMD_MADVISE = 'm', CMD_WRITE = 'w', CMD_VERIFY = 'v', CMD_QUIT = 'q' };

struct wctx { enum mode mode; size_t npages; int idx; };

/* The write test: pages first, first+stride, ... (n of them). */
struct write_q { size_t first, stride, n; };
struct write_r { double first_ns, again_ns; };

/* One byte into each page, then the same bytes back (the pages are private
 * by then: no fault, the baseline). Each process flips its own bit, so the
 * written pages of the two processes differ and cannot merge with each
 * other in between; the second loop restores the original bytes. */
static void write_test(unsigned char *p, int idx, const struct write_q *q, struct write_r *r)
{
	volatile unsigned char *v = p;
	unsigned char bit = (unsigned char)(1u << idx);
	double t0, t1, t2;

	t0 = tu_now();
	for (size_t k = 0; k < q->n; k++)
		v[(q->first + k * q->stride) * PAGE] ^= bit;
	t1 = tu_now();
	for (size_t k = 0; k < q->n; k++)
		v[(q->first + k * q->stride) * PAGE] ^= bit;
	t2 = tu_now();
	r->first_ns = (t1 - t0) * 1e9 / (double)q->n;
	r->again_ns = (t2 - t1) * 1e9 / (double)q->n;
}

static uint64_t verify(const unsigned char *p, size_t npages)
{
	unsigned char want[PAGE];
	uint64_t bad = 0;

	for (size_t i = 0; i < npages; i++) {
		fill_page(want, i);
		bad += memcmp(p + i * PAGE, want, PAGE) != 0;
	}
	return bad;
}

static int worker(int rd, int wr, void *arg)
{
	const struct wctx *w = arg;
	size_t len = w->npages * PAGE;
	unsigned char *p;
	uintptr_t a;
	char cmd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 2;
	/* 4 KiB pages for both mergers (THP would have to be split first). */
	syscall(SYS_madvise, p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < w->npages; i++) /* the first touch, before any timing */
		fill_page(p + i * PAGE, i);
	a = (uintptr_t)p;
	if (tu_send(wr, &a, sizeof(a)))
		return 3;
	while (tu_recv(rd, &cmd, 1) == 0) {
		if (cmd == CMD_MADVISE) {
			int r = w->mode == M_KERNEL ?
				(int)syscall(SYS_madvise, p, len, MADV_MERGEABLE) :
				madvise(p, len, MADV_MERGEABLE); /* libsamepage's */
			r = r ? -errno : 0;
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_WRITE) {
			struct write_q q;
			struct write_r r;
			if (tu_recv(rd, &q, sizeof(q)) || q.first + (q.n - 1) * q.stride >= w->npages)
				return 5;
			write_test(p, w->idx, &q, &r);
			tu_send(wr, &r, sizeof(r));
		} else if (cmd == CMD_VERIFY) {
			uint64_t bad = verify(p, w->npages);
			tu_send(wr, &bad, sizeof(bad));
		} else if (cmd == CMD_QUIT) {
			return 0;
		}
	}
	return 4;
}

/* ---- ground truth from pagemap ---- */

struct run {
	enum mode mode;
	size_t npages;
	struct tu_child c[NPROC];
	uintptr_t addr[NPROC];
	int pmfd[NPROC];
	uint64_t *pm[NPROC];
};

static void pm_read(struct run *r, int k)
{
	size_t len = r->npages * 8;

	if (pread(r->pmfd[k], r->pm[k], len, (off_t)(r->addr[k] / PAGE * 8)) != (ssize_t)len)
		die("pagemap of %d: %s", (int)r->c[k].pid, strerror(errno));
}

/* Pages of process 0 that share a frame with process 1's at the same offset. */
static size_t merged_pages(struct run *r)
{
	size_t n = 0;

	for (int k = 0; k < NPROC; k++)
		pm_read(r, k);
	for (size_t i = 0; i < r->npages; i++) {
		uint64_t a = r->pm[0][i], b = r->pm[1][i];
		n += (a >> 63) && (b >> 63) && ((a ^ b) & ((1ull << 55) - 1)) == 0;
	}
	return n;
}

static size_t frames(struct run *r)
{
	uintptr_t addrs[NPROC];
	pid_t pids[NPROC];

	for (int k = 0; k < NPROC; k++) {
		pids[k] = r->c[k].pid;
		addrs[k] = r->addr[k];
	}
	return tu_frames(pids, addrs, NPROC, r->npages);
}

/* ---- one measurement ---- */

/* Every number of one run; the report prints the median over the runs. */
#define RESULT_FIELDS(X)                                                       \
	X(merged_pct) X(merge_s) X(poll_ms) X(cpu_s) X(cpu_merger_s)           \
	X(cpu_scanner_s) X(cpu_work_s) X(other_cpu_s) X(frames_before)         \
	X(frames_after) X(book_kib) X(pool_pages) X(merge_vmas)                \
	X(vmas_before) X(vmas_merged) X(vmas_written) X(paused_first_ns)       \
	X(paused_again_ns) X(running_first_ns) X(running_again_ns)             \
	X(settle_cpu_s) X(pool_after_exit) X(bad)
#define DECLARE(f) double f;
struct result {
	RESULT_FIELDS(DECLARE)
};
#undef DECLARE

/* CPU (ns) of the merger and the workloads: ksmd, or samepaged; the
 * workloads' threads other than main (samepage's scanners); their mains. */
static uint64_t cpu_ns(const struct run *r, pid_t ksmd, uint64_t *merger, uint64_t *scan,
		       uint64_t *work)
{
	uint64_t s = 0, wk = 0;

	for (int k = 0; k < NPROC; k++) {
		uint64_t other, all = proc_ns(r->c[k].pid, &other);
		s += other;
		wk += all - other;
	}
	*merger = r->mode == M_KERNEL ? task_ns(ksmd, ksmd) : proc_ns(sp_daemon, NULL);
	*scan = s;
	*work = wk;
	return *merger + s + wk;
}

/* Busy CPU seconds of the whole machine so far (/proc/stat). */
static double machine_busy_s(void)
{
	unsigned long long v[8] = { 0 };
	char buf[512];

	if (read_text("/proc/stat", buf, sizeof(buf)) ||
	    sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		   &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		return 0;
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static void send_cmd(struct run *r, int k, char cmd)
{
	if (tu_send(r->c[k].wr, &cmd, 1))
		die("worker %d gone", k);
}

static void start_workers(struct run *r, struct wctx *w)
{
	for (int k = 0; k < NPROC; k++) {
		tu_spawn(&r->c[k], worker, &w[k]);
		r->pm[k] = malloc(r->npages * 8);
		if (!r->pm[k])
			die("malloc");
	}
	for (int k = 0; k < NPROC; k++) {
		char path[64];
		if (tu_recv(r->c[k].rd, &r->addr[k], sizeof(r->addr[k])))
			die("worker %d failed to start", k);
		snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)r->c[k].pid);
		r->pmfd[k] = open(path, O_RDONLY | O_CLOEXEC);
		if (r->pmfd[k] < 0)
			die("open %s: %s", path, strerror(errno));
	}
}

/* madvise in every worker, then poll page frames until all are shared. */
static void merge_phase(struct run *r, pid_t ksmd, const struct opts *o, struct result *res)
{
	uint64_t m0, s0, k0, m1, s1, k1, t0ns, t1ns, self0 = task_ns(owner, owner);
	double t0, deadline, polled = 0, busy0 = machine_busy_s();
	size_t merged = 0;
	int polls = 0;

	t0ns = cpu_ns(r, ksmd, &m0, &s0, &k0);
	t0 = tu_now();
	if (r->mode == M_KERNEL) {
		ksm_on = 1; /* from here on, cleanup switches it off */
		if (ksm_set("run", 1))
			die("cannot switch kernel KSM on");
	}
	for (int k = 0; k < NPROC; k++)
		send_cmd(r, k, CMD_MADVISE);
	for (int k = 0; k < NPROC; k++) {
		int rc;
		if (tu_recv(r->c[k].rd, &rc, sizeof(rc)) || rc)
			die("%s: madvise(MADV_MERGEABLE) in worker %d: %s", mode_name[r->mode], k,
			    strerror(-rc));
	}
	deadline = t0 + o->timeout_s;
	while (!interrupted && tu_now() < deadline) {
		double p0 = tu_now();
		merged = merged_pages(r);
		polled += tu_now() - p0;
		polls++;
		if (merged == r->npages)
			break;
		sleep_ms(10);
	}
	res->merge_s = tu_now() - t0;
	t1ns = cpu_ns(r, ksmd, &m1, &s1, &k1);
	if (interrupted)
		die("interrupted");
	res->merged_pct = 100.0 * (double)merged / (double)r->npages;
	res->poll_ms = polls ? polled * 1e3 / polls : 0;
	res->cpu_s = (double)(t1ns - t0ns) / 1e9;
	res->cpu_merger_s = (double)(m1 - m0) / 1e9;
	res->cpu_scanner_s = (double)(s1 - s0) / 1e9;
	res->cpu_work_s = (double)(k1 - k0) / 1e9;
	/* Whatever else ran meanwhile (other users of this machine, and this
	 * program's own polling): a busy machine makes both numbers worse. */
	res->other_cpu_s = machine_busy_s() - busy0 - res->cpu_s -
			   (double)(task_ns(owner, owner) - self0) / 1e9;
	if (res->other_cpu_s < 0)
		res->other_cpu_s = 0;
}

static void record_merged(struct run *r, struct result *res)
{
	/* The check that madvise reached the merger we meant. */
	if (r->mode == M_KERNEL && ksm_stat_field(r->c[0].pid, "ksm_rmap_items ") == 0)
		fprintf(stderr, "ksm_compare: warning: kernel KSM has no rmap_items for worker 0\n");
	if (r->mode == M_SAMEPAGE && count_threads(r->c[0].pid) < 2)
		fprintf(stderr, "ksm_compare: warning: no samepage scanner thread in worker 0\n");
	res->frames_after = (double)frames(r);
	res->vmas_merged = (double)count_vmas(r->c[0].pid);
	if (r->mode == M_KERNEL) {
		res->pool_pages = (double)ksm_get("pages_shared");
		/* struct ksm_rmap_item is 64 bytes on 64-bit; stable nodes not counted. */
		for (int k = 0; k < NPROC; k++)
			res->book_kib += ksm_stat_field(r->c[k].pid, "ksm_rmap_items ") * 64 / 1024.0;
	} else {
		res->pool_pages = (double)sp_status("pool_pages");
		res->merge_vmas = (double)sp_status("merge_vmas");
		/* The daemon's own memory (not the pool: that is shmem) and the
		 * library's [anon:samepage] mappings in each workload. */
		res->book_kib = (double)status_kib(sp_daemon, "RssAnon");
		for (int k = 0; k < NPROC; k++)
			res->book_kib += (double)named_rss_kib(r->c[k].pid, "[anon:samepage");
	}
}

/* Each worker in turn (alone: first touches of fresh frames from two
 * vCPUs at once slow each other down in this VM) writes q's pages. */
static void write_each(struct run *r, const struct write_q *q, double *first, double *again)
{
	*first = *again = 0;
	for (int k = 0; k < NPROC; k++) {
		struct write_r wr;
		send_cmd(r, k, CMD_WRITE);
		if (tu_send(r->c[k].wr, q, sizeof(*q)) || tu_recv(r->c[k].rd, &wr, sizeof(wr)))
			die("worker %d died in the write test", k);
		*first += wr.first_ns / NPROC;
		*again += wr.again_ns / NPROC;
	}
}

static void set_run(enum mode mode, int v)
{
	char arg[32];

	snprintf(arg, sizeof(arg), "set run=%d", v);
	if (mode == M_KERNEL ? ksm_set("run", v) : sp_cli(arg, NULL, 0))
		die("cannot set run=%d for %s", v, mode_name[mode]);
}

static struct write_q write_plan(const struct opts *o, size_t npages)
{
	size_t n = o->writes < npages / 2 ? o->writes : npages / 2;

	return (struct write_q){ .first = 0, .stride = 2 * (npages / 2 / n), .n = n };
}

/* The first write to merged pages: even pages with the merger paused
 * (run=0: the fault alone), odd pages with it running (what a workload
 * sees), then a second for the merger to react. */
static void write_phase(struct run *r, pid_t ksmd, const struct opts *o, struct result *res)
{
	struct write_q q = write_plan(o, r->npages);
	uint64_t m0, m1, x;

	set_run(r->mode, 0);
	write_each(r, &q, &res->paused_first_ns, &res->paused_again_ns);
	set_run(r->mode, 1);
	q.first = 1;
	write_each(r, &q, &res->running_first_ns, &res->running_again_ns);
	cpu_ns(r, ksmd, &m0, &x, &x);
	sleep_ms(1000);
	cpu_ns(r, ksmd, &m1, &x, &x);
	res->settle_cpu_s = (double)(m1 - m0) / 1e9;
	res->vmas_written = (double)count_vmas(r->c[0].pid);
}

static void finish(struct run *r, struct result *res)
{
	for (int k = 0; k < NPROC; k++) {
		uint64_t bad;
		send_cmd(r, k, CMD_VERIFY);
		if (tu_recv(r->c[k].rd, &bad, sizeof(bad)))
			die("worker %d died verifying", k);
		res->bad += (double)bad;
	}
	for (int k = 0; k < NPROC; k++) {
		send_cmd(r, k, CMD_QUIT);
		if (tu_reap(&r->c[k]) != 0)
			die("worker %d exited badly", k);
		close(r->pmfd[k]);
		free(r->pm[k]);
	}
	if (r->mode == M_KERNEL) {
		ksm_off();
		return;
	}
	/* Every reference died with its connection: the pool must empty. */
	for (int i = 0; i < 200 && (res->pool_after_exit = (double)sp_status("pool_pages")) > 0;
	     i++)
		sleep_ms(10);
	sp_teardown();
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct wctx w[NPROC];
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	pid_t ksmd = 0;

	memset(res, 0, sizeof(*res));
	for (int k = 0; k < NPROC; k++)
		w[k] = (struct wctx){ .mode = mode, .npages = r.npages, .idx = k };
	if (mode == M_KERNEL) {
		ksmd = find_ksmd();
		if (!ksmd)
			die("no ksmd thread found");
		ksm_setup();
	} else {
		sp_setup(o);
	}
	start_workers(&r, w);
	res->frames_before = (double)frames(&r);
	res->vmas_before = (double)count_vmas(r.c[0].pid);
	merge_phase(&r, ksmd, o, res);
	record_merged(&r, res);
	write_phase(&r, ksmd, o, res);
	finish(&r, res);
}

/* ---- report ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void median_result(const struct result *runs, int n, struct result *out)
{
	double v[64];

#define MEDIAN(f)                                 \
	for (int i = 0; i < n; i++)               \
		v[i] = runs[i].f;                 \
	out->f = median(v, n);
	RESULT_FIELDS(MEDIAN)
#undef MEDIAN
}

static void row(const char *name, const char *unit, double sp, double k, int have_sp,
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

static void report(const struct opts *o, const struct result *s, const struct result *k,
		   const int *have)
{
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];
	struct write_q q = write_plan(o, o->mib * 256);

#define ROW(name, unit, expr_s, expr_k) row(name, unit, expr_s, expr_k, hs, hk)
	printf("\nworkload: %d processes x %zu MiB of identical random pages (%zu pages each); "
	       "median of %d run%s\n", NPROC, o->mib, o->mib * 256, o->repeat,
	       o->repeat > 1 ? "s" : "");
	printf("budget: pages_to_scan=100000 sleep_millisecs=0 for both%s; kernel smart_scan=0\n",
	       o->sp_default_knobs ? " (samepage: its default knobs)" : "");
	printf("%-36s %-5s | %12s | %12s | %8s\n", "metric", "unit", "samepage", "kernel KSM",
	       "sp/kernel");
	printf("-------------------------------------------+--------------+--------------+---------\n");
	ROW("pages merged (process 0)", "%", s->merged_pct, k->merged_pct);
	ROW("wall time until merged", "s", s->merge_s, k->merge_s);
	ROW("merge rate (both processes)", "MiB/s", s->merge_s ? 2.0 * o->mib / s->merge_s : 0,
	    k->merge_s ? 2.0 * o->mib / k->merge_s : 0);
	ROW("CPU until merged, total", "s", s->cpu_s, k->cpu_s);
	ROW("  samepaged | ksmd", "s", s->cpu_merger_s, k->cpu_merger_s);
	ROW("  scanner threads in the workloads", "s", s->cpu_scanner_s, k->cpu_scanner_s);
	ROW("  workloads' main threads", "s", s->cpu_work_s, k->cpu_work_s);
	ROW("other CPU use on the machine", "s", s->other_cpu_s, k->other_cpu_s);
	ROW("distinct frames before", "MiB", s->frames_before / 256, k->frames_before / 256);
	ROW("distinct frames after", "MiB", s->frames_after / 256, k->frames_after / 256);
	ROW("memory saved", "MiB", (s->frames_before - s->frames_after) / 256,
	    (k->frames_before - k->frames_after) / 256);
	ROW("bookkeeping memory", "MiB", s->book_kib / 1024, k->book_kib / 1024);
	ROW("pool | pages_shared", "MiB", s->pool_pages / 256, k->pool_pages / 256);
	ROW("VMAs of worker 0: before", "count", s->vmas_before, k->vmas_before);
	ROW("  merged", "count", s->vmas_merged, k->vmas_merged);
	ROW("  1 s after the write tests", "count", s->vmas_written, k->vmas_written);
	ROW("first write to a merged page, run=0", "ns", s->paused_first_ns, k->paused_first_ns);
	ROW("  same byte again (no fault)", "ns", s->paused_again_ns, k->paused_again_ns);
	ROW("first write to a merged page, run=1", "ns", s->running_first_ns,
	    k->running_first_ns);
	ROW("  same byte again", "ns", s->running_again_ns, k->running_again_ns);
	ROW("merger CPU in the 1 s after writes", "s", s->settle_cpu_s, k->settle_cpu_s);
	ROW("pages differing from expected", "pages", s->bad, k->bad);
#undef ROW
	if (hs)
		printf("samepage: merge_vmas %.0f over both workers; pool pages left after the "
		       "workloads exited: %.0f\n", s->merge_vmas, s->pool_after_exit);
	printf("write tests: %zu pages per process and test, every %zu-th page (run=0: even "
	       "pages, merger paused; run=1: odd pages, merger running), one process at a "
	       "time, mean of both\n", q.n, q.stride);
	printf("merged-check: one pagemap poll of both processes took %.2f ms (samepage) / "
	       "%.2f ms (kernel), every 10 ms\n", hs ? s->poll_ms : 0, hk ? k->poll_ms : 0);
	if ((hs && s->merged_pct < 100) || (hk && k->merged_pct < 100))
		printf("NOTE: not everything merged within %d s in some run\n", o->timeout_s);
}

/* Other users of this machine distort every number: wait (at most max_s)
 * for a half second in which the machine is busy less than 20% of a CPU. */
static void wait_quiet(int max_s)
{
	double end = tu_now() + max_s;

	while (!interrupted) {
		double b0 = machine_busy_s(), t0 = tu_now(), busy;
		sleep_ms(500);
		busy = (machine_busy_s() - b0) / (tu_now() - t0);
		if (busy < 0.2)
			return;
		if (tu_now() > end) {
			fprintf(stderr, "ksm_compare: the machine stays busy (%.0f%% of a CPU); "
					"measuring anyway\n", busy * 100);
			return;
		}
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: ksm_compare [--mib S] [--writes W] [--repeat R] [--timeout SEC] "
			"[--quiet-wait SEC] [--only samepage|kernel] [--samepage-default-knobs]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			o->mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--writes") && i + 1 < argc)
			o->writes = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
			o->repeat = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o->timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--quiet-wait") && i + 1 < argc)
			o->quiet_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			i++;
			o->only = !strcmp(argv[i], "samepage") ? M_SAMEPAGE :
				  !strcmp(argv[i], "kernel") ? M_KERNEL : -2;
			if (o->only == -2)
				usage();
		} else if (!strcmp(argv[i], "--samepage-default-knobs"))
			o->sp_default_knobs = 1;
		else
			usage();
	}
	if (!o->mib || o->mib > (1u << 20) || !o->writes || o->timeout_s <= 0 ||
	    o->repeat < 1 || o->repeat > 64 || o->quiet_s < 0)
		usage();
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .writes = 10000, .repeat = 3, .timeout_s = 120,
			  .quiet_s = 30, .only = -1 };
	struct result runs[2][64], med[2];
	int have[2] = { 0, 0 };
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: reads fail */
	ssize_t n;

	parse(argc, argv, &o);
	if (geteuid() != 0)
		tu_skip("needs root (page frames in pagemap, ksmd, /sys/kernel/mm/ksm)");
	if (access(KSM "run", W_OK) && o.only != M_SAMEPAGE)
		tu_skip("kernel KSM not available (" KSM "run)");
	/* build/bench/ksm_compare -> build */
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

	/* Alternate the two, so that a change in the machine's load hits both. */
	for (int i = 0; i < o.repeat; i++)
		for (int m = 0; m < 2; m++) {
			struct result *r = &runs[m][i];
			if (o.only >= 0 && o.only != m)
				continue;
			wait_quiet(o.quiet_s);
			measure((enum mode)m, &o, r);
			have[m] = 1;
			fprintf(stderr, "run %d %-10s: merged %5.1f%% in %6.3f s, CPU %6.3f s, other "
					"load %5.2f s, first write %8.0f ns\n", i + 1, mode_name[m],
				r->merged_pct, r->merge_s, r->cpu_s, r->other_cpu_s,
				r->paused_first_ns);
		}
	for (int m = 0; m < 2; m++)
		if (have[m])
			median_result(runs[m], o.repeat, &med[m]);
	report(&o, &med[M_SAMEPAGE], &med[M_KERNEL], have);
	return 0;
}
