//! What `build` is asked to do and what it reports.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Role;
use crate::formats::Format;
use crate::manifest::OutputRecord;
use crate::plan::OpView;
use crate::source::base::BaseSource;

/// A node built from command-line flags instead of the inventory.
#[derive(Debug, Clone)]
pub struct AdHoc {
    pub board: String,
    pub role: Role,
    pub name: Option<String>,
}

/// Which nodes of the inventory to build.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every node.
    All,
    /// The named nodes.
    Named(Vec<String>),
    /// One node that is not in the inventory.
    AdHoc(AdHoc),
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub config: PathBuf,
    pub select: Selection,
    pub base: BaseSource,
    pub mirror: Option<String>,
    pub out: PathBuf,
    pub offline: bool,
    pub dry_run: bool,
    /// Cache directory; the default one when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Free space left in a root filesystem that had to grow, beyond what the payload needs.
    pub grow_margin: u64,
    /// Nodes built in parallel.
    pub jobs: usize,
    /// Build only this deterministic share of the selected nodes: (index from 1, count).
    pub shard: Option<(usize, usize)>,
    /// Output formats; empty for the inventory's `formats:` (else raw).
    pub formats: Vec<Format>,
    /// Let paths in the inventory lead outside its directory.
    pub allow_outside_paths: bool,
    /// Also export the nodes for network boot into this directory.
    pub netboot: Option<PathBuf>,
}

/// Default of `--grow-margin`.
pub const DEFAULT_GROW_MARGIN: u64 = 256 << 20;

/// What `build` produced, per node (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub board: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub base_url: String,
    pub plan: Vec<OpView>,
    /// Every file produced for the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputRecord>,
    /// Whether the prepared base came from the cache (a fleet build reuses it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_from_cache: Option<bool>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub dry_run: bool,
    pub nodes: Vec<NodeResult>,
}

impl BuildSummary {
    /// The closing lines on standard error after a build that wrote images: what was made
    /// (nodes, files, sizes, time) and how to put each node on a card. `out` is the output
    /// directory.
    pub fn render_closing(&self, out: &std::path::Path, seconds: f64) -> String {
        use crate::progress::human_bytes;
        let files: Vec<&OutputRecord> = self.nodes.iter().flat_map(|n| &n.outputs).collect();
        let total: u64 = files.iter().map(|f| f.size).sum();
        let mut s = format!(
            "built {} node{} in {seconds:.1} s: {} files, {} in {}\n",
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            files.len(),
            human_bytes(total),
            out.display()
        );
        for n in &self.nodes {
            let names: Vec<String> = n
                .outputs
                .iter()
                .map(|o| format!("{} ({})", o.file, human_bytes(o.size)))
                .collect();
            s.push_str(&format!(
                "  {} ({}): {}\n",
                n.node,
                n.role,
                names.join(", ")
            ));
        }
        s.push_str("next: write each image to its card (`pikube-image flash --list` shows the cards; the one named is overwritten):\n");
        let out_flag = match out == std::path::Path::new("images") {
            true => String::new(),
            false => format!(" --out {}", out.display()),
        };
        for n in &self.nodes {
            let flashable = n.outputs.iter().any(|o| {
                [".img", ".img.zst", ".img.xz"]
                    .iter()
                    .any(|k| o.file == format!("{}{k}", n.node))
            });
            if flashable {
                s.push_str(&format!(
                    "  {}: sudo pikube-image flash --node {}{out_flag} /dev/sdX\n",
                    n.node, n.node
                ));
            }
        }
        s
    }

    /// What `build` prints on standard output without `--json`: the plan of each node for a
    /// dry run, else each image's SHA-256 and path.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            for n in &self.nodes {
                out.push_str(&format!(
                    "node {} ({}, board {}) from {}\n",
                    n.node, n.role, n.board, n.base_url
                ));
                if let Some(id) = &n.instance_id {
                    out.push_str(&format!("  cloud-init instance-id: {id}\n"));
                }
                out.push_str(&crate::plan::render_table(&n.plan));
            }
            out.push_str("dry run: nothing was written\n");
        } else {
            for n in &self.nodes {
                out.push_str(&format!(
                    "{}  {}\n",
                    n.sha256.as_deref().unwrap_or(""),
                    n.image
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, files: &[(&str, u64)]) -> NodeResult {
        NodeResult {
            node: name.into(),
            board: "rpi4".into(),
            role: "server".into(),
            image: None,
            sha256: None,
            size: None,
            manifest: None,
            instance_id: None,
            base_url: String::new(),
            plan: Vec::new(),
            outputs: files
                .iter()
                .map(|(f, size)| OutputRecord {
                    file: f.to_string(),
                    size: *size,
                    sha256: String::new(),
                })
                .collect(),
            prepared_from_cache: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn the_closing_lines_say_what_was_made_and_how_to_flash_it() {
        let s = BuildSummary {
            dry_run: false,
            nodes: vec![
                node("cp1", &[("cp1.img", 4 << 30), ("cp1.bmap", 1000)]),
                node("w1", &[("w1.img.zst", 600 << 20)]),
            ],
        };
        let text = s.render_closing(std::path::Path::new("images"), 12.34);
        assert!(
            text.starts_with("built 2 nodes in 12.3 s: 3 files"),
            "{text}"
        );
        assert!(
            text.contains("  cp1 (server): cp1.img (4.0 GiB), cp1.bmap"),
            "{text}"
        );
        assert!(
            text.contains("cp1: sudo pikube-image flash --node cp1 /dev/sdX"),
            "{text}"
        );
        assert!(
            text.contains("w1: sudo pikube-image flash --node w1 /dev/sdX"),
            "{text}"
        );
        let elsewhere = s.render_closing(std::path::Path::new("/srv/out"), 1.0);
        assert!(
            elsewhere.contains("cp1: sudo pikube-image flash --node cp1 --out /srv/out /dev/sdX"),
            "{elsewhere}"
        );
    }
}
