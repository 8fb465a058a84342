//! An ext4 partition of an image as a [`Tree`], written by `pikube-ext4`.

use std::io::Read;

use anyhow::Result;

use super::Image;
use crate::disk::Partition;
use crate::op::{Meta, Tree};

pub struct Ext4Tree {
    fs: pikube_ext4::Ext4Fs,
    label: String,
    /// Timestamp of every entry written.
    mtime: i64,
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Ext4Tree {
    /// Opens the ext4 filesystem of `part` (labelled `label`) in `image`; entries get `mtime`.
    pub fn open(image: &Image, part: &Partition, label: &str, mtime: i64) -> Result<Ext4Tree> {
        let fs = pikube_ext4::Ext4Fs::open(image.clone(), part.start, part.size, mtime)
            .map_err(|e| anyhow::anyhow!("ext4 partition '{label}': {e}"))?;
        Ok(Ext4Tree {
            fs,
            label: label.to_string(),
            mtime,
        })
    }

    fn err(&self, path: &str) -> impl Fn(pikube_ext4::Error) -> anyhow::Error + use<> {
        let at = format!("{}:{path}", self.label);
        move |e| anyhow::anyhow!("{at}: {e}")
    }

    fn meta(&self, m: &Meta) -> pikube_ext4::Meta {
        pikube_ext4::Meta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: m.min_mtime.map_or(self.mtime, |t| self.mtime.max(t)),
        }
    }

    /// Directories the tree creates on its own (parents of what is written): root's, 0755.
    fn dir_meta(&self) -> pikube_ext4::Meta {
        self.meta(&Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            min_mtime: None,
        })
    }

    /// Flushes what was written.
    pub fn close(self) -> Result<()> {
        let label = self.label;
        self.fs
            .close()
            .map_err(|e| anyhow::anyhow!("ext4 partition '{label}': {e}"))
    }
}

impl Tree for Ext4Tree {
    fn name(&self) -> &str {
        &self.label
    }

    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let err = self.err(path);
        match self.fs.stat(path).map_err(&err)? {
            Some(_) => Ok(Some(self.fs.read_file(path).map_err(&err)?)),
            None => Ok(None),
        }
    }

    fn write(&mut self, path: &str, data: &mut dyn Read, size: u64, meta: &Meta) -> Result<u64> {
        let err = self.err(path);
        let (dir, meta) = (self.dir_meta(), self.meta(meta));
        self.fs.mkdir_p(parent(path), &dir).map_err(&err)?;
        self.fs.write_file(path, data, size, &meta).map_err(&err)?;
        Ok(size)
    }

    fn mkdir(&mut self, path: &str, meta: &Meta) -> Result<()> {
        let meta = self.meta(meta);
        self.fs.mkdir_p(path, &meta).map_err(self.err(path))
    }

    fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<()> {
        let err = self.err(path);
        let (dir, meta) = (self.dir_meta(), self.meta(meta));
        self.fs.mkdir_p(parent(path), &dir).map_err(&err)?;
        if self.fs.stat(path).map_err(&err)?.is_some() {
            self.fs.remove(path).map_err(&err)?;
        }
        self.fs.symlink(path, target, &meta).map_err(&err)
    }

    fn remove(&mut self, path: &str) -> Result<bool> {
        let err = self.err(path);
        if self.fs.stat(path).map_err(&err)?.is_none() {
            return Ok(false);
        }
        self.fs.remove(path).map_err(&err)?;
        Ok(true)
    }
}
