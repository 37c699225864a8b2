#!/usr/bin/env bash
# Fuzzes every parser that reads outside bytes: frame decoder, handshake, store protocol, config decoder,
# checkpoint reader, MNIST reader. Uses libFuzzer (swiftc -sanitize=fuzzer, built into .build-fuzz) and
# falls back to the seeded random-input harness when that cannot build (FUZZ_MODE=seeded forces it).
# The repo keeps a small corpus in fuzz/corpus/TARGET (MERGE=1 folds new coverage back into it,
# minimized); crashing inputs land in fuzz/crashes/ and become regression tests in fuzz/regressions/.
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, all six)
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(frame handshake store config checkpoint mnist)
mode=${FUZZ_MODE:-libfuzzer}
if [ "$mode" = libfuzzer ]; then
  if ! swift build -c release --build-path .build-fuzz --product ddp-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING >&2; then
    echo "fuzz: libFuzzer build failed; using the seeded random-input harness" >&2
    mode=seeded
  fi
fi
[ "$mode" = seeded ] && { [ -x .build/release/ddp-fuzz ] || swift build -c release --product ddp-fuzz >&2; }
mkdir -p fuzz/crashes runs/fuzz
echo "| target | engine | seconds | executions | exec/s | corpus (repo / after) | crashes |"
echo "|---|---|---|---|---|---|---|"
status=0
for t in "${targets[@]}"; do
  work="runs/fuzz/$t"; mkdir -p "$work" "fuzz/corpus/$t"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  before=$(ls "fuzz/corpus/$t" | wc -l)
  crashes_before=$(ls fuzz/crashes | wc -l)
  if [ "$mode" = libfuzzer ]; then
    log=$(FUZZ_TARGET=$t .build-fuzz/release/ddp-fuzz -max_total_time="$seconds" -max_len=4096 -timeout=10 \
          -artifact_prefix="fuzz/crashes/$t-" "$work" 2>&1) || status=1
    runs=$(echo "$log" | sed -n 's/^Done \([0-9]*\) runs.*/\1/p' | tail -1)
    if [ "${MERGE:-0}" = 1 ]; then
      mkdir -p "runs/fuzz/$t-min"
      FUZZ_TARGET=$t .build-fuzz/release/ddp-fuzz -merge=1 "runs/fuzz/$t-min" "fuzz/corpus/$t" "$work" >/dev/null 2>&1 || true
      rm -rf "fuzz/corpus/$t" && mv "runs/fuzz/$t-min" "fuzz/corpus/$t"
    fi
  else
    log=$(.build/release/ddp-fuzz "$t" --seconds "$seconds" --corpus "$work" --crash-dir fuzz/crashes 2>&1) || status=1
    runs=$(echo "$log" | sed -n 's/.*: \([0-9]*\) inputs in.*/\1/p' | tail -1)
  fi
  runs=${runs:-0}
  crashes=$(( $(ls fuzz/crashes | wc -l) - crashes_before ))
  echo "| $t | $mode | $seconds | $runs | $(( runs / (seconds > 0 ? seconds : 1) )) | $before / $(ls "$work" | wc -l) | $crashes |"
  [ "$crashes" -eq 0 ] || { echo "fuzz: $t crashed; inputs in fuzz/crashes/" >&2; status=1; }
done
exit $status
