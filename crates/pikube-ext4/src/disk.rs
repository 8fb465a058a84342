//! Positioned I/O inside the partition's byte range, little-endian helpers.

use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Where the image lives: positioned reads and writes of whole buffers, and a sync. A plain
/// [`File`] is one; so is anything that keeps the image elsewhere (a copy-on-write overlay).
pub trait Storage: Send + Sync {
    /// Fills `buf` with the bytes at `offset`.
    fn fetch_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn store_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written bytes durable, where that means anything.
    fn sync(&self) -> io::Result<()>;
}

impl Storage for File {
    fn fetch_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn store_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }
}

/// Storage behind a reference or a shared pointer is storage too.
macro_rules! forward_storage {
    ($($ty:ty),*) => {$(
        impl<T: Storage + ?Sized> Storage for $ty {
            fn fetch_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).fetch_at(buf, offset)
            }
            fn store_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
                (**self).store_at(buf, offset)
            }
            fn sync(&self) -> io::Result<()> {
                (**self).sync()
            }
        }
    )*};
}
forward_storage!(&T, Arc<T>);

/// The partition's byte range `[offset, offset + len)` of the storage: positions are
/// relative to the partition, and nothing outside it is read or written.
pub(crate) struct Dev<'a> {
    pub(crate) file: Box<dyn Storage + 'a>,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Dev<'_> {
    /// Fills `buf` from `pos`; `what` ("reading the superblock") names the read in errors.
    pub(crate) fn read_at(&self, pos: u64, buf: &mut [u8], what: &'static str) -> Result<()> {
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(crate::error::corrupt(format!(
                "a structure at byte {pos} (+{}) lies beyond the end of the partition ({} bytes)",
                buf.len(),
                self.len
            )));
        }
        self.file
            .fetch_at(buf, self.offset + pos)
            .map_err(|source| Error::Io {
                op: what,
                offset: self.offset + pos,
                source,
            })
    }

    /// `len` bytes read from `pos`.
    pub(crate) fn read_vec(&self, pos: u64, len: usize, what: &'static str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_at(pos, &mut buf, what)?;
        Ok(buf)
    }

    /// Writes `buf` at `pos`; `what` names the write in errors.
    pub(crate) fn write_at(&self, pos: u64, buf: &[u8], what: &'static str) -> Result<()> {
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(crate::error::corrupt(format!(
                "refusing to write at byte {pos} (+{}) beyond the end of the partition ({} bytes)",
                buf.len(),
                self.len
            )));
        }
        self.file
            .store_at(buf, self.offset + pos)
            .map_err(|source| Error::Io {
                op: what,
                offset: self.offset + pos,
                source,
            })
    }

    /// Makes everything written durable.
    pub(crate) fn sync(&self, what: &'static str) -> Result<()> {
        self.file.sync().map_err(|source| Error::Io {
            op: what,
            offset: self.offset,
            source,
        })
    }
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
