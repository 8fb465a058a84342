#!/usr/bin/env bash
# Benchmark (not a test): `build --netboot` of 1 and 10 Raspberry Pi nodes next to the plain
# disk-image build of the same nodes, in the same run and from the same warm cache. Reports
# wall time and disk space used (`du`, hard links counted once) of each, and what the network
# boot tree adds on top: `--netboot` always writes the raw disk images too, since each node's
# root is its own image over NBD.
#
# The base image (Ubuntu-raspi-like, with an initramfs holding Debian's nbd-client hook
# output, as --netboot requires) is made once in $BENCH_DIR (default /var/tmp/pikube-bench).
# Sizes: IMAGE_MIB (default 1536) and DATA_MIB of root fs data (default 256); 10 raw images
# of that size must fit on the disk of $BENCH_DIR.
# Needs: xz, sfdisk, mkfs.vfat, mtools, mkfs.ext4, cpio, gzip, GNU time (apt-get install time).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pikube-bench}
IMAGE_MIB=${IMAGE_MIB:-1536}
DATA_MIB=${DATA_MIB:-256}
BOOT_MIB=512
BIN="$ROOT/target/release/pikube-image"
TIME=/usr/bin/time
NBD_SCRIPT=/usr/share/initramfs-tools/scripts/local-top/nbd

die() { echo "bench: $*" >&2; exit 1; }

for t in xz sfdisk mkfs.vfat mcopy mkfs.ext4 cpio gzip; do
    command -v "$t" >/dev/null || die "$t is missing (install xz-utils, fdisk, dosfstools, mtools, e2fsprogs, cpio, gzip)"
done
[ -x "$TIME" ] || die "GNU time is missing: apt-get install -y time"

mkdir -p "$BENCH_DIR"
BASE="$BENCH_DIR/netboot-base-${IMAGE_MIB}m.img.xz"

# An initramfs as Debian's nbd-client package leaves it: its binary and the local-top/nbd
# script (this machine's, or a stand-in), plus 30 MB of modules-like filler; gzip'ed newc.
make_initramfs() {
    local dir="$1/initramfs"
    mkdir -p "$dir/bin" "$dir/scripts/local-top" "$dir/lib/modules"
    if [ -f "$NBD_SCRIPT" ]; then cp "$NBD_SCRIPT" "$dir/scripts/local-top/nbd"; else printf '#!/bin/sh\n# nbdroot=\n' >"$dir/scripts/local-top/nbd"; fi
    head -c 200000 /dev/urandom >"$dir/bin/nbd-client"
    head -c 30000000 /dev/urandom >"$dir/lib/modules/filler.ko"
    (cd "$dir" && find . | sed 's|^\./||' | grep -v '^\.$' | cpio --quiet -o -H newc | gzip -1) >"$2"
    rm -rf "$dir"
}

make_base() {
    local stage="$BENCH_DIR/nb-stage" img="$BENCH_DIR/nb-base.img" fw="$BENCH_DIR/nb-fw"
    rm -rf "$stage" "$img" "$fw"
    echo "== building the base image: ${IMAGE_MIB} MiB, about ${DATA_MIB} MiB of data (once)"
    mkdir -p "$stage/etc/cloud/cloud.cfg.d" "$stage/boot/firmware" "$stage/usr/copy" "$fw"
    printf 'ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n' >"$stage/etc/os-release"
    printf 'ubuntu\n' >"$stage/etc/hostname"
    printf 'LABEL=writable\t/\text4\tdefaults\t0 1\nLABEL=system-boot\t/boot/firmware\tvfat\tdefaults\t0 1\n' >"$stage/etc/fstab"
    printf 'datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    fs_label: system-boot\n' \
        >"$stage/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"
    # Whole files from /usr (real binaries: semi-compressible, like a root fs) up to DATA_MIB.
    { find /usr/bin /usr/lib -xdev -type f -size +1k -printf '%s %p\n' 2>/dev/null || true; } |
        awk -v want=$((DATA_MIB * 1048576)) '{ if (sum >= want) exit; sum += $1; sub(/^[0-9]+ /, ""); print }' \
            >"$BENCH_DIR/nb-files.list"
    tar -cf - --verbatim-files-from -T "$BENCH_DIR/nb-files.list" 2>/dev/null | tar -xf - -C "$stage/usr/copy" || true
    rm -f "$BENCH_DIR/nb-files.list"
    echo "   root tree: $(du -sm "$stage" | cut -f1) MiB"

    local total=$((IMAGE_MIB * 1048576))
    local boot_start=2048 boot_sectors=$((BOOT_MIB * 2048))
    local root_start=$((boot_start + boot_sectors))
    local root_sectors=$((total / 512 - root_start))
    truncate -s "$total" "$img"
    printf 'label: dos\nunit: sectors\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
        "$boot_start" "$boot_sectors" "$root_start" "$root_sectors" |
        sfdisk --quiet --no-reread --no-tell-kernel "$img"
    mkfs.vfat -F 32 -n system-boot --offset="$boot_start" "$img" $((BOOT_MIB * 1024)) >/dev/null 2>&1
    head -c 52000 /dev/urandom >"$fw/bootcode.bin"
    head -c 2300000 /dev/urandom >"$fw/start4.elf"
    head -c 5500 /dev/urandom >"$fw/fixup4.dat"
    head -c 56000 /dev/urandom >"$fw/bcm2711-rpi-4-b.dtb"
    head -c 9000000 /dev/urandom >"$fw/vmlinuz"
    make_initramfs "$BENCH_DIR" "$fw/initrd.img"
    printf '[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n' >"$fw/config.txt"
    printf 'console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n' >"$fw/cmdline.txt"
    printf '#cloud-config\nssh_pwauth: true\n' >"$fw/user-data"
    printf 'instance_id: cloud-image\n' >"$fw/meta-data"
    printf 'network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n' >"$fw/network-config"
    mcopy -i "$img@@$((boot_start * 512))" "$fw"/* ::/
    mkfs.ext4 -q -F -b 4096 -I 256 -T default -L writable \
        -O ^orphan_file,^metadata_csum_seed \
        -E offset=$((root_start * 512)) -d "$stage" "$img" "$((root_sectors / 2))k"
    rm -rf "$stage" "$fw"
    echo "== xz -T0"
    xz -T0 -c "$img" >"$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    rm -f "$img"
}

[ -s "$BASE" ] || make_base
ls -l "$BASE"

echo "== cargo build --release"
(cd "$ROOT" && cargo build --release --bins)

WORK="$BENCH_DIR/netboot"
rm -rf "$WORK"
mkdir -p "$WORK"
export PIKUBE_CACHE_DIR="$WORK/cache"

# cluster N: an inventory of N Raspberry Pi 4 nodes with what their network boot needs.
cluster() {
    echo 'cluster: bench'
    echo 'admin: { user: pi, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c bench@example"] }'
    echo 'k3s: { install: false }'
    echo 'network: { gateway: 10.0.0.254, dns: [10.0.0.254], prefix: 24 }'
    echo 'netboot: { server: 10.0.0.250 }'
    echo 'nodes:'
    local i role=server
    for ((i = 1; i <= $1; i++)); do
        printf '  - { name: n%02d, board: rpi4, role: %s, ip: 10.0.0.%d, mac: "dc:a6:32:00:00:%02x", serial: "%08x" }\n' \
            "$i" "$role" "$i" "$i" $((0x2b7e0000 + i))
        role=agent
    done
}

# kib DIR...: disk space used by the directories together, hard links counted once (KiB).
kib() { du -s -k -c "$@" | tail -n 1 | cut -f1; }

# run NAME ARGS...: one timed build into a fresh out/ (and netboot/); sets WALL (s).
run() {
    local name=$1
    shift
    rm -rf "$WORK/out" "$WORK/nb"
    sync
    "$TIME" -f '%e' -o "$WORK/time.log" "$@" >/dev/null 2>"$WORK/$name.log" ||
        { cat "$WORK/$name.log" >&2; die "$name failed"; }
    WALL=$(tail -n 1 "$WORK/time.log")
}

echo "== warming the cache (prepared bases for both roles)"
cluster 2 >"$WORK/cluster.yaml"
"$BIN" build --config "$WORK/cluster.yaml" --image "$BASE" --out "$WORK/out" --offline --all \
    --format raw >/dev/null 2>"$WORK/warm.log" || { cat "$WORK/warm.log" >&2; die "warm-up build failed"; }

ROWS=()
for n in 1 10; do
    cluster "$n" >"$WORK/cluster.yaml"
    BUILD=("$BIN" build --config "$WORK/cluster.yaml" --image "$BASE" --out "$WORK/out" --offline --all --format raw)
    run "plain-$n" "${BUILD[@]}"
    P_WALL=$WALL P_KIB=$(kib "$WORK/out")
    run "netboot-$n" "${BUILD[@]}" --netboot "$WORK/nb"
    N_WALL=$WALL N_KIB=$(kib "$WORK/out" "$WORK/nb") T_KIB=$(kib "$WORK/nb")
    N_FILES=$(find "$WORK/nb" -type f | wc -l)
    N_INODES=$(find "$WORK/nb" -type f -printf '%i\n' | sort -u | wc -l)
    ROWS+=("$n $P_WALL $P_KIB $N_WALL $N_KIB $T_KIB $N_FILES $N_INODES")
done
rm -rf "$WORK/out" "$WORK/nb"

echo
echo "== $(nproc) cores, base image ${IMAGE_MIB} MiB, warm cache; raw images (sparse) counted as allocated"
printf '%-6s %-26s %9s %11s\n' nodes build "wall s" "disk MiB"
for row in "${ROWS[@]}"; do
    read -r n pw pk nw nk tk files inodes <<<"$row"
    awk -v n="$n" -v pw="$pw" -v pk="$pk" -v nw="$nw" -v nk="$nk" -v tk="$tk" -v f="$files" -v i="$inodes" 'BEGIN {
        printf "%-6d %-26s %9.2f %11.1f\n", n, "raw", pw, pk / 1024
        printf "%-6d %-26s %9.2f %11.1f\n", n, "raw + --netboot", nw, nk / 1024
        printf "%-6d %-26s %+9.2f %+11.1f   (%d files in the tree, %d distinct)\n", n, "added by the netboot tree", nw - pw, tk / 1024, f, i
    }'
done
