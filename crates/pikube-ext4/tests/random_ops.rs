//! Seeded random operation sequences on fixtures of every targeted feature
//! set, checked with e2fsck -fn, debugfs (htree flags), ext4-view (every
//! file byte for byte) and, as root, the kernel (loop mount).

mod common;
use common::*;
use pikube_ext4::{Error, Ext4Fs, Kind, Meta};
use pikube_test_oracles::{require_root, require_tool, skip};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

#[derive(Clone, Debug)]
enum Node {
    File { len: u64, seed: u64 },
    Dir,
    Link(String),
}

/// Deterministic content stream for (seed, len).
struct Gen {
    rng: ChaCha8Rng,
    left: u64,
}

impl Gen {
    fn new(seed: u64, len: u64) -> Gen {
        Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            left: len,
        }
    }
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        // Generate in 64-byte aligned pieces relative to the stream so that
        // chunking does not change the content: fill byte by byte from u64s.
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct Model {
    nodes: BTreeMap<String, Node>,
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir))
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn files(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(p, _)| p.clone())
            .collect()
    }
    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .keys()
            .filter(|p| {
                p.starts_with(&prefix) && p.len() > prefix.len() && !p[prefix.len()..].contains('/')
            })
            .cloned()
            .collect()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn initial_model(big_entries: usize) -> Model {
    let mut nodes = BTreeMap::new();
    for d in [
        "/",
        "/etc",
        "/etc/big",
        "/usr",
        "/usr/lib",
        "/usr/lib/big2",
        "/var",
        "/var/empty",
        "/lost+found",
    ] {
        nodes.insert(d.to_string(), Node::Dir);
    }
    nodes.insert("/lib".into(), Node::Link("usr/lib".into()));
    nodes.insert(
        "/etc/data-link".into(),
        Node::Link("../usr/lib/data.bin".into()),
    );
    // Pre-existing files are checked by content through a marker seed of
    // u64::MAX (fixed content), see `expected`.
    nodes.insert(
        "/etc/hostname".into(),
        Node::File {
            len: 6,
            seed: u64::MAX,
        },
    );
    nodes.insert(
        "/etc/os-release".into(),
        Node::File {
            len: 10,
            seed: u64::MAX - 1,
        },
    );
    nodes.insert(
        "/usr/lib/data.bin".into(),
        Node::File {
            len: 300_000,
            seed: u64::MAX - 2,
        },
    );
    for i in 0..big_entries {
        let c = format!("{i}\n");
        nodes.insert(
            format!("/etc/big/entry-{i:05}-with-a-longer-name.conf"),
            Node::File {
                len: c.len() as u64,
                seed: u64::MAX - 3 - i as u64,
            },
        );
        if i % 2 == 0 {
            nodes.insert(
                format!("/usr/lib/big2/m{i}"),
                Node::File {
                    len: 1,
                    seed: u64::MAX - 1_000_000,
                },
            );
        }
    }
    Model { nodes }
}

fn expected(seed: u64, len: u64) -> Vec<u8> {
    match seed {
        u64::MAX => b"stock\n".to_vec(),
        s if s == u64::MAX - 1 => b"NAME=test\n".to_vec(),
        s if s == u64::MAX - 2 => vec![0xA5; 300_000],
        s if s == u64::MAX - 1_000_000 => b"x".to_vec(),
        s if s > u64::MAX - 1_000_000 => format!("{}\n", u64::MAX - 3 - s).into_bytes(),
        s => content(s, len),
    }
}

fn meta(rng: &mut ChaCha8Rng, dir: bool) -> Meta {
    let mode = if dir {
        0o755
    } else {
        [0o644, 0o600, 0o755, 0o4755, 0o640][rng.random_range(0..5)]
    };
    // ext4-view 1.0 rejects seconds >= 2^31 (it converts the low word with
    // i32::try_from), so stay below 2038 here; post-2038 times are checked
    // in the smoke test with the writer's own stat and e2fsck.
    Meta {
        mode,
        uid: rng.random_range(0..70_000),
        gid: rng.random_range(0..70_000),
        mtime: rng.random_range(0..i32::MAX as i64),
    }
}

struct Params {
    ops: usize,
    max_small: u64,
    big_sizes: &'static [u64],
}

fn random_name(rng: &mut ChaCha8Rng) -> String {
    let len = if rng.random_bool(0.1) {
        rng.random_range(100..=255)
    } else {
        rng.random_range(1..24)
    };
    const CH: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@";
    let mut s: String = (0..len)
        .map(|_| CH[rng.random_range(0..CH.len())] as char)
        .collect();
    if s == "." || s == ".." || s.starts_with("..") {
        s.insert(0, 'n');
    }
    s
}

/// Many long names into one indexed directory: forces leaf splits (and, on
/// 1 KiB blocks, index node growth).
fn burst(fs: &mut Ext4Fs, model: &mut Model, rng: &mut ChaCha8Rng, dir: &str, n: usize) {
    for i in 0..n {
        let len = rng.random_range(60..=250);
        // Every fifth name has non-ASCII bytes: the signed/unsigned hash
        // variants differ only there.
        let stem = if i % 5 == 0 {
            "ünïcødé-é"
        } else {
            "burst"
        };
        let name: String = format!("{stem}-{i}-{}", "q".repeat(len));
        let mut cut = len;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let path = join(dir, &name[..cut]);
        if model.nodes.contains_key(&path) {
            continue;
        }
        let seed = rng.random();
        let size = rng.random_range(0..3000);
        fs.write_file(&path, &mut Gen::new(seed, size), size, &meta(rng, false))
            .unwrap_or_else(|e| panic!("burst {i}: {path}: {e}"));
        model.nodes.insert(path, Node::File { len: size, seed });
    }
}

fn run_ops(fs: &mut Ext4Fs, model: &mut Model, rng: &mut ChaCha8Rng, p: &Params, start_op: usize) {
    let mut bigs = p.big_sizes.iter();
    for op in start_op..start_op + p.ops {
        let choice = rng.random_range(0..100);
        if op % (p.ops / (p.big_sizes.len() + 1)).max(1) == 0
            && let Some(&size) = bigs.next()
        {
            let path = format!("/var/big-{op}.bin");
            let seed = rng.random();
            fs.write_file(&path, &mut Gen::new(seed, size), size, &meta(rng, false))
                .unwrap();
            model.nodes.insert(path, Node::File { len: size, seed });
            continue;
        }
        let dirs = model.dirs();
        match choice {
            0..=34 => {
                // New file (often in the indexed directories).
                let dir = match rng.random_range(0..4) {
                    0 => "/etc/big".to_string(),
                    1 => "/usr/lib/big2".to_string(),
                    _ => dirs[rng.random_range(0..dirs.len())].clone(),
                };
                let path = join(&dir, &random_name(rng));
                if model.nodes.contains_key(&path) || dir == "/lost+found" {
                    continue;
                }
                let len = match rng.random_range(0..10) {
                    0 => 0,
                    1..=6 => rng.random_range(1..8192),
                    _ => rng.random_range(1..p.max_small),
                };
                let seed = rng.random();
                fs.write_file(&path, &mut Gen::new(seed, len), len, &meta(rng, false))
                    .unwrap_or_else(|e| panic!("op {op}: write {path}: {e}"));
                model.nodes.insert(path, Node::File { len, seed });
            }
            35..=44 => {
                // Nested directories.
                let base = dirs[rng.random_range(0..dirs.len())].clone();
                if base.starts_with("/lost+found") {
                    continue;
                }
                let mut path = base;
                for _ in 0..rng.random_range(1..4) {
                    path = join(&path, &random_name(rng));
                }
                // Skip if any component exists as a non-directory.
                let mut cur = String::new();
                let mut ok = true;
                for c in path.split('/').filter(|c| !c.is_empty()) {
                    cur = format!("{cur}/{c}");
                    match model.nodes.get(&cur) {
                        Some(Node::Dir) | None => {}
                        _ => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                fs.mkdir_p(&path, &meta(rng, true))
                    .unwrap_or_else(|e| panic!("op {op}: mkdir {path}: {e}"));
                let mut cur = String::new();
                for c in path.split('/').filter(|c| !c.is_empty()) {
                    cur = format!("{cur}/{c}");
                    model.nodes.entry(cur.clone()).or_insert(Node::Dir);
                }
            }
            45..=54 => {
                // Symlinks, short (fast) and long (slow).
                let dir = dirs[rng.random_range(0..dirs.len())].clone();
                let path = join(&dir, &random_name(rng));
                if model.nodes.contains_key(&path) || dir == "/lost+found" {
                    continue;
                }
                let tlen = if rng.random_bool(0.5) {
                    rng.random_range(1..60)
                } else {
                    rng.random_range(60..1000)
                };
                let target: String = (0..tlen)
                    .map(|i| {
                        if i % 9 == 8 {
                            '/'
                        } else {
                            (b'a' + rng.random_range(0..26u8)) as char
                        }
                    })
                    .collect();
                fs.symlink(&path, &target, &meta(rng, false))
                    .unwrap_or_else(|e| panic!("op {op}: symlink {path}: {e}"));
                model.nodes.insert(path, Node::Link(target));
            }
            55..=69 => {
                // Overwrite an existing file.
                let files = model.files();
                let path = files[rng.random_range(0..files.len())].clone();
                let len = if rng.random_bool(0.2) {
                    0
                } else {
                    rng.random_range(1..p.max_small)
                };
                let seed = rng.random();
                fs.write_file(&path, &mut Gen::new(seed, len), len, &meta(rng, false))
                    .unwrap_or_else(|e| panic!("op {op}: overwrite {path}: {e}"));
                model.nodes.insert(path, Node::File { len, seed });
            }
            70..=84 => {
                // Delete a file or symlink.
                let cands: Vec<String> = model
                    .nodes
                    .iter()
                    .filter(|(p, n)| !matches!(n, Node::Dir) && *p != "/lib")
                    .map(|(p, _)| p.clone())
                    .collect();
                let path = cands[rng.random_range(0..cands.len())].clone();
                fs.remove(&path)
                    .unwrap_or_else(|e| panic!("op {op}: remove {path}: {e}"));
                model.nodes.remove(&path);
            }
            85..=89 => {
                // Remove an empty directory, or fail on a non-empty one.
                let d = dirs[rng.random_range(0..dirs.len())].clone();
                if d == "/" || d == "/lost+found" {
                    continue;
                }
                let res = fs.remove(&d);
                if model.children(&d).is_empty() {
                    res.unwrap_or_else(|e| panic!("op {op}: rmdir {d}: {e}"));
                    model.nodes.remove(&d);
                } else {
                    assert!(
                        matches!(res, Err(Error::DirectoryNotEmpty { .. })),
                        "op {op}: rmdir {d}: {res:?}"
                    );
                }
            }
            _ => {
                // Read back through the writer itself, and stat.
                let files = model.files();
                let path = files[rng.random_range(0..files.len())].clone();
                if let Some(Node::File { len, seed }) = model.nodes.get(&path) {
                    if *len < 4 << 20 {
                        assert_eq!(
                            fs.read_file(&path).unwrap(),
                            expected(*seed, *len),
                            "op {op}: read {path}"
                        );
                    }
                    let st = fs.stat(&path).unwrap().unwrap();
                    assert_eq!((st.kind, st.size), (Kind::File, *len));
                }
                // Writing through the /lib symlink lands in /usr/lib.
                if rng.random_bool(0.2) {
                    let name = random_name(rng);
                    let real = join("/usr/lib", &name);
                    model.nodes.entry(real).or_insert_with(|| {
                        let seed = rng.random();
                        fs.write_file(
                            &join("/lib", &name),
                            &mut Gen::new(seed, 100),
                            100,
                            &meta(rng, false),
                        )
                        .unwrap();
                        Node::File { len: 100, seed }
                    });
                }
            }
        }
    }
}

fn verify(fx: &Fixture, model: &Model) {
    let (ok, out) = fx.fsck();
    assert!(ok, "e2fsck -fn is not clean:\n{out}");
    for d in ["/etc/big", "/usr/lib/big2"] {
        assert_ne!(fx.flags(d) & 0x1000, 0, "{d} lost its htree index flag");
    }
    let v = fx.view();
    for (path, node) in &model.nodes {
        match node {
            Node::File { len, seed } => {
                let got = v
                    .read(path.as_str())
                    .unwrap_or_else(|e| panic!("ext4-view read {path}: {e}"));
                assert_eq!(got.len() as u64, *len, "{path} length");
                assert!(got == expected(*seed, *len), "{path} content differs");
            }
            Node::Link(t) => {
                let got = v
                    .read_link(path.as_str())
                    .unwrap_or_else(|e| panic!("ext4-view readlink {path}: {e}"));
                assert_eq!(got.to_str().unwrap(), t, "{path} target");
            }
            Node::Dir => {
                let mut names: Vec<String> = v
                    .read_dir(path.as_str())
                    .unwrap_or_else(|e| panic!("ext4-view read_dir {path}: {e}"))
                    .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
                    .filter(|n| n != "." && n != "..")
                    .collect();
                names.sort();
                let mut want: Vec<String> = model
                    .children(path)
                    .iter()
                    .map(|p| p.rsplit('/').next().unwrap().to_string())
                    .collect();
                want.sort();
                assert_eq!(names, want, "listing of {path}");
            }
        }
    }
}

fn kernel_check(fx: &Fixture, model: &Model) {
    if !(require_root("the loop-mount check") && require_tool("mount", "mount")) {
        return;
    }
    let mnt = fx.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (rc, out) = run(Command::new("mount")
        .arg("-o")
        .arg(format!("loop,offset={},sizelimit={}", fx.offset, fx.len))
        .arg(&fx.img)
        .arg(&mnt));
    if rc != 0 {
        skip(format_args!("the loop-mount check: mount failed: {out}"));
        return;
    }
    let mut checked = 0;
    for (path, node) in model.nodes.iter().step_by(7) {
        if let Node::File { len, seed } = node
            && *len < 8 << 20
        {
            let got = std::fs::read(mnt.join(&path[1..])).unwrap();
            assert!(
                got == expected(*seed, *len),
                "kernel reads different content for {path}"
            );
            checked += 1;
        }
    }
    std::fs::write(mnt.join("etc/big/kernel-written"), b"k").unwrap();
    let (rc, out) = run(Command::new("umount").arg(&mnt));
    assert_eq!(rc, 0, "umount: {out}");
    println!("kernel read {checked} files identically");
    let (ok, out) = fx.fsck();
    assert!(ok, "e2fsck after kernel write is not clean:\n{out}");
}

fn dir_size(fx: &Fixture, path: &str) -> u64 {
    let out = fx.debugfs(&format!("stat {path}"));
    let i = out.find("Size: ").expect("debugfs stat prints the size");
    out[i + 6..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn scenario(spec: Spec, seed: u64, p: Params) {
    let t = std::time::Instant::now();
    let fx = make(&spec);
    let mut model = initial_model(spec.big_dir_entries);
    let size_before = dir_size(&fx, "/etc/big");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Two sessions: the second reopens what the first wrote.
    let half = Params {
        ops: p.ops / 2,
        ..p
    };
    let mut fs = Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW).unwrap();
    burst(&mut fs, &mut model, &mut rng, "/etc/big", 120);
    run_ops(&mut fs, &mut model, &mut rng, &half, 0);
    fs.close().unwrap();
    let (ok, out) = fx.fsck();
    assert!(ok, "after session 1:\n{out}");
    let mut fs = Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW).unwrap();
    let second = Params {
        ops: p.ops - p.ops / 2,
        max_small: p.max_small,
        big_sizes: &[],
    };
    burst(&mut fs, &mut model, &mut rng, "/usr/lib/big2", 120);
    run_ops(&mut fs, &mut model, &mut rng, &second, p.ops / 2);
    fs.close().unwrap();
    verify(&fx, &model);
    let size_after = dir_size(&fx, "/etc/big");
    assert!(
        size_after > size_before,
        "the htree directory never grew (leaf splits untested)"
    );
    println!("/etc/big grew from {size_before} to {size_after} bytes");
    kernel_check(&fx, &model);
    println!(
        "{}: {} ops, {} nodes, {:?}",
        spec.name,
        p.ops,
        model.nodes.len(),
        t.elapsed()
    );
}

#[test]
fn ubuntu_2404_features() {
    scenario(
        Spec {
            name: "u2404",
            features: "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file,^metadata_csum_seed",
            block_size: 4096,
            size_mib: 512,
            extra: &[],
            big_dir_entries: 4000,
            offset_mib: 8,
        },
        2404,
        Params {
            ops: 360,
            max_small: 300_000,
            big_sizes: &[200 << 20, 30 << 20],
        },
    );
}

#[test]
fn ubuntu_2410_orphan_file_csum_seed() {
    scenario(
        Spec {
            name: "u2410",
            features: "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,orphan_file,metadata_csum_seed",
            block_size: 4096,
            size_mib: 160,
            extra: &["-U", "11111111-2222-3333-4444-555555555555"],
            big_dir_entries: 3000,
            offset_mib: 1,
        },
        2410,
        Params {
            ops: 320,
            max_small: 200_000,
            big_sizes: &[12 << 20],
        },
    );
}

#[test]
fn raspios_no_64bit_no_huge_file() {
    scenario(
        Spec {
            name: "raspios",
            features: "^64bit,^huge_file,^orphan_file,^metadata_csum_seed",
            block_size: 4096,
            size_mib: 128,
            extra: &[],
            big_dir_entries: 3000,
            offset_mib: 4,
        },
        5,
        Params {
            ops: 320,
            max_small: 200_000,
            big_sizes: &[8 << 20],
        },
    );
}

#[test]
fn armbian_m2() {
    scenario(
        Spec {
            name: "armbian",
            features: "^orphan_file,^metadata_csum_seed",
            block_size: 4096,
            size_mib: 128,
            extra: &["-m", "2"],
            big_dir_entries: 3000,
            offset_mib: 16,
        },
        7,
        Params {
            ops: 320,
            max_small: 200_000,
            big_sizes: &[8 << 20],
        },
    );
}

#[test]
fn one_kib_blocks() {
    scenario(
        Spec {
            name: "onek",
            features: "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^orphan_file",
            block_size: 1024,
            size_mib: 96,
            extra: &[],
            big_dir_entries: 3000,
            offset_mib: 1,
        },
        1024,
        Params {
            ops: 320,
            max_small: 100_000,
            big_sizes: &[10 << 20],
        },
    );
}

#[test]
fn gdt_csum_without_metadata_csum() {
    scenario(
        Spec {
            name: "gdtcsum",
            features: "^metadata_csum,uninit_bg,^orphan_file,^metadata_csum_seed",
            block_size: 4096,
            size_mib: 96,
            extra: &[],
            big_dir_entries: 2000,
            offset_mib: 2,
        },
        16,
        Params {
            ops: 300,
            max_small: 100_000,
            big_sizes: &[],
        },
    );
}
