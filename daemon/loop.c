/* SPDX-License-Identifier: MIT */
/*
 * loop — samepaged's life: the socket (one daemon per path, by a lock, or
 * the one a service manager hands over), the epoll loop, what it does
 * between events (parked fork children, held sets, generations, the
 * manager's status line), idle exit and SIGTERM, and setting it all up.
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

int samepaged_serve(struct samepaged *d, struct conn *c)
{
	struct sp_msg m;

	while (!c->parked) {
		int err = sp_recv(c->fd, d->in, &m);
		if (err == -EAGAIN)
			return 0;
		/* Invariant 6: anything malformed closes this connection, nothing else. */
		err = err ? err : dispatch(d, c, &m);
		if (m.fd >= 0)
			close(m.fd); /* kept only by handlers that take it */
		if (err < 0 && err != -ECONNRESET)
			sp_logl(err == -EPROTO ? SP_LOG_WARN : SP_LOG_ERR,
				"process %d: %s (message type %u): connection closed", (int)c->pid,
				err == -EPROTO ? "malformed message" : strerror(-err), m.h.type);
		if (err < 0) {
			conn_close(d, c);
			return -1;
		}
	}
	return 0;
}

/* Parked fork children: read every other connection's messages first (the
 * parent's C_FORK left before the child existed, so it is among them: on
 * a connection accepted before the child's, since connections queue in
 * order), then attach and answer. */
static void resolve_parked(struct samepaged *d)
{
	uint32_t ids[1024], n = 0;
	struct epoll_event ev = { .events = EPOLLIN };

	for (int i = 0; d->lfd >= 0 && i < 4096 && accept_conn(d); i++)
		;
	for (struct conn *c = d->conns; c && n < 1024; c = c->next)
		ids[n++] = c->id;
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = conn_by_id(d, ids[i]);
		if (c && !c->parked)
			samepaged_serve(d, c);
	}
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = conn_by_id(d, ids[i]);
		if (!c || !c->parked)
			continue;
		c->parked = 0;
		d->nparked--;
		ev.data.ptr = c;
		if (d->efd >= 0)
			epoll_ctl(d->efd, EPOLL_CTL_MOD, c->fd, &ev);
		if (hello_reply(d, c, attach_held(d, c)) < 0)
			conn_close(d, c);
	}
}

#define SWEEP_NS (250ull * 1000000ull)

void samepaged_tick(struct samepaged *d)
{
	uint64_t now = now_ns();

	samepaged_config_tick(d);
	if (d->nparked)
		resolve_parked(d);
	if (d->held && now - d->last_sweep_ns >= SWEEP_NS) {
		d->last_sweep_ns = now;
		sweep_held(d);
		maybe_idle(d);
	}
	maybe_end_generation(d);
}

/* A socket at the path that takes connections is live, whoever listens:
 * a service manager holding it for the daemon it starts on the first
 * connection (socket activation: no daemon, no lock, yet the path is
 * taken), or a daemon whose lock file went. Only a dead one (refused, or
 * no socket at all) may be replaced. */
static int live_socket(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), live;

	if (fd < 0)
		return 0; /* then so does the listening socket, and that error is reported */
	live = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 || errno == EAGAIN;
	close(fd);
	return live;
}

static int listen_on(struct samepaged *d, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char lock[sizeof(sa.sun_path) + 8];
	int lk;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	/* One daemon per socket: whoever holds the lock owns the path, so a
	 * stale socket of a killed daemon is replaced, a live one never is. */
	snprintf(lock, sizeof(lock), "%s.lock", path);
	lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lk < 0)
		return -errno;
	strcpy(sa.sun_path, path);
	if (flock(lk, LOCK_EX | LOCK_NB) < 0 || live_socket(&sa)) {
		close(lk);
		return -EADDRINUSE;
	}
	unlink(path);
	d->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (d->lfd < 0)
		return -errno;
	if (bind(d->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(d->lfd, 4096) < 0)
		return -errno;
	chmod(path, 0600);
	struct stat st;
	if (stat(path, &st) == 0) {
		d->sock_ino = st.st_ino;
		d->sock_dev = st.st_dev;
	}
	return 0; /* lk stays open (and locked) for the daemon's life */
}

/* The socket systemd made (service.c) is already listening at the path
 * the unit names; the manager owns that path and keeps it across our
 * restarts, so there is no lock to take and nothing to unlink at exit. */
static int take_socket(struct samepaged *d, const char *path)
{
	int fd = service_take_listen_fd(&d->svc);

	if (fd < 0)
		return listen_on(d, path);
	d->lfd = fd;
	return 0;
}

/* What `systemctl status samepaged` shows, as uksmd does: the saving
 * (pages_sharing + ksm_zero_pages, the kernel's measure of what merging
 * saved) and the processes served. Composed every few seconds at most,
 * sent only when it changed. */
#define STATUS_NS (5ull * 1000000000ull)

static void report_status(struct samepaged *d)
{
	uint64_t now = now_ns(), pages = d->sharing, procs = 0;
	char text[sizeof(d->svc.status)];

	if (!service_notifying(&d->svc) || now - d->svc.status_ns < STATUS_NS)
		return;
	d->svc.status_ns = now;
	for (const struct conn *c = d->conns; c; c = c->next)
		if (!c->observer && c->hello) {
			procs++;
			pages += c->st.zero_pages;
		}
	snprintf(text, sizeof(text), "saved %.1f MiB in %llu process%s",
		 (double)pages * SP_PAGE / (1024.0 * 1024.0), (unsigned long long)procs,
		 procs == 1 ? "" : "es");
	service_status(&d->svc, text);
}

/* SIGTERM/SIGINT end the loop, so the socket is removed on the way out.
 * The one piece of state outside struct samepaged: a signal handler has
 * nowhere else to put it. */
static volatile sig_atomic_t terminated;

static void on_term(int sig)
{
	(void)sig;
	terminated = 1;
}

static int loop(struct samepaged *d)
{
	struct epoll_event evs[64];

	while (!d->stop && !terminated) {
		/* Held sets are checked a few times a second while there are any. */
		int n = epoll_wait(d->efd, evs, 64, d->held || d->nparked ? 250 : 1000);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == NULL)
				accept_conn(d);
			else
				samepaged_serve(d, evs[i].data.ptr);
		}
		samepaged_tick(d);
		report_status(d);
		if (d->idle_exit_s && !d->conns && !d->held &&
		    now_ns() - d->idle_since_ns > (uint64_t)d->idle_exit_s * 1000000000ull)
			d->stop = 1;
	}
	return 0;
}

/* Where reading dropped memory gets no shared zero page (kernels booted
 * with pvm_no_zero_page=1), processes map zero pages from this file
 * instead: a run of n zero pages maps offsets [0, n), so every process's
 * zero runs share the same few frames. Never written, so sealed whole. */
static int zero_segment(void)
{
	int fd = memfd_create("samepage-pool-zero", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)SP_SEG_PAGES * SP_PAGE) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Remove the socket only if it is still ours: a daemon that exits late
 * (SIGTERM) after its directory was recreated would otherwise unlink its
 * successor's socket, and every process forking then fails to hand its
 * references over (fork: ENOMEM), found with Redis's BGSAVE. */
static void unlink_own(const char *path, const struct samepaged *d)
{
	struct stat st;

	if (stat(path, &st) == 0 && st.st_ino == d->sock_ino && st.st_dev == d->sock_dev)
		unlink(path);
}

/* Every process of the user may hold a connection, a marker and a pipe
 * here: the soft limit on descriptors (1024) would stop the daemon at a
 * few hundred processes. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int samepaged_init(struct samepaged *d)
{
	memset(d, 0, sizeof(*d));
	d->lfd = d->efd = -1;
	service_init(&d->svc);
	d->uid = geteuid();
	d->idle_since_ns = d->last_refill_ns = now_ns();
	if (getrandom(&d->instance, sizeof(d->instance), 0) != sizeof(d->instance))
		d->instance = now_ns() ^ ((uint64_t)getpid() << 32);
	d->instance |= 1; /* never 0: "no daemon" to the library */
	if (getrandom(&d->salt, sizeof(d->salt), 0) != sizeof(d->salt))
		d->salt = now_ns() * 0x9e3779b97f4a7c15ull ^ d->instance;
	samepaged_default_knobs(&d->knobs);
	pool_init(&d->pool);
	index_init(&d->ix);
	map_init(&d->live);
	map_init(&d->moved);
	d->zero_fd = zero_segment();
	if (d->zero_fd < 0)
		return d->zero_fd;
	d->buf = mmap(NULL, 2 * SP_MAX_MSG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (d->buf == MAP_FAILED)
		return -ENOMEM;
	d->in = d->buf + SP_MAX_MSG;
	d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	d->scratch = mmap(NULL, (size_t)SP_MAX_CREATE * SP_PAGE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d->scratch == MAP_FAILED)
		return -ENOMEM;
	return 0;
}

void samepaged_fini(struct samepaged *d)
{
	while (d->conns)
		conn_close(d, d->conns);
	while (d->held) {
		struct conn *h = d->held;
		d->held = h->next;
		set_release(d, h);
		set_free(h);
	}
	pool_fini(&d->pool);
	index_fini(&d->ix);
	map_fini(&d->live);
	map_fini(&d->moved);
	if (d->zero_fd >= 0)
		close(d->zero_fd);
	if (d->spare_fd >= 0)
		close(d->spare_fd);
	munmap(d->buf, 2 * SP_MAX_MSG);
	munmap(d->scratch, (size_t)SP_MAX_CREATE * SP_PAGE);
	service_close(&d->svc);
}

int samepaged_check(struct samepaged *d)
{
	uint64_t refs = 0;

	for (int pass = 0; pass < 2; pass++)
		for (struct conn *c = pass ? d->held : d->conns; c; c = c->next) {
			uint64_t pos = 0;
			uint32_t id, n;
			while (refs_next(&c->refs, &pos, &id, &n)) {
				if (!pool_page(&d->pool, id) || refs_count(&c->cowed, id) > n)
					return -EUCLEAN;
				refs += n;
			}
		}
	return refs == d->total_refs ? index_check(&d->ix, &d->pool) : -EUCLEAN;
}

int samepaged_run(const char *path, int idle_exit_s, int ready_fd)
{
	static struct samepaged d; /* the pool's segment table is large */
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int err = samepaged_init(&d);

	samepaged_config_start(&d, idle_exit_s, ready_fd >= 0 ? 60 : 0);
	raise_nofile();
	/* Notify only as a unit's main process: a daemon detached for the
	 * library (ready_fd) may have inherited the NOTIFY_SOCKET of the
	 * service it was started from, and must not speak for it. */
	if (!err)
		err = service_open(&d.svc, ready_fd < 0);
	if (!err)
		err = take_socket(&d, path);
	if (!err) {
		d.efd = epoll_create1(EPOLL_CLOEXEC);
		if (d.efd < 0 || epoll_ctl(d.efd, EPOLL_CTL_ADD, d.lfd, &ev) < 0)
			err = -errno;
	}
	if (ready_fd >= 0) {
		unsigned char st = (unsigned char)-err;
		if (write(ready_fd, &st, 1) != 1) {
			/* the starter went away; serve anyway */
		}
		close(ready_fd);
	}
	if (err)
		return err;
	sp_logl(SP_LOG_INFO, "started: serving uid %u on %s%s", (unsigned)d.uid, path,
		idle_exit_s ? ", leaving when idle" : "");
	struct sigaction sa = { .sa_handler = on_term }; /* no SA_RESTART: wake epoll_wait */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	/* Listening, so clients queue from here on: Type=notify units start
	 * what needs us only now. */
	service_notify(&d.svc, "READY=1");
	report_status(&d);
	err = loop(&d);
	sp_logl(err ? SP_LOG_ERR : SP_LOG_INFO, "stopped: %s", err ? strerror(-err) :
		terminated ? "SIGTERM or SIGINT" : "idle, no process left");
	service_notify(&d.svc, "STOPPING=1");
	if (!d.svc.activated)
		unlink_own(path, &d);
	return err;
}
