#!/bin/sh
# Regenerate the bundled model: generate scenarios, train on fault-free ones, evaluate on
# held-back ones (different seeds), and write models/portico-lstm.{safetensors,json}.
# Deterministic: the same sources produce the same weights. About 1-2 minutes on 2 cores
# (after the crate is built). Update models/portico-lstm.md from the printed metrics.
set -eu
cd "$(dirname "$0")/../.."
out=${1:-/tmp/portico-scenarios}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-anomaly} nice -n 10 \
    cargo run -q -p portico-anomaly --example gen_scenarios -- all --epochs 12 --out "$out" \
    --model models/portico-lstm.safetensors
chmod 644 models/portico-lstm.safetensors models/portico-lstm.json
echo "metrics: $out/metrics.json"
