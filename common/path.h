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

/* Fill buf with the socket path, creating its directory. 0 or -errno. */
int sp_socket_path(char *buf, size_t len);

#endif
