#!/usr/bin/env bash
# Build the start-path shims (shims/*.c) into dist/shims: the emulator wrapper and hook
# executables, and the hot-plug shim QEMU preloads. Needs cc and the libc/kernel headers
# (Debian: gcc, libc6-dev; scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/dist/shims"
mkdir -p "$out"
cflags=(-O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong)
cc "${cflags[@]}" -o "$out/vebpf-wrapper" "$here/shims/wrapper.c" "$here/shims/brokercall.c"
cc "${cflags[@]}" -o "$out/vebpf-hook" "$here/shims/hook.c" "$here/shims/brokercall.c"
cc "${cflags[@]}" -shared -fPIC -fvisibility=hidden -o "$out/vebpf-qmp.so" "$here/shims/qmp-preload.c" "$here/shims/brokercall.c" -ldl
