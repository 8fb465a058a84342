//! Growing and then writing: the new groups come with uninitialised bitmaps and inode
//! tables that were never zeroed (as resize2fs leaves them), and the writer must be able to
//! allocate inodes and blocks there. Thousands of files exhaust the original groups' inodes.

mod common;

use common::{NOW, Spec, make};
use pikube_ext4::{Ext4Fs, Meta};

const MIB: u64 = 1 << 20;

fn grow_then_fill(spec: Spec) {
    let fx = make(&spec);
    let grown = fx.len + 192 * MIB;
    {
        use std::os::unix::fs::FileExt;
        let f = fx.open_rw();
        f.set_len(fx.offset + grown + MIB).unwrap();
        // Old bytes where the new groups' inode tables will be (they are not zeroed by the
        // grow, as with resize2fs): the writer must not trust those slots.
        let junk = vec![0x5Au8; MIB as usize];
        for m in 0..(grown - fx.len) / MIB {
            f.write_all_at(&junk, fx.offset + fx.len + m * MIB).unwrap();
        }
        let g = pikube_ext4::grow::grow_fs(&f, fx.offset, grown, NOW).unwrap();
        assert!(g.new_groups > g.old_groups, "{g:?}");
    }
    let (ok, out) = fx.fsck();
    assert!(ok, "after grow: {out}");

    let meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };
    let mut fs = Ext4Fs::open(fx.open_rw(), fx.offset, grown, NOW).unwrap();
    let inodes_before = fs.free_bytes();
    let mut expected = Vec::new();
    for d in 0..40 {
        let dir = format!("/many/d{d:02}");
        fs.mkdir_p(
            &dir,
            &Meta {
                mode: 0o755,
                ..meta
            },
        )
        .unwrap();
        for i in 0..150 {
            let path = format!("{dir}/f{i:03}");
            let body = format!("{d}-{i}\n").into_bytes();
            fs.write_file(&path, &mut &body[..], body.len() as u64, &meta)
                .unwrap();
            expected.push((path, body));
        }
    }
    let big: Vec<u8> = (0..120 * MIB as usize).map(|i| (i % 253) as u8).collect();
    fs.write_file("/big.bin", &mut &big[..], big.len() as u64, &meta)
        .unwrap();
    assert!(fs.free_bytes() < inodes_before);
    fs.close().unwrap();

    let (ok, out) = fx.fsck();
    assert!(ok, "after writing into the grown filesystem: {out}");
    // ext4-view does not read meta_bg filesystems; debugfs does.
    let view = (!spec.features.contains("meta_bg")).then(|| fx.view());
    let read = |path: &str| match &view {
        Some(view) => view.read(path).unwrap(),
        None => debugfs_dump(&fx, path),
    };
    for (path, body) in expected.iter().step_by(97) {
        assert_eq!(&read(path), body, "{path}");
    }
    assert!(read("/big.bin") == big);
}

/// The contents of `path` as debugfs reads them.
fn debugfs_dump(fx: &common::Fixture, path: &str) -> Vec<u8> {
    let out = fx.dir.path().join("dumped");
    let req = format!("dump {path} {}", out.display());
    fx.debugfs(&req);
    let data = std::fs::read(&out).unwrap_or_else(|e| panic!("debugfs {req}: {e}"));
    std::fs::remove_file(&out).unwrap();
    data
}

#[test]
fn ubuntu_features_grow_then_fill_new_groups() {
    grow_then_fill(Spec {
        name: "writable",
        features: "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize",
        block_size: 4096,
        size_mib: 64,
        // 32 MiB groups: two before growing, eight after.
        extra: &["-N", "2048", "-g", "8192"],
        big_dir_entries: 0,
        offset_mib: 1,
    });
}

#[test]
fn one_kib_blocks_grow_then_fill_new_groups() {
    grow_then_fill(Spec {
        name: "root1k",
        features: "has_journal,extent,flex_bg,metadata_csum,^64bit",
        block_size: 1024,
        size_mib: 48,
        extra: &["-N", "2048"],
        big_dir_entries: 0,
        offset_mib: 1,
    });
}

#[test]
fn meta_bg_grow_then_fill_new_meta_groups() {
    // 1 KiB blocks and 64-byte descriptors: one descriptor block per 16 groups of 8 MiB. After
    // growing, groups from the 17th on are described by a descriptor block in their own meta
    // group, which the writer must read from and write back to there.
    grow_then_fill(Spec {
        name: "metabg",
        features: "has_journal,extent,flex_bg,metadata_csum,64bit,meta_bg,^resize_inode",
        block_size: 1024,
        size_mib: 48,
        extra: &["-N", "2048"],
        big_dir_entries: 0,
        offset_mib: 1,
    });
}
