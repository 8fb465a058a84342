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
/// manifest, and puts them in place together: the image first, then the other outputs, their
/// checksums and the manifest last, after removing the files that describe what they replace
/// (the node's old checksums and manifest, the directory's `SHA256SUMS` and `known_hosts`,
/// which the build writes again at its end).
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
    let mut files = Vec::new();
    for &f in &spec.formats {
        let name = match f {
            Format::Raw => continue,
            Format::Bmap => format!("{}.bmap", node.node),
            _ => format!("{img_name}{}", f.suffix()),
        };
        let raw_path = || raw.as_ref().map(|r| r.path()).expect("a raw image file");
        let (file, size, sha256) = match (f, overlay) {
            (Format::Bmap, _) => {
                let text = crate::formats::bmap_text(raw_path(), false, progress)?;
                let file = PendingFile::with_bytes(&spec.dir.join(&name), text.as_bytes())?;
                (
                    file,
                    text.len() as u64,
                    crate::io::sha256_bytes(text.as_bytes()),
                )
            }
            (_, overlay) => {
                let mut file = PendingFile::create_private(&spec.dir, &name)?;
                let s = match overlay {
                    Some((o, frames)) => crate::formats::compress_overlay_into(
                        o,
                        frames.get(&f),
                        f,
                        &mut file,
                        progress,
                    )?,
                    None => crate::formats::compress_into(raw_path(), f, &mut file, progress)?,
                };
                (file, s.size, s.sha256)
            }
        };
        files.push(file);
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
        known_hosts: node.known_host,
    };
    let manifest_path = spec.dir.join(format!("{}.manifest.json", node.node));
    // The image goes first; a raw file that is not an output was only the others' source.
    if let (Some(pending), Some(_)) = (raw, &raw_record) {
        files.insert(0, pending);
    }
    let mut descriptions = outputs
        .iter()
        .map(|o| emit::sha256_file(&spec.dir.join(&o.file), &o.sha256))
        .collect::<Result<Vec<_>>>()?;
    descriptions.push(emit::manifest_file(&manifest_path, &manifest)?);
    emit::Replacement {
        files,
        descriptions,
        stale: vec![
            spec.dir.join(crate::formats::SHA256SUMS),
            spec.dir.join(crate::host_keys::KNOWN_HOSTS),
        ],
    }
    .commit()?;
    for o in &outputs {
        progress.message(&format!(
            "wrote {} ({})",
            spec.dir.join(&o.file).display(),
            human_bytes(o.size)
        ));
    }
    Ok(NodeOutputs {
        image: raw_record.as_ref().map(|r| spec.dir.join(&r.file)),
        sha256: raw_record.map(|r| r.sha256),
        size,
        manifest: manifest_path,
        files: outputs,
    })
}
