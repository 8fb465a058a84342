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
