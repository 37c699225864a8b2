#!/usr/bin/env bash
# Data parallelism on 2 ranks next to torchrun + DDP, measured in the same run, ROUNDS rounds in turn
# (default 2; #21 asks for its goals in two consecutive runs):
#   swift-ddp: the recipe (configs/shakespeare-char.json, batch 12 per rank) on 1 rank and on 2 ranks
#     (scripts/launch.sh), ITERS iterations (default 200): tokens/s, scaling over 1 rank, exposed comm;
#   nanoGPT (NANOGPT_DIR, else runs/references/nanoGPT as scripts/bench-train.sh clones it) under
#     torchrun + DDP, backend gloo, one thread per rank, the same model and 1,536 tokens per step
#     (gradient_accumulation_steps 2 over 2 ranks = one micro-batch of 12 per rank): tokens/s from the
#     median logged iteration. nanoGPT's train.py pins DDP to CUDA; a CPU copy is written beside it.
# Prints one table row per run and the ratios; PyTorch comes from scripts/bench-references.sh.
# usage: scripts/bench-dp.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
"$root/scripts/bench-references.sh" >&2
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}; iters=${ITERS:-200}; rounds=${ROUNDS:-2}
work="$root/runs/bench-dp"; rm -rf "$work"; mkdir -p "$work"
overrides=(--set max_iters="$iters" --set lr_decay_iters="$iters" --set warmup_iters=$((iters / 10))
           --set eval_interval=100000 --set log_interval=100000 --set eval_iters=1)

ours() { # ranks log
  if [ "$1" = 1 ]; then
    "$root/.build/release/ddp-train" train "$root/configs/shakespeare-char.json" --out-dir "$work/ours-$1" "${overrides[@]}" >"$2" 2>&1 || true
  else
    "$root/scripts/launch.sh" --nproc-per-node "$1" -- "$root/configs/shakespeare-char.json" --out-dir "$work/ours-$1" "${overrides[@]}" >"$2" 2>&1 || true
  fi
  if ! grep -q "done:" "$2"; then
    echo "bench-dp: swift-ddp on $1 rank(s) did not finish; the end of $2:" >&2; tail -5 "$2" >&2; exit 1
  fi
  grep -h "done:" "$2" | head -1 | sed -E 's/.* ([0-9]+) tokens\/s(, exposed comm ([0-9.]+)%)?.*/\1 \3/'
}

nanogpt=${NANOGPT_DIR:-$root/runs/references/nanoGPT}
torch_ok=0
if [ -f "$nanogpt/train.py" ] && "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  torch_ok=1
  if [ ! -f "$nanogpt/data/shakespeare_char/train.bin" ]; then
    cp "$root/data/tinyshakespeare.txt" "$nanogpt/data/shakespeare_char/input.txt"
    (cd "$nanogpt" && "$venv/bin/python" data/shakespeare_char/prepare.py >/dev/null)
  fi
  "$venv/bin/python" - "$nanogpt/train.py" "$nanogpt/train_cpu_ddp.py" <<'PY'
import sys
source = open(sys.argv[1]).read()
for cuda, cpu in [("    device = f'cuda:{ddp_local_rank}'\n", "    device = f'cuda:{ddp_local_rank}' if torch.cuda.is_available() else 'cpu'\n"),
                  ("    torch.cuda.set_device(device)\n", "    if torch.cuda.is_available(): torch.cuda.set_device(device)\n"),
                  ("DDP(model, device_ids=[ddp_local_rank])", "DDP(model, device_ids=[ddp_local_rank] if torch.cuda.is_available() else None)")]:
    if cuda not in source:
        sys.exit(f"nanoGPT's train.py changed: {cuda.strip()!r} not found")
    source = source.replace(cuda, cpu)
open(sys.argv[2], "w").write(source)
PY
fi
torchrun_ddp() { # log
  (cd "$nanogpt" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$venv/bin/torchrun" --standalone --nproc_per_node=2 train_cpu_ddp.py \
    config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=1 --log_interval=1 --block_size=64 --batch_size=12 \
    --n_layer=4 --n_head=4 --n_embd=128 --max_iters="$iters" --lr_decay_iters="$iters" --warmup_iters=$((iters / 10)) \
    --eval_interval=100000 --dropout=0.0 --backend=gloo --gradient_accumulation_steps=2 --out_dir="$work/nanogpt-out") >"$1" 2>&1 || true
  "$venv/bin/python" - "$1" <<'PY'
import re, statistics, sys
times = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", open(sys.argv[1]).read())][1:]
print(f"{1536 / (statistics.median(times) / 1000):.0f}" if times else "0")
PY
}

echo "# data parallel, recipe, $iters iterations, $rounds rounds in turn ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores)"
echo "| round | ours 1 rank tok/s | ours 2 ranks tok/s | scaling | exposed comm | torchrun+DDP 2 ranks tok/s | ours / torchrun |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$rounds"); do
  read -r one _ < <(ours 1 "$work/ours-1-$round.log")
  read -r two exposed < <(ours 2 "$work/ours-2-$round.log")
  theirs=0
  [ "$torch_ok" = 1 ] && theirs=$(torchrun_ddp "$work/torchrun-$round.log")
  python3 - "$round" "$one" "$two" "${exposed:-nan}" "$theirs" <<'PY'
import sys
round_, one, two, exposed, theirs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
ratio = f"{two / theirs:.2f}x" if theirs > 0 else "n/a (no PyTorch or nanoGPT)"
print(f"| {round_} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x | {exposed} % | {theirs:,.0f} | {ratio} |")
PY
done
echo "# goals (#21): ours / torchrun >= 1.5x, scaling >= 1.85x, exposed comm < 5 %, in two consecutive runs; logs in $work"
