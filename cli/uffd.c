/* SPDX-License-Identifier: MIT */
/*
 * uffd — whether this user can have userfaultfd, without which nothing
 * merges, and if not, the exact commands that give it: membership of the
 * group `samepage`, which samepage's udev rule lets open /dev/userfaultfd
 * read-write. Told once per `samepage run`; the processes it starts hear
 * SAMEPAGE_UFFD_WARNED=1 and keep quiet (lib/api.c).
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "os.h"

#define UFFD_DEV "/dev/userfaultfd"
#define UFFD_GROUP "samepage"

/* What stands between this user and /dev/userfaultfd. */
struct uffd_diag {
	char user[64];
	int has_dev;        /* /dev/userfaultfd exists (Linux 6.1+) */
	int dev_ready;      /* it belongs to the group, read-write for it */
	int group_exists;
	int member;         /* the group database lists the user */
	int in_session;     /* this process has the group (a login since) */
	char rule[PATH_MAX]; /* samepage's udev rule as installed, or "" */
};

/* Where udev reads rules from; `make install` puts samepage's in
 * PREFIX/lib/udev/rules.d. */
static void find_rule(char *out, size_t len)
{
	static const char *const dirs[] = {
		"/etc/udev/rules.d", "/run/udev/rules.d", "/usr/local/lib/udev/rules.d",
		"/usr/lib/udev/rules.d", "/lib/udev/rules.d",
	};
	char pat[128];
	glob_t g;

	out[0] = 0;
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]) && !out[0]; i++) {
		snprintf(pat, sizeof(pat), "%s/*samepage*.rules", dirs[i]);
		if (glob(pat, 0, NULL, &g) == 0 && g.gl_pathc)
			snprintf(out, len, "%s", g.gl_pathv[0]);
		globfree(&g);
	}
}

static int listed(const struct group *gr, const char *user, gid_t primary)
{
	if (gr->gr_gid == primary)
		return 1;
	for (char **m = gr->gr_mem; m && *m; m++)
		if (!strcmp(*m, user))
			return 1;
	return 0;
}

static void diagnose(struct uffd_diag *d)
{
	struct passwd *pw = getpwuid(geteuid());
	struct group *gr = getgrnam(UFFD_GROUP);
	struct stat st;

	memset(d, 0, sizeof(*d));
	snprintf(d->user, sizeof(d->user), "%s", pw ? pw->pw_name : "$USER");
	d->has_dev = stat(UFFD_DEV, &st) == 0;
	d->group_exists = gr != NULL;
	if (gr) {
		d->dev_ready = d->has_dev && st.st_gid == gr->gr_gid &&
			       (st.st_mode & (S_IRGRP | S_IWGRP)) == (S_IRGRP | S_IWGRP);
		d->member = pw && listed(gr, pw->pw_name, pw->pw_gid);
		d->in_session = getegid() == gr->gr_gid || group_member(gr->gr_gid);
	}
	find_rule(d->rule, sizeof(d->rule));
}

/* The commands that make /dev/userfaultfd read-write for the group now,
 * when udev has not done it yet. */
static void advise_device(const struct uffd_diag *d)
{
	if (d->dev_ready)
		return;
	if (d->rule[0]) {
		fprintf(stderr, "samepage:     sudo udevadm trigger --sysname-match=userfaultfd\n"
				"samepage: (the udev rule %s gives group %s read-write access to "
				UFFD_DEV " at every boot; the trigger applies it now)\n",
			d->rule, UFFD_GROUP);
		return;
	}
	fprintf(stderr, "samepage:     sudo chgrp %s " UFFD_DEV " && sudo chmod 0660 " UFFD_DEV "\n"
			"samepage: (that lasts until the next boot: samepage's udev rule, which "
			"`make install` puts in PREFIX/lib/udev/rules.d, is not installed here)\n",
		UFFD_GROUP);
}

static void advise(const struct uffd_diag *d, int err)
{
	if (err == -ENOSYS || err == -EINVAL) {
		fprintf(stderr, "samepage: this kernel has no userfaultfd write-protection "
				"(Linux 5.19 or later is needed)\n");
		return;
	}
	if (!d->has_dev) {
		fprintf(stderr, "samepage: this kernel has no " UFFD_DEV " (Linux 6.1 or "
				"later); allow userfaultfd to every user instead, once, as an "
				"administrator:\n"
				"samepage:     sudo sysctl -w vm.unprivileged_userfaultfd=1\n");
		return;
	}
	fprintf(stderr, "samepage: " UFFD_DEV " must be read-write for %s; once, as an "
			"administrator:\n", d->user);
	if (!d->group_exists || !d->member)
		fprintf(stderr, "samepage:     sudo groupadd -f %s && sudo usermod -aG %s %s\n",
			UFFD_GROUP, UFFD_GROUP, d->user);
	advise_device(d);
	if (!d->in_session)
		fprintf(stderr, "samepage: then log in again (or run `newgrp %s`): a group counts "
				"from the next login\n", UFFD_GROUP);
	fprintf(stderr, "samepage: (or: sudo sysctl -w vm.unprivileged_userfaultfd=1, for every "
			"user of the machine; or run as root)\n");
}

int uffd_check(const char *cmd)
{
	struct uffd_diag d;
	int fd = os_uffd_open();

	if (fd >= 0) {
		close(fd);
		return 0;
	}
	diagnose(&d);
	fprintf(stderr, "samepage: warning: userfaultfd is not available to %s (%s): %s runs, "
			"but none of its memory is merged\n", d.user, strerror(-fd), cmd);
	advise(&d, fd);
	return fd;
}
