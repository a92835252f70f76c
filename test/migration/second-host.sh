#!/usr/bin/env bash
# A second libvirt host on this machine: run as `unshare --mount --uts --propagation private
# bash second-host.sh DIR HOSTNAME UUID [bare]`, it becomes that host's libvirtd (foreground).
#
# The host differs from this one in what libvirt and virt-ebpf keep per host: its own hostname
# (UTS) and host_uuid (libvirt refuses a migration to the host it comes from by comparing them),
# its own /run (a tmpfs: daemons' pid files live there) with /run/libvirt and /run/virt-ebpf
# bound from DIR so this host's virsh and tests reach its sockets, its own /etc/libvirt (a copy
# of this one without domains, networks or autostart), /var/lib/libvirt, /var/cache/libvirt,
# /var/log/libvirt and virt-ebpf's probe cache. Everything else (/usr, /tmp, the network) is
# shared. `bare` hides virt-ebpf from it: no hook, no wrapper directory, no runtime — a host
# where virt-ebpf was never installed. `plain-qemu` gives it the packaged QEMU at
# /usr/bin/qemu-system-x86_64 where this host diverted it (install --host-wide): a host without
# the host-wide mode.
set -euo pipefail
dir=$1 host=$2 uuid=$3 mode=${4:-}

# Everything below would change this machine itself unless unshare gave us namespaces our caller does not share.
[ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/$PPID/ns/mnt)" ] && [ "$(readlink /proc/self/ns/uts)" != "$(readlink /proc/$PPID/ns/uts)" ] \
  || { echo "second-host: run me under unshare --mount --uts (I mount over /run, /etc/libvirt and /var/lib/libvirt)" >&2; exit 1; }
[ -d "$dir/etc-libvirt" ] || { echo "second-host: $dir/etc-libvirt is missing (the fixture prepares it)" >&2; exit 1; }
mount --make-rprivate /
hostname "$host"

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt /run/virt-ebpf /run/lock
mount --bind "$dir/run-libvirt" /run/libvirt
mount --bind "$dir/run-virt-ebpf" /run/virt-ebpf
mount --bind "$dir/etc-libvirt" /etc/libvirt
# Domain images are shared, like storage both hosts mount.
mkdir -p "$dir/var-lib-libvirt/images"
mount --bind /var/lib/libvirt/images "$dir/var-lib-libvirt/images"
mount --rbind "$dir/var-lib-libvirt" /var/lib/libvirt
mount --bind "$dir/var-cache-libvirt" /var/cache/libvirt
mount --bind "$dir/var-log-libvirt" /var/log/libvirt
mkdir -p /var/cache/virt-ebpf
mount --bind "$dir/var-cache-virt-ebpf" /var/cache/virt-ebpf
if [ "$mode" = plain-qemu ] && [ -f /usr/bin/qemu-system-x86_64.distrib ]; then
  mount --bind /usr/bin/qemu-system-x86_64.distrib /usr/bin/qemu-system-x86_64
fi
if [ "$mode" = bare ]; then
  for d in /usr/libexec/virt-ebpf /usr/lib/virt-ebpf /var/lib/virt-ebpf; do
    [ -d "$d" ] && mount -t tmpfs -o mode=0755 tmpfs "$d"
  done
  rm -rf /etc/libvirt/hooks/qemu.d/virt-ebpf
fi
exec libvirtd -f /etc/libvirt/libvirtd.conf
