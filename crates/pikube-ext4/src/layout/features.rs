//! Feature bits of the superblock's `s_feature_compat`, `s_feature_incompat` and
//! `s_feature_ro_compat` words, and the one policy deciding which of them the writer and the
//! grow work with.
//!
//! A feature is accepted only if both the writer ([`crate::Ext4Fs`]) and the grow
//! ([`crate::grow`]) handle it correctly; otherwise both refuse the filesystem before writing
//! anything. Both reach [`check_features`] through [`crate::layout::Geo::parse`], so they cannot
//! disagree. Bits this code does not know are refused as well: e2fsck cannot vouch for a
//! filesystem with features it does not know either.

use crate::error::{Error, Result};

pub(crate) const COMPAT_DIR_PREALLOC: u32 = 0x1;
pub(crate) const COMPAT_IMAGIC_INODES: u32 = 0x2;
pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub(crate) const COMPAT_EXT_ATTR: u32 = 0x8;
pub(crate) const COMPAT_RESIZE_INODE: u32 = 0x10;
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x20;
pub(crate) const COMPAT_LAZY_BG: u32 = 0x40;
pub(crate) const COMPAT_EXCLUDE_BITMAP: u32 = 0x100;
pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub(crate) const COMPAT_FAST_COMMIT: u32 = 0x400;
pub(crate) const COMPAT_STABLE_INODES: u32 = 0x800;
pub(crate) const COMPAT_ORPHAN_FILE: u32 = 0x1000;

pub(crate) const INCOMPAT_COMPRESSION: u32 = 0x1;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_MMP: u32 = 0x100;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(crate) const INCOMPAT_DIRDATA: u32 = 0x1000;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(crate) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(crate) const INCOMPAT_CASEFOLD: u32 = 0x20000;

pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_BTREE_DIR: u32 = 0x4;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub(crate) const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x80;
pub(crate) const RO_COMPAT_QUOTA: u32 = 0x100;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
pub(crate) const RO_COMPAT_REPLICA: u32 = 0x800;
pub(crate) const RO_COMPAT_READONLY: u32 = 0x1000;
pub(crate) const RO_COMPAT_PROJECT: u32 = 0x2000;
pub(crate) const RO_COMPAT_SHARED_BLOCKS: u32 = 0x4000;
pub(crate) const RO_COMPAT_VERITY: u32 = 0x8000;
pub(crate) const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;

/// Which superblock word a feature bit lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Word {
    Compat,
    Incompat,
    RoCompat,
}

/// What the writer and the grow do with a filesystem that has a feature.
#[derive(Clone, Copy)]
enum Verdict {
    /// Both handle it correctly.
    Accept,
    /// At least one of them would leave the filesystem wrong; both refuse, saying why.
    Refuse(&'static str),
    /// A state, not a capability: refused by the state checks of `Geo::parse` (journal
    /// recovery, pending orphans) with the error that says what to run.
    State,
}

use Verdict::{Accept, Refuse, State};
use Word::{Compat, Incompat, RoCompat};

/// Every feature bit e2fsprogs defines, with the verdict and the reason for it.
const FEATURES: &[(Word, u32, &str, Verdict)] = &[
    // A hint how many blocks to preallocate for directories; ext4 ignores it and so do both.
    (Compat, COMPAT_DIR_PREALLOC, "dir_prealloc", Accept),
    // Marks AFS server inodes by an inode flag; nothing written or moved here depends on it.
    (Compat, COMPAT_IMAGIC_INODES, "imagic_inodes", Accept),
    // Both require the journal to be empty (no needs_recovery, journal s_start 0) and never
    // write into it; the kernel finds a consistent filesystem and an empty journal.
    (Compat, COMPAT_HAS_JOURNAL, "has_journal", Accept),
    // The writer drops a removed or replaced file's reference to its xattr block (freeing the
    // block with its last reference) and keeps in-inode xattrs of files it rewrites; the grow
    // moves no inode.
    (Compat, COMPAT_EXT_ATTR, "ext_attr", Accept),
    // The reserved GDT blocks are marked in use, so the writer never allocates them; the grow
    // turns them into descriptor blocks and rewrites the resize inode as resize2fs does.
    (Compat, COMPAT_RESIZE_INODE, "resize_inode", Accept),
    // The writer inserts into hashed directories by hash, splitting leaves and index nodes;
    // the grow touches no directory.
    (Compat, COMPAT_DIR_INDEX, "dir_index", Accept),
    (
        Compat,
        COMPAT_LAZY_BG,
        "lazy_bg",
        Refuse(
            "groups may be marked uninitialised without group checksums, which neither reads correctly",
        ),
    ),
    (
        Compat,
        COMPAT_EXCLUDE_BITMAP,
        "exclude_bitmap",
        Refuse("snapshot exclusion bitmaps would not be kept up to date"),
    ),
    // Both place superblock backups where s_backup_bgs says; the grow moves the second backup
    // to the new last group as resize2fs does.
    (Compat, COMPAT_SPARSE_SUPER2, "sparse_super2", Accept),
    // Fast-commit records are replayed only during journal recovery, which both refuse to skip.
    (Compat, COMPAT_FAST_COMMIT, "fast_commit", Accept),
    // Promises that inode numbers never change; neither renumbers an inode.
    (Compat, COMPAT_STABLE_INODES, "stable_inodes", Accept),
    // Ubuntu images from 24.10 on have it. Neither touches the orphan file, and orphans pending
    // in it (orphan_present) are refused as a state.
    (Compat, COMPAT_ORPHAN_FILE, "orphan_file", Accept),
    (
        Incompat,
        INCOMPAT_COMPRESSION,
        "compression",
        Refuse("compressed files cannot be read or written here"),
    ),
    // The writer stores the file type in the entries it adds (and leaves it zero without the
    // feature).
    (Incompat, INCOMPAT_FILETYPE, "filetype", Accept),
    (Incompat, INCOMPAT_RECOVER, "needs_recovery", State),
    (
        Incompat,
        INCOMPAT_JOURNAL_DEV,
        "journal_dev",
        Refuse("this is an external journal, not a filesystem"),
    ),
    // Both find each descriptor block in its meta group; the grow adds meta groups, the writer
    // writes descriptor blocks back to where they live. Together with resize_inode or
    // sparse_super2 it is refused by `Geo::parse`.
    (Incompat, INCOMPAT_META_BG, "meta_bg", Accept),
    // Required as well (see `check_features`): the writer maps every file it writes with
    // extents, and still reads block-mapped files.
    (Incompat, INCOMPAT_EXTENTS, "extent", Accept),
    // 64-byte descriptors: both read and write the high halves of every field.
    (Incompat, INCOMPAT_64BIT, "64bit", Accept),
    (
        Incompat,
        INCOMPAT_MMP,
        "mmp",
        Refuse("multiple-mount protection expects every writer to update its block"),
    ),
    // The writer counts other groups' bitmaps and inode tables when it materialises an
    // uninitialised block bitmap; the grow keeps each new group's metadata inside the group,
    // which flex_bg allows.
    (Incompat, INCOMPAT_FLEX_BG, "flex_bg", Accept),
    (
        Incompat,
        INCOMPAT_EA_INODE,
        "ea_inode",
        Refuse("the writer would not release the xattr inodes of files it removes or replaces"),
    ),
    (
        Incompat,
        INCOMPAT_DIRDATA,
        "dirdata",
        Refuse("directory entries carry data the writer does not parse"),
    ),
    // The checksum seed is read from the superblock instead of derived from the UUID.
    (Incompat, INCOMPAT_CSUM_SEED, "metadata_csum_seed", Accept),
    // The writer follows and adds the third htree level it allows.
    (Incompat, INCOMPAT_LARGEDIR, "large_dir", Accept),
    (
        Incompat,
        INCOMPAT_INLINE_DATA,
        "inline_data",
        Refuse(
            "small files and directories live inside their inode, which the writer does not handle",
        ),
    ),
    (
        Incompat,
        INCOMPAT_ENCRYPT,
        "encrypt",
        Refuse("names and contents in encrypted directories would be written in the clear"),
    ),
    (
        Incompat,
        INCOMPAT_CASEFOLD,
        "casefold",
        Refuse("name lookups and directory hashes would not fold case"),
    ),
    // Both place backups only in groups 0, 1 and powers of 3, 5 and 7.
    (RoCompat, RO_COMPAT_SPARSE_SUPER, "sparse_super", Accept),
    // The writer stores the high half of file sizes.
    (RoCompat, RO_COMPAT_LARGE_FILE, "large_file", Accept),
    (
        RoCompat,
        RO_COMPAT_BTREE_DIR,
        "btree_dir",
        Refuse(
            "never implemented: the kernel mounts such a filesystem read-only and e2fsck refuses it",
        ),
    ),
    // The writer counts i_blocks in 512-byte sectors and clears HUGE_FILE_FL on what it
    // writes; the grow refuses a resize inode that carries the flag.
    (RoCompat, RO_COMPAT_HUGE_FILE, "huge_file", Accept),
    // Both keep the crc16 descriptor checksums and honour uninitialised groups.
    (RoCompat, RO_COMPAT_GDT_CSUM, "uninit_bg", Accept),
    // The writer stops counting a directory's links at 65000 subdirectories, as the kernel.
    (RoCompat, RO_COMPAT_DIR_NLINK, "dir_nlink", Accept),
    // The writer gives new inodes the extra size the superblock asks for, with the extra
    // timestamp bits.
    (RoCompat, RO_COMPAT_EXTRA_ISIZE, "extra_isize", Accept),
    (
        RoCompat,
        RO_COMPAT_HAS_SNAPSHOT,
        "snapshot",
        Refuse("snapshots would not be kept up to date"),
    ),
    (
        RoCompat,
        RO_COMPAT_QUOTA,
        "quota",
        Refuse("the quota files would not count the blocks and inodes the writer adds or frees"),
    ),
    (
        RoCompat,
        RO_COMPAT_BIGALLOC,
        "bigalloc",
        Refuse("space is allocated in clusters of blocks, which neither does"),
    ),
    // Every metadata block either writes gets its crc32c checksum.
    (RoCompat, RO_COMPAT_METADATA_CSUM, "metadata_csum", Accept),
    (
        RoCompat,
        RO_COMPAT_REPLICA,
        "replica",
        Refuse("replica superblocks would not be kept up to date"),
    ),
    (
        RoCompat,
        RO_COMPAT_READONLY,
        "read-only",
        Refuse("the filesystem asks to be mounted read-only"),
    ),
    (
        RoCompat,
        RO_COMPAT_PROJECT,
        "project",
        Refuse("new files would not inherit their directory's project or be counted in its quota"),
    ),
    (
        RoCompat,
        RO_COMPAT_SHARED_BLOCKS,
        "shared_blocks",
        Refuse("freeing a replaced file's blocks could free blocks another file still uses"),
    ),
    (
        RoCompat,
        RO_COMPAT_VERITY,
        "verity",
        Refuse("overwriting a verity file would keep its verity flag over new contents"),
    ),
    (RoCompat, RO_COMPAT_ORPHAN_PRESENT, "orphan_present", State),
];

/// Refuses a filesystem with any feature the policy above refuses or does not know, and one
/// without extents (an ext2/ext3 layout): the writer maps every file it writes with extents,
/// so there is nothing to write into it, nor a reason to grow it.
pub(crate) fn check_features(compat: u32, incompat: u32, ro_compat: u32) -> Result<()> {
    let mut refused = Vec::new();
    for (word, bits) in [
        (Compat, compat),
        (Incompat, incompat),
        (RoCompat, ro_compat),
    ] {
        for bit in (0..32).map(|i| 1u32 << i).filter(|b| bits & b != 0) {
            match FEATURES.iter().find(|f| f.0 == word && f.1 == bit) {
                Some((_, _, _, Accept | State)) => {}
                Some((_, _, name, Refuse(why))) => refused.push(format!("`{name}` ({why})")),
                None => refused.push(format!(
                    "unknown {} feature bit {bit:#x} (made by a newer mkfs)",
                    match word {
                        Compat => "compat",
                        Incompat => "incompat",
                        RoCompat => "ro_compat",
                    }
                )),
            }
        }
    }
    if !refused.is_empty() {
        return Err(Error::Unsupported {
            feature: refused.join(", "),
        });
    }
    if incompat & INCOMPAT_EXTENTS == 0 {
        return Err(Error::Unsupported {
            feature: "an ext2/ext3 layout without the `extent` feature (every file written here is mapped with extents)".into(),
        });
    }
    Ok(())
}

/// The largest block size accepted. Larger blocks are refused by both: neither the writer nor
/// the grow is tested with them, and 64 KiB blocks encode directory record lengths differently.
pub(crate) const MAX_BLOCK_SIZE: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_bit_once() {
        for (i, a) in FEATURES.iter().enumerate() {
            assert_eq!(a.1.count_ones(), 1, "{}", a.2);
            for b in &FEATURES[i + 1..] {
                assert!(a.0 != b.0 || a.1 != b.1, "{} and {}", a.2, b.2);
            }
        }
    }

    #[test]
    fn refusals_name_the_feature_and_why() {
        let e = check_features(0, INCOMPAT_EXTENTS, RO_COMPAT_QUOTA | RO_COMPAT_PROJECT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`quota` (the quota files would not count"),
            "{e}"
        );
        assert!(e.contains("`project` ("), "{e}");
        let e = check_features(0x8000_0000, INCOMPAT_EXTENTS, 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown compat feature bit 0x80000000"),
            "{e}"
        );
        assert!(check_features(0, 0, 0).is_err());
        let ubuntu = (
            COMPAT_HAS_JOURNAL
                | COMPAT_EXT_ATTR
                | COMPAT_RESIZE_INODE
                | COMPAT_DIR_INDEX
                | COMPAT_ORPHAN_FILE,
            INCOMPAT_FILETYPE
                | INCOMPAT_EXTENTS
                | INCOMPAT_64BIT
                | INCOMPAT_FLEX_BG
                | INCOMPAT_CSUM_SEED,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        assert!(check_features(ubuntu.0, ubuntu.1, ubuntu.2).is_ok());
    }
}
