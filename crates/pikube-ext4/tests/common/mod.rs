//! Fixture images for the ext4 writer tests: filesystems made by mkfs.ext4
//! (pre-populated with `-d`, large directories indexed by `e2fsck -fyD`)
//! placed at a non-zero offset inside a partitioned image file.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// The clock handed to the writer: what it stamps on changed metadata.
pub const NOW: i64 = 1_700_000_000;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub block_size: u32,
}

pub struct Spec<'a> {
    pub name: &'a str,
    pub features: &'a str,
    pub block_size: u32,
    pub size_mib: u64,
    pub extra: &'a [&'a str],
    pub big_dir_entries: usize,
    pub offset_mib: u64,
}

pub fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
}

/// Builds a fixture: populated source tree, mkfs.ext4, e2fsck -fyD, then the
/// filesystem copied into a larger MBR-partitioned image at `offset_mib`.
pub fn make(spec: &Spec) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("pikube-ext4-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let pop = dir.path().join("pop");
    std::fs::create_dir_all(pop.join("etc/big")).unwrap();
    std::fs::create_dir_all(pop.join("usr/lib/big2")).unwrap();
    std::fs::create_dir_all(pop.join("var/empty")).unwrap();
    std::fs::write(pop.join("etc/hostname"), b"stock\n").unwrap();
    std::fs::write(pop.join("etc/os-release"), b"NAME=test\n").unwrap();
    std::fs::write(pop.join("usr/lib/data.bin"), vec![0xA5u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("usr/lib", pop.join("lib")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/data.bin", pop.join("etc/data-link")).unwrap();
    for i in 0..spec.big_dir_entries {
        std::fs::write(
            pop.join(format!("etc/big/entry-{i:05}-with-a-longer-name.conf")),
            format!("{i}\n"),
        )
        .unwrap();
        if i % 2 == 0 {
            std::fs::write(pop.join(format!("usr/lib/big2/m{i}")), b"x").unwrap();
        }
    }
    let fs = dir.path().join("fs.raw");
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-I", "256", "-b", &spec.block_size.to_string()]);
    cmd.args(["-E", "root_owner=0:0", "-L", spec.name]);
    if !spec.features.is_empty() {
        cmd.args(["-O", spec.features]);
    }
    cmd.args(spec.extra);
    cmd.arg("-d")
        .arg(&pop)
        .arg(&fs)
        .arg(format!("{}M", spec.size_mib));
    let (rc, out) = run(&mut cmd);
    assert_eq!(rc, 0, "mkfs.ext4 failed: {out}");
    let (rc, out) = run(Command::new("e2fsck").arg("-fyD").arg(&fs));
    assert!(rc <= 1, "e2fsck -fyD failed ({rc}): {out}");
    std::fs::remove_dir_all(&pop).unwrap();
    // Partitioned image: MBR with one Linux partition at offset_mib.
    let img = dir.path().join("disk.img");
    let offset = spec.offset_mib * MIB;
    let len = spec.size_mib * MIB;
    let total = offset + len + MIB;
    File::create(&img).unwrap().set_len(total).unwrap();
    // Without sfdisk the filesystem still sits at its offset, behind no partition table.
    if pikube_test_oracles::require_tool("sfdisk", "fdisk") {
        let script = format!(
            "label: dos\nstart={}, size={}, type=83\n",
            offset / 512,
            len / 512
        );
        let mut child = Command::new("sfdisk")
            .arg("-q")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed");
    }
    let mut src = File::open(&fs).unwrap();
    let mut dst = OpenOptions::new().write(true).open(&img).unwrap();
    dst.seek(SeekFrom::Start(offset)).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    drop(dst);
    std::fs::remove_file(&fs).unwrap();
    Fixture {
        dir,
        img,
        offset,
        len,
        block_size: spec.block_size,
    }
}

impl Fixture {
    pub fn spec_path(&self) -> String {
        format!("{}?offset={}", self.img.display(), self.offset)
    }

    pub fn open_rw(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.img)
            .unwrap()
    }

    /// `e2fsck -fn` on the partition; returns (clean, output).
    pub fn fsck(&self) -> (bool, String) {
        let (rc, out) = run(Command::new("e2fsck").arg("-fn").arg(self.spec_path()));
        (rc == 0, out)
    }

    pub fn debugfs(&self, req: &str) -> String {
        run(Command::new("debugfs")
            .arg("-R")
            .arg(req)
            .arg(self.spec_path()))
        .1
    }

    /// Inode flags of `path` as reported by debugfs.
    pub fn flags(&self, path: &str) -> u32 {
        let out = self.debugfs(&format!("stat {path}"));
        let i = out
            .find("Flags: 0x")
            .unwrap_or_else(|| panic!("debugfs stat {path}: {out}"));
        let hex: String = out[i + 9..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        u32::from_str_radix(&hex, 16).unwrap()
    }

    pub fn sha256(&self) -> String {
        let (rc, out) = run(Command::new("sha256sum").arg(&self.img));
        assert_eq!(rc, 0);
        out.split_whitespace().next().unwrap().to_string()
    }

    pub fn view(&self) -> ext4_view::Ext4 {
        let r = OffsetReader {
            file: File::open(&self.img).unwrap(),
            offset: self.offset,
        };
        ext4_view::Ext4::load(Box::new(r)).expect("ext4-view loads the filesystem")
    }

    /// Reads `len` bytes at `pos` inside the partition.
    pub fn read_at(&self, pos: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(&self.img).unwrap();
        f.seek(SeekFrom::Start(self.offset + pos)).unwrap();
        let mut v = vec![0; len];
        f.read_exact(&mut v).unwrap();
        v
    }

    pub fn patch(&self, pos: u64, bytes: &[u8]) {
        let mut f = self.open_rw();
        f.seek(SeekFrom::Start(self.offset + pos)).unwrap();
        f.write_all(bytes).unwrap();
    }
}

pub struct OffsetReader {
    pub file: File,
    pub offset: u64,
}

impl ext4_view::Ext4Read for OffsetReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(dst, self.offset + start_byte)?;
        Ok(())
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
