//! README's quick start, run as written. The `sh` blocks between README's
//! `<!-- quickstart: begin -->` and `<!-- quickstart: end -->` lines run in order with
//! `bash -e`, like one terminal session (each block starts in the directory the previous one
//! ended in), for a new user: a fresh home directory whose only key is one `ssh-keygen` made,
//! and the default cache under it.
//!
//! What the test does that README does not say:
//! - it skips the `cargo install` line (and checks README has exactly the one it expects) and
//!   puts the directory of the binary under test first on `PATH` instead;
//! - it starts in an empty scratch directory standing for the clone, so a command that
//!   forgot to change directory cannot write into this repository;
//! - at README's `yaml` block, the "edit cluster.yaml" step, it checks that block shows what
//!   `init` wrote, then edits the file as a user would: other addresses for the network and
//!   the nodes, and `mirror:` (documented in the file) pointing at a local server that holds
//!   the catalog's OS image with its SHA256SUMS and the default k3s release.
//!
//! Then it checks the built nodes carry the user's key and the edited server address, and
//! what README claims about the network: the first build downloads the OS image once, a later
//! build fetches only checksum lists, and `--offline` needs no server at all.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pikube_image::config::DEFAULT_K3S_VERSION;
use support::build_env::{keygen, path_with_binary, serve_board_image, serve_k3s, stderr};
use support::fixtures::{self, FixtureOpts};
use support::http::TestServer;
use support::readme::{self, Block};
use support::signing::CatalogSigner;

const README: &str = include_str!("../README.md");

/// The one README line the test does not run: it would install the binary into
/// `~/.cargo/bin` by compiling the crate again. The test runs the binary cargo built for it.
const INSTALL: &str = "cargo install --locked --path .";

/// The edit: README's example network 192.168.1.0/24 becomes this one.
const EXAMPLE_NET: &str = "192.168.1.";
const EDITED_NET: &str = "10.42.7.";

/// A terminal session of the new user: home directory, search path, working directory.
struct Session {
    home: PathBuf,
    path: std::ffi::OsString,
    /// Holds the working directory between blocks.
    cwd_file: PathBuf,
    /// Signs the Ubuntu release the mirror serves; its key stands in for Ubuntu's.
    signer: CatalogSigner,
}

impl Session {
    fn new(root: &Path) -> Session {
        let home = root.join("home");
        let clone = root.join("clone");
        std::fs::create_dir_all(&clone).unwrap();
        let cwd_file = root.join("cwd");
        std::fs::write(&cwd_file, clone.to_str().unwrap()).unwrap();
        Session {
            home,
            path: path_with_binary(),
            cwd_file,
            signer: CatalogSigner::new(),
        }
    }

    fn cwd(&self) -> PathBuf {
        PathBuf::from(std::fs::read_to_string(&self.cwd_file).unwrap().trim_end())
    }

    /// Runs `script` with `bash -e` in the session's directory and keeps the directory it
    /// ends in. The environment is the user's: HOME, PATH, no cache or catalog overrides;
    /// only the key the mirror's checksum lists are signed with is the test's.
    fn run(&self, script: &str) -> Output {
        let wrapped = format!("cd -- \"$(cat \"$QS_CWD\")\"\n{script}\npwd -P > \"$QS_CWD\"\n");
        let out = Command::new("bash")
            .args(["--noprofile", "--norc", "-e", "-c", &wrapped])
            .env("HOME", &self.home)
            .env("PATH", &self.path)
            .env("QS_CWD", &self.cwd_file)
            .env("PIKUBE_TEST_KEYS", self.signer.keys_dir())
            .env_remove("PIKUBE_CACHE_DIR")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("PIKUBE_BOARDS_DIR")
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "$ {}\n{}{}",
            script.trim_end().replace('\n', "\n$ "),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        out
    }
}

/// README's quick-start blocks, with the install line taken out of the `sh` blocks.
fn quickstart_blocks() -> Vec<Block> {
    let mut blocks = readme::blocks(readme::section(README, "quickstart"));
    let mut skipped = Vec::new();
    for b in blocks.iter_mut().filter(|b| b.lang == "sh") {
        let (install, rest): (Vec<&str>, Vec<&str>) = b
            .text
            .lines()
            .partition(|l| l.trim_start().starts_with("cargo install"));
        skipped.extend(install.iter().map(|l| l.trim().to_string()));
        b.text = rest.iter().map(|l| format!("{l}\n")).collect();
    }
    assert_eq!(
        skipped,
        [INSTALL],
        "README's quick start installs with `{INSTALL}`, once"
    );
    blocks
}

/// README's `yaml` block shows the keys as `init` writes them.
fn check_shown_lines(shown: &str, written: &str) {
    let shown: serde_json::Value = serde_saphyr::from_str(shown).unwrap();
    let written: serde_json::Value = serde_saphyr::from_str(written).unwrap();
    let shown = shown.as_object().expect("README's yaml block is a mapping");
    assert!(shown.contains_key("nodes") && shown.contains_key("network"));
    for (k, v) in shown {
        assert_eq!(
            Some(v),
            written.get(k),
            "README's quick start shows `{k}:` other than `pikube-image init` writes it"
        );
    }
}

/// The user's edit of cluster.yaml: another network, and a download mirror.
fn edit(config: &Path, mirror: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.matches(EXAMPLE_NET).count() >= 4,
        "cluster.yaml has the example addresses (gateway, dns, two nodes):\n{text}"
    );
    let mut text = text.replace(EXAMPLE_NET, EDITED_NET);
    text.push_str(&format!("\nmirror: {mirror}\n"));
    std::fs::write(config, text).unwrap();
}

fn ext4_file(img: &Path, path: &str) -> String {
    let file = std::fs::File::open(img).unwrap();
    let disk = pikube_image::disk::Disk::read(img).unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, disk.by_label("writable").unwrap()).unwrap();
    fs.read_to_string(path).unwrap()
}

#[test]
fn readme_quick_start_works_as_written() {
    if !(pikube_test_oracles::require_tool("ssh-keygen", "openssh-client")
        && pikube_test_oracles::require_tool("xz", "xz-utils"))
    {
        return;
    }
    let blocks = quickstart_blocks();
    let root = tempfile::tempdir().unwrap();
    let session = Session::new(root.path());
    let key = keygen(&session.home, "ed25519", "me@laptop");

    let fixture = fixtures::ubuntu_26_04_raspi(root.path(), FixtureOpts::default());
    let xz = fixtures::compress(&fixture.image, pikube_image::decompress::Compression::Xz);
    let server = TestServer::start();
    let rpi4 = serve_board_image(
        &server,
        "rpi4",
        std::fs::read(&xz).unwrap(),
        &session.signer,
    );
    assert_eq!(
        serve_board_image(
            &server,
            "rpi5",
            std::fs::read(&xz).unwrap(),
            &session.signer
        ),
        rpi4,
        "the example's rpi4 and rpi5 nodes share one OS image"
    );
    serve_k3s(&server, DEFAULT_K3S_VERSION, b"#!/bin/sh\n", b"airgap");
    let image_path = pikube_image::source::mirror_url(&rpi4, "http://m")
        .unwrap()
        .replacen("http://m", "", 1);

    let mut ran = Vec::new();
    for b in &blocks {
        match b.lang.as_str() {
            "sh" => {
                let o = session.run(&b.text);
                assert!(
                    o.status.success(),
                    "README's quick start fails at:\n{}\n{}",
                    b.text,
                    stderr(&o)
                );
                ran.push(b.text.clone());
            }
            "yaml" => {
                let config = session.cwd().join("cluster.yaml");
                let written = std::fs::read_to_string(&config)
                    .expect("the blocks before the edit wrote cluster.yaml");
                check_shown_lines(&b.text, &written);
                edit(&config, &server.url());
                ran.push("(edit)".to_string());
            }
            other => panic!("README's quick start has a `{other}` block the test cannot run"),
        }
    }
    let at = |what: &str| {
        ran.iter()
            .position(|s| s.contains(what))
            .unwrap_or_else(|| panic!("README's quick start has no `{what}`: {ran:?}"))
    };
    assert!(
        at("pikube-image init") < at("(edit)") && at("(edit)") < at("pikube-image build --all"),
        "README's quick start runs init, then shows the edit, then builds: {ran:?}"
    );

    let cluster = session.cwd();
    assert_eq!(
        cluster,
        session.home.join("homelab").canonicalize().unwrap(),
        "the cluster has its own directory"
    );
    let images = cluster.join("images");
    for f in ["cp1.img", "worker1.img", "worker2.img"] {
        for suffix in ["", ".sha256"] {
            assert!(images.join(format!("{f}{suffix}")).is_file(), "{f}{suffix}");
        }
    }
    for f in ["SHA256SUMS", "known_hosts", "cp1.manifest.json"] {
        assert!(images.join(f).is_file(), "README says the build writes {f}");
    }

    // The key init found is the admin's on the node.
    let boot = fixture.part("system-boot").start;
    let user_data: serde_json::Value = serde_saphyr::from_slice(&fixtures::fat_read(
        &images.join("cp1.img"),
        boot,
        "user-data",
    ))
    .unwrap();
    assert_eq!(
        user_data["users"][0]["ssh_authorized_keys"][0],
        key.as_str()
    );
    let network = String::from_utf8(fixtures::fat_read(
        &images.join("cp1.img"),
        boot,
        "network-config",
    ))
    .unwrap();
    assert!(network.contains(&format!("{EDITED_NET}10/24")), "{network}");

    // The agents join the edited server address.
    for agent in ["worker1", "worker2"] {
        let cfg = ext4_file(
            &images.join(format!("{agent}.img")),
            "/etc/rancher/k3s/config.yaml",
        );
        let cfg: serde_json::Value = serde_saphyr::from_str(&cfg).unwrap();
        assert_eq!(
            cfg["server"],
            format!("https://{EDITED_NET}10:6443"),
            "{agent}: {cfg}"
        );
    }

    // README: the OS image is downloaded once, into ~/.cache/pikube-image.
    assert_eq!(server.hits(&image_path), 1, "{:?}", server.requests());
    assert!(
        session.home.join(".cache/pikube-image").is_dir(),
        "README names the cache ~/.cache/pikube-image"
    );

    // README: later builds, once the cache holds everything, make no request at all...
    server.clear_log();
    let o = session.run("pikube-image build --all");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        server.requests().is_empty(),
        "a second build is served by the cache: {:?}",
        server.requests()
    );
    assert!(README.contains("make no request at all"));
    // ... and --offline needs no server either.
    let offline = "pikube-image build --all --offline";
    assert!(
        README.contains(&format!("`{offline}`")),
        "README names {offline}"
    );
    drop(server);
    let o = session.run(offline);
    assert!(o.status.success(), "{}", stderr(&o));
}
