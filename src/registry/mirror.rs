//! A registry that every image is pulled through at build time (`images.registry_mirror`):
//! air-gapped networks and CI that keep copies of the images they use.

use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// `http[s]://HOST[:PORT][/PREFIX]`. The image `REGISTRY/REPOSITORY:TAG` is pulled from this
/// registry as `[PREFIX/]REGISTRY/REPOSITORY:TAG` (`redis:7` as `docker.io/library/redis:7`),
/// a port in the registry's name written with `_` (`127.0.0.1_5000/app`), since a `:` may not
/// appear in a repository name. Digests are those of the upstream image, so `images.lock`
/// holds either way.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PullMirror {
    /// `https://host:port`.
    base: String,
    /// `host:port`: what credentials and messages name.
    host: String,
    /// `proxy/` or empty.
    prefix: String,
}

impl PullMirror {
    pub fn parse(s: &str) -> Result<PullMirror> {
        let hint = "write it like http://127.0.0.1:5000 or https://registry.lan/mirror";
        let u = match url::Url::parse(s.trim()) {
            Ok(u) => u,
            Err(e) => bail!("images.registry_mirror {s:?} is not a URL ({e}): {hint}"),
        };
        if !matches!(u.scheme(), "http" | "https") {
            bail!("images.registry_mirror {s:?} must use http:// or https://: {hint}");
        }
        let Some(h) = u.host_str().filter(|h| !h.is_empty()) else {
            bail!("images.registry_mirror {s:?} has no host: {hint}");
        };
        if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
            bail!(
                "images.registry_mirror {s:?} may hold only a scheme, a host, a port and a path; \
                 credentials come from the Docker config.json: {hint}"
            );
        }
        let host = match u.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        };
        let path = u.path().trim_matches('/');
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(PullMirror {
            base: format!("{}://{host}", u.scheme()),
            host,
            prefix,
        })
    }

    /// `https://host:port`, below which `/v2/` is the registry API.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository on the mirror that holds `registry/repository`.
    pub fn repository(&self, registry: &str, repository: &str) -> String {
        format!(
            "{}{}/{repository}",
            self.prefix,
            registry.to_ascii_lowercase().replace(':', "_")
        )
    }
}

impl TryFrom<String> for PullMirror {
    type Error = String;

    fn try_from(s: String) -> Result<PullMirror, String> {
        PullMirror::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<PullMirror> for String {
    fn from(m: PullMirror) -> String {
        m.to_string()
    }
}

impl fmt::Display for PullMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix.trim_end_matches('/'))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_repositories_keep_the_registry_name() {
        let m = PullMirror::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(m.base_url(), "http://127.0.0.1:5000");
        assert_eq!(m.host(), "127.0.0.1:5000");
        assert_eq!(
            m.repository("docker.io", "library/redis"),
            "docker.io/library/redis"
        );
        assert_eq!(m.repository("127.0.0.1:5001", "app"), "127.0.0.1_5001/app");
        let p = PullMirror::parse("https://harbor.lan/proxy/").unwrap();
        assert_eq!(p.base_url(), "https://harbor.lan");
        assert_eq!(p.repository("ghcr.io", "org/app"), "proxy/ghcr.io/org/app");
        assert_eq!(p.to_string(), "https://harbor.lan/proxy");
        for bad in [
            "127.0.0.1:5000",
            "ftp://m",
            "http://u:p@m",
            "http://m/?x=1",
            "not a url",
        ] {
            let e = PullMirror::parse(bad).unwrap_err().to_string();
            assert!(e.contains("images.registry_mirror"), "{bad}: {e}");
        }
    }

    #[test]
    fn parsed_from_yaml_as_a_string() {
        let m: PullMirror = serde_saphyr::from_str("http://m:5000").unwrap();
        assert_eq!(m.host(), "m:5000");
        assert!(serde_saphyr::from_str::<PullMirror>("m:5000").is_err());
    }
}
