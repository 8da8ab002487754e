/* SPDX-License-Identifier: MIT */
/* fault — see fault.h. */
#define _GNU_SOURCE
#include "fault.h"

#include <stdlib.h>
#include <string.h>

#include "env.h"

static int listed(const char *list, const char *point)
{
	size_t n = strlen(point);

	for (const char *s = list; s && *s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL)
		if (!strncmp(s, point, n) && (s[n] == ',' || s[n] == 0))
			return 1;
	return 0;
}

int fault_inject(const char *point)
{
	return listed(sp_env("SAMEPAGE_FAULT"), point);
}

int fault_inject_inherited(const char *point)
{
	return listed(sp_env_inherited("SAMEPAGE_FAULT"), point);
}
