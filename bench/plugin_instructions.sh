#!/usr/bin/env bash
# Instructions per request through the plugin host, counted by callgrind on plugins/benches/drive.rs: a number
# that does not depend on what else the machine runs (criterion's wall clock does).
#
#   bench/plugin_instructions.sh [SCENARIO...]     # default: chain chain_native filter filter_native noop
#
# Scenarios are described in plugins/benches/drive.rs; *_native is the caller's own part, to subtract.
# Needs valgrind and a C compiler. valgrind does not map the vDSO that rustix finds through PR_GET_AUXV (rustix
# issue #1559: the epoch-deadline callback's clock read crashes under valgrind), so the driver runs under
# bench/noauxv.c, which makes that prctl fail and rustix fall back to /proc/self/auxv, which valgrind answers.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${N:-5000}"
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(chain chain_native filter filter_native noop)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/noauxv" "$root/bench/noauxv.c"
bin="$(cd "$root" && CARGO_PROFILE_BENCH_LTO=false cargo bench -p portico-plugins --bench drive --no-run \
  --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
for s in "${scenarios[@]}"; do
  "$tmp/noauxv" valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" \
    --toggle-collect='*measured_requests*' "$bin" "$s" "$n" >"$tmp/log" 2>&1
  ir="$(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/cg.out")"
  echo "$s: $((ir / n)) instructions per request ($ir over $n requests)"
done
