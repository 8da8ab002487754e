/* SPDX-License-Identifier: MIT */
/* conf — see conf.h. */
#define _GNU_SOURCE
#include "conf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "env.h"
#include "num.h"

#define KEY_IDLE "idle_exit"

void sp_conf_init(struct sp_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->idle_exit = -1;
}

int sp_conf_user_path(char *buf, size_t len)
{
	const char *xdg = sp_env("XDG_CONFIG_HOME"), *home = sp_env("HOME");
	struct passwd *pw;
	int n;

	/* The XDG base directory spec: a relative XDG_CONFIG_HOME is invalid. */
	if (xdg && xdg[0] == '/') {
		n = snprintf(buf, len, "%s/samepage/samepage.conf", xdg);
		return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
	}
	if (!home || !*home) {
		pw = getpwuid(geteuid());
		home = pw ? pw->pw_dir : NULL;
	}
	if (!home || !*home)
		return -ENOENT;
	n = snprintf(buf, len, "%s/.config/samepage/samepage.conf", home);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = 0;
	return s;
}

/* One line, cut in place: 0 blank or comment, 1 a key and a value,
 * -EINVAL anything else. */
static int split_line(char *line, char **key, char **val)
{
	char *hash = strchr(line, '#'), *eq;

	if (hash)
		*hash = 0;
	line = trim(line);
	if (!*line)
		return 0;
	eq = strchr(line, '=');
	if (!eq)
		return -EINVAL;
	*eq = 0;
	*key = trim(line);
	*val = trim(eq + 1);
	return **key && **val ? 1 : -EINVAL;
}

static void known_keys(char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = 0;
	for (int k = 0; k < KNOB_COUNT && n < len; k++)
		n += (size_t)snprintf(buf + n, len - n, "%s, ", sp_knob_name(k));
	if (n < len)
		snprintf(buf + n, len - n, "%s", KEY_IDLE);
}

/* key = val into c, or -EINVAL and why. */
static int conf_set(struct sp_conf *c, const char *key, const char *val, char *why, size_t len)
{
	int k = sp_knob_lookup(key), err;
	uint64_t v;
	char keys[320], takes[64];

	if (k < 0 && strcmp(key, KEY_IDLE)) {
		known_keys(keys, sizeof(keys));
		snprintf(why, len, "unknown key '%s' (keys: %s)", key, keys);
		return -EINVAL;
	}
	if (k >= 0) {
		err = sp_knob_parse(k, val, &v);
		sp_knob_takes(k, takes, sizeof(takes));
	} else {
		err = sp_parse_u64(val, 0, SP_CONF_IDLE_MAX, &v);
		snprintf(takes, sizeof(takes), "0 to %u", SP_CONF_IDLE_MAX);
	}
	if (err) {
		snprintf(why, len, "%s = %s: %s (%s takes %s)", key, val,
			 err == -ERANGE ? "out of range" :
			 k == KNOB_ADVISOR_MODE ? "no such mode" : "not a number", key, takes);
		return -EINVAL;
	}
	if (k < 0) {
		c->idle_exit = (int64_t)v;
		return 0;
	}
	c->knob[k] = (uint32_t)v;
	c->has_knob |= 1u << k;
	return 0;
}

/* Every line of f over c; each bad one told. */
static int read_lines(FILE *f, const char *path, struct sp_conf *c, FILE *errs,
		      const char *prefix)
{
	char *line = NULL, *key, *val, why[512];
	size_t cap = 0;
	unsigned no = 0;
	int err = 0, kind;

	while (getline(&line, &cap, f) >= 0) {
		no++;
		kind = split_line(line, &key, &val);
		if (kind < 0)
			snprintf(why, sizeof(why), "expected 'key = value', got '%s'", trim(line));
		if (kind > 0 && conf_set(c, key, val, why, sizeof(why)) == 0)
			continue;
		if (kind == 0)
			continue;
		fprintf(errs, "%s: %s:%u: %s\n", prefix, path, no, why);
		err = -EINVAL;
	}
	if (ferror(f)) {
		err = -errno;
		fprintf(errs, "%s: %s: %s\n", prefix, path, strerror(errno));
	}
	free(line);
	return err;
}

int sp_conf_read(const char *path, struct sp_conf *c, FILE *errs, const char *prefix)
{
	struct sp_conf next = *c;
	struct stat st;
	FILE *f = fopen(path, "re");
	int err;

	if (!f && errno == ENOENT)
		return 0;
	if (!f) {
		err = -errno;
		fprintf(errs, "%s: %s: %s\n", prefix, path, strerror(-err));
		return err;
	}
	if (fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
		fprintf(errs, "%s: %s: not a regular file\n", prefix, path);
		fclose(f);
		return -EINVAL;
	}
	err = read_lines(f, path, &next, errs, prefix);
	fclose(f);
	if (!err)
		*c = next;
	return err;
}

int sp_conf_load(struct sp_conf *c, FILE *errs, const char *prefix)
{
	struct sp_conf next = *c;
	char user[PATH_MAX];
	int err = sp_conf_read(SP_CONF_SYSTEM, &next, errs, prefix), uerr = 0;

	/* The user's file is checked even when the system's is bad: every
	 * error at once, not one per attempt. */
	if (sp_conf_user_path(user, sizeof(user)) == 0)
		uerr = sp_conf_read(user, &next, errs, prefix);
	err = err ? err : uerr;
	if (!err)
		*c = next;
	return err;
}

/* ---- rewriting the user's file ---- */

/* mkdir -p of path's directory, new ones 0700 (XDG's for its directories). */
static int make_parents(const char *path)
{
	char dir[PATH_MAX];
	char *slash;

	if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
		return -ENAMETOOLONG;
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return mkdir(dir, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

/* The line to write for key k (KNOB_COUNT: idle_exit), or "" when upd
 * does not set it. */
static void new_line(const struct sp_conf *upd, int k, char *buf, size_t len)
{
	char v[32];

	buf[0] = 0;
	if (k < KNOB_COUNT && (upd->has_knob & (1u << k))) {
		sp_knob_format(k, upd->knob[k], v, sizeof(v));
		snprintf(buf, len, "%s = %s\n", sp_knob_name(k), v);
	}
	else if (k == KNOB_COUNT && upd->idle_exit >= 0)
		snprintf(buf, len, "%s = %lld\n", KEY_IDLE, (long long)upd->idle_exit);
}

/* Which key a line sets (KNOB_COUNT: idle_exit), or -1. */
static int line_key(const char *line)
{
	char copy[512], *key, *val;

	if (snprintf(copy, sizeof(copy), "%s", line) >= (int)sizeof(copy) ||
	    split_line(copy, &key, &val) != 1)
		return -1;
	if (!strcmp(key, KEY_IDLE))
		return KNOB_COUNT;
	return sp_knob_lookup(key);
}

/* The old file's lines (in, may be NULL), with upd's keys put in, to out. */
static int rewrite(FILE *in, FILE *out, const struct sp_conf *upd)
{
	char *line = NULL, add[96];
	size_t cap = 0;
	uint32_t done = 0; /* bit k: key k written */
	int last_nl = 1;
	ssize_t n;

	if (!in)
		fputs("# samepage settings: `key = value`, see samepage.conf(5).\n", out);
	while (in && (n = getline(&line, &cap, in)) >= 0) {
		int k = line_key(line);
		if (k >= 0)
			new_line(upd, k, add, sizeof(add));
		if (k < 0 || !add[0]) {
			fputs(line, out);
			last_nl = n > 0 && line[n - 1] == '\n';
			continue;
		}
		if (!(done & (1u << k)))
			fputs(add, out);
		done |= 1u << k;
		last_nl = 1;
	}
	free(line);
	if (in && ferror(in))
		return -EIO;
	if (!last_nl)
		fputc('\n', out);
	for (int k = 0; k <= KNOB_COUNT; k++) {
		new_line(upd, k, add, sizeof(add));
		if (add[0] && !(done & (1u << k)))
			fputs(add, out);
	}
	return 0;
}

static int sync_dir(const char *path)
{
	char dir[PATH_MAX];
	char *slash;
	int fd, err = 0;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		return 0;
	*(slash == dir ? slash + 1 : slash) = 0;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		err = -errno;
	close(fd);
	return err;
}

/* The temporary file, written whole and synced: 0 or -errno. */
static int write_temp(int fd, FILE *in, const struct sp_conf *upd, mode_t mode)
{
	FILE *out = fdopen(fd, "w");
	int err;

	if (!out) {
		err = -errno;
		close(fd);
		return err;
	}
	err = rewrite(in, out, upd);
	if (!err && fchmod(fd, mode) < 0)
		err = -errno;
	if (fflush(out) == EOF && !err)
		err = -errno;
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (fclose(out) == EOF && !err)
		err = -errno;
	return err;
}

int sp_conf_save(const char *path, const struct sp_conf *upd, FILE *errs, const char *prefix)
{
	char real[PATH_MAX], tmp[PATH_MAX + 16];
	struct stat st;
	mode_t mode = 0644;
	FILE *in = NULL;
	int fd, err;

	/* A dotfile manager's symbolic link stays one: the file it points to
	 * is what changes. */
	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && realpath(path, real))
		path = real;
	err = make_parents(path);
	if (err)
		goto out;
	in = fopen(path, "re");
	if (!in && errno != ENOENT) {
		err = -errno;
		goto out;
	}
	if (in && fstat(fileno(in), &st) == 0)
		mode = st.st_mode & 07777;
	snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	err = write_temp(fd, in, upd, mode);
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	else
		err = sync_dir(path);
out:
	if (in)
		fclose(in);
	if (err)
		fprintf(errs, "%s: %s: %s\n", prefix, path, strerror(-err));
	return err;
}
