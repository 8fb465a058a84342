#!/usr/bin/env bash
# Benchmark (not a test): write a 4 GiB image holding about 1.5 GiB of data to a loop device
# with `pikube-image flash` (which also reads every range back to verify it), next to
# `dd bs=4M conv=fsync` and `bmaptool copy` (which checks the image against its bmap as it
# reads, but does not read the device back), in the same run. Prints wall time, CPU time and
# throughput; the goal is pikube-image flash, verification included, faster than bmaptool.
#
# The image is a DOS-partitioned sparse file whose data extents are random bytes; it and its
# bmap (`bmaptool create`) are made once in $BENCH_DIR (default /var/tmp/pikube-bench).
# Needs root (losetup), bmap-tools, sfdisk, GNU time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pikube-bench}
IMAGE_GIB=${IMAGE_GIB:-4}
DATA_MIB=${DATA_MIB:-1536}
BIN="$ROOT/target/release/pikube-image"
TIME=/usr/bin/time
REPEAT=${REPEAT:-1}

die() { echo "bench: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it needs a loop device"
for t in losetup bmaptool sfdisk dd python3; do
    command -v "$t" >/dev/null || die "$t is missing (install mount, bmap-tools, fdisk, coreutils, python3)"
done
[ -x "$TIME" ] || die "GNU time is missing: apt-get install -y time"

mkdir -p "$BENCH_DIR"
IMG="$BENCH_DIR/flash.img"
BMAP="$BENCH_DIR/flash.img.bmap"
DEV_FILE="$BENCH_DIR/flash-device"

if [ "${BUILD:-1}" = 1 ]; then
    echo "== cargo build --release (BUILD=0 uses the binary as it is)"
    (cd "$ROOT" && cargo build --release --bin pikube-image)
fi
[ -x "$BIN" ] || die "$BIN is missing: run with BUILD=1"

make_image() {
    echo "== making a ${IMAGE_GIB} GiB image with ${DATA_MIB} MiB of data (once)"
    rm -f "$IMG" "$BMAP"
    truncate -s "${IMAGE_GIB}G" "$IMG"
    printf 'label: dos\nstart=2048, size=1048576, type=c\nstart=1050624, type=83\n' |
        sfdisk --quiet --no-reread --no-tell-kernel "$IMG"
    # Data extents of 64 MiB spread over the disk, like a root filesystem's used blocks.
    local extents=$((DATA_MIB / 64)) gap
    gap=$(((IMAGE_GIB * 1024 - 64) / extents))
    for ((i = 0; i < extents; i++)); do
        dd if=/dev/urandom of="$IMG" bs=1M seek=$((8 + i * gap)) count=64 conv=notrunc status=none
    done
    bmaptool create -o "$BMAP" "$IMG"
}

[ -s "$IMG" ] && [ -s "$BMAP" ] || make_image
echo "image: $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) of data"

LOOP=""
cleanup() { [ -n "$LOOP" ] && losetup -d "$LOOP"; rm -f "$DEV_FILE"; }
trap cleanup EXIT
truncate -s 0 "$DEV_FILE"
truncate -s "$((IMAGE_GIB + 1))G" "$DEV_FILE"
LOOP=$(losetup -f --show "$DEV_FILE")
echo "device: $LOOP on $DEV_FILE"

# Runs "$@" under GNU time $REPEAT times; keeps the fastest run: WALL, CPU (user+sys, s).
# The image stays in the page cache for every tool alike (dd reads it first).
timed() {
    local log="$BENCH_DIR/time.log" i w u s
    WALL="" CPU=""
    for ((i = 0; i < REPEAT; i++)); do
        sync
        "$TIME" -f '%e %U %S' -o "$log" "$@" >/dev/null || { cat "$log" >&2; die "failed: $*"; }
        read -r w u s < <(tail -n 1 "$log")
        if [ -z "$WALL" ] || awk -v a="$w" -v b="$WALL" 'BEGIN { exit !(a < b) }'; then
            WALL=$w
            CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')
        fi
    done
}

report() {
    awk -v n="$1" -v w="$2" -v c="$3" -v mib="$4" \
        'BEGIN { printf "%-34s wall %7.2f s   cpu %7.2f s   %7.0f MiB/s of image\n", n, w, c, mib / w }'
}

IMG_MIB=$((IMAGE_GIB * 1024))

echo "== dd bs=4M conv=fsync"
timed dd if="$IMG" of="$LOOP" bs=4M conv=fsync status=none
DD_WALL=$WALL DD_CPU=$CPU

echo "== bmaptool copy"
timed bmaptool -q copy --bmap "$BMAP" "$IMG" "$LOOP"
BT_WALL=$WALL BT_CPU=$CPU

echo "== pikube-image flash (verified)"
timed "$BIN" flash "$IMG" "$LOOP" --bmap "$BMAP" --allow-fixed --yes
PK_WALL=$WALL PK_CPU=$CPU

echo "== pikube-image flash --no-verify"
timed "$BIN" flash "$IMG" "$LOOP" --bmap "$BMAP" --allow-fixed --yes --no-verify
NV_WALL=$WALL NV_CPU=$CPU

cmp -n "$((IMAGE_GIB << 30))" "$IMG" "$LOOP" || die "the device does not hold the image"

echo
report "dd bs=4M conv=fsync" "$DD_WALL" "$DD_CPU" "$IMG_MIB"
report "bmaptool copy" "$BT_WALL" "$BT_CPU" "$IMG_MIB"
report "pikube-image flash (verified)" "$PK_WALL" "$PK_CPU" "$IMG_MIB"
report "pikube-image flash --no-verify" "$NV_WALL" "$NV_CPU" "$IMG_MIB"
awk -v a="$PK_WALL" -v b="$BT_WALL" -v c="$DD_WALL" \
    'BEGIN { printf "flash (verified) / bmaptool copy: %.2fx wall; / dd: %.2fx wall\n", a / b, a / c }'
echo "(goal: pikube-image flash, verification included, faster than bmaptool copy)"
