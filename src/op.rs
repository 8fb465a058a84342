//! File operations, the unit of a plan, and the tree they are applied to.
//!
//! Every feature (first boot, boot configuration, k3s, GitOps, container images, the user's
//! overlays) contributes [`Op`]s and says, when it creates each one, whether it is the same
//! for every node of the role ([`Scope::Role`], applied once to a shared prepared base) or
//! the node's own. The filesystems only apply plain operations through [`Tree`]; edits of
//! existing files are [`FileEdit`]s, written once against that trait.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use anyhow::Result;

use crate::io::sha256_bytes;

/// Bytes to write, kept in memory (seed files, configs) or streamed from a verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    File {
        path: std::path::PathBuf,
        size: u64,
        sha256: String,
    },
    /// Not downloaded yet (`--dry-run` plans): size and digest are unknown.
    Download {
        url: String,
    },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File { size, .. } => *size,
            Content::Download { .. } => 0,
        }
    }

    pub fn sha256(&self) -> String {
        match self {
            Content::Bytes(b) => sha256_bytes(b),
            Content::File { sha256, .. } => sha256.clone(),
            Content::Download { .. } => String::new(),
        }
    }
}

/// Owner and permission bits of an entry a tree creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// The earliest modification time the entry may get, in seconds since the epoch: trees
    /// that stamp entries with the build's time use this instead when the build's is earlier.
    pub min_mtime: Option<i64>,
}

/// A tree of files that operations are applied to: a FAT partition, an ext4 partition, a
/// directory on the host. Paths are absolute within the tree (`/etc/hostname`).
pub trait Tree {
    /// Names the tree in messages (the partition label, or the directory).
    fn name(&self) -> &str;
    /// The content of a regular file, `None` when there is none at `path`.
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Creates or replaces a regular file (and missing parent directories) with `size` bytes
    /// from `data`; returns the bytes written.
    fn write(&mut self, path: &str, data: &mut dyn Read, size: u64, meta: &Meta) -> Result<u64>;
    /// Creates a directory and its missing parents.
    fn mkdir(&mut self, path: &str, meta: &Meta) -> Result<()>;
    /// Creates a symbolic link, replacing what is at `path`.
    fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<()>;
    /// Removes a file or symlink; whether there was one.
    fn remove(&mut self, path: &str) -> Result<bool>;
}

/// A change to files that already exist in the image (boot configuration), made by reading
/// and rewriting them through a [`Tree`].
pub trait FileEdit: fmt::Debug + Send + Sync {
    /// What the edit does, as `--dry-run` shows it.
    fn describe(&self) -> String;
    /// Applies the edit starting from `path` (the file the op names); returns every file it
    /// leaves in place, with its final content, for the manifest.
    fn apply(&self, tree: &mut dyn Tree, path: &str, meta: &Meta)
    -> Result<Vec<(String, Vec<u8>)>>;
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Create or replace a regular file.
    Write(Content),
    /// Create a directory and its missing parents.
    Mkdir,
    /// Create a symbolic link pointing at `target`.
    Symlink { target: String },
    /// Remove a file or symlink if it exists.
    Remove,
    /// Edit files that are already there.
    Edit(Arc<dyn FileEdit>),
}

impl PartialEq for Action {
    fn eq(&self, other: &Action) -> bool {
        match (self, other) {
            (Action::Write(a), Action::Write(b)) => a == b,
            (Action::Mkdir, Action::Mkdir) | (Action::Remove, Action::Remove) => true,
            (Action::Symlink { target: a }, Action::Symlink { target: b }) => a == b,
            (Action::Edit(a), Action::Edit(b)) => a.describe() == b.describe(),
            _ => false,
        }
    }
}

impl Eq for Action {}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Write(_) => "file",
            Action::Mkdir => "dir",
            Action::Symlink { .. } => "symlink",
            Action::Edit(_) => "edit",
            Action::Remove => "remove",
        }
    }
}

/// Whether an operation is the same for every node of a role on the same base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The same for every node of the role (k3s, shared overlays, kernel arguments): applied
    /// once to the prepared base that node images are derived from.
    Role,
    /// This node's own; applied after the role-wide ops.
    Node,
}

/// One file operation on the partition with the given label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub partition: String,
    pub path: String,
    pub action: Action,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Secret content: never printed, never hashed into the manifest.
    pub secret: bool,
    pub scope: Scope,
    /// See [`Meta::min_mtime`].
    pub min_mtime: Option<i64>,
}

impl Op {
    /// An op on an entry owned by root, neither secret nor role-wide.
    pub fn new(partition: &str, path: &str, action: Action, mode: u16) -> Op {
        Op {
            partition: partition.into(),
            path: path.into(),
            action,
            mode,
            uid: 0,
            gid: 0,
            secret: false,
            scope: Scope::Node,
            min_mtime: None,
        }
    }

    /// Writes `bytes` to a file.
    pub fn file(partition: &str, path: &str, bytes: Vec<u8>, mode: u16) -> Op {
        Op::write(partition, path, Content::Bytes(bytes), mode)
    }

    pub fn write(partition: &str, path: &str, content: Content, mode: u16) -> Op {
        Op::new(partition, path, Action::Write(content), mode)
    }

    /// A symlink (mode 0777, as symlinks have).
    pub fn symlink(partition: &str, path: &str, target: &str) -> Op {
        Op::new(
            partition,
            path,
            Action::Symlink {
                target: target.into(),
            },
            0o777,
        )
    }

    pub fn secret(mut self) -> Op {
        self.secret = true;
        self
    }

    /// Marks the op as the same for every node of the role.
    pub fn role_wide(mut self) -> Op {
        self.scope = Scope::Role;
        self
    }

    /// Gives the op `scope`.
    pub fn scoped(mut self, scope: Scope) -> Op {
        self.scope = scope;
        self
    }

    /// Gives the entry a modification time no earlier than `t`.
    pub fn not_older_than(mut self, t: i64) -> Op {
        self.min_mtime = Some(t);
        self
    }

    pub fn is_role_wide(&self) -> bool {
        self.scope == Scope::Role
    }

    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            min_mtime: self.min_mtime,
        }
    }
}
