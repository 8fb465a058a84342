//! `pikube-image init` as a new user runs it: with the keys `ssh-keygen` makes, comments and
//! all, then `build` on what it wrote.

mod support;

use std::path::Path;

use pikube_image::config::{Cluster, PLACEHOLDER_KEY};
use support::build_env::{K3S_VERSION, keygen, run_cli, serve_k3s, stderr};
use support::fixtures::{self, FixtureOpts};
use support::http::TestServer;

fn init_in(home: &Path, dir: &Path) -> std::process::Output {
    run_cli(dir, &[("HOME", home)], &["init", "--dir", "proj"])
}

/// The line of cluster.yaml where `init` puts the key.
fn placeholder_line() -> usize {
    pikube_image::init::EXAMPLE
        .lines()
        .position(|l| l.contains(PLACEHOLDER_KEY))
        .unwrap()
        + 1
}

const COMMENTS: [(&str, &str); 4] = [
    ("ed25519", "me@laptop"),
    ("ecdsa", "Zoë's \"work\" key — ключ"),
    ("rsa", "two  spaces: a colon, #hash & 'quotes'"),
    ("ed25519", "- [x] {y}: *z !t"),
];

#[test]
fn init_writes_every_kind_of_real_key_so_it_reads_back_identical() {
    for (kind, comment) in COMMENTS {
        let home = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let line = keygen(home.path(), kind, comment);
        let o = init_in(home.path(), dir.path());
        assert!(o.status.success(), "init with a {kind} key: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("id_{kind}.pub")),
            "{}",
            stderr(&o)
        );
        let c = Cluster::load(&dir.path().join("proj/cluster.yaml")).unwrap();
        let keys: Vec<&str> = c
            .admin
            .ssh_authorized_keys
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, [line.as_str()], "{kind} key with comment {comment:?}");
        let gi = std::fs::read_to_string(dir.path().join("proj/.gitignore")).unwrap();
        assert!(gi.lines().any(|l| l == "secrets/"), "{gi}");
    }
}

#[test]
fn what_init_writes_builds_and_the_node_gets_the_key() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let line = keygen(home.path(), "ed25519", "Zoë's laptop: \"main\"");
    assert!(init_in(home.path(), dir.path()).status.success());

    let fixture = fixtures::ubuntu_raspi(dir.path(), FixtureOpts::default());
    let server = TestServer::start();
    serve_k3s(&server, K3S_VERSION, b"#!/bin/sh\n", b"airgap");
    let proj = dir.path().join("proj");
    let config = std::fs::read_to_string(proj.join("cluster.yaml")).unwrap();
    std::fs::write(
        proj.join("cluster.yaml"),
        config.replace(
            &format!("version: {}", pikube_image::config::DEFAULT_K3S_VERSION),
            &format!("version: {K3S_VERSION}"),
        ),
    )
    .unwrap();
    let url = server.url();
    let image = fixture.image.to_str().unwrap();
    let o = run_cli(
        &proj,
        &[],
        &[
            "build", "--node", "cp1", "--image", image, "--mirror", &url, "--out", "out",
        ],
    );
    assert!(o.status.success(), "build: {}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(proj.join("out/cp1.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["node"], "cp1");
    let boot = fixture.part("system-boot");
    let user_data = fixtures::fat_read(&proj.join("out/cp1.img"), boot.start, "user-data");
    let ud: serde_json::Value = serde_saphyr::from_slice(&user_data).unwrap();
    assert_eq!(ud["users"][0]["ssh_authorized_keys"][0], line.as_str());
}

#[test]
fn without_a_key_init_says_so_and_build_refuses_the_placeholder() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = init_in(home.path(), dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: no public key found") && err.contains(PLACEHOLDER_KEY),
        "{err}"
    );
    let proj = dir.path().join("proj");
    let o = run_cli(&proj, &[], &["build", "--all", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cluster.yaml")
            && err.contains(&format!("line {} ", placeholder_line()))
            && err.contains(PLACEHOLDER_KEY)
            && err.contains("ssh-keygen"),
        "names the file, the key's line and the fix: {err}"
    );
}

#[test]
fn build_names_the_position_of_a_key_that_does_not_parse() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = keygen(home.path(), "ed25519", "me@laptop");
    assert!(init_in(home.path(), dir.path()).status.success());
    let proj = dir.path().join("proj");
    let config = std::fs::read_to_string(proj.join("cluster.yaml")).unwrap();
    let quoted = serde_json::to_string(&good).unwrap();
    let (kind, body) = good.split_once(' ').unwrap();
    for (bad, why) in [
        (format!("{kind} {}", &body[..40]), "truncated"),
        (
            good.replacen("ssh-ed25519", "ssh-rsa", 1),
            "wrong algorithm name",
        ),
        (format!("{good}\rextra"), "carriage return"),
    ] {
        let text = config.replace(
            &format!("    - {quoted}\n"),
            &format!(
                "    - {quoted}\n    - {}\n",
                serde_json::to_string(&bad).unwrap()
            ),
        );
        assert_ne!(text, config);
        std::fs::write(proj.join("cluster.yaml"), text).unwrap();
        let o = run_cli(&proj, &[], &["build", "--all", "--dry-run"]);
        assert_eq!(o.status.code(), Some(1), "{why}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("line {} ", placeholder_line() + 1))
                && err.contains("OpenSSH public key")
                || err.contains("control character"),
            "{why}: {err}"
        );
    }
}

#[test]
fn init_fills_in_a_missing_token_for_an_existing_inventory() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    keygen(home.path(), "ed25519", "me@laptop");
    assert!(init_in(home.path(), dir.path()).status.success());
    let proj = dir.path().join("proj");
    let config = std::fs::read(proj.join("cluster.yaml")).unwrap();
    std::fs::remove_dir_all(proj.join("secrets")).unwrap();
    let o = run_cli(&proj, &[], &["build", "--all", "--dry-run"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("pikube-image init --dir"),
        "{}",
        stderr(&o)
    );
    let o = init_in(home.path(), dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("kept"), "{}", stderr(&o));
    assert_eq!(std::fs::read(proj.join("cluster.yaml")).unwrap(), config);
    assert_eq!(
        std::fs::read_to_string(proj.join("secrets/k3s-token"))
            .unwrap()
            .trim()
            .len(),
        64
    );
}

#[test]
fn version_names_the_commit_and_build_date() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(
        v.starts_with(&format!(
            "pikube-image {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{v}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(h) => assert!(v.contains(&format!("commit {h},")), "{v} names {h}"),
        None => assert!(v.contains("commit unknown,"), "{v}"),
    }
    let date = v
        .split("built ")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(')');
    assert!(
        date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2,
        "a YYYY-MM-DD date: {v}"
    );
}
