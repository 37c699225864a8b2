#!/usr/bin/env bash
# SGEMM benchmark: swift-ddp's kernels next to numpy (OpenBLAS) single-thread, measured in the same run.
# The reference comes from ../shared/peers/sgemm.py (installed by ../shared/peers/setup.sh); without it
# only our figures are printed, and the script says so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >/dev/null
peers="$root/../shared/peers"
venv=${PEERS_VENV:-/tmp/peers-venv}
ref=$(mktemp)
trap 'rm -f "$ref"' EXIT
if [ -f "$peers/sgemm.py" ] && [ -x "$venv/bin/python" ]; then
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 "$venv/bin/python" "$peers/sgemm.py" 1 >"$ref"
  head -1 "$ref"
  "$root/.build/release/kernels-bench" --reference "$ref" "$@"
else
  echo "# reference missing: run 'bash ../shared/peers/setup.sh' for numpy/OpenBLAS figures" >&2
  "$root/.build/release/kernels-bench" "$@"
fi
