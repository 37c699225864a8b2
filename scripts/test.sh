#!/usr/bin/env bash
# The project's test command: set-up, data, a Python with PyTorch for the launcher's foreign-program
# test, then every test (XCTest, release build: the numeric and multi-process tests need optimized
# code to finish in minutes on 2 cores). As root it installs Open MPI, Slurm and munge for the
# scheduler tests (they skip, saying why, without them) and stops the test Slurm at the end.
# Ends with the list of skipped tests and why.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/get-data.sh"
sched=()
command -v mpirun >/dev/null || sched+=(openmpi-bin)
command -v slurmctld >/dev/null || sched+=(slurm-wlm)
command -v munged >/dev/null || sched+=(munge)
if [ ${#sched[@]} -gt 0 ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing ${sched[*]} for the scheduler tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${sched[@]}"; } >/dev/null 2>&1 \
    || echo "test: could not install ${sched[*]}: the scheduler tests will skip" >&2
fi
trap '"$root/scripts/slurm-local.sh" down >/dev/null 2>&1 || true' EXIT
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "test: installing CPU PyTorch into $venv (for the launcher's PyTorch test)" >&2
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q "torch==2.13.0+cpu"; } >&2 \
    || echo "test: no PyTorch: LauncherOptionTests.testPyTorchScriptRunsUnderTheLauncher will skip" >&2
fi
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c "import safetensors" 2>/dev/null; then
  "$venv/bin/pip" install -q safetensors >&2 \
    || echo "test: no safetensors: ZeROTests.testConsolidatedCheckpointLoadsInPythonSafetensors will skip" >&2
fi
cd "$root"
log=$(mktemp)
status=0
. "$root/scripts/lib/swift-tmp.bash"
swift_in_build_tmp test -c release --disable-swift-testing "$@" 2>&1 | tee "$log" || status=$?
skipped=$(grep -E "^Test Case '.*' skipped" "$log" || true)
if [ -n "$skipped" ]; then
  echo "== skipped tests (and why) =="
  grep -iE "skipped" "$log" | grep -vE "^Test Suite|Executed" | sed 's/^/  /' || true
else
  echo "== no test was skipped =="
fi
rm -f "$log"
exit "$status"
