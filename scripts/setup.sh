#!/usr/bin/env bash
# Idempotent machine setup for virt-ebpf on Debian 12 (bookworm) or 13 (trixie), run as root.
#
# QEMU >= 9.0 and libvirt >= 9.0: whatever is installed is kept when it is new enough.
# Otherwise Debian 12 takes them from bookworm-backports (Debian 12's own QEMU is 7.2), and
# Debian 13 from trixie itself, or from trixie-backports with VIRT_EBPF_BACKPORTS=1. Trixie's
# own is the default: it is new enough, and it is what Debian's security team supports.
# A backports source is added on the archive of the machine's existing Debian source.
# Also: Node.js >= 20 with npm (from Debian 13; Debian 12's is 18), libbpf/bpftool, the
# guest-fixture tools, clang for the fuzz targets (clang-14 on Debian 12, clang-19 on 13),
# bpffs, virtlogd/libvirtd, npm deps and the build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/debian.sh
. "$here/scripts/lib/debian.sh"
log() { printf '[setup] %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
  die "must run as root (it installs packages and starts libvirtd); re-run with sudo"
fi

# 1. Which Debian, and where QEMU and libvirt come from.
os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}:${VERSION_CODENAME:-}") || os_id=
os_name=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}") || os_name=
# clang with libFuzzer (the shims' fuzz targets): each release's own version.
case "$os_id" in
  debian:bookworm) release=bookworm; virt_suite=bookworm-backports; clang=14 ;;
  debian:trixie) release=trixie; virt_suite=$([ "${VIRT_EBPF_BACKPORTS:-0}" = 1 ] && echo trixie-backports || echo trixie); clang=19 ;;
  *) die "${os_name:-this system} is not supported: setup.sh needs Debian 12 (bookworm) or 13 (trixie); elsewhere install QEMU >= 9.0, libvirt >= 9.0, Node.js >= 20 and the packages listed in this script by hand" ;;
esac

virt_pkgs="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients"
pkgs="python3 libbpf1 bpftool cpio iproute2 ethtool busybox-static libxml2-utils kmod procps psmisc gcc libc6-dev xz-utils zstd lintian"
pkgs="$pkgs clang-$clang libclang-rt-$clang-dev"

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q 'install ok installed'; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
# QEMU (qemu-system-x86 carries an epoch) and libvirt (libvirt-daemon has libvirtd) >= 9.0.
virt_ok() {
  local p
  for p in $virt_pkgs; do installed "$p" || return 1; done
  dpkg --compare-versions "$(version_of qemu-system-x86)" ge '1:9.0~' && dpkg --compare-versions "$(version_of libvirt-daemon)" ge '9.0~'
}
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'
}

install_virt=0
if ! virt_ok; then
  install_virt=1
elif [ "$virt_suite" = trixie-backports ] && ! version_of qemu-system-x86 | grep -q '~bpo'; then
  install_virt=1 # asked for backports, has trixie's own
fi
missing=""
for p in $pkgs; do installed "$p" || missing="$missing $p"; done
if ! node_ok; then
  case "$release" in
    trixie) missing="$missing nodejs npm" ;;
    *) die "Node.js >= 20 with npm is needed and Debian 12 ships 18: install Node.js 20 or newer (with npm), then run setup.sh again" ;;
  esac
fi

if [ "$install_virt" = 1 ] || [ -n "$missing" ]; then
  if [ "$install_virt" = 1 ] && [ "$virt_suite" != "$release" ] && [ -z "$(debian_source "$virt_suite")" ]; then
    add_debian_suite "$virt_suite" "/etc/apt/sources.list.d/virt-ebpf-$virt_suite.sources" \
      || die "no enabled apt source for $release to add $virt_suite beside (QEMU >= 9.0 is needed); add a $virt_suite source by hand and run setup.sh again"
    log "added $virt_suite, from the archive of the existing $release source"
  fi
  log "installing packages"
  apt-get update -qq
  if [ "$install_virt" = 1 ]; then
    log "QEMU and libvirt from $virt_suite"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold -t "$virt_suite" $virt_pkgs >/dev/null
  fi
  if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold $missing >/dev/null
  fi
fi
virt_ok || die "QEMU >= 9.0 and libvirt >= 9.0 are needed; installed: qemu-system-x86 $(version_of qemu-system-x86), libvirt-daemon $(version_of libvirt-daemon)"
node_ok || die "Node.js >= 20 with npm is needed; found $(node --version 2>/dev/null || echo none) first on PATH"

# 2. bpffs
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs"
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi

# 3. libvirt daemons (no systemd here: start by hand, idempotently; with no inherited fds)
mkdir -p /run/libvirt
if ! pgrep -x virtlogd >/dev/null; then log "starting virtlogd"; (close_fds; exec virtlogd -d); fi
if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; (close_fds; exec libvirtd -d); fi
for _ in $(seq 1 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done

# 4. npm deps and build
cd "$here"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
log "building"
npm run --silent build
log "ready"
