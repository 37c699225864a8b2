#!/usr/bin/env bash
# Training throughput and quality next to the references, measured in the same run:
#   the GPT recipe (configs/shakespeare-char.json, one process) against nanoGPT's CPU recipe
#   (same model and hyper-parameters, PyTorch, one thread), ms/iter, validation loss and peak RSS (nanoGPT's with GNU time);
#   the MNIST MLP (configs/mnist-mlp.json) against bench/references/mlp_mnist.py, samples/s and accuracy.
# nanoGPT comes from NANOGPT_DIR (a checkout of karpathy/nanoGPT), else is cloned into runs/references/
# (needs the network); PyTorch from scripts/bench-references.sh. ITERS (default 2000) shortens the GPT runs;
# SEEDS (default 16) is how many seeds each MLP runs (accuracy is compared as the mean over them: one
# seed moves it by about a point; the mean of 16 has a standard error near 0.12 point a side).
# usage: scripts/bench-train.sh
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh" >&2
"$root/scripts/bench-references.sh"
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}; iters=${ITERS:-2000}
warmup=$(( iters >= 1000 ? 100 : iters / 10 ))   # the recipe's 100, shortened with the run
work="$root/runs/bench-train"; mkdir -p "$work"
"$venv/bin/pip" install -q numpy requests >/dev/null 2>&1 || true

echo "## GPT recipe, one process, $iters iterations"
"$root/.build/release/ddp-train" train "$root/configs/shakespeare-char.json" --out-dir "$work/ours-gpt" \
  --set max_iters="$iters" --set lr_decay_iters="$iters" --set warmup_iters="$warmup" --set log_interval=1000000 2>&1 | grep -E "^done:" | sed 's/^/swift-ddp: /'
nanogpt=${NANOGPT_DIR:-$root/runs/references/nanoGPT}
if [ ! -f "$nanogpt/train.py" ]; then
  git clone -q --depth 1 https://github.com/karpathy/nanoGPT "$nanogpt" 2>/dev/null || true
fi
if [ -f "$nanogpt/train.py" ] && "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  (
    cd "$nanogpt"
    # nanoGPT's prepare.py downloads the text unless it is there: give it ours.
    if [ ! -f data/shakespeare_char/train.bin ]; then
      cp "$root/data/tinyshakespeare.txt" data/shakespeare_char/input.txt
      "$venv/bin/python" data/shakespeare_char/prepare.py >/dev/null
    fi
    # GNU time, when the machine has it, gives nanoGPT's peak RSS beside ours.
    timed=(); rm -f "$work/nanogpt.rss"
    if [ -x /usr/bin/time ]; then timed=(/usr/bin/time -f "nanoGPT peak RSS %M KiB" -o "$work/nanogpt.rss"); fi
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${timed[@]}" "$venv/bin/python" train.py config/train_shakespeare_char.py --device=cpu --compile=False \
      --eval_iters=20 --log_interval=10 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 \
      --max_iters="$iters" --lr_decay_iters="$iters" --warmup_iters="$warmup" --eval_interval=$(( iters < 250 ? iters : 250 )) --dropout=0.0 --out_dir="$work/nanogpt-out" > "$work/nanogpt.log" 2>&1
  ) || echo "nanoGPT: failed; see $work/nanogpt.log"
  grep -q "^iter " "$work/nanogpt.log" && python3 - "$work/nanogpt.log" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
# The median of the logged iterations (the first ones and those that include an evaluation are outliers).
times = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", text)][1:]
val = re.findall(r"val loss ([\d.]+)", text)
print(f"nanoGPT: {statistics.median(times) if times else float('nan'):.1f} ms/iter (median of logged iterations), val loss {val[-1] if val else '?'}")
PY
  if [ -s "$work/nanogpt.rss" ]; then awk '/peak RSS/ { printf "nanoGPT: peak RSS %.0f MiB\n", $4 / 1024 }' "$work/nanogpt.rss"; fi
else
  echo "nanoGPT: missing (set NANOGPT_DIR to a checkout of karpathy/nanoGPT, or allow the clone)"
fi

seeds=${SEEDS:-16}
echo "## MNIST MLP, one process, seeds 0-$(( seeds - 1 )) (held-out accuracy moves ~1 point between seeds: compare means)"
seed_list=$(seq -s, 0 $(( seeds - 1 )))
: > "$work/mlp.txt"
for seed in $(seq 0 $(( seeds - 1 ))); do
  "$root/.build/release/ddp-train" train "$root/configs/mnist-mlp.json" --out-dir "$work/ours-mlp" --set seed="$seed" 2>&1 \
    | grep -E "^done:" | sed "s/^/swift-ddp: seed $seed: /" | tee -a "$work/mlp.txt"
done
if "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
  "$venv/bin/python" "$root/bench/references/mlp_mnist.py" "$root/data" "$seed_list" | tee -a "$work/mlp.txt"
else
  echo "pytorch mlp: missing (scripts/bench-references.sh installs PyTorch)"
fi
python3 - "$work/mlp.txt" <<'PY'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
def runs(prefix, rate, accuracy):
    picked = [l for l in lines if l.startswith(prefix)]
    return ([float(re.search(rate, l).group(1)) for l in picked], [float(re.search(accuracy, l).group(1)) for l in picked])
ours = runs("swift-ddp", r"([\d.]+) samples/s", r"accuracy % ([\d.]+)")
ref = runs("pytorch", r"([\d.]+) samples/s", r"accuracy ([\d.]+) %")
for name, (rates, accuracies) in (("swift-ddp", ours), ("pytorch", ref)):
    if rates:
        print(f"{name} mlp over {len(rates)} seeds: median {statistics.median(rates):.0f} samples/s, held-out accuracy "
              f"mean {statistics.mean(accuracies):.2f} % (min {min(accuracies):.2f}, max {max(accuracies):.2f})")
if ours[0] and ref[0]:
    print(f"mlp ratio: {statistics.median(ours[0]) / statistics.median(ref[0]):.2f}x samples/s, "
          f"accuracy {statistics.mean(ours[1]) - statistics.mean(ref[1]):+.2f} point (means)")
PY
