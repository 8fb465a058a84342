//! `pikube-image inspect`: what is in an image, read without mounting it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::boot::raspi;
use crate::decompress::{self, Compression};
use crate::disk::{Disk, FsKind};
use crate::fs::fat::{Fat, ReadOnly};
use crate::progress::{Progress, human_bytes};

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: String,
    pub table: String,
    pub disk_id: String,
    /// Size of the image (of a compressed one, where its partition table says it ends,
    /// unless it was decoded to the end).
    pub size: u64,
    /// Of a compressed image: how many bytes of it were decoded to read what is shown
    /// (decoding stops there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded: Option<u64>,
    pub partitions: Vec<PartReport>,
}

#[derive(Debug, Serialize)]
pub struct PartReport {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub fs: String,
    pub label: Option<String>,
    /// PRETTY_NAME from /etc/os-release (ext4 root filesystems).
    pub os: Option<String>,
    /// cloud-init NoCloud seed files present at the root (FAT).
    pub seed_files: Vec<String>,
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    /// Kernel command line (Raspberry Pi boot partitions).
    pub cmdline: Option<String>,
    /// The node the image was built for (`/etc/pikube/node.json` in the root filesystem).
    pub node: Option<crate::nodeinfo::NodeInfo>,
    pub error: Option<String>,
}

const SEED_FILES: [&str; 3] = ["meta-data", "user-data", "network-config"];

fn os_release(text: &str) -> Option<String> {
    let mut name = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "PRETTY_NAME" => return Some(v),
                "NAME" => name = Some(v),
                _ => {}
            }
        }
    }
    name
}

fn yaml_field(text: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// The image as `inspect` reads it: a raw file, or a compressed one decoded only as far
/// as it is read ([`decompress::Lazy`]).
#[derive(Clone)]
enum Source {
    Raw(Arc<File>),
    Lazy(Arc<Mutex<decompress::Lazy>>),
}

impl Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Source::Raw(f) => f.read_exact_at(buf, offset),
            Source::Lazy(l) => l
                .lock()
                .map_err(|_| io::Error::other("the image reader failed earlier"))?
                .read_exact_at(buf, offset),
        }
    }
}

/// A position in a [`Source`], for readers that want `Read + Seek`.
struct Cursor {
    src: Source,
    pos: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.src.read_exact_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the end of a partly decoded image is not known",
                ));
            }
        };
        Ok(self.pos)
    }
}

/// What `path` holds. A compressed image is decoded only up to the last byte that is read
/// (`_progress` is for a future progress display of that decoding).
pub fn inspect(path: &Path, _progress: &Progress) -> Result<Report> {
    let tmp;
    let (src, disk) = match decompress::detect(path)? {
        Compression::None => {
            let disk = Disk::read(path)?;
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            (Source::Raw(Arc::new(file)), disk)
        }
        _ => {
            tmp = tempfile::Builder::new()
                .prefix("pikube-inspect")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let lazy = decompress::Lazy::open(path, &tmp.path().join("image.img"))?;
            let src = Source::Lazy(Arc::new(Mutex::new(lazy)));
            let disk = Disk::read_unsized(
                &mut Cursor {
                    src: src.clone(),
                    pos: 0,
                },
                path,
            )?;
            (src, disk)
        }
    };
    let mut parts = Vec::new();
    for p in &disk.partitions {
        let mut r = PartReport {
            number: p.number,
            start: p.start,
            size: p.size,
            fs: format!("{:?}", p.fs).to_lowercase(),
            label: p.label.clone(),
            os: None,
            seed_files: Vec::new(),
            instance_id: None,
            hostname: None,
            cmdline: None,
            node: None,
            error: None,
        };
        let res: Result<()> = (|| {
            match p.fs {
                FsKind::Ext4 => {
                    let reader = src.clone();
                    let fs = crate::fs::ext4_reader_with(
                        Box::new(move |buf: &mut [u8], off: u64| reader.read_exact_at(buf, off)),
                        p,
                    )?;
                    if let Ok(text) = fs.read_to_string("/etc/os-release") {
                        r.os = os_release(&text);
                    } else if let Ok(text) = fs.read_to_string("/usr/lib/os-release") {
                        r.os = os_release(&text);
                    }
                    // U-Boot's extlinux.conf (Ubuntu for Rockchip): the first entry's
                    // command line is the one that boots.
                    if let Ok(text) = fs.read_to_string("/boot/extlinux/extlinux.conf") {
                        let conf = crate::boot::extlinux::ExtlinuxConf::parse(&text);
                        r.cmdline = conf.appends().first().map(|a| a.join(" "));
                    }
                    if let Ok(text) = fs.read_to_string(crate::nodeinfo::PATH) {
                        r.node = Some(serde_json::from_str(&text).with_context(|| {
                            format!(
                                "{} in partition {} is damaged",
                                crate::nodeinfo::PATH,
                                p.number
                            )
                        })?);
                    }
                }
                FsKind::Fat => {
                    let fat = Fat::open(
                        ReadOnly(Cursor {
                            src: src.clone(),
                            pos: 0,
                        }),
                        p.start,
                        p.size,
                        p.label.as_deref().unwrap_or("?"),
                    )?;
                    for s in SEED_FILES {
                        if let Some(data) = fat.read(s)? {
                            r.seed_files.push(s.to_string());
                            let text = String::from_utf8_lossy(&data);
                            if s == "meta-data" {
                                r.instance_id = yaml_field(&text, "instance-id")
                                    .or_else(|| yaml_field(&text, "instance_id"));
                                r.hostname = yaml_field(&text, "local-hostname");
                            }
                        }
                    }
                    if let Some(cfg) = fat.read("config.txt")? {
                        let cmd = raspi::cmdline_path(&String::from_utf8_lossy(&cfg));
                        if let Some(c) = fat.read(&cmd)? {
                            r.cmdline = Some(String::from_utf8_lossy(&c).trim().to_string());
                        }
                    }
                }
                FsKind::Other => {}
            }
            Ok(())
        })();
        if let Err(e) = res {
            r.error = Some(format!("{e:#}"));
        }
        parts.push(r);
    }
    let (size, decoded) = match &src {
        Source::Raw(_) => (disk.size, None),
        Source::Lazy(l) => {
            let l = l
                .lock()
                .map_err(|_| anyhow::anyhow!("the image reader failed"))?;
            (l.size().unwrap_or(disk.size), Some(l.decoded()))
        }
    };
    Ok(Report {
        image: path.display().to_string(),
        table: format!("{:?}", disk.table).to_uppercase(),
        disk_id: disk.disk_id.clone(),
        size,
        decoded,
        partitions: parts,
    })
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        for n in self.partitions.iter().filter_map(|p| p.node.as_ref()) {
            s.push_str(&n.render());
        }
        let _ = writeln!(
            s,
            "{}: {} partition table, disk id {}, {}",
            self.image,
            self.table,
            self.disk_id,
            human_bytes(self.size)
        );
        if let Some(d) = self.decoded {
            let _ = writeln!(
                s,
                "  (compressed: read by decoding its first {} only)",
                human_bytes(d)
            );
        }
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "  p{} {:<5} {:<16} start {:>12} size {:>10}",
                p.number,
                p.fs,
                p.label.as_deref().unwrap_or("-"),
                p.start,
                human_bytes(p.size)
            );
            if let Some(os) = &p.os {
                let _ = writeln!(s, "     os: {os}");
            }
            if !p.seed_files.is_empty() {
                let _ = writeln!(s, "     cloud-init seed: {}", p.seed_files.join(", "));
            }
            if let Some(h) = &p.hostname {
                let _ = writeln!(s, "     hostname: {h}");
            }
            if let Some(i) = &p.instance_id {
                let _ = writeln!(s, "     instance-id: {i}");
            }
            if let Some(c) = &p.cmdline {
                let _ = writeln!(s, "     cmdline: {c}");
            }
            if let Some(e) = &p.error {
                let _ = writeln!(s, "     error: {e}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_prefers_pretty_name() {
        assert_eq!(
            os_release("NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.3 LTS\"\n").unwrap(),
            "Ubuntu 24.04.3 LTS"
        );
        assert_eq!(os_release("NAME=Debian\n").unwrap(), "Debian");
        assert!(os_release("").is_none());
    }
}
