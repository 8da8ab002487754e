/* SPDX-License-Identifier: MIT */
/*
 * exe — can an executable about to run load libsamepage? A statically
 * linked program (busybox, most Go binaries) has no dynamic loader to
 * preload it, and the loader ignores LD_PRELOAD paths for a set-user-ID or
 * set-group-ID program run by someone else (secure-execution mode): both
 * would run unmerged, and `samepage run` says so rather than stay silent.
 */
#ifndef SAMEPAGE_EXE_H
#define SAMEPAGE_EXE_H

#include <stddef.h>

enum sp_exec_kind {
	SP_EXEC_OK,      /* dynamically linked, or not ELF (a script: its interpreter runs) */
	SP_EXEC_STATIC,  /* no PT_INTERP: nothing loads the library */
	SP_EXEC_SECURE,  /* set-ID for someone else: LD_PRELOAD ignored */
};

/* What path is (enum sp_exec_kind), or -errno when it cannot be read. */
int sp_exec_kind(const char *path);
/* The file execvp() would run for name (searched in $PATH when it has no
 * '/'): 0, or -ENOENT. */
int sp_exec_which(const char *name, char *out, size_t len);
/* The one-line reason path runs unmerged, for a kind other than SP_EXEC_OK. */
const char *sp_exec_why(int kind);

#endif
