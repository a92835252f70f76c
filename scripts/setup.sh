#!/usr/bin/env bash
# Idempotent machine setup for virt-ebpf on Debian 12 (bookworm), run as root.
# Installs QEMU 10 and libvirt 11 from bookworm-backports, libbpf/bpftool and the
# guest-fixture tools, mounts bpffs, starts virtlogd/libvirtd, installs npm deps and builds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: must run as root (it installs packages and starts libvirtd); re-run with sudo" >&2
  exit 1
fi

# 1. bookworm-backports: same archive as the existing bookworm source (deb822 or one-line form).
bp=/etc/apt/sources.list.d/virt-ebpf-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { echo "setup.sh: no bookworm apt source found to derive backports from; add a bookworm-backports source by hand" >&2; exit 1; }
  log "adding bookworm-backports from the existing Debian archive"
  cat > "$bp" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

pkgs_bp="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt0"
pkgs="python3 libbpf1 bpftool cpio iproute2 ethtool busybox-static libxml2-utils kmod procps psmisc gcc libc6-dev clang-14 libclang-rt-14-dev xz-utils zstd lintian"
missing=0
dpkg-query -W -f='${Version}\n' qemu-system-x86 2>/dev/null | grep -q '^1:10' || missing=1
dpkg-query -W -f='${Version}\n' libvirt-daemon 2>/dev/null | grep -q '^11' || missing=1
for p in $pkgs; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing=1; done
if [ "$missing" = 1 ]; then
  log "installing packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold -t bookworm-backports $pkgs_bp >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold $pkgs >/dev/null
fi

# 2. bpffs
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs"
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi

# 3. libvirt daemons (no systemd here: start by hand, idempotently)
mkdir -p /run/libvirt
if ! pgrep -x virtlogd >/dev/null; then log "starting virtlogd"; virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; libvirtd -d; fi
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
