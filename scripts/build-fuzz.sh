#!/usr/bin/env bash
# Build the fuzz targets of the shims' parsers (test/fuzz/TARGET.c, one per parser family) with
# clang's libFuzzer, ASan and UBSan into OUTDIR (a temporary or dist directory, never the source
# tree). Needs clang with its libFuzzer runtime: clang-14 and libclang-rt-14-dev on Debian 12,
# clang-19 and libclang-rt-19-dev on Debian 13 (scripts/setup.sh installs them).
#   build-fuzz.sh OUTDIR [TARGET...]   build all targets, or the ones named
#   build-fuzz.sh --list               the targets, one a line
# A new target: test/fuzz/NAME.c (LLVMFuzzerTestOneInput, see test/fuzz/fuzz.h), a seed corpus
# in test/fuzz/corpus/NAME/, and one line below.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# target        the shims/ sources it links besides test/fuzz/TARGET.c
targets=(
  "json         json.c"
  "script       parse.c json.c"
  "wrapper-argv parse.c json.c"
  "hook-xml     parse.c json.c"
  "splice       splice.c parse.c json.c"
)

if [ "${1:-}" = --list ]; then
  for t in "${targets[@]}"; do echo "${t%% *}"; done
  exit 0
fi
out=${1:?usage: build-fuzz.sh OUTDIR [TARGET...] | --list}
shift
clang=${VIRT_EBPF_CLANG:-$(command -v clang-14 || command -v clang-19 || echo clang-14)}
if ! command -v "$clang" >/dev/null; then
  echo "build-fuzz.sh: $clang not found: the fuzz targets need clang's libFuzzer; run scripts/setup.sh (it installs clang and its libFuzzer runtime)" >&2
  exit 1
fi
# Where the runtime is: clang-14 prints its dir; Debian's clang-19 prints a per-target dir
# (…/lib/x86_64-pc-linux-gnu) but ships the runtime in the older …/lib/linux layout.
rtdir=$("$clang" -print-runtime-dir)
rt=
for f in "$rtdir/libclang_rt.fuzzer-$(uname -m).a" "$rtdir/libclang_rt.fuzzer.a" "$(dirname "$rtdir")/linux/libclang_rt.fuzzer-$(uname -m).a"; do
  [ -e "$f" ] && { rt=$f; break; }
done
if [ -z "$rt" ]; then
  rt="$rtdir/libclang_rt.fuzzer-$(uname -m).a"
  echo "build-fuzz.sh: $clang has no libFuzzer runtime ($rt is missing); run scripts/setup.sh (it installs libclang-rt-N-dev for clang-N)" >&2
  exit 1
fi
mkdir -p "$out/include"
header="$here/dist/src/shims/header.js"
[ -e "$header" ] || { echo "build-fuzz.sh: $header is missing; run npm run build first" >&2; exit 1; }
node "$header" > "$out/include/vebpf-constants.h"
flags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Werror -I"$here/shims" -I"$out/include")
built=0
for t in "${targets[@]}"; do
  read -r name srcs <<<"$t"
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx -- "$name"; then continue; fi
  files=()
  for s in $srcs; do files+=("$here/shims/$s"); done
  "$clang" "${flags[@]}" -o "$out/$name" "$here/test/fuzz/$name.c" "${files[@]}"
  built=$((built + 1))
done
if [ $# -gt 0 ] && [ "$built" != $# ]; then
  echo "build-fuzz.sh: no such target among: $*; see build-fuzz.sh --list" >&2
  exit 1
fi
