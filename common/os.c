/* SPDX-License-Identifier: MIT */
/* os — see os.h. */
#define _GNU_SOURCE
#include "os.h"
#include "sizes.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fault.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

static int sys_ret(long r)
{
	return r < 0 ? -errno : (int)r;
}

void *os_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	long r = syscall(SYS_mmap, a, len, prot, flags, fd, off);

	return r < 0 && r > -4096 ? MAP_FAILED : (void *)r;
}

int os_munmap(void *a, size_t len)
{
	return sys_ret(syscall(SYS_munmap, a, len));
}

int os_mprotect(void *a, size_t len, int prot)
{
	return sys_ret(syscall(SYS_mprotect, a, len, prot));
}

void *os_mremap(void *old, size_t oldlen, size_t len, int flags, void *new_addr)
{
	long r = syscall(SYS_mremap, old, oldlen, len, flags, new_addr);

	return r < 0 && r > -4096 ? MAP_FAILED : (void *)r;
}

int os_madvise(void *a, size_t len, int advice)
{
	return sys_ret(syscall(SYS_madvise, a, len, advice));
}

int os_uffd_open(void)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
					      UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	int fd = -1, dev;

	if (fault_inject("uffd"))
		return -EPERM;
	dev = raw_open("/dev/userfaultfd", O_RDWR | O_CLOEXEC, 0);
	if (dev >= 0) {
		fd = raw_ioctl(dev, USERFAULTFD_IOC_NEW, (void *)(uintptr_t)(O_CLOEXEC | O_NONBLOCK));
		raw_close(dev);
	}
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (raw_ioctl(fd, UFFDIO_API, &api) < 0) {
		int err = errno == EINVAL ? -ENOSYS : -errno;
		raw_close(fd);
		return err;
	}
	return fd;
}

int os_uffd_freeze(int uffd, uintptr_t a, size_t len)
{
	struct uffdio_register reg = { .range = { a, len }, .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .range = { a, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	struct uffdio_range r = { a, len };

	if (raw_ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if (raw_ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		int err = -errno;
		raw_ioctl(uffd, UFFDIO_UNREGISTER, &r);
		return err;
	}
	return 0;
}

int os_uffd_hold_missing(int uffd, uintptr_t a, size_t len)
{
	/* Registering again with the same userfaultfd changes the mode and
	 * keeps the write protection. */
	struct uffdio_register reg = { .range = { a, len },
				       .mode = UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MISSING };

	return sys_ret(raw_ioctl(uffd, UFFDIO_REGISTER, &reg));
}

int os_uffd_register_missing(int uffd, uintptr_t a, size_t len)
{
	struct uffdio_register reg = { .range = { a, len }, .mode = UFFDIO_REGISTER_MODE_MISSING };

	return sys_ret(raw_ioctl(uffd, UFFDIO_REGISTER, &reg));
}

int os_uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len)
{
	struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len };

	if (raw_ioctl(uffd, UFFDIO_COPY, &c) < 0)
		return -errno;
	return c.copy == (int64_t)len ? 0 : -EAGAIN;
}

int os_uffd_zeropage(int uffd, uintptr_t dst, size_t len)
{
	struct uffdio_zeropage z = { .range = { dst, len } };

	if (raw_ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0)
		return -errno;
	return z.zeropage == (int64_t)len ? 0 : -EAGAIN;
}

/* Not in Debian 12's kernel headers (Linux 6.1): the ABI of 6.8. */
#ifndef UFFDIO_MOVE
struct uffdio_move {
	uint64_t dst, src, len, mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#define UFFDIO_MOVE_MODE_DONTWAKE ((uint64_t)1 << 0)
#endif

int os_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len, size_t *moved)
{
	struct uffdio_move m = { .dst = dst, .src = src, .len = len,
				 .mode = UFFDIO_MOVE_MODE_DONTWAKE };
	int err = raw_ioctl(uffd, UFFDIO_MOVE, &m) < 0 ? -errno : 0;

	*moved = m.move > 0 ? (size_t)m.move : 0;
	if (!err && *moved != len)
		err = -EAGAIN;
	return err;
}

int os_uffd_unprotect(int uffd, uintptr_t a, size_t len)
{
	struct uffdio_writeprotect wp = { .range = { a, len }, .mode = 0 };

	return sys_ret(raw_ioctl(uffd, UFFDIO_WRITEPROTECT, &wp));
}

/* Unregister [a, a+len). The kernel refuses the whole range (-EINVAL) when
 * one VMA in it cannot be registered at all (a file mapping the
 * application put there meanwhile), leaving the others registered: then
 * halves, down to single pages, so that every registered VMA is let go. A
 * registration left behind would make the next missing fault there wait
 * for good. */
static int uffd_unregister(int uffd, uintptr_t a, size_t len)
{
	struct uffdio_range r = { a, len };
	size_t half = len / 2 / SP_PAGE * SP_PAGE;

	if (raw_ioctl(uffd, UFFDIO_UNREGISTER, &r) == 0)
		return 0;
	if (errno != EINVAL || len <= SP_PAGE)
		return -errno;
	int e1 = uffd_unregister(uffd, a, half);
	int e2 = uffd_unregister(uffd, a + half, len - half);
	return e1 == -EINVAL && e2 == -EINVAL ? -EINVAL : 0;
}

int os_uffd_thaw(int uffd, uintptr_t a, size_t len)
{
	struct uffdio_range r = { a, len };
	int err = sys_ret(raw_ioctl(uffd, UFFDIO_WAKE, &r));
	int err2 = uffd_unregister(uffd, a, len);

	/* Unregistering wakes too; a writer may only be left blocked when both fail. */
	return err && err2 ? err2 : 0;
}

int os_pagemap(int pmfd, uintptr_t a, size_t n, uint64_t *out)
{
	size_t want = n * sizeof(uint64_t), got = 0;

	while (got < want) {
		ssize_t r = raw_pread(pmfd, (char *)out + got, want - got,
				  (off_t)(a / SP_PAGE * sizeof(uint64_t) + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		got += (size_t)r;
	}
	return 0;
}

/* From include/uapi/linux/fs.h (6.7); Debian 12's headers predate it. */
struct sp_pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct sp_page_region { uint64_t start, end, categories; };
#define SP_PAGEMAP_SCAN _IOWR('f', 16, struct sp_pm_scan_arg)
#define SP_PAGE_IS_FILE (1 << 2)
#define SP_PAGE_IS_PRESENT (1 << 3)
#define SP_PAGE_IS_SWAPPED (1 << 4)
#define SP_PAGE_IS_PFNZERO (1 << 5)

int os_has_zero_page(int pmfd)
{
	struct sp_page_region r;
	volatile unsigned char *p = os_mmap(NULL, SP_PAGE, PROT_READ | PROT_WRITE,
					    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct sp_pm_scan_arg arg = {
		.size = sizeof(arg), .start = (uintptr_t)p, .end = (uintptr_t)p + SP_PAGE,
		.vec = (uintptr_t)&r, .vec_len = 1,
		.category_mask = SP_PAGE_IS_PFNZERO, .return_mask = SP_PAGE_IS_PFNZERO,
	};
	long n;

	if ((void *)p == MAP_FAILED)
		return 1;
	(void)p[0]; /* a read fault: the zero page, where there is one */
	n = raw_ioctl(pmfd, SP_PAGEMAP_SCAN, &arg);
	os_munmap((void *)p, SP_PAGE);
	return n != 0; /* 1 region: it is the zero page; -1: cannot tell */
}

int os_maps_zero_page(int pmfd, uintptr_t a)
{
	struct sp_page_region r;
	struct sp_pm_scan_arg arg = {
		.size = sizeof(arg), .start = a, .end = a + SP_PAGE, .vec = (uintptr_t)&r,
		.vec_len = 1, .category_mask = SP_PAGE_IS_PFNZERO, .return_mask = SP_PAGE_IS_PFNZERO,
	};

	return raw_ioctl(pmfd, SP_PAGEMAP_SCAN, &arg) == 1;
}

uintptr_t os_next_present(int pmfd, uintptr_t a, uintptr_t e)
{
	struct sp_page_region r;
	struct sp_pm_scan_arg arg = {
		.size = sizeof(arg), .start = a, .end = e, .vec = (uintptr_t)&r, .vec_len = 1,
		/* Stop at the first present page: without a limit the kernel
		 * extends the region over every present page after it. */
		.max_pages = 1,
		.category_anyof_mask = SP_PAGE_IS_PRESENT | SP_PAGE_IS_SWAPPED,
		.return_mask = SP_PAGE_IS_PRESENT | SP_PAGE_IS_SWAPPED,
	};
	long n = raw_ioctl(pmfd, SP_PAGEMAP_SCAN, &arg);

	if (n < 0)
		return a;
	return n ? (uintptr_t)r.start : e;
}

long os_written_anon(int pmfd, uintptr_t a, uintptr_t e, uintptr_t *start, uintptr_t *end,
		     uint32_t max, uintptr_t *next)
{
	struct sp_page_region r[64];
	struct sp_pm_scan_arg arg = {
		.size = sizeof(arg), .start = a, .end = e, .vec = (uintptr_t)r,
		.vec_len = max < 64 ? max : 64,
		/* present, and neither the zero page nor a file page */
		.category_mask = SP_PAGE_IS_PRESENT | SP_PAGE_IS_PFNZERO | SP_PAGE_IS_FILE,
		.category_inverted = SP_PAGE_IS_PFNZERO | SP_PAGE_IS_FILE,
		.return_mask = SP_PAGE_IS_PRESENT,
	};
	long n = raw_ioctl(pmfd, SP_PAGEMAP_SCAN, &arg);

	if (n < 0)
		return -errno;
	for (long i = 0; i < n; i++) {
		start[i] = (uintptr_t)r[i].start;
		end[i] = (uintptr_t)r[i].end;
	}
	*next = (uintptr_t)arg.walk_end;
	return n;
}

static uint32_t flag_of(const char *f)
{
	static const struct { char name[3]; uint32_t bit; } tab[] = {
		{ "lo", VF_LOCKED }, { "dd", VF_DONTDUMP }, { "dc", VF_DONTCOPY },
		{ "wf", VF_WIPEONFORK }, { "um", VF_UFFD }, { "uw", VF_UFFD },
		{ "ui", VF_UFFD }, { "io", VF_IO }, { "pf", VF_PFNMAP }, { "ht", VF_HUGETLB },
		{ "gd", VF_GROWSDOWN }, { "hg", VF_HUGEPAGE }, { "nh", VF_NOHUGEPAGE },
		{ "sh", VF_SHARED }, { "mm", VF_MIXEDMAP }, { "de", VF_DONTEXPAND },
		{ "nr", VF_NORESERVE },
	};
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (f[0] == tab[i].name[0] && f[1] == tab[i].name[1])
			return tab[i].bit;
	return 0;
}

static int vmas_push(struct vma_list *l, const struct vma *v)
{
	if (l->n == l->cap && l->fixed)
		return -ENOSPC;
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 256;
		void *m = l->cap ? os_mremap(l->v, l->cap * sizeof(*v), ncap * sizeof(*v),
					     MREMAP_MAYMOVE, NULL)
				 : os_mmap(NULL, ncap * sizeof(*v), PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return -ENOMEM;
		l->v = m;
		l->cap = ncap;
		os_name_mapping(l->v, l->cap * sizeof(*v));
	}
	l->v[l->n++] = *v;
	return 0;
}

/* The kernel writes addresses in lowercase hex. */
static int hex_digit(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int header_line(const char *s)
{
	/* Header lines start with a hex address; field lines with a capital. */
	return hex_digit(*s);
}

/* "start-end perms offset dev inode [path]". -EINVAL for a line the kernel
 * cannot have written: s may be any text (fuzz/proc_maps.c), and the
 * list must stay one that os_vma_find() can search. */
static int parse_header(const char *s, struct vma *v)
{
	char *p;
	unsigned long long start = strtoull(s, &p, 16), end;
	const char *path;
	int own;

	if (p[0] != '-' || !hex_digit(p[1]))
		return -EINVAL;
	end = strtoull(p + 1, &p, 16);
	if (start >= end || (start | end) % SP_PAGE || p[0] != ' ' || !p[1] || !p[2] || !p[3] ||
	    !p[4] || p[5] != ' ')
		return -EINVAL;
	memset(v, 0, sizeof(*v));
	v->start = start;
	v->end = end;
	p++;
	v->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
		  (p[2] == 'x' ? PROT_EXEC : 0);
	v->private_ = p[3] == 'p';
	v->pgoff = strtoull(p + 5, &p, 16) / SP_PAGE;
	while (*p == ' ')
		p++;
	while (*p && *p != ' ')
		p++; /* dev */
	v->ino = strtoull(p, &p, 10);
	while (*p == ' ')
		p++;
	path = p;
	own = !strncmp(path, "[anon:samepage]", 15);
	if (!strncmp(path, "/memfd:samepage-pool", 20))
		v->kind = VMA_POOL;
	else if (v->ino == 0 && (!*path || *path == '\n' || !strncmp(path, "[heap]", 6) ||
				 !strncmp(path, "[stack", 6) || !strncmp(path, "[anon:", 6)))
		v->kind = VMA_ANON;
	else
		v->kind = VMA_OTHER;
	if (own)
		v->kind = VMA_OTHER; /* samepage's own memory is never merged */
	return 0;
}

/* A VMA is pushed at its header; the field lines after it (VmFlags) amend
 * the last one, so the text may come a chunk of whole lines at a time. */
static int parse_line(struct vma_list *l, const char *s)
{
	struct vma v;
	int err;

	if (header_line(s)) {
		err = parse_header(s, &v);
		if (err)
			return err;
		/* The kernel resumes each read() at an address: a VMA that grew
		 * or merged between two reads shows again, overlapping what came
		 * before. os_read_vmas() reads again. */
		if (l->n && v.start < l->v[l->n - 1].end)
			return -EAGAIN;
		l->total++;
		return vmas_push(l, &v);
	}
	if (!strncmp(s, "VmFlags:", 8) && l->n) {
		struct vma *cur = &l->v[l->n - 1];
		for (const char *f = s + 8; *f && *f != '\n'; f++)
			if (f[0] != ' ' && f[1] && f[1] != ' ' && f[1] != '\n' &&
			    (f == s + 8 || f[-1] == ' ')) {
				cur->flags |= flag_of(f);
				f++;
			}
	}
	return 0;
}

/* What parsing needs of a line: a header's fields and the start of its path
 * (the kernel pads the fields to 73 columns), or all of VmFlags (3 bytes a
 * flag). Longer lines are cut: the rest of a path is never looked at. */
#define LINE_BYTES 512

int os_parse_vmas(struct vma_list *l, const char *text, size_t len)
{
	char line[LINE_BYTES];
	int err = 0;

	for (size_t i = 0; i < len && !err;) {
		const char *s = text + i, *nl = memchr(s, '\n', len - i);
		size_t n = nl ? (size_t)(nl - s) : len - i;

		i += n + (nl != NULL);
		/* Most lines (Rss:, Pss:, ...) say nothing we use: not copied. */
		if (!header_line(s) && (n < 8 || memcmp(s, "VmFlags:", 8)))
			continue;
		n = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
		memcpy(line, s, n);
		line[n] = 0;
		err = parse_line(l, line);
	}
	return err;
}

/* One read of the whole file, a buffer of whole lines at a time. */
static int read_vmas_once(struct vma_list *l, char *buf, size_t buflen)
{
	int fd = raw_open("/proc/self/smaps", O_RDONLY | O_CLOEXEC, 0);
	size_t have_bytes = 0;
	int err = 0;

	if (fd < 0)
		return -errno;
	l->n = 0;
	l->total = 0;
	for (;;) {
		ssize_t r = raw_read(fd, buf + have_bytes, buflen - have_bytes - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			err = -errno;
			break;
		}
		have_bytes += (size_t)r;
		/* A line cut by the end of this read waits for the next one. */
		const char *nl = memrchr(buf, '\n', have_bytes);
		size_t whole = nl ? (size_t)(nl - buf) + 1 : 0;
		err = os_parse_vmas(l, buf, whole);
		if (err)
			break;
		have_bytes -= whole;
		memmove(buf, buf + whole, have_bytes);
		if (r == 0)
			break;
	}
	raw_close(fd);
	return err;
}

/* Reads that a change of the address space made inconsistent (-EAGAIN)
 * are retried: the window is two read() calls wide, so a few suffice. */
#define READ_TRIES 4

int os_read_vmas(struct vma_list *l, char *buf, size_t buflen)
{
	int err = -EAGAIN;

	for (int i = 0; i < READ_TRIES && err == -EAGAIN; i++)
		err = read_vmas_once(l, buf, buflen);
	return err;
}

void os_vmas_free(struct vma_list *l)
{
	if (l->cap)
		os_munmap(l->v, l->cap * sizeof(*l->v));
	memset(l, 0, sizeof(*l));
}

const struct vma *os_vma_find(const struct vma_list *l, uintptr_t a)
{
	size_t lo = 0, hi = l->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (a < l->v[mid].start)
			hi = mid;
		else if (a >= l->v[mid].end)
			lo = mid + 1;
		else
			return &l->v[mid];
	}
	return NULL;
}

/* From include/uapi/linux/fs.h (6.11); Debian 12's headers predate it. */
struct sp_procmap_query {
	uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags;
	uint64_t vma_page_size, vma_offset, inode;
	uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
	uint64_t vma_name_addr, build_id_addr;
};
#define SP_PROCMAP_QUERY _IOWR('f', 17, struct sp_procmap_query)

static void vma_from_query(const struct sp_procmap_query *q, struct vma *v);

int os_vma_query(int mapsfd, uintptr_t a, struct vma *v)
{
	struct sp_procmap_query q = { .size = sizeof(q), .query_addr = a };

	if (raw_ioctl(mapsfd, SP_PROCMAP_QUERY, &q) < 0)
		return -errno;
	vma_from_query(&q, v);
	return 0;
}

int os_vma_query_named(int mapsfd, uintptr_t a, struct vma *v)
{
	char name[128];
	struct sp_procmap_query q = { .size = sizeof(q), .query_addr = a,
				      .vma_name_addr = (uintptr_t)name,
				      .vma_name_size = sizeof(name) };

	if (raw_ioctl(mapsfd, SP_PROCMAP_QUERY, &q) < 0) {
		/* A longer name is not one of ours. */
		if (errno == ENAMETOOLONG)
			return os_vma_query(mapsfd, a, v);
		return -errno;
	}
	vma_from_query(&q, v);
	if (q.vma_name_size && !strncmp(name, "/memfd:samepage-pool", 20))
		v->kind = VMA_POOL;
	return 0;
}

static void vma_from_query(const struct sp_procmap_query *q, struct vma *v)
{
	memset(v, 0, sizeof(*v));
	v->start = q->vma_start;
	v->end = q->vma_end;
	v->pgoff = q->vma_offset / SP_PAGE;
	v->ino = q->inode;
	v->prot = (q->vma_flags & 1 ? PROT_READ : 0) | (q->vma_flags & 2 ? PROT_WRITE : 0) |
		  (q->vma_flags & 4 ? PROT_EXEC : 0);
	v->private_ = !(q->vma_flags & 8);
	v->kind = q->inode ? VMA_OTHER : VMA_ANON;
}

void os_name_mapping(void *a, size_t len)
{
	syscall(SYS_prctl, PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)a, len,
		(unsigned long)"samepage");
}

int os_apply_flags(uintptr_t a, size_t len, uint32_t flags)
{
	void *p = (void *)a;
	int err = 0;

	/* On fault: a locked private writable mapping would otherwise be
	 * populated by write faults, copying every merged page at once. */
	if ((flags & VF_LOCKED) && syscall(SYS_mlock2, p, len, MLOCK_ONFAULT) < 0)
		err = -errno;
	if (flags & VF_DONTDUMP)
		err = err ? err : os_madvise(p, len, MADV_DONTDUMP);
	if (flags & VF_DONTCOPY)
		err = err ? err : os_madvise(p, len, MADV_DONTFORK);
	/* THP advice is a hint; on a file mapping the kernel may refuse it. */
	if (flags & VF_HUGEPAGE)
		os_madvise(p, len, MADV_HUGEPAGE);
	if (flags & VF_NOHUGEPAGE)
		os_madvise(p, len, MADV_NOHUGEPAGE);
	return err;
}

int os_thread_nicer(int inc)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	int cur;

	errno = 0;
	cur = getpriority(PRIO_PROCESS, (id_t)tid);
	if (cur == -1 && errno)
		return -errno;
	return setpriority(PRIO_PROCESS, (id_t)tid, cur + inc) ? -errno : 0;
}

void os_coredump_private_file(void)
{
	char buf[32];
	int fd = raw_open("/proc/self/coredump_filter", O_RDWR | O_CLOEXEC, 0);
	ssize_t n;

	if (fd < 0)
		return;
	n = raw_read(fd, buf, sizeof(buf) - 1);
	if (n > 0) {
		buf[n] = 0;
		unsigned long f = strtoul(buf, NULL, 16) | 0x4; /* bit 2: private file-backed */
		n = snprintf(buf, sizeof(buf), "%lx", f);
		if (pwrite(fd, buf, (size_t)n, 0) < 0) {
			/* best effort: a read-only /proc leaves cores without merged pages */
		}
	}
	raw_close(fd);
}

size_t os_max_map_count(void)
{
	char buf[32];
	int fd = raw_open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC, 0);
	ssize_t n = fd >= 0 ? raw_read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		raw_close(fd);
	if (n <= 0)
		return 65530;
	buf[n] = 0;
	return strtoul(buf, NULL, 10);
}

void os_read_pages(int mem_fd, const void *addr, size_t stride, uint32_t n, unsigned char *buf,
		   uint8_t *got)
{
	struct iovec local, remote[256];
	pid_t self = getpid();
	uint32_t i = 0;

	memset(got, 0, n);
	while (i < n) {
		uint32_t k = n - i < 256 ? n - i : 256;
		for (uint32_t j = 0; j < k; j++) {
			uintptr_t a = *(const uintptr_t *)((const char *)addr + (size_t)(i + j) * stride);
			remote[j] = (struct iovec){ (void *)a, SP_PAGE };
		}
		local = (struct iovec){ buf + (size_t)i * SP_PAGE, (size_t)k * SP_PAGE };
		/* The kernel reads through its own mapping of the pages: no fault
		 * for us, and a page that is gone ends the copy there. */
		ssize_t r = syscall(SYS_process_vm_readv, self, &local, 1UL, remote, (unsigned long)k,
				    0UL);
		uint32_t done = r > 0 ? (uint32_t)(r / SP_PAGE) : 0;
		memset(got + i, 1, done);
		i += done;
		if (done < k) {
			/* PROT_NONE, or gone: /proc/self/mem reads the former
			 * (FOLL_FORCE) and fails on the latter. */
			uintptr_t a = (uintptr_t)remote[done].iov_base;
			got[i] = mem_fd >= 0 &&
				 raw_pread(mem_fd, buf + (size_t)i * SP_PAGE, SP_PAGE, (off_t)a) == SP_PAGE;
			i++;
		}
	}
}

int os_copy_in(void *dst, const void *src, size_t len)
{
	struct iovec local = { dst, len }, remote = { (void *)src, len };
	ssize_t r = syscall(SYS_process_vm_readv, getpid(), &local, 1UL, &remote, 1UL, 0UL);

	return r == (ssize_t)len ? 0 : -EFAULT;
}

int os_marker_map(int fd, uintptr_t *addr)
{
	void *p = os_mmap(NULL, SP_PAGE, PROT_READ, MAP_SHARED, fd, 0);
	int seals;

	if (p == MAP_FAILED)
		return -errno;
	/* Mapped first, then asked: a seal added before our mapping means the
	 * daemon found the marker unmapped and let its set go; one added after
	 * cannot be, since our mapping makes sealing fail. */
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & F_SEAL_WRITE)) {
		os_munmap(p, SP_PAGE);
		return -EBUSY;
	}
	*addr = (uintptr_t)p;
	return 0;
}

int os_marker_create(int *fd, uintptr_t *addr)
{
	int f = memfd_create("samepage-mark", MFD_CLOEXEC | MFD_ALLOW_SEALING), err;

	if (f < 0)
		return -errno;
	if (ftruncate(f, SP_PAGE) < 0) {
		err = -errno;
		raw_close(f);
		return err;
	}
	err = os_marker_map(f, addr);
	if (err) {
		raw_close(f);
		return err;
	}
	*fd = f;
	return 0;
}
