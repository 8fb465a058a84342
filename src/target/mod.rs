//! The `target` stage: what a build makes of each node once its image is built. A
//! [`Target`] is the kind of output; each kind is one module that consumes a [`BuiltNode`].

pub mod disk_image;
pub mod netboot;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use crate::config::Role;
use crate::emit::PendingFile;
use crate::formats::{Format, FrameIndex};
use crate::io::cow::CowImage;
use crate::manifest::{BaseRef, FileRecord, GrowthRecord, OutputRecord};
use crate::progress::Progress;

/// The kind of output a build makes of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Image files in `dir`: raw (sparse `.img`), `.img.zst`, `.img.xz`, `.bmap`, each with
    /// its `.sha256`, and the node's manifest.
    DiskImage(disk_image::Spec),
}

/// A node's finished image, as every target receives it.
pub struct BuiltNode<'a> {
    pub node: String,
    pub board: String,
    pub role: Role,
    pub base: BaseRef,
    /// Every file operation applied, for the manifest.
    pub files: Vec<FileRecord>,
    pub growth: Option<GrowthRecord>,
    pub image: NodeImage<'a>,
    /// The node's `known_hosts` line.
    pub known_host: Option<String>,
}

/// Where a built node's bytes are.
pub enum NodeImage<'a> {
    /// A copy-on-write overlay on a prepared base, with the base's compressed frames (per
    /// format) that unchanged parts of compressed outputs reuse.
    Cow {
        overlay: &'a CowImage,
        frames: &'a BTreeMap<Format, FrameIndex>,
    },
    /// A complete image file not yet under its final name.
    File(PendingFile),
}

impl NodeImage<'_> {
    /// Size of the image in bytes.
    pub fn size(&self) -> Result<u64> {
        match self {
            NodeImage::Cow { overlay, .. } => Ok(overlay.size()),
            NodeImage::File(pending) => Ok(std::fs::metadata(pending.path())
                .map_err(|e| anyhow::anyhow!("cannot stat {}: {e}", pending.path().display()))?
                .len()),
        }
    }

    /// Byte ranges `[start, end)` that may hold non-zero bytes, in order; the rest reads as
    /// zeros.
    pub fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        match self {
            NodeImage::Cow { overlay, .. } => Ok(overlay.data_ranges()),
            NodeImage::File(pending) => {
                let f = std::fs::File::open(pending.path())?;
                Ok(crate::io::data_ranges(&f, f.metadata()?.len())?)
            }
        }
    }
}

/// What a target wrote for one node.
#[derive(Debug, Clone)]
pub struct NodeOutputs {
    /// The raw image, when it is an output.
    pub image: Option<PathBuf>,
    /// Its SHA-256, when it is an output.
    pub sha256: Option<String>,
    pub size: u64,
    pub manifest: PathBuf,
    pub files: Vec<OutputRecord>,
}

impl Target {
    /// Writes `node`'s outputs.
    pub fn write(&self, node: BuiltNode<'_>, progress: &Progress) -> Result<NodeOutputs> {
        match self {
            Target::DiskImage(spec) => disk_image::write(spec, node, progress),
        }
    }
}
