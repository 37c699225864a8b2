#!/usr/bin/env bash
# Sets up the reference systems the message benchmarks compare against, from this repository alone:
# OpenMPI (Debian's openmpi-bin/libopenmpi-dev, TCP) and a venv with CPU PyTorch (gloo), then builds
# bench/references/mpi_messages.c. Idempotent. Env: REF_VENV (default /tmp/swift-ddp-ref-venv),
# REF_BUILD (default runs/references). Prints what it could not set up and goes on without it.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}; build=${REF_BUILD:-$root/runs/references}
mkdir -p "$build"
# A machine can have mpicc (openmpi-bin) without mpi.h (libopenmpi-dev): check that a compile works.
mpi_ready() { command -v mpicc >/dev/null && echo '#include <mpi.h>' | mpicc -x c -E - >/dev/null 2>&1; }
if ! mpi_ready; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
  else
    echo "bench-references: no working mpicc; install openmpi-bin and libopenmpi-dev for the OpenMPI columns" >&2
  fi
fi
mpi_ready && mpicc -O2 -o "$build/mpi_messages" "$root/bench/references/mpi_messages.c"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  # The CPU wheel: the default torch wheel pulls CUDA libraries (gigabytes).
  python3 -m venv "$venv" && "$venv/bin/pip" install -q numpy "torch==2.13.0+cpu" \
    || "$venv/bin/pip" install -q numpy torch --index-url https://download.pytorch.org/whl/cpu \
    || echo "bench-references: no CPU PyTorch; the gloo columns will be missing" >&2
fi
echo "references: OpenMPI $( [ -x "$build/mpi_messages" ] && echo ready || echo missing), gloo $( "$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)" >&2
