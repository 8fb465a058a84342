//! Pulling container images and writing k3s's preload tarball, against a real
//! `docker-registry` (images pushed with `skopeo`), a programmable fake registry, and
//! `containerd` (`ctr images import`) when it can run.
//!
//! Needs the Debian packages `docker-registry skopeo containerd zstd`; tests that lack one
//! print why and skip (fail under `PIKUBE_REQUIRE_ORACLES=1`).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pikube_image::progress::Progress;
use pikube_image::registry::{
    ImageRef, Platform, Puller, RegistryOptions, ResolvedImage, summary, write_oci_archive,
};
use pikube_image::source::Cache;
use pikube_test_oracles::{require_package, require_root, require_tool, skip};
use support::registry::{FakeRegistry, Registry, TestImage, build_layout, make_image, run};
use support::sha256_hex;

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn puller(cache: &Cache, insecure: &[String], offline: bool) -> Puller {
    Puller::new(
        cache.clone(),
        RegistryOptions {
            insecure: insecure.to_vec(),
            // An empty config so the machine's own Docker login never matters.
            docker_config: Some(empty_docker_config()),
            offline,
            locked: BTreeMap::new(),
            mirror: None,
        },
        Progress::quiet(),
    )
}

fn empty_docker_config() -> PathBuf {
    let p = std::env::temp_dir().join("pikube-test-empty-docker-config.json");
    if !p.exists() {
        fs::write(&p, "{}").unwrap();
    }
    p
}

fn blob_count(cache: &Cache) -> usize {
    fs::read_dir(cache.blob_dir()).unwrap().count()
}

fn tmp_count(cache: &Cache) -> usize {
    fs::read_dir(cache.root().join("tmp")).unwrap().count()
}

/// Layers of the manifest `digest` of `repo` as the registry reports them (skopeo).
fn registry_layers(reg: &Registry, repo: &str, digest: &str) -> Vec<String> {
    let m = reg.inspect_raw(&format!("{repo}@{digest}"));
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

const THREE: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];

fn push_multi(reg: &Registry, repo_tag: &str, platforms: &[&str], seed: u64) {
    let layout = tempfile::tempdir().unwrap();
    let images: Vec<TestImage> = platforms.iter().map(|p| TestImage::new(p, seed)).collect();
    build_layout(layout.path(), "1", &images);
    reg.push_layout(layout.path(), "1", repo_tag)
        .unwrap_or_else(|e| panic!("push {repo_tag}: {e}"));
}

#[test]
fn multi_platform_pull_writes_an_archive_skopeo_reads() {
    let Some(reg) = Registry::start() else { return };
    push_multi(&reg, "test/multi:1", &THREE, 1);
    let index = reg.inspect_raw("test/multi:1");
    let arm64_entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .expect("arm64 in the pushed index")
        .clone();
    let arm64_digest = arm64_entry["digest"].as_str().unwrap().to_string();
    let want_layers = registry_layers(&reg, "test/multi", &arm64_digest);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let insecure = vec![reg.host()];
    let image = ImageRef::parse(&format!("{}/test/multi:1", reg.host())).unwrap();

    // First pull: everything comes from the registry.
    let got = puller(&cache, &insecure, false)
        .pull(&image, &platform("linux/arm64"))
        .unwrap();
    assert_eq!(got.reference, format!("{}/test/multi:1", reg.host()));
    assert_eq!(got.manifest_digest, arm64_digest);
    assert!(got.index_digest.is_some());
    assert_eq!(got.platform.architecture, "arm64");
    let layers: Vec<String> = got.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, want_layers);
    assert_eq!(got.bytes_cached, 0);
    assert_eq!(got.bytes_pulled, got.content_size());
    assert!(got.bytes_pulled > 0);
    eprintln!("first pull: {}", summary(std::slice::from_ref(&got)));

    // The armhf node gets the arm/v7 manifest, the amd64 one the amd64 manifest.
    let armhf = puller(&cache, &insecure, false)
        .pull(
            &image,
            &Platform::for_arch(pikube_image::boards::Arch::Armhf),
        )
        .unwrap();
    assert_eq!(armhf.platform.variant.as_deref(), Some("v7"));
    assert_ne!(armhf.manifest_digest, got.manifest_digest);

    // Second pull: no blob is downloaded. Proven by deleting the layer data from the
    // registry's storage: only a pull served by the cache can still succeed.
    for l in &got.layers {
        let data = reg.blob_data(l.digest.trim_start_matches("sha256:"));
        fs::remove_file(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    }
    let again = puller(&cache, &insecure, false)
        .pull(&image, &platform("linux/arm64"))
        .unwrap();
    assert_eq!(again.bytes_pulled, 0);
    assert_eq!(again.bytes_cached, got.content_size());
    assert_eq!(again.manifest_digest, got.manifest_digest);
    eprintln!("second pull: {}", summary(std::slice::from_ref(&again)));
    let other_cache_dir = tempfile::tempdir().unwrap();
    let other_cache = Cache::open(other_cache_dir.path()).unwrap();
    let err = puller(&other_cache, &insecure, false)
        .pull(&image, &platform("linux/arm64"))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("blob unknown"), "{err}");
    eprintln!("pull without the layer in the registry: {err}");

    // Offline: the tag record in the cache is enough; an empty cache names the image.
    let offline = puller(&cache, &[], true)
        .pull(&image, &platform("linux/arm64"))
        .unwrap();
    assert_eq!(offline.manifest_digest, got.manifest_digest);
    assert_eq!(offline.bytes_pulled, 0);
    // Without that record, a lock entry (index digest) is enough; without both, nothing is.
    fs::remove_dir_all(cache.root().join("oci/refs")).unwrap();
    let err = format!(
        "{:#}",
        puller(&cache, &[], true)
            .pull(&image, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains(&image.full_name()), "{err}");
    let mut locked = BTreeMap::new();
    locked.insert(
        format!("{}/test/multi:1", reg.host()),
        got.lock_digest().to_string(),
    );
    let locked_puller = Puller::new(
        cache.clone(),
        RegistryOptions {
            offline: true,
            locked,
            ..Default::default()
        },
        Progress::quiet(),
    );
    let from_lock = locked_puller
        .pull(&image, &platform("linux/arm64"))
        .unwrap();
    assert_eq!(from_lock.manifest_digest, got.manifest_digest);
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Cache::open(empty_dir.path()).unwrap();
    let err = format!(
        "{:#}",
        puller(&empty, &[], true)
            .pull(&image, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains(&image.full_name()), "{err}");
    assert!(err.contains("offline"), "{err}");

    // The archive.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("images.tar.zst");
    let (size, sha) =
        write_oci_archive(std::slice::from_ref(&got), &cache, &out, &Progress::quiet()).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(sha, sha256_hex(&bytes));
    // Deterministic: the same inputs give the same bytes.
    let out2 = out_dir.path().join("again.tar.zst");
    let (_, sha2) = write_oci_archive(
        std::slice::from_ref(&got),
        &cache,
        &out2,
        &Progress::quiet(),
    )
    .unwrap();
    assert_eq!(sha, sha2);
    check_zstd_window(&out);
    // Two platforms of one name cannot share an archive: containerd keeps one per name.
    let err = format!(
        "{:#}",
        write_oci_archive(
            &[got.clone(), armhf.clone()],
            &cache,
            &out_dir.path().join("mixed.tar.zst"),
            &Progress::quiet()
        )
        .unwrap_err()
    );
    assert!(err.contains("one archive per platform"), "{err}");
    assert!(!out_dir.path().join("mixed.tar.zst").exists());

    let tar = out_dir.path().join("images.tar");
    run(Command::new("zstd")
        .args(["-d", "-q", "-f", "-o"])
        .arg(&tar)
        .arg(&out))
    .unwrap();
    let listing = run(Command::new("tar").arg("-tvf").arg(&tar)).unwrap();
    eprintln!("archive entries:\n{listing}");
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");
    assert!(names.contains(&"oci-layout") && names.contains(&"index.json"));
    assert!(
        listing
            .lines()
            .all(|l| l.contains("0/0") && l.contains("1970-01-01")),
        "{listing}"
    );

    // index.json: the single-platform manifest with both annotations.
    let idx: serde_json::Value = serde_json::from_str(
        &run(Command::new("tar").arg("-xOf").arg(&tar).arg("index.json")).unwrap(),
    )
    .unwrap();
    let m = &idx["manifests"][0];
    assert_eq!(m["digest"], arm64_digest.as_str());
    assert_eq!(m["platform"]["architecture"], "arm64");
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        image.full_name().as_str()
    );
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "1");

    // skopeo reads the (decompressed) archive, and copying it out reproduces the registry's
    // arm64 layers.
    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:1", tar.display())))
    .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    // The archive holds the registry's manifest byte for byte.
    let raw_digest = format!("sha256:{}", sha256_hex(inspect.as_bytes()));
    let raw_digest_trimmed = format!(
        "sha256:{}",
        sha256_hex(inspect.strip_suffix('\n').unwrap_or(&inspect).as_bytes())
    );
    assert!(
        raw_digest == arm64_digest || raw_digest_trimmed == arm64_digest,
        "{inspect}"
    );
    let archive_layers: Vec<String> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(archive_layers, want_layers);
    let dir_out = out_dir.path().join("copied");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}:1", tar.display()))
        .arg(format!("dir:{}", dir_out.display())))
    .unwrap();
    for l in &want_layers {
        let hex = l.trim_start_matches("sha256:");
        let blob = fs::read(dir_out.join(hex)).unwrap();
        assert_eq!(sha256_hex(&blob), hex, "layer {l} copied intact");
    }
    // Whether skopeo also reads the zstd file as it is (reported, not required).
    let direct = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:1", out.display())));
    eprintln!(
        "skopeo on the .tar.zst directly: {}",
        match direct {
            Ok(_) => "reads it".to_string(),
            Err(e) => format!("does not read it ({})", e.lines().next().unwrap_or("")),
        }
    );
}

/// `zstd -lv` reports the window of every frame; k3s needs at most 32 MiB.
fn check_zstd_window(path: &Path) {
    if !require_tool("zstd", "zstd") {
        return;
    }
    let out = run(Command::new("zstd").arg("-lv").arg(path)).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("Window Size"))
        .unwrap_or_else(|| panic!("no window size in {out}"));
    eprintln!("zstd: {}", line.trim());
    let v = line.split(':').nth(1).unwrap().trim();
    let mut it = v.split_whitespace();
    let n: f64 = it.next().unwrap().parse().unwrap();
    let unit = it.next().unwrap_or("B");
    let bytes = n * match unit {
        "B" => 1.0,
        "KB" | "KiB" => 1024.0,
        "MB" | "MiB" => 1024.0 * 1024.0,
        u => panic!("unexpected unit {u}"),
    };
    assert!(bytes <= 32.0 * 1024.0 * 1024.0, "{line}");
}

#[test]
fn unknown_tag_missing_platform_and_plain_http_fail_clearly() {
    let Some(reg) = Registry::start() else { return };
    push_multi(&reg, "test/twoarch:1", &["linux/amd64", "linux/arm64"], 2);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let insecure = vec![reg.host()];
    let p = puller(&cache, &insecure, false);

    let nope = ImageRef::parse(&format!("{}/test/twoarch:nope", reg.host())).unwrap();
    let err = format!("{:#}", p.pull(&nope, &platform("linux/arm64")).unwrap_err());
    let want = format!(
        "manifest unknown: {}/test/twoarch:nope at {}",
        reg.host(),
        reg.host()
    );
    assert!(err.contains(&want), "{err}");

    let img = ImageRef::parse(&format!("{}/test/twoarch:1", reg.host())).unwrap();
    let err = format!("{:#}", p.pull(&img, &platform("linux/arm/v7")).unwrap_err());
    assert!(err.contains("no image for platform linux/arm/v7"), "{err}");
    assert!(err.contains("linux/amd64, linux/arm64"), "{err}");
    // Only the (verified) index was stored; no layer of another platform.
    assert_eq!(blob_count(&cache), 1);
    assert_eq!(tmp_count(&cache), 0);

    // Without being marked insecure, a plain-HTTP registry is refused with the fix.
    let strict = puller(&cache, &[], false);
    let err = format!(
        "{:#}",
        strict.pull(&img, &platform("linux/arm64")).unwrap_err()
    );
    assert!(
        err.contains(&format!("https://{}/v2/", reg.host())),
        "{err}"
    );
    assert!(err.contains("insecure"), "{err}");
}

#[test]
fn corrupt_blob_is_refused_and_never_cached() {
    let fake = FakeRegistry::start();
    let good = make_image(&TestImage::new("linux/arm64", 3));
    fake.add_image("test/bad", "1", &good);
    // Same length, different content.
    let mut bad = good.layer.clone();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    fake.add_blob(&good.layer_digest, &bad);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/test/bad:1", fake.host())).unwrap();
    let err = format!(
        "{:#}",
        puller(&cache, &[fake.host()], false)
            .pull(&img, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(err.contains(&good.layer_digest), "{err}");
    assert!(
        err.contains(&format!("sha256:{}", sha256_hex(&bad))),
        "{err}"
    );
    assert!(cache.get(&good.layer_digest[7..]).is_none());
    assert!(cache.get(&sha256_hex(&bad)).is_none());
    assert_eq!(tmp_count(&cache), 0);
    // The tag was not recorded: offline, the image is still unknown.
    let err = format!(
        "{:#}",
        puller(&cache, &[], true)
            .pull(&img, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains("offline"), "{err}");

    // A manifest whose bytes do not match the digest the registry states is refused too.
    let fake2 = FakeRegistry::start();
    let other = make_image(&TestImage::new("linux/arm64", 4));
    fake2.add_manifest(
        "test/bad",
        &good.manifest_digest,
        "application/vnd.oci.image.manifest.v1+json",
        &other.manifest,
    );
    let pinned = ImageRef::parse(&format!(
        "{}/test/bad@{}",
        fake2.host(),
        good.manifest_digest
    ))
    .unwrap();
    let cache2_dir = tempfile::tempdir().unwrap();
    let cache2 = Cache::open(cache2_dir.path()).unwrap();
    let err = format!(
        "{:#}",
        puller(&cache2, &[fake2.host()], false)
            .pull(&pinned, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains("digest mismatch for the manifest"), "{err}");
    assert_eq!(blob_count(&cache2), 0);
    assert_eq!(tmp_count(&cache2), 0);
}

#[test]
fn bearer_tokens_basic_credentials_and_blob_redirects() {
    let fake = FakeRegistry::start();
    fake.require_auth(Some(("robot", "pa:ss")));
    fake.set_redirect_blobs(true);
    let good = make_image(&TestImage::new("linux/arm64", 5));
    fake.add_image("org/private", "2", &good);

    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.json");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:pa:ss");
    fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            fake.host()
        ),
    )
    .unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/org/private:2", fake.host())).unwrap();
    let opts = |docker_config: PathBuf| RegistryOptions {
        insecure: vec![fake.host()],
        docker_config: Some(docker_config),
        offline: false,
        locked: BTreeMap::new(),
        mirror: None,
    };

    // Without credentials the token service refuses, and the error says how to log in.
    let anon = Puller::new(
        cache.clone(),
        opts(empty_docker_config()),
        Progress::quiet(),
    );
    let err = format!(
        "{:#}",
        anon.pull(&img, &platform("linux/arm64")).unwrap_err()
    );
    assert!(err.contains("docker login"), "{err}");
    assert_eq!(blob_count(&cache), 0);

    // With the config.json credentials: token, then manifest and redirected blobs.
    let p = Puller::new(
        cache.clone(),
        opts(cfg_dir.path().to_path_buf()),
        Progress::quiet(),
    );
    let got = p.pull(&img, &platform("linux/arm64")).unwrap();
    assert_eq!(got.manifest_digest, good.manifest_digest);
    assert_eq!(got.index_digest, None);
    assert_eq!(
        got.bytes_pulled,
        (good.config.len() + good.layer.len()) as u64
    );
    let log = fake.requests();
    let token_reqs: Vec<_> = log
        .iter()
        .filter(|r| r.path == "/token" && r.status == 200)
        .collect();
    assert_eq!(token_reqs.len(), 1, "{log:#?}");
    assert!(
        token_reqs[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic ")
    );
    let storage: Vec<_> = log
        .iter()
        .filter(|r| r.path.starts_with("/storage/"))
        .collect();
    assert_eq!(storage.len(), 2, "{log:#?}");
    // Blob requests to the registry carry the token; the storage host never sees it.
    assert!(
        log.iter()
            .filter(|r| r.path.contains("/blobs/"))
            .all(|r| r.authorization.as_deref() == Some("Bearer fake-token-123")),
        "{log:#?}"
    );
    assert!(
        storage.iter().all(|r| r.authorization.is_none()),
        "{log:#?}"
    );

    // A second pull asks for the tag's digest with HEAD and nothing else.
    let before = log.len();
    let again = p.pull(&img, &platform("linux/arm64")).unwrap();
    assert_eq!(again.bytes_pulled, 0);
    let later: Vec<_> = fake.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        later,
        vec!["HEAD /v2/org/private/manifests/2"],
        "{later:#?}"
    );

    // A single-platform image for another platform is refused, naming both.
    let err = format!("{:#}", p.pull(&img, &platform("linux/amd64")).unwrap_err());
    assert!(
        err.contains("single-platform image for linux/arm64, not for linux/amd64"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// containerd

struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd; `None` when it cannot, after [`skip`] said why.
    fn start() -> Option<Containerd> {
        if !(require_package("containerd", &["containerd", "ctr"]) && require_root("containerd")) {
            return None;
        }
        Self::serve().map_err(skip).ok()
    }

    fn serve() -> Result<Containerd, String> {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let cfg = d.join("config.toml");
        fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{r}/c.sock\"\n[ttrpc]\n  address = \"{r}/c.sock.ttrpc\"\n\
                 [debug]\n  address = \"{r}/d.sock\"\n",
                r = d.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = fs::File::create(d.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let start = Instant::now();
        let c = Containerd { child, dir };
        while start.elapsed() < Duration::from_secs(20) {
            if c.ctr(&["version"]).is_ok() {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        drop(c);
        Err(format!("containerd did not come up: {}", tail.join(" | ")))
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn import(c: &Containerd, ns: &str, tar: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    c.ctr(&[
        "-n",
        ns,
        "images",
        "import",
        "--no-unpack",
        "--platform",
        "linux/arm64",
        tar.to_str().unwrap(),
    ])?;
    Ok(t.elapsed())
}

#[test]
fn containerd_imports_the_archive_by_name() {
    let Some(reg) = Registry::start() else { return };
    let Some(ctrd) = Containerd::start() else {
        return;
    };
    // Three images of 4 MiB, as a role's set; `PIKUBE_IMPORT_BENCH=COUNT,MIB` measures
    // another size.
    let (count, mib) = std::env::var("PIKUBE_IMPORT_BENCH")
        .ok()
        .and_then(|v| {
            let (c, m) = v.split_once(',')?;
            Some((
                c.trim().parse::<usize>().ok()?,
                m.trim().parse::<usize>().ok()?,
            ))
        })
        .unwrap_or((3, 4));
    let names: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
    let insecure = vec![reg.host()];
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let mut resolved: Vec<ResolvedImage> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let layout = tempfile::tempdir().unwrap();
        let mut imgs: Vec<TestImage> = ["linux/amd64", "linux/arm64"]
            .iter()
            .map(|p| TestImage::new(p, 10 + i as u64))
            .collect();
        for im in &mut imgs {
            im.payload = mib << 20;
        }
        build_layout(layout.path(), "1", &imgs);
        reg.push_layout(layout.path(), "1", &format!("test/{name}:1"))
            .unwrap();
        let r = ImageRef::parse(&format!("{}/test/{name}:1", reg.host())).unwrap();
        resolved.push(
            puller(&cache, &insecure, false)
                .pull(&r, &platform("linux/arm64"))
                .unwrap(),
        );
    }
    let out = tempfile::tempdir().unwrap();
    let zst = out.path().join("role.tar.zst");
    write_oci_archive(&resolved, &cache, &zst, &Progress::quiet()).unwrap();
    let tar = out.path().join("role.tar");
    run(Command::new("zstd")
        .args(["-d", "-q", "-f", "-o"])
        .arg(&tar)
        .arg(&zst))
    .unwrap();

    // ctr itself may or may not decompress zstd; k3s does. Report which.
    match import(&ctrd, "zstdprobe", &zst) {
        Ok(_) => eprintln!("ctr imports the .tar.zst directly"),
        Err(e) => eprintln!(
            "ctr does not import the .tar.zst directly ({}); importing the tar",
            e.lines().next().unwrap_or("")
        ),
    }
    import(&ctrd, "k8s.io", &tar).unwrap();
    let list = ctrd.ctr(&["-n", "k8s.io", "images", "ls", "-q"]).unwrap();
    for r in &resolved {
        assert!(
            list.lines().any(|l| l == r.reference),
            "{} not in:\n{list}",
            r.reference
        );
    }
    let check = ctrd.ctr(&["-n", "k8s.io", "images", "ls"]).unwrap();
    eprintln!("ctr images ls:\n{check}");
    for r in &resolved {
        let line = check.lines().find(|l| l.starts_with(&r.reference)).unwrap();
        assert!(line.contains(&r.manifest_digest), "{line}");
    }

    // One tarball per role vs one per image: import time into fresh namespaces.
    let mut per_image = Vec::new();
    for (i, r) in resolved.iter().enumerate() {
        let z = out.path().join(format!("img{i}.tar.zst"));
        write_oci_archive(std::slice::from_ref(r), &cache, &z, &Progress::quiet()).unwrap();
        let t = out.path().join(format!("img{i}.tar"));
        run(Command::new("zstd")
            .args(["-d", "-q", "-f", "-o"])
            .arg(&t)
            .arg(&z))
        .unwrap();
        per_image.push(t);
    }
    let mut role_total = Duration::ZERO;
    let mut image_total = Duration::ZERO;
    for round in 0..3 {
        role_total += import(&ctrd, &format!("role{round}"), &tar).unwrap();
        for t in &per_image {
            image_total += import(&ctrd, &format!("img{round}"), t).unwrap();
        }
    }
    eprintln!(
        "import timing ({count} images of {mib} MiB, mean of 3 rounds): one tarball per role \
         {:?}, one per image {:?}",
        role_total / 3,
        image_total / 3
    );
}

#[test]
fn transient_blob_failures_are_retried_and_client_errors_are_not() {
    let fake = FakeRegistry::start();
    let good = make_image(&TestImage::new("linux/arm64", 6));
    fake.add_image("test/flaky", "1", &good);
    fake.fail_next(&good.layer_digest, 503, 2);
    // A registry without HEAD on manifests: the GET still resolves the tag.
    fake.fail_next("/manifests/1", 405, 1);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/test/flaky:1", fake.host())).unwrap();
    let got = puller(&cache, &[fake.host()], false)
        .pull(&img, &platform("linux/arm64"))
        .unwrap();
    assert_eq!(
        got.bytes_pulled,
        (good.config.len() + good.layer.len()) as u64
    );
    let layer_gets: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&good.layer_digest))
        .map(|r| r.status)
        .collect();
    assert_eq!(layer_gets, vec![503, 503, 200]);
    let manifest_reqs: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/manifests/1"))
        .map(|r| format!("{} {}", r.method, r.status))
        .collect();
    assert_eq!(manifest_reqs, vec!["HEAD 405", "GET 200"]);

    // A 403 is an answer, not an accident: one request, a clear error.
    let fake = FakeRegistry::start();
    fake.add_image("test/denied", "1", &good);
    fake.fail_next(&good.layer_digest, 403, 5);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/test/denied:1", fake.host())).unwrap();
    let err = format!(
        "{:#}",
        puller(&cache, &[fake.host()], false)
            .pull(&img, &platform("linux/arm64"))
            .unwrap_err()
    );
    assert!(err.contains("HTTP 403"), "{err}");
    let n = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&good.layer_digest))
        .count();
    assert_eq!(n, 1);
}

#[test]
fn docker_schema2_images_pull_and_archive() {
    let Some(reg) = Registry::start() else { return };
    let layout = tempfile::tempdir().unwrap();
    let imgs: Vec<TestImage> = THREE.iter().map(|p| TestImage::new(p, 7)).collect();
    build_layout(layout.path(), "1", &imgs);
    reg.push_layout_as(layout.path(), "1", "test/docker:1", Some("v2s2"))
        .unwrap();
    let index = reg.inspect_raw("test/docker:1");
    assert_eq!(
        index["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let image = ImageRef::parse(&format!("{}/test/docker:1", reg.host())).unwrap();
    let got = puller(&cache, &[reg.host()], false)
        .pull_all(std::slice::from_ref(&image), &platform("linux/arm/v7"))
        .unwrap()
        .remove(0);
    assert_eq!(
        got.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(got.platform.to_string(), "linux/arm/v7");
    let want = registry_layers(&reg, "test/docker", &got.manifest_digest);
    let layers: Vec<String> = got.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, want);

    let out = tempfile::tempdir().unwrap();
    let zst = out.path().join("docker.tar.zst");
    write_oci_archive(std::slice::from_ref(&got), &cache, &zst, &Progress::quiet()).unwrap();
    let tar = out.path().join("docker.tar");
    run(Command::new("zstd")
        .args(["-d", "-q", "-f", "-o"])
        .arg(&tar)
        .arg(&zst))
    .unwrap();
    // skopeo 1.9 only looks up OCI media types in an OCI layout, so check the archive
    // directly: index.json names the Docker manifest with its own media type (as the OCI
    // spec requires; converting would change the digest), and the blob is intact.
    let idx: serde_json::Value = serde_json::from_str(
        &run(Command::new("tar").arg("-xOf").arg(&tar).arg("index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        idx["manifests"][0]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(idx["manifests"][0]["digest"], got.manifest_digest.as_str());
    let blob = format!("blobs/sha256/{}", &got.manifest_digest[7..]);
    let raw = run(Command::new("tar").arg("-xOf").arg(&tar).arg(&blob)).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(raw.as_bytes())),
        got.manifest_digest
    );
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let archive_layers: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(archive_layers, want);
    // containerd (what k3s runs) takes Docker media types in an OCI layout.
    if let Some(c) = Containerd::start() {
        c.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--no-unpack",
            "--platform",
            "linux/arm/v7",
            tar.to_str().unwrap(),
        ])
        .unwrap();
        let list = c.ctr(&["-n", "k8s.io", "images", "ls"]).unwrap();
        let line = list
            .lines()
            .find(|l| l.starts_with(&got.reference))
            .unwrap_or_else(|| panic!("{} not imported:\n{list}", got.reference));
        assert!(line.contains(&got.manifest_digest), "{line}");
        assert!(line.contains("linux/arm/v7"), "{line}");
    }
}

#[test]
fn many_layers_arrive_complete_and_in_order() {
    let fake = FakeRegistry::start();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..7u64 {
        let (l, diff) = support::registry::make_layer(&[(
            "f.bin",
            support::pseudo_random(20_000 + i as usize * 1000, i),
        )]);
        let digest = format!("sha256:{}", sha256_hex(&l));
        fake.add_blob(&digest, &l);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": l.len(),
        }));
        diff_ids.push(diff);
    }
    // One layer fails once: the others continue and the retry completes the set.
    fake.fail_next(layers[4]["digest"].as_str().unwrap(), 502, 1);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    fake.add_blob(&config_digest, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    fake.add_manifest(
        "test/layers",
        "1",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let img = ImageRef::parse(&format!("{}/test/layers:1", fake.host())).unwrap();
    let got = puller(&cache, &[fake.host()], false)
        .pull(&img, &platform("linux/arm64/v8"))
        .unwrap();
    let want: Vec<&str> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let have: Vec<&str> = got.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(have, want);
    for d in &want {
        assert!(cache.get(&d[7..]).is_some(), "{d} not cached");
    }
    assert_eq!(got.bytes_pulled, got.content_size());
    assert_eq!(got.platform.architecture, "arm64");
    assert_eq!(tmp_count(&cache), 0);
}

#[test]
fn parallel_pulls_share_one_cache() {
    let fake = FakeRegistry::start();
    let mut img = TestImage::new("linux/arm64", 8);
    img.payload = 2 << 20;
    let good = make_image(&img);
    fake.add_image("test/shared", "1", &good);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let r = ImageRef::parse(&format!("{}/test/shared:1", fake.host())).unwrap();
    let results: Vec<ResolvedImage> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (cache, r, host) = (cache.clone(), r.clone(), fake.host());
                s.spawn(move || {
                    puller(&cache, &[host], false)
                        .pull(&r, &platform("linux/arm64"))
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for res in &results {
        assert_eq!(res.manifest_digest, good.manifest_digest);
        assert_eq!(res.bytes_pulled + res.bytes_cached, res.content_size());
    }
    assert_eq!(blob_count(&cache), 3);
    assert_eq!(tmp_count(&cache), 0);
    let layer = fs::read(cache.get(&good.layer_digest[7..]).unwrap()).unwrap();
    assert_eq!(layer, good.layer);
}
