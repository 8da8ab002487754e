/* Helper for examples/redis.sh.
 *
 *   helper gen COUNT BYTES [FIRST]  writes COUNT Redis SET commands in RESP to
 *       stdout, keys doc:FIRST.. (12 digits, as redis-benchmark's
 *       __rand_int__) with values of BYTES bytes of JSON-like text that
 *       depends only on the key (deterministic: every instance loaded with it
 *       holds byte-identical values; no page repeats), for `redis-cli --pipe`.
 *   helper value BYTES K...         writes the values of doc:K... alone, each
 *       followed by a newline (as `redis-cli --raw GET` prints them).
 *   helper edit HOW COUNT BYTES FIRST STEP  writes RESP commands for keys
 *       doc:FIRST, doc:FIRST+STEP, ... below COUNT: HOW = mark (SETRANGE of
 *       bytes 100..119 to X), restore (SETRANGE of them back to the generated
 *       bytes) or reset (DEL, then SET of the generated value).
 *   helper merge-any CMD ARGS...    prctl(PR_SET_MEMORY_MERGE, 1), then execs
 *       CMD: kernel KSM then merges all of CMD's private anonymous memory
 *       (the flag survives fork and, since Linux 6.7, exec).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

static uint64_t next(uint64_t *s)
{ /* splitmix64 */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill(char *val, unsigned long k, unsigned long bytes)
{
	static const char *words[] = {
		"samepage", "redis", "merge", "page", "kernel", "memory", "cache",
		"value", "object", "frame", "pool", "scanner", "hash", "stable",
		"unstable", "copy", "write", "shared", "private", "anonymous",
		"process", "daemon", "budget", "segment", "digest", "replica",
		"tenant", "session", "document", "record", "index", "lorem",
	};
	uint64_t s = k * 0x2545f4914f6cdd1dULL + 1;
	unsigned long n = 0;
	/* a JSON-ish document: words and numbers, never repeating a page */
	n += (unsigned long)snprintf(val, 64, "{\"id\":%lu,\"body\":\"", k);
	while (n < bytes) {
		uint64_t r = next(&s);
		const char *w = words[r & 31];
		size_t wl = strlen(w);
		char num[24];
		int nl = snprintf(num, sizeof num, " %u ", (unsigned)(r >> 40));
		if (n + wl + (size_t)nl >= bytes)
			break;
		memcpy(val + n, w, wl);
		n += wl;
		memcpy(val + n, num, (size_t)nl);
		n += (size_t)nl;
	}
	while (n < bytes)
		val[n++] = '.';
	val[bytes - 2] = '"';
	val[bytes - 1] = '}';
}

static int gen(unsigned long count, unsigned long bytes, unsigned long first)
{
	char *val = malloc(bytes + 64);
	if (!val)
		return 1;
	for (unsigned long k = first; k < first + count; k++) {
		fill(val, k, bytes);
		printf("*3\r\n$3\r\nSET\r\n$16\r\ndoc:%012lu\r\n$%lu\r\n", k, bytes);
		fwrite(val, 1, bytes, stdout);
		fputs("\r\n", stdout);
	}
	free(val);
	return fflush(stdout) ? 1 : 0;
}

static void bulk(const char *p, size_t n)
{
	printf("$%zu\r\n", n);
	fwrite(p, 1, n, stdout);
	fputs("\r\n", stdout);
}

static int edit(const char *how, unsigned long count, unsigned long bytes,
		unsigned long first, unsigned long step)
{
	char *val = malloc(bytes + 64), key[32];
	if (!val || bytes < 120 || !step)
		return 2;
	for (unsigned long k = first; k < count; k += step) {
		fill(val, k, bytes);
		snprintf(key, sizeof key, "doc:%012lu", k);
		if (!strcmp(how, "reset")) {
			fputs("*2\r\n", stdout);
			bulk("DEL", 3);
			bulk(key, strlen(key));
			fputs("*3\r\n", stdout);
			bulk("SET", 3);
			bulk(key, strlen(key));
			bulk(val, bytes);
			continue;
		}
		fputs("*4\r\n", stdout);
		bulk("SETRANGE", 8);
		bulk(key, strlen(key));
		bulk("100", 3);
		bulk(!strcmp(how, "mark") ? "XXXXXXXXXXXXXXXXXXXX" : val + 100, 20);
	}
	free(val);
	return fflush(stdout) ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 7 && strcmp(argv[1], "edit") == 0)
		return edit(argv[2], strtoul(argv[3], NULL, 0), strtoul(argv[4], NULL, 0),
			    strtoul(argv[5], NULL, 0), strtoul(argv[6], NULL, 0));
	if (argc >= 4 && strcmp(argv[1], "gen") == 0) {
		unsigned long bytes = strtoul(argv[3], NULL, 0);
		if (bytes < 64)
			return fprintf(stderr, "helper: BYTES >= 64\n"), 2;
		return gen(strtoul(argv[2], NULL, 0), bytes,
			   argc > 4 ? strtoul(argv[4], NULL, 0) : 0);
	}
	if (argc >= 3 && strcmp(argv[1], "value") == 0) {
		unsigned long bytes = strtoul(argv[2], NULL, 0);
		char *val = malloc(bytes + 64);
		if (!val || bytes < 64)
			return 2;
		for (int i = 3; i < argc; i++) {
			fill(val, strtoul(argv[i], NULL, 0), bytes);
			fwrite(val, 1, bytes, stdout);
			putchar('\n');
		}
		return fflush(stdout) ? 1 : 0;
	}
	if (argc >= 3 && strcmp(argv[1], "merge-any") == 0) {
		if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
			fprintf(stderr, "helper: prctl(PR_SET_MEMORY_MERGE): %s\n", strerror(errno));
			return 1;
		}
		execvp(argv[2], argv + 2);
		fprintf(stderr, "helper: exec %s: %s\n", argv[2], strerror(errno));
		return 127;
	}
	fprintf(stderr, "usage: helper gen COUNT BYTES [FIRST] | helper value BYTES K... |\n"
		"       helper edit mark|restore|reset COUNT BYTES FIRST STEP | helper merge-any CMD ARGS...\n");
	return 2;
}
