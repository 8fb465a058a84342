//! Same inputs, same output bytes, across versions of the code: builds a fixed inventory (a
//! server with GitOps, agents with and without addresses, an Armbian-layout node, shared and
//! node overlays) in every output format, with `SOURCE_DATE_EPOCH` set, and compares the
//! SHA-256 of every file written against a reference recorded earlier.
//!
//! Inputs (fixture images, secrets, host keys) are kept in `$PIKUBE_SAME_OUTPUTS_DIR` so a
//! later run, on other code, builds from exactly the same bytes:
//!
//! ```text
//! PIKUBE_SAME_OUTPUTS_DIR=/tmp/same cargo test --test same_outputs -- --ignored   # records
//! git checkout OTHER
//! PIKUBE_SAME_OUTPUTS_DIR=/tmp/same cargo test --test same_outputs -- --ignored   # compares
//! ```
//!
//! It is ignored by default because it only means something across two checkouts.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pikube_image::decompress::Compression;
use support::build_env::{K3S_VERSION, KEY, serve_k3s, stderr, walk, write_token};
use support::fixtures::{self, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

const RASPI: &str = "cdimage.ubuntu.com/releases/24.04.3/release/ubuntu-24.04.3-preinstalled-server-arm64+raspi.img.xz";
const ARMBIAN: &str = "dl.armbian.com/orangepizero3/archive/Armbian_25.8.1_Orangepizero3_bookworm_current_6.12.43_minimal.img.xz";
const ARGOCD: &str = "raw.githubusercontent.com/argoproj/argo-cd/v2.13.3/manifests/install.yaml";
const ARGOCD_INSTALL: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: applications.argoproj.io\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: argocd-server\n";

fn cluster_yaml() -> String {
    format!(
        r#"cluster: lab
domain: home.arpa
timezone: Europe/Berlin
admin:
  user: ops
  ssh_authorized_keys: ["{KEY}"]
network: {{ gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }}
overlays: {{ all: [overlay-all], agent: [overlay-agent] }}
gitops: {{ repo: "https://git.example.com/lab.git", revision: main, path: apps, argocd_version: v2.13.3 }}
images: {{ argocd: none }}
nodes:
  - {{ name: cp1, board: rpi4, os: ubuntu-24.04, role: server, ip: 192.168.50.10 }}
  - {{ name: w1, board: rpi4, os: ubuntu-24.04, role: agent }}
  - {{ name: w2, board: rpi5, os: ubuntu-24.04, role: agent, ip: 192.168.50.12, overlays: [overlay-w2], labels: {{ zone: a }} }}
  - {{ name: a1, board: opizero3-test, role: agent, ip: 192.168.50.13 }}
"#
    )
}

/// Makes the inputs once: the two base images, the inventory, its secrets and overlays.
fn make_inputs(dir: &Path) {
    if dir.join("ready").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let raspi = fixtures::ubuntu_raspi(
        dir,
        FixtureOpts {
            seed: 5,
            ..FixtureOpts::default()
        },
    );
    let armbian = fixtures::armbian_allwinner(
        dir,
        FixtureOpts {
            total_mib: 96,
            seed: 6,
            ..FixtureOpts::default()
        },
    );
    for (img, name) in [
        (&raspi.image, "raspi.img.xz"),
        (&armbian.image, "armbian.img.xz"),
    ] {
        let xz = fixtures::compress(img, Compression::Xz);
        std::fs::rename(xz, dir.join(name)).unwrap();
        std::fs::remove_file(img).unwrap();
    }
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("cluster.yaml"), cluster_yaml()).unwrap();
    write_token(&project);
    for (d, f, text) in [
        ("overlay-all", "etc/motd", "every node\n"),
        ("overlay-agent", "etc/pikube-agent", "agents\n"),
        ("overlay-w2", "usr/local/bin/hi", "#!/bin/sh\necho hi\n"),
    ] {
        let p = project.join(d).join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    std::fs::write(dir.join("ready"), "").unwrap();
}

/// Builds the inventory from the kept inputs into a fresh output directory and cache, and
/// returns the SHA-256 of every file written.
fn build(dir: &Path) -> BTreeMap<String, String> {
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    for (path, file) in [(RASPI, "raspi.img.xz"), (ARMBIAN, "armbian.img.xz")] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let sha = pikube_image::io::sha256_bytes(&bytes);
        let name = path.rsplit('/').next().unwrap();
        server.add(&format!("/{path}"), bytes);
        let (sums, line) = if path == RASPI {
            (
                format!("/{}/SHA256SUMS", path.rsplit_once('/').unwrap().0),
                format!("{sha} *{name}\n"),
            )
        } else {
            (format!("/{path}.sha"), format!("{sha} {name}\n"))
        };
        if path == RASPI {
            // The built-in entry expects its list signed (by Ubuntu's key; here the test's).
            server.add(&format!("{sums}.gpg"), signer.sign(line.as_bytes()));
        }
        server.add(&sums, line);
    }
    server.add(&format!("/{ARGOCD}"), ARGOCD_INSTALL);
    serve_k3s(
        &server,
        K3S_VERSION,
        b"#!/bin/sh\necho stand-in k3s\n",
        b"airgap",
    );

    let project = dir.join("project");
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/direct/boards");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args([
            "build",
            "--all",
            "--jobs",
            "2",
            "--format",
            "raw,zst,xz,bmap",
            "--mirror",
        ])
        .arg(server.url())
        .arg("--out")
        .arg(&out)
        .current_dir(&project)
        .env("PIKUBE_CACHE_DIR", scratch.path().join("cache"))
        .env("PIKUBE_BOARDS_DIR", &boards)
        .env("PIKUBE_TEST_KEYS", signer.keys_dir())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "build: {}", stderr(&o));
    walk(&out)
        .into_iter()
        .map(|p: PathBuf| {
            let name = p.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
            let sha = pikube_image::io::sha256_reader(std::fs::File::open(&p).unwrap()).unwrap();
            (name, sha)
        })
        .collect()
}

#[test]
#[ignore = "compares two checkouts: set PIKUBE_SAME_OUTPUTS_DIR and run on each"]
fn outputs_are_byte_identical_to_the_reference() {
    let dir = PathBuf::from(
        std::env::var_os("PIKUBE_SAME_OUTPUTS_DIR").expect("set PIKUBE_SAME_OUTPUTS_DIR"),
    );
    make_inputs(&dir);
    let got = build(&dir);
    let text: String = got.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    print!("{text}");
    assert!(got.len() >= 4 * 9, "every node's outputs: {got:?}");
    let reference = dir.join("reference.sha256");
    match std::fs::read_to_string(&reference) {
        Ok(want) => assert_eq!(text, want, "outputs differ from {}", reference.display()),
        Err(_) => {
            std::fs::write(&reference, &text).unwrap();
            eprintln!("recorded {} files in {}", got.len(), reference.display());
        }
    }
}
