/* SPDX-License-Identifier: MIT */
/*
 * guest — the workload that examples/qemu_guests.sh runs inside each QEMU
 * guest (static, started by the initramfs's /init).
 *
 *   guest MIB INTERVAL_S
 *
 * Fills MIB MiB of its memory with pseudo-random data from a fixed seed, so
 * that every guest holds the same pages (think of the same OS image or data
 * set loaded in many VMs), then checks it: every page is regenerated and
 * compared byte for byte, and a checksum of what is in memory is printed.
 * One line per event on stdout (the serial console):
 *
 *   READY <mib> <checksum> <fill_s>     once, after the fill
 *   CHECK <n> ok <checksum> <check_s>   every page as last written
 *   CHECK <n> BAD <bad_pages> first <page_index> <checksum>
 *   WROTE <version> <checksum> <write_s>  after a rewrite ("w")
 *
 * A check runs every INTERVAL_S seconds and whenever a line "c" arrives on
 * stdin; a line "w" rewrites every odd page with data of the next version
 * (the same in every guest: merged pages get written, the guests stay
 * identical); a line "q" makes it run a last check, print "BYE", and exit
 * (0 if every check was ok, 1 otherwise).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define SEED 0x51a3e9a6eu

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned version;	/* of the odd pages; even pages stay at 0 */

/* Page i of the stream: xorshift64 seeded by (SEED, version, i). */
static void fill_page(uint64_t *q, size_t i)
{
	uint64_t v = i % 2 ? version : 0;
	uint64_t x = ((SEED + v * 0x94D049BB133111EBull) * 0x9E3779B97F4A7C15ull) ^
		     ((i + 1) * 0xBF58476D1CE4E5B9ull);

	x |= 1;
	for (size_t k = 0; k < PAGE / 8; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		q[k] = x;
	}
}

/* Checksum of what memory holds (FNV-style mix of 64-bit words). */
static uint64_t sum_page(const uint64_t *q, uint64_t h)
{
	for (size_t k = 0; k < PAGE / 8; k++)
		h = (h ^ q[k]) * 0x100000001B3ull;
	return h;
}

static int check(const unsigned char *p, size_t npages, unsigned n)
{
	static uint64_t want[PAGE / 8];
	uint64_t h = 0xCBF29CE484222325ull;
	size_t bad = 0, first = 0;
	double t0 = now();

	for (size_t i = 0; i < npages; i++) {
		const uint64_t *q = (const uint64_t *)(p + i * PAGE);

		fill_page(want, i);
		if (memcmp(q, want, PAGE) && !bad++)
			first = i;
		h = sum_page(q, h);
	}
	if (bad)
		printf("CHECK %u BAD %zu first %zu %016" PRIx64 "\n", n, bad, first, h);
	else
		printf("CHECK %u ok %016" PRIx64 " %.2f\n", n, h, now() - t0);
	fflush(stdout);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	size_t mib, npages;
	unsigned char *p;
	unsigned n = 0;
	int interval, failed = 0;
	double t0, next;

	if (argc != 3 || (mib = strtoul(argv[1], NULL, 10)) == 0 ||
	    (interval = atoi(argv[2])) <= 0) {
		fprintf(stderr, "usage: guest MIB INTERVAL_S\n");
		return 2;
	}
	npages = mib * (1024 * 1024 / PAGE);
	p = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED) {
		printf("GUEST_ERROR mmap %zu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	t0 = now();
	for (size_t i = 0; i < npages; i++)
		fill_page((uint64_t *)(p + i * PAGE), i);
	{
		uint64_t h = 0xCBF29CE484222325ull;

		for (size_t i = 0; i < npages; i++)
			h = sum_page((const uint64_t *)(p + i * PAGE), h);
		printf("READY %zu %016" PRIx64 " %.2f\n", mib, h, now() - t0);
		fflush(stdout);
	}

	next = now() + interval;
	for (;;) {
		struct pollfd pfd = { .fd = 0, .events = POLLIN };
		int ms = (int)((next - now()) * 1000), cmd = 0;
		char line[64];

		if (ms < 0)
			ms = 0;
		if (poll(&pfd, 1, ms) > 0) {
			ssize_t r = read(0, line, sizeof(line) - 1);

			if (r <= 0) {		/* no console input: only the timer */
				sleep(interval);
			} else {
				line[r] = 0;
				if (strchr(line, 'q'))
					cmd = 'q';
				else if (strchr(line, 'c'))
					cmd = 'c';
				else if (strchr(line, 'w'))
					cmd = 'w';
			}
		}
		if (cmd == 'w') {
			uint64_t h = 0xCBF29CE484222325ull;
			double t0w = now();

			version++;
			for (size_t i = 1; i < npages; i += 2)
				fill_page((uint64_t *)(p + i * PAGE), i);
			for (size_t i = 0; i < npages; i++)
				h = sum_page((const uint64_t *)(p + i * PAGE), h);
			printf("WROTE %u %016" PRIx64 " %.2f\n", version, h, now() - t0w);
			fflush(stdout);
			continue;
		}
		if (cmd || now() >= next) {
			failed |= check(p, npages, ++n);
			next = now() + interval;
		}
		if (cmd == 'q')
			break;
	}
	printf("BYE %s\n", failed ? "BAD" : "ok");
	fflush(stdout);
	return failed;
}
