//! One OCI-layout tarball (`oci-layout`, `index.json`, `blobs/sha256/...`) holding pulled
//! images, zstd-compressed for k3s's image import directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::ResolvedImage;
use super::manifest::{OCI_INDEX, PlatformJson, digest_hex};
use crate::io::{HashingReader, HashingWriter, ProgressReader};
use crate::progress::{Progress, human_bytes};
use crate::source::Cache;

/// Annotation containerd names an imported image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation holding the tag in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// zstd window: 8 MiB, well under the 32 MiB k3s accepts; set explicitly so it does not
/// depend on the level's defaults.
const WINDOW_LOG: u32 = 23;
const ZSTD_LEVEL: i32 = 3;

enum Entry {
    Dir,
    Bytes(Vec<u8>),
    /// A cache blob with its expected SHA-256 and size.
    Blob(PathBuf, String, u64),
}

/// Writes one OCI-layout tarball holding `images`: zstd-compressed with a window of at most
/// 8 MiB when `out` ends in `.tar.zst` (k3s refuses windows over 32 MiB; no long-distance
/// matching), plain when it ends in `.tar` (layers are compressed already; a plain tar
/// spares the node a decompression pass). The tar is
/// deterministic: entries sorted by path, mtime 0, owner 0:0, fixed modes. `index.json`
/// lists each image's single-platform manifest with `io.containerd.image.name` (the full
/// name) and `org.opencontainers.image.ref.name` (the tag). Every blob is re-hashed while it
/// is copied, so a damaged cache cannot produce an archive. The file appears at `out` only
/// when complete. Returns its size and SHA-256.
pub fn write_oci_archive(
    images: &[ResolvedImage],
    cache: &Cache,
    out: &Path,
    progress: &Progress,
) -> Result<(u64, String)> {
    if images.is_empty() {
        bail!(
            "no images to write into {}; list at least one image",
            out.display()
        );
    }
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let compress = if file_name.ends_with(".tar.zst") || file_name.ends_with(".tzst") {
        true
    } else if file_name.ends_with(".tar") {
        false
    } else {
        bail!(
            "{}: k3s imports only tarballs named *.tar, *.tar.zst (and other compressions); \
             name the archive like images.tar.zst",
            out.display()
        );
    };
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("blobs/".into(), Entry::Dir);
    entries.insert("blobs/sha256/".into(), Entry::Dir);
    let mut add_blob = |digest: &str, size: u64, what: &str, image: &str| -> Result<()> {
        let hex = digest_hex(digest)?;
        let Some(path) = cache.get(&hex) else {
            bail!(
                "the {what} {digest} of {image} is not in the cache {}; pull the image first",
                cache.root().display()
            );
        };
        entries.insert(format!("blobs/sha256/{hex}"), Entry::Blob(path, hex, size));
        Ok(())
    };
    let mut sorted: Vec<&ResolvedImage> = images.iter().collect();
    sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
    sorted.dedup_by(|a, b| a.reference == b.reference && a.manifest_digest == b.manifest_digest);
    for w in sorted.windows(2) {
        if w[0].reference == w[1].reference {
            bail!(
                "{} would be in {} twice, for {} and for {}; containerd keeps one image per \
                 name, so write one archive per platform",
                w[0].reference,
                out.display(),
                w[0].platform,
                w[1].platform
            );
        }
    }
    let mut manifests = Vec::new();
    for img in &sorted {
        add_blob(
            &img.manifest_digest,
            img.manifest_size,
            "manifest",
            &img.reference,
        )?;
        add_blob(
            &img.config.digest,
            img.config.size,
            "config",
            &img.reference,
        )?;
        for l in &img.layers {
            add_blob(&l.digest, l.size, "layer", &img.reference)?;
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert(CONTAINERD_NAME.into(), json!(img.reference));
        if let Some(t) = &img.tag {
            annotations.insert(REF_NAME.into(), json!(t));
        }
        manifests.push(json!({
            "mediaType": img.manifest_media_type,
            "digest": img.manifest_digest,
            "size": img.manifest_size,
            "platform": PlatformJson::from_platform(&img.platform),
            "annotations": annotations,
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut index_bytes = serde_json::to_vec_pretty(&index).context("cannot encode index.json")?;
    index_bytes.push(b'\n');
    entries.insert("index.json".into(), Entry::Bytes(index_bytes));
    entries.insert(
        "oci-layout".into(),
        Entry::Bytes(b"{\"imageLayoutVersion\":\"1.0.0\"}\n".to_vec()),
    );

    let total: u64 = entries
        .values()
        .map(|e| match e {
            Entry::Dir => 0,
            Entry::Bytes(b) => b.len() as u64,
            Entry::Blob(_, _, s) => *s,
        })
        .sum();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".images-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let name = file_name;
    let task = progress.task(&name, Some(total));

    let file = tmp
        .as_file()
        .try_clone()
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    let hashed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let write_err = |e: io::Error| {
        anyhow::Error::new(e).context(format!("cannot write {}", tmp.path().display()))
    };
    let enc = if compress {
        let mut enc = zstd::stream::Encoder::new(hashed, ZSTD_LEVEL).map_err(write_err)?;
        enc.window_log(WINDOW_LOG).map_err(write_err)?;
        enc.long_distance_matching(false).map_err(write_err)?;
        enc.include_checksum(true).map_err(write_err)?;
        Sink::Zstd(enc)
    } else {
        Sink::Plain(hashed)
    };
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, entry) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_username("").map_err(write_err)?;
        h.set_groupname("").map_err(write_err)?;
        match entry {
            Entry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                tar.append_data(&mut h, path, io::empty())
                    .map_err(write_err)?;
            }
            Entry::Bytes(b) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(b.len() as u64);
                h.set_cksum();
                tar.append_data(&mut h, path, &b[..]).map_err(write_err)?;
                task.inc(b.len() as u64);
            }
            Entry::Blob(src, hex, size) => {
                let f = File::open(src)
                    .with_context(|| format!("cannot read the cached blob {}", src.display()))?;
                let actual_size = f
                    .metadata()
                    .with_context(|| format!("cannot stat {}", src.display()))?
                    .len();
                if actual_size != *size {
                    bail!(
                        "the cached blob {} is {actual_size} bytes, its manifest says {size}; \
                         delete it and pull again",
                        src.display()
                    );
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(*size);
                h.set_cksum();
                let mut r = HashingReader::new(ProgressReader::new(
                    BufReader::with_capacity(1 << 20, f),
                    task.clone(),
                ));
                tar.append_data(&mut h, path, &mut r)
                    .with_context(|| format!("cannot copy {} into {}", src.display(), name))?;
                let (got, _) = r.finish();
                if got != *hex {
                    bail!(
                        "the cached blob {} is damaged (its content hashes to {got}); delete it \
                         and pull again",
                        src.display()
                    );
                }
            }
        }
    }
    let enc = tar.into_inner().map_err(write_err)?;
    let hashed = match enc {
        Sink::Zstd(z) => z.finish().map_err(write_err)?,
        Sink::Plain(p) => p,
    };
    let (sha, mut w) = {
        let count = hashed.count();
        let (sha, w) = hashed.finish();
        ((count, sha), w)
    };
    w.flush().map_err(write_err)?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot sync {}", tmp.path().display()))?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    task.finish(&format!(
        "{} images, {} ({} compressed)",
        sorted.len(),
        human_bytes(total),
        human_bytes(sha.0)
    ));
    Ok(sha)
}

type Out = HashingWriter<BufWriter<File>>;

/// The compressed or plain stream the tar is written into.
enum Sink {
    Plain(Out),
    Zstd(zstd::stream::Encoder<'static, Out>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sha256_bytes;
    use crate::registry::{Descriptor, OCI_MANIFEST, Platform};
    use std::io::Read;

    fn put(cache: &Cache, b: &[u8]) -> Descriptor {
        cache.put(&mut &b[..], None).unwrap();
        Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", sha256_bytes(b)),
            size: b.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    fn image(cache: &Cache, name: &str, layer: &[u8]) -> ResolvedImage {
        let config = put(
            cache,
            format!("{{\"os\":\"linux\",\"n\":\"{name}\"}}").as_bytes(),
        );
        let layer = put(cache, layer);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": [layer],
        }))
        .unwrap();
        let m = put(cache, &manifest);
        ResolvedImage {
            reference: format!("docker.io/library/{name}:1"),
            tag: Some("1".into()),
            index_digest: None,
            manifest_digest: m.digest,
            manifest_media_type: OCI_MANIFEST.into(),
            manifest_size: m.size,
            platform: Platform::parse("linux/arm64").unwrap(),
            layers: vec![layer],
            config,
            bytes_pulled: 0,
            bytes_cached: 0,
        }
    }

    /// Reads the archive back through a decoder limited to a 32 MiB window, as k3s is.
    fn read_back(path: &Path) -> Vec<(String, u32, u64, Vec<u8>)> {
        let f = File::open(path).unwrap();
        let mut dec = zstd::stream::Decoder::new(f).unwrap();
        dec.window_log_max(25).unwrap();
        let mut ar = tar::Archive::new(dec);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn archive_is_sorted_deterministic_and_annotated() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(&td.path().join("c")).unwrap();
        // Incompressible and larger than one zstd block.
        let mut big = Vec::new();
        let mut x = 1u64;
        while big.len() < 3 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            big.extend_from_slice(&x.to_le_bytes());
        }
        let a = image(&cache, "a", &big);
        let b = image(&cache, "b", b"small layer");
        let out = td.path().join("out/images.tar.zst");
        let (size, sha) =
            write_oci_archive(&[b.clone(), a.clone()], &cache, &out, &Progress::quiet()).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(sha, sha256_bytes(&bytes));
        // Input order does not matter.
        let out2 = td.path().join("out/again.tar.zst");
        let (_, sha2) =
            write_oci_archive(&[a.clone(), b.clone()], &cache, &out2, &Progress::quiet()).unwrap();
        assert_eq!(sha, sha2);

        let entries = read_back(&out);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.first(), Some(&"blobs/"));
        assert_eq!(names.last(), Some(&"oci-layout"));
        assert!(entries.iter().all(|e| e.2 == 0));
        for (name, mode, _, data) in &entries {
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_bytes(data), hex);
                assert_eq!(*mode, 0o644);
            }
        }
        let index: serde_json::Value =
            serde_json::from_slice(&entries.iter().find(|e| e.0 == "index.json").unwrap().3)
                .unwrap();
        let ms = index["manifests"].as_array().unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(
            ms[0]["annotations"][CONTAINERD_NAME],
            "docker.io/library/a:1"
        );
        assert_eq!(ms[0]["annotations"][REF_NAME], "1");
        assert_eq!(ms[0]["digest"], a.manifest_digest.as_str());
        assert_eq!(ms[0]["platform"]["architecture"], "arm64");
        assert_eq!(
            ms[1]["annotations"][CONTAINERD_NAME],
            "docker.io/library/b:1"
        );
        // Nothing but the two archives in the output directory.
        assert_eq!(std::fs::read_dir(td.path().join("out")).unwrap().count(), 2);

        // A `.tar` is the same tar, uncompressed.
        let plain = td.path().join("plain.tar");
        let (psize, psha) =
            write_oci_archive(&[a.clone(), b.clone()], &cache, &plain, &Progress::quiet()).unwrap();
        let tar_bytes = std::fs::read(&plain).unwrap();
        assert_eq!(psize, tar_bytes.len() as u64);
        assert_eq!(psha, sha256_bytes(&tar_bytes));
        assert_eq!(zstd::stream::decode_all(&bytes[..]).unwrap(), tar_bytes);
        assert!(
            write_oci_archive(&[a], &cache, &td.path().join("x.img"), &Progress::quiet())
                .unwrap_err()
                .to_string()
                .contains("images.tar.zst")
        );
    }

    #[test]
    fn damaged_or_missing_blobs_produce_no_archive() {
        let td = tempfile::tempdir().unwrap();
        let cache = Cache::open(&td.path().join("c")).unwrap();
        let img = image(&cache, "a", b"layer bytes");
        let layer = cache.get(&img.layers[0].sha256().unwrap()).unwrap();
        let mut perm = std::fs::metadata(&layer).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&layer, perm).unwrap();
        std::fs::write(&layer, b"layer bytez").unwrap();
        let out_dir = td.path().join("out");
        let out = out_dir.join("x.tar.zst");
        let err = format!(
            "{:#}",
            write_oci_archive(std::slice::from_ref(&img), &cache, &out, &Progress::quiet())
                .unwrap_err()
        );
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);

        std::fs::remove_file(&layer).unwrap();
        let err = format!(
            "{:#}",
            write_oci_archive(&[img], &cache, &out, &Progress::quiet()).unwrap_err()
        );
        assert!(err.contains("pull the image first"), "{err}");
        assert!(write_oci_archive(&[], &cache, &out, &Progress::quiet()).is_err());
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    }
}
