/* SPDX-License-Identifier: MIT */
/*
 * status — the kernel's KSM counters under the kernel's names, once, or
 * every N seconds (--watch) for plain terminals and logs: a compact line
 * per sample (as vmstat), the whole block (--long), or one JSON object per
 * line (--json).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char help_text[] =
	"usage: samepage status [--pid PID] [--json] [--watch SECS [--count N] [--long]]\n"
	"\n"
	"The knobs and counters of /sys/kernel/mm/ksm, under the kernel's names, and\n"
	"samepage's own (pool, VMAs, processes); with --pid, /proc/PID/ksm_stat's.\n"
	"\n"
	"  -p, --pid PID     one process's counters\n"
	"      --json        one JSON object, on one line\n"
	"  -w, --watch SECS  print again every SECS seconds (0.1 to 86400), one line each\n"
	"                    (time, then the main counters; saved is general_profit, or\n"
	"                    ksm_process_profit with --pid), until interrupted\n"
	"  -c, --count N     with --watch: stop after N samples\n"
	"  -l, --long        with --watch: the whole block each time, not one line\n"
	"  -h, --help        this text\n";

struct status_opts {
	pid_t pid;
	int json, lng, help;
	uint64_t watch_ms; /* 0: once */
	uint64_t count;    /* 0: for ever */
};

/* ---- the block and the JSON object ---- */

struct field { const char *name; int64_t v; };

static void print_fields(const struct field *f, size_t n, int json, int *first)
{
	for (size_t i = 0; i < n; i++) {
		if (json)
			printf("%s\"%s\": %lld", *first ? "" : ", ", f[i].name, (long long)f[i].v);
		else
			printf("%-25s %lld\n", f[i].name, (long long)f[i].v);
		*first = 0;
	}
}

/* The knobs, as `samepage set` takes them: advisor_mode by name (a JSON
 * string), the others as numbers. */
static void print_knobs(const struct sp_knobs *k, int json, int *first)
{
	char text[32];

	for (int i = 0; i < KNOB_COUNT; i++) {
		struct field f = { sp_knob_name(i), k->v[i] };
		if (i != KNOB_ADVISOR_MODE) {
			print_fields(&f, 1, json, first);
			continue;
		}
		sp_knob_format(i, k->v[i], text, sizeof(text));
		if (json)
			printf("%s\"%s\": \"%s\"", *first ? "" : ", ", f.name, text);
		else
			printf("%-25s %s\n", f.name, text);
		*first = 0;
	}
}

static int64_t process_profit(const struct sp_stat_r *r)
{
	return (int64_t)(r->p.merging_pages + r->p.zero_pages) * SP_PAGE -
	       (int64_t)r->p.rmap_items * SP_ENTRY_BYTES;
}

static void print_global(const struct sp_stat_r *r, int json, int *first)
{
	const struct sp_global_stats *g = &r->g;
	struct field glob[] = {
		{ "pages_shared", (int64_t)g->pages_shared },
		{ "pages_sharing", (int64_t)g->pages_sharing },
		{ "pages_unshared", (int64_t)g->pages_unshared },
		{ "pages_volatile", (int64_t)g->pages_volatile },
		{ "pages_scanned", (int64_t)g->pages_scanned },
		{ "pages_skipped", (int64_t)g->pages_skipped },
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

	print_knobs(&r->knobs, json, first);
	print_fields(glob, sizeof(glob) / sizeof(glob[0]), json, first);
}

static void print_proc(const struct sp_stat_r *r, int json, int *first)
{
	struct field proc[] = {
		{ "pid", r->pid },
		{ "ksm_rmap_items", (int64_t)r->p.rmap_items },
		{ "ksm_zero_pages", (int64_t)r->p.zero_pages },
		{ "ksm_merging_pages", (int64_t)r->p.merging_pages },
		{ "ksm_process_profit", process_profit(r) },
		{ "ksm_merge_any", r->p.merge_any },
		{ "ksm_mergeable", r->p.mergeable },
		{ "merge_limited", r->p.limited },
		{ "pages_pinned", r->p.pages_pinned },
	};

	print_fields(proc, sizeof(proc) / sizeof(proc[0]), json, first);
}

/* The block, or one JSON object on one line; under --watch led by the
 * time (JSON: "time", Unix seconds). */
static void print_status(const struct sp_stat_r *r, int json, int timed)
{
	int first = 1;

	if (json)
		printf("{");
	if (timed && json) {
		struct timeval tv;
		gettimeofday(&tv, NULL);
		printf("\"time\": %lld.%03ld", (long long)tv.tv_sec, (long)(tv.tv_usec / 1000));
		first = 0;
	} else if (timed) {
		char clock[16];
		fmt_clock(clock, sizeof(clock));
		printf("%-25s %s\n", "time", clock);
	}
	if (r->has_proc)
		print_proc(r, json, &first);
	else
		print_global(r, json, &first);
	if (json)
		printf("}\n");
}

/* ---- --watch: one line per sample ---- */

struct watch {
	struct status_opts o;
	struct sp_stat_r prev;
	double prev_t;     /* when prev was taken, s; 0: none yet */
	unsigned lines;    /* lines since the header */
	int down;          /* the daemon did not answer last time (told once) */
};

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void line_header(const struct watch *w)
{
	if (w->o.pid)
		printf("%-8s %8s %10s %10s %8s %9s %6s %7s\n", "time", "pid", "rmap_items",
		       "merging", "zero", "saved", "vmas", "limited");
	else
		printf("%-8s %10s %10s %9s %9s %9s %9s %9s %10s %6s %5s %7s\n", "time", "shared",
		       "sharing", "unshared", "volatile", "zero", "saved", "pool", "scanned/s",
		       "scans", "procs", "limited");
}

static void print_line(struct watch *w, const struct sp_stat_r *r, double now)
{
	const struct sp_global_stats *g = &r->g;
	char clock[16], saved[16], pool[16], rate[24] = "-";

	fmt_clock(clock, sizeof(clock));
	if (r->has_proc) {
		fmt_bytes(saved, sizeof(saved), (double)process_profit(r));
		printf("%-8s %8d %10llu %10llu %8llu %9s %6llu %7u\n", clock, r->pid,
		       (unsigned long long)r->p.rmap_items, (unsigned long long)r->p.merging_pages,
		       (unsigned long long)r->p.zero_pages, saved,
		       (unsigned long long)r->p.merge_vmas, r->p.limited);
		return;
	}
	fmt_bytes(saved, sizeof(saved), (double)g->general_profit);
	fmt_bytes(pool, sizeof(pool), (double)g->pool_pages * SP_PAGE);
	if (w->prev_t > 0 && now > w->prev_t && g->pages_scanned >= w->prev.g.pages_scanned)
		snprintf(rate, sizeof(rate), "%.0f",
			 (double)(g->pages_scanned - w->prev.g.pages_scanned) / (now - w->prev_t));
	printf("%-8s %10llu %10llu %9llu %9llu %9llu %9s %9s %10s %6llu %5llu %7llu\n", clock,
	       (unsigned long long)g->pages_shared, (unsigned long long)g->pages_sharing,
	       (unsigned long long)g->pages_unshared, (unsigned long long)g->pages_volatile,
	       (unsigned long long)g->ksm_zero_pages, saved, pool, rate,
	       (unsigned long long)g->full_scans, (unsigned long long)g->processes,
	       (unsigned long long)g->processes_limited);
}

/* A header again every screenful on a terminal, as vmstat; once in a log. */
static void sample_out(struct watch *w, const struct sp_stat_r *r, double now)
{
	if (w->o.json || w->o.lng) {
		if (w->o.lng && w->lines++)
			printf("\n");
		print_status(r, w->o.json, 1);
	} else {
		if (w->lines == 0 || (isatty(STDOUT_FILENO) && w->lines % 20 == 0))
			line_header(w);
		w->lines++;
		print_line(w, r, now);
	}
	fflush(stdout);
	w->prev = *r;
	w->prev_t = now;
}

/* One sample. 0 printed; 1 stop now (the process left); < 0 the daemon
 * is not there (told once, tried again next time). */
static int sample(struct cli *c, struct watch *w)
{
	struct sp_stat_r r;
	int err = cli_connect(c, 0);

	if (!err)
		err = cli_stat(c, w->o.pid, &r);
	if (err == -ESRCH) {
		fprintf(stderr, "samepage status: process %d is no longer connected to the "
				"daemon\n", (int)w->o.pid);
		return 1;
	}
	if (err) {
		if (!w->down)
			cli_fail(c, "status", err);
		if (!w->down)
			fprintf(stderr, "samepage status: trying again every %.3g s\n",
				(double)w->o.watch_ms / 1000);
		w->down = 1;
		return err;
	}
	if (w->down)
		fprintf(stderr, "samepage status: the daemon answers again\n");
	w->down = 0;
	sample_out(w, &r, mono_s());
	return 0;
}

static void sleep_until(struct timespec *next, uint64_t ms)
{
	struct timespec now;

	next->tv_sec += (time_t)(ms / 1000);
	next->tv_nsec += (long)(ms % 1000) * 1000000;
	if (next->tv_nsec >= 1000000000) {
		next->tv_sec++;
		next->tv_nsec -= 1000000000;
	}
	/* Behind (a slow daemon, a stopped terminal): from now on, no burst. */
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec > next->tv_sec ||
	    (now.tv_sec == next->tv_sec && now.tv_nsec > next->tv_nsec))
		*next = now;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL) == EINTR)
		;
}

static int watch(struct cli *c, const struct status_opts *o)
{
	struct watch w = { .o = *o };
	struct timespec next;
	int err = sample(c, &w);

	/* The first sample fails as `samepage status` does: nothing to watch. */
	if (err)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (uint64_t n = 1; !o->count || n < o->count; n++) {
		sleep_until(&next, o->watch_ms);
		if (sample(c, &w) > 0)
			return 0;
	}
	return 0;
}

/* ---- the subcommand ---- */

static int status_options(struct cli *c, int argc, char **argv, struct status_opts *o)
{
	static const struct option longs[] = {
		{ "pid", required_argument, NULL, 'p' },
		{ "json", no_argument, NULL, 'J' },
		{ "watch", required_argument, NULL, 'w' },
		{ "count", required_argument, NULL, 'c' },
		{ "long", no_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, err = 0;

	while (!err && (opt = cli_getopt(c, argc, argv, ":p:w:c:lh", longs)) != -1) {
		switch (opt) {
		case 'p': err = cli_parse_pid(c, "--pid", optarg, &o->pid); break;
		case 'J': o->json = 1; break;
		case 'w':
			err = cli_parse_secs(c, "--watch", optarg, 100, 86400000, &o->watch_ms);
			break;
		case 'c':
			err = cli_parse_count(c, "--count", optarg, 1, UINT32_MAX, &o->count);
			break;
		case 'l': o->lng = 1; break;
		case 'h': o->help = 1; return 0;
		default: return -EINVAL;
		}
	}
	if (err)
		return err;
	if (optind < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
	if (!o->watch_ms && (o->count || o->lng))
		return cli_usage_error(c, "--count and --long go with --watch");
	return 0;
}

int cmd_status(struct cli *c, int argc, char **argv)
{
	struct status_opts o = { 0 };
	struct sp_stat_r r;
	int err = status_options(c, argc, argv, &o);

	if (err)
		return EXIT_USAGE;
	if (o.help)
		return cli_help(help_text);
	if (o.watch_ms)
		return watch(c, &o);
	err = cli_connect(c, 0);
	if (!err)
		err = cli_stat(c, o.pid, &r);
	if (err == -ESRCH) {
		fprintf(stderr, "samepage status: no process %d is connected to the daemon\n",
			(int)o.pid);
		return 1;
	}
	if (err)
		return cli_fail(c, "status", err);
	print_status(&r, o.json, 0);
	return 0;
}
