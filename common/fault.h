/* SPDX-License-Identifier: MIT */
/*
 * fault — fault injection for tests, after CRIU's CRIU_FAULT: the
 * environment variable SAMEPAGE_FAULT holds a comma-separated list of point
 * names (memfd, uffd, connect, fork, defrag); fault_inject("name") is true when the
 * name is listed.
 */
#ifndef SAMEPAGE_FAULT_H
#define SAMEPAGE_FAULT_H

/* Listed in the environment now: a test may switch a point on around one
 * call (fork_paths does for "fork"). Only where sp_env() may be called
 * (env.h): the daemon, the CLI, a wrapper on the program's own thread. */
int fault_inject(const char *point);

/* Listed in the environment the process inherited: for points the
 * library's scanner thread reaches (connect, defrag). */
int fault_inject_inherited(const char *point);

#endif
