/* SPDX-License-Identifier: MIT */
/*
 * api — the public calls of include/samepage.h and the process's one
 * context (struct lib), created on first use.
 */
#define _GNU_SOURCE
#include "samepage.h"
#include "lib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "env.h"
#include "fault.h"

#define STACK_BYTES (2u << 20) /* TSan wants ~1 MiB of a given stack */

/* The one pointer to the context; written once under pthread_once. */
static struct lib *the_lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void warn_domain(void)
{
	fprintf(stderr, "samepage: SAMEPAGE_DOMAIN is longer than %d bytes: merging is off in "
			"process %d\n", SP_DOMAIN_MAX, (int)getpid());
}

/* The domain this image was started in (SAMEPAGE_DOMAIN, as inherited). */
static int lib_inherit_domain(struct lib *l)
{
	const char *d = sp_inherited()->domain;

	if (d && strlen(d) > SP_DOMAIN_MAX)
		return -EINVAL;
	snprintf(l->domain_name, sizeof(l->domain_name), "%s", d ? d : "");
	l->domain = sp_domain_id(l->domain_name);
	return 0;
}

/* Once per process; not at all under a `samepage run` that already gave
 * the exact commands, or each process it starts would repeat them. */
static void warn_uffd(int err)
{
	if (sp_inherited()->uffd_warned)
		return;
	fprintf(stderr,
		"samepage: cannot merge memory in process %d: userfaultfd with write-protect "
		"is not available (%s).\n"
		"samepage: it needs read-write access to /dev/userfaultfd (samepage's udev rule "
		"gives it to group samepage: sudo groupadd -f samepage && sudo usermod -aG "
		"samepage $USER, then log in again), or vm.unprivileged_userfaultfd=1, or root.\n",
		(int)getpid(), strerror(-err));
}

static void atfork_prepare(void) __attribute__((unused));
static void atfork_parent(void) __attribute__((unused));
static void atfork_child(void) __attribute__((unused));

#define STAT_WAIT_MS 2000

/* The arena's first chunk: the context and the buffers lib_create takes
 * (25.3 MiB in power-of-two blocks), and page entries for the first GiB
 * or so; more grows the arena. */
#define LIB_ARENA_FIRST (28u << 20)

static void lib_create(void)
{
	struct lib *l = arena_create(sizeof(*l), offsetof(struct lib, arena), LIB_ARENA_FIRST);
	struct arena *ar;

	/* The environment as of now, for the scanner (env.h): no thread of
	 * ours reads the copy yet. */
	sp_env_refresh();
	if (!l) {
		fprintf(stderr, "samepage: no address space for the library's %u MiB in process "
				"%d (ulimit -v?): merging is off\n", LIB_ARENA_FIRST >> 20, (int)getpid());
		return;
	}
	ar = &l->arena;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->wake, NULL);
	l->stack = arena_alloc(ar, STACK_BYTES);
	l->zpage = arena_alloc(ar, SP_PAGE);
	l->pmfd = raw_open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
	l->mem_fd = raw_open("/proc/self/mem", O_RDONLY | O_CLOEXEC, 0);
	l->mapsfd = raw_open("/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
	/* Each part sets up its own state (lib.h): no part sizes another's. */
	if (!l->stack || !l->zpage || l->pmfd < 0 || l->mapsfd < 0 || client_init(l) ||
	    track_init(l) || chunk_init(l) || defrag_init(l) || fill_init(l) || merge_init(l) ||
	    ksmfile_init(l))
		return; /* the_lib stays NULL: every call says -ENOMEM */
	l->refs_lost = track_refs_lost; /* client.c reports a dead daemon upward */
	l->max_map_count = os_max_map_count();
	l->debug = sp_env("SAMEPAGE_DEBUG") && *sp_env("SAMEPAGE_DEBUG") == '1';
	l->zero_page_ok = os_has_zero_page(l->pmfd);
	/* Once, not per page: the arena hands out zeroed memory. */
	l->zero_hash = XXH3_64bits(l->zpage, SP_PAGE);
	l->uffd = os_uffd_open();
	if (l->uffd < 0)
		warn_uffd(l->uffd);
	/* SAMEPAGE_FAULT=move: as on Linux before 6.8. Read here, never under
	 * a freeze: the environment may lie in memory being merged (Redis
	 * moves it to its heap), and a read of it would wait on us. */
	l->no_move = fault_inject("move");
	/* Too long a domain name is an error, never cut (two names alike in
	 * their first bytes would merge): merging stays off, said at start. */
	if (lib_inherit_domain(l) < 0) {
		warn_domain();
		if (l->uffd >= 0)
			raw_close(l->uffd);
		l->uffd = -EINVAL;
	}
#if !defined(__SANITIZE_THREAD__)
	/* Not under ThreadSanitizer: its fork interceptor holds its own locks
	 * while libc runs these handlers, and our lock calls go through it. */
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
#endif
	/* Published with release: lib_peek() on another thread (a wrapper)
	 * reads it without pthread_once and must see l whole. */
	__atomic_store_n(&the_lib, l, __ATOMIC_RELEASE);
}

struct lib *lib_get(void)
{
	pthread_once(&lib_once, lib_create);
	return the_lib;
}

struct lib *lib_peek(void)
{
	return __atomic_load_n(&the_lib, __ATOMIC_ACQUIRE);
}

/* lock held */
int lib_start_scanner(struct lib *l)
{
	pthread_attr_t at;
	int err;

	if (l->scanner_running || l->uffd < 0)
		return l->uffd < 0 ? l->uffd : 0;
	/* Merged pages are private file pages: keep them in core dumps (invariant 3). */
	os_coredump_private_file();
	pthread_attr_init(&at);
	/* Our own stack, in our own named mapping: the scanner must never
	 * freeze a page it is about to write. */
	pthread_attr_setstack(&at, l->stack, STACK_BYTES);
	err = -pthread_create(&l->scanner, &at, scan_thread, l);
	pthread_attr_destroy(&at);
	if (!err) {
		pthread_detach(l->scanner);
		l->scanner_running = 1;
	}
	return err;
}

/* ---- what the wrappers ask (lock held) ---- */

int lib_tracked(struct lib *l, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < l->nareas; i++)
		if (l->areas[i].start < e && l->areas[i].end > s)
			return 1;
	return 0;
}

static int discard_area(struct lib *l, struct area *a, uintptr_t s, uintptr_t e)
{
	int err = merge_discard(l, a, s, e);

	/* Zero pages stay zero pages after a discard: forget them. */
	for (uintptr_t p = s; p < e; p += SP_PAGE)
		if (entry_of(a, p)->state == E_ZERO)
			entry_set(l, entry_of(a, p), E_NEW);
	return err;
}

int lib_discard(struct lib *l, uintptr_t s, uintptr_t e)
{
	int err = track_each(l, s, e, discard_area);
	int err2 = merge_discard_moved(l, s, e);

	return err ? err : err2;
}

void lib_attrs_changed(struct lib *l, uintptr_t s, uintptr_t e)
{
	if (lib_tracked(l, s, e))
		track_refresh(l);
}

int lib_unmerge_range(struct lib *l, uintptr_t s, uintptr_t e)
{
	return lib_tracked(l, s, e) ? scan_unmerge(l, s, e) : 0;
}

void lib_forget(struct lib *l, uintptr_t s, uintptr_t e)
{
	track_forget(l, s, e);
}

/* Invariant 4: memory the application registers with its own userfaultfd
 * is its own. We step aside before the kernel registers it: merged pages
 * there become anonymous again while we can still freeze them (afterwards
 * our registration would fail with EBUSY), so every write-protect and
 * missing fault there is the application's from the first one, and the
 * VMA, now userfaultfd-registered, is no longer tracked (track_eligible()).
 * Kernel KSM keeps such pages merged and unshares them without a write
 * fault (FAULT_FLAG_UNSHARE), which user space cannot do: an unmerge
 * after the application's write-protect would have to write, and the write
 * fault would reach its handler. The lock also keeps our freeze (a
 * registration of our own) from making the application's fail with EBUSY. */
int lib_foreign_uffd_register(struct lib *l, int fd, unsigned long req, void *reg)
{
	struct uffdio_register r;
	uintptr_t s, e;
	long ret;

	lib_lock(l);
	if (os_copy_in(&r, reg, sizeof(r)) == 0) {
		s = (uintptr_t)r.range.start & ~(uintptr_t)(SP_PAGE - 1);
		e = (uintptr_t)r.range.start + r.range.len;
		if (e > s && lib_tracked(l, s, e)) {
			scan_unmerge(l, s, e);
			track_refresh(l);
		}
	}
	ret = syscall(SYS_ioctl, fd, req, reg);
	pthread_mutex_unlock(&l->lock);
	return ret < 0 ? -errno : (int)ret;
}

/* ---- madvise ---- */

static int ranges_add(struct lib *l, uintptr_t s, uintptr_t e)
{
	struct range *r = l->ranges;
	uint32_t i = 0, j;

	while (i < l->nranges && r[i].end < s)
		i++;
	/* Ranges i..j-1 touch [s, e): fold them into one. */
	for (j = i; j < l->nranges && r[j].start <= e; j++) {
		s = r[j].start < s ? r[j].start : s;
		e = r[j].end > e ? r[j].end : e;
	}
	if (j == i && l->nranges == LIB_MAX_RANGES)
		return -ENOMEM;
	memmove(&r[i + 1], &r[j], (l->nranges - j) * sizeof(*r));
	l->nranges = l->nranges - (j - i) + 1;
	r[i] = (struct range){ s, e };
	return 0;
}

/* In place: this runs on the application's stack. */
static int ranges_remove(struct lib *l, uintptr_t s, uintptr_t e)
{
	struct range *r = l->ranges;
	uint32_t i = 0, j;

	while (i < l->nranges && r[i].end <= s)
		i++;
	if (i == l->nranges || r[i].start >= e)
		return 0;
	if (r[i].start < s && r[i].end > e) { /* a hole in the middle of one range */
		if (l->nranges == LIB_MAX_RANGES)
			return -ENOMEM;
		memmove(&r[i + 1], &r[i], (l->nranges - i) * sizeof(*r));
		l->nranges++;
		r[i].end = s;
		r[i + 1].start = e;
		return 0;
	}
	if (r[i].start < s)
		r[i++].end = s;
	for (j = i; j < l->nranges && r[j].end <= e; j++)
		; /* [i, j) lie inside [s, e) */
	if (j < l->nranges && r[j].start < e)
		r[j].start = e;
	memmove(&r[i], &r[j], (l->nranges - j) * sizeof(*r));
	l->nranges -= j - i;
	return 0;
}

/* MADV_MERGEABLE is a property of the mapping, as the kernel's
 * VM_MERGEABLE is of the VMA: it goes with an unmap or a replacement, and
 * moves with mremap. Lock held. */
/* Does [s, e) touch a madvised range? */
static int ranges_touch(const struct lib *l, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < l->nranges; i++)
		if (l->ranges[i].start < e && l->ranges[i].end > s)
			return 1;
	return 0;
}

void lib_ranges_unmapped(struct lib *l, uintptr_t s, uintptr_t e)
{
	if (!ranges_touch(l, s, e))
		return;
	ranges_remove(l, s, e);
	/* The areas follow at once, not at the next pass: a mapping made
	 * there next must not be scanned by the pass under way (merge-any
	 * needs none of this: every anonymous mapping is eligible). */
	if (!l->merge_any)
		track_refresh(l);
}

void lib_ranges_moved(struct lib *l, uintptr_t old, size_t oldlen, uintptr_t new_, size_t len,
		      int keep_old)
{
	struct range moved[8];
	uint32_t n = 0;
	uintptr_t oe = old + (oldlen < len ? oldlen : len);

	/* The madvised parts of what moved, shifted to where it went. */
	for (uint32_t i = 0; i < l->nranges && n < 8; i++) {
		uintptr_t rs = l->ranges[i].start > old ? l->ranges[i].start : old;
		uintptr_t re = l->ranges[i].end < oe ? l->ranges[i].end : oe;
		if (rs < re)
			moved[n++] = (struct range){ rs - old + new_, re - old + new_ };
	}
	if (!keep_old)
		ranges_remove(l, old, old + oldlen);
	ranges_remove(l, new_, new_ + len); /* whatever was mapped there went */
	for (uint32_t i = 0; i < n; i++)
		ranges_add(l, moved[i].start, moved[i].end);
	/* A range grown in place stays madvised up to where the old one was:
	 * the kernel's grown VMA keeps its flags. */
	if (len > oldlen && new_ == old && n && moved[n - 1].end == oe)
		ranges_add(l, oe, old + len);
	if (n && !l->merge_any)
		track_refresh(l); /* as lib_ranges_unmapped() */
}

/* -ENOMEM when [s, e) has unmapped gaps, as madvise(2). */
static int check_mapped(struct lib *l, uintptr_t s, uintptr_t e)
{
	int err = os_read_vmas(&l->vmas, l->text, TEXT_BYTES);

	if (err)
		return err;
	for (uintptr_t p = s; p < e;) {
		const struct vma *v = os_vma_find(&l->vmas, p);
		if (!v)
			return -ENOMEM;
		p = v->end;
	}
	return 0;
}

int samepage_madvise(void *addr, size_t len, int advice)
{
	uintptr_t s = (uintptr_t)addr, e;
	struct lib *l;
	int err, gaps;

	if (advice != MADV_MERGEABLE && advice != MADV_UNMERGEABLE)
		return -EINVAL;
	/* madvise(2): start page aligned; len rounded up, without overflow. */
	if (s & (SP_PAGE - 1))
		return -EINVAL;
	e = s + ((len + SP_PAGE - 1) & ~(size_t)(SP_PAGE - 1));
	if ((len && e == s) || e < s)
		return -EINVAL;
	if (e == s)
		return 0;
	l = lib_get();
	if (!l)
		return -ENOMEM;
	lib_lock(l);
	gaps = check_mapped(l, s, e);
	if (gaps && gaps != -ENOMEM) {
		err = gaps;
		goto out;
	}
	if (advice == MADV_MERGEABLE) {
		err = ranges_add(l, s, e);
		if (!err)
			err = lib_start_scanner(l) == 0 || l->uffd < 0 ? 0 : -EAGAIN;
		lib_kick(l);
	} else {
		err = scan_unmerge(l, s, e);
		if (!err)
			err = ranges_remove(l, s, e);
		if (!err)
			err = track_refresh(l);
	}
	if (!err)
		err = gaps;
out:
	pthread_mutex_unlock(&l->lock);
	return err;
}

int samepage_set_merge_any(int enable)
{
	struct lib *l = lib_get();
	int err = 0;

	if (!l)
		return -ENOMEM;
	lib_lock(l);
	if (enable) {
		/* Kernel semantics: inherited across exec; the exec wrappers put
		 * SAMEPAGE_MERGE_ANY=1 into the next image's environment (we
		 * never write our own: see env.h). */
		__atomic_store_n(&l->merge_any, 1, __ATOMIC_RELAXED);
		err = lib_start_scanner(l);
		if (l->uffd < 0)
			err = 0; /* warned; the kernel would accept it too */
		lib_kick(l);
	} else if (l->merge_any) {
		/* As ksm_disable_merge_any(): everything is unmerged. */
		__atomic_store_n(&l->merge_any, 0, __ATOMIC_RELAXED);
		l->nranges = 0;
		err = scan_unmerge(l, 0, UINTPTR_MAX);
		if (!err)
			err = track_refresh(l);
	}
	pthread_mutex_unlock(&l->lock);
	return err;
}

int samepage_set_domain(const char *name)
{
	struct lib *l;
	int err = 0;

	if (name && strlen(name) > SP_DOMAIN_MAX)
		return -EINVAL;
	l = lib_get();
	if (!l)
		return -ENOMEM;
	lib_lock(l);
	/* The domain travels with C_HELLO; pages merged in one stay in it. */
	if (l->sock >= 0 || l->instance || client_holds_refs(l)) {
		err = -EBUSY;
	} else {
		snprintf(l->domain_name, sizeof(l->domain_name), "%s", name ? name : "");
		l->domain = sp_domain_id(l->domain_name);
	}
	pthread_mutex_unlock(&l->lock);
	return err;
}

int samepage_get_merge_any(void)
{
	struct lib *l = lib_peek();

	/* Read without the lock: prctl(PR_GET_MEMORY_MERGE) must not wait for a merge. */
	return l ? __atomic_load_n(&l->merge_any, __ATOMIC_RELAXED) : 0;
}

static void local_stats(struct lib *l, struct samepage_stat *st)
{
	struct sp_proc_stats p;

	track_zero_settle(l);
	lib_fill_stats(l, &p);
	st->ksm_rmap_items = p.rmap_items;
	st->ksm_zero_pages_process = p.zero_pages;
	st->ksm_merging_pages = p.merging_pages;
	st->ksm_process_profit = (int64_t)(p.merging_pages + p.zero_pages) * SP_PAGE -
				 (int64_t)p.rmap_items * SP_ENTRY_BYTES;
	st->ksm_merge_any = (int)p.merge_any;
	st->ksm_mergeable = (int)p.mergeable;
}

int samepage_stat(struct samepage_stat *st)
{
	struct lib *l = lib_get();
	struct sp_statreq q = { 0 };
	struct sp_msg m;
	struct sp_stat_r r;
	int err;

	memset(st, 0, sizeof(*st));
	if (!l)
		return -ENOMEM;
	lib_lock(l);
	local_stats(l, st);
	err = client_connect(l);
	/* The daemon may be stalled: a caller gets -EAGAIN after a while
	 * rather than waiting with it. */
	if (!err)
		err = client_call_fd(l, C_STAT, &q, sizeof(q), -1, D_STAT, &m, STAT_WAIT_MS);
	if (!err)
		memcpy(&r, m.p, sizeof(r));
	pthread_mutex_unlock(&l->lock);
	if (err)
		return err;
	st->pages_shared = r.g.pages_shared;
	st->pages_sharing = r.g.pages_sharing;
	st->pages_unshared = r.g.pages_unshared;
	st->pages_volatile = r.g.pages_volatile;
	st->pages_scanned = r.g.pages_scanned;
	st->full_scans = r.g.full_scans;
	st->ksm_zero_pages = r.g.ksm_zero_pages;
	st->general_profit = r.g.general_profit;
	st->stable_node_chains = r.g.stable_node_chains;
	st->stable_node_dups = r.g.stable_node_dups;
	st->pool_pages = r.g.pool_pages;
	st->pool_segments = r.g.pool_segments;
	st->merge_vmas = r.g.merge_vmas;
	st->vma_limited = r.g.vma_limited;
	st->processes = r.g.processes;
	return 0;
}

int samepage_scan_now(void)
{
	struct lib *l = lib_get();
	struct timespec ts;
	uint64_t target;
	int err = 0;

	if (!l)
		return -ENOMEM;
	if (l->uffd < 0)
		return l->uffd;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	lib_lock(l);
	err = lib_start_scanner(l);
	/* The pass under way may have begun before the caller's change; the
	 * one after it has not. */
	target = l->pass_seq + 2;
	lib_kick(l);
	while (!err && l->pass_seq < target) {
		if (pthread_cond_timedwait(&l->wake, &l->lock, &ts) == ETIMEDOUT)
			err = -ETIMEDOUT;
		else
			lib_kick(l);
	}
	pthread_mutex_unlock(&l->lock);
	return err;
}

/* ---- fork ---- */

void lib_fork_prepare(struct lib *l, struct fork_kid *k)
{
	client_fork_prepare(l, k);
	k->done[0] = k->done[1] = -1;
	if (k->mode == KID_DETACH && pipe2(k->done, O_CLOEXEC) < 0)
		k->done[0] = k->done[1] = -1;
}

/* KID_DETACH: the child gives back every pool page before it runs; until
 * it has, none of our references may go (it maps their pages too). */
static void wait_detached(struct lib *l, struct fork_kid *k)
{
	unsigned char st = 0;

	if (k->done[0] < 0) {
		l->keep_refs = 1; /* we cannot know when it is done */
		return;
	}
	raw_close(k->done[1]);
	while (raw_read(k->done[0], &st, 1) < 0 && errno == EINTR)
		;
	raw_close(k->done[0]);
	/* No byte: it died, and maps nothing now. */
	if (st == 2)
		l->keep_refs = 1;
}

void lib_atfork_parent(struct lib *l, struct fork_kid *k)
{
	if (k->mode == KID_DETACH)
		wait_detached(l, k);
	client_fork_parent(l, k);
}

void lib_atfork_child(struct lib *l, struct fork_kid *k)
{
	/* One thread now: the environment can be read safely (env.h). */
	sp_env_refresh();
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->wake, NULL);
	/* The parent's userfaultfd belongs to the parent's mm. */
	if (l->uffd >= 0)
		raw_close(l->uffd);
	l->uffd = os_uffd_open();
	/* /proc/self/... named the parent when it was opened. */
	raw_close(l->pmfd);
	raw_close(l->mapsfd);
	if (l->mem_fd >= 0)
		raw_close(l->mem_fd);
	l->pmfd = raw_open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
	l->mapsfd = raw_open("/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
	l->mem_fd = raw_open("/proc/self/mem", O_RDONLY | O_CLOEXEC, 0);
	ksmfile_atfork_child(l);
	if (k->mode == KID_DETACH) {
		unsigned char st = merge_detach_all(l) == 0 ? 1 : 2;
		if (k->done[1] >= 0 && raw_write(k->done[1], &st, 1) != 1) {
			/* the parent then counts us as failed or dead: it keeps its references */
		}
		if (k->done[0] >= 0) {
			raw_close(k->done[0]);
			raw_close(k->done[1]);
		}
	}
	client_fork_child(l, k);
	l->forking = 0;
	l->scanner_running = 0;
	l->pass_seq = 0;
	/* Merged-page counters are not inherited (kernel semantics); the
	 * child's first pass counts its own. */
	l->st.unshared = l->st.volatile_pages = 0;
	l->st.rmap_items = l->st.merging = l->st.zero = l->st.cowed = 0;
	l->recount_pending = 1;
	/* Let the child settle first: a fork child often execs or exits soon
	 * (Redis's BGSAVE writes its dump and exits), and its memory is still
	 * shared with the parent's; its first pass waits for the idle
	 * interval instead of competing with it at once. A madvise or prctl
	 * of its own still starts it at once. */
	l->first_pass_delay_ms = 2000;
	if (l->merge_any || l->nranges)
		lib_start_scanner(l);
}

/* Forks the wrappers do not see: libc's own (daemon(3)) run these. A fork
 * through the wrapper runs them too, and they step aside. */
static int unwrapped(struct lib *l)
{
	return l && !(l->forking && pthread_equal(l->forker, pthread_self()));
}

static void atfork_prepare(void)
{
	struct lib *l = lib_peek();

	if (!unwrapped(l))
		return;
	lib_lock(l);
	lib_fork_prepare(l, &l->atfork_kid);
	l->atfork_active = 1;
}

static void atfork_parent(void)
{
	struct lib *l = lib_peek();

	if (!l || !l->atfork_active || !unwrapped(l))
		return;
	l->atfork_active = 0;
	lib_atfork_parent(l, &l->atfork_kid);
	pthread_mutex_unlock(&l->lock);
}

static void atfork_child(void)
{
	struct lib *l = lib_peek();

	if (!l || !l->atfork_active || !unwrapped(l))
		return;
	l->atfork_active = 0;
	lib_atfork_child(l, &l->atfork_kid);
}

/* Under `samepage run --merge-any`, or after prctl() in an image that exec'd
 * us: merging starts with the process. */
__attribute__((constructor)) static void lib_autostart(void)
{
	const char *v = sp_env("SAMEPAGE_MERGE_ANY");

	if (v && *v == '1')
		samepage_set_merge_any(1);
}
