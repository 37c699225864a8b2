#!/usr/bin/env bash
# The project's test command: set-up, data, then every test (XCTest, release build: the numeric and
# multi-process tests need optimized code to finish in minutes on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/get-data.sh"
cd "$root"
exec swift test -c release --disable-swift-testing "$@"
