/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the daemon's message handling (daemon/requests.c and
 * what it calls: lookup.c, move.c, sets.c, common/proto.c,
 * pool.c, index.c, refs.c, map.c), in process.
 *
 * Each input is one conversation with a fresh daemon (samepaged_init(): no
 * listening socket, no epoll). 1..3 connections are socketpairs whose
 * daemon ends are attached; the input is a sequence of operations, each
 * one byte (low 5 bits: what, high 3 bits: which connection) followed by
 * its arguments. Every message is written to a client end with sendmsg
 * (SCM_RIGHTS when it carries a descriptor), the daemon serves that
 * connection, and the replies are drained (descriptors in them closed,
 * reply ids remembered so that C_UNREF/C_COW can name real references).
 *
 * Messages are either raw (type, length, payload bytes from the input) or
 * built from a few input bytes with valid sizes and hashes the fuzzer
 * could not compute itself: page contents are 256 patterns (plus one page
 * of literal input bytes), and lookups and creates claim those patterns'
 * XXH3 hashes. Built messages may then be corrupted (a byte, the length).
 *
 * After every operation: samepaged_check() must pass and every reply must
 * be well-formed. At the end, with every connection closed and every
 * marker unmapped: no connection, no held set, no pool page, no reference,
 * no segment left; after samepaged_fini() no descriptor and no mapping of
 * the daemon's (os_mmap/os_munmap are counted through --wrap) survive.
 * Any of these failing aborts, which libFuzzer reports as a crash.
 *
 * The daemon's instance is fixed (INSTANCE) so that inputs can name it in
 * C_HELLO (HELLO_FORKED parks a connection only for the right instance).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "daemon.h"
#include "os.h"
#include "pool.h"
#include "proto.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INSTANCE 0x5350414745000001ull /* what C_HELLO's expect_instance can name */
#define SLOTS 3          /* connections at once */
#define MARKERS 4        /* marker memfds an input can reuse by number */
#define MAX_OPS 512      /* per input: keeps an execution short */
#define MAX_FDS 96       /* descriptors an input may create */
#define MAX_CONNS 12     /* connections an input may open, reconnections included */
#define IDS 64           /* pool ids remembered per connection */
#define BASE_PID 4000    /* connection k has pid BASE_PID + k: C_STAT/C_UNMERGE name it */

#define die(...) do { fprintf(stderr, "daemon_msg: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)

/* ---- the input ---- */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint8_t u8(struct in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

/* Little-endian; one read per declaration, so the order is defined. */
static uint16_t u16(struct in *in)
{
	uint16_t lo = u8(in), hi = u8(in);

	return (uint16_t)(lo | hi << 8);
}

static uint32_t u32(struct in *in)
{
	uint32_t lo = u16(in), hi = u16(in);

	return lo | hi << 16;
}

static uint64_t u64(struct in *in)
{
	uint64_t lo = u32(in), hi = u32(in);

	return lo | hi << 32;
}

/* n bytes of input into out, zeros once it runs out. */
static void bytes(struct in *in, void *out, size_t n)
{
	size_t k = n < in->n ? n : in->n;

	memcpy(out, in->p, k);
	memset((char *)out + k, 0, n - k);
	in->p += k;
	in->n -= k;
}

/* A small number that is sometimes an edge value. */
static uint64_t num(struct in *in)
{
	uint8_t b = u8(in);

	switch (b >> 5) {
	case 0: return b & 31;
	case 1: return 1ull << (b & 31);
	case 2: return (1ull << (b & 31)) - 1;
	case 3: return u32(in);
	case 4: return u64(in);
	case 5: return UINT32_MAX - (b & 31);
	case 6: return UINT64_MAX - (b & 31);
	default: return u16(in);
	}
}

/* ---- page contents ---- */

#define PATTERNS 256
#define LITERAL 255 /* pattern 255: the page of literal input bytes */
static unsigned char pages[PATTERNS][SP_PAGE];
static uint64_t hashes[PATTERNS];

static void fill_pattern(int i)
{
	/* Pattern 0 is the zero page; the others differ in every byte run, so
	 * no two share a hash. */
	for (size_t j = 0; j < SP_PAGE; j++)
		pages[i][j] = i ? (unsigned char)(i + (j / 512) * 37 * (i & 1)) : 0;
	hashes[i] = XXH3_64bits(pages[i], SP_PAGE);
}

static void set_literal(struct in *in)
{
	bytes(in, pages[LITERAL], SP_PAGE);
	hashes[LITERAL] = XXH3_64bits(pages[LITERAL], SP_PAGE);
}

/* ---- harness state, per input ---- */

struct slot {
	int cfd;           /* client end, -1: none */
	uint32_t id;       /* the daemon's conn id */
	int pipe_w;        /* write end of the last pipe sent, -1: none */
	uint32_t ids[IDS]; /* pool ids from replies, newest first */
	uint32_t nids;
	uint32_t last_lookup; /* entries in the last C_LOOKUP sent */
};

struct marker {
	int fd;
	void *map;         /* mapped shared and writable: sets of its connections are held */
};

static struct samepaged d;
static int trace; /* DAEMON_MSG_TRACE=1: print each message and reply (seeds, reproducers) */
/* DAEMON_MSG_SKIP_KNOWN=1: do not send what triggers a bug already known
 * (fuzz/README.md, "Known bugs"), to fuzz past it until it is fixed. */
static int skip_known;
static struct slot slots[SLOTS];
static struct marker markers[MARKERS];
static int fds_made, conns_made;
static unsigned char msg[SP_MAX_MSG + 4096];
static unsigned char rbuf[SP_MAX_MSG + 4096];

/* Bytes of os_mmap()ed memory the daemon holds (--wrap: pool windows,
 * maps, the stable index). Calls inside os.c itself are not wrapped. */
static int64_t mapped_bytes;
void *__real_os_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off);
int __real_os_munmap(void *a, size_t len);
void *__wrap_os_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off);
int __wrap_os_munmap(void *a, size_t len);

void *__wrap_os_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = __real_os_mmap(a, len, prot, flags, fd, off);

	if (p != MAP_FAILED)
		mapped_bytes += (int64_t)len;
	return p;
}

int __wrap_os_munmap(void *a, size_t len)
{
	int err = __real_os_munmap(a, len);

	if (!err)
		mapped_bytes -= (int64_t)len;
	return err;
}

static int count_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	int n = 0;

	if (!dir)
		die("opendir /proc/self/fd: %s", strerror(errno));
	while (readdir(dir))
		n++;
	closedir(dir);
	return n;
}

static struct conn *conn_of(uint32_t id)
{
	for (struct conn *c = d.conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static int can_make_fd(void)
{
	return fds_made < MAX_FDS;
}

/* Count of waiting hints of c that name id. */
static uint32_t hints_naming(const struct conn *c, uint32_t id)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < c->nhints; i++)
		n += c->hints[i].id == id;
	return n;
}

static void check(const char *when)
{
	int err = samepaged_check(&d);

	if (err)
		die("samepaged_check after %s: %d", when, err);
	/* A merge hint comes with a reference already taken for it (daemon.h:
	 * "references already taken for it"): each waiting hint's pool page
	 * is held by its connection, at least once per hint naming it. */
	for (int pass = 0; pass < 2; pass++)
		for (const struct conn *c = pass ? d.held : d.conns; c; c = c->next)
			for (uint32_t i = 0; i < c->nhints; i++) {
				uint32_t id = c->hints[i].id;
				if (refs_count(&c->refs, id) < hints_naming(c, id))
					die("after %s: conn %u waits with %u hint(s) for pool page %#x "
					    "(address %#llx) but holds %u reference(s) to it", when,
					    c->id, hints_naming(c, id), id,
					    (unsigned long long)c->hints[i].addr,
					    refs_count(&c->refs, id));
			}
}

static void remember(struct slot *s, uint32_t id)
{
	if (id >= SP_POOL_CREATE)
		return;
	memmove(s->ids + 1, s->ids, (IDS - 1) * sizeof(s->ids[0]));
	s->ids[0] = id;
	if (s->nids < IDS)
		s->nids++;
}

/* Read and check every reply waiting on s's client end. */
static void drain(struct slot *s)
{
	while (s->cfd >= 0) {
		union {
			char buf[CMSG_SPACE(8 * sizeof(int))];
			struct cmsghdr align;
		} c;
		struct iovec iov = { rbuf, sizeof(rbuf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = c.buf, .msg_controllen = sizeof(c.buf) };
		ssize_t n = recvmsg(s->cfd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		struct sp_msg m = { .fd = -1 };
		int nfd = 0;

		if (n <= 0)
			return;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
				close(fd);
				nfd++;
			}
		}
		/* The daemon's replies are ours to trust: each must be well-formed. */
		if ((size_t)n < sizeof(m.h) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
			die("reply of %zd bytes, flags %#x", n, mh.msg_flags);
		memcpy(&m.h, rbuf, sizeof(m.h));
		m.p = rbuf + sizeof(m.h);
		if (m.h.len != (size_t)n - sizeof(m.h) || m.h.type < D_HELLO || sp_validate(&m))
			die("malformed reply: type %u len %u (%zd bytes)", m.h.type, m.h.len, n);
		if (nfd != (m.h.type == D_SEG))
			die("reply type %u with %d descriptors", m.h.type, nfd);
		if (trace)
			fprintf(stderr, "  conn %u <- type %u len %u%s\n", s->id, m.h.type, m.h.len,
				nfd ? " +fd" : "");
		if (m.h.type == D_LOOKUP || m.h.type == D_CREATE || m.h.type == D_MOVE) {
			const struct sp_ids *r = (const void *)m.p;
			for (uint32_t i = 0; i < r->n; i++) {
				remember(s, r->id[i]);
				if (trace && i < 16)
					fprintf(stderr, "    id %#x\n", r->id[i]);
			}
		} else if (m.h.type == D_HINTS) {
			const struct sp_hints *r = (const void *)m.p;
			for (uint32_t i = 0; i < r->n; i++)
				remember(s, r->e[i].id);
		}
	}
}

static void drain_all(void)
{
	for (int i = 0; i < SLOTS; i++)
		drain(&slots[i]);
}

/* The daemon closed a connection (a malformed message, a failed reply):
 * our end goes too, so that the slot can connect again. */
static void reap(void)
{
	for (int i = 0; i < SLOTS; i++)
		if (slots[i].cfd >= 0 && !conn_of(slots[i].id)) {
			drain(&slots[i]);
			close_fd(&slots[i].cfd);
			close_fd(&slots[i].pipe_w);
		}
}

static void serve(struct slot *s)
{
	struct conn *c = conn_of(s->id);

	if (c)
		samepaged_serve(&d, c);
	drain(s);
}

static void connect_slot(int k)
{
	struct slot *s = &slots[k];
	int sv[2];
	struct conn *c;

	if (s->cfd >= 0 || conns_made >= MAX_CONNS || fds_made + 2 > MAX_FDS)
		return;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	fds_made += 2;
	conns_made++;
	c = samepaged_attach(&d, sv[1], BASE_PID + k);
	if (!c)
		die("samepaged_attach failed");
	memset(s, 0, sizeof(*s));
	s->cfd = sv[0];
	s->pipe_w = -1;
	s->id = c->id;
}

/* Close the client end: the daemon reads what is left, then EOF. */
static void hang_up(int k)
{
	struct slot *s = &slots[k];

	if (s->cfd < 0)
		return;
	close_fd(&s->cfd);
	close_fd(&s->pipe_w);
	serve(s);
}

/* ---- descriptors that ride along ---- */

static int make_marker(int seal_ok, off_t size)
{
	int fd = memfd_create("fuzz-mark", MFD_CLOEXEC | (seal_ok ? MFD_ALLOW_SEALING : 0));

	if (fd < 0)
		die("memfd_create: %s", strerror(errno));
	if (ftruncate(fd, size) < 0)
		die("ftruncate: %s", strerror(errno));
	fds_made++;
	return fd;
}

static struct marker *marker_slot(struct in *in, int fresh)
{
	struct marker *m = &markers[u8(in) % MARKERS];

	if (m->fd >= 0 && !fresh)
		return m;
	if (m->map)
		munmap(m->map, SP_PAGE);
	m->map = NULL;
	close_fd(&m->fd);
	m->fd = make_marker(1, SP_PAGE);
	return m;
}

static void map_marker(struct marker *m)
{
	void *p;

	if (m->fd < 0 || m->map)
		return;
	/* Fails once the daemon sealed it (nobody mapped it at a sweep). */
	p = mmap(NULL, SP_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	m->map = p == MAP_FAILED ? NULL : p;
}

/* A pipe of `pages` capacity; its write end (non-blocking) becomes s's. */
static int make_pipe(struct slot *s, uint32_t pages)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
		die("pipe2: %s", strerror(errno));
	fds_made += 2;
	if (pages)
		fcntl(p[1], F_SETPIPE_SZ, (int)(pages * SP_PAGE)); /* may round up or fail */
	close_fd(&s->pipe_w);
	s->pipe_w = p[1];
	return p[0];
}

/* deliver()'s dflt: the descriptor a message carries by default; > 0: a
 * pipe of that many pages. */
#define DF_NONE 0
#define DF_MARKER (-1)
#define DF_HELLO (-2)

static const uint32_t pipe_sizes[8] = { 1, 2, 16, 64, 255, 256, 257, 0 };

/* The descriptor a message carries (fdopt), or -1; *own says whether it is
 * ours to close after sending (the marker table keeps its own). */
static int attach_fd(struct in *in, struct slot *s, uint8_t fdopt, int dflt, int *own,
		     int *extra)
{
	int fd = -1;

	*own = 1;
	*extra = -1;
	if (!can_make_fd())
		return -1;
	/* Low 4 bits: what (mod 10); high bits: a variant of it. */
	switch ((fdopt & 15) % 10) {
	case 0: case 1: case 2:
		/* What the message usually carries: C_PIPE a pipe as large as
		 * it claims (or a page short), C_FORK and C_MARKER a marker,
		 * C_HELLO a marker or nothing. */
		if (dflt > 0)
			return make_pipe(s, (uint32_t)dflt - ((fdopt & 0x80) && dflt > 1));
		if (dflt == DF_MARKER || (dflt == DF_HELLO && (fdopt & 15) % 10)) {
			*own = 0;
			return marker_slot(in, fdopt & 0x10)->fd;
		}
		return -1;
	case 3: /* a page pipe: its size a common one or any */
		fd = make_pipe(s, (fdopt >> 4) < 8 ? pipe_sizes[fdopt >> 4] : u8(in) + 1u);
		return fd;
	case 4: /* a fresh marker in a numbered slot */
		*own = 0;
		return marker_slot(in, 1)->fd;
	case 5: /* a marker sent before, or a fresh one */
		*own = 0;
		return marker_slot(in, 0)->fd;
	case 6: { /* a marker the process maps: its sets are held */
		struct marker *m = marker_slot(in, (fdopt >> 4) & 1);
		map_marker(m);
		*own = 0;
		return m->fd;
	}
	case 7: /* memfds a marker must not be: no sealing, wrong size, sealed */
		switch ((fdopt >> 4) % 4) {
		case 0: return make_marker(0, SP_PAGE);
		case 1: return make_marker(1, 0);
		case 2: return make_marker(1, 2 * SP_PAGE);
		default:
			fd = make_marker(1, SP_PAGE);
			fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE);
			return fd;
		}
	case 8: /* neither a pipe nor a file */
		fd = eventfd(0, EFD_CLOEXEC);
		if (fd < 0)
			die("eventfd: %s", strerror(errno));
		fds_made++;
		return fd;
	default: /* two descriptors in one message */
		fd = make_pipe(s, 16);
		*extra = make_marker(1, SP_PAGE);
		return fd;
	}
}

/* ---- messages ---- */

static void send_frame(struct slot *s, const struct sp_hdr *h, const void *p, size_t len,
		       int fd, int extra)
{
	int fds[2] = { fd, extra };
	int nfds = (fd >= 0) + (extra >= 0);
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} c;
	struct iovec iov[2] = { { (void *)h, sizeof(*h) }, { (void *)p, len } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

	if (nfds) {
		memset(&c, 0, sizeof(c));
		mh.msg_control = c.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fd >= 0 ? fds : fds + 1, nfds * sizeof(int));
	}
	/* A full socket (a parked connection reads nothing) drops the frame. */
	if (sendmsg(s->cfd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
	    errno != EPIPE && errno != ECONNRESET && errno != ECONNREFUSED && errno != EMSGSIZE &&
	    errno != ENOBUFS)
		die("sendmsg: %s", strerror(errno));
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

/* Known bug 1 (fuzz/crashes/daemon_msg-hint-unref-null-deref): a C_UNREF
 * may drop the reference a waiting merge hint holds; a later C_LOOKUP or
 * C_CREATE of the hinted address then reads the freed pool page
 * (hint_claim(): NULL dereference, or a page handed out without a
 * reference). Would this well-formed C_UNREF do that? */
static int known_trigger(const struct slot *s, uint16_t type, const struct sp_hdr *h, size_t len)
{
	static uint32_t ids[SP_MAX_UNREF];
	struct sp_msg m = { .h = *h, .p = msg, .fd = -1 };
	const struct sp_ids *u = (const void *)msg;
	const struct conn *c = conn_of(s->id);

	if (type != C_UNREF || h->len != len || sp_validate(&m) || !c || !c->nhints)
		return 0;
	for (uint32_t i = 0; i < u->n; i++)
		ids[i] = u->id[i] & ~SP_UNREF_COWED;
	qsort(ids, u->n, sizeof(ids[0]), cmp_u32);
	for (uint32_t i = 0; i < c->nhints; i++) {
		uint32_t id = c->hints[i].id, held = refs_count(&c->refs, id), drops = 0;
		const uint32_t *at = bsearch(&id, ids, u->n, sizeof(ids[0]), cmp_u32);
		if (!at)
			continue;
		while (at > ids && at[-1] == id)
			at--;
		while (at < ids + u->n && *at++ == id)
			drops++;
		if ((held > drops ? held - drops : 0) < hints_naming(c, id))
			return 1;
	}
	return 0;
}

/* Send type with payload msg[0, len): maybe corrupted, maybe with a
 * descriptor; then serve and drain. */
static void deliver(struct in *in, struct slot *s, uint16_t type, size_t len, int dflt)
{
	struct sp_hdr h = { .type = type };
	uint8_t fdopt = u8(in), mut = u8(in);
	int own, extra, fd;

	if (mut & 1) { /* one byte changed */
		size_t at = u16(in);
		if (len)
			msg[at % len] ^= u8(in) | 1;
	}
	if (mut & 2) { /* the length off by a little */
		int delta = (int8_t)u8(in) / 8;
		len = delta < 0 && (size_t)-delta > len ? 0 : len + delta;
		if (len > sizeof(msg))
			len = sizeof(msg);
	}
	h.len = (uint32_t)len;
	if (mut & 4) /* the header lies about the length */
		h.len = u32(in);
	if (mut & 8)
		h.flags = u16(in);
	if (skip_known && known_trigger(s, type, &h, len)) {
		if (trace)
			fprintf(stderr, "conn %u: C_UNREF of a hinted reference not sent\n", s->id);
		return;
	}
	fd = attach_fd(in, s, fdopt, dflt, &own, &extra);
	if (trace)
		fprintf(stderr, "conn %u -> type %u len %zu (header %u)%s%s\n", s->id, type, len,
			h.len, fd >= 0 ? " +fd" : "", extra >= 0 ? " +fd" : "");
	send_frame(s, &h, msg, len, fd, extra);
	if (own && fd >= 0)
		close(fd);
	if (extra >= 0)
		close(extra);
	serve(s);
	if (trace && !conn_of(s->id))
		fprintf(stderr, "  conn %u closed by the daemon\n", s->id);
}

static const uint16_t types[] = {
	C_HELLO, C_BUDGET, C_LOOKUP, C_CREATE, C_UNREF, C_GETSEG, C_FORK, C_STAT, C_SET,
	C_UNMERGE, C_PIPE, C_HINTS, C_COW, C_MARKER, C_MOVE, C_PROCS, C_FILL, D_HELLO, D_BUDGET,
	D_LOOKUP, D_CREATE, D_SEG, D_ACK, D_STAT, D_HINTS, D_MOVE, D_PROCS, 0, 18, 99, 110,
};

static void op_raw(struct in *in, struct slot *s)
{
	uint8_t t = u8(in);
	uint16_t type = t < 0xf0 ? types[t % (sizeof(types) / sizeof(types[0]))] : u16(in);
	size_t len = u16(in);

	/* Mostly short, sometimes up to and past SP_MAX_MSG. */
	len = len & 0x8000 ? (len & 0x7fff) * 3 : len & 0x3ff;
	if (len > sizeof(msg))
		len = sizeof(msg);
	bytes(in, msg, len);
	deliver(in, s, type, len, DF_NONE);
}

static void op_hello(struct in *in, struct slot *s)
{
	uint8_t b = u8(in);
	struct sp_hello h = { .version = SP_PROTO_VERSION, .flags = b & 3 };

	/* One field at a time: the order the input is read in is fixed. */
	if (b & 0x80)
		h.version = (uint32_t)num(in);
	if (b & 0x40)
		h.flags = (uint32_t)num(in);
	h.domain = (b >> 2) & 1 ? 1 + ((b >> 3) & 1) : 0;
	h.expect_instance = (b >> 4) & 1 ? INSTANCE : ((b >> 5) & 1 ? num(in) : 0);
	memcpy(msg, &h, sizeof(h));
	deliver(in, s, C_HELLO, sizeof(h), DF_HELLO);
}

static void op_budget(struct in *in, struct slot *s)
{
	uint8_t b = u8(in);
	struct sp_budget r = {
		.flags = b & 3,
		.st = { .mergeable = (b >> 5) & 1, .merge_any = (b >> 6) & 1 },
	};

	r.want = (uint32_t)num(in);
	r.pass_gen = b & 4 ? d.gen + ((b >> 3) & 1) : num(in);
	r.scanned = b & 0x10 ? num(in) : 0;
	if (b & 0x80)
		bytes(in, &r.st, sizeof(r.st));
	memcpy(msg, &r, sizeof(r));
	deliver(in, s, C_BUDGET, sizeof(r), DF_NONE);
}

static void op_lookup(struct in *in, struct slot *s)
{
	uint8_t b = u8(in);
	struct sp_lookup *l = (struct sp_lookup *)msg;
	uint32_t n;

	if (b & 0x80) { /* many entries from a seed: big lookups for few bytes */
		uint8_t seed = u8(in), spread = u8(in) | 1;
		n = (uint32_t)u8(in) * 16 + 1;
		if (n > SP_MAX_LOOKUP + 1)
			n = SP_MAX_LOOKUP + 1; /* one too many at most: msg holds that */
		if (b & 0x40)
			n = SP_MAX_LOOKUP;
		for (uint32_t i = 0; i < n; i++) {
			uint8_t pat = (uint8_t)(seed + i % spread);
			l->e[i] = (struct sp_lookup_ent){ .hash = hashes[pat],
							  .addr = ((uint64_t)i + (b & 7)) * SP_PAGE };
		}
	} else {
		n = b & 0x3f;
		for (uint32_t i = 0; i < n; i++) {
			uint8_t pat = u8(in), a = u8(in);
			/* addresses: a few pages, unaligned, or any */
			uint64_t addr = a < 0xf0 ? (uint64_t)a * SP_PAGE : a == 0xff ? u64(in) : a;
			l->e[i] = (struct sp_lookup_ent){ .hash = hashes[pat], .addr = addr };
		}
	}
	l->n = n;
	l->pad = 0;
	s->last_lookup = n;
	deliver(in, s, C_LOOKUP, sizeof(*l) + n * sizeof(l->e[0]), DF_NONE);
}

/* Write page contents into s's pipe, page by page (each write whole). */
static void put_pages(struct slot *s, const uint8_t *pats, uint32_t n)
{
	for (uint32_t i = 0; i < n && s->pipe_w >= 0; i++)
		if (write(s->pipe_w, pages[pats[i]], SP_PAGE) != SP_PAGE)
			return; /* full, or the daemon closed the read end */
}

static void op_pages(struct in *in, struct slot *s)
{
	uint8_t pats[SP_MAX_CREATE];
	uint32_t n = u8(in) % 32 + 1;

	for (uint32_t i = 0; i < n; i++) {
		pats[i] = u8(in);
		if (pats[i] == LITERAL)
			set_literal(in);
	}
	put_pages(s, pats, n);
}

/* Bytes into the pipe that are not whole pages. */
static void op_pipe_bytes(struct in *in, struct slot *s)
{
	uint32_t n = u16(in) % (2 * SP_PAGE);
	uint8_t fill = u8(in);

	if (s->pipe_w < 0 || !n)
		return;
	memset(msg, fill, n);
	if (write(s->pipe_w, msg, n) < 0) {
		/* full, or the daemon closed the read end */
	}
}

static void op_create(struct in *in, struct slot *s)
{
	uint8_t b = u8(in), pats[SP_MAX_CREATE];
	struct sp_create *cr = (struct sp_create *)msg;
	uint32_t n, bad = UINT32_MAX;

	if (b & 0x80) { /* many pages from a seed */
		uint8_t seed = u8(in), spread = u8(in) | 1;
		n = (b & 0x40) ? SP_MAX_CREATE : (uint32_t)u8(in) % SP_MAX_CREATE + 1;
		for (uint32_t i = 0; i < n; i++) {
			pats[i] = (uint8_t)(seed + i % spread) % LITERAL;
			cr->e[i] = (struct sp_create_ent){ .hash = hashes[pats[i]], .look = i };
		}
	} else {
		n = b & 0x1f;
		for (uint32_t i = 0; i < n; i++) {
			uint8_t look = u8(in);
			pats[i] = u8(in);
			if (pats[i] == LITERAL)
				set_literal(in);
			cr->e[i] = (struct sp_create_ent){
				.hash = hashes[pats[i]],
				/* an entry of the last lookup, none, or any */
				.look = look < 0xf0 ? look : look == 0xff ? UINT32_MAX : u32(in),
			};
		}
	}
	if ((b & 0x20) && n) { /* one page's bytes differ from its claimed hash */
		uint8_t how = u8(in);
		bad = how % n;
		if (how & 0x80)
			pats[bad] = (uint8_t)(pats[bad] + 1) % LITERAL; /* other bytes */
		else
			cr->e[bad].hash ^= 1; /* another hash */
	}
	cr->n = n;
	cr->pad = 0;
	/* Mostly the process puts the pages in its pipe first, as the library
	 * does; sometimes one fewer (a short pipe), sometimes none. */
	switch (u8(in) % 4) {
	case 2: put_pages(s, pats, n ? n - 1 : 0); break;
	case 3: break;
	default: put_pages(s, pats, n); break;
	}
	deliver(in, s, C_CREATE, sizeof(*cr) + n * sizeof(cr->e[0]), DF_NONE);
}

/* C_UNREF, C_COW and C_MOVE: ids the connection got, ids of others, or
 * any. */
static void op_ids(struct in *in, struct slot *s, uint16_t type)
{
	uint8_t b = u8(in);
	struct sp_ids *u = (struct sp_ids *)msg;
	uint32_t n = b & 0x3f;

	if (b & 0x80) {
		n = (uint32_t)u8(in) * 64 + 1;
		if (b & 0x40)
			n = SP_MAX_UNREF;
	}
	if (type == C_MOVE && n > SP_MAX_MOVE && !(b & 0x40))
		n = SP_MAX_MOVE; /* mostly well-formed: past the size check */
	for (uint32_t i = 0; i < n; i++) {
		uint8_t k = (b & 0x80) ? (uint8_t)i : u8(in);
		uint32_t id;
		if (k < 0xc0 && s->nids)
			id = s->ids[k % s->nids];
		else if (k < 0xf0)
			id = k & 0x3f; /* low ids of segment 0 */
		else if (k < 0xf8)
			id = SP_SEG_PAGES + (k & 7);
		else
			id = u32(in);
		if (type == C_UNREF && (b & 0x40) && !(b & 0x80))
			id |= SP_UNREF_COWED;
		u->id[i] = id;
	}
	u->n = n;
	deliver(in, s, type, sizeof(*u) + n * sizeof(u->id[0]), DF_NONE);
}

static void op_getseg(struct in *in, struct slot *s)
{
	uint8_t b = u8(in);
	struct sp_getseg g = { .seg = b < 0xf0 ? b % 3 : b == 0xff ? u32(in) : SP_ZERO_SEG };

	memcpy(msg, &g, sizeof(g));
	deliver(in, s, C_GETSEG, sizeof(g), DF_NONE);
}

/* C_FILL: ids near one the connection got (a gap after its own page),
 * near another's, or any; counts from 0 to past SP_MAX_FILL. */
static void op_fill(struct in *in, struct slot *s)
{
	uint8_t b = u8(in);
	struct sp_fill f = { .n = (u8(in) * 3u) % (SP_MAX_FILL + 8) };

	if (b < 0xc0 && s->nids)
		f.first = s->ids[b % s->nids] + 1 + (b & 7);
	else if (b < 0xf0)
		f.first = b & 0x3f;
	else
		f.first = u32(in);
	memcpy(msg, &f, sizeof(f));
	deliver(in, s, C_FILL, sizeof(f), DF_NONE);
}

static void op_small(struct in *in, struct slot *s, uint16_t type)
{
	uint8_t b = u8(in);
	size_t len;
	int dflt = type == C_FORK || type == C_MARKER ? DF_MARKER : DF_NONE;

	switch (type) {
	case C_STAT: case C_UNMERGE: { /* a pid: none, a connection's, any */
		int32_t pid = b < 0x80 ? 0 : b < 0xf0 ? BASE_PID + b % SLOTS : (int32_t)u32(in);
		memcpy(msg, &pid, sizeof(pid));
		len = sizeof(pid);
		break;
	}
	case C_SET: {
		struct sp_set st = { .knob = b < 0xf0 ? b % (KNOB_COUNT + 1) : u32(in) };
		st.value = num(in);
		memcpy(msg, &st, sizeof(st));
		len = sizeof(st);
		break;
	}
	case C_HINTS: {
		struct sp_hints_req q = { .max = b < 0xf0 ? b : (uint32_t)num(in) };
		memcpy(msg, &q, sizeof(q));
		len = sizeof(q);
		break;
	}
	case C_PIPE: {
		static const uint32_t claim[8] = { 0, 1, 16, 64, 128, 255, 256, 257 };
		struct sp_pipe p = { .pages = b < 0x40 ? claim[b % 8] :
					      b < 0xf0 ? b % 64 + 1u : (uint32_t)num(in) };
		memcpy(msg, &p, sizeof(p));
		len = sizeof(p);
		dflt = p.pages && p.pages <= SP_MAX_CREATE ? (int)p.pages : 1;
		break;
	}
	default: { /* C_FORK, C_MARKER */
		struct sp_fork f = { .pad = b };
		memcpy(msg, &f, sizeof(f));
		len = sizeof(f);
		break;
	}
	}
	deliver(in, s, type, len, dflt);
}

static void tick(int sweep)
{
	/* Held sets are swept at most every 250 ms of real time: forced, so
	 * that an input does the same each run. */
	if (sweep)
		d.last_sweep_ns = 0;
	samepaged_tick(&d);
	drain_all();
}

static void run(struct in *in)
{
	int nconn = u8(in) % SLOTS + 1;

	for (int k = 0; k < nconn; k++)
		connect_slot(k);
	for (int ops = 0; in->n && ops < MAX_OPS; ops++) {
		uint8_t op = u8(in);
		int k = (op >> 5) % SLOTS;
		struct slot *s = &slots[k];
		/* 21..28 repeat the most useful of 1..18. */
		static const uint8_t alias[32] = {
			0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
			1, 2, 3, 4, 5, 15, 17, 18, 32, 30, 31,
		};
		unsigned what = alias[op & 31];

		reap();
		if (trace)
			fprintf(stderr, "op %u on slot %d\n", what, k);
		if (s->cfd < 0 && (what <= 16 || what >= 31)) {
			/* A message for a connection that is gone: connect it anew. */
			connect_slot(k);
			if (s->cfd < 0)
				continue;
		}
		switch (what) {
		case 0: op_raw(in, s); break;
		case 1: op_hello(in, s); break;
		case 2: op_budget(in, s); break;
		case 3: op_lookup(in, s); break;
		case 4: op_create(in, s); break;
		case 5: op_ids(in, s, C_UNREF); break;
		case 6: op_getseg(in, s); break;
		case 7: op_small(in, s, C_FORK); break;
		case 8: op_small(in, s, C_STAT); break;
		case 9: op_small(in, s, C_SET); break;
		case 10: op_small(in, s, C_UNMERGE); break;
		case 11: op_small(in, s, C_PIPE); break;
		case 12: op_small(in, s, C_HINTS); break;
		case 13: op_ids(in, s, C_COW); break;
		case 14: op_small(in, s, C_MARKER); break;
		case 15: op_pages(in, s); break;
		case 16: op_pipe_bytes(in, s); break;
		case 17: tick(0); break;
		case 18: tick(1); break;
		case 19: hang_up(k); break;
		case 20: /* reconnect: hang up if connected, connect */
			hang_up(k);
			connect_slot(k);
			break;
		case 31: op_ids(in, s, C_MOVE); break;
		case 32: op_fill(in, s); break;
		case 30: { /* map or unmap a marker */
			struct marker *m = &markers[u8(in) % MARKERS];
			if (m->map) {
				munmap(m->map, SP_PAGE);
				m->map = NULL;
			} else {
				map_marker(m);
			}
			break;
		}
		default: /* the loop's idle housekeeping between two messages */
			tick(u8(in) & 1);
			break;
		}
		check("an operation");
	}
}

/* Close everything; nothing of this input may be left in the daemon. */
static void finish(void)
{
	for (int k = 0; k < SLOTS; k++)
		hang_up(k);
	/* Parked connections are only read by the tick (their hello is
	 * answered then, and fails: the peer is gone). */
	for (int round = 0; d.conns && round < 8; round++) {
		tick(0);
		for (struct conn *c = d.conns; c;) {
			struct conn *next = c->next;
			if (!c->parked)
				samepaged_serve(&d, c);
			c = next;
		}
	}
	if (d.conns)
		die("connections left after every client hung up");
	for (int i = 0; i < MARKERS; i++)
		if (markers[i].map) {
			munmap(markers[i].map, SP_PAGE);
			markers[i].map = NULL;
		}
	tick(1); /* nobody maps a marker now: every held set goes */
	check("the end");
	if (d.held || d.nparked)
		die("held sets or parked connections left: held %p parked %u", (void *)d.held,
		    d.nparked);
	if (d.total_refs || d.shared || d.sharing || d.written)
		die("references left: total %llu shared %llu sharing %llu written %llu",
		    (unsigned long long)d.total_refs, (unsigned long long)d.shared,
		    (unsigned long long)d.sharing, (unsigned long long)d.written);
	if (d.pool.pages_used || d.pool.segs_live || d.ix.nheads || d.ix.chains || d.ix.dups)
		die("pool not empty: %llu pages, %u segments, %zu stable heads",
		    (unsigned long long)d.pool.pages_used, d.pool.segs_live, d.ix.nheads);
	for (int i = 0; i < MARKERS; i++)
		close_fd(&markers[i].fd);
	for (int k = 0; k < SLOTS; k++)
		close_fd(&slots[k].pipe_w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* A pipe whose read end the daemon closed must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	skip_known = getenv("DAEMON_MSG_SKIP_KNOWN") && *getenv("DAEMON_MSG_SKIP_KNOWN") == '1';
	trace = getenv("DAEMON_MSG_TRACE") && *getenv("DAEMON_MSG_TRACE") == '1';
	for (int i = 0; i < PATTERNS; i++)
		fill_pattern(i);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	int fds0 = count_fds();
	int64_t mapped0 = mapped_bytes;
	int err;

	/* A fresh daemon per input: every input is a conversation of its own,
	 * and a leak shows as the difference. */
	err = samepaged_init(&d);
	if (err)
		die("samepaged_init: %d", err);
	d.instance = INSTANCE;
	fds_made = conns_made = 0;
	for (int k = 0; k < SLOTS; k++)
		slots[k] = (struct slot){ .cfd = -1, .pipe_w = -1 };
	for (int i = 0; i < MARKERS; i++)
		markers[i] = (struct marker){ .fd = -1 };
	fill_pattern(LITERAL); /* what an earlier input put there is gone */

	run(&in);
	finish();
	samepaged_fini(&d);
	if (count_fds() != fds0)
		die("descriptors leaked: %d before, %d after", fds0, count_fds());
	if (mapped_bytes != mapped0)
		die("daemon mappings leaked: %lld bytes", (long long)(mapped_bytes - mapped0));
	return 0;
}
