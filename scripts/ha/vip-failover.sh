#!/usr/bin/env bash
# VIP failover with keepalived and two Portico nodes, in network namespaces (needs root, ip, keepalived,
# python3). Builds a bridge with node A, node B and a client, runs the example keepalived configs from
# examples/keepalived/ (only paths, interface and addresses substituted) and a real Portico on each node, then
# measures client-visible downtime for two failures:
#   node_loss      node A's link goes down (power or network loss): VRRP adverts stop, B takes over;
#   portico_crash  Portico on the VIP holder is killed: `portico check --health` fails, keepalived releases
#                  the VIP, the other node takes over.
# Prints one JSON object per line with the figures. Usage: scripts/ha/vip-failover.sh PATH/TO/portico
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
portico=$(realpath "${1:-$repo/target/release/portico}")
[[ -x "$portico" ]] || { echo "no portico binary at $portico" >&2; exit 2; }
for tool in ip keepalived python3; do
  command -v "$tool" >/dev/null || { echo "vip-failover: needs $tool" >&2; exit 2; }
done
[[ $(id -u) -eq 0 ]] || { echo "vip-failover: needs root for network namespaces" >&2; exit 2; }

tag=pv$$
# keepalived refuses scripts under world-writable directories: work inside the repository's target dir.
mkdir -p "$repo/target"
work=$(mktemp -d "$repo/target/ha-vip.XXXXXX")
pids=()
# Cleaning up never changes the script's outcome: its status is the run's. (It did: a `kill -9` returns before
# the process is gone, and keepalived's own children, which it does not wait for, may still write their logs into
# the work directory, so `rm -rf` could fail with "Directory not empty" and, the trap's last command, make a
# passing run exit 1.)
cleanup() {
  local status=$?
  exec 2>/dev/null  # the shell's "Killed" job notices are expected here
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  for ns in hub a b c; do ip netns del "$tag$ns" 2>/dev/null || true; done
  if [[ "${KEEP_WORK:-0}" != 1 ]]; then
    for _ in 1 2 3 4 5; do rm -rf "$work" 2>/dev/null && break; sleep 0.2; done
  fi
  exit "$status"
}
trap cleanup EXIT

ip netns add "${tag}hub"
ip -n "${tag}hub" link add br0 type bridge
ip -n "${tag}hub" link set br0 up
declare -A addr=([a]=10.0.0.1 [b]=10.0.0.2 [c]=10.0.0.50)
for n in a b c; do
  ns=$tag$n
  ip netns add "$ns"
  ip link add "${tag}${n}0" type veth peer name "${tag}${n}1"
  ip link set "${tag}${n}0" netns "$ns"
  ip link set "${tag}${n}1" netns "${tag}hub"
  ip -n "$ns" link set "${tag}${n}0" name eth0
  ip -n "$ns" addr add "${addr[$n]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "${tag}hub" link set "${tag}${n}1" master br0 up
done

start_node() {  # node: an upstream that names the node, Portico in front of it, keepalived
  local n=$1 ns=$tag$1
  mkdir -p "$work/$n/www"
  echo "node-$n" >"$work/$n/www/index.html"
  ip netns exec "$ns" python3 -m http.server 9000 --bind 127.0.0.1 --directory "$work/$n/www" >/dev/null 2>&1 &
  pids+=($!)
  cat >"$work/$n/portico.toml" <<TOML
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "web"
listen = "0.0.0.0:8080"
upstream = "app"

[[upstream]]
name = "app"
endpoints = ["127.0.0.1:9000"]
TOML
  ip netns exec "$ns" "$portico" run -c "$work/$n/portico.toml" >"$work/$n/portico.log" 2>&1 &
  echo $! >"$work/$n/portico.pid"
  pids+=($!)
  sed -e "s|/usr/local/bin/portico|$portico|" \
      -e "s|notify /etc/portico/keepalived-notify.sh|notify \"/usr/bin/env PORTICO_VRRP_LOG=$work/$n/vrrp.log $repo/examples/keepalived/notify.sh\"|" \
      "$repo/examples/keepalived/keepalived-$n.conf" >"$work/$n/keepalived.conf"
  ip netns exec "$ns" keepalived -n -l -P -f "$work/$n/keepalived.conf" \
      -p "$work/$n/keepalived.pid" -r "$work/$n/vrrp.pid" >"$work/$n/keepalived.log" 2>&1 &
  pids+=($!)
}

wait_for_vip() {  # waits until the client gets an answer through the VIP; prints the node that answered
  for _ in $(seq 1 150); do
    if out=$(ip netns exec "${tag}c" curl -s --max-time 0.3 http://10.0.0.100:8080/ 2>/dev/null) && [[ -n "$out" ]]; then
      echo "$out"; return 0
    fi
    sleep 0.1
  done
  echo "vip-failover: the VIP never answered" >&2
  tail -n 20 "$work"/*/keepalived.log >&2 || true
  return 1
}

state_of() {  # the last VRRP state keepalived reported for node $1 (from the notify log)
  tail -n 1 "$work/$1/vrrp.log" 2>/dev/null | awk '{print $4}'
}

wait_for_backup() {  # waits (up to a minute: only a hang takes that long) until node $1 is BACKUP, ready to take over
  for _ in $(seq 1 600); do
    [[ $(state_of "$1") == BACKUP ]] && return 0
    sleep 0.1
  done
  echo "vip-failover: node $1 never became BACKUP (state: $(state_of "$1"))" >&2
  tail -n 20 "$work/$1/keepalived.log" >&2 || true
  return 1
}

probe() {  # starts the client probe for scenario $1 and returns once it has seen the VIP answer
  rm -f "$work/$1.ready"
  ip netns exec "${tag}c" python3 "$here/probe.py" 10.0.0.100 8080 60 "$work/$1.ready" >"$work/$1.json" &
  probe_pid=$!
  for _ in $(seq 1 600); do
    [[ -e "$work/$1.ready" ]] && return 0
    sleep 0.1
  done
  echo "vip-failover: the probe never got an answer" >&2
  return 1
}

other() { [[ $1 == a ]] && echo b || echo a; }

wait_for_pair() {  # waits until one node is MASTER and the other BACKUP (after a split, either may keep the VIP)
  for _ in $(seq 1 600); do
    case "$(state_of a) $(state_of b)" in
      "MASTER BACKUP" | "BACKUP MASTER") return 0 ;;
    esac
    sleep 0.1
  done
  echo "vip-failover: the nodes never settled (a: $(state_of a), b: $(state_of b))" >&2
  return 1
}

start_node a
start_node b
holder=$(wait_for_vip)
victim=${holder#node-}
wait_for_backup "$(other "$victim")"

# 1. Node loss: the holder's link goes down.
probe node_loss
ip -n "$tag$victim" link set eth0 down
wait "$probe_pid"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['scenario']='node_loss'; print(json.dumps(d))" "$work/node_loss.json"

# 2. Portico crash on the holder. The lost node comes back first; it never saw its own loss, so it may still be
#    MASTER, and the higher priority keeps the VIP. Wait until the pair has settled, whoever holds it.
ip -n "$tag$victim" link set eth0 up
wait_for_pair
holder=$(wait_for_vip)
victim=${holder#node-}
probe portico_crash
kill -9 "$(cat "$work/$victim/portico.pid")"
wait "$probe_pid"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['scenario']='portico_crash'; print(json.dumps(d))" "$work/portico_crash.json"
