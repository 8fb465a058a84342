#!/bin/sh
# Lays out an arm64 root file system tarball (from build-rootfs.sh) like an Armbian image for
# an Allwinner board (Orange Pi Zero 3) and compresses it:
#
#   make-disk-armbian.sh ROOTFS.tar OUT.img.xz
#
# MBR; one ext4 partition labelled armbi_root from 4 MiB holding /boot; stand-in SPL bytes at
# 8 KiB. /boot as Armbian's kernel packages leave it: vmlinuz-<version> (an uncompressed
# Image), uInitrd-<version> (U-Boot legacy ramdisk), dtb-<version>/ with Image, uInitrd and
# dtb linking to them, armbianEnv.txt, and a boot.scr
# that works the way Armbian's boot-sun50i-next.cmd does (env import of armbianEnv.txt,
# root=${rootdev}, ${extraargs}, docker_optimizations) adapted to QEMU's virt machine: the
# device tree is the one QEMU passes to U-Boot, the console is ttyAMA0. U-Boot (Debian's
# u-boot-qemu) finds /boot/boot.scr on the virtio disk by its standard boot scan.
#
# No cloud-init (disabled), root's password is Armbian's well-known 1234, root autologin on
# the consoles, /root/.not_logged_in_yet, a host key made at image build time, and a
# stand-in armbian-firstrun.service that, like the real one, replaces the host keys unless
# /etc/default/armbian-firstrun says OPENSSHD_REGENERATE_HOST_KEYS=false. systemd-networkd
# runs the network (Armbian renders its netplan files to networkd).
#
# Adds the fact reporter (pikube-facts and its unit), ordered after pikube-image's first
# boot unit, with a few Armbian-specific facts before it.
# Needs root (to keep file owners), mkimage (u-boot-tools), mkfs.ext4, sfdisk, ssh-keygen,
# openssl and xz.
set -eu

tarball=$1
out=$2

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pikube-disk.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir "$root"
tar -x -p --numeric-owner --xattrs --xattrs-include='*' -f "$tarball" -C "$root"

here=$(cd "$(dirname "$0")" && pwd)
install -m 0755 "$here/pikube-facts" "$root/usr/local/sbin/pikube-facts"
install -m 0644 "$here/pikube-facts.service" "$root/etc/systemd/system/pikube-facts.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../pikube-facts.service "$root/etc/systemd/system/multi-user.target.wants/pikube-facts.service"

# Facts only this layout has, printed before the common ones.
cat >"$root/usr/local/sbin/pikube-facts-armbian" <<'EOF'
#!/bin/sh
exec >/dev/console 2>&1
fact() { printf 'PIKUBE-FACT %s=%s\n' "$1" "$2"; }
fact root.passwd "$(passwd -S root | awk '{print $2}')"
fact root.shadow-field "$(getent shadow root | cut -d: -f2 | cut -c1)"
fact not-logged-in-yet "$(test -e /root/.not_logged_in_yet && echo present || echo absent)"
fact autologin "$(cat /etc/systemd/system/getty@.service.d/override.conf /etc/systemd/system/serial-getty@.service.d/override.conf 2>/dev/null | grep -c -- --autologin)"
fact armbian-firstrun "$(systemctl is-active armbian-firstrun.service 2>/dev/null)"
fact armbian-firstrun.regenerated "$(cat /var/lib/armbian-firstrun-standin 2>/dev/null || echo never-ran)"
fact ssh-host-ed25519 "$(ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null | awk '{print $2}')"
fact unit.pikube-firstboot.service "$(systemctl is-enabled pikube-firstboot.service 2>/dev/null)/$(systemctl show -P Result pikube-firstboot.service 2>/dev/null)"
fact pikube-firstboot.done "$(test -e /etc/pikube/firstboot.done && echo present || echo absent)"
fact cloud-init.disabled "$(test -e /etc/cloud/cloud-init.disabled && echo yes || echo no)"
exit 0
EOF
chmod 0755 "$root/usr/local/sbin/pikube-facts-armbian"
mkdir -p "$root/etc/systemd/system/pikube-facts.service.d"
cat >"$root/etc/systemd/system/pikube-facts.service.d/armbian.conf" <<'EOF'
[Unit]
After=pikube-firstboot.service armbian-firstrun.service ssh.service
[Service]
ExecStartPre=/usr/local/sbin/pikube-facts-armbian
EOF

# Armbian's first-run service, reduced to what matters here: it replaces the SSH host keys
# unless told not to.
cat >"$root/usr/lib/armbian-firstrun-standin" <<'EOF'
#!/bin/sh
OPENSSHD_REGENERATE_HOST_KEYS=true
[ -r /etc/default/armbian-firstrun ] && . /etc/default/armbian-firstrun
if [ "$OPENSSHD_REGENERATE_HOST_KEYS" = false ]; then
  echo kept >/var/lib/armbian-firstrun-standin
else
  rm -f /etc/ssh/ssh_host_*
  ssh-keygen -A >/dev/null
  echo replaced >/var/lib/armbian-firstrun-standin
fi
EOF
chmod 0755 "$root/usr/lib/armbian-firstrun-standin"
cat >"$root/etc/systemd/system/armbian-firstrun.service" <<'EOF'
[Unit]
Description=Armbian first run (stand-in: host key regeneration only)
Before=ssh.service
ConditionPathExists=!/var/lib/armbian-firstrun-standin
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/armbian-firstrun-standin
[Install]
WantedBy=multi-user.target
EOF
ln -sf ../armbian-firstrun.service "$root/etc/systemd/system/multi-user.target.wants/armbian-firstrun.service"
printf '# Armbian first run settings\nOPENSSHD_REGENERATE_HOST_KEYS=true\n' >"$root/etc/default/armbian-firstrun"

# No cloud-init on Armbian.
touch "$root/etc/cloud/cloud-init.disabled"
# systemd-networkd runs the network; ifupdown stays idle.
mkdir -p "$root/etc/systemd/system/sysinit.target.wants" "$root/etc/systemd/system/sockets.target.wants" \
  "$root/etc/systemd/system/network-online.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-networkd.socket "$root/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"

# Accounts and logins as Armbian ships them.
hash=$(openssl passwd -6 -salt armbianroot 1234)
sed -i "s|^root:[^:]*:|root:$hash:|" "$root/etc/shadow"
printf 'PRESET_NET_CHANGE_DEFAULTS="0"\n' >"$root/root/.not_logged_in_yet"
for unit in getty@ serial-getty@; do
  mkdir -p "$root/etc/systemd/system/$unit.service.d"
  printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --noissue --autologin root %%I $TERM\nType=idle\n' \
    >"$root/etc/systemd/system/$unit.service.d/override.conf"
done
ssh-keygen -q -t ed25519 -N '' -C root@orangepizero3 -f "$root/etc/ssh/ssh_host_ed25519_key"
echo orangepizero3 >"$root/etc/hostname"

kernel=$(ls "$root"/boot/vmlinuz-* | sort | tail -n 1)
kver=${kernel##*/vmlinuz-}
[ -f "$root/boot/initrd.img-$kver" ] || { echo "make-disk-armbian.sh: no initrd for $kver in $tarball" >&2; exit 1; }
# Armbian's /boot/vmlinuz-<version> is an uncompressed Image, which booti loads as is, with
# Image, uInitrd and dtb as links to the versioned files.
if gzip -t "$kernel" 2>/dev/null; then
  gzip -dc "$kernel" >"$work/Image"
  cat "$work/Image" >"$kernel"
fi
ln -sf "vmlinuz-$kver" "$root/boot/Image"
mkdir -p "$root/boot/dtb-$kver"
if [ -d "$root/usr/lib/linux-image-$kver/allwinner" ]; then
  cp -a "$root/usr/lib/linux-image-$kver/allwinner" "$root/boot/dtb-$kver/"
fi
ln -sf "dtb-$kver" "$root/boot/dtb"
mkimage -q -A arm64 -O linux -T ramdisk -C gzip -n uInitrd -d "$root/boot/initrd.img-$kver" "$root/boot/uInitrd-$kver"
ln -sf "uInitrd-$kver" "$root/boot/uInitrd"

uuid=$(cat /proc/sys/kernel/random/uuid)
printf 'UUID=%s / ext4 defaults,noatime,commit=120,errors=remount-ro 0 1\ntmpfs /tmp tmpfs defaults,nosuid 0 0\n' \
  "$uuid" >"$root/etc/fstab"
# net.ifnames=0: the NIC is eth0, as on Armbian's Allwinner boards with this kernel.
printf 'verbosity=1\nbootlogo=false\nconsole=serial\ndisp_mode=1920x1080p60\noverlay_prefix=sun50i-h616\nrootdev=UUID=%s\nrootfstype=ext4\nextraargs=net.ifnames=0\nusbstoragequirks=0x2537:0x1066:u,0x2537:0x1068:u\n' \
  "$uuid" >"$root/boot/armbianEnv.txt"
cat >"$root/boot/boot.cmd" <<'EOF'
# Boot script in the manner of Armbian's boot-sun50i-next.cmd, for QEMU's virt machine.
# Settings come from armbianEnv.txt next to this script.
setenv load_addr "0x50000000"
setenv rootdev "/dev/vda1"
setenv verbosity "1"
setenv rootfstype "ext4"
setenv console "both"
setenv docker_optimizations "on"

echo "Boot script loaded from ${devtype} ${devnum}"
if test -e ${devtype} ${devnum}:${distro_bootpart} ${prefix}armbianEnv.txt; then
	load ${devtype} ${devnum}:${distro_bootpart} ${load_addr} ${prefix}armbianEnv.txt
	env import -t ${load_addr} ${filesize}
fi
if test "${console}" = "display" || test "${console}" = "both"; then setenv consoleargs "console=ttyAMA0 console=tty1"; fi
if test "${console}" = "serial"; then setenv consoleargs "console=ttyAMA0"; fi

setenv bootargs "root=${rootdev} rootwait rootfstype=${rootfstype} ${consoleargs} consoleblank=0 loglevel=${verbosity} usb-storage.quirks=${usbstoragequirks} ${extraargs} ${extraboardargs}"
if test "${docker_optimizations}" = "on"; then setenv bootargs "${bootargs} cgroup_enable=memory swapaccount=1"; fi

load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} ${prefix}uInitrd
load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${prefix}Image
booti ${kernel_addr_r} ${ramdisk_addr_r} ${fdtcontroladdr}
EOF
mkimage -q -C none -A arm64 -T script -d "$root/boot/boot.cmd" "$root/boot/boot.scr"

used_mib=$(du -s -m "$root" | cut -f1)
ext_mib=$((used_mib * 3 / 2 + 128))
ext=$work/ext4.img
# Armbian's root: ext4 with the defaults of its build host, 2 % reserved.
mkfs.ext4 -q -F -L armbi_root -U "$uuid" -b 4096 -m 2 \
  -O ^orphan_file,^metadata_csum_seed \
  -E root_owner=0:0 -d "$root" "$ext" "${ext_mib}M"

disk=$work/disk.img
p1=8192
p1_len=$((ext_mib * 2048))
truncate -s $(((p1 + p1_len) * 512)) "$disk"
printf 'label: dos\nunit: sectors\n\nstart=%s, size=%s, type=83\n' "$p1" "$p1_len" | sfdisk -q "$disk"
# sunxi boot0 header magic at 8 KiB, where the boot ROM looks for the SPL.
printf '\024\000\000\352eGON.BT0 stand-in u-boot-sunxi-with-spl.bin\n' | dd of="$disk" bs=8k seek=1 conv=notrunc status=none
dd if="$ext" of="$disk" bs=1M seek=$((p1 / 2048)) conv=notrunc,sparse status=none

xz -T2 -1 -c "$disk" >"$out.tmp"
mv "$out.tmp" "$out"
