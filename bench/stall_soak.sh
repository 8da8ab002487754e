#!/usr/bin/env bash
# stall_soak.sh — hours of a daemon stopped, frozen and killed at random
# moments while processes merge, write and fork: tests/integration/
# daemon_stall.c with SAMEPAGE_STALLS=random:N, over and over.
#
#   bench/stall_soak.sh [HOURS] [BUILD]     (default 1 hour, build/)
#
# Each run of the test is one daemon's life: A1 and A2 merge 16 MiB with
# writers running, then rounds of a stall of 1-30 s (SIGSTOP or the cgroup
# freezer) or a SIGKILL, during which A1 forks and unmerges; after each
# round two new processes merge new content and every byte of every
# process (and of A1's fork children) is compared with its shadow. Prints
# per run and at the end: rounds, stalls, kills, seconds stalled, failures.
# Anything but 0 failures is a bug: the failing run's output is kept.
set -u
cd "$(dirname "$0")/.."
hours=${1:-1}
build=${2:-build}
bin=$build/tests/integration/daemon_stall
[ -x "$bin" ] || { echo "stall_soak: $bin missing: run make first" >&2; exit 2; }
end=$(( $(date +%s) + $(printf '%.0f' "$(echo "$hours * 3600" | bc)") ))
runs=0 fails=0 rounds=0 stalls=0 kills=0 secs=0
log=$(mktemp)
while [ "$(date +%s)" -lt "$end" ]; do
	runs=$((runs + 1))
	if SAMEPAGE_STALLS=random:20 timeout 3600 "$bin" >"$log" 2>&1; then
		:
	else
		fails=$((fails + 1))
		cp "$log" "${TMPDIR:-/tmp}/stall_soak-fail-$runs.log"
		echo "run $runs FAILED, output kept in ${TMPDIR:-/tmp}/stall_soak-fail-$runs.log"
	fi
	r=$(grep -c '^round' "$log")
	s=$(grep '^round' "$log" | grep -vc SIGKILL)
	k=$(grep -c '^round.*SIGKILL' "$log")
	t=$(grep '^round' "$log" | awk '{for (i=1;i<=NF;i++) if ($i=="for") s+=$(i+1)} END {print s+0}')
	rounds=$((rounds + r)); stalls=$((stalls + s)); kills=$((kills + k)); secs=$((secs + t))
	echo "run $runs: $r rounds ($s stalls, $k kills, $t s), total $rounds rounds, $fails failed"
done
rm -f "$log"
echo "stall_soak: $runs runs, $rounds rounds: $stalls stalls ($secs s stalled or dead in all), $kills kills; failures: $fails"
[ "$fails" -eq 0 ]
