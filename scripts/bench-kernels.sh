#!/usr/bin/env bash
# SGEMM benchmark: swift-ddp's kernels next to numpy (OpenBLAS) single-thread, measured in the same run
# with the same shapes and transposes (bench/references/sgemm_numpy.py). numpy comes from the reference
# venv that scripts/bench-references.sh makes (REF_VENV), or the system's python3; without numpy only our
# figures are printed, and the script says so. numpy measures each shape right before ours does
# (kernels-bench --reference-command), so a slow minute of a shared machine lands on both sides of a ratio.
# Every timed result is checked against a Double reference.
# TARGET_CPU=<LLVM CPU name> (haswell, znver2, skylake-avx512...) measures a build for that CPU instead, made
# in .build-<name>: on an AVX-512 machine, TARGET_CPU=znver2 with --kernel avx2 runs the AVX2 kernels as
# an AVX2-only machine compiles them (the native build compiles them with AVX-512's 32 registers, which
# the compiler then schedules differently), and numpy's OpenBLAS runs its AVX2 (Haswell) kernels beside
# them unless OPENBLAS_CORETYPE says otherwise.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >/dev/null
bench="$root/.build/release/kernels-bench"
if [ -n "${TARGET_CPU:-}" ]; then
  . "$root/scripts/lib/swift-tmp.bash"
  (cd "$root" && SWIFT_DDP_TARGET_CPU="$TARGET_CPU" swift_in_build_tmp build -c release --scratch-path "$root/.build-$TARGET_CPU" \
     --product kernels-bench 2>&1 | tail -1) >&2
  bench="$root/.build-$TARGET_CPU/release/kernels-bench"
  if "$bench" --only "8 8 8 NN" | grep -q "(no AVX-512)"; then export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}; fi
fi
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}
python=python3
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import numpy" 2>/dev/null && python="$venv/bin/python"
if "$python" -c "import numpy" 2>/dev/null; then
  export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
  echo "# numpy $("$python" -c 'import numpy; print(numpy.__version__)'), measured per shape right before ours${OPENBLAS_CORETYPE:+ (OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE)}"
  "$bench" --reference-command "'$python' '$root/bench/references/sgemm_numpy.py'" "$@"
else
  echo "# reference missing: no numpy (bash scripts/bench-references.sh installs it)" >&2
  "$bench" "$@"
fi
