/* SPDX-License-Identifier: MIT */
/* path — see path.h. */
#define _GNU_SOURCE
#include "path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int own_private_dir(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (lstat(dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
		return -EPERM;
	return 0;
}

int sp_socket_path(char *buf, size_t len)
{
	const char *env = getenv("SAMEPAGE_SOCKET");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char dir[512];
	int n, err;

	if (env && *env) {
		n = snprintf(buf, len, "%s", env);
		return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
	}
	if (xdg && *xdg && access(xdg, W_OK) == 0)
		n = snprintf(dir, sizeof(dir), "%s/samepage", xdg);
	else
		n = snprintf(dir, sizeof(dir), "/tmp/samepage-%u", (unsigned)geteuid());
	if (n <= 0 || (size_t)n >= sizeof(dir))
		return -ENAMETOOLONG;
	err = own_private_dir(dir);
	if (err)
		return err;
	n = snprintf(buf, len, "%s/sock", dir);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}
