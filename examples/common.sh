# shellcheck shell=bash disable=SC2154
# examples/common.sh — what the example scripts share: borrowing kernel KSM
# and stopping their private samepage daemon. Sourced, not run (so not
# executable: tests/run.sh runs the executable examples/*.sh); the script
# sets KSM (/sys/kernel/mm/ksm), DEMO (build/examples/demo) and tmp (its
# temp dir, holding the daemon's sock.lock).

ksm_saved=()   # "knob=value" to put back when kernel KSM is given back
ksm_touched=0

# ksm_borrow KNOB...: remember the knobs' values; ksm_off restores them.
ksm_borrow() {
	ksm_saved=()
	for k in "$@"; do ksm_saved+=("$k=$(cat "$KSM/$k")"); done
	ksm_touched=1
}

# Kernel KSM back as found: unmerge everything (run=2, until pages_shared
# is 0, at most 60 s), run=0, the knobs restored. Safe to call twice.
ksm_off() {
	[ "$ksm_touched" = 1 ] || return 0
	echo 2 >"$KSM/run" 2>/dev/null || true
	for _ in $(seq 600); do
		[ "$(cat "$KSM/pages_shared")" = 0 ] && break
		sleep 0.1
	done
	echo 0 >"$KSM/run" || true
	for kv in "${ksm_saved[@]}"; do echo "${kv#*=}" >"$KSM/${kv%%=*}" || true; done
	ksm_touched=0
}

# The private samepage daemon (its pid from the lock file): stopped, and
# waited for (at most 5 s).
stop_daemon() {
	local d
	d=$("$DEMO" mem --daemon "$tmp/sock.lock" 2>/dev/null | awk '{print $4}') || true
	if [ -n "$d" ] && [ "$d" -gt 0 ]; then
		kill "$d" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$d" 2>/dev/null || break; sleep 0.1; done
	fi
}
