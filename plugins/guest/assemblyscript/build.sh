#!/usr/bin/env bash
# Build the AssemblyScript SDK sample into ../../tests/data/add_header_as.wasm.
# Versions are pinned in package.json / package-lock.json; the output is reproducible for those versions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
npm ci --no-audit --no-fund --silent
npx asc assembly/index.ts -b ../../tests/data/add_header_as.wasm --use abort=abort_proc_exit --optimize
sha256sum ../../tests/data/add_header_as.wasm
