#!/usr/bin/env bash
# Every layout `ddp-train plan` accepts for a world size, trained for real side by side: each layout runs
# ITERS steps (default 100) on the same global batch, ROUNDS rounds in turn (default 1, best kept), and
# the table puts the planner's predicted ms/step and MiB per rank beside the measured ones (mean step
# time over ranks; the largest peak RSS of any rank), with the Spearman rank correlation of predicted
# and measured step times, and the planner's pick against the measured fastest. With ROUNDS >= 2 it also
# prints the Spearman correlation of one round's measured times with the next's: the measurement's own
# repeatability, a practical ceiling for what a prediction can score against it.
# usage: scripts/bench-layouts.sh WORLD [CONFIG] [--set key=value ...]
#   CONFIG defaults to configs/shakespeare-char.json (the recipe); --set changes the model, e.g.
#   --set n_layer=8 --set n_embd=512 --set n_head=8 for the wide model.
#   HOSTS=4 runs across that many network-namespace hosts (scripts/netns-cluster.sh; root), WORLD/HOSTS
#   ranks each, links limited to RATE (default 1gbit); the planner is told the link's bandwidth and
#   LATENCY_US (default 60).
#   TUNING=1 (one host) first measures the lanes' fitted allreduce models for every group size a layout
#   uses (allreduce-bench --tuning at 2, 4, ... ranks, about 20 s each) and prices collectives by them
#   instead of the default 20 us + 10 GB/s (docs/benchmarks.md, "One tuning table per group size").
case "${1:-}" in -h|--help|"") sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
world=$1; shift
config="$root/configs/shakespeare-char.json"
if [[ $# -gt 0 && "$1" == *.json ]]; then config=$1; shift; fi
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
iters=${ITERS:-100}; rounds=${ROUNDS:-1}; hosts=${HOSTS:-1}
(( world % hosts == 0 )) || { echo "bench-layouts: HOSTS=$hosts does not divide WORLD=$world" >&2; exit 2; }
work="$root/runs/bench-layouts-$world${HOSTS:+-hosts$hosts}"; rm -rf "$work"; mkdir -p "$work"
plan_args=()
if (( hosts > 1 )); then
  rate=${RATE:-1gbit}
  case "$rate" in
    *gbit) gbps=$(awk -v r="${rate%gbit}" 'BEGIN { print r / 8 }') ;;
    *mbit) gbps=$(awk -v r="${rate%mbit}" 'BEGIN { print r / 8000 }') ;;
    *) echo "RATE must end in gbit or mbit" >&2; exit 2 ;;
  esac
  export NETNS_PREFIX=${NETNS_PREFIX:-ddplayout} NETNS_SUBNET=${NETNS_SUBNET:-10.77.0}
  cluster="$root/scripts/netns-cluster.sh"
  trap 'bash "$cluster" down >/dev/null' EXIT
  bash "$cluster" up "$hosts" --rate "$rate" >&2
  secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  plan_args=(--link-bandwidth "$gbps" --link-latency "${LATENCY_US:-60}")
fi
if (( hosts == 1 )) && [ "${TUNING:-0}" = 1 ]; then
  for ((n = 2; n <= world; n++)); do
    (( world % n == 0 )) || continue
    "$root/.build/release/ddp-launch" --nproc-per-node "$n" -- allreduce-bench -b 4K -e 64M -f 4 -n 20 --trials 3 \
      --algorithms ring,tree,double-tree,halving-doubling --tuning "$work/tuning-$n.json" > "$work/tuning-$n.log" 2>&1 \
      || { echo "bench-layouts: the $n-rank allreduce sweep failed:" >&2; tail -3 "$work/tuning-$n.log" >&2; exit 1; }
    plan_args+=(--tuning "$work/tuning-$n.json")
  done
fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; world $world on $hosts host(s)${rate:+, links $rate}; $iters steps per layout, best of $rounds"
"$root/.build/release/ddp-train" plan "$config" --world "$world" --ranks-per-host $((world / hosts)) --data-dir "$root/data" --json "$work/plan.json" "${plan_args[@]}" "$@" | head -1
count=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$work/plan.json")
# One layout: on this host, or one launcher per namespace host (host 0's log holds rank 0's lines).
run_layout() {
  local log=$1; shift
  local train=("$config" --data-dir "$root/data" "$@")
  if (( hosts == 1 )); then
    "$root/.build/release/ddp-launch" --nproc-per-node "$world" --timeout 120 -- "${train[@]}" > "$log" 2>&1
    return
  fi
  local port=$((29700 + RANDOM % 200)) pids=() h status=0
  for ((h = hosts - 1; h >= 0; h--)); do
    ip netns exec "$NETNS_PREFIX-h$h" "$root/.build/release/ddp-launch" --nnodes "$hosts" --node-rank "$h" \
      --nproc-per-node $((world / hosts)) --master-addr "$NETNS_SUBNET.10" --master-port "$port" --secret "$secret" \
      --timeout 120 --numa-bind none -- "${train[@]}" > "$log.host$h" 2>&1 &
    pids[$h]=$!
  done
  for ((h = 0; h < hosts; h++)); do wait "${pids[$h]}" || status=1; done
  cp "$log.host0" "$log"
  return $status
}
for round in $(seq "$rounds"); do
  for i in $(seq 0 $((count - 1))); do
    mapfile -t settings < <(python3 -c "import json,sys; [print(s) for s in json.load(open(sys.argv[1]))[int(sys.argv[2])]['settings']]" "$work/plan.json" "$i")
    args=(); for s in "${settings[@]}"; do args+=(--set "$s"); done
    for s in "$@"; do args+=("$s"); done
    run_layout "$work/layout-$i-$round.log" --out-dir "$work/layout-$i-$round" --set max_iters="$iters" --set eval_interval=1000000 \
      --set eval_iters=1 --set log_interval="$iters" --set checkpoint_interval=0 --set warmup_iters=$(( iters < 10 ? iters : 10 )) --set lr_decay_iters="$iters" "${args[@]}" \
      || { echo "layout $i failed:" >&2; tail -3 "$work/layout-$i-$round.log" >&2; }
  done
done
python3 - "$work" "$count" "$rounds" <<'PY'
import json, re, sys
work, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
plan = json.load(open(f"{work}/plan.json"))
rows = []
by_round = {}  # round -> {layout index: ms/step}, for the measurement's own repeatability
for i, p in enumerate(plan):
    best = None
    for r in range(1, rounds + 1):
        try: text = open(f"{work}/layout-{i}-{r}.log").read()
        except OSError: continue
        m = re.search(r"done: .*?\(([\d.]+) ms/iter training", text)
        peaks = re.search(r"peak RSS per rank, MiB: (\[[\d, ]*\])", text)
        single = re.search(r"peak RSS (\d+) MiB", text)
        if not m: continue
        rss = max(eval(peaks.group(1))) if peaks else float(single.group(1))
        by_round.setdefault(r, {})[i] = float(m.group(1))
        if best is None or float(m.group(1)) < best[0]: best = (float(m.group(1)), rss)
    rows.append((p, best))
ok = [(p, b) for p, b in rows if b]
def ranks(values):
    order = sorted(range(len(values)), key=lambda k: values[k])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]: j += 1
        for k in range(i, j + 1): out[order[k]] = (i + j) / 2
        i = j + 1
    return out
print()
print("| layout | predicted ms/step | measured ms/step | predicted MiB/rank | measured peak RSS MiB | memory predicted/measured |")
print("|---|---:|---:|---:|---:|---:|")
for p, b in rows:
    if b: print(f"| {p['name']} | {p['predicted_ms']:.2f} | {b[0]:.2f} | {p['predicted_mib']:.1f} | {b[1]:.0f} | {p['predicted_mib'] / b[1]:.2f} |")
    else: print(f"| {p['name']} | {p['predicted_ms']:.2f} | failed | {p['predicted_mib']:.1f} | - | - |")
def spearman(xs, ys):
    a, b = ranks(xs), ranks(ys)
    n = len(a); ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b)); va = sum((x - ma) ** 2 for x in a); vb = sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float('nan')
if len(ok) >= 2:
    rho = spearman([p['predicted_ms'] for p, _ in ok], [m[0] for _, m in ok])
    fastest = min(ok, key=lambda r: r[1][0])
    pick = ok[0]  # the plan is ranked: its first layout is the pick
    print()
    print(f"Spearman rank correlation, predicted vs measured step time, {len(ok)} layouts: {rho:.2f}")
    # How well the measurement agrees with itself: a prediction can hardly rank the layouts more
    # reliably than two rounds of the same runs rank each other.
    for r in range(1, rounds):
        common = sorted(set(by_round.get(r, {})) & set(by_round.get(r + 1, {})))
        if len(common) >= 2:
            again = spearman([by_round[r][i] for i in common], [by_round[r + 1][i] for i in common])
            print(f"Spearman rank correlation, measured round {r} vs round {r + 1}, {len(common)} layouts: {again:.2f}")
    print(f"Planner's pick {pick[0]['name']}: measured {pick[1][0]:.2f} ms/step; measured fastest {fastest[0]['name']}: {fastest[1][0]:.2f} ms/step "
          f"(pick / fastest {pick[1][0] / fastest[1][0]:.3f})")
    worst = max(abs(p['predicted_mib'] / m[1] - 1) for p, m in ok)
    print(f"Memory: predicted / measured peak RSS within {100 * worst:.0f} % over all layouts")
PY
