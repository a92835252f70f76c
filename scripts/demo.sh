#!/usr/bin/env bash
# The README's first command: set up this machine (idempotent) and run the built-in example.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh" >&2
cd "$here"
exec node dist/examples/demo.js "$@"
