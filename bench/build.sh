#!/usr/bin/env bash
# Benchmark (not a test): time the build of one node image from a realistic 4 GiB
# Ubuntu-raspi-like base image against plain `xz -T0 -dc`, which is the floor for any
# tool that has to decompress the image. Prints wall time, ratio and peak RSS.
#
# The base image is made once and cached in $BENCH_DIR (default /var/tmp/pikube-bench).
# Needs: xz, sfdisk, mkfs.vfat, mtools, mkfs.ext4, GNU time (apt-get install time).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pikube-bench}
IMAGE_GIB=${IMAGE_GIB:-4}
DATA_MIB=${DATA_MIB:-1536}
BOOT_MIB=512
BIN="$ROOT/target/release/pikube-image"
TIME=/usr/bin/time

die() { echo "bench: $*" >&2; exit 1; }

for t in xz zstd sfdisk mkfs.vfat mcopy mkfs.ext4 python3; do
    command -v "$t" >/dev/null || die "$t is missing (install xz-utils, fdisk, dosfstools, mtools, e2fsprogs)"
done
[ -x "$TIME" ] || die "GNU time is missing: apt-get install -y time"

mkdir -p "$BENCH_DIR"
BASE="$BENCH_DIR/base.img.xz"

echo "== cargo build --release"
(cd "$ROOT" && cargo build --release --bins --example decompress)

make_base() {
    local stage="$BENCH_DIR/stage" img="$BENCH_DIR/base.img"
    rm -rf "$stage" "$img"
    echo "== building the base image: ${IMAGE_GIB} GiB, about ${DATA_MIB} MiB of data (once)"
    # Root tree: real binaries and libraries (semi-compressible, like a real root fs),
    # copied (not hard-linked) until DATA_MIB is reached.
    mkdir -p "$stage/etc/cloud/cloud.cfg.d" "$stage/boot/firmware" "$stage/usr"
    printf 'ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n' >"$stage/etc/os-release"
    printf 'ubuntu\n' >"$stage/etc/hostname"
    printf 'LABEL=writable\t/\text4\tdefaults\t0 1\nLABEL=system-boot\t/boot/firmware\tvfat\tdefaults\t0 1\n' >"$stage/etc/fstab"
    printf 'datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    fs_label: system-boot\n' \
        >"$stage/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"
    # Whole files from /usr, listed with their sizes and cut at DATA_MIB, copied with tar.
    local list="$BENCH_DIR/files.list" n=0 have=0
    while [ "$have" -lt "$DATA_MIB" ]; do
        # (awk stops reading early, which find may report as an error: ignore it)
        { find /usr/bin /usr/lib /usr/share -xdev -type f -size +1k -printf '%s %p\n' 2>/dev/null || true; } |
            awk -v want=$(((DATA_MIB - have) * 1048576)) '{ if (sum >= want) exit; sum += $1; sub(/^[0-9]+ /, ""); print }' >"$list"
        [ -s "$list" ] || die "no files found under /usr to fill the image"
        mkdir -p "$stage/usr/copy$n"
        # Files that vanish or cannot be read are skipped: tar then exits non-zero.
        tar -cf - --verbatim-files-from -T "$list" 2>/dev/null | tar -xf - -C "$stage/usr/copy$n" || true
        local before=$have
        have=$(du -sm "$stage" | cut -f1)
        [ "$have" -gt "$before" ] || die "copying files from /usr into $stage made no progress"
        n=$((n + 1))
    done
    rm -f "$list"
    echo "   root tree: $(du -sm "$stage" | cut -f1) MiB"

    local total=$((IMAGE_GIB * 1024 * 1024 * 1024))
    local boot_start=2048 boot_sectors=$((BOOT_MIB * 2048))
    local root_start=$((boot_start + boot_sectors))
    local root_sectors=$((total / 512 - root_start))
    truncate -s "$total" "$img"
    printf 'label: dos\nunit: sectors\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
        "$boot_start" "$boot_sectors" "$root_start" "$root_sectors" |
        sfdisk --quiet --no-reread --no-tell-kernel "$img"
    mkfs.vfat -F 32 -n system-boot --offset="$boot_start" "$img" $((BOOT_MIB * 1024)) >/dev/null 2>&1
    local fw="$BENCH_DIR/fw"
    mkdir -p "$fw"
    head -c 2300000 /dev/urandom >"$fw/start4.elf"
    head -c 9000000 /dev/urandom >"$fw/vmlinuz"
    head -c 30000000 /dev/urandom >"$fw/initrd.img"
    printf '[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n' >"$fw/config.txt"
    printf 'console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n' >"$fw/cmdline.txt"
    printf '#cloud-config\nchpasswd:\n  expire: true\n  users:\n  - {name: ubuntu, password: ubuntu, type: text}\nssh_pwauth: true\n' >"$fw/user-data"
    printf 'instance_id: cloud-image\n' >"$fw/meta-data"
    printf 'network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n' >"$fw/network-config"
    mcopy -i "$img@@$((boot_start * 512))" "$fw"/* ::/
    mkfs.ext4 -q -F -b 4096 -I 256 -T default -L writable \
        -O ^orphan_file,^metadata_csum_seed \
        -E offset=$((root_start * 512)) -d "$stage" "$img" "$((root_sectors / 2))k"
    rm -rf "$stage" "$fw"
    echo "== xz -T0 (multi-block), this takes a few minutes"
    xz -T0 -c "$img" >"$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    rm -f "$img"
}

[ -s "$BASE" ] || make_base
ls -l "$BASE"

# Runs "$@" under GNU time $REPEAT times (default 3); keeps the run with the smallest wall
# time and sets WALL (s), CPU (user+sys, s) and RSS (KiB). CPU time is reported because
# wall time on a shared machine depends on what else runs; the ratio of both is printed.
REPEAT=${REPEAT:-3}
timed() {
    local log="$BENCH_DIR/time.log" i w u s m
    WALL="" CPU="" RSS=""
    for ((i = 0; i < REPEAT; i++)); do
        sync
        "$TIME" -f '%e %U %S %M' -o "$log" "$@" || { cat "$log" >&2; die "failed: $*"; }
        read -r w u s m < <(tail -n 1 "$log")
        if [ -z "$WALL" ] || awk -v a="$w" -v b="$WALL" 'BEGIN { exit !(a < b) }'; then
            WALL=$w RSS=$m
            CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')
        fi
        [ -n "${AFTER_RUN:-}" ] && eval "$AFTER_RUN"
    done
}

report() { printf '%-24s wall %8.2f s   cpu %8.2f s   peak RSS %6d MiB\n' "$1" "$2" "$3" $(($4 / 1024)); }
ratio() { awk -v n="$1" -v a="$2" -v b="$3" -v c="$4" -v d="$5" \
    'BEGIN { printf "%-24s wall %7.2fx     cpu %7.2fx\n", n, a / b, c / d }'; }

OUT="$BENCH_DIR/out"
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== xz -T0 -dc base.img.xz > out.img (best of $REPEAT)"
AFTER_RUN='rm -f "$OUT/xz.img"' timed sh -c "xz -T0 -dc '$BASE' > '$OUT/xz.img'"
XZ_WALL=$WALL XZ_CPU=$CPU XZ_RSS=$RSS

echo "== decompress stage alone: examples/decompress (best of $REPEAT)"
AFTER_RUN='rm -f "$OUT/stage.img"' timed "$ROOT/target/release/examples/decompress" "$BASE" "$OUT/stage.img"
DEC_WALL=$WALL DEC_CPU=$CPU DEC_RSS=$RSS

report "xz -T0 -dc" "$XZ_WALL" "$XZ_CPU" "$XZ_RSS"
report "decompress stage" "$DEC_WALL" "$DEC_CPU" "$DEC_RSS"
ratio "decompress stage / xz" "$DEC_WALL" "$XZ_WALL" "$DEC_CPU" "$XZ_CPU"

if ! "$BIN" build --help 2>/dev/null | grep -q -- "--node"; then
    die "'pikube-image build' is not available in this build: only the decompress stage was measured"
fi

# The pipeline slice (decompress, partition table, plan, FAT seed, emit) without the k3s
# payload, which needs downloads. A lone node is built straight into its output file (no
# prepared base is cached for it), so every run decompresses, like xz does.
cat >"$BENCH_DIR/cluster.yaml" <<'YAML'
cluster: bench
admin: { user: pi, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c bench@example"] }
k3s: { install: false }
nodes:
  - { name: n1, board: rpi4, role: server }
YAML
export PIKUBE_CACHE_DIR="$BENCH_DIR/cache"
rm -rf "$PIKUBE_CACHE_DIR"

echo "== pikube-image build (best of $REPEAT)"
AFTER_RUN='ls -l "$OUT"; rm -rf "$OUT" "$PIKUBE_CACHE_DIR"; mkdir -p "$OUT"' \
    timed "$BIN" build --config "$BENCH_DIR/cluster.yaml" --node n1 --image "$BASE" --out "$OUT" --offline
BUILD_WALL=$WALL BUILD_CPU=$CPU BUILD_RSS=$RSS

report "xz -T0 -dc" "$XZ_WALL" "$XZ_CPU" "$XZ_RSS"
report "decompress stage" "$DEC_WALL" "$DEC_CPU" "$DEC_RSS"
report "pikube-image build cold" "$BUILD_WALL" "$BUILD_CPU" "$BUILD_RSS"
ratio "build cold / xz" "$BUILD_WALL" "$XZ_WALL" "$BUILD_CPU" "$XZ_CPU"
echo "(goal: build at most 1.20x the wall time of xz -T0 -dc)"
rm -rf "$OUT"
