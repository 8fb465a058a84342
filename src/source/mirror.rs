//! Mirror URL rewriting.

use anyhow::{Result, bail};
use url::Url;

/// Rewrites `scheme://HOST[:PORT]/PATH?Q` to `MIRROR/HOST[:PORT]/PATH?Q`.
///
/// A mirror is a plain HTTP(S) tree that holds copies of upstream files under their
/// host name, e.g. `https://mirror.lan/cdimage.ubuntu.com/releases/...`. The port is kept
/// only when it is not the scheme's default.
pub fn mirror_url(url: &str, mirror: &str) -> Result<String> {
    let u = Url::parse(url)
        .map_err(|e| anyhow::anyhow!("cannot use {url:?} with a mirror: not a valid URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("cannot use {url:?} with a mirror: only http:// and https:// URLs can be mirrored");
    }
    let Some(host) = u.host_str() else {
        bail!("cannot use {url:?} with a mirror: the URL has no host name");
    };
    let m = mirror.trim().trim_end_matches('/');
    match Url::parse(m) {
        Ok(mu) if matches!(mu.scheme(), "http" | "https") && mu.host_str().is_some() => {}
        _ => bail!(
            "invalid --mirror {mirror:?}: expected an http:// or https:// URL such as \
             https://mirror.example/pikube"
        ),
    }
    let mut out = format!("{m}/{host}");
    if let Some(port) = u.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(u.path());
    if let Some(q) = u.query() {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_host_path_and_query() {
        assert_eq!(
            mirror_url(
                "https://cdimage.ubuntu.com/releases/24.04/release/SHA256SUMS",
                "http://mirror.lan:8080/pk/"
            )
            .unwrap(),
            "http://mirror.lan:8080/pk/cdimage.ubuntu.com/releases/24.04/release/SHA256SUMS"
        );
        assert_eq!(
            mirror_url(
                "http://dl.armbian.com/orangepi5/archive/a.img.xz?x=1&y=2",
                "https://m.example"
            )
            .unwrap(),
            "https://m.example/dl.armbian.com/orangepi5/archive/a.img.xz?x=1&y=2"
        );
    }

    #[test]
    fn keeps_encoded_paths_and_ports() {
        assert_eq!(
            mirror_url(
                "https://github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1/k3s-arm64",
                "http://m"
            )
            .unwrap(),
            "http://m/github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1/k3s-arm64"
        );
        assert_eq!(
            mirror_url("http://host:81/a", "http://m").unwrap(),
            "http://m/host:81/a"
        );
        assert_eq!(
            mirror_url("https://host:443/a", "http://m").unwrap(),
            "http://m/host/a"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(mirror_url("ftp://host/a", "http://m").is_err());
        assert!(mirror_url("not a url", "http://m").is_err());
        let e = mirror_url("https://host/a", "mirror.lan").unwrap_err();
        assert!(e.to_string().contains("--mirror"), "{e}");
    }
}
