#!/bin/sh
# Drain the endpoint an incident names as its probable cause (a series endpoint.<upstream>.<address>.<metric>),
# through the admin API. Keeps at least MIN_SERVING endpoints of the upstream serving; does nothing for a cause
# that is not an endpoint (use drain-slowest.sh for upstream-level series).
#
# [[anomaly.hook]]
# name = "drain-cause"
# on = { severity = "critical", series = "endpoint.*.latency" }   # the incident's cause (role = "cause")
# exec = ["/etc/portico/remediation/drain-endpoint.sh"]
# timeout = "10s"
# cooldown = "5m"
#
# Env: PORTICO_ADMIN_URL, PORTICO_ALERT_UPSTREAM, PORTICO_ALERT_ENDPOINT, PORTICO_INCIDENT_ID (from Portico),
#      PORTICO_ADMIN_TOKEN (optional), MIN_SERVING (default 1), DRY_RUN=1 to only print what would be done.
. "$(dirname "$0")/lib.sh"

upstream=${PORTICO_ALERT_UPSTREAM:-}
endpoint=${PORTICO_ALERT_ENDPOINT:-}
if [ -z "$upstream" ] || [ -z "$endpoint" ]; then
    echo "series $PORTICO_ALERT_SERIES is not an endpoint series; nothing to drain" >&2
    exit 0
fi
if ! admin_curl "$PORTICO_ADMIN_URL/upstreams" | can_drain "$upstream" "$endpoint" "${MIN_SERVING:-1}"; then
    echo "upstream $upstream: draining $endpoint would leave fewer than ${MIN_SERVING:-1} serving" >&2
    exit 0
fi
url="$PORTICO_ADMIN_URL/upstreams/$(urlenc "$upstream")/endpoints/$(urlenc "$endpoint")/drain"
if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "would POST $url"
    exit 0
fi
admin_curl -X POST "$url" >/dev/null
echo "drained $endpoint in upstream $upstream (incident ${PORTICO_INCIDENT_ID:-?}, cause $PORTICO_ALERT_SERIES)"
