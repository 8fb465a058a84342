//! The disk-image target: a node's image in the requested formats, a `.sha256` beside each
//! file, and the node's manifest.

use std::path::PathBuf;

use anyhow::Result;

use super::{BuiltNode, NodeImage, NodeOutputs};
use crate::emit::{self, PendingFile};
use crate::formats::Format;
use crate::manifest::{Manifest, OutputRecord};
use crate::progress::{Progress, human_bytes};

/// Where the files go and in which formats (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub dir: PathBuf,
    pub formats: Vec<Format>,
}

/// Writes the node's outputs in the requested formats, their `.sha256` files and the
/// manifest.
pub fn write(spec: &Spec, node: BuiltNode<'_>, progress: &Progress) -> Result<NodeOutputs> {
    let img_name = format!("{}.img", node.node);
    let wants_raw = spec.formats.contains(&Format::Raw);
    let size = node.image.size()?;
    // The raw image as a file, when it is an output or a bmap needs it; its SHA-256 only
    // when it is an output.
    let (overlay, raw, raw_sha) = match node.image {
        NodeImage::File(pending) => {
            let sha = match wants_raw {
                true => Some(emit::hash_file(pending.path(), progress)?),
                false => None,
            };
            (None, Some(pending), sha)
        }
        NodeImage::Cow { overlay, frames } if wants_raw || spec.formats.contains(&Format::Bmap) => {
            let mut pending = PendingFile::create_private(&spec.dir, &img_name)?;
            let path = pending.path().to_path_buf();
            let sha = overlay.write_image(pending.file(), &path, &img_name, progress)?;
            (Some((overlay, frames)), Some(pending), Some(sha))
        }
        NodeImage::Cow { overlay, frames } => (Some((overlay, frames)), None, None),
    };
    let raw_record = raw_sha.filter(|_| wants_raw).map(|sha256| OutputRecord {
        file: img_name.clone(),
        size,
        sha256,
    });
    let mut outputs: Vec<OutputRecord> = raw_record.iter().cloned().collect();
    for &f in &spec.formats {
        let name = match f {
            Format::Raw => continue,
            Format::Bmap => format!("{}.bmap", node.node),
            _ => format!("{img_name}{}", f.suffix()),
        };
        let out = spec.dir.join(&name);
        let raw_path = || raw.as_ref().map(|r| r.path()).expect("a raw image file");
        let (size, sha256) = match (f, overlay) {
            (Format::Bmap, _) => crate::formats::write_bmap(raw_path(), &out, progress)?,
            (_, Some((o, frames))) => {
                let s =
                    crate::formats::write_compressed_overlay(o, frames.get(&f), f, &out, progress)?;
                (s.size, s.sha256)
            }
            (_, None) => crate::formats::write_compressed(raw_path(), f, &out, progress)?,
        };
        emit::write_sha256_file(&out, &sha256)?;
        outputs.push(OutputRecord {
            file: name,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        tool: crate::manifest::TOOL.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: node.node.clone(),
        board: node.board.clone(),
        role: node.role.to_string(),
        base: node.base,
        contains_secrets: node.files.iter().any(|f| f.secret),
        files: node.files,
        growth: node.growth,
        image: raw_record.clone(),
        outputs: outputs.clone(),
    };
    let manifest_path = spec.dir.join(format!("{}.manifest.json", node.node));
    emit::write_manifest(&manifest_path, &manifest)?;
    let path = match (raw, &raw_record) {
        (Some(pending), Some(r)) => {
            emit::write_sha256_file(&pending.final_path(), &r.sha256)?;
            let path = pending.commit()?;
            progress.message(&format!("wrote {} ({})", path.display(), human_bytes(size)));
            Some(path)
        }
        // Only derived formats were asked for: a raw file was only their source.
        _ => None,
    };
    for o in &outputs {
        if !o.file.ends_with(".img") {
            progress.message(&format!(
                "wrote {} ({})",
                spec.dir.join(&o.file).display(),
                human_bytes(o.size)
            ));
        }
    }
    Ok(NodeOutputs {
        image: path,
        sha256: raw_record.map(|r| r.sha256),
        size,
        manifest: manifest_path,
        files: outputs,
    })
}
