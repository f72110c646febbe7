#!/usr/bin/env bash
# CI check: rebuild every bundled/example .wasm into a temp dir and fail (exit 1, naming the file) when its bytes
# differ from the checked-in one. Fix by running plugins/builtin/build.sh and committing the outputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp" >/dev/null
# The C test plugin the host and proxy tests load is built from source too.
"$root/plugins/guest/build.sh" "$tmp" >/dev/null
status=0
for f in "$here/out/router.wasm" "$here/out/balancer.wasm" "$root/examples/plugins/out/latency_balancer.wasm" \
  "$root/examples/plugins/out/latency_balancer_zig.wasm" "$root/plugins/tests/data/add_header.wasm" \
  "$root/plugins/tests/data/cpp_sdk_protocol.wasm"; do
  rebuilt="$tmp/$(basename "$f")"
  if [ ! -f "$f" ]; then
    echo "MISSING: ${f#$root/} is not checked in (run plugins/builtin/build.sh)" >&2
    status=1
  elif ! cmp -s "$f" "$rebuilt"; then
    echo "DIFFERS: ${f#$root/} does not match a rebuild from source (run plugins/builtin/build.sh or plugins/guest/build.sh and commit)" >&2
    status=1
  else
    echo "ok: ${f#$root/}"
  fi
done
exit $status
