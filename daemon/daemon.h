/* SPDX-License-Identifier: MIT */
/*
 * daemon — samepaged: one per user. Owns the pool, the stable and unstable
 * indexes, the scan budget, the knobs and the counters; decides what to
 * merge from page hashes. It never reads or writes another process's
 * memory: each process merges its own pages (lib/merge.c).
 *
 * One thread, one epoll loop; every structure below belongs to it. The
 * files of daemon/, each calling only those below it:
 *
 *   main.c      the program: options, daemonizing
 *   loop.c      the socket, the epoll loop, between events, set-up
 *   service.c   under a service manager: socket activation, sd_notify
 *   requests.c  every message, validated and dispatched in one place
 *   lookup.c    the merge decisions: C_LOOKUP, C_CREATE, merge hints
 *   move.c      defragmentation: C_MOVE copies scattered pages to an extent
 *   conn.c      connections: accept, find, close
 *   budget.c    the scan budget and the unstable index's generations
 *   advisor.c   the scan-time advisor: pages_to_scan from each full scan's
 *               length and CPU; the knob stores it changes
 *   sets.c      who holds a reference: sets, markers, held sets
 *   config.c    samepage.conf: read at start and on SIGHUP
 *   pool.c index.c refs.c map.c   the pool, the two indexes, a set's
 *               references, the hash map they use
 */
#ifndef SAMEPAGE_DAEMON_H
#define SAMEPAGE_DAEMON_H

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "index.h"
#include "map.h"
#include "pool.h"
#include "proto.h"
#include "log.h"
#include "refs.h"
#include "service.h"

/* A set of pool references and who holds it (invariant 2). A connection's
 * set is its process's; when the connection closes, the set stays (a held
 * set, fd -1) for as long as anyone still maps the set's marker — the
 * process itself, alive and reconnecting, or fork children that were
 * handed a copy with C_FORK — and goes once nobody does (DESIGN.md, "Who
 * holds a reference"). */
enum set_kind {
	SET_LIVE,  /* a connection's */
	SET_OWN,   /* a closed connection's: moved to the next connection with its marker */
	SET_FORK,  /* C_FORK's copy for children: copied to each child that connects */
};

struct conn {
	int fd;               /* -1: a held set */
	uint8_t kind;         /* enum set_kind */
	uint32_t id;          /* never reused while the daemon lives */
	pid_t pid;            /* from SO_PEERCRED, not from the peer's word */
	int hello;            /* C_HELLO seen */
	int observer;         /* the CLI: no memory, not waited for */
	int parked;           /* HELLO_FORKED before its C_FORK set arrived: not read */
	int pass_done;        /* completed a pass begun in the current generation */
	int unmerge_pending;  /* `samepage unmerge --pid` for this process */
	uint64_t last_seen_ns; /* last budget request */
	uint64_t cpu_ns;      /* its scanner thread's CPU time at its last budget request */
	int cpu_seen;         /* cpu_ns was reported */
	uint64_t domain;      /* merge domain: only pages of one domain ever merge */
	uint64_t key_mix;     /* XORed into its content hashes: index keys (key_of) */
	int marker_fd;        /* the process's marker (-1: none: the set dies with the connection) */
	uint64_t marker_ino, marker_dev;
	struct refs refs;     /* every pool reference held */
	struct refs cowed;    /* of those, the ones whose mapper wrote its copy */
	uint32_t rsv_next, rsv_end; /* pool ids set aside for its next creations */
	uint64_t rsv_addr;    /* address of the page that got id rsv_next - 1 (0: none) */
	int pipe_fd;          /* C_PIPE: where C_CREATE's page bytes come from */
	uint32_t pipe_pages;
	/* For the last C_LOOKUP, by entry: the unstable page it matched
	 * (conn 0: none), to be told once this process has created the pool page. */
	struct unstable_item *pairs;
	uint64_t *look_addr;  /* the addresses of that C_LOOKUP's entries */
	uint32_t *look_maps;  /* the pool page its VMA maps there, written (LOOKUP_MAPS), or none */
	uint8_t *look_run;    /* 1: answered SP_POOL_CREATE to make a run's extent (run_pick()) */
	uint32_t npairs;
	/* Merge hints for this process (references already taken for it). */
	struct sp_hint *hints;
	uint32_t nhints;
	struct map hint_at;   /* addr → index in hints */
	struct map hint_ids;  /* pool id → hints waiting with a reference to it */
	struct map asked;     /* pool ids this process asked to move (move.c) */
	struct sp_proc_stats st;
	struct conn *next;
};

/* The scan-time advisor's record of the full scan under way and the ones
 * before (advisor.c; the kernel's struct advisor_ctx). */
struct advisor {
	uint64_t start_ns;    /* its first chunk's budget request; 0: not begun */
	uint64_t cpu_ns;      /* scanner CPU reported during it */
	uint64_t daemon_cpu0; /* the daemon's own CPU time at its start */
	uint64_t scan_ms;     /* the last full scan's length; 0: none yet */
	uint64_t change;      /* average change of the scan's length, percent */
	int partial;          /* begun before a switch or across run != 1: not timed whole */
};

struct samepaged {
	int lfd, efd;
	uint64_t sock_ino, sock_dev; /* the socket we bound: removed at exit only if still there */
	uid_t uid;
	uint64_t instance;    /* random: tells a process whether its references live here */
	uint64_t salt;        /* random, secret: domains' index keys cannot be forged */
	struct pool pool;
	int zero_fd;          /* an all-zero sealed memfd: see zero_segment() */
	int spare_fd;         /* given up to refuse a connection when out of descriptors */
	struct index ix;
	struct conn *conns;   /* open connections */
	struct conn *held;    /* held sets (fd -1) */
	uint32_t nparked;
	struct map live;      /* id → struct conn * of open connections (unstable entries name them) */
	uint32_t next_id;
	struct sp_knobs knobs;
	struct advisor adv;
	uint64_t gen;         /* unstable-index generation */
	int stopped;          /* run was not 1 when a generation last could end */
	uint64_t full_scans, pages_scanned, pages_skipped, total_refs;
	/* Pool pages by their mappings (refs - cowed), kept as refs change:
	 * pages_shared counts pages mapped at least once, pages_sharing the
	 * mappings beyond the first, written the pages only written copies
	 * still hold (kernel KSM frees those at once; here a VMA still covers
	 * them until it is restored whole). */
	uint64_t shared, sharing, written;
	uint64_t unheld_drops; /* C_UNREF/C_COW of a reference not held: ignored */
	uint64_t inplace;     /* pool pages given new content where their mappers are */
	struct map moved;     /* pool id → the page C_MOVE copied it to (move.c) */
	uint64_t moved_pages; /* pages copied by C_MOVE */
	double tokens;        /* scan budget bucket (pages) */
	uint64_t last_refill_ns, last_sweep_ns;
	int idle_exit_s;      /* exit after this long with no process; 0: never */
	int idle_exit_arg;    /* --idle-exit, or -1: samepage.conf's idle_exit, else the default */
	int idle_exit_default; /* 60 s started on demand, else never */
	uint64_t idle_since_ns;
	struct service svc;   /* the service manager's socket and status line, if any */
	unsigned char *buf;   /* the reply being built */
	unsigned char *in;    /* the request being handled */
	unsigned char *scratch; /* SP_MAX_CREATE pages: C_CREATE bytes of contents already pooled */
	int stop;
};

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define HINTS_MAX_ 65536u /* per process; beyond, its page merges on its next pass */

/* ---- sets.c (invariant 2) ---- */
int ref_take(struct samepaged *d, struct conn *c, uint32_t id);
void ref_cow(struct samepaged *d, struct conn *c, uint32_t id);
void ref_drop(struct samepaged *d, struct conn *c, uint32_t id, int cowed);
void hint_ids_add(struct conn *c, uint32_t id, int delta);
int hints_reserve(struct conn *c);
void set_release(struct samepaged *d, struct conn *c);
int set_merge(struct samepaged *d, struct conn *dst, struct conn *src, int copy);
int marker_take(struct conn *c, int fd);
int same_marker(const struct conn *a, const struct conn *b);
void set_free(struct conn *c);
uint32_t attach_held(struct samepaged *d, struct conn *c);
struct conn *live_with_marker(struct samepaged *d, const struct conn *h);
void set_closed(struct samepaged *d, struct conn *c);
void sweep_held(struct samepaged *d);

/* ---- budget.c ---- */
void maybe_end_generation(struct samepaged *d);
int on_budget(struct samepaged *d, struct conn *c, const struct sp_budget *b);

/* ---- advisor.c ---- */
/* Set a knob as the kernel's store function does (C_SET, samepage.conf):
 * 0, or -EINVAL for a value out of range and for pages_to_scan while the
 * advisor is on. Switching advisor_mode starts pages_to_scan afresh. */
int knob_store(struct samepaged *d, int knob, uint32_t value);
/* A budget request: the scanner's CPU, and the start of a full scan. */
void advisor_account(struct samepaged *d, struct conn *c, const struct sp_budget *b);
/* A full scan (generation) ended: with the advisor on, a new pages_to_scan. */
void advisor_scan_done(struct samepaged *d);
/* The kernel's scan_time_advisor(): pages_to_scan after a full scan of
 * scan_ns that took cpu_ns of CPU, the last one having taken prev_scan_ms
 * (0: none); *change is the running average it keeps (0 at first). */
uint32_t advisor_next(const struct sp_knobs *k, uint64_t scan_ns, uint64_t cpu_ns,
		      uint64_t prev_scan_ms, uint64_t *change);

/* ---- conn.c ---- */
int conn_alive(void *ctx, uint32_t id);
struct conn *conn_by_id(struct samepaged *d, uint32_t id);
void maybe_idle(struct samepaged *d);
void conn_close(struct samepaged *d, struct conn *c);
/* 1: a connection was taken (or refused), 0: none waits. */
int accept_conn(struct samepaged *d);

static inline int reply(struct conn *c, uint16_t type, const void *p, uint32_t len)
{
	return sp_send(c->fd, type, p, len, -1);
}

static inline int ack(struct conn *c, int err)
{
	struct sp_ack a = { .err = err };

	return reply(c, D_ACK, &a, sizeof(a));
}

/* ---- lookup.c ---- */
int on_lookup(struct samepaged *d, struct conn *c, const struct sp_lookup *l);
int on_create(struct samepaged *d, struct conn *c, const struct sp_create *cr);
int on_hints(struct samepaged *d, struct conn *c, const struct sp_hints_req *q);
/* move.c */
int on_move(struct samepaged *d, struct conn *c, const struct sp_ids *q);

/* ---- requests.c ---- */
int hello_reply(struct samepaged *d, struct conn *c, uint32_t attached);
/* One message: 0, or < 0 to close the connection (invariant 6). */
int dispatch(struct samepaged *d, struct conn *c, struct sp_msg *m);

/* ---- config.c: samepage.conf ---- */

/* Read the configuration over the default knobs (each error told on
 * stderr, and then none of it applied) and reload it on SIGHUP from now
 * on. idle_exit_arg: --idle-exit, or -1 for the file's idle_exit, else
 * idle_exit_default (samepaged_run() passes its idle_exit_s, and 60 s when
 * it was started on demand, ready_fd >= 0). */
void samepaged_config_start(struct samepaged *d, int idle_exit_arg, int idle_exit_default);
/* Reload if SIGHUP came. */
void samepaged_config_tick(struct samepaged *d);
/* Check the files only, telling each error on stderr: 0 or -errno. */
int samepaged_config_check(void);

/* ---- loop.c: samepaged's life ---- */

/* Bind path and serve until stopped or idle (idle_exit_s seconds with no
 * process; 0: never). When ready_fd >= 0, one byte is written to it once
 * listening (0) or on failure (errno). Under a service manager (ready_fd
 * -1), a socket passed by socket activation is served instead of binding
 * path, and readiness and a status line go to NOTIFY_SOCKET (service.c).
 * 0 or -errno; -EADDRINUSE when another daemon owns path. */
int samepaged_run(const char *path, int idle_exit_s, int ready_fd);
/* Default knob values; see README for why. */
void samepaged_default_knobs(struct sp_knobs *k);

/* The loop's parts, for the protocol fuzzer (fuzz/daemon_msg.c): a daemon
 * without a socket, connections made from descriptors, one message. */
int samepaged_init(struct samepaged *d);
void samepaged_fini(struct samepaged *d);
struct conn *samepaged_attach(struct samepaged *d, int fd, pid_t pid);
/* Handle everything readable on c; 0, or -1 when c was closed. */
int samepaged_serve(struct samepaged *d, struct conn *c);
/* What the loop does between events: parked hellos, held sets, generations. */
void samepaged_tick(struct samepaged *d);
/* Debug check of the reference accounting; 0 or -EUCLEAN. */
int samepaged_check(struct samepaged *d);

#endif
