//! Group descriptors: field layout, their checksums and those of the bitmaps they describe,
//! and reading the whole table with every descriptor checked.

use crate::csum::{crc16, crc32c_raw};
use crate::disk::{Dev, le16, le32, put16, put32};
use crate::error::{Result, corrupt};
use crate::layout::Geo;

/// A descriptor field split in two halves: the low half in every descriptor, the high half
/// only in 64-byte descriptors (64bit). Block numbers have 32-bit halves, counts 16-bit ones.
#[derive(Clone, Copy)]
pub(crate) struct Field {
    lo: usize,
    hi: usize,
    wide: bool,
}

impl Field {
    /// A block number: 32-bit halves.
    const fn block(lo: usize, hi: usize) -> Field {
        Field { lo, hi, wide: true }
    }
    /// A count or checksum: 16-bit halves.
    const fn count(lo: usize, hi: usize) -> Field {
        Field {
            lo,
            hi,
            wide: false,
        }
    }
}

pub(crate) const BG_BLOCK_BITMAP: Field = Field::block(0x00, 0x20);
pub(crate) const BG_INODE_BITMAP: Field = Field::block(0x04, 0x24);
pub(crate) const BG_INODE_TABLE: Field = Field::block(0x08, 0x28);
pub(crate) const BG_FREE_BLOCKS: Field = Field::count(0x0C, 0x2C);
pub(crate) const BG_FREE_INODES: Field = Field::count(0x0E, 0x2E);
pub(crate) const BG_USED_DIRS: Field = Field::count(0x10, 0x30);
pub(crate) const BG_ITABLE_UNUSED: Field = Field::count(0x1C, 0x32);
/// Where a descriptor keeps the checksum of its group's block bitmap.
pub(crate) const BG_BLOCK_BITMAP_CSUM: Field = Field::count(0x18, 0x38);
/// Where a descriptor keeps the checksum of its group's inode bitmap.
pub(crate) const BG_INODE_BITMAP_CSUM: Field = Field::count(0x1A, 0x3A);
pub(crate) const BG_FLAGS: usize = 0x12;
pub(crate) const BG_CHECKSUM: usize = 0x1E;

pub(crate) const BG_INODE_UNINIT: u16 = 0x1;
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x2;

/// Descriptors this long and longer have the high halves.
const DESC_SIZE_64: usize = 64;

/// The value of field `f` of descriptor `d`.
pub(crate) fn get(d: &[u8], f: Field) -> u64 {
    let has_hi = d.len() >= DESC_SIZE_64;
    match (f.wide, has_hi) {
        (true, true) => u64::from(le32(d, f.lo)) | u64::from(le32(d, f.hi)) << 32,
        (true, false) => u64::from(le32(d, f.lo)),
        (false, true) => u64::from(le16(d, f.lo)) | u64::from(le16(d, f.hi)) << 16,
        (false, false) => u64::from(le16(d, f.lo)),
    }
}

/// Stores `v` in field `f` of descriptor `d` (its high half only where `d` has one).
pub(crate) fn set(d: &mut [u8], f: Field, v: u64) {
    let has_hi = d.len() >= DESC_SIZE_64;
    if f.wide {
        put32(d, f.lo, v as u32);
        if has_hi {
            put32(d, f.hi, (v >> 32) as u32);
        }
    } else {
        put16(d, f.lo, v as u16);
        if has_hi {
            put16(d, f.hi, (v >> 16) as u16);
        }
    }
}

/// The checksum descriptor `raw` of group `g` should carry: crc32c with metadata_csum,
/// crc16 with gdt_csum, none without either.
pub(crate) fn desc_checksum(geo: &Geo, g: u32, raw: &[u8]) -> Option<u16> {
    let after = BG_CHECKSUM + 2;
    if geo.csum() {
        let mut c = crc32c_raw(geo.seed, &g.to_le_bytes());
        c = crc32c_raw(c, &raw[..BG_CHECKSUM]);
        c = crc32c_raw(c, &[0, 0]);
        if raw.len() > after {
            c = crc32c_raw(c, &raw[after..]);
        }
        Some(c as u16)
    } else if geo.gdt_csum() {
        let mut c = crc16(!0, &geo.uuid);
        c = crc16(c, &g.to_le_bytes());
        c = crc16(c, &raw[..BG_CHECKSUM]);
        if raw.len() > after {
            c = crc16(c, &raw[after..]);
        }
        Some(c)
    } else {
        None
    }
}

/// Brings the checksum of descriptor `raw` of group `g` up to date (if it has one).
pub(crate) fn set_desc_checksum(geo: &Geo, g: u32, raw: &mut [u8]) {
    if let Some(c) = desc_checksum(geo, g, raw) {
        put16(raw, BG_CHECKSUM, c);
    }
}

/// Does the bitmap `bits` (its first `nbytes` bytes count) match the checksum descriptor `desc`
/// keeps in `at`? Only the low half is compared where the descriptor has no high half.
/// Always true without metadata_csum.
pub(crate) fn bitmap_csum_ok(
    geo: &Geo,
    desc: &[u8],
    bits: &[u8],
    nbytes: usize,
    at: Field,
) -> bool {
    if !geo.csum() {
        return true;
    }
    let mut want = u64::from(crc32c_raw(geo.seed, &bits[..nbytes]));
    if desc.len() < DESC_SIZE_64 {
        want &= 0xFFFF;
    }
    get(desc, at) == want
}

/// Stores the checksum of the bitmap `bits` (its first `nbytes` bytes) in descriptor `desc` at
/// `at`; nothing without metadata_csum.
pub(crate) fn store_bitmap_csum(geo: &Geo, desc: &mut [u8], bits: &[u8], nbytes: usize, at: Field) {
    if geo.csum() {
        let c = crc32c_raw(geo.seed, &bits[..nbytes]);
        set(desc, at, u64::from(c));
    }
}

/// Reads the group descriptor table from its primary copies (in order, wherever meta_bg puts
/// them), checking each descriptor's checksum, that its bitmaps and inode table lie inside the
/// filesystem and that its counts are possible. Returns `gdt_blocks` whole blocks.
pub(crate) fn read_gdt(dev: &Dev, geo: &Geo) -> Result<Vec<u8>> {
    let bs = geo.bs;
    let mut gdt = Vec::with_capacity((geo.gdt_blocks * bs) as usize);
    for i in 0..geo.gdt_blocks {
        let blk = geo.primary_gdt_block(i);
        if blk >= geo.blocks_count {
            return Err(corrupt(format!(
                "descriptor block {i} lies outside the filesystem"
            )));
        }
        gdt.extend(dev.read_vec(blk * bs, bs as usize, "reading the group descriptors")?);
    }
    let ds = geo.desc_size;
    let itable_blocks = geo.itable_blocks();
    for g in 0..geo.groups {
        let raw = &gdt[g as usize * ds..(g as usize + 1) * ds];
        let stored = le16(raw, BG_CHECKSUM);
        if let Some(want) = desc_checksum(geo, g, raw)
            && want != stored
        {
            return Err(corrupt(format!(
                "group descriptor {g} checksum mismatch (stored {stored:#06x}, computed {want:#06x})"
            )));
        }
        for (name, b, n) in [
            ("block bitmap", get(raw, BG_BLOCK_BITMAP), 1),
            ("inode bitmap", get(raw, BG_INODE_BITMAP), 1),
            ("inode table", get(raw, BG_INODE_TABLE), itable_blocks),
        ] {
            if b < geo.first_data_block || b.saturating_add(n) > geo.blocks_count {
                return Err(corrupt(format!(
                    "the {name} of group {g} lies outside the filesystem"
                )));
            }
        }
        let ipg = u64::from(geo.ipg);
        if get(raw, BG_FREE_BLOCKS) > geo.bpg
            || get(raw, BG_FREE_INODES) > ipg
            || get(raw, BG_ITABLE_UNUSED) > ipg
        {
            return Err(corrupt(format!(
                "group descriptor {g} has impossible counts"
            )));
        }
    }
    Ok(gdt)
}
