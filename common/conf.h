/* SPDX-License-Identifier: MIT */
/*
 * conf — samepage.conf, the settings a daemon starts with: the kernel's
 * knob names (run, pages_to_scan, sleep_millisecs, use_zero_pages,
 * max_page_sharing, smart_scan, advisor_mode and the advisor's four) and the
 * daemon's idle_exit, as `key = value` lines with `#` comments (values as
 * `samepage set` takes them: numbers, advisor_mode none or scan-time).
 *
 * The daemon reads /etc/samepage.conf, then the user's own file
 * ($XDG_CONFIG_HOME/samepage/samepage.conf, else
 * ~/.config/samepage/samepage.conf) over it, at start and on SIGHUP;
 * `samepage set --save` rewrites the user's file. All or nothing, as
 * `samepage set` is: one unknown key or bad value anywhere and none of
 * the files changes anything, each error named by file and line.
 */
#ifndef SAMEPAGE_CONF_H
#define SAMEPAGE_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto.h"

#define SP_CONF_SYSTEM "/etc/samepage.conf"
#define SP_CONF_IDLE_MAX 2147483647u /* idle_exit, seconds */

/* What the files set; a key no file names is left as it was. */
struct sp_conf {
	uint32_t knob[KNOB_COUNT];
	uint32_t has_knob;  /* bit k: knob k is set */
	int64_t idle_exit;  /* seconds (0: never), or -1: not set */
};

/* Nothing set. */
void sp_conf_init(struct sp_conf *c);
/* The user's file into buf: 0, -ENOENT (neither XDG_CONFIG_HOME nor a
 * home directory) or -ENAMETOOLONG. */
int sp_conf_user_path(char *buf, size_t len);
/* The keys path sets, over c. A missing file is no error (0, c as it
 * was). Each bad line is told on errs as "PREFIX: FILE:LINE: what", and
 * then c stays as it was: -EINVAL; a file that cannot be read: -errno. */
int sp_conf_read(const char *path, struct sp_conf *c, FILE *errs, const char *prefix);
/* SP_CONF_SYSTEM, then the user's file over it, both checked in full:
 * 0 with c updated, or the first error with c as it was. */
int sp_conf_load(struct sp_conf *c, FILE *errs, const char *prefix);
/* Set the keys upd sets in the file at path (following a symbolic link):
 * the first line setting a key gets the new value and later ones go; every
 * other line stays as it is; keys not there yet are appended. Written to
 * a temporary file beside it, synced and renamed over it, so a crash
 * leaves the old file or the new one; missing directories are made
 * (0700). 0 or -errno, told on errs. */
int sp_conf_save(const char *path, const struct sp_conf *upd, FILE *errs, const char *prefix);

#endif
