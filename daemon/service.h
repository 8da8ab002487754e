/* SPDX-License-Identifier: MIT */
/*
 * service — samepaged under a service manager: the two systemd protocols it
 * speaks, socket activation (LISTEN_PID/LISTEN_FDS: the listening socket
 * is inherited as descriptor 3) and readiness notification (NOTIFY_SOCKET:
 * "READY=1", "STATUS=...", "STOPPING=1" datagrams).
 *
 * Written here rather than linked from libsystemd: both protocols are a
 * few lines, documented as stable interfaces (sd_listen_fds(3),
 * sd_notify(3)) that systemd invites programs to implement themselves, and
 * libsystemd would add a build dependency and its own dependencies
 * (compression and crypto libraries) to a per-user daemon that must run
 * unchanged where there is no systemd at all. Without the variables set,
 * nothing here does anything.
 */
#ifndef SAMEPAGE_SERVICE_H
#define SAMEPAGE_SERVICE_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

struct service {
	int listen_fd;        /* the inherited listening socket until taken; -1: none */
	int activated;        /* the socket is the manager's: never unlinked by us */
	int notify_fd;        /* datagram socket towards the manager; -1: not notifying */
	struct sockaddr_un notify_addr;
	socklen_t notify_len;
	uint64_t status_ns;   /* when the status line was last composed */
	char status[128];     /* the last one sent: only a change is sent again */
};

/* Nothing inherited, nobody to notify. */
void service_init(struct service *s);

/* Read the environment: an inherited listening socket (only when LISTEN_PID
 * is our pid, so a daemon spawned by a socket-activated program does not
 * take its parent's sockets) and, when notify is set, NOTIFY_SOCKET. The
 * variables are removed from the environment afterwards, as
 * sd_listen_fds(1) does. 0, or -errno with a message on stderr: -EINVAL
 * for more than one socket or a malformed LISTEN_FDS, -EPROTOTYPE for a
 * socket that is not a listening AF_UNIX SOCK_SEQPACKET one. An unusable
 * NOTIFY_SOCKET is reported and ignored: the daemon still serves. */
int service_open(struct service *s, int notify);

/* The inherited listening socket (non-blocking, close-on-exec), now the
 * caller's; -1 when there is none. */
int service_take_listen_fd(struct service *s);

/* Send one notification ("READY=1\nSTATUS=..."). 0 (also when not
 * notifying) or -errno; a failure is reported once and notifying stops. */
int service_notify(struct service *s, const char *msg);

/* Send "STATUS=text" unless it is the text sent last. */
int service_status(struct service *s, const char *text);

/* 1 when a service manager listens to our notifications. */
int service_notifying(const struct service *s);

void service_close(struct service *s);

#endif
