#!/usr/bin/env bash
# Install what building and testing samepage needs, from Debian's packages,
# only when something is missing. Used by demo.sh and test.sh.
set -eu
need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
[ -e /usr/include/xxhash.h ] || need+=(libxxhash-dev)
# samepage-fs: the KSM files as a FUSE tree (fusermount3 unmounts it).
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -e /usr/include/fuse3/fuse.h ] || need+=(libfuse3-dev)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fuser >/dev/null || need+=(psmisc)
command -v bc >/dev/null || need+=(bc)
# examples/kernel_tools.sh builds the kernel's ksm_tests.c, which links libnuma.
[ -e /usr/include/numa.h ] || need+=(libnuma-dev)
# tests/install.sh: man pages linted and rendered, a program built through
# pkg-config, the daemon started by socket activation and the units
# verified as systemd would (the package only provides these tools; it does
# not make systemd the init system).
command -v mandoc >/dev/null || need+=(mandoc)
command -v man >/dev/null || need+=(man-db)
command -v pkg-config >/dev/null || need+=(pkgconf)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
# tests/integration/metrics.c: `samepage metrics` checked by promtool, read
# by node_exporter's textfile collector and scraped by a real Prometheus.
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "samepage: installing ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
