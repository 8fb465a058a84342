//! The primary superblock: field offsets, state flags, its checksum and the checksum seed
//! every other metadata checksum starts from.

use crate::csum::crc32c_raw;
use crate::disk::{le32, put32};
use crate::layout::features::INCOMPAT_CSUM_SEED;

/// Byte position of the primary superblock inside the partition; it is 1024 bytes long.
pub(crate) const SB_OFFSET: u64 = 1024;
pub(crate) const SB_SIZE: usize = 1024;
pub(crate) const EXT4_MAGIC: u16 = 0xEF53;

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
pub(crate) const SB_FIRST_INO: usize = 0x54;
pub(crate) const SB_INODE_SIZE: usize = 0x58;
pub(crate) const SB_BLOCK_GROUP_NR: usize = 0x5A;
pub(crate) const SB_FEATURE_COMPAT: usize = 0x5C;
pub(crate) const SB_FEATURE_INCOMPAT: usize = 0x60;
pub(crate) const SB_FEATURE_RO_COMPAT: usize = 0x64;
pub(crate) const SB_UUID: usize = 0x68;
pub(crate) const SB_RESERVED_GDT_BLOCKS: usize = 0xCE;
pub(crate) const SB_JOURNAL_INUM: usize = 0xE0;
pub(crate) const SB_LAST_ORPHAN: usize = 0xE8;
pub(crate) const SB_HASH_SEED: usize = 0xEC;
pub(crate) const SB_DESC_SIZE: usize = 0xFE;
pub(crate) const SB_FIRST_META_BG: usize = 0x104;
pub(crate) const SB_BLOCKS_COUNT_HI: usize = 0x150;
pub(crate) const SB_R_BLOCKS_COUNT_HI: usize = 0x154;
pub(crate) const SB_FREE_BLOCKS_HI: usize = 0x158;
pub(crate) const SB_WANT_EXTRA_ISIZE: usize = 0x15E;
pub(crate) const SB_FLAGS: usize = 0x160;
pub(crate) const SB_CHECKSUM_TYPE: usize = 0x175;
pub(crate) const SB_OVERHEAD_CLUSTERS: usize = 0x248;
pub(crate) const SB_BACKUP_BGS: usize = 0x24C;
pub(crate) const SB_CHECKSUM_SEED: usize = 0x270;
pub(crate) const SB_WTIME_HI: usize = 0x274;
pub(crate) const SB_CHECKSUM: usize = 0x3FC;

pub(crate) const STATE_VALID: u16 = 0x1;
pub(crate) const STATE_ERROR: u16 = 0x2;

/// `s_flags`: directory hashes treat names as unsigned chars.
pub(crate) const FLAGS_UNSIGNED_HASH: u32 = 0x2;

/// `s_checksum_type` of crc32c, the only one defined.
pub(crate) const CHECKSUM_TYPE_CRC32C: u8 = 1;

/// The superblock's own checksum (metadata_csum): crc32c of everything before it.
pub(crate) fn sb_checksum(sb: &[u8]) -> u32 {
    crc32c_raw(!0, &sb[..SB_CHECKSUM])
}

/// Stores the superblock's checksum (callers check for metadata_csum).
pub(crate) fn set_sb_checksum(sb: &mut [u8]) {
    let c = sb_checksum(sb);
    put32(sb, SB_CHECKSUM, c);
}

/// Stores the write time `t` (Unix seconds, 40 bits: low 32 and a high byte).
pub(crate) fn set_write_time(sb: &mut [u8], t: u64) {
    put32(sb, SB_WTIME, t as u32);
    sb[SB_WTIME_HI] = (t >> 32) as u8;
}

/// The seed of every metadata checksum: stored (metadata_csum_seed) or derived from the UUID.
pub(crate) fn csum_seed(sb: &[u8]) -> u32 {
    if le32(sb, SB_FEATURE_INCOMPAT) & INCOMPAT_CSUM_SEED != 0 {
        le32(sb, SB_CHECKSUM_SEED)
    } else {
        crc32c_raw(!0, &sb[SB_UUID..SB_UUID + 16])
    }
}
