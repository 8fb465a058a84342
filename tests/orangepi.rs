//! Orange Pi boards on Armbian, through the real catalog entries: for each layout family
//! (Allwinner: MBR, root at 4 MiB, SPL at 8 KiB; Rockchip: GPT, root at 16 MiB, idbloader at
//! sector 64 and u-boot.itb at sector 16384) a fixture with that layout, served at the
//! catalog's URL with an Armbian `.sha` file through `--mirror`, builds into a server and an
//! agent that come up headless and safe, with the boot loader bytes, partition table and
//! filesystem identities unchanged, also after growth. A mixed inventory (Raspberry Pi and
//! Orange Pi nodes) builds each node from its own base.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pikube_image::boards::{Catalog, OsImage};
use pikube_image::decompress::Compression;
use pikube_test_oracles::require_tool;
use support::build_env::{
    K3S_VERSION, KEY, e2fsck_clean, run_cli, serve_board_image, serve_k3s, stderr, walk,
    write_token,
};
use support::fixtures::{self, ARMBIAN_ROOT_GPT_TYPE, ARMBIAN_ROOT_HASH, Fixture, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

const MIB: u64 = 1 << 20;

/// One layout family: the catalog board its fixture is served as, and how to make it.
struct Family {
    board: &'static str,
    make: fn(&Path, FixtureOpts) -> Fixture,
    gpt: bool,
}

const ALLWINNER: Family = Family {
    board: "orangepizero3",
    make: fixtures::armbian_allwinner,
    gpt: false,
};
const ROCKCHIP: Family = Family {
    board: "orangepi5",
    make: fixtures::armbian_rockchip_gpt,
    gpt: true,
};

/// The k3s stand-in: large enough that, with the fixture's filler, the root must grow.
fn k3s_binary() -> Vec<u8> {
    let mut b = b"#!/bin/sh\necho stand-in k3s \"$@\"\nexit 0\n".to_vec();
    b.extend(support::pseudo_random(12 * MIB as usize, 77));
    b
}

fn oracles() -> bool {
    require_tool("sfdisk", "fdisk")
        && require_tool("sgdisk", "gdisk")
        && require_tool("e2fsck", "e2fsprogs")
        && require_tool("xz", "xz-utils")
}

fn catalog_image(board: &str) -> OsImage {
    let cat = Catalog::load().unwrap();
    cat.image_for(cat.board(board).unwrap(), None)
        .unwrap()
        .clone()
}

/// A nearly full fixture of the family: the payload does not fit without growth.
fn nearly_full(family: &Family, dir: &Path) -> Fixture {
    let total_mib = 96;
    let root_mib = total_mib - if family.gpt { 17 } else { 4 };
    (family.make)(
        dir,
        FixtureOpts {
            total_mib,
            fill_mib: root_mib - 14,
            ..FixtureOpts::default()
        },
    )
}

fn serve(server: &TestServer, signer: &CatalogSigner, board: &str, f: &Fixture) {
    let xz = fixtures::compress(&f.image, Compression::Xz);
    serve_board_image(server, board, std::fs::read(&xz).unwrap(), signer);
    std::fs::remove_file(xz).unwrap();
}

fn cluster(nodes: &str) -> String {
    format!(
        "cluster: lab\nadmin: {{ user: ops, ssh_authorized_keys: [\"{KEY}\"] }}\n\
         network: {{ gateway: 192.168.60.1, dns: [192.168.60.1], prefix: 24 }}\n\
         k3s: {{ version: {K3S_VERSION} }}\nnodes:\n{nodes}"
    )
}

fn sha(b: &[u8]) -> String {
    pikube_image::io::sha256_bytes(b)
}

fn rootfs(img: &Path, start: u64) -> ext4_view::Ext4 {
    let file = std::fs::File::open(img).unwrap();
    let disk = pikube_image::disk::Disk::read(img).unwrap();
    let part = disk.partitions.iter().find(|p| p.start == start).unwrap();
    pikube_image::fs::ext4_reader(&file, part).unwrap()
}

/// Content of `path`, checking its permission bits and owner.
fn file(fs: &ext4_view::Ext4, path: &str, mode: u16, owner: (u32, u32)) -> String {
    let m = fs
        .symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(m.mode() & 0o7777, mode, "mode of {path}");
    assert_eq!((m.uid(), m.gid()), owner, "owner of {path}");
    fs.read_to_string(path).unwrap()
}

fn exists(fs: &ext4_view::Ext4, path: &str) -> bool {
    fs.symlink_metadata(path).is_ok()
}

/// The partition table as sfdisk reads it, without what growth may change (sizes, the last
/// usable LBA).
fn table_identity(img: &Path) -> serde_json::Value {
    let mut t = fixtures::sfdisk_json(img)["partitiontable"].clone();
    let o = t.as_object_mut().unwrap();
    for k in ["lastlba", "device"] {
        o.remove(k);
    }
    for p in o["partitions"].as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.remove("size");
        p.remove("node");
    }
    t
}

/// Everything the acceptance asks of one built Armbian node.
#[allow(clippy::too_many_arguments)]
fn check_node(
    dir: &Path,
    family: &Family,
    input: &Fixture,
    img: &Path,
    node: &str,
    static_ip: Option<&str>,
    k3s: &[u8],
) {
    let os = catalog_image(family.board);
    let before = std::fs::read(&input.image).unwrap();
    let after = std::fs::read(img).unwrap();

    // The boot loader areas the catalog declares keep their SHA-256; the blobs are where the
    // board's ROM looks for them.
    assert!(!os.bootloader.is_empty());
    for a in &os.bootloader {
        let r = a.offset as usize..a.end() as usize;
        assert_eq!(
            sha(&after[r.clone()]),
            sha(&before[r]),
            "{node}: {}",
            a.name
        );
    }
    for (at, blob) in &input.raw_blobs {
        assert!(
            after[*at as usize..*at as usize + blob.len()] == blob[..],
            "{node}: blob at {at}"
        );
    }

    // Partition table: same type, disk id, starts, types, ids and names.
    assert_eq!(table_identity(img), table_identity(&input.image), "{node}");
    let t = fixtures::sfdisk_json(img)["partitiontable"].clone();
    let root = input.part("armbi_root");
    assert_eq!(t["partitions"][0]["start"], root.start / 512);
    if family.gpt {
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["partitions"][0]["type"], ARMBIAN_ROOT_GPT_TYPE);
        assert_eq!(t["partitions"][0]["name"], "rootfs");
        let o = Command::new("sgdisk").arg("-v").arg(img).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("No problems found"),
            "{node}: sgdisk -v: {out}"
        );
    } else {
        assert_eq!(t["label"], "dos");
        assert_eq!(t["partitions"][0]["type"], "83");
        assert!(
            after[512..520] != *b"EFI PART",
            "{node}: an MBR image got a GPT header"
        );
        let o = Command::new("sfdisk")
            .arg("--verify")
            .arg(img)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{node}: sfdisk --verify: {}",
            stderr(&o)
        );
    }
    let id = fixtures::blkid(img, root.start);
    assert_eq!(id["UUID"], input.root_uuid, "{node}");
    assert_eq!(id["LABEL"], "armbi_root", "{node}");
    let part_len = t["partitions"][0]["size"].as_u64().unwrap() * 512;
    e2fsck_clean(img, root.start, part_len, &dir.join("root.part"));

    let fs = rootfs(img, root.start);
    let orig = rootfs(&input.image, root.start);
    assert_eq!(
        file(&fs, "/etc/hostname", 0o644, (0, 0)),
        format!("{node}\n")
    );

    // Headless and safe: root locked, no first-login wizard, no console autologin, the host
    // key the build wrote kept by Armbian's first run.
    let shadow = file(&fs, "/etc/shadow", 0o640, (0, 42));
    assert_eq!(
        shadow.lines().next().unwrap(),
        format!("root:!{ARMBIAN_ROOT_HASH}:20300:0:99999:7:::")
    );
    assert_eq!(
        shadow.lines().skip(1).collect::<Vec<_>>(),
        orig.read_to_string("/etc/shadow")
            .unwrap()
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
    );
    assert!(!exists(&fs, "/root/.not_logged_in_yet"), "{node}");
    for unit in ["getty@", "serial-getty@"] {
        assert!(
            !exists(
                &fs,
                &format!("/etc/systemd/system/{unit}.service.d/override.conf")
            ),
            "{node}: {unit} autologin"
        );
    }
    assert_eq!(
        file(&fs, "/etc/default/armbian-firstrun", 0o644, (0, 0)),
        "# Armbian first run settings\nOPENSSHD_REGENERATE_HOST_KEYS=false\n"
    );
    let secrets = dir.join("secrets/ssh").join(node);
    assert_eq!(
        file(&fs, "/etc/ssh/ssh_host_ed25519_key", 0o600, (0, 0)),
        std::fs::read_to_string(secrets.join("ssh_host_ed25519_key")).unwrap()
    );
    assert_eq!(file(&fs, "/etc/pikube/admin-user", 0o644, (0, 0)), "ops\n");
    assert_eq!(
        file(&fs, "/etc/pikube/authorized_keys", 0o644, (0, 0)),
        format!("{KEY}\n")
    );
    assert!(file(&fs, "/etc/sudoers.d/90-pikube", 0o440, (0, 0)).contains("ops ALL=(ALL)"));
    assert_eq!(
        fs.read_link("/etc/systemd/system/multi-user.target.wants/pikube-firstboot.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/etc/systemd/system/pikube-firstboot.service"
    );

    // Network: a static node replaces Armbian's DHCP on every port, on the image's interface;
    // a DHCP node keeps it.
    match static_ip {
        Some(ip) => {
            assert!(!exists(&fs, "/etc/netplan/10-dhcp-all-interfaces.yaml"));
            let v: serde_json::Value =
                serde_saphyr::from_str(&file(&fs, "/etc/netplan/20-pikube.yaml", 0o600, (0, 0)))
                    .unwrap();
            let pikube_image::firstboot::Firstboot::Direct { interface, .. } = &os.firstboot else {
                panic!("Armbian images have no cloud-init");
            };
            let e = &v["network"]["ethernets"][interface.as_deref().unwrap()];
            assert_eq!(e["addresses"][0], format!("{ip}/24"), "{v}");
        }
        None => {
            assert!(exists(&fs, "/etc/netplan/10-dhcp-all-interfaces.yaml"));
            assert!(!exists(&fs, "/etc/netplan/20-pikube.yaml"));
        }
    }

    // armbianEnv.txt: untouched (the boards need no extra kernel argument), its rootdev still
    // the root filesystem's UUID, Rockchip's cma=256M once.
    let env = file(&fs, "/boot/armbianEnv.txt", 0o644, (0, 0));
    assert_eq!(env, orig.read_to_string("/boot/armbianEnv.txt").unwrap());
    assert!(
        env.contains(&format!("\nrootdev=UUID={}\n", id["UUID"])),
        "{env}"
    );
    assert_eq!(env.matches("extraargs=").count(), usize::from(family.gpt));
    if family.gpt {
        assert_eq!(env.matches("cma=256M").count(), 1, "{env}");
    }
    assert_eq!(
        fs.read("/boot/boot.scr").unwrap(),
        orig.read("/boot/boot.scr").unwrap()
    );

    // The arm64 k3s payload.
    assert!(fs.read("/usr/local/bin/k3s").unwrap() == k3s, "{node}: k3s");
    assert!(exists(
        &fs,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"
    ));
}

/// A built node's manifest.
fn manifest(out: &Path, node: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("{node}.manifest.json"))).unwrap())
        .unwrap()
}

fn images_in(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".img"))
        .collect()
}

fn family_builds_a_server_and_an_agent(family: &Family, server_alias: &str, agent_alias: &str) {
    if !oracles() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-opi")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let d = dir.path();
    let input = nearly_full(family, d);
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    serve(&server, &signer, family.board, &input);
    let k3s = k3s_binary();
    serve_k3s(&server, K3S_VERSION, &k3s, b"airgap");
    std::fs::write(
        d.join("cluster.yaml"),
        cluster(&format!(
            "  - {{ name: s1, board: {server_alias}, role: server, ip: 192.168.60.10 }}\n\
             \x20 - {{ name: a1, board: {agent_alias}, role: agent }}\n"
        )),
    )
    .unwrap();
    write_token(d);
    let url = server.url();
    let out = run_cli(
        d,
        &[("PIKUBE_TEST_KEYS", signer.keys_dir())],
        &["build", "--all", "--mirror", &url, "--out", "out"],
    );
    assert!(out.status.success(), "build failed: {}", stderr(&out));

    for (node, ip) in [("s1", Some("192.168.60.10")), ("a1", None)] {
        let m = manifest(&d.join("out"), node);
        assert_eq!(m["board"], family.board);
        assert_eq!(m["base"]["url"], catalog_image(family.board).url);
        // The payload did not fit: the root partition grew, and the checks hold after it.
        assert!(
            m["growth"]["new_size"].as_u64() > m["growth"]["old_size"].as_u64(),
            "{node}: {}",
            m["growth"]
        );
        check_node(
            d,
            family,
            &input,
            &d.join(format!("out/{node}.img")),
            node,
            ip,
            &k3s,
        );
    }

    // A byte of the boot loader changed in the cached prepared base (a damaged cache, or a
    // write that escaped every other check): the next build fails and writes nothing.
    let prepared: Vec<PathBuf> = walk(&d.join("cache/prepared"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    assert_eq!(
        prepared.len(),
        2,
        "one prepared base per role: {prepared:?}"
    );
    let area = &catalog_image(family.board).bootloader[0];
    for p in &prepared {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&[0x5a], area.offset + 100).unwrap();
    }
    let out = run_cli(
        d,
        &[("PIKUBE_TEST_KEYS", signer.keys_dir())],
        &["build", "--all", "--mirror", &url, "--out", "again"],
    );
    assert!(
        !out.status.success(),
        "a changed boot loader byte must fail"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("boot loader area '{}'", area.name)) && err.contains("changed"),
        "{err}"
    );
    assert_eq!(images_in(&d.join("again")), Vec::<PathBuf>::new());
}

#[test]
fn allwinner_mbr_image_builds_a_server_and_an_agent() {
    family_builds_a_server_and_an_agent(&ALLWINNER, "opizero3", "orangepi-zero3");
}

#[test]
fn rockchip_gpt_image_builds_a_server_and_an_agent() {
    family_builds_a_server_and_an_agent(&ROCKCHIP, "opi5", "orangepi-5");
}

/// An image whose partition lies in a declared boot loader area is refused before anything
/// is written, and leaves no output.
#[test]
fn partition_over_a_boot_loader_area_is_refused() {
    if !oracles() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = fixtures::armbian_rockchip_gpt(
        d,
        FixtureOpts {
            total_mib: 48,
            ..FixtureOpts::default()
        },
    );
    // The Orange Pi 5's image definition, with u-boot.itb said to reach into the partition.
    let boards = d.join("boards");
    std::fs::create_dir_all(boards.join("images")).unwrap();
    let mut os = catalog_image("orangepi5");
    os.name = "armbian-opi5-wrong".into();
    os.bootloader[1].size += 4096;
    std::fs::write(
        boards.join("images/wrong.yaml"),
        serde_saphyr::to_string(&os).unwrap(),
    )
    .unwrap();
    std::fs::write(
        boards.join("wrong.yaml"),
        "name: opi5-wrong\ndescription: t\nsoc: RK3588S\narch: arm64\n\
         default_image: armbian-opi5-wrong\nimages: [armbian-opi5-wrong]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("cluster.yaml"),
        cluster("  - { name: s1, board: opi5-wrong, role: server, ip: 192.168.60.10 }\n").replace(
            &format!("k3s: {{ version: {K3S_VERSION} }}\n"),
            "k3s: { install: false }\n",
        ),
    )
    .unwrap();
    write_token(d);
    let image = input.image.to_str().unwrap();
    let out = run_cli(
        d,
        &[("PIKUBE_BOARDS_DIR", boards.as_path())],
        &["build", "--all", "--image", image, "--out", "out"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("overlaps boot loader area 'u-boot.itb'"),
        "{err}"
    );
    assert_eq!(images_in(&d.join("out")), Vec::<PathBuf>::new());
}

/// Raspberry Pi and Orange Pi nodes in one inventory: each built from its own base image,
/// with the arm64 k3s payload.
#[test]
fn mixed_inventory_builds_each_node_from_its_own_base() {
    if !oracles() || !require_tool("mkfs.vfat", "dosfstools") || !require_tool("mcopy", "mtools") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-mixed")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let d = dir.path();
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    let raspi = fixtures::ubuntu_raspi(&d.join("rpi"), {
        std::fs::create_dir_all(d.join("rpi")).unwrap();
        FixtureOpts::default()
    });
    serve(&server, &signer, "rpi4", &raspi);
    let mut armbian = Vec::new();
    for family in [&ROCKCHIP, &ALLWINNER] {
        let sub = d.join(family.board);
        std::fs::create_dir_all(&sub).unwrap();
        let f = (family.make)(
            &sub,
            FixtureOpts {
                total_mib: 96,
                ..FixtureOpts::default()
            },
        );
        serve(&server, &signer, family.board, &f);
        armbian.push((family, f));
    }
    let k3s = k3s_binary();
    serve_k3s(&server, K3S_VERSION, &k3s, b"airgap");
    std::fs::write(
        d.join("cluster.yaml"),
        cluster(
            "  - { name: cp1, board: rpi4, role: server, ip: 192.168.60.10 }\n\
             \x20 - { name: opi5, board: orangepi5, role: agent, ip: 192.168.60.21 }\n\
             \x20 - { name: zero3, board: orangepizero3, role: agent }\n",
        ),
    )
    .unwrap();
    write_token(d);
    let out = run_cli(
        d,
        &[("PIKUBE_TEST_KEYS", signer.keys_dir())],
        &["build", "--all", "--mirror", &server.url(), "--out", "out"],
    );
    assert!(out.status.success(), "build failed: {}", stderr(&out));

    // The Raspberry Pi node: Ubuntu's layout and cloud-init seed.
    let cp1 = d.join("out/cp1.img");
    let m = manifest(&d.join("out"), "cp1");
    assert_eq!(m["base"]["url"], catalog_image("rpi4").url);
    let t = fixtures::sfdisk_json(&cp1)["partitiontable"].clone();
    assert_eq!(t["label"], "dos");
    assert_eq!(t["partitions"].as_array().unwrap().len(), 2);
    let boot = raspi.part("system-boot");
    assert!(
        String::from_utf8(fixtures::fat_read(&cp1, boot.start, "/meta-data"))
            .unwrap()
            .contains("cp1")
    );
    let writable = raspi.part("writable");
    let fs = rootfs(&cp1, writable.start);
    assert!(fs.read("/usr/local/bin/k3s").unwrap() == k3s);
    assert!(exists(
        &fs,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"
    ));

    // The Orange Pi nodes: each from its own Armbian image, agents of cp1.
    for ((family, input), (node, ip)) in armbian
        .iter()
        .zip([("opi5", Some("192.168.60.21")), ("zero3", None)])
    {
        let m = manifest(&d.join("out"), node);
        assert_eq!(m["board"], family.board);
        assert_eq!(m["base"]["url"], catalog_image(family.board).url);
        let img = d.join(format!("out/{node}.img"));
        check_node(d, family, input, &img, node, ip, &k3s);
        let fs = rootfs(&img, input.part("armbi_root").start);
        let config = fs.read_to_string("/etc/rancher/k3s/config.yaml").unwrap();
        assert!(
            config.contains("192.168.60.10"),
            "{node} joins cp1: {config}"
        );
        assert!(exists(&fs, "/etc/systemd/system/k3s-agent.service"));
    }
}
