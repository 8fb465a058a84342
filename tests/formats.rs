//! Fleet output formats checked by the standard tools: `zstd -t`/`-d`, `xz -t`/`-d`
//! (single- and multi-threaded), `bmaptool copy` (which verifies every range checksum and
//! the bmap's own checksum), `sha256sum -c`, and the kernel (an XFS loop mount, as root)
//! for reflink copies.

mod support;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pikube_ext4::Storage;
use pikube_image::formats::{
    self, FRAME_SIZE, Format, FrameIndex, write_bmap, write_bmap_with, write_compressed,
    write_compressed_overlay, write_compressed_stats, write_sha256sums,
};
use pikube_image::io::cow::CowImage;
use pikube_image::progress::Progress;
use pikube_test_oracles::{require_root, require_tool, skip};
use sha2::{Digest, Sha256};
use support::pseudo_random;

const MIB: u64 = 1 << 20;
/// Not a multiple of the frame size or of the bmap block size: the last chunk is partial.
const BASE_SIZE: u64 = 96 * MIB + 12345;
/// Chunks holding data in the base.
const BASE_DATA_CHUNKS: [u64; 7] = [0, 2, 3, 4, 10, 15, 24];
/// Chunks the node changes (three data chunks and one that is a hole in the base).
const NODE_CHANGED_CHUNKS: [u64; 4] = [3, 10, 20, 24];

/// Compressible bytes that look a little like a file system: words, numbers, some zeros.
fn texty(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "kernel",
        "node",
        "cluster",
        "/usr/lib/",
        "\0\0\0\0\0\0\0\0",
        "k3s",
        "ext4",
        "\n",
        "inode",
        "0x7f45",
        "system-boot",
        "raspi",
    ];
    let noise = pseudo_random(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let r = noise[i % len] as usize;
        out.extend_from_slice(WORDS[r % WORDS.len()].as_bytes());
        if r & 0x30 == 0 {
            out.push(noise[(i * 7 + 3) % len]);
        }
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

/// A sparse base image: partial and full data chunks, a random MiB, holes, a partial last
/// chunk with data at its very end.
fn make_base(path: &Path) {
    let f = File::create(path).unwrap();
    f.set_len(BASE_SIZE).unwrap();
    f.write_all_at(&texty(64 << 10, 1), 0).unwrap();
    f.write_all_at(&texty(256 << 10, 2), 8 * MIB).unwrap();
    f.write_all_at(&texty(256 << 10, 6), 12 * MIB).unwrap();
    f.write_all_at(&texty(256 << 10, 7), 16 * MIB + 300 * 1024)
        .unwrap();
    f.write_all_at(&pseudo_random(1 << 20, 3), 40 * MIB)
        .unwrap();
    f.write_all_at(&texty(512 << 10, 4), 60 * MIB).unwrap();
    f.write_all_at(&texty(5000, 5), BASE_SIZE - 5000).unwrap();
    f.sync_all().unwrap();
}

/// The node: a copy of the base with a few KiB changed in [`NODE_CHANGED_CHUNKS`], made
/// the plain way (a sparse copy written in place), independently of the overlay builds use.
fn make_node(base: &Path, node: &Path) {
    let src = File::open(base).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(node)
        .unwrap();
    f.set_len(BASE_SIZE).unwrap();
    for (s, e) in pikube_image::io::data_ranges(&src, BASE_SIZE).unwrap() {
        let mut buf = vec![0u8; (e - s) as usize];
        src.read_exact_at(&mut buf, s).unwrap();
        f.write_all_at(&buf, s).unwrap();
    }
    node_writes(&f);
    f.sync_all().unwrap();
}

/// The node written the way builds write it: through an overlay on the base.
fn write_node_via_overlay(base: &Path, node: &Path) -> String {
    let overlay = CowImage::open(base, node.parent().unwrap()).unwrap();
    node_writes(&overlay);
    let out = File::create(node).unwrap();
    overlay
        .write_image(&out, node, "node", &Progress::quiet())
        .unwrap()
}

/// What makes the node differ from the base.
fn node_writes(to: &dyn Storage) {
    to.store_at(&pseudo_random(2048, 10), 13 * MIB + 100)
        .unwrap();
    to.store_at(&pseudo_random(1024, 11), 40 * MIB + 4096)
        .unwrap();
    to.store_at(&texty(3072, 12), 80 * MIB + 512).unwrap();
    to.store_at(&pseudo_random(50, 13), BASE_SIZE - 100)
        .unwrap();
}

fn sha_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// SHA-256 and length of what `cmd args... file` writes on stdout.
fn sha_of_command(cmd: &str, args: &[&str], file: &Path) -> (String, u64) {
    let mut child = Command::new(cmd)
        .args(args)
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{cmd} {args:?} {} failed", file.display());
    (hex::encode(h.finalize()), total)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
    node: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("pikube-formats-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().to_path_buf();
    let base = root.join("base.img");
    let node = root.join("n1.img");
    make_base(&base);
    make_node(&base, &node);
    Fixture {
        _dir: dir,
        root,
        base,
        node,
    }
}

fn check_format(format: Format, tool: &str, package: &str) {
    if !require_tool(tool, package) {
        return;
    }
    let fx = fixture();
    let q = Progress::quiet();
    let node_sha = sha_file(&fx.node);
    let base_sha = sha_file(&fx.base);
    let chunks = BASE_SIZE.div_ceil(FRAME_SIZE) as usize;

    // The base, compressed once in frames: a complete standard file of the base.
    let cache = fx.root.join("cache");
    let ix = FrameIndex::build(&fx.base, format, &cache, &q).unwrap();
    assert_eq!(ix.frames().len(), chunks);
    assert_eq!(ix.image_size(), BASE_SIZE);
    run_ok(Command::new(tool).arg("-t").arg(ix.frames_path()));
    assert_eq!(
        sha_of_command(tool, &["-dc"], &ix.frames_path()),
        (base_sha.clone(), BASE_SIZE)
    );
    assert_eq!(sha_file(&ix.frames_path()), ix.frames_sha256());

    // Reloading finds the same index; another format's index is refused.
    let ix = FrameIndex::load(&cache, format).unwrap();
    let other = if format == Format::Zst {
        Format::Xz
    } else {
        Format::Zst
    };
    let err = FrameIndex::load(&cache, other).unwrap_err().to_string();
    assert!(err.contains("index.json"), "{err}");

    // The node written through an overlay on the base, as builds do, and spliced from the
    // base's frames: only the chunks the overlay wrote to are compressed.
    let out = fx.root.join("out");
    fs::create_dir(&out).unwrap();
    let name = format!("n1.img{}", format.suffix());
    let spliced_path = out.join(&name);
    let overlay = CowImage::open(&fx.base, &fx.root).unwrap();
    node_writes(&overlay);
    let t = std::time::Instant::now();
    let spliced = write_compressed_overlay(&overlay, Some(&ix), format, &spliced_path, &q).unwrap();
    eprintln!("{format}: spliced node in {:?}: {spliced:?}", t.elapsed());
    assert_eq!(spliced.frames, chunks);
    assert_eq!(spliced.compressed, NODE_CHANGED_CHUNKS.len());
    let unchanged_data = BASE_DATA_CHUNKS
        .iter()
        .filter(|c| !NODE_CHANGED_CHUNKS.contains(c))
        .count();
    assert_eq!(spliced.reused, unchanged_data);
    assert_eq!(spliced.zero, chunks - spliced.compressed - spliced.reused);
    assert_eq!(fs::metadata(&spliced_path).unwrap().len(), spliced.size);
    assert_eq!(sha_file(&spliced_path), spliced.sha256);

    // The standard tools accept it and restore the node exactly.
    run_ok(Command::new(tool).arg("-t").arg(&spliced_path));
    assert_eq!(
        sha_of_command(tool, &["-dc"], &spliced_path),
        (node_sha.clone(), BASE_SIZE)
    );
    if format == Format::Xz {
        // Multi-threaded decoding relies on the sizes in the block headers.
        assert_eq!(
            sha_of_command(tool, &["-dc", "-T2"], &spliced_path),
            (node_sha.clone(), BASE_SIZE)
        );
        let list = run_ok(
            Command::new("xz")
                .args(["--robot", "-lvv"])
                .arg(&spliced_path),
        );
        let blocks = list.lines().filter(|l| l.starts_with("block\t")).count();
        assert_eq!(blocks, chunks, "{list}");
    }
    // And so does this tool's own decompressor (`build --image n1.img.zst`).
    let back = fx.root.join("back.img");
    pikube_image::decompress::decompress_to(&spliced_path, &back, &q).unwrap();
    assert_eq!(sha_file(&back), node_sha);

    // Its raw image is the node made the plain way.
    let raw_path = out.join("overlay.img");
    let sha = overlay
        .write_image(
            &File::create(&raw_path).unwrap(),
            &raw_path,
            "overlay.img",
            &q,
        )
        .unwrap();
    assert_eq!(sha, node_sha);
    assert_eq!(sha_file(&raw_path), node_sha);

    // From scratch: the same bytes, with every data chunk compressed.
    let scratch_path = fx.root.join(&name);
    let scratch = write_compressed_stats(&fx.node, format, &scratch_path, &q).unwrap();
    assert_eq!(scratch.reused, 0);
    assert_eq!(
        scratch.compressed,
        unchanged_data + NODE_CHANGED_CHUNKS.len()
    );
    assert_eq!(scratch.sha256, spliced.sha256);
    assert_eq!(
        fs::read(&scratch_path).unwrap(),
        fs::read(&spliced_path).unwrap()
    );
    // Deterministic: again, through the plain API.
    let again = write_compressed(&fx.node, format, &scratch_path, &q).unwrap();
    assert_eq!(again, (spliced.size, spliced.sha256.clone()));

    // A damaged cache is detected instead of producing a broken file.
    let frames = ix.frames_path();
    let victim = &ix.frames()[BASE_DATA_CHUNKS[1] as usize];
    let f = fs::OpenOptions::new().write(true).open(&frames).unwrap();
    let mut b = [0u8; 1];
    File::open(&frames)
        .unwrap()
        .read_exact_at(&mut b, victim.offset + victim.length / 2)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x55], victim.offset + victim.length / 2)
        .unwrap();
    let err = FrameIndex::load(&cache, format).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
    // A fresh index replaces the damaged one.
    let ix = FrameIndex::load_or_build(&fx.base, format, &cache, &q).unwrap();
    assert_eq!(sha_file(&ix.frames_path()), ix.frames_sha256());
    let bad = out.join(format!("bad{}", format.suffix()));
    // An index of another image is refused, and nothing is written.
    let other_img = fx.root.join("other.img");
    File::create(&other_img).unwrap().set_len(MIB).unwrap();
    let other = CowImage::open(&other_img, &fx.root).unwrap();
    let err = write_compressed_overlay(&other, Some(&ix), format, &bad, &q)
        .unwrap_err()
        .to_string();
    assert!(err.contains("describes an image of"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn zst_splice_equals_scratch_and_zstd_agrees() {
    check_format(Format::Zst, "zstd", "zstd");
}

#[test]
fn xz_splice_equals_scratch_and_xz_agrees() {
    check_format(Format::Xz, "xz", "xz-utils");
}

#[test]
fn bmaptool_copies_and_verifies_our_bmap() {
    if !(require_tool("bmaptool", "bmap-tools")
        && require_tool("zstd", "zstd")
        && require_tool("xz", "xz-utils"))
    {
        return;
    }
    let fx = fixture();
    let q = Progress::quiet();
    let node_sha = sha_file(&fx.node);
    let bmap = fx.root.join("n1.img.bmap");
    let (size, sha) = write_bmap(&fx.node, &bmap, &q).unwrap();
    assert_eq!(fs::metadata(&bmap).unwrap().len(), size);
    assert_eq!(sha_file(&bmap), sha);
    // Deterministic.
    assert_eq!(
        write_bmap(&fx.node, &bmap, &q).unwrap(),
        (size, sha.clone())
    );

    let dest = fx.root.join("flashed.img");
    let log = run_ok(
        Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap)
            .arg(&fx.node)
            .arg(&dest),
    );
    assert_eq!(sha_file(&dest), node_sha, "{log}");

    // bmaptool reads the compressed artifacts with the same bmap.
    for format in [Format::Zst, Format::Xz] {
        let packed = fx.root.join(format!("n1.img{}", format.suffix()));
        write_compressed(&fx.node, format, &packed, &q).unwrap();
        let dest = fx.root.join(format!("flashed-{format}.img"));
        run_ok(
            Command::new("bmaptool")
                .arg("copy")
                .arg("--bmap")
                .arg(&bmap)
                .arg(&packed)
                .arg(&dest),
        );
        assert_eq!(sha_file(&dest), node_sha, "through {format}");
    }

    // With all-zero blocks left out, a fresh target still gets the same bytes.
    let sparse_bmap = fx.root.join("zeros.bmap");
    write_bmap_with(&fx.node, &sparse_bmap, true, &q).unwrap();
    let dest2 = fx.root.join("flashed2.img");
    run_ok(
        Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&sparse_bmap)
            .arg(&fx.node)
            .arg(&dest2),
    );
    assert_eq!(sha_file(&dest2), node_sha);

    // bmaptool really checks: a changed image byte inside a mapped range is refused...
    let f = fs::OpenOptions::new().write(true).open(&fx.node).unwrap();
    f.write_all_at(b"X", 8 * MIB + 77).unwrap();
    drop(f);
    let out = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(&fx.node)
        .arg(fx.root.join("flashed3.img"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "bmaptool accepted a changed image");
    // ...and so is a bmap whose content no longer matches its own checksum.
    let text = fs::read_to_string(&bmap).unwrap();
    let tampered = fx.root.join("tampered.bmap");
    fs::write(
        &tampered,
        text.replacen("<BlockSize> 4096", "<BlockSize>  4096", 1),
    )
    .unwrap();
    let out = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&tampered)
        .arg(&fx.base)
        .arg(fx.root.join("flashed4.img"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "bmaptool accepted a tampered bmap");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sha256sums_verifies_with_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("n1.img"), pseudo_random(100_000, 1)).unwrap();
    fs::write(dir.path().join("n1.img.bmap"), b"<bmap/>\n").unwrap();
    fs::write(dir.path().join("n2 with space.img"), b"x").unwrap();
    let sums = write_sha256sums(dir.path()).unwrap();
    assert_eq!(sums, dir.path().join(formats::SHA256SUMS));
    let out = run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(dir.path()),
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        3,
        "{out}"
    );
    // Rewriting lists the same files (not itself).
    write_sha256sums(dir.path()).unwrap();
    assert_eq!(fs::read_to_string(&sums).unwrap().lines().count(), 3);
    fs::write(dir.path().join("n1.img"), b"changed").unwrap();
    let st = Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
}

/// A node image written from an overlay keeps the base's holes on this machine's disk.
#[test]
fn overlay_image_keeps_holes_here() {
    let dir = tempfile::Builder::new()
        .prefix("pikube-copy-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let base = dir.path().join("base.img");
    make_base(&base);
    let plain = dir.path().join("plain.img");
    make_node(&base, &plain);
    let node = dir.path().join("node.img");
    let sha = write_node_via_overlay(&base, &node);
    assert_eq!(sha, sha_file(&plain));
    assert_eq!(sha_file(&node), sha);
    let (b, c) = (fs::metadata(&base).unwrap(), fs::metadata(&node).unwrap());
    assert_eq!(c.len(), BASE_SIZE);
    // About 3 MiB of data in a 96 MiB file: the node allocates little more than the base.
    assert!(
        c.blocks() <= b.blocks() + 64,
        "{} > {}",
        c.blocks(),
        b.blocks()
    );
    assert!(c.blocks() * 512 < 8 * MIB);
}

/// On a filesystem that shares extents (XFS with reflink, on a loop device), a node image
/// shares the base's data: writing it costs only the blocks the node changed.
#[test]
fn reflink_on_xfs_when_root() {
    if !(require_root("mounting an XFS loop device") && require_tool("mkfs.xfs", "xfsprogs")) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pikube-xfs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let fsimg = dir.path().join("xfs.img");
    File::create(&fsimg).unwrap().set_len(320 * MIB).unwrap();
    run_ok(
        Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&fsimg),
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&fsimg)
        .arg(&mnt)
        .status()
        .unwrap();
    if !st.success() {
        skip(format_args!(
            "cannot loop-mount XFS here (mount exited with {st})"
        ));
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let used = || -> u64 {
        run_ok(Command::new("df").args(["-B1", "--output=used"]).arg(&mnt))
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let base = mnt.join("base.img");
    make_base(&base);
    let base_sha = sha_file(&base);
    let plain = dir.path().join("plain.img");
    make_node(&base, &plain);
    let before = used();
    let node = mnt.join("n1.img");
    let sha = write_node_via_overlay(&base, &node);
    let grew = used() - before;
    assert_eq!(sha, sha_file(&plain));
    assert_eq!(sha_file(&node), sha);
    // The base holds about 3 MiB of data; the node changed four blocks of it.
    assert!(grew < MIB, "the node took {grew} bytes: not a reflink");
    // The clone is independent: the base is unchanged by the node's edits.
    assert_eq!(sha_file(&base), base_sha);
}

/// Fills `len` bytes with the content of files under `/usr` (binaries, libraries, text):
/// data that compresses like a root filesystem does.
fn usr_bytes(len: usize) -> Vec<u8> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ty) = e.file_type() else { continue };
            if ty.is_dir() {
                walk(&e.path(), out);
            } else if ty.is_file() {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    for d in ["/usr/bin", "/usr/share", "/usr/lib"] {
        walk(Path::new(d), &mut files);
    }
    let mut out = Vec::with_capacity(len);
    for f in files {
        if out.len() >= len {
            break;
        }
        if let Ok(b) = fs::read(&f) {
            out.extend_from_slice(&b);
        }
    }
    out.resize(len, 0);
    out
}

/// Benchmark on a 1 GiB sparse base with 400 MiB of data from /usr and a node that differs in
/// 12 places of a few KiB. Run with
/// `PIKUBE_BENCH_DIR=/var/tmp/x cargo test --release --test formats fleet_bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn fleet_bench() {
    use std::time::Instant;
    let dir = PathBuf::from(
        std::env::var("PIKUBE_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/pikube-fleet-bench".into()),
    );
    fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.img");
    let node = dir.join("n1.img");
    let size = 1u64 << 30;
    {
        let data = usr_bytes(400 << 20);
        let f = File::create(&base).unwrap();
        f.set_len(size).unwrap();
        // Eight regions of 50 MiB, separated by holes, as partitions of a disk image would be.
        for (k, piece) in data.chunks(50 << 20).enumerate() {
            f.write_all_at(piece, 8 * MIB + k as u64 * 120 * MIB)
                .unwrap();
        }
        f.sync_all().unwrap();
    }
    let overlay = CowImage::open(&base, &dir).unwrap();
    for k in 0..12u64 {
        let at = 8 * MIB + k * 83 * MIB + k * 4099;
        overlay.store_at(&texty(3000, 100 + k), at).unwrap();
    }
    overlay
        .write_image(
            &File::create(&node).unwrap(),
            &node,
            "n1.img",
            &Progress::quiet(),
        )
        .unwrap();
    eprintln!(
        "bench: base {} (1 GiB, 400 MiB data), node written through an overlay",
        base.display()
    );
    let q = Progress::quiet();
    for (format, tool, args) in [
        (Format::Zst, "zstd", &["-T0", "-q", "-c"][..]),
        (Format::Xz, "xz", &["-T0", "-c"][..]),
    ] {
        let cache = dir.join(format!("cache-{format}"));
        let t = Instant::now();
        let ix = FrameIndex::build(&base, format, &cache, &q).unwrap();
        let build = t.elapsed();
        let out = dir.join(format!("n1.img{}", format.suffix()));
        let t = Instant::now();
        let st = write_compressed_overlay(&overlay, Some(&ix), format, &out, &q).unwrap();
        let splice = t.elapsed();
        let whole = dir.join(format!("whole{}", format.suffix()));
        let t = Instant::now();
        let status = Command::new(tool)
            .args(args)
            .arg(&node)
            .stdout(File::create(&whole).unwrap())
            .status()
            .unwrap();
        let tool_time = t.elapsed();
        assert!(status.success());
        eprintln!(
            "bench {format}: frame index of the base {build:.1?} ({} bytes); node spliced {splice:.2?} \
             ({} bytes, {} frames compressed, {} reused, {} zero); `{tool} {}` on the node {tool_time:.1?} ({} bytes)",
            fs::metadata(ix.frames_path()).unwrap().len(),
            st.size,
            st.compressed,
            st.reused,
            st.zero,
            args.join(" "),
            fs::metadata(&whole).unwrap().len()
        );
    }
}
