#!/usr/bin/env bash
# Calls run one way (docs/DESIGN.md, "The map"): from the built objects,
# every call from one module (one .c file) to another must go down the
# layers listed here, never up or sideways. Calls are read from the symbol
# tables (nm), so a call made through the library's own interposed libc
# functions (close, read, ioctl... defined in lib/preload*.c) counts too:
# code below the wrappers must use common/os.h's raw_* calls.
# Usage: tests/layers.sh [BUILD_DIR]; exits 1 listing each wrong call.
set -u
O=${1:-build}
cd "$(dirname "$0")/.." || exit 1
command -v nm >/dev/null || { echo "SKIP: no nm"; exit 77; }

# Rank of each module: a module may call only modules of a higher rank.
declare -A rank=(
	# common/, below every part
	[common/conn]=10 [common/ksmfiles]=10 [common/conf]=10
	[common/proto]=11 [common/os]=11 [common/exe]=11 [common/path]=11 [common/log]=11
	[common/fault]=12 [common/num]=12
	[common/env]=13
	# lib/: wrappers -> API -> scan -> chunk -> defrag, fill -> merge -> evict, track -> client
	[lib/preload]=0 [lib/preload_files]=0
	[lib/api]=1
	[lib/ksmfile]=2
	[lib/scan]=3 [lib/chunk]=4 [lib/defrag]=5 [lib/fill]=5 [lib/merge]=6 [lib/evict]=7 [lib/track]=7 [lib/client]=8
	[lib/arena]=9 [lib/page]=9 [lib/sort]=9
	# daemon/: loop -> requests -> decisions -> connections -> budget -> sets -> storage
	[daemon/main]=0 [daemon/loop]=1
	[daemon/requests]=2 [daemon/config]=2 [daemon/service]=2
	[daemon/lookup]=3 [daemon/move]=3
	[daemon/conn]=4 [daemon/budget]=5 [daemon/advisor]=6 [daemon/sets]=6
	[daemon/knobs]=7 [daemon/index]=7 [daemon/refs]=8 [daemon/pool]=8 [daemon/map]=9
	# cli/: main -> commands -> what they share -> the connection
	[cli/main]=0
	[cli/daemon]=1 [cli/metrics]=1 [cli/reload]=1 [cli/run]=1 [cli/set]=1 [cli/status]=1
	[cli/top]=1 [cli/unmerge]=1
	[cli/procs]=2 [cli/knobs]=2 [cli/frame]=2
	[cli/connect]=3 [cli/fmt]=3 [cli/uffd]=3
	[cli/spawn]=4 [cli/pidstat]=4 [cli/args]=4 [cli/term]=4
)

fail=0
# One program's objects: who defines what, then who calls whom.
check() {
	local part=$1 objs=() o m s
	declare -A def=()
	for o in "$O"/obj/"$part"/*.o "$O"/obj/common/*.o; do
		[ -e "$o" ] || continue
		m=${o#"$O"/obj/}
		m=${m%.o}
		[ "$part" = lib ] && [ "$m" = common/conf ] && continue # not linked into the library
		if [ -z "${rank[$m]:-}" ]; then
			echo "FAIL: $m.c has no layer: add it to tests/layers.sh and docs/DESIGN.md's map"
			fail=1
			continue
		fi
		objs+=("$o")
		while read -r s; do def[$s]=$m; done < <(nm --defined-only "$o" | awk '$2 ~ /^[TDBRVW]$/ {print $3}')
	done
	for o in "${objs[@]}"; do
		m=${o#"$O"/obj/}
		m=${m%.o}
		while read -r s; do
			local to=${def[$s]:-}
			[ -n "$to" ] && [ "$to" != "$m" ] || continue
			if [ "${rank[$to]}" -le "${rank[$m]}" ]; then
				echo "FAIL: $m.c calls $s() of $to.c: up or sideways (ranks ${rank[$m]} -> ${rank[$to]})"
				fail=1
			fi
		done < <(nm -u "$o" | awk '{print $2}' | sort -u)
	done
	echo "checked $part: ${#objs[@]} modules"
}
[ -d "$O/obj/lib" ] || { echo "FAIL: no objects in $O/obj (build first)"; exit 1; }
for part in lib daemon cli; do
	check "$part"
done
exit $fail
