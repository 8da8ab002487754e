/* SPDX-License-Identifier: MIT */
/*
 * conn — the daemon's connections: accepting them (only the daemon's own
 * uid: invariant 6), finding them by id, sending replies, closing them (their
 * set then outlives them while its marker is mapped: sets.c).
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "os.h"

/* ---- connections ---- */

int conn_alive(void *ctx, uint32_t id)
{
	struct samepaged *d = ctx;

	return map_get(&d->live, id) != NULL;
}

struct conn *conn_by_id(struct samepaged *d, uint32_t id)
{
	uint64_t *v = map_get(&d->live, id);

	return v ? (struct conn *)(uintptr_t)*v : NULL;
}

/* The daemon keeps nothing for nobody: with no process and no held set
 * left, the unstable index and scratch memory go back too. */
void maybe_idle(struct samepaged *d)
{
	if (d->conns || d->held)
		return;
	d->idle_since_ns = now_ns();
	unstable_reset(&d->ix);
	unstable_reset(&d->ix); /* twice: a mostly empty table is freed */
	os_madvise(d->scratch, (size_t)SP_MAX_CREATE * SP_PAGE, MADV_DONTNEED);
	malloc_trim(0);
}

void conn_close(struct samepaged *d, struct conn *c)
{
	struct conn **pp;

	if (c->hello && !c->observer)
		sp_logl(SP_LOG_INFO, "process %d left, mapping %llu pool pages", (int)c->pid,
			(unsigned long long)c->refs.total);

	for (pp = &d->conns; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	epoll_ctl(d->efd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->parked)
		d->nparked--;
	c->parked = 0;
	if (c->rsv_next != c->rsv_end)
		pool_unreserve(&d->pool, c->rsv_next, c->rsv_end - c->rsv_next);
	map_del(&d->live, c->id);
	if (c->pipe_fd >= 0)
		close(c->pipe_fd);
	free(c->pairs);
	free(c->look_addr);
	free(c->look_maps);
	free(c->look_run);
	c->pairs = NULL;
	c->look_addr = NULL;
	c->look_maps = NULL;
	c->look_run = NULL;
	map_fini(&c->asked); /* its asks count no more (move.c) */
	/* Invariant 2: the set outlives the connection while anyone maps its marker. */
	set_closed(d, c);
	maybe_idle(d);
	maybe_end_generation(d);
}

struct conn *samepaged_attach(struct samepaged *d, int fd, pid_t pid)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->pipe_fd = -1;
	c->marker_fd = -1;
	c->id = ++d->next_id;
	c->pid = pid;
	refs_init(&c->refs);
	refs_init(&c->cowed);
	map_init(&c->hint_at);
	map_init(&c->hint_ids);
	map_init(&c->asked);
	ev.data.ptr = c;
	if (map_put(&d->live, c->id, (uintptr_t)c) ||
	    (d->efd >= 0 && epoll_ctl(d->efd, EPOLL_CTL_ADD, fd, &ev) < 0)) {
		map_del(&d->live, c->id);
		set_free(c);
		return NULL;
	}
	c->next = d->conns;
	d->conns = c;
	return c;
}

int accept_conn(struct samepaged *d)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0 && (errno == EMFILE || errno == ENFILE) && d->spare_fd >= 0) {
		/* Out of descriptors: take the connection with the spare one and
		 * close it (its process sees the end and retries later), or the
		 * listening socket stays readable and the loop spins. */
		close(d->spare_fd);
		sp_logl(SP_LOG_WARN, "out of file descriptors: a connection refused");
		fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		return fd >= 0;
	}
	if (fd < 0)
		return errno == ECONNABORTED || errno == EINTR;
	/* Invariant 6: only the daemon's own user shares its pages. */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.uid != d->uid) {
		sp_logl(SP_LOG_WARN, "refused process %d of uid %u: this daemon serves uid %u only",
			(int)cr.pid, (unsigned)cr.uid, (unsigned)d->uid);
		close(fd);
	} else if (!samepaged_attach(d, fd, cr.pid)) {
		sp_logl(SP_LOG_ERR, "process %d: out of memory for its connection", (int)cr.pid);
		close(fd);
	}
	return 1;
}


