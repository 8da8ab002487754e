/* SPDX-License-Identifier: MIT */
/*
 * The scanner thread runs 5 nice steps below its process, as ksmd runs at
 * nice 5: a busy application's own threads come first. Relative to the
 * process, so a batch job started with `nice -n 3` gets a scanner at 8;
 * the application's threads keep their priority.
 *
 * A child sets itself to nice 3, merges two identical copies (so that its
 * scanner has started and worked), and the parent reads the nice value of
 * each of its threads from /proc/PID/task/TID/stat (field 19): the thread
 * named samepage-scan at 8, the main thread still at 3. The copies must
 * also merge (frames) and keep their bytes.
 *
 * It can fail: without os_thread_nicer() in scan_thread() the scanner
 * reads 3.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "testutil.h"

#define N 512u
#define LEN ((size_t)N * PAGE)

static int child(int rd, int wr, void *arg)
{
	unsigned char *p;
	char c;
	int ok;

	(void)arg;
	TU_CHECK_RETURN(setpriority(PRIO_PROCESS, 0, 3) == 0, "setpriority: %m");
	p = tu_map(2 * LEN);
	tu_fill(p, LEN, 5);
	memcpy(p + LEN, p, LEN);
	TU_CHECK_RETURN(madvise(p, 2 * LEN, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &p, sizeof(p));
	tu_recv(rd, &c, 1);
	ok = !memcmp(p, p + LEN, LEN);
	tu_send(wr, &ok, sizeof(ok));
	tu_recv(rd, &c, 1);
	return 0;
}

/* The nice value of thread tid of pid: field 19 of its stat, after the
 * command in parentheses. */
static int thread_nice(pid_t pid, const char *tid, char *comm, size_t commlen)
{
	char path[320], buf[1024];
	const char *s;
	int nice = 99;

	snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, tid);
	if (tu_read_text(path, comm, commlen) < 0)
		return 99;
	comm[strcspn(comm, "\n")] = 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid, tid);
	if (tu_read_text(path, buf, sizeof(buf)) < 0 || !(s = strrchr(buf, ')')))
		return 99;
	/* after ") ": state(3) ppid pgrp session tty tpgid flags minflt
	 * cminflt majflt cmajflt utime stime cutime cstime priority nice(19) */
	if (sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %d",
		   &nice) != 1)
		return 99;
	return nice;
}

int main(void)
{
	struct tu_child c;
	unsigned char *p;
	uintptr_t a[2];
	pid_t pids[2];
	int scanner = 99, main_nice = 99, ok = 0;
	char path[64], comm[64];
	struct dirent *d;
	DIR *dir;
	double t0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	alarm(60);
	tu_spawn(&c, child, NULL);
	TU_CHECK(tu_recv(c.rd, &p, sizeof(p)) == 0, "child did not start");
	pids[0] = pids[1] = c.pid;
	a[0] = (uintptr_t)p;
	a[1] = (uintptr_t)p + LEN;
	t0 = tu_now();
	while (tu_frames(pids, a, 2, N) != N && tu_now() - t0 < 30)
		tu_sleep_ms(50);
	TU_CHECK(tu_frames(pids, a, 2, N) == N, "not merged in 30 s: %zu frames",
		 tu_frames(pids, a, 2, N));
	snprintf(path, sizeof(path), "/proc/%d/task", (int)c.pid);
	dir = opendir(path);
	TU_CHECK(dir, "opendir %s: %m", path);
	while ((d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		int n = thread_nice(c.pid, d->d_name, comm, sizeof(comm));
		if (!strcmp(comm, "samepage-scan"))
			scanner = n;
		else if (atoi(d->d_name) == (int)c.pid)
			main_nice = n;
	}
	closedir(dir);
	TU_CHECK(main_nice == 3, "the application's main thread is at nice %d, want 3", main_nice);
	TU_CHECK(scanner == 8, "the scanner thread is at nice %d, want 8 (its process's 3 + 5)",
		 scanner);
	tu_send(c.wr, "v", 1);
	TU_CHECK(tu_recv(c.rd, &ok, sizeof(ok)) == 0 && ok, "the copies differ");
	tu_send(c.wr, "q", 1);
	TU_CHECK(tu_reap(&c) == 0, "child exit");
	printf("PASS: application at nice 3, its scanner at 8; merged, bytes kept\n");
	return 0;
}
