#!/usr/bin/env bash
# ZeRO stages measured side by side in one run (checkpoints sharded, so no rank ever gathers the model):
#   memory: peak RSS of every rank at N = 2 and 4 for stages 0-3 on a model whose parameters dominate
#     (n_layer 8, n_embd 512, n_head 8: 25.3 M parameters, 405 MB of fp32 AdamW training state), 3 steps
#     of 2 sequences of 64 per rank, beside the ZeRO paper's bytes (printed by the trainer), the
#     activations it counts, and the process without a model (a 1-rank run of a 1-layer 16-wide GPT);
#   speed: tokens/s of the recipe (configs/shakespeare-char.json) on 2 ranks, batch 6 each, stages 0-3,
#     ITERS steps (default 200), ROUNDS rounds in turn (default 2), each stage's best; exposed comm;
#   PyTorch FSDP2 (fully_shard per block, gloo, 1 thread per rank) on the same models and batches, when
#     scripts/bench-references.sh has set up CPU PyTorch: tokens/s and peak RSS per rank.
# usage: scripts/bench-zero.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
iters=${ITERS:-200}; rounds=${ROUNDS:-2}
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}
work="$root/runs/bench-zero"; rm -rf "$work"; mkdir -p "$work"
launch() { # name ranks settings...
  local name=$1 n=$2; shift 2
  "$root/.build/release/ddp-launch" --nproc-per-node "$n" --timeout 120 -- "$root/configs/shakespeare-char.json" \
    --out-dir "$work/$name" --set eval_interval=1000000 --set eval_iters=1 --set checkpoint_interval=0 \
    --set checkpoint_format=sharded "$@" > "$work/$name.log" 2>&1 \
    || { echo "$name failed:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
}
wide=(--set n_layer=8 --set n_embd=512 --set n_head=8 --set batch_size=2)

launch base 1 --set n_layer=1 --set n_embd=16 --set n_head=1 --set batch_size=2 --set max_iters=3
base=$(grep -oE "peak RSS [0-9]+ MiB" "$work/base.log" | grep -oE "[0-9]+")
echo "## Peak RSS per rank, wide model (n_layer 8, n_embd 512: 25.3 M parameters), 3 steps"
echo
echo "The process without a model (runtime, data, buffers): $base MiB."
echo
echo "| stage | N | peak RSS per rank MiB | ZeRO paper MiB | + gathered MiB | activations MiB | RSS / (paper + gathered + activations + process) |"
echo "|---|---|---|---:|---:|---:|---:|"
for n in 2 4; do
  for stage in 0 1 2 3; do
    launch "mem-$n-$stage" "$n" "${wide[@]}" --set max_iters=3 --set log_interval=1 --set zero_stage="$stage"
    python3 - "$work/mem-$n-$stage.log" "$stage" "$n" "$base" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
peaks = eval(re.search(r"peak RSS per rank, MiB: (\[[\d, ]*\])", text).group(1))
held = float(re.search(r"ZeRO paper, stage \d: .*?: ([\d.]+) bytes", text).group(1)) / 2**20
gathered = re.search(r"ZeRO-3 gathers at most (\d+) bytes", text)
gathered = int(gathered.group(1)) / 2**20 if gathered else 0.0
per_layer = int(re.search(r"activation memory: (\d+) bytes per layer", text).group(1))
layers = 8
activations = per_layer * layers / 2**20
base = float(sys.argv[4])
ratio = max(peaks) / (held + gathered + activations + base)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {peaks} | {held:.1f} | {gathered:.1f} | {activations:.1f} | {ratio:.2f} |")
PY
  done
done

echo
echo "## Tokens/s, recipe, 2 ranks x 6 sequences, $iters steps, best of $rounds rounds"
echo
declare -A best=() exposed=()
for round in $(seq 1 "$rounds"); do
  for stage in 0 1 2 3; do
    launch "speed-$stage" 2 --set batch_size=6 --set zero_stage="$stage" --set max_iters="$iters" \
      --set warmup_iters=$((iters / 10)) --set lr_decay_iters="$iters" --set log_interval="$iters"
    t=$(grep -oE "[0-9]+ tokens/s" "$work/speed-$stage.log" | tail -1 | cut -d' ' -f1)
    if [ -z "${best[$stage]:-}" ] || [ "$t" -gt "${best[$stage]}" ]; then
      best[$stage]=$t
      exposed[$stage]=$(grep -oE "exposed comm [0-9.]+% of step time" "$work/speed-$stage.log" | tail -1 | grep -oE "[0-9.]+%")
    fi
  done
done
echo "| stage | tokens/s | vs stage 0 | exposed communication |"
echo "|---|---:|---:|---:|"
for stage in 0 1 2 3; do
  echo "| $stage | ${best[$stage]} | $(python3 -c "print(f'{${best[$stage]}/${best[0]}:.3f}x')") | ${exposed[$stage]} |"
done

echo
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "PyTorch FSDP2: not measured (no CPU PyTorch in $venv; scripts/bench-references.sh sets it up)"
  exit 0
fi
echo "## Side by side with PyTorch FSDP2 ($("$venv/bin/python" -c 'import torch; print(torch.__version__)'), fully_shard per block, gloo, 1 thread per rank)"
echo
echo "| model | N | ours (stage 3) tokens/s | FSDP2 tokens/s | ours / FSDP2 | ours peak RSS MiB | FSDP2 peak RSS MiB | ours / FSDP2 RSS |"
echo "|---|---|---:|---:|---:|---|---|---:|"
fsdp() { # ranks iters model-args...
  local n=$1 steps=$2; shift 2
  OMP_NUM_THREADS=1 "$venv/bin/torchrun" --nproc-per-node "$n" --master-port $((29500 + RANDOM % 1000)) \
    "$root/bench/references/fsdp_gpt.py" --iters "$steps" "$@" 2>&1 | grep -E "^fsdp2" || echo "fsdp2 failed"
}
for model in recipe wide; do
  if [ "$model" = recipe ]; then
    steps=$iters; ours=(--set batch_size=6); theirs=(--batch 6)
  else
    steps=10; ours=("${wide[@]}"); theirs=(--layers 8 --embd 512 --heads 8 --batch 2)
  fi
  launch "fsdp-ours-$model" 2 "${ours[@]}" --set zero_stage=3 --set max_iters="$steps" --set log_interval="$steps" \
    --set warmup_iters=$((steps / 10)) --set lr_decay_iters="$steps"
  t=$(grep -oE "[0-9]+ tokens/s" "$work/fsdp-ours-$model.log" | tail -1 | cut -d' ' -f1)
  rss=$(grep -oE "peak RSS per rank, MiB: \[[0-9, ]*\]" "$work/fsdp-ours-$model.log" | grep -oE "\[.*\]")
  line=$(fsdp 2 "$steps" "${theirs[@]}")
  echo "$line" > "$work/fsdp-$model.txt"
  python3 - "$model" "$t" "$rss" "$line" <<'PY'
import re, sys
model, ours, rss, line = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), sys.argv[4]
m = re.search(r"fsdp2 tokens/s (\d+) peak_rss_mib (\[[\d, ]*\])", line)
if not m:
    print(f"| {model} | 2 | {ours} | {line} | | {rss} | | |")
else:
    theirs, their_rss = int(m.group(1)), eval(m.group(2))
    print(f"| {model} | 2 | {ours} | {theirs} | {ours / theirs:.2f}x | {rss} | {their_rss} | {max(rss) / max(their_rss):.2f} |")
PY
done
