//! Filesystems that are valid but unusual (small inodes, no `filetype`), and filesystems whose
//! bitmaps lie: the writer either edits them cleanly or refuses before writing anything.

mod common;
use common::*;
use pikube_ext4::{Ext4Fs, Meta};
use std::process::Command;

const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_700_000_000,
};
const DIR: Meta = Meta {
    mode: 0o755,
    ..META
};

fn fixture(features: &str, extra: &[&str]) -> Fixture {
    make(&Spec {
        name: "harden",
        features,
        block_size: 4096,
        size_mib: 32,
        extra,
        big_dir_entries: 600,
        offset_mib: 1,
    })
}

fn open(fx: &Fixture) -> Result<Ext4Fs, pikube_ext4::Error> {
    Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW)
}

/// Files, directories (new and nested), fast and slow symlinks, an overwrite and a removal.
fn write_everything(fs: &mut Ext4Fs) {
    fs.mkdir_p("/etc/rancher/k3s", &DIR).unwrap();
    fs.write_file(
        "/etc/rancher/k3s/config.yaml",
        &mut &b"a: b\n"[..],
        5,
        &META,
    )
    .unwrap();
    fs.write_file("/etc/hostname", &mut &b"node1\n"[..], 6, &META)
        .unwrap();
    let big = vec![3u8; 1_000_000];
    fs.write_file("/var/big.bin", &mut &big[..], big.len() as u64, &META)
        .unwrap();
    for i in 0..200 {
        let name = format!("/etc/big/new-{i}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        fs.write_file(&name, &mut &b"z"[..], 1, &META).unwrap();
    }
    fs.symlink("/etc/short", "hostname", &META).unwrap();
    fs.symlink("/etc/long", &"y".repeat(200), &META).unwrap();
    fs.remove("/etc/os-release").unwrap();
}

fn assert_clean(fx: &Fixture) {
    let (ok, out) = fx.fsck();
    assert!(ok, "e2fsck -fn is not clean:\n{out}");
    // debugfs, not ext4-view: the latter cannot read 128-byte inodes.
    assert!(fx.debugfs("cat /etc/hostname").contains("node1\n"));
    assert!(
        fx.debugfs("cat /etc/rancher/k3s/config.yaml")
            .contains("a: b\n")
    );
}

#[test]
fn writes_filesystem_with_128_byte_inodes() {
    let fx = fixture("", &["-I", "128"]);
    assert!(fx.debugfs("stats").contains("Inode size:\t          128"));
    let mut fs = open(&fx).unwrap();
    write_everything(&mut fs);
    fs.close().unwrap();
    assert_clean(&fx);
}

#[test]
fn writes_filesystem_without_filetype() {
    let fx = fixture("^filetype", &[]);
    assert!(!fx.debugfs("stats").contains("filetype"));
    let mut fs = open(&fx).unwrap();
    write_everything(&mut fs);
    fs.close().unwrap();
    assert_clean(&fx);
}

const U2404: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file,^metadata_csum_seed";

fn debugfs_w(fx: &Fixture, req: &str) {
    let (rc, out) = run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(req)
        .arg(fx.spec_path()));
    assert_eq!(rc, 0, "debugfs -w {req}: {out}");
}

/// The first number debugfs prints for `req` after `prefix`.
fn debugfs_number(fx: &Fixture, req: &str, prefix: &str) -> u64 {
    let out = fx.debugfs(req);
    let i = out.find(prefix).unwrap_or_else(|| panic!("{req}: {out}")) + prefix.len();
    let digits: String = out[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("{req}: {out}"))
}

/// Writing `path` must be refused with advice to run e2fsck, leaving the image unchanged
/// (the filesystem is dropped without `close`, as callers do after an error).
fn expect_bitmap_refusal(fx: &Fixture, path: &str, what: &str) {
    let (ok, _) = fx.fsck();
    assert!(!ok, "{what}: the fixture should be inconsistent");
    let before = fx.sha256();
    let mut fs = open(fx).unwrap();
    let err = fs
        .write_file(path, &mut &b"new data\n"[..], 9, &META)
        .expect_err("writing over an in-use object must be refused");
    let msg = err.to_string();
    println!("{what}: {msg}");
    assert!(msg.contains("e2fsck"), "{what}: {msg}");
    assert!(msg.contains(what), "{what}: {msg}");
    drop(fs);
    assert_eq!(fx.sha256(), before, "{what}: the image changed");
}

#[test]
fn refuses_block_wrongly_marked_free() {
    for features in ["", U2404] {
        let fx = fixture(features, &[]);
        // The only block of /var/empty, marked free with a valid bitmap checksum.
        let blk = debugfs_number(&fx, "blocks /var/empty", "");
        debugfs_w(&fx, &format!("freeb {blk}"));
        expect_bitmap_refusal(&fx, "/var/empty/new", "block bitmap");
    }
}

#[test]
fn refuses_inode_wrongly_marked_free() {
    for features in ["", U2404] {
        let fx = fixture(features, &[]);
        let ino = debugfs_number(&fx, "stat /etc/hostname", "Inode:");
        debugfs_w(&fx, &format!("freei <{ino}>"));
        expect_bitmap_refusal(&fx, "/etc/new", "inode bitmap");
    }
}

/// Growing by exactly the missing free space is not enough: the new groups' bitmaps, inode
/// tables and backups (and the reserved blocks that scale with the size) take some of it.
/// `size_for_free` accounts for them.
#[test]
fn grow_size_leaves_the_wanted_free_space() {
    use pikube_ext4::grow::{grow_fs, size_for_free};
    for (features, bs) in [(U2404, 4096u32), ("", 1024)] {
        let fx = make(&Spec {
            name: "harden",
            features,
            block_size: bs,
            size_mib: 32,
            extra: &[],
            big_dir_entries: 0,
            offset_mib: 1,
        });
        let free = open(&fx).unwrap().free_bytes();
        let want = free + 300 * MIB;
        let file = fx.open_rw();
        // Already enough: the size stays.
        assert_eq!(size_for_free(&file, fx.offset, free).unwrap(), fx.len);
        // The naive size falls short (the defect the function exists for)...
        let naive = fx.len + (want - free);
        let plan = size_for_free(&file, fx.offset, want).unwrap();
        assert!(plan > naive, "{features}: {plan} <= {naive}");
        assert_eq!(plan % u64::from(bs), 0);
        // ...the planned one does not, and is not wasteful (within a few groups' metadata).
        let before = fx.sha256();
        assert!(plan - naive < 64 * MIB, "{features}: {plan} vs {naive}");
        assert_eq!(fx.sha256(), before, "size_for_free wrote to the image");
        grow_fs(&file, fx.offset, naive, NOW).unwrap();
        let short = Ext4Fs::open(fx.open_rw(), fx.offset, naive, NOW)
            .unwrap()
            .free_bytes();
        assert!(
            short < want,
            "{features}: growing by the shortfall was enough"
        );
        grow_fs(&file, fx.offset, plan, NOW).unwrap();
        let fs = Ext4Fs::open(fx.open_rw(), fx.offset, plan, NOW).unwrap();
        assert!(
            fs.free_bytes() >= want,
            "{features}: {} < {want}",
            fs.free_bytes()
        );
        drop(fs);
        let (ok, out) = fx.fsck();
        assert!(ok, "{features}: {out}");
    }
}
