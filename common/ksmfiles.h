/* SPDX-License-Identifier: MIT */
/*
 * ksmfiles — the files tools read and write to drive kernel KSM,
 * /sys/kernel/mm/ksm/ and /proc/PID/ksm_stat, ksm_merging_pages, as
 * samepage shows them: their names and modes, their text rendered from a
 * D_STAT reply with the kernel's formatting, and what a write means, parsed
 * as the kernel's store functions parse it (mm/ksm.c: kstrtouint,
 * kstrtobool, ...) with the kernel's error codes. The library serves them
 * to programs under `samepage run` (lib/ksmfile.c) and samepage-fs as a
 * read-only FUSE tree (fs/ksmfs.c); both show the same text.
 */
#ifndef SAMEPAGE_KSMFILES_H
#define SAMEPAGE_KSMFILES_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

#define SP_KSM_DIR "/sys/kernel/mm/ksm"
/* The longest text any of the files holds, newline included. */
#define SP_KSM_TEXT_MAX 512

/* What a file shows. */
enum sp_ksm_kind {
	KSM_KNOB,    /* one of samepage's knobs (struct sp_knobs), writable */
	KSM_COUNTER, /* a counter of struct sp_global_stats, read-only */
	KSM_FIXED,   /* a knob of the kernel's with no meaning here: shows the
			kernel's default, a valid write is accepted and changes
			nothing (docs/DESIGN.md, "The KSM files") */
	KSM_ZERO,    /* a counter samepage never counts: always 0, read-only */
};

/* How a write is parsed: the kernel's kstrto* of the store function. */
enum sp_ksm_parse { P_NONE, P_UINT, P_ULONG, P_INT, P_BOOL, P_ADVISOR };

struct sp_ksm_file {
	const char *name;
	uint8_t kind;
	uint8_t parse;
	uint16_t mode;      /* as sysfs shows it: 0644 writable, 0444 read-only */
	int index;          /* KSM_KNOB: enum sp_knob; KSM_COUNTER: see ksmfiles.c */
	const char *fixed;  /* KSM_FIXED: the text shown */
};

/* The files of /sys/kernel/mm/ksm, in the kernel's (alphabetical) order. */
extern const struct sp_ksm_file sp_ksm_files[];
extern const size_t sp_ksm_nfiles;

/* The file of /sys/kernel/mm/ksm called name, or NULL. */
const struct sp_ksm_file *sp_ksm_file(const char *name);

/* The per-process files of /proc/PID. */
enum sp_ksm_proc { KSM_PROC_STAT, KSM_PROC_MERGING };
/* name ("ksm_stat", "ksm_merging_pages") as enum sp_ksm_proc, or -ENOENT. */
int sp_ksm_proc_file(const char *name);

/* The text of file f, from a D_STAT reply (global part and knobs), into
 * buf of len bytes (SP_KSM_TEXT_MAX is enough): its length, or -ENOSPC. */
int sp_ksm_render(const struct sp_ksm_file *f, const struct sp_stat_r *r, char *buf,
		  size_t len);
/* The text of /proc/PID/ksm_stat or ksm_merging_pages for a process
 * whose counters are p (all zero: a process that never asked for merging,
 * as the kernel shows it). */
int sp_ksm_render_proc(int which, const struct sp_proc_stats *p, char *buf, size_t len);

/* What writing the n bytes at buf to f asks, as the kernel's store
 * function reads them: 0 and *set filled (set->knob is KNOB_COUNT for a
 * KSM_FIXED file: nothing to change), or the kernel's -errno (-EINVAL
 * for what it refuses, -ERANGE where its store passes kstrto*'s on;
 * -EACCES for a read-only file). Values the kernel accepts but samepage
 * cannot honour (pages_to_scan 0 or above 2^24, sleep_millisecs above
 * 60000, max_page_sharing above 2^20, advisor_min_pages_to_scan and
 * advisor_max_pages_to_scan 0 or above 2^24, advisor_max_cpu and
 * advisor_target_scan_time above 2^32 - 1) are -EINVAL: sp_knob_check()'s
 * ranges. pages_to_scan while advisor_mode is scan-time is the daemon's
 * -EINVAL, as the kernel's. */
int sp_ksm_parse_write(const struct sp_ksm_file *f, const char *buf, size_t n,
		       struct sp_set *set);

#endif
