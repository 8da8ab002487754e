/* SPDX-License-Identifier: MIT */
/* exe — see exe.h. */
#define _GNU_SOURCE
#include "exe.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "env.h"
#include "os.h"

/* Set-ID for another user or group: the loader runs it in secure mode. */
static int secure(const struct stat *st)
{
	return ((st->st_mode & S_ISUID) && st->st_uid != geteuid()) ||
	       ((st->st_mode & S_ISGID) && st->st_gid != getegid());
}

/* Has the 64-bit ELF file fd a PT_INTERP? 1, 0, or -errno. */
static int has_interp(int fd, const Elf64_Ehdr *eh)
{
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr ph;
		off_t at = (off_t)(eh->e_phoff + (uint64_t)i * eh->e_phentsize);
		if (eh->e_phentsize < sizeof(ph) || raw_pread(fd, &ph, sizeof(ph), at) != sizeof(ph))
			return -ENOEXEC;
		if (ph.p_type == PT_INTERP)
			return 1;
	}
	return 0;
}

int sp_exec_kind(const char *path)
{
	Elf64_Ehdr eh;
	struct stat st;
	int fd = raw_open(path, O_RDONLY | O_CLOEXEC, 0), err;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		goto out;
	}
	if (secure(&st)) {
		err = SP_EXEC_SECURE;
		goto out;
	}
	/* Not a 64-bit ELF (a script, a 32-bit program): not ours to judge. */
	err = SP_EXEC_OK;
	if (raw_pread(fd, &eh, sizeof(eh), 0) != sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64)
		goto out;
	err = has_interp(fd, &eh);
	if (err >= 0)
		err = err ? SP_EXEC_OK : SP_EXEC_STATIC;
out:
	raw_close(fd);
	return err;
}

int sp_exec_which(const char *name, char *out, size_t len)
{
	const char *path = sp_env("PATH");

	if (strchr(name, '/')) {
		snprintf(out, len, "%s", name);
		return 0;
	}
	/* execvp's default search path when PATH is unset */
	for (const char *p = path ? path : "/bin:/usr/bin"; *p;) {
		const char *end = strchr(p, ':');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		snprintf(out, len, "%.*s%s%s", (int)n, p, n ? "/" : "", name);
		if (access(out, X_OK) == 0)
			return 0;
		p += n + (end != NULL);
	}
	return -ENOENT;
}

const char *sp_exec_why(int kind)
{
	return kind == SP_EXEC_STATIC ?
		       "is statically linked: no dynamic loader to load libsamepage, so its "
		       "memory is not merged" :
		       "is set-user-ID or set-group-ID: the dynamic loader ignores LD_PRELOAD "
		       "for it, so its memory is not merged";
}
