#!/usr/bin/env bash
# samepage against kernel KSM: 2 processes x 64 MiB, then x 256 MiB, each the
# median of 3 alternating runs (build/bench/ksm_compare; see its header).
#
#   sudo bench/run.sh [ksm_compare options, e.g. --repeat 5 --writes 4096]
#
# ksm_compare switches kernel KSM off and restores the knobs it changed even
# on errors and signals; this script does it once more should the program be
# killed outright (SIGKILL, OOM).
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: needs root (kernel KSM, page frames)" >&2; exit 1; }
make -j2 build/lib/libsamepage.so build/bin/samepaged build/bin/samepage \
	build/bench/ksm_compare >/dev/null

KSM=/sys/kernel/mm/ksm
knobs="pages_to_scan sleep_millisecs smart_scan"
declare -A saved
for k in $knobs; do saved[$k]=$(cat "$KSM/$k"); done
run0=$(cat "$KSM/run")
restore() {
	if [ "$run0" = 0 ] && [ "$(cat "$KSM/run")" != 0 ]; then
		echo 2 >"$KSM/run"
		for _ in $(seq 600); do [ "$(cat "$KSM/pages_shared")" = 0 ] && break; sleep 0.1; done
		echo 0 >"$KSM/run"
	fi
	for k in $knobs; do
		[ "$(cat "$KSM/$k")" = "${saved[$k]}" ] || echo "${saved[$k]}" >"$KSM/$k" || true
	done
}
trap restore EXIT
trap 'exit 130' INT TERM

echo "# $(uname -r), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src include 2>/dev/null || echo '+changes'), $(date -u +%FT%TZ)"
for mib in 64 256; do
	echo "\$ build/bench/ksm_compare --mib $mib $*"
	build/bench/ksm_compare --mib "$mib" "$@"
	echo
done
