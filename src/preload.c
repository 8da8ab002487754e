/* SPDX-License-Identifier: MIT */
/*
 * preload — kernel-interface compatibility. libsamepage exports madvise,
 * prctl, mmap, munmap, mremap, fork, execve and execvpe, so a program run
 * under `samepage run` (LD_PRELOAD) or linked with the library gets kernel
 * KSM's interface served by samepage, and its own changes to memory we
 * merged keep anonymous-memory semantics.
 *
 * Until a process asks for merging, every wrapper is the plain system call
 * plus one load of a pointer. glibc's internal calls (malloc's trimming,
 * for one) bypass these wrappers; scan.c copes with what they change.
 */
#define _GNU_SOURCE
#include "lib.h"
#include "samepage.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

#define EXPORT __attribute__((visibility("default")))

static int set_errno(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (int)r;
}

/* Is anything tracked in [s, e)? Lock held. */
static int tracked(struct lib *l, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < l->nareas; i++)
		if (l->areas[i].start < e && l->areas[i].end > s)
			return 1;
	return 0;
}

static void discard_merged(struct lib *l, uintptr_t s, uintptr_t e)
{
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		uintptr_t from = s > a->start ? s : a->start, to = e < a->end ? e : a->end;
		if (from >= to)
			continue;
		merge_discard(l, a, from, to);
		/* Zero pages stay zero pages after a discard: forget them. */
		for (uintptr_t p = from; p < to; p += SP_PAGE)
			if (a->e[(p - a->start) / SP_PAGE].state == E_ZERO)
				entry_set(l, &a->e[(p - a->start) / SP_PAGE], E_NEW);
	}
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
	struct lib *l;
	uintptr_t s = (uintptr_t)addr, e = s + len;
	int r;

	if (advice == MADV_MERGEABLE || advice == MADV_UNMERGEABLE)
		return set_errno(samepage_madvise(addr, len, advice));
	l = lib_peek();
	if (l && advice == MADV_REMOVE && e >= s) {
		/* On private anonymous memory the kernel says EINVAL; on the
		 * private file mapping of a merged page it would say EACCES. */
		pthread_mutex_lock(&l->lock);
		r = tracked(l, s, e);
		pthread_mutex_unlock(&l->lock);
		if (r)
			return set_errno(-EINVAL);
	}
	if (!l || (advice != MADV_DONTNEED && advice != MADV_FREE &&
		   advice != MADV_DONTNEED_LOCKED) || e < s)
		return (int)syscall(SYS_madvise, addr, len, advice);
	pthread_mutex_lock(&l->lock);
	/* Invariant 3: merged pages first become anonymous zero pages, then
	 * the kernel applies the advice to plain anonymous memory. */
	if (!(s & (SP_PAGE - 1)) && tracked(l, s, e))
		discard_merged(l, s, (e + SP_PAGE - 1) & ~(uintptr_t)(SP_PAGE - 1));
	r = (int)syscall(SYS_madvise, addr, len, advice);
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT int prctl(int option, ...)
{
	unsigned long a[4];
	va_list ap;

	va_start(ap, option);
	for (int i = 0; i < 4; i++)
		a[i] = va_arg(ap, unsigned long);
	va_end(ap);
	/* Kernel semantics: unused arguments must be 0 (kernel/sys.c). */
	if (option == PR_SET_MEMORY_MERGE) {
		if (a[1] || a[2] || a[3])
			return set_errno(-EINVAL);
		return set_errno(samepage_set_merge_any(a[0] != 0));
	}
	if (option == PR_GET_MEMORY_MERGE) {
		if (a[0] || a[1] || a[2] || a[3])
			return set_errno(-EINVAL);
		return samepage_get_merge_any();
	}
	return (int)syscall(SYS_prctl, option, a[0], a[1], a[2], a[3]);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct lib *l = lib_peek();
	uintptr_t s = (uintptr_t)addr;
	void *r;

	if (!l || !(flags & MAP_FIXED))
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	/* Replacing memory we track: never in the middle of a merge. */
	pthread_mutex_lock(&l->lock);
	r = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	if (r != MAP_FAILED)
		scan_forget(l, s, s + len);
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

EXPORT int munmap(void *addr, size_t len)
{
	struct lib *l = lib_peek();
	uintptr_t s = (uintptr_t)addr;
	int r;

	if (!l)
		return (int)syscall(SYS_munmap, addr, len);
	pthread_mutex_lock(&l->lock);
	r = (int)syscall(SYS_munmap, addr, len);
	if (r == 0)
		scan_forget(l, s, s + len);
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT void *mremap(void *old, size_t oldlen, size_t len, int flags, ...)
{
	struct lib *l = lib_peek();
	void *new_addr = NULL, *r;
	va_list ap;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	if (!l)
		return (void *)syscall(SYS_mremap, old, oldlen, len, flags, new_addr);
	pthread_mutex_lock(&l->lock);
	r = (void *)syscall(SYS_mremap, old, oldlen, len, flags, new_addr);
	if (r != MAP_FAILED) {
		/* Moved merged pages keep their pool pages mapped: the pending
		 * list drops those references only once nothing maps them. */
		scan_forget(l, (uintptr_t)old, (uintptr_t)old + oldlen);
		if (flags & MREMAP_FIXED)
			scan_forget(l, (uintptr_t)r, (uintptr_t)r + len);
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT pid_t fork(void)
{
	static pid_t (*real_fork)(void); /* resolved once; any thread may race to it */
	pid_t (*rf)(void) = __atomic_load_n(&real_fork, __ATOMIC_ACQUIRE);
	struct lib *l = lib_peek();
	uint64_t token = 0;
	int fd = -1, ferr;
	pid_t pid;

	if (!rf) {
		rf = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
		__atomic_store_n(&real_fork, rf, __ATOMIC_RELEASE);
	}
	if (!l)
		return rf();
	pthread_mutex_lock(&l->lock);
	/* Invariant 2 across fork: the child's connection holds a copy of our
	 * references before the child exists. Without one, the child's merged
	 * pages would have no owner; fail the fork as the kernel would on ENOMEM. */
	if (l->sock >= 0 && (ferr = client_fork_conn(l, &fd, &token)) < 0) {
		if (l->debug) {
			char b[96];
			int k = snprintf(b, sizeof(b), "samepage[%d]: fork refused: %d\n", (int)getpid(), ferr);
			if (k > 0 && write(2, b, (size_t)k) < 0) {
			}
		}
		pthread_mutex_unlock(&l->lock);
		errno = ENOMEM;
		return -1;
	}
	pid = rf();
	if (pid == 0) {
		pthread_mutex_init(&l->lock, NULL);
		pthread_cond_init(&l->wake, NULL);
		if (l->sock >= 0)
			close(l->sock);
		l->sock = fd;
		l->token = token;
		/* The page pipe is the parent's: the child opens its own. */
		client_forget_pipe(l);
		/* The parent's userfaultfd belongs to the parent's mm. */
		if (l->uffd >= 0)
			close(l->uffd);
		l->uffd = os_uffd_open();
		/* /proc/self/... named the parent when it was opened. */
		close(l->pmfd);
		close(l->mapsfd);
		l->pmfd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		l->mapsfd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
		l->scanner_running = 0;
		l->pass_seq = 0;
		/* Merged-page counters are not inherited (kernel semantics);
		 * the child's first pass counts its own. */
		l->st.unshared = l->st.volatile_pages = 0;
		l->st.rmap_items = l->st.merging = l->st.zero = l->st.cowed = 0;
		l->recount_pending = 1;
		/* Let the child settle first: a fork child often execs or exits
		 * soon (Redis's BGSAVE writes its dump and exits), and its memory
		 * is still shared with the parent's; its first pass waits for the
		 * idle interval instead of competing with it at once. A madvise or
		 * prctl of its own still starts it at once. */
		l->first_pass_delay_ms = 2000;
		if (l->merge_any || l->nranges)
			lib_start_scanner(l);
		return 0;
	}
	if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&l->lock);
	return pid;
}

/* Merge-any is inherited across exec: keep the variables that carry it in
 * an environment the caller built itself. */
static char **with_merge_env(char *const envp[], char **buf, size_t max)
{
	struct lib *l = lib_peek();
	const char *pre = getenv("LD_PRELOAD");
	size_t n = 0;
	int has_any = 0, has_pre = 0;

	if (!l || !l->merge_any)
		return (char **)envp;
	for (; envp && envp[n] && n + 3 < max; n++) {
		buf[n] = envp[n];
		has_any |= !strncmp(envp[n], "SAMEPAGE_MERGE_ANY=", 19);
		has_pre |= !strncmp(envp[n], "LD_PRELOAD=", 11);
	}
	if (envp && envp[n])
		return (char **)envp; /* too many to copy; leave it as it is */
	if (!has_any)
		buf[n++] = "SAMEPAGE_MERGE_ANY=1";
	if (!has_pre && pre)
		buf[n++] = (char *)pre - strlen("LD_PRELOAD="); /* environ's own string */
	buf[n] = NULL;
	return buf;
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	char *buf[4096];

	return (int)syscall(SYS_execve, path, argv, with_merge_env(envp, buf, 4096));
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	int (*real)(const char *, char *const[], char *const[]) =
		(int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execvpe");
	char *buf[4096];

	return real(file, argv, with_merge_env(envp, buf, 4096));
}
