#!/usr/bin/env bash
# Set up (idempotent) and run the benchmarks (foundation, then the libvirt cold start); tables go
# to stdout. BENCH_N=k multiplies the sample counts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh" >&2
cd "$here"
node dist/bench/index.js "$@"
# The libvirt cold start (root: system libvirtd, install, broker); BENCH_COLDSTART=a,b,c picks sections.
node dist/bench/coldstart.js
# Hot-plug: what the hot-plug shim adds per command and per device_add, and its memory per domain.
node dist/bench/hotplug.js
# The soak: 1 000 start/destroy cycles (BENCH_SOAK_CYCLES), what the broker holds along the way.
node dist/bench/soak.js
