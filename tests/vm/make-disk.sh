#!/bin/sh
# Lays out a root file system tarball (from build-rootfs.sh) like Ubuntu's preinstalled
# Raspberry Pi image and compresses it:
#
#   make-disk.sh ROOTFS.tar OUT.img.xz
#
# MBR; p1 FAT32 (type 0x0c, boot flag) labelled system-boot at sector 2048 with config.txt,
# cmdline.txt, the default NoCloud seed and the kernel and initrd as vmlinuz / initrd.img;
# p2 ext4 labelled writable (Ubuntu 24.04 feature set) holding the root file system.
# Adds the fact reporter (pikube-facts and its unit) to the root file system.
# Needs root (to keep file owners), mkfs.vfat, mtools, mkfs.ext4, sfdisk and xz.
set -eu

tarball=$1
out=$2

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pikube-disk.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir "$root"
tar -x -p --numeric-owner --xattrs --xattrs-include='*' -f "$tarball" -C "$root"

# The unit that reports facts on the console after first boot, then powers off.
here=$(cd "$(dirname "$0")" && pwd)
install -m 0755 "$here/pikube-facts" "$root/usr/local/sbin/pikube-facts"
install -m 0644 "$here/pikube-facts.service" "$root/etc/systemd/system/pikube-facts.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../pikube-facts.service "$root/etc/systemd/system/multi-user.target.wants/pikube-facts.service"

kernel=$(ls "$root"/boot/vmlinuz-* | sort | tail -n 1)
initrd=$(ls "$root"/boot/initrd.img-* | sort | tail -n 1)
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "make-disk.sh: no kernel or initrd in $tarball" >&2; exit 1; }

boot=$work/boot
mkdir "$boot"
cp "$kernel" "$boot/vmlinuz"
cp "$initrd" "$boot/initrd.img"
printf '[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ncmdline=cmdline.txt\n' >"$boot/config.txt"
# One line, as the firmware wants it. net.ifnames=0 gives the NIC the name a Pi has (eth0).
printf 'console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc net.ifnames=0\n' >"$boot/cmdline.txt"
printf 'instance_id: cloud-image\n' >"$boot/meta-data"
cat >"$boot/user-data" <<'SEED'
#cloud-config
# Default seed of the stock image: user ubuntu, password ubuntu, to be changed at first login.
chpasswd:
  expire: true
  users:
    - name: ubuntu
      password: ubuntu
      type: text
ssh_pwauth: true
SEED
cat >"$boot/network-config" <<'SEED'
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      optional: true
SEED

fat_mib=256
fat=$work/fat.img
mkfs.vfat -F 32 -n system-boot -C "$fat" $((fat_mib * 1024)) >/dev/null
for f in "$boot"/*; do
  mcopy -o -i "$fat" "$f" "::$(basename "$f")"
done

# Ubuntu sizes the root file system about 1.5 times its contents.
used_mib=$(du -s -m "$root" | cut -f1)
ext_mib=$((used_mib * 3 / 2 + 128))
ext=$work/ext4.img
mkfs.ext4 -q -F -L writable -b 4096 -I 256 -m 5 \
  -O has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file,^metadata_csum_seed \
  -E root_owner=0:0 -d "$root" "$ext" "${ext_mib}M"

disk=$work/disk.img
p1=2048
p1_len=$((fat_mib * 2048))
p2=$((p1 + p1_len))
p2_len=$((ext_mib * 2048))
truncate -s $(((p2 + p2_len) * 512)) "$disk"
printf 'label: dos\nunit: sectors\n\nstart=%s, size=%s, type=c, bootable\nstart=%s, size=%s, type=83\n' \
  "$p1" "$p1_len" "$p2" "$p2_len" | sfdisk -q "$disk"
dd if="$fat" of="$disk" bs=1M seek=$((p1 / 2048)) conv=notrunc,sparse status=none
dd if="$ext" of="$disk" bs=1M seek=$((p2 / 2048)) conv=notrunc,sparse status=none

xz -T2 -1 -c "$disk" >"$out.tmp"
mv "$out.tmp" "$out"
