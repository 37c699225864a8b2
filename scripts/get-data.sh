#!/usr/bin/env bash
# Fills the data directory (default data/, or $1, or $SWIFT_DDP_DATA) with tinyshakespeare and the
# MNIST 10k test set. Copies from ../shared/data beside the project when present, else downloads from
# the datasets' public URLs; verifies SHA-256 either way and refuses a file that does not match.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-${SWIFT_DDP_DATA:-$root/data}}
shared="$root/../shared/data"
mkdir -p "$dest"

files=(
  "tinyshakespeare.txt 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
  "mnist-t10k-images-idx3-ubyte.gz 8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6 https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz"
  "mnist-t10k-labels-idx1-ubyte.gz f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6 https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
)

for entry in "${files[@]}"; do
  read -r name sum url <<<"$entry"
  target="$dest/$name"
  if [ -f "$target" ] && echo "$sum  $target" | sha256sum -c --status; then continue; fi
  if [ -f "$shared/$name" ]; then
    cp "$shared/$name" "$target.tmp"
  else
    echo "get-data: downloading $name" >&2
    curl -fsSL --retry 3 -o "$target.tmp" "$url" || { echo "get-data: could not download $url" >&2; exit 1; }
  fi
  if ! echo "$sum  $target.tmp" | sha256sum -c --status; then
    rm -f "$target.tmp"
    echo "get-data: $name does not match its SHA-256 ($sum); refusing it" >&2
    exit 1
  fi
  mv "$target.tmp" "$target"
done
echo "get-data: data ready in $dest" >&2
