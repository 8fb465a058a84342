//! Filesystem geometry decoded from the superblock, and the placement rules that follow from
//! it: where groups start, which groups carry superblock and descriptor backups, where each
//! descriptor block lives (also with meta_bg) and how many blocks a group's start gives to them.

use crate::disk::{le16, le32};
use crate::error::{Error, Result, corrupt};
use crate::layout::*;

/// Filesystem geometry and feature summary, decoded and checked by [`Geo::parse`].
#[derive(Clone, Debug)]
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
    /// With meta_bg: descriptor blocks from this one on live in their meta group.
    pub(crate) first_meta_bg: u64,
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
    /// Decodes the primary superblock `sb` of the filesystem at byte `offset` of the image and
    /// checks everything both the writer and the grow rely on: magic and revision, the
    /// superblock checksum, a clean state (no journal recovery, no orphans, no recorded errors),
    /// the feature policy ([`check_features`]) and a consistent geometry.
    pub(crate) fn parse(sb: &[u8], offset: u64) -> Result<Geo> {
        if le16(sb, SB_MAGIC) != EXT4_MAGIC {
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
        if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if sb[SB_CHECKSUM_TYPE] != CHECKSUM_TYPE_CRC32C {
                return Err(corrupt(format!(
                    "unknown metadata checksum type {}",
                    sb[SB_CHECKSUM_TYPE]
                )));
            }
            let want = sb_checksum(sb);
            if want != le32(sb, SB_CHECKSUM) {
                return Err(corrupt(format!(
                    "superblock checksum mismatch (stored {:#010x}, computed {want:#010x})",
                    le32(sb, SB_CHECKSUM)
                )));
            }
        }
        check_state(sb, incompat, ro_compat)?;
        check_features(compat, incompat, ro_compat)?;

        let geom_err = |what: String| corrupt(format!("invalid superblock geometry: {what}"));
        let log_bs = le32(sb, SB_LOG_BLOCK_SIZE);
        if log_bs > 6 {
            return Err(geom_err(format!("block size 2^(10+{log_bs})")));
        }
        let bs = 1024u64 << log_bs;
        if bs > MAX_BLOCK_SIZE {
            return Err(Error::Unsupported {
                feature: format!("a block size of {bs} bytes"),
            });
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = u64::from(le32(sb, SB_BLOCKS_COUNT_LO));
        let mut r_blocks = u64::from(le32(sb, SB_R_BLOCKS_COUNT_LO));
        if is64 {
            blocks_count |= u64::from(le32(sb, SB_BLOCKS_COUNT_HI)) << 32;
            r_blocks |= u64::from(le32(sb, SB_R_BLOCKS_COUNT_HI)) << 32;
        }
        let first_data_block = u64::from(le32(sb, SB_FIRST_DATA_BLOCK));
        let bpg = u64::from(le32(sb, SB_BLOCKS_PER_GROUP));
        let ipg = le32(sb, SB_INODES_PER_GROUP);
        let inodes_count = le32(sb, SB_INODES_COUNT);
        let inode_size = usize::from(le16(sb, SB_INODE_SIZE));
        let desc_size = if is64 {
            usize::from(le16(sb, SB_DESC_SIZE))
        } else {
            32
        };
        if bpg == 0 || bpg > bs * 8 || !bpg.is_multiple_of(8) {
            return Err(geom_err(format!("{bpg} blocks per group")));
        }
        if le32(sb, SB_LOG_CLUSTER_SIZE) != log_bs
            || u64::from(le32(sb, SB_CLUSTERS_PER_GROUP)) != bpg
        {
            return Err(geom_err("clusters differ from blocks".into()));
        }
        if ipg == 0 || u64::from(ipg) > bs * 8 || !ipg.is_multiple_of(8) {
            return Err(geom_err(format!("{ipg} inodes per group")));
        }
        if !(128..=bs as usize).contains(&inode_size) || !inode_size.is_power_of_two() {
            return Err(geom_err(format!("inode size {inode_size}")));
        }
        if first_data_block != u64::from(bs == 1024) {
            return Err(geom_err(format!(
                "first data block {first_data_block} with {bs}-byte blocks"
            )));
        }
        if is64 && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(geom_err(format!("group descriptor size {desc_size}")));
        }
        if blocks_count <= first_data_block {
            return Err(geom_err(format!("block count {blocks_count}")));
        }
        let groups = (blocks_count - first_data_block).div_ceil(bpg);
        if groups > u64::from(u32::MAX) || groups * u64::from(ipg) != u64::from(inodes_count) {
            return Err(geom_err(format!(
                "{inodes_count} inodes are not {groups} groups of {ipg}"
            )));
        }
        let first_ino = le32(sb, SB_FIRST_INO);
        if first_ino < 11 || first_ino > inodes_count {
            return Err(geom_err(format!("first inode {first_ino}")));
        }
        let gdt_blocks = groups.div_ceil(bs / desc_size as u64);
        let first_meta_bg = u64::from(le32(sb, SB_FIRST_META_BG));
        if incompat & INCOMPAT_META_BG != 0 {
            if first_meta_bg > gdt_blocks {
                return Err(geom_err(format!(
                    "first meta block group {first_meta_bg} is beyond the {gdt_blocks} descriptor blocks"
                )));
            }
            if compat & (COMPAT_RESIZE_INODE | COMPAT_SPARSE_SUPER2) != 0 {
                return Err(Error::Unsupported {
                    feature: "`meta_bg` together with `resize_inode` or `sparse_super2`".into(),
                });
            }
        }
        let hash_seed = [0, 4, 8, 12].map(|o| le32(sb, SB_HASH_SEED + o));
        Ok(Geo {
            bs,
            blocks_count,
            r_blocks,
            first_data_block,
            bpg,
            ipg,
            inode_size,
            groups: groups as u32,
            desc_size,
            gdt_blocks,
            reserved_gdt: u64::from(le16(sb, SB_RESERVED_GDT_BLOCKS)),
            first_meta_bg,
            first_ino,
            incompat,
            ro_compat,
            compat,
            seed: csum_seed(sb),
            hash_seed,
            hash_unsigned: le32(sb, SB_FLAGS) & FLAGS_UNSIGNED_HASH != 0,
            want_extra_isize: le16(sb, SB_WANT_EXTRA_ISIZE),
            backup_bgs: [le32(sb, SB_BACKUP_BGS), le32(sb, SB_BACKUP_BGS + 4)],
            uuid: sb[SB_UUID..SB_UUID + 16].try_into().expect("16 bytes"),
        })
    }

    /// The same filesystem grown to `blocks` blocks with `reserved_gdt` reserved descriptor
    /// blocks left: counts and descriptor blocks follow, everything else is kept.
    pub(crate) fn resized(&self, blocks: u64, reserved_gdt: u64) -> Geo {
        let groups = (blocks - self.first_data_block).div_ceil(self.bpg);
        Geo {
            blocks_count: blocks,
            groups: groups as u32,
            gdt_blocks: groups.div_ceil(self.descs_per_block()),
            reserved_gdt,
            ..self.clone()
        }
    }

    pub(crate) fn csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }
    pub(crate) fn gdt_csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_GDT_CSUM != 0
    }
    /// Do descriptors carry checksums (and may groups be marked uninitialised)?
    pub(crate) fn group_csum(&self) -> bool {
        self.csum() || self.gdt_csum()
    }
    pub(crate) fn is64(&self) -> bool {
        self.incompat & INCOMPAT_64BIT != 0
    }
    pub(crate) fn meta_bg(&self) -> bool {
        self.incompat & INCOMPAT_META_BG != 0
    }
    pub(crate) fn descs_per_block(&self) -> u64 {
        self.bs / self.desc_size as u64
    }
    /// Blocks of one group's inode table.
    pub(crate) fn itable_blocks(&self) -> u64 {
        (u64::from(self.ipg) * self.inode_size as u64).div_ceil(self.bs)
    }
    pub(crate) fn group_of(&self, block: u64) -> u32 {
        ((block - self.first_data_block) / self.bpg) as u32
    }
    pub(crate) fn group_first(&self, g: u64) -> u64 {
        self.first_data_block + g * self.bpg
    }
    pub(crate) fn blocks_in_group(&self, g: u64) -> u64 {
        (self.blocks_count - self.group_first(g)).min(self.bpg)
    }

    /// Does block group `g` hold a backup of the superblock (and of the descriptors)?
    pub(crate) fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == u64::from(self.backup_bgs[0]) || g == u64::from(self.backup_bgs[1]);
        }
        if g <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    /// Is descriptor block `i` stored after the superblock copies (rather than in its meta group)?
    fn old_style_desc_block(&self, i: u64) -> bool {
        !self.meta_bg() || i < self.first_meta_bg
    }
    /// Does group `g` carry the old-style descriptor blocks when it has a superblock copy?
    fn old_style_group(&self, g: u64) -> bool {
        !self.meta_bg() || g / self.descs_per_block() < self.first_meta_bg
    }
    /// With meta_bg: is `g` one of the three groups holding its meta group's descriptor block?
    fn meta_desc_group(&self, g: u64) -> bool {
        let dpb = self.descs_per_block();
        !self.old_style_group(g) && (g % dpb <= 1 || g % dpb == dpb - 1)
    }

    /// Blocks taken at the start of group `g` by the superblock, descriptor and reserved GDT
    /// blocks.
    pub(crate) fn base_meta_blocks(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        if self.old_style_group(g) {
            if sup == 0 {
                return 0;
            }
            let old_style = if self.meta_bg() {
                self.first_meta_bg
            } else {
                self.gdt_blocks
            };
            1 + old_style + self.reserved_gdt
        } else {
            sup + u64::from(self.meta_desc_group(g))
        }
    }

    /// Block holding the primary copy of descriptor block `i`.
    pub(crate) fn primary_gdt_block(&self, i: u64) -> u64 {
        if self.old_style_desc_block(i) {
            self.first_data_block + 1 + i
        } else {
            let g = i * self.descs_per_block();
            self.group_first(g) + u64::from(self.has_super(g))
        }
    }

    /// Every block holding a copy of descriptor block `i`, the primary first.
    pub(crate) fn gdt_block_locations(&self, i: u64) -> Vec<u64> {
        let groups = u64::from(self.groups);
        if self.old_style_desc_block(i) {
            (0..groups)
                .filter(|&g| self.has_super(g) && self.old_style_group(g))
                .map(|g| self.group_first(g) + 1 + i)
                .collect()
        } else {
            let dpb = self.descs_per_block();
            let mut v: Vec<u64> = Vec::with_capacity(3);
            for g in [i * dpb, i * dpb + 1, i * dpb + dpb - 1] {
                let loc = self.group_first(g) + u64::from(self.has_super(g));
                if g < groups && !v.contains(&loc) {
                    v.push(loc);
                }
            }
            v
        }
    }

    /// Group of inode `ino` and the byte offset of its slot inside that group's inode table.
    pub(crate) fn inode_slot(&self, ino: u32) -> Result<(u32, u64)> {
        if ino == 0 || u64::from(ino) > u64::from(self.groups) * u64::from(self.ipg) {
            return Err(corrupt(format!(
                "a reference to inode {ino}, which does not exist"
            )));
        }
        let g = (ino - 1) / self.ipg;
        let idx = u64::from((ino - 1) % self.ipg);
        Ok((g, idx * self.inode_size as u64))
    }
}

/// Refuses a filesystem that is not cleanly unmounted: journal recovery pending, orphans left
/// (in the list or, with orphan_file, flagged by orphan_present), or errors recorded.
fn check_state(sb: &[u8], incompat: u32, ro_compat: u32) -> Result<()> {
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err(Error::NeedsRecovery);
    }
    let state = le16(sb, SB_STATE);
    if state & STATE_ERROR != 0 {
        return Err(corrupt("the superblock records filesystem errors"));
    }
    if state & STATE_VALID == 0 {
        return Err(Error::NeedsRecovery);
    }
    if le32(sb, SB_LAST_ORPHAN) != 0 || ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
        return Err(Error::OrphansPending);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{put16, put32};

    /// A superblock of `groups` groups of 32768 4 KiB blocks and 8192 inodes.
    fn superblock(groups: u32, ro_compat: u32) -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        put16(&mut b, SB_MAGIC, EXT4_MAGIC);
        put32(&mut b, SB_REV_LEVEL, 1);
        put16(&mut b, SB_STATE, STATE_VALID);
        put32(&mut b, SB_LOG_BLOCK_SIZE, 2);
        put32(&mut b, SB_LOG_CLUSTER_SIZE, 2);
        put32(&mut b, SB_BLOCKS_PER_GROUP, 32768);
        put32(&mut b, SB_CLUSTERS_PER_GROUP, 32768);
        put32(&mut b, SB_INODES_PER_GROUP, 8192);
        put16(&mut b, SB_INODE_SIZE, 256);
        put32(&mut b, SB_FIRST_INO, 11);
        put32(&mut b, SB_BLOCKS_COUNT_LO, 32768 * groups);
        put32(&mut b, SB_INODES_COUNT, 8192 * groups);
        put32(&mut b, SB_FEATURE_INCOMPAT, INCOMPAT_EXTENTS);
        put32(&mut b, SB_FEATURE_RO_COMPAT, ro_compat);
        b
    }

    #[test]
    fn backup_groups() {
        let mut geo = Geo::parse(&superblock(1, RO_COMPAT_SPARSE_SUPER), 0).unwrap();
        let with: Vec<u64> = (0..60).filter(|&g| geo.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
        geo.ro_compat = 0;
        assert!((0..10).all(|g| geo.has_super(g)));
        geo.ro_compat = RO_COMPAT_SPARSE_SUPER;
        geo.compat = COMPAT_SPARSE_SUPER2;
        geo.backup_bgs = [1, 41];
        let two: Vec<u64> = (0..60).filter(|&g| geo.has_super(g)).collect();
        assert_eq!(two, [0, 1, 41]);
    }

    #[test]
    fn sparse_super_backup_groups() {
        let l = Geo::parse(&superblock(100, RO_COMPAT_SPARSE_SUPER), 0).unwrap();
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
        let mut sb = vec![0u8; SB_SIZE];
        assert!(matches!(
            Geo::parse(&sb, 7),
            Err(Error::NotExt4 { offset: 7 })
        ));
        sb = superblock(1, 0);
        put32(
            &mut sb,
            SB_FEATURE_INCOMPAT,
            INCOMPAT_EXTENTS | INCOMPAT_RECOVER,
        );
        assert!(matches!(Geo::parse(&sb, 0), Err(Error::NeedsRecovery)));
        put16(&mut sb, SB_STATE, 0);
        put32(&mut sb, SB_FEATURE_INCOMPAT, INCOMPAT_EXTENTS);
        assert!(matches!(Geo::parse(&sb, 0), Err(Error::NeedsRecovery)));
        put16(&mut sb, SB_STATE, STATE_VALID);
        put32(&mut sb, SB_FEATURE_INCOMPAT, INCOMPAT_EXTENTS | 0x8000_0000);
        assert!(matches!(Geo::parse(&sb, 0), Err(Error::Unsupported { .. })));
    }
}
