#!/usr/bin/env bash
# Test hosts on one machine: N network namespaces joined by veth pairs to a bridge, in a private subnet,
# optionally with every link limited by a token bucket (tc tbf; netem is not available here).
#   scripts/netns-cluster.sh up N [--rate 1gbit]   (re)creates hosts <prefix>-h0 .. h(N-1)
#   scripts/netns-cluster.sh down                  removes everything with the prefix
#   scripts/netns-cluster.sh addr I                prints host I's address
# Host I is namespace <prefix>-hI with interface eth0 at <subnet>.(10+I)/24. Environment:
# NETNS_PREFIX (default ddp), NETNS_SUBNET (default 10.77.0); with --rate, NETNS_BURST (the token
# bucket's size, default 32kb) and NETNS_MTU (default 9000). Needs root and iproute2. Idempotent: 'up'
# first removes what a previous run left; a failing 'up' removes what it created.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
prefix=${NETNS_PREFIX:-ddp}
subnet=${NETNS_SUBNET:-10.77.0}
bridge="${prefix}-br"

die() { echo "netns-cluster: $*" >&2; exit 2; }

down() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-h[0-9]+$" || true); do
    # Anything still running in a test host goes with it.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}-v[0-9]+$" || true); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link delete "$bridge" 2>/dev/null || true
}

up() {
  local n=$1 rate=$2 burst=$3 mtu=$4
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "host count must be 1..200, not '$n'"
  [ "$(id -u)" = 0 ] || die "needs root (ip netns)"
  command -v ip >/dev/null || die "needs iproute2 (apt-get install -y iproute2)"
  down
  trap 'echo "netns-cluster: set-up failed; removing what was created" >&2; down' ERR
  ip link add "$bridge" type bridge stp_state 0
  ip link set "$bridge" up
  for ((i = 0; i < n; i++)); do
    local ns="${prefix}-h$i" host="${prefix}-v$i" peer="${prefix}-p$i"
    ip netns add "$ns"
    ip link add "$host" type veth peer name "$peer"
    ip link set "$peer" netns "$ns"
    ip netns exec "$ns" ip link set "$peer" name eth0
    ip netns exec "$ns" ip addr add "$subnet.$((10 + i))/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip link set lo up
    ip link set "$host" master "$bridge"
    ip link set "$host" up
    if [ -n "$rate" ]; then
      # Both directions of the link: what the host sends (eth0) and what the bridge delivers to it.
      # The bucket holds 32 KiB: it refills while a rank computes, and whatever it holds leaves at the
      # veth's speed, not the rate. With 256 KiB, a 16 KiB allreduce between 2 hosts took 32 us
      # instead of a 1 gbit link's 131, and tensor parallelism's per-layer messages crossed for free.
      # A bucket that small passes half the rate with 1500-byte frames (4 hosts, ring, 256 KiB-16 MiB:
      # 0.06 GB/s busbw of 0.125, with or without segmentation offload; buckets of 96 KiB and more
      # pass 0.12), and the whole rate with jumbo frames, as cluster networks run: the links get both.
      ip link set "$bridge" mtu "$mtu"; ip link set "$host" mtu "$mtu"; ip netns exec "$ns" ip link set eth0 mtu "$mtu"
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
      tc qdisc add dev "$host" root tbf rate "$rate" burst "$burst" latency 50ms
    fi
  done
  trap - ERR
  # The bridge runs without STP, so its ports forward at once: nothing to wait for.
  echo "netns-cluster: $n host(s) ${prefix}-h0..$((n - 1)) at $subnet.10..$((9 + n))${rate:+, links limited to $rate, MTU $mtu}"
}

case "${1:-}" in
  up)
    shift; n=${1:-}; shift || true; rate=""; burst=${NETNS_BURST:-32kb}; mtu=${NETNS_MTU:-9000}
    while [ $# -gt 0 ]; do
      case "$1" in
        --rate) rate=${2:-}; [ -n "$rate" ] || die "--rate needs a value such as 1gbit"; shift 2 ;;
        *) die "unknown option '$1'" ;;
      esac
    done
    up "$n" "$rate" "$burst" "$mtu" ;;
  down) down; echo "netns-cluster: removed ${prefix} hosts" ;;
  addr) echo "$subnet.$((10 + ${2:?host index}))" ;;
  *) echo "usage: netns-cluster.sh up N [--rate 1gbit] | down | addr I" >&2; exit 2 ;;
esac
