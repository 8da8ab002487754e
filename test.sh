#!/usr/bin/env bash
# The whole test suite: unit and integration tests and the small versions of
# examples/*.sh (QEMU, Redis, Python under samepage), then the tests built
# with AddressSanitizer+UBSan and with ThreadSanitizer. Installs what is
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
trap 'rm -f "$SAMEPAGE_TOTALS"' EXIT
echo "== tests (plain build)"
tests/run.sh build || status=1
echo "== tests (ASan+UBSan)"
SAMEPAGE_SAN=asan tests/run.sh build-asan || status=1
echo "== tests (TSan)"
SAMEPAGE_SAN=tsan tests/run.sh build-tsan || status=1
awk '{p+=$1; f+=$2; s+=$3} END {printf "total: %d passed, %d failed, %d skipped\n", p, f, s}' "$SAMEPAGE_TOTALS"
exit $status
