#!/usr/bin/env bash
# The main job on defaults: set-up, data, then the character-level Shakespeare GPT (nanoGPT's CPU
# recipe) trained data-parallel by 2 ranks through the launcher (6 sequences per rank = the recipe's
# global batch of 12).
# Usage: scripts/train.sh                      the main job (MAX_RESTARTS=K: restarts after a failure, default 1)
#        scripts/train.sh CONFIG [options...]  one process, e.g. scripts/train.sh configs/mnist-mlp.json
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh"
cd "$root"
if [ $# -eq 0 ]; then
  exec scripts/launch.sh --nproc-per-node 2 --max-restarts "${MAX_RESTARTS:-1}" -- configs/shakespeare-char-ddp.json
fi
config=$1
shift
exec .build/release/ddp-train train "$config" "$@"
