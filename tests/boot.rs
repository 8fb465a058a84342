//! End-to-end boot test: images built by `pikube-image build` boot in QEMU and come up as the
//! nodes cluster.yaml describes, as seen from the serial console.
//!
//! The base image is Debian bookworm laid out like Ubuntu's preinstalled raspi image
//! (tests/vm/build-rootfs.sh, tests/vm/make-disk.sh), published under the test board's catalog
//! URL (tests/vm/boards) by a local HTTP server used as `--mirror`. Each node's image is booted
//! with the kernel, initrd and command line its own boot partition names; a unit in the guest
//! prints facts after cloud-init's final stage and powers off.
//!
//! Runs with `cargo test --workspace`; skips with a printed reason when it cannot build or boot
//! a guest here (not root, mmdebstrap or QEMU missing), or fails under
//! `PIKUBE_REQUIRE_ORACLES=1`. `PIKUBE_BOOT_ARCH=arm64` boots an arm64
//! guest (qemu-system-aarch64 -M virt -cpu cortex-a72) instead of amd64.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pikube_test_oracles::{require_tool, skip};
use support::http::TestServer;
use support::nbd::{self, NbdServer};
use support::vm::{self, Boot, DiskLayout, GuestArch};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c ops@laptop";
const K3S_VERSION: &str = "v1.31.4+k3s1";
const TOKEN: &str = "K10boot-test-token::server:5ecret";
/// Per guest; both guests boot at the same time, one vCPU each.
const BOOT_TIMEOUT: Duration = Duration::from_secs(9 * 60);

/// Held while a test's guests run: tests prepare their images in parallel but boot one pair
/// at a time, so no guest shares the machine's cores with more than one other under TCG.
static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn guests_slot() -> std::sync::MutexGuard<'static, ()> {
    GUESTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster_yaml(board: &str) -> String {
    format!(
        r#"cluster: boottest
domain: lab.test
timezone: Europe/Berlin
admin:
  user: ops
  ssh_authorized_keys: ["{KEY}"]
network: {{ gateway: 10.0.2.2, dns: [10.0.2.3], prefix: 24 }}
k3s:
  version: {K3S_VERSION}
  token_file: secrets/k3s-token
nodes:
  - {{ name: cp1, board: {board}, role: server, ip: 10.0.2.15/24 }}
  - {{ name: w1, board: {board}, role: agent }}
"#
    )
}

#[test]
fn built_images_boot_as_their_nodes() {
    let arch = match GuestArch::from_env() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!("end-to-end boot test ({arch}): {why}"));
        return;
    }
    eprintln!(
        "boot test: guest architecture {arch} ({}; set PIKUBE_BOOT_ARCH=arm64 or amd64 to choose)",
        arch.qemu_system()
    );
    let t0 = Instant::now();
    let base = vm::base_image(arch).unwrap_or_else(|e| panic!("base image: {e}"));
    eprintln!("boot test: base image ready after {:.0?}", t0.elapsed());

    let dir = tempfile::Builder::new()
        .prefix("pikube-boot")
        .tempdir_in("/var/tmp")
        .unwrap();
    // PIKUBE_BOOT_KEEP=1 keeps the built images, overlays and logs for a closer look.
    let keep = std::env::var_os("PIKUBE_BOOT_KEEP").is_some_and(|v| v == "1");
    let d = if keep {
        let p = dir.keep();
        eprintln!("boot test: keeping {}", p.display());
        p
    } else {
        dir.path().to_path_buf()
    };
    let d = d.as_path();
    let srv = TestServer::start();
    vm::serve_base_image(&srv, arch, &base);
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    std::fs::write(d.join("cluster.yaml"), cluster_yaml(arch.board())).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.join("secrets/k3s-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args([
            "build",
            "--config",
            "cluster.yaml",
            "--node",
            "cp1",
            "--node",
            "w1",
        ])
        .arg("--mirror")
        .arg(srv.url())
        .args(["--out", "out"])
        .current_dir(d)
        .env("PIKUBE_CACHE_DIR", d.join("cache"))
        .env("PIKUBE_BOARDS_DIR", vm::boards_dir())
        .output()
        .unwrap();
    eprintln!(
        "$ pikube-image build --node cp1 --node w1 ({:.1?})\n{}{}",
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pikube-image build failed");

    eprintln!(
        "boot test: images built, {:.0?} since the start",
        t0.elapsed()
    );
    boot_and_check(&d.join("out"), arch, &release.airgap_name);
    eprintln!("boot test: total {:.0?}", t0.elapsed());
}

/// Boots `cp1.img` (server) and `w1.img` (agent) from `out` and checks each.
fn boot_and_check(out: &Path, arch: GuestArch, airgap_name: &str) {
    let nodes = [("cp1", "server"), ("w1", "agent")];
    let t = Instant::now();
    // Boot both at once: one vCPU each.
    let slot = guests_slot();
    let boots: Vec<(String, String, Boot, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&(name, role)| {
                let img = out.join(format!("{name}.img"));
                let work = out.join("vm").join(name);
                s.spawn(move || {
                    let has_k3s = k3s_in_image(&img);
                    let boot = vm::boot(&img, arch, &work, BOOT_TIMEOUT)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    (name.to_string(), role.to_string(), boot, has_k3s)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(slot);

    let mut failures = Vec::new();
    for (name, role, boot, has_k3s) in &boots {
        eprintln!(
            "boot test: {name} ({arch}, {}) {} after {:.0?}",
            boot.accel,
            if boot.timed_out {
                "TIMED OUT"
            } else {
                "powered off"
            },
            boot.elapsed
        );
        for (k, v) in &boot.facts.facts {
            eprintln!("  {name}: {k}={v}");
        }
        for (block, (lines, rc)) in &boot.facts.blocks {
            eprintln!("  {name}: [{block}] (exit {rc:?})");
            for l in lines {
                eprintln!("  {name}: | {l}");
            }
        }
        // Keep the console log where it can be read after the temporary directory is gone.
        let kept =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{arch}-{name}.console.log"));
        match std::fs::write(&kept, &boot.log) {
            Ok(()) => eprintln!("boot test: {name}: console log kept in {}", kept.display()),
            Err(e) => eprintln!(
                "boot test: {name}: cannot keep the console log in {}: {e}",
                kept.display()
            ),
        }
        let mut c = Checks {
            node: name.clone(),
            failures: Vec::new(),
        };
        check_node(&mut c, role, boot, arch, DiskLayout::Raspi, Medium::Disk);
        if *has_k3s {
            check_k3s(&mut c, role, boot, airgap_name);
        } else {
            eprintln!(
                "boot test: {name}: k3s checks SKIPPED: the built image has no /usr/local/bin/k3s \
                 (no k3s payload in this build)"
            );
        }
        failures.extend(c.failures);
    }
    eprintln!("boot test: both guests done after {:.0?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// An image in Ubuntu for Rockchip's layout (GPT, CIDATA seed, extlinux.conf on the root file
/// system) builds and boots as its node: kernel, initrd and command line are taken from the
/// built image's extlinux.conf as U-Boot takes them. amd64 guests only. Shares the cached
/// root file system of the other boot tests and boots when they leave the guests' slot.
#[test]
fn rockchip_layout_image_boots_as_its_node() {
    let arch = GuestArch::from_env().unwrap_or_else(|e| panic!("{e}"));
    if arch != GuestArch::Amd64 {
        skip(format_args!(
            "Rockchip-layout boot test: only amd64 guests ({arch} asked)"
        ));
        return;
    }
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!("Rockchip-layout boot test ({arch}): {why}"));
        return;
    }
    let t0 = Instant::now();
    let base =
        vm::base_image_in(arch, DiskLayout::Rockchip).unwrap_or_else(|e| panic!("base image: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-rk")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let srv = TestServer::start();
    vm::serve_rockchip_image(&srv, &base);
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    let cluster = cluster_yaml("testpc-rockchip").replace(
        "  - { name: w1, board: testpc-rockchip, role: agent }\n",
        "",
    );
    std::fs::write(d.join("cluster.yaml"), cluster).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.join("secrets/k3s-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["build", "--config", "cluster.yaml", "--node", "cp1"])
        .arg("--mirror")
        .arg(srv.url())
        .args(["--out", "out"])
        .current_dir(d)
        .env("PIKUBE_CACHE_DIR", d.join("cache"))
        .env("PIKUBE_BOARDS_DIR", vm::boards_dir())
        .output()
        .unwrap();
    eprintln!(
        "$ pikube-image build --node cp1 (Rockchip layout)\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pikube-image build failed");
    let img = d.join("out/cp1.img");
    let slot = guests_slot();
    let boot = vm::boot(&img, arch, &d.join("vm/cp1"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("cp1 (Rockchip layout): {e}"));
    drop(slot);
    eprintln!(
        "boot test: cp1 (Rockchip layout) {} after {:.0?}",
        if boot.timed_out {
            "TIMED OUT"
        } else {
            "powered off"
        },
        boot.elapsed
    );
    for (k, v) in &boot.facts.facts {
        eprintln!("  rk cp1: {k}={v}");
    }
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-amd64-rockchip-cp1.console.log");
    let _ = std::fs::write(&kept, &boot.log);
    let mut c = Checks {
        node: "cp1".into(),
        failures: Vec::new(),
    };
    check_node(
        &mut c,
        "server",
        &boot,
        arch,
        DiskLayout::Rockchip,
        Medium::Disk,
    );
    check_k3s(&mut c, "server", &boot, &release.airgap_name);
    eprintln!("boot test: Rockchip layout total {:.0?}", t0.elapsed());
    assert!(
        c.failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        c.failures.len(),
        c.failures.join("\n\n")
    );
}

/// Nodes on the other Raspberry Pi layouts of the catalog: `cp1` (server) on Ubuntu 26.04's
/// (kernel, initrd and command line under `current/`, as the firmware reads them) and `w1`
/// (agent) on Raspberry Pi OS's (root by PARTUUID, seed on `bootfs` with the datasource on
/// the command line, sshd shipped disabled). amd64 guests only.
#[test]
fn raspberry_pi_layouts_boot_as_their_nodes() {
    let arch = GuestArch::Amd64;
    if GuestArch::from_env().is_ok_and(|a| a != arch) {
        eprintln!(
            "boot test of the Raspberry Pi layouts: amd64 guests only, not run for PIKUBE_BOOT_ARCH"
        );
        return;
    }
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!(
            "end-to-end boot test of the Raspberry Pi layouts: {why}"
        ));
        return;
    }
    // The whole test in the guests' slot: laying out its images (xz on every core) next to
    // another test's guests slows them past their timeout.
    let slot = guests_slot();
    let t0 = Instant::now();
    let layouts = [
        ("cp1", "server", vm::Layout::Ubuntu2604),
        ("w1", "agent", vm::Layout::Raspios),
    ];
    let images: Vec<_> = layouts
        .iter()
        .map(|(_, _, l)| vm::layout_image(*l).unwrap_or_else(|e| panic!("{} image: {e}", l.name())))
        .collect();
    eprintln!("boot test: layout images ready after {:.0?}", t0.elapsed());
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-layouts")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let srv = TestServer::start();
    for ((_, _, layout), image) in layouts.iter().zip(&images) {
        vm::serve_layout_image(&srv, *layout, image);
    }
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    let yaml = cluster_yaml("testpc-rpi")
        .replace(
            "board: testpc-rpi, role: server",
            &format!("board: testpc-rpi, os: {}, role: server", layouts[0].2.os()),
        )
        .replace(
            "board: testpc-rpi, role: agent",
            &format!("board: testpc-rpi, os: {}, role: agent", layouts[1].2.os()),
        );
    std::fs::write(d.join("cluster.yaml"), yaml).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.join("secrets/k3s-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["build", "--config", "cluster.yaml", "--all", "--out", "out"])
        .arg("--mirror")
        .arg(srv.url())
        .current_dir(d)
        .env("PIKUBE_CACHE_DIR", d.join("cache"))
        .env("PIKUBE_BOARDS_DIR", vm::boards_dir())
        .output()
        .unwrap();
    eprintln!(
        "$ pikube-image build --all\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pikube-image build failed");

    let boots: Vec<(&str, &str, vm::Layout, Boot)> = std::thread::scope(|s| {
        let handles: Vec<_> = layouts
            .iter()
            .map(|&(name, role, layout)| {
                let img = d.join("out").join(format!("{name}.img"));
                let work = d.join("out/vm").join(name);
                s.spawn(move || {
                    let boot = vm::boot(&img, arch, &work, BOOT_TIMEOUT)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    (name, role, layout, boot)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(slot);
    let mut failures = Vec::new();
    for (name, role, layout, boot) in &boots {
        eprintln!(
            "boot test: {name} ({} layout) {} after {:.0?}",
            layout.name(),
            if boot.timed_out {
                "TIMED OUT"
            } else {
                "powered off"
            },
            boot.elapsed
        );
        for (k, v) in &boot.facts.facts {
            eprintln!("  {name}: {k}={v}");
        }
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("boot-{}-{name}.console.log", layout.name()));
        let _ = std::fs::write(&kept, &boot.log);
        let mut c = Checks {
            node: name.to_string(),
            failures: Vec::new(),
        };
        check_layout_node(&mut c, *layout, boot);
        if c.failures.is_empty() || boot.facts.get("facts") == Some("complete") {
            check_k3s(&mut c, role, boot, &release.airgap_name);
        }
        failures.extend(c.failures);
    }
    eprintln!(
        "boot test of the Raspberry Pi layouts: total {:.0?}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// What a node on `layout` must show after first boot: the root file system its command line
/// names, cloud-init done with the node's identity, the admin user, sshd enabled and running.
fn check_layout_node(c: &mut Checks, layout: vm::Layout, boot: &Boot) {
    let f = &boot.facts;
    let name = c.node.clone();
    if boot.timed_out || f.get("facts") != Some("complete") {
        c.that(false, || {
            format!(
                "did not report its facts and power off (timed out: {}); console log tail:\n{}",
                boot.timed_out,
                boot.tail(80)
            )
        });
        return;
    }
    let root = f.get("root").unwrap_or_default();
    c.that(
        root.starts_with("/dev/vda2 ext4 ") && root.contains(" rw"),
        || format!("root mount is '{root}', expected /dev/vda2 ext4 rw"),
    );
    c.eq(
        "EXT4-fs errors in the kernel log",
        f.get("ext4-errors"),
        "0",
    );
    c.that(
        f.get("boot-firmware")
            .is_some_and(|v| v.starts_with("/dev/vda1 vfat")),
        || format!("/boot/firmware is {:?}", f.get("boot-firmware")),
    );
    c.that(f.get("cloud-init") == Some("done"), || {
        format!(
            "cloud-init status {:?}:\n{}\nproblems:\n{}",
            f.get("cloud-init"),
            f.block("cloud-init-status").join("\n"),
            f.block("cloud-init-problems").join("\n")
        )
    });
    c.eq("hostname", f.get("hostname"), &name);
    c.eq("fqdn", f.get("fqdn"), &format!("{name}.lab.test"));
    let users = f.all("user");
    c.that(users.contains(&"ops"), || {
        format!("no admin user 'ops' among {users:?}")
    });
    c.that(f.all("user.ops.authorized_key") == [KEY], || {
        format!("ops's keys: {:?}", f.all("user.ops.authorized_key"))
    });
    c.eq("sshd", f.get("unit.ssh.service"), "enabled/active");
    let cmdline = f.get("cmdline").unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let mut once = vec!["cgroup_enable=memory", "cgroup_memory=1"];
    match layout {
        vm::Layout::Ubuntu2604 => {
            once.extend(["root=LABEL=writable", "panic=10"]);
            c.eq("root file system label", f.get("root-label"), "writable");
        }
        vm::Layout::Raspios => {
            once.push("root=PARTUUID=6c3a4d1e-02");
            c.eq("root file system label", f.get("root-label"), "rootfs");
            let ds: Vec<&&str> = words
                .iter()
                .filter(|w| w.starts_with("ds=nocloud;i=pikube-w1-"))
                .collect();
            c.that(ds.len() == 1, || {
                format!("ds=nocloud;i=<instance-id> once in {cmdline}")
            });
            c.that(f.get("machine-id").is_some_and(|m| m.len() == 32), || {
                format!(
                    "machine id {:?}, expected one made at first boot",
                    f.get("machine-id")
                )
            });
        }
    }
    for arg in once {
        let n = words.iter().filter(|w| **w == arg).count();
        c.that(n == 1, || {
            format!("'{arg}' appears {n} times in /proc/cmdline: {cmdline}")
        });
    }
}

/// MAC addresses of the netbooted guests' NICs, naming their TFTP directories.
const NETBOOT_MACS: [(&str, &str, &str); 2] = [
    ("cp1", "server", "52:54:00:70:00:01"),
    ("w1", "agent", "52:54:00:70:00:02"),
];

/// `build --netboot` exports both nodes of the test board as Raspberry Pis booting from the
/// network (TFTP directories by MAC, root over NBD from QEMU's host address 10.0.2.2), and
/// each boots the kernel, initramfs and `cmdline.txt` of its TFTP directory, as the firmware
/// names them in its `config.txt`, with no disk attached: the initramfs mounts the node's
/// disk image, served by nbd-server on the host, as its root. amd64 guests only.
#[test]
fn pi_netboot_export_boots_from_nbd() {
    let arch = GuestArch::Amd64;
    if GuestArch::from_env().is_ok_and(|a| a != arch) {
        eprintln!("netboot boot test: amd64 guests only, not run for PIKUBE_BOOT_ARCH");
        return;
    }
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!("netboot boot test: {why}"));
        return;
    }
    if !require_tool("nbd-server", "nbd-server") {
        return;
    }
    let t0 = Instant::now();
    let base = vm::base_image(arch).unwrap_or_else(|e| panic!("base image: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-netboot")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let srv = TestServer::start();
    vm::serve_base_image(&srv, arch, &base);
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    let port = nbd::free_port();
    let mut yaml = cluster_yaml(arch.board()).replace(
        "nodes:\n",
        &format!(
            "netboot: {{ server: 10.0.2.2, tftp_prefix: mac, nbd_port: {port}, \
             dhcp_range: \"10.0.2.15,10.0.2.31\" }}\nnodes:\n"
        ),
    );
    for (name, _, mac) in NETBOOT_MACS {
        yaml = yaml.replace(
            &format!("{{ name: {name}, "),
            &format!("{{ name: {name}, mac: \"{mac}\", "),
        );
    }
    std::fs::write(d.join("cluster.yaml"), yaml).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.join("secrets/k3s-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["build", "--config", "cluster.yaml", "--all", "--out", "out"])
        .args(["--netboot", "netboot"])
        .arg("--mirror")
        .arg(srv.url())
        .current_dir(d)
        .env("PIKUBE_CACHE_DIR", d.join("cache"))
        .env("PIKUBE_BOARDS_DIR", vm::boards_dir())
        .output()
        .unwrap();
    eprintln!(
        "$ pikube-image build --all --netboot netboot\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pikube-image build --netboot failed");
    // The downloads are not needed any more; the disk images are the NBD exports.
    let _ = std::fs::remove_dir_all(d.join("cache"));

    let nbd_server =
        NbdServer::start(&d.join("netboot")).unwrap_or_else(|e| panic!("nbd-server: {e}"));
    let files: Vec<vm::BootFiles> = NETBOOT_MACS
        .iter()
        .map(|(name, _, mac)| {
            let tftp = d.join("netboot/tftp").join(mac.replace(':', "-"));
            vm::tftp_boot_files(&tftp).unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect();
    let slot = guests_slot();
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let handles: Vec<_> = NETBOOT_MACS
            .iter()
            .zip(&files)
            .map(|((name, _, mac), files)| {
                let work = d.join("vm").join(name);
                s.spawn(move || {
                    vm::run_guest(&vm::Guest {
                        what: format!("{name} from the network (no disk)"),
                        files,
                        arch,
                        work: &work,
                        timeout: BOOT_TIMEOUT,
                        disk: None,
                        network: vm::Network::HostReachable {
                            mac: Some(mac.to_string()),
                        },
                    })
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(slot);
    drop(nbd_server);

    let mut failures = Vec::new();
    for ((name, role, _), boot) in NETBOOT_MACS.iter().zip(&boots) {
        eprintln!(
            "boot test: {name} (netboot) {} after {:.0?}",
            if boot.timed_out {
                "TIMED OUT"
            } else {
                "powered off"
            },
            boot.elapsed
        );
        for (k, v) in &boot.facts.facts {
            eprintln!("  nb {name}: {k}={v}");
        }
        for (block, (lines, rc)) in &boot.facts.blocks {
            eprintln!("  nb {name}: [{block}] (exit {rc:?})");
            for l in lines {
                eprintln!("  nb {name}: | {l}");
            }
        }
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("boot-{arch}-netboot-{name}.console.log"));
        let _ = std::fs::write(&kept, &boot.log);
        eprintln!("boot test: {name}: console log kept in {}", kept.display());
        let mut c = Checks {
            node: name.to_string(),
            failures: Vec::new(),
        };
        check_node(&mut c, role, boot, arch, DiskLayout::Raspi, Medium::Nbd);
        if boot.facts.get("facts") == Some("complete") {
            check_k3s(&mut c, role, boot, &release.airgap_name);
            check_netboot_network(&mut c, role, boot, port);
        }
        // The guest unmounted its root before powering off: the image is clean.
        let img = d.join("out").join(format!("{name}.img"));
        let off = vm::partition_offset(&img, "writable").unwrap_or_else(|e| panic!("{e}"));
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(format!("{}?offset={off}", img.display()))
            .output()
            .unwrap();
        c.that(fsck.status.success(), || {
            format!(
                "e2fsck -fn of its root file system after the boot ({}):\n{}{}",
                fsck.status,
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            )
        });
        failures.extend(c.failures);
    }
    eprintln!("netboot boot test: total {:.0?}", t0.elapsed());
    assert!(
        failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The command line of a netbooted node and the network configuration the running system
/// took from it: the server's static address from cluster.yaml (configured by the initramfs,
/// kept by cloud-init), DHCP for the agent.
fn check_netboot_network(c: &mut Checks, role: &str, boot: &Boot, port: u16) {
    let f = &boot.facts;
    let name = c.node.clone();
    let cmdline = f.get("cmdline").unwrap_or_default();
    let ip = if role == "server" {
        format!("ip=10.0.2.15::10.0.2.2:255.255.255.0:{name}:eth0:off:10.0.2.3")
    } else {
        "ip=dhcp".to_string()
    };
    for want in [ip, format!("nbdroot=10.0.2.2:{port}/{name}")] {
        let n = cmdline.split_whitespace().filter(|w| *w == want).count();
        c.that(n == 1, || {
            format!("'{want}' appears {n} times in /proc/cmdline: {cmdline}")
        });
    }
    let config = f.block("network-config");
    let has = |line: &str| config.iter().any(|l| l.trim() == line);
    let want: &[&str] = if role == "server" {
        &[
            "iface eth0 inet static",
            "address 10.0.2.15/24",
            "gateway 10.0.2.2",
            "dns-nameservers 10.0.2.3",
        ]
    } else {
        &["iface eth0 inet dhcp"]
    };
    for line in want {
        c.that(has(line), || {
            format!(
                "'{line}' not in the network configuration:\n{}",
                config.join("\n")
            )
        });
    }
}

/// Boots images built earlier (`PIKUBE_BOOT_IMAGES=<dir with cp1.img and w1.img>`, e.g. the
/// `out` directory of a run with PIKUBE_BOOT_KEEP=1) and runs the same checks.
#[test]
#[ignore = "needs PIKUBE_BOOT_IMAGES"]
fn boot_images_built_earlier() {
    let Some(dir) = std::env::var_os("PIKUBE_BOOT_IMAGES") else {
        eprintln!("SKIPPED: set PIKUBE_BOOT_IMAGES to a directory holding cp1.img and w1.img");
        return;
    };
    let arch = GuestArch::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!("boot of earlier images ({arch}): {why}"));
        return;
    }
    boot_and_check(Path::new(&dir), arch, arch.k3s_assets().2);
}

/// Whether the built image carries the k3s binary (debugfs on its root partition).
fn k3s_in_image(img: &Path) -> bool {
    let off = vm::partition_offset(img, "writable").unwrap_or_else(|e| panic!("{e}"));
    vm::ext4_exists(img, off, "/usr/local/bin/k3s").unwrap_or_else(|e| panic!("{e}"))
}

/// Collects every failed expectation of a node, so one boot reports all of them.
struct Checks {
    node: String,
    failures: Vec<String>,
}

impl Checks {
    fn that(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{}: {}", self.node, what()));
        }
    }

    fn eq(&mut self, what: &str, got: Option<&str>, want: &str) {
        self.that(got == Some(want), || {
            format!("{what}: expected '{want}', got {got:?}")
        });
    }
}

/// Where a guest's disk is: attached (virtio, `/dev/vda`), or its image served by nbd-server
/// (`/dev/nbd0`, partitions `p1`, `p2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Medium {
    Disk,
    Nbd,
}

impl Medium {
    /// Device of partition `n`.
    fn partition(self, n: u32) -> String {
        match self {
            Medium::Disk => format!("/dev/vda{n}"),
            Medium::Nbd => format!("/dev/nbd0p{n}"),
        }
    }
}

fn check_node(
    c: &mut Checks,
    role: &str,
    boot: &Boot,
    arch: GuestArch,
    layout: DiskLayout,
    medium: Medium,
) {
    let f = &boot.facts;
    let name = c.node.clone();
    if boot.timed_out || f.get("reporter") != Some("started") || f.get("facts") != Some("complete")
    {
        c.that(false, || {
            format!(
                "did not report its facts and power off (timed out: {}); console log tail:\n{}",
                boot.timed_out,
                boot.tail(80)
            )
        });
        return;
    }
    // The kernel found and mounted the root file system the image names, cleanly.
    let root = f.get("root").unwrap_or_default();
    let root_dev = medium.partition(2);
    c.that(
        root.starts_with(&format!("{root_dev} ext4 ")) && root.contains(" rw"),
        || format!("root mount is '{root}', expected {root_dev} ext4 rw"),
    );
    // The raspi layout names its root by label, extlinux.conf by file system UUID; a network
    // boot by the NBD device's partition.
    let (root_label, root_prefix) = match layout {
        DiskLayout::Raspi => ("writable", "root=LABEL=writable"),
        DiskLayout::Rockchip => ("cloudimg-rootfs", "root=UUID="),
        DiskLayout::Armbian => ("armbi_root", "root=UUID="),
    };
    let root_prefix = match medium {
        Medium::Disk => root_prefix.to_string(),
        Medium::Nbd => format!("root={root_dev}"),
    };
    c.eq("root file system label", f.get("root-label"), root_label);
    c.eq(
        "EXT4-fs errors in the kernel log",
        f.get("ext4-errors"),
        "0",
    );
    c.that(!boot.log.contains("EXT4-fs error"), || {
        format!(
            "EXT4-fs error on the console: {:?}",
            f.block("ext4-kernel-log")
        )
    });
    // The raspi layout mounts its boot partition; the Rockchip one keeps its seed partition
    // out of fstab.
    let want_firmware = layout == DiskLayout::Raspi;
    let firmware = format!("{} vfat", medium.partition(1));
    c.that(
        f.get("boot-firmware")
            .is_some_and(|v| v.starts_with(&firmware) == want_firmware),
        || format!("/boot/firmware is {:?}", f.get("boot-firmware")),
    );
    // cloud-init consumed the node's seed without errors.
    c.that(f.get("cloud-init") == Some("done"), || {
        format!(
            "cloud-init status {:?}, failed units {:?}:\n{}\nproblems:\n{}",
            f.get("cloud-init"),
            f.get("failed-units"),
            f.block("cloud-init-status").join("\n"),
            f.block("cloud-init-problems").join("\n")
        )
    });
    c.eq("hostname", f.get("hostname"), &name);
    c.eq("/etc/hostname", f.get("etc-hostname"), &name);
    c.eq("fqdn", f.get("fqdn"), &format!("{name}.lab.test"));
    c.eq(
        "uname -m",
        f.get("arch"),
        match arch {
            GuestArch::Amd64 => "x86_64",
            GuestArch::Arm64 => "aarch64",
        },
    );
    // Kernel arguments from the board, once.
    let cmdline = f.get("cmdline").unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    for arg in ["cgroup_enable=memory", "cgroup_memory=1"] {
        let n = words.iter().filter(|w| **w == arg).count();
        c.that(n == 1, || {
            format!("'{arg}' appears {n} times in /proc/cmdline: {cmdline}")
        });
    }
    let roots: Vec<&&str> = words.iter().filter(|w| w.starts_with("root=")).collect();
    c.that(
        roots.len() == 1 && roots[0].starts_with(&root_prefix),
        || format!("root arguments {roots:?} in /proc/cmdline, expected one {root_prefix}..."),
    );
    // The admin account, with the key, sudo, and no password; the stock user was not made.
    let users = f.all("user");
    c.that(users.contains(&"ops"), || {
        format!("no admin user 'ops' among {users:?}")
    });
    c.that(!users.contains(&"ubuntu"), || {
        format!("the stock image's default user was created: {users:?}")
    });
    let keys = f.all("user.ops.authorized_key");
    c.that(keys == [KEY], || {
        format!("authorized keys of ops: {keys:?}")
    });
    c.eq(
        "owner and mode of ~ops/.ssh/authorized_keys",
        f.get("user.ops.authorized_keys.owner"),
        "ops 600",
    );
    c.eq("password state of ops", f.get("user.ops.passwd"), "L");
    let groups = f.get("user.ops.groups").unwrap_or_default();
    c.that(groups.split_whitespace().any(|g| g == "sudo"), || {
        format!("ops is not in group sudo: {groups}")
    });
    c.that(
        f.block("sudoers")
            .iter()
            .any(|l| l.contains("ops ALL=(ALL) NOPASSWD:ALL")),
        || format!("sudoers: {:?}", f.block("sudoers")),
    );
    let sshd = f.block("sshd-effective").join("\n");
    c.that(sshd.contains("passwordauthentication no"), || {
        format!("sshd allows passwords: {sshd}")
    });
    c.eq("timezone", f.get("timezone"), "Europe/Berlin");
    // Network: the server's static address from cluster.yaml, DHCP for the agent.
    // Over NBD the initramfs configured the interface (an address without a lifetime, also
    // for a DHCP lease) and the system leaves it as it is: the root is reached through it.
    let expect = if role == "server" || medium == Medium::Nbd {
        "eth0 10.0.2.15/24 static;"
    } else {
        "eth0 10.0.2.15/24 dynamic;"
    };
    c.eq("IPv4 addresses", f.get("ipv4"), expect);
    // QEMU's restricted user network hands out leases without a router, so only the static
    // configuration can be expected to add a default route.
    let route = f.get("default-route").unwrap_or_default();
    let want_route = role == "server";
    c.that(
        !want_route || route.starts_with("default via 10.0.2.2 dev eth0"),
        || {
            format!(
                "default route '{route}'; routes {:?}; network config:\n{}",
                f.block("routes"),
                f.block("network-config").join("\n")
            )
        },
    );
    c.that(f.block("ordering-cycles").is_empty(), || {
        format!(
            "systemd broke ordering cycles at boot:\n{}",
            f.block("ordering-cycles").join("\n")
        )
    });
}

fn check_k3s(c: &mut Checks, role: &str, boot: &Boot, airgap_name: &str) {
    let f = &boot.facts;
    c.eq("k3s binary", f.get("k3s-binary"), "present");
    let (unit, other) = if role == "server" {
        ("k3s.service", "k3s-agent.service")
    } else {
        ("k3s-agent.service", "k3s.service")
    };
    c.that(
        f.get(&format!("unit.{unit}")) == Some("enabled/active"),
        || {
            format!(
                "{unit} is {:?}, expected enabled/active\n{}\njournal:\n{}\nordering cycles:\n{}",
                f.get(&format!("unit.{unit}")),
                f.block("k3s-units").join("\n"),
                f.block("k3s-journal").join("\n"),
                f.block("ordering-cycles").join("\n")
            )
        },
    );
    let other_state = f.get(&format!("unit.{other}")).unwrap_or_default();
    c.that(!other_state.starts_with("enabled"), || {
        format!("{other} should not be enabled on a {role}: {other_state}")
    });
    let log = f.block("k3s-standin");
    c.that(
        log.iter()
            .filter_map(|l| l.strip_prefix("K3S-STANDIN argv="))
            .any(|argv| argv.split_whitespace().next() == Some(role)),
        || format!("the k3s unit did not run the binary with '{role}': {log:?}"),
    );
    let config = f.block("k3s-config").join("\n");
    c.that(config.contains(TOKEN), || {
        format!("token missing from config.yaml:\n{config}")
    });
    if role == "agent" {
        c.that(config.contains("https://10.0.2.15:6443"), || {
            format!("server URL missing from config.yaml:\n{config}")
        });
    }
    let images = f.block("k3s-images").join("\n");
    c.that(images.contains(airgap_name), || {
        format!(
            "{} not in /var/lib/rancher/k3s/agent/images:\n{images}",
            airgap_name
        )
    });
}

/// The console parser, on a log with interleaved kernel messages and carriage returns.
#[test]
fn console_facts_parse() {
    let log = "[    3.1] random: crng init done\r\n\
               PIKUBE-FACT hostname=cp1\r\n\
               junk PIKUBE-FACT cmdline=root=LABEL=writable a=b\r\n\
               PIKUBE-BEGIN sudoers\r\n\
               PIKUBE| sudoers| ops ALL=(ALL) NOPASSWD:ALL\r\n\
               PIKUBE-END sudoers rc=0\r\n\
               PIKUBE-FACT user.ops.authorized_key=ssh-ed25519 AAAA x\r\n\
               PIKUBE-FACT user.ops.authorized_key=ssh-rsa BBBB y\n";
    let f = vm::Facts::parse(log);
    assert_eq!(f.get("hostname"), Some("cp1"));
    assert_eq!(f.get("cmdline"), Some("root=LABEL=writable a=b"));
    assert_eq!(f.block("sudoers"), ["ops ALL=(ALL) NOPASSWD:ALL"]);
    assert_eq!(f.blocks["sudoers"].1, Some(0));
    assert_eq!(f.all("user.ops.authorized_key").len(), 2);
    assert_eq!(f.get("missing"), None);
}

#[test]
fn apt_sources_give_the_debian_archive() {
    let one_line =
        "# comment\ndeb [signed-by=/k.gpg] http://ftp.example.org/debian bookworm main\n";
    assert_eq!(vm::apt_uris(one_line), ["http://ftp.example.org/debian"]);
    let deb822 = "Types: deb\nURIs: http://mirror.example.test/debian\nSuites: bookworm\n";
    assert_eq!(vm::apt_uris(deb822), ["http://mirror.example.test/debian"]);
}

/// The stand-in release: checksum list matches the assets, the airgap tarball is a real
/// zstd tar (checked with tar and zstd when present) and the version is %2B-encoded.
#[test]
fn k3s_standin_release_layout() {
    let srv = TestServer::start();
    let r = vm::serve_k3s_standin(&srv, K3S_VERSION, GuestArch::Amd64);
    assert_eq!(
        r.dir,
        "/github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1"
    );
    let get = |p: &str| http_get(&srv, &format!("{}/{p}", r.dir));
    let sums = String::from_utf8(get("sha256sum-amd64.txt")).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  k3s\n{}  k3s-airgap-images-amd64.tar.zst\n",
            support::sha256_hex(&get("k3s")),
            support::sha256_hex(&get("k3s-airgap-images-amd64.tar.zst"))
        )
    );
    assert!(r.binary.starts_with(b"#!/bin/sh\n"));
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("images.tar.zst");
    std::fs::write(&tarball, &r.airgap).unwrap();
    if !require_tool("tar", "tar") {
        return;
    }
    let o = Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar --zstd -t rejects the airgap tarball: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("oci-layout") && t.contains("index.json"), "{t}");
}

/// A plain HTTP/1.1 GET against the test server; the body of a 200.
fn http_get(srv: &TestServer, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let url = srv.url();
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response without a header end");
    let head = String::from_utf8_lossy(&resp[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    resp[split + 4..].to_vec()
}

/// The example whose first server [`ha_example_first_server_boots_with_its_vip`] boots.
const HA_EXAMPLE: &str = "pi4-ha-vip-argocd";
/// QEMU's user network: the gateway, the DNS forwarder, and the address of its first lease,
/// which the guest's only NIC (`eth0`) takes.
const GUEST_GATEWAY: &str = "10.0.2.2";
const GUEST_DNS: &str = "10.0.2.3";
const GUEST_PREFIX: u8 = 24;
const GUEST_IP: &str = "10.0.2.15";
const GUEST_NIC: &str = "eth0";
/// A free address of the user network for the example's VIP.
const GUEST_VIP: &str = "10.0.2.50";
const MANIFESTS: &str = "/var/lib/rancher/k3s/server/manifests";
const IMAGES: &str = "/var/lib/rancher/k3s/agent/images";

/// The HA example's cluster.yaml (parsed) moved into QEMU's user network: the first server
/// on the test board of `arch` at [`GUEST_IP`], the other static nodes at free addresses of
/// the same subnet, the VIP at [`GUEST_VIP`] on [`GUEST_NIC`], and the stand-in's k3s
/// release. Everything else stays as the example says.
fn into_guest_network(doc: &mut serde_json::Value, first: &str, arch: GuestArch) {
    use serde_json::json;
    doc["network"]["gateway"] = json!(GUEST_GATEWAY);
    doc["network"]["dns"] = json!([GUEST_DNS]);
    doc["network"]["prefix"] = json!(GUEST_PREFIX);
    doc["k3s"]["version"] = json!(K3S_VERSION);
    doc["k3s"]["vip"]["address"] = json!(GUEST_VIP);
    doc["k3s"]["vip"]["interface"] = json!(GUEST_NIC);
    let mut next = 100;
    for node in doc["nodes"]
        .as_array_mut()
        .expect("cluster.yaml lists nodes")
    {
        if node["name"] == first {
            node["board"] = json!(arch.board());
            node["ip"] = json!(GUEST_IP);
        } else if node.get("ip").is_some() {
            node["ip"] = json!(format!("10.0.2.{next}"));
            next += 1;
        }
    }
}

/// What the build wrote into a server's root file system, read back with debugfs.
struct Written {
    config: serde_json::Value,
    /// manifest file name → (size, sha256)
    manifests: std::collections::BTreeMap<String, (usize, String)>,
    /// preloaded archive name → size
    images: std::collections::BTreeMap<String, usize>,
}

impl Written {
    fn read(img: &Path) -> Written {
        let off = vm::partition_offset(img, "writable").unwrap_or_else(|e| panic!("{e}"));
        let read = |p: &str| vm::ext4_read(img, off, p).unwrap_or_else(|e| panic!("{e}"));
        let list = |d: &str| vm::ext4_list(img, off, d).unwrap_or_else(|e| panic!("{e}"));
        let config =
            serde_saphyr::from_str(&String::from_utf8_lossy(&read(pikube_image::k3s::CONFIG)))
                .unwrap();
        let manifests = list(MANIFESTS)
            .into_iter()
            .map(|n| {
                let b = read(&format!("{MANIFESTS}/{n}"));
                (n, (b.len(), support::sha256_hex(&b)))
            })
            .collect();
        let images = list(IMAGES)
            .into_iter()
            .map(|n| {
                let len = read(&format!("{IMAGES}/{n}")).len();
                (n, len)
            })
            .collect();
        Written {
            config,
            manifests,
            images,
        }
    }
}

/// What the stand-in k3s logged when the unit started it (tests/vm/k3s-standin.sh).
#[derive(Default)]
struct StandinLog {
    argv: Option<String>,
    config: String,
    manifests: std::collections::BTreeMap<String, (usize, String)>,
    manifest_lines: Vec<String>,
    images: std::collections::BTreeMap<String, usize>,
    ready: bool,
}

impl StandinLog {
    fn parse(lines: &[String]) -> StandinLog {
        let mut s = StandinLog::default();
        let fields = |rest: &str| -> std::collections::BTreeMap<String, String> {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for l in lines {
            let Some(rest) = l.strip_prefix("K3S-STANDIN ") else {
                continue;
            };
            if let Some(a) = rest.strip_prefix("argv=") {
                s.argv = Some(a.to_string());
            } else if let Some(c) = rest.strip_prefix("config| ") {
                s.config.push_str(c);
                s.config.push('\n');
            } else if let Some(m) = rest.strip_prefix("manifest-line| ") {
                s.manifest_lines.push(m.trim().to_string());
            } else if rest.starts_with("manifest=") {
                let f = fields(rest);
                let size = f["size"].parse().unwrap_or(usize::MAX);
                s.manifests
                    .insert(f["manifest"].clone(), (size, f["sha256"].clone()));
            } else if rest.starts_with("image=") {
                let f = fields(rest);
                s.images
                    .insert(f["image"].clone(), f["size"].parse().unwrap_or(usize::MAX));
            } else if rest == "ready" {
                s.ready = true;
            }
        }
        s
    }

    /// The value on the line after `- name: <name>` among the grepped manifest lines
    /// (kube-vip's environment).
    fn env(&self, name: &str) -> Option<&str> {
        let at = self
            .manifest_lines
            .iter()
            .position(|l| *l == format!("- name: {name}"))?;
        let v = self.manifest_lines.get(at + 1)?.strip_prefix("value: ")?;
        Some(v.trim_matches(|c| c == '"' || c == '\''))
    }
}

/// The HA example's first server, moved into QEMU's user network and onto the test board,
/// boots with k3s running on the configuration that carries the VIP, and with kube-vip's and
/// Argo CD's manifests and kube-vip's image archive in place for k3s to take up: as written
/// by the build, unchanged by first boot. What the build writes is checked without a boot in
/// tests/examples.rs; this checks what needs one. Boots one guest, in the guests' slot.
#[test]
fn ha_example_first_server_boots_with_its_vip() {
    use pikube_image::config::Cluster;
    use support::examples;

    let arch = GuestArch::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(why) = vm::preflight(arch) {
        skip(format_args!("boot test of the HA example ({arch}): {why}"));
        return;
    }
    let t0 = Instant::now();
    let base = vm::base_image(arch).unwrap_or_else(|e| panic!("base image: {e}"));
    let Some(registry) = support::registry::Registry::start() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-ha")
        .tempdir_in("/var/tmp")
        .unwrap();
    // PIKUBE_BOOT_KEEP=1 keeps cluster.yaml, the built image and the guest's files.
    let d = if std::env::var_os("PIKUBE_BOOT_KEEP").is_some_and(|v| v == "1") {
        let p = dir.keep();
        eprintln!("boot test: keeping {}", p.display());
        p
    } else {
        dir.path().to_path_buf()
    };
    let d = d.as_path();

    let source = examples::cluster_yaml(HA_EXAMPLE);
    let example = Cluster::load(&source).unwrap();
    let first = example
        .first_server()
        .expect("the HA example has servers")
        .name
        .to_string();
    let mut doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
    into_guest_network(&mut doc, &first, arch);
    let srv = TestServer::start();
    vm::serve_base_image(&srv, arch, &base);
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    examples::pull_from_local_registry(
        &registry,
        &example,
        &mut doc,
        &examples::preloaded_images(&example),
        &format!("linux/{}", arch.debian()),
        91,
    );
    examples::serve_argocd_install(&srv, &example);
    std::fs::write(
        d.join("cluster.yaml"),
        serde_saphyr::to_string(&doc).unwrap(),
    )
    .unwrap();
    support::build_env::write_token(d);
    let cluster = Cluster::load(&d.join("cluster.yaml")).unwrap();
    let vip = cluster.k3s.vip.clone().expect("the HA example has a VIP");
    let gitops = cluster.gitops.clone().expect("the HA example has GitOps");

    let url = srv.url();
    let boards = vm::boards_dir();
    let out = support::build_env::run_cli(
        d,
        &[("PIKUBE_BOARDS_DIR", &boards)],
        &["build", "--node", &first, "--mirror", &url, "--out", "out"],
    );
    assert!(out.status.success(), "pikube-image build failed");
    let img = d.join(format!("out/{first}.img"));
    let written = Written::read(&img);
    eprintln!(
        "boot test: {HA_EXAMPLE} {first} built after {:.0?}; manifests {:?}; images {:?}",
        t0.elapsed(),
        written.manifests.keys().collect::<Vec<_>>(),
        written.images
    );

    let slot = guests_slot();
    let boot = vm::boot(&img, arch, &d.join("vm"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{first}: {e}"));
    drop(slot);
    eprintln!(
        "boot test: {HA_EXAMPLE} {first} ({arch}, {}) {} after {:.0?}",
        boot.accel,
        if boot.timed_out {
            "TIMED OUT"
        } else {
            "powered off"
        },
        boot.elapsed
    );
    let f = &boot.facts;
    for block in ["k3s-standin", "k3s-config", "k3s-images"] {
        eprintln!("  {first}: [{block}]");
        for l in f.block(block) {
            eprintln!("  {first}: | {l}");
        }
    }
    let kept =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{arch}-ha-{first}.console.log"));
    let _ = std::fs::write(&kept, &boot.log);
    eprintln!("boot test: console log kept in {}", kept.display());

    let mut c = Checks {
        node: first.clone(),
        failures: Vec::new(),
    };
    let done = !boot.timed_out
        && f.get("reporter") == Some("started")
        && f.get("facts") == Some("complete");
    c.that(done, || {
        format!(
            "did not report its facts and power off (timed out: {}); console log tail:\n{}",
            boot.timed_out,
            boot.tail(80)
        )
    });
    c.eq("hostname", f.get("hostname"), &first);
    c.eq(
        "IPv4 addresses",
        f.get("ipv4"),
        &format!("{GUEST_NIC} {GUEST_IP}/{GUEST_PREFIX} static;"),
    );
    c.eq(
        "EXT4-fs errors in the kernel log",
        f.get("ext4-errors"),
        "0",
    );
    c.that(!boot.log.contains("EXT4-fs error"), || {
        format!(
            "EXT4-fs error on the console: {:?}",
            f.block("ext4-kernel-log")
        )
    });

    // The k3s server unit runs, on the configuration the build wrote.
    c.eq("k3s.service", f.get("unit.k3s.service"), "enabled/active");
    let agent = f.get("unit.k3s-agent.service").unwrap_or_default();
    c.that(!agent.starts_with("enabled"), || {
        format!("k3s-agent.service should not be enabled on a server: {agent}")
    });
    let config: serde_json::Value =
        serde_saphyr::from_str(&f.block("k3s-config").join("\n")).unwrap_or_default();
    c.that(config == written.config, || {
        format!(
            "config.yaml in the guest differs from the built one:\n{config:#}\nbuilt:\n{:#}",
            written.config
        )
    });
    let vip_addr = vip.address.to_string();
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    c.that(config["cluster-init"] == true, || {
        format!("config.yaml does not initialise the cluster: {config}")
    });
    c.that(strs(&config["tls-san"]).contains(&vip_addr), || {
        format!("tls-san lacks the VIP {vip_addr}: {config}")
    });
    let disabled = strs(&config["disable"]);
    for component in &cluster.k3s.disable {
        c.that(disabled.iter().any(|d| d == component.as_str()), || {
            format!("disable lacks {}: {disabled:?}", component.as_str())
        });
    }
    let backend = cluster.k3s.flannel_backend.map(|b| b.as_str());
    c.that(config["flannel-backend"].as_str() == backend, || {
        format!(
            "flannel-backend is {}, the example says {backend:?}",
            config["flannel-backend"]
        )
    });
    c.that(
        config["disable-network-policy"] == cluster.k3s.disable_network_policy,
        || {
            format!(
                "disable-network-policy: {}",
                config["disable-network-policy"]
            )
        },
    );

    // The stand-in k3s started as a server, read that configuration, and found the manifests
    // and the image archives the build wrote, unchanged.
    let log = StandinLog::parse(f.block("k3s-standin"));
    c.that(
        log.ready
            && log
                .argv
                .as_deref()
                .is_some_and(|a| a.split_whitespace().next() == Some("server")),
        || {
            format!(
                "the stand-in did not start as a server: {:?}",
                f.block("k3s-standin")
            )
        },
    );
    let read: serde_json::Value = serde_saphyr::from_str(&log.config).unwrap_or_default();
    c.that(strs(&read["tls-san"]).contains(&vip_addr), || {
        format!(
            "the config.yaml k3s read lacks the VIP {vip_addr}:\n{}",
            log.config
        )
    });
    c.that(log.manifests == written.manifests, || {
        format!(
            "manifests in {MANIFESTS} at k3s's start {:?}, built {:?}",
            log.manifests, written.manifests
        )
    });
    for name in [
        "pikube-kube-vip-rbac.yaml",
        "pikube-kube-vip.yaml",
        "pikube-argocd-install.yaml",
        "pikube-argocd-root-app.yaml",
    ] {
        c.that(log.manifests.contains_key(name), || {
            format!("{name} missing from {MANIFESTS}: {:?}", log.manifests)
        });
    }
    c.that(log.env("address") == Some(vip_addr.as_str()), || {
        format!("kube-vip's address in the guest: {:?}", log.manifest_lines)
    });
    c.that(log.env("vip_interface") == Some(GUEST_NIC), || {
        format!(
            "kube-vip's interface in the guest: {:?}",
            log.manifest_lines
        )
    });
    c.that(
        log.manifest_lines
            .iter()
            .any(|l| l.strip_prefix("repoURL: ") == Some(gitops.repo.as_str())),
        || {
            format!(
                "the app of apps' repoURL in the guest: {:?}",
                log.manifest_lines
            )
        },
    );
    c.that(
        written
            .images
            .contains_key(pikube_image::images::ROLE_IMAGES)
            && log.images == written.images,
        || {
            format!(
                "image archives at k3s's start {:?}, built {:?} (kube-vip's in {})",
                log.images,
                written.images,
                pikube_image::images::ROLE_IMAGES
            )
        },
    );
    c.that(log.images.contains_key(&release.airgap_name), || {
        format!("{} not among {:?}", release.airgap_name, log.images)
    });
    eprintln!("boot test: {HA_EXAMPLE} total {:.0?}", t0.elapsed());
    assert!(
        c.failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        c.failures.len(),
        c.failures.join("\n\n")
    );
}

/// The stand-in's log as it prints it for a server with kube-vip's and Argo CD's manifests.
#[test]
fn standin_log_parse() {
    let lines: Vec<String> = [
        "K3S-STANDIN argv=server",
        "K3S-STANDIN config| cluster-init: true",
        "K3S-STANDIN config| tls-san:",
        "K3S-STANDIN config| - \"10.0.2.50\"",
        "K3S-STANDIN image=pikube-role-images.tar.zst size=5540",
        "K3S-STANDIN manifest=pikube-kube-vip.yaml size=2034 sha256=06ce",
        "K3S-STANDIN manifest-line|     repoURL: https://github.com/example/pi-ha-fleet.git",
        "K3S-STANDIN manifest-line|     targetRevision: main",
        "K3S-STANDIN manifest-line|         - name: vip_interface",
        "K3S-STANDIN manifest-line|           value: eth0",
        "K3S-STANDIN manifest-line|         - name: address",
        "K3S-STANDIN manifest-line|           value: \"10.0.2.50\"",
        "K3S-STANDIN ready",
    ]
    .map(String::from)
    .to_vec();
    let log = StandinLog::parse(&lines);
    assert_eq!(log.argv.as_deref(), Some("server"));
    assert!(log.ready);
    let config: serde_json::Value = serde_saphyr::from_str(&log.config).unwrap();
    assert_eq!(config["tls-san"][0], "10.0.2.50");
    assert_eq!(log.images["pikube-role-images.tar.zst"], 5540);
    assert_eq!(
        log.manifests["pikube-kube-vip.yaml"],
        (2034, "06ce".to_string())
    );
    assert_eq!(log.env("address"), Some("10.0.2.50"));
    assert_eq!(log.env("vip_interface"), Some("eth0"));
    assert_eq!(log.env("port"), None);
}

/// Writes `yaml` as `d/cluster.yaml` with the token file it names.
fn write_inventory(d: &Path, yaml: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(d.join("cluster.yaml"), yaml).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    let token = d.join("secrets/k3s-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `pikube-image build --config cluster.yaml <args>` in `d` against the test mirror and
/// the test boards, and fails the test when the build fails.
fn build_in(d: &Path, srv: &TestServer, args: &[&str]) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["build", "--config", "cluster.yaml"])
        .args(args)
        .arg("--mirror")
        .arg(srv.url())
        .current_dir(d)
        .env("PIKUBE_CACHE_DIR", d.join("cache"))
        .env("PIKUBE_BOARDS_DIR", vm::boards_dir())
        .output()
        .unwrap();
    eprintln!(
        "$ pikube-image build {} ({:.1?})\n{}{}",
        args.join(" "),
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pikube-image build failed");
}

/// Prints what a guest reported and keeps its console log under the target directory.
fn report_boot(label: &str, boot: &Boot) {
    eprintln!(
        "boot test: {label} {} after {:.0?}",
        if boot.timed_out {
            "TIMED OUT"
        } else {
            "powered off"
        },
        boot.elapsed
    );
    for (k, v) in &boot.facts.facts {
        eprintln!("  {label}: {k}={v}");
    }
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{label}.console.log"));
    match std::fs::write(&kept, &boot.log) {
        Ok(()) => eprintln!("boot test: {label}: console log kept in {}", kept.display()),
        Err(e) => eprintln!("boot test: {label}: cannot keep the console log: {e}"),
    }
}

/// SHA256 fingerprints of the ED25519 host keys `known_hosts` publishes for `host`.
fn published_host_key(known_hosts: &Path, host: &str) -> Vec<String> {
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(known_hosts)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with("(ED25519)"))
        .filter(|l| {
            l.split_whitespace().nth(2).is_some_and(|names| {
                names
                    .split(',')
                    .any(|n| n == host || n.starts_with(&format!("{host}.")))
            })
        })
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// A server and an agent built from an image in Armbian's Allwinner layout boot on QEMU's
/// arm64 virt machine the way the board boots them: U-Boot (Debian's u-boot-qemu) finds
/// /boot/boot.scr, which reads armbianEnv.txt (`rootdev=UUID=`, `extraargs`) and loads
/// Image and uInitrd. No cloud-init: pikube-image's own first-boot unit makes the node.
#[test]
fn armbian_layout_boots_through_uboot_as_its_nodes() {
    if let Err(why) = vm::preflight_uboot() {
        skip(format_args!("Armbian-layout U-Boot boot test: {why}"));
        return;
    }
    let arch = GuestArch::Arm64;
    let t0 = Instant::now();
    let base =
        vm::base_image_in(arch, DiskLayout::Armbian).unwrap_or_else(|e| panic!("base image: {e}"));
    eprintln!(
        "boot test: Armbian-layout image ready after {:.0?}",
        t0.elapsed()
    );
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-armbian")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let srv = TestServer::start();
    vm::serve_image_as(&srv, &base, "debian-testarm-armbian.img.xz");
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    write_inventory(d, &cluster_yaml("testarm-armbian"));
    build_in(d, &srv, &["--all", "--out", "out"]);

    let nodes = [("cp1", "server"), ("w1", "agent")];
    let slot = guests_slot();
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&(name, _)| {
                let img = d.join("out").join(format!("{name}.img"));
                let work = d.join("out/vm").join(name);
                s.spawn(move || {
                    vm::boot_uboot_disk(&img, &work, BOOT_TIMEOUT)
                        .unwrap_or_else(|e| panic!("{name}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(slot);
    let mut failures = Vec::new();
    for ((name, role), boot) in nodes.iter().zip(&boots) {
        report_boot(&format!("armbian-{name}"), boot);
        let img = d.join("out").join(format!("{name}.img"));
        let mut c = Checks {
            node: name.to_string(),
            failures: Vec::new(),
        };
        let root = DirectRoot::Disk { image: &img };
        check_direct_node(&mut c, role, boot, root, &d.join("out/known_hosts"));
        if boot.facts.get("facts") == Some("complete") {
            check_k3s(&mut c, role, boot, &release.airgap_name);
        }
        failures.extend(c.failures);
    }
    eprintln!("boot test: Armbian layout total {:.0?}", t0.elapsed());
    assert!(
        failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// What a node of an image without cloud-init (Armbian) must show after first boot: the root
/// its boot script names, mounted clean; the board's kernel argument once; the node's names;
/// the admin user with its key made by pikube-image's first-boot unit; root's password locked,
/// no first-login wizard or console autologin left; the host key known_hosts publishes kept
/// through armbian-firstrun; the node's network.
/// Where a node without cloud-init finds its root file system.
#[derive(Clone, Copy)]
enum DirectRoot<'a> {
    /// The image's first partition on the virtio disk, named by armbianEnv.txt's `rootdev`.
    Disk { image: &'a Path },
    /// The node's disk image over NBD, named by the exported kernel command line.
    Nbd,
}

fn check_direct_node(
    c: &mut Checks,
    role: &str,
    boot: &Boot,
    root_at: DirectRoot<'_>,
    known_hosts: &Path,
) {
    let f = &boot.facts;
    let name = c.node.clone();
    if boot.timed_out || f.get("reporter") != Some("started") || f.get("facts") != Some("complete")
    {
        c.that(false, || {
            format!(
                "did not report its facts and power off (timed out: {}); console log tail:\n{}",
                boot.timed_out,
                boot.tail(80)
            )
        });
        return;
    }
    let (device, want_root) = match root_at {
        // The boot script passed armbianEnv.txt's rootdev, which must name the built root.
        DirectRoot::Disk { image } => {
            let uuid = Command::new("blkid")
                .args(["-p", "-s", "UUID", "-o", "value", "-O"])
                .arg(
                    vm::partition_offset(image, "armbi_root")
                        .unwrap()
                        .to_string(),
                )
                .arg(image)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            assert!(
                !uuid.is_empty(),
                "no UUID on armbi_root of {}",
                image.display()
            );
            ("/dev/vda1", format!("root=UUID={uuid}"))
        }
        DirectRoot::Nbd => ("/dev/nbd0p1", "root=/dev/nbd0p1".to_string()),
    };
    let root = f.get("root").unwrap_or_default();
    c.that(
        root.starts_with(&format!("{device} ext4 ")) && root.contains(" rw"),
        || format!("root mount is '{root}', expected {device} ext4 rw"),
    );
    c.eq("root file system label", f.get("root-label"), "armbi_root");
    let cmdline = f.get("cmdline").unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let roots: Vec<&&str> = words.iter().filter(|w| w.starts_with("root=")).collect();
    c.that(roots.len() == 1 && *roots[0] == want_root, || {
        format!("root arguments {roots:?} in /proc/cmdline, expected {want_root}")
    });
    for arg in ["cma=64M", "cgroup_enable=memory"] {
        let n = words.iter().filter(|w| **w == arg).count();
        c.that(n == 1, || {
            format!("'{arg}' appears {n} times in /proc/cmdline: {cmdline}")
        });
    }
    // No cloud-init: the first boot is pikube-image's own unit.
    c.eq("cloud-init disabled", f.get("cloud-init.disabled"), "yes");
    c.eq(
        "pikube-firstboot.service (enabled state/result)",
        f.get("unit.pikube-firstboot.service"),
        "disabled/success",
    );
    c.eq(
        "first boot marker",
        f.get("pikube-firstboot.done"),
        "present",
    );
    c.eq("hostname", f.get("hostname"), &name);
    c.eq("/etc/hostname", f.get("etc-hostname"), &name);
    c.eq("fqdn", f.get("fqdn"), &format!("{name}.lab.test"));
    c.eq("uname -m", f.get("arch"), "aarch64");
    let users = f.all("user");
    c.that(users.contains(&"ops"), || {
        format!("no admin user 'ops' among {users:?}")
    });
    let keys = f.all("user.ops.authorized_key");
    c.that(keys == [KEY], || {
        format!("authorized keys of ops: {keys:?}")
    });
    c.eq(
        "owner and mode of ~ops/.ssh/authorized_keys",
        f.get("user.ops.authorized_keys.owner"),
        "ops 600",
    );
    c.eq("password state of ops", f.get("user.ops.passwd"), "L");
    let groups = f.get("user.ops.groups").unwrap_or_default();
    c.that(groups.split_whitespace().any(|g| g == "sudo"), || {
        format!("ops is not in group sudo: {groups}")
    });
    let sshd = f.block("sshd-effective").join("\n");
    c.that(sshd.contains("passwordauthentication no"), || {
        format!("sshd allows passwords: {sshd}")
    });
    // Armbian's public root password is locked; its first-login wizard and autologin are gone.
    c.eq("password state of root", f.get("root.passwd"), "L");
    c.eq(
        "first character of root's shadow field",
        f.get("root.shadow-field"),
        "!",
    );
    c.eq(
        "/root/.not_logged_in_yet",
        f.get("not-logged-in-yet"),
        "absent",
    );
    c.eq("autologin drop-ins", f.get("autologin"), "0");
    // armbian-firstrun ran and was told to keep the host key, which is the published one.
    c.eq(
        "armbian-firstrun host keys",
        f.get("armbian-firstrun.regenerated"),
        "kept",
    );
    let published = published_host_key(known_hosts, &name);
    let running = f.get("ssh-host-ed25519").unwrap_or_default();
    c.that(published.len() == 1 && published[0] == running, || {
        format!("host key {running} at boot; known_hosts publishes {published:?}")
    });
    c.eq("ssh.service", f.get("unit.ssh.service"), "enabled/active");
    c.eq("timezone", f.get("timezone"), "Europe/Berlin");
    // Over NBD the initramfs configured the link (ip=), also for a DHCP node, and the system
    // kept it: the address carries no lease lifetime there.
    let expect = match (root_at, role) {
        (DirectRoot::Nbd, _) | (_, "server") => "eth0 10.0.2.15/24 static;",
        _ => "eth0 10.0.2.15/24 dynamic;",
    };
    c.eq("IPv4 addresses", f.get("ipv4"), expect);
    c.that(f.block("ordering-cycles").is_empty(), || {
        format!(
            "systemd broke ordering cycles at boot:\n{}",
            f.block("ordering-cycles").join("\n")
        )
    });
}

/// Two nodes of the Armbian-layout board boot from one `build --netboot` export on QEMU's
/// arm64 virt machine with no disk: U-Boot (Debian's u-boot-qemu) runs a board's PXE boot
/// command, its own `pxe get` finds the node's `pxelinux.cfg/01-<mac>` on QEMU's TFTP server
/// (the exported tree), boots the exported kernel and initrd, and the initramfs mounts the
/// node's root from `nbd-server` on this machine with the exported configuration. Each node
/// comes up as itself.
#[test]
fn netboot_export_boots_two_nodes_through_uboot_pxe_and_nbd() {
    if let Err(why) = vm::preflight_uboot() {
        skip(format_args!("U-Boot PXE boot test: {why}"));
        return;
    }
    if !require_tool("nbd-server", "nbd-server") {
        return;
    }
    let arch = GuestArch::Arm64;
    let t0 = Instant::now();
    let base =
        vm::base_image_in(arch, DiskLayout::Armbian).unwrap_or_else(|e| panic!("base image: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("pikube-boot-pxe")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let srv = TestServer::start();
    vm::serve_image_as(&srv, &base, "debian-testarm-armbian.img.xz");
    let release = vm::serve_k3s_standin(&srv, K3S_VERSION, arch);
    // The guests reach the NBD server at 10.0.2.100, which QEMU forwards to the same port on
    // this machine's loopback.
    let nbd_port = support::nbd::free_port();
    // Each MAC repeats one byte: Debian bookworm's U-Boot (2023.01) asks for
    // pxelinux.cfg/01-52-52-52-52-52-52 when its NIC is 52:54:00:00:00:11 (the first byte six
    // times, seen on its console); with such MACs it asks for the node's real file name.
    let nodes = [
        ("cp1", "server", "02:02:02:02:02:02"),
        ("w1", "agent", "06:06:06:06:06:06"),
    ];
    let yaml = cluster_yaml("testarm-armbian")
        .replace(
            "ip: 10.0.2.15/24 }",
            &format!("ip: 10.0.2.15/24, mac: \"{}\" }}", nodes[0].2),
        )
        .replace(
            "role: agent }",
            &format!("role: agent, mac: \"{}\" }}", nodes[1].2),
        )
        .replace(
            "nodes:\n",
            &format!(
                "netboot: {{ server: 10.0.2.100, nbd_port: {nbd_port}, \
                 dhcp_range: \"10.0.2.15,10.0.2.15\" }}\nnodes:\n"
            ),
        );
    write_inventory(d, &yaml);
    build_in(d, &srv, &["--all", "--out", "out", "--netboot", "net"]);
    let tftp = d.join("net/tftp");
    for (_, _, mac) in &nodes {
        let entry = tftp.join(format!("pxelinux.cfg/01-{}", mac.replace(':', "-")));
        eprintln!(
            "boot test: {}:\n{}",
            entry.display(),
            std::fs::read_to_string(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()))
        );
    }

    let slot = guests_slot();
    let nbd = support::nbd::NbdServer::start(&d.join("net")).unwrap_or_else(|e| panic!("{e}"));
    let fwd = vec![format!(
        "tcp:10.0.2.100:{nbd_port}-tcp:127.0.0.1:{}",
        nbd.port()
    )];
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&(name, _, mac)| {
                let work = d.join("vm").join(name);
                let (tftp, fwd) = (&tftp, &fwd);
                s.spawn(move || {
                    vm::boot_uboot_net(
                        tftp,
                        mac,
                        fwd,
                        "dhcp; if pxe get; then pxe boot; fi",
                        &work,
                        BOOT_TIMEOUT,
                    )
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(nbd);
    drop(slot);
    let mut failures = Vec::new();
    for ((name, role, mac), boot) in nodes.iter().zip(&boots) {
        report_boot(&format!("pxe-{name}"), boot);
        let mut c = Checks {
            node: name.to_string(),
            failures: Vec::new(),
        };
        c.that(
            boot.log
                .contains(&format!("pxelinux.cfg/01-{}", mac.replace(':', "-"))),
            || {
                format!(
                    "U-Boot did not fetch pxelinux.cfg/01-{mac}:\n{}",
                    boot.tail(60)
                )
            },
        );
        check_direct_node(
            &mut c,
            role,
            boot,
            DirectRoot::Nbd,
            &d.join("out/known_hosts"),
        );
        if boot.facts.get("facts") == Some("complete") {
            check_k3s(&mut c, role, boot, &release.airgap_name);
        }
        failures.extend(c.failures);
    }
    eprintln!("boot test: U-Boot PXE total {:.0?}", t0.elapsed());
    assert!(
        failures.is_empty(),
        "{} failed expectation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
