/* SPDX-License-Identifier: MIT */
/* log — see log.h. */
#define _GNU_SOURCE
#include "log.h"
#include "os.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void log_va(int fd, const char *fmt, va_list ap)
{
	char buf[1024];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);

	if (n > (int)sizeof(buf) - 1)
		n = (int)sizeof(buf) - 1;
	if (n > 0 && raw_write(fd, buf, (size_t)n) < 0) {
		/* nowhere to say it */
	}
}

void sp_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_va(2, fmt, ap);
	va_end(ap);
}

void sp_log_fd(int fd, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_va(fd, fmt, ap);
	va_end(ap);
}

/* The log's one piece of state: set once by sp_log_init(), before any
 * thread starts. */
static struct log_ctx {
	int level;
	int journal;     /* stderr is journald's: "<N>" prefixes */
	char ident[32];
} logc = { SP_LOG_INFO, 0, "samepage" };

void sp_log_init(const char *ident)
{
	static const struct { const char *name; int level; } names[] = {
		{ "error", SP_LOG_ERR }, { "warning", SP_LOG_WARN }, { "warn", SP_LOG_WARN },
		{ "info", SP_LOG_INFO }, { "debug", SP_LOG_DEBUG },
	};
	const char *v = getenv("SAMEPAGE_LOG_LEVEL");

	snprintf(logc.ident, sizeof(logc.ident), "%s", ident);
	logc.journal = getenv("JOURNAL_STREAM") != NULL;
	for (size_t i = 0; v && i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(v, names[i].name))
			logc.level = names[i].level;
}

int sp_log_enabled(int level)
{
	return level <= logc.level;
}

static const char *level_name(int level)
{
	return level <= SP_LOG_ERR ? "error" : level == SP_LOG_WARN ? "warning" :
	       level == SP_LOG_INFO ? "info" : "debug";
}

void sp_logl(int level, const char *fmt, ...)
{
	char head[96], msg[1024];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (!sp_log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (logc.journal) {
		snprintf(head, sizeof(head), "<%d>", level);
	} else {
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		snprintf(head, sizeof(head), "%04d-%02d-%02d %02d:%02d:%02d.%03ld %s[%d] %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, logc.ident, (int)getpid(),
			 level_name(level));
	}
	sp_log("%s%s\n", head, msg);
}
