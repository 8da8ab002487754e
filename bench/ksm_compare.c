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
 *   kernel KSM: syscall(SYS_madvise) — straight to the kernel, libsamepage
 *               never sees it (and never starts in that process).
 *
 * Both mergers get the same budget: samepage's knobs and the kernel's are
 * set to pages_to_scan=100000, sleep_millisecs=0 (kernel: smart_scan=0).
 *
 * Measured, never taken from either implementation's own counters where a
 * ground truth exists:
 *   - wall time from the madvise to "every page of process 0 has the same
 *     page frame as process 1's page at the same offset" (pagemap PFNs);
 *   - CPU spent meanwhile (schedstat, ns): ksmd, or samepaged + every
 *     thread of the two workloads (its scanner threads, mostly); the
 *     workloads' own CPU is counted for the kernel too;
 *   - distinct page frames before and after (memory saved);
 *   - the first write to a merged page: one byte into each of W merged
 *     pages (default 10000), ns per write, then the same pages again
 *     (already private: no fault) as the baseline;
 *   - pool size, VMA count of a workload, bookkeeping memory;
 *   - that both processes still hold exactly their bytes afterwards.
 *
 * Needs root: page frame numbers in /proc/PID/pagemap, ksmd's schedstat,
 * /sys/kernel/mm/ksm. Kernel KSM is switched on only while measured and
 * always switched off again (run=2, wait for pages_shared=0, run=0; the
 * knobs it changed are restored), also on errors and SIGINT/SIGTERM.
 *
 *   build/bench/ksm_compare [--mib S] [--writes W] [--timeout SEC]
 *                           [--only samepage|kernel] [--samepage-default-knobs]
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
	int timeout_s;
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

static void sp_daemon_stop(void)
{
	if (sp_daemon > 0) {
		kill(sp_daemon, SIGTERM);
		for (int i = 0; i < 100 && kill(sp_daemon, 0) == 0; i++)
			sleep_ms(10);
		sp_daemon = 0;
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
	sp_daemon_stop();
	if (sp_dir[0]) {
		char p[128];
		snprintf(p, sizeof(p), "%s/sock", sp_dir);
		unlink(p);
		snprintf(p, sizeof(p), "%s/sock.lock", sp_dir);
		unlink(p);
		rmdir(sp_dir);
	}
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

/* One write test: mean over both processes, each writing alone. */
struct write_m { double first_ns, again_ns; size_t n, stride; };

struct result {
	int done;
	size_t npages, merged;
	double merge_s, poll_ms;
	double cpu_s, cpu_daemon_s, cpu_scanner_s, cpu_work_s;
	size_t frames_before, frames_after;
	long vmas_before, vmas_merged, vmas_written;
	long long pool_pages, merge_vmas, pool_after_exit;
	double book_kib;
	struct write_m paused, running;
	double settle_cpu_s; /* merger CPU in the second after the writes */
	uint64_t bad;
};

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
	uint64_t m0, s0, k0, m1, s1, k1, t0ns, t1ns;
	double t0, deadline, polled = 0;
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
		res->merged = merged_pages(r);
		polled += tu_now() - p0;
		polls++;
		if (res->merged == r->npages)
			break;
		sleep_ms(10);
	}
	res->merge_s = tu_now() - t0;
	t1ns = cpu_ns(r, ksmd, &m1, &s1, &k1);
	if (interrupted)
		die("interrupted");
	res->done = res->merged == r->npages;
	res->poll_ms = polls ? polled * 1e3 / polls : 0;
	res->cpu_s = (double)(t1ns - t0ns) / 1e9;
	res->cpu_daemon_s = (double)(m1 - m0) / 1e9;
	res->cpu_scanner_s = (double)(s1 - s0) / 1e9;
	res->cpu_work_s = (double)(k1 - k0) / 1e9;
}

static void record_merged(struct run *r, struct result *res)
{
	/* The check that madvise reached the merger we meant. */
	if (r->mode == M_KERNEL && ksm_stat_field(r->c[0].pid, "ksm_rmap_items ") == 0)
		fprintf(stderr, "ksm_compare: warning: kernel KSM has no rmap_items for worker 0\n");
	if (r->mode == M_SAMEPAGE && count_threads(r->c[0].pid) < 2)
		fprintf(stderr, "ksm_compare: warning: no samepage scanner thread in worker 0\n");
	res->frames_after = frames(r);
	res->vmas_merged = count_vmas(r->c[0].pid);
	if (r->mode == M_KERNEL) {
		res->pool_pages = ksm_get("pages_shared");
		/* struct ksm_rmap_item is 64 bytes on 64-bit; stable nodes not counted. */
		for (int k = 0; k < NPROC; k++)
			res->book_kib += ksm_stat_field(r->c[k].pid, "ksm_rmap_items ") * 64 / 1024.0;
	} else {
		res->pool_pages = sp_status("pool_pages");
		res->merge_vmas = sp_status("merge_vmas");
		/* The daemon's own memory (not the pool: that is shmem) and the
		 * library's [anon:samepage] mappings in each workload. */
		res->book_kib = (double)status_kib(sp_daemon, "RssAnon");
		for (int k = 0; k < NPROC; k++)
			res->book_kib += (double)named_rss_kib(r->c[k].pid, "[anon:samepage");
	}
}

/* Each worker in turn (alone: first touches of fresh frames from two
 * vCPUs at once slow each other down in this VM) writes n pages. */
static void write_each(struct run *r, const struct write_q *q, struct write_m *m)
{
	m->n = q->n;
	m->stride = q->stride;
	m->first_ns = m->again_ns = 0;
	for (int k = 0; k < NPROC; k++) {
		struct write_r wr;
		send_cmd(r, k, CMD_WRITE);
		if (tu_send(r->c[k].wr, q, sizeof(*q)) || tu_recv(r->c[k].rd, &wr, sizeof(wr)))
			die("worker %d died in the write test", k);
		m->first_ns += wr.first_ns / NPROC;
		m->again_ns += wr.again_ns / NPROC;
	}
}

static void set_run(enum mode mode, int v)
{
	char arg[32];

	snprintf(arg, sizeof(arg), "set run=%d", v);
	if (mode == M_KERNEL ? ksm_set("run", v) : sp_cli(arg, NULL, 0))
		die("cannot set run=%d for %s", v, mode_name[mode]);
}

/* The first write to merged pages: even pages with the merger paused
 * (run=0: the fault alone), odd pages with it running (what a workload
 * sees), then a second for the merger to react. */
static void write_phase(struct run *r, pid_t ksmd, const struct opts *o, struct result *res)
{
	size_t n = o->writes < r->npages / 2 ? o->writes : r->npages / 2;
	struct write_q q = { .first = 0, .stride = 2 * (r->npages / 2 / n), .n = n };
	uint64_t m0, m1, x;

	set_run(r->mode, 0);
	write_each(r, &q, &res->paused);
	set_run(r->mode, 1);
	q.first = 1;
	write_each(r, &q, &res->running);
	cpu_ns(r, ksmd, &m0, &x, &x);
	sleep_ms(1000);
	cpu_ns(r, ksmd, &m1, &x, &x);
	res->settle_cpu_s = (double)(m1 - m0) / 1e9;
	res->vmas_written = count_vmas(r->c[0].pid);
}

static void finish(struct run *r, struct result *res)
{
	for (int k = 0; k < NPROC; k++) {
		uint64_t bad;
		send_cmd(r, k, CMD_VERIFY);
		if (tu_recv(r->c[k].rd, &bad, sizeof(bad)))
			die("worker %d died verifying", k);
		res->bad += bad;
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
	for (int i = 0; i < 200 && (res->pool_after_exit = sp_status("pool_pages")) > 0; i++)
		sleep_ms(10);
	sp_daemon_stop();
}

static void measure(enum mode mode, const struct opts *o, struct result *res)
{
	struct wctx w[NPROC];
	struct run r = { .mode = mode, .npages = o->mib * 256 };
	pid_t ksmd = 0;

	memset(res, 0, sizeof(*res));
	res->npages = r.npages;
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
	res->frames_before = frames(&r);
	res->vmas_before = count_vmas(r.c[0].pid);
	merge_phase(&r, ksmd, o, res);
	record_merged(&r, res);
	write_phase(&r, ksmd, o, res);
	finish(&r, res);
}

/* ---- report ---- */

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
	printf("%-34s %-6s | %12s | %12s | %8s\n", name, unit, a, b, c);
}

static void report(const struct opts *o, const struct result *res, const int *have)
{
	const struct result *s = &res[M_SAMEPAGE], *k = &res[M_KERNEL];
	int hs = have[M_SAMEPAGE], hk = have[M_KERNEL];

	printf("\nworkload: %d processes x %zu MiB of identical random pages (%zu pages each)\n",
	       NPROC, o->mib, o->mib * 256);
	printf("budget: pages_to_scan=100000 sleep_millisecs=0 for both%s; kernel smart_scan=0\n",
	       o->sp_default_knobs ? " (samepage: its defaults)" : "");
	printf("%-34s %-6s | %12s | %12s | %8s\n", "metric", "unit", "samepage", "kernel KSM",
	       "sp/kernel");
	printf("------------------------------------------+--------------+--------------+---------\n");
	row("pages merged (of process 0)", "%", 100.0 * s->merged / s->npages,
	    100.0 * k->merged / k->npages, hs, hk);
	row("wall time until merged", "s", s->merge_s, k->merge_s, hs, hk);
	row("merge rate", "MiB/s", s->merge_s ? 2.0 * o->mib / s->merge_s : 0,
	    k->merge_s ? 2.0 * o->mib / k->merge_s : 0, hs, hk);
	row("CPU until merged, total", "s", s->cpu_s, k->cpu_s, hs, hk);
	row("  daemon | ksmd", "s", s->cpu_daemon_s, k->cpu_daemon_s, hs, hk);
	row("  scanner threads in workloads", "s", s->cpu_scanner_s, k->cpu_scanner_s, hs, hk);
	row("  workloads' main threads", "s", s->cpu_work_s, k->cpu_work_s, hs, hk);
	row("distinct frames before", "MiB", s->frames_before / 256.0, k->frames_before / 256.0,
	    hs, hk);
	row("distinct frames after", "MiB", s->frames_after / 256.0, k->frames_after / 256.0, hs,
	    hk);
	row("memory saved", "MiB", ((double)s->frames_before - (double)s->frames_after) / 256.0,
	    ((double)k->frames_before - (double)k->frames_after) / 256.0, hs, hk);
	row("bookkeeping memory", "MiB", s->book_kib / 1024, k->book_kib / 1024, hs, hk);
	row("pool pages | pages_shared", "MiB", s->pool_pages / 256.0, k->pool_pages / 256.0,
	    hs, hk);
	row("VMAs of worker 0, before", "count", (double)s->vmas_before, (double)k->vmas_before,
	    hs, hk);
	row("VMAs of worker 0, merged", "count", (double)s->vmas_merged, (double)k->vmas_merged,
	    hs, hk);
	row("VMAs of worker 0, 1 s after writes", "count", (double)s->vmas_written,
	    (double)k->vmas_written, hs, hk);
	row("first write to merged page, paused", "ns", s->paused.first_ns, k->paused.first_ns,
	    hs, hk);
	row("  same byte again (no fault)", "ns", s->paused.again_ns, k->paused.again_ns, hs, hk);
	row("first write to merged page, run=1", "ns", s->running.first_ns, k->running.first_ns,
	    hs, hk);
	row("  same byte again (no fault)", "ns", s->running.again_ns, k->running.again_ns, hs,
	    hk);
	row("merger CPU in the 1 s after writes", "s", s->settle_cpu_s, k->settle_cpu_s, hs, hk);
	row("pages differing from expected", "pages", (double)s->bad, (double)k->bad, hs, hk);
	if (hs)
		printf("samepage: merge_vmas %lld over both workers; pool pages after the "
		       "workloads exited: %lld\n",
		       s->merge_vmas, s->pool_after_exit);
	{
		const struct write_m *wm = hs ? &s->paused : &k->paused;
		printf("write tests: %zu pages per process each (every %zu-th page; even pages "
		       "with the merger paused, odd ones with it running), one process at a "
		       "time, mean of both\n", wm->n, wm->stride);
	}
	printf("merged-check: one pagemap poll of both processes took %.2f ms (samepage) / "
	       "%.2f ms (kernel), every 10 ms\n", hs ? s->poll_ms : 0, hk ? k->poll_ms : 0);
	for (int m = 0; m < 2; m++)
		if (have[m] && !res[m].done)
			printf("NOTE: %s did not merge everything within %d s\n", mode_name[m],
			       o->timeout_s);
}

static void usage(void)
{
	fprintf(stderr, "usage: ksm_compare [--mib S] [--writes W] [--timeout SEC] "
			"[--only samepage|kernel] [--samepage-default-knobs]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 256, .writes = 10000, .timeout_s = 120, .only = -1 };
	struct result res[2];
	int have[2] = { 0, 0 };
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: reads fail */
	ssize_t n;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			o.mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--writes") && i + 1 < argc)
			o.writes = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			o.timeout_s = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			i++;
			o.only = !strcmp(argv[i], "samepage") ? M_SAMEPAGE :
				 !strcmp(argv[i], "kernel") ? M_KERNEL : -2;
			if (o.only == -2)
				usage();
		} else if (!strcmp(argv[i], "--samepage-default-knobs"))
			o.sp_default_knobs = 1;
		else
			usage();
	}
	if (!o.mib || !o.writes || o.timeout_s <= 0)
		usage();
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

	for (int m = 0; m < 2; m++) {
		if (o.only >= 0 && o.only != m)
			continue;
		fprintf(stderr, "ksm_compare: measuring %s, %d x %zu MiB ...\n", mode_name[m], NPROC,
			o.mib);
		measure((enum mode)m, &o, &res[m]);
		have[m] = 1;
	}
	report(&o, res, have);
	return 0;
}
