//! The on-disk format of ext4 as this crate reads and writes it, in one place for both the
//! writer ([`crate::Ext4Fs`]) and the offline grow ([`crate::grow`]): superblock and group
//! descriptor fields, inode fields, feature bits, the checksums of each structure, the
//! geometry and placement rules, and the checks every filesystem passes before either of them
//! touches it.

pub(crate) mod desc;
mod features;
mod geo;
mod inode;
mod journal;
mod sb;

pub(crate) use desc::{
    BG_BLOCK_BITMAP, BG_BLOCK_BITMAP_CSUM, BG_BLOCK_UNINIT, BG_FLAGS, BG_FREE_BLOCKS,
    BG_FREE_INODES, BG_INODE_BITMAP, BG_INODE_BITMAP_CSUM, BG_INODE_TABLE, BG_INODE_UNINIT,
    BG_ITABLE_UNUSED, BG_USED_DIRS, bitmap_csum_ok, read_gdt, set_desc_checksum, store_bitmap_csum,
};
pub(crate) use features::*;
pub(crate) use geo::Geo;
pub(crate) use inode::*;
pub(crate) use journal::check_journal;
pub(crate) use sb::*;
