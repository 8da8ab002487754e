/* SPDX-License-Identifier: MIT */
/*
 * ksmfile — the KSM files a process under `samepage run` opens:
 * /sys/kernel/mm/ksm/... and /proc/PID/ksm_stat, ksm_merging_pages show
 * samepage's knobs and counters (common/ksmfiles.c renders them), and a
 * write to a knob drives samepage with the kernel's error codes; kernel
 * KSM never sees either (docs/DESIGN.md, "The KSM files").
 *
 * An opened file is a memfd holding the text, named after the file
 * ("samepage-ksm:/sys/kernel/mm/ksm/run") and sealed with F_SEAL_SEAL
 * alone, so any descriptor for it — dup'ed by a shell onto stdout,
 * inherited by a child, passed over exec — says what it is. Reading it
 * from offset 0 renders the text again first, as sysfs and procfs do
 * (programs poll full_scans with pread(fd, ..., 0)); a write() is parsed
 * and applied here, never stored. Programs that never open such a file
 * pay nothing: the read and write wrappers check descriptors only once
 * this image holds one (armed).
 *
 * Knobs and global counters come from the daemon over an observer
 * connection of the file's own (kf.sock, under kf.lock, never lib.lock),
 * so that a reader polling in a loop never competes with the scanner for
 * its connection; the calling process's own ksm_stat comes from its own
 * entries, exactly as they are now.
 */
#define _GNU_SOURCE
#include "lib.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "ksmfiles.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define NAME_PREFIX "samepage-ksm:"
#define STAT_WAIT_S 2          /* a stalled daemon fails a read after this */
#define UNMERGE_WAIT_MS 60000  /* run=2 returns once unmerged, or fails after this */
/* A reader polling a counter in a loop (the kernel's selftests spin on
 * full_scans) asks the daemon at most once per this: the sleep gives the
 * core back to the scanners and the daemon it is waiting for. */
#define PACE_US 1000

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

int ksmfile_init(struct lib *l)
{
	pthread_mutex_init(&l->kf.lock, NULL);
	l->kf.sock = -1;
	for (int i = 0; i < 3; i++)
		l->kf.held[i] = -1;
	l->kf.err = -1;
	l->kf.buf = arena_alloc(&l->arena, SP_MAX_MSG);
	return l->kf.buf ? 0 : -ENOMEM;
}

void ksmfile_atfork_child(struct lib *l)
{
	/* The connection is the parent's (our requests would interleave with
	 * its), and the lock may have been held by a thread that is gone. */
	pthread_mutex_init(&l->kf.lock, NULL);
	if (l->kf.sock >= 0)
		raw_close(l->kf.sock);
	l->kf.sock = -1;
}

/* ---- which file a path names ---- */

/* Does the path end in a name worth normalising? Every open of the process
 * comes through here: most are answered by a few compares. */
static int candidate(const char *path)
{
	const char *base = strrchr(path, '/');

	base = base ? base + 1 : path;
	if (!*base)
		return 0;
	return strstr(path, "mm/ksm/") || sp_ksm_file(base) || sp_ksm_proc_file(base) >= 0;
}

/* path made absolute (relative to dirfd's directory) and folded
 * lexically ("//", "/./", "/../"), into out: 0 or -errno. */
static int canonical(int dirfd, const char *path, char *out, size_t len)
{
	char raw[PATH_MAX * 2];
	size_t n = 0, o = 0;

	if (path[0] != '/') {
		char fdp[64];
		ssize_t r;
		if (dirfd == AT_FDCWD) {
			if (!getcwd(raw, PATH_MAX))
				return -errno;
			n = strlen(raw);
		} else {
			snprintf(fdp, sizeof(fdp), "/proc/self/fd/%d", dirfd);
			r = readlink(fdp, raw, PATH_MAX - 1);
			if (r < 0)
				return -errno;
			n = (size_t)r;
		}
		raw[n++] = '/';
	}
	if (n + strlen(path) + 1 > sizeof(raw))
		return -ENAMETOOLONG;
	strcpy(raw + n, path);
	for (const char *p = raw; *p;) {
		const char *e = strchr(p, '/');
		size_t c = e ? (size_t)(e - p) : strlen(p);
		if (c == 2 && p[0] == '.' && p[1] == '.') {
			while (o > 0 && out[--o] != '/')
				;
		} else if (c && !(c == 1 && p[0] == '.')) {
			if (o + c + 2 > len)
				return -ENAMETOOLONG;
			out[o++] = '/';
			memcpy(out + o, p, c);
			o += c;
		}
		p += c + (e != NULL);
	}
	if (!o)
		out[o++] = '/';
	out[o] = 0;
	return 0;
}

/* A positive pid from all of s (digits only), or 0. */
static pid_t pid_of(const char *s, size_t n)
{
	long v = 0;

	if (!n || n > 9)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (s[i] - '0');
	}
	return (pid_t)v;
}

/* "/proc/" PID ["/task/" TID] "/" NAME, PID a number, self or thread-self. */
static int match_proc(const char *p, struct ksm_target *t)
{
	const char *slash = strchr(p, '/'), *name;
	size_t n;

	if (!slash)
		return 0;
	n = (size_t)(slash - p);
	if ((n == 4 && !strncmp(p, "self", 4)) || (n == 11 && !strncmp(p, "thread-self", 11)))
		t->pid = getpid();
	else if (!(t->pid = pid_of(p, n)))
		return 0;
	name = slash + 1;
	if (!strncmp(name, "task/", 5)) {
		const char *s2 = strchr(name + 5, '/');
		if (!s2 || !pid_of(name + 5, (size_t)(s2 - name - 5)))
			return 0;
		name = s2 + 1; /* a thread's files are its process's */
	}
	if (strchr(name, '/') || (t->proc = sp_ksm_proc_file(name)) < 0)
		return 0;
	t->file = NULL;
	return 1;
}

/* 1 and *t when canonical path c names a KSM file; 0 when it does not;
 * -ENOENT for a name in /sys/kernel/mm/ksm that samepage does not know
 * (no write may reach a kernel KSM file). */
static int match(const char *c, struct ksm_target *t)
{
	static const char dir[] = SP_KSM_DIR "/";

	if (!strncmp(c, dir, sizeof(dir) - 1)) {
		const char *name = c + sizeof(dir) - 1;
		if (strchr(name, '/'))
			return 0;
		t->file = sp_ksm_file(name);
		t->pid = 0;
		return t->file ? 1 : -ENOENT;
	}
	if (!strncmp(c, "/proc/", 6))
		return match_proc(c + 6, t);
	return 0;
}

int ksmfile_lookup(int dirfd, const char *path, struct ksm_target *t)
{
	char c[PATH_MAX];
	int err;

	if (!path || !candidate(path))
		return 0;
	err = canonical(dirfd, path, c, sizeof(c));
	/* A path we cannot resolve is not ours to judge: the kernel will. */
	return err ? 0 : match(c, t);
}

/* The canonical name of t, as its memfd is called. */
static void target_name(const struct ksm_target *t, char *buf, size_t len)
{
	if (t->file)
		snprintf(buf, len, NAME_PREFIX SP_KSM_DIR "/%s", t->file->name);
	else
		snprintf(buf, len, NAME_PREFIX "/proc/%d/%s", (int)t->pid,
			 t->proc == KSM_PROC_STAT ? "ksm_stat" : "ksm_merging_pages");
}

int ksmfile_owned(int fd, struct ksm_target *t)
{
	static const char pre[] = "/memfd:" NAME_PREFIX;
	char link[64], name[PATH_MAX];
	int seals = fcntl(fd, F_GET_SEALS);
	char *end;
	ssize_t n;

	/* Ours carry F_SEAL_SEAL alone (F_SEAL_EXEC comes with
	 * MFD_NOEXEC_SEAL): any other descriptor fails this one fcntl. */
	if (seals < 0 || (seals & ~F_SEAL_EXEC) != F_SEAL_SEAL)
		return 0;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, name, sizeof(name) - 1);
	if (n <= 0)
		return 0;
	name[n] = 0;
	if (strncmp(name, pre, sizeof(pre) - 1))
		return 0;
	end = strstr(name, " (deleted)");
	if (end)
		*end = 0;
	return match(name + sizeof(pre) - 1, t) == 1;
}

/* ---- the daemon ---- */

/* kf.lock held: the observer connection, opened (and the daemon started,
 * as for any process under `samepage run`) when there is none. */
static int kf_sock(struct lib *l)
{
	if (l->kf.sock >= 0 && l->kf.sock_pid == getpid())
		return 0;
	l->kf.sock = client_observer(l, STAT_WAIT_S, l->kf.buf);
	l->kf.sock_pid = getpid();
	return l->kf.sock < 0 ? l->kf.sock : 0;
}

/* kf.lock held: one request on the observer connection; a connection
 * that broke (the daemon was replaced) is opened again once. */
static int kf_call(struct lib *l, uint16_t type, const void *req, uint32_t len, uint16_t want,
		   struct sp_msg *m)
{
	int err = 0;

	for (int tries = 0; tries < 2; tries++) {
		err = kf_sock(l);
		if (err)
			return err;
		err = sp_call(l->kf.sock, l->kf.buf, type, req, len, want, m);
		if (err != -ECONNRESET && err != -EPIPE && err != -ENOTCONN)
			return err;
		raw_close(l->kf.sock);
		l->kf.sock = -1;
	}
	return err;
}

/* The daemon's D_STAT for pid (0: global only); -ESRCH when pid is not
 * connected. */
static int kf_stat(struct lib *l, pid_t pid, struct sp_stat_r *r)
{
	struct sp_statreq q = { .pid = pid };
	struct sp_msg m;
	uint64_t since;
	int err;

	pthread_mutex_lock(&l->kf.lock);
	since = now_us() - l->kf.last_us;
	if (since < PACE_US) {
		struct timespec ts = { 0, (long)(PACE_US - since) * 1000 };
		nanosleep(&ts, NULL);
	}
	err = kf_call(l, C_STAT, &q, sizeof(q), D_STAT, &m);
	l->kf.last_us = now_us();
	if (!err)
		memcpy(r, m.p, sizeof(*r));
	pthread_mutex_unlock(&l->kf.lock);
	return err;
}

static int kf_set(struct lib *l, const struct sp_set *s)
{
	struct sp_msg m;
	int err;

	pthread_mutex_lock(&l->kf.lock);
	err = kf_call(l, C_SET, s, sizeof(*s), D_ACK, &m);
	pthread_mutex_unlock(&l->kf.lock);
	return err;
}

/* run=2: as the kernel's store, return once every merged page is
 * unmerged (pages_shared and ksm_zero_pages at 0, every process's scanner
 * having restored its own pages). */
static int wait_unmerged(struct lib *l)
{
	uint64_t end = now_us() + (uint64_t)UNMERGE_WAIT_MS * 1000;
	struct sp_stat_r r;
	int err;

	/* Our own scanner may be backing off for up to 2 s. */
	lib_lock(l);
	if (l->scanner_running)
		lib_kick(l);
	pthread_mutex_unlock(&l->lock);
	for (;;) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		err = kf_stat(l, 0, &r);
		if (err || (!r.g.pages_shared && !r.g.ksm_zero_pages))
			return err;
		if (now_us() > end)
			return -ETIMEDOUT;
		nanosleep(&ts, NULL);
	}
}

/* ---- the text ---- */

static int render(struct lib *l, const struct ksm_target *t, char *buf, size_t len)
{
	struct sp_stat_r r;
	struct sp_proc_stats p;
	int err;

	memset(&r, 0, sizeof(r));
	if (t->file) {
		if (t->file->kind == KSM_KNOB || t->file->kind == KSM_COUNTER) {
			err = kf_stat(l, 0, &r);
			if (err)
				return err;
		}
		return sp_ksm_render(t->file, &r, buf, len);
	}
	if (t->pid == getpid()) {
		/* Our own entries: exact, and current to the last page. */
		lib_lock(l);
		track_zero_settle(l);
		lib_fill_stats(l, &p);
		pthread_mutex_unlock(&l->lock);
	} else {
		err = kf_stat(l, t->pid, &r);
		/* A process the daemon does not serve merges nothing. */
		if (err && err != -ESRCH)
			return err;
		if (err)
			memset(&p, 0, sizeof(p));
		else
			p = r.p;
	}
	return sp_ksm_render_proc(t->proc, &p, buf, len);
}

/* Another descriptor for fd's memfd, opened anew with flags. */
static int reopen(int fd, int flags)
{
	char link[64];
	long r;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	/* The system call itself: open() is our own wrapper. */
	r = syscall(SYS_openat, AT_FDCWD, link, flags);
	return r < 0 ? -errno : (int)r;
}

/* Put t's text, rendered now, into memfd fd. */
static int fill(struct lib *l, int fd, const struct ksm_target *t)
{
	char text[SP_KSM_TEXT_MAX];
	int n = render(l, t, text, sizeof(text)), wfd = fd, err = 0;

	if (n < 0)
		return n;
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR && (wfd = reopen(fd, O_RDWR | O_CLOEXEC)) < 0)
		return wfd;
	/* The new text first, then the length: a reader sharing the file sees
	 * old or new bytes, never none. */
	if (pwrite(wfd, text, (size_t)n, 0) != n || ftruncate(wfd, n) < 0)
		err = -errno;
	if (wfd != fd)
		raw_close(wfd);
	return err;
}

/* ---- the calls the wrappers make ---- */

static int writable(const struct ksm_target *t)
{
	return t->file && (t->file->kind == KSM_KNOB || t->file->kind == KSM_FIXED);
}

/* A /proc/PID file of a process that does not exist does not either. */
static int proc_exists(pid_t pid)
{
	char p[32];

	snprintf(p, sizeof(p), "/proc/%d", (int)pid);
	return access(p, F_OK) == 0;
}

static int new_memfd(const struct ksm_target *t)
{
	char name[128];
	int fd;

	target_name(t, name, sizeof(name));
	fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	if (fd < 0 && errno == EINVAL) /* before Linux 6.3 */
		fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL) < 0) {
		int err = -errno;
		raw_close(fd);
		return err;
	}
	return fd;
}

int ksmfile_open(struct lib *l, const struct ksm_target *t, int flags)
{
	int acc = flags & O_ACCMODE, fd, out, err;

	if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL))
		return -EEXIST;
	if (flags & O_DIRECTORY)
		return -ENOTDIR;
	/* As sysfs and procfs, for root too: a read-only file is not opened
	 * for writing. The knobs are the user's own (each user has a daemon). */
	if (acc != O_RDONLY && !writable(t))
		return -EACCES;
	if (!t->file && t->pid != getpid() && !proc_exists(t->pid))
		return -ENOENT;
	fd = new_memfd(t);
	if (fd < 0)
		return fd;
	/* Write-only: nothing to show, and no daemon to ask yet. */
	err = acc == O_WRONLY ? 0 : fill(l, fd, t);
	if (err) {
		raw_close(fd);
		return err;
	}
	__atomic_store_n(&l->kf.armed, 1, __ATOMIC_RELEASE);
	if (acc == O_RDWR) {
		if (!(flags & O_CLOEXEC))
			fcntl(fd, F_SETFD, 0);
		return fd;
	}
	/* A descriptor with the access asked for: write() on a read-only
	 * one is EBADF, as on the kernel's file. */
	out = reopen(fd, acc | (flags & O_CLOEXEC));
	raw_close(fd);
	return out;
}

int ksmfile_armed(const struct lib *l)
{
	return __atomic_load_n(&l->kf.armed, __ATOMIC_ACQUIRE);
}

int ksmfile_before_read(struct lib *l, int fd, off_t off)
{
	struct ksm_target t;

	if (!ksmfile_owned(fd, &t) || (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY)
		return 0;
	if (off < 0)
		off = lseek(fd, 0, SEEK_CUR);
	/* sysfs and procfs render the text again for a read from the start. */
	return off == 0 ? fill(l, fd, &t) : 0;
}

/* What writing n bytes of buf to t does: the kernel's store, on samepage. */
static int apply(struct lib *l, const struct ksm_target *t, const char *buf, size_t n)
{
	struct sp_set s;
	int err = sp_ksm_parse_write(t->file, buf, n, &s);

	if (!err && s.knob < KNOB_COUNT)
		err = kf_set(l, &s);
	if (!err && s.knob == KNOB_RUN && s.value == 2)
		err = wait_unmerged(l);
	return err;
}

ssize_t ksmfile_write(struct lib *l, int fd, const void *buf, size_t n, int *handled)
{
	struct ksm_target t;
	int err;

	*handled = ksmfile_owned(fd, &t);
	if (!*handled)
		return 0;
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY || !writable(&t))
		return -EBADF;
	if (!n)
		return 0; /* sysfs calls no store for nothing */
	if (n > SP_PAGE)
		n = SP_PAGE; /* a store sees one page at most */
	err = apply(l, &t, buf, n);
	return err ? err : (ssize_t)n;
}

/* The error a write passed by our write() would have returned, said on
 * stderr: the program's own write succeeded long ago. */
static void report(const struct lib *l, const struct ksm_target *t, int err)
{
	char name[160];

	target_name(t, name, sizeof(name));
	sp_log_fd(l->kf.err >= 0 ? l->kf.err : 2, "samepage: %s: %s\n", name + strlen(NAME_PREFIX),
		  strerror(-err));
}

int ksmfile_flush(struct lib *l, int fd)
{
	char buf[SP_PAGE];
	struct ksm_target t;
	struct stat st;
	ssize_t n;
	int wfd, err;

	if (!ksmfile_owned(fd, &t) || (fcntl(fd, F_GETFL) & O_ACCMODE) != O_WRONLY ||
	    fstat(fd, &st) < 0 || st.st_size == 0)
		return 0;
	wfd = reopen(fd, O_RDWR | O_CLOEXEC);
	if (wfd < 0)
		return wfd;
	/* Taken once: whichever descriptor of it goes next finds it empty. */
	n = raw_pread(wfd, buf, sizeof(buf), 0);
	err = n < 0 || ftruncate(wfd, 0) < 0 ? -errno : 0;
	raw_close(wfd);
	if (!err)
		err = apply(l, &t, buf, (size_t)n);
	if (err)
		report(l, &t, err);
	return err;
}

/* Is the library preloaded into this image (LD_PRELOAD, as `samepage run`
 * sets it)? Only then are the files served: a program that merely links
 * libsamepage (samepage's own tests and benchmarks, which compare with
 * kernel KSM) reads and writes the kernel's own files. */
int ksmfile_enabled(void)
{
	const char *pre = sp_inherited()->preload;

	return pre && strstr(pre, "libsamepage");
}

/* An image exec'd with a KSM file as stdin, stdout or stderr (`cat <
 * /sys/kernel/mm/ksm/run`, `/bin/echo 1 > /sys/kernel/mm/ksm/run`) checks
 * descriptors from the start (preload_files.c's constructor). A program
 * writing one through stdio (coreutils' echo) writes past our write() and
 * closes it past our close() at exit (close_stdout): a descriptor of our
 * own keeps its bytes for ksmfile_release(). */
void ksmfile_hold(struct lib *l, int fd)
{
	__atomic_store_n(&l->kf.armed, 1, __ATOMIC_RELEASE);
	l->kf.held[fd] = (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY ?
				 fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
	/* gnulib's close_stdout closes stderr too before we can say what
	 * went wrong. */
	if (l->kf.held[fd] >= 0 && l->kf.err < 0)
		l->kf.err = fcntl(2, F_DUPFD_CLOEXEC, 3);
}

/* Bytes left in a KSM file we hold at exit are applied before the process
 * ends (its parent, a shell, reads the file next). */
int ksmfile_release(struct lib *l)
{
	int failed = 0;

	for (int i = 0; i < 3; i++)
		if (l->kf.held[i] >= 0) {
			failed |= ksmfile_flush(l, l->kf.held[i]) < 0;
			raw_close(l->kf.held[i]);
			l->kf.held[i] = -1;
		}
	if (l->kf.err >= 0)
		raw_close(l->kf.err);
	l->kf.err = -1;
	return failed ? -EIO : 0;
}
