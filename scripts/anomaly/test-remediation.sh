#!/bin/sh
# Exercise examples/remediation/*.sh against a mock Portico admin API on 127.0.0.1.
# Usage: scripts/anomaly/test-remediation.sh   (needs python3 and curl; prints "N passed, M failed")
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
rem="$here/examples/remediation"
tmp=$(mktemp -d)
trap 'kill "$srv" 2>/dev/null; rm -rf "$tmp"' EXIT

cat > "$tmp/mock.py" <<'PY'
import http.server, json, sys
log = open(sys.argv[2], "a")
DOC = [{"name": "app", "protocol": "http1", "endpoints": [
    {"address": "127.0.0.1:8081", "weight": 4, "status": "healthy", "active_requests": 0, "latency_ewma_ms": 1.2},
    {"address": "127.0.0.1:8082", "weight": 6, "status": "healthy", "active_requests": 3, "latency_ewma_ms": 93.0},
    {"address": "127.0.0.1:8083", "weight": 1, "status": "drained", "active_requests": 0, "latency_ewma_ms": 500.0}]}]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body=b"{}"):
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def record(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        log.write(f"{self.command} {self.path} auth={self.headers.get('Authorization')} body={body}\n"); log.flush()
    def do_GET(self):
        self.record(); self.reply(200, json.dumps(DOC).encode()) if self.path == "/upstreams" else self.reply(404)
    def do_POST(self): self.record(); self.reply(200)
    def do_PUT(self): self.record(); self.reply(200)
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(srv.server_port))
srv.serve_forever()
PY
python3 "$tmp/mock.py" "$tmp/port" "$tmp/requests.log" &
srv=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
export PORTICO_ADMIN_URL="http://127.0.0.1:$(cat "$tmp/port")"
pass=0; fail=0
check() { if grep -qF -- "$2" "$3"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1: no '$2' in $3"; cat "$3"; fi; }
alert='{"id":"upstream.app.latency_p99@1","series":"upstream.app.latency_p99","severity":"critical"}'

echo "$alert" | PORTICO_ALERT_SERIES=upstream.app.latency_p99 PORTICO_ADMIN_TOKEN=s3cret "$rem/drain-slowest.sh" > "$tmp/out1"
check drain "POST /upstreams/app/endpoints/127.0.0.1%3A8082/drain auth=Bearer s3cret" "$tmp/requests.log"
echo "$alert" | PORTICO_ALERT_SERIES=upstream.app.latency_p99 "$rem/reduce-weight.sh" > "$tmp/out2"
check weight 'PUT /upstreams/app/endpoints/127.0.0.1%3A8082/weight auth=None body={"weight":3}' "$tmp/requests.log"
echo "$alert" | PORTICO_ALERT_SERIES=upstream.app.latency_p99 "$rem/reduce-weight.sh" 1 > "$tmp/out3"
check weight-fixed 'body={"weight":1}' "$tmp/requests.log"
echo "$alert" | PORTICO_ALERT_SERIES=upstream.app.latency_p99 MIN_SERVING=2 "$rem/drain-slowest.sh" 2> "$tmp/err4"
check keeps-serving "no endpoint can be drained safely" "$tmp/err4"
echo "$alert" | PORTICO_ALERT_SERIES='upstream.app.latency_p99' DRY_RUN=1 "$rem/drain-slowest.sh" > "$tmp/out5"
check dry-run "would POST" "$tmp/out5"
echo "$alert" | PORTICO_ALERT_SERIES=process.cpu "$rem/notify.sh" "$tmp/alerts.log"
check notify '"series":"upstream.app.latency_p99"' "$tmp/alerts.log"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
