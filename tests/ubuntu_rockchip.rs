//! End-to-end builds from Ubuntu for Rockchip (the Orange Pi 5's `ubuntu-24.04-rockchip`
//! catalog image): GPT with a 4 MiB FAT32 `CIDATA` cloud-init seed and an ext4
//! `cloudimg-rootfs` booted through extlinux.conf. The fixture has the real layout; the test
//! board (`tests/ubuntu_rockchip/boards`, through `$PIKUBE_BOARDS_DIR`) lists the built-in
//! image, which a real HTTP server serves through `--mirror` with its `.sha256` file.
//!
//! mtools misreads FAT32 volumes that small, so the seed is read with 7-Zip and checked with
//! `fsck.fat`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use pikube_test_oracles::require_tool;
use support::build_env::{K3S_VERSION, KEY, run_cli, serve_k3s, stderr, write_token};
use support::fixtures::{self, Fixture, FixtureOpts, ROCKCHIP_KERNEL_CMDLINE};
use support::http::TestServer;

const CLUSTER: &str = r#"cluster: lab
domain: home.arpa
admin:
  user: ops
  ssh_authorized_keys: ["KEY"]
network: { gateway: 192.168.50.1, dns: [192.168.50.1], prefix: 24 }
nodes:
  - { name: cp1, board: orangepi5-ubuntu-test, role: server, ip: 192.168.50.10 }
  - { name: w1, board: orangepi5-ubuntu-test, role: agent }
"#;

/// The kernel arguments of the test board.
const ARGS: [&str; 3] = ["cgroup_memory=1", "cgroup_enable=memory", "swapaccount=1"];

fn oracles() -> bool {
    require_tool("mkfs.vfat", "dosfstools")
        && require_tool("7z", "p7zip-full")
        && require_tool("fsck.fat", "dosfstools")
        && require_tool("e2fsck", "e2fsprogs")
        && require_tool("debugfs", "e2fsprogs")
        && require_tool("sfdisk", "fdisk")
        && require_tool("sgdisk", "gdisk")
        && require_tool("blkid", "util-linux")
        && require_tool("cloud-init", "cloud-init")
        && require_tool("xz", "xz-utils")
}

struct Env {
    dir: tempfile::TempDir,
    fixture: Fixture,
    _server: TestServer,
    url: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pikube-rockchip")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let fixture = fixtures::ubuntu_rockchip(
            dir.path(),
            FixtureOpts {
                total_mib: 96,
                ..FixtureOpts::default()
            },
        );
        let xz = fixtures::compress(&fixture.image, Compression::Xz);
        let bytes = std::fs::read(&xz).unwrap();
        let server = TestServer::start();
        // The built-in catalog's image, as the test board names it.
        let mut catalog = pikube_image::boards::Catalog::load().unwrap();
        catalog.add_dir(&boards_dir()).unwrap();
        let board = catalog.board("orangepi5-ubuntu-test").unwrap();
        let url = catalog.image_for(board, None).unwrap().url.clone();
        assert_eq!(url, IMAGE_URL);
        let path = |u: &str| u.strip_prefix("https:/").unwrap().to_string();
        let name = url.rsplit('/').next().unwrap();
        let sha = pikube_image::io::sha256_bytes(&bytes);
        server.add(&path(&url), bytes);
        // ubuntu-rockchip's format: `sha256sum NAME` output, two spaces.
        server.add(&path(&format!("{url}.sha256")), format!("{sha}  {name}\n"));
        serve_k3s(
            &server,
            K3S_VERSION,
            b"#!/bin/sh\necho stand-in k3s \"$@\"\n",
            b"airgap",
        );
        std::fs::write(dir.path().join("cluster.yaml"), CLUSTER.replace("KEY", KEY)).unwrap();
        write_token(dir.path());
        let url = server.url();
        Env {
            dir,
            fixture,
            _server: server,
            url,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        run_cli(
            self.dir.path(),
            &[("PIKUBE_BOARDS_DIR", boards_dir().as_path())],
            args,
        )
    }
}

const IMAGE_URL: &str = "https://github.com/Joshua-Riek/ubuntu-rockchip/releases/download/v2.4.2/ubuntu-24.04-preinstalled-server-arm64-orangepi-5.img.xz";

fn boards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ubuntu_rockchip/boards")
}

/// `sfdisk --json` partitions: (start, size, type, uuid, name).
fn gpt_entries(img: &Path) -> (String, Vec<[String; 5]>) {
    let v = fixtures::sfdisk_json(img);
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            ["start", "size", "type", "uuid", "name"].map(|k| match &p[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .collect();
    (t["id"].as_str().unwrap().to_string(), parts)
}

/// The arguments of every `append` line of an extlinux.conf.
fn append_lines(conf: &str) -> Vec<Vec<&str>> {
    conf.lines()
        .filter_map(|l| l.trim_start().strip_prefix("append "))
        .map(|a| a.split_whitespace().collect())
        .collect()
}

fn count(words: &[&str], w: &str) -> usize {
    words.iter().filter(|x| **x == w).count()
}

#[test]
fn ubuntu_rockchip_server_and_agent_keep_the_layout_and_boot_with_the_arguments() {
    if !oracles() {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "build", "--mirror", &env.url, "--out", "out", "--node", "cp1", "--node", "w1",
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let input = std::fs::read(&env.fixture.image).unwrap();
    let seed = env.fixture.part("CIDATA").clone();
    let root = env.fixture.part("cloudimg-rootfs").clone();
    let (input_id, input_parts) = gpt_entries(&env.fixture.image);

    for node in ["cp1", "w1"] {
        let img = env.path(&format!("out/{node}.img"));
        let data = std::fs::read(&img).unwrap();

        // The GPT, the boot loader and everything else before the seed partition are the
        // input's, bit for bit.
        let head = 16 << 20;
        assert_eq!(
            support::sha256_hex(&data[..head]),
            support::sha256_hex(&input[..head]),
            "{node}: bytes before 16 MiB changed"
        );
        let (at, blob) = &env.fixture.raw_blobs[0];
        assert_eq!(*at, 32 * 1024);
        assert!(blob.starts_with(fixtures::ROCKCHIP_UBOOT_MAGIC));
        assert!(data[*at as usize..*at as usize + blob.len()] == blob[..]);

        // Same partitions (starts, sizes, types, GUIDs, names), same filesystem labels and UUIDs.
        assert_eq!(gpt_entries(&img), (input_id.clone(), input_parts.clone()));
        for p in [&seed, &root] {
            let before = fixtures::blkid(&env.fixture.image, p.start);
            let after = fixtures::blkid(&img, p.start);
            for k in ["TYPE", "LABEL", "UUID"] {
                assert_eq!(after.get(k), before.get(k), "{node}: {k} of {}", p.label);
            }
        }
        let (ok, text) = fixtures::check(Command::new("sgdisk").arg("-v").arg(&img));
        assert!(
            ok && text.contains("No problems found"),
            "{node}: sgdisk -v: {text}"
        );
        fixtures::assert_ext4_clean(&img, &root, env.dir.path());
        fixtures::assert_fat_clean(&img, &seed, env.dir.path());

        // The seed, read through the kernel: the node's own, and schema-valid.
        let seed_file = |n: &str| {
            String::from_utf8(fixtures::fat_read_7z(&img, &seed, n, env.dir.path())).unwrap()
        };
        let (user_data, meta_data, network) = (
            seed_file("user-data"),
            seed_file("meta-data"),
            seed_file("network-config"),
        );
        let ud_path = env.path(&format!("{node}.user-data"));
        std::fs::write(&ud_path, &user_data).unwrap();
        let o = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&ud_path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{node}: cloud-init schema: {}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        assert!(
            user_data.contains(&format!("hostname: {node}")),
            "{user_data}"
        );
        assert!(user_data.contains("name: ops"), "{user_data}");
        assert!(
            meta_data.contains(&format!("local-hostname: {node}")),
            "{meta_data}"
        );
        assert!(meta_data.contains("instance-id: "), "{meta_data}");
        assert!(network.contains("version: 2"), "{network}");

        // Kernel arguments: once in every entry of extlinux.conf and in /etc/kernel/cmdline,
        // the rest of both files as they were.
        let read = |p: &str| {
            String::from_utf8(fixtures::ext4_read(&img, &root, p, env.dir.path())).unwrap()
        };
        let conf = read("/boot/extlinux/extlinux.conf");
        let original_conf =
            fixtures::rockchip_extlinux_conf(&env.fixture.root_uuid, "6.1.0-1025-rockchip");
        let appends = append_lines(&conf);
        assert_eq!(appends.len(), 2, "{conf}");
        for words in &appends {
            for a in ARGS {
                assert_eq!(count(words, a), 1, "{node}: {a} in {words:?}");
            }
            assert_eq!(words[0], format!("root=UUID={}", env.fixture.root_uuid));
        }
        assert_eq!(*appends[1].iter().rev().nth(1).unwrap(), "single");
        let other = |t: &str| {
            t.lines()
                .filter(|l| !l.trim_start().starts_with("append"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(other(&conf), other(&original_conf));
        let cmdline = read("/etc/kernel/cmdline");
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        for a in ARGS {
            assert_eq!(count(&words, a), 1, "{node}: {a} in {cmdline:?}");
        }
        assert!(cmdline.starts_with(ROCKCHIP_KERNEL_CMDLINE), "{cmdline:?}");
        assert_eq!(cmdline.lines().count(), 1, "{cmdline:?}");
    }
}

#[test]
fn ubuntu_rockchip_plan_and_inspect_show_the_boot_files() {
    if !oracles() {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "build",
        "--mirror",
        &env.url,
        "--out",
        "out",
        "--node",
        "w1",
        "--dry-run",
    ]);
    assert!(out.status.success(), "dry run failed: {}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    for p in [
        "/boot/extlinux/extlinux.conf",
        "/etc/kernel/cmdline",
        "/user-data",
    ] {
        assert!(plan.contains(p), "{p} in the plan:\n{plan}");
    }
    let out = env.run(&[
        "build", "--mirror", &env.url, "--out", "out", "--node", "w1",
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let out = env.run(&["inspect", "out/w1.img"]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CIDATA") && text.contains("cloudimg-rootfs"),
        "{text}"
    );
    let cmdline = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("cmdline: "))
        .unwrap_or_else(|| panic!("no cmdline in:\n{text}"));
    assert!(
        cmdline.starts_with(&format!("root=UUID={} rootwait", env.fixture.root_uuid))
            && cmdline.ends_with("cgroup_enable=memory swapaccount=1"),
        "{cmdline}"
    );
}
