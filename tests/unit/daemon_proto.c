/* SPDX-License-Identifier: MIT */
/*
 * The daemon's side of the protocol, against a real samepaged_run() in a
 * forked child on a socket in a fresh mkdtemp directory. Proves:
 *  - a well-formed C_HELLO gets a well-formed D_HELLO (segment size,
 *    default knobs); a second C_HELLO, a wrong version, or any request
 *    before C_HELLO (C_BUDGET, C_STAT) closes the connection;
 *  - C_SET with a bad value for every knob, an unknown knob, or a value
 *    that only fits after truncation to 32 bits gets D_ACK -EINVAL and
 *    leaves the knobs as they were (C_STAT shows them); a good value is
 *    applied; advisor_mode=scan-time starts pages_to_scan at
 *    advisor_min_pages_to_scan and refuses pages_to_scan (-EINVAL), the
 *    same mode again changes nothing, none puts the default back;
 *  - C_STAT for an unknown pid gets D_ACK -ESRCH, for our own pid a D_STAT
 *    with the process;
 *  - C_PROCS lists the processes (not the observers) in (pid, id) order
 *    with the daemon's own pid; 530 connections come in two replies, the
 *    first full (SP_MAX_PROCS, more set), the second resuming after the
 *    cursor, every connection once;
 *  - a freed pool page is reused before a never-used one;
 *  - C_CREATE makes one pool page per content (a second connection creating
 *    the same content gets the same id), C_LOOKUP finds it through the
 *    stable index and a first/second offer through the unstable index;
 *    C_GETSEG hands over the sealed segment with the page's bytes in it;
 *  - the page pipe (C_PIPE): only a pipe as large as it claims (1 ..
 *    SP_MAX_CREATE pages) is accepted, a second one replaces the first (the
 *    first closed), anything else closes the connection with the descriptor;
 *    C_CREATE without a pipe, of more pages than the pipe holds, or with
 *    fewer bytes in the pipe than it announces closes the connection and
 *    leaves nothing in the pool;
 *  - C_CREATE reads its pages from the pipe (written or vmspliced), in
 *    order: several pages in one request each land in the pool with their
 *    own bytes, the same page twice in one request is one pool page; a page
 *    whose bytes do not match its claimed hash gets SP_POOL_NONE, takes no
 *    pool page (nor overwrites the pool page that has the claimed hash) and
 *    leaves the pipe in step for the next request;
 *  - merge hints: when B creates the page its C_LOOKUP matched in A's
 *    unstable entry, A's next D_BUDGET counts the hint, C_HINTS returns A's
 *    address and the pool id (max honoured, each hint given once), and A
 *    holds a reference of its own: the page outlives B's references, A's
 *    C_UNREF (or A closing) frees it; no hint for a create that names no
 *    matched entry (out of range, an entry that got SP_POOL_NONE, an entry
 *    of an earlier C_LOOKUP, or the same entry twice), for a page whose bytes
 *    do not match, or for a process that has gone; A offering its hinted
 *    page again before fetching the hint gets the hinted page on the
 *    reference it already holds (the hint then consumed), unless the page
 *    changed;
 *  - C_UNREF of an id the connection does not hold is ignored: the holder
 *    keeps its page and its connection; dropping the last reference, or
 *    closing the holder (which sent no marker), frees the page;
 *  - descriptors sent to the daemon with requests are closed, not kept
 *    (a C_PIPE's only while the connection lives);
 *  - 2000 random messages (random or valid type, random length 0..4096 or
 *    a near-valid one, random bytes), each on a fresh connection, helloed
 *    or not: each ends exactly as the protocol says (closed, or the right
 *    well-formed reply) and the daemon stays up, answers a connection
 *    opened at the start, frees every page the garbage created and holds
 *    no more descriptors than before;
 *  - absurd counters in C_BUDGET do not bring the daemon down.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "../lib/testutil.h"
#include "daemon.h"
#include "pool.h"
#include "proto.h"

static char dir[64], sock_path[128];
static pid_t dpid, owner;
static unsigned char rbuf[SP_MAX_MSG];
static struct sp_knobs defaults;

#define NO_LOOK 0xffffffffu /* C_CREATE entry that names no C_LOOKUP entry */
/* The write end of each connection's page pipe, by socket fd; -1: none. */
#define MAXFD 4096
static int pipes[MAXFD];

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint64_t rnd(void)
{
	return tu_xorshift(&rng);
}

static void cleanup(void)
{
	char p[192];

	if (getpid() != owner)
		return;
	if (dpid > 0) {
		kill(dpid, SIGKILL);
		waitpid(dpid, NULL, 0);
		dpid = 0;
	}
	snprintf(p, sizeof(p), "%s/sock", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/sock.lock", dir);
	unlink(p);
	rmdir(dir);
}

static void start_daemon(void)
{
	int rp[2];
	unsigned char st = 0xff;

	snprintf(dir, sizeof(dir), "/tmp/sp-unit-XXXXXX");
	TU_CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(sock_path, sizeof(sock_path), "%s/sock", dir);
	TU_CHECK(pipe2(rp, O_CLOEXEC) == 0, "pipe");
	owner = getpid();
	atexit(cleanup);
	dpid = fork();
	TU_CHECK(dpid >= 0, "fork: %s", strerror(errno));
	if (dpid == 0) {
		close(rp[0]);
		signal(SIGPIPE, SIG_IGN);
		_exit(samepaged_run(sock_path, 0, rp[1]) ? 1 : 0);
	}
	close(rp[1]);
	TU_CHECK(read(rp[0], &st, 1) == 1 && st == 0, "daemon did not start (status %u)", st);
	close(rp[0]);
}

static void daemon_alive(const char *when)
{
	int st;
	pid_t r = waitpid(dpid, &st, WNOHANG);

	if (r == dpid) {
		dpid = 0;
		TU_FAIL("%s: the daemon died (%s %d)", when,
			WIFSIGNALED(st) ? "signal" : "exit",
			WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
}

static int dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = 5 };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0, "socket");
	strcpy(sa.sun_path, sock_path);
	TU_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s",
		 strerror(errno));
	/* a daemon that neither answers nor closes fails the test, not hangs it */
	TU_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "SO_RCVTIMEO");
	return fd;
}

/* Receive one reply; it must be a well-formed message. */
static void recv_ok(int fd, struct sp_msg *m, const char *what)
{
	int r = sp_recv(fd, rbuf, m);

	if (r < 0) {
		usleep(100 * 1000);
		daemon_alive(what); /* a dead daemon explains itself first */
	}
	TU_CHECK(r == 0, "%s: sp_recv %d (%s)", what, r, strerror(-r));
	TU_CHECK(sp_validate(m) == 0, "%s: malformed reply type %u len %u", what, m->h.type,
		 m->h.len);
}

/* The daemon closed the connection: sp_recv sees EOF or a reset. */
static int closed(int fd)
{
	struct sp_msg m;
	int r = sp_recv(fd, rbuf, &m);

	if (r == 0 && m.fd >= 0)
		close(m.fd);
	return r == -ECONNRESET;
}

static void send_ok(int fd, uint16_t type, const void *p, uint32_t len)
{
	int r = sp_send(fd, type, p, len, -1);

	TU_CHECK(r == 0, "sp_send type %u: %d", type, r);
}

static struct sp_hello_r hello(int fd, uint32_t flags)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION, .flags = flags };
	struct sp_hello_r r;
	struct sp_msg m;

	send_ok(fd, C_HELLO, &h, sizeof(h));
	recv_ok(fd, &m, "hello");
	TU_CHECK(m.h.type == D_HELLO, "hello answered with type %u", m.h.type);
	memcpy(&r, m.p, sizeof(r));
	return r;
}

static int connect_hello(void)
{
	int fd = dial();

	hello(fd, 0);
	return fd;
}

/* Close a connection and its page pipe. */
static void hangup(int fd)
{
	TU_CHECK(fd >= 0 && fd < MAXFD, "fd %d", fd);
	if (pipes[fd] >= 0)
		close(pipes[fd]);
	pipes[fd] = -1;
	close(fd);
}

static int32_t expect_ack(int fd, const char *what)
{
	struct sp_msg m;
	struct sp_ack a;

	recv_ok(fd, &m, what);
	TU_CHECK(m.h.type == D_ACK, "%s: reply type %u, want D_ACK", what, m.h.type);
	memcpy(&a, m.p, sizeof(a));
	return a.err;
}

/* C_STAT: 0 and *out filled on D_STAT, else the D_ACK error. */
static int stat_req(int fd, int32_t pid, struct sp_stat_r *out)
{
	struct sp_statreq s = { .pid = pid };
	struct sp_msg m;

	send_ok(fd, C_STAT, &s, sizeof(s));
	recv_ok(fd, &m, "stat");
	if (m.h.type == D_ACK) {
		struct sp_ack a;
		memcpy(&a, m.p, sizeof(a));
		TU_CHECK(a.err < 0, "stat acked with %d", a.err);
		return a.err;
	}
	TU_CHECK(m.h.type == D_STAT, "stat answered with type %u", m.h.type);
	memcpy(out, m.p, sizeof(*out));
	return 0;
}

static struct sp_stat_r gstat(int fd)
{
	struct sp_stat_r r;

	TU_CHECK(stat_req(fd, 0, &r) == 0, "global stat refused");
	return r;
}

static int count_fds(pid_t pid)
{
	char p[64];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	d = opendir(p);
	TU_CHECK(d, "opendir %s", p);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* ---- the tests ---- */

static int settled(void *arg);

static void test_hello(void)
{
	int fd = dial();
	struct sp_hello_r r = hello(fd, 0);
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	struct sp_budget b = { .want = 100 };
	struct sp_statreq s = { 0 };
	char c;

	TU_CHECK(r.seg_pages == SP_SEG_PAGES, "D_HELLO seg_pages %u", r.seg_pages);
	TU_CHECK(!memcmp(&r.knobs, &defaults, sizeof(defaults)), "D_HELLO knobs not the defaults");
	/* a second hello closes */
	send_ok(fd, C_HELLO, &h, sizeof(h));
	TU_CHECK(closed(fd), "second C_HELLO did not close the connection");
	close(fd);

	/* budget before hello: closed, recv gives 0 */
	fd = dial();
	send_ok(fd, C_BUDGET, &b, sizeof(b));
	TU_CHECK(recv(fd, &c, 1, 0) == 0, "C_BUDGET before C_HELLO: recv did not return 0 (%s)",
		 strerror(errno));
	close(fd);
	/* so does a well-formed C_STAT before hello */
	fd = dial();
	send_ok(fd, C_STAT, &s, sizeof(s));
	TU_CHECK(closed(fd), "C_STAT before C_HELLO did not close the connection");
	close(fd);
	/* a wrong version */
	fd = dial();
	h.version = SP_PROTO_VERSION + 1;
	send_ok(fd, C_HELLO, &h, sizeof(h));
	TU_CHECK(closed(fd), "C_HELLO of another version did not close the connection");
	close(fd);
	/* two hellos from distinct connections each get their own token */
	int a = dial(), bb = dial();
	struct sp_hello_r ra = hello(a, 0), rb = hello(bb, HELLO_OBSERVER);
	TU_CHECK(ra.instance == rb.instance && ra.instance, "two connections saw different daemons");
	close(a);
	close(bb);
}

static void test_set(int g)
{
	static const struct { uint32_t knob; uint64_t v; } bad[] = {
		{ KNOB_RUN, 3 }, { KNOB_RUN, 0x100000001ull }, { KNOB_PAGES_TO_SCAN, 0 },
		{ KNOB_PAGES_TO_SCAN, (1u << 24) + 1 }, { KNOB_SLEEP_MILLISECS, 60001 },
		{ KNOB_USE_ZERO_PAGES, 2 }, { KNOB_MAX_PAGE_SHARING, 0 },
		{ KNOB_MAX_PAGE_SHARING, 1 }, { KNOB_MAX_PAGE_SHARING, 0x100000002ull },
		{ KNOB_ADVISOR_MODE, 2 }, { KNOB_ADVISOR_MODE, 0x100000001ull },
		{ KNOB_ADVISOR_MAX_CPU, 1ull << 32 }, { KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 0 },
		{ KNOB_ADVISOR_MAX_PAGES_TO_SCAN, (1u << 24) + 1 },
		{ KNOB_ADVISOR_TARGET_SCAN_TIME, 0 },
		{ KNOB_COUNT, 1 }, { 0xffffffffu, 1 }, { 0x80000000u, 1 },
	};
	struct sp_stat_r st;

	st = gstat(g);
	TU_CHECK(!memcmp(&st.knobs, &defaults, sizeof(defaults)), "knobs not the defaults");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sp_set s = { .knob = bad[i].knob, .value = bad[i].v };
		int32_t err;

		send_ok(g, C_SET, &s, sizeof(s));
		err = expect_ack(g, "bad C_SET");
		TU_CHECK(err == -EINVAL, "C_SET knob %u value %#llx: ack %d, want -EINVAL",
			 bad[i].knob, (unsigned long long)bad[i].v, err);
		st = gstat(g);
		TU_CHECK(!memcmp(&st.knobs, &defaults, sizeof(defaults)),
			 "refused C_SET knob %u value %#llx changed the knobs", bad[i].knob,
			 (unsigned long long)bad[i].v);
	}
	/* a good one is applied, and shows in a new connection's hello */
	struct sp_set s = { .knob = KNOB_PAGES_TO_SCAN, .value = 1234 };
	send_ok(g, C_SET, &s, sizeof(s));
	TU_CHECK(expect_ack(g, "C_SET") == 0, "good C_SET refused");
	st = gstat(g);
	TU_CHECK(st.knobs.v[KNOB_PAGES_TO_SCAN] == 1234, "C_SET not applied");
	int fd = dial();
	TU_CHECK(hello(fd, HELLO_OBSERVER).knobs.v[KNOB_PAGES_TO_SCAN] == 1234,
		 "hello knobs stale");
	close(fd);
	s.value = defaults.v[KNOB_PAGES_TO_SCAN];
	send_ok(g, C_SET, &s, sizeof(s));
	TU_CHECK(expect_ack(g, "C_SET") == 0, "restoring pages_to_scan refused");
}

static int32_t set_knob(int g, uint32_t knob, uint64_t v)
{
	struct sp_set s = { .knob = knob, .value = v };

	send_ok(g, C_SET, &s, sizeof(s));
	return expect_ack(g, "C_SET");
}

/* The kernel's stores: advisor_mode=scan-time starts pages_to_scan at
 * advisor_min_pages_to_scan, pages_to_scan is then refused (-EINVAL),
 * writing the mode it is in changes nothing, and none puts back the
 * default pages_to_scan. */
static void test_set_advisor(int g)
{
	struct sp_stat_r st;

	TU_CHECK(set_knob(g, KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 777) == 0, "min_pages_to_scan=777");
	TU_CHECK(set_knob(g, KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME) == 0, "advisor_mode=scan-time");
	st = gstat(g);
	TU_CHECK(st.knobs.v[KNOB_ADVISOR_MODE] == ADVISOR_SCAN_TIME &&
		 st.knobs.v[KNOB_PAGES_TO_SCAN] == 777,
		 "advisor on: mode %u pages_to_scan %u, want 1 and 777",
		 st.knobs.v[KNOB_ADVISOR_MODE], st.knobs.v[KNOB_PAGES_TO_SCAN]);
	TU_CHECK(set_knob(g, KNOB_PAGES_TO_SCAN, 5000) == -EINVAL,
		 "pages_to_scan taken with the advisor on");
	TU_CHECK(set_knob(g, KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 900) == 0 &&
		 set_knob(g, KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME) == 0,
		 "scan-time again refused");
	st = gstat(g);
	TU_CHECK(st.knobs.v[KNOB_PAGES_TO_SCAN] == 777,
		 "pages_to_scan %u after writing the mode it was in, want 777 still",
		 st.knobs.v[KNOB_PAGES_TO_SCAN]);
	TU_CHECK(set_knob(g, KNOB_ADVISOR_MODE, ADVISOR_NONE) == 0, "advisor_mode=none");
	st = gstat(g);
	TU_CHECK(st.knobs.v[KNOB_PAGES_TO_SCAN] == defaults.v[KNOB_PAGES_TO_SCAN],
		 "advisor off: pages_to_scan %u, want the default %u",
		 st.knobs.v[KNOB_PAGES_TO_SCAN], defaults.v[KNOB_PAGES_TO_SCAN]);
	TU_CHECK(set_knob(g, KNOB_ADVISOR_MIN_PAGES_TO_SCAN,
			  defaults.v[KNOB_ADVISOR_MIN_PAGES_TO_SCAN]) == 0, "restoring min");
	st = gstat(g);
	TU_CHECK(!memcmp(&st.knobs, &defaults, sizeof(defaults)), "knobs not back to the defaults");
}

static void test_stat(int g)
{
	struct sp_stat_r st;
	int err;

	TU_CHECK(stat_req(g, INT32_MAX, &st) == -ESRCH, "C_STAT of pid INT32_MAX not -ESRCH");
	TU_CHECK(stat_req(g, -1, &st) == -ESRCH, "C_STAT of pid -1 not -ESRCH");
	/* a pid that existed: a reaped child */
	pid_t c = fork();
	TU_CHECK(c >= 0, "fork");
	if (c == 0)
		_exit(0);
	waitpid(c, NULL, 0);
	TU_CHECK(stat_req(g, c, &st) == -ESRCH, "C_STAT of a dead pid not -ESRCH");
	/* our own pid: g is our connection */
	err = stat_req(g, getpid(), &st);
	TU_CHECK(err == 0 && st.has_proc == 1 && st.pid == getpid(),
		 "C_STAT of our own pid: %d has_proc %d pid %d", err, st.has_proc, st.pid);
	st = gstat(g);
	TU_CHECK(st.has_proc == 0, "global stat has a process");
	/* test_hello's connections are gone once the daemon saw them close */
	TU_CHECK(tu_wait(settled, &g, 5), "processes %llu, want 1",
		 (unsigned long long)gstat(g).g.processes);
}

/* C_PROCS from a cursor: the reply's header into *r, its entries into e. */
static void procs_req(int fd, int32_t after_pid, uint32_t after_id, struct sp_procs *r,
		      struct sp_proc_ent *e)
{
	struct sp_procs_req q = { .after_pid = after_pid, .after_id = after_id };
	struct sp_msg m;

	send_ok(fd, C_PROCS, &q, sizeof(q));
	recv_ok(fd, &m, "procs");
	TU_CHECK(m.h.type == D_PROCS, "C_PROCS answered with type %u", m.h.type);
	memcpy(r, m.p, sizeof(*r));
	TU_CHECK(r->n <= SP_MAX_PROCS, "D_PROCS of %u", r->n);
	memcpy(e, m.p + sizeof(*r), r->n * sizeof(*e));
}

/* References the daemon lists for all connections (D_PROCS' refs), and
 * the most any one holds. */
static uint64_t procs_refs(int fd, uint64_t *most)
{
	static struct sp_proc_ent e[SP_MAX_PROCS];
	struct sp_procs r;
	uint64_t sum = 0;

	*most = 0;
	procs_req(fd, 0, 0, &r, e);
	for (uint32_t i = 0; i < r.n; i++) {
		sum += e[i].refs;
		*most = e[i].refs > *most ? e[i].refs : *most;
	}
	return sum;
}

#define MANY_CONNS 530

static void test_procs(int g)
{
	static struct sp_proc_ent e[SP_MAX_PROCS];
	static int fds[MANY_CONNS];
	struct sp_procs r;
	int obs = dial(), seen = 0, total;

	hello(obs, HELLO_OBSERVER);
	procs_req(obs, 0, 0, &r, e);
	TU_CHECK(r.daemon_pid == dpid, "D_PROCS names daemon %d, want %d", r.daemon_pid, (int)dpid);
	TU_CHECK(r.n == 1 && !r.more && e[0].pid == getpid(),
		 "C_PROCS: %u processes (more %u), first pid %d: want only g, ours", r.n, r.more,
		 r.n ? e[0].pid : 0);
	/* Past the cursor: nothing. */
	procs_req(g, e[0].pid, e[0].id, &r, e);
	TU_CHECK(r.n == 0 && !r.more, "C_PROCS after the last one: %u", r.n);
	for (int i = 0; i < MANY_CONNS; i++) {
		fds[i] = dial();
		hello(fds[i], 0);
	}
	procs_req(obs, 0, 0, &r, e);
	TU_CHECK(r.n == SP_MAX_PROCS && r.more, "C_PROCS of %d: %u, more %u", MANY_CONNS + 1, r.n,
		 r.more);
	total = (int)r.n;
	for (uint32_t i = 1; i < r.n; i++)
		TU_CHECK(e[i].pid == e[i - 1].pid && e[i].id > e[i - 1].id, "D_PROCS out of order");
	procs_req(obs, e[r.n - 1].pid, e[r.n - 1].id, &r, e);
	TU_CHECK(!r.more && total + (int)r.n == MANY_CONNS + 1,
		 "the rest: %u (more %u), %d in all, want %d", r.n, r.more, total + (int)r.n,
		 MANY_CONNS + 1);
	for (uint32_t i = 0; i < r.n; i++)
		seen += e[i].pid == getpid();
	TU_CHECK(seen == (int)r.n, "another process listed");
	for (int i = 0; i < MANY_CONNS; i++)
		close(fds[i]);
	close(obs);
	TU_CHECK(tu_wait(settled, &g, 5), "processes %llu after closing, want 1",
		 (unsigned long long)gstat(g).g.processes);
}

/* Send C_PIPE with the read end of a new pipe of at least `cap` pages
 * claiming `pages`; the write end, or -1 when the pipe could not be made
 * that large. The caller reads the answer. */
static int send_pipe(int fd, uint32_t pages, uint32_t cap)
{
	struct sp_pipe p = { .pages = pages };
	int pf[2];

	TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
	if (fcntl(pf[1], F_SETPIPE_SZ, (int)(cap * PAGE)) < (int)(cap * PAGE)) {
		close(pf[0]);
		close(pf[1]);
		return -1;
	}
	TU_CHECK(sp_send(fd, C_PIPE, &p, sizeof(p), pf[0]) == 0, "send C_PIPE");
	close(pf[0]);
	return pf[1];
}

/* Give fd a page pipe of `pages` pages (replacing any). */
static void open_pipe(int fd, uint32_t pages)
{
	int w = send_pipe(fd, pages, pages);
	int32_t err;

	TU_CHECK(w >= 0, "no pipe of %u pages", pages);
	err = expect_ack(fd, "C_PIPE");
	TU_CHECK(err == 0, "C_PIPE of %u pages refused: %d", pages, err);
	TU_CHECK(fd < MAXFD, "fd %d", fd);
	if (pipes[fd] >= 0)
		close(pipes[fd]);
	pipes[fd] = w;
}

static void pipe_write(int fd, const void *p, size_t len)
{
	TU_CHECK(pipes[fd] >= 0, "no pipe");
	TU_CHECK(write(pipes[fd], p, len) == (ssize_t)len, "write %zu bytes to the pipe: %s", len,
		 strerror(errno));
}

static int pipe_ready; /* the next create_n finds its bytes in the pipe already */

/* C_CREATE of n pages at `pages` claimed to hash to hash[i] (NULL: their
 * real hashes), with C_LOOKUP entries look[i] (NULL: none); the ids, one
 * per page, in ids. The bytes go through the connection's pipe, opened
 * (16 pages) if it has none. */
static void create_n(int fd, const unsigned char *pages, uint32_t n, const uint64_t *hash,
		     const uint32_t *look, uint32_t *ids)
{
	struct { struct sp_create c; struct sp_create_ent e[SP_MAX_CREATE]; } q = { .c = { .n = n } };
	struct sp_msg m;
	uint32_t rn;

	TU_CHECK(n <= SP_MAX_CREATE, "n %u", n);
	if (pipes[fd] < 0)
		open_pipe(fd, 16);
	for (uint32_t i = 0; i < n; i++)
		q.e[i] = (struct sp_create_ent){
			.hash = hash ? hash[i] : XXH3_64bits(pages + (size_t)i * PAGE, PAGE),
			.look = look ? look[i] : NO_LOOK };
	if (pipe_ready)
		pipe_ready = 0; /* the caller put the bytes there (vmsplice) */
	else
		pipe_write(fd, pages, (size_t)n * PAGE);
	send_ok(fd, C_CREATE, &q, (uint32_t)(sizeof(q.c) + n * sizeof(q.e[0])));
	recv_ok(fd, &m, "create");
	TU_CHECK(m.h.type == D_CREATE, "create answered with %u", m.h.type);
	memcpy(&rn, m.p, 4);
	TU_CHECK(rn == n, "D_CREATE: %u ids for %u pages", rn, n);
	memcpy(ids, m.p + 4, (size_t)n * 4);
	for (uint32_t i = 0; i < n; i++)
		TU_CHECK(ids[i] != SP_POOL_CREATE, "D_CREATE: SP_POOL_CREATE for page %u", i);
}

/* C_CREATE of one page with its real hash: its id. */
static uint32_t create(int fd, const void *page)
{
	uint32_t id;

	create_n(fd, page, 1, NULL, NULL, &id);
	TU_CHECK(id != SP_POOL_NONE, "create: SP_POOL_NONE for a page with its own hash");
	return id;
}

static uint32_t lookup(int fd, uint64_t hash, uint64_t addr)
{
	struct { struct sp_lookup l; struct sp_lookup_ent e; } q = { { .n = 1 }, { .hash = hash, .addr = addr } };
	struct sp_msg m;
	uint32_t n, id;

	send_ok(fd, C_LOOKUP, &q, sizeof(q));
	recv_ok(fd, &m, "lookup");
	TU_CHECK(m.h.type == D_LOOKUP, "lookup answered with %u", m.h.type);
	memcpy(&n, m.p, 4);
	memcpy(&id, m.p + 4, 4);
	TU_CHECK(n == 1, "lookup n %u", n);
	return id;
}

static void unref(int fd, uint32_t id)
{
	struct { uint32_t n, id; } u = { 1, id };

	send_ok(fd, C_UNREF, &u, sizeof(u));
}

static int pool_empty(void *arg)
{
	struct sp_stat_r st = gstat(*(int *)arg);

	return st.g.pool_pages == 0 && st.g.pages_sharing == 0;
}

/* A budget request whose stats say the process's last pass left
 * `unshared` unique pages. */
static void report_unshared(int fd, uint64_t unshared)
{
	struct sp_budget b = { .want = 1, .st.unshared = unshared };
	struct sp_msg m;

	send_ok(fd, C_BUDGET, &b, sizeof(b));
	recv_ok(fd, &m, "budget");
	TU_CHECK(m.h.type == D_BUDGET, "budget answered with %u", m.h.type);
}

static void test_pages(int g)
{
	static unsigned char page[PAGE];
	int a = connect_hello(), b = connect_hello(), b2 = connect_hello();
	uint32_t x, y, id;
	uint64_t h, held, most;
	struct sp_stat_r st;
	struct sp_msg m;

	tu_fill(page, PAGE, 4242);
	h = XXH3_64bits(page, PAGE);

	/* unstable index: first offer recorded, same page again not a match,
	 * another connection's offer a match */
	TU_CHECK(lookup(a, h, 0x10000) == SP_POOL_NONE, "first offer");
	TU_CHECK(lookup(a, h, 0x10000) == SP_POOL_NONE, "same page again matched");
	TU_CHECK(lookup(b, h, 0x10000) == SP_POOL_CREATE, "second offer not a match");
	/* pages_unshared: what the processes' last passes left unique (they
	 * say so with each budget request), not the unstable index's size. */
	report_unshared(a, 5);
	report_unshared(b2, 2);
	TU_CHECK(gstat(g).g.pages_unshared == 7, "pages_unshared %llu, want 5 + 2",
		 (unsigned long long)gstat(g).g.pages_unshared);
	report_unshared(b2, 0);

	x = create(a, page);
	/* D_PROCS counts the references from the daemon's own sets: a process
	 * stopped before its next budget request is still named (`set run=2`) */
	held = procs_refs(g, &most);
	TU_CHECK(held == 1 && most == 1, "D_PROCS after create: %llu references, %llu the most",
		 (unsigned long long)held, (unsigned long long)most);
	st = gstat(g);
	TU_CHECK(st.g.pool_pages == 1 && st.g.pages_shared == 1 && st.g.pages_sharing == 0,
		 "after create: pool %llu shared %llu sharing %llu",
		 (unsigned long long)st.g.pool_pages, (unsigned long long)st.g.pages_shared,
		 (unsigned long long)st.g.pages_sharing);
	/* the stable index now answers a lookup of that hash with the page */
	TU_CHECK(lookup(b2, h, 0x20000) == x, "stable lookup did not find page %u", x);
	st = gstat(g);
	TU_CHECK(st.g.pool_pages == 1 && st.g.pages_sharing == 1, "after lookup: sharing %llu",
		 (unsigned long long)st.g.pages_sharing);
	held = procs_refs(g, &most);
	TU_CHECK(held == 2 && most == 1, "D_PROCS after lookup: %llu references, %llu the most",
		 (unsigned long long)held, (unsigned long long)most);
	unref(b2, x);
	/* the same content created again is the same page */
	tu_fill(page, PAGE, 4242);
	TU_CHECK(create(b2, page) == x, "the same content got a second pool page");
	unref(b2, x);
	TU_CHECK(gstat(g).g.pages_sharing == 0, "b2's references not dropped");

	/* the segment: sealed, with the page's bytes */
	struct sp_getseg gs = { .seg = x / SP_SEG_PAGES };
	send_ok(a, C_GETSEG, &gs, sizeof(gs));
	recv_ok(a, &m, "getseg");
	TU_CHECK(m.h.type == D_SEG && m.fd >= 0, "C_GETSEG: type %u fd %d", m.h.type, m.fd);
	unsigned char *v = mmap(NULL, (size_t)SP_SEG_PAGES * PAGE, PROT_READ, MAP_PRIVATE, m.fd, 0);
	TU_CHECK(v != MAP_FAILED, "mmap segment");
	TU_CHECK(!memcmp(v + (size_t)(x % SP_SEG_PAGES) * PAGE, page, PAGE),
		 "pool page differs from what was sent");
	errno = 0;
	TU_CHECK(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0) == MAP_FAILED &&
		 errno == EPERM, "segment from the daemon is writable (errno %d)", errno);
	munmap(v, (size_t)SP_SEG_PAGES * PAGE);
	close(m.fd);
	gs.seg = 77;
	send_ok(a, C_GETSEG, &gs, sizeof(gs));
	TU_CHECK(expect_ack(a, "getseg 77") == -ENOENT, "C_GETSEG of a missing segment");

	/* b drops a reference it never took: ignored (dropping it could only
	 * free a page someone maps), a is untouched, b stays connected */
	unref(b, x);
	TU_CHECK(gstat(b).g.pool_pages == 1, "C_UNREF of an id not held freed a's page");
	hangup(b);
	unref(b2, 123456);
	TU_CHECK(gstat(b2).g.pool_pages == 1, "C_UNREF of a nonexistent id: daemon confused");
	hangup(b2);
	st = gstat(g);
	TU_CHECK(st.g.pool_pages == 1, "a's page went with b's bad C_UNREF");
	TU_CHECK(gstat(a).g.pool_pages == 1, "a's connection went with b's");
	/* a drops its own: no reply, the page goes */
	unref(a, x);
	st = gstat(a);
	TU_CHECK(st.g.pool_pages == 0 && st.g.pages_sharing == 0, "page not freed by its unref");
	/* dropping it twice changes nothing */
	unref(a, x);
	TU_CHECK(gstat(a).g.pool_pages == 0, "second C_UNREF of the same id");
	hangup(a);

	/* a connection that closes drops everything it holds */
	a = connect_hello();
	tu_fill(page, PAGE, 1);
	x = create(a, page);
	tu_fill(page, PAGE, 2);
	y = create(a, page);
	TU_CHECK(x != y, "two contents, one page");
	id = create(a, page);
	TU_CHECK(id == y, "same content, other page");
	TU_CHECK(gstat(g).g.pool_pages == 2, "two pages");
	hangup(a);
	TU_CHECK(tu_wait(pool_empty, &g, 5), "a closed connection's pages were not freed");
	TU_CHECK(gstat(g).g.processes == 1, "closed connections still counted");
}

/* ---- the page pipe, C_CREATE through it, merge hints ---- */

/* Whether pool page id holds `page`: the segment from C_GETSEG, mapped. A
 * connection of its own asks, after a lookup of the page's content: the
 * daemon hands a segment only to a process holding a page of it. */
static int pool_holds(int unused, uint32_t id, const void *page)
{
	struct sp_getseg gs = { .seg = id / SP_SEG_PAGES };
	struct sp_msg m;
	unsigned char *v;
	int eq, fd = connect_hello();

	(void)unused;
	if (lookup(fd, XXH3_64bits(page, PAGE), 0x7770000) / SP_SEG_PAGES != gs.seg) {
		close(fd);
		return 0; /* no pooled page of this content in that segment */
	}
	send_ok(fd, C_GETSEG, &gs, sizeof(gs));
	recv_ok(fd, &m, "getseg");
	TU_CHECK(m.h.type == D_SEG && m.fd >= 0, "C_GETSEG %u: type %u fd %d", gs.seg, m.h.type,
		 m.fd);
	v = mmap(NULL, (size_t)SP_SEG_PAGES * PAGE, PROT_READ, MAP_PRIVATE, m.fd, 0);
	TU_CHECK(v != MAP_FAILED, "mmap segment: %s", strerror(errno));
	eq = !memcmp(v + (size_t)(id % SP_SEG_PAGES) * PAGE, page, PAGE);
	munmap(v, (size_t)SP_SEG_PAGES * PAGE);
	close(m.fd);
	close(fd);
	return eq;
}

static void lookup_n(int fd, const uint64_t *hash, const uint64_t *addr, uint32_t n,
		     uint32_t *ids)
{
	struct { struct sp_lookup l; struct sp_lookup_ent e[16]; } q = { .l = { .n = n } };
	struct sp_msg m;
	uint32_t rn;

	TU_CHECK(n <= 16, "n");
	for (uint32_t i = 0; i < n; i++)
		q.e[i] = (struct sp_lookup_ent){ .hash = hash[i], .addr = addr[i] };
	send_ok(fd, C_LOOKUP, &q, (uint32_t)(sizeof(q.l) + n * sizeof(q.e[0])));
	recv_ok(fd, &m, "lookup");
	TU_CHECK(m.h.type == D_LOOKUP, "lookup answered with %u", m.h.type);
	memcpy(&rn, m.p, 4);
	TU_CHECK(rn == n, "D_LOOKUP: %u ids for %u hashes", rn, n);
	memcpy(ids, m.p + 4, (size_t)n * 4);
}

/* D_BUDGET's count of waiting hints. */
static uint32_t budget_hints(int fd)
{
	struct sp_budget b = { .want = 1 };
	struct sp_budget_r r;
	struct sp_msg m;

	send_ok(fd, C_BUDGET, &b, sizeof(b));
	recv_ok(fd, &m, "budget");
	TU_CHECK(m.h.type == D_BUDGET, "budget answered with %u", m.h.type);
	memcpy(&r, m.p, sizeof(r));
	return r.hints;
}

/* C_HINTS: the hints returned (at most max), into e. */
static uint32_t fetch_hints(int fd, uint32_t max, struct sp_hint *e, uint32_t room)
{
	struct sp_hints_req q = { .max = max };
	struct sp_msg m;
	uint32_t n;

	send_ok(fd, C_HINTS, &q, sizeof(q));
	recv_ok(fd, &m, "hints");
	TU_CHECK(m.h.type == D_HINTS, "C_HINTS answered with %u", m.h.type);
	memcpy(&n, m.p, 4);
	TU_CHECK(n <= max, "D_HINTS: %u hints, asked for at most %u", n, max);
	TU_CHECK(n <= room, "D_HINTS: %u hints", n);
	memcpy(e, m.p + sizeof(struct sp_hints), (size_t)n * sizeof(*e));
	return n;
}

static uint64_t hash_of(const void *page)
{
	return XXH3_64bits(page, PAGE);
}

static struct sp_stat_r pool_now(int g, uint64_t pages, uint64_t sharing, const char *when)
{
	struct sp_stat_r st = gstat(g);

	TU_CHECK(st.g.pool_pages == pages && st.g.pages_sharing == sharing,
		 "%s: pool_pages %llu (want %llu), pages_sharing %llu (want %llu)", when,
		 (unsigned long long)st.g.pool_pages, (unsigned long long)pages,
		 (unsigned long long)st.g.pages_sharing, (unsigned long long)sharing);
	return st;
}

/* C_PIPE's checks, and C_CREATE without the bytes it announces. */
static void test_pipe(int g)
{
	static unsigned char pg[4 * PAGE];
	struct sp_pipe p = { .pages = 4 };
	struct { struct sp_create c; struct sp_create_ent e[8]; } q;
	int base = count_fds(dpid), fd, w, sv[2], mfd;

	tu_fill(pg, sizeof(pg), 3131);
	memset(&q, 0, sizeof(q));
	for (int i = 0; i < 8; i++)
		q.e[i] = (struct sp_create_ent){ .hash = hash_of(pg + (i % 4) * PAGE), .look = NO_LOOK };

	/* before C_HELLO */
	fd = dial();
	w = send_pipe(fd, 4, 4);
	TU_CHECK(closed(fd), "C_PIPE before C_HELLO did not close the connection");
	close(w);
	close(fd);
	/* without a descriptor */
	fd = connect_hello();
	send_ok(fd, C_PIPE, &p, sizeof(p));
	TU_CHECK(closed(fd), "C_PIPE without a descriptor did not close the connection");
	close(fd);
	/* descriptors that are no pipe */
	mfd = memfd_create("sp-unit", MFD_CLOEXEC);
	TU_CHECK(mfd >= 0, "memfd");
	fd = connect_hello();
	TU_CHECK(sp_send(fd, C_PIPE, &p, sizeof(p), mfd) == 0, "send");
	TU_CHECK(closed(fd), "C_PIPE with a memfd did not close the connection");
	close(fd);
	close(mfd);
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	fd = connect_hello();
	TU_CHECK(sp_send(fd, C_PIPE, &p, sizeof(p), sv[0]) == 0, "send");
	TU_CHECK(closed(fd), "C_PIPE with a socket did not close the connection");
	close(fd);
	close(sv[0]);
	close(sv[1]);
	/* sizes: none, more than the pipe holds, more than SP_MAX_CREATE */
	static const struct { uint32_t pages, cap; } bad[] = {
		{ 0, 4 }, { 17, 16 }, { 2, 1 }, { 5, 4 }, { SP_MAX_CREATE + 1, SP_MAX_CREATE * 2 },
		{ 0xffffffffu, 16 }, { 0x100001u, 16 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		fd = connect_hello();
		w = send_pipe(fd, bad[i].pages, bad[i].cap);
		if (w < 0) { /* no pipe that large here */
			close(fd);
			continue;
		}
		TU_CHECK(closed(fd), "C_PIPE of %u pages on a pipe of %u: connection not closed",
			 bad[i].pages, bad[i].cap);
		close(w);
		close(fd);
	}
	gstat(g); /* every close above is handled before this reply */
	daemon_alive("bad C_PIPE");
	TU_CHECK(count_fds(dpid) == base, "refused C_PIPEs left %d descriptors in the daemon",
		 count_fds(dpid) - base);

	/* a good one, then another: the first is closed, the second used */
	fd = connect_hello();
	open_pipe(fd, 16);
	TU_CHECK(count_fds(dpid) == base + 2, "daemon descriptors %d, want %d (socket, pipe)",
		 count_fds(dpid), base + 2);
	w = pipes[fd];
	pipes[fd] = -1;
	open_pipe(fd, 4);
	TU_CHECK(count_fds(dpid) == base + 2, "a replaced pipe was kept: %d descriptors, want %d",
		 count_fds(dpid), base + 2);
	errno = 0;
	TU_CHECK(write(w, pg, PAGE) < 0 && errno == EPIPE,
		 "the replaced pipe still has a reader (write: %s)", strerror(errno));
	close(w);
	uint32_t id;
	create_n(fd, pg, 1, NULL, NULL, &id);
	TU_CHECK(id != SP_POOL_NONE && pool_holds(fd, id, pg), "create through the second pipe");
	/* C_CREATE of 0 pages: an empty answer */
	create_n(fd, pg, 0, NULL, NULL, &id);
	/* more pages than the pipe holds (all of them in it): closed */
	pipe_write(fd, pg, 4 * PAGE);
	q.c.n = 5;
	send_ok(fd, C_CREATE, &q, sizeof(q.c) + 5 * sizeof(q.e[0]));
	TU_CHECK(closed(fd), "C_CREATE of 5 pages on a pipe of 4 did not close the connection");
	hangup(fd);
	TU_CHECK(tu_wait(pool_empty, &g, 5), "the closed connection's page stayed");
	/* more pages than the C_PIPE claimed, though the pipe has room and
	 * holds them all: closed */
	fd = connect_hello();
	w = send_pipe(fd, 2, 16);
	TU_CHECK(w >= 0 && expect_ack(fd, "C_PIPE 2 of 16") == 0, "C_PIPE of 2 pages refused");
	pipes[fd] = w;
	pipe_write(fd, pg, 3 * PAGE);
	q.c.n = 3;
	send_ok(fd, C_CREATE, &q, sizeof(q.c) + 3 * sizeof(q.e[0]));
	TU_CHECK(closed(fd), "C_CREATE of 3 pages after C_PIPE of 2 did not close the connection");
	hangup(fd);
	TU_CHECK(tu_wait(pool_empty, &g, 5), "a refused C_CREATE left pool pages");

	/* C_CREATE without a pipe */
	for (uint32_t n = 0; n < 2; n++) {
		fd = connect_hello();
		q.c.n = n;
		send_ok(fd, C_CREATE, &q, (uint32_t)(sizeof(q.c) + n * sizeof(q.e[0])));
		TU_CHECK(closed(fd), "C_CREATE of %u pages without a pipe: connection not closed", n);
		close(fd);
	}
	/* fewer bytes in the pipe than announced: closed, nothing pooled */
	static const struct { uint32_t n; size_t bytes; } shortc[] = {
		{ 1, 0 }, { 1, 100 }, { 1, PAGE - 1 }, { 2, PAGE }, { 2, PAGE + 100 }, { 4, 3 * PAGE },
	};
	for (size_t i = 0; i < sizeof(shortc) / sizeof(shortc[0]); i++) {
		fd = connect_hello();
		open_pipe(fd, 4);
		if (shortc[i].bytes)
			pipe_write(fd, pg, shortc[i].bytes);
		q.c.n = shortc[i].n;
		send_ok(fd, C_CREATE, &q, (uint32_t)(sizeof(q.c) + shortc[i].n * sizeof(q.e[0])));
		TU_CHECK(closed(fd), "C_CREATE of %u pages with %zu bytes in the pipe: not closed",
			 shortc[i].n, shortc[i].bytes);
		hangup(fd);
		TU_CHECK(tu_wait(pool_empty, &g, 5),
			 "a C_CREATE of %u pages with %zu bytes left %llu pool pages", shortc[i].n,
			 shortc[i].bytes, (unsigned long long)gstat(g).g.pool_pages);
	}
	daemon_alive("short C_CREATE");
	TU_CHECK(tu_wait(settled, &g, 5), "connections or pages left after the pipe tests");
	TU_CHECK(count_fds(dpid) == base, "the pipe tests left %d descriptors in the daemon",
		 count_fds(dpid) - base);
}

/* C_CREATE through the pipe: the bytes that land in the pool. */
static void test_create_pipe(int g)
{
	static unsigned char pg[8 * PAGE] __attribute__((aligned(4096)));
	int a = connect_hello(), b = connect_hello();
	uint32_t ids[8], id;
	uint64_t hs[8];
	struct iovec iov[3];

	/* three pages, vmspliced as the library does, in one request */
	tu_fill(pg, 3 * PAGE, 5001);
	open_pipe(a, 16);
	for (int i = 0; i < 3; i++)
		iov[i] = (struct iovec){ pg + i * PAGE, PAGE };
	TU_CHECK(vmsplice(pipes[a], iov, 3, 0) == 3 * PAGE, "vmsplice: %s", strerror(errno));
	pipe_ready = 1;
	create_n(a, pg, 3, NULL, NULL, ids);
	TU_CHECK(ids[0] != SP_POOL_NONE && ids[1] != SP_POOL_NONE && ids[2] != SP_POOL_NONE,
		 "create of 3 pages: %#x %#x %#x", ids[0], ids[1], ids[2]);
	TU_CHECK(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
		 "3 contents, ids %u %u %u", ids[0], ids[1], ids[2]);
	for (int i = 0; i < 3; i++)
		TU_CHECK(pool_holds(b, ids[i], pg + i * PAGE),
			 "pool page %u does not hold page %d of the request", ids[i], i);
	pool_now(g, 3, 0, "3 pages created");
	/* they are in the stable index under their hashes */
	hs[0] = hash_of(pg + PAGE);
	lookup_n(b, hs, (uint64_t[]){ 0x5000 }, 1, &id);
	TU_CHECK(id == ids[1], "stable lookup of a created page: %#x, want %u", id, ids[1]);
	unref(b, id);

	/* the same new page twice in one request: one pool page, two references */
	tu_fill(pg + 3 * PAGE, PAGE, 5002);
	memcpy(pg + 4 * PAGE, pg + 3 * PAGE, PAGE);
	create_n(a, pg + 3 * PAGE, 2, NULL, NULL, ids + 3);
	TU_CHECK(ids[3] != SP_POOL_NONE && ids[3] == ids[4], "the same page twice: ids %#x %#x",
		 ids[3], ids[4]);
	pool_now(g, 4, 1, "the same page twice in one request");
	/* a pooled page again: its id */
	create_n(a, pg, 1, NULL, NULL, &id);
	TU_CHECK(id == ids[0], "a pooled page created again: %#x, want %u", id, ids[0]);
	pool_now(g, 4, 2, "a pooled page created again");
	TU_CHECK(pool_holds(b, ids[3], pg + 3 * PAGE), "the page created twice");

	/* a claimed hash that is not the bytes': SP_POOL_NONE, nothing pooled */
	tu_fill(pg + 5 * PAGE, PAGE, 5003);
	hs[0] = hash_of(pg + 5 * PAGE) ^ 1;
	create_n(a, pg + 5 * PAGE, 1, hs, NULL, &id);
	TU_CHECK(id == SP_POOL_NONE, "a page with a wrong hash got pool page %#x", id);
	pool_now(g, 4, 2, "a page with a wrong hash");
	uint32_t lk[2];
	lookup_n(b, (uint64_t[]){ hs[0], hs[0] ^ 1 }, (uint64_t[]){ 0x6000, 0x7000 }, 2, lk);
	TU_CHECK(lk[0] == SP_POOL_NONE && lk[1] == SP_POOL_NONE,
		 "a refused page is in the stable index (%#x %#x)", lk[0], lk[1]);
	/* the pipe is still in step: the same page with its hash now lands whole */
	id = create(a, pg + 5 * PAGE);
	TU_CHECK(pool_holds(b, id, pg + 5 * PAGE), "the page after a refused one is not its bytes");
	pool_now(g, 5, 2, "the page created with its hash");
	/* the hash of a pooled page, other bytes: refused, the pooled page untouched */
	tu_fill(pg + 6 * PAGE, PAGE, 5004);
	hs[0] = hash_of(pg);
	create_n(a, pg + 6 * PAGE, 1, hs, NULL, &id);
	TU_CHECK(id == SP_POOL_NONE, "bytes claimed to be a pooled page's got %#x", id);
	TU_CHECK(pool_holds(b, ids[0], pg), "the pooled page was overwritten by other bytes");
	pool_now(g, 5, 2, "bytes claimed to be a pooled page's");
	/* a bad page between two good ones: each good one its own bytes */
	tu_fill(pg + 5 * PAGE, 3 * PAGE, 5005);
	hs[0] = hash_of(pg + 5 * PAGE);
	hs[1] = hash_of(pg + 5 * PAGE) + 7;
	hs[2] = hash_of(pg + 7 * PAGE);
	create_n(a, pg + 5 * PAGE, 3, hs, NULL, ids + 5);
	TU_CHECK(ids[5] != SP_POOL_NONE && ids[6] == SP_POOL_NONE && ids[7] != SP_POOL_NONE &&
		 ids[5] != ids[7], "good, bad, good: %#x %#x %#x", ids[5], ids[6], ids[7]);
	TU_CHECK(pool_holds(b, ids[5], pg + 5 * PAGE) && pool_holds(b, ids[7], pg + 7 * PAGE),
		 "good, bad, good: the good pages' bytes differ");
	pool_now(g, 7, 2, "good, bad, good");

	hangup(a);
	hangup(b);
	TU_CHECK(tu_wait(pool_empty, &g, 5), "pages of a closed connection stayed");
}

static int hint_has(const struct sp_hint *e, uint32_t n, uint64_t addr, uint32_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (e[i].addr == addr && e[i].id == id)
			return 1;
	return 0;
}

/* The unstable match of two processes: B creates, A is told. */
/* max_page_sharing holds for a hint too. A and B match in the unstable
 * index; before B sends the page, E pools the same content (one mapper of
 * two allowed). B's C_CREATE then takes E's page, which is full with B:
 * A gets no hint (it took a third mapping, seen once in twenty runs of
 * integration/max_page_sharing), and finds the content itself later. */
static void test_hint_full(int g)
{
	static unsigned char pg[PAGE];
	int a = connect_hello(), b = connect_hello(), e = connect_hello();
	uint32_t id, x;
	uint64_t h;

	tu_fill(pg, PAGE, 7301);
	h = hash_of(pg);
	TU_CHECK(set_knob(g, KNOB_MAX_PAGE_SHARING, 2) == 0, "max_page_sharing=2");
	TU_CHECK(lookup(a, h, 0xa0000) == SP_POOL_NONE, "A's offer");
	TU_CHECK(lookup(b, h, 0xb0000) == SP_POOL_CREATE, "B's offer did not match A's");
	x = create(e, pg);
	pool_now(g, 1, 0, "E pooled the content");
	create_n(b, pg, 1, NULL, (uint32_t[]){ 0 }, &id);
	TU_CHECK(id == x, "B's create: %#x, want E's page %u", id, x);
	pool_now(g, 1, 1, "B took E's page, which max_page_sharing=2 then fills");
	TU_CHECK(budget_hints(a) == 0, "A was hinted a page already mapped twice");
	unref(b, x);
	unref(e, x);
	pool_now(g, 0, 0, "B and E dropped theirs");
	TU_CHECK(set_knob(g, KNOB_MAX_PAGE_SHARING, 256) == 0, "max_page_sharing=256");
	hangup(a);
	hangup(b);
	hangup(e);
}

static void test_hints(int g)
{
	static unsigned char pg[8 * PAGE];
	static struct sp_hint e[SP_MAX_HINTS];
	int a = connect_hello(), b = connect_hello(), c;
	uint32_t ids[4], x, n;
	uint64_t h[4];

	tu_fill(pg, 8 * PAGE, 7001);
	for (int i = 0; i < 4; i++)
		h[i] = hash_of(pg + i * PAGE);
	/* a connection that never had a hint: none, and none waiting */
	TU_CHECK(fetch_hints(a, 16, e, SP_MAX_HINTS) == 0, "hints for a new connection");
	TU_CHECK(budget_hints(a) == 0, "hints waiting for a new connection");

	/* A offers page 1; B offers page 0 and page 1 */
	lookup_n(a, &h[1], (uint64_t[]){ 0xa0000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE, "A's first offer: %#x", ids[0]);
	lookup_n(b, h, (uint64_t[]){ 0xb0000, 0xb1000 }, 2, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE && ids[1] == SP_POOL_CREATE, "B's offer: %#x %#x", ids[0],
		 ids[1]);
	TU_CHECK(budget_hints(a) == 0, "A has a hint before B created the page");
	create_n(b, pg + PAGE, 1, NULL, (uint32_t[]){ 1 }, &x);
	TU_CHECK(x != SP_POOL_NONE, "B's create");
	TU_CHECK(budget_hints(b) == 0, "B got a hint for its own create");
	TU_CHECK(budget_hints(a) == 1, "A's budget after B created its match: %u hints, want 1",
		 budget_hints(a));
	pool_now(g, 1, 1, "B created A's match (A's reference taken)");
	/* max 0: nothing taken */
	TU_CHECK(fetch_hints(a, 0, e, SP_MAX_HINTS) == 0, "C_HINTS max 0 returned hints");
	TU_CHECK(budget_hints(a) == 1, "C_HINTS max 0 took the hint");
	n = fetch_hints(a, 16, e, SP_MAX_HINTS);
	TU_CHECK(n == 1 && e[0].addr == 0xa0000 && e[0].id == x,
		 "D_HINTS: n %u addr %#llx id %u, want 1 0xa0000 %u", n,
		 (unsigned long long)(n ? e[0].addr : 0), n ? e[0].id : 0, x);
	TU_CHECK(budget_hints(a) == 0, "the hint was not taken");
	TU_CHECK(fetch_hints(a, 16, e, SP_MAX_HINTS) == 0, "a hint given twice");
	/* B creates it again with the same entry: its id, no second hint */
	create_n(b, pg + PAGE, 1, NULL, (uint32_t[]){ 1 }, &ids[0]);
	TU_CHECK(ids[0] == x, "B's second create: %#x, want %u", ids[0], x);
	TU_CHECK(budget_hints(a) == 0, "a second hint for one match");
	pool_now(g, 1, 2, "B holds 2, A 1");
	/* A's reference keeps the page when B drops all of its */
	unref(b, x);
	unref(b, x);
	pool_now(b, 1, 0, "B dropped its references");
	TU_CHECK(pool_holds(a, x, pg + PAGE), "the page A was hinted lost its bytes");
	c = connect_hello();
	lookup_n(c, &h[1], (uint64_t[]){ 0xc0000 }, 1, ids);
	TU_CHECK(ids[0] == x, "the hinted page left the stable index: %#x", ids[0]);
	unref(c, x);
	hangup(c);
	unref(a, x);
	pool_now(a, 0, 0, "A dropped the hinted reference");
	/* it was exactly one reference: the page is gone, a second drop
	 * changes nothing */
	unref(a, x);
	pool_now(a, 0, 0, "A dropped the hinted reference twice");
	hangup(a);

	/* A closes with a hint waiting: its reference goes with it */
	a = connect_hello();
	lookup_n(a, &h[2], (uint64_t[]){ 0xa2000 }, 1, ids);
	lookup_n(b, &h[2], (uint64_t[]){ 0xb2000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_CREATE, "B's offer of page 2: %#x", ids[0]);
	create_n(b, pg + 2 * PAGE, 1, NULL, (uint32_t[]){ 0 }, &x);
	TU_CHECK(x != SP_POOL_NONE, "create page 2");
	pool_now(g, 1, 1, "page 2 with A's hint");
	hangup(a);
	for (int i = 0; i < 100 && gstat(g).g.pages_sharing; i++)
		usleep(20000);
	pool_now(g, 1, 0, "A closed with a hint waiting");
	unref(b, x);
	pool_now(b, 0, 0, "page 2 unreferenced");

	/* no hint without a matched entry: look out of range, an entry that
	 * got SP_POOL_NONE, an entry of an earlier C_LOOKUP */
	a = connect_hello();
	lookup_n(a, &h[3], (uint64_t[]){ 0xa3000 }, 1, ids);
	lookup_n(b, (uint64_t[]){ hash_of(pg + 4 * PAGE), h[3] }, (uint64_t[]){ 0xb4000, 0xb3000 },
		 2, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE && ids[1] == SP_POOL_CREATE, "offer of page 3: %#x %#x",
		 ids[0], ids[1]);
	create_n(b, pg + 3 * PAGE, 1, NULL, (uint32_t[]){ 2 }, &x);
	create_n(b, pg + 3 * PAGE, 1, NULL, (uint32_t[]){ NO_LOOK }, &ids[2]);
	create_n(b, pg + 3 * PAGE, 1, NULL, (uint32_t[]){ 0 }, &ids[3]);
	TU_CHECK(x != SP_POOL_NONE && ids[2] == x && ids[3] == x, "creates of page 3");
	TU_CHECK(budget_hints(a) == 0, "a hint from a create that named no matched entry");
	/* entry 1 of the previous C_LOOKUP matched; this one's did not */
	lookup_n(b, (uint64_t[]){ hash_of(pg + 5 * PAGE), hash_of(pg + 7 * PAGE) },
		 (uint64_t[]){ 0xb5000, 0xb7000 }, 2, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE && ids[1] == SP_POOL_NONE, "new pages matched");
	create_n(b, pg + 3 * PAGE, 1, NULL, (uint32_t[]){ 1 }, &ids[0]);
	TU_CHECK(ids[0] == x, "page 3 again");
	TU_CHECK(budget_hints(a) == 0, "a hint from an entry of an earlier C_LOOKUP");
	pool_now(g, 1, 3, "page 3, B's 4 references");
	for (int i = 0; i < 4; i++)
		unref(b, x);
	pool_now(b, 0, 0, "page 3 unreferenced");

	/* no hint for bytes that do not match the hash */
	lookup_n(a, &h[0], (uint64_t[]){ 0xa0000 }, 1, ids); /* h[0]: B's entry, matched */
	TU_CHECK(ids[0] == SP_POOL_CREATE, "A's offer of page 0: %#x", ids[0]);
	uint64_t hh = h[0];
	create_n(a, pg + 6 * PAGE, 1, &hh, (uint32_t[]){ 0 }, &x);
	TU_CHECK(x == SP_POOL_NONE, "other bytes under page 0's hash: %#x", x);
	TU_CHECK(budget_hints(b) == 0, "a hint for a refused page");
	pool_now(g, 0, 0, "a refused page");

	/* no hint for a process that has gone */
	c = connect_hello();
	lookup_n(c, &h[3], (uint64_t[]){ 0xc3000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE, "C's offer of page 3: %#x", ids[0]);
	lookup_n(a, &h[3], (uint64_t[]){ 0xa3000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_CREATE, "A's offer of page 3: %#x", ids[0]);
	hangup(c);
	for (int i = 0; i < 100 && gstat(g).g.processes != 3; i++)
		usleep(20000);
	create_n(a, pg + 3 * PAGE, 1, NULL, (uint32_t[]){ 0 }, &x);
	TU_CHECK(x != SP_POOL_NONE, "A's create of page 3");
	pool_now(g, 1, 0, "a hint for a closed connection");
	unref(a, x);
	pool_now(a, 0, 0, "page 3 unreferenced");

	/* several hints, fetched in parts; each address with its page */
	tu_fill(pg, 3 * PAGE, 7002);
	for (int i = 0; i < 3; i++)
		h[i] = hash_of(pg + i * PAGE);
	lookup_n(a, h, (uint64_t[]){ 0x1000, 0x2000, 0x3000 }, 3, ids);
	lookup_n(b, h, (uint64_t[]){ 0x91000, 0x92000, 0x93000 }, 3, ids);
	TU_CHECK(ids[0] == SP_POOL_CREATE && ids[1] == SP_POOL_CREATE && ids[2] == SP_POOL_CREATE,
		 "B's offer of 3 pages");
	create_n(b, pg, 3, NULL, (uint32_t[]){ 0, 1, 2 }, ids);
	TU_CHECK(budget_hints(a) == 3, "3 matches: %u hints", budget_hints(a));
	pool_now(g, 3, 3, "3 hinted pages");
	n = fetch_hints(a, 2, e, SP_MAX_HINTS);
	TU_CHECK(n == 2, "C_HINTS max 2: %u", n);
	TU_CHECK(budget_hints(a) == 1, "after fetching 2 of 3: %u waiting", budget_hints(a));
	n += fetch_hints(a, SP_MAX_HINTS, e + 2, SP_MAX_HINTS - 2);
	TU_CHECK(n == 3, "the last hint: %u in all", n);
	for (int i = 0; i < 3; i++)
		TU_CHECK(hint_has(e, 3, 0x1000u * (i + 1), ids[i]),
			 "no hint for address %#x with page %u", 0x1000 * (i + 1), ids[i]);
	for (int i = 0; i < 3; i++) {
		unref(a, ids[i]);
		unref(b, ids[i]);
	}
	pool_now(g, 0, 0, "3 hinted pages unreferenced");

	/* one process, the same content at two addresses: hinted to itself */
	tu_fill(pg, PAGE, 7003);
	h[0] = hash_of(pg);
	lookup_n(a, h, (uint64_t[]){ 0x41000 }, 1, ids);
	lookup_n(a, h, (uint64_t[]){ 0x41000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_NONE, "the same page offered again matched itself");
	lookup_n(a, h, (uint64_t[]){ 0x42000 }, 1, ids);
	TU_CHECK(ids[0] == SP_POOL_CREATE, "the same content at another address: %#x", ids[0]);
	create_n(a, pg, 1, NULL, (uint32_t[]){ 0 }, &x);
	n = fetch_hints(a, 16, e, SP_MAX_HINTS);
	TU_CHECK(n == 1 && e[0].addr == 0x41000 && e[0].id == x, "own hint: n %u", n);
	pool_now(g, 1, 1, "one process, two references");
	unref(a, x);
	unref(a, x);
	pool_now(a, 0, 0, "own hint unreferenced");

	/* A offers its hinted page again before fetching the hint: the answer
	 * is the hinted page, on the reference already A's, and the hint is
	 * gone; a page that changed meanwhile leaves the hint waiting */
	tu_fill(pg, 3 * PAGE, 7004);
	for (int i = 0; i < 3; i++)
		h[i] = hash_of(pg + i * PAGE);
	lookup_n(a, h, (uint64_t[]){ 0xa6000, 0xa7000 }, 2, ids);
	lookup_n(b, h, (uint64_t[]){ 0xb6000, 0xb7000 }, 2, ids);
	TU_CHECK(ids[0] == SP_POOL_CREATE && ids[1] == SP_POOL_CREATE, "B's offer: %#x %#x",
		 ids[0], ids[1]);
	create_n(b, pg, 2, NULL, (uint32_t[]){ 0, 1 }, ids + 2);
	TU_CHECK(budget_hints(a) == 2, "2 hints waiting");
	pool_now(g, 2, 2, "2 hinted pages");
	lookup_n(a, (uint64_t[]){ h[0], h[2] }, (uint64_t[]){ 0xa6000, 0xa7000 }, 2, ids);
	TU_CHECK(ids[0] == ids[2], "A's hinted page offered again: %#x, want the hinted %u",
		 ids[0], ids[2]);
	TU_CHECK(ids[1] != ids[3], "A's changed page got the hinted page %u", ids[3]);
	pool_now(g, 2, 2, "the hinted page claimed by a lookup (no second reference)");
	n = fetch_hints(a, 16, e, SP_MAX_HINTS);
	TU_CHECK(n == 1 && e[0].addr == 0xa7000 && e[0].id == ids[3],
		 "after the claim: n %u, want the changed page's hint only", n);
	unref(a, ids[2]);
	unref(a, ids[3]);
	unref(b, ids[2]);
	unref(b, ids[3]);
	pool_now(g, 0, 0, "claimed and fetched hints unreferenced");
	hangup(a);
	hangup(b);
	TU_CHECK(tu_wait(settled, &g, 5), "hint tests left pages or connections");
}

/* Requests that arrive with descriptors: answered, the fds closed. */
/* A freed pool page is reused before any never-used one, by the next
 * extent a creator sets aside: a sealed segment cannot give a page's memory
 * back, so new content must land on the freed pages (a workload rewriting merged memory otherwise grew the pool's
 * footprint by what it rewrote, every time: found with QEMU guests). */
static void test_reuse(int g)
{
	unsigned char pg[8 * PAGE];
	uint32_t old[8], nw[8];
	int a = connect_hello();

	tu_fill(pg, sizeof(pg), 9101);
	create_n(a, pg, 8, NULL, NULL, old);
	for (int i = 0; i < 8; i++)
		unref(a, old[i]);
	pool_now(g, 0, 0, "all 8 freed");
	/* The next extent (a's was set aside and goes back when it leaves)
	 * starts on the freed pages. */
	hangup(a);
	a = connect_hello();
	tu_fill(pg, sizeof(pg), 9102); /* new content */
	create_n(a, pg, 8, NULL, NULL, nw);
	for (int i = 0; i < 8; i++) {
		int reused = 0;
		for (int k = 0; k < 8; k++)
			reused |= nw[i] == old[k];
		TU_CHECK(reused, "new page %d got id %u, not one of the 8 freed", i, nw[i]);
		TU_CHECK(pool_holds(g, nw[i], pg + (size_t)i * PAGE), "reused page %d's bytes", i);
	}
	for (int i = 0; i < 8; i++)
		unref(a, nw[i]);
	pool_now(g, 0, 0, "reused pages freed");
	hangup(a);
	/* its connection and pipe closed before the next test counts fds */
	TU_CHECK(tu_wait(settled, &g, 5), "connection not closed");
}

static int32_t fill(int fd, uint32_t first, uint32_t n)
{
	struct sp_fill f = { first, n };

	send_ok(fd, C_FILL, &f, sizeof(f));
	return expect_ack(fd, "C_FILL");
}

/* C_FILL (DESIGN.md, "Filling gaps"): free ids become the asker's holes,
 * written references that cost no pool page; a second process laid out
 * alike shares them; ids holding content, still reserved or in a segment
 * the asker holds nothing of are refused; a malformed one closes. */
static void test_fill(int g)
{
	static unsigned char pg[3 * PAGE];
	uint32_t ids[3];
	int a = connect_hello(), b = connect_hello(), e = connect_hello(), y;
	struct sp_stat_r st;

	tu_fill(pg, sizeof(pg), 9301);
	create_n(a, pg, 3, NULL, NULL, ids);
	TU_CHECK(ids[1] == ids[0] + 1 && ids[2] == ids[0] + 2, "3 pages created: %u %u %u",
		 ids[0], ids[1], ids[2]);
	unref(a, ids[1]); /* a gap: its id is free now */
	pool_now(g, 2, 0, "the middle page freed");
	TU_CHECK(fill(b, ids[1], 1) == -EACCES, "B holds nothing in the segment");
	TU_CHECK(fill(a, ids[1], 1) == 0, "A's hole");
	st = pool_now(g, 2, 0, "a hole costs no pool page");
	TU_CHECK(st.g.pages_shared == 2 && st.g.pool_written == 0,
		 "a hole: pages_shared %llu, pool_written %llu (want 2, 0)",
		 (unsigned long long)st.g.pages_shared, (unsigned long long)st.g.pool_written);
	TU_CHECK(lookup(b, hash_of(pg), 0xb0000) == ids[0], "B finds A's first page");
	TU_CHECK(fill(b, ids[1], 1) == 0, "B shares A's hole");
	TU_CHECK(fill(a, ids[2], 1) == -EBUSY, "a page with content as a hole");
	TU_CHECK(fill(a, ids[2] + 1, 2) == -EBUSY, "ids still in A's reservation");
	pool_now(g, 2, 1, "B maps A's first page; holes and refusals cost nothing");
	/* Malformed: too many, none, across a segment's end. */
	y = connect_hello();
	TU_CHECK(lookup(y, hash_of(pg), 0xe0000) == ids[0], "Y finds A's first page");
	send_ok(y, C_FILL, &(struct sp_fill){ ids[1], SP_MAX_FILL + 1 }, sizeof(struct sp_fill));
	TU_CHECK(closed(y), "C_FILL of %u ids not closed", SP_MAX_FILL + 1);
	hangup(y);
	send_ok(e, C_FILL, &(struct sp_fill){ SP_SEG_PAGES - 1, 2 }, sizeof(struct sp_fill));
	TU_CHECK(closed(e), "C_FILL across a segment's end not closed");
	hangup(e);
	unref(a, ids[1]);
	unref(b, ids[1]);
	unref(b, ids[0]);
	unref(a, ids[0]);
	unref(a, ids[2]);
	pool_now(g, 0, 0, "holes and pages dropped");
	hangup(a);
	hangup(b);
	TU_CHECK(tu_wait(settled, &g, 5), "connections not closed");
}

/* C_MOVE of n ids: the reply's ids into out. */
static void move(int fd, const uint32_t *ids, uint32_t n, uint32_t *out)
{
	struct { uint32_t n; uint32_t id[SP_MAX_MOVE]; } q = { .n = n };
	struct sp_msg m;
	uint32_t rn;

	memcpy(q.id, ids, n * sizeof(uint32_t));
	send_ok(fd, C_MOVE, &q, (uint32_t)(sizeof(uint32_t) * (1 + n)));
	recv_ok(fd, &m, "move");
	TU_CHECK(m.h.type == D_MOVE, "move answered with %u", m.h.type);
	memcpy(&rn, m.p, 4);
	TU_CHECK(rn == n, "D_MOVE: %u ids for %u pages", rn, n);
	memcpy(out, m.p + 4, (size_t)n * 4);
}

/* Defragmentation: pages are copied only once every mapper asked, to
 * consecutive pages, each asker gets the same ones; a page one does not
 * hold is never moved for it. */
static void test_move(int g)
{
	unsigned char pg[8 * PAGE];
	uint32_t old[8], rev[8], got[8], again[8];
	int a = connect_hello(), b = connect_hello(), c = connect_hello();

	tu_fill(pg, sizeof(pg), 9201);
	create_n(a, pg, 8, NULL, NULL, old);
	for (int i = 0; i < 8; i++) {
		TU_CHECK(lookup(b, hash_of(pg + (size_t)i * PAGE), 0x100000 + (uint64_t)i * PAGE) ==
			 old[i], "b's lookup of page %d", i);
		rev[i] = old[7 - i]; /* the mappers' order: scattered in the pool */
	}
	pool_now(g, 8, 8, "8 pages, 2 mappers");
	move(c, rev, 8, got);
	for (int i = 0; i < 8; i++)
		TU_CHECK(got[i] == SP_POOL_NONE, "moved page %d for a connection that does not hold "
			 "it: %u", i, got[i]);
	move(a, rev, 8, got);
	for (int i = 0; i < 8; i++)
		TU_CHECK(got[i] == SP_POOL_NONE, "page %d copied while b had not asked: %u", i,
			 got[i]);
	move(a, rev, 8, got); /* asking twice counts once */
	for (int i = 0; i < 8; i++)
		TU_CHECK(got[i] == SP_POOL_NONE, "page %d copied when a asked again: %u", i, got[i]);
	move(b, rev, 8, got);
	for (int i = 0; i < 8; i++) {
		TU_CHECK(got[i] != SP_POOL_NONE && (!i || got[i] == got[i - 1] + 1),
			 "b's page %d: %u after %u, not consecutive", i, got[i], i ? got[i - 1] : 0);
		TU_CHECK(pool_holds(g, got[i], pg + (size_t)(7 - i) * PAGE), "moved page %d's bytes",
			 i);
	}
	pool_now(g, 16, 8, "8 pages copied for b");
	move(a, rev, 8, again);
	TU_CHECK(!memcmp(again, got, sizeof(got)), "a did not get the pages b got");
	pool_now(g, 16, 16, "a follows b: nothing copied again");
	for (int i = 0; i < 8; i++) {
		unref(a, old[i]);
		unref(b, old[i]);
	}
	gstat(a);
	gstat(b); /* a's and b's C_UNREF are processed before these replies */
	pool_now(g, 8, 8, "the old pages freed");
	for (int i = 0; i < 8; i++) {
		unref(a, got[i]);
		unref(b, got[i]);
	}
	gstat(a);
	gstat(b);
	pool_now(g, 0, 0, "all freed");
	TU_CHECK(gstat(g).g.pages_moved == 8, "pages_moved %llu",
		 (unsigned long long)gstat(g).g.pages_moved);
	hangup(a);
	hangup(b);
	hangup(c);
	TU_CHECK(tu_wait(settled, &g, 5), "connections not closed");
}

static void test_fd_passing(int g)
{
	int base = count_fds(dpid), mfd = memfd_create("sp-unit", MFD_CLOEXEC);
	struct sp_statreq s = { 0 };
	struct sp_msg m;

	TU_CHECK(mfd >= 0, "memfd_create");
	for (int i = 0; i < 200; i++) {
		TU_CHECK(sp_send(g, C_STAT, &s, sizeof(s), mfd) == 0, "send with fd");
		recv_ok(g, &m, "stat with fd");
		TU_CHECK(m.h.type == D_STAT, "C_STAT with an fd: reply %u", m.h.type);
	}
	/* and with a bad message on a connection of its own */
	for (int i = 0; i < 50; i++) {
		int fd = connect_hello();
		TU_CHECK(sp_send(fd, C_BUDGET, &s, sizeof(s), mfd) == 0, "send");
		TU_CHECK(closed(fd), "bad C_BUDGET not closed");
		close(fd);
	}
	close(mfd);
	daemon_alive("fd passing");
	gstat(g); /* the daemon has processed every close before this reply */
	TU_CHECK(count_fds(dpid) == base, "the daemon holds %d more descriptors after requests "
		 "that carried fds", count_fds(dpid) - base);
}

/* ---- garbage ---- */

enum outcome { CLOSE = 1, NOREPLY };

static size_t fixed_of(uint16_t t, size_t *elem, uint32_t *max)
{
	*elem = 0;
	*max = 0;
	switch (t) {
	case C_HELLO: return sizeof(struct sp_hello);
	case C_BUDGET: return sizeof(struct sp_budget);
	case C_LOOKUP: *elem = sizeof(struct sp_lookup_ent); *max = SP_MAX_LOOKUP;
		return sizeof(struct sp_lookup);
	case C_CREATE: *elem = sizeof(struct sp_create_ent); *max = SP_MAX_CREATE;
		return sizeof(struct sp_create);
	case C_PIPE: return sizeof(struct sp_pipe);
	case C_HINTS: return sizeof(struct sp_hints_req);
	case D_HINTS: *elem = sizeof(struct sp_hint); *max = SP_MAX_HINTS;
		return sizeof(struct sp_hints);
	case C_UNREF: *elem = 4; *max = SP_MAX_UNREF; return sizeof(struct sp_ids);
	case C_GETSEG: return sizeof(struct sp_getseg);
	case C_FORK: case C_MARKER: return sizeof(struct sp_fork);
	case C_COW: *elem = 4; *max = SP_MAX_UNREF; return sizeof(struct sp_ids);
	case C_STAT: return sizeof(struct sp_statreq);
	case C_SET: return sizeof(struct sp_set);
	case C_UNMERGE: return sizeof(struct sp_unmerge);
	case D_HELLO: return sizeof(struct sp_hello_r);
	case D_BUDGET: return sizeof(struct sp_budget_r);
	case D_LOOKUP: *elem = 4; *max = SP_MAX_LOOKUP; return sizeof(struct sp_ids);
	case D_CREATE: *elem = 4; *max = SP_MAX_CREATE; return sizeof(struct sp_ids);
	case D_SEG: return sizeof(struct sp_seg_r);
	case D_ACK: return sizeof(struct sp_ack);
	case D_STAT: return sizeof(struct sp_stat_r);
	case C_PROCS: return sizeof(struct sp_procs_req);
	case D_PROCS: *elem = sizeof(struct sp_proc_ent); *max = SP_MAX_PROCS;
		return sizeof(struct sp_procs);
	default: return SIZE_MAX;
	}
}

static int well_formed(uint16_t t, const unsigned char *p, uint32_t len)
{
	size_t elem;
	uint32_t max, n;
	size_t fixed = fixed_of(t, &elem, &max);

	if (fixed == SIZE_MAX || len < fixed)
		return 0;
	if (!elem)
		return len == fixed;
	memcpy(&n, p, 4);
	return n <= max && len == fixed + (size_t)n * elem;
}

/* What the protocol says must follow: CLOSE, NOREPLY or the reply type.
 * pipe_pages: the capacity of the pipe sent with the message, or -1. */
static int expected(uint16_t t, const unsigned char *p, uint32_t len, int helloed,
		    int pipe_pages, int observer)
{
	uint32_t v, n, flags;

	if (!well_formed(t, p, len))
		return CLOSE;
	if (!helloed) {
		memcpy(&v, p, 4);
		memcpy(&flags, p + 4, 4);
		/* A process's hello may carry its marker; a pipe is not one. */
		if (t == C_HELLO && v == SP_PROTO_VERSION && pipe_pages >= 0 &&
		    !(flags & HELLO_OBSERVER))
			return CLOSE;
		return t == C_HELLO && v == SP_PROTO_VERSION ? D_HELLO : CLOSE;
	}
	switch (t) {
	case C_BUDGET: return D_BUDGET;
	case C_LOOKUP: return observer ? CLOSE : D_LOOKUP;
	case C_COW: return NOREPLY;
	case C_FORK: case C_MARKER: return CLOSE; /* no marker (a pipe is not one) */
	case C_CREATE: return CLOSE; /* no pipe on this connection */
	case C_PIPE:
		memcpy(&n, p, 4);
		return pipe_pages >= 0 && n >= 1 && n <= SP_MAX_CREATE && n <= (uint32_t)pipe_pages ?
		       D_ACK : CLOSE;
	case C_HINTS: return D_HINTS; /* none waiting: n 0 */
	case C_UNREF: return NOREPLY; /* holds nothing: ignored */
	case C_GETSEG: return D_SEG; /* or D_ACK -ENOENT */
	case C_SET: case C_UNMERGE: return D_ACK;
	case C_STAT: return D_STAT; /* or D_ACK -ESRCH */
	case C_PROCS: return D_PROCS;
	case C_FILL: {
		struct sp_fill f;
		memcpy(&f, p, sizeof(f));
		if (observer || !f.n || f.n > SP_MAX_FILL || f.first / SP_SEG_PAGES >= SP_MAX_SEGS ||
		    (f.first + f.n - 1) / SP_SEG_PAGES != f.first / SP_SEG_PAGES)
			return CLOSE;
		return D_ACK; /* -EACCES: it holds nothing */
	}
	default: return CLOSE; /* C_HELLO again, or a reply type */
	}
}

static void check_reply(const struct sp_msg *m, int want, uint16_t t, const unsigned char *p,
			long i)
{
	uint32_t n;

	if (m->h.type == D_ACK && (want == D_SEG || want == D_STAT || want == D_ACK)) {
		struct sp_ack a;
		memcpy(&a, m->p, sizeof(a));
		TU_CHECK(a.err == 0 || a.err == -EINVAL || a.err == -ENOENT || a.err == -ESRCH,
			 "garbage %ld: D_ACK %d", i, a.err);
		TU_CHECK(want == D_ACK || a.err < 0, "garbage %ld: D_ACK 0 for type %u", i, t);
		TU_CHECK(t != C_PIPE || a.err == 0, "garbage %ld: C_PIPE acked %d", i, a.err);
		return;
	}
	TU_CHECK(m->h.type == want, "garbage %ld (type %u): reply %u, want %d", i, t, m->h.type,
		 want);
	if (want == D_HINTS) {
		memcpy(&n, m->p, 4);
		TU_CHECK(n == 0, "garbage %ld: %u hints for a connection that has none", i, n);
	}
	if (want == D_LOOKUP || want == D_CREATE) {
		uint32_t rn;
		memcpy(&n, p, 4);
		memcpy(&rn, m->p, 4);
		TU_CHECK(rn == n, "garbage %ld: %u answers for %u requests", i, rn, n);
	}
	TU_CHECK((m->fd >= 0) == (m->h.type == D_SEG), "garbage %ld: fd %d with reply %u", i,
		 m->fd, m->h.type);
}

/* Larger than any garbage payload (4096 bytes at most). */
#define GARBAGE_BUF (3 * 4096)

static void garbage_one(long i, unsigned char *p)
{
	uint16_t t;
	uint32_t len;
	unsigned w = (unsigned)(rnd() % 100);
	int helloed = rnd() % 2, fd, want, pf[2] = { -1, -1 }, pipe_pages = -1;
	int observer = rnd() % 4 == 0;
	struct sp_msg m;

	if (w < 45)
		t = (uint16_t)(C_HELLO + rnd() % (C_PROCS - C_HELLO + 1));
	else if (w < 55)
		t = (uint16_t)(D_HELLO + rnd() % (D_PROCS - D_HELLO + 1));
	else
		t = (uint16_t)rnd();
	len = (uint32_t)(rnd() % 4097);
	for (uint32_t k = 0; k < GARBAGE_BUF; k += 8) {
		uint64_t x = rnd();
		memcpy(p + k, &x, 8);
	}
	if (rnd() % 2) {
		/* near-valid: the exact size, plausible fields */
		size_t elem, fixed;
		uint32_t max;

		fixed = fixed_of(t, &elem, &max);
		if (fixed != SIZE_MAX) {
			uint32_t n = (uint32_t)(rnd() % 3);
			if (t == C_UNREF && rnd() % 2)
				n = 0;
			len = (uint32_t)(fixed + n * elem);
			if (elem)
				memcpy(p, &n, 4);
			if (t == C_HELLO && rnd() % 2) {
				uint32_t v = SP_PROTO_VERSION, f = (uint32_t)rnd() % 2;
				memcpy(p, &v, 4);
				memcpy(p + 4, &f, 4);
			}
			if (t == C_SET) {
				struct sp_set s = { .knob = (uint32_t)(rnd() % 7),
						    .value = rnd() % 4 ? rnd() % 300 : rnd() };
				/* run: 1 (accepted, as it was) or 6 (refused) */
				if (s.knob == KNOB_RUN)
					s.value = 1 + (rnd() % 2) * 5;
				memcpy(p, &s, sizeof(s));
			}
			if (t == C_STAT || t == C_UNMERGE) {
				int32_t pid = rnd() % 2 ? 0 : (int32_t)rnd();
				memcpy(p, &pid, 4);
			}
			if (t == C_GETSEG) {
				uint32_t seg = (uint32_t)(rnd() % 3);
				memcpy(p, &seg, 4);
			}
			if (t == C_PIPE) {
				uint32_t pages = (uint32_t)(rnd() % 20);
				memcpy(p, &pages, 4);
			}
			if (t == C_HINTS && rnd() % 2) {
				uint32_t max = (uint32_t)(rnd() % 3);
				memcpy(p, &max, 4);
			}
		}
	}
	/* C_PIPE, or now and then another type, with the read end of a pipe */
	if ((t == C_PIPE && rnd() % 2) || rnd() % 20 == 0) {
		TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe");
		pipe_pages = fcntl(pf[1], F_GETPIPE_SZ) / (int)PAGE;
	}
	want = expected(t, p, len, helloed, pipe_pages, observer);

	fd = dial();
	if (helloed)
		hello(fd, observer ? HELLO_OBSERVER : 0);
	/* The daemon may close before reading a follow-up: send errors are fine. */
	if (sp_send(fd, t, p, len, pf[0]) < 0 && want != CLOSE)
		TU_FAIL("garbage %ld: send failed", i);
	if (pf[0] >= 0) {
		close(pf[0]);
		close(pf[1]);
	}
	if (helloed) {
		struct sp_statreq s = { 0 };
		(void)sp_send(fd, C_STAT, &s, sizeof(s), -1);
	}
	if (want == CLOSE) {
		TU_CHECK(closed(fd), "garbage %ld (type %u len %u, %s): connection not closed", i,
			 t, len, helloed ? "after hello" : "no hello");
	} else {
		if (want != NOREPLY) {
			recv_ok(fd, &m, "garbage reply");
			check_reply(&m, want, t, p, i);
			if (m.fd >= 0)
				close(m.fd);
		}
		if (helloed) {
			recv_ok(fd, &m, "follow-up stat");
			TU_CHECK(m.h.type == D_STAT, "garbage %ld (type %u): follow-up got %u", i, t,
				 m.h.type);
		}
	}
	close(fd);
}

static int settled(void *arg)
{
	struct sp_stat_r st = gstat(*(int *)arg);

	return st.g.processes == 1 && st.g.pool_pages == 0 && st.g.pages_sharing == 0;
}

static void test_garbage(int g)
{
	static unsigned char p[GARBAGE_BUF];
	struct sp_stat_r st;
	int base = count_fds(dpid);

	for (long i = 0; i < 2000; i++) {
		garbage_one(i, p);
		if (i % 100 == 0)
			daemon_alive("garbage");
	}
	daemon_alive("after garbage");
	st = gstat(g);
	TU_CHECK(st.has_proc == 0, "stat after garbage");
	TU_CHECK(tu_wait(settled, &g, 5),
		 "after the garbage connections closed: processes %llu pool pages %llu "
		 "sharing %llu", (unsigned long long)gstat(g).g.processes,
		 (unsigned long long)gstat(g).g.pool_pages,
		 (unsigned long long)gstat(g).g.pages_sharing);
	TU_CHECK(count_fds(dpid) == base, "daemon descriptors: %d before the garbage, %d after",
		 base, count_fds(dpid));
	/* and a new connection is served as the first was */
	int fd = connect_hello();
	TU_CHECK(gstat(fd).g.processes == 2, "new connection not counted");
	close(fd);
}

/* A process that reports absurd counters with C_BUDGET: the daemon stays
 * up and still answers C_STAT (under UBSan, arithmetic on them that
 * overflows a signed type kills it). The grant stays within pages_to_scan. */
static void test_hostile_stats(int g)
{
	int fd = connect_hello();
	struct sp_budget b;
	struct sp_budget_r r;
	struct sp_msg m;

	memset(&b, 0xff, sizeof(b));
	b.flags = 0;
	send_ok(fd, C_BUDGET, &b, sizeof(b));
	recv_ok(fd, &m, "budget");
	TU_CHECK(m.h.type == D_BUDGET, "C_BUDGET answered with %u", m.h.type);
	memcpy(&r, m.p, sizeof(r));
	TU_CHECK(r.grant <= r.knobs.v[KNOB_PAGES_TO_SCAN], "grant %u over pages_to_scan %u",
		 r.grant, r.knobs.v[KNOB_PAGES_TO_SCAN]);
	TU_CHECK(stat_req(fd, 0, &(struct sp_stat_r){ 0 }) == 0, "stat on the hostile connection");
	gstat(g);
	daemon_alive("absurd process counters");
	close(fd);
}

int main(void)
{
	int g;

	signal(SIGPIPE, SIG_IGN);
	samepaged_default_knobs(&defaults);
	start_daemon();
	for (int i = 0; i < MAXFD; i++)
		pipes[i] = -1;
	g = dial(); /* the good connection, open through everything */
	hello(g, 0);

	test_hello();
	test_set(g);
	test_set_advisor(g);
	test_stat(g);
	test_procs(g);
	test_pages(g);
	test_pipe(g);
	test_create_pipe(g);
	test_hints(g);
	test_hint_full(g);
	test_reuse(g);
	test_fill(g);
	test_move(g);
	test_fd_passing(g);
	test_garbage(g);
	test_hostile_stats(g);

	daemon_alive("end");
	TU_CHECK(tu_wait(settled, &g, 5), "processes %llu at the end, pool pages %llu",
		 (unsigned long long)gstat(g).g.processes,
		 (unsigned long long)gstat(g).g.pool_pages);
	close(g);
	cleanup();
	printf("daemon_proto: ok\n");
	return 0;
}
