#!/bin/sh
# Append the alert JSON (stdin) as one line, prefixed with the time, to a log file.
#
# [[anomaly.hook]]
# name = "notify"
# exec = ["/etc/portico/remediation/notify.sh", "/var/log/portico/anomaly-alerts.log"]
# cooldown = "0s"
set -eu
log=${1:-${PORTICO_NOTIFY_LOG:-/var/log/portico/anomaly-alerts.log}}
mkdir -p "$(dirname "$log")"
line=$(python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))')
printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$line" >> "$log"
