/* SPDX-License-Identifier: MIT */
/*
 * connect — the command's connection to the user's daemon (an observer:
 * no memory, not waited for by full scans), and what each failure means
 * to the person who typed the command.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "path.h"

int cli_connect(struct cli *c, int start)
{
	int fd, err;

	c->told = 0;
	if (c->fd >= 0)
		return 0;
	err = sp_socket_path(c->sock, sizeof(c->sock));
	if (err)
		return err;
	fd = sp_observe(c->sock, CLI_WAIT_S, c->buf);
	if (fd < 0 && start && (fd == -ENOENT || fd == -ECONNREFUSED)) {
		err = cli_start_daemon();
		if (err) {
			c->told = 1;
			return err;
		}
		fd = sp_observe(c->sock, CLI_WAIT_S, c->buf);
	}
	if (fd < 0)
		return fd;
	c->fd = fd;
	return 0;
}

void cli_disconnect(struct cli *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

int cli_call(struct cli *c, uint16_t type, const void *req, uint32_t len, uint16_t want,
	     struct sp_msg *m)
{
	int err;

	if (c->fd < 0)
		return -ENOTCONN;
	err = sp_call(c->fd, c->buf, type, req, len, want, m);
	/* A connection that failed midway is not used again: the reply to
	 * this request might still come and answer the next one. */
	if (err && err != -ESRCH && err != -EINVAL)
		cli_disconnect(c);
	return err;
}

int cli_stat(struct cli *c, pid_t pid, struct sp_stat_r *r)
{
	struct sp_statreq q = { .pid = pid };
	struct sp_msg m;
	int err = cli_call(c, C_STAT, &q, sizeof(q), D_STAT, &m);

	if (!err)
		memcpy(r, m.p, sizeof(*r));
	return err;
}

/* The daemon's state letter, as ps shows it, when we know its pid. */
static void daemon_state(const struct cli *c, char *buf, size_t len)
{
	char st = c->daemon_pid > 0 ? proc_state(c->daemon_pid) : '?';

	buf[0] = 0;
	if (st == 'T' || st == 't')
		snprintf(buf, len, "; samepaged (pid %d) is stopped", (int)c->daemon_pid);
	else if (c->daemon_pid > 0)
		snprintf(buf, len, "; samepaged is pid %d", (int)c->daemon_pid);
}

int cli_fail(struct cli *c, const char *what, int err)
{
	char more[96];

	if (c->told)
		return 1;
	switch (err) {
	case -ENOENT:
	case -ECONNREFUSED:
		fprintf(stderr, "samepage %s: no daemon is running for this user (nothing "
				"listens on %s); `samepage daemon` starts one, as does any "
				"program under `samepage run`\n", what, c->sock);
		break;
	case -EAGAIN:
	case -ETIMEDOUT:
		daemon_state(c, more, sizeof(more));
		fprintf(stderr, "samepage %s: the daemon at %s did not answer within %d s%s\n",
			what, c->sock, CLI_WAIT_S, more);
		break;
	case -ECONNRESET:
	case -EPIPE:
	case -EPROTO:
		fprintf(stderr, "samepage %s: the daemon at %s hung up (it exited, or it is a "
				"samepaged of another release that does not know this request)\n",
			what, c->sock);
		break;
	case -EPERM:
		fprintf(stderr, "samepage %s: %s: the directory of the daemon's socket is not this "
				"user's own private (0700) directory\n", what, strerror(-err));
		break;
	default:
		fprintf(stderr, "samepage %s: %s\n", what, strerror(-err));
	}
	c->told = 1;
	return 1;
}
