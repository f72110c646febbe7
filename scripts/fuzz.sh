#!/bin/sh
# Runs every fuzz target in fuzz/ for a short while, one after the other (not part of CI; see fuzz/README.md).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 120        # 120 s per target
#   scripts/fuzz.sh 30 hostcalls config_parser
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz asks for nightly-only flags; RUSTC_BOOTSTRAP=1
# lets the pinned stable toolchain accept them. No sanitizer: the code is safe Rust (libFuzzer still catches
# panics, and the build keeps debug assertions, so overflows panic), and AddressSanitizer's SIGSEGV handler
# would fight wasmtime's, which turns guest memory faults into traps.
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-config_parser request_head h1_codec h1_server header_map hostcalls}
unset CARGO_TARGET_DIR
export RUSTC_BOOTSTRAP=1
for target in $targets; do
    echo "== $target (${seconds}s)"
    mkdir -p "fuzz/corpus/$target"
    # Seed inputs live in fuzz/seeds/<target>; found crashes land in fuzz/artifacts/<target>.
    cargo fuzz run -s none "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
