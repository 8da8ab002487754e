/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the library's parsing of /proc/self/smaps
 * (os_parse_vmas() in common/os.c), on any text.
 *
 * Checks, beyond "no crash, no out-of-bounds access" (ASan, UBSan):
 *  - the list is one os_vma_find() can search: every VMA page-aligned with
 *    start < end, each above the one before; kind and prot in range;
 *    total counts at least the VMAs kept;
 *  - os_vma_find() finds each VMA by its first and last byte, and nothing
 *    in a gap between two;
 *  - fed in two pieces split at a line boundary (as os_read_vmas() feeds
 *    its buffer), the text gives the same list as in one;
 *  - on text the parser accepts, the result is exactly what the parser
 *    did before it was made callable on a buffer (reference_parse() below:
 *    common/os.c (then src/os.c) as of b1fb10f, reading NUL-terminated lines in place), for
 *    texts that parser could read within bounds: lines the kernel could
 *    write (under 512 bytes, no NUL byte), ending with '\n'.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define die(...) do { fprintf(stderr, "proc_maps: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)

/* ---- the parser before os_parse_vmas(), for comparison ---- */

static uint32_t ref_flag_of(const char *f)
{
	static const struct { char name[3]; uint32_t bit; } tab[] = {
		{ "lo", VF_LOCKED }, { "dd", VF_DONTDUMP }, { "dc", VF_DONTCOPY },
		{ "wf", VF_WIPEONFORK }, { "um", VF_UFFD }, { "uw", VF_UFFD },
		{ "ui", VF_UFFD }, { "io", VF_IO }, { "pf", VF_PFNMAP }, { "ht", VF_HUGETLB },
		{ "gd", VF_GROWSDOWN }, { "hg", VF_HUGEPAGE }, { "nh", VF_NOHUGEPAGE },
		{ "sh", VF_SHARED }, { "mm", VF_MIXEDMAP }, { "de", VF_DONTEXPAND },
		{ "nr", VF_NORESERVE },
	};
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
		if (f[0] == tab[i].name[0] && f[1] == tab[i].name[1])
			return tab[i].bit;
	return 0;
}

static void ref_parse_header(const char *s, struct vma *v, int *is_own)
{
	char *p;
	unsigned long long start = strtoull(s, &p, 16), end = strtoull(p + 1, &p, 16);
	const char *path;

	memset(v, 0, sizeof(*v));
	v->start = start;
	v->end = end;
	p++;
	v->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
		  (p[2] == 'x' ? PROT_EXEC : 0);
	v->private_ = p[3] == 'p';
	v->pgoff = strtoull(p + 5, &p, 16) / 4096;
	while (*p == ' ')
		p++;
	while (*p && *p != ' ')
		p++; /* dev */
	v->ino = strtoull(p, &p, 10);
	while (*p == ' ')
		p++;
	path = p;
	*is_own = !strncmp(path, "[anon:samepage]", 15);
	if (!strncmp(path, "/memfd:samepage-pool", 20))
		v->kind = VMA_POOL;
	else if (v->ino == 0 && (!*path || *path == '\n' || !strncmp(path, "[heap]", 6) ||
				 !strncmp(path, "[stack", 6) || !strncmp(path, "[anon:", 6)))
		v->kind = VMA_ANON;
	else
		v->kind = VMA_OTHER;
	if (*is_own)
		v->kind = VMA_OTHER;
}

static int ref_header_line(const char *s)
{
	return (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f');
}

#define REF_MAX 8192
static struct vma ref_v[REF_MAX];
static size_t ref_n, ref_total;

static void ref_parse_line(struct vma *cur, int *have, const char *s)
{
	int own;

	if (ref_header_line(s)) {
		if (*have && ref_n < REF_MAX)
			ref_v[ref_n++] = *cur;
		ref_parse_header(s, cur, &own);
		*have = 1;
		ref_total++;
	} else if (!strncmp(s, "VmFlags:", 8) && *have) {
		for (const char *f = s + 8; *f && *f != '\n'; f++)
			if (f[0] != ' ' && f[1] && f[1] != ' ' && f[1] != '\n' &&
			    (f == s + 8 || f[-1] == ' ')) {
				cur->flags |= ref_flag_of(f);
				f++;
			}
	}
}

/* text: NUL-terminated, writable, whole lines. */
static void reference_parse(char *text)
{
	struct vma cur;
	int have = 0;
	char *line = text, *nl;

	ref_n = ref_total = 0;
	while ((nl = strchr(line, '\n'))) {
		*nl = 0;
		ref_parse_line(&cur, &have, line);
		line = nl + 1;
	}
	if (have && ref_n < REF_MAX)
		ref_v[ref_n++] = cur;
}

/* ---- checks ---- */

static void check_list(const struct vma_list *l)
{
	if (l->n > l->total)
		die("%zu VMAs but total %zu", l->n, l->total);
	for (size_t i = 0; i < l->n; i++) {
		const struct vma *v = &l->v[i];
		if (v->start >= v->end || v->start % 4096 || v->end % 4096)
			die("VMA %zu: %#lx-%#lx", i, (unsigned long)v->start, (unsigned long)v->end);
		if (i && v->start < l->v[i - 1].end)
			die("VMA %zu starts at %#lx, below the end %#lx of the one before", i,
			    (unsigned long)v->start, (unsigned long)l->v[i - 1].end);
		if (v->kind > VMA_POOL || v->prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC) ||
		    v->private_ > 1 || v->flags >= (VF_NORESERVE << 1))
			die("VMA %zu: kind %u prot %u private %u flags %#x", i, v->kind, v->prot,
			    v->private_, v->flags);
		if (os_vma_find(l, v->start) != v || os_vma_find(l, v->end - 1) != v)
			die("os_vma_find misses VMA %zu", i);
		if (v->start && (!i || l->v[i - 1].end < v->start) && os_vma_find(l, v->start - 1))
			die("os_vma_find finds something before VMA %zu", i);
	}
	if (l->n && l->v[l->n - 1].end && os_vma_find(l, l->v[l->n - 1].end))
		die("os_vma_find finds something after the last VMA");
}

static int same_vma(const struct vma *a, const struct vma *b)
{
	return a->start == b->start && a->end == b->end && a->pgoff == b->pgoff &&
	       a->ino == b->ino && a->flags == b->flags && a->prot == b->prot &&
	       a->kind == b->kind && a->private_ == b->private_;
}

static void same_list(const struct vma_list *a, const struct vma_list *b, const char *what)
{
	if (a->n != b->n || a->total != b->total)
		die("%s: %zu VMAs (total %zu) against %zu (total %zu)", what, a->n, a->total, b->n,
		    b->total);
	for (size_t i = 0; i < a->n; i++)
		if (!same_vma(&a->v[i], &b->v[i]))
			die("%s: VMA %zu differs", what, i);
}

/* Could the parser before the refactor read this text within bounds? Its
 * header parsing stepped past a line's end on short lines (the kernel never
 * writes one), so compare only where every line is one the kernel could
 * have written: under 512 bytes, no NUL byte, a '\n' at the end. */
static int reference_can_read(const uint8_t *data, size_t size)
{
	size_t start = 0;

	if (!size || data[size - 1] != '\n' || memchr(data, 0, size))
		return 0;
	for (size_t i = 0; i < size; i++)
		if (data[i] == '\n') {
			if (i - start >= 511)
				return 0;
			start = i + 1;
		}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vma_list one = { 0 }, two = { 0 };
	const char *text = (const char *)data;
	int err, err2;

	err = os_parse_vmas(&one, text, size);
	if (err && err != -EINVAL && err != -EAGAIN && err != -ENOMEM)
		die("os_parse_vmas: %d", err);
	check_list(&one);

	/* The same text in two pieces, split after a line, as os_read_vmas()
	 * hands over its buffer. */
	const char *nl = size ? memchr(text, '\n', size / 2 + 1) : NULL;
	size_t cut = nl ? (size_t)(nl - text) + 1 : 0;
	err2 = os_parse_vmas(&two, text, cut);
	if (!err2)
		err2 = os_parse_vmas(&two, text + cut, size - cut);
	check_list(&two);
	if (err2 != err)
		die("in two pieces: %d, in one: %d", err2, err);
	if (!err)
		same_list(&one, &two, "in two pieces");

	if (!err && reference_can_read(data, size)) {
		char *copy = malloc(size + 1);
		struct vma_list ref = { .v = ref_v, .cap = REF_MAX, .fixed = 1 };

		if (!copy)
			die("malloc");
		memcpy(copy, data, size);
		copy[size] = 0;
		reference_parse(copy);
		free(copy);
		ref.n = ref_n;
		ref.total = ref_total;
		if (ref_total <= REF_MAX)
			same_list(&one, &ref, "against the old parser");
	}
	os_vmas_free(&one);
	os_vmas_free(&two);
	return 0;
}
