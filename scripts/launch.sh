#!/usr/bin/env bash
# torchrun-like launcher: scripts/launch.sh --nproc-per-node 2 -- configs/shakespeare-char.json [trainer options]
# Builds first if needed, then runs ddp-launch (see --help).
# --help: ddp-launch --help (when built), else this text.
case "${1:-}" in -h|--help|--version) [ -x "$(dirname "$0")/../.build/release/ddp-launch" ] && exec "$(dirname "$0")/../.build/release/ddp-launch" "$1"; sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$root/.build/release/ddp-launch" ] || [ ! -x "$root/.build/release/ddp-train" ]; then
  "$root/scripts/setup.sh" >&2
fi
"$root/scripts/get-data.sh" 2>/dev/null || true
exec "$root/.build/release/ddp-launch" "$@"
