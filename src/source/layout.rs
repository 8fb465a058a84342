//! The cache's directory layout, defined once. Every part of the tool that keeps something
//! in the cache (downloads, prepared bases, image archives, registry blobs) finds its place
//! here, and `cache list|prune` reads the same definitions.

use std::path::{Path, PathBuf};

/// The directories under a cache root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

/// One prepared base in the store: its directory, metadata, image and lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedEntry {
    pub dir: PathBuf,
    /// Written last: the entry is complete when it exists.
    pub meta: PathBuf,
    pub image: PathBuf,
    pub lock: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Content-addressed files: downloads and OCI blobs, by SHA-256.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Whether `path` names a blob of some cache (`<root>/blobs/sha256/<hex>`): a file the
    /// tool downloaded, not one the user gave.
    pub fn is_blob(path: &Path) -> bool {
        let named_by_digest = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(super::cache::is_sha256_hex);
        named_by_digest && path.parent().is_some_and(|p| p.ends_with("blobs/sha256"))
    }

    /// Which blob a downloaded URL resolved to, one index file per URL.
    pub fn urls(&self) -> PathBuf {
        self.root.join("urls")
    }

    /// Interrupted downloads, resumed by the next build.
    pub fn partial(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// Per-URL download locks.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Downloads in progress.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Prepared bases: decompressed images with a role's shared files applied.
    pub fn prepared(&self) -> PathBuf {
        self.root.join("prepared")
    }

    /// The prepared base named `key`.
    pub fn prepared_entry(&self, key: &str) -> PreparedEntry {
        let dir = self.prepared().join(key);
        PreparedEntry {
            meta: dir.join("prepared.json"),
            image: dir.join("base.img"),
            lock: self.prepared().join(format!("{key}.lock")),
            dir,
        }
    }

    /// Container image archives, ready to preload.
    pub fn image_archives(&self) -> PathBuf {
        self.root.join("oci").join("archives")
    }

    /// What image references resolved to.
    pub fn image_refs(&self) -> PathBuf {
        self.root.join("oci").join("refs")
    }
}
