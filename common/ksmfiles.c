/* SPDX-License-Identifier: MIT */
/* ksmfiles — see ksmfiles.h. */
#define _GNU_SOURCE
#include "ksmfiles.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* KSM_COUNTER indexes. */
enum {
	G_SHARED, G_SHARING, G_UNSHARED, G_VOLATILE, G_SCANNED, G_FULL_SCANS, G_ZERO,
	G_PROFIT, G_CHAINS, G_DUPS, G_SKIPPED,
};

#define KNOB(n, k, p) { n, KSM_KNOB, p, 0644, k, NULL }
#define COUNTER(n, g) { n, KSM_COUNTER, P_NONE, 0444, g, NULL }
#define FIXED(n, p, text) { n, KSM_FIXED, p, 0644, 0, text }

/* Every file of the kernel's /sys/kernel/mm/ksm (6.18). The knobs samepage
 * has no counterpart for show the kernel's defaults: samepage merges
 * across NUMA nodes and has no stable-node chains to prune. Its smart_scan
 * skips the same generations in every process, so it has not the kernel's
 * blind spot, and its scan-time advisor caps all scanners' CPU together
 * (DESIGN.md). */
const struct sp_ksm_file sp_ksm_files[] = {
	KNOB("advisor_max_cpu", KNOB_ADVISOR_MAX_CPU, P_ULONG),
	KNOB("advisor_max_pages_to_scan", KNOB_ADVISOR_MAX_PAGES_TO_SCAN, P_ULONG),
	KNOB("advisor_min_pages_to_scan", KNOB_ADVISOR_MIN_PAGES_TO_SCAN, P_ULONG),
	KNOB("advisor_mode", KNOB_ADVISOR_MODE, P_ADVISOR),
	KNOB("advisor_target_scan_time", KNOB_ADVISOR_TARGET_SCAN_TIME, P_ULONG),
	COUNTER("full_scans", G_FULL_SCANS),
	COUNTER("general_profit", G_PROFIT),
	COUNTER("ksm_zero_pages", G_ZERO),
	KNOB("max_page_sharing", KNOB_MAX_PAGE_SHARING, P_INT),
	FIXED("merge_across_nodes", P_ULONG, "1"),
	COUNTER("pages_scanned", G_SCANNED),
	COUNTER("pages_shared", G_SHARED),
	COUNTER("pages_sharing", G_SHARING),
	COUNTER("pages_skipped", G_SKIPPED),
	KNOB("pages_to_scan", KNOB_PAGES_TO_SCAN, P_UINT),
	COUNTER("pages_unshared", G_UNSHARED),
	COUNTER("pages_volatile", G_VOLATILE),
	KNOB("run", KNOB_RUN, P_UINT),
	KNOB("sleep_millisecs", KNOB_SLEEP_MILLISECS, P_UINT),
	KNOB("smart_scan", KNOB_SMART_SCAN, P_BOOL),
	COUNTER("stable_node_chains", G_CHAINS),
	FIXED("stable_node_chains_prune_millisecs", P_UINT, "2000"),
	COUNTER("stable_node_dups", G_DUPS),
	KNOB("use_zero_pages", KNOB_USE_ZERO_PAGES, P_BOOL),
};
const size_t sp_ksm_nfiles = sizeof(sp_ksm_files) / sizeof(sp_ksm_files[0]);

const struct sp_ksm_file *sp_ksm_file(const char *name)
{
	for (size_t i = 0; i < sp_ksm_nfiles; i++)
		if (!strcmp(sp_ksm_files[i].name, name))
			return &sp_ksm_files[i];
	return NULL;
}

int sp_ksm_proc_file(const char *name)
{
	if (!strcmp(name, "ksm_stat"))
		return KSM_PROC_STAT;
	if (!strcmp(name, "ksm_merging_pages"))
		return KSM_PROC_MERGING;
	return -ENOENT;
}

static int64_t counter(const struct sp_global_stats *g, int index)
{
	switch (index) {
	case G_SHARED: return (int64_t)g->pages_shared;
	case G_SHARING: return (int64_t)g->pages_sharing;
	case G_UNSHARED: return (int64_t)g->pages_unshared;
	case G_VOLATILE: return (int64_t)g->pages_volatile;
	case G_SCANNED: return (int64_t)g->pages_scanned;
	case G_FULL_SCANS: return (int64_t)g->full_scans;
	case G_ZERO: return (int64_t)g->ksm_zero_pages;
	case G_PROFIT: return g->general_profit;
	case G_CHAINS: return (int64_t)g->stable_node_chains;
	case G_SKIPPED: return (int64_t)g->pages_skipped;
	default: return (int64_t)g->stable_node_dups;
	}
}

static int fitted(int n, size_t len)
{
	return n < 0 || (size_t)n >= len ? -ENOSPC : n;
}

int sp_ksm_render(const struct sp_ksm_file *f, const struct sp_stat_r *r, char *buf,
		  size_t len)
{
	switch (f->kind) {
	case KSM_KNOB:
		if (f->index == KNOB_ADVISOR_MODE) /* the kernel's: every mode, [the one on] */
			return fitted(snprintf(buf, len, "%s\n", r->knobs.v[f->index] ==
					       ADVISOR_SCAN_TIME ? "none [scan-time]" :
					       "[none] scan-time"), len);
		return fitted(snprintf(buf, len, "%u\n", r->knobs.v[f->index]), len);
	case KSM_COUNTER:
		return fitted(snprintf(buf, len, "%lld\n", (long long)counter(&r->g, f->index)),
			      len);
	case KSM_FIXED:
		return fitted(snprintf(buf, len, "%s\n", f->fixed), len);
	default:
		return fitted(snprintf(buf, len, "0\n"), len);
	}
}

int sp_ksm_render_proc(int which, const struct sp_proc_stats *p, char *buf, size_t len)
{
	/* As the kernel's ksm_process_profit(): pages saved minus the
	 * bookkeeping of every page looked at. */
	long long profit = (long long)(p->merging_pages + p->zero_pages) * SP_PAGE -
			   (long long)p->rmap_items * SP_ENTRY_BYTES;

	if (which == KSM_PROC_MERGING)
		return fitted(snprintf(buf, len, "%llu\n", (unsigned long long)p->merging_pages),
			      len);
	return fitted(snprintf(buf, len,
			       "ksm_rmap_items %llu\nksm_zero_pages %llu\nksm_merging_pages %llu\n"
			       "ksm_process_profit %lld\nksm_merge_any: %s\nksm_mergeable: %s\n",
			       (unsigned long long)p->rmap_items, (unsigned long long)p->zero_pages,
			       (unsigned long long)p->merging_pages, profit,
			       p->merge_any ? "yes" : "no", p->mergeable ? "yes" : "no"),
		      len);
}

/* ---- the kernel's parsers (lib/kstrtox.c), on a NUL-terminated copy ---- */

/* kstrtoull(s, 10): an optional '+', digits, an optional newline. */
static int k_strtoull(const char *s, unsigned long long *v)
{
	unsigned long long r = 0;
	const char *d;

	if (*s == '+')
		s++;
	for (d = s; *d >= '0' && *d <= '9'; d++) {
		unsigned digit = (unsigned)(*d - '0');
		if (r > (~0ull - digit) / 10)
			return -ERANGE;
		r = r * 10 + digit;
	}
	if (d == s)
		return -EINVAL;
	if (*d == '\n')
		d++;
	if (*d)
		return -EINVAL;
	*v = r;
	return 0;
}

static int k_strtouint(const char *s, unsigned long long *v)
{
	int err = k_strtoull(s, v);

	return err ? err : *v > 0xffffffffull ? -ERANGE : 0;
}

/* kstrtoint: a '-' allowed; the result must fit an int. */
static int k_strtoint(const char *s, long long *v)
{
	unsigned long long u;
	int err;

	if (*s == '-') {
		err = k_strtoull(s + 1, &u);
		if (err)
			return err;
		if (u > 0x80000000ull)
			return -ERANGE;
		*v = -(long long)u;
		return 0;
	}
	err = k_strtoull(s, &u);
	if (err)
		return err;
	if (u > 0x7fffffffull)
		return -ERANGE;
	*v = (long long)u;
	return 0;
}

static int k_strtobool(const char *s, unsigned long long *v)
{
	switch (s[0]) {
	case 'y': case 'Y': case 't': case 'T': case '1':
		*v = 1;
		return 0;
	case 'n': case 'N': case 'f': case 'F': case '0':
		*v = 0;
		return 0;
	case 'o': case 'O':
		if (s[1] == 'n' || s[1] == 'N' || s[1] == 'f' || s[1] == 'F') {
			*v = s[1] == 'n' || s[1] == 'N';
			return 0;
		}
		return -EINVAL;
	default:
		return -EINVAL;
	}
}

/* sysfs_streq(): equal, but for one trailing newline on either side. */
static int k_streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	if (*a == *b)
		return 1;
	return (!*a && *b == '\n' && !b[1]) || (!*b && *a == '\n' && !a[1]);
}

/* The value as the file's store function parses it: 0, or the errno it
 * returns (the kernel's stores turn kstrto*'s error into -EINVAL except
 * max_page_sharing's and merge_across_nodes', which pass it on). */
static int parse_value(const struct sp_ksm_file *f, const char *s, unsigned long long *v)
{
	long long sv;
	int err;

	switch (f->parse) {
	case P_UINT:
		return k_strtouint(s, v) ? -EINVAL : 0;
	case P_ULONG:
		err = k_strtoull(s, v);
		return err && strcmp(f->name, "merge_across_nodes") ? -EINVAL : err;
	case P_INT:
		err = k_strtoint(s, &sv);
		if (err)
			return err;
		if (sv < 2) /* max_page_sharing: a KSM page has two mappers at least */
			return -EINVAL;
		*v = (unsigned long long)sv;
		return 0;
	case P_BOOL:
		return k_strtobool(s, v);
	case P_ADVISOR:
		*v = k_streq(s, "scan-time") ? ADVISOR_SCAN_TIME : ADVISOR_NONE;
		return k_streq(s, "none") || k_streq(s, "scan-time") ? 0 : -EINVAL;
	default:
		return -EACCES;
	}
}

int sp_ksm_parse_write(const struct sp_ksm_file *f, const char *buf, size_t n,
		       struct sp_set *set)
{
	char s[4097];
	unsigned long long v;
	int err;

	if (f->kind != KSM_KNOB && f->kind != KSM_FIXED)
		return -EACCES;
	/* sysfs hands a store at most a page, NUL-terminated. */
	if (n > sizeof(s) - 1)
		n = sizeof(s) - 1;
	memcpy(s, buf, n);
	s[n] = 0;
	err = parse_value(f, s, &v);
	if (err)
		return err;
	if (f->kind == KSM_FIXED) {
		/* The kernel's own range checks, then nothing to do. */
		if (!strcmp(f->name, "merge_across_nodes") && v > 1)
			return -EINVAL;
		*set = (struct sp_set){ .knob = KNOB_COUNT };
		return 0;
	}
	if (f->index == KNOB_RUN && v > 2)
		return -EINVAL;
	if (sp_knob_check(f->index, v))
		return -EINVAL;
	*set = (struct sp_set){ .knob = (uint32_t)f->index, .value = v };
	return 0;
}
