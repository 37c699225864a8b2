#!/usr/bin/env bash
# The main job on defaults: set-up, data, then the character-level Shakespeare GPT (nanoGPT's CPU recipe).
# Usage: scripts/train.sh [CONFIG] [ddp-train options...]   e.g. scripts/train.sh configs/mnist-mlp.json
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >&2
"$root/scripts/get-data.sh"
config=${1:-configs/shakespeare-char.json}
[ $# -gt 0 ] && shift
cd "$root"
exec .build/release/ddp-train train "$config" "$@"
