/* SPDX-License-Identifier: MIT */
/* path — see path.h. */
#define _GNU_SOURCE
#include "path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "env.h"

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

void sp_where_now(struct sp_where *w)
{
	const struct sp_inherited *in = sp_inherited();

	w->socket = in->socket ? in->socket : sp_env("SAMEPAGE_SOCKET");
	w->xdg = in->xdg ? in->xdg : sp_env("XDG_RUNTIME_DIR");
}

int sp_socket_path(char *buf, size_t len)
{
	struct sp_where w;

	sp_where_now(&w);
	return sp_socket_path_at(&w, buf, len);
}

int sp_socket_path_at(const struct sp_where *w, char *buf, size_t len)
{
	const char *env = w->socket, *xdg = w->xdg;
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

