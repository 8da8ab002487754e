/* SPDX-License-Identifier: MIT */
/*
 * evict — the frozen pages a merge replaces leave the application's
 * mapping through UFFDIO_MOVE first (DESIGN.md, "Pages a device may
 * write"). Replacing a page drops its frame; a frame pinned for a device
 * (an O_DIRECT read in flight, io_uring registered buffers, RDMA) goes on
 * being written by the device, and that write would be lost. The kernel
 * refuses to move a pinned page: that refusal is kernel KSM's pin check
 * (page_maybe_dma_pinned), the one user space can reach. A page moved out
 * is ours alone, in a scratch mapping the application never sees, until
 * evict_close() frees it or evict_undo() puts it back.
 *
 * A written copy of a merged page lies in a pool VMA, which UFFDIO_MOVE
 * cannot take from: it may be dropped only where nothing in the process
 * can pin a page (evict_copies_pinnable()).
 *
 * Every function here runs with lib.lock held; evict_run() and
 * evict_undo() under a freeze that holds missing faults too
 * (os_uffd_hold_missing()), so that a reader of a page taken out waits
 * instead of seeing a hole.
 */
#define _GNU_SOURCE
#include "lib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void evict_init(struct evict *ev, uintptr_t s, uintptr_t e, int8_t *st)
{
	ev->base = s;
	ev->len = e - s;
	ev->scratch = 0;
	ev->st = st;
	memset(st, EV_NONE, ev->len / SP_PAGE);
}

/* The scratch mapping, made on first use: anonymous like the pages it
 * takes, mlocked (on fault) where they are, since UFFDIO_MOVE wants both
 * VMAs alike; registered with our userfaultfd, which it wants of the
 * destination. */
static int scratch_open(struct lib *l, struct evict *ev, uint32_t vmflags)
{
	void *p = os_mmap(NULL, ev->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			  0);
	int err;

	if (p == MAP_FAILED)
		return -ENOMEM;
	err = os_apply_flags((uintptr_t)p, ev->len, vmflags & VF_LOCKED);
	if (!err)
		err = os_uffd_register_missing(l->uffd, (uintptr_t)p, ev->len);
	if (err) {
		os_munmap(p, ev->len);
		return err;
	}
	ev->scratch = (uintptr_t)p;
	return 0;
}

/* Why the kernel would not move the page at p (-EBUSY): pinned, or not
 * ours alone. A page a fork child maps too cannot be pinned for writing
 * (pinning it would have copied it first), so it may be replaced as
 * before; one mapped here alone may be pinned, or left shared by a fork
 * child that has exited since (evict_settle() makes that one ours). */
static int8_t busy_state(struct lib *l, uintptr_t p)
{
	uint64_t pm;

	if (os_pagemap(l->pmfd, p, 1, &pm) == 0 && PM_PRESENT(pm) && !PM_FILE(pm) &&
	    !PM_EXCLUSIVE(pm))
		return EV_SHARED;
	return EV_PINNED;
}

static void mark(struct evict *ev, uintptr_t p, uintptr_t q, int8_t s)
{
	for (; p < q; p += SP_PAGE)
		*evict_state(ev, p) = s;
}

int evict_run(struct lib *l, struct evict *ev, uint32_t vmflags, uintptr_t addr, uint32_t n,
	      uint8_t prot)
{
	uintptr_t p = addr, e = addr + (size_t)n * SP_PAGE;
	int tries = 0;

	/* No writable mapping, no new pin; the kernel moves only from one. */
	if (l->no_move || !(prot & PROT_WRITE)) {
		mark(ev, p, e, EV_UNCHECKED);
		return 0;
	}
	if (!ev->scratch) {
		int err = scratch_open(l, ev, vmflags);
		if (err)
			return err;
	}
	uintptr_t dst = ev->scratch + (addr - ev->base);
	if (prot != (PROT_READ | PROT_WRITE) && os_mprotect((void *)dst, e - p, prot) < 0)
		return -errno;
	while (p < e) {
		size_t moved;
		int err = os_uffd_move(l->uffd, ev->scratch + (p - ev->base), p, e - p, &moved);
		mark(ev, p, p + moved, EV_MOVED);
		p += moved;
		if (!err)
			break;
		if (err == -EAGAIN && !moved && ++tries < 3)
			continue;
		tries = 0;
		if (err == -EAGAIN && moved)
			continue;
		if (err == -ENOTTY) {
			/* Before Linux 6.8: nothing can be checked. */
			l->no_move = 1;
			mark(ev, p, e, EV_UNCHECKED);
			return 0;
		}
		/* -EBUSY: see busy_state(); -ENOENT: unmapped or dropped since
		 * it was compared (an unwrapped MADV_DONTNEED): it reads zeros
		 * now, so it must not be replaced; -EINVAL: a VMA the kernel
		 * will not move from (soft-dirty tracking, a pool VMA's
		 * written copy). */
		*evict_state(ev, p) = err == -EBUSY	 ? busy_state(l, p) :
				err == -ENOENT	 ? EV_GONE :
				err == -EINVAL	 ? EV_UNCHECKED :
						   EV_PINNED;
		p += SP_PAGE;
	}
	return 0;
}

void evict_undo(struct lib *l, struct evict *ev, uintptr_t addr, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++) {
		uintptr_t p = addr + (size_t)k * SP_PAGE;
		size_t moved;
		if (*evict_state(ev, p) != EV_MOVED)
			continue;
		/* Back where it was: its PTE is still empty (readers wait).
		 * Failing that, its bytes: a copy into the registered hole. */
		uintptr_t src = ev->scratch + (p - ev->base);
		if (os_uffd_move(l->uffd, p, src, SP_PAGE, &moved) &&
		    os_uffd_copy(l->uffd, p, (const void *)src, SP_PAGE))
			sp_log("samepage[%d]: evict: page %#lx could not be put back\n",
			       (int)getpid(), (unsigned long)p);
		*evict_state(ev, p) = EV_NONE;
	}
}

void evict_close(struct lib *l, struct evict *ev)
{
	for (uintptr_t p = ev->base; p < ev->base + ev->len; p += SP_PAGE)
		/* Made ours alone if no device holds it: the next pass may
		 * move it. A write fault without a write: bytes and frame
		 * stay. */
		if (*evict_state(ev, p) == EV_PINNED) {
			l->st.pinned++;
			os_madvise((void *)p, SP_PAGE, MADV_POPULATE_WRITE);
		}
	if (ev->scratch)
		os_munmap((void *)ev->scratch, ev->len);
	ev->scratch = 0;
}

/* ---- written copies: what may pin them ---- */

/* Opened by a program that may have the kernel write its pages behind the
 * page tables: device memory registration (VFIO, RDMA, GPUs, SCSI and
 * NVMe pass-through, ublk). */
static const char *const pinning_devices[] = {
	"/dev/vfio/", "/dev/infiniband/", "/dev/dri/", "/dev/nvidia", "/dev/sg", "/dev/bsg/",
	"/dev/ng", "/dev/ublk", "anon_inode:[vfio", NULL,
};

/* The number after key in an fdinfo text, or 0 (base: 8 for flags). */
static unsigned long fdinfo_num(const char *text, const char *key, int base)
{
	const char *p = strstr(text, key);

	return p ? strtoul(p + strlen(key), NULL, base) : 0;
}

/* May descriptor fd pin pages: a pinning device; a regular file or block
 * device opened O_DIRECT (a read in flight pins its buffer); an io_uring
 * with registered buffers or files (files it may read O_DIRECT after the
 * descriptor is closed)? */
static int fd_may_pin(int fd)
{
	char path[64], link[256], info[2048];
	ssize_t k;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	k = syscall(SYS_readlinkat, AT_FDCWD, path, link, sizeof(link) - 1);
	if (k < 0)
		return 0; /* closed meanwhile */
	link[k] = 0;
	for (int i = 0; pinning_devices[i]; i++)
		if (!strncmp(link, pinning_devices[i], strlen(pinning_devices[i])))
			return 1;
	int uring = !strcmp(link, "anon_inode:[io_uring]");
	if (link[0] != '/' && !uring)
		return 0; /* sockets, pipes, eventfds... */
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	int f = raw_open(path, O_RDONLY | O_CLOEXEC, 0);
	if (f < 0)
		return 0;
	k = raw_read(f, info, sizeof(info) - 1);
	raw_close(f);
	if (k <= 0)
		return 0;
	info[k] = 0;
	if (uring)
		return fdinfo_num(info, "UserBufs:", 10) || fdinfo_num(info, "UserFiles:", 10);
	return (fdinfo_num(info, "flags:", 8) & O_DIRECT) != 0;
}

int evict_copies_pinnable(struct lib *l)
{
	char buf[4096];
	int dir, found = 0;

	/* Once a pass: written copies come in bursts. */
	if (l->pins_seen && l->pins_pass == l->pass_seq)
		return l->pins_possible;
	dir = raw_open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
	if (dir < 0)
		return 1; /* cannot tell: assume the worst */
	for (;;) {
		long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));
		if (n < 0)
			found = 1;
		if (n <= 0 || found)
			break;
		for (long off = 0; off < n && !found;) {
			const struct dirent64 *d = (const struct dirent64 *)(buf + off);
			char *end;
			long fd = strtol(d->d_name, &end, 10);
			off += d->d_reclen;
			if (*end == 0 && end != d->d_name && fd != dir)
				found = fd_may_pin((int)fd);
		}
	}
	raw_close(dir);
	l->pins_seen = 1;
	l->pins_pass = l->pass_seq;
	l->pins_possible = found;
	return found;
}
