#!/usr/bin/env bash
# Curves where people would rather look than read: the mixed load (bench/
# mixed.c, 4 processes) merged by samepage and by kernel KSM in one run,
# drawn with gnuplot into docs/: the saving over time (docs/saving.svg)
# and the merger's CPU over time (docs/cpu.svg).
#
#   sudo bench/plot.sh [MIB]      (MiB per process, default 256)
#
# Kernel KSM is on only while measured and off again at the end (mixed.c).
set -eu
cd "$(dirname "$0")/.."
mib=${1:-256}
command -v gnuplot >/dev/null || {
	[ "$(id -u)" -eq 0 ] || { echo "plot.sh: gnuplot missing (apt-get install gnuplot-nox)" >&2; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
}
make -j"$(nproc)" all >/dev/null
csv=$(mktemp)
trap 'rm -f "$csv" "$csv".*' EXIT
build/bench/mixed --mib "$mib" --csv "$csv" >/dev/null
grep '^samepage,' "$csv" | tr , ' ' >"$csv.sp"
grep '^kernel,' "$csv" | tr , ' ' >"$csv.kn"
[ -s "$csv.sp" ] && [ -s "$csv.kn" ] || { echo "plot.sh: no samples" >&2; exit 1; }
title="4 processes x $mib MiB (50% common, 10% zero, 10% rewritten every 200 ms), $(uname -r), $(date +%F)"
gnuplot <<GP
set terminal svg size 800,450 dynamic font "sans,12"
set key bottom right
set grid
set xlabel "seconds"
set output "docs/saving.svg"
set title "Memory saved over time: $title" font "sans,10"
set ylabel "MiB saved (distinct frames before - now)"
plot "$csv.sp" using 2:3 with lines lw 2 title "samepage", \
     "$csv.kn" using 2:3 with lines lw 2 title "kernel KSM (pages_to_scan=100000, sleep_millisecs=0)"
set output "docs/cpu.svg"
set title "Merger CPU: $title" font "sans,10"
set ylabel "CPU seconds used by the merger so far"
set key top left
plot "$csv.sp" using 2:4 with lines lw 2 title "samepage (scanners + daemon)", \
     "$csv.kn" using 2:4 with lines lw 2 title "kernel KSM (ksmd)"
GP
echo "plot.sh: docs/saving.svg, docs/cpu.svg"
cat /sys/kernel/mm/ksm/run | grep -qx 0 || echo "plot.sh: kernel KSM left on!" >&2
