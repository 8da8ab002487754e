#!/usr/bin/env bash
# Two QEMU guests whose memory samepage merges because QEMU asks for it:
# `-machine mem-merge=on` makes QEMU call madvise(MADV_MERGEABLE) on guest RAM,
# and under `samepage run` that madvise is served by samepage (no --merge-any,
# kernel KSM off).
#
#   examples/qemu_guests.sh [--small]
#   examples/qemu_guests.sh --images   only build the kernel and initramfs and
#                                      print their paths (examples/libvirt.sh)
#
# Both guests (qemu-system-x86_64, TCG, 256 MiB, 1 vCPU) boot the same Debian
# kernel with a busybox initramfs built here. Their /init runs
# examples/qemu_guests/guest.c, which fills MIB MiB of its memory with the same
# pseudo-random pages in both guests, then checks every page (regenerated and
# compared) every few seconds and on request, printing CHECK lines on the
# serial console. The script measures the QEMU processes' memory before and
# after merging (distinct physical page frames, pagemap, as root; sum of Pss
# otherwise), the time to merge and samepage's counters, asks both guests for
# a check after merging, stops them and checks every report.
#
# Then both guests rewrite every other page of their (merged) workload with
# the same new data: merged pages are written (copy-on-write) and merge again;
# memory and VMAs are measured and the guests check again.
#
# With samepage, a third guest then boots while the two are merged and
# merging is on (as on a busy host), and must boot, fill and check its
# workload like them.
#
# Full mode (128 MiB per guest) does all this three times: samepage with its
# default knobs, samepage at pages_to_scan=100000 sleep_millisecs=0, and kernel
# KSM (QEMU without samepage; /sys/kernel/mm/ksm run=1, pages_to_scan=100000,
# sleep_millisecs=0; afterwards run=2, run=0 and the knobs restored, also on
# errors and signals), and prints them side by side. --small (64 MiB per
# guest, samepage only) is the CI version. Either fails unless every guest
# check is ok and samepage saved more than 75% (--small: 50%) of one guest's
# workload.
#
# Needs (installed with apt-get when missing): qemu-system-x86, busybox-static,
# cpio, gzip, gcc, libc6-dev (and make, libxxhash-dev to build samepage). The
# Debian kernel is fetched with `apt-get download` (the linux-image-*-amd64
# package that linux-image-amd64 depends on, not installed) and its vmlinuz
# kept, with the initramfs, in ${XDG_CACHE_HOME:-~/.cache}/samepage-examples/qemu_guests.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
SMALL=0 IMAGES=0
case "${1:-}" in
--small) SMALL=1 ;;
--images) SMALL=1 IMAGES=1 ;;
"") ;;
*) printf 'usage: %s [--small | --images]\n' "$0" >&2; exit 2 ;;
esac

say() { printf '%s\n' "$*"; }
die() { printf 'qemu_guests: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$SMALL" = 1 ]; then
	MIB=64         # workload per guest
	MIN_PCT=50     # saving must exceed this % of MIB
	MERGE_MAX=45   # s to wait for merging at most
else
	MIB=128
	MIN_PCT=75
	MERGE_MAX=120
fi
GUEST_RAM=256
INTERVAL=4     # s between the guests' own periodic checks
BOOT_MAX=240   # s for a guest to boot and fill its memory (slow when the machine is busy)
T_START=$(now)

sudo=
if [ "$(id -u)" -ne 0 ]; then
	[ "$SMALL" = 1 ] || die "full mode compares with kernel KSM and needs root (or use --small)"
	command -v sudo >/dev/null && sudo=sudo
fi

# ---- 1. packages, from Debian's apt ----
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return 0
	$sudo apt-get update -qq
	apt_updated=1
}
missing=()
for p in qemu-system-x86 busybox-static cpio gzip gcc libc6-dev make libxxhash-dev; do
	have_pkg "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "== installing ${missing[*]}"
	apt_update
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
fi
BUSYBOX=$(dpkg -L busybox-static | grep -m1 '/busybox$')
[ -x "$BUSYBOX" ] || die "busybox-static installed but no busybox binary found"

# ---- 2. samepage ----
B=${SAMEPAGE_BUILD:-$repo/build}
if [ ! -x "$B/bin/samepage" ] || [ ! -e "$B/lib/libsamepage.so" ] || [ ! -x "$B/examples/demo" ]; then
	say "== building samepage (make -j2)"
	make -C "$repo" -j2 >/dev/null
fi
SP=$B/bin/samepage
DEMO=$B/examples/demo

# ---- 3. kernel and initramfs (cached) ----
cache=${XDG_CACHE_HOME:-$HOME/.cache}/samepage-examples/qemu_guests
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }' || true)
if [ -z "$kpkg" ]; then
	apt_update
	kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
fi
[ -n "$kpkg" ] || die "apt knows no linux-image-amd64"
kver=${kpkg#linux-image-}
KERNEL=$cache/vmlinuz-$kver
if [ ! -s "$KERNEL" ]; then
	say "== fetching the Debian kernel ($kpkg, apt-get download)"
	dl=$(mktemp -d /tmp/samepage-qemu-dl.XXXXXX)
	if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null); then
		apt_update
		(cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null) ||
			{ rm -rf "$dl"; die "apt-get download $kpkg failed"; }
	fi
	dpkg-deb --fsys-tarfile "$dl"/*.deb | tar -xO "./boot/vmlinuz-$kver" >"$KERNEL.tmp" ||
		{ rm -rf "$dl" "$KERNEL.tmp"; die "no boot/vmlinuz-$kver in $kpkg"; }
	rm -rf "$dl"
	mv "$KERNEL.tmp" "$KERNEL"
fi

init_script() {
	cat <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
exec </dev/ttyS0 >/dev/ttyS0 2>&1
mib=64 interval=4
for a in $(/bin/busybox cat /proc/cmdline); do
	case $a in
	sp_mib=*) mib=${a#sp_mib=} ;;
	sp_interval=*) interval=${a#sp_interval=} ;;
	esac
done
/bin/busybox stty -echo
echo "GUEST_START mib=$mib interval=$interval"
/guest "$mib" "$interval"
echo "GUEST_EXIT $?"
/bin/busybox poweroff -f
EOF
}
key=$({ init_script; cat "$here/qemu_guests/guest.c" "$BUSYBOX"; gcc --version; } | sha256sum | cut -c1-16)
INITRD=$cache/initrd-$key.gz
if [ ! -s "$INITRD" ]; then
	say "== building the initramfs (busybox + guest.c, gcc -static)"
	ir=$(mktemp -d /tmp/samepage-qemu-ir.XXXXXX)
	mkdir -p "$ir/bin" "$ir/dev" "$ir/proc"
	cp "$BUSYBOX" "$ir/bin/busybox"
	init_script >"$ir/init"
	chmod 755 "$ir/init"
	gcc -static -O2 -Wall -Wextra -o "$ir/guest" "$here/qemu_guests/guest.c" ||
		{ rm -rf "$ir"; die "cannot build guest.c"; }
	(cd "$ir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9) >"$INITRD.tmp"
	rm -rf "$ir"
	mv "$INITRD.tmp" "$INITRD"
	find "$cache" -name 'initrd-*.gz' ! -name "initrd-$key.gz" -delete
fi

if [ "$IMAGES" = 1 ]; then
	printf '%s %s\n' "$KERNEL" "$INITRD"
	exit 0
fi

# ---- 4. the run, with a samepage daemon of its own ----
tmp=$(mktemp -d /tmp/samepage-qemu.XXXXXX)
export SAMEPAGE_SOCKET=$tmp/sock
KSM=/sys/kernel/mm/ksm
qpids=()
cats=()
# shellcheck source=examples/common.sh
. "$here/common.sh"
stop_guests() {
	for p in "${qpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${qpids[@]}"; do wait "$p" 2>/dev/null || true; done
	for p in "${cats[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${cats[@]}"; do wait "$p" 2>/dev/null || true; done
	qpids=() cats=()
	exec 7>&- 8>&- 9>&-
}
cleanup() {
	stop_guests
	ksm_off
	stop_daemon
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

status() { $SP status --json | sed -n "s/.*\"$1\": \\([-0-9]*\\).*/\\1/p"; }

# start_guest I WRAP...: guest I under the command prefix WRAP (maybe none)
start_guest() {
	local i=$1
	shift
	rm -f "$tmp/g$i.in" "$tmp/g$i.out" "$tmp/g$i.log"
	mkfifo "$tmp/g$i.in" "$tmp/g$i.out"
	cat "$tmp/g$i.out" >"$tmp/g$i.log" &
	cats+=($!)
	"$@" qemu-system-x86_64 -accel tcg -machine mem-merge=on -m "$GUEST_RAM" -smp 1 \
		-display none -monitor none -no-reboot -nodefaults \
		-kernel "$KERNEL" -initrd "$INITRD" \
		-append "console=ttyS0 quiet no_timer_check transparent_hugepage=never sp_mib=$MIB sp_interval=$INTERVAL" \
		-serial "pipe:$tmp/g$i" >"$tmp/g$i.qemu" 2>&1 &
	qpids+=($!)
}
# guest_cmd I CMD: a line to guest I's console
guest_cmd() {
	case "$1" in
	1) echo "$2" >&7 ;;
	2) echo "$2" >&8 ;;
	*) echo "$2" >&9 ;;
	esac
}
# wait_line I PATTERN N SECONDS: until guest I's log has N lines matching PATTERN
wait_line() {
	local t0
	t0=$(now)
	while [ "$(grep -c -- "$2" "$tmp/g$1.log" || true)" -lt "$3" ]; do
		if ! kill -0 "${qpids[$(($1 - 1))]}" 2>/dev/null; then
			sed 's/^/   guest: /' "$tmp/g$1.log" "$tmp/g$1.qemu" >&2
			die "guest $1 (QEMU) exited while waiting for '$2'"
		fi
		if awk -v a="$t0" -v b="$(now)" -v m="$4" 'BEGIN { exit !(b - a > m) }'; then
			sed 's/^/   guest: /' "$tmp/g$1.log" "$tmp/g$1.qemu" >&2
			die "guest $1: no '$2' after $4 s"
		fi
		sleep 0.2
	done
}
# KiB of transparent huge pages in the QEMU processes (QEMU madvises guest RAM MADV_HUGEPAGE)
thp_kib() {
	local p s=0 k
	for p in "${qpids[@]}"; do
		k=$(awk '/^AnonHugePages:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
		s=$((s + ${k:-0}))
	done
	echo "$s"
}
# VMAs of the QEMU processes (sum)
vmas() {
	local p s=0
	for p in "${qpids[@]}"; do s=$((s + $(wc -l <"/proc/$p/maps"))); done
	echo "$s"
}
# VMA_POOL VMA_ZERO: how many of the QEMU processes' VMAs (sum) map
# samepage's pool segments and its zero segment (the rest: QEMU's own)
vma_kinds() {
	local p
	VMA_POOL=0 VMA_ZERO=0
	for p in "${qpids[@]}"; do
		VMA_POOL=$((VMA_POOL + $(grep -c 'memfd:samepage-pool (deleted)' "/proc/$p/maps" || true)))
		VMA_ZERO=$((VMA_ZERO + $(grep -c 'memfd:samepage-pool-zero' "/proc/$p/maps" || true)))
	done
}
bad_checks() { grep -h -e 'CHECK [0-9]* BAD' -e 'GUEST_ERROR' "$tmp"/g[12].log || true; }

# pages_sharing of samepage or of kernel KSM
sharing() {
	if [ "$mode" = samepage ]; then status pages_sharing; else cat "$KSM/pages_sharing"; fi
}
# merge_wait: polls the QEMU processes' memory every 0.25 s until for 8 s
# neither it dropped by 1 MiB nor pages_sharing grew by 256 (or MERGE_MAX s).
# Sets W_PROCS W_TOTAL (KiB, last measured) W_T90 (s to 90% of the drop)
# W_TLAST (s to the last progress).
merge_wait() {
	local t0 t tb best first procs total sh bestsh series=""
	t0=$(now)
	read -r first total _ < <($DEMO mem "${lock[@]}" "${qpids[@]}")
	best=$first tb=$t0 bestsh=$(sharing)
	while :; do
		sleep 0.25
		read -r procs total _ < <($DEMO mem "${lock[@]}" "${qpids[@]}")
		sh=$(sharing)
		t=$(now)
		series="$series$(elapsed "$t0" "$t"):$procs
"
		if [ "$procs" -lt $((best - 1024)) ]; then best=$procs tb=$t; fi
		if [ "$sh" -gt $((bestsh + 256)) ]; then bestsh=$sh tb=$t; fi
		awk -v t="$t" -v g="$tb" -v s="$t0" -v m="$MERGE_MAX" \
			'BEGIN { exit !(t - g > 8 || t - s > m) }' && break
		[ -z "$(bad_checks)" ] || break
	done
	W_PROCS=$procs W_TOTAL=$total
	W_TLAST=$(elapsed "$t0" "$tb")
	W_T90=$(printf '%s' "$series" | awk -F: -v b="$first" -v s="$((first - procs))" \
		'b - $2 >= 0.9 * s { printf "%.1f", $1; exit }')
	[ -n "$W_T90" ] || W_T90=-
}
# check_now: one check in each guest, waited for
check_now() {
	local i n
	for i in 1 2; do
		n=$(grep -c '^CHECK' "$tmp/g$i.log" || true)
		guest_cmd "$i" c
		wait_line "$i" '^CHECK' $((n + 1)) 60
	done
	[ -z "$(bad_checks)" ] || { bad_checks >&2; die "$mode: a guest's check failed"; }
}
counters() {
	local k out=""
	if [ "$mode" = samepage ]; then
		$SP status --json >"$tmp/status.json"
		for k in pages_shared pages_sharing pages_unshared pages_volatile ksm_zero_pages \
			full_scans pool_bytes merge_vmas vma_limited; do
			out="$out $k=$(sed -n "s/.*\"$k\": \\([-0-9]*\\).*/\\1/p" "$tmp/status.json")"
		done
	else
		for k in pages_shared pages_sharing pages_unshared pages_volatile ksm_zero_pages full_scans; do
			[ -e "$KSM/$k" ] && out="$out $k=$(cat "$KSM/$k")"
		done
	fi
	echo "$out"
}

# run_case LABEL MODE [KNOB=VALUE...]: MODE samepage or kernel. Boots both
# guests, merges, checks, makes the guests rewrite half of their merged
# workload, merges again, checks. Results go to RES[LABEL:field] (KiB, s).
declare -A RES
run_case() {
	local label=$1 wrap=() knobs i n procs sum0 sum1 before tbefore t0 v
	mode=$2 lock=()
	shift 2
	knobs=("$@")
	say ""
	if [ "$mode" = samepage ]; then
		say "== samepage (${knobs[*]:-default knobs}): two guests under" \
			"\`samepage run -- qemu-system-x86_64 -machine mem-merge=on ...\`"
		$SP set run=0 "${knobs[@]}" >/dev/null
		wrap=("$SP" run --)
		lock=(--daemon "$tmp/sock.lock")
	else
		say "== kernel KSM (${knobs[*]}): two guests as plain \`qemu-system-x86_64 -machine mem-merge=on ...\`"
		ksm_take
		for kv in "${knobs[@]}"; do echo "${kv#*=}" >"$KSM/${kv%%=*}"; done
	fi
	t0=$(now)
	start_guest 1 "${wrap[@]}"
	start_guest 2 "${wrap[@]}"
	exec 7<>"$tmp/g1.in" 8<>"$tmp/g2.in"
	for i in 1 2; do wait_line "$i" '^READY' 1 "$BOOT_MAX"; done
	say "   both guests booted and filled $MIB MiB each in $(elapsed "$t0" "$(now)") s (merging off)"
	sum0=$(awk '/^READY/ { print $3; exit }' "$tmp/g1.log")
	[ "$(awk '/^READY/ { print $3; exit }' "$tmp/g2.log")" = "$sum0" ] ||
		die "the two guests' workloads differ (READY checksums)"
	sleep 1
	read -r before tbefore METHOD _ < <($DEMO mem "${lock[@]}" "${qpids[@]}")
	RES[$label:before]=$before
	ksm_guard 0
	say "   QEMU processes before merging: $(mib "$before") MiB ($METHOD;" \
		"$(mib "$(thp_kib)") MiB of it in huge pages; $(vmas) VMAs)"

	# ---- merge ----
	if [ "$mode" = samepage ]; then $SP set run=1 >/dev/null; else echo 1 >"$KSM/run"; fi
	merge_wait
	ksm_guard 1
	RES[$label:after]=$W_PROCS RES[$label:daemon]=$((W_TOTAL - W_PROCS))
	RES[$label:t90]=$W_T90 RES[$label:tlast]=$W_TLAST RES[$label:vmas]=$(vmas)
	vma_kinds
	RES[$label:vpool]=$VMA_POOL RES[$label:vzero]=$VMA_ZERO
	RES[$label:saved]=$((tbefore - W_TOTAL))    # the samepage daemon counted
	say "   after merging: $(mib "$W_PROCS") MiB ($(mib "$(thp_kib)") MiB in huge pages;" \
		"${RES[$label:vmas]} VMAs, $VMA_POOL of them pool, $VMA_ZERO zero segment);" \
		"90% of the drop after $W_T90 s, last progress at $W_TLAST s"
	[ "$mode" = samepage ] &&
		say "   + samepage daemon: $(mib "${RES[$label:daemon]}") MiB that the QEMU processes do not map"
	say "   saved: $(mib "${RES[$label:saved]}") MiB;$(counters)"
	[ -z "$(bad_checks)" ] || { bad_checks >&2; die "$mode: a guest's check failed while merging"; }
	check_now
	read -r procs _ < <($DEMO mem "${lock[@]}" "${qpids[@]}")
	say "   after a check in each guest (reads every page): $(mib "$procs") MiB; checks ok"

	# ---- the guests write every other page of their merged workload ----
	for i in 1 2; do guest_cmd "$i" w; done
	for i in 1 2; do wait_line "$i" '^WROTE' 1 60; done
	read -r procs _ < <($DEMO mem "${lock[@]}" "${qpids[@]}")
	RES[$label:written]=$procs
	sum1=$(awk '/^WROTE/ { print $3; exit }' "$tmp/g1.log")
	[ "$(awk '/^WROTE/ { print $3; exit }' "$tmp/g2.log")" = "$sum1" ] ||
		die "the two guests' rewritten workloads differ (WROTE checksums)"
	say "   both guests rewrote every other page ($((MIB / 2)) MiB each, identical):" \
		"$(mib "${RES[$label:written]}") MiB right after"
	merge_wait
	RES[$label:remerged]=$W_PROCS RES[$label:rt90]=$W_T90 RES[$label:rvmas]=$(vmas)
	vma_kinds
	RES[$label:rvpool]=$VMA_POOL RES[$label:rvzero]=$VMA_ZERO
	RES[$label:rtotal]=$((W_TOTAL))
	say "   merged again: $(mib "$W_PROCS") MiB (with the samepage daemon $(mib "$W_TOTAL") MiB;" \
		"${RES[$label:rvmas]} VMAs, $VMA_POOL of them pool, $VMA_ZERO zero segment);" \
		"90% after $W_T90 s;$(counters)"
	check_now
	say "   checks after the rewrite ok"
	ksm_guard 1
	[ "$mode" = samepage ] && boot_into_merging


	# ---- stop ----
	for i in 1 2; do guest_cmd "$i" q; done
	for i in 1 2; do wait_line "$i" '^BYE' 1 60; done
	for i in 1 2; do
		wait "${qpids[$((i - 1))]}" || die "$mode: guest $i's QEMU exited with an error"
	done
	qpids=()
	stop_guests
	n=0
	for i in 1 2; do
		grep -q '^BYE ok' "$tmp/g$i.log" || { bad_checks >&2; die "$mode: guest $i reports bad data"; }
		grep -q '^GUEST_EXIT 0' "$tmp/g$i.log" || die "$mode: guest $i's program failed"
		# every check ok, with the checksum of the data as last written
		awk '/^READY/ { s = $3 } /^WROTE/ { s = $3 } /^CHECK/ && ($3 != "ok" || $4 != s) { exit 1 }' \
			"$tmp/g$i.log" || { grep -e '^CHECK' -e '^WROTE' "$tmp/g$i.log" >&2; die "$mode: guest $i: a checksum differs"; }
		n=$((n + $(grep -c '^CHECK' "$tmp/g$i.log")))
	done
	RES[$label:checks]=$n
	say "   guests' checks: ${RES[$label:checks]} in all, every one ok (every page regenerated and compared)"
	if [ "$mode" = samepage ]; then
		for _ in $(seq 50); do [ "$(status pool_pages)" = 0 ] && break; sleep 0.1; done
		[ "$(status pool_pages)" = 0 ] ||
			die "samepage's pool still holds $(status pool_pages) pages after the guests exited"
		say "   samepage's pool empty after the guests exited"
		stop_daemon    # the next case starts with a fresh daemon (its empty pool stays resident)
	else
		ksm_off
		say "   kernel KSM off again (run=2, then 0; knobs restored)"
	fi
}

# boot_into_merging: a third guest boots while the two others are merged and
# merging is on, as a guest started on a busy host does. Its firmware and
# kernel merge with the others' pages while it boots, and it then clears and
# rewrites many of them: it must boot, fill and check its workload like the
# others. (A merged page rewritten with zeros once read the old pool page
# again after samepage dropped it as a zero page: the guest hung at boot;
# tests/integration/zero_rewrite.c.)
boot_into_merging() {
	local t0 n
	t0=$(now)
	start_guest 3 "${wrap[@]}"
	exec 9<>"$tmp/g3.in"
	wait_line 3 '^READY' 1 "$BOOT_MAX"
	[ "$(awk '/^READY/ { print $3; exit }' "$tmp/g3.log")" = "$sum0" ] ||
		die "the third guest's workload differs (READY checksum)"
	n=$(grep -c '^CHECK' "$tmp/g3.log" || true)
	guest_cmd 3 c
	wait_line 3 '^CHECK' $((n + 1)) 60
	awk -v s="$sum0" '/^CHECK/ && ($3 != "ok" || $4 != s) { exit 1 }' "$tmp/g3.log" ||
		{ grep '^CHECK' "$tmp/g3.log" >&2; die "the third guest's check failed"; }
	guest_cmd 3 q
	wait_line 3 '^BYE' 1 60
	wait "${qpids[2]}" || die "the third guest's QEMU exited with an error"
	grep -q '^BYE ok' "$tmp/g3.log" || die "the third guest reports bad data"
	unset 'qpids[2]'
	say "   a third guest booted while the two others were merged and merging on:" \
		"READY after $(elapsed "$t0" "$(now)") s, its checks ok; $(counters)"
}

# ksm_guard RUN: in the kernel case, kernel KSM still has our run value and
# knobs (other users of kernel KSM on the machine would spoil the figures)
ksm_guard() {
	local kv v
	[ "$mode" = kernel ] || return 0
	for kv in "run=$1" "${knobs[@]}"; do
		v=$(cat "$KSM/${kv%%=*}")
		[ "$v" = "${kv#*=}" ] ||
			die "kernel KSM's ${kv%%=*} became $v during the run: someone else is using kernel KSM"
	done
}

# Kernel KSM must be off, and is only borrowed: knobs saved here, restored by ksm_off.
ksm_take() {
	local kv i
	for i in $(seq 60); do
		[ "$(cat "$KSM/run")" = 0 ] && break
		[ "$i" = 1 ] && say "   kernel KSM is on (someone else is using it): waiting up to 5 min"
		sleep 5
	done
	[ "$(cat "$KSM/run")" = 0 ] ||
		die "kernel KSM is on (run=$(cat "$KSM/run")): someone else is using it; try again later"
	ksm_borrow "${KSM_KNOBS[@]%%=*}"
}

ideal=$((MIB * 1024))                # KiB: one guest's copy of the workload
min_saved=$((ideal * MIN_PCT / 100))
KSM_KNOBS=(pages_to_scan=100000 sleep_millisecs=0)
say "== $(basename "$0")$([ "$SMALL" = 1 ] && echo " --small"): 2 guests x $GUEST_RAM MiB, workload $MIB MiB each" \
	"(kernel $kver, TCG); must save > $MIN_PCT% of $MIB MiB"
[ "$(id -u)" -eq 0 ] || say "   (not root: memory is the sum of Pss, and userfaultfd must be available)"

run_case sp samepage
[ "${RES[sp:saved]}" -gt "$min_saved" ] ||
	die "samepage saved only $(mib "${RES[sp:saved]}") MiB, expected > $(mib "$min_saved") MiB"

labels=(sp)
if [ "$SMALL" = 0 ]; then
	run_case spfast samepage "${KSM_KNOBS[@]}"
	[ "${RES[spfast:saved]}" -gt "$min_saved" ] ||
		die "samepage (${KSM_KNOBS[*]}) saved only $(mib "${RES[spfast:saved]}") MiB"
	run_case ksm kernel "${KSM_KNOBS[@]}"
	[ "${RES[ksm:saved]}" -gt "$min_saved" ] ||
		say "   note: kernel KSM saved only $(mib "${RES[ksm:saved]}") MiB"
	labels=(sp spfast ksm)
fi
row() {
	local l f=$1 fmt=$2
	shift 2
	printf '   %-36s' "$f"
	for l in "${labels[@]}"; do
		case $fmt in
		mib) printf ' %14s' "$(mib "${RES[$l:$1]}")" ;;
		pair) printf ' %14s' "${RES[$l:$1]} | ${RES[$l:$2]}" ;;
		*) printf ' %14s' "${RES[$l:$1]}" ;;
		esac
	done
	printf '\n'
}
say ""
say "== summary: 2 guests x $GUEST_RAM MiB (TCG), $MIB MiB identical workload each;" \
	"memory = $METHOD of the 2 QEMU processes"
printf '   %-36s' ""
for l in "${labels[@]}"; do
	case $l in
	sp) printf ' %14s' "samepage" ;;
	spfast) printf ' %14s' "samepage" ;;
	ksm) printf ' %14s' "kernel KSM" ;;
	esac
done
printf '\n   %-36s' "pages_to_scan / sleep_millisecs"
for l in "${labels[@]}"; do
	case $l in
	sp) printf ' %14s' "16384/20" ;;
	*) printf ' %14s' "100000/0" ;;
	esac
done
printf '\n'
row "QEMU memory before (MiB)" mib before
row "QEMU memory after merging (MiB)" mib after
row "+ samepage daemon (MiB)" mib daemon
row "saved, daemon counted (MiB)" mib saved
row "time to 90% of the drop (s)" s t90
row "last progress (s)" s tlast
row "QEMU VMAs after merging" n vmas
row "  mapping the pool | zero segment" pair vpool vzero
row "after rewriting half (MiB)" mib written
row "merged again (MiB)" mib remerged
row "  with the samepage daemon (MiB)" mib rtotal
row "time to 90% of re-merging (s)" s rt90
row "QEMU VMAs after re-merging" n rvmas
row "  mapping the pool | zero segment" pair rvpool rvzero
row "guest checks, all ok" n checks
if [ "$SMALL" = 0 ]; then
	# issue 10: within 1.5 x kernel KSM's count, same knobs, same run
	say "   VMAs after re-merging, samepage / kernel KSM (both 100000/0):" \
		"$(awk -v s="${RES[spfast:rvmas]}" -v k="${RES[ksm:rvmas]}" 'BEGIN { printf "%.2f", s / k }')" \
		"(added by re-merging: $((${RES[spfast:rvmas]} - ${RES[spfast:vmas]})) | $((${RES[ksm:rvmas]} - ${RES[ksm:vmas]})))"
fi
say ""
say "== ok: guests' data intact, samepage saved $(mib "${RES[sp:saved]}") MiB (> $(mib "$min_saved") MiB)" \
	"in $(elapsed "$T_START" "$(now)") s in all"
