#!/usr/bin/env bash
# Data-plane benchmark (not a test): Strait's userspace WireGuard vs Debian's wireguard-go on
# the same topology, alternating rounds, medians and ratios printed at the end.
#
#   netns sbench-a                      netns sbench-b
#   overlay 100.64.0.x (TUN, MTU 1420)  overlay 100.64.0.y
#   up0 192.0.2.1/24 <---- veth ---->  up0 192.0.2.2/24
#
# Strait rounds run a real coordinator (in sbench-a) and two gateway agents; wireguard-go
# rounds configure wireguard-go with `wg`. Each round: iperf3 single TCP stream and 4 streams,
# UDP with 64-byte payloads at full rate (delivered packets/s), ping idle (200 x 10 ms) and
# ping while one TCP stream saturates the tunnel. Needs root, iperf3, wireguard-go,
# wireguard-tools.
#
# usage: bench/dataplane.sh [ROUNDS]    (run from the repository root)
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${DURATION:-10}
# The veth's MTU (the underlay); the TUN / wg MTU is 80 less. 9000 measures jumbo frames.
UNDERLAY_MTU=${UNDERLAY_MTU:-1500}
# SKIP_BUILD=1: use the release binaries already built.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --quiet
B=$PWD/target/release
A=sbench-a; Bn=sbench-b
WORK=$(mktemp -d /tmp/strait-bench-XXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del $A 2>/dev/null || true
  ip netns del $Bn 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

topology() {
  ip netns del $A 2>/dev/null || true; ip netns del $Bn 2>/dev/null || true
  ip netns add $A; ip netns add $Bn
  ip link add up0 netns $A type veth peer name up0 netns $Bn
  ip -n $A link set up0 mtu "$UNDERLAY_MTU"; ip -n $Bn link set up0 mtu "$UNDERLAY_MTU"
  ip -n $A addr add 192.0.2.1/24 dev up0; ip -n $A link set up0 up; ip -n $A link set lo up
  ip -n $Bn addr add 192.0.2.2/24 dev up0; ip -n $Bn link set up0 up; ip -n $Bn link set lo up
}

cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }

# percentiles of ping times on stdin -> "p50 p99"
percentiles() {
  awk -F'time=' '/time=/{split($2,a," "); print a[1]}' | sort -n |
    awk '{a[NR]=$1} END {if (NR == 0) print "nan nan"; else print a[int(NR*0.5)+0], a[int(NR*0.99)+0]}'
}

# measure NAME PEER_IP PID_A PID_B -> appends
# "name tcp1 tcp4 udp64_kpps idle_p50 idle_p99 load_p50 load_p99 cpu_s_per_gb rss_mib
#  receiver_cpu_s_per_gb" to results (CPU: the sending and the receiving side's process)
measure() {
  local name=$1 peer=$2 pid=$3 rpid=$4
  ip netns exec $Bn iperf3 -s -D -1 >/dev/null
  sleep 0.5
  local t0; t0=$(cpu_ticks "$pid")
  local r0; r0=$(cpu_ticks "$rpid")
  local j1; j1=$(ip netns exec $A iperf3 -c "$peer" -t "$DURATION" -J)
  local t1; t1=$(cpu_ticks "$pid")
  local r1; r1=$(cpu_ticks "$rpid")
  local tcp1 bytes1
  tcp1=$(echo "$j1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  bytes1=$(echo "$j1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])')
  ip netns exec $Bn iperf3 -s -D -1 >/dev/null
  sleep 0.5
  local tcp4
  tcp4=$(ip netns exec $A iperf3 -c "$peer" -t "$DURATION" -P 4 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  ip netns exec $Bn iperf3 -s -D -1 >/dev/null
  sleep 0.5
  local udp
  udp=$(ip netns exec $A iperf3 -c "$peer" -u -b 0 -l 64 -t "$DURATION" -J | python3 -c 'import json,sys; r=json.load(sys.stdin)["end"]["sum_received"]; print(r["bytes"]/64/r["seconds"]/1e3)')
  local idle load
  ip netns exec $A ping -c 20 -i 0.01 -q -W 1 "$peer" >/dev/null || true
  idle=$( (ip netns exec $A ping -c 200 -i 0.01 -W 1 "$peer" || true) | percentiles)
  ip netns exec $Bn iperf3 -s -D -1 >/dev/null
  sleep 0.5
  ip netns exec $A iperf3 -c "$peer" -t "$DURATION" >/dev/null &
  local ipid=$!
  sleep 1
  load=$( (ip netns exec $A ping -c 300 -i 0.01 -W 1 "$peer" || true) | percentiles)
  wait $ipid || true
  local cpu_per_gb rcpu_per_gb
  cpu_per_gb=$(python3 -c "print(($t1-$t0)/100/($bytes1/1e9))")
  rcpu_per_gb=$(python3 -c "print(($r1-$r0)/100/($bytes1/1e9))")
  # Peak resident memory of the sending side's process over the whole round.
  local rss; rss=$(awk '/VmHWM/{print $2/1024}' /proc/"$pid"/status)
  echo "$name $tcp1 $tcp4 $udp $idle $load $cpu_per_gb $rss $rcpu_per_gb" >> "$WORK/results"
  printf '  %-12s tcp1 %5.2f Gbit/s  tcp4 %5.2f Gbit/s  udp64 %6.1f kpps  ping idle p50/p99 %s ms  loaded %s ms  cpu sender %.2f receiver %.2f s/GB  peak RSS %.1f MiB (sender)\n' \
    "$name" "$tcp1" "$tcp4" "$udp" "${idle/ //}" "${load/ //}" "$cpu_per_gb" "$rcpu_per_gb" "$rss"
}

strait_round() {
  topology
  local st=$WORK/strait; rm -rf "$st"; mkdir -p "$st"
  $B/strait-coordinator init --state-dir "$st/coord" --mesh bench --listen 192.0.2.1:7443 \
    --site a:lab:local:10.201.0.0/16 --site b:lab:local:10.202.0.0/16 >/dev/null
  ip netns exec $A $B/strait-coordinator serve --config "$st/coord/coordinator.toml" >"$st/coord.log" 2>&1 &
  PIDS+=($!); local cpid=$!
  sleep 1
  local ta tb
  ta=$(ip netns exec $A $B/straitctl -c 192.0.2.1:7443 --tls-dir "$st/coord/operator" token create --site a --role gateway 2>/dev/null)
  tb=$(ip netns exec $A $B/straitctl -c 192.0.2.1:7443 --tls-dir "$st/coord/operator" token create --site b --role gateway 2>/dev/null)
  STRAIT_JOIN_TOKEN=$ta ip netns exec $A $B/strait-agent run --mesh bench --site a --node gwa --role gateway \
    --coordinator 192.0.2.1:7443 --state-dir "$st/a" --endpoint public=192.0.2.1:51820 >"$st/a.log" 2>&1 &
  PIDS+=($!); local apid=$!
  STRAIT_JOIN_TOKEN=$tb ip netns exec $Bn $B/strait-agent run --mesh bench --site b --node gwb --role gateway \
    --coordinator 192.0.2.1:7443 --state-dir "$st/b" --endpoint public=192.0.2.2:51820 >"$st/b.log" 2>&1 &
  PIDS+=($!); local bpid=$!
  local peer=""
  for _ in $(seq 1 100); do
    peer=$(python3 -c "import json;print(json.load(open('$st/b/map.json'))['node']['overlay-ip'])" 2>/dev/null || true)
    [ -n "$peer" ] && ip netns exec $A ping -c 1 -W 1 "$peer" >/dev/null 2>&1 && break
    sleep 0.2
  done
  measure strait "$peer" "$apid" "$bpid"
  kill $apid $bpid $cpid; wait $apid $bpid $cpid 2>/dev/null || true
}

wggo_round() {
  topology
  local w=$WORK/wg; rm -rf "$w"; mkdir -p "$w"
  (umask 077; wg genkey > "$w/a.key"; wg genkey > "$w/b.key")
  wg pubkey < "$w/a.key" > "$w/a.pub"
  wg pubkey < "$w/b.key" > "$w/b.pub"
  # Distinct names: wireguard-go's control sockets live in /var/run/wireguard, shared by all
  # namespaces.
  WG_PROCESS_FOREGROUND=1 ip netns exec $A wireguard-go -f wga >/dev/null 2>&1 &
  PIDS+=($!); local apid=$!
  WG_PROCESS_FOREGROUND=1 ip netns exec $Bn wireguard-go -f wgb >/dev/null 2>&1 &
  PIDS+=($!); local bpid=$!
  for _ in $(seq 1 100); do
    ip -n $A link show wga >/dev/null 2>&1 && ip -n $Bn link show wgb >/dev/null 2>&1 && break
    sleep 0.1
  done
  ip netns exec $A wg set wga private-key "$w/a.key" listen-port 51820 peer "$(cat "$w/b.pub")" allowed-ips 100.64.0.2/32 endpoint 192.0.2.2:51820
  ip netns exec $Bn wg set wgb private-key "$w/b.key" listen-port 51820 peer "$(cat "$w/a.pub")" allowed-ips 100.64.0.1/32 endpoint 192.0.2.1:51820
  ip -n $A addr add 100.64.0.1/10 dev wga; ip -n $A link set wga mtu $((UNDERLAY_MTU - 80)) up
  ip -n $Bn addr add 100.64.0.2/10 dev wgb; ip -n $Bn link set wgb mtu $((UNDERLAY_MTU - 80)) up
  ip netns exec $A ping -c 2 -W 2 100.64.0.2 >/dev/null
  # wireguard-go re-execs itself; the sender-side CPU is that of the process in $A.
  local real rreal
  real=$(pgrep -n -f "wireguard-go -f wga" || echo $apid)
  rreal=$(pgrep -n -f "wireguard-go -f wgb" || echo $bpid)
  measure wireguard-go 100.64.0.2 "$real" "$rreal"
  kill $apid $bpid 2>/dev/null; wait $apid $bpid 2>/dev/null || true
}

echo "data plane: $ROUNDS alternating rounds, ${DURATION}s per iperf3 run ($(nproc) CPUs, $(uname -r))"
# The crypto floor on this machine: ChaCha20-Poly1305 over 1420-byte packets on one core;
# each end seals (or opens) every byte once, so no end can spend less than 1/rate per GB.
floor=$(openssl speed -evp chacha20-poly1305 -bytes 1420 -seconds 2 2>/dev/null |
  awk '/^ChaCha20-Poly1305/ {sub(/k$/, "", $2); print 1e9 / ($2 * 1000)}')
echo "crypto floor per end: ${floor:-unknown} s/GB (openssl speed -evp chacha20-poly1305 -bytes 1420)"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  strait_round
  wggo_round
done

python3 - "$WORK/results" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
def med(name, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == name)
cols = [("tcp1 Gbit/s", 1), ("tcp4 Gbit/s", 2), ("udp64 kpps", 3), ("idle p50 ms", 4),
        ("idle p99 ms", 5), ("load p50 ms", 6), ("load p99 ms", 7), ("cpu s/GB", 8),
        ("rcv cpu s/GB", 10), ("RSS MiB", 9)]
print("\nmedians        " + "  ".join(f"{c:>12}" for c, _ in cols))
for name in ("strait", "wireguard-go"):
    print(f"{name:<14} " + "  ".join(f"{med(name, i):>12.3f}" for _, i in cols))
print("strait/wg-go   " + "  ".join(f"{med('strait', i) / med('wireguard-go', i):>12.2f}" for _, i in cols))
EOF
