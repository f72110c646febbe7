#!/bin/sh
# Drain the slowest endpoint of the upstream named in the alert's series
# (e.g. upstream.app.latency_p99 -> upstream "app"). Keeps at least MIN_SERVING endpoints serving.
#
# [[anomaly.hook]]
# name = "drain-slowest"
# on = { severity = "critical", series = "upstream.*.latency_p99" }
# exec = ["/etc/portico/remediation/drain-slowest.sh"]
# timeout = "10s"
# cooldown = "5m"
#
# Env: PORTICO_ADMIN_URL, PORTICO_ALERT_SERIES (from Portico), PORTICO_ADMIN_TOKEN (optional),
#      MIN_SERVING (default 1), DRY_RUN=1 to only print what would be done.
. "$(dirname "$0")/lib.sh"

upstream=$(alert_upstream)
if [ -z "$upstream" ]; then
    echo "series $PORTICO_ALERT_SERIES is not an upstream series; nothing to drain" >&2
    exit 0
fi
choice=$(admin_curl "$PORTICO_ADMIN_URL/upstreams" | pick_slowest "$upstream" "${MIN_SERVING:-1}")
if [ -z "$choice" ]; then
    echo "upstream $upstream: no endpoint can be drained safely" >&2
    exit 0
fi
addr=${choice% *}
url="$PORTICO_ADMIN_URL/upstreams/$(urlenc "$upstream")/endpoints/$(urlenc "$addr")/drain"
if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would POST $url"
    exit 0
fi
admin_curl -X POST "$url" >/dev/null
echo "drained $addr in upstream $upstream (alert ${PORTICO_ALERT_ID:-?})"
