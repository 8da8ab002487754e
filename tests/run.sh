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
for t in "$O"/tests/unit/* "$O"/tests/integration/*; do
	[ -x "$t" ] || continue
	name=${t#"$O"/tests/}
	start=$(date +%s.%N)
	out=$(timeout "${TEST_TIMEOUT:-300}" "$t" 2>&1)
	rc=$?
	secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
	77) skip=$((skip + 1)); echo "SKIP $name: $(echo "$out" | grep -m1 SKIP)" ;;
	*) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc, ${secs}s)"
	   echo "$out" | tail -n 30 | sed 's/^/    /' ;;
	esac
done
# Shell tests (tests/*.sh: `make install` and the installed files), once:
# the plain build, what a package ships.
if [ -z "${SAMEPAGE_SAN:-}" ]; then
	for t in tests/*.sh; do
		[ "$t" != tests/run.sh ] && [ -x "$t" ] || continue
		name=${t#tests/}
		start=$(date +%s.%N)
		out=$(timeout "${TEST_TIMEOUT:-300}" "$t" "$O" 2>&1)
		rc=$?
		secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
		case $rc in
		0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
		77) skip=$((skip + 1)); echo "SKIP $name: $(echo "$out" | grep -m1 SKIP)" ;;
		*) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc, ${secs}s)"
		   echo "$out" | tail -n 30 | sed 's/^/    /' ;;
		esac
	done
fi
# Real programs (QEMU, Redis, Python) under `samepage run`, in the small
# versions of examples/*.sh, once: the plain build (a sanitizer-built library
# cannot be preloaded into programs that were not built with it).
if [ -z "${SAMEPAGE_SAN:-}" ] && [ -z "${SAMEPAGE_NO_EXAMPLES:-}" ]; then
	for t in examples/*.sh; do
		[ -x "$t" ] || continue
		name=${t%.sh}
		start=$(date +%s.%N)
		out=$(SAMEPAGE_BUILD="$PWD/$O" timeout "${EXAMPLE_TIMEOUT:-600}" "$t" --small 2>&1)
		rc=$?
		secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
		case $rc in
		0) pass=$((pass + 1)); echo "PASS $name --small (${secs}s)"
		   echo "$out" | tail -n 4 | sed 's/^/    /' ;;
		77) skip=$((skip + 1)); echo "SKIP $name: $(echo "$out" | grep -m1 SKIP)" ;;
		*) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name --small (exit $rc, ${secs}s)"
		   echo "$out" | tail -n 30 | sed 's/^/    /' ;;
		esac
	done
fi
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
echo "${SAMEPAGE_SAN:-plain}: $pass passed, $fail failed, $skip skipped"
[ -z "${SAMEPAGE_TOTALS:-}" ] || echo "$pass $fail $skip" >>"$SAMEPAGE_TOTALS"
[ "$fail" -eq 0 ]
