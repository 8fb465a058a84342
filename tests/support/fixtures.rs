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
    /// More files in the root filesystem: path -> (mode, contents).
    pub root_files: BTreeMap<String, (u32, Vec<u8>)>,
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
            root_files: BTreeMap::new(),
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

/// ext4 features of Ubuntu 22.04/24.04 root filesystems.
pub const UBUNTU_EXT4_FEATURES: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,^orphan_file,^metadata_csum_seed";

/// ext4 features of Ubuntu 24.10 and later (26.04) root filesystems.
pub const UBUNTU_26_04_EXT4_FEATURES: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,orphan_file,metadata_csum_seed";

/// config.txt of the Ubuntu raspi images; with `os_prefix`, as Ubuntu 25.10 and later write
/// it for their A/B boot: `current/` normally, `new/` when the firmware tries new assets.
fn ubuntu_config_txt(os_prefix: bool) -> String {
    let mut s = String::from(
        "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n[pi4]\nmax_framebuffers=2\narm_boost=1\n\n[all]\ndtparam=audio=on\ndtparam=i2c_arm=on\ndtparam=spi=on\ndisable_overscan=1\nenable_uart=1\n",
    );
    if os_prefix {
        s.push_str(
            "os_prefix=current/\n\n[tryboot]\nos_prefix=new/\n\n[all]\ndtparam=watchdog=on\n",
        );
    }
    s
}

/// Which Ubuntu release an [`ubuntu_raspi_release`] fixture imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UbuntuRelease {
    /// 22.04 armhf: 256 MiB system-boot (set by the caller's `boot_mib`), files at its root.
    Jammy,
    /// 24.04: files at the root of system-boot.
    Noble,
    /// 26.04: A/B boot under `current/`, ext4 with `orphan_file,metadata_csum_seed`.
    Resolute,
}

impl UbuntuRelease {
    fn os_release(self) -> String {
        let (id, ver, code) = match self {
            UbuntuRelease::Jammy => ("22.04", "22.04.5 LTS (Jammy Jellyfish)", "jammy"),
            UbuntuRelease::Noble => ("24.04", "24.04.3 LTS (Noble Numbat)", "noble"),
            UbuntuRelease::Resolute => ("26.04", "26.04 LTS (Resolute Raccoon)", "resolute"),
        };
        format!(
            "PRETTY_NAME=\"Ubuntu {} LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"{id}\"\nVERSION=\"{ver}\"\nVERSION_CODENAME={code}\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME={code}\n",
            ver.split(' ').next().unwrap()
        )
    }
}

/// Ubuntu 26.04 raspi layout: `current/` A/B boot and 26.04's ext4 features.
pub fn ubuntu_26_04_raspi(dir: &Path, opts: FixtureOpts) -> Fixture {
    ubuntu_raspi_release(
        dir,
        FixtureOpts {
            os_prefix: true,
            ..opts
        },
        UbuntuRelease::Resolute,
    )
}

/// Ubuntu 22.04 armhf raspi layout: a 256 MiB system-boot.
pub fn ubuntu_22_04_armhf_raspi(dir: &Path, opts: FixtureOpts) -> Fixture {
    ubuntu_raspi_release(
        dir,
        FixtureOpts {
            boot_mib: 256,
            // Room for the root filesystem after the large boot partition.
            total_mib: opts.total_mib.max(360),
            os_prefix: false,
            ..opts
        },
        UbuntuRelease::Jammy,
    )
}

/// Ubuntu Server preinstalled raspi image: MBR, p1 FAT32 `system-boot` (type 0x0c, boot flag)
/// at sector 2048, p2 ext4 `writable` to the end; 24.04's, or with `os_prefix` 26.04's.
pub fn ubuntu_raspi(dir: &Path, opts: FixtureOpts) -> Fixture {
    let release = match opts.os_prefix {
        true => UbuntuRelease::Resolute,
        false => UbuntuRelease::Noble,
    };
    ubuntu_raspi_release(dir, opts, release)
}

/// [`ubuntu_raspi`] of a given release.
pub fn ubuntu_raspi_release(dir: &Path, opts: FixtureOpts, release: UbuntuRelease) -> Fixture {
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
    tree.insert(
        "/etc/os-release".into(),
        (0o644, release.os_release().into()),
    );
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
    tree.extend(opts.root_files.clone());
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
        match release {
            UbuntuRelease::Resolute => UBUNTU_26_04_EXT4_FEATURES,
            UbuntuRelease::Jammy | UbuntuRelease::Noble => UBUNTU_EXT4_FEATURES,
        },
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

/// cloud-init's configuration in Raspberry Pi OS trixie images (`rpi-cloud-init-mods`).
pub const RASPIOS_CLOUD_CFG: &str = "datasource_list: [ NoCloud, None ]\n\
datasource:\n\
\x20 NoCloud:\n\
\x20   seedfrom: file:///boot/firmware/\n";

/// openssh-server's unit in Debian trixie; Raspberry Pi OS ships it disabled.
pub const RASPIOS_SSH_SERVICE: &str = "[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target auditd.service\n\n[Service]\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\nType=notify\n\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n";

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
    tree.insert(
        "/etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg".into(),
        (0o644, RASPIOS_CLOUD_CFG.into()),
    );
    tree.insert(
        "/usr/lib/systemd/system/ssh.service".into(),
        (0o644, RASPIOS_SSH_SERVICE.into()),
    );
    tree.insert(
        "/usr/bin/cloud-init".into(),
        (0o755, b"#!/bin/sh\necho cloud-init placeholder\n".to_vec()),
    );
    add_fill(&mut tree, opts.fill_mib, opts.seed + 130);
    tree.extend(opts.root_files.clone());
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
        "^64bit,^huge_file,orphan_file,^metadata_csum_seed",
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

/// GPT type of Armbian's root partition on Rockchip boards (Linux root, ARM64).
pub const ARMBIAN_ROOT_GPT_TYPE: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";

/// Root's password hash in the fixtures' /etc/shadow: Armbian ships root with `1234`.
pub const ARMBIAN_ROOT_HASH: &str =
    "$y$j9T$Xo1M3wFJpGwzTkT0aO7R4.$Zx4l4O0xPWvQd0h7cMZ0m1yW3bKkHnJj2q3u1cSgqv3";

fn armbian_root_tree(uuid: &str, board: &str, env_extra: &str) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut tree: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    tree.insert(
        "/boot/armbianEnv.txt".into(),
        (
            0o644,
            format!("verbosity=1\nbootlogo=false\nconsole=both\ndisp_mode=1920x1080p60\n{env_extra}rootdev=UUID={uuid}\nrootfstype=ext4\nusbstoragequirks=0x2537:0x1066:u,0x2537:0x1068:u\n").into_bytes(),
        ),
    );
    // Accounts as Armbian's build leaves them: root with a known password.
    tree.insert(
        "/etc/passwd".into(),
        (
            0o644,
            b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n".to_vec(),
        ),
    );
    tree.insert(
        "/etc/group".into(),
        (0o644, b"root:x:0:\nsudo:x:27:\nshadow:x:42:\n".to_vec()),
    );
    tree.insert(
        "/etc/shadow".into(),
        (
            0o640,
            format!("root:{ARMBIAN_ROOT_HASH}:20300:0:99999:7:::\ndaemon:*:20300:0:99999:7:::\nsshd:!:20300::::::\n").into_bytes(),
        ),
    );
    // armbian-firstrun.service reads this; by default it replaces the SSH host keys.
    tree.insert(
        "/etc/default/armbian-firstrun".into(),
        (
            0o644,
            b"# Armbian first run settings\nOPENSSHD_REGENERATE_HOST_KEYS=true\n".to_vec(),
        ),
    );
    // Root logged in on every console without a password until the first login.
    let autologin = b"[Service]\nExecStart=\nExecStart=-/sbin/agetty --noissue --autologin root %I $TERM\nType=idle\n";
    for unit in ["getty@", "serial-getty@"] {
        tree.insert(
            format!("/etc/systemd/system/{unit}.service.d/override.conf"),
            (0o644, autologin.to_vec()),
        );
    }
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
    env_extra: &str,
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
            "label: gpt\nlabel-id: {}\nunit: sectors\n\nstart={}, size={}, type={ARMBIAN_ROOT_GPT_TYPE}, name=rootfs\n",
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
    let mut tree = armbian_root_tree(&uuid, board, env_extra);
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
    tree.extend(opts.root_files.clone());
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

/// `len` bytes: `magic`, then pseudo-random bytes.
fn with_magic(magic: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend(pseudo_random(len - magic.len(), seed));
    b
}

/// Armbian for Allwinner boards (Orange Pi Zero 2/3): MBR, one ext4 `armbi_root` at 4 MiB,
/// U-Boot SPL bytes at 8192.
pub fn armbian_allwinner(dir: &Path, opts: FixtureOpts) -> Fixture {
    // sunxi boot0 header: a branch, then the "eGON.BT0" magic the boot ROM looks for.
    let spl = with_magic(b"\x14\x00\x00\xeaeGON.BT0", 700 * 1024, opts.seed + 250);
    armbian_common(
        dir,
        &opts,
        "armbian-allwinner",
        false,
        4 * MIB,
        vec![(8192, spl)],
        "orangepizero3",
        // A netboot fixture ships an overlay and asks for it, as armbian-config writes it.
        if opts.netboot {
            "overlay_prefix=sun50i-h616\noverlays=uart5\n"
        } else {
            "overlay_prefix=sun50i-h616\n"
        },
    )
}

/// Armbian for Rockchip boards (Orange Pi 5): GPT, one ext4 `armbi_root` at 16 MiB,
/// boot loader bytes at 32 KiB and 8 MiB.
pub fn armbian_rockchip_gpt(dir: &Path, opts: FixtureOpts) -> Fixture {
    // idbloader.img starts with the "RKNS" header; u-boot.itb is a FIT (device tree) image.
    let idb = with_magic(b"RKNS", 300 * 1024, opts.seed + 260);
    let uboot = with_magic(b"\xd0\x0d\xfe\xed", 1536 * 1024, opts.seed + 261);
    armbian_common(
        dir,
        &opts,
        "armbian-rockchip",
        true,
        16 * MIB,
        vec![(32 * 1024, idb), (8 * MIB, uboot)],
        "orangepi5",
        "overlay_prefix=rockchip-rk3588\nfdtfile=rockchip/rk3588s-orangepi-5.dtb\nextraargs=cma=256M\n",
    )
}

// ---------------------------------------------------------------- Ubuntu for Rockchip

/// `/etc/kernel/cmdline` of Ubuntu for Rockchip (written with `echo -n`: no line break).
pub const ROCKCHIP_KERNEL_CMDLINE: &str = "rootwait rw console=ttyS2,1500000 console=tty1 cgroup_enable=cpuset cgroup_memory=1 cgroup_enable=memory";

/// The start of the boot loader blob the fixture writes at 32 KiB (as `u-boot-rockchip.bin`).
pub const ROCKCHIP_UBOOT_MAGIC: &[u8] = b"RKNS test u-boot-rockchip.bin";

/// extlinux.conf as `u-boot-update` writes it on Ubuntu for Rockchip: a default and a rescue
/// entry, each with the root and `/etc/kernel/cmdline` in its `append` line.
pub fn rockchip_extlinux_conf(root_uuid: &str, kver: &str) -> String {
    let entry = |label: &str, title: &str, extra: &str| {
        format!(
            "label {label}\n\tmenu label {title}\n\tlinux /boot/vmlinuz-{kver}\n\tinitrd /boot/initrd.img-{kver}\n\tfdtdir /lib/firmware/{kver}/device-tree/\n\tappend root=UUID={root_uuid} {ROCKCHIP_KERNEL_CMDLINE}{extra}\n"
        )
    };
    format!(
        "## /boot/extlinux/extlinux.conf\n##\n## IMPORTANT WARNING\n##\n## The configuration of this file is generated automatically.\n## Do not edit this file manually, use: u-boot-update\n\ndefault l0\nmenu title U-Boot menu\nprompt 1\ntimeout 20\n\n\n{}\n{}",
        entry("l0", &format!("Ubuntu 24.04.2 LTS {kver}"), ""),
        entry(
            "l0r",
            &format!("Ubuntu 24.04.2 LTS {kver} (rescue target)"),
            " single"
        ),
    )
}

/// Writes `files` into the FAT filesystem at `[start, start+size)` of `image` through the
/// crate's own FAT writer. Only for volumes the usual tools cannot write: mtools 4.0.32
/// misreads the small FAT32 volumes `mkfs.vfat -F 32` makes on a 4 MiB partition (it goes by
/// cluster count), and the kernel's vfat may not be there to mount them. Check the result
/// with `fsck.fat` and read it with [`fat_read_7z`].
pub fn fat_put_small(image: &Path, start: u64, size: u64, files: &[(&str, &[u8])]) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let fat = pikube_image::fs::fat::Fat::open(&f, start, size, "fixture").unwrap();
    for (path, data) in files {
        fat.write(path, &mut &data[..]).unwrap();
    }
    fat.close().unwrap();
}

/// Contents of a file in the FAT filesystem `p` of `image`, read with 7-Zip (p7zip-full),
/// which reads small FAT32 volumes as the kernel does.
pub fn fat_read_7z(image: &Path, p: &PartInfo, path: &str, scratch: &Path) -> Vec<u8> {
    let part = extract(
        image,
        p.start,
        p.size,
        &scratch.join(format!("p{}.7z.fat", p.number)),
    );
    let out = Command::new("7z")
        .args(["e", "-so", "-tfat"])
        .arg(&part)
        .arg(path.trim_start_matches('/'))
        .output()
        .expect("7z (p7zip-full) is installed");
    fs::remove_file(&part).unwrap();
    assert!(
        out.status.success(),
        "7z e {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Ubuntu Server for Rockchip (ubuntu-rockchip's build-image.sh): GPT; p1 FAT32 `CIDATA`
/// (Microsoft basic data) from 16 to 20 MiB with the NoCloud seed; p2 ext4 `cloudimg-rootfs`
/// from 20 MiB (EFI System type, as that script sets it), booted through extlinux.conf;
/// `u-boot-rockchip.bin` at 32 KiB.
pub fn ubuntu_rockchip(dir: &Path, opts: FixtureOpts) -> Fixture {
    let image = dir.join("ubuntu-rockchip.img");
    let total = opts.total_mib * MIB;
    let (seed_start, seed_size) = (16 * MIB, 4 * MIB);
    let root_start = 20 * MIB;
    // GPT keeps its backup header in the last 33 sectors.
    let root_size = total - MIB - root_start;
    new_image(&image, total);
    let disk_id = uuid_from(opts.seed + 300);
    sfdisk(
        &image,
        &format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\n\n\
             start={}, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid={}, name=primary\n\
             start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=primary\n",
            disk_id.to_uppercase(),
            seed_start / 512,
            seed_size / 512,
            uuid_from(opts.seed + 301).to_uppercase(),
            root_start / 512,
            root_size / 512,
            uuid_from(opts.seed + 302).to_uppercase(),
        ),
    );
    // mkfs.vfat -F32 -n CIDATA on the 4 MiB partition, as the distribution does.
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "CIDATA", "-i"])
        .arg(disk_sig(opts.seed + 310))
        .arg(format!("--offset={}", seed_start / 512))
        .arg(&image)
        .arg((seed_size / 1024).to_string()));
    let mut files = BTreeMap::new();
    let seed: [(&str, &[u8]); 3] = [
        (
            "meta-data",
            b"# meta-data for cloud-init\ndsmode: local\ninstance-id: cloud-image\n",
        ),
        (
            "user-data",
            b"#cloud-config\nusers:\n  - default\n  - name: ubuntu\n    groups: video\nchpasswd:\n  expire: true\n  users:\n  - name: ubuntu\n    password: ubuntu\n    type: text\nssh_pwauth: true\n",
        ),
        (
            "network-config",
            b"network:\n  version: 2\n  ethernets:\n    zz-all-en:\n      match:\n        name: \"en*\"\n      dhcp4: true\n      optional: true\n",
        ),
    ];
    let seed_files: Vec<(String, &[u8])> =
        seed.iter().map(|(n, d)| (format!("/{n}"), *d)).collect();
    let seed_files: Vec<(&str, &[u8])> = seed_files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    fat_put_small(&image, seed_start, seed_size, &seed_files);
    for (name, data) in seed {
        record(&mut files, "CIDATA", &format!("/{name}"), data);
    }

    let uuid = uuid_from(opts.seed + 320);
    let kver = "6.1.0-1025-rockchip";
    let mut tree: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let put = |tree: &mut BTreeMap<String, (u32, Vec<u8>)>, p: &str, mode: u32, d: Vec<u8>| {
        tree.insert(p.to_string(), (mode, d));
    };
    put(
        &mut tree,
        "/boot/extlinux/extlinux.conf",
        0o644,
        rockchip_extlinux_conf(&uuid, kver).into_bytes(),
    );
    put(
        &mut tree,
        "/etc/kernel/cmdline",
        0o644,
        ROCKCHIP_KERNEL_CMDLINE.as_bytes().to_vec(),
    );
    put(
        &mut tree,
        &format!("/boot/vmlinuz-{kver}"),
        0o600,
        pseudo_random(256 * 1024, opts.seed + 321),
    );
    put(
        &mut tree,
        &format!("/boot/initrd.img-{kver}"),
        0o644,
        pseudo_random(128 * 1024, opts.seed + 322),
    );
    put(
        &mut tree,
        "/usr/share/u-boot-menu/conf.d/ubuntu.conf",
        0o644,
        b"U_BOOT_PROMPT=\"1\"\nU_BOOT_PARAMETERS=\"$(cat /etc/kernel/cmdline)\"\nU_BOOT_TIMEOUT=\"20\"\n".to_vec(),
    );
    put(
        &mut tree,
        "/etc/cloud/cloud.cfg.d/99-fake-cloud.cfg",
        0o644,
        b"datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    fs_label: CIDATA\n"
            .to_vec(),
    );
    put(
        &mut tree,
        "/etc/fstab",
        0o644,
        format!("# <file system>     <mount point>  <type>  <options>   <dump>  <fsck>\nUUID={uuid} /              ext4    defaults,x-systemd.growfs    0       1\n").into_bytes(),
    );
    put(
        &mut tree,
        "/etc/os-release",
        0o644,
        UbuntuRelease::Noble.os_release().into_bytes(),
    );
    put(&mut tree, "/etc/hostname", 0o644, b"ubuntu\n".to_vec());
    add_fill(&mut tree, opts.fill_mib, opts.seed + 330);
    tree.extend(opts.root_files.clone());
    for (p, (_, d)) in &tree {
        record(&mut files, "cloudimg-rootfs", p, d);
    }
    let tree_dir = dir.join("ubuntu-rockchip-root.tree");
    make_tree(&tree_dir, &tree);
    mkfs_ext4(
        &image,
        root_start,
        root_size,
        "cloudimg-rootfs",
        &uuid,
        UBUNTU_EXT4_FEATURES,
        &[],
        &tree_dir,
    );
    fs::remove_dir_all(&tree_dir).unwrap();
    // u-boot-rockchip.bin at 32 KiB, written last like `dd ... seek=1 bs=32k`.
    let mut uboot = ROCKCHIP_UBOOT_MAGIC.to_vec();
    uboot.extend(pseudo_random(1536 * 1024, opts.seed + 340));
    let blobs = vec![(32 * 1024, uboot)];
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    for (off, data) in &blobs {
        f.write_all_at(data, *off).unwrap();
    }
    drop(f);
    Fixture {
        image,
        size: total,
        table: "gpt",
        disk_id,
        partitions: vec![
            PartInfo {
                number: 1,
                start: seed_start,
                size: seed_size,
                label: "CIDATA".into(),
                fs: "fat",
            },
            PartInfo {
                number: 2,
                start: root_start,
                size: root_size,
                label: "cloudimg-rootfs".into(),
                fs: "ext4",
            },
        ],
        root_uuid: uuid,
        files,
        raw_blobs: blobs,
    }
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
