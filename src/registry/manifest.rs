//! The JSON documents of the OCI image and distribution specifications (and their Docker v2
//! equivalents) that a pull reads.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::reference::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header of manifest requests: every format a pull understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor: what a manifest or index says about a blob it refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The hex part of the digest, checked to be a SHA-256.
    pub fn sha256(&self) -> Result<String> {
        digest_hex(&self.digest)
    }
}

/// `platform` as written in an index (and, with the same keys, in an image config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformJson {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl PlatformJson {
    pub fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    pub fn from_platform(p: &Platform) -> PlatformJson {
        PlatformJson {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

/// An image index (manifest list).
#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// A single-platform image manifest.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The fields of an image config that say which platform the image is for.
#[derive(Debug, Deserialize)]
pub struct ConfigPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest document of either kind.
#[derive(Debug)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Which kind of document `bytes` is, from the `mediaType` field, else the HTTP
/// `Content-Type`, else the shape. Returns the document and its media type.
pub fn parse_document(bytes: &[u8], content_type: Option<&str>) -> Result<(Document, String)> {
    let probe: Probe =
        serde_json::from_slice(bytes).context("the manifest is not a JSON document")?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| c.starts_with("application/vnd."));
    let media = match (probe.media_type, header) {
        (Some(m), _) => m,
        (None, Some(h)) => h,
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if probe.layers.is_some() => OCI_MANIFEST.to_string(),
        (None, None) if probe.schema_version == Some(1) => DOCKER_SCHEMA1.to_string(),
        (None, None) => bail!("the document is neither an image manifest nor an image index"),
    };
    match media.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let idx: Index = serde_json::from_slice(bytes).context("malformed image index")?;
            Ok((Document::Index(idx), media))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest = serde_json::from_slice(bytes).context("malformed image manifest")?;
            Ok((Document::Manifest(m), media))
        }
        DOCKER_SCHEMA1 | "application/vnd.docker.distribution.manifest.v1+json" => bail!(
            "the image uses the Docker schema 1 manifest format, which is deprecated and not \
             supported; push it again with a current client"
        ),
        other => bail!("unsupported manifest media type {other:?}"),
    }
}

/// `sha256:<hex>` -> `<hex>`, lower case.
pub fn digest_hex(d: &str) -> Result<String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => bail!("unsupported or malformed digest {d:?} (only sha256 is supported)"),
    }
}

/// The entry of an index for `want`, or an error listing the platforms it has.
pub fn select_platform<'a>(
    index: &'a Index,
    want: &Platform,
    image: &str,
) -> Result<&'a Descriptor> {
    let found = index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| want.matches(&p.to_platform()))
    });
    if let Some(d) = found {
        return Ok(d);
    }
    let mut have: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| p.to_platform().to_string())
        .filter(|p| p != "unknown/unknown")
        .collect();
    have.sort();
    have.dedup();
    bail!(
        "{image} has no image for platform {want}; it has: {}. Choose another image or tag \
         that is published for {want}",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(p: &str) -> String {
        let pl = Platform::parse(p).unwrap();
        let v = pl
            .variant
            .map(|v| format!(",\"variant\":\"{v}\""))
            .unwrap_or_default();
        format!(
            "{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"sha256:{}\",\"size\":1,\
             \"platform\":{{\"os\":\"{}\",\"architecture\":\"{}\"{v}}}}}",
            crate::io::sha256_bytes(p.as_bytes()),
            pl.os,
            pl.architecture
        )
    }

    #[test]
    fn index_selection_and_missing_platform_lists_what_exists() {
        let doc = format!(
            "{{\"schemaVersion\":2,\"manifests\":[{},{},{}]}}",
            desc("linux/amd64"),
            desc("linux/arm64/v8"),
            desc("unknown/unknown")
        );
        let (d, media) = parse_document(doc.as_bytes(), None).unwrap();
        assert_eq!(media, OCI_INDEX);
        let Document::Index(idx) = d else {
            panic!("not an index")
        };
        let got = select_platform(&idx, &Platform::parse("linux/arm64").unwrap(), "x").unwrap();
        assert_eq!(
            got.digest,
            format!("sha256:{}", crate::io::sha256_bytes(b"linux/arm64/v8"))
        );
        let err = select_platform(&idx, &Platform::parse("linux/arm/v7").unwrap(), "img:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("img:1 has no image for platform linux/arm/v7"),
            "{err}"
        );
        assert!(err.contains("linux/amd64, linux/arm64/v8"), "{err}");
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn media_type_from_field_header_or_shape() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#;
        assert_eq!(parse_document(m, None).unwrap().1, OCI_MANIFEST);
        assert_eq!(
            parse_document(m, Some(&format!("{DOCKER_MANIFEST}; charset=utf-8")))
                .unwrap()
                .1,
            DOCKER_MANIFEST
        );
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let err = parse_document(s1, None).unwrap_err().to_string();
        assert!(err.contains("schema 1"), "{err}");
        assert!(parse_document(b"<html>", None).is_err());
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert_eq!(
            digest_hex(&format!("sha256:{}", "A".repeat(64))).unwrap(),
            "a".repeat(64)
        );
    }
}
