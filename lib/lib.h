/* SPDX-License-Identifier: MIT */
/*
 * lib — libsamepage's one context: everything a participating process
 * keeps, and the library's internal interface, part by part (each calls
 * only those declared after it: api → scan → chunk → defrag → fill → merge → track →
 * client). The context lives in the library's arena (arena.c), which the
 * scanner never merges: it writes it while pages are frozen.
 *
 * Locking: lib.lock serialises every use of the areas, the entries, the
 * segments held and the daemon connection. The scanner holds it for one
 * chunk of pages at a time (freeze → verify → remap → thaw happens inside),
 * never while sleeping. The interposed mmap/munmap/mremap/madvise/fork take
 * it so that an application's change to its address space never interleaves
 * with a merge. Nothing called under it may take a lock an application
 * thread can hold while blocked on a frozen page (no malloc, no stdio).
 */
#ifndef SAMEPAGE_LIB_H
#define SAMEPAGE_LIB_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "arena.h"
#include "env.h"
#include "log.h"
#include "os.h"
#include "path.h"
#include "proto.h"

/* Per scanned page: kernel KSM's rmap_item, in 8 bytes.
 * E_COWED: merged, then written; the kernel gave it a private copy inside
 * the pool mapping. It keeps its reference (the VMA still maps the pool
 * page: invariant 2) until its whole VMA can be turned back into anonymous
 * memory without splitting VMAs, the page merges again, or the memory goes. */
enum entry_state { E_NEW, E_HASHED, E_MERGED, E_ZERO, E_COWED };
struct entry {
	/* The top bits of the page's XXH3 at the last scan: only to tell
	 * whether it changed since (kernel KSM keeps a 32-bit checksum); what
	 * the daemon is asked is always a full 64-bit hash of the page now. */
	uint32_t state : 3;
	uint32_t csum : 29;
	uint32_t pool;   /* E_MERGED/E_COWED: pool page id we hold a reference to */
};
#define ENTRY_CSUM(h) ((uint32_t)((h) >> 35))
_Static_assert(sizeof(struct entry) == SP_ENTRY_BYTES, "entry size is part of the counters");

/* A range of mergeable memory with one entry per page. */
struct area {
	uintptr_t start, end;
	struct entry *e;
	uint32_t vmflags; /* VF_* of the anonymous memory, kept on replacements */
	uint8_t prot;
	uint8_t seen;     /* still wanted at the last refresh */
};

struct range { uintptr_t start, end; };
struct chunk;
struct defrag_window;

/* A pool segment this process holds while it has references into it. It
 * is never mapped shared to compare pages: in this VM every page a process
 * maps anew costs a hypervisor fault on first touch (4-6 us, measured),
 * so pages to compare are read with pread() into one warm buffer. */
struct segview {
	int fd;            /* -1: not held */
	uint64_t ino;
	uint64_t refs;     /* our references into this segment */
};

struct lib_stats {
	int64_t rmap_items, merging, zero, cowed; /* entries by state, kept live */
	uint64_t unshared, volatile_pages;  /* of the last complete pass */
	uint64_t merge_vmas, vma_limited;
	uint64_t pinned;   /* pages left because the kernel would not move them (evict.c) */
	int limited;       /* the VMA budget is spent: no new merges until there is room */
};

#define LIB_MAX_AREAS 65536
#define LIB_OWN_OBJECTS 64
#define LIB_MAX_RANGES 4096
#define LIB_MAX_PENDING 65536
#define CHUNK_PAGES 512
/* A span is frozen as a whole: an application thread writing any page of
 * it waits until the span is merged, so spans are bounded. Not too small:
 * in this VM every change of our page tables (freeze, replace, unfreeze)
 * makes the hypervisor drop its copies of them, and each page touched
 * afterwards faults into it once (4-6 us), so the cost per page falls with
 * the span (scanner CPU for 2 x 128 MiB: 0.57 s at 64 pages, 0.31 s at
 * 256, no better at 512). At 256 a writer waits at most about a
 * millisecond, and only if it writes into the span being merged. */
#define SPAN_MAX_PAGES 256 /* merge.c */
#define ABUF_PAGES 32

#define TEXT_BYTES (1u << 20)      /* /proc parsing buffer */

/* A reply the library still waits for, oldest first: requests and replies
 * alternate per connection, so the n-th reply is for the n-th request. */
enum reply_fate {
	R_MINE,        /* the caller of client_call() is waiting for it */
	R_HELLO,       /* D_HELLO: tells which daemon this is */
	R_DROP,        /* abandoned: nothing to do but close a descriptor */
	R_UNREF,       /* abandoned D_LOOKUP/D_CREATE: its references go back */
	R_UNREF_HINTS, /* abandoned D_HINTS: likewise */
};
struct expect { uint16_t type; uint8_t fate; };
#define EXPECT_MAX 16
#define OUTBOX_MAX 65536

/* How a fork child is covered (client_fork_prepare). */
struct fork_kid {
	int mode;          /* KID_NONE: nothing to cover; KID_MARKER: C_FORK sent; KID_DETACH */
	int fd;            /* the children's marker */
	uintptr_t addr;    /* mapped here, in parent and child */
	int done[2];       /* KID_DETACH: the child writes 1 (detached) or 2 (failed) and
			      closes; end of file without a byte: it died */
};
enum { KID_NONE, KID_MARKER, KID_DETACH };

/* ksmfile.c: a KSM file a path or a descriptor names. */
struct sp_ksm_file;
struct ksm_target {
	const struct sp_ksm_file *file; /* /sys/kernel/mm/ksm/NAME; NULL for */
	int proc;                       /* /proc/PID/ksm_stat, ksm_merging_pages */
	pid_t pid;
};

/* ksmfile.c's state: the KSM files this image serves. */
struct ksmfiles {
	pthread_mutex_t lock;      /* sock, buf, last_us; never held with lib.lock */
	int armed;                 /* (__atomic) this image holds a KSM file: the read
				      and write wrappers check descriptors */
	int sock;                  /* observer connection to the daemon, -1: none */
	pid_t sock_pid;            /* the process that opened it */
	uint64_t last_us;          /* when the daemon was last asked */
	unsigned char *buf;        /* SP_MAX_MSG: its replies */
	int held[3];               /* write-only KSM files inherited as fd 0-2, kept
				      open to apply what stdio wrote at exit; -1 */
	int err;                   /* stderr kept with them, to say what failed; -1 */
};

struct lib {
	struct arena arena;        /* this struct and all our memory live in it */
	pthread_mutex_t lock;      /* see above */
	int waiters;               /* application threads waiting for lock (__atomic): a
				      scanner waiting on a slow daemon gives way to them */
	pthread_cond_t wake;       /* scanner sleeps on it; kicked by madvise/prctl/scan_now */
	pthread_t scanner;
	int scanner_running;
	int stop;

	/* daemon connection (lock). A connection is never given up on because
	 * the daemon is slow: only its close says it is gone, and then the
	 * next D_HELLO says whether our references are still there. */
	int sock;                  /* -1 when not connected */
	/* Where the daemon listens, read from the environment once, by
	 * client_init() on the program's thread: the scanner dials too, and
	 * must not walk an environment another thread may be rewriting. */
	struct sp_where where;
	int ready;                 /* D_HELLO arrived on sock */
	uint64_t instance;         /* the daemon our references live in; 0: none */
	struct expect expect[EXPECT_MAX];
	uint32_t nexpect;
	int sndbuf;                /* sock's send buffer: half stays free for C_FORK */
	uint64_t domain;           /* merge domain (SAMEPAGE_DOMAIN): sp_domain_id(domain_name) */
	char domain_name[SP_DOMAIN_MAX + 1];
	int marker_fd;             /* our marker (os_marker_create), -1: none yet */
	uintptr_t marker_addr;
	int marker_shared;         /* the marker a fork gave us and our siblings: replaced
				      by our own once the daemon has attached our set */
	int hello_forked;          /* our references came by C_FORK: HELLO_FORKED */
	int kid_fd;                /* marker handed to fork children, reusable while */
	int kid_reusable;          /* no request that yields references went out since */
	/* no-reply messages (C_UNREF, C_COW) not sent yet, in order */
	uint32_t *out_id;
	uint8_t *out_kind;
	uint32_t out_head, nout;
	uint64_t seg_refs;         /* references we hold, all segments */
	int keep_refs;             /* a fork child could not detach: never drop one again */
	pthread_t forker;          /* thread inside the fork() wrapper (forking set) */
	int forking;
	struct fork_kid atfork_kid; /* a fork() the wrapper did not see (daemon(3)) */
	int atfork_active;
	void (*refs_lost)(struct lib *l); /* the daemon died: scan.c forgets the references */
	struct sp_knobs knobs;
	uint64_t gen;
	int debug;                 /* SAMEPAGE_DEBUG: a line per pass on stderr */
	pid_t said_no_room;        /* warned of the address space limit (in this process) */
	/* Sanitizer builds: the .bss of the shared objects loaded before us
	 * (the sanitizer runtimes above all), which the scanner's
	 * instrumented code reads, is never tracked (add_area_outside_own()). */
	struct range own_bss[LIB_OWN_OBJECTS];
	uint32_t nown;
	int zero_page_ok;          /* reading dropped memory maps the zero page here */
	int zero_fd;               /* else zero pages map the daemon's zero segment */
	uint64_t zero_hash;        /* XXH3 of an all-zero page */
	uint64_t zero_ino;
	/* A segment (pool or zero) was ever fetched, here or in a parent
	 * before fork: only then can a pool mapping be anywhere in us, and
	 * merge_discard_moved() has anything to look for. */
	int had_segments;

	int pipe_wr;               /* page pipe to the daemon (C_PIPE), -1: none yet */
	uint32_t pipe_pages;       /* its capacity */
	uint32_t hints_waiting;    /* from the last budget reply */

	int uffd;                  /* -errno when unavailable */
	int pmfd;                  /* /proc/self/pagemap */
	int mem_fd;                /* /proc/self/mem: reads PROT_NONE pages too */
	int mapsfd;                /* /proc/self/maps, for PROCMAP_QUERY */
	int no_move;               /* the kernel has no UFFDIO_MOVE (before 6.8) */
	int pins_seen, pins_possible; /* evict_copies_pinnable(), at pass pins_pass */
	uint64_t pins_pass;
	size_t max_map_count;

	/* what the application asked for (lock) */
	int merge_any;
	struct range ranges[LIB_MAX_RANGES];
	uint32_t nranges;

	/* what the scanner tracks (lock) */
	struct area areas[LIB_MAX_AREAS];
	uint32_t nareas;
	struct vma_list vmas;      /* refreshed at each pass start */
	struct segview segs[SP_MAX_SEGS];
	uint32_t pending[LIB_MAX_PENDING]; /* refs to drop once no VMA maps them */
	uint32_t npending;
	struct lib_stats st;
	uint64_t scanned_since_report;
	uint64_t skipped_since_report; /* of those, smart_scan's (pages_skipped) */
	uint64_t pass_seq;         /* completed passes */
	int kick;                  /* run a pass now */
	int idle_ms;               /* back-off after quiet passes */
	int recount_pending;       /* fork child: counters restart at 0 */
	int first_pass_delay_ms;   /* fork child: wait this long before the first pass */

	/* buffers (lock) */
	struct area *old_areas;    /* LIB_MAX_AREAS: reconcile's copy */
	struct chunk *chunk;       /* scan.c's per-chunk work lists */
	struct defrag_window *defrag; /* defrag.c's pages being moved */
	uint64_t defrag_after;     /* no defragmenting before this pass (it gained nothing) */
	uint32_t defrag_backoff;   /* passes waited after the last try that gained nothing */
	size_t defrag_vmas;        /* SAMEPAGE_DEFRAG_VMAS: defragment past this many VMAs */
	int defrag_active;         /* asked to move pages: go on until nothing is left */
	int fill_mode;             /* SAMEPAGE_FILL (fill.c): FILL_OFF, FILL_ZEROS, FILL_ALL */
	uint64_t fill_after;       /* no filling before this pass (the last tries failed) */
	uint32_t fill_backoff;     /* passes waited after the last pass whose fills failed */
	unsigned char *msg;        /* SP_MAX_MSG: replies */
	unsigned char *out;        /* SP_MAX_MSG: requests */
	uint64_t *pm;              /* CHUNK_PAGES pagemap entries */
	char *text;                /* /proc parsing */
	unsigned char *stack;      /* the scanner thread's stack */
	unsigned char *vbuf;       /* SPAN_MAX_PAGES: pool pages read for comparing */
	unsigned char *abuf;       /* ABUF_PAGES: our own pages read for comparing */
	unsigned char *zpage;      /* a page of zeros, never written */
	struct ksmfiles kf;        /* ksmfile.c */
};

/* The process's context, created on first use; NULL if that failed. */
struct lib *lib_get(void);
/* Like lib_get but never creates it. */
struct lib *lib_peek(void);
/* Start the scanner thread if merging is wanted and it is not running. */
int lib_start_scanner(struct lib *l);
/* Wake the scanner for a pass now (lock held). */
static inline void lib_kick(struct lib *l)
{
	l->kick = 1;
	pthread_cond_broadcast(&l->wake);
}

/* fork(), in api.c: lock held from prepare to parent/child. The fork()
 * and _Fork() wrappers call them; pthread_atfork handlers do for forks
 * made inside libc (daemon(3)), which the wrappers never see. */
void lib_fork_prepare(struct lib *l, struct fork_kid *k);
void lib_atfork_parent(struct lib *l, struct fork_kid *k);
void lib_atfork_child(struct lib *l, struct fork_kid *k);

/* For the wrappers (preload.c), lock held: is anything of [s, e) tracked;
 * merged pages of [s, e) become fresh zero pages (MADV_DONTNEED/FREE,
 * invariant 3); the application unmapped or replaced [s, e). */
int lib_tracked(struct lib *l, uintptr_t s, uintptr_t e);
int lib_discard(struct lib *l, uintptr_t s, uintptr_t e);
void lib_forget(struct lib *l, uintptr_t s, uintptr_t e);

/* For the ioctl wrapper: the application registers memory with a
 * userfaultfd of its own (UFFDIO_REGISTER on fd, argument reg): merged
 * pages there become anonymous first, then the kernel registers them, all
 * under lib.lock. The ioctl's result, or -errno. */
int lib_foreign_uffd_register(struct lib *l, int fd, unsigned long req, void *reg);

/* For the wrappers, lock held: the application changed attributes of
 * [s, e) that merging carries over (mlock, MADV_DONTDUMP...): the tracked
 * areas take them from the kernel again. */
void lib_attrs_changed(struct lib *l, uintptr_t s, uintptr_t e);

/* For the wrappers, lock held: [s, e) was unmapped or replaced (its
 * MADV_MERGEABLE goes with it); [old, old+oldlen) moved to [new_, new_+len)
 * (it goes along; keep_old: MREMAP_DONTUNMAP left the old mapping). */
void lib_ranges_unmapped(struct lib *l, uintptr_t s, uintptr_t e);
void lib_ranges_moved(struct lib *l, uintptr_t old, size_t oldlen, uintptr_t new_, size_t len,
		      int keep_old);

/* For the wrappers, lock held: merged pages of [s, e) become plain
 * anonymous memory again, their bytes kept (MADV_WIPEONFORK needs it; the
 * caller refreshes the areas once the advice is applied). */
int lib_unmerge_range(struct lib *l, uintptr_t s, uintptr_t e);

/* Take lib.lock from an application thread (a wrapper, the API): a
 * scanner waiting on the daemon sees us and gives the lock up. */
static inline void lib_lock(struct lib *l)
{
	if (pthread_mutex_trylock(&l->lock) == 0)
		return;
	__atomic_add_fetch(&l->waiters, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&l->lock);
	__atomic_sub_fetch(&l->waiters, 1, __ATOMIC_RELAXED);
}

/* ksmfile.c: the KSM files, for preload.c's open, fopen, read and write
 * wrappers (lock not held; see ksmfile.c). */
int ksmfile_init(struct lib *l);
void ksmfile_atfork_child(struct lib *l);
/* Are the files served in this image (the library is preloaded)? */
int ksmfile_enabled(void);
/* Does path (relative to dirfd) name a KSM file: 1 and *t, 0 (not one),
 * or -ENOENT (a name in /sys/kernel/mm/ksm samepage does not serve).
 * Needs no context: most opens are not of KSM files. */
int ksmfile_lookup(int dirfd, const char *path, struct ksm_target *t);
/* A descriptor for t, as open(2) with flags would give: fd or -errno. */
int ksmfile_open(struct lib *l, const struct ksm_target *t, int flags);
/* Does this image hold KSM files (then descriptors must be checked)? */
int ksmfile_armed(const struct lib *l);
/* Is fd a KSM file (ours, from any process or image): 1 and *t, or 0. */
int ksmfile_owned(int fd, struct ksm_target *t);
/* A KSM file open as descriptor fd (0-2) at exec: served from the start;
 * at exit, ksmfile_release() applies what is left (-EIO if refused). */
void ksmfile_hold(struct lib *l, int fd);
int ksmfile_release(struct lib *l);
/* Before a read of fd at off (-1: its file offset): a KSM file read from
 * its start shows its text as it is now. 0 or -errno. */
int ksmfile_before_read(struct lib *l, int fd, off_t off);
/* fd is about to be closed or replaced (close, dup2): bytes written into
 * a write-only KSM file past our write() (stdio's internal writes, as
 * bash's echo makes them) are applied now; an error is said on stderr.
 * 0 or -errno. */
int ksmfile_flush(struct lib *l, int fd);
/* write(2) on fd: *handled 0 when fd is not a KSM file; else the bytes
 * taken or the kernel's -errno. */
ssize_t ksmfile_write(struct lib *l, int fd, const void *buf, size_t n, int *handled);

/* scan.c: the scanner thread (lock held unless said). */
void *scan_thread(void *arg);                /* lock not held */
/* Unmerge every merged and zero page in [s, e) (MADV_UNMERGEABLE, run=2). */
int scan_unmerge(struct lib *l, uintptr_t s, uintptr_t e);

/* chunk.c: one chunk of an area (lock held). */
struct pass {
	uint64_t gen;
	int have_gen;
	uint64_t volatile_pages, unshared, merged, changed, inplace, moved, filled;
	uint64_t skipped;  /* quiet unique pages not read (smart_scan) */
	struct vma fresh;  /* the kernel's VMA, asked when the snapshot is stale */
};
int chunk_init(struct lib *l);
int chunk_scan(struct lib *l, struct area *a, uintptr_t s, uint32_t n, struct pass *ps);
/* Merge hints waiting for us (the last budget reply said so). */
int chunk_hints(struct lib *l, struct pass *ps);

/* defrag.c: after a quiet pass, scattered merged pages moved to
 * consecutive pool pages (C_MOVE), fewer VMAs (lock held). */
int defrag_init(struct lib *l);
int defrag_pass(struct lib *l, struct pass *ps);

/* Background work that gained nothing waits 1, 2, 4 ... up to max passes
 * before the next try (*backoff), from pass now on (*after); work that
 * gained resets it. */
static inline void pass_backoff(uint32_t *backoff, uint64_t *after, uint64_t now, int gained,
				uint32_t max)
{
	if (gained) {
		*backoff = 0;
		return;
	}
	*backoff = *backoff ? 2 * *backoff : 1;
	if (*backoff > max)
		*backoff = max;
	*after = now + *backoff;
}

/* What filling may copy (SAMEPAGE_FILL=0, zeros, 1). FILL_ALL, the
 * default: every gap, each page holding data taken out of its mapping
 * through UFFDIO_MOVE, which the kernel refuses for a page pinned for a
 * device (invariant 10; DESIGN.md, "Filling gaps"). FILL_ZEROS: only gaps
 * whose pages all read zeros, so that no page holding data changes
 * frame. Never a written copy of a merged page: nothing can vouch for its
 * frame. */
enum fill_mode { FILL_OFF, FILL_ZEROS, FILL_ALL };
/* Pages in one stretch at most: its writers wait while its gaps are
 * copied (a page takes about a microsecond). */
#define FILL_MAX_PAGES 2048u

/* fill.c: after a quiet pass, the unique pages between runs of merged
 * pages whose pool offsets follow their addresses join them in one VMA
 * (C_FILL; lock held). */
int fill_init(struct lib *l);
int fill_pass(struct lib *l, struct pass *ps);

/* evict.c (lock held; run and undo under os_uffd_hold_missing()): the
 * frozen pages a merge replaces are first moved out of the application's
 * mapping with UFFDIO_MOVE, which the kernel refuses for a page pinned
 * for a device (invariant 10). States per page of the span: */
enum evict_state {
	EV_NONE,      /* not asked, or put back */
	EV_MOVED,     /* out, in the scratch mapping: replace it */
	EV_SHARED,    /* a fork child maps it too, so no pin: replace it */
	EV_UNCHECKED, /* the kernel cannot move it (no writable anonymous VMA,
			 or Linux before 6.8): replace it as before */
	EV_PINNED,    /* may be pinned: leave it */
	EV_GONE,      /* dropped since it was compared: leave it */
};
struct evict {
	uintptr_t base;    /* the span's start: page p goes to scratch + (p - base) */
	size_t len;
	uintptr_t scratch; /* 0 until needed */
	int8_t *st;        /* the caller's, a state per page of the span */
};
/* The state of the page at p, of the span ev covers. */
static inline int8_t *evict_state(const struct evict *ev, uintptr_t p)
{
	return &ev->st[(p - ev->base) / SP_PAGE];
}
/* May the page at p be replaced? */
static inline int evict_replaceable(const struct evict *ev, uintptr_t p)
{
	int8_t s = *evict_state(ev, p);

	return s == EV_MOVED || s == EV_SHARED || s == EV_UNCHECKED;
}
void evict_init(struct evict *ev, uintptr_t s, uintptr_t e, int8_t *st);
/* Move the n pages at addr (one protection, prot; area flags vmflags) out;
 * st says how each went. -errno only when nothing could be tried. */
int evict_run(struct lib *l, struct evict *ev, uint32_t vmflags, uintptr_t addr, uint32_t n,
	      uint8_t prot);
/* Put the moved pages of the n at addr back (their replacement failed). */
void evict_undo(struct lib *l, struct evict *ev, uintptr_t addr, uint32_t n);
/* After the thaw: free the pages moved out; make pages left as maybe
 * pinned ours alone where no device holds them, for the next pass. */
void evict_close(struct lib *l, struct evict *ev);
/* Could a written copy of a merged page be pinned for a device, as far as
 * the process's descriptors tell (O_DIRECT files, io_uring buffers or
 * files, VFIO, RDMA...)? Then it must not be dropped (invariant 10).
 * Read once a pass; 1 when it cannot tell. */
int evict_copies_pinnable(struct lib *l);

/* merge.c (lock held) */
int merge_init(struct lib *l);
/* The stretch v[0..nv) (pool VMAs of one segment whose offsets follow
 * their addresses, anonymous gaps between them whose ids we hold as
 * holes) becomes one private mapping of the segment (fd): frozen, its
 * layout checked, every page not the pool's at its offset copied as an
 * anonymous page of the new mapping (!copy_ok: -EPERM instead, unless it
 * reads zeros; a written copy: -EPERM; a page the kernel will not move
 * out, maybe pinned: -EBUSY), which replaces the stretch. 0, or -errno
 * with the stretch as it was. */
int merge_fill(struct lib *l, struct area *a, const struct vma *v, uint32_t nv, int fd,
	       int copy_ok);
/* inplace: the VMA maps pool page id at addr already, and the page there is
 * its own written copy: merging drops the copy (MADV_DONTNEED), no mmap. */
struct merge_item { uintptr_t addr; uint32_t id; uint16_t ok; uint16_t inplace; };
/* Invariant 1: replace each page with its pool page only while frozen and
 * verified equal. Sets ok; items are sorted by addr, in one area. */
int merge_pages(struct lib *l, struct area *a, struct merge_item *it, uint32_t n);
/* Zero pages: freeze, verify all-zero, then drop them (the next read maps
 * the kernel's zero page) or, where the kernel has none, map them from the
 * daemon's zero segment. */
int merge_zero(struct lib *l, struct area *a, uintptr_t *addr, uint32_t n, uint32_t *ok);
/* Give [s, e) of area a back plain anonymous pages with the same bytes
 * (frozen while copied); drops the references of merged pages. */
int merge_restore(struct lib *l, struct area *a, uintptr_t s, uintptr_t e);
/* Discard merged pages of [s, e) for MADV_DONTNEED/FREE: fresh zeroed
 * anonymous pages (invariant 3). */
int merge_discard(struct lib *l, struct area *a, uintptr_t s, uintptr_t e);
/* The same for pool mappings in [s, e) that no entry knows as merged: an
 * mremap moved them here (their entries were forgotten), or they have not
 * been tracked again since. The kernel's VMAs decide. References stay on
 * the pending list, dropped once nothing maps them (invariant 2). */
int merge_discard_moved(struct lib *l, uintptr_t s, uintptr_t e);
/* A fork child whose references could not be handed over: every private
 * mapping of a pool becomes anonymous memory with the same bytes, before
 * the child runs (it is alone: nothing is frozen). 0 or -errno. */
int merge_detach_all(struct lib *l);

/* track.c: areas, entries, references to drop (lock held). */
int track_init(struct lib *l);
void entry_set(struct lib *l, struct entry *e, uint32_t state);
static inline struct entry *entry_of(struct area *a, uintptr_t p)
{
	return &a->e[(p - a->start) / SP_PAGE];
}
/* The reference an entry holds, as C_UNREF names it. */
uint32_t track_entry_ref(const struct entry *e);
/* Drop reference ref once no VMA of ours maps its page (invariant 2). */
void track_pend(struct lib *l, uint32_t ref);
/* fn for the part of [s, e) inside each area; the first error. */
int track_each(struct lib *l, uintptr_t s, uintptr_t e,
	       int (*fn)(struct lib *l, struct area *a, uintptr_t s, uintptr_t e));
/* The application unmapped or replaced [s, e): forget it, keep references
 * until no VMA maps them. */
void track_forget(struct lib *l, uintptr_t s, uintptr_t e);
/* Re-read the VMAs and rebuild the areas (after the ranges changed). */
int track_refresh(struct lib *l);
/* The daemon our references lived in died (client.c calls it back). */
void track_refs_lost(struct lib *l);
/* Counters from the entries themselves (a fork child's first pass). */
void track_recount(struct lib *l);
/* The area holding p, or NULL (areas are sorted and disjoint). */
struct area *track_area_at(struct lib *l, uintptr_t p);
/* This process's counters as reported to the daemon. */
/* Zero pages written since the scanner last looked become plain pages
 * now, as the kernel counts a KSM zero page off ksm_zero_pages at its write
 * fault: called where counters are read (ksm_stat, samepage_stat), so that
 * they agree at once (the kernel's selftest test_unmerge_zero_pages). Lock
 * held. */
void track_zero_settle(struct lib *l);
void lib_fill_stats(struct lib *l, struct sp_proc_stats *st);
/* Is the page a mapping of a samepage file (a pool page, or a zero page
 * from the zero segment) that unmerging must turn back into anonymous? */
int entry_mapped(const struct lib *l, const struct entry *e);

/* client.c (lock held) */
int client_init(struct lib *l);
/* An observer connection (no memory; full scans do not wait for it), the
 * daemon started as for our own when none answers; blocking, with
 * timeouts of timeout_s. The fd or -errno. Lock not needed. */
int client_observer(struct lib *l, int timeout_s, void *buf);
/* Connect if needed and wait for D_HELLO. -EAGAIN: the daemon is busy
 * (try later, the connection stays), other -errno: no daemon. */
int client_connect(struct lib *l);
/* Send a request and wait for its reply. A daemon that does not answer is
 * waited for; the wait gives way (-EAGAIN) when an application thread
 * wants the lock or deadline_ms (0: none) passes, and the reply is dealt
 * with when it comes (references in it are given back). -ENOTCONN when
 * the connection is gone, the daemon's own -errno for D_ACK errors. */
int client_call(struct lib *l, uint16_t type, const void *req, uint32_t len,
		uint16_t want, struct sp_msg *reply);
int client_call_fd(struct lib *l, uint16_t type, const void *req, uint32_t len, int fd,
		   uint16_t want, struct sp_msg *reply, int deadline_ms);
/* Drop references (id | SP_UNREF_COWED for written ones) / report pages
 * written (C_COW): queued in order, sent when the daemon takes them. */
void client_unref(struct lib *l, const uint32_t *ids, uint32_t n);
void client_cow(struct lib *l, const uint32_t *ids, uint32_t n);
/* Send what the queue holds, as far as the daemon takes it now. */
void client_flush(struct lib *l);
/* Does this process hold pool references (that a fork child would share)? */
int client_holds_refs(const struct lib *l);
/* Before fork(): make sure the child's references exist before the child
 * does (invariant 2), so that nothing the daemon or the parent does later
 * can free a page the child maps. k->mode KID_DETACH: that could not be
 * done now, the child must give back every pool page (merge_detach_all)
 * before it runs. */
void client_fork_prepare(struct lib *l, struct fork_kid *k);
void client_fork_parent(struct lib *l, struct fork_kid *k);
void client_fork_child(struct lib *l, struct fork_kid *k);
/* Make pool pages of n pages (page e[i].addr was offered with e[i].hash as
 * entry look[i] of the last C_LOOKUP); their bytes go through the page
 * pipe, not copied here. ids[i]: pool id with a reference ours, or
 * SP_POOL_NONE. */
int client_create(struct lib *l, const struct sp_lookup_ent *e, const uint32_t *look,
		  uint32_t n, uint32_t *ids);
void client_forget_pipe(struct lib *l);
/* The fd of pool page id's segment, fetched on first use; or -errno. */
int client_pool_fd(struct lib *l, uint32_t id);
/* The daemon's all-zero segment (fetched once per connection), or -errno. */
int client_zero_fd(struct lib *l);
/* Account for a reference taken (+1) or dropped (-1) into id's segment;
 * closes the segment when we hold none (so the daemon can retire it). */
void client_seg_ref(struct lib *l, uint32_t id, int delta);

#endif
