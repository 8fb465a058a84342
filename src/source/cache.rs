//! Content-addressed download cache.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/sha256/<hex>   verified files, named by their SHA-256 (read-only)
//! urls/<sha256(url)>   "<hex>\n<url>\n": which blob a URL produced (written after verification)
//! partial/<sha256(url)> interrupted downloads, resumed with HTTP ranges
//! locks/<sha256(url)>.lock  one exclusive lock per download, so parallel builds share work
//! tmp/                 files being stored; renamed into blobs/ once their digest is known
//! ```
//!
//! A blob only ever appears under its name by an atomic rename after its digest was
//! computed and compared, so a reader never sees a half-written or unverified blob. The
//! fetcher hashes a blob again before it uses it ([`Cache::check`]): a file in the cache can
//! still be edited or damaged later.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::io::{HashingReader, sha256_bytes};

/// Result of [`Cache::check`].
pub(crate) enum Checked {
    Missing,
    /// The blob's content still has its digest.
    Good(PathBuf),
    /// The blob no longer matches its digest (`actual`); it was deleted.
    Damaged {
        path: PathBuf,
        actual: String,
    },
}

/// Result of [`Cache::store`].
pub(crate) enum Stored {
    Blob(String, PathBuf),
    /// The stream's actual digest; nothing was kept.
    Mismatch(String),
}

/// The on-disk cache of downloaded artifacts.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file marks the pikube-image download cache.\n\
# Backup tools that honour cache directory tags will skip it.\n";

impl Cache {
    /// `$PIKUBE_CACHE_DIR` if set, else `$XDG_CACHE_HOME/pikube-image` or
    /// `~/.cache/pikube-image`.
    pub fn open_default() -> Result<Cache> {
        Cache::open(&default_dir()?)
    }

    /// Opens (and creates when missing) a cache rooted at `dir`.
    pub fn open(dir: &Path) -> Result<Cache> {
        let cache = Cache {
            root: dir.to_path_buf(),
        };
        for sub in [
            cache.blob_dir(),
            cache.urls_dir(),
            cache.partial_dir(),
            cache.locks_dir(),
            cache.tmp_dir(),
        ] {
            fs::create_dir_all(&sub).with_context(|| {
                format!(
                    "cannot create the download cache directory {}; choose another one with \
                     PIKUBE_CACHE_DIR",
                    sub.display()
                )
            })?;
        }
        let tag = cache.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fs::write(&tag, CACHEDIR_TAG)
                .with_context(|| format!("cannot write {}", tag.display()))?;
        }
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where everything in this cache goes.
    pub fn layout(&self) -> super::layout::Layout {
        super::layout::Layout::new(&self.root)
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blob_dir().join(sha256.to_ascii_lowercase())
    }

    /// The blob with this digest, if the cache holds it.
    pub fn get(&self, sha256: &str) -> Option<PathBuf> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        let p = self.blob_path(sha256);
        if p.is_file() {
            touch(&p);
            Some(p)
        } else {
            None
        }
    }

    /// Hashes the blob with this digest again. A blob whose content changed since it was
    /// verified (edited, or damaged on disk) is deleted, so that it is fetched again rather
    /// than failing every later build. `task` shows the progress of hashing. Unlike
    /// [`Cache::get`], this does not mark the blob as used.
    pub(crate) fn check(&self, sha256: &str, task: &crate::progress::Task) -> Result<Checked> {
        if !is_sha256_hex(sha256) {
            return Ok(Checked::Missing);
        }
        let path = self.blob_path(sha256);
        let unreadable = || {
            format!(
                "cannot read {} in the download cache; check its permissions, or delete it to \
                 download it again",
                path.display()
            )
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checked::Missing),
            Err(e) => return Err(e).with_context(unreadable),
        };
        let r =
            crate::io::ProgressReader::new(io::BufReader::with_capacity(1 << 20, f), task.clone());
        let actual = crate::io::sha256_reader(r).with_context(unreadable)?;
        if actual == sha256.to_ascii_lowercase() {
            return Ok(Checked::Good(path));
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(Checked::Damaged { path, actual }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checked::Damaged { path, actual }),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "{} in the download cache is damaged (its SHA-256 is {actual}, not {sha256}) \
                     and cannot be deleted; delete it by hand",
                    path.display()
                )
            }),
        }
    }

    /// Stores a stream. The blob becomes visible under its digest only after the digest
    /// was computed (and compared with `expected_sha256` when given). On a mismatch
    /// nothing is left behind.
    pub fn put(
        &self,
        r: &mut dyn Read,
        expected_sha256: Option<&str>,
    ) -> Result<(String, PathBuf)> {
        let expected = match expected_sha256 {
            Some(e) => Some(normalize_sha256(e)?),
            None => None,
        };
        match self.store(r, expected.as_deref())? {
            Stored::Blob(digest, path) => Ok((digest, path)),
            Stored::Mismatch(actual) => bail!(
                "checksum mismatch while storing into the cache: expected {}, got {actual}; \
                 nothing was stored",
                expected.unwrap_or_default()
            ),
        }
    }

    /// [`Cache::put`] with the mismatch as a value; `expected` must be normalized.
    pub(crate) fn store(&self, r: &mut dyn Read, expected: Option<&str>) -> Result<Stored> {
        let tmp = tempfile::Builder::new()
            .prefix(".put-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| {
                format!(
                    "cannot create a temporary file in {}",
                    self.tmp_dir().display()
                )
            })?;
        let mut hr = HashingReader::new(r);
        {
            let mut w = io::BufWriter::with_capacity(1 << 20, tmp.as_file());
            io::copy(&mut hr, &mut w)
                .with_context(|| format!("cannot write {}", tmp.path().display()))?;
            w.flush()
                .with_context(|| format!("cannot write {}", tmp.path().display()))?;
        }
        let (digest, _) = hr.finish();
        if let Some(e) = expected
            && e != digest
        {
            // Dropping `tmp` deletes the file.
            return Ok(Stored::Mismatch(digest));
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
        let dest = self.blob_path(&digest);
        let tmp_path = tmp.into_temp_path();
        self.install(&tmp_path, &dest)?;
        // The file now lives under its digest; forget the temporary name.
        let _ = tmp_path.keep();
        Ok(Stored::Blob(digest, dest))
    }

    /// Moves a verified, synced file from inside the cache to its blob name.
    pub(crate) fn adopt(&self, verified: &Path, sha256: &str) -> Result<PathBuf> {
        let dest = self.blob_path(sha256);
        self.install(verified, &dest)?;
        Ok(dest)
    }

    fn install(&self, from: &Path, dest: &Path) -> Result<()> {
        let mut perm = fs::metadata(from)
            .with_context(|| format!("cannot stat {}", from.display()))?
            .permissions();
        perm.set_readonly(true);
        fs::set_permissions(from, perm)
            .with_context(|| format!("cannot make {} read-only", from.display()))?;
        fs::rename(from, dest).with_context(|| {
            format!(
                "cannot move {} to {} inside the download cache",
                from.display(),
                dest.display()
            )
        })?;
        sync_dir(&self.blob_dir());
        Ok(())
    }

    /// Records that `url` produced the blob `sha256`. Only call after verification.
    pub(crate) fn record_url(&self, url: &str, sha256: &str) -> Result<()> {
        let dest = self.url_index_path(url);
        let mut tmp = tempfile::Builder::new()
            .prefix(".url-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| {
                format!(
                    "cannot create a temporary file in {}",
                    self.tmp_dir().display()
                )
            })?;
        writeln!(tmp, "{sha256}\n{url}")
            .with_context(|| format!("cannot write {}", tmp.path().display()))?;
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
        tmp.persist(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        sync_dir(&self.urls_dir());
        Ok(())
    }

    /// The digest last recorded for `url`, if its blob is still present.
    pub fn lookup_url(&self, url: &str) -> Option<String> {
        let p = self.url_index_path(url);
        let text = fs::read_to_string(p).ok()?;
        let mut lines = text.lines();
        let digest = lines.next()?.trim().to_string();
        // Guard against hash collisions of the index name and hand edits.
        if lines.next().map(str::trim) != Some(url) {
            return None;
        }
        self.get(&digest).map(|_| digest)
    }

    /// Drops what the cache holds for `url`: its index entry and the file it points at.
    /// Used for a checksum list that an artifact failed to verify against, so a later
    /// (offline) build cannot trust it.
    pub fn forget_url(&self, url: &str) {
        if let Some(digest) = self.lookup_url(url) {
            let _ = fs::remove_file(self.blob_path(&digest));
        }
        let _ = fs::remove_file(self.url_index_path(url));
    }

    /// Where an interrupted download of `url` (the URL actually requested) is kept.
    pub fn partial_path(&self, url: &str) -> PathBuf {
        self.partial_dir().join(url_key(url))
    }

    pub(crate) fn lock_path(&self, url: &str) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", url_key(url)))
    }

    pub(crate) fn open_lock(&self, url: &str) -> Result<File> {
        let p = self.lock_path(url);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("cannot open the lock file {}", p.display()))
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.layout().blobs()
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.layout().partial()
    }

    pub fn urls_dir(&self) -> PathBuf {
        self.layout().urls()
    }

    fn locks_dir(&self) -> PathBuf {
        self.layout().locks()
    }

    fn tmp_dir(&self) -> PathBuf {
        self.layout().tmp()
    }

    fn url_index_path(&self, url: &str) -> PathBuf {
        self.urls_dir().join(url_key(url))
    }
}

fn default_dir() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    choose_dir(
        env("PIKUBE_CACHE_DIR"),
        env("XDG_CACHE_HOME"),
        dirs::home_dir(),
    )
}

/// `PIKUBE_CACHE_DIR`, else `$XDG_CACHE_HOME/pikube-image` (when absolute, as the XDG
/// specification requires), else `~/.cache/pikube-image`.
fn choose_dir(
    pikube: Option<PathBuf>,
    xdg_cache: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(d) = pikube {
        return Ok(d);
    }
    if let Some(x) = xdg_cache.filter(|x| x.is_absolute()) {
        return Ok(x.join("pikube-image"));
    }
    match home {
        Some(h) => Ok(h.join(".cache").join("pikube-image")),
        None => bail!(
            "cannot find a cache directory: neither PIKUBE_CACHE_DIR, XDG_CACHE_HOME nor HOME \
             is set; set PIKUBE_CACHE_DIR to a writable directory"
        ),
    }
}

/// Stable file name for a URL.
/// Marks a cache entry as used now (its modification time), so `cache prune --older-than`
/// keeps what builds still use. Best effort: blobs are read-only, which does not prevent it.
pub fn touch(path: &Path) {
    if let Ok(f) = File::options()
        .append(true)
        .open(path)
        .or_else(|_| File::open(path))
    {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

pub(crate) fn url_key(url: &str) -> String {
    sha256_bytes(url.as_bytes())
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable; not all filesystems allow it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lower-cases a SHA-256 hex digest after checking its shape.
pub fn normalize_sha256(s: &str) -> Result<String> {
    let t = s.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    if !is_sha256_hex(t) {
        bail!("{s:?} is not a SHA-256 digest (64 hexadecimal digits expected)");
    }
    Ok(t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_entries(p: &Path) -> usize {
        fs::read_dir(p).unwrap().count()
    }

    #[test]
    fn put_and_get_round_trip() {
        let td = tempfile::tempdir().unwrap();
        let c = Cache::open(td.path()).unwrap();
        let data = b"hello cache".to_vec();
        let want = sha256_bytes(&data);
        assert!(c.get(&want).is_none());
        let (got, path) = c.put(&mut &data[..], Some(&want.to_uppercase())).unwrap();
        assert_eq!(got, want);
        assert_eq!(path, c.blob_path(&want));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(c.get(&want), Some(path.clone()));
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
        // Storing the same content again is harmless.
        let (again, _) = c.put(&mut &data[..], None).unwrap();
        assert_eq!(again, want);
        assert_eq!(dir_entries(&c.tmp_dir()), 0);
        assert_eq!(dir_entries(&c.blob_dir()), 1);
    }

    #[test]
    fn put_with_wrong_digest_leaves_nothing() {
        let td = tempfile::tempdir().unwrap();
        let c = Cache::open(td.path()).unwrap();
        let wrong = sha256_bytes(b"other");
        let err = c.put(&mut &b"data"[..], Some(&wrong)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(msg.contains(&wrong), "{msg}");
        assert_eq!(dir_entries(&c.blob_dir()), 0);
        assert_eq!(dir_entries(&c.tmp_dir()), 0);
        assert!(c.put(&mut &b"data"[..], Some("xyz")).is_err());
    }

    #[test]
    fn url_index_needs_the_blob_and_the_same_url() {
        let td = tempfile::tempdir().unwrap();
        let c = Cache::open(td.path()).unwrap();
        let (d, _) = c.put(&mut &b"x"[..], None).unwrap();
        c.record_url("https://a/x", &d).unwrap();
        assert_eq!(c.lookup_url("https://a/x"), Some(d.clone()));
        assert_eq!(c.lookup_url("https://a/y"), None);
        c.record_url("https://a/z", &sha256_bytes(b"absent"))
            .unwrap();
        assert_eq!(c.lookup_url("https://a/z"), None);
    }

    #[test]
    fn get_rejects_malformed_digests() {
        let td = tempfile::tempdir().unwrap();
        let c = Cache::open(td.path()).unwrap();
        assert!(c.get("../../etc/passwd").is_none());
        assert!(c.get("").is_none());
    }

    #[test]
    fn default_location_follows_env_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            choose_dir(p("/c"), p("/x"), p("/h")).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            choose_dir(None, p("/x"), p("/h")).unwrap(),
            PathBuf::from("/x/pikube-image")
        );
        assert_eq!(
            choose_dir(None, p("rel"), p("/h")).unwrap(),
            PathBuf::from("/h/.cache/pikube-image")
        );
        assert!(choose_dir(None, None, None).is_err());
    }

    #[test]
    fn normalize_accepts_prefix_and_case() {
        let h = sha256_bytes(b"abc");
        assert_eq!(
            normalize_sha256(&format!(" sha256:{} ", h.to_uppercase())).unwrap(),
            h
        );
        assert!(normalize_sha256("abc").is_err());
    }
}
