#!/usr/bin/env bash
# Run every test program of a build directory: unit tests, then integration
# tests, then (plain build only) the shell tests tests/*.sh and the small
# versions of examples/*.sh. A test exits 0 (pass), 77 (skip, with its
# reason) or anything else (fail). Ends with the summary line "N passed, N
# failed, N skipped".
set -u
O=${1:-build}
cd "$(dirname "$0")/.." || exit 1
pass=0 fail=0 skip=0 failed=()
case "${SAMEPAGE_SAN:-}" in
asan) export ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0:abort_on_error=0"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" ;;
tsan) export TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0:second_deadlock_stack=1:die_after_fork=0" ;;
esac
# Run one test and tally it: run_one NAME LABEL TIMEOUT PASS_LINES CMD...
# (LABEL names it in PASS/FAIL lines; PASS_LINES of its output follow a pass).
run_one() {
	local name=$1 label=$2 limit=$3 keep=$4 start out rc secs
	shift 4
	start=$(date +%s.%N)
	out=$(timeout "$limit" "$@" 2>&1)
	rc=$?
	secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $label (${secs}s)"
	   [ "$keep" -eq 0 ] || echo "$out" | tail -n "$keep" | sed 's/^/    /' ;;
	77) skip=$((skip + 1)); echo "SKIP $name: $(echo "$out" | grep -m1 SKIP)" ;;
	*) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $label (exit $rc, ${secs}s)"
	   echo "$out" | tail -n 30 | sed 's/^/    /' ;;
	esac
}
# Tests that change the whole machine (a sysctl), which nothing may run
# beside: test.sh runs them first, on their own (SAMEPAGE_ONLY=alone), and
# the rest side by side (SAMEPAGE_NOT_ALONE=1).
ALONE=" integration/vma_budget "
# SAMEPAGE_SHARD=K/N: only every Nth program from the Kth (test.sh runs a
# slow suite as shards side by side). SAMEPAGE_ONLY=examples: only the
# examples; SAMEPAGE_NO_EXAMPLES=1: all but them.
shard=${SAMEPAGE_SHARD:-1/1}
shard_k=${shard%/*} shard_n=${shard#*/} i=0
only=${SAMEPAGE_ONLY:-}
case $only in ""|examples|alone) ;;
*) echo "SAMEPAGE_ONLY=$only: 'examples' or 'alone'" >&2; exit 2 ;;
esac
for t in "$O"/tests/unit/* "$O"/tests/integration/*; do
	[ "$only" != examples ] && [ -x "$t" ] || continue
	name=${t#"$O"/tests/}
	case $ALONE in
	*" $name "*) [ -z "${SAMEPAGE_NOT_ALONE:-}" ] || continue ;;
	*) [ "$only" != alone ] || continue ;;
	esac
	i=$((i + 1))
	[ $(((i - 1) % shard_n)) -eq $((shard_k - 1)) ] || continue
	run_one "$name" "$name" "${TEST_TIMEOUT:-300}" 0 "$t"
done
# Shell tests (tests/*.sh: `make install` and the installed files), once:
# the plain build, what a package ships.
if [ -z "${SAMEPAGE_SAN:-}" ] && [ -z "$only" ] && [ "$shard_k" -eq 1 ]; then
	for t in tests/*.sh; do
		[ "$t" != tests/run.sh ] && [ -x "$t" ] || continue
		name=${t#tests/}
		run_one "$name" "$name" "${TEST_TIMEOUT:-300}" 0 "$t" "$O"
	done
fi
# Real programs (QEMU, Redis, Python) under `samepage run`, in the small
# versions of examples/*.sh, once: the plain build (a sanitizer-built library
# cannot be preloaded into programs that were not built with it).
if [ -z "${SAMEPAGE_SAN:-}" ] && [ -z "${SAMEPAGE_NO_EXAMPLES:-}" ] && [ "$only" != alone ] && [ "$shard_k" -eq 1 ]; then
	for t in examples/*.sh; do
		[ -x "$t" ] || continue
		name=${t%.sh}
		run_one "$name" "$name --small" "${EXAMPLE_TIMEOUT:-600}" 4 \
			env SAMEPAGE_BUILD="$PWD/$O" "$t" --small
	done
fi
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
label=${SAMEPAGE_SAN:-plain}
[ "$shard" = 1/1 ] || label="$label $shard"
[ -z "$only" ] || label="$label, $only"
echo "$label: $pass passed, $fail failed, $skip skipped"
[ -z "${SAMEPAGE_TOTALS:-}" ] || echo "$pass $fail $skip" >>"$SAMEPAGE_TOTALS"
[ "$fail" -eq 0 ]
