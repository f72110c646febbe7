#!/bin/sh
# keepalived notify hook for Portico nodes: records every VRRP transition with a timestamp, so an operator can
# line up "who held the VIP when" with Portico's own logs. keepalived calls it as
#   notify.sh GROUP|INSTANCE NAME STATE PRIORITY
# Extend the MASTER branch for clouds where gratuitous ARP does not move the address (call the provider's API
# to re-assign the secondary IP there).
set -eu
type=${1:-}; name=${2:-}; state=${3:-}; priority=${4:-}
log=${PORTICO_VRRP_LOG:-/var/log/portico-vrrp.log}
printf '%s %s %s %s priority=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$type" "$name" "$state" "$priority" >>"$log"
case "$state" in
  MASTER) logger -t portico-vrrp "took over the VIP ($name)" 2>/dev/null || true ;;
  BACKUP|FAULT|STOP) logger -t portico-vrrp "released the VIP ($name, $state)" 2>/dev/null || true ;;
esac
