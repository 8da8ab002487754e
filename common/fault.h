/* SPDX-License-Identifier: MIT */
/*
 * fault — fault injection for tests, after CRIU's CRIU_FAULT: the
 * environment variable SAMEPAGE_FAULT holds a comma-separated list of point
 * names (memfd, uffd, connect, fork, defrag); fault_inject("name") is true when the
 * name is listed. Read once per process.
 */
#ifndef SAMEPAGE_FAULT_H
#define SAMEPAGE_FAULT_H

int fault_inject(const char *point);

#endif
