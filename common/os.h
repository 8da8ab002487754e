/* SPDX-License-Identifier: MIT */
/*
 * os — every userfaultfd, pagemap and /proc call the library makes, behind a
 * narrow interface (after mimalloc's prim layer). All return 0 or -errno.
 * None allocates with malloc: the scanner calls them while application
 * threads may hold malloc's locks or sit blocked on a frozen page.
 */
#ifndef SAMEPAGE_OS_H
#define SAMEPAGE_OS_H

#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* Raw system calls for the mappings samepage makes itself. The library
 * exports mmap, munmap, mremap and madvise to interpose them; its own calls
 * must not land in those wrappers (they take the library's lock). */
void *os_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off);
int os_munmap(void *a, size_t len);
/* mprotect(2), not the library's wrapper (which takes lib.lock): 0 or -errno. */
int os_mprotect(void *a, size_t len, int prot);
void *os_mremap(void *old, size_t oldlen, size_t len, int flags, void *new_addr);
int os_madvise(void *a, size_t len, int advice);

/* The descriptor calls of everything linked into libsamepage (lib/ and
 * common/). The library exports open, read, pread, write, close and ioctl
 * to serve the KSM files and to see an application's own userfaultfd
 * (lib/preload_files.c, lib/preload.c); its own calls must reach the
 * kernel, not those wrappers, or calls would run upward. They stand in for
 * libc's one for one, so they keep libc's convention: -1 and errno. */
static inline int raw_open(const char *path, int flags, mode_t mode)
{
	return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

static inline int raw_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

static inline ssize_t raw_read(int fd, void *buf, size_t n)
{
	return syscall(SYS_read, fd, buf, n);
}

static inline ssize_t raw_pread(int fd, void *buf, size_t n, off_t off)
{
	return syscall(SYS_pread64, fd, buf, n, off);
}

static inline ssize_t raw_write(int fd, const void *buf, size_t n)
{
	return syscall(SYS_write, fd, buf, n);
}

static inline int raw_ioctl(int fd, unsigned long req, void *arg)
{
	return (int)syscall(SYS_ioctl, fd, req, arg);
}

/* Open a userfaultfd able to write-protect anonymous and shmem memory:
 * /dev/userfaultfd first (works for its group/others when readable), then
 * userfaultfd(2) (works for root, or with vm.unprivileged_userfaultfd=1).
 * -EPERM when neither is allowed, -ENOSYS when the kernel lacks WP. */
int os_uffd_open(void);
/* Freeze: register [a, a+len) for write-protect faults and protect it.
 * Writers block in the kernel until os_uffd_thaw; readers carry on. */
int os_uffd_freeze(int uffd, uintptr_t a, size_t len);
/* A frozen range's missing faults wait too, from now until the thaw: its
 * pages may be taken out (os_uffd_move()), and a reader must not see the
 * hole. Not before our own reads of the range are done, and no read of
 * application memory by the caller until the thaw (the environment
 * included): a page gone meanwhile would make it wait on itself. */
int os_uffd_hold_missing(int uffd, uintptr_t a, size_t len);
/* Lift write protection from pages still in the registered VMAs (wakes
 * their writers). Only for ranges not remapped since the freeze. */
int os_uffd_unprotect(int uffd, uintptr_t a, size_t len);
/* Wake writers blocked anywhere in the range, then unregister it. */
int os_uffd_thaw(int uffd, uintptr_t a, size_t len);
/* Register [a, a+len) for missing faults, so that os_uffd_copy() may fill
 * it (a private file mapping then takes anonymous pages without touching
 * the file). 0 or -errno. */
int os_uffd_register_missing(int uffd, uintptr_t a, size_t len);
/* Copy len bytes from src into the registered missing range at dst. */
int os_uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len);
/* Map the zero page over the registered missing range [dst, dst+len). */
int os_uffd_zeropage(int uffd, uintptr_t dst, size_t len);
/* UFFDIO_MOVE (Linux 6.8): move the anonymous pages of [src, src+len)
 * to the registered range at dst, page frames and all. The kernel refuses
 * a page pinned for a device (-EBUSY; also a page a fork shares), a hole
 * (-ENOENT) and a VMA it cannot move from (-EINVAL, -ENOTTY before 6.8).
 * *moved: bytes moved before the page that stopped it. */
int os_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len, size_t *moved);

/* Raw pagemap entries of n pages from a. */
int os_pagemap(int pmfd, uintptr_t a, size_t n, uint64_t *out);
#define PM_PRESENT(e) (((e) >> 63) & 1)
#define PM_SWAP(e) (((e) >> 62) & 1)
#define PM_FILE(e) (((e) >> 61) & 1)
#define PM_EXCLUSIVE(e) (((e) >> 56) & 1)

/* Does the page at a map the kernel's zero page (PAGEMAP_SCAN)? 0 also
 * where the kernel cannot tell. */
int os_maps_zero_page(int pmfd, uintptr_t a);
/* First page at or after a (below e) that is present or swapped, or e when
 * none is: lets a pass skip reserved-but-untouched memory (sanitizer
 * shadows, heap reservations) at page-table speed. PAGEMAP_SCAN, Linux
 * 6.7+; returns a (no skipping) where the ioctl is missing. */
uintptr_t os_next_present(int pmfd, uintptr_t a, uintptr_t e);

/* Runs [start[i], end[i]) of pages in [a, e) that are present anonymous
 * pages of their own (not the zero page, not a file page): up to max
 * runs (at most 64), how many, or -errno (PAGEMAP_SCAN, Linux 6.7+).
 * *next: where the walk stopped, to go on from. */
long os_written_anon(int pmfd, uintptr_t a, uintptr_t e, uintptr_t *start, uintptr_t *end,
		     uint32_t max, uintptr_t *next);

/* VMA flags from /proc/self/smaps "VmFlags", the ones that decide
 * eligibility (invariant 4) or must be carried over to a replacement
 * mapping (invariant 3). */
enum {
	VF_LOCKED = 1 << 0, VF_DONTDUMP = 1 << 1, VF_DONTCOPY = 1 << 2,
	VF_WIPEONFORK = 1 << 3, VF_UFFD = 1 << 4, VF_IO = 1 << 5, VF_PFNMAP = 1 << 6,
	VF_HUGETLB = 1 << 7, VF_GROWSDOWN = 1 << 8, VF_HUGEPAGE = 1 << 9,
	VF_NOHUGEPAGE = 1 << 10, VF_SHARED = 1 << 11, VF_MIXEDMAP = 1 << 12,
	VF_DONTEXPAND = 1 << 13, VF_NORESERVE = 1 << 14,
};

enum vma_kind { VMA_OTHER, VMA_ANON, VMA_POOL };

struct vma {
	uintptr_t start, end;
	uint64_t pgoff;   /* file offset in pages */
	uint64_t ino;
	uint32_t flags;   /* VF_* */
	uint8_t prot;     /* PROT_* */
	uint8_t kind;     /* vma_kind */
	uint8_t private_;
	uint8_t pad;
};

struct vma_list {
	struct vma *v;
	size_t n, cap;
	size_t total;     /* every VMA of the process, for the VMA budget */
	int fixed;        /* v has a fixed capacity: -ENOSPC rather than grow */
};

/* Read /proc/self/smaps into l (kinds: private anonymous memory, private
 * mappings of the pool, everything else). buf/buflen: scratch space. */
int os_read_vmas(struct vma_list *l, char *buf, size_t buflen);
/* Append to l the VMAs that len bytes of smaps text describe (os_read_vmas
 * feeds it a buffer of whole lines at a time; a last line without '\n'
 * counts too). Field lines amend the VMA l ends with, so a VMA may span
 * two calls. Separate from the reading so that fuzz/proc_maps.c can feed
 * it any text: l only ever gets VMAs with start < end, page-aligned, each
 * above the one before (os_vma_find() depends on that). -EINVAL for a
 * header the kernel cannot have written, -EAGAIN for one that overlaps the
 * VMA before it (the address space changed between two reads),
 * -ENOSPC/-ENOMEM when l is full. */
int os_parse_vmas(struct vma_list *l, const char *text, size_t len);
void os_vmas_free(struct vma_list *l);
/* Copy n pages of our own memory, page i from addr[i] (an array with
 * `stride` bytes between elements), into buf page i, without ever faulting:
 * the application may unmap memory behind our wrappers (glibc's malloc
 * unmaps and trims through its internal calls), and a plain read of it
 * would kill the process. got[i]: page i was read. A page that
 * process_vm_readv cannot read is read through mem_fd (/proc/self/mem, -1:
 * none), which reads PROT_NONE pages too, as the kernel's KSM does; pages
 * gone are skipped. */
void os_read_pages(int mem_fd, const void *addr, size_t stride, uint32_t n, unsigned char *buf,
		   uint8_t *got);

/* Copy len bytes of our own memory at src into dst without faulting (an
 * argument the application passed us, which the kernel would have read
 * with copy_from_user): 0, or -EFAULT where src is not readable. */
int os_copy_in(void *dst, const void *src, size_t len);

/* The VMA containing a, or NULL. l is sorted. */
const struct vma *os_vma_find(const struct vma_list *l, uintptr_t a);

/* The VMA containing a, asked of the kernel now (PROCMAP_QUERY on an open
 * /proc/self/maps, Linux 6.11+): start, end, prot, private_, ino (kind is
 * VMA_ANON for inode 0, else VMA_OTHER). -ENOENT if a is unmapped,
 * -ENOTTY on kernels without the ioctl. */
int os_vma_query(int mapsfd, uintptr_t a, struct vma *v);
/* The same, and VMA_POOL where the mapping is one of samepage's segments
 * (named /memfd:samepage-pool…), whichever daemon made it. */
int os_vma_query_named(int mapsfd, uintptr_t a, struct vma *v);

/* Give a mapping samepage's name in /proc/PID/maps (best effort). */
void os_name_mapping(void *a, size_t len);
/* Apply VMA flags of an anonymous mapping to its replacement. */
int os_apply_flags(uintptr_t a, size_t len, uint32_t flags);
/* Include private file mappings (merged pages) in core dumps. */
void os_coredump_private_file(void);
/* Lower the calling thread's priority by inc nice steps (only this
 * thread; lowering needs no privilege). 0 or -errno. */
int os_thread_nicer(int inc);
/* Does reading dropped anonymous memory map the shared zero page? Not on
 * kernels booted without one (seen here: pvm_no_zero_page=1), where
 * use_zero_pages would save nothing. Assumed yes without PAGEMAP_SCAN. */
int os_has_zero_page(int pmfd);
/* vm.max_map_count, or 65530. */
size_t os_max_map_count(void);

/* A marker (DESIGN.md, "Who holds a reference"): a one-page memfd, mapped
 * shared and never touched. The daemon keeps a process's references while
 * anyone maps its marker. 0 with *fd and *addr, or -errno. */
int os_marker_create(int *fd, uintptr_t *addr);
/* Map marker fd again (for another fork child); -EBUSY when the daemon has
 * sealed it since, i.e. the references it kept are gone. */
int os_marker_map(int fd, uintptr_t *addr);

#endif
