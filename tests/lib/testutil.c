/* SPDX-License-Identifier: MIT */
/* testutil — see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The test process's one piece of state. */
static struct tu_ctx {
	char dir[128]; /* the private daemon's directory, "" when none */
	/* kill_daemon() is registered: a benchmark takes a fresh daemon per
	 * measurement (tu_daemon_stop, tu_private_daemon again). */
	int exit_hooked;
	char bin_dir[PATH_MAX];
	/* Children not reaped yet: killed at exit before the daemon, or
	 * their scanners could start a new daemon while the directory is
	 * removed. */
	pid_t live_children[64];
	char freeze_dir[192], freeze_root[64]; /* tu_freeze()'s cgroup */
	int freeze_v1;
} tu;

void tu_skip(const char *why)
{
	printf("SKIP: %s\n", why);
	exit(TU_SKIP);
}

void tu_require_merging(void)
{
	long fd;

	if (geteuid() != 0)
		tu_skip("needs root to read page frame numbers from /proc/PID/pagemap");
	fd = syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd < 0)
		tu_skip("userfaultfd unavailable");
	close((int)fd);
}

const char *tu_bin(const char *name)
{
	static char path[PATH_MAX + 64];

	if (!tu.bin_dir[0]) {
		/* build/tests/integration/NAME, build/bench/NAME → build/bin:
		 * the nearest directory above us with bin/samepaged. */
		char probe[PATH_MAX + 32];
		ssize_t n = readlink("/proc/self/exe", tu.bin_dir, sizeof(tu.bin_dir) - 1);
		if (n <= 0)
			TU_FAIL("readlink /proc/self/exe");
		tu.bin_dir[n] = 0;
		do {
			*strrchr(tu.bin_dir, '/') = 0;
			snprintf(probe, sizeof(probe), "%s/bin/samepaged", tu.bin_dir);
		} while (access(probe, X_OK) != 0 && strrchr(tu.bin_dir, '/') && tu.bin_dir[0]);
		strcat(tu.bin_dir, "/bin");
	}
	snprintf(path, sizeof(path), "%s/%s", tu.bin_dir, name);
	return path;
}

pid_t tu_daemon_pid(void)
{
	char cmd[256], out[32] = { 0 };
	FILE *f;

	snprintf(cmd, sizeof(cmd), "fuser %s/sock.lock 2>/dev/null", tu.dir);
	f = popen(cmd, "r");
	if (!f)
		return 0;
	if (!fgets(out, sizeof(out), f))
		out[0] = 0;
	pclose(f);
	return (pid_t)atoi(out);
}

static void remove_dir(void)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", tu.dir);
	if (system(cmd) != 0) {
		/* leftover temp dir; harmless */
	}
}

static void kill_daemon(void)
{
	pid_t pid;

	if (!tu.dir[0] || getpid() != (pid_t)atoi(getenv("TU_OWNER") ? getenv("TU_OWNER") : "0"))
		return;
	for (unsigned i = 0; i < sizeof(tu.live_children) / sizeof(tu.live_children[0]); i++)
		if (tu.live_children[i] > 0) {
			kill(tu.live_children[i], SIGKILL);
			waitpid(tu.live_children[i], NULL, 0);
			tu.live_children[i] = 0;
		}
	pid = tu_daemon_pid();
	if (pid > 0)
		kill(pid, SIGKILL);
	remove_dir();
}

void tu_daemon_stop(void)
{
	pid_t pid;

	if (!tu.dir[0])
		return;
	pid = tu_daemon_pid();
	if (pid > 0) {
		/* SIGTERM first: a daemon that exits cleanly leaves nothing. */
		kill(pid, SIGTERM);
		for (int i = 0; i < 100 && kill(pid, 0) == 0; i++)
			tu_sleep_ms(10);
		if (kill(pid, 0) == 0)
			kill(pid, SIGKILL);
	}
	remove_dir();
	tu.dir[0] = 0;
}


static int write_file(const char *dir, const char *name, const char *val)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return tu_write_text(path, val);
}

static void freeze_cleanup(void)
{
	char cg[256], line[64];
	FILE *f;

	if (!tu.freeze_dir[0])
		return;
	write_file(tu.freeze_dir, tu.freeze_v1 ? "freezer.state" : "cgroup.freeze", tu.freeze_v1 ? "THAWED" : "0");
	/* Anything left in it goes back to the root before the rmdir. */
	snprintf(cg, sizeof(cg), "%s/cgroup.procs", tu.freeze_dir);
	f = fopen(cg, "r");
	while (f && fgets(line, sizeof(line), f))
		write_file(tu.freeze_root, "cgroup.procs", line);
	if (f)
		fclose(f);
	rmdir(tu.freeze_dir);
	tu.freeze_dir[0] = 0;
}

int tu_freeze(pid_t pid, int frozen)
{
	char v[32];

	if (!tu.freeze_dir[0]) {
		static const char *roots[] = { "/sys/fs/cgroup/unified", "/sys/fs/cgroup",
					       "/sys/fs/cgroup/freezer" };
		for (unsigned i = 0; i < 3 && !tu.freeze_dir[0]; i++) {
			char probe[192];
			snprintf(probe, sizeof(probe), "%s/sp-freeze-%d", roots[i], (int)getpid());
			if (mkdir(probe, 0755) < 0)
				continue;
			tu.freeze_v1 = i == 2;
			snprintf(v, sizeof(v), "%s", tu.freeze_v1 ? "freezer.state" : "cgroup.freeze");
			char f[256];
			snprintf(f, sizeof(f), "%s/%s", probe, v);
			if (access(f, W_OK) == 0) {
				snprintf(tu.freeze_dir, sizeof(tu.freeze_dir), "%s", probe);
				snprintf(tu.freeze_root, sizeof(tu.freeze_root), "%s", roots[i]);
				atexit(freeze_cleanup);
			} else {
				rmdir(probe);
			}
		}
		if (!tu.freeze_dir[0])
			return -1;
	}
	snprintf(v, sizeof(v), "%d", (int)pid);
	if (write_file(tu.freeze_dir, "cgroup.procs", v))
		return -1;
	if (tu.freeze_v1)
		return write_file(tu.freeze_dir, "freezer.state", frozen ? "FROZEN" : "THAWED");
	return write_file(tu.freeze_dir, "cgroup.freeze", frozen ? "1" : "0");
}

void tu_private_daemon(void)
{
	char sock[192], owner[32];

	snprintf(tu.dir, sizeof(tu.dir), "/tmp/sp-test-XXXXXX");
	if (!mkdtemp(tu.dir))
		TU_FAIL("mkdtemp: %s", strerror(errno));
	snprintf(sock, sizeof(sock), "%s/sock", tu.dir);
	setenv("SAMEPAGE_SOCKET", sock, 1);
	/* The test's settings, not those of whoever runs the tests. */
	snprintf(sock, sizeof(sock), "%s/config", tu.dir);
	setenv("XDG_CONFIG_HOME", sock, 1);
	setenv("SAMEPAGE_DAEMON", tu_bin("samepaged"), 1);
	snprintf(owner, sizeof(owner), "%d", (int)getpid());
	setenv("TU_OWNER", owner, 1);
	if (!tu.exit_hooked)
		atexit(kill_daemon);
	tu.exit_hooked = 1;
}

int tu_cli(const char *args)
{
	char cmd[PATH_MAX + 512];
	int st;

	snprintf(cmd, sizeof(cmd), "%s %s", tu_bin("samepage"), args);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

const char *tu_daemon_dir(void)
{
	return tu.dir;
}

static void slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, len - 1, f) : 0;

	buf[n] = 0;
	if (f)
		fclose(f);
}

void tu_sh_capture(const char *cmdline, struct tu_output *r)
{
	char dir[] = "/tmp/sp-out-XXXXXX", out[64], err[64];
	char *cmd;
	int st;

	TU_CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(out, sizeof(out), "%s/out", dir);
	snprintf(err, sizeof(err), "%s/err", dir);
	TU_CHECK(asprintf(&cmd, "( %s ) >%s 2>%s", cmdline, out, err) > 0, "asprintf");
	st = system(cmd);
	free(cmd);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	slurp(out, r->out, sizeof(r->out));
	slurp(err, r->err, sizeof(r->err));
	unlink(out);
	unlink(err);
	rmdir(dir);
}

void tu_cli_capture(const char *args, struct tu_output *r)
{
	char *cmd;

	TU_CHECK(asprintf(&cmd, "%s %s", tu_bin("samepage"), args) > 0, "asprintf");
	tu_sh_capture(cmd, r);
	free(cmd);
}

int tu_status_json(pid_t pid, char *buf, size_t len)
{
	char cmd[PATH_MAX + 128];
	size_t n;
	FILE *f;
	int st;

	if (pid)
		snprintf(cmd, sizeof(cmd), "%s status --json --pid %d 2>/dev/null",
			 tu_bin("samepage"), (int)pid);
	else
		snprintf(cmd, sizeof(cmd), "%s status --json 2>/dev/null", tu_bin("samepage"));
	buf[0] = 0;
	f = popen(cmd, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, len - 1, f);
	st = pclose(f);
	buf[n] = 0;
	return st == 0 && n ? 0 : -1;
}

long long tu_json_get(const char *json, const char *key)
{
	char pat[80];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(json, pat);
	return p ? atoll(p + strlen(pat)) : -1;
}

long long tu_status(const char *key)
{
	char buf[8192];

	tu_status_json(0, buf, sizeof(buf)); /* buf is "" when it failed */
	return tu_json_get(buf, key);
}

int tu_counter_reached(void *counter)
{
	const struct tu_counter *c = counter;

	return tu_status(c->key) >= c->at_least;
}

int tu_pool_empty(void *unused)
{
	(void)unused;
	return tu_status("pool_pages") == 0;
}

uint64_t tu_xorshift(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

void tu_fill(void *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, *q = p;

	for (size_t i = 0; i < len / 8; i++)
		q[i] = tu_xorshift(&x);
}

void *tu_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		TU_FAIL("mmap %zu: %s", len, strerror(errno));
	/* No THP: tests reason about 4 KiB pages. */
	madvise(p, len, MADV_NOHUGEPAGE);
	memset(p, 0x5a, len);
	return p;
}

static uint64_t pagemap_entry(pid_t pid, uintptr_t addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		TU_FAIL("open %s: %s", path, strerror(errno));
	if (pread(fd, &e, 8, (off_t)(addr / PAGE * 8)) != 8)
		TU_FAIL("pread %s", path);
	close(fd);
	return e;
}

uint64_t tu_pfn(pid_t pid, uintptr_t addr)
{
	uint64_t e = pagemap_entry(pid, addr);

	return (e >> 63) & 1 ? e & ((1ull << 55) - 1) : 0;
}

int tu_is_file_page(pid_t pid, uintptr_t addr)
{
	return (pagemap_entry(pid, addr) >> 61) & 1;
}

void tu_pagemap(pid_t pid, uintptr_t addr, size_t npages, uint64_t *out)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || pread(fd, out, npages * 8, (off_t)(addr / PAGE * 8)) != (ssize_t)(npages * 8))
		TU_FAIL("read %s: %s", path, strerror(errno));
	close(fd);
}

int tu_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void tu_pfns(pid_t pid, uintptr_t addr, size_t n, uint64_t *out, size_t *k)
{
	char path[64];
	uint64_t *e = malloc(n * 8);
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !e || pread(fd, e, n * 8, (off_t)(addr / PAGE * 8)) != (ssize_t)(n * 8))
		TU_FAIL("read %s", path);
	close(fd);
	for (size_t i = 0; i < n; i++)
		if ((e[i] >> 63) & 1)
			out[(*k)++] = e[i] & ((1ull << 55) - 1);
	free(e);
}

size_t tu_distinct(uint64_t *v, size_t n)
{
	size_t d = 0;

	qsort(v, n, sizeof(*v), tu_cmp_u64);
	for (size_t i = 0; i < n; i++)
		if (i == 0 || v[i] != v[d - 1])
			v[d++] = v[i];
	return d;
}

size_t tu_frames(const pid_t *pids, const uintptr_t *addrs, int nproc, size_t npages)
{
	uint64_t *all = malloc(npages * nproc * 8);
	size_t k = 0, distinct;

	if (!all)
		TU_FAIL("malloc");
	for (int p = 0; p < nproc; p++)
		tu_pfns(pids[p], addrs[p], npages, all, &k);
	distinct = tu_distinct(all, k);
	free(all);
	return distinct;
}

size_t tu_present(pid_t pid, uintptr_t addr, size_t npages)
{
	uint64_t *tmp = malloc(npages * 8);
	size_t k = 0;

	tu_pfns(pid, addr, npages, tmp, &k);
	free(tmp);
	return k;
}

/* VMAs of pid overlapping [s, e) whose maps line holds name (NULL: any). */
static int vmas_named(pid_t pid, uintptr_t s, uintptr_t e, const char *name)
{
	char path[64], line[512];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long vs, ve;
		if (sscanf(line, "%lx-%lx", &vs, &ve) != 2)
			continue;
		if (vs < e && ve > s && (!name || strstr(line, name)))
			n++;
	}
	fclose(f);
	return n;
}

int tu_pool_vmas(pid_t pid, uintptr_t s, uintptr_t e)
{
	return vmas_named(pid, s, e, "/memfd:samepage-pool");
}

int tu_vmas_over(pid_t pid, uintptr_t s, uintptr_t e)
{
	return vmas_named(pid, s, e, NULL);
}

size_t tu_file_pages(pid_t pid, uintptr_t addr, size_t npages)
{
	char path[64];
	uint64_t *e = malloc(npages * 8);
	size_t n = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !e ||
	    pread(fd, e, npages * 8, (off_t)(addr / PAGE * 8)) != (ssize_t)(npages * 8))
		TU_FAIL("read %s", path);
	close(fd);
	for (size_t i = 0; i < npages; i++)
		n += (e[i] >> 61) & 1;
	free(e);
	return n;
}

int tu_pool_inodes(pid_t pid, unsigned long *ino, int max)
{
	char path[64], line[512];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long vs, ve, off, inode;
		unsigned dmaj, dmin;
		char perms[8], *name = strstr(line, "/memfd:samepage-pool");
		int k;
		/* "/memfd:samepage-pool (deleted)"; "-zero" is the zero segment */
		if (!name || name[20] != ' ' ||
		    sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &vs, &ve, perms, &off, &dmaj, &dmin,
			   &inode) != 7)
			continue;
		for (k = 0; k < n && ino[k] != inode; k++)
			;
		if (k == n && n < max)
			ino[n++] = inode;
	}
	fclose(f);
	return n;
}

long tu_vmas(pid_t pid)
{
	char path[64], line[512];
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	/* A line longer than the buffer comes in parts: count its end. */
	while (fgets(line, sizeof(line), f))
		n += strchr(line, '\n') != NULL;
	fclose(f);
	return n;
}

uint64_t tu_proc_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t len = strlen(field);
	uint64_t v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, len) && line[len] == ':')
			v = strtoull(line + len + 1, NULL, 10);
	fclose(f);
	return v;
}

int tu_read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	if (n < 0)
		err = -errno;
	else
		buf[n] = 0;
	close(fd);
	return err;
}

int tu_write_text(const char *path, const char *s)
{
	size_t len = strlen(s);
	int fd = open(path, O_WRONLY | O_CLOEXEC), err = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	/* One write(): a sysfs or cgroup knob takes its value from one. */
	n = write(fd, s, len);
	if (n < 0)
		err = -errno;
	else if ((size_t)n != len)
		err = -EIO;
	close(fd);
	return err;
}

void tu_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

double tu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int tu_wait(int (*fn)(void *), void *arg, int timeout_s)
{
	double end = tu_now() + timeout_s;

	while (tu_now() < end) {
		if (fn(arg))
			return 1;
		usleep(50 * 1000);
	}
	return fn(arg);
}

void tu_spawn(struct tu_child *c, int (*fn)(int rd, int wr, void *arg), void *arg)
{
	int down[2], up[2];

	if (pipe(down) < 0 || pipe(up) < 0)
		TU_FAIL("pipe");
	c->pid = fork();
	if (c->pid < 0)
		TU_FAIL("fork: %s", strerror(errno));
	if (c->pid == 0) {
		close(down[1]);
		close(up[0]);
		_exit(fn(down[0], up[1], arg));
	}
	close(down[0]);
	close(up[1]);
	c->rd = up[0];
	c->wr = down[1];
	for (unsigned i = 0; i < sizeof(tu.live_children) / sizeof(tu.live_children[0]); i++)
		if (!tu.live_children[i]) {
			tu.live_children[i] = c->pid;
			break;
		}
}

int tu_send(int fd, const void *p, size_t len)
{
	return write(fd, p, len) == (ssize_t)len ? 0 : -1;
}

int tu_recv(int fd, void *p, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = read(fd, (char *)p + got, len - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

int tu_reap(struct tu_child *c)
{
	int st;

	close(c->rd);
	close(c->wr);
	while (waitpid(c->pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	for (unsigned i = 0; i < sizeof(tu.live_children) / sizeof(tu.live_children[0]); i++)
		if (tu.live_children[i] == c->pid)
			tu.live_children[i] = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

size_t tu_max_map_count(void)
{
	char buf[32];

	return tu_read_text("/proc/sys/vm/max_map_count", buf, sizeof(buf)) == 0 ?
		       strtoul(buf, NULL, 10) : 0;
}
