#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the scheduler tests and for trying sbatch/srun:
#   up    install slurm-wlm and munge with apt when missing (root), start munged, slurmctld and slurmd
#         with a slurm.conf in $SLURM_LOCAL_DIR (default /tmp/swift-ddp-slurm): this host's CPUs, one
#         partition "debug" that oversubscribes up to 4 tasks per CPU
#   down  stop the daemons (by their pid files)
#   env   print the exports that point srun/sbatch at this cluster (eval "$(scripts/slurm-local.sh env)")
# Several slurmd nodes in network namespaces are not set up: slurmd's node name must resolve to an
# address of the namespace, which would need per-namespace /etc/hosts (ip netns exec bind-mounts only
# /etc/netns/NAME/ files) plus one slurmd state tree per node; the single node covers srun's variables.
# usage: scripts/slurm-local.sh up|down|env
case "${1:-}" in -h|--help|"") sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; [ -n "${1:-}" ]; exit $? ;; esac
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/tmp/swift-ddp-slurm}
conf="$dir/slurm.conf"
node=$(hostname -s)

# Starts a daemon holding none of this script's descriptors: not the caller's stdout/stderr (a test
# reading our output to its end would wait for them forever) and no other inherited one (Foundation's
# Process learns that its child exited when a socket the child inherited closes; a daemon keeping it
# open makes waitUntilExit wait forever).
detached() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec "$@" </dev/null >/dev/null 2>&1
  )
}

down() {
  for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    alive=0
    for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  rm -f "$dir"/*.pid "$dir"/munge/*.pid
}

case "$1" in
  env) echo "export SLURM_CONF=$conf" ;;
  down) down ;;
  up)
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      [ "$(id -u)" = 0 ] || { echo "slurm-local: slurm-wlm and munge are not installed and this is not root" >&2; exit 1; }
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    down
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chown munge:munge "$dir/munge"; chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || { mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null 2>&1 || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null; }
    chown munge:munge "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"
    socket="$dir/munge/munge.socket"
    detached runuser -u munge -- munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$dir/munge/munged.pid" \
      --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" --force
    cpus=$(nproc)
    cat > "$conf" <<CONF
ClusterName=swiftddp
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPort=16817
SlurmdPort=16818
JobCompType=jobcomp/none
NodeName=$node CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    SLURM_CONF=$conf detached slurmctld -i
    SLURM_CONF=$conf detached slurmd
    for _ in $(seq 100); do
      SLURM_CONF=$conf sinfo -h -o %T 2>/dev/null | grep -qE "^idle" && { echo "slurm-local: node $node idle ($cpus CPUs); $("$0" env)"; exit 0; }
      sleep 0.2
    done
    echo "slurm-local: the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    SLURM_CONF=$conf sinfo >&2 || true
    exit 1 ;;
  *) echo "slurm-local: up, down or env, not '$1'" >&2; exit 2 ;;
esac
