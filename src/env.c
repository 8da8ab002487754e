/* SPDX-License-Identifier: MIT */
/* env — see env.h. */
#define _GNU_SOURCE
#include "env.h"

#include <string.h>

extern char **environ;

const char *sp_env(const char *name)
{
	size_t n = strlen(name);

	for (char **e = environ; e && *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}
