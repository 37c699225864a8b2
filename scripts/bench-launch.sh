#!/usr/bin/env bash
# Launch latency: wall time from starting the launcher to rank 0's first line after rendezvous +
# barrier, for 2 ranks: ours (ddp-launch + collective-check --ready), then torchrun (gloo) and mpirun
# (MPI_Init + barrier) measured in the same run by ../shared/peers/launch_latency.py.
# usage: scripts/bench-launch.sh [RUNS]   (default 9)
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/collective-check" ] || "$root/scripts/setup.sh" >&2
runs=${1:-9}
python3 - "$root/.build/release" "$runs" <<'PY'
import statistics, subprocess, sys, time
build, runs = sys.argv[1], int(sys.argv[2])
for label, bind in [("swift-ddp", "none"), ("swift-ddp --numa-bind auto", "auto")]:
    first = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([f"{build}/ddp-launch", "--nproc-per-node", "2", "--numa-bind", bind, "--",
                              f"{build}/collective-check", "--ready"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            if line.startswith("[rank 0] ready"):
                first.append(time.perf_counter() - t0)
                break
        p.communicate()
        assert p.returncode == 0 and len(first) == _ + 1, f"{label}: launcher exited {p.returncode} without 'ready'"
    print(f"{label}: first line after {statistics.median(first):.3f} s median (min {min(first):.3f}) over {runs} runs")
PY
peers="$root/../shared/peers"
if [ -x "${PEERS_VENV:-/tmp/peers-venv}/bin/python" ] && [ -x "${PEERS_BUILD:-/tmp/peers-build}/mpi_launch" ]; then
  python3 "$peers/launch_latency.py" "$runs"
else
  echo "# torchrun/mpirun references missing: run 'bash ../shared/peers/setup.sh'"
fi
