#!/usr/bin/env bash
# Set up (idempotent) and run the benchmarks; tables go to stdout. BENCH_N=k multiplies the sample counts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh" >&2
cd "$here"
exec node dist/bench/index.js "$@"
