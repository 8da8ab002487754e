/* SPDX-License-Identifier: MIT */
/*
 * top — the live view: a sample every --delay seconds (the daemon's
 * counters, its processes, /proc's CPU times), rates from the difference
 * of two samples, rows sorted, and a frame drawn (frame.c) on the
 * terminal (term.c) or, in batch mode or when stdout is no terminal, as
 * plain text, as `top -b` does.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char help_text[] =
	"usage: samepage top [--batch] [--iterations N] [--delay SECS] [--sort KEY] [--reverse]\n"
	"\n"
	"A live view of merging, refreshed every second: the totals (saved, pool,\n"
	"pages shared, sharing, zero, volatile; the CPU of the scanners and of the\n"
	"daemon; the scan rate), the saving over the last minutes, and a row per\n"
	"process.\n"
	"\n"
	"  -b, --batch         frames as plain text, one after another, for logs and\n"
	"                      pipes (so too when stdout is not a terminal)\n"
	"  -n, --iterations N  stop after N frames\n"
	"  -d, --delay SECS    between frames (default 1; 0.1 to 3600)\n"
	"  -s, --sort KEY      pid, command, merging, zero, saved (the default), volatile,\n"
	"                      vmas, cpu or state\n"
	"  -r, --reverse       the other order\n"
	"  -h, --help          this text\n"
	"\n"
	"Keys: q quit, < and > the sort column, r reverse, space refresh now.\n"
	"\n"
	"Columns: MERGING ksm_merging_pages, ZERO ksm_zero_pages, SAVED\n"
	"ksm_process_profit, VOLATILE pages changing too fast to merge, VMAS the VMAs\n"
	"its merged pages added, CPU% its scanner thread's. STATE: merging; idle\n"
	"(nothing mergeable); paused (run=0); unmerging; vma-limited (no VMA to spare:\n"
	"vm.max_map_count); stopped (SIGSTOP); silent (no scan for 5 s); starting.\n";

#define WARMUP_MS 500  /* before the first frame: rates need two samples */
#define HISTORY_S 600  /* the sparkline's reach */

struct top_opts {
	int batch, reverse, help;
	uint64_t iterations; /* 0: for ever */
	uint64_t delay_ms;
	enum top_key sort;
};

struct sample {
	int ok;
	double t;              /* monotonic seconds */
	struct sp_stat_r stat;
	struct procs procs;
	int64_t daemon_ticks;  /* its CPU time, clock ticks; -1 not known */
};

/* The view's one context. */
struct top {
	struct cli *c;
	struct top_opts o;
	struct sample s[2];
	int cur;                /* s[cur] is the newest, s[!cur] the one before */
	double *hist;           /* saved bytes per sample, a ring */
	size_t hist_cap, hist_n, hist_head;
	struct top_row *rows;
	size_t rows_cap;
	char error[200];
	long hz;
	int utf8;
	struct term term;
};

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- options ---- */

static int parse_sort(struct cli *c, const char *s, enum top_key *k)
{
	for (int i = 0; i < TOP_NKEYS; i++)
		if (!strcmp(s, frame_key_name((enum top_key)i))) {
			*k = (enum top_key)i;
			return 0;
		}
	return cli_usage_error(c, "--sort: no column '%s' (pid, command, merging, zero, saved, "
			       "volatile, vmas, cpu, state)", s);
}

static int top_options(struct cli *c, int argc, char **argv, struct top_opts *o)
{
	static const struct option longs[] = {
		{ "batch", no_argument, NULL, 'b' },
		{ "iterations", required_argument, NULL, 'n' },
		{ "delay", required_argument, NULL, 'd' },
		{ "sort", required_argument, NULL, 's' },
		{ "reverse", no_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, err = 0;

	*o = (struct top_opts){ .delay_ms = 1000, .sort = TOP_SAVED };
	while (!err && (opt = cli_getopt(c, argc, argv, ":bn:d:s:rh", longs)) != -1) {
		switch (opt) {
		case 'b': o->batch = 1; break;
		case 'n':
			err = cli_parse_count(c, "--iterations", optarg, 1, UINT32_MAX,
					      &o->iterations);
			break;
		case 'd':
			err = cli_parse_secs(c, "--delay", optarg, 100, 3600000, &o->delay_ms);
			break;
		case 's': err = parse_sort(c, optarg, &o->sort); break;
		case 'r': o->reverse = 1; break;
		case 'h': o->help = 1; return 0;
		default: return -EINVAL;
		}
	}
	if (!err && optind < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
	return err;
}

/* ---- samples ---- */

static void describe(struct top *t, int err)
{
	if (err == -ENOENT || err == -ECONNREFUSED)
		snprintf(t->error, sizeof(t->error), "no daemon listens on %s", t->c->sock);
	else if (err == -EAGAIN || err == -ETIMEDOUT)
		snprintf(t->error, sizeof(t->error), "no answer within %d s", CLI_WAIT_S);
	else
		snprintf(t->error, sizeof(t->error), "%s", strerror(-err));
}

static int take_sample(struct top *t, struct sample *s)
{
	int err = cli_connect(t->c, 0);

	if (!err)
		err = cli_stat(t->c, 0, &s->stat);
	if (!err)
		err = procs_fetch(t->c, &s->procs);
	s->t = mono_s();
	s->ok = !err;
	s->daemon_ticks = !err && t->c->daemon_pid > 0 ? proc_cpu_ticks(t->c->daemon_pid) : -1;
	if (err)
		describe(t, err);
	else
		t->error[0] = 0;
	return err;
}

static void remember(struct top *t, double saved)
{
	t->hist[(t->hist_head + t->hist_n) % t->hist_cap] = saved;
	if (t->hist_n < t->hist_cap)
		t->hist_n++;
	else
		t->hist_head = (t->hist_head + 1) % t->hist_cap;
}

/* ---- rows ---- */

static const char *state_of(const struct proc *p, uint32_t run)
{
	const struct sp_proc_stats *st = &p->e.st;

	if (p->state == 'T' || p->state == 't')
		return "stopped";
	if (p->e.flags & PROC_PARKED)
		return "starting";
	if ((p->e.flags & PROC_UNMERGING) || (run == 2 && st->merging_pages + st->zero_pages))
		return "unmerging";
	if (!st->mergeable && !st->merge_any)
		return "idle";
	if (run == 0)
		return "paused";
	if (st->limited)
		return "vma-limited";
	/* A scanner with nothing to do asks for budget every 2 s at most. */
	if (p->e.silent_ms != UINT32_MAX && p->e.silent_ms > 5000)
		return "silent";
	return "merging";
}

static double cpu_pct(uint64_t ticks, long hz, double secs)
{
	return (double)ticks / (double)hz / secs * 100;
}

/* The same process in the sample before (both are in (pid, id) order). */
static const struct proc *before(const struct procs *prev, size_t *j, const struct proc *p)
{
	while (*j < prev->n && (prev->v[*j].e.pid < p->e.pid ||
				(prev->v[*j].e.pid == p->e.pid && prev->v[*j].e.id < p->e.id)))
		(*j)++;
	if (*j < prev->n && prev->v[*j].e.pid == p->e.pid && prev->v[*j].e.id == p->e.id)
		return &prev->v[*j];
	return NULL;
}

static int64_t row_num(const struct top_row *r, enum top_key k)
{
	const struct sp_proc_stats *st = &r->p->e.st;

	switch (k) {
	case TOP_PID: return r->p->e.pid;
	case TOP_MERGING: return (int64_t)st->merging_pages;
	case TOP_ZERO: return (int64_t)st->zero_pages;
	case TOP_SAVED: return r->saved;
	case TOP_VOLATILE: return (int64_t)st->volatile_pages;
	case TOP_VMAS: return (int64_t)st->merge_vmas;
	case TOP_CPU: return (int64_t)(r->cpu * 1000);
	default: return 0;
	}
}

/* Numbers biggest first, as top; pid, command and state in their order. */
static int row_cmp(const void *a, const void *b, void *arg)
{
	const struct top_opts *o = arg;
	const struct top_row *x = a, *y = b;
	int64_t u = row_num(x, o->sort), v = row_num(y, o->sort);
	int d;

	if (o->sort == TOP_COMMAND)
		d = strcmp(x->p->comm, y->p->comm);
	else if (o->sort == TOP_STATE)
		d = strcmp(x->state, y->state);
	else if (o->sort == TOP_PID)
		d = (u > v) - (u < v);
	else
		d = (v > u) - (v < u);
	if (!d)
		d = (x->p->e.pid > y->p->e.pid) - (x->p->e.pid < y->p->e.pid);
	return o->reverse ? -d : d;
}

/* Rows of the newest sample; the scanners' CPU in all into *cpu_all. */
static int build_rows(struct top *t, double *cpu_all)
{
	const struct sample *s = &t->s[t->cur], *p = &t->s[!t->cur];
	double dt = p->ok ? s->t - p->t : 0;
	size_t j = 0;

	*cpu_all = dt > 0 ? 0 : -1;
	if (s->procs.n > t->rows_cap) {
		struct top_row *r = realloc(t->rows, s->procs.n * sizeof(*r));
		if (!r)
			return -ENOMEM;
		t->rows = r;
		t->rows_cap = s->procs.n;
	}
	for (size_t i = 0; i < s->procs.n; i++) {
		const struct proc *x = &s->procs.v[i];
		const struct proc *was = p->ok ? before(&p->procs, &j, x) : NULL;
		struct top_row *r = &t->rows[i];
		r->p = x;
		r->saved = (int64_t)(x->e.st.merging_pages + x->e.st.zero_pages) * SP_PAGE -
			   (int64_t)x->e.st.rmap_items * SP_ENTRY_BYTES;
		r->state = state_of(x, s->stat.knobs.v[KNOB_RUN]);
		r->cpu = -1;
		if (was && dt > 0 && x->scan_ticks >= was->scan_ticks) {
			r->cpu = cpu_pct(x->scan_ticks - was->scan_ticks, t->hz, dt);
			*cpu_all += r->cpu;
		}
	}
	if (s->procs.n)
		qsort_r(t->rows, s->procs.n, sizeof(t->rows[0]), row_cmp, &t->o);
	return 0;
}

/* ---- frames ---- */

static void fill_frame(struct top *t, struct top_frame *f, int tty)
{
	const struct sample *s = &t->s[t->cur], *p = &t->s[!t->cur];
	double dt = s->ok && p->ok ? s->t - p->t : 0;
	double cpu_all = -1;

	memset(f, 0, sizeof(*f));
	f->tty = tty;
	f->utf8 = t->utf8;
	f->sort = t->o.sort;
	f->reverse = t->o.reverse;
	f->delay_s = (double)t->o.delay_ms / 1000;
	f->scan_rate = f->cpu_scanners = f->cpu_daemon = -1;
	if (tty)
		term_size(&f->lines, &f->cols);
	else
		f->cols = 80;
	if (!s->ok) {
		f->error = t->error;
		return;
	}
	f->stat = &s->stat;
	f->daemon_pid = t->c->daemon_pid;
	if (build_rows(t, &cpu_all) == 0) {
		f->rows = t->rows;
		f->nrows = s->procs.n;
	} else {
		snprintf(t->error, sizeof(t->error), "no memory for the rows");
		f->error = t->error;
	}
	f->cpu_scanners = cpu_all;
	if (dt > 0 && s->stat.g.pages_scanned >= p->stat.g.pages_scanned)
		f->scan_rate = (double)(s->stat.g.pages_scanned - p->stat.g.pages_scanned) / dt;
	if (dt > 0 && p->daemon_ticks >= 0 && s->daemon_ticks >= p->daemon_ticks)
		f->cpu_daemon = cpu_pct((uint64_t)(s->daemon_ticks - p->daemon_ticks), t->hz, dt);
}

/* The history, oldest first, into the frame. */
static double *spark(struct top *t, struct top_frame *f)
{
	double *v = malloc((t->hist_n ? t->hist_n : 1) * sizeof(*v));

	if (!v)
		return NULL;
	for (size_t i = 0; i < t->hist_n; i++)
		v[i] = t->hist[(t->hist_head + i) % t->hist_cap];
	f->spark = v;
	f->nspark = t->hist_n;
	f->spark_span_s = t->hist_n > 1 ?
			  (double)(t->hist_n - 1) * (double)t->o.delay_ms / 1000 : 0;
	return v;
}

/* One frame, written whole: no half-drawn screen. */
static int draw(struct top *t, int tty)
{
	struct top_frame f;
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	double *v;

	if (!out)
		return -errno;
	fill_frame(t, &f, tty);
	v = spark(t, &f);
	frame_draw(out, &f);
	fclose(out);
	free(v);
	if (fwrite(text, 1, len, stdout) != len || fflush(stdout) == EOF) {
		free(text);
		return -EPIPE;
	}
	free(text);
	return 0;
}

/* ---- the loop ---- */

/* Keys until the next sample is due: 0 (time for it), 1 to stop. No
 * frame is drawn before the first (drawn): rates need two samples. */
static int keys(struct top *t, double due, int tty, int drawn)
{
	for (;;) {
		double left = due - mono_s();
		if (left <= 0)
			return 0;
		if (!tty) {
			struct timespec ts = { (time_t)left,
					       (long)((left - (double)(time_t)left) * 1e9) };
			nanosleep(&ts, NULL);
			continue;
		}
		int k = term_wait(&t->term, (int)(left * 1000) + 1);
		if (k == TERM_QUIT || k == 'q' || k == 'Q')
			return 1;
		if (k == ' ')
			return 0;
		if (k == '<' || k == '>')
			t->o.sort = (enum top_key)((t->o.sort + (k == '>' ? 1 : TOP_NKEYS - 1)) %
						   TOP_NKEYS);
		if (k == 'r' || k == 'R')
			t->o.reverse = !t->o.reverse;
		if (k != TERM_TIMEOUT && drawn && draw(t, tty))
			return 1;
	}
}

static int run_loop(struct top *t, int tty)
{
	uint64_t frames = 0;

	/* Rates need two samples: the first frame after a short wait. */
	uint64_t warmup = t->o.delay_ms < WARMUP_MS ? t->o.delay_ms : WARMUP_MS;

	if (keys(t, mono_s() + (double)warmup / 1000, tty, 0))
		return 0;
	for (;;) {
		t->cur = !t->cur;
		take_sample(t, &t->s[t->cur]);
		if (t->s[t->cur].ok)
			remember(t, (double)t->s[t->cur].stat.g.general_profit);
		if (draw(t, tty))
			return 1;
		if (t->o.iterations && ++frames >= t->o.iterations)
			return 0;
		if (keys(t, t->s[t->cur].t + (double)t->o.delay_ms / 1000, tty, 1))
			return 0;
	}
}

static int utf8_locale(void)
{
	const char *cs;

	setlocale(LC_CTYPE, "");
	cs = nl_langinfo(CODESET);
	return cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
}

static void top_free(struct top *t)
{
	procs_free(&t->s[0].procs);
	procs_free(&t->s[1].procs);
	free(t->hist);
	free(t->rows);
}

int cmd_top(struct cli *c, int argc, char **argv)
{
	struct top t = { .c = c };
	int err = top_options(c, argc, argv, &t.o), tty, ret;

	if (err)
		return EXIT_USAGE;
	if (t.o.help)
		return cli_help(help_text);
	t.hz = sysconf(_SC_CLK_TCK) > 0 ? sysconf(_SC_CLK_TCK) : 100;
	t.utf8 = utf8_locale();
	t.hist_cap = HISTORY_S * 1000 / t.o.delay_ms + 1;
	t.hist = malloc(t.hist_cap * sizeof(*t.hist));
	if (!t.hist)
		return cli_fail(c, "top", -ENOMEM);
	/* Nothing to watch without a daemon: fail as `samepage status` does. */
	err = take_sample(&t, &t.s[t.cur]);
	if (err) {
		top_free(&t);
		return cli_fail(c, "top", err);
	}
	/* With a number of frames, the last one stays on the screen, as top's. */
	tty = !t.o.batch && isatty(STDOUT_FILENO) && term_open(&t.term, !t.o.iterations) == 0;
	ret = run_loop(&t, tty);
	if (tty)
		term_close(&t.term);
	top_free(&t);
	return ret;
}
