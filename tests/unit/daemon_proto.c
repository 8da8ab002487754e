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
 *    applied;
 *  - C_STAT for an unknown pid gets D_ACK -ESRCH, for our own pid a D_STAT
 *    with the process;
 *  - C_CREATE makes one pool page per content (a second connection creating
 *    the same content gets the same id), C_LOOKUP finds it through the
 *    stable index and a first/second offer through the unstable index;
 *    C_GETSEG hands over the sealed segment with the page's bytes in it;
 *  - C_UNREF of an id the connection does not hold closes that connection
 *    only: the holder keeps its page and its connection; dropping the last
 *    reference, or closing the holder, frees the page;
 *  - descriptors sent to the daemon with requests are closed, not kept;
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

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
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

	TU_CHECK(r.seg_pages == SEG_PAGES, "D_HELLO seg_pages %u", r.seg_pages);
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
	TU_CHECK(ra.token != rb.token, "two connections got the same token");
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

/* C_CREATE of one page: its id. */
static uint32_t create(int fd, const void *page)
{
	struct sp_create c = { .n = 1 };
	struct sp_msg m;
	struct sp_ids r;
	uint32_t id;

	TU_CHECK(sp_sendv(fd, C_CREATE, &c, sizeof(c), page, PAGE) == 0, "send C_CREATE");
	recv_ok(fd, &m, "create");
	TU_CHECK(m.h.type == D_CREATE, "create answered with %u", m.h.type);
	memcpy(&r, m.p, sizeof(r));
	memcpy(&id, m.p + sizeof(r), sizeof(id));
	TU_CHECK(r.n == 1 && id != SP_POOL_NONE && id != SP_POOL_CREATE, "create: n %u id %#x",
		 r.n, id);
	return id;
}

static uint32_t lookup(int fd, uint64_t hash, uint64_t addr)
{
	struct { struct sp_lookup l; struct sp_lookup_ent e; } q = { { .n = 1 }, { hash, addr } };
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

static void test_pages(int g)
{
	static unsigned char page[PAGE];
	int a = connect_hello(), b = connect_hello(), b2 = connect_hello();
	uint32_t x, y, id;
	uint64_t h;
	struct sp_stat_r st;
	struct sp_msg m;

	tu_fill(page, PAGE, 4242);
	h = XXH3_64bits(page, PAGE);

	/* unstable index: first offer recorded, same page again not a match,
	 * another connection's offer a match */
	TU_CHECK(lookup(a, h, 0x10000) == SP_POOL_NONE, "first offer");
	TU_CHECK(gstat(g).g.pages_unshared == 1, "unstable entry not counted");
	TU_CHECK(lookup(a, h, 0x10000) == SP_POOL_NONE, "same page again matched");
	TU_CHECK(lookup(b, h, 0x10000) == SP_POOL_CREATE, "second offer not a match");
	TU_CHECK(gstat(g).g.pages_unshared == 0, "matched entry not consumed");

	x = create(a, page);
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
	unref(b2, x);
	/* the same content created again is the same page */
	tu_fill(page, PAGE, 4242);
	TU_CHECK(create(b2, page) == x, "the same content got a second pool page");
	unref(b2, x);
	TU_CHECK(gstat(g).g.pages_sharing == 0, "b2's references not dropped");

	/* the segment: sealed, with the page's bytes */
	struct sp_getseg gs = { .seg = x / SEG_PAGES };
	send_ok(a, C_GETSEG, &gs, sizeof(gs));
	recv_ok(a, &m, "getseg");
	TU_CHECK(m.h.type == D_SEG && m.fd >= 0, "C_GETSEG: type %u fd %d", m.h.type, m.fd);
	unsigned char *v = mmap(NULL, (size_t)SEG_PAGES * PAGE, PROT_READ, MAP_PRIVATE, m.fd, 0);
	TU_CHECK(v != MAP_FAILED, "mmap segment");
	TU_CHECK(!memcmp(v + (size_t)(x % SEG_PAGES) * PAGE, page, PAGE),
		 "pool page differs from what was sent");
	errno = 0;
	TU_CHECK(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0) == MAP_FAILED &&
		 errno == EPERM, "segment from the daemon is writable (errno %d)", errno);
	munmap(v, (size_t)SEG_PAGES * PAGE);
	close(m.fd);
	gs.seg = 77;
	send_ok(a, C_GETSEG, &gs, sizeof(gs));
	TU_CHECK(expect_ack(a, "getseg 77") == -ENOENT, "C_GETSEG of a missing segment");

	/* b drops a reference it never took: b closes, a is untouched */
	unref(b, x);
	TU_CHECK(closed(b), "C_UNREF of an id not held did not close the connection");
	close(b);
	unref(b2, 123456);
	TU_CHECK(closed(b2), "C_UNREF of a nonexistent id did not close the connection");
	close(b2);
	st = gstat(g);
	TU_CHECK(st.g.pool_pages == 1, "a's page went with b's bad C_UNREF");
	TU_CHECK(gstat(a).g.pool_pages == 1, "a's connection went with b's");
	/* a drops its own: no reply, the page goes */
	unref(a, x);
	st = gstat(a);
	TU_CHECK(st.g.pool_pages == 0 && st.g.pages_sharing == 0, "page not freed by its unref");
	/* dropping it twice closes a */
	unref(a, x);
	TU_CHECK(closed(a), "second C_UNREF of the same id did not close the connection");
	close(a);

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
	close(a);
	TU_CHECK(tu_wait(pool_empty, &g, 5), "a closed connection's pages were not freed");
	TU_CHECK(gstat(g).g.processes == 1, "closed connections still counted");
}

/* Requests that arrive with descriptors: answered, the fds closed. */
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
	case C_CREATE: *elem = SP_PAGE; *max = SP_MAX_CREATE; return sizeof(struct sp_create);
	case C_UNREF: *elem = 4; *max = SP_MAX_UNREF; return sizeof(struct sp_ids);
	case C_GETSEG: return sizeof(struct sp_getseg);
	case C_ADOPT: return sizeof(struct sp_adopt);
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

/* What the protocol says must follow: CLOSE, NOREPLY or the reply type. */
static int expected(uint16_t t, const unsigned char *p, uint32_t len, int helloed)
{
	uint32_t v, n;

	if (!well_formed(t, p, len))
		return CLOSE;
	if (!helloed) {
		memcpy(&v, p, 4);
		return t == C_HELLO && v == SP_PROTO_VERSION ? D_HELLO : CLOSE;
	}
	switch (t) {
	case C_BUDGET: return D_BUDGET;
	case C_LOOKUP: return D_LOOKUP;
	case C_CREATE: return D_CREATE;
	case C_UNREF:
		memcpy(&n, p, 4);
		return n ? CLOSE : NOREPLY; /* holds nothing: any id is not its own */
	case C_GETSEG: return D_SEG; /* or D_ACK -ENOENT */
	case C_ADOPT: case C_SET: case C_UNMERGE: return D_ACK;
	case C_STAT: return D_STAT; /* or D_ACK -ESRCH */
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
		return;
	}
	TU_CHECK(m->h.type == want, "garbage %ld (type %u): reply %u, want %d", i, t, m->h.type,
		 want);
	if (want == D_LOOKUP || want == D_CREATE) {
		uint32_t rn;
		memcpy(&n, p, 4);
		memcpy(&rn, m->p, 4);
		TU_CHECK(rn == n, "garbage %ld: %u answers for %u requests", i, rn, n);
	}
	TU_CHECK((m->fd >= 0) == (m->h.type == D_SEG), "garbage %ld: fd %d with reply %u", i,
		 m->fd, m->h.type);
}

/* Large enough for the near-valid C_CREATE of 2 pages. */
#define GARBAGE_BUF (3 * 4096)

static void garbage_one(long i, unsigned char *p)
{
	uint16_t t;
	uint32_t len;
	unsigned w = (unsigned)(rnd() % 100);
	int helloed = rnd() % 2, fd, want;
	struct sp_msg m;

	if (w < 45)
		t = (uint16_t)(C_HELLO + rnd() % (C_UNMERGE - C_HELLO + 1));
	else if (w < 55)
		t = (uint16_t)(D_HELLO + rnd() % (D_STAT - D_HELLO + 1));
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
		}
	}
	want = expected(t, p, len, helloed);

	fd = dial();
	if (helloed)
		hello(fd, rnd() % 4 == 0 ? HELLO_OBSERVER : 0);
	/* The daemon may close before reading a follow-up: send errors are fine. */
	if (sp_send(fd, t, p, len, -1) < 0 && want != CLOSE)
		TU_FAIL("garbage %ld: send failed", i);
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
	g = dial(); /* the good connection, open through everything */
	hello(g, 0);

	test_hello();
	test_set(g);
	test_stat(g);
	test_pages(g);
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
