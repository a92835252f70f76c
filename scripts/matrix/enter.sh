#!/usr/bin/env bash
# Run a command inside a Debian root, in namespaces of its own (docs/testing.md, "Matrix"):
#
#   unshare --mount --pid --fork --propagation private bash enter.sh ROOT RUNDIR CMD…
#
# ROOT is the root directory. With RUNDIR non-empty, ROOT stays untouched: the command sees an
# overlay (ROOT below, RUNDIR/upper above) and every write lands in RUNDIR. Inside: a new
# /proc (this PID namespace), /sys bind-mounted from the host with everything under it (bpffs,
# cgroups), a private /dev (tmpfs with its own nodes, kvm among them where the host has it, a
# new devpts instance: package scripts that chgrp device nodes must not touch the host's), a tmpfs /run, and each "HOST:PATH" of
# VEBPF_BINDS bind-mounted at PATH. Every mount and every process of the root ends with this
# namespace: when CMD returns, the kernel kills what is left (daemons, QEMU) and drops the mounts.
set -euo pipefail
root=$1 rundir=$2
shift 2
die() { printf 'matrix enter: %s\n' "$*" >&2; exit 1; }
[ -d "$root" ] || die "no root at $root"
[ "$$" = 1 ] || die "run me as PID 1 of a new PID namespace (unshare --mount --pid --fork --propagation private)"

if [ -n "$rundir" ]; then
  mkdir -p "$rundir/upper" "$rundir/work" "$rundir/merged"
  mount -t overlay overlay -o "lowerdir=$root,upperdir=$rundir/upper,workdir=$rundir/work" "$rundir/merged"
  root=$rundir/merged
fi

mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --make-rslave "$root/sys"

d=$root/dev
mount -t tmpfs -o mode=0755,size=16m,nosuid dev "$d"
node() { mknod -m "$1" "$d/$2" c "$3" "$4"; }
node 666 null 1 3
node 666 zero 1 5
node 666 full 1 7
node 666 random 1 8
node 666 urandom 1 9
node 666 tty 5 0
mkdir -p "$d/net" "$d/pts" "$d/shm"
node 666 net/tun 10 200
# KVM as on the host (root:kvm 0660), for what checks for it (QEMU's microvm build will not
# start without it); the guests themselves run under TCG.
if [ -c /dev/kvm ]; then
  node 660 kvm 10 232
  kvm_gid=$(awk -F: '$1 == "kvm" {print $3}' "$root/etc/group")
  [ -z "$kvm_gid" ] || chgrp "$kvm_gid" "$d/kvm"
fi
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$d/pts"
ln -s pts/ptmx "$d/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$d/shm"
ln -s /proc/self/fd "$d/fd"
ln -s fd/0 "$d/stdin"
ln -s fd/1 "$d/stdout"
ln -s fd/2 "$d/stderr"

mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
for b in ${VEBPF_BINDS:-}; do
  mkdir -p "$root/${b#*:}"
  mount --bind "${b%%:*}" "$root/${b#*:}"
done
[ -f /etc/resolv.conf ] && cat /etc/resolv.conf > "$root/etc/resolv.conf"

chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  ${CI:+CI="$CI"} ${VIRT_EBPF_BACKPORTS:+VIRT_EBPF_BACKPORTS="$VIRT_EBPF_BACKPORTS"} "$@"
