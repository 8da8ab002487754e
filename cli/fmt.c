/* SPDX-License-Identifier: MIT */
/* fmt — numbers and times for people. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdio.h>
#include <time.h>

void fmt_bytes(char *buf, size_t len, double bytes)
{
	static const char units[] = "BKMGTP";
	double a = bytes < 0 ? -bytes : bytes;
	int u = 0;

	while (a >= 1024 && u < 5) {
		a /= 1024;
		bytes /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%.0f%c", bytes, units[u]);
	else
		snprintf(buf, len, "%.1f%c", bytes, units[u]);
}

void fmt_clock(char *buf, size_t len)
{
	time_t now = time(NULL);
	struct tm tm;

	if (!localtime_r(&now, &tm) || !strftime(buf, len, "%H:%M:%S", &tm))
		snprintf(buf, len, "--:--:--");
}
