/* SPDX-License-Identifier: MIT */
/*
 * samepage-fs — samepage's KSM files as a read-only FUSE tree, for
 * monitoring agents outside `samepage run` that read sysfs with their
 * stock configuration: `samepage-fs DIR` shows DIR/kernel/mm/ksm/... with
 * the text `samepage run` shows for /sys/kernel/mm/ksm/... (common/
 * ksmfiles.c renders both), so that Prometheus' node_exporter
 * --path.sysfs=DIR --collector.ksmd reports samepage. A static Go program
 * like node_exporter makes its system calls itself: no preloaded library
 * can serve it, a file system can.
 *
 * Each open asks the user's daemon for its counters once (a fresh
 * observer connection: the daemon may have been replaced since) and the
 * file shows that text until it is closed, as a sysfs file read through
 * once. With no daemon running, opening a file fails with EIO.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn.h"
#include "ksmfiles.h"
#include "path.h"

#define DIR_PREFIX "/kernel/mm/ksm"
#define STAT_WAIT_S 2

/* The directories above the files, outermost first. */
static const char *const dirs[] = { "/", "/kernel", "/kernel/mm", DIR_PREFIX };
#define NDIRS (sizeof(dirs) / sizeof(dirs[0]))

static int dir_index(const char *path)
{
	for (size_t i = 0; i < NDIRS; i++)
		if (!strcmp(path, dirs[i]))
			return (int)i;
	return -1;
}

static const struct sp_ksm_file *file_of(const char *path)
{
	static const char pre[] = DIR_PREFIX "/";

	if (strncmp(path, pre, sizeof(pre) - 1))
		return NULL;
	return sp_ksm_file(path + sizeof(pre) - 1);
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof(*st));
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (dir_index(path) >= 0) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	if (!file_of(path))
		return -ENOENT;
	/* sysfs says a page for every attribute; reads end at the text. */
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = 4096;
	return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	int d = dir_index(path);

	(void)off;
	(void)fi;
	(void)flags;
	if (d < 0)
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if ((size_t)d + 1 < NDIRS)
		return fill(buf, strrchr(dirs[d + 1], '/') + 1, NULL, 0, 0) ? -ENOMEM : 0;
	for (size_t i = 0; i < sp_ksm_nfiles; i++)
		if (fill(buf, sp_ksm_files[i].name, NULL, 0, 0))
			return -ENOMEM;
	return 0;
}

/* The daemon's counters and knobs, over a connection of this call's own. */
static int daemon_stat(struct sp_stat_r *r)
{
	struct sp_statreq q = { 0 };
	unsigned char *buf = malloc(SP_MAX_MSG);
	char path[108];
	struct sp_msg m;
	int fd = -1, err = buf ? sp_socket_path(path, sizeof(path)) : -ENOMEM;

	if (!err && (fd = sp_observe(path, STAT_WAIT_S, buf)) < 0)
		err = fd;
	if (!err)
		err = sp_call(fd, buf, C_STAT, &q, sizeof(q), D_STAT, &m);
	if (!err)
		memcpy(r, m.p, sizeof(*r));
	if (fd >= 0)
		close(fd);
	free(buf);
	return err;
}

struct text { int len; char s[SP_KSM_TEXT_MAX]; };

static int fs_open(const char *path, struct fuse_file_info *fi)
{
	const struct sp_ksm_file *f = file_of(path);
	struct sp_stat_r r;
	struct text *t;
	int err;

	if (!f)
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	memset(&r, 0, sizeof(r));
	err = f->kind == KSM_KNOB || f->kind == KSM_COUNTER ? daemon_stat(&r) : 0;
	if (err) {
		fprintf(stderr, "samepage-fs: %s: no daemon answers (%s)\n", path, strerror(-err));
		return -EIO;
	}
	t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	err = t->len = sp_ksm_render(f, &r, t->s, sizeof(t->s));
	if (err < 0) {
		free(t);
		return err;
	}
	fi->fh = (uint64_t)(uintptr_t)t;
	/* The text, not the page cache: it changes from one open to the next,
	 * and st_size is sysfs' 4096, not its length. */
	fi->direct_io = 1;
	return 0;
}

static int fs_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi)
{
	const struct text *t = (const struct text *)(uintptr_t)fi->fh;

	(void)path;
	if (off >= t->len)
		return 0;
	if (n > (size_t)(t->len - off))
		n = (size_t)(t->len - off);
	memcpy(buf, t->s + off, n);
	return (int)n;
}

static int fs_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	free((void *)(uintptr_t)fi->fh);
	return 0;
}

static const struct fuse_operations ops = {
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.read = fs_read,
	.release = fs_release,
};

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	int r;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fprintf(stderr, "usage: samepage-fs [-f] [-o allow_other] MOUNTPOINT\n"
				"  shows MOUNTPOINT/kernel/mm/ksm/... as `samepage run` shows "
				"/sys/kernel/mm/ksm/...\n"
				"  (node_exporter --path.sysfs=MOUNTPOINT --collector.ksmd); "
				"unmount with fusermount3 -u\n");
		return 2;
	}
	/* Read-only, and named so that mount(8) says what it is. */
	for (int i = 0; i < argc; i++)
		if (fuse_opt_add_arg(&args, argv[i]) < 0)
			return 1;
	if (fuse_opt_add_arg(&args, "-oro,fsname=samepage,subtype=samepage") < 0)
		return 1;
	r = fuse_main(args.argc, args.argv, &ops, NULL);
	fuse_opt_free_args(&args);
	return r;
}
