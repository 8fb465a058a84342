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
//! The filesystem is read and checked by the crate's `layout` module, the same code that opens
//! it for the writer: the same geometry, checksums, state checks and feature policy.

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

use crate::disk::{Dev, Storage, le16, le32, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::fs::{clear_bit, get_bit, set_bit};
use crate::layout::desc::{self, Field};
use crate::layout::*;

/// The group descriptor table in memory: one `ds`-byte descriptor per group.
struct Gdt {
    buf: Vec<u8>,
    ds: usize,
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
    fn get(&self, g: u64, f: Field) -> u64 {
        desc::get(self.desc(g), f)
    }
    fn set(&mut self, g: u64, f: Field, v: u64) {
        desc::set(self.desc_mut(g), f, v);
    }
    fn flags(&self, g: u64) -> u16 {
        le16(self.desc(g), BG_FLAGS)
    }
    fn set_flags(&mut self, g: u64, f: u16) {
        put16(self.desc_mut(g), BG_FLAGS, f);
    }
}

/// Applies resize2fs's sizing rules to a requested block count: a trailing partial group too
/// small to hold its own metadata (plus 50 blocks of slack) is dropped, and the inode count must
/// fit in 32 bits.
fn plan_blocks(l: &Geo, requested: u64) -> Result<u64> {
    let mut blocks = requested;
    loop {
        if blocks <= l.first_data_block {
            return Err(Error::CannotGrow {
                why: "requested size is too small".into(),
            });
        }
        let groups = (blocks - l.first_data_block).div_ceil(l.bpg);
        let desc_blocks = groups.div_ceil(l.descs_per_block());
        let mut overhead = 2 + l.itable_blocks();
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
        let rem = (blocks - l.first_data_block) % l.bpg;
        if groups == 1 && rem != 0 && rem < overhead {
            return Err(Error::CannotGrow {
                why: "the filesystem would be too small to hold its own metadata".into(),
            });
        }
        if groups > 1 && rem != 0 && rem < overhead + 50 {
            blocks -= rem;
            continue;
        }
        if groups * u64::from(l.ipg) > u64::from(u32::MAX) {
            let fewer = l.bpg * (groups - 1) + l.first_data_block;
            if (groups - 1) * u64::from(l.ipg) > u64::from(u32::MAX) {
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
    Ok(grow_in(&dev, new_len, now, true)?.0)
}

/// The filesystem size in bytes (a whole number of blocks) to pass to [`grow_fs`] so that the
/// filesystem at byte `offset` of `storage` then has at least `want_free` bytes of free space
/// usable by the writer ([`crate::Ext4Fs::free_bytes`]: free blocks minus those reserved for
/// root). The new groups' own metadata (bitmaps, inode tables, backup superblocks and
/// descriptors) and the reserved blocks that grow with the filesystem are accounted for, as is
/// resize2fs's dropping of a trailing group too small for its metadata. Returns the current
/// size if the space is already there. Nothing is written.
pub fn size_for_free(storage: impl Storage, offset: u64, want_free: u64) -> Result<u64> {
    let mut dev = Dev {
        file: Box::new(storage),
        offset,
        len: SB_OFFSET + SB_SIZE as u64,
    };
    let sb = dev.read_vec(SB_OFFSET, SB_SIZE, "reading the ext4 superblock")?;
    let l = Geo::parse(&sb, offset)?;
    let bs = l.bs;
    let mut len = l.blocks_count * bs;
    // Every try adds at least this much, so that a dropped trailing group is soon passed.
    let min_step = 16 * bs;
    for _ in 0..4096 {
        dev.len = len;
        let (g, reserved) = grow_in(&dev, len, 0, false)?;
        let free = g.free_blocks_after.saturating_sub(reserved) * bs;
        if free >= want_free {
            return Ok(len);
        }
        len += ((want_free - free).div_ceil(bs) * bs).max(min_step);
    }
    Err(Error::CannotGrow {
        why: format!("no size found that leaves {want_free} bytes free"),
    })
}

/// Plans growing the filesystem of `dev` to `new_len` bytes and, if `write`, does it. Returns
/// what changes and the new count of blocks reserved for root.
fn grow_in(dev: &Dev, new_len: u64, now: i64, write: bool) -> Result<(FsGrowth, u64)> {
    let mut sb = dev.read_vec(SB_OFFSET, SB_SIZE, "reading the ext4 superblock")?;
    let l = Geo::parse(&sb, dev.offset)?;
    // Checked before the descriptors are read: it also bounds how much a corrupt block
    // count could make us read.
    let requested = new_len / l.bs;
    if requested < l.blocks_count {
        return Err(Error::Shrink {
            current: l.blocks_count,
            requested,
        });
    }
    let mut gdt = Gdt {
        buf: read_gdt(dev, &l)?,
        ds: l.desc_size,
    };
    check_journal(dev, &l, &sb, &gdt.buf)?;
    let old_groups = u64::from(l.groups);

    let free_before: u64 = (0..old_groups).map(|g| gdt.get(g, BG_FREE_BLOCKS)).sum();
    let max_blocks = if l.is64() {
        1u64 << 48
    } else {
        u64::from(u32::MAX)
    };
    let requested = if requested > max_blocks {
        if !l.is64() {
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
        old_blocks: l.blocks_count,
        new_blocks: l.blocks_count,
        old_groups: l.groups,
        new_groups: l.groups,
        free_blocks_before: free_before,
        free_blocks_after: free_before,
    };
    if new_blocks <= l.blocks_count {
        return Ok((unchanged, l.r_blocks));
    }
    let new_groups = (new_blocks - l.first_data_block).div_ceil(l.bpg);
    let new_gdt = new_groups.div_ceil(l.descs_per_block());
    let extra_gdt = new_gdt - l.gdt_blocks;
    let has_resize_inode = l.compat & COMPAT_RESIZE_INODE != 0;
    if extra_gdt > 0 && !l.meta_bg() && (!has_resize_inode || l.reserved_gdt < extra_gdt) {
        let reachable_groups = if has_resize_inode {
            (l.gdt_blocks + l.reserved_gdt) * l.descs_per_block()
        } else {
            l.gdt_blocks * l.descs_per_block()
        };
        let reachable = (l.first_data_block + reachable_groups * l.bpg) * l.bs;
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
    let mut writes: Vec<Write> = Vec::new();
    let mut zero_ranges: Vec<(u64, u64)> = Vec::new();

    // The resize inode: validated now, rebuilt below.
    let resize = if has_resize_inode {
        let (g, at) = l.inode_slot(RESIZE_INO)?;
        let pos = gdt.get(g.into(), BG_INODE_TABLE) * l.bs + at;
        let inode = dev.read_vec(pos, l.inode_size, "reading the resize inode")?;
        check_inode(&l, RESIZE_INO, &inode)?;
        let dind = u64::from(le32(&inode, I_BLOCK + 4 * DIND_BLOCK));
        let others_zero = (0..N_BLOCKS)
            .filter(|&i| i != DIND_BLOCK)
            .all(|i| le32(&inode, I_BLOCK + 4 * i) == 0);
        if le16(&inode, I_MODE) & S_IFMT != S_IFREG
            || !others_zero
            || dind < l.first_data_block
            || dind >= l.blocks_count
        {
            return Err(corrupt("the resize inode (inode 7) is not valid"));
        }
        if le32(&inode, I_FLAGS) & HUGE_FILE_FL != 0 {
            return Err(Error::Unsupported {
                feature: "a resize inode with the huge_file flag".into(),
            });
        }
        Some((pos, inode, dind))
    } else {
        None
    };

    // With sparse_super2 the second backup follows the last group, as resize2fs moves it.
    let mut nl = l.resized(new_blocks, new_reserved);
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
    let mut changed_groups = vec![old_groups - 1];
    if let Some(g) = dropped_backup
        && g != old_groups - 1
    {
        changed_groups.push(g);
    }
    for g in changed_groups {
        let old_n = l.blocks_in_group(g);
        let new_n = nl.blocks_in_group(g);
        let flags = gdt.flags(g);
        let bb = gdt.get(g, BG_BLOCK_BITMAP);
        let mut bitmap = if l.group_csum() && flags & BG_BLOCK_UNINIT != 0 {
            // Materialise what an uninitialised bitmap stands for.
            let mut b = vec![0u8; l.bs as usize];
            let start = l.group_first(g);
            let base = l.base_meta_blocks(g);
            for i in 0..base {
                set_bit(&mut b, i as usize);
            }
            let it = gdt.get(g, BG_INODE_TABLE);
            let own = [gdt.get(g, BG_BLOCK_BITMAP), gdt.get(g, BG_INODE_BITMAP)]
                .into_iter()
                .chain(it..it + l.itable_blocks());
            for blk in own {
                if blk >= start && blk < start + old_n {
                    set_bit(&mut b, (blk - start) as usize);
                }
            }
            for i in old_n..l.bs * 8 {
                set_bit(&mut b, i as usize);
            }
            b
        } else {
            let b = dev.read_vec(bb * l.bs, l.bs as usize, "reading a block bitmap")?;
            let nbytes = (l.bpg / 8) as usize;
            if !bitmap_csum_ok(&l, gdt.desc(g), &b, nbytes, BG_BLOCK_BITMAP_CSUM) {
                return Err(corrupt(format!(
                    "block bitmap of group {g} checksum mismatch"
                )));
            }
            b
        };
        let free_in_bitmap = (0..old_n)
            .filter(|&i| !get_bit(&bitmap, i as usize))
            .count() as u64;
        if free_in_bitmap != gdt.get(g, BG_FREE_BLOCKS) {
            return Err(corrupt(format!(
                "group {g} counts {} free blocks but its bitmap has {free_in_bitmap}",
                gdt.get(g, BG_FREE_BLOCKS)
            )));
        }
        for i in old_n..new_n {
            clear_bit(&mut bitmap, i as usize);
        }
        for i in new_n..l.bs * 8 {
            set_bit(&mut bitmap, i as usize);
        }
        if dropped_backup == Some(g) {
            for i in 0..l.base_meta_blocks(g) {
                if !get_bit(&bitmap, i as usize) {
                    return Err(corrupt(format!(
                        "backup superblock area of group {g} is marked free"
                    )));
                }
                clear_bit(&mut bitmap, i as usize);
            }
        }
        let free = (0..new_n)
            .filter(|&i| !get_bit(&bitmap, i as usize))
            .count() as u64;
        gdt.set(g, BG_FREE_BLOCKS, free);
        gdt.set_flags(g, flags & !BG_BLOCK_UNINIT);
        let nbytes = (l.bpg / 8) as usize;
        store_bitmap_csum(&l, gdt.desc_mut(g), &bitmap, nbytes, BG_BLOCK_BITMAP_CSUM);
        set_desc_checksum(&l, g as u32, gdt.desc_mut(g));
        writes.push(Write {
            pos: bb * l.bs,
            data: bitmap,
            what: "writing a block bitmap",
        });
    }

    // 2. New groups, each with its bitmaps and inode table inside itself.
    gdt.buf.resize((new_gdt * l.bs) as usize, 0);
    for g in old_groups..new_groups {
        let start = l.group_first(g);
        let n = nl.blocks_in_group(g);
        let base = nl.base_meta_blocks(g);
        let bb = start + base;
        let ib = bb + 1;
        let it = bb + 2;
        let used = base + 2 + l.itable_blocks();
        if used > n {
            return Err(Error::CannotGrow {
                why: format!(
                    "group {g} would have {n} blocks, fewer than its {used} metadata blocks"
                ),
            });
        }
        let mut bbm = vec![0u8; l.bs as usize];
        for i in (0..used).chain(n..l.bs * 8) {
            set_bit(&mut bbm, i as usize);
        }
        let mut ibm = vec![0xFFu8; l.bs as usize];
        ibm[..(l.ipg / 8) as usize].fill(0);
        gdt.desc_mut(g).fill(0);
        gdt.set(g, BG_BLOCK_BITMAP, bb);
        gdt.set(g, BG_INODE_BITMAP, ib);
        gdt.set(g, BG_INODE_TABLE, it);
        gdt.set(g, BG_FREE_BLOCKS, n - used);
        gdt.set(g, BG_FREE_INODES, u64::from(l.ipg));
        gdt.set(g, BG_USED_DIRS, 0);
        if l.group_csum() {
            // Inode table left for lazy initialisation: ITABLE_ZEROED stays clear.
            let mut flags = BG_INODE_UNINIT;
            if g + 1 < new_groups {
                flags |= BG_BLOCK_UNINIT;
            }
            gdt.set_flags(g, flags);
            gdt.set(g, BG_ITABLE_UNUSED, u64::from(l.ipg));
        } else {
            zero_ranges.push((it * l.bs, l.itable_blocks() * l.bs));
        }
        let d = gdt.desc_mut(g);
        store_bitmap_csum(&l, d, &bbm, (l.bpg / 8) as usize, BG_BLOCK_BITMAP_CSUM);
        store_bitmap_csum(&l, d, &ibm, (l.ipg / 8) as usize, BG_INODE_BITMAP_CSUM);
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
        set_desc_checksum(&l, g as u32, gdt.desc_mut(g));
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
            let pblk = l.first_data_block + 1 + new_gdt + j;
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
        set_inode_csum(&l, RESIZE_INO, &mut inode);
        writes.push(Write {
            pos,
            data: inode,
            what: "writing the resize inode",
        });
    }

    // 4. Superblock counts.
    let free_after: u64 = (0..new_groups).map(|g| gdt.get(g, BG_FREE_BLOCKS)).sum();
    let free_inodes: u64 = (0..new_groups).map(|g| gdt.get(g, BG_FREE_INODES)).sum();
    let percent = (l.r_blocks as f64 * 100.0) / l.blocks_count as f64;
    let new_r = (percent * new_blocks as f64 / 100.0) as u64;
    put32(&mut sb, SB_BLOCKS_COUNT_LO, new_blocks as u32);
    put32(&mut sb, SB_R_BLOCKS_COUNT_LO, new_r as u32);
    put32(&mut sb, SB_FREE_BLOCKS_LO, free_after as u32);
    if l.is64() {
        put32(&mut sb, SB_BLOCKS_COUNT_HI, (new_blocks >> 32) as u32);
        put32(&mut sb, SB_R_BLOCKS_COUNT_HI, (new_r >> 32) as u32);
        put32(&mut sb, SB_FREE_BLOCKS_HI, (free_after >> 32) as u32);
    }
    put32(
        &mut sb,
        SB_INODES_COUNT,
        (new_groups * u64::from(l.ipg)) as u32,
    );
    put32(&mut sb, SB_FREE_INODES, free_inodes as u32);
    put16(&mut sb, SB_RESERVED_GDT_BLOCKS, new_reserved as u16);
    put32(&mut sb, SB_BACKUP_BGS, nl.backup_bgs[0]);
    put32(&mut sb, SB_BACKUP_BGS + 4, nl.backup_bgs[1]);
    // The kernel recomputes the overhead when this is zero, as it is after resize2fs.
    put32(&mut sb, SB_OVERHEAD_CLUSTERS, 0);
    set_write_time(&mut sb, now.max(0) as u64);

    // 5. Backups of the superblock and the descriptor blocks.
    for g in 1..new_groups {
        if !nl.has_super(g) {
            continue;
        }
        let start = l.group_first(g);
        let mut copy = sb.clone();
        put16(&mut copy, SB_BLOCK_GROUP_NR, g as u16);
        let state = le16(&copy, SB_STATE);
        put16(&mut copy, SB_STATE, state & !STATE_VALID);
        if l.csum() {
            set_sb_checksum(&mut copy);
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
        for (k, loc) in nl.gdt_block_locations(i).into_iter().enumerate() {
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

    let growth = FsGrowth {
        old_blocks: l.blocks_count,
        new_blocks,
        old_groups: l.groups,
        new_groups: nl.groups,
        free_blocks_before: free_before,
        free_blocks_after: free_after,
    };
    if !write {
        return Ok((growth, new_r));
    }

    // 6. Everything new is in place: publish it through the primary GDT, then the superblock.
    if l.csum() {
        set_sb_checksum(&mut sb);
    }
    for (pos, len) in zero_ranges {
        write_zeros(dev, pos, len)?;
    }
    for w in &writes {
        dev.write_at(w.pos, &w.data, w.what)?;
    }
    for w in &primary {
        dev.write_at(w.pos, &w.data, w.what)?;
    }
    dev.write_at(SB_OFFSET, &sb, "writing the superblock")?;
    dev.sync("flushing the grown filesystem")?;
    Ok((growth, new_r))
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
