//! `pikube-image inspect`: what is in an image, read without mounting it.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

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
    pub size: u64,
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

pub fn inspect(path: &Path, progress: &Progress) -> Result<Report> {
    let tmp;
    let raw = match decompress::detect(path)? {
        Compression::None => path.to_path_buf(),
        _ => {
            tmp = tempfile::Builder::new()
                .prefix("pikube-inspect")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let out = tmp.path().join("image.img");
            decompress::decompress_to(path, &out, progress)?;
            out
        }
    };
    let disk = Disk::read(&raw)?;
    let file = File::open(&raw).with_context(|| format!("cannot open {}", raw.display()))?;
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
                    let fs = crate::fs::ext4_reader(&file, p)?;
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
                        ReadOnly(&file),
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
    Ok(Report {
        image: path.display().to_string(),
        table: format!("{:?}", disk.table).to_uppercase(),
        disk_id: disk.disk_id.clone(),
        size: disk.size,
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
