#!/usr/bin/env bash
# Build Portico's bundled plugins (builtin:router, builtin:balancer) and the C example plugin(s) with a pinned
# Zig toolchain (clang + lld + wasi-libc inside). Output is byte-for-byte reproducible for a given ziglang
# version; check.sh rebuilds into a temp dir and compares with the checked-in files.
#
#   plugins/builtin/build.sh            # writes plugins/builtin/out/*.wasm and examples/plugins/out/*.wasm
#   plugins/builtin/build.sh OUTDIR     # writes everything flat into OUTDIR (used by check.sh)
set -euo pipefail
ZIG_VERSION=0.17.1
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if ! python3 -c "import ziglang" 2>/dev/null || [ "$(python3 -m pip show ziglang 2>/dev/null | awk '/^Version:/{print $2}')" != "$ZIG_VERSION" ]; then
  python3 -m pip install --quiet "ziglang==$ZIG_VERSION"
fi
builtin_out="${1:-$here/out}"
example_out="${1:-$root/examples/plugins/out}"
mkdir -p "$builtin_out" "$example_out"

# Same flags as plugins/guest/build.sh; paths are made relative so the output does not depend on the checkout.
cc() {
  local out="$1"; shift
  (cd "$root" && python3 -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2 -s \
    -Wall -Wextra -Werror -fno-ident -ffile-prefix-map="$root"=. -Iplugins/guest -Iplugins/builtin \
    -o "$out" "$@")
  echo "built $out ($(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1))"
}

cc "$builtin_out/router.wasm" plugins/builtin/router.c plugins/builtin/common.c
cc "$builtin_out/balancer.wasm" plugins/builtin/balancer.c plugins/builtin/common.c
cc "$example_out/latency_balancer.wasm" examples/plugins/latency_balancer.c

# The Zig version of the example (freestanding: it needs nothing from WASI).
zig_cache="$(mktemp -d)"
trap 'rm -rf "$zig_cache"' EXIT
(cd "$root/examples/plugins" && python3 -m ziglang build-exe -target wasm32-freestanding -fno-entry -rdynamic \
  -O ReleaseSmall --cache-dir "$zig_cache" -femit-bin="$example_out/latency_balancer_zig.wasm" latency_balancer.zig)
out="$example_out/latency_balancer_zig.wasm"
echo "built $out ($(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1))"
