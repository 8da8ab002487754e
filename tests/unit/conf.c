/* SPDX-License-Identifier: MIT */
/*
 * Unit test of common/num.h and common/conf.h: numbers typed by people,
 * and samepage.conf. Proves:
 *  - sp_parse_u64 takes digits only, all of them, within [min, max]:
 *    "", "abc", "-1", "+1", " 1", "1 ", "12x", "0x10" are -EINVAL, past
 *    UINT64_MAX and out of [min, max] -ERANGE; sp_parse_secs_ms takes
 *    "2", "0.5", "1.25", "0.001" and refuses ".5", "1.", "1.2345", "1e3",
 *    "-1" and out of range;
 *  - sp_conf_read: blank lines, comments (whole or trailing), spaces and
 *    tabs around, CRLF; a key twice takes its last value; every knob and
 *    idle_exit; a missing file changes nothing and is no error; a file
 *    with any bad line (unknown key, a value out of range or not a number,
 *    no '=', no key, no value) is -EINVAL with every bad line told as
 *    FILE:LINE, and changes nothing at all; a directory is refused;
 *  - sp_conf_user_path: $XDG_CONFIG_HOME/samepage/samepage.conf, a
 *    relative XDG_CONFIG_HOME ignored for $HOME/.config/...;
 *  - sp_conf_save: creates missing directories and the file; in an
 *    existing file keeps comments, blank lines and other keys as they
 *    were, gives a key's first line the new value and drops its repeats,
 *    appends new keys (after a last line without a newline), keeps the
 *    file's mode, leaves no temporary file, and writes through a symbolic
 *    link; what it wrote reads back the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "../lib/testutil.h"
#include "conf.h"
#include "num.h"

static char dir[64];

static void test_num(void)
{
	static const char *const bad[] = { "", "abc", "-1", "+1", " 1", "1 ", "12x", "0x10",
					   "1.0" };
	uint64_t v;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		TU_CHECK(sp_parse_u64(bad[i], 0, UINT64_MAX, &v) == -EINVAL, "'%s' taken", bad[i]);
	TU_CHECK(sp_parse_u64(NULL, 0, 10, &v) == -EINVAL, "NULL taken");
	TU_CHECK(sp_parse_u64("18446744073709551615", 0, UINT64_MAX, &v) == 0 && v == UINT64_MAX,
		 "UINT64_MAX");
	TU_CHECK(sp_parse_u64("18446744073709551616", 0, UINT64_MAX, &v) == -ERANGE, "overflow");
	TU_CHECK(sp_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v) == -ERANGE,
		 "overflow");
	TU_CHECK(sp_parse_u64("0", 1, 5, &v) == -ERANGE && sp_parse_u64("6", 1, 5, &v) == -ERANGE,
		 "range");
	TU_CHECK(sp_parse_u64("007", 1, 7, &v) == 0 && v == 7, "007");
	static const struct { const char *s; uint64_t ms; } good[] = {
		{ "2", 2000 }, { "0.5", 500 }, { "1.25", 1250 }, { "0.001", 1 },
		{ "10.100", 10100 },
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		TU_CHECK(sp_parse_secs_ms(good[i].s, 0, UINT64_MAX, &v) == 0 && v == good[i].ms,
			 "'%s' seconds: %llu ms", good[i].s, (unsigned long long)v);
	static const char *const bads[] = { "", ".5", "1.", "1.2345", "1e3", "-1", "a", "1.x" };
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++)
		TU_CHECK(sp_parse_secs_ms(bads[i], 0, UINT64_MAX, &v) == -EINVAL, "'%s' s taken",
			 bads[i]);
	TU_CHECK(sp_parse_secs_ms("0.05", 100, 1000, &v) == -ERANGE &&
		 sp_parse_secs_ms("1.001", 100, 1000, &v) == -ERANGE, "seconds range");
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	TU_CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "write %s", path);
}

/* sp_conf_read of text over c, what it told into errs. */
static int read_text(const char *text, struct sp_conf *c, char *errs, size_t len)
{
	char path[128];
	FILE *e = fmemopen(errs, len, "w");
	int err;

	snprintf(path, sizeof(path), "%s/t.conf", dir);
	put(path, text);
	TU_CHECK(e, "fmemopen");
	err = sp_conf_read(path, c, e, "test");
	fclose(e);
	return err;
}

static void test_read(void)
{
	struct sp_conf c, before;
	char errs[4096], path[128], want[160];

	sp_conf_init(&c);
	TU_CHECK(read_text("# a comment\n\n  pages_to_scan\t=  500  # trailing\r\nrun=0\n"
			   "sleep_millisecs = 7\nuse_zero_pages = 0\nmax_page_sharing = 2\nsmart_scan = 0\n"
			   "advisor_mode = scan-time\nadvisor_max_cpu = 150\n"
			   "advisor_min_pages_to_scan = 700\nadvisor_max_pages_to_scan = 9000\n"
			   "advisor_target_scan_time = 3\n"
			   "idle_exit = 0\npages_to_scan = 600\n", &c, errs, sizeof(errs)) == 0,
		 "a good file refused: %s", errs);
	TU_CHECK(c.has_knob == (1u << KNOB_COUNT) - 1 && c.knob[KNOB_PAGES_TO_SCAN] == 600 &&
		 c.knob[KNOB_RUN] == 0 && c.knob[KNOB_SLEEP_MILLISECS] == 7 &&
		 c.knob[KNOB_USE_ZERO_PAGES] == 0 && c.knob[KNOB_MAX_PAGE_SHARING] == 2 &&
		 c.knob[KNOB_SMART_SCAN] == 0 && c.knob[KNOB_ADVISOR_MODE] == ADVISOR_SCAN_TIME &&
		 c.knob[KNOB_ADVISOR_MAX_CPU] == 150 && c.knob[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] == 700 &&
		 c.knob[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] == 9000 &&
		 c.knob[KNOB_ADVISOR_TARGET_SCAN_TIME] == 3 && c.idle_exit == 0,
		 "values read: pages_to_scan %u", c.knob[KNOB_PAGES_TO_SCAN]);

	/* Every bad line told, nothing changed. */
	before = c;
	memset(errs, 0, sizeof(errs));
	TU_CHECK(read_text("sleep_millisecs = 9\nbogus = 1\npages_to_scan = 0\nrun = x\n"
			   "just words\n= 5\nrun =\nmax_page_sharing = 99999999999999999999999\n"
			   "advisor_mode = 1\nadvisor_target_scan_time = 0\n",
			   &c, errs, sizeof(errs)) == -EINVAL, "a bad file taken");
	TU_CHECK(!memcmp(&c, &before, sizeof(c)), "a bad file changed something");
	snprintf(path, sizeof(path), "%s/t.conf", dir);
	TU_CHECK(strstr(errs, "advisor_mode = 1: no such mode (advisor_mode takes none or "
			      "scan-time)"), "a bad advisor_mode not told: '%s'", errs);
	for (int line = 2; line <= 10; line++) {
		snprintf(want, sizeof(want), "test: %s:%d: ", path, line);
		TU_CHECK(strstr(errs, want), "line %d not told: '%s'", line, errs);
	}
	snprintf(want, sizeof(want), "%s:1:", path);
	TU_CHECK(!strstr(errs, want), "a good line told: '%s'", errs);
	TU_CHECK(strstr(errs, "unknown key 'bogus'") && strstr(errs, "out of range") &&
		 strstr(errs, "not a number") && strstr(errs, "expected 'key = value'"),
		 "what is wrong is not said: '%s'", errs);

	/* No file: nothing, no error. A directory: an error. */
	snprintf(path, sizeof(path), "%s/none.conf", dir);
	TU_CHECK(sp_conf_read(path, &c, stderr, "test") == 0 && !memcmp(&c, &before, sizeof(c)),
		 "a missing file");
	TU_CHECK(sp_conf_read(dir, &c, fopen("/dev/null", "w"), "test") < 0, "a directory taken");
}

static void test_user_path(void)
{
	char p[256];

	setenv("XDG_CONFIG_HOME", "/x/cfg", 1);
	TU_CHECK(sp_conf_user_path(p, sizeof(p)) == 0 &&
		 !strcmp(p, "/x/cfg/samepage/samepage.conf"), "XDG: %s", p);
	setenv("XDG_CONFIG_HOME", "relative", 1);
	setenv("HOME", "/home/u", 1);
	TU_CHECK(sp_conf_user_path(p, sizeof(p)) == 0 &&
		 !strcmp(p, "/home/u/.config/samepage/samepage.conf"), "HOME: %s", p);
	TU_CHECK(sp_conf_user_path(p, 10) == -ENAMETOOLONG, "a short buffer");
}

static int temp_files(const char *d)
{
	DIR *dd = opendir(d);
	struct dirent *e;
	int n = 0;

	TU_CHECK(dd, "opendir %s", d);
	while ((e = readdir(dd)))
		n += strstr(e->d_name, ".conf.") != NULL;
	closedir(dd);
	return n;
}

static void test_save(void)
{
	char path[160], sub[128], text[4096], link[192], errs[64];
	struct sp_conf upd, back;
	struct stat st;

	/* A new file, its directories made. */
	snprintf(sub, sizeof(sub), "%s/a/b", dir);
	snprintf(path, sizeof(path), "%s/samepage.conf", sub);
	sp_conf_init(&upd);
	upd.knob[KNOB_PAGES_TO_SCAN] = 1000;
	upd.has_knob = 1u << KNOB_PAGES_TO_SCAN;
	TU_CHECK(sp_conf_save(path, &upd, stderr, "test") == 0, "save a new file");
	TU_CHECK(stat(sub, &st) == 0 && (st.st_mode & 0777) == 0700, "directory mode %o",
		 st.st_mode & 0777);
	sp_conf_init(&back);
	TU_CHECK(sp_conf_read(path, &back, stderr, "test") == 0 &&
		 back.has_knob == upd.has_knob && back.knob[KNOB_PAGES_TO_SCAN] == 1000,
		 "the new file does not read back");

	/* An existing one: everything else kept. */
	put(path, "# keep me\nrun = 1\n\npages_to_scan = 5 # old\nfoo bar\npages_to_scan = 6\n"
		  "sleep_millisecs = 3");
	TU_CHECK(chmod(path, 0640) == 0, "chmod");
	sp_conf_init(&upd);
	upd.knob[KNOB_PAGES_TO_SCAN] = 77;
	upd.knob[KNOB_MAX_PAGE_SHARING] = 9;
	upd.has_knob = 1u << KNOB_PAGES_TO_SCAN | 1u << KNOB_MAX_PAGE_SHARING;
	upd.idle_exit = 30;
	TU_CHECK(sp_conf_save(path, &upd, stderr, "test") == 0, "save over a file");
	TU_CHECK(tu_read_text(path, text, sizeof(text)) == 0, "read back");
	TU_CHECK(!strcmp(text, "# keep me\nrun = 1\n\npages_to_scan = 77\nfoo bar\n"
			       "sleep_millisecs = 3\nmax_page_sharing = 9\nidle_exit = 30\n"),
		 "saved as '%s'", text);
	TU_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "mode %o not kept",
		 st.st_mode & 0777);
	TU_CHECK(temp_files(sub) == 0, "a temporary file was left");

	/* advisor_mode is written by name (its line reads back: test_read()). */
	sp_conf_init(&upd);
	upd.knob[KNOB_ADVISOR_MODE] = ADVISOR_SCAN_TIME;
	upd.has_knob = 1u << KNOB_ADVISOR_MODE;
	TU_CHECK(sp_conf_save(path, &upd, stderr, "test") == 0, "save advisor_mode");
	TU_CHECK(tu_read_text(path, text, sizeof(text)) == 0 &&
		 strstr(text, "\nadvisor_mode = scan-time\n"), "advisor_mode saved as '%s'", text);
	upd.knob[KNOB_PAGES_TO_SCAN] = 77;
	upd.knob[KNOB_MAX_PAGE_SHARING] = 9;
	upd.has_knob = 1u << KNOB_PAGES_TO_SCAN | 1u << KNOB_MAX_PAGE_SHARING;

	/* Through a link: the link stays, its target changes. */
	snprintf(link, sizeof(link), "%s/link.conf", sub);
	TU_CHECK(symlink(path, link) == 0, "symlink");
	upd.knob[KNOB_PAGES_TO_SCAN] = 88;
	TU_CHECK(sp_conf_save(link, &upd, stderr, "test") == 0, "save via a link");
	TU_CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "the link was replaced");
	TU_CHECK(tu_read_text(path, text, sizeof(text)) == 0 &&
		 strstr(text, "pages_to_scan = 88\n"), "the target: '%s'", text);

	/* Where it cannot write: an error, told. */
	FILE *e = fmemopen(errs, sizeof(errs), "w");
	TU_CHECK(sp_conf_save("/proc/nope/samepage.conf", &upd, e, "test") < 0, "saved in /proc");
	fclose(e);
	TU_CHECK(strstr(errs, "test: "), "not told: '%s'", errs);
}

int main(void)
{
	char cmd[128];

	snprintf(dir, sizeof(dir), "/tmp/sp-conf-XXXXXX");
	TU_CHECK(mkdtemp(dir), "mkdtemp");
	test_num();
	test_read();
	test_user_path();
	test_save();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	TU_CHECK(system(cmd) == 0, "rm");
	printf("conf: ok\n");
	return 0;
}
