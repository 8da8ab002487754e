/* SPDX-License-Identifier: MIT */
/*
 * hashrate — how fast one core hashes pages, next to how fast it can read
 * memory at all: the ceiling of a scanner's hashing step.
 *
 * Over a buffer of S MiB (default 1024, far larger than any cache) of
 * random bytes, written before timing, one thread measures:
 *   - read:  a plain read of every 64-bit word (8 independent sums, so
 *            the loop is bound by memory, not by an addition chain);
 *   - XXH3:  XXH3_64bits() of every 4 KiB page, what samepage's scanner
 *            computes per page (lib/chunk.c);
 *   - XXH64: XXH64() of every page, the function kernel KSM's checksum
 *            uses (mm/ksm.c: xxhash()), built here in user space: its
 *            rate, not ksmd's;
 *   - XXH3 in cache: the same 64 pages (256 KiB) over and over: the hash's
 *            own speed without memory traffic.
 * Each is the best of --reps passes (default 5), in GB/s (10^9 bytes).
 * No root needed; kernel KSM is not touched.
 *
 *   build/bench/hashrate [--mib S] [--reps N] [--summary FILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "benchlib.h"

/* Keeps results alive without printing them. */
static volatile uint64_t sink;

static uint64_t read_all(const unsigned char *p, size_t len)
{
	const uint64_t *q = (const uint64_t *)(const void *)p;
	uint64_t a[8] = { 0 };

	for (size_t i = 0; i < len / 8; i += 8)
		for (int k = 0; k < 8; k++)
			a[k] += q[i + k];
	return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

static uint64_t xxh3_pages(const unsigned char *p, size_t len)
{
	uint64_t h = 0;

	for (size_t off = 0; off < len; off += PAGE)
		h ^= XXH3_64bits(p + off, PAGE);
	return h;
}

static uint64_t xxh64_pages(const unsigned char *p, size_t len)
{
	uint64_t h = 0;

	for (size_t off = 0; off < len; off += PAGE)
		h ^= XXH64(p + off, PAGE, 0);
	return h;
}

/* Best rate (GB/s) of reps passes of fn over len bytes, `times` times. */
static double best(uint64_t (*fn)(const unsigned char *, size_t), const unsigned char *p,
		   size_t len, int times, int reps)
{
	double bestv = 0;

	for (int r = 0; r < reps; r++) {
		double t0 = tu_now(), dt;
		for (int i = 0; i < times; i++)
			sink ^= fn(p, len);
		dt = tu_now() - t0;
		if (dt > 0 && (double)len * times / dt / 1e9 > bestv)
			bestv = (double)len * times / dt / 1e9;
	}
	return bestv;
}

int main(int argc, char **argv)
{
	size_t mib = 1024;
	int reps = 5;
	unsigned char *p;
	double rd, x3, x64, x3c;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--summary") && i + 1 < argc)
			bench_summary_file(argv[++i]);
		else {
			fprintf(stderr, "usage: hashrate [--mib S] [--reps N] [--summary FILE]\n");
			return 2;
		}
	}
	if (mib < 1 || mib > (1u << 20) || reps < 1)
		return 2;
	p = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		TU_FAIL("mmap %zu MiB: %s", mib, strerror(errno));
	for (size_t i = 0; i < (mib << 20) / PAGE; i++)
		tu_fill(p + i * PAGE, PAGE, 0x4a54ull + i * 0x9E3779B97F4A7C15ull);

	rd = best(read_all, p, mib << 20, 1, reps);
	x3 = best(xxh3_pages, p, mib << 20, 1, reps);
	x64 = best(xxh64_pages, p, mib << 20, 1, reps);
	x3c = best(xxh3_pages, p, 64 * PAGE, (int)((mib << 20) / (64 * PAGE)), reps);

	printf("\none core, %zu MiB buffer, 4 KiB pages, best of %d passes (GB/s = 10^9 B/s); "
	       "libxxhash %u\n", mib, reps, XXH_versionNumber());
	printf("%-44s | %8s | %s\n", "", "GB/s", "of the read rate");
	printf("%-44s | %8.2f | %7.0f%%\n", "memory read (plain 64-bit loads)", rd, 100.0);
	printf("%-44s | %8.2f | %7.0f%%\n", "XXH3_64bits per page (samepage)", x3, 100 * x3 / rd);
	printf("%-44s | %8.2f | %7.0f%%\n", "XXH64 per page (kernel KSM's checksum)", x64,
	       100 * x64 / rd);
	printf("%-44s | %8.2f | %7.0f%%\n", "XXH3_64bits per page, in cache (256 KiB)", x3c,
	       100 * x3c / rd);
	summary("hash.read_gbs", rd, rd, 1, 1);
	summary("hash.xxh3_gbs", x3, x64, 1, 1); /* samepage's hash | the kernel's */
	summary("hash.xxh3_cache_gbs", x3c, x3c, 1, 1);
	return 0;
}
