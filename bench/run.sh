#!/usr/bin/env bash
# samepage against kernel KSM, every target of issue 3 in one run, each
# program measuring both mergers in the same run (see bench/README.md):
#   ksm_compare  2 x 64 MiB (1 run, no stall run), then 2 x 512 MiB (median
#                of $REPEAT runs, with the stall run): time, CPU, saving,
#                bookkeeping, VMAs, first write, stall
#   mixed        4 x 256 MiB mixed load: saving over time, final saving
#   steady       2 x 256 MiB, half merged, at pages_to_scan=10000
#                sleep_millisecs=20: CPU per GiB scanned
#   hashrate     XXH3 / XXH64 / plain read GB/s of one core
#   soak         (with --soak) one daemon through $SOAK_GENERATIONS generations
#                of processes (issue 10): first against last generation
#   remerge      2 x 64 MiB merged, every other page of both copies rewritten
#                alike, 5 rounds (quick: 3), in 1 process and in 2: time until
#                merged again, VMAs added (issue 10)
#   capped       2 x 256 MiB (quick: 64) with both mergers held to 10% and 25%
#                of one core, pages_to_scan calibrated by measured CPU: time
#                to 90% of the saving at equal CPU (issue 12); median of
#                $CAPPED_REPEAT runs at the calibrated knobs
# then one table: target, samepage, kernel KSM, ratio, wanted, met.
#
#   sudo bench/run.sh [--quick] [--soak] [--table SUMMARY]
#
# --quick: 2 x 256 MiB instead of 512, 1 run, mixed 4 x 128 MiB, capped
# 2 x 64 MiB with 1 run per share at the calibrated knobs (checks the
# pipeline; the targets are stated for the full sizes), and the soak's
# --quick. --soak: the soak too, after the rest (50 generations: about
# 25 minutes more; with --quick 10 generations, about 4).
# --table SUMMARY: only print the table again from the lines a run kept
# (KEEP_SUMMARY), measuring nothing (with --quick for a quick run's).
# Environment: REPEAT (default 3), QUIET_WAIT (seconds each run waits at most
# for an idle machine, default 10), VMA_HANDFUL (VMAs merging may add to a
# process and still be "a handful", default 32), KEEP_SUMMARY=FILE (keep the
# raw key/value lines), SOAK_GENERATIONS (default 50, with --quick 10),
# CAPPED_SHARES (% of one core, default 10,25), CAPPED_REPEAT (runs at the
# calibrated knobs, default 2, with --quick 1).
#
# The programs switch kernel KSM off and restore the knobs they changed even
# on errors and signals; this script does it once more should one not finish
# (killed outright: SIGKILL, OOM).
set -eu
cd "$(dirname "$0")/.."

big=512 mixed_mib=256 repeat=${REPEAT:-3} rounds=5 table_only= quick= soak= capped_mib=256
usage() { echo "usage: sudo bench/run.sh [--quick] [--soak] [--table SUMMARY]" >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
	--quick) big=256 mixed_mib=128 repeat=1 rounds=3 quick=--quick capped_mib=64; shift ;;
	--soak) soak=1; shift ;;
	--table) [ $# -ge 2 ] || usage; table_only=$2; shift 2 ;;
	*) usage ;;
	esac
done
soak_gens=${SOAK_GENERATIONS:-$([ -n "$quick" ] && echo 10 || echo 50)}
quiet=${QUIET_WAIT:-10}
handful=${VMA_HANDFUL:-32}
capped_shares=${CAPPED_SHARES:-10,25}
capped_repeat=${CAPPED_REPEAT:-$([ -n "$quick" ] && echo 1 || echo 2)}

# The table from the summary lines in $1. Ratios are samepage / kernel KSM.
table() {
awk -v big="$big" -v mixed="$mixed_mib" -v handful="$handful" -v capped_mib="$capped_mib" \
	-v capped_shares="$capped_shares" '
function have(key) { return (key in sp) && sp[key] != "-" && (key in kn) && kn[key] != "-" }
function num(x) { return x + 0 }
function fmt(x) { return x == "" ? "-" : sprintf(x >= 100 || x <= -100 ? "%.0f" : "%.3g", x) }
# kind: ratio<= / ratio>= (samepage / kernel), sp<= (samepage alone), info
function line(label, unit, s, k, kind, thr, wanted,    r, met) {
	r = (s != "" && k != "" && num(k) != 0) ? num(s) / num(k) : ""
	met = "-"
	if (kind == "ratio<=" && r != "") met = r <= thr ? "yes" : "NO"
	if (kind == "ratio>=" && r != "") met = r >= thr ? "yes" : "NO"
	if (kind == "sp<=" && s != "") met = num(s) <= thr ? "yes" : "NO"
	if (kind == "sp>=" && s != "") met = num(s) >= thr ? "yes" : "NO"
	printf "%-46s %-6s | %9s | %9s | %7s | %-22s | %s\n", label, unit, fmt(s), fmt(k), fmt(r), wanted, met
}
function pct(x) { return x == "" ? "" : 100 * x }
# The soak: its first compared generation against its last, per merger;
# met is the verdict of the soak itself for samepage (bench/soak.c).
function soak_line(label, unit, key, wanted,    m) {
	m = wanted == "info" ? "" : v(sp, "soak." key "_met")
	printf "%-46s %-6s | %9s | %9s | %9s | %9s | %-26s | %s\n", label, unit, fmt(v(sp, "soak." key "_first")), fmt(v(sp, "soak." key "_last")), fmt(v(kn, "soak." key "_first")), fmt(v(kn, "soak." key "_last")), wanted, m == "" ? "-" : (num(m) ? "yes" : "NO")
}
function soak_table() {
	printf "\n%-46s %-6s | %9s | %9s | %9s | %9s | %-26s | %s\n", "soak (issue 10): " v(sp, "soak.generations") " generations", "unit", "sp first", "sp last", "kern 1st", "kern last", "wanted", "met"
	print "----------------------------------------------------------------------------------------------------------------------------"
	soak_line("share of the ideal saving", "%", "share", "100 in both")
	soak_line("time to the ideal saving", "s", "t_merge", "last within 10% + 0.5 s")
	soak_line("share again after the rewrites", "%", "reshare", "100 in both")
	soak_line("time to it (re-merge)", "s", "t_remerge", "last within 10% + 2 s")
	soak_line("VMAs per process, merged", "count", "vmas_merged", "last within 10% + 2")
	soak_line("VMAs per process, after the rewrites", "count", "vmas_rewritten", "last within 10% + 2")
	soak_line("daemon VmRSS", "MiB", "rss_mib", "last within 10% + 1 MiB")
	soak_line("  RssAnon: its own memory", "MiB", "anon_mib", "last within 10% + 1 MiB")
	soak_line("  RssShmem: pool pages it maps", "MiB", "shm_mib", "last within 10% + 1 MiB")
	soak_line("pool pages beyond the merged contents", "pages", "pool_extra", "0 in both")
	soak_line("pool pages left after a generation exited", "pages", "pool_left", "0 in both")
	soak_line("merger CPU while idle (default knobs)", "% core", "idle_cpu", "within 10% + 0.3, <= 1")
	soak_line("  samepaged | ksmd alone", "% core", "idle_daemon", "info")
	u = num(v(sp, "soak.unreached"))
	h = num(v(sp, "soak.hard")) + num(v(kn, "soak.hard"))
	if (u) printf "\nFAILURE: samepage missed the ideal saving in %d phases of the soak (see its FAIL lines)\n", u
	if (num(v(kn, "soak.unreached"))) printf "\nNOTE: kernel KSM missed the ideal saving in %d phases of the soak (someone else switching it?)\n", num(v(kn, "soak.unreached"))
	if (num(v(sp, "soak.pool_end"))) printf "\nFAILURE: the soak left %d pool pages once every process exited\n", num(v(sp, "soak.pool_end"))
	if (h) printf "\nFAILURE: the soak saw %d processes or the daemon end otherwise than told\n", h
}
function v(arr, key) { return (key in arr) && arr[key] != "-" ? arr[key] : "" }
{ sp[$1] = $2; kn[$1] = $3 }
END {
	c = "cmp" big "."
	printf "\n%-46s %-6s | %9s | %9s | %7s | %-22s | %s\n", "target (issues 3, 10, 12)", "unit", "samepage", "kernel", "sp/kern", "wanted", "met"
	print "----------------------------------------------------------------------------------------------------------------------"
	line("wall time until 2 x " big " MiB merged", "s", v(sp, c "merge_s"), v(kn, c "merge_s"), "ratio<=", 1/3, "<= 1/3 of kernel")
	line("mixed 4 x " mixed " MiB: time to 99% of final saving", "s", v(sp, "mixed.t99_s"), v(kn, "mixed.t99_s"), "ratio<=", 1/3, "<= 1/3 of kernel")
	line("mixed: final saving", "MiB", v(sp, "mixed.final_mib"), v(kn, "mixed.final_mib"), "ratio>=", 1, ">= kernel")
	line("CPU per GiB merged (2 x " big " MiB)", "s/GiB", v(sp, c "cpu_per_gib"), v(kn, c "cpu_per_gib"), "ratio<=", 0.5, "<= 1/2 of kernel")
	line("CPU per GiB scanned, steady (10000/20 ms)", "s/GiB", v(sp, "steady.cpu_per_gib"), v(kn, "steady.cpu_per_gib"), "ratio<=", 1, "<= kernel")
	line("fork child dumping merged memory (BGSAVE)", "s", v(sp, "fork_read.child_s"), v(kn, "fork_read.child_s"), "ratio<=", 1.2, "<= 1.2 x kernel")
	line("  stores by the parent meanwhile", "1/s", v(sp, "fork_read.stores_per_s"), v(kn, "fork_read.stores_per_s"), "info", 0, "")
	rd = v(sp, "hash.read_gbs")
	line("hashing per core: XXH3 (sp) | XXH64 (kernel)", "GB/s", v(sp, "hash.xxh3_gbs"), v(kn, "hash.xxh3_gbs"), "sp>=", 0.8 * rd, sprintf(">= 80%% of read %.1f", rd))
	# Bookkeeping: what grows with the pages, between the two sizes (fixed
	# costs cancel); per page at the big size as a second row.
	s64 = v(sp, "cmp64.book_bytes"); k64 = v(kn, "cmp64.book_bytes"); p64 = v(sp, "cmp64.pages")
	sb = v(sp, c "book_bytes"); kb = v(kn, c "book_bytes"); pb = v(sp, c "pages")
	ms = (s64 != "" && sb != "" && pb > p64) ? (sb - s64) / (pb - p64) : ""
	mk = (k64 != "" && kb != "" && pb > p64) ? (kb - k64) / (pb - p64) : ""
	line("bookkeeping per scanned page (64 -> " big " MiB)", "B", ms, mk, "sp<=", 16, "<= 16 B")
	line("  per page at 2 x " big " MiB, fixed costs in", "B", v(sp, c "book_per_page"), v(kn, c "book_per_page"), "info", 0, "")
	line("first write to a merged page, merger paused", "ns", v(sp, c "first_write_paused_ns"), v(kn, c "first_write_paused_ns"), "ratio<=", 1.1, "<= 1.1 x kernel")
	line("first write to a merged page, merger running", "ns", v(sp, c "first_write_running_ns"), v(kn, c "first_write_running_ns"), "ratio<=", 1.1, "<= 1.1 x kernel")
	line("writer stall while merging: p99 (a)", "us", v(sp, c "stall_p99_us"), v(kn, c "stall_p99_us"), "sp<=", 50, "<= 50 us")
	line("  maximum (a)", "us", v(sp, c "stall_max_us"), v(kn, c "stall_max_us"), "info", 0, "report")
	line("  p99, all stores (b)", "us", v(sp, c "stall_all_p99_us"), v(kn, c "stall_all_p99_us"), "sp<=", 50, "<= 50 us")
	line("  maximum, all stores (b)", "us", v(sp, c "stall_all_max_us"), v(kn, c "stall_all_max_us"), "info", 0, "report")
	line("  share of stores hitting merged pages", "%", pct(v(sp, c "stall_cow_share")), pct(v(kn, c "stall_cow_share")), "info", 0, "")
	line("  p50 of those (COW faults)", "us", v(sp, c "stall_cow_p50_us"), v(kn, c "stall_cow_p50_us"), "info", 0, "")
	vs = v(sp, c "vmas_merged") != "" ? v(sp, c "vmas_merged") - v(sp, c "vmas_before") : ""
	vk = v(kn, c "vmas_merged") != "" ? v(kn, c "vmas_merged") - v(kn, c "vmas_before") : ""
	line("VMAs added by merging 2 x " big " MiB (per proc)", "count", vs, vk, "sp<=", handful, "a handful (<= " handful ")")
	# issue 10: merged memory rewritten in scattered pages, merged again
	line("re-merge after scattered rewrite, 1 process", "s", v(sp, "remerge.one.time_s"), v(kn, "remerge.one.time_s"), "ratio<=", 2, "<= 2 x kernel")
	line("re-merge after scattered rewrite, 2 processes", "s", v(sp, "remerge.two.time_s"), v(kn, "remerge.two.time_s"), "ratio<=", 2, "<= 2 x kernel")
	line("VMAs added by re-merge, 1 process", "count", v(sp, "remerge.one.vmas_added"), v(kn, "remerge.one.vmas_added"), "sp<=", handful, "a handful (<= " handful ")")
	line("VMAs added by re-merge, 2 processes (per proc)", "count", v(sp, "remerge.two.vmas_added"), v(kn, "remerge.two.vmas_added"), "sp<=", handful, "a handful (<= " handful ")")
	# Issue 12: both mergers held to the same CPU share (bench/capped.c).
	ncap = split(capped_shares, cap, ",")
	for (ci = 1; ci <= ncap; ci++) {
		cp = "capped" cap[ci] "."
		line("time to 90% at equal CPU (" cap[ci] "% of a core)", "s", v(sp, cp "t90_s"), v(kn, cp "t90_s"), "ratio<=", 0.5, "<= 1/2 of kernel")
		line("  CPU share used until then", "%", v(sp, cp "share_pct"), v(kn, cp "share_pct"), "info", 0, "both within 10% of " cap[ci])
	}
	print ""
	line("info: merged (2 x " big " MiB)", "%", v(sp, c "merged_pct"), v(kn, c "merged_pct"), "info", 0, "")
	line("info: CPU per GiB saved, mixed load", "s/GiB", v(sp, "mixed.cpu_per_gib"), v(kn, "mixed.cpu_per_gib"), "info", 0, "")
	line("info: mixed, ideal saving", "MiB", v(sp, "mixed.ideal_mib"), v(kn, "mixed.ideal_mib"), "info", 0, "")
	line("info: steady, pages scanned per second", "pg/s", v(sp, "steady.pages_per_s"), v(kn, "steady.pages_per_s"), "info", 0, "")
	line("info: steady, merger CPU per second", "s/s", v(sp, "steady.cpu_per_s"), v(kn, "steady.cpu_per_s"), "info", 0, "")
	line("info: steady, GB scanned per CPU second", "GB/s", v(sp, "steady.gb_per_cpu_s"), v(kn, "steady.gb_per_cpu_s"), "info", 0, "")
	line("info: wall time until 2 x 64 MiB merged", "s", v(sp, "cmp64.merge_s"), v(kn, "cmp64.merge_s"), "info", 0, "")
	line("info: other CPU use, 2 x " big " MiB merge", "s", v(sp, c "other_cpu_s"), v(kn, c "other_cpu_s"), "info", 0, "~0: undisturbed")
	line("info: other CPU use, mixed load", "s", v(sp, "mixed.other_cpu_s"), v(kn, "mixed.other_cpu_s"), "info", 0, "~0: undisturbed")
	line("info: other CPU use, steady window", "s", v(sp, "steady.other_cpu_s"), v(kn, "steady.other_cpu_s"), "info", 0, "~0: undisturbed")
	line("info: re-merge, first page again (1 proc)", "s", v(sp, "remerge.one.first_s"), v(kn, "remerge.one.first_s"), "info", 0, "")
	line("info: re-merge, merger CPU while settled", "s/s", v(sp, "remerge.one.idle_cpu"), v(kn, "remerge.one.idle_cpu"), "info", 0, "")
	for (ci = 1; ci <= ncap; ci++) {
		cp = "capped" cap[ci] "."
		line("info: capped " cap[ci] "%: time to 50% of the saving", "s", v(sp, cp "t50_s"), v(kn, cp "t50_s"), "info", 0, "")
		line("info: capped " cap[ci] "%: pages_to_scan (20 ms)", "pages", v(sp, cp "pages"), v(kn, cp "pages"), "info", 0, "calibrated")
		line("info: capped " cap[ci] "%: merger CPU until 90%", "s", v(sp, cp "cpu90_s"), v(kn, cp "cpu90_s"), "info", 0, "")
		line("info: other CPU use, capped " cap[ci] "%", "s", v(sp, cp "other_cpu_s"), v(kn, cp "other_cpu_s"), "info", 0, "~0: undisturbed")
	}
	bad = 0; dist = ""; slow = 0
	for (key in sp) {
		if (key ~ /\.bad$/) bad += num(sp[key]) + num(kn[key])
		if (key ~ /\.disturbed$/ && num(kn[key])) dist = dist " " substr(key, 1, index(key, ".") - 1)
		if (key ~ /\.timed_out$/) slow += num(sp[key]) + num(kn[key])
	}
	if (bad) printf "\nFAILURE: %d pages differed from what the workloads wrote (see above)\n", bad
	if (dist != "") print "\nWARNING: someone else changed kernel KSM during a kernel run of:" dist "; those kernel numbers are not valid"
	if (slow) print "\nNOTE: the mixed load did not settle within its time limit"
	for (ci = 1; ci <= ncap; ci++) {
		cc = "capped" cap[ci] ".calibrated"
		if ((cc in sp) && (v(sp, cc) == "0" || v(kn, cc) == "0"))
			print "\nNOTE: capped " cap[ci] "%: a merger never came within 10% of the share; its run nearest to it is in the table"
	}
	if ("soak.generations" in sp) soak_table()
	if (v(sp, c "merged_pct") != "" && (v(sp, c "merged_pct") < 100 || v(kn, c "merged_pct") < 100)) print "\nNOTE: not everything merged in the 2 x " big " MiB runs"
	print "\nhashing row: samepage column XXH3_64bits, kernel column XXH64 (kernel KSM'"'"'s checksum), both in user space on one core"
	print "bookkeeping row: growth between the 2 x 64 MiB and 2 x " big " MiB runs per added page (samepage: daemon RssAnon + libsamepage arena Rss; kernel: rmap_items, stable nodes, mm_slots x slab sizes)"
	print "CPU per GiB merged: merger CPU (ksmd | samepaged + scanner threads) until merged, per GiB saved (frames before - after)"
	print "stall rows: a separate run with a probe thread storing into random merging pages every 200 us (ksm_compare header);"
	print "  (a) stores to pages not merged just before the store (they can only wait for merging in progress),"
	print "  (b) all stores, including first writes to merged pages (COW faults: the first-write rows)"
	print "re-merge rows: 2 x 64 MiB merged, every other page of both copies rewritten alike after 3 s untouched; median over"
	print "  rounds of the time until every page pair shares a frame again; VMAs over the count after the first merge (bench/remerge.c)"
	print "equal-CPU rows: 2 x " capped_mib " MiB of identical pages; each merger'"'"'s pages_to_scan (sleep_millisecs=20) calibrated until its"
	print "  CPU (ksmd | samepaged + scanners) from the madvise until 90% of the saving is the share of one core; median time to 90% (bench/capped.c)"
}' "$1"
}

if [ -n "$table_only" ]; then
	table "$table_only"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: needs root (kernel KSM, page frames)" >&2; exit 1; }

make -j2 build/lib/libsamepage.so build/bin/samepaged build/bin/samepage \
	build/bench/ksm_compare build/bench/mixed build/bench/steady build/bench/hashrate \
	build/bench/soak build/bench/remerge build/bench/capped build/bench/fork_read >/dev/null

KSM=/sys/kernel/mm/ksm
knobs="pages_to_scan sleep_millisecs smart_scan"
declare -A saved
for k in $knobs; do saved[$k]=$(cat "$KSM/$k"); done
run0=$(cat "$KSM/run")
sum=$(mktemp /tmp/sp-bench-summary.XXXXXX)
# Only when a program did not finish: otherwise each switched kernel KSM off
# and restored the knobs itself, and a kernel KSM on now is someone else's.
clean=0
restore() {
	if [ "$clean" != 1 ]; then
		if [ "$run0" = 0 ] && [ "$(cat "$KSM/run")" != 0 ]; then
			echo 2 >"$KSM/run"
			for _ in $(seq 600); do [ "$(cat "$KSM/pages_shared")" = 0 ] && break; sleep 0.1; done
			echo 0 >"$KSM/run"
		fi
		for k in $knobs; do
			[ "$(cat "$KSM/$k")" = "${saved[$k]}" ] || echo "${saved[$k]}" >"$KSM/$k" || true
		done
	fi
	if [ -n "${KEEP_SUMMARY:-}" ]; then cp "$sum" "$KEEP_SUMMARY"; fi
	rm -f "$sum"
}
trap restore EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
step() {
	echo
	echo "\$ $*    # at $(($(date +%s) - start)) s"
	"$@" --summary "$sum"
}
echo "# $(uname -r), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src include 2>/dev/null || echo '+changes'), $(date -u +%FT%TZ)"
step build/bench/ksm_compare --mib 64 --repeat 1 --no-stall --quiet-wait "$quiet"
step build/bench/ksm_compare --mib "$big" --repeat "$repeat" --quiet-wait "$quiet"
step build/bench/mixed --mib "$mixed_mib" --quiet-wait "$quiet"
step build/bench/steady --mib 256 --quiet-wait "$quiet"
step build/bench/fork_read --mib 256 --repeat "$repeat" --quiet-wait "$quiet"
step build/bench/hashrate --mib 1024
# A soak that fails (wrong bytes, saving not reached, pool pages left) still
# gets its rows in the table; the exit status says so.
step build/bench/remerge --mib 64 --rounds "$rounds" --layout both --quiet-wait "$quiet"
step build/bench/capped --mib "$capped_mib" --shares "$capped_shares" --repeat "$capped_repeat" --quiet-wait "$quiet"
soak_status=0
if [ -n "$soak" ]; then
	step build/bench/soak $quick --generations "$soak_gens" --quiet-wait "$quiet" || soak_status=$?
fi
clean=1
echo
echo "# all in $(($(date +%s) - start)) s"

table "$sum"
exit "$soak_status"
