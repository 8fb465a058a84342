//! Offline growth of an ext4 filesystem that lives in a byte range of an image file.
//!
//! The filesystem is grown in place, the way `resize2fs` grows an unmounted filesystem when no
//! block has to move: the last group is extended, new groups are appended (their descriptors go
//! into the existing descriptor blocks, into blocks taken from the reserved GDT area that the
//! resize inode keeps, or with meta_bg into the new meta groups), superblock/GDT backups are
//! written into the new backup groups (sparse_super, or sparse_super2 whose second backup moves
//! to the new last group), and every count and checksum is brought up to date.
//!
//! Each new group keeps its block bitmap, inode bitmap and inode table inside itself (valid with
//! and without flex_bg). With group checksums the new groups are marked INODE_UNINIT (and
//! BLOCK_UNINIT except the last) and their inode tables are left for the kernel's lazy
//! initialisation (ITABLE_ZEROED clear), as resize2fs does; without group checksums the inode
//! tables are zeroed.
//!
//! Every precondition is checked and every new structure is computed in memory before the first
//! byte is written, so a refusal leaves the image untouched.
//!
//! This module is self-contained: it reads the superblock, group descriptors, bitmaps and the
//! few inodes it needs on its own.

/// What [`grow_fs`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrowth {
    pub old_blocks: u64,
    pub new_blocks: u64,
    pub old_groups: u32,
    pub new_groups: u32,
    pub free_blocks_before: u64,
    pub free_blocks_after: u64,
}

/// Feature bits this module knows how to carry through a grow unchanged.
const COMPAT_OK: u32 = COMPAT_DIR_PREALLOC
    | COMPAT_IMAGIC_INODES
    | COMPAT_HAS_JOURNAL
    | COMPAT_EXT_ATTR
    | COMPAT_RESIZE_INODE
    | COMPAT_DIR_INDEX
    | COMPAT_LAZY_BG
    | COMPAT_FAST_COMMIT
    | COMPAT_STABLE_INODES
    | COMPAT_ORPHAN_FILE
    | COMPAT_SPARSE_SUPER2;
const INCOMPAT_OK: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD
    | INCOMPAT_META_BG;
const RO_COMPAT_OK: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_BTREE_DIR
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_GDT_CSUM
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_QUOTA
    | RO_COMPAT_METADATA_CSUM
    | RO_COMPAT_PROJECT
    | RO_COMPAT_VERITY;

// Inode field offsets.
const I_MODE: usize = 0x00;
const I_BLOCKS_LO: usize = 0x1C;
const I_FLAGS: usize = 0x20;
const I_BLOCK: usize = 0x28;
const I_GENERATION: usize = 0x64;
const I_BLOCKS_HI: usize = 0x74;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;

const INODE_FL_EXTENTS: u32 = 0x80000;
const INODE_FL_HUGE_FILE: u32 = 0x40000;
const RESIZE_INO: u32 = 7;
const DIND_BLOCK_INDEX: usize = 13;
const N_BLOCKS: usize = 15;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

use crate::csum::{crc16, crc32c_raw};
use crate::disk::{Dev, Storage, le16, le32, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::sb::*;

/// Everything about the filesystem this module needs, decoded from the primary superblock.
#[derive(Debug, Clone)]
struct Layout {
    bs: u64,
    fdb: u64,
    bpg: u64,
    ipg: u64,
    inode_size: usize,
    ds: usize,
    blocks: u64,
    groups: u64,
    gdt_blocks: u64,
    reserved_gdt: u64,
    itable_blocks: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    csum_seed: u32,
    meta_bg: bool,
    first_meta_bg: u64,
    uuid_bytes: [u8; 16],
    backup_bgs: [u32; 2],
}

impl Layout {
    fn metadata_csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }
    fn group_csum(&self) -> bool {
        self.ro_compat & (RO_COMPAT_METADATA_CSUM | RO_COMPAT_GDT_CSUM) != 0
    }
    fn is_64bit(&self) -> bool {
        self.incompat & INCOMPAT_64BIT != 0
    }
    fn descs_per_block(&self) -> u64 {
        self.bs / self.ds as u64
    }
    fn group_first_block(&self, g: u64) -> u64 {
        self.fdb + g * self.bpg
    }
    /// Does group `g` hold a superblock (and GDT) backup?
    fn has_super(&self, g: u64) -> bool {
        crate::sb::has_super(g, self.compat, self.ro_compat, self.backup_bgs)
    }
    /// Is descriptor block `i` stored after the superblock copies (rather than in its meta group)?
    fn old_style_desc_block(&self, i: u64) -> bool {
        !self.meta_bg || i < self.first_meta_bg
    }
    /// Does group `g` carry the old-style descriptor blocks when it has a superblock copy?
    fn old_style_group(&self, g: u64) -> bool {
        !self.meta_bg || g / self.descs_per_block() < self.first_meta_bg
    }
    /// With meta_bg: is `g` one of the three groups holding its meta group's descriptor block?
    fn meta_desc_group(&self, g: u64) -> bool {
        let dpb = self.descs_per_block();
        !self.old_style_group(g) && (g % dpb <= 1 || g % dpb == dpb - 1)
    }
    /// Blocks taken at the start of group `g` by the superblock, descriptor and reserved GDT
    /// blocks, for a filesystem with `gdt_blocks` descriptor blocks and `reserved` reserved ones.
    fn base_meta_blocks(&self, g: u64, gdt_blocks: u64, reserved: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        if self.old_style_group(g) {
            if sup == 0 {
                return 0;
            }
            let old_style = if self.meta_bg {
                self.first_meta_bg
            } else {
                gdt_blocks
            };
            1 + old_style + reserved
        } else {
            sup + u64::from(self.meta_desc_group(g))
        }
    }
    /// Block holding the primary copy of descriptor block `i`.
    fn primary_gdt_block(&self, i: u64) -> u64 {
        if self.old_style_desc_block(i) {
            self.fdb + 1 + i
        } else {
            let g = i * self.descs_per_block();
            self.group_first_block(g) + u64::from(self.has_super(g))
        }
    }
    /// Every block holding a copy of descriptor block `i` in a filesystem of `groups` groups,
    /// the primary first.
    fn gdt_block_locations(&self, i: u64, groups: u64) -> Vec<u64> {
        if self.old_style_desc_block(i) {
            (0..groups)
                .filter(|&g| self.has_super(g) && self.old_style_group(g))
                .map(|g| self.group_first_block(g) + 1 + i)
                .collect()
        } else {
            let dpb = self.descs_per_block();
            let mut v: Vec<u64> = Vec::with_capacity(3);
            for g in [i * dpb, i * dpb + 1, i * dpb + dpb - 1] {
                let loc = self.group_first_block(g) + u64::from(self.has_super(g));
                if g < groups && !v.contains(&loc) {
                    v.push(loc);
                }
            }
            v
        }
    }
}

fn parse_superblock(sb: &[u8], offset: u64) -> Result<Layout> {
    if le16(sb, SB_MAGIC) != 0xEF53 {
        return Err(Error::NotExt4 { offset });
    }
    if le32(sb, SB_REV_LEVEL) < 1 {
        return Err(Error::Unsupported {
            feature: "a revision 0 (original ext2) superblock".into(),
        });
    }
    let compat = le32(sb, SB_FEATURE_COMPAT);
    let incompat = le32(sb, SB_FEATURE_INCOMPAT);
    let ro_compat = le32(sb, SB_FEATURE_RO_COMPAT);

    // State checks come first: a dirty journal is the most common reason to refuse.
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err(Error::NeedsRecovery);
    }
    if ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
        return Err(Error::OrphansPending);
    }
    if le32(sb, SB_LAST_ORPHAN) != 0 {
        return Err(Error::OrphansPending);
    }
    let state = le16(sb, SB_STATE);
    if state & STATE_ERROR != 0 {
        return Err(corrupt("the superblock records filesystem errors"));
    }
    if state & STATE_VALID == 0 {
        return Err(Error::NeedsRecovery);
    }

    let named = [
        (incompat, INCOMPAT_COMPRESSION, "compression"),
        (incompat, INCOMPAT_JOURNAL_DEV, "journal_dev"),
        (incompat, INCOMPAT_MMP, "mmp"),
        (ro_compat, RO_COMPAT_BIGALLOC, "bigalloc"),
        (ro_compat, RO_COMPAT_HAS_SNAPSHOT, "snapshot"),
        (ro_compat, RO_COMPAT_REPLICA, "replica"),
        (ro_compat, RO_COMPAT_READONLY, "read-only"),
        (ro_compat, RO_COMPAT_SHARED_BLOCKS, "shared_blocks"),
        (compat, COMPAT_EXCLUDE_BITMAP, "exclude_bitmap"),
    ];
    for (bits, bit, name) in named {
        if bits & bit != 0 {
            return Err(Error::Unsupported {
                feature: format!("`{name}`"),
            });
        }
    }
    let unknown = [
        ("compat", compat & !COMPAT_OK),
        ("incompat", incompat & !INCOMPAT_OK),
        ("ro_compat", ro_compat & !RO_COMPAT_OK),
    ];
    for (kind, bits) in unknown {
        if bits != 0 {
            return Err(Error::Unsupported {
                feature: format!("unknown {kind} feature bits {bits:#x} (a newer mkfs made it)"),
            });
        }
    }

    let log_bs = le32(sb, SB_LOG_BLOCK_SIZE);
    if log_bs > 6 {
        return Err(corrupt(format!(
            "block size 2^(10+{log_bs}) is out of range"
        )));
    }
    let bs = 1024u64 << log_bs;
    if le32(sb, SB_LOG_CLUSTER_SIZE) != log_bs
        || le32(sb, SB_CLUSTERS_PER_GROUP) != le32(sb, SB_BLOCKS_PER_GROUP)
    {
        return Err(Error::Unsupported {
            feature: "a cluster size that differs from the block size (bigalloc)".into(),
        });
    }
    let bpg = u64::from(le32(sb, SB_BLOCKS_PER_GROUP));
    let ipg = u64::from(le32(sb, SB_INODES_PER_GROUP));
    if bpg == 0 || bpg > bs * 8 || bpg % 8 != 0 {
        return Err(corrupt(format!("blocks per group {bpg} is invalid")));
    }
    if ipg == 0 || ipg > bs * 8 || ipg % 8 != 0 {
        return Err(corrupt(format!("inodes per group {ipg} is invalid")));
    }
    let inode_size = usize::from(le16(sb, SB_INODE_SIZE));
    if inode_size < 128 || !inode_size.is_power_of_two() || inode_size as u64 > bs {
        return Err(corrupt(format!("inode size {inode_size} is invalid")));
    }
    let fdb = u64::from(le32(sb, SB_FIRST_DATA_BLOCK));
    if fdb != u64::from(bs == 1024) {
        return Err(corrupt(format!(
            "first data block {fdb} does not match block size {bs}"
        )));
    }
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let ds = if is64 {
        usize::from(le16(sb, SB_DESC_SIZE))
    } else {
        32
    };
    if ds < 32 || !ds.is_power_of_two() || ds as u64 > bs || (is64 && ds < 64) {
        return Err(corrupt(format!("group descriptor size {ds} is invalid")));
    }
    let mut blocks = u64::from(le32(sb, SB_BLOCKS_COUNT_LO));
    if is64 {
        blocks |= u64::from(le32(sb, SB_BLOCKS_COUNT_HI)) << 32;
    }
    if blocks <= fdb {
        return Err(corrupt(format!("block count {blocks} is invalid")));
    }
    let groups = (blocks - fdb).div_ceil(bpg);
    let gdt_blocks = groups.div_ceil(bs / ds as u64);
    let reserved_gdt = u64::from(le16(sb, SB_RESERVED_GDT_BLOCKS));
    if u64::from(le32(sb, SB_INODES_COUNT)) != groups * ipg {
        return Err(corrupt(format!(
            "inode count {} is not {groups} groups x {ipg} inodes",
            le32(sb, SB_INODES_COUNT)
        )));
    }
    let metadata_csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
    if metadata_csum && sb[SB_CHECKSUM_TYPE] != 1 {
        return Err(Error::Unsupported {
            feature: format!(
                "metadata checksum type {} (only crc32c is known)",
                sb[SB_CHECKSUM_TYPE]
            ),
        });
    }
    let meta_bg = incompat & INCOMPAT_META_BG != 0;
    let first_meta_bg = u64::from(le32(sb, SB_FIRST_META_BG));
    if meta_bg {
        if first_meta_bg > gdt_blocks {
            return Err(corrupt(format!(
                "first meta block group {first_meta_bg} is beyond the {gdt_blocks} descriptor blocks"
            )));
        }
        if compat & (COMPAT_RESIZE_INODE | COMPAT_SPARSE_SUPER2) != 0 {
            return Err(Error::Unsupported {
                feature: "`meta_bg` together with `resize_inode` or `sparse_super2`".into(),
            });
        }
    }
    let csum_seed = crate::sb::csum_seed(sb);
    Ok(Layout {
        bs,
        fdb,
        bpg,
        ipg,
        inode_size,
        ds,
        blocks,
        groups,
        gdt_blocks,
        reserved_gdt,
        itable_blocks: (ipg * inode_size as u64).div_ceil(bs),
        compat,
        incompat,
        ro_compat,
        csum_seed,
        meta_bg,
        first_meta_bg,
        uuid_bytes: sb[SB_UUID..SB_UUID + 16].try_into().expect("16 bytes"),
        backup_bgs: [le32(sb, SB_BACKUP_BGS), le32(sb, SB_BACKUP_BGS + 4)],
    })
}

fn sb_checksum(sb: &[u8]) -> u32 {
    crc32c_raw(!0, &sb[..SB_CHECKSUM])
}

/// Accessors for one group descriptor inside the GDT buffer.
struct Gdt {
    buf: Vec<u8>,
    ds: usize,
    is64: bool,
}

impl Gdt {
    fn desc(&self, g: u64) -> &[u8] {
        let o = g as usize * self.ds;
        &self.buf[o..o + self.ds]
    }
    fn desc_mut(&mut self, g: u64) -> &mut [u8] {
        let o = g as usize * self.ds;
        &mut self.buf[o..o + self.ds]
    }
    fn get(&self, g: u64, lo: usize, hi: usize, wide: bool) -> u64 {
        let d = self.desc(g);
        if wide {
            let mut v = u64::from(le32(d, lo));
            if self.is64 {
                v |= u64::from(le32(d, hi)) << 32;
            }
            v
        } else {
            let mut v = u64::from(le16(d, lo));
            if self.is64 {
                v |= u64::from(le16(d, hi)) << 16;
            }
            v
        }
    }
    fn set(&mut self, g: u64, lo: usize, hi: usize, wide: bool, v: u64) {
        let is64 = self.is64;
        let d = self.desc_mut(g);
        if wide {
            put32(d, lo, v as u32);
            if is64 {
                put32(d, hi, (v >> 32) as u32);
            }
        } else {
            put16(d, lo, v as u16);
            if is64 {
                put16(d, hi, (v >> 16) as u16);
            }
        }
    }
    fn block_bitmap(&self, g: u64) -> u64 {
        self.get(g, BG_BLOCK_BITMAP_LO, BG_BLOCK_BITMAP_HI, true)
    }
    fn inode_bitmap(&self, g: u64) -> u64 {
        self.get(g, BG_INODE_BITMAP_LO, BG_INODE_BITMAP_HI, true)
    }
    fn inode_table(&self, g: u64) -> u64 {
        self.get(g, BG_INODE_TABLE_LO, BG_INODE_TABLE_HI, true)
    }
    fn free_blocks(&self, g: u64) -> u64 {
        self.get(g, BG_FREE_BLOCKS_LO, BG_FREE_BLOCKS_HI, false)
    }
    fn free_inodes(&self, g: u64) -> u64 {
        self.get(g, BG_FREE_INODES_LO, BG_FREE_INODES_HI, false)
    }
    fn flags(&self, g: u64) -> u16 {
        le16(self.desc(g), BG_FLAGS)
    }
    fn set_flags(&mut self, g: u64, f: u16) {
        put16(self.desc_mut(g), BG_FLAGS, f);
    }
}

fn desc_checksum(l: &Layout, g: u64, desc: &[u8]) -> u16 {
    let group = (g as u32).to_le_bytes();
    if l.metadata_csum() {
        let mut d = desc.to_vec();
        put16(&mut d, BG_CHECKSUM, 0);
        let crc = crc32c_raw(l.csum_seed, &group);
        (crc32c_raw(crc, &d) & 0xFFFF) as u16
    } else {
        // gdt_csum: crc16 over uuid, group number, descriptor without the checksum field.
        let mut crc = crc16(!0, &l.uuid_bytes);
        crc = crc16(crc, &group);
        crc = crc16(crc, &desc[..BG_CHECKSUM]);
        if desc.len() > BG_CHECKSUM + 2 {
            crc = crc16(crc, &desc[BG_CHECKSUM + 2..]);
        }
        crc
    }
}

fn set_desc_checksum(l: &Layout, gdt: &mut Gdt, g: u64) {
    if l.group_csum() {
        let c = desc_checksum(l, g, gdt.desc(g));
        put16(gdt.desc_mut(g), BG_CHECKSUM, c);
    }
}

/// Block bitmap checksum as stored: the high half only exists in 64-byte descriptors.
fn block_bitmap_csum(l: &Layout, bitmap: &[u8]) -> u32 {
    let c = crc32c_raw(l.csum_seed, &bitmap[..(l.bpg / 8) as usize]);
    if l.ds >= BG_BLOCK_BITMAP_CSUM_HI + 2 {
        c
    } else {
        c & 0xFFFF
    }
}

fn stored_block_bitmap_csum(l: &Layout, gdt: &Gdt, g: u64) -> u32 {
    let d = gdt.desc(g);
    let mut v = u32::from(le16(d, BG_BLOCK_BITMAP_CSUM_LO));
    if l.ds >= BG_BLOCK_BITMAP_CSUM_HI + 2 {
        v |= u32::from(le16(d, BG_BLOCK_BITMAP_CSUM_HI)) << 16;
    }
    v
}

/// Stores the checksum of a bitmap of group `g` in its descriptor: the block bitmap
/// (bpg / 8 bytes, at [`BLOCK_BITMAP_CSUM`]) or the inode bitmap (ipg / 8 bytes, at
/// [`INODE_BITMAP_CSUM`]).
fn set_bitmap_csum(
    l: &Layout,
    gdt: &mut Gdt,
    g: u64,
    bitmap: &[u8],
    nbytes: u64,
    at: (usize, usize),
) {
    if l.metadata_csum() {
        crate::sb::store_bitmap_csum(l.csum_seed, gdt.desc_mut(g), bitmap, nbytes as usize, at);
    }
}

fn set_bit(b: &mut [u8], i: u64) {
    b[(i / 8) as usize] |= 1 << (i % 8);
}
fn clear_bit(b: &mut [u8], i: u64) {
    b[(i / 8) as usize] &= !(1 << (i % 8));
}
fn test_bit(b: &[u8], i: u64) -> bool {
    b[(i / 8) as usize] & (1 << (i % 8)) != 0
}

fn inode_checksum(l: &Layout, ino: u32, inode: &[u8]) -> u32 {
    let mut buf = inode.to_vec();
    let has_hi = l.inode_size > 128 && usize::from(le16(&buf, I_EXTRA_ISIZE)) >= 4;
    put16(&mut buf, I_CHECKSUM_LO, 0);
    if has_hi {
        put16(&mut buf, I_CHECKSUM_HI, 0);
    }
    let mut crc = crc32c_raw(l.csum_seed, &ino.to_le_bytes());
    crc = crc32c_raw(crc, &buf[I_GENERATION..I_GENERATION + 4]);
    crc = crc32c_raw(crc, &buf);
    if has_hi { crc } else { crc & 0xFFFF }
}

fn stored_inode_checksum(l: &Layout, inode: &[u8]) -> u32 {
    let has_hi = l.inode_size > 128 && usize::from(le16(inode, I_EXTRA_ISIZE)) >= 4;
    let mut v = u32::from(le16(inode, I_CHECKSUM_LO));
    if has_hi {
        v |= u32::from(le16(inode, I_CHECKSUM_HI)) << 16;
    }
    v
}

fn set_inode_checksum(l: &Layout, ino: u32, inode: &mut [u8]) {
    if !l.metadata_csum() {
        return;
    }
    let c = inode_checksum(l, ino, inode);
    put16(inode, I_CHECKSUM_LO, c as u16);
    if l.inode_size > 128 && usize::from(le16(inode, I_EXTRA_ISIZE)) >= 4 {
        put16(inode, I_CHECKSUM_HI, (c >> 16) as u16);
    }
}

fn inode_pos(l: &Layout, gdt: &Gdt, ino: u32) -> Result<u64> {
    let idx = u64::from(ino - 1);
    let g = idx / l.ipg;
    if g >= l.groups {
        return Err(corrupt(format!("inode {ino} lies beyond the last group")));
    }
    Ok(gdt.inode_table(g) * l.bs + (idx % l.ipg) * l.inode_size as u64)
}

/// Physical block holding logical block 0 of an inode (extent tree or block map).
fn first_physical_block(dev: &Dev, l: &Layout, inode: &[u8], what: &str) -> Result<u64> {
    let flags = le32(inode, I_FLAGS);
    if flags & INODE_FL_EXTENTS == 0 {
        return Ok(u64::from(le32(inode, I_BLOCK)));
    }
    let mut node = inode[I_BLOCK..I_BLOCK + 60].to_vec();
    for _ in 0..8 {
        if le16(&node, 0) != 0xF30A || le16(&node, 2) == 0 {
            return Err(corrupt(format!("bad extent header in {what}")));
        }
        let depth = le16(&node, 6);
        let first_entry = &node[12..24];
        if le32(first_entry, 0) != 0 {
            return Err(corrupt(format!("{what} has no block at logical offset 0")));
        }
        if depth == 0 {
            return Ok(u64::from(le32(first_entry, 8)) | (u64::from(le16(first_entry, 6)) << 32));
        }
        let child = u64::from(le32(first_entry, 4)) | (u64::from(le16(first_entry, 8)) << 32);
        if child >= l.blocks {
            return Err(corrupt(format!(
                "extent index of {what} points outside the filesystem"
            )));
        }
        node = dev.read_vec(child * l.bs, l.bs as usize, "reading an extent tree block")?;
    }
    Err(corrupt(format!("extent tree of {what} is too deep")))
}

fn check_journal(dev: &Dev, l: &Layout, gdt: &Gdt, sb: &[u8]) -> Result<()> {
    if l.compat & COMPAT_HAS_JOURNAL == 0 {
        return Ok(());
    }
    let ino = le32(sb, SB_JOURNAL_INUM);
    if ino == 0 {
        return Err(Error::Unsupported {
            feature: "an external journal device".into(),
        });
    }
    if u64::from(ino) > l.groups * l.ipg {
        return Err(corrupt(format!("journal inode number {ino} is invalid")));
    }
    let pos = inode_pos(l, gdt, ino)?;
    let inode = dev.read_vec(pos, l.inode_size, "reading the journal inode")?;
    let blk = first_physical_block(dev, l, &inode, "the journal inode")?;
    if blk == 0 || blk >= l.blocks {
        return Err(corrupt("journal superblock lies outside the filesystem"));
    }
    let jsb = dev.read_vec(blk * l.bs, 1024, "reading the journal superblock")?;
    if be32(&jsb, 0) != 0xC03B_3998 {
        return Err(corrupt("journal superblock has a bad magic"));
    }
    if be32(&jsb, 0x1C) != 0 {
        return Err(Error::NeedsRecovery);
    }
    Ok(())
}

/// Applies resize2fs's sizing rules to a requested block count: a trailing partial group too
/// small to hold its own metadata (plus 50 blocks of slack) is dropped, and the inode count must
/// fit in 32 bits.
fn plan_blocks(l: &Layout, requested: u64) -> Result<u64> {
    let mut blocks = requested;
    loop {
        if blocks <= l.fdb {
            return Err(Error::CannotGrow {
                why: "requested size is too small".into(),
            });
        }
        let groups = (blocks - l.fdb).div_ceil(l.bpg);
        let desc_blocks = groups.div_ceil(l.descs_per_block());
        let mut overhead = 2 + l.itable_blocks;
        let has_bg = if l.compat & COMPAT_SPARSE_SUPER2 != 0 {
            // The backup that will move to the new last group.
            if groups == 2 {
                l.backup_bgs[0] != 0
            } else {
                l.backup_bgs[1] != 0
            }
        } else {
            l.has_super(groups - 1)
        };
        if has_bg {
            overhead += 1 + desc_blocks + l.reserved_gdt;
        }
        let rem = (blocks - l.fdb) % l.bpg;
        if groups == 1 && rem != 0 && rem < overhead {
            return Err(Error::CannotGrow {
                why: "the filesystem would be too small to hold its own metadata".into(),
            });
        }
        if groups > 1 && rem != 0 && rem < overhead + 50 {
            blocks -= rem;
            continue;
        }
        if groups * l.ipg > u64::from(u32::MAX) {
            let fewer = l.bpg * (groups - 1) + l.fdb;
            if (groups - 1) * l.ipg > u64::from(u32::MAX) {
                return Err(Error::CannotGrow {
                    why: format!("{groups} groups of {} inodes exceed 2^32 inodes", l.ipg),
                });
            }
            blocks = fewer;
            continue;
        }
        return Ok(blocks);
    }
}

/// One pending write.
struct Write {
    pos: u64,
    data: Vec<u8>,
    what: &'static str,
}

/// Grows the ext4 filesystem stored at byte `offset` of `storage` (a [`std::fs::File`] opened
/// read + write, or any other [`Storage`]) so that it fills `new_len` bytes.
/// `now` (Unix seconds) becomes the superblock's write time.
///
/// The size is rounded down to whole blocks, and a trailing partial group too small for its own
/// metadata is dropped the way resize2fs drops it. Growing to the current size is a no-op.
/// Every precondition (clean state and journal, no orphans, known features, valid checksums,
/// enough reserved descriptor blocks) is checked before anything is written; on refusal the
/// storage is unchanged.
pub fn grow_fs(storage: impl Storage, offset: u64, new_len: u64, now: i64) -> Result<FsGrowth> {
    let dev = Dev {
        file: Box::new(storage),
        offset,
        len: new_len,
    };
    let mut sb = dev.read_vec(1024, 1024, "reading the ext4 superblock")?;
    let l = parse_superblock(&sb, offset)?;
    if l.metadata_csum() && le32(&sb, SB_CHECKSUM) != sb_checksum(&sb) {
        return Err(corrupt("superblock checksum mismatch"));
    }
    // Checked before the descriptors are read: it also bounds how much a corrupt block
    // count could make us read.
    let requested = new_len / l.bs;
    if requested < l.blocks {
        return Err(Error::Shrink {
            current: l.blocks,
            requested,
        });
    }
    let mut old_gdt = Vec::with_capacity((l.gdt_blocks * l.bs) as usize);
    for i in 0..l.gdt_blocks {
        let blk = l.primary_gdt_block(i);
        if blk >= l.blocks {
            return Err(corrupt(format!(
                "descriptor block {i} lies outside the filesystem"
            )));
        }
        old_gdt.extend(dev.read_vec(blk * l.bs, l.bs as usize, "reading the group descriptors")?);
    }
    let mut gdt = Gdt {
        buf: old_gdt,
        ds: l.ds,
        is64: l.is_64bit(),
    };
    for g in 0..l.groups {
        if l.group_csum() && le16(gdt.desc(g), BG_CHECKSUM) != desc_checksum(&l, g, gdt.desc(g)) {
            return Err(corrupt(format!("group descriptor {g} checksum mismatch")));
        }
        let it = gdt.inode_table(g);
        for (name, b, n) in [
            ("block bitmap", gdt.block_bitmap(g), 1),
            ("inode bitmap", gdt.inode_bitmap(g), 1),
            ("inode table", it, l.itable_blocks),
        ] {
            if b < l.fdb || b.saturating_add(n) > l.blocks {
                return Err(corrupt(format!(
                    "the {name} of group {g} lies outside the filesystem"
                )));
            }
        }
    }
    check_journal(&dev, &l, &gdt, &sb)?;

    let free_before: u64 = (0..l.groups).map(|g| gdt.free_blocks(g)).sum();
    let max_blocks = if l.is_64bit() {
        1u64 << 48
    } else {
        u64::from(u32::MAX)
    };
    let requested = if requested > max_blocks {
        if !l.is_64bit() {
            return Err(Error::CannotGrow {
                why: format!(
                    "{requested} blocks do not fit in 32 bits and the filesystem lacks the 64bit feature; request at most {} bytes",
                    max_blocks * l.bs
                ),
            });
        }
        max_blocks
    } else {
        requested
    };
    let new_blocks = plan_blocks(&l, requested)?;
    let unchanged = FsGrowth {
        old_blocks: l.blocks,
        new_blocks: l.blocks,
        old_groups: l.groups as u32,
        new_groups: l.groups as u32,
        free_blocks_before: free_before,
        free_blocks_after: free_before,
    };
    if new_blocks <= l.blocks {
        return Ok(unchanged);
    }
    let new_groups = (new_blocks - l.fdb).div_ceil(l.bpg);
    let new_gdt = new_groups.div_ceil(l.descs_per_block());
    let extra_gdt = new_gdt - l.gdt_blocks;
    let has_resize_inode = l.compat & COMPAT_RESIZE_INODE != 0;
    if extra_gdt > 0 && !l.meta_bg && (!has_resize_inode || l.reserved_gdt < extra_gdt) {
        let reachable_groups = if has_resize_inode {
            (l.gdt_blocks + l.reserved_gdt) * l.descs_per_block()
        } else {
            l.gdt_blocks * l.descs_per_block()
        };
        let reachable = (l.fdb + reachable_groups * l.bpg) * l.bs;
        return Err(Error::CannotGrow {
            why: format!(
                "{new_groups} groups need {new_gdt} group descriptor blocks, but there are {} plus {} reserved{}; the largest size reachable without moving data is {reachable} bytes (grow to at most that, or use resize2fs)",
                l.gdt_blocks,
                if has_resize_inode { l.reserved_gdt } else { 0 },
                if has_resize_inode {
                    ""
                } else {
                    " (no resize_inode feature)"
                }
            ),
        });
    }
    let new_reserved = if has_resize_inode {
        l.reserved_gdt - extra_gdt
    } else {
        l.reserved_gdt
    };
    let old_groups = l.groups;
    let mut writes: Vec<Write> = Vec::new();
    let mut zero_ranges: Vec<(u64, u64)> = Vec::new();

    // The resize inode: validated now, rebuilt below.
    let resize = if has_resize_inode {
        let pos = inode_pos(&l, &gdt, RESIZE_INO)?;
        let inode = dev.read_vec(pos, l.inode_size, "reading the resize inode")?;
        if l.metadata_csum()
            && stored_inode_checksum(&l, &inode) != inode_checksum(&l, RESIZE_INO, &inode)
        {
            return Err(corrupt("the resize inode (inode 7) checksum mismatch"));
        }
        let dind = u64::from(le32(&inode, I_BLOCK + 4 * DIND_BLOCK_INDEX));
        let others_zero = (0..N_BLOCKS)
            .filter(|&i| i != DIND_BLOCK_INDEX)
            .all(|i| le32(&inode, I_BLOCK + 4 * i) == 0);
        if le16(&inode, I_MODE) & 0xF000 != 0x8000
            || !others_zero
            || dind < l.fdb
            || dind >= l.blocks
        {
            return Err(corrupt("the resize inode (inode 7) is not valid"));
        }
        if le32(&inode, I_FLAGS) & INODE_FL_HUGE_FILE != 0 {
            return Err(Error::Unsupported {
                feature: "a resize inode with the huge_file flag".into(),
            });
        }
        Some((pos, inode, dind))
    } else {
        None
    };

    // With sparse_super2 the second backup follows the last group, as resize2fs moves it.
    let mut nl = l.clone();
    if l.compat & COMPAT_SPARSE_SUPER2 != 0 {
        if old_groups == 1 {
            nl.backup_bgs[0] = 1;
        }
        if (old_groups < 3 && new_groups > 2) || l.backup_bgs[1] != 0 {
            nl.backup_bgs[1] = (new_groups - 1) as u32;
        }
    }
    // Old groups that lost their backup give its blocks back.
    let dropped_backup: Option<u64> = (1..old_groups).find(|&g| l.has_super(g) && !nl.has_super(g));

    // 1. Extend the old last group (and free a dropped backup).
    let blocks_in_group = |blocks: u64, g: u64, groups: u64| -> u64 {
        if g + 1 < groups {
            l.bpg
        } else {
            blocks - l.group_first_block(g)
        }
    };
    let mut changed_groups = vec![old_groups - 1];
    if let Some(g) = dropped_backup
        && g != old_groups - 1
    {
        changed_groups.push(g);
    }
    for g in changed_groups {
        let old_n = blocks_in_group(l.blocks, g, old_groups);
        let new_n = blocks_in_group(new_blocks, g, new_groups);
        let flags = gdt.flags(g);
        let bb = gdt.block_bitmap(g);
        let mut bitmap = if l.group_csum() && flags & BG_BLOCK_UNINIT != 0 {
            // Materialise what an uninitialised bitmap stands for.
            let mut b = vec![0u8; l.bs as usize];
            let start = l.group_first_block(g);
            let base = l.base_meta_blocks(g, l.gdt_blocks, l.reserved_gdt);
            for i in 0..base {
                set_bit(&mut b, i);
            }
            let own = [gdt.block_bitmap(g), gdt.inode_bitmap(g)]
                .into_iter()
                .chain(gdt.inode_table(g)..gdt.inode_table(g) + l.itable_blocks);
            for blk in own {
                if blk >= start && blk < start + old_n {
                    set_bit(&mut b, blk - start);
                }
            }
            for i in old_n..l.bs * 8 {
                set_bit(&mut b, i);
            }
            b
        } else {
            let b = dev.read_vec(bb * l.bs, l.bs as usize, "reading a block bitmap")?;
            if l.metadata_csum()
                && stored_block_bitmap_csum(&l, &gdt, g) != block_bitmap_csum(&l, &b)
            {
                return Err(corrupt(format!(
                    "block bitmap of group {g} checksum mismatch"
                )));
            }
            b
        };
        let free_in_bitmap = (0..old_n).filter(|&i| !test_bit(&bitmap, i)).count() as u64;
        if free_in_bitmap != gdt.free_blocks(g) {
            return Err(corrupt(format!(
                "group {g} counts {} free blocks but its bitmap has {free_in_bitmap}",
                gdt.free_blocks(g)
            )));
        }
        for i in old_n..new_n {
            clear_bit(&mut bitmap, i);
        }
        for i in new_n..l.bs * 8 {
            set_bit(&mut bitmap, i);
        }
        if dropped_backup == Some(g) {
            for i in 0..l.base_meta_blocks(g, l.gdt_blocks, l.reserved_gdt) {
                if !test_bit(&bitmap, i) {
                    return Err(corrupt(format!(
                        "backup superblock area of group {g} is marked free"
                    )));
                }
                clear_bit(&mut bitmap, i);
            }
        }
        let free = (0..new_n).filter(|&i| !test_bit(&bitmap, i)).count() as u64;
        gdt.set(g, BG_FREE_BLOCKS_LO, BG_FREE_BLOCKS_HI, false, free);
        gdt.set_flags(g, flags & !BG_BLOCK_UNINIT);
        set_bitmap_csum(&l, &mut gdt, g, &bitmap, l.bpg / 8, BLOCK_BITMAP_CSUM);
        set_desc_checksum(&l, &mut gdt, g);
        writes.push(Write {
            pos: bb * l.bs,
            data: bitmap,
            what: "writing a block bitmap",
        });
    }

    // 2. New groups, each with its bitmaps and inode table inside itself.
    gdt.buf.resize((new_gdt * l.bs) as usize, 0);
    for g in old_groups..new_groups {
        let start = l.group_first_block(g);
        let n = blocks_in_group(new_blocks, g, new_groups);
        let base = nl.base_meta_blocks(g, new_gdt, new_reserved);
        let bb = start + base;
        let ib = bb + 1;
        let it = bb + 2;
        let used = base + 2 + l.itable_blocks;
        if used > n {
            return Err(Error::CannotGrow {
                why: format!(
                    "group {g} would have {n} blocks, fewer than its {used} metadata blocks"
                ),
            });
        }
        let mut bbm = vec![0u8; l.bs as usize];
        for i in (0..used).chain(n..l.bs * 8) {
            set_bit(&mut bbm, i);
        }
        let mut ibm = vec![0xFFu8; l.bs as usize];
        ibm[..(l.ipg / 8) as usize].fill(0);
        gdt.desc_mut(g).fill(0);
        gdt.set(g, BG_BLOCK_BITMAP_LO, BG_BLOCK_BITMAP_HI, true, bb);
        gdt.set(g, BG_INODE_BITMAP_LO, BG_INODE_BITMAP_HI, true, ib);
        gdt.set(g, BG_INODE_TABLE_LO, BG_INODE_TABLE_HI, true, it);
        gdt.set(g, BG_FREE_BLOCKS_LO, BG_FREE_BLOCKS_HI, false, n - used);
        gdt.set(g, BG_FREE_INODES_LO, BG_FREE_INODES_HI, false, l.ipg);
        gdt.set(g, BG_USED_DIRS_LO, BG_USED_DIRS_HI, false, 0);
        if l.group_csum() {
            // Inode table left for lazy initialisation: ITABLE_ZEROED stays clear.
            let mut flags = BG_INODE_UNINIT;
            if g + 1 < new_groups {
                flags |= BG_BLOCK_UNINIT;
            }
            gdt.set_flags(g, flags);
            gdt.set(g, BG_ITABLE_UNUSED_LO, BG_ITABLE_UNUSED_HI, false, l.ipg);
        } else {
            zero_ranges.push((it * l.bs, l.itable_blocks * l.bs));
        }
        set_bitmap_csum(&l, &mut gdt, g, &bbm, l.bpg / 8, BLOCK_BITMAP_CSUM);
        set_bitmap_csum(&l, &mut gdt, g, &ibm, l.ipg / 8, INODE_BITMAP_CSUM);
        writes.push(Write {
            pos: bb * l.bs,
            data: bbm,
            what: "writing a block bitmap",
        });
        writes.push(Write {
            pos: ib * l.bs,
            data: ibm,
            what: "writing an inode bitmap",
        });
    }
    for g in old_groups..new_groups {
        set_desc_checksum(&l, &mut gdt, g);
    }

    // 3. The resize inode: re-describe the remaining reserved GDT blocks and all their backups.
    if let Some((pos, mut inode, dind)) = resize {
        let apb = l.bs / 4;
        let backups: Vec<u64> = (1..new_groups).filter(|&g| nl.has_super(g)).collect();
        if backups.len() as u64 > apb {
            return Err(Error::CannotGrow {
                why: "too many backup groups for the resize inode".into(),
            });
        }
        let mut dind_buf = vec![0u8; l.bs as usize];
        for j in 0..new_reserved {
            let pblk = l.fdb + 1 + new_gdt + j;
            let slot = ((new_gdt + j) % apb) as usize;
            put32(&mut dind_buf, slot * 4, pblk as u32);
            let mut ind = vec![0u8; l.bs as usize];
            for (k, &grp) in backups.iter().enumerate() {
                let expect = pblk + grp * l.bpg;
                if expect > u64::from(u32::MAX) {
                    return Err(Error::CannotGrow { why: "reserved GDT backups beyond block 2^32 cannot be described by the resize inode".into() });
                }
                put32(&mut ind, k * 4, expect as u32);
            }
            writes.push(Write {
                pos: pblk * l.bs,
                data: ind,
                what: "writing a resize inode block",
            });
        }
        writes.push(Write {
            pos: dind * l.bs,
            data: dind_buf,
            what: "writing the resize inode's double-indirect block",
        });
        let nblocks = 1 + new_reserved * (1 + backups.len() as u64);
        let sectors = nblocks * (l.bs / 512);
        put32(&mut inode, I_BLOCKS_LO, sectors as u32);
        put16(&mut inode, I_BLOCKS_HI, (sectors >> 32) as u16);
        set_inode_checksum(&l, RESIZE_INO, &mut inode);
        writes.push(Write {
            pos,
            data: inode,
            what: "writing the resize inode",
        });
    }

    // 4. Superblock counts.
    let free_after: u64 = (0..new_groups).map(|g| gdt.free_blocks(g)).sum();
    let free_inodes: u64 = (0..new_groups).map(|g| gdt.free_inodes(g)).sum();
    let mut old_r = u64::from(le32(&sb, SB_R_BLOCKS_COUNT_LO));
    if l.is_64bit() {
        old_r |= u64::from(le32(&sb, SB_R_BLOCKS_COUNT_HI)) << 32;
    }
    let percent = (old_r as f64 * 100.0) / l.blocks as f64;
    let new_r = (percent * new_blocks as f64 / 100.0) as u64;
    put32(&mut sb, SB_BLOCKS_COUNT_LO, new_blocks as u32);
    put32(&mut sb, SB_R_BLOCKS_COUNT_LO, new_r as u32);
    put32(&mut sb, SB_FREE_BLOCKS_LO, free_after as u32);
    if l.is_64bit() {
        put32(&mut sb, SB_BLOCKS_COUNT_HI, (new_blocks >> 32) as u32);
        put32(&mut sb, SB_R_BLOCKS_COUNT_HI, (new_r >> 32) as u32);
        put32(&mut sb, SB_FREE_BLOCKS_HI, (free_after >> 32) as u32);
    }
    put32(&mut sb, SB_INODES_COUNT, (new_groups * l.ipg) as u32);
    put32(&mut sb, SB_FREE_INODES, free_inodes as u32);
    put16(&mut sb, SB_RESERVED_GDT_BLOCKS, new_reserved as u16);
    put32(&mut sb, SB_BACKUP_BGS, nl.backup_bgs[0]);
    put32(&mut sb, SB_BACKUP_BGS + 4, nl.backup_bgs[1]);
    // The kernel recomputes the overhead when this is zero, as it is after resize2fs.
    put32(&mut sb, SB_OVERHEAD_CLUSTERS, 0);
    let now = now.max(0) as u64;
    put32(&mut sb, SB_WTIME, now as u32);
    sb[SB_WTIME_HI] = (now >> 32) as u8;

    // 5. Backups of the superblock and the descriptor blocks.
    for g in 1..new_groups {
        if !nl.has_super(g) {
            continue;
        }
        let start = l.group_first_block(g);
        let mut copy = sb.clone();
        put16(&mut copy, SB_BLOCK_GROUP_NR, g as u16);
        let state = le16(&copy, SB_STATE);
        put16(&mut copy, SB_STATE, state & !STATE_VALID);
        if l.metadata_csum() {
            let c = sb_checksum(&copy);
            put32(&mut copy, SB_CHECKSUM, c);
        }
        writes.push(Write {
            pos: start * l.bs,
            data: copy,
            what: "writing a backup superblock",
        });
    }
    // Every copy of every descriptor block; the primary copies are written last.
    let mut primary = Vec::new();
    for i in 0..new_gdt {
        let block = &gdt.buf[(i * l.bs) as usize..((i + 1) * l.bs) as usize];
        for (k, loc) in nl
            .gdt_block_locations(i, new_groups)
            .into_iter()
            .enumerate()
        {
            let w = Write {
                pos: loc * l.bs,
                data: block.to_vec(),
                what: "writing group descriptors",
            };
            if k == 0 {
                primary.push(w);
            } else {
                writes.push(w);
            }
        }
    }

    // 6. Everything new is in place: publish it through the primary GDT, then the superblock.
    if l.metadata_csum() {
        let c = sb_checksum(&sb);
        put32(&mut sb, SB_CHECKSUM, c);
    }
    for (pos, len) in zero_ranges {
        write_zeros(&dev, pos, len)?;
    }
    for w in &writes {
        dev.write_at(w.pos, &w.data, w.what)?;
    }
    for w in &primary {
        dev.write_at(w.pos, &w.data, w.what)?;
    }
    dev.write_at(1024, &sb, "writing the superblock")?;
    dev.sync("flushing the grown filesystem")?;

    Ok(FsGrowth {
        old_blocks: l.blocks,
        new_blocks,
        old_groups: old_groups as u32,
        new_groups: new_groups as u32,
        free_blocks_before: free_before,
        free_blocks_after: free_after,
    })
}

fn write_zeros(dev: &Dev, pos: u64, len: u64) -> Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        dev.write_at(pos + done, &chunk[..n], "zeroing an inode table")?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_backup_groups() {
        let sb = {
            let mut b = vec![0u8; 1024];
            put16(&mut b, SB_MAGIC, 0xEF53);
            put32(&mut b, SB_REV_LEVEL, 1);
            put16(&mut b, SB_STATE, 1);
            put32(&mut b, SB_LOG_BLOCK_SIZE, 2);
            put32(&mut b, SB_LOG_CLUSTER_SIZE, 2);
            put32(&mut b, SB_BLOCKS_PER_GROUP, 32768);
            put32(&mut b, SB_CLUSTERS_PER_GROUP, 32768);
            put32(&mut b, SB_INODES_PER_GROUP, 8192);
            put16(&mut b, SB_INODE_SIZE, 256);
            put32(&mut b, SB_BLOCKS_COUNT_LO, 32768 * 100);
            put32(&mut b, SB_INODES_COUNT, 8192 * 100);
            put32(&mut b, SB_FEATURE_RO_COMPAT, RO_COMPAT_SPARSE_SUPER);
            b
        };
        let l = parse_superblock(&sb, 0).unwrap();
        let backups: Vec<u64> = (0..400).filter(|&g| l.has_super(g)).collect();
        assert_eq!(
            backups,
            vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]
        );
        assert_eq!(l.groups, 100);
        assert_eq!(l.gdt_blocks, 1);
    }

    #[test]
    fn refuses_unknown_and_dirty_superblocks() {
        let mut sb = vec![0u8; 1024];
        assert!(matches!(
            parse_superblock(&sb, 7),
            Err(Error::NotExt4 { offset: 7 })
        ));
        put16(&mut sb, SB_MAGIC, 0xEF53);
        put32(&mut sb, SB_REV_LEVEL, 1);
        put16(&mut sb, SB_STATE, 1);
        put32(&mut sb, SB_FEATURE_INCOMPAT, INCOMPAT_RECOVER);
        assert!(matches!(
            parse_superblock(&sb, 0),
            Err(Error::NeedsRecovery)
        ));
        put32(&mut sb, SB_FEATURE_INCOMPAT, 0x8000_0000);
        assert!(matches!(
            parse_superblock(&sb, 0),
            Err(Error::Unsupported { .. })
        ));
    }
}
