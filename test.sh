#!/usr/bin/env bash
# The whole test suite: unit and integration tests and the small versions of
# examples/*.sh (QEMU, Redis, Python under samepage), then the tests built
# with AddressSanitizer+UBSan and with ThreadSanitizer and a short run of
# the fuzz targets (side by side), then a short soak. Installs what is missing.
set -eu
cd "$(dirname "$0")"
scripts/deps.sh
make -j"$(nproc)" all
make -j"$(nproc)" O=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
make -j"$(nproc)" O=build-tsan SAN="-fsanitize=thread" all
status=0
export SAMEPAGE_TOTALS
SAMEPAGE_TOTALS=$(mktemp)
trap 'rm -f "$SAMEPAGE_TOTALS"' EXIT
echo "== tests (plain build)"
tests/run.sh build || status=1
# The sanitizer suites side by side, TSan's (the slowest) in two shards,
# with the short fuzz run beside them: each test has a daemon of its own
# (its own socket), and the tests must stand a busy machine anyway; this
# keeps the whole suite near ten minutes. Each part's output is printed
# whole once all are done.
san_out=$(mktemp -d)
trap 'rm -f "$SAMEPAGE_TOTALS"; rm -rf "$san_out"' EXIT
pids=()
SAMEPAGE_SAN=asan tests/run.sh build-asan >"$san_out/asan" 2>&1 &
pids+=($!)
SAMEPAGE_SAN=tsan SAMEPAGE_SHARD=1/2 tests/run.sh build-tsan >"$san_out/tsan1" 2>&1 &
pids+=($!)
SAMEPAGE_SAN=tsan SAMEPAGE_SHARD=2/2 tests/run.sh build-tsan >"$san_out/tsan2" 2>&1 &
pids+=($!)
# A short coverage-guided run of each fuzz target (fuzz/README.md; hours of
# it belong to `fuzz/run.sh 3600`).
(
	if FUZZ_NO_MERGE=1 fuzz/run.sh 20; then
		echo "2 0 0" >>"$SAMEPAGE_TOTALS"
	else
		echo "0 1 0" >>"$SAMEPAGE_TOTALS"
		exit 1
	fi
) >"$san_out/fuzz" 2>&1 &
pids+=($!)
for p in "${pids[@]}"; do
	wait "$p" || status=1
done
echo "== tests (ASan+UBSan)"
cat "$san_out/asan"
echo "== tests (TSan, in two shards)"
cat "$san_out/tsan1" "$san_out/tsan2"
echo "== fuzz (20 s per target)"
cat "$san_out/fuzz"
# One daemon through generations of processes that merge, rewrite, fork,
# exit and get killed (bench/soak.c; hours of it: bench/run.sh --soak).
echo "== soak (one daemon, 2 generations)"
rc=0
build/bench/soak --quick --generations 2 --no-kernel --quiet-wait 0 >/tmp/samepage-soak.$$ 2>&1 || rc=$?
tail -n 25 /tmp/samepage-soak.$$
rm -f /tmp/samepage-soak.$$
case $rc in 0) echo "1 0 0" ;; 77) echo "0 0 1" ;; *) echo "0 1 0"; status=1 ;; esac >>"$SAMEPAGE_TOTALS"
awk '{p+=$1; f+=$2; s+=$3} END {printf "total: %d passed, %d failed, %d skipped\n", p, f, s}' "$SAMEPAGE_TOTALS"
exit $status
