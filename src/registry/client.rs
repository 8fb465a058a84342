//! A small blocking client for the OCI distribution API (`/v2/`): scheme selection (HTTPS,
//! plain HTTP only for registries marked insecure), the `/v2/` ping, anonymous or
//! credentialed bearer tokens from `WWW-Authenticate` challenges, and Basic credentials
//! from a Docker `config.json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};

use super::reference::DOCKER_HUB;

/// Where a caller can mark a registry as plain HTTP; quoted in error messages.
pub const INSECURE_HINT: &str =
    "list it (host:port) among the insecure registries of the build to allow plain HTTP";

/// User name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lower case).
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="...",service="...",scope="..."` (quoted values may hold commas).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The registry a Docker `config.json` key names: `https://index.docker.io/v1/` is
/// `docker.io`, `ghcr.io` is `ghcr.io`.
fn auth_key_registry(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// Reads the `auths` of a Docker `config.json` (a file, or a directory holding one).
pub fn load_docker_config(path: &Path) -> Result<BTreeMap<String, Credentials>> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read the registry credentials file {}",
            file.display()
        )
    })?;
    parse_docker_config(&text).with_context(|| {
        format!(
            "{} is not a valid Docker config.json; fix it (or log in again with `docker login`)",
            file.display()
        )
    })
}

fn parse_docker_config(text: &str) -> Result<BTreeMap<String, Credentials>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    let cfg: Config = serde_json::from_str(text)?;
    let mut out = BTreeMap::new();
    for (key, e) in cfg.auths {
        let cred = match (e.auth.filter(|a| !a.is_empty()), e.username, e.password) {
            (Some(a), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .with_context(|| format!("the `auth` of {key:?} is not base64"))?;
                let s = String::from_utf8(raw)
                    .with_context(|| format!("the `auth` of {key:?} is not UTF-8"))?;
                let Some((u, p)) = s.split_once(':') else {
                    bail!("the `auth` of {key:?} is not `user:password` in base64");
                };
                Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            }
            (None, Some(u), Some(p)) => Credentials {
                username: u,
                password: p,
            },
            _ => continue,
        };
        out.insert(auth_key_registry(&key), cred);
    }
    Ok(out)
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, when it exists.
pub fn default_docker_config() -> Option<PathBuf> {
    let p = match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => dirs::home_dir()?.join(".docker").join("config.json"),
    };
    p.is_file().then_some(p)
}

/// A blocking registry client shared by all pulls of one build.
pub struct Client {
    http: Http,
    insecure: Vec<String>,
    credentials: BTreeMap<String, Credentials>,
    /// `registry/repository` -> the `Authorization` value that worked last.
    auth: Mutex<HashMap<String, String>>,
    pinged: Mutex<HashSet<String>>,
    mirror: Option<super::PullMirror>,
}

/// Where a request for an image of some registry goes.
struct Route {
    /// The registry asked (`host:port`): what credentials, tokens and messages name.
    registry: String,
    /// `https://host:port`.
    base: String,
    repository: String,
}

impl Client {
    pub fn new(insecure: &[String], credentials: BTreeMap<String, Credentials>) -> Result<Client> {
        let http = Http::builder()
            .user_agent(concat!("pikube-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Per read: a stall timeout, not a limit on a whole layer.
            .timeout(Duration::from_secs(120))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            insecure: insecure.iter().map(|s| auth_key_registry(s)).collect(),
            credentials,
            auth: Mutex::new(HashMap::new()),
            pinged: Mutex::new(HashSet::new()),
            mirror: None,
        })
    }

    /// Sends every request to `mirror` instead of the image's own registry.
    pub fn with_mirror(mut self, mirror: Option<super::PullMirror>) -> Client {
        self.mirror = mirror;
        self
    }

    fn route(&self, registry: &str, repository: &str) -> Route {
        match &self.mirror {
            Some(m) => Route {
                registry: m.host().to_string(),
                base: m.base_url().to_string(),
                repository: m.repository(registry, repository),
            },
            None => Route {
                registry: registry.to_string(),
                base: self.base_url(registry),
                repository: repository.to_string(),
            },
        }
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.insecure.iter().any(|r| r == registry)
    }

    /// `https://host` (or `http://` for insecure registries); Docker Hub's API host.
    pub fn base_url(&self, registry: &str) -> String {
        let host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// `GET /v2/`: checks once per registry that it speaks the distribution API.
    fn ping(&self, route: &Route) -> Result<()> {
        let registry = route.registry.as_str();
        if self.pinged.lock().expect("lock").contains(registry) {
            return Ok(());
        }
        let url = format!("{}/v2/", route.base);
        let resp = self.http.get(&url).send().map_err(|e| {
            let what = match &self.mirror {
                Some(_) => format!("the registry mirror {registry} (images.registry_mirror)"),
                None => format!("the registry {registry}"),
            };
            if let Some(why) = crate::source::why_unreachable(&e, registry) {
                return anyhow::anyhow!("cannot reach {what} at {url}: {why}");
            }
            let mut msg = format!("cannot reach {what} at {url}: {e:#}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            if self.mirror.is_none() && !self.is_insecure(registry) {
                msg.push_str(&format!(
                    ". If {registry} serves plain HTTP (no TLS), {INSECURE_HINT}"
                ));
            }
            anyhow::anyhow!(msg)
        })?;
        let status = resp.status();
        if !(status.is_success() || status == StatusCode::UNAUTHORIZED) {
            bail!(
                "{url} answered HTTP {} to the registry API check: {registry} does not look like \
                 a container registry (OCI distribution API); check the image name",
                status.as_u16()
            );
        }
        self.pinged
            .lock()
            .expect("lock")
            .insert(registry.to_string());
        Ok(())
    }

    /// Sends a request for `path` (below `/v2/<repository>/`), authenticating when the
    /// registry asks to. Any status is returned; only transport errors fail.
    pub fn request(
        &self,
        method: reqwest::Method,
        registry: &str,
        repository: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response> {
        let route = self.route(registry, repository);
        self.ping(&route)?;
        let (registry, repository) = (route.registry.as_str(), route.repository.as_str());
        let url = format!("{}/v2/{repository}/{path}", route.base);
        let key = format!("{registry}/{repository}");
        let build = |auth: Option<&str>| -> RequestBuilder {
            let mut rb = self.http.request(method.clone(), &url);
            if let Some(a) = accept {
                rb = rb.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            rb
        };
        let cached = self.auth.lock().expect("lock").get(&key).cloned();
        let resp = build(cached.as_deref())
            .send()
            .with_context(|| format!("request to {url} failed"))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .find(|c| c.scheme == "bearer" || c.scheme == "basic");
        let Some(challenge) = challenge else {
            bail!(
                "{registry} refused {url} (HTTP 401) without saying how to authenticate; \
                 check the registry address"
            );
        };
        let auth = self.authorize(registry, repository, &challenge)?;
        let resp = build(Some(&auth))
            .send()
            .with_context(|| format!("request to {url} failed"))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            bail!(
                "{registry} denied access to {repository} (HTTP {}); {}",
                resp.status().as_u16(),
                self.login_hint(registry)
            );
        }
        self.auth.lock().expect("lock").insert(key, auth);
        Ok(resp)
    }

    fn login_hint(&self, registry: &str) -> String {
        if self.credentials.contains_key(registry) {
            format!(
                "the credentials for {registry} in the Docker config.json were refused: log in \
                 again (`docker login {registry}`) or check the repository name"
            )
        } else {
            format!(
                "the repository may be private or misspelt: check the name, or log in \
                 (`docker login {registry}`, stored in $DOCKER_CONFIG/config.json)"
            )
        }
    }

    /// The `Authorization` value answering `challenge`.
    fn authorize(&self, registry: &str, repository: &str, challenge: &Challenge) -> Result<String> {
        let cred = self.credentials.get(registry);
        if challenge.scheme == "basic" {
            let Some(c) = cred else {
                bail!(
                    "{registry} requires a user name and password; {}",
                    self.login_hint(registry)
                );
            };
            let raw = format!("{}:{}", c.username, c.password);
            return Ok(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ));
        }
        let Some(realm) = challenge.params.get("realm") else {
            bail!("{registry} asked for a bearer token without naming its token service (realm)");
        };
        let mut url = url::Url::parse(realm)
            .with_context(|| format!("{registry} named an invalid token service {realm:?}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = challenge.params.get("service") {
                q.append_pair("service", s);
            }
            let default_scope = format!("repository:{repository}:pull");
            let scope = challenge
                .params
                .get("scope")
                .map(String::as_str)
                .unwrap_or(&default_scope);
            q.append_pair("scope", scope);
        }
        let mut rb = self.http.get(url.as_str());
        if let Some(c) = cred {
            rb = rb.basic_auth(&c.username, Some(&c.password));
        }
        let resp = rb
            .send()
            .with_context(|| format!("cannot get a token for {registry} from {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "the token service of {registry} ({}) refused access to {repository} (HTTP {}); {}",
                url.origin().ascii_serialization(),
                status.as_u16(),
                self.login_hint(registry)
            );
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = resp.text().with_context(|| {
            format!("cannot read the answer of the token service of {registry}")
        })?;
        let t: Token = serde_json::from_str(&body)
            .with_context(|| format!("the token service of {registry} sent an invalid answer"))?;
        match t.token.or(t.access_token).filter(|t| !t.is_empty()) {
            Some(tok) => Ok(format!("Bearer {tok}")),
            None => bail!("the token service of {registry} sent no token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_in_quotes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/redis:pull,push");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn docker_config_auths() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cr:et");
        let text = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "ghcr.io":{{"username":"u","password":"p"}},
                "quay.io":{{}}}},"credsStore":"desktop"}}"#
        );
        let m = parse_docker_config(&text).unwrap();
        assert_eq!(m["docker.io"].username, "me");
        assert_eq!(m["docker.io"].password, "s3cr:et");
        assert_eq!(m["ghcr.io"].password, "p");
        assert!(!m.contains_key("quay.io"));
        assert!(parse_docker_config(r#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(!format!("{:?}", m["docker.io"]).contains("s3cr"));
    }

    #[test]
    fn schemes_follow_the_insecure_list() {
        let c = Client::new(&["127.0.0.1:5000".to_string()], BTreeMap::new()).unwrap();
        assert_eq!(c.base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(c.base_url("ghcr.io"), "https://ghcr.io");
        assert_eq!(c.base_url("docker.io"), "https://registry-1.docker.io");
    }
}
