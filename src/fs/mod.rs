//! The `fs` stage: applies a plan's file operations to the partitions of an image file.

pub mod fat;

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use pikube_ext4::Storage;

use anyhow::{Context, Result, bail};

use crate::disk::{Disk, FsKind, Partition};
use crate::io::sha256_bytes;
use crate::manifest::{FileRecord, format_mode};
use crate::plan::{Action, Content, Op};
use crate::raspi;

/// Finds the partition an op names, with an error that lists what the image has.
pub fn partition<'d>(disk: &'d Disk, label: &str) -> Result<&'d Partition> {
    disk.by_label(label).with_context(|| {
        let found: Vec<String> = disk
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "{} ({:?}, {})",
                    p.number,
                    p.fs,
                    p.label.as_deref().unwrap_or("no label")
                )
            })
            .collect();
        format!(
            "the image has no partition labelled '{label}' (it has: {}): is it the OS image the board expects?",
            found.join(", ")
        )
    })
}

/// The image being written: an open file, or an overlay on one.
pub type Image = Arc<dyn Storage>;

/// Applies `ops` to `image`, partition by partition (in order within each partition), and
/// returns what was written, for the manifest.
pub fn apply(image: &Image, disk: &Disk, ops: &[&Op]) -> Result<Vec<FileRecord>> {
    let mut labels: Vec<&str> = Vec::new();
    for op in ops {
        if !labels.contains(&op.partition.as_str()) {
            labels.push(&op.partition);
        }
    }
    let mut records = Vec::new();
    for label in labels {
        let part = partition(disk, label)?;
        let ops: Vec<&Op> = ops
            .iter()
            .copied()
            .filter(|o| o.partition == label)
            .collect();
        match part.fs {
            FsKind::Fat => apply_fat(image, part, label, &ops, &mut records)?,
            FsKind::Ext4 => apply_ext4(image, part, label, &ops, &mut records)?,
            other => bail!(
                "partition '{label}' holds {other:?}, which this build cannot write to; expected FAT or ext4"
            ),
        }
    }
    Ok(records)
}

fn record(op: &Op, path: &str, kind: &str, size: u64, sha256: Option<String>) -> FileRecord {
    FileRecord {
        partition: op.partition.clone(),
        path: path.to_string(),
        kind: kind.to_string(),
        size,
        mode: format_mode(op.mode as u32),
        uid: op.uid,
        gid: op.gid,
        sha256: if op.secret { None } else { sha256 },
        secret: op.secret,
    }
}

/// Opens a plan's content as a reader.
pub fn open_content(c: &Content) -> Result<Box<dyn Read + '_>> {
    Ok(match c {
        Content::Bytes(b) => Box::new(&b[..]),
        Content::File { path, .. } => {
            Box::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?)
        }
        Content::Download { url } => {
            bail!("{url} was not downloaded (a dry-run plan cannot be applied)")
        }
    })
}

fn apply_fat(
    image: &Image,
    part: &Partition,
    label: &str,
    ops: &[&Op],
    records: &mut Vec<FileRecord>,
) -> Result<()> {
    let stream = crate::io::overlay::StorageStream::new(&**image, part.start + part.size);
    let fat = fat::Fat::open(stream, part.start, part.size, label)?;
    for op in ops {
        match &op.action {
            Action::Write(content) => {
                let n = fat.write(&op.path, &mut open_content(content)?)?;
                records.push(record(op, &op.path, "file", n, Some(content.sha256())));
            }
            Action::KernelArgs { args } => {
                let config = fat.read(&op.path)?.with_context(|| {
                    format!(
                        "{label}:{} not found: the board expects a Raspberry Pi boot partition",
                        op.path
                    )
                })?;
                let config = String::from_utf8_lossy(&config);
                let cmdline_path = format!("/{}", raspi::cmdline_path(&config));
                let cmdline = fat.read(&cmdline_path)?.with_context(|| {
                    format!("{label}:{cmdline_path} (named by {}) not found", op.path)
                })?;
                let cmdline = String::from_utf8(cmdline)
                    .with_context(|| format!("{label}:{cmdline_path} is not text"))?;
                let new = raspi::append_kernel_args(&cmdline, args).unwrap_or(cmdline);
                fat.write(&cmdline_path, &mut new.as_bytes())?;
                records.push(record(
                    op,
                    &cmdline_path,
                    "edit",
                    new.len() as u64,
                    Some(sha256_bytes(new.as_bytes())),
                ));
            }
            Action::Mkdir | Action::Symlink { .. } | Action::Remove | Action::EditEnv { .. } => {
                bail!(
                    "{label}:{}: FAT partitions hold only regular files written by the plan",
                    op.path
                )
            }
        }
    }
    fat.close()
}

fn ext4_err(label: &str, path: &str) -> impl Fn(pikube_ext4::Error) -> anyhow::Error {
    let at = format!("{label}:{path}");
    move |e| anyhow::anyhow!("{at}: {e}")
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn apply_ext4(
    image: &Image,
    part: &Partition,
    label: &str,
    ops: &[&Op],
    records: &mut Vec<FileRecord>,
) -> Result<()> {
    let mtime = crate::build_timestamp();
    let mut fs = pikube_ext4::Ext4Fs::open(image.clone(), part.start, part.size, mtime)
        .map_err(|e| anyhow::anyhow!("ext4 partition '{label}': {e}"))?;
    let dir_meta = pikube_ext4::Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime,
    };
    for op in ops {
        let meta = pikube_ext4::Meta {
            mode: op.mode,
            uid: op.uid,
            gid: op.gid,
            mtime,
        };
        let err = ext4_err(label, &op.path);
        match &op.action {
            Action::Write(content) => {
                fs.mkdir_p(parent(&op.path), &dir_meta).map_err(&err)?;
                fs.write_file(&op.path, &mut open_content(content)?, content.size(), &meta)
                    .map_err(&err)?;
                records.push(record(
                    op,
                    &op.path,
                    "file",
                    content.size(),
                    Some(content.sha256()),
                ));
            }
            Action::Mkdir => {
                fs.mkdir_p(&op.path, &meta).map_err(&err)?;
                records.push(record(op, &op.path, "dir", 0, None));
            }
            Action::Symlink { target } => {
                fs.mkdir_p(parent(&op.path), &dir_meta).map_err(&err)?;
                if fs.stat(&op.path).map_err(&err)?.is_some() {
                    fs.remove(&op.path).map_err(&err)?;
                }
                fs.symlink(&op.path, target, &meta).map_err(&err)?;
                records.push(record(op, &op.path, "symlink", target.len() as u64, None));
            }
            Action::Remove => {
                if fs.stat(&op.path).map_err(&err)?.is_some() {
                    fs.remove(&op.path).map_err(&err)?;
                    records.push(record(op, &op.path, "remove", 0, None));
                }
            }
            Action::EditEnv { key, append } => {
                let old = match fs.stat(&op.path).map_err(&err)? {
                    Some(_) => fs.read_file(&op.path).map_err(&err)?,
                    None => bail!(
                        "{label}:{} not found: the board expects an Armbian image, which keeps its boot settings there",
                        op.path
                    ),
                };
                let old = String::from_utf8(old)
                    .with_context(|| format!("{label}:{} is not text", op.path))?;
                let new = crate::envfile::append_words(&old, key, append)
                    .with_context(|| format!("{label}:{}", op.path))?;
                let text = match new {
                    Some(new) => {
                        fs.write_file(&op.path, &mut new.as_bytes(), new.len() as u64, &meta)
                            .map_err(&err)?;
                        new
                    }
                    None => old,
                };
                records.push(record(
                    op,
                    &op.path,
                    "edit",
                    text.len() as u64,
                    Some(sha256_bytes(text.as_bytes())),
                ));
            }
            Action::KernelArgs { .. } => bail!(
                "{label}:{}: kernel arguments live on the boot partition, not on ext4",
                op.path
            ),
        }
    }
    fs.close()
        .map_err(|e| anyhow::anyhow!("ext4 partition '{label}': {e}"))?;
    Ok(())
}

/// Bytes of free space each ext4 partition lacks for `ops` (empty when everything fits).
/// Overwritten files are counted in full, so the estimate errs on the safe side.
pub fn ext4_shortfall(image: &Image, disk: &Disk, ops: &[&Op]) -> Result<Vec<(u32, u64)>> {
    let mut out = Vec::new();
    let mut labels: Vec<&str> = ops.iter().map(|o| o.partition.as_str()).collect();
    labels.dedup();
    labels.sort();
    labels.dedup();
    for label in labels {
        let part = partition(disk, label)?;
        if part.fs != FsKind::Ext4 {
            continue;
        }
        let now = crate::build_timestamp();
        let fs = pikube_ext4::Ext4Fs::open(image.clone(), part.start, part.size, now)
            .map_err(|e| anyhow::anyhow!("ext4 partition '{label}': {e}"))?;
        let bs = fs.block_size();
        let sizes: Vec<u64> = ops
            .iter()
            .filter(|o| o.partition == label)
            .map(|o| match &o.action {
                Action::Write(c) => c.size(),
                Action::Symlink { target } => target.len() as u64,
                Action::Mkdir => bs as u64,
                _ => 0,
            })
            .collect();
        let need = pikube_ext4::Ext4Fs::bytes_needed_for(&sizes, bs);
        let free = fs.free_bytes();
        drop(fs);
        if need > free {
            out.push((part.number, need - free));
        }
    }
    Ok(out)
}

/// Reads the ext4 filesystem in a partition with ext4-view (inspection and checks).
pub fn ext4_reader(file: &File, part: &Partition) -> Result<ext4_view::Ext4> {
    struct PartRead {
        file: File,
        start: u64,
        len: u64,
    }
    impl ext4_view::Ext4Read for PartRead {
        fn read(
            &mut self,
            start_byte: u64,
            dst: &mut [u8],
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
            use std::os::unix::fs::FileExt;
            if start_byte + dst.len() as u64 > self.len {
                return Err("read past the end of the partition".into());
            }
            self.file.read_exact_at(dst, self.start + start_byte)?;
            Ok(())
        }
    }
    let reader = PartRead {
        file: file
            .try_clone()
            .context("cannot duplicate the image file handle")?,
        start: part.start,
        len: part.size,
    };
    ext4_view::Ext4::load(Box::new(reader)).map_err(|e| {
        anyhow::anyhow!(
            "partition {} is not a readable ext4 filesystem: {e}",
            part.number
        )
    })
}
