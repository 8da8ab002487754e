/* SPDX-License-Identifier: MIT */
/*
 * samepage-fs (fs/ksmfs.c): samepage's KSM files as a read-only FUSE tree
 * for monitoring agents outside `samepage run`:
 *  - DIR/kernel/mm/ksm lists every file of the kernel's /sys/kernel/mm/ksm;
 *  - while two processes share pages, DIR/kernel/mm/ksm/pages_sharing,
 *    pages_shared and run read what `samepage status --json` says;
 *  - opening a file for writing fails (EROFS), and a name the kernel
 *    does not have is ENOENT;
 *  - where Prometheus' node_exporter is installed, `node_exporter
 *    --path.sysfs=DIR --collector.disable-defaults --collector.ksmd`
 *    reports node_ksmd_pages_sharing as samepage counts it, with the
 *    collector's success at 1 (that part is skipped without it).
 * Skipped without /dev/fuse.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samepage.h"
#include "testutil.h"

#define NPAGES 256u
#define LEN ((size_t)NPAGES * PAGE)

static char mnt[64];
static pid_t fs_pid, exporter_pid;

static int child(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map(LEN);
	uintptr_t a = (uintptr_t)p;
	char cmd;
	(void)arg;

	tu_fill(p, LEN, 93);
	if (samepage_madvise(p, LEN, MADV_MERGEABLE))
		return 1;
	tu_send(wr, &a, sizeof(a));
	while (tu_recv(rd, &cmd, 1) == 0 && cmd != 'q')
		;
	return 0;
}

static void cleanup(void)
{
	if (exporter_pid > 0) {
		kill(exporter_pid, SIGTERM);
		waitpid(exporter_pid, NULL, 0);
	}
	if (fs_pid > 0) {
		/* The foreground FUSE daemon unmounts on SIGTERM; detach in
		 * case it could not. */
		kill(fs_pid, SIGTERM);
		waitpid(fs_pid, NULL, 0);
		umount2(mnt, MNT_DETACH);
		rmdir(mnt);
	}
}

static int mounted(void *arg)
{
	struct stat st;
	(void)arg;

	return stat(mnt, &st) == 0 && st.st_ino == 1; /* FUSE's root */
}

static void mount_fs(void)
{
	const char *bin = tu_bin("samepage-fs");

	if (access(bin, X_OK))
		TU_FAIL("%s: %s (make all builds it; needs libfuse3-dev)", bin, strerror(errno));
	snprintf(mnt, sizeof(mnt), "/tmp/sp-ksmfs-XXXXXX");
	TU_CHECK(mkdtemp(mnt), "mkdtemp");
	fs_pid = fork();
	TU_CHECK(fs_pid >= 0, "fork");
	if (fs_pid == 0) {
		execl(bin, bin, "-f", mnt, (char *)NULL);
		_exit(127);
	}
	atexit(cleanup);
	TU_CHECK(tu_wait(mounted, NULL, 10), "samepage-fs did not mount %s within 10 s", mnt);
}

/* The file's value, as a reader of DIR/kernel/mm/ksm sees it. */
static long long fs_value(const char *name)
{
	char path[128], buf[64];

	snprintf(path, sizeof(path), "%s/kernel/mm/ksm/%s", mnt, name);
	TU_CHECK(tu_read_text(path, buf, sizeof(buf)) == 0, "read %s", path);
	TU_CHECK(strchr(buf, '\n') == buf + strlen(buf) - 1, "%s: '%s' is not one line", path, buf);
	return atoll(buf);
}

static void agrees(const char *name)
{
	for (int tries = 0; tries < 50; tries++) {
		long long before = tu_status(name), v = fs_value(name), after = tu_status(name);
		if (before == after) {
			TU_CHECK(v == before, "%s/kernel/mm/ksm/%s reads %lld, samepage status says %lld",
				 mnt, name, v, before);
			return;
		}
		tu_sleep_ms(100);
	}
	TU_FAIL("%s never held still", name);
}

static void check_tree(void)
{
	static const char *const names[] = {
		"advisor_max_cpu", "advisor_max_pages_to_scan", "advisor_min_pages_to_scan",
		"advisor_mode", "advisor_target_scan_time", "full_scans", "general_profit",
		"ksm_zero_pages", "max_page_sharing", "merge_across_nodes", "pages_scanned",
		"pages_shared", "pages_sharing", "pages_skipped", "pages_to_scan",
		"pages_unshared", "pages_volatile", "run", "sleep_millisecs", "smart_scan",
		"stable_node_chains", "stable_node_chains_prune_millisecs", "stable_node_dups",
		"use_zero_pages",
	};
	char dir[128], path[192];
	size_t found = 0;
	struct dirent *e;
	DIR *d;
	int fd;

	snprintf(dir, sizeof(dir), "%s/kernel/mm/ksm", mnt);
	d = opendir(dir);
	TU_CHECK(d, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d)) != NULL)
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			found += !strcmp(e->d_name, names[i]);
	closedir(d);
	TU_CHECK(found == sizeof(names) / sizeof(names[0]), "%s lists %zu of the kernel's %zu files",
		 dir, found, sizeof(names) / sizeof(names[0]));
	snprintf(path, sizeof(path), "%s/run", dir);
	fd = open(path, O_WRONLY);
	TU_CHECK(fd < 0 && errno == EROFS, "open %s for writing: %d (%s)", path, fd,
		 fd < 0 ? strerror(errno) : "opened");
	snprintf(path, sizeof(path), "%s/no_such_knob", dir);
	TU_CHECK(open(path, O_RDONLY) < 0 && errno == ENOENT, "%s exists", path);
}

/* ---- node_exporter ---- */

static const char *exporter_bin(void)
{
	static const char *const bins[] = { "/usr/bin/prometheus-node-exporter",
					    "/usr/bin/node_exporter", "/usr/local/bin/node_exporter" };

	for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]); i++)
		if (access(bins[i], X_OK) == 0)
			return bins[i];
	return NULL;
}

/* GET /metrics from 127.0.0.1:port into buf; 0 or -1. */
static int scrape(int port, char *buf, size_t len)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	static const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
	size_t got = 0;
	ssize_t r;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while (got + 1 < len && (r = read(fd, buf + got, len - 1 - got)) > 0)
		got += (size_t)r;
	buf[got] = 0;
	close(fd);
	return got ? 0 : -1;
}

/* The value of a metric line "NAME VALUE". */
static int metric(const char *text, const char *name, double *v)
{
	char pat[128];
	const char *p;

	snprintf(pat, sizeof(pat), "\n%s ", name);
	p = strstr(text, pat);
	return p && sscanf(p + strlen(pat), "%lf", v) == 1;
}

static void check_exporter(void)
{
	const char *bin = exporter_bin();
	static char text[1 << 20];
	char sysfs[128], listen[64];
	double sharing = -1, ok = -1, run = -1;
	int port = 20000 + getpid() % 20000, got = 0;

	if (!bin) {
		printf("ksm_fs: node_exporter not installed (apt-get install prometheus-node-exporter):"
		       " its check skipped\n");
		return;
	}
	snprintf(sysfs, sizeof(sysfs), "--path.sysfs=%s", mnt);
	snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", port);
	exporter_pid = fork();
	TU_CHECK(exporter_pid >= 0, "fork");
	if (exporter_pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(bin, bin, sysfs, "--collector.disable-defaults", "--collector.ksmd", listen,
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 100 && !got; i++) {
		tu_sleep_ms(100);
		got = scrape(port, text, sizeof(text)) == 0;
	}
	TU_CHECK(got, "%s answered nothing on 127.0.0.1:%d", bin, port);
	TU_CHECK(metric(text, "node_scrape_collector_success{collector=\"ksmd\"}", &ok) && ok == 1,
		 "node_exporter's ksmd collector failed: %s", text);
	TU_CHECK(metric(text, "node_ksmd_pages_sharing", &sharing) &&
		 (long long)sharing == tu_status("pages_sharing"),
		 "node_ksmd_pages_sharing %.0f, samepage status says %lld", sharing,
		 tu_status("pages_sharing"));
	TU_CHECK(metric(text, "node_ksmd_run", &run) && run == 1, "node_ksmd_run %.0f", run);
	printf("ksm_fs: node_exporter's ksmd collector reports node_ksmd_pages_sharing %.0f\n",
	       sharing);
}

int main(void)
{
	struct tu_child kids[2];
	pid_t pids[2];
	uintptr_t addrs[2];

	if (access("/dev/fuse", R_OK | W_OK))
		tu_skip("no /dev/fuse");
	tu_require_merging();
	tu_private_daemon();
	for (int i = 0; i < 2; i++) {
		tu_spawn(&kids[i], child, NULL);
		pids[i] = kids[i].pid;
		TU_CHECK(tu_recv(kids[i].rd, &addrs[i], sizeof(addrs[i])) == 0, "child %d died", i);
	}
	for (int i = 0; i < 300 && (tu_frames(pids, addrs, 2, NPAGES) > NPAGES + 4 ||
				    tu_status("pages_sharing") <= 0); i++)
		tu_sleep_ms(100);
	TU_CHECK(tu_status("pages_sharing") > 0, "two processes not merged after 30 s");
	mount_fs();
	check_tree();
	agrees("pages_sharing");
	agrees("pages_shared");
	agrees("run");
	agrees("pages_to_scan");
	printf("ksm_fs: FUSE tree ok\n");
	fflush(stdout);
	check_exporter();
	for (int i = 0; i < 2; i++) {
		tu_send(kids[i].wr, "q", 1);
		TU_CHECK(tu_reap(&kids[i]) == 0, "child %d", i);
	}
	printf("ksm_fs: ok\n");
	return 0;
}
