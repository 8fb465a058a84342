//! `build --netboot DIR`: the network boot tree of a two-node inventory, a Raspberry Pi 4
//! (Ubuntu, `current/` os_prefix layout) and a U-Boot board (Armbian), checked file by file
//! against the built images; the generated dnsmasq configuration checked by dnsmasq itself,
//! and the nbd-server configuration served by nbd-server and listed by nbd-client.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pikube_image::decompress::Compression;
use pikube_test_oracles::{require_root, require_tool};
use support::build_env::{
    K3S_VERSION, KEY, run_cli, serve_board_image, serve_k3s, stderr, write_token,
};
use support::fixtures::{self, ARMBIAN_KERNEL, Fixture, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

const ARMBIAN_DIR: &str = "dl.armbian.com/orangepizero3/archive";
const ARMBIAN_FILE: &str = "Armbian_25.8.1_Orangepizero3_bookworm_current_6.12.43_minimal.img.xz";
const SERIAL_DIR: &str = "2b7e6c2f";

fn cluster(net: &str, nodes: &str, nbd_port: u16) -> String {
    format!(
        r#"cluster: lab
admin:
  user: ops
  ssh_authorized_keys: ["{KEY}"]
network: {{ gateway: {net}.1, dns: [{net}.2], prefix: 24 }}
netboot: {{ server: {net}.2, tftp_prefix: serial, nbd_port: {nbd_port} }}
nodes:
{nodes}"#
    )
}

/// The network of the tests that do not serve the tree.
const NET: &str = "192.168.50";

/// A Raspberry Pi 4 and a U-Boot board on `net`.0/24.
fn nodes(net: &str) -> String {
    format!(
        r#"  - {{ name: cp1, board: rpi4, role: server, ip: {net}.10, mac: "DC:A6:32:01:02:03", serial: "100000002B7E6C2F" }}
  - {{ name: opi1, board: opizero3-test, role: agent, ip: {net}.11, mac: "02:00:00:00:00:11" }}
"#
    )
}

struct Env {
    dir: tempfile::TempDir,
    pi: Fixture,
    server: TestServer,
    signer: CatalogSigner,
}

impl Env {
    fn new(net: &str, nodes: &str, nbd_port: u16) -> Env {
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
        std::fs::write(
            dir.path().join("cluster.yaml"),
            cluster(net, nodes, nbd_port),
        )
        .unwrap();
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
    let port = support::nbd::free_port();
    let env = Env::new(NET, &nodes(NET), port);
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
        .chain([
            "rootfstype=ext4".to_string(),
            // The node's static address, configured by the initramfs.
            "ip=192.168.50.10::192.168.50.1:255.255.255.0:cp1:eth0:off:192.168.50.2".to_string(),
            // A port other than 10809 is carried by nbdroot=host:port/name.
            format!("nbdroot=192.168.50.2:{port}/cp1"),
            "root=/dev/nbd0p2".to_string(),
        ])
        .collect();
    assert_eq!(
        std::fs::read_to_string(nb.join(format!("tftp/{SERIAL_DIR}/current/cmdline.txt"))).unwrap(),
        expected_cmdline.join(" ") + "\n"
    );

    // The U-Boot node's entry, with the kernel arguments the plan put in armbianEnv.txt.
    assert_eq!(
        std::fs::read_to_string(nb.join("tftp/pxelinux.cfg/01-02-00-00-00-00-11")).unwrap(),
        format!(
            "# written by pikube-image build --netboot\ndefault opi1\nprompt 0\ntimeout 1\n\nlabel opi1\n    kernel /boot/{shared}/vmlinuz-{v}\n    fdtdir /boot/{shared}/dtb/\n    fdtoverlays /boot/{shared}/dtb/allwinner/overlay/sun50i-h616-uart5.dtbo\n    initrd /boot/{shared}/initrd.img-{v}\n    append rootwait rootfstype=ext4 ip=192.168.50.11::192.168.50.1:255.255.255.0:opi1:end0:off:192.168.50.2 nbdroot=192.168.50.2:{port}/opi1 root=/dev/nbd0p1 loglevel=1 usb-storage.quirks=0x2537:0x1066:u,0x2537:0x1068:u cgroup_enable=memory swapaccount=1\n"
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

/// Starts nbd-server in the foreground on the tree's configuration and lists its exports
/// with `nbd-client -l`.
fn list_exports(nb: &Path, port: u16) -> Vec<String> {
    let mut server = Command::new("nbd-server")
        .arg("-d")
        .arg("-C")
        .arg(nb.join("nbd-server.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = wait_for(|| exports_listed("127.0.0.1", port));
    server.kill().unwrap();
    server.wait().unwrap();
    listed.expect("nbd-server answered nbd-client -l")
}

/// The export names `nbd-client -l HOST PORT` lists, sorted; `None` while nothing answers.
fn exports_listed(host: &str, port: u16) -> Option<Vec<String>> {
    let o = Command::new("nbd-client")
        .args(["-l", host, &port.to_string()])
        .output()
        .unwrap();
    if !o.status.success() {
        return None;
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with("Negotiation") && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    names.sort();
    Some(names)
}

/// `f()` once it returns something, trying for up to 10 seconds.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A veth pair made for one test, the first end holding `<net>.2/24`; deleted when dropped.
/// Its /24 is one of the 512 of the benchmarking range 198.18.0.0/15, chosen by process id,
/// so tests running at the same time on one machine do not share addresses.
struct TestLink {
    name: String,
    net: String,
}

impl TestLink {
    fn new() -> TestLink {
        let id = std::process::id();
        let n = id % 512;
        let link = TestLink {
            name: format!("pkn{}", id % 1_000_000),
            net: format!("198.{}.{}", 18 + n / 256, n % 256),
        };
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
        };
        let peer = format!("{}p", link.name);
        ip(&[
            "link", "add", &link.name, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}.2/24", link.net),
            "dev",
            &link.name,
        ]);
        ip(&["link", "set", &link.name, "up"]);
        ip(&["link", "set", &peer, "up"]);
        link
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// Process ids and names of the processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if ppid == Some(&pid.to_string()) {
            out.push((p, stat[open + 1..close].to_string()));
        }
    }
    out.sort();
    out
}

/// The arguments of a running process.
fn cmdline_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn serve_runs_dnsmasq_and_nbd_server_on_the_interface_until_ctrl_c() {
    if !(require_root("netboot serve (DHCP and TFTP ports, a veth pair)")
        && require_tool("dnsmasq", "dnsmasq-base")
        && require_tool("nbd-server", "nbd-server")
        && require_tool("nbd-client", "nbd-client")
        && require_tool("curl", "curl")
        && require_tool("ip", "iproute2"))
    {
        return;
    }
    let link = TestLink::new();
    let net = &link.net;
    let server = format!("{net}.2");
    let port = support::nbd::free_port();
    let env = Env::new(net, &nodes(net), port);
    let o = env.build();
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    // dnsmasq serves TFTP as an unprivileged user, who must reach the tree.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nb = std::fs::canonicalize(env.path("netboot")).unwrap();
    let log = env.path("serve.log");

    // Ctrl-C in a terminal signals the foreground process group: the test makes one.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["netboot", "serve", "netboot", "--interface", &link.name])
        .current_dir(env.dir.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = serve.id();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Both servers run, as children of the command, with the tree's configuration.
    let listed = wait_for(|| exports_listed(&server, port));
    let children = children_of(pid);
    let names: Vec<&str> = children.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names.len(),
        2,
        "{children:?}
{}",
        log_text()
    );
    assert!(
        names.contains(&"dnsmasq") && names.contains(&"nbd-server"),
        "{children:?}"
    );
    for (child, name) in &children {
        let args = cmdline_of(*child);
        let expected: Vec<String> = match name.as_str() {
            "dnsmasq" => vec![
                format!("--conf-file={}", nb.join("dnsmasq.conf").display()),
                format!("--interface={}", link.name),
                "--bind-interfaces".into(),
                "--except-interface=lo".into(),
            ],
            _ => vec![
                "-d".into(),
                "-C".into(),
                nb.join("nbd-server.conf").display().to_string(),
            ],
        };
        for a in &expected {
            assert!(args.contains(a), "{a} not in {name} {args:?}");
        }
    }

    // nbd-client lists exactly the nodes' exports, on the tree's port.
    assert_eq!(
        listed.unwrap_or_else(|| panic!("nbd-server did not answer:\n{}", log_text())),
        ["cp1", "opi1"]
    );

    // TFTP serves the tree's files at the interface's address: the Pi's command line and
    // the U-Boot node's entry.
    for f in [
        format!("{SERIAL_DIR}/current/cmdline.txt"),
        "pxelinux.cfg/01-02-00-00-00-00-11".to_string(),
    ] {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("tftp://{server}/{f}")])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl tftp {f}: {}\n{}",
            stderr(&o),
            log_text()
        );
        assert_eq!(
            o.stdout,
            std::fs::read(nb.join("tftp").join(&f)).unwrap(),
            "{f}"
        );
    }
    // DHCP answers on that interface alone.
    assert!(
        log_text().contains(&format!(
            "DHCP, sockets bound exclusively to interface {}",
            link.name
        )),
        "{}",
        log_text()
    );

    // Ctrl-C stops both servers and the command; no process is left.
    // SAFETY: kill(2) on the process group the test created.
    assert_eq!(
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGINT) },
        0
    );
    let status = wait_for(|| serve.try_wait().unwrap()).expect("serve exits after Ctrl-C");
    assert_eq!(status.code(), Some(130), "{}", log_text());
    for (child, name) in &children {
        assert!(
            !Path::new(&format!("/proc/{child}")).exists(),
            "{name} ({child}) still exists after Ctrl-C"
        );
    }
    assert!(
        log_text().contains("interrupted: stopped dnsmasq and nbd-server"),
        "{}",
        log_text()
    );

    // When one server stops (dnsmasq cannot bind to an interface that does not exist), the
    // other is stopped too and the command fails saying so.
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["netboot", "serve", "netboot", "--interface", "pknone0"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("dnsmasq stopped") && e.contains("the other server was stopped too"),
        "{e}"
    );
    let conf = nb.join("nbd-server.conf").display().to_string();
    let left: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&conf))
        })
        .collect();
    assert!(left.is_empty(), "nbd-server left running: {left:?}");
}

/// `netboot serve` with `PATH` holding only `present`, on a tree with both configuration
/// files: it fails before starting anything.
fn serve_without(present: &str) -> (Output, Duration) {
    let t = tempfile::tempdir().unwrap();
    let nb = t.path().join("netboot");
    std::fs::create_dir_all(nb.join("tftp")).unwrap();
    std::fs::write(nb.join("dnsmasq.conf"), "port=0\n").unwrap();
    std::fs::write(nb.join("nbd-server.conf"), "[generic]\n").unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(present))
        .find(|f| f.is_file())
        .unwrap();
    std::os::unix::fs::symlink(found, bin.join(present)).unwrap();
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["netboot", "serve"])
        .arg(&nb)
        .env("PATH", &bin)
        .output()
        .unwrap();
    (o, start.elapsed())
}

#[test]
fn serve_without_dnsmasq_or_nbd_server_names_the_package_to_install() {
    for (present, missing, package) in [
        ("nbd-server", "dnsmasq", "dnsmasq-base"),
        ("dnsmasq", "nbd-server", "nbd-server"),
    ] {
        if !require_tool(
            present,
            if present == "dnsmasq" {
                "dnsmasq-base"
            } else {
                present
            },
        ) {
            return;
        }
        let (o, took) = serve_without(present);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains(&format!("{missing} is not on PATH"))
                && e.contains(&format!("install Debian's {package} package")),
            "{e}"
        );
        assert!(!e.contains("serving"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}

#[test]
fn nodes_missing_what_their_network_boot_needs_stop_the_build_before_any_download() {
    let nodes = r#"  - { name: cp1, board: rpi4, role: server, ip: 192.168.50.10, mac: "dc:a6:32:01:02:03" }
  - { name: opi1, board: opizero3-test, role: agent }
"#;
    let env = Env::new(NET, nodes, 10809);
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
