/* SPDX-License-Identifier: MIT */
/*
 * testutil — ground truth for samepage's tests: page frames from
 * /proc/PID/pagemap (as the kernel's KSM selftests do), deterministic page
 * contents, a private daemon per test, and pass/fail/skip exits
 * (0 / 1 / 77, as liburing's tests).
 */
#ifndef SAMEPAGE_TESTUTIL_H
#define SAMEPAGE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#define PAGE 4096u
#define TU_SKIP 77

/* "FAIL file:line: message" on stderr: the one format of every failed
 * check, whatever happens next. */
#define TU_REPORT(...)                                                      \
	do {                                                                \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);        \
		fprintf(stderr, __VA_ARGS__);                               \
		fprintf(stderr, "\n");                                      \
	} while (0)
#define TU_FAIL(...)                                                        \
	do {                                                                \
		TU_REPORT(__VA_ARGS__);                                     \
		exit(1);                                                    \
	} while (0)
#define TU_CHECK(cond, ...)                                                 \
	do {                                                                \
		if (!(cond))                                                \
			TU_FAIL(__VA_ARGS__);                               \
	} while (0)
/* Report and go on: checks independent of each other all get reported;
 * *failures counts them for the test's exit status at its end. */
#define TU_SOFT_FAIL(failures, ...)                                         \
	do {                                                                \
		TU_REPORT(__VA_ARGS__);                                     \
		(*(failures))++;                                            \
	} while (0)
#define TU_EXPECT(failures, cond, ...)                                      \
	do {                                                                \
		if (!(cond))                                                \
			TU_SOFT_FAIL(failures, __VA_ARGS__);                \
	} while (0)
/* In a child's function (tu_spawn), whose value is its exit status:
 * report and return 1 instead of exit()ing through atexit handlers. */
#define TU_FAIL_RETURN(...)                                                 \
	do {                                                                \
		TU_REPORT(__VA_ARGS__);                                     \
		return 1;                                                   \
	} while (0)
#define TU_CHECK_RETURN(cond, ...)                                          \
	do {                                                                \
		if (!(cond))                                                \
			TU_FAIL_RETURN(__VA_ARGS__);                        \
	} while (0)

/* Exit 77 with a reason. */
void tu_skip(const char *why) __attribute__((noreturn));
/* Skip unless root (pagemap PFNs) and userfaultfd are available. */
void tu_require_merging(void);
/* Give this test its own daemon: SAMEPAGE_SOCKET in a fresh directory,
 * SAMEPAGE_DAEMON/CLI next to the test binary, fast knobs. The daemon is
 * started on demand and killed at exit. */
void tu_private_daemon(void);
/* Path of a binary in the build tree's bin/ ("samepage", "samepaged"). */
const char *tu_bin(const char *name);
/* Run `samepage ARGS` with this test's socket; returns its exit status. */
int tu_cli(const char *args);
/* A command's exit status (128+N when killed by signal N) and what it
 * wrote on stdout and stderr, NUL-terminated (cut to the buffers). */
struct tu_output {
	int status;
	char out[16384];
	char err[16384];
};
/* `sh -c CMDLINE`, captured into *r (a list or a pipeline whole). */
void tu_sh_capture(const char *cmdline, struct tu_output *r);
/* `samepage ARGS` (split by the shell), captured into *r. */
void tu_cli_capture(const char *args, struct tu_output *r);
/* The private daemon's directory (tu_private_daemon), "" without one:
 * XDG_CONFIG_HOME is its config/, so no samepage.conf of the user who
 * runs the tests reaches the test's daemon. */
const char *tu_daemon_dir(void);
/* A counter or knob of this test's daemon, from `samepage status --json`;
 * -1 when missing. */
long long tu_status(const char *key);
/* `samepage status --json` (pid 0) or `samepage status --json --pid PID`
 * into buf (one line, NUL-terminated): 0, or -1 when it failed (no such
 * process connected, no daemon). Read keys with tu_json_get(): one CLI run
 * for several counters, all from the same moment. */
int tu_status_json(pid_t pid, char *buf, size_t len);
/* The integer value of "key" in such a line; -1 when missing. */
long long tu_json_get(const char *json, const char *key);
/* For tu_wait(): 1 once the status counter key has reached at_least. */
struct tu_counter { const char *key; long long at_least; };
int tu_counter_reached(void *counter);
/* For tu_wait(): 1 once the daemon's pool is empty (pool_pages 0). */
int tu_pool_empty(void *unused);
/* PID of the private daemon, or 0. */
pid_t tu_daemon_pid(void);
/* Stop the private daemon (SIGTERM; SIGKILL after 1 s) and remove its
 * directory: the next tu_private_daemon() gives a fresh one, as a
 * benchmark wants for each measurement. */
void tu_daemon_stop(void);
/* Freeze (1) or thaw (0) pid with the cgroup freezer (v2, else v1): a
 * stall the process cannot see, unlike SIGSTOP. 0, or -1 where no freezer
 * is available to us. The cgroup is removed when the test exits. */
int tu_freeze(pid_t pid, int frozen);

/* One xorshift64 step: the tests' deterministic random numbers. */
uint64_t tu_xorshift(uint64_t *state);
/* Fill len bytes with content determined by seed (xorshift). */
void tu_fill(void *p, size_t len, uint64_t seed);
/* Anonymous private read-write memory, populated. */
void *tu_map(size_t len);

/* Page frame of pid's page at addr; 0 when not present. */
uint64_t tu_pfn(pid_t pid, uintptr_t addr);
/* Distinct present frames over npages pages at addrs[i] of pids[i]. */
size_t tu_frames(const pid_t *pids, const uintptr_t *addrs, int nproc, size_t npages);
/* Present pages among npages at addr of pid. */
size_t tu_present(pid_t pid, uintptr_t addr, size_t npages);
/* pagemap "file page" bit: the page maps a pool page. */
int tu_is_file_page(pid_t pid, uintptr_t addr);
/* The raw /proc/PID/pagemap entries of npages pages from addr (bit 63
 * present, 61 file page or shared anonymous, 56 exclusive, 0-54 PFN). */
void tu_pagemap(pid_t pid, uintptr_t addr, size_t npages, uint64_t *out);
/* Frames of the present pages among npages at addr of pid, appended to
 * out[*n]. */
void tu_pfns(pid_t pid, uintptr_t addr, size_t npages, uint64_t *out, size_t *n);
/* qsort/bsearch order of uint64_t values. */
int tu_cmp_u64(const void *a, const void *b);
/* Sort v[n] and move its distinct values to its front; how many. */
size_t tu_distinct(uint64_t *v, size_t n);

/* VMAs of pid overlapping [s, e) that map samepage's pool (or its zero
 * segment); -1 if its maps cannot be read. */
int tu_pool_vmas(pid_t pid, uintptr_t s, uintptr_t e);
/* VMAs of pid overlapping [s, e), of any kind; -1 as above. */
int tu_vmas_over(pid_t pid, uintptr_t s, uintptr_t e);
/* Pages among npages at addr of pid that map a file page (pagemap bit 61:
 * for merged memory, a pool page). */
size_t tu_file_pages(pid_t pid, uintptr_t addr, size_t npages);
/* Inode numbers of the pool segments pid maps (/memfd:samepage-pool, not
 * the zero segment), each once, into ino[0..max); how many, -1 if its maps
 * cannot be read. One segment is one inode in every process. */
int tu_pool_inodes(pid_t pid, unsigned long *ino, int max);

/* vm.max_map_count now. */
size_t tu_max_map_count(void);
/* Lines of /proc/PID/maps: the VMAs of pid; -1 if it cannot be read. */
long tu_vmas(pid_t pid);
/* A "Field:  N kB" line of /proc/PID/status (RssAnon, VmRSS, ...) in KiB;
 * 0 when missing. */
uint64_t tu_proc_kib(pid_t pid, const char *field);

/* The text of a small file (/proc, /sys) into buf, NUL-terminated: 0 or
 * -errno. */
int tu_read_text(const char *path, char *buf, size_t len);
/* Write s to an existing file (a /sys or cgroup knob): 0 or -errno. */
int tu_write_text(const char *path, const char *s);

/* Poll fn(arg) every 50 ms until it returns nonzero or timeout_s passes. */
int tu_wait(int (*fn)(void *), void *arg, int timeout_s);
double tu_now(void);
void tu_sleep_ms(int ms);

/* A child process we talk to over a pipe pair. */
struct tu_child {
	pid_t pid;
	int rd, wr; /* parent's ends */
};
/* Fork a child running fn(rd, wr) with its ends; exits with fn's value. */
void tu_spawn(struct tu_child *c, int (*fn)(int rd, int wr, void *arg), void *arg);
int tu_send(int fd, const void *p, size_t len);
int tu_recv(int fd, void *p, size_t len);
/* Wait for the child; returns its exit status (or 128+signal). */
int tu_reap(struct tu_child *c);

#endif
