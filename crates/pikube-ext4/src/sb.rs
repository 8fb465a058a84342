//! The on-disk layout of an ext4 superblock and group descriptors: field offsets, feature
//! bits, and the rules both the writer ([`crate::Ext4Fs`]) and the offline grow
//! ([`crate::grow`]) derive from them.

use crate::csum::crc32c_raw;
use crate::disk::{le32, put16};

// Feature bits.
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

// Superblock field offsets.
pub(crate) const SB_INODES_COUNT: usize = 0x00;
pub(crate) const SB_BLOCKS_COUNT_LO: usize = 0x04;
pub(crate) const SB_R_BLOCKS_COUNT_LO: usize = 0x08;
pub(crate) const SB_FREE_BLOCKS_LO: usize = 0x0C;
pub(crate) const SB_FREE_INODES: usize = 0x10;
pub(crate) const SB_FIRST_DATA_BLOCK: usize = 0x14;
pub(crate) const SB_LOG_BLOCK_SIZE: usize = 0x18;
pub(crate) const SB_LOG_CLUSTER_SIZE: usize = 0x1C;
pub(crate) const SB_BLOCKS_PER_GROUP: usize = 0x20;
pub(crate) const SB_CLUSTERS_PER_GROUP: usize = 0x24;
pub(crate) const SB_INODES_PER_GROUP: usize = 0x28;
pub(crate) const SB_WTIME: usize = 0x30;
pub(crate) const SB_MAGIC: usize = 0x38;
pub(crate) const SB_STATE: usize = 0x3A;
pub(crate) const SB_REV_LEVEL: usize = 0x4C;
pub(crate) const SB_INODE_SIZE: usize = 0x58;
pub(crate) const SB_BLOCK_GROUP_NR: usize = 0x5A;
pub(crate) const SB_FEATURE_COMPAT: usize = 0x5C;
pub(crate) const SB_FEATURE_INCOMPAT: usize = 0x60;
pub(crate) const SB_FEATURE_RO_COMPAT: usize = 0x64;
pub(crate) const SB_UUID: usize = 0x68;
pub(crate) const SB_RESERVED_GDT_BLOCKS: usize = 0xCE;
pub(crate) const SB_JOURNAL_INUM: usize = 0xE0;
pub(crate) const SB_LAST_ORPHAN: usize = 0xE8;
pub(crate) const SB_DESC_SIZE: usize = 0xFE;
pub(crate) const SB_FIRST_META_BG: usize = 0x104;
pub(crate) const SB_BLOCKS_COUNT_HI: usize = 0x150;
pub(crate) const SB_R_BLOCKS_COUNT_HI: usize = 0x154;
pub(crate) const SB_FREE_BLOCKS_HI: usize = 0x158;
pub(crate) const SB_CHECKSUM_TYPE: usize = 0x175;
pub(crate) const SB_OVERHEAD_CLUSTERS: usize = 0x248;
pub(crate) const SB_BACKUP_BGS: usize = 0x24C;
pub(crate) const SB_CHECKSUM_SEED: usize = 0x270;
pub(crate) const SB_WTIME_HI: usize = 0x274;
pub(crate) const SB_CHECKSUM: usize = 0x3FC;

pub(crate) const STATE_VALID: u16 = 0x1;
pub(crate) const STATE_ERROR: u16 = 0x2;

// Group descriptor field offsets.
pub(crate) const BG_BLOCK_BITMAP_LO: usize = 0x00;
pub(crate) const BG_INODE_BITMAP_LO: usize = 0x04;
pub(crate) const BG_INODE_TABLE_LO: usize = 0x08;
pub(crate) const BG_FREE_BLOCKS_LO: usize = 0x0C;
pub(crate) const BG_FREE_INODES_LO: usize = 0x0E;
pub(crate) const BG_USED_DIRS_LO: usize = 0x10;
pub(crate) const BG_FLAGS: usize = 0x12;
pub(crate) const BG_BLOCK_BITMAP_CSUM_LO: usize = 0x18;
pub(crate) const BG_INODE_BITMAP_CSUM_LO: usize = 0x1A;
pub(crate) const BG_ITABLE_UNUSED_LO: usize = 0x1C;
pub(crate) const BG_CHECKSUM: usize = 0x1E;
pub(crate) const BG_BLOCK_BITMAP_HI: usize = 0x20;
pub(crate) const BG_INODE_BITMAP_HI: usize = 0x24;
pub(crate) const BG_INODE_TABLE_HI: usize = 0x28;
pub(crate) const BG_FREE_BLOCKS_HI: usize = 0x2C;
pub(crate) const BG_FREE_INODES_HI: usize = 0x2E;
pub(crate) const BG_USED_DIRS_HI: usize = 0x30;
pub(crate) const BG_ITABLE_UNUSED_HI: usize = 0x32;
pub(crate) const BG_BLOCK_BITMAP_CSUM_HI: usize = 0x38;
pub(crate) const BG_INODE_BITMAP_CSUM_HI: usize = 0x3A;

pub(crate) const BG_INODE_UNINIT: u16 = 0x1;
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x2;

/// Does block group `g` hold a backup of the superblock (and of the descriptors)?
pub(crate) fn has_super(g: u64, compat: u32, ro_compat: u32, backup_bgs: [u32; 2]) -> bool {
    if g == 0 {
        return true;
    }
    if compat & COMPAT_SPARSE_SUPER2 != 0 {
        return g == u64::from(backup_bgs[0]) || g == u64::from(backup_bgs[1]);
    }
    if g <= 1 || ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
        return true;
    }
    if g.is_multiple_of(2) {
        return false;
    }
    is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    if n == 0 {
        return false;
    }
    while n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// Where a group descriptor keeps a bitmap's checksum: low half, high half (64-byte
/// descriptors only).
pub(crate) const BLOCK_BITMAP_CSUM: (usize, usize) =
    (BG_BLOCK_BITMAP_CSUM_LO, BG_BLOCK_BITMAP_CSUM_HI);
pub(crate) const INODE_BITMAP_CSUM: (usize, usize) =
    (BG_INODE_BITMAP_CSUM_LO, BG_INODE_BITMAP_CSUM_HI);

/// Stores the checksum of a bitmap (its first `nbytes` bytes) in group descriptor `desc` at
/// `(lo, hi)`; the high half only where the descriptor has room for it.
pub(crate) fn store_bitmap_csum(
    seed: u32,
    desc: &mut [u8],
    bits: &[u8],
    nbytes: usize,
    (lo, hi): (usize, usize),
) {
    let c = crc32c_raw(seed, &bits[..nbytes]);
    put16(desc, lo, c as u16);
    if desc.len() >= hi + 2 {
        put16(desc, hi, (c >> 16) as u16);
    }
}

/// The seed of every metadata checksum: stored (metadata_csum_seed) or derived from the UUID.
pub(crate) fn csum_seed(sb: &[u8]) -> u32 {
    if le32(sb, SB_FEATURE_INCOMPAT) & INCOMPAT_CSUM_SEED != 0 {
        le32(sb, SB_CHECKSUM_SEED)
    } else {
        crc32c_raw(!0, &sb[SB_UUID..SB_UUID + 16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups() {
        let sparse = RO_COMPAT_SPARSE_SUPER;
        let with: Vec<u64> = (0..60)
            .filter(|&g| has_super(g, 0, sparse, [0, 0]))
            .collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
        assert!((0..10).all(|g| has_super(g, 0, 0, [0, 0])));
        let two: Vec<u64> = (0..60)
            .filter(|&g| has_super(g, COMPAT_SPARSE_SUPER2, sparse, [1, 41]))
            .collect();
        assert_eq!(two, [0, 1, 41]);
    }
}
