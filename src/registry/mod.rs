//! Container images preloaded into k3s: pull images for a node's platform from their
//! registries into the content-addressed cache, and write them as one OCI-layout tarball
//! that k3s imports from `/var/lib/rancher/k3s/agent/images/` when it starts.
//!
//! Cache layout (beside the download cache's own directories):
//!
//! ```text
//! blobs/sha256/<hex>        manifests, indexes, configs and layers, verified like any blob
//! oci/refs/<sha256(name)>   "<digest>\n<registry/repository:tag>\n": what a tag resolved to
//!                           at the last successful pull, so an offline build can use it
//! ```

mod archive;
mod client;
mod manifest;
mod mirror;
mod reference;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use reqwest::StatusCode;

pub use archive::write_oci_archive;
pub use client::{
    Challenge, Credentials, INSECURE_HINT, default_docker_config, load_docker_config,
    parse_challenge,
};
pub use manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, Descriptor, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST,
    PlatformJson,
};
pub use mirror::PullMirror;
pub use reference::{DOCKER_HUB, ImageRef, Platform};

use crate::io::{HashingReader, ProgressReader, sha256_bytes};
use crate::progress::{Progress, Task, human_bytes};
use crate::source::Cache;
use client::Client;
use manifest::{ConfigPlatform, Document, digest_hex, parse_document, select_platform};

/// How images are fetched.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// A Docker `config.json` (or the directory holding it) whose `auths` give Basic
    /// credentials; `None` reads `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
    /// when one exists.
    pub docker_config: Option<PathBuf>,
    /// Use only the cache; fail naming the images it lacks.
    pub offline: bool,
    /// Image reference -> pinned digest (`sha256:<hex>`, of the index or of the manifest),
    /// e.g. from an `images.lock`. Keys are compared after normalisation.
    pub locked: BTreeMap<String, String>,
    /// Pull every image through this registry instead of its own.
    pub mirror: Option<PullMirror>,
}

/// What a pull resolved and stored in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The normalised reference, `registry/repository:tag` (or `@digest`).
    pub reference: String,
    /// The tag (`org.opencontainers.image.ref.name`), when the reference has one.
    pub tag: Option<String>,
    /// The image index the platform's manifest was chosen from, if the image has one.
    pub index_digest: Option<String>,
    /// `sha256:<hex>` of the single-platform manifest.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub platform: Platform,
    pub layers: Vec<Descriptor>,
    pub config: Descriptor,
    /// Bytes of config and layers downloaded by this pull.
    pub bytes_pulled: u64,
    /// Bytes of config and layers that the cache already held.
    pub bytes_cached: u64,
}

impl ResolvedImage {
    /// The digest to pin in a lock file: the index when there is one, else the manifest.
    pub fn lock_digest(&self) -> &str {
        self.index_digest
            .as_deref()
            .unwrap_or(&self.manifest_digest)
    }

    /// Total size of config and layers.
    pub fn content_size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// One line for a build log: how much was pulled and how much the cache served.
pub fn summary(images: &[ResolvedImage]) -> String {
    let pulled: u64 = images.iter().map(|i| i.bytes_pulled).sum();
    let cached: u64 = images.iter().map(|i| i.bytes_cached).sum();
    format!(
        "{} image{}: {} pulled, {} from the cache",
        images.len(),
        if images.len() == 1 { "" } else { "s" },
        human_bytes(pulled),
        human_bytes(cached)
    )
}

/// Lock entries (`reference -> digest`) pinning what `images` resolved to; the reverse of
/// [`RegistryOptions::locked`].
pub fn lock_entries(images: &[ResolvedImage]) -> BTreeMap<String, String> {
    images
        .iter()
        .map(|i| (i.reference.clone(), i.lock_digest().to_string()))
        .collect()
}

/// Pulls images into the cache.
pub struct Puller {
    cache: Cache,
    opts: RegistryOptions,
    progress: Progress,
    client: OnceLock<Client>,
}

/// A manifest document read from the cache or the registry.
struct Doc {
    bytes: Vec<u8>,
    /// `sha256:<hex>`.
    digest: String,
    content_type: Option<String>,
}

impl Puller {
    pub fn new(cache: Cache, opts: RegistryOptions, progress: Progress) -> Puller {
        Puller {
            cache,
            opts,
            progress,
            client: OnceLock::new(),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn client(&self) -> Result<&Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let cfg = match &self.opts.docker_config {
            Some(p) => Some(p.clone()),
            None => default_docker_config(),
        };
        let creds = match cfg {
            Some(p) => load_docker_config(&p)?,
            None => BTreeMap::new(),
        };
        let c = Client::new(&self.opts.insecure, creds)?.with_mirror(self.opts.mirror.clone());
        let _ = self.client.set(c);
        Ok(self.client.get().expect("just set"))
    }

    /// Resolves the reference (tag -> digest, following an image index to the platform's
    /// manifest), stores manifest, config and every layer in the cache (each verified
    /// against its digest while streaming; nothing unverified enters the cache), and
    /// returns what it resolved. Offline, everything comes from the cache: the digest from
    /// the lock or from the record of an earlier pull.
    pub fn pull(&self, image: &ImageRef, platform: &Platform) -> Result<ResolvedImage> {
        let name = image.full_name();
        let pinned = self.pinned_digest(image)?;
        let top = if self.opts.offline {
            let digest = match pinned.or_else(|| self.read_ref(image)) {
                Some(d) => d,
                None => bail!(
                    "image {name} is not in the cache {} and offline mode forbids pulling it; \
                     run the build once with network access, or pin it in images.lock and \
                     fill the cache",
                    self.cache.root().display()
                ),
            };
            self.cached_doc(image, &digest)?
        } else {
            match pinned {
                Some(d) => self.doc_by_digest(image, &d)?,
                None => self.doc_by_tag(image)?,
            }
        };
        let (doc, media) = parse_document(&top.bytes, top.content_type.as_deref())
            .with_context(|| format!("cannot read the manifest of {name} ({})", top.digest))?;
        let (index_digest, man_doc, man_media, manifest, entry_platform) = match doc {
            Document::Index(idx) => {
                let d = select_platform(&idx, platform, &name)?.clone();
                let mdoc = if self.opts.offline {
                    self.cached_doc(image, &d.digest)?
                } else {
                    self.doc_by_digest(image, &d.digest)?
                };
                let (m, mm) = parse_document(&mdoc.bytes, Some(&d.media_type))
                    .with_context(|| format!("cannot read the {platform} manifest of {name}"))?;
                let Document::Manifest(m) = m else {
                    bail!(
                        "the {platform} entry of the index of {name} is another index ({}); \
                         nested indexes are not supported",
                        d.digest
                    );
                };
                let p = d.platform.as_ref().map(|p| p.to_platform());
                (Some(top.digest.clone()), mdoc, mm, m, p)
            }
            Document::Manifest(m) => (None, top, media, m, None),
        };

        let total = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let task = self.progress.task(&name, Some(total));
        let mut pulled = 0u64;
        let mut cached = 0u64;
        let mut count = |size: u64, downloaded: bool| {
            if downloaded {
                pulled += size;
            } else {
                cached += size;
            }
        };
        let (config_path, downloaded) = self.blob(image, &manifest.config, &task)?;
        count(manifest.config.size, downloaded);
        let config_platform = read_config_platform(&config_path)
            .with_context(|| format!("cannot read the image config of {name}"))?;
        let resolved_platform = match entry_platform {
            Some(p) => p,
            None => {
                let p = Platform::new(
                    &config_platform.os,
                    &config_platform.architecture,
                    config_platform.variant.as_deref(),
                );
                if !platform.matches(&p) {
                    bail!(
                        "{name} is a single-platform image for {p}, not for {platform}; choose \
                         an image (or tag) published for {platform}"
                    );
                }
                p
            }
        };
        for (layer, downloaded) in
            manifest
                .layers
                .iter()
                .zip(self.layers(image, &manifest.layers, &task)?)
        {
            count(layer.size, downloaded);
        }
        task.finish(&format!(
            "{} pulled, {} from the cache",
            human_bytes(pulled),
            human_bytes(cached)
        ));
        if !self.opts.offline && image.digest.is_none() {
            let digest = index_digest.as_deref().unwrap_or(&man_doc.digest);
            self.write_ref(image, digest)?;
        }
        Ok(ResolvedImage {
            reference: name,
            tag: image.tag.clone(),
            index_digest,
            manifest_digest: man_doc.digest.clone(),
            manifest_media_type: man_media,
            manifest_size: man_doc.bytes.len() as u64,
            platform: resolved_platform,
            layers: manifest.layers,
            config: manifest.config,
            bytes_pulled: pulled,
            bytes_cached: cached,
        })
    }

    /// Pulls every image for `platform`, in order. Failures do not stop the others; if any
    /// failed, the error lists each image with its reason (offline: every missing image).
    pub fn pull_all(&self, images: &[ImageRef], platform: &Platform) -> Result<Vec<ResolvedImage>> {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for image in images {
            match self.pull(image, platform) {
                Ok(r) => done.push(r),
                Err(e) => failed.push(format!("  {}: {e:#}", image.full_name())),
            }
        }
        if !failed.is_empty() {
            bail!(
                "{} of {} images could not be pulled for {platform}:\n{}",
                failed.len(),
                images.len(),
                failed.join("\n")
            );
        }
        self.progress.message(&summary(&done));
        Ok(done)
    }

    /// The digest the reference or the lock pins, if any.
    fn pinned_digest(&self, image: &ImageRef) -> Result<Option<String>> {
        let mut locked = None;
        for (k, v) in &self.opts.locked {
            let Ok(r) = ImageRef::parse(k) else { continue };
            if r.registry == image.registry
                && r.repository == image.repository
                && r.tag == image.tag
            {
                let hex = digest_hex(&format!(
                    "sha256:{}",
                    v.trim().trim_start_matches("sha256:")
                ))
                .with_context(|| format!("images.lock: invalid digest for {k}"))?;
                locked = Some(format!("sha256:{hex}"));
                break;
            }
        }
        match (&image.digest, locked) {
            (Some(d), Some(l)) if *d != l => bail!(
                "{} names digest {d} but images.lock pins {l}; update the lock or the reference",
                image.full_name()
            ),
            (Some(d), _) => Ok(Some(d.clone())),
            (None, l) => Ok(l),
        }
    }

    fn refs_dir(&self) -> PathBuf {
        self.cache.layout().image_refs()
    }

    fn ref_key(image: &ImageRef) -> String {
        format!(
            "{}/{}:{}",
            image.registry,
            image.repository,
            image.tag.as_deref().unwrap_or("latest")
        )
    }

    /// The digest an earlier pull resolved this tag to, if its document is still cached.
    fn read_ref(&self, image: &ImageRef) -> Option<String> {
        let key = Self::ref_key(image);
        let p = self.refs_dir().join(sha256_bytes(key.as_bytes()));
        let text = fs::read_to_string(p).ok()?;
        let mut lines = text.lines();
        let digest = lines.next()?.trim().to_string();
        if lines.next().map(str::trim) != Some(key.as_str()) {
            return None;
        }
        let hex = digest_hex(&digest).ok()?;
        self.cache.get(&hex).map(|_| digest)
    }

    fn write_ref(&self, image: &ImageRef, digest: &str) -> Result<()> {
        let dir = self.refs_dir();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = Self::ref_key(image);
        let dest = dir.join(sha256_bytes(key.as_bytes()));
        let mut tmp = tempfile::Builder::new()
            .prefix(".ref-")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        writeln!(tmp, "{digest}\n{key}")
            .with_context(|| format!("cannot write {}", dest.display()))?;
        tmp.persist(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(())
    }

    fn cached_doc(&self, image: &ImageRef, digest: &str) -> Result<Doc> {
        let hex = digest_hex(digest)?;
        let Some(path) = self.cache.get(&hex) else {
            bail!(
                "image {}: manifest {digest} is not in the cache {} and offline mode forbids \
                 pulling it; run the build once with network access",
                image.full_name(),
                self.cache.root().display()
            );
        };
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Doc {
            bytes,
            digest: format!("sha256:{hex}"),
            content_type: None,
        })
    }

    /// A manifest or index by digest: from the cache, else from the registry (verified).
    fn doc_by_digest(&self, image: &ImageRef, digest: &str) -> Result<Doc> {
        let hex = digest_hex(digest)?;
        if self.cache.get(&hex).is_some() {
            return self.cached_doc(image, digest);
        }
        let resp = self.client()?.request(
            Method::GET,
            &image.registry,
            &image.repository,
            &format!("manifests/{digest}"),
            Some(manifest::MANIFEST_ACCEPT),
        )?;
        let doc = self.read_doc(image, resp, Some(digest))?;
        Ok(doc)
    }

    /// A manifest or index by tag. A `HEAD` tells the digest first, so a document the cache
    /// already holds is not downloaded again.
    fn doc_by_tag(&self, image: &ImageRef) -> Result<Doc> {
        let client = self.client()?;
        let tag = image.manifest_reference().to_string();
        let path = format!("manifests/{tag}");
        let head = client.request(
            Method::HEAD,
            &image.registry,
            &image.repository,
            &path,
            Some(manifest::MANIFEST_ACCEPT),
        )?;
        // A 404 is final; other HEAD failures (some registries do not implement HEAD) fall
        // through to the GET, whose status is reported.
        if head.status() == StatusCode::NOT_FOUND {
            check_manifest_status(image, head.status())?;
        }
        if head.status().is_success()
            && let Some(d) = header_digest(&head)
            && let Ok(hex) = digest_hex(&d)
            && self.cache.get(&hex).is_some()
        {
            return self.cached_doc(image, &d);
        }
        let resp = client.request(
            Method::GET,
            &image.registry,
            &image.repository,
            &path,
            Some(manifest::MANIFEST_ACCEPT),
        )?;
        self.read_doc(image, resp, None)
    }

    /// Reads a manifest response, checks its digest (the expected one, and the one the
    /// registry states) and stores it in the cache.
    fn read_doc(
        &self,
        image: &ImageRef,
        resp: reqwest::blocking::Response,
        expected: Option<&str>,
    ) -> Result<Doc> {
        check_manifest_status(image, resp.status())?;
        let stated = header_digest(&resp);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        const MAX: u64 = 4 << 20;
        let mut bytes = Vec::new();
        resp.take(MAX + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read the manifest of {}", image.full_name()))?;
        if bytes.len() as u64 > MAX {
            bail!(
                "the manifest of {} is larger than 4 MiB; refusing it",
                image.full_name()
            );
        }
        let actual = format!("sha256:{}", sha256_bytes(&bytes));
        for want in [expected.map(str::to_string), stated].into_iter().flatten() {
            if want.to_ascii_lowercase() != actual {
                bail!(
                    "digest mismatch for the manifest of {} from {}: expected {want}, received \
                     content hashes to {actual}; nothing was cached. The registry (or a proxy \
                     in between) served corrupt data: retry, or check the registry",
                    image.full_name(),
                    image.registry
                );
            }
        }
        self.cache
            .put(&mut &bytes[..], Some(&actual))
            .with_context(|| format!("cannot store the manifest of {}", image.full_name()))?;
        Ok(Doc {
            bytes,
            digest: actual,
            content_type,
        })
    }

    /// A blob (config or layer) in the cache, downloading and verifying it when missing.
    fn blob(&self, image: &ImageRef, d: &Descriptor, task: &Task) -> Result<(PathBuf, bool)> {
        let hex = d
            .sha256()
            .with_context(|| format!("in the manifest of {}", image.full_name()))?;
        if let Some(p) = self.cache.get(&hex) {
            task.inc(d.size);
            return Ok((p, false));
        }
        if self.opts.offline {
            bail!(
                "image {}: blob {} ({}) is not in the cache {} and offline mode forbids \
                 pulling it; run the build once with network access",
                image.full_name(),
                d.digest,
                human_bytes(d.size),
                self.cache.root().display()
            );
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.fetch_blob(image, d, &hex, task) {
                Ok(p) => return Ok((p, true)),
                Err(Fetch::Fatal(e)) => return Err(e),
                Err(Fetch::Retry(e, wait)) if attempt < BLOB_ATTEMPTS => {
                    let wait = wait.unwrap_or(Duration::from_millis(500 << attempt));
                    self.progress.message(&format!(
                        "{}: {e:#}; retrying in {}s",
                        image.full_name(),
                        wait.as_secs_f32()
                    ));
                    std::thread::sleep(wait);
                }
                Err(Fetch::Retry(e, _)) => {
                    return Err(e.context(format!(
                        "giving up on blob {} of {} after {attempt} attempts",
                        d.digest,
                        image.full_name()
                    )));
                }
            }
        }
    }

    /// Every layer in the cache, up to [`PARALLEL_LAYERS`] downloading at once. Returns, in
    /// order, whether each was downloaded (else the cache had it). The first failure stops
    /// the start of further downloads and is returned.
    fn layers(&self, image: &ImageRef, layers: &[Descriptor], task: &Task) -> Result<Vec<bool>> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Vec<Mutex<Option<Result<bool>>>> =
            layers.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_LAYERS.min(layers.len()) {
                s.spawn(|| {
                    while !failed.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(layer) = layers.get(i) else { break };
                        let r = self.blob(image, layer, task).map(|(_, d)| d);
                        if r.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        *results[i].lock().expect("lock") = Some(r);
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(layers.len());
        for (i, r) in results.into_iter().enumerate() {
            match r.into_inner().expect("lock") {
                Some(r) => out.push(r?),
                None => bail!(
                    "layer {} of {} was not fetched",
                    layers[i].digest,
                    image.full_name()
                ),
            }
        }
        Ok(out)
    }

    /// One download of a blob into the cache.
    fn fetch_blob(
        &self,
        image: &ImageRef,
        d: &Descriptor,
        hex: &str,
        task: &Task,
    ) -> std::result::Result<PathBuf, Fetch> {
        let resp = self
            .client()
            .map_err(Fetch::Fatal)?
            .request(
                Method::GET,
                &image.registry,
                &image.repository,
                &format!("blobs/{}", d.digest),
                None,
            )
            .map_err(|e| {
                if e.downcast_ref::<reqwest::Error>().is_some() {
                    Fetch::Retry(e, None)
                } else {
                    Fetch::Fatal(e)
                }
            })?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Fetch::Fatal(anyhow!(
                "blob unknown: {} of {} is missing at {}; the image is incomplete in the \
                 registry, push it again",
                d.digest,
                image.full_name(),
                image.registry
            )));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(30)));
            let hint = if status == StatusCode::TOO_MANY_REQUESTS {
                " (rate limited: logging in raises the limit on Docker Hub)"
            } else {
                ""
            };
            return Err(Fetch::Retry(
                anyhow!(
                    "{} answered HTTP {} for blob {}{hint}",
                    image.registry,
                    status.as_u16(),
                    d.digest
                ),
                wait,
            ));
        }
        if !status.is_success() {
            return Err(Fetch::Fatal(anyhow!(
                "{} answered HTTP {} for blob {} of {}; check the registry",
                image.registry,
                status.as_u16(),
                d.digest,
                image.full_name()
            )));
        }
        let start = task.position();
        // One byte more than announced, so an overlong body fails the digest check.
        let mut reader =
            HashingReader::new(ProgressReader::new(resp.take(d.size + 1), task.clone()));
        let stored = self.cache.put(&mut reader, Some(hex));
        let (actual, _) = reader.finish();
        match stored {
            Ok((_, p)) => Ok(p),
            // A read error also leaves a different digest; only `put`'s verdict is a mismatch.
            Err(e) if actual != hex && format!("{e:#}").contains("checksum mismatch") => {
                task.set_position(start);
                Err(Fetch::Fatal(anyhow!(
                    "digest mismatch for blob {} of {} from {}: received content hashes to \
                     sha256:{actual}; nothing was cached. The registry (or a proxy in between) \
                     served corrupt data: retry, or check the registry",
                    d.digest,
                    image.full_name(),
                    image.registry
                )))
            }
            Err(e) => {
                task.set_position(start);
                Err(Fetch::Retry(
                    e.context(format!("cannot download blob {}", d.digest)),
                    None,
                ))
            }
        }
    }
}

/// Layers of one image downloaded at once.
const PARALLEL_LAYERS: usize = 3;

/// How many times a blob download is tried.
const BLOB_ATTEMPTS: u32 = 4;

/// Why one blob download failed.
enum Fetch {
    /// Worth another try (network, 5xx, 429), after the given pause if the server named one.
    Retry(anyhow::Error, Option<Duration>),
    Fatal(anyhow::Error),
}

fn check_manifest_status(image: &ImageRef, status: StatusCode) -> Result<()> {
    if status == StatusCode::NOT_FOUND {
        bail!(
            "manifest unknown: {}/{}:{} at {}; check the name and the tag",
            image.registry,
            image.repository,
            image.manifest_reference(),
            image.registry
        );
    }
    if !status.is_success() {
        bail!(
            "{} answered HTTP {} for the manifest of {}; retry later or check the registry",
            image.registry,
            status.as_u16(),
            image.full_name()
        );
    }
    Ok(())
}

fn header_digest(resp: &reqwest::blocking::Response) -> Option<String> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("sha256:"))
}

fn read_config_platform(path: &Path) -> Result<ConfigPlatform> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not an image config (JSON)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_bytes() {
        let d = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let img = ResolvedImage {
            reference: "docker.io/library/x:1".into(),
            tag: Some("1".into()),
            index_digest: None,
            manifest_digest: d.digest.clone(),
            manifest_media_type: OCI_MANIFEST.into(),
            manifest_size: 1,
            platform: Platform::parse("linux/arm64").unwrap(),
            layers: vec![d.clone()],
            config: d,
            bytes_pulled: 2048,
            bytes_cached: 1024,
        };
        assert_eq!(img.lock_digest(), img.manifest_digest);
        assert_eq!(img.content_size(), 2);
        assert_eq!(
            summary(&[img.clone(), img]),
            "2 images: 4.0 KiB pulled, 2.0 KiB from the cache"
        );
    }

    #[test]
    fn offline_without_record_names_the_image() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(td.path()).unwrap();
        let p = Puller::new(
            cache,
            RegistryOptions {
                offline: true,
                ..Default::default()
            },
            Progress::quiet(),
        );
        let img = ImageRef::parse("ghcr.io/org/app:1").unwrap();
        let err = p
            .pull(&img, &Platform::parse("linux/arm64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ghcr.io/org/app:1"), "{err}");
        assert!(err.contains("offline"), "{err}");
    }

    #[test]
    fn pull_all_names_every_missing_image() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(td.path()).unwrap();
        let p = Puller::new(
            cache,
            RegistryOptions {
                offline: true,
                ..Default::default()
            },
            Progress::quiet(),
        );
        let imgs = [
            ImageRef::parse("redis:7").unwrap(),
            ImageRef::parse("quay.io/argoproj/argocd:v3.0.0").unwrap(),
        ];
        let err = p
            .pull_all(&imgs, &Platform::parse("linux/arm64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2 of 2 images"), "{err}");
        assert!(err.contains("docker.io/library/redis:7"), "{err}");
        assert!(err.contains("quay.io/argoproj/argocd:v3.0.0"), "{err}");
    }

    #[test]
    fn lock_pins_and_conflicts() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(td.path()).unwrap();
        let a = format!("sha256:{}", "a".repeat(64));
        let mut locked = BTreeMap::new();
        locked.insert("redis:7".to_string(), a.clone());
        let p = Puller::new(
            cache,
            RegistryOptions {
                locked,
                ..Default::default()
            },
            Progress::quiet(),
        );
        let r = ImageRef::parse("docker.io/library/redis:7").unwrap();
        assert_eq!(p.pinned_digest(&r).unwrap(), Some(a));
        let other = ImageRef::parse(&format!("redis:7@sha256:{}", "b".repeat(64))).unwrap();
        assert!(p.pinned_digest(&other).is_err());
        assert_eq!(
            p.pinned_digest(&ImageRef::parse("redis:8").unwrap())
                .unwrap(),
            None
        );
    }
}
