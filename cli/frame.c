/* SPDX-License-Identifier: MIT */
/*
 * frame — one frame of `samepage top`: the totals, a sparkline of the
 * saving, and a row per process. The same text on a terminal (cut to the
 * window, the sort column marked) and in a log (batch: every row, no
 * escapes).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <stdio.h>
#include <string.h>

struct column {
	const char *head;
	int width;     /* negative: left-aligned */
};

static const struct column columns[TOP_NKEYS] = {
	/* 80 columns in all. */
	[TOP_PID] = { "PID", 7 },         [TOP_COMMAND] = { "COMMAND", -15 },
	[TOP_MERGING] = { "MERGING", 8 }, [TOP_ZERO] = { "ZERO", 6 },
	[TOP_SAVED] = { "SAVED", 7 },     [TOP_VOLATILE] = { "VOLATILE", 8 },
	[TOP_VMAS] = { "VMAS", 5 },       [TOP_CPU] = { "CPU%", 5 },
	[TOP_STATE] = { "STATE", -11 },
};

static const char *const key_names[TOP_NKEYS] = {
	"pid", "command", "merging", "zero", "saved", "volatile", "vmas", "cpu", "state",
};

const char *frame_key_name(enum top_key k)
{
	return k < TOP_NKEYS ? key_names[k] : NULL;
}

/* A line of at most cols columns (the lines here are ASCII but for the
 * sparkline, which is cut to fit before), ending the screen's line. */
static void line(FILE *out, const struct top_frame *f, const char *text)
{
	int n = (int)strlen(text);

	if (f->tty && n > f->cols)
		n = f->cols;
	while (n > 0 && text[n - 1] == ' ')
		n--;
	fprintf(out, "%.*s%s\n", n, text, f->tty ? "\033[K" : "");
}

static void pct(char *buf, size_t len, double v)
{
	if (v < 0)
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, "%.1f%%", v);
}

static void draw_head(FILE *out, const struct top_frame *f)
{
	const struct sp_stat_r *s = f->stat;
	char t[512], clock[16], a[16], b[16], c[16];

	fmt_clock(clock, sizeof(clock));
	if (!s) {
		snprintf(t, sizeof(t), "samepage top - %s - daemon not reachable: %s", clock,
			 f->error ? f->error : "?");
		line(out, f, t);
		return;
	}
	snprintf(t, sizeof(t), "samepage top - %s - daemon %d - %llu process%s, %llu at the VMA "
		 "limit", clock, (int)f->daemon_pid, (unsigned long long)s->g.processes,
		 s->g.processes == 1 ? "" : "es", (unsigned long long)s->g.processes_limited);
	line(out, f, t);
	fmt_bytes(a, sizeof(a), (double)s->g.general_profit);
	fmt_bytes(b, sizeof(b), (double)s->g.pool_pages * SP_PAGE);
	snprintf(t, sizeof(t), "Saved: %s   Pool: %s in %llu segment%s   VMAs added: %llu", a, b,
		 (unsigned long long)s->g.pool_segments, s->g.pool_segments == 1 ? "" : "s",
		 (unsigned long long)s->g.merge_vmas);
	line(out, f, t);
	snprintf(t, sizeof(t), "Pages: %llu shared, %llu sharing, %llu unshared, %llu volatile, "
		 "%llu zero", (unsigned long long)s->g.pages_shared,
		 (unsigned long long)s->g.pages_sharing, (unsigned long long)s->g.pages_unshared,
		 (unsigned long long)s->g.pages_volatile, (unsigned long long)s->g.ksm_zero_pages);
	line(out, f, t);
	if (f->scan_rate < 0)
		snprintf(a, sizeof(a), "-");
	else
		snprintf(a, sizeof(a), "%.0f", f->scan_rate);
	pct(b, sizeof(b), f->cpu_scanners);
	pct(c, sizeof(c), f->cpu_daemon);
	snprintf(t, sizeof(t), "Scan: %s pages/s, %llu full scans   CPU: scanners %s, daemon %s",
		 a, (unsigned long long)s->g.full_scans, b, c);
	line(out, f, t);
	/* The least looked at last, where a narrow terminal cuts. */
	snprintf(t, sizeof(t), "Knobs: run=%u pages_to_scan=%u%s sleep_millisecs=%u "
		 "max_page_sharing=%u use_zero_pages=%u smart_scan=%u", s->knobs.v[KNOB_RUN],
		 s->knobs.v[KNOB_PAGES_TO_SCAN],
		 s->knobs.v[KNOB_ADVISOR_MODE] == ADVISOR_SCAN_TIME ? " (advisor)" : "",
		 s->knobs.v[KNOB_SLEEP_MILLISECS], s->knobs.v[KNOB_MAX_PAGE_SHARING],
		 s->knobs.v[KNOB_USE_ZERO_PAGES], s->knobs.v[KNOB_SMART_SCAN]);
	line(out, f, t);
}

/* "45s", "3m20s". */
static void span(char *buf, size_t len, double s)
{
	if (s < 10)
		snprintf(buf, len, "%.1fs", s);
	else if (s < 60)
		snprintf(buf, len, "%.0fs", s);
	else
		snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
}

/* The saving over the history, one character per sample or per bucket of
 * samples when more than fit; scaled from 0 to the highest shown. */
static void draw_spark(FILE *out, const struct top_frame *f)
{
	static const char *const blocks[8] = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };
	static const char ascii[] = "._-~=+*#";
	char label[64], when[16], top[16];
	double v[512], max = 0;
	size_t width, k, n = 0;

	if (!f->nspark)
		return;
	span(when, sizeof(when), f->spark_span_s);
	snprintf(label, sizeof(label), "Saved, last %s: ", when);
	width = f->cols > (int)strlen(label) + 20 ? (size_t)f->cols - strlen(label) - 16 : 8;
	width = width > sizeof(v) / sizeof(v[0]) ? sizeof(v) / sizeof(v[0]) : width;
	k = (f->nspark + width - 1) / width;
	/* The first bucket takes what does not divide: the newest are whole. */
	for (size_t s = 0, end = f->nspark % k ? f->nspark % k : k; s < f->nspark; end += k) {
		double sum = 0;
		size_t cnt = 0;
		for (; s < end && s < f->nspark; s++, cnt++)
			sum += f->spark[s] > 0 ? f->spark[s] : 0;
		v[n] = sum / (double)cnt;
		max = v[n] > max ? v[n] : max;
		n++;
	}
	fputs(label, out);
	for (size_t i = 0; i < n; i++) {
		int lv = max > 0 ? (int)(v[i] / max * 7 + 0.5) : 0;
		if (f->utf8)
			fputs(blocks[lv], out);
		else
			fputc(ascii[lv], out);
	}
	fmt_bytes(top, sizeof(top), max);
	fprintf(out, " (top %s)%s\n", top, f->tty ? "\033[K" : "");
}

static void draw_header(FILE *out, const struct top_frame *f)
{
	char t[256], *at;
	size_t n = 0, w;

	for (int k = 0; k < TOP_NKEYS && n < sizeof(t); k++) {
		const struct column *c = &columns[k];
		n += (size_t)snprintf(t + n, sizeof(t) - n, "%s%*s", k ? " " : "", c->width,
				      c->head);
	}
	if (!f->tty) {
		line(out, f, t);
		return;
	}
	/* The sort column, in reverse video. */
	while (n > 0 && t[n - 1] == ' ')
		t[--n] = 0;
	at = strstr(t, columns[f->sort].head);
	w = strlen(columns[f->sort].head);
	fprintf(out, "%.*s\033[7m%.*s\033[27m%s\033[K\n", (int)(at - t), t, (int)w, at, at + w);
}

static void draw_row(FILE *out, const struct top_frame *f, const struct top_row *r)
{
	const struct sp_proc_stats *st = &r->p->e.st;
	char t[256], saved[16], cpu[16], comm[sizeof(r->p->comm)];

	/* A command name is the process's to choose: no escapes reach the
	 * terminal through it. */
	snprintf(comm, sizeof(comm), "%s", r->p->comm);
	for (char *p = comm; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			*p = '?';
	fmt_bytes(saved, sizeof(saved), (double)r->saved);
	if (r->cpu < 0)
		snprintf(cpu, sizeof(cpu), "-");
	else
		snprintf(cpu, sizeof(cpu), "%.1f", r->cpu);
	snprintf(t, sizeof(t), "%*d %*s %*llu %*llu %*s %*llu %*llu %*s %*s",
		 columns[TOP_PID].width, (int)r->p->e.pid, columns[TOP_COMMAND].width, comm,
		 columns[TOP_MERGING].width, (unsigned long long)st->merging_pages,
		 columns[TOP_ZERO].width, (unsigned long long)st->zero_pages,
		 columns[TOP_SAVED].width, saved, columns[TOP_VOLATILE].width,
		 (unsigned long long)st->volatile_pages, columns[TOP_VMAS].width,
		 (unsigned long long)st->merge_vmas, columns[TOP_CPU].width, cpu,
		 columns[TOP_STATE].width, r->state);
	line(out, f, t);
}

void frame_draw(FILE *out, const struct top_frame *f)
{
	int room = f->lines ? f->lines - 9 : -1; /* the head, the spark, the keys, the header */
	char t[160];

	if (f->tty)
		fputs("\033[H", out);
	draw_head(out, f);
	if (f->stat)
		draw_spark(out, f);
	if (f->tty) {
		snprintf(t, sizeof(t), "Keys: q quit, < > sort column (%s%s), r reverse, space "
			 "refresh", key_names[f->sort], f->reverse ? ", reversed" : "");
		line(out, f, t);
	}
	line(out, f, f->stat && f->error ? f->error : "");
	draw_header(out, f);
	for (size_t i = 0; i < f->nrows && (room < 0 || (int)i < room); i++)
		draw_row(out, f, &f->rows[i]);
	if (f->tty)
		fputs("\033[J", out);
	else
		fputs("\n", out);
}
