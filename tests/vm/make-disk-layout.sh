#!/bin/sh
# Lays out a root file system tarball (from build-rootfs.sh) like another Raspberry Pi OS
# image of the catalog and compresses it:
#
#   make-disk-layout.sh LAYOUT ROOTFS.tar OUT.img.xz
#
# LAYOUT is one of
#   ubuntu-26.04  Ubuntu 26.04's A/B boot: MBR, p1 FAT32 system-boot at sector 2048 with
#                 config.txt at its root (`[all] os_prefix=current/`, `[tryboot]
#                 os_prefix=new/`) and kernel, initrd and cmdline.txt under current/; p2 ext4
#                 writable with 26.04's features (orphan_file, metadata_csum_seed).
#   raspios       Raspberry Pi OS trixie: MBR with a disk id, p1 FAT32 bootfs from 8 MiB with
#                 kernel8.img / initramfs8 (auto_initramfs=1), p2 ext4 rootfs (^64bit,
#                 ^huge_file) found by PARTUUID in cmdline.txt and fstab; sshd disabled,
#                 /etc/machine-id `uninitialized`, cloud-init's seed read from bootfs.
# Adds the fact reporter (pikube-facts and its unit) to the root file system.
# Needs root (to keep file owners), mkfs.vfat, mtools, mkfs.ext4, sfdisk and xz.
set -eu

layout=$1
tarball=$2
out=$3

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pikube-layout.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir "$root"
tar -x -p --numeric-owner --xattrs --xattrs-include='*' -f "$tarball" -C "$root"

here=$(cd "$(dirname "$0")" && pwd)
install -m 0755 "$here/pikube-facts" "$root/usr/local/sbin/pikube-facts"
install -m 0644 "$here/pikube-facts.service" "$root/etc/systemd/system/pikube-facts.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../pikube-facts.service "$root/etc/systemd/system/multi-user.target.wants/pikube-facts.service"

kernel=$(ls "$root"/boot/vmlinuz-* | sort | tail -n 1)
initrd=$(ls "$root"/boot/initrd.img-* | sort | tail -n 1)
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "make-disk-layout.sh: no kernel or initrd in $tarball" >&2; exit 1; }

boot=$work/boot
mkdir "$boot"
printf 'instance_id: cloud-image\n' >"$boot/meta-data"
printf '#cloud-config\n{}\n' >"$boot/user-data"
printf 'network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n' >"$boot/network-config"

case "$layout" in
ubuntu-26.04)
  fat_label=system-boot
  ext_label=writable
  fat_start=2048
  fat_mib=512
  ext_features=has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,orphan_file,metadata_csum_seed
  label_id=
  mkdir "$boot/current"
  cp "$kernel" "$boot/current/vmlinuz"
  cp "$initrd" "$boot/current/initrd.img"
  printf 'good\n' >"$boot/current/state"
  printf '[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n[all]\nos_prefix=current/\n\n[tryboot]\nos_prefix=new/\n\n[all]\ndtparam=watchdog=on\n' >"$boot/config.txt"
  # One line; net.ifnames=0 gives the NIC the name a Pi has (eth0).
  printf 'console=tty1 root=LABEL=writable rootfstype=ext4 panic=10 rootwait fixrtc net.ifnames=0\n' >"$boot/current/cmdline.txt"
  ;;
raspios)
  fat_label=bootfs
  ext_label=rootfs
  fat_start=16384
  fat_mib=512
  ext_features=^64bit,^huge_file,orphan_file,^metadata_csum_seed
  disk_id=6c3a4d1e
  label_id="label-id: 0x$disk_id"
  cp "$kernel" "$boot/kernel8.img"
  cp "$initrd" "$boot/initramfs8"
  printf 'auto_initramfs=1\narm_64bit=1\n\n[cm4]\notg_mode=1\n\n[all]\n' >"$boot/config.txt"
  printf 'console=tty1 root=PARTUUID=%s-02 rootfstype=ext4 fsck.repair=yes rootwait net.ifnames=0\n' "$disk_id" >"$boot/cmdline.txt"
  printf '%s\n' "proc /proc proc defaults 0 0" \
    "PARTUUID=$disk_id-01 /boot/firmware vfat defaults 0 2" \
    "PARTUUID=$disk_id-02 / ext4 defaults,noatime 0 1" >"$root/etc/fstab"
  # The seed is read from bootfs (the stand-in names its label; Raspberry Pi OS names the
  # mounted directory).
  printf '%s\n' "datasource_list: [ NoCloud, None ]" "datasource:" "  NoCloud:" "    fs_label: bootfs" \
    >"$root/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"
  # sshd ships disabled; systemd makes the machine id at first boot.
  rm -f "$root/etc/systemd/system/multi-user.target.wants/ssh.service" "$root/etc/systemd/system/sshd.service"
  printf 'uninitialized\n' >"$root/etc/machine-id"
  ;;
*)
  echo "make-disk-layout.sh: unknown layout '$layout' (ubuntu-26.04 or raspios)" >&2
  exit 2
  ;;
esac

fat=$work/fat.img
mkfs.vfat -F 32 -n "$fat_label" -C "$fat" $((fat_mib * 1024)) >/dev/null
( cd "$boot" && find . -mindepth 1 -type d | sed 's|^\./||' ) | while read -r d; do
  mmd -i "$fat" "::$d"
done
( cd "$boot" && find . -type f | sed 's|^\./||' ) | while read -r f; do
  mcopy -o -i "$fat" "$boot/$f" "::$f"
done

used_mib=$(du -s -m "$root" | cut -f1)
ext_mib=$((used_mib * 3 / 2 + 128))
ext=$work/ext4.img
mkfs.ext4 -q -F -L "$ext_label" -b 4096 -I 256 -m 5 -O "$ext_features" \
  -E root_owner=0:0 -d "$root" "$ext" "${ext_mib}M"

disk=$work/disk.img
p1=$fat_start
p1_len=$((fat_mib * 2048))
p2=$((p1 + p1_len))
p2_len=$((ext_mib * 2048))
truncate -s $(((p2 + p2_len) * 512)) "$disk"
{
  printf 'label: dos\n'
  [ -z "$label_id" ] || printf '%s\n' "$label_id"
  printf 'unit: sectors\n\nstart=%s, size=%s, type=c, bootable\nstart=%s, size=%s, type=83\n' \
    "$p1" "$p1_len" "$p2" "$p2_len"
} | sfdisk -q "$disk"
dd if="$fat" of="$disk" bs=1M seek=$((p1 / 2048)) conv=notrunc,sparse status=none
dd if="$ext" of="$disk" bs=1M seek=$((p2 / 2048)) conv=notrunc,sparse status=none

xz -T2 -1 -c "$disk" >"$out.tmp"
mv "$out.tmp" "$out"
