/* SPDX-License-Identifier: MIT */
/*
 * Unit test of common/proto.h, the wire format. Proves:
 *  - sp_validate accepts every well-formed message type (counted ones with
 *    0, 1 and the maximum count) and rejects an unknown type, a fixed part
 *    one byte short or long, a count over the type's maximum, a count that
 *    does not match the bytes, and a counted payload shorter than its count
 *    field (without reading past it: payloads live in exactly-sized heap
 *    blocks, so ASan sees any overread);
 *  - sp_send / sp_sendv / sp_recv round-trip over a SOCK_SEQPACKET
 *    socketpair, an empty payload and the largest allowed message included,
 *    and one byte more is refused with -EMSGSIZE; an fd passed with
 *    SCM_RIGHTS arrives as a new close-on-exec descriptor of the same file;
 *  - a datagram shorter than the header, one whose header len disagrees
 *    with its size, and one larger than SP_MAX_MSG give -EPROTO, and the
 *    next good message still arrives; EOF gives -ECONNRESET, nothing to
 *    read on a non-blocking socket -EAGAIN;
 *  - descriptors that arrive where they should not are closed, not leaked
 *    (counted in /proc/self/fd): two fds in one message, two control
 *    messages, more fds than the control buffer holds, an fd with a
 *    malformed frame, and an fd on a message type that never carries one
 *    (only D_SEG and C_PIPE do); C_PIPE's pipe end arrives as that pipe;
 *  - the wire layout: message numbers, the size and field offsets of the
 *    pipe/create/hint structures and of D_BUDGET's hints, and every counted
 *    message at its maximum count fits in SP_MAX_MSG;
 *  - knob names, lookup and the range of each knob, and that the daemon's
 *    defaults are in range;
 *  - a fuzz loop: 100k random messages through sp_validate, each compared
 *    with an independent model of the layouts written from proto.h.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../lib/testutil.h"
#include "daemon.h"
#include "proto.h"

static uint64_t rng = 0x853c49e6748fea9bull;

static uint64_t rnd(void)
{
	return tu_xorshift(&rng);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	TU_CHECK(d, "opendir /proc/self/fd");
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* ---- the layouts, written independently of proto.c ---- */

struct layout {
	uint16_t type;
	size_t fixed, elem;
	uint32_t max;
};

static const struct layout layouts[] = {
	{ C_HELLO, sizeof(struct sp_hello), 0, 0 },
	{ C_BUDGET, sizeof(struct sp_budget), 0, 0 },
	{ C_LOOKUP, sizeof(struct sp_lookup), sizeof(struct sp_lookup_ent), SP_MAX_LOOKUP },
	/* C_CREATE carries hashes only: the page bytes travel through the pipe */
	{ C_CREATE, sizeof(struct sp_create), sizeof(struct sp_create_ent), SP_MAX_CREATE },
	{ C_UNREF, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_UNREF },
	{ C_GETSEG, sizeof(struct sp_getseg), 0, 0 },
	{ C_FORK, sizeof(struct sp_fork), 0, 0 },
	{ C_MARKER, sizeof(struct sp_fork), 0, 0 },
	{ C_COW, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_UNREF },
	{ C_STAT, sizeof(struct sp_statreq), 0, 0 },
	{ C_SET, sizeof(struct sp_set), 0, 0 },
	{ C_UNMERGE, sizeof(struct sp_unmerge), 0, 0 },
	{ C_PIPE, sizeof(struct sp_pipe), 0, 0 },
	{ C_HINTS, sizeof(struct sp_hints_req), 0, 0 },
	{ C_MOVE, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_MOVE },
	{ D_HELLO, sizeof(struct sp_hello_r), 0, 0 },
	{ D_BUDGET, sizeof(struct sp_budget_r), 0, 0 },
	{ D_LOOKUP, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_LOOKUP },
	{ D_CREATE, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_CREATE },
	{ D_SEG, sizeof(struct sp_seg_r), 0, 0 },
	{ D_ACK, sizeof(struct sp_ack), 0, 0 },
	{ D_STAT, sizeof(struct sp_stat_r), 0, 0 },
	{ D_HINTS, sizeof(struct sp_hints), sizeof(struct sp_hint), SP_MAX_HINTS },
	{ D_MOVE, sizeof(struct sp_ids), sizeof(uint32_t), SP_MAX_MOVE },
	{ C_PROCS, sizeof(struct sp_procs_req), 0, 0 },
	{ C_FILL, sizeof(struct sp_fill), 0, 0 },
	{ D_PROCS, sizeof(struct sp_procs), sizeof(struct sp_proc_ent), SP_MAX_PROCS },
};
#define NLAYOUTS (sizeof(layouts) / sizeof(layouts[0]))

static const struct layout *layout_of(uint16_t type)
{
	for (size_t i = 0; i < NLAYOUTS; i++)
		if (layouts[i].type == type)
			return &layouts[i];
	return NULL;
}

static int model_valid(uint16_t type, const unsigned char *p, uint32_t len)
{
	const struct layout *l = layout_of(type);
	uint32_t n;

	if (!l || len < l->fixed)
		return 0;
	if (!l->elem)
		return len == l->fixed;
	memcpy(&n, p, 4);
	return n <= l->max && len == l->fixed + (size_t)n * l->elem;
}

/* Validate a payload held in a heap block of exactly len bytes. */
static int validate(uint16_t type, const void *payload, uint32_t len)
{
	unsigned char *buf = malloc(len ? len : 1);
	struct sp_msg m = { .h = { .type = type, .len = len }, .fd = -1 };
	int r;

	TU_CHECK(buf, "malloc %u", len);
	if (len)
		memcpy(buf, payload, len);
	m.p = buf;
	r = sp_validate(&m);
	free(buf);
	TU_CHECK(r == 0 || r == -EPROTO, "sp_validate returned %d", r);
	return r;
}

/* A counted payload of n elements (count field = cnt), elements zero. */
static unsigned char *counted(const struct layout *l, uint32_t cnt, uint32_t n, uint32_t *len)
{
	unsigned char *p;

	*len = (uint32_t)(l->fixed + (size_t)n * l->elem);
	p = calloc(1, *len + 1);
	TU_CHECK(p, "calloc");
	memcpy(p, &cnt, 4);
	return p;
}

static void test_validate(void)
{
	static unsigned char zero[sizeof(struct sp_stat_r) + 16];
	static const uint16_t unknown[] = { 0, C_FILL + 1, 18, 19, 50, 99, D_PROCS + 1, 110, 111,
					    200, 0x8001, 0xffff };

	for (size_t i = 0; i < NLAYOUTS; i++) {
		const struct layout *l = &layouts[i];
		uint16_t t = l->type;

		TU_CHECK(l->fixed <= sizeof(zero), "layout table");
		if (!l->elem) {
			TU_CHECK(validate(t, zero, (uint32_t)l->fixed) == 0,
				 "type %u: well-formed (len %zu) rejected", t, l->fixed);
			TU_CHECK(validate(t, zero, (uint32_t)l->fixed - 1) == -EPROTO,
				 "type %u: one byte short accepted", t);
			TU_CHECK(validate(t, zero, (uint32_t)l->fixed + 1) == -EPROTO,
				 "type %u: one byte long accepted", t);
			TU_CHECK(validate(t, zero, 0) == -EPROTO, "type %u: empty accepted", t);
			TU_CHECK(validate(t, zero, (uint32_t)l->fixed + 8) == -EPROTO,
				 "type %u: 8 bytes long accepted", t);
			continue;
		}
		uint32_t counts[] = { 0, 1, 2, l->max - 1, l->max };
		for (size_t k = 0; k < 5; k++) {
			uint32_t len, n = counts[k];
			unsigned char *p = counted(l, n, n, &len);

			TU_CHECK(validate(t, p, len) == 0, "type %u: count %u (len %u) rejected", t,
				 n, len);
			/* the bytes for one element more or less */
			TU_CHECK(validate(t, p, len - 1) == -EPROTO,
				 "type %u count %u: a byte short accepted", t, n);
			if (n)
				TU_CHECK(validate(t, p, len - (uint32_t)l->elem) == -EPROTO,
					 "type %u count %u: an element short accepted", t, n);
			free(p);
			p = counted(l, n, n + 1, &len);
			TU_CHECK(validate(t, p, len) == -EPROTO,
				 "type %u count %u: an element too many accepted", t, n);
			free(p);
		}
		/* over the maximum, with bytes that match the count */
		uint32_t len;
		unsigned char *p = counted(l, l->max + 1, l->max + 1, &len);
		TU_CHECK(validate(t, p, len) == -EPROTO, "type %u: count max+1 accepted", t);
		free(p);
		/* absurd counts, whose bytes would wrap a 32-bit size */
		uint32_t absurd[] = { UINT32_MAX, 0x80000000u, (uint32_t)(0x100000000ull / l->elem),
				      (uint32_t)(0x100000000ull / l->elem) + 1 };
		for (size_t k = 0; k < 4; k++) {
			p = counted(l, absurd[k], 0, &len);
			TU_CHECK(validate(t, p, len) == -EPROTO, "type %u: count %#x accepted", t,
				 absurd[k]);
			uint32_t wrapped = (uint32_t)(l->fixed + (uint64_t)absurd[k] * l->elem);
			if (wrapped <= len)
				TU_CHECK(validate(t, p, wrapped) == -EPROTO,
					 "type %u: count %#x with wrapped len %u accepted", t,
					 absurd[k], wrapped);
			free(p);
		}
		/* shorter than the count field itself */
		for (uint32_t s = 0; s < l->fixed; s++)
			TU_CHECK(validate(t, zero, s) == -EPROTO,
				 "type %u: %u bytes (< fixed part) accepted", t, s);
	}
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		for (uint32_t len = 0; len <= 64; len += 4)
			TU_CHECK(validate(unknown[i], zero, len) == -EPROTO,
				 "unknown type %u (len %u) accepted", unknown[i], len);
}

static void pair(int sv[2])
{
	TU_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
		 strerror(errno));
}

static unsigned char rbuf[SP_MAX_MSG];

static void test_roundtrip(void)
{
	int sv[2], mfd, base;
	struct sp_msg m;
	struct sp_statreq s = { .pid = 12345 };
	struct sp_set set = { .knob = KNOB_RUN, .value = 0x1122334455667788ull };
	struct stat st1, st2;
	unsigned char *big;
	uint32_t biglen = SP_MAX_MSG - sizeof(struct sp_hdr);

	pair(sv);
	base = count_fds();

	TU_CHECK(sp_send(sv[0], C_STAT, &s, sizeof(s), -1) == 0, "sp_send");
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0, "sp_recv");
	TU_CHECK(m.h.type == C_STAT && m.h.len == sizeof(s) && m.fd == -1, "header %u %u fd %d",
		 m.h.type, m.h.len, m.fd);
	TU_CHECK(m.p == rbuf + sizeof(struct sp_hdr), "payload pointer");
	TU_CHECK(!memcmp(m.p, &s, sizeof(s)) && sp_validate(&m) == 0, "payload");

	/* the other way, an empty payload */
	TU_CHECK(sp_send(sv[1], D_ACK, NULL, 0, -1) == 0, "sp_send empty");
	TU_CHECK(sp_recv(sv[0], rbuf, &m) == 0, "sp_recv empty");
	TU_CHECK(m.h.type == D_ACK && m.h.len == 0 && m.fd == -1, "empty message");
	TU_CHECK(sp_validate(&m) == -EPROTO, "D_ACK without payload validated");

	/* sp_sendv concatenates */
	struct sp_lookup_ent e[3] = { { .hash = 1, .addr = 2 }, { .hash = 3, .addr = 4 }, { .hash = 5, .addr = 6 } };
	struct sp_lookup lk = { .n = 3 };
	TU_CHECK(sp_sendv(sv[0], C_LOOKUP, &lk, sizeof(lk), e, sizeof(e)) == 0, "sp_sendv");
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0, "recv sendv");
	TU_CHECK(m.h.type == C_LOOKUP && m.h.len == sizeof(lk) + sizeof(e), "sendv header");
	TU_CHECK(!memcmp(m.p, &lk, sizeof(lk)) && !memcmp(m.p + sizeof(lk), e, sizeof(e)),
		 "sendv payload");
	TU_CHECK(sp_validate(&m) == 0, "sendv message invalid");
	TU_CHECK(sp_sendv(sv[0], C_SET, &set, sizeof(set), NULL, 0) == 0, "sendv, one part");
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0 && m.h.len == sizeof(set) &&
		 !memcmp(m.p, &set, sizeof(set)), "sendv one part");

	/* the largest message, and one byte more */
	big = malloc(biglen + 1);
	TU_CHECK(big, "malloc");
	tu_fill(big, biglen, 99);
	TU_CHECK(sp_send(sv[0], C_CREATE, big, biglen, -1) == 0, "largest message refused");
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0 && m.h.len == biglen && !memcmp(m.p, big, biglen),
		 "largest message");
	TU_CHECK(sp_send(sv[0], C_CREATE, big, biglen + 1, -1) == -EMSGSIZE,
		 "oversize sp_send not -EMSGSIZE");
	TU_CHECK(sp_sendv(sv[0], C_CREATE, big, biglen, big, 1) == -EMSGSIZE,
		 "oversize sp_sendv not -EMSGSIZE");
	TU_CHECK(sp_sendv(sv[0], C_CREATE, big, UINT32_MAX, big, 2) == -EMSGSIZE,
		 "sp_sendv with lengths that wrap 32 bits not -EMSGSIZE");
	TU_CHECK(sp_send(sv[0], C_CREATE, big, UINT32_MAX - 4, -1) == -EMSGSIZE,
		 "sp_send with a length that wraps 32 bits not -EMSGSIZE");
	free(big);

	/* fd passing */
	mfd = memfd_create("proto-test", MFD_CLOEXEC);
	TU_CHECK(mfd >= 0, "memfd_create");
	struct sp_seg_r seg = { .seg = 3, .pages = SP_SEG_PAGES };
	TU_CHECK(sp_send(sv[1], D_SEG, &seg, sizeof(seg), mfd) == 0, "sp_send with fd");
	TU_CHECK(sp_recv(sv[0], rbuf, &m) == 0, "sp_recv with fd");
	TU_CHECK(m.h.type == D_SEG && sp_validate(&m) == 0 && !memcmp(m.p, &seg, sizeof(seg)),
		 "D_SEG payload");
	TU_CHECK(m.fd >= 0 && m.fd != mfd, "fd %d received (sent %d)", m.fd, mfd);
	TU_CHECK(fstat(m.fd, &st1) == 0 && fstat(mfd, &st2) == 0 && st1.st_ino == st2.st_ino &&
		 st1.st_dev == st2.st_dev, "received fd is another file");
	TU_CHECK(fcntl(m.fd, F_GETFD) & FD_CLOEXEC, "received fd is not close-on-exec");
	close(m.fd);
	close(mfd);

	/* nothing to read; then EOF */
	TU_CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	TU_CHECK(sp_recv(sv[0], rbuf, &m) == -EAGAIN, "empty non-blocking socket not -EAGAIN");
	TU_CHECK(count_fds() == base, "fds leaked by the round trips: %d, was %d", count_fds(),
		 base);
	close(sv[1]);
	TU_CHECK(sp_recv(sv[0], rbuf, &m) == -ECONNRESET, "EOF not -ECONNRESET");
	TU_CHECK(sp_send(sv[0], D_ACK, &s, 4, -1) == -EPIPE, "send to a closed peer not -EPIPE");
	close(sv[0]);
}

/* Send raw bytes, optionally with fds, bypassing sp_send. */
static void raw_send(int sock, const void *p, size_t len, const int *fds, int nfd, int ncmsg)
{
	union { char buf[CMSG_SPACE(16 * sizeof(int)) * 2]; struct cmsghdr align; } c;
	struct iovec iov = { (void *)p, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memset(&c, 0, sizeof(c));
	if (nfd) {
		struct cmsghdr *cm;
		int per = ncmsg > 1 ? nfd / ncmsg : nfd;

		mh.msg_control = c.buf;
		mh.msg_controllen = CMSG_SPACE(per * sizeof(int)) * ncmsg;
		cm = CMSG_FIRSTHDR(&mh);
		for (int k = 0; k < ncmsg; k++) {
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(per * sizeof(int));
			memcpy(CMSG_DATA(cm), fds + k * per, per * sizeof(int));
			cm = CMSG_NXTHDR(&mh, cm);
		}
	}
	TU_CHECK(sendmsg(sock, &mh, 0) == (ssize_t)len, "sendmsg %zu: %s", len, strerror(errno));
}

static void expect_good_after(int sv[2])
{
	struct sp_msg m;
	struct sp_ack a = { .err = -77 };

	TU_CHECK(sp_send(sv[0], D_ACK, &a, sizeof(a), -1) == 0, "send");
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0 && m.h.type == D_ACK && sp_validate(&m) == 0 &&
		 !memcmp(m.p, &a, sizeof(a)), "good message after a bad one lost");
}

static void test_malformed(void)
{
	int sv[2], base, fds[8];
	struct sp_msg m;
	unsigned char buf[64] = { 0 };
	struct sp_hdr h;
	unsigned char *huge;

	pair(sv);
	base = count_fds();

	/* shorter than the header */
	for (size_t n = 1; n < sizeof(struct sp_hdr); n++) {
		raw_send(sv[0], buf, n, NULL, 0, 0);
		TU_CHECK(sp_recv(sv[1], rbuf, &m) == -EPROTO, "%zu-byte datagram not -EPROTO", n);
		TU_CHECK(m.fd == -1, "fd set on a bad frame");
	}
	/* A zero-byte datagram cannot be told from EOF by recvmsg: it must
	 * not come back as a message. */
	raw_send(sv[0], buf, 0, NULL, 0, 0);
	TU_CHECK(sp_recv(sv[1], rbuf, &m) < 0, "0-byte datagram accepted");
	expect_good_after(sv);

	/* header len disagrees with the datagram's size */
	uint32_t lens[][2] = { { 4, 0 }, { 0, 4 }, { 10, 4 }, { 3, 4 }, { UINT32_MAX, 8 },
			       { 8 + 64, 8 } };
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		h = (struct sp_hdr){ .type = C_STAT, .len = lens[i][0] };
		memcpy(buf, &h, sizeof(h));
		raw_send(sv[0], buf, sizeof(h) + lens[i][1], NULL, 0, 0);
		TU_CHECK(sp_recv(sv[1], rbuf, &m) == -EPROTO,
			 "header len %u with %u payload bytes not -EPROTO", lens[i][0], lens[i][1]);
		expect_good_after(sv);
	}

	/* larger than SP_MAX_MSG: truncated by the kernel, refused */
	huge = calloc(1, SP_MAX_MSG + 4096);
	TU_CHECK(huge, "calloc");
	h = (struct sp_hdr){ .type = C_CREATE, .len = SP_MAX_MSG + 4096 - sizeof(h) };
	memcpy(huge, &h, sizeof(h));
	raw_send(sv[0], huge, SP_MAX_MSG + 4096, NULL, 0, 0);
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == -EPROTO, "oversize datagram not -EPROTO");
	h.len = SP_MAX_MSG + 1 - sizeof(h);
	memcpy(huge, &h, sizeof(h));
	raw_send(sv[0], huge, SP_MAX_MSG + 1, NULL, 0, 0);
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == -EPROTO, "datagram of SP_MAX_MSG+1 not -EPROTO");
	free(huge);
	expect_good_after(sv);
	TU_CHECK(count_fds() == base, "fds leaked");

	/* descriptors where they do not belong are closed */
	for (int i = 0; i < 8; i++) {
		fds[i] = memfd_create("proto-test", MFD_CLOEXEC);
		TU_CHECK(fds[i] >= 0, "memfd");
	}
	base = count_fds();
	h = (struct sp_hdr){ .type = D_SEG, .len = sizeof(struct sp_seg_r) };
	memset(buf, 0, sizeof(buf));
	memcpy(buf, &h, sizeof(h));

	/* two fds in one control message */
	raw_send(sv[0], buf, sizeof(h) + h.len, fds, 2, 1);
	int r = sp_recv(sv[1], rbuf, &m);
	if (r == 0 && m.fd >= 0)
		close(m.fd);
	/* No message carries more than one descriptor: a protocol error. */
	TU_CHECK(r == -EPROTO && m.fd == -1, "two fds: result %d fd %d, want -EPROTO and -1", r,
		 m.fd);
	TU_CHECK(count_fds() == base, "two fds in one message leaked %d",
		 count_fds() - base);
	/* two control messages of one fd each */
	raw_send(sv[0], buf, sizeof(h) + h.len, fds, 2, 2);
	r = sp_recv(sv[1], rbuf, &m);
	if (r == 0 && m.fd >= 0)
		close(m.fd);
	TU_CHECK(r == -EPROTO && m.fd == -1, "two cmsgs: result %d fd %d", r, m.fd);
	TU_CHECK(count_fds() == base, "two control messages leaked %d", count_fds() - base);
	/* more than sp_recv's control buffer holds (MSG_CTRUNC) */
	raw_send(sv[0], buf, sizeof(h) + h.len, fds, 8, 1);
	r = sp_recv(sv[1], rbuf, &m);
	if (m.fd >= 0)
		close(m.fd);
	TU_CHECK(r == -EPROTO && m.fd == -1, "8 fds: result %d, want -EPROTO", r);
	TU_CHECK(count_fds() == base, "8 fds (truncated control) leaked %d", count_fds() - base);
	/* one fd with a malformed frame */
	h.len = 1000;
	memcpy(buf, &h, sizeof(h));
	raw_send(sv[0], buf, sizeof(h) + 8, fds, 1, 1);
	r = sp_recv(sv[1], rbuf, &m);
	TU_CHECK(r == -EPROTO && m.fd == -1, "fd with a bad frame: result %d fd %d", r, m.fd);
	TU_CHECK(count_fds() == base, "fd with a malformed frame leaked");
	raw_send(sv[0], buf, 3, fds, 1, 1);
	r = sp_recv(sv[1], rbuf, &m);
	TU_CHECK(r == -EPROTO && m.fd == -1, "fd with a short frame: result %d fd %d", r, m.fd);
	TU_CHECK(count_fds() == base, "fd with a short frame leaked");
	/* one fd, well-formed D_SEG: kept (the sender still has its own) */
	h.len = sizeof(struct sp_seg_r);
	memcpy(buf, &h, sizeof(h));
	raw_send(sv[0], buf, sizeof(h) + h.len, fds, 1, 1);
	TU_CHECK(sp_recv(sv[1], rbuf, &m) == 0 && m.fd >= 0, "D_SEG lost its fd");
	TU_CHECK(count_fds() == base + 1, "D_SEG's fd not delivered");
	close(m.fd);
	expect_good_after(sv);
	/* C_PIPE: the read end of a pipe, delivered as that pipe */
	{
		int pf[2];
		struct stat s1, s2;
		struct sp_pipe pp = { .pages = 16 };

		TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe");
		TU_CHECK(sp_send(sv[0], C_PIPE, &pp, sizeof(pp), pf[0]) == 0, "send C_PIPE");
		r = sp_recv(sv[1], rbuf, &m);
		TU_CHECK(r == 0 && m.h.type == C_PIPE && sp_validate(&m) == 0 &&
			 !memcmp(m.p, &pp, sizeof(pp)), "C_PIPE: result %d type %u", r, m.h.type);
		TU_CHECK(m.fd >= 0, "C_PIPE lost its fd");
		TU_CHECK(fstat(m.fd, &s1) == 0 && fstat(pf[0], &s2) == 0 && S_ISFIFO(s1.st_mode) &&
			 s1.st_ino == s2.st_ino, "C_PIPE's fd is not the pipe sent");
		/* it is that pipe: what is written at the other end reads back */
		TU_CHECK(write(pf[1], "samepage", 8) == 8, "write pipe");
		char got[8];
		TU_CHECK(read(m.fd, got, 8) == 8 && !memcmp(got, "samepage", 8),
			 "C_PIPE's fd does not read the pipe");
		close(m.fd);
		close(pf[0]);
		close(pf[1]);
		TU_CHECK(count_fds() == base, "C_PIPE round trip leaked");
		/* a C_PIPE with a malformed frame: its fd is closed */
		TU_CHECK(pipe2(pf, O_CLOEXEC) == 0, "pipe");
		h = (struct sp_hdr){ .type = C_PIPE, .len = 100 };
		memcpy(buf, &h, sizeof(h));
		raw_send(sv[0], buf, sizeof(h) + sizeof(pp), pf, 1, 1);
		r = sp_recv(sv[1], rbuf, &m);
		TU_CHECK(r == -EPROTO && m.fd == -1, "C_PIPE with a bad frame: result %d fd %d", r,
			 m.fd);
		/* two fds with C_PIPE (both ends of the pipe): refused, both closed */
		h.len = sizeof(pp);
		memcpy(buf, &h, sizeof(h));
		raw_send(sv[0], buf, sizeof(h) + sizeof(pp), pf, 2, 1);
		r = sp_recv(sv[1], rbuf, &m);
		TU_CHECK(r == -EPROTO && m.fd == -1, "C_PIPE with two fds: result %d fd %d", r,
			 m.fd);
		close(pf[0]);
		close(pf[1]);
		TU_CHECK(count_fds() == base, "bad C_PIPE frames leaked %d", count_fds() - base);
		expect_good_after(sv);
	}

	/* An fd with a message type that never carries one (only D_SEG,
	 * C_PIPE, and a marker with C_HELLO, C_FORK, C_MARKER): sp_recv closes it. */
	static const uint16_t no_fd_types[] = { D_ACK, D_HELLO, C_COW, C_STAT, D_LOOKUP,
						C_CREATE, C_HINTS, D_HINTS, D_CREATE, D_BUDGET };
	int leaked = 0;
	for (size_t i = 0; i < sizeof(no_fd_types) / sizeof(no_fd_types[0]); i++) {
		const struct layout *l = layout_of(no_fd_types[i]);
		unsigned char *msg = calloc(1, sizeof(h) + l->fixed);
		TU_CHECK(msg, "calloc");
		h = (struct sp_hdr){ .type = no_fd_types[i], .len = (uint32_t)l->fixed };
		memcpy(msg, &h, sizeof(h));
		raw_send(sv[0], msg, sizeof(h) + l->fixed, fds, 1, 1);
		free(msg);
		r = sp_recv(sv[1], rbuf, &m);
		TU_CHECK(r == 0, "type %u with an fd: %d", no_fd_types[i], r);
		/* the caller validates and reads the payload: nothing else */
		TU_CHECK(sp_validate(&m) == 0, "type %u invalid", no_fd_types[i]);
		if (m.fd >= 0) {
			fprintf(stderr, "sp_recv handed over an fd with message type %u\n",
				no_fd_types[i]);
			close(m.fd);
			leaked++;
		}
	}
	for (int i = 0; i < 8; i++)
		close(fds[i]);
	close(sv[0]);
	close(sv[1]);
	TU_CHECK(!leaked,
		 "%d message types that never carry an fd came with one from sp_recv: "
		 "a caller that only reads the payload leaks it", leaked);
}

/* The wire format: what a library and a daemon of different builds must
 * agree on, written down independently of the structures. */
static void test_wire(void)
{
	static const struct { uint16_t type, want; } nums[] = {
		{ C_HELLO, 1 }, { C_BUDGET, 2 }, { C_LOOKUP, 3 }, { C_CREATE, 4 }, { C_UNREF, 5 },
		{ C_GETSEG, 6 }, { C_FORK, 7 }, { C_STAT, 8 }, { C_SET, 9 }, { C_UNMERGE, 10 },
		{ C_PIPE, 11 }, { C_HINTS, 12 }, { C_COW, 13 }, { C_MARKER, 14 }, { C_MOVE, 15 },
		{ C_PROCS, 16 }, { C_FILL, 17 },
		{ D_HELLO, 100 }, { D_BUDGET, 101 },
		{ D_LOOKUP, 102 }, { D_CREATE, 103 }, { D_SEG, 104 }, { D_ACK, 105 },
		{ D_STAT, 106 }, { D_HINTS, 107 }, { D_MOVE, 108 }, { D_PROCS, 109 },
	};
	static const struct { const char *what; size_t got, want; } sz[] = {
		{ "sp_create_ent", sizeof(struct sp_create_ent), 16 },
		{ "sp_create_ent.hash", offsetof(struct sp_create_ent, hash), 0 },
		{ "sp_create_ent.look", offsetof(struct sp_create_ent, look), 8 },
		{ "sp_create", sizeof(struct sp_create), 8 },
		{ "sp_create.e", offsetof(struct sp_create, e), 8 },
		{ "sp_pipe", sizeof(struct sp_pipe), 8 },
		{ "sp_pipe.pages", offsetof(struct sp_pipe, pages), 0 },
		{ "sp_hint", sizeof(struct sp_hint), 16 },
		{ "sp_hint.addr", offsetof(struct sp_hint, addr), 0 },
		{ "sp_hint.id", offsetof(struct sp_hint, id), 8 },
		{ "sp_hints", sizeof(struct sp_hints), 8 },
		{ "sp_hints.e", offsetof(struct sp_hints, e), 8 },
		{ "sp_hints_req", sizeof(struct sp_hints_req), 8 },
		{ "sp_hints_req.max", offsetof(struct sp_hints_req, max), 0 },
		{ "sp_budget_r.unmerge", offsetof(struct sp_budget_r, unmerge), 16 },
		{ "sp_budget_r.hints", offsetof(struct sp_budget_r, hints), 20 },
		{ "sp_budget_r.knobs", offsetof(struct sp_budget_r, knobs), 24 },
		{ "sp_ids.id", offsetof(struct sp_ids, id), 4 },
		{ "sp_procs_req", sizeof(struct sp_procs_req), 8 },
		{ "sp_fill", sizeof(struct sp_fill), 8 },
		{ "sp_proc_ent", sizeof(struct sp_proc_ent), 112 },
		{ "sp_proc_ent.st", offsetof(struct sp_proc_ent, st), 16 },
		{ "sp_proc_ent.refs", offsetof(struct sp_proc_ent, refs), 96 },
		{ "sp_proc_ent.cowed", offsetof(struct sp_proc_ent, cowed), 104 },
		{ "sp_procs", sizeof(struct sp_procs), 16 },
		{ "sp_procs.e", offsetof(struct sp_procs, e), 16 },
	};

	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
		TU_CHECK(nums[i].type == nums[i].want, "message number %u, want %u", nums[i].type,
			 nums[i].want);
	for (size_t i = 0; i < sizeof(sz) / sizeof(sz[0]); i++)
		TU_CHECK(sz[i].got == sz[i].want, "%s: %zu, want %zu", sz[i].what, sz[i].got,
			 sz[i].want);
	/* every counted message is sendable at its maximum count */
	for (size_t i = 0; i < NLAYOUTS; i++) {
		const struct layout *l = &layouts[i];
		if (!l->elem)
			continue;
		uint64_t bytes = sizeof(struct sp_hdr) + l->fixed + (uint64_t)l->max * l->elem;
		TU_CHECK(bytes <= SP_MAX_MSG, "type %u at its maximum count: %llu bytes > %u",
			 l->type, (unsigned long long)bytes, SP_MAX_MSG);
	}
	/* D_CREATE answers every page of the largest C_CREATE */
	TU_CHECK(layout_of(D_CREATE)->max >= layout_of(C_CREATE)->max,
		 "D_CREATE cannot answer a full C_CREATE");
	/* one C_CREATE's pages fit the largest pipe the library asks for */
	TU_CHECK((uint64_t)SP_MAX_CREATE * SP_PAGE <= 1u << 20,
		 "SP_MAX_CREATE pages exceed the default fs.pipe-max-size");
}

static void test_knobs(void)
{
	static const char *const names[KNOB_COUNT] = {
		[KNOB_RUN] = "run", [KNOB_PAGES_TO_SCAN] = "pages_to_scan",
		[KNOB_SLEEP_MILLISECS] = "sleep_millisecs", [KNOB_USE_ZERO_PAGES] = "use_zero_pages",
		[KNOB_MAX_PAGE_SHARING] = "max_page_sharing", [KNOB_SMART_SCAN] = "smart_scan",
		[KNOB_ADVISOR_MODE] = "advisor_mode", [KNOB_ADVISOR_MAX_CPU] = "advisor_max_cpu",
		[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] = "advisor_min_pages_to_scan",
		[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] = "advisor_max_pages_to_scan",
		[KNOB_ADVISOR_TARGET_SCAN_TIME] = "advisor_target_scan_time",
	};
	static const struct { int knob; uint64_t v; int ok; } cases[] = {
		{ KNOB_RUN, 0, 1 }, { KNOB_RUN, 1, 1 }, { KNOB_RUN, 2, 1 }, { KNOB_RUN, 3, 0 },
		{ KNOB_RUN, UINT64_MAX, 0 }, { KNOB_RUN, 0x100000001ull, 0 },
		{ KNOB_PAGES_TO_SCAN, 0, 0 }, { KNOB_PAGES_TO_SCAN, 1, 1 },
		{ KNOB_PAGES_TO_SCAN, 100, 1 }, { KNOB_PAGES_TO_SCAN, 1u << 24, 1 },
		{ KNOB_PAGES_TO_SCAN, (1u << 24) + 1, 0 }, { KNOB_PAGES_TO_SCAN, 0x100000064ull, 0 },
		{ KNOB_SLEEP_MILLISECS, 0, 1 }, { KNOB_SLEEP_MILLISECS, 20, 1 },
		{ KNOB_SLEEP_MILLISECS, 60000, 1 }, { KNOB_SLEEP_MILLISECS, 60001, 0 },
		{ KNOB_SLEEP_MILLISECS, 0x100000000ull, 0 },
		{ KNOB_USE_ZERO_PAGES, 0, 1 }, { KNOB_USE_ZERO_PAGES, 1, 1 },
		{ KNOB_USE_ZERO_PAGES, 2, 0 }, { KNOB_USE_ZERO_PAGES, 0x100000001ull, 0 },
		{ KNOB_MAX_PAGE_SHARING, 0, 0 }, { KNOB_MAX_PAGE_SHARING, 1, 0 },
		{ KNOB_MAX_PAGE_SHARING, 2, 1 }, { KNOB_MAX_PAGE_SHARING, 256, 1 },
		{ KNOB_MAX_PAGE_SHARING, 1u << 20, 1 }, { KNOB_MAX_PAGE_SHARING, (1u << 20) + 1, 0 },
		{ KNOB_MAX_PAGE_SHARING, 0x100000002ull, 0 },
		{ KNOB_SMART_SCAN, 0, 1 }, { KNOB_SMART_SCAN, 1, 1 }, { KNOB_SMART_SCAN, 2, 0 },
		{ KNOB_ADVISOR_MODE, ADVISOR_NONE, 1 }, { KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME, 1 },
		{ KNOB_ADVISOR_MODE, 2, 0 },
		{ KNOB_ADVISOR_MAX_CPU, 0, 1 }, { KNOB_ADVISOR_MAX_CPU, 70, 1 },
		{ KNOB_ADVISOR_MAX_CPU, UINT32_MAX, 1 }, { KNOB_ADVISOR_MAX_CPU, 1ull << 32, 0 },
		{ KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 0, 0 }, { KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 1, 1 },
		{ KNOB_ADVISOR_MIN_PAGES_TO_SCAN, 1u << 24, 1 },
		{ KNOB_ADVISOR_MIN_PAGES_TO_SCAN, (1u << 24) + 1, 0 },
		{ KNOB_ADVISOR_MAX_PAGES_TO_SCAN, 0, 0 }, { KNOB_ADVISOR_MAX_PAGES_TO_SCAN, 30000, 1 },
		{ KNOB_ADVISOR_MAX_PAGES_TO_SCAN, (1u << 24) + 1, 0 },
		{ KNOB_ADVISOR_TARGET_SCAN_TIME, 0, 0 }, { KNOB_ADVISOR_TARGET_SCAN_TIME, 1, 1 },
		{ KNOB_ADVISOR_TARGET_SCAN_TIME, UINT32_MAX, 1 },
		{ KNOB_ADVISOR_TARGET_SCAN_TIME, 1ull << 32, 0 },
		{ -1, 0, 0 }, { KNOB_COUNT, 0, 0 }, { KNOB_COUNT, 1, 0 }, { 1000, 1, 0 },
	};
	struct sp_knobs def;

	for (int k = 0; k < KNOB_COUNT; k++) {
		TU_CHECK(sp_knob_name(k) && !strcmp(sp_knob_name(k), names[k]),
			 "knob %d named %s, want %s", k, sp_knob_name(k) ? sp_knob_name(k) : "NULL",
			 names[k]);
		TU_CHECK(sp_knob_lookup(names[k]) == k, "lookup %s", names[k]);
	}
	TU_CHECK(!sp_knob_name(-1) && !sp_knob_name(KNOB_COUNT) && !sp_knob_name(1 << 30),
		 "name of a knob out of range");
	TU_CHECK(sp_knob_lookup("nope") == -ENOENT && sp_knob_lookup("") == -ENOENT &&
		 sp_knob_lookup("RUN") == -ENOENT && sp_knob_lookup("run ") == -ENOENT &&
		 sp_knob_lookup("ru") == -ENOENT && sp_knob_lookup("pages_to_scan2") == -ENOENT,
		 "lookup of an unknown name");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r = sp_knob_check(cases[i].knob, cases[i].v);
		TU_CHECK(r == (cases[i].ok ? 0 : -EINVAL), "knob %d value %#llx: %d, want %s",
			 cases[i].knob, (unsigned long long)cases[i].v, r,
			 cases[i].ok ? "0" : "-EINVAL");
	}
	samepaged_default_knobs(&def);
	for (int k = 0; k < KNOB_COUNT; k++)
		TU_CHECK(sp_knob_check(k, def.v[k]) == 0, "default %s=%u out of range", names[k],
			 def.v[k]);
	/* The kernel's defaults for the advisor: off, 70 %, 500 to 30000, 200 s. */
	TU_CHECK(def.v[KNOB_ADVISOR_MODE] == ADVISOR_NONE && def.v[KNOB_ADVISOR_MAX_CPU] == 70 &&
		 def.v[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] == 500 &&
		 def.v[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] == 30000 &&
		 def.v[KNOB_ADVISOR_TARGET_SCAN_TIME] == 200, "the advisor's defaults");
}

/* Knob values as typed and shown: advisor_mode by name, the rest numbers;
 * knobs given together go in an order where each store makes sense. */
static void test_knob_text(void)
{
	char buf[64];
	uint64_t v = 99;

	TU_CHECK(sp_knob_parse(KNOB_ADVISOR_MODE, "scan-time", &v) == 0 && v == ADVISOR_SCAN_TIME,
		 "advisor_mode=scan-time");
	TU_CHECK(sp_knob_parse(KNOB_ADVISOR_MODE, "none", &v) == 0 && v == ADVISOR_NONE,
		 "advisor_mode=none");
	TU_CHECK(sp_knob_parse(KNOB_ADVISOR_MODE, "1", &v) == -EINVAL &&
		 sp_knob_parse(KNOB_ADVISOR_MODE, "scan", &v) == -EINVAL &&
		 sp_knob_parse(KNOB_ADVISOR_MODE, "", &v) == -EINVAL, "advisor_mode takes names only");
	TU_CHECK(sp_knob_parse(KNOB_ADVISOR_MAX_CPU, "150", &v) == 0 && v == 150, "max_cpu=150");
	TU_CHECK(sp_knob_parse(KNOB_ADVISOR_TARGET_SCAN_TIME, "0", &v) == -ERANGE,
		 "target_scan_time=0");
	TU_CHECK(sp_knob_parse(KNOB_PAGES_TO_SCAN, "12x", &v) == -EINVAL, "pages_to_scan=12x");
	sp_knob_format(KNOB_ADVISOR_MODE, ADVISOR_SCAN_TIME, buf, sizeof(buf));
	TU_CHECK(!strcmp(buf, "scan-time"), "format scan-time: %s", buf);
	sp_knob_format(KNOB_ADVISOR_MODE, ADVISOR_NONE, buf, sizeof(buf));
	TU_CHECK(!strcmp(buf, "none"), "format none: %s", buf);
	sp_knob_format(KNOB_RUN, 2, buf, sizeof(buf));
	TU_CHECK(!strcmp(buf, "2"), "format run: %s", buf);
	sp_knob_takes(KNOB_ADVISOR_MODE, buf, sizeof(buf));
	TU_CHECK(!strcmp(buf, "none or scan-time"), "advisor_mode takes: %s", buf);
	sp_knob_takes(KNOB_MAX_PAGE_SHARING, buf, sizeof(buf));
	TU_CHECK(!strcmp(buf, "2 to 1048576"), "max_page_sharing takes: %s", buf);
	for (int k = 0; k < KNOB_COUNT; k++)
		TU_CHECK(sp_knob_rank(k) >= 0 && sp_knob_rank(k) < SP_KNOB_RANKS, "rank of %s",
			 sp_knob_name(k));
	TU_CHECK(sp_knob_rank(KNOB_ADVISOR_MIN_PAGES_TO_SCAN) < sp_knob_rank(KNOB_ADVISOR_MODE) &&
		 sp_knob_rank(KNOB_ADVISOR_MODE) < sp_knob_rank(KNOB_PAGES_TO_SCAN),
		 "advisor_mode goes after its start value and before pages_to_scan");
}

/* 100k random messages: never a crash or an overread (payloads sit in
 * exactly-sized blocks), always the model's verdict. */
static void test_fuzz(void)
{
	enum { N = 100000, MAXLEN = 4096 * 2 };
	static unsigned char p[SP_MAX_MSG];
	long accepted = 0;

	for (long i = 0; i < N; i++) {
		unsigned w = (unsigned)(rnd() % 8);
		const struct layout *l = &layouts[rnd() % NLAYOUTS];
		uint16_t type = w < 5 ? l->type : (uint16_t)rnd();
		uint32_t len = (uint32_t)(rnd() % (MAXLEN + 1));

		if (w < 5)
			l = layout_of(type);
		for (uint32_t k = 0; k < len; k += 8) {
			uint64_t x = rnd();
			memcpy(p + k, &x, len - k < 8 ? len - k : 8);
		}
		if (w < 3 && l) {
			/* near-valid: the fixed size, or a small plausible count */
			if (!l->elem) {
				len = (uint32_t)l->fixed + (uint32_t)(rnd() % 3) - 1;
			} else {
				uint32_t n = (uint32_t)(rnd() % (l->max + 2));
				if (l->elem * n + l->fixed > SP_MAX_MSG)
					n = (uint32_t)(rnd() % 4);
				memcpy(p, &n, 4);
				len = (uint32_t)(l->fixed + (size_t)n * l->elem) +
				      (rnd() % 4 == 0 ? (uint32_t)(rnd() % 9) - 4 : 0);
				if (len > SP_MAX_MSG)
					len = SP_MAX_MSG;
			}
		}
		int r = validate(type, p, len);
		int want = model_valid(type, p, len);
		TU_CHECK((r == 0) == want, "fuzz %ld: type %u len %u: sp_validate %d, model %d", i,
			 type, len, r, want);
		accepted += r == 0;
	}
	/* the loop must have reached the accepting paths too */
	TU_CHECK(accepted > N / 50, "fuzz accepted only %ld messages", accepted);
}

int main(void)
{
	test_validate();
	test_roundtrip();
	test_knobs();
	test_knob_text();
	test_fuzz();
	test_wire();
	test_malformed();
	printf("proto: ok\n");
	return 0;
}
