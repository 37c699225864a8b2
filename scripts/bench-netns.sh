#!/usr/bin/env bash
# Allreduce across test hosts: N network namespaces (scripts/netns-cluster.sh) whose links are limited
# to RATE by tc tbf, one rank per host, one launcher per host, ring / tree / double tree / halving-doubling sizes 1 MiB
# to 64 MiB. Prints rank 0's table per host count and the link rate in GB/s to compare busbw with.
# usage: scripts/bench-netns.sh [HOSTS...]   (default: 2 4; RATE=1gbit, ITERS=10). Needs root.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/allreduce-bench" ] || "$root/scripts/setup.sh" >&2
rate=${RATE:-1gbit}; iters=${ITERS:-10}
export NETNS_PREFIX=${NETNS_PREFIX:-ddpbench} NETNS_SUBNET=${NETNS_SUBNET:-10.79.0}
cluster="$root/scripts/netns-cluster.sh"
trap 'bash "$cluster" down >/dev/null' EXIT
hosts=("$@"); [ ${#hosts[@]} -gt 0 ] || hosts=(2 4)
secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
case "$rate" in
  *gbit) gbps=$(awk -v r="${rate%gbit}" 'BEGIN { print r / 8 }') ;;
  *mbit) gbps=$(awk -v r="${rate%mbit}" 'BEGIN { print r / 8000 }') ;;
  *) echo "RATE must end in gbit or mbit" >&2; exit 2 ;;
esac
for n in "${hosts[@]}"; do
  bash "$cluster" up "$n" --rate "$rate"
  echo "## $n hosts x 1 rank, links $rate (= $(printf '%.3f' "$gbps") GB/s each way)"
  port=$((29600 + n))
  for ((h = n - 1; h >= 0; h--)); do
    ip netns exec "$NETNS_PREFIX-h$h" "$root/.build/release/ddp-launch" --nnodes "$n" --node-rank "$h" --nproc-per-node 1 \
      --master-addr "$NETNS_SUBNET.10" --master-port "$port" --secret "$secret" --timeout 120 --numa-bind none -- \
      allreduce-bench -b 1M -e 64M -f 4 -n "$iters" -w 2 --algorithms ring,tree,double-tree,halving-doubling \
      --json "$root/runs/bench-netns-$n.json" > "/tmp/bench-netns-$n-$h.log" 2>&1 &
    pids[$h]=$!
  done
  # Every host's launcher must succeed: a failed host fails the benchmark, naming its log.
  failed=0
  for ((h = 0; h < n; h++)); do
    if ! wait "${pids[$h]}"; then echo "bench-netns: host $h of $n failed; see /tmp/bench-netns-$n-$h.log" >&2; failed=1; fi
  done
  if [ "$failed" = 1 ]; then bash "$cluster" down >/dev/null; exit 1; fi
  grep -E '^\[rank 0\] ' "/tmp/bench-netns-$n-0.log" | grep -v 'placement' | sed 's/^\[rank 0\] //' | tee "/tmp/bench-netns-$n.table"
  # busbw of the largest size against the link rate, with more digits than the table shows.
  awk -v n="$n" -v link="$gbps" '$1 ~ /^[0-9]+$/ && $1 == 67108864 {
      busbw = $1 * 2 * (n - 1) / n / ($6 * 1e-6) / 1e9
      printf "  64 MiB %-16s busbw %.4f GB/s = %.1f%% of the link\n", $5, busbw, 100 * busbw / link }' "/tmp/bench-netns-$n.table"
  bash "$cluster" down >/dev/null
done
