# samepage — plain make. `make` builds build/{lib,bin}; `make check` builds
# and runs every test, then again under ASan+UBSan and under TSan.
CC ?= cc
O ?= build
SAN ?=
CFLAGS_BASE = -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden \
	-Iinclude -Isrc -pthread $(SAN)
CFLAGS ?=
LDFLAGS_BASE = -pthread -Wl,-z,now $(SAN)
LIBS = -lxxhash -ldl

LIB_SRC = src/api.c src/arena.c src/client.c src/merge.c src/scan.c src/preload.c src/page.c src/sort.c \
	  src/os.c src/proto.c src/path.c src/fault.c src/map.c src/env.c
DAEMON_SRC = src/daemon.c src/pool.c src/index.c src/map.c src/refs.c src/proto.c src/env.c \
	     src/path.c src/os.c src/fault.c
CLI_SRC = src/proto.c src/path.c src/os.c src/fault.c src/env.c
TEST_LIB = tests/lib/testutil.c tests/lib/region.c

UNIT = $(patsubst tests/unit/%.c,$(O)/tests/unit/%,$(wildcard tests/unit/*.c))
INTEG = $(patsubst tests/integration/%.c,$(O)/tests/integration/%,$(wildcard tests/integration/*.c))
BENCH = $(patsubst bench/%.c,$(O)/bench/%,$(wildcard bench/*.c))
EXAMPLES = $(patsubst examples/%.c,$(O)/examples/%,$(wildcard examples/*.c))
# Plain programs that know nothing of samepage: run under `samepage run`.
PROGS = $(patsubst tests/progs/%.c,$(O)/tests/progs/%,$(wildcard tests/progs/*.c))

all: $(O)/lib/libsamepage.so $(O)/bin/samepaged $(O)/bin/samepage $(UNIT) $(INTEG) $(BENCH) \
	$(EXAMPLES) $(PROGS)

$(O)/obj/%.o: %.c $(wildcard src/*.h include/*.h tests/lib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c -o $@ $<

obj = $(patsubst %.c,$(O)/obj/%.o,$(1))

$(O)/lib/libsamepage.so: $(call obj,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

$(O)/bin/samepaged: $(call obj,$(DAEMON_SRC) tools/samepaged.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

$(O)/bin/samepage: $(call obj,$(CLI_SRC) tools/samepage.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

# Unit tests link the modules they test directly.
$(O)/tests/unit/%: $(call obj,tests/unit/%.c $(DAEMON_SRC) src/sort.c $(TEST_LIB))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_BASE) -o $@ $^ $(LIBS)

# Integration tests, benchmarks and examples link libsamepage like a user.
define user_prog
$(O)/$(1)/%: $(O)/obj/$(1)/%.o $(call obj,$(TEST_LIB)) $(O)/lib/libsamepage.so
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS_BASE) -o $$@ $$(filter %.o,$$^) -L$(O)/lib -lsamepage \
		-Wl,-rpath,'$$$$ORIGIN/$(2)lib' $$(LIBS)
$(O)/obj/$(1)/%.o: CFLAGS += -Itests/lib
endef
$(eval $(call user_prog,tests/integration,../../))
$(eval $(call user_prog,bench,../))
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
