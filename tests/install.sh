#!/usr/bin/env bash
# `make install` and what it installs, run from where it was installed:
#  - staged (DESTDIR=tmp PREFIX=/usr): every file and no other; the library
#    with its SONAME and links, exporting the API of samepage.h and the libc
#    functions lib/preload.c interposes, nothing else; man pages clean under
#    `mandoc -T lint` and `man -l`, each function's page found by name; a
#    program built with `pkg-config --cflags --libs samepage` against the
#    staged tree runs on the staged library; the bash completion loads; the
#    udev rule, and its effect (`udevadm test` on /dev/userfaultfd, put
#    back afterwards); the installed samepaged, started by socket activation
#    (systemd-socket-activate) on the path of the installed samepaged.socket,
#    answers the installed `samepage status` and the program without
#    SAMEPAGE_SOCKET (the unit's path is samepage's default);
#  - at a real prefix (PREFIX=tmp/prefix): the units pass `systemd-analyze
#    verify`; samepage-qemu preloads the library into what it runs, and into
#    QEMU (whose madvise then reaches samepage) where QEMU is installed;
#  - the installed CLI's errors;
#  - `make uninstall` removes every file both installs wrote.
# The daemon's side of the protocols (READY=1, STATUS=, refusals) is
# tests/integration/service.c. Usage: tests/install.sh [BUILD_DIR]; exit 0
# pass, 77 skip, 1 fail (every failed check is reported).
set -u
O=${1:-build}
cd "$(dirname "$0")/.." || exit 1
VERSION=$(cat VERSION)

missing=()
for tool in cc make mandoc man pkg-config readelf nm systemd-socket-activate systemd-analyze; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "SKIP install.sh: needs ${missing[*]} (scripts/deps.sh installs them)"
	exit 77
fi

tmp=$(mktemp -d /tmp/sp-install.XXXXXX)
root=$tmp/root            # DESTDIR
prefix=$tmp/prefix        # a real PREFIX
xdg=$tmp/xdg              # XDG_RUNTIME_DIR, as systemd's %t
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL install.sh: $*" >&2; failures=$((failures + 1)); }
check() { local what=$1; shift; "$@" || fail "$what"; }

# ---- staged install ----
if ! make -s install O="$O" DESTDIR="$root" PREFIX=/usr >"$tmp/install.log" 2>&1; then
	cat "$tmp/install.log" >&2
	fail "make install DESTDIR=$root PREFIX=/usr"
	exit 1
fi

man3_links="samepage_madvise samepage_set_merge_any samepage_get_merge_any samepage_stat
	samepage_set_domain samepage_scan_now"
expected() {
	printf '%s\n' usr/bin/samepage usr/bin/samepaged usr/bin/samepage-qemu \
		usr/lib/libsamepage.so."$VERSION" usr/lib/libsamepage.so.1 usr/lib/libsamepage.so \
		usr/include/samepage.h usr/lib/pkgconfig/samepage.pc \
		usr/share/man/man1/samepage.1 usr/share/man/man3/libsamepage.3 \
		usr/share/man/man5/samepage.conf.5 usr/share/man/man8/samepaged.8 \
		usr/lib/systemd/user/samepaged.socket usr/lib/systemd/user/samepaged.service \
		usr/lib/systemd/system/samepaged@.socket usr/lib/systemd/system/samepaged@.service \
		usr/lib/udev/rules.d/70-samepage-userfaultfd.rules \
		usr/share/bash-completion/completions/samepage \
		usr/share/bash-completion/completions/samepaged
	for f in $man3_links; do echo "usr/share/man/man3/$f.3"; done
}
installed() { (cd "$1" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort); }
diff <(expected | sort) <(installed "$root") >"$tmp/files.diff" ||
	fail "installed files differ from the expected ones (< missing, > unexpected): $(cat "$tmp/files.diff")"

# ---- the library ----
lib=$root/usr/lib
soname=$(readelf -d "$lib/libsamepage.so.$VERSION" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
check "SONAME is '$soname', want libsamepage.so.1" [ "$soname" = libsamepage.so.1 ]
check "libsamepage.so.1 -> $(readlink "$lib/libsamepage.so.1")" \
	[ "$(readlink "$lib/libsamepage.so.1")" = "libsamepage.so.$VERSION" ]
check "libsamepage.so -> $(readlink "$lib/libsamepage.so")" \
	[ "$(readlink "$lib/libsamepage.so")" = libsamepage.so.1 ]
# Derived from the sources, so a new function or wrapper left out of
# lib/libsamepage.map fails here.
{
	sed -n 's/^SAMEPAGE_API [^(]*[ *]\(samepage_[a-z_]*\)(.*/\1/p' include/samepage.h
	sed -n 's/^EXPORT [^(]*[ *]\([A-Za-z_0-9]*\)(.*/\1/p' lib/preload.c lib/preload_files.c
} | sort -u >"$tmp/want.sym"
nm -D --defined-only "$lib/libsamepage.so.$VERSION" | awk '{print $3}' | sort -u >"$tmp/have.sym"
[ "$(wc -l <"$tmp/want.sym")" -ge 20 ] || fail "could not read the API from the sources"
diff "$tmp/want.sym" "$tmp/have.sym" >"$tmp/sym.diff" ||
	fail "exported symbols (< missing, > extra): $(cat "$tmp/sym.diff")"

# ---- man pages ----
for page in "$root"/usr/share/man/man1/samepage.1 "$root"/usr/share/man/man3/libsamepage.3 \
	"$root"/usr/share/man/man5/samepage.conf.5 "$root"/usr/share/man/man8/samepaged.8; do
	# Style notes on pages not installed here (samepaged(8) from samepage(1),
	# sd_notify(3)) depend on the machine, nothing else is allowed.
	out=$(mandoc -T lint "$page" 2>&1 | grep -v -e 'referenced manual not found' -e 'mandoc\.db')
	[ -z "$out" ] || fail "mandoc -T lint ${page#"$root"}: $out"
	out=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
	[ -z "$out" ] || fail "man -l ${page#"$root"}: $out"
done
for f in $man3_links; do
	out=$(MANPATH=$root/usr/share/man MANWIDTH=80 man "$f" 2>/dev/null | grep -c "$f")
	[ "${out:-0}" -gt 0 ] || fail "man $f does not open libsamepage(3)"
done

# ---- udev rule and bash completion ----
grep -q '^KERNEL=="userfaultfd".*GROUP="samepage".*MODE="0660"' \
	"$root"/usr/lib/udev/rules.d/70-samepage-userfaultfd.rules ||
	fail "the udev rule does not give group samepage read-write /dev/userfaultfd"
# The rule's effect, as udev applies it (as root, where the machine has a
# /dev/userfaultfd): `udevadm test` runs the rules for the device and sets
# its group and mode for real, so what was there is put back afterwards.
# udevadm comes from Debian's udev package, unpacked here when it is not
# installed (installing it would start udevd). Then a member of the group
# opens the device read-write and a non-member cannot.
udev_effect() {
	local dev=/dev/userfaultfd sys=/sys/devices/virtual/misc/userfaultfd udevadm was got
	local made_group=0 made_char=0 data_before
	if [ "$(id -u)" != 0 ] || [ ! -c "$dev" ] || [ ! -d "$sys" ]; then
		echo "install.sh: not root, or no $dev: the udev rule's effect not checked"
		return 0
	fi
	udevadm=$(command -v udevadm || true)
	if [ -z "$udevadm" ]; then
		(cd "$tmp" && apt-get download udev >/dev/null 2>&1) &&
			dpkg-deb -x "$tmp"/udev_*.deb "$tmp/udev" 2>/dev/null
		udevadm=$(ls "$tmp"/udev/bin/udevadm "$tmp"/udev/usr/bin/udevadm 2>/dev/null | head -1)
	fi
	if [ -z "$udevadm" ]; then
		echo "install.sh: no udevadm (apt-get download udev failed): the udev rule's effect not checked"
		return 0
	fi
	was=$(stat -c '%a %g' "$dev")
	getent group samepage >/dev/null || { groupadd samepage && made_group=1; }
	[ -e /dev/char ] || made_char=1
	data_before=$(ls /run/udev/data 2>/dev/null)
	mkdir -p /run/udev/rules.d
	cp "$root"/usr/lib/udev/rules.d/70-samepage-userfaultfd.rules /run/udev/rules.d/
	"$udevadm" test --action=add "$sys" >"$tmp/udev.log" 2>&1
	got=$(stat -c '%a %G' "$dev")
	if [ "$got" = "660 samepage" ]; then
		check "a member of group samepage opens $dev read-write" \
			setpriv --reuid=nobody --regid=nogroup --groups=samepage sh -c "exec 3<>$dev"
		setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c "exec 3<>$dev" 2>/dev/null &&
			fail "a user outside group samepage opens $dev read-write"
		echo "install.sh: udevadm test with the installed rule: $dev 660 root:samepage;" \
			"a member opens it read-write, nobody else"
	else
		fail "udevadm test with the installed rule left $dev at '$got', not '660 samepage':
$(tail -n 20 "$tmp/udev.log")"
	fi
	# Put back what was there.
	rm -f /run/udev/rules.d/70-samepage-userfaultfd.rules
	for f in $(ls /run/udev/data 2>/dev/null); do
		grep -qx -- "$f" <<<"$data_before" || rm -f "/run/udev/data/$f"
	done
	[ "$made_char" = 0 ] || rm -rf /dev/char
	chmod "${was%% *}" "$dev"
	chgrp "${was##* }" "$dev"
	[ "$made_group" = 0 ] || groupdel samepage
	return 0
}
udev_effect
comp=$(bash -c '. "$1"; complete -p samepage samepaged
	COMP_WORDS=(samepage st); COMP_CWORD=1; _samepage; echo "${COMPREPLY[*]}"
	COMP_WORDS=(samepage set pages); COMP_CWORD=2; _samepage; echo "${COMPREPLY[*]}"' \
	_ "$root"/usr/share/bash-completion/completions/samepage 2>&1)
for want in "complete -F _samepage samepage" "complete -F _samepaged samepaged" "^status$" \
	"^pages_to_scan=$"; do
	grep -q -- "$want" <<<"$comp" || fail "bash completion: no '$want' in: $comp"
done

# ---- socket activation on the installed unit's path ----
unit=$root/usr/lib/systemd/user/samepaged.socket
listen=$(sed -n 's/^ListenSequentialPacket=//p' "$unit")
grep -q '^DirectoryMode=0700$' "$unit" || fail "samepaged.socket: DirectoryMode is not 0700"
grep -q '^SocketMode=0600$' "$unit" || fail "samepaged.socket: SocketMode is not 0600"
sock=${listen//%t/$xdg}
mkdir -p -m 0700 "$xdg" "$(dirname "$sock")"
# What systemd does for the unit, and the daemon as its service runs it.
env -u SAMEPAGE_SOCKET XDG_RUNTIME_DIR="$xdg" systemd-socket-activate --seqpacket -l "$sock" \
	"$root/usr/bin/samepaged" >"$tmp/activate.log" 2>&1 &
act=$!
pids+=("$act")
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || fail "systemd-socket-activate did not listen at $sock: $(cat "$tmp/activate.log")"
# No SAMEPAGE_SOCKET: the CLI finds the unit's socket by itself.
sp() { env -u SAMEPAGE_SOCKET XDG_RUNTIME_DIR="$xdg" "$root/usr/bin/samepage" "$@"; }
out=$(sp status 2>&1) || fail "installed samepage status through the activated socket: $out"
grep -q '^pages_sharing ' <<<"$out" || fail "samepage status printed no counters: $out"
[ "$(cat "/proc/$act/comm" 2>/dev/null)" = samepaged ] ||
	fail "the activated process is not samepaged: $(cat "$tmp/activate.log")"
[ ! -e "$sock.lock" ] || fail "the activated daemon took a lock on the manager's socket path"

# ---- a program built with pkg-config against the staged tree ----
cat >"$tmp/prog.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <samepage.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void)
{
	static char page[4096] __attribute__((aligned(4096)));
	char name[300];
	struct samepage_stat st;
	Dl_info info;
	int err;

	memset(name, 'x', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0;
	if ((err = samepage_madvise(page, sizeof(page), 12345)) != -EINVAL)
		return printf("samepage_madvise(bad advice) = %d\n", err), 1;
	if ((err = samepage_set_domain(name)) != -EINVAL)
		return printf("samepage_set_domain(300 bytes) = %d\n", err), 1;
	if ((err = samepage_get_merge_any()) != 0)
		return printf("samepage_get_merge_any() = %d\n", err), 1;
	if ((err = samepage_stat(&st)) != 0)
		return printf("samepage_stat: %s\n", strerror(-err)), 1;
	if (!dladdr((void *)samepage_madvise, &info))
		return printf("dladdr failed\n"), 1;
	printf("library %s\n", info.dli_fname);
	return 0;
}
EOF
pc() { PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root" pkg-config "$@"; }
flags=$(pc --cflags --libs samepage) || fail "pkg-config --cflags --libs samepage"
[ "$(pc --modversion samepage)" = "$VERSION" ] || fail "pkg-config --modversion is not $VERSION"
if cc -Wall -Werror -o "$tmp/prog" "$tmp/prog.c" $flags -ldl 2>"$tmp/cc.log"; then
	readelf -d "$tmp/prog" | grep -q 'NEEDED.*\[libsamepage\.so\.1\]' ||
		fail "the program does not need libsamepage.so.1"
	out=$(env -u SAMEPAGE_SOCKET XDG_RUNTIME_DIR="$xdg" LD_LIBRARY_PATH="$lib" "$tmp/prog" 2>&1) ||
		fail "the pkg-config program failed: $out"
	grep -q "^library $lib/libsamepage.so.1$" <<<"$out" ||
		fail "the pkg-config program did not run on the staged library: $out"
else
	fail "cc with \`pkg-config --cflags --libs samepage\` ($flags): $(cat "$tmp/cc.log")"
fi
kill "$act" 2>/dev/null
wait "$act" 2>/dev/null
[ -S "$sock" ] || fail "the daemon removed the manager's socket when it stopped"

# ---- the installed CLI's errors ----
cli_fails() { # want_status stderr_pattern args...
	local want=$1 pattern=$2 st
	shift 2
	out=$("$@" 2>&1 >/dev/null)
	st=$?
	[ "$st" -eq "$want" ] || fail "'${*#"$root"}' exited $st, want $want"
	grep -q -- "$pattern" <<<"$out" || fail "'${*#"$root"}' said '$out', want '$pattern'"
}
bin=$root/usr/bin
nosock=$tmp/nowhere/sock
cli_fails 2 "which command" "$bin/samepage"
cli_fails 2 "no command 'bogus'" "$bin/samepage" bogus
cli_fails 2 "unknown knob" "$bin/samepage" set bogus=1
cli_fails 2 "out of range" "$bin/samepage" set run=7
cli_fails 1 "no daemon" env SAMEPAGE_SOCKET="$nosock" "$bin/samepage" status
cli_fails 1 "no daemon" env SAMEPAGE_SOCKET="$nosock" "$bin/samepage" unmerge
cli_fails 2 "unknown option" "$bin/samepaged" --bogus
# `run` preloads ../lib/libsamepage.so beside its binary: alone, it says so.
mkdir -p "$tmp/alone/bin"
cp "$bin/samepage" "$tmp/alone/bin/"
cli_fails 1 "libsamepage.so" "$tmp/alone/bin/samepage" run -- true

# ---- at a real prefix: units, samepage-qemu ----
if ! make -s install O="$O" PREFIX="$prefix" LDCONFIG=true >"$tmp/install2.log" 2>&1; then
	cat "$tmp/install2.log" >&2
	fail "make install PREFIX=$prefix"
fi
units=$prefix/lib/systemd
out=$(XDG_RUNTIME_DIR="$xdg" systemd-analyze --user verify --man=no \
	"$units/user/samepaged.socket" "$units/user/samepaged.service" 2>&1) ||
	fail "systemd-analyze --user verify samepaged.socket samepaged.service: $out"
[ -z "$out" ] || fail "systemd-analyze --user verify: $out"
# A template is verified as an instance; root is an account every system has.
mkdir -p "$tmp/sys"
for u in socket service; do cp "$units/system/samepaged@.$u" "$tmp/sys/samepaged@root.$u"; done
out=$(systemd-analyze verify --man=no "$tmp/sys/samepaged@root.socket" \
	"$tmp/sys/samepaged@root.service" 2>&1) || fail "systemd-analyze verify samepaged@root: $out"
[ -z "$out" ] || fail "systemd-analyze verify samepaged@root: $out"

# A daemon of the test's own, so that nothing is started on demand.
qsock=$tmp/q/sock
mkdir -p -m 0700 "$tmp/q"
"$prefix/bin/samepaged" --socket "$qsock" 2>"$tmp/qd.log" &
pids+=("$!")
for _ in $(seq 100); do [ -S "$qsock" ] && break; sleep 0.05; done
[ -S "$qsock" ] || fail "samepaged --socket $qsock did not listen: $(cat "$tmp/qd.log")"
cli_fails 127 "No such file" env SAMEPAGE_SOCKET="$qsock" "$prefix/bin/samepage" run -- /nonexistent/prog
# What the wrapper runs, and with what: a stand-in for QEMU.
cat >"$tmp/fakeqemu" <<'EOF'
#!/bin/sh
echo "preload=$LD_PRELOAD socket=$SAMEPAGE_SOCKET args=$*"
EOF
chmod +x "$tmp/fakeqemu"
out=$(env -u LD_PRELOAD SAMEPAGE_SOCKET="$qsock" SAMEPAGE_QEMU="$tmp/fakeqemu" \
	"$prefix/bin/samepage-qemu" -m 64 'a b' 2>&1)
grep -q "^preload=$prefix/bin/../lib/libsamepage.so socket=$qsock args=-m 64 a b$" <<<"$out" ||
	fail "samepage-qemu with SAMEPAGE_QEMU: $out"
if command -v qemu-system-x86_64 >/dev/null; then
	ln -s samepage-qemu "$prefix/bin/samepage-qemu-system-x86_64"
	out=$(SAMEPAGE_SOCKET=$qsock "$prefix/bin/samepage-qemu-system-x86_64" -version 2>&1)
	grep -q "QEMU emulator version" <<<"$out" || fail "samepage-qemu-system-x86_64 -version: $out"
	# A guest that never runs (-S): QEMU allocates and madvises its RAM.
	SAMEPAGE_SOCKET=$qsock "$prefix/bin/samepage-qemu" -machine pc -m 64 -nodefaults \
		-display none -S >"$tmp/qemu.log" 2>&1 &
	q=$!
	pids+=("$q")
	mergeable=
	for _ in $(seq 200); do
		if grep -q "$prefix/lib/libsamepage.so" "/proc/$q/maps" 2>/dev/null; then
			mergeable=$(SAMEPAGE_SOCKET=$qsock "$prefix/bin/samepage" status --pid "$q" 2>/dev/null |
				awk '$1 == "ksm_mergeable" {print $2}')
			[ "$mergeable" = 1 ] && break
		fi
		kill -0 "$q" 2>/dev/null || break
		sleep 0.05
	done
	grep -q "$prefix/lib/libsamepage.so" "/proc/$q/maps" 2>/dev/null ||
		fail "QEMU under samepage-qemu has no libsamepage.so mapped: $(cat "$tmp/qemu.log")"
	if [ "$(id -u)" -eq 0 ] || [ -r /dev/userfaultfd ]; then
		[ "$mergeable" = 1 ] || fail "QEMU's madvise(MADV_MERGEABLE) did not reach samepage" \
			"(ksm_mergeable '$mergeable'): $(cat "$tmp/qemu.log")"
	else
		echo "install.sh: no userfaultfd here: QEMU's madvise reaching the daemon was not checked"
	fi
	kill "$q" 2>/dev/null
	wait "$q" 2>/dev/null
	rm "$prefix/bin/samepage-qemu-system-x86_64"
else
	echo "install.sh: qemu-system-x86_64 is not installed: samepage-qemu ran a stand-in only"
fi

# ---- uninstall ----
make -s uninstall O="$O" DESTDIR="$root" PREFIX=/usr >/dev/null 2>&1 || fail "make uninstall (staged)"
left=$(installed "$root")
[ -z "$left" ] || fail "make uninstall left: $left"
make -s uninstall O="$O" PREFIX="$prefix" >/dev/null 2>&1 || fail "make uninstall (prefix)"
left=$(installed "$prefix")
[ -z "$left" ] || fail "make uninstall PREFIX=$prefix left: $left"

[ "$failures" -eq 0 ] || exit 1
echo "install.sh: ok (staged and prefix installs, $(wc -l <"$tmp/want.sym") symbols, 4 man pages)"
