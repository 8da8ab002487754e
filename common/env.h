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

/* The value of name in environ now, or NULL. */
const char *sp_env(const char *name);

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
};
const struct sp_inherited *sp_inherited(void);

/* Longest merge domain name: longer ones are refused, never cut. */
#define SP_DOMAIN_MAX 255

#endif
