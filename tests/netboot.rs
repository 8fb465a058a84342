//! `build --netboot DIR`: the network boot tree of a two-node inventory, a Raspberry Pi 4
//! (Ubuntu, `current/` os_prefix layout) and a U-Boot board (Armbian), checked file by file
//! against the built images; the generated dnsmasq configuration checked by dnsmasq itself,
//! and the nbd-server configuration served by nbd-server and listed by nbd-client.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube_image::decompress::Compression;
use pikube_test_oracles::require_tool;
use support::build_env::{
    K3S_VERSION, KEY, run_cli, serve_board_image, serve_k3s, stderr, write_token,
};
use support::fixtures::{self, ARMBIAN_KERNEL, Fixture, FixtureOpts};
use support::http::TestServer;
use support::nbd::{self, NbdServer};
use support::signing::CatalogSigner;

const ARMBIAN_DIR: &str = "dl.armbian.com/orangepizero3/archive";
const ARMBIAN_FILE: &str = "Armbian_25.8.1_Orangepizero3_bookworm_current_6.12.43_minimal.img.xz";
const SERIAL_DIR: &str = "2b7e6c2f";

fn cluster(nodes: &str, nbd_port: u16) -> String {
    format!(
        r#"cluster: lab
admin:
  user: ops
  ssh_authorized_keys: ["{KEY}"]
network: {{ gateway: 192.168.50.1, dns: [192.168.50.2], prefix: 24 }}
netboot: {{ server: 192.168.50.2, tftp_prefix: serial, nbd_port: {nbd_port} }}
nodes:
{nodes}"#
    )
}

const NODES: &str = r#"  - { name: cp1, board: rpi4, role: server, ip: 192.168.50.10, mac: "DC:A6:32:01:02:03", serial: "100000002B7E6C2F" }
  - { name: opi1, board: opizero3-test, role: agent, ip: 192.168.50.11, mac: "02:00:00:00:00:11" }
"#;

struct Env {
    dir: tempfile::TempDir,
    pi: Fixture,
    server: TestServer,
    signer: CatalogSigner,
}

impl Env {
    fn new(nodes: &str, nbd_port: u16) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("pikube-netboot")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let opts = FixtureOpts {
            total_mib: 128,
            os_prefix: true,
            netboot: true,
            ..FixtureOpts::default()
        };
        let pi = fixtures::ubuntu_raspi(dir.path(), opts.clone());
        let armbian = fixtures::armbian_allwinner(
            dir.path(),
            FixtureOpts {
                total_mib: 96,
                ..opts
            },
        );
        let server = TestServer::start();
        let signer = CatalogSigner::new();
        let pi_xz = std::fs::read(fixtures::compress(&pi.image, Compression::Xz)).unwrap();
        serve_board_image(&server, "rpi4", pi_xz, &signer);
        let a_xz = std::fs::read(fixtures::compress(&armbian.image, Compression::Xz)).unwrap();
        let sha = pikube_image::io::sha256_bytes(&a_xz);
        server.add(&format!("/{ARMBIAN_DIR}/{ARMBIAN_FILE}"), a_xz);
        server.add(
            &format!("/{ARMBIAN_DIR}/{ARMBIAN_FILE}.sha"),
            format!("{sha} {ARMBIAN_FILE}\n"),
        );
        serve_k3s(
            &server,
            K3S_VERSION,
            b"#!/bin/sh\necho stand-in k3s\n",
            b"airgap",
        );
        std::fs::write(dir.path().join("cluster.yaml"), cluster(nodes, nbd_port)).unwrap();
        write_token(dir.path());
        Env {
            dir,
            pi,
            server,
            signer,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn build(&self) -> Output {
        let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/direct/boards");
        let url = self.server.url();
        run_cli(
            self.dir.path(),
            &[
                ("PIKUBE_BOARDS_DIR", boards.as_path()),
                ("PIKUBE_TEST_KEYS", self.signer.keys_dir()),
            ],
            &[
                "build",
                "--all",
                "--mirror",
                &url,
                "--out",
                "out",
                "--netboot",
                "netboot",
            ],
        )
    }
}

/// Every file and symlink below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            match p.is_dir() {
                true => stack.push(p),
                false => out.push(p.strip_prefix(dir).unwrap().display().to_string()),
            }
        }
    }
    out.sort();
    out
}

#[test]
fn two_nodes_export_a_tree_that_dnsmasq_and_nbd_server_accept() {
    let port = nbd::free_port();
    let env = Env::new(NODES, port);
    let o = env.build();
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    let nb = env.path("netboot");
    let out = std::fs::canonicalize(env.path("out")).unwrap();

    // Exactly these files: the Pi's boot partition (files the plan marks secret would be left
    // out; its seed holds none), bootcode.bin at the root for the Pi 3 ROM, and the U-Boot node's entry and the
    // shared kernel files of its base image.
    let listing = files(&nb);
    let shared = listing
        .iter()
        .find_map(|f| {
            f.strip_prefix("tftp/boot/")
                .map(|r| r.split('/').next().unwrap().to_string())
        })
        .expect("a shared U-Boot directory");
    assert!(shared.starts_with("armbian-test-"), "{shared}");
    let v = ARMBIAN_KERNEL;
    let mut expected: Vec<String> = [
        "README.md",
        "dnsmasq.conf",
        "nbd-server.conf",
        "tftp/bootcode.bin",
        "tftp/pxelinux.cfg/01-02-00-00-00-00-11",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in [
        "bootcode.bin",
        "config.txt",
        "current/bcm2711-rpi-4-b.dtb",
        "current/cmdline.txt",
        "current/initrd.img",
        "current/overlays/README",
        "current/vmlinuz",
        "fixup4.dat",
        "meta-data",
        "network-config",
        "start4.elf",
        "user-data",
    ] {
        expected.push(format!("tftp/{SERIAL_DIR}/{f}"));
    }
    for f in [
        format!("vmlinuz-{v}"),
        format!("initrd.img-{v}"),
        "dtb/allwinner/sun50i-h618-orangepi-zero3.dtb".into(),
        "dtb/allwinner/overlay/sun50i-h616-uart5.dtbo".into(),
    ] {
        expected.push(format!("tftp/boot/{shared}/{f}"));
    }
    expected.sort();
    assert_eq!(listing, expected);

    // The Pi's files are those of its built boot partition, byte for byte.
    let pi_img = out.join("cp1.img");
    let boot = env.pi.part("system-boot").start;
    for f in listing
        .iter()
        .filter_map(|f| f.strip_prefix(&format!("tftp/{SERIAL_DIR}/")))
    {
        if f == "current/cmdline.txt" {
            continue;
        }
        assert_eq!(
            std::fs::read(nb.join(format!("tftp/{SERIAL_DIR}/{f}"))).unwrap(),
            fixtures::fat_read(&pi_img, boot, &format!("/{f}")),
            "{f}"
        );
    }
    // Its command line is the built one with the root on NBD.
    let built =
        String::from_utf8(fixtures::fat_read(&pi_img, boot, "/current/cmdline.txt")).unwrap();
    assert!(
        built.contains("root=LABEL=writable") && built.contains("cgroup_memory=1"),
        "{built}"
    );
    let expected_cmdline: Vec<String> = built
        .split_whitespace()
        .filter(|a| !a.starts_with("root=") && !a.starts_with("rootfstype="))
        .map(str::to_string)
        .chain(
            [
                "rootfstype=ext4",
                // The node's static address, configured by the initramfs.
                "ip=192.168.50.10::192.168.50.1:255.255.255.0:cp1:eth0:off:192.168.50.2",
                &format!("nbdroot=192.168.50.2:{port}/cp1"),
                "root=/dev/nbd0p2",
            ]
            .map(String::from),
        )
        .collect();
    assert_eq!(
        std::fs::read_to_string(nb.join(format!("tftp/{SERIAL_DIR}/current/cmdline.txt"))).unwrap(),
        expected_cmdline.join(" ") + "\n"
    );

    // The U-Boot node's entry, with the kernel arguments the plan put in armbianEnv.txt.
    assert_eq!(
        std::fs::read_to_string(nb.join("tftp/pxelinux.cfg/01-02-00-00-00-00-11")).unwrap(),
        format!(
            "# written by pikube-image build --netboot\ndefault opi1\nprompt 0\ntimeout 1\n\nlabel opi1\n    kernel /boot/{shared}/vmlinuz-{v}\n    fdtdir /boot/{shared}/dtb/\n    initrd /boot/{shared}/initrd.img-{v}\n    append rootwait rootfstype=ext4 ip=192.168.50.11::192.168.50.1:255.255.255.0:opi1:end0:off:192.168.50.2 nbdroot=192.168.50.2:{port}/opi1 root=/dev/nbd0p1 loglevel=1 usb-storage.quirks=0x2537:0x1066:u,0x2537:0x1068:u cgroup_enable=memory swapaccount=1\n"
        )
    );

    // Identical files are one inode: the Pi 3's bootcode.bin at the root and the node's.
    let ino = |p: &str| std::fs::metadata(nb.join(p)).unwrap().ino();
    assert_eq!(
        ino("tftp/bootcode.bin"),
        ino(&format!("tftp/{SERIAL_DIR}/bootcode.bin"))
    );
    assert_ne!(
        ino("tftp/bootcode.bin"),
        ino(&format!("tftp/{SERIAL_DIR}/start4.elf"))
    );

    // The generated configurations.
    let nbd_conf = std::fs::read_to_string(nb.join("nbd-server.conf")).unwrap();
    assert!(
        nbd_conf.ends_with(&format!(
            "[generic]\nport = {port}\nallowlist = true\n[cp1]\nexportname = {}\n[opi1]\nexportname = {}\n",
            out.join("cp1.img").display(),
            out.join("opi1.img").display()
        )),
        "{nbd_conf}"
    );
    let dnsmasq = std::fs::read_to_string(nb.join("dnsmasq.conf")).unwrap();
    for line in [
        "dhcp-range=192.168.50.0,static,255.255.255.0",
        "dhcp-host=dc:a6:32:01:02:03,192.168.50.10,cp1",
        "dhcp-host=02:00:00:00:00:11,192.168.50.11,opi1",
        "pxe-service=0,\"Raspberry Pi Boot\"",
        "dhcp-vendorclass=set:uboot,U-Boot",
        "dhcp-boot=tag:uboot,pxelinux.0",
        &format!(
            "tftp-root={}",
            std::fs::canonicalize(&nb).unwrap().join("tftp").display()
        ),
    ] {
        assert!(
            dnsmasq.lines().any(|l| l == line),
            "{line} not in\n{dnsmasq}"
        );
    }

    if require_tool("dnsmasq", "dnsmasq-base") {
        let o = Command::new("dnsmasq")
            .arg("--test")
            .arg("-C")
            .arg(nb.join("dnsmasq.conf"))
            .output()
            .unwrap();
        assert!(o.status.success(), "dnsmasq --test: {}", stderr(&o));
    }
    if require_tool("nbd-server", "nbd-server") && require_tool("nbd-client", "nbd-client") {
        assert_eq!(list_exports(&nb, port), ["cp1", "opi1"]);
    }
}

/// Starts nbd-server on the tree's configuration (the helper the boot tests use), lists its
/// exports with `nbd-client -l` and checks that dropping the handle stops the server.
fn list_exports(nb: &Path, port: u16) -> Vec<String> {
    let server = NbdServer::start(nb).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.port(), port);
    let o = Command::new("nbd-client")
        .args(["-l", "127.0.0.1", &port.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "nbd-client -l: {}", stderr(&o));
    drop(server);
    assert!(
        !nbd::greets(port),
        "nbd-server still answers after the drop"
    );
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    let mut names: Vec<String> = listed
        .lines()
        .filter(|l| !l.starts_with("Negotiation") && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn the_nbd_port_is_read_from_the_generic_section() {
    let conf = "# c\n[generic]\nport = 40123\nallowlist = true\n[cp1]\nport = 1\n";
    assert_eq!(nbd::config_port(conf), Some(40123));
    assert_eq!(nbd::config_port("[cp1]\nport = 1\n"), None);
}

#[test]
fn nodes_missing_what_their_network_boot_needs_stop_the_build_before_any_download() {
    let nodes = r#"  - { name: cp1, board: rpi4, role: server, ip: 192.168.50.10, mac: "dc:a6:32:01:02:03" }
  - { name: opi1, board: opizero3-test, role: agent }
"#;
    let env = Env::new(nodes, 10809);
    let o = env.build();
    assert!(!o.status.success());
    let e = stderr(&o);
    for part in [
        "node 'cp1' (rpi4) has no serial",
        "node 'opi1' (opizero3-test) has no mac",
        "node 'opi1' would get no DHCP lease",
        "netboot.dhcp_range",
    ] {
        assert!(e.contains(part), "{part} not in {e}");
    }
    assert!(!env.path("out").exists() || files(&env.path("out")).is_empty());
    assert!(!env.path("netboot").exists());
    assert_eq!(env.server.total_hits(), 0, "nothing is downloaded");
}
