#!/usr/bin/env bash
# Inside a matrix cell's root (docs/testing.md, "Matrix"), from the checkout copied to /vebpf:
#
#   cell.sh setup     scripts/setup.sh, as a user on a fresh Debian 13 runs it (packages, build)
#   cell.sh test      setup.sh again (now idempotent), then the libvirt suites
#
# Both print one "matrix-versions: …" line: what the cell really ran.
set -euo pipefail
cd "$(dirname "$0")/../.."

versions() {
  local qemu libvirt guest
  qemu=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
  libvirt=$(libvirtd --version 2>/dev/null | awk '{print $NF}')
  guest=$(sed -n 's/.*"kernelRelease": "\([^"]*\)".*/\1/p' .cache/guest/manifest.json 2>/dev/null || true)
  echo "matrix-versions: qemu=${qemu:-none} libvirt=${libvirt:-none} guest=${guest:-none}"
}

# The suites that need libvirt, QEMU and a guest: cold start, hot-plug, status and verify
# under libvirt, live migration between two libvirtd, save/restore.
suites() {
  find dist/test/coldstart dist/test/hotplug dist/test/libvirt-guest dist/test/migration dist/test/saverestore -name '*.test.js' | sort
}

case "${1:-}" in
  setup)
    bash scripts/setup.sh
    versions
    ;;
  test)
    bash scripts/setup.sh
    bash scripts/guest/build.sh >/dev/null
    versions
    # shellcheck disable=SC2046
    exec node --test --test-concurrency=1 --test-timeout=300000 $(suites)
    ;;
  *)
    echo "usage: cell.sh setup|test" >&2
    exit 2
    ;;
esac
