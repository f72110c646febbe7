#!/usr/bin/env bash
# CPU time a server spends per request: utime+stime of every thread of the given processes, read from /proc
# around one wrk run, divided by the requests wrk completed. Independent of how busy the rest of the machine is,
# so it compares proxies more fairly than requests/s on a small shared machine.
#   bench/cpu_per_request.sh http://127.0.0.1:18081/ PID [PID...]
set -euo pipefail
url=$1; shift
ticks() { local s=0; for p in "$@"; do for t in /proc/$p/task/*/stat; do read -r -a f < "$t"; s=$((s + f[13] + f[14])); done; done; echo $s; }
hz=$(getconf CLK_TCK)
before=$(ticks "$@"); out=$(wrk -t2 -c64 -d8s "$url"); after=$(ticks "$@")
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}'); reqs=$(echo "$out" | awk '/requests in/{print $1}')
python3 -c "print(f'req/s {float($rps):.0f}  CPU µs per request {($after-$before)*1e6/$hz/$reqs:.2f}')"
