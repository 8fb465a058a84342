//! The prepared-base store: decompressed base images with a role's shared operations already
//! applied, kept in the cache under a key that names everything that shaped them, so nodes of
//! the same role (in this build and later ones) derive from one copy.
//!
//! A prepared base holds what every node of its role shares, registry credentials
//! (`k3s.registries`) included, so the store keeps it private: directories 0700 and files
//! 0600 whatever the umask, entries made by earlier versions included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::disk::protect::AreaDigest;
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
    /// The boot loader areas' digests as the base image had them; every node derived from
    /// this base must still have them.
    pub boot_areas: Vec<AreaDigest>,
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
        "format": 2,
        "tool": env!("CARGO_PKG_VERSION"),
        "base": base_sha256,
        "image": plan.image.name,
        "bootloader": plan.image.bootloader,
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

    /// Adds to `p` (the prepared base for `key`) the compressed frames of its image in each
    /// compressed format of `formats`, made once and kept in its entry.
    pub fn add_frames(
        &self,
        key: &str,
        p: &mut Prepared,
        formats: &[Format],
        progress: &Progress,
    ) -> Result<()> {
        let dir = self.layout.prepared_entry(key).dir;
        for &f in formats.iter().filter(|f| f.is_compressed()) {
            let frames = dir.join(format!("frames-{}", f.name()));
            p.frames
                .insert(f, FrameIndex::load_or_build(&p.path, f, &frames, progress)?);
        }
        make_private(&dir)
    }

    fn load(&self, key: &str) -> Result<Prepared> {
        let entry = self.layout.prepared_entry(key);
        make_private(&entry.dir)?;
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
        make: impl FnOnce(&Path) -> Result<super::derive::PreparedImage>,
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
        emit::private_dir(root)?;
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
        emit::private_dir(&tmp)?;
        let built = (|| -> Result<Prepared> {
            let img = tmp.join(entry.image.file_name().expect("an image file name"));
            let super::derive::PreparedImage {
                files,
                growth,
                boot_areas,
            } = make(&img)?;
            // On disk before it enters the cache, where later builds trust it.
            super::derive::open_rw(&img)?
                .sync_all()
                .with_context(|| format!("cannot sync {}", img.display()))?;
            let p = Prepared {
                path: PathBuf::new(),
                files,
                growth,
                boot_areas,
                frames: BTreeMap::new(),
                from_cache: false,
            };
            emit::write_atomic(
                &tmp.join(entry.meta.file_name().expect("a metadata file name")),
                serde_json::to_string_pretty(&p)?.as_bytes(),
            )?;
            make_private(&tmp)?;
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

/// Makes the tree at `path` private: directories 0700, files 0600 (links are left alone).
fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let mode = match meta.file_type() {
        t if t.is_dir() => 0o700,
        t if t.is_file() => 0o600,
        _ => return Ok(()),
    };
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(
            || {
                format!(
                    "cannot make {} private: it holds secrets; run `chmod -R go= {}`",
                    path.display(),
                    path.display()
                )
            },
        )?;
    }
    if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", path.display()))?;
            make_private(&e.path())?;
        }
    }
    Ok(())
}
