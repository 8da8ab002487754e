/* SPDX-License-Identifier: MIT */
/*
 * Invariant 6: only processes of the same user share pages.
 *
 * Part 1, the daemon: A and B (root) merge the same 4 MiB. The test opens
 * the daemon's socket to everyone (directory 0755, socket 0777), and a
 * child that became `nobody` connects and sends requests: a valid C_HELLO,
 * and after it requests that would stop or unmerge everything or hand out a
 * pool segment. The daemon must close each such connection without a
 * reply, and the root processes must not notice: still merged on the same
 * frames, correct bytes, knobs unchanged, and a third root process merges
 * with them afterwards.
 *
 * Part 2, where the socket lives (common/path.h): without $SAMEPAGE_SOCKET the
 * socket directory is $XDG_RUNTIME_DIR/samepage, created 0700; one that
 * belongs to another user, is open to others, is a symlink or is not a
 * directory is refused with -EPERM, so no one can plant a socket for our
 * processes to hand their memory to. Tested on sp_socket_path itself (as
 * root and as nobody) and end to end: samepaged, `samepage status` and a
 * library user all refuse such a directory and leave it empty.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto.h"
#include "samepage.h"
#include "testutil.h"

/* sp_socket_path() is internal to libsamepage (hidden): test this copy of
 * the very same source. */
#include "env.c"
#include "path.c"

#define N 1024u
#define NOBODY 65534

/* ---- root processes ---- */

static int holder(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)N * PAGE), *want = malloc((size_t)N * PAGE);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	(void)arg;
	tu_fill(p, (size_t)N * PAGE, 42);
	memcpy(want, p, (size_t)N * PAGE);
	TU_CHECK(madvise(p, (size_t)N * PAGE, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		int ok = !memcmp(p, want, (size_t)N * PAGE);
		if (cmd == 'q')
			return 0;
		tu_send(wr, &ok, sizeof(ok));
	}
	return 3;
}

static struct tu_child A, B, C;
static uintptr_t aa, ba, ca;

static int merged(void *arg)
{
	pid_t p[3] = { A.pid, B.pid, C.pid };
	uintptr_t a[3] = { aa, ba, ca };
	int n = arg ? 3 : 2;

	return tu_frames(p, a, n, N) <= N + 4;
}

static void content_ok(struct tu_child *c, const char *who)
{
	int ok = 0;

	TU_CHECK(tu_send(c->wr, "v", 1) == 0 && tu_recv(c->rd, &ok, sizeof(ok)) == 0,
		 "%s died", who);
	TU_CHECK(ok, "%s's memory is wrong", who);
}

/* ---- another user ---- */

static void become_nobody(void)
{
	if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY) || getuid() != NOBODY)
		TU_FAIL("cannot become uid %d: %m", NOBODY);
}

static int send_msg(int fd, uint16_t type, const void *p, size_t n)
{
	unsigned char buf[256];
	struct sp_hdr h = { .type = type, .len = (uint32_t)n };

	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), p, n);
	return send(fd, buf, sizeof(h) + n, MSG_NOSIGNAL) == (ssize_t)(sizeof(h) + n) ? 0 : -errno;
}

/* In the nobody child: 0 when the daemon closed every connection unanswered. */
static int intruder(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	struct sp_set run2 = { .knob = KNOB_RUN, .value = 2 };
	struct sp_set run0 = { .knob = KNOB_RUN, .value = 0 };
	struct sp_unmerge um = { .pid = 0 };
	struct sp_getseg seg0 = { .seg = 0 };
	struct sp_statreq stq = { 0 };
	struct { uint16_t type; const void *p; size_t n; const char *what; } after[] = {
		{ 0, NULL, 0, "C_HELLO alone" },
		{ C_SET, &run2, sizeof(run2), "C_SET run=2" },
		{ C_SET, &run0, sizeof(run0), "C_SET run=0" },
		{ C_UNMERGE, &um, sizeof(um), "C_UNMERGE of every process" },
		{ C_GETSEG, &seg0, sizeof(seg0), "C_GETSEG 0" },
		{ C_STAT, &stq, sizeof(stq), "C_STAT" },
	};
	int bad = 0;

	become_nobody();
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	for (unsigned i = 0; i < sizeof(after) / sizeof(after[0]); i++) {
		unsigned char buf[SP_MAX_MSG];
		union { char b[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr a; } cb;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b,
				     .msg_controllen = sizeof(cb.b) };
		struct pollfd pf;
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		ssize_t n;

		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			fprintf(stderr, "FAIL: uid %d cannot connect to %s (%m): the test's "
					"chmod did not open the socket, nothing was tested\n",
				NOBODY, sock);
			return 2;
		}
		send_msg(fd, C_HELLO, &h, sizeof(h)); /* may fail: already closed */
		if (after[i].type)
			send_msg(fd, after[i].type, after[i].p, after[i].n);
		pf = (struct pollfd){ .fd = fd, .events = POLLIN };
		if (poll(&pf, 1, 2000) != 1) {
			fprintf(stderr, "FAIL: %s from uid %d: connection still open after 2 s\n",
				after[i].what, NOBODY);
			bad++;
		} else if ((n = recvmsg(fd, &mh, MSG_DONTWAIT)) > 0) {
			struct sp_hdr rh;
			memcpy(&rh, buf, sizeof(rh));
			fprintf(stderr, "FAIL: %s from uid %d: the daemon answered (type %u%s)\n",
				after[i].what, NOBODY, rh.type,
				CMSG_FIRSTHDR(&mh) ? ", with a descriptor" : "");
			bad++;
		} else if (n < 0 && errno != ECONNRESET) {
			fprintf(stderr, "FAIL: %s from uid %d: recv: %m\n", after[i].what, NOBODY);
			bad++;
		}
		close(fd);
	}
	return bad ? 1 : 0;
}

static int run_child(int (*fn)(const void *), const void *arg)
{
	pid_t pid = fork();
	int st;

	TU_CHECK(pid >= 0, "fork: %m");
	if (pid == 0)
		_exit(fn(arg));
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int intruder_fn(const void *arg) { return intruder(arg); }

/* ---- part 2: the socket directory ---- */

static char xdir[64], ydir[64];

static void cleanup(void)
{
	char cmd[200];

	if (xdir[0] && getuid() == 0) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s %s", xdir, ydir[0] ? ydir : "");
		if (system(cmd)) {
			/* leftover temp dir */
		}
	}
}

/* sp_socket_path with only XDG_RUNTIME_DIR=xdg; returns its result. */
static int path_with_xdg(const char *xdg, char *out, size_t len)
{
	char *saved = getenv("SAMEPAGE_SOCKET") ? strdup(getenv("SAMEPAGE_SOCKET")) : NULL;
	int err;

	unsetenv("SAMEPAGE_SOCKET");
	setenv("XDG_RUNTIME_DIR", xdg, 1);
	err = sp_socket_path(out, len);
	unsetenv("XDG_RUNTIME_DIR");
	if (saved) {
		setenv("SAMEPAGE_SOCKET", saved, 1);
		free(saved);
	}
	return err;
}

static void reset_dir(const char *dir)
{
	char cmd[200];

	snprintf(cmd, sizeof(cmd), "rm -rf %s/samepage", dir);
	TU_CHECK(system(cmd) == 0, "%s", cmd);
}

/* Prepare xdir/samepage as told, and expect sp_socket_path to say -EPERM. */
static void expect_refused(const char *what, uid_t uid, mode_t mode, int kind)
{
	char sub[128], buf[256];
	int err;

	reset_dir(xdir);
	snprintf(sub, sizeof(sub), "%s/samepage", xdir);
	if (kind == 0) {
		TU_CHECK(mkdir(sub, 0700) == 0, "mkdir %s: %m", sub);
		TU_CHECK(chown(sub, uid, uid) == 0 && chmod(sub, mode) == 0, "chown/chmod %s", sub);
	} else if (kind == 1) { /* a symlink to a directory that would be fine */
		char target[128];
		snprintf(target, sizeof(target), "%s/real", xdir);
		mkdir(target, 0700);
		TU_CHECK(symlink(target, sub) == 0, "symlink: %m");
	} else { /* a regular file */
		int fd = open(sub, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		TU_CHECK(fd >= 0, "create %s", sub);
		close(fd);
	}
	err = path_with_xdg(xdir, buf, sizeof(buf));
	TU_CHECK(err == -EPERM, "socket directory %s: sp_socket_path returned %d (%s), want "
		 "-EPERM", what, err, err ? strerror(-err) : buf);
	printf("refused: socket directory %s\n", what);
}

struct nobody_case { const char *what; uid_t uid; mode_t mode; };

static int nobody_path(const void *arg)
{
	const struct nobody_case *c = arg;
	char buf[256];
	int err;

	become_nobody();
	err = path_with_xdg(ydir, buf, sizeof(buf));
	if (err != -EPERM) {
		fprintf(stderr, "FAIL: as uid %d, socket directory %s: sp_socket_path returned "
				"%d (%s), want -EPERM\n", NOBODY, c->what, err,
			err ? strerror(-err) : buf);
		return 1;
	}
	return 0;
}

/* Run tool (argv) with SAMEPAGE_SOCKET unset and XDG_RUNTIME_DIR=xdir;
 * returns its exit status, stderr in out. */
static int run_tool(char *const argv[], char *out, size_t len)
{
	int p[2], st;
	pid_t pid;
	ssize_t n, got = 0;

	TU_CHECK(pipe(p) == 0, "pipe");
	pid = fork();
	TU_CHECK(pid >= 0, "fork");
	if (pid == 0) {
		dup2(p[1], 2);
		dup2(p[1], 1);
		unsetenv("SAMEPAGE_SOCKET");
		setenv("XDG_RUNTIME_DIR", xdir, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	close(p[1]);
	while (got < (ssize_t)len - 1 && (n = read(p[0], out + got, len - 1 - got)) > 0)
		got += n;
	out[got] = 0;
	close(p[0]);
	TU_CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int dir_empty(const char *dir)
{
	char cmd[200];

	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s)\"", dir);
	return system(cmd) == 0;
}

static int library_user(const void *arg)
{
	struct samepage_stat st;
	void *p = tu_map(64 * PAGE);
	int err;

	(void)arg;
	unsetenv("SAMEPAGE_SOCKET");
	setenv("XDG_RUNTIME_DIR", xdir, 1);
	madvise(p, 64 * PAGE, MADV_MERGEABLE);
	err = samepage_stat(&st);
	if (err == 0) {
		fprintf(stderr, "FAIL: samepage_stat worked with a socket directory of another "
				"user\n");
		return 1;
	}
	return 0;
}

static void part2(void)
{
	char buf[256], out[4096], sub[128];
	struct stat st;
	int err, rc;

	snprintf(xdir, sizeof(xdir), "/tmp/sp-xdg-XXXXXX");
	TU_CHECK(mkdtemp(xdir) != NULL, "mkdtemp");
	atexit(cleanup);

	/* SAMEPAGE_SOCKET is taken as it is. */
	setenv("SAMEPAGE_SOCKET", "/nonexistent/dir/sock", 1);
	err = sp_socket_path(buf, sizeof(buf));
	TU_CHECK(err == 0 && !strcmp(buf, "/nonexistent/dir/sock"),
		 "$SAMEPAGE_SOCKET not used as given: %d %s", err, buf);

	/* A fresh directory is made 0700 and used. */
	reset_dir(xdir);
	err = path_with_xdg(xdir, buf, sizeof(buf));
	snprintf(sub, sizeof(sub), "%s/samepage", xdir);
	TU_CHECK(err == 0, "fresh socket directory: %s", strerror(-err));
	TU_CHECK(!strcmp(buf, strcat(strcpy(out, sub), "/sock")), "socket path %s", buf);
	TU_CHECK(lstat(sub, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
		 (st.st_mode & 0777) == 0700, "created directory has mode %o uid %d",
		 st.st_mode & 0777, (int)st.st_uid);
	/* and accepted again once it exists */
	err = path_with_xdg(xdir, buf, sizeof(buf));
	TU_CHECK(err == 0, "own 0700 socket directory refused: %s", strerror(-err));

	expect_refused("owned by nobody", NOBODY, 0700, 0);
	expect_refused("mode 0777", 0, 0777, 0);
	expect_refused("mode 0755", 0, 0755, 0);
	expect_refused("mode 0701", 0, 0701, 0);
	expect_refused("mode 0720", 0, 0720, 0);
	expect_refused("that is a symlink to a 0700 directory", 0, 0, 1);
	expect_refused("that is a regular file", 0, 0, 2);

	/* As nobody: a directory root planted in nobody's runtime dir. */
	snprintf(ydir, sizeof(ydir), "/tmp/sp-xdg-XXXXXX");
	TU_CHECK(mkdtemp(ydir) != NULL, "mkdtemp");
	TU_CHECK(chown(ydir, NOBODY, NOBODY) == 0, "chown");
	snprintf(sub, sizeof(sub), "%s/samepage", ydir);
	{
		static const struct nobody_case cases[] = {
			{ "planted by root, 0700", 0, 0700 },
			{ "planted by root, 0777", 0, 0777 },
		};
		for (unsigned i = 0; i < 2; i++) {
			reset_dir(ydir);
			TU_CHECK(mkdir(sub, 0700) == 0 && chmod(sub, cases[i].mode) == 0, "mkdir");
			TU_CHECK(run_child(nobody_path, &cases[i]) == 0,
				 "uid %d accepted a socket directory %s", NOBODY, cases[i].what);
			printf("refused as uid %d: socket directory %s\n", NOBODY, cases[i].what);
		}
	}

	/* End to end, with xdir/samepage belonging to nobody. */
	reset_dir(xdir);
	snprintf(sub, sizeof(sub), "%s/samepage", xdir);
	TU_CHECK(mkdir(sub, 0700) == 0 && chown(sub, NOBODY, NOBODY) == 0, "mkdir");
	{
		char daemon[4200], cli[4200];
		snprintf(daemon, sizeof(daemon), "%s", tu_bin("samepaged"));
		snprintf(cli, sizeof(cli), "%s", tu_bin("samepage"));
		char *dargv[] = { daemon, "--idle-exit", "2", NULL };
		char *cargv[] = { cli, "status", NULL };
		rc = run_tool(dargv, out, sizeof(out));
		TU_CHECK(rc != 0 && strstr(out, strerror(EPERM)),
			 "samepaged with another user's socket directory: exit %d, said: %s", rc,
			 out);
		printf("samepaged refused it (exit %d)\n", rc);
		rc = run_tool(cargv, out, sizeof(out));
		TU_CHECK(rc != 0 && strstr(out, strerror(EPERM)),
			 "samepage status with another user's socket directory: exit %d, said: %s",
			 rc, out);
		printf("samepage status refused it (exit %d)\n", rc);
	}
	TU_CHECK(run_child(library_user, NULL) == 0, "a library user used it");
	usleep(300000);
	TU_CHECK(dir_empty(sub), "something was created in another user's socket directory %s",
		 sub);
	printf("a library user refused it; the directory stays empty\n");
}

int main(void)
{
	const char *sock;
	char dir[256], cmd[512];
	int rc;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(100);
	signal(SIGPIPE, SIG_IGN);
	sock = getenv("SAMEPAGE_SOCKET");

	tu_spawn(&A, holder, NULL);
	tu_spawn(&B, holder, NULL);
	TU_CHECK(tu_recv(A.rd, &aa, sizeof(aa)) == 0 && tu_recv(B.rd, &ba, sizeof(ba)) == 0,
		 "A or B died");
	TU_CHECK(tu_wait(merged, NULL, 30), "A and B not merged after 30 s");

	/* Open the socket to every user. */
	snprintf(dir, sizeof(dir), "%s", sock);
	*strrchr(dir, '/') = 0;
	TU_CHECK(chmod(dir, 0755) == 0 && chmod(sock, 0777) == 0, "chmod: %m");
	rc = run_child(intruder_fn, sock);
	TU_CHECK(rc != 2, "uid %d could not reach the socket: nothing tested", NOBODY);
	TU_CHECK(rc == 0, "the daemon served uid %d", NOBODY);
	printf("the daemon closed every connection of uid %d unanswered\n", NOBODY);

	/* Root's processes did not notice. */
	TU_CHECK(merged(NULL), "A and B lost their merge");
	content_ok(&A, "A");
	content_ok(&B, "B");
	snprintf(cmd, sizeof(cmd), "%s status --json | grep -q '\"run\": 1,'", tu_bin("samepage"));
	TU_CHECK(system(cmd) == 0, "the daemon's run knob changed");
	tu_spawn(&C, holder, NULL);
	TU_CHECK(tu_recv(C.rd, &ca, sizeof(ca)) == 0, "C died");
	TU_CHECK(tu_wait(merged, (void *)1, 30), "C did not merge with A and B");
	content_ok(&A, "A");
	content_ok(&C, "C");
	printf("root's processes still merged; a third one merged with them\n");

	part2();

	tu_send(A.wr, "q", 1);
	tu_send(B.wr, "q", 1);
	tu_send(C.wr, "q", 1);
	TU_CHECK(tu_reap(&A) == 0 && tu_reap(&B) == 0 && tu_reap(&C) == 0, "exit");
	return 0;
}
