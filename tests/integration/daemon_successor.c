/* SPDX-License-Identifier: MIT */
/*
 * A daemon that exits late leaves its successor's socket alone. Daemon A
 * serves a socket; its directory is removed and recreated (a script
 * cleaning up, as examples/redis.sh-like harnesses do) and daemon B starts
 * on the same path; then A gets SIGTERM and exits. B's socket must still
 * be there and answer: A used to unlink the path on exit, whoever owned it,
 * and every process that then forked failed to hand its references over
 * (fork: ENOMEM) — found with Redis's BGSAVE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static pid_t start(const char *sock)
{
	pid_t pid = fork();

	TU_CHECK(pid >= 0, "fork");
	if (pid == 0) {
		execl(tu_bin("samepaged"), "samepaged", "--socket", sock, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int answers(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ok;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

static int listening(void *arg)
{
	return answers(arg);
}

int main(void)
{
	char dir[] = "/tmp/samepage-succ.XXXXXX", sock[128], cmd[160];
	pid_t a, b;
	int st;

	TU_CHECK(mkdtemp(dir), "mkdtemp");
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	a = start(sock);
	TU_CHECK(tu_wait(listening, sock, 10), "daemon A never listened");
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -m 700 %s", dir, dir);
	TU_CHECK(system(cmd) == 0, "%s", cmd);
	TU_CHECK(!answers(sock), "socket still there after its directory was removed");
	b = start(sock);
	TU_CHECK(tu_wait(listening, sock, 10), "daemon B never listened");
	kill(a, SIGTERM);
	TU_CHECK(waitpid(a, &st, 0) == a, "waitpid A");
	usleep(200000);
	TU_CHECK(answers(sock), "daemon A's exit removed daemon B's socket");
	kill(b, SIGTERM);
	waitpid(b, &st, 0);
	TU_CHECK(access(sock, F_OK) != 0, "daemon B left its own socket behind");
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	TU_CHECK(system(cmd) == 0, "%s", cmd);
	printf("daemon_successor: a late exit leaves the successor's socket alone\n");
	return 0;
}
