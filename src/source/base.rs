//! Where a node's base OS image comes from: the board's catalog entry, a URL, or a local
//! file. Resolved once, before anything is downloaded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Artifact, Checksum, normalize_sha256};

/// How a catalog image's expected digest is known. In YAML a map with `sha256` (a pinned
/// digest), `sums_url` (the checksum list published beside the image), or both.
///
/// A pinned digest wins: the list is then not fetched at all, so a mirror, which serves the
/// list along with the image, cannot substitute both. With only a list, whoever serves the
/// list vouches for the image.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "ChecksumFields", into = "ChecksumFields")]
pub enum ImageChecksum {
    /// A checksum file beside the image (SHA256SUMS, `.sha256`, `.sha`); looked up by file name.
    SumsUrl(String),
    /// A pinned SHA-256 (lower-case hex).
    Sha256(String),
    /// A pinned SHA-256, and the checksum list it was taken from (kept for whoever updates
    /// the entry; not used to verify).
    Pinned { sha256: String, sums_url: String },
}

impl ImageChecksum {
    /// The pinned digest, if any.
    pub fn pinned(&self) -> Option<&str> {
        match self {
            ImageChecksum::Sha256(h) | ImageChecksum::Pinned { sha256: h, .. } => Some(h),
            ImageChecksum::SumsUrl(_) => None,
        }
    }
}

/// The YAML form of [`ImageChecksum`].
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChecksumFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sums_url: Option<String>,
}

impl TryFrom<ChecksumFields> for ImageChecksum {
    type Error = String;

    fn try_from(f: ChecksumFields) -> Result<Self, String> {
        let sha256 = match f.sha256 {
            Some(h) => Some(normalize_sha256(&h).map_err(|e| format!("checksum.sha256: {e}"))?),
            None => None,
        };
        match (sha256, f.sums_url) {
            (Some(sha256), Some(sums_url)) => Ok(ImageChecksum::Pinned { sha256, sums_url }),
            (Some(h), None) => Ok(ImageChecksum::Sha256(h)),
            (None, Some(u)) => Ok(ImageChecksum::SumsUrl(u)),
            (None, None) => Err(
                "checksum needs `sha256` (a pinned digest), `sums_url` (the \
                                 checksum list beside the image), or both"
                    .to_string(),
            ),
        }
    }
}

impl From<ImageChecksum> for ChecksumFields {
    fn from(c: ImageChecksum) -> ChecksumFields {
        let (sha256, sums_url) = match c {
            ImageChecksum::SumsUrl(u) => (None, Some(u)),
            ImageChecksum::Sha256(h) => (Some(h), None),
            ImageChecksum::Pinned { sha256, sums_url } => (Some(sha256), Some(sums_url)),
        };
        ChecksumFields { sha256, sums_url }
    }
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
    /// A catalog image's checksum list is pinned (the entry names one version); the list of
    /// an `--image-url` is not.
    pub fn resolve(&self, entry_url: &str, entry_checksum: &ImageChecksum) -> BaseImage {
        let entry_name = name_of(entry_url);
        match self {
            BaseSource::Catalog => {
                let (checksum, content_id) = match entry_checksum {
                    ImageChecksum::Sha256(h) | ImageChecksum::Pinned { sha256: h, .. } => {
                        (Checksum::Sha256(h.clone()), h.clone())
                    }
                    ImageChecksum::SumsUrl(u) => (
                        // A catalog entry names one published version.
                        Checksum::SumsFile {
                            url: u.clone(),
                            name: entry_name.clone(),
                            pinned: true,
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
                // The catalog's pin still holds when its own URL is given without a digest.
                let sha256 = sha256.clone().or_else(|| {
                    (url == entry_url)
                        .then(|| entry_checksum.pinned().map(str::to_string))
                        .flatten()
                });
                let checksum = match &sha256 {
                    Some(h) => Checksum::Sha256(h.to_ascii_lowercase()),
                    None => {
                        let dir = url.rsplit_once('/').map(|(d, _)| d).unwrap_or(url);
                        // A URL given by hand may be replaced by a newer file.
                        Checksum::SumsFile {
                            url: format!("{dir}/SHA256SUMS"),
                            name: file_name.clone(),
                            pinned: false,
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
                    content_id: sha256.unwrap_or_else(|| url.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn parse(yaml: &str) -> Result<ImageChecksum, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn checksum_forms_in_yaml() {
        assert_eq!(
            parse("sums_url: https://h/SHA256SUMS").unwrap(),
            ImageChecksum::SumsUrl("https://h/SHA256SUMS".into())
        );
        assert_eq!(
            parse(&format!("sha256: {}", A.to_uppercase())).unwrap(),
            ImageChecksum::Sha256(A.into())
        );
        let both = parse(&format!("sha256: {A}\nsums_url: https://h/S")).unwrap();
        assert_eq!(
            both,
            ImageChecksum::Pinned {
                sha256: A.into(),
                sums_url: "https://h/S".into()
            }
        );
        assert_eq!(both.pinned(), Some(A));
        let round = serde_json::to_value(&both).unwrap();
        assert_eq!(round["sha256"], A);
        assert_eq!(round["sums_url"], "https://h/S");

        let e = parse("{}").unwrap_err();
        assert!(e.contains("sha256") && e.contains("sums_url"), "{e}");
        let e = parse("sha256: abc").unwrap_err();
        assert!(e.contains("checksum.sha256"), "{e}");
        assert!(parse("md5: x").is_err());
    }

    #[test]
    fn a_pin_wins_over_the_list() {
        let pinned = ImageChecksum::Pinned {
            sha256: A.into(),
            sums_url: "https://h/r/SHA256SUMS".into(),
        };
        let url = "https://h/r/x.img.xz";
        let img = BaseSource::Catalog.resolve(url, &pinned);
        assert_eq!(
            img.origin,
            Origin::Download(Artifact {
                url: url.into(),
                checksum: Checksum::Sha256(A.into())
            })
        );
        assert_eq!(img.content_id, A);

        // --image-url with the catalog's URL keeps the pin; another URL uses its own list.
        let same = BaseSource::Url {
            url: url.into(),
            sha256: None,
        }
        .resolve(url, &pinned);
        assert_eq!(same.origin, img.origin);
        let other = BaseSource::Url {
            url: "https://h/s/y.img.xz".into(),
            sha256: None,
        }
        .resolve(url, &pinned);
        assert!(matches!(
            other.origin,
            Origin::Download(Artifact { checksum: Checksum::SumsFile { ref url, .. }, .. })
                if url == "https://h/s/SHA256SUMS"
        ));
    }
}
