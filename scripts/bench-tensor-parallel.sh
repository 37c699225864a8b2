#!/usr/bin/env bash
# Tensor parallelism measured side by side in one run, on the GPT recipe (configs/shakespeare-char.json:
# n_embd 128, n_head 4) and on a wider model (n_embd 512, n_head 8), same global batch (12 x 64 tokens):
#   tokens/s of 1 rank, 2 data-parallel ranks (batch 6 each) and tensor_parallel 2 (batch 12), with the
#   tensor-parallel traffic per step and the data-parallel exposed communication;
#   activation bytes per layer per rank, counted from the buffers the trainer allocates, beside
#   Korthikanti et al.'s formulas (tp 1, 2, 4, with and without sequence parallelism).
# ITERS (default 200) sets the training steps of the throughput runs; ROUNDS (default 2) repeats the
# three layouts in turn and keeps each one's best (the machine is shared and noisy).
# usage: scripts/bench-tensor-parallel.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
iters=${ITERS:-200}; rounds=${ROUNDS:-2}
work="$root/runs/bench-tensor-parallel"; rm -rf "$work"; mkdir -p "$work"
launch() { # name ranks settings...
  local name=$1 n=$2; shift 2
  "$root/.build/release/ddp-launch" --nproc-per-node "$n" --timeout 60 -- "$root/configs/shakespeare-char.json" \
    --out-dir "$work/$name" --set eval_interval=1000000 --set eval_iters=1 --set checkpoint_interval=0 "$@" > "$work/$name.log" 2>&1 \
    || { echo "$name failed:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
}
tokens() { grep -oE "[0-9]+ tokens/s" "$1" | tail -1 | cut -d' ' -f1; }

for model in recipe wide; do
  shape=(); [ "$model" = wide ] && shape=(--set n_embd=512 --set n_head=8)
  common=("${shape[@]}" --set max_iters="$iters" --set warmup_iters=$((iters / 10)) --set lr_decay_iters="$iters" --set log_interval="$iters")
  declare -A best=()
  for round in $(seq 1 "$rounds"); do
    launch "$model-one-$round" 1 "${common[@]}"
    launch "$model-dp2-$round" 2 "${common[@]}" --set batch_size=6
    launch "$model-tp2-$round" 2 "${common[@]}" --set tensor_parallel=2
    for layout in one dp2 tp2; do
      t=$(tokens "$work/$model-$layout-$round.log")
      if [ -z "${best[$layout]:-}" ] || [ "$t" -gt "${best[$layout]}" ]; then best[$layout]=$t; best[$layout-log]="$work/$model-$layout-$round.log"; fi
    done
  done
  echo "### $model model ($([ "$model" = wide ] && echo "n_embd 512, n_head 8" || echo "n_embd 128, n_head 4"), n_layer 4, block 64, global batch 12), best of $rounds, $iters steps"
  echo
  echo "| layout | tokens/s | vs 1 rank | communication per step |"
  echo "|---|---:|---:|---|"
  echo "| 1 rank | ${best[one]} | 1.00x | none |"
  dp=$(grep -oE "exposed comm [0-9.]+ ms \([0-9.]+%\)" "${best[dp2-log]}" | tail -1)
  echo "| data parallel 2 (batch 6 per rank) | ${best[dp2]} | $(python3 -c "print(f'{${best[dp2]}/${best[one]}:.2f}x')") | gradient allreduce, $dp |"
  tp=$(grep -oE "tensor-parallel comm [0-9.]+ ms/iter \([0-9]+ collectives, [0-9.]+ MB\)" "${best[tp2-log]}" | tail -1)
  echo "| tensor parallel 2 (batch 12) | ${best[tp2]} | $(python3 -c "print(f'{${best[tp2]}/${best[one]}:.2f}x')") | $tp |"
  echo
  unset best
done

echo "### Activation bytes per layer per rank (fp32, batch 12, block 64)"
echo
echo "| model | layout | counted | Korthikanti (16-bit) | Korthikanti x 2 (fp32) | counted / fp32 formula |"
echo "|---|---|---:|---:|---:|---:|"
for model in recipe wide; do
  shape=(); [ "$model" = wide ] && shape=(--set n_embd=512 --set n_head=8)
  for layout in "1" "2" "2 sp" "4" "4 sp"; do
    set -- $layout; t=$1; sp=false; [ "${2:-}" = sp ] && sp=true
    settings=("${shape[@]}" --set max_iters=1)
    [ "$t" -gt 1 ] && settings+=(--set tensor_parallel="$t" --set sequence_parallel="$sp")
    launch "$model-act-$t-$sp" "$t" "${settings[@]}"
    read -r counted k16 k32 < <(sed -nE 's/.*activation memory: ([0-9]+) bytes per layer.*for this layout ([0-9]+) bytes at 16 bits, ([0-9]+) as fp32.*/\1 \2 \3/p' \
      "$work/$model-act-$t-$sp.log" | head -1)
    name="tp $t"; [ "$sp" = true ] && name="tp $t + sequence parallel"; [ "$t" = 1 ] && name="no parallelism"
    echo "| $model | $name | $counted | $k16 | $k32 | $(python3 -c "print(f'{$counted/$k32:.2f}')") |"
  done
done
