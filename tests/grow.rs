//! Growing whole disk images: partition table first, then the ext4 filesystem inside it.
//!
//! Fixtures mimic the base images: Ubuntu raspi and Raspberry Pi OS (MBR, FAT + ext4),
//! Armbian Allwinner (MBR, one ext4 partition at 4 MiB, SPL at byte 8192), Armbian / Ubuntu
//! Rockchip (GPT, partition at 16 MiB, boot loader at 32 KiB and 8 MiB). The oracles are
//! `sfdisk --json`, `sgdisk -v`, `e2fsck -fn`, `resize2fs` on a copy of the original filesystem,
//! and the kernel (loop mount and a 900 MiB write) when running as root.

mod support;

use pikube_ext4::grow::grow_fs;
use pikube_image::disk::grow::grow_last_partition;
use pikube_test_oracles::{require_package, require_root, require_tool, skip};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::fixtures::{run as run_checked, run_with_stdin};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const SECTOR: u64 = 512;

fn tools_or_skip() -> bool {
    require_tool("sfdisk", "fdisk")
        && require_tool("sgdisk", "gdisk")
        && require_package(
            "e2fsprogs",
            &["mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "debugfs"],
        )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pikube-grow-")
        .tempdir_in("/var/tmp")
        .expect("temp dir in /var/tmp")
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// One partition of a fixture, in sectors.
struct Part {
    start: u64,
    size: u64,
    kind: &'static str,
}

struct Fixture {
    gpt: bool,
    parts: Vec<Part>,
    /// Random "boot loader" bytes before the first partition: (offset, length).
    blobs: Vec<(u64, u64)>,
    fs_args: Vec<&'static str>,
    /// Disk bytes after the last partition (room for the backup GPT).
    tail: u64,
}

struct Built {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    img: PathBuf,
    fs: PathBuf,
    root_number: u32,
    root_start: u64,
    root_size: u64,
    first_start: u64,
}

fn mkfs(dir: &Path, img: &Path, size: u64, args: &[&str]) {
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/hostname"), "node\n").unwrap();
    let blob: Vec<u8> = (0..2 * MIB as usize)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    std::fs::write(content.join("etc/blob"), blob).unwrap();
    let f = File::create(img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    run_checked(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .args(args)
            .arg(img),
    );
}

/// Copies `src` into `dst` at `offset`, skipping all-zero MiBs so the image stays sparse.
fn place(src: &Path, dst: &Path, offset: u64) {
    let mut r = File::open(src).unwrap();
    let w = OpenOptions::new().write(true).open(dst).unwrap();
    let len = r.metadata().unwrap().len();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        r.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            w.write_all_at(&buf[..n], offset + pos).unwrap();
        }
        pos += n as u64;
    }
}

fn build(fx: &Fixture) -> Built {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let img = dir.join("disk.img");
    let last = fx.parts.iter().max_by_key(|p| p.start).unwrap();
    let disk = (last.start + last.size) * SECTOR + fx.tail;
    File::create(&img).unwrap().set_len(disk).unwrap();
    let mut script = String::from(if fx.gpt {
        "label: gpt\n"
    } else {
        "label: dos\nlabel-id: 0x5eedf00d\n"
    });
    for p in &fx.parts {
        script += &format!("start={}, size={}, type={}\n", p.start, p.size, p.kind);
    }
    run_with_stdin(
        Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&img),
        &script,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    for &(off, len) in &fx.blobs {
        let mut b = vec![0u8; len as usize];
        rng.fill_bytes(&mut b);
        f.write_all_at(&b, off).unwrap();
    }
    drop(f);
    let fs = dir.join("fs.img");
    mkfs(&dir, &fs, last.size * SECTOR, &fx.fs_args);
    place(&fs, &img, last.start * SECTOR);
    let root_number = fx.parts.iter().position(|p| std::ptr::eq(p, last)).unwrap() as u32 + 1;
    Built {
        _dir: tmp,
        dir,
        img,
        fs,
        root_number,
        root_start: last.start * SECTOR,
        root_size: last.size * SECTOR,
        first_start: fx.parts.iter().map(|p| p.start).min().unwrap() * SECTOR,
    }
}

/// Hash of the bytes before the first partition that are not partition-table bytes: the MBR
/// boot code and everything from the end of the (primary) table to the first partition.
fn prefix_hash(img: &Path, gpt: bool, first_start: u64) -> String {
    let f = File::open(img).unwrap();
    let table_end = if gpt { 34 * SECTOR } else { SECTOR };
    let mut h = Sha256::new();
    let mut boot = vec![0u8; 446];
    f.read_exact_at(&mut boot, 0).unwrap();
    h.update(&boot);
    let mut rest = vec![0u8; (first_start - table_end) as usize];
    f.read_exact_at(&mut rest, table_end).unwrap();
    h.update(&rest);
    hex::encode(h.finalize())
}

fn file_hash(img: &Path) -> String {
    let mut f = File::open(img).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Partitions as sfdisk reports them: (start sector, size in sectors).
fn sfdisk_parts(img: &Path) -> Vec<(u64, u64)> {
    let out = run_checked(Command::new("sfdisk").arg("--json").arg(img));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

fn header(spec: &str) -> HashMap<String, String> {
    run_checked(Command::new("dumpe2fs").arg("-h").arg(spec))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn groups_of(spec: &str) -> usize {
    run_checked(Command::new("dumpe2fs").arg(spec))
        .lines()
        .filter(|l| {
            l.strip_prefix("Group ")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

fn fsck_clean(spec: &str) {
    let out = run(Command::new("e2fsck").arg("-fn").arg(spec));
    assert!(
        out.status.success(),
        "e2fsck -fn {spec}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes 900 MiB of non-repeating, non-zero data to `w`.
fn write_pattern(w: &mut impl Write) -> std::io::Result<u64> {
    let mut chunk: Vec<u8> = (0..MIB as usize).map(|i| (i % 251) as u8 | 1).collect();
    for i in 0..900u32 {
        chunk[..4].copy_from_slice(&i.to_le_bytes());
        w.write_all(&chunk)?;
    }
    Ok(900 * MIB)
}

fn big_file(dir: &Path) -> PathBuf {
    let p = dir.join("big.bin");
    let mut w = std::io::BufWriter::new(File::create(&p).unwrap());
    write_pattern(&mut w).unwrap();
    w.flush().unwrap();
    p
}

/// Writes 900 MiB into the grown filesystem through the kernel (loop device) when possible,
/// otherwise with debugfs; then e2fsck must still be clean.
fn write_900m(b: &Built, new_size: u64) {
    let spec = format!("{}?offset={}", b.img.display(), b.root_start);
    let mut via_kernel = false;
    if require_root("writing through the kernel (a loop mount) instead of debugfs") {
        let out = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(format!("--offset={}", b.root_start))
            .arg(format!("--sizelimit={new_size}"))
            .arg(&b.img));
        if out.status.success() {
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let mnt = b.dir.join("mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            let m = run(Command::new("mount")
                .args(["-t", "ext4"])
                .arg(&dev)
                .arg(&mnt));
            if m.status.success() {
                let copied =
                    File::create(mnt.join("big.bin")).and_then(|mut f| write_pattern(&mut f));
                let listed = std::fs::read_to_string(mnt.join("etc/hostname"));
                let u = run(Command::new("umount").arg(&mnt));
                run(Command::new("losetup").arg("-d").arg(&dev));
                assert!(u.status.success(), "umount failed");
                assert_eq!(copied.expect("kernel write of 900 MiB"), 900 * MIB);
                assert_eq!(listed.unwrap(), "node\n");
                via_kernel = true;
            } else {
                run(Command::new("losetup").arg("-d").arg(&dev));
                panic!(
                    "the kernel refused to mount the grown filesystem: {}",
                    String::from_utf8_lossy(&m.stderr)
                );
            }
        } else {
            skip(format_args!(
                "no loop device ({}); writing with debugfs instead of the kernel",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    if !via_kernel {
        run_checked(
            Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} /big.bin", big_file(&b.dir).display()))
                .arg(&spec),
        );
    }
    fsck_clean(&spec);
    let stat = run_checked(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /big.bin")
            .arg(&spec),
    );
    assert!(stat.contains(&format!("Size: {}", 900 * MIB)), "{stat}");
}

fn grow_image(fx: Fixture, grow: u64, write_big: bool) {
    if !tools_or_skip() {
        return;
    }
    let b = build(&fx);
    let before_parts = sfdisk_parts(&b.img);
    let prefix = prefix_hash(&b.img, fx.gpt, b.first_start);
    let old_len = std::fs::metadata(&b.img).unwrap().len();
    let new_len = old_len + grow;

    let part = grow_last_partition(&b.img, new_len, b.root_number).expect("grow partition");
    assert_eq!(part.number, b.root_number);
    assert_eq!(part.old_start, b.root_start);
    assert_eq!(part.old_size, b.root_size);
    assert_eq!(std::fs::metadata(&b.img).unwrap().len(), new_len);
    let expected_end = if fx.gpt {
        (new_len / SECTOR - 33) * SECTOR
    } else {
        new_len / MIB * MIB
    };
    assert_eq!(part.old_start + part.new_size, expected_end);

    // Partition table oracles.
    let after_parts = sfdisk_parts(&b.img);
    assert_eq!(after_parts.len(), before_parts.len());
    for (i, (a, p)) in after_parts.iter().zip(&before_parts).enumerate() {
        if i as u32 + 1 == b.root_number {
            assert_eq!(a.0, p.0, "start moved");
            assert_eq!(a.1 * SECTOR, part.new_size, "sfdisk size");
        } else {
            assert_eq!(a, p, "partition {} changed", i + 1);
        }
    }
    if fx.gpt {
        let v = run(Command::new("sgdisk").arg("-v").arg(&b.img));
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
    }
    assert_eq!(
        prefix,
        prefix_hash(&b.img, fx.gpt, b.first_start),
        "bytes before the first partition changed"
    );

    // The filesystem, as the pipeline does it.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&b.img)
        .unwrap();
    let g = grow_fs(&f, part.old_start, part.new_size, 1_700_000_000).expect("grow fs");
    drop(f);
    let spec = format!("{}?offset={}", b.img.display(), part.old_start);
    fsck_clean(&spec);

    // resize2fs on a partition-sized copy of the original filesystem.
    let oracle = b.dir.join("oracle.img");
    run_checked(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&b.fs)
            .arg(&oracle),
    );
    OpenOptions::new()
        .write(true)
        .open(&oracle)
        .unwrap()
        .set_len(part.new_size)
        .unwrap();
    run_checked(Command::new("resize2fs").arg("-f").arg(&oracle));
    let oracle = oracle.display().to_string();
    let (ours, theirs) = (header(&spec), header(&oracle));
    for k in ["Block count", "Free blocks", "Inode count", "Free inodes"] {
        assert_eq!(ours.get(k), theirs.get(k), "{k} differs from resize2fs");
    }
    assert_eq!(groups_of(&spec), groups_of(&oracle));
    let bs: u64 = ours["Block size"].parse().unwrap();
    let gained = (g.free_blocks_after - g.free_blocks_before) * bs;
    eprintln!(
        "partition {} grew {} -> {} bytes; fs {} -> {} blocks, {} -> {} groups, free +{} MiB",
        part.number,
        part.old_size,
        part.new_size,
        g.old_blocks,
        g.new_blocks,
        g.old_groups,
        g.new_groups,
        gained / MIB
    );
    assert!(gained >= grow * 9 / 10 && gained <= part.new_size - part.old_size);
    assert_eq!(
        prefix,
        prefix_hash(&b.img, fx.gpt, b.first_start),
        "bytes before the first partition changed"
    );

    if write_big {
        write_900m(&b, part.new_size);
    }
}

#[test]
fn ubuntu_raspi_mbr_grow_1g() {
    grow_image(
        Fixture {
            gpt: false,
            parts: vec![
                Part {
                    start: 2048,
                    size: 256 * 2048,
                    kind: "c",
                },
                Part {
                    start: 257 * 2048,
                    size: 600 * 2048,
                    kind: "83",
                },
            ],
            blobs: vec![(0, 440), (512, 4096)],
            fs_args: vec!["-t", "ext4", "-b", "4096", "-L", "writable"],
            tail: 0,
        },
        GIB,
        true,
    );
}

#[test]
fn raspios_mbr_grow_6g() {
    grow_image(
        Fixture {
            gpt: false,
            parts: vec![
                Part {
                    start: 8 * 2048,
                    size: 512 * 2048,
                    kind: "c",
                },
                Part {
                    start: 520 * 2048,
                    size: 500 * 2048,
                    kind: "83",
                },
            ],
            blobs: vec![(4 * MIB, 64 * 1024)],
            fs_args: vec!["-t", "ext4", "-b", "4096", "-O", "^64bit,^huge_file"],
            tail: 0,
        },
        6 * GIB,
        false,
    );
}

#[test]
fn armbian_allwinner_mbr_spl_grow_1g() {
    grow_image(
        Fixture {
            gpt: false,
            parts: vec![Part {
                start: 4 * 2048,
                size: 400 * 2048,
                kind: "83",
            }],
            blobs: vec![(8192, 1024 * 1024 - 8192)],
            fs_args: vec!["-t", "ext4", "-b", "4096", "-m", "2", "-L", "armbi_root"],
            tail: 3 * MIB + 512,
        },
        GIB,
        false,
    );
}

#[test]
fn armbian_rockchip_gpt_ubuntu_2410_features_grow_6g() {
    grow_image(
        Fixture {
            gpt: true,
            parts: vec![Part {
                start: 16 * 2048,
                size: 700 * 2048,
                kind: "0FC63DAF-8483-4772-8E79-3D47F1D8E1D5",
            }],
            blobs: vec![(32 * 1024, 4 * MIB), (8 * MIB, 4 * MIB)],
            fs_args: vec![
                "-t",
                "ext4",
                "-b",
                "4096",
                "-O",
                "orphan_file,metadata_csum_seed",
            ],
            tail: MIB,
        },
        6 * GIB,
        true,
    );
}

#[test]
fn ubuntu_rockchip_gpt_1k_blocks_grow_1g() {
    grow_image(
        Fixture {
            gpt: true,
            parts: vec![
                Part {
                    start: 16 * 2048,
                    size: 16 * 2048,
                    kind: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                },
                Part {
                    start: 32 * 2048,
                    size: 300 * 2048,
                    kind: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                },
            ],
            blobs: vec![(32 * 1024, 2 * MIB), (8 * MIB, 2 * MIB)],
            fs_args: vec!["-t", "ext4", "-b", "1024", "-L", "cloudimg-rootfs"],
            tail: 17 * 1024,
        },
        GIB,
        true,
    );
}

// ---- refusals leave the image byte-for-byte unchanged ----

fn small_fixture(gpt: bool) -> Fixture {
    Fixture {
        gpt,
        parts: vec![
            Part {
                start: 2048,
                size: 8 * 2048,
                kind: if gpt {
                    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
                } else {
                    "c"
                },
            },
            Part {
                start: 10 * 2048,
                size: 40 * 2048,
                kind: if gpt {
                    "0FC63DAF-8483-4772-8E79-3D47F1D8E1D5"
                } else {
                    "83"
                },
            },
        ],
        blobs: vec![],
        fs_args: vec!["-t", "ext4", "-b", "4096"],
        tail: MIB,
    }
}

fn assert_refused(b: &Built, new_len: u64, number: u32, needle: &str) {
    let hash = file_hash(&b.img);
    let len = std::fs::metadata(&b.img).unwrap().len();
    let err = grow_last_partition(&b.img, new_len, number).expect_err("must refuse");
    let msg = format!("{err:#}");
    eprintln!("refused as expected: {msg}");
    assert!(msg.contains(needle), "{msg}");
    assert!(
        msg.contains(&b.img.display().to_string()),
        "error names the file: {msg}"
    );
    assert_eq!(std::fs::metadata(&b.img).unwrap().len(), len);
    assert_eq!(file_hash(&b.img), hash, "refusal changed the image");
}

#[test]
fn refuses_wrong_partition_number() {
    if !tools_or_skip() {
        return;
    }
    for gpt in [false, true] {
        let b = build(&small_fixture(gpt));
        assert_refused(
            &b,
            200 * MIB,
            1,
            "last partition on the disk is partition 2",
        );
    }
}

#[test]
fn refuses_smaller_size() {
    if !tools_or_skip() {
        return;
    }
    for gpt in [false, true] {
        let b = build(&small_fixture(gpt));
        let len = std::fs::metadata(&b.img).unwrap().len();
        assert_refused(&b, len - MIB, 2, "smaller than the image");
    }
}

#[test]
fn refuses_corrupt_gpt_header() {
    if !tools_or_skip() {
        return;
    }
    let b = build(&small_fixture(true));
    let f = OpenOptions::new().write(true).open(&b.img).unwrap();
    // Flip a byte of the disk GUID in the primary header: its CRC no longer matches.
    f.write_all_at(&[0x42], SECTOR + 60).unwrap();
    drop(f);
    assert_refused(&b, 200 * MIB, 2, "checksum");
}

#[test]
fn gpt_image_already_longer_than_its_table() {
    // The file was extended before (backup GPT no longer at the end); growing still yields a
    // table that sgdisk finds clean and a protective MBR covering the new disk.
    if !tools_or_skip() {
        return;
    }
    let b = build(&small_fixture(true));
    let len = std::fs::metadata(&b.img).unwrap().len();
    File::options()
        .write(true)
        .open(&b.img)
        .unwrap()
        .set_len(len + 10 * MIB)
        .unwrap();
    let new_len = len + 100 * MIB;
    let g = grow_last_partition(&b.img, new_len, 2).unwrap();
    assert_eq!(g.old_start + g.new_size, new_len - 33 * SECTOR);
    let v = run(Command::new("sgdisk").arg("-v").arg(&b.img));
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && text.contains("No problems found"),
        "sgdisk -v: {text}"
    );
    let f = File::open(&b.img).unwrap();
    let mut entry = [0u8; 16];
    f.read_exact_at(&mut entry, 446).unwrap();
    assert_eq!(entry[4], 0xEE);
    let size = u32::from_le_bytes(entry[12..16].try_into().unwrap());
    assert_eq!(u64::from(size), new_len / SECTOR - 1);
    // The stale backup header inside the grown partition no longer looks like a GPT header.
    let mut old = [0u8; 8];
    f.read_exact_at(&mut old, len - SECTOR).unwrap();
    assert_ne!(&old, b"EFI PART");
}

#[test]
fn mbr_image_never_gets_a_gpt() {
    if !tools_or_skip() {
        return;
    }
    let b = build(&small_fixture(false));
    let len = std::fs::metadata(&b.img).unwrap().len();
    grow_last_partition(&b.img, len + 64 * MIB, 2).unwrap();
    let f = File::open(&b.img).unwrap();
    let mut lba1 = [0u8; 8];
    f.read_exact_at(&mut lba1, SECTOR).unwrap();
    assert_ne!(&lba1, b"EFI PART");
    let mut end = [0u8; 512];
    f.read_exact_at(&mut end, len + 64 * MIB - 512).unwrap();
    assert!(
        end.iter().all(|&b| b == 0),
        "something was written at the end"
    );
    let out = run_checked(Command::new("sfdisk").arg("--json").arg(&b.img));
    assert!(out.contains("\"label\": \"dos\""), "{out}");
}
