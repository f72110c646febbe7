#!/usr/bin/env bash
# Runs the three-node example cluster on this machine: an upstream on 127.0.0.1:8000 (python3's http.server)
# and nodes 1–3 with their listeners on 127.0.0.1:8080, 127.0.0.2:8080 and 127.0.0.3:8080.
# Usage: examples/cluster/run-local.sh [path/to/portico]   (Ctrl-C stops everything)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
portico=${1:-$here/../../target/release/portico}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$here" >/dev/null 2>&1 &
pids+=($!)
for i in 1 2 3; do
  "$portico" run -c "$here/node$i.toml" 2>"$here/node$i.log" &
  pids+=($!)
done
sleep 3
curl -s http://127.0.0.1:9901/cluster; echo
echo "try: curl -i http://127.0.0.2:8080/   |   kill one node and watch: curl -s http://127.0.0.1:9902/cluster"
wait
