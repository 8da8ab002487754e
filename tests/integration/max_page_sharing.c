/* SPDX-License-Identifier: MIT */
/*
 * max_page_sharing and stable node chains, as the kernel defines them.
 *
 * With `samepage set max_page_sharing=2`, four processes hold the same 512
 * distinct pages (R1), and one of them also holds 8 copies of one more
 * page (R2). Every content then needs ceil(mappers / 2) pool pages: R1 two
 * per content, R2 four. Ground truth is the page frames: R1 takes exactly
 * 2 x 512 frames and R2 4, each frame mapped exactly twice, never more.
 * The counters must agree: pages_shared = pool_pages = frames,
 * pages_sharing = mappings beyond the first of each pool page,
 * stable_node_chains = contents held by more than one pool page,
 * stable_node_dups = pool pages in such chains. Then two of the processes
 * exit: pool pages nobody maps go, chains that keep one page stop being
 * chains, and the counters follow the frames again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPROC 4
#define M 512u  /* R1: distinct pages, in every process */
#define DUPS 8u /* R2: copies of one page, in process 0 */
#define MAXS 2

struct hello { uintptr_t r1, r2; };

static int child(int rd, int wr, void *arg)
{
	int idx = (int)(intptr_t)arg;
	size_t len = (size_t)(M + DUPS) * PAGE;
	unsigned char *p = tu_map(len), *ref = malloc(len);
	struct hello h = { (uintptr_t)p, idx == 0 ? (uintptr_t)p + (size_t)M * PAGE : 0 };
	char cmd;

	tu_fill(p, (size_t)M * PAGE, 42);
	if (idx == 0)
		for (unsigned i = 0; i < DUPS; i++)
			tu_fill(p + (size_t)(M + i) * PAGE, PAGE, 99);
	else
		tu_fill(p + (size_t)M * PAGE, (size_t)DUPS * PAGE, 1000 + idx); /* own pages */
	memcpy(ref, p, len);
	TU_CHECK(madvise(p, len, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &h, sizeof(h));
	while (tu_recv(rd, &cmd, 1) == 0) {
		struct samepage_stat st;
		int ok;
		switch (cmd) {
		case 'v':
			ok = !memcmp(p, ref, len);
			tu_send(wr, &ok, sizeof(ok));
			break;
		case 's':
			memset(&st, 0xff, sizeof(st));
			if (samepage_stat(&st))
				memset(&st, 0xff, sizeof(st));
			tu_send(wr, &st, sizeof(st));
			break;
		case 'q':
			return 0;
		default:
			return 4;
		}
	}
	return 3;
}

static struct tu_child c[NPROC];
static struct hello h[NPROC];
static int live[NPROC] = { 1, 1, 1, 1 };

/* Frames of R1 (over the live processes) and of R2. */
static size_t r1_frames(void)
{
	pid_t p[NPROC];
	uintptr_t a[NPROC];
	int n = 0;

	for (int i = 0; i < NPROC; i++)
		if (live[i]) {
			p[n] = c[i].pid;
			a[n++] = h[i].r1;
		}
	return tu_frames(p, a, n, M);
}

static size_t r2_frames(void)
{
	pid_t p = c[0].pid;

	return tu_frames(&p, &h[0].r2, 1, DUPS);
}

static int settled(void *arg)
{
	(void)arg;
	return r1_frames() == 2 * M && r2_frames() == DUPS / MAXS;
}

/* How often each frame is mapped: the most, and how many frames. */
static size_t max_mappers(size_t *nframes)
{
	static uint64_t f[NPROC * M + DUPS];
	size_t n = 0, best = 0, run = 0, distinct = 0;

	for (int i = 0; i < NPROC; i++)
		for (size_t pg = 0; live[i] && pg < M; pg++)
			f[n++] = tu_pfn(c[i].pid, h[i].r1 + pg * PAGE);
	for (size_t pg = 0; pg < DUPS; pg++)
		f[n++] = tu_pfn(c[0].pid, h[0].r2 + pg * PAGE);
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (f[j] < f[i]) {
				uint64_t t = f[i];
				f[i] = f[j];
				f[j] = t;
			}
	for (size_t i = 0; i < n; i++) {
		TU_CHECK(f[i] != 0, "a page is not present");
		run = i && f[i] == f[i - 1] ? run + 1 : 1;
		distinct += run == 1;
		best = run > best ? run : best;
	}
	*nframes = distinct;
	return best;
}

static struct samepage_stat stat0(void)
{
	struct samepage_stat st;

	TU_CHECK(tu_send(c[0].wr, "s", 1) == 0 && tu_recv(c[0].rd, &st, sizeof(st)) == 0,
		 "process 0 died");
	TU_CHECK(st.pool_pages != UINT64_MAX, "samepage_stat failed");
	return st;
}

struct counters { long long shared, pool, sharing, chains, dups; };

/* The daemon's counters, from `samepage status --json` (-1 each when it
 * could not be read). */
static struct counters cli_counters(void)
{
	char buf[8192];
	struct counters k;

	tu_status_json(0, buf, sizeof(buf)); /* buf is what was read, maybe "" */
	k.shared = tu_json_get(buf, "pages_shared");
	k.pool = tu_json_get(buf, "pool_pages");
	k.sharing = tu_json_get(buf, "pages_sharing");
	k.chains = tu_json_get(buf, "stable_node_chains");
	k.dups = tu_json_get(buf, "stable_node_dups");
	return k;
}

/* What the frames of the live processes say the counters must be: content
 * i of R1 is held by as many pool pages as distinct frames map it. */
static struct counters from_frames(void)
{
	struct counters w = { 0, 0, 0, 0, 0 };
	long long mappings = DUPS;

	for (size_t pg = 0; pg < M; pg++) {
		uint64_t f[NPROC];
		int n = 0, distinct = 0;
		for (int i = 0; i < NPROC; i++)
			if (live[i])
				f[n++] = tu_pfn(c[i].pid, h[i].r1 + pg * PAGE);
		for (int i = 0; i < n; i++) {
			int seen = 0;
			for (int j = 0; j < i; j++)
				seen |= f[j] == f[i];
			distinct += !seen;
		}
		mappings += n;
		w.shared += distinct;
		if (distinct > 1) {
			w.chains++;
			w.dups += distinct;
		}
	}
	/* R2: DUPS copies on DUPS / MAXS pool pages, one chain. */
	w.shared += DUPS / MAXS;
	w.chains++;
	w.dups += DUPS / MAXS;
	w.pool = w.shared;
	w.sharing = mappings - w.shared;
	return w;
}

static struct counters want;

/* Why R1 did not settle, for the next reader of a failed run: how the
 * contents are spread over frames (pattern "2,1,1": one frame mapped by
 * two processes, two by one each), which processes hold the lone frames,
 * what each process's library and the daemon count. */
static void stuck_report(void)
{
	char pat[64][16], buf[8192];
	size_t npat = 0, count[64] = { 0 }, lone[NPROC] = { 0 };

	for (size_t pg = 0; pg < M; pg++) {
		uint64_t fr[NPROC];
		int mult[NPROC], k = 0;
		char p[16] = "";
		size_t j;
		for (int i = 0; i < NPROC; i++)
			fr[i] = tu_pfn(c[i].pid, h[i].r1 + pg * PAGE);
		for (int i = 0; i < NPROC; i++) {
			int seen = 0, m = 0;
			for (int x = 0; x < i; x++)
				seen |= fr[x] == fr[i];
			for (int x = 0; x < NPROC; x++)
				m += fr[x] == fr[i];
			if (m == 1)
				lone[i]++;
			if (!seen)
				mult[k++] = m;
		}
		for (int a = 0; a < k; a++) /* descending */
			for (int b = a + 1; b < k; b++)
				if (mult[b] > mult[a]) {
					int t = mult[a];
					mult[a] = mult[b];
					mult[b] = t;
				}
		for (int a = 0; a < k; a++)
			snprintf(p + strlen(p), sizeof(p) - strlen(p), a ? ",%d" : "%d", mult[a]);
		for (j = 0; j < npat && strcmp(pat[j], p); j++)
			;
		if (j == npat && npat < 64)
			snprintf(pat[npat++], sizeof(pat[0]), "%s", p);
		if (j < 64)
			count[j]++;
	}
	for (size_t j = 0; j < npat; j++)
		fprintf(stderr, "  R1 contents spread %s: %zu\n", pat[j], count[j]);
	for (int i = 0; i < NPROC; i++) {
		struct samepage_stat st;
		memset(&st, 0xff, sizeof(st));
		if (tu_send(c[i].wr, "s", 1) || tu_recv(c[i].rd, &st, sizeof(st)))
			continue;
		fprintf(stderr, "  process %d: %zu lone R1 frames; merging %llu, volatile %llu, "
			"unshared %llu, rmap_items %llu\n", i, lone[i],
			(unsigned long long)st.ksm_merging_pages,
			(unsigned long long)st.pages_volatile,
			(unsigned long long)st.pages_unshared,
			(unsigned long long)st.ksm_rmap_items);
	}
	if (tu_status_json(0, buf, sizeof(buf)))
		fprintf(stderr, "  samepage status --json failed\n");
	fprintf(stderr, "  samepage status --json:\n%s\n", buf);
}

static int counters_are(void *arg)
{
	struct counters k = cli_counters();

	(void)arg;
	return !memcmp(&k, &want, sizeof(k));
}

static void check_counters(const char *when)
{
	struct counters k;

	if (!tu_wait(counters_are, NULL, 5)) {
		k = cli_counters();
		TU_FAIL("%s: pages_shared %lld pool_pages %lld pages_sharing %lld "
			"stable_node_chains %lld stable_node_dups %lld; the frames say %lld %lld "
			"%lld %lld %lld", when, k.shared, k.pool, k.sharing, k.chains, k.dups,
			want.shared, want.pool, want.sharing, want.chains, want.dups);
	}
	printf("%s: pages_shared %lld, pages_sharing %lld, stable_node_chains %lld, "
	       "stable_node_dups %lld: as the frames say\n", when, want.shared, want.sharing,
	       want.chains, want.dups);
}

static void content_ok(const char *when)
{
	for (int i = 0; i < NPROC; i++) {
		int ok = 0;
		if (!live[i])
			continue;
		TU_CHECK(tu_send(c[i].wr, "v", 1) == 0 && tu_recv(c[i].rd, &ok, sizeof(ok)) == 0,
			 "process %d died", i);
		TU_CHECK(ok, "process %d's memory is wrong %s", i, when);
	}
}

int main(void)
{
	size_t nframes, most;
	double t0;
	char cmd[64];

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(100);
	snprintf(cmd, sizeof(cmd), "set max_page_sharing=%d", MAXS);
	TU_CHECK(tu_cli(cmd) == 0, "samepage %s", cmd);
	for (int i = 0; i < NPROC; i++)
		tu_spawn(&c[i], child, (void *)(intptr_t)i);
	for (int i = 0; i < NPROC; i++)
		TU_CHECK(tu_recv(c[i].rd, &h[i], sizeof(h[i])) == 0, "process %d died", i);

	t0 = tu_now();
	if (!tu_wait(settled, NULL, 30))
		stuck_report();
	TU_CHECK(settled(NULL),
		 "after 30 s: R1 %zu frames (want %u), R2 %zu frames (want %u)", r1_frames(),
		 2 * M, r2_frames(), DUPS / MAXS);
	usleep(500000); /* and it stays so */
	TU_CHECK(settled(NULL), "merging went on: R1 %zu frames, R2 %zu frames", r1_frames(),
		 r2_frames());
	most = max_mappers(&nframes);
	printf("merged in %.2f s: R1 %u contents x %d processes on %zu frames, R2 %u copies on "
	       "%zu frames; at most %zu mappers per frame\n", tu_now() - t0, M, NPROC,
	       r1_frames(), DUPS, r2_frames(), most);
	TU_CHECK(most <= MAXS, "a frame is mapped %zu times with max_page_sharing=%d", most, MAXS);
	TU_CHECK(nframes == 2 * M + DUPS / MAXS, "%zu frames", nframes);
	content_ok("after merging");
	want = from_frames();
	TU_CHECK(want.shared == 2 * M + DUPS / MAXS && want.chains == M + 1 &&
		 want.dups == 2 * M + DUPS / MAXS && want.sharing == 2 * M + DUPS / MAXS,
		 "frames: %lld pool pages, %lld chains", want.shared, want.chains);
	check_counters("4 processes");
	{
		struct samepage_stat st = stat0(); /* the library's view agrees */
		TU_CHECK((long long)st.pages_shared == want.shared &&
			 (long long)st.pages_sharing == want.sharing &&
			 (long long)st.stable_node_chains == want.chains &&
			 (long long)st.stable_node_dups == want.dups,
			 "samepage_stat: %llu %llu %llu %llu", (unsigned long long)st.pages_shared,
			 (unsigned long long)st.pages_sharing,
			 (unsigned long long)st.stable_node_chains,
			 (unsigned long long)st.stable_node_dups);
	}

	/* Process 3 goes: its pool pages keep their other mapper. Then the
	 * process that does not share with process 0 goes, so that contents
	 * lose a whole pool page and chains shrink back to single pages. In
	 * between, a newcomer takes the places process 3 left. */
	for (int round = 0; round < 2; round++) {
		int victim = 3, best = -1;
		if (round == 1)
			for (int j = 1; j < 3; j++) {
				int shared = 0;
				for (size_t pg = 0; pg < M; pg++)
					shared += tu_pfn(c[0].pid, h[0].r1 + pg * PAGE) ==
						  tu_pfn(c[j].pid, h[j].r1 + pg * PAGE);
				if (shared > best) {
					best = shared;
					victim = 3 - j; /* the other one of 1 and 2 */
				}
			}
		tu_send(c[victim].wr, "q", 1);
		TU_CHECK(tu_reap(&c[victim]) == 0, "process %d exit", victim);
		live[victim] = 0;
		want = from_frames();
		snprintf(cmd, sizeof(cmd), "process %d exited", victim);
		check_counters(cmd);
		most = max_mappers(&nframes);
		TU_CHECK(most <= MAXS, "a frame is mapped %zu times", most);
		content_ok(cmd);
		if (round)
			continue;
		/* A newcomer fills the places process 3 left: no new pool page.
		 * (Its private pages differ from the old process 3's: this test is
		 * not about what a dead process leaves in the unstable index.) */
		tu_spawn(&c[3], child, (void *)(intptr_t)4);
		TU_CHECK(tu_recv(c[3].rd, &h[3], sizeof(h[3])) == 0, "process 3' died");
		live[3] = 1;
		TU_CHECK(tu_wait(settled, NULL, 30), "newcomer: R1 %zu frames, want %u",
			 r1_frames(), 2 * M);
		want = from_frames();
		TU_CHECK(want.shared == 2 * M + DUPS / MAXS, "newcomer: %lld pool pages",
			 want.shared);
		check_counters("a newcomer took process 3's places");
		most = max_mappers(&nframes);
		TU_CHECK(most <= MAXS, "a frame is mapped %zu times", most);
		content_ok("after the newcomer merged");
	}
	for (int i = 0; i < NPROC; i++)
		if (live[i]) {
			tu_send(c[i].wr, "q", 1);
			TU_CHECK(tu_reap(&c[i]) == 0, "process %d exit", i);
		}
	return 0;
}
