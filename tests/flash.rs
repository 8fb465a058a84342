//! `pikube-image flash` against real block devices (loop devices, as root) and a fake sysfs
//! tree: a built node image is written and verified, refusals leave the device as it was, an
//! interrupted flash leaves no bootable start, verification catches a changed byte, and
//! `--all --wait` flashes each card that appears.

mod support;

use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pikube_image::decompress::Compression;
use pikube_image::formats::Bmap;
use support::build_env::{K3S_VERSION, KEY, run_cli, serve_k3s, stderr, write_token};
use support::fixtures::{self, FixtureOpts};
use support::http::TestServer;

const MIB: u64 = 1 << 20;

/// A node image built once for the whole file: `out/cp1.img`, `cp1.bmap`, `cp1.img.zst`.
struct Built {
    dir: tempfile::TempDir,
}

impl Built {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn img(&self) -> PathBuf {
        self.out().join("cp1.img")
    }
    fn bmap(&self) -> Bmap {
        Bmap::load(&self.out().join("cp1.bmap")).unwrap()
    }
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pikube-flash")
            .tempdir()
            .unwrap();
        let fixture = fixtures::ubuntu_raspi(dir.path(), FixtureOpts::default());
        let xz = fixtures::compress(&fixture.image, Compression::Xz);
        let server = TestServer::start();
        std::fs::write(
            dir.path().join("cluster.yaml"),
            format!(
                "cluster: lab\nadmin:\n  user: ops\n  ssh_authorized_keys: [\"{KEY}\"]\nnodes:\n  - {{ name: cp1, board: rpi4, role: server }}\n"
            ),
        )
        .unwrap();
        write_token(dir.path());
        serve_k3s(&server, K3S_VERSION, b"#!/bin/sh\n", b"airgap");
        let out = run_cli(
            dir.path(),
            &[],
            &[
                "build",
                "--mirror",
                &server.url(),
                "--image",
                xz.to_str().unwrap(),
                "--out",
                "out",
                "--node",
                "cp1",
                "--format",
                "raw,bmap,zst",
            ],
        );
        assert!(out.status.success(), "build: {}", stderr(&out));
        Built { dir }
    })
}

/// A loop device on a file, detached when dropped.
struct Loop {
    dev: PathBuf,
    file: PathBuf,
}

impl Loop {
    fn new(file: &Path, flags: &[&str]) -> Loop {
        let o = Command::new("losetup")
            .args(flags)
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        let dev = PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
        Loop {
            dev,
            file: file.to_path_buf(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Root and losetup, or a skip.
fn loop_devices() -> bool {
    pikube_test_oracles::require_root("flashing a loop device")
        && pikube_test_oracles::require_tool("losetup", "mount")
}

/// A file of `len` bytes filled with a pattern that no image range holds.
fn patterned(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 ^ 0x5A).collect();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB) as usize;
        f.write_all_at(&chunk[..n], off).unwrap();
        off += n as u64;
    }
}

fn sha_of(path: &Path, len: u64) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    support::sha256_hex(&buf)
}

fn flash(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .arg("flash")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!("$ pikube-image flash {}\n{}", args.join(" "), stderr(&o));
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_built_image_is_flashed_to_a_loop_device_and_verified() {
    if !loop_devices() {
        return;
    }
    let b = built();
    let img = b.img();
    let size = std::fs::metadata(&img).unwrap().len();
    let raw = std::fs::read(&img).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // A zeroed device, by node name: it reads back as the image.
    let zeroed = scratch.path().join("zeroed");
    std::fs::File::create(&zeroed)
        .unwrap()
        .set_len(size + 8 * MIB)
        .unwrap();
    let l = Loop::new(&zeroed, &[]);
    let o = flash(&[
        "--node",
        "cp1",
        "--out",
        s(&b.out()),
        s(&l.dev),
        "--allow-fixed",
        "--yes",
    ]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("now holds node cp1") && err.contains("verified"),
        "{err}"
    );
    assert_eq!(sha_of(&l.dev, size), support::sha256_hex(&raw));
    drop(l);

    // A device full of a pattern, from the .img.zst with the build's bmap: the mapped ranges
    // hold the image, everything else is the pattern as it was.
    let dirty = scratch.path().join("dirty");
    patterned(&dirty, size + 8 * MIB);
    let before = std::fs::read(&dirty).unwrap();
    let l = Loop::new(&dirty, &[]);
    let o = flash(&[
        s(&b.out().join("cp1.img.zst")),
        s(&l.dev),
        "--allow-fixed",
        "--yes",
        "--json",
    ]);
    assert!(o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["image_size"], size);
    drop(l);
    let after = std::fs::read(&dirty).unwrap();
    let map = b.bmap();
    let mut mapped = vec![false; after.len()];
    for r in &map.ranges {
        mapped[r.start as usize..r.end as usize].fill(true);
    }
    assert!(map.mapped_bytes() < size / 2, "the image is mostly holes");
    assert_eq!(report["written"], map.mapped_bytes());
    for (i, m) in mapped.iter().enumerate() {
        let want = if *m { raw[i] } else { before[i] };
        assert!(
            after[i] == want,
            "byte {i} (mapped: {m}) is {}, not {want}",
            after[i]
        );
    }
}

/// The loop device's backing file's SHA-256, to show a refusal changed nothing.
fn file_sha(p: &Path) -> String {
    support::sha256_hex(&std::fs::read(p).unwrap())
}

fn refused(args: &[&str], device: &Loop, needles: &[&str]) {
    let before = file_sha(&device.file);
    let o = flash(args);
    assert!(!o.status.success(), "flash {args:?} must be refused");
    let err = stderr(&o);
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from: {err}");
    }
    assert_eq!(
        file_sha(&device.file),
        before,
        "a refusal wrote to {}",
        device.dev.display()
    );
}

#[test]
fn refusals_leave_the_device_as_it_was() {
    if !loop_devices()
        || !pikube_test_oracles::require_tool("sfdisk", "fdisk")
        || !pikube_test_oracles::require_tool("mkfs.ext4", "e2fsprogs")
    {
        return;
    }
    let b = built();
    let img = b.img();
    let size = std::fs::metadata(&img).unwrap().len();
    let scratch = tempfile::tempdir().unwrap();

    // Not removable, and not allowed.
    let plain = scratch.path().join("plain");
    patterned(&plain, size + MIB);
    let l = Loop::new(&plain, &[]);
    let dev = s(&l.dev).to_string();
    refused(
        &[s(&img), &dev, "--yes"],
        &l,
        &[&dev, "not a removable disk", "--allow-fixed"],
    );
    // No --yes and no terminal to ask on.
    refused(&[s(&img), &dev, "--allow-fixed"], &l, &[&dev, "--yes"]);
    // A partition instead of the disk is refused by the whole-disk check (loop partitions
    // need -P); a missing image before anything.
    refused(
        &[
            s(&scratch.path().join("none.img")),
            &dev,
            "--yes",
            "--allow-fixed",
        ],
        &l,
        &["none.img"],
    );
    drop(l);

    // Too small.
    let small = scratch.path().join("small");
    patterned(&small, size / 2);
    let l = Loop::new(&small, &[]);
    let dev = s(&l.dev).to_string();
    refused(
        &[s(&img), &dev, "--yes", "--allow-fixed"],
        &l,
        &[&dev, "larger card"],
    );
    drop(l);

    // Read-only.
    let ro = scratch.path().join("ro");
    patterned(&ro, size + MIB);
    let l = Loop::new(&ro, &["-r"]);
    let dev = s(&l.dev).to_string();
    refused(
        &[s(&img), &dev, "--yes", "--allow-fixed"],
        &l,
        &[&dev, "read-only"],
    );
    drop(l);

    // A mounted partition: refused, with --unmount offered.
    let parted = scratch.path().join("parted");
    patterned(&parted, size + MIB);
    let o = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&parted)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"label: dos\nstart=2048, size=65536, type=83\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "sfdisk: {}", stderr(&o));
    let l = Loop::new(&parted, &["-P"]);
    let name = l.dev.file_name().unwrap().to_str().unwrap().to_string();
    let sys_part = PathBuf::from(format!("/sys/block/{name}/{name}p1"));
    for _ in 0..30 {
        if sys_part.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dev = s(&l.dev).to_string();
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |what: &Path| {
        let mkfs = Command::new("mkfs.ext4")
            .arg("-q")
            .arg(what)
            .output()
            .unwrap();
        assert!(mkfs.status.success(), "mkfs.ext4: {}", stderr(&mkfs));
        let m = Command::new("mount")
            .args(["-o", "ro"])
            .arg(what)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(m.status.success(), "mount: {}", stderr(&m));
    };
    if sys_part.exists() {
        // Without udev, the partition's device node may be missing: make it.
        let part = PathBuf::from(format!("{dev}p1"));
        if !part.exists() {
            let num = std::fs::read_to_string(sys_part.join("dev")).unwrap();
            let (major, minor) = num.trim().split_once(':').unwrap();
            let mk = Command::new("mknod")
                .arg(&part)
                .args(["b", major, minor])
                .status()
                .unwrap();
            assert!(mk.success());
        }
        mount(&part);
        refused(
            &[s(&img), &dev, "--yes", "--allow-fixed"],
            &l,
            &[&dev, "mounted on", s(&mnt), "--unmount"],
        );
        // The partition itself is not a disk.
        refused(
            &[s(&img), s(&part), "--yes", "--allow-fixed"],
            &l,
            &["partition of", &dev],
        );
    } else {
        // A kernel without MBR partition support (CONFIG_MSDOS_PARTITION) shows no
        // partition: the whole device is mounted instead, which is refused the same way.
        eprintln!("no partition scanning on this kernel: mounting the whole {dev}");
        mount(&l.dev);
        refused(
            &[s(&img), &dev, "--yes", "--allow-fixed"],
            &l,
            &[&dev, "mounted on", s(&mnt), "--unmount"],
        );
    }
    let _ = Command::new("umount").arg(&mnt).status();
    drop(l);

    // A regular file without --allow-file; with it, the file becomes the image.
    let file = scratch.path().join("file.img");
    std::fs::write(&file, b"keep").unwrap();
    let o = flash(&[s(&img), s(&file), "--yes"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--allow-file"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let o = flash(&[s(&img), s(&file), "--yes", "--allow-file"]);
    assert!(o.status.success());
    assert_eq!(file_sha(&file), file_sha(&img));
    // The image itself is never a target.
    let o = flash(&[s(&img), s(&img), "--yes", "--allow-file"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("being flashed"), "{}", stderr(&o));
}

/// Runs a flash with a test hook, waiting for the hook's line on stderr.
fn paused(
    args: &[&str],
    hook: &str,
    line: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .arg("flash")
        .args(args)
        .env(hook, "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::io::BufReader::new(child.stderr.take().unwrap());
    let want = line.to_string();
    let lines = std::thread::spawn(move || {
        let mut all = String::new();
        for l in reader.lines() {
            let l = l.unwrap();
            if l.contains(&want) {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(300)).is_err() {
        let _ = child.kill();
        panic!("flash never paused: {}", lines.join().unwrap());
    }
    (child, lines)
}

#[test]
fn a_killed_flash_leaves_the_first_mib_as_it_was() {
    if !loop_devices() {
        return;
    }
    let b = built();
    let img = b.img();
    let size = std::fs::metadata(&img).unwrap().len();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("dev");
    patterned(&file, size);
    let before = std::fs::read(&file).unwrap();
    let l = Loop::new(&file, &[]);
    let (mut child, lines) = paused(
        &[s(&img), s(&l.dev), "--yes", "--allow-fixed"],
        "PIKUBE_TEST_PAUSE_AFTER_FIRST_RANGE",
        "paused after writing the first range",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{}", lines.join().unwrap());
    drop(l);
    let after = std::fs::read(&file).unwrap();
    let hold = MIB as usize;
    assert!(
        after[..hold] == before[..hold],
        "the first MiB was written before the rest"
    );
    assert!(
        after[hold..] != before[hold..],
        "the first range past it was written"
    );
    let raw = std::fs::read(&img).unwrap();
    assert!(
        raw[..hold] != before[..hold],
        "the image's first MiB differs from the pattern"
    );
}

#[test]
fn verification_catches_a_byte_changed_on_the_device() {
    if !loop_devices() {
        return;
    }
    let b = built();
    let img = b.img();
    let size = std::fs::metadata(&img).unwrap().len();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("dev");
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    let l = Loop::new(&file, &[]);
    // A byte in the middle of the second mapped range past the first MiB.
    let map = b.bmap();
    let r = map.ranges.iter().filter(|r| r.start >= MIB).nth(1).unwrap();
    let at = r.start + (r.end - r.start) / 2;
    let (mut child, lines) = paused(
        &[s(&img), s(&l.dev), "--yes", "--allow-fixed"],
        "PIKUBE_TEST_PAUSE_BEFORE_VERIFY",
        "paused before verifying",
    );
    {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&l.dev)
            .unwrap();
        let mut byte = [0u8];
        dev.read_exact_at(&mut byte, at).unwrap();
        dev.write_all_at(&[!byte[0]], at).unwrap();
        dev.sync_all().unwrap();
    }
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    let err = lines.join().unwrap();
    eprintln!("{err}");
    assert!(!status.success(), "a changed byte fails the flash");
    assert!(err.contains("verification failed"), "{err}");
    assert!(err.contains(&format!("first at byte {at}")), "{err}");
    drop(l);
}

/// A fake sysfs/dev tree in which disks come and go.
struct FakeSys {
    root: tempfile::TempDir,
    minor: std::cell::Cell<u32>,
}

impl FakeSys {
    fn new() -> FakeSys {
        let root = tempfile::tempdir().unwrap();
        for d in ["sys/block", "sys/class/block", "sys/dev/block", "dev"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        FakeSys {
            root,
            minor: std::cell::Cell::new(0),
        }
    }
    fn sys(&self) -> PathBuf {
        self.root.path().join("sys")
    }
    fn dev(&self) -> PathBuf {
        self.root.path().join("dev")
    }
    /// A USB card reader's disk `name` with a card of `bytes`; its device node is a file.
    fn insert(&self, name: &str, bytes: u64) {
        let dir = self
            .sys()
            .join("devices/pci0000:00/usb1/1-1/host9/target9:0:0/9:0:0:0/block")
            .join(name);
        std::fs::create_dir_all(dir.join("device")).unwrap();
        std::fs::write(dir.join("size"), format!("{}\n", bytes / 512)).unwrap();
        std::fs::write(dir.join("removable"), "1\n").unwrap();
        std::fs::write(dir.join("ro"), "0\n").unwrap();
        std::fs::write(dir.join("device/model"), "Fake Reader\n").unwrap();
        // Major 240 is for local use: never a real mount of this machine.
        let minor = self.minor.get();
        self.minor.set(minor + 1);
        std::fs::write(dir.join("dev"), format!("240:{minor}\n")).unwrap();
        let _ = std::fs::remove_file(self.sys().join("block").join(name));
        std::os::unix::fs::symlink(&dir, self.sys().join("block").join(name)).unwrap();
        patterned(&self.dev().join(name), bytes);
    }
    fn remove(&self, name: &str) {
        std::fs::remove_file(self.sys().join("block").join(name)).unwrap();
    }
}

#[test]
fn list_shows_removable_disks() {
    let f = FakeSys::new();
    f.insert("sdz", 64 * MIB);
    let o = flash(&[
        "--list",
        "--json",
        "--sys-root",
        s(&f.sys()),
        "--dev-root",
        s(&f.dev()),
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["path"], s(&f.dev().join("sdz")));
    assert_eq!(v[0]["size"], 64 * MIB);
    assert_eq!(v[0]["transport"], "usb");
    assert_eq!(v[0]["model"], "Fake Reader");
    assert_eq!(v[0]["mounted"], false);
}

#[test]
fn all_wait_flashes_each_card_that_is_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images");
    std::fs::create_dir(&out).unwrap();
    // Two small sparse images with their block maps.
    let mut raws = Vec::new();
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        let p = out.join(format!("{node}.img"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 * MIB).unwrap();
        f.write_all_at(&support::pseudo_random(8192, i as u64 + 1), 0)
            .unwrap();
        f.write_all_at(&support::pseudo_random(100_000, i as u64 + 7), 3 * MIB)
            .unwrap();
        drop(f);
        pikube_image::formats::write_bmap(
            &p,
            &out.join(format!("{node}.bmap")),
            &Default::default(),
        )
        .unwrap();
        raws.push(std::fs::read(&p).unwrap());
    }
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "cluster: lab\nadmin:\n  user: ops\n  ssh_authorized_keys: [\"{KEY}\"]\nnodes:\n  - {{ name: n1, board: rpi4, role: server }}\n  - {{ name: n2, board: rpi4, role: agent }}\n"
        ),
    )
    .unwrap();
    let f = FakeSys::new();
    // A card already in a reader is not taken for the first node's.
    f.insert("sdy", 16 * MIB);
    let sdy_before = std::fs::read(f.dev().join("sdy")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["flash", "--all", "--wait", "--yes", "--allow-file"])
        .arg("--config")
        .arg(dir.path().join("cluster.yaml"))
        .arg("--out")
        .arg(&out)
        .arg("--sys-root")
        .arg(f.sys())
        .arg("--dev-root")
        .arg(f.dev())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::io::BufReader::new(child.stderr.take().unwrap());
    let lines = std::thread::spawn(move || {
        let mut all = String::new();
        for l in reader.lines() {
            let l = l.unwrap();
            let _ = tx.send(l.clone());
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let wait_for = |needle: &str| loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("never saw {needle:?}"),
        }
    };
    wait_for("insert the card for node n1");
    f.insert("sdz", 16 * MIB);
    wait_for("now holds node n1");
    wait_for("insert the card for node n2");
    // The same reader, a new card.
    f.remove("sdz");
    std::thread::sleep(Duration::from_millis(800));
    let first = std::fs::read(f.dev().join("sdz")).unwrap();
    f.insert("sdx", 16 * MIB);
    wait_for("now holds node n2");
    let status = child.wait().unwrap();
    eprintln!("{}", lines.join().unwrap());
    assert!(status.success());
    let second = std::fs::read(f.dev().join("sdx")).unwrap();
    let (a, b) = (3 * MIB as usize, 3 * MIB as usize + 100_000);
    for (card, raw, name) in [(&first, &raws[0], "sdz"), (&second, &raws[1], "sdx")] {
        assert!(
            card[..8192] == raw[..8192] && card[a..b] == raw[a..b],
            "{name} holds its node's data"
        );
        assert!(
            card[6 * MIB as usize] != 0,
            "{name}: bytes outside the map keep the card's pattern"
        );
    }
    assert!(
        std::fs::read(f.dev().join("sdy")).unwrap() == sdy_before,
        "the card that was there is untouched"
    );
}
