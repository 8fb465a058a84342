//! The inventory's `locale` against what each OS image can honour: builds through the
//! command line of fixture images whose root filesystems hold Debian's or Ubuntu's
//! `locales` package (or not), served by a real HTTP server through `--mirror`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use pikube_test_oracles::require_tool;
use support::build_env::{
    K3S_VERSION, KEY, run_cli, serve_catalog_image, serve_k3s_arch, stderr, walk, write_token,
};
use support::fixtures::{self, Fixture, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

type Files = BTreeMap<String, (u32, Vec<u8>)>;

fn have_oracles() -> bool {
    [
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mkfs.ext4", "e2fsprogs"),
        ("xz", "xz-utils"),
    ]
    .iter()
    .all(|(tool, package)| require_tool(tool, package))
}

fn file(files: &mut Files, path: &str, mode: u32, data: &[u8]) {
    files.insert(path.to_string(), (mode, data.to_vec()));
}

/// The `locales` package's files: its programs, SUPPORTED, the sources of `sources` and the
/// UTF-8 charmap; with `ubuntu`, Ubuntu's locale-gen (it keeps supported.d).
fn locales_package(files: &mut Files, sources: &[&str], enabled: &str, ubuntu: bool) {
    file(files, "/usr/sbin/locale-gen", 0o755, b"#!/bin/sh\n");
    file(
        files,
        "/usr/sbin/update-locale",
        0o755,
        b"#!/usr/bin/perl\n",
    );
    let mut supported = String::from("C.UTF-8 UTF-8\n");
    for s in sources {
        supported.push_str(&format!("{s}.UTF-8 UTF-8\n{s} ISO-8859-1\n"));
        file(
            files,
            &format!("/usr/share/i18n/locales/{s}"),
            0o644,
            format!("LC_IDENTIFICATION\ntitle \"{s}\"\nEND LC_IDENTIFICATION\n").as_bytes(),
        );
    }
    file(
        files,
        "/usr/share/i18n/SUPPORTED",
        0o644,
        supported.as_bytes(),
    );
    file(
        files,
        "/usr/share/i18n/charmaps/UTF-8.gz",
        0o644,
        b"\x1f\x8b charmap",
    );
    file(files, "/etc/locale.gen", 0o644, enabled.as_bytes());
    if ubuntu {
        file(
            files,
            "/var/lib/locales/supported.d/en",
            0o644,
            b"en_US.UTF-8 UTF-8\n",
        );
    }
}

/// `/usr/lib/locale/C.utf8`, as libc-bin ships it.
fn c_utf8(files: &mut Files) {
    for f in ["LC_CTYPE", "LC_COLLATE", "LC_MESSAGES/SYS_LC_MESSAGES"] {
        file(
            files,
            &format!("/usr/lib/locale/C.utf8/{f}"),
            0o644,
            b"glibc",
        );
    }
}

struct Env {
    dir: tempfile::TempDir,
    server: TestServer,
    signer: CatalogSigner,
    os: &'static str,
}

impl Env {
    /// Serves `make`'s fixture, with `root_files` in its root filesystem, as rpi4's `os`.
    fn new(os: &'static str, make: fn(&Path, FixtureOpts) -> Fixture, root_files: Files) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pikube-locale")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let fixture = make(
            dir.path(),
            FixtureOpts {
                total_mib: 120,
                root_files,
                ..FixtureOpts::default()
            },
        );
        let xz = std::fs::read(fixtures::compress(&fixture.image, Compression::Xz)).unwrap();
        let server = TestServer::start();
        let signer = CatalogSigner::new();
        serve_catalog_image(&server, "rpi4", Some(os), xz, &signer);
        serve_k3s_arch(&server, K3S_VERSION, "arm64", b"#!/bin/sh\n", b"airgap");
        write_token(dir.path());
        Env {
            dir,
            server,
            signer,
            os,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Builds `nodes` (`--all` when empty) of an inventory with `locale` (none when empty).
    fn build(&self, locale: &str, nodes: &[&str]) -> Output {
        let locale = match locale {
            "" => String::new(),
            l => format!("locale: {l}\n"),
        };
        let yaml = format!(
            "cluster: lab\ndomain: home.arpa\n{locale}admin:\n  user: ops\n  ssh_authorized_keys: [\"{KEY}\"]\n\
             network: {{ gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }}\nnodes:\n\
             \x20 - {{ name: cp1, board: rpi4, os: {os}, role: server, ip: 192.168.50.10 }}\n\
             \x20 - {{ name: w1, board: rpi4, os: {os}, role: agent }}\n",
            os = self.os
        );
        std::fs::write(self.path("cluster.yaml"), yaml).unwrap();
        let _ = std::fs::remove_dir_all(self.path("out"));
        let url = self.server.url();
        let mut args = vec!["build", "--mirror", &url, "--out", "out"];
        match nodes {
            [] => args.push("--all"),
            _ => nodes.iter().for_each(|n| args.extend(["--node", n])),
        }
        run_cli(
            self.dir.path(),
            &[("PIKUBE_TEST_KEYS", self.signer.keys_dir())],
            &args,
        )
    }

    fn images(&self) -> Vec<PathBuf> {
        walk(&self.path("out"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "img"))
            .collect()
    }

    fn assert_builds(&self, locale: &str, nodes: &[&str]) {
        let out = self.build(locale, nodes);
        assert!(
            out.status.success(),
            "locale {locale:?} builds: {}",
            stderr(&out)
        );
        let want = if nodes.is_empty() { 2 } else { nodes.len() };
        assert_eq!(self.images().len(), want, "{locale:?}");
    }

    /// Asserts that `locale` is refused with a message naming the setting, the image, why
    /// (`why`) and the fix, and that no image is written.
    fn assert_refused(&self, locale: &str, nodes: &[&str], why: &str) -> String {
        let out = self.build(locale, nodes);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{locale} is refused: {err}");
        for want in [
            &format!("`locale: {locale}`"),
            "cluster.yaml",
            &format!("OS image '{}'", self.os),
            "node 'cp1' (board rpi4)",
            why,
            "Leave `locale` out to keep the image's own locale",
        ] {
            assert!(err.contains(want), "expected {want:?} in: {err}");
        }
        assert!(
            self.images().is_empty(),
            "no image is written: {:?}",
            walk(&self.path("out"))
        );
        err
    }
}

#[test]
fn a_locale_ubuntus_locale_gen_can_generate_is_accepted() {
    if !have_oracles() {
        return;
    }
    let mut root = Files::new();
    c_utf8(&mut root);
    locales_package(&mut root, &["de_DE", "en_US"], "", true);
    let env = Env::new("ubuntu-24.04", fixtures::ubuntu_raspi, root);
    env.assert_builds("de_DE.UTF-8", &[]);
    let err = env.assert_refused("de_AT.UTF-8", &[], "SUPPORTED does not list it");
    assert!(
        err.contains("can honour: de_DE.UTF-8,"),
        "the same language first: {err}"
    );
    env.assert_builds("C.UTF-8", &["cp1"]);
    env.assert_builds("", &[]);
}

#[test]
fn an_image_with_only_c_utf8_refuses_other_locales() {
    if !have_oracles() {
        return;
    }
    // Debian's locales package with nothing enabled in /etc/locale.gen: its locale-gen
    // ignores the name cloud-init gives it, so only C.UTF-8 is there at first boot.
    let mut root = Files::new();
    c_utf8(&mut root);
    locales_package(
        &mut root,
        &["de_DE", "en_US"],
        "# en_US.UTF-8 UTF-8\n",
        false,
    );
    let env = Env::new("raspios-trixie-arm64", fixtures::raspios, root);
    let file = "2026-06-18-raspios-trixie-arm64-lite.img.xz";
    // One node (decompressed straight into its output) and the fleet (prepared base).
    for nodes in [&["cp1"][..], &[]] {
        let err = env.assert_refused(
            "en_US.UTF-8",
            nodes,
            "generates only what /etc/locale.gen enables",
        );
        assert!(err.contains(file), "the image file is named: {err}");
        assert!(err.contains("not generated in the image"), "{err}");
        assert!(err.contains("can honour: C.UTF-8"), "{err}");
    }
    env.assert_builds("C.UTF-8", &["cp1"]);
    env.assert_builds("POSIX", &[]);
    env.assert_builds("", &[]);
    // What Debian's locale-gen generates is honoured.
    let mut root = Files::new();
    c_utf8(&mut root);
    locales_package(&mut root, &["de_DE", "en_US"], "en_US.UTF-8 UTF-8\n", false);
    let env = Env::new("raspios-trixie-arm64", fixtures::raspios, root);
    env.assert_builds("en_US.UTF-8", &[]);
    env.assert_refused("de_DE.UTF-8", &["cp1"], "/etc/locale.gen");
}

/// `localedef` of glibc, writing into the locale-archive under `prefix`.
fn localedef(prefix: &Path, source: &str, charmap: &str, name: &str) {
    std::fs::create_dir_all(prefix.join("usr/lib/locale")).unwrap();
    let out = Command::new("localedef")
        .args(["-i", source, "-f", charmap, "--prefix"])
        .arg(prefix)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "localedef {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn locales_generated_into_the_archive_are_honoured_without_cloud_init_generating() {
    if !have_oracles()
        || !require_tool("localedef", "libc-bin")
        || !Path::new("/usr/share/i18n/locales/en_GB").exists()
    {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    localedef(scratch.path(), "en_GB", "UTF-8", "en_GB.UTF-8");
    localedef(scratch.path(), "de_DE@euro", "ISO-8859-15", "de_DE@euro");
    let archive = std::fs::read(scratch.path().join("usr/lib/locale/locale-archive")).unwrap();
    let mut root = Files::new();
    c_utf8(&mut root);
    locales_package(&mut root, &["de_DE", "en_GB"], "", false);
    file(&mut root, "/usr/lib/locale/locale-archive", 0o644, &archive);
    let env = Env::new("raspios-trixie-arm64", fixtures::raspios, root);
    env.assert_builds("en_GB.UTF-8", &["cp1"]);
    env.assert_builds("en_GB.utf8", &[]);
    env.assert_builds("de_DE@euro", &["cp1"]);
    let err = env.assert_refused("de_DE.UTF-8", &[], "/etc/locale.gen");
    assert!(err.contains("de_DE@euro"), "the same language first: {err}");
}
