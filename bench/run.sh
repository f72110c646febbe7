#!/usr/bin/env bash
# End-to-end benchmark: Portico, nginx and HAProxy in front of the same origin on loopback, driven by wrk in
# one run, alternating rounds so drift on the machine hits all of them alike. Prints requests/s and p99 for
# each and the ratios Portico/nginx and Portico/HAProxy, and what the bundled router and balancer plugins cost
# (a second Portico with both in its filter chain).
#
#   bench/run.sh                 # 3 rounds of 10 s, 64 connections
#   ROUNDS=5 DURATION=20s CONNECTIONS=128 bench/run.sh
#   PORTICO_BIN=/path/to/portico bench/run.sh   # an already built binary (e.g. one with line tables for perf)
#
# The origin is an nginx answering a fixed 13-byte body, so the proxies are what is measured. Every proxy gets
# the same worker count (WORKERS, default: the number of cores) and keeps upstream connections alive.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTICO_SETUP_BENCH=1 scripts/setup.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
ORIGIN=127.0.0.1:18080
PORTICO=127.0.0.1:18081
NGINX=127.0.0.1:18082
HAPROXY=127.0.0.1:18083
PLUGGED=127.0.0.1:18084
ADMIN=127.0.0.1:18090
ADMIN2=127.0.0.1:18091
OUT=bench/out
mkdir -p "$OUT"
rm -f "$OUT"/*.pid

if [ -n "${PORTICO_BIN:-}" ]; then
  BIN=$PORTICO_BIN
else
  cargo build --profile dist -p portico --locked
  BIN=target/dist/portico
fi

cleanup() {
  for f in "$OUT"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  [[ -f $OUT/nginx-origin.run.pid ]] && kill "$(cat "$OUT/nginx-origin.run.pid")" 2>/dev/null || true
  [[ -f $OUT/nginx-proxy.run.pid ]] && kill "$(cat "$OUT/nginx-proxy.run.pid")" 2>/dev/null || true
}
trap cleanup EXIT

nginx_conf() { # name, body of the http block
  cat > "$OUT/$1.conf" <<CONF
worker_processes $WORKERS;
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
  $2
}
CONF
  mkdir -p "$OUT/tmp-$1"
  nginx -c "$PWD/$OUT/$1.conf" -p "$PWD/$OUT"
}

nginx_conf nginx-origin "server { listen $ORIGIN; keepalive_requests 1000000; location / { return 200 'hello, world\n'; } }"
nginx_conf nginx-proxy "upstream origin { server $ORIGIN; keepalive 128; }
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

[[plugin]]
name = "router"
wasm = "builtin:router"
config = { routes = [{ match = { path_prefix = "/" }, upstream = "origin" }] }

[[plugin]]
name = "lb"
wasm = "builtin:balancer"
config = { policy = "round_robin" }
CONF
"$BIN" --log-level warn run --workers "$WORKERS" -c "$OUT/portico-plugins.toml" >"$OUT/portico-plugins.log" 2>&1 &
echo $! > "$OUT/portico-plugins.pid"

for addr in $ORIGIN $PORTICO $PLUGGED $NGINX; do
  for _ in $(seq 100); do curl -fs "http://$addr/" >/dev/null && break; sleep 0.1; done
  curl -fs "http://$addr/" >/dev/null || { echo "nothing answers on $addr"; exit 1; }
done

# wrk's --latency output: "Requests/sec: N" and a "99%" line in ms/us/s.
measure() { # name addr
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://$2/" > "$OUT/$1.wrk" 2>&1
  python3 - "$OUT/$1.wrk" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
print(f"{rps:.0f} {p99:.3f} {'errors:' + errors.group(0) if errors else 'ok'}")
PY
}

targets=(portico:$PORTICO plugins:$PLUGGED nginx:$NGINX)
((have_haproxy)) && targets+=(haproxy:$HAPROXY)
# A short unmeasured run against each first: every proxy opens its upstream connections and touches its memory
# before round 1, so the first proxy measured after start-up is not the only one paying for that.
for t in "${targets[@]}"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://${t#*:}/" >/dev/null 2>&1; done
declare -A rps_sum p99_sum
for t in "${targets[@]}"; do rps_sum[${t%%:*}]=0; p99_sum[${t%%:*}]=0; done
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    name=${t%%:*}; addr=${t#*:}
    read -r rps p99 status < <(measure "$name" "$addr")
    echo "round $round  $name  ${rps} req/s  p99 ${p99} ms  $status"
    rps_sum[$name]=$(python3 -c "print(${rps_sum[$name]} + $rps)")
    p99_sum[$name]=$(python3 -c "print(${p99_sum[$name]} + $p99)")
  done
done

echo
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $WORKERS workers per proxy"
printf "%-8s %12s %10s\n" proxy "req/s(mean)" "p99(ms)"
for t in "${targets[@]}"; do
  name=${t%%:*}
  printf "%-8s %12.0f %10.3f\n" "$name" "$(python3 -c "print(${rps_sum[$name]}/$ROUNDS)")" "$(python3 -c "print(${p99_sum[$name]}/$ROUNDS)")"
done
for peer in nginx haproxy; do
  [[ -n ${rps_sum[$peer]:-} ]] || continue
  python3 -c "print(f'portico/$peer: req/s ratio {${rps_sum[portico]}/${rps_sum[$peer]}:.3f}, p99 ratio {${p99_sum[portico]}/${p99_sum[$peer]}:.3f}')"
done
python3 -c "print(f'router+balancer plugins vs native balancing: req/s ratio {${rps_sum[plugins]}/${rps_sum[portico]}:.3f} ({(1-${rps_sum[plugins]}/${rps_sum[portico]})*100:.1f} % lost), p99 ratio {${p99_sum[plugins]}/${p99_sum[portico]}:.3f}')"
