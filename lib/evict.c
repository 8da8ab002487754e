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
 * Every function here runs with lib.lock held; evict_run() and
 * evict_undo() under a freeze that holds missing faults too
 * (os_uffd_hold_missing()), so that a reader of a page taken out waits
 * instead of seeing a hole.
 */
#define _GNU_SOURCE
#include "lib.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
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

static int8_t *state(struct evict *ev, uintptr_t p)
{
	return &ev->st[(p - ev->base) / SP_PAGE];
}

static void mark(struct evict *ev, uintptr_t p, uintptr_t q, int8_t s)
{
	for (; p < q; p += SP_PAGE)
		*state(ev, p) = s;
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
		*state(ev, p) = err == -EBUSY	 ? busy_state(l, p) :
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
		if (*state(ev, p) != EV_MOVED)
			continue;
		/* Back where it was: its PTE is still empty (readers wait).
		 * Failing that, its bytes: a copy into the registered hole. */
		uintptr_t src = ev->scratch + (p - ev->base);
		if (os_uffd_move(l->uffd, p, src, SP_PAGE, &moved) &&
		    os_uffd_copy(l->uffd, p, (const void *)src, SP_PAGE))
			sp_log("samepage[%d]: evict: page %#lx could not be put back\n",
			       (int)getpid(), (unsigned long)p);
		*state(ev, p) = EV_NONE;
	}
}

void evict_close(struct lib *l, struct evict *ev)
{
	for (uintptr_t p = ev->base; p < ev->base + ev->len; p += SP_PAGE)
		/* Made ours alone if no device holds it: the next pass may
		 * move it. A write fault without a write: bytes and frame
		 * stay. */
		if (*state(ev, p) == EV_PINNED) {
			l->st.pinned++;
			os_madvise((void *)p, SP_PAGE, MADV_POPULATE_WRITE);
		}
	if (ev->scratch)
		os_munmap((void *)ev->scratch, ev->len);
	ev->scratch = 0;
}
