/* SPDX-License-Identifier: MIT */
/* service — see service.h. */
#define _GNU_SOURCE
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* sd_listen_fds(3): the first inherited descriptor. */
#define LISTEN_FDS_START 3

void service_init(struct service *s)
{
	memset(s, 0, sizeof(*s));
	s->listen_fd = -1;
	s->notify_fd = -1;
}

/* A decimal number filling the whole string; -1 otherwise. */
static long parse_num(const char *v)
{
	char *end;
	long n;

	if (!v || !*v)
		return -1;
	errno = 0;
	n = strtol(v, &end, 10);
	return errno || *end || n < 0 ? -1 : n;
}

/* The socket the manager made must be one our clients can dial. */
static int check_listener(int fd)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	int type = 0, acc = 0;
	socklen_t ilen = sizeof(int);

	if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return -errno;
	if (sa.sun_family != AF_UNIX ||
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &ilen) < 0 || type != SOCK_SEQPACKET ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &ilen) < 0 || !acc)
		return -EPROTOTYPE;
	return 0;
}

/* The loop accepts until EAGAIN, and nothing we exec may inherit it. */
static int adopt_listener(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

static int open_listener(struct service *s)
{
	long pid = parse_num(getenv("LISTEN_PID")), n;
	int err;

	if (pid != (long)getpid())
		return 0; /* unset, or meant for the program that spawned us */
	n = parse_num(getenv("LISTEN_FDS"));
	if (n != 1) {
		sp_log("samepaged: socket activation: LISTEN_FDS=%s, want exactly one socket\n",
		       getenv("LISTEN_FDS") ? getenv("LISTEN_FDS") : "(unset)");
		return -EINVAL;
	}
	err = check_listener(LISTEN_FDS_START);
	if (err == -EPROTOTYPE)
		sp_log("samepaged: socket activation: descriptor %d is not a listening unix "
		       "SOCK_SEQPACKET socket (ListenSequentialPacket= in the .socket unit)\n",
		       LISTEN_FDS_START);
	else if (err)
		sp_log("samepaged: socket activation: descriptor %d: %s\n", LISTEN_FDS_START,
		       strerror(-err));
	if (!err)
		err = adopt_listener(LISTEN_FDS_START);
	if (err)
		return err;
	s->listen_fd = LISTEN_FDS_START;
	s->activated = 1;
	return 0;
}

/* NOTIFY_SOCKET: a path, or "@name" for an abstract socket. */
static int notify_address(struct service *s, const char *v)
{
	size_t n = strlen(v);

	if ((v[0] != '/' && v[0] != '@') || n < 2 || n > sizeof(s->notify_addr.sun_path))
		return -EAFNOSUPPORT;
	memset(&s->notify_addr, 0, sizeof(s->notify_addr));
	s->notify_addr.sun_family = AF_UNIX;
	memcpy(s->notify_addr.sun_path, v, n);
	if (v[0] == '@')
		s->notify_addr.sun_path[0] = 0;
	s->notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	return 0;
}

static void open_notify(struct service *s)
{
	const char *v = getenv("NOTIFY_SOCKET");
	int err;

	if (!v || !*v)
		return;
	err = notify_address(s, v);
	if (!err) {
		s->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		err = s->notify_fd < 0 ? -errno : 0;
	}
	if (err)
		sp_log("samepaged: NOTIFY_SOCKET=%s: %s; not notifying the service manager\n", v,
		       strerror(-err));
}

int service_open(struct service *s, int notify)
{
	int err = open_listener(s);

	/* As sd_listen_fds(1) and sd_notify(1): nothing we start inherits them. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (!err && notify)
		open_notify(s);
	unsetenv("NOTIFY_SOCKET");
	return err;
}

int service_take_listen_fd(struct service *s)
{
	int fd = s->listen_fd;

	s->listen_fd = -1;
	return fd;
}

int service_notifying(const struct service *s)
{
	return s->notify_fd >= 0;
}

int service_notify(struct service *s, const char *msg)
{
	ssize_t n;

	if (s->notify_fd < 0)
		return 0;
	n = sendto(s->notify_fd, msg, strlen(msg), MSG_NOSIGNAL,
		   (const struct sockaddr *)&s->notify_addr, s->notify_len);
	if (n == (ssize_t)strlen(msg))
		return 0;
	int err = n < 0 ? -errno : -EMSGSIZE;
	/* The manager went away or never listened: say so once, then serve
	 * on without it rather than failing every few seconds. */
	sp_log("samepaged: notifying the service manager: %s; not notifying any more\n",
	       strerror(-err));
	close(s->notify_fd);
	s->notify_fd = -1;
	return err;
}

int service_status(struct service *s, const char *text)
{
	char msg[sizeof(s->status) + 8];
	int err;

	if (s->notify_fd < 0 || !strcmp(text, s->status))
		return 0;
	snprintf(msg, sizeof(msg), "STATUS=%s", text);
	err = service_notify(s, msg);
	if (!err)
		snprintf(s->status, sizeof(s->status), "%s", text);
	return err;
}

void service_close(struct service *s)
{
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->notify_fd >= 0)
		close(s->notify_fd);
	s->listen_fd = s->notify_fd = -1;
}
