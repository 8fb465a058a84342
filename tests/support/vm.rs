//! Booting built images in QEMU for the end-to-end test (tests/boot.rs).
//!
//! ```ignore
//! let arch = GuestArch::from_env()?;                 // amd64, or arm64 with PIKUBE_BOOT_ARCH=arm64
//! vm::preflight(arch)?;                              // Err(reason): pikube_test_oracles::skip
//! let base = vm::base_image(arch)?;                  // cached Debian image in raspi layout (.img.xz)
//! vm::serve_base_image(&srv, arch, &base);           // at the test board's catalog URL
//! let k3s = vm::serve_k3s_standin(&srv, "v1.31.4+k3s1", arch); // release assets, stand-in binary
//! let boot = vm::boot(&image, arch, &workdir, Duration::from_secs(540))?;
//! assert_eq!(boot.facts.get("hostname"), Some("cp1"));
//! ```
//!
//! The guest is a Debian bookworm root file system built with mmdebstrap by
//! `tests/vm/build-rootfs.sh` and laid out like Ubuntu's raspi image by `tests/vm/make-disk.sh`.
//! Both results are cached under `/var/tmp/pikube-vm-cache` (or `$PIKUBE_VM_CACHE`), keyed by a
//! hash of the scripts and the files they copy into the image, so only the first run pays for
//! the build. A unit in the guest (`tests/vm/pikube-facts`) prints `PIKUBE-FACT key=value` lines
//! on the serial console after cloud-init's final stage and powers off.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::http::TestServer;
use super::sha256_hex;
use pikube_test_oracles::{have_tool, is_root};

/// Architecture of the guest (and of the test board it is built for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestArch {
    Amd64,
    Arm64,
}

impl fmt::Display for GuestArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

impl GuestArch {
    /// `PIKUBE_BOOT_ARCH` (`amd64`, the default, or `arm64`).
    pub fn from_env() -> Result<GuestArch, String> {
        match std::env::var("PIKUBE_BOOT_ARCH").as_deref() {
            Err(_) | Ok("") | Ok("amd64") | Ok("x86_64") => Ok(GuestArch::Amd64),
            Ok("arm64") | Ok("aarch64") => Ok(GuestArch::Arm64),
            Ok(other) => Err(format!(
                "PIKUBE_BOOT_ARCH={other} is not supported: use amd64 (default) or arm64"
            )),
        }
    }

    /// Debian architecture name.
    pub fn debian(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "amd64",
            GuestArch::Arm64 => "arm64",
        }
    }

    pub fn qemu_system(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "qemu-system-x86_64",
            GuestArch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// Serial console device of the guest.
    pub fn console(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "ttyS0",
            GuestArch::Arm64 => "ttyAMA0",
        }
    }

    /// Test board in `tests/vm/boards`.
    pub fn board(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "testpc",
            GuestArch::Arm64 => "testpc-arm64",
        }
    }

    /// File name of the board's image in its catalog URL.
    pub fn image_file(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "debian-testpc.img.xz",
            GuestArch::Arm64 => "debian-testpc-arm64.img.xz",
        }
    }

    /// (binary, checksum list, airgap tarball) as named in a k3s release.
    pub fn k3s_assets(self) -> (&'static str, &'static str, &'static str) {
        match self {
            GuestArch::Amd64 => (
                "k3s",
                "sha256sum-amd64.txt",
                "k3s-airgap-images-amd64.tar.zst",
            ),
            GuestArch::Arm64 => (
                "k3s-arm64",
                "sha256sum-arm64.txt",
                "k3s-airgap-images-arm64.tar.zst",
            ),
        }
    }

    fn host_native(self) -> bool {
        matches!(
            (self, std::env::consts::ARCH),
            (GuestArch::Amd64, "x86_64") | (GuestArch::Arm64, "aarch64")
        )
    }
}

/// Host of the test board's image URL (`tests/vm/boards/images/*.yaml`).
pub const IMAGE_HOST: &str = "images.example.test";

/// `tests/vm` in the source tree.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// `tests/vm/boards`, for `$PIKUBE_BOARDS_DIR`.
pub fn boards_dir() -> PathBuf {
    fixture_dir().join("boards")
}

/// Where built root file systems and disk images are kept between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PIKUBE_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pikube-vm-cache"))
}

/// Installs everything the boot test needs on Debian bookworm (the QEMU system emulators must
/// come from bookworm-backports to match the backported qemu-utils).
pub const APT_HINT: &str = "enable bookworm-backports (the mirror of your other Debian \
sources, suite bookworm-backports), then: apt-get update && \
apt-get install -y mmdebstrap mtools dosfstools e2fsprogs fdisk xz-utils zstd && \
apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils \
(arm64 also: qemu-system-arm qemu-user-static); .ci/run does all of this";

/// Checks that this machine can build and boot the guest. `Err` holds the reason to skip
/// (or, under `PIKUBE_REQUIRE_ORACLES=1`, to fail).
pub fn preflight(arch: GuestArch) -> Result<(), String> {
    if !is_root() {
        return Err(
            "not running as root (building the guest's root file system with mmdebstrap \
                    and keeping its file owners needs root)"
                .into(),
        );
    }
    let mut tools = vec![
        arch.qemu_system(),
        "qemu-img",
        "mcopy",
        "debugfs",
        "sfdisk",
        "mkfs.vfat",
        "mkfs.ext4",
        "xz",
        "tar",
    ];
    if !cached_image_path(arch, DiskLayout::Raspi).exists() {
        tools.push("mmdebstrap");
    }
    let missing: Vec<&str> = tools.into_iter().filter(|t| !have_tool(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {}; install with: {APT_HINT}",
            missing.join(", ")
        ));
    }
    let ver = Command::new(arch.qemu_system()).arg("--version").output();
    match ver {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(format!(
                "{} --version failed: {}",
                arch.qemu_system(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(e) => return Err(format!("cannot run {}: {e}", arch.qemu_system())),
    }
    if !arch.host_native() && !cached_image_path(arch, DiskLayout::Raspi).exists() {
        enable_binfmt(arch)?;
    }
    Ok(())
}

/// Makes sure foreign binaries run through qemu-user-static (mmdebstrap runs the guest's
/// maintainer scripts).
fn enable_binfmt(arch: GuestArch) -> Result<(), String> {
    let name = match arch {
        GuestArch::Arm64 => "qemu-aarch64",
        GuestArch::Amd64 => "qemu-x86_64",
    };
    let misc = Path::new("/proc/sys/fs/binfmt_misc");
    if !misc.join("register").exists() {
        let _ = Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(misc)
            .status();
    }
    if misc.join(name).exists() {
        return Ok(());
    }
    let conf = Path::new("/usr/lib/binfmt.d").join(format!("{name}.conf"));
    let line = std::fs::read_to_string(&conf).map_err(|e| {
        format!(
            "{} is not registered with binfmt_misc and {} cannot be read ({e}); \
             install qemu-user-static",
            name,
            conf.display()
        )
    })?;
    std::fs::write(misc.join("register"), line.trim()).map_err(|e| {
        format!(
            "cannot register {name} with {}: {e}",
            misc.join("register").display()
        )
    })?;
    Ok(())
}

/// The Debian archive apt uses here (first `deb` source for bookworm that is not the security
/// archive), or `$PIKUBE_DEBIAN_MIRROR`.
pub fn debian_mirror() -> Option<String> {
    if let Ok(m) = std::env::var("PIKUBE_DEBIAN_MIRROR")
        && !m.is_empty()
    {
        return Some(m);
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for uri in apt_uris(&text) {
            let u = uri.trim_end_matches('/');
            if u.ends_with("/debian") && !u.contains("security") {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// Archive URIs in a one-line (`deb URI suite ...`) or deb822 (`URIs: ...`) source list.
pub fn apt_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("URIs:") {
            out.extend(rest.split_whitespace().map(str::to_string));
        } else if let Some(rest) = line.strip_prefix("deb ") {
            // Skip `[option=value ...]`.
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
                None => rest,
            };
            if let Some(uri) = rest.split_whitespace().next() {
                out.push(uri.to_string());
            }
        }
    }
    out
}

fn hash_files(parts: &[&[u8]]) -> String {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_le_bytes());
        all.extend_from_slice(p);
    }
    sha256_hex(&all)[..16].to_string()
}

fn read_fixture(name: &str) -> Vec<u8> {
    let p = fixture_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()))
}

/// Cache key of the root file system: the build script (with its package list), the initramfs
/// hook it copies in, and the arch.
fn rootfs_key(arch: GuestArch) -> String {
    hash_files(&[
        arch.debian().as_bytes(),
        &read_fixture("build-rootfs.sh"),
        &read_fixture("initramfs-virtio-hook"),
    ])
}

/// How the Debian test image is laid out: like which distribution's download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskLayout {
    /// Ubuntu's preinstalled raspi image (tests/vm/make-disk.sh).
    Raspi,
    /// Ubuntu for Rockchip's preinstalled server image (tests/vm/make-disk-rockchip.sh).
    Rockchip,
    /// Armbian for an Allwinner board, booted by U-Boot through /boot/boot.scr
    /// (tests/vm/make-disk-armbian.sh; arm64 only).
    Armbian,
}

impl DiskLayout {
    fn script(self) -> &'static str {
        match self {
            DiskLayout::Raspi => "make-disk.sh",
            DiskLayout::Rockchip => "make-disk-rockchip.sh",
            DiskLayout::Armbian => "make-disk-armbian.sh",
        }
    }

    /// Cache file prefix and catalog file stem.
    fn stem(self) -> &'static str {
        match self {
            DiskLayout::Raspi => "debian-testpc",
            DiskLayout::Rockchip => "debian-testpc-rockchip",
            DiskLayout::Armbian => "debian-testarm-armbian",
        }
    }
}

/// Cache key of the disk image: the root file system, the layout script and the fact reporter
/// it adds.
fn disk_key(arch: GuestArch, layout: DiskLayout) -> String {
    hash_files(&[
        rootfs_key(arch).as_bytes(),
        &read_fixture(layout.script()),
        &read_fixture("pikube-facts"),
        &read_fixture("pikube-facts.service"),
    ])
}

fn cached_rootfs_path(arch: GuestArch) -> PathBuf {
    cache_dir().join(format!("rootfs-{arch}-{}.tar", rootfs_key(arch)))
}

fn cached_image_path(arch: GuestArch, layout: DiskLayout) -> PathBuf {
    cache_dir().join(format!(
        "{}-{arch}-{}.img.xz",
        layout.stem(),
        disk_key(arch, layout)
    ))
}

/// Removes older cache entries `<prefix>*` other than `keep`, so the cache does not grow with
/// every change of the scripts.
fn prune(prefix: &str, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(cache_dir()) {
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(prefix) && p != keep {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

fn run_logged(cmd: &mut Command, what: &str) -> Result<(), String> {
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!("boot test: {what} took {:.0?}", t.elapsed());
    Ok(())
}

/// The Debian test image in raspi layout (`.img.xz`), from the cache or built now.
pub fn base_image(arch: GuestArch) -> Result<PathBuf, String> {
    base_image_in(arch, DiskLayout::Raspi)
}

/// Held while a disk image is built, and while the root file system of an architecture is
/// looked up or built: tests of one binary ask at the same time; one builds, the others wait.
static DISKS: std::sync::Mutex<()> = std::sync::Mutex::new(());
static ROOTFS_AMD64: std::sync::Mutex<()> = std::sync::Mutex::new(());
static ROOTFS_ARM64: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock(m: &'static std::sync::Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cached root file system tarball of `arch`, built now when missing.
fn rootfs(arch: GuestArch) -> Result<PathBuf, String> {
    let _building = lock(match arch {
        GuestArch::Amd64 => &ROOTFS_AMD64,
        GuestArch::Arm64 => &ROOTFS_ARM64,
    });
    let rootfs = cached_rootfs_path(arch);
    if rootfs.exists() {
        eprintln!("boot test: using cached root fs {}", rootfs.display());
    } else {
        let mirror = debian_mirror().ok_or_else(|| {
            "no Debian archive in /etc/apt/sources.list*: set PIKUBE_DEBIAN_MIRROR".to_string()
        })?;
        eprintln!(
            "boot test: building the {arch} root fs with mmdebstrap from {mirror} into {} \
             (cold cache: minutes)",
            rootfs.display()
        );
        // mmdebstrap picks its output format from the extension: keep `.tar` last.
        let tmp = rootfs.with_extension("part.tar");
        let _ = std::fs::remove_file(&tmp);
        let r = run_logged(
            Command::new("sh")
                .arg(fixture_dir().join("build-rootfs.sh"))
                .arg(arch.debian())
                .arg(&mirror)
                .arg(&tmp),
            "mmdebstrap root fs build",
        );
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &rootfs).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                rootfs.display()
            )
        })?;
        prune(&format!("rootfs-{arch}-"), &rootfs);
    }
    Ok(rootfs)
}

/// The Debian test image in `layout` (`.img.xz`), from the cache or built now; every layout
/// shares the cached root file system.
pub fn base_image_in(arch: GuestArch, layout: DiskLayout) -> Result<PathBuf, String> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create the VM cache {}: {e}", cache.display()))?;
    let image = cached_image_path(arch, layout);
    let cached = || {
        let hit = image.exists();
        if hit {
            eprintln!(
                "boot test: using cached {arch} image {} (delete it to rebuild)",
                image.display()
            );
        }
        hit
    };
    if cached() {
        return Ok(image);
    }
    let rootfs = rootfs(arch)?;
    // Tests of one binary ask for images at the same time: one builds, the others wait.
    let _building = lock(&DISKS);
    if cached() {
        return Ok(image);
    }
    let tmp = image.with_extension("part");
    let _ = std::fs::remove_file(&tmp);
    let r = run_logged(
        Command::new("sh")
            .arg(fixture_dir().join(layout.script()))
            .arg(&rootfs)
            .arg(&tmp)
            .env("TMPDIR", &cache),
        &format!("{layout:?}-layout disk image"),
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &image).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            image.display()
        )
    })?;
    prune(&format!("{}-{arch}-", layout.stem()), &image);
    Ok(image)
}

/// Serves the base image and a `SHA256SUMS` beside it where the test board's catalog URL
/// (`https://images.example.test/<file>`) lands through `--mirror srv.url()`.
pub fn serve_base_image(srv: &TestServer, arch: GuestArch, image: &Path) {
    let bytes = std::fs::read(image)
        .unwrap_or_else(|e| panic!("cannot read base image {}: {e}", image.display()));
    let sha = sha256_hex(&bytes);
    let file = arch.image_file();
    srv.add(&format!("/{IMAGE_HOST}/{file}"), bytes);
    srv.add(
        &format!("/{IMAGE_HOST}/SHA256SUMS"),
        format!("{sha} *{file}\n"),
    );
}

/// Serves the Rockchip-layout base image (amd64) and its `.sha256` (`<hex>  <name>`, as
/// ubuntu-rockchip publishes it) where `tests/vm/boards/images/debian-testpc-rockchip.yaml`
/// points through `--mirror srv.url()`.
pub fn serve_rockchip_image(srv: &TestServer, image: &Path) {
    serve_image_as(srv, image, "debian-testpc-rockchip.img.xz");
}

/// Serves a base image from the VM cache under `file` and its `<file>.sha256`
/// (`<hex>  <name>`) where a test catalog entry with
/// `url: https://images.example.test/<file>` points through `--mirror srv.url()`.
pub fn serve_image_as(srv: &TestServer, image: &Path, file: &str) {
    let bytes = std::fs::read(image)
        .unwrap_or_else(|e| panic!("cannot read base image {}: {e}", image.display()));
    let sha = sha256_hex(&bytes);
    srv.add(&format!("/{IMAGE_HOST}/{file}"), bytes);
    srv.add(
        &format!("/{IMAGE_HOST}/{file}.sha256"),
        format!("{sha}  {file}\n"),
    );
}

/// What [`serve_k3s_standin`] published.
#[derive(Clone, Debug)]
pub struct K3sRelease {
    pub version: String,
    /// Mirror path of the release directory, `/github.com/k3s-io/k3s/releases/download/<v>`.
    pub dir: String,
    pub binary: Vec<u8>,
    pub binary_sha256: String,
    pub airgap: Vec<u8>,
    pub airgap_sha256: String,
    /// Names of the assets, as in [`GuestArch::k3s_assets`].
    pub binary_name: String,
    pub sums_name: String,
    pub airgap_name: String,
}

/// The `<version>` path segment of a k3s release URL (`+` as `%2B`).
pub fn k3s_version_segment(version: &str) -> String {
    version.replace('+', "%2B")
}

/// Publishes the stand-in k3s (`tests/vm/k3s-standin.sh`), its checksum list and a small airgap
/// image tarball (a zstd-compressed tar holding an empty OCI layout) at the k3s release layout:
/// `/github.com/k3s-io/k3s/releases/download/<version, + as %2B>/<asset>`.
pub fn serve_k3s_standin(srv: &TestServer, version: &str, arch: GuestArch) -> K3sRelease {
    let (bin_name, sums_name, airgap_name) = arch.k3s_assets();
    let binary = read_fixture("k3s-standin.sh");
    let airgap = dummy_airgap_tarball();
    let binary_sha256 = sha256_hex(&binary);
    let airgap_sha256 = sha256_hex(&airgap);
    let dir = format!(
        "/github.com/k3s-io/k3s/releases/download/{}",
        k3s_version_segment(version)
    );
    srv.add(&format!("{dir}/{bin_name}"), binary.clone());
    srv.add(&format!("{dir}/{airgap_name}"), airgap.clone());
    srv.add(
        &format!("{dir}/{sums_name}"),
        format!("{binary_sha256}  {bin_name}\n{airgap_sha256}  {airgap_name}\n"),
    );
    K3sRelease {
        version: version.to_string(),
        dir,
        binary,
        binary_sha256,
        airgap,
        airgap_sha256,
        binary_name: bin_name.into(),
        sums_name: sums_name.into(),
        airgap_name: airgap_name.into(),
    }
}

/// A tar (ustar) with `oci-layout` and an `index.json` listing no manifests, zstd-compressed.
pub fn dummy_airgap_tarball() -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, body) in [
        ("oci-layout", &br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
        (
            "index.json",
            &br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#[..],
        ),
    ] {
        tar.extend_from_slice(&ustar_header(name, body.len()));
        tar.extend_from_slice(body);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    zstd::encode_all(&tar[..], 3).expect("zstd compression of an in-memory buffer")
}

fn ustar_header(name: &str, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Byte offset of the partition holding the FAT (or ext4) file system with `label`.
pub fn partition_offset(image: &Path, label: &str) -> Result<u64, String> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run sfdisk: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sfdisk --json {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("sfdisk --json output of {}: {e}", image.display()))?;
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for p in parts {
        let start = p["start"].as_u64().unwrap_or(0) * 512;
        if fs_label(image, start).as_deref() == Some(label) {
            return Ok(start);
        }
    }
    Err(format!(
        "{} has no partition labelled {label}",
        image.display()
    ))
}

/// Label of the FAT or ext4 file system starting at `offset`.
fn fs_label(image: &Path, offset: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).ok()?;
    let mut buf = vec![0u8; 2048];
    f.seek(SeekFrom::Start(offset)).ok()?;
    f.read_exact(&mut buf).ok()?;
    let clean = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    if &buf[1024 + 56..1024 + 58] == b"\x53\xef" {
        return Some(clean(&buf[1024 + 120..1024 + 136]));
    }
    if &buf[82..87] == b"FAT32" {
        return Some(clean(&buf[71..82]));
    }
    if &buf[54..57] == b"FAT" {
        return Some(clean(&buf[43..54]));
    }
    None
}

/// Copies `name` out of the FAT file system at `offset` with mtools.
pub fn fat_read(image: &Path, offset: u64, name: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::{name}"))
        .arg("-")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| format!("cannot run mcopy: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mcopy ::{name} from {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Whether `path` exists in the ext4 file system at `offset` (debugfs).
pub fn ext4_exists(image: &Path, offset: u64, path: &str) -> Result<bool, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("Inode:"))
}

/// Kernel, initrd and command line as the Raspberry Pi firmware finds them: `config.txt` names
/// `kernel=`, `initramfs FILE` and `cmdline=` (relative to `os_prefix=`).
#[derive(Clone, Debug)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

pub fn extract_boot_files(image: &Path, dir: &Path) -> Result<BootFiles, String> {
    // Ubuntu's boot partition, else Raspberry Pi OS's.
    let Ok(off) =
        partition_offset(image, "system-boot").or_else(|_| partition_offset(image, "bootfs"))
    else {
        return extract_extlinux_boot_files(image, dir);
    };
    let config = String::from_utf8_lossy(&fat_read(image, off, "config.txt")?).to_string();
    let names = FirmwareFiles::parse(&config)
        .map_err(|e| format!("config.txt in {}: {e}", image.display()))?;
    let k = dir.join("vmlinuz");
    let i = dir.join("initrd.img");
    std::fs::write(&k, fat_read(image, off, &names.kernel)?)
        .map_err(|e| format!("cannot write {}: {e}", k.display()))?;
    std::fs::write(&i, fat_read(image, off, &names.initrd)?)
        .map_err(|e| format!("cannot write {}: {e}", i.display()))?;
    let cmd = fat_read(image, off, &names.cmdline)?;
    Ok(BootFiles {
        kernel: k,
        initrd: i,
        cmdline: String::from_utf8_lossy(&cmd).trim().to_string(),
    })
}

/// Kernel, initrd and command line as the Raspberry Pi firmware finds them in a node's TFTP
/// directory of a netboot tree (`config.txt` read as on its boot partition).
pub fn tftp_boot_files(dir: &Path) -> Result<BootFiles, String> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let config = String::from_utf8_lossy(&read("config.txt")?).to_string();
    let names = FirmwareFiles::parse(&config)
        .map_err(|e| format!("config.txt in {}: {e}", dir.display()))?;
    Ok(BootFiles {
        kernel: dir.join(&names.kernel),
        initrd: dir.join(&names.initrd),
        cmdline: String::from_utf8_lossy(&read(&names.cmdline)?)
            .trim()
            .to_string(),
    })
}

/// The files `config.txt` makes the firmware load, relative to the boot partition
/// (`os_prefix` applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareFiles {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

impl FirmwareFiles {
    pub fn parse(config: &str) -> Result<FirmwareFiles, String> {
        let (mut kernel, mut initrd, mut cmdline, mut prefix, mut auto_initramfs) = (
            "kernel8.img".to_string(),
            None,
            "cmdline.txt".to_string(),
            String::new(),
            false,
        );
        // As the firmware does on a normal boot: settings before any section and in `[all]`
        // sections; conditional sections (`[tryboot]`, `[pi4]`, ...) do not apply.
        let mut applies = true;
        for line in config.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.starts_with('[') {
                applies = line.eq_ignore_ascii_case("[all]");
                continue;
            }
            if !applies {
                continue;
            }
            if let Some(v) = line.strip_prefix("kernel=") {
                kernel = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("cmdline=") {
                cmdline = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("os_prefix=") {
                prefix = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("initramfs ") {
                initrd = v.split_whitespace().next().map(str::to_string);
            } else if let Some(v) = line.strip_prefix("auto_initramfs=") {
                auto_initramfs = v.trim() == "1";
            }
        }
        // auto_initramfs: kernelN.img boots with initramfsN.
        if initrd.is_none() && auto_initramfs {
            initrd = kernel
                .strip_prefix("kernel")
                .and_then(|k| k.strip_suffix(".img"))
                .map(|n| format!("initramfs{n}"));
        }
        let initrd = initrd.ok_or_else(|| format!("names no initramfs:\n{config}"))?;
        Ok(FirmwareFiles {
            kernel: format!("{prefix}{kernel}"),
            initrd: format!("{prefix}{initrd}"),
            cmdline: format!("{prefix}{cmdline}"),
        })
    }
}

/// Raspberry Pi OS image layouts other than Ubuntu 24.04's, laid out from the same root file
/// system by `tests/vm/make-disk-layout.sh` (amd64 guests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Ubuntu 26.04: A/B boot under `current/`.
    Ubuntu2604,
    /// Raspberry Pi OS trixie: `bootfs`/`rootfs`, root by PARTUUID, sshd disabled.
    Raspios,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Ubuntu2604 => "ubuntu-26.04",
            Layout::Raspios => "raspios",
        }
    }

    /// The OS image of board `testpc-rpi` (tests/vm/boards) with this layout.
    pub fn os(self) -> &'static str {
        match self {
            Layout::Ubuntu2604 => "debian-testpc-ab",
            Layout::Raspios => "debian-testpc-raspios",
        }
    }

    /// File name at the end of its catalog URL.
    pub fn image_file(self) -> String {
        format!("{}.img.xz", self.os())
    }
}

fn layout_image_path(layout: Layout) -> PathBuf {
    let arch = GuestArch::Amd64;
    let key = hash_files(&[
        rootfs_key(arch).as_bytes(),
        layout.name().as_bytes(),
        &read_fixture("make-disk-layout.sh"),
        &read_fixture("pikube-facts"),
        &read_fixture("pikube-facts.service"),
    ]);
    cache_dir().join(format!("layout-{}-{arch}-{key}.img.xz", layout.name()))
}

/// The amd64 base image with `layout`, from the cache or laid out from the cached root file
/// system (built first when missing, as [`base_image`] does).
pub fn layout_image(layout: Layout) -> Result<PathBuf, String> {
    let rootfs = rootfs(GuestArch::Amd64)?;
    let _building = lock(&DISKS);
    let image = layout_image_path(layout);
    if image.exists() {
        eprintln!(
            "boot test: using cached {} image {}",
            layout.name(),
            image.display()
        );
        return Ok(image);
    }
    let tmp = image.with_extension("part");
    let _ = std::fs::remove_file(&tmp);
    let r = run_logged(
        Command::new("sh")
            .arg(fixture_dir().join("make-disk-layout.sh"))
            .arg(layout.name())
            .arg(&rootfs)
            .arg(&tmp)
            .env("TMPDIR", cache_dir()),
        &format!("{}-layout disk image", layout.name()),
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &image).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            image.display()
        )
    })?;
    prune(&format!("layout-{}-", layout.name()), &image);
    Ok(image)
}

/// Serves a layout's image with its checksum list where its catalog URL lands through
/// `--mirror srv.url()`: `SHA256SUMS` for Ubuntu's layout, `<file>.sha256` for Raspberry Pi
/// OS's, as their publishers do.
pub fn serve_layout_image(srv: &TestServer, layout: Layout, image: &Path) {
    let bytes = std::fs::read(image)
        .unwrap_or_else(|e| panic!("cannot read base image {}: {e}", image.display()));
    let sha = sha256_hex(&bytes);
    let file = layout.image_file();
    srv.add(&format!("/{IMAGE_HOST}/{}/{file}", layout.name()), bytes);
    match layout {
        Layout::Ubuntu2604 => srv.add(
            &format!("/{IMAGE_HOST}/{}/SHA256SUMS", layout.name()),
            format!("{sha} *{file}\n"),
        ),
        Layout::Raspios => srv.add(
            &format!("/{IMAGE_HOST}/{}/{file}.sha256", layout.name()),
            format!("{sha}  {file}\n"),
        ),
    }
}

/// Kernel, initrd and command line as U-Boot's distro boot finds them on an Ubuntu for
/// Rockchip image: the first `label` of `/boot/extlinux/extlinux.conf` on the root file
/// system (`cloudimg-rootfs`), its `linux`, `initrd` and `append` lines.
pub fn extract_extlinux_boot_files(image: &Path, dir: &Path) -> Result<BootFiles, String> {
    let off = partition_offset(image, "cloudimg-rootfs")?;
    let conf = String::from_utf8_lossy(&ext4_read(image, off, "/boot/extlinux/extlinux.conf")?)
        .to_string();
    let (mut kernel, mut initrd, mut append) = (None, None, None);
    let mut labels = 0;
    for line in conf.lines() {
        let line = line.trim();
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match key.to_ascii_lowercase().as_str() {
            "label" => labels += 1,
            "linux" | "kernel" if labels == 1 => kernel = Some(value.trim().to_string()),
            "initrd" if labels == 1 => initrd = Some(value.trim().to_string()),
            "append" if labels == 1 => append = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let (Some(kernel), Some(initrd), Some(append)) = (kernel, initrd, append) else {
        return Err(format!(
            "the first entry of extlinux.conf in {} lacks linux, initrd or append:\n{conf}",
            image.display()
        ));
    };
    let k = dir.join("vmlinuz");
    let i = dir.join("initrd.img");
    std::fs::write(&k, ext4_read(image, off, &kernel)?)
        .map_err(|e| format!("cannot write {}: {e}", k.display()))?;
    std::fs::write(&i, ext4_read(image, off, &initrd)?)
        .map_err(|e| format!("cannot write {}: {e}", i.display()))?;
    Ok(BootFiles {
        kernel: k,
        initrd: i,
        cmdline: append,
    })
}

/// Contents of `path` in the ext4 file system at `offset` (debugfs).
pub fn ext4_read(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "debugfs cannot read {path} in {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Names of the regular files in directory `dir` of the ext4 file system at `offset`
/// (debugfs `ls -p`), sorted.
pub fn ext4_list(image: &Path, offset: u64, dir: &str) -> Result<Vec<String>, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p {dir}"))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.starts_with('/') {
        return Err(format!(
            "debugfs cannot list {dir} in {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `/inode/mode/uid/gid/name/size/`; regular files have mode 100xxx.
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() >= 7 && f[2].starts_with("100")).then(|| f[5].to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Facts a booted guest printed (`PIKUBE-FACT`, `PIKUBE-BEGIN`/`PIKUBE|`/`PIKUBE-END`).
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub facts: Vec<(String, String)>,
    /// name → (lines, exit status)
    pub blocks: BTreeMap<String, (Vec<String>, Option<i32>)>,
}

impl Facts {
    pub fn parse(log: &str) -> Facts {
        let mut f = Facts::default();
        for raw in log.lines() {
            let line = raw.trim_end_matches('\r');
            if let Some(i) = line.find("PIKUBE-FACT ") {
                let rest = &line[i + "PIKUBE-FACT ".len()..];
                if let Some((k, v)) = rest.split_once('=') {
                    f.facts.push((k.to_string(), v.to_string()));
                }
            } else if let Some(i) = line.find("PIKUBE| ") {
                let rest = &line[i + "PIKUBE| ".len()..];
                if let Some((name, text)) = rest.split_once("| ") {
                    f.blocks
                        .entry(name.to_string())
                        .or_default()
                        .0
                        .push(text.to_string());
                }
            } else if let Some(i) = line.find("PIKUBE-BEGIN ") {
                let name = line[i + "PIKUBE-BEGIN ".len()..].trim();
                f.blocks.entry(name.to_string()).or_default();
            } else if let Some(i) = line.find("PIKUBE-END ") {
                let rest = &line[i + "PIKUBE-END ".len()..];
                if let Some((name, rc)) = rest.split_once(" rc=") {
                    f.blocks.entry(name.to_string()).or_default().1 = rc.trim().parse().ok();
                }
            }
        }
        f
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.facts
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn block(&self, name: &str) -> &[String] {
        self.blocks
            .get(name)
            .map(|(l, _)| l.as_slice())
            .unwrap_or(&[])
    }
}

/// One boot of an image.
#[derive(Debug)]
pub struct Boot {
    pub log: String,
    pub facts: Facts,
    pub elapsed: Duration,
    pub timed_out: bool,
    pub accel: String,
}

impl Boot {
    /// The last `n` lines of the console log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// QEMU accelerator: TCG unless `PIKUBE_BOOT_ACCEL` says otherwise (`kvm` works only with
/// nested virtualisation; guests hang under KVM on hosts without it).
pub fn accel() -> String {
    std::env::var("PIKUBE_BOOT_ACCEL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tcg".into())
}

/// Boots `image` without modifying it (through a qcow2 overlay in `work`), with the kernel,
/// initrd and command line the image's own boot partition names, until the guest powers off
/// or `timeout` passes. User-mode network, restricted: the guest reaches nothing outside.
pub fn boot(image: &Path, arch: GuestArch, work: &Path, timeout: Duration) -> Result<Boot, String> {
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let files = extract_boot_files(image, work)?;
    let overlay = work.join("disk.qcow2");
    qcow2_overlay(image, &overlay)?;
    run_guest(&Guest {
        what: image.display().to_string(),
        files: &files,
        arch,
        work,
        timeout,
        disk: Some(&overlay),
        network: Network::Restricted,
    })
}

/// The guest's user-mode network (QEMU's built-in DHCP hands it 10.0.2.15).
#[derive(Clone, Debug)]
pub enum Network {
    /// The guest reaches nothing outside and gets no default route.
    Restricted,
    /// The guest reaches the host's 127.0.0.1:PORT as 10.0.2.2:PORT (e.g. nbd-server); its
    /// NIC has `mac` when given.
    HostReachable { mac: Option<String> },
}

/// One QEMU run: direct kernel boot of `files`, with or without a (qcow2) disk.
pub struct Guest<'a> {
    /// Names the guest in messages.
    pub what: String,
    pub files: &'a BootFiles,
    pub arch: GuestArch,
    /// Holds the console log.
    pub work: &'a Path,
    pub timeout: Duration,
    pub disk: Option<&'a Path>,
    pub network: Network,
}

/// Runs `g` until the guest powers off or its timeout passes; the console facts it printed.
pub fn run_guest(g: &Guest<'_>) -> Result<Boot, String> {
    let (arch, files, work) = (g.arch, g.files, g.work);
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let log_path = work.join("console.log");
    // no_timer_check: on a loaded host a TCG x86 guest can fail the kernel's IO-APIC timer
    // check and panic ("IO-APIC + timer doesn't work") before it mounts anything.
    let append = match arch {
        GuestArch::Amd64 => format!(
            "{} console={} no_timer_check",
            files.cmdline,
            arch.console()
        ),
        GuestArch::Arm64 => format!("{} console={}", files.cmdline, arch.console()),
    };
    let accel = accel();
    let mut cmd = Command::new(arch.qemu_system());
    match arch {
        GuestArch::Amd64 => cmd.args(["-machine", "pc"]),
        GuestArch::Arm64 => cmd.args(["-machine", "virt", "-cpu", "cortex-a72"]),
    };
    cmd.args(["-accel", &accel, "-m", "1024", "-smp", "1"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log_path.display()))
        .arg("-kernel")
        .arg(&files.kernel)
        .arg("-initrd")
        .arg(&files.initrd)
        .arg("-append")
        .arg(&append);
    if let Some(disk) = g.disk {
        cmd.arg("-drive").arg(format!(
            "file={},format=qcow2,if=virtio,cache=unsafe",
            disk.display()
        ));
    }
    let nic = match &g.network {
        Network::Restricted => {
            cmd.args(["-netdev", "user,id=n0,restrict=on"]);
            "virtio-net-pci,netdev=n0".to_string()
        }
        Network::HostReachable { mac } => {
            cmd.args(["-netdev", "user,id=n0"]);
            match mac {
                Some(m) => format!("virtio-net-pci,netdev=n0,mac={m}"),
                None => "virtio-net-pci,netdev=n0".to_string(),
            }
        }
    };
    cmd.arg("-device")
        .arg(nic)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!(
        "boot test: booting {} ({arch}, accel {accel}) with: {append}",
        g.what
    );
    run_qemu(cmd, &log_path, g.timeout, accel)
}

/// A qcow2 file at `overlay` whose reads fall through to the raw `image` and whose writes
/// stay in it: a guest boots the image without changing it.
pub fn qcow2_overlay(image: &Path, overlay: &Path) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(image)
        .arg(overlay)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create overlay for {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs a prepared QEMU command whose serial console goes to `log_path` until the guest
/// powers off or `timeout` passes, and reads the facts it printed.
pub fn run_qemu(
    cmd: Command,
    log_path: &Path,
    timeout: Duration,
    accel: String,
) -> Result<Boot, String> {
    run_qemu_typed(cmd, log_path, timeout, accel, None)
}

/// [`run_qemu`], writing `keys` to QEMU's stdin (a console on stdio) once it runs; stdin
/// stays open until the guest stops.
pub fn run_qemu_typed(
    mut cmd: Command,
    log_path: &Path,
    timeout: Duration,
    accel: String,
    keys: Option<Vec<u8>>,
) -> Result<Boot, String> {
    let what = cmd.get_program().to_string_lossy().to_string();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let _stdin = match (keys, child.stdin.take()) {
        (Some(k), Some(mut stdin)) => {
            use std::io::Write;
            stdin
                .write_all(&k)
                .map_err(|e| format!("cannot type into the guest's console: {e}"))?;
            Some(stdin)
        }
        (_, s) => s,
    };
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = start.elapsed();
    let out = child.wait_with_output().ok();
    let raw = std::fs::read(&log_path).unwrap_or_default();
    let log = String::from_utf8_lossy(&raw).to_string();
    if let Some(o) = out {
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() && !timed_out && log.is_empty() {
            return Err(format!("QEMU failed ({}): {err}", o.status));
        }
    }
    Ok(Boot {
        facts: Facts::parse(&log),
        log,
        elapsed,
        timed_out,
        accel,
    })
}

/// U-Boot for QEMU's arm64 virt machine, from Debian's u-boot-qemu.
pub const UBOOT_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// Checks that U-Boot guests can run here (arm64 QEMU, Debian's U-Boot build, mkimage for the
/// Armbian layout's boot script), on top of [`preflight`]. `Err` holds the reason to skip.
pub fn preflight_uboot() -> Result<(), String> {
    preflight(GuestArch::Arm64)?;
    let missing: Vec<&str> = ["mkimage", "openssl", "ssh-keygen"]
        .into_iter()
        .filter(|t| !have_tool(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {}; install u-boot-tools, openssl and openssh-client",
            missing.join(", ")
        ));
    }
    if !Path::new(UBOOT_ARM64).exists() {
        return Err(format!(
            "{UBOOT_ARM64} is missing; install u-boot-qemu (apt-get install u-boot-qemu)"
        ));
    }
    Ok(())
}

/// QEMU's arm64 virt machine with U-Boot as its firmware, its serial console into
/// `work/console.log` (and, when `typed`, reading QEMU's stdin), one vCPU, and a virtio NIC
/// on QEMU's user network with `netdev`'s extra options (`,tftp=DIR` for PXE). No disk: add
/// one with `-drive`.
pub fn uboot_guest(
    work: &Path,
    netdev: &str,
    mac: &str,
    typed: bool,
) -> Result<(Command, PathBuf), String> {
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let log_path = work.join("console.log");
    let mut cmd = Command::new(GuestArch::Arm64.qemu_system());
    cmd.args(["-machine", "virt", "-cpu", "cortex-a72"])
        .args(["-accel", &accel(), "-m", "1024", "-smp", "1"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-bios")
        .arg(UBOOT_ARM64)
        .arg("-netdev")
        .arg(format!("user,id=n0,restrict=on{netdev}"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if typed {
        cmd.arg("-chardev")
            .arg(format!(
                "stdio,id=con0,signal=off,logfile={}",
                log_path.display()
            ))
            .args(["-serial", "chardev:con0"])
            .stdin(Stdio::piped());
    } else {
        cmd.arg("-serial")
            .arg(format!("file:{}", log_path.display()))
            .stdin(Stdio::null());
    }
    Ok((cmd, log_path))
}

/// Boots `image` (unchanged, through a qcow2 overlay in `work`) on QEMU's arm64 virt machine
/// with U-Boot as the firmware: U-Boot's standard boot finds the image's own boot script or
/// extlinux.conf on the virtio disk, as a board's U-Boot finds them on its card.
pub fn boot_uboot_disk(image: &Path, work: &Path, timeout: Duration) -> Result<Boot, String> {
    let (mut cmd, log_path) = uboot_guest(work, "", "52:54:00:12:34:56", false)?;
    let overlay = work.join("disk.qcow2");
    qcow2_overlay(image, &overlay)?;
    cmd.arg("-drive").arg(format!(
        "file={},format=qcow2,if=virtio,cache=unsafe",
        overlay.display()
    ));
    let accel = accel();
    eprintln!(
        "boot test: booting {} (arm64, U-Boot, accel {accel})",
        image.display()
    );
    run_qemu(cmd, &log_path, timeout, accel)
}

/// Boots QEMU's arm64 virt machine with U-Boot and no disk, the way a board without a card
/// boots from the network: U-Boot takes a lease from QEMU's user network, whose TFTP server
/// serves `tftp_root`, and runs `commands` typed at its prompt (a board's `bootcmd_pxe`).
/// `guestfwd` (`tcp:ADDR:PORT-tcp:HOST:PORT`, repeated) lets the guest reach servers on this
/// machine; nothing else is reachable.
pub fn boot_uboot_net(
    tftp_root: &Path,
    mac: &str,
    guestfwd: &[String],
    commands: &str,
    work: &Path,
    timeout: Duration,
) -> Result<Boot, String> {
    let mut netdev = format!(",tftp={}", tftp_root.display());
    for f in guestfwd {
        netdev.push_str(&format!(",guestfwd={f}"));
    }
    let (cmd, log_path) = uboot_guest(work, &netdev, mac, true)?;
    let accel = accel();
    eprintln!(
        "boot test: network boot of {mac} from {} (arm64, U-Boot, accel {accel}): {commands}",
        tftp_root.display()
    );
    // A key stops U-Boot's autoboot countdown; the commands follow at its prompt.
    let keys = format!("\n\n{commands}\n");
    run_qemu_typed(cmd, &log_path, timeout, accel, Some(keys.into_bytes()))
}
