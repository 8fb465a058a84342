//! The prepared-base store: decompressed base images with a role's shared operations already
//! applied, kept in the cache under a key that names everything that shaped them, so nodes of
//! the same role (in this build and later ones) derive from one copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::emit;
use crate::formats::{Format, FrameIndex};
use crate::manifest::{FileRecord, GrowthRecord};
use crate::plan::{OpView, Plan};
use crate::progress::Progress;
use crate::source::layout::Layout;

/// A decompressed base image with a role's shared ops applied, kept in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    #[serde(skip)]
    pub path: PathBuf,
    pub files: Vec<FileRecord>,
    pub growth: Option<GrowthRecord>,
    /// Compressed frames of the prepared image, per compressed output format.
    #[serde(skip)]
    pub frames: BTreeMap<Format, FrameIndex>,
    /// Whether it came from an earlier build.
    #[serde(skip)]
    pub from_cache: bool,
}

/// Identifies a prepared base: the base image, the OS image entry, the role and every shared
/// op (content digests included), the tool version, the growth margin and the build time
/// when it is fixed (reproducible builds).
pub fn key(plan: &Plan, base_sha256: &str, margin: u64) -> String {
    let shared: Vec<OpView> = plan.views().into_iter().filter(|v| v.shared).collect();
    let material = serde_json::json!({
        "format": 1,
        "tool": env!("CARGO_PKG_VERSION"),
        "base": base_sha256,
        "image": plan.image.name,
        "role": plan.role.as_str(),
        "margin": margin,
        "epoch": std::env::var("SOURCE_DATE_EPOCH").ok(),
        "ops": shared,
    });
    crate::io::sha256_bytes(material.to_string().as_bytes())
}

/// The prepared bases of a cache.
pub struct PreparedStore {
    layout: Layout,
}

impl PreparedStore {
    pub fn new(layout: Layout) -> PreparedStore {
        PreparedStore { layout }
    }

    /// Whether the store holds a complete prepared base for `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.layout.prepared_entry(key).meta.exists()
    }

    /// Where the frames of `key`'s image in `format` are kept.
    pub fn frames_dir(&self, key: &str, format: Format) -> PathBuf {
        let dir = self.layout.prepared_entry(key).dir;
        dir.join(format!("frames-{}", format.name()))
    }

    fn load(&self, key: &str) -> Result<Prepared> {
        let entry = self.layout.prepared_entry(key);
        let text = std::fs::read_to_string(&entry.meta)
            .with_context(|| format!("cannot read {}", entry.meta.display()))?;
        let mut p: Prepared = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: delete {}",
                entry.meta.display(),
                entry.dir.display()
            )
        })?;
        p.path = entry.image;
        p.from_cache = true;
        Ok(p)
    }

    /// The prepared base for `key`: from the store, or made by `make` (which writes the image
    /// file it is given and returns what it wrote) under a lock, and moved into the store
    /// only when complete.
    pub fn get_or_make(
        &self,
        key: &str,
        progress: &Progress,
        make: impl FnOnce(&Path) -> Result<(Vec<FileRecord>, Option<GrowthRecord>)>,
    ) -> Result<Prepared> {
        use fs4::fs_std::FileExt as _;
        if self.contains(key) {
            progress.message(&format!(
                "using prepared base {} from the cache",
                &key[..12]
            ));
            return self.load(key);
        }
        let root = &self.layout.prepared();
        let entry = self.layout.prepared_entry(key);
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let lock_path = &entry.lock;
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock_exclusive()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if self.contains(key) {
            return self.load(key);
        }
        emit::sweep_stale(root, "tmp");
        let tmp = root.join(format!(".{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        emit::register_temporary(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let built = (|| -> Result<Prepared> {
            let img = tmp.join(entry.image.file_name().expect("an image file name"));
            let (files, growth) = make(&img)?;
            // On disk before it enters the cache, where later builds trust it.
            super::derive::open_rw(&img)?
                .sync_all()
                .with_context(|| format!("cannot sync {}", img.display()))?;
            let p = Prepared {
                path: PathBuf::new(),
                files,
                growth,
                frames: BTreeMap::new(),
                from_cache: false,
            };
            emit::write_atomic(
                &tmp.join(entry.meta.file_name().expect("a metadata file name")),
                serde_json::to_string_pretty(&p)?.as_bytes(),
            )?;
            Ok(p)
        })();
        emit::unregister_temporary(&tmp);
        let dir = &entry.dir;
        match built {
            Ok(mut p) => {
                std::fs::rename(&tmp, dir).with_context(|| {
                    format!("cannot move {} to {}", tmp.display(), dir.display())
                })?;
                p.path = entry.image;
                Ok(p)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}
