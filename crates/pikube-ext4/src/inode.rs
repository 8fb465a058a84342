//! Inodes: reading and writing (with checksums), block maps (extent trees and
//! legacy indirect maps), building extent trees, file data, files, symlinks
//! and removal.

use crate::csum::crc32c_raw;
use crate::disk::{le16, le32, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::fs::Ext4Fs;
use crate::layout::*;
use crate::{Kind, Meta, Stat};

const MAX_EXTENT_LEN: u64 = 32768;

#[derive(Clone)]
pub(crate) struct Inode {
    pub(crate) raw: Vec<u8>,
}

impl Inode {
    pub(crate) fn mode(&self) -> u16 {
        le16(&self.raw, I_MODE)
    }
    pub(crate) fn kind(&self) -> Kind {
        match self.mode() & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
    pub(crate) fn size(&self) -> u64 {
        le32(&self.raw, I_SIZE_LO) as u64 | (le32(&self.raw, I_SIZE_HI) as u64) << 32
    }
    pub(crate) fn set_size(&mut self, s: u64) {
        put32(&mut self.raw, I_SIZE_LO, s as u32);
        put32(&mut self.raw, I_SIZE_HI, (s >> 32) as u32);
    }
    pub(crate) fn links(&self) -> u16 {
        le16(&self.raw, I_LINKS_COUNT)
    }
    pub(crate) fn set_links(&mut self, n: u16) {
        put16(&mut self.raw, I_LINKS_COUNT, n);
    }
    pub(crate) fn flags(&self) -> u32 {
        le32(&self.raw, I_FLAGS)
    }
    pub(crate) fn set_flags(&mut self, f: u32) {
        put32(&mut self.raw, I_FLAGS, f);
    }
    pub(crate) fn generation(&self) -> u32 {
        le32(&self.raw, I_GENERATION)
    }
    pub(crate) fn file_acl(&self) -> u64 {
        le32(&self.raw, I_FILE_ACL_LO) as u64 | (le16(&self.raw, I_FILE_ACL_HI) as u64) << 32
    }
    pub(crate) fn extra_isize(&self) -> usize {
        if self.raw.len() > GOOD_OLD_INODE_SIZE {
            le16(&self.raw, I_EXTRA_ISIZE) as usize
        } else {
            0
        }
    }
    fn set_time(&mut self, lo: usize, extra: Option<usize>, secs: i64) {
        put32(&mut self.raw, lo, secs as u32);
        if let Some(x) = extra
            && self.raw.len() > GOOD_OLD_INODE_SIZE
            && GOOD_OLD_INODE_SIZE + self.extra_isize() >= x + 4
        {
            let epoch = ((secs - (secs as i32 as i64)) >> 32) as u32 & 3;
            put32(&mut self.raw, x, epoch);
        }
    }
    fn get_time(&self, lo: usize, extra: usize) -> i64 {
        let base = le32(&self.raw, lo) as i32 as i64;
        if self.raw.len() > GOOD_OLD_INODE_SIZE
            && GOOD_OLD_INODE_SIZE + self.extra_isize() >= extra + 4
        {
            base + (((le32(&self.raw, extra) & 3) as i64) << 32)
        } else {
            base
        }
    }
    pub(crate) fn set_mtime(&mut self, t: i64) {
        self.set_time(I_MTIME, Some(I_MTIME_EXTRA), t);
    }
    pub(crate) fn set_ctime(&mut self, t: i64) {
        self.set_time(I_CTIME, Some(I_CTIME_EXTRA), t);
    }
    pub(crate) fn set_atime(&mut self, t: i64) {
        self.set_time(I_ATIME, Some(I_ATIME_EXTRA), t);
    }
    pub(crate) fn set_owner(&mut self, meta: &Meta, type_bits: u16) {
        put16(&mut self.raw, I_MODE, type_bits | (meta.mode & 0o7777));
        put16(&mut self.raw, I_UID, meta.uid as u16);
        put16(&mut self.raw, I_UID_HI, (meta.uid >> 16) as u16);
        put16(&mut self.raw, I_GID, meta.gid as u16);
        put16(&mut self.raw, I_GID_HI, (meta.gid >> 16) as u16);
        self.set_mtime(meta.mtime);
    }
    pub(crate) fn set_iblocks(&mut self, fs_blocks: u64, bs: u64) {
        let sectors = fs_blocks * (bs / 512);
        put32(&mut self.raw, I_BLOCKS_LO, sectors as u32);
        put16(&mut self.raw, I_BLOCKS_HI, (sectors >> 32) as u16);
        let f = self.flags() & !HUGE_FILE_FL;
        self.set_flags(f);
    }
    pub(crate) fn stat(&self) -> Stat {
        Stat {
            kind: self.kind(),
            mode: self.mode() & 0o7777,
            uid: le16(&self.raw, I_UID) as u32 | (le16(&self.raw, I_UID_HI) as u32) << 16,
            gid: le16(&self.raw, I_GID) as u32 | (le16(&self.raw, I_GID_HI) as u32) << 16,
            size: self.size(),
            mtime: self.get_time(I_MTIME, I_MTIME_EXTRA),
            links: self.links(),
        }
    }
    pub(crate) fn iblock(&self) -> &[u8] {
        &self.raw[I_BLOCK..I_BLOCK + I_BLOCK_LEN]
    }
    pub(crate) fn iblock_mut(&mut self) -> &mut [u8] {
        &mut self.raw[I_BLOCK..I_BLOCK + I_BLOCK_LEN]
    }
    pub(crate) fn is_fast_symlink(&self) -> bool {
        self.kind() == Kind::Symlink
            && self.size() < I_BLOCK_LEN as u64
            && self.flags() & EXTENTS_FL == 0
    }
}

/// One mapped run of an inode: logical block, physical block, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ext {
    pub(crate) logical: u64,
    pub(crate) phys: u64,
    pub(crate) len: u64,
    pub(crate) uninit: bool,
}

/// The block map of an inode: data runs plus the mapping's own blocks
/// (extent tree nodes or indirect blocks).
#[derive(Default)]
pub(crate) struct Map {
    pub(crate) extents: Vec<Ext>,
    pub(crate) meta: Vec<u64>,
}

impl Map {
    pub(crate) fn data_blocks(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
    pub(crate) fn phys_of(&self, lb: u64) -> Option<u64> {
        let i = self.extents.partition_point(|e| e.logical + e.len <= lb);
        let e = self.extents.get(i)?;
        (e.logical <= lb && !e.uninit).then(|| e.phys + (lb - e.logical))
    }
}

/// Number of extent tree blocks needed for `n` extents (0 if they fit in
/// the inode).
pub(crate) fn tree_blocks_for(n: u64, bs: u64) -> u64 {
    if n <= 4 {
        return 0;
    }
    let per = (bs - 12) / 12;
    let mut total = 0;
    let mut level = n;
    loop {
        let blocks = level.div_ceil(per);
        total += blocks;
        if blocks <= 4 {
            return total;
        }
        level = blocks;
    }
}

impl Ext4Fs {
    pub(crate) fn inode_loc(&self, ino: u32) -> Result<(u64, usize)> {
        let (g, byte) = self.geo.inode_slot(ino)?;
        let blk = self.groups[g as usize].inode_table + byte / self.geo.bs;
        Ok((blk, (byte % self.geo.bs) as usize))
    }

    pub(crate) fn read_inode(&mut self, ino: u32) -> Result<Inode> {
        let (blk, off) = self.inode_loc(ino)?;
        let isz = self.geo.inode_size;
        let raw = self.block(blk)?[off..off + isz].to_vec();
        check_inode(&self.geo, ino, &raw)?;
        Ok(Inode { raw })
    }

    pub(crate) fn write_inode(&mut self, ino: u32, inode: &mut Inode) -> Result<()> {
        set_inode_csum(&self.geo, ino, &mut inode.raw);
        let (blk, off) = self.inode_loc(ino)?;
        let isz = self.geo.inode_size;
        let b = self.block_mut(blk)?;
        b[off..off + isz].copy_from_slice(&inode.raw);
        Ok(())
    }

    /// A fresh in-memory inode (not yet written).
    pub(crate) fn new_inode(&mut self, type_bits: u16, meta: &Meta) -> Inode {
        let isz = self.geo.inode_size;
        let mut inode = Inode { raw: vec![0; isz] };
        if isz > GOOD_OLD_INODE_SIZE {
            let mut want = self.geo.want_extra_isize as usize;
            if want < 32 {
                want = 32;
            }
            want = want.min(isz - GOOD_OLD_INODE_SIZE);
            put16(&mut inode.raw, I_EXTRA_ISIZE, want as u16);
        }
        inode.set_owner(meta, type_bits);
        let now = self.now;
        inode.set_atime(now);
        inode.set_ctime(now);
        // The creation time lives in the extra fields: 128-byte inodes (and extra sizes too
        // small to cover it) have none, so there is nothing to stamp.
        if GOOD_OLD_INODE_SIZE + inode.extra_isize() >= I_CRTIME + 4 {
            inode.set_time(I_CRTIME, Some(I_CRTIME_EXTRA), now);
        }
        let g = self.next_generation();
        put32(&mut inode.raw, I_GENERATION, g);
        inode
    }

    // ---------- block maps ----------

    pub(crate) fn inode_map(&mut self, ino: u32, inode: &Inode) -> Result<Map> {
        let mut map = Map::default();
        let kind = inode.kind();
        if !matches!(kind, Kind::File | Kind::Dir | Kind::Symlink) || inode.is_fast_symlink() {
            return Ok(map);
        }
        if inode.flags() & INLINE_DATA_FL != 0 {
            return Err(Error::Unsupported {
                feature: format!("inline data in inode {ino}"),
            });
        }
        if inode.flags() & EXTENTS_FL != 0 {
            let root = inode.iblock().to_vec();
            self.walk_extents(ino, inode.generation(), &root, None, 0, &mut map)?;
            map.extents.sort_by_key(|e| e.logical);
            for w in map.extents.windows(2) {
                if w[0].logical + w[0].len > w[1].logical {
                    return Err(corrupt(format!("inode {ino} has overlapping extents")));
                }
            }
        } else {
            self.walk_indirect(ino, inode, &mut map)?;
        }
        for e in &map.extents {
            if e.phys < self.geo.first_data_block
                || e.phys
                    .checked_add(e.len)
                    .is_none_or(|x| x > self.geo.blocks_count)
            {
                return Err(corrupt(format!(
                    "inode {ino} maps blocks outside the filesystem"
                )));
            }
        }
        for e in &map.extents {
            self.note_used(e.phys, e.len, ino);
        }
        for &b in &map.meta {
            self.note_used(b, 1, ino);
        }
        Ok(map)
    }

    fn walk_extents(
        &mut self,
        ino: u32,
        generation: u32,
        node: &[u8],
        expect_depth: Option<u16>,
        level: u32,
        map: &mut Map,
    ) -> Result<()> {
        let bad = |what: &str| corrupt(format!("inode {ino}: extent tree {what}"));
        if le16(node, 0) != EXT_MAGIC {
            return Err(bad("node has a bad magic number"));
        }
        let entries = le16(node, 2) as usize;
        let max = le16(node, 4) as usize;
        let depth = le16(node, 6);
        if entries > max || 12 + max * 12 > node.len() || depth > 5 || level > 5 {
            return Err(bad("node header is invalid"));
        }
        if expect_depth.is_some_and(|d| d != depth) {
            return Err(bad("node has an unexpected depth"));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let mut len = le16(e, 4) as u64;
                let uninit = len > MAX_EXTENT_LEN;
                if uninit {
                    len -= MAX_EXTENT_LEN;
                }
                let phys = extent_start(e);
                if len > 0 {
                    map.extents.push(Ext {
                        logical: le32(e, 0) as u64,
                        phys,
                        len,
                        uninit,
                    });
                }
            } else {
                let child = index_child(e);
                if child < self.geo.first_data_block || child >= self.geo.blocks_count {
                    return Err(bad("index points outside the filesystem"));
                }
                if map.meta.len() > 1 << 20 {
                    return Err(bad("is implausibly large"));
                }
                map.meta.push(child);
                let buf = self.block(child)?.to_vec();
                let cmax = le16(&buf, 4) as usize;
                if self.geo.csum() && le16(&buf, 0) == EXT_MAGIC && 16 + cmax * 12 <= buf.len() {
                    let t = 12 + cmax * 12;
                    let want = crc32c_raw(inode_seed(&self.geo, ino, generation), &buf[..t]);
                    if le32(&buf, t) != want {
                        return Err(bad("block checksum mismatch"));
                    }
                }
                self.walk_extents(ino, generation, &buf, Some(depth - 1), level + 1, map)?;
            }
        }
        Ok(())
    }

    fn walk_indirect(&mut self, ino: u32, inode: &Inode, map: &mut Map) -> Result<()> {
        let ib = inode.iblock().to_vec();
        let per = self.geo.bs / 4;
        let mut push = |map: &mut Map, lb: u64, pb: u64| {
            if let Some(last) = map.extents.last_mut()
                && last.logical + last.len == lb
                && last.phys + last.len == pb
                && last.len < MAX_EXTENT_LEN
            {
                last.len += 1;
                return;
            }
            map.extents.push(Ext {
                logical: lb,
                phys: pb,
                len: 1,
                uninit: false,
            });
        };
        for i in 0..IND_BLOCK {
            let b = le32(&ib, i * 4) as u64;
            if b != 0 {
                push(map, i as u64, b);
            }
        }
        let mut base = IND_BLOCK as u64;
        for (slot, levels) in [(IND_BLOCK, 1u32), (DIND_BLOCK, 2), (TIND_BLOCK, 3)] {
            let b = le32(&ib, slot * 4) as u64;
            let span = per.pow(levels);
            if b != 0 {
                self.walk_ind_block(ino, b, levels, base, map, &mut push)?;
            }
            base += span;
        }
        Ok(())
    }

    fn walk_ind_block(
        &mut self,
        ino: u32,
        b: u64,
        levels: u32,
        base: u64,
        map: &mut Map,
        push: &mut dyn FnMut(&mut Map, u64, u64),
    ) -> Result<()> {
        if b < self.geo.first_data_block || b >= self.geo.blocks_count {
            return Err(corrupt(format!(
                "inode {ino}: indirect block outside the filesystem"
            )));
        }
        map.meta.push(b);
        let buf = self.block(b)?.to_vec();
        let per = self.geo.bs / 4;
        let span = per.pow(levels - 1);
        for i in 0..per as usize {
            let c = le32(&buf, i * 4) as u64;
            if c == 0 {
                continue;
            }
            let lb = base + i as u64 * span;
            if levels == 1 {
                push(map, lb, c);
            } else {
                self.walk_ind_block(ino, c, levels - 1, lb, map, push)?;
            }
        }
        Ok(())
    }

    /// Writes the extent tree for `exts` into `inode` (not yet written back),
    /// reusing `old_meta` blocks where possible. Returns the number of tree
    /// blocks now used.
    pub(crate) fn set_extents(
        &mut self,
        ino: u32,
        inode: &mut Inode,
        exts: &[Ext],
        old_meta: &[u64],
    ) -> Result<u64> {
        let bs = self.geo.bs;
        let need = tree_blocks_for(exts.len() as u64, bs);
        let mut blocks: Vec<u64> = old_meta.iter().copied().take(need as usize).collect();
        for &b in old_meta.iter().skip(need as usize) {
            self.free_blocks_range(b, 1)?;
        }
        if (blocks.len() as u64) < need {
            let goal = exts.last().map(|e| e.phys + e.len);
            for (s, l) in self.alloc_blocks(need - blocks.len() as u64, goal)? {
                blocks.extend(s..s + l);
            }
        }
        let seed = inode_seed(&self.geo, ino, inode.generation());
        let csum = self.geo.csum();
        let per = ((bs - 12) / 12) as usize;
        // Entries of the current level: (first logical block, 12-byte entry).
        let mut level: Vec<(u32, [u8; 12])> = exts
            .iter()
            .map(|e| {
                let mut x = [0u8; 12];
                put32(&mut x, 0, e.logical as u32);
                let len = if e.uninit {
                    e.len + MAX_EXTENT_LEN
                } else {
                    e.len
                };
                put16(&mut x, 4, len as u16);
                put16(&mut x, 6, (e.phys >> 32) as u16);
                put32(&mut x, 8, e.phys as u32);
                (e.logical as u32, x)
            })
            .collect();
        let mut depth = 0u16;
        let mut next_block = 0usize;
        while level.len() > 4 {
            let mut upper = Vec::new();
            for chunk in level.chunks(per) {
                let b = blocks[next_block];
                next_block += 1;
                let buf = self.block_new(b);
                put16(buf, 0, EXT_MAGIC);
                put16(buf, 2, chunk.len() as u16);
                put16(buf, 4, per as u16);
                put16(buf, 6, depth);
                for (i, (_, x)) in chunk.iter().enumerate() {
                    buf[12 + i * 12..24 + i * 12].copy_from_slice(x);
                }
                if csum {
                    let t = 12 + per * 12;
                    let c = crc32c_raw(seed, &buf[..t]);
                    put32(buf, t, c);
                }
                let mut x = [0u8; 12];
                put32(&mut x, 0, chunk[0].0);
                put32(&mut x, 4, b as u32);
                put16(&mut x, 8, (b >> 32) as u16);
                upper.push((chunk[0].0, x));
            }
            level = upper;
            depth += 1;
        }
        let ib = inode.iblock_mut();
        ib.fill(0);
        put16(ib, 0, EXT_MAGIC);
        put16(ib, 2, level.len() as u16);
        put16(ib, 4, 4);
        put16(ib, 6, depth);
        for (i, (_, x)) in level.iter().enumerate() {
            ib[12 + i * 12..24 + i * 12].copy_from_slice(x);
        }
        let f = inode.flags() | EXTENTS_FL;
        inode.set_flags(f);
        Ok(need)
    }

    /// Sets `i_blocks` from data + tree blocks and the xattr block.
    pub(crate) fn account_blocks(&self, inode: &mut Inode, data: u64, tree: u64) {
        let acl = u64::from(inode.file_acl() != 0);
        inode.set_iblocks(data + tree + acl, self.geo.bs);
    }

    pub(crate) fn read_data(&mut self, ino: u32, inode: &Inode) -> Result<Vec<u8>> {
        let size = inode.size();
        if size > 1 << 40 {
            return Err(corrupt(format!(
                "inode {ino} has an implausible size {size}"
            )));
        }
        let map = self.inode_map(ino, inode)?;
        let mut out = vec![0u8; size as usize];
        let bs = self.geo.bs;
        for e in &map.extents {
            if e.uninit {
                continue;
            }
            let start = e.logical * bs;
            if start >= size {
                continue;
            }
            let end = ((e.logical + e.len) * bs).min(size);
            // Metadata cache first (directory-like data written this session).
            let mut pos = start;
            while pos < end {
                let lb = pos / bs;
                let pb = e.phys + (lb - e.logical);
                let chunk_end = end.min((lb + 1) * bs);
                if let Some(c) = self.cache.get(&pb) {
                    let o = (pos % bs) as usize;
                    out[pos as usize..chunk_end as usize]
                        .copy_from_slice(&c[o..o + (chunk_end - pos) as usize]);
                    pos = chunk_end;
                } else {
                    // Read as much contiguous uncached data as possible.
                    let mut run_end = chunk_end;
                    while run_end < end
                        && !self
                            .cache
                            .contains_key(&(e.phys + run_end / bs - e.logical))
                        && run_end - pos < 8 << 20
                    {
                        run_end = end.min(run_end + bs);
                    }
                    let ppos = pb * bs + pos % bs;
                    self.dev.read_at(
                        ppos,
                        &mut out[pos as usize..run_end as usize],
                        "reading file data",
                    )?;
                    pos = run_end;
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn read_link(&mut self, ino: u32) -> Result<String> {
        let inode = self.read_inode(ino)?;
        let bytes = if inode.is_fast_symlink() {
            inode.iblock()[..inode.size() as usize].to_vec()
        } else {
            if inode.size() > self.geo.bs {
                return Err(corrupt(format!("symlink inode {ino} is too long")));
            }
            self.read_data(ino, &inode)?
        };
        String::from_utf8(bytes).map_err(|_| Error::Unsupported {
            feature: format!("a symlink target that is not UTF-8 (inode {ino})"),
        })
    }

    /// Frees the data and mapping blocks of an inode.
    pub(crate) fn free_inode_blocks(&mut self, map: &Map) -> Result<()> {
        for e in &map.extents {
            self.free_blocks_range(e.phys, e.len)?;
        }
        for &b in &map.meta {
            self.free_blocks_range(b, 1)?;
        }
        Ok(())
    }

    /// Drops an inode whose link count reached zero.
    pub(crate) fn release_inode(&mut self, ino: u32, mut inode: Inode) -> Result<()> {
        let map = self.inode_map(ino, &inode)?;
        self.free_inode_blocks(&map)?;
        let acl = inode.file_acl();
        if acl != 0 {
            self.release_xattr_block(acl)?;
        }
        let is_dir = inode.kind() == Kind::Dir;
        inode.set_links(0);
        put32(&mut inode.raw, I_DTIME, self.now as u32);
        inode.set_ctime(self.now);
        self.write_inode(ino, &mut inode)?;
        self.free_inode(ino, is_dir)
    }

    fn release_xattr_block(&mut self, b: u64) -> Result<()> {
        let csum = self.geo.csum();
        let seed = self.geo.seed;
        let buf = self.block(b)?.to_vec();
        if le32(&buf, 0) != 0xEA02_0000 {
            return Err(corrupt(format!(
                "extended attribute block {b} has a bad magic"
            )));
        }
        let refs = le32(&buf, 4);
        if refs > 1 {
            let bs = self.geo.bs as usize;
            let blk = self.block_mut(b)?;
            put32(blk, 4, refs - 1);
            if csum {
                let mut c = crc32c_raw(seed, &b.to_le_bytes());
                c = crc32c_raw(c, &blk[..0x10]);
                c = crc32c_raw(c, &[0; 4]);
                c = crc32c_raw(c, &blk[0x14..bs]);
                put32(blk, 0x10, c);
            }
            Ok(())
        } else {
            self.free_blocks_range(b, 1)
        }
    }

    // ---------- files ----------

    fn check_space(&self, blocks: u64, reclaim: u64) -> Result<()> {
        let avail = self.available_blocks() + reclaim;
        if blocks > avail {
            return Err(Error::NoSpace {
                needed: blocks * self.geo.bs,
                available: avail * self.geo.bs,
            });
        }
        Ok(())
    }

    pub(crate) fn write_file_in(
        &mut self,
        parent: u32,
        name: &str,
        path: &str,
        data: &mut dyn std::io::Read,
        len: u64,
        meta: &Meta,
    ) -> Result<()> {
        let bs = self.geo.bs;
        let existing = self.lookup(parent, name)?;
        let nblocks = len.div_ceil(bs);
        let worst_ext = nblocks.div_ceil(MAX_EXTENT_LEN) + 16;
        let mut need = nblocks + tree_blocks_for(worst_ext, bs);
        let mut reuse = None;
        let mut reclaim = 0;
        match existing {
            Some((_, Kind::Dir)) => {
                return Err(Error::IsADirectory { path: path.into() });
            }
            Some((ino, Kind::File)) => {
                let inode = self.read_inode(ino)?;
                let map = self.inode_map(ino, &inode)?;
                reclaim = map.data_blocks() + map.meta.len() as u64;
                reuse = Some((ino, inode, map));
            }
            Some(_) => need += DIR_SLACK,
            None => {
                need += DIR_SLACK;
                if self.free_inodes == 0 {
                    return Err(Error::NoInodes);
                }
            }
        }
        self.check_space(need, reclaim)?;
        if let Some((_, Kind::Symlink | Kind::Other)) = existing {
            self.remove_in(parent, name, path)?;
        }
        let (ino, mut inode, old_meta) = match reuse {
            Some((ino, inode, map)) => {
                for e in &map.extents {
                    self.free_blocks_range(e.phys, e.len)?;
                }
                (ino, inode, map.meta)
            }
            None => {
                let g = (parent - 1) / self.geo.ipg;
                let ino = self.alloc_inode(g, false)?;
                (ino, self.new_inode(S_IFREG, meta), Vec::new())
            }
        };
        let is_new = existing.is_none_or(|(_, k)| k != Kind::File);
        let runs = self.alloc_blocks(nblocks, None)?;
        for &(s, l) in &runs {
            for b in s..s + l {
                self.forget_block(b);
            }
        }
        let res = self.write_runs(&runs, data, len);
        let exts: Vec<Ext> = match &res {
            Ok(()) => {
                let mut v = Vec::new();
                let mut lb = 0u64;
                for &(s, l) in &runs {
                    let mut off = 0;
                    while off < l {
                        let n = (l - off).min(MAX_EXTENT_LEN);
                        v.push(Ext {
                            logical: lb,
                            phys: s + off,
                            len: n,
                            uninit: false,
                        });
                        lb += n;
                        off += n;
                    }
                }
                v
            }
            Err(_) => {
                for &(s, l) in &runs {
                    self.mark_blocks(s, l, false)?;
                }
                Vec::new()
            }
        };
        let size = if res.is_ok() { len } else { 0 };
        inode.set_owner(meta, S_IFREG);
        inode.set_ctime(self.now);
        inode.set_size(size);
        let flags = inode.flags() & !(INDEX_FL | INLINE_DATA_FL);
        inode.set_flags(flags);
        if is_new {
            inode.set_links(1);
        }
        let tree = self.set_extents(ino, &mut inode, &exts, &old_meta)?;
        let data_blocks: u64 = exts.iter().map(|e| e.len).sum();
        self.account_blocks(&mut inode, data_blocks, tree);
        self.write_inode(ino, &mut inode)?;
        if is_new && res.is_ok() {
            self.add_entry(parent, name, ino, FT_REG)?;
        } else if is_new {
            // Nothing was linked: give the inode back.
            inode.set_links(0);
            self.write_inode(ino, &mut inode)?;
            self.free_inode(ino, false)?;
        }
        res.map_err(|source| Error::Source {
            path: path.into(),
            source,
        })
    }

    fn write_runs(
        &mut self,
        runs: &[(u64, u64)],
        data: &mut dyn std::io::Read,
        len: u64,
    ) -> std::io::Result<()> {
        const CHUNK: usize = 4 << 20;
        let bs = self.geo.bs;
        let mut buf = std::mem::take(&mut self.iobuf);
        buf.resize(CHUNK, 0);
        let mut left = len;
        let mut result = Ok(());
        'outer: for &(s, l) in runs {
            let mut pos = s * bs;
            let mut run_left = l * bs;
            while run_left > 0 && left > 0 {
                let n = (run_left.min(CHUNK as u64)).min(left) as usize;
                if let Err(e) = read_full(data, &mut buf[..n]) {
                    result = Err(e);
                    break 'outer;
                }
                let padded = (n as u64).div_ceil(bs) * bs;
                buf[n..padded as usize].fill(0);
                if let Err(e) = self
                    .dev
                    .write_at(pos, &buf[..padded as usize], "writing file data")
                {
                    result = Err(std::io::Error::other(e.to_string()));
                    break 'outer;
                }
                pos += padded;
                run_left -= padded;
                left -= n as u64;
            }
        }
        self.iobuf = buf;
        result
    }

    pub(crate) fn symlink_in(
        &mut self,
        parent: u32,
        name: &str,
        path: &str,
        target: &str,
        meta: &Meta,
    ) -> Result<()> {
        let bs = self.geo.bs;
        if target.is_empty() || target.len() as u64 >= bs || target.contains('\0') {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: format!("symlink target must be 1..{} bytes without NUL", bs - 1),
            });
        }
        let fast = target.len() < 60;
        let existing = self.lookup(parent, name)?;
        if let Some((_, Kind::Dir)) = existing {
            return Err(Error::IsADirectory { path: path.into() });
        }
        let need = if fast { 0 } else { 1 } + if existing.is_some() { 0 } else { DIR_SLACK };
        let reclaim = match existing {
            Some((ino, _)) => {
                let i = self.read_inode(ino)?;
                let m = self.inode_map(ino, &i)?;
                if i.links() <= 1 {
                    m.data_blocks() + m.meta.len() as u64
                } else {
                    0
                }
            }
            None => 0,
        };
        self.check_space(need, reclaim)?;
        if existing.is_none() && self.free_inodes == 0 {
            return Err(Error::NoInodes);
        }
        if existing.is_some() {
            self.remove_in(parent, name, path)?;
        }
        let g = (parent - 1) / self.geo.ipg;
        let ino = self.alloc_inode(g, false)?;
        let mut inode = self.new_inode(S_IFLNK, meta);
        inode.set_links(1);
        inode.set_size(target.len() as u64);
        if fast {
            inode.iblock_mut()[..target.len()].copy_from_slice(target.as_bytes());
            inode.set_iblocks(0, bs);
        } else {
            let runs = self.alloc_blocks(1, None)?;
            let b = runs[0].0;
            let mut buf = vec![0u8; bs as usize];
            buf[..target.len()].copy_from_slice(target.as_bytes());
            self.forget_block(b);
            self.dev
                .write_at(b * bs, &buf, "writing a symlink target")?;
            self.map_single_block(ino, &mut inode, b)?;
        }
        self.write_inode(ino, &mut inode)?;
        self.add_entry(parent, name, ino, FT_SYMLINK)
    }

    /// Makes block `b` the whole content of a new inode (a directory's first block, a slow
    /// symlink's target) and counts it.
    fn map_single_block(&mut self, ino: u32, inode: &mut Inode, b: u64) -> Result<()> {
        let ext = [Ext {
            logical: 0,
            phys: b,
            len: 1,
            uninit: false,
        }];
        let tree = self.set_extents(ino, inode, &ext, &[])?;
        self.account_blocks(inode, 1, tree);
        Ok(())
    }

    pub(crate) fn create_dir(&mut self, parent: u32, name: &str, meta: &Meta) -> Result<u32> {
        self.check_space(1 + DIR_SLACK, 0)?;
        let g = (parent - 1) / self.geo.ipg;
        let ino = self.alloc_inode(g, true)?;
        let mut inode = self.new_inode(S_IFDIR, meta);
        inode.set_links(2);
        let bs = self.geo.bs;
        inode.set_size(bs);
        let b = self.alloc_blocks(1, None)?[0].0;
        let seed = inode_seed(&self.geo, ino, inode.generation());
        let mut blk = vec![0u8; bs as usize];
        let end = self.leaf_end_new();
        // Without the filetype feature the type byte of every entry must stay 0.
        let ft = if self.filetype() { FT_DIR } else { 0 };
        crate::dir::put_dirent(&mut blk, 0, ino, 12, b".", ft);
        crate::dir::put_dirent(&mut blk, 12, parent, (end - 12) as u16, b"..", ft);
        self.finish_leaf(&mut blk, seed);
        *self.block_new(b) = blk;
        self.map_single_block(ino, &mut inode, b)?;
        self.write_inode(ino, &mut inode)?;
        self.add_entry(parent, name, ino, FT_DIR)?;
        let mut p = self.read_inode(parent)?;
        let links = p.links();
        if links >= 1 {
            let nl = links as u32 + 1;
            if nl >= 65000 && self.geo.ro_compat & RO_COMPAT_DIR_NLINK != 0 {
                p.set_links(1);
            } else if links != 1 {
                p.set_links(nl.min(65000) as u16);
            }
        }
        p.set_mtime(self.now);
        p.set_ctime(self.now);
        self.write_inode(parent, &mut p)?;
        Ok(ino)
    }

    pub(crate) fn remove_in(&mut self, parent: u32, name: &str, path: &str) -> Result<()> {
        let (ino, kind) = self
            .lookup(parent, name)?
            .ok_or_else(|| Error::NotFound { path: path.into() })?;
        let mut inode = self.read_inode(ino)?;
        if inode.kind() == Kind::Dir || kind == Kind::Dir {
            if !self.dir_is_empty(ino)? {
                return Err(Error::DirectoryNotEmpty { path: path.into() });
            }
            self.remove_entry(parent, name)?;
            self.release_inode(ino, inode)?;
            let mut p = self.read_inode(parent)?;
            let l = p.links();
            if l > 2 {
                p.set_links(l - 1);
            }
            p.set_mtime(self.now);
            p.set_ctime(self.now);
            self.write_inode(parent, &mut p)?;
            return Ok(());
        }
        self.remove_entry(parent, name)?;
        let l = inode.links();
        if l <= 1 {
            self.release_inode(ino, inode)?;
        } else {
            inode.set_links(l - 1);
            inode.set_ctime(self.now);
            self.write_inode(ino, &mut inode)?;
        }
        let mut p = self.read_inode(parent)?;
        p.set_mtime(self.now);
        p.set_ctime(self.now);
        self.write_inode(parent, &mut p)
    }
}

/// Blocks reserved for directory growth when adding an entry (a new leaf,
/// a split leaf, an index node and an extent tree block).
pub(crate) const DIR_SLACK: u64 = 4;
pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_SYMLINK: u8 = 7;

fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source ended before the announced length",
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
