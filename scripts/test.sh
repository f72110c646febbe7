#!/usr/bin/env bash
# Portico's test command: installs what the tests need (scripts/setup.sh), checks formatting, then runs every
# test in the workspace — unit tests and the integration tests that start real servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo test --workspace --locked "$@"
