/* SPDX-License-Identifier: MIT */
/*
 * Invariant 6: the daemon trusts nothing a process sends.
 *
 * A and B merge the same 4 MiB. Then the test talks to their daemon's
 * socket directly and sends garbage: random bytes, headers with huge
 * lengths, oversized datagrams, a C_UNREF or C_COW of pool pages it never
 * held (they are A's and B's: ignored, the connection answers on), a
 * C_LOOKUP whose count does not match its bytes,
 * C_GETSEG of segments that do not exist, reply (D_*) and unknown types, a
 * second C_HELLO, descriptors it should not pass, a broken page pipe
 * (C_PIPE without a descriptor, with one that is no pipe or the pipe's
 * write end, claiming more pages than the pipe holds, none, or two
 * descriptors; C_CREATE without a pipe, of more pages than the pipe, or
 * with fewer bytes in the pipe than it announces), C_HINTS of the wrong
 * size, and 1000 connections that stop mid-conversation, some holding
 * references (real hashes of A's pages, pages of A's content created
 * through the pipe, merge hints of new content) when they go. Each
 * malformed conversation must end with the daemon closing the connection;
 * nothing else may change: the daemon lives on with as many descriptors
 * as before, A and B stay merged on the same frames with correct bytes, a
 * third process started afterwards merges with them,
 * and new content merged by a fourth process gets pool pages of its own
 * (were a page of A's freed by the garbage, it would be handed out again
 * and A would read the new content).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto.h"
#include "samepage.h"
#include "testutil.h"

#define N 1024u
#define SEED 42
#define SEED_NEW 77

static unsigned char ref[N * PAGE];

/* ---- processes ---- */

static int holder(int rd, int wr, void *arg)
{
	int copies = (int)(intptr_t)arg; /* 1: A, B, C; 2: D (new content, twice) */
	size_t len = (size_t)N * PAGE * copies;
	unsigned char *p = tu_map(len);
	unsigned char *want = malloc(len);
	uintptr_t a = (uintptr_t)p;
	char cmd;

	for (int k = 0; k < copies; k++)
		tu_fill(p + (size_t)k * N * PAGE, (size_t)N * PAGE, copies == 1 ? SEED : SEED_NEW);
	memcpy(want, p, len);
	TU_CHECK(madvise(p, len, MADV_MERGEABLE) == 0, "madvise: %m");
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0) {
		int ok;
		if (cmd == 'q')
			return 0;
		ok = !memcmp(p, want, len);
		tu_send(wr, &ok, sizeof(ok));
	}
	return 3;
}

/* ---- raw protocol ---- */

static const char *sock_path;

static int dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0, "socket: %m");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	TU_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect %s: %m",
		 sock_path);
	return fd;
}

/* One datagram: header {type, len} and payload bytes (len need not match). */
static int send_raw(int fd, uint16_t type, uint32_t len, const void *p, size_t n)
{
	unsigned char *buf = malloc(sizeof(struct sp_hdr) + n);
	struct sp_hdr h = { .type = type, .len = len };
	ssize_t r;

	memcpy(buf, &h, sizeof(h));
	if (n)
		memcpy(buf + sizeof(h), p, n);
	r = send(fd, buf, sizeof(h) + n, MSG_NOSIGNAL);
	free(buf);
	return r == (ssize_t)(sizeof(h) + n) ? 0 : -errno;
}

static int send_msg(int fd, uint16_t type, const void *p, size_t n)
{
	return send_raw(fd, type, (uint32_t)n, p, n);
}

/* One message with descriptors in SCM_RIGHTS (nfd of them). */
static int send_fds(int fd, uint16_t type, const void *p, size_t n, const int *fds, int nfd)
{
	union { char b[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr a; } cb;
	struct sp_hdr h = { .type = type, .len = (uint32_t)n };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)p, n } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = cb.b,
			     .msg_controllen = CMSG_SPACE(nfd * sizeof(int)) };
	struct cmsghdr *cm;

	memset(&cb, 0, sizeof(cb));
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(nfd * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, nfd * sizeof(int));
	return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)(sizeof(h) + n) ? 0 : -errno;
}

/* C_PIPE claiming `pages` with the read end of a pipe of `cap` pages: the
 * write end (-1 when no pipe that large can be made). */
static int send_pipe(int fd, uint32_t pages, uint32_t cap)
{
	struct sp_pipe p = { .pages = pages };
	int pf[2];

	TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe: %m");
	if (fcntl(pf[1], F_SETPIPE_SZ, (int)(cap * PAGE)) < (int)(cap * PAGE)) {
		close(pf[0]);
		close(pf[1]);
		return -1;
	}
	TU_CHECK(send_fds(fd, C_PIPE, &p, sizeof(p), &pf[0], 1) == 0, "send C_PIPE: %m");
	close(pf[0]);
	return pf[1];
}

static unsigned char rbuf[SP_MAX_MSG + 4096];

/* Next datagram: its length, 0 when the daemon closed, -1 on timeout. Any
 * passed descriptor is counted in *fds and closed. */
static ssize_t recv_dgram(int fd, int ms, int *fds)
{
	union { char b[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr a; } cbuf;
	struct iovec iov = { rbuf, sizeof(rbuf) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b,
			     .msg_controllen = sizeof(cbuf.b) };
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	ssize_t n;

	if (poll(&pf, 1, ms) != 1)
		return -1;
	n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0)
		return errno == ECONNRESET ? 0 : -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k; i++) {
				int pfd;
				memcpy(&pfd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				close(pfd);
				if (fds)
					(*fds)++;
			}
		}
	return n;
}

static uint16_t rtype(void)
{
	struct sp_hdr h;

	memcpy(&h, rbuf, sizeof(h));
	return h.type;
}

/* The daemon must close fd (no reply first) within 2 s. */
static int cases, closed_ok;
static void expect_open(int fd, const char *what);
static void expect_closed(int fd, const char *what)
{
	ssize_t n = recv_dgram(fd, 2000, NULL);

	cases++;
	TU_CHECK(n >= 0, "%s: the daemon kept the connection open (2 s)", what);
	TU_CHECK(n == 0, "%s: the daemon replied (type %u) instead of closing", what,
		 (unsigned)rtype());
	closed_ok++;
	close(fd);
}

/* The daemon must still answer on fd: a C_STAT gets its D_STAT. */
static void expect_open(int fd, const char *what)
{
	struct sp_statreq q = { 0 };

	cases++;
	TU_CHECK(send_msg(fd, C_STAT, &q, sizeof(q)) == 0, "%s: send C_STAT", what);
	TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_STAT,
		 "%s: the connection no longer answers", what);
	close(fd);
}

static int hello(void)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	int fd = dial();

	TU_CHECK(send_msg(fd, C_HELLO, &h, sizeof(h)) == 0, "send hello");
	TU_CHECK(recv_dgram(fd, 2000, NULL) == sizeof(struct sp_hdr) + sizeof(struct sp_hello_r) &&
		 rtype() == D_HELLO, "no D_HELLO for a valid C_HELLO");
	return fd;
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	return tu_xorshift(&rnd_state);
}

/* ---- the daemon, seen from outside ---- */

static pid_t dpid;

/* The daemon runs (neither gone nor a zombie waiting to be reaped). */
static int daemon_lives(void)
{
	char path[64], st[512], *p;
	FILE *f;
	int ok = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)dpid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fgets(st, sizeof(st), f) && (p = strrchr(st, ')')) && p[1] == ' ')
		ok = p[2] != 'Z' && p[2] != 'X';
	fclose(f);
	return ok;
}

static int daemon_fds(void)
{
	char path[64];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)dpid);
	d = opendir(path);
	TU_CHECK(d != NULL, "the daemon (%d) is gone", (int)dpid);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static struct tu_child A, B, C, D;
static uintptr_t aa, ba, ca, da;

static int merged2(void *arg)
{
	pid_t p[2] = { A.pid, B.pid };
	uintptr_t a[2] = { aa, ba };

	(void)arg;
	return tu_frames(p, a, 2, N) <= N + 4;
}

static int merged3(void *arg)
{
	pid_t p[3] = { A.pid, B.pid, C.pid };
	uintptr_t a[3] = { aa, ba, ca };

	(void)arg;
	return tu_frames(p, a, 3, N) <= N + 4;
}

static int merged_d(void *arg)
{
	pid_t p[2] = { D.pid, D.pid };
	uintptr_t a[2] = { da, da + (size_t)N * PAGE };

	(void)arg;
	return tu_frames(p, a, 2, N) <= N + 4;
}

static void content_ok(struct tu_child *c, const char *who, const char *when)
{
	int ok = 0;

	TU_CHECK(tu_send(c->wr, "v", 1) == 0 && tu_recv(c->rd, &ok, sizeof(ok)) == 0,
		 "%s died (%s)", who, when);
	TU_CHECK(ok, "%s's memory is wrong %s", who, when);
}

/* ---- the garbage ---- */

/* A C_CREATE of n entries for A's pages 0.. (real hashes). */
static size_t create_req(unsigned char *buf, uint32_t n)
{
	struct sp_create *cr = (struct sp_create *)buf;

	cr->n = n;
	cr->pad = 0;
	for (uint32_t i = 0; i < n; i++)
		cr->e[i] = (struct sp_create_ent){ .hash = XXH3_64bits(ref + (size_t)i * PAGE, PAGE),
						   .look = 0xffffffffu };
	return sizeof(*cr) + n * sizeof(cr->e[0]);
}

/* The page pipe and the requests around it, broken every way. */
static void pipe_garbage(unsigned char *buf)
{
	struct sp_pipe p = { .pages = 4 };
	int fd, w, pf[2], sv[2], other;
	size_t len;

	/* C_CREATE on a connection that never sent C_PIPE */
	for (uint32_t n = 0; n < 3; n++) {
		fd = hello();
		len = create_req(buf, n);
		send_msg(fd, C_CREATE, buf, len);
		expect_closed(fd, "C_CREATE without a pipe");
	}
	/* C_PIPE without a descriptor; before C_HELLO */
	fd = hello();
	send_msg(fd, C_PIPE, &p, sizeof(p));
	expect_closed(fd, "C_PIPE without a descriptor");
	fd = dial();
	w = send_pipe(fd, 4, 4);
	expect_closed(fd, "C_PIPE before C_HELLO");
	close(w);
	/* descriptors that are no pipe: /dev/null, a socket, a memfd, a directory */
	{
		int nopipe[4];
		static const char *const what[4] = { "/dev/null", "a socket", "a memfd",
						      "a directory" };
		TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
		nopipe[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		nopipe[1] = sv[0];
		nopipe[2] = memfd_create("garbage", MFD_CLOEXEC);
		nopipe[3] = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		for (int i = 0; i < 4; i++) {
			char msg[64];
			TU_CHECK(nopipe[i] >= 0, "open %s: %m", what[i]);
			fd = hello();
			TU_CHECK(send_fds(fd, C_PIPE, &p, sizeof(p), &nopipe[i], 1) == 0, "send: %m");
			snprintf(msg, sizeof(msg), "C_PIPE with %s", what[i]);
			expect_closed(fd, msg);
			close(nopipe[i]);
		}
		close(sv[1]);
	}
	/* two descriptors: both ends of a pipe */
	TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe");
	fd = hello();
	TU_CHECK(send_fds(fd, C_PIPE, &p, sizeof(p), pf, 2) == 0, "send: %m");
	expect_closed(fd, "C_PIPE with two descriptors");
	/* the write end: accepted as a pipe, but nothing can be read from it */
	fd = hello();
	TU_CHECK(send_fds(fd, C_PIPE, &p, sizeof(p), &pf[1], 1) == 0, "send: %m");
	if (recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK) {
		TU_CHECK(write(pf[1], ref, PAGE) == PAGE, "write");
		len = create_req(buf, 1);
		send_msg(fd, C_CREATE, buf, len);
		expect_closed(fd, "C_CREATE through a pipe's write end");
	} else {
		cases++;
		closed_ok++;
		close(fd);
	}
	close(pf[0]);
	close(pf[1]);
	/* more pages than the pipe holds, none, more than SP_MAX_CREATE */
	{
		static const struct { uint32_t pages, cap; } bad[] = {
			{ 2, 1 }, { 17, 16 }, { 0, 16 }, { SP_MAX_CREATE + 1, 2 * SP_MAX_CREATE },
			{ 0xffffffffu, 16 }, { 0x100001u, 16 },
		};
		for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			fd = hello();
			w = send_pipe(fd, bad[i].pages, bad[i].cap);
			if (w < 0) {
				close(fd);
				continue;
			}
			expect_closed(fd, "C_PIPE claiming more pages than its pipe holds, or none");
			close(w);
		}
	}
	/* C_CREATE of more pages than the pipe (all of them in it) */
	fd = hello();
	w = send_pipe(fd, 2, 4);
	TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK, "a good C_PIPE refused");
	TU_CHECK(write(w, ref, 3 * PAGE) == 3 * PAGE, "write");
	len = create_req(buf, 3);
	send_msg(fd, C_CREATE, buf, len);
	expect_closed(fd, "C_CREATE of more pages than its pipe");
	close(w);
	/* fewer bytes in the pipe than the C_CREATE announces */
	{
		static const struct { uint32_t n; size_t bytes; } sh[] = {
			{ 1, 0 }, { 1, 1 }, { 1, PAGE - 1 }, { 2, PAGE }, { 2, PAGE + 7 }, { 4, 3 * PAGE },
		};
		for (unsigned i = 0; i < sizeof(sh) / sizeof(sh[0]); i++) {
			fd = hello();
			w = send_pipe(fd, 4, 4);
			TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK,
				 "a good C_PIPE refused");
			if (sh[i].bytes)
				TU_CHECK(write(w, ref, sh[i].bytes) == (ssize_t)sh[i].bytes, "write");
			len = create_req(buf, sh[i].n);
			send_msg(fd, C_CREATE, buf, len);
			expect_closed(fd, "C_CREATE with fewer bytes in the pipe than pages");
			close(w);
		}
	}
	/* the pipe replaced mid-way: C_CREATE reads the new, empty one */
	fd = hello();
	w = send_pipe(fd, 4, 4);
	TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK, "a good C_PIPE refused");
	TU_CHECK(write(w, ref, 2 * PAGE) == 2 * PAGE, "write");
	other = send_pipe(fd, 4, 4);
	TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK, "a second C_PIPE refused");
	len = create_req(buf, 2);
	send_msg(fd, C_CREATE, buf, len);
	expect_closed(fd, "C_CREATE after the pipe holding its pages was replaced");
	close(w);
	close(other);
	/* C_HINTS of the wrong size */
	{
		static const size_t sizes[] = { 0, 4, 7, 9, 12, 16, 4096 };
		memset(buf, 0, 4096);
		for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			fd = hello();
			send_msg(fd, C_HINTS, buf, sizes[i]);
			expect_closed(fd, "C_HINTS of the wrong size");
		}
		/* one of the right size answers (none waiting), then garbage closes */
		struct sp_hints_req q = { .max = 0xffffffffu };
		fd = hello();
		send_msg(fd, C_HINTS, &q, sizeof(q));
		ssize_t n = recv_dgram(fd, 2000, NULL);
		TU_CHECK(n != 0, "C_HINTS on a connection without hints: closed (the daemon %s)",
			 daemon_lives() ? "lives" : "died");
		TU_CHECK(n == (ssize_t)(sizeof(struct sp_hdr) + sizeof(struct sp_hints)) &&
			 rtype() == D_HINTS, "C_HINTS: %zd bytes, type %u", n, (unsigned)rtype());
		send_msg(fd, C_HINTS, buf, 4);
		expect_closed(fd, "C_HINTS of the wrong size after a good one");
	}
}

static void garbage(void)
{
	unsigned char buf[100 << 10];
	int fd;

	/* Random bytes, before and after a valid hello. */
	for (int i = 0; i < 40; i++) {
		fd = i & 1 ? hello() : dial();
		for (int k = 0; k < 1 + i % 5; k++) {
			size_t n = 1 + rnd() % 2000;
			for (size_t j = 0; j < n; j++)
				buf[j] = (unsigned char)rnd();
			if (send(fd, buf, n, MSG_NOSIGNAL) < 0)
				break;
		}
		expect_closed(fd, "random bytes");
	}
	/* Headers whose length is huge, or not what came. */
	{
		static const uint32_t lens[] = { 0xffffffffu, 0x7fffffffu, SP_MAX_MSG, 9, 7, 0 };
		struct sp_hello h = { .version = SP_PROTO_VERSION };
		for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			fd = dial();
			send_raw(fd, C_HELLO, lens[i], &h, sizeof(h));
			expect_closed(fd, "C_HELLO with a wrong header length");
			fd = hello();
			send_raw(fd, C_STAT, lens[i], &h, sizeof(struct sp_statreq));
			expect_closed(fd, "C_STAT with a wrong header length");
		}
	}
	/* A datagram larger than any message (the daemon's read truncates it). */
	fd = hello();
	memset(buf, 0, sizeof(buf));
	TU_CHECK(send_msg(fd, C_LOOKUP, buf, sizeof(buf) - sizeof(struct sp_hdr)) == 0,
		 "send 100 KiB: %m");
	expect_closed(fd, "a 100 KiB datagram");
	/* Wrong protocol version; a second hello. */
	{
		struct sp_hello h = { .version = SP_PROTO_VERSION + 1 };
		fd = dial();
		send_msg(fd, C_HELLO, &h, sizeof(h));
		expect_closed(fd, "C_HELLO of another protocol version");
		h.version = SP_PROTO_VERSION;
		fd = hello();
		send_msg(fd, C_HELLO, &h, sizeof(h));
		expect_closed(fd, "a second C_HELLO");
	}
	/* Requests before hello. */
	{
		struct sp_statreq q = { 0 };
		fd = dial();
		send_msg(fd, C_STAT, &q, sizeof(q));
		expect_closed(fd, "C_STAT before C_HELLO");
	}
	/* C_UNREF and C_COW of pool pages never held (ids 0.. are A's and
	 * B's pages): ignored, as dropping them could only free a page someone
	 * maps (the checks at the end see A and B intact). */
	{
		struct { uint32_t n; uint32_t id[4]; } u = { 4, { 0, 1, 2, 0xfffffff0u } };
		fd = hello();
		send_msg(fd, C_UNREF, &u, sizeof(u));
		send_msg(fd, C_COW, &u, sizeof(u));
		expect_open(fd, "C_UNREF of ids never held");
		u.n = 1;
		u.id[0] = N / 2 | SP_UNREF_COWED;
		fd = hello();
		send_msg(fd, C_UNREF, &u, sizeof(uint32_t) * 2);
		expect_open(fd, "C_UNREF of one id never held");
	}
	/* C_LOOKUP whose count does not match its bytes. */
	{
		struct sp_lookup *l = (struct sp_lookup *)buf;
		static const uint32_t counts[] = { 5, 2, 0xffffffffu, SP_MAX_LOOKUP + 1 };
		for (unsigned i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
			size_t have = counts[i] == SP_MAX_LOOKUP + 1 ? SP_MAX_LOOKUP + 1 : 3;
			memset(buf, 0, sizeof(*l) + have * sizeof(l->e[0]));
			l->n = counts[i];
			fd = hello();
			send_msg(fd, C_LOOKUP, l, sizeof(*l) + have * sizeof(l->e[0]));
			expect_closed(fd, "C_LOOKUP with a count that does not match");
		}
		/* C_CREATE claiming more entries than it carries. */
		struct sp_create *cr = (struct sp_create *)buf;
		memset(buf, 0, sizeof(*cr) + 2 * sizeof(cr->e[0]));
		cr->n = 2;
		fd = hello();
		send_msg(fd, C_CREATE, cr, sizeof(*cr) + sizeof(cr->e[0]));
		expect_closed(fd, "C_CREATE with a count that does not match");
		cr->n = 1;
		fd = hello();
		send_msg(fd, C_CREATE, cr, sizeof(*cr) + 2 * sizeof(cr->e[0]));
		expect_closed(fd, "C_CREATE with more entries than its count");
		/* the old layout: page bytes in the message */
		fd = hello();
		send_msg(fd, C_CREATE, cr, sizeof(*cr) + PAGE);
		expect_closed(fd, "C_CREATE carrying page bytes");
	}
	pipe_garbage(buf);
	/* C_GETSEG of segments that do not exist: an error, never a segment. */
	{
		static const uint32_t segs[] = { 1, 7, SP_MAX_SEGS - 1, SP_MAX_SEGS, 0xffffffffu };
		for (unsigned i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
			struct sp_getseg g = { .seg = segs[i] };
			int fds = 0;
			ssize_t n;
			fd = hello();
			send_msg(fd, C_GETSEG, &g, sizeof(g));
			n = recv_dgram(fd, 2000, &fds);
			cases++;
			TU_CHECK(n >= 0, "C_GETSEG %u: no answer in 2 s", segs[i]);
			TU_CHECK(!fds, "C_GETSEG %u of no segment passed a descriptor", segs[i]);
			if (n > 0) {
				struct sp_ack ack;
				TU_CHECK(rtype() == D_ACK && n == sizeof(struct sp_hdr) + sizeof(ack),
					 "C_GETSEG %u: reply type %u", segs[i], (unsigned)rtype());
				memcpy(&ack, rbuf + sizeof(struct sp_hdr), sizeof(ack));
				TU_CHECK(ack.err < 0, "C_GETSEG %u: error %d", segs[i], ack.err);
				printf("C_GETSEG %u: refused with %s, connection kept\n", segs[i],
				       strerror(-ack.err));
			} else {
				printf("C_GETSEG %u: connection closed\n", segs[i]);
			}
			close(fd);
		}
	}
	/* Segment 0 exists (A's and B's pages): the same user may read it once
	 * it holds a page of it (a lookup of content A holds gives it one), but
	 * no one may change a pool page that others map. Without such a page,
	 * C_GETSEG is refused. */
	{
		struct sp_getseg g = { .seg = 0 };
		static unsigned char first[PAGE];
		struct { struct sp_lookup l; struct sp_lookup_ent e; } lk = { { .n = 1 }, { .hash = 0, .addr = 0x1000 } };
		fd = hello();
		send_msg(fd, C_GETSEG, &g, sizeof(g));
		TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_ACK &&
			 ((struct sp_ack *)(rbuf + sizeof(struct sp_hdr)))->err == -EACCES,
			 "C_GETSEG of a segment it holds no page of was not refused");
		close(fd);
		cases++;
		tu_fill(first, PAGE, SEED);
		lk.e.hash = XXH3_64bits(first, PAGE);
		union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } cb;
		struct iovec iov = { rbuf, sizeof(rbuf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b,
				     .msg_controllen = sizeof(cb.b) };
		char path[64];
		int sfd = -1, rw;
		void *m;
		fd = hello();
		send_msg(fd, C_LOOKUP, &lk, sizeof(lk));
		TU_CHECK(recv_dgram(fd, 2000, NULL) > 0 && rtype() == D_LOOKUP, "lookup of A's page");
		send_msg(fd, C_GETSEG, &g, sizeof(g));
		TU_CHECK(recvmsg(fd, &mh, MSG_CMSG_CLOEXEC) > 0 && rtype() == D_SEG &&
			 CMSG_FIRSTHDR(&mh), "C_GETSEG 0: no segment");
		memcpy(&sfd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
		TU_CHECK(pwrite(sfd, "x", 1, 0) < 0, "pwrite into the pool worked");
		m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
		TU_CHECK(m == MAP_FAILED, "a writable shared mapping of the pool worked");
		TU_CHECK(fallocate(sfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE) < 0,
			 "punching a hole into the pool worked");
		TU_CHECK(ftruncate(sfd, 0) < 0, "truncating the pool worked");
		snprintf(path, sizeof(path), "/proc/self/fd/%d", sfd);
		rw = open(path, O_RDWR | O_CLOEXEC);
		TU_CHECK(rw < 0 || pwrite(rw, "x", 1, 0) < 0,
			 "writing the pool through a reopened descriptor worked");
		if (rw >= 0)
			close(rw);
		close(sfd);
		close(fd);
		cases++;
	}
	/* C_FORK and C_MARKER without a marker: the connection closes. */
	{
		static const uint16_t types[] = { C_FORK, C_MARKER };
		struct sp_fork f = { 0 };
		for (unsigned i = 0; i < 2; i++) {
			fd = hello();
			send_msg(fd, types[i], &f, sizeof(f));
			cases++;
			TU_CHECK(recv_dgram(fd, 2000, NULL) == 0,
				 "C_FORK/C_MARKER (type %u) without a marker was accepted", types[i]);
			close(fd);
		}
	}
	/* Reply types, and types that do not exist, in a stream. */
	{
		static const uint16_t types[] = { D_HELLO, D_BUDGET, D_LOOKUP, D_CREATE, D_SEG,
						  D_ACK, D_STAT, D_HINTS, 0, 17, 99, 110, 0xffff };
		static const size_t sizes[] = { sizeof(struct sp_hello_r), sizeof(struct sp_budget_r),
						4, 4, sizeof(struct sp_seg_r), sizeof(struct sp_ack),
						sizeof(struct sp_stat_r), sizeof(struct sp_hints),
						8, 8, 8, 8, 8 };
		memset(buf, 0, sizeof(buf));
		for (unsigned i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
			fd = i & 1 ? dial() : hello();
			for (unsigned j = i; j < sizeof(types) / sizeof(types[0]); j++)
				if (send_msg(fd, types[j], buf, sizes[j]) < 0)
					break;
			expect_closed(fd, "a stream of reply or unknown types");
		}
	}
	/* Descriptors passed to the daemon: it must not keep them. */
	for (int i = 0; i < 20; i++) {
		union { char b[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr a; } cb;
		struct sp_hdr h = { .type = C_HELLO, .len = sizeof(struct sp_hello) };
		struct sp_hello he = { .version = SP_PROTO_VERSION };
		struct iovec iov[2] = { { &h, sizeof(h) }, { &he, sizeof(he) } };
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = cb.b,
				     .msg_controllen = CMSG_SPACE((1 + i % 3) * sizeof(int)) };
		struct cmsghdr *cm;
		int pass[3];
		fd = dial();
		memset(&cb, 0, sizeof(cb));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((1 + i % 3) * sizeof(int));
		for (int k = 0; k < 3; k++)
			pass[k] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		memcpy(CMSG_DATA(cm), pass, (1 + i % 3) * sizeof(int));
		TU_CHECK(sendmsg(fd, &mh, MSG_NOSIGNAL) > 0, "sendmsg with descriptors: %m");
		for (int k = 0; k < 3; k++)
			close(pass[k]);
		recv_dgram(fd, 2000, NULL); /* D_HELLO, or closed */
		close(fd);
	}
}

/* Hello on a new connection, reply read. */
static int hello_quiet(void)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	int fd = dial();

	send_msg(fd, C_HELLO, &h, sizeof(h));
	recv_dgram(fd, 2000, NULL);
	return fd;
}

/* A page pipe for fd holding `pages` pages of A's content from page
 * `first`; the write end. The C_PIPE's answer is read when wait. */
static int pipe_with(int fd, uint32_t first, uint32_t pages, int wait)
{
	int w = send_pipe(fd, 4, 4);

	if (pages && write(w, ref + (size_t)first * PAGE, (size_t)pages * PAGE) < 0) {
		/* the daemon closed: fine, the connection is going anyway */
	}
	if (wait)
		recv_dgram(fd, 2000, NULL);
	return w;
}

/* Two connections whose lookups of content nobody has match in the
 * unstable index: Y creates the page (X gets a hint and a reference),
 * then both go, X having fetched its hints or not. Whether Y's lookup
 * matched (a new generation may have emptied the unstable index between). */
static int hinted_pair(int i)
{
	static unsigned char page[PAGE];
	struct { struct sp_lookup l; struct sp_lookup_ent e; } lk = { .l = { .n = 1 } };
	struct { struct sp_create c; struct sp_create_ent e; } cr = { .c = { .n = 1 } };
	struct sp_budget b = { .want = 1 };
	struct sp_hints_req q = { .max = 16 };
	int x = hello_quiet(), y = hello_quiet(), w;

	tu_fill(page, PAGE, 1000000 + i);
	lk.e.hash = XXH3_64bits(page, PAGE);
	cr.e.hash = lk.e.hash;
	cr.e.look = 0;
	lk.e.addr = 0x7000000;
	send_msg(x, C_LOOKUP, &lk, sizeof(lk));
	recv_dgram(x, 2000, NULL);
	lk.e.addr = 0x8000000;
	send_msg(y, C_LOOKUP, &lk, sizeof(lk));
	uint32_t got = 0;
	if (recv_dgram(y, 2000, NULL) == sizeof(struct sp_hdr) + 8 && rtype() == D_LOOKUP)
		memcpy(&got, rbuf + sizeof(struct sp_hdr) + 4, 4);
	w = pipe_with(y, 0, 0, 1);
	TU_CHECK(write(w, page, PAGE) == PAGE, "write the pipe");
	send_msg(y, C_CREATE, &cr, sizeof(cr));
	if (i % 3 != 0)
		recv_dgram(y, 2000, NULL);
	switch (i % 4) {
	case 0: /* X goes first, its hint unfetched */
		close(x);
		close(y);
		break;
	case 1: /* Y goes first (without C_UNREF); X asks for its budget, goes */
		close(y);
		send_msg(x, C_BUDGET, &b, sizeof(b));
		recv_dgram(x, 2000, NULL);
		close(x);
		break;
	case 2: /* X fetches its hint, then goes without C_UNREF */
		send_msg(x, C_HINTS, &q, sizeof(q));
		recv_dgram(x, 2000, NULL);
		close(x);
		close(y);
		break;
	case 3: /* X asks for its hints and goes before the answer */
		send_msg(x, C_HINTS, &q, sizeof(q));
		close(y);
		close(x);
		break;
	}
	close(w);
	return got == SP_POOL_CREATE;
}

/* 1000 connections that stop mid-conversation. */
static void short_conns(void)
{
	struct { struct sp_lookup l; struct sp_lookup_ent e[16]; } look;
	unsigned char create[sizeof(struct sp_create) + 2 * sizeof(struct sp_create_ent)];
	size_t create_len = create_req(create, 2);
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	struct sp_budget b = { .want = 512, .st = { .mergeable = 1 } };
	int w, pairs = 0, matched = 0;

	/* Real hashes of A's pages: stable hits take references for us. */
	look.l.n = 16;
	look.l.pad = 0;
	for (int i = 0; i < 16; i++) {
		look.e[i].hash = XXH3_64bits(ref + (size_t)(i * 61 % N) * PAGE, PAGE);
		look.e[i].addr = 0x10000000ull + (uint64_t)i * PAGE;
	}
	for (int i = 0; i < 1000; i++) {
		int fd = dial();
		switch (i % 12) {
		case 0: /* nothing at all */
			break;
		case 1: /* a header promising a payload that never comes */
			send_raw(fd, C_HELLO, sizeof(h), NULL, 0);
			break;
		case 2: /* half a hello */
			send_raw(fd, C_HELLO, sizeof(h), &h, sizeof(h) / 2);
			break;
		case 3: /* hello, gone before the reply */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			break;
		case 4: /* lookups that take references, gone before the reply */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			send_msg(fd, C_LOOKUP, &look, sizeof(look));
			break;
		case 5: /* lookups that take references, reply read, gone without C_UNREF */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			recv_dgram(fd, 2000, NULL);
			send_msg(fd, C_LOOKUP, &look, sizeof(look));
			recv_dgram(fd, 2000, NULL);
			/* and half of an unref */
			send_raw(fd, C_UNREF, 8, "\x01\x00\x00\x00", 4);
			break;
		case 6: /* pages of A's content created (a stable hit), gone before the reply */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			w = pipe_with(fd, 0, 2, 0);
			send_msg(fd, C_CREATE, create, create_len);
			close(w);
			break;
		case 7: /* a budget request that says "mergeable", then gone */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			send_msg(fd, C_BUDGET, &b, sizeof(b));
			break;
		case 8: /* a pipe sent, gone before the answer */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			close(pipe_with(fd, 0, 1, 0));
			break;
		case 9: /* pages created, reply read, gone without C_UNREF; the pipe
			 * holding the next request's pages */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			recv_dgram(fd, 2000, NULL);
			w = pipe_with(fd, 0, 2, 1);
			send_msg(fd, C_CREATE, create, create_len);
			recv_dgram(fd, 2000, NULL);
			if (write(w, ref, 2 * PAGE) < 0) {
				/* closed: fine */
			}
			close(w);
			break;
		case 10: /* a C_CREATE whose pages are still on their way */
			send_msg(fd, C_HELLO, &h, sizeof(h));
			w = pipe_with(fd, 0, 1, 0);
			send_msg(fd, C_CREATE, create, create_len);
			close(w);
			break;
		case 11: /* a merge hint between two connections, then both gone */
			matched += hinted_pair(i / 12);
			pairs++;
			break;
		}
		close(fd);
	}
	printf("%d of %d pairs of connections matched in the unstable index "
	       "(a hint and its reference left behind)\n", matched, pairs);
	/* else the hint cases tested nothing */
	TU_CHECK(matched > 0, "no pair of connections matched in the unstable index");
}

int main(void)
{
	struct samepage_stat st;
	int fds0, fds1;
	pid_t d2;
	double t0;

	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(150);
	signal(SIGPIPE, SIG_IGN);
	sock_path = getenv("SAMEPAGE_SOCKET");
	tu_fill(ref, sizeof(ref), SEED);

	tu_spawn(&A, holder, (void *)1);
	tu_spawn(&B, holder, (void *)1);
	TU_CHECK(tu_recv(A.rd, &aa, sizeof(aa)) == 0 && tu_recv(B.rd, &ba, sizeof(ba)) == 0,
		 "A or B died");
	TU_CHECK(tu_wait(merged2, NULL, 30), "A and B not merged after 30 s");
	dpid = tu_daemon_pid();
	TU_CHECK(dpid > 0, "no daemon");
	usleep(300000);
	fds0 = daemon_fds();
	printf("A and B merged; daemon %d has %d descriptors\n", (int)dpid, fds0);

	t0 = tu_now();
	garbage();
	printf("%d malformed conversations: the daemon closed each one (%.2f s)\n", closed_ok,
	       tu_now() - t0);
	t0 = tu_now();
	short_conns();
	printf("1000 connections that stopped mid-conversation (%.2f s)\n", tu_now() - t0);

	TU_CHECK(daemon_lives(), "the daemon died");
	d2 = tu_daemon_pid();
	TU_CHECK(d2 == dpid, "the daemon was replaced (%d, was %d)", (int)d2, (int)dpid);
	/* Closing is asynchronous: give it a moment. */
	for (int i = 0; i < 40 && (fds1 = daemon_fds()) > fds0; i++)
		usleep(50000);
	TU_CHECK(fds1 <= fds0, "the daemon holds %d descriptors, %d before the garbage", fds1,
		 fds0);
	TU_CHECK(merged2(NULL), "A and B lost their merge");
	content_ok(&A, "A", "after the garbage");
	content_ok(&B, "B", "after the garbage");

	/* A third process merges with them; a fourth merges new content. */
	tu_spawn(&C, holder, (void *)1);
	TU_CHECK(tu_recv(C.rd, &ca, sizeof(ca)) == 0, "C died");
	t0 = tu_now();
	TU_CHECK(tu_wait(merged3, NULL, 30), "C did not merge with A and B in 30 s");
	printf("C merged with A and B in %.2f s\n", tu_now() - t0);
	tu_spawn(&D, holder, (void *)2);
	TU_CHECK(tu_recv(D.rd, &da, sizeof(da)) == 0, "D died");
	TU_CHECK(tu_wait(merged_d, NULL, 30), "D's new content did not merge in 30 s");
	TU_CHECK(merged3(NULL), "A, B and C lost their merge");
	content_ok(&A, "A", "after D merged new content");
	content_ok(&B, "B", "after D merged new content");
	content_ok(&C, "C", "after D merged new content");
	content_ok(&D, "D", "after merging");
	TU_CHECK(samepage_stat(&st) == 0, "samepage_stat");
	printf("pool_pages %llu (want %u), pages_sharing %llu (want %u), processes %llu\n",
	       (unsigned long long)st.pool_pages, 2 * N, (unsigned long long)st.pages_sharing,
	       3 * N, (unsigned long long)st.processes);
	/* A, B, C: N references each on N pages; D: 2N on N pages. Anything
	 * else is a reference the garbage left behind or took away. */
	TU_CHECK(st.pool_pages <= 2 * N + 8 && st.pool_pages >= 2 * N - 8,
		 "pool_pages %llu, want %u", (unsigned long long)st.pool_pages, 2 * N);
	TU_CHECK(st.pages_sharing + 8 >= 3 * N && st.pages_sharing <= 3 * N + 8,
		 "pages_sharing %llu, want %u: references of the garbage connections were kept "
		 "or dropped", (unsigned long long)st.pages_sharing, 3 * N);
	TU_CHECK(tu_daemon_pid() == dpid, "the daemon changed");
	struct tu_child *all[] = { &A, &B, &C, &D };
	for (int i = 0; i < 4; i++) {
		tu_send(all[i]->wr, "q", 1);
		TU_CHECK(tu_reap(all[i]) == 0, "process %d exit", i);
	}
	return 0;
}
