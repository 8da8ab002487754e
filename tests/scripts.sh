#!/usr/bin/env bash
# Every shell script of the project parses (bash -n), whether or not a
# test runs it: bench/run.sh carried a quote that ended its awk program
# early for a session, and no test ran it (benchmarks are run by hand).
# Usage: tests/scripts.sh; exits 1 naming each script that does not parse.
set -u
cd "$(dirname "$0")/.." || exit 1
fail=0 n=0
while IFS= read -r f; do
	first=
	IFS= read -r -n 64 first <"$f" 2>/dev/null || true
	case "$first" in
	'#!'*bash*|'#!'*/sh*) ;;
	*) continue ;;
	esac
	n=$((n + 1))
	if ! err=$(bash -n "$f" 2>&1); then
		echo "FAIL: $f does not parse: $err"
		fail=1
	fi
done < <(git ls-files 2>/dev/null || find . -type f -not -path './.git/*')
[ "$n" -gt 0 ] || { echo "SKIP: no scripts found"; exit 77; }
echo "checked $n scripts"
exit $fail
