#!/usr/bin/env bash
# The CI matrix of real stacks (docs/testing.md, "Matrix"):
#
#   scripts/matrix/run.sh [CELL…]        cells: A B C (default: all three)
#
#   A  this machine as it is: `npm test` (Debian 12 + bookworm-backports on CI's machines)
#   B  Debian 13: trixie's own QEMU and libvirt, guest kernel from trixie
#   C  Debian 13 + trixie-backports (VIRT_EBPF_BACKPORTS=1), guest kernel from trixie
#
# B and C run in a Debian 13 root (debootstrap --variant=minbase) on this machine's kernel,
# in namespaces of their own (enter.sh), set up by scripts/setup.sh inside the root, and run
# the libvirt suites. The host's libvirtd is stopped while they run (they share tap names and
# cgroups with it) and started again afterwards. Run as root, holding the host lock like every
# run that touches libvirtd. At the end, one "matrix: …" line per cell; a cell that cannot run
# is a failure with its reason. Exit status 1 when any cell failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/lib/debian.sh
. "$repo/scripts/lib/debian.sh"
cache=${VEBPF_MATRIX_CACHE:-/var/cache/virt-ebpf-matrix}
logs=$(mktemp -d /tmp/virt-ebpf-matrix.XXXXXX)
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(A B C)
results=()
total_pass=0
total_fail=0

log() { printf '[matrix] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "matrix: must run as root (it builds roots, stops libvirtd, runs QEMU); re-run with sudo" >&2; exit 1; }

# --- results -----------------------------------------------------------------------------------
# counts LOG: "PASS FAIL" from the last summary of node's test runner in LOG (cancelled = failed).
counts() {
  awk '/^# pass [0-9]+$/ {p=$3} /^# fail [0-9]+$/ {f=$3} /^# cancelled [0-9]+$/ {c=$3} END {if (p == "") print "- -"; else print p, f + c}' "$1"
}
# result CELL LABEL LOG RC SECONDS [REASON]
result() {
  local cell=$1 label=$2 logf=$3 rc=$4 secs=$5 reason=${6:-} v p f status
  v=$(grep -o 'matrix-versions: .*' "$logf" 2>/dev/null | tail -n1 | sed 's/^matrix-versions: //')
  read -r p f < <(counts "$logf")
  if [ -z "$reason" ]; then
    if [ "$p" = - ]; then reason="no test ran (exit $rc; see the output above)"
    elif [ "$rc" != 0 ] || [ "$f" != 0 ]; then reason="$f failed (exit $rc)"
    fi
  fi
  [ "$p" = - ] || total_pass=$((total_pass + p))
  [ "$p" = - ] || total_fail=$((total_fail + f))
  [ -z "$reason" ] || [ "$p" != - ] || total_fail=$((total_fail + 1))
  status=ok
  [ -z "$reason" ] || status="FAILED: $reason"
  results+=("matrix: $cell  $label  ${v:-qemu=? libvirt=? guest=?}  pass ${p/-/0} fail ${f/-/0}  ${secs}s  $status")
  log "cell $cell done: $status"
}

# --- cell A: this machine ------------------------------------------------------------------------
cell_a() {
  local logf=$logs/A.log t0=$SECONDS rc label qemu libvirt guest
  log "cell A: npm test on this machine"
  (cd "$repo" && npm test) 2>&1 | tee "$logf"
  rc=${PIPESTATUS[0]}
  qemu=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
  libvirt=$(libvirtd --version 2>/dev/null | awk '{print $NF}')
  guest=$(sed -n 's/.*"kernelRelease": "\([^"]*\)".*/\1/p' "$repo/.cache/guest/manifest.json" 2>/dev/null)
  echo "matrix-versions: qemu=${qemu:-none} libvirt=${libvirt:-none} guest=${guest:-none}" >> "$logf"
  label="$(. /etc/os-release && echo "${PRETTY_NAME:-this machine}"), as it is"
  result A "$label" "$logf" "$rc" $((SECONDS - t0))
}

# --- the host's libvirtd -------------------------------------------------------------------------
# Not in a subshell: host_libvirtd_was_running must outlive it (stop_failure says why it failed).
host_libvirtd_was_running=0
stop_failure=
stop_host_libvirtd() {
  local pid
  pid=$(pgrep -x libvirtd | head -n1)
  [ -n "$pid" ] || return 0
  host_libvirtd_was_running=1
  trap start_host_libvirtd EXIT
  log "stopping the host's libvirtd (pid $pid) for the Debian 13 cells"
  kill -TERM "$pid"
  # Its shutdown can wait up to ~40 s on its udev thread.
  for _ in $(seq 1 900); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  stop_failure="the host's libvirtd (pid $pid) did not stop within 90 s"
  return 1
}
start_host_libvirtd() {
  [ "$host_libvirtd_was_running" = 1 ] || return 0
  host_libvirtd_was_running=0
  # A cell's libvirtd may still be on its way out (killed with its PID namespace).
  for _ in $(seq 1 100); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  log "starting the host's libvirtd again"
  (close_fds; exec libvirtd -d)
  for _ in $(seq 1 100); do virsh -c qemu:///system version >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "the host's libvirtd does not answer after its restart"
}

# Cgroups the cells' libvirtd made and left (a crash between start and destroy): only empty
# ones made during the cell are removed; the host's are never touched.
cgroups_before=
machine_cgroups() { find /sys/fs/cgroup -mindepth 2 -maxdepth 4 -type d -path '*/machine/*' 2>/dev/null | sort; }
remove_new_cgroups() {
  comm -13 <(printf '%s\n' "$cgroups_before") <(machine_cgroups) | sort -r | while read -r d; do rmdir "$d" 2>/dev/null || true; done
}

# --- cells B and C: a Debian 13 root --------------------------------------------------------------
# The cached root of a cell is reused only while it is what a fresh build would give: same
# scripts (key), and no package of it has a newer version in the archive (checked in the cell).
root_key() {
  cat "$repo/scripts/setup.sh" "$repo/scripts/lib/debian.sh" "$here/run.sh" "$here/enter.sh" "$here/cell.sh" | sha256sum | cut -c1-16
}

in_root() { # ROOT RUNDIR CMD… (VEBPF_BINDS from the caller)
  unshare --mount --pid --fork --propagation private bash "$here/enter.sh" "$@"
}

# copy_checkout DIR: the checkout without .git, caches and build output; with this machine's
# node_modules (npm runs on the host; the root has Node 20 too).
copy_checkout() {
  mkdir -p "$1"
  tar -C "$repo" --exclude=./.git --exclude=./.cache --exclude=./dist -cf - . | tar -C "$1" -xf -
}

# build_root CELL ROOT LOG: debootstrap, this machine's archive, setup.sh inside. 0 or 1.
build_root() {
  local cell=$1 root=$2 logf=$3 uri
  uri=$(debian_uri "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")")
  [ -n "$uri" ] || { echo "no Debian apt source on this machine to take the archive from" >> "$logf"; return 1; }
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }; } >> "$logf" 2>&1 \
      || { echo "cannot install debootstrap (apt-get install debootstrap failed)" >> "$logf"; return 1; }
  fi
  rm -rf "$root.new"
  log "cell $cell: debootstrap --variant=minbase trixie (archive of this machine's apt source)"
  debootstrap --variant=minbase --include=ca-certificates trixie "$root.new" "$uri" >> "$logf" 2>&1 \
    || { echo "debootstrap trixie failed" >> "$logf"; return 1; }
  # A root has no init: package scripts must not start daemons (setup.sh starts them).
  printf '#!/bin/sh\nexit 101\n' > "$root.new/usr/sbin/policy-rc.d"
  chmod 755 "$root.new/usr/sbin/policy-rc.d"
  copy_checkout "$root.new/vebpf"
  log "cell $cell: scripts/setup.sh inside the root${VIRT_EBPF_BACKPORTS:+ (VIRT_EBPF_BACKPORTS=$VIRT_EBPF_BACKPORTS)}"
  if ! VEBPF_BINDS= in_root "$root.new" "" /vebpf/scripts/matrix/cell.sh setup >> "$logf" 2>&1; then
    echo "scripts/setup.sh failed inside the Debian 13 root" >> "$logf"
    return 1
  fi
  rm -rf "$root.new/vebpf"
  # libvirt cannot give QEMU a mount namespace of its own inside a chroot.
  echo 'namespaces = [ ]' >> "$root.new/etc/libvirt/qemu.conf"
  rm -rf "$root" && mv "$root.new" "$root" && root_key > "$root.key"
}

# cell_root CELL LABEL: build (or reuse) the cell's root, run the suites in an overlay on it.
cell_root() {
  local cell=$1 label=$2 logf=$logs/$1.log t0=$SECONDS root=$cache/$1 run=$cache/run-$1 rc reason=
  : > "$logf"
  mkdir -p "$cache" "$cache/guest-trixie" && chmod 700 "$cache"
  if [ -d "$root" ] && [ "$(cat "$root.key" 2>/dev/null)" = "$(root_key)" ]; then
    log "cell $cell: checking the cached root against the archive"
    rm -rf "$run"
    if VEBPF_BINDS= in_root "$root" "$run" sh -c 'apt-get update -qq && apt-get -s -qq dist-upgrade | grep "^Inst "' >> "$logf" 2>&1; then
      log "cell $cell: the archive has newer packages: building the root again"
      rm -rf "$root" "$root.key"
    fi
    rm -rf "$run"
  else
    rm -rf "$root" "$root.key"
  fi
  # npm runs on this machine; the root gets a copy of node_modules.
  [ -d "$repo/node_modules" ] || (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error) >> "$logf" 2>&1
  if [ ! -d "$root" ] && ! build_root "$cell" "$root" "$logf"; then
    tail -n 30 "$logf"
    result "$cell" "$label" "$logf" 1 $((SECONDS - t0)) "$(tail -n1 "$logf")"
    return
  fi
  log "cell $cell: the libvirt suites in the root"
  rm -rf "$run"
  mkdir -p "$run"
  copy_checkout "$run/vebpf"
  cgroups_before=$(machine_cgroups)
  VEBPF_BINDS="$run/vebpf:/vebpf $cache/guest-trixie:/vebpf/.cache/guest" in_root "$root" "$run/ov" /vebpf/scripts/matrix/cell.sh test 2>&1 | tee -a "$logf"
  rc=${PIPESTATUS[0]}
  remove_new_cgroups
  rm -rf "$run"
  result "$cell" "$label" "$logf" "$rc" $((SECONDS - t0)) "$reason"
}

# --- run -----------------------------------------------------------------------------------------
stopped=0
for cell in "${cells[@]}"; do
  case "$cell" in
    A) cell_a ;;
    B | C)
      if [ "$stopped" = 0 ]; then
        if ! stop_host_libvirtd; then
          result "$cell" "Debian 13" /dev/null 1 0 "$stop_failure"
          continue
        fi
        stopped=1
      fi
      if [ "$cell" = B ]; then
        VIRT_EBPF_BACKPORTS= cell_root B "Debian 13, trixie"
      else
        VIRT_EBPF_BACKPORTS=1 cell_root C "Debian 13, trixie-backports"
      fi
      ;;
    *) echo "matrix: unknown cell $cell (cells: A B C)" >&2; exit 2 ;;
  esac
done
start_host_libvirtd
trap - EXIT

echo
echo "== matrix =="
printf '%s\n' "${results[@]}"
rm -rf "$logs"
echo "matrix: $total_pass passed, $total_fail failed"
for r in "${results[@]}"; do [[ "$r" == *"  ok" ]] || exit 1; done
exit 0
