//! Integration tests of the I/O stages: decompression into sparse images, partition table
//! reading, and atomic outputs, against images built with the distributions' own tools.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use pikube_image::decompress::{Compression, Options, decompress_to, decompress_with, detect};
use pikube_image::disk::{Disk, FsKind, TableKind};
use pikube_image::emit::{PendingFile, hash_file, sha256_file};
use pikube_image::io::sha256_reader;
use pikube_image::progress::Progress;
use support::fixtures::*;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pikube-io-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn sha_file(p: &Path) -> String {
    sha256_reader(fs::File::open(p).unwrap()).unwrap()
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn fixtures_are_valid_filesystems_with_their_files() {
    let dir = tmp();
    let scratch = dir.path();
    let u = ubuntu_raspi(dir.path(), FixtureOpts::default());
    assert_fat_clean(&u.image, u.part("system-boot"), scratch);
    assert_ext4_clean(&u.image, u.part("writable"), scratch);
    let boot = u.part("system-boot").start;
    let cmdline = fat_read(&u.image, boot, "/cmdline.txt");
    assert_eq!(
        pikube_image::io::sha256_bytes(&cmdline),
        u.sha("system-boot", "/cmdline.txt")
    );
    assert!(
        String::from_utf8(cmdline)
            .unwrap()
            .contains("root=LABEL=writable")
    );
    let host = ext4_read(&u.image, u.part("writable"), "/etc/hostname", scratch);
    assert_eq!(host, b"ubuntu\n");
    let b = blkid(&u.image, u.part("writable").start);
    assert_eq!(b["TYPE"], "ext4");
    assert_eq!(b["UUID"], u.root_uuid);

    // 25.10 layout: cmdline.txt under the os_prefix directory.
    let d2 = dir.path().join("prefix");
    fs::create_dir(&d2).unwrap();
    let v = ubuntu_raspi(
        &d2,
        FixtureOpts {
            os_prefix: true,
            ..Default::default()
        },
    );
    let cfg = fat_read(&v.image, v.part("system-boot").start, "/config.txt");
    assert!(
        String::from_utf8(cfg)
            .unwrap()
            .contains("os_prefix=current/")
    );
    let cl = fat_read(
        &v.image,
        v.part("system-boot").start,
        "/current/cmdline.txt",
    );
    assert_eq!(
        pikube_image::io::sha256_bytes(&cl),
        v.sha("system-boot", "/current/cmdline.txt")
    );

    let r = raspios(dir.path(), FixtureOpts::default());
    assert_fat_clean(&r.image, r.part("bootfs"), scratch);
    assert_ext4_clean(&r.image, r.part("rootfs"), scratch);
    let cl = String::from_utf8(fat_read(&r.image, r.part("bootfs").start, "/cmdline.txt")).unwrap();
    assert!(
        cl.contains(&format!("root=PARTUUID={}-02", r.disk_id)),
        "{cl}"
    );

    for a in [
        armbian_allwinner(dir.path(), FixtureOpts::default()),
        armbian_rockchip_gpt(dir.path(), FixtureOpts::default()),
    ] {
        assert_ext4_clean(&a.image, a.part("armbi_root"), scratch);
        let env = ext4_read(
            &a.image,
            a.part("armbi_root"),
            "/boot/armbianEnv.txt",
            scratch,
        );
        assert!(
            String::from_utf8(env)
                .unwrap()
                .contains(&format!("rootdev=UUID={}", a.root_uuid))
        );
        // Boot loader bytes survived partitioning and mkfs.
        let img = fs::read(&a.image).unwrap();
        for (off, blob) in &a.raw_blobs {
            assert!(&img[*off as usize..*off as usize + blob.len()] == blob.as_slice());
        }
    }
    let g = armbian_rockchip_gpt(dir.path(), FixtureOpts::default());
    let (ok, out) = check(Command::new("sgdisk").arg("-v").arg(&g.image));
    assert!(ok && out.contains("No problems found"), "{out}");
}

/// Compares Disk::read with sfdisk --json and blkid for one fixture.
fn assert_disk_matches(f: &Fixture) {
    let disk = Disk::read(&f.image).unwrap();
    let sf = sfdisk_json(&f.image);
    let pt = &sf["partitiontable"];
    assert_eq!(disk.size, f.size);
    match pt["label"].as_str().unwrap() {
        "dos" => {
            assert_eq!(disk.table, TableKind::Mbr);
            assert_eq!(format!("0x{}", disk.disk_id), pt["id"].as_str().unwrap());
        }
        "gpt" => {
            assert_eq!(disk.table, TableKind::Gpt);
            assert_eq!(disk.disk_id, pt["id"].as_str().unwrap().to_lowercase());
        }
        other => panic!("unexpected table {other}"),
    }
    assert_eq!(disk.disk_id, f.disk_id);
    let sparts = pt["partitions"].as_array().unwrap();
    assert_eq!(disk.partitions.len(), sparts.len());
    for (p, s) in disk.partitions.iter().zip(sparts) {
        assert_eq!(p.start, s["start"].as_u64().unwrap() * 512);
        assert_eq!(p.size, s["size"].as_u64().unwrap() * 512);
        let node = s["node"].as_str().unwrap();
        assert!(
            node.ends_with(&p.number.to_string()),
            "{node} vs {}",
            p.number
        );
        assert_eq!(p.bootable, s["bootable"].as_bool().unwrap_or(false));
        match disk.table {
            TableKind::Mbr => assert_eq!(
                format!("{:x}", p.mbr_type.unwrap()),
                s["type"].as_str().unwrap()
            ),
            TableKind::Gpt => {
                assert_eq!(p.gpt_type.as_deref(), s["type"].as_str());
                assert_eq!(p.gpt_name.as_deref(), s["name"].as_str());
            }
        }
        let want = f.partitions.iter().find(|w| w.number == p.number).unwrap();
        assert_eq!((p.start, p.size), (want.start, want.size));
        assert_eq!(p.label.as_deref(), Some(want.label.as_str()));
        let probe = blkid(&f.image, p.start);
        assert_eq!(probe.get("LABEL"), p.label.as_ref());
        match want.fs {
            "fat" => {
                assert_eq!(p.fs, FsKind::Fat);
                assert_eq!(probe["TYPE"], "vfat");
            }
            "ext4" => {
                assert_eq!(p.fs, FsKind::Ext4);
                assert_eq!(probe["TYPE"], "ext4");
                assert_eq!(p.uuid.as_deref(), Some(f.root_uuid.as_str()));
                assert_eq!(probe.get("UUID"), p.uuid.as_ref());
            }
            _ => unreachable!(),
        }
    }
    let last = disk.last().unwrap();
    assert_eq!(
        last.number,
        f.partitions
            .iter()
            .max_by_key(|p| p.start + p.size)
            .unwrap()
            .number
    );
}

#[test]
fn disk_read_matches_sfdisk_and_blkid() {
    let dir = tmp();
    let u = ubuntu_raspi(dir.path(), FixtureOpts::default());
    assert_disk_matches(&u);
    let disk = Disk::read(&u.image).unwrap();
    let boot = disk
        .by_label("SYSTEM-BOOT")
        .expect("FAT labels match case-insensitively");
    assert_eq!(
        (boot.number, boot.start, boot.mbr_type),
        (1, 1 << 20, Some(0x0c))
    );
    assert!(boot.bootable);
    assert_eq!(disk.by_label("writable").unwrap().number, 2);
    assert!(
        disk.by_label("WRITABLE").is_none(),
        "ext4 labels are case-sensitive"
    );
    assert_eq!(disk.last().unwrap().number, 2);

    let r = raspios(dir.path(), FixtureOpts::default());
    assert_disk_matches(&r);
    let disk = Disk::read(&r.image).unwrap();
    assert_eq!(disk.by_label("bootfs").unwrap().start, 8 << 20);
    assert!(!disk.by_label("bootfs").unwrap().bootable);

    let a = armbian_allwinner(dir.path(), FixtureOpts::default());
    assert_disk_matches(&a);
    let disk = Disk::read(&a.image).unwrap();
    assert_eq!(disk.partitions.len(), 1);
    assert_eq!(disk.by_label("armbi_root").unwrap().start, 4 << 20);

    let g = armbian_rockchip_gpt(dir.path(), FixtureOpts::default());
    assert_disk_matches(&g);
    let disk = Disk::read(&g.image).unwrap();
    assert_eq!(disk.by_label("armbi_root").unwrap().start, 16 << 20);
    assert_eq!(
        disk.by_label("rootfs").unwrap().number,
        1,
        "GPT names match too"
    );

    // A 512 MiB boot partition as in the real 24.04 image costs nothing: it is sparse.
    let big = dir.path().join("big");
    fs::create_dir(&big).unwrap();
    let b = ubuntu_raspi(
        &big,
        FixtureOpts {
            boot_mib: 512,
            total_mib: 700,
            ..Default::default()
        },
    );
    assert_disk_matches(&b);
    assert!(allocated(&b.image) < 64 << 20);
}

#[test]
fn disk_read_reports_truncated_images() {
    let dir = tmp();
    let u = ubuntu_raspi(dir.path(), FixtureOpts::default());
    let f = fs::OpenOptions::new().write(true).open(&u.image).unwrap();
    f.set_len(u.size - (1 << 20)).unwrap();
    let err = format!("{:#}", Disk::read(&u.image).unwrap_err());
    assert!(
        err.contains("truncated") && err.contains("ubuntu-raspi.img"),
        "{err}"
    );
}

#[test]
fn decompress_round_trip_each_format() {
    let dir = tmp();
    let u = ubuntu_raspi(
        dir.path(),
        FixtureOpts {
            fill_mib: 6,
            ..Default::default()
        },
    );
    let raw_sha = sha_file(&u.image);
    let layout = Disk::read(&u.image).unwrap();
    for kind in [
        Compression::Xz,
        Compression::Gzip,
        Compression::Zstd,
        Compression::None,
    ] {
        let src = compress(&u.image, kind);
        assert_eq!(detect(&src).unwrap(), kind, "{}", src.display());
        let out = dir.path().join("out.img");
        let d = decompress_to(&src, &out, &Progress::quiet()).unwrap();
        assert_eq!(d.bytes, u.size, "{kind:?}");
        assert_eq!(sha_file(&out), raw_sha, "{kind:?}");
        if kind == Compression::None {
            assert_eq!(d.sha256, None, "raw copies skip hashing the holes");
        } else {
            assert_eq!(d.sha256.as_deref(), Some(raw_sha.as_str()), "{kind:?}");
        }
        let used = allocated(&out);
        assert!(
            used < u.size / 4,
            "{kind:?}: {used} of {} bytes allocated",
            u.size
        );
        assert_eq!(Disk::read(&out).unwrap(), layout);
        fs::remove_file(&out).unwrap();
        if kind != Compression::None {
            fs::remove_file(&src).unwrap();
        }
    }
}

#[test]
fn multi_block_xz_and_concatenated_streams() {
    let dir = tmp();
    let u = armbian_allwinner(
        dir.path(),
        FixtureOpts {
            fill_mib: 8,
            ..Default::default()
        },
    );
    let xz = compress(&u.image, Compression::Xz);
    let blocks = xz_block_count(&xz);
    assert!(
        blocks > 8,
        "expected a multi-block .xz, got {blocks} blocks"
    );
    let out = dir.path().join("out.img");
    let d = decompress_with(
        &xz,
        &out,
        &Progress::quiet(),
        Options {
            hash: true,
            threads: 2,
        },
    )
    .unwrap();
    let raw_sha = sha_file(&u.image);
    assert_eq!(sha_file(&out), raw_sha);
    assert_eq!(d.sha256.unwrap(), raw_sha);
    // Boot loader bytes outside partitions come through intact.
    let img = fs::read(&out).unwrap();
    for (off, blob) in &u.raw_blobs {
        assert!(&img[*off as usize..*off as usize + blob.len()] == blob.as_slice());
    }
    drop(img);

    // Concatenated inputs, as `cat a.xz b.xz` (and the same for gzip members, zstd frames).
    let small = dir.path().join("small.bin");
    fs::write(&small, pseudo_random(3 << 20, 9)).unwrap();
    let mut want = fs::read(&u.image).unwrap();
    want.extend(fs::read(&small).unwrap());
    let want_sha = pikube_image::io::sha256_bytes(&want);
    drop(want);
    for kind in [Compression::Xz, Compression::Gzip, Compression::Zstd] {
        let a = compress(&u.image, kind);
        let b = compress(&small, kind);
        let cat = dir.path().join("cat.bin");
        let mut bytes = fs::read(&a).unwrap();
        bytes.extend(fs::read(&b).unwrap());
        fs::write(&cat, &bytes).unwrap();
        let d = decompress_to(&cat, &out, &Progress::quiet()).unwrap();
        assert_eq!(d.sha256.as_deref(), Some(want_sha.as_str()), "{kind:?}");
        assert_eq!(sha_file(&out), want_sha, "{kind:?}");
        for p in [a, b, cat] {
            let _ = fs::remove_file(p);
        }
    }
}

#[test]
fn truncated_or_corrupt_input_fails_and_leaves_no_output() {
    let dir = tmp();
    let u = ubuntu_raspi(
        dir.path(),
        FixtureOpts {
            fill_mib: 4,
            ..Default::default()
        },
    );
    for kind in [Compression::Xz, Compression::Gzip, Compression::Zstd] {
        let src = compress(&u.image, kind);
        let full = fs::read(&src).unwrap();
        let name = format!("cut{}", kind.suffix());
        let cut_path = dir.path().join(&name);
        for cut in [full.len() / 3, full.len() - 5] {
            fs::write(&cut_path, &full[..cut]).unwrap();
            let out = dir.path().join("out.img");
            // A stale output from an earlier run must not survive either.
            fs::write(&out, b"old").unwrap();
            let err = format!(
                "{:#}",
                decompress_to(&cut_path, &out, &Progress::quiet()).unwrap_err()
            );
            eprintln!("{kind:?} cut at {cut}: {err}");
            assert!(
                err.contains(&format!("truncated {}", kind.suffix())),
                "{kind:?} cut {cut}: {err}"
            );
            assert!(err.contains(&cut_path.display().to_string()), "{err}");
            assert!(err.contains("download again"), "{err}");
            assert!(!out.exists(), "{kind:?}: output left after failure");
        }
        let mut bad = full.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 256] {
            *b = b.wrapping_add(77);
        }
        fs::write(&cut_path, &bad).unwrap();
        let out = dir.path().join("out.img");
        let err = format!(
            "{:#}",
            decompress_to(&cut_path, &out, &Progress::quiet()).unwrap_err()
        );
        eprintln!("{kind:?} corrupted: {err}");
        assert!(
            err.contains("corrupt") || err.contains("truncated"),
            "{kind:?}: {err}"
        );
        assert!(!out.exists());
        fs::remove_file(&src).unwrap();
    }
}

#[test]
fn outputs_are_atomic_and_checksums_verify() {
    let dir = tmp();
    let u = raspios(dir.path(), FixtureOpts::default());
    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    {
        let p = PendingFile::create(&outdir, "n1.img").unwrap();
        decompress_to(&u.image, p.path(), &Progress::quiet()).unwrap();
        assert!(p.path().exists());
        // Dropped: as if the build failed after decompressing.
    }
    assert_eq!(
        fs::read_dir(&outdir).unwrap().count(),
        0,
        "partial file left behind"
    );

    let p = PendingFile::create(&outdir, "n1.img").unwrap();
    decompress_to(&u.image, p.path(), &Progress::quiet()).unwrap();
    let img = p.commit().unwrap();
    let digest = hash_file(&img, &Progress::quiet()).unwrap();
    assert_eq!(digest, sha_file(&u.image));
    let sums = sha256_file(&img, &digest).unwrap().commit().unwrap();
    let (ok, out) = check(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&sums)
            .current_dir(&outdir),
    );
    assert!(ok, "sha256sum -c failed: {out}");
    assert!(out.contains("n1.img: OK"), "{out}");
    let names: Vec<_> = fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // A corrupted image no longer verifies: the checksum file really is checked.
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 5000).unwrap();
    let (ok, _) = check(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&sums)
            .current_dir(&outdir),
    );
    assert!(!ok);
}

#[test]
fn fat_labels_prefer_the_root_directory_entry() {
    let dir = tmp();
    for (fat, label_off) in [("16", 0x2Bu64), ("32", 0x47)] {
        let img = dir.path().join(format!("fat{fat}.img"));
        fs::File::create(&img).unwrap().set_len(80 << 20).unwrap();
        let mut sf = std::process::Command::new("sfdisk");
        sf.args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&img);
        let mut child = sf.stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, type=e\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
        run(Command::new("mkfs.vfat")
            .args(["-F", fat, "-n", "ROOTLABEL", "--offset=2048"])
            .arg(&img)
            .arg(((80 << 10) - 1024).to_string()));
        let disk = Disk::read(&img).unwrap();
        assert_eq!(disk.partitions[0].fs, FsKind::Fat, "FAT{fat}");
        assert_eq!(disk.partitions[0].label.as_deref(), Some("ROOTLABEL"));
        // Make the boot sector copy disagree: the root directory entry wins (as in blkid).
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"BOOTSECT   ", (1 << 20) + label_off)
            .unwrap();
        let disk = Disk::read(&img).unwrap();
        assert_eq!(
            disk.partitions[0].label.as_deref(),
            Some("ROOTLABEL"),
            "FAT{fat}"
        );
        assert_eq!(blkid(&img, 1 << 20)["LABEL"], "ROOTLABEL");
        assert!(disk.by_label("rootlabel").is_some());
    }
}

#[test]
fn mbr_logical_partitions_are_numbered_from_five() {
    let dir = tmp();
    let img = dir.path().join("logical.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: dos\nstart=2048, size=20480, type=c\nstart=22528, type=5\nstart=24576, size=10240, type=83\nstart=36864, size=8192, type=83\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let disk = Disk::read(&img).unwrap();
    let sf = sfdisk_json(&img);
    let want: Vec<(u32, u64, u64)> = sf["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "5")
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node[img.display().to_string().len()..].parse().unwrap();
            (
                n,
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    let got: Vec<(u32, u64, u64)> = disk
        .partitions
        .iter()
        .map(|p| (p.number, p.start, p.size))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 5, 6]);
    assert_eq!(disk.last().unwrap().number, 6);
    assert!(disk.partitions.iter().all(|p| p.fs == FsKind::Other));
}
