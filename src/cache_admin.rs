//! `pikube-image cache list|prune`: what the shared cache holds and how to trim it.
//!
//! Every entry's modification time is its last use (cache hits refresh it), so pruning by age
//! keeps what recent builds needed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::source::layout::Layout;

/// One removable unit of the cache.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// `download`, `prepared`, `image-archive`, `oci-blob`, `partial`.
    pub kind: String,
    /// What it is: the URL of a download, the key of a prepared base, a file name.
    pub name: String,
    /// Bytes it takes on disk (sparse files count what is allocated).
    pub disk_bytes: u64,
    /// Seconds since the Unix epoch of its last use.
    pub last_used: u64,
    /// Files and directories that make it up.
    #[serde(skip)]
    pub paths: Vec<PathBuf>,
}

fn disk_usage(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.blocks() * 512
    }
}

fn mtime(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An entry for one cache file, named `prefix` + its file name.
fn file_entry(kind: &str, mut prefix: String, f: PathBuf) -> Entry {
    prefix.push_str(&f.file_name().unwrap_or_default().to_string_lossy());
    Entry {
        kind: kind.into(),
        name: prefix,
        disk_bytes: disk_usage(&f),
        last_used: mtime(&f),
        paths: vec![f],
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Everything in the cache at `root`, grouped into entries.
pub fn list(root: &Path) -> Result<Vec<Entry>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let layout = Layout::new(root);
    let mut entries = Vec::new();
    let mut claimed = std::collections::BTreeSet::new();
    // Downloads: the URL index names what a blob is.
    for idx in files(&layout.urls()) {
        let Ok(text) = std::fs::read_to_string(&idx) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(digest), Some(url)) = (lines.next(), lines.next()) else {
            continue;
        };
        let blob = layout.blobs().join(digest.trim());
        if !blob.exists() {
            continue;
        }
        claimed.insert(blob.clone());
        entries.push(Entry {
            kind: "download".into(),
            name: url.trim().to_string(),
            disk_bytes: disk_usage(&blob),
            last_used: mtime(&blob),
            paths: vec![blob, idx],
        });
    }
    for dir in files(&layout.prepared()) {
        let key = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let entry = layout.prepared_entry(&key);
        if !dir.is_dir() || !entry.meta.exists() {
            continue;
        }
        entries.push(Entry {
            kind: "prepared".into(),
            name: key,
            disk_bytes: disk_usage(&dir),
            last_used: mtime(&entry.meta),
            paths: vec![entry.dir, entry.lock],
        });
    }
    for f in files(&layout.image_archives()) {
        entries.push(file_entry("image-archive", String::new(), f));
    }
    // Remaining blobs are image manifests, configs and layers.
    for blob in files(&layout.blobs()) {
        if claimed.contains(&blob) {
            continue;
        }
        entries.push(file_entry("oci-blob", "sha256:".into(), blob));
    }
    for f in files(&layout.partial()) {
        entries.push(file_entry("partial", String::new(), f));
    }
    Ok(entries)
}

/// Parses `30d`, `12h`, `90m`, `45s`, `2w`.
pub fn parse_age(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not an age like 30d, 12h or 2w"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        other => bail!("unknown unit '{other}' in '{s}': use s, m, h, d or w"),
    };
    Ok(Duration::from_secs(n * secs))
}

/// Removes the entries last used before `now - older_than` (all of them when `None`), and
/// returns them. Entries in use by a running build are protected by its locks only for
/// downloads in progress; prune between builds.
pub fn prune(root: &Path, older_than: Option<Duration>, now: SystemTime) -> Result<Vec<Entry>> {
    let cutoff = older_than
        .map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH))
        .map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let mut removed = Vec::new();
    for e in list(root)? {
        if cutoff.is_some_and(|c| e.last_used >= c) {
            continue;
        }
        for p in &e.paths {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            match r {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot remove {}", p.display()));
                }
            }
        }
        removed.push(e);
    }
    Ok(removed)
}

/// The listing `pikube-image cache list` prints: one line per entry with its age at `now`
/// (seconds since the epoch), then the total.
pub fn render_list(root: &Path, entries: &[Entry], now: u64) -> String {
    let mut out = format!("{}\n", root.display());
    let mut total = 0;
    for e in entries {
        total += e.disk_bytes;
        out.push_str(&format!(
            "{:<14} {:>10}  {:>4}d ago  {}\n",
            e.kind,
            crate::progress::human_bytes(e.disk_bytes),
            now.saturating_sub(e.last_used) / 86_400,
            e.name
        ));
    }
    out.push_str(&format!(
        "{} entries, {}\n",
        entries.len(),
        crate::progress::human_bytes(total)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_age(p: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        std::fs::File::options()
            .append(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert!(parse_age("soon").is_err());
        assert!(parse_age("3y").is_err());
    }

    #[test]
    fn list_groups_and_prune_by_age() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let cache = crate::source::Cache::open(root).unwrap();
        let (old, _) = cache.put(&mut &b"old download"[..], None).unwrap();
        let (new, _) = cache.put(&mut &b"new download"[..], None).unwrap();
        std::fs::create_dir_all(root.join("urls")).unwrap();
        std::fs::write(
            root.join("urls/a"),
            format!("{old}\nhttps://example.com/old.img.xz\n"),
        )
        .unwrap();
        std::fs::write(
            root.join("urls/b"),
            format!("{new}\nhttps://example.com/new.img.xz\n"),
        )
        .unwrap();
        let (layer, _) = cache.put(&mut &b"a layer"[..], None).unwrap();
        std::fs::create_dir_all(root.join("prepared/k1")).unwrap();
        std::fs::write(root.join("prepared/k1/prepared.json"), "{}").unwrap();
        std::fs::write(root.join("prepared/k1/base.img"), vec![1u8; 8192]).unwrap();
        set_age(&cache.blob_path(&old), 40 * 86_400);
        set_age(&root.join("prepared/k1/prepared.json"), 40 * 86_400);

        let entries = list(root).unwrap();
        let kinds: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.kind.as_str(), e.name.as_str()))
            .collect();
        assert!(
            kinds.contains(&("download", "https://example.com/old.img.xz")),
            "{kinds:?}"
        );
        assert!(kinds.contains(&("prepared", "k1")));
        assert!(kinds.contains(&("oci-blob", format!("sha256:{layer}").as_str())));
        assert!(
            entries
                .iter()
                .find(|e| e.kind == "prepared")
                .unwrap()
                .disk_bytes
                >= 8192
        );

        let removed = prune(
            root,
            Some(Duration::from_secs(30 * 86_400)),
            SystemTime::now(),
        )
        .unwrap();
        let names: Vec<&str> = removed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["https://example.com/old.img.xz", "k1"]);
        assert!(cache.get(&old).is_none() && !root.join("prepared/k1").exists());
        assert!(cache.get(&new).is_some(), "recently used entries stay");
        let all = prune(root, None, SystemTime::now()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(list(root).unwrap().is_empty());
    }
}
