/* SPDX-License-Identifier: MIT */
/* samepaged — the user's daemon; see daemon/daemon.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon.h"
#include "path.h"

static void usage(void)
{
	fprintf(stderr, "usage: samepaged [--daemonize] [--socket PATH] [--idle-exit SECONDS]\n");
	exit(2);
}

/* Detach, and let the caller return only once the socket listens: the
 * grandchild writes one byte (0 ok, else errno) into the pipe. */
static int daemonize(int *ready)
{
	int p[2];
	pid_t pid;
	unsigned char st = EIO;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &st, 1) != 1)
			st = EIO;
		_exit(st == 0 || st == EADDRINUSE ? 0 : 1);
	}
	close(p[0]);
	setsid();
	if (fork() > 0)
		_exit(0);
	int nul = open("/dev/null", O_RDWR);
	const char *log = getenv("SAMEPAGE_LOG");
	int lfd = log ? open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(lfd >= 0 ? lfd : nul, 2);
	*ready = p[1];
	return 0;
}

int main(int argc, char **argv)
{
	char path[108];
	int idle = 0, detach = 0, ready = -1, err;
	const char *sock = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--daemonize"))
			detach = 1;
		else if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			sock = argv[++i];
		else if (!strcmp(argv[i], "--idle-exit") && i + 1 < argc)
			idle = atoi(argv[++i]);
		else
			usage();
	}
	if (detach && !idle)
		idle = 60; /* started on demand: leave when nobody has used it for a minute */
	if (sock)
		snprintf(path, sizeof(path), "%s", sock);
	else if ((err = sp_socket_path(path, sizeof(path))) < 0) {
		fprintf(stderr, "samepaged: socket path: %s\n", strerror(-err));
		return 1;
	}
	sp_log_init("samepaged");
	signal(SIGPIPE, SIG_IGN);
	/* Started on demand, we inherit whatever address space limit the
	 * starting program runs under (ulimit -v): the pool's segments need
	 * more. As far as the hard limit allows. */
	struct rlimit as;
	if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != as.rlim_max) {
		as.rlim_cur = as.rlim_max;
		setrlimit(RLIMIT_AS, &as);
	}
	if (detach && (err = daemonize(&ready)) < 0) {
		fprintf(stderr, "samepaged: %s\n", strerror(-err));
		return 1;
	}
	err = samepaged_run(path, idle, ready);
	if (err == -EADDRINUSE) {
		if (!detach)
			fprintf(stderr, "samepaged: another daemon serves %s\n", path);
		return detach ? 0 : 1;
	}
	if (err) {
		fprintf(stderr, "samepaged: %s: %s\n", path, strerror(-err));
		return 1;
	}
	return 0;
}
