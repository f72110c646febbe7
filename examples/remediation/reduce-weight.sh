#!/bin/sh
# Halve the weight (or set it to $1) of the slowest endpoint in the alerted upstream, a gentler
# alternative to draining.
#
# [[anomaly.hook]]
# name = "reduce-weight"
# on = { severity = "warning", series = "upstream.*.latency_p99" }
# exec = ["/etc/portico/remediation/reduce-weight.sh"]      # or [..., "1"] for a fixed weight
# cooldown = "2m"
. "$(dirname "$0")/lib.sh"

upstream=$(alert_upstream)
if [ -z "$upstream" ]; then
    echo "series $PORTICO_ALERT_SERIES is not an upstream series" >&2
    exit 0
fi
choice=$(admin_curl "$PORTICO_ADMIN_URL/upstreams" | pick_slowest "$upstream" 0)
if [ -z "$choice" ]; then
    echo "upstream $upstream: no serving endpoint" >&2
    exit 0
fi
addr=${choice% *}
current=${choice##* }
if [ $# -ge 1 ]; then
    weight=$1
else
    weight=$(( current / 2 ))
    [ "$weight" -ge 1 ] || weight=1
fi
case $weight in '' | *[!0-9]*) echo "weight must be a non-negative integer, got '$weight'" >&2; exit 2 ;; esac
url="$PORTICO_ADMIN_URL/upstreams/$(urlenc "$upstream")/endpoints/$(urlenc "$addr")/weight"
if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would PUT $url {\"weight\":$weight}"
    exit 0
fi
admin_curl -X PUT -H 'Content-Type: application/json' --data "{\"weight\":$weight}" "$url" >/dev/null
echo "weight of $addr in $upstream: $current -> $weight"
