#!/usr/bin/env bash
# Pipeline schedules measured on 2 ranks (this machine's 2 cores), the GPT recipe's block shape
# (n_embd 128, 4 layers, 4 heads, 64 tokens, 2 sequences per micro-batch): for each schedule and
# m in {2, 4, 8, 16} the median step time, the measured bubble (idle share over ranks), the
# simulator's prediction from this run's own per-pass costs and message time, and the textbook
# formula; one SVG timeline of the median step per schedule at m = 4 in runs/bench-pipeline/. ROUNDS
# (default 3) runs of each, taken in turn; the table keeps each one's fastest.
# MODEL overrides the shape as n_embd,n_layer,n_head,block_size,micro_batch,steps (default
# 128,4,4,64,2,30; the wide model is 512,8,8,64,2,10). Then (THROUGHPUT=0 skips it) tokens/s through
# the trainer of 1 rank, dp 2, tp 2 and pp 2 (1f1b, interleaved, zb-h1) at the same global batch, on the
# recipe and on a wide model (n_embd 512, n_layer 8); ITERS steps each (default 100).
# usage: scripts/bench-pipeline.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/collective-check" ] || "$root/scripts/setup.sh" >&2
model=${MODEL:-128,4,4,64,2,30}
work="$root/runs/bench-pipeline"; mkdir -p "$work"
rows="$work/rows.txt"; : > "$rows"
# ROUNDS passes over every (schedule, m) in turn, the fastest of each kept: the shared machine drifts by
# more than the schedules differ at small m, so taking them in turn compares like with like.
for round in $(seq "${ROUNDS:-3}"); do
  for schedule in gpipe 1f1b interleaved zb-h1; do
    chunks=1; [ "$schedule" = interleaved ] && chunks=2
    for m in 2 4 8 16; do
      svg=(); [ "$m" = 4 ] && [ "$round" = 1 ] && svg=(--timeline "$work/$schedule.svg")
      "$root/.build/release/ddp-launch" --nproc-per-node 2 --timeout 60 -- "$root/.build/release/collective-check" --mode pipeline-bench \
        --schedule "$schedule" --microbatches "$m" --virtual-stages "$chunks" --bench-model "$model" "${svg[@]}" 2>&1 \
        | grep "^\[rank 0\] pipeline-bench " >> "$rows" || { echo "$schedule m $m failed" >&2; exit 1; }
    done
  done
done
python3 - "$rows" <<'PY'
import re, sys
pattern = re.compile(r"pipeline-bench (\S+) p \d+ m (\d+) v \d+: step ([\d.]+) ms, predicted ([\d.]+) ms \(measured/predicted ([\d.]+)\), bubble measured ([\d.]+), simulated ([\d.]+), formula ([\d.]+), peak live (\[[\d, ]*\]), peak RSS MiB (\[[\d, ]*\]); pass ms per stage ([^|]*)")
best = {}
for line in open(sys.argv[1]):
    m = pattern.search(line)
    key = (m.group(1), int(m.group(2)))
    if key not in best or float(m.group(3)) < float(best[key].group(3)):
        best[key] = m
print("| schedule | m | step ms | predicted ms | measured/predicted | bubble measured | simulated | formula | peak live per rank | peak RSS MiB per rank | stage 0 pass ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for m in best.values():
    print("| " + " | ".join(g.strip() for g in m.groups()) + " |")
PY
echo "timelines (m = 4): $work/*.svg" >&2
[ "${THROUGHPUT:-1}" = 1 ] || exit 0
# Training throughput through the trainer, same global batch (12 sequences of 64) in every layout.
"$root/scripts/get-data.sh" >&2
iters=${ITERS:-100}
for model in recipe wide; do
  shape=(); [ "$model" = wide ] && shape=(--set n_embd=512 --set n_head=8 --set n_layer=8)
  echo
  echo "### $model model ($([ "$model" = wide ] && echo "n_embd 512, n_head 8, n_layer 8" || echo "n_embd 128, n_head 4, n_layer 4"), global batch 12 x 64), $iters steps"
  echo
  echo "| layout | tokens/s | vs 1 rank |"
  echo "|---|---:|---:|"
  base=""
  for layout in "one 1" "dp2 2 --set batch_size=6" "tp2 2 --set tensor_parallel=2" \
                "pp2-1f1b 2 --set pipeline_parallel=2 --set microbatches=4 --set batch_size=3" \
                "pp2-interleaved 2 --set pipeline_parallel=2 --set pipeline_schedule=interleaved --set virtual_stages=2 --set microbatches=4 --set batch_size=3" \
                "pp2-zb-h1 2 --set pipeline_parallel=2 --set pipeline_schedule=zb-h1 --set microbatches=4 --set batch_size=3"; do
    set -- $layout; name=$1; n=$2; shift 2
    "$root/.build/release/ddp-launch" --nproc-per-node "$n" --timeout 60 -- "$root/configs/shakespeare-char.json" --out-dir "$work/$model-$name" \
      "${shape[@]}" --set max_iters="$iters" --set warmup_iters=$((iters / 10)) --set lr_decay_iters="$iters" --set log_interval="$iters" \
      --set eval_interval=1000000 --set eval_iters=1 --set checkpoint_interval=0 "$@" > "$work/$model-$name.log" 2>&1 \
      || { echo "$model $name failed:" >&2; tail -5 "$work/$model-$name.log" >&2; exit 1; }
    t=$(grep -oE "[0-9]+ tokens/s" "$work/$model-$name.log" | tail -1 | cut -d' ' -f1)
    [ -z "$base" ] && base=$t
    echo "| $name | $t | $(python3 -c "print(f'{$t/$base:.2f}x')") |"
  done
done
