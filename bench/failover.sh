#!/usr/bin/env bash
# Failover benchmark (not a test): how long traffic stops when the active path dies.
#
#   fa-gwa ===== ic0 "interconnect" (172.31.255.0/30) ===== fa-gwb
#     \ up0 192.0.2.10 -- fa-inet (router) -- 203.0.113.10 up0 /
#                          198.51.100.10 fa-coord
#   fa-wla 10.10.0.10 (behind gwa)                fa-wlb 10.20.0.10 (behind gwb)
#
# For each probe interval: real coordinator and two gateway agents announcing both paths;
# CUTS times: a flow of pings every 10 ms from wla to wlb, the interconnect cut 1 s in
# (`ip link set ic0 down`), interruption = the longest silence between two replies (their
# arrival times, `ping -D`); then the link is restored and
# the agents are given the hold-down to fail back before the next cut. Prints min / median /
# max per interval. Needs root.
#
# usage: bench/failover.sh [CUTS] [INTERVALS...]   e.g. bench/failover.sh 10 200ms 1s
set -euo pipefail
CUTS=${1:-10}; shift || true
INTERVALS=("${@:-200ms 1s}")
[ $# -eq 0 ] && INTERVALS=(200ms 1s)
cargo build --release --workspace --quiet
B=$PWD/target/release
P=fa
WORK=$(mktemp -d /tmp/strait-failover-XXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for n in inet coord gwa gwb wla wlb; do ip netns del $P-$n 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

topology() {
  for n in inet coord gwa gwb wla wlb; do ip netns del $P-$n 2>/dev/null || true; ip netns add $P-$n; ip -n $P-$n link set lo up; done
  ip netns exec $P-inet sysctl -qw net.ipv4.ip_forward=1
  for spec in "coord c0 198.51.100" "gwa a0 192.0.2" "gwb b0 203.0.113"; do
    set -- $spec
    ip link add up0 netns $P-$1 type veth peer name $2 netns $P-inet
    ip -n $P-inet addr add $3.1/24 dev $2; ip -n $P-inet link set $2 up
    ip -n $P-$1 addr add $3.10/24 dev up0; ip -n $P-$1 link set up0 up
    ip -n $P-$1 route add default via $3.1
  done
  ip link add ic0 netns $P-gwa type veth peer name ic0 netns $P-gwb
  ip -n $P-gwa addr add 172.31.255.1/30 dev ic0; ip -n $P-gwa link set ic0 up
  ip -n $P-gwb addr add 172.31.255.2/30 dev ic0; ip -n $P-gwb link set ic0 up
  for spec in "gwa wla 10.10.0" "gwb wlb 10.20.0"; do
    set -- $spec
    ip link add lan0 netns $P-$1 type veth peer name eth0 netns $P-$2
    ip -n $P-$1 addr add $3.1/24 dev lan0; ip -n $P-$1 link set lan0 up
    ip -n $P-$2 addr add $3.10/24 dev eth0; ip -n $P-$2 link set eth0 up
    ip -n $P-$2 route add default via $3.1
  done
}

# ic_tx -> packets sent on gwa's interconnect so far
ic_tx() { ip -n $P-gwa -s -j link show ic0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'; }

run_interval() {
  local interval=$1
  topology
  local st=$WORK/$interval; rm -rf "$st"; mkdir -p "$st"
  $B/strait-coordinator init --state-dir "$st/coord" --mesh bench --listen 198.51.100.10:7443 \
    --site aws-use1:aws:us-east-1:10.10.0.0/16 --site gcp-usc1:gcp:us-central1:10.20.0.0/16 >/dev/null
  ip netns exec $P-coord $B/strait-coordinator serve --config "$st/coord/coordinator.toml" >"$st/coord.log" 2>&1 &
  PIDS+=($!)
  sleep 1
  local ctl="ip netns exec $P-coord $B/straitctl -c 198.51.100.10:7443 --tls-dir $st/coord/operator"
  local ta tb
  ta=$($ctl token create --site aws-use1 --role gateway 2>/dev/null)
  tb=$($ctl token create --site gcp-usc1 --role gateway 2>/dev/null)
  STRAIT_JOIN_TOKEN=$ta ip netns exec $P-gwa $B/strait-agent run --mesh bench --site aws-use1 --node gwa --role gateway \
    --coordinator 198.51.100.10:7443 --state-dir "$st/a" --prefix 10.10.0.0/16 --probe-interval "$interval" \
    --endpoint interconnect=172.31.255.1:51820 --endpoint public=192.0.2.10:51820 >"$st/a.log" 2>&1 &
  PIDS+=($!)
  STRAIT_JOIN_TOKEN=$tb ip netns exec $P-gwb $B/strait-agent run --mesh bench --site gcp-usc1 --node gwb --role gateway \
    --coordinator 198.51.100.10:7443 --state-dir "$st/b" --prefix 10.20.0.0/16 --probe-interval "$interval" \
    --endpoint interconnect=172.31.255.2:51820 --endpoint public=203.0.113.10:51820 >"$st/b.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do ip netns exec $P-wla ping -c 1 -W 1 10.20.0.10 >/dev/null 2>&1 && break; sleep 0.2; done
  for cut in $(seq 1 "$CUTS"); do
    # Wait until traffic is on the interconnect (fail back done).
    for _ in $(seq 1 60); do
      local before; before=$(ic_tx)
      ip netns exec $P-wla ping -q -c 20 -i 0.01 10.20.0.10 >/dev/null 2>&1 || true
      [ $(( $(ic_tx) - before )) -ge 20 ] && break
      sleep 0.5
    done
    local count=$(( 600 ))
    # -D: each reply's arrival time, so the interruption is the longest silence between
    # two replies, whatever ping's own spacing under load (lost pings x 10 ms understates
    # it when ping falls behind its 10 ms schedule).
    ip netns exec $P-wla ping -D -i 0.01 -W 1 -c $count 10.20.0.10 > "$st/ping" 2>&1 &
    local ppid=$!
    sleep 1
    ip -n $P-gwa link set ic0 down
    wait $ppid || true
    ip -n $P-gwa link set ic0 up
    local got; got=$(awk -F', ' '/packets transmitted/{split($2,a," "); print a[1]}' "$st/ping")
    local ms; ms=$(python3 -c '
import re, sys
t = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\].*bytes from", open(sys.argv[1]).read(), re.M)]
print(round(max((b - a for a, b in zip(t, t[1:])), default=0) * 1000))' "$st/ping")
    echo "$interval $ms" >> "$WORK/results"
    printf '  probe interval %-6s cut %2d: %4d pings lost, longest silence %d ms\n' "$interval" "$cut" $((count - got)) "$ms"
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

echo "failover: $CUTS cuts per probe interval (${INTERVALS[*]}), pings every 10 ms ($(nproc) CPUs, $(uname -r))"
for i in "${INTERVALS[@]}"; do run_interval "$i"; done
python3 - "$WORK/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
print("\nlongest silence per cut (ms)\nprobe interval   cuts   min ms   median ms   max ms")
for interval in dict.fromkeys(r[0] for r in rows):
    v = [int(r[1]) for r in rows if r[0] == interval]
    print(f"{interval:<16} {len(v):>4} {min(v):>8} {statistics.median(v):>11} {max(v):>8}")
PY
