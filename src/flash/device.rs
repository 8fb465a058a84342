//! The disks of this machine as sysfs and /proc describe them: which are removable, what
//! they hold (the root filesystem, swap, mounts, the image being flashed), and the checks
//! that decide whether one may be written.
//!
//! Everything is read through a [`Host`], whose paths tests point at a fake tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::progress::human_bytes;

/// Where the kernel's view of disks and mounts is read.
#[derive(Debug, Clone)]
pub struct Host {
    /// sysfs (`/sys`): `block/<disk>`, `dev/block/<major>:<minor>`.
    pub sys: PathBuf,
    /// Device nodes (`/dev`).
    pub dev: PathBuf,
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
}

impl Host {
    /// This machine.
    pub fn real() -> Host {
        Host {
            sys: "/sys".into(),
            dev: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
        }
    }
}

/// How a disk is attached, from its sysfs path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Usb,
    Mmc,
    Nvme,
    Ata,
    Scsi,
    /// Loop, RAM, zram, device-mapper and other disks without hardware.
    Virtual,
    Other,
}

impl Transport {
    fn from_sys_path(p: &Path) -> Transport {
        let parts: Vec<String> = p
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let has = |f: &dyn Fn(&str) -> bool| parts.iter().any(|c| f(c));
        if has(&|c| c == "virtual") {
            Transport::Virtual
        } else if has(&|c| c.starts_with("usb")) {
            Transport::Usb
        } else if has(&|c| c.starts_with("mmc")) {
            Transport::Mmc
        } else if has(&|c| c.starts_with("nvme")) {
            Transport::Nvme
        } else if has(&|c| c.starts_with("ata")) {
            Transport::Ata
        } else if has(&|c| c.starts_with("host") || c.starts_with("target")) {
            Transport::Scsi
        } else {
            Transport::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Usb => "usb",
            Transport::Mmc => "mmc",
            Transport::Nvme => "nvme",
            Transport::Ata => "ata",
            Transport::Scsi => "scsi",
            Transport::Virtual => "virtual",
            Transport::Other => "other",
        }
    }
}

/// A partition of a disk.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub name: String,
    pub size: u64,
    /// Where it is mounted (empty when it is not).
    pub mountpoints: Vec<String>,
}

/// A whole disk.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Kernel name (`sdb`, `mmcblk0`).
    pub name: String,
    /// Device node (`/dev/sdb`).
    pub path: PathBuf,
    pub model: String,
    /// Bytes; 0 for a card reader without a card.
    pub size: u64,
    pub transport: Transport,
    /// sysfs `removable` flag (USB and MMC disks count as removable whatever it says).
    pub removable_flag: bool,
    pub read_only: bool,
    /// Where the disk itself (without a partition table) is mounted.
    pub mountpoints: Vec<String>,
    pub partitions: Vec<Partition>,
    /// Holds the root filesystem, swap, or a mount the system needs.
    #[serde(skip)]
    pub system: Option<String>,
}

impl Disk {
    /// Cards and USB disks: what `flash` writes without `--allow-fixed`.
    pub fn removable(&self) -> bool {
        self.removable_flag || matches!(self.transport, Transport::Usb | Transport::Mmc)
    }

    /// Every mount point on the disk or its partitions.
    pub fn all_mountpoints(&self) -> Vec<String> {
        self.mountpoints
            .iter()
            .chain(self.partitions.iter().flat_map(|p| &p.mountpoints))
            .cloned()
            .collect()
    }

    /// One line: path, model, size, transport.
    pub fn describe(&self) -> String {
        let model = match self.model.is_empty() {
            true => "unknown model".to_string(),
            false => self.model.clone(),
        };
        format!(
            "{} ({model}, {}, {})",
            self.path.display(),
            human_bytes(self.size),
            self.transport.name()
        )
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p).and_then(|s| s.parse().ok())
}

/// `major:minor` of a device.
pub type DevNum = (u32, u32);

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What is mounted and swapped, by device.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// (device, mount point) from mountinfo, in mount order.
    pub mounts: Vec<(DevNum, String)>,
    /// Block device names (kernel names) used as swap.
    pub swaps: BTreeSet<String>,
    /// Mount points whose device is not a block device sysfs knows, by the kernel name of
    /// their source (btrfs reports an anonymous device number).
    pub mounts_by_name: Vec<(String, String)>,
}

/// Mount points the running system needs: a disk holding one is never written.
const SYSTEM_MOUNTS: [&str; 8] = [
    "/",
    "/usr",
    "/var",
    "/home",
    "/boot",
    "/boot/efi",
    "/etc",
    "/opt",
];

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Usage {
    pub fn read(host: &Host) -> Result<Usage> {
        let text = fs::read_to_string(&host.mountinfo)
            .with_context(|| format!("cannot read {}", host.mountinfo.display()))?;
        let mut u = Usage::default();
        for line in text.lines() {
            // id parent major:minor root mountpoint options ... - fstype source superopts
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(dev), Some(mp)) = (f.get(2).and_then(|d| parse_devnum(d)), f.get(4)) else {
                continue;
            };
            let mp = unescape(mp);
            u.mounts.push((dev, mp.clone()));
            let dash = f.iter().position(|x| *x == "-");
            if let Some(src) = dash
                .and_then(|d| f.get(d + 2))
                .filter(|s| s.starts_with("/dev/"))
            {
                u.mounts_by_name
                    .push((unescape(src.trim_start_matches("/dev/")), mp));
            }
        }
        // A missing /proc/swaps means no swap support at all.
        if let Ok(text) = fs::read_to_string(&host.swaps) {
            for line in text.lines().skip(1) {
                let Some(path) = line.split_whitespace().next() else {
                    continue;
                };
                let path = unescape(path);
                match swap_device(host, Path::new(&path)) {
                    Some(name) => u.swaps.insert(name),
                    None => continue,
                };
            }
        }
        Ok(u)
    }
}

/// The kernel name of the block device a swap entry lives on: the device itself, or the one
/// holding a swap file.
fn swap_device(host: &Host, path: &Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(m) = fs::metadata(path) {
        let dev = match m.file_type().is_block_device() {
            true => m.rdev(),
            false => m.dev(),
        };
        if let Some(name) = name_of_devnum(host, (libc::major(dev), libc::minor(dev))) {
            return Some(name);
        }
    }
    let name = path.strip_prefix("/dev").ok()?.to_str()?.to_string();
    host.sys
        .join("class/block")
        .join(&name)
        .exists()
        .then_some(name)
}

/// The kernel name of block device `major:minor`, if sysfs knows it.
pub fn name_of_devnum(host: &Host, dev: DevNum) -> Option<String> {
    let link = host.sys.join(format!("dev/block/{}:{}", dev.0, dev.1));
    let real = fs::canonicalize(link).ok()?;
    Some(real.file_name()?.to_string_lossy().into_owned())
}

/// The sysfs directory of block device `name` (disk or partition).
fn sys_dir(host: &Host, name: &str) -> Option<PathBuf> {
    fs::canonicalize(host.sys.join("class/block").join(name))
        .or_else(|_| fs::canonicalize(host.sys.join("block").join(name)))
        .ok()
}

/// The whole disks under block device `name`: its disk when it is a partition, the disks
/// of its slaves when it is a device-mapper or RAID device.
pub fn disks_under(host: &Host, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        let Some(dir) = sys_dir(host, &n) else {
            continue;
        };
        if dir.join("partition").exists() {
            if let Some(parent) = dir.parent().and_then(|p| p.file_name()) {
                todo.push(parent.to_string_lossy().into_owned());
            }
            continue;
        }
        let slaves: Vec<String> = fs::read_dir(dir.join("slaves"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if slaves.is_empty() {
            out.insert(n);
        } else {
            todo.extend(slaves);
        }
    }
    out
}

/// Why each disk is one the system needs (root, swap, system mounts), by disk name.
fn system_disks(host: &Host, usage: &Usage) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |name: &str, why: String| {
        for d in disks_under(host, name) {
            out.push((d, why.clone()));
        }
    };
    for (dev, mp) in &usage.mounts {
        if !SYSTEM_MOUNTS.contains(&mp.as_str()) {
            continue;
        }
        let why = match mp.as_str() {
            "/" => "it holds the root filesystem (/)".to_string(),
            _ => format!("it holds the system mount {mp}"),
        };
        match name_of_devnum(host, *dev) {
            Some(n) => add(&n, why),
            None => {
                for (n, m) in &usage.mounts_by_name {
                    if m == mp {
                        add(n, why.clone());
                    }
                }
            }
        }
    }
    for s in &usage.swaps {
        add(s, format!("it holds swap space in use ({s})"));
    }
    out
}

/// Every whole disk sysfs lists, with what it holds.
pub fn disks(host: &Host) -> Result<Vec<Disk>> {
    let usage = Usage::read(host)?;
    let dir = host.sys.join("block");
    let rd = fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let system = system_disks(host, &usage);
    names
        .iter()
        .map(|n| disk_with(host, n, &usage, &system))
        .collect()
}

/// The disk `name` (kernel name of a whole disk).
pub fn disk(host: &Host, name: &str) -> Result<Disk> {
    let usage = Usage::read(host)?;
    let system = system_disks(host, &usage);
    disk_with(host, name, &usage, &system)
}

fn disk_with(host: &Host, name: &str, usage: &Usage, system: &[(String, String)]) -> Result<Disk> {
    let link = host.sys.join("block").join(name);
    let dir = fs::canonicalize(&link)
        .with_context(|| format!("{} is not a disk sysfs knows", link.display()))?;
    let mounts_of = |sub: &Path| -> Vec<String> {
        let Some(dev) = read_trim(&sub.join("dev")).and_then(|d| parse_devnum(&d)) else {
            return Vec::new();
        };
        let node = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut mps: Vec<String> = usage
            .mounts
            .iter()
            .filter(|(d, _)| *d == dev)
            .map(|(_, m)| m.clone())
            .collect();
        for (n, m) in &usage.mounts_by_name {
            if *n == node && !mps.contains(m) {
                mps.push(m.clone());
            }
        }
        mps
    };
    let mut partitions = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if !p.join("partition").exists() {
                continue;
            }
            partitions.push(Partition {
                name: e.file_name().to_string_lossy().into_owned(),
                size: read_u64(&p.join("size")).unwrap_or(0) * 512,
                mountpoints: mounts_of(&p),
            });
        }
    }
    partitions.sort_by_key(|p| natural_key(&p.name));
    let vendor = read_trim(&dir.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&dir.join("device/model"))
        .or_else(|| read_trim(&dir.join("device/name")))
        .unwrap_or_default();
    let model = match vendor.is_empty() || model.starts_with(&vendor) {
        true => model,
        false => format!("{vendor} {model}"),
    };
    let system = system
        .iter()
        .find(|(d, _)| d == name)
        .map(|(_, why)| why.clone());
    Ok(Disk {
        name: name.to_string(),
        path: host.dev.join(name),
        model,
        size: read_u64(&dir.join("size")).unwrap_or(0) * 512,
        transport: Transport::from_sys_path(&dir),
        removable_flag: read_u64(&dir.join("removable")) == Some(1),
        read_only: read_u64(&dir.join("ro")) == Some(1),
        mountpoints: mounts_of(&dir),
        partitions,
        system,
    })
}

/// `sdb10` after `sdb9`.
fn natural_key(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, num) = s.split_at(s.len() - digits);
    (head.to_string(), num.parse().unwrap_or(0))
}

/// The removable disks with a medium in them, for `flash --list`.
pub fn removable_disks(host: &Host) -> Result<Vec<Disk>> {
    Ok(disks(host)?
        .into_iter()
        .filter(|d| d.removable() && d.size > 0)
        .collect())
}

/// The disks with a medium in them that `flash --all --wait` takes for new cards.
pub fn present(host: &Host, allow_fixed: bool) -> BTreeSet<String> {
    let Ok(rd) = fs::read_dir(host.sys.join("block")) else {
        return BTreeSet::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = fs::canonicalize(e.path()).ok()?;
            let size = read_u64(&dir.join("size")).unwrap_or(0);
            let removable = read_u64(&dir.join("removable")) == Some(1)
                || matches!(
                    Transport::from_sys_path(&dir),
                    Transport::Usb | Transport::Mmc
                );
            (size > 0 && (removable || allow_fixed)).then_some(name)
        })
        .collect()
}

/// What the user allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Write disks that are not removable (internal disks, loop devices).
    pub fixed: bool,
    /// Unmount the disk's mounted partitions first.
    pub unmount: bool,
}

/// The refusals that leave `disk` untouched. `image_size` is what will be written;
/// `source_disks` the disks holding the image and its block map.
pub fn check(
    disk: &Disk,
    image_size: u64,
    source_disks: &BTreeSet<String>,
    allow: Allow,
) -> Result<()> {
    let path = disk.path.display();
    if let Some(why) = &disk.system {
        bail!("refusing to write {path}: {why}; it is never written");
    }
    if source_disks.contains(&disk.name) {
        bail!(
            "refusing to write {path}: it holds the image being flashed; copy the image to another disk first"
        );
    }
    let mounted = disk.all_mountpoints();
    if !mounted.is_empty() && !allow.unmount {
        bail!(
            "refusing to write {path}: it is mounted on {}; unmount it, or pass --unmount to have it unmounted",
            mounted.join(", ")
        );
    }
    if !disk.removable() && !allow.fixed {
        bail!(
            "refusing to write {}: it is not a removable disk (not USB or an SD card); pass --allow-fixed if you really mean this disk",
            disk.describe()
        );
    }
    if disk.read_only {
        bail!("refusing to write {path}: it is read-only (is the card's lock switch set?)");
    }
    if disk.size == 0 {
        bail!("refusing to write {path}: it has no medium (insert the card)");
    }
    if disk.size < image_size {
        bail!(
            "refusing to write {path}: it holds {} ({} bytes) but the image needs {} ({image_size} bytes); use a larger card",
            human_bytes(disk.size),
            disk.size,
            human_bytes(image_size)
        );
    }
    Ok(())
}

/// Unmounts every mount point of `disk` (deepest first).
pub fn unmount_all(disk: &Disk) -> Result<()> {
    let mut mps = disk.all_mountpoints();
    mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mp in mps {
        let c = std::ffi::CString::new(mp.as_bytes())
            .with_context(|| format!("mount point {mp:?} holds a NUL byte"))?;
        // SAFETY: umount2 reads the NUL-terminated path only.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "cannot unmount {mp} of {}: {e}; close what uses it (`fuser -vm {mp}`) and try again",
                disk.path.display()
            );
        }
    }
    Ok(())
}

/// The whole disks holding `path`'s filesystem.
pub fn disks_holding(host: &Host, path: &Path) -> BTreeSet<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::metadata(path) else {
        return BTreeSet::new();
    };
    let dev = m.dev();
    match name_of_devnum(host, (libc::major(dev), libc::minor(dev))) {
        Some(n) => disks_under(host, &n),
        None => {
            // Filesystems with anonymous device numbers (btrfs, overlay): their source.
            let Ok(usage) = Usage::read(host) else {
                return BTreeSet::new();
            };
            let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let best = usage
                .mounts_by_name
                .iter()
                .filter(|(_, mp)| canon.starts_with(mp))
                .max_by_key(|(_, mp)| mp.len());
            best.map(|(n, _)| disks_under(host, n)).unwrap_or_default()
        }
    }
}

/// What a DEVICE argument names.
#[derive(Debug)]
pub enum TargetKind {
    /// A whole disk, by kernel name.
    Disk(String),
    /// A regular file, or a path that does not exist yet.
    File,
}

/// Tells a whole disk from a partition, a file or something else.
pub fn target_kind(host: &Host, path: &Path) -> Result<TargetKind> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TargetKind::File),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if m.file_type().is_file() {
        return Ok(TargetKind::File);
    }
    if !m.file_type().is_block_device() {
        bail!(
            "refusing to write {}: it is neither a disk nor a regular file",
            path.display()
        );
    }
    let dev = (libc::major(m.rdev()), libc::minor(m.rdev()));
    let name = name_of_devnum(host, dev).with_context(|| {
        format!(
            "{} is block device {}:{}, which {} does not list",
            path.display(),
            dev.0,
            dev.1,
            host.sys.display()
        )
    })?;
    if let Some(dir) = sys_dir(host, &name).filter(|d| d.join("partition").exists()) {
        let parent = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!(
            "refusing to write {}: it is a partition of {parent}; an image goes on the whole disk: {}",
            path.display(),
            host.dev.join(&parent).display()
        );
    }
    Ok(TargetKind::Disk(name))
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs and /proc for tests.
    use super::*;
    use std::os::unix::fs::symlink;

    pub struct FakeHost {
        /// Holds the tree; removed when dropped.
        _dir: tempfile::TempDir,
        pub host: Host,
        next_minor: std::cell::Cell<u32>,
    }

    impl FakeHost {
        pub fn new() -> FakeHost {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            for d in [
                "sys/block",
                "sys/class/block",
                "sys/dev/block",
                "dev",
                "proc",
            ] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::write(root.join("proc/mountinfo"), "").unwrap();
            fs::write(
                root.join("proc/swaps"),
                "Filename\tType\tSize\tUsed\tPriority\n",
            )
            .unwrap();
            let host = Host {
                sys: root.join("sys"),
                dev: root.join("dev"),
                mountinfo: root.join("proc/mountinfo"),
                swaps: root.join("proc/swaps"),
            };
            FakeHost {
                _dir: dir,
                host,
                next_minor: std::cell::Cell::new(0),
            }
        }

        fn register(&self, name: &str, dir: &Path) -> DevNum {
            let minor = self.next_minor.get();
            self.next_minor.set(minor + 1);
            let dev = (8, minor);
            fs::write(dir.join("dev"), format!("{}:{}\n", dev.0, dev.1)).unwrap();
            symlink(
                dir,
                self.host.sys.join(format!("dev/block/{}:{}", dev.0, dev.1)),
            )
            .unwrap();
            symlink(dir, self.host.sys.join("class/block").join(name)).unwrap();
            dev
        }

        /// A disk under `devices/<bus>/.../block/<name>` of `sectors` 512-byte sectors;
        /// returns its device number.
        pub fn add_disk(&self, bus: &str, name: &str, sectors: u64, removable: bool) -> DevNum {
            let dir = self
                .host
                .sys
                .join("devices")
                .join(bus)
                .join("block")
                .join(name);
            fs::create_dir_all(dir.join("device")).unwrap();
            fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(dir.join("ro"), "0\n").unwrap();
            fs::write(dir.join("device/vendor"), "Generic \n").unwrap();
            fs::write(dir.join("device/model"), "Card Reader\n").unwrap();
            symlink(&dir, self.host.sys.join("block").join(name)).unwrap();
            self.register(name, &dir)
        }

        pub fn remove_disk(&self, name: &str) {
            fs::remove_file(self.host.sys.join("block").join(name)).unwrap();
        }

        pub fn add_partition(&self, disk: &str, part: &str, sectors: u64) -> DevNum {
            let dir = fs::canonicalize(self.host.sys.join("block").join(disk))
                .unwrap()
                .join(part);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(dir.join("partition"), "1\n").unwrap();
            self.register(part, &dir)
        }

        pub fn set(&self, disk: &str, file: &str, value: &str) {
            let dir = fs::canonicalize(self.host.sys.join("block").join(disk)).unwrap();
            fs::write(dir.join(file), value).unwrap();
        }

        pub fn mount(&self, dev: DevNum, source: &str, mountpoint: &str) {
            let mut text = fs::read_to_string(&self.host.mountinfo).unwrap();
            text.push_str(&format!(
                "{} 1 {}:{} / {mountpoint} rw,relatime shared:1 - ext4 {source} rw\n",
                30 + text.lines().count(),
                dev.0,
                dev.1
            ));
            fs::write(&self.host.mountinfo, text).unwrap();
        }

        pub fn swap(&self, path: &str) {
            let mut text = fs::read_to_string(&self.host.swaps).unwrap();
            text.push_str(&format!("{path}\tpartition\t1048572\t0\t-2\n"));
            fs::write(&self.host.swaps, text).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;

    const GIB: u64 = 2 * 1024 * 1024;

    fn sample() -> FakeHost {
        let f = FakeHost::new();
        let root = f.add_disk(
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
            "sda",
            500 * GIB,
            false,
        );
        let _ = root;
        let sda2 = f.add_partition("sda", "sda2", 400 * GIB);
        let sda3 = f.add_partition("sda", "sda3", 8 * GIB);
        f.mount(sda2, "/dev/sda2", "/");
        f.swap("/dev/sda3");
        let _ = sda3;
        f.add_disk(
            "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
            "sdb",
            32 * GIB,
            false,
        );
        let sdb1 = f.add_partition("sdb", "sdb1", GIB / 2);
        f.add_partition("sdb", "sdb2", 31 * GIB);
        f.mount(sdb1, "/dev/sdb1", "/media/pi/system\\040boot");
        f.add_disk(
            "platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa",
            "mmcblk0",
            64 * GIB,
            false,
        );
        f.add_disk("virtual", "loop0", GIB, false);
        f.add_disk(
            "pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/host7/target7:0:0/7:0:0:0",
            "sdc",
            0,
            true,
        );
        f
    }

    #[test]
    fn disks_are_classified_from_sysfs() {
        let f = sample();
        let all = disks(&f.host).unwrap();
        let by = |n: &str| all.iter().find(|d| d.name == n).unwrap().clone();
        let sda = by("sda");
        assert_eq!(sda.transport, Transport::Ata);
        assert!(!sda.removable());
        assert!(
            sda.system.as_deref().unwrap().contains("root filesystem"),
            "{:?}",
            sda.system
        );
        let sdb = by("sdb");
        assert_eq!(sdb.transport, Transport::Usb);
        assert!(
            sdb.removable(),
            "USB counts as removable whatever the flag says"
        );
        assert_eq!(sdb.model, "Generic Card Reader");
        assert_eq!(sdb.size, 32 << 30);
        assert_eq!(sdb.all_mountpoints(), vec!["/media/pi/system boot"]);
        assert_eq!(sdb.partitions.len(), 2);
        assert!(sdb.system.is_none());
        assert_eq!(by("mmcblk0").transport, Transport::Mmc);
        assert!(by("mmcblk0").removable());
        let loop0 = by("loop0");
        assert_eq!(loop0.transport, Transport::Virtual);
        assert!(!loop0.removable());
        // Listing: removable, with a medium.
        let listed: Vec<String> = removable_disks(&f.host)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(listed, vec!["mmcblk0", "sdb"]);
    }

    #[test]
    fn refusals_name_the_device_and_the_override() {
        let f = sample();
        let none = BTreeSet::new();
        let d = |n: &str| disk(&f.host, n).unwrap();
        let err = |disk: &Disk, size: u64, src: &BTreeSet<String>, allow: Allow| {
            check(disk, size, src, allow).unwrap_err().to_string()
        };
        let all = Allow {
            fixed: true,
            unmount: true,
        };
        // The root disk: never, whatever is allowed.
        let e = err(&d("sda"), 1, &none, all);
        assert!(
            e.contains("/dev/sda") && e.contains("root filesystem"),
            "{e}"
        );
        // Swap alone makes a disk a system disk.
        f.swap("/dev/mmcblk0");
        let e = err(&d("mmcblk0"), 1, &none, all);
        assert!(e.contains("swap"), "{e}");
        // Mounted: --unmount.
        let e = err(&d("sdb"), 1, &none, Allow::default());
        assert!(
            e.contains("/dev/sdb") && e.contains("mounted") && e.contains("--unmount"),
            "{e}"
        );
        check(
            &d("sdb"),
            1,
            &none,
            Allow {
                fixed: false,
                unmount: true,
            },
        )
        .unwrap();
        // The source image's disk.
        let src: BTreeSet<String> = ["sdb".to_string()].into();
        let e = err(&d("sdb"), 1, &src, all);
        assert!(e.contains("holds the image"), "{e}");
        // Not removable: --allow-fixed.
        let e = err(&d("loop0"), 1, &none, Allow::default());
        assert!(
            e.contains("/dev/loop0") && e.contains("--allow-fixed"),
            "{e}"
        );
        check(
            &d("loop0"),
            1,
            &none,
            Allow {
                fixed: true,
                unmount: false,
            },
        )
        .unwrap();
        // Too small.
        let e = err(&d("loop0"), 2 << 30, &none, all);
        assert!(e.contains("larger card"), "{e}");
        // Read-only.
        f.set("loop0", "ro", "1\n");
        let e = err(&d("loop0"), 1, &none, all);
        assert!(e.contains("read-only"), "{e}");
        // No medium.
        let e = err(&d("sdc"), 1, &none, all);
        assert!(e.contains("no medium"), "{e}");
    }

    #[test]
    fn a_system_mount_on_lvm_marks_the_disks_below() {
        let f = sample();
        f.add_disk(
            "pci0000:00/0000:00:1d.0/nvme/nvme0",
            "nvme0n1",
            100 * GIB,
            false,
        );
        let p1 = f.add_partition("nvme0n1", "nvme0n1p1", 99 * GIB);
        let _ = p1;
        let dm = f.add_disk("virtual", "dm-0", 99 * GIB, false);
        let slaves = fs::canonicalize(f.host.sys.join("block/dm-0"))
            .unwrap()
            .join("slaves");
        fs::create_dir_all(&slaves).unwrap();
        fs::write(slaves.join("nvme0n1p1"), "").unwrap();
        f.mount(dm, "/dev/mapper/vg-home", "/home");
        let d = disk(&f.host, "nvme0n1").unwrap();
        assert!(
            d.system.as_deref().unwrap().contains("/home"),
            "{:?}",
            d.system
        );
    }

    #[test]
    fn new_disks_are_seen_when_they_appear() {
        let f = sample();
        let before = present(&f.host, false);
        assert_eq!(before, ["mmcblk0".to_string(), "sdb".to_string()].into());
        // A card goes into the empty reader.
        f.set("sdc", "size", "2048\n");
        let after = present(&f.host, false);
        assert!(after.contains("sdc"));
        // A disk taken out is gone.
        f.remove_disk("sdb");
        assert!(!present(&f.host, false).contains("sdb"));
        // Fixed disks only with --allow-fixed.
        assert!(present(&f.host, true).contains("loop0"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/media/a\\040b"), "/media/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}
