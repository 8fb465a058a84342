//! Inodes on disk: field offsets, flags, reserved inode numbers, the inode checksum, and the
//! extent tree's node format.

use crate::csum::crc32c_raw;
use crate::disk::{Dev, le16, le32, put16};
use crate::error::{Result, corrupt};
use crate::layout::Geo;

// Inode field offsets.
pub(crate) const I_MODE: usize = 0x00;
pub(crate) const I_UID: usize = 0x02;
pub(crate) const I_SIZE_LO: usize = 0x04;
pub(crate) const I_ATIME: usize = 0x08;
pub(crate) const I_CTIME: usize = 0x0C;
pub(crate) const I_MTIME: usize = 0x10;
pub(crate) const I_DTIME: usize = 0x14;
pub(crate) const I_GID: usize = 0x18;
pub(crate) const I_LINKS_COUNT: usize = 0x1A;
pub(crate) const I_BLOCKS_LO: usize = 0x1C;
pub(crate) const I_FLAGS: usize = 0x20;
/// The 60 bytes of block map: an extent tree root or 15 block pointers.
pub(crate) const I_BLOCK: usize = 0x28;
pub(crate) const I_BLOCK_LEN: usize = 60;
pub(crate) const I_GENERATION: usize = 0x64;
pub(crate) const I_FILE_ACL_LO: usize = 0x68;
pub(crate) const I_SIZE_HI: usize = 0x6C;
pub(crate) const I_BLOCKS_HI: usize = 0x74;
pub(crate) const I_FILE_ACL_HI: usize = 0x76;
pub(crate) const I_UID_HI: usize = 0x78;
pub(crate) const I_GID_HI: usize = 0x7A;
pub(crate) const I_CHECKSUM_LO: usize = 0x7C;
/// Everything from here on exists only in inodes larger than 128 bytes, as far as
/// `i_extra_isize` says.
pub(crate) const GOOD_OLD_INODE_SIZE: usize = 128;
pub(crate) const I_EXTRA_ISIZE: usize = 0x80;
pub(crate) const I_CHECKSUM_HI: usize = 0x82;
pub(crate) const I_CTIME_EXTRA: usize = 0x84;
pub(crate) const I_MTIME_EXTRA: usize = 0x88;
pub(crate) const I_ATIME_EXTRA: usize = 0x8C;
pub(crate) const I_CRTIME: usize = 0x90;
pub(crate) const I_CRTIME_EXTRA: usize = 0x94;

// Block pointers of a block-mapped inode.
pub(crate) const IND_BLOCK: usize = 12;
pub(crate) const DIND_BLOCK: usize = 13;
pub(crate) const TIND_BLOCK: usize = 14;
pub(crate) const N_BLOCKS: usize = 15;

// i_mode file types.
pub(crate) const S_IFMT: u16 = 0xF000;
pub(crate) const S_IFREG: u16 = 0x8000;
pub(crate) const S_IFDIR: u16 = 0x4000;
pub(crate) const S_IFLNK: u16 = 0xA000;

// i_flags.
pub(crate) const INDEX_FL: u32 = 0x1000;
pub(crate) const HUGE_FILE_FL: u32 = 0x40000;
pub(crate) const EXTENTS_FL: u32 = 0x80000;
pub(crate) const INLINE_DATA_FL: u32 = 0x1000_0000;

pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const RESIZE_INO: u32 = 7;

// Extent tree nodes: a 12-byte header, then 12-byte entries.
pub(crate) const EXT_MAGIC: u16 = 0xF30A;
pub(crate) const EXT_HEADER_LEN: usize = 12;
pub(crate) const EXT_ENTRY_LEN: usize = 12;

/// Physical start of a leaf entry `e` (an extent).
pub(crate) fn extent_start(e: &[u8]) -> u64 {
    u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32
}

/// Child block of an index entry `e`.
pub(crate) fn index_child(e: &[u8]) -> u64 {
    u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32
}

/// Seed of the checksums of everything belonging to inode `ino` (the inode itself, its extent
/// tree blocks, directory blocks).
pub(crate) fn inode_seed(geo: &Geo, ino: u32, generation: u32) -> u32 {
    let c = crc32c_raw(geo.seed, &ino.to_le_bytes());
    crc32c_raw(c, &generation.to_le_bytes())
}

/// Does `raw` have room for the high half of its checksum?
fn has_csum_hi(raw: &[u8]) -> bool {
    raw.len() > GOOD_OLD_INODE_SIZE && le16(raw, I_EXTRA_ISIZE) >= 4
}

/// crc32c of inode `ino` with both checksum halves counted as zero.
fn inode_csum(geo: &Geo, ino: u32, raw: &[u8]) -> u32 {
    let mut c = inode_seed(geo, ino, le32(raw, I_GENERATION));
    c = crc32c_raw(c, &raw[..I_CHECKSUM_LO]);
    c = crc32c_raw(c, &[0, 0]);
    c = crc32c_raw(c, &raw[I_CHECKSUM_LO + 2..GOOD_OLD_INODE_SIZE]);
    if raw.len() > GOOD_OLD_INODE_SIZE {
        c = crc32c_raw(c, &raw[I_EXTRA_ISIZE..I_CHECKSUM_HI]);
        if has_csum_hi(raw) {
            c = crc32c_raw(c, &[0, 0]);
            c = crc32c_raw(c, &raw[I_CHECKSUM_HI + 2..]);
        } else {
            c = crc32c_raw(c, &raw[I_CHECKSUM_HI..]);
        }
    }
    c
}

/// Checks inode `ino` as read from its table: an extra size that fits the inode and, with
/// metadata_csum, the checksum (of a slot that was ever written: all zeros is a never-used one).
pub(crate) fn check_inode(geo: &Geo, ino: u32, raw: &[u8]) -> Result<()> {
    if raw.len() > GOOD_OLD_INODE_SIZE
        && GOOD_OLD_INODE_SIZE + usize::from(le16(raw, I_EXTRA_ISIZE)) > raw.len()
    {
        return Err(corrupt(format!("inode {ino} has an invalid extra size")));
    }
    if !geo.csum() || raw.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let c = inode_csum(geo, ino, raw);
    let stored = u32::from(le16(raw, I_CHECKSUM_LO));
    let ok = if has_csum_hi(raw) {
        stored | u32::from(le16(raw, I_CHECKSUM_HI)) << 16 == c
    } else {
        stored == c & 0xFFFF
    };
    if ok {
        Ok(())
    } else {
        Err(corrupt(format!("inode {ino} checksum mismatch")))
    }
}

/// Stores the checksum of inode `ino` (nothing without metadata_csum).
pub(crate) fn set_inode_csum(geo: &Geo, ino: u32, raw: &mut [u8]) {
    if !geo.csum() {
        return;
    }
    let c = inode_csum(geo, ino, raw);
    put16(raw, I_CHECKSUM_LO, c as u16);
    if has_csum_hi(raw) {
        put16(raw, I_CHECKSUM_HI, (c >> 16) as u16);
    }
}

/// Physical block holding logical block 0 of an inode (extent tree or block map); `what`
/// names the inode in errors.
pub(crate) fn first_block(dev: &Dev, geo: &Geo, inode: &[u8], what: &str) -> Result<u64> {
    if le32(inode, I_FLAGS) & EXTENTS_FL == 0 {
        return Ok(u64::from(le32(inode, I_BLOCK)));
    }
    let mut node = inode[I_BLOCK..I_BLOCK + I_BLOCK_LEN].to_vec();
    for _ in 0..8 {
        if le16(&node, 0) != EXT_MAGIC || le16(&node, 2) == 0 {
            return Err(corrupt(format!("bad extent header in {what}")));
        }
        let depth = le16(&node, 6);
        let first_entry = &node[EXT_HEADER_LEN..EXT_HEADER_LEN + EXT_ENTRY_LEN];
        if le32(first_entry, 0) != 0 {
            return Err(corrupt(format!("{what} has no first block")));
        }
        if depth == 0 {
            return Ok(extent_start(first_entry));
        }
        let child = index_child(first_entry);
        if child >= geo.blocks_count {
            return Err(corrupt(format!(
                "extent index of {what} points outside the filesystem"
            )));
        }
        node = dev.read_vec(
            child * geo.bs,
            geo.bs as usize,
            "reading an extent tree block",
        )?;
    }
    Err(corrupt(format!("extent tree of {what} is too deep")))
}
