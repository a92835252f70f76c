#!/usr/bin/env bash
# The README's first command: set up this machine (idempotent), then show eBPF RSS steering under
# libvirt: install virt-ebpf, start the broker, boot the guest fixture as a libvirt domain with
# RSS on, print `virt-ebpf status` and `verify`, and clean up (the install stays).
# `--keep` leaves the domain and the broker running.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "demo: must run as root (it installs packages and virt-ebpf, and starts a libvirt domain); re-run with sudo" >&2
  exit 1
fi
bash "$here/scripts/setup.sh" >&2
cd "$here"
exec node dist/examples/demo.js "$@"
