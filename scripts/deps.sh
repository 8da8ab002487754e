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
[ ${#need[@]} -eq 0 ] && exit 0
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "samepage: installing ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
