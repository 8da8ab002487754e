/* SPDX-License-Identifier: MIT */
/* conn — see conn.h. */
#define _GNU_SOURCE
#include "conn.h"
#include "os.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

int sp_dial(const char *path, int timeout_s, int nonblock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = timeout_s };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return -errno;
	if (timeout_s > 0) {
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	/* Non-blocking, a Unix socket connects at once or says EAGAIN (its
	 * listen backlog is full: a daemon that is alive but not accepting). */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = -errno;
		raw_close(fd);
		return err;
	}
	return fd;
}

int sp_reply_check(struct sp_msg *m, uint16_t want)
{
	struct sp_ack a;

	if (sp_validate(m))
		return -EPROTO;
	if (m->h.type == want && want != D_ACK)
		return 0;
	if (m->h.type != D_ACK)
		return -EPROTO;
	memcpy(&a, m->p, sizeof(a));
	if (m->fd >= 0) {
		raw_close(m->fd);
		m->fd = -1;
	}
	if (want == D_ACK)
		return a.err > 0 ? -EPROTO : a.err;
	return a.err < 0 ? a.err : -EPROTO;
}

int sp_call(int fd, void *buf, uint16_t type, const void *req, uint32_t len, uint16_t want,
	    struct sp_msg *m)
{
	int err = sp_send(fd, type, req, len, -1);

	if (!err)
		err = sp_recv(fd, buf, m);
	return err ? err : sp_reply_check(m, want);
}

int sp_observe(const char *path, int timeout_s, void *buf)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION, .flags = HELLO_OBSERVER };
	struct sp_msg m;
	int fd = sp_dial(path, timeout_s, 0), err;

	if (fd < 0)
		return fd;
	err = sp_call(fd, buf, C_HELLO, &h, sizeof(h), D_HELLO, &m);
	if (err) {
		raw_close(fd);
		return err;
	}
	return fd;
}
