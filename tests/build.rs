//! End-to-end builds through the command line, against fixture images that mimic the real
//! Ubuntu 24.04 raspi layout (its nodes name `os: ubuntu-24.04`; the other layouts are built
//! in `tests/raspberry_pi.rs`), served by a real HTTP server on 127.0.0.1 through `--mirror`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use support::build_env::{
    K3S_VERSION, KEY, TOKEN, e2fsck_clean, run_cli, serve_k3s, stderr, walk, write_token,
};
use support::fixtures::{self, Fixture, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

const CATALOG_DIR: &str = "cdimage.ubuntu.com/releases/24.04.3/release";
const CATALOG_FILE: &str = "ubuntu-24.04.3-preinstalled-server-arm64+raspi.img.xz";

fn cluster_yaml(extra_nodes: &str) -> String {
    format!(
        r#"cluster: lab
domain: home.arpa
timezone: Europe/Berlin
admin:
  user: ops
  ssh_authorized_keys: ["{KEY}"]
network: {{ gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }}
nodes:
  - {{ name: cp1, board: rpi4, os: ubuntu-24.04, role: server, ip: 192.168.50.10 }}
  - {{ name: w1, board: rpi400, os: ubuntu-24.04, role: worker }}
{extra_nodes}"#
    )
}

struct Env {
    dir: tempfile::TempDir,
    fixture: Fixture,
    xz: PathBuf,
    server: TestServer,
    /// Signs the catalog's checksum list in place of Ubuntu's key (`$PIKUBE_TEST_KEYS`).
    signer: CatalogSigner,
}

impl Env {
    fn new(opts: FixtureOpts) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pikube-build")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let fixture = fixtures::ubuntu_raspi(dir.path(), opts);
        let xz = fixtures::compress(&fixture.image, Compression::Xz);
        let bytes = std::fs::read(&xz).unwrap();
        let server = TestServer::start();
        let sha = pikube_image::io::sha256_bytes(&bytes);
        server.add(&format!("/{CATALOG_DIR}/{CATALOG_FILE}"), bytes);
        let signer = CatalogSigner::new();
        serve_sums(
            &server,
            &signer,
            format!(
                "0000000000000000000000000000000000000000000000000000000000000000 *other.img.xz\n{sha} *{CATALOG_FILE}\n"
            ),
        );
        std::fs::write(dir.path().join("cluster.yaml"), cluster_yaml("")).unwrap();
        write_token(dir.path());
        serve_k3s(
            &server,
            K3S_VERSION,
            b"#!/bin/sh\necho stand-in k3s \"$@\"\n",
            b"airgap",
        );
        Env {
            dir,
            fixture,
            xz,
            server,
            signer,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        run_cli(
            self.dir.path(),
            &[("PIKUBE_TEST_KEYS", self.signer.keys_dir())],
            args,
        )
    }

    fn build(&self, extra: &[&str]) -> Output {
        let url = self.server.url();
        let mut args = vec!["build", "--mirror", &url, "--out", "out"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn cache_blobs(&self) -> Vec<PathBuf> {
        walk(&self.path("cache"))
            .into_iter()
            // Lock files and the standard CACHEDIR.TAG marker hold no content.
            .filter(|p| !p.to_string_lossy().contains("/locks/") && !p.ends_with("CACHEDIR.TAG"))
            .collect()
    }
}

/// Serves the catalog image's checksum list, and its signature as the catalog expects.
fn serve_sums(server: &TestServer, signer: &CatalogSigner, list: String) {
    server.add(
        &format!("/{CATALOG_DIR}/SHA256SUMS.gpg"),
        signer.sign(list.as_bytes()),
    );
    server.add(&format!("/{CATALOG_DIR}/SHA256SUMS"), list);
}

fn mtype(img: &Path, offset: u64, path: &str) -> Vec<u8> {
    let o = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(format!("::{path}"))
        .output()
        .expect("mtype (mtools) is installed");
    assert!(o.status.success(), "mtype {path}: {}", stderr(&o));
    o.stdout
}

fn dump_without_device(img: &Path) -> String {
    fixtures::sfdisk_dump(img)
        .lines()
        .filter(|l| !l.starts_with("device:"))
        .map(|l| {
            l.split_once(':')
                .map(|(_, r)| r.to_string())
                .unwrap_or(l.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn instance_id(img: &Path, offset: u64) -> String {
    let meta = String::from_utf8(mtype(img, offset, "meta-data")).unwrap();
    meta.lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .expect("instance-id in meta-data")
        .trim()
        .to_string()
}

#[test]
fn build_through_mirror_gives_a_valid_per_node_image() {
    let env = Env::new(FixtureOpts::default());
    let out = env.build(&["--node", "cp1", "--node", "w1"]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let img = env.path("out/cp1.img");
    let boot = env.fixture.part("system-boot").clone();

    // Checksums and manifest.
    let o = Command::new("sha256sum")
        .arg("-c")
        .arg("cp1.img.sha256")
        .current_dir(env.path("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "sha256sum -c: {}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("out/cp1.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["node"], "cp1");
    assert_eq!(manifest["role"], "server");
    assert_eq!(
        manifest["base"]["url"],
        format!("https://{CATALOG_DIR}/{CATALOG_FILE}")
    );
    assert_eq!(
        manifest["base"]["sha256"],
        pikube_image::io::sha256_bytes(&std::fs::read(&env.xz).unwrap())
    );
    let files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in [
        "/meta-data",
        "/user-data",
        "/network-config",
        "/cmdline.txt",
        "/usr/local/bin/k3s",
        "/etc/rancher/k3s/config.yaml",
        "/etc/systemd/system/k3s.service",
        "/etc/ssh/ssh_host_ed25519_key",
    ] {
        assert!(files.contains(&want), "{want} in {files:?}");
    }

    // Partition table identical, FAT clean.
    assert_eq!(
        dump_without_device(&img),
        dump_without_device(&env.fixture.image)
    );
    let part = env.path("boot.part");
    let data = std::fs::read(&img).unwrap();
    std::fs::write(
        &part,
        &data[boot.start as usize..(boot.start + boot.size) as usize],
    )
    .unwrap();
    let o = Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck.fat -n: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );

    // Bytes outside the partitions (MBR, gaps, anything a boot loader keeps there) are
    // identical to the input; inside, files the plan does not touch read back unchanged.
    let input = std::fs::read(&env.fixture.image).unwrap();
    assert_eq!(data.len(), input.len());
    let root = env.fixture.part("writable").clone();
    let mut outside = vec![(0usize, boot.start as usize)];
    outside.push(((boot.start + boot.size) as usize, root.start as usize));
    outside.push(((root.start + root.size) as usize, data.len()));
    for (a, b) in outside {
        assert!(
            data[a..b] == input[a..b],
            "bytes {a}..{b} outside the partitions changed"
        );
    }
    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let rootfs = pikube_image::fs::ext4_reader(&file, disk.by_label("writable").unwrap()).unwrap();
    let mut checked = 0;
    for (key, sha) in &env.fixture.files {
        if let Some(f) = key.strip_prefix("system-boot:/") {
            if ["user-data", "meta-data", "network-config", "cmdline.txt"].contains(&f) {
                continue;
            }
            let got = pikube_image::io::sha256_bytes(&mtype(&img, boot.start, f));
            assert_eq!(&got, sha, "{f} changed");
            checked += 1;
        } else if let Some(p) = key.strip_prefix("writable:") {
            let got = pikube_image::io::sha256_bytes(&rootfs.read(p).unwrap());
            assert_eq!(&got, sha, "{p} changed");
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "the fixture lists the files it placed ({checked})"
    );
    e2fsck_clean(&img, root.start, root.size, &env.path("root.part"));

    // The k3s payload: binary, config per role, unit enabled, airgap images.
    let cfg = rootfs
        .read_to_string("/etc/rancher/k3s/config.yaml")
        .unwrap();
    assert!(
        cfg.contains("cluster-init: true") && cfg.contains(TOKEN),
        "{cfg}"
    );
    let m = rootfs.metadata("/etc/rancher/k3s/config.yaml").unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(
        rootfs.metadata("/usr/local/bin/k3s").unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        rootfs
            .read_link("/etc/systemd/system/multi-user.target.wants/k3s.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/etc/systemd/system/k3s.service"
    );
    assert_eq!(
        rootfs
            .read("/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst")
            .unwrap(),
        b"airgap"
    );
    let w1 = env.path("out/w1.img");
    let w1_file = std::fs::File::open(&w1).unwrap();
    let w1_disk = pikube_image::disk::Disk::read(&w1).unwrap();
    let w1_root =
        pikube_image::fs::ext4_reader(&w1_file, w1_disk.by_label("writable").unwrap()).unwrap();
    let cfg = w1_root
        .read_to_string("/etc/rancher/k3s/config.yaml")
        .unwrap();
    assert!(
        cfg.contains("server: https://192.168.50.10:6443") && !cfg.contains("cluster-init"),
        "{cfg}"
    );
    assert!(
        w1_root
            .exists("/etc/systemd/system/k3s-agent.service")
            .unwrap()
    );

    // known_hosts matches the host keys inside the images.
    let kh = std::fs::read_to_string(env.path("out/known_hosts")).unwrap();
    for (name, fs) in [("cp1", &rootfs), ("w1", &w1_root)] {
        let public = fs
            .read_to_string("/etc/ssh/ssh_host_ed25519_key.pub")
            .unwrap();
        let key = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            kh.lines().any(
                |l| l.split(' ').next().unwrap().split(',').any(|h| h == name) && l.ends_with(&key)
            ),
            "{name} in {kh}"
        );
        let private = fs.metadata("/etc/ssh/ssh_host_ed25519_key").unwrap();
        assert_eq!(private.mode() & 0o777, 0o600);
    }
    assert!(
        kh.contains("cp1,cp1.home.arpa,192.168.50.10 ssh-ed25519 "),
        "{kh}"
    );
    let manifest_text = std::fs::read_to_string(env.path("out/cp1.manifest.json")).unwrap();
    assert!(
        !manifest_text.contains(TOKEN),
        "the token never enters the manifest"
    );
    assert!(manifest_text.contains("\"contains_secrets\": true"));

    // Seed: schema-valid, with the node's identity.
    let ud = mtype(&img, boot.start, "user-data");
    let ud_path = env.path("user-data");
    std::fs::write(&ud_path, &ud).unwrap();
    let o = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&ud_path)
        .output()
        .expect("cloud-init is installed");
    assert!(
        o.status.success(),
        "cloud-init schema: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let ud = String::from_utf8(ud).unwrap();
    assert!(ud.starts_with("#cloud-config\n"));
    assert!(
        ud.contains("hostname: cp1") && ud.contains("fqdn: cp1.home.arpa"),
        "{ud}"
    );
    let parsed: serde_json::Value = serde_saphyr::from_str(&ud).unwrap();
    assert_eq!(parsed["users"][0]["ssh_authorized_keys"][0], KEY, "{ud}");
    assert!(ud.contains("ssh_pwauth: false"), "{ud}");
    assert!(ud.contains("lock_passwd: true"), "{ud}");

    let nc_path = env.path("network-config");
    std::fs::write(&nc_path, mtype(&img, boot.start, "network-config")).unwrap();
    let o = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/oracles/network_config.py"
    ))
    .arg(&nc_path)
    .output()
    .unwrap();
    assert!(
        o.status.success(),
        "cloud-init network parser: {}",
        stderr(&o)
    );
    let net: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let subnet = &net["interfaces"][0]["subnets"][0];
    assert_eq!(net["interfaces"][0]["name"], "eth0");
    assert_eq!(subnet["type"], "static");
    assert_eq!(subnet["address"], "192.168.50.10");
    assert_eq!(subnet["prefix"], 24);
    assert_eq!(subnet["dns"][0], "192.168.50.2");
    assert_eq!(subnet["routes"][0]["gateway"], "192.168.50.1");

    // The worker uses DHCP.
    let w1 = env.path("out/w1.img");
    std::fs::write(&nc_path, mtype(&w1, boot.start, "network-config")).unwrap();
    let o = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/oracles/network_config.py"
    ))
    .arg(&nc_path)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let net: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(net["interfaces"][0]["subnets"][0]["type"], "dhcp4");

    // Kernel arguments appended once, on one line.
    let cmdline = String::from_utf8(mtype(&img, boot.start, "cmdline.txt")).unwrap();
    assert_eq!(cmdline.lines().count(), 1, "{cmdline}");
    assert_eq!(
        cmdline.matches("cgroup_enable=memory").count(),
        1,
        "{cmdline}"
    );
    assert!(cmdline.contains("root=LABEL=writable") && cmdline.contains("cgroup_memory=1"));

    // Two nodes, two instance-ids; the same node rebuilt keeps its id.
    let id_cp1 = instance_id(&img, boot.start);
    let id_w1 = instance_id(&w1, boot.start);
    assert_ne!(id_cp1, id_w1);
    let hits_before = env.server.total_hits();
    let out = env.build(&["--node", "cp1", "--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.server.total_hits(),
        hits_before,
        "a rebuild is served from the cache"
    );
    assert_eq!(instance_id(&img, boot.start), id_cp1);

    // inspect reads it back.
    let o = env.run(&["inspect", "out/cp1.img"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("hostname: cp1") && text.contains(&id_cp1),
        "{text}"
    );
    assert!(text.contains("Ubuntu 24.04"), "{text}");
}

#[test]
fn dropped_connection_is_resumed() {
    let env = Env::new(FixtureOpts::default());
    let path = format!("/{CATALOG_DIR}/{CATALOG_FILE}");
    let size = std::fs::metadata(&env.xz).unwrap().len() as usize;
    env.server.set_drop_after(&path, size / 2, 1);
    let out = env.build(&["--node", "w1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ranged = env
        .server
        .requests()
        .iter()
        .any(|r| r.path == path && r.header("range").is_some());
    assert!(ranged, "the second request resumed with a Range header");
    assert!(env.path("out/w1.img").exists());
}

#[test]
fn wrong_checksum_leaves_nothing_behind() {
    let env = Env::new(FixtureOpts::default());
    serve_sums(
        &env.server,
        &env.signer,
        format!("{} *{CATALOG_FILE}\n", "ab".repeat(32)),
    );
    let out = env.build(&["--node", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("checksum") && err.contains(CATALOG_FILE),
        "{err}"
    );
    // Only the k3s release files, which verified, are cached; nothing of the image.
    let sha = pikube_image::io::sha256_bytes;
    let k3s_dir = format!(
        "/github.com/k3s-io/k3s/releases/download/{}",
        K3S_VERSION.replace('+', "%2B")
    );
    let allowed: Vec<String> = [
        "k3s-arm64",
        "k3s-airgap-images-arm64.tar.zst",
        "sha256sum-arm64.txt",
    ]
    .iter()
    .map(|f| {
        let url = format!("{}{k3s_dir}/{f}", env.server.url());
        sha(&reqwest::blocking::get(&url).unwrap().bytes().unwrap())
    })
    .collect();
    for blob in env.cache_blobs() {
        if blob.to_string_lossy().contains("/blobs/") {
            let name = blob.file_name().unwrap().to_string_lossy().to_string();
            assert!(allowed.contains(&name), "unexpected cached blob {blob:?}");
        }
    }
    assert!(
        walk(&env.path("cache/partial")).is_empty() && walk(&env.path("cache/tmp")).is_empty(),
        "no partial download is kept"
    );
    assert!(
        walk(&env.path("out")).is_empty(),
        "output: {:?}",
        walk(&env.path("out"))
    );
}

#[test]
fn truncated_xz_fails_without_output() {
    let env = Env::new(FixtureOpts::default());
    let bytes = std::fs::read(&env.xz).unwrap();
    let cut = env.path("cut.img.xz");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = env.run(&[
        "build",
        "--node",
        "w1",
        "--image",
        "cut.img.xz",
        "--out",
        "out",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cut.img.xz"), "{err}");
    assert!(
        walk(&env.path("out")).is_empty(),
        "output: {:?}",
        walk(&env.path("out"))
    );
}

#[test]
fn inventory_errors_name_the_problem() {
    let env = Env::new(FixtureOpts {
        total_mib: 120,
        ..FixtureOpts::default()
    });
    let cases = [
        (
            cluster_yaml("  - { name: x1, board: rpi9, role: agent }\n"),
            vec!["--node", "x1"],
            "unknown board 'rpi9'",
        ),
        (
            cluster_yaml("  - { name: x1, board: rpi4, role: agent, ip: 10.0.0.256 }\n"),
            vec!["--all"],
            "10.0.0.256",
        ),
        (
            cluster_yaml("  - { name: w1, board: rpi4, role: agent }\n"),
            vec!["--all"],
            "duplicate hostname 'w1'",
        ),
        (
            cluster_yaml("").replace("timezone:", "timezon:"),
            vec!["--all"],
            "unknown field `timezon`",
        ),
    ];
    for (yaml, args, want) in cases {
        std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
        let mut all = vec!["build", "--image", "ubuntu-raspi.img", "--out", "out"];
        all.extend(args);
        let out = env.run(&all);
        assert_eq!(out.status.code(), Some(1), "{want}");
        let err = stderr(&out);
        assert!(err.contains(want), "expected '{want}' in: {err}");
        assert!(err.contains("cluster.yaml"), "the file is named: {err}");
    }
    std::fs::remove_file(env.path("cluster.yaml")).unwrap();
    let out = env.run(&["build", "--board", "rpi4", "--role", "worker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pikube-image init"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["build", "--board", "rpi4"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn init_then_adhoc_build_and_dry_run() {
    let env = Env::new(FixtureOpts {
        total_mib: 120,
        ..FixtureOpts::default()
    });
    std::fs::remove_file(env.path("cluster.yaml")).unwrap();
    std::fs::remove_dir_all(env.path("secrets")).unwrap();
    let mirror = env.server.url();
    // init takes the user's key from ~/.ssh.
    let home = env.path("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519.pub"), format!("{KEY}\n")).unwrap();
    let out = run_cli(env.dir.path(), &[("HOME", home.as_path())], &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = std::fs::read_to_string(env.path("secrets/k3s-token")).unwrap();
    let all_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        !all_output.contains(token.trim()),
        "the token is never printed"
    );

    let out = env.run(&[
        "build",
        "--board",
        "rpi4",
        "--role",
        "worker",
        "--name",
        "edge1",
        "--image",
        "ubuntu-raspi.img",
        "--mirror",
        &mirror,
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("edge1")
            && text.contains("/user-data")
            && text.contains("cgroup_enable=memory"),
        "{text}"
    );
    assert!(!env.path("images").exists(), "dry run writes nothing");

    let out = env.run(&[
        "build",
        "--board",
        "rpi4",
        "--role",
        "worker",
        "--image",
        "ubuntu-raspi.img",
        "--mirror",
        &mirror,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = summary["nodes"][0]["node"].as_str().unwrap().to_string();
    assert!(name.starts_with("agent-rpi4-"), "{name}");
    assert!(env.path(&format!("images/{name}.img")).exists());

    // An ad-hoc build that fails after its node's host key was made leaves no key behind
    // for a node that had none, and keeps the keys of a node that had them.
    std::fs::write(env.path("not-a-disk.img"), vec![7u8; 1 << 20]).unwrap();
    let key_dir = |n: &str| env.path(&format!("secrets/ssh/{n}"));
    let existing = std::fs::read(key_dir(&name).join("ssh_host_ed25519_key")).unwrap();
    for (node, had_keys) in [("edge2", false), (name.as_str(), true)] {
        let out = env.run(&[
            "build",
            "--board",
            "rpi4",
            "--role",
            "worker",
            "--name",
            node,
            "--image",
            "not-a-disk.img",
            "--offline",
        ]);
        assert_eq!(out.status.code(), Some(1), "{node}: {}", stderr(&out));
        assert!(stderr(&out).contains("partition table"), "{}", stderr(&out));
        assert_eq!(key_dir(node).exists(), had_keys, "{node}");
    }
    assert_eq!(
        std::fs::read(key_dir(&name).join("ssh_host_ed25519_key")).unwrap(),
        existing,
        "a key that existed is kept as it was"
    );
}

#[test]
fn overlays_land_in_the_root_filesystem() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let env = Env::new(FixtureOpts {
        seed: 11,
        ..FixtureOpts::default()
    });
    let ov = env.path("ov-all");
    std::fs::create_dir_all(ov.join("etc/pikube")).unwrap();
    std::fs::write(ov.join("etc/pikube/motd"), "welcome\n").unwrap();
    std::fs::create_dir_all(ov.join("usr/local/bin")).unwrap();
    std::fs::write(ov.join("usr/local/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        ov.join("usr/local/bin/hello"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    symlink("hello", ov.join("usr/local/bin/hi")).unwrap();
    let node_ov = env.path("ov-cp1");
    std::fs::create_dir_all(node_ov.join("etc/pikube")).unwrap();
    std::fs::write(node_ov.join("etc/pikube/motd"), "cp1 wins\n").unwrap();
    std::fs::write(node_ov.join("etc/pikube/key"), "private").unwrap();
    std::fs::set_permissions(
        node_ov.join("etc/pikube/key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let yaml = cluster_yaml("")
        .replace("nodes:\n", "overlays: { all: [ov-all] }\nnodes:\n")
        .replace(
            "ip: 192.168.50.10 }",
            "ip: 192.168.50.10, overlays: [ov-cp1] }",
        );
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    let out = env.build(&["--node", "cp1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let img = env.path("out/cp1.img");
    let root = env.fixture.part("writable").clone();
    e2fsck_clean(&img, root.start, root.size, &env.path("root.part"));

    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    assert_eq!(
        fs.read("/etc/pikube/motd").unwrap(),
        b"cp1 wins\n",
        "node overlay wins"
    );
    assert_eq!(
        fs.read("/usr/local/bin/hello").unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs.read_link("/usr/local/bin/hi").unwrap().to_str().unwrap(),
        "hello"
    );
    let m = fs.metadata("/usr/local/bin/hello").unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!((m.uid(), m.gid()), (0, 0));
    let k = fs.metadata("/etc/pikube/key").unwrap();
    assert_eq!(k.mode() & 0o7777, 0o600);
    assert_eq!(
        fs.read("/etc/modules-load.d/pikube-k3s.conf").unwrap(),
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/overlays/k3s/etc/modules-load.d/pikube-k3s.conf"
        ))
        .unwrap(),
        "built-in overlay"
    );
    // Files of the base image are still there.
    assert!(
        fs.read_to_string("/etc/os-release")
            .unwrap()
            .contains("Ubuntu")
    );
    let manifest = std::fs::read_to_string(env.path("out/cp1.manifest.json")).unwrap();
    assert!(manifest.contains("\"/usr/local/bin/hi\"") && manifest.contains("\"symlink\""));
}

const ARGOCD_INSTALL: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: applications.argoproj.io\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: argocd-server\n";

#[test]
fn whole_fleet_with_gitops_on_the_first_server_only() {
    let env = Env::new(FixtureOpts {
        seed: 21,
        ..FixtureOpts::default()
    });
    env.server.add(
        "/raw.githubusercontent.com/argoproj/argo-cd/v2.13.3/manifests/install.yaml",
        ARGOCD_INSTALL,
    );
    let yaml = cluster_yaml("  - { name: w2, board: rpi4, os: ubuntu-24.04, role: agent }\n").replace(
        "nodes:\n",
        "gitops: { repo: \"https://git.example.com/lab.git\", revision: main, path: apps, argocd_version: v2.13.3 }\nnodes:\n",
    );
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    let out = env.build(&["--all", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 3);
    let mut images: Vec<String> = walk(&env.path("out"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    images.sort();
    assert_eq!(images, ["cp1.img", "w1.img", "w2.img"]);
    let kh = std::fs::read_to_string(env.path("out/known_hosts")).unwrap();
    assert_eq!(kh.lines().count(), 3, "{kh}");

    for (node, first) in [("cp1", true), ("w1", false), ("w2", false)] {
        let img = env.path(&format!("out/{node}.img"));
        let file = std::fs::File::open(&img).unwrap();
        let disk = pikube_image::disk::Disk::read(&img).unwrap();
        let part = disk.by_label("writable").unwrap();
        let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
        let dir = "/var/lib/rancher/k3s/server/manifests";
        let install = format!("{dir}/pikube-argocd-install.yaml");
        let app = format!("{dir}/pikube-argocd-root-app.yaml");
        assert_eq!(fs.exists(&install).unwrap(), first, "{node}");
        assert_eq!(fs.exists(&app).unwrap(), first, "{node}");
        if first {
            let text = fs.read_to_string(&install).unwrap();
            assert!(
                text.contains("kind: Namespace") && text.contains("namespace: argocd"),
                "{text}"
            );
            let app = fs.read_to_string(&app).unwrap();
            assert!(
                app.contains("repoURL: https://git.example.com/lab.git")
                    && app.contains("selfHeal: true"),
                "{app}"
            );
        }
        e2fsck_clean(&img, part.start, part.size, &env.path("root.part"));
    }
}

#[test]
fn bad_k3s_inputs_fail_without_output() {
    let env = Env::new(FixtureOpts {
        seed: 31,
        total_mib: 120,
        ..FixtureOpts::default()
    });
    // A k3s binary that does not match the release's checksum list.
    let dir = format!(
        "/github.com/k3s-io/k3s/releases/download/{}",
        K3S_VERSION.replace('+', "%2B")
    );
    env.server
        .add(&format!("{dir}/k3s-arm64"), b"tampered".to_vec());
    let out = env.build(&["--node", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("checksum mismatch") && err.contains("k3s-arm64"),
        "{err}"
    );
    assert!(
        walk(&env.path("out")).is_empty(),
        "{:?}",
        walk(&env.path("out"))
    );

    // A k3s version that does not exist.
    let yaml = cluster_yaml("").replace("nodes:\n", "k3s: { version: v9.9.9+k3s9 }\nnodes:\n");
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    let out = env.build(&["--node", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("v9.9.9") && err.contains("not found"), "{err}");
    assert!(
        walk(&env.path("out")).is_empty(),
        "{:?}",
        walk(&env.path("out"))
    );

    // An overlay link that escapes its overlay (with an intact k3s release again).
    serve_k3s(
        &env.server,
        K3S_VERSION,
        b"#!/bin/sh\necho stand-in k3s \"$@\"\n",
        b"airgap",
    );
    std::fs::create_dir_all(env.path("ov/etc")).unwrap();
    std::os::unix::fs::symlink("../../../etc/shadow", env.path("ov/etc/x")).unwrap();
    let yaml = cluster_yaml("").replace("nodes:\n", "overlays: { all: [ov] }\nnodes:\n");
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    let out = env.build(&["--node", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("escapes its overlay"),
        "{}",
        stderr(&out)
    );
    assert!(
        walk(&env.path("out")).is_empty(),
        "{:?}",
        walk(&env.path("out"))
    );

    // A join token others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(env.path("cluster.yaml"), cluster_yaml("")).unwrap();
    std::fs::set_permissions(
        env.path("secrets/k3s-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = env.build(&["--node", "w1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

/// A fixture whose inventory has an overlay file larger than the whole root filesystem:
/// the environment, the root partition before the build, and the file's bytes.
fn too_big_for_the_root(seed: u64) -> (Env, fixtures::PartInfo, Vec<u8>) {
    let env = Env::new(FixtureOpts {
        seed,
        ..FixtureOpts::default()
    });
    let root_before = env.fixture.part("writable").clone();
    let big = support::pseudo_random(140 << 20, seed);
    std::fs::create_dir_all(env.path("ov/opt")).unwrap();
    std::fs::write(env.path("ov/opt/big.bin"), &big).unwrap();
    let yaml = cluster_yaml("").replace("nodes:\n", "overlays: { all: [ov] }\nnodes:\n");
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    (env, root_before, big)
}

#[test]
fn a_payload_that_does_not_fit_grows_the_root_partition() {
    let (env, root_before, big) = too_big_for_the_root(41);
    let out = env.build(&["--node", "w1", "--grow-margin", "64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("grew partition 2"),
        "{}",
        stderr(&out)
    );

    let img = env.path("out/w1.img");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("out/w1.manifest.json")).unwrap()).unwrap();
    let g = &manifest["growth"];
    assert_eq!(g["partition"], 2);
    assert_eq!(g["old_size"], root_before.size);
    let new_size = g["new_size"].as_u64().unwrap();
    // Grown by the shortfall plus the margin: more than the margin alone.
    assert!(new_size > root_before.size + (64 << 20), "{g}");
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(g["image_new_size"].as_u64().unwrap(), len);

    // The table says so, the bytes before the first partition did not move, fsck is clean,
    // the payload reads back, and there is about the margin left.
    let json = support::fixtures::sfdisk_json(&img);
    let p2 = &json["partitiontable"]["partitions"][1];
    assert_eq!(p2["size"].as_u64().unwrap() * 512, new_size);
    assert_eq!(p2["start"].as_u64().unwrap() * 512, root_before.start);
    let data = std::fs::read(&img).unwrap();
    let input = std::fs::read(&env.fixture.image).unwrap();
    let first = env.fixture.part("system-boot").start as usize;
    // Only the 16-byte MBR entry of partition 2 (bytes 462..478) may differ.
    assert!(data[..462] == input[..462] && data[478..first] == input[478..first]);
    assert!(
        data[462..478] != input[462..478],
        "the entry records the new size"
    );
    e2fsck_clean(&img, root_before.start, new_size, &env.path("root.part"));
    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    assert_eq!(part.size, new_size);
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    assert_eq!(
        pikube_image::io::sha256_bytes(&fs.read("/opt/big.bin").unwrap()),
        pikube_image::io::sha256_bytes(&big)
    );
    let ext =
        pikube_ext4::Ext4Fs::open(file.try_clone().unwrap(), part.start, part.size, 0).unwrap();
    let free = ext.free_bytes();
    assert!(
        free > 40 << 20 && free < 200 << 20,
        "free after growth: {free}"
    );
}

/// With no margin, growth must still cover the new block groups' own metadata (bitmaps,
/// inode tables, backups), not only the payload's shortfall.
#[test]
fn a_payload_that_does_not_fit_grows_enough_without_a_margin() {
    let (env, root_before, big) = too_big_for_the_root(43);
    let out = env.build(&["--node", "w1", "--grow-margin", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("grew partition 2"),
        "{}",
        stderr(&out)
    );
    let img = env.path("out/w1.img");
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    e2fsck_clean(&img, root_before.start, part.size, &env.path("root.part"));
    let file = std::fs::File::open(&img).unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    assert_eq!(
        pikube_image::io::sha256_bytes(&fs.read("/opt/big.bin").unwrap()),
        pikube_image::io::sha256_bytes(&big)
    );
}

#[test]
fn nodes_derive_from_one_prepared_base_in_parallel_and_in_shards() {
    let env = Env::new(FixtureOpts {
        seed: 51,
        ..FixtureOpts::default()
    });
    let extra = "  - { name: w2, board: rpi4, os: ubuntu-24.04, role: agent }\n  - { name: w3, board: rpi4, os: ubuntu-24.04, role: agent }\n";
    std::fs::write(env.path("cluster.yaml"), cluster_yaml(extra)).unwrap();
    // Shards split the inventory deterministically.
    let out = env.build(&["--all", "--shard", "2/2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1", "w3"]);
    // The agents' prepared base now exists: the rest of the fleet reuses it, in parallel.
    let out = env.build(&["--all", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("using prepared base").count(), 1, "{err}");
    let prepared = walk(&env.path("cache/prepared"))
        .into_iter()
        .filter(|p| p.ends_with("base.img"))
        .count();
    assert_eq!(prepared, 2, "one prepared base per role in a fleet build");
    // Each node image still carries its own identity and passes the checks.
    let boot = env.fixture.part("system-boot").clone();
    let root = env.fixture.part("writable").clone();
    let mut ids = std::collections::BTreeSet::new();
    for n in ["cp1", "w1", "w2", "w3"] {
        let img = env.path(&format!("out/{n}.img"));
        let meta = String::from_utf8(mtype(&img, boot.start, "meta-data")).unwrap();
        assert!(meta.contains(&format!("local-hostname: {n}")), "{meta}");
        ids.insert(instance_id(&img, boot.start));
        let disk = pikube_image::disk::Disk::read(&img).unwrap();
        let part = disk.by_label("writable").unwrap();
        e2fsck_clean(&img, part.start, part.size, &env.path("root.part"));
        let file = std::fs::File::open(&img).unwrap();
        let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
        let cfg = fs.read_to_string("/etc/rancher/k3s/config.yaml").unwrap();
        assert!(cfg.contains(&format!("node-name: {n}")), "{cfg}");
        let _ = root.start;
    }
    assert_eq!(ids.len(), 4, "every node has its own instance-id");
    // Rebuilding a node from the cache gives the same image when the time is fixed.
    let fixed = |args: &[&str]| {
        let url = env.server.url();
        let mut all = vec!["build", "--mirror", &url, "--out", "out2"];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_pikube-image"))
            .args(&all)
            .current_dir(env.path(""))
            .env("PIKUBE_CACHE_DIR", env.path("cache"))
            .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap()
    };
    let a = fixed(&["--node", "w2"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let sha_a = std::fs::read_to_string(env.path("out2/w2.img.sha256")).unwrap();
    std::fs::remove_dir_all(env.path("out2")).unwrap();
    let b = fixed(&["--node", "w2"]);
    assert!(b.status.success(), "{}", stderr(&b));
    let sha_b = std::fs::read_to_string(env.path("out2/w2.img.sha256")).unwrap();
    assert_eq!(
        sha_a, sha_b,
        "same inputs and SOURCE_DATE_EPOCH, same image"
    );
}

/// A node whose own files do not fit in the prepared base its role shares is built from
/// the base image on its own (grown to fit); the rest of the fleet still derives from the
/// prepared base, and every output agrees with its manifest and passes fsck.
#[test]
fn a_node_too_big_for_the_prepared_base_is_built_on_its_own() {
    let env = Env::new(FixtureOpts {
        seed: 43,
        ..FixtureOpts::default()
    });
    let big = support::pseudo_random(140 << 20, 43);
    std::fs::create_dir_all(env.path("big/opt")).unwrap();
    std::fs::write(env.path("big/opt/big.bin"), &big).unwrap();
    let extra = "  - { name: w2, board: rpi4, os: ubuntu-24.04, role: agent, overlays: [big] }\n";
    std::fs::write(env.path("cluster.yaml"), cluster_yaml(extra)).unwrap();
    let out = env.build(&["--all", "--jobs", "2", "--format", "raw,zst"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the files of node 'w2' do not fit in its prepared base"),
        "{err}"
    );
    let root = env.fixture.part("writable").clone();
    for n in ["cp1", "w1", "w2"] {
        let img = env.path(&format!("out/{n}.img"));
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.path(&format!("out/{n}.manifest.json"))).unwrap(),
        )
        .unwrap();
        let grown = !manifest["growth"].is_null();
        assert_eq!(grown, n == "w2", "{n}: {}", manifest["growth"]);
        let sha = pikube_image::io::sha256_bytes(&std::fs::read(&img).unwrap());
        assert_eq!(manifest["image"]["sha256"], sha.as_str(), "{n}");
        let disk = pikube_image::disk::Disk::read(&img).unwrap();
        let part = disk.by_label("writable").unwrap();
        assert_eq!(part.size > root.size, grown, "{n}");
        e2fsck_clean(&img, part.start, part.size, &env.path("root.part"));
        let file = std::fs::File::open(&img).unwrap();
        let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
        let cfg = fs.read_to_string("/etc/rancher/k3s/config.yaml").unwrap();
        assert!(cfg.contains(&format!("node-name: {n}")), "{cfg}");
        match n {
            "w2" => assert_eq!(
                pikube_image::io::sha256_bytes(&fs.read("/opt/big.bin").unwrap()),
                pikube_image::io::sha256_bytes(&big)
            ),
            _ => assert!(!fs.exists("/opt/big.bin").unwrap(), "{n}"),
        }
        // The compressed image holds the same bytes, whichever way it was made.
        let zst = std::fs::read(env.path(&format!("out/{n}.img.zst"))).unwrap();
        let raw = zstd::decode_all(&zst[..]).unwrap();
        assert_eq!(pikube_image::io::sha256_bytes(&raw), sha, "{n}");
    }
}

#[test]
fn container_images_are_pulled_for_the_board_and_preloaded() {
    use support::registry::{Registry, TestImage, build_layout};
    let Some(reg) = Registry::start() else {
        return;
    };
    let push = |repo_tag: &str, platforms: &[&str], seed: u64| {
        let layout = tempfile::tempdir().unwrap();
        let images: Vec<TestImage> = platforms.iter().map(|p| TestImage::new(p, seed)).collect();
        build_layout(layout.path(), "1", &images);
        reg.push_layout(layout.path(), "1", repo_tag).unwrap();
    };
    push(
        "test/multi:1",
        &["linux/amd64", "linux/arm64", "linux/arm/v7"],
        61,
    );
    push("test/solo:1", &["linux/arm64"], 62);
    let host = reg.host();
    let env = Env::new(FixtureOpts {
        seed: 61,
        ..FixtureOpts::default()
    });
    let yaml = cluster_yaml("").replace(
        "nodes:\n",
        &format!(
            "images: {{ all: [\"{host}/test/multi:1\"], insecure_registries: [\"{host}\"] }}\nnodes:\n"
        ),
    );
    let yaml = yaml.replace(
        "ip: 192.168.50.10 }",
        &format!("ip: 192.168.50.10, images: [\"{host}/test/solo:1\"] }}"),
    );
    std::fs::write(env.path("cluster.yaml"), &yaml).unwrap();
    let out = env.build(&["--node", "cp1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("pulled"), "a pull summary is shown: {err}");

    // images.lock pins both tags.
    let lock = std::fs::read_to_string(env.path("images.lock")).unwrap();
    assert!(
        lock.contains(&format!("{host}/test/multi:1")) && lock.contains("sha256:"),
        "{lock}"
    );

    // The role archive in the root fs holds the arm64 manifest of the multi-platform image.
    let img = env.path("out/cp1.img");
    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    let dir = "/var/lib/rancher/k3s/agent/images";
    let archive = fs
        .read(format!("{dir}/pikube-role-images.tar.zst").as_str())
        .unwrap();
    assert!(
        fs.exists(format!("{dir}/pikube-node-images.tar.zst").as_str())
            .unwrap()
    );
    let zst = env.path("role.tar.zst");
    std::fs::write(&zst, &archive).unwrap();
    let tar = env.path("role.tar");
    let o = Command::new("zstd")
        .args(["-q", "-d", "-f", "-o"])
        .arg(&tar)
        .arg(&zst)
        .output()
        .unwrap();
    assert!(o.status.success(), "zstd -d: {}", stderr(&o));
    let index = reg.inspect_raw("test/multi:1");
    let arm64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let want: Vec<String> = reg.inspect_raw(&format!("test/multi@{arm64}"))["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let copied = env.path("copied");
    let o = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}:1", tar.display()))
        .arg(format!("dir:{}", copied.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("manifest.json")).unwrap()).unwrap();
    let got: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "the arm64 layers, as the registry has them");

    // Another node of the same role pulls nothing new; offline with an empty cache names
    // the missing images.
    let out = env.build(&["--node", "w1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 B pulled"), "{}", stderr(&out));
    let empty = env.path("empty-cache");
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args([
            "build",
            "--node",
            "w1",
            "--offline",
            "--out",
            "out3",
            "--image",
            "ubuntu-raspi.img",
        ])
        .current_dir(env.path(""))
        .env("PIKUBE_CACHE_DIR", &empty)
        .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("offline") || e.contains("not in the cache"),
        "{e}"
    );
}

#[test]
fn an_interrupted_build_leaves_no_partial_output() {
    let env = Env::new(FixtureOpts {
        seed: 71,
        total_mib: 300,
        fill_mib: 60,
        ..FixtureOpts::default()
    });
    // Warm the cache, so the interrupted run spends its time writing outputs.
    let url = env.server.url();
    let out = env.run(&["build", "--mirror", &url, "--out", "warm", "--node", "w1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args([
            "build", "--mirror", &url, "--out", "out", "--node", "cp1", "--node", "w1",
        ])
        .current_dir(env.path(""))
        .env("PIKUBE_CACHE_DIR", env.path("cache"))
        .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let partial = loop {
        let found = walk(&env.path("out"))
            .into_iter()
            .chain(walk(&env.path("cache/prepared")))
            .find(|p| {
                p.to_string_lossy().contains(".partial-") || p.to_string_lossy().contains(".tmp-")
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "no partial output appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted builds exit 130");
    assert!(!partial.exists(), "{} was left behind", partial.display());
    let left: Vec<PathBuf> = walk(&env.path("out"))
        .into_iter()
        .chain(walk(&env.path("cache/prepared")))
        .filter(|p| {
            p.to_string_lossy().contains(".partial-") || p.to_string_lossy().contains(".tmp-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `name -> sha256` from a SHA256SUMS file.
fn sums(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, n) = l.split_once("  ").unwrap();
            (n.to_string(), h.to_string())
        })
        .collect()
}

#[test]
fn fleet_outputs_are_reproducible_and_flashable() {
    let env = Env::new(FixtureOpts {
        seed: 81,
        ..FixtureOpts::default()
    });
    std::fs::write(
        env.path("cluster.yaml"),
        cluster_yaml(
            "  - { name: w2, board: rpi4, os: ubuntu-24.04, role: agent, ip: 192.168.50.22 }\n",
        ),
    )
    .unwrap();
    let url = env.server.url();
    let build_in = |dir: &Path, cache: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
            .args([
                "build",
                "--all",
                "--mirror",
                &url,
                "--out",
                "out",
                "--format",
                "raw,zst,xz,bmap",
                "--jobs",
                "2",
            ])
            .current_dir(dir)
            .env("PIKUBE_CACHE_DIR", cache)
            .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // A second checkout elsewhere, with the same inventory and secrets, and its own cache.
    let other = env.path("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(env.path("cluster.yaml"), other.join("cluster.yaml")).unwrap();
    build_in(env.path("").as_path(), &env.path("cache"));
    let copy = Command::new("cp")
        .args(["-a"])
        .arg(env.path("secrets"))
        .arg(&other)
        .status()
        .unwrap();
    assert!(copy.success());
    build_in(&other, &env.path("cache2"));

    let a = sums(&env.path("out/SHA256SUMS"));
    let b = sums(&other.join("out/SHA256SUMS"));
    for n in ["cp1", "w1", "w2"] {
        for f in [
            format!("{n}.img"),
            format!("{n}.img.zst"),
            format!("{n}.img.xz"),
            format!("{n}.bmap"),
        ] {
            assert!(a.contains_key(&f), "{f} in SHA256SUMS");
        }
    }
    assert_eq!(a, b, "same inputs, same outputs, byte for byte");
    let o = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(env.path("out"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Compressed outputs are standard files holding exactly the raw image.
    let out = env.path("out");
    for (tool, ext) in [("zstd", "zst"), ("xz", "xz")] {
        let f = out.join(format!("w1.img.{ext}"));
        let t = Command::new(tool).arg("-t").arg(&f).output().unwrap();
        assert!(t.status.success(), "{tool} -t: {}", stderr(&t));
        let d = Command::new(tool).args(["-dc"]).arg(&f).output().unwrap();
        assert!(d.status.success());
        assert_eq!(
            pikube_image::io::sha256_bytes(&d.stdout),
            a["w1.img"],
            "{ext} content"
        );
    }
    // inspect tells the cards apart, from the compressed image.
    let o = env.run(&["inspect", "out/w1.img.zst"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains("node w1 (agent) of cluster lab, board rpi4")
            && shown.contains(&format!(
                "k3s: {K3S_VERSION}, joins https://192.168.50.10:6443"
            ))
            && shown.contains("admin user: ops")
            && shown.contains("address: DHCP"),
        "{shown}"
    );
    // It decodes only the start it needs: garbage after the compressed stream, which
    // fails a whole decode, is never reached.
    let raw_size = std::fs::metadata(out.join("w1.img")).unwrap().len();
    for ext in ["zst", "xz"] {
        let f = env.path(&format!("w1-tail.img.{ext}"));
        let mut bytes = std::fs::read(out.join(format!("w1.img.{ext}"))).unwrap();
        bytes.extend(std::iter::repeat_n(0xA5u8, 1 << 20));
        std::fs::write(&f, bytes).unwrap();
        let tool = if ext == "zst" { "zstd" } else { "xz" };
        let t = Command::new(tool).arg("-t").arg(&f).output().unwrap();
        assert!(!t.status.success(), "{tool} -t fails on the tail");
        let o = env.run(&["inspect", "--json", f.to_str().unwrap()]);
        assert!(o.status.success(), "{ext}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let node = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|p| p["node"].as_object())
            .unwrap_or_else(|| panic!("{ext}: node identity in {v}"));
        assert_eq!(node["node"], "w1", "{v}");
        let decoded = v["decoded"].as_u64().unwrap();
        assert!(decoded < raw_size, "{ext}: decoded {decoded} of {raw_size}");
        assert_eq!(v["size"].as_u64(), Some(raw_size), "{v}");
    }
    // bmaptool flashes the image onto a file with the same content.
    let target = env.path("card.bin");
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(out.join("w1.bmap"))
        .arg(out.join("w1.img"))
        .arg(&target)
        .output()
        .expect("bmaptool (bmap-tools) is installed");
    assert!(o.status.success(), "bmaptool copy: {}", stderr(&o));
    let card = pikube_image::io::sha256_reader(std::fs::File::open(&target).unwrap()).unwrap();
    assert_eq!(card, a["w1.img"]);

    // One node's address changes: only that node's outputs change.
    let yaml = std::fs::read_to_string(other.join("cluster.yaml"))
        .unwrap()
        .replace("192.168.50.22", "192.168.50.23");
    std::fs::write(other.join("cluster.yaml"), yaml).unwrap();
    build_in(&other, &env.path("cache2"));
    let c = sums(&other.join("out/SHA256SUMS"));
    for (name, digest) in &a {
        let changed = c.get(name) != Some(digest);
        let expect_change = name.starts_with("w2.") || name == "known_hosts";
        if name == "known_hosts" {
            continue; // lists the new address
        }
        assert_eq!(changed, expect_change, "{name}");
    }
}

#[test]
fn outputs_and_cache_entries_holding_secrets_are_private_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new(FixtureOpts {
        seed: 93,
        ..FixtureOpts::default()
    });
    let url = env.server.url();
    let out = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_pikube-image"))
        .args([
            "build",
            "--mirror",
            &url,
            "--out",
            "out",
            "--all",
            "--format",
            "raw,zst,bmap",
        ])
        .current_dir(env.path(""))
        .env("PIKUBE_CACHE_DIR", env.path("cache"))
        .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(&env.path("out")),
        0o700,
        "the output directory holds secrets"
    );
    for node in ["cp1", "w1"] {
        for secret in [format!("{node}.img"), format!("{node}.img.zst")] {
            assert_eq!(mode(&env.path(&format!("out/{secret}"))), 0o600, "{secret}");
        }
        for public in [
            format!("{node}.img.sha256"),
            format!("{node}.img.zst.sha256"),
            format!("{node}.bmap"),
            format!("{node}.manifest.json"),
        ] {
            assert_eq!(mode(&env.path(&format!("out/{public}"))), 0o644, "{public}");
        }
        let keys = env.path(&format!("secrets/ssh/{node}"));
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join("ssh_host_ed25519_key")), 0o600);
        assert_eq!(mode(&keys.join("ssh_host_ed25519_key.pub")), 0o644);
    }
    for public in ["SHA256SUMS", "known_hosts"] {
        assert_eq!(mode(&env.path(&format!("out/{public}"))), 0o644, "{public}");
    }
    // The prepared base holds the role's secrets (the join token): its entry is private.
    let prepared = env.path("cache/prepared");
    let entries: Vec<PathBuf> = std::fs::read_dir(&prepared)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(!entries.is_empty(), "a fleet build prepares a base");
    for entry in entries {
        assert_eq!(mode(&entry), 0o700, "{}", entry.display());
        let mut stack = vec![entry];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{}", p.display());
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), 0o600, "{}", p.display());
                }
            }
        }
    }
}

/// The host public key inside `img`'s root filesystem, without its comment.
fn host_key_in(img: &Path) -> String {
    let file = std::fs::File::open(img).unwrap();
    let disk = pikube_image::disk::Disk::read(img).unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, disk.by_label("writable").unwrap()).unwrap();
    let public = fs
        .read_to_string("/etc/ssh/ssh_host_ed25519_key.pub")
        .unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that every file in `dir` that describes others (`X.sha256`, manifests,
/// `SHA256SUMS`, `known_hosts`) describes them as they are: each file it names is there with
/// that digest, `SHA256SUMS` lists every file, `known_hosts` every node image with the key
/// inside it.
fn assert_descriptions_match(dir: &Path) {
    let digest = |name: &str| -> Option<String> {
        let p = dir.join(name);
        p.is_file()
            .then(|| pikube_image::io::sha256_reader(std::fs::File::open(&p).unwrap()).unwrap())
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in &names {
        let text = || std::fs::read_to_string(dir.join(name)).unwrap();
        if name.ends_with(".sha256") {
            for line in text().lines() {
                let (hex, file) = line.split_once("  ").unwrap();
                assert_eq!(
                    digest(file).as_deref(),
                    Some(hex),
                    "{name} describes {file}"
                );
            }
        }
        if name.ends_with(".manifest.json") {
            let m: serde_json::Value = serde_json::from_str(&text()).unwrap();
            for o in m["outputs"].as_array().unwrap() {
                let file = o["file"].as_str().unwrap();
                assert_eq!(
                    digest(file).as_deref(),
                    o["sha256"].as_str(),
                    "{name} describes {file}"
                );
            }
        }
    }
    if names.iter().any(|n| n == "SHA256SUMS") {
        let listed = sums(&dir.join("SHA256SUMS"));
        for (file, hex) in &listed {
            assert_eq!(
                digest(file).as_ref(),
                Some(hex),
                "SHA256SUMS describes {file}"
            );
        }
        for name in names.iter().filter(|n| *n != "SHA256SUMS") {
            assert!(listed.contains_key(name), "SHA256SUMS lists {name}");
        }
    }
    if names.iter().any(|n| n == "known_hosts") {
        let kh = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
        let mut listed = Vec::new();
        for line in kh.lines() {
            let (hosts, key) = line.split_once(' ').unwrap();
            let node = hosts.split(',').next().unwrap();
            let img = dir.join(format!("{node}.img"));
            assert!(
                img.exists(),
                "known_hosts lists {node}, whose image is not there"
            );
            assert_eq!(
                host_key_in(&img),
                key,
                "known_hosts holds the key of {node}.img"
            );
            listed.push(format!("{node}.img"));
        }
        for img in names.iter().filter(|n| n.ends_with(".img")) {
            assert!(listed.contains(img), "known_hosts lists {img}: {kh}");
        }
    }
}

#[test]
fn a_build_killed_before_the_image_rename_leaves_consistent_outputs() {
    use std::io::BufRead;
    let env = Env::new(FixtureOpts {
        seed: 91,
        ..FixtureOpts::default()
    });
    let out = env.build(&["--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_descriptions_match(&env.path("out"));
    for signal in ["INT", "KILL"] {
        // New host keys: every node's image changes, and so does known_hosts.
        std::fs::remove_dir_all(env.path("secrets/ssh")).unwrap();
        let url = env.server.url();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
            .args(["build", "--mirror", &url, "--out", "out", "--all"])
            .current_dir(env.path(""))
            .env("PIKUBE_CACHE_DIR", env.path("cache"))
            .env("PIKUBE_TEST_KEYS", env.signer.keys_dir())
            .env("PIKUBE_TEST_PAUSE_BEFORE_RENAME", "w1.img")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::io::BufReader::new(child.stderr.take().unwrap());
        let lines = std::thread::spawn(move || {
            let mut all = String::new();
            for line in reader.lines() {
                let line = line.unwrap();
                if line.contains("paused before renaming w1.img") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if rx
            .recv_timeout(std::time::Duration::from_secs(600))
            .is_err()
        {
            let _ = child.kill();
            panic!("the build never paused: {}", lines.join().unwrap());
        }
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        let err = lines.join().unwrap();
        eprintln!("{err}");
        if signal == "INT" {
            assert_eq!(status.code(), Some(130), "interrupted builds exit 130");
            assert!(err.contains("partial outputs removed"), "{err}");
        }
        assert_descriptions_match(&env.path("out"));
    }
    let out = env.build(&["--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.path("out/SHA256SUMS").exists() && env.path("out/known_hosts").exists());
    assert_descriptions_match(&env.path("out"));
}

#[test]
fn a_symlinked_output_directory_is_refused() {
    let env = Env::new(FixtureOpts {
        seed: 95,
        total_mib: 120,
        ..FixtureOpts::default()
    });
    // `out` points at a directory holding the user's own known_hosts.
    let ssh = env.path("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("known_hosts"), "github.com ssh-ed25519 AAAA\n").unwrap();
    std::os::unix::fs::symlink(&ssh, env.path("out")).unwrap();
    let out = env.build(&["--node", "cp1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("out")
            && err.contains("symbolic link")
            && err.contains(&ssh.display().to_string()),
        "the error names the link and the real directory: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(ssh.join("known_hosts")).unwrap(),
        "github.com ssh-ed25519 AAAA\n"
    );
    assert_eq!(
        std::fs::read_dir(&ssh).unwrap().count(),
        1,
        "nothing written there"
    );
}

/// A directory with an inventory in `inv/` (no fixture image: dry runs download nothing) and
/// files outside it in `outside/` that an inventory must not reach: a private key, a token and
/// Git credentials.
fn inventory_beside_secrets() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("inv");
    std::fs::create_dir_all(inv.join("ov/etc")).unwrap();
    std::fs::write(inv.join("ov/etc/motd"), "hi\n").unwrap();
    write_token(&inv);
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for (name, text) in [
        ("id_ed25519", "PRIVATE KEY\n"),
        ("token", "fedcba9876543210fedcba9876543210\n"),
        ("git-credentials.yaml", "username: me\npassword: hunter2\n"),
    ] {
        std::fs::write(outside.join(name), text).unwrap();
        std::fs::set_permissions(outside.join(name), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    d
}

#[test]
fn paths_in_the_inventory_stay_in_its_directory() {
    let d = inventory_beside_secrets();
    let inv = d.path().join("inv");
    let outside = d.path().join("outside");
    std::os::unix::fs::symlink("../outside", inv.join("link")).unwrap();
    std::os::unix::fs::symlink("../../outside/token", inv.join("secrets/linked-token")).unwrap();
    let gitops =
        "gitops: { repo: \"https://git.example.com/lab.git\", credentials_file: CREDS }\nnodes:\n";
    let cases: Vec<(String, &str)> = vec![
        (
            cluster_yaml("").replace("nodes:\n", "overlays: { all: [ov, ../outside] }\nnodes:\n"),
            "overlays.all[1]",
        ),
        (
            cluster_yaml("").replace(
                "role: worker }",
                &format!("role: worker, overlays: [{}] }}", outside.display()),
            ),
            "nodes[1].overlays[0]",
        ),
        (
            cluster_yaml("").replace("nodes:\n", "overlays: { server: [ov/../link] }\nnodes:\n"),
            "overlays.server[0]",
        ),
        (
            cluster_yaml("").replace(
                "nodes:\n",
                "k3s: { token_file: ../outside/token }\nnodes:\n",
            ),
            "k3s.token_file",
        ),
        (
            cluster_yaml("").replace(
                "nodes:\n",
                "k3s: { token_file: secrets/linked-token }\nnodes:\n",
            ),
            "k3s.token_file",
        ),
        (
            cluster_yaml("").replace(
                "nodes:\n",
                &gitops.replace(
                    "CREDS",
                    &outside.join("git-credentials.yaml").display().to_string(),
                ),
            ),
            "gitops.credentials_file",
        ),
    ];
    let dry_run = |allow: bool| {
        let mut args = vec!["build", "--all", "--dry-run", "--json"];
        args.extend(allow.then_some("--allow-outside-paths"));
        run_cli(&inv, &[], &args)
    };
    for (yaml, key) in &cases {
        std::fs::write(inv.join("cluster.yaml"), yaml).unwrap();
        let out = dry_run(false);
        // With --json the error is a JSON object on stdout.
        let err = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{key} is refused: {err}");
        assert!(
            err.contains(key) && err.contains("--allow-outside-paths"),
            "the error names {key} and the flag: {err}"
        );
        // The user can say they trust this inventory.
        let out = dry_run(true);
        assert!(out.status.success(), "{key}: {}", stderr(&out));
    }
    // With the flag, an outside overlay is copied like any other.
    std::fs::write(inv.join("cluster.yaml"), &cases[0].0).unwrap();
    let out = dry_run(true);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/id_ed25519"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Paths that stay inside, through `..` or a link that points inside, are fine.
    std::os::unix::fs::symlink("ov", inv.join("ov-link")).unwrap();
    std::fs::write(
        inv.join("cluster.yaml"),
        cluster_yaml("").replace(
            "nodes:\n",
            "overlays: { all: [secrets/../ov, ov-link] }\nnodes:\n",
        ),
    )
    .unwrap();
    let out = dry_run(false);
    assert!(out.status.success(), "{}", stderr(&out));

    // init creates a missing token where cluster.yaml says: only inside, unless allowed.
    std::fs::write(
        inv.join("cluster.yaml"),
        cluster_yaml("").replace(
            "nodes:\n",
            "k3s: { token_file: ../outside/new-token }\nnodes:\n",
        ),
    )
    .unwrap();
    let out = run_cli(&inv, &[], &["init"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("k3s.token_file") && err.contains("--allow-outside-paths"),
        "{err}"
    );
    assert!(
        !outside.join("new-token").exists(),
        "nothing written outside"
    );
    let out = run_cli(&inv, &[], &["init", "--allow-outside-paths"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(outside.join("new-token").exists());
}

#[test]
fn overlapping_partition_entries_stop_the_build_before_any_write() {
    let env = Env::new(FixtureOpts {
        seed: 97,
        ..FixtureOpts::default()
    });
    // Stretch the FAT entry over the start of the ext4 partition.
    let img = env.fixture.image.clone();
    let mut bytes = std::fs::read(&img).unwrap();
    let root = env.fixture.part("writable").clone();
    let boot = env.fixture.part("system-boot").clone();
    let sectors = ((root.start - boot.start) / 512 + 2048) as u32;
    bytes[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let out = env.run(&[
        "build",
        "--node",
        "cp1",
        "--image",
        img.to_str().unwrap(),
        "--mirror",
        &env.server.url(),
        "--out",
        "out",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("overlap") && err.contains("partition table is damaged"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        bytes,
        "the input is unchanged"
    );
    assert!(!env.path("out/cp1.img").exists());
}

/// Environment for a build that cannot reach any network: every proxy variable points at a
/// port nothing listens on, so any request that is not to an address in `no_proxy` fails
/// at once (and none leaves this machine).
fn no_network(no_proxy: &str) -> Vec<(&'static str, PathBuf)> {
    let port = support::registry::free_port();
    let dead = PathBuf::from(format!("http://127.0.0.1:{port}"));
    let mut env: Vec<(&'static str, PathBuf)> = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|k| (k, dead.clone()))
    .collect();
    env.push(("NO_PROXY", PathBuf::from(no_proxy)));
    env.push(("no_proxy", PathBuf::from(no_proxy)));
    env
}

fn run_without_network(env: &Env, no_proxy: &str, args: &[&str]) -> Output {
    let vars = no_network(no_proxy);
    let mut refs: Vec<(&str, &Path)> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
    refs.push(("PIKUBE_TEST_KEYS", env.signer.keys_dir()));
    run_cli(env.dir.path(), &refs, args)
}

/// An inventory with GitOps: k3s, the Argo CD manifest and the base image all come from
/// outside.
fn with_gitops(extra: &str) -> String {
    cluster_yaml("").replace(
        "nodes:\n",
        &format!(
            "gitops: {{ repo: \"https://git.example.com/lab.git\", argocd_version: v2.13.3 }}\n{extra}nodes:\n"
        ),
    )
}

#[test]
fn a_warm_cache_builds_without_any_request() {
    let env = Env::new(FixtureOpts {
        seed: 71,
        ..FixtureOpts::default()
    });
    env.server.add(
        "/raw.githubusercontent.com/argoproj/argo-cd/v2.13.3/manifests/install.yaml",
        ARGOCD_INSTALL,
    );
    std::fs::write(env.path("cluster.yaml"), with_gitops("")).unwrap();
    let out = env.build(&["--node", "cp1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // No --offline, no mirror, and no network: everything comes from the cache.
    let out = run_without_network(&env, "", &["build", "--node", "cp1", "--out", "warm"]);
    assert!(
        out.status.success(),
        "a warm cache is enough: {}",
        stderr(&out)
    );
    // The same inputs as the online build: base image and every file the plan wrote
    // (but node.json, which records the build time).
    let inputs = |dir: &str| {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.path(&format!("{dir}/cp1.manifest.json"))).unwrap(),
        )
        .unwrap();
        let files: Vec<serde_json::Value> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"] != "/etc/pikube/node.json")
            .cloned()
            .collect();
        assert!(files.iter().any(|f| f["path"] == "/usr/local/bin/k3s"));
        (m["base"].clone(), files)
    };
    assert_eq!(
        inputs("warm"),
        inputs("out"),
        "the cache served what was downloaded"
    );

    // The same through a mirror that answers nothing: not one request reaches it.
    let refusing = TestServer::start();
    let url = refusing.url();
    let out = run_without_network(
        &env,
        "127.0.0.1",
        &["build", "--node", "cp1", "--out", "warm2", "--mirror", &url],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(refusing.total_hits(), 0, "{:?}", refusing.requests());

    // One pinned artifact gone from the cache: the build fails at once, naming it.
    let blob = env
        .path("cache/blobs/sha256")
        .join(pikube_image::io::sha256_bytes(b"airgap"));
    std::fs::remove_file(&blob).unwrap();
    let started = std::time::Instant::now();
    let out = run_without_network(&env, "", &["build", "--node", "cp1", "--out", "cold"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("k3s-airgap-images-arm64.tar.zst") && err.contains("cannot reach"),
        "{err}"
    );
    for fix in ["--mirror", "k3s.release_dir"] {
        assert!(err.contains(fix), "{fix}: {err}");
    }
    assert!(!err.contains("--image"), "base-image advice for k3s: {err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "an unreachable host is not retried with back-off: {:?}",
        started.elapsed()
    );
    assert!(walk(&env.path("cold")).is_empty());
}

#[test]
fn local_k3s_release_and_argocd_manifest_need_no_server() {
    let env = Env::new(FixtureOpts {
        seed: 73,
        ..FixtureOpts::default()
    });
    let binary = b"#!/bin/sh\necho hand-copied k3s\n".to_vec();
    let rel = env.path("k3s-release");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join("k3s-arm64"), &binary).unwrap();
    let sha = pikube_image::io::sha256_bytes;
    // The real list names every architecture's files; only this one's are copied.
    std::fs::write(
        rel.join("sha256sum-arm64.txt"),
        format!(
            "{}  k3s-arm64\n{}  k3s-armhf\n",
            sha(&binary),
            sha(b"another arch")
        ),
    )
    .unwrap();
    std::fs::write(env.path("install.yaml"), ARGOCD_INSTALL).unwrap();
    let yaml = with_gitops("").replace(
        "gitops: { repo: \"https://git.example.com/lab.git\", argocd_version: v2.13.3 }",
        "gitops: { repo: \"https://git.example.com/lab.git\", argocd_version: v2.13.3, argocd_manifest: install.yaml }\nk3s: { release_dir: k3s-release, airgap: false }",
    );
    std::fs::write(env.path("cluster.yaml"), &yaml).unwrap();
    let image = env.xz.to_string_lossy().into_owned();
    // A copied file that is not the release's own is refused.
    std::fs::write(rel.join("k3s-arm64"), b"truncated").unwrap();
    let out = run_without_network(
        &env,
        "",
        &["build", "--node", "cp1", "--image", &image, "--out", "out2"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );

    std::fs::write(rel.join("k3s-arm64"), &binary).unwrap();
    let out = run_without_network(
        &env,
        "",
        &["build", "--node", "cp1", "--image", &image, "--out", "out"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.server.total_hits(), 0);
    let img = env.path("out/cp1.img");
    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    assert_eq!(fs.read("/usr/local/bin/k3s").unwrap(), binary);
    let install = fs
        .read_to_string("/var/lib/rancher/k3s/server/manifests/pikube-argocd-install.yaml")
        .unwrap();
    assert!(
        install.contains("argocd-server") && install.contains("namespace: argocd"),
        "{install}"
    );
    drop(fs);
    drop(file);

    // With the air-gap images wanted, the file missing from the directory is named.
    std::fs::write(
        env.path("cluster.yaml"),
        yaml.replace("airgap: false", "airgap: true"),
    )
    .unwrap();
    let out = run_without_network(
        &env,
        "",
        &["build", "--node", "cp1", "--image", &image, "--out", "out3"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("k3s.release_dir") && err.contains("lacks k3s-airgap-images-arm64.tar.zst"),
        "{err}"
    );
    assert!(walk(&env.path("out2")).is_empty() && walk(&env.path("out3")).is_empty());

    // A release_dir outside the inventory's directory is refused like any path.
    std::fs::write(
        env.path("cluster.yaml"),
        yaml.replace("release_dir: k3s-release", "release_dir: /tmp"),
    )
    .unwrap();
    let out = env.run(&["build", "--node", "cp1", "--image", &image, "--out", "out4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`k3s.release_dir`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_downloads_name_the_fixes_that_apply() {
    let env = Env::new(FixtureOpts {
        seed: 75,
        ..FixtureOpts::default()
    });
    let image = env.xz.to_string_lossy().into_owned();
    let build = |out: &str| {
        let started = std::time::Instant::now();
        let o = run_without_network(
            &env,
            "",
            &["build", "--node", "cp1", "--image", &image, "--out", out],
        );
        assert_eq!(o.status.code(), Some(1));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no back-off for a host that cannot be reached: {:?}",
            started.elapsed()
        );
        assert!(walk(&env.path(out)).is_empty());
        stderr(&o)
    };

    // k3s: the mirror and the local release directory, not the base-image options.
    std::fs::write(env.path("cluster.yaml"), with_gitops("")).unwrap();
    let err = build("o1");
    assert!(
        err.contains(&format!(
            "k3s {} for arm64",
            pikube_image::config::DEFAULT_K3S_VERSION
        )) && err.contains("cannot reach"),
        "{err}"
    );
    for fix in ["--mirror", "k3s.release_dir"] {
        assert!(err.contains(fix), "{fix}: {err}");
    }
    assert!(
        !err.contains("--image") && !err.contains("giving up"),
        "{err}"
    );

    // Argo CD's manifest: the mirror, the local manifest, and images.argocd.
    let rel = env.path("k3s-release");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(rel.join("k3s-arm64"), b"k3s").unwrap();
    std::fs::write(
        rel.join("sha256sum-arm64.txt"),
        format!("{}  k3s-arm64\n", pikube_image::io::sha256_bytes(b"k3s")),
    )
    .unwrap();
    let local_k3s = "k3s: { release_dir: k3s-release, airgap: false }\n";
    std::fs::write(env.path("cluster.yaml"), with_gitops(local_k3s)).unwrap();
    let err = build("o2");
    assert!(
        err.contains("Argo CD v2.13.3 install manifest") && err.contains("cannot reach"),
        "{err}"
    );
    for fix in ["--mirror", "gitops.argocd_manifest", "images.argocd: none"] {
        assert!(err.contains(fix), "{fix}: {err}");
    }
    assert!(
        !err.contains("--image") && !err.contains("giving up"),
        "{err}"
    );

    // Container images: the registry mirror (and why --mirror does not help), images.argocd.
    std::fs::write(env.path("install.yaml"), ARGOCD_INSTALL).unwrap();
    let yaml = with_gitops(&format!(
        "{local_k3s}images: {{ all: [\"registry.example/team/app:1\"] }}\n"
    ))
    .replace(
        "gitops: { repo: \"https://git.example.com/lab.git\", argocd_version: v2.13.3 }",
        "gitops: { repo: \"https://git.example.com/lab.git\", argocd_version: v2.13.3, argocd_manifest: install.yaml }",
    );
    std::fs::write(env.path("cluster.yaml"), yaml).unwrap();
    let err = build("o3");
    assert!(err.contains("registry.example/team/app:1"), "{err}");
    for fix in ["images.registry_mirror", "--mirror", "images.argocd: none"] {
        assert!(err.contains(fix), "{fix}: {err}");
    }
    assert!(!err.contains("--image"), "{err}");
}

#[test]
fn images_are_pulled_through_the_registry_mirror_and_then_need_no_registry() {
    use support::registry::{Registry, TestImage, build_layout};
    let Some(reg) = Registry::start() else {
        return;
    };
    // The mirror holds the image under its upstream registry's name.
    let layout = tempfile::tempdir().unwrap();
    build_layout(layout.path(), "1", &[TestImage::new("linux/arm64", 77)]);
    reg.push_layout(layout.path(), "1", "registry.example/team/app:1")
        .unwrap();
    let env = Env::new(FixtureOpts {
        seed: 77,
        ..FixtureOpts::default()
    });
    let mirror = format!("http://{}", reg.host());
    let yaml = cluster_yaml("").replace(
        "nodes:\n",
        &format!(
            "images: {{ all: [\"registry.example/team/app:1\"], registry_mirror: \"{mirror}\" }}\nnodes:\n"
        ),
    );
    std::fs::write(env.path("cluster.yaml"), &yaml).unwrap();
    let url = env.server.url();
    // registry.example does not exist: only the mirror can serve the image.
    let out = run_without_network(
        &env,
        "127.0.0.1",
        &["build", "--node", "cp1", "--mirror", &url, "--out", "out"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = std::fs::read_to_string(env.path("images.lock")).unwrap();
    assert!(lock.contains("registry.example/team/app:1"), "{lock}");
    let img = env.path("out/cp1.img");
    let file = std::fs::File::open(&img).unwrap();
    let disk = pikube_image::disk::Disk::read(&img).unwrap();
    let part = disk.by_label("writable").unwrap();
    let fs = pikube_image::fs::ext4_reader(&file, part).unwrap();
    assert!(
        fs.exists("/var/lib/rancher/k3s/agent/images/pikube-role-images.tar.zst")
            .unwrap()
    );
    drop(fs);
    drop(file);

    // The mirror gone too: what images.lock pins comes from the cache, without --offline.
    drop(reg);
    let out = run_without_network(&env, "", &["build", "--node", "cp1", "--out", "warm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.path("warm/cp1.img").is_file());
}

/// Puts a network-config through cloud-init as an Ubuntu image does (`cloud-init devel
/// net-convert` to netplan), then through `netplan generate`, and returns the rendered
/// wpa_supplicant configuration of wlan0; `None` when netplan is not installed here.
fn cloud_init_then_netplan_wifi(dir: &Path, network_config: &Path) -> Option<String> {
    if !pikube_test_oracles::require_tool("netplan", "netplan.io") {
        return None;
    }
    let tree = dir.join("netplan-root");
    let o = Command::new("cloud-init")
        .args([
            "devel",
            "net-convert",
            "-k",
            "yaml",
            "-D",
            "ubuntu",
            "-O",
            "netplan",
            "-p",
        ])
        .arg(network_config)
        .arg("-d")
        .arg(&tree)
        .output()
        .expect("cloud-init is installed");
    assert!(o.status.success(), "cloud-init net-convert: {}", stderr(&o));
    let f = tree.join("etc/netplan/50-cloud-init.yaml");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = Command::new("netplan")
        .arg("generate")
        .arg("--root-dir")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(o.status.success(), "netplan generate: {}", stderr(&o));
    let network =
        std::fs::read_to_string(tree.join("run/systemd/network/10-netplan-wlan0.network"))
            .expect("netplan renders wlan0");
    assert!(network.contains("Address=192.168.50.30/24"), "{network}");
    assert!(
        tree.join("run/systemd/system/netplan-regdom.service")
            .exists(),
        "netplan sets the regulatory domain"
    );
    let wpa = std::fs::read_to_string(tree.join("run/netplan/wpa-wlan0.conf")).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
    Some(wpa)
}

#[test]
fn a_board_without_ethernet_joins_wifi() {
    let env = Env::new(FixtureOpts {
        seed: 23,
        ..FixtureOpts::default()
    });
    let zero =
        "  - { name: z1, board: zero2w, os: ubuntu-24.04, role: worker, ip: 192.168.50.30 }\n";
    std::fs::write(env.path("cluster.yaml"), cluster_yaml(zero)).unwrap();
    // Without Wi-Fi settings: refused before anything is downloaded, naming the node, the
    // board and the key to add.
    let hits = env.server.total_hits();
    let out = env.build(&["--node", "z1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("node 'z1'") && err.contains("zero2w") && err.contains("network.wifi"),
        "{err}"
    );
    assert_eq!(env.server.total_hits(), hits, "nothing was downloaded");

    // A passphrase file others can read is refused.
    let pass = "correct horse battery";
    std::fs::write(env.path("secrets/wifi"), format!("{pass}\n")).unwrap();
    let wifi = "  wifi: { ssid: \"home net: 5G\", passphrase_file: secrets/wifi, country: DE }\n";
    let yaml = cluster_yaml(zero).replace(
        "network: { gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }\n",
        &format!("network:\n  gateway: 192.168.50.1\n  dns: [192.168.50.2]\n  prefix: 24\n{wifi}"),
    );
    std::fs::write(env.path("cluster.yaml"), &yaml).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let f = env.path("secrets/wifi");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = env.build(&["--node", "z1"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
        assert_eq!(env.server.total_hits(), hits, "nothing was downloaded");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = env.build(&["--node", "z1", "--node", "cp1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(pass),
        "the passphrase is never printed"
    );

    let boot = env.fixture.part("system-boot").clone();
    let nc =
        String::from_utf8(mtype(&env.path("out/z1.img"), boot.start, "network-config")).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&nc).unwrap();
    assert!(v.get("ethernets").is_none(), "no wired port: {nc}");
    let w = &v["wifis"]["wlan0"];
    assert_eq!(w["addresses"][0], "192.168.50.30/24", "{nc}");
    assert_eq!(w["regulatory-domain"], "DE", "{nc}");
    assert_eq!(w["access-points"]["home net: 5G"]["password"], pass, "{nc}");
    // cloud-init hands it to netplan on Ubuntu, which renders the join.
    let nc_path = env.path("network-config");
    std::fs::write(&nc_path, &nc).unwrap();
    if let Some(wpa) = cloud_init_then_netplan_wifi(env.dir.path(), &nc_path) {
        assert!(
            wpa.contains("country=DE")
                && wpa.contains("ssid=\"home net: 5G\"")
                && wpa.contains(&format!("psk=\"{pass}\"")),
            "{wpa}"
        );
    }
    // The wired node of the same inventory keeps its port and joins Wi-Fi by DHCP too.
    let nc = String::from_utf8(mtype(
        &env.path("out/cp1.img"),
        boot.start,
        "network-config",
    ))
    .unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&nc).unwrap();
    assert_eq!(
        v["ethernets"]["eth0"]["addresses"][0], "192.168.50.10/24",
        "{nc}"
    );
    assert_eq!(v["wifis"]["wlan0"]["dhcp4"], true, "{nc}");

    // The passphrase is a secret: not in the manifest, not in the instance-id.
    let manifest = std::fs::read_to_string(env.path("out/z1.manifest.json")).unwrap();
    assert!(!manifest.contains(pass), "{manifest}");
    let id = instance_id(&env.path("out/z1.img"), boot.start);
    std::fs::write(env.path("secrets/wifi"), "another passphrase\n").unwrap();
    let out = env.build(&["--node", "z1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        instance_id(&env.path("out/z1.img"), boot.start),
        id,
        "the instance-id does not depend on the passphrase"
    );
}
