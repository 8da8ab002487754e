/* SPDX-License-Identifier: MIT */
/* env — see env.h. */
#define _GNU_SOURCE
#include "env.h"

#include <stdlib.h>
#include <string.h>

extern char **environ;

/* The one piece of state of this module: what the process inherited. */
static struct sp_inherited inherited;

static const char *keep(const char *name)
{
	const char *v = sp_env(name);

	return v ? strdup(v) : NULL;
}

/* A copy, not environ's own strings: setproctitle() overwrites those. */
static char *const *copy_environ(void)
{
	size_t n = 0;
	char **copy;

	while (environ && environ[n])
		n++;
	copy = calloc(n + 1, sizeof(*copy));
	for (size_t i = 0; copy && i < n; i++)
		copy[i] = strdup(environ[i]);
	return copy;
}

/* First of our constructors: the others ask what was inherited. */
__attribute__((constructor(101))) static void inherit(void)
{
	const char *any = sp_env("SAMEPAGE_MERGE_ANY");
	const char *warned = sp_env("SAMEPAGE_UFFD_WARNED");

	inherited.socket = keep("SAMEPAGE_SOCKET");
	inherited.xdg = keep("XDG_RUNTIME_DIR");
	inherited.domain = keep("SAMEPAGE_DOMAIN");
	/* An image that clears its environment (env -i, clearenv()) still
	 * passes merge-any on, and with it the library that serves it. */
	const char *pre = sp_env("LD_PRELOAD");
	if (pre)
		inherited.preload = strdup(pre - strlen("LD_PRELOAD=")); /* environ's string */
	inherited.merge_any = any && *any == '1';
	inherited.uffd_warned = warned && *warned == '1';
	inherited.environ = copy_environ();
}

void sp_env_refresh(void)
{
	char *const *old = inherited.environ;

	inherited.environ = copy_environ();
	for (char *const *e = old; e && *e; e++)
		free(*e);
	free((void *)old);
}

const struct sp_inherited *sp_inherited(void)
{
	return &inherited;
}

static const char *lookup(char *const *env, const char *name)
{
	size_t n = strlen(name);

	for (char *const *e = env; e && *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

const char *sp_env(const char *name)
{
	return lookup(environ, name);
}

const char *sp_env_inherited(const char *name)
{
	return lookup(inherited.environ, name);
}
