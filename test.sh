#!/usr/bin/env bash
# The whole test suite: unit and integration tests and the small versions of
# examples/*.sh (QEMU, Redis, Python under samepage), side by side, then the
# tests built with AddressSanitizer+UBSan and with ThreadSanitizer and a short
# run of the fuzz targets (side by side), then a short soak. Installs what is
# missing.
set -eu
cd "$(dirname "$0")"
scripts/deps.sh
make -j"$(nproc)" all
make -j"$(nproc)" O=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
make -j"$(nproc)" O=build-tsan SAN="-fsanitize=thread" all
status=0
export SAMEPAGE_TOTALS
SAMEPAGE_TOTALS=$(mktemp)
out=$(mktemp -d)
trap 'rm -f "$SAMEPAGE_TOTALS"; rm -rf "$out"' EXIT
# `job NAME CMD...` starts CMD beside the others, its output kept in
# $out/NAME to be printed whole; `jobs_wait` waits for all. Each test has a
# daemon of its own (its own socket), and the tests must stand a busy
# machine anyway; this keeps the whole suite near seven minutes.
jobs_pids=()
job() {
	local name=$1
	shift
	"$@" >"$out/$name" 2>&1 &
	jobs_pids+=($!)
}
jobs_wait() {
	for p in "${jobs_pids[@]}"; do
		wait "$p" || status=1
	done
	jobs_pids=()
}
# Tests that change the whole machine (vm.max_map_count) first, one at a
# time with nothing beside them (tests/run.sh's ALONE), in every build.
echo "== tests that change the whole machine, alone (plain, ASan+UBSan, TSan)"
SAMEPAGE_ONLY=alone tests/run.sh build || status=1
SAMEPAGE_ONLY=alone SAMEPAGE_SAN=asan tests/run.sh build-asan || status=1
SAMEPAGE_ONLY=alone SAMEPAGE_SAN=tsan tests/run.sh build-tsan || status=1
export SAMEPAGE_NOT_ALONE=1
# The plain build: its tests in two shards, beside the examples (QEMU,
# Redis, Python, the kernel's own KSM tools), which mostly wait.
job plain1 env SAMEPAGE_NO_EXAMPLES=1 SAMEPAGE_SHARD=1/2 tests/run.sh build
job plain2 env SAMEPAGE_NO_EXAMPLES=1 SAMEPAGE_SHARD=2/2 tests/run.sh build
job examples env SAMEPAGE_ONLY=examples tests/run.sh build
jobs_wait
echo "== tests (plain build, in two shards)"
cat "$out/plain1" "$out/plain2"
echo "== examples (plain build)"
cat "$out/examples"
# The sanitizer suites, TSan's (the slowest) in two shards, with a short
# coverage-guided run of each fuzz target beside them (fuzz/README.md;
# hours of it belong to `fuzz/run.sh 3600`).
job asan env SAMEPAGE_SAN=asan tests/run.sh build-asan
job tsan1 env SAMEPAGE_SAN=tsan SAMEPAGE_SHARD=1/2 tests/run.sh build-tsan
job tsan2 env SAMEPAGE_SAN=tsan SAMEPAGE_SHARD=2/2 tests/run.sh build-tsan
fuzz_short() {
	if FUZZ_NO_MERGE=1 fuzz/run.sh 20; then
		echo "2 0 0" >>"$SAMEPAGE_TOTALS"
	else
		echo "0 1 0" >>"$SAMEPAGE_TOTALS"
		return 1
	fi
}
job fuzz fuzz_short
jobs_wait
echo "== tests (ASan+UBSan)"
cat "$out/asan"
echo "== tests (TSan, in two shards)"
cat "$out/tsan1" "$out/tsan2"
echo "== fuzz (20 s per target)"
cat "$out/fuzz"
# One daemon through generations of processes that merge, rewrite, fork,
# exit and get killed (bench/soak.c; hours of it: bench/run.sh --soak).
echo "== soak (one daemon, 2 generations)"
rc=0
build/bench/soak --quick --generations 2 --no-kernel --quiet-wait 0 >"$out/soak" 2>&1 || rc=$?
tail -n 25 "$out/soak"
case $rc in 0) echo "1 0 0" ;; 77) echo "0 0 1" ;; *) echo "0 1 0"; status=1 ;; esac >>"$SAMEPAGE_TOTALS"
awk '{p+=$1; f+=$2; s+=$3} END {printf "total: %d passed, %d failed, %d skipped\n", p, f, s}' "$SAMEPAGE_TOTALS"
exit $status
