#!/usr/bin/env bash
# One-time (idempotent) set-up: system headers the package links against, then a release build.
#   libnuma-dev  -> Sources/CNuma (rank pinning)     zlib1g-dev -> Sources/CZlib (gzip MNIST files)
#   iproute2     -> scripts/netns-cluster.sh (multi-host tests on network namespaces)
# Usage: scripts/setup.sh            (SKIP_BUILD=1 to install only)
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need=()
[ -f /usr/include/numa.h ] || need+=(libnuma-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
# iproute2 (ip netns, tc) for the multi-host tests; they skip, saying why, when it cannot be had.
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]} with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]}; install them (e.g. 'sudo apt-get install -y ${need[*]}') and rerun" >&2
    exit 1
  fi
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cd "$root"
  . "$root/scripts/lib/swift-tmp.bash"
  swift_in_build_tmp build -c release
fi
