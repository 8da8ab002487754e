/* SPDX-License-Identifier: MIT */
/* samepaged — the user's daemon; see daemon/daemon.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conf.h"
#include "daemon.h"
#include "num.h"
#include "path.h"
#include "version.h"

static const char usage_text[] =
	"usage: samepaged [--daemonize] [--socket PATH] [--idle-exit SECONDS]\n"
	"\n"
	"The per-user samepage daemon: owns the pool of merged pages and decides what\n"
	"merges. Normally started on demand by libsamepage or `samepage run`.\n"
	"\n"
	"  -d, --daemonize          detach; return once the socket listens\n"
	"  -s, --socket PATH        listen on PATH (default: $SAMEPAGE_SOCKET, else\n"
	"                           $XDG_RUNTIME_DIR/samepage/sock, else /tmp/samepage-UID/sock)\n"
	"  -i, --idle-exit SECONDS  exit after SECONDS with no process (0: never; default\n"
	"                           60 with --daemonize, else never; samepage.conf's idle_exit)\n"
	"  -h, --help               this text\n"
	"  -V, --version            the version\n"
	"\n"
	"Settings: " SP_CONF_SYSTEM ", then $XDG_CONFIG_HOME/samepage/samepage.conf\n"
	"(~/.config/samepage/samepage.conf) over it; read at start and on SIGHUP.\n";

struct options {
	int detach;
	int idle;          /* --idle-exit, or -1 */
	const char *sock;  /* --socket, or NULL */
};

static void bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void bad_usage(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("samepaged: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'samepaged --help'.\n", stderr);
	exit(2);
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longs[] = {
		{ "daemonize", no_argument, NULL, 'd' },
		{ "socket", required_argument, NULL, 's' },
		{ "idle-exit", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int c;

	*o = (struct options){ .idle = -1 };
	opterr = 0; /* told below, as the samepage command tells them */
	while ((c = getopt_long(argc, argv, ":ds:i:hV", longs, NULL)) != -1) {
		switch (c) {
		case 'd': o->detach = 1; break;
		case 's': o->sock = optarg; break;
		case 'i':
			if (sp_parse_u64(optarg, 0, SP_CONF_IDLE_MAX, &v))
				bad_usage("--idle-exit: '%s' is not a number of seconds (0 "
					  "for never)", optarg);
			o->idle = (int)v;
			break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case 'V':
			printf("samepaged %s (protocol %d)\n", SAMEPAGE_RELEASE, SP_PROTO_VERSION);
			exit(0);
		case ':': bad_usage("option '%s' needs a value", argv[optind - 1]);
		default: bad_usage("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		bad_usage("unexpected argument '%s'", argv[optind]);
	if (o->sock && !*o->sock)
		bad_usage("--socket: the path is empty");
}

/* Detach, and let the caller return only once the socket listens: the
 * grandchild writes one byte (0 ok, else errno) into the pipe, and the
 * caller's stderr hears why it could not (the grandchild's is the log). */
static int daemonize(int *ready, const char *path)
{
	int p[2];
	pid_t pid;
	unsigned char st = EIO;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		if (read(p[0], &st, 1) != 1)
			st = EIO;
		if (st && st != EADDRINUSE)
			fprintf(stderr, "samepaged: cannot serve %s: %s\n", path, strerror(st));
		/* Whoever started us sees a broken samepage.conf on its own
		 * terminal (the log hears it too); not when another daemon
		 * already served, or every racing starter would say it. */
		if (st == 0)
			samepaged_config_check();
		_exit(st == 0 || st == EADDRINUSE ? 0 : 1);
	}
	close(p[0]);
	setsid();
	if (fork() > 0)
		_exit(0);
	int nul = open("/dev/null", O_RDWR);
	const char *log = getenv("SAMEPAGE_LOG");
	int lfd = log ? open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(lfd >= 0 ? lfd : nul, 2);
	*ready = p[1];
	return 0;
}

int main(int argc, char **argv)
{
	struct options o;
	char path[108];
	int ready = -1, err;

	parse_options(argc, argv, &o);
	if (o.sock && (size_t)snprintf(path, sizeof(path), "%s", o.sock) >= sizeof(path)) {
		fprintf(stderr, "samepaged: %s: %s\n", o.sock, strerror(ENAMETOOLONG));
		return 1;
	} else if (!o.sock && (err = sp_socket_path(path, sizeof(path))) < 0) {
		fprintf(stderr, "samepaged: socket path: %s\n", strerror(-err));
		return 1;
	}
	sp_log_init("samepaged");
	signal(SIGPIPE, SIG_IGN);
	/* Started on demand, we inherit whatever address space limit the
	 * starting program runs under (ulimit -v): the pool's segments need
	 * more. As far as the hard limit allows. */
	struct rlimit as;
	if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != as.rlim_max) {
		as.rlim_cur = as.rlim_max;
		setrlimit(RLIMIT_AS, &as);
	}
	if (o.detach && (err = daemonize(&ready, path)) < 0) {
		fprintf(stderr, "samepaged: %s\n", strerror(-err));
		return 1;
	}
	err = samepaged_run(path, o.idle, ready);
	if (err == -EADDRINUSE) {
		if (!o.detach)
			fprintf(stderr, "samepaged: another daemon serves %s\n", path);
		return o.detach ? 0 : 1;
	}
	if (err) {
		fprintf(stderr, "samepaged: %s: %s\n", path, strerror(-err));
		return 1;
	}
	return 0;
}
