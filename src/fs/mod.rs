//! The `fs` stage: applies a plan's file operations to the partitions of an image file.

pub mod ext4;
pub mod fat;
pub mod host;

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use pikube_ext4::Storage;

use anyhow::{Context, Result, bail};

use crate::disk::{Disk, FsKind, Partition};
use crate::io::cow::StorageStream;
use crate::io::sha256_bytes;
use crate::manifest::{FileRecord, format_mode};
use crate::op::{Action, Content, Op, Tree};

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
            FsKind::Fat => {
                let stream = StorageStream::new(&**image, part.start + part.size);
                let mut fat = fat::Fat::open(stream, part.start, part.size, label)?;
                records.extend(apply_to(&mut fat, &ops)?);
                fat.close()?;
            }
            FsKind::Ext4 => {
                let mut tree = ext4::Ext4Tree::open(image, part, label, crate::build_timestamp())?;
                records.extend(apply_to(&mut tree, &ops)?);
                tree.close()?;
            }
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

/// Applies `ops` to `tree` in order and returns what was written, for the manifest.
pub fn apply_to(tree: &mut dyn Tree, ops: &[&Op]) -> Result<Vec<FileRecord>> {
    let mut records = Vec::new();
    for op in ops {
        let meta = op.meta();
        match &op.action {
            Action::Write(content) => {
                let n = tree.write(&op.path, &mut open_content(content)?, content.size(), &meta)?;
                records.push(record(op, &op.path, "file", n, Some(content.sha256())));
            }
            Action::Mkdir => {
                tree.mkdir(&op.path, &meta)?;
                records.push(record(op, &op.path, "dir", 0, None));
            }
            Action::Symlink { target } => {
                tree.symlink(&op.path, target, &meta)?;
                records.push(record(op, &op.path, "symlink", target.len() as u64, None));
            }
            Action::Remove => {
                if tree.remove(&op.path)? {
                    records.push(record(op, &op.path, "remove", 0, None));
                }
            }
            Action::Edit(edit) => {
                for (path, bytes) in edit.apply(tree, &op.path, &meta)? {
                    let (n, sha) = (bytes.len() as u64, sha256_bytes(&bytes));
                    records.push(record(op, &path, "edit", n, Some(sha)));
                }
            }
        }
    }
    Ok(records)
}

/// Bytes of free space each ext4 partition lacks for `ops` (empty when everything fits).
/// Overwritten files are counted in full, so the estimate errs on the safe side.
/// An ext4 partition too small for the operations meant for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub partition: u32,
    /// Bytes missing.
    pub missing: u64,
    /// Bytes free now.
    pub free: u64,
}

pub fn ext4_shortfall(image: &Image, disk: &Disk, ops: &[&Op]) -> Result<Vec<Shortfall>> {
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
            out.push(Shortfall {
                partition: part.number,
                missing: need - free,
                free,
            });
        }
    }
    Ok(out)
}

/// Reads the ext4 filesystem in a partition with ext4-view (inspection and checks).
pub fn ext4_reader(file: &File, part: &Partition) -> Result<ext4_view::Ext4> {
    use std::os::unix::fs::FileExt;
    let file = file
        .try_clone()
        .context("cannot duplicate the image file handle")?;
    ext4_reader_with(
        Box::new(move |buf: &mut [u8], off: u64| file.read_exact_at(buf, off)),
        part,
    )
}

/// Reads `buf.len()` bytes of the image at an offset.
pub type ReadAt = Box<dyn FnMut(&mut [u8], u64) -> std::io::Result<()>>;

/// [`ext4_reader`] over any image that can be read at offsets (a partly decoded one).
pub fn ext4_reader_with(read: ReadAt, part: &Partition) -> Result<ext4_view::Ext4> {
    struct PartRead {
        read: ReadAt,
        start: u64,
        len: u64,
    }
    impl ext4_view::Ext4Read for PartRead {
        fn read(
            &mut self,
            start_byte: u64,
            dst: &mut [u8],
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
            if start_byte + dst.len() as u64 > self.len {
                return Err("read past the end of the partition".into());
            }
            (self.read)(dst, self.start + start_byte)?;
            Ok(())
        }
    }
    let reader = PartRead {
        read,
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
