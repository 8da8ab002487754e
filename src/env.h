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

#endif
