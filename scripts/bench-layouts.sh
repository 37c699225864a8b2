#!/usr/bin/env bash
# Every layout `ddp-train plan` accepts for a world size, trained for real side by side: each layout runs
# ITERS steps (default 100) on the same global batch, ROUNDS rounds in turn (default 1, best kept), and
# the table puts the planner's predicted ms/step and MiB per rank beside the measured ones (mean step
# time over ranks; the largest peak RSS of any rank), with the Spearman rank correlation of predicted
# and measured step times, and the planner's pick against the measured fastest. With ROUNDS >= 2 it also
# prints the Spearman correlation of one round's measured times with the next's: the measurement's own
# repeatability, a practical ceiling for what a prediction can score against it. The table, those lines
# and a plot of predicted against measured step time (SVG) go to runs/bench-layouts-WORLD*/ and to
# docs/layouts/ (one page per cell: world, hosts, model settings). Checkpoints are deleted after each
# layout (its peak RSS is measured with the final checkpoint written; the wide model's are 300 MB each).
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
# The whole plan goes to a file and its first line to the screen: piped into head, a long plan (the
# MoE model's refused layouts) died of SIGPIPE once head had its line, and pipefail ended the script.
"$root/.build/release/ddp-train" plan "$config" --world "$world" --ranks-per-host $((world / hosts)) --data-dir "$root/data" --json "$work/plan.json" "${plan_args[@]}" "$@" > "$work/plan.txt"
head -1 "$work/plan.txt"
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
    rm -f "$work/layout-$i-$round"/*.safetensors "$work/layout-$i-$round"/*.safetensors.tmp.*
  done
done
# The cell's page in docs/layouts/: world, hosts and the model settings given.
cell="$world-ranks"; (( hosts > 1 )) && cell+="-hosts$hosts"
for s in "$@"; do case "$s" in --set) ;; *=*) cell+="-${s%%=*}${s#*=}" ;; esac; done
mkdir -p "$root/docs/layouts"
command="ROUNDS=$rounds ITERS=$iters${HOSTS:+ HOSTS=$hosts} bash scripts/bench-layouts.sh $world${*:+ $*}"
header="# Layouts on $world ranks${HOSTS:+ over $hosts namespace hosts, ${rate:-1gbit} links}${*:+ ($*)} — \`$command\`

CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u +%Y-%m-%d). Goals (#19): pick within 10 % of the measured fastest, Spearman ≥ 0.8, memory within 10 %."
python3 - "$work" "$count" "$rounds" "$header" "$root/docs/layouts/$cell" <<'PY'
import json, re, sys
work, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
header, docs_base = sys.argv[4], sys.argv[5]
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
lines = [header, ""]
lines.append("| layout | predicted ms/step | measured ms/step | predicted MiB/rank | measured peak RSS MiB | memory predicted/measured |")
lines.append("|---|---:|---:|---:|---:|---:|")
for p, b in rows:
    if b: lines.append(f"| {p['name']} | {p['predicted_ms']:.2f} | {b[0]:.2f} | {p['predicted_mib']:.1f} | {b[1]:.0f} | {p['predicted_mib'] / b[1]:.2f} |")
    else: lines.append(f"| {p['name']} | {p['predicted_ms']:.2f} | failed | {p['predicted_mib']:.1f} | - | - |")
def spearman(xs, ys):
    a, b = ranks(xs), ranks(ys)
    n = len(a); ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b)); va = sum((x - ma) ** 2 for x in a); vb = sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float('nan')
if len(ok) >= 2:
    rho = spearman([p['predicted_ms'] for p, _ in ok], [m[0] for _, m in ok])
    fastest = min(ok, key=lambda r: r[1][0])
    pick = ok[0]  # the plan is ranked: its first layout is the pick
    lines.append("")
    lines.append(f"Spearman rank correlation, predicted vs measured step time, {len(ok)} layouts: {rho:.2f}")
    # How well the measurement agrees with itself: a prediction can hardly rank the layouts more
    # reliably than two rounds of the same runs rank each other.
    for r in range(1, rounds):
        common = sorted(set(by_round.get(r, {})) & set(by_round.get(r + 1, {})))
        if len(common) >= 2:
            again = spearman([by_round[r][i] for i in common], [by_round[r + 1][i] for i in common])
            lines.append(f"Spearman rank correlation, measured round {r} vs round {r + 1}, {len(common)} layouts: {again:.2f}")
    lines.append(f"Planner's pick {pick[0]['name']}: measured {pick[1][0]:.2f} ms/step; measured fastest {fastest[0]['name']}: {fastest[1][0]:.2f} ms/step "
                 f"(pick / fastest {pick[1][0] / fastest[1][0]:.3f})")
    worst = max(abs(p['predicted_mib'] / m[1] - 1) for p, m in ok)
    lines.append(f"Memory: predicted / measured peak RSS within {100 * worst:.0f} % over all layouts")
print("\n".join(lines[1:]))

def svg(path, title):
    # Predicted (x) against measured (y) ms/step, one dot per layout, the diagonal where they agree and
    # the 10 % band above it; the pick in red, the measured fastest ringed.
    W, H, L, R, T, B = 720, 520, 70, 230, 40, 50
    xs = [p['predicted_ms'] for p, _ in ok]; ys = [b[0] for _, b in ok]
    lo = min(xs + ys) * 0.95; hi = max(xs + ys) * 1.05
    sx = lambda v: L + (v - lo) / (hi - lo) * (W - L - R)
    sy = lambda v: H - B - (v - lo) / (hi - lo) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>',
           f'<line x1="{sx(lo)}" y1="{sy(lo)}" x2="{sx(hi)}" y2="{sy(hi)}" stroke="#888" stroke-dasharray="4 3"/>',
           f'<line x1="{sx(lo)}" y1="{sy(lo * 1.1)}" x2="{sx(hi / 1.1)}" y2="{sy(hi)}" stroke="#ccc" stroke-dasharray="2 3"/>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">predicted ms/step</text>',
           f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 {(T + H - B) / 2})">measured ms/step</text>']
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        out.append(f'<text x="{sx(v)}" y="{H - B + 14}" text-anchor="middle">{v:.4g}</text>')
        out.append(f'<text x="{L - 4}" y="{sy(v) + 4}" text-anchor="end">{v:.4g}</text>')
    fastest = min(ok, key=lambda r: r[1][0])
    for n, (p, b) in enumerate(ok):
        colour = "#d62728" if n == 0 else "#1f77b4"
        out.append(f'<circle cx="{sx(p["predicted_ms"]):.1f}" cy="{sy(b[0]):.1f}" r="4" fill="{colour}"/>')
        if p is fastest[0]: out.append(f'<circle cx="{sx(p["predicted_ms"]):.1f}" cy="{sy(b[0]):.1f}" r="7" fill="none" stroke="black"/>')
        out.append(f'<text x="{sx(p["predicted_ms"]) + 6:.1f}" y="{sy(b[0]) - 5:.1f}" font-size="9" fill="#444">{n + 1}</text>')
    for n, (p, b) in enumerate(ok):
        out.append(f'<text x="{W - R + 12}" y="{T + 12 * n + 10}" font-size="9">{n + 1}. {p["name"]}</text>')
    out.append(f'<text x="{W - R + 12}" y="{T + 12 * len(ok) + 24}" font-size="9">red: the pick; ringed: measured fastest;</text>')
    out.append(f'<text x="{W - R + 12}" y="{T + 12 * len(ok) + 36}" font-size="9">dashed: measured = predicted; dotted: +10 %</text>')
    out.append('</svg>')
    open(path, "w").write("\n".join(out) + "\n")

if len(ok) >= 2:
    name = docs_base.rsplit("/", 1)[-1]
    svg(f"{work}/predicted-vs-measured.svg", header.lstrip("# ").split(" — ")[0])
    open(f"{work}/results.md", "w").write("\n".join(lines) + f"\n\n![predicted against measured]({name}.svg)\n")
    if docs_base:
        import shutil
        shutil.copy(f"{work}/predicted-vs-measured.svg", f"{docs_base}.svg")
        shutil.copy(f"{work}/results.md", f"{docs_base}.md")
PY
