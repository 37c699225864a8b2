#!/usr/bin/env bash
# Pipeline schedules measured on 2 ranks (this machine's 2 cores), the GPT recipe's block shape
# (n_embd 128, 4 layers, 4 heads, 64 tokens, 2 sequences per micro-batch): for each schedule and
# m in {2, 4, 8, 16} the median step time, the measured bubble (idle share over ranks), the
# simulator's prediction from this run's own per-pass costs and message time, and the textbook
# formula; one SVG timeline of the median step per schedule at m = 4 in runs/bench-pipeline/.
# MODEL overrides the shape as n_embd,n_layer,n_head,block_size,micro_batch,steps (default
# 128,4,4,64,2,20; the wide model is 512,8,8,64,2,10).
# usage: scripts/bench-pipeline.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/collective-check" ] || "$root/scripts/setup.sh" >&2
model=${MODEL:-128,4,4,64,2,20}
work="$root/runs/bench-pipeline"; mkdir -p "$work"
echo "| schedule | m | step ms | predicted ms | measured/predicted | bubble measured | simulated | formula | peak live per rank |"
echo "|---|---|---|---|---|---|---|---|---|"
for schedule in gpipe 1f1b interleaved zb-h1; do
  chunks=1; [ "$schedule" = interleaved ] && chunks=2
  for m in 2 4 8 16; do
    svg=(); [ "$m" = 4 ] && svg=(--timeline "$work/$schedule.svg")
    line=$("$root/.build/release/ddp-launch" --nproc-per-node 2 --timeout 60 -- "$root/.build/release/collective-check" --mode pipeline-bench \
      --schedule "$schedule" --microbatches "$m" --virtual-stages "$chunks" --bench-model "$model" "${svg[@]}" 2>&1 | grep "^\[rank 0\] pipeline-bench " \
      || { echo "$schedule m $m failed" >&2; exit 1; })
    echo "$line" | sed -E 's/.*pipeline-bench ([^ ]+) p [0-9]+ m ([0-9]+) v [0-9]+: step ([0-9.]+) ms, predicted ([0-9.]+) ms \(measured\/predicted ([0-9.]+)\), bubble measured ([0-9.]+), simulated ([0-9.]+), formula ([0-9.]+), peak live (.*)/| \1 | \2 | \3 | \4 | \5 | \6 | \7 | \8 | \9 |/'
  done
done
echo "timelines (m = 4): $work/*.svg" >&2
