#!/usr/bin/env bash
# End-to-end benchmark: Portico (native balancing, and with the bundled router and balancer plugins), nginx,
# HAProxy and Pingora in front of the same origin on loopback, driven by wrk in one run, alternating rounds so
# drift on the machine hits all of them alike. For each proxy it reports the medians over the rounds of
# requests/s, p99 and CPU microseconds per request (utime+stime of all the proxy's threads, read from
# /proc/PID/task/*/stat around each wrk run, divided by the requests wrk completed) with its user part alone,
# and Portico's ratios to nginx and HAProxy: of the medians, and taken within each round (median and range over
# the rounds; the range is how far apart one run's figures can land on this machine). The user part is the
# proxy's own code: the kernel's part (about 80 % here, the same system calls for every proxy) carries most of
# the noise, so what plugins add shows in it most plainly.
#
#   bench/run.sh                 # 5 rounds of 10 s, 32 connections, wrk -t1
#   ROUNDS=7 DURATION=20s CONNECTIONS=64 THREADS=2 bench/run.sh
#   PORTICO_BIN=/path/to/portico bench/run.sh   # an already built binary (e.g. one with line tables for perf)
#   ORIGIN_WORKERS=2 bench/run.sh                # the origin with two workers, as before 2026-12-04 (see below)
#
# The origin is an nginx answering a fixed 13-byte body, so the proxies are what is measured. Every proxy gets
# the same worker count (WORKERS, default: the number of cores) and keeps upstream connections alive.
#
# The origin runs ONE worker (ORIGIN_WORKERS=1) because with two, a proxy's p99 was decided by how its pooled
# upstream connections happened to split over the origin's workers when they were opened, not by the proxy:
# the same Portico binary, restarted six times (wrk -t1 -c32, 2 cores), had a p99 of 0.8-1.0 ms when its 32
# connections split 16/16, 14/18 or 32/0, and 4.6-9.8 ms when they split 19/13 or 21/11; nginx as the proxy
# went from 0.7-0.9 ms (17/15) to 2.2-2.8 ms (12/20). The split is drawn once when a proxy fills its pool, so
# every round of a run inherited it. One origin worker serves ~100k requests/s here, more than any proxy
# reaches, and makes the draw go away (bench/RESULTS.md, 2026-12-04 third session). The
# Pingora proxy is bench/pingora (built here with `cargo build --release`, its own project, off CI); set
# PINGORA=0 to leave it out.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTICO_SETUP_BENCH=1 scripts/setup.sh

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-$(nproc)}
ORIGIN_WORKERS=${ORIGIN_WORKERS:-1}
ORIGIN=127.0.0.1:18080
PORTICO=127.0.0.1:18081
NGINX=127.0.0.1:18082
HAPROXY=127.0.0.1:18083
PLUGGED=127.0.0.1:18084
PINGORA_ADDR=127.0.0.1:18085
ADMIN=127.0.0.1:18090
ADMIN2=127.0.0.1:18091
OUT=bench/out
mkdir -p "$OUT"
rm -f "$OUT"/*.pid

. bench/portico-bin.sh
have_pingora=0
if [[ "${PINGORA:-1}" == 1 ]]; then
  CARGO_TARGET_DIR=bench/pingora/target cargo build --release --manifest-path bench/pingora/Cargo.toml && have_pingora=1
fi

cleanup() {
  for f in "$OUT"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  [[ -f $OUT/nginx-origin.run.pid ]] && kill "$(cat "$OUT/nginx-origin.run.pid")" 2>/dev/null || true
  [[ -f $OUT/nginx-proxy.run.pid ]] && kill "$(cat "$OUT/nginx-proxy.run.pid")" 2>/dev/null || true
}
trap cleanup EXIT

nginx_conf() { # name, worker count, body of the http block
  cat > "$OUT/$1.conf" <<CONF
worker_processes $2;
pid $PWD/$OUT/$1.run.pid;
error_log $PWD/$OUT/$1.error.log warn;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $PWD/$OUT/tmp-$1;
  proxy_temp_path $PWD/$OUT/tmp-$1;
  fastcgi_temp_path $PWD/$OUT/tmp-$1;
  uwsgi_temp_path $PWD/$OUT/tmp-$1;
  scgi_temp_path $PWD/$OUT/tmp-$1;
  $3
}
CONF
  mkdir -p "$OUT/tmp-$1"
  nginx -c "$PWD/$OUT/$1.conf" -p "$PWD/$OUT"
}

nginx_conf nginx-origin "$ORIGIN_WORKERS" "server { listen $ORIGIN; keepalive_requests 1000000; location / { return 200 'hello, world\n'; } }"
nginx_conf nginx-proxy "$WORKERS" "upstream origin { server $ORIGIN; keepalive 128; }
  server { listen $NGINX; keepalive_requests 1000000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

cat > "$OUT/haproxy.cfg" <<CONF
global
  nbthread $WORKERS
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind $HAPROXY
  default_backend origin
backend origin
  server o1 $ORIGIN
CONF
have_haproxy=0
if command -v haproxy >/dev/null; then
  haproxy -f "$OUT/haproxy.cfg" -D -p "$OUT/haproxy.pid" && have_haproxy=1
fi

cat > "$OUT/portico.toml" <<CONF
[admin]
listen = "$ADMIN"

[[listener]]
name = "web"
listen = "$PORTICO"
upstream = "origin"
max_connections = 10000

[[upstream]]
name = "origin"
endpoints = ["$ORIGIN"]
pool = { max_idle = 256 }
CONF
"$BIN" --log-level warn run --workers "$WORKERS" -c "$OUT/portico.toml" >"$OUT/portico.log" 2>&1 &
echo $! > "$OUT/portico.pid"

# The same Portico with the bundled router and balancer plugins in the path (one route, round robin).
cat > "$OUT/portico-plugins.toml" <<CONF
[admin]
listen = "$ADMIN2"

[[listener]]
name = "web"
listen = "$PLUGGED"
upstream = "origin"
max_connections = 10000
filters = ["router", "lb"]

[[upstream]]
name = "origin"
endpoints = ["$ORIGIN"]
pool = { max_idle = 256 }
CONF
cat bench/bundled-plugins.toml >> "$OUT/portico-plugins.toml"
"$BIN" --log-level warn run --workers "$WORKERS" -c "$OUT/portico-plugins.toml" >"$OUT/portico-plugins.log" 2>&1 &
echo $! > "$OUT/portico-plugins.pid"

if ((have_pingora)); then
  bench/pingora/target/release/pingora-bench-proxy "$PINGORA_ADDR" "$ORIGIN" "$WORKERS" >"$OUT/pingora.log" 2>&1 &
  echo $! > "$OUT/pingora.pid"
fi

for addr in $ORIGIN $PORTICO $PLUGGED $NGINX $( ((have_pingora)) && echo "$PINGORA_ADDR"); do
  for _ in $(seq 100); do curl -fs "http://$addr/" >/dev/null && break; sleep 0.1; done
  curl -fs "http://$addr/" >/dev/null || { echo "nothing answers on $addr"; exit 1; }
done

# The processes whose threads a proxy's CPU time is summed over.
pids_of() {
  case $1 in
    portico) cat "$OUT/portico.pid" ;;
    plugins) cat "$OUT/portico-plugins.pid" ;;
    nginx) local m; m=$(cat "$OUT/nginx-proxy.run.pid"); echo "$m" $(pgrep -P "$m") ;;
    haproxy) cat "$OUT/haproxy.pid" ;;
    pingora) cat "$OUT/pingora.pid" ;;
  esac
}
# utime and stime in clock ticks of every thread of the given processes (the fields after the last ')': thread
# names may contain spaces). User time alone is what a proxy's own code costs (the kernel's share, the same
# system calls for every proxy here, is most of the total and most of its noise).
cpu_ticks() {
  python3 - "$@" <<'PY'
import glob, sys
user = system = 0
for pid in sys.argv[1:]:
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
print(user, system)
PY
}

# One wrk run against a proxy: "req/s p99(ms) cpu(µs/request) user-cpu(µs/request) status".
measure() { # name addr
  local pids before after
  read -ra pids <<<"$(pids_of "$1")"
  before=$(cpu_ticks "${pids[@]}")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://$2/" > "$OUT/$1.wrk" 2>&1
  after=$(cpu_ticks "${pids[@]}")
  python3 - "$OUT/$1.wrk" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
(ub, sb), (ua, sa), hz = map(int, sys.argv[2].split()), map(int, sys.argv[3].split()), int(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
cpu = (ua + sa - ub - sb) * 1e6 / hz / max(requests, 1)
user = (ua - ub) * 1e6 / hz / max(requests, 1)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
print(f"{rps:.0f} {p99:.3f} {cpu:.2f} {user:.2f} {'errors:' + errors.group(0).replace(' ', '_') if errors else 'ok'}")
PY
}

targets=("portico:$PORTICO" "plugins:$PLUGGED" "nginx:$NGINX")
((have_haproxy)) && targets+=("haproxy:$HAPROXY")
((have_pingora)) && targets+=("pingora:$PINGORA_ADDR")
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
# A short unmeasured run against each first: every proxy opens its upstream connections and touches its memory
# before round 1, so the first proxy measured after start-up is not the only one paying for that.
for t in "${targets[@]}"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://${t#*:}/" >/dev/null 2>&1; done
rounds="$OUT/rounds.txt"
: > "$rounds"
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    name=${t%%:*}; addr=${t#*:}
    read -r rps p99 cpu user status < <(measure "$name" "$addr")
    echo "round $round  $name  ${rps} req/s  p99 ${p99} ms  CPU ${cpu} µs/request (user ${user})  $status"
    echo "$round $name $rps $p99 $cpu $user" >> "$rounds"
  done
done

echo
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $WORKERS workers per proxy, $ORIGIN_WORKERS per origin; medians"
python3 - "$rounds" <<'PY'
import statistics, sys
rows, by_round = {}, {}
for line in open(sys.argv[1]):
    round_, name, *values = line.split()
    rows.setdefault(name, []).append(tuple(map(float, values)))
    by_round.setdefault(round_, {})[name] = tuple(map(float, values))
med = {n: tuple(statistics.median(v[i] for v in rs) for i in range(4)) for n, rs in rows.items()}
print(f"{'proxy':<8} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11} {'user µs/req':>12}")
for n, (rps, p99, cpu, user) in med.items():
    print(f"{n:<8} {rps:>9.0f} {p99:>8.3f} {cpu:>11.2f} {user:>12.2f}")
for mine in ("portico", "plugins"):
    for peer in ("nginx", "haproxy", "pingora"):
        if mine in med and peer in med:
            a, b = med[mine], med[peer]
            print(f"{mine}/{peer}: req/s {a[0]/b[0]:.3f}x, p99 {a[1]/b[1]:.3f}x, CPU per request {a[2]/b[2]:.3f}x"
                  f" (user {a[3]/b[3]:.3f}x)")
# The same ratios taken within each round (the two measured a few seconds apart), then their median: drift
# between rounds cancels, and the spread says how far one run can be trusted.
print("per-round ratios (median, min-max over rounds):")
pairs = [(m, p) for m in ("portico", "plugins") for p in ("nginx", "haproxy", "pingora")] + [("plugins", "portico")]
for mine, peer in pairs:
    ratios = [tuple(r[mine][i] / r[peer][i] for i in range(4)) for r in by_round.values() if mine in r and peer in r]
    if ratios:
        cells = []
        for i, what in enumerate(("req/s", "p99", "CPU per request", "user CPU")):
            v = sorted(x[i] for x in ratios)
            cells.append(f"{what} {statistics.median(v):.3f}x ({v[0]:.3f}-{v[-1]:.3f})")
        print(f"  {mine}/{peer}: " + ", ".join(cells))
# What the plugins add to a request, in the same rounds.
diffs = [(r["plugins"][2] - r["portico"][2], r["plugins"][3] - r["portico"][3])
         for r in by_round.values() if "plugins" in r and "portico" in r]
if diffs:
    cpu, user = (sorted(d[i] for d in diffs) for i in range(2))
    print(f"plugins - portico, µs of CPU per request (median, min-max over rounds): {statistics.median(cpu):+.2f}"
          f" ({cpu[0]:+.2f} to {cpu[-1]:+.2f}), user {statistics.median(user):+.2f} ({user[0]:+.2f} to {user[-1]:+.2f})")
PY
