/* SPDX-License-Identifier: MIT */
/* knobs — KNOB=VALUE as typed, checked whole, and what a change did. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "num.h"

int knob_arg(struct cli *c, char *arg, int *knob, uint64_t *value)
{
	char *eq = strchr(arg, '='), names[128] = "";
	uint64_t min, max;
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
	sp_knob_range(k, &min, &max);
	err = sp_parse_u64(eq + 1, min, max, value);
	if (err)
		return cli_usage_error(c, "%s=%s: %s (%s takes %llu to %llu)", arg, eq + 1,
				       err == -ERANGE ? "out of range" : "not a number", arg,
				       (unsigned long long)min, (unsigned long long)max);
	*knob = k;
	return 0;
}

void knob_print_change(int knob, uint32_t before, uint32_t after)
{
	if (before == after)
		printf("%s = %u (unchanged)\n", sp_knob_name(knob), after);
	else
		printf("%s = %u (was %u)\n", sp_knob_name(knob), after, before);
}
