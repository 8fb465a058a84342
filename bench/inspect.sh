#!/usr/bin/env bash
# Benchmark (not a test): `pikube-image inspect` on a node's `.img.zst` against a whole
# `zstd -dc` of the same file, in the same run. The image is IMAGE_GIB (default 3) GiB with
# a mostly empty root filesystem, as a fresh node image is; inspect decodes only as far as
# the partition table and the files it shows lie, and prints how far that was.
#
# Usage: bench/inspect.sh   (needs zstd, sfdisk, mkfs.vfat, mtools, mkfs.ext4, GNU time)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE_GIB=${IMAGE_GIB:-3}
BIN="$ROOT/target/release/pikube-image"
TIME=/usr/bin/time
die() { echo "bench: $*" >&2; exit 1; }
for t in zstd sfdisk mkfs.vfat mcopy mkfs.ext4 ssh-keygen; do
    command -v "$t" >/dev/null || die "$t is missing (install zstd, fdisk, dosfstools, mtools, e2fsprogs, openssh-client)"
done
[ -x "$TIME" ] || die "GNU time is missing: apt-get install -y time"

echo "== cargo build --release"
(cd "$ROOT" && cargo build --release --bin pikube-image)

WORK=$(mktemp -d /var/tmp/pikube-inspect-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "== base image: ${IMAGE_GIB} GiB, 512 MiB FAT boot partition, ext4 root with /etc and 200 MiB of /usr"
mkdir -p stage/etc/cloud stage/usr/copy fw
printf 'ID=ubuntu\nPRETTY_NAME="Ubuntu 24.04 LTS"\n' >stage/etc/os-release
{ find /usr/lib -xdev -type f -size +1k -printf '%s %p\n' 2>/dev/null || true; } |
    awk -v want=$((200 * 1048576)) '{ if (sum >= want) exit; sum += $1; sub(/^[0-9]+ /, ""); print }' >files.list
tar -cf - --verbatim-files-from -T files.list 2>/dev/null | tar -xf - -C stage/usr/copy || true
total=$((IMAGE_GIB * 1024 * 1024 * 1024))
boot_start=2048 boot_sectors=$((512 * 2048))
root_start=$((boot_start + boot_sectors))
root_sectors=$((total / 512 - root_start))
truncate -s "$total" base.img
printf 'label: dos\nunit: sectors\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n' \
    "$boot_start" "$boot_sectors" "$root_start" "$root_sectors" |
    sfdisk --quiet --no-reread --no-tell-kernel base.img
mkfs.vfat -F 32 -n system-boot --offset="$boot_start" base.img $((512 * 1024)) >/dev/null 2>&1
printf '[all]\ncmdline=cmdline.txt\n' >fw/config.txt
printf 'console=tty1 root=LABEL=writable rootwait\n' >fw/cmdline.txt
printf 'instance_id: cloud-image\n' >fw/meta-data
printf '#cloud-config\n' >fw/user-data
mcopy -i "base.img@@$((boot_start * 512))" fw/* ::/
mkfs.ext4 -q -F -L writable -d stage -E offset=$((root_start * 512)) base.img $((root_sectors / 2))k

ssh-keygen -q -t ed25519 -N '' -f key
cat >cluster.yaml <<YAML
cluster: bench
admin: { ssh_authorized_keys: ["$(cat key.pub)"] }
k3s: { install: false }
nodes:
  - { name: n1, board: rpi4, role: server }
YAML
echo "== pikube-image build --format zst"
"$BIN" build --all --image base.img --format zst --out out >/dev/null 2>&1
ls -l out/n1.img.zst | awk '{ printf "   n1.img.zst: %d MiB\n", $5 / 1048576 }'

cat out/n1.img.zst >/dev/null # in the page cache for both
echo "== zstd -dc n1.img.zst > /dev/null"
$TIME -f '   wall %e s, user %U s, peak RSS %M KiB' zstd -q -dc out/n1.img.zst >/dev/null
echo "== pikube-image inspect n1.img.zst"
$TIME -f '   wall %e s, user %U s, peak RSS %M KiB' "$BIN" inspect out/n1.img.zst >inspect.txt
grep -E 'node n1|compressed:' inspect.txt | sed 's/^/   /'
