/* SPDX-License-Identifier: MIT */
/*
 * Merge domains: processes of one user in different domains never merge.
 *
 * Five processes hold the same 8 MiB (N pages): A1 and A2 in domain "red"
 * (samepage_set_domain() before madvise), B1 and B2 in "blue", C in the
 * user's default domain. Proved with page frames (pagemap) and mappings:
 *  - A1 and A2 end up on one frame per page, so do B1 and B2; no frame is
 *    shared by two processes of different domains (frames counted for
 *    every pair); no page of C's becomes a pool page (it has nobody to
 *    merge with); red's pool pages and blue's are in different pool
 *    segments (the inodes of their /memfd:samepage-pool mappings);
 *  - samepage_set_domain(): a name of 256 bytes or more is -EINVAL (255
 *    is fine); after the process merged, or only connected (samepage_stat),
 *    -EBUSY, and the domain stays what it was (B1, refused after it
 *    connected, merges with blue; A1's fork child, forked after A1 was
 *    refused, with red);
 *  - the domain is inherited: a fork child of A1 cannot leave it (-EBUSY)
 *    and its new memory of the same content merges with red only; A2 execs
 *    this program with an environment saying SAMEPAGE_DOMAIN=blue, and the
 *    new image sees SAMEPAGE_DOMAIN=red and merges with red only;
 *    `samepage run --domain red -- plain_merge` merges with red only, and
 *    `samepage run -- plain_merge` with C only;
 *  - on the wire: a connection that said C_HELLO in domain blue, or in the
 *    default one, asking C_GETSEG for red's segment gets D_ACK -EACCES; a
 *    red connection gets the descriptor (the file A1 and A2 map) once it
 *    holds a page of it (a lookup of the content), and -EACCES before;
 *  - the side channel: attacker X (default domain) holds T, which victim V
 *    (default) holds too, R, which victim W (domain red) holds, and U,
 *    which nobody else holds. X's T pages become pool pages, and a write to
 *    one takes a copy-on-write fault; X's R pages never become pool pages
 *    and share no frame with W's while W holds them, so writing them costs
 *    what writing U costs: across domains there is nothing to time. The
 *    pagemap facts are asserted; the write times are only printed (this
 *    machine is shared and noisy).
 *
 * Every check is made and each failure reported before the exit status
 * says FAIL. The file also builds against the library before merge domains
 * (samepage_set_domain is weak, the C_HELLO domain needs SP_PROTO_VERSION
 * 2), so that it can be shown to fail there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "samepage.h"
#include "testutil.h"

/* sp_send()/sp_recv()/sp_domain_id() are internal to libsamepage (hidden):
 * the raw-protocol part uses this copy of the very same source (and of
 * num.c, which its knob parsing calls). */
#include "num.c"
#include "proto.c"

/* Weak: before merge domains the library has no such call. */
int samepage_set_domain(const char *name) __attribute__((weak, visibility("default")));

#define N 2048u        /* pages of the shared content S */
#define SEED_S 42
#define NT 256u        /* pages per block of the side-channel processes */
#define SEED_T 61      /* X and V (both default) */
#define SEED_R 62      /* X (default) and W (red) */
#define SEED_U 63      /* X alone */
#define SLACK 8        /* pages a merge may still lack when counted */
#define MSG_LEN 320    /* what went wrong in a process, as text */

static int failures;

static int set_domain(const char *name)
{
	return samepage_set_domain ? samepage_set_domain(name) : -ENOSYS;
}

/* ---- the processes ---- */

enum { P_NONE, P_NAMES, P_CONNECTED };

struct spec {
	const char *domain;   /* samepage_set_domain() before madvise, or NULL */
	int probe;            /* P_NAMES: name lengths first; P_CONNECTED: stat first */
	uint32_t pages;       /* per block */
	int nblocks;
	uint64_t seed[3];     /* block b holds tu_fill(seed[b]) */
};

/* What a process says when its memory is mergeable. */
struct hi {
	pid_t pid;
	uintptr_t addr;
	char domain_env[72];  /* its SAMEPAGE_DOMAIN */
	char msg[MSG_LEN];    /* what went wrong in it, or "" */
};

struct timing {
	uint64_t p10[3], med[3], p90[3]; /* ns per first write of a page, per block */
};

struct state {
	unsigned char *p, *ref;
	size_t len;
	const struct spec *s;
	pid_t kid;            /* fork child (A1's) */
	int kid_wr;
};

static void note(char *msg, const char *fmt, ...)
{
	size_t n = strlen(msg);
	va_list ap;

	if (n + 2 >= MSG_LEN)
		return;
	if (n) {
		msg[n++] = ';';
		msg[n++] = ' ';
	}
	va_start(ap, fmt);
	vsnprintf(msg + n, MSG_LEN - n, fmt, ap);
	va_end(ap);
}

static void want_err(char *msg, int got, int want, const char *what)
{
	if (got != want)
		note(msg, "%s returned %d (%s), want %d", what, got, strerror(-got), want);
}

static unsigned char *make(const struct spec *s, unsigned char **ref, size_t *len)
{
	unsigned char *p;

	*len = (size_t)s->pages * s->nblocks * PAGE;
	p = tu_map(*len);
	*ref = malloc(*len);
	TU_CHECK(*ref, "malloc");
	for (int b = 0; b < s->nblocks; b++)
		tu_fill(p + (size_t)b * s->pages * PAGE, (size_t)s->pages * PAGE, s->seed[b]);
	memcpy(*ref, p, *len);
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The first write to each page of every block, pages of the blocks taken
 * in turn so that drift hits all alike. */
static void time_writes(struct state *st, struct timing *t)
{
	uint32_t n = st->s->pages;
	uint64_t *ns = malloc(sizeof(uint64_t) * n * 3);

	TU_CHECK(ns, "malloc");
	for (uint32_t i = 0; i < n; i++)
		for (int b = 0; b < st->s->nblocks && b < 3; b++) {
			size_t off = ((size_t)b * n + i) * PAGE + 64;
			volatile unsigned char *q = st->p + off;
			uint64_t t0 = now_ns();
			*q ^= 1;
			ns[(size_t)b * n + i] = now_ns() - t0;
			st->ref[off] ^= 1;
		}
	memset(t, 0, sizeof(*t));
	for (int b = 0; b < st->s->nblocks && b < 3; b++) {
		uint64_t *v = ns + (size_t)b * n;
		qsort(v, n, sizeof(*v), tu_cmp_u64);
		t->p10[b] = v[n / 10];
		t->med[b] = v[n / 2];
		t->p90[b] = v[n * 9 / 10];
	}
	free(ns);
}

static void fork_kid(struct state *st, int wr)
{
	int kp[2];

	TU_CHECK(pipe(kp) == 0, "pipe");
	st->kid = fork();
	TU_CHECK(st->kid >= 0, "fork: %m");
	if (st->kid == 0) {
		struct hi h = { .pid = getpid() };
		unsigned char *q, *qref;
		size_t len;
		char c;
		close(kp[1]);
		want_err(h.msg, set_domain("blue"), -EBUSY,
			 "samepage_set_domain(\"blue\") in a fork child of a merged red process");
		q = make(st->s, &qref, &len);
		if (madvise(q, len, MADV_MERGEABLE))
			note(h.msg, "fork child: madvise: %s", strerror(errno));
		h.addr = (uintptr_t)q;
		if (tu_send(wr, &h, sizeof(h)))
			_exit(3);
		while (read(kp[0], &c, 1) > 0)
			;
		_exit(memcmp(q, qref, len) || memcmp(st->p, st->ref, st->len) ? 1 : 0);
	}
	close(kp[0]);
	st->kid_wr = kp[1];
}

/* Re-exec this program as the same process, with an environment that
 * names the daemon and another domain (blue): the image to come must be
 * red all the same. */
static void exec_self(int rd, int wr, const struct spec *s)
{
	static const char *const keep[] = { "SAMEPAGE_SOCKET=", "SAMEPAGE_DAEMON=",
					    "ASAN_OPTIONS=", "UBSAN_OPTIONS=", "TSAN_OPTIONS=" };
	char a_rd[16], a_wr[16], a_pages[16], a_seed[24];
	char *argv[] = { "domains", "exec-child", a_rd, a_wr, a_pages, a_seed, NULL };
	char *envp[8];
	extern char **environ;
	int n = 0;

	snprintf(a_rd, sizeof(a_rd), "%d", rd);
	snprintf(a_wr, sizeof(a_wr), "%d", wr);
	snprintf(a_pages, sizeof(a_pages), "%u", s->pages);
	snprintf(a_seed, sizeof(a_seed), "%llu", (unsigned long long)s->seed[0]);
	envp[n++] = "SAMEPAGE_DOMAIN=blue";
	for (char **e = environ; *e; e++)
		for (unsigned k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
			if (!strncmp(*e, keep[k], strlen(keep[k])))
				envp[n++] = *e;
	envp[n] = NULL;
	execve("/proc/self/exe", argv, envp);
	_exit(3);
}

/* Commands from the test: v verify (reply: ok), b try leaving the domain
 * (reply: message), f fork a child (the child replies a hi), k end it
 * (reply: its exit status), x exec (the new image replies a hi), t time
 * writes (reply: struct timing), q quit. */
static int serve(int rd, int wr, struct state *st)
{
	char cmd;

	while (tu_recv(rd, &cmd, 1) == 0) {
		char msg[MSG_LEN] = "";
		struct timing t;
		int ok, status;
		switch (cmd) {
		case 'v':
			ok = !memcmp(st->p, st->ref, st->len);
			tu_send(wr, &ok, sizeof(ok));
			break;
		case 'b':
			want_err(msg, set_domain("green"), -EBUSY,
				 "samepage_set_domain(\"green\") after merging");
			want_err(msg, set_domain(NULL), -EBUSY,
				 "samepage_set_domain(NULL) after merging");
			tu_send(wr, msg, sizeof(msg));
			break;
		case 'f':
			fork_kid(st, wr);
			break;
		case 'k':
			close(st->kid_wr);
			status = -1;
			while (waitpid(st->kid, &status, 0) < 0 && errno == EINTR)
				;
			status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
			tu_send(wr, &status, sizeof(status));
			break;
		case 'x':
			exec_self(rd, wr, st->s);
			break;
		case 't':
			time_writes(st, &t);
			tu_send(wr, &t, sizeof(t));
			break;
		case 'q':
			return 0;
		default:
			return 4;
		}
	}
	return 3;
}

static int holder(int rd, int wr, void *arg)
{
	const struct spec *s = arg;
	struct state st = { .s = s, .kid = -1, .kid_wr = -1 };
	struct hi h = { .pid = getpid() };
	const char *env;

	st.p = make(s, &st.ref, &st.len);
	if (s->probe == P_NAMES) {
		char name[300];
		memset(name, 'n', sizeof(name));
		name[257] = 0;
		want_err(h.msg, set_domain(name), -EINVAL, "samepage_set_domain(257-byte name)");
		name[256] = 0;
		want_err(h.msg, set_domain(name), -EINVAL, "samepage_set_domain(256-byte name)");
		name[255] = 0;
		want_err(h.msg, set_domain(name), 0, "samepage_set_domain(255-byte name)");
	}
	if (s->domain) {
		char what[96];
		snprintf(what, sizeof(what), "samepage_set_domain(\"%s\")", s->domain);
		want_err(h.msg, set_domain(s->domain), 0, what);
	}
	if (s->probe == P_CONNECTED) {
		struct samepage_stat ss;
		want_err(h.msg, samepage_stat(&ss), 0, "samepage_stat");
		want_err(h.msg, set_domain("red"), -EBUSY,
			 "samepage_set_domain(\"red\") after samepage_stat connected");
	}
	if (madvise(st.p, st.len, MADV_MERGEABLE))
		note(h.msg, "madvise: %s", strerror(errno));
	env = getenv("SAMEPAGE_DOMAIN");
	snprintf(h.domain_env, sizeof(h.domain_env), "%s", env ? env : "");
	h.addr = (uintptr_t)st.p;
	tu_send(wr, &h, sizeof(h));
	return serve(rd, wr, &st);
}

/* The image A2 exec'd: argv = domains exec-child RD WR PAGES SEED. */
static int exec_child(char **argv)
{
	int rd = atoi(argv[2]), wr = atoi(argv[3]);
	struct spec s = { .pages = (uint32_t)atoi(argv[4]), .nblocks = 1,
			  .seed = { strtoull(argv[5], NULL, 10) } };
	struct state st = { .s = &s, .kid = -1, .kid_wr = -1 };
	struct hi h = { .pid = getpid() };
	const char *env = getenv("SAMEPAGE_DOMAIN");

	st.p = make(&s, &st.ref, &st.len);
	if (madvise(st.p, st.len, MADV_MERGEABLE))
		note(h.msg, "exec'd image: madvise: %s", strerror(errno));
	snprintf(h.domain_env, sizeof(h.domain_env), "%s", env ? env : "(unset)");
	h.addr = (uintptr_t)st.p;
	tu_send(wr, &h, sizeof(h));
	return serve(rd, wr, &st);
}

/* ---- looking at them ---- */

struct proc {
	const char *name;
	const char *domain;   /* its label here: "red", "blue", "default" */
	struct tu_child c;
	pid_t pid;
	uintptr_t addr;
};

static void start(struct proc *p, const char *name, const char *domain, const struct spec *s)
{
	struct hi h;

	p->name = name;
	p->domain = domain;
	tu_spawn(&p->c, holder, (void *)s);
	TU_CHECK(tu_recv(p->c.rd, &h, sizeof(h)) == 0, "%s died at start", name);
	TU_EXPECT(&failures, !h.msg[0], "%s: %s", name, h.msg);
	p->pid = h.pid;
	p->addr = h.addr;
}

/* Distinct frames of n pages at a's offset oa and b's offset ob (pages). */
static size_t pair_frames(const struct proc *a, size_t oa, const struct proc *b, size_t ob,
			  size_t n)
{
	pid_t pids[2] = { a->pid, b->pid };
	uintptr_t addrs[2] = { a->addr + oa * PAGE, b->addr + ob * PAGE };

	return tu_frames(pids, addrs, 2, n);
}

/* Pages of a's and b's that are on a frame in common. */
static size_t pair_shared(const struct proc *a, size_t oa, const struct proc *b, size_t ob,
			  size_t n)
{
	return tu_present(a->pid, a->addr + oa * PAGE, n) + tu_present(b->pid, b->addr + ob * PAGE, n) -
	       pair_frames(a, oa, b, ob, n);
}

struct pair { const struct proc *a, *b; size_t oa, ob, n; };

static int pair_merged(void *arg)
{
	const struct pair *p = arg;

	return pair_frames(p->a, p->oa, p->b, p->ob, p->n) <= p->n + SLACK;
}

/* Wait until a and b share (nearly) every frame of n pages. */
static void wait_merged(const struct proc *a, size_t oa, const struct proc *b, size_t ob,
			size_t n, int secs)
{
	struct pair p = { a, b, oa, ob, n };

	TU_EXPECT(&failures, tu_wait(pair_merged, &p, secs),
		  "%s and %s (both %s) not merged after %d s: %zu frames for %zu pages", a->name,
		  b->name, a->domain, secs, pair_frames(a, oa, b, ob, n), n);
}

/* a and b (different domains) share no frame at all. */
static void expect_apart(const struct proc *a, size_t oa, const struct proc *b, size_t ob,
			 size_t n)
{
	size_t shared = pair_shared(a, oa, b, ob, n);

	TU_EXPECT(&failures, shared == 0, "%s (%s) and %s (%s) share frames: %zu of %zu pages",
		  a->name, a->domain, b->name, b->domain, shared, n);
}

/* k more full scans: every scanning process completed a pass that began
 * after now, so equal pages anywhere would have met in the indexes. */
static void wait_scans(int k, const char *when)
{
	struct tu_counter want = { "full_scans", tu_status("full_scans") + k };

	TU_CHECK(want.at_least >= k, "samepage status --json: no full_scans");
	TU_CHECK(tu_wait(tu_counter_reached, &want, 20),
		 "%s: full_scans stuck below %lld for 20 s", when, want.at_least);
}

static void verify(struct proc *p)
{
	int ok = 0;

	TU_CHECK(tu_send(p->c.wr, "v", 1) == 0 && tu_recv(p->c.rd, &ok, sizeof(ok)) == 0,
		 "%s died", p->name);
	TU_EXPECT(&failures, ok, "%s's memory changed", p->name);
}

static int disjoint(const unsigned long *a, int na, const unsigned long *b, int nb)
{
	for (int i = 0; i < na; i++)
		for (int j = 0; j < nb; j++)
			if (a[i] == b[j])
				return 0;
	return 1;
}

/* ---- the wire ---- */

#define MAXSEG 64

/* A raw connection that said C_HELLO in domain name (NULL: the default). */
static int raw_hello(const char *name)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = 3 };
	static unsigned char buf[SP_MAX_MSG];
	struct sp_msg m;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

#if SP_PROTO_VERSION >= 2
	h.domain = sp_domain_id(name);
#else
	(void)name; /* before merge domains, a connection had none to say */
#endif
	TU_CHECK(fd >= 0, "socket: %m");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", getenv("SAMEPAGE_SOCKET"));
	TU_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %m");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	TU_CHECK(sp_send(fd, C_HELLO, &h, sizeof(h), -1) == 0, "send C_HELLO");
	TU_CHECK(sp_recv(fd, buf, &m) == 0 && m.h.type == D_HELLO, "no D_HELLO");
	return fd;
}

/* C_GETSEG seg: the segment's inode (> 0), or the D_ACK's error (< 0). */
static long long raw_getseg(int fd, uint32_t seg)
{
	static unsigned char buf[SP_MAX_MSG];
	struct sp_getseg g = { .seg = seg };
	struct sp_msg m;
	struct stat sb;
	int err;

	TU_CHECK(sp_send(fd, C_GETSEG, &g, sizeof(g), -1) == 0, "send C_GETSEG");
	err = sp_recv(fd, buf, &m);
	TU_CHECK(!err, "C_GETSEG %u: no reply (%s)", seg, strerror(-err));
	if (m.h.type == D_ACK) {
		struct sp_ack a;
		TU_CHECK(m.h.len == sizeof(a), "D_ACK of %u bytes", m.h.len);
		memcpy(&a, m.p, sizeof(a));
		TU_CHECK(m.fd < 0 && a.err < 0, "C_GETSEG %u: D_ACK %d", seg, a.err);
		return a.err;
	}
	TU_CHECK(m.h.type == D_SEG && m.fd >= 0, "C_GETSEG %u: reply type %u", seg, m.h.type);
	TU_CHECK(fstat(m.fd, &sb) == 0, "fstat");
	close(m.fd);
	return (long long)sb.st_ino;
}

/* The segment whose inode is among ino[0..n), asked on fd; -1 if none. */
/* A page of the shared content S, looked up on fd: the daemon hands a
 * segment only to a connection that holds a page of it. */
static void raw_lookup_s(int fd)
{
	static unsigned char page[PAGE], buf[SP_MAX_MSG];
	struct { struct sp_lookup l; struct sp_lookup_ent e; } lk = { { .n = 1 }, { .hash = 0, .addr = 0x5000 } };
	struct sp_msg m;

	tu_fill(page, PAGE, SEED_S);
	lk.e.hash = XXH3_64bits(page, PAGE);
	TU_CHECK(sp_send(fd, C_LOOKUP, &lk, sizeof(lk), -1) == 0, "send C_LOOKUP");
	TU_CHECK(sp_recv(fd, buf, &m) == 0 && m.h.type == D_LOOKUP, "no D_LOOKUP");
}

static int find_seg(int fd, const unsigned long *ino, int n)
{
	raw_lookup_s(fd);
	for (uint32_t s = 0; s < MAXSEG; s++) {
		long long r = raw_getseg(fd, s);
		for (int i = 0; r > 0 && i < n; i++)
			if ((unsigned long long)r == ino[i])
				return (int)s;
	}
	return -1;
}

/* ---- `samepage run` ---- */

struct run { struct proc p; int in, out; };

#if !defined(__SANITIZE_THREAD__) /* (a TSan-built library cannot be preloaded) */
static int read_line(int fd, char *buf, size_t len, int secs)
{
	size_t got = 0;
	double end = tu_now() + secs;

	while (got + 1 < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int left = (int)((end - tu_now()) * 1000);
		if (left <= 0 || poll(&p, 1, left) <= 0 || read(fd, buf + got, 1) != 1)
			return -1;
		if (buf[got] == '\n')
			break;
		got++;
	}
	buf[got] = 0;
	return 0;
}

/* `samepage run [--domain D] -- plain_merge madvise MIB SEED_S`, the
 * content of S: 0, or -1 (a failed check) when it did not start. */
static int run_plain(struct run *r, const char *name, const char *label, const char *domain)
{
	char prog[4200], mib[16], line[128];
	int in[2], out[2], pid;
	ssize_t n = readlink("/proc/self/exe", prog, sizeof(prog) - 64);

	TU_CHECK(n > 0, "readlink");
	prog[n] = 0;
	*strrchr(prog, '/') = 0; /* build/tests/integration */
	*strrchr(prog, '/') = 0; /* build/tests */
	strcat(prog, "/progs/plain_merge");
	snprintf(mib, sizeof(mib), "%u", N * PAGE >> 20);
	TU_CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0, "pipe");
	r->p.name = name;
	r->p.domain = label;
	r->p.pid = fork();
	TU_CHECK(r->p.pid >= 0, "fork");
	if (r->p.pid == 0) {
		const char *argv[12];
		int k = 0;
		dup2(in[0], 0);
		dup2(out[1], 1);
		argv[k++] = tu_bin("samepage");
		argv[k++] = "run";
		if (domain) {
			argv[k++] = "--domain";
			argv[k++] = domain;
		}
		argv[k++] = "--";
		argv[k++] = prog;
		argv[k++] = "madvise";
		argv[k++] = mib;
		argv[k++] = "42";
		argv[k] = NULL;
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	r->in = in[1];
	r->out = out[0];
	if (read_line(r->out, line, sizeof(line), 10) ||
	    sscanf(line, "%d %lx", &pid, (unsigned long *)&r->p.addr) != 2 || pid != r->p.pid) {
		TU_SOFT_FAIL(&failures, "`samepage run %s%s -- plain_merge` did not start",
			     domain ? "--domain " : "", domain ? domain : "");
		kill(r->p.pid, SIGKILL);
		waitpid(r->p.pid, NULL, 0);
		close(r->in);
		close(r->out);
		return -1;
	}
	return 0;
}

#endif

static void run_finish(struct run *r)
{
	int st = -1;

	if (write(r->in, "go\n", 3) != 3) {
		/* it died: the status says so */
	}
	close(r->in);
	close(r->out);
	waitpid(r->p.pid, &st, 0);
	TU_EXPECT(&failures, WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "%s exited with status %#x (1: its data changed)", r->p.name, st);
}

/* ---- all pairs ---- */

/* Every pair of them: one domain, merged; two, no frame in common and no
 * pool segment in common. */
static void check_pairs(struct proc **ps, int n)
{
	unsigned long ino[16][16];
	int nino[16];

	for (int i = 0; i < n; i++) {
		nino[i] = tu_pool_inodes(ps[i]->pid, ino[i], 16);
		TU_CHECK(nino[i] >= 0, "%s: no /proc/PID/maps", ps[i]->name);
	}
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++) {
			if (!strcmp(ps[i]->domain, ps[j]->domain)) {
				TU_EXPECT(&failures,
					  pair_merged(&(struct pair){ ps[i], ps[j], 0, 0, N }),
					  "%s and %s (both %s) not merged: %zu frames for %u pages",
					  ps[i]->name, ps[j]->name, ps[i]->domain,
					  pair_frames(ps[i], 0, ps[j], 0, N), N);
				continue;
			}
			expect_apart(ps[i], 0, ps[j], 0, N);
			TU_EXPECT(&failures, disjoint(ino[i], nino[i], ino[j], nino[j]),
				  "%s (%s) and %s (%s) map the same pool segment", ps[i]->name,
				  ps[i]->domain, ps[j]->name, ps[j]->domain);
		}
}

static void print_pairs(struct proc **ps, int n)
{
	printf("pages on a frame in common (of %u):\n%-9s", N, "");
	for (int j = 1; j < n; j++)
		printf(" %-9.9s", ps[j]->name);
	printf("\n");
	for (int i = 0; i < n - 1; i++) {
		printf("%-9s", ps[i]->name);
		for (int j = 1; j < n; j++)
			if (j <= i)
				printf(" %-9s", "");
			else
				printf(" %-9zu", pair_shared(ps[i], 0, ps[j], 0, N));
		printf("\n");
	}
}

/* ---- main ---- */

int main(int argc, char **argv)
{
	static const struct spec red_names = { "red", P_NAMES, N, 1, { SEED_S } };
	static const struct spec red = { "red", P_NONE, N, 1, { SEED_S } };
	static const struct spec blue_conn = { "blue", P_CONNECTED, N, 1, { SEED_S } };
	static const struct spec blue = { "blue", P_NONE, N, 1, { SEED_S } };
	static const struct spec dflt = { NULL, P_NONE, N, 1, { SEED_S } };
	static const struct spec victim_t = { NULL, P_NONE, NT, 1, { SEED_T } };
	static const struct spec victim_r = { "red", P_NONE, NT, 1, { SEED_R } };
	static const struct spec attacker = { NULL, P_NONE, NT, 3, { SEED_T, SEED_R, SEED_U } };
	struct proc A1, A2, B1, B2, C, V, W, X, K;
	struct proc *five[] = { &A1, &A2, &B1, &B2, &C };
	struct run rr = { 0 }, rd = { 0 };
	int ok_rr = 0, ok_rd = 0;
	struct hi h;
	char msg[MSG_LEN];
	double t0, t1;

	if (argc == 6 && !strcmp(argv[1], "exec-child"))
		return exec_child(argv);
#if defined(__SANITIZE_THREAD__)
	/* A1's fork child starts a scanner thread after a multi-threaded fork. */
	if (!getenv("TSAN_OPTIONS") || !strstr(getenv("TSAN_OPTIONS"), "die_after_fork=0")) {
		char opts[1024];
		snprintf(opts, sizeof(opts), "%s%sdie_after_fork=0",
			 getenv("TSAN_OPTIONS") ? getenv("TSAN_OPTIONS") : "",
			 getenv("TSAN_OPTIONS") ? ":" : "");
		setenv("TSAN_OPTIONS", opts, 1);
		execv("/proc/self/exe", argv);
		TU_FAIL("re-exec with TSAN_OPTIONS=%s: %m", opts);
	}
#endif
	setvbuf(stdout, NULL, _IOLBF, 0); /* nothing pending when we fork */
	tu_require_merging();
	tu_private_daemon();
	alarm(120);
	signal(SIGPIPE, SIG_IGN);
	if (!samepage_set_domain)
		printf("this library has no samepage_set_domain(): no merge domains\n");

	/* ---- five processes, three domains, one content ---- */
	t0 = tu_now();
	start(&A1, "A1", "red", &red_names);
	start(&A2, "A2", "red", &red);
	start(&B1, "B1", "blue", &blue_conn);
	start(&B2, "B2", "blue", &blue);
	start(&C, "C", "default", &dflt);
	/* and the side channel's: victims V (default) and W (red), attacker X */
	start(&V, "V", "default", &victim_t);
	start(&W, "W", "red", &victim_r);
	start(&X, "X", "default", &attacker);
	wait_merged(&A1, 0, &A2, 0, N, 30);
	wait_merged(&B1, 0, &B2, 0, N, 30);
	printf("red (A1, A2) and blue (B1, B2) merged %u pages each within %.2f s\n", N,
	       tu_now() - t0);
	/* Time for C's pages to meet red's and blue's, were they to. */
	wait_scans(2, "after red and blue merged");
	print_pairs(five, 5);
	check_pairs(five, 5);
	TU_EXPECT(&failures,
		  tu_file_pages(C.pid, C.addr, N) == 0 && tu_pool_vmas(C.pid, 0, UINTPTR_MAX) == 0,
		  "C (default, alone there) maps %zu pool pages in %d VMAs",
		  tu_file_pages(C.pid, C.addr, N), tu_pool_vmas(C.pid, 0, UINTPTR_MAX));
	{
		unsigned long ia[16], ib[16];
		int na = tu_pool_inodes(A1.pid, ia, 16), nb = tu_pool_inodes(B1.pid, ib, 16);
		TU_CHECK(na > 0 && nb > 0, "A1 maps %d pool segments, B1 %d", na, nb);
		printf("pool segments (inodes): red %lu%s, blue %lu%s\n", ia[0], na > 1 ? " ..." : "",
		       ib[0], nb > 1 ? " ..." : "");

		/* ---- samepage_set_domain() once merged: -EBUSY ---- */
		for (int i = 0; i < 4; i++) {
			TU_CHECK(tu_send(five[i]->c.wr, "b", 1) == 0 &&
				 tu_recv(five[i]->c.rd, msg, sizeof(msg)) == 0, "%s died",
				 five[i]->name);
			TU_EXPECT(&failures, !msg[0], "%s: %s", five[i]->name, msg);
		}

		/* ---- the wire: C_GETSEG of red's segment ---- */
		int fr = raw_hello("red"), fb = raw_hello("blue"), fd = raw_hello(NULL);
		/* Before it holds a page of it, not even red gets red's segment. */
		for (uint32_t sg = 0; sg < 4; sg++)
			TU_EXPECT(&failures, raw_getseg(fr, sg) <= 0,
				  "a red connection holding nothing got segment %u", sg);
		int rseg = find_seg(fr, ia, na), bseg = find_seg(fb, ib, nb);
		long long rb = 0, rdf = 0, br = 0;
		TU_EXPECT(&failures, rseg >= 0, "a red connection got no segment that A1 maps");
		TU_EXPECT(&failures, bseg >= 0, "a blue connection got no segment that B1 maps");
		if (rseg >= 0) {
			rb = raw_getseg(fb, (uint32_t)rseg);
			rdf = raw_getseg(fd, (uint32_t)rseg);
			TU_EXPECT(&failures, rb == -EACCES,
				  "C_GETSEG of red's segment %d from blue: %s", rseg,
				  rb > 0 ? "the descriptor" : strerror((int)-rb));
			TU_EXPECT(&failures, rdf == -EACCES,
				  "C_GETSEG of red's segment %d from the default domain: %s", rseg,
				  rdf > 0 ? "the descriptor" : strerror((int)-rdf));
		}
		if (bseg >= 0) {
			br = raw_getseg(fr, (uint32_t)bseg);
			TU_EXPECT(&failures, br == -EACCES,
				  "C_GETSEG of blue's segment %d from red: %s", bseg,
				  br > 0 ? "the descriptor" : strerror((int)-br));
		}
		printf("C_GETSEG of red's segment %d: from red, the file A1 maps; from blue, %s; from "
		       "default, %s. Of blue's segment %d from red: %s\n", rseg,
		       rb > 0 ? "a descriptor" : strerror((int)-rb),
		       rdf > 0 ? "a descriptor" : strerror((int)-rdf), bseg,
		       br > 0 ? "a descriptor" : strerror((int)-br));
		close(fr);
		close(fb);
		close(fd);
	}

	/* ---- inherited: A1's fork child; A2 exec'd and told blue; samepage run ---- */
	t1 = tu_now();
	TU_CHECK(tu_send(A1.c.wr, "f", 1) == 0 && tu_recv(A1.c.rd, &h, sizeof(h)) == 0,
		 "A1's fork child did not start");
	K = (struct proc){ .name = "A1 fork", .domain = "red", .pid = h.pid, .addr = h.addr };
	TU_EXPECT(&failures, !h.msg[0], "%s", h.msg);
	TU_CHECK(tu_send(A2.c.wr, "x", 1) == 0 && tu_recv(A2.c.rd, &h, sizeof(h)) == 0,
		 "A2's new image did not start");
	TU_EXPECT(&failures, h.pid == A2.pid, "exec changed the pid");
	A2.name = "A2 exec";
	A2.addr = h.addr;
	TU_EXPECT(&failures, !h.msg[0], "%s", h.msg);
	TU_EXPECT(&failures, !strcmp(h.domain_env, "red"),
		  "A2 exec'd with SAMEPAGE_DOMAIN=blue; the new image has SAMEPAGE_DOMAIN=%s",
		  h.domain_env);
	printf("A2 exec'd itself with SAMEPAGE_DOMAIN=blue; the new image has "
	       "SAMEPAGE_DOMAIN=%s\n", h.domain_env);
#if defined(__SANITIZE_THREAD__)
	/* ThreadSanitizer's runtime cannot be preloaded into plain_merge. */
	printf("samepage run: skipped under ThreadSanitizer\n");
#else
	ok_rr = run_plain(&rr, "run red", "red", "red") == 0;
	ok_rd = run_plain(&rd, "run dflt", "default", NULL) == 0;
#endif
	wait_merged(&A1, 0, &K, 0, N, 20);
	wait_merged(&A1, 0, &A2, 0, N, 20);
	if (ok_rr)
		wait_merged(&A1, 0, &rr.p, 0, N, 20);
	if (ok_rd)
		wait_merged(&C, 0, &rd.p, 0, N, 20);
	printf("A1's fork child, A2's new image%s merged within %.2f s\n",
	       ok_rr ? ", `samepage run --domain red` (with red) and `samepage run` (with C)" : "",
	       tu_now() - t1);
	wait_scans(2, "after the fork child, the new image and samepage run merged");
	{
		struct proc *all[] = { &A1, &A2, &K, &rr.p, &B1, &B2, &C, &rd.p };
		struct proc *ps[8];
		int n = 0;
		for (int i = 0; i < 8; i++)
			if ((all[i] != &rr.p || ok_rr) && (all[i] != &rd.p || ok_rd))
				ps[n++] = all[i];
		print_pairs(ps, n);
		check_pairs(ps, n);
	}
	if (ok_rr)
		run_finish(&rr);
	if (ok_rd)
		run_finish(&rd);

	/* ---- the side channel ---- */
	{
		struct proc Xr = X;
		struct timing t;
		size_t t_file, r_file, t_after;
		Xr.name = "X's R";
		wait_merged(&X, 0, &V, 0, NT, 20);
		t_file = tu_file_pages(X.pid, X.addr, NT);
		r_file = tu_file_pages(X.pid, X.addr + (size_t)NT * PAGE, NT);
		TU_EXPECT(&failures, t_file == NT,
			  "X's T: %zu of %u pages pool pages (V, default, holds T)", t_file, NT);
		TU_EXPECT(&failures, r_file == 0,
			  "X's R: %zu of %u pages pool pages, though only W (red) holds R", r_file,
			  NT);
		expect_apart(&Xr, 1 * NT, &W, 0, NT);
		TU_CHECK(tu_send(X.c.wr, "t", 1) == 0 && tu_recv(X.c.rd, &t, sizeof(t)) == 0,
			 "X died");
		t_after = tu_file_pages(X.pid, X.addr, NT);
		TU_EXPECT(&failures, t_after == 0, "X wrote T: %zu of %u pages still pool pages",
			  t_after, NT);
		printf("X's first write to a page, ns (p10 / median / p90), %u pages each:\n", NT);
		printf("  T, merged with V (default): %6llu / %6llu / %6llu  (copy-on-write fault)\n",
		       (unsigned long long)t.p10[0], (unsigned long long)t.med[0],
		       (unsigned long long)t.p90[0]);
		printf("  R, also held by W (red):    %6llu / %6llu / %6llu\n",
		       (unsigned long long)t.p10[1], (unsigned long long)t.med[1],
		       (unsigned long long)t.p90[1]);
		printf("  U, nobody else's:           %6llu / %6llu / %6llu\n",
		       (unsigned long long)t.p10[2], (unsigned long long)t.med[2],
		       (unsigned long long)t.p90[2]);
		printf("  X's pool pages before the writes: T %zu, R %zu of %u; after: T %zu\n", t_file,
		       r_file, NT, t_after);
	}

	/* ---- every byte intact; everyone gone (at once: a TSan-built
	 * process sleeps a second on its way out) ---- */
	struct proc *every[] = { &A1, &A2, &B1, &B2, &C, &V, &W, &X };
	int n_every = (int)(sizeof(every) / sizeof(every[0])), kid_st = -1;
	TU_CHECK(tu_send(A1.c.wr, "k", 1) == 0, "A1 died");
	for (int i = 1; i < n_every; i++)
		verify(every[i]);
	TU_CHECK(tu_recv(A1.c.rd, &kid_st, sizeof(kid_st)) == 0, "A1 died");
	TU_EXPECT(&failures, kid_st == 0, "A1's fork child exited with %d (1: its memory changed)",
		  kid_st);
	verify(&A1);
	for (int i = 0; i < n_every; i++)
		tu_send(every[i]->c.wr, "q", 1);
	for (int i = 0; i < n_every; i++)
		TU_EXPECT(&failures, tu_reap(&every[i]->c) == 0, "%s did not exit cleanly",
			  every[i]->name);
	printf("domains: %s, %d failed checks (%.1f s)\n", failures ? "FAIL" : "ok", failures,
	       tu_now() - t0);
	return failures ? 1 : 0;
}
