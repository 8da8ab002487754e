#!/usr/bin/env bash
# Three Redis servers holding the same data set, merged by samepage (and, in
# the full mode, by kernel KSM for comparison).
#
#   examples/redis.sh [--small]
#
# Each redis-server (Debian's package) runs under
# `samepage run --merge-any` (as prctl(PR_SET_MEMORY_MERGE, 1) would), on a
# unix socket of its own, persistence off. All three are loaded with the same
# documents; merging is switched on while redis-benchmark reads them; then
# redis-benchmark writes (another db), some documents are overwritten in place
# and restored, some deleted and stored again, while the scanners keep running.
# Checked: DEBUG DIGEST and a sample of GETs equal before and after, and equal
# across the three servers; no redis-benchmark error; memory saved at least
# MIN_PCT % of the ideal; a BGSAVE (Redis forks; the child writes the
# merged memory to disk) gives a dump that loads back to the same digest.
# The full mode then does the same with kernel KSM (redis-server started
# through a helper that calls prctl(PR_SET_MEMORY_MERGE, 1) and execs it;
# the kernel keeps the flag across exec since 6.7) and prints both side by
# side. --small: smaller data set, no kernel KSM; well under 2 minutes.
#
# Memory = distinct physical page frames of the three redis-server processes
# (pagemap, as root; `build/examples/demo mem`), with samepage's daemon (which
# holds the pool) included; as a user, the sum of Pss instead.
#
# The data set, and why: 16384 (full) or 4096 (--small) JSON-like documents
# of 14330 bytes, every byte a function of the key. 14330 bytes + Redis's
# 5-byte sds header + NUL is 14336, jemalloc's largest *small* size class:
# such objects sit in page-aligned slabs at fixed offsets, back to back, so
# three servers loaded in the same order hold page after page of identical
# value bytes (about 2/3 of them can go). Two things would defeat merging,
# under samepage and kernel KSM alike: small objects (keys, dict entries,
# robj headers: full of pointers, which differ under ASLR), and values of
# 16 KiB or more: jemalloc 5.3 starts each "large" allocation at a random
# cache-line offset inside its first page (opt.cache_oblivious, seeded from an
# ASLR'd address, not switchable in 5.3.0), so identical 64 KiB values occupy
# differently shifted pages and merge nowhere (measured: 3 x 64 MiB of such
# values saved nothing).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
SMALL=0
case "${1:-}" in
--small) SMALL=1 ;;
"") ;;
*) echo "usage: examples/redis.sh [--small]" >&2; exit 2 ;;
esac

VAL=14330                          # value bytes; 14336 with the sds header
if [ "$SMALL" = 1 ]; then DOCS=4096; else DOCS=16384; fi
MIN_PCT=75                         # saved >= 75% of the ideal, or failure
NSAMPLE=12                         # GETs compared

T0=$(date +%s.%N)
say() { printf '[%5.1f] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$*"; }
die() { printf 'redis.sh: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---- what it needs, from Debian's packages ----
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
missing=()
for p in redis-server redis-tools gcc make libc6-dev libxxhash-dev; do
	have_pkg "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "needs ${missing[*]} (run as root to install them)"
	say "== installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
fi
B=${SAMEPAGE_BUILD:-$repo/build}
SP=$B/bin/samepage
DEMO=$B/examples/demo
if [ ! -x "$SP" ] || [ ! -x "$B/bin/samepaged" ] || [ ! -e "$B/lib/libsamepage.so" ] || [ ! -x "$DEMO" ]; then
	say "== building samepage (make -j2)"
	make -C "$repo" -j2 >/dev/null
fi
if [ ! -x "$SP" ] || [ ! -x "$DEMO" ]; then die "no samepage build in $B"; fi

ROOT=0
[ "$(id -u)" -eq 0 ] && ROOT=1
KSM=/sys/kernel/mm/ksm
KSM_LOCK=/sys/kernel/mm/ksm   # flock on the directory itself, as python.sh: one kernel-KSM user at a time
KERNEL=0
if [ "$SMALL" = 0 ]; then
	if [ "$ROOT" = 1 ] && [ -w "$KSM/run" ]; then KERNEL=1
	else say "(no kernel KSM comparison: needs root and $KSM)"; fi
fi

# ---- private daemon, temp dir, cleanup ----
tmp=$(mktemp -d /tmp/samepage-redis.XXXXXX)
export SAMEPAGE_SOCKET=$tmp/sock
rpids=()
loaders=()
# shellcheck source=examples/common.sh
. "$repo/examples/common.sh"
stop_all() {
	for p in "${loaders[@]}" "${rpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${loaders[@]}" "${rpids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	loaders=()
	rpids=()
}
cleanup() {
	stop_all
	if [ -n "${checker:-}" ]; then kill "$checker" 2>/dev/null || true; fi
	ksm_off
	stop_daemon
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

gcc -O2 -Wall -o "$tmp/helper" "$repo/examples/redis/helper.c" || die "cannot build examples/redis/helper.c"
H=$tmp/helper

conf() { # NAME
	cat <<-EOF
		port 0
		unixsocket $tmp/$1.sock
		unixsocketperm 700
		save ""
		appendonly no
		dir $tmp
		dbfilename $1.rdb
		daemonize no
		enable-debug-command yes
		logfile $tmp/$1.log
	EOF
}
# Every client under a timeout: a server that hangs is a failure, not a hang.
cli() {
	local i=$1
	shift
	timeout 60 redis-cli -s "$tmp/r$i.sock" "$@" || die "redis-cli $* (server $i): no answer or failure (status $?)"
}

ping() { [ "$(timeout 10 redis-cli -s "$1" ping 2>/dev/null)" = PONG ]; }

# start MODE: three redis-server, MODE sp (samepage run --merge-any) or
# ksm (helper merge-any: prctl(PR_SET_MEMORY_MERGE, 1), exec).
start() {
	for i in 1 2 3; do
		conf "r$i" >"$tmp/r$i.conf"
		rm -f "$tmp/r$i.log"
		if [ "$1" = sp ]; then
			"$SP" run --merge-any -- redis-server "$tmp/r$i.conf" 2>"$tmp/r$i.err" &
		else
			"$H" merge-any redis-server "$tmp/r$i.conf" 2>"$tmp/r$i.err" &
		fi
		rpids+=($!)
	done
	for i in 1 2 3; do
		for _ in $(seq 200); do ping "$tmp/r$i.sock" && break; sleep 0.05; done
		ping "$tmp/r$i.sock" || { cat "$tmp/r$i.err" "$tmp/r$i.log" >&2 || true; die "redis-server $i did not start"; }
		pid=$(cli "$i" info server | tr -d '\r' | sed -n 's/^process_id://p')
		[ "$pid" = "${rpids[$((i - 1))]}" ] || die "redis-server $i: pid $pid, expected ${rpids[$((i - 1))]}"
	done
	if [ "$1" = ksm ]; then
		for p in "${rpids[@]}"; do
			grep -q '^ksm_merge_any: yes' "/proc/$p/ksm_stat" ||
				die "kernel: PR_SET_MEMORY_MERGE not inherited across exec by pid $p"
		done
	fi
}

pipe() { # SERVER REPLIES CMD...: CMD's RESP output into the server, no error
	local i=$1 n=$2 out
	shift 2
	out=$("$@" | cli "$i" --pipe 2>&1 | tail -n 1)
	[ "$out" = "errors: 0, replies: $n" ] || die "server $i: $* | redis-cli --pipe: $out"
}

load() {
	for i in 1 2 3; do pipe "$i" "$DOCS" "$H" gen "$DOCS" "$VAL"; done
}

# The sample of keys whose values are compared (GET) with what the generator
# makes, and keys written during the write phase.
samples=$(awk -v n="$DOCS" -v s="$NSAMPLE" 'BEGIN { for (j = 0; j < s; j++) print int(j * (n - 1) / (s - 1)) }')
key() { printf 'doc:%012d' "$1"; }

# check LABEL: digests equal across the servers (and to the first one seen),
# sampled GETs equal to the generator's values, sizes right.
digest0=
check() {
	local d i k
	for i in 1 2 3; do
		d=$(cli "$i" debug digest)
		[ "${#d}" -eq 40 ] || die "$1: server $i: DEBUG DIGEST said '$d'"
		[ -n "$digest0" ] || digest0=$d
		[ "$d" = "$digest0" ] || die "$1: server $i: DEBUG DIGEST $d, expected $digest0"
		[ "$(cli "$i" dbsize)" = "$DOCS" ] || die "$1: server $i: dbsize $(cli "$i" dbsize), expected $DOCS"
		# shellcheck disable=SC2086 # $samples: a list of numbers
		cmp -s <(for k in $samples; do echo "GET $(key "$k")"; done | cli "$i" --raw) \
			<("$H" value "$VAL" $samples) ||
			die "$1: server $i: a GET of the sample ($samples) differs from the generated value"
	done
	say "   $1: DEBUG DIGEST $digest0 on all three; $NSAMPLE GETs each equal to the generator's"
}

MEMOPT=()
[ "$ROOT" = 1 ] || MEMOPT=(--pss)
measure() { # -> "PROCS_KIB TOTAL_KIB METHOD": under kernel KSM, no daemon to add
	if [ "$MODE" = sp ]; then "$DEMO" mem "${MEMOPT[@]}" --daemon "$tmp/sock.lock" "${rpids[@]}"
	else "$DEMO" mem "${MEMOPT[@]}" "${rpids[@]}"; fi
}

# Read load: redis-benchmark GETs random documents on every server, in rounds,
# until $tmp/stop exists.
start_read_load() {
	rm -f "$tmp/stop"
	for i in 1 2 3; do
		(
			while [ ! -e "$tmp/stop" ]; do
				timeout 120 redis-benchmark -s "$tmp/r$i.sock" -q -n 5000 -c 4 -r "$DOCS" \
					GET 'doc:__rand_int__' || { echo "EXIT STATUS $?"; exit 1; }
			done
		) >"$tmp/read.$i" 2>&1 &
		loaders+=($!)
	done
}
stop_load() { # LABEL
	touch "$tmp/stop"
	local fail=0 p
	for p in "${loaders[@]}"; do wait "$p" || fail=1; done
	loaders=()
	[ "$fail" = 0 ] || { tail -n 5 "$tmp"/read.* >&2; die "$1: redis-benchmark failed"; }
	! grep -qi 'error' "$tmp"/read.* || { grep -hi error "$tmp"/read.* | head >&2; die "$1: redis-benchmark saw errors"; }
}
rps() { # mean requests per second of the rounds in file $1
	tr '\r' '\n' <"$1" | sed -n 's/.* \([0-9.]*\) requests per second.*/\1/p' |
		awk '{ s += $1; n++ } END { printf "%.0f", n ? s / n : 0 }'
}

# merge MODE: switch merging on (under read load), poll memory until it stops
# improving; sets before_kib, after_kib, saved_kib, t90, t_best.
ideal_kib=$(( 2 * DOCS * (VAL + 6) / 1024 ))
merge() {
	local total method t t0 best best_t limit stall
	read -r _ before_kib method _ < <(measure)
	start_read_load
	sleep 0.5
	t0=$(now)
	if [ "$1" = sp ]; then "$SP" set run=1 >/dev/null; else echo 1 >"$KSM/run"; fi
	best=0 best_t=$t0
	if [ "$SMALL" = 1 ]; then limit=40; else limit=150; fi
	# done when no 1% progress for 3 s (samepage) or 15 s (kernel KSM, which
	# merges once per full scan, and its scans take seconds here)
	if [ "$1" = sp ]; then stall=3; else stall=15; fi
	: >"$tmp/series"
	while :; do
		sleep 0.25
		read -r _ total method _ < <(measure)
		t=$(now)
		saved=$(( before_kib - total ))
		echo "$(awk -v a="$t0" -v b="$t" 'BEGIN { printf "%.2f", b - a }') $saved" >>"$tmp/series"
		if [ "$saved" -gt $(( best + ideal_kib / 100 )) ]; then best=$saved best_t=$t; fi
		[ "$saved" -ge $(( ideal_kib * 99 / 100 )) ] && break
		awk -v t="$t" -v g="$best_t" -v s="$t0" -v b="$best" -v i="$ideal_kib" -v w="$stall" -v l="$limit" \
			'BEGIN { exit !((b > i / 10 && t - g > w) || t - s > l) }' && break
	done
	stop_load "$1 merge"
	read -r _ after_kib method _ < <(measure)
	saved_kib=$(( before_kib - after_kib ))
	# seconds until 90% of the best saving seen, and until the best
	read -r t90 t_best < <(awk '{ t[NR] = $1; s[NR] = $2; if ($2 > m) m = $2 }
		END { for (j = 1; j <= NR; j++) if (s[j] >= 0.9 * m) { a = t[j]; break }
		      for (j = 1; j <= NR; j++) if (s[j] >= 0.99 * m) { b = t[j]; break }
		      printf "%s %s\n", a, b }' "$tmp/series")
	mem_method=$method
	rps_read=$(( ($(rps "$tmp/read.1") + $(rps "$tmp/read.2") + $(rps "$tmp/read.3")) / 3 ))
}

# Write load while the scanners run: redis-benchmark's mixed tests in db 1
# (and 14 KiB SETs, which reuse the slabs of freed documents), documents of
# db 0 overwritten in place (SETRANGE on merged pages: copy-on-write) and
# restored, others deleted and stored again. Then db 1 is flushed: the data
# set must be what it was.
write_load() {
	local i k n
	if [ "$SMALL" = 1 ]; then n=4000; else n=20000; fi
	rm -f "$tmp/stop"
	for i in 1 2 3; do
		(
			timeout 300 redis-benchmark -s "$tmp/r$i.sock" --dbnum 1 -q -n "$n" -c 4 -r 10000 \
				-t set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,lrange_100,mset ||
				{ echo "EXIT STATUS $?"; exit 1; }
			timeout 300 redis-benchmark -s "$tmp/r$i.sock" --dbnum 1 -q -n "$n" -c 4 -r 2000 -d "$VAL" -t set ||
				{ echo "EXIT STATUS $?"; exit 1; }
		) >"$tmp/write.$i" 2>&1 &
		loaders+=($!)
	done
	nmark=$(( (DOCS + 96) / 97 ))
	nreset=$(( (DOCS - 5 + 100) / 101 ))
	for i in 1 2 3; do
		pipe "$i" "$nmark" "$H" edit mark "$DOCS" "$VAL" 0 97
		out=$(for k in $(seq 0 97 $((DOCS - 1))); do echo "GETRANGE $(key "$k") 100 119"; done |
			cli "$i" | sort | uniq -c | awk '{ print $1, $2 }')
		[ "$out" = "$nmark XXXXXXXXXXXXXXXXXXXX" ] || die "$1: SETRANGE not seen: $out"
		pipe "$i" "$nmark" "$H" edit restore "$DOCS" "$VAL" 0 97
		pipe "$i" $(( 2 * nreset )) "$H" edit reset "$DOCS" "$VAL" 5 101
	done
	local fail=0 p
	for p in "${loaders[@]}"; do wait "$p" || fail=1; done
	loaders=()
	[ "$fail" = 0 ] || { tail -n 5 "$tmp"/write.* >&2; die "$1 write load: redis-benchmark failed"; }
	! grep -qi 'error' "$tmp"/write.* || { grep -hi error "$tmp"/write.* | head >&2; die "$1 write load: redis-benchmark saw errors"; }
	for i in 1 2 3; do
		[ "$(cli "$i" -n 1 flushdb)" = OK ] || die "FLUSHDB 1"
	done
	sleep 3
	read -r _ load_kib _ < <(measure)
}

# BGSAVE: Redis forks; the child (under samepage a samepage process too,
# under kernel KSM merge-any too) writes the merged memory to disk. The dump, loaded by a plain redis-server, must give the
# same digest.
checker=
bgsave() {
	local t0 st d
	t0=$(now)
	cli 1 bgsave >/dev/null
	for _ in $(seq 600); do
		st=$(cli 1 info persistence | tr -d '\r')
		echo "$st" | grep -q '^rdb_bgsave_in_progress:0' && break
		sleep 0.1
	done
	echo "$st" | grep -q '^rdb_last_bgsave_status:ok' || die "BGSAVE failed: $(echo "$st" | grep bgsave)"
	bgsave_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
	conf chk >"$tmp/chk.conf"
	sed -i "s|^dbfilename .*|dbfilename r1.rdb|" "$tmp/chk.conf"
	redis-server "$tmp/chk.conf" 2>"$tmp/chk.err" &
	checker=$!
	for _ in $(seq 300); do ping "$tmp/chk.sock" && break; sleep 0.1; done
	d=$(timeout 60 redis-cli -s "$tmp/chk.sock" debug digest)
	kill "$checker"
	wait "$checker" 2>/dev/null || true
	checker=
	[ "$d" = "$digest0" ] || die "BGSAVE: the dump loads with digest '$d', expected $digest0"
	say "   BGSAVE (fork) in ${bgsave_s} s; the dump loads back with the same digest"
}

# ---- one run: MODE sp or ksm; results in R[MODE_*] ----
declare -A R=()
run() {
	local mode=$1 name
	MODE=$mode
	if [ "$mode" = sp ]; then name=samepage; else name="kernel KSM"; fi
	say "== $name: 3 x redis-server, $DOCS documents of $VAL bytes each ($(mib $(( DOCS * (VAL + 6) / 1024 ))) MiB of values per server)"
	if [ "$mode" = sp ]; then "$SP" set run=0 >/dev/null; fi
	start "$mode"
	t=$(now); load
	say "   loaded in $(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
	check "loaded"
	say "   merging, under redis-benchmark GETs ..."
	merge "$mode"
	check "after merging"
	say "   memory: $(mib "$before_kib") MiB before, $(mib "$after_kib") MiB after: saved $(mib "$saved_kib") MiB (at best $(mib "$ideal_kib") MiB); 90% of it after ${t90} s, all after ${t_best} s; ${rps_read} GET/s per server meanwhile"
	if [ "$mode" = sp ]; then
		"$SP" status --json >"$tmp/status.json"
		st() { sed -n "s/.*\"$1\": \\([-0-9]*\\).*/\\1/p" "$tmp/status.json"; }
		counters="pages_shared $(st pages_shared), pages_sharing $(st pages_sharing), ksm_zero_pages $(st ksm_zero_pages), pool $(mib $(( $(st pool_bytes) / 1024 ))) MiB, merge_vmas $(st merge_vmas), full_scans $(st full_scans)"
	else
		counters="pages_shared $(cat $KSM/pages_shared), pages_sharing $(cat $KSM/pages_sharing), ksm_zero_pages $(cat $KSM/ksm_zero_pages), full_scans $(cat $KSM/full_scans)"
	fi
	say "   counters: $counters"
	say "   write load (redis-benchmark in db 1; SETRANGE, restore, DEL+SET in db 0) ..."
	write_load "$name"
	check "after the write load"
	say "   after the write load (+3 s): $(mib "$load_kib") MiB (saved $(mib $(( before_kib - load_kib ))) MiB)"
	bgsave
	R[${mode}_before]=$before_kib R[${mode}_after]=$after_kib R[${mode}_saved]=$saved_kib
	R[${mode}_t90]=$t90 R[${mode}_tbest]=$t_best R[${mode}_load]=$load_kib R[${mode}_rps]=$rps_read
	R[${mode}_counters]=$counters R[${mode}_bgsave]=$bgsave_s
	stop_all
}

run sp
[ "$saved_kib" -ge $(( ideal_kib * MIN_PCT / 100 )) ] ||
	die "samepage saved $(mib "$saved_kib") MiB, less than ${MIN_PCT}% of $(mib "$ideal_kib") MiB"

if [ "$KERNEL" = 1 ]; then
	# One user of kernel KSM at a time on this machine (other examples too).
	exec 9<"$KSM_LOCK"
	flock -w 900 9 || die "kernel KSM: another script holds $KSM_LOCK"
	[ "$(cat $KSM/run)" = 0 ] || die "kernel KSM is on (run=$(cat $KSM/run)): someone else uses it"
	ksm_borrow pages_to_scan sleep_millisecs
	# The same scan budget as samepage's defaults: 16384 pages per 20 ms.
	echo 16384 >"$KSM/pages_to_scan"
	echo 20 >"$KSM/sleep_millisecs"
	stop_daemon
	digest0=
	run ksm
	ksm_off
	exec 9>&-
	if [ "$(cat $KSM/run)" != 0 ] || [ "$(cat $KSM/pages_shared)" != 0 ]; then die "kernel KSM not switched off"; fi
fi

say "== summary ($(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s; memory: $([ "$mem_method" = frames ] && echo "distinct page frames of the 3 redis-servers + samepage daemon" || echo "sum of Pss of the 3 redis-servers + samepage daemon"))"
row() { printf '   %-34s %-22s %s\n' "$@"; }
if [ "$KERNEL" = 1 ]; then
	row "" "samepage" "kernel KSM"
	row "memory before (MiB)" "$(mib "${R[sp_before]}")" "$(mib "${R[ksm_before]}")"
	row "memory after merging (MiB)" "$(mib "${R[sp_after]}")" "$(mib "${R[ksm_after]}")"
	row "saved (MiB; at best $(mib "$ideal_kib"))" "$(mib "${R[sp_saved]}")" "$(mib "${R[ksm_saved]}")"
	row "time to 90% / all of it (s)" "${R[sp_t90]} / ${R[sp_tbest]}" "${R[ksm_t90]} / ${R[ksm_tbest]}"
	row "GET/s per server while merging" "${R[sp_rps]}" "${R[ksm_rps]}"
	row "after write load + 3 s (MiB)" "$(mib "${R[sp_load]}")" "$(mib "${R[ksm_load]}")"
	row "BGSAVE, fork to dump written (s)" "${R[sp_bgsave]}" "${R[ksm_bgsave]}"
	say "   samepage:   ${R[sp_counters]}"
	say "   kernel KSM: ${R[ksm_counters]}"
	say "   (both at pages_to_scan=16384 sleep_millisecs=20; other knobs at their defaults)"
else
	row "" "samepage"
	row "memory before (MiB)" "$(mib "${R[sp_before]}")"
	row "memory after merging (MiB)" "$(mib "${R[sp_after]}")"
	row "saved (MiB; at best $(mib "$ideal_kib"))" "$(mib "${R[sp_saved]}")"
	row "time to 90% / all of it (s)" "${R[sp_t90]} / ${R[sp_tbest]}"
	row "GET/s per server while merging" "${R[sp_rps]}"
	row "after write load + 3 s (MiB)" "$(mib "${R[sp_load]}")"
	row "BGSAVE, fork to dump written (s)" "${R[sp_bgsave]}"
	say "   samepage: ${R[sp_counters]}"
fi
say "== passed: digests and GETs intact, no redis-benchmark error, samepage saved >= ${MIN_PCT}% of the ideal"
