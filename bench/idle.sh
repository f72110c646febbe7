#!/usr/bin/env bash
# What an idle proxy costs: CPU time and wake-ups per second of Portico (native balancing, and with the bundled
# router and balancer plugins) and nginx, each with 2 workers and no traffic, in the same run. Summed over every
# thread of each process from /proc/PID/task/*/schedstat (nanoseconds on the CPU) and /proc/PID/task/*/status
# (voluntary context switches: each is a sleep the thread woke from).
#
#   bench/idle.sh                      # 10 s each
#   DURATION=30 PORTICO_BIN=/path/to/portico bench/idle.sh
#
# A proxy that wakes on a timer while it has nothing to do spends CPU on it under load too, where the wake-ups
# also preempt the threads serving requests.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTICO_SETUP_BENCH=1 scripts/setup.sh

DURATION=${DURATION:-10}
WORKERS=${WORKERS:-2}
OUT=bench/out/idle
mkdir -p "$OUT/tmp"
rm -f "$OUT"/*.pid
. bench/portico-bin.sh

cleanup() {
  for f in "$OUT"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT

portico_conf() { # listen, admin, filters line
  cat <<CONF
[admin]
listen = "$2"

[[listener]]
name = "web"
listen = "$1"
upstream = "origin"
$3

[[upstream]]
name = "origin"
endpoints = ["127.0.0.1:18180"]
CONF
}
portico_conf 127.0.0.1:18181 127.0.0.1:18190 "" > "$OUT/portico.toml"
{ portico_conf 127.0.0.1:18182 127.0.0.1:18191 'filters = ["router", "lb"]'; cat bench/bundled-plugins.toml; } \
  > "$OUT/plugins.toml"
"$BIN" --log-level warn run --workers "$WORKERS" -c "$OUT/portico.toml" >"$OUT/portico.log" 2>&1 &
echo $! > "$OUT/portico.pid"
"$BIN" --log-level warn run --workers "$WORKERS" -c "$OUT/plugins.toml" >"$OUT/plugins.log" 2>&1 &
echo $! > "$OUT/plugins.pid"
cat > "$OUT/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $PWD/$OUT/nginx.run.pid;
error_log $PWD/$OUT/nginx.error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $PWD/$OUT/tmp; proxy_temp_path $PWD/$OUT/tmp; fastcgi_temp_path $PWD/$OUT/tmp;
  uwsgi_temp_path $PWD/$OUT/tmp; scgi_temp_path $PWD/$OUT/tmp;
  upstream origin { server 127.0.0.1:18180; keepalive 128; }
  server { listen 127.0.0.1:18183; location / { proxy_pass http://origin; } }
}
CONF
nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" &
echo $! > "$OUT/nginx.pid"
for port in 18190 18191; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 2

# "cpu_ns switches" summed over the threads of the given processes.
snapshot() {
  python3 - "$@" <<'PY'
import glob, sys
cpu = switches = 0
for pid in sys.argv[1:]:
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            cpu += int(open(f"{task}/schedstat").read().split()[0])
            for line in open(f"{task}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split()[1])
        except OSError:
            pass
print(cpu, switches)
PY
}
pids_of() {
  case $1 in
    nginx) local m; m=$(cat "$OUT/nginx.pid"); echo "$m" $(pgrep -P "$m") ;;
    *) cat "$OUT/$1.pid" ;;
  esac
}
declare -A before
for name in portico plugins nginx; do before[$name]=$(snapshot $(pids_of $name)); done
sleep "$DURATION"
printf '%-8s %12s %14s\n' proxy "CPU ms/s" "wake-ups/s"
for name in portico plugins nginx; do
  read -r cpu0 sw0 <<<"${before[$name]}"
  read -r cpu1 sw1 <<<"$(snapshot $(pids_of $name))"
  python3 -c "print(f'{\"$name\":<8} {($cpu1 - $cpu0) / 1e6 / $DURATION:>12.2f} {($sw1 - $sw0) / $DURATION:>14.1f}')"
done
