//! Where a node's base OS image comes from: the board's catalog entry, a URL, or a local
//! file. Resolved once, before anything is downloaded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Artifact, Checksum};

/// Where an image's published checksum comes from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ImageChecksum {
    /// A checksum file beside the image (SHA256SUMS, `.sha256`, `.sha`); looked up by file name.
    SumsUrl(String),
    /// A pinned SHA-256.
    Sha256(String),
}

/// The base image asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// Each node's catalog image.
    Catalog,
    /// A URL, with a pinned digest or the `SHA256SUMS` beside it.
    Url { url: String, sha256: Option<String> },
    /// A local file (compressed or raw).
    File(PathBuf),
}

/// How the bytes of a base image are had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Downloaded (or found in the cache) and verified.
    Download(Artifact),
    /// Read from a local file, hashed once per build.
    Local(PathBuf),
}

/// A base image identified before download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The URL recorded in manifests (`file://` for a local file).
    pub url: String,
    pub file_name: String,
    pub origin: Origin,
    /// What is known of the content before download (a pinned digest, else the URL); a
    /// local file's digest once it is hashed. It enters cloud-init's instance-id.
    pub content_id: String,
}

fn name_of(u: &str) -> String {
    u.rsplit('/').next().unwrap_or(u).to_string()
}

impl BaseSource {
    /// The base image of a node whose catalog image is at `entry_url`, with `entry_checksum`.
    pub fn resolve(&self, entry_url: &str, entry_checksum: &ImageChecksum) -> BaseImage {
        let entry_name = name_of(entry_url);
        match self {
            BaseSource::Catalog => {
                let (checksum, content_id) = match entry_checksum {
                    ImageChecksum::Sha256(h) => (Checksum::Sha256(h.clone()), h.clone()),
                    ImageChecksum::SumsUrl(u) => (
                        Checksum::SumsFile {
                            url: u.clone(),
                            name: entry_name.clone(),
                        },
                        entry_url.to_string(),
                    ),
                };
                BaseImage {
                    url: entry_url.to_string(),
                    file_name: entry_name.clone(),
                    origin: Origin::Download(Artifact {
                        url: entry_url.to_string(),
                        checksum,
                    }),
                    content_id,
                }
            }
            BaseSource::Url { url, sha256 } => {
                let file_name = name_of(url);
                let checksum = match sha256 {
                    Some(h) => Checksum::Sha256(h.to_ascii_lowercase()),
                    None => {
                        let dir = url.rsplit_once('/').map(|(d, _)| d).unwrap_or(url);
                        Checksum::SumsFile {
                            url: format!("{dir}/SHA256SUMS"),
                            name: file_name.clone(),
                        }
                    }
                };
                BaseImage {
                    url: url.clone(),
                    file_name,
                    origin: Origin::Download(Artifact {
                        url: url.clone(),
                        checksum,
                    }),
                    content_id: sha256.clone().unwrap_or_else(|| url.clone()),
                }
            }
            BaseSource::File(path) => BaseImage {
                url: format!("file://{}", path.display()),
                file_name: name_of(&path.to_string_lossy()),
                origin: Origin::Local(path.clone()),
                content_id: String::new(),
            },
        }
    }
}
