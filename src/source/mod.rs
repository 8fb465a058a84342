//! The `source` stage: resolve, download, cache and verify the inputs of a build.
//!
//! Every input (a base OS image, a k3s binary, an air-gap image tarball) is an
//! [`Artifact`]: a URL plus a way to know its SHA-256 in advance. The [`Fetcher`]
//! returns a [`Fetched`] file only once its digest matched; verified files live in a
//! content-addressed [`Cache`] so a second build, or an `--offline` one, reads them
//! without the network.

pub mod base;
mod cache;
mod download;
pub mod keys;
pub mod layout;
mod mirror;
pub mod signature;
mod sums;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub use cache::{Cache, normalize_sha256, touch};
pub(crate) use download::why_unreachable;
pub use keys::{Keyring, TrustedKey};
pub use mirror::mirror_url;
pub use signature::{Signature, Signs};
pub use sums::lookup_checksum;

use crate::io::ProgressReader;
use crate::progress::Progress;

/// How the expected digest of an artifact is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// A known hex digest.
    Sha256(String),
    /// A checksum list (`SHA256SUMS`, `*.sha256`, `.sha`, `sha256sum-*.txt`) to fetch, in
    /// which `name` is looked up; with a `signature`, none of it is trusted before the
    /// signature verified with its key.
    SumsFile {
        url: String,
        name: String,
        /// The artifact and its list belong to one published release that never changes (a
        /// versioned catalog image, a k3s release): once verified, the cached artifact is used
        /// without asking for the list again, and a cached list is reused. When false (a URL
        /// given by hand, which may be replaced), the list is fetched again on every online
        /// build, and the build says so.
        pinned: bool,
        signature: Option<Signature>,
    },
}

/// Something to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub url: String,
    pub checksum: Checksum,
}

/// A verified file in the cache. Treat `path` as read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    /// The URL as given (before any mirror rewriting).
    pub url: String,
    pub size: u64,
    pub from_cache: bool,
}

/// Failures a caller may want to tell apart (reach them with `downcast_ref`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("not found: {url} (HTTP {status}); check the URL and the version it names")]
    NotFound { url: String, status: u16 },
    #[error(
        "cannot reach {host} for {url}: {cause}. Nothing was downloaded and no partial file \
         was kept; this is not retried, as asking again would fail the same way"
    )]
    Unreachable {
        url: String,
        host: String,
        cause: String,
    },
    #[error(
        "checksum mismatch for {url}: expected {expected}, got {actual}; the download or the \
         mirror is corrupt. The bad file was deleted and nothing was cached: retry the build, \
         check the mirror, or check the expected digest (--image-sha256 or the checksum file)"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{url} is not in the download cache {cache} and --offline forbids downloading it; run \
         the same build once with network access (or with --mirror pointing at a reachable \
         mirror) to fill the cache, or point PIKUBE_CACHE_DIR at a cache that holds it"
    )]
    OfflineMiss { url: String, cache: PathBuf },
    #[error(
        "{name} is not listed in the checksum file {sums_url}; check the file name and version"
    )]
    NotInSums { name: String, sums_url: String },
    #[error(
        "{what} must be signed by key {key}, but its signature {url} was not found (HTTP \
         {status}); nothing from it was used. Check `checksum.signature.url` in the catalog \
         entry, or, with --mirror, copy the signature to the mirror beside the file"
    )]
    SignatureMissing {
        what: String,
        url: String,
        status: u16,
        key: String,
    },
    #[error(
        "the signature {url} does not vouch for {what}: {reason}. It must be signed by key \
         {key} (from {key_origin}). Nothing from either file was used, and both cached copies \
         ({path} and {signed_path}) were deleted. Retry without --mirror, or check the \
         mirror's copies against upstream; if upstream itself fails, check \
         `checksum.signature` (url, key, signs) in the catalog entry"
    )]
    BadSignature {
        what: String,
        url: String,
        path: PathBuf,
        signed_path: PathBuf,
        key: String,
        key_origin: String,
        reason: String,
    },
    #[error(
        "the cached copy of {url} ({path}) is damaged: its SHA-256 is now {actual}, not the \
         {expected} it was verified with. It was deleted, and --offline forbids downloading it \
         again: run the same build once with network access (or with --mirror pointing at a \
         reachable mirror) to fetch it again"
    )]
    DamagedEntry {
        url: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Retry behaviour for transient network failures. A download stops at whichever limit
/// it reaches first; its partial file is kept for the next run.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Failed attempts in a row that brought the download no further than it had already
    /// been (a server that restarts from zero and breaks again makes no progress, however
    /// many bytes it sends).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled after every failure without progress, capped
    /// at 30 s.
    pub base_delay: Duration,
    /// Requests in all for one download, those that made progress included.
    pub max_total_attempts: u32,
    /// No retry starts once this long has passed since the first request (a transfer
    /// under way is never cut short by it).
    pub max_total_time: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_total_attempts: 30,
            max_total_time: Duration::from_secs(4 * 3600),
        }
    }
}

/// Network time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing the TCP (and TLS) connection.
    pub connect: Duration,
    /// Waiting for the response headers, and for each further piece of the body: a
    /// transfer may take hours as long as it never stalls this long.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            stall: Duration::from_secs(60),
        }
    }
}

/// Downloads artifacts into a [`Cache`], verifying every byte.
pub struct Fetcher {
    cache: Cache,
    mirror: Option<String>,
    offline: bool,
    progress: Progress,
    retry: RetryPolicy,
    timeouts: Timeouts,
    client: OnceLock<reqwest::blocking::Client>,
    /// Blobs this fetcher hashed (or stored), with their metadata at the time: a build asks
    /// for the same base image once per node, and hashes it only once unless it changed.
    verified: Mutex<HashMap<PathBuf, Stamp>>,
    /// Images whose own signature (by the SHA-256 of its bytes) this fetcher checked, with
    /// their state at the time.
    signed: Mutex<HashMap<(PathBuf, String), Stamp>>,
}

/// What identifies a file's state without reading it: any write or `chmod` changes the
/// change time, a replacement changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Largest checksum list or other text file `fetch_text` accepts.
const MAX_TEXT: u64 = 16 << 20;

impl Fetcher {
    pub fn new(cache: Cache, mirror: Option<String>, offline: bool, progress: Progress) -> Fetcher {
        Fetcher {
            cache,
            mirror: mirror.filter(|m| !m.trim().is_empty()),
            offline,
            progress,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            client: OnceLock::new(),
            verified: Mutex::new(HashMap::new()),
            signed: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the default retry policy (5 attempts in a row without progress, 1 s
    /// doubling back-off, 30 attempts or 4 h in all).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Fetcher {
        self.retry = retry;
        self
    }

    /// Replaces the default time limits (connect 30 s, stall 60 s).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Fetcher {
        self.timeouts = timeouts;
        self.client = OnceLock::new();
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    /// The URL actually requested for `url` (the mirror's copy when a mirror is set).
    pub fn effective_url(&self, url: &str) -> Result<String> {
        match &self.mirror {
            Some(m) => mirror_url(url, m),
            None => Ok(url.to_string()),
        }
    }

    /// Returns the verified, cached file for `a`, downloading it when needed.
    pub fn fetch(&self, a: &Artifact) -> Result<Fetched> {
        let expected = match &a.checksum {
            Checksum::Sha256(h) => {
                normalize_sha256(h).with_context(|| format!("invalid checksum for {}", a.url))?
            }
            Checksum::SumsFile {
                url,
                name,
                pinned,
                signature,
            } => {
                // A release's file verified once stays what it was: no list is needed.
                if *pinned
                    && let Some(d) = self.cache.lookup_url(&a.url)
                    && let Some(path) = self.cached(&a.url, &d)?
                {
                    self.progress.message(&format!(
                        "using the verified copy of {} from the cache",
                        a.url
                    ));
                    return fetched(a.url.clone(), d, path, true);
                }
                if !*pinned
                    && !self.offline
                    && file_url_path(url)?.is_none()
                    && self.cache.lookup_url(&a.url).is_some()
                {
                    self.progress.message(&format!(
                        "refreshing the checksum list {url}: {} is not pinned to a release, so \
                         a newer file may have been published under its name",
                        a.url
                    ));
                }
                let list_signature = signature
                    .as_ref()
                    .filter(|s| s.signs == Signs::ChecksumList);
                match self.fetch_list(url, list_signature, *pinned) {
                    Ok(text) => {
                        lookup_checksum(&text, name).ok_or_else(|| SourceError::NotInSums {
                            name: name.clone(),
                            sums_url: url.clone(),
                        })?
                    }
                    // Without the list, the digest recorded when the artifact itself was
                    // verified (its list's signature included) still identifies it. A list
                    // whose signature failed is never worked around.
                    Err(e) if self.offline && !is_signature_error(&e) => {
                        match self.cache.lookup_url(&a.url) {
                            Some(d) => d,
                            None => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let got = self.fetch_digest(a, &expected)?;
        if let Checksum::SumsFile {
            url,
            signature: Some(sig),
            ..
        } = &a.checksum
            && sig.signs == Signs::Image
        {
            self.check_image_signature(sig, &got, url)?;
        }
        Ok(got)
    }

    /// The cached or downloaded file for `a`, whose SHA-256 must be `expected`.
    fn fetch_digest(&self, a: &Artifact, expected: &str) -> Result<Fetched> {
        if let Some(path) = self.cached(&a.url, expected)? {
            if self.cache.lookup_url(&a.url).as_deref() != Some(expected) {
                let _ = self.cache.record_url(&a.url, expected);
            }
            self.progress.message(&format!(
                "using the verified copy of {} from the cache",
                a.url
            ));
            return fetched(a.url.clone(), expected.to_string(), path, true);
        }
        if let Some(local) = file_url_path(&a.url)? {
            return self.store_local(&a.url, &local, expected);
        }
        if self.offline {
            return Err(SourceError::OfflineMiss {
                url: a.url.clone(),
                cache: self.cache.root().to_path_buf(),
            }
            .into());
        }
        let got = self.download(&a.url, Some(expected), None);
        if let (Err(e), Checksum::SumsFile { url, signature, .. }) = (&got, &a.checksum)
            && matches!(
                e.downcast_ref::<SourceError>(),
                Some(SourceError::ChecksumMismatch { .. })
            )
        {
            // Either the artifact or the list is wrong; keep neither (nor its signature).
            self.cache.forget_url(url);
            if let Some(sig) = signature {
                self.cache.forget_url(&sig.url);
            }
        }
        got
    }

    /// [`Fetcher::fetch_text`] for a file that never changes once published (a release's
    /// checksum list, a tagged release's manifest): the copy verified into the cache by an
    /// earlier build is read without any request.
    pub fn fetch_text_pinned(&self, url: &str) -> Result<String> {
        let (_, bytes) = self.fetch_small(url, true)?;
        into_text(url, bytes)
    }

    /// Downloads (or, offline, reads from the cache) a small text file such as a
    /// checksum list. Online, the file is always downloaded afresh; the copy is kept so
    /// later offline builds can read it.
    pub fn fetch_text(&self, url: &str) -> Result<String> {
        let (_, bytes) = self.fetch_small(url, false)?;
        into_text(url, bytes)
    }

    /// A checksum list, only once `signature` (when given) verified over its exact bytes. A
    /// `pinned` list (and its signature) verified into the cache before is read from there.
    fn fetch_list(&self, url: &str, signature: Option<&Signature>, pinned: bool) -> Result<String> {
        let (path, bytes) = self.fetch_small(url, pinned)?;
        if let Some(sig) = signature {
            let what = format!("the checksum list {url}");
            let (sig_path, sig_bytes) = self.fetch_signature(sig, &what, pinned)?;
            if let Err(reason) = signature::verify(&sig_bytes, &sig.key, &bytes[..]) {
                return Err(self.rejected(sig, &what, url, &path, &sig_path, reason));
            }
            self.progress.message(&format!(
                "the checksum list {url} is signed by key {}{}",
                sig.key,
                key_note(&sig.key)
            ));
        }
        into_text(url, bytes)
    }

    /// Checks an image's own signature (once per fetcher while the file stays unchanged).
    fn check_image_signature(&self, sig: &Signature, got: &Fetched, sums_url: &str) -> Result<()> {
        let what = format!("the image {}", got.url);
        let (sig_path, sig_bytes) = self.fetch_signature(sig, &what, false)?;
        let memo = (got.path.clone(), crate::io::sha256_bytes(&sig_bytes));
        let stamp = Stamp::of(&got.path);
        if stamp.is_some() && self.signed.lock().expect("lock").get(&memo) == stamp.as_ref() {
            return Ok(());
        }
        let f =
            File::open(&got.path).with_context(|| format!("cannot open {}", got.path.display()))?;
        let task = self.progress.task(
            &format!(
                "check the signature of {}",
                download::display_name(&got.url)
            ),
            Some(got.size),
        );
        let r = ProgressReader::new(io::BufReader::with_capacity(1 << 20, f), task.clone());
        if let Err(reason) = signature::verify(&sig_bytes, &sig.key, r) {
            task.finish("bad signature");
            self.cache.forget_url(sums_url);
            return Err(self.rejected(sig, &what, &got.url, &got.path, &sig_path, reason));
        }
        task.finish(&format!("signed by key {}{}", sig.key, key_note(&sig.key)));
        if let Some(s) = stamp {
            self.signed.lock().expect("lock").insert(memo, s);
        }
        Ok(())
    }

    /// The bytes of a detached signature (downloaded afresh online, from the cache offline).
    fn fetch_signature(
        &self,
        sig: &Signature,
        what: &str,
        pinned: bool,
    ) -> Result<(PathBuf, Vec<u8>)> {
        self.fetch_small(&sig.url, pinned)
            .map_err(|e| match e.downcast_ref::<SourceError>() {
                Some(SourceError::NotFound { url, status }) => SourceError::SignatureMissing {
                    what: what.to_string(),
                    url: url.clone(),
                    status: *status,
                    key: sig.key.to_string(),
                }
                .into(),
                _ => e.context(format!(
                    "cannot get the signature of {what}, which must be signed by key {}",
                    sig.key
                )),
            })
    }

    /// The error for a signature that did not verify; neither file is found by URL again.
    fn rejected(
        &self,
        sig: &Signature,
        what: &str,
        signed_url: &str,
        signed_path: &Path,
        sig_path: &Path,
        reason: signature::Rejection,
    ) -> anyhow::Error {
        self.cache.forget_url(signed_url);
        self.cache.forget_url(&sig.url);
        SourceError::BadSignature {
            what: what.to_string(),
            url: sig.url.clone(),
            path: sig_path.to_path_buf(),
            signed_path: signed_path.to_path_buf(),
            key: sig.key.to_string(),
            key_origin: sig.key.origin().to_string(),
            reason: reason.to_string(),
        }
        .into()
    }

    /// A small file (checksum list, signature, manifest): its path and bytes. Online it is
    /// downloaded afresh unless `pinned` (a file that never changes once published) and
    /// already in the cache; the copy is kept so later offline builds can read it.
    fn fetch_small(&self, url: &str, pinned: bool) -> Result<(PathBuf, Vec<u8>)> {
        let cached_pinned = match file_url_path(url)? {
            None if pinned => match self.cache.lookup_url(url) {
                Some(d) => self.cached(url, &d)?,
                None => None,
            },
            _ => None,
        };
        let path = if let Some(local) = file_url_path(url)? {
            local
        } else if let Some(cached) = cached_pinned {
            cached
        } else if self.offline {
            let miss = || SourceError::OfflineMiss {
                url: url.to_string(),
                cache: self.cache.root().to_path_buf(),
            };
            let digest = self.cache.lookup_url(url).ok_or_else(miss)?;
            self.cached(url, &digest)?.ok_or_else(miss)?
        } else {
            self.download(url, None, Some(MAX_TEXT))?.path
        };
        let meta =
            fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        if meta.len() > MAX_TEXT {
            bail!(
                "{url} is {} bytes, too large for a checksum file; check the URL",
                meta.len()
            );
        }
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok((path, bytes))
    }

    /// The cached blob `digest` for `url`, hashed again before it is trusted (once per
    /// fetcher unless the file changed since). A damaged blob is deleted: online the caller
    /// then downloads it again, offline that is an error naming the entry and the fix.
    fn cached(&self, url: &str, digest: &str) -> Result<Option<PathBuf>> {
        let path = self.cache.blob_path(digest);
        let known = self.verified.lock().expect("lock").get(&path).copied();
        if let Some(stamp) = known
            && Stamp::of(&path) == Some(stamp)
        {
            return Ok(Some(path));
        }
        // Marked as used first: that changes its times, which the stamp must include.
        touch(&path);
        let stamp = Stamp::of(&path);
        let task = self.progress.task(
            &format!("verify {}", download::display_name(url)),
            stamp.map(|s| s.len),
        );
        match self.cache.check(digest, &task)? {
            cache::Checked::Missing => Ok(None),
            cache::Checked::Good(path) => {
                task.finish("verified");
                // The stamp taken before hashing: a change during or after it shows.
                if let Some(s) = stamp {
                    self.verified.lock().expect("lock").insert(path.clone(), s);
                }
                Ok(Some(path))
            }
            cache::Checked::Damaged { path, actual } => {
                task.finish("damaged");
                if self.offline {
                    return Err(SourceError::DamagedEntry {
                        url: url.to_string(),
                        path,
                        expected: digest.to_string(),
                        actual,
                    }
                    .into());
                }
                self.progress.message(&format!(
                    "the cached copy of {url} ({}) was damaged (its SHA-256 is now {actual}, not \
                     {digest}); deleted it, downloading it again",
                    path.display()
                ));
                Ok(None)
            }
        }
    }

    /// Notes that the blob at `path` was just verified by this fetcher.
    fn remember(&self, path: &Path) {
        if let Some(s) = Stamp::of(path) {
            self.verified
                .lock()
                .expect("lock")
                .insert(path.to_path_buf(), s);
        }
    }

    /// Copies a local file into the cache, verifying it on the way.
    fn store_local(&self, url: &str, local: &Path, expected: &str) -> Result<Fetched> {
        let f = File::open(local).with_context(|| {
            format!(
                "cannot open {} (from {url}); check the path",
                local.display()
            )
        })?;
        let total = f.metadata().ok().map(|m| m.len());
        let task = self
            .progress
            .task(&format!("copy {}", local.display()), total);
        let mut r = ProgressReader::new(io::BufReader::with_capacity(1 << 20, f), task.clone());
        let (digest, path) = match self
            .cache
            .store(&mut r, Some(expected))
            .with_context(|| format!("cannot store {url} in the cache"))?
        {
            cache::Stored::Blob(d, p) => (d, p),
            cache::Stored::Mismatch(actual) => {
                return Err(SourceError::ChecksumMismatch {
                    url: url.to_string(),
                    expected: expected.to_string(),
                    actual,
                }
                .into());
            }
        };
        self.cache.record_url(url, &digest)?;
        self.remember(&path);
        task.finish("verified");
        fetched(url.to_string(), digest, path, false)
    }

    fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::blocking::Client::builder()
            .user_agent(concat!("pikube-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.timeouts.connect)
            // The blocking client applies this to sending the request and to every single
            // read of the body: a stall timeout, not a limit on the whole transfer.
            .timeout(self.timeouts.stall)
            .redirect(download::redirect_policy())
            .build()
            .context("cannot initialise the HTTP client (TLS setup failed)")?;
        let _ = self.client.set(c);
        Ok(self.client.get().expect("client was just set"))
    }
}

// Builds may fetch several artifacts from worker threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Fetcher>();
    assert_send_sync::<Cache>();
};

fn into_text(url: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{url} is not a text file (invalid UTF-8); check the URL"))
}

/// Where a key that is not built in came from, for messages.
fn key_note(key: &TrustedKey) -> String {
    if key.origin().starts_with("built-in") {
        String::new()
    } else {
        format!(", from {}", key.origin())
    }
}

/// A signature was missing or did not verify: never worked around.
fn is_signature_error(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<SourceError>(),
        Some(SourceError::SignatureMissing { .. } | SourceError::BadSignature { .. })
    )
}

/// The local path of a `file://` URL, `None` for any other scheme.
fn file_url_path(url: &str) -> Result<Option<PathBuf>> {
    if !url.starts_with("file:") {
        return Ok(None);
    }
    let u = url::Url::parse(url).with_context(|| format!("invalid file URL {url:?}"))?;
    match u.to_file_path() {
        Ok(p) => Ok(Some(p)),
        Err(()) => bail!("invalid file URL {url:?}: expected file:///absolute/path"),
    }
}

fn fetched(url: String, sha256: String, path: PathBuf, from_cache: bool) -> Result<Fetched> {
    let size = fs::metadata(&path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    Ok(Fetched {
        path,
        sha256,
        url,
        size,
        from_cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_blob_is_hashed_once_until_it_changes() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(td.path()).unwrap();
        let (digest, path) = cache.put(&mut &b"k3s binary"[..], None).unwrap();
        let f = Fetcher::new(cache, None, true, Progress::quiet());
        let a = Artifact {
            url: "https://example.org/k3s".into(),
            checksum: Checksum::Sha256(digest.clone()),
        };
        assert!(f.fetch(&a).unwrap().from_cache);
        // What was remembered is the blob's state now, so the next use skips hashing.
        let remembered = f.verified.lock().unwrap().get(&path).copied();
        assert_eq!(remembered, Stamp::of(&path));
        assert!(remembered.is_some());
        assert!(f.fetch(&a).unwrap().from_cache);
        assert_eq!(f.verified.lock().unwrap().get(&path).copied(), remembered);
    }
}
