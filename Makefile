# samepage — plain make. `make` builds build/{lib,bin}; `make check` builds
# and runs every test, then again under ASan+UBSan and under TSan;
# `make install [PREFIX=/usr/local] [DESTDIR=]` installs, `make uninstall`
# removes what it installed.
CC ?= cc
O ?= build
SAN ?=
# The release (VERSION; SAMEPAGE_RELEASE in the code, for --version) and
# the library's ABI (SOVERSION, the number in its SONAME: SAMEPAGE_VERSION
# in include/samepage.h).
VERSION := $(shell cat VERSION)
SOVERSION := $(shell sed -n 's/^\#define SAMEPAGE_VERSION \([0-9]*\)$$/\1/p' include/samepage.h)
SONAME = libsamepage.so.$(SOVERSION)
# -MMD -MP: each object depends on the headers it includes (build/obj/*.d).
CFLAGS_BASE = -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden \
	-Iinclude -Icommon -pthread -MMD -MP -DSAMEPAGE_RELEASE='"$(VERSION)"' $(SAN)
CFLAGS ?=
LDFLAGS_BASE = -pthread -Wl,-z,now $(SAN)
LIBS = -lxxhash -ldl

# One folder per part (README, "Layout"): common/ is shared by all three
# programs, lib/ is libsamepage, daemon/ is samepaged, cli/ is samepage.
COMMON_SRC = $(wildcard common/*.c)
# conf.c (the configuration file) is the daemon's and the CLI's, not the library's.
LIB_SRC = $(wildcard lib/*.c) $(filter-out common/conf.c,$(COMMON_SRC))
DAEMON_SRC = $(filter-out daemon/main.c,$(wildcard daemon/*.c)) $(COMMON_SRC)
CLI_SRC = $(wildcard cli/*.c) $(COMMON_SRC)
TEST_LIB = tests/lib/testutil.c tests/lib/region.c
# What integration tests (which link libsamepage) add: tests/lib/merging.h.
BENCH_LIB = bench/benchlib.c

UNIT = $(patsubst tests/unit/%.c,$(O)/tests/unit/%,$(wildcard tests/unit/*.c))
INTEG = $(patsubst tests/integration/%.c,$(O)/tests/integration/%,$(wildcard tests/integration/*.c))
BENCH = $(patsubst bench/%.c,$(O)/bench/%,$(filter-out $(BENCH_LIB),$(wildcard bench/*.c)))
EXAMPLES = $(patsubst examples/%.c,$(O)/examples/%,$(wildcard examples/*.c))
# Plain programs that know nothing of samepage: run under `samepage run`.
PROGS = $(patsubst tests/progs/%.c,$(O)/tests/progs/%,$(wildcard tests/progs/*.c))

all: $(O)/lib/libsamepage.so $(O)/bin/samepaged $(O)/bin/samepage $(UNIT) $(INTEG) $(BENCH) \
	$(EXAMPLES) $(PROGS)

# VERSION: the code says which release it is (SAMEPAGE_RELEASE).
$(O)/obj/%.o: %.c VERSION
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c -o $@ $<

# Each part sees its own headers and common/'s, no other part's.
$(O)/obj/lib/%.o: CFLAGS += -Ilib
$(O)/obj/daemon/%.o: CFLAGS += -Idaemon
$(O)/obj/tests/unit/%.o: CFLAGS += -Idaemon -Ilib -Itests/lib

obj = $(patsubst %.c,$(O)/obj/%.o,$(1))

# The SONAME names the ABI; lib/libsamepage.map exports the public API and
# the interposed libc functions only. libsamepage.so (what -lsamepage and
# `samepage run` find) links to it, as installed.
$(O)/lib/$(SONAME): $(call obj,$(LIB_SRC)) lib/libsamepage.map
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS_BASE) -Wl,-soname,$(SONAME) \
		-Wl,--version-script=lib/libsamepage.map -o $@ $(filter %.o,$^) $(LIBS)

$(O)/lib/libsamepage.so: $(O)/lib/$(SONAME)
	ln -sfn $(SONAME) $@

$(O)/bin/samepaged: $(call obj,$(DAEMON_SRC) daemon/main.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

$(O)/bin/samepage: $(call obj,$(CLI_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

# Unit tests link the modules they test directly.
$(O)/tests/unit/%: $(call obj,tests/unit/%.c $(DAEMON_SRC) lib/sort.c $(TEST_LIB))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

# Integration tests, benchmarks and examples link libsamepage like a user;
# $(3): sources of their own library (benchmarks: BENCH_LIB).
define user_prog
$(O)/$(1)/%: $(O)/obj/$(1)/%.o $(call obj,$(TEST_LIB) $(3)) $(O)/lib/libsamepage.so
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS_BASE) -o $$@ $$(filter %.o,$$^) -L$(O)/lib -lsamepage \
		-Wl,-rpath,'$$$$ORIGIN/$(2)lib' $$(LIBS)
$(O)/obj/$(1)/%.o: CFLAGS += -Itests/lib
endef
$(eval $(call user_prog,tests/integration,../../,tests/lib/merging.c))
$(eval $(call user_prog,bench,../,$(BENCH_LIB)))
$(eval $(call user_prog,examples,../))

$(O)/tests/progs/%: $(O)/obj/tests/progs/%.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^

# Statically linked, as busybox or a Go binary (no sanitizer: its runtime
# cannot be linked statically).
$(O)/tests/progs/static_%: tests/progs/static_%.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -static -o $@ $<

check: all
	tests/run.sh $(O)

check-asan:
	$(MAKE) O=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	SAMEPAGE_SAN=asan tests/run.sh build-asan

check-tsan:
	$(MAKE) O=build-tsan SAN="-fsanitize=thread" all
	SAMEPAGE_SAN=tsan tests/run.sh build-tsan

check-all: check check-asan check-tsan

clean:
	rm -rf build build-asan build-tsan

# ---- install ----
# The programs and the library find each other relative to themselves
# (bin/samepage preloads ../lib/libsamepage.so, the library starts
# ../bin/samepaged), so the tree moves as a whole: PREFIX (and DESTDIR for
# staging) place it, bin/ and lib/ stay side by side. The systemd units
# and the QEMU wrapper name the programs by their final path, PREFIX.
PREFIX ?= /usr/local
BINDIR = $(PREFIX)/bin
LIBDIR = $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR ?= $(PREFIX)/share/man
SYSTEMDUSERUNITDIR ?= $(PREFIX)/lib/systemd/user
SYSTEMDSYSTEMUNITDIR ?= $(PREFIX)/lib/systemd/system
UDEVRULESDIR ?= $(PREFIX)/lib/udev/rules.d
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
INSTALL ?= install
LDCONFIG ?= ldconfig

MAN1 = man/samepage.1
MAN3 = man/libsamepage.3
MAN5 = man/samepage.conf.5
MAN8 = man/samepaged.8
# `man samepage_stat` and the like open libsamepage(3).
MAN3_LINKS = samepage_madvise samepage_set_merge_any samepage_get_merge_any samepage_stat \
	samepage_set_domain samepage_scan_now
UDEV_RULES = 70-samepage-userfaultfd.rules
# Every file `make install` writes, for `make uninstall`.
INSTALLED = $(BINDIR)/samepage $(BINDIR)/samepaged $(BINDIR)/samepage-qemu \
	$(LIBDIR)/libsamepage.so.$(VERSION) $(LIBDIR)/$(SONAME) $(LIBDIR)/libsamepage.so \
	$(INCLUDEDIR)/samepage.h $(PKGCONFIGDIR)/samepage.pc \
	$(MANDIR)/man1/samepage.1 $(MANDIR)/man3/libsamepage.3 $(MANDIR)/man5/samepage.conf.5 \
	$(MANDIR)/man8/samepaged.8 $(MAN3_LINKS:%=$(MANDIR)/man3/%.3) \
	$(addprefix $(SYSTEMDUSERUNITDIR)/,samepaged.socket samepaged.service) \
	$(addprefix $(SYSTEMDSYSTEMUNITDIR)/,samepaged@.socket samepaged@.service) \
	$(UDEVRULESDIR)/$(UDEV_RULES) $(BASHCOMPDIR)/samepage $(BASHCOMPDIR)/samepaged

# Install template $(1) (dist/*.in, less .in) into $(3) with mode $(2), its
# @BINDIR@, @LIBDIR@, @INCLUDEDIR@, @PREFIX@, @VERSION@ filled in: made
# anew by every install, as PREFIX may differ from the last one.
install_subst = mkdir -p $(O)/dist && \
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
		-e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
		$(1) >$(O)/dist/$(notdir $(1:.in=)) && \
	$(INSTALL) -m $(2) $(O)/dist/$(notdir $(1:.in=)) $(3)

install: $(O)/lib/$(SONAME) $(O)/bin/samepaged $(O)/bin/samepage
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSTEMDUSERUNITDIR) \
		$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR) $(DESTDIR)$(UDEVRULESDIR) $(DESTDIR)$(BASHCOMPDIR)
	$(INSTALL) -m 755 $(O)/bin/samepage $(O)/bin/samepaged $(DESTDIR)$(BINDIR)/
	$(call install_subst,dist/samepage-qemu.in,755,$(DESTDIR)$(BINDIR)/)
	$(INSTALL) -m 755 $(O)/lib/$(SONAME) $(DESTDIR)$(LIBDIR)/libsamepage.so.$(VERSION)
	ln -sfn libsamepage.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/libsamepage.so
	$(INSTALL) -m 644 include/samepage.h $(DESTDIR)$(INCLUDEDIR)/
	$(call install_subst,dist/samepage.pc.in,644,$(DESTDIR)$(PKGCONFIGDIR)/)
	$(INSTALL) -m 644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	$(INSTALL) -m 644 $(MAN3) $(DESTDIR)$(MANDIR)/man3/
	$(INSTALL) -m 644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 644 $(MAN8) $(DESTDIR)$(MANDIR)/man8/
	mkdir -p $(O)/dist && echo '.so man3/libsamepage.3' >$(O)/dist/man3-link.3
	for f in $(MAN3_LINKS); do \
		$(INSTALL) -m 644 $(O)/dist/man3-link.3 $(DESTDIR)$(MANDIR)/man3/$$f.3 || exit 1; done
	$(INSTALL) -m 644 dist/systemd/samepaged.socket $(DESTDIR)$(SYSTEMDUSERUNITDIR)/
	$(call install_subst,dist/systemd/samepaged.service.in,644,$(DESTDIR)$(SYSTEMDUSERUNITDIR)/)
	$(INSTALL) -m 644 dist/systemd/samepaged@.socket $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/
	$(call install_subst,dist/systemd/samepaged@.service.in,644,$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/)
	$(INSTALL) -m 644 dist/udev/$(UDEV_RULES) $(DESTDIR)$(UDEVRULESDIR)/
	$(INSTALL) -m 644 dist/bash-completion/samepage $(DESTDIR)$(BASHCOMPDIR)/
	ln -sfn samepage $(DESTDIR)$(BASHCOMPDIR)/samepaged
	@# Programs linked with -lsamepage find a library of /usr/local/lib
	@# through ld.so's cache; a staged install (DESTDIR) leaves that to
	@# the package manager (LDCONFIG=true: to nobody).
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then echo $(LDCONFIG); $(LDCONFIG); fi

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

.PHONY: all check check-asan check-tsan check-all clean install uninstall
.SECONDARY:
-include $(shell find $(O)/obj -name '*.d' 2>/dev/null)

# samepage-fs: the KSM files as a read-only FUSE tree (libfuse3) for
# monitoring agents outside `samepage run` (docs/DESIGN.md, "The KSM files").
FS_SRC = $(wildcard fs/*.c) $(COMMON_SRC)
$(O)/obj/fs/%.o: CFLAGS += $(shell pkg-config --cflags fuse3)
$(O)/bin/samepage-fs: $(call obj,$(FS_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS) $(shell pkg-config --libs fuse3)
all: $(O)/bin/samepage-fs
