/* SPDX-License-Identifier: MIT */
/*
 * region — memory that merging may touch, with an exact copy the test can
 * trust: the shadow lives in MAP_SHARED memory, which is never merged.
 * Writer threads write both, each into pages it alone owns, so a check
 * with the writers held compares byte for byte. Used by tests and the
 * soak benchmarks (TESTING.md: "bytes compared with a shadow copy").
 *
 * A region can also live in a child process that a test drives over a
 * pipe (tu_region_child), so several processes merge the same content.
 */
#ifndef SAMEPAGE_TEST_REGION_H
#define SAMEPAGE_TEST_REGION_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define TU_REGION_WRITERS 4

struct tu_region {
	unsigned char *mem;      /* private anonymous memory, mergeable */
	unsigned char *shadow;   /* MAP_SHARED: never merged */
	size_t pages;
	int nwriters;
	double rate;             /* writes per second, all writers together */
	pthread_t th[TU_REGION_WRITERS];
	pthread_mutex_t lock[TU_REGION_WRITERS]; /* writer k's pages */
	int stop;                /* __atomic */
	uint64_t writes;         /* __atomic */
};

/* Map pages of memory filled from seed (tu_fill) and its shadow. */
void tu_region_init(struct tu_region *r, size_t pages, uint64_t seed);
/* Shut down every connection this process has to the daemon at
 * SAMEPAGE_SOCKET (the library's, found through /proc/self/fd); how many. */
int tu_cut_daemon_conns(void);
/* Start n writers making rate writes per second in all. */
void tu_region_write(struct tu_region *r, int n, double rate);
void tu_region_stop(struct tu_region *r);
/* Pages whose bytes differ from the shadow (writers held meanwhile); the
 * first one in *first when not NULL. */
size_t tu_region_check(struct tu_region *r, size_t *first);
void tu_region_fini(struct tu_region *r);

/* What a region child is asked (tu_region_cmd) and answers.
 * TU_RC_FORK (arg: how many): fork children that keep the region as it was
 * at the fork and check it against that copy now and then; TU_RC_KIDS: make
 * them check once more and exit, reply with how many found a wrong byte
 * (in bad); TU_RC_UNMERGE: madvise(MADV_UNMERGEABLE) and MADV_MERGEABLE
 * again, so the child's own references go while its children keep theirs. */
enum { TU_RC_WRITE = 'w', TU_RC_CHECK = 'v', TU_RC_QUIT = 'q', TU_RC_FORK = 'f',
       TU_RC_KIDS = 'k', TU_RC_UNMERGE = 'u', TU_RC_CUT = 'c' };
/* TU_RC_CUT: shut the library's connection to the daemon down under it, as
 * a daemon that closed it would (both ends see it end); bad = how many. */
struct tu_region_spec {
	size_t pages;
	uint64_t seed;
	int madvise;             /* madvise(MADV_MERGEABLE) the memory */
};
struct tu_region_reply {
	uintptr_t addr;          /* the region's memory in the child */
	uint64_t bad, first_bad, writes;
};
/* For tu_spawn(): a child holding one region made from *(spec *)arg. It
 * sends a tu_region_reply at start and after every command. */
int tu_region_child(int rd, int wr, void *arg);
/* Send cmd ('w' with a rate: writers start; 'v': check) and read the
 * reply within secs; 0, or -1 when the child died or hung. */
int tu_region_cmd(int wr, int rd, char cmd, double rate, struct tu_region_reply *out, int secs);

#endif
