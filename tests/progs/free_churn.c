/* SPDX-License-Identifier: MIT */
/*
 * free_churn — a plain program (knows nothing of samepage) whose memory
 * keeps disappearing behind samepage's wrappers: it mallocs 16 buffers of
 * 1 MiB (glibc maps each with its own mmap), fills them, and frees them
 * (glibc's internal munmap, which no preload can interpose), over and over,
 * while samepage's scanner reads and merges those pages. Until samepage read
 * application pages through the kernel, this killed the process within
 * seconds (SIGSEGV in the scanner thread). Prints "survived N rounds".
 *
 *   samepage run --merge-any -- free_churn SECONDS
 */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBUF 16
#define SZ (1 << 20)

int main(int argc, char **argv)
{
	int secs = argc > 1 ? atoi(argv[1]) : 10;
	time_t end = time(NULL) + secs;
	unsigned long round = 0;
	char *b[NBUF];

	while (time(NULL) < end) {
		for (int i = 0; i < NBUF; i++) {
			b[i] = malloc(SZ);
			if (!b[i])
				return 2;
			/* The same bytes in every buffer: they all merge. */
			memset(b[i], (int)(round & 0x7f) + 1, SZ);
		}
		usleep(2000 + (unsigned)(rand() % 8000));
		for (int i = 0; i < NBUF; i++) {
			if (b[i][SZ - 1] != (char)((round & 0x7f) + 1))
				return 3; /* merging changed the bytes */
			free(b[i]);
		}
		round++;
	}
	printf("survived %lu rounds\n", round);
	return 0;
}
