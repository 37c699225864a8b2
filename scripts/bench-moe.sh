#!/usr/bin/env bash
# Mixture of experts measured side by side in one run, on the recipe (configs/shakespeare-char.json):
#   quality: the dense recipe and its MoE version (4 experts, top-2, every other block, capacity factor
#     1.25, load-balancing loss 0.01), one rank each, QUALITY_ITERS steps (default 2000): validation loss
#     at every evaluation side by side and both loss curves in one SVG (runs/bench-moe/loss-curves.svg);
#   speed: the MoE recipe on 2 ranks (6 sequences each) at expert_parallel 1 and 2, at ep 2 with
#     ZeRO 1, 2 and 3, and at tensor_parallel 2 (the pair splits the experts; 12 sequences on the pair), ITERS steps (default 200), ROUNDS rounds in turn (default 2), each layout's best:
#     tokens/s, exposed data-parallel communication, all-to-all time and volume per step, peak RSS
#     (checkpoints sharded, so no rank gathers the model or the optimizer state to save it; the tp 2
#     row's rank 0 assembles the single file);
#   balance: one rank, BALANCE_ITERS steps (default 1000), with the load-balancing loss and without: the
#     busiest expert's tokens over the mean, per MoE block, averaged over 50-step windows and over the
#     last window.
# PARTS (default "quality speed balance") picks the parts to run.
# usage: scripts/bench-moe.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
iters=${ITERS:-200}; rounds=${ROUNDS:-2}; quality_iters=${QUALITY_ITERS:-2000}; balance_iters=${BALANCE_ITERS:-1000}
parts=${PARTS:-quality speed balance}
work="$root/runs/bench-moe"; rm -rf "$work"; mkdir -p "$work"
launch() { # name ranks settings...
  local name=$1 n=$2; shift 2
  "$root/.build/release/ddp-launch" --nproc-per-node "$n" --timeout 120 -- "$root/configs/shakespeare-char.json" \
    --out-dir "$work/$name" --set checkpoint_interval=0 "$@" > "$work/$name.log" 2>&1 \
    || { echo "$name failed:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
}
moe=(--set n_experts=4 --set moe_top_k=2 --set moe_every=2 --set capacity_factor=1.25)

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
if [[ " $parts " == *" quality "* ]]; then
echo
echo "## Quality: dense recipe vs MoE recipe (4 experts, top-2, every other block), one rank, $quality_iters steps"
echo
launch dense 1 --set max_iters="$quality_iters" --set lr_decay_iters="$quality_iters"
launch moe 1 "${moe[@]}" --set max_iters="$quality_iters" --set lr_decay_iters="$quality_iters"
python3 - "$work" <<'PY'
import json, re, sys
work = sys.argv[1]
def evals(name):
    out = {}
    for line in open(f"{work}/{name}.log"):
        m = re.search(r"eval (\d+): train loss ([\d.]+), val loss ([\d.]+)", line)
        if m: out[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return out
def params(name):
    return int(re.search(r"model: .*?, (\d+) parameters", open(f"{work}/{name}.log").read()).group(1))
def done(name):
    m = re.search(r"\(([\d.]+) ms/iter training.*?([\d]+) tokens/s", open(f"{work}/{name}.log").read())
    return float(m.group(1)), int(m.group(2))
def steps(name):
    return [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl") if '"loss"' in l]
dense, moe = evals("dense"), evals("moe")
print(f"Parameters: dense {params('dense'):,}, MoE {params('moe'):,} (each token uses 2 of 4 experts in blocks 1 and 3).")
print(f"Step time: dense {done('dense')[0]:.1f} ms/iter ({done('dense')[1]} tokens/s), MoE {done('moe')[0]:.1f} ms/iter ({done('moe')[1]} tokens/s).")
print()
print("| iteration | dense train | dense val | MoE train | MoE val |")
print("|---:|---:|---:|---:|---:|")
for it in sorted(dense):
    d, m = dense[it], moe.get(it, (float('nan'),) * 2)
    print(f"| {it} | {d[0]:.4f} | {d[1]:.4f} | {m[0]:.4f} | {m[1]:.4f} |")
drops = re.findall(r"moe block (\d+):.*?dropped (\d+) of (\d+) choices", open(f"{work}/moe.log").read())
total = sum(int(d) for _, d, _ in drops); choices = sum(int(c) for _, _, c in drops)
print()
print(f"MoE choices dropped for capacity over the run: {total} of {choices} ({100 * total / max(choices, 1):.2f} %).")
# Both training-loss curves (per logged step) in one SVG.
curves = {"dense": steps("dense"), "MoE": steps("moe")}
w, h, pad = 640, 360, 50
xs = [s["iteration"] for c in curves.values() for s in c]; ys = [s["loss"] for c in curves.values() for s in c]
x0, x1, y0, y1 = 0, max(xs), min(ys), max(ys)
def px(x): return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)
def py(y): return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
       f'<rect width="{w}" height="{h}" fill="white"/>',
       f'<text x="{w/2}" y="20" text-anchor="middle">training loss: dense recipe vs 4 experts top-2 every other block</text>',
       f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
       f'<text x="{w/2}" y="{h-15}" text-anchor="middle">iteration (0 to {x1})</text>',
       f'<text x="10" y="{pad}">{y1:.2f}</text><text x="10" y="{h-pad}">{y0:.2f}</text>']
for (name, points), color, row in zip(curves.items(), ["#1f77b4", "#d62728"], [0, 1]):
    svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="' + " ".join(f"{px(s['iteration']):.1f},{py(s['loss']):.1f}" for s in points) + '"/>')
    svg.append(f'<text x="{w-pad-120}" y="{pad+18*row}" fill="{color}">{name}</text>')
svg.append("</svg>")
open(f"{work}/loss-curves.svg", "w").write("\n".join(svg))
print(f"Loss curves: {work}/loss-curves.svg")
PY
fi

if [[ " $parts " == *" speed "* ]]; then
echo
echo "## Speed: MoE recipe, 2 ranks x 6 sequences, $iters steps, best of $rounds rounds"
echo
declare -A best=() line=() rss=()
layouts=("1 0 1" "2 0 1" "2 1 1" "2 2 1" "2 3 1" "1 0 2") # expert_parallel, zero_stage, tensor_parallel
for round in $(seq "$rounds"); do
  for layout in "${layouts[@]}"; do
    read -r ep zero tp <<<"$layout"; key="ep$ep-zero$zero-tp$tp"
    # The same 12 sequences a step: 6 on each data-parallel rank, or 12 on the one tensor-parallel pair
    # (whose checkpoint is the single file: sharded ones are written by data-parallel ranks).
    format=sharded; [ "$tp" = 1 ] || format=single
    launch "speed-$key-$round" 2 "${moe[@]}" --set batch_size=$((6 * tp)) --set tensor_parallel="$tp" --set max_iters="$iters" --set eval_interval=1000000 \
      --set eval_iters=1 --set log_interval="$iters" --set expert_parallel="$ep" --set zero_stage="$zero" --set checkpoint_format="$format"
    tps=$(grep -E "\] done:" "$work/speed-$key-$round.log" | grep -oE "[0-9]+ tokens/s" | head -1 | grep -oE "[0-9]+")
    if [[ -z "${best[$key]:-}" || "$tps" -gt "${best[$key]}" ]]; then
      best[$key]=$tps; line[$key]=$(grep "iter $iters/$iters" "$work/speed-$key-$round.log" | tail -1)
      rss[$key]=$(grep -oE "peak RSS per rank, MiB: .*" "$work/speed-$key-$round.log" | tail -1 | sed 's/peak RSS per rank, MiB: //')
    fi
  done
done
echo "| expert_parallel | zero_stage | tensor_parallel | tokens/s | vs ep 1 | exposed DP comm | all-to-all per step | peak RSS per rank, MiB |"
echo "|---:|---:|---:|---:|---:|---|---|---|"
for layout in "${layouts[@]}"; do
  read -r ep zero tp <<<"$layout"; key="ep$ep-zero$zero-tp$tp"
  exposed=$(grep -oE "exposed comm [0-9.]+ ms \([0-9.]+%\)" <<<"${line[$key]}" | sed 's/exposed comm //' || true)
  a2a=$(grep -oE "all-to-all [0-9.]+ ms/iter \([0-9]+ calls, [0-9.]+ MB sent per rank\)" <<<"${line[$key]}" | sed 's/all-to-all //' || true)
  ratio=$(python3 -c "print(f'{${best[$key]} / ${best[ep1-zero0-tp1]}:.3f}x')")
  none="none (every rank holds every expert)"; [ "$tp" = 1 ] || none="none (the pair splits the experts)"
  echo "| $ep | $zero | $tp | ${best[$key]} | $ratio | ${exposed:-none (no data parallelism)} | ${a2a:-$none} | ${rss[$key]:-?} |"
done
fi

if [[ " $parts " == *" balance "* ]]; then
echo
echo "## Load balance: MoE recipe, one rank, $balance_iters steps, max/mean tokens per expert in 50-step windows"
echo
echo "| moe_aux_loss_coef | block 1 max/mean: mean of windows (last) | block 3 max/mean: mean of windows (last) | dropped over the run |"
echo "|---:|---:|---:|---:|"
for coef in 0.01 0; do
  launch "balance-$coef" 1 "${moe[@]}" --set max_iters="$balance_iters" --set eval_interval=1000000 --set eval_iters=1 \
    --set log_interval=50 --set moe_aux_loss_coef="$coef"
  python3 - "$work/balance-$coef.log" "$coef" <<'PY'
import re, sys
lines = [l for l in open(sys.argv[1]) if "moe block" in l]
cells, dropped, choices = [], 0, 0
for block in sorted({int(re.search(r"moe block (\d+)", l).group(1)) for l in lines}):
    mine = [l for l in lines if f"moe block {block}:" in l]
    ratios = [float(re.search(r"max/mean ([\d.]+)", l).group(1)) for l in mine]
    cells.append(f"{sum(ratios) / len(ratios):.3f} ({ratios[-1]:.3f})")
    for l in mine:
        m = re.search(r"dropped (\d+) of (\d+) choices", l)
        dropped += int(m.group(1)); choices += int(m.group(2))
print(f"| {sys.argv[2]} | {cells[0]} | {cells[1]} | {100 * dropped / choices:.2f} % |")
PY
done
fi
