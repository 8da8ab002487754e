/* SPDX-License-Identifier: MIT */
/*
 * path — where the user's daemon listens. $SAMEPAGE_SOCKET if set, else
 * $XDG_RUNTIME_DIR/samepage/sock, else /tmp/samepage-UID/sock. The directory
 * is created 0700 and must belong to the caller: a directory of another
 * user or open to others is refused (-EPERM), so no one else can plant a
 * socket for our processes to hand their memory to.
 */
#ifndef SAMEPAGE_PATH_H
#define SAMEPAGE_PATH_H

#include <stddef.h>

/* Where the daemon listens, as the environment names it: the variables
 * read once, by whoever may read the environment (env.h). */
struct sp_where {
	const char *socket; /* SAMEPAGE_SOCKET or NULL */
	const char *xdg;    /* XDG_RUNTIME_DIR or NULL */
};

/* As inherited (env.h); for a variable unset then, as now (a program, or a
 * test, that sets it itself). Only where sp_env() may be called. */
void sp_where_now(struct sp_where *w);

/* Fill buf with the socket path w names, creating its directory. 0 or -errno. */
int sp_socket_path_at(const struct sp_where *w, char *buf, size_t len);

/* The two above in one: the daemon and the CLI. */
int sp_socket_path(char *buf, size_t len);

#endif
