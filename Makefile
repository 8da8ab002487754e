# samepage — plain make. `make` builds build/{lib,bin}; `make check` builds
# and runs every test, then again under ASan+UBSan and under TSan.
CC ?= cc
O ?= build
SAN ?=
# -MMD -MP: each object depends on the headers it includes (build/obj/*.d).
CFLAGS_BASE = -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden \
	-Iinclude -Icommon -pthread -MMD -MP $(SAN)
CFLAGS ?=
LDFLAGS_BASE = -pthread -Wl,-z,now $(SAN)
LIBS = -lxxhash -ldl

# One folder per part (README, "Layout"): common/ is shared by all three
# programs, lib/ is libsamepage, daemon/ is samepaged, cli/ is samepage.
COMMON_SRC = $(wildcard common/*.c)
LIB_SRC = $(wildcard lib/*.c) $(COMMON_SRC)
DAEMON_SRC = $(filter-out daemon/main.c,$(wildcard daemon/*.c)) $(COMMON_SRC)
CLI_SRC = $(wildcard cli/*.c) $(COMMON_SRC)
TEST_LIB = tests/lib/testutil.c tests/lib/region.c
BENCH_LIB = bench/benchlib.c

UNIT = $(patsubst tests/unit/%.c,$(O)/tests/unit/%,$(wildcard tests/unit/*.c))
INTEG = $(patsubst tests/integration/%.c,$(O)/tests/integration/%,$(wildcard tests/integration/*.c))
BENCH = $(patsubst bench/%.c,$(O)/bench/%,$(filter-out $(BENCH_LIB),$(wildcard bench/*.c)))
EXAMPLES = $(patsubst examples/%.c,$(O)/examples/%,$(wildcard examples/*.c))
# Plain programs that know nothing of samepage: run under `samepage run`.
PROGS = $(patsubst tests/progs/%.c,$(O)/tests/progs/%,$(wildcard tests/progs/*.c))

all: $(O)/lib/libsamepage.so $(O)/bin/samepaged $(O)/bin/samepage $(UNIT) $(INTEG) $(BENCH) \
	$(EXAMPLES) $(PROGS)

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c -o $@ $<

# Each part sees its own headers and common/'s, no other part's.
$(O)/obj/lib/%.o: CFLAGS += -Ilib
$(O)/obj/daemon/%.o: CFLAGS += -Idaemon
$(O)/obj/tests/unit/%.o: CFLAGS += -Idaemon -Ilib -Itests/lib

obj = $(patsubst %.c,$(O)/obj/%.o,$(1))

$(O)/lib/libsamepage.so: $(call obj,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

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
$(eval $(call user_prog,tests/integration,../../))
$(eval $(call user_prog,bench,../,$(BENCH_LIB)))
$(eval $(call user_prog,examples,../))

$(O)/tests/progs/%: $(O)/obj/tests/progs/%.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^

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

.PHONY: all check check-asan check-tsan check-all clean
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
