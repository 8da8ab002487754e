/* SPDX-License-Identifier: MIT */
/*
 * samepaged under a service manager (daemon/service.c), driven as systemd
 * drives it through dist/systemd/samepaged.{socket,service}:
 *  - started with a listening socket as descriptor 3 (LISTEN_PID is its
 *    pid, LISTEN_FDS=1), it serves that socket: READY=1 arrives on
 *    NOTIFY_SOCKET, `samepage status` answers there, and it takes no lock;
 *  - its STATUS= line says what merging saved in how many processes, and
 *    follows two processes merging 2 MiB and leaving;
 *  - with no process left it stays (no idle exit); SIGTERM sends
 *    STOPPING=1, exits 0 and leaves the socket to the manager;
 *  - two sockets, or a stream socket, are refused with a message;
 *  - LISTEN_PID of another process is not for it: it binds its own path;
 *  - a daemon started by hand on a path the manager listens at, with no
 *    daemon behind it yet, leaves the manager's socket alone;
 *  - detached (--daemonize) it never notifies, even with NOTIFY_SOCKET set
 *    (a daemon started on demand from inside a service inherits the
 *    service's variable and must not speak for it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 512u /* 2 MiB */
#define LEN ((size_t)NPAGES * PAGE)
#define STATUS_WAIT_S 20 /* the daemon composes its status every 5 s */

/* The test's state: its directory, the notify socket, the daemon under test. */
static struct {
	char dir[64];
	char sock[128];     /* the activated daemon's socket */
	int notify;         /* our end of NOTIFY_SOCKET */
	pid_t daemon;       /* killed at exit if still running */
	char last[256];     /* the last notification received */
} t = { .notify = -1 };

static void cleanup(void)
{
	char cmd[128];

	if (t.daemon > 0) {
		kill(t.daemon, SIGKILL);
		waitpid(t.daemon, NULL, 0);
	}
	if (t.dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", t.dir);
		if (system(cmd) != 0)
			fprintf(stderr, "service: could not remove %s\n", t.dir);
	}
}

static void path_in_dir(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", t.dir, name);
}

static int unix_socket(int type, const char *path, int listening)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0, "socket: %s", strerror(errno));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	TU_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path,
		 strerror(errno));
	TU_CHECK(!listening || listen(fd, 64) == 0, "listen: %s", strerror(errno));
	return fd;
}

/* Descriptor from, as descriptor to, kept across exec. */
static void pass_fd(int from, int to)
{
	if (from == to)
		fcntl(to, F_SETFD, 0);
	else if (dup2(from, to) < 0)
		_exit(126);
}

/* How the daemon is started: which sockets it inherits, whose pid
 * LISTEN_PID names, its arguments. */
struct start {
	int fds[2];          /* listening sockets for descriptors 3 and 4; -1: none */
	int other_pid;       /* LISTEN_PID is our pid, not the daemon's */
	const char *args[6]; /* after "samepaged", NULL-terminated */
	const char *err;     /* file for its stderr */
};

static pid_t start_daemon(const struct start *s)
{
	char num[16], pid[16];
	const char *argv[8] = { "samepaged" };
	int nfds = (s->fds[0] >= 0) + (s->fds[1] >= 0);
	pid_t parent = getpid(), p = fork();

	TU_CHECK(p >= 0, "fork: %s", strerror(errno));
	if (p > 0)
		return p;
	for (int i = 0; i < 2; i++)
		if (s->fds[i] >= 0)
			pass_fd(s->fds[i], 3 + i);
	int efd = open(s->err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (efd >= 0)
		dup2(efd, 2);
	snprintf(num, sizeof(num), "%d", nfds);
	snprintf(pid, sizeof(pid), "%d", (int)(s->other_pid ? parent : getpid()));
	if (nfds) {
		setenv("LISTEN_FDS", num, 1);
		setenv("LISTEN_PID", pid, 1);
	}
	for (int i = 0; s->args[i] && i < 6; i++)
		argv[i + 1] = s->args[i];
	execv(tu_bin("samepaged"), (char *const *)argv);
	_exit(127);
}

/* The next notification within ms, into t.last; 0, or -1 on timeout. */
static int next_note(int ms)
{
	struct pollfd p = { .fd = t.notify, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, ms) <= 0)
		return -1;
	n = recv(t.notify, t.last, sizeof(t.last) - 1, 0);
	TU_CHECK(n >= 0, "recv notify: %s", strerror(errno));
	t.last[n] = 0;
	return 0;
}

/* Forget what earlier daemons sent (each phase waits for its daemon's
 * exit first, so their messages are all queued by then). */
static void drain(void)
{
	while (next_note(0) == 0)
		;
}

/* Wait up to secs for a notification containing want; 1 if it came. */
static int note_with(const char *want, int secs)
{
	double end = tu_now() + secs;

	while (tu_now() < end)
		if (next_note(100) == 0 && strstr(t.last, want))
			return 1;
	return 0;
}

/* A STATUS= line of n processes that saved at least min_mib; 1 if it came. */
static int status_with(unsigned n, double min_mib, int secs)
{
	double end = tu_now() + secs, mib;
	unsigned procs;

	while (tu_now() < end) {
		if (next_note(100) || strncmp(t.last, "STATUS=", 7))
			continue;
		TU_CHECK(sscanf(t.last, "STATUS=saved %lf MiB in %u process", &mib, &procs) == 2,
			 "malformed status line '%s'", t.last);
		if (procs == n && mib >= min_mib)
			return 1;
	}
	return 0;
}

static int exit_status(pid_t p, int secs)
{
	int st;

	for (int i = 0; i < secs * 20; i++) {
		if (waitpid(p, &st, WNOHANG) == p)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		tu_sleep_ms(50);
	}
	TU_FAIL("daemon %d still running after %d s", (int)p, secs);
}

static void expect_file(const char *path, int present, const char *why)
{
	struct stat st;

	TU_CHECK((lstat(path, &st) == 0) == present, "%s %s: %s", path,
		 present ? "missing" : "present", why);
}

static void expect_in_file(const char *path, const char *want)
{
	char buf[2048];

	TU_CHECK(tu_read_text(path, buf, sizeof(buf)) == 0, "read %s", path);
	TU_CHECK(strstr(buf, want), "%s does not say '%s': %s", path, want, buf);
}

/* ---- processes with the same 2 MiB ---- */

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN);
	char cmd;
	(void)arg;

	tu_fill(p, LEN, 13);
	if (samepage_madvise(p, LEN, MADV_MERGEABLE))
		return 1;
	tu_send(wr, "r", 1);
	return tu_recv(rd, &cmd, 1) == 0 ? 0 : 1;
}

static int can_merge(void)
{
	long fd = syscall(SYS_userfaultfd, O_CLOEXEC);

	if (fd < 0)
		return 0;
	close((int)fd);
	return 1;
}

static void merging_status(void)
{
	struct tu_child c[2];
	char ok;

	for (int i = 0; i < 2; i++) {
		tu_spawn(&c[i], child, NULL);
		TU_CHECK(tu_recv(c[i].rd, &ok, 1) == 0, "child %d died", i);
	}
	TU_CHECK(status_with(2, 1.5, STATUS_WAIT_S),
		 "no 'saved >= 1.5 MiB in 2 processes' status within %d s (last: '%s')",
		 STATUS_WAIT_S, t.last);
	for (int i = 0; i < 2; i++) {
		tu_send(c[i].wr, "q", 1);
		TU_CHECK(tu_reap(&c[i]) == 0, "child %d failed", i);
	}
	TU_CHECK(status_with(0, 0, STATUS_WAIT_S),
		 "no 'in 0 processes' status after they left (last: '%s')", t.last);
}

/* ---- the activated daemon ---- */

static void activated(void)
{
	char err[160], lock[160];
	int lfd = unix_socket(SOCK_SEQPACKET, t.sock, 1);
	struct start s = { .fds = { lfd, -1 }, .err = err };

	path_in_dir(err, sizeof(err), "err-activated");
	t.daemon = start_daemon(&s);
	close(lfd);
	TU_CHECK(note_with("READY=1", 10), "no READY=1 within 10 s (last: '%s')", t.last);
	TU_CHECK(status_with(0, 0, 10), "no first status line (last: '%s')", t.last);
	TU_CHECK(tu_cli("status >/dev/null") == 0, "samepage status on the activated socket failed");
	snprintf(lock, sizeof(lock), "%s.lock", t.sock);
	expect_file(lock, 0, "an activated daemon takes no lock: the manager owns the path");
	if (can_merge())
		merging_status();
	else
		printf("service: no userfaultfd here: the status of merging processes was not checked\n");
	tu_sleep_ms(1500);
	TU_CHECK(kill(t.daemon, 0) == 0, "the activated daemon left when idle");
	kill(t.daemon, SIGTERM);
	TU_CHECK(note_with("STOPPING=1", 10), "no STOPPING=1 on SIGTERM (last: '%s')", t.last);
	TU_CHECK(exit_status(t.daemon, 10) == 0, "activated daemon: non-zero exit on SIGTERM");
	t.daemon = 0;
	expect_file(t.sock, 1, "the manager's socket must outlive the daemon");
}

/* ---- refused and ignored activations ---- */

static void refused(const char *name, int type, int nfds, const char *want)
{
	char path[160], path2[160], err[160];
	struct start s = { .fds = { -1, -1 }, .err = err };
	pid_t p;

	drain();
	snprintf(path, sizeof(path), "%s/%s", t.dir, name);
	snprintf(path2, sizeof(path2), "%s/%s-2", t.dir, name);
	snprintf(err, sizeof(err), "%s/err-%s", t.dir, name);
	s.fds[0] = unix_socket(type, path, 1);
	if (nfds == 2)
		s.fds[1] = unix_socket(type, path2, 1);
	p = start_daemon(&s);
	for (int i = 0; i < nfds; i++)
		close(s.fds[i]);
	TU_CHECK(exit_status(p, 10) == 1, "%s: the daemon did not refuse", name);
	expect_in_file(err, want);
	TU_CHECK(next_note(200) < 0, "%s: a refused daemon notified '%s'", name, t.last);
}

static void not_ours(void)
{
	char own[160], other[160], err[160];
	int lfd;
	struct start s = { .fds = { -1, -1 }, .other_pid = 1, .err = err,
			   .args = { "--socket", own } };
	pid_t p;

	drain();
	path_in_dir(own, sizeof(own), "own");
	path_in_dir(other, sizeof(other), "other");
	path_in_dir(err, sizeof(err), "err-other");
	lfd = unix_socket(SOCK_SEQPACKET, other, 1);
	s.fds[0] = lfd;
	p = t.daemon = start_daemon(&s);
	close(lfd);
	TU_CHECK(note_with("READY=1", 10), "LISTEN_PID not ours: no READY=1 (last: '%s')", t.last);
	expect_file(own, 1, "LISTEN_PID of another process: the daemon binds its own path");
	kill(p, SIGTERM);
	TU_CHECK(exit_status(p, 10) == 0, "daemon on its own path: non-zero exit");
	t.daemon = 0;
	expect_file(own, 0, "a daemon removes the socket it bound itself");
}

/* The manager's socket, before any daemon was started on it. */
static void not_replaced(void)
{
	char held[160], err[160];
	struct start s = { .fds = { -1, -1 }, .err = err,
			   .args = { "--daemonize", "--socket", held, "--idle-exit", "1" } };
	struct stat before, after;
	int lfd;

	path_in_dir(held, sizeof(held), "held");
	path_in_dir(err, sizeof(err), "err-held");
	lfd = unix_socket(SOCK_SEQPACKET, held, 1);
	TU_CHECK(stat(held, &before) == 0, "stat %s", held);
	TU_CHECK(exit_status(start_daemon(&s), 10) == 0,
		 "--daemonize on a live socket: the starter failed");
	TU_CHECK(stat(held, &after) == 0 && after.st_ino == before.st_ino,
		 "a daemon started by hand replaced the manager's socket");
	close(lfd);
}

static void detached_silent(void)
{
	char det[160], err[160];
	struct start s = { .fds = { -1, -1 }, .err = err,
			   .args = { "--daemonize", "--socket", det, "--idle-exit", "1" } };
	pid_t p;

	drain();
	path_in_dir(det, sizeof(det), "det");
	path_in_dir(err, sizeof(err), "err-det");
	p = start_daemon(&s);
	TU_CHECK(exit_status(p, 10) == 0, "--daemonize: the starter failed");
	expect_file(det, 1, "--daemonize returned before listening");
	/* It leaves after a second idle; nothing may come meanwhile. */
	for (int i = 0; i < 60; i++) {
		TU_CHECK(next_note(100) < 0, "a detached daemon notified '%s'", t.last);
		if (access(det, F_OK) != 0)
			return;
	}
	TU_FAIL("the detached daemon did not leave after --idle-exit 1");
}

int main(void)
{
	char notify[160];

	snprintf(t.dir, sizeof(t.dir), "/tmp/sp-service-XXXXXX");
	TU_CHECK(mkdtemp(t.dir), "mkdtemp: %s", strerror(errno));
	atexit(cleanup);
	path_in_dir(t.sock, sizeof(t.sock), "sock");
	path_in_dir(notify, sizeof(notify), "notify");
	t.notify = unix_socket(SOCK_DGRAM, notify, 0);
	setenv("NOTIFY_SOCKET", notify, 1);
	setenv("SAMEPAGE_SOCKET", t.sock, 1);
	/* Never a daemon of another build or of the user's own. */
	setenv("SAMEPAGE_DAEMON", tu_bin("samepaged"), 1);

	activated();
	refused("two", SOCK_SEQPACKET, 2, "want exactly one socket");
	refused("stream", SOCK_STREAM, 1, "not a listening unix SOCK_SEQPACKET socket");
	not_ours();
	not_replaced();
	detached_silent();
	printf("service: ok\n");
	return 0;
}
