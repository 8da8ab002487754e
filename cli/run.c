/* SPDX-License-Identifier: MIT */
/*
 * run — a program with libsamepage preloaded, its daemon started, the
 * environment every process below it inherits set: the daemon's socket,
 * merge-any and the merge domain.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "env.h"
#include "exe.h"

static const char help_text[] =
	"usage: samepage run [--merge-any] [--domain NAME] [--] CMD [ARGS...]\n"
	"\n"
	"Run CMD with libsamepage preloaded, starting the user's daemon if none runs.\n"
	"madvise(MADV_MERGEABLE) and prctl(PR_SET_MEMORY_MERGE) then behave as on\n"
	"kernel KSM, in CMD and everything it starts.\n"
	"\n"
	"  -a, --merge-any    merge all private anonymous memory, as\n"
	"                     prctl(PR_SET_MEMORY_MERGE, 1) at start\n"
	"  -D, --domain NAME  merge only with processes of merge domain NAME (1 to 255\n"
	"                     bytes)\n"
	"  -h, --help         this text\n";

struct run_opts {
	int any, help;
	const char *domain;
};

static int run_options(struct cli *c, int argc, char **argv, struct run_opts *o)
{
	static const struct option longs[] = {
		{ "merge-any", no_argument, NULL, 'a' },
		{ "domain", required_argument, NULL, 'D' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	/* '+': options end at CMD, whose own options are its own. */
	while ((opt = cli_getopt(c, argc, argv, "+:aD:h", longs)) != -1) {
		switch (opt) {
		case 'a': o->any = 1; break;
		case 'D':
			if (!optarg[0] || strlen(optarg) > SP_DOMAIN_MAX)
				return cli_usage_error(c, "a merge domain is 1 to %d bytes",
						       SP_DOMAIN_MAX);
			o->domain = optarg;
			break;
		case 'h': o->help = 1; return 0;
		default: return -EINVAL;
		}
	}
	if (optind >= argc)
		return cli_usage_error(c, "which command? (samepage run -- CMD [ARGS...])");
	return 0;
}

/* The library beside us: ../lib/libsamepage.so of bin/. */
static int find_lib(char *lib, size_t len)
{
	char self[PATH_MAX - 64];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n <= 0)
		return -errno;
	self[n] = 0;
	*strrchr(self, '/') = 0;
	snprintf(lib, len, "%s/../lib/libsamepage.so", self);
	if (access(lib, R_OK) < 0) {
		int err = -errno;
		fprintf(stderr, "samepage run: %s: %s\n", lib, strerror(-err));
		return err;
	}
	return 0;
}

/* An AddressSanitizer build of the library (build-asan) only loads into a
 * program whose first library is ASan's runtime: uninstrumented programs
 * (bash, python) get that runtime preloaded ahead of it, found where this
 * program has it, and leak checking off unless asked for (their leaks are
 * not ours to report, and would change their exit status). */
static void asan_first(char *pre, size_t len)
{
#if defined(__SANITIZE_ADDRESS__)
	extern void __asan_init(void);
	Dl_info info;
	size_t n, have = strlen(pre);

	if (!dladdr((void *)__asan_init, &info) || !info.dli_fname || !strchr(info.dli_fname, '/'))
		return;
	n = strlen(info.dli_fname) + 1; /* "runtime:" */
	if (n + have + 1 > len)
		return;
	memmove(pre + n, pre, have + 1);
	memcpy(pre, info.dli_fname, n - 1);
	pre[n - 1] = ':';
	setenv("ASAN_OPTIONS", "detect_leaks=0", 0);
#else
	(void)pre;
	(void)len;
#endif
}

/* What every process below us inherits. */
static void set_env(const struct cli *c, const char *lib, const struct run_opts *o, int warned)
{
	const char *old = getenv("LD_PRELOAD");
	char pre[2 * PATH_MAX], bin[PATH_MAX];
	const char *from;

	snprintf(pre, sizeof(pre), "%s%s%s", lib, old && *old ? ":" : "", old ? old : "");
	asan_first(pre, sizeof(pre));
	cli_daemon_bin(bin, sizeof(bin), &from);
	/* The daemon we just reached, by its path: every process below us
	 * dials this one, whatever their environments later say of XDG. */
	setenv("SAMEPAGE_SOCKET", c->sock, 1);
	setenv("LD_PRELOAD", pre, 1);
	setenv("SAMEPAGE_DAEMON", bin, 1);
	if (o->any)
		setenv("SAMEPAGE_MERGE_ANY", "1", 1);
	if (o->domain)
		setenv("SAMEPAGE_DOMAIN", o->domain, 1);
	/* Told once here; not again by each process (lib/api.c). */
	if (warned)
		setenv("SAMEPAGE_UFFD_WARNED", "1", 1);
	else
		unsetenv("SAMEPAGE_UFFD_WARNED");
}

/* A command that cannot load libsamepage runs, unmerged, and we say so
 * once, here (exe.h): its children exec'ed under merge-any are told by the
 * library's exec wrappers. */
static void warn_unserved(const char *cmd)
{
	char path[PATH_MAX];
	int kind;

	if (sp_exec_which(cmd, path, sizeof(path)))
		return; /* execvp says what is wrong with it */
	kind = sp_exec_kind(path);
	if (kind > SP_EXEC_OK)
		fprintf(stderr, "samepage: %s %s; it runs unmerged\n", path, sp_exec_why(kind));
}

int cmd_run(struct cli *c, int argc, char **argv)
{
	struct run_opts o = { 0 };
	char lib[PATH_MAX];
	int err = run_options(c, argc, argv, &o), warned;

	if (err)
		return EXIT_USAGE;
	if (o.help)
		return cli_help(help_text);
	if (find_lib(lib, sizeof(lib)))
		return 1;
	warned = uffd_check(argv[optind]) < 0;
	err = cli_connect(c, 1);
	if (err)
		return cli_fail(c, "run", err);
	cli_disconnect(c);
	set_env(c, lib, &o, warned);
	warn_unserved(argv[optind]);
	execvp(argv[optind], argv + optind);
	fprintf(stderr, "samepage run: %s: %s\n", argv[optind], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
