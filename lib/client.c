/* SPDX-License-Identifier: MIT */
/*
 * client — libsamepage's side of the daemon connection: connecting (and
 * starting the user's daemon when none answers), request/reply calls that
 * never give a slow daemon up for dead, the ordered queue of messages that
 * need no reply, the fork hand-over, and the pool segments this process
 * maps.
 *
 * A daemon may stall for any time (SIGSTOP, the cgroup freezer, a
 * debugger, a suspended VM). Only the connection closing says it is gone,
 * and even then the daemon may be alive (it closed us): the next D_HELLO
 * says whether our references still live there (same instance: the
 * daemon kept them, since we still map our marker) or died with it.
 */
#define _GNU_SOURCE
#include "lib.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/sockios.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "env.h"
#include "fault.h"
#include "path.h"

enum { OUT_UNREF, OUT_COW };

/* A waiting application thread makes the scanner give way this soon. */
#define YIELD_MS 20
/* A C_FORK that cannot be queued (the daemon stalled with a full socket
 * buffer) is waited for this long, then the child detaches instead. */
#define FORK_SEND_MS 50

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* SAMEPAGE_FAULT=connect: the daemon is unreachable. The scanner dials
 * too: what was inherited (env.h). */
static int dial(const char *path)
{
	return fault_inject_inherited("connect") ? -ECONNREFUSED : sp_dial(path, 0, 1);
}

/* samepaged beside us: $SAMEPAGE_DAEMON, else ../bin/samepaged relative to
 * this library (build tree and install prefix alike), else $PATH. */
static void daemon_path(char *buf, size_t len)
{
	const char *env = sp_env_inherited("SAMEPAGE_DAEMON");
	Dl_info info;

	if (env && *env) {
		snprintf(buf, len, "%s", env);
		return;
	}
	if (dladdr((void *)daemon_path, &info) && info.dli_fname && strchr(info.dli_fname, '/')) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s", info.dli_fname);
		*strrchr(dir, '/') = 0;
		snprintf(buf, len, "%s/../bin/samepaged", dir);
		if (access(buf, X_OK) == 0)
			return;
	}
	snprintf(buf, len, "samepaged");
}

/* The daemon must not run under our preload, or it would scan itself.
 * The environment we inherited: the scanner may be the one spawning, and
 * the program's own may be mid-setenv() on another thread (env.h). */
static void clean_env(char **out, size_t max)
{
	size_t n = 0;

	for (char *const *e = sp_inherited()->environ; e && *e && n + 1 < max; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "SAMEPAGE_MERGE_ANY=", 19))
			out[n++] = *e;
	out[n] = NULL;
}

static int spawn_daemon(struct lib *l)
{
	char path[PATH_MAX];
	char sock[108];
	char *argv[] = { path, "--daemonize", "--socket", sock, NULL };
	char *env[512];
	posix_spawnattr_t at;
	posix_spawn_file_actions_t fa;
	sigset_t none, def;
	pid_t pid;
	int err;

	daemon_path(path, sizeof(path));
	err = sp_socket_path_at(&l->where, sock, sizeof(sock));
	if (err)
		return err;
	clean_env(env, sizeof(env) / sizeof(env[0]));
	/* The scanner thread blocks every signal and the application may
	 * ignore some: the daemon must inherit neither, or SIGTERM misses it. */
	sigemptyset(&none);
	sigfillset(&def);
	posix_spawnattr_init(&at);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &def);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	/* Nor any descriptor of the application's: a pipe end the daemon kept
	 * open for its whole life would keep the application's reader from
	 * ever seeing end of file. */
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	/* libc's, not our wrapper: that would put LD_PRELOAD back. */
	int (*spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
		      const posix_spawnattr_t *, char *const[], char *const[]) =
		(int (*)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			 const posix_spawnattr_t *, char *const[], char *const[]))
			dlsym(RTLD_NEXT, "posix_spawnp");
	err = spawnp ? spawnp(&pid, path, &fa, &at, argv, env) : ENOSYS;
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	if (err)
		return -err;
	/* --daemonize returns once the socket listens (or the daemon failed). */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return 0;
}

/* A connected socket to the user's daemon, started if nobody listens.
 * -EAGAIN: a daemon listens but its backlog is full (alive, busy). */
static int dial_or_spawn(struct lib *l)
{
	char path[108];
	int fd, err = sp_socket_path_at(&l->where, path, sizeof(path));

	if (err)
		return err;
	fd = dial(path);
	if (fd >= 0 || (fd != -ENOENT && fd != -ECONNREFUSED))
		return fd;
	err = spawn_daemon(l);
	if (err)
		return err;
	for (int i = 0; i < 100; i++) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		fd = dial(path);
		if (fd >= 0 || fd == -EAGAIN)
			return fd;
		nanosleep(&ts, NULL);
	}
	return fd;
}

int client_observer(struct lib *l, int timeout_s, void *buf)
{
	char path[108];
	int fd = dial_or_spawn(l), err;

	/* That connection only made sure a daemon listens: an observer says
	 * so in its C_HELLO, on a blocking socket of its own. */
	if (fd < 0)
		return fd;
	raw_close(fd);
	err = sp_socket_path_at(&l->where, path, sizeof(path));
	return err ? err : sp_observe(path, timeout_s, buf);
}

/* Copies: the program may rewrite its environment's strings later. */
static void where_init(struct lib *l)
{
	struct sp_where now;

	sp_where_now(&now);
	l->where.socket = now.socket ? strdup(now.socket) : NULL;
	l->where.xdg = now.xdg ? strdup(now.xdg) : NULL;
}

int client_init(struct lib *l)
{
	struct arena *ar = &l->arena;

	l->sock = -1;
	l->zero_fd = -1;
	l->pipe_wr = -1;
	l->marker_fd = -1;
	l->kid_fd = -1;
	where_init(l);
	for (uint32_t i = 0; i < SP_MAX_SEGS; i++)
		l->segs[i].fd = -1;
	l->msg = arena_alloc(ar, SP_MAX_MSG);
	l->out = arena_alloc(ar, SP_MAX_MSG);
	l->out_id = arena_alloc(ar, OUTBOX_MAX * sizeof(uint32_t));
	l->out_kind = arena_alloc(ar, OUTBOX_MAX);
	return l->msg && l->out && l->out_id && l->out_kind ? 0 : -ENOMEM;
}

/* ---- the connection ---- */

/* The connection is gone (closed by the daemon, or unusable). Replies we
 * waited for will not come; whether our references survive is for the
 * next D_HELLO to say (on_hello). */
static void conn_lost(struct lib *l)
{
	if (l->sock >= 0)
		raw_close(l->sock);
	l->sock = -1;
	l->ready = 0;
	l->nexpect = 0;
	client_forget_pipe(l); /* the daemon's end went with the connection */
}

/* Our references died with the daemon that held them (a new one
 * answers): merged pages stay valid (our mappings keep the old pool files
 * alive, and nothing will ever write them again) but are ordinary memory
 * now, which may merge into the new pool. */
static void refs_died(struct lib *l)
{
	if (l->refs_lost)
		l->refs_lost(l); /* scan.c: entries forget their pool pages */
	if (l->zero_fd >= 0)
		raw_close(l->zero_fd);
	l->zero_fd = -1;
	for (uint32_t s = 0; s < SP_MAX_SEGS; s++) {
		struct segview *v = &l->segs[s];
		if (v->fd >= 0)
			raw_close(v->fd);
		v->fd = -1;
		v->refs = 0;
	}
	l->seg_refs = 0;
	l->out_head = l->nout = 0;
	l->hints_waiting = 0;
	l->kid_reusable = 0;
}

static int send_hello(struct lib *l)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION, .domain = l->domain,
			      .expect_instance = l->instance };
	int err;

	if (l->marker_fd < 0 && (err = os_marker_create(&l->marker_fd, &l->marker_addr)) < 0)
		return err;
	if (l->hello_forked)
		h.flags |= HELLO_FORKED;
	err = sp_sendmsg(l->sock, C_HELLO, &h, sizeof(h), l->marker_fd, MSG_DONTWAIT);
	if (err)
		return err;
	l->expect[l->nexpect++] = (struct expect){ D_HELLO, R_HELLO };
	return 0;
}

/* Open a connection and send C_HELLO; its reply is read with the next. */
static int conn_open(struct lib *l)
{
	int fd = dial_or_spawn(l), sz = 1 << 20, err;
	socklen_t len = sizeof(sz);

	if (fd < 0)
		return fd;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, &len) == 0)
		l->sndbuf = sz;
	l->sock = fd;
	l->ready = 0;
	l->nexpect = 0;
	err = send_hello(l);
	if (err)
		conn_lost(l);
	return err;
}

/* A fork child shares the marker its parent made with its siblings: once
 * the daemon has attached the child's own set, it takes a marker of its
 * own and leaves the shared one, so the siblings' set can go when they
 * do. Best effort: retried until it is sent. */
static void own_marker(struct lib *l)
{
	int fd;
	uintptr_t addr;

	if (!l->marker_shared || l->sock < 0 || os_marker_create(&fd, &addr))
		return;
	struct sp_fork f = { 0 };
	if (sp_sendmsg(l->sock, C_MARKER, &f, sizeof(f), fd, MSG_DONTWAIT)) {
		os_munmap((void *)addr, SP_PAGE);
		raw_close(fd);
		return;
	}
	os_munmap((void *)l->marker_addr, SP_PAGE);
	raw_close(l->marker_fd);
	l->marker_fd = fd;
	l->marker_addr = addr;
	l->marker_shared = 0;
}

static void on_hello(struct lib *l, const struct sp_hello_r *r)
{
	/* Invariant 5: another daemon answers; ours died with our references. */
	if (l->instance && r->instance != l->instance)
		refs_died(l);
	l->instance = r->instance;
	l->knobs = r->knobs;
	l->ready = 1;
	l->hello_forked = 0;
	own_marker(l);
}

static void queue(struct lib *l, uint8_t kind, uint32_t id)
{
	/* Full (a daemon stalled for long): a reference not dropped only
	 * keeps its page; a C_COW not sent only skews the counters. */
	if (l->nout == OUTBOX_MAX)
		return;
	l->out_kind[l->nout] = kind;
	l->out_id[l->nout++] = id;
}

/* A reply to a request we gave up waiting for: what it brings goes back. */
static void settle_stale(struct lib *l, uint8_t fate, struct sp_msg *m)
{
	if (m->fd >= 0)
		raw_close(m->fd);
	if (m->h.type == D_ACK)
		return;
	if (fate == R_UNREF) {
		const struct sp_ids *r = (const void *)m->p;
		for (uint32_t i = 0; i < r->n; i++)
			if (r->id[i] != SP_POOL_NONE && r->id[i] != SP_POOL_CREATE)
				queue(l, OUT_UNREF, r->id[i]);
	} else if (fate == R_UNREF_HINTS) {
		const struct sp_hints *r = (const void *)m->p;
		for (uint32_t i = 0; i < r->n; i++)
			queue(l, OUT_UNREF, r->e[i].id);
	}
}

/* One message arrived for the oldest expected reply. 1: it was the
 * caller's (in *m), 0: dealt with here, <0: the connection is unusable. */
static int take_reply(struct lib *l, struct sp_msg *m)
{
	struct expect e;

	if (!l->nexpect || sp_validate(m))
		return -EPROTO;
	e = l->expect[0];
	if (m->h.type != e.type && m->h.type != D_ACK)
		return -EPROTO;
	l->nexpect--;
	memmove(l->expect, l->expect + 1, l->nexpect * sizeof(l->expect[0]));
	if (e.fate == R_MINE)
		return 1;
	if (e.fate == R_HELLO) {
		if (m->h.type != D_HELLO)
			return -EPROTO;
		on_hello(l, (const void *)m->p);
		return 0;
	}
	settle_stale(l, e.fate, m);
	return 0;
}

/* Read what has arrived, without waiting. 1 when it was the caller's
 * reply, 0 when nothing more is there, <0 when the connection is gone. */
static int drain(struct lib *l, struct sp_msg *m)
{
	for (;;) {
		int err = sp_recv(l->sock, l->msg, m);
		if (err == -EAGAIN)
			return 0;
		if (!err)
			err = take_reply(l, m);
		if (err)
			return err;
	}
}

static int should_yield(struct lib *l, uint64_t start, uint64_t deadline)
{
	uint64_t t = now_ms();

	return (__atomic_load_n(&l->waiters, __ATOMIC_RELAXED) && t - start >= YIELD_MS) ||
	       (deadline && t >= deadline) || __atomic_load_n(&l->stop, __ATOMIC_RELAXED);
}

/* Wait for the caller's reply (R_MINE, the newest expected one: 1), or
 * with m NULL for D_HELLO (0). */
static int wait_reply(struct lib *l, struct sp_msg *m, int deadline_ms)
{
	uint64_t start = now_ms(), deadline = deadline_ms ? start + (uint64_t)deadline_ms : 0;
	struct sp_msg scratch;

	for (;;) {
		struct pollfd pf = { .fd = l->sock, .events = POLLIN };
		int err = drain(l, m ? m : &scratch);

		if (err)
			return err;
		if (!m && l->ready)
			return 0;
		if (should_yield(l, start, deadline))
			return -EAGAIN;
		if (poll(&pf, 1, 10) < 0 && errno != EINTR)
			return -errno;
	}
}

/* Whatever its fate, the reply we stop waiting for is handled when it comes. */
static uint8_t abandoned_fate(uint16_t want)
{
	return want == D_LOOKUP || want == D_CREATE || want == D_MOVE ? R_UNREF :
	       want == D_HINTS ? R_UNREF_HINTS : R_DROP;
}

/* Room for one more request: no stale reply outstanding beyond what has
 * already arrived. A daemon still behind gets no more work piled on. */
static int can_request(struct lib *l)
{
	struct sp_msg m;
	int err;

	if (l->sock < 0)
		return -ENOTCONN;
	err = drain(l, &m);
	if (err == 1)
		err = -EPROTO; /* nobody was waiting for that one */
	if (err) {
		conn_lost(l);
		return err == -ECONNRESET ? -ENOTCONN : err;
	}
	/* Not before D_HELLO: it may say our references are gone. */
	if (!l->ready || l->nexpect)
		return -EAGAIN;
	return 0;
}

int client_connect(struct lib *l)
{
	int err;

	if (l->sock < 0 && (err = conn_open(l)) < 0)
		return err;
	if (l->ready)
		return 0;
	err = wait_reply(l, NULL, 0);
	if (err == 1)
		err = -EPROTO;
	if (err && err != -EAGAIN) {
		conn_lost(l);
		return err == -ECONNRESET ? -ENOTCONN : err;
	}
	return l->ready ? 0 : -EAGAIN;
}

int client_call_fd(struct lib *l, uint16_t type, const void *req, uint32_t len, int fd,
		   uint16_t want, struct sp_msg *m, int deadline_ms)
{
	int err = can_request(l);

	if (err)
		return err;
	client_flush(l);
	err = sp_sendmsg(l->sock, type, req, len, fd, MSG_DONTWAIT);
	if (err) {
		if (err != -EAGAIN)
			conn_lost(l); /* and err says why: EPIPE, EMSGSIZE... */
		return err;
	}
	/* What a fork child's copy (C_FORK) was taken from is stale now. */
	if (type == C_LOOKUP || type == C_CREATE || type == C_HINTS || type == C_MOVE)
		l->kid_reusable = 0;
	l->expect[l->nexpect++] = (struct expect){ want, R_MINE };
	err = wait_reply(l, m, deadline_ms);
	if (err == -EAGAIN) {
		l->expect[l->nexpect - 1].fate = abandoned_fate(want);
		return -EAGAIN;
	}
	if (err < 0) {
		conn_lost(l);
		return err == -ECONNRESET ? -ENOTCONN : err;
	}
	return sp_reply_check(m, want);
}

int client_call(struct lib *l, uint16_t type, const void *req, uint32_t len,
		uint16_t want, struct sp_msg *m)
{
	return client_call_fd(l, type, req, len, -1, want, m, 0);
}

/* ---- messages without a reply ---- */

/* Send queued messages while the daemon takes them, keeping half the
 * socket buffer free: a C_FORK must always find room. */
void client_flush(struct lib *l)
{
	while (l->sock >= 0 && l->ready && l->out_head < l->nout) {
		int queued = 0;
		if (raw_ioctl(l->sock, SIOCOUTQ, &queued) == 0 && queued > l->sndbuf / 2)
			break;
		uint8_t kind = l->out_kind[l->out_head];
		uint32_t k = 0;
		while (l->out_head + k < l->nout && k < SP_MAX_UNREF &&
		       l->out_kind[l->out_head + k] == kind)
			k++;
		/* struct sp_ids: the count, then the ids straight from the queue. */
		int err = sp_sendv_flags(l->sock, kind == OUT_COW ? C_COW : C_UNREF, &k, sizeof(k),
					 l->out_id + l->out_head, k * sizeof(uint32_t),
					 MSG_DONTWAIT);
		if (err == -EAGAIN)
			break;
		if (err) {
			conn_lost(l);
			break;
		}
		l->out_head += k;
	}
	if (l->out_head == l->nout) {
		l->out_head = l->nout = 0;
	} else if (l->out_head > OUTBOX_MAX / 2) {
		l->nout -= l->out_head;
		memmove(l->out_id, l->out_id + l->out_head, l->nout * sizeof(uint32_t));
		memmove(l->out_kind, l->out_kind + l->out_head, l->nout);
		l->out_head = 0;
	}
}

void client_unref(struct lib *l, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		client_seg_ref(l, ids[i] & ~SP_UNREF_COWED, -1);
		/* A child of ours may map these pages and hold nothing (it could
		 * neither get a copy nor detach): ours must stay. */
		if (!l->keep_refs)
			queue(l, OUT_UNREF, ids[i]);
	}
	client_flush(l);
}

void client_cow(struct lib *l, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		queue(l, OUT_COW, ids[i]);
	client_flush(l);
}

/* ---- the page pipe ---- */

void client_forget_pipe(struct lib *l)
{
	if (l->pipe_wr >= 0)
		raw_close(l->pipe_wr);
	l->pipe_wr = -1;
}

/* The page pipe: as large as fs.pipe-max-size lets us (1 MiB by default),
 * so one C_CREATE carries up to SP_MAX_CREATE pages. */
static int open_pipe(struct lib *l)
{
	struct sp_pipe p = { 0 };
	struct sp_msg m;
	int fds[2], sz, err;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	sz = fcntl(fds[1], F_SETPIPE_SZ, (int)(SP_MAX_CREATE * SP_PAGE));
	if (sz < 0)
		sz = fcntl(fds[1], F_GETPIPE_SZ);
	p.pages = sz > 0 ? (uint32_t)sz / SP_PAGE : 0;
	if (p.pages > SP_MAX_CREATE)
		p.pages = SP_MAX_CREATE;
	err = p.pages ? client_call_fd(l, C_PIPE, &p, sizeof(p), fds[0], D_ACK, &m, 0) : -EPIPE;
	raw_close(fds[0]);
	if (err) {
		raw_close(fds[1]);
		return err;
	}
	/* Never block on it: a stalled daemon must not stall us. */
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	l->pipe_wr = fds[1];
	l->pipe_pages = p.pages;
	return 0;
}

/* Hand n pages to the pipe without copying them: the daemon reads each once,
 * into its pool, when it takes the C_CREATE that follows. All or nothing:
 * pages left in the pipe without their C_CREATE would be read as the next
 * one's, so a short splice throws the pipe away. */
static int splice_pages(struct lib *l, const struct sp_lookup_ent *e, uint32_t n)
{
	struct iovec iov[SP_MAX_CREATE];
	size_t want = (size_t)n * SP_PAGE, done = 0;

	for (uint32_t i = 0; i < n; i++)
		iov[i] = (struct iovec){ (void *)e[i].addr, SP_PAGE };
	while (done < want) {
		uint32_t first = (uint32_t)(done / SP_PAGE);
		ssize_t k = vmsplice(l->pipe_wr, iov + first, n - first, SPLICE_F_NONBLOCK);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EFAULT && l->mem_fd >= 0 &&
		    raw_pread(l->mem_fd, l->abuf, SP_PAGE, (off_t)e[first].addr) == SP_PAGE) {
			/* PROT_NONE: read through /proc/self/mem and copied
			 * into the pipe (write, not vmsplice: abuf is reused). */
			k = raw_write(l->pipe_wr, l->abuf, SP_PAGE); /* PIPE_BUF: whole or not */
			if (k == SP_PAGE) {
				done += SP_PAGE;
				continue;
			}
		} else if (k < 0 && errno == EFAULT) {
			/* Unmapped behind our wrappers since we hashed it: the
			 * daemon still gets a page there, one that does not hash
			 * as claimed, so it makes nothing of it. */
			iov[first] = (struct iovec){ l->zpage, SP_PAGE };
			continue;
		}
		if (k <= 0 || k % SP_PAGE) {
			client_forget_pipe(l);
			return k < 0 && errno == EAGAIN ? -EAGAIN : -EIO;
		}
		done += (size_t)k;
	}
	return 0;
}

int client_create(struct lib *l, const struct sp_lookup_ent *e, const uint32_t *look,
		  uint32_t n, uint32_t *ids)
{
	struct sp_create *req = (struct sp_create *)l->out;
	struct sp_msg m;
	int err = l->pipe_wr < 0 ? open_pipe(l) : 0;

	for (uint32_t from = 0; !err && from < n;) {
		uint32_t k = n - from < l->pipe_pages ? n - from : l->pipe_pages;
		err = can_request(l);
		if (err)
			break;
		req->n = k;
		for (uint32_t i = 0; i < k; i++)
			req->e[i] = (struct sp_create_ent){ .hash = e[from + i].hash,
							    .look = look[from + i] };
		err = splice_pages(l, e + from, k);
		if (err)
			break;
		err = client_call(l, C_CREATE, req, sizeof(*req) + k * sizeof(req->e[0]), D_CREATE,
				  &m);
		if (err) {
			if (err != -EAGAIN)
				client_forget_pipe(l);
			break;
		}
		const struct sp_ids *r = (const void *)m.p;
		if (r->n != k) {
			conn_lost(l);
			return -EPROTO;
		}
		memcpy(ids + from, r->id, k * sizeof(uint32_t));
		from += k;
	}
	return err;
}

/* ---- fork ---- */

int client_holds_refs(const struct lib *l)
{
	return l->seg_refs > 0;
}

/* C_FORK with the children's marker, queued behind what waits in the
 * outbox, with a short wait for room. 0 or -errno. */
static int send_fork(struct lib *l, int fd)
{
	struct sp_fork f = { 0 };
	uint64_t until = now_ms() + FORK_SEND_MS;
	int err;

	client_flush(l);
	for (;;) {
		struct pollfd pf = { .fd = l->sock, .events = POLLOUT };
		err = sp_sendmsg(l->sock, C_FORK, &f, sizeof(f), fd, MSG_DONTWAIT);
		if (err != -EAGAIN || now_ms() >= until)
			return err;
		poll(&pf, 1, 5);
	}
}

void client_fork_prepare(struct lib *l, struct fork_kid *k)
{
	int err;

	*k = (struct fork_kid){ .mode = KID_NONE, .fd = -1 };
	if (!client_holds_refs(l))
		return;
	k->mode = KID_DETACH;
	/* SAMEPAGE_FAULT=fork: as if C_FORK could not be sent (a stalled
	 * daemon with a full socket buffer). */
	if (fault_inject("fork"))
		return;
	/* The marker of earlier children serves this one too while the copy
	 * the daemon made for them holds everything we hold (no reference
	 * came to us since): one C_FORK for a fork storm, none while the
	 * daemon is stalled. */
	if (l->kid_fd >= 0 && l->kid_reusable && os_marker_map(l->kid_fd, &k->addr) == 0) {
		k->mode = KID_MARKER;
		k->fd = l->kid_fd;
		return;
	}
	if (l->kid_fd >= 0)
		raw_close(l->kid_fd);
	l->kid_fd = -1;
	if (l->sock < 0) {
		err = conn_open(l);
		if (err == -ENOENT || err == -ECONNREFUSED) {
			/* No daemon: the one our references lived in died, and
			 * nothing will ever reuse its pool pages. */
			refs_died(l);
			l->instance = 0;
			k->mode = KID_NONE;
			return;
		}
		if (err)
			return;
	}
	if (os_marker_create(&k->fd, &k->addr))
		return;
	/* SAMEPAGE_FAULT=fork: as if the daemon's socket buffer were full. */
	err = send_fork(l, k->fd);
	if (err) {
		if (err != -EAGAIN)
			conn_lost(l);
		os_munmap((void *)k->addr, SP_PAGE);
		raw_close(k->fd);
		k->fd = -1;
		return;
	}
	l->kid_fd = k->fd;
	l->kid_reusable = 1;
	k->mode = KID_MARKER;
}

void client_fork_parent(struct lib *l, struct fork_kid *k)
{
	(void)l;
	/* The children map the marker; we keep only its descriptor, for the
	 * next fork. */
	if (k->mode == KID_MARKER)
		os_munmap((void *)k->addr, SP_PAGE);
}

void client_fork_child(struct lib *l, struct fork_kid *k)
{
	/* The connection, its pipe and its pending replies are the parent's. */
	if (l->sock >= 0)
		raw_close(l->sock);
	l->sock = -1;
	l->ready = 0;
	l->nexpect = 0;
	l->waiters = 0;
	client_forget_pipe(l);
	/* So is the parent's marker: we are not the parent. */
	if (l->marker_fd >= 0) {
		os_munmap((void *)l->marker_addr, SP_PAGE);
		raw_close(l->marker_fd);
	}
	l->marker_fd = -1;
	l->marker_addr = 0;
	l->marker_shared = 0;
	l->hello_forked = 0;
	if (k->mode == KID_MARKER) {
		/* Our references are the copy C_FORK made: the daemon keeps it
		 * while we (or our siblings) map this marker, and hands it to
		 * our connection when we say HELLO with it. */
		l->marker_fd = k->fd;
		l->marker_addr = k->addr;
		l->marker_shared = 1;
		l->hello_forked = 1;
	} else {
		if (l->kid_fd >= 0)
			raw_close(l->kid_fd);
		l->out_head = l->nout = 0;
		if (k->mode == KID_DETACH) {
			/* merge_detach_all() gave every pool page back: nothing
			 * of the parent's references is ours. */
			refs_died(l);
			l->instance = 0;
		}
	}
	l->kid_fd = -1;
	l->kid_reusable = 0;
	l->keep_refs = 0;
}

/* ---- segments ---- */

static int fetch_seg(struct lib *l, uint32_t seg)
{
	struct sp_getseg g = { .seg = seg };
	struct segview *v = &l->segs[seg];
	struct sp_msg m;
	struct stat st;
	int err = client_call(l, C_GETSEG, &g, sizeof(g), D_SEG, &m);

	if (err)
		return err;
	if (m.fd < 0)
		return -EPROTO;
	if (fstat(m.fd, &st) < 0) {
		raw_close(m.fd);
		return -EPROTO;
	}
	v->fd = m.fd;
	v->ino = st.st_ino;
	l->had_segments = 1;
	return 0;
}

int client_zero_fd(struct lib *l)
{
	struct sp_getseg g = { .seg = SP_ZERO_SEG };
	struct sp_msg m;
	struct stat st;
	int err;

	if (l->zero_fd >= 0)
		return l->zero_fd;
	err = client_call(l, C_GETSEG, &g, sizeof(g), D_SEG, &m);
	if (err)
		return err;
	if (m.fd < 0 || fstat(m.fd, &st) < 0) {
		if (m.fd >= 0)
			raw_close(m.fd);
		return -EPROTO;
	}
	l->zero_fd = m.fd;
	l->zero_ino = st.st_ino;
	l->had_segments = 1;
	return m.fd;
}

int client_pool_fd(struct lib *l, uint32_t id)
{
	struct segview *v = &l->segs[id / SP_SEG_PAGES];
	int err;

	if (id / SP_SEG_PAGES >= SP_MAX_SEGS)
		return -EINVAL;
	if (v->fd < 0 && (err = fetch_seg(l, id / SP_SEG_PAGES)))
		return err;
	return v->fd;
}

void client_seg_ref(struct lib *l, uint32_t id, int delta)
{
	struct segview *v = &l->segs[id / SP_SEG_PAGES];

	SP_ASSERT(id / SP_SEG_PAGES < SP_MAX_SEGS && (delta > 0 || v->refs > 0));
	v->refs += delta;
	l->seg_refs += delta;
	/* Holding a segment's fd with no reference would keep a retired
	 * segment's memory alive and could alias a new segment of that slot. */
	if (!v->refs && v->fd >= 0) {
		raw_close(v->fd);
		v->fd = -1;
	}
}
