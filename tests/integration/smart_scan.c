/* SPDX-License-Identifier: MIT */
/*
 * smart_scan: quiet unique pages are not read on every pass, and the knob
 * turns that off, as the kernel's /sys/kernel/mm/ksm/smart_scan does.
 *
 * One process maps N distinct pages (no twin anywhere), madvises them, and
 * kicks its scanner with another madvise every 30 ms, so that passes come
 * one after the other; SAMEPAGE_DEBUG=1 makes the scanner print a line per
 * pass ("skipped K") into a file that stands in for stderr. With
 * smart_scan=1 (the default):
 *  - the first SKIP_AFTER passes read every page (skipped 0);
 *  - later passes skip all N pages in most generations, and read all of
 *    them again in every 8th (lib/chunk.c skip_quiet());
 *  - pages_unshared counts the N pages all along, skipped or not, and
 *    pages_skipped every page a pass did not read;
 * Then `samepage set smart_scan=0`: every later pass reads every page.
 * Finally a twin: a second process maps a copy of the pages, and they
 * merge although the first process's pages are being skipped (the same
 * generations are skipped everywhere, so they are offered together).
 *
 * It can fail: tried with skip_quiet() returning 0: "no pass skipped the
 * quiet pages (61 passes, 61 read all)". The twin was first made without
 * unmapping its copy of the parent's pages, and never merged: fork-shared
 * pages are offered by neither side.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testutil.h"

#define N 1024u
#define LEN ((size_t)N * PAGE)

struct counts { unsigned passes, all_read, all_skipped, other; };

/* Passes in the debug lines after byte offset *from. */
static struct counts count_passes(const char *path, long *from)
{
	struct counts k = { 0 };
	char line[512];
	FILE *f = fopen(path, "r");

	TU_CHECK(f, "open %s: %m", path);
	fseek(f, *from, SEEK_SET);
	while (fgets(line, sizeof(line), f)) {
		const char *s = strstr(line, " skipped ");
		unsigned long long skipped;
		if (!strstr(line, " pass ") || !s || sscanf(s, " skipped %llu", &skipped) != 1)
			continue;
		k.passes++;
		k.all_read += skipped == 0;
		k.all_skipped += skipped == N;
		k.other += skipped != 0 && skipped != N;
	}
	*from = ftell(f);
	fclose(f);
	return k;
}

static char log_path[512];
static int real_stderr = -1;

/* stderr is the scanner's log from the start: our own failures are in it
 * too, and are copied to the real stderr at exit. */
static void show_failures(void)
{
	char line[512];
	FILE *f = fopen(log_path, "r");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "FAIL", 4) && write(real_stderr, line, strlen(line)) < 0)
			break;
	if (f)
		fclose(f);
	if (getenv("SMART_SCAN_KEEP_LOG")) {
		char cmd[1100];
		snprintf(cmd, sizeof(cmd), "cp %s %s", log_path, getenv("SMART_SCAN_KEEP_LOG"));
		if (system(cmd)) {
		}
	}
}

static void kick_passes(unsigned char *p, int n)
{
	for (int i = 0; i < n; i++) {
		TU_CHECK(madvise(p, LEN, MADV_MERGEABLE) == 0, "madvise: %m");
		tu_sleep_ms(30);
	}
}

/* A fork child: it first unmaps its copy of the parent's pages, which
 * otherwise stay shared with the parent (and are then offered by neither:
 * chunk.c's classify()). */
static int twin(int rd, int wr, void *arg)
{
	unsigned char *p;
	char c;

	TU_CHECK_RETURN(munmap(arg, LEN) == 0, "twin munmap: %m");
	p = tu_map(LEN);
	tu_fill(p, LEN, 77);
	TU_CHECK_RETURN(madvise(p, LEN, MADV_MERGEABLE) == 0, "twin madvise");
	tu_send(wr, &p, sizeof(p));
	tu_recv(rd, &c, 1);
	return 0;
}

int main(void)
{
	const char *log = log_path;
	unsigned char *p, *ref;
	struct counts k;
	long from = 0;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	alarm(120);
	snprintf(log_path, sizeof(log_path), "%s/scan.log", tu_daemon_dir());
	/* The library is not started yet: it reads SAMEPAGE_DEBUG when it is. */
	setenv("SAMEPAGE_DEBUG", "1", 1);
	real_stderr = dup(2);
	fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	TU_CHECK(fd >= 0 && real_stderr >= 0 && dup2(fd, 2) == 2, "stderr to %s: %m", log);
	close(fd);
	atexit(show_failures);

	p = tu_map(LEN);
	ref = malloc(LEN);
	TU_CHECK(ref, "malloc");
	tu_fill(p, LEN, 77);
	memcpy(ref, p, LEN);
	TU_CHECK(madvise(p, LEN, MADV_MERGEABLE) == 0, "madvise: %m");
	kick_passes(p, 60);
	k = count_passes(log, &from);
	TU_CHECK(k.passes >= 24, "only %u passes in 60 kicks", k.passes);
	TU_CHECK(k.all_skipped > 0, "no pass skipped the quiet pages (%u passes, %u read all)",
		 k.passes, k.all_read);
	TU_CHECK(k.all_read >= 3 + k.passes / 10 && k.all_read <= 3 + k.passes / 4,
		 "%u of %u passes read every page: want the first 3 and one generation in 8 after",
		 k.all_read, k.passes);
	TU_CHECK(k.other == 0, "%u passes skipped some pages only", k.other);
	TU_CHECK(tu_status("pages_unshared") == N, "pages_unshared %lld, want %u (skipped pages "
		 "are unshared too)", tu_status("pages_unshared"), N);
	/* pages_skipped, as the kernel's: every page smart_scan did not read
	 * (the last pass's may reach the daemon with the next request). */
	long long skipped = tu_status("pages_skipped");
	TU_CHECK(skipped >= (long long)(k.all_skipped - 1) * N && skipped > 0,
		 "pages_skipped %lld after %u passes that skipped all %u pages", skipped,
		 k.all_skipped, N);
	printf("smart_scan=1: %u passes, %u read every page, %u skipped all %u; "
	       "pages_unshared %u, pages_skipped %lld\n", k.passes, k.all_read, k.all_skipped, N,
	       N, skipped);

	TU_CHECK(tu_cli("set smart_scan=0 >/dev/null") == 0, "samepage set smart_scan=0");
	kick_passes(p, 10); /* the knob reaches the scanner with its next budget */
	count_passes(log, &from);
	kick_passes(p, 20);
	k = count_passes(log, &from);
	TU_CHECK(k.passes >= 8 && k.all_read == k.passes,
		 "smart_scan=0: %u of %u passes read every page", k.all_read, k.passes);
	printf("smart_scan=0: %u passes, all read every page\n", k.passes);

	/* A twin appears while the pages are skipped again. */
	TU_CHECK(tu_cli("set smart_scan=1 >/dev/null") == 0, "samepage set smart_scan=1");
	kick_passes(p, 30);
	struct tu_child t;
	unsigned char *tp;
	pid_t pids[2] = { getpid(), 0 };
	uintptr_t addrs[2] = { (uintptr_t)p, 0 };
	double t0;
	tu_spawn(&t, twin, p);
	TU_CHECK(tu_recv(t.rd, &tp, sizeof(tp)) == 0, "twin did not start");
	pids[1] = t.pid;
	addrs[1] = (uintptr_t)tp;
	t0 = tu_now();
	while (tu_frames(pids, addrs, 2, N) != N && tu_now() - t0 < 40)
		kick_passes(p, 3);
	TU_CHECK(tu_frames(pids, addrs, 2, N) == N,
		 "the twin did not merge in 40 s: %zu frames for 2 x %u pages",
		 tu_frames(pids, addrs, 2, N), N);
	TU_CHECK(!memcmp(p, ref, LEN), "memory changed");
	printf("a twin of skipped pages merged in %.1f s; every byte kept\n", tu_now() - t0);
	tu_send(t.wr, "q", 1);
	TU_CHECK(tu_reap(&t) == 0, "twin exit");
	printf("PASS\n");
	return 0;
}
