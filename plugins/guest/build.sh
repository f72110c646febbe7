#!/usr/bin/env bash
# Build the sample C plugins into ../tests/data/ with a pinned Zig toolchain (clang + lld + wasi-libc inside).
# Output is byte-for-byte reproducible for a given ziglang version; CI can rebuild and compare with git diff.
set -euo pipefail
ZIG_VERSION=0.17.1
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../tests/data}"   # plugins/builtin/check.sh passes a temp dir
mkdir -p "$out"
if ! python3 -c "import ziglang" 2>/dev/null || [ "$(python3 -m pip show ziglang 2>/dev/null | awk '/^Version:/{print $2}')" != "$ZIG_VERSION" ]; then
  python3 -m pip install --quiet "ziglang==$ZIG_VERSION"
fi
cd "$here"
# cpp_sdk_protocol exports its allocator as `malloc` only, as C++ SDK builds do.
for src in add_header.c cpp_sdk_protocol.c; do
  name="${src%.c}"
  extra=()
  [ "$name" = cpp_sdk_protocol ] && extra=(-Wl,--export=malloc)
  python3 -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2 -s \
    -fno-ident -ffile-prefix-map="$here"=. "${extra[@]}" \
    -o "$out/$name.wasm" "$src"
  echo "built $out/$name.wasm ($(wc -c < "$out/$name.wasm") bytes, sha256 $(sha256sum "$out/$name.wasm" | cut -d' ' -f1))"
done
