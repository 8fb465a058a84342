//! The journal, as far as anything here needs it: its superblock must say that nothing is
//! waiting to be replayed.

use crate::disk::{Dev, le32};
use crate::error::{Error, Result, corrupt};
use crate::layout::{
    BG_INODE_TABLE, COMPAT_HAS_JOURNAL, Geo, SB_JOURNAL_INUM, check_inode, desc, first_block,
};

/// jbd2 superblock: big-endian magic at 0, `s_start` (first block of the log to replay,
/// 0 when the journal is empty) at 0x1C.
const JBD2_MAGIC: u32 = 0xC03B_3998;
const JSB_START: usize = 0x1C;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Refuses a filesystem whose internal journal holds transactions that were never replayed, or
/// whose journal is on another device. `gdt` is the group descriptor table.
pub(crate) fn check_journal(dev: &Dev, geo: &Geo, sb: &[u8], gdt: &[u8]) -> Result<()> {
    if geo.compat & COMPAT_HAS_JOURNAL == 0 {
        return Ok(());
    }
    let ino = le32(sb, SB_JOURNAL_INUM);
    if ino == 0 {
        return Err(Error::Unsupported {
            feature: "an external journal device".into(),
        });
    }
    let (g, at) = geo.inode_slot(ino)?;
    let ds = geo.desc_size;
    let table = desc::get(&gdt[g as usize * ds..(g as usize + 1) * ds], BG_INODE_TABLE);
    let inode = dev.read_vec(
        table * geo.bs + at,
        geo.inode_size,
        "reading the journal inode",
    )?;
    check_inode(geo, ino, &inode)?;
    let blk = first_block(dev, geo, &inode, "the journal inode")?;
    if blk == 0 || blk >= geo.blocks_count {
        return Err(corrupt(
            "the journal superblock lies outside the filesystem",
        ));
    }
    let jsb = dev.read_vec(blk * geo.bs, 1024, "reading the journal superblock")?;
    if be32(&jsb, 0) != JBD2_MAGIC {
        return Err(corrupt("the journal superblock has a bad magic number"));
    }
    if be32(&jsb, JSB_START) != 0 {
        return Err(Error::NeedsRecovery);
    }
    Ok(())
}
