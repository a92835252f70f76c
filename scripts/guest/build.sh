#!/usr/bin/env bash
# Build the guest fixture: a Debian kernel plus a tiny initramfs (busybox, ethtool, the
# virtio-net modules and scripts/guest/init). Protocol and usage: scripts/guest/README.md.
#
#   scripts/guest/build.sh [OUTDIR]      (default OUTDIR: <repo>/.cache/guest)
#
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/manifest.json. Idempotent: when the
# candidate package versions, this script and the init script are unchanged, it does nothing.
# Downloads stay in <repo>/.cache/guest/debs (apt-get download); nothing is installed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VEBPF_GUEST_CACHE:-$repo/.cache/guest}
out=${1:-$cache}
debs=$cache/debs
work=$cache/work
init_src=$here/init
# Load order matters: busybox insmod does not resolve dependencies.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)

log() { printf '[guest-build] %s\n' "$*" >&2; }
die() { printf 'guest-build: %s\n' "$*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip flock sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'; run scripts/setup.sh (it installs cpio and friends)"
done

mkdir -p "$cache" "$debs" "$out"
out=$(cd "$out" && pwd)
# Two test processes may build at once; the second waits and then finds the cache fresh.
exec 9>"$cache/.lock"
flock -w 600 9 || die "another build holds $cache/.lock for over 10 minutes"

# --- 1. which packages (candidate versions from apt's lists) --------------------------------
lists_refreshed=0
refresh_lists() {
  [ "$lists_refreshed" = 0 ] || return 1
  [ "$(id -u)" = 0 ] || die "apt has no usable package lists and only root can run apt-get update; run scripts/setup.sh as root"
  log "apt-get update (package lists missing or stale)"
  apt-get update -qq >&2 || die "apt-get update failed"
  lists_refreshed=1
}
# One apt-cache call per question: each call loads the whole package cache (~1 s).
resolve_set() {
  local deps
  deps=$(apt-cache depends linux-image-amd64 ethtool 2>/dev/null) || return 1
  kernel_pkg=${VEBPF_GUEST_KERNEL_PKG:-$(awk '/^linux-image-amd64$/ {s=1; next} /^[^ ]/ {s=0} s && $1=="Depends:" && $2 ~ /^linux-image-/ {print $2; exit}' <<< "$deps")}
  ethtool_deps=$(awk '/^ethtool$/ {s=1; next} /^[^ ]/ {s=0} s && $1=="Depends:" && $2 !~ /^</ {print $2}' <<< "$deps" | sort -u)
  [ -n "$kernel_pkg" ] || return 1
  pkgs=("$kernel_pkg" busybox-static ethtool $ethtool_deps)
  version=()
  local p v
  while read -r p v; do version[$p]=$v; done < <(apt-cache show --no-all-versions "${pkgs[@]}" 2>/dev/null | awk '/^Package:/ {p=$2} /^Version:/ {print p, $2}')
  for p in "${pkgs[@]}"; do [ -n "${version[$p]:-}" ] || return 1; done
}
declare -A version
pkgs=()
if ! resolve_set; then
  refresh_lists
  resolve_set || die "apt cannot resolve the fixture's packages (${pkgs[*]:-linux-image-amd64 ethtool}); check the apt sources"
fi

key=$( { for p in "${pkgs[@]}"; do echo "$p=${version[$p]}"; done | sort; sha256sum "$0" "$init_src" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
if [ -f "$out/manifest.json" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] \
   && grep -q "\"key\": \"$key\"" "$out/manifest.json"; then
  log "up to date ($out, key $key)"
  exit 0
fi

avail_kb=$(df -Pk "$cache" | awk 'NR==2 {print $4}')
[ "$avail_kb" -gt 300000 ] || die "less than 300 MB free under $cache (the kernel package alone is ~70 MB)"

# --- 2. download (apt-get download skips files already present with the right hash) ----------
apt_opts=(-q)
# As root apt drops to its sandbox user, which cannot write into our cache directory.
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)
deb_of() { # package version -> path of its .deb in $debs, or nothing
  local f
  for f in "$debs/$1"_*.deb; do
    [ -f "$f" ] || continue
    [ "$(dpkg-deb -f "$f" Package)" = "$1" ] && [ "$(dpkg-deb -f "$f" Version)" = "$2" ] && { echo "$f"; return; }
  done
}
declare -A debfile
for p in "${pkgs[@]}"; do
  v=${version[$p]}
  f=$(deb_of "$p" "$v")
  if [ -z "$f" ]; then
    log "downloading $p $v"
    if ! (cd "$debs" && apt-get download "${apt_opts[@]}" "$p=$v" >&2); then
      refresh_lists || die "apt-get download $p=$v failed"
      (cd "$debs" && apt-get download "${apt_opts[@]}" "$p=$v" >&2) || die "apt-get download $p=$v failed"
    fi
    f=$(deb_of "$p" "$v")
    [ -n "$f" ] || die "apt-get download $p=$v left no matching .deb in $debs"
  fi
  debfile[$p]=$f
  # Old versions of the same package are dead weight (the kernel is ~70 MB).
  for old in "$debs/$p"_*.deb; do
    [ "$old" = "$f" ] || [ ! -f "$old" ] || [ "$(dpkg-deb -f "$old" Package)" != "$p" ] || rm -f "$old"
  done
done

# --- 3. unpack --------------------------------------------------------------------------------
rm -rf "$work"
mkdir -p "$work/pkgs" "$work/root"
# The kernel package unpacks to ~400 MB; take only the image and the modules we load.
kx=$work/pkgs/kernel
mkdir -p "$kx"
# Debian 12's kernels ship modules under /lib/modules, Debian 13's (merged /usr) under
# /usr/lib/modules; a module built into the kernel has no file (Debian 13 builds in virtio_pci).
listing=$(dpkg-deb --fsys-tarfile "${debfile[$kernel_pkg]}" | tar -t)
mods=$(grep -o -m1 '^\./\(usr/\)\?lib/modules/[^/]*/modules\.builtin$' <<< "$listing" || true)
[ -n "$mods" ] || die "$kernel_pkg has no lib/modules/*/modules.builtin (neither under / nor /usr)"
mods=${mods#./}
mods=${mods%/*/modules.builtin}
members=($(grep -E "^\./boot/vmlinuz-|^\./$mods/[^/]+/(modules\.builtin|.*/($(IFS='|'; echo "${modules[*]}"))\.ko(\.xz|\.zst|\.gz)?)$" <<< "$listing"))
dpkg-deb --fsys-tarfile "${debfile[$kernel_pkg]}" | tar -x -C "$kx" "${members[@]}"
kver=$(ls "$kx/$mods")
[ -n "$kver" ] && [ -f "$kx/boot/vmlinuz-$kver" ] || die "$kernel_pkg has no /boot/vmlinuz matching its modules"
kmods=$kx/$mods/$kver
for p in "${pkgs[@]}"; do
  [ "$p" = "$kernel_pkg" ] && continue
  dpkg-deb -x "${debfile[$p]}" "$work/pkgs/$p"
done

# --- 4. initramfs tree ------------------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,proc,sys,dev,tmp,run,etc,root}
bb=
for d in bin usr/bin; do [ -x "$work/pkgs/busybox-static/$d/busybox" ] && { bb=$work/pkgs/busybox-static/$d/busybox; break; }; done
[ -n "$bb" ] || die "busybox-static has no busybox in /bin or /usr/bin"
cp "$bb" "$root/bin/busybox"
# Symlinks at build time save the guest a `busybox --install` on every boot.
"$bb" --list-full | while read -r applet; do
  [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
[ -L "$root/bin/sh" ] || die "busybox has no sh applet"

eth=
for d in sbin usr/sbin bin usr/bin; do [ -f "$work/pkgs/ethtool/$d/ethtool" ] && { eth=$work/pkgs/ethtool/$d/ethtool; break; }; done
[ -n "$eth" ] || die "ethtool package has no ethtool binary in sbin or bin"
cp "$eth" "$root/sbin/ethtool"

# Resolve ethtool's libraries with the unpacked loader and only the unpacked libraries, so
# the guest gets exactly the packaged versions and never the host's.
ld=$(find "$work/pkgs" -name 'ld-linux-x86-64.so.2' \( -type f -o -type l \) | head -n1)
[ -n "$ld" ] || die "no ld-linux-x86-64.so.2 among ethtool's dependencies (${ethtool_deps//$'\n'/ })"
libpath=$(find "$work/pkgs" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' | sort -u | paste -sd:)
listing=$("$ld" --inhibit-cache --library-path "$libpath" --list "$eth") || die "the unpacked loader cannot resolve ethtool's libraries"
while read -r soname arrow path _; do
  if [ "${soname#/}" != "$soname" ]; then
    # The interpreter path recorded in ethtool; the loader lists it as "/lib64/ld… => …".
    mkdir -p "$root/$(dirname "$soname")"
    cp -L "$ld" "$root/$soname"
  elif [ "$arrow" = "=>" ]; then
    case "$path" in
      "$work/pkgs/"*) cp -L "$path" "$root/lib/x86_64-linux-gnu/$soname" ;;
      *) die "ethtool needs $soname, which none of its package dependencies provides (resolved to '$path')" ;;
    esac
  fi
done <<< "$listing"

moddir=$root/lib/modules/$kver
mkdir -p "$moddir"
builtin=()
loaded=()
: > "$moddir/load-order"
for m in "${modules[@]}"; do
  if grep -Eq "/$m\.ko$" "$kmods/modules.builtin"; then builtin+=("$m"); continue; fi
  src=$(find "$kmods" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)
  [ -n "$src" ] || die "module $m is neither built into $kver nor shipped as a module"
  # busybox insmod reads plain ELF only.
  case "$src" in
    *.xz) xz -dc "$src" > "$moddir/$m.ko" ;;
    *.zst) zstd -qdc "$src" > "$moddir/$m.ko" ;;
    *.gz) gzip -dc "$src" > "$moddir/$m.ko" ;;
    *) cp "$src" "$moddir/$m.ko" ;;
  esac
  if command -v modinfo >/dev/null; then
    for dep in $(modinfo -F depends "$moddir/$m.ko" | tr ',' ' '); do
      case " ${loaded[*]} ${builtin[*]} " in
        *" $dep "*) ;;
        *) die "module $m needs $dep, which is neither loaded before it nor built in" ;;
      esac
    done
  fi
  loaded+=("$m")
  echo "$m.ko" >> "$moddir/load-order"
done

cp "$init_src" "$root/init"
chmod 755 "$root/init"
printf 'kernel=%s key=%s\n' "$kver" "$key" > "$root/etc/vebpf-fixture"
# The kernel gives init /dev/console as stdio only if the node is in the archive; without
# root we cannot create it and init reopens the console after mounting devtmpfs instead.
[ "$(id -u)" = 0 ] && mknod -m 600 "$root/dev/console" c 5 1

# --- 5. archive -------------------------------------------------------------------------------
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) \
  | gzip -n -9 > "$out/initrd.img.tmp"
cp "$kx/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"

json_list() { local first=1 x; printf '['; for x in "$@"; do [ $first = 1 ] || printf ', '; printf '"%s"' "$x"; first=0; done; printf ']'; }
{
  printf '{\n  "key": "%s",\n  "kernelRelease": "%s",\n  "kernelPackage": "%s",\n' "$key" "$kver" "$kernel_pkg"
  printf '  "packages": {'
  first=1
  for p in "${pkgs[@]}"; do [ $first = 1 ] || printf ','; printf '\n    "%s": "%s"' "$p" "${version[$p]}"; first=0; done
  printf '\n  },\n  "modules": %s,\n  "builtinModules": %s,\n' "$(json_list "${loaded[@]}")" "$(json_list "${builtin[@]}")"
  printf '  "vmlinuzBytes": %s,\n  "initrdBytes": %s\n}\n' "$(stat -c %s "$out/vmlinuz")" "$(stat -c %s "$out/initrd.img")"
} > "$out/manifest.json.tmp"
mv "$out/manifest.json.tmp" "$out/manifest.json"
rm -rf "$work"
log "built $out (kernel $kver, initrd $(stat -c %s "$out/initrd.img") bytes, key $key)"
