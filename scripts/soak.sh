#!/usr/bin/env bash
# Soak: 4 ranks checking every collective result in a loop (every algorithm and collective) and,
# at the same time, 4 ranks training the tiny GPT with bitwise replica checks after every step. Every
# rank's RSS and open file descriptors are sampled after a warm-up and at the end: they must stay flat.
# usage: scripts/soak.sh [MINUTES]   (default 10). Not part of the tests.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -x .build/release/collective-check ] || scripts/setup.sh >&2
scripts/get-data.sh >/dev/null
minutes=${1:-10}; seconds=$((minutes * 60)); warm=30
out=runs/soak; rm -rf "$out"; mkdir -p "$out"
.build/release/ddp-launch --nproc-per-node 4 --timeout 60 -- collective-check --soak "$seconds" --counts 0,1,7,1000,70001 \
  > "$out/collectives.log" 2>&1 &
coll=$!
.build/release/ddp-launch --nproc-per-node 4 --timeout 60 -- configs/tiny-gpt.json --out-dir "$out/train" \
  --set max_iters=100000000 --set eval_interval=2000 --set checkpoint_interval=1000 --set log_interval=500 --set verify_replicas=true \
  > "$out/train.log" 2>&1 &
train=$!
ranks_of() { ps -o pid= --ppid "$1" | tr -d ' '; }
sample() { # label pid -> "rss_kib fds"
  echo "$(awk '/VmRSS/ {print $2}' /proc/$2/status 2>/dev/null || echo 0) $(ls /proc/$2/fd 2>/dev/null | wc -l)"
}
sleep "$warm"
declare -A first
for job in coll train; do for pid in $(ranks_of "${!job}"); do first[$job-$pid]=$(sample "$job" "$pid"); done; done
sleep $((seconds - warm - 5))
echo "| job | rank pid | RSS after ${warm} s (MiB) | RSS at end (MiB) | fds after ${warm} s | fds at end |"
echo "|---|---|---|---|---|---|"
for job in coll train; do
  for pid in $(ranks_of "${!job}"); do
    read -r r1 f1 <<< "${first[$job-$pid]:-0 0}"; read -r r2 f2 <<< "$(sample "$job" "$pid")"
    printf '| %s | %s | %.1f | %.1f | %s | %s |\n' "$job" "$pid" "$(awk -v r="$r1" 'BEGIN{print r/1024}')" "$(awk -v r="$r2" 'BEGIN{print r/1024}')" "$f1" "$f2"
  done
done
wait "$coll"; status=$?
kill -TERM "$train" 2>/dev/null || true; wait "$train" || true
grep -E "OK .* checks in" "$out/collectives.log" | sed 's/^/  /'
echo "training: $(grep -c '^\[rank 0\] iter ' "$out/train.log") log lines, last: $(grep '^\[rank 0\] iter ' "$out/train.log" | tail -1)"
grep -q "differ bitwise\|ERROR\|error:" "$out/collectives.log" "$out/train.log" && { echo "soak: errors, see $out/"; exit 1; }
exit $status
