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

static void proc_look(struct proc *p)
{
	char path[64];
	uint64_t t;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->e.pid);
	if (proc_read_stat(path, p->comm, sizeof(p->comm), &p->state, &t)) {
		snprintf(p->comm, sizeof(p->comm), "?");
		p->state = '?';
	}
	p->scan_ticks = proc_scanner_ticks(p->e.pid);
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
