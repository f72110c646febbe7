#!/usr/bin/env bash
# Instructions per request, for A/B comparisons on a busy machine where wall-clock figures drift: each given
# Portico binary runs under callgrind (valgrind runs its threads one at a time, so this counts the work, not
# the waiting), the counters are zeroed after a warm-up, h2load sends a fixed number of HTTP/1.1 requests
# through it to an nginx origin, and the instructions executed by all of Portico's threads are divided by the
# requests. Counts are exact and repeatable to about 1 %.
#
#   bench/instructions.sh target/release/portico /tmp/portico-before        # native balancing
#   bench/instructions.sh target/dist/portico nginx    # and nginx as the proxy (one process), the peer
#   PLUGINS=1 bench/instructions.sh target/release/portico                  # with builtin:router + builtin:balancer
#   REQUESTS=20000 CONNECTIONS=32 bench/instructions.sh BIN...
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-32}
ORIGIN=127.0.0.1:18180
PORTICO=127.0.0.1:18181
ADMIN=127.0.0.1:18190
OUT=bench/out/instructions
mkdir -p "$OUT/tmp"
command -v valgrind >/dev/null && command -v h2load >/dev/null && command -v nginx >/dev/null || {
  echo "needs valgrind, h2load and nginx (PORTICO_SETUP_BENCH=1 scripts/setup.sh; apt-get install valgrind)"; exit 1; }

cat > "$OUT/origin.conf" <<CONF
worker_processes 1;
pid $PWD/$OUT/origin.pid;
error_log $PWD/$OUT/origin.error.log warn;
daemon on;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $PWD/$OUT/tmp; proxy_temp_path $PWD/$OUT/tmp;
  fastcgi_temp_path $PWD/$OUT/tmp; uwsgi_temp_path $PWD/$OUT/tmp; scgi_temp_path $PWD/$OUT/tmp;
  server { listen $ORIGIN; keepalive_requests 1000000; location / { return 200 'hello, world\n'; } } }
CONF
nginx -c "$PWD/$OUT/origin.conf" -p "$PWD/$OUT"
portico_pid=""
cleanup() {
  [[ -n $portico_pid ]] && kill "$portico_pid" 2>/dev/null || true
  [[ -f $OUT/origin.pid ]] && kill "$(cat "$OUT/origin.pid")" 2>/dev/null || true
}
trap cleanup EXIT

filters=""
[[ "${PLUGINS:-0}" == 1 ]] && filters='filters = ["router", "lb"]'
cat > "$OUT/portico.toml" <<CONF
[admin]
listen = "$ADMIN"

[[listener]]
name = "web"
listen = "$PORTICO"
upstream = "origin"
$filters

[[upstream]]
name = "origin"
endpoints = ["$ORIGIN"]
pool = { max_idle = 256 }
CONF
[[ -n $filters ]] && cat bench/bundled-plugins.toml >> "$OUT/portico.toml"

# nginx as the proxy, for the peer's count: one process (no master, one worker) so that callgrind sees all of
# its work; keep-alive to the origin as in bench/run.sh.
cat > "$OUT/nginx-proxy.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $PWD/$OUT/nginx-proxy.pid;
error_log $PWD/$OUT/nginx-proxy.error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $PWD/$OUT/tmp; proxy_temp_path $PWD/$OUT/tmp;
  fastcgi_temp_path $PWD/$OUT/tmp; uwsgi_temp_path $PWD/$OUT/tmp; scgi_temp_path $PWD/$OUT/tmp;
  upstream origin { server $ORIGIN; keepalive 128; }
  server { listen $PORTICO; keepalive_requests 1000000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF

for bin in "$@"; do
  if [[ $bin == nginx ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" nginx -c "$PWD/$OUT/nginx-proxy.conf" \
      -p "$PWD/$OUT" >"$OUT/portico.log" 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" "$bin" --log-level warn run --workers 2 \
      -c "$OUT/portico.toml" >"$OUT/portico.log" 2>&1 &
  fi
  portico_pid=$!
  for _ in $(seq 600); do curl -fs "http://$PORTICO/" >/dev/null 2>&1 && break; sleep 0.2; done
  h2load --h1 -n 2000 -c "$CONNECTIONS" "http://$PORTICO/" >/dev/null
  callgrind_control -z "$portico_pid" >/dev/null
  h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" "http://$PORTICO/" > "$OUT/h2load.txt"
  callgrind_control -d "$portico_pid" >/dev/null
  grep -q "succeeded, 0 failed\|$REQUESTS succeeded" "$OUT/h2load.txt" || { cat "$OUT/h2load.txt"; exit 1; }
  kill "$portico_pid"; wait "$portico_pid" 2>/dev/null || true; portico_pid=""
  # The dump after the zeroing: the highest-numbered part file(s) of this pid, one per thread.
  total=0
  for f in "$OUT"/callgrind.*.*; do
    ir=$(grep -m1 '^summary:' "$f" | awk '{print $2}')
    total=$((total + ${ir:-0}))
  done
  rm -f "$OUT"/callgrind.*
  python3 -c "print(f'$bin: {${total}/${REQUESTS}:,.0f} instructions per request ({${REQUESTS}} requests, ${CONNECTIONS} connections)')"
done
