/* SPDX-License-Identifier: MIT */
/*
 * proto — the wire format between libsamepage and samepaged.
 *
 * A message is a fixed header followed by `len` payload bytes, on a
 * SOCK_SEQPACKET Unix socket (one message per datagram, so a short or
 * oversize read is a protocol error, not a resync problem). Requests and
 * replies alternate on a connection; C_UNREF is the one request without a
 * reply. Every payload has a fixed part whose size is checked exactly, and a
 * counted array whose count is checked against the bytes that came. The
 * daemon closes a connection on the first malformed message (invariant 6:
 * it trusts nothing a process sends).
 */
#ifndef SAMEPAGE_PROTO_H
#define SAMEPAGE_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sizes.h"

#define SP_PROTO_VERSION 6
/* A SOCK_SEQPACKET message must fit the socket's send buffer whole
 * (net.core.wmem_default, 208 KiB here; EMSGSIZE beyond), so none exceeds
 * 72 KiB. */
#define SP_MAX_MSG (72u << 10)        /* header + payload */
#define SP_MAX_LOOKUP 2048u           /* hashes in one C_LOOKUP (24 bytes each) */
/* Pages in one C_CREATE. Their bytes travel through the connection's pipe
 * (vmsplice: the process copies nothing; the daemon reads them once,
 * straight into the pool), whose capacity is 1 MiB where the system allows
 * (fs.pipe-max-size) and 64 KiB at least. */
#define SP_MAX_CREATE 256u
#define SP_MAX_HINTS 4096u            /* pages in one D_HINTS */
#define SP_MAX_UNREF 16384u
#define SP_MAX_MOVE 512u              /* pages in one C_MOVE: a scan chunk */
#define SP_MAX_PROCS 512u             /* processes in one D_PROCS (112 bytes each) */
#define SP_MAX_FILL 256u              /* pool ids one C_FILL holds: a gap between two runs */
#define SP_POOL_NONE 0xffffffffu      /* lookup: no match, kept in the unstable index */
#define SP_POOL_CREATE 0xfffffffeu    /* lookup: match in the unstable index, send the page */
/* C_UNREF: the reference dropped is one its mapper had written (C_COW). */
#define SP_UNREF_COWED 0x80000000u
#define SP_ZERO_SEG 0xffffu           /* C_GETSEG: the all-zero segment */

enum sp_msg_type {
	C_HELLO = 1, C_BUDGET, C_LOOKUP, C_CREATE, C_UNREF, C_GETSEG,
	C_FORK, C_STAT, C_SET, C_UNMERGE, C_PIPE, C_HINTS, C_COW, C_MARKER, C_MOVE, C_PROCS,
	C_FILL,
	D_HELLO = 100, D_BUDGET, D_LOOKUP, D_CREATE, D_SEG, D_ACK, D_STAT, D_HINTS, D_MOVE, D_PROCS,
};

struct sp_hdr {
	uint16_t type;
	uint16_t flags;
	uint32_t len; /* payload bytes after this header */
};

/* The kernel's knobs (/sys/kernel/mm/ksm), under its names. The advisor's
 * five are the scan-time advisor's (daemon/advisor.c): advisor_mode is
 * enum sp_advisor; with it at ADVISOR_SCAN_TIME the daemon sets
 * pages_to_scan itself after every full scan, and refuses it from anyone
 * else, as the kernel does. */
enum sp_knob {
	KNOB_RUN, KNOB_PAGES_TO_SCAN, KNOB_SLEEP_MILLISECS, KNOB_USE_ZERO_PAGES,
	KNOB_MAX_PAGE_SHARING, KNOB_SMART_SCAN, KNOB_ADVISOR_MODE, KNOB_ADVISOR_MAX_CPU,
	KNOB_ADVISOR_MIN_PAGES_TO_SCAN, KNOB_ADVISOR_MAX_PAGES_TO_SCAN,
	KNOB_ADVISOR_TARGET_SCAN_TIME, KNOB_COUNT
};
/* advisor_mode's values; written and shown by name ("none", "scan-time"). */
enum sp_advisor { ADVISOR_NONE, ADVISOR_SCAN_TIME };

struct sp_knobs {
	uint32_t v[KNOB_COUNT];
};

#define HELLO_OBSERVER 1u /* CLI connection: no memory, not waited for by full scans */
/* A fork child whose references its parent handed over with C_FORK before
 * the child existed: its requests wait until that set has arrived. */
#define HELLO_FORKED 2u

/* C_HELLO carries the process's marker in SCM_RIGHTS (DESIGN.md, "Who
 * holds a reference"): a one-page memfd that the process maps shared and
 * nothing else does. The references a connection holds outlive it while
 * the marker is still mapped by anyone. */
struct sp_hello {
	uint32_t version;
	uint32_t flags;
	uint64_t domain;          /* merge domain (0: the user's default one) */
	uint64_t expect_instance; /* the daemon the process's references live in, or 0 */
};
struct sp_hello_r {
	uint64_t instance;  /* this daemon, random: a successor's differs */
	uint32_t seg_pages; /* pages per pool segment */
	uint32_t attached;  /* references of an earlier connection (or a fork) now this one's */
	struct sp_knobs knobs;
};

/* A process's own counters, sent with every budget request. */
struct sp_proc_stats {
	uint64_t rmap_items, zero_pages, merging_pages, unshared, volatile_pages;
	uint64_t merge_vmas, vma_limited;
	uint64_t cowed;      /* references held by pages written since merging */
	uint32_t merge_any, mergeable;
	uint32_t limited;    /* merging paused: the VMA budget (invariant 7) is spent */
	uint32_t pages_pinned; /* times a page was left, maybe pinned (invariant 10); was padding */
};

#define BUDGET_PASS_DONE 1u
struct sp_budget {
	uint32_t want;
	uint32_t flags;
	uint64_t pass_gen;   /* generation the finished pass started in */
	uint64_t scanned;    /* pages scanned since the previous request */
	uint64_t skipped;    /* of those, pages smart_scan skipped (pages_skipped) */
	/* The scanner thread's CPU time so far (CLOCK_THREAD_CPUTIME_ID), for
	 * the scan-time advisor's cap on all scanners' CPU (advisor.c). */
	uint64_t cpu_ns;
	struct sp_proc_stats st;
};
struct sp_budget_r {
	uint32_t grant;
	uint32_t wait_ms;     /* when grant is 0: ask again after this */
	uint64_t gen;         /* current unstable-index generation */
	uint32_t unmerge;     /* unmerge everything now (run=2 or `samepage unmerge`) */
	uint32_t hints;       /* merge hints waiting (C_HINTS fetches them) */
	struct sp_knobs knobs;
};

/* A page offered: its hash, its address, and (flag LOOKUP_MAPS) the pool
 * page its VMA maps there, which it wrote since (its own copy is what is
 * offered): the daemon may put the content there, so that the page merges
 * again without a new mapping (DESIGN.md, "Merging again in place"). */
#define LOOKUP_MAPS 1u
struct sp_lookup_ent { uint64_t hash; uint64_t addr; uint32_t maps; uint32_t flags; };
struct sp_lookup { uint32_t n; uint32_t pad; struct sp_lookup_ent e[]; };
struct sp_ids { uint32_t n; uint32_t id[]; };      /* D_LOOKUP, D_CREATE, C_UNREF, C_COW */
/* C_MOVE (struct sp_ids): pool pages the sender maps, unwritten, at
 * consecutive places, in address order; D_MOVE (struct sp_ids): for each,
 * a pool page with the same bytes (SP_POOL_NONE: none), consecutive where
 * the daemon could, with a reference taken for the sender. The sender
 * maps them instead and drops the old ones (DESIGN.md, "Defragmentation").
 * Every sharer asking for the same old pages gets the same new ones. */
/* C_CREATE: n pages whose bytes wait in the pipe, in this order. look is
 * the index, in the connection's last C_LOOKUP, of the entry that got
 * SP_POOL_CREATE: the daemon then tells the page it matched (a merge hint
 * for that page's process). */
struct sp_create_ent { uint64_t hash; uint32_t look; uint32_t pad; };
struct sp_create { uint32_t n; uint32_t pad; struct sp_create_ent e[]; };
/* C_PIPE: the read end of the connection's page pipe, in SCM_RIGHTS. */
struct sp_pipe { uint32_t pages; uint32_t pad; };  /* its capacity */
/* D_HINTS: pages of ours that another process's page now matches: the pool
 * page holding that content, with a reference already ours. */
struct sp_hint { uint64_t addr; uint32_t id; uint32_t pad; };
struct sp_hints { uint32_t n; uint32_t pad; struct sp_hint e[]; };
struct sp_hints_req { uint32_t max; uint32_t pad; };
struct sp_getseg { uint32_t seg; };
struct sp_seg_r { uint32_t seg; uint32_t pages; };  /* fd in SCM_RIGHTS */
/* C_FORK (no reply), before fork(): a copy of the sender's references for
 * the child about to be forked, which will map the marker in SCM_RIGHTS.
 * C_MARKER (no reply): from now on the sender's marker is the one in
 * SCM_RIGHTS (a fork child leaves the marker it shares with its siblings). */
struct sp_fork { uint32_t pad; };
struct sp_ack { int32_t err; };
struct sp_statreq { int32_t pid; };                 /* 0: global only */
struct sp_set { uint32_t knob; uint32_t pad; uint64_t value; };
struct sp_unmerge { int32_t pid; };                 /* 0: every process */

/* C_PROCS (the CLI: `samepage top`, `unmerge`): the processes connected, ordered
 * by (pid, id), from just after the cursor (0, 0: from the first). D_PROCS
 * holds at most SP_MAX_PROCS of them; when more follow, ask again from the
 * last one. A pid may appear twice for a moment (an image that exec'd,
 * its old connection not yet closed): id tells them apart. */
struct sp_procs_req { int32_t after_pid; uint32_t after_id; };
/* C_FILL: pool ids [first, first + n), free, of one segment the sender
 * holds a page of, become the sender's as written pages with no content
 * (holes: no memory), answered D_ACK 0 or -EBUSY. The sender maps them
 * over its unique pages between two runs (lib/fill.c; DESIGN.md,
 * "Filling gaps"). */
struct sp_fill { uint32_t first; uint32_t n; };
#define PROC_UNMERGING 1u /* `samepage unmerge` asked it; its next budget reply says so */
#define PROC_PARKED 2u    /* a fork child waiting for its parent's references */
struct sp_proc_ent {
	int32_t pid;        /* from SO_PEERCRED */
	uint32_t id;        /* its connection, never reused while the daemon lives */
	uint32_t flags;
	uint32_t silent_ms; /* since its last budget request; UINT32_MAX: none yet */
	struct sp_proc_stats st; /* as of its last budget request */
	/* The daemon's own count of the pool references it holds, and of
	 * those the written ones: current even when the process stopped
	 * between merging and reporting (st is then behind). */
	uint64_t refs, cowed;
};
struct sp_procs {
	uint32_t n;
	uint32_t more;      /* 1: processes after e[n - 1] were left out */
	/* The daemon's own pid: SO_PEERCRED names whoever called listen(),
	 * the service manager under socket activation. */
	int32_t daemon_pid;
	uint32_t pad;
	struct sp_proc_ent e[];
};

struct sp_global_stats {
	uint64_t pages_shared, pages_sharing, pages_unshared, pages_volatile;
	uint64_t pages_scanned, full_scans, ksm_zero_pages;
	int64_t general_profit;
	uint64_t stable_node_chains, stable_node_dups;
	uint64_t pool_pages, pool_segments, merge_vmas, vma_limited, processes;
	uint64_t meta_bytes; /* daemon bookkeeping */
	uint64_t held_sets;  /* reference sets of closed connections still mapped */
	uint64_t pool_written; /* pool pages kept only for written copies */
	uint64_t processes_limited; /* processes whose merging waits for VMA room */
	uint64_t pages_inplace; /* pages merged again into the pool page they left */
	uint64_t pages_moved; /* pages copied to consecutive pool pages (defragmentation) */
	uint64_t pages_skipped; /* pages smart_scan did not read, all time */
};
struct sp_stat_r {
	struct sp_global_stats g;
	struct sp_knobs knobs;
	int32_t has_proc;
	int32_t pid;
	struct sp_proc_stats p;
};

/* Bytes of bookkeeping per tracked page in the library (kernel: rmap_item). */
#define SP_ENTRY_BYTES 8

/* A received message: header + payload in buf, optional fd. */
struct sp_msg {
	struct sp_hdr h;
	unsigned char *p; /* payload, h.len bytes, inside the caller's buffer */
	int fd;           /* -1 unless SCM_RIGHTS carried one (D_SEG, C_PIPE only) */
	pid_t pid;        /* sender's pid from SCM_CREDENTIALS (SO_PASSCRED), or 0 */
	uid_t uid;        /* sender's uid from SCM_CREDENTIALS, or -1 */
};

int sp_send(int sock, uint16_t type, const void *payload, uint32_t len, int fd);
/* sp_send with sendmsg flags (MSG_DONTWAIT). */
int sp_sendmsg(int sock, uint16_t type, const void *payload, uint32_t len, int fd, int flags);
int sp_sendv(int sock, uint16_t type, const void *a, uint32_t alen,
	     const void *b, uint32_t blen);
int sp_sendv_flags(int sock, uint16_t type, const void *a, uint32_t alen,
		   const void *b, uint32_t blen, int flags);
/* Receive one message into buf (SP_MAX_MSG bytes). 0, -errno, or -EPROTO
 * for a malformed frame; -ECONNRESET on orderly close. */
int sp_recv(int sock, void *buf, struct sp_msg *m);
/* Check a payload against its type's layout; 0 or -EPROTO. */
int sp_validate(const struct sp_msg *m);

/* The wire id of merge domain name (NULL or "": the default, 0). */
uint64_t sp_domain_id(const char *name);

const char *sp_knob_name(int knob);
int sp_knob_lookup(const char *name);
/* 0 or -EINVAL when value is out of the knob's range. */
int sp_knob_check(int knob, uint64_t value);
/* The knob's range [*min, *max], for messages: 0, or -EINVAL for no such knob. */
int sp_knob_range(int knob, uint64_t *min, uint64_t *max);
/* A knob's value as a person types it (`samepage set`, samepage.conf): a
 * decimal number in its range, or for advisor_mode "none" or "scan-time".
 * 0, -EINVAL (not a value of it) or -ERANGE (a number out of range). */
int sp_knob_parse(int knob, const char *text, uint64_t *value);
/* value as text into buf (a number, advisor_mode's name); snprintf's result. */
int sp_knob_format(int knob, uint32_t value, char *buf, size_t len);
/* What the knob takes, for messages ("2 to 1048576", "none or scan-time"). */
void sp_knob_takes(int knob, char *buf, size_t len);
/* Knobs given together (`samepage set`, samepage.conf) are applied rank by
 * rank, in their own order within one: 0 the advisor's bounds, 1
 * advisor_mode (switching it on starts pages_to_scan at
 * advisor_min_pages_to_scan), 2 the others (pages_to_scan, which the
 * advisor refuses while it is on, after advisor_mode). */
#define SP_KNOB_RANKS 3
int sp_knob_rank(int knob);

#endif
