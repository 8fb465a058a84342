//! A directory on the build host as a [`Tree`]: what the netboot export writes node files
//! into. Modes are set as planned; owners only when running as root (otherwise the files
//! belong to the user who builds, and the export records the planned owners).

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::op::{Meta, Tree};

pub struct HostDir {
    root: PathBuf,
    name: String,
}

impl HostDir {
    /// The tree rooted at `root`, which must exist.
    pub fn new(root: &Path) -> Result<HostDir> {
        if !root.is_dir() {
            bail!("{} is not a directory", root.display());
        }
        Ok(HostDir {
            root: root.to_path_buf(),
            name: root.display().to_string(),
        })
    }

    /// `path` below the root: absolute within the tree, no `..`.
    fn at(&self, path: &str) -> Result<PathBuf> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("{}:{path}: not a plain path inside the tree", self.name);
        }
        Ok(self.root.join(rel))
    }

    /// Applies owner and mode, as far as this process may.
    fn own(&self, p: &Path, meta: &Meta) -> Result<()> {
        fs::set_permissions(p, fs::Permissions::from_mode(meta.mode as u32))
            .with_context(|| format!("cannot set the mode of {}", p.display()))?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::lchown(p, Some(meta.uid), Some(meta.gid))
                .with_context(|| format!("cannot set the owner of {}", p.display()))?;
        }
        Ok(())
    }

    fn parents(&self, p: &Path) -> Result<()> {
        let dir = p.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
    }
}

impl Tree for HostDir {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = self.at(path)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn write(&mut self, path: &str, data: &mut dyn Read, size: u64, meta: &Meta) -> Result<u64> {
        let p = self.at(path)?;
        self.parents(&p)?;
        // Replace, never write through: a link or hard link at the name is not followed.
        let _ = fs::remove_file(&p);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        let n = std::io::copy(&mut data.take(size), &mut f)
            .with_context(|| format!("cannot write {}", p.display()))?;
        if n != size {
            bail!("{}: expected {size} bytes, got {n}", p.display());
        }
        self.own(&p, meta)?;
        Ok(n)
    }

    fn mkdir(&mut self, path: &str, meta: &Meta) -> Result<()> {
        let p = self.at(path)?;
        fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        self.own(&p, meta)
    }

    fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<()> {
        let p = self.at(path)?;
        self.parents(&p)?;
        self.remove(path)?;
        std::os::unix::fs::symlink(target, &p)
            .with_context(|| format!("cannot create the link {}", p.display()))?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::lchown(&p, Some(meta.uid), Some(meta.gid))
                .with_context(|| format!("cannot set the owner of {}", p.display()))?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &str) -> Result<bool> {
        let p = self.at(path)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Action, Content, Op};

    #[test]
    fn a_plan_applies_to_a_directory_like_to_a_partition() {
        let d = tempfile::tempdir().unwrap();
        let mut tree = HostDir::new(d.path()).unwrap();
        let ops = [
            Op::file("x", "/etc/hostname", b"n1\n".to_vec(), 0o644),
            Op::file("x", "/etc/pikube/key", b"secret".to_vec(), 0o600).secret(),
            Op::new("x", "/var/lib/data", Action::Mkdir, 0o700),
            Op::symlink("x", "/usr/local/bin/kubectl", "k3s"),
            Op::new("x", "/etc/gone", Action::Remove, 0o644),
            Op::write(
                "x",
                "/etc/hostname",
                Content::Bytes(b"n2\n".to_vec()),
                0o640,
            ),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let records = super::super::apply_to(&mut tree, &refs).unwrap();
        let p = d.path();
        assert_eq!(fs::read_to_string(p.join("etc/hostname")).unwrap(), "n2\n");
        let mode = |f: &str| fs::metadata(p.join(f)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/hostname"), 0o640);
        assert_eq!(mode("etc/pikube/key"), 0o600);
        assert_eq!(mode("var/lib/data"), 0o700);
        assert_eq!(
            fs::read_link(p.join("usr/local/bin/kubectl")).unwrap(),
            Path::new("k3s")
        );
        assert_eq!(
            records.len(),
            5,
            "the absent file's removal is not recorded"
        );
        assert!(records[1].sha256.is_none(), "secret content is not hashed");
        // A link planted at a file's name is replaced, not written through.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("etc/planted")).unwrap();
        let op = Op::file("x", "/etc/planted", b"x".to_vec(), 0o644);
        super::super::apply_to(&mut tree, &[&op]).unwrap();
        assert_eq!(fs::read(outside.path()).unwrap(), b"");
        assert!(tree.at("/../escape").is_err());
    }
}
