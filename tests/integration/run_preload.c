/* SPDX-License-Identifier: MIT */
/*
 * `samepage run -- CMD` serves an unmodified program (tests/progs/
 * plain_merge, not linked with libsamepage) the kernel KSM interface:
 *  - three copies calling madvise(MADV_MERGEABLE) merge (page frames), with
 *    kernel KSM off all along (/sys/kernel/mm/ksm: run 0, pages_shared 0):
 *    samepage served them;
 *  - `samepage status --json` prints one JSON object with the kernel's key
 *    names (numbers, and advisor_mode's name "none"), pages_shared/
 *    pages_sharing showing the merge, and
 *    `samepage status --pid PID --json` the /proc/PID/ksm_stat keys;
 *  - two copies calling prctl(PR_SET_MEMORY_MERGE, 1) merge;
 *  - two copies under `samepage run --merge-any` that ask for nothing merge;
 *  - every copy exits 0: its data was intact.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define MAXP 3

struct proc {
	pid_t pid;
	int in, out;      /* our ends of its stdin and stdout */
	uintptr_t addr;
	size_t pages;
};

static char prog[PATH_MAX];

static void find_prog(void)
{
	ssize_t n = readlink("/proc/self/exe", prog, sizeof(prog) - 32);

	TU_CHECK(n > 0, "readlink");
	prog[n] = 0;
	*strrchr(prog, '/') = 0; /* build/tests/integration */
	*strrchr(prog, '/') = 0; /* build/tests */
	strcat(prog, "/progs/plain_merge");
	if (access(prog, X_OK))
		TU_FAIL("%s: %s (built by make all from tests/progs/plain_merge.c)", prog,
			strerror(errno));
}

/* Read one line from fd within timeout_s. */
static int read_line(int fd, char *buf, size_t len, int timeout_s)
{
	size_t got = 0;
	double end = tu_now() + timeout_s;

	while (got + 1 < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int left = (int)((end - tu_now()) * 1000);
		if (left <= 0 || poll(&p, 1, left) <= 0)
			return -1;
		ssize_t r = read(fd, buf + got, 1);
		if (r <= 0)
			return -1;
		if (buf[got] == '\n')
			break;
		got++;
	}
	buf[got] = 0;
	return 0;
}

static void launch(struct proc *p, int merge_any, const char *mode, const char *mib,
		   const char *seed)
{
	int in[2], out[2];
	char line[128];
	int pid;

	TU_CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0, "pipe");
	p->pid = fork();
	TU_CHECK(p->pid >= 0, "fork");
	if (p->pid == 0) {
		const char *argv[10];
		int n = 0;
		dup2(in[0], 0);
		dup2(out[1], 1);
		argv[n++] = tu_bin("samepage");
		argv[n++] = "run";
		if (merge_any)
			argv[n++] = "--merge-any";
		argv[n++] = "--";
		argv[n++] = prog;
		argv[n++] = mode;
		argv[n++] = mib;
		argv[n++] = seed;
		argv[n] = NULL;
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	p->in = in[1];
	p->out = out[0];
	TU_CHECK(read_line(p->out, line, sizeof(line), 20) == 0,
		 "`samepage run %s-- plain_merge %s` printed nothing within 20 s",
		 merge_any ? "--merge-any " : "", mode);
	TU_CHECK(sscanf(line, "%d %lx %zu", &pid, (unsigned long *)&p->addr, &p->pages) == 3,
		 "plain_merge printed '%s'", line);
	TU_CHECK(pid == p->pid, "plain_merge runs as pid %d, not in samepage run's process %d",
		 pid, (int)p->pid);
}

static int finish(struct proc *p)
{
	int st;

	if (write(p->in, "go\n", 3) != 3)
		return -1;
	close(p->in);
	close(p->out);
	if (waitpid(p->pid, &st, 0) != p->pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void stop(struct proc *ps, int n)
{
	for (int i = 0; i < n; i++) {
		int st = finish(&ps[i]);
		TU_CHECK(st == 0, "plain_merge %d exited with %d (1: its data changed)",
			 (int)ps[i].pid, st);
	}
}

struct group { struct proc *ps; int n; };

static int merged(void *arg)
{
	struct group *g = arg;
	pid_t pids[MAXP];
	uintptr_t addrs[MAXP];

	for (int i = 0; i < g->n; i++) {
		pids[i] = g->ps[i].pid;
		addrs[i] = g->ps[i].addr;
	}
	return tu_frames(pids, addrs, g->n, g->ps[0].pages) <= g->ps[0].pages + 8;
}

static size_t frames(struct group *g)
{
	pid_t pids[MAXP];
	uintptr_t addrs[MAXP];

	for (int i = 0; i < g->n; i++) {
		pids[i] = g->ps[i].pid;
		addrs[i] = g->ps[i].addr;
	}
	return tu_frames(pids, addrs, g->n, g->ps[0].pages);
}

static long sysfs(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* ---- a flat JSON object of integers (and names: advisor_mode's
 * "none"), parsed strictly ---- */

#define MAXKEYS 64
struct json {
	int n;
	char key[MAXKEYS][48];
	long long val[MAXKEYS];
	char text[MAXKEYS][16]; /* a name's value ("" for a number) */
};

/* A name: lower-case letters and '-', as advisor_mode's; 0 or what is wrong. */
static const char *json_name(const char *s, char *out, const char **end)
{
	size_t n = 0;

	for (s++; (*s >= 'a' && *s <= 'z') || *s == '-'; s++) {
		if (n + 1 >= 16)
			return "name too long";
		out[n++] = *s;
	}
	out[n] = 0;
	if (*s != '"' || !n)
		return "value not an integer or a name";
	*end = s + 1;
	return NULL;
}

static const char *ws(const char *s)
{
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	return s;
}

/* 0, or a description of what is wrong. */
static const char *json_parse(const char *s, struct json *j)
{
	j->n = 0;
	s = ws(s);
	if (*s++ != '{')
		return "does not start with '{'";
	s = ws(s);
	if (*s == '}')
		return "empty object";
	for (;;) {
		const char *k = ws(s), *q;
		char *end;
		if (*k != '"')
			return "key not a string";
		q = strchr(k + 1, '"');
		if (!q || q - k - 1 >= 48 || q == k + 1)
			return "bad key";
		if (j->n == MAXKEYS)
			return "too many keys";
		memcpy(j->key[j->n], k + 1, q - k - 1);
		j->key[j->n][q - k - 1] = 0;
		for (int i = 0; i < j->n; i++)
			if (!strcmp(j->key[i], j->key[j->n]))
				return "duplicate key";
		s = ws(q + 1);
		if (*s++ != ':')
			return "missing ':'";
		s = ws(s);
		errno = 0;
		j->text[j->n][0] = 0;
		j->val[j->n] = -1;
		if (*s == '"') {
			const char *why = json_name(s, j->text[j->n], &s);
			if (why)
				return why;
			end = (char *)s;
		} else {
			j->val[j->n] = strtoll(s, &end, 10);
			if (end == s || errno)
				return "value not an integer";
		}
		j->n++;
		s = ws(end);
		if (*s == ',') {
			s++;
			continue;
		}
		if (*s++ != '}')
			return "missing ',' or '}'";
		break;
	}
	if (*ws(s))
		return "text after the object";
	return NULL;
}

/* The name key holds, or NULL. */
static const char *json_text(const struct json *j, const char *key)
{
	for (int i = 0; i < j->n; i++)
		if (!strcmp(j->key[i], key) && j->text[i][0])
			return j->text[i];
	return NULL;
}

static int json_get(const struct json *j, const char *key, long long *v)
{
	for (int i = 0; i < j->n; i++)
		if (!strcmp(j->key[i], key)) {
			*v = j->val[i];
			return 1;
		}
	return 0;
}

/* Run `samepage ARGS`, its stdout into out; exit status. */
static int cli_out(const char *args, char *out, size_t len)
{
	char cmd[PATH_MAX + 256];
	size_t got = 0;
	FILE *f;
	int st;

	snprintf(cmd, sizeof(cmd), "%s %s", tu_bin("samepage"), args);
	f = popen(cmd, "r");
	TU_CHECK(f, "popen");
	while (got + 1 < len) {
		size_t r = fread(out + got, 1, len - 1 - got, f);
		if (!r)
			break;
		got += r;
	}
	out[got] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void status_json(const char *args, struct json *j)
{
	char out[8192];
	const char *err;
	int st = cli_out(args, out, sizeof(out));
	char *nl = strchr(out, '\n');

	TU_CHECK(st == 0, "samepage %s: exit %d", args, st);
	TU_CHECK(nl && nl[1] == 0, "samepage %s: not exactly one line: '%s'", args, out);
	err = json_parse(out, j);
	TU_CHECK(!err, "samepage %s: not a flat JSON object of integers and names (%s): %s", args,
		 err, out);
}

static const char *const global_keys[] = {
	"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "pages_scanned",
	"full_scans", "ksm_zero_pages", "general_profit", "stable_node_chains", "stable_node_dups",
	"run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing",
	"smart_scan", "advisor_mode", "advisor_max_cpu", "advisor_min_pages_to_scan",
	"advisor_max_pages_to_scan", "advisor_target_scan_time",
};
static const char *const proc_keys[] = {
	"ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages", "ksm_process_profit",
	"ksm_merge_any", "ksm_mergeable",
};

static int globals_show(void *arg)
{
	long long pages = *(long long *)arg, shared = -1, sharing = -1;
	struct json j;

	status_json("status --json", &j);
	json_get(&j, "pages_shared", &shared);
	json_get(&j, "pages_sharing", &sharing);
	return shared == pages && sharing == 2 * pages;
}

struct pidwant { pid_t pid; long long merging, merge_any; };

static int proc_shows(void *arg)
{
	struct pidwant *w = arg;
	char args[64];
	long long m = -1, a = -1;
	struct json j;

	snprintf(args, sizeof(args), "status --pid %d --json", (int)w->pid);
	status_json(args, &j);
	json_get(&j, "ksm_merging_pages", &m);
	json_get(&j, "ksm_merge_any", &a);
	return m >= w->merging && a == w->merge_any;
}

static void check_proc(pid_t pid, long long min_merging, long long merge_any)
{
	struct pidwant w = { pid, min_merging, merge_any };
	char args[64];
	struct json j;
	long long v;

	snprintf(args, sizeof(args), "status --pid %d --json", (int)pid);
	if (!tu_wait(proc_shows, &w, 10)) {
		char out[4096];
		cli_out(args, out, sizeof(out));
		TU_FAIL("samepage %s: want ksm_merging_pages >= %lld and ksm_merge_any %lld: %s",
			args, min_merging, merge_any, out);
	}
	status_json(args, &j);
	for (size_t i = 0; i < sizeof(proc_keys) / sizeof(proc_keys[0]); i++)
		TU_CHECK(json_get(&j, proc_keys[i], &v), "samepage %s: no key %s", args, proc_keys[i]);
	TU_CHECK(json_get(&j, "ksm_mergeable", &v) && v == 1, "%s: ksm_mergeable %lld", args, v);
	TU_CHECK(json_get(&j, "ksm_process_profit", &v) && v > 0, "%s: ksm_process_profit %lld",
		 args, v);
	TU_CHECK(json_get(&j, "ksm_rmap_items", &v) && v >= min_merging,
		 "%s: ksm_rmap_items %lld", args, v);
}

static void kernel_ksm_off(const char *when)
{
	long run = sysfs("run"), shared = sysfs("pages_shared"), sharing = sysfs("pages_sharing");

	TU_CHECK(run == 0, "%s: /sys/kernel/mm/ksm/run is %ld: kernel KSM must stay off", when, run);
	TU_CHECK(shared == 0 && sharing == 0,
		 "%s: kernel KSM merged pages (pages_shared %ld, pages_sharing %ld)", when, shared,
		 sharing);
}

int main(void)
{
#if defined(__SANITIZE_THREAD__)
	/* `samepage run` preloads the library into a plain program; a
	 * TSan-built library cannot run there (its runtime must start first). */
	tu_skip("ThreadSanitizer's runtime cannot be preloaded into uninstrumented programs");
#endif
	struct proc ps[MAXP];
	struct group g = { ps, 3 };
	struct json j;
	long long v, pages;

	tu_require_merging();
	tu_private_daemon();
	find_prog();
	signal(SIGPIPE, SIG_IGN);
	if (sysfs("run") < 0)
		tu_skip("no /sys/kernel/mm/ksm: cannot tell kernel KSM from samepage");
	kernel_ksm_off("before");

	/* ---- madvise(MADV_MERGEABLE), three copies ---- */
	for (int i = 0; i < 3; i++)
		launch(&ps[i], 0, "madvise", "8", "77");
	TU_CHECK(tu_wait(merged, &g, 30), "madvise: 3 × %zu pages on %zu frames after 30 s",
		 ps[0].pages, frames(&g));
	kernel_ksm_off("after merging");
	pages = (long long)ps[0].pages;
	if (!tu_wait(globals_show, &pages, 10)) {
		char out[4096];
		cli_out("status --json", out, sizeof(out));
		TU_FAIL("status --json: want pages_shared %lld, pages_sharing %lld: %s", pages,
			2 * pages, out);
	}
	status_json("status --json", &j);
	for (size_t i = 0; i < sizeof(global_keys) / sizeof(global_keys[0]); i++)
		TU_CHECK(json_get(&j, global_keys[i], &v), "status --json: no key %s", global_keys[i]);
	TU_CHECK(json_get(&j, "pages_sharing", &v) && v > 0, "pages_sharing %lld", v);
	TU_CHECK(json_get(&j, "general_profit", &v) && v > 0, "general_profit %lld", v);
	TU_CHECK(json_get(&j, "run", &v) && v == 1, "run %lld", v);
	TU_CHECK(json_text(&j, "advisor_mode") && !strcmp(json_text(&j, "advisor_mode"), "none"),
		 "advisor_mode is not \"none\"");
	for (int i = 0; i < 3; i++)
		check_proc(ps[i].pid, pages, 0);
	stop(ps, 3);
	printf("run_preload: madvise ok\n");
	fflush(stdout);

	/* ---- prctl(PR_SET_MEMORY_MERGE, 1), two copies ---- */
	g.n = 2;
	for (int i = 0; i < 2; i++)
		launch(&ps[i], 0, "prctl", "4", "78");
	if (!tu_wait(merged, &g, 20)) {
		size_t f = frames(&g);
		for (int i = 0; i < 2; i++)
			kill(ps[i].pid, SIGKILL);
		TU_FAIL("prctl: 2 × %zu pages on %zu frames after 20 s", ps[0].pages, f);
	}
	for (int i = 0; i < 2; i++)
		check_proc(ps[i].pid, (long long)ps[0].pages, 1);
	kernel_ksm_off("after prctl merging");
	stop(ps, 2);
	printf("run_preload: prctl ok\n");
	fflush(stdout);

	/* ---- samepage run --merge-any, two copies asking for nothing ---- */
	for (int i = 0; i < 2; i++)
		launch(&ps[i], 1, "none", "4", "79");
	if (!tu_wait(merged, &g, 20)) {
		size_t f = frames(&g);
		for (int i = 0; i < 2; i++)
			kill(ps[i].pid, SIGKILL);
		TU_FAIL("--merge-any: 2 × %zu pages on %zu frames after 20 s", ps[0].pages, f);
	}
	for (int i = 0; i < 2; i++)
		check_proc(ps[i].pid, (long long)ps[0].pages, 1);
	kernel_ksm_off("after merge-any merging");
	stop(ps, 2);
	printf("run_preload: merge-any ok\n");
	return 0;
}
