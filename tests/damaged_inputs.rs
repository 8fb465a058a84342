//! Damaged base images, the way a bad download or a failing card makes them: random bytes
//! flipped in the partition table, the FAT boot partition's metadata and the ext4 root
//! filesystem's metadata of a small fixture, then a build from each. Bounded: a fixed number
//! of cases from a fixed seed, each with a time limit.
//!
//! For every case the build must not panic or hang, and must either refuse (exit 1, an
//! `error:` line, the input file unchanged) or write an image whose filesystems are as sound
//! as the input's: `fsck.fat -n` and `e2fsck -fn` pass on the output wherever they pass on the
//! input. (Damage in a part of the filesystem the build never reads, such as an unrelated
//! inode, is not the build's to find; it must only not make things worse.)

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::build_env::{K3S_VERSION, KEY, serve_k3s, write_token};
use support::fixtures::{self, FixtureOpts, PartInfo};
use support::http::TestServer;

const CASES: u64 = 30;
const LIMIT: Duration = Duration::from_secs(120);

fn fsck_ok(image: &Path, p: &PartInfo, scratch: &Path) -> bool {
    let part = fixtures::extract(image, p.start, p.size, &scratch.join("part"));
    let (ok, _) = match p.fs {
        "fat" => fixtures::check(Command::new("fsck.fat").arg("-n").arg(&part)),
        _ => fixtures::check(Command::new("e2fsck").arg("-fn").arg(&part)),
    };
    std::fs::remove_file(&part).unwrap();
    ok
}

/// xorshift64: the same cases on every run.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn damaged_metadata_is_refused_or_survived_never_a_panic_or_a_hang() {
    for (tool, pkg) in [("e2fsck", "e2fsprogs"), ("fsck.fat", "dosfstools")] {
        if !pikube_test_oracles::require_tool(tool, pkg) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures::ubuntu_raspi(
        dir.path(),
        FixtureOpts {
            total_mib: 120,
            seed: 61,
            ..FixtureOpts::default()
        },
    );
    let server = TestServer::start();
    serve_k3s(&server, K3S_VERSION, b"#!/bin/sh\n", b"airgap");
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "cluster: lab\nadmin: {{user: ops, ssh_authorized_keys: [\"{KEY}\"]}}\nnodes:\n  - {{name: cp1, board: rpi4, role: server}}\n"
        ),
    )
    .unwrap();
    write_token(dir.path());
    let pristine = std::fs::read(&fixture.image).unwrap();
    let boot = fixture.part("system-boot").clone();
    let root = fixture.part("writable").clone();
    // Where the metadata is: the MBR's table, the FAT boot sector, FSInfo and first FAT
    // sectors, the ext4 superblock, group descriptors and the start of the inode table.
    let regions = [
        (446u64, 64u64),
        (boot.start, 64 << 10),
        (root.start + 1024, 1 << 20),
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let (mut refused, mut built, mut unsound_inputs) = (0, 0, 0);
    for case in 0..CASES {
        let (start, len) = regions[(case % 3) as usize];
        let mut bytes = pristine.clone();
        for _ in 0..1 + next(&mut x) % 8 {
            let at = (start + next(&mut x) % len) as usize;
            bytes[at] ^= 1 << (next(&mut x) % 8);
        }
        let input = dir.path().join(format!("case{case}.img"));
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.path().join(format!("out{case}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
            .args([
                "build",
                "--node",
                "cp1",
                "--mirror",
                &server.url(),
                "--image",
            ])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .current_dir(dir.path())
            .env("PIKUBE_CACHE_DIR", dir.path().join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("case {case}: the build still ran after {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(
            !err.contains("panicked") && status.code() != Some(101),
            "case {case}: panic\n{err}"
        );
        if status.success() {
            built += 1;
            let img = out.join("cp1.img");
            for p in [&boot, &root] {
                if !fsck_ok(&input, p, dir.path()) {
                    unsound_inputs += 1;
                } else {
                    assert!(
                        fsck_ok(&img, p, dir.path()),
                        "case {case}: partition {} was sound in the input and is not in the output",
                        p.number
                    );
                }
            }
        } else {
            refused += 1;
            assert_eq!(status.code(), Some(1), "case {case}: {err}");
            assert!(err.contains("error: "), "case {case}: {err}");
            assert!(
                std::fs::read(&input).unwrap() == bytes,
                "case {case}: a refused input was changed"
            );
        }
        std::fs::remove_file(&input).unwrap();
        let _ = std::fs::remove_dir_all(&out);
    }
    eprintln!(
        "{CASES} damaged inputs: {refused} refused, {built} built ({unsound_inputs} of their partitions already failed fsck in the input)"
    );
    assert!(
        refused > 0,
        "damage to checksummed metadata must be refused somewhere"
    );
}
