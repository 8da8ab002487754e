/* SPDX-License-Identifier: MIT */
/*
 * samepage — same-page merging (kernel KSM's job) in user space.
 *
 * A process that links libsamepage (or runs under `samepage run`, which
 * preloads it) has the pages it marks mergeable scanned by a thread of its
 * own; pages whose content another process of the same user also holds end
 * up backed by one page of the daemon's pool, copy-on-write. The calls below
 * mirror kernel KSM's interface: madvise(MADV_MERGEABLE/MADV_UNMERGEABLE),
 * prctl(PR_SET_MEMORY_MERGE) and the counters of /sys/kernel/mm/ksm and
 * /proc/PID/ksm_stat, under the kernel's names and meanings.
 *
 * Every function returns 0 (or a non-negative result) on success and a
 * negative errno value on failure; none of them sets errno. All are
 * thread-safe. The first call starts the per-process scanner thread and, if
 * none runs yet, the user's daemon `samepaged`.
 */
#ifndef SAMEPAGE_H
#define SAMEPAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAMEPAGE_VERSION 1

#if defined(__GNUC__)
#define SAMEPAGE_API __attribute__((visibility("default")))
#else
#define SAMEPAGE_API
#endif

/*
 * Mark [addr, addr+len) mergeable (advice MADV_MERGEABLE) or unmerge it and
 * stop merging it (MADV_UNMERGEABLE), with madvise(2)'s rules for kernel
 * KSM: addr not page aligned or len overflowing → -EINVAL; parts of the
 * range that are not mapped → -ENOMEM (the mapped parts are still handled);
 * ineligible mappings (shared, file-backed, hugetlb, VM_IO/PFNMAP,
 * MADV_WIPEONFORK, registered with the application's own userfaultfd) are
 * skipped silently. MADV_UNMERGEABLE returns only once every merged page of
 * the range has a frame of its own again. Any other advice → -EINVAL.
 */
SAMEPAGE_API int samepage_madvise(void *addr, size_t len, int advice);

/* prctl(PR_SET_MEMORY_MERGE, enable): merge all eligible private anonymous
 * memory of the process, mappings made later included; 0 turns it off and
 * unmerges what it merged. Inherited across fork() and exec(). */
SAMEPAGE_API int samepage_set_merge_any(int enable);

/* prctl(PR_GET_MEMORY_MERGE): 1 when merge-any is on, 0 when off. */
SAMEPAGE_API int samepage_get_merge_any(void);

/* Counters, kernel names. Global ones are the daemon's (all processes of
 * this user); the ksm_* ones are this process's (/proc/self/ksm_stat). */
struct samepage_stat {
	/* /sys/kernel/mm/ksm */
	uint64_t pages_shared;       /* pool pages in use */
	uint64_t pages_sharing;      /* further mappings of those pages: the saving */
	uint64_t pages_unshared;     /* unique pages in the unstable index */
	uint64_t pages_volatile;     /* pages changing too fast to merge */
	uint64_t pages_scanned;      /* pages scanned, all time */
	uint64_t full_scans;         /* completed passes over every process */
	uint64_t ksm_zero_pages;     /* pages mapped to the kernel zero page */
	int64_t general_profit;      /* bytes saved minus bookkeeping */
	uint64_t stable_node_chains; /* contents held by more than one pool page */
	uint64_t stable_node_dups;   /* pool pages in such chains */
	/* samepage's own */
	uint64_t pool_pages;         /* pages the pool holds (in use or free) */
	uint64_t pool_segments;      /* memfd segments the pool consists of */
	uint64_t merge_vmas;         /* VMAs that map pool pages, all processes */
	uint64_t vma_limited;        /* merges refused to stay inside max_map_count */
	uint64_t processes;          /* processes connected */
	/* /proc/self/ksm_stat */
	uint64_t ksm_rmap_items;
	uint64_t ksm_zero_pages_process;
	uint64_t ksm_merging_pages;
	int64_t ksm_process_profit;
	int ksm_merge_any;
	int ksm_mergeable;
};

/* Fill *st. -ENOTCONN (or another errno from connecting) when no daemon
 * could be reached; -EAGAIN when the daemon did not answer within 2 s
 * (it is stopped or busy: it is not given up on, ask again later). */
SAMEPAGE_API int samepage_stat(struct samepage_stat *st);

/* Merge only with processes of the merge domain name (at most 255 bytes;
 * NULL or "" is the default domain, one per user). Pages of two domains
 * never merge and never share a pool segment, so a process cannot time
 * another domain's pages (README, "Merge domains"). What `samepage run
 * --domain NAME` and SAMEPAGE_DOMAIN set; inherited across fork() and
 * exec(). Only before this process has merged anything or reached the
 * daemon: -EBUSY afterwards; -EINVAL for a longer name. */
SAMEPAGE_API int samepage_set_domain(const char *name);

/* Run one scan pass over this process's mergeable memory now, instead of
 * waiting for the scanner thread's next turn (tests, benchmarks). */
SAMEPAGE_API int samepage_scan_now(void);

#ifdef __cplusplus
}
#endif
#endif
