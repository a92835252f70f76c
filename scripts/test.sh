#!/usr/bin/env bash
# Set up the machine (idempotent) and run the whole test suite with Node's test runner.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
if [ "$(id -u)" != 0 ]; then
  echo "tests: must run as root (they load BPF, start QEMU as another user, create taps); re-run with sudo" >&2
  exit 1
fi
# One file at a time: the suites start real QEMU processes on a 2-core machine.
exec node --test --test-concurrency=1 --test-timeout=900000 $(find dist/test -name '*.test.js' | sort) "$@"
