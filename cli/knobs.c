/* SPDX-License-Identifier: MIT */
/* knobs — KNOB=VALUE as typed, checked whole, and what a change did. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>


int knob_arg(struct cli *c, char *arg, int *knob, uint64_t *value)
{
	char *eq = strchr(arg, '='), names[320] = "", takes[64];
	int k, err;

	if (!eq)
		return cli_usage_error(c, "expected KNOB=VALUE, got '%s'", arg);
	*eq = 0;
	k = sp_knob_lookup(arg);
	if (k < 0) {
		for (int i = 0; i < KNOB_COUNT; i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
				 i ? ", " : "", sp_knob_name(i));
		*eq = '=';
		return cli_usage_error(c, "unknown knob '%.*s' (knobs: %s)", (int)(eq - arg), arg,
				       names);
	}
	err = sp_knob_parse(k, eq + 1, value);
	if (err) {
		sp_knob_takes(k, takes, sizeof(takes));
		return cli_usage_error(c, "%s=%s: %s (%s takes %s)", arg, eq + 1,
				       err == -ERANGE ? "out of range" :
				       k == KNOB_ADVISOR_MODE ? "no such mode" : "not a number",
				       arg, takes);
	}
	*knob = k;
	return 0;
}

void knob_print_change(int knob, uint32_t before, uint32_t after)
{
	char was[32], now[32];

	sp_knob_format(knob, before, was, sizeof(was));
	sp_knob_format(knob, after, now, sizeof(now));
	if (before == after)
		printf("%s = %s (unchanged)\n", sp_knob_name(knob), now);
	else
		printf("%s = %s (was %s)\n", sp_knob_name(knob), now, was);
}
