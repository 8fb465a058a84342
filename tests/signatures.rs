//! Signed checksum lists and images: keys made here with `gpg`, served by the local HTTP
//! server, trusted through a catalog directory's `keys/`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pikube_image::boards::Catalog;
use pikube_image::progress::Progress;
use pikube_image::source::base::{BaseSource, Origin};
use pikube_image::source::{Artifact, Cache, Fetcher, RetryPolicy, SourceError};
use support::http::TestServer;
use support::signing::Gpg;
use support::{pseudo_random, sha256_hex};

fn fetcher(cache: &Path, mirror: Option<String>, offline: bool) -> Fetcher {
    Fetcher::new(
        Cache::open(cache).unwrap(),
        mirror,
        offline,
        Progress::quiet(),
    )
    .with_retry(RetryPolicy {
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    })
}

/// A catalog directory with one board, one image whose checksum block is `checksum`, and
/// `key` trusted as `keys/<name>.asc`.
fn catalog(dir: &Path, image_url: &str, checksum: &str, key: (&str, &[u8])) -> Catalog {
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::create_dir_all(dir.join("keys")).unwrap();
    fs::write(dir.join("keys").join(format!("{}.asc", key.0)), key.1).unwrap();
    fs::write(
        dir.join("sbc.yaml"),
        "name: sbc\ndescription: t\nsoc: X1\narch: arm64\ndefault_image: os\nimages: [os]\n",
    )
    .unwrap();
    fs::write(
        dir.join("images/os.yaml"),
        format!(
            "name: os\ndescription: d\nos: o\nversion: '1'\narch: arm64\nurl: {image_url}\n\
             checksum:\n{checksum}\
             boot: {{ kind: raspi-firmware, partition: p, config_txt: config.txt }}\n\
             root: {{ partition: r }}\nfirstboot: {{ kind: cloud-init, seed_partition: p }}\n"
        ),
    )
    .unwrap();
    let mut cat = Catalog::default();
    cat.add_dir(dir).unwrap();
    cat.check().unwrap();
    cat
}

/// The artifact a build downloads for the catalog's image.
fn artifact(cat: &Catalog) -> Artifact {
    let board = cat.board("sbc").unwrap();
    let image = cat.image_for(board, None).unwrap();
    let base = BaseSource::Catalog
        .resolve(&image.url, &image.checksum, cat.keys())
        .unwrap();
    match base.origin {
        Origin::Download(a) => a,
        o => panic!("{o:?}"),
    }
}

/// An Ubuntu-like release: an image, `SHA256SUMS` listing it, and the list's signature.
struct Release {
    srv: TestServer,
    image: Vec<u8>,
    sums: String,
}

const NAME: &str = "os-1-preinstalled-server-arm64+raspi.img.xz";

impl Release {
    fn new(seed: u64) -> Release {
        let srv = TestServer::start();
        let image = pseudo_random(256 << 10, seed);
        let sums = format!(
            "{} *os-1-preinstalled-desktop-arm64+raspi.img.xz\n{} *{NAME}\n",
            sha256_hex(b"desktop"),
            sha256_hex(&image)
        );
        srv.add(&format!("/rel/{NAME}"), image.clone());
        srv.add("/rel/SHA256SUMS", sums.clone());
        Release { srv, image, sums }
    }

    fn checksum_yaml(&self) -> String {
        format!(
            "  sums_url: {}\n  signature:\n    url: {}\n    key: test-cdimage\n",
            self.srv.url_for("/rel/SHA256SUMS"),
            self.srv.url_for("/rel/SHA256SUMS.gpg")
        )
    }
}

fn grouped(fpr: &str) -> String {
    fpr.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

fn bad_signature(err: &anyhow::Error) -> (String, PathBuf, PathBuf) {
    match err.downcast_ref::<SourceError>() {
        Some(SourceError::BadSignature {
            reason,
            path,
            signed_path,
            ..
        }) => (reason.clone(), path.clone(), signed_path.clone()),
        _ => panic!("expected a bad signature: {err:#}"),
    }
}

#[test]
fn a_good_signature_passes_and_a_forged_cached_list_changes_nothing() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.generate("cdimage@example.org", "rsa2048");
    let rel = Release::new(1);
    // Ubuntu publishes a binary signature.
    let sig_bytes = gpg.sign(&fpr, rel.sums.as_bytes(), false);
    rel.srv.add("/rel/SHA256SUMS.gpg", sig_bytes.clone());
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &rel.srv.url_for(&format!("/rel/{NAME}")),
        &rel.checksum_yaml(),
        ("test-cdimage", &gpg.export(&fpr)),
    );
    let a = artifact(&cat);
    let cache = td.path().join("cache");
    let got = fetcher(&cache, None, false).fetch(&a).unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), rel.image);
    assert_eq!(rel.srv.hits("/rel/SHA256SUMS.gpg"), 1);

    // Offline: the list and its signature come from the cache, and are checked again.
    rel.srv.clear_log();
    let off = fetcher(&cache, None, true);
    assert!(off.fetch(&a).unwrap().from_cache);
    assert_eq!(rel.srv.total_hits(), 0);

    // A cache whose index now points the list's URL at another list, one that vouches for
    // another image: the release is pinned and its image was verified when it was stored,
    // so the build keeps using that image and never reads the forged list.
    let forged = format!("{} *{NAME}\n", sha256_hex(b"forged"));
    let (digest, _) = off
        .cache()
        .put(&mut forged.as_bytes(), None)
        .expect("store the forged list");
    let list_url = rel.srv.url_for("/rel/SHA256SUMS");
    fs::write(
        off.cache().urls_dir().join(sha256_hex(list_url.as_bytes())),
        format!("{digest}\n{list_url}\n"),
    )
    .unwrap();
    let again = fetcher(&cache, None, true).fetch(&a).unwrap();
    assert_eq!(again.sha256, sha256_hex(&rel.image));
    assert_eq!(fs::read(&again.path).unwrap(), rel.image);
    // A cache that does not hold the image yet reads the forged list, whose signature fails.
    let fresh = td.path().join("cache-without-image");
    let f2 = fetcher(&fresh, None, true);
    let (digest, _) = f2
        .cache()
        .put(&mut forged.as_bytes(), None)
        .expect("store the forged list");
    let (sig_digest, _) = f2.cache().put(&mut &sig_bytes[..], None).unwrap();
    let sig_url = rel.srv.url_for("/rel/SHA256SUMS.gpg");
    for (url, d) in [(&list_url, &digest), (&sig_url, &sig_digest)] {
        fs::write(
            f2.cache().urls_dir().join(sha256_hex(url.as_bytes())),
            format!("{d}\n{url}\n"),
        )
        .unwrap();
    }
    let err = f2.fetch(&a).unwrap_err();
    let (reason, _, signed_path) = bad_signature(&err);
    assert!(reason.contains("altered"), "{reason}");
    assert_eq!(signed_path, f2.cache().blob_path(&digest));
    assert_eq!(rel.srv.total_hits(), 0);
}

#[test]
fn a_signature_file_by_two_keys_passes_on_ours() {
    let Some(gpg) = Gpg::new() else { return };
    let retired = gpg.generate("retired@example.org", "rsa2048");
    let trusted = gpg.generate("cdimage@example.org", "ed25519");
    let rel = Release::new(9);
    // Older Ubuntu releases: one file, a signature by a retired key and one by the current.
    let both = gpg.sign_by(&[&retired, &trusted], rel.sums.as_bytes(), true);
    let packets = String::from_utf8(gpg.run(&["--list-packets"], Some(&both))).unwrap();
    assert_eq!(
        packets.matches(":signature packet:").count(),
        2,
        "{packets}"
    );
    rel.srv.add("/rel/SHA256SUMS.gpg", both);
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &rel.srv.url_for(&format!("/rel/{NAME}")),
        &rel.checksum_yaml(),
        ("test-cdimage", &gpg.export(&trusted)),
    );
    let f = fetcher(&td.path().join("cache"), None, false);
    assert_eq!(
        f.fetch(&artifact(&cat)).unwrap().sha256,
        sha256_hex(&rel.image)
    );
    // A list changed after signing: our signature in the file no longer matches (a new
    // cache, since the pinned release's verified image is otherwise used as it is).
    rel.srv.add("/rel/SHA256SUMS", format!("{}\n", rel.sums));
    let f = fetcher(&td.path().join("cache2"), None, false);
    let err = f.fetch(&artifact(&cat)).unwrap_err();
    assert!(bad_signature(&err).0.contains("altered"), "{err:#}");
}

#[test]
fn a_tampered_list_fails_before_any_line_is_used() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.generate("cdimage@example.org", "ed25519");
    let rel = Release::new(2);
    rel.srv.add(
        "/rel/SHA256SUMS.gpg",
        gpg.sign(&fpr, rel.sums.as_bytes(), false),
    );
    // The list now vouches for another image (one line changed after signing).
    let other = pseudo_random(256 << 10, 99);
    rel.srv.add(
        "/rel/SHA256SUMS",
        rel.sums
            .replace(&sha256_hex(&rel.image), &sha256_hex(&other)),
    );
    rel.srv.add(&format!("/rel/{NAME}"), other);
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &rel.srv.url_for(&format!("/rel/{NAME}")),
        &rel.checksum_yaml(),
        ("test-cdimage", &gpg.export(&fpr)),
    );
    let f = fetcher(&td.path().join("cache"), None, false);
    let err = f.fetch(&artifact(&cat)).unwrap_err();
    let msg = format!("{err:#}");
    let (reason, sig_path, list_path) = bad_signature(&err);
    assert!(reason.contains("altered"), "{reason}");
    for part in [
        "'test-cdimage'",
        &grouped(&fpr),
        &rel.srv.url_for("/rel/SHA256SUMS.gpg"),
        &rel.srv.url_for("/rel/SHA256SUMS"),
        &sig_path.display().to_string(),
        &list_path.display().to_string(),
        "Retry without --mirror",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(sig_path.starts_with(f.cache().root()) && list_path.starts_with(f.cache().root()));
    // Nothing from the list was used: the image was never requested, and the list's URL
    // no longer finds it.
    assert_eq!(rel.srv.hits(&format!("/rel/{NAME}")), 0);
    assert_eq!(
        f.cache().lookup_url(&rel.srv.url_for("/rel/SHA256SUMS")),
        None
    );
}

#[test]
fn a_signature_by_another_key_fails_naming_the_expected_key() {
    let Some(gpg) = Gpg::new() else { return };
    let trusted = gpg.generate("cdimage@example.org", "ed25519");
    let other = gpg.generate("someone@example.org", "ed25519");
    let rel = Release::new(3);
    rel.srv.add(
        "/rel/SHA256SUMS.gpg",
        gpg.sign(&other, rel.sums.as_bytes(), false),
    );
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &rel.srv.url_for(&format!("/rel/{NAME}")),
        &rel.checksum_yaml(),
        ("test-cdimage", &gpg.export(&trusted)),
    );
    let err = fetcher(&td.path().join("cache"), None, false)
        .fetch(&artifact(&cat))
        .unwrap_err();
    let msg = format!("{err:#}");
    let (reason, _, _) = bad_signature(&err);
    assert!(
        reason.contains(&format!("made by another key ({})", grouped(&other))),
        "{reason}"
    );
    assert!(
        msg.contains(&format!(
            "signed by key 'test-cdimage' ({})",
            grouped(&trusted)
        )),
        "{msg}"
    );
    assert_eq!(rel.srv.hits(&format!("/rel/{NAME}")), 0);
}

#[test]
fn a_missing_signature_fails_when_the_catalog_expects_one() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.generate("cdimage@example.org", "ed25519");
    let rel = Release::new(4);
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &rel.srv.url_for(&format!("/rel/{NAME}")),
        &rel.checksum_yaml(),
        ("test-cdimage", &gpg.export(&fpr)),
    );
    let err = fetcher(&td.path().join("cache"), None, false)
        .fetch(&artifact(&cat))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(
            err.downcast_ref::<SourceError>(),
            Some(SourceError::SignatureMissing { status: 404, .. })
        ),
        "{msg}"
    );
    for part in [
        &rel.srv.url_for("/rel/SHA256SUMS.gpg"),
        &grouped(&fpr),
        "checksum.signature.url",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_eq!(rel.srv.hits(&format!("/rel/{NAME}")), 0);
}

#[test]
fn a_mirror_serves_the_signature_but_cannot_change_the_list() {
    let Some(gpg) = Gpg::new() else { return };
    let trusted = gpg.generate("cdimage@example.org", "ed25519");
    let mirror_key = gpg.generate("mirror@example.org", "ed25519");
    let genuine = pseudo_random(128 << 10, 5);
    let forged = pseudo_random(128 << 10, 6);
    let up = "https://cdimage.example.org/releases/1";
    let on_mirror = "/cdimage.example.org/releases/1";
    let srv = TestServer::start();
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &format!("{up}/{NAME}"),
        &format!(
            "  sums_url: {up}/SHA256SUMS\n  signature: {{ url: {up}/SHA256SUMS.gpg, key: test }}\n"
        ),
        ("test", &gpg.export(&trusted)),
    );
    let a = artifact(&cat);
    let f = fetcher(&td.path().join("cache"), Some(srv.url()), false);

    // The mirror serves another image, a list for it, and a signature by its own key.
    let list = format!("{}  {NAME}\n", sha256_hex(&forged));
    srv.add(&format!("{on_mirror}/{NAME}"), forged);
    srv.add(&format!("{on_mirror}/SHA256SUMS"), list.clone());
    srv.add(
        &format!("{on_mirror}/SHA256SUMS.gpg"),
        gpg.sign(&mirror_key, list.as_bytes(), true),
    );
    let err = f.fetch(&a).unwrap_err();
    let (reason, _, _) = bad_signature(&err);
    assert!(reason.contains(&grouped(&mirror_key)), "{reason}");
    assert_eq!(srv.hits(&format!("{on_mirror}/SHA256SUMS.gpg")), 1);
    assert_eq!(srv.hits(&format!("{on_mirror}/{NAME}")), 0);

    // The genuine release, signature included, from the same mirror passes.
    let list = format!("{}  {NAME}\n", sha256_hex(&genuine));
    srv.add(&format!("{on_mirror}/{NAME}"), genuine.clone());
    srv.add(&format!("{on_mirror}/SHA256SUMS"), list.clone());
    srv.add(
        &format!("{on_mirror}/SHA256SUMS.gpg"),
        gpg.sign(&trusted, list.as_bytes(), true),
    );
    assert_eq!(f.fetch(&a).unwrap().sha256, sha256_hex(&genuine));
}

#[test]
fn an_image_signature_is_checked_over_the_image() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.generate("images@example.org", "ed25519");
    let srv = TestServer::start();
    let image = pseudo_random(256 << 10, 7);
    let name = "Os_1_Sbc_trixie_current_6.18_minimal.img.xz";
    // Armbian: `<image>.sha` (one space) and an armored `<image>.asc` over the image.
    srv.add(&format!("/a/{name}"), image.clone());
    srv.add(
        &format!("/a/{name}.sha"),
        format!("{} {name}\n", sha256_hex(&image)),
    );
    srv.add(&format!("/a/{name}.asc"), gpg.sign(&fpr, &image, true));
    let td = tempfile::tempdir().unwrap();
    let cat = catalog(
        &td.path().join("boards"),
        &srv.url_for(&format!("/a/{name}")),
        &format!(
            "  sums_url: {}\n  signature: {{ url: {}, key: test-images, signs: image }}\n",
            srv.url_for(&format!("/a/{name}.sha")),
            srv.url_for(&format!("/a/{name}.asc"))
        ),
        ("test-images", &gpg.export(&fpr)),
    );
    let a = artifact(&cat);
    let cache = td.path().join("cache");
    assert_eq!(
        fetcher(&cache, None, false).fetch(&a).unwrap().sha256,
        sha256_hex(&image)
    );
    srv.clear_log();
    assert!(fetcher(&cache, None, true).fetch(&a).unwrap().from_cache);
    assert_eq!(srv.total_hits(), 0);

    // Another image with a matching `.sha`: the digest agrees, the signature does not.
    let other = pseudo_random(256 << 10, 8);
    srv.add(&format!("/a/{name}"), other.clone());
    srv.add(
        &format!("/a/{name}.sha"),
        format!("{} {name}\n", sha256_hex(&other)),
    );
    // A new cache: the release is pinned, so the verified image above would be used as is.
    let cache = td.path().join("cache2");
    let err = fetcher(&cache, None, false).fetch(&a).unwrap_err();
    let (reason, _, image_path) = bad_signature(&err);
    assert!(reason.contains("altered"), "{reason}");
    assert!(image_path.starts_with(&cache) && !image_path.exists());
    assert!(format!("{err:#}").contains(&format!("the image {}", a.url)));
}

#[test]
fn a_catalog_naming_an_unknown_key_is_refused() {
    let td = tempfile::tempdir().unwrap();
    let dir = td.path();
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::write(
        dir.join("images/os.yaml"),
        "name: os\ndescription: d\nos: o\nversion: '1'\narch: arm64\nurl: https://h/x.img.xz\n\
         checksum:\n  sums_url: https://h/SHA256SUMS\n  signature: { url: https://h/SHA256SUMS.gpg, key: nobody }\n\
         boot: { kind: raspi-firmware, partition: p, config_txt: config.txt }\n\
         root: { partition: r }\nfirstboot: { kind: cloud-init, seed_partition: p }\n",
    )
    .unwrap();
    let mut cat = Catalog::default();
    cat.add_dir(dir).unwrap();
    let e = format!("{:#}", cat.check().unwrap_err());
    assert!(
        e.contains("OS image 'os'") && e.contains("'nobody' is not a known key"),
        "{e}"
    );
}
