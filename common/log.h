/* SPDX-License-Identifier: MIT */
/*
 * log — one line to stderr, formatted into a buffer on the stack and
 * written with one write(2): no stdio, no malloc. The library writes while
 * an application thread may hold stdio's or malloc's locks (or sit blocked
 * on a frozen page holding them), and a line written whole is not torn
 * apart by other writers.
 */
#ifndef SAMEPAGE_LOG_H
#define SAMEPAGE_LOG_H

#include <stdlib.h>

/* Write the formatted text (the caller ends it with a newline) to stderr;
 * cut at 1 KiB. */
void sp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same to descriptor fd (a stderr kept aside, for instance). */
void sp_log_fd(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The daemon's log, by syslog priority. Lines above the level set by
 * SAMEPAGE_LOG_LEVEL (error, warning, info, debug; default info) are not
 * written. Under systemd (JOURNAL_STREAM set) each line starts with the
 * "<N>" prefix journald reads as its priority; elsewhere with the time and
 * the level's name. */
enum sp_level { SP_LOG_ERR = 3, SP_LOG_WARN = 4, SP_LOG_INFO = 6, SP_LOG_DEBUG = 7 };
/* Read the environment once, at start; ident names the program. */
void sp_log_init(const char *ident);
int sp_log_enabled(int level);
void sp_logl(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A check that holds unless samepage itself is wrong: in the sanitizer
 * builds (the test suite runs them) it aborts with where and what; in
 * release builds it costs nothing. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(SP_DEBUG)
#define SP_ASSERT(cond)                                                                  \
	do {                                                                             \
		if (!(cond)) {                                                           \
			sp_log("samepage: assertion failed at %s:%d: %s\n", __FILE__,   \
			       __LINE__, #cond);                                         \
			abort();                                                         \
		}                                                                        \
	} while (0)
#else
#define SP_ASSERT(cond) ((void)0)
#endif

#endif
