#!/usr/bin/env bash
# The whole test suite: unit and integration tests and the small versions of
# examples/*.sh (QEMU, Redis, Python under samepage), then the tests built
# with AddressSanitizer+UBSan and with ThreadSanitizer, then a short run of
# the fuzz targets. Installs what is missing.
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
echo "== tests (ASan+UBSan)"
SAMEPAGE_SAN=asan tests/run.sh build-asan || status=1
echo "== tests (TSan)"
SAMEPAGE_SAN=tsan tests/run.sh build-tsan || status=1
# A short coverage-guided run of each fuzz target (fuzz/README.md; hours of
# it belong to `fuzz/run.sh 3600`).
echo "== fuzz (20 s per target)"
if FUZZ_NO_MERGE=1 fuzz/run.sh 20; then
	echo "2 0 0" >>"$SAMEPAGE_TOTALS"
else
	echo "0 1 0" >>"$SAMEPAGE_TOTALS"
	status=1
fi
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
