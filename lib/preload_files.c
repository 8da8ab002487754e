/* SPDX-License-Identifier: MIT */
/*
 * preload_files — the file calls of kernel KSM's interface: tools drive
 * kernel KSM through /sys/kernel/mm/ksm/... and read /proc/PID/ksm_stat and
 * ksm_merging_pages. Under `samepage run` the open family, fopen, read,
 * pread and write serve those files from samepage (ksmfile.c) and pass
 * everything else to libc unchanged.
 *
 * What each tool uses decides the list: shells' redirections and cat call
 * open/openat (or the _FORTIFY_SOURCE entry points __open_2 and
 * __read_chk), Python's open() and the kernel's ksm_functional_tests call
 * open, read, pread and write, bash's echo writes through stdio and ends
 * its redirection with dup2 (see before_close), and ksm_tests, ksmctl and coreutils' tee
 * use fopen and fprintf. A FILE of a KSM file is a fopencookie() stream
 * (fileno() -1): stdio reads and writes through libc's internal calls,
 * which no wrapper sees, and a write must be parsed, not stored.
 */
#undef _FORTIFY_SOURCE /* we define the functions it would inline */
#define _GNU_SOURCE
#include "lib.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* glibc's report of a buffer overflow, as its own checked reads make it. */
extern void __chk_fail(void) __attribute__((noreturn));

/* libc's own functions, looked up once: by the constructor below before
 * the program runs, or by the first call that comes earlier (dlsym may
 * allocate; it must not do so under lib.lock, where the library's own
 * reads and writes also pass through these wrappers). */
static struct {
	int (*openat)(int, const char *, int, ...);
	FILE *(*fopen)(const char *, const char *);
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*pread)(int, void *, size_t, off_t);
	ssize_t (*write)(int, const void *, size_t);
	int (*close)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
} libc;

static void *lookup(void **slot, const char *name)
{
	void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	if (!f) {
		f = dlsym(RTLD_NEXT, name);
		__atomic_store_n(slot, f, __ATOMIC_RELEASE);
	}
	return f;
}
#define LIBC(fn) ((__typeof__(libc.fn))lookup((void **)&libc.fn, #fn))

__attribute__((constructor)) static void resolve_libc(void)
{
	LIBC(openat);
	LIBC(fopen);
	LIBC(read);
	LIBC(pread);
	LIBC(write);
	LIBC(close);
	LIBC(dup2);
	LIBC(dup3);
}

static long set_errno(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

/* ---- open ---- */

static int needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

/* 1 and *t when path is a KSM file this image serves; -errno for one it
 * refuses (an unknown name under /sys/kernel/mm/ksm); 0 otherwise. */
static int ksm_path(int dirfd, const char *path, int flags, struct ksm_target *t)
{
	/* O_PATH opens nothing to read or write: the kernel's file will do. */
	if (flags & O_PATH || !ksmfile_enabled())
		return 0;
	return ksmfile_lookup(dirfd, path, t);
}

static int open_at(int dirfd, const char *path, int flags, mode_t mode)
{
	struct ksm_target t;
	struct lib *l;
	int r = ksm_path(dirfd, path, flags, &t);

	if (r < 0)
		return (int)set_errno(r);
	if (r) {
		l = lib_get();
		return (int)set_errno(l ? ksmfile_open(l, &t, flags) : -ENOMEM);
	}
	if (!LIBC(openat))
		return (int)syscall(SYS_openat, dirfd, path, flags, mode);
	return LIBC(openat)(dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap)
{
	return needs_mode(flags) ? (mode_t)va_arg(ap, unsigned int) : 0;
}

EXPORT int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	return open_at(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...) __attribute__((alias("open")));

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	return open_at(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

/* _FORTIFY_SOURCE's entry points (flags not known at compile time). */
EXPORT int __open_2(const char *path, int flags)
{
	return open_at(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return open_at(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags) __attribute__((alias("__openat_2")));

EXPORT int creat(const char *path, mode_t mode)
{
	return open_at(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

EXPORT int creat64(const char *path, mode_t mode) __attribute__((alias("creat")));

/* ---- read, write ---- */

/* A KSM file read from its start shows its text as it is now. */
static int before_read(int fd, off_t off)
{
	struct lib *l = lib_peek();
	int saved = errno, err;

	if (!l || !ksmfile_armed(l))
		return 0;
	err = ksmfile_before_read(l, fd, off);
	errno = saved;
	return err;
}

EXPORT ssize_t read(int fd, void *buf, size_t n)
{
	int err = before_read(fd, -1);

	if (err)
		return set_errno(err);
	if (!LIBC(read))
		return syscall(SYS_read, fd, buf, n);
	return LIBC(read)(fd, buf, n);
}

EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
	int err = before_read(fd, off);

	if (err)
		return set_errno(err);
	if (!LIBC(pread))
		return syscall(SYS_pread64, fd, buf, n, off);
	return LIBC(pread)(fd, buf, n, off);
}

EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t off) __attribute__((alias("pread")));

/* _FORTIFY_SOURCE's checked reads: the check, then the read above. */
EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
	if (n > buflen)
		__chk_fail();
	return read(fd, buf, n);
}

EXPORT ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen)
{
	if (n > buflen)
		__chk_fail();
	return pread(fd, buf, n, off);
}

EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t n, off_t off, size_t buflen)
	__attribute__((alias("__pread_chk")));

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	struct lib *l = lib_peek();

	if (l && ksmfile_armed(l)) {
		int saved = errno, handled;
		ssize_t r = ksmfile_write(l, fd, buf, n, &handled);
		if (handled)
			return set_errno(r);
		errno = saved;
	}
	if (!LIBC(write))
		return syscall(SYS_write, fd, buf, n);
	return LIBC(write)(fd, buf, n);
}

/* ---- close, dup2, dup3: where a shell's redirection ends ---- */

/* bash's builtin echo writes a redirected KSM file through stdio, past
 * write(); the redirection ends with dup2() over it (or close): apply the
 * bytes then. */
static void before_close(int fd)
{
	struct lib *l = lib_peek();
	int saved = errno;

	if (l && ksmfile_armed(l))
		ksmfile_flush(l, fd);
	errno = saved;
}

EXPORT int close(int fd)
{
	before_close(fd);
	if (!LIBC(close))
		return (int)syscall(SYS_close, fd);
	return LIBC(close)(fd);
}

EXPORT int dup2(int fd, int to)
{
	if (fd != to)
		before_close(to);
	if (!LIBC(dup2))
		return (int)syscall(SYS_dup2, fd, to);
	return LIBC(dup2)(fd, to);
}

EXPORT int dup3(int fd, int to, int flags)
{
	before_close(to);
	if (!LIBC(dup3))
		return (int)syscall(SYS_dup3, fd, to, flags);
	return LIBC(dup3)(fd, to, flags);
}

/* ---- fopen ---- */

static ssize_t cookie_read(void *c, char *buf, size_t n)
{
	return read((int)(intptr_t)c, buf, n);
}

/* glibc's cookie streams take 0 for an error; errno says which. */
static ssize_t cookie_write(void *c, const char *buf, size_t n)
{
	ssize_t r = write((int)(intptr_t)c, buf, n);

	return r < 0 ? 0 : r;
}

static int cookie_seek(void *c, off64_t *pos, int whence)
{
	off_t r = lseek((int)(intptr_t)c, *pos, whence);

	if (r < 0)
		return -1;
	*pos = r;
	return 0;
}

static int cookie_close(void *c)
{
	return close((int)(intptr_t)c);
}

/* fopen(3)'s mode as open(2) flags. */
static int mode_flags(const char *mode)
{
	int f = mode[0] == 'r' ? O_RDONLY : mode[0] == 'w' ? O_WRONLY | O_CREAT | O_TRUNC :
		mode[0] == 'a' ? O_WRONLY | O_CREAT | O_APPEND : -1;

	if (f < 0)
		return -EINVAL;
	for (const char *m = mode + 1; *m && *m != ','; m++) {
		if (*m == '+')
			f = (f & ~O_ACCMODE) | O_RDWR;
		else if (*m == 'e')
			f |= O_CLOEXEC;
		else if (*m == 'x')
			f |= O_EXCL;
	}
	return f;
}

static FILE *ksm_fopen(const struct ksm_target *t, const char *mode)
{
	cookie_io_functions_t io = { cookie_read, cookie_write, cookie_seek, cookie_close };
	int flags = mode_flags(mode), fd;
	struct lib *l;
	FILE *f;

	if (flags < 0) {
		errno = -flags;
		return NULL;
	}
	l = lib_get();
	fd = l ? ksmfile_open(l, t, flags) : -ENOMEM;
	if (fd < 0) {
		errno = -fd;
		return NULL;
	}
	f = fopencookie((void *)(intptr_t)fd, mode, io);
	if (!f) {
		int err = errno;
		close(fd);
		errno = err;
	}
	return f;
}

EXPORT FILE *fopen(const char *path, const char *mode)
{
	struct ksm_target t;
	int r = mode ? ksm_path(AT_FDCWD, path, mode_flags(mode) < 0 ? 0 : mode_flags(mode), &t) : 0;

	if (r < 0) {
		errno = -r;
		return NULL;
	}
	if (r)
		return ksm_fopen(&t, mode);
	if (!LIBC(fopen)) {
		errno = ENOSYS;
		return NULL;
	}
	return LIBC(fopen)(path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode) __attribute__((alias("fopen")));

/* ---- descriptors inherited at exec, bytes left at exit ---- */

/* `cat < /sys/kernel/mm/ksm/run` or `/bin/echo 1 > .../run`: the file is
 * already open when the image starts (ksmfile_hold()). */
__attribute__((constructor)) static void inherited(void)
{
	const char *pre = sp_env("LD_PRELOAD");
	struct ksm_target t;
	struct lib *l;

	if (!pre || !strstr(pre, "libsamepage"))
		return;
	for (int fd = 0; fd < 3; fd++)
		if (ksmfile_owned(fd, &t) && (l = lib_get()))
			ksmfile_hold(l, fd);
}

/* A refused value ends the program with status 1, as its failed write
 * would have on the kernel's file. */
__attribute__((destructor)) static void at_exit(void)
{
	struct lib *l = lib_peek();

	if (l && ksmfile_armed(l) && ksmfile_release(l))
		_exit(1);
}
