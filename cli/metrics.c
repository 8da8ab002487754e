/* SPDX-License-Identifier: MIT */
/*
 * metrics — samepage's counters for Prometheus (`samepage metrics`), in
 * the text exposition format: node_exporter's ksmd collector's names
 * (node_ksmd_*, from kernel KSM's files of the same meaning) where there
 * is one, samepage_* for the rest, and with --per-process one series per
 * connected process. --textfile PATH writes them atomically (a temporary
 * file renamed over PATH) for node_exporter's textfile collector;
 * --interval N does so every N seconds until killed.
 */
#define _GNU_SOURCE
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "path.h"
#include "proto.h"

#define WAIT_S 5

/* One metric: name, type, help, value. */
struct metric { const char *name, *type, *help; double v; };

/* The command's state. */
struct metrics_ctx {
	int fd;                     /* the daemon, as an observer */
	unsigned char buf[SP_MAX_MSG];
	int per_process;
};

static void put(FILE *f, const struct metric *m)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", m->name, m->help, m->name, m->type,
		m->name, m->v);
}

/* node_exporter's ksmd collector: the same names, types and units. */
static void put_ksmd(FILE *f, const struct sp_stat_r *r)
{
	const struct sp_global_stats *g = &r->g;
	const struct metric ms[] = {
		{ "node_ksmd_full_scans_total", "counter", "ksmd 'full_scans' file.",
		  (double)g->full_scans },
		{ "node_ksmd_merge_across_nodes", "gauge", "ksmd 'merge_across_nodes' file.", 1 },
		{ "node_ksmd_pages_shared", "gauge", "ksmd 'pages_shared' file.",
		  (double)g->pages_shared },
		{ "node_ksmd_pages_sharing", "gauge", "ksmd 'pages_sharing' file.",
		  (double)g->pages_sharing },
		{ "node_ksmd_pages_to_scan", "gauge", "ksmd 'pages_to_scan' file.",
		  (double)r->knobs.v[KNOB_PAGES_TO_SCAN] },
		{ "node_ksmd_pages_unshared", "gauge", "ksmd 'pages_unshared' file.",
		  (double)g->pages_unshared },
		{ "node_ksmd_pages_volatile", "gauge", "ksmd 'pages_volatile' file.",
		  (double)g->pages_volatile },
		{ "node_ksmd_run", "gauge", "ksmd 'run' file.", (double)r->knobs.v[KNOB_RUN] },
		{ "node_ksmd_sleep_seconds", "gauge", "ksmd 'sleep_millisecs' file.",
		  r->knobs.v[KNOB_SLEEP_MILLISECS] / 1000.0 },
	};

	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
		put(f, &ms[i]);
}

static void put_samepage(FILE *f, const struct sp_stat_r *r)
{
	const struct sp_global_stats *g = &r->g;
	const struct metric ms[] = {
		{ "samepage_up", "gauge", "1: the daemon answered.", 1 },
		{ "samepage_saved_bytes", "gauge", "Memory saved: (pages_sharing + ksm_zero_pages) "
		  "x page size.", (double)(g->pages_sharing + g->ksm_zero_pages) * SP_PAGE },
		{ "samepage_general_profit_bytes", "gauge", "Saved memory minus bookkeeping, as "
		  "kernel KSM's general_profit.", (double)g->general_profit },
		{ "samepage_ksm_zero_pages", "gauge", "Zero pages merged (ksm_zero_pages).",
		  (double)g->ksm_zero_pages },
		{ "samepage_pages_scanned_total", "counter", "Pages scanned (pages_scanned).",
		  (double)g->pages_scanned },
		{ "samepage_stable_node_chains", "gauge", "Contents held by more than one pool "
		  "page.", (double)g->stable_node_chains },
		{ "samepage_stable_node_dups", "gauge", "Pool pages in such chains.",
		  (double)g->stable_node_dups },
		{ "samepage_pool_pages", "gauge", "Pool pages in use.", (double)g->pool_pages },
		{ "samepage_pool_bytes", "gauge", "Pool memory in use.",
		  (double)g->pool_pages * SP_PAGE },
		{ "samepage_pool_segments", "gauge", "Pool segments (memfds).",
		  (double)g->pool_segments },
		{ "samepage_pool_written_pages", "gauge", "Pool pages kept only for written "
		  "copies.", (double)g->pool_written },
		{ "samepage_merge_vmas", "gauge", "VMAs merged pages cost, all processes.",
		  (double)g->merge_vmas },
		{ "samepage_vma_limited_total", "counter", "Merges refused to stay inside "
		  "vm.max_map_count.", (double)g->vma_limited },
		{ "samepage_processes", "gauge", "Processes connected.", (double)g->processes },
		{ "samepage_processes_limited", "gauge", "Processes whose merging waits at the "
		  "VMA budget.", (double)g->processes_limited },
		{ "samepage_held_sets", "gauge", "Reference sets of closed connections still "
		  "mapped.", (double)g->held_sets },
		{ "samepage_pages_inplace_total", "counter", "Pages merged again into the pool "
		  "page they left.", (double)g->pages_inplace },
		{ "samepage_pages_moved_total", "counter", "Pages copied to consecutive pool "
		  "pages (defragmentation).", (double)g->pages_moved },
		{ "samepage_max_page_sharing", "gauge", "The max_page_sharing knob.",
		  (double)r->knobs.v[KNOB_MAX_PAGE_SHARING] },
		{ "samepage_use_zero_pages", "gauge", "The use_zero_pages knob.",
		  (double)r->knobs.v[KNOB_USE_ZERO_PAGES] },
	};

	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
		put(f, &ms[i]);
}

static int stat_of(struct metrics_ctx *x, int32_t pid, struct sp_stat_r *r)
{
	struct sp_statreq q = { .pid = pid };
	struct sp_msg m;
	int err = sp_call(x->fd, x->buf, C_STAT, &q, sizeof(q), D_STAT, &m);

	if (!err)
		memcpy(r, m.p, sizeof(*r));
	return err;
}

/* Does process pid map libsamepage (a candidate for --per-process)? */
static int uses_samepage(pid_t pid)
{
	char path[64], line[512];
	int yes = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	while (f && !yes && fgets(line, sizeof(line), f))
		yes = strstr(line, "libsamepage.so") != NULL;
	if (f)
		fclose(f);
	return yes;
}

static void comm_of(pid_t pid, char *out, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	f = fopen(path, "r");
	out[0] = 0;
	if (f && fgets(out, (int)len, f))
		out[strcspn(out, "\n")] = 0;
	if (f)
		fclose(f);
	/* A label value: no quotes or backslashes in it. */
	for (char *c = out; *c; c++)
		if (*c == '"' || *c == '\\')
			*c = '_';
}

/* One series per connected process (every process of ours that maps the
 * library and that the daemon knows). */
static void put_processes(struct metrics_ctx *x, FILE *f)
{
	static const char *const names[] = {
		"samepage_process_merging_pages", "samepage_process_rmap_items",
		"samepage_process_zero_pages", "samepage_process_profit_bytes",
		"samepage_process_merge_limited",
	};
	static const char *const help[] = {
		"Merged pages of the process (ksm_merging_pages).",
		"Pages the process's scanner tracks (ksm_rmap_items).",
		"Zero pages of the process merged (ksm_zero_pages).",
		"Bytes the process saves minus its bookkeeping (ksm_process_profit).",
		"1: the process waits at its VMA budget.",
	};
	char text[5][16384];
	size_t used[5] = { 0 };
	struct dirent *e;
	DIR *d = opendir("/proc");

	for (int k = 0; k < 5; k++)
		text[k][0] = 0;
	while (d && (e = readdir(d))) {
		pid_t pid = (pid_t)atoi(e->d_name);
		struct sp_stat_r r;
		char comm[32];
		if (pid <= 0 || !uses_samepage(pid) || stat_of(x, pid, &r) || !r.has_proc)
			continue;
		comm_of(pid, comm, sizeof(comm));
		/* ksm_process_profit as `samepage status --pid` computes it */
		const double v[5] = {
			(double)r.p.merging_pages, (double)r.p.rmap_items, (double)r.p.zero_pages,
			(double)(r.p.merging_pages + r.p.zero_pages) * SP_PAGE -
				(double)r.p.rmap_items * SP_ENTRY_BYTES,
			(double)r.p.limited,
		};
		for (int k = 0; k < 5; k++)
			if (used[k] + 200 < sizeof(text[k]))
				used[k] += (size_t)snprintf(text[k] + used[k], sizeof(text[k]) - used[k],
							    "%s{pid=\"%d\",comm=\"%s\"} %.17g\n",
							    names[k], (int)pid, comm, v[k]);
	}
	if (d)
		closedir(d);
	for (int k = 0; k < 5; k++)
		fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s", names[k], help[k], names[k], text[k]);
}

static int write_all(struct metrics_ctx *x, FILE *f)
{
	struct sp_stat_r r;
	int err = stat_of(x, 0, &r);

	if (err)
		return err;
	put_ksmd(f, &r);
	put_samepage(f, &r);
	if (x->per_process)
		put_processes(x, f);
	return ferror(f) ? -EIO : 0;
}

/* PATH.tmp written whole, then renamed: node_exporter never reads half. */
static int write_textfile(struct metrics_ctx *x, const char *path)
{
	char tmp[PATH_MAX];
	FILE *f;
	int err;

	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
	f = fopen(tmp, "w");
	if (!f)
		return -errno;
	err = write_all(x, f);
	if (fclose(f) && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

static int parse_uint(const char *s, unsigned *v)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(s, &end, 10);
	if (!*s || *end || errno || n == 0 || n > 86400 || *s == '-')
		return -EINVAL;
	*v = (unsigned)n;
	return 0;
}

static int metrics_usage(void)
{
	fprintf(stderr, "usage: samepage metrics [--per-process] [--textfile PATH [--interval "
		"SECONDS]]\n");
	return 2;
}

int cmd_metrics(int argc, char **argv)
{
	static struct metrics_ctx x;
	const char *textfile = NULL;
	char path[108];
	unsigned interval = 0;
	int err;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--per-process"))
			x.per_process = 1;
		else if (!strcmp(argv[i], "--textfile") && i + 1 < argc)
			textfile = argv[++i];
		else if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
			if (parse_uint(argv[++i], &interval)) {
				fprintf(stderr, "samepage: metrics: --interval wants 1 to 86400 "
					"seconds, not '%s'\n", argv[i]);
				return 2;
			}
		} else
			return metrics_usage();
	}
	if (interval && !textfile)
		return metrics_usage();
	err = sp_socket_path(path, sizeof(path));
	if (err) {
		fprintf(stderr, "samepage: metrics: socket path: %s\n", strerror(-err));
		return 1;
	}
	x.fd = sp_observe(path, WAIT_S, x.buf);
	if (x.fd < 0) {
		fprintf(stderr, "samepage: metrics: no daemon at %s: %s\n", path, strerror(-x.fd));
		return 1;
	}
	do {
		err = textfile ? write_textfile(&x, textfile) : write_all(&x, stdout);
		if (err) {
			fprintf(stderr, "samepage: metrics: %s\n", strerror(-err));
			close(x.fd);
			return 1;
		}
		if (interval)
			sleep(interval);
	} while (interval);
	close(x.fd);
	return 0;
}
