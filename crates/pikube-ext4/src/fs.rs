//! Filesystem handle: superblock, group descriptors, bitmaps, block cache,
//! allocation and the public operations.

use crate::csum::{crc16, crc32c_raw};
use crate::disk::{Dev, Storage, le16, le32, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::sb::*;
use crate::{Kind, Meta, Stat};
use std::collections::{HashMap, HashSet};

const KNOWN_INCOMPAT: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const SUPPORTED_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR;
const KNOWN_RO: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg (gdt_csum)"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];
const SUPPORTED_RO: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_BTREE_DIR
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_GDT_CSUM
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_METADATA_CSUM
    | RO_COMPAT_ORPHAN_PRESENT;

/// Filesystem geometry and feature summary, immutable after open.
pub(crate) struct Geo {
    pub(crate) bs: u64,
    pub(crate) blocks_count: u64,
    pub(crate) r_blocks: u64,
    pub(crate) first_data_block: u64,
    pub(crate) bpg: u64,
    pub(crate) ipg: u32,
    pub(crate) inode_size: usize,
    pub(crate) groups: u32,
    pub(crate) desc_size: usize,
    pub(crate) gdt_blocks: u64,
    pub(crate) reserved_gdt: u64,
    pub(crate) first_ino: u32,
    pub(crate) incompat: u32,
    pub(crate) ro_compat: u32,
    pub(crate) compat: u32,
    pub(crate) seed: u32,
    pub(crate) hash_seed: [u32; 4],
    pub(crate) hash_unsigned: bool,
    pub(crate) want_extra_isize: u16,
    pub(crate) backup_bgs: [u32; 2],
    pub(crate) uuid: [u8; 16],
}

impl Geo {
    pub(crate) fn csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }
    pub(crate) fn gdt_csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_GDT_CSUM != 0
    }
    pub(crate) fn is64(&self) -> bool {
        self.incompat & INCOMPAT_64BIT != 0
    }
    pub(crate) fn group_of(&self, block: u64) -> u32 {
        ((block - self.first_data_block) / self.bpg) as u32
    }
    pub(crate) fn group_first(&self, g: u32) -> u64 {
        self.first_data_block + g as u64 * self.bpg
    }
    pub(crate) fn blocks_in_group(&self, g: u32) -> u64 {
        let first = self.group_first(g);
        (self.blocks_count - first).min(self.bpg)
    }
    pub(crate) fn has_super(&self, g: u32) -> bool {
        crate::sb::has_super(g.into(), self.compat, self.ro_compat, self.backup_bgs)
    }
}

pub(crate) struct Group {
    pub(crate) raw: Vec<u8>,
    pub(crate) block_bitmap: u64,
    pub(crate) inode_bitmap: u64,
    pub(crate) inode_table: u64,
    pub(crate) free_blocks: u32,
    pub(crate) free_inodes: u32,
    pub(crate) used_dirs: u32,
    pub(crate) flags: u16,
    pub(crate) itable_unused: u32,
    pub(crate) dirty: bool,
}

pub(crate) struct Bitmap {
    pub(crate) bits: Vec<u8>,
    pub(crate) dirty: bool,
}

/// An open ext4 filesystem inside a byte range of an image file.
pub struct Ext4Fs {
    pub(crate) dev: Dev<'static>,
    pub(crate) sb: Vec<u8>,
    pub(crate) geo: Geo,
    pub(crate) groups: Vec<Group>,
    pub(crate) gdt_raw: Vec<u8>,
    pub(crate) bbm: Vec<Option<Bitmap>>,
    pub(crate) ibm: Vec<Option<Bitmap>>,
    pub(crate) cache: HashMap<u64, Vec<u8>>,
    pub(crate) dirty: HashSet<u64>,
    pub(crate) alloc_cursor: u64,
    pub(crate) free_blocks: u64,
    pub(crate) free_inodes: u64,
    pub(crate) now: i64,
    pub(crate) gen_state: u64,
    pub(crate) iobuf: Vec<u8>,
}

fn bad_feature(bits: u32, known: &[(u32, &str)]) -> String {
    let mut names = Vec::new();
    for i in 0..32 {
        let bit = 1u32 << i;
        if bits & bit != 0 {
            match known.iter().find(|(b, _)| *b == bit) {
                Some((_, n)) => names.push(format!("`{n}`")),
                None => names.push(format!("unknown feature bit {bit:#x}")),
            }
        }
    }
    names.join(", ")
}

/// Compares a bitmap's checksum with the one its group descriptor stores at `(lo, hi)`
/// (the high half only with 64-byte descriptors). Nothing to check without metadata_csum.
fn check_bitmap_csum(
    geo: &Geo,
    desc: &[u8],
    bits: &[u8],
    nbytes: usize,
    (lo, hi): (usize, usize),
) -> std::result::Result<(), ()> {
    if !geo.csum() {
        return Ok(());
    }
    let mut stored = le16(desc, lo) as u32;
    let mut want = crc32c_raw(geo.seed, &bits[..nbytes]);
    if geo.desc_size >= 64 {
        stored |= (le16(desc, hi) as u32) << 16;
    } else {
        want &= 0xFFFF;
    }
    if want == stored { Ok(()) } else { Err(()) }
}

/// Stores a bitmap's checksum in its group descriptor at `(lo, hi)`, the counterpart of
/// [`check_bitmap_csum`].
fn store_bitmap_csum(geo: &Geo, desc: &mut [u8], bits: &[u8], nbytes: usize, at: (usize, usize)) {
    if geo.csum() {
        crate::sb::store_bitmap_csum(geo.seed, desc, bits, nbytes, at);
    }
}

impl Ext4Fs {
    /// Opens the filesystem stored in `[offset, offset + len)` of `storage`
    /// (a [`std::fs::File`] opened read + write, or any other [`Storage`]). Every
    /// precondition is checked before anything is written; on error the image
    /// is unchanged.
    ///
    /// `now` (Unix seconds) is the time stamped on changed metadata: ctime, directory
    /// mtimes, new inodes, the superblock's write time; it also seeds inode generations.
    /// The caller decides it (a fixed time gives a byte-identical filesystem).
    pub fn open(
        storage: impl Storage + 'static,
        offset: u64,
        len: u64,
        now: i64,
    ) -> Result<Ext4Fs> {
        let dev = Dev {
            file: Box::new(storage),
            offset,
            len,
        };
        let sb = dev.read_vec(1024, 1024, "reading the superblock")?;
        if le16(&sb, 0x38) != 0xEF53 {
            return Err(corrupt(format!(
                "no ext4 superblock magic at byte {} of the image (is the partition offset right?)",
                offset + 1024 + 0x38
            )));
        }
        if le32(&sb, 0x4C) < 1 {
            return Err(Error::Unsupported {
                feature: "a revision 0 (original ext2) superblock".into(),
            });
        }
        let compat = le32(&sb, 0x5C);
        let incompat = le32(&sb, 0x60);
        let ro_compat = le32(&sb, 0x64);
        let bad_in = incompat & !SUPPORTED_INCOMPAT;
        if bad_in != 0 {
            return Err(Error::Unsupported {
                feature: bad_feature(bad_in, KNOWN_INCOMPAT),
            });
        }
        let bad_ro = ro_compat & !SUPPORTED_RO;
        if bad_ro != 0 {
            return Err(Error::Unsupported {
                feature: bad_feature(bad_ro, KNOWN_RO),
            });
        }
        if incompat & INCOMPAT_EXTENTS == 0 {
            return Err(Error::Unsupported {
                feature: "no `extent` feature (an ext2/ext3 layout)".into(),
            });
        }
        let csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        if csum {
            if sb[0x175] != 1 {
                return Err(corrupt(format!(
                    "unknown metadata checksum type {}",
                    sb[0x175]
                )));
            }
            let want = crc32c_raw(!0, &sb[..0x3FC]);
            if want != le32(&sb, 0x3FC) {
                return Err(corrupt(format!(
                    "superblock checksum mismatch (stored {:#010x}, computed {want:#010x})",
                    le32(&sb, 0x3FC)
                )));
            }
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(Error::NeedsRecovery);
        }
        let state = le16(&sb, 0x3A);
        if state & 0x2 != 0 {
            return Err(corrupt("the superblock records filesystem errors"));
        }
        if state & 0x1 == 0 {
            return Err(Error::NeedsRecovery);
        }
        if le32(&sb, 0xE8) != 0 || ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
            return Err(Error::OrphansPending);
        }
        let log_bs = le32(&sb, 0x18);
        if log_bs > 2 {
            return Err(Error::Unsupported {
                feature: format!("a block size of {} bytes", 1024u64 << log_bs.min(20)),
            });
        }
        let bs = 1024u64 << log_bs;
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = le32(&sb, 0x4) as u64;
        let mut r_blocks = le32(&sb, 0x8) as u64;
        if is64 {
            blocks_count |= (le32(&sb, 0x150) as u64) << 32;
            r_blocks |= (le32(&sb, 0x154) as u64) << 32;
        }
        let first_data_block = le32(&sb, 0x14) as u64;
        let bpg = le32(&sb, 0x20) as u64;
        let cpg = le32(&sb, 0x24) as u64;
        let ipg = le32(&sb, 0x28);
        let inodes_count = le32(&sb, 0x0);
        let inode_size = le16(&sb, 0x58) as usize;
        let desc_size = if is64 { le16(&sb, 0xFE) as usize } else { 32 };
        let geom_err = |what: &str| corrupt(format!("invalid superblock geometry: {what}"));
        if bpg == 0 || bpg > bs * 8 || !bpg.is_multiple_of(8) || cpg != bpg {
            return Err(geom_err("blocks per group"));
        }
        if ipg == 0 || ipg as u64 > bs * 8 || !ipg.is_multiple_of(8) {
            return Err(geom_err("inodes per group"));
        }
        if !(128..=bs as usize).contains(&inode_size) || !inode_size.is_power_of_two() {
            return Err(geom_err("inode size"));
        }
        if (bs == 1024) != (first_data_block == 1) || first_data_block > 1 {
            return Err(geom_err("first data block"));
        }
        if is64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(geom_err("group descriptor size"));
        }
        if blocks_count <= first_data_block {
            return Err(geom_err("block count"));
        }
        if blocks_count.saturating_mul(bs) > len {
            return Err(corrupt(format!(
                "the filesystem ({} bytes) is larger than its partition ({len} bytes)",
                blocks_count.saturating_mul(bs)
            )));
        }
        let groups64 = (blocks_count - first_data_block).div_ceil(bpg);
        if groups64 > u32::MAX as u64 || groups64 * ipg as u64 != inodes_count as u64 {
            return Err(geom_err("group count does not match the inode count"));
        }
        let groups = groups64 as u32;
        let gdt_blocks = (groups as u64 * desc_size as u64).div_ceil(bs);
        let seed = crate::sb::csum_seed(&sb);
        let first_ino = le32(&sb, 0x54);
        if first_ino < 11 || first_ino > inodes_count {
            return Err(geom_err("first inode"));
        }
        let geo = Geo {
            bs,
            blocks_count,
            r_blocks,
            first_data_block,
            bpg,
            ipg,
            inode_size,
            groups,
            desc_size,
            gdt_blocks,
            reserved_gdt: le16(&sb, 0xCE) as u64,
            first_ino,
            incompat,
            ro_compat,
            compat,
            seed,
            hash_seed: [
                le32(&sb, 0xEC),
                le32(&sb, 0xF0),
                le32(&sb, 0xF4),
                le32(&sb, 0xF8),
            ],
            hash_unsigned: le32(&sb, 0x160) & 0x2 != 0,
            want_extra_isize: le16(&sb, 0x15E),
            backup_bgs: [le32(&sb, 0x24C), le32(&sb, 0x250)],
            uuid: sb[0x68..0x78].try_into().expect("16 bytes"),
        };
        let gdt_start = first_data_block + 1;
        let gdt_raw = dev.read_vec(
            gdt_start * bs,
            (gdt_blocks * bs) as usize,
            "reading the group descriptors",
        )?;
        let mut groups_v = Vec::with_capacity(groups as usize);
        for g in 0..groups {
            let raw = gdt_raw[g as usize * desc_size..(g as usize + 1) * desc_size].to_vec();
            let stored = le16(&raw, 0x1E);
            if let Some(want) = desc_checksum(&geo, g, &raw)
                && want != stored
            {
                return Err(corrupt(format!(
                    "group descriptor {g} checksum mismatch (stored {stored:#06x}, computed {want:#06x})"
                )));
            }
            let hi = |o: usize| -> u64 {
                if desc_size >= 64 {
                    le32(&raw, o) as u64
                } else {
                    0
                }
            };
            let hi16 = |o: usize| -> u32 {
                if desc_size >= 64 {
                    le16(&raw, o) as u32
                } else {
                    0
                }
            };
            let grp = Group {
                block_bitmap: le32(&raw, 0x0) as u64 | hi(0x20) << 32,
                inode_bitmap: le32(&raw, 0x4) as u64 | hi(0x24) << 32,
                inode_table: le32(&raw, 0x8) as u64 | hi(0x28) << 32,
                free_blocks: le16(&raw, 0xC) as u32 | hi16(0x2C) << 16,
                free_inodes: le16(&raw, 0xE) as u32 | hi16(0x2E) << 16,
                used_dirs: le16(&raw, 0x10) as u32 | hi16(0x30) << 16,
                flags: le16(&raw, 0x12),
                itable_unused: le16(&raw, 0x1C) as u32 | hi16(0x32) << 16,
                raw,
                dirty: false,
            };
            let itable_blocks = (ipg as u64 * inode_size as u64).div_ceil(bs);
            let inside = |b: u64, n: u64| b >= first_data_block && b + n <= blocks_count;
            if !inside(grp.block_bitmap, 1)
                || !inside(grp.inode_bitmap, 1)
                || !inside(grp.inode_table, itable_blocks)
                || grp.free_blocks as u64 > bpg
                || grp.free_inodes > ipg
                || grp.itable_unused > ipg
            {
                return Err(corrupt(format!(
                    "group descriptor {g} points outside the filesystem or has impossible counts"
                )));
            }
            groups_v.push(grp);
        }
        let free_blocks = groups_v.iter().map(|g| g.free_blocks as u64).sum();
        let free_inodes = groups_v.iter().map(|g| g.free_inodes as u64).sum();
        let mut fs = Ext4Fs {
            dev,
            sb,
            geo,
            groups: groups_v,
            gdt_raw,
            bbm: (0..groups).map(|_| None).collect(),
            ibm: (0..groups).map(|_| None).collect(),
            cache: HashMap::new(),
            dirty: HashSet::new(),
            alloc_cursor: first_data_block,
            free_blocks,
            free_inodes,
            now,
            gen_state: 0,
            iobuf: Vec::new(),
        };
        fs.gen_state = (fs.now as u64) ^ (fs.geo.seed as u64) << 17 ^ 0x9E37_79B9_7F4A_7C15;
        fs.check_journal()?;
        Ok(fs)
    }

    fn check_journal(&mut self) -> Result<()> {
        if self.geo.compat & COMPAT_HAS_JOURNAL == 0 {
            return Ok(());
        }
        let jino = le32(&self.sb, 0xE0);
        if jino == 0 {
            return Err(Error::Unsupported {
                feature: "an external journal device".into(),
            });
        }
        let inode = self.read_inode(jino)?;
        let map = self.inode_map(jino, &inode)?;
        let first = map
            .extents
            .iter()
            .find(|e| e.logical == 0)
            .ok_or_else(|| corrupt("the journal inode has no first block"))?;
        let jsb = self.dev.read_vec(
            first.phys * self.geo.bs,
            1024,
            "reading the journal superblock",
        )?;
        let be32 = |o: usize| u32::from_be_bytes([jsb[o], jsb[o + 1], jsb[o + 2], jsb[o + 3]]);
        if be32(0) != 0xC03B_3998 {
            return Err(corrupt("the journal superblock has a bad magic number"));
        }
        if be32(0x1C) != 0 {
            return Err(Error::NeedsRecovery);
        }
        Ok(())
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.geo.bs as u32
    }

    /// Free space usable by this writer, in bytes: free blocks minus the
    /// blocks reserved for root (`-m`), times the block size. The reserved
    /// blocks are left untouched for the running system.
    pub fn free_bytes(&self) -> u64 {
        self.available_blocks() * self.geo.bs
    }

    pub(crate) fn available_blocks(&self) -> u64 {
        self.free_blocks.saturating_sub(self.geo.r_blocks)
    }

    /// Conservative number of bytes of free space needed to write files of
    /// the given sizes: data blocks, extent tree blocks assuming fragmented
    /// allocation, directory growth (one maximal entry per file plus index
    /// splits) and some slack.
    pub fn bytes_needed_for(sizes: &[u64], block_size: u32) -> u64 {
        let bs = block_size.max(1024) as u64;
        let mut blocks = 0u64;
        for &s in sizes {
            let data = s.div_ceil(bs);
            blocks += data;
            // Worst case: one extent per 32768 blocks plus fragmentation.
            let extents = data.div_ceil(32768) + if data > 0 { 16 } else { 0 };
            blocks += crate::inode::tree_blocks_for(extents, bs);
        }
        let n = sizes.len() as u64;
        // 264 bytes is the largest directory entry; each new leaf block may
        // also need a split (one more leaf) and occasionally an index block.
        let dir_bytes = n * 264;
        blocks += 2 * dir_bytes.div_ceil(bs) + n.div_ceil(64) + 8;
        blocks * bs
    }

    // ---------- block cache ----------

    pub(crate) fn block(&mut self, b: u64) -> Result<&[u8]> {
        self.load_block(b)?;
        Ok(&self.cache[&b])
    }

    pub(crate) fn block_mut(&mut self, b: u64) -> Result<&mut Vec<u8>> {
        self.load_block(b)?;
        self.dirty.insert(b);
        Ok(self.cache.get_mut(&b).expect("loaded"))
    }

    /// A block whose old contents do not matter (freshly allocated).
    pub(crate) fn block_new(&mut self, b: u64) -> &mut Vec<u8> {
        self.dirty.insert(b);
        let bs = self.geo.bs as usize;
        let e = self.cache.entry(b).or_default();
        e.clear();
        e.resize(bs, 0);
        e
    }

    fn load_block(&mut self, b: u64) -> Result<()> {
        if b < self.geo.first_data_block || b >= self.geo.blocks_count {
            return Err(corrupt(format!(
                "a reference to block {b}, outside the filesystem"
            )));
        }
        if !self.cache.contains_key(&b) {
            let mut buf = vec![0u8; self.geo.bs as usize];
            self.dev
                .read_at(b * self.geo.bs, &mut buf, "reading a metadata block")?;
            self.cache.insert(b, buf);
        }
        Ok(())
    }

    pub(crate) fn forget_block(&mut self, b: u64) {
        self.cache.remove(&b);
        self.dirty.remove(&b);
    }

    // ---------- bitmaps ----------

    fn group_meta_blocks(&self, g: u32) -> u64 {
        if self.geo.has_super(g) {
            1 + self.geo.gdt_blocks + self.geo.reserved_gdt
        } else {
            0
        }
    }

    pub(crate) fn load_bbm(&mut self, g: u32) -> Result<()> {
        if self.bbm[g as usize].is_some() {
            return Ok(());
        }
        let geo = &self.geo;
        let bs = geo.bs as usize;
        let grp = &self.groups[g as usize];
        let mut bits = vec![0u8; bs];
        let csum_on = geo.csum() || geo.gdt_csum();
        if csum_on && grp.flags & BG_BLOCK_UNINIT != 0 {
            let first = geo.group_first(g);
            let n = geo.blocks_in_group(g);
            for i in 0..self.group_meta_blocks(g).min(n) {
                set_bit(&mut bits, i as usize);
            }
            for og in &self.groups {
                let itb = (geo.ipg as u64 * geo.inode_size as u64).div_ceil(geo.bs);
                for (b, cnt) in [
                    (og.block_bitmap, 1),
                    (og.inode_bitmap, 1),
                    (og.inode_table, itb),
                ] {
                    for x in b..b + cnt {
                        if x >= first && x < first + n {
                            set_bit(&mut bits, (x - first) as usize);
                        }
                    }
                }
            }
            for i in n as usize..bs * 8 {
                set_bit(&mut bits, i);
            }
        } else {
            self.read_bitmap(
                g,
                &mut bits,
                grp.block_bitmap,
                geo.bpg / 8,
                BLOCK_BITMAP_CSUM,
                "block",
            )?;
        }
        self.bbm[g as usize] = Some(Bitmap { bits, dirty: false });
        Ok(())
    }

    /// Reads the `what` ("block" or "inode") bitmap of group `g` from block `loc` into
    /// `bits` and checks it against the checksum its descriptor keeps at `at`.
    fn read_bitmap(
        &self,
        g: u32,
        bits: &mut [u8],
        loc: u64,
        nbytes: u64,
        at: (usize, usize),
        what: &str,
    ) -> Result<()> {
        self.dev
            .read_at(loc * self.geo.bs, bits, "reading a bitmap")?;
        check_bitmap_csum(
            &self.geo,
            &self.groups[g as usize].raw,
            bits,
            nbytes as usize,
            at,
        )
        .map_err(|()| corrupt(format!("{what} bitmap of group {g} checksum mismatch")))
    }

    pub(crate) fn load_ibm(&mut self, g: u32) -> Result<()> {
        if self.ibm[g as usize].is_some() {
            return Ok(());
        }
        let geo = &self.geo;
        let bs = geo.bs as usize;
        let grp = &self.groups[g as usize];
        let mut bits = vec![0u8; bs];
        let csum_on = geo.csum() || geo.gdt_csum();
        if csum_on && grp.flags & BG_INODE_UNINIT != 0 {
            for i in geo.ipg as usize..bs * 8 {
                set_bit(&mut bits, i);
            }
        } else {
            let nbytes = u64::from(geo.ipg / 8);
            self.read_bitmap(
                g,
                &mut bits,
                grp.inode_bitmap,
                nbytes,
                INODE_BITMAP_CSUM,
                "inode",
            )?;
        }
        self.ibm[g as usize] = Some(Bitmap { bits, dirty: false });
        Ok(())
    }

    /// Marks `[start, start+len)` allocated (all must be free).
    pub(crate) fn mark_blocks(&mut self, start: u64, len: u64, used: bool) -> Result<()> {
        let mut b = start;
        while b < start + len {
            let g = self.geo.group_of(b);
            self.load_bbm(g)?;
            let gfirst = self.geo.group_first(g);
            let gend = (gfirst + self.geo.blocks_in_group(g)).min(start + len);
            let bm = self.bbm[g as usize].as_mut().expect("loaded");
            let mut changed = 0u32;
            for x in b..gend {
                let i = (x - gfirst) as usize;
                if get_bit(&bm.bits, i) == used {
                    return Err(corrupt(format!(
                        "block {x} is already {} in the block bitmap",
                        if used { "in use" } else { "free" }
                    )));
                }
                if used {
                    set_bit(&mut bm.bits, i);
                } else {
                    clear_bit(&mut bm.bits, i);
                }
                changed += 1;
            }
            bm.dirty = true;
            let grp = &mut self.groups[g as usize];
            grp.flags &= !BG_BLOCK_UNINIT;
            grp.dirty = true;
            if used {
                if grp.free_blocks < changed || self.free_blocks < changed as u64 {
                    return Err(corrupt(format!(
                        "group {g}: free block count disagrees with the block bitmap"
                    )));
                }
                grp.free_blocks -= changed;
                self.free_blocks -= changed as u64;
            } else {
                grp.free_blocks += changed;
                self.free_blocks += changed as u64;
            }
            b = gend;
        }
        Ok(())
    }

    pub(crate) fn free_blocks_range(&mut self, start: u64, len: u64) -> Result<()> {
        if start < self.geo.first_data_block
            || start
                .checked_add(len)
                .is_none_or(|e| e > self.geo.blocks_count)
        {
            return Err(corrupt(format!(
                "an extent ({start}+{len}) outside the filesystem"
            )));
        }
        for b in start..start + len {
            self.forget_block(b);
        }
        self.mark_blocks(start, len, false)
    }

    /// Finds and allocates `n` blocks, preferring one contiguous run starting
    /// the search at `goal`. Returns runs `(start, len)`. The caller checks
    /// free space first; on failure nothing stays allocated.
    pub(crate) fn alloc_blocks(&mut self, n: u64, goal: Option<u64>) -> Result<Vec<(u64, u64)>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > self.free_blocks {
            return Err(Error::NoSpace {
                needed: n * self.geo.bs,
                available: self.free_bytes(),
            });
        }
        let start = goal
            .unwrap_or(self.alloc_cursor)
            .clamp(self.geo.first_data_block, self.geo.blocks_count - 1);
        // Pass 1: a single run of n blocks (first fit from the goal).
        if let Some(s) = self.find_run(start, n, true)? {
            self.mark_blocks(s, n, true)?;
            self.alloc_cursor = s + n;
            return Ok(vec![(s, n)]);
        }
        // Pass 2: first-fit pieces from the goal onwards.
        let mut runs = Vec::new();
        let mut got = 0u64;
        let mut pos = start;
        let total = self.geo.blocks_count - self.geo.first_data_block;
        let mut scanned = 0u64;
        while got < n && scanned < total {
            let (s, l) = match self.next_free_run(pos, n - got)? {
                Some(r) => r,
                None => {
                    scanned += self.geo.blocks_count - pos;
                    pos = self.geo.first_data_block;
                    continue;
                }
            };
            if s < pos {
                scanned += self.geo.blocks_count - pos + (s - self.geo.first_data_block);
            } else {
                scanned += s - pos;
            }
            self.mark_blocks(s, l, true)?;
            runs.push((s, l));
            got += l;
            scanned += l;
            pos = s + l;
            if pos >= self.geo.blocks_count {
                pos = self.geo.first_data_block;
            }
        }
        if got < n {
            for (s, l) in runs {
                self.mark_blocks(s, l, false)?;
            }
            return Err(Error::NoSpace {
                needed: n * self.geo.bs,
                available: got * self.geo.bs,
            });
        }
        self.alloc_cursor = pos;
        Ok(runs)
    }

    /// Next free run at or after `pos` (no wrap), capped at `max` blocks.
    fn next_free_run(&mut self, pos: u64, max: u64) -> Result<Option<(u64, u64)>> {
        let mut b = pos;
        let end = self.geo.blocks_count;
        // find first free
        loop {
            if b >= end {
                return Ok(None);
            }
            let g = self.geo.group_of(b);
            self.load_bbm(g)?;
            let gfirst = self.geo.group_first(g);
            let n = self.geo.blocks_in_group(g);
            let bits = &self.bbm[g as usize].as_ref().expect("loaded").bits;
            let mut i = (b - gfirst) as usize;
            let mut found = None;
            while i < n as usize {
                if i.is_multiple_of(8) && bits[i / 8] == 0xFF {
                    i += 8;
                    continue;
                }
                if !get_bit(bits, i) {
                    found = Some(i);
                    break;
                }
                i += 1;
            }
            match found {
                Some(i) => {
                    b = gfirst + i as u64;
                    break;
                }
                None => b = gfirst + n,
            }
        }
        let s = b;
        let mut len = 0u64;
        while len < max && b < end {
            let g = self.geo.group_of(b);
            self.load_bbm(g)?;
            let gfirst = self.geo.group_first(g);
            let n = self.geo.blocks_in_group(g);
            let bits = &self.bbm[g as usize].as_ref().expect("loaded").bits;
            let mut i = (b - gfirst) as usize;
            let mut stop = false;
            while i < n as usize && len < max {
                if i.is_multiple_of(8) && bits[i / 8] == 0 && len + 8 <= max && i + 8 <= n as usize
                {
                    i += 8;
                    len += 8;
                    continue;
                }
                if get_bit(bits, i) {
                    stop = true;
                    break;
                }
                i += 1;
                len += 1;
            }
            b = gfirst + i as u64;
            if stop {
                break;
            }
        }
        Ok(Some((s, len)))
    }

    /// First run of at least `n` free blocks at or after `start`, wrapping.
    fn find_run(&mut self, start: u64, n: u64, wrap: bool) -> Result<Option<u64>> {
        let mut pos = start;
        let mut wrapped = false;
        loop {
            match self.next_free_run(pos, n)? {
                Some((s, l)) => {
                    if wrapped && s >= start {
                        return Ok(None);
                    }
                    if l >= n {
                        return Ok(Some(s));
                    }
                    pos = s + l;
                }
                None => {
                    if !wrap || wrapped {
                        return Ok(None);
                    }
                    wrapped = true;
                    pos = self.geo.first_data_block;
                }
            }
            if wrapped && pos >= start {
                return Ok(None);
            }
        }
    }

    /// Allocates an inode, preferring group `pref`. Returns its number.
    pub(crate) fn alloc_inode(&mut self, pref: u32, is_dir: bool) -> Result<u32> {
        if self.free_inodes == 0 {
            return Err(Error::NoInodes);
        }
        let ng = self.geo.groups;
        for k in 0..ng {
            let g = (pref + k) % ng;
            if self.groups[g as usize].free_inodes == 0 {
                continue;
            }
            self.load_ibm(g)?;
            let ipg = self.geo.ipg as usize;
            let base = g as u64 * ipg as u64;
            let bm = self.ibm[g as usize].as_mut().expect("loaded");
            let mut found = None;
            for i in 0..ipg {
                if i % 8 == 0 && bm.bits[i / 8] == 0xFF {
                    continue;
                }
                if !get_bit(&bm.bits, i) && base + i as u64 + 1 >= self.geo.first_ino as u64 {
                    found = Some(i);
                    break;
                }
            }
            let Some(i) = found else {
                continue;
            };
            set_bit(&mut bm.bits, i);
            bm.dirty = true;
            let csum_on = self.geo.csum() || self.geo.gdt_csum();
            let was_uninit = self.groups[g as usize].flags & BG_INODE_UNINIT != 0;
            let grp = &mut self.groups[g as usize];
            grp.flags &= !BG_INODE_UNINIT;
            grp.free_inodes -= 1;
            if is_dir {
                grp.used_dirs += 1;
            }
            if csum_on {
                let used_limit = self.geo.ipg - grp.itable_unused;
                if was_uninit || i as u32 + 1 > used_limit {
                    grp.itable_unused = self.geo.ipg - (i as u32 + 1);
                }
            }
            grp.dirty = true;
            self.free_inodes -= 1;
            let ino = (base + i as u64 + 1) as u32;
            if was_uninit && csum_on {
                // Inodes of a never-used group may hold garbage if the table
                // was not zeroed; the new inode is written in full anyway.
            }
            return Ok(ino);
        }
        Err(Error::NoInodes)
    }

    pub(crate) fn free_inode(&mut self, ino: u32, is_dir: bool) -> Result<()> {
        let g = (ino - 1) / self.geo.ipg;
        let i = ((ino - 1) % self.geo.ipg) as usize;
        self.load_ibm(g)?;
        let bm = self.ibm[g as usize].as_mut().expect("loaded");
        if !get_bit(&bm.bits, i) {
            return Err(corrupt(format!("inode {ino} is already free")));
        }
        clear_bit(&mut bm.bits, i);
        bm.dirty = true;
        let grp = &mut self.groups[g as usize];
        grp.free_inodes += 1;
        if is_dir {
            grp.used_dirs = grp.used_dirs.saturating_sub(1);
        }
        grp.dirty = true;
        self.free_inodes += 1;
        Ok(())
    }

    pub(crate) fn next_generation(&mut self) -> u32 {
        // xorshift64*
        let mut x = self.gen_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.gen_state = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    // ---------- flush ----------

    fn flush(&mut self) -> Result<()> {
        let bs = self.geo.bs;
        // Bitmaps and their checksums.
        for g in 0..self.geo.groups as usize {
            let grp = &mut self.groups[g];
            let kinds = [
                (
                    self.bbm[g].as_mut(),
                    grp.block_bitmap,
                    self.geo.bpg / 8,
                    BLOCK_BITMAP_CSUM,
                ),
                (
                    self.ibm[g].as_mut(),
                    grp.inode_bitmap,
                    u64::from(self.geo.ipg / 8),
                    INODE_BITMAP_CSUM,
                ),
            ];
            for (bm, loc, nbytes, at) in kinds {
                let Some(bm) = bm.filter(|b| b.dirty) else {
                    continue;
                };
                self.dev.write_at(loc * bs, &bm.bits, "writing a bitmap")?;
                bm.dirty = false;
                store_bitmap_csum(&self.geo, &mut grp.raw, &bm.bits, nbytes as usize, at);
                grp.dirty = true;
            }
        }
        // Metadata blocks.
        let mut blocks: Vec<u64> = self.dirty.drain().collect();
        blocks.sort_unstable();
        for b in blocks {
            let data = &self.cache[&b];
            self.dev
                .write_at(b * bs, data, "writing a metadata block")?;
        }
        // Group descriptors.
        let mut any = false;
        let ds = self.geo.desc_size;
        for g in 0..self.geo.groups as usize {
            if !self.groups[g].dirty {
                continue;
            }
            any = true;
            let grp = &mut self.groups[g];
            let r = &mut grp.raw;
            put16(r, 0xC, grp.free_blocks as u16);
            put16(r, 0xE, grp.free_inodes as u16);
            put16(r, 0x10, grp.used_dirs as u16);
            put16(r, 0x12, grp.flags);
            put16(r, 0x1C, grp.itable_unused as u16);
            if ds >= 64 {
                put16(r, 0x2C, (grp.free_blocks >> 16) as u16);
                put16(r, 0x2E, (grp.free_inodes >> 16) as u16);
                put16(r, 0x30, (grp.used_dirs >> 16) as u16);
                put16(r, 0x32, (grp.itable_unused >> 16) as u16);
            }
            if let Some(c) = desc_checksum(&self.geo, g as u32, r) {
                put16(r, 0x1E, c);
            }
            self.gdt_raw[g * ds..(g + 1) * ds].copy_from_slice(r);
            grp.dirty = false;
        }
        if any {
            let start = self.geo.first_data_block + 1;
            self.dev
                .write_at(start * bs, &self.gdt_raw, "writing the group descriptors")?;
        }
        // Superblock.
        let sb = &mut self.sb;
        put32(sb, 0xC, self.free_blocks as u32);
        if self.geo.is64() {
            put32(sb, 0x158, (self.free_blocks >> 32) as u32);
        }
        put32(sb, 0x10, self.free_inodes as u32);
        let now = self.now;
        put32(sb, 0x30, now as u32);
        sb[0x274] = ((now >> 32) & 0xFF) as u8;
        if self.geo.csum() {
            let c = crc32c_raw(!0, &sb[..0x3FC]);
            put32(sb, 0x3FC, c);
        }
        self.dev
            .write_at(1024, &self.sb, "writing the superblock")?;
        self.dev.sync("syncing the ext4 filesystem")?;
        Ok(())
    }

    /// Writes all metadata, updates the superblock (free counts, write time,
    /// checksum) and syncs the storage.
    pub fn close(mut self) -> Result<()> {
        self.flush()
    }

    // ---------- public operations ----------

    /// Creates a directory and its missing parents (like `mkdir -p`).
    /// Existing directories are left as they are.
    pub fn mkdir_p(&mut self, path: &str, meta: &Meta) -> Result<()> {
        let comps = split_path(path)?;
        let mut cur = crate::inode::ROOT_INO;
        for (i, name) in comps.iter().enumerate() {
            let sub = comps[..=i].join("/");
            match self.lookup_follow(cur, name, path, 0)? {
                Some((ino, kind)) => {
                    if kind != Kind::Dir {
                        return Err(Error::NotADirectory {
                            path: format!("/{sub}"),
                        });
                    }
                    cur = ino;
                }
                None => {
                    cur = self.create_dir(cur, name, meta)?;
                }
            }
        }
        Ok(())
    }

    /// Creates `path` or replaces its contents with `len` bytes read from
    /// `data`. An existing symlink at `path` is replaced by a regular file.
    /// The parent directory must exist. Free space for the whole file is
    /// checked before anything is allocated.
    pub fn write_file(
        &mut self,
        path: &str,
        data: &mut dyn std::io::Read,
        len: u64,
        meta: &Meta,
    ) -> Result<()> {
        let (parent, name) = self.resolve_parent(path)?;
        self.write_file_in(parent, &name, path, data, len, meta)
    }

    /// Creates a symbolic link `path` pointing to `target`. Fails if `path` exists.
    pub fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<()> {
        let (parent, name) = self.resolve_parent(path)?;
        self.symlink_in(parent, &name, path, target, meta)
    }

    /// Removes a file, symlink or empty directory.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let (parent, name) = self.resolve_parent(path)?;
        self.remove_in(parent, &name, path)
    }

    /// Reads a whole file (symlinks are followed).
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let ino = self.resolve(path, true)?.ok_or_else(|| Error::NotFound {
            path: path.to_string(),
        })?;
        let inode = self.read_inode(ino)?;
        match inode.kind() {
            Kind::Dir => Err(Error::IsADirectory {
                path: path.to_string(),
            }),
            Kind::File => self.read_data(ino, &inode),
            _ => Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "not a regular file".into(),
            }),
        }
    }

    /// Metadata of `path` (a final symlink is not followed); `None` if absent.
    pub fn stat(&mut self, path: &str) -> Result<Option<Stat>> {
        let Some(ino) = self.resolve(path, false)? else {
            return Ok(None);
        };
        let inode = self.read_inode(ino)?;
        Ok(Some(inode.stat()))
    }
}

pub(crate) fn desc_checksum(geo: &Geo, g: u32, raw: &[u8]) -> Option<u16> {
    if geo.csum() {
        let mut c = crc32c_raw(geo.seed, &g.to_le_bytes());
        c = crc32c_raw(c, &raw[..0x1E]);
        c = crc32c_raw(c, &[0, 0]);
        if raw.len() > 0x20 {
            c = crc32c_raw(c, &raw[0x20..]);
        }
        Some(c as u16)
    } else if geo.gdt_csum() {
        let mut c = crc16(!0, &geo.uuid);
        c = crc16(c, &g.to_le_bytes());
        c = crc16(c, &raw[..0x1E]);
        if raw.len() > 0x20 {
            c = crc16(c, &raw[0x20..]);
        }
        Some(c)
    } else {
        None
    }
}

pub(crate) fn get_bit(bits: &[u8], i: usize) -> bool {
    bits[i / 8] & (1 << (i % 8)) != 0
}
pub(crate) fn set_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] |= 1 << (i % 8);
}
pub(crate) fn clear_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] &= !(1 << (i % 8));
}

/// Splits an absolute path into components; rejects relative paths, empty
/// names, `..` and names longer than 255 bytes.
pub(crate) fn split_path(path: &str) -> Result<Vec<String>> {
    if !path.starts_with('/') {
        return Err(Error::InvalidPath {
            path: path.into(),
            reason: "paths must be absolute (start with `/`)".into(),
        });
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "`..` components are not allowed".into(),
            });
        }
        if c.len() > 255 || c.contains('\0') {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "a name is longer than 255 bytes or contains NUL".into(),
            });
        }
        out.push(c.to_string());
    }
    Ok(out)
}

impl std::fmt::Debug for Ext4Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Fs")
            .field("offset", &self.dev.offset)
            .field("len", &self.dev.len)
            .field("block_size", &self.geo.bs)
            .field("blocks", &self.geo.blocks_count)
            .field("free_blocks", &self.free_blocks)
            .field("free_inodes", &self.free_inodes)
            .finish_non_exhaustive()
    }
}
