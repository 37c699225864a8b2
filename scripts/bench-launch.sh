#!/usr/bin/env bash
# Launch latency: wall time from starting the launcher to rank 0's first line after rendezvous +
# barrier, for 2 ranks: ours (ddp-launch + collective-check --ready); our ranks started by `srun -n 2`
# (a one-node Slurm from scripts/slurm-local.sh, started and stopped here as root when none answers)
# and by `mpirun -np 2` (rank 0 hosts the store); then torchrun (gloo) and mpirun (MPI_Init + barrier)
# with this repository's harnesses (bench/references/torch_ready.py, mpi_ready.c; scripts/bench-references.sh
# sets them up). Runs are interleaved (one of each, RUNS times) and every row is also given as a ratio
# to our launcher's median from the same run; srun and mpirun also start /bin/echo, so that what our
# ranks add (rendezvous, store on rank 0) shows apart from the scheduler's own spawn time.
# usage: scripts/bench-launch.sh [RUNS]   (default 9)
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/collective-check" ] || "$root/scripts/setup.sh" >&2
runs=${1:-9}
"$root/scripts/bench-references.sh"
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}; build=${REF_BUILD:-$root/runs/references}
command -v mpicc >/dev/null && mpicc -O2 -o "$build/mpi_ready" "$root/bench/references/mpi_ready.c"
if command -v srun >/dev/null && [ "$(id -u)" = 0 ] && ! timeout 5 sinfo >/dev/null 2>&1; then
  "$root/scripts/slurm-local.sh" up >&2 && eval "$("$root/scripts/slurm-local.sh" env)"
  trap '"$root/scripts/slurm-local.sh" down >/dev/null 2>&1 || true' EXIT
fi
python3 - "$root" "$runs" "$venv" "$build" <<'PY'
import os, shutil, statistics, subprocess, sys, time
root, runs, venv, build = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
release = f"{root}/.build/release"
commands = [
    ("swift-ddp", [f"{release}/ddp-launch", "--nproc-per-node", "2", "--numa-bind", "none", "--", f"{release}/collective-check", "--ready"]),
    ("swift-ddp --numa-bind auto", [f"{release}/ddp-launch", "--nproc-per-node", "2", "--numa-bind", "auto", "--", f"{release}/collective-check", "--ready"]),
]
mpi_flags = ["--allow-run-as-root", "--oversubscribe", "--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"]
if shutil.which("srun") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
    commands.append(("srun -n 2 (our ranks)", ["srun", "-n", "2", f"{release}/collective-check", "--ready"]))
    commands.append(("srun -n 2 /bin/echo (srun alone)", ["srun", "-n", "2", "/bin/echo", "ready"]))
else:
    print("# srun row missing (no Slurm answers; as root this script starts scripts/slurm-local.sh)")
if shutil.which("mpirun"):
    commands.append(("mpirun -np 2 (our ranks)", ["mpirun", *mpi_flags, "-np", "2", f"{release}/collective-check", "--ready"]))
    commands.append(("mpirun -np 2 /bin/echo (mpirun alone)", ["mpirun", *mpi_flags, "-np", "2", "/bin/echo", "ready"]))
if os.path.exists(f"{venv}/bin/torchrun"):
    commands.append(("torchrun (gloo)", [f"{venv}/bin/torchrun", "--standalone", "--nproc-per-node", "2", f"{root}/bench/references/torch_ready.py"]))
else:
    print("# torchrun reference missing (scripts/bench-references.sh installs CPU PyTorch)")
if os.path.exists(f"{build}/mpi_ready"):
    commands.append(("mpirun (MPI_Init + barrier)", ["mpirun", *mpi_flags, "-np", "2", f"{build}/mpi_ready"]))
else:
    print("# mpirun reference missing (scripts/bench-references.sh installs OpenMPI)")
first = {label: [] for label, _ in commands}
for run in range(runs):
    for label, command in commands:
        t0 = time.perf_counter()
        p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        for line in p.stdout:
            if line.rstrip().endswith("ready"):
                first[label].append(time.perf_counter() - t0)
                break
        p.communicate()
        assert p.returncode == 0 and len(first[label]) == run + 1, f"{label}: exited {p.returncode} without 'ready'"
ours = statistics.median(first[commands[0][0]])
for label, _ in commands:
    m = statistics.median(first[label])
    print(f"{label}: first line after {m:.3f} s median (min {min(first[label]):.3f}) over {runs} runs, {m / ours:.2f}x swift-ddp")
# What our ranks add under another launcher: its time minus the same launcher starting /bin/echo
# (its own spawn cost, which no rank can shorten), against our launcher's whole time.
for name in ("srun", "mpirun"):
    ranks = next((l for l, _ in commands if l.startswith(name + " -n") and "our ranks" in l), None)
    alone = next((l for l, _ in commands if l.startswith(name + " -n") and "alone" in l), None)
    if ranks and alone:
        share = statistics.median(first[ranks]) - statistics.median(first[alone])
        print(f"our ranks under {name}: {share * 1000:.1f} ms beyond {name} alone = {share / ours:.2f}x swift-ddp's whole launch")
PY
