/* SPDX-License-Identifier: MIT */
/*
 * `samepage metrics` for Prometheus (issue 13, "See what it does"): two
 * processes merge NP pages; the metrics say so under node_exporter's ksmd
 * names (node_ksmd_pages_sharing equal to `samepage status`'s
 * pages_sharing) and samepage's own, with one series per process under
 * --per-process. promtool accepts them; --textfile writes them for
 * node_exporter's textfile collector, which serves them; a real
 * Prometheus server scraping that node_exporter has them in its database.
 * The parts that need promtool, node_exporter or prometheus skip when
 * those are not installed (scripts/deps.sh installs them).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define NP 512u

static char dir[128];

static int holder(int rd, int wr, void *arg)
{
	unsigned char *p = tu_map((size_t)NP * PAGE);
	char c;

	(void)arg;
	tu_fill(p, (size_t)NP * PAGE, 4242);
	TU_CHECK_RETURN(madvise(p, (size_t)NP * PAGE, MADV_MERGEABLE) == 0, "madvise");
	tu_send(wr, &p, sizeof(p));
	tu_recv(rd, &c, 1);
	return 0;
}

/* Output of a shell command into out; its exit status. */
static int sh(const char *cmd, char *out, size_t len)
{
	FILE *f = popen(cmd, "r");
	size_t n;

	TU_CHECK(f, "popen %s", cmd);
	n = fread(out, 1, len - 1, f);
	out[n] = 0;
	int st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* The value of the sample line starting with name (labels included). */
static double sample(const char *text, const char *name)
{
	for (const char *p = text; (p = strstr(p, name)); p++)
		if ((p == text || p[-1] == '\n') && p[strlen(name)] == ' ')
			return strtod(p + strlen(name) + 1, NULL);
	return -1;
}

static int have(const char *prog)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
	return system(cmd) == 0;
}

/* GET path from 127.0.0.1:port into out (the whole response). */
static int http_get(int port, const char *path, char *out, size_t len)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	char req[512];
	size_t got = 0;
	ssize_t n;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	if (write(fd, req, strlen(req)) < 0) {
		close(fd);
		return -1;
	}
	while (got + 1 < len && (n = read(fd, out + got, len - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = 0;
	close(fd);
	return 0;
}

static pid_t start(const char *cmd)
{
	pid_t p = fork();

	if (p == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return p;
}

static void stop(pid_t p)
{
	if (p > 0) {
		kill(p, SIGTERM);
		waitpid(p, NULL, 0);
	}
}

/* node_exporter's textfile collector serves the file; Prometheus scrapes
 * node_exporter and answers a query for the saving. */
static void through_prometheus(const char *textdir, long long sharing)
{
	static char out[1 << 20];
	char cmd[1024], conf[256];
	pid_t ne, pr = -1;
	FILE *f;
	int ok = 0;
	/* Ports of this run only: the sanitizer suites run side by side. */
	int ne_port = 20000 + getpid() % 20000, pr_port = ne_port + 20000;

	if (!have("prometheus-node-exporter")) {
		printf("node_exporter not installed: not checked\n");
		return;
	}
	snprintf(cmd, sizeof(cmd), "exec prometheus-node-exporter --collector.disable-defaults "
		 "--collector.textfile --collector.textfile.directory=%s "
		 "--web.listen-address=127.0.0.1:%d >%s/ne.log 2>&1", textdir, ne_port, dir);
	ne = start(cmd);
	for (int i = 0; i < 100 && !ok; i++) {
		tu_sleep_ms(100);
		ok = http_get(ne_port, "/metrics", out, sizeof(out)) == 0 &&
		     strstr(out, "node_ksmd_pages_sharing");
	}
	TU_CHECK(ok, "node_exporter's textfile collector did not serve the metrics:\n%.2000s", out);
	TU_CHECK(sample(strstr(out, "\nnode_ksmd_pages_sharing") + 1, "node_ksmd_pages_sharing") ==
		 (double)sharing, "node_exporter serves another pages_sharing");
	printf("node_exporter serves them\n");
	if (!have("prometheus")) {
		printf("prometheus not installed: not scraped\n");
		stop(ne);
		return;
	}
	snprintf(conf, sizeof(conf), "%s/prometheus.yml", dir);
	f = fopen(conf, "w");
	TU_CHECK(f, "prometheus.yml");
	fprintf(f, "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: samepage\n"
		   "    static_configs:\n      - targets: ['127.0.0.1:%d']\n", ne_port);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "exec prometheus --config.file=%s --storage.tsdb.path=%s/tsdb "
		 "--web.listen-address=127.0.0.1:%d >%s/prom.log 2>&1", conf, dir, pr_port, dir);
	pr = start(cmd);
	ok = 0;
	for (int i = 0; i < 300 && !ok; i++) {
		tu_sleep_ms(100);
		ok = http_get(pr_port, "/api/v1/query?query=node_ksmd_pages_sharing", out,
			      sizeof(out)) == 0 && strstr(out, "\"result\":[{");
	}
	stop(pr);
	stop(ne);
	TU_CHECK(ok, "Prometheus did not get node_ksmd_pages_sharing:\n%.2000s", out);
	snprintf(cmd, sizeof(cmd), "\"%lld\"]", sharing);
	TU_CHECK(strstr(out, cmd), "Prometheus has another value than %lld: %.1000s", sharing, out);
	printf("Prometheus scraped node_ksmd_pages_sharing %lld\n", sharing);
}

int main(void)
{
	static char out[1 << 16];
	struct tu_child a, b;
	unsigned char *pa, *pb;
	char cmd[1024], key[128], textdir[192];
	double t0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	tu_require_merging();
	tu_private_daemon();
	snprintf(dir, sizeof(dir), "%s", getenv("SAMEPAGE_SOCKET"));
	*strrchr(dir, '/') = 0;
	tu_spawn(&a, holder, NULL);
	tu_spawn(&b, holder, NULL);
	TU_CHECK(tu_recv(a.rd, &pa, sizeof(pa)) == 0 && tu_recv(b.rd, &pb, sizeof(pb)) == 0,
		 "holders");
	t0 = tu_now();
	while (tu_status("pages_sharing") < (long long)NP && tu_now() < t0 + 30)
		tu_sleep_ms(50);
	long long sharing = tu_status("pages_sharing");
	TU_CHECK(sharing >= (long long)NP, "not merged: pages_sharing %lld", sharing);

	snprintf(cmd, sizeof(cmd), "%s metrics --per-process", tu_bin("samepage"));
	TU_CHECK(sh(cmd, out, sizeof(out)) == 0, "samepage metrics failed: %s", out);
	TU_CHECK(sample(out, "node_ksmd_pages_sharing") == (double)sharing,
		 "node_ksmd_pages_sharing %g, status says %lld", sample(out, "node_ksmd_pages_sharing"),
		 sharing);
	TU_CHECK(sample(out, "node_ksmd_run") == 1 && sample(out, "samepage_up") == 1 &&
		 sample(out, "samepage_saved_bytes") == (double)sharing * PAGE,
		 "run, up or saved_bytes wrong:\n%s", out);
	TU_CHECK(strstr(out, "# TYPE node_ksmd_full_scans_total counter"), "full_scans type");
	snprintf(key, sizeof(key), "samepage_process_merging_pages{pid=\"%d\",", (int)a.pid);
	TU_CHECK(strstr(out, key), "no series for process %d:\n%s", (int)a.pid, out);
	printf("metrics: node_ksmd_pages_sharing %g, a series per process\n",
	       sample(out, "node_ksmd_pages_sharing"));

	if (have("promtool")) {
		snprintf(cmd, sizeof(cmd), "%s metrics --per-process | promtool check metrics 2>&1",
			 tu_bin("samepage"));
		TU_CHECK(sh(cmd, out, sizeof(out)) == 0, "promtool check metrics:\n%s", out);
		printf("promtool check metrics: clean\n");
	} else {
		printf("promtool not installed: not checked\n");
	}

	snprintf(textdir, sizeof(textdir), "%s/textfile", dir);
	snprintf(cmd, sizeof(cmd), "mkdir -p %s && %s metrics --textfile %s/samepage.prom && "
		 "cat %s/samepage.prom", textdir, tu_bin("samepage"), textdir, textdir);
	TU_CHECK(sh(cmd, out, sizeof(out)) == 0 && sample(out, "node_ksmd_pages_sharing") ==
		 (double)sharing, "--textfile:\n%s", out);
	snprintf(cmd, sizeof(cmd), "%s metrics --interval 0 2>&1", tu_bin("samepage"));
	TU_CHECK(sh(cmd, out, sizeof(out)) == 2, "a bad --interval was taken: %s", out);

	through_prometheus(textdir, sharing);
	tu_send(a.wr, "q", 1);
	tu_send(b.wr, "q", 1);
	TU_CHECK(tu_reap(&a) == 0 && tu_reap(&b) == 0, "holders exit");
	return 0;
}
