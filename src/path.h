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
/* Connect a SOCK_SEQPACKET socket to path; with send and receive timeouts
 * of timeout_s when > 0; non-blocking when nonblock. The fd, or -errno
 * (-EAGAIN: the daemon's backlog is full, it is alive but busy). */
int sp_dial(const char *path, int timeout_s, int nonblock);

#endif
