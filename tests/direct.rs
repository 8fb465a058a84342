//! End-to-end builds for an OS image without cloud-init (Armbian): the node's identity is
//! written straight into the ext4 root filesystem, with a first-boot unit for the admin user.
//! The board and image come from `tests/direct/boards` through `$PIKUBE_BOARDS_DIR`; the
//! fixture is served with an Armbian `.sha` file by a real HTTP server through `--mirror`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use pikube_test_oracles::{require_root, require_tool, skip};
use support::build_env::{
    K3S_VERSION, KEY, TOKEN, e2fsck_clean, extract, run_cli, serve_k3s, stderr, write_token,
};
use support::fixtures::{self, Fixture, FixtureOpts};
use support::http::TestServer;

const DIR: &str = "dl.armbian.com/orangepizero3/archive";
const FILE: &str = "Armbian_25.8.1_Orangepizero3_bookworm_current_6.12.43_minimal.img.xz";

const CLUSTER: &str = r#"cluster: lab
domain: home.arpa
timezone: America/Argentina/Buenos_Aires
locale: de_DE.UTF-8
admin:
  user: ops
  ssh_authorized_keys: ["KEY", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCeJ0bGk+Hh7WTjyKGkB1HyopywvWL5YLyI+rzpQwbjiiUCuoWh89L5elg67OSuYojiNKALlE0ODVs7XE3GqnXiFgEDmRqoZUfStu4kn3e2gj4QjDw7CX3Af6/21VdDtlZNjOPWB/rTip+lSBgTUNaOII0GjbgOEjTlUonLs6bTYc2/eMCbndT7RJrJR4WD3GdY8mRSc9OYrG7Up8XSjftDzYrKLjU0zq7pEX9fTdrObC98+NrxG3UCTmBUW6aQ+YUJHXKvjbJh7Kk+cVL5DamSJBBaOPj6uN13amUOHcnBd8zABtEJnpbzM17jFmAJoD2S3YQ+sSAtIh8+9CxN1Ji7 second key: with 'quotes'"]
network: { gateway: 192.168.50.1, dns: [192.168.50.2, 192.168.50.3], prefix: 24 }
nodes:
  - { name: cp1, board: opizero3-test, role: server, ip: 192.168.50.10 }
  - { name: w1, board: opizero3-test, os: armbian-test-networkd, role: agent }
  - { name: w2, board: opizero3-test, os: armbian-test-networkd, role: agent, ip: 192.168.50.12, mac: "02:00:00:00:00:12" }
"#;

struct Env {
    dir: tempfile::TempDir,
    fixture: Fixture,
    _server: TestServer,
    url: String,
}

impl Env {
    fn new() -> Env {
        Env::with(fixtures::armbian_allwinner)
    }

    fn with(make: fn(&Path, FixtureOpts) -> Fixture) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pikube-direct")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let fixture = make(
            dir.path(),
            FixtureOpts {
                total_mib: 96,
                // The inventory's de_DE.UTF-8, generated as Armbian generates its locales.
                root_files: [(
                    "/usr/lib/locale/de_DE.utf8/LC_CTYPE".to_string(),
                    (0o644, b"glibc".to_vec()),
                )]
                .into(),
                ..FixtureOpts::default()
            },
        );
        let xz = fixtures::compress(&fixture.image, Compression::Xz);
        let bytes = std::fs::read(&xz).unwrap();
        let server = TestServer::start();
        let sha = pikube_image::io::sha256_bytes(&bytes);
        server.add(&format!("/{DIR}/{FILE}"), bytes);
        // Armbian's format: digest, one space, file name.
        server.add(&format!("/{DIR}/{FILE}.sha"), format!("{sha} {FILE}\n"));
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
        let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/direct/boards");
        run_cli(
            self.dir.path(),
            &[("PIKUBE_BOARDS_DIR", boards.as_path())],
            args,
        )
    }
}

/// The root filesystem of an output image, read with ext4-view.
fn rootfs(img: &Path) -> ext4_view::Ext4 {
    let file = std::fs::File::open(img).unwrap();
    let disk = pikube_image::disk::Disk::read(img).unwrap();
    pikube_image::fs::ext4_reader(&file, disk.by_label("armbi_root").unwrap()).unwrap()
}

/// Content, permission bits and owner of a file.
fn file(fs: &ext4_view::Ext4, path: &str, mode: u16) -> String {
    let m = fs
        .symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(m.mode() & 0o7777, mode, "mode of {path}");
    assert_eq!((m.uid(), m.gid()), (0, 0), "owner of {path}");
    fs.read_to_string(path).unwrap()
}

fn link(fs: &ext4_view::Ext4, path: &str) -> String {
    fs.read_link(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .to_str()
        .unwrap()
        .to_string()
}

fn exists(fs: &ext4_view::Ext4, path: &str) -> bool {
    fs.symlink_metadata(path).is_ok()
}

/// `debugfs -R "stat PATH"` on an extracted filesystem: a second reader for modes and owners.
fn debugfs_stat(part: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(part)
        .output()
        .expect("debugfs (e2fsprogs) is installed");
    assert!(o.status.success(), "debugfs: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn armbian_nodes_get_their_identity_without_cloud_init() {
    let env = Env::new();
    let out = env.run(&[
        "build", "--mirror", &env.url, "--out", "out", "--node", "cp1", "--node", "w1", "--node",
        "w2",
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let img = env.path("out/cp1.img");
    let root = env.fixture.part("armbi_root").clone();

    // Everything before the partition (MBR, U-Boot SPL at 8192) is bit for bit the input's.
    let input = std::fs::read(&env.fixture.image).unwrap();
    let data = std::fs::read(&img).unwrap();
    assert!(data.len() >= input.len());
    assert!(
        data[..root.start as usize] == input[..root.start as usize],
        "bytes before the root partition changed"
    );
    let (spl_at, spl) = &env.fixture.raw_blobs[0];
    assert_eq!(*spl_at, 8192);
    assert!(data[8192..8192 + spl.len()] == spl[..]);
    let part_file = env.path("root.part");
    e2fsck_clean(&img, root.start, root.size, &part_file);

    let fs = rootfs(&img);
    assert_eq!(file(&fs, "/etc/hostname", 0o644), "cp1\n");
    let hosts = file(&fs, "/etc/hosts", 0o644);
    let lines: Vec<&str> = hosts.lines().collect();
    assert_eq!(
        lines[..2],
        ["127.0.0.1\tlocalhost", "127.0.1.1\tcp1.home.arpa cp1"]
    );
    assert!(
        hosts.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"),
        "{hosts}"
    );

    // netplan replaces Armbian's DHCP-everywhere default.
    assert!(!exists(&fs, "/etc/netplan/10-dhcp-all-interfaces.yaml"));
    let netplan = file(&fs, "/etc/netplan/20-pikube.yaml", 0o600);
    let v: serde_json::Value = serde_saphyr::from_str(&netplan).unwrap();
    let e = &v["network"]["ethernets"]["end0"];
    assert_eq!(v["network"]["version"], 2);
    assert_eq!(v["network"]["renderer"], "networkd");
    assert_eq!(e["addresses"][0], "192.168.50.10/24");
    assert_eq!(e["dhcp4"], false);
    assert_eq!(e["routes"][0]["via"], "192.168.50.1");
    assert_eq!(e["nameservers"]["addresses"][1], "192.168.50.3");
    netplan_generate(
        &env,
        &netplan,
        &[
            "Address=192.168.50.10/24",
            "Gateway=192.168.50.1",
            "DNS=192.168.50.2",
            "Name=end0",
        ],
    );

    assert_eq!(
        file(&fs, "/etc/timezone", 0o644),
        "America/Argentina/Buenos_Aires\n"
    );
    assert_eq!(
        link(&fs, "/etc/localtime"),
        "/usr/share/zoneinfo/America/Argentina/Buenos_Aires"
    );
    assert_eq!(
        file(&fs, "/etc/default/locale", 0o644),
        "LANG=de_DE.UTF-8\n"
    );

    // The admin account: data for the first-boot script, sudo and sshd drop-ins.
    let m = fs.metadata("/etc/pikube").unwrap();
    assert!(m.is_dir() && m.mode() & 0o7777 == 0o700);
    assert_eq!(file(&fs, "/etc/pikube/admin-user", 0o644), "ops\n");
    assert_eq!(
        file(&fs, "/etc/pikube/authorized_keys", 0o644),
        format!(
            "{KEY}\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCeJ0bGk+Hh7WTjyKGkB1HyopywvWL5YLyI+rzpQwbjiiUCuoWh89L5elg67OSuYojiNKALlE0ODVs7XE3GqnXiFgEDmRqoZUfStu4kn3e2gj4QjDw7CX3Af6/21VdDtlZNjOPWB/rTip+lSBgTUNaOII0GjbgOEjTlUonLs6bTYc2/eMCbndT7RJrJR4WD3GdY8mRSc9OYrG7Up8XSjftDzYrKLjU0zq7pEX9fTdrObC98+NrxG3UCTmBUW6aQ+YUJHXKvjbJh7Kk+cVL5DamSJBBaOPj6uN13amUOHcnBd8zABtEJnpbzM17jFmAJoD2S3YQ+sSAtIh8+9CxN1Ji7 second key: with 'quotes'\n"
        )
    );
    let sudoers = file(&fs, "/etc/sudoers.d/90-pikube", 0o440);
    assert!(
        sudoers.ends_with("\nops ALL=(ALL) NOPASSWD:ALL\n"),
        "{sudoers}"
    );
    let sshd = file(&fs, "/etc/ssh/sshd_config.d/90-pikube.conf", 0o644);
    for want in [
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
    ] {
        assert!(sshd.lines().any(|l| l == want), "{want} in {sshd}");
    }
    let script = file(&fs, "/usr/local/sbin/pikube-firstboot", 0o755);
    assert_eq!(script, pikube_image::firstboot::direct::FIRSTBOOT_SCRIPT);
    let unit = file(&fs, "/etc/systemd/system/pikube-firstboot.service", 0o644);
    assert!(unit.contains("ExecStart=/usr/local/sbin/pikube-firstboot\n"));
    assert_eq!(
        link(
            &fs,
            "/etc/systemd/system/multi-user.target.wants/pikube-firstboot.service"
        ),
        "/etc/systemd/system/pikube-firstboot.service"
    );
    let script_copy = env.path("firstboot.sh");
    std::fs::write(&script_copy, &script).unwrap();
    for sh in ["sh", "bash"] {
        let o = Command::new(sh)
            .arg("-n")
            .arg(&script_copy)
            .output()
            .unwrap();
        assert!(o.status.success(), "{sh} -n: {}", stderr(&o));
    }
    assert!(
        !exists(&fs, "/root/.not_logged_in_yet"),
        "first-login presets removed"
    );

    // The node's own host key, once in /etc/ssh and once for the first-boot script; the
    // image's keys are gone.
    let secret = std::fs::read_to_string(env.path("secrets/ssh/cp1/ssh_host_ed25519_key")).unwrap();
    let public =
        std::fs::read_to_string(env.path("secrets/ssh/cp1/ssh_host_ed25519_key.pub")).unwrap();
    assert_eq!(file(&fs, "/etc/ssh/ssh_host_ed25519_key", 0o600), secret);
    assert_eq!(file(&fs, "/etc/pikube/ssh_host_ed25519_key", 0o600), secret);
    assert_eq!(
        file(&fs, "/etc/pikube/ssh_host_ed25519_key.pub", 0o644),
        public
    );
    assert!(!exists(&fs, "/etc/ssh/ssh_host_rsa_key.pub"));
    let kh = std::fs::read_to_string(env.path("out/known_hosts")).unwrap();
    assert!(
        kh.contains(public.split_whitespace().nth(1).unwrap()),
        "{kh}"
    );

    // Kernel arguments appended to extraargs once; the rest of armbianEnv.txt is untouched.
    let env_txt = file(&fs, "/boot/armbianEnv.txt", 0o644);
    let original = String::from_utf8(fixtures_file(&env.fixture, "/boot/armbianEnv.txt")).unwrap();
    assert_eq!(
        env_txt,
        format!("{original}extraargs=cgroup_enable=memory swapaccount=1\n")
    );

    // The payload applies as on any image.
    assert!(file(&fs, "/etc/rancher/k3s/config.yaml", 0o600).contains(TOKEN));
    assert_eq!(
        link(
            &fs,
            "/etc/systemd/system/multi-user.target.wants/k3s.service"
        ),
        "/etc/systemd/system/k3s.service"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("out/cp1.manifest.json")).unwrap()).unwrap();
    let edit = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/boot/armbianEnv.txt")
        .expect("the edit is in the manifest");
    assert_eq!(edit["kind"], "edit");

    // A second reader agrees on modes and owners.
    extract(&img, root.start, root.size, &part_file);
    let st = debugfs_stat(&part_file, "/etc/sudoers.d/90-pikube");
    assert!(
        st.contains("Mode:  0440") && st.contains("User:     0   Group:     0"),
        "{st}"
    );
    let st = debugfs_stat(&part_file, "/etc/pikube");
    assert!(
        st.contains("Type: directory") && st.contains("Mode:  0700"),
        "{st}"
    );
    std::fs::remove_file(&part_file).unwrap();

    // The agent uses DHCP through systemd-networkd, and netplan is left alone.
    let img = env.path("out/w1.img");
    e2fsck_clean(&img, root.start, root.size, &part_file);
    let fs = rootfs(&img);
    assert_eq!(file(&fs, "/etc/hostname", 0o644), "w1\n");
    let network = file(&fs, "/etc/systemd/network/20-pikube.network", 0o644);
    assert!(
        network.starts_with("[Match]\nName=end0\n\n[Network]\nDHCP=ipv4\n"),
        "{network}"
    );
    assert!(!exists(&fs, "/etc/netplan/20-pikube.yaml"));
    assert!(exists(&fs, "/etc/netplan/10-dhcp-all-interfaces.yaml"));
    assert!(file(&fs, "/etc/systemd/system/k3s-agent.service", 0o644).contains("agent"));

    // A second agent of the same image shares the prepared base but not the identity.
    let img = env.path("out/w2.img");
    e2fsck_clean(&img, root.start, root.size, &part_file);
    let fs = rootfs(&img);
    assert_eq!(file(&fs, "/etc/hostname", 0o644), "w2\n");
    assert!(file(&fs, "/etc/hosts", 0o644).contains("127.0.1.1\tw2.home.arpa w2\n"));
    assert_eq!(
        file(&fs, "/etc/systemd/network/20-pikube.network", 0o644),
        "[Match]\nMACAddress=02:00:00:00:00:12\n\n[Network]\nAddress=192.168.50.12/24\nGateway=192.168.50.1\nDNS=192.168.50.2\nDNS=192.168.50.3\nDomains=home.arpa\n\n[Link]\nRequiredForOnline=no\n"
    );
    assert_eq!(
        file(&fs, "/etc/pikube/ssh_host_ed25519_key", 0o600),
        std::fs::read_to_string(env.path("secrets/ssh/w2/ssh_host_ed25519_key")).unwrap()
    );

    // Rebuilding from a built image adds nothing twice.
    let out = env.run(&[
        "build",
        "--mirror",
        &env.url,
        "--image",
        "out/cp1.img",
        "--out",
        "again",
        "--node",
        "cp1",
    ]);
    assert!(out.status.success(), "rebuild failed: {}", stderr(&out));
    let fs = rootfs(&env.path("again/cp1.img"));
    let again = file(&fs, "/boot/armbianEnv.txt", 0o644);
    assert_eq!(again, env_txt, "extraargs edited once");

    // --dry-run lists the same operations and writes nothing.
    let out = env.run(&[
        "build",
        "--mirror",
        &env.url,
        "--dry-run",
        "--out",
        "dry",
        "--node",
        "cp1",
    ]);
    assert!(out.status.success(), "dry run failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "/etc/netplan/20-pikube.yaml",
        "/etc/sudoers.d/90-pikube",
        "append to extraargs=: cgroup_enable=memory swapaccount=1",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(!env.path("dry/cp1.img").exists());
}

/// Rockchip layout (GPT, boot loader at 32 KiB and 8 MiB, root at 16 MiB): the same
/// identity, and every byte before the partition kept.
#[test]
fn rockchip_gpt_image_keeps_its_boot_loader() {
    let env = Env::with(fixtures::armbian_rockchip_gpt);
    let out = env.run(&[
        "build", "--mirror", &env.url, "--out", "out", "--node", "cp1",
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let img = env.path("out/cp1.img");
    let root = env.fixture.part("armbi_root").clone();
    assert_eq!(root.start, 16 << 20);
    let input = std::fs::read(&env.fixture.image).unwrap();
    let data = std::fs::read(&img).unwrap();
    assert!(data[..root.start as usize] == input[..root.start as usize]);
    for (at, blob) in &env.fixture.raw_blobs {
        assert!(
            data[*at as usize..*at as usize + blob.len()] == blob[..],
            "blob at {at}"
        );
    }
    let o = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "sgdisk -v: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    e2fsck_clean(&img, root.start, root.size, &env.path("root.part"));
    let fs = rootfs(&img);
    assert_eq!(file(&fs, "/etc/hostname", 0o644), "cp1\n");
    assert!(!exists(&fs, "/root/.not_logged_in_yet"));
    // Rockchip's default extraargs line is extended, not repeated.
    let env_txt = file(&fs, "/boot/armbianEnv.txt", 0o644);
    assert_eq!(env_txt.matches("extraargs=").count(), 1, "{env_txt}");
    assert!(
        env_txt.contains("\nextraargs=cma=256M cgroup_enable=memory swapaccount=1\n"),
        "{env_txt}"
    );
}

/// The fixture's original content of a root filesystem file.
fn fixtures_file(f: &Fixture, path: &str) -> Vec<u8> {
    let fs = rootfs(&f.image);
    fs.read(path).unwrap()
}

/// Runs Debian's `netplan generate` on a tree holding only our file, when netplan is
/// installed, and checks the systemd-networkd file it renders.
fn netplan_generate(env: &Env, yaml: &str, want: &[&str]) {
    if !require_tool("netplan", "netplan.io") {
        return;
    }
    let tree = env.path("netplan-root");
    std::fs::create_dir_all(tree.join("etc/netplan")).unwrap();
    let f = tree.join("etc/netplan/20-pikube.yaml");
    std::fs::write(&f, yaml).unwrap();
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
    let rendered = tree.join("run/systemd/network/10-netplan-end0.network");
    let text = std::fs::read_to_string(&rendered)
        .unwrap_or_else(|e| panic!("{}: {e}", rendered.display()));
    for w in want {
        assert!(text.lines().any(|l| l == *w), "{w} in {text}");
    }
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A minimal Debian root filesystem with passwd, sudo and openssh-server, made once with
/// mmdebstrap and kept as a tarball (`$PIKUBE_TEST_ROOTFS_TAR`, else under /var/tmp).
/// `None`, after [`skip`] said why, when it cannot be had here.
fn debian_rootfs_tar() -> Option<PathBuf> {
    let path = std::env::var_os("PIKUBE_TEST_ROOTFS_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(
                "/var/tmp/pikube-test-rootfs/bookworm-minbase-passwd-sudo-openssh-server.tar",
            )
        });
    if path.exists() {
        return Some(path);
    }
    if !require_tool("mmdebstrap", "mmdebstrap") {
        return None;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let partial = path.with_extension("partial.tar");
    let o = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=minbase",
            "--include=passwd,sudo,openssh-server",
            "bookworm",
        ])
        .arg(&partial)
        .output()
        .unwrap();
    if !o.status.success() {
        let _ = std::fs::remove_file(&partial);
        skip(format_args!(
            "mmdebstrap could not make a Debian root filesystem: {}",
            stderr(&o)
        ));
        return None;
    }
    std::fs::rename(&partial, &path).unwrap();
    Some(path)
}

fn chroot(root: &Path, args: &[&str]) -> Output {
    let o = Command::new("chroot")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "# chroot {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// Copies `path` from the image's root filesystem into `root`, with its mode.
fn copy_out(fs: &ext4_view::Ext4, root: &Path, path: &str) {
    use std::os::unix::fs::PermissionsExt;
    let m = fs.metadata(path).unwrap();
    let dst = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    if m.is_dir() {
        std::fs::create_dir_all(&dst).unwrap();
    } else {
        std::fs::write(&dst, fs.read(path).unwrap()).unwrap();
    }
    std::fs::set_permissions(
        &dst,
        std::fs::Permissions::from_mode(u32::from(m.mode() & 0o7777)),
    )
    .unwrap();
}

/// Runs the shipped first-boot script for real, in a chroot of a Debian root filesystem
/// holding the files the build wrote: it must create the admin user with its keys, lock
/// root, put the node's host key back after the OS replaced it, and leave sshd and sudo
/// configurations their own tools accept.
#[test]
fn firstboot_script_creates_the_admin_in_a_debian_chroot() {
    if !require_root("chroot") {
        return;
    }
    let Some(tar) = debian_rootfs_tar() else {
        return;
    };
    let env = Env::new();
    let out = env.run(&[
        "build", "--mirror", &env.url, "--out", "out", "--node", "cp1",
    ]);
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let fs = rootfs(&env.path("out/cp1.img"));

    let root = env.path("debian");
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", stderr(&o));
    for p in [
        "/etc/pikube",
        "/etc/pikube/admin-user",
        "/etc/pikube/authorized_keys",
        "/etc/pikube/ssh_host_ed25519_key",
        "/etc/pikube/ssh_host_ed25519_key.pub",
        "/etc/sudoers.d/90-pikube",
        "/etc/ssh/sshd_config.d/90-pikube.conf",
        "/usr/local/sbin/pikube-firstboot",
    ] {
        copy_out(&fs, &root, p);
    }
    // Armbian's first run regenerates the host keys and leaves the first-login file.
    let host_key = root.join("etc/ssh/ssh_host_ed25519_key");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "regenerated", "-f"])
        .arg(root.join("regen"))
        .output()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
    std::fs::rename(root.join("regen"), &host_key).unwrap();
    std::fs::rename(
        root.join("regen.pub"),
        root.join("etc/ssh/ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    std::fs::write(root.join("root/.not_logged_in_yet"), "PRESET_USER_NAME=x\n").unwrap();
    // Armbian ships root with the well-known password 1234.
    let o = chroot(&root, &["sh", "-c", "echo root:1234 | chpasswd"]);
    assert!(o.status.success(), "chpasswd: {}", stderr(&o));
    // Armbian's sshd_config allows root and password logins; the drop-in must still win.
    let sshd_config = root.join("etc/ssh/sshd_config");
    let mut text = std::fs::read_to_string(&sshd_config).unwrap();
    assert!(
        text.contains("Include /etc/ssh/sshd_config.d/*.conf"),
        "{text}"
    );
    text.push_str("PermitRootLogin yes\nPasswordAuthentication yes\n");
    std::fs::write(&sshd_config, text).unwrap();

    let o = chroot(&root, &["/usr/local/sbin/pikube-firstboot"]);
    assert!(
        o.status.success(),
        "first-boot script failed: {}",
        stderr(&o)
    );

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("ops:"))
        .unwrap_or_else(|| panic!("no ops in {passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!((fields[5], fields[6]), ("/home/ops", "/bin/bash"), "{line}");
    let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let sudo = group.lines().find(|l| l.starts_with("sudo:")).unwrap();
    assert!(
        sudo.rsplit(':')
            .next()
            .unwrap()
            .split(',')
            .any(|u| u == "ops"),
        "{sudo}"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let ssh = std::fs::metadata(root.join("home/ops/.ssh")).unwrap();
        assert_eq!(
            (ssh.mode() & 0o7777, ssh.uid(), ssh.gid()),
            (0o700, uid, gid)
        );
        let ak = root.join("home/ops/.ssh/authorized_keys");
        let m = std::fs::metadata(&ak).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, uid, gid));
        assert_eq!(
            std::fs::read_to_string(&ak).unwrap(),
            fs.read_to_string("/etc/pikube/authorized_keys").unwrap()
        );
        let key = std::fs::metadata(&host_key).unwrap();
        assert_eq!((key.mode() & 0o7777, key.uid()), (0o600, 0));
    }
    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    let root_pw = shadow.lines().find(|l| l.starts_with("root:")).unwrap();
    let hash = root_pw.split(':').nth(1).unwrap();
    assert!(
        hash.starts_with("!$") && hash.len() > 10,
        "root's password hash is kept but locked: {root_pw}"
    );
    assert_eq!(
        std::fs::read_to_string(&host_key).unwrap(),
        std::fs::read_to_string(env.path("secrets/ssh/cp1/ssh_host_ed25519_key")).unwrap(),
        "the node's host key is back"
    );
    assert!(!root.join("root/.not_logged_in_yet").exists());
    assert!(root.join("etc/pikube/firstboot.done").exists());

    // sshd and sudo accept the result, with the settings the build asked for.
    std::fs::create_dir_all(root.join("run/sshd")).unwrap();
    let o = chroot(&root, &["/usr/sbin/sshd", "-T"]);
    assert!(o.status.success(), "sshd -T: {}", stderr(&o));
    let effective = String::from_utf8_lossy(&o.stdout).into_owned();
    for want in [
        "permitrootlogin no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
    ] {
        assert!(effective.lines().any(|l| l == want), "{want}");
    }
    let o = chroot(&root, &["visudo", "-c"]);
    assert!(o.status.success(), "visudo -c: {}", stderr(&o));
    let o = chroot(&root, &["sudo", "-l", "-U", "ops"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(ALL) NOPASSWD: ALL"),
        "sudo -l -U ops"
    );

    // A second run changes nothing and succeeds.
    let before = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let o = chroot(&root, &["/usr/local/sbin/pikube-firstboot"]);
    assert!(o.status.success(), "second run: {}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
        before
    );
    std::fs::remove_dir_all(&root).unwrap();
}
