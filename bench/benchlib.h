/* SPDX-License-Identifier: MIT */
/*
 * benchlib — what the comparisons with kernel KSM in bench/ need beyond the
 * test utilities (testutil.h): kernel KSM switched on only while measured
 * and always off again, a private samepaged per measurement, CPU time from
 * schedstat, the machine's own load, and the table rows and summary lines
 * bench/run.sh turns into its table.
 *
 * Kernel KSM discipline (bench/README.md): ksm_setup() waits for, and
 * never touches, a kernel KSM someone else switched on, and saves the
 * knobs it changes; from ksm_start() on, every exit of the benchmark's
 * process (TU_FAIL too, and SIGINT/SIGTERM/SIGHUP, which the polling loops
 * notice through bench_interrupted()) goes through ksm_off(): run=2, wait
 * for pages_shared=0, run=0, knobs restored.
 *
 * Functions that can fail return 0 or -errno; the benchmark decides
 * whether to give up (TU_FAIL).
 */
#ifndef SAMEPAGE_BENCHLIB_H
#define SAMEPAGE_BENCHLIB_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "testutil.h"

enum mode { M_SAMEPAGE, M_KERNEL };
/* MADV_MERGEABLE on [p, p+len) for one merger: kernel KSM through the
 * system call, samepage through libsamepage's madvise(). 0 or -errno. */
int bench_mergeable(enum mode mode, void *p, size_t len);
extern const char *const mode_name[2];

/* ---- the workload's processes (tu_spawn()ed, driven by one-byte commands) ---- */

/* What every workload process understands; a benchmark adds letters of its
 * own. CMD_MADVISE: bench_mergeable() on its memory, answered with an int;
 * CMD_VERIFY: the pages that differ from what it wrote, a uint64_t;
 * CMD_QUIT: exit 0. */
enum { CMD_MADVISE = 'm', CMD_VERIFY = 'v', CMD_QUIT = 'q' };
/* npages of fresh private anonymous memory in 4 KiB pages for both mergers
 * (THP would have to be split first), or NULL. */
unsigned char *bench_map_pages(size_t npages);
/* Page i of a workload: the same bytes in every process of a benchmark
 * (seed: the benchmark's own), distinct for every i. */
void bench_fill_page(void *pg, size_t i, uint64_t seed);
/* bench_fill_page() over pages [0, npages) of p: their first touch, done
 * before any timing. */
void bench_fill_pages(unsigned char *p, size_t npages, uint64_t seed);
/* Pages of p[0, npages) that no longer hold what bench_fill_page() put. */
uint64_t bench_pages_differ(const unsigned char *p, size_t npages, uint64_t seed);
/* Kernel KSM switched on (mode M_KERNEL), then CMD_MADVISE to each of c[n]:
 * a refusal fails the benchmark. */
void bench_start_merging(struct tu_child *c, int n, enum mode mode);
/* cmd to workload process k of c[]; one that is gone fails the benchmark. */
void bench_send(struct tu_child *c, int k, char cmd);
/* CMD_VERIFY to each of c[n]: the pages that differ, all told. */
uint64_t bench_verify_all(struct tu_child *c, int n);
/* CMD_QUIT to each of c[n]; each must exit 0. */
void bench_quit_all(struct tu_child *c, int n);

/* Threads of a workload whose names start with this are the benchmark's
 * own (a stall probe, a rewriter): their CPU is the workload's, never
 * counted as samepage's scanner. */
#define BENCH_THREAD "bench-"

/* ---- the benchmark's process ---- */

/* Root and (need_ksm) kernel KSM, else skip (exit 77); cleanup at exit and
 * on SIGINT/SIGTERM/SIGHUP. */
void bench_init(int need_ksm);
/* A signal asked us to stop: give up (TU_FAIL) at the next chance. */
int bench_interrupted(void);
/* The options every benchmark takes (--repeat, --quiet-wait, --summary,
 * --only, and --mib where mib is not NULL). 1: argv[*i] was one (its value
 * consumed), 0: not one of them, -1: a bad value. */
int bench_opt(int argc, char **argv, int *i, int *repeat, int *quiet_s, int *only, size_t *mib);
/* Where summary() appends: for a benchmark parsing --summary itself. */
void bench_summary_file(const char *path);

/* ---- CPU time and the machine ---- */

/* CPU time (ns) of one task, from schedstat; 0 when it is gone. */
uint64_t task_ns(pid_t pid, pid_t tid);
/* CPU time of this program's main thread: its own polling. */
uint64_t self_ns(void);
/* Every live thread of pid; *other: all but the main thread and the
 * benchmark's own threads (samepage's scanners); *bench_ns: those. */
uint64_t proc_ns(pid_t pid, uint64_t *other, uint64_t *bench_ns);
int count_threads(pid_t pid);
/* Busy CPU seconds of the whole machine so far (/proc/stat). */
double machine_busy_s(void);
/* Wait (at most max_s) for a half second in which the machine is busy
 * less than 20% of a CPU. */
void wait_quiet(int max_s);
/* Rss (KiB) of libsamepage's own memory (its arena) in pid. */
uint64_t lib_rss_kib(pid_t pid);
/* Object size of a kernel slab cache (bytes), or fallback. */
long slab_object_size(const char *cache, long fallback);

/* ---- kernel KSM: switched on only while measured ---- */

/* A knob or counter of /sys/kernel/mm/ksm; -errno when unreadable. */
long long ksm_get(const char *knob);
int ksm_set(const char *knob, long long v);
/* ksmd's pid, or 0. */
pid_t find_ksmd(void);
/* A field of /proc/PID/ksm_stat ("ksm_rmap_items "), 0 when missing. */
uint64_t ksm_stat_field(pid_t pid, const char *field);
/* rmap_items kernel KSM holds for processes other than ours[n]. */
uint64_t ksm_other_rmap_items(const pid_t *ours, int n);
/* How many of the frames pfn[n] are KSM pages (/proc/kpageflags). */
size_t ksm_pages_among(const uint64_t *pfn, size_t n);
/* Save the knobs and set the budget, kernel KSM still off: 0, -EBUSY when
 * someone else's kernel KSM stayed on for 2 minutes, -EINTR. */
int ksm_setup(long long pages_to_scan, long long sleep_millisecs);
int ksm_start(void);
/* While measured: flag (once, on stderr) a run or budget someone else
 * changed; report_disturbed() tells at the end. */
void ksm_check(void);
/* Off with everything unmerged, knobs restored; safe to call again. */
void ksm_off(void);

/* ---- samepage: a daemon of our own per measurement ---- */

/* Started by `samepage set KNOBS` in a fresh directory: 0 or -errno. */
int sp_setup(const char *knobs);
/* Its pid, 0 when none. */
pid_t sp_daemon_pid(void);
/* Stop it and remove its directory. */
void sp_teardown(void);

/* ---- both ---- */

/* Get mode's merger ready at the budget: kernel KSM set up but off (*ksmd:
 * its thread), or a samepaged of our own set to the budget, or to sp_knobs
 * when given. 0 or -errno (-ESRCH: no ksmd or no daemon found). */
int merger_setup(enum mode mode, long long pages_to_scan, long long sleep_millisecs,
		 const char *sp_knobs, pid_t *ksmd);
/* The same budget for whichever merger runs now: 0 or -errno. */
int set_budget(enum mode mode, long long pages_to_scan, long long sleep_millisecs);
/* Pages among npages present in both processes on one frame (page i of
 * pid[0] and page i of pid[1]); pm[0], pm[1] hold npages entries each. */
size_t same_frames(const pid_t pid[2], const uintptr_t addr[2], size_t npages, uint64_t *pm[2]);
/* Distinct values among v[n] without sorting (a poll every few hundred ms
 * over a million frames: sorting took a good part of a CPU): open
 * addressing in table[cap], cap a power of two >= 2n. */
size_t count_distinct(const uint64_t *v, size_t n, uint64_t *table, size_t cap);

/* ---- statistics and report ---- */

/* The median of v[n] (sorted in place). */
double median(double *v, int n);
/* Field by field, the median of n (at most 64) results of a struct made
 * only of doubles, size bytes each, laid out one after another: into out. */
void bench_median_doubles(const void *runs, int n, size_t size, void *out);
void sort_u32(uint32_t *v, size_t n);
/* The q-quantile (0..1) of n sorted values, nearest rank. */
uint32_t quantile_u32(const uint32_t *sorted, size_t n, double q);
/* One row of a samepage / kernel table; have_* say what was measured. */
void row(const char *name, const char *unit, double sp, double k, int have_sp, int have_k);
void table_head(void);
/* A line for bench/run.sh's summary (--summary FILE): key, samepage's
 * value, the kernel's; "-" for a value not measured. */
void summary(const char *key, double sp, double k, int have_sp, int have_k);
/* Whether kernel KSM was disturbed (ksm_check()), printed and in the
 * summary under key. */
void report_disturbed(const char *key);

#endif
