/* SPDX-License-Identifier: MIT */
/*
 * client — libsamepage's side of the daemon connection: connecting (and
 * starting the user's daemon when none answers), request/reply calls, the
 * fork hand-over, and the pool segments this process maps.
 */
#define _GNU_SOURCE
#include "lib.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "path.h"

extern char **environ;

/* SAMEPAGE_FAULT=connect: the daemon is unreachable. */
static int dial(const char *path)
{
	return fault_inject("connect") ? -ECONNREFUSED : sp_dial(path);
}

/* samepaged beside us: $SAMEPAGE_DAEMON, else ../bin/samepaged relative to
 * this library (build tree and install prefix alike), else $PATH. */
static void daemon_path(char *buf, size_t len)
{
	const char *env = getenv("SAMEPAGE_DAEMON");
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

/* The daemon must not run under our preload, or it would scan itself. */
static void clean_env(char **out, size_t max)
{
	size_t n = 0;

	for (char **e = environ; e && *e && n + 1 < max; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "SAMEPAGE_MERGE_ANY=", 19))
			out[n++] = *e;
	out[n] = NULL;
}

static int spawn_daemon(void)
{
	char path[PATH_MAX];
	char sock[108];
	char *argv[] = { path, "--daemonize", "--socket", sock, NULL };
	char *env[512];
	posix_spawnattr_t at;
	sigset_t none, def;
	pid_t pid;
	int err;

	daemon_path(path, sizeof(path));
	err = sp_socket_path(sock, sizeof(sock));
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
	err = posix_spawnp(&pid, path, NULL, &at, argv, env);
	posix_spawnattr_destroy(&at);
	if (err)
		return -err;
	/* --daemonize returns once the socket listens (or the daemon failed). */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return 0;
}

static int hello(int fd, unsigned char *buf, struct sp_hello_r *out)
{
	struct sp_hello h = { .version = SP_PROTO_VERSION };
	struct sp_msg m;
	int err = sp_send(fd, C_HELLO, &h, sizeof(h), -1);

	if (!err)
		err = sp_recv(fd, buf, &m);
	if (!err && (m.h.type != D_HELLO || sp_validate(&m)))
		err = -EPROTO;
	if (!err)
		memcpy(out, m.p, sizeof(*out));
	return err;
}

static int dial_or_spawn(void)
{
	char path[108];
	int fd, err = sp_socket_path(path, sizeof(path));

	if (err)
		return err;
	fd = dial(path);
	if (fd >= 0 || (fd != -ENOENT && fd != -ECONNREFUSED))
		return fd;
	err = spawn_daemon();
	if (err)
		return err;
	for (int i = 0; i < 100; i++) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		fd = dial(path);
		if (fd >= 0)
			return fd;
		nanosleep(&ts, NULL);
	}
	return fd;
}

int client_connect(struct lib *l)
{
	struct sp_hello_r r;
	int fd = dial_or_spawn(), err;

	if (fd < 0)
		return fd;
	err = hello(fd, l->msg, &r);
	if (err) {
		close(fd);
		return err;
	}
	l->sock = fd;
	l->token = r.token;
	l->knobs = r.knobs;
	return 0;
}

/* Invariant 5: the daemon died. Merged pages stay valid (the mappings keep
 * the old pool files alive); we forget our references, which died with it,
 * and treat those pages as ordinary memory that may merge again. */
void client_lost(struct lib *l)
{
	if (l->sock >= 0)
		close(l->sock);
	l->sock = -1;
	for (uint32_t i = 0; i < l->nareas; i++) {
		struct area *a = &l->areas[i];
		for (uintptr_t p = a->start; p < a->end; p += SP_PAGE) {
			struct entry *e = &a->e[(p - a->start) / SP_PAGE];
			if (e->state == E_MERGED || e->state == E_COWED)
				entry_set(l, e, E_NEW);
		}
	}
	if (l->zero_fd >= 0)
		close(l->zero_fd);
	l->zero_fd = -1;
	/* It may hold pages a dead daemon never read. */
	client_forget_pipe(l);
	for (uint32_t s = 0; s < POOL_MAX_SEGS; s++) {
		struct segview *v = &l->segs[s];
		if (v->fd < 0)
			continue;
		close(v->fd);
		v->fd = -1;
		v->refs = 0;
	}
	l->npending = 0;
}

int client_call(struct lib *l, uint16_t type, const void *req, uint32_t len,
		uint16_t want, struct sp_msg *m)
{
	int err;

	if (l->sock < 0)
		return -ENOTCONN;
	err = sp_send(l->sock, type, req, len, -1);
	if (!err)
		err = sp_recv(l->sock, l->msg, m);
	if (!err && sp_validate(m))
		err = -EPROTO;
	if (!err && m->h.type == D_ACK && want != D_ACK) {
		struct sp_ack a;
		memcpy(&a, m->p, sizeof(a));
		if (m->fd >= 0)
			close(m->fd);
		return a.err < 0 ? a.err : -EPROTO;
	}
	if (!err && m->h.type != want)
		err = -EPROTO;
	if (err == -ECONNRESET || err == -EPIPE || err == -EPROTO || err == -ENOTCONN ||
	    err == -EAGAIN || err == -ETIMEDOUT)
		client_lost(l);
	return err;
}

void client_forget_pipe(struct lib *l)
{
	if (l->pipe_wr >= 0)
		close(l->pipe_wr);
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
	err = p.pages ? sp_send(l->sock, C_PIPE, &p, sizeof(p), fds[0]) : -EPIPE;
	close(fds[0]);
	if (!err)
		err = sp_recv(l->sock, l->msg, &m);
	if (!err && (m.h.type != D_ACK || sp_validate(&m)))
		err = -EPROTO;
	if (err) {
		close(fds[1]);
		client_lost(l);
		return err;
	}
	l->pipe_wr = fds[1];
	l->pipe_pages = p.pages;
	return 0;
}

/* Hand n pages to the pipe without copying them: the daemon reads each once,
 * into its pool, while we wait for its reply. */
static int splice_pages(struct lib *l, const struct sp_lookup_ent *e, uint32_t n)
{
	struct iovec iov[SP_MAX_CREATE];
	size_t want = (size_t)n * SP_PAGE, done = 0;

	for (uint32_t i = 0; i < n; i++)
		iov[i] = (struct iovec){ (void *)e[i].addr, SP_PAGE };
	while (done < want) {
		uint32_t first = (uint32_t)(done / SP_PAGE);
		ssize_t k = vmsplice(l->pipe_wr, iov + first, n - first, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EFAULT) {
			/* Unmapped behind our wrappers since we hashed it: the
			 * daemon still gets a page there, one that does not hash
			 * as claimed, so it makes nothing of it. */
			iov[first] = (struct iovec){ l->zpage, SP_PAGE };
			continue;
		}
		if (k <= 0 || k % SP_PAGE)
			return k < 0 ? -errno : -EIO;
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

	if (err)
		return err;
	for (uint32_t from = 0; from < n;) {
		uint32_t k = n - from < l->pipe_pages ? n - from : l->pipe_pages;
		req->n = k;
		for (uint32_t i = 0; i < k; i++)
			req->e[i] = (struct sp_create_ent){ .hash = e[from + i].hash,
							    .look = look[from + i] };
		err = splice_pages(l, e + from, k);
		if (err) {
			client_lost(l);
			return err;
		}
		err = client_call(l, C_CREATE, req, sizeof(*req) + k * sizeof(req->e[0]), D_CREATE,
				  &m);
		if (err)
			return err;
		const struct sp_ids *r = (const void *)m.p;
		if (r->n != k) {
			client_lost(l);
			return -EPROTO;
		}
		memcpy(ids + from, r->id, k * sizeof(uint32_t));
		from += k;
	}
	return 0;
}

int client_unref(struct lib *l, const uint32_t *ids, uint32_t n)
{
	struct sp_ids *u = (struct sp_ids *)l->out;

	while (n) {
		uint32_t k = n < SP_MAX_UNREF ? n : SP_MAX_UNREF;
		int err;
		u->n = k;
		memmove(u->id, ids, k * sizeof(uint32_t));
		for (uint32_t i = 0; i < k; i++)
			client_seg_ref(l, ids[i], -1);
		if (l->sock < 0)
			return -ENOTCONN;
		err = sp_send(l->sock, C_UNREF, u, sizeof(*u) + k * sizeof(uint32_t), -1);
		if (err) {
			client_lost(l);
			return err;
		}
		ids += k;
		n -= k;
	}
	return 0;
}

int client_fork_conn(struct lib *l, int *fdp, uint64_t *token)
{
	struct sp_adopt a = { .token = l->token };
	struct sp_hello_r r;
	struct sp_msg m;
	struct sp_ack ack;
	int fd = dial_or_spawn(), err;

	if (fd < 0)
		return fd;
	err = hello(fd, l->msg, &r);
	if (!err)
		err = sp_send(fd, C_ADOPT, &a, sizeof(a), -1);
	if (!err)
		err = sp_recv(fd, l->msg, &m);
	if (!err && (m.h.type != D_ACK || sp_validate(&m)))
		err = -EPROTO;
	if (!err) {
		memcpy(&ack, m.p, sizeof(ack));
		err = ack.err;
	}
	if (err) {
		close(fd);
		return err;
	}
	*fdp = fd;
	*token = r.token;
	return 0;
}

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
		close(m.fd);
		return -EPROTO;
	}
	v->fd = m.fd;
	v->ino = st.st_ino;
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
			close(m.fd);
		return -EPROTO;
	}
	l->zero_fd = m.fd;
	l->zero_ino = st.st_ino;
	return m.fd;
}

int client_pool_fd(struct lib *l, uint32_t id)
{
	struct segview *v = &l->segs[id / SEG_PAGES];
	int err;

	if (id / SEG_PAGES >= POOL_MAX_SEGS)
		return -EINVAL;
	if (v->fd < 0 && (err = fetch_seg(l, id / SEG_PAGES)))
		return err;
	return v->fd;
}

void client_seg_ref(struct lib *l, uint32_t id, int delta)
{
	struct segview *v = &l->segs[id / SEG_PAGES];

	v->refs += delta;
	/* Holding a segment's fd with no reference would keep a retired
	 * segment's memory alive and could alias a new segment of that slot. */
	if (!v->refs && v->fd >= 0) {
		close(v->fd);
		v->fd = -1;
	}
}
