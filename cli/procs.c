/* SPDX-License-Identifier: MIT */
/*
 * procs — the processes the daemon serves (C_PROCS, page by page), and
 * what /proc says of each: its command name, whether it is stopped, and
 * the CPU its scanner thread (named "samepage-scan", lib/scan.c) used.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCANNER_COMM "samepage-scan"

/* A /proc stat line's fields after "(comm)": the command may hold spaces
 * and parentheses, so it ends at the last ')'. */
static int read_stat(const char *path, char *comm, size_t clen, char *state, uint64_t *ticks)
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
	return read_stat(path, NULL, 0, &st, &t) ? -1 : (int64_t)t;
}

char proc_state(pid_t pid)
{
	char path[64], st;
	uint64_t t;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return read_stat(path, NULL, 0, &st, &t) ? '?' : st;
}

/* CPU of the process's scanner threads, by their name. */
static uint64_t scanner_ticks(pid_t pid)
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
		if (read_stat(path, comm, sizeof(comm), &st, &t) == 0 &&
		    !strcmp(comm, SCANNER_COMM))
			sum += t;
	}
	closedir(d);
	return sum;
}

static void proc_look(struct proc *p)
{
	char path[64];
	uint64_t t;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->e.pid);
	if (read_stat(path, p->comm, sizeof(p->comm), &p->state, &t)) {
		snprintf(p->comm, sizeof(p->comm), "?");
		p->state = '?';
	}
	p->scan_ticks = scanner_ticks(p->e.pid);
}

static int procs_add(struct procs *p, const struct sp_proc_ent *e)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 64;
		struct proc *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->v = v;
		p->cap = cap;
	}
	memset(&p->v[p->n], 0, sizeof(p->v[0]));
	p->v[p->n++].e = *e;
	return 0;
}

int procs_fetch(struct cli *c, struct procs *p)
{
	struct sp_procs_req q = { 0 };
	struct sp_procs r;
	struct sp_msg m;
	int err;

	p->n = 0;
	do {
		err = cli_call(c, C_PROCS, &q, sizeof(q), D_PROCS, &m);
		if (err)
			return err;
		memcpy(&r, m.p, sizeof(r));
		c->daemon_pid = r.daemon_pid;
		for (uint32_t i = 0; i < r.n && !err; i++) {
			struct sp_proc_ent e;
			memcpy(&e, m.p + sizeof(r) + i * sizeof(e), sizeof(e));
			err = procs_add(p, &e);
			q = (struct sp_procs_req){ .after_pid = e.pid, .after_id = e.id };
		}
	} while (!err && r.more && r.n);
	for (size_t i = 0; i < p->n && !err; i++)
		proc_look(&p->v[i]);
	return err;
}

void procs_free(struct procs *p)
{
	free(p->v);
	*p = (struct procs){ 0 };
}
