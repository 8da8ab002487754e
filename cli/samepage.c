/* SPDX-License-Identifier: MIT */
/*
 * samepage — the command line: run, status, set, unmerge, daemon.
 * A thin user of the protocol (common/proto.h, common/conn.h); it holds no memory of its own
 * in the daemon (an observer connection).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "os.h"
#include "env.h"
#include "conn.h"
#include "exe.h"
#include "metrics.h"
#include "path.h"
#include "proto.h"

static unsigned char buf[SP_MAX_MSG];

static void usage(void)
{
	fputs("usage:\n"
	      "  samepage run [--merge-any] [--domain NAME] -- CMD [ARGS...]\n"
	      "                                            run CMD with merging available\n"
	      "  samepage status [--json] [--pid PID]          counters and knobs (kernel names)\n"
	      "  samepage set KNOB=VALUE...                    run, pages_to_scan, sleep_millisecs,\n"
	      "                                                use_zero_pages, max_page_sharing\n"
	      "  samepage unmerge [--pid PID]                  unmerge all (or one process's) pages\n"
	      "  samepage daemon [--foreground]                start the user's daemon\n",
	      stderr);
	exit(2);
}

/* Directory holding our binary: bin/ of the build tree or the prefix. */
static void self_dir(char *out, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", out, len - 1);

	if (n <= 0) {
		snprintf(out, len, ".");
		return;
	}
	out[n] = 0;
	*strrchr(out, '/') = 0;
}

static void daemon_bin(char *out, size_t len)
{
	char dir[PATH_MAX - 32];

	self_dir(dir, sizeof(dir));
	snprintf(out, len, "%s/samepaged", dir);
}

/* The daemon's socket, and how long a person waits for it. */
#define CLI_WAIT_S 10

static int start_daemon(void)
{
	char bin[PATH_MAX];
	pid_t pid;
	int st;

	daemon_bin(bin, sizeof(bin));
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		unsetenv("LD_PRELOAD");
		execl(bin, bin, "--daemonize", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		return -EIO;
	return 0;
}

/* Connect as an observer; start the daemon when none answers. */
static int connect_daemon(int start)
{
	char path[108];
	int fd, err = sp_socket_path(path, sizeof(path));

	if (err)
		return err;
	fd = sp_observe(path, CLI_WAIT_S, buf);
	if (fd < 0 && start && (fd == -ENOENT || fd == -ECONNREFUSED)) {
		err = start_daemon();
		if (err)
			return err;
		fd = sp_observe(path, CLI_WAIT_S, buf);
	}
	return fd;
}

static int call(int fd, uint16_t type, const void *req, uint32_t len, uint16_t want,
		struct sp_msg *m)
{
	return sp_call(fd, buf, type, req, len, want, m);
}

static int no_daemon(int err)
{
	fprintf(stderr, "samepage: no daemon reachable (%s); start one with `samepage daemon` "
			"or run a program under `samepage run`\n", strerror(-err));
	return 1;
}

/* ---- run ---- */

static int uffd_check(void)
{
	int fd = os_uffd_open();

	if (fd >= 0) {
		close(fd);
		return 0;
	}
	fprintf(stderr,
		"samepage: warning: userfaultfd is not available to this user (%s), so memory "
		"cannot be merged.\n"
		"samepage: make /dev/userfaultfd readable for this user (e.g. a group with read "
		"access), set vm.unprivileged_userfaultfd=1, or run as root.\n",
		strerror(-fd));
	return fd;
}

/* A command that cannot load libsamepage runs, unmerged, and we say so
 * once, here (exe.h): its children exec'ed under merge-any are told by the
 * library's exec wrappers. */
static void warn_unserved(const char *cmd)
{
	char path[PATH_MAX];
	int kind;

	if (sp_exec_which(cmd, path, sizeof(path)))
		return; /* execvp says what is wrong with it */
	kind = sp_exec_kind(path);
	if (kind > SP_EXEC_OK)
		fprintf(stderr, "samepage: %s %s; it runs unmerged\n", path, sp_exec_why(kind));
}

static int cmd_run(int argc, char **argv)
{
	char dir[PATH_MAX - 64], lib[PATH_MAX], bin[PATH_MAX], pre[2 * PATH_MAX];
	const char *old = getenv("LD_PRELOAD"), *domain = NULL;
	char sock[108];
	int i = 0, any = 0, fd, err;

	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--merge-any"))
			any = 1;
		else if (!strcmp(argv[i], "--domain") && i + 1 < argc && argv[i + 1][0] &&
			 strlen(argv[i + 1]) <= SP_DOMAIN_MAX)
			domain = argv[++i];
		else if (!strcmp(argv[i], "--domain") && i + 1 < argc) {
			fprintf(stderr, "samepage: a merge domain is 1 to %d bytes\n", SP_DOMAIN_MAX);
			return 2;
		}
		else if (!strcmp(argv[i], "--")) {
			i++;
			break;
		} else
			usage();
	}
	if (i >= argc)
		usage();
	self_dir(dir, sizeof(dir));
	snprintf(lib, sizeof(lib), "%s/../lib/libsamepage.so", dir);
	daemon_bin(bin, sizeof(bin));
	if (access(lib, R_OK) < 0) {
		fprintf(stderr, "samepage: %s: %s\n", lib, strerror(errno));
		return 1;
	}
	uffd_check();
	fd = connect_daemon(1);
	if (fd < 0)
		return no_daemon(fd);
	close(fd);
	snprintf(pre, sizeof(pre), "%s%s%s", lib, old && *old ? ":" : "", old ? old : "");
	/* The daemon we just reached, by its path: every process below us
	 * dials this one, whatever their environments later say of XDG. */
	err = sp_socket_path(sock, sizeof(sock));
	if (err)
		return no_daemon(err);
	setenv("SAMEPAGE_SOCKET", sock, 1);
	setenv("LD_PRELOAD", pre, 1);
	setenv("SAMEPAGE_DAEMON", bin, 1);
	if (any)
		setenv("SAMEPAGE_MERGE_ANY", "1", 1);
	if (domain)
		setenv("SAMEPAGE_DOMAIN", domain, 1);
	warn_unserved(argv[i]);
	execvp(argv[i], argv + i);
	fprintf(stderr, "samepage: %s: %s\n", argv[i], strerror(errno));
	return 127;
}

/* ---- status ---- */

struct field { const char *name; int64_t v; };

static void print_fields(const struct field *f, size_t n, int json, int *first)
{
	for (size_t i = 0; i < n; i++) {
		if (json)
			printf("%s\"%s\": %lld", *first ? "" : ", ", f[i].name, (long long)f[i].v);
		else
			printf("%-22s %lld\n", f[i].name, (long long)f[i].v);
		*first = 0;
	}
}

static void print_status(const struct sp_stat_r *r, int json)
{
	const struct sp_global_stats *g = &r->g;
	struct field glob[] = {
		{ "pages_shared", (int64_t)g->pages_shared },
		{ "pages_sharing", (int64_t)g->pages_sharing },
		{ "pages_unshared", (int64_t)g->pages_unshared },
		{ "pages_volatile", (int64_t)g->pages_volatile },
		{ "pages_scanned", (int64_t)g->pages_scanned },
		{ "full_scans", (int64_t)g->full_scans },
		{ "ksm_zero_pages", (int64_t)g->ksm_zero_pages },
		{ "general_profit", g->general_profit },
		{ "stable_node_chains", (int64_t)g->stable_node_chains },
		{ "stable_node_dups", (int64_t)g->stable_node_dups },
		{ "pool_pages", (int64_t)g->pool_pages },
		{ "pool_bytes", (int64_t)g->pool_pages * SP_PAGE },
		{ "pool_segments", (int64_t)g->pool_segments },
		{ "merge_vmas", (int64_t)g->merge_vmas },
		{ "vma_limited", (int64_t)g->vma_limited },
		{ "processes_limited", (int64_t)g->processes_limited },
		{ "pages_inplace", (int64_t)g->pages_inplace },
		{ "pages_moved", (int64_t)g->pages_moved },
		{ "processes", (int64_t)g->processes },
		{ "held_sets", (int64_t)g->held_sets },
		{ "pool_written", (int64_t)g->pool_written },
	};
	struct field knobs[KNOB_COUNT];
	struct field proc[] = {
		{ "pid", r->pid },
		{ "ksm_rmap_items", (int64_t)r->p.rmap_items },
		{ "ksm_zero_pages", (int64_t)r->p.zero_pages },
		{ "ksm_merging_pages", (int64_t)r->p.merging_pages },
		{ "ksm_process_profit", (int64_t)(r->p.merging_pages + r->p.zero_pages) * SP_PAGE -
					(int64_t)r->p.rmap_items * SP_ENTRY_BYTES },
		{ "ksm_merge_any", r->p.merge_any },
		{ "ksm_mergeable", r->p.mergeable },
		{ "merge_limited", r->p.limited },
	};
	int first = 1;

	for (int k = 0; k < KNOB_COUNT; k++)
		knobs[k] = (struct field){ sp_knob_name(k), r->knobs.v[k] };
	if (json)
		printf("{");
	if (r->has_proc) {
		print_fields(proc, sizeof(proc) / sizeof(proc[0]), json, &first);
	} else {
		print_fields(knobs, KNOB_COUNT, json, &first);
		print_fields(glob, sizeof(glob) / sizeof(glob[0]), json, &first);
	}
	if (json)
		printf("}\n");
}

static int cmd_status(int argc, char **argv)
{
	struct sp_statreq q = { 0 };
	struct sp_stat_r r;
	struct sp_msg m;
	int json = 0, fd, err;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--pid") && i + 1 < argc)
			q.pid = atoi(argv[++i]);
		else
			usage();
	}
	fd = connect_daemon(0);
	if (fd < 0)
		return no_daemon(fd);
	err = call(fd, C_STAT, &q, sizeof(q), D_STAT, &m);
	close(fd);
	if (err == -ESRCH) {
		fprintf(stderr, "samepage: no process %d is connected to the daemon\n", q.pid);
		return 1;
	}
	if (err) {
		fprintf(stderr, "samepage: status: %s\n", strerror(-err));
		return 1;
	}
	memcpy(&r, m.p, sizeof(r));
	print_status(&r, json);
	return 0;
}

/* ---- set ---- */

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	*v = strtoull(s, &end, 10);
	return errno || *end ? -EINVAL : 0;
}

static int wait_unmerged(int fd)
{
	struct sp_statreq q = { 0 };
	struct sp_msg m;
	struct sp_stat_r r;

	for (int i = 0; i < 600; i++) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		int err = call(fd, C_STAT, &q, sizeof(q), D_STAT, &m);
		if (err)
			return err;
		memcpy(&r, m.p, sizeof(r));
		if (!r.g.pages_shared && !r.g.ksm_zero_pages)
			return 0;
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}

static int cmd_set(int argc, char **argv)
{
	struct sp_set req[KNOB_COUNT * 4];
	struct sp_msg m;
	int n = 0, fd, err = 0, unmerge = 0;

	if (!argc)
		usage();
	/* Check every argument before changing anything. */
	for (int i = 0; i < argc && n < (int)(sizeof(req) / sizeof(req[0])); i++) {
		char *eq = strchr(argv[i], '=');
		uint64_t v;
		int k;
		if (!eq) {
			fprintf(stderr, "samepage: set: expected KNOB=VALUE, got '%s'\n", argv[i]);
			return 2;
		}
		*eq = 0;
		k = sp_knob_lookup(argv[i]);
		if (k < 0) {
			fprintf(stderr, "samepage: set: unknown knob '%s' (knobs: run, pages_to_scan, "
					"sleep_millisecs, use_zero_pages, max_page_sharing)\n", argv[i]);
			return 2;
		}
		if (parse_u64(eq + 1, &v) || sp_knob_check(k, v)) {
			fprintf(stderr, "samepage: set: invalid value '%s' for %s\n", eq + 1, argv[i]);
			return 2;
		}
		req[n++] = (struct sp_set){ .knob = (uint32_t)k, .value = v };
		unmerge |= k == KNOB_RUN && v == 2;
	}
	fd = connect_daemon(1);
	if (fd < 0)
		return no_daemon(fd);
	for (int i = 0; i < n && !err; i++)
		err = call(fd, C_SET, &req[i], sizeof(req[i]), D_ACK, &m);
	/* run=2 returns once everything is unmerged, as writing it to sysfs does. */
	if (!err && unmerge)
		err = wait_unmerged(fd);
	close(fd);
	if (err) {
		fprintf(stderr, "samepage: set: %s\n", strerror(-err));
		return 1;
	}
	return 0;
}

static int cmd_unmerge(int argc, char **argv)
{
	struct sp_unmerge u = { 0 };
	struct sp_msg m;
	int fd, err;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--pid") && i + 1 < argc)
			u.pid = atoi(argv[++i]);
		else
			usage();
	}
	fd = connect_daemon(0);
	if (fd < 0)
		return no_daemon(fd);
	err = call(fd, C_UNMERGE, &u, sizeof(u), D_ACK, &m);
	close(fd);
	if (err) {
		fprintf(stderr, "samepage: unmerge: %s\n", err == -ESRCH ?
			"no such process is connected" : strerror(-err));
		return 1;
	}
	return 0;
}

static int cmd_daemon(int argc, char **argv)
{
	char bin[PATH_MAX];

	daemon_bin(bin, sizeof(bin));
	if (argc == 1 && !strcmp(argv[0], "--foreground"))
		execl(bin, bin, (char *)NULL);
	else if (argc == 0)
		execl(bin, bin, "--daemonize", (char *)NULL);
	else
		usage();
	fprintf(stderr, "samepage: %s: %s\n", bin, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc - 2, argv + 2);
	if (!strcmp(argv[1], "status"))
		return cmd_status(argc - 2, argv + 2);
	if (!strcmp(argv[1], "set"))
		return cmd_set(argc - 2, argv + 2);
	if (!strcmp(argv[1], "unmerge"))
		return cmd_unmerge(argc - 2, argv + 2);
	if (!strcmp(argv[1], "daemon"))
		return cmd_daemon(argc - 2, argv + 2);
	if (!strcmp(argv[1], "metrics"))
		return cmd_metrics(argc - 2, argv + 2);
	usage();
	return 2;
}
