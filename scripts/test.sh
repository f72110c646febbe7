#!/usr/bin/env bash
# Portico's test command: installs what the tests need (scripts/setup.sh), checks formatting and clippy, then runs every
# test in the workspace — unit tests and the integration tests that start real servers on 127.0.0.1 — after
# checking that the checked-in wasm plugins rebuild byte-for-byte from their sources.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The bundled wasm plugins must be exactly what their sources build to (reproducible, pinned zig).
plugins/builtin/check.sh
cargo test --workspace --locked "$@"
