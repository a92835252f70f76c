#!/usr/bin/env bash
# Build the C parts: the start-path shims (shims/*.c) into dist/shims (the emulator wrapper and
# hook executables, and the hot-plug shim QEMU preloads), and the broker's niced libbpf load
# (src/bpf/niced-load.c) beside the module that calls it. Needs cc and the libc/kernel headers
# (Debian: gcc, libc6-dev; scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/dist/shims"
mkdir -p "$out"
obj=$(mktemp -d)
trap 'rm -rf "$obj"' EXIT
# What the shims share with TypeScript (paths, op names, limits): generated from
# src/shims/constants.ts, compiled by tsc just before.
node "$here/dist/src/shims/header.js" > "$obj/vebpf-constants.h"
cflags=(-O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -I"$obj")
# The wrapper and the hook are linked statically: libvirt runs each of them (the hook at every
# step of every domain) inside `virsh start`, and a static binary skips the dynamic loader
# (~0.15 ms an exec here). They use no NSS function, so glibc's static library is complete.
cc "${cflags[@]}" -static -o "$out/vebpf-wrapper" "$here/shims/wrapper.c" "$here/shims/parse.c" "$here/shims/brokercall.c" "$here/shims/json.c"
cc "${cflags[@]}" -static -o "$out/vebpf-hook" "$here/shims/hook.c" "$here/shims/parse.c" "$here/shims/brokercall.c" "$here/shims/json.c"
# Inside QEMU, brokercall.c's own recvmsg/close must be libc's, not the shim's wrappers of them.
cc "${cflags[@]}" -c -fPIC -fvisibility=hidden -o "$obj/brokercall.o" "$here/shims/brokercall.c" \
  '-Drecvmsg(f,m,o)=vebpf_next_recvmsg(f,m,o)' '-Dclose(f)=vebpf_next_close(f)'
cc "${cflags[@]}" -shared -fPIC -fvisibility=hidden -o "$out/vebpf-qmp.so" "$here/shims/qmp-preload.c" "$here/shims/splice.c" "$here/shims/parse.c" "$obj/brokercall.o" "$here/shims/json.c" -ldl
# The broker calls it through koffi (src/bpf/libbpf.ts); it finds the libbpf the broker loaded.
cc "${cflags[@]}" -shared -fPIC -fvisibility=hidden -o "$here/dist/src/bpf/vebpf-niced-load.so" "$here/src/bpf/niced-load.c" -ldl
