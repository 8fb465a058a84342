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
