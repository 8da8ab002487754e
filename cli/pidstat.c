/* SPDX-License-Identifier: MIT */
/*
 * pidstat — what /proc/PID/stat says of one process or of its scanner
 * threads (named "samepage-scan", lib/scan.c): state, name, CPU.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SCANNER_COMM "samepage-scan"

/* A /proc stat line's fields after "(comm)": the command may hold spaces
 * and parentheses, so it ends at the last ')'. */
int proc_read_stat(const char *path, char *comm, size_t clen, char *state, uint64_t *ticks)
{
	char buf[1024];
	unsigned long long ut = 0, st = 0;
	char *lp, *rp;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	lp = strchr(buf, '(');
	rp = strrchr(buf, ')');
	if (!lp || !rp || rp < lp)
		return -EIO;
	if (comm)
		snprintf(comm, clen, "%.*s", (int)(rp - lp - 1), lp + 1);
	/* state, then ppid pgrp session tty_nr tpgid flags minflt cminflt
	 * majflt cmajflt, then utime stime (fields 14 and 15). */
	if (sscanf(rp + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", state, &ut,
		   &st) != 3)
		return -EIO;
	*ticks = ut + st;
	return 0;
}

int64_t proc_cpu_ticks(pid_t pid)
{
	char path[64], st;
	uint64_t t;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return proc_read_stat(path, NULL, 0, &st, &t) ? -1 : (int64_t)t;
}

char proc_state(pid_t pid)
{
	char path[64], st;
	uint64_t t;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return proc_read_stat(path, NULL, 0, &st, &t) ? '?' : st;
}

/* CPU of the process's scanner threads, by their name. */
uint64_t proc_scanner_ticks(pid_t pid)
{
	char dir[64], path[64 + 256 + 8], comm[32], st;
	struct dirent *e;
	uint64_t sum = 0, t;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
	d = opendir(dir);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/stat", dir, e->d_name);
		if (proc_read_stat(path, comm, sizeof(comm), &st, &t) == 0 &&
		    !strcmp(comm, SCANNER_COMM))
			sum += t;
	}
	closedir(d);
	return sum;
}
