#!/usr/bin/env bash
# Allreduce benchmark: our ring / tree / halving-doubling next to OpenMPI MPI_Allreduce (TCP loopback) and
# PyTorch gloo, measured in the same run with the reference scripts in ../shared/peers (installed by
# 'bash ../shared/peers/setup.sh'; without them only our table is printed, and the script says so).
# usage: scripts/bench-allreduce.sh [RANKS...]        (default: 2 4); SIZES="4096 1048576 ..." to choose sizes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/allreduce-bench" ] || "$root/scripts/setup.sh" >&2
peers="$root/../shared/peers"
venv=${PEERS_VENV:-/tmp/peers-venv}; build=${PEERS_BUILD:-/tmp/peers-build}
sizes=${SIZES:-"4096 1048576 16777216 67108864"}
out=${OUT:-$root/runs/bench-allreduce}
mkdir -p "$out"
ranks=("$@"); [ ${#ranks[@]} -gt 0 ] || ranks=(2 4)
for n in "${ranks[@]}"; do
  echo "## $n ranks"
  for s in $sizes; do
    "$root/.build/release/ddp-launch" --nproc-per-node "$n" -- allreduce-bench -b "$s" -e "$s" -n 200 \
      --algorithms ring,tree,halving-doubling --json "$out/ours-$n-$s.json" | grep -E '^\[rank 0\] +[0-9]' | sed 's/^\[rank 0\] /  swift-ddp /'
  done
  if [ -x "$build/mpi_allreduce_bench" ]; then
    echo "# OpenMPI MPI_Allreduce (default algorithm selection), TCP loopback: size iters t_min t_med algbw busbw"
    bash "$peers/mpi_allreduce.sh" "$n" default $sizes | grep -vE '^#' | sed 's/^/  openmpi /'
  else
    echo "# OpenMPI reference missing: run 'bash ../shared/peers/setup.sh'"
  fi
  if [ -x "$venv/bin/python" ]; then
    echo "# PyTorch gloo all_reduce: size iters t_min t_med algbw busbw"
    OMP_NUM_THREADS=1 "$venv/bin/python" "$peers/gloo_allreduce.py" "$n" $sizes 2>/dev/null | grep -vE '^#' | sed 's/^/  gloo /'
  else
    echo "# gloo reference missing: run 'bash ../shared/peers/setup.sh'"
  fi
done
