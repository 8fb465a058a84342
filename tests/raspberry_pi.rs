//! Builds of the Raspberry Pi OS images of the catalog, each from a fixture with that image's
//! layout, served at the catalog's URL with the checksum list its publisher puts beside it:
//! Ubuntu 26.04 (A/B boot under `current/`), Raspberry Pi OS trixie (root by PARTUUID,
//! NoCloud seed on `bootfs` as Raspberry Pi Imager writes it) and Ubuntu 22.04 armhf (256 MiB
//! system-boot). Also a fleet of an arm64 server and an armhf agent.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use pikube_test_oracles::require_tool;
use support::build_env::{
    K3S_VERSION, KEY, elf_header, elf_machine, run_cli, serve_catalog_image, serve_k3s_arch,
    stderr, write_token,
};
use support::fixtures::{self, Fixture, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

/// EM_ARM and EM_AARCH64.
const EM_ARM: u16 = 40;
const EM_AARCH64: u16 = 183;

/// One OS image of the catalog and the fixture with its layout.
struct Layout {
    board: &'static str,
    os: &'static str,
    make: fn(&Path, FixtureOpts) -> Fixture,
    boot: &'static str,
    root: &'static str,
    /// The command line file the firmware reads, as the real image's config.txt says.
    cmdline: &'static str,
    /// Whether cloud-init is told its datasource on the command line (Raspberry Pi OS).
    cmdline_datasource: bool,
}

const UBUNTU_26_04: Layout = Layout {
    board: "rpi4",
    os: "ubuntu-26.04",
    make: fixtures::ubuntu_26_04_raspi,
    boot: "system-boot",
    root: "writable",
    cmdline: "current/cmdline.txt",
    cmdline_datasource: false,
};

const RASPIOS_ARM64: Layout = Layout {
    board: "rpi5",
    os: "raspios-trixie-arm64",
    make: fixtures::raspios,
    boot: "bootfs",
    root: "rootfs",
    cmdline: "cmdline.txt",
    cmdline_datasource: true,
};

const UBUNTU_22_04_ARMHF: Layout = Layout {
    board: "rpi2",
    os: "ubuntu-22.04-armhf",
    make: fixtures::ubuntu_22_04_armhf_raspi,
    boot: "system-boot",
    root: "writable",
    cmdline: "cmdline.txt",
    cmdline_datasource: false,
};

fn have_oracles() -> bool {
    [
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("fsck.fat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mkfs.ext4", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("cloud-init", "cloud-init"),
        ("xz", "xz-utils"),
    ]
    .iter()
    .all(|(tool, package)| require_tool(tool, package))
}

fn arch_of(board: &str) -> &'static str {
    match board {
        "rpi2" => "armhf",
        _ => "arm64",
    }
}

/// A fake k3s release for `arch`: ELF headers of that machine, and an airgap archive whose
/// bytes say which architecture it is for.
fn serve_release(server: &TestServer, arch: &str) -> (Vec<u8>, Vec<u8>) {
    let binary = match arch {
        "armhf" => elf_header(EM_ARM, false),
        _ => elf_header(EM_AARCH64, true),
    };
    let airgap = format!("airgap images for {arch}").into_bytes();
    serve_k3s_arch(server, K3S_VERSION, arch, &binary, &airgap);
    (binary, airgap)
}

fn cluster_yaml(nodes: &str) -> String {
    format!(
        "cluster: lab\ndomain: home.arpa\nadmin:\n  user: ops\n  ssh_authorized_keys: [\"{KEY}\"]\n\
         network: {{ gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }}\nnodes:\n{nodes}"
    )
}

/// Builds `nodes` (`--all` when empty) and prints how long the build took.
fn build(dir: &Path, server: &TestServer, signer: &CatalogSigner, nodes: &[&str]) -> Output {
    let url = server.url();
    let mut args = vec!["build", "--mirror", &url, "--out", "out"];
    match nodes {
        [] => args.push("--all"),
        _ => nodes.iter().for_each(|n| args.extend(["--node", n])),
    }
    let started = std::time::Instant::now();
    let out = run_cli(dir, &[("PIKUBE_TEST_KEYS", signer.keys_dir())], &args);
    eprintln!(
        "build of {} took {:.1} s",
        if nodes.is_empty() {
            "every node".to_string()
        } else {
            nodes.join(", ")
        },
        started.elapsed().as_secs_f64()
    );
    out
}

/// `sfdisk --dump` without the lines that name the file.
fn table(img: &Path) -> String {
    fixtures::sfdisk_dump(img)
        .lines()
        .filter(|l| !l.starts_with("device:"))
        .map(|l| {
            l.split_once(':')
                .map(|(_, r)| r.trim().to_string())
                .unwrap_or(l.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ext4_link(img: &Path, p: &fixtures::PartInfo, path: &str, scratch: &Path) -> String {
    let part = fixtures::extract(img, p.start, p.size, &scratch.join("link.ext4"));
    let o = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(&part)
        .output()
        .expect("debugfs");
    std::fs::remove_file(&part).unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
        .unwrap_or_else(|| panic!("{path} is not a symlink: {text}"))
        .trim_matches('"')
        .to_string()
}

/// Builds a server and an agent from `layout` and checks both images with the oracles.
fn server_and_agent_build_from(layout: &Layout) {
    if !have_oracles() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-rpi")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let fixture = (layout.make)(dir.path(), FixtureOpts::default());
    let xz = fixtures::compress(&fixture.image, Compression::Xz);
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    serve_catalog_image(
        &server,
        layout.board,
        Some(layout.os),
        std::fs::read(&xz).unwrap(),
        &signer,
    );
    let (binary, airgap) = serve_release(&server, arch_of(layout.board));
    write_token(dir.path());
    let (b, os) = (layout.board, layout.os);
    std::fs::write(
        dir.path().join("cluster.yaml"),
        cluster_yaml(&format!(
            "  - {{ name: cp1, board: {b}, os: {os}, role: server, ip: 192.168.50.10 }}\n  - {{ name: w1, board: {b}, os: {os}, role: agent }}\n"
        )),
    )
    .unwrap();
    // One node at a time, so each build's time is that of one node from the download.
    for node in ["cp1", "w1"] {
        let out = build(dir.path(), &server, &signer, &[node]);
        assert!(out.status.success(), "build {node}: {}", stderr(&out));
    }

    let boot = fixture.part(layout.boot);
    let root = fixture.part(layout.root);
    for node in ["cp1", "w1"] {
        let img = dir.path().join(format!("out/{node}.img"));
        assert_eq!(
            table(&img),
            table(&fixture.image),
            "{node}: partition table"
        );
        let json = fixtures::sfdisk_json(&img);
        assert_eq!(
            json["partitiontable"]["id"].as_str().unwrap(),
            format!("0x{}", fixture.disk_id),
            "{node}: disk id"
        );
        fixtures::assert_fat_clean(&img, boot, dir.path());
        fixtures::assert_ext4_clean(&img, root, dir.path());

        // The command line the firmware reads: one line, each argument once.
        let cmdline =
            String::from_utf8(fixtures::fat_read(&img, boot.start, layout.cmdline)).unwrap();
        assert_eq!(cmdline.lines().count(), 1, "{node}: {cmdline}");
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        for arg in ["cgroup_memory=1", "cgroup_enable=memory", "rootwait"] {
            assert_eq!(
                words.iter().filter(|w| **w == arg).count(),
                1,
                "{node}: {arg} in {cmdline}"
            );
        }
        let original = String::from_utf8(fixtures::fat_read(
            &fixture.image,
            boot.start,
            layout.cmdline,
        ))
        .unwrap();
        let root_arg = original
            .split_whitespace()
            .find(|w| w.starts_with("root="))
            .unwrap();
        assert!(
            words.contains(&root_arg),
            "{node}: {root_arg} kept in {cmdline}"
        );

        let meta = String::from_utf8(fixtures::fat_read(&img, boot.start, "meta-data")).unwrap();
        let id = meta
            .lines()
            .find_map(|l| l.strip_prefix("instance-id: "))
            .expect("instance-id in meta-data")
            .trim();
        let ds: Vec<&&str> = words.iter().filter(|w| w.starts_with("ds=")).collect();
        if layout.cmdline_datasource {
            assert_eq!(
                ds,
                [&format!("ds=nocloud;i={id}").as_str()],
                "{node}: {cmdline}"
            );
        } else {
            assert!(ds.is_empty(), "{node}: {cmdline}");
        }

        // The seed passes cloud-init's own schema check.
        let ud_path = dir.path().join("user-data");
        std::fs::write(&ud_path, fixtures::fat_read(&img, boot.start, "user-data")).unwrap();
        let (ok, report) = fixtures::check(
            Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(&ud_path),
        );
        assert!(ok, "{node}: cloud-init schema: {report}");
        let ud = std::fs::read_to_string(&ud_path).unwrap();
        assert!(ud.contains(&format!("hostname: {node}")), "{ud}");

        // k3s of the board's architecture, and its airgap images.
        let bin = fixtures::ext4_read(&img, root, "/usr/local/bin/k3s", dir.path());
        assert_eq!(bin, binary, "{node}");
        let air = match arch_of(layout.board) {
            "armhf" => "k3s-airgap-images-arm.tar.zst",
            _ => "k3s-airgap-images-arm64.tar.zst",
        };
        let got = fixtures::ext4_read(
            &img,
            root,
            &format!("/var/lib/rancher/k3s/agent/images/{air}"),
            dir.path(),
        );
        assert_eq!(got, airgap, "{node}");

        if layout.os.starts_with("raspios") {
            // sshd ships disabled: enabled in the image, so the seed needs no command for it.
            assert_eq!(
                ext4_link(
                    &img,
                    root,
                    "/etc/systemd/system/multi-user.target.wants/ssh.service",
                    dir.path()
                ),
                "/usr/lib/systemd/system/ssh.service"
            );
            assert!(!ud.contains("runcmd"), "{ud}");
            let mid = fixtures::ext4_read(&img, root, "/etc/machine-id", dir.path());
            assert_eq!(
                mid, b"uninitialized\n",
                "{node}: machine-id left for first boot"
            );
        }
    }
}

#[test]
fn ubuntu_26_04_builds_into_valid_server_and_agent_images() {
    server_and_agent_build_from(&UBUNTU_26_04);
}

#[test]
fn raspberry_pi_os_builds_into_valid_server_and_agent_images() {
    server_and_agent_build_from(&RASPIOS_ARM64);
}

#[test]
fn ubuntu_22_04_armhf_builds_into_valid_server_and_agent_images() {
    server_and_agent_build_from(&UBUNTU_22_04_ARMHF);
}

#[test]
fn an_arm64_server_and_an_armhf_agent_get_their_own_k3s() {
    if !have_oracles() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-rpi-mixed")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    let mut fixtures_by_node = Vec::new();
    for (layout, node) in [(&UBUNTU_26_04, "cp1"), (&UBUNTU_22_04_ARMHF, "w1")] {
        let sub = dir.path().join(layout.os);
        std::fs::create_dir_all(&sub).unwrap();
        let f = (layout.make)(&sub, FixtureOpts::default());
        let xz = fixtures::compress(&f.image, Compression::Xz);
        serve_catalog_image(
            &server,
            layout.board,
            Some(layout.os),
            std::fs::read(&xz).unwrap(),
            &signer,
        );
        fixtures_by_node.push((node, layout, f));
    }
    serve_release(&server, "arm64");
    serve_release(&server, "armhf");
    write_token(dir.path());
    std::fs::write(
        dir.path().join("cluster.yaml"),
        cluster_yaml(
            "  - { name: cp1, board: rpi4, role: server, ip: 192.168.50.10 }\n  - { name: w1, board: rpi2, os: ubuntu-22.04-armhf, role: agent }\n",
        ),
    )
    .unwrap();
    let out = build(dir.path(), &server, &signer, &[]);
    assert!(out.status.success(), "build: {}", stderr(&out));
    for (node, layout, f) in &fixtures_by_node {
        let img = dir.path().join(format!("out/{node}.img"));
        let root = f.part(layout.root);
        let bin = fixtures::ext4_read(&img, root, "/usr/local/bin/k3s", dir.path());
        let (machine, air, other) = match *node {
            "w1" => (
                EM_ARM,
                "k3s-airgap-images-arm.tar.zst",
                "k3s-airgap-images-arm64.tar.zst",
            ),
            _ => (
                EM_AARCH64,
                "k3s-airgap-images-arm64.tar.zst",
                "k3s-airgap-images-arm.tar.zst",
            ),
        };
        assert_eq!(elf_machine(&bin), machine, "{node}: k3s binary's machine");
        let part = fixtures::extract(&img, root.start, root.size, &dir.path().join("ls.ext4"));
        let o = Command::new("debugfs")
            .args(["-R", "ls -l /var/lib/rancher/k3s/agent/images"])
            .arg(&part)
            .output()
            .unwrap();
        std::fs::remove_file(&part).unwrap();
        let listing = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            listing.contains(air) && !listing.contains(other),
            "{node}: {listing}"
        );
        let content = fixtures::ext4_read(
            &img,
            root,
            &format!("/var/lib/rancher/k3s/agent/images/{air}"),
            dir.path(),
        );
        let want = if *node == "w1" { "armhf" } else { "arm64" };
        assert_eq!(
            String::from_utf8(content).unwrap(),
            format!("airgap images for {want}")
        );
    }
}

/// `debugfs stat`'s modification time of `path`, in seconds since the epoch.
fn ext4_mtime(img: &Path, p: &fixtures::PartInfo, path: &str, scratch: &Path) -> i64 {
    let part = fixtures::extract(img, p.start, p.size, &scratch.join("mtime.ext4"));
    let o = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(&part)
        .output()
        .expect("debugfs");
    std::fs::remove_file(&part).unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let hex = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("mtime: 0x"))
        .unwrap_or_else(|| panic!("no mtime for {path}: {text}"));
    i64::from_str_radix(&hex[..8], 16).unwrap()
}

#[test]
fn manifests_keep_an_mtime_k3s_applies_under_source_date_epoch_0() {
    if !have_oracles() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-rpi-epoch")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let layout = &UBUNTU_26_04;
    let fixture = (layout.make)(dir.path(), FixtureOpts::default());
    let xz = fixtures::compress(&fixture.image, Compression::Xz);
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    serve_catalog_image(
        &server,
        layout.board,
        None,
        std::fs::read(&xz).unwrap(),
        &signer,
    );
    serve_release(&server, "arm64");
    let version = pikube_image::config::DEFAULT_ARGOCD_VERSION;
    server.add(
        &format!("/raw.githubusercontent.com/argoproj/argo-cd/{version}/manifests/install.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: argocd-server\n",
    );
    write_token(dir.path());
    std::fs::write(
        dir.path().join("cluster.yaml"),
        cluster_yaml("  - { name: cp1, board: rpi4, role: server, ip: 192.168.50.10 }\n").replace(
            "nodes:\n",
            "gitops: { repo: \"https://git.example.com/lab.git\" }\nimages: { argocd: none }\nnodes:\n",
        ),
    )
    .unwrap();
    let url = server.url();
    let out = run_cli(
        dir.path(),
        &[
            ("SOURCE_DATE_EPOCH", Path::new("0")),
            ("PIKUBE_TEST_KEYS", signer.keys_dir()),
        ],
        &["build", "--all", "--mirror", &url, "--out", "out"],
    );
    assert!(out.status.success(), "build: {}", stderr(&out));
    let img = dir.path().join("out/cp1.img");
    let root = fixture.part(layout.root);
    assert_eq!(
        ext4_mtime(&img, root, "/etc/rancher/k3s/config.yaml", dir.path()),
        0,
        "other files keep SOURCE_DATE_EPOCH"
    );
    for f in ["pikube-argocd-install.yaml", "pikube-argocd-root-app.yaml"] {
        let t = ext4_mtime(
            &img,
            root,
            &format!("/var/lib/rancher/k3s/server/manifests/{f}"),
            dir.path(),
        );
        assert_eq!(t, 946_684_800, "{f}: 2000-01-01, not the epoch");
    }
}
