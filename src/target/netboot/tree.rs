//! Writing the netboot tree: identical files stored once (hard links), the whole tree put in
//! place at once so a failed export leaves the previous tree untouched.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::io::sha256_bytes;

/// Files under a root directory, each content stored once.
pub struct TreeWriter {
    root: PathBuf,
    /// SHA-256 -> the first path written with that content.
    by_content: BTreeMap<String, PathBuf>,
    /// Relative path -> SHA-256 of what was written there.
    written: BTreeMap<String, String>,
    linked: usize,
}

impl TreeWriter {
    pub fn new(root: PathBuf) -> Result<TreeWriter> {
        mkdirs(&root)?;
        Ok(TreeWriter {
            root,
            by_content: BTreeMap::new(),
            written: BTreeMap::new(),
            linked: 0,
        })
    }

    /// Writes `rel` (a path below the root); fails if it was written before.
    pub fn put(&mut self, rel: &str, data: &[u8]) -> Result<()> {
        let rel = rel.trim_start_matches('/');
        if self.written.contains_key(rel) {
            bail!("{rel} would be written twice in the netboot tree");
        }
        self.write(rel, data)
    }

    /// Writes `rel` unless it holds the same bytes already (files shared between nodes);
    /// different bytes at one path are an error.
    pub fn put_once(&mut self, rel: &str, data: &[u8]) -> Result<()> {
        let rel = rel.trim_start_matches('/');
        match self.written.get(rel) {
            Some(sha) if *sha == sha256_bytes(data) => Ok(()),
            Some(_) => bail!(
                "two nodes need different files at {rel} of the netboot tree: export them in separate trees"
            ),
            None => self.write(rel, data),
        }
    }

    fn write(&mut self, rel: &str, data: &[u8]) -> Result<()> {
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("'{rel}' is not a plain relative path");
        }
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            mkdirs(parent)?;
        }
        let sha = sha256_bytes(data);
        match self.by_content.get(&sha) {
            Some(first) => {
                fs::hard_link(first, &path).with_context(|| {
                    format!("cannot link {} to {}", path.display(), first.display())
                })?;
                self.linked += 1;
            }
            None => {
                write_file(&path, data)?;
                self.by_content.insert(sha.clone(), path);
            }
        }
        self.written.insert(rel.to_string(), sha);
        Ok(())
    }

    /// Files written (links included).
    pub fn files(&self) -> usize {
        self.written.len()
    }

    /// Files that are hard links to an identical one.
    pub fn linked(&self) -> usize {
        self.linked
    }
}

/// Directories of the tree are readable by all: dnsmasq serves TFTP as an unprivileged user.
fn mkdirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a file readable by all (the tree holds no secrets).
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// A tree being written beside its final place.
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
}

/// A directory that an export may replace: absent, empty, or a tree it wrote before.
fn replaceable(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(true);
    }
    let empty = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_none();
    Ok(empty || (dir.join(super::DNSMASQ_CONF).is_file() && dir.join(super::NBD_CONF).is_file()))
}

impl Staging {
    pub fn new(target: &Path) -> Result<Staging> {
        crate::emit::refuse_linked_dir(target)?;
        if !replaceable(target)? {
            bail!(
                "{} exists and is not a network boot tree (no {} and {}): name a new or empty directory for --netboot",
                target.display(),
                super::DNSMASQ_CONF,
                super::NBD_CONF
            );
        }
        let name = target
            .file_name()
            .with_context(|| format!("--netboot {} names no directory", target.display()))?
            .to_string_lossy()
            .to_string();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        mkdirs(parent)?;
        let dir = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        crate::emit::register_temporary(&dir);
        mkdirs(&dir)?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Puts the tree in place of the target, removing the earlier tree.
    pub fn commit(self) -> Result<()> {
        let old = self.dir.with_extension("old");
        let had = self.target.exists();
        if had {
            fs::rename(&self.target, &old).with_context(|| {
                format!(
                    "cannot move the earlier tree {} aside",
                    self.target.display()
                )
            })?;
        }
        fs::rename(&self.dir, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.dir.display(),
                self.target.display()
            )
        })?;
        crate::emit::unregister_temporary(&self.dir);
        if had {
            fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the earlier tree at {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
            crate::emit::unregister_temporary(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn identical_files_are_one_inode_and_a_failed_export_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("nb");
        let s = Staging::new(&target).unwrap();
        let mut w = TreeWriter::new(s.path().join("tftp")).unwrap();
        w.put("a/start4.elf", b"firmware").unwrap();
        w.put("b/start4.elf", b"firmware").unwrap();
        w.put("b/cmdline.txt", b"b").unwrap();
        w.put_once("shared/k", b"k").unwrap();
        w.put_once("shared/k", b"k").unwrap();
        assert!(w.put_once("shared/k", b"other").is_err());
        assert!(w.put("a/start4.elf", b"x").is_err());
        assert!(w.put("../escape", b"x").is_err());
        assert_eq!((w.files(), w.linked()), (4, 1));
        write_file(&s.path().join(super::super::DNSMASQ_CONF), b"").unwrap();
        write_file(&s.path().join(super::super::NBD_CONF), b"").unwrap();
        s.commit().unwrap();
        let ino = |p: &str| fs::metadata(target.join(p)).unwrap().ino();
        assert_eq!(ino("tftp/a/start4.elf"), ino("tftp/b/start4.elf"));
        assert_ne!(ino("tftp/a/start4.elf"), ino("tftp/b/cmdline.txt"));
        // A second export that fails leaves the first in place and no partial directory.
        let s = Staging::new(&target).unwrap();
        write_file(&s.path().join("x"), b"").unwrap();
        drop(s);
        assert!(target.join("tftp/b/cmdline.txt").exists());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
        // A directory that is not a tree is not replaced.
        let other = t.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("keep"), b"").unwrap();
        assert!(Staging::new(&other).is_err());
    }
}
