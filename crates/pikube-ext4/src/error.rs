//! Errors of the ext4 writer and of the offline grow. Every message says what is wrong and
//! what the user can do about it.

/// Everything that can go wrong while opening, modifying or growing an ext4 filesystem.
/// Unless the variant is [`Error::Io`] raised while writing, nothing has been written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "I/O error while {op} at byte {offset} of the image: {source}; check that the image file is readable, writable and not truncated"
    )]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no ext4 filesystem at byte offset {offset} of the image (bad superblock magic); check the partition offset"
    )]
    NotExt4 { offset: u64 },
    #[error(
        "the ext4 filesystem uses {feature}, which cannot be edited or grown offline here; nothing was written. Use an image without it, or edit it with the kernel (loop mount) or grow it with resize2fs instead"
    )]
    Unsupported { feature: String },
    #[error(
        "the ext4 filesystem needs journal recovery (it was not cleanly unmounted); nothing was written. Run `e2fsck -fy` on the partition (or mount and unmount it once) and try again"
    )]
    NeedsRecovery,
    #[error(
        "the ext4 filesystem has orphan inodes pending cleanup; nothing was written. Run `e2fsck -fy` on the partition and try again"
    )]
    OrphansPending,
    #[error(
        "the ext4 filesystem is corrupt: {what}; nothing more was written. Run `e2fsck -fn` on the partition to inspect it, `e2fsck -fy` to repair it, or download the image again"
    )]
    Corrupt { what: String },
    #[error(
        "not enough free space in the ext4 filesystem: {needed} bytes needed, {available} available ({} bytes missing); nothing was allocated. Grow the partition and filesystem, or write less",
        needed.saturating_sub(*available)
    )]
    NoSpace { needed: u64, available: u64 },
    #[error(
        "no free inodes left in the ext4 filesystem; nothing was allocated. Delete files or recreate the filesystem with more inodes"
    )]
    NoInodes,
    #[error("`{path}` does not exist in the ext4 filesystem; create its parent directories first")]
    NotFound { path: String },
    #[error("`{path}` is not a directory in the ext4 filesystem; a path component names a file")]
    NotADirectory { path: String },
    #[error("`{path}` is a directory in the ext4 filesystem; remove it or choose another path")]
    IsADirectory { path: String },
    #[error("directory `{path}` is not empty; remove its entries first")]
    DirectoryNotEmpty { path: String },
    #[error("invalid path `{path}`: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("too many levels of symbolic links while resolving `{path}`")]
    SymlinkLoop { path: String },
    #[error(
        "reading the contents for `{path}` failed: {source}; check the source file (it must provide exactly the announced length). The destination file was left empty"
    )]
    Source {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the directory index (htree) of `{path}` is full; this writer cannot add another index level. Run `e2fsck -fD` on the partition or use fewer entries"
    )]
    DirIndexFull { path: String },
    #[error(
        "cannot shrink the ext4 filesystem: it has {current} blocks but only {requested} fit in the requested size; pass a size of at least {current} blocks"
    )]
    Shrink { current: u64, requested: u64 },
    #[error("cannot grow the ext4 filesystem offline: {why}")]
    CannotGrow { why: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt { what: what.into() }
}
