/* SPDX-License-Identifier: MIT */
/*
 * plain_merge — an ordinary program that knows nothing of samepage: it
 * asks for merging the way software written for kernel KSM does, and is
 * meant to run under `samepage run [--merge-any] -- plain_merge ...`.
 *
 *   plain_merge MODE MIB SEED
 *     MODE  madvise: madvise(MADV_MERGEABLE) on the data
 *           prctl:   prctl(PR_SET_MEMORY_MERGE, 1) before mapping it
 *           none:    nothing (for `samepage run --merge-any`)
 *     MIB   size of the data in MiB
 *     SEED  the data's content (the same SEED gives the same bytes)
 *
 * It prints "PID ADDRESS PAGES" on one line, waits for a line on stdin,
 * then checks every byte of its data: exit 0 when intact, 1 when not,
 * 2 on a usage or system error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

static void fill(uint64_t *q, size_t words, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		q[i] = x;
	}
}

int main(int argc, char **argv)
{
	size_t len;
	uint64_t seed, *p, *ref;
	char line[64];
	const char *mode;

	if (argc != 4) {
		fprintf(stderr, "usage: plain_merge madvise|prctl|none MIB SEED\n");
		return 2;
	}
	mode = argv[1];
	len = strtoul(argv[2], NULL, 10) << 20;
	seed = strtoull(argv[3], NULL, 10);
	if (!len)
		return 2;
	if (!strcmp(mode, "prctl") && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "plain_merge: prctl(PR_SET_MEMORY_MERGE): %s\n", strerror(errno));
		return 2;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ref = malloc(len);
	if (p == MAP_FAILED || !ref)
		return 2;
	madvise(p, len, MADV_NOHUGEPAGE); /* 4 KiB pages, for the frame counts */
	fill(p, len / 8, seed);
	memcpy(ref, p, len);
	if (!strcmp(mode, "madvise")) {
		if (madvise(p, len, MADV_MERGEABLE) != 0) {
			fprintf(stderr, "plain_merge: madvise(MADV_MERGEABLE): %s\n", strerror(errno));
			return 2;
		}
	} else if (strcmp(mode, "prctl") && strcmp(mode, "none")) {
		fprintf(stderr, "plain_merge: unknown mode %s\n", mode);
		return 2;
	}
	printf("%d %lx %zu\n", (int)getpid(), (unsigned long)(uintptr_t)p, len / 4096);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	return memcmp(p, ref, len) ? 1 : 0;
}
