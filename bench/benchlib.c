/* SPDX-License-Identifier: MIT */
/* benchlib — see benchlib.h. */
#define _GNU_SOURCE
#include "benchlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KSM "/sys/kernel/mm/ksm/"
#define NKNOBS 3

const char *const mode_name[2] = { "samepage", "kernel KSM" };

/* The knobs ksm_setup() changes and ksm_off() puts back. */
static const char *const ksm_knobs[NKNOBS] = { "pages_to_scan", "sleep_millisecs", "smart_scan" };

/* Everything a benchmark's process must remember to clean up after
 * itself, and the flags its loops watch. */
static struct bench {
	pid_t owner;                       /* cleans up; its forks do not */
	volatile sig_atomic_t interrupted; /* SIGINT/SIGTERM/SIGHUP seen */
	const char *summary_path;          /* --summary FILE, or NULL */
	pid_t daemon;                      /* our samepaged, 0 when none */
	struct {
		long long saved[NKNOBS];   /* before us; -errno: absent */
		long long want_pts, want_sleep; /* ours, to notice others' */
		int touched;               /* knobs to restore */
		int on;                    /* switch off at the end */
		int disturbed;             /* someone else changed it */
	} ksm;
} bench;

/* ---- the benchmark's process ---- */

static void cleanup(void)
{
	if (getpid() != bench.owner)
		return; /* a worker exiting through exit(): not our job */
	ksm_off();
	sp_teardown();
}

static void on_signal(int sig)
{
	(void)sig;
	bench.interrupted = 1;
}

void bench_init(int need_ksm)
{
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: reads fail */

	if (geteuid() != 0)
		tu_skip("needs root (page frames in pagemap, ksmd, /sys/kernel/mm/ksm)");
	if (need_ksm && access(KSM "run", W_OK))
		tu_skip("kernel KSM not available (" KSM "run)");
	bench.owner = getpid();
	atexit(cleanup);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int bench_interrupted(void)
{
	return bench.interrupted;
}

int bench_opt(int argc, char **argv, int *i, int *repeat, int *quiet_s, int *only, size_t *mib)
{
	const char *o = argv[*i];

	if (*i + 1 >= argc)
		return 0;
	if (!strcmp(o, "--repeat"))
		*repeat = atoi(argv[++*i]);
	else if (!strcmp(o, "--quiet-wait"))
		*quiet_s = atoi(argv[++*i]);
	else if (!strcmp(o, "--summary"))
		bench.summary_path = argv[++*i];
	else if (!strcmp(o, "--mib") && mib)
		*mib = strtoul(argv[++*i], NULL, 10);
	else if (!strcmp(o, "--only")) {
		++*i;
		*only = !strcmp(argv[*i], "samepage") ? M_SAMEPAGE :
			!strcmp(argv[*i], "kernel") ? M_KERNEL : -2;
		return *only == -2 ? -1 : 1;
	} else
		return 0;
	return 1;
}

void bench_summary_file(const char *path)
{
	bench.summary_path = path;
}

/* ---- CPU time and the machine ---- */

uint64_t task_ns(pid_t pid, pid_t tid)
{
	char path[96], buf[128];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int)pid, (int)tid);
	return tu_read_text(path, buf, sizeof(buf)) ? 0 : strtoull(buf, NULL, 10);
}

uint64_t self_ns(void)
{
	return task_ns(getpid(), getpid());
}

static int is_bench_thread(pid_t pid, pid_t tid)
{
	char path[96], buf[32];

	snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", (int)pid, (int)tid);
	return !tu_read_text(path, buf, sizeof(buf)) &&
	       !strncmp(buf, BENCH_THREAD, strlen(BENCH_THREAD));
}

uint64_t proc_ns(pid_t pid, uint64_t *other, uint64_t *bench_ns)
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
	if (bench_ns)
		*bench_ns = bn;
	return all;
}

int count_threads(pid_t pid)
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

double machine_busy_s(void)
{
	unsigned long long v[8] = { 0 };
	char buf[512];

	if (tu_read_text("/proc/stat", buf, sizeof(buf)) ||
	    sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		   &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		return 0;
	/* user nice system (idle iowait) irq softirq steal */
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* Other users of this machine distort every number, both columns. */
void wait_quiet(int max_s)
{
	double end = tu_now() + max_s;

	while (!bench.interrupted) {
		double b0 = machine_busy_s(), t0 = tu_now(), busy;
		tu_sleep_ms(500);
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

/* The mapping named [anon:samepage] where the kernel names mappings, else
 * the arena: the one MAP_NORESERVE reservation of at least 1 GiB (VmFlags
 * "nr"; see lib/arena.c). glibc's thread heaps are NORESERVE too, but
 * 64 MiB. */
uint64_t lib_rss_kib(pid_t pid)
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

/* Where sysfs does not show it, the caller's fallback. */
long slab_object_size(const char *cache, long fallback)
{
	char path[128], buf[32];

	snprintf(path, sizeof(path), "/sys/kernel/slab/%s/object_size", cache);
	return tu_read_text(path, buf, sizeof(buf)) ? fallback : atol(buf);
}

/* ---- kernel KSM ---- */

long long ksm_get(const char *knob)
{
	char path[128], buf[64];
	int err;

	snprintf(path, sizeof(path), KSM "%s", knob);
	err = tu_read_text(path, buf, sizeof(buf));
	return err ? err : atoll(buf);
}

int ksm_set(const char *knob, long long v)
{
	char path[128], buf[32];

	snprintf(path, sizeof(path), KSM "%s", knob);
	snprintf(buf, sizeof(buf), "%lld", v);
	return tu_write_text(path, buf);
}

pid_t find_ksmd(void)
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
		if (!tu_read_text(path, buf, sizeof(buf)) && !strcmp(buf, "ksmd\n"))
			found = pid;
	}
	closedir(d);
	return found;
}

uint64_t ksm_stat_field(pid_t pid, const char *field)
{
	char path[64], buf[1024], *p;

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)pid);
	if (tu_read_text(path, buf, sizeof(buf)) || !(p = strstr(buf, field)))
		return 0;
	return strtoull(p + strlen(field), NULL, 10);
}

/* Memory of other mergeable processes (QEMU guests, anything under prctl
 * PR_SET_MEMORY_MERGE) that ksmd scans too while it is on: its global
 * counters and its CPU then include them. */
uint64_t ksm_other_rmap_items(const pid_t *ours, int n)
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

size_t ksm_pages_among(const uint64_t *pfn, size_t n)
{
	int fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	size_t k = 0;

	if (fd < 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t fl;
		if (pread(fd, &fl, 8, (off_t)(pfn[i] * 8)) == 8)
			k += (fl >> 21) & 1; /* KPF_KSM */
	}
	close(fd);
	return k;
}

/* Someone else's kernel KSM (on when we start) is waited for, at most
 * 2 minutes, and never touched. */
static int wait_ksm_off(void)
{
	for (int i = 0; ksm_get("run") != 0; i++) {
		if (bench.interrupted)
			return -EINTR;
		if (i == 0)
			fprintf(stderr, "%s: kernel KSM is on (run=%lld), someone else's: waiting "
					"for it to be off\n", program_invocation_short_name,
				ksm_get("run"));
		if (i == 1200)
			return -EBUSY;
		tu_sleep_ms(100);
	}
	return bench.interrupted ? -EINTR : 0;
}

int ksm_setup(long long pages_to_scan, long long sleep_millisecs)
{
	const long long want[NKNOBS] = { pages_to_scan, sleep_millisecs, 0 };
	int err = wait_ksm_off();

	if (err)
		return err;
	for (int i = 0; i < NKNOBS; i++)
		bench.ksm.saved[i] = ksm_get(ksm_knobs[i]);
	bench.ksm.touched = 1;
	for (int i = 0; i < NKNOBS; i++)
		if (bench.ksm.saved[i] >= 0 && (err = ksm_set(ksm_knobs[i], want[i])))
			return err;
	bench.ksm.want_pts = pages_to_scan;
	bench.ksm.want_sleep = sleep_millisecs;
	return 0;
}

int ksm_start(void)
{
	bench.ksm.on = 1; /* from here on, cleanup switches it off */
	return ksm_set("run", 1);
}

void ksm_check(void)
{
	if (!bench.ksm.on || bench.ksm.disturbed)
		return;
	if (ksm_get("run") != 1 || ksm_get("pages_to_scan") != bench.ksm.want_pts ||
	    ksm_get("sleep_millisecs") != bench.ksm.want_sleep || ksm_get("smart_scan") > 0) {
		bench.ksm.disturbed = 1;
		fprintf(stderr, "%s: WARNING: someone else changed kernel KSM while it was "
				"measured (run=%lld pages_to_scan=%lld sleep_millisecs=%lld): the "
				"kernel's numbers of this run are not valid\n",
			program_invocation_short_name, ksm_get("run"), ksm_get("pages_to_scan"),
			ksm_get("sleep_millisecs"));
	}
}

void ksm_off(void)
{
	if (bench.ksm.on) {
		ksm_set("run", 2); /* unmerge everything, then stop */
		for (int i = 0; i < 6000 && ksm_get("pages_shared") > 0; i++)
			tu_sleep_ms(10);
		if (ksm_get("pages_shared") > 0)
			fprintf(stderr, "%s: warning: pages_shared still %lld\n",
				program_invocation_short_name, ksm_get("pages_shared"));
		ksm_set("run", 0);
		bench.ksm.on = 0;
	}
	if (bench.ksm.touched) {
		for (int i = 0; i < NKNOBS; i++)
			if (bench.ksm.saved[i] >= 0)
				ksm_set(ksm_knobs[i], bench.ksm.saved[i]);
		bench.ksm.touched = 0;
	}
}

/* ---- samepage ---- */

int sp_setup(const char *knobs)
{
	char args[256];

	tu_private_daemon();
	snprintf(args, sizeof(args), "set %s", knobs);
	if (tu_cli(args))
		return -EIO;
	/* Once, not per poll: the lookup runs fuser over all of /proc. */
	bench.daemon = tu_daemon_pid();
	return bench.daemon > 0 ? 0 : -ESRCH;
}

pid_t sp_daemon_pid(void)
{
	return bench.daemon;
}

void sp_teardown(void)
{
	tu_daemon_stop();
	bench.daemon = 0;
}

/* ---- both ---- */

int merger_setup(enum mode mode, long long pages_to_scan, long long sleep_millisecs,
		 const char *sp_knobs, pid_t *ksmd)
{
	char knobs[96];

	if (mode == M_KERNEL) {
		*ksmd = find_ksmd();
		return *ksmd ? ksm_setup(pages_to_scan, sleep_millisecs) : -ESRCH;
	}
	*ksmd = 0;
	snprintf(knobs, sizeof(knobs), "pages_to_scan=%lld sleep_millisecs=%lld", pages_to_scan,
		 sleep_millisecs);
	return sp_setup(sp_knobs ? sp_knobs : knobs);
}

int set_budget(enum mode mode, long long pages_to_scan, long long sleep_millisecs)
{
	char arg[96];
	int err;

	if (mode == M_SAMEPAGE) {
		snprintf(arg, sizeof(arg), "set pages_to_scan=%lld sleep_millisecs=%lld",
			 pages_to_scan, sleep_millisecs);
		return tu_cli(arg) ? -EIO : 0;
	}
	if ((err = ksm_set("pages_to_scan", pages_to_scan)) ||
	    (err = ksm_set("sleep_millisecs", sleep_millisecs)))
		return err;
	bench.ksm.want_pts = pages_to_scan;
	bench.ksm.want_sleep = sleep_millisecs;
	return 0;
}

size_t same_frames(const pid_t pid[2], const uintptr_t addr[2], size_t npages, uint64_t *pm[2])
{
	size_t n = 0;

	for (int k = 0; k < 2; k++)
		tu_pagemap(pid[k], addr[k], npages, pm[k]);
	for (size_t i = 0; i < npages; i++) {
		uint64_t a = pm[0][i], b = pm[1][i];
		n += (a >> 63) && (b >> 63) && ((a ^ b) & ((1ull << 55) - 1)) == 0;
	}
	return n;
}

size_t count_distinct(const uint64_t *v, size_t n, uint64_t *table, size_t cap)
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

/* ---- statistics and report ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

void sort_u32(uint32_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u32);
}

uint32_t quantile_u32(const uint32_t *sorted, size_t n, double q)
{
	size_t i;

	if (!n)
		return 0;
	i = (size_t)(q * (double)n);
	return sorted[i < n ? i : n - 1];
}

void row(const char *name, const char *unit, double sp, double k, int have_sp, int have_k)
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

void table_head(void)
{
	printf("%-36s %-5s | %12s | %12s | %8s\n", "metric", "unit", "samepage", "kernel KSM",
	       "sp/kernel");
	printf("-------------------------------------------+--------------+--------------+---------\n");
}

void summary(const char *key, double sp, double k, int have_sp, int have_k)
{
	FILE *f;

	if (!bench.summary_path)
		return;
	f = fopen(bench.summary_path, "a");
	if (!f)
		TU_FAIL("cannot append to %s: %s", bench.summary_path, strerror(errno));
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

void report_disturbed(const char *key)
{
	if (bench.ksm.disturbed)
		printf("NOTE: someone else changed kernel KSM (run or budget) while it was "
		       "measured: the kernel's numbers are not valid\n");
	summary(key, 0, bench.ksm.disturbed, 1, 1);
}

int bench_mergeable(enum mode mode, void *p, size_t len)
{
	int r = mode == M_KERNEL ? (int)syscall(SYS_madvise, p, len, MADV_MERGEABLE) :
				   madvise(p, len, MADV_MERGEABLE); /* libsamepage's */
	return r ? -errno : 0;
}

unsigned char *bench_map_pages(size_t npages)
{
	size_t len = npages * PAGE;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* The raw call: libsamepage's madvise() need not see it. */
	syscall(SYS_madvise, p, len, MADV_NOHUGEPAGE);
	return p;
}

void bench_fill_page(void *pg, size_t i, uint64_t seed)
{
	tu_fill(pg, PAGE, seed ^ (i * 0x9E3779B97F4A7C15ull));
}

void bench_fill_pages(unsigned char *p, size_t npages, uint64_t seed)
{
	for (size_t i = 0; i < npages; i++)
		bench_fill_page(p + i * PAGE, i, seed);
}

uint64_t bench_pages_differ(const unsigned char *p, size_t npages, uint64_t seed)
{
	unsigned char want[PAGE];
	uint64_t bad = 0;

	for (size_t i = 0; i < npages; i++) {
		bench_fill_page(want, i, seed);
		bad += memcmp(p + i * PAGE, want, PAGE) != 0;
	}
	return bad;
}

void bench_send(struct tu_child *c, int k, char cmd)
{
	if (tu_send(c[k].wr, &cmd, 1))
		TU_FAIL("worker %d gone", k);
}

void bench_start_merging(struct tu_child *c, int n, enum mode mode)
{
	int err;

	if (mode == M_KERNEL && (err = ksm_start()))
		TU_FAIL("cannot switch kernel KSM on: %s", strerror(-err));
	for (int k = 0; k < n; k++)
		bench_send(c, k, CMD_MADVISE);
	for (int k = 0; k < n; k++) {
		int rc;
		if (tu_recv(c[k].rd, &rc, sizeof(rc)) || rc)
			TU_FAIL("%s: madvise(MADV_MERGEABLE) in worker %d: %s", mode_name[mode], k,
				strerror(-rc));
	}
}

uint64_t bench_verify_all(struct tu_child *c, int n)
{
	uint64_t bad = 0;

	for (int k = 0; k < n; k++) {
		uint64_t b;
		bench_send(c, k, CMD_VERIFY);
		if (tu_recv(c[k].rd, &b, sizeof(b)))
			TU_FAIL("worker %d died verifying", k);
		bad += b;
	}
	return bad;
}

void bench_quit_all(struct tu_child *c, int n)
{
	for (int k = 0; k < n; k++) {
		bench_send(c, k, CMD_QUIT);
		if (tu_reap(&c[k]) != 0)
			TU_FAIL("worker %d exited badly", k);
	}
}

void bench_median_doubles(const void *runs, int n, size_t size, void *out)
{
	double v[64];

	if (n > 64)
		TU_FAIL("%d runs: at most 64", n);
	for (size_t f = 0; f < size / sizeof(double); f++) {
		for (int i = 0; i < n; i++)
			memcpy(&v[i], (const char *)runs + (size_t)i * size + f * sizeof(double),
			       sizeof(double));
		((double *)out)[f] = median(v, n);
	}
}
