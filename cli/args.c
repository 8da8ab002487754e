/* SPDX-License-Identifier: MIT */
/*
 * args — options and numbers a person typed, checked whole: `--pid abc`
 * once meant pid 0, "every process".
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "num.h"

int cli_usage_error(struct cli *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "samepage %s: ", c->sub);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'samepage %s --help'.\n", c->sub);
	return -EINVAL;
}

int cli_getopt(struct cli *c, int argc, char **argv, const char *shorts,
	       const struct option *longs)
{
	int o;

	opterr = 0; /* told here, in the subcommand's words */
	o = getopt_long(argc, argv, shorts, longs, NULL);
	if (o == ':')
		cli_usage_error(c, "option '%s' needs a value", argv[optind - 1]);
	else if (o == '?' && optopt && !strchr(shorts, optopt))
		cli_usage_error(c, "unknown option '-%c'", optopt);
	else if (o == '?')
		cli_usage_error(c, "unknown option '%s'", argv[optind - 1]);
	return o == ':' ? '?' : o;
}

int cli_parse_pid(struct cli *c, const char *opt, const char *s, pid_t *out)
{
	uint64_t v;

	if (sp_parse_u64(s, 1, INT32_MAX, &v))
		return cli_usage_error(c, "%s: '%s' is not a process id (a number from 1)", opt, s);
	*out = (pid_t)v;
	return 0;
}

int cli_parse_secs(struct cli *c, const char *opt, const char *s, uint64_t min_ms,
		   uint64_t max_ms, uint64_t *out_ms)
{
	int err = sp_parse_secs_ms(s, min_ms, max_ms, out_ms);

	if (err == -ERANGE)
		return cli_usage_error(c, "%s: %s s is out of range (%.3g to %.3g s)", opt, s,
				       min_ms / 1000.0, max_ms / 1000.0);
	if (err)
		return cli_usage_error(c, "%s: '%s' is not a number of seconds (e.g. 2 or 0.5)",
				       opt, s);
	return 0;
}

int cli_parse_count(struct cli *c, const char *opt, const char *s, uint64_t min, uint64_t max,
		    uint64_t *out)
{
	int err = sp_parse_u64(s, min, max, out);

	if (err)
		return cli_usage_error(c, "%s: '%s' is not a number from %llu to %llu", opt, s,
				       (unsigned long long)min, (unsigned long long)max);
	return 0;
}

int cli_help(const char *text)
{
	fputs(text, stdout);
	return 0;
}
