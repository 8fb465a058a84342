//! Image references (`redis:7`, `ghcr.io/org/app@sha256:...`) normalised the way containerd
//! and docker name images, and target platforms.

use std::fmt;

use anyhow::{Result, bail};

use crate::arch::Arch;

/// The registry short names (`redis`, `org/app`) resolve to.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, ...
    pub registry: String,
    /// `library/redis`, `org/app`, ...
    pub repository: String,
    /// The tag; `latest` when the reference names neither a tag nor a digest.
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises a reference: `redis:7` is `docker.io/library/redis:7`,
    /// `org/app` is `docker.io/org/app:latest`, a first component with a `.` or `:` (or
    /// `localhost`) is a registry host.
    pub fn parse(s: &str) -> Result<ImageRef> {
        let input = s.trim();
        if input.is_empty() {
            bail!("empty image reference; write it like `redis:7` or `ghcr.io/org/app:1.2`");
        }
        if input.contains("://") {
            bail!(
                "image reference {input:?} must not contain a URL scheme; write \
                 `host[:port]/repository:tag`"
            );
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(input, d)?)),
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                check_tag(input, tag)?;
                (&name[..last_slash + i], Some(tag.to_string()))
            }
            None => (name, None),
        };
        let (registry, repo) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        check_registry(input, &registry)?;
        let repository = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        check_repository(input, &repository)?;
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository[:tag][@digest]`, as containerd names the image.
    pub fn full_name(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The tag, or failing that the digest: what the registry's manifest endpoint takes.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.full_name())
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<ImageRef, D::Error> {
        let s = String::deserialize(d)?;
        ImageRef::parse(&s).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full_name())
    }
}

fn parse_digest(input: &str, d: &str) -> Result<String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        bail!("image reference {input:?}: only sha256 digests are supported (`@sha256:<64 hex>`)");
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("image reference {input:?}: the digest must be `sha256:` and 64 hexadecimal digits");
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn check_tag(input: &str, tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        bail!(
            "image reference {input:?}: invalid tag {tag:?} (letters, digits, `_`, `.`, `-`; at \
             most 128 characters, not starting with `.` or `-`)"
        );
    }
    Ok(())
}

fn check_registry(input: &str, host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        bail!("image reference {input:?}: invalid registry host {host:?}");
    }
    Ok(())
}

fn check_repository(input: &str, repo: &str) -> Result<()> {
    for comp in repo.split('/') {
        let ok = !comp.is_empty()
            && comp.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && comp
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && comp
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            bail!(
                "image reference {input:?}: invalid repository component {comp:?} (lower-case \
                 letters, digits and `.`, `_`, `-` between them)"
            );
        }
    }
    Ok(())
}

/// An OCI platform: `linux/arm64`, `linux/arm/v7`, `linux/amd64`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform a node of this architecture runs containers for.
    pub fn for_arch(arch: Arch) -> Platform {
        match arch {
            Arch::Arm64 => Platform::new("linux", "arm64", None),
            Arch::Armhf => Platform::new("linux", "arm", Some("v7")),
            Arch::Amd64 => Platform::new("linux", "amd64", None),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform::new(os, arch, None)),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform::new(os, arch, Some(v)))
            }
            _ => bail!("invalid platform {s:?}; write it like `linux/arm64` or `linux/arm/v7`"),
        }
    }

    /// The variant with the defaults containerd assumes filled in (`arm64` is `v8`, `arm`
    /// is `v7`, `amd64` has none).
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            ("arm", None) => Some("v7"),
            ("amd64", Some("v1")) => None,
            (_, v) => v,
        }
    }

    /// Whether an image built for `other` is the one to run on `self`.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normalized_variant() == other.normalized_variant()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn short_names_go_to_docker_hub_library() {
        let r = p("redis:7");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/redis");
        assert_eq!(r.tag.as_deref(), Some("7"));
        assert_eq!(r.full_name(), "docker.io/library/redis:7");
        assert_eq!(p("redis").full_name(), "docker.io/library/redis:latest");
        assert_eq!(p("org/app").full_name(), "docker.io/org/app:latest");
        assert_eq!(
            p("index.docker.io/library/redis:7-alpine").full_name(),
            "docker.io/library/redis:7-alpine"
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let d = "a".repeat(64);
        let r = p(&format!("ghcr.io/org/app@sha256:{d}"));
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(format!("sha256:{d}")));
        assert_eq!(r.manifest_reference(), format!("sha256:{d}"));
        let r = p("127.0.0.1:5000/test/multi:1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/multi");
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = p("localhost/x");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.full_name(), "localhost/x:latest");
        let r = p(&format!(
            "quay.io/argoproj/argocd:v2.13.0@sha256:{}",
            "B".repeat(64)
        ));
        assert_eq!(r.tag.as_deref(), Some("v2.13.0"));
        assert_eq!(r.digest, Some(format!("sha256:{}", "b".repeat(64))));
        assert_eq!(
            r.full_name(),
            format!("quay.io/argoproj/argocd:v2.13.0@sha256:{}", "b".repeat(64))
        );
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "Redis:7",
            "redis:",
            "redis:-x",
            "redis@sha256:abc",
            "redis@md5:0123",
            "https://ghcr.io/x",
            "ghcr.io//x",
            "a/b/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn platforms_from_arch_and_matching() {
        let arm64 = Platform::for_arch(Arch::Arm64);
        assert_eq!(arm64.to_string(), "linux/arm64");
        assert!(arm64.matches(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(arm64.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!arm64.matches(&Platform::parse("linux/arm/v7").unwrap()));
        let armhf = Platform::for_arch(Arch::Armhf);
        assert_eq!(armhf.to_string(), "linux/arm/v7");
        assert!(armhf.matches(&Platform::parse("linux/arm").unwrap()));
        assert!(!armhf.matches(&Platform::parse("linux/arm/v6").unwrap()));
        let amd64 = Platform::for_arch(Arch::Amd64);
        assert!(amd64.matches(&Platform::parse("linux/amd64").unwrap()));
        assert!(!amd64.matches(&Platform::parse("windows/amd64").unwrap()));
        assert!(Platform::parse("linux").is_err());
    }
}
