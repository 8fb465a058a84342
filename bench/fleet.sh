#!/usr/bin/env bash
# Benchmark (not a test): a fleet of 10 nodes from one 4 GiB base, from a warm cache.
# Reports, in one run: time for 1 node and for 10 nodes (raw, and zst), the marginal cost of
# a node, `zstd -T0` of one full raw image, bytes written per node, and peak RSS; and the
# time of one SHA-256 of a raw image and of an .img.zst, with the fleet times that hashing
# alone would allow (every output gets a .sha256).
#
# Uses the base image bench/build.sh creates in $BENCH_DIR (run it once first). Node images
# are reflink clones of their prepared base on filesystems that share extents (XFS, btrfs)
# and full sparse copies elsewhere (ext4): BENCH_DIR on such a filesystem shows the difference.
# Needs: zstd, GNU time (apt-get install time).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pikube-bench}
BASE="$BENCH_DIR/base.img.xz"
BIN="$ROOT/target/release/pikube-image"
TIME=/usr/bin/time
JOBS=${JOBS:-2}

die() { echo "bench: $*" >&2; exit 1; }
[ -s "$BASE" ] || die "$BASE is missing: run bench/build.sh once to create the base image"
[ -x "$TIME" ] || die "GNU time is missing: apt-get install -y time"
command -v zstd >/dev/null || die "zstd is missing"

(cd "$ROOT" && cargo build --release --bins)

WORK="$BENCH_DIR/fleet"
rm -rf "$WORK"
mkdir -p "$WORK"
export PIKUBE_CACHE_DIR="$WORK/cache"
{
    echo 'cluster: bench'
    echo 'admin: { user: pi, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c bench@example"] }'
    echo 'k3s: { install: false }'
    echo 'nodes:'
    echo '  - { name: n01, board: rpi4, role: server, ip: 10.0.0.1 }'
    for i in 02 03 04 05 06 07 08 09 10; do
        echo "  - { name: n$i, board: rpi4, role: agent, ip: 10.0.0.$((10#$i)) }"
    done
} >"$WORK/cluster.yaml"

# run NAME ARGS...: one timed build into a fresh output directory; sets WALL (s), RSS (KiB),
# WRITTEN (bytes the process wrote to storage, from GNU time's file system outputs).
run() {
    local name=$1
    shift
    rm -rf "$WORK/out"
    sync
    "$TIME" -f '%e %M %O' -o "$WORK/time.log" "$@" >/dev/null 2>"$WORK/$name.log" ||
        { cat "$WORK/$name.log" >&2; die "$name failed"; }
    read -r WALL RSS OUTS < <(tail -n 1 "$WORK/time.log")
    WRITTEN=$((OUTS * 512))
    printf '%-22s wall %8.2f s   peak RSS %5d MiB   written %8.1f MiB\n' \
        "$name" "$WALL" $((RSS / 1024)) "$(awk -v b="$WRITTEN" 'BEGIN { print b / 1048576 }')"
}

BUILD=("$BIN" build --config "$WORK/cluster.yaml" --image "$BASE" --out "$WORK/out" --offline --jobs "$JOBS")

echo "== warming the cache (prepared bases and frame indexes for both roles)"
"${BUILD[@]}" --all --format raw,zst >/dev/null 2>&1 || die "warm-up build failed"

echo "== measurements (warm cache, $JOBS jobs)"
run "1 node raw" "${BUILD[@]}" --node n02 --format raw
W1=$WALL
run "10 nodes raw" "${BUILD[@]}" --all --format raw
W10=$WALL R10=$RSS B10=$WRITTEN
run "1 node zst" "${BUILD[@]}" --node n02 --format zst
Z1=$WALL
run "10 nodes zst" "${BUILD[@]}" --all --format zst
Z10=$WALL RZ=$RSS
"${BUILD[@]}" --node n02 --format raw >/dev/null 2>&1
mv "$WORK/out/n02.img" "$WORK/n02.img"
run "zstd -T0 (one image)" zstd -T0 -q -f -o "$WORK/full.zst" "$WORK/n02.img"
ZSTD=$WALL
# Every output gets a .sha256, so each node costs at least one SHA-256 of its raw image (or
# of its .img.zst): this machine's SHA-256 rate (SHA-NI where the CPU has it, as in the
# build) in bytes per second, from `openssl speed`.
command -v openssl >/dev/null || die "openssl is missing (for the SHA-256 rate)"
SHA_RATE=$(openssl speed -seconds 2 -bytes 1048576 -evp sha256 2>/dev/null |
    awk 'END { sub(/k$/, "", $2); print $2 * 1000 }')
IMG_BYTES=$(stat -c %s "$WORK/n02.img")
ZST_BYTES=$(stat -c %s "$WORK/full.zst")

awk -v w1="$W1" -v w10="$W10" -v z1="$Z1" -v z10="$Z10" -v zs="$ZSTD" -v b10="$B10" \
    -v r10="$R10" -v rz="$RZ" -v rate="$SHA_RATE" -v ib="$IMG_BYTES" -v zb="$ZST_BYTES" \
    -v cores="$(nproc)" -v jobs="$JOBS" 'BEGIN {
    printf "\n10 nodes raw / 1 node raw:      %5.2fx   (goal <= 1.5x)\n", w10 / w1
    printf "10 nodes zst / 1 node zst:      %5.2fx   (goal <= 2x)\n", z10 / z1
    pz = (z10 - z1) / 9
    printf "marginal node, zst:             %6.2f s = %4.2fx zstd -T0 of one image (goal <= 0.2x)\n", pz, pz / zs
    printf "marginal node, raw:             %6.2f s\n", (w10 - w1) / 9
    printf "written per node (raw fleet):   %6.1f MiB\n", b10 / 10 / 1048576
    m = r10 > rz ? r10 : rz
    printf "peak RSS:                       %6d MiB   (goal < 300 MiB)\n", m / 1024
    # Hashing alone: nine more images, spread over the cores the build may use.
    p = cores < jobs ? cores : jobs
    hr = ib / rate
    hz = zb / rate
    printf "SHA-256 of one image, one .zst: %6.2f s, %4.2f s (%.0f MB/s)\n", hr, hz, rate / 1e6
    printf "floor from hashing, 10 raw:     %6.2f s = %4.2fx 1 node raw\n", w1 + 9 * hr / p, (w1 + 9 * hr / p) / w1
    printf "floor from hashing, 10 zst:     %6.2f s = %4.2fx 1 node zst\n", z1 + 9 * hz / p, (z1 + 9 * hz / p) / z1
}'
rm -rf "$WORK/out"
