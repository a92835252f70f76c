#!/usr/bin/env bash
# Fetch Debian 12's own QEMU 7.2 (qemu-system-x86 + qemu-system-common of the same version,
# the latter carries the accel/tcg modules) and unpack it under .cache/qemu-7.2/root, for the
# test that proves such an emulator is reported unsupported. Nothing is installed: the debs
# are only unpacked. Idempotent: a finished unpack is reused. Prints the emulator path.
#
# QEMU is a relocatable build: it finds its modules relative to its own binary, so the
# unpacked tree runs as is. Shared libraries it needs that the host lacks are unpacked into
# the same tree from the deb's own Depends and found through root/lib (see LIBDIR below).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/.cache/qemu-7.2"
root="$dest/root"
emu="$root/usr/bin/qemu-system-x86_64"
log() { printf '[fetch-qemu72] %s\n' "$*" >&2; }

if [ -f "$dest/.complete" ] && [ -x "$emu" ]; then
  echo "$emu"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "fetch-qemu72: needs apt-get and dpkg-deb (a Debian system)" >&2
  exit 1
}

# The newest 7.2 build any configured source offers (bookworm, bookworm-security).
pick() { apt-cache madison qemu-system-x86 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -E '^1:7\.2' | head -n1; }
ver=$(pick)
if [ -z "$ver" ]; then
  log "no QEMU 7.2 in the apt lists; running apt-get update"
  apt-get update -qq
  ver=$(pick)
fi
[ -n "$ver" ] || {
  echo "fetch-qemu72: no qemu-system-x86 1:7.2 version in any apt source; add the Debian 12 (bookworm) main source" >&2
  exit 1
}

rm -rf "$dest"
mkdir -p "$dest/debs" "$root"
cd "$dest/debs"
log "downloading qemu-system-x86 and qemu-system-common $ver"
# apt's download sandbox user cannot write into a root-owned cache dir; the files are only unpacked.
apt-get download -q -o APT::Sandbox::User=root "qemu-system-x86=$ver" "qemu-system-common=$ver" >/dev/null
for deb in ./*.deb; do dpkg-deb -x "$deb" "$root"; done

# Libraries the host lacks: fetch the packages the deb itself depends on (first alternative),
# only those not installed, and unpack them into the same tree.
missing=$(ldd "$emu" 2>/dev/null | awk '/not found/ {print $1}' || true)
if [ -n "$missing" ]; then
  log "host lacks: $(echo $missing)"
  deps=$(dpkg-deb -f ./qemu-system-x86_*.deb Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/^ +| +$//g' | grep -E '^lib' || true)
  need=()
  for p in $deps; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p"); done
  if [ "${#need[@]}" -gt 0 ]; then
    log "unpacking library packages: ${need[*]}"
    apt-get download -q -o APT::Sandbox::User=root "${need[@]}" >/dev/null
    for p in "${need[@]}"; do dpkg-deb -x ./"${p}"_*.deb "$root"; done
  fi
  LIBDIR="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
  still=$(LD_LIBRARY_PATH="$LIBDIR" ldd "$emu" | awk '/not found/ {print $1}' || true)
  [ -z "$still" ] || { echo "fetch-qemu72: still missing libraries: $(echo $still)" >&2; exit 1; }
  printf '%s\n' "$LIBDIR" > "$dest/ld-library-path"
fi

"$emu" -version | head -n1 >&2
rm -rf "$dest/debs"
printf '%s\n' "$ver" > "$dest/.complete"
echo "$emu"
