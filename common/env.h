/* SPDX-License-Identifier: MIT */
/*
 * env — samepage's environment variables, read from `environ` itself.
 *
 * Never through getenv()/setenv(): a program may export its own (bash
 * does), and those run before the program has set itself up when our
 * constructors call them; under bash they answered differently before and
 * after bash's own start, so the library dialled another daemon's socket
 * than the one `samepage run` had started. Nor does samepage ever write
 * the environment: the exec wrappers put what the next image needs into
 * the environment they pass (preload.c).
 */
#ifndef SAMEPAGE_ENV_H
#define SAMEPAGE_ENV_H

/* The value of name in environ now, or NULL. Only on a thread of the
 * program's own, inside a call it made: another of its threads may be in
 * setenv(), which frees the array we would walk. The library's scanner
 * thread reads sp_env_inherited() instead. */
const char *sp_env(const char *name);

/* The value of name in the environment this process inherited, or NULL:
 * safe from any thread at any time. Inherited at exec, or at fork: the
 * library refreshes it when it starts and in a fork child
 * (sp_env_refresh()), so a test or program that sets a variable before
 * it forks its workers passes it on, as exec would. */
const char *sp_env_inherited(const char *name);

/* Copy the environment again. Only where nothing reads the copy meanwhile:
 * before the library's threads start, or in a fork child. */
void sp_env_refresh(void);

/* What this process inherited from the image that exec'd it, read before
 * main() (a program may rewrite its environment later: Redis's
 * setproctitle does clearenv() + setenv()). Written once, by a
 * constructor; NULL for variables that were not set. */
struct sp_inherited {
	const char *socket;   /* SAMEPAGE_SOCKET */
	const char *xdg;      /* XDG_RUNTIME_DIR */
	const char *domain;   /* SAMEPAGE_DOMAIN */
	const char *preload;  /* "LD_PRELOAD=...", the whole variable */
	int merge_any;        /* SAMEPAGE_MERGE_ANY=1 */
	/* SAMEPAGE_UFFD_WARNED=1: `samepage run` found userfaultfd out of
	 * reach and told the user what to do, once for all its processes. */
	int uffd_warned;
	/* The whole inherited environment, copied (NULL-terminated): what a
	 * daemon the scanner starts inherits in turn. Refreshed by
	 * sp_env_refresh(). */
	char *const *environ;
};
const struct sp_inherited *sp_inherited(void);

/* Longest merge domain name: longer ones are refused, never cut. */
#define SP_DOMAIN_MAX 255

#endif
