//! Container registries for integration tests.
//!
//! ```ignore
//! let Some(reg) = Registry::start() else { return };              // skipped, or failed, and said why
//! let layout = tempdir; build_layout(layout.path(), "1", &[TestImage::new("linux/arm64", 1)]);
//! reg.push_layout(layout.path(), "1", "test/multi:1").unwrap();  // skopeo copy --all
//! let raw = reg.inspect_raw("test/multi:1");                     // skopeo inspect --raw
//! ```
//!
//! [`Registry`] is the real `docker-registry` (Debian package) on 127.0.0.1 with its storage
//! in a temporary directory; images are built as OCI layouts by [`build_layout`] and pushed
//! with `skopeo`. [`FakeRegistry`] is a small programmable registry (bearer tokens, Basic
//! credentials, blob redirects, corrupt blobs, request log) for what a real one never does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::sha256_hex;
use pikube_test_oracles::{require_tool, skip};

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Runs a command, returning stdout or a message with stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The real `docker-registry` on 127.0.0.1, stopped (and its storage deleted) on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; `None` when it cannot, after [`pikube_test_oracles::skip`] said
    /// why (missing packages, or the registry did not come up).
    pub fn start() -> Option<Registry> {
        if !(require_tool("docker-registry", "docker-registry") && require_tool("skopeo", "skopeo"))
        {
            return None;
        }
        Self::serve().map_err(skip).ok()
    }

    fn serve() -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix("pikube-registry-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("storage").display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let log = std::fs::File::create(dir.path().join("registry.log"))
                .map_err(|e| e.to_string())?;
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start docker-registry: {e}"))?;
            if wait_ready(&mut child, port, Duration::from_secs(15)) {
                return Ok(Registry { child, port, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        }
        Err(format!("docker-registry did not start: {last}"))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the image `reference` (the `org.opencontainers.image.ref.name`) of an OCI
    /// layout, with every platform, to `repo_tag` (`test/multi:1`).
    pub fn push_layout(
        &self,
        layout: &Path,
        reference: &str,
        repo_tag: &str,
    ) -> Result<(), String> {
        self.push_layout_as(layout, reference, repo_tag, None)
    }

    /// [`Registry::push_layout`], converting to a manifest format (`v2s2`: Docker schema 2
    /// media types, `oci`).
    pub fn push_layout_as(
        &self,
        layout: &Path,
        reference: &str,
        repo_tag: &str,
        format: Option<&str>,
    ) -> Result<(), String> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet"]);
        if let Some(f) = format {
            cmd.arg(format!("--format={f}"));
        }
        run(cmd.args([
            "--dest-tls-verify=false",
            &format!("oci:{}:{reference}", layout.display()),
            &format!("docker://{}/{repo_tag}", self.host()),
        ]))
        .map(|_| ())
    }

    /// `skopeo inspect --raw` of `repo_ref` (`test/multi:1` or `test/multi@sha256:...`).
    pub fn inspect_raw(&self, repo_ref: &str) -> serde_json::Value {
        let out = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo_ref}", self.host()),
        ]))
        .expect("skopeo inspect --raw");
        serde_json::from_str(&out).expect("manifest JSON")
    }

    /// Where the registry keeps the data of blob `hex`.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn wait_ready(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(
                s,
                "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One platform's image in a test layout: a single gzip layer with a few files whose
/// content depends on the platform and `seed`.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub platform: String,
    pub seed: u64,
    /// Bytes of pseudo-random payload in the layer.
    pub payload: usize,
}

impl TestImage {
    pub fn new(platform: &str, seed: u64) -> TestImage {
        TestImage {
            platform: platform.to_string(),
            seed,
            payload: 4096,
        }
    }
}

/// What [`build_layout`] wrote for one platform.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub platform: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layer_digest: String,
    pub layer: Vec<u8>,
}

/// A gzip-compressed tar layer and the digest of its uncompressed tar.
pub fn make_layer(files: &[(&str, Vec<u8>)]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, &data[..]).expect("tar");
    }
    let raw = tar.into_inner().expect("tar");
    let diff_id = format!("sha256:{}", sha256_hex(&raw));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), diff_id)
}

/// The config, manifest and layer of one test image (OCI media types).
pub fn make_image(img: &TestImage) -> BuiltImage {
    let parts: Vec<&str> = img.platform.split('/').collect();
    let (os, arch, variant) = (parts[0], parts[1], parts.get(2).copied());
    let (layer, diff_id) = make_layer(&[
        ("etc/platform", format!("{}\n", img.platform).into_bytes()),
        (
            "data/payload.bin",
            super::pseudo_random(img.payload, img.seed ^ sha_seed(&img.platform)),
        ),
    ]);
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let mut config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {"Entrypoint": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "pikube-image test"}],
    });
    if let Some(v) = variant {
        config["variant"] = serde_json::json!(v);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    BuiltImage {
        platform: img.platform.clone(),
        manifest_digest: format!("sha256:{}", sha256_hex(&manifest)),
        manifest,
        config_digest,
        config,
        layer_digest,
        layer,
    }
}

fn sha_seed(s: &str) -> u64 {
    let h = sha256_hex(s.as_bytes());
    u64::from_str_radix(&h[..16], 16).unwrap()
}

/// An image index (OCI) over `images`, with their platforms.
pub fn make_index(images: &[BuiltImage]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|b| {
            let parts: Vec<&str> = b.platform.split('/').collect();
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = serde_json::json!(v);
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.manifest_digest,
                "size": b.manifest.len(),
                "platform": p,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap()
}

/// Writes an OCI layout at `dir` whose `index.json` names (as `reference`) an image index
/// over one image per entry of `images`. Returns what was built, in order.
pub fn build_layout(dir: &Path, reference: &str, images: &[TestImage]) -> Vec<BuiltImage> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let hex = sha256_hex(data);
        std::fs::write(blobs.join(&hex), data).unwrap();
        hex
    };
    let built: Vec<BuiltImage> = images.iter().map(make_image).collect();
    for b in &built {
        put(&b.layer);
        put(&b.config);
        put(&b.manifest);
    }
    let index = make_index(&built);
    let index_hex = put(&index);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{index_hex}"),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": reference},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    built
}

// ---------------------------------------------------------------------------------------
// A programmable fake registry.

/// One request the fake registry saw.
#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct FakeState {
    /// `repo` -> tag or digest -> (media type, bytes).
    manifests: HashMap<String, HashMap<String, (String, Vec<u8>)>>,
    /// digest -> bytes actually served (may differ from the digest to simulate corruption).
    blobs: HashMap<String, Vec<u8>>,
    /// `Some((user, password))`: the token endpoint requires these as Basic credentials.
    basic: Option<(String, String)>,
    /// Require a bearer token for `/v2/` requests.
    bearer: bool,
    /// Serve blobs as a 307 redirect to `/storage/<hex>`.
    redirect_blobs: bool,
    /// Path suffix -> (status, responses still to fail); failures carry `Retry-After: 0`.
    fails: Vec<(String, u16, usize)>,
    log: Vec<FakeRequest>,
}

/// A registry speaking enough of the distribution API for one client, on 127.0.0.1.
pub struct FakeRegistry {
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    pub port: u16,
}

const TOKEN: &str = "fake-token-123";

impl FakeRegistry {
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || {
                    let _ = fake_handle(&st, port, s);
                });
            }
        });
        FakeRegistry { state, stop, port }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves a manifest under a tag (and under its digest).
    pub fn add_manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap();
        let m = st.manifests.entry(repo.to_string()).or_default();
        let digest = format!("sha256:{}", sha256_hex(bytes));
        m.insert(tag.to_string(), (media_type.to_string(), bytes.to_vec()));
        m.insert(digest, (media_type.to_string(), bytes.to_vec()));
    }

    /// Serves `bytes` as the blob `digest` (pass other bytes to serve a corrupt blob).
    pub fn add_blob(&self, digest: &str, bytes: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.to_string(), bytes.to_vec());
    }

    /// Serves one [`BuiltImage`] at `repo:tag` (no index).
    pub fn add_image(&self, repo: &str, tag: &str, b: &BuiltImage) {
        self.add_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &b.manifest,
        );
        self.add_blob(&b.config_digest, &b.config);
        self.add_blob(&b.layer_digest, &b.layer);
    }

    /// Require bearer tokens, and (when given) Basic credentials at the token endpoint.
    pub fn require_auth(&self, basic: Option<(&str, &str)>) {
        let mut st = self.state.lock().unwrap();
        st.bearer = true;
        st.basic = basic.map(|(u, p)| (u.to_string(), p.to_string()));
    }

    pub fn set_redirect_blobs(&self, on: bool) {
        self.state.lock().unwrap().redirect_blobs = on;
    }

    /// The next `times` requests whose path ends with `suffix` get `status` (with
    /// `Retry-After: 0`).
    pub fn fail_next(&self, suffix: &str, status: u16, times: usize) {
        self.state
            .lock()
            .unwrap()
            .fails
            .push((suffix.to_string(), status, times));
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn fake_handle(st: &Mutex<FakeState>, port: u16, mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut it = line.split_whitespace();
    let method = it.next().unwrap_or("").to_string();
    let target = it.next().unwrap_or("/").to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_string());
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut g = st.lock().unwrap();
    let mut headers: Vec<(String, String)> = Vec::new();
    let forced = g
        .fails
        .iter_mut()
        .find(|(suffix, _, left)| *left > 0 && path.ends_with(suffix.as_str()))
        .map(|(_, status, left)| {
            *left -= 1;
            *status
        });
    let (status, body): (u16, Vec<u8>) = if let Some(st) = forced {
        headers.push(("Retry-After".into(), "0".into()));
        (st, Vec::new())
    } else if path == "/token" {
        let ok = match &g.basic {
            None => true,
            Some((u, p)) => {
                use base64::Engine;
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                auth.as_deref() == Some(want.as_str())
            }
        };
        if ok && query.contains("scope=repository") {
            (200, format!("{{\"token\":\"{TOKEN}\"}}").into_bytes())
        } else {
            (401, b"{}".to_vec())
        }
    } else if let Some(hex) = path.strip_prefix("/storage/") {
        match g.blobs.get(&format!("sha256:{hex}")) {
            Some(b) => (200, b.clone()),
            None => (404, Vec::new()),
        }
    } else if g.bearer && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        let scope = path
            .strip_prefix("/v2/")
            .and_then(|p| {
                p.rsplit_once("/manifests/")
                    .or_else(|| p.rsplit_once("/blobs/"))
            })
            .map(|(repo, _)| format!(",scope=\"repository:{repo}:pull\""))
            .unwrap_or_default();
        headers.push((
            "WWW-Authenticate".into(),
            format!(
                "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake-registry\"{scope}"
            ),
        ));
        (401, b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec())
    } else if path == "/v2/" {
        (200, b"{}".to_vec())
    } else if let Some((repo, reference)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/manifests/"))
    {
        match g.manifests.get(repo).and_then(|m| m.get(reference)) {
            Some((mt, b)) => {
                headers.push(("Content-Type".into(), mt.clone()));
                headers.push((
                    "Docker-Content-Digest".into(),
                    format!("sha256:{}", sha256_hex(b)),
                ));
                (200, b.clone())
            }
            None => (
                404,
                b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}".to_vec(),
            ),
        }
    } else if let Some((_, digest)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/blobs/"))
    {
        match g.blobs.get(digest) {
            Some(_) if g.redirect_blobs => {
                let hex = digest.trim_start_matches("sha256:");
                headers.push((
                    "Location".into(),
                    // Another host name, as registries redirect to a storage service.
                    format!("http://localhost:{port}/storage/{hex}"),
                ));
                (307, Vec::new())
            }
            Some(b) => (200, b.clone()),
            None => (404, Vec::new()),
        }
    } else {
        (404, Vec::new())
    };
    g.log.push(FakeRequest {
        method: method.clone(),
        path: path.clone(),
        authorization: auth,
        status,
    });
    drop(g);
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if method != "HEAD" {
        s.write_all(&body)?;
    }
    s.flush()?;
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}
