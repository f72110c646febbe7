#!/usr/bin/env bash
# The anomaly detector's speed, end to end:
#   1. `portico anomaly score` over a generated corpus of 58 files (1.5k-14k rows), one process per file as a
#      user or a benchmark harness runs it: rows per second including process start and model load;
#   2. the live detector's cost per tick with 60 series (bench_inference).
# Usage: bench/anomaly.sh [portico binary]   (default: target/release/portico, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/portico}
[[ -x $bin ]] || cargo build --release -p portico --locked
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" anomaly corpus --out "$work/corpus" --seed 3 --count 58 >/dev/null
rows=0
for f in "$work"/corpus/*.csv; do rows=$((rows + $(wc -l <"$f") - 1)); done
for round in 1 2 3; do
  start=$(date +%s.%N)
  for f in "$work"/corpus/*.csv; do "$bin" anomaly score --input "$f" --output "$work/out.csv" >/dev/null; done
  end=$(date +%s.%N)
  python3 -c "import sys; r, s = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'round {sys.argv[4]}: {r} rows in 58 processes, {s:.2} s, {r / s:,.0f} rows/s')" "$rows" "$start" "$end" "$round"
done
cargo run -q --release -p portico-anomaly --example bench_inference -- 60
