/* SPDX-License-Identifier: MIT */
/* fault — see fault.h. */
#define _GNU_SOURCE
#include "fault.h"

#include <stdlib.h>
#include <string.h>

#include "env.h"

int fault_inject(const char *point)
{
	const char *list = sp_env("SAMEPAGE_FAULT");
	size_t n = strlen(point);

	for (const char *s = list; s && *s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL)
		if (!strncmp(s, point, n) && (s[n] == ',' || s[n] == 0))
			return 1;
	return 0;
}
