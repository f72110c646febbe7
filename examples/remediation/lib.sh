#!/bin/sh
# Shared helpers for Portico remediation hooks. Sourced, not executed.
# Hooks receive the alert JSON on stdin and PORTICO_ALERT_* / PORTICO_ADMIN_URL in the environment.
set -eu

: "${PORTICO_ADMIN_URL:?PORTICO_ADMIN_URL is not set (Portico passes it to hooks)}"
: "${PORTICO_ALERT_SERIES:?PORTICO_ALERT_SERIES is not set}"

# curl with the admin token if one is configured; fails on HTTP errors.
admin_curl() {
    if [ -n "${PORTICO_ADMIN_TOKEN:-}" ]; then
        curl -fsS --max-time 5 -H "Authorization: Bearer ${PORTICO_ADMIN_TOKEN}" "$@"
    else
        curl -fsS --max-time 5 "$@"
    fi
}

# Upstream name of the alert: PORTICO_ALERT_UPSTREAM (set for upstream and endpoint series), else read from a
# series like upstream.<name>.<metric>; empty if the series is about neither.
alert_upstream() {
    if [ -n "${PORTICO_ALERT_UPSTREAM:-}" ]; then
        echo "$PORTICO_ALERT_UPSTREAM"
        return
    fi
    python3 -c '
import sys
s = sys.argv[1]
if s.startswith("upstream.") and s.count(".") >= 2:
    print(s[len("upstream."):s.rindex(".")])
' "$PORTICO_ALERT_SERIES"
}

# Exit 0 if endpoint $2 of upstream $1 is serving and draining it leaves at least $3 serving, reading
# GET /upstreams JSON on stdin.
can_drain() {
    python3 -c '
import json, sys
name, address, min_left = sys.argv[1], sys.argv[2], int(sys.argv[3])
for u in json.load(sys.stdin):
    if u.get("name") != name:
        continue
    live = [e["address"] for e in u.get("endpoints", []) if e.get("status") in ("healthy", "unhealthy")]
    sys.exit(0 if address in live and len(live) - 1 >= min_left else 1)
sys.exit(1)
' "$1" "$2" "$3"
}

# Print "<address> <weight>" of the endpoint with the highest latency in upstream $1 among
# endpoints that are not already drained/ejected, reading GET /upstreams JSON on stdin.
# Prints nothing if draining it would leave the upstream with no serving endpoint.
pick_slowest() {
    python3 -c '
import json, sys
name, min_left = sys.argv[1], int(sys.argv[2])
doc = json.load(sys.stdin)
# GET /upstreams answers a list of groups; each endpoint has address, weight, status
# (healthy/unhealthy/ejected/drained), active_requests and latency_ewma_ms.
for u in doc:
    if u.get("name") != name:
        continue
    live = [e for e in u.get("endpoints", []) if e.get("status") in ("healthy", "unhealthy")]
    if len(live) - 1 < min_left:
        sys.exit(0)
    worst = max(live, key=lambda e: float(e.get("latency_ewma_ms") or 0.0), default=None)
    if worst is not None:
        print(worst["address"], worst.get("weight", 1))
' "$1" "${2:-1}"
}

# Percent-encode one path segment.
urlenc() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}
