#!/usr/bin/env bash
# eBPF RSS without libvirt: QEMU runs as libvirt-qemu with the broker-less `virt-ebpf exec`
# (as root: it probes QEMU, loads the RSS program and maps, drops to the user and execs QEMU).
#   bash examples/exec.sh [QEMU ARGS...]     TAP=tap0 QUEUES=4 by default
# Arguments after it go to QEMU (say `-S -qmp unix:/tmp/q.sock,server=on,wait=off` to talk to it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tap=${TAP:-tap0}
queues=${QUEUES:-4}
ip link show "$tap" >/dev/null 2>&1 || ip tuntap add dev "$tap" mode tap multi_queue user libvirt-qemu
exec node "$here/dist/src/cli/main.js" exec --user libvirt-qemu -- qemu-system-x86_64 \
  -machine q35 -accel tcg -nodefaults -display none \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=off,queues=$queues" \
  -device "virtio-net-pci,netdev=n0,mq=on,vectors=$((2 * queues + 2)),rss=on,id=net0" "$@"
