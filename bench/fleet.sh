#!/usr/bin/env bash
# Fleet artifacts: time to compress a 1 GiB sparse base (400 MiB of data taken from /usr)
# into a frame index, to splice one node that differs in 12 places of 3 KB, and, for
# comparison, `zstd -T0` / `xz -T0` on the whole node image. Sizes are printed too.
#
# Usage: bench/fleet.sh   (needs zstd and xz; takes a few minutes, mostly xz)
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=$(mktemp -d /var/tmp/pikube-fleet-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PIKUBE_BENCH_DIR="$WORK" cargo test --release -q -j 2 --test formats fleet_bench -- \
    --ignored --nocapture 2>&1 | grep '^bench'
