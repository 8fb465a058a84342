//! Builders of small but realistic base images, made with the same tools the
//! distributions use (sfdisk, mkfs.vfat, mtools, mkfs.ext4 -d), for integration tests.
//!
//! Images are sparse: a 512 MiB FAT partition costs only the blocks actually written.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pikube_image::decompress::Compression;
use pikube_image::io::sha256_bytes;

const MIB: u64 = 1 << 20;

/// Size and variant knobs shared by all builders.
#[derive(Clone, Debug)]
pub struct FixtureOpts {
    /// Whole image size in MiB.
    pub total_mib: u64,
    /// Size of the FAT boot partition in MiB (FAT32 needs at least ~33 MiB with 512-byte
    /// sectors and one sector per cluster; 40 is the smallest accepted here).
    pub boot_mib: u64,
    /// Ubuntu 25.10+: `os_prefix=current/` in config.txt and cmdline.txt under `current/`.
    pub os_prefix: bool,
    /// Extra incompressible-ish data in the root filesystem, in MiB.
    pub fill_mib: u64,
    /// Seed for the pseudo-random firmware bytes and identifiers.
    pub seed: u64,
    /// Boot files a network boot reads: an initramfs that is a real cpio with Debian's
    /// nbd-client hook output, and (Armbian) a kernel, initramfs and DTBs under /boot.
    pub netboot: bool,
}

impl Default for FixtureOpts {
    fn default() -> Self {
        FixtureOpts {
            total_mib: 160,
            boot_mib: 64,
            os_prefix: false,
            fill_mib: 0,
            seed: 1,
            netboot: false,
        }
    }
}

/// A partition as the fixture created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    /// Byte offset and size.
    pub start: u64,
    pub size: u64,
    /// FAT or ext4 label.
    pub label: String,
    /// "fat" or "ext4".
    pub fs: &'static str,
}

/// A built image.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub image: PathBuf,
    pub size: u64,
    /// "dos" or "gpt".
    pub table: &'static str,
    /// MBR disk signature (8 lower-case hex digits) or GPT disk GUID (lower case).
    pub disk_id: String,
    pub partitions: Vec<PartInfo>,
    /// UUID given to the root ext4 filesystem.
    pub root_uuid: String,
    /// SHA-256 of every file the fixture placed, keyed by `"<label>:<path>"`
    /// (e.g. `"system-boot:/user-data"`, `"writable:/etc/hostname"`).
    pub files: BTreeMap<String, String>,
    /// Raw bytes written outside any partition (boot loaders), by byte offset.
    pub raw_blobs: Vec<(u64, Vec<u8>)>,
}

impl Fixture {
    pub fn part(&self, label: &str) -> &PartInfo {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("fixture has no partition labelled {label}"))
    }

    pub fn sha(&self, label: &str, path: &str) -> &str {
        self.files
            .get(&format!("{label}:{path}"))
            .unwrap_or_else(|| panic!("fixture did not place {label}:{path}"))
    }
}

// ---------------------------------------------------------------- helpers

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command with `input` on its standard input, panicking with its output when it fails.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\ninput:\n{input}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift64*), for firmware blobs and filler.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Text-like filler that compresses roughly like binaries do (about 3:1 with xz).
fn semi_compressible(len: usize, seed: u64) -> Vec<u8> {
    let words: Vec<Vec<u8>> = pseudo_random(4096, seed)
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| b'a' + b % 26)
                .take(3 + (c[0] % 10) as usize)
                .collect()
        })
        .collect();
    let picks = pseudo_random(len / 4 + 16, seed ^ 0x55);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let w = &words[picks[i % picks.len()] as usize % words.len()];
        out.extend_from_slice(w);
        out.push(if picks[(i + 7) % picks.len()].is_multiple_of(9) {
            b'\n'
        } else {
            b' '
        });
        if picks[(i + 3) % picks.len()].is_multiple_of(5) {
            out.extend_from_slice(&pseudo_random(6, seed.wrapping_add(i as u64)));
        }
        i += 1;
    }
    out.truncate(len);
    out
}

fn uuid_from(seed: u64) -> String {
    let h = hex::encode(pseudo_random(16, seed));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn disk_sig(seed: u64) -> String {
    hex::encode(pseudo_random(4, seed ^ 0xD15C))
}

fn new_image(path: &Path, total: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(total).unwrap();
}

/// Partitions the image with sfdisk from a script.
fn sfdisk(image: &Path, script: &str) {
    run_with_stdin(
        Command::new("sfdisk")
            .args([
                "--quiet",
                "--no-reread",
                "--no-tell-kernel",
                "--wipe",
                "never",
            ])
            .arg(image),
        script,
    );
}

/// `sfdisk --json` of an image.
pub fn sfdisk_json(image: &Path) -> serde_json::Value {
    let out = run(Command::new("sfdisk").arg("--json").arg(image));
    serde_json::from_str(&out).expect("sfdisk --json output")
}

/// `sfdisk --dump` of an image.
pub fn sfdisk_dump(image: &Path) -> String {
    run(Command::new("sfdisk").arg("--dump").arg(image))
}

/// Makes a FAT32 filesystem at `start` (bytes) in the image.
fn mkfs_fat(image: &Path, start: u64, size: u64, label: &str, volid: &str) {
    assert!(size >= 40 * MIB, "FAT32 fixtures need at least 40 MiB");
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-S", "512", "-s", "1", "-n", label, "-i", volid])
        .arg(format!("--offset={}", start / 512))
        .arg(image)
        .arg((size / 1024).to_string()));
}

/// Copies host files into the FAT filesystem at byte `start` of `image` with mcopy,
/// creating directories with mmd. `files` maps FAT paths (`/dir/name`) to contents.
fn fat_put(image: &Path, start: u64, files: &BTreeMap<String, Vec<u8>>, scratch: &Path) {
    let target = format!("{}@@{}", image.display(), start);
    let mut dirs: Vec<String> = Vec::new();
    for path in files.keys() {
        let mut acc = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for d in &parts[..parts.len() - 1] {
            acc.push('/');
            acc.push_str(d);
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    for d in &dirs {
        run(Command::new("mmd")
            .args(["-i", &target])
            .arg(format!("::{d}")));
    }
    fs::create_dir_all(scratch).unwrap();
    for (i, (path, data)) in files.iter().enumerate() {
        let host = scratch.join(format!("f{i}"));
        fs::write(&host, data).unwrap();
        run(Command::new("mcopy")
            .args(["-o", "-i", &target])
            .arg(&host)
            .arg(format!("::{path}")));
    }
    fs::remove_dir_all(scratch).unwrap();
}

/// Writes a tree for `mkfs.ext4 -d` from path -> (mode, contents); directories are implied.
fn make_tree(root: &Path, files: &BTreeMap<String, (u32, Vec<u8>)>) {
    fs::create_dir_all(root).unwrap();
    for (path, (mode, data)) in files {
        let host = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(&host, data).unwrap();
        fs::set_permissions(&host, fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// Makes an ext4 filesystem at `start` (bytes) in the image, filled from `tree`.
#[allow(clippy::too_many_arguments)]
fn mkfs_ext4(
    image: &Path,
    start: u64,
    size: u64,
    label: &str,
    uuid: &str,
    features: &str,
    extra: &[&str],
    tree: &Path,
) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-I", "256", "-T", "default"])
        .args(["-L", label, "-U", uuid, "-O", features])
        .arg("-E")
        .arg(format!("offset={start},root_owner=0:0"))
        .args(extra)
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024)));
}

fn record(files: &mut BTreeMap<String, String>, label: &str, path: &str, data: &[u8]) {
    files.insert(format!("{label}:{path}"), sha256_bytes(data));
}

/// Adds `fill_mib` of filler to a root tree, split into 4 MiB files under /usr/lib/fill.
fn add_fill(tree: &mut BTreeMap<String, (u32, Vec<u8>)>, fill_mib: u64, seed: u64) {
    for i in 0..fill_mib.div_ceil(4) {
        let len = (4 * MIB).min((fill_mib - i * 4) * MIB) as usize;
        tree.insert(
            format!("/usr/lib/fill/blob{i:03}"),
            (0o644, semi_compressible(len, seed + i)),
        );
    }
}

// ---------------------------------------------------------------- Ubuntu

pub const UBUNTU_CMDLINE: &str = "console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n";

pub const UBUNTU_USER_DATA: &str = "#cloud-config\n\
\n\
# Default account: ubuntu, password ubuntu, which must be changed at first login.\n\
chpasswd:\n\
\x20 expire: true\n\
\x20 users:\n\
\x20 - name: ubuntu\n\
\x20   password: ubuntu\n\
\x20   type: text\n\
\n\
ssh_pwauth: true\n";

pub const UBUNTU_META_DATA: &str = "instance_id: cloud-image\n";

pub const UBUNTU_NETWORK_CONFIG: &str = "network:\n\
\x20 version: 2\n\
\x20 ethernets:\n\
\x20   eth0:\n\
\x20     dhcp4: true\n\
\x20     optional: true\n";

pub const UBUNTU_FAKE_CLOUD: &str = "datasource_list: [ NoCloud, None ]\n\
datasource:\n\
\x20 NoCloud:\n\
\x20   fs_label: system-boot\n";

pub const UBUNTU_OS_RELEASE: &str = "PRETTY_NAME=\"Ubuntu 24.04.3 LTS\"\n\
NAME=\"Ubuntu\"\n\
VERSION_ID=\"24.04\"\n\
VERSION=\"24.04.3 LTS (Noble Numbat)\"\n\
VERSION_CODENAME=noble\n\
ID=ubuntu\n\
ID_LIKE=debian\n\
UBUNTU_CODENAME=noble\n";

/// ext4 features of Ubuntu 22.04/24.04 root filesystems.
pub const UBUNTU_EXT4_FEATURES: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,^orphan_file,^metadata_csum_seed";

fn ubuntu_config_txt(os_prefix: bool) -> String {
    let mut s = String::from(
        "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n[pi4]\nmax_framebuffers=2\narm_boost=1\n\n[all]\ndtparam=audio=on\ndtparam=i2c_arm=on\ndtparam=spi=on\ndisable_overscan=1\nenable_uart=1\n",
    );
    if os_prefix {
        s.push_str("os_prefix=current/\n");
    }
    s
}

/// Ubuntu Server preinstalled raspi image: MBR, p1 FAT32 `system-boot` (type 0x0c, boot flag)
/// at sector 2048, p2 ext4 `writable` to the end.
pub fn ubuntu_raspi(dir: &Path, opts: FixtureOpts) -> Fixture {
    let image = dir.join("ubuntu-raspi.img");
    let total = opts.total_mib * MIB;
    let boot_start = MIB;
    let boot_size = opts.boot_mib * MIB;
    let root_start = boot_start + boot_size;
    assert!(
        total > root_start + 16 * MIB,
        "image too small for its partitions"
    );
    let root_size = total - root_start;
    let sig = disk_sig(opts.seed);
    new_image(&image, total);
    sfdisk(
        &image,
        &format!(
            "label: dos\nlabel-id: 0x{sig}\nunit: sectors\n\nstart={}, size={}, type=c, bootable\nstart={}, size={}, type=83\n",
            boot_start / 512,
            boot_size / 512,
            root_start / 512,
            root_size / 512
        ),
    );
    let mut files = BTreeMap::new();

    // Boot partition.
    mkfs_fat(&image, boot_start, boot_size, "system-boot", "a1b2c3d4");
    let prefix = if opts.os_prefix { "/current" } else { "" };
    let mut boot: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    boot.insert(
        "/config.txt".into(),
        ubuntu_config_txt(opts.os_prefix).into_bytes(),
    );
    boot.insert(
        format!("{prefix}/cmdline.txt"),
        UBUNTU_CMDLINE.as_bytes().to_vec(),
    );
    boot.insert("/user-data".into(), UBUNTU_USER_DATA.as_bytes().to_vec());
    boot.insert("/meta-data".into(), UBUNTU_META_DATA.as_bytes().to_vec());
    boot.insert(
        "/network-config".into(),
        UBUNTU_NETWORK_CONFIG.as_bytes().to_vec(),
    );
    boot.insert(
        "/bootcode.bin".into(),
        pseudo_random(52_000, opts.seed + 10),
    );
    boot.insert(
        "/start4.elf".into(),
        pseudo_random(2_200_000, opts.seed + 11),
    );
    boot.insert("/fixup4.dat".into(), pseudo_random(5_400, opts.seed + 12));
    boot.insert(
        format!("{prefix}/vmlinuz"),
        pseudo_random(1_000_000, opts.seed + 13),
    );
    boot.insert(
        format!("{prefix}/initrd.img"),
        match opts.netboot {
            true => nbd_initramfs(opts.seed + 14),
            false => pseudo_random(700_000, opts.seed + 14),
        },
    );
    boot.insert(
        format!("{prefix}/bcm2711-rpi-4-b.dtb"),
        pseudo_random(54_000, opts.seed + 15),
    );
    boot.insert(
        format!("{prefix}/overlays/README"),
        b"Device tree overlays.\n".to_vec(),
    );
    for (p, d) in &boot {
        record(&mut files, "system-boot", p, d);
    }
    fat_put(&image, boot_start, &boot, &dir.join("ubuntu-boot.scratch"));

    // Root partition.
    let uuid = uuid_from(opts.seed + 20);
    let mut tree: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    tree.insert("/etc/os-release".into(), (0o644, UBUNTU_OS_RELEASE.into()));
    tree.insert(
        "/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg".into(),
        (0o644, UBUNTU_FAKE_CLOUD.into()),
    );
    tree.insert(
        "/etc/fstab".into(),
        (
            0o644,
            "LABEL=writable\t/\text4\tdiscard,errors=remount-ro\t0 1\nLABEL=system-boot\t/boot/firmware\tvfat\tdefaults\t0 1\n".into(),
        ),
    );
    tree.insert(
        "/usr/bin/cloud-init".into(),
        (0o755, b"#!/bin/sh\necho cloud-init placeholder\n".to_vec()),
    );
    tree.insert("/etc/hostname".into(), (0o644, b"ubuntu\n".to_vec()));
    tree.insert(
        "/etc/passwd".into(),
        (0o644, b"root:x:0:0:root:/root:/bin/bash\n".to_vec()),
    );
    add_fill(&mut tree, opts.fill_mib, opts.seed + 30);
    for (p, (_, d)) in &tree {
        record(&mut files, "writable", p, d);
    }
    let tree_dir = dir.join("ubuntu-root.tree");
    make_tree(&tree_dir, &tree);
    for d in ["boot/firmware", "home", "root", "tmp", "var/lib/cloud"] {
        fs::create_dir_all(tree_dir.join(d)).unwrap();
    }
    mkfs_ext4(
        &image,
        root_start,
        root_size,
        "writable",
        &uuid,
        UBUNTU_EXT4_FEATURES,
        &[],
        &tree_dir,
    );
    fs::remove_dir_all(&tree_dir).unwrap();

    Fixture {
        image,
        size: total,
        table: "dos",
        disk_id: sig,
        partitions: vec![
            PartInfo {
                number: 1,
                start: boot_start,
                size: boot_size,
                label: "system-boot".into(),
                fs: "fat",
            },
            PartInfo {
                number: 2,
                start: root_start,
                size: root_size,
                label: "writable".into(),
                fs: "ext4",
            },
        ],
        root_uuid: uuid,
        files,
        raw_blobs: Vec::new(),
    }
}

/// A gzip-compressed initramfs holding what Debian's nbd-client initramfs hook adds.
pub fn nbd_initramfs(seed: u64) -> Vec<u8> {
    use std::io::Write as _;
    let client = pseudo_random(90_000, seed);
    let cpio = pikube_image::target::netboot::initramfs::newc(&[
        ("init", b"#!/bin/sh\n"),
        ("usr/sbin/nbd-client", &client),
        ("scripts/local-top/nbd", b"#!/bin/sh\n# nbdroot=\n"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&cpio).unwrap();
    gz.finish().unwrap()
}

/// Armbian's kernel version in the netboot fixtures.
pub const ARMBIAN_KERNEL: &str = "6.12.43-current-sunxi64";

// ---------------------------------------------------------------- Raspberry Pi OS

/// Raspberry Pi OS lite: MBR, p1 FAT32 `bootfs` at 8 MiB, p2 ext4 `rootfs`
/// (`^64bit,^huge_file`), root found by PARTUUID.
pub fn raspios(dir: &Path, opts: FixtureOpts) -> Fixture {
    let image = dir.join("raspios.img");
    let total = opts.total_mib * MIB;
    let boot_start = 8 * MIB;
    let boot_size = opts.boot_mib * MIB;
    let root_start = boot_start + boot_size;
    assert!(
        total > root_start + 16 * MIB,
        "image too small for its partitions"
    );
    let root_size = total - root_start;
    let sig = disk_sig(opts.seed + 100);
    new_image(&image, total);
    sfdisk(
        &image,
        &format!(
            "label: dos\nlabel-id: 0x{sig}\nunit: sectors\n\nstart={}, size={}, type=c\nstart={}, size={}, type=83\n",
            boot_start / 512,
            boot_size / 512,
            root_start / 512,
            root_size / 512
        ),
    );
    let mut files = BTreeMap::new();
    mkfs_fat(&image, boot_start, boot_size, "bootfs", "5e3da3b2");
    let mut boot: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    boot.insert(
        "/cmdline.txt".into(),
        format!("console=serial0,115200 console=tty1 root=PARTUUID={sig}-02 rootfstype=ext4 fsck.repair=yes rootwait resize\n").into_bytes(),
    );
    boot.insert(
        "/config.txt".into(),
        b"dtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\nauto_initramfs=1\ndtoverlay=vc4-kms-v3d\nmax_framebuffers=2\narm_64bit=1\n\n[all]\n".to_vec(),
    );
    boot.insert(
        "/start4.elf".into(),
        pseudo_random(2_200_000, opts.seed + 111),
    );
    boot.insert(
        "/kernel8.img".into(),
        pseudo_random(1_000_000, opts.seed + 112),
    );
    boot.insert(
        "/bcm2711-rpi-4-b.dtb".into(),
        pseudo_random(54_000, opts.seed + 113),
    );
    for (p, d) in &boot {
        record(&mut files, "bootfs", p, d);
    }
    fat_put(&image, boot_start, &boot, &dir.join("raspios-boot.scratch"));

    let uuid = uuid_from(opts.seed + 120);
    let mut tree: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    tree.insert(
        "/etc/fstab".into(),
        (
            0o644,
            format!("proc            /proc           proc    defaults          0       0\nPARTUUID={sig}-01  /boot/firmware  vfat    defaults          0       2\nPARTUUID={sig}-02  /               ext4    defaults,noatime  0       1\n").into_bytes(),
        ),
    );
    tree.insert(
        "/etc/os-release".into(),
        (
            0o644,
            b"PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nVERSION_CODENAME=trixie\nID=debian\n".to_vec(),
        ),
    );
    tree.insert(
        "/etc/machine-id".into(),
        (0o444, b"uninitialized\n".to_vec()),
    );
    tree.insert("/etc/hostname".into(), (0o644, b"raspberrypi\n".to_vec()));
    add_fill(&mut tree, opts.fill_mib, opts.seed + 130);
    for (p, (_, d)) in &tree {
        record(&mut files, "rootfs", p, d);
    }
    let tree_dir = dir.join("raspios-root.tree");
    make_tree(&tree_dir, &tree);
    fs::create_dir_all(tree_dir.join("boot/firmware")).unwrap();
    mkfs_ext4(
        &image,
        root_start,
        root_size,
        "rootfs",
        &uuid,
        "^64bit,^huge_file,^orphan_file,^metadata_csum_seed",
        &[],
        &tree_dir,
    );
    fs::remove_dir_all(&tree_dir).unwrap();
    Fixture {
        image,
        size: total,
        table: "dos",
        disk_id: sig,
        partitions: vec![
            PartInfo {
                number: 1,
                start: boot_start,
                size: boot_size,
                label: "bootfs".into(),
                fs: "fat",
            },
            PartInfo {
                number: 2,
                start: root_start,
                size: root_size,
                label: "rootfs".into(),
                fs: "ext4",
            },
        ],
        root_uuid: uuid,
        files,
        raw_blobs: Vec::new(),
    }
}

// ---------------------------------------------------------------- Armbian

fn armbian_root_tree(
    uuid: &str,
    board: &str,
    overlay_prefix: &str,
) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut tree: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    tree.insert(
        "/boot/armbianEnv.txt".into(),
        (
            0o644,
            format!("verbosity=1\nbootlogo=false\nconsole=both\noverlay_prefix={overlay_prefix}\nrootdev=UUID={uuid}\nrootfstype=ext4\nusbstoragequirks=0x2537:0x1066:u,0x2537:0x1068:u\n").into_bytes(),
        ),
    );
    tree.insert(
        "/boot/boot.scr".into(),
        (0o644, b"# u-boot script placeholder\n".to_vec()),
    );
    tree.insert(
        "/etc/fstab".into(),
        (
            0o644,
            format!("UUID={uuid} / ext4 defaults,noatime,commit=120,errors=remount-ro 0 1\ntmpfs /tmp tmpfs defaults,nosuid 0 0\n").into_bytes(),
        ),
    );
    tree.insert(
        "/etc/os-release".into(),
        (
            0o644,
            b"PRETTY_NAME=\"Armbian 25.8.1 bookworm\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n".to_vec(),
        ),
    );
    tree.insert(
        "/etc/hostname".into(),
        (0o644, format!("{board}\n").into_bytes()),
    );
    // Interactive first-login presets (bash variables), consumed only at the first login.
    tree.insert(
        "/root/.not_logged_in_yet".into(),
        (0o644, b"PRESET_NET_CHANGE_DEFAULTS=\"0\"\n".to_vec()),
    );
    // Armbian's default network: DHCP on every wired interface, rendered by networkd.
    tree.insert(
        "/etc/netplan/10-dhcp-all-interfaces.yaml".into(),
        (
            0o600,
            b"network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    all-eth-interfaces:\n      match:\n        name: \"e*\"\n      dhcp4: yes\n      dhcp6: yes\n".to_vec(),
        ),
    );
    // Host keys of the build machine, regenerated by the OS's first run.
    tree.insert(
        "/etc/ssh/ssh_host_ed25519_key".into(),
        (0o600, b"image host key\n".to_vec()),
    );
    tree.insert(
        "/etc/ssh/ssh_host_rsa_key.pub".into(),
        (0o644, b"ssh-rsa AAAAimage\n".to_vec()),
    );
    tree
}

#[allow(clippy::too_many_arguments)]
fn armbian_common(
    dir: &Path,
    opts: &FixtureOpts,
    name: &str,
    gpt: bool,
    part_start: u64,
    blobs: Vec<(u64, Vec<u8>)>,
    board: &str,
    overlay_prefix: &str,
) -> Fixture {
    let image = dir.join(format!("{name}.img"));
    let total = opts.total_mib * MIB;
    // GPT keeps its backup header in the last 33 sectors.
    let end = if gpt { total - MIB } else { total };
    let part_size = end - part_start;
    new_image(&image, total);
    let disk_id = if gpt {
        uuid_from(opts.seed + 200)
    } else {
        disk_sig(opts.seed + 200)
    };
    let script = if gpt {
        format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\n\nstart={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs\n",
            disk_id.to_uppercase(),
            part_start / 512,
            part_size / 512
        )
    } else {
        format!(
            "label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n\nstart={}, size={}, type=83\n",
            part_start / 512,
            part_size / 512
        )
    };
    sfdisk(&image, &script);
    let uuid = uuid_from(opts.seed + 210);
    let mut tree = armbian_root_tree(&uuid, board, overlay_prefix);
    if opts.netboot {
        let v = ARMBIAN_KERNEL;
        tree.insert(
            format!("/boot/vmlinuz-{v}"),
            (0o644, pseudo_random(800_000, opts.seed + 240)),
        );
        tree.insert(
            format!("/boot/initrd.img-{v}"),
            (0o644, nbd_initramfs(opts.seed + 241)),
        );
        tree.insert(
            format!("/boot/dtb-{v}/allwinner/sun50i-h618-orangepi-zero3.dtb"),
            (0o644, pseudo_random(40_000, opts.seed + 242)),
        );
        tree.insert(
            format!("/boot/dtb-{v}/allwinner/overlay/sun50i-h616-uart5.dtbo"),
            (0o644, pseudo_random(1_000, opts.seed + 243)),
        );
    }
    add_fill(&mut tree, opts.fill_mib, opts.seed + 230);
    let mut files = BTreeMap::new();
    for (p, (_, d)) in &tree {
        record(&mut files, "armbi_root", p, d);
    }
    let tree_dir = dir.join(format!("{name}-root.tree"));
    make_tree(&tree_dir, &tree);
    if opts.netboot {
        let v = ARMBIAN_KERNEL;
        let boot = tree_dir.join("boot");
        std::os::unix::fs::symlink(format!("vmlinuz-{v}"), boot.join("Image")).unwrap();
        std::os::unix::fs::symlink(format!("dtb-{v}"), boot.join("dtb")).unwrap();
    }
    mkfs_ext4(
        &image,
        part_start,
        part_size,
        "armbi_root",
        &uuid,
        "^orphan_file,^metadata_csum_seed",
        &["-m", "2"],
        &tree_dir,
    );
    fs::remove_dir_all(&tree_dir).unwrap();
    // Boot loaders go in last, where the board ROM expects them.
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    for (off, data) in &blobs {
        f.write_all_at(data, *off).unwrap();
    }
    drop(f);
    Fixture {
        image,
        size: total,
        table: if gpt { "gpt" } else { "dos" },
        disk_id,
        partitions: vec![PartInfo {
            number: 1,
            start: part_start,
            size: part_size,
            label: "armbi_root".into(),
            fs: "ext4",
        }],
        root_uuid: uuid,
        files,
        raw_blobs: blobs,
    }
}

/// Armbian for Allwinner boards (Orange Pi Zero 2/3): MBR, one ext4 `armbi_root` at 4 MiB,
/// U-Boot SPL bytes at 8192.
pub fn armbian_allwinner(dir: &Path, opts: FixtureOpts) -> Fixture {
    let spl = pseudo_random(700 * 1024, opts.seed + 250);
    armbian_common(
        dir,
        &opts,
        "armbian-allwinner",
        false,
        4 * MIB,
        vec![(8192, spl)],
        "orangepizero3",
        "sun50i-h616",
    )
}

/// Armbian for Rockchip boards (Orange Pi 5): GPT, one ext4 `armbi_root` at 16 MiB,
/// boot loader bytes at 32 KiB and 8 MiB.
pub fn armbian_rockchip_gpt(dir: &Path, opts: FixtureOpts) -> Fixture {
    let idb = pseudo_random(300 * 1024, opts.seed + 260);
    let uboot = pseudo_random(1536 * 1024, opts.seed + 261);
    armbian_common(
        dir,
        &opts,
        "armbian-rockchip",
        true,
        16 * MIB,
        vec![(32 * 1024, idb), (8 * MIB, uboot)],
        "orangepi5",
        "rockchip-rk3588",
    )
}

// ---------------------------------------------------------------- compression

/// Compresses `path` with the format's command line tool into `path` + suffix, keeping
/// the input. `.xz` uses several threads and 1 MiB blocks, so the result has many blocks
/// and exercises multi-threaded decoding.
pub fn compress(path: &Path, kind: Compression) -> PathBuf {
    let (suffix, mut cmd) = match kind {
        Compression::Xz => {
            let mut c = Command::new("xz");
            c.args(["-T0", "--block-size=1MiB", "-1", "-c"]);
            (".xz", c)
        }
        Compression::Gzip => {
            let mut c = Command::new("gzip");
            c.args(["-1", "-c"]);
            (".gz", c)
        }
        Compression::Zstd => {
            let mut c = Command::new("zstd");
            c.args(["-q", "-1", "-c"]);
            (".zst", c)
        }
        Compression::None => return path.to_path_buf(),
    };
    let out_path = PathBuf::from(format!("{}{suffix}", path.display()));
    let out = File::create(&out_path).unwrap();
    let status = cmd
        .arg(path)
        .stdout(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
    out_path
}

/// Number of blocks in an .xz file, from `xz --robot --list`.
pub fn xz_block_count(path: &Path) -> u64 {
    let out = run(Command::new("xz").args(["--robot", "--list"]).arg(path));
    let line = out
        .lines()
        .find(|l| l.starts_with("totals"))
        .expect("xz --list totals line");
    line.split('\t').nth(2).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- inspection

/// Copies bytes `[start, start+size)` of `image` into a new sparse file, so tools without
/// an offset option (e2fsck, fsck.fat, debugfs) can check one partition.
pub fn extract(image: &Path, start: u64, size: u64, out: &Path) -> PathBuf {
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .args([
            "bs=1M",
            "conv=sparse",
            "iflag=skip_bytes,count_bytes",
            "status=none",
        ])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}")));
    out.to_path_buf()
}

/// Runs a checker and returns (success, combined output).
pub fn check(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `e2fsck -fn` on the ext4 partition `p` of `image`; panics with the report on errors.
pub fn assert_ext4_clean(image: &Path, p: &PartInfo, scratch: &Path) {
    let part = extract(
        image,
        p.start,
        p.size,
        &scratch.join(format!("p{}.ext4", p.number)),
    );
    let (ok, out) = check(Command::new("e2fsck").arg("-fn").arg(&part));
    fs::remove_file(&part).unwrap();
    assert!(
        ok,
        "e2fsck -fn found problems in partition {}:\n{out}",
        p.number
    );
}

/// `fsck.fat -n` on the FAT partition `p` of `image`; panics with the report on errors.
pub fn assert_fat_clean(image: &Path, p: &PartInfo, scratch: &Path) {
    let part = extract(
        image,
        p.start,
        p.size,
        &scratch.join(format!("p{}.fat", p.number)),
    );
    let (ok, out) = check(Command::new("fsck.fat").arg("-n").arg(&part));
    fs::remove_file(&part).unwrap();
    assert!(
        ok,
        "fsck.fat -n found problems in partition {}:\n{out}",
        p.number
    );
}

/// Contents of a file in the FAT partition starting at byte `start`, read with mcopy.
pub fn fat_read(image: &Path, start: u64, path: &str) -> Vec<u8> {
    let out = Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(format!("{}@@{}", image.display(), start))
        .arg(format!("::{path}"))
        .arg("-")
        .output()
        .expect("mcopy");
    assert!(
        out.status.success(),
        "mcopy ::{path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Contents of a file in the ext4 partition `p`, read with debugfs.
pub fn ext4_read(image: &Path, p: &PartInfo, path: &str, scratch: &Path) -> Vec<u8> {
    let part = extract(
        image,
        p.start,
        p.size,
        &scratch.join(format!("p{}.read", p.number)),
    );
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&part)
        .output()
        .expect("debugfs");
    fs::remove_file(&part).unwrap();
    assert!(out.status.success(), "debugfs cat {path} failed");
    out.stdout
}

/// `blkid -p` probe of the filesystem at byte `start`: TYPE, LABEL, UUID, ...
pub fn blkid(image: &Path, start: u64) -> BTreeMap<String, String> {
    let out = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(start.to_string())
        .arg(image));
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
