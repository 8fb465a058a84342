//! One feature policy: the writer (`Ext4Fs::open`) and the grow (`grow_fs`) accept and refuse
//! the same filesystems, with the same error, because the same function decides. Checked on
//! filesystems mkfs.ext4 makes with each feature, and on every bit of the three feature words
//! flipped in a real superblock.

mod common;
use common::*;
use pikube_ext4::Ext4Fs;
use pikube_ext4::grow::grow_fs;

fn fixture(features: &str, extra: &[&str]) -> Fixture {
    make(&Spec {
        name: "policy",
        features,
        block_size: 4096,
        size_mib: 16,
        extra,
        big_dir_entries: 0,
        offset_mib: 1,
    })
}

/// What the writer and the grow (to the same size: nothing to do once accepted) make of the
/// filesystem; neither may write.
fn verdicts(fx: &Fixture) -> (Result<(), String>, Result<(), String>) {
    let writer = Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW)
        .map(drop)
        .map_err(|e| e.to_string());
    let grow = grow_fs(fx.open_rw(), fx.offset, fx.len, NOW)
        .map(|g| assert_eq!(g.old_blocks, g.new_blocks))
        .map_err(|e| e.to_string());
    (writer, grow)
}

#[test]
fn filesystems_made_with_each_feature() {
    // (mkfs -O features, extra mkfs arguments, accepted?, what the refusal names)
    let cases: &[(&str, &[&str], bool, &str)] = &[
        ("", &[], true, ""),
        ("orphan_file,metadata_csum_seed", &[], true, ""),
        ("meta_bg,^resize_inode", &[], true, ""),
        ("sparse_super2", &[], true, ""),
        ("large_dir", &[], true, ""),
        ("fast_commit", &[], true, ""),
        ("stable_inodes", &[], true, ""),
        ("^has_journal", &[], true, ""),
        ("^metadata_csum,uninit_bg", &[], true, ""),
        ("^metadata_csum,^uninit_bg,^flex_bg", &[], true, ""),
        ("^64bit,^huge_file", &[], true, ""),
        ("quota", &[], false, "`quota`"),
        ("quota,project", &[], false, "`project`"),
        ("verity", &[], false, "`verity`"),
        ("encrypt", &[], false, "`encrypt`"),
        ("casefold", &[], false, "`casefold`"),
        ("inline_data", &[], false, "`inline_data`"),
        ("ea_inode", &[], false, "`ea_inode`"),
        ("mmp", &[], false, "`mmp`"),
        ("bigalloc", &["-C", "16384"], false, "`bigalloc`"),
        (
            "^extent,^64bit,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^metadata_csum",
            &[],
            false,
            "`extent`",
        ),
    ];
    for &(features, extra, accepted, names) in cases {
        let fx = fixture(features, extra);
        let before = fx.sha256();
        let (writer, grow) = verdicts(&fx);
        assert_eq!(
            writer, grow,
            "-O {features}: the writer and the grow disagree"
        );
        assert_eq!(fx.sha256(), before, "-O {features}: the image changed");
        match writer {
            Ok(()) => assert!(accepted, "-O {features} was accepted"),
            Err(e) => {
                assert!(!accepted, "-O {features} was refused: {e}");
                assert!(e.contains(names), "-O {features}: {e}");
                println!("-O {features}: {e}");
            }
        }
    }
}

#[test]
fn every_feature_bit() {
    let fx = fixture("orphan_file", &[]);
    let pristine_sb = fx.read_at(1024, 1024);
    let before = fx.sha256();
    let (mut accepted, mut refused) = (0, 0);
    for (word, off) in [("compat", 0x5C), ("incompat", 0x60), ("ro_compat", 0x64)] {
        for bit in (0..32).map(|i| 1u32 << i) {
            let mut sb = pristine_sb.clone();
            let v = u32::from_le_bytes(sb[off..off + 4].try_into().unwrap()) ^ bit;
            sb[off..off + 4].copy_from_slice(&v.to_le_bytes());
            // Kept valid so that the feature words, not the checksum, decide.
            let c = !crc32c::crc32c_append(0, &sb[..1020]);
            sb[1020..].copy_from_slice(&c.to_le_bytes());
            fx.patch(1024, &sb);
            let (writer, grow) = verdicts(&fx);
            assert_eq!(writer, grow, "{word} bit {bit:#x} flipped: they disagree");
            match writer {
                Ok(()) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
    }
    fx.patch(1024, &pristine_sb);
    assert_eq!(fx.sha256(), before, "the image changed");
    println!("{accepted} flips accepted, {refused} refused by both");
    assert!(
        accepted > 10 && refused > 60,
        "{accepted} accepted, {refused} refused"
    );
}
