/* SPDX-License-Identifier: MIT */
/*
 * preload — kernel-interface compatibility. libsamepage exports madvise,
 * prctl, ioctl (UFFDIO_REGISTER), mprotect, pkey_mprotect, the mlock
 * family, mmap, munmap, mremap, fork, _Fork, the exec family and
 * posix_spawn, so a program run
 * under `samepage run` (LD_PRELOAD) or linked with the library gets kernel
 * KSM's interface served by samepage, and its own changes to memory we
 * merged keep anonymous-memory semantics.
 *
 * Until a process asks for merging, every wrapper is the plain system call
 * plus one load of a pointer. glibc's internal calls (malloc's trimming,
 * for one) bypass these wrappers; scan.c copes with what they change.
 */
#define _GNU_SOURCE
#include "exe.h"
#include "lib.h"
#include "samepage.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <spawn.h>
#include <unistd.h>

#include "env.h"
#include "path.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define EXPORT __attribute__((visibility("default")))

static size_t page_up(size_t len)
{
	return (len + SP_PAGE - 1) & ~(size_t)(SP_PAGE - 1);
}

static int set_errno(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (int)r;
}

/* The attributes a merge carries over to the pool mapping (mlock,
 * MADV_DONTDUMP and DONTFORK, THP advice) are the tracked areas'. A change
 * the application makes refreshes them under lib.lock, so no merge brings
 * back what it just undid (tests/integration/chaos.c: a range mlock'ed,
 * munlock'ed, merged meanwhile, stayed locked and MADV_DONTNEED failed). */
static int attr_call(long nr, uintptr_t s, uintptr_t e, long a0, long a1, long a2)
{
	struct lib *l = lib_peek();
	int r;

	if (!l)
		return (int)syscall(nr, a0, a1, a2);
	lib_lock(l);
	r = (int)syscall(nr, a0, a1, a2);
	if (r == 0)
		lib_attrs_changed(l, s, e);
	pthread_mutex_unlock(&l->lock);
	return r;
}

static int carried_advice(int advice)
{
	return advice == MADV_DONTDUMP || advice == MADV_DODUMP || advice == MADV_DONTFORK ||
	       advice == MADV_DOFORK || advice == MADV_HUGEPAGE || advice == MADV_NOHUGEPAGE;
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
	struct lib *l;
	uintptr_t s = (uintptr_t)addr, e = s + len;
	int r;

	if (advice == MADV_MERGEABLE || advice == MADV_UNMERGEABLE)
		return set_errno(samepage_madvise(addr, len, advice));
	if (carried_advice(advice))
		return attr_call(SYS_madvise, s, e, (long)addr, (long)len, advice);
	l = lib_peek();
	if (l && advice == MADV_WIPEONFORK && !(s & (SP_PAGE - 1)) && e > s) {
		/* Private anonymous memory only, says the kernel (EINVAL on a
		 * file mapping, which a merged page is): merged pages of the
		 * range become anonymous first; the VMA, wiped on fork, is not
		 * merged again (track_eligible()). */
		lib_lock(l);
		lib_unmerge_range(l, s, (e + SP_PAGE - 1) & ~(uintptr_t)(SP_PAGE - 1));
		r = (int)syscall(SYS_madvise, addr, len, advice);
		/* Untracked now, before any pass merges it again (a pool
		 * mapping would not be wiped on fork). */
		if (r == 0)
			lib_attrs_changed(l, s, e);
		pthread_mutex_unlock(&l->lock);
		return r;
	}
	if (l && advice == MADV_REMOVE && e >= s) {
		/* On private anonymous memory the kernel says EINVAL; on the
		 * private file mapping of a merged page it would say EACCES. */
		lib_lock(l);
		r = lib_tracked(l, s, e);
		pthread_mutex_unlock(&l->lock);
		if (r)
			return set_errno(-EINVAL);
	}
	if (!l || (advice != MADV_DONTNEED && advice != MADV_FREE &&
		   advice != MADV_DONTNEED_LOCKED) || e < s)
		return (int)syscall(SYS_madvise, addr, len, advice);
	lib_lock(l);
	/* Invariant 3: merged pages first become anonymous zero pages, then
	 * the kernel applies the advice to plain anonymous memory. */
	if (!(s & (SP_PAGE - 1)))
		lib_discard(l, s, (e + SP_PAGE - 1) & ~(uintptr_t)(SP_PAGE - 1));
	r = (int)syscall(SYS_madvise, addr, len, advice);
	pthread_mutex_unlock(&l->lock);
	return r;
}

/* Only UFFDIO_REGISTER on a userfaultfd that is not ours matters
 * (lib_foreign_uffd_register()); every other ioctl is the system call,
 * ours included (common/os.c calls this wrapper too). */
EXPORT int ioctl(int fd, unsigned long req, ...)
{
	struct lib *l;
	va_list ap;
	void *arg;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (req != UFFDIO_REGISTER || !(l = lib_peek()) || fd == l->uffd)
		return (int)syscall(SYS_ioctl, fd, req, arg);
	return set_errno(lib_foreign_uffd_register(l, fd, req, arg));
}

EXPORT int mlock(const void *addr, size_t len)
{
	return attr_call(SYS_mlock, (uintptr_t)addr, (uintptr_t)addr + len, (long)addr, (long)len, 0);
}

EXPORT int mlock2(const void *addr, size_t len, unsigned int flags)
{
	return attr_call(SYS_mlock2, (uintptr_t)addr, (uintptr_t)addr + len, (long)addr, (long)len,
			 (long)flags);
}

EXPORT int munlock(const void *addr, size_t len)
{
	return attr_call(SYS_munlock, (uintptr_t)addr, (uintptr_t)addr + len, (long)addr, (long)len,
			 0);
}

EXPORT int mlockall(int flags)
{
	return attr_call(SYS_mlockall, 0, UINTPTR_MAX, flags, 0, 0);
}

EXPORT int munlockall(void)
{
	return attr_call(SYS_munlockall, 0, UINTPTR_MAX, 0, 0, 0);
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
	lib_lock(l);
	r = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	if (r != MAP_FAILED) {
		lib_forget(l, s, s + len);
		lib_ranges_unmapped(l, s, s + page_up(len));
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

/* Never in the middle of a merge: the merge maps the pool with the
 * protection it read under the freeze, and would undo a change made
 * meanwhile (found by tests/integration/chaos.c: a page left PROT_NONE
 * after the application had made it read-write again). */
EXPORT int mprotect(void *addr, size_t len, int prot)
{
	struct lib *l = lib_peek();
	int r;

	if (!l)
		return (int)syscall(SYS_mprotect, addr, len, prot);
	lib_lock(l);
	r = (int)syscall(SYS_mprotect, addr, len, prot);
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	struct lib *l = lib_peek();
	int r;

	if (!l)
		return (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	lib_lock(l);
	r = (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	pthread_mutex_unlock(&l->lock);
	return r;
}

EXPORT int munmap(void *addr, size_t len)
{
	struct lib *l = lib_peek();
	uintptr_t s = (uintptr_t)addr;
	int r;

	if (!l)
		return (int)syscall(SYS_munmap, addr, len);
	lib_lock(l);
	r = (int)syscall(SYS_munmap, addr, len);
	if (r == 0) {
		lib_forget(l, s, s + len);
		lib_ranges_unmapped(l, s, s + page_up(len));
	}
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
	lib_lock(l);
	r = (void *)syscall(SYS_mremap, old, oldlen, len, flags, new_addr);
	if (r != MAP_FAILED) {
		/* Moved merged pages keep their pool pages mapped: the pending
		 * list drops those references only once nothing maps them. */
		lib_forget(l, (uintptr_t)old, (uintptr_t)old + oldlen);
		if (flags & MREMAP_FIXED)
			lib_forget(l, (uintptr_t)r, (uintptr_t)r + len);
		lib_ranges_moved(l, (uintptr_t)old, page_up(oldlen), (uintptr_t)r, page_up(len),
				 (flags & MREMAP_DONTUNMAP) != 0);
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

/* fork() and _Fork(): the child's references exist before the child does
 * (invariant 2); nothing about that can make the fork fail. */
static pid_t wrap_fork(pid_t (*rf)(void))
{
	struct lib *l = lib_peek();
	struct fork_kid k;
	pid_t pid;

	if (!l)
		return rf();
	lib_lock(l);
	/* libc's fork runs pthread_atfork handlers: ours step aside for us. */
	l->forker = pthread_self();
	l->forking = 1;
	lib_fork_prepare(l, &k);
	pid = rf();
	if (pid == 0) {
		lib_atfork_child(l, &k);
		return 0;
	}
	l->forking = 0;
	lib_atfork_parent(l, &k);
	pthread_mutex_unlock(&l->lock);
	return pid;
}

static pid_t (*resolve(pid_t (**slot)(void), const char *name))(void)
{
	pid_t (*f)(void) = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	if (!f) {
		f = (pid_t(*)(void))dlsym(RTLD_NEXT, name);
		__atomic_store_n(slot, f, __ATOMIC_RELEASE);
	}
	return f;
}

EXPORT pid_t fork(void)
{
	static pid_t (*real)(void); /* resolved once; any thread may race to it */

	return wrap_fork(resolve(&real, "fork"));
}

EXPORT pid_t _Fork(void)
{
	static pid_t (*real)(void);
	pid_t (*f)(void) = resolve(&real, "_Fork");

	if (!f) { /* glibc before 2.34 */
		errno = ENOSYS;
		return -1;
	}
	return wrap_fork(f);
}

/* ---- exec: what the next image must inherit ---- */

/* Kernel semantics: merge-any is inherited across exec, and so are the
 * daemon and the merge domain. An environment the caller built itself
 * (execve, execle, posix_spawn; `env -i`, clearenv()) gets the variables
 * that carry them; without merge-any nothing is added. */
struct exec_env {
	char *v[4096];
	char sock[160];
	char domain[SP_DOMAIN_MAX + 32];
	char asan[512];
};

static int has_var(char *const envp[], const char *name, size_t n)
{
	for (size_t i = 0; envp && envp[i]; i++)
		if (!strncmp(envp[i], name, n))
			return 1;
	return 0;
}

static char **with_merge_env(char *const envp[], struct exec_env *b)
{
	struct lib *l = lib_peek();
	const struct sp_inherited *in = sp_inherited();
	const char *cur = sp_env("LD_PRELOAD");
	/* The whole variable, as now or as the process started with it: env -i
	 * and clearenv() empty environ before the exec. */
	char *pre = cur ? (char *)cur - strlen("LD_PRELOAD=") : (char *)in->preload;
	/* A process that has not used samepage yet (a shell) passes on what
	 * it inherited; one that has, what it is now. */
	const char *dom = l ? l->domain_name : in->domain ? in->domain : "";
	int any = l ? __atomic_load_n(&l->merge_any, __ATOMIC_RELAXED) : in->merge_any;
	char path[108];
	size_t n = 0;

	if (!any && !*dom)
		return (char **)envp;
	for (; envp && envp[n] && n + 8 < sizeof(b->v) / sizeof(b->v[0]); n++)
		b->v[n] = envp[n];
	if (envp && envp[n])
		return (char **)envp; /* too many to copy; leave it as it is */
	if (any && !has_var(envp, "SAMEPAGE_MERGE_ANY=", 19))
		b->v[n++] = "SAMEPAGE_MERGE_ANY=1";
	if (any && !has_var(envp, "LD_PRELOAD=", 11) && pre)
		b->v[n++] = pre;
#if defined(__SANITIZE_ADDRESS__)
	/* An ASan-built library brings ASan's runtime into every image it is
	 * passed on to (cli/run.c puts it first in LD_PRELOAD); its options
	 * (detect_leaks=0: LeakSanitizer cannot stop our scanner thread at
	 * exit and says so on stderr) must follow it. */
	const char *asan = sp_env_inherited("ASAN_OPTIONS");
	if (any && asan && !has_var(envp, "ASAN_OPTIONS=", 13)) {
		snprintf(b->asan, sizeof(b->asan), "ASAN_OPTIONS=%s", asan);
		b->v[n++] = b->asan;
	}
#endif
	/* `samepage run`'s advice on userfaultfd was given once for all. */
	if (in->uffd_warned && !has_var(envp, "SAMEPAGE_UFFD_WARNED=", 21))
		b->v[n++] = "SAMEPAGE_UFFD_WARNED=1";
	/* The same daemon, whatever the new environment says of XDG. */
	if (!has_var(envp, "SAMEPAGE_SOCKET=", 16) && sp_socket_path(path, sizeof(path)) == 0) {
		snprintf(b->sock, sizeof(b->sock), "SAMEPAGE_SOCKET=%s", path);
		b->v[n++] = b->sock;
	}
	/* A domain is for life: an image that clears or changes its
	 * environment must not land in the default domain, or in another. */
	if (*dom && strlen(dom) <= SP_DOMAIN_MAX) {
		snprintf(b->domain, sizeof(b->domain), "SAMEPAGE_DOMAIN=%s", dom);
		for (size_t i = 0; i < n; i++)
			if (!strncmp(b->v[i], "SAMEPAGE_DOMAIN=", 16))
				b->v[i] = b->domain;
		if (!has_var(envp, "SAMEPAGE_DOMAIN=", 16))
			b->v[n++] = b->domain;
	}
	b->v[n] = NULL;
	return b->v;
}

/* An image that cannot load us runs unmerged: when merge-any was asked of
 * it, say so (exe.h), as `samepage run` does for its own command. search:
 * path is a name to look up in $PATH (posix_spawnp). */
static void say_if_unserved(const char *path, int search)
{
	struct lib *l = lib_peek();
	int any = l ? __atomic_load_n(&l->merge_any, __ATOMIC_RELAXED) : sp_inherited()->merge_any;
	char full[4096];
	int kind;

	if (!any || (search && sp_exec_which(path, full, sizeof(full))))
		return;
	kind = sp_exec_kind(search ? full : path);
	if (kind > SP_EXEC_OK)
		sp_log("samepage: %s %s\n", search ? full : path, sp_exec_why(kind));
}

extern char **environ;

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	struct exec_env b;

	say_if_unserved(path, 0);
	return (int)syscall(SYS_execve, path, argv, with_merge_env(envp, &b));
}

EXPORT int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	int (*real)(const char *, char *const[], char *const[]) =
		(int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execvpe");
	struct exec_env b;

	return real(file, argv, with_merge_env(envp, &b));
}

EXPORT int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

/* execl, execlp, execle: the arguments into an array, then as above. */
#define EXECL_MAX 4096
static int collect_args(const char *arg0, va_list ap, char **argv, char ***envp)
{
	int n = 0;

	argv[n++] = (char *)arg0;
	while (arg0 && n < EXECL_MAX && (argv[n] = va_arg(ap, char *)) != NULL)
		n++;
	if (n == EXECL_MAX)
		return -E2BIG;
	if (envp)
		*envp = va_arg(ap, char **);
	return 0;
}

EXPORT int execl(const char *path, const char *arg, ...)
{
	char *argv[EXECL_MAX + 1];
	va_list ap;
	int err;

	va_start(ap, arg);
	err = collect_args(arg, ap, argv, NULL);
	va_end(ap);
	return err ? set_errno(err) : execve(path, argv, environ);
}

EXPORT int execle(const char *path, const char *arg, ...)
{
	char *argv[EXECL_MAX + 1], **envp = NULL;
	va_list ap;
	int err;

	va_start(ap, arg);
	err = collect_args(arg, ap, argv, &envp);
	va_end(ap);
	return err ? set_errno(err) : execve(path, argv, envp);
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
	char *argv[EXECL_MAX + 1];
	va_list ap;
	int err;

	va_start(ap, arg);
	err = collect_args(arg, ap, argv, NULL);
	va_end(ap);
	return err ? set_errno(err) : execvpe(file, argv, environ);
}

typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			const posix_spawnattr_t *, char *const[], char *const[]);

static int spawn(const char *name, pid_t *pid, const char *path,
		 const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *at,
		 char *const argv[], char *const envp[])
{
	spawn_fn real = (spawn_fn)dlsym(RTLD_NEXT, name);
	/* Not our own mmap/munmap wrappers: the caller may hold lib.lock. */
	struct exec_env *b = os_mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int err;

	/* The child shares no memory with us after this returns: the
	 * environment array can go then. */
	say_if_unserved(path, !strcmp(name, "posix_spawnp"));
	if (b == MAP_FAILED)
		return real(pid, path, fa, at, argv, envp);
	err = real(pid, path, fa, at, argv, with_merge_env(envp, b));
	os_munmap(b, sizeof(*b));
	return err;
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
		       const posix_spawnattr_t *at, char *const argv[], char *const envp[])
{
	return spawn("posix_spawn", pid, path, fa, at, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *at, char *const argv[], char *const envp[])
{
	return spawn("posix_spawnp", pid, file, fa, at, argv, envp);
}
