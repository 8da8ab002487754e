#!/usr/bin/env bash
# samepage in 30 seconds: N processes (default 4) each hold the same 64 MiB
# of data plus 1 MiB of their own, as software written for kernel KSM does
# (they call madvise(MADV_MERGEABLE)). They run under `samepage run`, which
# serves that madvise in user space. We print their memory before and after
# merging, how long merging took, and what it saved; then each process checks
# every byte it wrote, and the pool empties when they exit.
#
#   ./demo.sh [N] [MIB]        e.g. ./demo.sh 8 32
#
# Memory is measured as distinct physical page frames (root; pagemap) or as
# the sum of Pss (otherwise, or with SAMEPAGE_DEMO_PSS=1).
#
# On a fresh Debian machine it first installs what building needs (gcc, make,
# libc6-dev, libxxhash-dev) with apt-get, through sudo when not root.
set -eu
cd "$(dirname "$0")"
N=${1:-4}
MIB=${2:-64}
PRIV_KIB=1024

say() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
case "$N$MIB" in *[!0-9]*) die "usage: ./demo.sh [N] [MIB]" ;; esac
[ "$N" -ge 2 ] && [ "$MIB" -ge 1 ] || die "usage: ./demo.sh [N>=2] [MIB>=1]"

# ---- 1. what the build needs, from Debian's packages ----
missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
if command -v dpkg-query >/dev/null; then
	for p in gcc make libc6-dev libxxhash-dev; do have_pkg "$p" || missing+=("$p"); done
else # not Debian: check by hand, install nothing
	command -v cc >/dev/null || missing+=(gcc)
	command -v make >/dev/null || missing+=(make)
	[ -e /usr/include/xxhash.h ] || missing+=(libxxhash-dev)
	[ ${#missing[@]} -eq 0 ] || die "please install: ${missing[*]}"
fi
if [ ${#missing[@]} -gt 0 ]; then
	sudo=
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "needs ${missing[*]}; run as root or install sudo"
		sudo=sudo
	fi
	say "== installing ${missing[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- 2. build ----
say "== building (make -j2)"
if ! make -j2 >/dev/null; then
	say "demo: the full build failed (see above); building only what the demo needs"
	make -j2 build/lib/libsamepage.so build/bin/samepaged build/bin/samepage \
		build/examples/demo >/dev/null
fi
SP=build/bin/samepage
DEMO=build/examples/demo

# ---- 3. the demonstration, with a daemon of its own ----
tmp=$(mktemp -d /tmp/samepage-demo.XXXXXX)
export SAMEPAGE_SOCKET=$tmp/sock
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	d=$($DEMO mem --daemon "$tmp/sock.lock" 2>/dev/null | awk '{print $4}')
	[ -n "$d" ] && [ "$d" -gt 0 ] && kill "$d" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
status() { $SP status --json | sed -n "s/.*\"$1\": \\([-0-9]*\\).*/\\1/p"; }
measure() { $DEMO mem ${SAMEPAGE_DEMO_PSS:+--pss} --daemon "$tmp/sock.lock" "${pids[@]}"; }

# Merging off while the processes start, so that "before" is before.
$SP set run=0 >/dev/null

say "== starting $N processes: $MIB MiB of identical data + $PRIV_KIB KiB of their own each"
for i in $(seq 1 "$N"); do
	$SP run -- $DEMO hold --mib "$MIB" --private-kib "$PRIV_KIB" --id "$i" \
		>"$tmp/out.$i" 2>"$tmp/err.$i" &
	pids+=($!)
done
for i in $(seq 1 "$N"); do
	until grep -q '^ready' "$tmp/out.$i"; do
		kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { cat "$tmp/err.$i" >&2; die "process $i died"; }
		sleep 0.05
	done
done
# Without userfaultfd nothing merges: `samepage run`'s advice (the same
# for each process), once.
grep -q -i 'userfaultfd' "$tmp/err.1" 2>/dev/null && grep '^samepage' "$tmp/err.1" >&2 || true

read -r procs0 total0 method _ < <(measure)
if [ "$method" = frames ]; then
	how="distinct physical page frames of the $N processes (pagemap)"
else
	how="sum of Pss of the $N processes (smaps_rollup)"
	[ "$(id -u)" -eq 0 ] || how="$how; as root: distinct page frames"
fi
say "   memory before: $(mib "$procs0") MiB in the processes; $(mib "$total0") MiB with the samepage daemon"
say "   [$how]"

# ---- merge ----
ideal=$(( (N - 1) * MIB * 1024 ))          # KiB that can be saved at best
$SP set run=1 >/dev/null
t0=$(now)
best=$procs0 t_best=$t0
say "== merging (samepage set run=1)"
while :; do
	sleep 0.1
	read -r procs total method _ < <(measure)
	t=$(now)
	if [ "$procs" -lt "$best" ]; then best=$procs; t_best=$t; fi
	# Done: 99% of the ideal saving (page frames of the processes: exact;
	# with Pss, the daemon's share of the pool makes the processes' Pss fall
	# below what they really hold, so ask samepage's pages_sharing), or no
	# progress for 3 s, or 25 s in all.
	if [ "$method" = frames ]; then
		[ $(( procs0 - procs )) -ge $(( ideal * 99 / 100 )) ] && break
	else
		[ "$(status pages_sharing)" -ge $(( ideal * 99 / 400 )) ] && break  # KiB -> pages
	fi
	awk -v t="$t" -v g="$t_best" -v s="$t0" 'BEGIN { exit !(t - g > 3 || t - s > 25) }' && break
done
secs=$(awk -v a="$t0" -v b="$t_best" 'BEGIN { printf "%.2f", b - a }')
waited=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
pool=$(status pool_bytes)
sharing=$(status pages_sharing)
saved=$(( total0 - total ))
pct=$(awk -v s="$saved" -v b="$total0" 'BEGIN { printf "%.0f", b ? 100 * s / b : 0 }')
say "   memory after:  $(mib "$procs") MiB in the processes; $(mib "$total") MiB with the samepage daemon"
say "   pool: $(mib $(( pool / 1024 ))) MiB; pages_sharing $sharing (\`samepage status\`)"
if [ "$saved" -gt $(( ideal / 2 )) ]; then
	say "   merged in ${secs} s: saved $(mib "$saved") MiB = ${pct}% (at best $(mib "$ideal") MiB)"
else
	say "   after ${waited} s only $(mib "$saved") MiB was saved (at best $(mib "$ideal") MiB)."
	[ "$(id -u)" -eq 0 ] || say "   samepage needs userfaultfd: as a user, ask for read access to" \
		"/dev/userfaultfd or vm.unprivileged_userfaultfd=1 (see the warning above)."
fi

# ---- verify and exit ----
say "== each process checks every byte it wrote, then exits"
fail=0
for i in $(seq 1 "$N"); do
	p=${pids[$((i - 1))]}
	kill -USR1 "$p"
	wait "$p" || fail=1
	sed -n '2,$p' "$tmp/out.$i" | sed 's/^/   /'
done
pids=()
for _ in $(seq 50); do [ "$(status pool_pages)" = 0 ] && break; sleep 0.1; done
say "   pool after they exited: $(status pool_pages) pages ($(status pool_bytes) bytes)"
[ "$fail" -eq 0 ] || die "a process found its data changed"
say "== done"
