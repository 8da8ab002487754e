/* SPDX-License-Identifier: MIT */
/*
 * `samepage run --merge-any` in the environment of a user's login session.
 * systemd sets XDG_RUNTIME_DIR in every login session; some users export
 * SAMEPAGE_SOCKET too. Until the library read the environment from
 * `environ` itself, its constructors called bash's own getenv()/setenv()
 * before bash had set itself up: the scanner dialled another socket, a
 * second daemon was started, and the fork hand-over was refused, so that
 * `bash -c 'x=$(echo hi)'` said "bash: fork: Cannot allocate memory" in
 * five runs out of six.
 *
 * Every process here runs with XDG_RUNTIME_DIR set to a fresh 0700
 * directory of the test, in two sessions:
 *  A. SAMEPAGE_SOCKET set to the test's private daemon's socket;
 *  B. SAMEPAGE_SOCKET (and SAMEPAGE_DAEMON) unset: the daemon `samepage
 *     run` starts must be the one at $XDG_RUNTIME_DIR/samepage/sock.
 * In each, REPS copies of each case run at once:
 *  - bash and dash: 50 forks ($(echo hi)), 3 s for the scanner to connect
 *    and merge, then 50 more forks, which hand the merged pages'
 *    references over to the children; prints ok;
 *  - python3 (when installed): subprocess.run(['true']) and os.fork() in a
 *    loop and a fork child that execs sh, before and after a 3 s pause;
 *  - env -i: a bash under `samepage run` starts `env -i PATH=/usr/bin:/bin
 *    bash -c LOOP`: the child with the cleared environment must be served
 *    by the same daemon;
 *  - clearenv: python3 calls clearenv() (and empties os.environ), then
 *    forks, runs subprocesses, starts an sh (exec'd with the cleared
 *    environment) and a fork child that stays 4 s: both must be served by
 *    the same daemon;
 * then REPS bash loops while the daemon is stopped (SIGSTOP) for 3 s in
 * the middle: no fork fails, and none waits for the daemon beyond the
 * stall.
 * Every run must exit 0 with the expected output and nothing on stderr.
 * Every process named above must have libsamepage.so mapped (merge-any is
 * inherited across fork and exec, whatever the environment became), and
 * for each of them at least one of the REPS copies must be known to the
 * session's daemon (`samepage status --pid`; asked while they live — on a
 * loaded machine only a few such questions fit in a process's life). At
 * least one bash must be seen with merged pages, so that its later forks
 * had references to hand over. After each batch exactly one samepaged
 * process belongs to the test — any daemon whose working directory,
 * command line or environment names one of the test's directories,
 * wherever its socket is (the XDG one, /tmp/samepage-UID/sock or the
 * private one) — and it holds the session's socket's lock.
 *
 * Under ThreadSanitizer the test is skipped: its runtime cannot be
 * preloaded into bash, dash or python3. Under AddressSanitizer it runs:
 * `samepage run` preloads ASan's runtime first and the exec wrappers pass
 * ASAN_OPTIONS on to images that clear their environment (env -i).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#define REPS 6
#define MAXPIDS 3         /* the program, and up to two children it names */
#define MAXRUNS 96
#define BATCH_LIMIT 40.0  /* seconds: a batch still running then hangs */
#define STALL_AT 2.0      /* the daemon is stopped this long after the start, */
#define STALL_FOR 3.0     /* for this long */
#define STALL_SLACK 4.0   /* and everything ends within this after SIGCONT */
#define MERGE_BY 2.8      /* a stall waits for merged pages until then */
#define PROBE_BUDGET 0.1  /* seconds of `samepage status` calls per turn */

#define LOOP                                                                     \
	"for i in $(seq 50); do x=$(echo hi); done; sleep 3; "                   \
	"for i in $(seq 50); do x=$(echo $i); done; echo ok"

/* $1: the loop, $2: where to write the cleared child's pid. The child is
 * started by `env -i`; `$!` is env's pid, which becomes bash's. */
#define ENVI                                                                     \
	"x=$(echo hi); env -i PATH=/usr/bin:/bin bash -c \"$1\" & echo $! >\"$2\"; " \
	"wait $! && echo outer-ok"

#define PY_BURST                                                                 \
	"import ctypes, os, subprocess, sys, time\n"                             \
	"def burst(n, ex):\n"                                                    \
	"    for _ in range(n):\n"                                               \
	"        subprocess.run(['true'], check=True)\n"                         \
	"        pid = os.fork()\n"                                              \
	"        if pid == 0:\n"                                                 \
	"            os._exit(7)\n"                                              \
	"        st = os.waitpid(pid, 0)[1]\n"                                   \
	"        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 7, st\n"      \
	"    if ex:\n"                                                           \
	"        pid = os.fork()\n"                                              \
	"        if pid == 0:\n"                                                 \
	"            try:\n"                                                     \
	"                os.execvp('sh', ['sh', '-c', 'x=$(echo hi); exit 5'])\n" \
	"            finally:\n"                                                 \
	"                os._exit(127)\n"                                        \
	"        st = os.waitpid(pid, 0)[1]\n"                                   \
	"        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 5, st\n"

#define PY PY_BURST "burst(15, 1)\ntime.sleep(3)\nburst(15, 1)\nprint('ok')\n"

/* argv[1]: where to write "SH_PID KID_PID". */
#define PY_CLEAR                                                                 \
	PY_BURST                                                                 \
	"ctypes.CDLL(None).clearenv()\n"                                         \
	"os.environ.clear()\n"                                                   \
	"burst(10, 1)\n"                                                         \
	"sh = subprocess.Popen(['sh', '-c', 'for i in $(seq 30); do "            \
	"x=$(echo hi); done; sleep 3; echo ok-child'])\n"                        \
	"kid = os.fork()\n"                                                      \
	"if kid == 0:\n"                                                         \
	"    time.sleep(4)\n"                                                    \
	"    os._exit(0)\n"                                                      \
	"with open(sys.argv[1], 'w') as f:\n"                                    \
	"    f.write('%d %d\\n' % (sh.pid, kid))\n"                              \
	"time.sleep(3)\n"                                                        \
	"burst(10, 1)\n"                                                         \
	"assert sh.wait() == 0\n"                                                \
	"assert os.waitpid(kid, 0)[1] == 0\n"                                    \
	"print('ok')\n"

enum { K_BASH, K_DASH, K_PY, K_ENVI, K_CLEAR, NKINDS };

struct kind {
	const char *name;
	const char *expect; /* stdout */
	int children;       /* pids it writes to its pid file */
	const char *what[MAXPIDS];
	/* Each process once it runs its own image: argv[0]'s base name and
	 * argc (not `samepage run`, env, or a fork before its exec). */
	const char *argv0[MAXPIDS];
	int argc[MAXPIDS];
};

static const struct kind kinds[NKINDS] = {
	[K_BASH] = { "bash", "ok\n", 0, { "bash" }, { "bash" }, { 3 } },
	[K_DASH] = { "dash", "ok\n", 0, { "dash" }, { "dash" }, { 3 } },
	[K_PY] = { "python3", "ok\n", 0, { "python3" }, { "python3" }, { 3 } },
	[K_ENVI] = { "env-i", "ok\nouter-ok\n", 1, { "bash", "bash under env -i" },
		     { "bash", "bash" }, { 6, 3 } },
	[K_CLEAR] = { "clearenv", "ok-child\nok\n", 2,
		      { "python3", "sh exec'd after clearenv()", "fork child after clearenv()" },
		      { "python3", "sh", "python3" }, { 4, 3, 4 } },
};

struct run {
	const struct kind *k;
	char base[PATH_MAX - 8]; /* .out, .err, .pid */
	pid_t pid;               /* `samepage run`, then the program itself */
	double t0, t1;
	int st;                  /* exit status or 128+signal; -1 while running */
	int npids;               /* pids[0] the program, then its pid file's */
	pid_t pids[MAXPIDS];
	int served[MAXPIDS];     /* known to the session's daemon */
	int looked[MAXPIDS];     /* its maps were read while it ran its program, */
	int preloaded[MAXPIDS];  /* and named libsamepage.so (once is enough) */
	long merging;            /* most ksm_merging_pages seen for pids[0] */
	double next_try[MAXPIDS];
	int tries[MAXPIDS];      /* times the daemon was asked about it */
};

static char top[64];                /* every process we start runs here */
static char priv_sock[PATH_MAX - 16], priv_dir[PATH_MAX - 16];
static char bash[PATH_MAX], dash[PATH_MAX], python[PATH_MAX];
static pid_t owner, stopped_daemon;
static struct run runs[MAXRUNS];
static int nruns, nfail;

static int find_prog(const char *name, char *out, size_t len)
{
	const char *path = getenv("PATH");
	char dirs[4096];

	snprintf(dirs, sizeof(dirs), "%s", path && *path ? path : "/usr/bin:/bin");
	for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(out, len, "%s/%s", d, name);
		if (access(out, X_OK) == 0)
			return 1;
	}
	out[0] = 0;
	return 0;
}

static size_t read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;
	ssize_t r;

	buf[0] = 0;
	if (fd < 0)
		return 0;
	while (got + 1 < len && (r = read(fd, buf + got, len - 1 - got)) > 0)
		got += (size_t)r;
	close(fd);
	buf[got] = 0;
	return got;
}

/* ---- samepaged processes ---- */

/* Neither gone nor a zombie. */
static int alive(pid_t pid)
{
	char path[64], buf[512], *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!read_file(path, buf, sizeof(buf)))
		return 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static int is_daemon(pid_t pid)
{
	char path[64], comm[32];

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	return read_file(path, comm, sizeof(comm)) && !strcmp(comm, "samepaged\n") && alive(pid);
}

/* Live samepaged processes. */
static int daemons(pid_t *out, int max)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	TU_CHECK(d, "opendir /proc");
	while ((e = readdir(d)) && n < max) {
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid > 0 && is_daemon(pid))
			out[n++] = pid;
	}
	closedir(d);
	return n;
}

/* The "…/sock.lock" pid keeps open (its socket's lock), or "" . */
static void held_lock(pid_t pid, char *out, size_t len)
{
	char path[64], link[PATH_MAX];
	struct dirent *e;
	DIR *d;

	out[0] = 0;
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d))) {
		char fd[PATH_MAX];
		ssize_t n;
		snprintf(fd, sizeof(fd), "%s/%s", path, e->d_name);
		n = readlink(fd, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (n > 10 && !strcmp(link + n - 10, "/sock.lock")) {
			snprintf(out, len, "%s", link);
			break;
		}
	}
	closedir(d);
}

static int mentions(const char *path, const char *needle)
{
	static char buf[1 << 16];
	size_t n;

	n = read_file(path, buf, sizeof(buf));
	return n && memmem(buf, n, needle, strlen(needle)) != NULL;
}

/* Was this daemon started by the test? Our processes all run in top, and a
 * daemon keeps the working directory and environment it was started
 * with; the private daemon's command line names its socket. */
static int ours(pid_t pid)
{
	char path[64], cwd[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/cwd", (int)pid);
	n = readlink(path, cwd, sizeof(cwd) - 1);
	if (n > 0) {
		cwd[n] = 0;
		if (!strncmp(cwd, top, strlen(top)))
			return 1;
	}
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, i ? "environ" : "cmdline");
		if (mentions(path, top) || mentions(path, priv_dir))
			return 1;
	}
	return 0;
}

static int our_daemons(pid_t *out, int max)
{
	pid_t all[256];
	int n = daemons(all, 256), k = 0;

	for (int i = 0; i < n && k < max; i++)
		if (ours(all[i]))
			out[k++] = all[i];
	return k;
}

/* The daemons holding sock's lock (one, or something is wrong). */
static int lock_holders(const char *sock, pid_t *out, int max)
{
	char want[PATH_MAX], lock[PATH_MAX];
	pid_t all[256];
	int n = daemons(all, 256), k = 0;

	snprintf(want, sizeof(want), "%s.lock", sock);
	for (int i = 0; i < n && k < max; i++) {
		held_lock(all[i], lock, sizeof(lock));
		if (!strcmp(lock, want))
			out[k++] = all[i];
	}
	return k;
}

static void describe(pid_t pid)
{
	char path[64], cmd[1024], lock[PATH_MAX];
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	n = read_file(path, cmd, sizeof(cmd));
	for (size_t i = 0; i + 1 < n; i++)
		if (!cmd[i])
			cmd[i] = ' ';
	held_lock(pid, lock, sizeof(lock));
	fprintf(stderr, "    pid %d (%s) holding %s\n", (int)pid, cmd, lock[0] ? lock : "no lock");
}

/* Exactly one daemon of ours, and it serves sock. */
static void check_daemons(const char *batch, const char *sock)
{
	pid_t mine[16], holders[16];
	int n = our_daemons(mine, 16), h = lock_holders(sock, holders, 16);

	if (h != 1)
		TU_SOFT_FAIL(&nfail, "%s: %d daemons hold %s.lock, want 1", batch, h, sock);
	if (n != 1 || (h == 1 && mine[0] != holders[0])) {
		TU_SOFT_FAIL(&nfail,
			     "%s: %d samepaged processes started by the test, want 1 (serving %s):",
			     batch, n, sock);
		for (int i = 0; i < n; i++)
			describe(mine[i]);
	}
}

static void kill_our_daemons(void)
{
	pid_t mine[64];
	int n = our_daemons(mine, 64);
	double end = tu_now() + 3;

	for (int i = 0; i < n; i++) {
		kill(mine[i], SIGCONT);
		kill(mine[i], SIGTERM);
	}
	while (n && tu_now() < end) {
		usleep(20 * 1000);
		n = our_daemons(mine, 64);
	}
	for (int i = 0; i < n; i++)
		kill(mine[i], SIGKILL);
}

static void cleanup(void)
{
	char cmd[128];

	if (getpid() != owner)
		return;
	for (int i = 0; i < nruns; i++)
		if (runs[i].st < 0 && runs[i].pid > 0) {
			kill(-runs[i].pid, SIGKILL);
			waitpid(runs[i].pid, NULL, 0);
		}
	if (stopped_daemon > 0)
		kill(stopped_daemon, SIGCONT);
	kill_our_daemons();
	if (chdir("/") == 0 && top[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
		if (system(cmd) != 0) {
			/* a leftover temporary directory; harmless */
		}
	}
}

/* ---- runs ---- */

/* `samepage status --pid PID` at sock: -1 when the daemon does not know
 * pid (or does not answer), else its ksm_merging_pages. */
static long served_by(const char *sock, pid_t pid)
{
	char out[4096], arg[32];
	const char *p;
	size_t got = 0;
	ssize_t r;
	int fds[2], st;
	pid_t c;

	TU_CHECK(pipe2(fds, O_CLOEXEC) == 0, "pipe");
	c = fork();
	TU_CHECK(c >= 0, "fork: %s", strerror(errno));
	if (c == 0) {
		int nul = open("/dev/null", O_WRONLY);
		dup2(fds[1], 1);
		dup2(nul, 2);
		setenv("SAMEPAGE_SOCKET", sock, 1);
		snprintf(arg, sizeof(arg), "%d", (int)pid);
		execl(tu_bin("samepage"), "samepage", "status", "--pid", arg, "--json", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	while (got + 1 < sizeof(out) && (r = read(fds[0], out + got, sizeof(out) - 1 - got)) > 0)
		got += (size_t)r;
	out[got] = 0;
	close(fds[0]);
	while (waitpid(c, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return -1;
	p = strstr(out, "\"ksm_merging_pages\": ");
	return p ? atol(p + 21) : 0;
}

/* 1 if libsamepage.so is in pid's maps, 0 if not, -1 if that cannot be
 * told yet: maps unreadable, or the dynamic loader has not mapped libc
 * yet (LD_PRELOAD's libraries come before it). */
static int preloaded(pid_t pid)
{
	static char buf[1 << 20];
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	if (!read_file(path, buf, sizeof(buf)) || !strstr(buf, "/libc.so"))
		return -1;
	return strstr(buf, "/libsamepage.so") != NULL;
}

static void launch(struct run *r, int kind, const char *batch, int i)
{
	char out[PATH_MAX], err[PATH_MAX], pidfile[PATH_MAX];
	const char *argv[16];
	int n = 0;

	memset(r, 0, sizeof(*r));
	r->k = &kinds[kind];
	r->st = -1;
	snprintf(r->base, sizeof(r->base), "%s/%s-%s-%d", top, batch, r->k->name, i);
	snprintf(out, sizeof(out), "%s.out", r->base);
	snprintf(err, sizeof(err), "%s.err", r->base);
	snprintf(pidfile, sizeof(pidfile), "%s.pid", r->base);
	argv[n++] = tu_bin("samepage");
	argv[n++] = "run";
	argv[n++] = "--merge-any";
	argv[n++] = "--";
	switch (kind) {
	case K_BASH:
		argv[n++] = bash, argv[n++] = "-c", argv[n++] = LOOP;
		break;
	case K_DASH:
		argv[n++] = dash, argv[n++] = "-c", argv[n++] = LOOP;
		break;
	case K_PY:
		argv[n++] = python, argv[n++] = "-c", argv[n++] = PY;
		break;
	case K_ENVI:
		argv[n++] = bash, argv[n++] = "-c", argv[n++] = ENVI, argv[n++] = "outer";
		argv[n++] = LOOP, argv[n++] = pidfile;
		break;
	case K_CLEAR:
		argv[n++] = python, argv[n++] = "-c", argv[n++] = PY_CLEAR, argv[n++] = pidfile;
		break;
	}
	argv[n] = NULL;
	r->t0 = tu_now();
	r->pid = fork();
	TU_CHECK(r->pid >= 0, "fork: %s", strerror(errno));
	if (r->pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (in < 0 || o < 0 || e < 0)
			_exit(126);
		setpgid(0, 0);
		dup2(in, 0);
		dup2(o, 1);
		dup2(e, 2);
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	setpgid(r->pid, r->pid);
	r->npids = 1;
	r->pids[0] = r->pid;
	r->merging = -1;
}

static void read_pidfile(struct run *r)
{
	char path[PATH_MAX], buf[128], *p = buf, *end;

	if (r->npids > r->k->children)
		return;
	snprintf(path, sizeof(path), "%s.pid", r->base);
	if (!read_file(path, buf, sizeof(buf)) || !strchr(buf, '\n'))
		return;
	for (int i = 0; i < r->k->children; i++) {
		long v = strtol(p, &end, 10);
		if (end == p || v <= 0) {
			TU_SOFT_FAIL(&nfail, "%s: pid file says '%s'", r->base, buf);
			r->npids = r->k->children + 1;
			return;
		}
		r->pids[1 + i] = (pid_t)v;
		p = end;
	}
	r->npids = r->k->children + 1;
}

/* Does a daemon listen at sock? (A connection it sees close at once.) */
static int listening(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), ok;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Does pid i of r run its own image yet (see struct kind)? */
static int own_image(const struct run *r, int i)
{
	char path[64], cmd[8192], *base;
	size_t n;
	int argc = 0;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)r->pids[i]);
	n = read_file(path, cmd, sizeof(cmd));
	if (!n || n == sizeof(cmd) - 1)
		return 0;
	for (size_t j = 0; j < n; j++)
		argc += !cmd[j];
	base = strrchr(cmd, '/');
	base = base ? base + 1 : cmd;
	return argc == r->k->argc[i] && !strcmp(base, r->k->argv0[i]);
}

/* Look at pid i of r while it runs its program, until libsamepage.so is
 * seen in its maps. */
static void look(struct run *r, int i)
{
	int m;

	if (r->preloaded[i] || (i == 0 && r->st >= 0) || !alive(r->pids[i]) || !own_image(r, i))
		return;
	m = preloaded(r->pids[i]);
	if (m >= 0) {
		r->looked[i] = 1;
		r->preloaded[i] = m;
	}
}

/* Ask the daemon about pid i of r: is it known (and the program's merged
 * pages)? */
static void probe(struct run *r, int i, const char *sock, double now)
{
	long m;

	r->next_try[i] = now + 0.1;
	r->tries[i]++;
	m = served_by(sock, r->pids[i]);
	if (m < 0)
		return;
	r->served[i] = 1;
	if (i == 0 && m > r->merging)
		r->merging = m;
}

/* Among runs[first..first+n) of kind k: how many had pid i known to the
 * daemon (merged: with merged pages, i 0 only). */
static int role_count(int first, int n, const struct kind *k, int i, int merged)
{
	int c = 0;

	for (int j = first; j < first + n; j++)
		if (runs[j].k == k && i < runs[j].npids)
			c += merged ? runs[j].merging > 0 : runs[j].served[i];
	return c;
}

/* One turn of probes, at most PROBE_BUDGET s of them, round robin: first
 * the pids of roles (a kind's program, or one of its children) no
 * instance of which the daemon has known yet, then bash's merged pages
 * until one showed some, then the other unknown pids, then the other
 * kinds' merged pages. A probe is a fork and exec of `samepage status`:
 * on a loaded machine only a few fit in a process's life, and one known
 * instance of each role is what is required. */
static void probe_turn(int first, int n, const char *sock)
{
	static unsigned cursor;
	double now = tu_now(), end = now + PROBE_BUDGET;
	unsigned slots = (unsigned)n * MAXPIDS;

	if (!listening(sock))
		return;
	for (int tier = 0; tier < 4; tier++)
		for (unsigned k = 0; k < slots && tu_now() < end; k++) {
			unsigned slot = (cursor + k) % slots;
			struct run *r = &runs[first + (int)(slot / MAXPIDS)];
			int i = (int)(slot % MAXPIDS), want;
			if (i >= r->npids || now < r->next_try[i] || (i == 0 && r->st >= 0))
				continue;
			if (tier == 0)
				want = !r->served[i] && !role_count(first, n, r->k, i, 0);
			else if (tier == 2)
				want = !r->served[i];
			else /* bash's merged pages (required) before the others' */
				want = i == 0 && r->merging < 1 && (tier == 1) == (r->k == &kinds[K_BASH]) &&
				       !role_count(first, n, r->k, 0, 1);
			if (!want || !alive(r->pids[i]) || !own_image(r, i))
				continue;
			probe(r, i, sock, now);
			cursor = slot + 1;
		}
}

static int batch_done(int first, int n)
{
	for (int i = first; i < first + n; i++)
		if (runs[i].st < 0)
			return 0;
	return 1;
}

/* Wait for runs[first..first+n), asking the daemon of sock about their
 * processes; with stall, stop that daemon STALL_AT s in for STALL_FOR s. */
static void wait_batch(const char *batch, int first, int n, const char *sock, int stall)
{
	double t0 = tu_now(), now, cont_at = 0, stall_end = 0;
	int stopped = 0;

	/* A stall lasts its STALL_FOR s even when every run ended earlier. */
	while (!batch_done(first, n) || stopped || (stall && !stall_end && tu_now() - t0 < MERGE_BY)) {
		now = tu_now();
		for (int i = first; i < first + n; i++) {
			struct run *r = &runs[i];
			int st;
			if (r->st < 0 && waitpid(r->pid, &st, WNOHANG) == r->pid) {
				r->t1 = tu_now();
				r->st = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			}
			read_pidfile(r);
			for (int j = 0; j < r->npids; j++)
				look(r, j);
		}
		if (!stopped)
			probe_turn(first, n, sock);
		/* Stopped once the bashes merged: their forks then have
		 * references to hand over while the daemon cannot answer. */
		if (stall && !stopped && !stall_end && now - t0 >= STALL_AT) {
			int merged = role_count(first, n, &kinds[K_BASH], 0, 1);
			pid_t h[4];
			if ((merged || now - t0 >= MERGE_BY) && lock_holders(sock, h, 4) >= 1) {
				stopped_daemon = h[0];
				kill(stopped_daemon, SIGSTOP);
				stopped = 1;
				cont_at = now + STALL_FOR;
				printf("login_env: %s: daemon %d stopped at %.1f s\n", batch,
				       (int)stopped_daemon, now - t0);
			}
		}
		if (stopped && now >= cont_at) {
			kill(stopped_daemon, SIGCONT);
			stopped_daemon = 0;
			stopped = 0;
			stall_end = now;
			printf("login_env: %s: daemon continued at %.1f s\n", batch, now - t0);
		}
		if (now - t0 > BATCH_LIMIT) {
			for (int i = first; i < first + n; i++)
				if (runs[i].st < 0) {
					TU_SOFT_FAIL(&nfail,
						     "%s: %s.out: still running after %.0f s",
						     batch, runs[i].base, BATCH_LIMIT);
					kill(-runs[i].pid, SIGKILL);
					waitpid(runs[i].pid, NULL, 0);
					runs[i].st = 128 + SIGKILL;
					runs[i].t1 = tu_now();
				}
			break;
		}
		usleep(20 * 1000);
	}
	if (stopped) { /* the batch hung */
		kill(stopped_daemon, SIGCONT);
		stopped_daemon = 0;
		stall_end = tu_now();
	}
	if (stall && !stall_end)
		TU_SOFT_FAIL(&nfail, "%s: the daemon was never stopped", batch);

	for (int i = first; i < first + n; i++) {
		struct run *r = &runs[i];
		char path[PATH_MAX], out[4096], err[4096];

		snprintf(path, sizeof(path), "%s.out", r->base);
		read_file(path, out, sizeof(out));
		snprintf(path, sizeof(path), "%s.err", r->base);
		read_file(path, err, sizeof(err));
		if (r->st != 0)
			TU_SOFT_FAIL(&nfail, "%s: %s: exit status %d after %.1f s", batch, r->base,
				     r->st, r->t1 - r->t0);
		if (strcmp(out, r->k->expect))
			TU_SOFT_FAIL(&nfail, "%s: %s: printed '%s', want '%s'", batch, r->base, out,
				     r->k->expect);
		if (err[0])
			TU_SOFT_FAIL(&nfail, "%s: %s: stderr%s:\n%s", batch, r->base,
				     strstr(err, "fork") ? " (a fork failed)" : "", err);
		if (r->npids != r->k->children + 1)
			TU_SOFT_FAIL(&nfail, "%s: %s: never wrote its children's pids", batch,
				     r->base);
		for (int j = 0; j < r->npids; j++)
			if (!r->looked[j])
				TU_SOFT_FAIL(&nfail, "%s: %s: %s (pid %d) was never seen running",
					     batch, r->base, r->k->what[j], (int)r->pids[j]);
			else if (!r->preloaded[j])
				TU_SOFT_FAIL(&nfail, "%s: %s: %s (pid %d) runs without "
					     "libsamepage.so: merge-any was not inherited", batch,
					     r->base, r->k->what[j], (int)r->pids[j]);
		if (stall_end && r->t1 > stall_end + STALL_SLACK)
			TU_SOFT_FAIL(&nfail, "%s: %s: ended %.1f s after the daemon was continued",
				     batch, r->base, r->t1 - stall_end);
	}
	for (int k = 0; k < NKINDS; k++) {
		const struct kind *kd = &kinds[k];
		int cnt = 0;
		double most = 0;
		for (int i = first; i < first + n; i++) {
			if (runs[i].k != kd)
				continue;
			cnt++;
			if (runs[i].t1 - runs[i].t0 > most)
				most = runs[i].t1 - runs[i].t0;
		}
		if (!cnt)
			continue;
		printf("login_env: %s: %d × %s in %.1f s at most; known to the daemon:", batch, cnt,
		       kd->name, most);
		for (int i = 0; i <= kd->children; i++)
			printf(" %s %d", kd->what[i], role_count(first, n, kd, i, 0));
		printf("; with merged pages: %s\n", role_count(first, n, kd, 0, 1) ? "yes" : "none seen");
		/* Every role reached the session's daemon: each instance was
		 * asked about while it lived, and one answer is enough on a
		 * loaded machine, where only a few questions fit in a life. */
		for (int i = 0; i <= kd->children; i++)
			if (!role_count(first, n, kd, i, 0)) {
				int tries = 0;
				for (int j = first; j < first + n; j++)
					if (runs[j].k == kd && i < runs[j].npids)
						tries += runs[j].tries[i];
				TU_SOFT_FAIL(&nfail, "%s: no %s of the %d was known to the daemon "
					     "at %s (asked %d times)", batch, kd->what[i], cnt,
					     sock, tries);
			}
		/* The forks after the pause must have had references to hand over. */
		if (k == K_BASH && !role_count(first, n, kd, 0, 1))
			TU_SOFT_FAIL(&nfail, "%s: no bash was seen with merged pages: its forks "
				     "handed nothing over", batch);
	}
	fflush(stdout);
	check_daemons(batch, sock);
}

static void run_batch(const char *batch, const int *which, const char *sock, int stall)
{
	int first = nruns;

	for (int i = 0; i < REPS; i++)
		for (int k = 0; k < NKINDS; k++)
			if (which[k]) {
				TU_CHECK(nruns < MAXRUNS, "too many runs");
				launch(&runs[nruns++], k, batch, i);
			}
	wait_batch(batch, first, nruns - first, sock, stall);
}

static void make_xdg(const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", top, name);
	TU_CHECK(mkdir(out, 0700) == 0, "mkdir %s: %s", out, strerror(errno));
	setenv("XDG_RUNTIME_DIR", out, 1);
}

int main(void)
{
#if defined(__SANITIZE_THREAD__)
	tu_skip("a ThreadSanitizer-built libsamepage cannot be preloaded into bash, dash or python3");
#endif
	int all[NKINDS] = { 0 }, bash_only[NKINDS] = { [K_BASH] = 1 };
	char xdg[PATH_MAX - 32], sock[PATH_MAX], *s;
	double t0 = tu_now();
	pid_t h[4];

	tu_require_merging();
	if (!find_prog("bash", bash, sizeof(bash)))
		tu_skip("bash not installed");
	if (!find_prog("seq", xdg, sizeof(xdg)) || !find_prog("env", xdg, sizeof(xdg)))
		tu_skip("seq or env not installed");
	all[K_BASH] = all[K_ENVI] = 1;
	all[K_DASH] = find_prog("dash", dash, sizeof(dash));
	if (access("/usr/bin/python3", X_OK) == 0)
		snprintf(python, sizeof(python), "/usr/bin/python3");
	else
		find_prog("python3", python, sizeof(python));
	all[K_PY] = all[K_CLEAR] = python[0] != 0;
	if (!all[K_DASH])
		printf("login_env: dash not installed: its case is left out\n");
	if (!python[0])
		printf("login_env: python3 not installed: its cases (python3, clearenv) are left out\n");

	tu_private_daemon();
	snprintf(priv_sock, sizeof(priv_sock), "%s", getenv("SAMEPAGE_SOCKET"));
	snprintf(priv_dir, sizeof(priv_dir), "%s", priv_sock);
	s = strrchr(priv_dir, '/');
	*s = 0;
	snprintf(top, sizeof(top), "/tmp/sp-login-XXXXXX");
	TU_CHECK(mkdtemp(top), "mkdtemp: %s", strerror(errno));
	TU_CHECK(chdir(top) == 0, "chdir %s", top);
	owner = getpid();
	atexit(cleanup);
	signal(SIGPIPE, SIG_IGN);

	/* A: SAMEPAGE_SOCKET exported, XDG_RUNTIME_DIR as systemd sets it. */
	make_xdg("xdg-a", xdg, sizeof(xdg));
	run_batch("A-socket", all, priv_sock, 0);
	run_batch("A-socket-stall", bash_only, priv_sock, 1);
	kill_our_daemons();

	/* B: only XDG_RUNTIME_DIR: `samepage run` starts the daemon at
	 * $XDG_RUNTIME_DIR/samepage/sock, and every process must use it. */
	make_xdg("xdg-b", xdg, sizeof(xdg));
	unsetenv("SAMEPAGE_SOCKET");
	unsetenv("SAMEPAGE_DAEMON");
	snprintf(sock, sizeof(sock), "%s/samepage/sock", xdg);
	TU_CHECK(lock_holders(sock, h, 4) == 0, "a daemon serves the fresh %s already", sock);
	run_batch("B-xdg", all, sock, 0);
	run_batch("B-xdg-stall", bash_only, sock, 1);
	kill_our_daemons();

	printf("login_env: %d runs in %.1f s, %d failures\n", nruns, tu_now() - t0, nfail);
	return nfail ? 1 : 0;
}
