//! Filesystem handle: superblock, group descriptors, bitmaps, block cache,
//! allocation and the public operations.

use crate::disk::{Dev, Storage, le16, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::layout::*;
use crate::{Kind, Meta, Stat};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Longest run one remembered mapping can cover (an extent's maximum length).
const MAX_RUN: u64 = 32768;

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
    /// Blocks seen mapped by inodes read this session (start -> (length, inode)), minus those
    /// freed since: a guard against bitmaps that wrongly call them free.
    pub(crate) known_used: BTreeMap<u64, (u64, u32)>,
    /// Inodes freed this session: they may be handed out again despite their stale mode.
    pub(crate) freed_inodes: HashSet<u32>,
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
        let sb = dev.read_vec(SB_OFFSET, SB_SIZE, "reading the superblock")?;
        let geo = Geo::parse(&sb, offset)?;
        let bs = geo.bs;
        if geo.blocks_count.saturating_mul(bs) > len {
            return Err(corrupt(format!(
                "the filesystem ({} bytes) is larger than its partition ({len} bytes)",
                geo.blocks_count.saturating_mul(bs)
            )));
        }
        let gdt_raw = read_gdt(&dev, &geo)?;
        check_journal(&dev, &geo, &sb, &gdt_raw)?;
        let ds = geo.desc_size;
        let groups_v: Vec<Group> = gdt_raw
            .chunks_exact(ds)
            .take(geo.groups as usize)
            .map(|raw| Group {
                block_bitmap: desc::get(raw, BG_BLOCK_BITMAP),
                inode_bitmap: desc::get(raw, BG_INODE_BITMAP),
                inode_table: desc::get(raw, BG_INODE_TABLE),
                free_blocks: desc::get(raw, BG_FREE_BLOCKS) as u32,
                free_inodes: desc::get(raw, BG_FREE_INODES) as u32,
                used_dirs: desc::get(raw, BG_USED_DIRS) as u32,
                flags: le16(raw, BG_FLAGS),
                itable_unused: desc::get(raw, BG_ITABLE_UNUSED) as u32,
                raw: raw.to_vec(),
                dirty: false,
            })
            .collect();
        let free_blocks = groups_v.iter().map(|g| g.free_blocks as u64).sum();
        let free_inodes = groups_v.iter().map(|g| g.free_inodes as u64).sum();
        let groups = geo.groups;
        let alloc_cursor = geo.first_data_block;
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
            alloc_cursor,
            free_blocks,
            free_inodes,
            now,
            gen_state: 0,
            iobuf: Vec::new(),
            known_used: BTreeMap::new(),
            freed_inodes: HashSet::new(),
        };
        fs.gen_state = (fs.now as u64) ^ (fs.geo.seed as u64) << 17 ^ 0x9E37_79B9_7F4A_7C15;
        Ok(fs)
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

    pub(crate) fn load_bbm(&mut self, g: u32) -> Result<()> {
        if self.bbm[g as usize].is_some() {
            return Ok(());
        }
        let geo = &self.geo;
        let bs = geo.bs as usize;
        let grp = &self.groups[g as usize];
        let mut bits = vec![0u8; bs];
        if geo.group_csum() && grp.flags & BG_BLOCK_UNINIT != 0 {
            let first = geo.group_first(g.into());
            let n = geo.blocks_in_group(g.into());
            for i in 0..geo.base_meta_blocks(g.into()).min(n) {
                set_bit(&mut bits, i as usize);
            }
            let itb = geo.itable_blocks();
            for og in &self.groups {
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
                BG_BLOCK_BITMAP_CSUM,
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
        at: desc::Field,
        what: &str,
    ) -> Result<()> {
        self.dev
            .read_at(loc * self.geo.bs, bits, "reading a bitmap")?;
        let desc = &self.groups[g as usize].raw;
        if bitmap_csum_ok(&self.geo, desc, bits, nbytes as usize, at) {
            Ok(())
        } else {
            Err(corrupt(format!(
                "{what} bitmap of group {g} checksum mismatch"
            )))
        }
    }

    pub(crate) fn load_ibm(&mut self, g: u32) -> Result<()> {
        if self.ibm[g as usize].is_some() {
            return Ok(());
        }
        let geo = &self.geo;
        let bs = geo.bs as usize;
        let grp = &self.groups[g as usize];
        let mut bits = vec![0u8; bs];
        if geo.group_csum() && grp.flags & BG_INODE_UNINIT != 0 {
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
                BG_INODE_BITMAP_CSUM,
                "inode",
            )?;
        }
        self.ibm[g as usize] = Some(Bitmap { bits, dirty: false });
        Ok(())
    }

    /// Marks `[start, start+len)` allocated (all must be free).
    pub(crate) fn mark_blocks(&mut self, start: u64, len: u64, used: bool) -> Result<()> {
        if !used {
            self.forget_used(start, len);
        }
        let mut b = start;
        while b < start + len {
            let g = self.geo.group_of(b);
            self.load_bbm(g)?;
            let gfirst = self.geo.group_first(g.into());
            let gend = (gfirst + self.geo.blocks_in_group(g.into())).min(start + len);
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
            self.check_not_in_use(s, n)?;
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
            if let Err(e) = self.check_not_in_use(s, l) {
                for (s, l) in runs {
                    self.mark_blocks(s, l, false)?;
                }
                return Err(e);
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

    /// Remembers that inode `ino` maps `[start, start+len)`.
    pub(crate) fn note_used(&mut self, start: u64, len: u64, ino: u32) {
        let e = self.known_used.entry(start).or_insert((len, ino));
        if e.0 < len {
            *e = (len, ino);
        }
    }

    /// Forgets the remembered mappings that overlap `[start, start+len)` (they were freed).
    fn forget_used(&mut self, start: u64, len: u64) {
        let lo = start.saturating_sub(MAX_RUN);
        let gone: Vec<u64> = self
            .known_used
            .range(lo..start + len)
            .filter(|(s, (l, _))| *s + *l > start)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.known_used.remove(&s);
        }
    }

    /// Refuses to hand out `[start, start+len)` if an inode read this session maps part of it:
    /// the block bitmap calls those blocks free, but they are in use.
    fn check_not_in_use(&self, start: u64, len: u64) -> Result<()> {
        let lo = start.saturating_sub(MAX_RUN);
        if let Some((s, (l, ino))) = self
            .known_used
            .range(lo..start + len)
            .find(|(s, (l, _))| *s + *l > start)
        {
            let b = start.max(*s);
            debug_assert!(b < s + l);
            return Err(corrupt(format!(
                "block {b} is marked free in the block bitmap but inode {ino} uses it (the bitmaps are wrong)"
            )));
        }
        Ok(())
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
            let gfirst = self.geo.group_first(g.into());
            let n = self.geo.blocks_in_group(g.into());
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
            let gfirst = self.geo.group_first(g.into());
            let n = self.geo.blocks_in_group(g.into());
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
            self.check_inode_free(g, i as u32)?;
            let bm = self.ibm[g as usize].as_mut().expect("loaded");
            set_bit(&mut bm.bits, i);
            bm.dirty = true;
            let csum_on = self.geo.group_csum();
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

    /// Refuses to hand out inode slot `i` of group `g` if the inode there still looks alive
    /// (a link count, or a mode without a deletion time): the inode bitmap is wrong. Slots of
    /// never-initialised tables may hold garbage and are not looked at, nor are inodes freed
    /// in this session.
    fn check_inode_free(&mut self, g: u32, i: u32) -> Result<()> {
        let ino = g * self.geo.ipg + i + 1;
        let grp = &self.groups[g as usize];
        if grp.flags & BG_INODE_UNINIT != 0
            || (self.geo.group_csum() && i >= self.geo.ipg - grp.itable_unused.min(self.geo.ipg))
            || self.freed_inodes.contains(&ino)
        {
            return Ok(());
        }
        let (blk, off) = self.inode_loc(ino)?;
        let raw = &self.block(blk)?[off..off + GOOD_OLD_INODE_SIZE];
        let (mode, links, dtime) = (
            le16(raw, I_MODE),
            le16(raw, I_LINKS_COUNT),
            crate::disk::le32(raw, I_DTIME),
        );
        if links != 0 || (mode != 0 && dtime == 0) {
            return Err(corrupt(format!(
                "inode {ino} is marked free in the inode bitmap but is still in use (mode {mode:o}, {links} links; the bitmaps are wrong)"
            )));
        }
        Ok(())
    }

    pub(crate) fn free_inode(&mut self, ino: u32, is_dir: bool) -> Result<()> {
        self.freed_inodes.insert(ino);
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
                    BG_BLOCK_BITMAP_CSUM,
                ),
                (
                    self.ibm[g].as_mut(),
                    grp.inode_bitmap,
                    u64::from(self.geo.ipg / 8),
                    BG_INODE_BITMAP_CSUM,
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
            desc::set(r, BG_FREE_BLOCKS, grp.free_blocks.into());
            desc::set(r, BG_FREE_INODES, grp.free_inodes.into());
            desc::set(r, BG_USED_DIRS, grp.used_dirs.into());
            put16(r, BG_FLAGS, grp.flags);
            desc::set(r, BG_ITABLE_UNUSED, grp.itable_unused.into());
            set_desc_checksum(&self.geo, g as u32, r);
            self.gdt_raw[g * ds..(g + 1) * ds].copy_from_slice(r);
            grp.dirty = false;
        }
        if any {
            // Each descriptor block to its primary copy (with meta_bg, in its meta group).
            for (i, block) in self.gdt_raw.chunks_exact(bs as usize).enumerate() {
                let at = self.geo.primary_gdt_block(i as u64);
                self.dev
                    .write_at(at * bs, block, "writing the group descriptors")?;
            }
        }
        // Superblock.
        let sb = &mut self.sb;
        put32(sb, SB_FREE_BLOCKS_LO, self.free_blocks as u32);
        if self.geo.is64() {
            put32(sb, SB_FREE_BLOCKS_HI, (self.free_blocks >> 32) as u32);
        }
        put32(sb, SB_FREE_INODES, self.free_inodes as u32);
        set_write_time(sb, self.now as u64);
        if self.geo.csum() {
            set_sb_checksum(sb);
        }
        self.dev
            .write_at(SB_OFFSET, &self.sb, "writing the superblock")?;
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
        let mut cur = ROOT_INO;
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
