//! Offline writer for ext4 filesystems that live in a byte range of an image file.
//!
//! [`Ext4Fs::open`] validates every precondition (feature bits, journal state,
//! orphans, superblock and group descriptor checksums) before a single byte is
//! written. File data is written directly into freshly allocated blocks while
//! all metadata (bitmaps, descriptors, inode tables, directories, extent
//! blocks) is kept in memory and written once by [`Ext4Fs::close`]. Until
//! `close`, the on-disk filesystem is therefore unchanged as far as any reader
//! is concerned: only previously free blocks receive data. (Blocks freed
//! during the session, e.g. by an overwrite, may be reused for new data
//! before `close`; a process killed mid-session can therefore leave old file
//! contents damaged. Treat an image whose `close` did not succeed as lost.)
//!
//! Semantics worth knowing: `write_file` on an existing symlink replaces the
//! symlink by a regular file (it does not write through it); `symlink`
//! replaces an existing file or symlink (like `ln -sf`); intermediate path
//! components that are symlinks are followed (so `/lib/...` works on
//! merged-/usr systems). Linear directories stay linear when they grow;
//! indexed (htree) directories stay indexed.
//!
//! Supported: 1, 2 and 4 KiB blocks, 32- and 64-byte group descriptors,
//! `flex_bg`, `meta_bg`, `metadata_csum` (with or without `metadata_csum_seed`),
//! `gdt_csum`, `huge_file`, `dir_nlink`, `extra_isize`, `orphan_file`
//! (never written), htree directories (insertion by hash, leaf and index
//! splits), fast and slow symlinks. The writer and [`grow`] share one description of
//! the on-disk format and one feature policy (`layout`), so they accept and refuse the
//! same filesystems; the policy lists every feature with the reason for its verdict.
//!
//! Nothing here reads the clock: callers pass the time to stamp ([`Ext4Fs::open`],
//! [`grow::grow_fs`]).

mod csum;
mod dir;
mod disk;
mod error;
mod fs;
pub mod grow;
mod hash;
mod inode;
mod layout;

pub use disk::Storage;
pub use error::{Error, Result};
pub use fs::Ext4Fs;

/// Ownership, permissions and modification time of a created file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What [`Ext4Fs::stat`] reports (the entry itself, symlinks not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (no file type bits).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub links: u16,
}
