#!/usr/bin/env bash
# ThreadSanitizer and AddressSanitizer runs of the transport and collective tests (the code with
# threads, sockets and raw buffers): each builds into its own .build-<sanitizer> folder, so the normal
# build is untouched. Multi-process tests run their ranks from the same instrumented build, and a
# sanitizer report makes that rank, and so the test, fail.
# usage: scripts/sanitize.sh [thread|address ...]   (default: both). Slow: a full instrumented build each.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh >/dev/null 2>&1 || SKIP_BUILD=1 scripts/setup.sh
scripts/get-data.sh >/dev/null
sanitizers=("$@"); [ ${#sanitizers[@]} -gt 0 ] || sanitizers=(thread address)
filter='TransportTests|CollectivesTests|CompressedCollectiveTests|FaultTests|ScheduleTests|GemmTests/testThreads'
status=0
. "$root/scripts/lib/swift-tmp.bash"
for s in "${sanitizers[@]}"; do
  echo "## -sanitize=$s"
  swift_in_build_tmp build -c release --build-path ".build-$s" --sanitize="$s" --build-tests >&2
  if TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" \
     swift_in_build_tmp test -c release --build-path ".build-$s" --sanitize="$s" --skip-build --disable-swift-testing --filter "$filter" 2>&1 \
     | tee "runs/sanitize-$s.log" | grep -E "Executed [0-9]+ tests|WARNING: ThreadSanitizer|ERROR: AddressSanitizer|error:"; then :; fi
  if grep -qE "WARNING: ThreadSanitizer|ERROR: AddressSanitizer|with [1-9][0-9]* failures" "runs/sanitize-$s.log"; then
    echo "sanitize: $s found problems (runs/sanitize-$s.log)"; status=1
  else
    echo "sanitize: $s clean"
  fi
done
exit $status
