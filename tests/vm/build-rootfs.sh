#!/bin/sh
# Builds the Debian root file system that stands in for a Raspberry Pi OS image in the
# end-to-end boot test (tests/boot.rs), as a tarball.
#
#   build-rootfs.sh ARCH MIRROR OUT.tar
#
# ARCH is amd64 or arm64 (arm64 needs qemu-user-static registered with binfmt_misc when the
# host is not arm64). MIRROR is the URL of a Debian archive (the one apt already uses).
# Needs root and mmdebstrap. The package list lives in this file on purpose: the test keys its
# cache on a hash of this script. The console fact reporter is added by make-disk.sh.
#
# net-tools: cloud-init's ifupdown renderer writes static routes as `route add` commands.
# nbd-client: its initramfs hook and nbdroot= script mount the root of a netbooted node.
# en_US.UTF-8 is generated up front because Debian's locale-gen, unlike Ubuntu's, ignores the
# locale cloud-init passes to it (update-locale then rejects a locale that was never built).
# The initramfs hook goes in before the kernel, so the initramfs is generated once, from a
# short list (MODULES=list: the hook's virtio/ext4/vfat modules and nbd-client's), and dpkg
# does not unpack the driver trees no QEMU guest loads: under qemu-user for arm64,
# initramfs-tools' default MODULES=most over the full module tree takes half an hour.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
arch=$1
mirror=$2
out=$3

case "$arch" in
amd64) kernel=linux-image-amd64 ;;
arm64) kernel=linux-image-arm64 ;;
*) echo "build-rootfs.sh: unsupported architecture '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac

packages="systemd,systemd-sysv,udev,dbus,cloud-init,openssh-server,sudo,locales,$kernel,\
initramfs-tools,zstd,iproute2,ifupdown,isc-dhcp-client,netbase,procps,kmod,tzdata,\
cloud-guest-utils,net-tools,nbd-client"

# Everything below runs with the new tree as $1.
mmdebstrap \
  --variant=apt \
  --format=tar \
  --arch="$arch" \
  --include="$packages" \
  --aptopt='Acquire::Retries "3"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/gpu/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/media/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/wireless/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/ethernet/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/can/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/net/usb/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/infiniband/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/staging/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/bluetooth/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/iio/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/usb/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/hid/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/input/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/video/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/mtd/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/isdn/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/hwmon/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/mmc/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/scsi/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/ata/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/drivers/nfc/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/sound/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/net/wireless/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/net/mac80211/*' \
  --dpkgopt='path-exclude=/lib/modules/*/kernel/net/bluetooth/*' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/hooks"' \
  --essential-hook="copy-in '$here/initramfs-virtio-hook' /etc/initramfs-tools/hooks" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo MODULES=list > "$1/etc/initramfs-tools/conf.d/modules-list"' \
  --customize-hook='echo testpc-stock > "$1/etc/hostname"' \
  --customize-hook='printf "%s\n" "LABEL=writable / ext4 defaults 0 1" "LABEL=system-boot /boot/firmware vfat defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook='mkdir -p "$1/boot/firmware"' \
  --customize-hook='printf "%s\n" "datasource_list: [ NoCloud, None ]" "datasource:" "  NoCloud:" "    fs_label: system-boot" > "$1/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg"' \
  --customize-hook='sed -i "s/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/" "$1/etc/locale.gen" && chroot "$1" locale-gen' \
  --customize-hook='for d in gpu media net/wireless net/ethernet/mellanox net/ethernet/intel infiniband staging sound bluetooth iio; do rm -rf "$1"/usr/lib/modules/*/kernel/drivers/$d "$1"/usr/lib/modules/*/kernel/$d; done; rm -rf "$1"/usr/lib/modules/*/kernel/sound' \
  --customize-hook='for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod "$(basename "$k")"; done' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$out" "deb $mirror bookworm main"
