/* SPDX-License-Identifier: MIT */
/*
 * set — the kernel's knobs, as writing /sys/kernel/mm/ksm does: every
 * argument checked before anything changes, each change told, run=2
 * returning once everything is unmerged (with its progress on the way,
 * and who holds pages when it stalls); --save keeps them in the user's
 * samepage.conf for the next daemon.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"

static const char help_text[] =
	"usage: samepage set [--save] [--no-wait] [--timeout SECS] KNOB=VALUE...\n"
	"\n"
	"Change the kernel's knobs, each as writing /sys/kernel/mm/ksm/KNOB does; every\n"
	"argument is checked before anything changes, and each change is told.\n"
	"\n"
	"  run=0|1|2              0 stop merging, 1 merge, 2 unmerge everything and stop\n"
	"  pages_to_scan=N        pages scanned per sleep_millisecs, by all processes (1 to\n"
	"                         16777216)\n"
	"  sleep_millisecs=N      0 to 60000\n"
	"  use_zero_pages=0|1     merge zero pages into the kernel's zero page\n"
	"  max_page_sharing=N     most mappings of one merged page (2 to 1048576)\n"
	"  smart_scan=0|1         skip reading unique pages that stayed unchanged\n"
	"  advisor_mode=none|scan-time\n"
	"                         scan-time: pages_to_scan follows each full scan, so that\n"
	"                         one takes advisor_target_scan_time (it starts at\n"
	"                         advisor_min_pages_to_scan, and cannot be set meanwhile)\n"
	"  advisor_max_cpu=N      the scanners' CPU it allows, % of one CPU (default 70)\n"
	"  advisor_min_pages_to_scan=N  where it starts (1 to 16777216, default 500)\n"
	"  advisor_max_pages_to_scan=N  its highest (1 to 16777216, default 30000)\n"
	"  advisor_target_scan_time=N   seconds a full scan should take (default 200)\n"
	"\n"
	"  -s, --save             also write them to the user's samepage.conf\n"
	"                         ($XDG_CONFIG_HOME/samepage/samepage.conf), for the daemons\n"
	"                         to come\n"
	"  -n, --no-wait          run=2: return at once, not when everything is unmerged\n"
	"  -t, --timeout SECS     run=2: give up waiting after SECS (default: wait, showing\n"
	"                         progress)\n"
	"  -h, --help             this text\n";

struct set_opts {
	int save, no_wait, help;
	uint64_t timeout_ms; /* 0: none */
	struct sp_set req[KNOB_COUNT];
	int n;
	int unmerge;         /* run=2 asked */
};

/* ---- run=2: waiting until everything is unmerged ---- */

#define STALL_S 10.0 /* no progress this long: say who holds pages */

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Who still holds merged pages, and whether it can do anything about it. */
static void name_holders(struct cli *c)
{
	struct procs p = { 0 };
	int named = 0, err = procs_fetch(c, &p);

	if (err) {
		fprintf(stderr, "samepage set:   (the daemon did not list its processes: %s)\n",
			strerror(-err));
		procs_free(&p);
		return;
	}
	for (size_t i = 0; i < p.n; i++) {
		const struct proc *x = &p.v[i];
		/* The daemon's count, not the process's last report: one stopped
		 * between merging and its next budget request reported none. */
		uint64_t held = x->e.refs - x->e.cowed + x->e.st.zero_pages;
		if (!held)
			continue;
		fprintf(stderr, "samepage set:   pid %d (%s): %llu pages%s\n", (int)x->e.pid,
			x->comm, (unsigned long long)held, x->state == 'T' || x->state == 't' ?
			", stopped: it unmerges once continued (kill -CONT)" :
			x->e.silent_ms > 5000 ? ", not scanning" : "");
		named++;
	}
	if (!named)
		fprintf(stderr, "samepage set:   no connected process holds them: pages of "
				"processes that left, kept while their children map them\n");
	procs_free(&p);
}

struct progress {
	int tty;
	double start, last_out, last_change;
	uint64_t left;
	int stalled;    /* holders named for this stall */
};

static void show_progress(struct cli *c, struct progress *pr, uint64_t left, double now)
{
	if (left < pr->left) {
		pr->last_change = now;
		pr->stalled = 0;
	}
	pr->left = left;
	if (pr->tty && now - pr->last_out >= 0.2) {
		fprintf(stderr, "\rsamepage set: unmerging: %llu pages left (%.0f s)\033[K",
			(unsigned long long)left, now - pr->start);
		pr->last_out = now;
	} else if (!pr->tty && now - pr->last_out >= 5) {
		fprintf(stderr, "samepage set: unmerging: %llu pages left (%.0f s)\n",
			(unsigned long long)left, now - pr->start);
		pr->last_out = now;
	}
	if (!pr->stalled && now - pr->last_change >= STALL_S) {
		fprintf(stderr, "%sfor %.0f s no page was unmerged; still merged:\n",
			pr->tty ? "\rsamepage set: \033[K" : "samepage set: ", STALL_S);
		name_holders(c);
		pr->stalled = 1;
		pr->last_out = 0;
	}
}

static int wait_unmerged(struct cli *c, uint64_t timeout_ms)
{
	struct progress pr = { .tty = isatty(STDERR_FILENO), .left = UINT64_MAX };
	struct timespec tick = { 0, 100 * 1000 * 1000 };
	struct sp_stat_r r;

	pr.start = pr.last_change = mono_s();
	pr.last_out = pr.tty ? 0 : pr.start; /* a log hears of it after 5 s */
	for (;;) {
		double now = mono_s();
		int err = cli_stat(c, 0, &r);
		if (err)
			return err;
		uint64_t left = r.g.pages_shared + r.g.pages_sharing + r.g.ksm_zero_pages;
		if (!r.g.pages_shared && !r.g.ksm_zero_pages)
			break;
		if (timeout_ms && now - pr.start >= (double)timeout_ms / 1000) {
			fprintf(stderr, "%s%llu pages still merged after %.3g s; run stays 2, and "
					"they unmerge as their processes get to it\n",
				pr.tty ? "\rsamepage set: \033[K" : "samepage set: ",
				(unsigned long long)left, (double)timeout_ms / 1000);
			fprintf(stderr, "samepage set: still merged:\n");
			name_holders(c);
			c->told = 1;
			return -ETIMEDOUT;
		}
		show_progress(c, &pr, left, now);
		nanosleep(&tick, NULL);
	}
	if (pr.tty && pr.last_out > 0)
		fprintf(stderr, "\r\033[K");
	printf("everything is unmerged; merging stays stopped until run=1\n");
	return 0;
}

/* ---- the subcommand ---- */

static int set_options(struct cli *c, int argc, char **argv, struct set_opts *o)
{
	static const struct option longs[] = {
		{ "save", no_argument, NULL, 's' },
		{ "no-wait", no_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, err = 0;

	while (!err && (opt = cli_getopt(c, argc, argv, ":snt:h", longs)) != -1) {
		switch (opt) {
		case 's': o->save = 1; break;
		case 'n': o->no_wait = 1; break;
		case 't':
			err = cli_parse_secs(c, "--timeout", optarg, 1, 86400000, &o->timeout_ms);
			break;
		case 'h': o->help = 1; return 0;
		default: return -EINVAL;
		}
	}
	if (err)
		return err;
	if (optind >= argc)
		return cli_usage_error(c, "which knobs? (samepage set KNOB=VALUE...)");
	/* Every argument checked before anything changes; a knob named twice
	 * takes its last value. */
	for (int i = optind; i < argc; i++) {
		int k, j;
		uint64_t v;
		err = knob_arg(c, argv[i], &k, &v);
		if (err)
			return err;
		for (j = 0; j < o->n && o->req[j].knob != (uint32_t)k; j++)
			;
		o->req[j] = (struct sp_set){ .knob = (uint32_t)k, .value = v };
		o->n += j == o->n;
	}
	for (int j = 0; j < o->n; j++)
		o->unmerge |= o->req[j].knob == KNOB_RUN && o->req[j].value == 2;
	return 0;
}

static int save(const struct set_opts *o)
{
	struct sp_conf upd;
	char path[PATH_MAX];
	int err = sp_conf_user_path(path, sizeof(path));

	if (err) {
		fprintf(stderr, "samepage set: --save: no home directory to keep samepage.conf in "
				"(set HOME or XDG_CONFIG_HOME)\n");
		return err;
	}
	sp_conf_init(&upd);
	for (int i = 0; i < o->n; i++) {
		upd.knob[o->req[i].knob] = (uint32_t)o->req[i].value;
		upd.has_knob |= 1u << o->req[i].knob;
	}
	err = sp_conf_save(path, &upd, stderr, "samepage set: --save");
	if (err)
		return err;
	printf("saved in %s\n", path);
	/* Lines of the file's own that a daemon refuses make it refuse the
	 * whole file, what we just saved included: say so now. */
	sp_conf_init(&upd);
	if (sp_conf_read(path, &upd, stderr, "samepage set: warning") == -EINVAL)
		fprintf(stderr, "samepage set: warning: a daemon applies none of %s until those "
				"lines are fixed\n", path);
	return 0;
}

static const struct sp_set *asked(const struct set_opts *o, int knob)
{
	for (int i = 0; i < o->n; i++)
		if (o->req[i].knob == (uint32_t)knob)
			return &o->req[i];
	return NULL;
}

/* The kernel refuses pages_to_scan while its advisor is on (and so does
 * the daemon): said before anything changes, with what to do instead. */
static int advisor_allows(struct cli *c, const struct set_opts *o, const struct sp_stat_r *now)
{
	const struct sp_set *mode = asked(o, KNOB_ADVISOR_MODE);
	uint32_t after = mode ? (uint32_t)mode->value : now->knobs.v[KNOB_ADVISOR_MODE];

	if (!asked(o, KNOB_PAGES_TO_SCAN) || after == ADVISOR_NONE)
		return 0;
	fprintf(stderr, "samepage set: pages_to_scan is the scan-time advisor's while "
			"advisor_mode=scan-time; set advisor_mode=none with it, or bound the "
			"advisor (advisor_min_pages_to_scan, advisor_max_pages_to_scan, "
			"advisor_max_cpu)\n");
	c->told = 1;
	return -EINVAL;
}

/* Each knob, told as it changes, as given but rank by rank (sp_knob_rank:
 * the advisor's bounds, then advisor_mode, then the others, pages_to_scan
 * among them); switching the advisor moves pages_to_scan, and that is told
 * too. */
static int apply(struct cli *c, const struct set_opts *o)
{
	struct sp_stat_r before, after;
	struct sp_msg m;
	int err = cli_connect(c, 1);

	if (!err)
		err = cli_stat(c, 0, &before);
	if (!err)
		err = advisor_allows(c, o, &before);
	for (int rank = 0; rank < SP_KNOB_RANKS; rank++)
		for (int i = 0; i < o->n && !err; i++) {
			const struct sp_set *s = &o->req[i];
			if (sp_knob_rank((int)s->knob) != rank)
				continue;
			err = cli_call(c, C_SET, s, sizeof(*s), D_ACK, &m);
			if (!err)
				knob_print_change((int)s->knob, before.knobs.v[s->knob],
						  (uint32_t)s->value);
		}
	if (!err && asked(o, KNOB_ADVISOR_MODE) && !asked(o, KNOB_PAGES_TO_SCAN) &&
	    cli_stat(c, 0, &after) == 0 &&
	    after.knobs.v[KNOB_ADVISOR_MODE] != before.knobs.v[KNOB_ADVISOR_MODE])
		knob_print_change(KNOB_PAGES_TO_SCAN, before.knobs.v[KNOB_PAGES_TO_SCAN],
				  after.knobs.v[KNOB_PAGES_TO_SCAN]);
	fflush(stdout);
	return err;
}

int cmd_set(struct cli *c, int argc, char **argv)
{
	struct set_opts o = { 0 };
	int err = set_options(c, argc, argv, &o);

	if (err)
		return EXIT_USAGE;
	if (o.help)
		return cli_help(help_text);
	err = apply(c, &o);
	if (err)
		return cli_fail(c, "set", err);
	if (o.save && save(&o))
		return 1;
	/* run=2 returns once everything is unmerged, as writing it to sysfs does. */
	if (o.unmerge && !o.no_wait) {
		err = wait_unmerged(c, o.timeout_ms);
		if (err)
			return cli_fail(c, "set", err);
	}
	return 0;
}
