//! Directories: lookup, path resolution (following symlinks), linear entry
//! insertion and removal, and htree (hashed index) insertion with leaf and
//! index node splits.

use crate::Kind;
use crate::csum::crc32c_raw;
use crate::disk::{le16, le32, put16, put32};
use crate::error::{Error, Result, corrupt};
use crate::fs::{Ext4Fs, split_path};
use crate::hash::dx_hash;
use crate::inode::{Ext, Inode, Map};
use crate::layout::{
    COMPAT_DIR_INDEX, INCOMPAT_FILETYPE, INCOMPAT_LARGEDIR, INDEX_FL, ROOT_INO, inode_seed,
};
use std::collections::VecDeque;

pub(crate) fn rec_len_for(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

pub(crate) fn put_dirent(buf: &mut [u8], pos: usize, ino: u32, rec_len: u16, name: &[u8], ft: u8) {
    put32(buf, pos, ino);
    put16(buf, pos + 4, rec_len);
    buf[pos + 6] = name.len() as u8;
    buf[pos + 7] = ft;
    buf[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
}

#[derive(Clone, Debug)]
pub(crate) struct Dirent {
    pub(crate) pos: usize,
    pub(crate) ino: u32,
    pub(crate) rec_len: usize,
    pub(crate) name: Vec<u8>,
    pub(crate) ft: u8,
}

fn has_tail(buf: &[u8]) -> bool {
    let t = buf.len() - 12;
    le32(buf, t) == 0 && le16(buf, t + 4) == 12 && buf[t + 6] == 0 && buf[t + 7] == 0xDE
}

/// Parses the entries of a leaf block covering `[0, end)`.
pub(crate) fn parse_leaf(buf: &[u8], end: usize, filetype: bool) -> Result<Vec<Dirent>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < end {
        if pos + 8 > end {
            return Err(corrupt("a directory entry crosses the end of its block"));
        }
        let ino = le32(buf, pos);
        let rec_len = le16(buf, pos + 4) as usize;
        let name_len = buf[pos + 6] as usize;
        let ft = if filetype { buf[pos + 7] } else { 0 };
        if rec_len < 8
            || !rec_len.is_multiple_of(4)
            || pos + rec_len > end
            || 8 + name_len > rec_len
        {
            return Err(corrupt(format!(
                "a directory entry at offset {pos} has an invalid length"
            )));
        }
        out.push(Dirent {
            pos,
            ino,
            rec_len,
            name: buf[pos + 8..pos + 8 + name_len].to_vec(),
            ft,
        });
        pos += rec_len;
    }
    Ok(out)
}

struct Frame {
    phys: u64,
    off: usize,
    idx: usize,
}

impl Ext4Fs {
    /// Do directory entries carry a file type byte?
    pub(crate) fn filetype(&self) -> bool {
        self.geo.incompat & INCOMPAT_FILETYPE != 0
    }

    /// End of the entry area of a new leaf block.
    pub(crate) fn leaf_end_new(&self) -> usize {
        self.geo.bs as usize - if self.geo.csum() { 12 } else { 0 }
    }

    /// Writes the checksum tail of a leaf block (if checksums are enabled).
    pub(crate) fn finish_leaf(&self, buf: &mut [u8], seed: u32) {
        if !self.geo.csum() {
            return;
        }
        let t = buf.len() - 12;
        put32(buf, t, 0);
        put16(buf, t + 4, 12);
        buf[t + 6] = 0;
        buf[t + 7] = 0xDE;
        let c = crc32c_raw(seed, &buf[..t]);
        put32(buf, t + 8, c);
    }

    /// End of the entry area of an existing leaf block, verifying its
    /// checksum.
    fn leaf_end(&self, buf: &[u8], seed: u32, verify: bool) -> Result<usize> {
        let bs = buf.len();
        if !self.geo.csum() {
            return Ok(bs);
        }
        if !has_tail(buf) {
            return Err(corrupt("a directory block lacks its checksum tail"));
        }
        if verify && crc32c_raw(seed, &buf[..bs - 12]) != le32(buf, bs - 4) {
            return Err(corrupt("directory block checksum mismatch"));
        }
        Ok(bs - 12)
    }

    fn dir_inode(&mut self, dir: u32) -> Result<(Inode, Map)> {
        let inode = self.read_inode(dir)?;
        if inode.kind() != Kind::Dir {
            return Err(Error::NotADirectory {
                path: format!("inode {dir}"),
            });
        }
        let map = self.inode_map(dir, &inode)?;
        Ok((inode, map))
    }

    fn is_indexed(&self, inode: &Inode) -> bool {
        inode.flags() & INDEX_FL != 0
    }

    /// Physical blocks holding directory entries (index blocks skipped).
    fn leaf_blocks(&mut self, inode: &Inode, map: &Map) -> Result<Vec<u64>> {
        let bs = self.geo.bs;
        let nblocks = inode.size() / bs;
        let indexed = self.is_indexed(inode);
        let mut out = Vec::new();
        let lbs: Vec<u64> = map
            .extents
            .iter()
            .filter(|e| !e.uninit)
            .flat_map(|e| e.logical..e.logical + e.len)
            .filter(|&lb| lb < nblocks)
            .collect();
        for lb in lbs {
            let Some(pb) = map.phys_of(lb) else { continue };
            if indexed {
                if lb == 0 {
                    continue;
                }
                let b = self.block(pb)?;
                if le32(b, 0) == 0 && le16(b, 4) as u64 == bs {
                    continue;
                }
            }
            out.push(pb);
        }
        Ok(out)
    }

    fn leaf_entries(&mut self, pb: u64, seed: u32) -> Result<(Vec<Dirent>, usize)> {
        let verify = !self.dirty.contains(&pb);
        let ft = self.filetype();
        let buf = self.block(pb)?.to_vec();
        let end = self.leaf_end(&buf, seed, verify)?;
        Ok((parse_leaf(&buf, end, ft)?, end))
    }

    /// Entries of the first block of an indexed directory (`.` and `..`).
    fn all_entries(&mut self, dir: u32) -> Result<Vec<Dirent>> {
        let (inode, map) = self.dir_inode(dir)?;
        let seed = inode_seed(&self.geo, dir, inode.generation());
        let mut out = Vec::new();
        for pb in self.leaf_blocks(&inode, &map)? {
            out.extend(self.leaf_entries(pb, seed)?.0);
        }
        Ok(out)
    }

    fn kind_of(&mut self, ino: u32, ft: u8) -> Result<Kind> {
        Ok(match ft {
            1 => Kind::File,
            2 => Kind::Dir,
            7 => Kind::Symlink,
            0 => self.read_inode(ino)?.kind(),
            _ => Kind::Other,
        })
    }

    /// Looks `name` up in directory `dir` (no symlink following).
    pub(crate) fn lookup(&mut self, dir: u32, name: &str) -> Result<Option<(u32, Kind)>> {
        let (inode, map) = self.dir_inode(dir)?;
        let n = name.as_bytes();
        if self.is_indexed(&inode) && (n == b"." || n == b"..") {
            let pb = map
                .phys_of(0)
                .ok_or_else(|| corrupt("directory without block 0"))?;
            let ft = self.filetype();
            let b = self.block(pb)?.to_vec();
            let ents = parse_leaf(&b[..24], 24, ft)?;
            if ents.len() < 2 {
                return Err(corrupt(format!(
                    "indexed directory inode {dir} lacks `.`/`..`"
                )));
            }
            let e = if n == b"." { &ents[0] } else { &ents[1] };
            return Ok(Some((e.ino, Kind::Dir)));
        }
        let seed = inode_seed(&self.geo, dir, inode.generation());
        for pb in self.leaf_blocks(&inode, &map)? {
            let (ents, _) = self.leaf_entries(pb, seed)?;
            if let Some(e) = ents.iter().find(|e| e.ino != 0 && e.name == n) {
                let (ino, ft) = (e.ino, e.ft);
                return Ok(Some((ino, self.kind_of(ino, ft)?)));
            }
        }
        Ok(None)
    }

    pub(crate) fn dir_is_empty(&mut self, dir: u32) -> Result<bool> {
        Ok(self
            .all_entries(dir)?
            .iter()
            .all(|e| e.ino == 0 || e.name == b"." || e.name == b".."))
    }

    /// Walks `comps` from directory `start`, following symlinks (the last
    /// component only if `follow_last`). `None` if a component is missing.
    pub(crate) fn walk_from(
        &mut self,
        start: u32,
        comps: Vec<String>,
        follow_last: bool,
        path: &str,
    ) -> Result<Option<(u32, Kind)>> {
        let mut queue: VecDeque<String> = comps.into();
        let mut cur = start;
        let mut kind = Kind::Dir;
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if kind != Kind::Dir {
                return Err(Error::NotADirectory { path: path.into() });
            }
            if c == "." || c.is_empty() {
                continue;
            }
            let Some((ino, k)) = self.lookup(cur, &c)? else {
                return Ok(None);
            };
            if k == Kind::Symlink && (!queue.is_empty() || follow_last) {
                hops += 1;
                if hops > 40 {
                    return Err(Error::SymlinkLoop { path: path.into() });
                }
                let target = self.read_link(ino)?;
                if target.starts_with('/') {
                    cur = ROOT_INO;
                }
                for t in target.split('/').rev() {
                    if !t.is_empty() {
                        queue.push_front(t.to_string());
                    }
                }
                kind = Kind::Dir;
                continue;
            }
            cur = ino;
            kind = k;
        }
        Ok(Some((cur, kind)))
    }

    pub(crate) fn resolve(&mut self, path: &str, follow: bool) -> Result<Option<u32>> {
        let comps = split_path(path)?;
        Ok(self
            .walk_from(ROOT_INO, comps, follow, path)?
            .map(|(i, _)| i))
    }

    /// Resolves the parent directory of `path` and returns it with the last
    /// component.
    pub(crate) fn resolve_parent(&mut self, path: &str) -> Result<(u32, String)> {
        let mut comps = split_path(path)?;
        let Some(name) = comps.pop() else {
            return Err(Error::InvalidPath {
                path: path.into(),
                reason: "the root directory cannot be replaced".into(),
            });
        };
        match self.walk_from(ROOT_INO, comps, true, path)? {
            Some((ino, Kind::Dir)) => Ok((ino, name)),
            Some(_) => Err(Error::NotADirectory { path: path.into() }),
            None => Err(Error::NotFound { path: path.into() }),
        }
    }

    pub(crate) fn lookup_follow(
        &mut self,
        dir: u32,
        name: &str,
        path: &str,
        _depth: u32,
    ) -> Result<Option<(u32, Kind)>> {
        match self.lookup(dir, name)? {
            Some((ino, Kind::Symlink)) => {
                match self.walk_from(dir, vec![name.into()], true, path)? {
                    Some(x) => Ok(Some(x)),
                    None => Ok(Some((ino, Kind::Symlink))),
                }
            }
            other => Ok(other),
        }
    }

    // ---------- insertion ----------

    /// Adds entry `name -> ino` to directory `dir` (the name must not exist).
    pub(crate) fn add_entry(&mut self, dir: u32, name: &str, ino: u32, ft: u8) -> Result<()> {
        let (mut inode, map) = self.dir_inode(dir)?;
        let ft = if self.filetype() { ft } else { 0 };
        inode.set_mtime(self.now);
        inode.set_ctime(self.now);
        if self.is_indexed(&inode) && self.geo.compat & COMPAT_DIR_INDEX != 0 {
            self.write_inode(dir, &mut inode)?;
            return self.htree_add(dir, name.as_bytes(), ino, ft);
        }
        let seed = inode_seed(&self.geo, dir, inode.generation());
        for pb in self.leaf_blocks(&inode, &map)? {
            if self.leaf_try_insert(pb, seed, name.as_bytes(), ino, ft)? {
                return self.write_inode(dir, &mut inode);
            }
        }
        let (_, pb) = self.dir_append_block(dir, &mut inode, map)?;
        let mut blk = vec![0u8; self.geo.bs as usize];
        let end = self.leaf_end_new();
        put_dirent(&mut blk, 0, ino, end as u16, name.as_bytes(), ft);
        self.finish_leaf(&mut blk, seed);
        *self.block_new(pb) = blk;
        Ok(())
    }

    /// Inserts into one leaf block if there is room.
    fn leaf_try_insert(
        &mut self,
        pb: u64,
        seed: u32,
        name: &[u8],
        ino: u32,
        ft: u8,
    ) -> Result<bool> {
        let (ents, _) = self.leaf_entries(pb, seed)?;
        let need = rec_len_for(name.len());
        for e in &ents {
            let used = if e.ino == 0 {
                0
            } else {
                rec_len_for(e.name.len())
            };
            if e.rec_len - used >= need {
                let blk = self.block_mut(pb)?;
                if e.ino == 0 {
                    put_dirent(blk, e.pos, ino, e.rec_len as u16, name, ft);
                } else {
                    put16(blk, e.pos + 4, used as u16);
                    put_dirent(blk, e.pos + used, ino, (e.rec_len - used) as u16, name, ft);
                }
                let mut b = std::mem::take(blk);
                self.finish_leaf(&mut b, seed);
                *self.block_mut(pb)? = b;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Appends one block to a directory; returns (logical, physical).
    /// The inode is updated and written.
    fn dir_append_block(&mut self, dir: u32, inode: &mut Inode, map: Map) -> Result<(u64, u64)> {
        let bs = self.geo.bs;
        let lb = inode.size() / bs;
        let goal = map.extents.last().map(|e| e.phys + e.len);
        let pb = self.alloc_blocks(1, goal)?[0].0;
        let mut exts = map.extents.clone();
        match exts.last_mut() {
            Some(l)
                if !l.uninit
                    && l.logical + l.len == lb
                    && l.phys + l.len == pb
                    && l.len < 32768 =>
            {
                l.len += 1;
            }
            _ => exts.push(Ext {
                logical: lb,
                phys: pb,
                len: 1,
                uninit: false,
            }),
        }
        let tree = self.set_extents(dir, inode, &exts, &map.meta)?;
        let data: u64 = exts.iter().map(|e| e.len).sum();
        self.account_blocks(inode, data, tree);
        inode.set_size((lb + 1) * bs);
        self.write_inode(dir, inode)?;
        Ok((lb, pb))
    }

    // ---------- removal ----------

    pub(crate) fn remove_entry(&mut self, dir: u32, name: &str) -> Result<()> {
        let (mut inode, map) = self.dir_inode(dir)?;
        let seed = inode_seed(&self.geo, dir, inode.generation());
        let n = name.as_bytes();
        for pb in self.leaf_blocks(&inode, &map)? {
            let (ents, _) = self.leaf_entries(pb, seed)?;
            let Some(i) = ents.iter().position(|e| e.ino != 0 && e.name == n) else {
                continue;
            };
            let mut b = self.block(pb)?.to_vec();
            if i == 0 {
                put32(&mut b, ents[0].pos, 0);
            } else {
                let p = &ents[i - 1];
                put16(&mut b, p.pos + 4, (p.rec_len + ents[i].rec_len) as u16);
            }
            self.finish_leaf(&mut b, seed);
            *self.block_mut(pb)? = b;
            inode.set_mtime(self.now);
            inode.set_ctime(self.now);
            return self.write_inode(dir, &mut inode);
        }
        Err(Error::NotFound { path: name.into() })
    }

    // ---------- htree ----------

    fn hash_version(&self, root: &[u8]) -> u8 {
        let v = root[0x1C];
        if v <= 2 && self.geo.hash_unsigned {
            v + 3
        } else {
            v
        }
    }

    fn dx_csum_set(&self, buf: &mut [u8], off: usize, seed: u32) -> Result<()> {
        if !self.geo.csum() {
            return Ok(());
        }
        let limit = le16(buf, off) as usize;
        let count = le16(buf, off + 2) as usize;
        let t = off + limit * 8;
        if t + 8 > buf.len() || count > limit {
            return Err(corrupt("a directory index block has an invalid limit"));
        }
        let mut c = crc32c_raw(seed, &buf[..off + count * 8]);
        c = crc32c_raw(c, &buf[t..t + 4]);
        c = crc32c_raw(c, &[0; 4]);
        put32(buf, t + 4, c);
        Ok(())
    }

    fn dx_check(&self, buf: &[u8], off: usize, seed: u32) -> Result<()> {
        let limit = le16(buf, off) as usize;
        let count = le16(buf, off + 2) as usize;
        let tail = if self.geo.csum() { 8 } else { 0 };
        if count == 0 || count > limit || off + limit * 8 + tail > buf.len() {
            return Err(corrupt("a directory index block has invalid counts"));
        }
        if self.geo.csum() {
            let mut b = buf.to_vec();
            self.dx_csum_set(&mut b, off, seed)?;
            if b != buf {
                return Err(corrupt("directory index block checksum mismatch"));
            }
        }
        Ok(())
    }

    fn dx_limit(&self, off: usize) -> usize {
        (self.geo.bs as usize - off - if self.geo.csum() { 8 } else { 0 }) / 8
    }

    fn htree_add(&mut self, dir: u32, name: &[u8], ino: u32, ft: u8) -> Result<()> {
        let bs = self.geo.bs as usize;
        let (inode, map) = self.dir_inode(dir)?;
        let seed = inode_seed(&self.geo, dir, inode.generation());
        let root_pb = map
            .phys_of(0)
            .ok_or_else(|| corrupt("indexed directory without block 0"))?;
        let root = self.block(root_pb)?.to_vec();
        if le32(&root, 0x18) != 0 || root[0x1D] != 8 {
            return Err(corrupt(format!(
                "directory inode {dir} has an invalid index root"
            )));
        }
        let levels = root[0x1E] as usize;
        let max_levels = if self.geo.incompat & INCOMPAT_LARGEDIR != 0 {
            3
        } else {
            2
        };
        if levels >= max_levels {
            return Err(corrupt(format!(
                "directory inode {dir} has too many index levels"
            )));
        }
        let version = self.hash_version(&root);
        let hseed = self.geo.hash_seed;
        let hash_of = move |n: &[u8]| dx_hash(n, version, &hseed);
        let h = hash_of(name).ok_or_else(|| Error::Unsupported {
            feature: format!("directory hash version {}", root[0x1C]),
        })?;
        self.dx_check(&root, 0x20, seed)?;
        let mut frames = Vec::new();
        let mut pb = root_pb;
        let mut off = 0x20;
        let leaf_lb;
        loop {
            let buf = self.block(pb)?.to_vec();
            if pb != root_pb {
                self.dx_check(&buf, off, seed)?;
            }
            let count = le16(&buf, off + 2) as usize;
            let mut idx = 0;
            for i in 1..count {
                if le32(&buf, off + i * 8) <= h {
                    idx = i;
                } else {
                    break;
                }
            }
            let child = le32(&buf, off + idx * 8 + 4) as u64;
            frames.push(Frame { phys: pb, off, idx });
            if frames.len() > levels {
                leaf_lb = child;
                break;
            }
            pb = map
                .phys_of(child)
                .ok_or_else(|| corrupt("directory index points to a hole"))?;
            off = 8;
        }
        let leaf_pb = map
            .phys_of(leaf_lb)
            .ok_or_else(|| corrupt("directory index points to a hole"))?;
        if self.leaf_try_insert(leaf_pb, seed, name, ino, ft)? {
            return Ok(());
        }
        // Split the leaf.
        let (ents, _) = self.leaf_entries(leaf_pb, seed)?;
        let mut all: Vec<(u32, Dirent)> = Vec::new();
        for e in ents.into_iter().filter(|e| e.ino != 0) {
            let hh = hash_of(&e.name).expect("version checked");
            all.push((hh, e));
        }
        all.push((
            h,
            Dirent {
                pos: 0,
                ino,
                rec_len: 0,
                name: name.to_vec(),
                ft,
            },
        ));
        all.sort_by_key(|(hh, _)| *hh);
        if all.len() < 2 {
            return Err(corrupt(format!(
                "directory inode {dir}: a full leaf without entries"
            )));
        }
        let total: usize = all.iter().map(|(_, e)| rec_len_for(e.name.len())).sum();
        let mut acc = 0;
        let mut split = 0;
        for (i, (_, e)) in all.iter().enumerate() {
            if acc + rec_len_for(e.name.len()) > total / 2 && i > 0 {
                split = i;
                break;
            }
            acc += rec_len_for(e.name.len());
            split = i + 1;
        }
        if split >= all.len() {
            split = all.len() - 1;
        }
        let hash2 = all[split].0;
        let continued = u32::from(hash2 == all[split - 1].0);
        let end = self.leaf_end_new();
        let pack = |fs: &Self, ents: &[(u32, Dirent)]| -> Result<Vec<u8>> {
            let mut blk = vec![0u8; bs];
            let mut pos = 0;
            for (i, (_, e)) in ents.iter().enumerate() {
                let rl = if i + 1 == ents.len() {
                    end - pos
                } else {
                    rec_len_for(e.name.len())
                };
                if pos + rec_len_for(e.name.len()) > end {
                    return Err(corrupt("directory leaf split overflow"));
                }
                put_dirent(&mut blk, pos, e.ino, rl as u16, &e.name, e.ft);
                pos += rl;
            }
            fs.finish_leaf(&mut blk, seed);
            Ok(blk)
        };
        let lower = pack(self, &all[..split])?;
        let upper = pack(self, &all[split..])?;
        let (mut inode, map) = self.dir_inode(dir)?;
        let (new_lb, new_pb) = self.dir_append_block(dir, &mut inode, map)?;
        *self.block_mut(leaf_pb)? = lower;
        *self.block_new(new_pb) = upper;
        self.dx_insert(dir, seed, frames, hash2 | continued, new_lb as u32)
    }

    /// Inserts index entry (hash, block) after the current position of the
    /// deepest frame, splitting or growing index nodes as needed.
    fn dx_insert(
        &mut self,
        dir: u32,
        seed: u32,
        mut frames: Vec<Frame>,
        hash: u32,
        lb: u32,
    ) -> Result<()> {
        let bs = self.geo.bs as usize;
        let f = frames.last().expect("at least the root frame");
        let buf = self.block(f.phys)?.to_vec();
        let (limit, count) = (le16(&buf, f.off) as usize, le16(&buf, f.off + 2) as usize);
        if count < limit {
            let mut b = buf;
            let at = f.off + (f.idx + 1) * 8;
            let endb = f.off + count * 8;
            b.copy_within(at..endb, at + 8);
            put32(&mut b, at, hash);
            put32(&mut b, at + 4, lb);
            put16(&mut b, f.off + 2, (count + 1) as u16);
            self.dx_csum_set(&mut b, f.off, seed)?;
            *self.block_mut(f.phys)? = b;
            return Ok(());
        }
        if frames.len() == 1 {
            // Root full: move its entries into a new node, add a level.
            let (mut inode, map) = self.dir_inode(dir)?;
            let (node_lb, node_pb) = self.dir_append_block(dir, &mut inode, map)?;
            let mut node = vec![0u8; bs];
            put32(&mut node, 0, 0);
            put16(&mut node, 4, bs as u16);
            let nlimit = self.dx_limit(8);
            node[8..8 + count * 8].copy_from_slice(&buf[0x20..0x20 + count * 8]);
            put16(&mut node, 8, nlimit as u16);
            put16(&mut node, 10, count as u16);
            self.dx_csum_set(&mut node, 8, seed)?;
            *self.block_new(node_pb) = node;
            let mut r = buf;
            r[0x1E] += 1;
            put16(&mut r, 0x22, 1);
            put32(&mut r, 0x24, node_lb as u32);
            self.dx_csum_set(&mut r, 0x20, seed)?;
            let root_phys = frames[0].phys;
            let idx = frames[0].idx;
            *self.block_mut(root_phys)? = r;
            frames[0].idx = 0;
            frames.push(Frame {
                phys: node_pb,
                off: 8,
                idx,
            });
            return self.dx_insert(dir, seed, frames, hash, lb);
        }
        // A full non-root node: split it if the parent has room.
        let parent = &frames[frames.len() - 2];
        let pbuf = self.block(parent.phys)?.to_vec();
        if le16(&pbuf, parent.off + 2) >= le16(&pbuf, parent.off) {
            if frames.len() == 2 && self.geo.incompat & INCOMPAT_LARGEDIR != 0 {
                return Err(Error::DirIndexFull {
                    path: format!("directory inode {dir}"),
                });
            }
            return Err(Error::DirIndexFull {
                path: format!("directory inode {dir}"),
            });
        }
        let f = frames.pop().expect("node frame");
        let (mut inode, map) = self.dir_inode(dir)?;
        let (m_lb, m_pb) = self.dir_append_block(dir, &mut inode, map)?;
        let half = count / 2;
        let moved_hash = le32(&buf, f.off + half * 8);
        let mut left = buf.clone();
        let mut right = vec![0u8; bs];
        put16(&mut right, 4, bs as u16);
        right[8..8 + (count - half) * 8].copy_from_slice(&buf[f.off + half * 8..f.off + count * 8]);
        put16(&mut right, 8, self.dx_limit(8) as u16);
        put16(&mut right, 10, (count - half) as u16);
        put16(&mut left, f.off + 2, half as u16);
        self.dx_csum_set(&mut left, f.off, seed)?;
        self.dx_csum_set(&mut right, 8, seed)?;
        *self.block_mut(f.phys)? = left;
        *self.block_new(m_pb) = right;
        // Parent gets (moved_hash, m_lb) after its current position.
        self.dx_insert(dir, seed, frames_clone(&frames), moved_hash, m_lb as u32)?;
        let target = if f.idx < half {
            Frame {
                phys: f.phys,
                off: f.off,
                idx: f.idx,
            }
        } else {
            Frame {
                phys: m_pb,
                off: 8,
                idx: f.idx - half,
            }
        };
        frames.push(target);
        self.dx_insert(dir, seed, frames, hash, lb)
    }
}

fn frames_clone(f: &[Frame]) -> Vec<Frame> {
    f.iter()
        .map(|x| Frame {
            phys: x.phys,
            off: x.off,
            idx: x.idx,
        })
        .collect()
}
