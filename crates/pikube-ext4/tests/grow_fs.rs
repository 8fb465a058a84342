//! Growing real mkfs.ext4 filesystems, checked against e2fsck and resize2fs.
//!
//! Each case builds a filesystem with mkfs.ext4 (feature sets of the supported base images),
//! places it at an offset inside a larger image behind recognisable bytes, grows it with
//! `grow_fs`, then requires `e2fsck -fn` to be clean, compares the group count, block count,
//! inode count and free blocks with what `resize2fs` makes of a copy of the same original
//! filesystem, checks the bytes before the filesystem are unchanged and, for some cases, writes
//! a 900 MiB file into the grown filesystem with debugfs.

use pikube_ext4::Error;
use pikube_ext4::grow::grow_fs;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The clock handed to the grow: the superblock's write time.
const NOW: i64 = 1_700_000_000;

fn tools_or_skip() -> bool {
    pikube_test_oracles::require_package(
        "e2fsprogs",
        &["mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "debugfs"],
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pikube-grow-fs-")
        .tempdir_in("/var/tmp")
        .expect("temp dir in /var/tmp")
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Source tree so the filesystem is not empty: a few files and directories.
fn populate(dir: &Path) -> PathBuf {
    let root = dir.join("content");
    std::fs::create_dir_all(root.join("etc/cloud")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("etc/hostname"), "node\n").unwrap();
    std::fs::write(
        root.join("etc/cloud/cloud.cfg"),
        "datasource_list: [NoCloud]\n",
    )
    .unwrap();
    let blob: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("usr/lib/blob"), blob).unwrap();
    root
}

/// Makes a filesystem of `size` bytes in the new file `img` with mkfs.ext4 and `args`.
fn mkfs(dir: &Path, img: &Path, size: u64, args: &[&str]) {
    let content = populate(dir);
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(img)
        .unwrap();
    f.set_len(size).unwrap();
    drop(f);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .args(args)
            .arg(img),
    );
}

/// Copies all of `src` into `dst` at `offset` without filling holes (all-zero MiBs are skipped).
fn place(src: &Path, dst: &Path, offset: u64) {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut r = File::open(src).unwrap();
    let w = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dst)
        .unwrap();
    let len = r.metadata().unwrap().len();
    if w.metadata().unwrap().len() < offset + len {
        w.set_len(offset + len).unwrap();
    }
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

/// How e2fsprogs tools address a filesystem at a byte offset inside a file.
fn spec(img: &Path, offset: u64) -> String {
    if offset == 0 {
        img.display().to_string()
    } else {
        format!("{}?offset={offset}", img.display())
    }
}

/// SHA-256 of the first `len` bytes of `path`.
fn sha256_prefix(path: &Path, len: u64) -> String {
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {len} '{}' | sha256sum", path.display())),
    )
    .split_whitespace()
    .next()
    .unwrap()
    .to_string()
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn fsck_clean(img: &str) {
    let out = run(Command::new("e2fsck").args(["-fn"]).arg(img));
    assert!(
        out.status.success(),
        "e2fsck -fn {img} is not clean:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn header(img: &str) -> HashMap<String, String> {
    let out = run_ok(Command::new("dumpe2fs").arg("-h").arg(img));
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn num(h: &HashMap<String, String>, k: &str) -> u64 {
    h.get(k)
        .unwrap_or_else(|| panic!("dumpe2fs has no `{k}`"))
        .parse()
        .unwrap()
}

fn groups_of(img: &str) -> u64 {
    let out = run_ok(Command::new("dumpe2fs").arg(img));
    out.lines()
        .filter(|l| {
            l.strip_prefix("Group ")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count() as u64
}

/// A 900 MiB file of non-zero, non-repeating bytes in `dir`.
fn big_file(dir: &Path) -> PathBuf {
    let p = dir.join("big.bin");
    let mut w = std::io::BufWriter::new(File::create(&p).unwrap());
    let mut chunk: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8 | 1).collect();
    for i in 0..900u32 {
        chunk[..4].copy_from_slice(&i.to_le_bytes());
        w.write_all(&chunk).unwrap();
    }
    w.flush().unwrap();
    p
}

/// Builds a fs, grows it by `grow` bytes with `grow_fs` and, on a copy, with resize2fs;
/// checks e2fsck and compares the results.
fn grow_and_compare(args: &[&str], size: u64, grow: u64, offset: u64, write_big: bool) {
    if !tools_or_skip() {
        return;
    }
    let dir = tempdir();
    let fs = dir.path().join("fs.img");
    mkfs(dir.path(), &fs, size, args);
    fsck_clean(&spec(&fs, 0));
    let orig = header(&spec(&fs, 0));

    // The oracle: resize2fs on a filesystem-sized copy.
    let oracle = dir.path().join("oracle.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&fs)
            .arg(&oracle),
    );
    File::options()
        .write(true)
        .open(&oracle)
        .unwrap()
        .set_len(size + grow)
        .unwrap();
    run_ok(
        Command::new("resize2fs")
            .arg("-f")
            .arg(&oracle)
            .env("RESIZE2FS_FORCE_LAZY_ITABLE_INIT", "1"),
    );
    let oracle = spec(&oracle, 0);
    let want = header(&oracle);

    // The image: recognisable bytes before the filesystem, the filesystem at `offset`.
    let img = dir.path().join("disk.img");
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(&img).unwrap();
        f.set_len(offset + size + grow).unwrap();
        if offset > 0 {
            let junk: Vec<u8> = (0..offset).map(|i| (i * 31 % 255) as u8 + 1).collect();
            f.write_all_at(&junk, 0).unwrap();
        }
        // Stale bytes after the old end must not matter.
        f.write_all_at(b"stale bytes", offset + size + 4 * MIB + 17)
            .unwrap();
    }
    place(&fs, &img, offset);
    let prefix = sha256_prefix(&img, offset);

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let g = grow_fs(&f, offset, size + grow, NOW).expect("grow_fs");
    drop(f);

    let ours = spec(&img, offset);
    fsck_clean(&ours);
    let got = header(&ours);
    for k in [
        "Block count",
        "Inode count",
        "Free blocks",
        "Free inodes",
        "Reserved block count",
        "Reserved GDT blocks",
        "Filesystem features",
        "Filesystem state",
        "Backup block groups",
    ] {
        assert_eq!(got.get(k), want.get(k), "{k} differs from resize2fs");
    }
    assert_eq!(groups_of(&ours), groups_of(&oracle), "group count");
    assert_eq!(g.new_blocks, num(&got, "Block count"));
    assert_eq!(g.old_blocks, num(&orig, "Block count"));
    assert_eq!(u64::from(g.new_groups), groups_of(&ours));
    assert_eq!(g.free_blocks_after, num(&got, "Free blocks"));
    let bs = num(&got, "Block size");
    let added = g.new_blocks - g.old_blocks;
    let gained = g.free_blocks_after - g.free_blocks_before;
    // New space minus the metadata of the new groups (bitmaps, inode tables, backups).
    let overhead = added - gained;
    let per_group = overhead / u64::from((g.new_groups - g.old_groups).max(1));
    assert!(
        per_group <= 2 + num(&got, "Inode blocks per group") + 2 + 1024,
        "metadata overhead {overhead} blocks is too high"
    );
    assert!(
        gained * bs >= grow * 9 / 10,
        "free space grew by only {}",
        gained * bs
    );
    assert_eq!(
        prefix,
        sha256_prefix(&img, offset),
        "bytes before the filesystem changed"
    );

    if write_big {
        // The new space takes a file larger than all the free space the filesystem had.
        assert!(num(&orig, "Free blocks") * bs < 900 * MIB);
        run_ok(
            Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} /big", big_file(dir.path()).display()))
                .arg(&ours),
        );
        fsck_clean(&ours);
        let stat = run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg("stat /big")
                .arg(&ours),
        );
        assert!(stat.contains(&format!("Size: {}", 900 * MIB)), "{stat}");
    }
}

#[test]
fn ubuntu_2404_grow_1g() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-L", "writable"],
        600 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn ubuntu_2410_orphan_file_seed_grow_6g_at_offset() {
    grow_and_compare(
        &[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "orphan_file,metadata_csum_seed",
        ],
        700 * MIB,
        6 * GIB,
        4 * MIB,
        false,
    );
}

#[test]
fn raspios_no_64bit_grow_6g() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "^64bit,^huge_file"],
        500 * MIB,
        6 * GIB,
        8 * MIB,
        true,
    );
}

#[test]
fn armbian_m2_grow_1g() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-m", "2"],
        300 * MIB,
        GIB,
        4 * MIB,
        false,
    );
}

#[test]
fn one_k_blocks_grow_1g() {
    grow_and_compare(&["-t", "ext4", "-b", "1024"], 200 * MIB, GIB, MIB, false);
}

#[test]
fn gdt_csum_without_metadata_csum_grow_1g() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum,uninit_bg"],
        300 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn no_group_checksums_grow_1g() {
    grow_and_compare(
        &[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "^metadata_csum,^uninit_bg",
        ],
        300 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn partial_last_group_grows_within_the_group() {
    // 130 MiB = one full group plus 2 MiB; +20 MiB: no new group, only the last one grows.
    grow_and_compare(&["-t", "ext4", "-b", "4096"], 130 * MIB, 20 * MIB, 0, false);
}

#[test]
fn descriptor_blocks_from_the_resize_inode_reservation() {
    // 1 KiB blocks, 32-byte descriptors: 32 groups per GDT block. 20 MiB has 3 groups; growing
    // to 1.2 GiB needs 150 groups and 5 descriptor blocks, 4 of them from the reservation.
    grow_and_compare(
        &["-t", "ext4", "-b", "1024", "-O", "^64bit"],
        20 * MIB,
        1200 * MIB,
        MIB,
        false,
    );
}

#[test]
fn sparse_super2_backup_moves_to_the_new_last_group() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "sparse_super2"],
        300 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn sparse_super2_from_a_single_group() {
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "sparse_super2"],
        100 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn without_resize_inode_within_the_existing_gdt_block() {
    // 64 descriptors per block: 200 MiB + 1 GiB stays within the one GDT block.
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "^resize_inode"],
        200 * MIB,
        GIB,
        0,
        false,
    );
}

#[test]
fn meta_bg_grows_without_reserved_gdt_blocks() {
    // 200 MiB + 9 GiB needs 74 groups: a second descriptor block, placed in meta group 1.
    grow_and_compare(
        &["-t", "ext4", "-b", "4096", "-O", "meta_bg,^resize_inode"],
        200 * MIB,
        9 * GIB,
        0,
        false,
    );
}

#[test]
fn meta_bg_many_meta_groups_1k_blocks() {
    // 1 KiB blocks with 64-byte descriptors: 16 groups per meta group; 3 -> 150 groups.
    grow_and_compare(
        &["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"],
        20 * MIB,
        1200 * MIB,
        MIB,
        false,
    );
}

#[test]
fn trailing_sliver_is_dropped_like_resize2fs() {
    // 300 MiB (76800 blocks) grown to 4 groups + 100 blocks: the 100-block group is too small
    // for its own metadata and is dropped, as resize2fs does.
    grow_and_compare(
        &["-t", "ext4", "-b", "4096"],
        300 * MIB,
        (4 * 32768 + 100 - 76800) * 4096,
        0,
        false,
    );
}

// ---- refusals: nothing written ----

fn refused(args: &[&str], size: u64, grow: u64, damage: &dyn Fn(&Path)) -> Error {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    mkfs(dir.path(), &img, size, args);
    damage(&img);
    let before = sha256(&img);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let err = grow_fs(&f, 0, size + grow, NOW).expect_err("grow_fs must refuse");
    drop(f);
    assert_eq!(before, sha256(&img), "refusal changed the image");
    eprintln!("refused as expected: {err}");
    err
}

fn debugfs_w(img: &Path, req: &str) {
    run_ok(
        Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(req)
            .arg(img),
    );
}

#[test]
fn refuses_journal_needing_recovery() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        debugfs_w(p, "feature needs_recovery")
    });
    assert!(matches!(e, Error::NeedsRecovery), "{e}");
}

#[test]
fn refuses_pending_orphans() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        debugfs_w(p, "ssv last_orphan 12")
    });
    assert!(matches!(e, Error::OrphansPending), "{e}");
}

#[test]
fn refuses_journal_with_unreplayed_transactions() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        use std::os::unix::fs::FileExt;
        let out = run_ok(Command::new("debugfs").arg("-R").arg("bmap <8> 0").arg(p));
        let blk: u64 = out.trim().parse().expect("journal block");
        let f = OpenOptions::new().write(true).open(p).unwrap();
        // Journal superblock s_start (big endian at 0x1C): a log to replay begins at block 1.
        f.write_all_at(&1u32.to_be_bytes(), blk * 4096 + 0x1C)
            .unwrap();
    });
    assert!(matches!(e, Error::NeedsRecovery), "{e}");
}

#[test]
fn refuses_orphan_file_with_orphans_present() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(
        &["-t", "ext4", "-b", "4096", "-O", "orphan_file"],
        64 * MIB,
        GIB,
        &|p| debugfs_w(p, "feature orphan_present"),
    );
    assert!(matches!(e, Error::OrphansPending), "{e}");
}

#[test]
fn refuses_unclean_state() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        debugfs_w(p, "ssv state 0")
    });
    assert!(matches!(e, Error::NeedsRecovery), "{e}");
}

#[test]
fn refuses_unknown_feature() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        // An incompat bit nobody has defined yet; the superblock checksum is kept valid.
        debugfs_w(p, "ssv feature_incompat 0x800002c2")
    });
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

#[test]
fn refuses_bad_descriptor_checksum() {
    if !tools_or_skip() {
        return;
    }
    let e = refused(&["-t", "ext4", "-b", "4096"], 64 * MIB, GIB, &|p| {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
        // Free-blocks count of group 0 in the primary GDT (block 1).
        let pos = 4096 + 0x0C;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, pos).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], pos).unwrap();
    });
    assert!(
        matches!(&e, Error::Corrupt { what } if what.contains("checksum")),
        "{e}"
    );
}

#[test]
fn refuses_growth_needing_gdt_blocks_without_resize_inode() {
    if !tools_or_skip() {
        return;
    }
    // 64 descriptors fit in one GDT block; 9 GiB needs 72 groups.
    let e = refused(
        &["-t", "ext4", "-b", "4096", "-O", "^resize_inode"],
        64 * MIB,
        9 * GIB,
        &|_| {},
    );
    assert!(matches!(e, Error::CannotGrow { .. }), "{e}");
}

/// A populated 4 KiB-block filesystem of `size` bytes, alone in the file `disk.img` of the
/// returned directory.
fn plain_fs(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    mkfs(dir.path(), &img, size, &["-t", "ext4", "-b", "4096"]);
    (dir, img)
}

#[test]
fn refuses_to_shrink() {
    if !tools_or_skip() {
        return;
    }
    let (_dir, img) = plain_fs(64 * MIB);
    let before = sha256(&img);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let e = grow_fs(&f, 0, 32 * MIB, NOW).expect_err("must refuse to shrink");
    assert!(matches!(e, Error::Shrink { .. }), "{e}");
    // Same size: nothing to do, nothing written.
    let g = grow_fs(&f, 0, 64 * MIB, NOW).unwrap();
    assert_eq!(g.old_blocks, g.new_blocks);
    drop(f);
    assert_eq!(before, sha256(&img));
}

/// The image held somewhere other than a file: grow_fs works through `Storage` alone.
struct InMemory(std::sync::Mutex<Vec<u8>>);

impl InMemory {
    /// The bytes `[offset, offset + n)`, which must exist.
    fn range(img: &[u8], offset: u64, n: usize) -> std::io::Result<std::ops::Range<usize>> {
        let at = offset as usize;
        match img.get(at..at + n) {
            Some(_) => Ok(at..at + n),
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl pikube_ext4::Storage for InMemory {
    fn fetch_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let img = self.0.lock().unwrap();
        buf.copy_from_slice(&img[Self::range(&img, offset, buf.len())?]);
        Ok(())
    }
    fn store_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut img = self.0.lock().unwrap();
        let r = Self::range(&img, offset, buf.len())?;
        img[r].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn grows_a_filesystem_held_in_memory() {
    if !tools_or_skip() {
        return;
    }
    let (_dir, img) = plain_fs(64 * MIB);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes.resize((MIB + 192 * MIB) as usize, 0);
    // Behind a partition offset, as in an image.
    bytes.rotate_right(MIB as usize);
    let mem = InMemory(std::sync::Mutex::new(bytes));
    let g = grow_fs(&mem, MIB, 192 * MIB, NOW).expect("grow_fs");
    assert!(g.new_groups > g.old_groups, "{g:?}");
    let bytes = mem.0.into_inner().unwrap();
    assert!(
        bytes[..MIB as usize].iter().all(|&b| b == 0),
        "bytes before the filesystem changed"
    );
    std::fs::write(&img, &bytes[MIB as usize..]).unwrap();
    fsck_clean(&spec(&img, 0));
    assert_eq!(num(&header(&spec(&img, 0)), "Block count"), g.new_blocks);
}

#[test]
fn refuses_non_ext4() {
    let dir = tempdir();
    let img = dir.path().join("zero.img");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    f.set_len(8 * MIB).unwrap();
    let e = grow_fs(&f, MIB, 4 * MIB, NOW).expect_err("no filesystem there");
    assert!(matches!(e, Error::NotExt4 { .. }), "{e}");
}

#[test]
fn mutated_superblocks_never_panic() {
    // Random single-byte changes to the superblock (with its checksum recomputed so they get
    // past the first check) must end in Ok or an Error, never in a panic.
    use rand::{Rng, SeedableRng};
    if !tools_or_skip() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.img");
    mkfs(dir.path(), &base, 8 * MIB, &["-t", "ext4", "-b", "1024"]);
    let pristine = std::fs::read(&base).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..200 {
        let mut img = pristine.clone();
        // Half of the changes hit the geometry and count fields at the start.
        let field_end = if i % 2 == 0 { 0x68 } else { 0x290 };
        let pos = 1024 + rng.random_range(0..field_end);
        img[pos] = rng.random();
        let csum = !crc32c::crc32c(&img[1024..1024 + 0x3FC]);
        img[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&csum.to_le_bytes());
        let p = dir.path().join("mutant.img");
        std::fs::write(&p, &img).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let r = std::panic::catch_unwind(|| grow_fs(&f, 0, 64 * MIB, NOW));
        match r {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!(
                "grow_fs panicked after changing superblock byte {:#x}",
                pos - 1024
            ),
        }
    }
    eprintln!("{ok} grown, {refused} refused");
    assert!(ok > 0 && refused > 0);
}
