//! Overlays: file trees copied into a node's root filesystem, with their modes.
//!
//! Built-in overlays live in `overlays/<name>/` of the source tree and are embedded in the
//! binary; cluster.yaml can add directories for every node, per role and per node. Symbolic
//! links are copied as links and never followed; a relative link that climbs out of its
//! overlay is refused.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::io::sha256_reader;
use crate::op::{Action, Content, Op, Scope};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/overlays.rs"));
}

/// Built-in overlays every node gets.
pub const DEFAULT_BUILTINS: &[&str] = &["k3s"];

/// The ops of a built-in overlay, onto the partition labelled `partition`: the same for
/// every node.
pub fn builtin_ops(name: &str, partition: &str) -> Result<Vec<Op>> {
    let ops: Vec<Op> = embedded::OVERLAYS
        .iter()
        .filter(|(n, ..)| *n == name)
        .map(|(_, path, mode, bytes)| {
            Op::new(
                partition,
                path,
                Action::Write(Content::Bytes(bytes.to_vec())),
                *mode as u16,
            )
            .role_wide()
        })
        .collect();
    if ops.is_empty() {
        bail!("there is no built-in overlay named '{name}'");
    }
    Ok(ops)
}

/// Lexically resolves `target` (relative to the directory of the link at `link_rel`) and
/// checks that it stays inside the directory `link_rel` is relative to (an absolute `target`
/// counts as inside: it is checked elsewhere, if at all).
pub(crate) fn stays_inside(link_rel: &Path, target: &Path) -> bool {
    let mut depth: i64 = link_rel
        .parent()
        .map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// The ops that copy the directory tree `root` into the root of `partition`, in a stable
/// order (parents before children, names sorted), owned by root, modes as on disk, each with
/// `scope`.
pub fn dir_ops(root: &Path, partition: &str, scope: Scope) -> Result<Vec<Op>> {
    let meta = std::fs::metadata(root).with_context(|| {
        format!(
            "overlay directory {} does not exist: fix the path in cluster.yaml (relative paths start at cluster.yaml's directory)",
            root.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("overlay {} is not a directory", root.display());
    }
    let mut ops = Vec::new();
    walk(root, Path::new(""), partition, &mut ops)?;
    Ok(ops.into_iter().map(|o| o.scoped(scope)).collect())
}

fn walk(root: &Path, rel: &Path, partition: &str, ops: &mut Vec<Op>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join(rel);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read overlay directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read overlay directory {}", dir.display()))?;
    entries.sort();
    for path in entries {
        let name = path.file_name().expect("directory entries have names");
        let rel_path = rel.join(name);
        let image_path = format!("/{}", rel_path.to_string_lossy());
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let mode = (meta.permissions().mode() & 0o7777) as u16;
        let op = |action| Op::new(partition, &image_path, action, mode);
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("cannot read link {}", path.display()))?;
            if !stays_inside(&rel_path, &target) {
                bail!(
                    "overlay symlink {} -> {} escapes its overlay {}: make it point inside the overlay or use an absolute path in the image",
                    path.display(),
                    target.display(),
                    root.display()
                );
            }
            let target = target
                .to_str()
                .with_context(|| format!("link target of {} is not UTF-8", path.display()))?
                .to_string();
            ops.push(Op {
                mode: 0o777,
                ..op(Action::Symlink { target })
            });
        } else if ft.is_dir() {
            ops.push(op(Action::Mkdir));
            walk(root, &rel_path, partition, ops)?;
        } else if ft.is_file() {
            let f = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let sha256 =
                sha256_reader(f).with_context(|| format!("cannot read {}", path.display()))?;
            ops.push(op(Action::Write(Content::File {
                path: path.clone(),
                size: meta.len(),
                sha256,
            })));
        } else {
            bail!(
                "{} is neither a file, a directory nor a symlink: overlays cannot hold it",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn builtin_k3s_overlay_is_embedded() {
        let ops = builtin_ops("k3s", "writable").unwrap();
        let paths: Vec<&str> = ops.iter().map(|o| o.path.as_str()).collect();
        assert!(
            paths.contains(&"/etc/modules-load.d/pikube-k3s.conf"),
            "{paths:?}"
        );
        assert!(ops.iter().all(|o| o.mode == 0o644 && o.uid == 0));
        assert!(builtin_ops("nope", "writable").is_err());
    }

    #[test]
    fn directory_tree_with_modes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        std::fs::write(r.join("usr/local/bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            r.join("usr/local/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(r.join("usr/local/secret"), b"x").unwrap();
        std::fs::set_permissions(
            r.join("usr/local/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        symlink("tool", r.join("usr/local/bin/alias")).unwrap();
        symlink("/etc/hostname", r.join("usr/local/abs")).unwrap();
        let ops = dir_ops(r, "writable", Scope::Node).unwrap();
        let got: Vec<(String, &'static str, u16)> = ops
            .iter()
            .map(|o| (o.path.clone(), o.action.kind(), o.mode))
            .collect();
        assert_eq!(
            got,
            [
                ("/usr".to_string(), "dir", 0o755),
                ("/usr/local".into(), "dir", 0o755),
                ("/usr/local/abs".into(), "symlink", 0o777),
                ("/usr/local/bin".into(), "dir", 0o755),
                ("/usr/local/bin/alias".into(), "symlink", 0o777),
                ("/usr/local/bin/tool".into(), "file", 0o755),
                ("/usr/local/secret".into(), "file", 0o600),
            ]
        );
    }

    #[test]
    fn escaping_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        symlink("../../../home/me/.ssh/id_ed25519", d.path().join("etc/key")).unwrap();
        let e = format!(
            "{:#}",
            dir_ops(d.path(), "writable", Scope::Node).unwrap_err()
        );
        assert!(e.contains("escapes its overlay"), "{e}");
        assert!(stays_inside(Path::new("a/b/link"), Path::new("../c")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../c")));
        assert!(stays_inside(Path::new("link"), Path::new("x/../y")));
    }

    #[test]
    fn missing_overlay_is_named() {
        let e = format!(
            "{:#}",
            dir_ops(Path::new("/nonexistent/ov"), "w", Scope::Node).unwrap_err()
        );
        assert!(
            e.contains("/nonexistent/ov") && e.contains("cluster.yaml"),
            "{e}"
        );
    }
}
