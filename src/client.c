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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
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
	char *argv[] = { path, "--daemonize", NULL };
	char *env[512];
	pid_t pid;
	int err;

	daemon_path(path, sizeof(path));
	clean_env(env, sizeof(env) / sizeof(env[0]));
	err = posix_spawnp(&pid, path, NULL, NULL, argv, env);
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
	for (uint32_t s = 0; s < POOL_MAX_SEGS; s++) {
		struct segview *v = &l->segs[s];
		if (v->fd < 0)
			continue;
		os_munmap((void *)v->view, (size_t)SEG_PAGES * SP_PAGE);
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
	v->view = os_mmap(NULL, (size_t)SEG_PAGES * SP_PAGE, PROT_READ, MAP_SHARED, m.fd, 0);
	if (v->view == MAP_FAILED || fstat(m.fd, &st) < 0) {
		close(m.fd);
		return -ENOMEM;
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

const unsigned char *client_pool_view(struct lib *l, uint32_t id, int *fd)
{
	struct segview *v = &l->segs[id / SEG_PAGES];

	if (id / SEG_PAGES >= POOL_MAX_SEGS)
		return NULL;
	if (v->fd < 0 && fetch_seg(l, id / SEG_PAGES))
		return NULL;
	*fd = v->fd;
	return v->view + (size_t)(id % SEG_PAGES) * SP_PAGE;
}

void client_seg_ref(struct lib *l, uint32_t id, int delta)
{
	struct segview *v = &l->segs[id / SEG_PAGES];

	v->refs += delta;
	/* Holding a segment's fd with no reference would keep a retired
	 * segment's memory alive and could alias a new segment of that slot. */
	if (!v->refs && v->fd >= 0) {
		os_munmap((void *)v->view, (size_t)SEG_PAGES * SP_PAGE);
		close(v->fd);
		v->fd = -1;
	}
}
