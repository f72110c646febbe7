#!/usr/bin/env python3
"""Client-side view of a VIP failover: one HTTP request every 20 ms (each on a new connection, 200 ms timeout).
Writes READY_FILE after the first answer, so the caller injects the failure only once the probe sees the VIP.
Stops one second after another node than the first one has answered (the failover is over), or after
MAX_SECONDS (a hang). Prints JSON: requests, failures, and the longest outage (first failure to the next success)
in milliseconds, with which node answered before and after it.

Usage: probe.py HOST PORT MAX_SECONDS READY_FILE"""
import http.client
import json
import sys
import time

host, port, limit, ready = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
start = time.monotonic()
results = []  # (t, ok, node)
first_node, switched_at = None, None
while time.monotonic() - start < limit:
    t = time.monotonic()
    node = None
    try:
        conn = http.client.HTTPConnection(host, port, timeout=0.2)
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        ok = resp.status == 200
        node = body if ok else None
        conn.close()
    except Exception:
        ok = False
    results.append((t - start, ok, node))
    if ok and first_node is None:
        first_node = node
        open(ready, "w").close()
    if ok and first_node is not None and node != first_node and switched_at is None:
        switched_at = t
    if switched_at is not None and t - switched_at > 1.0:
        break
    time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))

longest, current_start, before, after = 0.0, None, None, None
last_ok_node = None
gap_before = None
for t, ok, node in results:
    if not ok and current_start is None:
        current_start = t
        gap_before = last_ok_node
    elif ok and current_start is not None:
        if t - current_start > longest:
            longest, before, after = t - current_start, gap_before, node
        current_start = None
    if ok:
        last_ok_node = node
if current_start is not None:
    longest, before, after = results[-1][0] - current_start, gap_before, None
print(json.dumps({
    "requests": len(results),
    "failures": sum(1 for r in results if not r[1]),
    "outage_ms": round(longest * 1000),
    "served_before": before,
    "served_after": after,
    "last_node": last_ok_node,
}))
