//! Every refusal happens before a single byte is written: the image's
//! SHA-256 is unchanged afterwards. Corrupted metadata never panics.

mod common;
use common::*;
use pikube_ext4::{Error, Ext4Fs, Meta};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::Command;

const U2404: &str = "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file,^metadata_csum_seed";
const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_700_000_000,
};

fn small(features: &str, extra: &[&str]) -> Fixture {
    make(&Spec {
        name: "refuse",
        features,
        block_size: 4096,
        size_mib: 32,
        extra,
        big_dir_entries: 600,
        offset_mib: 1,
    })
}

fn open(fx: &Fixture) -> Result<Ext4Fs, Error> {
    Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW)
}

/// Rewrites the superblock checksum after a deliberate change.
fn fix_sb_csum(fx: &Fixture) {
    let sb = fx.read_at(1024, 1024);
    let c = !crc32c::crc32c(&sb[..1020]);
    // ext4 stores the raw CRC (no final inversion) seeded with !0.
    let raw = !crc32c::crc32c_append(0, &sb[..1020]);
    assert_eq!(c, raw);
    fx.patch(1024 + 1020, &raw.to_le_bytes());
}

fn set_sb_u32(fx: &Fixture, off: u64, f: impl Fn(u32) -> u32) {
    let b = fx.read_at(1024 + off, 4);
    let v = f(u32::from_le_bytes(b.try_into().unwrap()));
    fx.patch(1024 + off, &v.to_le_bytes());
    fix_sb_csum(fx);
}

fn debugfs_w(fx: &Fixture, req: &str) {
    let (rc, out) = run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(req)
        .arg(fx.spec_path()));
    assert_eq!(rc, 0, "debugfs -w {req}: {out}");
}

fn expect_refusal(fx: &Fixture, check: impl Fn(&Error) -> bool, what: &str) {
    let before = fx.sha256();
    match open(fx) {
        Ok(_) => panic!("{what}: open succeeded"),
        Err(e) => {
            assert!(check(&e), "{what}: unexpected error {e}");
            println!("{what}: {e}");
        }
    }
    assert_eq!(fx.sha256(), before, "{what}: the image changed");
}

#[test]
fn refuses_needs_recovery_flag() {
    let fx = small(U2404, &[]);
    debugfs_w(&fx, "feature needs_recovery");
    expect_refusal(&fx, |e| matches!(e, Error::NeedsRecovery), "needs_recovery");
    assert!(open(&fx).unwrap_err().to_string().contains("e2fsck -fy"));
}

#[test]
fn refuses_dirty_journal() {
    let fx = small(U2404, &[]);
    let out = fx.debugfs("bmap <8> 0");
    let blk: u64 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("journal block: {out}"));
    // Journal superblock s_start (big-endian) at byte 0x1C.
    fx.patch(blk * 4096 + 0x1C, &1u32.to_be_bytes());
    expect_refusal(
        &fx,
        |e| matches!(e, Error::NeedsRecovery),
        "journal s_start != 0",
    );
}

#[test]
fn refuses_pending_orphans() {
    let fx = small(U2404, &[]);
    debugfs_w(&fx, "ssv last_orphan 12");
    expect_refusal(&fx, |e| matches!(e, Error::OrphansPending), "s_last_orphan");
    let fx = small("orphan_file", &[]);
    set_sb_u32(&fx, 0x64, |v| v | 0x10000);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::OrphansPending),
        "orphan_present",
    );
}

#[test]
fn refuses_unknown_feature_bits() {
    let fx = small(U2404, &[]);
    set_sb_u32(&fx, 0x60, |v| v | 0x80_0000);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Unsupported { feature } if feature.contains("0x800000")),
        "unknown incompat",
    );
    let fx = small(U2404, &[]);
    set_sb_u32(&fx, 0x64, |v| v | 0x40_0000);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Unsupported { .. }),
        "unknown ro_compat",
    );
    let fx = small(&format!("{U2404},quota"), &[]);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Unsupported { feature } if feature.contains("quota")),
        "quota",
    );
    let fx = small(&format!("{U2404},mmp"), &[]);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Unsupported { feature } if feature.contains("mmp")),
        "mmp",
    );
    let fx = small(&format!("{U2404},encrypt"), &[]);
    expect_refusal(&fx, |e| matches!(e, Error::Unsupported { .. }), "encrypt");
}

#[test]
fn refuses_corrupt_superblock_and_descriptor_checksums() {
    let fx = small(U2404, &[]);
    let b = fx.read_at(1024 + 0x40, 1);
    fx.patch(1024 + 0x40, &[b[0] ^ 0x10]);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Corrupt { what } if what.contains("superblock checksum")),
        "sb checksum",
    );
    let fx = small(U2404, &[]);
    // Descriptor of group 0: free inodes count (block 1, 4 KiB blocks).
    let b = fx.read_at(4096 + 0xE, 1);
    fx.patch(4096 + 0xE, &[b[0] ^ 0x01]);
    expect_refusal(
        &fx,
        |e| matches!(e, Error::Corrupt { what } if what.contains("descriptor 0")),
        "desc checksum",
    );
    let fx = small(
        "^metadata_csum,uninit_bg,^orphan_file,^metadata_csum_seed",
        &[],
    );
    let b = fx.read_at(4096 + 0xE, 1);
    fx.patch(4096 + 0xE, &[b[0] ^ 0x01]);
    expect_refusal(&fx, |e| matches!(e, Error::Corrupt { .. }), "desc crc16");
}

#[test]
fn refuses_no_space_before_allocating() {
    let fx = small(U2404, &[]);
    let before = fx.sha256();
    let mut fs = open(&fx).unwrap();
    let free = fs.free_bytes();
    let len = free + 10 * 4096;
    let mut src = std::io::repeat(0x55);
    let e = fs
        .write_file("/etc/too-big", &mut src, len, &META)
        .unwrap_err();
    match &e {
        Error::NoSpace { needed, available } => {
            assert!(*needed > *available && *available == free, "{e}");
        }
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(fs.stat("/etc/too-big").unwrap().is_none());
    drop(fs);
    assert_eq!(fx.sha256(), before, "a refused write changed the image");
    // The same handle remains usable after a refusal and closes cleanly.
    let mut fs = open(&fx).unwrap();
    assert!(matches!(
        fs.write_file("/etc/x", &mut std::io::repeat(1), free * 2, &META),
        Err(Error::NoSpace { .. })
    ));
    fs.write_file("/etc/y", &mut &b"ok"[..], 2, &META).unwrap();
    fs.close().unwrap();
    let (ok, out) = fx.fsck();
    assert!(ok, "{out}");
    // bytes_needed_for is conservative: writing that much fits.
    let need = Ext4Fs::bytes_needed_for(&[1 << 20, 10, 0], 4096);
    assert!(need >= (1 << 20) + 2 * 4096);
}

#[test]
fn path_errors() {
    let fx = small(U2404, &[]);
    let mut fs = open(&fx).unwrap();
    assert!(matches!(
        fs.write_file("/nope/x", &mut &b""[..], 0, &META),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        fs.write_file("/etc", &mut &b""[..], 0, &META),
        Err(Error::IsADirectory { .. })
    ));
    assert!(matches!(
        fs.write_file("/etc/hostname/x", &mut &b""[..], 0, &META),
        Err(Error::NotADirectory { .. })
    ));
    assert!(matches!(
        fs.remove("/etc"),
        Err(Error::DirectoryNotEmpty { .. })
    ));
    assert!(matches!(
        fs.write_file("relative", &mut &b""[..], 0, &META),
        Err(Error::InvalidPath { .. })
    ));
    assert!(matches!(
        fs.write_file("/etc/short", &mut &b"ab"[..], 5, &META),
        Err(Error::Source { .. })
    ));
    assert!(fs.stat("/etc/short").unwrap().is_none());
    // Post-2038 timestamps round-trip through the extra epoch bits.
    fs.write_file(
        "/etc/future",
        &mut &b"f"[..],
        1,
        &Meta {
            mtime: 5_000_000_000,
            ..META
        },
    )
    .unwrap();
    assert_eq!(
        fs.stat("/etc/future").unwrap().unwrap().mtime,
        5_000_000_000
    );
    fs.close().unwrap();
    let (ok, out) = fx.fsck();
    assert!(ok, "{out}");
    let mut fs = open(&fx).unwrap();
    assert_eq!(
        fs.stat("/etc/future").unwrap().unwrap().mtime,
        5_000_000_000
    );
}

/// Random byte flips in the superblock, descriptors, inode table and
/// directory blocks: operations return errors or succeed, never panic;
/// a refused open never writes.
#[test]
fn corruption_fuzz() {
    let fx = small(U2404, &[]);
    let pristine = std::fs::read(&fx.img).unwrap();
    let out = fx.debugfs("stat /etc/big");
    let dir_blocks: Vec<u64> = out
        .lines()
        .skip_while(|l| !l.starts_with("EXTENTS"))
        .nth(1)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .filter(|&b: &u64| b > 100)
        .collect();
    let out = fx.debugfs("stat <2>");
    assert!(out.contains("Inode: 2"), "{out}");
    let itable: u64 = {
        let o = fx.debugfs("imap <2>");
        let i = o.find("located at block ").expect("imap output");
        o[i + 17..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let regions: [(u64, u64); 4] = [
        (1024, 1024),
        // The single group descriptor of this 32 MiB filesystem.
        (4096, 64),
        (itable * 4096, 4 * 4096),
        (
            dir_blocks.first().copied().unwrap_or(itable) * 4096,
            3 * 4096,
        ),
    ];
    let (mut refused, mut opened) = (0, 0);
    for iter in 0..48 {
        std::fs::write(&fx.img, &pristine).unwrap();
        let (start, len) = regions[iter % regions.len()];
        for _ in 0..rng.random_range(1..4) {
            let pos = start + rng.random_range(0..len);
            let b = fx.read_at(pos, 1)[0];
            fx.patch(pos, &[b ^ (1 << rng.random_range(0..8))]);
        }
        let before = fx.sha256();
        match open(&fx) {
            Err(_) => {
                refused += 1;
                assert_eq!(
                    fx.sha256(),
                    before,
                    "iteration {iter}: refused open changed the image"
                );
                continue;
            }
            Ok(mut fs) => {
                assert!(
                    iter % 4 >= 2,
                    "iteration {iter}: a corrupted superblock/descriptor was accepted"
                );
                opened += 1;
                let _ = fs.stat("/etc/big/entry-00007-with-a-longer-name.conf");
                let _ = fs.read_file("/etc/hostname");
                let _ = fs.read_file("/usr/lib/data.bin");
                let _ = fs.write_file("/etc/big/added-name", &mut &b"abc"[..], 3, &META);
                let _ = fs.mkdir_p("/etc/new/dir", &META);
                let _ = fs.remove("/etc/big/entry-00003-with-a-longer-name.conf");
                let _ = fs.symlink("/etc/big/l", "target", &META);
                let _ = fs.close();
            }
        }
    }
    println!("fuzz: {refused} refused opens, {opened} opened with corrupt inodes/dirs");
    assert!(refused >= 24);
}

/// Bitmaps are checked against their descriptor checksums when first read: a damaged one
/// stops the write that needed it, naming which bitmap of which group.
#[test]
fn refuses_a_bitmap_that_fails_its_checksum() {
    // Descriptor of group 0 at block 1 (4 KiB blocks): block bitmap at 0x0, inode bitmap at 0x4.
    for (kind, desc_off) in [("block", 0u64), ("inode", 4)] {
        let fx = small(U2404, &[]);
        let loc = u32::from_le_bytes(fx.read_at(4096 + desc_off, 4).try_into().unwrap());
        // A byte of the bitmap covering group 0's last items, free in a fresh filesystem.
        let at = u64::from(loc) * 4096 + 100;
        let b = fx.read_at(at, 1);
        fx.patch(at, &[b[0] ^ 0x01]);
        let mut fs = open(&fx).unwrap();
        let err = fs
            .write_file("/new.txt", &mut &b"x"[..], 1, &META)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { what } if what.contains(&format!("{kind} bitmap of group 0 checksum mismatch"))),
            "{kind}: {err}"
        );
    }
}
