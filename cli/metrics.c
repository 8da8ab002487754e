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
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One metric: name, type, help, value. */
struct metric { const char *name, *type, *help; double v; };

static const char help_text[] =
	"usage: samepage metrics [--per-process] [--textfile PATH [--interval SECS]]\n"
	"\n"
	"The counters for Prometheus, in its text format: node_exporter's ksmd\n"
	"collector's names (node_ksmd_*) for what kernel KSM also counts,\n"
	"samepage_* for the rest.\n"
	"\n"
	"  -p, --per-process    one series per process (samepage_process_*{pid,comm})\n"
	"  -t, --textfile PATH  write them to PATH atomically (node_exporter's textfile\n"
	"                       collector), not to stdout\n"
	"  -i, --interval SECS  with --textfile: again every SECS seconds until killed\n"
	"  -h, --help           this text\n";

struct metrics_opts {
	int per_process, help;
	const char *textfile;
	uint64_t interval_ms;
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
		{ "samepage_pages_skipped_total", "counter", "Pages smart_scan did not read "
		  "(pages_skipped).", (double)g->pages_skipped },
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
		{ "samepage_smart_scan", "gauge", "The smart_scan knob.",
		  (double)r->knobs.v[KNOB_SMART_SCAN] },
		{ "samepage_advisor_scan_time", "gauge", "1: advisor_mode is scan-time (the "
		  "advisor sets pages_to_scan).", (double)r->knobs.v[KNOB_ADVISOR_MODE] },
		{ "samepage_advisor_max_cpu_percent", "gauge", "The advisor_max_cpu knob: all "
		  "scanners' CPU, percent of one CPU.", (double)r->knobs.v[KNOB_ADVISOR_MAX_CPU] },
		{ "samepage_advisor_min_pages_to_scan", "gauge", "The advisor_min_pages_to_scan "
		  "knob.", (double)r->knobs.v[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] },
		{ "samepage_advisor_max_pages_to_scan", "gauge", "The advisor_max_pages_to_scan "
		  "knob.", (double)r->knobs.v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] },
		{ "samepage_advisor_target_scan_time_seconds", "gauge", "The "
		  "advisor_target_scan_time knob.",
		  (double)r->knobs.v[KNOB_ADVISOR_TARGET_SCAN_TIME] },
	};

	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
		put(f, &ms[i]);
}

/* One series per process the daemon serves. */
static void put_processes(struct cli *c, FILE *f)
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
	struct procs ps = { 0 };

	if (procs_fetch(c, &ps))
		return;
	for (int k = 0; k < 5; k++) {
		fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", names[k], help[k], names[k]);
		for (size_t i = 0; i < ps.n; i++) {
			const struct sp_proc_stats *st = &ps.v[i].e.st;
			/* ksm_process_profit as `samepage status --pid` computes it */
			const double v[5] = {
				(double)st->merging_pages, (double)st->rmap_items, (double)st->zero_pages,
				(double)(st->merging_pages + st->zero_pages) * SP_PAGE -
					(double)st->rmap_items * SP_ENTRY_BYTES,
				(double)st->limited,
			};
			char comm[sizeof(ps.v[i].comm)];
			/* A label value: no quotes or backslashes in it. */
			snprintf(comm, sizeof(comm), "%s", ps.v[i].comm);
			for (char *ch = comm; *ch; ch++)
				if (*ch == '"' || *ch == '\\')
					*ch = '_';
			fprintf(f, "%s{pid=\"%d\",comm=\"%s\"} %.17g\n", names[k],
				(int)ps.v[i].e.pid, comm, v[k]);
		}
	}
	procs_free(&ps);
}

static int write_all(struct cli *c, const struct metrics_opts *o, FILE *f)
{
	struct sp_stat_r r;
	int err = cli_stat(c, 0, &r);

	if (err)
		return err;
	put_ksmd(f, &r);
	put_samepage(f, &r);
	if (o->per_process)
		put_processes(c, f);
	return ferror(f) ? -EIO : 0;
}

/* PATH.PID.tmp written whole, then renamed: node_exporter never reads half. */
static int write_textfile(struct cli *c, const struct metrics_opts *o)
{
	char tmp[PATH_MAX];
	FILE *f;
	int err;

	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", o->textfile, (int)getpid());
	f = fopen(tmp, "w");
	if (!f)
		return -errno;
	err = write_all(c, o, f);
	if (fclose(f) && !err)
		err = -errno;
	if (!err && rename(tmp, o->textfile) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

static int metrics_options(struct cli *c, int argc, char **argv, struct metrics_opts *o)
{
	static const struct option longs[] = {
		{ "per-process", no_argument, NULL, 'p' },
		{ "textfile", required_argument, NULL, 't' },
		{ "interval", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = cli_getopt(c, argc, argv, "pt:i:h", longs)) != -1) {
		if (ch == 'p')
			o->per_process = 1;
		else if (ch == 't')
			o->textfile = optarg;
		else if (ch == 'i' && cli_parse_secs(c, "--interval", optarg, 1000, 86400000,
						     &o->interval_ms))
			return -EINVAL;
		else if (ch == 'h')
			o->help = 1;
		else if (ch != 'i')
			return -EINVAL;
	}
	if (optind < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
	if (o->interval_ms && !o->textfile)
		return cli_usage_error(c, "--interval needs --textfile");
	return 0;
}

int cmd_metrics(struct cli *c, int argc, char **argv)
{
	struct metrics_opts o = { 0 };
	int err = metrics_options(c, argc, argv, &o);

	if (err)
		return EXIT_USAGE;
	if (o.help)
		return cli_help(help_text);
	err = cli_connect(c, 0);
	if (err)
		return cli_fail(c, "metrics", err);
	do {
		err = o.textfile ? write_textfile(c, &o) : write_all(c, &o, stdout);
		if (err)
			return cli_fail(c, "metrics", err);
		if (o.interval_ms)
			usleep((useconds_t)(o.interval_ms * 1000));
	} while (o.interval_ms);
	cli_disconnect(c);
	return 0;
}
