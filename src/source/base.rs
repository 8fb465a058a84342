//! Where a node's base OS image comes from: the board's catalog entry, a URL, or a local
//! file. Resolved once, before anything is downloaded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use anyhow::{Context, Result};

use super::keys::Keyring;
use super::signature::{Signature, Signs};
use super::{Artifact, Checksum, normalize_sha256};

/// How a catalog image's expected digest is known. In YAML a map with `sha256` (a pinned
/// digest), `sums_url` (the checksum list published beside the image), or both, and
/// optionally `signature` (the detached OpenPGP signature published with them).
///
/// A pinned digest wins: the list is then not fetched at all, so a mirror, which serves the
/// list along with the image, cannot substitute both. With only a list, whoever serves the
/// list vouches for the image, unless a signature by one of the catalog's keys is required.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "ChecksumFields", into = "ChecksumFields")]
pub enum ImageChecksum {
    /// A checksum file beside the image (SHA256SUMS, `.sha256`, `.sha`); looked up by file
    /// name, after its signature (if any) verified.
    SumsUrl {
        url: String,
        signature: Option<SignatureSpec>,
    },
    /// A pinned SHA-256 (lower-case hex).
    Sha256(String),
    /// A pinned SHA-256, and the checksum list it was taken from (kept for whoever updates
    /// the entry; not used to verify).
    Pinned {
        sha256: String,
        sums_url: String,
        signature: Option<SignatureSpec>,
    },
}

/// `checksum.signature` of a catalog image: where the detached signature is published, the
/// name of the key that must have made it (a built-in key from `keys/`, or one in the
/// catalog directory's `keys/`), and what it covers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    pub url: String,
    pub key: String,
    /// `checksum-list` (the default: the signature is over the file at `sums_url`) or
    /// `image` (over the image file itself).
    #[serde(default)]
    pub signs: Signs,
}

impl ImageChecksum {
    /// The pinned digest, if any.
    pub fn pinned(&self) -> Option<&str> {
        match self {
            ImageChecksum::Sha256(h) | ImageChecksum::Pinned { sha256: h, .. } => Some(h),
            ImageChecksum::SumsUrl { .. } => None,
        }
    }

    /// The signature the entry names, if any.
    pub fn signature(&self) -> Option<&SignatureSpec> {
        match self {
            ImageChecksum::SumsUrl { signature, .. } | ImageChecksum::Pinned { signature, .. } => {
                signature.as_ref()
            }
            ImageChecksum::Sha256(_) => None,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureSpec>,
}

impl TryFrom<ChecksumFields> for ImageChecksum {
    type Error = String;

    fn try_from(f: ChecksumFields) -> Result<Self, String> {
        let sha256 = match f.sha256 {
            Some(h) => Some(normalize_sha256(&h).map_err(|e| format!("checksum.sha256: {e}"))?),
            None => None,
        };
        match (sha256, f.sums_url, f.signature) {
            (Some(sha256), Some(sums_url), signature) => Ok(ImageChecksum::Pinned {
                sha256,
                sums_url,
                signature,
            }),
            (Some(h), None, None) => Ok(ImageChecksum::Sha256(h)),
            (None, Some(url), signature) => Ok(ImageChecksum::SumsUrl { url, signature }),
            (_, None, Some(_)) => Err("checksum.signature needs `sums_url`: the signature is \
                 published with the checksum list beside the image"
                .to_string()),
            (None, None, None) => Err(
                "checksum needs `sha256` (a pinned digest), `sums_url` (the \
                                 checksum list beside the image), or both"
                    .to_string(),
            ),
        }
    }
}

impl From<ImageChecksum> for ChecksumFields {
    fn from(c: ImageChecksum) -> ChecksumFields {
        let (sha256, sums_url, signature) = match c {
            ImageChecksum::SumsUrl { url, signature } => (None, Some(url), signature),
            ImageChecksum::Sha256(h) => (Some(h), None, None),
            ImageChecksum::Pinned {
                sha256,
                sums_url,
                signature,
            } => (Some(sha256), Some(sums_url), signature),
        };
        ChecksumFields {
            sha256,
            sums_url,
            signature,
        }
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
    /// The base image of a node whose catalog image is at `entry_url`, with `entry_checksum`;
    /// `keys` holds the keys its signature may name. A catalog image's checksum list is
    /// pinned (the entry names one version); the list of an `--image-url` is not.
    pub fn resolve(
        &self,
        entry_url: &str,
        entry_checksum: &ImageChecksum,
        keys: &Keyring,
    ) -> Result<BaseImage> {
        let entry_name = name_of(entry_url);
        let entry = || -> Result<(Checksum, String)> {
            Ok(match entry_checksum {
                ImageChecksum::Sha256(h) | ImageChecksum::Pinned { sha256: h, .. } => {
                    (Checksum::Sha256(h.clone()), h.clone())
                }
                ImageChecksum::SumsUrl { url, signature } => (
                    Checksum::SumsFile {
                        url: url.clone(),
                        name: entry_name.clone(),
                        // A catalog entry names one published version.
                        pinned: true,
                        signature: signature.as_ref().map(|s| s.resolve(keys)).transpose()?,
                    },
                    entry_url.to_string(),
                ),
            })
        };
        Ok(match self {
            BaseSource::Catalog => {
                let (checksum, content_id) = entry()?;
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
            // The catalog's own URL without a digest: its pin, or its (signed) list, holds.
            BaseSource::Url { url, sha256: None } if url == entry_url => {
                BaseSource::Catalog.resolve(entry_url, entry_checksum, keys)?
            }
            BaseSource::Url { url, sha256 } => {
                let file_name = name_of(url);
                let checksum = match sha256 {
                    Some(h) => Checksum::Sha256(h.to_ascii_lowercase()),
                    None => {
                        let dir = url.rsplit_once('/').map(|(d, _)| d).unwrap_or(url);
                        // A URL given by hand may be replaced by a newer file.
                        Checksum::SumsFile {
                            url: format!("{dir}/SHA256SUMS"),
                            name: file_name.clone(),
                            pinned: false,
                            signature: None,
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
        })
    }
}

impl SignatureSpec {
    /// The signature with its key, looked up by name in `keys`.
    pub fn resolve(&self, keys: &Keyring) -> Result<Signature> {
        let key = keys.get(&self.key).with_context(|| {
            format!(
                "checksum.signature.key '{}' is not a known key: known keys are {} (built in \
                 from keys/, or keys/<name>.asc in $PIKUBE_BOARDS_DIR)",
                self.key,
                keys.names().collect::<Vec<_>>().join(", ")
            )
        })?;
        Ok(Signature {
            url: self.url.clone(),
            key: key.clone(),
            signs: self.signs,
        })
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
            ImageChecksum::SumsUrl {
                url: "https://h/SHA256SUMS".into(),
                signature: None
            }
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
                sums_url: "https://h/S".into(),
                signature: None,
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
    fn signature_forms_in_yaml() {
        let signed = parse(
            "sums_url: https://h/SHA256SUMS\n\
             signature: { url: https://h/SHA256SUMS.gpg, key: ubuntu-cdimage }",
        )
        .unwrap();
        let spec = SignatureSpec {
            url: "https://h/SHA256SUMS.gpg".into(),
            key: "ubuntu-cdimage".into(),
            signs: Signs::ChecksumList,
        };
        assert_eq!(signed.signature(), Some(&spec));
        let image = parse(
            "sums_url: https://h/x.img.xz.sha\n\
             signature: { url: https://h/x.img.xz.asc, key: armbian, signs: image }",
        )
        .unwrap();
        assert_eq!(image.signature().unwrap().signs, Signs::Image);
        let round = serde_json::to_value(&image).unwrap();
        assert_eq!(round["signature"]["signs"], "image");

        let e = parse(&format!(
            "sha256: {A}\nsignature: {{ url: https://h/S.gpg, key: ubuntu-cdimage }}"
        ))
        .unwrap_err();
        assert!(e.contains("needs `sums_url`"), "{e}");
        assert!(parse("sums_url: u\nsignature: { url: u, key: k, signs: everything }").is_err());
        assert!(parse("sums_url: u\nsignature: { url: u }").is_err());

        // The key is looked up by name, and an unknown one is named with the known ones.
        let keys = Keyring::builtin().unwrap();
        let sig = spec.resolve(&keys).unwrap();
        assert_eq!(sig.key.name(), "ubuntu-cdimage");
        let e = SignatureSpec {
            key: "ubuntu".into(),
            ..spec
        }
        .resolve(&keys)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("'ubuntu' is not a known key") && e.contains("armbian, ubuntu-cdimage"),
            "{e}"
        );
    }

    #[test]
    fn a_pin_wins_over_the_list() {
        let keys = Keyring::default();
        let pinned = ImageChecksum::Pinned {
            sha256: A.into(),
            sums_url: "https://h/r/SHA256SUMS".into(),
            signature: None,
        };
        let url = "https://h/r/x.img.xz";
        let img = BaseSource::Catalog.resolve(url, &pinned, &keys).unwrap();
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
        .resolve(url, &pinned, &keys)
        .unwrap();
        assert_eq!(same.origin, img.origin);
        let other = BaseSource::Url {
            url: "https://h/s/y.img.xz".into(),
            sha256: None,
        }
        .resolve(url, &pinned, &keys)
        .unwrap();
        assert!(matches!(
            other.origin,
            Origin::Download(Artifact { checksum: Checksum::SumsFile { ref url, signature: None, .. }, .. })
                if url == "https://h/s/SHA256SUMS"
        ));
    }

    #[test]
    fn the_catalogs_own_url_keeps_its_signature() {
        let keys = Keyring::builtin().unwrap();
        let entry: ImageChecksum = serde_saphyr::from_str(
            "sums_url: https://h/r/SHA256SUMS\n\
             signature: { url: https://h/r/SHA256SUMS.gpg, key: ubuntu-cdimage }",
        )
        .unwrap();
        let url = "https://h/r/x.img.xz";
        let catalog = BaseSource::Catalog.resolve(url, &entry, &keys).unwrap();
        let Origin::Download(Artifact {
            checksum: Checksum::SumsFile { signature, .. },
            ..
        }) = &catalog.origin
        else {
            panic!("{catalog:?}")
        };
        assert_eq!(
            signature.as_ref().unwrap().key.fingerprint(),
            "843938DF228D22F7B3742BC0D94AA3F0EFE21092"
        );
        let by_url = BaseSource::Url {
            url: url.into(),
            sha256: None,
        }
        .resolve(url, &entry, &keys)
        .unwrap();
        assert_eq!(by_url, catalog);
    }
}
