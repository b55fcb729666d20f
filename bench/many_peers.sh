#!/usr/bin/env bash
# Many-peers benchmark (not a test): does a gateway keep its single-peer throughput, and
# stay idle, when it has 200 configured peers with handshakes and keepalives running?
#
#   netns mpa<pid>: coordinator + gateway agent gwa (site a), up0 192.0.2.1/24
#        |  veth
#   netns mpb<pid>: gateway agent gwb (site b, the throughput peer), up0 192.0.2.2/24,
#                   and (200-peer rounds) PEERS-1 wireguard-go devices, one per external
#                   peer of site x, device i at 192.0.2.(10+i):20000+i (an address each,
#                   as separate devices would have: distinct routes and MTU look-ups)
#
# Two kinds of round, alternating, each from a fresh topology and coordinator state:
# - "1 peer":  sites a and b only; gwa's one peer is gwb;
# - "N peers": the coordinator config also has PEERS-1 `[[external-peers]]` (site x, keys
#   made with `wg genkey`, endpoints in mpb); each is a real wireguard-go device configured
#   with gwa and gwb as its peers and persistent-keepalive 25, so gwa (persistent keepalive
#   25 s by default) runs handshakes, keepalives and its path probes toward every one.
# Each round waits until gwa has its peers (and, with N, until every device has a
# handshake with gwa), lets it settle, reads gwa's CPU from /proc/PID/stat over IDLE seconds
# with no traffic, then runs one iperf3 TCP stream for DURATION seconds through gwa -> gwb.
# Medians and spreads are printed at the end, with the N/1 throughput ratio.
#
# Why external peers and not 199 more agents: each agent needs its own namespace and TUN,
# wakes every 20 ms and holds a QUIC session; 199 of them on this 2-core machine would
# load the cores the measured gateway needs (and their probes to each other would be
# 199^2). wireguard-go devices are real, independent WireGuard peers that cost nothing
# while idle. What they do not do is answer Strait's path probes (plain WireGuard), so
# gwa sends a probe per peer per probe interval that stays unanswered: the probe replies
# an agent peer would send are not part of this load.
#
# Needs root, iperf3, wireguard-go, wireguard-tools, python3.
# usage: bench/many_peers.sh [ROUNDS]    (run from the repository root)
set -euo pipefail
ROUNDS=${1:-3}
PEERS=${PEERS:-200}
[ "$PEERS" -ge 2 ] && [ "$PEERS" -le 240 ] || { echo "PEERS must be 2-240 (addresses 192.0.2.11-250)"; exit 1; }
DURATION=${DURATION:-10}
IDLE=${IDLE:-30}
# BIN_DIR_B=dir: also run each round's N-peer case with the binaries there ("N peers B"),
# to compare two builds under the same load (the machine may be shared).
# PERF_DIR=dir: record a perf profile (call graphs) of gwa over each idle window there.
# SKIP_BUILD=1: use the release binaries already built (BIN_DIR: from elsewhere).
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p strait-agent -p strait-coordinator -p strait-ctl --quiet
B=${BIN_DIR:-$PWD/target/release}
A=mpa$$; Bn=mpb$$
WORK=$(mktemp -d /tmp/strait-many-peers-XXXX)
PIDS=()

stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# Every wireguard-go process holds an inotify instance (on its control socket), and root
# gets 128 by default: raised for the run, put back at the end.
INOTIFY=/proc/sys/fs/inotify/max_user_instances
INOTIFY_WAS=$(cat $INOTIFY)
[ "$INOTIFY_WAS" -ge $((PEERS + 256)) ] || echo $((PEERS + 256)) > $INOTIFY

cleanup() {
  stop_all
  echo "$INOTIFY_WAS" > $INOTIFY
  sleep 0.5
  ip netns del $A 2>/dev/null || true
  ip netns del $Bn 2>/dev/null || true
  rm -f /var/run/wireguard/mp$$w*.sock
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 1" INT TERM

topology() {
  ip netns del $A 2>/dev/null || true; ip netns del $Bn 2>/dev/null || true
  ip netns add $A; ip netns add $Bn
  ip link add up0 netns $A type veth peer name up0 netns $Bn
  ip -n $A addr add 192.0.2.1/24 dev up0; ip -n $A link set up0 up; ip -n $A link set lo up
  ip -n $Bn addr add 192.0.2.2/24 dev up0; ip -n $Bn link set up0 up; ip -n $Bn link set lo up
}

cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }

# external_peers N DIR: N-1 keys in DIR/x<i>.key and their coordinator config on stdout.
external_peers() {
  local n=$1 dir=$2 i
  for i in $(seq 1 $((n - 1))); do
    (umask 077; wg genkey > "$dir/x$i.key")
    printf '[[external-peers]]\nname = "x%d"\nsite = "x"\npublic-key = "%s"\nendpoint = "192.0.2.%d:%d"\nprefixes = ["10.203.%d.0/24"]\n\n' \
      "$i" "$(wg pubkey < "$dir/x$i.key")" $((10 + i)) $((20000 + i)) "$i"
  done
}

# json_peers FILE: how many peers a saved map has (0 if unreadable).
json_peers() {
  python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['peers']))" "$1" 2>/dev/null || echo 0
}

map_key() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['peers'][sys.argv[2]]['wg-public-key'])" "$1" "$2"; }

# round N [LABEL]: one round with N configured peers at gwa; appends "LABEL tcp_gbps
# idle_pct" to results (LABEL: N).
round() {
  local n=$1 label=${2:-$1}
  topology
  local st=$WORK/r; rm -rf "$st"; mkdir -p "$st"
  local sites=(--site a:lab:local:10.201.0.0/16 --site b:lab:local:10.202.0.0/16)
  [ "$n" -gt 1 ] && sites+=(--site x:lab:local:10.203.0.0/16)
  $B/strait-coordinator init --state-dir "$st/coord" --mesh bench --listen 192.0.2.1:7443 "${sites[@]}" >/dev/null
  if [ "$n" -gt 1 ]; then
    mkdir -p "$st/x"
    external_peers "$n" "$st/x" >> "$st/coord/coordinator.toml"
  fi
  ip netns exec $A $B/strait-coordinator serve --config "$st/coord/coordinator.toml" >"$st/coord.log" 2>&1 &
  PIDS+=($!)
  local up=""
  for _ in $(seq 1 50); do
    ip netns exec $A $B/straitctl -c 192.0.2.1:7443 --tls-dir "$st/coord/operator" nodes >/dev/null 2>&1 && { up=1; break; }
    sleep 0.2
  done
  [ -n "$up" ] || { echo "coordinator did not start:"; tail -5 "$st/coord.log"; exit 1; }
  local ta tb
  ta=$(ip netns exec $A $B/straitctl -c 192.0.2.1:7443 --tls-dir "$st/coord/operator" token create --site a --role gateway 2>/dev/null)
  tb=$(ip netns exec $A $B/straitctl -c 192.0.2.1:7443 --tls-dir "$st/coord/operator" token create --site b --role gateway 2>/dev/null)
  STRAIT_JOIN_TOKEN=$ta ip netns exec $A $B/strait-agent run --mesh bench --site a --node gwa --role gateway \
    --coordinator 192.0.2.1:7443 --state-dir "$st/a" --endpoint public=192.0.2.1:51820 >"$st/a.log" 2>&1 &
  PIDS+=($!); local apid=$!
  STRAIT_JOIN_TOKEN=$tb ip netns exec $Bn $B/strait-agent run --mesh bench --site b --node gwb --role gateway \
    --coordinator 192.0.2.1:7443 --state-dir "$st/b" --endpoint public=192.0.2.2:51820 >"$st/b.log" 2>&1 &
  PIDS+=($!)
  local peer=""
  for _ in $(seq 1 150); do
    if [ "$(json_peers "$st/a/map.json")" -ge "$n" ] && [ "$(json_peers "$st/b/map.json")" -ge "$n" ]; then
      peer=$(python3 -c "import json;print(json.load(open('$st/b/map.json'))['node']['overlay-ip'])" 2>/dev/null || true)
      [ -n "$peer" ] && ip netns exec $A ping -c 1 -W 1 "$peer" >/dev/null 2>&1 && break
    fi
    peer=""
    sleep 0.2
  done
  [ -n "$peer" ] || { echo "gwa did not reach gwb with $n peers:"; tail -5 "$st/a.log"; exit 1; }
  if [ "$n" -gt 1 ]; then
    local ka kb i
    ka=$(map_key "$st/b/map.json" a/gwa); kb=$(map_key "$st/a/map.json" b/gwb)
    for i in $(seq 1 $((n - 1))); do
      ip -n $Bn addr add 192.0.2.$((10 + i))/24 dev up0
      # -f: in the foreground, so $! is wireguard-go itself (`ip netns exec` execs it).
      ip netns exec $Bn wireguard-go -f "mp$$w$i" >"$st/x/wg$i.log" 2>&1 &
      PIDS+=($!)
    done
    for i in $(seq 1 $((n - 1))); do
      for _ in $(seq 1 400); do [ -S "/var/run/wireguard/mp$$w$i.sock" ] && break; sleep 0.05; done
      ip netns exec $Bn wg set "mp$$w$i" private-key "$st/x/x$i.key" listen-port $((20000 + i)) \
        peer "$ka" allowed-ips 10.201.0.0/16 persistent-keepalive 25 \
        peer "$kb" allowed-ips 10.202.0.0/16 persistent-keepalive 25 ||
        { echo "wireguard-go device $i:"; cat "$st/x/wg$i.log"; exit 1; }
      ip -n $Bn link set "mp$$w$i" up
    done
    # The devices learn the gateways' endpoints from their handshakes (then answer from the
    # address the gateway sent to); every device has a session with gwa (bounded: 60 s).
    local done_=0
    for _ in $(seq 1 60); do
      done_=$(ip netns exec $Bn wg show all latest-handshakes 2>/dev/null |
        awk -v k="$ka" -v p="mp$$w" 'index($1, p) == 1 && $2 == k && $3 > 0' | wc -l)
      [ "$done_" -ge $((n - 1)) ] && break
      sleep 1
    done
    echo "    $done_ of $((n - 1)) wireguard-go peers have a session with gwa"
  fi
  # Settle (the first handshakes, path probes deciding), then idle CPU with no traffic.
  sleep 5
  local t0 t1
  t0=$(cpu_ticks "$apid")
  if [ -n "${PERF_DIR:-}" ]; then
    perf record -q -g -F 499 -p "$apid" -o "$PERF_DIR/idle-$n-$$-$(date +%s).data" -- sleep "$IDLE" >/dev/null 2>&1
  else
    sleep "$IDLE"
  fi
  t1=$(cpu_ticks "$apid")
  local idle
  idle=$(python3 -c "print(($t1 - $t0) / $IDLE)")
  ip netns exec $Bn iperf3 -s -D -1 >/dev/null
  sleep 0.5
  local tcp
  tcp=$(ip netns exec $A iperf3 -c "$peer" -t "$DURATION" -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  local peers_now; peers_now=$(json_peers "$st/a/map.json")
  echo "$label $tcp $idle" >> "$WORK/results"
  printf '  %-8s %3d peers (map: %d)  tcp1 %5.2f Gbit/s  idle CPU %5.2f %% of a core\n' "$label" "$n" "$peers_now" "$tcp" "$idle"
  stop_all
}

echo "many peers: $ROUNDS alternating rounds of 1 and $PEERS peers, iperf3 ${DURATION}s, idle ${IDLE}s ($(nproc) CPUs, $(uname -r))"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  round 1
  round "$PEERS"
  if [ -n "${BIN_DIR_B:-}" ]; then
    A_DIR=$B; B=$BIN_DIR_B
    round "$PEERS" "${PEERS}B"
    B=$A_DIR
  fi
done

python3 - "$WORK/results" "$PEERS" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
n = sys.argv[2]
def col(k, i):
    return [float(r[i]) for r in rows if r[0] == k]
labels = list(dict.fromkeys(r[0] for r in rows))
print("\n             tcp1 Gbit/s median (min-max)   idle CPU % of a core median (min-max)")
for k in labels:
    t, c = col(k, 1), col(k, 2)
    label = "1 peer" if k == "1" else f"{k} peers"
    print(f"{label:<12} {statistics.median(t):>8.2f} ({min(t):.2f}-{max(t):.2f})        "
          f"{statistics.median(c):>8.2f} ({min(c):.2f}-{max(c):.2f})")
for k in labels[1:]:
    print(f"throughput {k} peers / 1 peer: {statistics.median(col(k, 1)) / statistics.median(col('1', 1)):.3f}")
EOF
