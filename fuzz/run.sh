#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/daemon_msg.c, fuzz/proc_maps.c) with
# clang, ASan and UBSan into fuzz/build-clang/, run each for SECONDS
# (default 60) on its corpus, and merge what was new back into
# fuzz/corpus/<target> (minimized with -merge=1), so the corpus stays in the
# tree. Exits non-zero when a target crashed, leaked or timed out; the
# reproducer is fuzz/build-clang/crash-* (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     e.g. fuzz/run.sh 3600 daemon_msg
#
# FUZZ_NO_MERGE=1: do not touch fuzz/corpus (CI, ./test.sh).
#
# Installs clang and libclang-rt-14-dev when missing, as scripts/deps.sh does.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(daemon_msg proc_maps)
B=fuzz/build-clang

# ---- tools ----
need=()
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 ||
	need+=(libclang-rt-14-dev)
[ -e /usr/include/xxhash.h ] || need+=(libxxhash-dev)
if [ ${#need[@]} -gt 0 ]; then
	sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	echo "fuzz: installing ${need[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# ---- build ----
CC=${FUZZ_CC:-clang}
CFLAGS=(-std=c11 -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Werror -Iinclude -Icommon -Idaemon -pthread
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
DAEMON_SRC=($(ls daemon/*.c | grep -v daemon/main.c) common/*.c)
mkdir -p "$B"
build() { # target, sources and flags
	local t=$1
	shift
	echo "== build $t"
	"$CC" "${CFLAGS[@]}" -o "$B/$t" "fuzz/$t.c" "$@"
}
for t in "${targets[@]}"; do
	case $t in
	daemon_msg) build daemon_msg "${DAEMON_SRC[@]}" -Wl,--wrap=os_mmap -Wl,--wrap=os_munmap \
		-lxxhash -ldl ;;
	proc_maps) build proc_maps common/os.c common/fault.c common/env.c common/log.c ;;
	*) echo "fuzz: unknown target $t" >&2; exit 2 ;;
	esac
done

# ---- run ----
# max_len: daemon_msg inputs are conversations (a literal page is 4 KiB,
# big lookups and creates take a few bytes); smaps texts of real processes
# are 20-200 KiB, but the parser's state is per line: 64 KiB is plenty.
declare -A max_len=([daemon_msg]=16384 [proc_maps]=65536)
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
	corpus=fuzz/corpus/$t
	new=$B/new-$t
	mkdir -p "$corpus" "$new"
	log=$B/$t.log
	echo "== fuzz $t for ${secs}s (corpus $corpus: $(ls "$corpus" | wc -l) inputs)"
	rc=0
	# New inputs go to $new first, so a crashing run leaves the tree as it was.
	"$B/$t" -max_total_time="$secs" -max_len="${max_len[$t]}" -timeout=25 -rss_limit_mb=4096 \
		-print_final_stats=1 -artifact_prefix="$B/" "$new" "$corpus" >"$log" 2>&1 || rc=$?
	grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" || true
	grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
	if [ "$rc" -ne 0 ]; then
		status=1
		echo "!! $t failed (exit $rc); last lines of $log:"
		grep -E 'ERROR|SUMMARY|daemon_msg:|proc_maps:|Test unit written|^artifact_prefix' "$log" |
			tail -n 20 || true
		tail -n 40 "$log"
		continue
	fi
	if [ -n "${FUZZ_NO_MERGE:-}" ]; then # CI: leave the tree as it is
		rm -rf "$new"
		continue
	fi
	# Keep only inputs that add coverage: merge the new ones into the corpus.
	"$B/$t" -merge=1 -max_len="${max_len[$t]}" "$corpus" "$new" >"$B/$t.merge.log" 2>&1 ||
		{ echo "!! $t: merge failed, see $B/$t.merge.log"; status=1; }
	grep -E 'MERGE-OUTER: [0-9]+ new files' "$B/$t.merge.log" || true
	rm -rf "$new"
done
exit $status
