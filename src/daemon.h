/* SPDX-License-Identifier: MIT */
/*
 * daemon — samepaged: one per user. Owns the pool, the stable and unstable
 * indexes, the scan budget, the knobs and the counters; decides what to
 * merge from page hashes. It never reads or writes another process's
 * memory: each process merges its own pages (merge.c in the library).
 *
 * One thread, one epoll loop; every structure below belongs to it.
 */
#ifndef SAMEPAGE_DAEMON_H
#define SAMEPAGE_DAEMON_H

#include <stdint.h>
#include <sys/types.h>

#include "index.h"
#include "map.h"
#include "pool.h"
#include "proto.h"
#include "refs.h"

struct conn {
	int fd;
	uint32_t id;          /* never reused while the daemon lives */
	pid_t pid;            /* from SO_PEERCRED, not from the peer's word */
	uint64_t token;       /* C_ADOPT proof that a child is this process's */
	int hello;            /* C_HELLO seen */
	int observer;         /* the CLI: no memory, not waited for */
	int pass_done;        /* completed a pass begun in the current generation */
	int unmerge_pending;  /* `samepage unmerge --pid` for this process */
	uint64_t last_seen_ns; /* last budget request */
	struct refs refs;     /* VMA references this process holds */
	uint32_t rsv_next, rsv_end; /* pool ids set aside for its next creations */
	int pipe_fd;          /* C_PIPE: where C_CREATE's page bytes come from */
	uint32_t pipe_pages;
	/* For the last C_LOOKUP, by entry: the unstable page it matched
	 * (conn 0: none), to be told once this process has created the pool page. */
	struct unstable_item *pairs;
	uint64_t *look_addr;  /* the addresses of that C_LOOKUP's entries */
	uint32_t npairs;
	/* Merge hints for this process (references already taken for it). */
	struct sp_hint *hints;
	uint32_t nhints;
	struct map hint_at;   /* addr → index in hints */
	struct sp_proc_stats st;
	struct conn *next;
};

struct samepaged {
	int lfd, efd;
	uint64_t sock_ino, sock_dev; /* the socket we bound: removed at exit only if still there */
	uid_t uid;
	struct pool pool;
	int zero_fd;          /* an all-zero sealed memfd: see zero_segment() */
	struct index ix;
	struct conn *conns;
	struct map live;      /* id → struct conn * of open connections (unstable entries name them) */
	uint32_t next_id;
	struct sp_knobs knobs;
	uint64_t gen;         /* unstable-index generation */
	uint64_t full_scans, pages_scanned, total_refs;
	double tokens;        /* scan budget bucket (pages) */
	uint64_t last_refill_ns;
	int idle_exit_s;      /* exit after this long with no process; 0: never */
	uint64_t idle_since_ns;
	unsigned char *buf;   /* the reply being built */
	unsigned char *in;    /* the request being handled */
	unsigned char *scratch; /* SP_MAX_CREATE pages: C_CREATE bytes of contents already pooled */
	int stop;
};

/* Bind path and serve until stopped or idle (idle_exit_s seconds with no
 * process; 0: never). When ready_fd >= 0, one byte is written to it once
 * listening (0) or on failure (errno). 0 or -errno; -EADDRINUSE when
 * another daemon owns path. */
int samepaged_run(const char *path, int idle_exit_s, int ready_fd);
/* Default knob values; see README for why. */
void samepaged_default_knobs(struct sp_knobs *k);

#endif
