//! The source stage against a real HTTP server on 127.0.0.1.

mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pikube_image::progress::{Mode, Progress};
use pikube_image::source::base::{BaseSource, ImageChecksum, Origin};
use pikube_image::source::{
    Artifact, Cache, Checksum, Fetcher, Keyring, RetryPolicy, SourceError, Timeouts,
    lookup_checksum, mirror_url,
};
use support::http::TestServer;
use support::{pseudo_random, sha256_hex};

const MIB: usize = 1 << 20;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

fn fetcher(cache_dir: &Path, mirror: Option<String>, offline: bool) -> Fetcher {
    Fetcher::new(
        Cache::open(cache_dir).unwrap(),
        mirror,
        offline,
        Progress::quiet(),
    )
    .with_retry(fast_retry())
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn sha_artifact(url: String, data: &[u8]) -> Artifact {
    Artifact {
        url,
        checksum: Checksum::Sha256(sha256_hex(data)),
    }
}

#[test]
fn downloads_and_verifies_then_hits_the_cache() {
    let srv = TestServer::start();
    let data = pseudo_random(3 * MIB + 123, 1);
    srv.add("/img/a.img.xz", data.clone());
    let td = tempfile::tempdir().unwrap();
    let a = sha_artifact(srv.url_for("/img/a.img.xz"), &data);

    let f = fetcher(td.path(), None, false);
    let got = f.fetch(&a).unwrap();
    assert!(!got.from_cache);
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(got.size, data.len() as u64);
    assert_eq!(got.url, a.url);
    assert_eq!(fs::read(&got.path).unwrap(), data);
    assert!(got.path.starts_with(td.path().join("blobs")));
    assert_eq!(srv.hits("/img/a.img.xz"), 1);
    let log = srv.requests();
    let ua = log[0].header("user-agent").unwrap();
    assert!(ua.starts_with("pikube-image/"), "{ua}");
    assert_eq!(count(&td.path().join("partial")), 0);

    // Same fetcher, and a fresh one on the same cache: no request at all.
    let again = f.fetch(&a).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.path, got.path);
    let other = fetcher(td.path(), None, false).fetch(&a).unwrap();
    assert!(other.from_cache);
    assert_eq!(srv.total_hits(), 1);
}

#[test]
fn resumes_after_dropped_connections_with_ranges() {
    let srv = TestServer::start();
    let data = pseudo_random(3 * MIB, 2);
    srv.add("/x/b.img", data.clone());
    srv.set_drop_after("/x/b.img", MIB, 2);
    let td = tempfile::tempdir().unwrap();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/x/b.img"), &data))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let log = srv.requests();
    let ranges: Vec<Option<String>> = log.iter().map(|r| r.range.clone()).collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some(format!("bytes={}-", MIB)),
            Some(format!("bytes={}-", 2 * MIB)),
        ]
    );
    assert_eq!(log[1].status, 206);
    assert_eq!(log[2].status, 206);
    assert_eq!(count(&td.path().join("partial")), 0);
}

#[test]
fn server_ignoring_ranges_restarts_cleanly() {
    let srv = TestServer::start();
    let data = pseudo_random(2 * MIB + 7, 3);
    srv.add("/x/c.img", data.clone());
    srv.set_ranges(false);
    srv.set_drop_after("/x/c.img", MIB / 2, 1);
    let td = tempfile::tempdir().unwrap();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/x/c.img"), &data))
        .unwrap();
    // No duplicated prefix: the 200 answer replaced the partial file.
    assert_eq!(got.size, data.len() as u64);
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let log = srv.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=524288-"));
    assert_eq!(log[1].status, 200);
}

/// A server holding `len` pseudo-random bytes at `path`; the bytes; an artifact for them.
fn serving(path: &str, len: usize, seed: u64) -> (TestServer, Vec<u8>, Artifact) {
    let srv = TestServer::start();
    let data = pseudo_random(len, seed);
    srv.add(path, data.clone());
    let a = sha_artifact(srv.url_for(path), &data);
    (srv, data, a)
}

/// The final error of a download that was given up: the URL, the attempts, how far it
/// got, and what to do.
fn assert_gave_up(msg: &str, url: &str, attempts: usize, reached: usize) {
    assert!(msg.contains(url), "{msg}");
    assert!(msg.contains(&format!("after {attempts} attempts")), "{msg}");
    assert!(msg.contains(&format!("{reached} bytes")), "{msg}");
    for fix in ["network", "--mirror"] {
        assert!(msg.contains(fix), "{fix}: {msg}");
    }
    // What to do by hand depends on the artifact (a base image, k3s, Argo CD): the build
    // says it, not the download.
    assert!(!msg.contains("--image"), "{msg}");
}

#[test]
fn server_ignoring_ranges_and_always_dropping_is_given_up() {
    let (srv, _, a) = serving("/x/flaky.img", MIB, 22);
    srv.set_ranges(false);
    // Every response restarts from zero and breaks at the same point: bytes arrive each
    // time, but the download never gets further. (After 40, the server recovers, so a
    // fetcher that retries without end still finishes.)
    srv.set_drop_after("/x/flaky.img", MIB / 2, 40);
    let td = tempfile::tempdir().unwrap();
    let err = fetcher(td.path(), None, false)
        .fetch(&a)
        .expect_err("a download that makes no progress must be given up");
    assert_gave_up(&format!("{err:#}"), &a.url, 5, MIB / 2);
    assert_eq!(srv.hits("/x/flaky.img"), 5);
}

#[test]
fn server_announcing_a_false_length_is_given_up() {
    let (srv, _, a) = serving("/x/liar.img", 300_000, 23);
    srv.set_false_length("/x/liar.img", 1 << 40, 40);
    let td = tempfile::tempdir().unwrap();
    let err = fetcher(td.path(), None, false)
        .fetch(&a)
        .expect_err("a transfer that never reaches its announced length must be given up");
    let msg = format!("{err:#}");
    assert_gave_up(&msg, &a.url, 5, 300_000);
    assert!(msg.contains(&(1u64 << 40).to_string()), "{msg}");
    assert_eq!(srv.hits("/x/liar.img"), 5);
}

#[test]
fn retries_stop_at_the_total_limits_even_while_progressing() {
    let (srv, _, a) = serving("/x/drip.img", MIB, 24);
    // Every response moves the download 100 000 bytes forward, then breaks.
    srv.set_drop_after("/x/drip.img", 100_000, 1000);

    let attempts_4 = RetryPolicy {
        max_total_attempts: 4,
        ..fast_retry()
    };
    // A time limit already spent allows no retry at all.
    let no_time = RetryPolicy {
        max_total_time: Duration::ZERO,
        ..fast_retry()
    };
    for (policy, attempts, why) in [
        (attempts_4, 4, "limit is 4 attempts"),
        (no_time, 1, "retrying stops"),
    ] {
        srv.clear_log();
        let td = tempfile::tempdir().unwrap();
        let err = fetcher(td.path(), None, false)
            .with_retry(policy)
            .fetch(&a)
            .unwrap_err();
        let msg = format!("{err:#}");
        assert_gave_up(&msg, &a.url, attempts, attempts * 100_000);
        assert!(msg.contains(why), "{msg}");
        assert_eq!(srv.hits("/x/drip.img"), attempts);
    }
}

/// Changes one byte of a read-only cache blob in place, as an editor or a disk fault would.
fn damage(blob: &Path) {
    let mut bytes = fs::read(blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let mut perm = fs::metadata(blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(blob, perm.clone()).unwrap();
    fs::write(blob, &bytes).unwrap();
    perm.set_readonly(true);
    fs::set_permissions(blob, perm).unwrap();
}

#[test]
fn damaged_cache_entry_is_downloaded_again() {
    let (srv, data, a) = serving("/k3s/k3s-arm64", MIB, 25);
    let td = tempfile::tempdir().unwrap();
    let first = fetcher(td.path(), None, false).fetch(&a).unwrap();
    damage(&first.path);

    // The next build must not use the edited copy under the original digest.
    let got = fetcher(td.path(), None, false).fetch(&a).unwrap();
    assert_eq!(sha256_hex(&fs::read(&got.path).unwrap()), sha256_hex(&data));
    assert_eq!(got.sha256, sha256_hex(&data));
    assert!(!got.from_cache);
    assert_eq!(srv.hits("/k3s/k3s-arm64"), 2);

    // Within one build too: an entry changed after this fetcher verified it is checked again.
    let f = fetcher(td.path(), None, false);
    let hit = f.fetch(&a).unwrap();
    assert!(hit.from_cache);
    damage(&hit.path);
    let mut perm = fs::metadata(&hit.path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&hit.path, perm).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&hit.path)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let again = f.fetch(&a).unwrap();
    assert_eq!(
        sha256_hex(&fs::read(&again.path).unwrap()),
        sha256_hex(&data)
    );
    assert_eq!(srv.hits("/k3s/k3s-arm64"), 3);
}

#[test]
fn damaged_cache_entry_offline_names_the_entry_and_the_fix() {
    let (srv, data, a) = serving("/k3s/k3s-armhf", MIB, 26);
    let url = a.url.clone();
    let td = tempfile::tempdir().unwrap();
    let blob = fetcher(td.path(), None, false).fetch(&a).unwrap().path;
    damage(&blob);

    let err = fetcher(td.path(), None, true).fetch(&a).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("damaged"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&blob.display().to_string()), "{msg}");
    assert!(msg.contains("network access"), "{msg}");
    assert!(
        !blob.exists(),
        "a damaged entry is removed, not kept to fail every build"
    );
    assert_eq!(srv.hits("/k3s/k3s-armhf"), 1, "offline must not download");

    // Once back online, the next build fetches it again.
    let got = fetcher(td.path(), None, false).fetch(&a).unwrap();
    assert_eq!(sha256_hex(&fs::read(&got.path).unwrap()), sha256_hex(&data));
}

#[test]
fn damaged_checksum_list_is_not_read_offline() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 27);
    srv.add("/rel/a.img.xz", data.clone());
    let sums = format!(
        "{}  a.img.xz\n{}  other.img.xz\n",
        sha256_hex(&data),
        sha256_hex(b"o")
    );
    srv.add("/rel/SHA256SUMS", sums.clone());
    let td = tempfile::tempdir().unwrap();
    let sums_url = srv.url_for("/rel/SHA256SUMS");
    fetcher(td.path(), None, false)
        .fetch_text(&sums_url)
        .unwrap();
    let blob = td
        .path()
        .join("blobs/sha256")
        .join(sha256_hex(sums.as_bytes()));
    damage(&blob);
    let err = fetcher(td.path(), None, true)
        .fetch_text(&sums_url)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("damaged") && msg.contains(&sums_url), "{msg}");
    assert!(!blob.exists());
}

#[test]
fn stale_partial_from_another_file_is_replaced() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 4);
    srv.add("/x/d.img", data.clone());
    let td = tempfile::tempdir().unwrap();
    let f = fetcher(td.path(), None, false);
    let url = srv.url_for("/x/d.img");
    // A previous run left the first bytes of a different file under this URL.
    fs::write(f.cache().partial_path(&url), pseudo_random(1000, 99)).unwrap();
    let got = f.fetch(&sha_artifact(url, &data)).unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let log = srv.requests();
    assert_eq!(log[0].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(log[1].range, None);
}

#[test]
fn wrong_checksum_is_a_clear_error_and_caches_nothing() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 5);
    srv.add("/x/e.img", data.clone());
    let td = tempfile::tempdir().unwrap();
    let wrong = sha256_hex(b"something else");
    let url = srv.url_for("/x/e.img");
    let err = fetcher(td.path(), None, false)
        .fetch(&Artifact {
            url: url.clone(),
            checksum: Checksum::Sha256(wrong.clone()),
        })
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&wrong), "{msg}");
    assert!(msg.contains(&sha256_hex(&data)), "{msg}");
    assert!(matches!(
        err.downcast_ref::<SourceError>(),
        Some(SourceError::ChecksumMismatch { .. })
    ));
    assert_eq!(count(&td.path().join("blobs/sha256")), 0);
    assert_eq!(count(&td.path().join("partial")), 0);
    assert_eq!(count(&td.path().join("urls")), 0);
    assert_eq!(count(&td.path().join("tmp")), 0);
}

#[test]
fn offline_uses_only_the_cache() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 6);
    srv.add("/x/f.img", data.clone());
    let td = tempfile::tempdir().unwrap();
    let a = sha_artifact(srv.url_for("/x/f.img"), &data);
    fetcher(td.path(), None, false).fetch(&a).unwrap();
    srv.clear_log();

    let off = fetcher(td.path(), None, true);
    let hit = off.fetch(&a).unwrap();
    assert!(hit.from_cache);
    assert_eq!(fs::read(&hit.path).unwrap(), data);

    let other = pseudo_random(1000, 7);
    srv.add("/x/g.img", other.clone());
    let miss_url = srv.url_for("/x/g.img");
    let err = off
        .fetch(&sha_artifact(miss_url.clone(), &other))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&miss_url), "{msg}");
    assert!(msg.contains("--offline"), "{msg}");
    assert!(msg.contains("--mirror"), "{msg}");
    assert!(matches!(
        err.downcast_ref::<SourceError>(),
        Some(SourceError::OfflineMiss { .. })
    ));
    let err = off.fetch_text(&srv.url_for("/x/SUMS")).unwrap_err();
    assert!(format!("{err:#}").contains("/x/SUMS"));
    assert_eq!(srv.total_hits(), 0, "offline must not touch the network");
}

#[test]
fn sums_file_checksums_work_online_and_offline() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB + 1, 8);
    let name = "ubuntu-24.04.3-preinstalled-server-arm64+raspi.img.xz";
    srv.add(&format!("/rel/{name}"), data.clone());
    srv.add(
        "/rel/SHA256SUMS",
        format!(
            "{} *ubuntu-24.04.3-preinstalled-desktop-arm64+raspi.img.xz\n{} *{name}\n",
            sha256_hex(b"desktop"),
            sha256_hex(&data)
        ),
    );
    let td = tempfile::tempdir().unwrap();
    let a = Artifact {
        url: srv.url_for(&format!("/rel/{name}")),
        checksum: Checksum::SumsFile {
            url: srv.url_for("/rel/SHA256SUMS"),
            name: name.to_string(),
            pinned: false,
            signature: None,
        },
    };
    let got = fetcher(td.path(), None, false).fetch(&a).unwrap();
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(srv.hits(&format!("/rel/{name}")), 1);

    // Online again: the list is re-read, the image comes from the cache.
    let again = fetcher(td.path(), None, false).fetch(&a).unwrap();
    assert!(again.from_cache);
    assert_eq!(srv.hits(&format!("/rel/{name}")), 1);
    assert_eq!(srv.hits("/rel/SHA256SUMS"), 2);

    srv.clear_log();
    let off = fetcher(td.path(), None, true);
    assert!(off.fetch(&a).unwrap().from_cache);
    assert!(
        off.fetch_text(&srv.url_for("/rel/SHA256SUMS"))
            .unwrap()
            .contains(name)
    );
    assert_eq!(srv.total_hits(), 0);

    // Offline with the list missing from the cache: the URL index still knows the image.
    let sums_digest = pikube_image::io::sha256_bytes(
        off.fetch_text(&srv.url_for("/rel/SHA256SUMS"))
            .unwrap()
            .as_bytes(),
    );
    let blob = off.cache().blob_path(&sums_digest);
    let mut perm = fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&blob, perm).unwrap();
    fs::remove_file(&blob).unwrap();
    assert!(off.fetch(&a).unwrap().from_cache);
    assert_eq!(srv.total_hits(), 0);
}

#[test]
fn every_checksum_file_format_is_understood() {
    let srv = TestServer::start();
    let data = pseudo_random(64 << 10, 9);
    let h = sha256_hex(&data);
    let noise = sha256_hex(b"noise");
    let cases = [
        (
            "ubuntu",
            "SHA256SUMS",
            format!("{noise} *other.img.xz\n{h} *a.img.xz\n"),
        ),
        ("raspios", "a.img.xz.sha256", format!("{h}  a.img.xz\n")),
        ("armbian", "a.img.xz.sha", format!("{h} a.img.xz\r\n")),
        (
            "k3s",
            "sha256sum-arm64.txt",
            format!("{noise}  k3s-airgap-images-arm64.tar.zst\n{h}  a.img.xz\n"),
        ),
    ];
    for (dist, sums, content) in cases {
        srv.add(&format!("/{dist}/a.img.xz"), data.clone());
        srv.add(&format!("/{dist}/{sums}"), content.clone());
        let td = tempfile::tempdir().unwrap();
        let got = fetcher(td.path(), None, false)
            .fetch(&Artifact {
                url: srv.url_for(&format!("/{dist}/a.img.xz")),
                checksum: Checksum::SumsFile {
                    url: srv.url_for(&format!("/{dist}/{sums}")),
                    name: "a.img.xz".into(),
                    pinned: false,
                    signature: None,
                },
            })
            .unwrap_or_else(|e| panic!("{dist}: {e:#}"));
        assert_eq!(got.sha256, h, "{dist}");
        assert_eq!(lookup_checksum(&content, "a.img.xz"), Some(h.clone()));
    }
}

#[test]
fn name_missing_from_checksum_file_names_the_file() {
    let srv = TestServer::start();
    srv.add("/r/SHA256SUMS", format!("{} *x.img\n", sha256_hex(b"x")));
    srv.add("/r/y.img", b"y".to_vec());
    let td = tempfile::tempdir().unwrap();
    let sums = srv.url_for("/r/SHA256SUMS");
    let err = fetcher(td.path(), None, false)
        .fetch(&Artifact {
            url: srv.url_for("/r/y.img"),
            checksum: Checksum::SumsFile {
                url: sums.clone(),
                name: "y.img".into(),
                pinned: false,
                signature: None,
            },
        })
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&sums) && msg.contains("y.img"), "{msg}");
    assert_eq!(srv.hits("/r/y.img"), 0);
}

#[test]
fn mirror_serves_every_url_including_checksum_files() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 10);
    let path = "/github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1";
    srv.add(&format!("{path}/k3s-arm64"), data.clone());
    srv.add(
        &format!("{path}/sha256sum-arm64.txt"),
        format!("{}  k3s-arm64\n", sha256_hex(&data)),
    );
    let upstream = "https://github.com/k3s-io/k3s/releases/download/v1.33.4%2Bk3s1";
    let a = Artifact {
        url: format!("{upstream}/k3s-arm64"),
        checksum: Checksum::SumsFile {
            url: format!("{upstream}/sha256sum-arm64.txt"),
            name: "k3s-arm64".into(),
            pinned: false,
            signature: None,
        },
    };
    let td = tempfile::tempdir().unwrap();
    let got = fetcher(td.path(), Some(format!("{}/", srv.url())), false)
        .fetch(&a)
        .unwrap();
    assert_eq!(got.url, a.url, "the upstream URL is reported");
    assert_eq!(fs::read(&got.path).unwrap(), data);
    assert_eq!(srv.hits(&format!("{path}/k3s-arm64")), 1);
    assert_eq!(srv.hits(&format!("{path}/sha256sum-arm64.txt")), 1);
    assert_eq!(
        mirror_url(&a.url, &srv.url()).unwrap(),
        srv.url_for(&format!("{path}/k3s-arm64"))
    );

    // The cache is keyed by upstream URL, so offline works without the mirror.
    srv.clear_log();
    assert!(fetcher(td.path(), None, true).fetch(&a).unwrap().from_cache);
    assert_eq!(srv.total_hits(), 0);

    // A mirror lacking the file: the error names the mirror URL and the upstream one.
    let err = fetcher(td.path(), Some(srv.url()), false)
        .fetch_text("https://example.org/missing/SHA256SUMS")
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&srv.url_for("/example.org/missing/SHA256SUMS")),
        "{msg}"
    );
    assert!(
        msg.contains("mirror of https://example.org/missing/SHA256SUMS"),
        "{msg}"
    );
}

#[test]
fn catalog_pin_wins_over_a_mirrors_checksum_list() {
    let srv = TestServer::start();
    let genuine = pseudo_random(MIB, 28);
    let forged = pseudo_random(MIB, 29);
    let up = "https://cdimage.example.org/releases/24.04";
    let on_mirror = "/cdimage.example.org/releases/24.04";
    // The mirror serves another image, and a checksum list that vouches for it.
    srv.add(&format!("{on_mirror}/x.img.xz"), forged.clone());
    srv.add(
        &format!("{on_mirror}/SHA256SUMS"),
        format!("{}  x.img.xz\n", sha256_hex(&forged)),
    );
    // A catalog entry that names the list it came from and pins the digest.
    let pin = sha256_hex(&genuine);
    let checksum: ImageChecksum =
        serde_saphyr::from_str(&format!("sums_url: {up}/SHA256SUMS\nsha256: {pin}\n"))
            .expect("a catalog entry may pin a digest beside its checksum list");
    let entry_url = format!("{up}/x.img.xz");
    let td = tempfile::tempdir().unwrap();
    let f = fetcher(td.path(), Some(srv.url()), false);
    for base in [
        BaseSource::Catalog,
        // --image-url naming the catalog's own URL, without --image-sha256.
        BaseSource::Url {
            url: entry_url.clone(),
            sha256: None,
        },
    ] {
        let image = base
            .resolve(&entry_url, &checksum, &Keyring::default())
            .unwrap();
        assert_eq!(image.content_id, pin);
        let Origin::Download(a) = &image.origin else {
            panic!("{image:?}")
        };
        let err = f.fetch(a).unwrap_err();
        match err.downcast_ref::<SourceError>() {
            Some(SourceError::ChecksumMismatch { expected, .. }) => assert_eq!(expected, &pin),
            _ => panic!("the mirror's image must be refused: {err:#}"),
        }
    }
    assert_eq!(srv.hits(&format!("{on_mirror}/SHA256SUMS")), 0);

    // The genuine image from the same mirror passes.
    srv.add(&format!("{on_mirror}/x.img.xz"), genuine.clone());
    let image = BaseSource::Catalog
        .resolve(&entry_url, &checksum, &Keyring::default())
        .unwrap();
    let Origin::Download(a) = &image.origin else {
        panic!("{image:?}")
    };
    assert_eq!(f.fetch(a).unwrap().sha256, pin);
}

#[test]
fn not_found_is_explained() {
    let srv = TestServer::start();
    let td = tempfile::tempdir().unwrap();
    let url = srv.url_for("/nope/image.img.xz");
    let err = fetcher(td.path(), None, false)
        .fetch(&Artifact {
            url: url.clone(),
            checksum: Checksum::Sha256(sha256_hex(b"")),
        })
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("not found"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("check the URL"), "{msg}");
    assert!(
        !msg.contains("--image"),
        "base-image advice is the build's: {msg}"
    );
    assert_eq!(srv.hits("/nope/image.img.xz"), 1, "a 404 is not retried");
}

#[test]
fn server_errors_are_retried_and_redirects_followed() {
    let srv = TestServer::start();
    let data = pseudo_random(200_000, 11);
    srv.add("/archive/real.img.xz", data.clone());
    srv.add_redirect("/latest", "/archive/real.img.xz");
    srv.set_fail("/archive/real.img.xz", 503, 2);
    let td = tempfile::tempdir().unwrap();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/latest"), &data))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    assert_eq!(srv.hits("/archive/real.img.xz"), 3);

    // Persistent failures give up with the cause.
    srv.set_fail("/archive/other", 500, 100);
    let err = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/archive/other"), b"z"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("500") && msg.contains("giving up"), "{msg}");
    assert!(
        !msg.contains("kept in"),
        "no byte arrived, none is kept: {msg}"
    );
    assert_eq!(srv.hits("/archive/other"), 5);
}

#[test]
fn redirect_loops_stop_at_once_and_are_named() {
    let srv = TestServer::start();
    srv.add_redirect("/loop/latest", "/loop/current");
    srv.add_redirect("/loop/current", "/loop/latest");
    let td = tempfile::tempdir().unwrap();
    let url = srv.url_for("/loop/latest");
    let err = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(url.clone(), b"x"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("redirect loop"), "{msg}");
    assert!(
        msg.contains(&format!(
            "{url} -> {} -> {url}",
            srv.url_for("/loop/current")
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("giving up"),
        "a loop is not a network failure: {msg}"
    );
    assert_eq!(srv.hits("/loop/latest"), 1, "not retried");
    assert_eq!(srv.hits("/loop/current"), 1, "not retried");

    // A chain without a loop that goes on too long stops as well.
    for i in 0..12 {
        srv.add_redirect(&format!("/chain/{i}"), &format!("/chain/{}", i + 1));
    }
    let err = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/chain/0"), b"x"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("more than 10 redirects"), "{msg}");
    assert!(msg.contains(&srv.url_for("/chain/11")), "{msg}");
    assert_eq!(srv.hits("/chain/0"), 1, "not retried");
}

#[test]
fn fetch_text_returns_content_and_caches_it() {
    let srv = TestServer::start();
    srv.add("/t/SHA256SUMS", "abc\n");
    let td = tempfile::tempdir().unwrap();
    let f = fetcher(td.path(), None, false);
    assert_eq!(
        f.fetch_text(&srv.url_for("/t/SHA256SUMS")).unwrap(),
        "abc\n"
    );
    srv.add("/t/SHA256SUMS", "def\n");
    // Online always re-reads a checksum list; offline returns the last one seen.
    assert_eq!(
        f.fetch_text(&srv.url_for("/t/SHA256SUMS")).unwrap(),
        "def\n"
    );
    let off = fetcher(td.path(), None, true);
    assert_eq!(
        off.fetch_text(&srv.url_for("/t/SHA256SUMS")).unwrap(),
        "def\n"
    );
}

#[test]
fn two_threads_share_one_download() {
    let srv = TestServer::start();
    let data = pseudo_random(2 * MIB, 12);
    srv.add("/x/shared.img", data.clone());
    srv.set_throttle(Some(Duration::from_millis(10)));
    let td = tempfile::tempdir().unwrap();
    let a = sha_artifact(srv.url_for("/x/shared.img"), &data);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| fetcher(td.path(), None, false).fetch(&a)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(results[0].path, results[1].path);
    assert_eq!(fs::read(&results[0].path).unwrap(), data);
    assert_eq!(
        srv.hits("/x/shared.img"),
        1,
        "the second fetch waits and reuses"
    );
    assert_eq!(count(&td.path().join("blobs/sha256")), 1);
    assert_eq!(count(&td.path().join("partial")), 0);
}

const CHILD_ENV: &str = "PIKUBE_SOURCE_TEST_CHILD";

/// Runs only as a child of `two_processes_share_one_download`.
#[test]
fn child_process_fetch() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, '\n');
    let (dir, url, sha) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let f = Fetcher::new(
        Cache::open(Path::new(dir)).unwrap(),
        None,
        false,
        Progress::new(Mode::Plain),
    )
    .with_retry(fast_retry());
    let got = f
        .fetch(&Artifact {
            url: url.into(),
            checksum: Checksum::Sha256(sha.into()),
        })
        .unwrap();
    assert_eq!(got.sha256, sha);
    eprintln!("CHILD-OK from_cache={}", got.from_cache);
}

#[test]
fn two_processes_share_one_download() {
    let srv = TestServer::start();
    let data = pseudo_random(2 * MIB, 13);
    srv.add("/x/proc.img", data.clone());
    srv.set_stall_after("/x/proc.img", 0, Duration::from_millis(1500), 1);
    let td = tempfile::tempdir().unwrap();
    let spec = format!(
        "{}\n{}\n{}",
        td.path().display(),
        srv.url_for("/x/proc.img"),
        sha256_hex(&data)
    );
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "--exact",
                "child_process_fetch",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &spec)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The first child's download is held up by the server; the second starts while the
    // first holds the lock.
    let first = spawn();
    let t0 = std::time::Instant::now();
    while srv.hits("/x/proc.img") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "first child never connected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let children = vec![first, spawn()];
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut waited = 0;
    for o in &outs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "child failed: {err}");
        assert!(
            err.contains("CHILD-OK"),
            "child did not run the fetch: {err}"
        );
        if err.contains("waiting for another pikube-image process") {
            waited += 1;
        }
    }
    assert_eq!(
        waited, 1,
        "one process must have waited for the other's lock"
    );
    assert_eq!(srv.hits("/x/proc.img"), 1);
    let blob = td.path().join("blobs/sha256").join(sha256_hex(&data));
    assert_eq!(fs::read(blob).unwrap(), data);
    assert_eq!(count(&td.path().join("blobs/sha256")), 1);
}

/// A first run that gives up after the connection broke once, leaving a partial file.
fn interrupted_run(td: &Path, url: &str, data: &[u8]) {
    let err = Fetcher::new(Cache::open(td).unwrap(), None, false, Progress::quiet())
        .with_retry(RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .fetch(&sha_artifact(url.to_string(), data))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("giving up") && msg.contains("resumes"),
        "{msg}"
    );
}

#[test]
fn interrupted_run_resumes_next_run() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 14);
    srv.add("/x/same.img", data.clone());
    srv.set_drop_after("/x/same.img", MIB / 4, 1);
    let td = tempfile::tempdir().unwrap();
    let url = srv.url_for("/x/same.img");
    interrupted_run(td.path(), &url, &data);
    let partial = Cache::open(td.path()).unwrap().partial_path(&url);
    assert_eq!(fs::metadata(&partial).unwrap().len(), (MIB / 4) as u64);

    srv.clear_log();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(url.clone(), &data))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let log = srv.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].range.as_deref(), Some("bytes=262144-"));
    assert!(log[0].header("if-range").is_some(), "{log:?}");
    assert_eq!(log[0].status, 206);
    assert_eq!(count(&td.path().join("partial")), 0);
}

#[test]
fn interrupted_run_restarts_when_the_file_changed_meanwhile() {
    let srv = TestServer::start();
    let old = pseudo_random(MIB, 15);
    let new = pseudo_random(MIB, 16);
    srv.add("/x/latest.img", old.clone());
    srv.set_drop_after("/x/latest.img", MIB / 4, 1);
    let td = tempfile::tempdir().unwrap();
    let url = srv.url_for("/x/latest.img");
    interrupted_run(td.path(), &url, &old);

    // Upstream published a new file under the same URL.
    srv.add("/x/latest.img", new.clone());
    srv.clear_log();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(url.clone(), &new))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), new);
    let log = srv.requests();
    assert_eq!(
        log.len(),
        1,
        "If-Range avoids stitching old and new bytes: {log:?}"
    );
    assert_eq!(log[0].status, 200);
    assert_eq!(count(&td.path().join("partial")), 0);
}

#[test]
fn stalled_transfer_times_out_and_resumes() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 17);
    srv.add("/x/slow.img", data.clone());
    srv.set_stall_after("/x/slow.img", 300_000, Duration::from_secs(3), 1);
    let td = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let got = fetcher(td.path(), None, false)
        .with_timeouts(Timeouts {
            connect: Duration::from_secs(5),
            stall: Duration::from_millis(300),
        })
        .fetch(&sha_artifact(srv.url_for("/x/slow.img"), &data))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the stall was waited out"
    );
    let log = srv.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].range.as_deref(), Some("bytes=300000-"));
}

#[test]
fn redirected_download_resumes_through_the_redirect() {
    let srv = TestServer::start();
    let data = pseudo_random(MIB, 18);
    srv.add("/board/archive/Armbian_x.img.xz", data.clone());
    srv.add_redirect("/board/Noble_current", "/board/archive/Armbian_x.img.xz");
    srv.set_drop_after("/board/archive/Armbian_x.img.xz", 100_000, 1);
    let td = tempfile::tempdir().unwrap();
    let got = fetcher(td.path(), None, false)
        .fetch(&sha_artifact(srv.url_for("/board/Noble_current"), &data))
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let target: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.path == "/board/archive/Armbian_x.img.xz")
        .collect();
    assert_eq!(target.len(), 2);
    assert_eq!(target[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(target[1].status, 206);
}

#[test]
fn complete_partial_file_is_verified_without_downloading_again() {
    let srv = TestServer::start();
    let data = pseudo_random(300_000, 19);
    srv.add("/x/done.img", data.clone());
    let td = tempfile::tempdir().unwrap();
    let f = fetcher(td.path(), None, false);
    let url = srv.url_for("/x/done.img");
    // A previous run received every byte but stopped before verifying.
    fs::write(f.cache().partial_path(&url), &data).unwrap();
    let got = f.fetch(&sha_artifact(url, &data)).unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let log = srv.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 416);
}

#[test]
fn local_files_are_verified_into_the_cache() {
    let td = tempfile::tempdir().unwrap();
    let data = pseudo_random(500_000, 20);
    let img = td.path().join("local image.img.xz");
    fs::write(&img, &data).unwrap();
    fs::write(
        td.path().join("SHA256SUMS"),
        format!("{} *local image.img.xz\n", sha256_hex(&data)),
    )
    .unwrap();
    let url = url::Url::from_file_path(&img).unwrap().to_string();
    let sums = url::Url::from_file_path(td.path().join("SHA256SUMS"))
        .unwrap()
        .to_string();
    let cache_dir = td.path().join("cache");
    // Local files need no network, so they work offline and ignore the mirror.
    let f = fetcher(&cache_dir, Some("http://127.0.0.1:9".into()), true);
    let got = f
        .fetch(&Artifact {
            url: url.clone(),
            checksum: Checksum::SumsFile {
                url: sums,
                name: "local image.img.xz".into(),
                pinned: false,
                signature: None,
            },
        })
        .unwrap();
    assert!(got.path.starts_with(&cache_dir));
    assert_eq!(fs::read(&got.path).unwrap(), data);

    let url2 = url::Url::from_file_path(td.path().join("other.img"))
        .unwrap()
        .to_string();
    fs::write(td.path().join("other.img"), b"tampered").unwrap();
    let err = f
        .fetch(&sha_artifact(url2.clone(), b"the original"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&url2),
        "{msg}"
    );
    assert_eq!(count(&cache_dir.join("blobs/sha256")), 1);
    assert_eq!(count(&cache_dir.join("tmp")), 0);
}

#[test]
fn oversized_checksum_file_is_refused_early() {
    let srv = TestServer::start();
    srv.add("/big/SHA256SUMS", vec![b'a'; 17 * MIB]);
    let td = tempfile::tempdir().unwrap();
    let err = fetcher(td.path(), None, false)
        .fetch_text(&srv.url_for("/big/SHA256SUMS"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("too large") && msg.contains("/big/SHA256SUMS"),
        "{msg}"
    );
    assert_eq!(srv.hits("/big/SHA256SUMS"), 1);
    assert_eq!(count(&td.path().join("partial")), 0);
    assert_eq!(count(&td.path().join("blobs/sha256")), 0);
}

#[test]
fn directory_server_serves_files_below_its_root() {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("www");
    fs::create_dir_all(root.join("dl.armbian.com/orangepi5/archive")).unwrap();
    let data = pseudo_random(100_000, 21);
    fs::write(
        root.join("dl.armbian.com/orangepi5/archive/a.img.xz"),
        &data,
    )
    .unwrap();
    fs::write(
        root.join("dl.armbian.com/orangepi5/archive/a.img.xz.sha"),
        format!("{} a.img.xz\n", sha256_hex(&data)),
    )
    .unwrap();
    let srv = TestServer::serve_dir(&root);
    let up = "https://dl.armbian.com/orangepi5/archive";
    let got = fetcher(&td.path().join("cache"), Some(srv.url()), false)
        .fetch(&Artifact {
            url: format!("{up}/a.img.xz"),
            checksum: Checksum::SumsFile {
                url: format!("{up}/a.img.xz.sha"),
                name: "a.img.xz".into(),
                pinned: false,
                signature: None,
            },
        })
        .unwrap();
    assert_eq!(fs::read(&got.path).unwrap(), data);
    let err = fetcher(&td.path().join("cache"), None, false)
        .fetch_text(&srv.url_for("/../www/dl.armbian.com/orangepi5/archive/a.img.xz.sha"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[test]
fn a_pinned_release_is_read_from_the_cache_without_its_list() {
    let srv = TestServer::start();
    let bin = pseudo_random(100_000, 41);
    let air = pseudo_random(50_000, 42);
    srv.add("/rel/v1/k3s-arm64", bin.clone());
    srv.add("/rel/v1/airgap.tar.zst", air.clone());
    srv.add(
        "/rel/v1/sha256sum-arm64.txt",
        format!(
            "{}  k3s-arm64\n{}  airgap.tar.zst\n",
            sha256_hex(&bin),
            sha256_hex(&air)
        ),
    );
    let art = |name: &str| Artifact {
        url: srv.url_for(&format!("/rel/v1/{name}")),
        checksum: Checksum::SumsFile {
            url: srv.url_for("/rel/v1/sha256sum-arm64.txt"),
            name: name.into(),
            pinned: true,
            signature: None,
        },
    };
    let td = tempfile::tempdir().unwrap();
    assert!(
        !fetcher(td.path(), None, false)
            .fetch(&art("k3s-arm64"))
            .unwrap()
            .from_cache
    );
    assert_eq!(srv.hits("/rel/v1/sha256sum-arm64.txt"), 1);

    // Online again, a fresh fetcher: the verified binary needs no request at all.
    srv.clear_log();
    let again = fetcher(td.path(), None, false)
        .fetch(&art("k3s-arm64"))
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.sha256, sha256_hex(&bin));
    assert_eq!(srv.total_hits(), 0, "{:?}", srv.requests());

    // Another file of the release: the cached list vouches for it, only the file is fetched.
    let got = fetcher(td.path(), None, false)
        .fetch(&art("airgap.tar.zst"))
        .unwrap();
    assert_eq!(got.sha256, sha256_hex(&air));
    assert_eq!(srv.hits("/rel/v1/sha256sum-arm64.txt"), 0);
    assert_eq!(srv.hits("/rel/v1/airgap.tar.zst"), 1);

    // A damaged cached copy is downloaded again, still without the list.
    let blob = td.path().join("blobs/sha256").join(sha256_hex(&bin));
    let mut perm = fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&blob, perm).unwrap();
    fs::write(&blob, b"bit rot").unwrap();
    srv.clear_log();
    let healed = fetcher(td.path(), None, false)
        .fetch(&art("k3s-arm64"))
        .unwrap();
    assert!(!healed.from_cache);
    assert_eq!(srv.hits("/rel/v1/k3s-arm64"), 1);
    assert_eq!(srv.hits("/rel/v1/sha256sum-arm64.txt"), 0);

    // A pinned text (a tagged manifest) is read from the cache once it was fetched.
    srv.add("/argo/v1/install.yaml", "kind: x\n");
    let url = srv.url_for("/argo/v1/install.yaml");
    let f = fetcher(td.path(), None, false);
    assert_eq!(f.fetch_text_pinned(&url).unwrap(), "kind: x\n");
    srv.add("/argo/v1/install.yaml", "kind: changed\n");
    assert_eq!(
        fetcher(td.path(), None, false)
            .fetch_text_pinned(&url)
            .unwrap(),
        "kind: x\n"
    );
    assert_eq!(srv.hits("/argo/v1/install.yaml"), 1);
}

#[test]
fn a_refused_connection_fails_at_once_without_retrying() {
    // A port nothing listens on (bound, then released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/k3s-arm64");
    let td = tempfile::tempdir().unwrap();
    // The default policy: 5 tries with 1 s doubling back-off would take 15 s.
    let f = Fetcher::new(
        Cache::open(td.path()).unwrap(),
        None,
        false,
        Progress::quiet(),
    );
    let started = std::time::Instant::now();
    let err = f.fetch(&sha_artifact(url.clone(), b"k3s")).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "not retried: {took:?}");
    let msg = format!("{err:#}");
    match err.downcast_ref::<SourceError>() {
        Some(SourceError::Unreachable { host, .. }) => {
            assert_eq!(host, &format!("127.0.0.1:{port}"))
        }
        _ => panic!("a refused connection is reported as such: {msg}"),
    }
    assert!(msg.contains("refused") && msg.contains(&url), "{msg}");
    assert!(
        !msg.contains("giving up") && !msg.contains("retrying"),
        "{msg}"
    );
    assert!(
        !msg.contains("kept in"),
        "nothing was received, nothing kept: {msg}"
    );
    assert!(!msg.contains("--image"), "{msg}");
    assert_eq!(count(&td.path().join("partial")), 0);
}
