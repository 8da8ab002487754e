#!/usr/bin/env bash
# N Python interpreters holding the same large data, merged by samepage.
#
#   examples/python.sh [--small]
#
# Each interpreter (Debian's /usr/bin/python3, under
# `samepage run --merge-any -- python3 examples/python/worker.py ...`) imports
# the same ~145 standard-library modules and builds the same data set:
# bytearrays of pseudo-random bytes, an array.array of doubles and 1 MiB str
# pieces of text (see the comment at the top of examples/python/worker.py for
# why those pages, and not the interpreter's objects, are equal across
# interpreters). Each worker hashes all its data (sha256), waits while the
# pages merge, hashes again (must be unchanged), writes 8 bytes into 256
# pages of its blobs (copy-on-write of merged pages: each interpreter writes
# its own values) and checks what it reads back and the new hashes, then
# hashes once more after further scan passes. The script measures the
# interpreters' memory before and after merging (distinct physical page
# frames, from pagemap, as root; the sum of Pss otherwise), the time to merge,
# the CPU spent and samepage's counters, and checks every worker's report.
#
# Full mode (4 interpreters x 256 MiB of data) does the same again under
# kernel KSM: plain `python3 worker.py --ksm`, the worker calling
# prctl(PR_SET_MEMORY_MERGE, 1) itself through ctypes; /sys/kernel/mm/ksm
# run=1, pages_to_scan=100000, sleep_millisecs=0 (switched off with run=2
# and restored afterwards, also on errors), and prints both side by side.
# samepage runs with its default knobs. --small (3 x 48 MiB, samepage only)
# is the CI version. Both fail unless every worker's checks pass and merging
# saved at least MIN_PCT (80%) of the ideal: (N - 1) copies of the data set.
#
# Needs python3 (installed with apt-get when missing), and gcc, make,
# libc6-dev, libxxhash-dev when samepage must be built.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
SMALL=0
case "${1:-}" in
--small) SMALL=1 ;;
"") ;;
*) printf 'usage: %s [--small]\n' "$0" >&2; exit 2 ;;
esac
if [ "$SMALL" = 1 ]; then
	N=3 MIB=48 MERGE_MAX=40
else
	N=4 MIB=256 MERGE_MAX=240
fi
COW_PAGES=256   # pages each worker writes after merging
MIN_PCT=80      # minimum saving, in % of (N - 1) copies of the data set
PY=/usr/bin/python3
WORKER=$here/python/worker.py

say() { printf '%s\n' "$*"; }
die() { printf 'python.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---- 1. packages (Debian's apt only) ----
sudo=
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
apt_install() {
	say "== installing $*"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
[ -x "$PY" ] || apt_install python3
[ -x "$PY" ] || die "$PY is missing"

# ---- 2. samepage ----
B=${SAMEPAGE_BUILD:-$repo/build}
SP=$B/bin/samepage
DEMO=$B/examples/demo
if [ ! -x "$SP" ] || [ ! -x "$B/bin/samepaged" ] || [ ! -e "$B/lib/libsamepage.so" ] || [ ! -x "$DEMO" ]; then
	missing=()
	for p in gcc make libc6-dev libxxhash-dev; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
	say "== building samepage (make -C $repo -j2)"
	make -C "$repo" -j2 >/dev/null
fi

# ---- 3. the run, with a samepage daemon of its own ----
tmp=$(mktemp -d /tmp/samepage-python.XXXXXX)
export SAMEPAGE_SOCKET=$tmp/sock
KSM=/sys/kernel/mm/ksm
KSM_KNOBS=(pages_to_scan=100000 sleep_millisecs=0)
# shellcheck source=examples/common.sh
. "$here/common.sh"
wpids=()

# ksm_ours RUN: kernel KSM still as we set it (run=RUN and our knobs)?
ksm_ours() {
	local kv
	[ "$(cat "$KSM/run")" = "$1" ] || return 1
	for kv in "${KSM_KNOBS[@]}"; do [ "$(cat "$KSM/${kv%%=*}")" = "${kv#*=}" ] || return 1; done
	return 0
}
stop_workers() {
	for p in "${wpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${wpids[@]}"; do wait "$p" 2>/dev/null || true; done
	wpids=()
}
cleanup() {
	stop_workers
	ksm_off
	stop_daemon
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

status() { sed -n "s/.*\"$1\": \\([-0-9]*\\).*/\\1/p" "$tmp/status.json"; }
sp_status() { $SP status --json >"$tmp/status.json" && status "$1"; }
# CPU seconds (user + system) of processes, threads included
cpu() {
	local p s=0
	for p in "$@"; do
		[ -r "/proc/$p/stat" ] || continue
		s=$((s + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
	done
	awk -v t="$s" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
# wait_lines KEY: until every worker printed a line starting with KEY
wait_lines() {
	local i t0
	t0=$(now)
	for i in $(seq 1 "$N"); do
		until grep -q "^$1 " "$tmp/w$i.out"; do
			if ! kill -0 "${wpids[$((i - 1))]}" 2>/dev/null; then
				cat "$tmp/w$i.out" "$tmp/w$i.err" >&2
				die "worker $i exited before \"$1\""
			fi
			awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 300) }' &&
				die "worker $i: no \"$1\" line after 300 s"
			sleep 0.05
		done
	done
}
field() { sed -n "s/^$2 .* $3=\\([^ ]*\\).*/\\1/p" "$tmp/w$1.out" | head -n 1; }

# run_case MODE (samepage|kernel). Sets R_* (memory in KiB, times in s).
run_case() {
	local mode=$1 wrap=() args=() lock=() i procs total method t0 t tb best series
	local cpu0 ksmd dpid wall0 dig scans0 scans
	say ""
	if [ "$mode" = samepage ]; then
		say "== samepage: $N x \`samepage run --merge-any -- python3 worker.py --mib $MIB\`"
		$SP set run=0 >/dev/null      # merging off while they start: "before" is before
		wrap=("$SP" run --merge-any --)
		lock=(--daemon "$tmp/sock.lock")
	else
		say "== kernel KSM: $N x \`python3 worker.py --mib $MIB --ksm\` (prctl(PR_SET_MEMORY_MERGE, 1))"
		ksm_touched=1 R_INTERFERED=0
		echo 0 >"$KSM/run"
		for kv in "${KSM_KNOBS[@]}"; do echo "${kv#*=}" >"$KSM/${kv%%=*}"; done
		args=(--ksm)
	fi
	rm -f "$tmp"/w*.out "$tmp"/w*.err
	wall0=$(now)
	for i in $(seq 1 "$N"); do
		"${wrap[@]}" "$PY" "$WORKER" --mib "$MIB" --id "$i" --cow-pages "$COW_PAGES" "${args[@]}" \
			>"$tmp/w$i.out" 2>"$tmp/w$i.err" &
		wpids+=($!)
	done
	wait_lines ready
	if [ "$mode" = kernel ] && ! ksm_ours 0; then R_INTERFERED=1; fi
	dig=$(field 1 ready digest)
	for i in $(seq 1 "$N"); do
		[ "$(field "$i" ready digest)" = "$dig" ] ||
			die "$mode: worker $i built different data (digest $(field "$i" ready digest) != $dig)"
	done
	R_DATA=$(field 1 ready data_kib)
	R_BUILD=$(for i in $(seq 1 "$N"); do field "$i" ready build_s; done |
		awk '{ s += $1 } END { printf "%.2f", s / NR }')
	R_MODULES=$(field 1 ready modules)
	R_SYSMOD=$(field 1 ready sys_modules)
	say "   $N interpreters imported $R_MODULES modules ($R_SYSMOD in sys.modules) and built" \
		"$(mib "$R_DATA") MiB each in $(elapsed "$wall0" "$(now)") s (merging off); sha256 $dig"
	grep -h -m1 -i 'userfaultfd' "$tmp"/w*.err 2>/dev/null | head -n 1 >&2 || true
	sleep 0.5
	read -r R_BEFORE R_TBEFORE method _ < <($DEMO mem "${lock[@]}" "${wpids[@]}")
	R_METHOD=$method
	say "   memory of the $N interpreters before merging: $(mib "$R_BEFORE") MiB ($method)"

	# ---- merge ----
	if [ "$mode" = samepage ]; then
		dpid=$($DEMO mem "${lock[@]}" | awk '{print $4}')
		cpu0=$(cpu "${wpids[@]}" "$dpid")
		scans0=$(sp_status full_scans)
		$SP set run=1 >/dev/null
	else
		ksmd=$(pgrep -x ksmd | head -n 1)
		cpu0=$(cpu "${wpids[@]}" "$ksmd")
		scans0=$(cat "$KSM/full_scans")
		echo 1 >"$KSM/run"
	fi
	t0=$(now)
	best=$R_BEFORE tb=$t0 series=""
	while :; do
		sleep 0.25
		read -r procs total method _ < <($DEMO mem "${lock[@]}" "${wpids[@]}")
		t=$(now)
		series="$series
$(elapsed "$t0" "$t"):$total"
		# progress: at least 1 MiB below the best so far
		if [ "$procs" -lt $((best - 1024)) ]; then best=$procs tb=$t; fi
		if [ "$mode" = kernel ] && ! ksm_ours 1; then R_INTERFERED=1; break; fi
		# done: 5 s without progress after at least 3 full scans (kernel KSM
		# merges nothing before its second), or MERGE_MAX s in all
		if [ "$mode" = samepage ]; then scans=$(sp_status full_scans); else scans=$(cat "$KSM/full_scans"); fi
		awk -v t="$t" -v g="$tb" -v s="$t0" -v m="$MERGE_MAX" -v n=$((scans - scans0)) \
			'BEGIN { exit !((t - g > 5 && n >= 3) || t - s > m) }' && break
	done
	if [ "$mode" = samepage ]; then
		R_CPU=$(awk -v a="$cpu0" -v b="$(cpu "${wpids[@]}" "$dpid")" 'BEGIN { printf "%.2f", b - a }')
	else
		R_CPU=$(awk -v a="$cpu0" -v b="$(cpu "${wpids[@]}" "$ksmd")" 'BEGIN { printf "%.2f", b - a }')
	fi
	R_WAIT=$(elapsed "$t0" "$t")
	if [ "$mode" = kernel ] && [ "$R_INTERFERED" = 1 ]; then
		say "   someone else changed /sys/kernel/mm/ksm meanwhile (run=$(cat "$KSM/run")," \
			"pages_to_scan=$(cat "$KSM/pages_to_scan")): this measurement is void"
		stop_workers
		ksm_off
		return 0
	fi
	R_AFTER=$procs
	R_DAEMON=$((total - procs))
	R_SAVED=$((R_TBEFORE - total))   # samepage: the daemon's pool counted
	R_IDEAL=$(((N - 1) * R_DATA))
	R_PCT=$(awk -v s="$R_SAVED" -v i="$R_IDEAL" 'BEGIN { printf "%.1f", 100 * s / i }')
	# times at which 90% and 99% of the final saving were reached
	R_T90=- R_T99=-
	[ "$R_SAVED" -lt 1024 ] || R_T90=$(printf '%s\n' "$series" | awk -F: -v b="$R_TBEFORE" -v s="$R_SAVED" \
		'NF == 2 && b - $2 >= 0.9 * s { print $1; exit }')
	[ "$R_SAVED" -lt 1024 ] || R_T99=$(printf '%s\n' "$series" | awk -F: -v b="$R_TBEFORE" -v s="$R_SAVED" \
		'NF == 2 && b - $2 >= 0.99 * s { print $1; exit }')
	say "   memory after merging: $(mib "$R_AFTER") MiB (90% of the saving after ${R_T90} s," \
		"99% after ${R_T99} s; watched ${R_WAIT} s)"
	if [ "$mode" = samepage ]; then
		say "   + samepage daemon: $(mib "$R_DAEMON") MiB that the interpreters do not map (its indexes, unmapped pool pages)"
		$SP status --json >"$tmp/status.json"
		R_EXTRA=""
		for k in pages_shared pages_sharing pages_unshared pages_volatile ksm_zero_pages \
			full_scans pool_bytes merge_vmas vma_limited; do
			R_EXTRA="$R_EXTRA $k=$(status "$k")"
		done
		R_SHARED=$(status pages_shared) R_SHARING=$(status pages_sharing) R_ZERO=$(status ksm_zero_pages)
		R_PROFIT=$(status general_profit)
		R_SCANS=$(($(status full_scans) - scans0))
		say "   samepage status:$R_EXTRA"
	else
		R_EXTRA=""
		for k in pages_shared pages_sharing pages_unshared pages_volatile ksm_zero_pages full_scans; do
			R_EXTRA="$R_EXTRA $k=$(cat "$KSM/$k")"
		done
		R_SHARED=$(cat "$KSM/pages_shared") R_SHARING=$(cat "$KSM/pages_sharing")
		R_PROFIT=$(cat "$KSM/general_profit")
		# the kernel's bookkeeping is slab memory, outside the page frames measured
		R_RMAP=0
		for p in "${wpids[@]}"; do
			R_RMAP=$((R_RMAP + $(awk '/^ksm_rmap_items/ { print $2 }' "/proc/$p/ksm_stat")))
		done
		say "   kernel bookkeeping: $R_RMAP rmap_items x 64 B = $(mib $((R_RMAP * 64 / 1024))) MiB" \
			"of slab (+ stable nodes), not in the frames above"
		R_ZERO=$(cat "$KSM/ksm_zero_pages") R_SCANS=$(($(cat "$KSM/full_scans") - scans0))
		say "   /sys/kernel/mm/ksm:$R_EXTRA"
	fi
	say "   saved: $(mib "$R_SAVED") MiB = $R_PCT% of the ideal $(mib "$R_IDEAL") MiB" \
		"($((N - 1)) copies of the data set); CPU while merging: $R_CPU s"

	# ---- check, copy-on-write, check again ----
	for p in "${wpids[@]}"; do kill -USR1 "$p"; done
	wait_lines cow
	for i in $(seq 1 "$N"); do
		grep -q '^check ok ' "$tmp/w$i.out" || { cat "$tmp/w$i.out" >&2; die "$mode: worker $i: data changed by merging"; }
		[ "$(field "$i" check digest)" = "$dig" ] || die "$mode: worker $i: digest after merging differs"
		grep -q '^cow ok ' "$tmp/w$i.out" || { cat "$tmp/w$i.out" >&2; die "$mode: worker $i: copy-on-write check failed"; }
	done
	# every worker wrote its own values: the new digests must all differ
	[ "$(for i in $(seq 1 "$N"); do field "$i" cow digest; done | sort -u | wc -l)" = "$N" ] ||
		die "$mode: two workers report the same data after writing their own values"
	say "   every worker: data unchanged after merging; wrote 8 bytes into $COW_PAGES merged pages" \
		"each (copy-on-write) and read back exactly its own data"
	# two more full scans with the written pages
	if [ "$mode" = samepage ]; then scans0=$(sp_status full_scans); else scans0=$(cat "$KSM/full_scans"); fi
	for _ in $(seq 200); do
		sleep 0.1
		if [ "$mode" = samepage ]; then t=$(sp_status full_scans); else t=$(cat "$KSM/full_scans"); fi
		[ "$t" -ge $((scans0 + 2)) ] && break
	done
	read -r procs total _ < <($DEMO mem "${lock[@]}" "${wpids[@]}")
	R_COW=$((total - (R_TBEFORE - R_SAVED)))
	say "   after the writes and 2 more full scans: +$(mib "$R_COW") MiB" \
		"($N x $COW_PAGES pages written: $(mib $((N * COW_PAGES * 4))) MiB of private copies," \
		"less the $COW_PAGES shared pages nobody maps any more, if freed)"
	for p in "${wpids[@]}"; do kill -USR1 "$p"; done
	for i in $(seq 1 "$N"); do
		wait "${wpids[$((i - 1))]}" || { cat "$tmp/w$i.out" "$tmp/w$i.err" >&2; die "$mode: worker $i failed"; }
		grep -q '^final ok ' "$tmp/w$i.out" || die "$mode: worker $i: final check failed"
		[ "$(field "$i" final digest)" = "$(field "$i" cow digest)" ] || die "$mode: worker $i: final digest differs"
	done
	wpids=()
	R_CHECKS=ok
	say "   every worker: final hash of all its data as expected; all $N exited 0"
	if [ "$mode" = kernel ]; then ksm_off; fi
}

min_saved_of() { echo $(($1 * MIN_PCT / 100)); }
say "== $(basename "$0")$([ "$SMALL" = 1 ] && echo " --small"): $N Python interpreters ($($PY --version 2>&1))," \
	"$MIB MiB of data each; must save >= $MIN_PCT% of $((N - 1)) x the data"
[ "$(id -u)" -eq 0 ] || say "   (not root: memory is the sum of Pss; no kernel KSM comparison)"
say "   load average at start: $(cut -d" " -f1-3 /proc/loadavg) ($(nproc) CPUs); timings depend on it"

t_all=$(now)
run_case samepage
S_BEFORE=$R_BEFORE S_AFTER=$R_AFTER S_SAVED=$R_SAVED S_PCT=$R_PCT S_T90=$R_T90 S_T99=$R_T99
S_CPU=$R_CPU S_BUILD=$R_BUILD S_PROFIT=$R_PROFIT S_DAEMON=$R_DAEMON S_COW=$R_COW S_SHARED=$R_SHARED S_SHARING=$R_SHARING
S_ZERO=$R_ZERO S_SCANS=$R_SCANS METHOD=$R_METHOD IDEAL=$R_IDEAL DATA=$R_DATA
[ "$S_SAVED" -ge "$(min_saved_of "$IDEAL")" ] ||
	die "samepage saved only $(mib "$S_SAVED") MiB, expected >= $(mib "$(min_saved_of "$IDEAL")") MiB"
for _ in $(seq 50); do [ "$(sp_status pool_pages)" = 0 ] && break; sleep 0.1; done
[ "$(sp_status pool_pages)" = 0 ] || die "samepage's pool still holds $(status pool_pages) pages after the workers exited"
say "   pool empty after the workers exited"

if [ "$SMALL" = 0 ] && [ "$(id -u)" -eq 0 ] && [ -w "$KSM/run" ]; then
	# One user of kernel KSM at a time among the examples; and it must be off.
	# (flock on the directory itself: nothing to create or leave behind; the
	# other examples and bench/run.sh could take the same lock)
	exec 9<"$KSM"
	flock -w 600 9 || die "$KSM: still locked (flock) after 600 s"
	for _ in $(seq 600); do
		[ "$(cat "$KSM/run")" = 0 ] && [ "$(cat "$KSM/pages_shared")" = 0 ] && break
		sleep 0.5
	done
	[ "$(cat "$KSM/run")" = 0 ] || die "kernel KSM is on ($KSM/run != 0), someone else uses it"
	ksm_borrow "${KSM_KNOBS[@]%%=*}"
	for attempt in 1 2 3; do
		run_case kernel
		[ "$R_INTERFERED" = 1 ] || break
		if [ "$attempt" = 3 ]; then
			say "   kernel KSM comparison skipped: someone else kept changing /sys/kernel/mm/ksm"
			break
		fi
		say "   waiting for kernel KSM to be free, then again (attempt $((attempt + 1)) of 3)"
		for _ in $(seq 600); do
			[ "$(cat "$KSM/run")" = 0 ] && [ "$(cat "$KSM/pages_shared")" = 0 ] && break
			sleep 0.5
		done
		[ "$(cat "$KSM/run")" = 0 ] || die "kernel KSM is on ($KSM/run != 0), someone else uses it"
	done
	exec 9>&-
	[ "$R_INTERFERED" = 0 ] || { say ""; say "== done in $(elapsed "$t_all" "$(now)") s: samepage's checks passed"; exit 0; }
	[ "$(cat "$KSM/run")" = 0 ] || die "kernel KSM is not off again"
	[ "$R_SAVED" -ge "$(min_saved_of "$IDEAL")" ] ||
		say "   note: kernel KSM saved only $(mib "$R_SAVED") MiB"
	say ""
	say "== side by side: $N interpreters, $(mib "$DATA") MiB of data each;" \
		"memory = $METHOD of the $N python3 processes"
	row() { printf '   %-38s %14s %14s\n' "$@"; }
	row "" "samepage" "kernel KSM"
	row "knobs (pages_to_scan/sleep_millisecs)" "16384/20 ms" "100000/0 ms"
	row "build time per interpreter (s, wall)" "$S_BUILD" "$R_BUILD"
	row "interpreters before (MiB)" "$(mib "$S_BEFORE")" "$(mib "$R_BEFORE")"
	row "interpreters after (MiB)" "$(mib "$S_AFTER")" "$(mib "$R_AFTER")"
	row "+ samepage daemon (MiB)" "$(mib "$S_DAEMON")" "-"
	row "+ kernel rmap_items, slab (MiB)" "-" "$(mib $((R_RMAP * 64 / 1024)))"
	row "saved (MiB; samepage: daemon counted)" "$(mib "$S_SAVED")" "$(mib "$R_SAVED")"
	row "saved, % of $((N - 1)) x data ($(mib "$IDEAL") MiB)" "$S_PCT%" "$R_PCT%"
	row "time to 90% of the saving (s)" "$S_T90" "$R_T90"
	row "time to 99% of the saving (s)" "$S_T99" "$R_T99"
	row "CPU while merging (s)" "$S_CPU" "$R_CPU"
	row "general_profit (MiB)" "$(mib $((S_PROFIT / 1024)))" "$(mib $((R_PROFIT / 1024)))"
	row "pages_shared" "$S_SHARED" "$R_SHARED"
	row "pages_sharing" "$S_SHARING" "$R_SHARING"
	row "ksm_zero_pages" "$S_ZERO" "$R_ZERO"
	row "full_scans (while merging)" "$S_SCANS" "$R_SCANS"
	row "after $N x $COW_PAGES pages written (MiB)" "+$(mib "$S_COW")" "+$(mib "$R_COW")"
	row "data checks (hash, COW, final)" "ok" "$R_CHECKS"
	say "   CPU: the interpreters' and the samepage daemon's (samepage: their scanner threads) or"
	say "   the interpreters' and ksmd's (kernel), from when merging was switched on until 5 s without progress (after >= 3 full scans)."
fi
say ""
say "== done in $(elapsed "$t_all" "$(now)") s (load average now: $(cut -d' ' -f1-3 /proc/loadavg)): all checks passed"
