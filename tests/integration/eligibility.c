/* SPDX-License-Identifier: MIT */
/*
 * MADV_MERGEABLE behaves as kernel KSM's madvise (DESIGN.md invariant 4),
 * through samepage_madvise() and through the interposed madvise():
 *  - argument errors: unaligned address → EINVAL, a length that overflows →
 *    EINVAL, length 0 → 0, advice other than MERGEABLE/UNMERGEABLE to
 *    samepage_madvise → -EINVAL;
 *  - a range with an unmapped hole → -1/ENOMEM, and the mapped parts merge;
 *  - ineligible memory is accepted with 0 and never merged: MAP_SHARED
 *    anonymous memory, a MAP_PRIVATE file mapping (even its COW'd pages),
 *    memory registered with the application's own userfaultfd, and
 *    MADV_WIPEONFORK memory (frames unchanged, same content in both
 *    processes);
 *  - a PROT_NONE mergeable range merges as it is, as on kernel KSM (read
 *    through /proc/self/mem), keeps PROT_NONE (a child touching it dies of
 *    SIGSEGV), and stays merged and intact once mprotect'ed to read-write;
 *  - an mlock'ed range stays locked once merged ("lo" on every VMA, VmLck);
 *  - MADV_DONTDUMP is kept ("dd" on the pool VMAs).
 *
 * A partner process holds the same content as each case in plain mergeable
 * memory: block i of 64 pages with seed SEED0 + i. The test process itself
 * is the other side of every case.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define BP 64u                         /* pages per block */
#define BLEN ((size_t)BP * PAGE)
#define SEED0 100u
enum { B_HOLE1, B_HOLE2, B_SHARED, B_FILE, B_UFFD, B_WIPE, B_PROTNONE, B_MLOCK, B_DONTDUMP, NB };
static const char *const bname[NB] = {
	"hole part 1", "hole part 2", "MAP_SHARED anonymous", "MAP_PRIVATE file", "userfaultfd",
	"MADV_WIPEONFORK", "PROT_NONE", "mlock", "MADV_DONTDUMP",
};

/* ---- the partner ---- */

static int partner(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(NB * BLEN), *ref = malloc(NB * BLEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;
	(void)arg;

	for (int i = 0; i < NB; i++)
		tu_fill(p + i * BLEN, BLEN, SEED0 + i);
	memcpy(ref, p, NB * BLEN);
	if (samepage_madvise(p, NB * BLEN, MADV_MERGEABLE) != 0)
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		char ok = !memcmp(p, ref, NB * BLEN);
		if (cmd == 'q')
			return ok ? 0 : 1;
		tu_send(wr, &ok, 1);
	}
	return 1;
}

/* Slot of each block in the reservation; the others stay PROT_NONE, and
 * the slot after hole part 1 is unmapped. */
#define NSLOTS 16
static const int slot[NB] = {
	[B_HOLE1] = 0, [B_HOLE2] = 2, [B_MLOCK] = 3, [B_DONTDUMP] = 4, [B_SHARED] = 6,
	[B_FILE] = 8, [B_UFFD] = 10, [B_WIPE] = 12, [B_PROTNONE] = 14,
};

/* Report and go on: the attribute checks are independent. */
static int soft_failed;

static struct tu_child pc;
static uintptr_t pbase;
static unsigned char *blk[NB];   /* our side of each case */
static uint64_t before_a[NB][BP], before_p[NB][BP];

static uintptr_t paddr(int b, uint32_t k)
{
	return pbase + (uintptr_t)b * BLEN + (uintptr_t)k * PAGE;
}

static uintptr_t aaddr(int b, uint32_t k)
{
	return (uintptr_t)blk[b] + (uintptr_t)k * PAGE;
}

/* Pages of block b our process shares with the partner. Merged PROT_NONE
 * pages are mapped, not faulted in: a read through /proc/self/mem (as a
 * debugger's, FOLL_FORCE) faults each in first. */
static uint32_t shared_pages(int b)
{
	uint32_t n = 0;
	int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	unsigned char c;

	for (uint32_t k = 0; mem >= 0 && k < BP; k++)
		if (pread(mem, &c, 1, (off_t)aaddr(b, k)) != 1)
			break;
	if (mem >= 0)
		close(mem);
	for (uint32_t k = 0; k < BP; k++) {
		uint64_t f = tu_pfn(getpid(), aaddr(b, k));
		n += f && f == tu_pfn(pc.pid, paddr(b, k));
	}
	return n;
}

static int all_merged(void *arg)
{
	const int *bs = arg;

	for (; *bs >= 0; bs++)
		if (shared_pages(*bs) != BP)
			return 0;
	return 1;
}

static int content_ok(int b)
{
	unsigned char *exp = malloc(BLEN);
	int ok;

	tu_fill(exp, BLEN, SEED0 + b);
	ok = !memcmp(blk[b], exp, BLEN);
	free(exp);
	return ok;
}

static int partner_ok(void)
{
	char c = 'c', ok = 0;

	TU_CHECK(tu_send(pc.wr, &c, 1) == 0 && tu_recv(pc.rd, &ok, 1) == 0, "partner died");
	return ok;
}

/* VMAs overlapping [s, e): how many, how many carry VmFlags flag, how many
 * map the pool. */
struct vmas { int n, with_flag, pool, pool_with_flag; };

static struct vmas vmas_in(uintptr_t s, uintptr_t e, const char *flag)
{
	struct vmas v = { 0 };
	char line[1024];
	FILE *f = fopen("/proc/self/smaps", "r");
	int in = 0, pool = 0;

	if (!f)
		TU_FAIL("open smaps");
	while (fgets(line, sizeof(line), f)) {
		unsigned long vs, ve;
		char perm[8];
		if (sscanf(line, "%lx-%lx %7s", &vs, &ve, perm) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			in = vs < e && ve > s;
			pool = in && strstr(line, "/memfd:samepage-pool") != NULL;
			v.n += in;
			v.pool += pool;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			char pat[8];
			snprintf(pat, sizeof(pat), " %s", flag);
			int has = strstr(line + 7, pat) != NULL;
			v.with_flag += has;
			v.pool_with_flag += has && pool;
		}
	}
	fclose(f);
	return v;
}

/* Permissions of the VMA containing a, from /proc/self/maps ("rw-p"...). */
static void perms_at(uintptr_t a, char out[5])
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");

	strcpy(out, "none");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long vs, ve;
		char perm[8];
		if (sscanf(line, "%lx-%lx %7s", &vs, &ve, perm) == 3 && a >= vs && a < ve) {
			memcpy(out, perm, 4);
			out[4] = 0;
		}
	}
	if (f)
		fclose(f);
}

static long vmlck_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* A child touching addr must die of SIGSEGV. */
static void expect_segv(uintptr_t addr, const char *what)
{
	int st;
	pid_t pid = fork();

	TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		signal(SIGSEGV, SIG_DFL);
		(void)*(volatile unsigned char *)addr;
		_exit(0);
	}
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	TU_CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
		 "%s: a read did not fault (child status %#x)", what, st);
}

static unsigned char *anon(size_t len, int flags)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	TU_CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

static void args_errors(void)
{
	unsigned char *p = anon(4 * PAGE, MAP_PRIVATE);
	size_t wrap = (size_t)0 - (uintptr_t)p + PAGE; /* p + wrap wraps past 0 */
	int advs[2] = { MADV_MERGEABLE, MADV_UNMERGEABLE };

	memset(p, 1, 4 * PAGE);
	for (int i = 0; i < 2; i++) {
		int adv = advs[i];
		TU_CHECK(samepage_madvise(p + 1, PAGE, adv) == -EINVAL, "unaligned: want -EINVAL");
		errno = 0;
		TU_CHECK(madvise(p + 1, PAGE, adv) == -1 && errno == EINVAL,
			 "madvise unaligned: want -1/EINVAL, errno %d", errno);
		TU_CHECK(samepage_madvise(p, (size_t)-1, adv) == -EINVAL,
			 "len SIZE_MAX: want -EINVAL");
		errno = 0;
		TU_CHECK(madvise(p, (size_t)-1, adv) == -1 && errno == EINVAL,
			 "madvise len SIZE_MAX: want -1/EINVAL, errno %d", errno);
		TU_CHECK(samepage_madvise(p, wrap, adv) == -EINVAL, "len wrapping: want -EINVAL");
		errno = 0;
		TU_CHECK(madvise(p, wrap, adv) == -1 && errno == EINVAL,
			 "madvise len wrapping: want -1/EINVAL, errno %d", errno);
		TU_CHECK(samepage_madvise(p, 0, adv) == 0, "len 0: want 0");
		TU_CHECK(madvise(p, 0, adv) == 0, "madvise len 0: want 0, errno %d", errno);
		/* As the kernel: alignment is checked before the length. */
		TU_CHECK(samepage_madvise(p + 1, 0, adv) == -EINVAL, "unaligned len 0: want -EINVAL");
	}
	TU_CHECK(samepage_madvise(p, PAGE, MADV_DONTNEED) == -EINVAL,
		 "samepage_madvise(MADV_DONTNEED): want -EINVAL");
	TU_CHECK(samepage_madvise(p, PAGE, 12345) == -EINVAL, "samepage_madvise(12345): want -EINVAL");
	TU_CHECK(samepage_madvise(p, PAGE, -1) == -EINVAL, "samepage_madvise(-1): want -EINVAL");
	TU_CHECK(samepage_madvise(p, PAGE, MADV_WIPEONFORK) == -EINVAL,
		 "samepage_madvise(MADV_WIPEONFORK): want -EINVAL");
	munmap(p, 4 * PAGE);
}

/* Frames of block b on both sides, before it is marked mergeable. */
static void snap(int b)
{
	for (uint32_t k = 0; k < BP; k++) {
		before_a[b][k] = tu_pfn(getpid(), aaddr(b, k));
		before_p[b][k] = tu_pfn(pc.pid, paddr(b, k));
		TU_CHECK(before_a[b][k] && before_p[b][k] && before_a[b][k] != before_p[b][k],
			 "%s: page %u shared or missing before merging", bname[b], k);
	}
}

static int uffd_register_missing(void *p, size_t len)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .range = { (uintptr_t)p, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	TU_CHECK(fd >= 0, "userfaultfd: %s", strerror(errno));
	TU_CHECK(ioctl(fd, UFFDIO_API, &api) == 0, "UFFDIO_API: %s", strerror(errno));
	TU_CHECK(ioctl(fd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER: %s", strerror(errno));
	return fd;
}

int main(void)
{
	unsigned char *res;
	char perms[5];
	int fd, ufd;

	tu_require_merging();
	tu_private_daemon();
	/* The partner first: our own fork() goes through samepage from now on. */
	tu_spawn(&pc, partner, NULL);
	TU_CHECK(tu_recv(pc.rd, &pbase, sizeof(pbase)) == 0, "partner died");

	args_errors();

	/* Blocks sit at fixed slots of one reservation, so that neighbours are
	 * known: hole part 2, the mlock'ed block and the MADV_DONTDUMP block
	 * are adjacent VMAs with different attributes, as in real programs. */
	res = mmap(NULL, NSLOTS * BLEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TU_CHECK(res != MAP_FAILED, "mmap reservation: %s", strerror(errno));
	for (int b = 0; b < NB; b++) {
		int flags = MAP_PRIVATE | MAP_ANONYMOUS;
		if (b == B_FILE)
			continue;
		if (b == B_SHARED)
			flags = MAP_SHARED | MAP_ANONYMOUS;
		blk[b] = mmap(res + slot[b] * BLEN, BLEN, PROT_READ | PROT_WRITE, flags | MAP_FIXED,
			      -1, 0);
		TU_CHECK(blk[b] == res + slot[b] * BLEN, "mmap slot %d: %s", slot[b], strerror(errno));
		madvise(blk[b], BLEN, MADV_NOHUGEPAGE);
		tu_fill(blk[b], BLEN, SEED0 + b);
	}

	long lck0 = vmlck_kb();
	/* The system call itself: ASan intercepts mlock() as a no-op. */
	TU_CHECK(syscall(SYS_mlock, blk[B_MLOCK], BLEN) == 0, "mlock: %s", strerror(errno));
	TU_CHECK(madvise(blk[B_DONTDUMP], BLEN, MADV_DONTDUMP) == 0, "MADV_DONTDUMP");
	{
		struct vmas h = vmas_in(aaddr(B_HOLE2, 0), aaddr(B_DONTDUMP, BP), "xx");
		TU_CHECK(h.n == 3, "hole part 2, mlock and dontdump blocks: %d VMAs, want 3", h.n);
	}

	/* Hole: hole part 1, an unmapped slot, hole part 2. */
	TU_CHECK(slot[B_HOLE2] == slot[B_HOLE1] + 2, "layout");
	TU_CHECK(munmap(res + (slot[B_HOLE1] + 1) * BLEN, BLEN) == 0, "munmap");
	snap(B_HOLE1);
	snap(B_HOLE2);
	TU_CHECK(samepage_madvise(res + (slot[B_HOLE1] + 1) * BLEN, BLEN, MADV_MERGEABLE) ==
		 -ENOMEM, "unmapped range: want -ENOMEM");
	errno = 0;
	TU_CHECK(madvise(blk[B_HOLE1], 3 * BLEN, MADV_MERGEABLE) == -1 && errno == ENOMEM,
		 "range with a hole: want -1/ENOMEM, errno %d", errno);

	/* MAP_SHARED anonymous. */
	snap(B_SHARED);
	TU_CHECK(madvise(blk[B_SHARED], BLEN, MADV_MERGEABLE) == 0, "shared: want 0, %s",
		 strerror(errno));

	/* MAP_PRIVATE file mapping, every page COW'd into an anonymous page. */
	{
		unsigned char *buf = malloc(BLEN);
		fd = open("/tmp", O_TMPFILE | O_RDWR, 0600);
		TU_CHECK(fd >= 0, "O_TMPFILE: %s", strerror(errno));
		tu_fill(buf, BLEN, SEED0 + B_FILE);
		TU_CHECK(write(fd, buf, BLEN) == (ssize_t)BLEN, "write");
		blk[B_FILE] = mmap(res + slot[B_FILE] * BLEN, BLEN, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_FIXED, fd, 0);
		TU_CHECK(blk[B_FILE] != MAP_FAILED, "mmap file: %s", strerror(errno));
		madvise(blk[B_FILE], BLEN, MADV_NOHUGEPAGE);
		memcpy(blk[B_FILE], buf, BLEN); /* same bytes, private copies */
		free(buf);
		TU_CHECK(!tu_is_file_page(getpid(), aaddr(B_FILE, 0)), "file page not COW'd");
		snap(B_FILE);
		TU_CHECK(madvise(blk[B_FILE], BLEN, MADV_MERGEABLE) == 0, "file: want 0, %s",
			 strerror(errno));
	}

	/* Registered with our own userfaultfd (missing mode), populated first. */
	ufd = uffd_register_missing(blk[B_UFFD], BLEN);
	snap(B_UFFD);
	TU_CHECK(madvise(blk[B_UFFD], BLEN, MADV_MERGEABLE) == 0, "uffd: want 0, %s",
		 strerror(errno));

	/* MADV_WIPEONFORK. */
	TU_CHECK(madvise(blk[B_WIPE], BLEN, MADV_WIPEONFORK) == 0, "MADV_WIPEONFORK");
	snap(B_WIPE);
	TU_CHECK(madvise(blk[B_WIPE], BLEN, MADV_MERGEABLE) == 0, "wipeonfork: want 0, %s",
		 strerror(errno));

	/* PROT_NONE. */
	TU_CHECK(mprotect(blk[B_PROTNONE], BLEN, PROT_NONE) == 0, "mprotect");
	snap(B_PROTNONE);
	TU_CHECK(madvise(blk[B_PROTNONE], BLEN, MADV_MERGEABLE) == 0, "PROT_NONE: want 0, %s",
		 strerror(errno));

	/* mlock. */
	snap(B_MLOCK);
	TU_CHECK(madvise(blk[B_MLOCK], BLEN, MADV_MERGEABLE) == 0, "mlock: want 0");

	/* MADV_DONTDUMP. */
	snap(B_DONTDUMP);
	TU_CHECK(madvise(blk[B_DONTDUMP], BLEN, MADV_MERGEABLE) == 0, "dontdump: want 0");

	/* The eligible cases merge (one of them only after unlocking)... */
	int wanted[] = { B_HOLE1, B_HOLE2, B_DONTDUMP, B_PROTNONE, -1 };
	if (!tu_wait(all_merged, wanted, 30)) {
		for (int i = 0; wanted[i] >= 0; i++)
			fprintf(stderr, "%s: %u of %u pages merged\n", bname[wanted[i]],
				shared_pages(wanted[i]), BP);
		TU_FAIL("eligible memory not merged within 30 s");
	}
	int wanted_lock[] = { B_MLOCK, -1 };
	int lock_merged = tu_wait(all_merged, wanted_lock, 15);
	/* ...while the ineligible ones sit through more full passes. */
	TU_CHECK(samepage_scan_now() == 0 && samepage_scan_now() == 0, "samepage_scan_now");
	usleep(300 * 1000);
	TU_CHECK(samepage_scan_now() == 0, "samepage_scan_now");
	int never[] = { B_SHARED, B_FILE, B_UFFD, B_WIPE };
	for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
		int b = never[i];
		for (uint32_t k = 0; k < BP; k++) {
			TU_CHECK(tu_pfn(getpid(), aaddr(b, k)) == before_a[b][k],
				 "%s: page %u changed frame (merged or replaced)", bname[b], k);
			/* The partner's copy is mergeable there, but has no
			 * duplicate: it may change frame only by filling a gap
			 * (a private page in a pool VMA), never to a pool page. */
			TU_CHECK(tu_pfn(pc.pid, paddr(b, k)) == before_p[b][k] ||
					 !tu_is_file_page(pc.pid, paddr(b, k)),
				 "%s: partner's page %u was merged", bname[b], k);
		}
		TU_CHECK(content_ok(b), "%s: content changed", bname[b]);
		TU_CHECK(vmas_in(aaddr(b, 0), aaddr(b, BP), "xx").pool == 0,
			 "%s: range maps the pool", bname[b]);
	}
	TU_CHECK(partner_ok(), "partner's content changed");
	/* Our own userfaultfd registration is intact: UFFDIO_UNREGISTER works. */
	{
		struct uffdio_range r = { aaddr(B_UFFD, 0), BLEN };
		TU_CHECK(vmas_in(aaddr(B_UFFD, 0), aaddr(B_UFFD, BP), "um").with_flag >= 1,
			 "userfaultfd range lost its registration");
		TU_CHECK(ioctl(ufd, UFFDIO_UNREGISTER, &r) == 0, "UFFDIO_UNREGISTER: %s",
			 strerror(errno));
	}

	/* PROT_NONE merged stays PROT_NONE, on pool pages... */
	for (uint32_t k = 0; k < BP; k += BP - 1) {
		perms_at(aaddr(B_PROTNONE, k), perms);
		TU_CHECK(!strcmp(perms, "---p"), "PROT_NONE range now %s at page %u", perms, k);
	}
	TU_CHECK(vmas_in(aaddr(B_PROTNONE, 0), aaddr(B_PROTNONE, BP), "xx").pool >= 1,
		 "PROT_NONE range merged but maps no pool VMA");
	expect_segv(aaddr(B_PROTNONE, 3), "PROT_NONE range");
	/* ...and is intact and still merged once readable and writable. */
	TU_CHECK(mprotect(blk[B_PROTNONE], BLEN, PROT_READ | PROT_WRITE) == 0, "mprotect rw");
	TU_CHECK(content_ok(B_PROTNONE), "PROT_NONE: content changed by merging");
	int wanted_pn[] = { B_PROTNONE, -1 };
	TU_CHECK(all_merged(wanted_pn), "PROT_NONE range no longer merged after mprotect "
		 "(%u of %u pages)", shared_pages(B_PROTNONE), BP);

	/* Merged ranges: content, and the attributes kept (all reported). */
	TU_EXPECT(&soft_failed, content_ok(B_HOLE1) && content_ok(B_HOLE2),
		  "hole: content changed by merging");
	TU_EXPECT(&soft_failed, content_ok(B_DONTDUMP), "dontdump: content changed by merging");
	{
		struct vmas v = vmas_in(aaddr(B_DONTDUMP, 0), aaddr(B_DONTDUMP, BP), "dd");
		TU_EXPECT(&soft_failed, v.pool >= 1,
			  "MADV_DONTDUMP range merged but maps no pool VMA");
		TU_EXPECT(&soft_failed, v.pool_with_flag == v.pool && v.with_flag == v.n,
			  "MADV_DONTDUMP lost: %d of %d VMAs (%d of %d pool VMAs) have dd",
			  v.with_flag, v.n, v.pool_with_flag, v.pool);
	}
	/* Attributes stay where they were set. */
	TU_EXPECT(&soft_failed,
		  vmas_in(aaddr(B_HOLE2, 0), aaddr(B_HOLE2, BP), "dd").with_flag == 0 &&
			  vmas_in(aaddr(B_HOLE2, 0), aaddr(B_HOLE2, BP), "lo").with_flag == 0,
		  "hole part 2 got a neighbour's dd or lo flag");
	TU_EXPECT(&soft_failed, vmas_in(aaddr(B_MLOCK, 0), aaddr(B_MLOCK, BP), "dd").with_flag == 0,
		  "the mlock'ed block got its neighbour's dd flag");
	TU_EXPECT(&soft_failed,
		  vmas_in(aaddr(B_DONTDUMP, 0), aaddr(B_DONTDUMP, BP), "lo").with_flag == 0,
		  "the dontdump block got its neighbour's lo flag");
	{
		struct vmas v = vmas_in(aaddr(B_MLOCK, 0), aaddr(B_MLOCK, BP), "lo");
		long lck = vmlck_kb();
		TU_EXPECT(&soft_failed, content_ok(B_MLOCK), "mlock: content changed");
		TU_EXPECT(&soft_failed, v.with_flag == v.n, "mlock lost: %d of %d VMAs locked",
			  v.with_flag, v.n);
		TU_EXPECT(&soft_failed, lck - (lck0 > 0 ? lck0 : 0) >= (long)(BLEN / 1024),
			  "VmLck %ld kB (was %ld), want +%zu", lck, lck0, BLEN / 1024);
		TU_EXPECT(&soft_failed, lock_merged,
			  "mlock'ed range never held merged: %u of %u pages share the "
			  "partner's frames, %d pool VMAs in the range",
			  shared_pages(B_MLOCK), BP, v.pool);
	}

	TU_CHECK(!soft_failed, "attributes of merged memory not kept (see above)");
	TU_CHECK(partner_ok(), "partner's content changed");
	{
		char q = 'q';
		tu_send(pc.wr, &q, 1);
		TU_CHECK(tu_reap(&pc) == 0, "partner exit");
	}
	close(fd);
	close(ufd);
	printf("eligibility: ok\n");
	return 0;
}
